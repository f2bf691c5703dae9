//! The CA pair of one algorithm and the leaves it issues.

use std::str::FromStr;

use x509_cert::name::Name;

use super::x509::{build_cert, cert_subject, validity, Kind, NOT_AFTER_NEVER, NOT_BEFORE};
use super::{cert_err, AlgoIdentity, CertSlot, CmaDeviceName};
use crate::crypto::{AsymAlgo, SigningKey};
use crate::error::IdentityError;
use crate::rng::EntropySource;

/// A root and an intermediate CA of one signature algorithm; the
/// intermediate's key signs device leaves.
pub(crate) struct Ca {
    pub algo: AsymAlgo,
    /// DER root certificate (self-signed).
    pub root: Vec<u8>,
    /// DER intermediate certificate (signed by the root).
    pub inter: Vec<u8>,
    /// The intermediate's key.
    pub inter_key: SigningKey,
}

fn bits(algo: AsymAlgo) -> &'static str {
    match algo {
        AsymAlgo::EcdsaP256 => "P-256",
        AsymAlgo::EcdsaP384 => "P-384",
    }
}

impl Ca {
    /// A new CA pair; returns the root's key too (kept on disk only, so the
    /// intermediate can be re-issued).
    pub fn generate(
        algo: AsymAlgo,
        rng: &mut dyn EntropySource,
    ) -> Result<(Ca, SigningKey), IdentityError> {
        let root_key = SigningKey::generate(algo, rng);
        let root_subj = format!("CN=trustdev CMA root CA {},O=trustdev", bits(algo));
        let forever = validity(NOT_BEFORE, NOT_AFTER_NEVER)?;
        let root = build_cert(Kind::Root, &root_subj, None, &root_key, forever, rng)?;
        let inter_key = SigningKey::generate(algo, rng);
        let inter_subj = format!("CN=trustdev CMA intermediate CA {},O=trustdev", bits(algo));
        let root_name = Name::from_str(&root_subj).map_err(cert_err)?;
        let inter = build_cert(
            Kind::Intermediate,
            &inter_subj,
            Some((&root_name, &root_key)),
            &inter_key,
            forever,
            rng,
        )?;
        Ok((
            Ca {
                algo,
                root,
                inter,
                inter_key,
            },
            root_key,
        ))
    }

    /// Leaves for slots 0..`slots` naming `name`, each with its own key.
    pub fn issue(
        &self,
        name: &CmaDeviceName,
        slots: usize,
        rng: &mut dyn EntropySource,
    ) -> Result<AlgoIdentity, IdentityError> {
        self.issue_valid(name, slots, (NOT_BEFORE, NOT_AFTER_NEVER), rng)
    }

    /// [`Ca::issue`] with leaves valid `not_before ..= not_after` (seconds
    /// since the epoch).
    pub fn issue_valid(
        &self,
        name: &CmaDeviceName,
        slots: usize,
        (not_before, not_after): (u64, u64),
        rng: &mut dyn EntropySource,
    ) -> Result<AlgoIdentity, IdentityError> {
        let inter_name = cert_subject(&self.inter)?;
        let mut out = AlgoIdentity {
            algo: self.algo,
            slots: Default::default(),
        };
        for (s, slot) in out.slots.iter_mut().enumerate().take(slots) {
            let leaf_key = SigningKey::generate(self.algo, rng);
            let leaf_subj = format!(
                "CN=trustdev device {:04x}:{:04x} slot {s},O=trustdev",
                name.vendor, name.device
            );
            let leaf = build_cert(
                Kind::Leaf(name.other_name()),
                &leaf_subj,
                Some((&inter_name, &self.inter_key)),
                &leaf_key,
                validity(not_before, not_after)?,
                rng,
            )?;
            *slot = Some(CertSlot {
                certs: vec![self.root.clone(), self.inter.clone(), leaf],
                key: leaf_key,
            });
        }
        Ok(out)
    }
}
