//! The generated chains verify with an independent X.509 verifier (rustls-webpki).

mod common;

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use spdm_responder::crypto::{AsymAlgo, HashAlgo};
use spdm_responder::identity::{self, Identity, PciIds};
use spdm_responder::rng::OsEntropy;

fn webpki_verify(certs: &[Vec<u8>]) -> Result<(), webpki::Error> {
    let root = CertificateDer::from(certs[0].clone());
    let anchor = webpki::anchor_from_trusted_cert(&root)?;
    let leaf = CertificateDer::from(certs[certs.len() - 1].clone());
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    let inter: Vec<CertificateDer<'_>> = certs[1..certs.len() - 1]
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    // 2026-11-26: inside the validity (2024-01-01 .. 9999-12-31).
    let now = UnixTime::since_unix_epoch(Duration::from_secs(1_795_651_200));
    // No EKU in the leaf: "required if present" accepts it.
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &inter,
        now,
        webpki::KeyUsage::required_if_present(&[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01]),
        None,
        None,
    )?;
    Ok(())
}

#[test]
fn generated_chains_verify_with_webpki() {
    let id = common::identity();
    for a in &id.algos {
        for s in a.slots.iter().flatten() {
            assert_eq!(s.certs.len(), 3);
            webpki_verify(&s.certs).unwrap_or_else(|e| panic!("{:?}: {e:?}", a.algo));
            // The same chain as the SPDM chain carries it.
            let chain = s.spdm_chain(HashAlgo::Sha256);
            assert_eq!(
                identity::parse_spdm_chain(&chain, HashAlgo::Sha256).unwrap(),
                s.certs
            );
        }
    }
}

#[test]
fn fresh_random_identity_verifies_and_tampering_is_caught() {
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP384],
        &PciIds {
            vendor: 0x8086,
            device: 0x0b25,
            class_code: 0x120000,
            revision: 1,
            subsystem_vendor: 0x8086,
            subsystem: 0,
        },
        1,
        &mut OsEntropy,
    )
    .unwrap();
    let s = id.slot(AsymAlgo::EcdsaP384, 0).unwrap();
    webpki_verify(&s.certs).unwrap();
    assert_eq!(
        identity::leaf_other_name(s.leaf()).unwrap(),
        "Vendor=8086:Device=0B25:CC=120000:REV=01:SSVID=8086:SSID=0000"
    );
    // Flip a bit in the leaf's signature: both verifiers refuse it.
    let mut bad = s.certs.clone();
    let n = bad[2].len();
    bad[2][n - 3] ^= 1;
    assert!(webpki_verify(&bad).is_err());
    assert!(identity::verify_chain(&bad, &[bad[0].clone()]).is_err());
    // A chain under another root is not trusted by ours.
    let other = common::identity();
    let other_root = other.roots_der();
    assert!(identity::verify_chain(&s.certs, &other_root).is_err());
}
