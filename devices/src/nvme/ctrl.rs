//! The controller: its registers (CAP, CC, CSTS, AQA, ASQ/ACQ, INTMS/INTMC,
//! NSSR), its lifecycle (enable, reset, shutdown, NVM subsystem reset), the
//! state beside the queues (features, health counters, error log,
//! asynchronous events), and moving command data to and from host memory.
//!
//! Queue mechanics (table, doorbells, completions, interrupts) live in
//! [`super::queue`]; the commands in [`super::admin`] and [`super::io`];
//! the threads that run them in [`super::threads`].

use super::dptr::{self, Dir, Seg};
use super::namespace::Namespace;
use super::options::{DoorbellMode, NvmeConfig};
use super::queue::{DoorbellError, Doorbells, Interrupter, QueueError, QueueEvents, Queues};
use super::security::StorageSpdm;
use super::spec::{self, cc, csts, reg, Command, Status};
use super::state::{event, AerState, Counters, ErrorEntry, ErrorLog, Event, Features};
use log::{debug, error, info, warn};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use thiserror::Error;
use vfio_user_server::dma::GuestMemory;
use vfio_user_server::irq::Interrupts;
use vfio_user_server::pci::SharedMemory;

pub(crate) use super::queue::lock;

/// Host-written registers (INTMS lives with the interrupts).
#[derive(Debug, Default, Clone, Copy)]
pub struct Regs {
    /// CC as written.
    pub cc: u32,
    /// CC as last acted upon by the admin thread.
    pub applied_cc: u32,
    /// AQA.
    pub aqa: u32,
    /// ASQ.
    pub asq: u64,
    /// ACQ.
    pub acq: u64,
}

/// Per-worker reusable buffers of command execution.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) segs: Vec<Seg>,
    pub(crate) buf: Vec<u8>,
    pub(crate) buf2: Vec<u8>,
    /// LBA of the last error (for the error log).
    pub(crate) err_lba: u64,
}

/// Why setting CC.EN failed (the controller then reports CSTS.CFS).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnableError {
    /// CC.CSS selects a command set other than NVM.
    #[error("CC.CSS {0} not supported (NVM only)")]
    CommandSet(u32),
    /// CC.MPS above CAP.MPSMAX.
    #[error("CC.MPS {0} above CAP.MPSMAX {MPSMAX}")]
    PageSize(u32),
    /// CC.AMS other than round robin.
    #[error("CC.AMS {0} not supported (round robin only)")]
    Arbitration(u32),
    /// AQA below two entries.
    #[error("admin queue sizes {0}/{1} below 2")]
    AdminQueueSize(u32, u32),
    /// ASQ or ACQ zero.
    #[error("ASQ/ACQ not set")]
    AdminQueueBase,
}

/// The controller.
pub struct Ctrl {
    pub(crate) cfg: NvmeConfig,
    pub(crate) mem: Arc<GuestMemory>,
    pub(crate) namespaces: Vec<Arc<Namespace>>,
    pub(crate) cap: u64,
    pub(crate) started: Instant,

    pub(crate) regs: Mutex<Regs>,
    pub(crate) csts: AtomicU32,
    /// Queues, doorbells, interrupts and the threads that run them.
    pub(crate) queues: Queues,
    pub(crate) features: Mutex<Features>,
    pub(crate) counters: Counters,
    pub(crate) errors: Mutex<ErrorLog>,
    pub(crate) aer: Mutex<AerState>,
    /// I/O queues created since the last reset (Number of Queues is then fixed).
    pub(crate) io_queues_created: AtomicBool,
    /// SPDM over NVMe Security Send/Receive (DSP0286, SECP 0xE8), if enabled.
    pub(crate) spdm: OnceLock<Mutex<StorageSpdm>>,
    /// The control plane's handle (faults, trace), if attached.
    pub(crate) control: OnceLock<Arc<crate::control::DeviceControl>>,

    pub(crate) stop: AtomicBool,
    pub(crate) cc_dirty: AtomicBool,
    pub(crate) nssr_request: AtomicBool,
}

impl std::fmt::Debug for Ctrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctrl")
            .field("serial", &self.cfg.serial)
            .field("csts", &self.csts.load(Ordering::Relaxed))
            .finish()
    }
}

/// CAP.TO: worst-case time to become ready, 500 ms units.
const CAP_TO: u64 = 20;
/// CAP.MPSMAX: memory pages up to 2^(12+4) = 64 KiB.
pub const MPSMAX: u32 = 4;

impl Ctrl {
    pub(crate) fn new(
        cfg: NvmeConfig,
        namespaces: Vec<Arc<Namespace>>,
        mem: Arc<GuestMemory>,
        irqs: Arc<Interrupts>,
        bar0_size: usize,
    ) -> std::io::Result<Ctrl> {
        let vectors = cfg.max_queues + 1;
        let cap = u64::from(cfg.queue_entries - 1) // MQES
            | (1 << 16) // CQR: contiguous queues required
            | (CAP_TO << 24)
            | (u64::from(cfg.dstrd) << 32)
            | (1 << 36) // NSSRS
            | (1 << 37) // CSS: NVM command set
            | (u64::from(MPSMAX) << 52);
        let page = match cfg.doorbells {
            DoorbellMode::Poll => Some(SharedMemory::new("nvme-doorbells", bar0_size)?),
            DoorbellMode::Trap => None,
        };
        let queues = Queues::new(
            Arc::clone(&mem),
            cfg.max_queues,
            cfg.workers,
            Doorbells::new(cfg.dstrd, page),
            Interrupter::new(irqs, vectors),
        );
        Ok(Ctrl {
            features: Mutex::new(Features::new()),
            cfg,
            mem,
            namespaces,
            cap,
            started: Instant::now(),
            regs: Mutex::new(Regs::default()),
            csts: AtomicU32::new(0),
            queues,
            counters: Counters::default(),
            errors: Mutex::new(ErrorLog::new(64)),
            aer: Mutex::new(AerState::default()),
            io_queues_created: AtomicBool::new(false),
            spdm: OnceLock::new(),
            control: OnceLock::new(),
            stop: AtomicBool::new(false),
            cc_dirty: AtomicBool::new(false),
            nssr_request: AtomicBool::new(false),
        })
    }

    /// MSI-X vectors.
    pub(crate) fn vectors(&self) -> u16 {
        self.queues.irq.vectors()
    }

    /// Largest transfer in bytes.
    pub(crate) fn mdts_bytes(&self) -> u64 {
        (1u64 << self.cfg.mdts) * 4096
    }

    // ------------------------------------------------------------ registers

    fn reg32(&self, off: u64) -> u32 {
        let r = *lock(&self.regs);
        match off {
            0x00 => self.cap as u32,
            0x04 => (self.cap >> 32) as u32,
            reg::VS => spec::VERSION_2_0,
            reg::INTMS | reg::INTMC => self.queues.irq.intms(),
            reg::CC => r.cc,
            reg::CSTS => self.csts.load(Ordering::SeqCst),
            reg::AQA => r.aqa,
            0x28 => r.asq as u32,
            0x2c => (r.asq >> 32) as u32,
            0x30 => r.acq as u32,
            0x34 => (r.acq >> 32) as u32,
            _ => 0, // NSSR reads 0; CMB, BP, PMR not implemented
        }
    }

    /// A BAR0 read (registers below 0x1000; doorbells read as 0).
    pub(crate) fn read_bar0(&self, off: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let a = off + i as u64;
            *d = if a < reg::DOORBELLS {
                (self.reg32(a & !3) >> (8 * (a & 3))) as u8
            } else {
                0
            };
        }
    }

    /// A BAR0 write. Registers accept 1-8 byte writes (merged per dword);
    /// doorbells only whole aligned dwords.
    pub(crate) fn write_bar0(&self, off: u64, data: &[u8]) {
        if off >= reg::DOORBELLS {
            if (data.len() == 4 && off % 4 == 0) || (data.len() == 8 && off % 8 == 0) {
                for (k, c) in data.chunks(4).enumerate() {
                    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    self.write_doorbell(off + 4 * k as u64 - reg::DOORBELLS, v);
                }
            } else {
                debug!("ignoring a {}-byte doorbell write at {off:#x}", data.len());
            }
            return;
        }
        let mut i = 0usize;
        while i < data.len() {
            let a = off + i as u64;
            let dw = a & !3;
            let shift = (a & 3) as usize;
            let n = (4 - shift).min(data.len() - i);
            let mut val = [0u8; 4];
            let mut mask = [0u8; 4];
            val[shift..shift + n].copy_from_slice(&data[i..i + n]);
            mask[shift..shift + n].fill(0xff);
            self.write_reg32(dw, u32::from_le_bytes(val), u32::from_le_bytes(mask));
            i += n;
        }
    }

    fn write_reg32(&self, off: u64, val: u32, mask: u32) {
        let merge = |old: u32| (old & !mask) | (val & mask);
        match off {
            reg::INTMS => self.queues.irq.set_mask(val & mask),
            reg::INTMC => self.queues.irq.clear_mask(val & mask),
            reg::CC => {
                let mut r = lock(&self.regs);
                r.cc = merge(r.cc);
                drop(r);
                self.cc_dirty.store(true, Ordering::SeqCst);
                self.queues.workers.admin.wake();
            }
            reg::CSTS if val & mask & csts::NSSRO != 0 => {
                self.csts.fetch_and(!csts::NSSRO, Ordering::SeqCst);
            }
            reg::NSSR if mask == u32::MAX && val == spec::NSSR_MAGIC => {
                self.nssr_request.store(true, Ordering::SeqCst);
                self.queues.workers.admin.wake();
            }
            _ => {
                let mut r = lock(&self.regs);
                match off {
                    reg::AQA => r.aqa = merge(r.aqa) & 0x0fff_0fff,
                    0x28 => {
                        r.asq = (r.asq & !0xffff_ffff) | u64::from(merge(r.asq as u32) & !0xfff)
                    }
                    0x2c => {
                        r.asq =
                            (r.asq & 0xffff_ffff) | (u64::from(merge((r.asq >> 32) as u32)) << 32)
                    }
                    0x30 => {
                        r.acq = (r.acq & !0xffff_ffff) | u64::from(merge(r.acq as u32) & !0xfff)
                    }
                    0x34 => {
                        r.acq =
                            (r.acq & 0xffff_ffff) | (u64::from(merge((r.acq >> 32) as u32)) << 32)
                    }
                    _ => {}
                }
            }
        }
    }

    /// A doorbell write at `rel` bytes past 0x1000.
    pub(crate) fn write_doorbell(&self, rel: u64, value: u32) {
        if self.csts.load(Ordering::SeqCst) & csts::RDY == 0 {
            // Doorbells of a disabled controller are ignored.
            self.queues
                .eff
                .doorbell_writes
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(e) = self.queues.write_doorbell(rel, value) {
            self.doorbell_error(e);
        }
    }

    // ------------------------------------------------------------ events

    /// Queues an asynchronous event and lets the admin thread report it.
    pub(crate) fn post_event(&self, e: Event) {
        lock(&self.aer).post(e);
        self.queues.workers.admin.wake();
    }

    /// Records a failed command in the Error Information log.
    pub(crate) fn record_error(&self, sqid: u16, cmd: &Command, status: Status, lba: u64) {
        lock(&self.errors).record(ErrorEntry {
            count: 0,
            sqid,
            cid: cmd.cid,
            status: status.0,
            location: 0xffff,
            lba,
            nsid: cmd.nsid,
        });
    }

    /// Sets CSTS.CFS: the controller cannot go on (host must reset it).
    pub(crate) fn fatal(&self, why: &dyn std::fmt::Display) {
        if self.csts.fetch_or(csts::CFS, Ordering::SeqCst) & csts::CFS == 0 {
            error!("controller fatal status (CSTS.CFS): {why}");
        }
        self.queues.halt();
    }

    // ------------------------------------------------------------ lifecycle

    /// Applies CC/NSSR changes. Admin thread, admin `busy` held.
    pub(crate) fn apply_pending(&self) {
        if self.nssr_request.swap(false, Ordering::SeqCst) {
            info!("NVM subsystem reset");
            self.disable("NVM subsystem reset");
            let mut r = lock(&self.regs);
            r.applied_cc = 0;
            r.cc = 0;
            drop(r);
            self.csts.store(csts::NSSRO, Ordering::SeqCst);
        }
        if !self.cc_dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        let (new, old) = {
            let r = lock(&self.regs);
            (r.cc, r.applied_cc)
        };
        if new & cc::EN == 0 && old & cc::EN != 0 {
            self.disable("CC.EN cleared");
            let keep = self.csts.load(Ordering::SeqCst) & csts::NSSRO;
            self.csts.store(keep, Ordering::SeqCst);
            info!(
                "controller disabled (CC.EN=0); {}",
                self.queues.efficiency_line()
            );
        } else if new & cc::EN == 0 {
            // Still disabled: a reset of a disabled controller clears CFS.
            let keep = self.csts.load(Ordering::SeqCst) & csts::NSSRO;
            self.csts.store(keep, Ordering::SeqCst);
        }
        if new & cc::EN != 0 && old & cc::EN == 0 {
            if let Err(e) = self.enable(new) {
                warn!("controller enable failed: {e}");
                self.csts.fetch_or(csts::CFS, Ordering::SeqCst);
            }
        }
        let (shn_new, shn_old) = (cc::shn(new), cc::shn(old));
        if new & cc::EN != 0 && shn_new != 0 && shn_old == 0 {
            self.shutdown(shn_new);
        }
        lock(&self.regs).applied_cc = new;
    }

    fn enable(&self, ccv: u32) -> Result<(), EnableError> {
        let r = *lock(&self.regs);
        if cc::css(ccv) != 0 {
            return Err(EnableError::CommandSet(cc::css(ccv)));
        }
        if cc::mps(ccv) > MPSMAX {
            return Err(EnableError::PageSize(cc::mps(ccv)));
        }
        if cc::ams(ccv) != 0 {
            return Err(EnableError::Arbitration(cc::ams(ccv)));
        }
        let asqs = (r.aqa & 0xfff) + 1;
        let acqs = ((r.aqa >> 16) & 0xfff) + 1;
        if asqs < 2 || acqs < 2 {
            return Err(EnableError::AdminQueueSize(asqs, acqs));
        }
        if r.asq == 0 || r.acq == 0 {
            return Err(EnableError::AdminQueueBase);
        }
        let page = 1u64 << (12 + cc::mps(ccv));
        self.queues.start(page, r.asq, asqs, r.acq, acqs);
        self.counters.power_cycles.fetch_add(1, Ordering::Relaxed);
        self.csts.fetch_or(csts::RDY, Ordering::SeqCst);
        info!(
            "controller enabled: admin SQ {asqs} entries at {:#x}, CQ {acqs} entries at {:#x}, page size {page}",
            r.asq, r.acq
        );
        Ok(())
    }

    /// Controller reset: every queue goes, outstanding commands are dropped,
    /// features return to their defaults. Admin `busy` held (or the admin
    /// thread is the caller).
    pub(crate) fn disable(&self, why: &str) {
        let had_queues = self.queues.stop();
        {
            let mut a = lock(&self.aer);
            a.outstanding.clear();
            a.pending.clear();
            a.masked = [false; 8];
        }
        *lock(&self.features) = Features::new();
        for ns in &self.namespaces {
            // Enabling the cache (the reset default) syncs nothing: no error.
            let _ = ns.backend.set_write_cache(true);
        }
        self.io_queues_created.store(false, Ordering::SeqCst);
        if had_queues > 0 {
            debug!("controller reset ({why}): {had_queues} submission queues deleted");
        }
    }

    fn shutdown(&self, shn: u32) {
        let kind = if shn == 1 { "normal" } else { "abrupt" };
        let c = self.csts.load(Ordering::SeqCst) & !csts::SHST_MASK;
        self.csts.store(c | csts::SHST_PROCESSING, Ordering::SeqCst);
        // Let in-flight I/O finish, then make everything durable.
        self.queues.workers.quiesce_io();
        let mut failed = false;
        for ns in &self.namespaces {
            if let Err(e) = ns.backend.flush() {
                error!("shutdown: flushing namespace {}: {e}", ns.nsid);
                failed = true;
            }
        }
        let c = self.csts.load(Ordering::SeqCst) & !csts::SHST_MASK;
        self.csts.store(c | csts::SHST_COMPLETE, Ordering::SeqCst);
        info!(
            "shutdown notification ({kind}): {}; CSTS.SHST = shutdown complete; {}",
            if failed {
                "flush FAILED"
            } else {
                "all namespaces flushed"
            },
            self.queues.efficiency_line()
        );
    }

    /// Device reset (FLR, DEVICE_RESET, client gone): synchronous.
    pub(crate) fn hard_reset(&self) {
        let _a = self.queues.workers.admin.hold();
        self.disable("device reset");
        *lock(&self.regs) = Regs::default();
        self.queues.irq.reset(true);
        self.csts.store(0, Ordering::SeqCst);
        self.cc_dirty.store(false, Ordering::SeqCst);
        self.nssr_request.store(false, Ordering::SeqCst);
        self.queues.clear_doorbell_page(true);
    }

    // ------------------------------------------------------------ data

    /// Maps a command's data pointer for `len` bytes into `sc.segs`.
    pub(crate) fn map_data(
        &self,
        cmd: &Command,
        len: u64,
        dir: Dir,
        admin: bool,
        sc: &mut Scratch,
    ) -> Result<(), Status> {
        match cmd.psdt {
            0 => dptr::prp_segments(
                &*self.mem,
                cmd.prp1,
                cmd.prp2,
                len,
                self.queues.page_size(),
                &mut sc.segs,
            ),
            // No metadata: PSDT 01b and 10b only differ in how MPTR is read.
            1 | 2 if !admin => dptr::sgl_segments(&*self.mem, cmd.sgl1(), len, dir, &mut sc.segs),
            _ => Err(Status::INVALID_FIELD),
        }
    }

    /// Sends `data` to the host buffer of an admin command.
    pub(crate) fn send_to_host(&self, cmd: &Command, data: &[u8], sc: &mut Scratch) -> Status {
        if let Err(s) = self.map_data(cmd, data.len() as u64, Dir::ToHost, true, sc) {
            return s;
        }
        match dptr::write_to_host(&self.mem, &sc.segs, data) {
            Ok(()) => Status::SUCCESS,
            Err(s) => s,
        }
    }

    /// Reads `len` bytes of a command's host buffer into `sc.buf`.
    pub(crate) fn receive_from_host(
        &self,
        cmd: &Command,
        len: usize,
        admin: bool,
        sc: &mut Scratch,
    ) -> Result<(), Status> {
        self.map_data(cmd, len as u64, Dir::FromHost, admin, sc)?;
        sc.buf.clear();
        sc.buf.resize(len, 0);
        dptr::read_from_host(&self.mem, &sc.segs, &mut sc.buf)
    }

    /// The namespace `nsid`, if active.
    pub(crate) fn namespace(&self, nsid: u32) -> Option<&Arc<Namespace>> {
        nsid.checked_sub(1)
            .and_then(|i| self.namespaces.get(i as usize))
    }
}

impl QueueEvents for Ctrl {
    fn doorbell_error(&self, e: DoorbellError) {
        warn!("{e}");
        let info = match e {
            DoorbellError::NoSuchQueue { .. } => event::INFO_INVALID_DOORBELL_REGISTER,
            DoorbellError::InvalidValue { .. } => event::INFO_INVALID_DOORBELL_VALUE,
        };
        self.post_event(Event {
            kind: event::ERROR,
            info,
            log: spec::log_id::ERROR,
        });
    }

    fn fatal(&self, e: QueueError) {
        Ctrl::fatal(self, &e);
    }
}
