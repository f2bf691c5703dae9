//! TDISP end to end on the host, over a real vfio-user socket: the DMA-copy
//! device served with IDE and a TDI (as `trustdev serve dma-copy` does), a
//! client that does what a TSM and a driver do — an SPDM session over the
//! DOE mailbox, IDE keys and a SECURE stream, LOCK, the report, START —
//! then what moves the TDI to ERROR (a locked register, MSI-X under
//! LOCK_MSIX, FLR) and what the device refuses in RUN and ERROR (DMA off the
//! bound stream, any DMA), and recovery through STOP.

use nix::sys::eventfd::{EfdFlags, EventFd};
use spdm_responder::idekm::regs::StreamSettings;
use spdm_responder::idekm::{IdeKey, KeySet, KeySlot};
use spdm_responder::tdisp::{lock_flags, range_attr, ErrorCode, InterfaceId, LockParams, TdiState};
use spdm_responder::transport::doe::{find_ext_cap, ConfigAccess};
use spdm_responder::ResponderConfig;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use trustdev_devices::example::{self, status, DmaCopy};
use trustdev_devices::security;
use trustdev_devices::security::ide::host::{self, ClientConfig, ClientIdeHost};
use trustdev_devices::security::ide::{DmaGate, Ide, IdeConfig, IdeDevice};
use trustdev_devices::security::tdisp::{ErrorReason, Tdi, TdispConfig, TdispDevice};
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::{irq_index, IrqAction, IrqData};

mod dma_copy_rig;

use dma_copy_rig::{copy, identity, Served, BAR0, IOVA, RAM};

const BAR1: u64 = 0xfe00_1000;
const STREAM: u8 = 5;
const IFACE: InterfaceId = InterfaceId {
    function_id: 0x0100,
    reserved: 0,
};

struct Rig {
    s: Served,
    ide: Arc<Ide>,
    tdi: Arc<Tdi>,
}

fn start(tag: &str) -> Rig {
    let ide = Ide::new(IdeConfig::default());
    let tdi = Tdi::new(
        TdispConfig::default(),
        "trustdev dma-copy",
        vec![Arc::clone(&ide)],
    );
    let s = dma_copy_rig::serve(&format!("tdisp-{tag}"), |_| {
        let mut caps = vec![security::doe_capability_secure(
            Some(identity()),
            ResponderConfig::default(),
            Some(&ide),
            Some(&tdi),
        )];
        caps.extend(ide.capabilities());
        let dev =
            DmaCopy::with_capabilities(PortType::Endpoint, true, example::DEFAULT_SERIAL, caps)
                .unwrap();
        TdispDevice::new(
            IdeDevice::new(dev, Arc::clone(&ide)).unwrap(),
            Arc::clone(&tdi),
        )
    });
    Rig { s, ide, tdi }
}

/// A TSM with an SPDM session, stream `STREAM` SECURE on selective stream
/// 0 (Default Stream), the device's BARs placed and decoding, bus master
/// on.
fn tsm(rig: &Rig) -> ClientIdeHost {
    let mut c = rig.s.client();
    c.write32(7, 0x14, BAR1 as u32).unwrap();
    let mut host = host::connect(c, identity().roots_der()).unwrap();
    let sel = StreamSettings::endpoint(STREAM, 0);
    host.setup(0, &sel).unwrap();
    host.program(STREAM, KeySet::K0, key).unwrap();
    assert_eq!(host.enable(0, &sel).unwrap(), 2, "SECURE");
    host
}

fn key(slot: KeySlot) -> IdeKey {
    IdeKey::new([slot.to_byte() ^ 0xa5; 32], 7)
}

fn params(flags: u16) -> LockParams {
    LockParams {
        flags,
        default_stream_id: STREAM,
        mmio_reporting_offset: 0,
        bind_p2p_address_mask: 0,
    }
}

/// LOCK (with `flags`) and START: the TDI in RUN.
fn run(host: &mut ClientIdeHost, flags: u16) {
    let sid = host.session();
    let nonce = host
        .requester()
        .tdisp_lock(sid, IFACE, &params(flags))
        .unwrap();
    host.requester().tdisp_start(sid, IFACE, &nonce).unwrap();
    assert_eq!(state(host), TdiState::Run);
}

fn state(host: &mut ClientIdeHost) -> TdiState {
    let sid = host.session();
    host.requester().tdisp_get_state(sid, IFACE).unwrap()
}

fn stop(host: &mut ClientIdeHost) {
    let sid = host.session();
    host.requester().tdisp_stop(sid, IFACE).unwrap();
    assert_eq!(state(host), TdiState::ConfigUnlocked);
}

impl Rig {
    /// Copies 4 KiB from 0x1000 to `dst` and says whether the data landed.
    fn copy_lands(&self, host: &mut ClientIdeHost, dst: u64) -> bool {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + dst as u32) as u8).collect();
        self.s.ram_write(0x1000, &data);
        self.s.ram_write(dst, &[0xee; 4096]);
        let s = copy(host.access(), 0x1000, dst, 4096);
        let got = self.s.ram_read(dst, 4096);
        assert_eq!(
            s & status::ERROR == 0,
            got == data,
            "STATUS {s:#x} agrees with memory"
        );
        got == data
    }
}

#[test]
fn lock_report_run_error_on_a_locked_register_and_stop() {
    let rig = start("main");
    let mut host = tsm(&rig);
    let sid = host.session();
    // The report: the BARs as the client placed them.
    let nonce = host
        .requester()
        .tdisp_lock(sid, IFACE, &params(lock_flags::LOCK_MSIX))
        .unwrap();
    let rep = host.requester().tdisp_get_report(sid, IFACE).unwrap();
    let r: Vec<(u64, u32, u16, u16)> = rep
        .ranges
        .iter()
        .map(|r| (r.first_page, r.number_of_pages, r.attributes, r.range_id))
        .collect();
    // BAR2 was not placed: not reported.
    assert_eq!(
        r,
        [
            (BAR0 >> 12, 1, 0, 0),
            (
                BAR1 >> 12,
                1,
                range_attr::MSIX_TABLE | range_attr::MSIX_PBA,
                1
            )
        ]
    );
    assert_eq!(rep.device_specific, b"trustdev dma-copy");
    // CONFIG_LOCKED: DMA as before (not yet bound).
    assert!(rig.copy_lands(&mut host, 0x10000));
    host.requester().tdisp_start(sid, IFACE, &nonce).unwrap();
    assert_eq!(state(&mut host), TdiState::Run);
    assert_eq!(rig.ide.dma_gate(), DmaGate::Stream(STREAM));
    // RUN: DMA on the bound SECURE stream works.
    let before = rig.ide.link_stats().ide_tlps;
    assert!(rig.copy_lands(&mut host, 0x20000));
    assert!(rig.ide.link_stats().ide_tlps > before, "on the stream");
    // Rewriting a locked register with its own value changes nothing.
    host.access().cfg_write32(0x04, 0x6).unwrap();
    host.access().cfg_write32(0x10, BAR0 as u32).unwrap();
    assert_eq!(state(&mut host), TdiState::Run);
    // Touching it: INTx Disable in the Command register.
    host.access().cfg_write32(0x04, 0x406).unwrap();
    assert_eq!(state(&mut host), TdiState::Error);
    assert!(matches!(
        rig.tdi.error_reason(),
        Some(ErrorReason::Config(_))
    ));
    // ERROR: no DMA at all, the report refused, START refused.
    assert!(!rig.copy_lands(&mut host, 0x30000), "DMA refused in ERROR");
    let e = host.requester().tdisp_get_report(sid, IFACE).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidInterfaceState));
    // Restoring the register does not leave ERROR.
    host.access().cfg_write32(0x04, 0x6).unwrap();
    assert_eq!(state(&mut host), TdiState::Error);
    // STOP does; the device works as before.
    stop(&mut host);
    assert_eq!(rig.ide.dma_gate(), DmaGate::Open);
    assert!(rig.copy_lands(&mut host, 0x30000));
    // And locks again (the stream is still SECURE).
    run(&mut host, 0);
    host.access()
        .cfg_write32(0x10, (BAR0 + 0x10_0000) as u32)
        .unwrap();
    assert_eq!(state(&mut host), TdiState::Error, "a BAR moved");
    stop(&mut host);
}

#[test]
fn dma_off_the_bound_stream_is_refused() {
    let rig = start("stream");
    let mut host = tsm(&rig);
    // A second SECURE stream (ID 6, selective stream 1) whose address
    // association covers the upper half of the client's memory.
    let ide = find_ext_cap(host.access(), 0x30).unwrap().unwrap();
    let sel1 = ide + 0x0c + 8 + 32;
    let (base, limit) = (IOVA + RAM / 2, IOVA + RAM - 1);
    let a = host.access();
    a.cfg_write32(sel1 + 0x0c, 0).unwrap();
    a.cfg_write32(sel1 + 0x10, 1).unwrap();
    let reg1 = 1 | (((base >> 20) as u32 & 0xfff) << 8) | (((limit >> 20) as u32 & 0xfff) << 20);
    a.cfg_write32(sel1 + 0x14, reg1).unwrap();
    a.cfg_write32(sel1 + 0x18, (limit >> 32) as u32).unwrap();
    a.cfg_write32(sel1 + 0x1c, (base >> 32) as u32).unwrap();
    a.cfg_write32(sel1 + 4, 6 << 24).unwrap();
    host.program(6, KeySet::K0, key).unwrap();
    let c = host.access().cfg_read32(sel1 + 4).unwrap();
    host.access().cfg_write32(sel1 + 4, c | 1).unwrap();
    assert!(rig.ide.is_secure(6) && rig.ide.is_secure(STREAM));
    // Before RUN both streams carry DMA.
    assert!(rig.copy_lands(&mut host, RAM / 2 + 0x1000));
    run(&mut host, 0);
    assert!(rig.copy_lands(&mut host, 0x8000), "the bound stream");
    let refused = rig.ide.link_stats().refused;
    assert!(
        !rig.copy_lands(&mut host, RAM / 2 + 0x1000),
        "stream 6 is not the TDI's"
    );
    assert!(rig.ide.link_stats().refused > refused);
    assert_eq!(
        state(&mut host),
        TdiState::Run,
        "a refused DMA is not a TDI error"
    );
    stop(&mut host);
    assert!(rig.copy_lands(&mut host, RAM / 2 + 0x1000));
}

#[test]
fn msix_under_lock_msix_flr_and_stream_loss() {
    let rig = start("msix");
    let mut host = tsm(&rig);
    let efd = EventFd::from_value_and_flags(0, EfdFlags::empty()).unwrap();
    let fds = [efd.as_raw_fd()];
    let vector = |host: &mut ClientIdeHost, v: u32| {
        host.access()
            .set_irqs(
                irq_index::MSIX,
                v,
                1,
                IrqData::Eventfd,
                IrqAction::Trigger,
                &fds,
            )
            .unwrap()
    };
    vector(&mut host, 0);
    // Without LOCK_MSIX the vectors may change.
    run(&mut host, 0);
    vector(&mut host, 1);
    assert_eq!(state(&mut host), TdiState::Run);
    stop(&mut host);
    // With it, SET_IRQS on the MSI-X index is an ERROR...
    run(&mut host, lock_flags::LOCK_MSIX);
    let c = host.access();
    c.set_irqs(
        irq_index::MSIX,
        0,
        0,
        IrqData::None,
        IrqAction::Trigger,
        &[],
    )
    .unwrap();
    assert_eq!(state(&mut host), TdiState::Error);
    assert_eq!(rig.tdi.error_reason(), Some(ErrorReason::MsixVectors));
    stop(&mut host);
    // ...and so is MSI-X Message Control (Enable).
    run(&mut host, lock_flags::LOCK_MSIX);
    let msix = msix_cap(host.access());
    let v = host.access().cfg_read32(msix).unwrap();
    host.access().cfg_write32(msix, v | 1 << 31).unwrap();
    assert_eq!(state(&mut host), TdiState::Error);
    stop(&mut host);
    // FLR: ERROR, and the reset took the IDE registers, the keys and the
    // SPDM session (the DOE mailbox) with it.
    run(&mut host, 0);
    let pcie = pcie_cap(host.access());
    let devctl = host.access().cfg_read32(pcie + 8).unwrap();
    host.access()
        .cfg_write32(pcie + 8, devctl | 1 << 15)
        .unwrap();
    assert_eq!(rig.tdi.state(), TdiState::Error);
    assert_eq!(rig.tdi.error_reason(), Some(ErrorReason::Flr));
    assert!(!rig.ide.is_secure(STREAM));
    assert_eq!(rig.ide.dma_gate(), DmaGate::Closed);
    // A new TSM session: still ERROR until STOP; then it runs again.
    drop(host);
    let mut host = tsm(&rig);
    assert_eq!(state(&mut host), TdiState::Error);
    stop(&mut host);
    run(&mut host, lock_flags::LOCK_MSIX);
    assert!(rig.copy_lands(&mut host, 0x4000));
}

fn std_cap(a: &mut ClientConfig, id: u8) -> u16 {
    let mut off = (a.cfg_read32(0x34).unwrap() & 0xfc) as u16;
    loop {
        let h = a.cfg_read32(off).unwrap();
        if h as u8 == id {
            return off;
        }
        off = ((h >> 8) & 0xfc) as u16;
        assert!(off >= 0x40, "no capability {id:#x}");
    }
}

fn msix_cap(a: &mut ClientConfig) -> u16 {
    std_cap(a, 0x11)
}

fn pcie_cap(a: &mut ClientConfig) -> u16 {
    std_cap(a, 0x10)
}
