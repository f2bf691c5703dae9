//! DOE objects, discovery and CMA dispatch as a device model and a requester
//! drive them (transport::doe, the one home of DOE encoding).

mod common;

use common::*;
use spdm_responder::codec::V12;
use spdm_responder::error::{RequesterError, TransportError};
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::transport::doe::{
    self, decode_object, discovery_request, encode_object, DoeChannel, DoeEndpoint, DoeError,
    DoeProtocol, DoeTransport, ProtocolId,
};
use spdm_responder::transport::storage::{
    spsp, StorageBinding, OP_DISCOVERY, OP_SECURED_SPDM, OP_SPDM, SECP_SPDM,
};
use spdm_responder::{Message, Requester, Responder, ResponderConfig, Transport};

fn cma_endpoint() -> DoeEndpoint<Responder> {
    DoeEndpoint::new(responder(ResponderConfig::default()))
}

#[test]
fn discovery_walk_and_out_of_range_index() {
    let mut ep = cma_endpoint();
    let mut seen = Vec::new();
    let mut index = 0u8;
    loop {
        let r = ep
            .handle(&encode_object(ProtocolId::DISCOVERY, &discovery_request(index, 2)).unwrap())
            .unwrap();
        assert_eq!(r.len(), 12);
        assert_eq!(&r[..8], &[1, 0, 0, 0, 3, 0, 0, 0]);
        seen.push(ProtocolId::new(u16::from_le_bytes([r[8], r[9]]), r[10]));
        if r[11] == 0 {
            break;
        }
        index = r[11];
    }
    assert_eq!(
        seen,
        vec![
            ProtocolId::DISCOVERY,
            ProtocolId::CMA,
            ProtocolId::SECURED_CMA
        ]
    );
    assert_eq!(ep.protocols(), seen);
    // Index past the table: vendor FFFFh type FFh (as QEMU's DOE answers)
    // and next index 0, so a walk cannot loop (PCIe r6.0 §6.30.1.1).
    let r = ep
        .handle(&encode_object(ProtocolId::DISCOVERY, &[9, 0, 0, 0]).unwrap())
        .unwrap();
    assert_eq!(&r[8..], &[0xff, 0xff, 0xff, 0]);
    // A discovery request without its dword is discarded.
    assert_eq!(
        ep.handle(&encode_object(ProtocolId::DISCOVERY, &[]).unwrap()),
        Err(DoeError::BadDiscovery)
    );
    // The requester-side walk over the same endpoint.
    assert_eq!(doe::discover(&mut ep, 2).unwrap(), seen);
}

#[test]
fn malformed_objects_are_rejected_and_endpoint_survives() {
    let mut ep = cma_endpoint();
    assert_eq!(ep.handle(&[1, 0, 1, 0]), Err(DoeError::Truncated));
    assert_eq!(
        ep.handle(&[1, 0, 1, 0, 3, 0, 0, 0, 0x10]),
        Err(DoeError::NotDwordAligned(9))
    );
    assert_eq!(
        ep.handle(&[1, 0, 1, 0, 9, 0, 0, 0, 0x10, 0x84, 0, 0]),
        Err(DoeError::LengthMismatch {
            header: 9,
            actual: 3
        })
    );
    assert_eq!(
        ep.handle(&[1, 0, 1, 0, 0, 0, 0, 0, 0x10, 0x84, 0, 0]),
        Err(DoeError::LengthMismatch {
            header: 1 << 18,
            actual: 3
        })
    );
    let foreign = ProtocolId::new(0x1e0f, 1);
    assert_eq!(
        ep.handle(&encode_object(foreign, &[0x10, 0x84, 0, 0]).unwrap()),
        Err(DoeError::UnsupportedProtocol(foreign))
    );
    assert_eq!(
        ep.handle(&encode_object(ProtocolId::new(1, 7), &[]).unwrap()),
        Err(DoeError::UnsupportedProtocol(ProtocolId::new(1, 7)))
    );
    // A CMA object whose (padded) SPDM message is not GET_VERSION gets an SPDM
    // ERROR (UnexpectedRequest) inside a CMA object.
    let r = ep
        .handle(&encode_object(ProtocolId::CMA, &[0x10]).unwrap())
        .unwrap();
    let (p, payload) = decode_object(&r).unwrap();
    assert_eq!(p, ProtocolId::CMA);
    assert_eq!(&payload[..4], &[0x10, 0x7F, 0x04, 0x00]);
    // An empty CMA object: InvalidRequest.
    let r = ep
        .handle(&encode_object(ProtocolId::CMA, &[]).unwrap())
        .unwrap();
    assert_eq!(
        &decode_object(&r).unwrap().1[..4],
        &[0x10, 0x7F, 0x01, 0x00]
    );
    // GET_VERSION in a padded object works (trailing zero padding is ignored).
    let r = ep
        .handle(&encode_object(ProtocolId::CMA, &[0x10, 0x84, 0, 0, 0]).unwrap())
        .unwrap();
    assert_eq!(decode_object(&r).unwrap().1[1], 0x04);
    // Then the whole flow over the same endpoint.
    let mut r = Requester::with_entropy(
        requester_config(V12, &ALGOS[0]),
        DoeTransport::new(ep),
        Box::new(DeterministicEntropy::new(b"x")),
    );
    r.authenticate(0).unwrap();
    let s = r.key_exchange(0, 0).unwrap();
    r.heartbeat(s).unwrap();
    // Device reset (DOE abort / FLR) drops the session.
    r.transport_mut().channel.reset();
    assert!(r.heartbeat(s).is_err());
}

fn discarded(e: &RequesterError) -> bool {
    matches!(e, RequesterError::Transport(s) if s.contains("protocol 0001:02 produced no response"))
}

/// The documented policy (transport::doe, `impl DoeProtocol for Responder`):
/// a secured CMA request the responder could only answer in plain gets no
/// response object at all; a bad record in a live session gets a sealed
/// DecryptError (type 2), as DMTF libspdm does.
#[test]
fn secured_request_answerable_only_in_plain_is_discarded() {
    let mut r = Requester::with_entropy(
        requester_config(V12, &ALGOS[0]),
        DoeTransport::new(cma_endpoint()),
        Box::new(DeterministicEntropy::new(b"plain")),
    );
    r.authenticate(0).unwrap();
    let live = r.key_exchange(0, 0).unwrap();
    let s = r.key_exchange(0, 0).unwrap();
    let stale = r.seal_only(s, &[V12, 0xE8, 0, 0]).unwrap();
    let Message::Secured(ok) = r.raw_record(&stale).unwrap() else {
        panic!("expected a secured HEARTBEAT_ACK")
    };
    assert_eq!(r.open_response(s, &ok).unwrap()[1], 0x68);
    r.end_session(s).unwrap();
    // After END_SESSION, an unknown session id, a record without one.
    let mut bogus = vec![0x78, 0x56, 0x34, 0x12, 20, 0];
    bogus.extend_from_slice(&[0u8; 20]);
    for (what, rec) in [
        ("use after END_SESSION", stale),
        ("unknown session id", bogus),
        ("record shorter than a session id", vec![1, 2]),
    ] {
        let e = r.raw_record(&rec).unwrap_err();
        assert!(discarded(&e), "{what}: {e}");
    }
    // A bad MAC in a live session: a secured (type 2) DecryptError.
    let mut rec = r.seal_only(live, &[V12, 0xE8, 0, 0]).unwrap();
    let last = rec.len() - 1;
    rec[last] ^= 0x55;
    let Message::Secured(reply) = r.raw_record(&rec).unwrap() else {
        panic!("expected a secured reply")
    };
    let err = r.open_response(live, &reply).unwrap();
    assert_eq!(&err[1..3], &[0x7F, 0x06], "DecryptError");
    r.forget_session(live);
    // The endpoint keeps working.
    let again = r.key_exchange(0, 0).unwrap();
    r.heartbeat(again).unwrap();
    r.end_session(again).unwrap();
}

/// A vendor-defined data object protocol: answers with the payload reversed.
struct Reverse(u32);

impl DoeProtocol for Reverse {
    fn protocols(&self) -> Vec<ProtocolId> {
        vec![ProtocolId::new(0x1e0f, 0x22)]
    }
    fn handle(&mut self, _: ProtocolId, request: &[u8]) -> Option<Vec<u8>> {
        self.0 += 1;
        Some(request.iter().rev().copied().collect())
    }
    fn reset(&mut self) {
        self.0 = 0;
    }
}

#[test]
fn protocol_set_is_pluggable() {
    let protocols: Vec<Box<dyn DoeProtocol>> = vec![
        Box::new(responder(ResponderConfig::default())),
        Box::new(Reverse(0)),
    ];
    let mut ep = DoeEndpoint::new(protocols);
    let vendor = ProtocolId::new(0x1e0f, 0x22);
    assert_eq!(
        doe::discover(&mut ep, 2).unwrap(),
        vec![
            ProtocolId::DISCOVERY,
            ProtocolId::CMA,
            ProtocolId::SECURED_CMA,
            vendor
        ]
    );
    let (p, rsp) = doe::exchange(&mut ep, vendor, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!((p, rsp), (vendor, vec![0, 0, 0, 5, 4, 3, 2, 1]));
    // CMA over the same instance.
    let mut r = Requester::with_entropy(
        requester_config(V12, &ALGOS[1]),
        DoeTransport::new(&mut ep),
        Box::new(DeterministicEntropy::new(b"mix")),
    );
    r.authenticate(0).unwrap();
    let s = r.key_exchange(0, 0).unwrap();
    r.end_session(s).unwrap();
    drop(r);
    ep.reset();
    let (_, rsp) = doe::exchange(&mut ep, vendor, &[]).unwrap();
    assert!(rsp.is_empty());
}

/// A channel that answers every object with a fixed object.
struct Canned(Vec<u8>);

impl DoeChannel for Canned {
    fn exchange_object(&mut self, _: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.0.clone())
    }
}

#[test]
fn requester_transport_checks_the_response_protocol() {
    let plain_error = encode_object(ProtocolId::CMA, &[0x12, 0x7F, 0x02, 0]).unwrap();
    let mut t = DoeTransport::new(Canned(plain_error));
    // A plain CMA reply to a secured request is passed on (old libspdm
    // answers an unknown session that way).
    assert!(matches!(
        t.send_receive(Message::Secured(vec![0; 8])),
        Ok(Message::Spdm(m)) if m[1] == 0x7F
    ));
    // A secured reply to a plain request, or a discovery object, is refused.
    let secured = encode_object(ProtocolId::SECURED_CMA, &[0; 8]).unwrap();
    let mut t = DoeTransport::new(Canned(secured));
    assert!(matches!(
        t.send_receive(Message::Spdm(vec![0x12, 0x84, 0, 0])),
        Err(TransportError::Doe(DoeError::ProtocolMismatch { .. }))
    ));
    let disc = encode_object(ProtocolId::DISCOVERY, &[1, 0, 1, 0]).unwrap();
    let mut t = DoeTransport::new(Canned(disc));
    assert!(matches!(
        t.send_receive(Message::Secured(vec![0; 8])),
        Err(TransportError::Doe(DoeError::ProtocolMismatch { .. }))
    ));
    // A discovery walk that never ends is cut off.
    let endless = encode_object(ProtocolId::DISCOVERY, &[1, 0, 1, 7]).unwrap();
    assert!(doe::discover(&mut Canned(endless), 0).is_err());
}

#[test]
fn storage_binding_carries_spdm() {
    let mut resp = responder(ResponderConfig::default());
    let mut sb = StorageBinding::new();
    assert_eq!(spsp(OP_SPDM, 0), 0x14);
    let d = sb
        .security_receive(SECP_SPDM, spsp(OP_DISCOVERY, 0), 4096)
        .unwrap();
    assert_eq!(&d[..4], &[32, 0, 0x00, 0x10]);
    sb.security_send(&mut resp, SECP_SPDM, spsp(OP_SPDM, 0), &[0x10, 0x84, 0, 0])
        .unwrap();
    let r = sb
        .security_receive(SECP_SPDM, spsp(OP_SPDM, 0), 4096)
        .unwrap();
    assert_eq!(&r[..2], &[0x10, 0x04]);
    assert!(sb
        .security_receive(SECP_SPDM, spsp(OP_SPDM, 0), 4096)
        .is_err());
    assert!(sb
        .security_send(&mut resp, SECP_SPDM, spsp(OP_SECURED_SPDM, 0), &[0; 8])
        .is_err());
    assert!(sb
        .security_send(&mut resp, SECP_SPDM, spsp(OP_SPDM, 1), &[0; 8])
        .is_err());
    assert!(sb.security_send(&mut resp, 0xEF, 0, &[]).is_err());
    let list = sb.security_receive(0, 0, 64).unwrap();
    assert!(list.contains(&SECP_SPDM));
}
