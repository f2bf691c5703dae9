//! IDE_KM against a device's IDE port through a real SPDM session (our
//! requester, in memory): the DMTF flow, key refresh, zeroization, and a
//! catalogue of wrong requests, each answered as PCIe §6.33.3 / DSP0274
//! prescribe, with the port still usable after every one of them.

use spdm_responder::error::{ErrorCode, RequesterError};
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, KpAckStatus, SubStream};
use spdm_responder::transport::InMemory;
use spdm_responder::vendor::{PCISIG_VENDOR_ID, STANDARD_ID_PCISIG};
use spdm_responder::{Requester, RequesterConfig, Responder, ResponderConfig};
use std::sync::Arc;
use trustdev_devices::security::ide::km::IdeKmPorts;
use trustdev_devices::security::ide::{Ide, IdeConfig};

mod dma_copy_rig;

use dma_copy_rig::identity;

struct Rig {
    r: Requester<InMemory>,
    ide: Arc<Ide>,
}

fn rig(versions: Vec<u8>) -> Rig {
    let ide = Ide::new(IdeConfig::default());
    let mut responder = Responder::new(ResponderConfig::default(), identity());
    let (key, handler) = IdeKmPorts::new(vec![Arc::clone(&ide)]).handler();
    responder.register_vendor(key, handler);
    let cfg = RequesterConfig {
        versions,
        trusted_roots: identity().roots_der(),
        ..RequesterConfig::default()
    };
    let mut r = Requester::new(cfg, InMemory::new(responder));
    connect(&mut r);
    Rig { r, ide }
}

/// VCA and the certificate (KEY_EXCHANGE verifies the responder with it).
fn connect(r: &mut Requester<InMemory>) {
    r.init_connection().unwrap();
    r.get_digests().unwrap();
    r.get_certificate(0).unwrap();
}

fn raw(
    r: &mut Requester<InMemory>,
    sid: Option<u32>,
    payload: &[u8],
) -> Result<Vec<u8>, RequesterError> {
    r.vendor_request(
        sid,
        STANDARD_ID_PCISIG,
        &PCISIG_VENDOR_ID.to_le_bytes(),
        payload,
    )
}

fn slot(set: KeySet, d: KeyDirection, ss: SubStream) -> KeySlot {
    KeySlot::new(set, d, ss)
}

fn key_prog_payload(stream: u8, kss: u8, port: u8) -> Vec<u8> {
    let mut v = vec![0, 2, 0, 0, stream, 0, kss, port];
    v.extend_from_slice(&*IdeKey::new([7; 32], 1).to_wire());
    v
}

fn stream_req(obj: u8, stream: u8, kss: u8, port: u8) -> Vec<u8> {
    vec![0, obj, 0, 0, stream, 0, kss, port]
}

/// The DMTF requester's sequence (K0 × RX/TX × PR/NPR/CPL on stream 0),
/// here on port 0 of a one-port device.
fn program_all(r: &mut Requester<InMemory>, sid: u32, stream: u8, set: KeySet, seed: u8) {
    for d in [KeyDirection::Rx, KeyDirection::Tx] {
        for ss in SubStream::ALL {
            let s = slot(set, d, ss);
            let k = IdeKey::new([seed ^ s.to_byte(); 32], 1);
            assert_eq!(
                r.ide_km_key_prog(sid, stream, s, 0, &k).unwrap(),
                Ok(KpAckStatus::Success)
            );
            r.ide_km_key_set_go(sid, stream, s, 0).unwrap();
        }
    }
}

fn stop_all(r: &mut Requester<InMemory>, sid: u32, stream: u8, set: KeySet) {
    for d in [KeyDirection::Rx, KeyDirection::Tx] {
        for ss in SubStream::ALL {
            r.ide_km_key_set_stop(sid, stream, slot(set, d, ss), 0)
                .unwrap();
        }
    }
}

#[test]
fn dmtf_flow_query_program_go_stop() {
    let mut t = rig(vec![0x12]);
    let sid = t.r.key_exchange(0, 0).unwrap();
    let q = t.r.ide_km_query(sid, 0).unwrap();
    assert_eq!(q.max_port_index, 0);
    assert_eq!(q.regs, t.ide.register_image(), "the live register image");
    assert_eq!(q.regs[0], IdeConfig::default().cap_register());
    program_all(&mut t.r, sid, 0, KeySet::K0, 0x10);
    assert!(
        t.ide
            .key_states(0)
            .iter()
            .filter(|(_, s)| *s == "armed")
            .count()
            == 6
    );
    stop_all(&mut t.r, sid, 0, KeySet::K0);
    assert!(t.ide.key_states(0).is_empty(), "K_SET_STOP zeroizes");
}

#[test]
fn keys_go_with_their_session() {
    let mut t = rig(vec![0x13]);
    let s1 = t.r.key_exchange(0, 0).unwrap();
    program_all(&mut t.r, s1, 0, KeySet::K0, 1);
    let s2 = t.r.key_exchange(0, 0).unwrap();
    // Session 2 cannot arm or stop session 1's keys, nor overwrite them.
    let k0rxpr = slot(KeySet::K0, KeyDirection::Rx, SubStream::Posted);
    let err = t.r.ide_km_key_set_stop(s2, 0, k0rxpr, 0).unwrap_err();
    assert_error(err, ErrorCode::UnexpectedRequest);
    t.r.end_session(s2).unwrap();
    assert!(!t.ide.key_states(0).is_empty(), "another session's end");
    t.r.end_session(s1).unwrap();
    assert!(t.ide.key_states(0).is_empty(), "END_SESSION zeroizes");
    // GET_VERSION (a new connection) ends every session.
    let s3 = t.r.key_exchange(0, 0).unwrap();
    program_all(&mut t.r, s3, 0, KeySet::K1, 2);
    connect(&mut t.r);
    assert!(t.ide.key_states(0).is_empty(), "a new connection zeroizes");
    // So does a device reset.
    let s4 = t.r.key_exchange(0, 0).unwrap();
    program_all(&mut t.r, s4, 0, KeySet::K0, 3);
    t.ide.reset();
    assert!(t.ide.key_states(0).is_empty(), "reset zeroizes");
}

fn assert_error(e: RequesterError, code: ErrorCode) {
    match e {
        RequesterError::ErrorResponse { code: Some(c), .. } => assert_eq!(c, code),
        other => panic!("expected ERROR {code:?}, got {other:?}"),
    }
}

#[derive(Debug)]
enum Expect {
    Error(ErrorCode),
    KpAck(KpAckStatus),
}

#[test]
fn catalogue_of_wrong_requests() {
    let mut t = rig(vec![0x13]);
    let sid = t.r.key_exchange(0, 0).unwrap();
    let other = t.r.key_exchange(0, 0).unwrap();
    // Stream 0 exists (every stream's ID is 0 after reset); 200 does not.
    let k0txcpl = slot(KeySet::K0, KeyDirection::Tx, SubStream::Completion).to_byte();
    // A slot armed in `sid`, and one programmed (not armed) in `other`.
    let armed = slot(KeySet::K1, KeyDirection::Rx, SubStream::Posted);
    t.r.ide_km_key_prog(sid, 0, armed, 0, &IdeKey::new([1; 32], 1))
        .unwrap()
        .unwrap();
    t.r.ide_km_key_set_go(sid, 0, armed, 0).unwrap();
    let foreign = slot(KeySet::K1, KeyDirection::Tx, SubStream::NonPosted);
    t.r.ide_km_key_prog(other, 0, foreign, 0, &IdeKey::new([2; 32], 1))
        .unwrap()
        .unwrap();

    use Expect::*;
    use KpAckStatus::*;
    let mut kp_long = key_prog_payload(0, 0, 0);
    kp_long.push(0);
    let cases: Vec<(&str, Option<u32>, Vec<u8>, Expect)> = vec![
        (
            "QUERY outside a session",
            None,
            vec![0, 0, 0, 0],
            Error(ErrorCode::SessionRequired),
        ),
        (
            "KEY_PROG outside a session",
            None,
            key_prog_payload(0, 0, 0),
            Error(ErrorCode::SessionRequired),
        ),
        (
            "K_SET_GO outside a session",
            None,
            stream_req(4, 0, 0, 0),
            Error(ErrorCode::SessionRequired),
        ),
        (
            "K_SET_STOP outside a session",
            None,
            stream_req(5, 0, 0, 0),
            Error(ErrorCode::SessionRequired),
        ),
        (
            "QUERY for a port the device does not have",
            Some(sid),
            vec![0, 0, 0, 1],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "QUERY one byte short",
            Some(sid),
            vec![0, 0, 0],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "QUERY one byte long",
            Some(sid),
            vec![0, 0, 0, 0, 0],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "IDE_KM without an object ID",
            Some(sid),
            vec![0],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "unknown object ID 07h",
            Some(sid),
            vec![0, 7, 0, 0],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "QUERY_RESP sent as a request",
            Some(sid),
            vec![0, 1, 0, 0, 0, 0, 0, 0],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "KP_ACK sent as a request",
            Some(sid),
            stream_req(3, 0, 0, 0),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_GOSTOP_ACK sent as a request",
            Some(sid),
            stream_req(6, 0, 0, 0),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "KEY_PROG one byte short",
            Some(sid),
            key_prog_payload(0, 0, 0)[..47].to_vec(),
            KpAck(IncorrectLength),
        ),
        (
            "KEY_PROG one byte long",
            Some(sid),
            kp_long,
            KpAck(IncorrectLength),
        ),
        (
            "KEY_PROG without a key",
            Some(sid),
            stream_req(2, 0, 0, 0),
            KpAck(IncorrectLength),
        ),
        (
            "KEY_PROG shorter than its header",
            Some(sid),
            vec![0, 2, 0, 0, 0, 0, 0],
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "KEY_PROG to a port the device does not have",
            Some(sid),
            key_prog_payload(0, 0, 1),
            KpAck(UnsupportedPortIndex),
        ),
        (
            "KEY_PROG to port 255",
            Some(sid),
            key_prog_payload(0, 0, 255),
            KpAck(UnsupportedPortIndex),
        ),
        (
            "KEY_PROG with reserved sub-stream 3",
            Some(sid),
            key_prog_payload(0, 0x30, 0),
            KpAck(UnsupportedValue),
        ),
        (
            "KEY_PROG with reserved sub-stream 15",
            Some(sid),
            key_prog_payload(0, 0xf2, 0),
            KpAck(UnsupportedValue),
        ),
        (
            "KEY_PROG for a Stream ID no stream has",
            Some(sid),
            key_prog_payload(200, 0, 0),
            KpAck(UnsupportedValue),
        ),
        (
            "KEY_PROG to an armed slot",
            Some(sid),
            key_prog_payload(0, armed.to_byte(), 0),
            KpAck(UnspecifiedFailure),
        ),
        (
            "KEY_PROG over another session's key",
            Some(sid),
            key_prog_payload(0, foreign.to_byte(), 0),
            KpAck(UnspecifiedFailure),
        ),
        (
            "K_SET_GO without a key",
            Some(sid),
            stream_req(4, 0, k0txcpl, 0),
            Error(ErrorCode::UnexpectedRequest),
        ),
        (
            "K_SET_GO for a Stream ID no stream has",
            Some(sid),
            stream_req(4, 200, armed.to_byte(), 0),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_GO to a port the device does not have",
            Some(sid),
            stream_req(4, 0, armed.to_byte(), 3),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_GO with reserved sub-stream 4",
            Some(sid),
            stream_req(4, 0, 0x40, 0),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_GO one byte short",
            Some(sid),
            stream_req(4, 0, 0, 0)[..7].to_vec(),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_GO one byte long",
            Some(sid),
            [stream_req(4, 0, 0, 0), vec![0]].concat(),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_GO of another session's key",
            Some(sid),
            stream_req(4, 0, foreign.to_byte(), 0),
            Error(ErrorCode::UnexpectedRequest),
        ),
        (
            "K_SET_STOP for a Stream ID no stream has",
            Some(sid),
            stream_req(5, 200, armed.to_byte(), 0),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_STOP to a port the device does not have",
            Some(sid),
            stream_req(5, 0, armed.to_byte(), 1),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_STOP one byte long",
            Some(sid),
            [stream_req(5, 0, 0, 0), vec![0]].concat(),
            Error(ErrorCode::InvalidRequest),
        ),
        (
            "K_SET_STOP of another session's key",
            Some(sid),
            stream_req(5, 0, foreign.to_byte(), 0),
            Error(ErrorCode::UnexpectedRequest),
        ),
    ];
    assert!(cases.len() >= 30);
    // Stopping an empty slot is acknowledged (nothing to stop).
    assert_eq!(
        raw(&mut t.r, Some(sid), &stream_req(5, 0, k0txcpl, 0)).unwrap(),
        [0, 6, 0, 0, 0, 0, k0txcpl, 0]
    );
    let image = t.ide.register_image();
    for (name, s, payload, expect) in cases {
        let got = raw(&mut t.r, s, &payload);
        match (&expect, got) {
            (Error(code), Err(e)) => match e {
                RequesterError::ErrorResponse { code: Some(c), .. } => {
                    assert_eq!(c, *code, "{name}")
                }
                other => panic!("{name}: expected ERROR {code:?}, got {other:?}"),
            },
            (KpAck(st), Ok(rsp)) => {
                assert_eq!(rsp.len(), 8, "{name}: KP_ACK length");
                assert_eq!(&rsp[..2], &[0, 3], "{name}: KP_ACK");
                assert_eq!(rsp[5], *st as u8, "{name}: KP_ACK status");
                // The header fields are echoed as received.
                assert_eq!(rsp[4], payload[4], "{name}: stream echoed");
                assert_eq!(rsp[6..8], payload[6..8], "{name}: slot and port echoed");
            }
            (e, got) => panic!("{name}: expected {e:?}, got {got:?}"),
        }
        // Nothing changed and the port still answers.
        assert_eq!(t.ide.register_image(), image, "{name}: registers unchanged");
        assert_eq!(
            t.ide
                .key_states(0)
                .iter()
                .filter(|(_, st)| *st != "empty")
                .count(),
            2,
            "{name}: key slots unchanged"
        );
        t.r.ide_km_query(sid, 0).unwrap();
    }
    // Still fully usable: every slot of K0, armed, retired.
    program_all(&mut t.r, sid, 0, KeySet::K0, 9);
    stop_all(&mut t.r, sid, 0, KeySet::K0);
}

#[test]
fn outside_a_session_before_spdm_1_2() {
    let mut t = rig(vec![0x11]);
    let e = raw(&mut t.r, None, &[0, 0, 0, 0]).unwrap_err();
    assert_error(e, ErrorCode::UnexpectedRequest);
    let e = raw(&mut t.r, None, &key_prog_payload(0, 0, 0)).unwrap_err();
    assert_error(e, ErrorCode::UnexpectedRequest);
    assert!(t.ide.key_states(0).is_empty());
    let sid = t.r.key_exchange(0, 0).unwrap();
    t.r.ide_km_query(sid, 0).unwrap();
}
