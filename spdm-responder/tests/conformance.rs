//! DSP0274 1.3 conformance rules, one test per rule, each citing the section
//! of DSP0274 1.3.0 it pins (by title; CONFORMANCE.md lists them all). The
//! first five are violations DMTF's SPDM-Responder-Validator found in an
//! earlier version (cases 2.4, 3.5/3.6, 7.8, 9.11).

mod common;

use common::*;
use spdm_responder::codec::{caps, V10, V11, V12, V13};
use spdm_responder::crypto::{ASYM_ECDSA_P256, HASH_SHA256};
use spdm_responder::error::ErrorCode;
use spdm_responder::requester::{Fault, Message};
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::transport::InMemory;
use spdm_responder::{Requester, ResponderConfig};

const ERROR: u8 = 0x7F;

/// An ERROR with this SPDMVersion and code.
fn assert_error(resp: &[u8], version: u8, code: u8, what: &str) {
    assert!(resp.len() >= 4, "{what}: short response {resp:02x?}");
    assert_eq!(resp[1], ERROR, "{what}: expected ERROR, got {resp:02x?}");
    assert_eq!(resp[2], code, "{what}: error code {:#04x}", resp[2]);
    assert_eq!(
        resp[0], version,
        "{what}: ERROR SPDMVersion {:#04x}",
        resp[0]
    );
}

/// A requester whose transport records the exchange (for
/// [`last_response`]).
fn requester(version: u8, cfg: ResponderConfig) -> Requester<InMemory> {
    Requester::with_entropy(
        requester_config(version, &ALGOS[0]),
        InMemory::recording(responder(cfg)),
        Box::new(DeterministicEntropy::new(b"conformance")),
    )
}

/// The last plain response with this response code.
fn last_response(r: &mut Requester<InMemory>, code: u8) -> Vec<u8> {
    let log = r.transport_mut().log.as_ref().expect("recording");
    log.iter()
        .rev()
        .find_map(|m| match m {
            Message::Spdm(b) if b.get(1) == Some(&code) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no response {code:#04x}"))
}

fn caps_req(v: u8, param1: u8, flags: u32) -> Vec<u8> {
    let mut m = vec![v, 0xE1, param1, 0, 0, 12, 0, 0];
    m.extend_from_slice(&flags.to_le_bytes());
    if v >= V12 {
        m.extend_from_slice(&0x1200u32.to_le_bytes());
        m.extend_from_slice(&0x1200u32.to_le_bytes());
    }
    m
}

const GOOD_FLAGS: u32 = caps::CERT | caps::CHAL | caps::ENCRYPT | caps::MAC | caps::KEY_EX;

/// DSP0274 1.3.0 "ERROR response message" / "SPDM version": once GET_CAPABILITIES
/// selected a version VERSION offered, an ERROR answering it carries that
/// version; an ERROR about the version itself (VersionMismatch) and any ERROR
/// answering GET_VERSION carry 1.0. (Validator case 2.4, assertion 2.4.3.)
#[test]
fn error_spdm_version_follows_the_selected_version() {
    for v in [V11, V12, V13] {
        let mut r = requester(v, ResponderConfig::default());
        assert_eq!(r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap()[1], 0x04);
        // KEY_EX_CAP without MAC_CAP or ENCRYPT_CAP: InvalidRequest, in version v.
        let bad = caps_req(v, 0, caps::CERT | caps::CHAL | caps::KEY_EX);
        assert_error(
            &r.raw_exchange(None, &bad).unwrap(),
            v,
            INVALID,
            "invalid GET_CAPABILITIES flags",
        );
    }
    let mut r = requester(V12, ResponderConfig::default());
    r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap();
    // A version VERSION did not offer: VersionMismatch in 1.0.
    assert_error(
        &r.raw_exchange(None, &caps_req(0x14, 0, GOOD_FLAGS))
            .unwrap(),
        V10,
        MISMATCH,
        "GET_CAPABILITIES 1.4",
    );
    // After negotiation: the negotiated version, except for GET_VERSION.
    r.init_connection().unwrap();
    assert_error(
        &r.raw_exchange(None, &[V12, 0x90, 0, 0]).unwrap(),
        V12,
        UNSUPPORTED,
        "unknown request code",
    );
    assert_error(
        &r.raw_exchange(None, &[V11, 0x81, 0, 0]).unwrap(),
        V12,
        MISMATCH,
        "GET_DIGESTS 1.1 on a 1.2 connection",
    );
    assert_error(
        &r.raw_exchange(None, &[V12, 0x84, 0, 0]).unwrap(),
        V10,
        MISMATCH,
        "GET_VERSION 1.2",
    );
}

/// DSP0274 1.3.0 "NEGOTIATE_ALGORITHMS request and ALGORITHMS response
/// messages", ReqBaseAsymAlg of the AlgStructure table: the requester's
/// signing algorithm for mutual authentication; without MUT_AUTH_CAP (this
/// responder never advertises it) the selection is zero. (Validator 3.5.15,
/// 3.6.15.)
#[test]
fn algorithms_req_base_asym_alg_is_zero_without_mutual_auth() {
    for v in [V11, V12, V13] {
        let mut r = requester(v, ResponderConfig::default());
        r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap();
        let c = r.raw_exchange(None, &caps_req(v, 0, GOOD_FLAGS)).unwrap();
        let rsp_caps = u32::from_le_bytes([c[8], c[9], c[10], c[11]]);
        assert_eq!(rsp_caps & caps::MUT_AUTH, 0);
        // As the validator sends it: DHE, AEAD, ReqBaseAsymAlg, KeySchedule.
        let mut a = vec![v, 0xE3, 4, 0, 48, 0, 1, 0];
        a.extend_from_slice(&(ASYM_ECDSA_P256 | 0x80).to_le_bytes());
        a.extend_from_slice(&HASH_SHA256.to_le_bytes());
        a.extend_from_slice(&[0u8; 16]);
        a.extend_from_slice(&[
            2, 0x20, 0x18, 0, 3, 0x20, 0x06, 0, 4, 0x20, 0x90, 0, 5, 0x20, 1, 0,
        ]);
        let algs = r.raw_exchange(None, &a).unwrap();
        assert_eq!(algs[1], 0x63, "{algs:02x?}");
        let n = algs[2] as usize;
        assert!(n >= 4, "all four tables echoed");
        let mut seen = false;
        for t in 0..n {
            let at = 36 + 4 * t;
            assert_eq!(algs[at + 1], 0x20, "AlgCount");
            let sel = u16::from_le_bytes([algs[at + 2], algs[at + 3]]);
            if algs[at] == 4 {
                assert_eq!(sel, 0, "ReqBaseAsymAlg selected without MUT_AUTH_CAP");
                seen = true;
            } else {
                assert_eq!(sel.count_ones(), 1, "table {} selects one", algs[at]);
            }
        }
        assert!(seen);
    }
}

/// DSP0274 1.3.0 "SPDM request and response code issuance allowance" and
/// "GET_MEASUREMENTS request and MEASUREMENTS response messages":
/// GET_MEASUREMENTS inside a session is allowed only in its application
/// phase; in the handshake phase (after KEY_EXCHANGE_RSP, before FINISH) it is
/// UnexpectedRequest. The same holds for every application-phase request.
/// (Validator 7.8.)
#[test]
fn application_requests_in_the_handshake_phase_are_unexpected() {
    for v in [V11, V12, V13] {
        let mut r = requester(v, psk_config());
        r.init_connection().unwrap();
        r.get_digests().unwrap();
        r.get_certificate(0).unwrap();
        r.config_mut().fault = Fault::NoFinish;
        let s = r.key_exchange(0, 0).unwrap();
        let p = r.psk_exchange(0).unwrap();
        r.config_mut().fault = Fault::None;
        for sid in [s, p] {
            let cases: [(&str, Vec<u8>); 7] = [
                ("GET_MEASUREMENTS", vec![v, 0xE0, 0, 0xFF]),
                ("GET_DIGESTS", vec![v, 0x81, 0, 0]),
                ("GET_CERTIFICATE", vec![v, 0x82, 0, 0, 0, 0, 0, 1]),
                ("HEARTBEAT", vec![v, 0xE8, 0, 0]),
                ("KEY_UPDATE", vec![v, 0xE9, 1, 1]),
                ("END_SESSION", vec![v, 0xEC, 0, 0]),
                (
                    "VENDOR_DEFINED_REQUEST",
                    vec![v, 0xFE, 0, 0, 3, 0, 2, 1, 0, 1, 0, 0],
                ),
            ];
            for (what, m) in cases {
                let resp = r.raw_exchange(Some(sid), &m).unwrap();
                assert_error(&resp, v, UNEXPECTED, what);
            }
        }
        // The handshake is still waiting for its FINISH: a wrong one is a
        // DecryptError (and ends the session), not UnexpectedRequest.
        let fin = [vec![v, 0xE5, 0, 0], vec![0u8; 32]].concat();
        assert_error(
            &r.raw_exchange(Some(s), &fin).unwrap(),
            v,
            DECRYPT,
            "FINISH with wrong verify data",
        );
        // A complete session still works.
        let s = r.key_exchange(0, 0).unwrap();
        r.get_measurements(Some(s), 0xFF, true, 0).unwrap();
        r.end_session(s).unwrap();
    }
}

/// DSP0274 1.3.0 "FINISH request and FINISH_RSP response messages" and
/// "SPDM request and response code issuance allowance": without
/// HANDSHAKE_IN_THE_CLEAR_CAP, FINISH (and PSK_FINISH) travel inside the
/// session being finished; one sent outside a session is answered with
/// SessionRequired (1.2+; 1.1 has no such code: UnexpectedRequest).
/// (Validator 9.11.)
#[test]
fn finish_outside_a_session_is_session_required() {
    for v in [V11, V12, V13] {
        let mut r = requester(v, psk_config());
        r.init_connection().unwrap();
        r.get_digests().unwrap();
        r.get_certificate(0).unwrap();
        r.config_mut().fault = Fault::NoFinish;
        r.key_exchange(0, 0).unwrap();
        r.psk_exchange(0).unwrap();
        let want = if v >= V12 {
            SESSION_REQUIRED
        } else {
            UNEXPECTED
        };
        for (what, code) in [("FINISH", 0xE5u8), ("PSK_FINISH", 0xE7)] {
            let m = [vec![v, code, 0, 0], vec![0u8; 32]].concat();
            assert_error(&r.raw_exchange(None, &m).unwrap(), v, want, what);
        }
        for (what, m) in [
            ("HEARTBEAT", vec![v, 0xE8, 0, 0]),
            ("KEY_UPDATE", vec![v, 0xE9, 1, 1]),
            ("END_SESSION", vec![v, 0xEC, 0, 0]),
        ] {
            assert_error(&r.raw_exchange(None, &m).unwrap(), v, want, what);
        }
    }
}

/// DSP0274 1.3.0 "SPDM request and response code issuance allowance": the
/// connection-level requests are not allowed inside a session.
#[test]
fn connection_requests_inside_a_session_are_unexpected() {
    let v = V13;
    let mut r = requester(v, psk_config());
    r.init_connection().unwrap();
    r.get_digests().unwrap();
    r.get_certificate(0).unwrap();
    let s = r.key_exchange(0, 0).unwrap();
    let cases: [(&str, Vec<u8>, u8); 6] = [
        ("GET_VERSION", vec![V10, 0x84, 0, 0], V10),
        ("GET_CAPABILITIES", caps_req(v, 0, GOOD_FLAGS), v),
        ("NEGOTIATE_ALGORITHMS", vec![v, 0xE3, 0, 0, 32, 0, 1, 0], v),
        (
            "CHALLENGE",
            [vec![v, 0x83, 0, 0], vec![0u8; 40]].concat(),
            v,
        ),
        (
            "KEY_EXCHANGE",
            [vec![v, 0xE4, 0, 0], vec![0u8; 140]].concat(),
            v,
        ),
        (
            "PSK_EXCHANGE",
            vec![v, 0xE6, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            v,
        ),
    ];
    for (what, m, ev) in cases {
        assert_error(&r.raw_exchange(Some(s), &m).unwrap(), ev, UNEXPECTED, what);
        r.heartbeat(s).unwrap();
    }
}

/// Error precedence (CONFORMANCE.md): a request whose capability was not
/// negotiated is UnsupportedRequest before any session-phase check.
#[test]
fn unsupported_capability_comes_before_session_checks() {
    let mut r = requester(V12, ResponderConfig::default());
    r.config_mut().caps &= !(caps::HBEAT | caps::KEY_UPD);
    r.init_connection().unwrap();
    for (what, m) in [
        ("HEARTBEAT", vec![V12, 0xE8, 0, 0]),
        ("KEY_UPDATE", vec![V12, 0xE9, 1, 1]),
        (
            "PSK_FINISH without PSK_CAP",
            [vec![V12, 0xE7, 0, 0], vec![0u8; 32]].concat(),
        ),
    ] {
        let resp = r.raw_exchange(None, &m).unwrap();
        assert_error(&resp, V12, UNSUPPORTED, what);
        assert_eq!(resp[3], m[1], "{what}: ErrorData is the request code");
    }
}

/// DSP0274 1.3.0 "CHALLENGE request and CHALLENGE_AUTH response messages":
/// Param1 carries the SlotID, Param2 the SlotMask of the slots holding a
/// certificate chain (the same mask DIGESTS reports), not only the slot used.
#[test]
fn challenge_auth_param2_is_the_slot_mask() {
    for v in [V10, V12, V13] {
        let mut r = requester(v, ResponderConfig::default());
        r.init_connection().unwrap();
        let (mask, _) = r.get_digests().unwrap();
        assert_eq!(mask, 0b11, "the test identity provisions slots 0 and 1");
        r.get_certificate(1).unwrap();
        r.challenge(1, 0).unwrap();
        let auth = last_response(&mut r, 0x03);
        assert_eq!(auth[2] & 0x0F, 1, "SlotID");
        assert_eq!(auth[3], mask, "SlotMask");
    }
}

/// DSP0274 1.3.0 "Reserved fields" convention (clause "Conventions"): reserved
/// fields are sent as zero and ignored when received. GET_CERTIFICATE Param1
/// bits 7:4 and GET_DIGESTS Param1/Param2 are reserved in 1.0-1.3.
#[test]
fn reserved_request_fields_are_ignored() {
    let mut r = requester(V13, ResponderConfig::default());
    r.init_connection().unwrap();
    let d = r.raw_exchange(None, &[V13, 0x81, 0xAA, 0x55]).unwrap();
    assert_eq!(d[1], 0x01, "DIGESTS despite reserved Param1/Param2");
    let c = r
        .raw_exchange(None, &[V13, 0x82, 0xF0, 0, 0, 0, 0x10, 0])
        .unwrap();
    assert_eq!(c[1], 0x02, "CERTIFICATE despite reserved Param1 bits");
    assert_eq!(c[2], 0, "slot 0");
    assert_eq!(u16::from_le_bytes([c[4], c[5]]), 0x10);
}

/// DSP0274 1.3.0 "GET_CAPABILITIES request and CAPABILITIES response
/// messages", requester flags: EP_INFO_CAP and MULTI_KEY_CAP value 11b are
/// reserved, MULTI_KEY_CAP needs CERT_CAP, and Param1 SupportedAlgorithms needs
/// CHUNK_CAP. Bits a version does not define are ignored.
#[test]
fn capabilities_1_3_requester_flags() {
    let cases: [(&str, u8, u32); 4] = [
        ("EP_INFO_CAP 11b", 0, GOOD_FLAGS | (3 << 22)),
        ("MULTI_KEY_CAP 11b", 0, GOOD_FLAGS | (3 << 26)),
        (
            "MULTI_KEY_CAP without CERT_CAP",
            0,
            caps::ENCRYPT | caps::MAC | caps::PSK | (1 << 26),
        ),
        ("SupportedAlgorithms without CHUNK_CAP", 1, GOOD_FLAGS),
    ];
    for (what, p1, flags) in cases {
        let mut r = requester(V13, ResponderConfig::default());
        r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap();
        let resp = r.raw_exchange(None, &caps_req(V13, p1, flags)).unwrap();
        assert_error(&resp, V13, INVALID, what);
    }
    // The same reserved values in a 1.2 request are undefined bits: ignored.
    let mut r = requester(V12, ResponderConfig::default());
    r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap();
    let resp = r
        .raw_exchange(None, &caps_req(V12, 1, GOOD_FLAGS | (3 << 22) | (3 << 26)))
        .unwrap();
    assert_eq!(resp[1], 0x61, "{resp:02x?}");
}

/// DSP0274 1.3.0 "NEGOTIATE_ALGORITHMS request...": AlgType of the AlgStructure
/// tables shall increase from one to the next (1.1 too).
#[test]
fn algorithm_tables_must_be_ascending_in_1_1() {
    let mut r = requester(V11, ResponderConfig::default());
    r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap();
    let c = r.raw_exchange(None, &caps_req(V11, 0, GOOD_FLAGS)).unwrap();
    assert_eq!(c[1], 0x61);
    let mut a = vec![V11, 0xE3, 2, 0, 40, 0, 1, 0];
    a.extend_from_slice(&ASYM_ECDSA_P256.to_le_bytes());
    a.extend_from_slice(&HASH_SHA256.to_le_bytes());
    a.extend_from_slice(&[0u8; 16]);
    a.extend_from_slice(&[3, 0x20, 2, 0, 2, 0x20, 0x10, 0]);
    assert_error(
        &r.raw_exchange(None, &a).unwrap(),
        V11,
        INVALID,
        "AEAD table before DHE",
    );
}

/// DSP0274 1.3.0 "KEY_EXCHANGE request and KEY_EXCHANGE_RSP response
/// messages", SessionPolicy bit 1 (EventAllPolicy) requires EVENT_CAP, which
/// this responder does not advertise.
#[test]
fn key_exchange_event_policy_without_event_cap_is_invalid() {
    let v = V13;
    let mut r = requester(v, ResponderConfig::default());
    r.init_connection().unwrap();
    let mut ke = vec![v, 0xE4, 0, 0, 1, 0, 0x02, 0];
    ke.extend_from_slice(&[0u8; 32 + 64 + 2]);
    assert_error(
        &r.raw_exchange(None, &ke).unwrap(),
        v,
        INVALID,
        "EventAllPolicy",
    );
}

/// DSP0274 1.3.0 "GET_MEASUREMENTS request...": measurements need a
/// negotiated measurement specification; a requester that sent
/// MeasurementSpecification 0 gets UnexpectedRequest, and a measurement
/// summary hash in CHALLENGE is InvalidRequest.
#[test]
fn measurements_need_a_negotiated_measurement_specification() {
    let v = V12;
    let mut r = requester(v, ResponderConfig::default());
    r.raw_exchange(None, &[0x10, 0x84, 0, 0]).unwrap();
    r.raw_exchange(None, &caps_req(v, 0, GOOD_FLAGS | caps::CHUNK))
        .unwrap();
    let mut a = vec![v, 0xE3, 0, 0, 32, 0, 0, 2];
    a.extend_from_slice(&ASYM_ECDSA_P256.to_le_bytes());
    a.extend_from_slice(&HASH_SHA256.to_le_bytes());
    a.extend_from_slice(&[0u8; 16]);
    let algs = r.raw_exchange(None, &a).unwrap();
    assert_eq!(algs[1], 0x63);
    assert_eq!(algs[6], 0, "no MeasurementSpecificationSel");
    assert_error(
        &r.raw_exchange(None, &[v, 0xE0, 0, 0xFF]).unwrap(),
        v,
        UNEXPECTED,
        "GET_MEASUREMENTS",
    );
    let ch = [vec![v, 0x83, 0, 0xFF], vec![0u8; 32]].concat();
    assert_error(
        &r.raw_exchange(None, &ch).unwrap(),
        v,
        INVALID,
        "CHALLENGE summary",
    );
}

/// Item 2 of issue 9: no PSK unless configured. The default configuration
/// advertises no PSK_CAP and answers PSK_EXCHANGE with UnsupportedRequest.
#[test]
fn psk_sessions_are_off_by_default() {
    for v in [V11, V12, V13] {
        let mut r = requester(v, ResponderConfig::default());
        let c = r.init_connection().unwrap().clone();
        assert_eq!(c.rsp_caps & caps::PSK_MASK, 0, "PSK_CAP in {v:#x}");
        let e = r.psk_exchange(0).unwrap_err();
        assert!(format!("{e}").contains("UnsupportedRequest"), "{e}");
        // With the key configured, the same requester gets a session.
        let mut r = requester(v, psk_config());
        let c = r.init_connection().unwrap().clone();
        assert_eq!(c.rsp_caps & caps::PSK_MASK, caps::PSK_WITH_CONTEXT);
        let s = r.psk_exchange(0).unwrap();
        r.heartbeat(s).unwrap();
        r.end_session(s).unwrap();
    }
}

/// DSP0274 1.3.0 "CHUNK_GET request and CHUNK_RESPONSE response message":
/// a chunked transfer is not interrupted by requests outside the chunk
/// sequence (GET_VERSION excepted): they get UnexpectedRequest and the
/// transfer continues; a wrong handle is InvalidRequest, also without ending
/// it.
#[test]
fn a_chunked_response_is_not_interrupted() {
    let v = V12;
    let mut cfg = requester_config(v, &ALGOS[0]);
    cfg.data_transfer_size = 64;
    let mut r = Requester::with_entropy(
        cfg,
        InMemory::recording(responder(ResponderConfig::default())),
        Box::new(DeterministicEntropy::new(b"chunk")),
    );
    r.init_connection().unwrap();
    // 1 KiB of certificate chain: larger than our 64-byte DataTransferSize.
    let resp = r.raw_exchange(None, &[v, 0x82, 0, 0, 0, 0, 0, 4]).unwrap();
    assert_error(&resp, v, ErrorCode::LargeResponse as u8, "GET_CERTIFICATE");
    let handle = resp[4];
    for (what, m) in [
        ("GET_DIGESTS", vec![v, 0x81, 0, 0]),
        ("CHALLENGE", [vec![v, 0x83, 0, 0], vec![0u8; 32]].concat()),
        (
            "CHUNK_SEND",
            vec![
                v, 0x85, 0, 1, 0, 0, 0, 0, 4, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4,
            ],
        ),
    ] {
        assert_error(&r.raw_exchange(None, &m).unwrap(), v, UNEXPECTED, what);
    }
    let bad = r
        .raw_exchange(None, &[v, 0x86, 0, handle.wrapping_add(1), 0, 0])
        .unwrap();
    assert_error(&bad, v, INVALID, "CHUNK_GET with another handle");
    // The transfer is still there: chunk 0 of it.
    let c0 = r.raw_exchange(None, &[v, 0x86, 0, handle, 0, 0]).unwrap();
    assert_eq!(c0[1], 0x06, "CHUNK_RESPONSE {c0:02x?}");
    assert_eq!(c0[3], handle);
    // GET_VERSION ends it.
    assert_eq!(r.raw_exchange(None, &[V10, 0x84, 0, 0]).unwrap()[1], 0x04);
    r.init_connection().unwrap();
    let after = r.raw_exchange(None, &[v, 0x86, 0, handle, 1, 0]).unwrap();
    assert_error(&after, v, UNEXPECTED, "CHUNK_GET after GET_VERSION");
}
