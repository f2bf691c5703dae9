//! The PASID extension at the protocol level (docs/VFIO-USER-PASID.md):
//! negotiation (only answered when proposed, never longer than the
//! proposal), the client-to-server commands with good and malformed
//! payloads, and server-to-client commands refused from a client — every
//! bad message answered with an error reply on a connection that keeps
//! working.

mod common;

use common::*;
use vfio_user_server::client::{Client, ClientError};
use vfio_user_server::protocol::pasid::{
    InvalidateRequest, InvalidateScope, PageResponse, PageResponseCode,
};
use vfio_user_server::protocol::Command;

fn errno<T: std::fmt::Debug>(r: Result<T, ClientError>) -> i32 {
    r.expect_err("an error reply")
        .errno()
        .expect("a server errno")
}

const ALL: &str = r#""pasid":{"ats":true,"pri":true,"dma":true}"#;

/// The `pasid` member of the server's VERSION reply.
fn agreed(c: &Client) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&c.server_caps).expect("reply JSON");
    v["capabilities"].get("pasid").cloned()
}

fn pasid_client(s: &TestServer) -> Client {
    let mut c = s.connect_raw();
    c.negotiate_with(ALL).expect("negotiate the extension");
    c
}

#[test]
fn negotiation_is_a_subset_of_the_proposal() {
    let s = TestServer::start();
    let c = pasid_client(&s);
    let all: serde_json::Value =
        serde_json::from_str(r#"{"ats":true,"pri":true,"dma":true}"#).unwrap();
    assert_eq!(agreed(&c), Some(all), "all features agreed");
    assert!(c.server_caps.len() < 200, "fits QEMU's reply buffer");
    drop(c);
    let mut partial = s.connect_raw();
    partial
        .negotiate_with(r#""pasid":{"pri":true,"dma":true,"later":[1,2]}"#)
        .unwrap();
    // PRI needs ATS: only PASID DMA is agreed.
    assert_eq!(agreed(&partial), Some(serde_json::json!({"dma": true})));
    drop(partial);
    let plain = s.connect();
    assert_eq!(agreed(&plain), None);
    drop(plain);
    // A malformed proposal fails VERSION (and the connection).
    let mut bad = s.connect_raw();
    assert!(bad.negotiate_with(r#""pasid":true"#).is_err());
    assert!(s.is_alive());
}

#[test]
fn extension_commands_and_malformed_payloads() {
    let s = TestServer::start();
    let mut c = pasid_client(&s);
    let fd = memfd(0x10000);
    let b = std::os::fd::AsFd::as_fd(&fd);
    c.translated_dma_map(0x8000_0000, 0x10000, 0, RW, Some(b))
        .unwrap();
    assert_eq!(
        errno(c.translated_dma_map(0x8000_8000, 0x1000, 0, RW, Some(b))),
        libc::EEXIST,
        "overlaps the window"
    );
    assert_eq!(
        errno(c.translated_dma_map(0x9000_0100, 0x1000, 0, RW, Some(b))),
        libc::EINVAL,
        "unaligned"
    );
    assert_eq!(
        errno(c.translated_dma_map(0x9000_0000, 0x1000, 0, RW, None)),
        libc::EINVAL,
        "translated memory needs an fd"
    );
    c.ats_invalidate(&InvalidateRequest {
        scope: InvalidateScope::Pasid(Some(5)),
        range: Some((0x7f00_0000_0000, 0x1000)),
    })
    .unwrap();
    c.ats_invalidate(&InvalidateRequest {
        scope: InvalidateScope::Global,
        range: None,
    })
    .unwrap();
    let mut p = InvalidateRequest {
        scope: InvalidateScope::Global,
        range: None,
    }
    .encode();
    p[0] |= 1; // PASID_VALID together with GLOBAL
    assert_eq!(
        errno(c.request(Command::AtsInvalidate, &p, &[])),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.request(Command::AtsInvalidate, &[0; 23], &[])),
        libc::EINVAL,
        "short"
    );
    let mut p = InvalidateRequest {
        scope: InvalidateScope::Pasid(Some(1)),
        range: Some((0x1000, 0x1000)),
    }
    .encode();
    p[8] = 1; // unaligned address
    assert_eq!(
        errno(c.request(Command::AtsInvalidate, &p, &[])),
        libc::EINVAL
    );
    // A response for a group that is not outstanding is no message error.
    let rsp = PageResponse {
        pasid: Some(3),
        group: 7,
        code: PageResponseCode::Success,
    };
    c.page_response(&rsp).unwrap();
    let mut p = rsp.encode();
    p[10] = 9; // unknown response code
    assert_eq!(
        errno(c.request(Command::PageResponse, &p, &[])),
        libc::EINVAL
    );
    let mut p = rsp.encode();
    p[8..10].copy_from_slice(&512u16.to_le_bytes());
    assert_eq!(
        errno(c.request(Command::PageResponse, &p, &[])),
        libc::EINVAL
    );
    // Server-to-client commands sent by the client.
    for cmd in [
        Command::AtsTranslate,
        Command::PageRequest,
        Command::PasidDmaRead,
        Command::PasidDmaWrite,
    ] {
        assert_eq!(
            errno(c.request(cmd, &[0; 24], &[])),
            libc::EINVAL,
            "{cmd:?}"
        );
    }
    c.translated_dma_unmap(0x8000_0000, 0x10000).unwrap();
    // The device is unharmed.
    assert_eq!(c.read32(0, device::reg::ID).unwrap(), device::ID_VALUE);
    assert!(s.is_alive());
}

#[test]
fn only_negotiated_features_are_served() {
    let s = TestServer::start();
    let mut c = s.connect_raw();
    c.negotiate_with(r#""pasid":{"dma":true}"#).unwrap();
    let fd = memfd(0x1000);
    let b = std::os::fd::AsFd::as_fd(&fd);
    assert_eq!(
        errno(c.translated_dma_map(0, 0x1000, 0, RW, Some(b))),
        libc::ENOTSUP,
        "ATS not agreed"
    );
    assert_eq!(
        errno(c.page_response(&PageResponse {
            pasid: None,
            group: 0,
            code: PageResponseCode::Success,
        })),
        libc::ENOTSUP,
        "PRI not agreed"
    );
    assert_eq!(c.read32(0, device::reg::ID).unwrap(), device::ID_VALUE);
}
