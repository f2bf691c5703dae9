//! Device identity: certificate chains and signing keys in slots.
//!
//! A generated identity is a CMA-style chain `root CA -> intermediate CA ->
//! device leaf` per signature algorithm (ECDSA P-256 and P-384), with slot 0
//! and slot 1 each holding their own leaf key under the same CAs. The leaf
//! carries the PCI-SIG CMA subject-alt-name `otherName` (OID 2.23.147) that
//! Linux compares byte for byte ([`CmaDeviceName::other_name`]), keyUsage
//! digitalSignature and basicConstraints CA=FALSE.
//!
//! [`Identity::load_or_generate`] keeps the CAs stable per directory (a
//! requester trusts `DIR/ecpNNN/root.cert.pem`) and gives every distinct
//! subject-alt-name its own leaves, issued on first use and cached (see
//! [`store`]).

use std::path::Path;

use crate::crypto::{AsymAlgo, HashAlgo, SigningKey};
use crate::error::IdentityError;
use crate::rng::EntropySource;

mod ca;
mod cma_name;
pub mod store;
mod x509;

pub use cma_name::CmaDeviceName;
pub use x509::{
    cert_spki, der_tlv_len, leaf_other_name, parse_certs, parse_spdm_chain, pem_encode, split_der,
    verify_chain, verify_chain_at, EXPIRED_NOT_AFTER,
};

/// Number of certificate slots SPDM defines.
pub const MAX_SLOTS: usize = 8;

/// The PCI-SIG CMA otherName OID.
pub const CMA_OTHERNAME_OID: &str = "2.23.147";

/// One provisioned slot: a DER chain (root first) and the leaf's private key.
#[derive(Clone, Debug)]
pub struct CertSlot {
    /// DER certificates, root first, leaf last.
    pub certs: Vec<Vec<u8>>,
    pub key: SigningKey,
}

impl CertSlot {
    pub fn algo(&self) -> AsymAlgo {
        self.key.algo()
    }
    /// The SPDM certificate chain: `Length u16 || Reserved u16 || RootHash || certs`.
    pub fn spdm_chain(&self, hash: HashAlgo) -> Vec<u8> {
        let root = self.certs.first().map(|c| c.as_slice()).unwrap_or(&[]);
        let body: usize = self.certs.iter().map(|c| c.len()).sum();
        let total = 4 + hash.size() + body;
        let mut v = Vec::with_capacity(total);
        v.extend_from_slice(&(total.min(0xFFFF) as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&hash.hash(root));
        for c in &self.certs {
            v.extend_from_slice(c);
        }
        v
    }
    pub fn leaf(&self) -> &[u8] {
        self.certs.last().map(|c| c.as_slice()).unwrap_or(&[])
    }
}

/// The certificates and keys of one signature algorithm.
#[derive(Clone, Debug)]
pub struct AlgoIdentity {
    pub algo: AsymAlgo,
    pub slots: [Option<CertSlot>; MAX_SLOTS],
}

impl AlgoIdentity {
    /// Root certificate (DER) of slot 0 (or the first provisioned slot).
    pub fn root_der(&self) -> Option<&[u8]> {
        self.slots
            .iter()
            .flatten()
            .next()
            .and_then(|s| s.certs.first())
            .map(|c| c.as_slice())
    }
    pub fn slot_mask(&self) -> u8 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .fold(0u8, |m, (i, _)| m | (1 << i))
    }
}

/// The device identity: one [`AlgoIdentity`] per signature algorithm.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub algos: Vec<AlgoIdentity>,
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn cert_err<E: std::fmt::Display>(e: E) -> IdentityError {
    IdentityError::Cert(e.to_string())
}

impl Identity {
    /// The identity for a signature algorithm.
    pub fn for_algo(&self, algo: AsymAlgo) -> Option<&AlgoIdentity> {
        self.algos.iter().find(|a| a.algo == algo)
    }
    /// BaseAsymAlgo bits of the algorithms that have a provisioned slot.
    pub fn asym_bits(&self) -> u32 {
        self.algos
            .iter()
            .filter(|a| a.slot_mask() != 0)
            .fold(0, |b, a| b | a.algo.bits())
    }
    /// A slot of an algorithm.
    pub fn slot(&self, algo: AsymAlgo, slot: u8) -> Option<&CertSlot> {
        self.for_algo(algo)?.slots.get(slot as usize)?.as_ref()
    }

    /// Generate a fresh in-memory identity for the given algorithms with
    /// `slots` slots each, the leaves naming `name`.
    pub fn generate(
        algos: &[AsymAlgo],
        name: &CmaDeviceName,
        slots: usize,
        rng: &mut dyn EntropySource,
    ) -> Result<Self, IdentityError> {
        let mut out = Identity::default();
        for &algo in algos {
            let (ca, _root_key) = ca::Ca::generate(algo, rng)?;
            out.algos
                .push(ca.issue(name, slots.clamp(1, MAX_SLOTS), rng)?);
        }
        Ok(out)
    }

    /// The identity stored in `dir` for a device named `name` (ECDSA P-256
    /// and P-384, two slots each): the CAs are created on first use and then
    /// kept; the leaves for `name` are issued on first use and cached. Private
    /// keys are written with mode 0600. See [`store`].
    pub fn load_or_generate(
        dir: &Path,
        name: &CmaDeviceName,
        rng: &mut dyn EntropySource,
    ) -> Result<Self, IdentityError> {
        store::load_or_generate(dir, name, rng)
    }

    /// Build an identity from a user-provided chain (PEM or concatenated DER, root
    /// first or last; it is reordered root first) and leaf private key (PEM or DER).
    pub fn from_chain_and_key(chain: &[u8], key: &[u8], slot: u8) -> Result<Self, IdentityError> {
        let mut certs = parse_certs(chain)?;
        if certs.is_empty() {
            return Err(IdentityError::Cert("no certificate in chain".into()));
        }
        let key = match std::str::from_utf8(key) {
            Ok(s) if s.contains("-----BEGIN") => SigningKey::from_pem(s)?,
            _ => SigningKey::from_der(key)?,
        };
        let pk = key.verifying_key().to_spki_der()?;
        // The leaf is the certificate whose key matches; put it last.
        let leaf_pos = certs
            .iter()
            .position(|c| cert_spki(c).map(|s| s == pk).unwrap_or(false))
            .ok_or_else(|| {
                IdentityError::Cert("no certificate in the chain matches the private key".into())
            })?;
        if leaf_pos == 0 && certs.len() > 1 {
            certs.reverse();
        }
        if cert_spki(certs.last().unwrap_or(&Vec::new()))
            .map(|s| s != pk)
            .unwrap_or(true)
        {
            return Err(IdentityError::Cert(
                "leaf certificate must be at one end of the chain".into(),
            ));
        }
        let algo = key.algo();
        let mut slots: [Option<CertSlot>; MAX_SLOTS] = Default::default();
        let idx = slot as usize;
        if idx >= MAX_SLOTS {
            return Err(IdentityError::Slot(slot));
        }
        slots[idx] = Some(CertSlot { certs, key });
        Ok(Identity {
            algos: vec![AlgoIdentity { algo, slots }],
        })
    }

    /// Read a user chain and key from files.
    pub fn from_files(chain: &Path, key: &Path, slot: u8) -> Result<Self, IdentityError> {
        let c = std::fs::read(chain).map_err(|e| io_err(chain, e))?;
        let k = zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| io_err(key, e))?);
        Self::from_chain_and_key(&c, &k, slot)
    }

    /// PEM of the root certificate of an algorithm, for a requester's trust store.
    pub fn root_pem(&self, algo: AsymAlgo) -> Option<String> {
        self.for_algo(algo)?
            .root_der()
            .map(|d| pem_encode("CERTIFICATE", d))
    }
    /// DER roots of every algorithm.
    pub fn roots_der(&self) -> Vec<Vec<u8>> {
        self.algos
            .iter()
            .filter_map(|a| a.root_der().map(|d| d.to_vec()))
            .collect()
    }
    /// Merge another identity's algorithms/slots into this one.
    pub fn merge(&mut self, other: Identity) {
        for a in other.algos {
            if let Some(mine) = self.algos.iter_mut().find(|m| m.algo == a.algo) {
                for (i, s) in a.slots.into_iter().enumerate() {
                    if s.is_some() {
                        mine.slots[i] = s;
                    }
                }
            } else {
                self.algos.push(a);
            }
        }
    }
}

#[cfg(test)]
mod tests;
