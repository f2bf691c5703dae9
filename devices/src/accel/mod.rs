//! The trustdev accelerator: a work-queue DMA engine in the spirit of
//! Intel DSA, with its own register map (docs/ACCEL.md).
//!
//! PCI function 7d0c:acc1, class 12:00:00 (processing accelerator):
//! - BAR0: 16 KiB, 32-bit non-prefetchable memory (what uio maps): global
//!   registers at 0, one 64-byte register block per queue from 0x1000;
//! - BAR2: 4 KiB, the MSI-X table (0) and PBA (0x800), one vector per queue;
//! - PM, MSI, MSI-X, PCIe (FLR, End-End TLP Prefix), DSN, ATS, PRI, PASID
//!   and the security blocks every trustdev device carries (DOE + CMA/SPDM).
//!
//! Queues are descriptor rings in client memory, 64-byte descriptors
//! carrying an opcode (memmove, fill, compare, CRC-32C, AES-256-GCM
//! encrypt/decrypt, SHA-256), addresses (untranslated, or in the address
//! space of a PASID) and a completion record address. Workers execute them
//! in ring order through the server's zero-copy client-memory access.

pub mod desc;
pub mod engine;
pub mod exec;
pub mod host;
pub mod options;
pub mod regs;
pub mod state;

pub use options::{AccelArgs, AccelOptionsError};

use engine::Engine;
use exec::Limits;
use log::{info, warn};
use regs::{ctrl, global, qstatus, queue as qreg};
use state::{merge_word, read_words, QueueRegs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use vfio_user_server::irq::IrqInfo;
use vfio_user_server::pci::{
    ext_cap_id, AtsCap, Bar, ConfigBuilder, ConfigEvents, ConfigSpace, ExtCap, MsixCap, PasidCap,
    PciIds, PcieCap, PortType, PriCap, TranslationFeatures, TranslationRegs,
};
use vfio_user_server::{Device, DeviceContext, DeviceError};

/// Vendor ID (trustdev's).
pub const VENDOR_ID: u16 = 0x7d0c;
/// Device ID of the accelerator.
pub const DEVICE_ID: u16 = 0xacc1;
/// Class code: processing accelerator.
pub const CLASS: u32 = 0x12_00_00;
/// Revision.
pub const REVISION: u8 = 1;
/// The MSI-X BAR.
pub const MSIX_BAR: usize = 2;
/// Device Serial Number unless configured otherwise.
pub const DEFAULT_DSN: u64 = 0x7d0c_acc1_0000_0001;

/// The accelerator's configuration.
#[derive(Debug)]
pub struct AccelConfig {
    /// Queues (1..=8).
    pub queues: usize,
    /// Worker threads (1..=queues).
    pub workers: usize,
    /// Per-descriptor limits.
    pub limits: Limits,
    /// Max PASID Width advertised (1..=20); None: no PASID capability.
    pub pasid_bits: Option<u8>,
    /// Whether the function has the ATS capability.
    pub ats: bool,
    /// Outstanding Page Request Capacity advertised; None: no PRI
    /// capability.
    pub pri_capacity: Option<u32>,
    /// PCIe port type.
    pub port: PortType,
    /// DEVCAP.TEE (set for function 0 with a CMA mailbox).
    pub tee: bool,
    /// Device Serial Number (the DSN capability; also in the CMA name of
    /// the leaf certificate).
    pub dsn: u64,
    /// Extended capabilities of the security blocks (DOE mailbox, ...).
    pub security_caps: Vec<ExtCap>,
}

impl Default for AccelConfig {
    fn default() -> Self {
        AccelConfig {
            queues: regs::MAX_QUEUES,
            workers: 2,
            limits: Limits::default(),
            pasid_bits: Some(20),
            ats: true,
            pri_capacity: Some(512),
            port: PortType::Endpoint,
            tee: false,
            dsn: DEFAULT_DSN,
            security_caps: Vec::new(),
        }
    }
}

/// The PCI identity of the accelerator.
pub const PCI_IDS: PciIds = PciIds {
    vendor: VENDOR_ID,
    device: DEVICE_ID,
    subsystem_vendor: VENDOR_ID,
    subsystem: 0x0001,
    class: CLASS,
    revision: REVISION,
};

/// The accelerator device.
pub struct AccelDevice {
    ctx: DeviceContext,
    config: ConfigSpace,
    engine: Arc<Engine>,
    xlat: Arc<TranslationRegs>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for AccelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccelDevice")
            .field("queues", &self.engine.queues.len())
            .field("workers", &self.engine.workers())
            .finish()
    }
}

fn config_space(cfg: &mut AccelConfig, xlat: &Arc<TranslationRegs>) -> ConfigSpace {
    let serial = cfg.dsn;
    let mut b = ConfigBuilder::new(PCI_IDS)
        .bar(0, Bar::mem32(regs::BAR0_SIZE))
        .bar(MSIX_BAR, Bar::mem32(0x1000))
        .power_management()
        .msi(1)
        .msix(MsixCap {
            vectors: cfg.queues as u16,
            table_bar: MSIX_BAR as u8,
            table_offset: 0,
            pba_bar: MSIX_BAR as u8,
            pba_offset: 0x800,
        })
        .pcie(PcieCap {
            port_type: cfg.port,
            tee: cfg.tee,
            // PASID-tagged requests carry an End-End TLP Prefix.
            ee_prefix: true,
            flr: true,
        })
        .ext_capability(ExtCap {
            id: ext_cap_id::DSN,
            version: 1,
            body: serial.to_le_bytes().to_vec(),
            rw: vec![],
            handler: None,
        })
        .translation(xlat);
    for cap in std::mem::take(&mut cfg.security_caps) {
        b = b.ext_capability(cap);
    }
    b.build()
        .unwrap_or_else(|e| panic!("accelerator configuration space layout: {e}"))
}

impl AccelDevice {
    /// Builds the device and starts its workers.
    pub fn new(mut cfg: AccelConfig) -> std::io::Result<AccelDevice> {
        cfg.queues = cfg.queues.clamp(1, regs::MAX_QUEUES);
        cfg.workers = cfg.workers.clamp(1, cfg.queues);
        let xlat = TranslationRegs::new(TranslationFeatures {
            pasid: cfg.pasid_bits.map(|width| PasidCap {
                width,
                exec: true,
                privileged: true,
            }),
            ats: cfg.ats.then_some(AtsCap {
                invalidate_queue_depth: 32,
                page_aligned: true,
                global_invalidate: true,
            }),
            pri: cfg.pri_capacity.map(|capacity| PriCap { capacity }),
        });
        let ctx = DeviceContext::new(&IrqInfo::pci(1, cfg.queues as u32));
        ctx.pasid.attach(Arc::clone(&xlat));
        let config = config_space(&mut cfg, &xlat);
        let engine = Engine::new(ctx.clone(), cfg.queues, cfg.workers, cfg.limits);
        let threads = engine.start()?;
        let f = xlat.features();
        info!(
            "accelerator: {} queue(s), {} worker(s), PASID {}, ATS {}, PRI {}",
            cfg.queues,
            engine.workers(),
            f.pasid
                .map_or("off".into(), |p| format!("{} bits", p.width)),
            if f.ats.is_some() { "on" } else { "off" },
            f.pri
                .map_or("off".into(), |p| format!("capacity {}", p.capacity)),
        );
        Ok(AccelDevice {
            ctx,
            config,
            engine,
            xlat,
            threads,
        })
    }

    /// The engine (counters, queue registers), for tests and tools.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn queue_of(&self, offset: u64) -> Option<(usize, u64)> {
        let rel = offset.checked_sub(regs::QUEUE_BASE)?;
        let q = (rel / regs::QUEUE_STRIDE) as usize;
        (q < self.engine.queues.len()).then_some((q, rel % regs::QUEUE_STRIDE))
    }

    fn xlat_word(&self) -> u32 {
        let x = &self.xlat;
        let mut w = u32::from(x.pasid_control() & 0x7);
        let ats = u32::from(x.ats_control());
        // STU (ATS Control bits 4:0) in bits 12:8, Enable (bit 15) in place.
        w |= (ats & 0x1f) << 8 | (ats & 0x8000);
        if x.pri_enabled() {
            w |= 1 << 16;
        }
        w
    }

    fn read_word(&self, at: u64) -> u32 {
        let e = &self.engine;
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        if let Some((q, r)) = self.queue_of(at) {
            let qr = &e.queues[q];
            return match r {
                qreg::RING_LO => lo(qr.ring.load(Ordering::Acquire)),
                qreg::RING_HI => hi(qr.ring.load(Ordering::Acquire)),
                qreg::RING_SIZE => qr.size.load(Ordering::Acquire),
                qreg::CTRL => {
                    let mut c = qr.ctrl.load(Ordering::Acquire);
                    if qr.reset_pending.load(Ordering::Acquire) {
                        c |= ctrl::RESET;
                    }
                    c
                }
                qreg::PASID => qr.pasid.load(Ordering::Acquire),
                qreg::VECTOR => qr.vector.load(Ordering::Acquire),
                qreg::TAIL => qr.tail.load(Ordering::Acquire),
                qreg::HEAD => qr.head.load(Ordering::Acquire),
                qreg::STATUS => qr.status_value(),
                qreg::ERR_INDEX => qr.err_index.load(Ordering::Acquire),
                0x28 => lo(qr.err_addr.load(Ordering::Acquire)),
                0x2c => hi(qr.err_addr.load(Ordering::Acquire)),
                0x30 => lo(qr.completed.load(Ordering::Acquire)),
                0x34 => hi(qr.completed.load(Ordering::Acquire)),
                qreg::CR_FAULTS => qr.cr_faults.load(Ordering::Acquire),
                _ => 0,
            };
        }
        let c = &e.counters;
        let pr = self.ctx.pasid.stats().page_requests;
        match at {
            global::ID => regs::ID_VALUE,
            global::VERSION => regs::VERSION_VALUE,
            global::CAP => {
                let f = self.xlat.features();
                e.queues.len() as u32
                    | (15 << 8)
                    | u32::from(f.pasid.is_some()) << 16
                    | u32::from(f.ats.is_some()) << 17
                    | u32::from(f.pri.is_some()) << 18
            }
            global::OPCAP => (1u32 << (desc::opcode::LAST + 1)) - 1,
            global::MAX_XFER => e.limits.max_xfer,
            global::MAX_CRYPTO => e.limits.max_crypto,
            global::GCTRL => u32::from(
                e.queues
                    .iter()
                    .any(|q| q.reset_pending.load(Ordering::Acquire)),
            ),
            global::XLAT => self.xlat_word(),
            0x20 => lo(c.descriptors.load(Ordering::Relaxed)),
            0x24 => hi(c.descriptors.load(Ordering::Relaxed)),
            0x28 => lo(c.errors.load(Ordering::Relaxed)),
            0x2c => hi(c.errors.load(Ordering::Relaxed)),
            0x30 => lo(c.bytes.load(Ordering::Relaxed)),
            0x34 => hi(c.bytes.load(Ordering::Relaxed)),
            0x38 => lo(pr),
            0x3c => hi(pr),
            _ => 0,
        }
    }

    fn request_reset(&self, q: usize) {
        let qr = &self.engine.queues[q];
        qr.reset_pending.store(true, Ordering::Release);
        // Waits of the descriptor in flight give up.
        qr.generation.fetch_add(1, Ordering::AcqRel);
        self.engine.kick(q);
    }

    /// A write of `v` to queue register `r`; `mask` says which bytes the
    /// guest actually wrote (CTRL and STATUS act on byte 0 only).
    fn write_queue(&self, q: usize, r: u64, v: u32, mask: u8) {
        let qr: &QueueRegs = &self.engine.queues[q];
        let enabled = qr.ctrl.load(Ordering::Acquire) & ctrl::ENABLE != 0;
        match r {
            qreg::RING_LO | qreg::RING_HI | qreg::RING_SIZE if enabled => {
                warn!("queue {q}: ring registers are read-only while enabled");
            }
            qreg::RING_LO => {
                let old = qr.ring.load(Ordering::Acquire);
                qr.ring
                    .store((old & !0xffff_ffff) | u64::from(v), Ordering::Release);
            }
            qreg::RING_HI => {
                let old = qr.ring.load(Ordering::Acquire);
                qr.ring
                    .store((old & 0xffff_ffff) | u64::from(v) << 32, Ordering::Release);
            }
            qreg::RING_SIZE => qr.size.store(v, Ordering::Release),
            qreg::CTRL if mask & 1 == 0 => {}
            qreg::CTRL => {
                if v & ctrl::RESET != 0 {
                    self.request_reset(q);
                    return;
                }
                let want = v & ctrl::RW;
                if want & ctrl::ENABLE != 0 && !enabled {
                    if qr.status.load(Ordering::Acquire) & qstatus::HALTED != 0 {
                        warn!("queue {q}: halted; reset it before enabling");
                        return;
                    }
                    let size = qr.size.load(Ordering::Acquire);
                    let ring = qr.ring.load(Ordering::Acquire);
                    if !(2..=regs::MAX_RING_ENTRIES).contains(&size)
                        || !size.is_power_of_two()
                        || ring % regs::RING_ALIGN != 0
                        || ring.checked_add(u64::from(size) * 64).is_none()
                    {
                        warn!("queue {q}: bad ring {ring:#x} x{size}; not enabled");
                        qr.halt(regs::qerr::BAD_RING, 0, ring);
                        return;
                    }
                    qr.head.store(0, Ordering::Release);
                    qr.tail.store(0, Ordering::Release);
                }
                qr.ctrl.store(want, Ordering::Release);
                if enabled && want & ctrl::ENABLE == 0 {
                    // What the queue's work cost in translations, ATC hits,
                    // page requests and PASID DMA messages so far.
                    info!("queue {q}: disabled; {:?}", self.ctx.pasid.stats());
                }
                self.engine.kick(q);
            }
            qreg::PASID => qr.pasid.store(
                v & (regs::qpasid::PASID_MASK | regs::qpasid::PRIV),
                Ordering::Release,
            ),
            qreg::VECTOR => qr.vector.store(v, Ordering::Release),
            qreg::TAIL => {
                qr.tail.store(v, Ordering::Release);
                self.engine.kick(q);
            }
            qreg::STATUS if mask & 1 != 0 && v & qstatus::CR_FAULT != 0 => {
                qr.status.fetch_and(!qstatus::CR_FAULT, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    fn write_word(&self, at: u64, v: u32, mask: u8) {
        if let Some((q, r)) = self.queue_of(at) {
            return self.write_queue(q, r, v, mask);
        }
        if at == global::GCTRL && mask & 1 != 0 && v & 1 != 0 {
            for q in 0..self.engine.queues.len() {
                self.request_reset(q);
            }
        }
    }
}

/// BAR0 takes accesses of 1 to 8 bytes.
fn check_width(region: u32, offset: u64, len: usize) -> Result<(), DeviceError> {
    if len == 0 || len > 8 {
        return Err(DeviceError::BadAccess {
            region,
            offset,
            len,
        });
    }
    Ok(())
}

impl Device for AccelDevice {
    fn context(&self) -> &DeviceContext {
        &self.ctx
    }

    fn config(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        match region {
            0 => {
                check_width(region, offset, data.len())?;
                read_words(offset, data, |w| self.read_word(w));
                Ok(())
            }
            // Only the PBA reaches the server (QEMU emulates the table):
            // nothing is ever pending.
            2 => {
                data.fill(0);
                Ok(())
            }
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match region {
            0 => {
                check_width(region, offset, data.len())?;
                // Each dword touched, in address order (a 64-bit write of
                // RING_LO/HI sets both halves).
                let first = offset & !3;
                let last = (offset + data.len() as u64 - 1) & !3;
                let mut w = first;
                while w <= last {
                    let old = self.read_word(w);
                    let (v, mask) = merge_word(old, w, offset, data);
                    self.write_word(w, v, mask);
                    w += 4;
                }
                Ok(())
            }
            2 => Ok(()),
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn config_written(&mut self, events: ConfigEvents) {
        if events.flr {
            info!("accelerator: function level reset");
            self.config.function_reset();
            self.reset();
        }
    }

    fn reset(&mut self) {
        self.engine.reset();
        self.ctx.irqs.deassert(0, 0);
    }
}

impl Drop for AccelDevice {
    fn drop(&mut self) {
        self.engine.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
