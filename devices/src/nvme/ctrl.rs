//! The controller core shared by the connection thread (register accesses,
//! doorbells), the admin thread (controller lifecycle, admin queue) and the
//! I/O workers (I/O queues).
//!
//! Locking: each worker holds its `busy` mutex for a whole processing round
//! (every guest-memory access happens inside one). Anything that takes
//! queues away (controller disable, queue deletion, device reset) first
//! unpublishes them, then takes and releases the owning workers' `busy`
//! locks, so no worker still uses them afterwards. Lock order: admin busy,
//! then I/O busy; I/O workers never take the admin lock.

use super::dptr::{self, Dir, Seg};
use super::namespace::Namespace;
use super::options::{DoorbellMode, NvmeConfig};
use super::spec::{self, cc, csts, reg, Command, Completion, Status};
use super::state::{event, AerState, Counters, ErrorEntry, ErrorLog, Event, Features};
use log::{debug, error, info, warn};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::Thread;
use std::time::Instant;
use vfio_user_server::dma::GuestMemory;
use vfio_user_server::irq::Interrupts;
use vfio_user_server::pci::SharedMemory;
use vfio_user_server::protocol::irq_index;

/// Worker index of the admin thread.
pub const ADMIN: usize = usize::MAX;

/// Commands one queue may run per round before the worker moves on.
const BUDGET: u32 = 64;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A thread the controller wakes, and the lock it holds while working.
#[derive(Debug, Default)]
pub struct WorkerCtl {
    pub(crate) thread: OnceLock<Thread>,
    pub(crate) busy: Mutex<()>,
}

impl WorkerCtl {
    pub(crate) fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Waits until the worker is between rounds.
    pub(crate) fn quiesce(&self) {
        drop(lock(&self.busy));
    }
}

/// Host-written registers.
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
    /// INTMS/INTMC mask.
    pub intms: u32,
    /// Interrupts held back by INTMS.
    pub masked_pending: u32,
}

/// Completion queue progress (owned by the CQ's worker).
#[derive(Debug)]
pub struct CqState {
    /// Next slot to fill.
    pub tail: u32,
    /// Phase tag of the current pass.
    pub phase: bool,
    /// Host's head as last seen.
    pub head: u32,
    /// Completions posted since the last interrupt.
    pub unsignalled: u32,
    /// When the first of them was posted.
    pub first_unsignalled: Option<Instant>,
}

/// A completion queue.
#[derive(Debug)]
pub struct Cq {
    /// Queue ID.
    pub qid: u16,
    /// Base address.
    pub base: u64,
    /// Entries.
    pub size: u32,
    /// MSI-X vector.
    pub vector: u16,
    /// Interrupts enabled.
    pub ien: bool,
    /// Owning worker.
    pub worker: usize,
    /// Head as written to the (trapped) doorbell.
    pub head_db: AtomicU32,
    /// Progress.
    pub st: Mutex<CqState>,
    /// A submission queue waits for room in this queue.
    pub want_space: AtomicBool,
    /// Submission queues using this queue.
    pub sqs: AtomicU32,
    /// Unpublished (deleted or reset).
    pub deleted: AtomicBool,
    /// A bad head value was reported already.
    pub bad_db: AtomicBool,
}

/// A submission queue.
#[derive(Debug)]
pub struct Sq {
    /// Queue ID.
    pub qid: u16,
    /// Base address.
    pub base: u64,
    /// Entries.
    pub size: u32,
    /// Its completion queue.
    pub cq: Arc<Cq>,
    /// Owning worker.
    pub worker: usize,
    /// Tail as written to the (trapped) doorbell.
    pub tail_db: AtomicU32,
    /// Next entry to fetch.
    pub head: AtomicU32,
    /// Commands completed.
    pub completed: AtomicU64,
    /// Unpublished (deleted or reset).
    pub deleted: AtomicBool,
    /// A bad tail value was reported already.
    pub bad_db: AtomicBool,
    /// CIDs of submitted, not yet fetched commands an Abort asked for.
    pub aborts: Mutex<Vec<u16>>,
    /// `aborts` is not empty.
    pub abort_pending: AtomicBool,
}

impl Sq {
    /// A submission queue (no commands yet).
    pub(crate) fn new(qid: u16, base: u64, size: u32, cq: Arc<Cq>, worker: usize) -> Sq {
        Sq {
            qid,
            base,
            size,
            cq,
            worker,
            tail_db: AtomicU32::new(0),
            head: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            deleted: AtomicBool::new(false),
            bad_db: AtomicBool::new(false),
            aborts: Mutex::new(Vec::new()),
            abort_pending: AtomicBool::new(false),
        }
    }

    /// Whether the command `cid` just fetched was aborted (and forgets it).
    fn take_abort(&self, cid: u16) -> bool {
        if !self.abort_pending.load(Ordering::Acquire) {
            return false;
        }
        let mut a = lock(&self.aborts);
        let hit = match a.iter().position(|&c| c == cid) {
            Some(i) => {
                a.swap_remove(i);
                true
            }
            None => false,
        };
        self.abort_pending.store(!a.is_empty(), Ordering::Release);
        hit
    }
}

/// The queue table, indexed by queue ID.
#[derive(Debug, Default)]
pub struct Queues {
    /// Submission queues.
    pub sqs: Vec<Option<Arc<Sq>>>,
    /// Completion queues.
    pub cqs: Vec<Option<Arc<Cq>>>,
}

/// What running a command produced.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Post a completion.
    Done {
        /// Status.
        status: Status,
        /// DW0.
        dw0: u32,
    },
    /// Completed later (Asynchronous Event Request).
    Deferred,
}

impl Outcome {
    pub(crate) fn ok(dw0: u32) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            dw0,
        }
    }
}

impl From<Status> for Outcome {
    fn from(status: Status) -> Outcome {
        Outcome::Done { status, dw0: 0 }
    }
}

/// Per-worker reusable buffers.
#[derive(Debug, Default)]
pub struct Scratch {
    pub(crate) segs: Vec<Seg>,
    pub(crate) buf: Vec<u8>,
    pub(crate) buf2: Vec<u8>,
    /// LBA of the last error (for the error log).
    pub(crate) err_lba: u64,
}

/// Efficiency counters (for logs and benchmarks).
#[derive(Debug, Default)]
pub struct Efficiency {
    /// Trapped doorbell writes.
    pub doorbell_writes: AtomicU64,
    /// Commands completed.
    pub completions: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Event index updates written to host memory.
    pub eventidx_writes: AtomicU64,
}

/// The controller.
pub struct Ctrl {
    pub(crate) cfg: NvmeConfig,
    pub(crate) mem: Arc<GuestMemory>,
    pub(crate) irqs: Arc<Interrupts>,
    pub(crate) namespaces: Vec<Arc<Namespace>>,
    /// MSI-X vectors.
    pub(crate) vectors: u16,
    pub(crate) cap: u64,
    pub(crate) started: Instant,

    pub(crate) regs: Mutex<Regs>,
    pub(crate) csts: AtomicU32,
    /// Queues are live (enabled and not fatally failed).
    pub(crate) enabled: AtomicBool,
    /// Memory page size selected by CC.MPS at enable.
    pub(crate) page_size: AtomicU64,
    pub(crate) queues: RwLock<Queues>,
    /// Bumped whenever the queue table changes.
    pub(crate) qgen: AtomicU64,
    pub(crate) features: Mutex<Features>,
    pub(crate) counters: Counters,
    pub(crate) errors: Mutex<ErrorLog>,
    pub(crate) aer: Mutex<AerState>,
    /// Shadow doorbell buffer (0 = not configured).
    pub(crate) dbbuf_dbs: AtomicU64,
    /// EventIdx buffer.
    pub(crate) dbbuf_eis: AtomicU64,
    /// The mmapped doorbell page (poll mode): the whole BAR0 image.
    pub(crate) doorbell_page: Option<SharedMemory>,
    /// I/O queues created since the last reset (Number of Queues is then fixed).
    pub(crate) io_queues_created: AtomicBool,
    /// SPDM over NVMe Security Send/Receive (DSP0286, SECP 0xE8), if enabled.
    pub(crate) spdm: std::sync::OnceLock<Mutex<super::security::StorageSpdm>>,

    pub(crate) admin: WorkerCtl,
    pub(crate) io: Vec<WorkerCtl>,
    pub(crate) stop: AtomicBool,
    pub(crate) cc_dirty: AtomicBool,
    pub(crate) nssr_request: AtomicBool,
    pub(crate) eff: Efficiency,
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
        let doorbell_page = match cfg.doorbells {
            DoorbellMode::Poll => Some(SharedMemory::new("nvme-doorbells", bar0_size)?),
            DoorbellMode::Trap => None,
        };
        let workers = cfg.workers;
        Ok(Ctrl {
            features: Mutex::new(Features::new(vectors as usize)),
            cfg,
            mem,
            irqs,
            namespaces,
            vectors,
            cap,
            started: Instant::now(),
            regs: Mutex::new(Regs::default()),
            csts: AtomicU32::new(0),
            enabled: AtomicBool::new(false),
            page_size: AtomicU64::new(4096),
            queues: RwLock::new(Queues::default()),
            qgen: AtomicU64::new(0),
            counters: Counters::default(),
            errors: Mutex::new(ErrorLog::new(64)),
            aer: Mutex::new(AerState::default()),
            dbbuf_dbs: AtomicU64::new(0),
            dbbuf_eis: AtomicU64::new(0),
            doorbell_page,
            io_queues_created: AtomicBool::new(false),
            spdm: std::sync::OnceLock::new(),
            admin: WorkerCtl::default(),
            io: (0..workers).map(|_| WorkerCtl::default()).collect(),
            stop: AtomicBool::new(false),
            cc_dirty: AtomicBool::new(false),
            nssr_request: AtomicBool::new(false),
            eff: Efficiency::default(),
        })
    }

    /// Doorbell stride in bytes.
    pub(crate) fn stride(&self) -> u64 {
        4 << self.cfg.dstrd
    }

    /// Offset of queue `qid`'s SQ tail (or CQ head) doorbell from 0x1000,
    /// which is also its offset in the shadow doorbell buffer.
    pub(crate) fn db_offset(&self, qid: u16, cq: bool) -> u64 {
        (2 * u64::from(qid) + u64::from(cq)) * self.stride()
    }

    /// Largest transfer in bytes.
    pub(crate) fn mdts_bytes(&self) -> u64 {
        (1u64 << self.cfg.mdts) * 4096
    }

    fn worker_ctl(&self, w: usize) -> &WorkerCtl {
        if w == ADMIN {
            &self.admin
        } else {
            &self.io[w % self.io.len()]
        }
    }

    pub(crate) fn wake_worker(&self, w: usize) {
        self.worker_ctl(w).wake();
    }

    // ------------------------------------------------------------ registers

    fn reg32(&self, off: u64) -> u32 {
        let r = *lock(&self.regs);
        match off {
            0x00 => self.cap as u32,
            0x04 => (self.cap >> 32) as u32,
            reg::VS => spec::VERSION_2_0,
            reg::INTMS | reg::INTMC => r.intms,
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
            if data.len() == 4 && off % 4 == 0 {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_doorbell(off - reg::DOORBELLS, v);
            } else if data.len() == 8 && off % 8 == 0 {
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
        let mut r = lock(&self.regs);
        match off {
            reg::INTMS => {
                r.intms |= val & mask;
            }
            reg::INTMC => {
                let clear = val & mask;
                r.intms &= !clear;
                let fire = r.masked_pending & clear;
                r.masked_pending &= !fire;
                drop(r);
                for v in 0..32 {
                    if fire & (1 << v) != 0 {
                        self.raise(v as u16);
                    }
                }
            }
            reg::CC => {
                r.cc = merge(r.cc);
                drop(r);
                self.cc_dirty.store(true, Ordering::SeqCst);
                self.admin.wake();
            }
            reg::CSTS if val & mask & csts::NSSRO != 0 => {
                self.csts.fetch_and(!csts::NSSRO, Ordering::SeqCst);
            }
            reg::NSSR if mask == u32::MAX && val == spec::NSSR_MAGIC => {
                drop(r);
                self.nssr_request.store(true, Ordering::SeqCst);
                self.admin.wake();
            }
            reg::AQA => r.aqa = merge(r.aqa) & 0x0fff_0fff,
            0x28 => r.asq = (r.asq & !0xffff_ffff) | u64::from(merge(r.asq as u32) & !0xfff),
            0x2c => r.asq = (r.asq & 0xffff_ffff) | (u64::from(merge((r.asq >> 32) as u32)) << 32),
            0x30 => r.acq = (r.acq & !0xffff_ffff) | u64::from(merge(r.acq as u32) & !0xfff),
            0x34 => r.acq = (r.acq & 0xffff_ffff) | (u64::from(merge((r.acq >> 32) as u32)) << 32),
            _ => {}
        }
    }

    /// A doorbell write at `rel` bytes past 0x1000.
    pub(crate) fn write_doorbell(&self, rel: u64, value: u32) {
        self.eff.doorbell_writes.fetch_add(1, Ordering::Relaxed);
        if self.csts.load(Ordering::SeqCst) & csts::RDY == 0 {
            return; // doorbells of a disabled controller are ignored
        }
        let stride = self.stride();
        if rel % stride != 0 {
            return;
        }
        let idx = rel / stride;
        let is_cq = idx % 2 == 1;
        let qid = idx / 2;
        let q = self.queues.read().unwrap_or_else(|p| p.into_inner());
        if let Some(page) = &self.doorbell_page {
            // Poll mode: the page is the doorbell (the worker validates what
            // it reads there); a trapped write just lands in it.
            page.write((reg::DOORBELLS + rel) as usize, &value.to_le_bytes());
            let w = if is_cq {
                q.cqs.get(qid as usize).cloned().flatten().map(|c| c.worker)
            } else {
                q.sqs.get(qid as usize).cloned().flatten().map(|s| s.worker)
            };
            drop(q);
            if let Some(w) = w {
                self.wake_worker(w);
            }
            return;
        }
        let invalid_register = Event {
            kind: event::ERROR,
            info: event::INFO_INVALID_DOORBELL_REGISTER,
            log: spec::log_id::ERROR,
        };
        let invalid_value = Event {
            kind: event::ERROR,
            info: event::INFO_INVALID_DOORBELL_VALUE,
            log: spec::log_id::ERROR,
        };
        if is_cq {
            let Some(Some(cq)) = q.cqs.get(qid as usize) else {
                drop(q);
                warn!("doorbell write to CQ {qid}, which does not exist");
                self.post_event(invalid_register);
                return;
            };
            if value >= cq.size || !self.cq_head_valid(cq, value) {
                let cq = Arc::clone(cq);
                drop(q);
                warn!(
                    "invalid CQ {} head doorbell value {value} (size {})",
                    cq.qid, cq.size
                );
                self.post_event(invalid_value);
                return;
            }
            cq.head_db.store(value, Ordering::Release);
            if cq.want_space.load(Ordering::Acquire) {
                self.wake_worker(cq.worker);
            }
            let intx =
                self.irqs.enabled(irq_index::MSIX) == 0 && self.irqs.enabled(irq_index::MSI) == 0;
            drop(q);
            if intx {
                self.update_intx();
            }
        } else {
            let Some(Some(sq)) = q.sqs.get(qid as usize) else {
                drop(q);
                warn!("doorbell write to SQ {qid}, which does not exist");
                self.post_event(invalid_register);
                return;
            };
            if value >= sq.size {
                let (qid, size) = (sq.qid, sq.size);
                drop(q);
                warn!("invalid SQ {qid} tail doorbell value {value} (size {size})");
                self.post_event(invalid_value);
                return;
            }
            sq.tail_db.store(value, Ordering::Release);
            self.wake_worker(sq.worker);
        }
    }

    /// Whether moving CQ `cq`'s head from its last doorbell value to
    /// `value` frees only posted entries.
    fn cq_head_valid(&self, cq: &Cq, value: u32) -> bool {
        let st = lock(&cq.st);
        let old = cq.head_db.load(Ordering::Acquire);
        let posted = (st.tail + cq.size - old) % cq.size;
        let advance = (value + cq.size - old) % cq.size;
        advance <= posted
    }

    // ------------------------------------------------------------ interrupts

    /// Raises interrupt `vector`: MSI-X if enabled, else MSI or INTx
    /// (subject to INTMS, all on vector 0).
    pub(crate) fn raise(&self, vector: u16) {
        self.eff.interrupts.fetch_add(1, Ordering::Relaxed);
        if self.irqs.enabled(irq_index::MSIX) > 0 {
            if !self.irqs.trigger(irq_index::MSIX, u32::from(vector)) {
                debug!("MSI-X vector {vector} has no eventfd");
            }
            return;
        }
        {
            let mut r = lock(&self.regs);
            if r.intms & 1 != 0 {
                r.masked_pending |= 1;
                return;
            }
        }
        if self.irqs.enabled(irq_index::MSI) > 0 {
            self.irqs.trigger(irq_index::MSI, 0);
        } else {
            self.irqs.trigger(irq_index::INTX, 0);
        }
    }

    /// INTx is level-triggered: it stays asserted while any completion queue
    /// with interrupts enabled holds entries the host has not consumed.
    fn update_intx(&self) {
        let q = self.queues.read().unwrap_or_else(|p| p.into_inner());
        let pending = q.cqs.iter().flatten().any(|cq| {
            let st = lock(&cq.st);
            cq.ien && st.tail != cq.head_db.load(Ordering::Acquire)
        });
        if !pending {
            self.irqs.deassert(irq_index::INTX, 0);
        }
    }

    // ------------------------------------------------------------ events

    /// Queues an asynchronous event and lets the admin thread report it.
    pub(crate) fn post_event(&self, e: Event) {
        lock(&self.aer).post(e);
        self.admin.wake();
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
    pub(crate) fn fatal(&self, why: &str) {
        if self.csts.fetch_or(csts::CFS, Ordering::SeqCst) & csts::CFS == 0 {
            error!("controller fatal status (CSTS.CFS): {why}");
        }
        self.enabled.store(false, Ordering::SeqCst);
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
            info!("controller disabled (CC.EN=0); {}", self.efficiency_line());
        } else if new & cc::EN == 0 {
            // Still disabled: a reset of a disabled controller clears CFS.
            let keep = self.csts.load(Ordering::SeqCst) & csts::NSSRO;
            self.csts.store(keep, Ordering::SeqCst);
        }
        if new & cc::EN != 0 && old & cc::EN == 0 {
            match self.enable(new) {
                Ok(()) => {}
                Err(why) => {
                    warn!("controller enable failed: {why}");
                    self.csts.fetch_or(csts::CFS, Ordering::SeqCst);
                }
            }
        }
        let (shn_new, shn_old) = (cc::shn(new), cc::shn(old));
        if new & cc::EN != 0 && shn_new != 0 && shn_old == 0 {
            self.shutdown(shn_new);
        }
        lock(&self.regs).applied_cc = new;
    }

    fn enable(&self, ccv: u32) -> Result<(), String> {
        let r = *lock(&self.regs);
        if cc::css(ccv) != 0 {
            return Err(format!("CC.CSS {} not supported (NVM only)", cc::css(ccv)));
        }
        if cc::mps(ccv) > MPSMAX {
            return Err(format!("CC.MPS {} above CAP.MPSMAX {MPSMAX}", cc::mps(ccv)));
        }
        if cc::ams(ccv) != 0 {
            return Err(format!(
                "CC.AMS {} not supported (round robin only)",
                cc::ams(ccv)
            ));
        }
        let asqs = (r.aqa & 0xfff) + 1;
        let acqs = ((r.aqa >> 16) & 0xfff) + 1;
        if asqs < 2 || acqs < 2 {
            return Err(format!("admin queue sizes {asqs}/{acqs} below 2"));
        }
        if r.asq == 0 || r.acq == 0 {
            return Err("ASQ/ACQ not set".into());
        }
        let page = 1u64 << (12 + cc::mps(ccv));
        self.page_size.store(page, Ordering::SeqCst);
        let cq = Arc::new(Cq {
            qid: 0,
            base: r.acq,
            size: acqs,
            vector: 0,
            ien: true,
            worker: ADMIN,
            head_db: AtomicU32::new(0),
            st: Mutex::new(CqState {
                tail: 0,
                phase: true,
                head: 0,
                unsignalled: 0,
                first_unsignalled: None,
            }),
            want_space: AtomicBool::new(false),
            sqs: AtomicU32::new(1),
            deleted: AtomicBool::new(false),
            bad_db: AtomicBool::new(false),
        });
        let sq = Arc::new(Sq::new(0, r.asq, asqs, Arc::clone(&cq), ADMIN));
        if let Some(page) = &self.doorbell_page {
            // Doorbells start at 0 for every new queue.
            let zero = vec![0u8; page.len() - reg::DOORBELLS as usize];
            page.write(reg::DOORBELLS as usize, &zero);
        }
        {
            let mut q = self.queues.write().unwrap_or_else(|p| p.into_inner());
            let n = usize::from(self.cfg.max_queues) + 1;
            q.sqs = vec![None; n];
            q.cqs = vec![None; n];
            q.sqs[0] = Some(sq);
            q.cqs[0] = Some(cq);
        }
        self.qgen.fetch_add(1, Ordering::SeqCst);
        self.counters.power_cycles.fetch_add(1, Ordering::Relaxed);
        self.enabled.store(true, Ordering::SeqCst);
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
        self.enabled.store(false, Ordering::SeqCst);
        self.dbbuf_dbs.store(0, Ordering::SeqCst);
        self.dbbuf_eis.store(0, Ordering::SeqCst);
        let had_queues = {
            let mut q = self.queues.write().unwrap_or_else(|p| p.into_inner());
            let n = q.sqs.iter().flatten().count();
            for sq in q.sqs.iter().flatten() {
                sq.deleted.store(true, Ordering::SeqCst);
            }
            for cq in q.cqs.iter().flatten() {
                cq.deleted.store(true, Ordering::SeqCst);
            }
            *q = Queues::default();
            n
        };
        self.qgen.fetch_add(1, Ordering::SeqCst);
        for w in &self.io {
            w.quiesce();
        }
        {
            let mut a = lock(&self.aer);
            a.outstanding.clear();
            a.pending.clear();
            a.masked = [false; 8];
        }
        *lock(&self.features) = Features::new(usize::from(self.vectors));
        for ns in &self.namespaces {
            ns.backend.set_write_cache(true);
        }
        self.io_queues_created.store(false, Ordering::SeqCst);
        {
            let mut r = lock(&self.regs);
            r.masked_pending = 0;
        }
        if had_queues > 0 {
            debug!("controller reset ({why}): {had_queues} submission queues deleted");
        }
    }

    fn shutdown(&self, shn: u32) {
        let kind = if shn == 1 { "normal" } else { "abrupt" };
        let c = self.csts.load(Ordering::SeqCst) & !csts::SHST_MASK;
        self.csts.store(c | csts::SHST_PROCESSING, Ordering::SeqCst);
        // Let in-flight I/O finish, then make everything durable.
        for w in &self.io {
            w.quiesce();
        }
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
            self.efficiency_line()
        );
    }

    /// Device reset (FLR, DEVICE_RESET, client gone): synchronous.
    pub(crate) fn hard_reset(&self) {
        let _a = lock(&self.admin.busy);
        self.disable("device reset");
        *lock(&self.regs) = Regs::default();
        self.csts.store(0, Ordering::SeqCst);
        self.cc_dirty.store(false, Ordering::SeqCst);
        self.nssr_request.store(false, Ordering::SeqCst);
        if let Some(page) = &self.doorbell_page {
            let zero = vec![0u8; page.len()];
            page.write(0, &zero);
        }
    }

    /// Vendor log page C0h (512 bytes): little-endian u64 counters since
    /// the server started: completions, trapped doorbell writes, interrupts
    /// raised, event-index updates; the rest is reserved (zero).
    pub(crate) fn efficiency_log(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        let vals = [
            self.eff.completions.load(Ordering::Relaxed),
            self.eff.doorbell_writes.load(Ordering::Relaxed),
            self.eff.interrupts.load(Ordering::Relaxed),
            self.eff.eventidx_writes.load(Ordering::Relaxed),
        ];
        for (i, v) in vals.iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// One line of efficiency counters.
    pub(crate) fn efficiency_line(&self) -> String {
        format!(
            "{} completions, {} doorbell writes, {} interrupts, {} event-index updates",
            self.eff.completions.load(Ordering::Relaxed),
            self.eff.doorbell_writes.load(Ordering::Relaxed),
            self.eff.interrupts.load(Ordering::Relaxed),
            self.eff.eventidx_writes.load(Ordering::Relaxed)
        )
    }

    // ------------------------------------------------------------ queues

    /// Addresses of queue `qid`'s slots in the shadow doorbell and event
    /// index buffers, when shadow doorbells apply to it: configured, an I/O
    /// queue (Linux keeps ringing the admin doorbells), and inside the
    /// buffers' one memory page.
    pub(crate) fn shadow_slot(&self, qid: u16, cq: bool) -> Option<(u64, u64)> {
        let dbs = self.dbbuf_dbs.load(Ordering::Acquire);
        let eis = self.dbbuf_eis.load(Ordering::Acquire);
        let off = self.db_offset(qid, cq);
        if qid == 0 || dbs == 0 || eis == 0 || off + 4 > self.page_size.load(Ordering::Relaxed) {
            return None;
        }
        Some((dbs + off, eis + off))
    }

    /// Current SQ tail as the host published it (shadow buffer, polled page
    /// or trapped doorbell), validated: an invalid value is reported once
    /// and ignored.
    pub(crate) fn sq_tail(&self, sq: &Sq) -> u32 {
        let v = if let Some((db, _)) = self.shadow_slot(sq.qid, false) {
            fence(Ordering::SeqCst);
            self.mem
                .read_u32(db)
                .unwrap_or_else(|_| sq.tail_db.load(Ordering::Acquire))
        } else if let Some(page) = &self.doorbell_page {
            page.read_u32((reg::DOORBELLS + self.db_offset(sq.qid, false)) as usize)
                .unwrap_or(0)
        } else {
            return sq.tail_db.load(Ordering::Acquire);
        };
        if v >= sq.size {
            if !sq.bad_db.swap(true, Ordering::SeqCst) {
                warn!("invalid SQ {} tail {v} (size {})", sq.qid, sq.size);
                self.post_event(Event {
                    kind: event::ERROR,
                    info: event::INFO_INVALID_DOORBELL_VALUE,
                    log: spec::log_id::ERROR,
                });
            }
            return sq.head.load(Ordering::Relaxed);
        }
        v
    }

    /// Current CQ head as the host published it.
    fn cq_head(&self, cq: &Cq, st: &CqState) -> u32 {
        let v = if let Some((db, _)) = self.shadow_slot(cq.qid, true) {
            fence(Ordering::SeqCst);
            match self.mem.read_u32(db) {
                Ok(v) => v,
                Err(_) => cq.head_db.load(Ordering::Acquire),
            }
        } else if let Some(page) = &self.doorbell_page {
            page.read_u32((reg::DOORBELLS + self.db_offset(cq.qid, true)) as usize)
                .unwrap_or(0)
        } else {
            return cq.head_db.load(Ordering::Acquire);
        };
        let posted = (st.tail + cq.size - st.head) % cq.size;
        let advance = (v.wrapping_add(cq.size).wrapping_sub(st.head)) % cq.size;
        if v >= cq.size || advance > posted {
            if !cq.bad_db.swap(true, Ordering::SeqCst) {
                warn!("invalid CQ {} head {v} (size {})", cq.qid, cq.size);
                self.post_event(Event {
                    kind: event::ERROR,
                    info: event::INFO_INVALID_DOORBELL_VALUE,
                    log: spec::log_id::ERROR,
                });
            }
            return st.head;
        }
        v
    }

    /// Whether `cq` has room for `n` more entries (refreshing the head).
    pub(crate) fn cq_room_for(&self, cq: &Cq, n: u32) -> bool {
        let mut st = lock(&cq.st);
        let free = |st: &CqState| (st.head + cq.size - st.tail - 1) % cq.size;
        if free(&st) >= n {
            return true;
        }
        let h = self.cq_head(cq, &st);
        st.head = h;
        free(&st) >= n
    }

    /// Whether `cq` has room for one more entry (refreshing the head).
    fn cq_has_room(&self, cq: &Cq) -> bool {
        self.cq_room_for(cq, 1)
    }

    /// Posts a completion entry; false if the queue memory is gone (fatal).
    pub(crate) fn post(&self, cq: &Cq, c: Completion) -> bool {
        let mut st = lock(&cq.st);
        if (st.tail + 1) % cq.size == st.head {
            let h = self.cq_head(cq, &st);
            st.head = h;
            if (st.tail + 1) % cq.size == st.head {
                // Callers check for room first; never overwrite an entry
                // the host has not consumed.
                warn!("CQ {} full: completion for CID {} dropped", cq.qid, c.cid);
                return false;
            }
        }
        let addr = cq.base + u64::from(st.tail) * spec::CQE_SIZE as u64;
        let ok = self.mem.write(addr, &c.head_bytes()).is_ok() && {
            // The phase tag must not become visible before the rest.
            fence(Ordering::Release);
            self.mem.write_u32(addr + 12, c.dw3(st.phase)).is_ok()
        };
        if !ok {
            drop(st);
            self.fatal(&format!("cannot write CQ {} entry at {addr:#x}", cq.qid));
            return false;
        }
        st.tail += 1;
        if st.tail == cq.size {
            st.tail = 0;
            st.phase = !st.phase;
        }
        st.unsignalled += 1;
        if st.first_unsignalled.is_none() {
            st.first_unsignalled = Some(Instant::now());
        }
        self.eff.completions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Raises `cq`'s interrupt if it has unsignalled completions and
    /// coalescing allows; returns when to look again if it held back.
    pub(crate) fn signal(&self, cq: &Cq) -> Option<Instant> {
        let mut st = lock(&cq.st);
        if st.unsignalled == 0 {
            return None;
        }
        if !cq.ien {
            st.unsignalled = 0;
            st.first_unsignalled = None;
            return None;
        }
        if cq.qid != 0 {
            let f = lock(&self.features);
            let coalesce = f.coalescing().filter(|_| {
                !f.vector_no_coalesce
                    .get(cq.vector as usize)
                    .copied()
                    .unwrap_or(true)
            });
            drop(f);
            if let Some((thr, time_us)) = coalesce {
                let first = st.first_unsignalled.unwrap_or_else(Instant::now);
                let due = first + std::time::Duration::from_micros(time_us);
                if st.unsignalled < thr && Instant::now() < due {
                    return Some(due);
                }
            }
        }
        st.unsignalled = 0;
        st.first_unsignalled = None;
        drop(st);
        self.raise(cq.vector);
        None
    }

    /// Fetches and runs up to `budget` commands of `sq`. Returns how many ran.
    pub(crate) fn drain_sq(
        &self,
        sq: &Sq,
        budget: u32,
        sc: &mut Scratch,
        exec: &mut dyn FnMut(&Ctrl, &Sq, &Command, &mut Scratch) -> Outcome,
    ) -> u32 {
        let mut n = 0;
        let mut tail = self.sq_tail(sq);
        let mut head = sq.head.load(Ordering::Relaxed);
        while n < budget {
            if head == tail {
                tail = self.sq_tail(sq);
                if head == tail {
                    break;
                }
            }
            if !self.enabled.load(Ordering::Acquire) || sq.deleted.load(Ordering::Acquire) {
                break;
            }
            let cq = &sq.cq;
            if !self.cq_has_room(cq) {
                cq.want_space.store(true, Ordering::SeqCst);
                self.arm_cq_event(cq);
                // Re-check after announcing the wait (the host may have
                // consumed entries in between).
                if !self.cq_has_room(cq) {
                    break;
                }
            }
            cq.want_space.store(false, Ordering::Relaxed);
            let mut raw = [0u8; spec::SQE_SIZE];
            let addr = sq.base + u64::from(head) * spec::SQE_SIZE as u64;
            if self.mem.read(addr, &mut raw).is_err() {
                self.fatal(&format!("cannot fetch SQ {} entry at {addr:#x}", sq.qid));
                break;
            }
            let cmd = Command::parse(&raw);
            head = (head + 1) % sq.size;
            sq.head.store(head, Ordering::Release);
            sc.err_lba = 0;
            let out = if sq.take_abort(cmd.cid) {
                Outcome::from(Status::ABORT_REQUESTED)
            } else {
                exec(self, sq, &cmd, sc)
            };
            if sq.qid == 0 {
                debug!(
                    "admin command {:#04x} CID {} NSID {:#x} CDW10 {:#x} CDW11 {:#x}: {:?}",
                    cmd.opcode,
                    cmd.cid,
                    cmd.nsid,
                    cmd.cdw10(),
                    cmd.cdw11(),
                    out
                );
            }
            n += 1;
            if let Outcome::Done { status, dw0 } = out {
                if !status.is_success() {
                    debug!(
                        "SQ {} CID {} opcode {:#04x} failed: {status}",
                        sq.qid, cmd.cid, cmd.opcode
                    );
                    self.record_error(sq.qid, &cmd, status, sc.err_lba);
                }
                let c = Completion {
                    dw0,
                    dw1: 0,
                    sq_head: head as u16,
                    sq_id: sq.qid,
                    cid: cmd.cid,
                    status: status.0,
                };
                if !self.post(cq, c) {
                    break;
                }
                sq.completed.fetch_add(1, Ordering::Relaxed);
            }
        }
        n
    }

    /// With shadow doorbells: ask the host to ring the CQ head doorbell on
    /// its next update (we are waiting for room).
    fn arm_cq_event(&self, cq: &Cq) {
        let Some((_, ei)) = self.shadow_slot(cq.qid, true) else {
            return;
        };
        let head = lock(&cq.st).head;
        let _ = self.mem.write_u32(ei, head);
        self.eff.eventidx_writes.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// With shadow doorbells: before idling, ask the host to ring the SQ
    /// doorbell for its next submission. Returns true if work arrived
    /// meanwhile.
    pub(crate) fn arm_sq_events(&self, sqs: &[Arc<Sq>]) -> bool {
        let eis = self.dbbuf_eis.load(Ordering::Acquire);
        if eis == 0 {
            return false;
        }
        let mut work = false;
        for sq in sqs.iter().filter(|s| !s.deleted.load(Ordering::Acquire)) {
            if let Some((_, ei)) = self.shadow_slot(sq.qid, false) {
                let head = sq.head.load(Ordering::Relaxed);
                let _ = self.mem.write_u32(ei, head);
                self.eff.eventidx_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        fence(Ordering::SeqCst);
        for sq in sqs
            .iter()
            .filter(|s| s.qid != 0 && !s.deleted.load(Ordering::Acquire))
        {
            if self.sq_tail(sq) != sq.head.load(Ordering::Relaxed) {
                work = true;
            }
        }
        work
    }

    /// One round of an I/O worker. Returns (commands run, next deadline).
    pub(crate) fn io_round(
        &self,
        w: usize,
        snap: &mut Snapshot,
        sc: &mut Scratch,
        arm: bool,
    ) -> (u32, Option<Instant>, bool) {
        let _busy = lock(&self.io[w].busy);
        if !self.enabled.load(Ordering::Acquire) {
            snap.clear();
            return (0, None, false);
        }
        snap.refresh(self, w);
        let mut did = 0;
        for sq in &snap.sqs {
            if sq.deleted.load(Ordering::Acquire) {
                continue;
            }
            did += self.drain_sq(sq, BUDGET, sc, &mut |c, sq, cmd, sc| c.exec_io(sq, cmd, sc));
        }
        let mut deadline: Option<Instant> = None;
        let mut host_moved = false;
        let shadow = self.shadow_active();
        for cq in &snap.cqs {
            if cq.deleted.load(Ordering::Acquire) {
                continue;
            }
            if let Some(d) = self.signal(cq) {
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
            if shadow {
                // The host consuming completions means more submissions
                // are likely to follow soon.
                let mut st = lock(&cq.st);
                let h = self.cq_head(cq, &st);
                host_moved |= h != st.head;
                st.head = h;
            }
        }
        if did == 0 && arm && self.arm_sq_events(&snap.sqs) {
            did = 1; // work arrived while arming: go round again
        }
        (did, deadline, host_moved)
    }

    /// Whether shadow doorbells are configured.
    pub(crate) fn shadow_active(&self) -> bool {
        self.dbbuf_eis.load(Ordering::Relaxed) != 0
    }

    /// One round of the admin thread. Returns commands run.
    pub(crate) fn admin_round(&self, sc: &mut Scratch) -> u32 {
        let _busy = lock(&self.admin.busy);
        self.apply_pending();
        if !self.enabled.load(Ordering::Acquire) {
            return 0;
        }
        let sq = {
            let q = self.queues.read().unwrap_or_else(|p| p.into_inner());
            q.sqs.first().cloned().flatten()
        };
        let Some(sq) = sq else { return 0 };
        let n = self.drain_sq(&sq, BUDGET, sc, &mut |c, _sq, cmd, sc| {
            c.exec_admin(cmd, sc)
        });
        self.deliver_events(&sq.cq);
        self.signal(&sq.cq);
        n
    }

    /// Completes outstanding AERs with pending events.
    fn deliver_events(&self, cq: &Cq) {
        loop {
            if !self.enabled.load(Ordering::Acquire) {
                return;
            }
            if !self.cq_has_room(cq) {
                // The CQ head doorbell wakes the admin thread again.
                cq.want_space.store(true, Ordering::SeqCst);
                return;
            }
            let Some((cid, ev)) = lock(&self.aer).next_ready() else {
                return;
            };
            info!(
                "asynchronous event: type {} info {:#04x} (log page {:#04x}) to AER CID {cid}",
                ev.kind, ev.info, ev.log
            );
            let c = Completion {
                dw0: ev.dw0(),
                dw1: 0,
                sq_head: 0,
                sq_id: 0,
                cid,
                status: 0,
            };
            // SQHD: report the admin SQ's current head.
            let c = Completion {
                sq_head: self
                    .queues
                    .read()
                    .ok()
                    .and_then(|q| q.sqs.first().cloned().flatten())
                    .map_or(0, |s| s.head.load(Ordering::Relaxed) as u16),
                ..c
            };
            if !self.post(cq, c) {
                return;
            }
        }
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
                self.page_size.load(Ordering::Relaxed),
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

    /// Reads `len` bytes of an admin command's host buffer into `sc.buf`.
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

/// A worker's view of its queues, refreshed when the table changes.
#[derive(Debug, Default)]
pub struct Snapshot {
    gen: u64,
    pub(crate) sqs: Vec<Arc<Sq>>,
    pub(crate) cqs: Vec<Arc<Cq>>,
}

impl Snapshot {
    fn clear(&mut self) {
        self.sqs.clear();
        self.cqs.clear();
        self.gen = u64::MAX;
    }

    fn refresh(&mut self, c: &Ctrl, w: usize) {
        let g = c.qgen.load(Ordering::Acquire);
        if g == self.gen {
            return;
        }
        let q = c.queues.read().unwrap_or_else(|p| p.into_inner());
        self.sqs = q
            .sqs
            .iter()
            .flatten()
            .filter(|s| s.worker == w)
            .cloned()
            .collect();
        self.cqs = q
            .cqs
            .iter()
            .flatten()
            .filter(|s| s.worker == w)
            .cloned()
            .collect();
        self.gen = g;
    }
}
