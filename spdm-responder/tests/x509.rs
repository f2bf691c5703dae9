//! The generated chains verify with an independent X.509 verifier (rustls-webpki).

mod common;

use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use spdm_responder::crypto::{AsymAlgo, HashAlgo};
use spdm_responder::identity::{self, CmaDeviceName, Identity};
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
        &CmaDeviceName {
            vendor: 0x8086,
            device: 0x0b25,
            class_code: 0x120000,
            revision: 1,
            subsystem: Some((0x8086, 0)),
            serial: None,
        },
        1,
        &mut OsEntropy,
    )
    .unwrap();
    let s = id.slot(AsymAlgo::EcdsaP384, 0).unwrap();
    webpki_verify(&s.certs).unwrap();
    assert_eq!(
        identity::leaf_other_name(s.leaf()).unwrap(),
        "Vendor=8086:Device=0b25:CC=120000:REV=01:SSVID=8086:SSID=0000"
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

/// The otherName Linux compares: for a fixed device, the bytes of the leaf's
/// otherName (OID 2.23.147, a UTF8String inside `[0] EXPLICIT`) equal, byte
/// for byte, the string `pci_cma_construct_san()` (drivers/pci/cma.c) formats
/// from its configuration space: "Vendor=%04hx:Device=%04hx:CC=%06x:REV=%02hhx"
/// then ":SSVID=%04hx:SSID=%04hx" (type-0 header) then ":%016llx" (non-zero
/// Device Serial Number).
#[test]
fn cma_othername_bytes_match_the_kernel_string() {
    use der::{Decode, Encode, Tag, Tagged};
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    // A DMA-copy device: 1de5:c0de, class 120000, revision 1, subsystem
    // 1de5:0001, DSN 7d0c5a5a00c0ffee.
    let name = CmaDeviceName {
        vendor: 0x1de5,
        device: 0xc0de,
        class_code: 0x12_00_00,
        revision: 0x01,
        subsystem: Some((0x1de5, 0x0001)),
        serial: Some(0x7d0c_5a5a_00c0_ffee),
    };
    let kernel = b"Vendor=1de5:Device=c0de:CC=120000:REV=01:SSVID=1de5:SSID=0001:7d0c5a5a00c0ffee";
    let id = Identity::generate(&[AsymAlgo::EcdsaP256], &name, 1, &mut OsEntropy).unwrap();
    let leaf =
        x509_cert::Certificate::from_der(id.slot(AsymAlgo::EcdsaP256, 0).unwrap().leaf()).unwrap();
    let san = leaf
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
        .expect("subjectAltName");
    let names = SubjectAltName::from_der(san.extn_value.as_bytes()).unwrap();
    let mut found = 0;
    for g in names.0 {
        if let GeneralName::OtherName(on) = g {
            assert_eq!(on.type_id.to_string(), "2.23.147");
            assert_eq!(
                on.value.tag(),
                Tag::Utf8String,
                "the kernel wants ASN1_UTF8STR"
            );
            assert_eq!(on.value.value(), kernel.as_slice());
            // And the DER of the otherName: OID, then [0] EXPLICIT UTF8String.
            let der = on.to_der().unwrap();
            assert!(der.windows(kernel.len()).any(|w| w == kernel));
            found += 1;
        }
    }
    assert_eq!(found, 1, "exactly one CMA otherName");
}
