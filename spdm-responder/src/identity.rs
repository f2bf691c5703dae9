//! Device identity: certificate chains and signing keys in slots.
//!
//! A generated identity is a CMA-style chain `root CA -> intermediate CA -> device
//! leaf` per signature algorithm (ECDSA P-256 and P-384), with slot 0 and slot 1
//! each holding their own leaf key under the same CAs. The leaf carries the
//! PCI-SIG CMA subject-alt-name `otherName` (OID 2.23.147) with
//! `Vendor=..:Device=..:CC=..:REV=..:SSVID=..:SSID=..`, keyUsage digitalSignature
//! and basicConstraints CA=FALSE.
//!
//! Storage layout of [`Identity::load_or_generate`] (keys are written 0600):
//! ```text
//! DIR/ecp256/root.cert.pem  root.key.pem  inter.cert.pem  inter.key.pem
//!            slot0.cert.pem slot0.key.pem slot1.cert.pem  slot1.key.pem
//! DIR/ecp384/...
//! ```
//! `DIR/ecpNNN/root.cert.pem` is what a requester puts in its trust store.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::crypto::{AsymAlgo, HashAlgo, SigningKey, VerifyingKey};
use crate::error::IdentityError;
use crate::rng::EntropySource;

/// Number of certificate slots SPDM defines.
pub const MAX_SLOTS: usize = 8;

/// The PCI-SIG CMA otherName OID.
pub const CMA_OTHERNAME_OID: &str = "2.23.147";

/// PCI identity of the device, rendered into the leaf's otherName.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub class_code: u32,
    pub revision: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

impl Default for PciIds {
    fn default() -> Self {
        // The trustdev NVMe controller identity by default.
        Self {
            vendor: 0x1b36,
            device: 0x0010,
            class_code: 0x010802,
            revision: 0x02,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        }
    }
}

impl PciIds {
    /// The CMA otherName string.
    pub fn other_name(&self) -> String {
        format!(
            "Vendor={:04X}:Device={:04X}:CC={:06X}:REV={:02X}:SSVID={:04X}:SSID={:04X}",
            self.vendor,
            self.device,
            self.class_code & 0xFF_FFFF,
            self.revision,
            self.subsystem_vendor,
            self.subsystem
        )
    }
}

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

fn io_err(path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn cert_err<E: std::fmt::Display>(e: E) -> IdentityError {
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

    /// Generate a fresh identity for the given algorithms with `slots` slots each.
    pub fn generate(
        algos: &[AsymAlgo],
        ids: &PciIds,
        slots: usize,
        rng: &mut dyn EntropySource,
    ) -> Result<Self, IdentityError> {
        let mut out = Identity::default();
        for &algo in algos {
            out.algos
                .push(generate_algo(algo, ids, slots.clamp(1, MAX_SLOTS), rng)?.0);
        }
        Ok(out)
    }

    /// Load the identity stored in `dir`, or generate and store it on first run.
    /// Private keys are written with mode 0600.
    pub fn load_or_generate(
        dir: &Path,
        ids: &PciIds,
        rng: &mut dyn EntropySource,
    ) -> Result<Self, IdentityError> {
        let mut out = Identity::default();
        for algo in [AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384] {
            let sub = dir.join(algo_dir(algo));
            if sub.join("slot0.cert.pem").exists() {
                out.algos.push(load_algo_dir(&sub, algo)?);
            } else {
                let (a, ca_keys) = generate_algo(algo, ids, 2, rng)?;
                store_algo_dir(&sub, &a, &ca_keys)?;
                log::info!("generated {:?} device identity in {}", algo, sub.display());
                out.algos.push(a);
            }
        }
        Ok(out)
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

fn algo_dir(algo: AsymAlgo) -> &'static str {
    match algo {
        AsymAlgo::EcdsaP256 => "ecp256",
        AsymAlgo::EcdsaP384 => "ecp384",
    }
}

/// PEM-encode DER.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap_or_default()
}

/// Split PEM or concatenated DER certificates.
pub fn parse_certs(data: &[u8]) -> Result<Vec<Vec<u8>>, IdentityError> {
    if let Ok(s) = std::str::from_utf8(data) {
        if s.contains("-----BEGIN") {
            let certs = Certificate::load_pem_chain(data).map_err(cert_err)?;
            return certs.iter().map(|c| c.to_der().map_err(cert_err)).collect();
        }
    }
    split_der(data)
}

/// Split concatenated DER SEQUENCEs.
pub fn split_der(mut data: &[u8]) -> Result<Vec<Vec<u8>>, IdentityError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = der_tlv_len(data)
            .ok_or_else(|| IdentityError::Cert("malformed DER certificate".into()))?;
        out.push(data[..n].to_vec());
        data = &data[n..];
    }
    Ok(out)
}

/// Total length of the DER TLV at the start of `d` (SEQUENCE only).
pub fn der_tlv_len(d: &[u8]) -> Option<usize> {
    if d.len() < 2 || d[0] != 0x30 {
        return None;
    }
    let (hdr, len) = match d[1] {
        l if l < 0x80 => (2usize, l as usize),
        0x81 => (3, *d.get(2)? as usize),
        0x82 => (4, u16::from_be_bytes([*d.get(2)?, *d.get(3)?]) as usize),
        0x83 => (
            5,
            u32::from_be_bytes([0, *d.get(2)?, *d.get(3)?, *d.get(4)?]) as usize,
        ),
        _ => return None,
    };
    let total = hdr.checked_add(len)?;
    (total <= d.len()).then_some(total)
}

/// DER SubjectPublicKeyInfo of a certificate.
pub fn cert_spki(der: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let c = Certificate::from_der(der).map_err(cert_err)?;
    c.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(cert_err)
}

fn spki_of(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, IdentityError> {
    let der = key.verifying_key().to_spki_der()?;
    SubjectPublicKeyInfoOwned::from_der(&der).map_err(cert_err)
}

fn serial(rng: &mut dyn EntropySource) -> Result<SerialNumber, IdentityError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[0] = (b[0] & 0x7F) | 0x01;
    SerialNumber::new(&b).map_err(cert_err)
}

fn validity() -> Result<Validity, IdentityError> {
    // 2024-01-01T00:00:00Z .. 9999-12-31T23:59:59Z (RFC 5280 "no well-defined expiration").
    let nb = der::asn1::UtcTime::from_unix_duration(Duration::from_secs(1_704_067_200))
        .map_err(cert_err)?;
    let na = der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(253_402_300_799))
        .map_err(cert_err)?;
    Ok(Validity {
        not_before: Time::UtcTime(nb),
        not_after: Time::GeneralTime(na),
    })
}

enum Kind {
    Root,
    Intermediate,
    Leaf(String),
}

fn build_cert(
    kind: Kind,
    subject: &str,
    issuer: Option<(&Name, &SigningKey)>,
    subject_key: &SigningKey,
    rng: &mut dyn EntropySource,
) -> Result<Vec<u8>, IdentityError> {
    let subject = Name::from_str(subject).map_err(cert_err)?;
    let spki = spki_of(subject_key)?;
    let (issuer_name, signer) = match issuer {
        Some((n, k)) => (Some(n.clone()), k),
        None => (None, subject_key),
    };
    let issuer_spki = spki_of(signer)?;
    let serial = serial(rng)?;
    let validity = validity()?;
    macro_rules! go {
        ($k:expr, $sig:ty) => {{
            let mut b = CertificateBuilder::new(
                Profile::Manual {
                    issuer: issuer_name,
                },
                serial,
                validity,
                subject,
                spki.clone(),
                $k,
            )
            .map_err(cert_err)?;
            add_exts(&mut b, &kind, &spki, &issuer_spki)?;
            b.build::<$sig>().map_err(cert_err)?
        }};
    }
    let cert = match signer {
        SigningKey::P256(k) => go!(k, p256::ecdsa::DerSignature),
        SigningKey::P384(k) => go!(k, p384::ecdsa::DerSignature),
    };
    cert.to_der().map_err(cert_err)
}

fn add_exts<S>(
    b: &mut CertificateBuilder<'_, S>,
    kind: &Kind,
    spki: &SubjectPublicKeyInfoOwned,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), IdentityError>
where
    S: spki::DynSignatureAlgorithmIdentifier + ecdsa::signature::Keypair,
    S::VerifyingKey: spki::EncodePublicKey,
{
    let ski = SubjectKeyIdentifier::try_from(spki.owned_to_ref()).map_err(cert_err)?;
    b.add_extension(&ski).map_err(cert_err)?;
    if !matches!(kind, Kind::Root) {
        let aki = AuthorityKeyIdentifier::try_from(issuer_spki.owned_to_ref()).map_err(cert_err)?;
        b.add_extension(&aki).map_err(cert_err)?;
    }
    match kind {
        Kind::Root => {
            b.add_extension(&BasicConstraints {
                ca: true,
                path_len_constraint: None,
            })
            .map_err(cert_err)?;
            b.add_extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))
                .map_err(cert_err)?;
        }
        Kind::Intermediate => {
            b.add_extension(&BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            })
            .map_err(cert_err)?;
            b.add_extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))
                .map_err(cert_err)?;
        }
        Kind::Leaf(other) => {
            b.add_extension(&BasicConstraints {
                ca: false,
                path_len_constraint: None,
            })
            .map_err(cert_err)?;
            b.add_extension(&KeyUsage(KeyUsages::DigitalSignature.into()))
                .map_err(cert_err)?;
            let value =
                der::Any::encode_from(&der::asn1::Utf8StringRef::new(other).map_err(cert_err)?)
                    .map_err(cert_err)?;
            let on = OtherName {
                type_id: const_oid::ObjectIdentifier::new_unwrap(CMA_OTHERNAME_OID),
                value,
            };
            b.add_extension(&SubjectAltName(vec![GeneralName::OtherName(on)]))
                .map_err(cert_err)?;
        }
    }
    Ok(())
}

/// The root and intermediate CA keys of a generated chain (stored 0600 so the
/// chain can be extended later; not kept in memory otherwise).
struct CaKeys {
    root: SigningKey,
    intermediate: SigningKey,
}

fn generate_algo(
    algo: AsymAlgo,
    ids: &PciIds,
    slots: usize,
    rng: &mut dyn EntropySource,
) -> Result<(AlgoIdentity, CaKeys), IdentityError> {
    let bits = match algo {
        AsymAlgo::EcdsaP256 => "P-256",
        AsymAlgo::EcdsaP384 => "P-384",
    };
    let root_key = SigningKey::generate(algo, rng);
    let root_subj = format!("CN=trustdev CMA root CA {bits},O=trustdev");
    let root = build_cert(Kind::Root, &root_subj, None, &root_key, rng)?;
    let inter_key = SigningKey::generate(algo, rng);
    let inter_subj = format!("CN=trustdev CMA intermediate CA {bits},O=trustdev");
    let root_name = Name::from_str(&root_subj).map_err(cert_err)?;
    let inter = build_cert(
        Kind::Intermediate,
        &inter_subj,
        Some((&root_name, &root_key)),
        &inter_key,
        rng,
    )?;
    let inter_name = Name::from_str(&inter_subj).map_err(cert_err)?;
    let mut out = AlgoIdentity {
        algo,
        slots: Default::default(),
    };
    for s in 0..slots {
        let leaf_key = SigningKey::generate(algo, rng);
        let leaf_subj = format!(
            "CN=trustdev device {:04x}:{:04x} slot {s},O=trustdev",
            ids.vendor, ids.device
        );
        let leaf = build_cert(
            Kind::Leaf(ids.other_name()),
            &leaf_subj,
            Some((&inter_name, &inter_key)),
            &leaf_key,
            rng,
        )?;
        out.slots[s] = Some(CertSlot {
            certs: vec![root.clone(), inter.clone(), leaf],
            key: leaf_key,
        });
    }
    Ok((
        out,
        CaKeys {
            root: root_key,
            intermediate: inter_key,
        },
    ))
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if secret {
        o.mode(0o600);
    } else {
        o.mode(0o644);
    }
    let mut f = o.open(path).map_err(|e| io_err(path, e))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(path, e))?;
    }
    f.write_all(data).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

fn store_algo_dir(dir: &Path, a: &AlgoIdentity, ca: &CaKeys) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let first = a
        .slots
        .iter()
        .flatten()
        .next()
        .ok_or(IdentityError::Slot(0))?;
    write_file(
        &dir.join("root.cert.pem"),
        pem_encode("CERTIFICATE", &first.certs[0]).as_bytes(),
        false,
    )?;
    if first.certs.len() > 2 {
        write_file(
            &dir.join("inter.cert.pem"),
            pem_encode("CERTIFICATE", &first.certs[1]).as_bytes(),
            false,
        )?;
    }
    write_file(
        &dir.join("root.key.pem"),
        ca.root.to_pkcs8_pem()?.as_bytes(),
        true,
    )?;
    write_file(
        &dir.join("inter.key.pem"),
        ca.intermediate.to_pkcs8_pem()?.as_bytes(),
        true,
    )?;
    for (i, s) in a.slots.iter().enumerate() {
        if let Some(s) = s {
            let mut chain = String::new();
            for c in &s.certs {
                chain.push_str(&pem_encode("CERTIFICATE", c));
            }
            write_file(
                &dir.join(format!("slot{i}.cert.pem")),
                chain.as_bytes(),
                false,
            )?;
            write_file(
                &dir.join(format!("slot{i}.key.pem")),
                s.key.to_pkcs8_pem()?.as_bytes(),
                true,
            )?;
        }
    }
    Ok(())
}

fn load_algo_dir(dir: &Path, algo: AsymAlgo) -> Result<AlgoIdentity, IdentityError> {
    let mut out = AlgoIdentity {
        algo,
        slots: Default::default(),
    };
    for i in 0..MAX_SLOTS {
        let cp: PathBuf = dir.join(format!("slot{i}.cert.pem"));
        if !cp.exists() {
            continue;
        }
        let id = Identity::from_files(&cp, &dir.join(format!("slot{i}.key.pem")), i as u8)?;
        let a = id
            .algos
            .into_iter()
            .next()
            .ok_or(IdentityError::Slot(i as u8))?;
        if a.algo != algo {
            return Err(IdentityError::Cert(format!(
                "{} holds a {:?} key",
                cp.display(),
                a.algo
            )));
        }
        out.slots[i] = a.slots.into_iter().nth(i).flatten();
    }
    if out.slot_mask() == 0 {
        return Err(IdentityError::Slot(0));
    }
    Ok(out)
}

/// Verify a DER chain (root first) with this crate's own X.509 signature checks:
/// every certificate's signature with its issuer's key (the root's with its own),
/// CA basicConstraints on issuers, and that the root is one of `trusted_roots`
/// (byte-equal) or is signed by one. Returns the leaf's public key.
pub fn verify_chain(
    certs: &[Vec<u8>],
    trusted_roots: &[Vec<u8>],
) -> Result<VerifyingKey, IdentityError> {
    if certs.is_empty() {
        return Err(IdentityError::Cert("empty chain".into()));
    }
    let parsed: Vec<Certificate> = certs
        .iter()
        .map(|c| Certificate::from_der(c).map_err(cert_err))
        .collect::<Result<_, _>>()?;
    let root_ok = trusted_roots.iter().any(|t| t == &certs[0])
        || trusted_roots.iter().any(|t| {
            Certificate::from_der(t)
                .ok()
                .map(|tc| check_sig(&parsed[0], &tc).is_ok())
                .unwrap_or(false)
        });
    if !root_ok {
        return Err(IdentityError::Cert("chain root is not trusted".into()));
    }
    for i in 0..parsed.len() {
        let issuer = if i == 0 { &parsed[0] } else { &parsed[i - 1] };
        if i > 0 {
            if issuer.tbs_certificate.subject != parsed[i].tbs_certificate.issuer {
                return Err(IdentityError::Cert(format!(
                    "certificate {i}: issuer name does not match"
                )));
            }
            if !is_ca(issuer) {
                return Err(IdentityError::Cert(format!(
                    "certificate {}: issuer is not a CA",
                    i
                )));
            }
        }
        if i == 0
            && parsed[0].tbs_certificate.subject != parsed[0].tbs_certificate.issuer
            && parsed.len() > 1
        {
            // The first certificate need not be self-signed when a trusted root signed it.
        } else {
            check_sig(&parsed[i], issuer)?;
        }
    }
    let leaf_spki = parsed[parsed.len() - 1]
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(cert_err)?;
    Ok(VerifyingKey::from_spki_der(&leaf_spki)?)
}

fn is_ca(c: &Certificate) -> bool {
    c.tbs_certificate.extensions.iter().flatten().any(|e| {
        e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
            && BasicConstraints::from_der(e.extn_value.as_bytes())
                .map(|b| b.ca)
                .unwrap_or(false)
    })
}

fn check_sig(cert: &Certificate, issuer: &Certificate) -> Result<(), IdentityError> {
    let tbs = cert.tbs_certificate.to_der().map_err(cert_err)?;
    let alg = &cert.signature_algorithm.oid;
    let hash = if *alg == const_oid::db::rfc5912::ECDSA_WITH_SHA_256 {
        HashAlgo::Sha256
    } else if *alg == const_oid::db::rfc5912::ECDSA_WITH_SHA_384 {
        HashAlgo::Sha384
    } else {
        return Err(IdentityError::Cert(format!(
            "unsupported signature algorithm {alg}"
        )));
    };
    let ispki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(cert_err)?;
    let vk = VerifyingKey::from_spki_der(&ispki)?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or_else(|| IdentityError::Cert("bad signature bits".into()))?;
    vk.verify_prehash_der(&hash.hash(&tbs), sig)
        .map_err(|_| IdentityError::Cert("certificate signature does not verify".into()))
}

/// Parse an SPDM certificate chain (`Length u16 || Reserved u16 || RootHash || certs`),
/// checking Length and the RootHash. Returns the DER certificates.
pub fn parse_spdm_chain(chain: &[u8], hash: HashAlgo) -> Result<Vec<Vec<u8>>, IdentityError> {
    let h = hash.size();
    if chain.len() < 4 + h {
        return Err(IdentityError::Cert("SPDM chain too short".into()));
    }
    let len = u16::from_le_bytes([chain[0], chain[1]]) as usize;
    if len != chain.len() {
        return Err(IdentityError::Cert(format!(
            "SPDM chain length {len} != {}",
            chain.len()
        )));
    }
    let certs = split_der(&chain[4 + h..])?;
    let root = certs
        .first()
        .ok_or_else(|| IdentityError::Cert("no certificate".into()))?;
    if hash.hash(root) != chain[4..4 + h] {
        return Err(IdentityError::Cert(
            "RootHash does not match the root certificate".into(),
        ));
    }
    Ok(certs)
}

/// The CMA otherName string of a leaf certificate, if present.
pub fn leaf_other_name(der: &[u8]) -> Option<String> {
    let c = Certificate::from_der(der).ok()?;
    for e in c.tbs_certificate.extensions.iter().flatten() {
        if e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(e.extn_value.as_bytes()).ok()?;
            for g in san.0 {
                if let GeneralName::OtherName(on) = g {
                    if on.type_id == const_oid::ObjectIdentifier::new_unwrap(CMA_OTHERNAME_OID) {
                        let s: der::asn1::Utf8StringRef<'_> = on.value.decode_as().ok()?;
                        return Some(s.as_str().to_string());
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::DeterministicEntropy;

    #[test]
    fn generated_chain_verifies_and_has_othername() {
        let mut rng = DeterministicEntropy::new(b"identity");
        let id = Identity::generate(
            &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
            &PciIds::default(),
            2,
            &mut rng,
        )
        .unwrap();
        for a in &id.algos {
            assert_eq!(a.slot_mask(), 0b11);
            for s in a.slots.iter().flatten() {
                let roots = vec![s.certs[0].clone()];
                let vk = verify_chain(&s.certs, &roots).unwrap();
                assert_eq!(vk, s.key.verifying_key());
                assert_eq!(
                    leaf_other_name(s.leaf()).unwrap(),
                    PciIds::default().other_name()
                );
                let chain = s.spdm_chain(HashAlgo::Sha384);
                assert_eq!(parse_spdm_chain(&chain, HashAlgo::Sha384).unwrap(), s.certs);
            }
        }
        assert_eq!(
            PciIds::default().other_name(),
            "Vendor=1B36:Device=0010:CC=010802:REV=02:SSVID=1AF4:SSID=1100"
        );
    }

    #[test]
    fn store_and_reload_is_stable_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "spdm-id-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rng = DeterministicEntropy::new(b"store");
        let a = Identity::load_or_generate(&dir, &PciIds::default(), &mut rng).unwrap();
        let b = Identity::load_or_generate(&dir, &PciIds::default(), &mut rng).unwrap();
        for (x, y) in a.algos.iter().zip(b.algos.iter()) {
            assert_eq!(x.algo, y.algo);
            for (s, t) in x.slots.iter().zip(y.slots.iter()) {
                match (s, t) {
                    (Some(s), Some(t)) => {
                        assert_eq!(s.certs, t.certs);
                        assert_eq!(s.key.verifying_key(), t.key.verifying_key());
                    }
                    (None, None) => {}
                    _ => panic!("slot mismatch"),
                }
            }
        }
        for f in [
            "slot0.key.pem",
            "slot1.key.pem",
            "root.key.pem",
            "inter.key.pem",
        ] {
            let m = std::fs::metadata(dir.join("ecp256").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600, "{f}");
        }
        assert!(a
            .root_pem(AsymAlgo::EcdsaP384)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn user_chain_der_and_pem() {
        let mut rng = DeterministicEntropy::new(b"user");
        let id =
            Identity::generate(&[AsymAlgo::EcdsaP256], &PciIds::default(), 1, &mut rng).unwrap();
        let s = id.slot(AsymAlgo::EcdsaP256, 0).unwrap();
        let der_chain: Vec<u8> = s.certs.concat();
        let key_der = s.key.to_pkcs8_der().unwrap();
        let u = Identity::from_chain_and_key(&der_chain, &key_der, 1).unwrap();
        assert_eq!(u.slot(AsymAlgo::EcdsaP256, 1).unwrap().certs, s.certs);
        // PEM, leaf first (reordered).
        let mut pem = String::new();
        for c in s.certs.iter().rev() {
            pem.push_str(&pem_encode("CERTIFICATE", c));
        }
        let key_pem = s.key.to_pkcs8_pem().unwrap();
        let u = Identity::from_chain_and_key(pem.as_bytes(), key_pem.as_bytes(), 0).unwrap();
        assert_eq!(u.slot(AsymAlgo::EcdsaP256, 0).unwrap().certs, s.certs);
        // A key that matches nothing is refused.
        let other = SigningKey::generate(AsymAlgo::EcdsaP256, &mut rng)
            .to_pkcs8_der()
            .unwrap();
        assert!(Identity::from_chain_and_key(&der_chain, &other, 0).is_err());
    }
}
