//! The DOE endpoint as a device model drives it.

mod common;

use common::*;
use spdm_responder::codec::V12;
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::transport::doe::{
    decode_object, encode_object, DoeEndpoint, DoeError, DoeTransport,
};
use spdm_responder::transport::storage::{
    spsp, StorageBinding, OP_DISCOVERY, OP_SECURED_SPDM, OP_SPDM, SECP_SPDM,
};
use spdm_responder::{Requester, ResponderConfig};

#[test]
fn discovery_walk_and_out_of_range_index() {
    let mut ep = DoeEndpoint::new(responder(ResponderConfig::default()));
    let mut seen = Vec::new();
    let mut index = 0u8;
    loop {
        let r = ep
            .handle(&encode_object(1, 0, &[index, 0, 0, 0]).unwrap())
            .unwrap();
        assert_eq!(r.len(), 12);
        assert_eq!(&r[..8], &[1, 0, 0, 0, 3, 0, 0, 0]);
        seen.push((u16::from_le_bytes([r[8], r[9]]), r[10]));
        if r[11] == 0 {
            break;
        }
        index = r[11];
    }
    assert_eq!(seen, vec![(1, 0), (1, 1), (1, 2)]);
    // Index past the table: a zero entry, next index 0 (as QEMU's DOE does).
    let r = ep
        .handle(&encode_object(1, 0, &[9, 0, 0, 0]).unwrap())
        .unwrap();
    assert_eq!(&r[8..], &[0, 0, 0, 0]);
}

#[test]
fn malformed_objects_are_rejected_and_endpoint_survives() {
    let mut ep = DoeEndpoint::new(responder(ResponderConfig::default()));
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
    assert_eq!(
        ep.handle(&encode_object(0x1e0f, 1, &[0x10, 0x84, 0, 0]).unwrap()),
        Err(DoeError::UnsupportedProtocol {
            vendor: 0x1e0f,
            ty: 1
        })
    );
    assert_eq!(
        ep.handle(&encode_object(1, 7, &[]).unwrap()),
        Err(DoeError::UnsupportedProtocol { vendor: 1, ty: 7 })
    );
    // A CMA object whose (padded) SPDM message is not GET_VERSION gets an SPDM
    // ERROR (UnexpectedRequest) inside a CMA object.
    let r = ep.handle(&encode_object(1, 1, &[0x10]).unwrap()).unwrap();
    let (v, t, p) = decode_object(&r).unwrap();
    assert_eq!((v, t), (1, 1));
    assert_eq!(&p[..4], &[0x10, 0x7F, 0x04, 0x00]);
    // An empty CMA object: InvalidRequest.
    let r = ep.handle(&encode_object(1, 1, &[]).unwrap()).unwrap();
    assert_eq!(
        &decode_object(&r).unwrap().2[..4],
        &[0x10, 0x7F, 0x01, 0x00]
    );
    // GET_VERSION in a padded object works (trailing zero padding is ignored).
    let r = ep
        .handle(&encode_object(1, 1, &[0x10, 0x84, 0, 0, 0]).unwrap())
        .unwrap();
    assert_eq!(decode_object(&r).unwrap().2[1], 0x04);
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
