//! TDISP against a device's TDI through a real SPDM session (our requester,
//! in memory): the sequence DMTF's spdm_requester_emu runs, and a catalogue
//! of wrong requests in every TDI state, each answered as PCIe chapter 11
//! and DSP0274 prescribe, with the TDI's state unchanged and the device
//! still answering after every one of them.

use spdm_responder::error::{ErrorCode as SpdmError, RequesterError};
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream};
use spdm_responder::tdisp::{
    code, lock_flags, range_attr, ErrorCode, InterfaceId, InterfaceReport, LockParams, Request,
    TdiState, TdispError, NONCE_LEN, VERSION_10,
};
use spdm_responder::transport::InMemory;
use spdm_responder::vendor::{PCISIG_VENDOR_ID, STANDARD_ID_PCISIG};
use spdm_responder::{Requester, RequesterConfig, Responder, ResponderConfig};
use std::sync::Arc;
use trustdev_devices::security::ide::km::IdeKmPorts;
use trustdev_devices::security::ide::regs::ctl;
use trustdev_devices::security::ide::{Ide, IdeConfig};
use trustdev_devices::security::tdisp::{Tdi, TdispConfig, TdispFunctions};
use vfio_user_server::pci::{ConfigHandler, PortType};

mod dma_copy_rig;

use dma_copy_rig::identity;

/// The function's interface (the TDI's Requester ID is not configured, so
/// LOCK binds it).
const IFACE: InterfaceId = InterfaceId {
    function_id: 0x0300,
    reserved: 0,
};
const STREAM: u8 = 4;

struct Rig {
    r: Requester<InMemory>,
    ide: Arc<Ide>,
    ide_regs: Box<dyn ConfigHandler>,
    tdi: Arc<Tdi>,
}

fn rig() -> Rig {
    let ide = Ide::new(IdeConfig::default());
    let ide_regs = ide.capabilities().remove(0).handler.unwrap();
    let tdi = Tdi::new(TdispConfig::default(), "tdisp test", vec![Arc::clone(&ide)]);
    // The TDI's function: the DMA-copy example's configuration space, its
    // BARs where firmware would put them.
    let mut cfg = trustdev_devices::example::config_space(
        PortType::Endpoint,
        true,
        trustdev_devices::example::DEFAULT_SERIAL,
        Vec::new(),
    );
    trustdev_devices::security::tdisp::view::assign_bars(&mut cfg, 0xfe00_0000);
    tdi.observe(&cfg);
    let mut responder = Responder::new(ResponderConfig::default(), identity());
    let (key, handler) = IdeKmPorts::new(vec![Arc::clone(&ide)]).handler();
    responder.register_vendor(key, handler);
    let (key, handler) = TdispFunctions::new(vec![Arc::clone(&tdi)]).handler();
    responder.register_vendor(key, handler);
    let cfg = RequesterConfig {
        versions: vec![0x12],
        trusted_roots: identity().roots_der(),
        ..RequesterConfig::default()
    };
    let mut r = Requester::new(cfg, InMemory::new(responder));
    r.init_connection().unwrap();
    r.get_digests().unwrap();
    r.get_certificate(0).unwrap();
    Rig {
        r,
        ide,
        ide_regs,
        tdi,
    }
}

impl Rig {
    /// Selective stream 0's Control register (what pci_ide_stream_setup
    /// and pci_ide_stream_enable write).
    fn sel_ctl(&mut self, v: u32) {
        let off = 4 * (IdeConfig::default().sel_block_start(0) as u16 + 1);
        self.ide_regs.write(off, &v.to_le_bytes());
    }

    /// Stream ID `STREAM` on selective stream 0, K0 programmed and armed in
    /// every slot, the stream enabled: SECURE.
    fn secure_stream(&mut self, sid: u32) {
        self.sel_ctl(u32::from(STREAM) << ctl::ID_SHIFT | ctl::DEFAULT);
        for d in [KeyDirection::Rx, KeyDirection::Tx] {
            for ss in SubStream::ALL {
                let s = KeySlot::new(KeySet::K0, d, ss);
                let k = IdeKey::new([s.to_byte() ^ 0x33; 32], 1);
                self.r
                    .ide_km_key_prog(sid, STREAM, s, 0, &k)
                    .unwrap()
                    .unwrap();
                self.r.ide_km_key_set_go(sid, STREAM, s, 0).unwrap();
            }
        }
        self.sel_ctl(u32::from(STREAM) << ctl::ID_SHIFT | ctl::DEFAULT | ctl::EN);
        assert!(self.ide.is_secure(STREAM));
    }

    fn raw(&mut self, sid: Option<u32>, payload: &[u8]) -> Result<Vec<u8>, RequesterError> {
        self.r.vendor_request(
            sid,
            STANDARD_ID_PCISIG,
            &PCISIG_VENDOR_ID.to_le_bytes(),
            payload,
        )
    }
}

fn params(flags: u16, stream: u8) -> LockParams {
    LockParams {
        flags,
        default_stream_id: stream,
        mmio_reporting_offset: 0xD000_0000,
        bind_p2p_address_mask: 0,
    }
}

fn code_of(e: TdispError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected TDISP_ERROR, got {e}"))
}

/// What spdm_requester_emu's APP step does after IDE_KM (and the checks it
/// makes), with our requester.
#[test]
fn dmtf_sequence() {
    let mut t = rig();
    let sid = t.r.key_exchange(0, 0).unwrap();
    t.secure_stream(sid);
    let dmtf = InterfaceId::from_rid(0xbeef);
    assert_eq!(t.r.tdisp_get_version(sid, dmtf).unwrap(), vec![VERSION_10]);
    let caps = t.r.tdisp_get_capabilities(sid, dmtf, 0).unwrap();
    // What intel/tee-io-validator asserts of TDISP_CAPABILITIES.
    assert_eq!(caps.dsm_caps, 0);
    assert_eq!(caps.req_msgs_supported[0], 0xFE);
    assert!(caps.req_msgs_supported[1..].iter().all(|&b| b == 0));
    assert_eq!(caps.lock_flags_supported & 0xFFE0, 0);
    assert_eq!(caps.lock_flags_supported, 0x7);
    assert!(caps.dev_addr_width >= 52);
    assert!(caps.num_req_this > 0 && caps.num_req_all > 0);
    assert_eq!(
        t.r.tdisp_get_state(sid, dmtf).unwrap(),
        TdiState::ConfigUnlocked
    );
    let nonce =
        t.r.tdisp_lock(sid, dmtf, &params(caps.lock_flags_supported, STREAM))
            .unwrap();
    assert_ne!(nonce, [0; NONCE_LEN]);
    assert_eq!(
        t.r.tdisp_get_state(sid, dmtf).unwrap(),
        TdiState::ConfigLocked
    );
    // The report in DMTF's 0x40-byte portions and in one piece agree.
    let small = t.r.tdisp_get_report_bytes(sid, dmtf, 0x40).unwrap();
    let rep = t.r.tdisp_get_report(sid, dmtf).unwrap();
    assert!(small.len() > 0x40, "more than one portion");
    assert_eq!(InterfaceReport::decode(&small).unwrap(), rep);
    // The example's BARs: BAR0 and BAR1 4 KiB (MSI-X table and PBA in
    // BAR1), BAR2 behind them, each plus the reporting offset.
    let pages: Vec<(u64, u32, u16, u16)> = rep
        .ranges
        .iter()
        .map(|r| (r.first_page, r.number_of_pages, r.attributes, r.range_id))
        .collect();
    assert_eq!(pages[0], ((0xfe00_0000u64 + 0xD000_0000) >> 12, 1, 0, 0));
    assert_eq!(
        pages[1],
        (
            (0xfe00_1000u64 + 0xD000_0000) >> 12,
            1,
            range_attr::MSIX_TABLE | range_attr::MSIX_PBA,
            1
        )
    );
    assert_eq!(pages[2].3, 2);
    assert_eq!(rep.device_specific, b"tdisp test");
    t.r.tdisp_start(sid, dmtf, &nonce).unwrap();
    assert_eq!(t.r.tdisp_get_state(sid, dmtf).unwrap(), TdiState::Run);
    assert_eq!(
        t.r.tdisp_get_report(sid, dmtf).unwrap(),
        rep,
        "the same report in RUN"
    );
    t.r.tdisp_stop(sid, dmtf).unwrap();
    assert_eq!(
        t.r.tdisp_get_state(sid, dmtf).unwrap(),
        TdiState::ConfigUnlocked
    );
    // STOP in CONFIG_UNLOCKED is answered (tee-io-validator's teardown).
    t.r.tdisp_stop(sid, dmtf).unwrap();
}

/// The session that locked the TDI ends: its IDE keys go, the stream goes
/// INSECURE, the TDI goes to ERROR; a new session recovers it with STOP.
#[test]
fn session_end_and_recovery() {
    let mut t = rig();
    let sid = t.r.key_exchange(0, 0).unwrap();
    t.secure_stream(sid);
    let n = t.r.tdisp_lock(sid, IFACE, &params(0, STREAM)).unwrap();
    t.r.tdisp_start(sid, IFACE, &n).unwrap();
    t.r.end_session(sid).unwrap();
    assert_eq!(t.tdi.state(), TdiState::Error);
    let s2 = t.r.key_exchange(0, 0).unwrap();
    assert_eq!(t.r.tdisp_get_state(s2, IFACE).unwrap(), TdiState::Error);
    t.r.tdisp_stop(s2, IFACE).unwrap();
    assert_eq!(
        t.r.tdisp_get_state(s2, IFACE).unwrap(),
        TdiState::ConfigUnlocked
    );
    t.sel_ctl(0);
    t.secure_stream(s2);
    let n = t.r.tdisp_lock(s2, IFACE, &params(0, STREAM)).unwrap();
    t.r.tdisp_start(s2, IFACE, &n).unwrap();
}

#[derive(Debug)]
enum Expect {
    /// SPDM ERROR with this code.
    Spdm(SpdmError),
    /// TDISP_ERROR with this code (and ERROR_DATA).
    Tdisp(ErrorCode, u32),
}

fn msg(t: u8, version: u8, iface: InterfaceId, body: &[u8]) -> Vec<u8> {
    let mut v = Request::GetVersion.encode(version, iface);
    v[2] = t;
    v.extend_from_slice(body);
    v
}

fn lock_body(flags: u16, stream: u8) -> Vec<u8> {
    Request::LockInterface(params(flags, stream)).encode(VERSION_10, IFACE)[17..].to_vec()
}

type Case = (&'static str, Option<u32>, Vec<u8>, Expect);

fn check(t: &mut Rig, sid: u32, state: TdiState, cases: Vec<Case>) -> usize {
    let n = cases.len();
    let secure = t.ide.is_secure(STREAM);
    for (name, s, payload, expect) in cases {
        let got = t.raw(s, &payload);
        match (&expect, got) {
            (Expect::Spdm(code), Err(RequesterError::ErrorResponse { code: Some(c), .. })) => {
                assert_eq!(c, *code, "{name}")
            }
            (Expect::Tdisp(code, data), Ok(rsp)) => {
                assert_eq!(rsp.len(), 1 + 24, "{name}: TDISP_ERROR length");
                assert_eq!(
                    rsp[..3],
                    [1, VERSION_10, code::ERROR],
                    "{name}: TDISP_ERROR"
                );
                assert_eq!(rsp[5..9], payload[5..9], "{name}: INTERFACE_ID echoed");
                let c = u32::from_le_bytes(rsp[17..21].try_into().unwrap());
                let d = u32::from_le_bytes(rsp[21..25].try_into().unwrap());
                assert_eq!(
                    (c, d),
                    (*code as u32, *data),
                    "{name}: ERROR_CODE, ERROR_DATA"
                );
            }
            (e, got) => panic!("{name}: expected {e:?}, got {got:?}"),
        }
        // Nothing changed, and the device still answers.
        assert_eq!(t.tdi.state(), state, "{name}: TDI state unchanged");
        assert_eq!(t.r.tdisp_get_state(sid, IFACE).unwrap(), state, "{name}");
        assert_eq!(t.ide.is_secure(STREAM), secure, "{name}: stream unchanged");
    }
    n
}

#[test]
fn catalogue_of_wrong_requests() {
    use Expect::*;
    let mut t = rig();
    let sid = t.r.key_exchange(0, 0).unwrap();
    let other = t.r.key_exchange(0, 0).unwrap();
    let v = VERSION_10;
    let seg1 = InterfaceId {
        function_id: 0x0300 | 1 << 16 | InterfaceId::SEGMENT_VALID,
        reserved: 0,
    };
    let mut total = 0;

    // CONFIG_UNLOCKED, no IDE keys yet.
    total += check(
        &mut t,
        sid,
        TdiState::ConfigUnlocked,
        vec![(
            "LOCK without IDE keys",
            Some(sid),
            msg(0x83, v, IFACE, &lock_body(0, STREAM)),
            Tdisp(ErrorCode::InvalidRequest, 0),
        )],
    );
    t.secure_stream(sid);
    total += check(
        &mut t,
        sid,
        TdiState::ConfigUnlocked,
        vec![
            (
                "GET_TDISP_VERSION outside a session",
                None,
                msg(0x81, v, IFACE, &[]),
                Spdm(SpdmError::SessionRequired),
            ),
            (
                "LOCK outside a session",
                None,
                msg(0x83, v, IFACE, &lock_body(0, STREAM)),
                Spdm(SpdmError::SessionRequired),
            ),
            (
                "GET_DEVICE_INTERFACE_STATE outside a session",
                None,
                msg(0x85, v, IFACE, &[]),
                Spdm(SpdmError::SessionRequired),
            ),
            (
                "STOP outside a session",
                None,
                msg(0x87, v, IFACE, &[]),
                Spdm(SpdmError::SessionRequired),
            ),
            (
                "TDISP without a header",
                Some(sid),
                vec![1],
                Spdm(SpdmError::InvalidRequest),
            ),
            (
                "TDISP header one byte short",
                Some(sid),
                msg(0x81, v, IFACE, &[])[..16].to_vec(),
                Spdm(SpdmError::InvalidRequest),
            ),
            (
                "unknown message type 8Ch",
                Some(sid),
                msg(0x8C, v, IFACE, &[]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x8C),
            ),
            (
                "a response code (01h) as a request",
                Some(sid),
                msg(0x01, v, IFACE, &[0]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x01),
            ),
            (
                "TDISP_ERROR as a request",
                Some(sid),
                msg(0x7F, v, IFACE, &[0; 8]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x7F),
            ),
            (
                "BIND_P2P_STREAM (not supported)",
                Some(sid),
                msg(0x88, v, IFACE, &[1]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x88),
            ),
            (
                "UNBIND_P2P_STREAM (not supported)",
                Some(sid),
                msg(0x89, v, IFACE, &[1]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x89),
            ),
            (
                "SET_MMIO_ATTRIBUTE (not supported)",
                Some(sid),
                msg(0x8A, v, IFACE, &[0; 16]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x8A),
            ),
            (
                "VDM (not supported)",
                Some(sid),
                msg(0x8B, v, IFACE, &[0, 2, 0x86, 0x80]),
                Tdisp(ErrorCode::UnsupportedRequest, 0x8B),
            ),
            (
                "GET_TDISP_VERSION 1.1",
                Some(sid),
                msg(0x81, 0x11, IFACE, &[]),
                Tdisp(ErrorCode::VersionMismatch, 0),
            ),
            (
                "LOCK with TDISPVersion 2.0",
                Some(sid),
                msg(0x83, 0x20, IFACE, &lock_body(0, STREAM)),
                Tdisp(ErrorCode::VersionMismatch, 0),
            ),
            (
                "GET_TDISP_VERSION one byte long",
                Some(sid),
                msg(0x81, v, IFACE, &[0]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "GET_TDISP_CAPABILITIES one byte short",
                Some(sid),
                msg(0x82, v, IFACE, &[0; 3]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "LOCK one byte short",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(0, STREAM)[..19]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "LOCK one byte long",
                Some(sid),
                msg(0x83, v, IFACE, &[lock_body(0, STREAM), vec![0]].concat()),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "GET_DEVICE_INTERFACE_REPORT one byte long",
                Some(sid),
                msg(0x84, v, IFACE, &[0; 5]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "START with a 31-byte nonce",
                Some(sid),
                msg(0x86, v, IFACE, &[0; 31]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "STOP one byte long",
                Some(sid),
                msg(0x87, v, IFACE, &[0]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "an interface in segment 1",
                Some(sid),
                msg(0x85, v, seg1, &[]),
                Tdisp(ErrorCode::InvalidInterface, 0),
            ),
            (
                "LOCK naming a stream without keys",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(0, STREAM + 1)),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "LOCK with BIND_P2P (not supported)",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(lock_flags::BIND_P2P, STREAM)),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "LOCK with reserved flag bit 15",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(0x8000, STREAM)),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "GET_DEVICE_INTERFACE_REPORT in CONFIG_UNLOCKED",
                Some(sid),
                msg(0x84, v, IFACE, &[0, 0, 0x40, 0]),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
            (
                "START in CONFIG_UNLOCKED",
                Some(sid),
                msg(0x86, v, IFACE, &[0; 32]),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
        ],
    );

    // CONFIG_LOCKED.
    let nonce =
        t.r.tdisp_lock(sid, IFACE, &params(lock_flags::LOCK_MSIX, STREAM))
            .unwrap();
    let report_len = t.r.tdisp_get_report_bytes(sid, IFACE, 0x400).unwrap().len() as u16;
    let mut wrong = nonce;
    wrong[0] ^= 0x80;
    let bound_elsewhere = InterfaceId::from_rid(0x0400);
    total += check(
        &mut t,
        sid,
        TdiState::ConfigLocked,
        vec![
            (
                "LOCK twice",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(0, STREAM)),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
            (
                "START with a wrong nonce",
                Some(sid),
                msg(0x86, v, IFACE, &wrong),
                Tdisp(ErrorCode::InvalidNonce, 0),
            ),
            (
                "START with a zero nonce",
                Some(sid),
                msg(0x86, v, IFACE, &[0; 32]),
                Tdisp(ErrorCode::InvalidNonce, 0),
            ),
            (
                "START from another session",
                Some(other),
                msg(0x86, v, IFACE, &nonce),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "START outside a session",
                None,
                msg(0x86, v, IFACE, &nonce),
                Spdm(SpdmError::SessionRequired),
            ),
            (
                "GET_DEVICE_INTERFACE_REPORT outside a session",
                None,
                msg(0x84, v, IFACE, &[0, 0, 0x40, 0]),
                Spdm(SpdmError::SessionRequired),
            ),
            (
                "GET_DEVICE_INTERFACE_REPORT of length 0",
                Some(sid),
                msg(0x84, v, IFACE, &[0, 0, 0, 0]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "GET_DEVICE_INTERFACE_REPORT at offset FFFFh",
                Some(sid),
                msg(0x84, v, IFACE, &[0xff, 0xff, 1, 0]),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "GET_DEVICE_INTERFACE_REPORT at the end of the report",
                Some(sid),
                msg(
                    0x84,
                    v,
                    IFACE,
                    &[report_len as u8, (report_len >> 8) as u8, 1, 0],
                ),
                Tdisp(ErrorCode::InvalidRequest, 0),
            ),
            (
                "another interface while locked",
                Some(sid),
                msg(0x85, v, bound_elsewhere, &[]),
                Tdisp(ErrorCode::InvalidInterface, 0),
            ),
            (
                "START for another interface",
                Some(sid),
                msg(0x86, v, bound_elsewhere, &nonce),
                Tdisp(ErrorCode::InvalidInterface, 0),
            ),
        ],
    );

    // RUN.
    t.r.tdisp_start(sid, IFACE, &nonce).unwrap();
    total += check(
        &mut t,
        sid,
        TdiState::Run,
        vec![
            (
                "LOCK in RUN",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(0, STREAM)),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
            (
                "START in RUN (the nonce again)",
                Some(sid),
                msg(0x86, v, IFACE, &nonce),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
            (
                "STOP for another interface in RUN",
                Some(sid),
                msg(0x87, v, bound_elsewhere, &[]),
                Tdisp(ErrorCode::InvalidInterface, 0),
            ),
        ],
    );

    // ERROR: the bound stream is disabled.
    t.sel_ctl(u32::from(STREAM) << ctl::ID_SHIFT);
    assert_eq!(t.tdi.state(), TdiState::Error);
    total += check(
        &mut t,
        sid,
        TdiState::Error,
        vec![
            (
                "GET_DEVICE_INTERFACE_REPORT in ERROR",
                Some(sid),
                msg(0x84, v, IFACE, &[0, 0, 0x40, 0]),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
            (
                "START in ERROR",
                Some(sid),
                msg(0x86, v, IFACE, &nonce),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
            (
                "LOCK in ERROR",
                Some(sid),
                msg(0x83, v, IFACE, &lock_body(0, STREAM)),
                Tdisp(ErrorCode::InvalidInterfaceState, 0),
            ),
        ],
    );
    assert!(total >= 40, "{total} cases");

    // STOP leaves ERROR; the device works as before.
    t.r.tdisp_stop(sid, IFACE).unwrap();
    assert_eq!(
        t.r.tdisp_get_state(sid, IFACE).unwrap(),
        TdiState::ConfigUnlocked
    );
    t.sel_ctl(0);
    t.secure_stream(sid);
    let n = t.r.tdisp_lock(sid, IFACE, &params(0, STREAM)).unwrap();
    t.r.tdisp_start(sid, IFACE, &n).unwrap();
    assert_eq!(t.r.tdisp_get_state(sid, IFACE).unwrap(), TdiState::Run);
    assert!(matches!(
        t.r.tdisp_get_report(other, IFACE),
        Ok(r) if !r.ranges.is_empty()
    ));
    let e = t.r.tdisp_lock(sid, IFACE, &params(0, STREAM)).unwrap_err();
    assert_eq!(code_of(e), ErrorCode::InvalidInterfaceState);
}
