//! Our requester against our responder: every version, every algorithm set,
//! over in-memory, DOE objects and the spdm-emu TCP socket.

mod common;

use common::*;
use spdm_responder::codec::{V10, V11, V12, V13};
use spdm_responder::requester::{KeyUpdateOp, Transport};
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::transport::doe::{DoeEndpoint, DoeTransport, ProtocolId};
use spdm_responder::transport::tcp::{self, EmuClient, TRANSPORT_MCTP, TRANSPORT_PCI_DOE};
use spdm_responder::transport::InMemory;
use spdm_responder::{Requester, ResponderConfig};

/// The whole flow a kernel / conformance requester drives.
fn full_flow<T: Transport>(r: &mut Requester<T>, version: u8) {
    let c = r.init_connection().unwrap().clone();
    assert_eq!(c.version, version);
    let (mask, digests) = r.get_digests().unwrap();
    assert_eq!(mask, 0b11);
    assert_eq!(digests.len(), 2);
    for slot in [0u8, 1] {
        r.get_certificate(slot).unwrap();
    }
    for ht in [0u8, 1, 0xFF] {
        let ch = r.challenge(0, ht).unwrap();
        assert_eq!(ch.measurement_summary_hash.is_empty(), ht == 0);
    }
    r.challenge(1, 0).unwrap();
    let count = r.get_measurements(None, 0, false, 0).unwrap();
    assert_eq!(count.total, 4);
    let all = r.get_measurements(None, 0xFF, true, 0).unwrap();
    assert!(all.signature_verified);
    assert_eq!(all.blocks.len(), 4);
    assert_eq!(all.blocks[2].value_type, 0x86);
    assert_eq!(all.blocks[2].value, b"1.0.0");
    // Unsigned single indices then a signed one: L1/L2 covers all of them.
    for i in 1..=4u8 {
        let m = r.get_measurements(None, i, false, 0).unwrap();
        assert_eq!(m.blocks.len(), 1);
        assert_eq!(m.blocks[0].index, i);
    }
    r.get_measurements(None, 2, true, 1).unwrap();
    if version == V10 {
        return;
    }
    // Sessions (1.1+).
    let s1 = r.key_exchange(0, 0).unwrap();
    let s2 = r.key_exchange(1, 0xFF).unwrap();
    let s3 = r.psk_exchange(0).unwrap();
    for s in [s1, s2, s3] {
        r.heartbeat(s).unwrap();
        let m = r.get_measurements(Some(s), 0xFF, true, 0).unwrap();
        assert!(m.signature_verified);
        r.key_update(s, false).unwrap();
        r.heartbeat(s).unwrap();
        r.key_update(s, true).unwrap();
        r.heartbeat(s).unwrap();
        r.key_update_op(s, KeyUpdateOp::UpdateKey).unwrap();
        r.heartbeat(s).unwrap();
    }
    r.end_session(s2).unwrap();
    r.heartbeat(s1).unwrap();
    r.end_session(s1).unwrap();
    r.end_session(s3).unwrap();
    assert!(r.session_ids().is_empty());
}

#[test]
fn in_memory_all_versions_all_algorithms() {
    for v in [V10, V11, V12, V13] {
        for a in &ALGOS {
            let mut r = in_memory(v, a, psk_config());
            full_flow(&mut r, v);
            assert!(
                r.transport_mut().responder.session_ids().is_empty(),
                "{} {v:#x}",
                a.name
            );
        }
    }
}

#[test]
fn doe_objects_all_versions() {
    for v in [V10, V11, V12, V13] {
        for a in [&ALGOS[0], &ALGOS[3]] {
            let ep = DoeEndpoint::new(responder(psk_config()));
            let mut t = DoeTransport::new(ep);
            assert_eq!(
                t.discover().unwrap(),
                vec![
                    ProtocolId::DISCOVERY,
                    ProtocolId::CMA,
                    ProtocolId::SECURED_CMA
                ]
            );
            let mut r = Requester::with_entropy(
                requester_config(v, a),
                t,
                Box::new(DeterministicEntropy::new(b"req")),
            );
            full_flow(&mut r, v);
        }
    }
}

#[test]
fn tcp_loopback_pci_doe_and_mctp() {
    for (v, a) in [(V12, &ALGOS[0]), (V13, &ALGOS[1]), (V11, &ALGOS[2])] {
        let (port, _stop, h) = tcp::spawn_tcp(0, responder(psk_config())).unwrap();
        let mut c = EmuClient::connect(port, TRANSPORT_PCI_DOE).unwrap();
        assert_eq!(c.hello().unwrap(), b"Server Hello!\0");
        let mut t = DoeTransport::new(c);
        assert_eq!(t.discover().unwrap().len(), 3);
        let mut r = Requester::with_entropy(
            requester_config(v, a),
            t,
            Box::new(DeterministicEntropy::new(b"req")),
        );
        full_flow(&mut r, v);
        r.transport_mut().channel.shutdown().unwrap();
        h.join().unwrap();
    }
    // MCTP framing (2-byte sequence numbers in secured records).
    let (port, _stop, h) = tcp::spawn_tcp(0, responder(psk_config())).unwrap();
    let c = EmuClient::connect(port, TRANSPORT_MCTP).unwrap();
    let mut r = Requester::with_entropy(
        requester_config(V13, &ALGOS[0]),
        c,
        Box::new(DeterministicEntropy::new(b"req")),
    );
    r.set_mctp_binding(true);
    full_flow(&mut r, V13);
    r.transport_mut().shutdown().unwrap();
    h.join().unwrap();
}

#[test]
fn chunking_small_data_transfer_size() {
    // DataTransferSize 64 on both sides: CERTIFICATE, MEASUREMENTS and
    // KEY_EXCHANGE(_RSP) need CHUNK_GET / CHUNK_SEND.
    for v in [V12, V13] {
        for a in [&ALGOS[0], &ALGOS[1]] {
            let cfg = ResponderConfig {
                data_transfer_size: 64,
                ..psk_config()
            };
            let mut rc = requester_config(v, a);
            rc.data_transfer_size = 64;
            let mut r = Requester::with_entropy(
                rc,
                InMemory::new(responder(cfg)),
                Box::new(DeterministicEntropy::new(b"req")),
            );
            full_flow(&mut r, v);
        }
    }
}

#[test]
fn respond_if_ready_flow() {
    let cfg = ResponderConfig {
        respond_not_ready: true,
        ..psk_config()
    };
    let mut r = in_memory(V12, &ALGOS[1], cfg);
    full_flow(&mut r, V12);
}

#[test]
fn mac_only_sessions_and_padding() {
    let cfg = ResponderConfig {
        encrypt: false,
        max_padding: 16,
        ..psk_config()
    };
    let mut r = in_memory(V12, &ALGOS[0], cfg);
    full_flow(&mut r, V12);
    let cfg = ResponderConfig {
        max_padding: 32,
        ..psk_config()
    };
    let mut r = in_memory(V13, &ALGOS[3], cfg);
    full_flow(&mut r, V13);
}

#[test]
fn get_version_resets_sessions_and_identity_is_stable() {
    let mut r = in_memory(V12, &ALGOS[0], psk_config());
    r.authenticate(0).unwrap();
    let s = r.key_exchange(0, 0).unwrap();
    r.heartbeat(s).unwrap();
    // A new GET_VERSION (the requester re-initialises) drops every session.
    r.init_connection().unwrap();
    assert!(r.transport_mut().responder.session_ids().is_empty());
    r.get_certificate(0).unwrap();
    r.challenge(0, 0).unwrap();
}

#[test]
fn several_concurrent_sessions_are_independent() {
    let mut r = in_memory(V13, &ALGOS[1], psk_config());
    r.authenticate(0).unwrap();
    let ids: Vec<u32> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                r.key_exchange(0, 0).unwrap()
            } else {
                r.psk_exchange(0).unwrap()
            }
        })
        .collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 4);
    // A fifth is refused (SessionLimitExceeded).
    let e = r.key_exchange(0, 0).unwrap_err();
    assert!(format!("{e}").contains("SessionLimitExceeded"), "{e}");
    for round in 0..3 {
        for &s in ids.iter().rev() {
            r.heartbeat(s).unwrap();
            if round == 1 {
                r.key_update(s, s % 2 == 0).unwrap();
            }
        }
    }
    for s in ids {
        r.end_session(s).unwrap();
    }
}

/// KEY_EXCHANGE with the responder's ECDHE keys from ring: every version and
/// algorithm set interoperates with the (RustCrypto) requester.
#[test]
fn ring_ecdhe_sessions() {
    use spdm_responder::crypto::EcdhBackend;
    for v in [V11, V12, V13] {
        for a in &ALGOS {
            let cfg = ResponderConfig {
                ecdh: EcdhBackend::Ring,
                ..psk_config()
            };
            let mut r = in_memory(v, a, cfg);
            r.authenticate(0).unwrap();
            let s = r.key_exchange(0, 0).unwrap();
            r.heartbeat(s).unwrap();
            r.key_update(s, true).unwrap();
            r.end_session(s).unwrap();
        }
    }
}
