//! The TDI state machine without SPDM: locking, the nonce, what moves it to
//! ERROR, the link policy, the report.

use super::*;
use crate::security::ide::km::IdeKmPorts;
use crate::security::ide::regs::ctl;
use crate::security::ide::{IdeConfig, InsecureReason};
use spdm_responder::idekm::{IdeKey, IdeKmBackend, KeyDirection, KeySet, KeySlot, SubStream};
use spdm_responder::tdisp::range_attr;
use vfio_user_server::pci::{Bar, ConfigBuilder, ExtCap, MsixCap, PciIds};

const SESSION: u32 = 0x1234_5678;

/// A function with a 64-bit BAR0 (16 KiB), an MSI-X BAR4 (table at 0,
/// PBA at 0x800) and 8 vectors, programmed as a guest would.
fn config() -> ConfigSpace {
    let mut c = ConfigBuilder::new(PciIds {
        vendor: 0x1b36,
        device: 0x0010,
        subsystem_vendor: 0x1b36,
        subsystem: 1,
        class: 0x01_08_02,
        revision: 1,
    })
    .bar(0, Bar::mem64(0x4000, false))
    .bar(4, Bar::mem64(0x1000, false))
    .msix(MsixCap {
        vectors: 8,
        table_bar: 4,
        table_offset: 0,
        pba_bar: 4,
        pba_offset: 0x800,
    })
    .build()
    .unwrap();
    c.write(0x10, &0xfe00_0004u32.to_le_bytes());
    c.write(0x14, &0u32.to_le_bytes());
    c.write(0x20, &0xfe00_4004u32.to_le_bytes());
    c.write(0x04, &0x0006u16.to_le_bytes());
    c
}

fn msix_ctl_offset(c: &ConfigSpace) -> usize {
    let mut off = (c.read_u16(0x34) & 0xfc) as usize;
    while c.read_u16(off) as u8 != 0x11 {
        off = ((c.read_u16(off) >> 8) & 0xfc) as usize;
    }
    off + 2
}

struct Rig {
    ide: Arc<Ide>,
    ide_regs: ExtCap,
    km: IdeKmPorts,
    tdi: Arc<Tdi>,
    cfg: ConfigSpace,
}

fn rig(mode: IdeRequirement) -> Rig {
    let ide = Ide::new(IdeConfig::default());
    let ide_regs = ide.capabilities().remove(0);
    let km = IdeKmPorts::new(vec![Arc::clone(&ide)]);
    let cfg = TdispConfig {
        ide: mode,
        ..TdispConfig::default()
    };
    let tdi = Tdi::new(cfg, "test", vec![Arc::clone(&ide)]);
    let cfg = config();
    tdi.observe(&cfg);
    Rig {
        ide,
        ide_regs,
        km,
        tdi,
        cfg,
    }
}

impl Rig {
    /// Gives selective stream 0 Stream ID `id` (disabled) and programs and
    /// arms K0 in every slot.
    fn program(&mut self, id: u8) {
        if self
            .ide
            .stream(crate::security::ide::StreamRef {
                kind: StreamKind::Selective,
                index: 0,
            })
            .is_some_and(|s| !s.enabled)
        {
            self.sel_ctl(u32::from(id) << ctl::ID_SHIFT);
        }
        for d in KeyDirection::ALL {
            for ss in SubStream::ALL {
                let s = KeySlot::new(KeySet::K0, d, ss);
                self.km
                    .key_prog(SESSION, 0, id, s, IdeKey::new([s.to_byte(); 32], 1))
                    .unwrap();
                self.km.key_set_go(SESSION, 0, id, s).unwrap();
            }
        }
    }

    /// Selective stream 0's Control register.
    fn sel_ctl(&mut self, v: u32) {
        let off = (4 * (IdeConfig::default().sel_block_start(0) + 1)) as u16;
        let h = self.ide_regs.handler.as_mut().unwrap();
        h.write(off, &v.to_le_bytes());
    }

    fn secure_stream(&mut self, id: u8) {
        self.program(id);
        self.sel_ctl(ctl::EN | (u32::from(id) << ctl::ID_SHIFT) | ctl::DEFAULT);
        assert_eq!(self.ide.secure_stream_ids(), vec![id]);
    }

    fn lock(&self, flags: u16, stream: u8) -> Result<[u8; NONCE_LEN], ErrorCode> {
        self.tdi.lock(
            SESSION,
            InterfaceId::from_rid(0x0100),
            &LockParams {
                flags,
                default_stream_id: stream,
                mmio_reporting_offset: 0,
                bind_p2p_address_mask: 0,
            },
        )
    }

    fn write_cfg(&mut self, off: u64, data: &[u8]) {
        self.cfg.write(off, data);
        self.tdi.observe(&self.cfg);
    }
}

#[test]
fn lock_needs_a_secure_stream() {
    let mut r = rig(IdeRequirement::Secure);
    assert_eq!(r.lock(0, 3), Err(ErrorCode::InvalidRequest), "no keys");
    r.program(3);
    assert_eq!(
        r.lock(0, 3),
        Err(ErrorCode::InvalidRequest),
        "keys, stream not enabled"
    );
    r.sel_ctl(ctl::EN | (3 << ctl::ID_SHIFT));
    assert_eq!(
        r.lock(0, 5),
        Err(ErrorCode::InvalidRequest),
        "another stream"
    );
    assert_eq!(
        r.lock(lock_flags::BIND_P2P, 3),
        Err(ErrorCode::InvalidRequest),
        "P2P"
    );
    assert_eq!(
        r.tdi.state(),
        TdiState::ConfigUnlocked,
        "refusals change nothing"
    );
    r.lock(lock_flags::LOCK_MSIX, 3).unwrap();
    assert_eq!(r.tdi.state(), TdiState::ConfigLocked);
    assert_eq!(
        r.lock(0, 3),
        Err(ErrorCode::InvalidInterfaceState),
        "LOCK twice"
    );
    assert_eq!(
        r.ide.dma_gate(),
        DmaGate::Open,
        "CONFIG_LOCKED: not yet bound"
    );
}

#[test]
fn keys_armed_mode_and_no_ide_mode() {
    let mut r = rig(IdeRequirement::KeysArmed);
    assert_eq!(r.lock(0, 0), Err(ErrorCode::InvalidRequest));
    r.program(0);
    r.lock(0, 0).unwrap();
    // Retiring a key of the bound stream: ERROR when next looked at.
    r.km.key_set_stop(
        SESSION,
        0,
        0,
        KeySlot::new(KeySet::K0, KeyDirection::Tx, SubStream::Posted),
    )
    .unwrap();
    assert_eq!(r.tdi.state(), TdiState::Error);
    assert_eq!(r.tdi.error_reason(), Some(ErrorReason::KeysLost { id: 0 }));
    let r = rig(IdeRequirement::None);
    r.lock(0, 9).unwrap();
    assert_eq!(r.ide.dma_gate(), DmaGate::Open);
}

#[test]
fn start_checks_the_nonce_and_binds_the_stream() {
    let mut r = rig(IdeRequirement::Secure);
    r.secure_stream(2);
    let nonce = r.lock(0, 2).unwrap();
    let mut wrong = nonce;
    wrong[31] ^= 1;
    assert_eq!(r.tdi.start(SESSION, &wrong), Err(ErrorCode::InvalidNonce));
    assert_eq!(
        r.tdi.state(),
        TdiState::ConfigLocked,
        "a wrong nonce changes nothing"
    );
    assert_eq!(
        r.tdi.start(SESSION + 1, &nonce),
        Err(ErrorCode::InvalidRequest)
    );
    r.tdi.start(SESSION, &nonce).unwrap();
    assert_eq!(r.tdi.state(), TdiState::Run);
    assert_eq!(r.ide.dma_gate(), DmaGate::Stream(2));
    assert_eq!(
        r.tdi.start(SESSION, &nonce),
        Err(ErrorCode::InvalidInterfaceState)
    );
    assert!(r.tdi.report().is_ok(), "the report in RUN");
    r.tdi.stop();
    assert_eq!(r.tdi.state(), TdiState::ConfigUnlocked);
    assert_eq!(r.ide.dma_gate(), DmaGate::Open);
    // The nonce was for that lock only.
    let n2 = r.lock(0, 2).unwrap();
    assert_ne!(n2, nonce, "a fresh nonce");
    assert_eq!(r.tdi.start(SESSION, &nonce), Err(ErrorCode::InvalidNonce));
}

#[test]
fn losing_the_stream_is_an_error_left_only_by_stop() {
    let mut r = rig(IdeRequirement::Secure);
    r.secure_stream(1);
    let n = r.lock(0, 1).unwrap();
    r.tdi.start(SESSION, &n).unwrap();
    r.sel_ctl(1 << ctl::ID_SHIFT); // Enable cleared.
    assert_eq!(r.tdi.state(), TdiState::Error);
    assert_eq!(
        r.tdi.error_reason(),
        Some(ErrorReason::IdeStream {
            id: 1,
            reason: InsecureReason::Disabled
        })
    );
    assert_eq!(r.ide.dma_gate(), DmaGate::Closed, "no DMA in ERROR");
    assert_eq!(r.tdi.report(), Err(ErrorCode::InvalidInterfaceState));
    assert_eq!(r.lock(0, 1), Err(ErrorCode::InvalidInterfaceState));
    assert_eq!(
        r.tdi.start(SESSION, &n),
        Err(ErrorCode::InvalidInterfaceState)
    );
    // Re-enabling the stream does not leave ERROR; STOP does.
    r.secure_stream(1);
    assert_eq!(r.tdi.state(), TdiState::Error);
    r.tdi.stop();
    assert_eq!(r.tdi.state(), TdiState::ConfigUnlocked);
    assert_eq!(r.tdi.error_reason(), None);
    r.lock(0, 1).unwrap();
}

#[test]
fn locked_configuration() {
    // Each change, made after LOCK and after START: ERROR with its reason.
    type Change = fn(&mut Rig);
    let cases: Vec<(&str, Change, ErrorReason)> = vec![
        (
            "BAR0",
            |r| r.write_cfg(0x10, &0xfd00_0004u32.to_le_bytes()),
            ErrorReason::Config(ConfigChange::Bar(0)),
        ),
        (
            "BAR0 upper half",
            |r| r.write_cfg(0x14, &1u32.to_le_bytes()),
            ErrorReason::Config(ConfigChange::Bar(0)),
        ),
        (
            "BAR sizing",
            |r| r.write_cfg(0x20, &u32::MAX.to_le_bytes()),
            ErrorReason::Config(ConfigChange::Bar(4)),
        ),
        (
            "Command: Bus Master off",
            |r| r.write_cfg(0x04, &0x0002u16.to_le_bytes()),
            ErrorReason::Config(ConfigChange::Command { locked: 6, now: 2 }),
        ),
        (
            "MSI-X enable (LOCK_MSIX)",
            |r| {
                let o = msix_ctl_offset(&r.cfg) as u64;
                r.write_cfg(o, &0x8007u16.to_le_bytes())
            },
            ErrorReason::Config(ConfigChange::MsixControl {
                locked: 7,
                now: 0x8007,
            }),
        ),
        ("FLR", |r| r.tdi.flr(), ErrorReason::Flr),
        (
            "device reset",
            |r| r.tdi.device_reset(),
            ErrorReason::DeviceReset,
        ),
        (
            "session end",
            |r| r.tdi.session_ended(SESSION),
            ErrorReason::SessionEnded(SESSION),
        ),
    ];
    for start in [false, true] {
        for (name, change, reason) in &cases {
            let mut r = rig(IdeRequirement::None);
            let n = r.lock(lock_flags::LOCK_MSIX, 0).unwrap();
            if start {
                r.tdi.start(SESSION, &n).unwrap();
            }
            // Writes that change nothing, another session's end, and
            // Message Control's read-only bits are fine.
            r.write_cfg(0x10, &0xfe00_0004u32.to_le_bytes());
            r.tdi.session_ended(SESSION + 1);
            let o = msix_ctl_offset(&r.cfg) as u64;
            r.write_cfg(o, &0x0000u16.to_le_bytes());
            assert!(r.tdi.error_reason().is_none(), "{name}");
            change(&mut r);
            assert_eq!(r.tdi.state(), TdiState::Error, "{name} (started: {start})");
            assert_eq!(r.tdi.error_reason().as_ref(), Some(reason), "{name}");
        }
    }
    // Without LOCK_MSIX, MSI-X may change.
    let mut r = rig(IdeRequirement::None);
    r.lock(0, 0).unwrap();
    let o = msix_ctl_offset(&r.cfg) as u64;
    r.write_cfg(o, &0x8000u16.to_le_bytes());
    assert_eq!(r.tdi.state(), TdiState::ConfigLocked);
    // Unlocked, anything may change.
    r.tdi.stop();
    r.write_cfg(0x10, &0xfd00_0004u32.to_le_bytes());
    r.tdi.flr();
    assert_eq!(r.tdi.state(), TdiState::ConfigUnlocked);
}

#[test]
fn report_has_the_real_bars_and_msix_pages() {
    let r = rig(IdeRequirement::None);
    let params = LockParams {
        flags: lock_flags::LOCK_MSIX,
        default_stream_id: 0,
        mmio_reporting_offset: 0xd000_0000,
        bind_p2p_address_mask: 0,
    };
    r.tdi
        .lock(SESSION, InterfaceId::from_rid(0x100), &params)
        .unwrap();
    let rep = r.tdi.report().unwrap();
    assert_eq!(
        rep.interface_info,
        spdm_responder::tdisp::interface_info::NO_UPDATE_AFTER_LOCK
            | spdm_responder::tdisp::interface_info::DMA_WITHOUT_PASID
    );
    assert_eq!(
        rep.msix_message_control, 7,
        "8 vectors, disabled, as locked"
    );
    assert_eq!(rep.ranges.len(), 2);
    assert_eq!(
        rep.ranges[0].first_page,
        (0xfe00_0000u64 + 0xd000_0000) >> 12
    );
    assert_eq!(rep.ranges[0].number_of_pages, 4);
    assert_eq!(rep.ranges[0].attributes, 0);
    assert_eq!(rep.ranges[0].range_id, 0);
    assert_eq!(
        rep.ranges[1].first_page,
        (0xfe00_4000u64 + 0xd000_0000) >> 12
    );
    assert_eq!(rep.ranges[1].number_of_pages, 1);
    assert_eq!(
        rep.ranges[1].attributes,
        range_attr::MSIX_TABLE | range_attr::MSIX_PBA
    );
    assert_eq!(rep.ranges[1].range_id, 4);
    assert_eq!(rep.device_specific, b"test");
    // Without LOCK_MSIX the MSI-X pages are not TEE memory.
    r.tdi.stop();
    let params = LockParams { flags: 0, ..params };
    r.tdi
        .lock(SESSION, InterfaceId::from_rid(0x100), &params)
        .unwrap();
    let rep = r.tdi.report().unwrap();
    assert_eq!(rep.msix_message_control, 0);
    assert_eq!(
        rep.ranges[1].attributes,
        range_attr::MSIX_TABLE | range_attr::MSIX_PBA | range_attr::IS_NON_TEE_MEM
    );
}

#[test]
fn table_and_pba_in_a_large_bar() {
    let mut v = ConfigView::default();
    v.bars[2] = Some(view::BarView {
        index: 2,
        size: 0x10_0000,
        addr: 0x8000_0000,
        raw: 0x8000_000c,
    });
    v.msix = Some(view::MsixView {
        control: 2047,
        table: (2, 0x2000),
        pba: (2, 0xa000),
    });
    let rep = v.report(&LockParams::default(), b"");
    let got: Vec<(u64, u32, u16)> = rep
        .ranges
        .iter()
        .map(|r| (r.first_page - 0x80000, r.number_of_pages, r.attributes & 3))
        .collect();
    // 2048 vectors: table 0x2000..0xa000 (8 pages), PBA 0xa000..0xa100.
    assert_eq!(got, vec![(0, 2, 0), (2, 8, 1), (10, 1, 2), (11, 245, 0)]);
}

#[test]
fn interface_ids() {
    let r = rig(IdeRequirement::None);
    let a = InterfaceId::from_rid(0x0300);
    let b = InterfaceId::from_rid(0x0400);
    assert!(
        r.tdi.matches(&a) && r.tdi.matches(&b),
        "unlocked: any function"
    );
    let seg1 = InterfaceId {
        function_id: 0x0300 | (1 << 16) | InterfaceId::SEGMENT_VALID,
        reserved: 0,
    };
    assert!(!r.tdi.matches(&seg1), "segment 1 is not ours");
    r.tdi.lock(SESSION, a, &LockParams::default()).unwrap();
    assert!(r.tdi.matches(&a) && !r.tdi.matches(&b), "bound by LOCK");
    r.tdi.stop();
    assert!(r.tdi.matches(&b));
    let fixed = Tdi::new(
        TdispConfig {
            rid: Some(0xbeef),
            ..TdispConfig::default()
        },
        "",
        Vec::new(),
    );
    assert!(fixed.matches(&InterfaceId::from_rid(0xbeef)));
    assert!(!fixed.matches(&a));
}

#[test]
fn firmware_like_layout() {
    let mut c = config();
    c.write(0x10, &0u32.to_le_bytes());
    c.write(0x20, &0u32.to_le_bytes());
    view::assign_bars(&mut c, 0xe000_0000);
    let v = ConfigView::read(&c);
    assert_eq!(v.bars[0].unwrap().addr, 0xe000_0000);
    assert_eq!(v.bars[4].unwrap().addr, 0xe000_4000);
    assert_eq!(v.command & 2, 2);
}

#[test]
fn control_plane_faults_tdi_error_and_ide_integrity() {
    use crate::control::fault::FaultSpec;
    use crate::control::{probes, trace::TraceSink, DeviceControl};
    let mut r = rig(IdeRequirement::Secure);
    r.secure_stream(1);
    let ctl = DeviceControl::new("t0", "test", "/nonexistent".into(), TraceSink::default());
    probes::ide(&ctl, &r.ide);
    probes::tdi(&ctl, &r.tdi);
    let arm = |v: serde_json::Value| ctl.arm(FaultSpec::from_value(&v).unwrap());
    assert!(
        arm(serde_json::json!({"fault": "tdi-error"})).is_err(),
        "CONFIG_UNLOCKED cannot go to ERROR"
    );
    r.lock(0, 1).unwrap();
    arm(serde_json::json!({"fault": "tdi-error"})).unwrap();
    assert_eq!(r.tdi.state(), TdiState::Error);
    assert_eq!(r.tdi.error_reason(), Some(ErrorReason::Injected));
    assert!(ctl.state()["tdi"]["state"]
        .as_str()
        .unwrap()
        .contains("Error"));
    // An IDE integrity failure on the bound stream of a running TDI.
    r.tdi.stop();
    assert_eq!(r.ide.secure_stream_ids(), vec![1]);
    let n = r.lock(0, 1).unwrap();
    r.tdi.start(SESSION, &n).unwrap();
    // Chosen by stream: refused for a Stream ID no SECURE stream has, with
    // the reason.
    let e = arm(serde_json::json!({"fault": "ide-integrity", "stream": 2}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no SECURE IDE stream has Stream ID 2 (SECURE: 1)"),
        "{e}"
    );
    assert_eq!(r.tdi.state(), TdiState::Run);
    // Queued for later (a large skip count): disarming all of the
    // device's faults drops it.
    arm(serde_json::json!({"fault": "ide-integrity", "stream": 1, "skip": 1000})).unwrap();
    assert_eq!(r.ide.pending_faults().len(), 1);
    assert_eq!(ctl.disarm(Some(7)), 0, "an id names a table fault only");
    assert_eq!(r.ide.pending_faults().len(), 1);
    assert_eq!(ctl.disarm(None), 1);
    assert!(r.ide.pending_faults().is_empty());
    // On the bound stream, after one TLP let through (in the state until
    // it hits).
    arm(serde_json::json!({"fault": "ide-integrity", "towards": "device", "stream": 1, "skip": 1}))
        .unwrap();
    assert_eq!(
        ctl.state()["ide"]["pending_faults"],
        serde_json::json!([{"towards": "Device", "stream_id": 1, "skip": 1}])
    );
    assert!(r.ide.link_model().host_write(0x1000, &[6u8; 64]), "skipped");
    assert_eq!(r.tdi.state(), TdiState::Run);
    assert!(
        !r.ide.link_model().host_write(0x1000, &[7u8; 64]),
        "dropped"
    );
    assert_eq!(ctl.state()["ide"]["pending_faults"], serde_json::json!([]));
    assert!(r.ide.secure_stream_ids().is_empty(), "stream INSECURE");
    assert_eq!(r.tdi.state(), TdiState::Error);
    assert!(matches!(
        r.tdi.error_reason(),
        Some(ErrorReason::IdeStream { id: 1, .. })
    ));
    let trace = ctl.trace.lines(0, 100).0.join("\n");
    assert!(trace.contains("integrity-failure"), "{trace}");
    assert!(trace.contains(r#""skip":1,"stream":1"#), "{trace}");
    assert!(
        arm(serde_json::json!({"fault": "ide-integrity"})).is_err(),
        "no SECURE stream left"
    );
}
