//! Unit tests of the responder's internals.

use super::negotiation::check_requester_flags;
use super::*;
use crate::codec::{caps, rsp, V10, V11, V12, V13};
use crate::crypto::AsymAlgo;
use crate::crypto::HashAlgo;
use crate::identity::CmaDeviceName;
use crate::measurement;
use crate::rng::DeterministicEntropy;

fn responder_with(cfg: ResponderConfig) -> Responder {
    let mut rng = DeterministicEntropy::new(b"unit");
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP256],
        &CmaDeviceName::default(),
        1,
        &mut rng,
    )
    .unwrap();
    Responder::with_entropy(cfg, id, Box::new(rng))
}

fn responder() -> Responder {
    responder_with(ResponderConfig::default())
}

#[test]
fn version_response_and_reset() {
    let mut r = responder();
    assert_eq!(
        r.handle_message(&[0x10, 0x84, 0, 0]),
        vec![0x10, 0x04, 0, 0, 0, 4, 0, 0x10, 0, 0x11, 0, 0x12, 0, 0x13]
    );
    assert_eq!(r.state(), ConnState::AfterVersion);
    // Trailing bytes (DOE padding) are ignored and not part of the transcript.
    assert_eq!(r.handle_message(&[0x10, 0x84, 0, 0, 0, 0, 0, 0])[1], 0x04);
    assert_eq!(r.conn.vca.len(), 4 + 14);
}

#[test]
fn capabilities_are_masked_per_version() {
    let r = responder();
    assert_eq!(r.rsp_caps(V10) & !caps::MASK_10, 0);
    assert_eq!(
        r.rsp_caps(V10),
        caps::CERT | caps::CHAL | caps::MEAS_SIG | caps::MEAS_FRESH
    );
    assert_eq!(r.rsp_caps(V11) & caps::CHUNK, 0);
    assert_ne!(r.rsp_caps(V12) & caps::CHUNK, 0);
    // PSK sessions are off unless a key is configured.
    assert_eq!(r.rsp_caps(V13) & caps::PSK_MASK, 0);
    let r = responder_with(ResponderConfig {
        psks: vec![PskEntry::dmtf_test()],
        ..ResponderConfig::default()
    });
    assert_eq!(r.rsp_caps(V13) & caps::PSK_MASK, caps::PSK_WITH_CONTEXT);
    assert_eq!(r.rsp_caps(V10) & caps::PSK_MASK, 0);
}

#[test]
fn requester_flag_rules() {
    let ok = caps::CERT | caps::CHAL | caps::ENCRYPT | caps::MAC | caps::KEY_EX;
    assert!(check_requester_flags(ok, V12));
    assert!(!check_requester_flags(ok | caps::PSK_MASK, V12));
    assert!(!check_requester_flags(caps::KEY_EX | caps::CERT, V12));
    assert!(!check_requester_flags(caps::HBEAT, V12));
    assert!(!check_requester_flags(caps::CHAL, V12));
    assert!(!check_requester_flags(ok | caps::PUB_KEY_ID, V12));
    assert!(!check_requester_flags(ok | caps::MUT_AUTH, V11));
    assert!(check_requester_flags(
        ok | caps::MUT_AUTH | caps::ENCAP,
        V11
    ));
}

#[test]
fn measurement_blocks() {
    let m = &measurement::default_measurements("9.9", b"cfg")[2];
    let b = m.block(Some(HashAlgo::Sha256), false);
    assert_eq!(b, vec![3, 1, 6, 0, 0x86, 3, 0, b'9', b'.', b'9']);
    let d =
        measurement::default_measurements("9.9", b"cfg")[0].block(Some(HashAlgo::Sha384), false);
    assert_eq!(&d[..7], &[1, 1, 51, 0, 0x00, 48, 0]);
    assert_eq!(
        measurement::parse_record(&[b.clone(), d.clone()].concat(), 2)
            .unwrap()
            .len(),
        2
    );
    assert!(measurement::parse_record(&b[..5], 1).is_none());
}

#[test]
fn every_request_code_is_answered_without_panic() {
    let mut r = responder();
    for code in 0u8..=255 {
        for len in [0usize, 1, 4, 5, 12, 40, 200] {
            let mut m = vec![0x10u8, code, 0xFF, 0xFF];
            m.resize(len, 0xA5);
            let out = r.handle_message(&m);
            assert!(out.len() >= 4);
        }
    }
    // Same after negotiation, with the negotiated version.
    let mut r = responder();
    r.handle_message(&[0x10, 0x84, 0, 0]);
    let mut c = vec![0x12, 0xE1, 0, 0, 0, 12, 0, 0];
    c.extend_from_slice(
        &(caps::CERT | caps::CHAL | caps::MAC | caps::KEY_EX | caps::CHUNK).to_le_bytes(),
    );
    c.extend_from_slice(&0x1200u32.to_le_bytes());
    c.extend_from_slice(&0x1200u32.to_le_bytes());
    assert_eq!(r.handle_message(&c)[1], rsp::CAPABILITIES);
    let mut a = vec![0x12, 0xE3, 2, 0, 40, 0, 1, 2];
    a.extend_from_slice(&0x10u32.to_le_bytes());
    a.extend_from_slice(&1u32.to_le_bytes());
    a.extend_from_slice(&[0u8; 16]);
    a.extend_from_slice(&[2, 0x20, 0x08, 0, 5, 0x20, 1, 0]);
    assert_eq!(r.handle_message(&a)[1], rsp::ALGORITHMS);
    for code in 0u8..=255 {
        for len in [4usize, 5, 12, 40, 200] {
            let mut m = vec![0x12u8, code, 0, 0];
            m.resize(len, 0x00);
            assert!(r.handle_message(&m).len() >= 4);
            let mut m = vec![0x12u8, code, 0xFF, 0xFF];
            m.resize(len, 0xFF);
            assert!(r.handle_message(&m).len() >= 4);
        }
    }
}
