//! A catalogue of wrong or hostile requests, each answered with the ERROR code
//! DSP0274 prescribes, with the responder still usable afterwards.

mod common;

use common::*;
use spdm_responder::codec::{V10, V11, V12, V13};
use spdm_responder::error::ErrorCode;
use spdm_responder::requester::{KeyUpdateOp, Message};
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::transport::InMemory;
use spdm_responder::vendor::{VendorContext, VendorHandler, VendorKey};
use spdm_responder::{Requester, ResponderConfig};

const TOO_LARGE: u8 = ErrorCode::RequestTooLarge as u8;
const INVALID_SESSION: u8 = 0x02;

fn assert_error(resp: &[u8], code: u8, what: &str) {
    assert!(resp.len() >= 4, "{what}: short response {resp:02x?}");
    assert_eq!(resp[1], 0x7F, "{what}: expected ERROR, got {resp:02x?}");
    assert_eq!(
        resp[2], code,
        "{what}: expected error {code:#04x}, got {:#04x}",
        resp[2]
    );
}

fn fresh(version: u8) -> Requester<InMemory> {
    in_memory(version, &ALGOS[0], psk_config())
}

/// After a hostile request the whole flow still works.
fn usable(r: &mut Requester<InMemory>) {
    r.authenticate(0).unwrap();
    r.get_measurements(None, 0xFF, true, 0).unwrap();
}

struct Echo;
impl VendorHandler for Echo {
    fn handle(&mut self, _ctx: &VendorContext, payload: &[u8]) -> Result<Vec<u8>, ErrorCode> {
        Ok(payload.to_vec())
    }
}

fn caps_req(v: u8, flags: u32, dts: u32, max: u32) -> Vec<u8> {
    let mut m = vec![v, 0xE1, 0, 0, 0, 12, 0, 0];
    m.extend_from_slice(&flags.to_le_bytes());
    if v >= V12 {
        m.extend_from_slice(&dts.to_le_bytes());
        m.extend_from_slice(&max.to_le_bytes());
    }
    m
}

const REQ_FLAGS: u32 = 0x2 | 0x4 | 0x40 | 0x80 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x20000;

fn algs_req(v: u8, asym: u32, hash: u32, tables: &[(u8, u8, u16)]) -> Vec<u8> {
    let len = 32 + 4 * tables.len();
    let mut m = vec![v, 0xE3, tables.len() as u8, 0];
    m.extend_from_slice(&(len as u16).to_le_bytes());
    m.extend_from_slice(&[1, 2]);
    m.extend_from_slice(&asym.to_le_bytes());
    m.extend_from_slice(&hash.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    for (t, c, s) in tables {
        m.push(*t);
        m.push(*c);
        m.extend_from_slice(&s.to_le_bytes());
    }
    m
}

const TABLES: [(u8, u8, u16); 4] = [
    (2, 0x20, 0x18),
    (3, 0x20, 0x6),
    (4, 0x20, 0x90),
    (5, 0x20, 1),
];

/// Cases before negotiation completes: each on a fresh responder.
#[test]
fn catalogue_before_negotiation() {
    let v12 = V12;
    let pre: Vec<(&str, Vec<Vec<u8>>, u8)> = vec![
        (
            "GET_DIGESTS before GET_VERSION",
            vec![vec![v12, 0x81, 0, 0]],
            UNEXPECTED,
        ),
        (
            "GET_CAPABILITIES before GET_VERSION",
            vec![caps_req(v12, REQ_FLAGS, 0x1200, 0x1200)],
            UNEXPECTED,
        ),
        (
            "GET_VERSION with version byte 1.1",
            vec![vec![0x11, 0x84, 0, 0]],
            MISMATCH,
        ),
        (
            "truncated header (3 bytes)",
            vec![vec![0x10, 0x84, 0]],
            INVALID,
        ),
        ("empty message", vec![vec![]], INVALID),
        (
            "NEGOTIATE_ALGORITHMS before GET_CAPABILITIES",
            vec![vec![0x10, 0x84, 0, 0], algs_req(v12, 0x90, 3, &TABLES)],
            UNEXPECTED,
        ),
        (
            "GET_CAPABILITIES with unsupported version 1.4",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(0x14, REQ_FLAGS, 0x1200, 0x1200),
            ],
            MISMATCH,
        ),
        (
            "GET_CAPABILITIES 1.2 truncated to 12 bytes",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(V11, REQ_FLAGS, 0, 0)
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| if i == 0 { V12 } else { b })
                    .collect(),
            ],
            INVALID,
        ),
        (
            "GET_CAPABILITIES DataTransferSize below 42",
            vec![vec![0x10, 0x84, 0, 0], caps_req(v12, REQ_FLAGS, 41, 41)],
            INVALID,
        ),
        (
            "GET_CAPABILITIES DataTransferSize > MaxSPDMmsgSize",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x2000, 0x1000),
            ],
            INVALID,
        ),
        (
            "GET_CAPABILITIES PSK_CAP reserved value 3",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(V11, REQ_FLAGS | 0xC00, 0, 0),
            ],
            INVALID,
        ),
        (
            "GET_CAPABILITIES KEY_EX without MAC/ENCRYPT",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(V11, 0x2 | 0x4 | 0x200, 0, 0),
            ],
            INVALID,
        ),
        (
            "GET_CAPABILITIES DTS != Max without CHUNK_CAP",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS & !0x20000, 0x100, 0x1000),
            ],
            INVALID,
        ),
        (
            "unknown code right after VERSION",
            vec![vec![0x10, 0x84, 0, 0], vec![v12, 0x8F, 0, 0]],
            UNSUPPORTED,
        ),
        (
            "GET_DIGESTS right after VERSION",
            vec![vec![0x10, 0x84, 0, 0], vec![v12, 0x81, 0, 0]],
            UNEXPECTED,
        ),
        (
            "NEGOTIATE_ALGORITHMS Length past the end",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                {
                    let mut m = algs_req(v12, 0x90, 3, &TABLES);
                    m[4] = 0x7F;
                    m
                },
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS no common hash (SHA-512 only)",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x90, 4, &TABLES),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS no common signature (RSA only)",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x4, 3, &TABLES),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS AlgCount fixed bytes != 2",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x90, 3, &[(2, 0x30, 0x18)]),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS tables not ascending",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x90, 3, &[(3, 0x20, 6), (2, 0x20, 0x18)]),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS five tables",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(
                    v12,
                    0x90,
                    3,
                    &[
                        (2, 0x20, 0x18),
                        (3, 0x20, 6),
                        (4, 0x20, 0x10),
                        (5, 0x20, 1),
                        (6, 0x20, 1),
                    ],
                ),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS table with no algorithm",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x90, 3, &[(2, 0x20, 0x18), (3, 0x20, 0)]),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS unknown table type",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x90, 3, &[(9, 0x20, 1)]),
            ],
            INVALID,
        ),
        (
            "NEGOTIATE_ALGORITHMS truncated (20 bytes)",
            vec![
                vec![0x10, 0x84, 0, 0],
                caps_req(v12, REQ_FLAGS, 0x1200, 0x1200),
                algs_req(v12, 0x90, 3, &TABLES)[..20].to_vec(),
            ],
            INVALID,
        ),
    ];
    for (what, msgs, code) in pre {
        let mut r = fresh(V12);
        let mut last = Vec::new();
        for m in &msgs {
            last = r.raw_exchange(None, m).unwrap();
        }
        assert_error(&last, code, what);
        usable(&mut r);
    }
}

/// Cases on a negotiated (and authenticated) 1.2 connection.
#[test]
fn catalogue_after_negotiation() {
    let mut r = fresh(V12);
    r.transport_mut()
        .responder
        .register_vendor(VendorKey::pcisig(0), Box::new(Echo));
    usable(&mut r);
    let v = V12;
    let mut big = vec![v, 0xFE, 0, 0, 3, 0, 2, 1, 0];
    big.extend_from_slice(&0x1300u16.to_le_bytes());
    big.resize(0x1300 + 11, 0);
    let mut ke_short = vec![v, 0xE4, 0, 0, 1, 0, 0, 0];
    ke_short.extend_from_slice(&[0u8; 32 + 20]);
    let mut ke_zero = vec![v, 0xE4, 0, 0, 1, 0, 0, 0];
    ke_zero.extend_from_slice(&[0u8; 32 + 96 + 2]);
    let mut ke_slot = ke_zero.clone();
    ke_slot[3] = 3;
    let mut ke_opaque = ke_zero.clone();
    let n = ke_opaque.len();
    ke_opaque[n - 2..].copy_from_slice(&0x0500u16.to_le_bytes());
    let mut psk_bad = vec![v, 0xE6, 0, 0, 1, 0, 4, 0, 0, 0, 0, 0];
    psk_bad.extend_from_slice(b"nope");
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "wrong version byte 1.1 after negotiating 1.2",
            vec![V11, 0x81, 0, 0],
            MISMATCH,
        ),
        (
            "wrong version byte 1.3 after negotiating 1.2",
            vec![V13, 0x81, 0, 0],
            MISMATCH,
        ),
        (
            "unknown request code 0x90",
            vec![v, 0x90, 0, 0],
            UNSUPPORTED,
        ),
        (
            "a response code (0x04) sent as request",
            vec![v, 0x04, 0, 0],
            UNSUPPORTED,
        ),
        (
            "GET_CSR (not supported)",
            vec![v, 0xED, 0, 0, 0, 0, 0, 0],
            UNSUPPORTED,
        ),
        (
            "GET_ENCAPSULATED_REQUEST (no mutual auth)",
            vec![v, 0xEA, 0, 0],
            UNSUPPORTED,
        ),
        (
            "SET_CERTIFICATE (not supported)",
            vec![v, 0xEE, 0, 0],
            UNSUPPORTED,
        ),
        (
            "1.3-only GET_ENDPOINT_INFO on a 1.2 connection",
            vec![v, 0x87, 1, 0, 0, 0, 0, 0],
            UNSUPPORTED,
        ),
        (
            "GET_CAPABILITIES after negotiation",
            caps_req(v, REQ_FLAGS, 0x1200, 0x1200),
            UNEXPECTED,
        ),
        (
            "NEGOTIATE_ALGORITHMS after negotiation",
            algs_req(v, 0x90, 3, &TABLES),
            UNEXPECTED,
        ),
        (
            "GET_CERTIFICATE truncated",
            vec![v, 0x82, 0, 0, 0, 0],
            INVALID,
        ),
        (
            "GET_CERTIFICATE unprovisioned slot 5",
            vec![v, 0x82, 5, 0, 0, 0, 0, 4],
            INVALID,
        ),
        (
            "GET_CERTIFICATE slot 15",
            vec![v, 0x82, 15, 0, 0, 0, 0, 4],
            INVALID,
        ),
        (
            "GET_CERTIFICATE offset past the chain",
            vec![v, 0x82, 0, 0, 0xF0, 0xFF, 0, 4],
            INVALID,
        ),
        (
            "GET_CERTIFICATE length 0",
            vec![v, 0x82, 0, 0, 0, 0, 0, 0],
            INVALID,
        ),
        (
            "CHALLENGE slot 9",
            [vec![v, 0x83, 9, 0], vec![0u8; 32]].concat(),
            INVALID,
        ),
        (
            "CHALLENGE unprovisioned slot 4",
            [vec![v, 0x83, 4, 0], vec![0u8; 32]].concat(),
            INVALID,
        ),
        (
            "CHALLENGE truncated nonce",
            vec![v, 0x83, 0, 0, 1, 2, 3],
            INVALID,
        ),
        (
            "CHALLENGE bad summary hash type 5",
            [vec![v, 0x83, 0, 5], vec![0u8; 32]].concat(),
            INVALID,
        ),
        (
            "GET_MEASUREMENTS nonexistent index 0x42",
            vec![v, 0xE0, 0, 0x42],
            INVALID,
        ),
        (
            "GET_MEASUREMENTS signed without nonce",
            vec![v, 0xE0, 1, 0xFF],
            INVALID,
        ),
        (
            "GET_MEASUREMENTS signed, unprovisioned slot 7",
            [vec![v, 0xE0, 1, 0xFF], vec![0u8; 32], vec![7]].concat(),
            INVALID,
        ),
        (
            "HEARTBEAT outside a session",
            vec![v, 0xE8, 0, 0],
            SESSION_REQUIRED,
        ),
        (
            "KEY_UPDATE outside a session",
            vec![v, 0xE9, 1, 1],
            SESSION_REQUIRED,
        ),
        (
            "END_SESSION outside a session",
            vec![v, 0xEC, 0, 0],
            SESSION_REQUIRED,
        ),
        (
            "FINISH outside a session",
            [vec![v, 0xE5, 0, 0], vec![0u8; 32]].concat(),
            SESSION_REQUIRED,
        ),
        (
            "PSK_FINISH outside a session",
            [vec![v, 0xE7, 0, 0], vec![0u8; 32]].concat(),
            SESSION_REQUIRED,
        ),
        ("KEY_EXCHANGE truncated exchange data", ke_short, INVALID),
        (
            "KEY_EXCHANGE point not on the curve (all zero)",
            ke_zero,
            INVALID,
        ),
        ("KEY_EXCHANGE unprovisioned slot 3", ke_slot, INVALID),
        (
            "KEY_EXCHANGE opaque length past the end",
            ke_opaque,
            INVALID,
        ),
        ("PSK_EXCHANGE unknown PSK hint", psk_bad, INVALID),
        (
            "RESPOND_IF_READY with nothing pending",
            vec![v, 0xFF, 0x83, 1],
            UNEXPECTED,
        ),
        (
            "CHUNK_GET without a large response",
            vec![v, 0x86, 0, 1, 0, 0],
            UNEXPECTED,
        ),
        ("request larger than DataTransferSize", big, TOO_LARGE),
        (
            "VENDOR_DEFINED with no handler",
            vec![v, 0xFE, 0, 0, 0x42, 0, 2, 1, 0, 1, 0, 9],
            UNSUPPORTED,
        ),
        (
            "VENDOR_DEFINED truncated payload",
            vec![v, 0xFE, 0, 0, 3, 0, 2, 1, 0, 9, 0, 0],
            INVALID,
        ),
        (
            "VENDOR_DEFINED IDE_KM outside a session",
            vec![v, 0xFE, 0, 0, 3, 0, 2, 1, 0, 1, 0, 0],
            SESSION_REQUIRED,
        ),
    ];
    let n = cases.len();
    for (what, m, code) in cases {
        let resp = r.raw_exchange(None, &m).unwrap();
        assert_error(&resp, code, what);
        usable(&mut r);
    }
    assert!(n >= 38);
}

/// Cases inside secured sessions.
#[test]
fn catalogue_in_session() {
    let mut r = fresh(V13);
    r.transport_mut()
        .responder
        .register_vendor(VendorKey::pcisig(0), Box::new(Echo));
    usable(&mut r);
    let v = V13;
    let s = r.key_exchange(0, 0).unwrap();
    let other = r.psk_exchange(0).unwrap();
    // The vendor hook works inside the session.
    assert_eq!(
        r.vendor_request(Some(s), 3, &[1, 0], &[0, 0xAB]).unwrap(),
        vec![0, 0xAB]
    );
    let in_session: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "KEY_UPDATE VerifyNewKey without an update",
            vec![v, 0xE9, 3, 9],
            INVALID,
        ),
        (
            "KEY_UPDATE unknown operation 7",
            vec![v, 0xE9, 7, 9],
            INVALID,
        ),
        (
            "CHALLENGE inside a session",
            [vec![v, 0x83, 0, 0], vec![0u8; 40]].concat(),
            UNEXPECTED,
        ),
        (
            "KEY_EXCHANGE inside a session",
            [vec![v, 0xE4, 0, 0], vec![0u8; 140]].concat(),
            UNEXPECTED,
        ),
        (
            "GET_VERSION inside a session",
            vec![0x10, 0x84, 0, 0],
            UNEXPECTED,
        ),
        (
            "FINISH in an established session",
            [vec![v, 0xE5, 0, 0], vec![0u8; 48]].concat(),
            UNEXPECTED,
        ),
        (
            "PSK_FINISH in an established session",
            [vec![v, 0xE7, 0, 0], vec![0u8; 48]].concat(),
            UNEXPECTED,
        ),
        (
            "wrong version byte inside a session",
            vec![V12, 0xE8, 0, 0],
            MISMATCH,
        ),
    ];
    for (what, m, code) in in_session {
        let resp = r.raw_exchange(Some(s), &m).unwrap();
        assert_error(&resp, code, what);
        r.heartbeat(s).unwrap();
    }
    // Bad MAC: DecryptError (protected with the session's response key), the
    // session is terminated, the other session is untouched.
    let mut rec = r.seal_only(s, &[v, 0xE8, 0, 0]).unwrap();
    let last = rec.len() - 1;
    rec[last] ^= 0x55;
    let Message::Secured(reply) = r.raw_record(&rec).unwrap() else {
        panic!("expected a secured reply")
    };
    assert_error(&r.open_response(s, &reply).unwrap(), DECRYPT, "bad MAC");
    assert!(!r.transport_mut().responder.session_ids().contains(&s));
    r.forget_session(s);
    r.heartbeat(other).unwrap();
    // Use after END_SESSION: InvalidSession in the clear.
    let s2 = r.key_exchange(0, 0).unwrap();
    let stale = r.seal_only(s2, &[v, 0xE8, 0, 0]).unwrap();
    let Message::Secured(ok) = r.raw_record(&stale).unwrap() else {
        panic!()
    };
    assert_eq!(r.open_response(s2, &ok).unwrap()[1], 0x68);
    r.end_session(s2).unwrap();
    let Message::Spdm(m) = r.raw_record(&stale).unwrap() else {
        panic!("expected plain")
    };
    assert_error(&m, INVALID_SESSION, "use after END_SESSION");
    // Unknown session id.
    let mut bogus = vec![0x78, 0x56, 0x34, 0x12, 20, 0];
    bogus.extend_from_slice(&[0u8; 20]);
    let Message::Spdm(m) = r.raw_record(&bogus).unwrap() else {
        panic!("expected plain")
    };
    assert_error(&m, INVALID_SESSION, "unknown session id");
    // Record too short for a session id.
    let Message::Spdm(m) = r.raw_record(&[1, 2]).unwrap() else {
        panic!("expected plain")
    };
    assert_error(&m, INVALID, "record shorter than a session id");
    // Replayed record.
    let s3 = r.key_exchange(0, 0).unwrap();
    let rec = r.seal_only(s3, &[v, 0xE8, 0, 0]).unwrap();
    let Message::Secured(ok) = r.raw_record(&rec).unwrap() else {
        panic!()
    };
    assert_eq!(r.open_response(s3, &ok).unwrap()[1], 0x68);
    let Message::Secured(reply) = r.raw_record(&rec).unwrap() else {
        panic!()
    };
    assert_error(
        &r.open_response(s3, &reply).unwrap(),
        DECRYPT,
        "replayed record",
    );
    r.forget_session(s3);
    // Truncated record of a live session.
    let s4 = r.key_exchange(0, 0).unwrap();
    let mut rec = r.seal_only(s4, &[v, 0xE8, 0, 0]).unwrap();
    rec.truncate(10);
    let Message::Secured(reply) = r.raw_record(&rec).unwrap() else {
        panic!()
    };
    assert_error(
        &r.open_response(s4, &reply).unwrap(),
        DECRYPT,
        "truncated record",
    );
    r.forget_session(s4);
    r.heartbeat(other).unwrap();
    r.key_update_op(other, KeyUpdateOp::UpdateAllKeys).unwrap();
    r.heartbeat(other).unwrap();
    r.end_session(other).unwrap();
    usable(&mut r);
}

#[test]
fn finish_with_wrong_verify_data_is_decrypt_error() {
    let mut r = fresh(V12);
    usable(&mut r);
    r.config_mut().fault = spdm_responder::requester::Fault::CorruptFinish;
    let e = r.key_exchange(0, 0).unwrap_err();
    assert!(format!("{e}").contains("DecryptError"), "{e}");
    let e = r.psk_exchange(0).unwrap_err();
    assert!(format!("{e}").contains("DecryptError"), "{e}");
    assert!(r.transport_mut().responder.session_ids().is_empty());
    r.config_mut().fault = spdm_responder::requester::Fault::None;
    let s = r.key_exchange(0, 0).unwrap();
    // FINISH again inside the established session.
    let resp = r
        .raw_exchange(
            Some(s),
            &[[V12, 0xE5, 0, 0].as_slice(), &[0u8; 32]].concat(),
        )
        .unwrap();
    assert_error(&resp, UNEXPECTED, "FINISH after FINISH");
    r.end_session(s).unwrap();
    usable(&mut r);
}

#[test]
fn sequence_number_exhaustion_ends_session_cleanly() {
    let cfg = ResponderConfig {
        max_sequence_number: 3,
        ..psk_config()
    };
    let mut r = in_memory(V12, &ALGOS[1], cfg);
    usable(&mut r);
    let s = r.key_exchange(0, 0).unwrap();
    // Data phase sequence numbers 0..=3 are usable.
    for _ in 0..4 {
        r.heartbeat(s).unwrap();
    }
    let e = r.heartbeat(s).unwrap_err();
    assert!(format!("{e}").contains("DecryptError"), "{e}");
    assert!(r.transport_mut().responder.session_ids().is_empty());
    // KEY_UPDATE restarts the counters, so a session that re-keys lives on.
    let s = r.key_exchange(0, 0).unwrap();
    for _ in 0..3 {
        r.heartbeat(s).unwrap();
    }
    r.key_update_op(s, KeyUpdateOp::UpdateAllKeys).unwrap();
    for _ in 0..3 {
        r.heartbeat(s).unwrap();
    }
    usable(&mut r);
}

#[test]
fn old_versions_refuse_newer_requests() {
    let mut r = fresh(V10);
    usable(&mut r);
    let resp = r
        .raw_exchange(None, &[[V10, 0xE4, 0, 0].as_slice(), &[0u8; 100]].concat())
        .unwrap();
    assert_error(&resp, UNSUPPORTED, "KEY_EXCHANGE on 1.0");
    let resp = r
        .raw_exchange(None, &[V10, 0x85, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert_error(&resp, UNSUPPORTED, "CHUNK_SEND on 1.0");
    usable(&mut r);
    let mut r = fresh(V11);
    usable(&mut r);
    let resp = r.raw_exchange(None, &[V11, 0xE8, 0, 0]).unwrap();
    assert_error(&resp, UNEXPECTED, "HEARTBEAT outside a session on 1.1");
    usable(&mut r);
}

#[test]
fn chunk_send_protocol_errors() {
    let cfg = ResponderConfig {
        data_transfer_size: 64,
        ..psk_config()
    };
    let mut rc = requester_config(V12, &ALGOS[0]);
    rc.data_transfer_size = 64;
    let mut r = Requester::with_entropy(
        rc,
        InMemory::new(responder(cfg)),
        Box::new(DeterministicEntropy::new(b"r")),
    );
    usable(&mut r);
    // First chunk with sequence number 1.
    let mut m = vec![V12, 0x85, 0, 7, 1, 0, 0, 0];
    m.extend_from_slice(&4u32.to_le_bytes());
    m.extend_from_slice(&[1, 2, 3, 4]);
    let resp = r.raw_exchange(None, &m).unwrap();
    assert_eq!(resp[1], 0x05);
    assert_eq!(resp[2] & 1, 1, "EarlyErrorDetected");
    assert_error(&resp[6..], UNEXPECTED, "CHUNK_SEND without first chunk");
    // LargeMessageSize that fits one message.
    let mut m = vec![V12, 0x85, 0, 7, 0, 0, 0, 0];
    m.extend_from_slice(&4u32.to_le_bytes());
    m.extend_from_slice(&10u32.to_le_bytes());
    m.extend_from_slice(&[1, 2, 3, 4]);
    let resp = r.raw_exchange(None, &m).unwrap();
    assert_error(&resp[6..], INVALID, "CHUNK_SEND small large message");
    usable(&mut r);
}
