//! Queue mechanics of the controller, apart from what commands mean: the
//! queue table, SQ/CQ ring state, doorbells (trapped, shadow, polled page),
//! fetching commands, posting completions, interrupts and their coalescing,
//! and the worker threads' ownership of queues.
//!
//! The controller ([`super::ctrl::Ctrl`]) owns a [`Queues`], hands it an
//! [`Executor`] to run what it fetches, and hears back through
//! [`QueueEvents`] (invalid doorbells, unreachable queue memory).
//!
//! Locking: each worker holds its `busy` mutex for a whole processing round
//! (every guest-memory access happens inside one). Anything that takes
//! queues away (controller disable, queue deletion, device reset) first
//! unpublishes them, then takes and releases the owning workers' `busy`
//! locks, so no worker still uses them afterwards. Lock order: admin busy,
//! then I/O busy; I/O workers never take the admin lock.

mod doorbell;
mod irq;
mod ring;
mod run;

pub use doorbell::{DoorbellError, Doorbells};
pub use irq::{Coalescing, Interrupter};
pub use ring::{Cq, CqState, Sq, ADMIN};
pub use run::{Executor, Outcome};

use ring::Table;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use std::thread::Thread;
use thiserror::Error;
use vfio_user_server::dma::GuestMemory;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the queues report to the controller that owns them.
pub trait QueueEvents {
    /// The host wrote a doorbell it must not have (reported as an
    /// asynchronous event).
    fn doorbell_error(&self, e: DoorbellError);
    /// Queue memory is unreachable: the controller cannot go on.
    fn fatal(&self, e: QueueError);
}

/// Queue failures.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    /// The queue ID is taken (or out of the table's range).
    #[error("queue ID {0} is in use or out of range")]
    QidTaken(u16),
    /// No such queue.
    #[error("queue {0} does not exist")]
    NoSuchQueue(u16),
    /// A completion queue still has submission queues.
    #[error("CQ {0} still has submission queues")]
    CqInUse(u16),
    /// A submission queue entry could not be read from host memory.
    #[error("cannot fetch SQ {qid} entry at {addr:#x}")]
    Fetch {
        /// Queue ID.
        qid: u16,
        /// Entry address.
        addr: u64,
    },
    /// A completion queue entry could not be written to host memory.
    #[error("cannot write CQ {qid} entry at {addr:#x}")]
    Post {
        /// Queue ID.
        qid: u16,
        /// Entry address.
        addr: u64,
    },
}

/// A thread the queues wake, and the lock it holds while working.
#[derive(Debug, Default)]
pub struct WorkerCtl {
    pub(crate) thread: OnceLock<Thread>,
    pub(crate) busy: Mutex<()>,
}

impl WorkerCtl {
    /// Wakes the thread.
    pub fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Waits until the worker is between rounds.
    pub fn quiesce(&self) {
        drop(lock(&self.busy));
    }

    /// Holds the worker between rounds while the guard lives.
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        lock(&self.busy)
    }
}

/// The admin thread and the I/O workers.
#[derive(Debug)]
pub struct Workers {
    /// The admin thread.
    pub admin: WorkerCtl,
    /// I/O workers; I/O queue pair `q` runs on worker `(q - 1) % len`.
    pub io: Vec<WorkerCtl>,
}

impl Workers {
    fn new(io: usize) -> Workers {
        Workers {
            admin: WorkerCtl::default(),
            io: (0..io.max(1)).map(|_| WorkerCtl::default()).collect(),
        }
    }

    /// Worker `w` ([`ADMIN`] or an I/O worker index).
    pub fn get(&self, w: usize) -> &WorkerCtl {
        if w == ADMIN {
            &self.admin
        } else {
            &self.io[w % self.io.len()]
        }
    }

    /// The worker I/O queue `qid` (1-based) belongs to.
    pub fn for_io_queue(&self, qid: u16) -> usize {
        usize::from(qid.saturating_sub(1)) % self.io.len()
    }

    /// Wakes worker `w`.
    pub fn wake(&self, w: usize) {
        self.get(w).wake();
    }

    /// Wakes every I/O worker.
    pub fn wake_io(&self) {
        for w in &self.io {
            w.wake();
        }
    }

    /// Waits until every I/O worker is between rounds.
    pub fn quiesce_io(&self) {
        for w in &self.io {
            w.quiesce();
        }
    }
}

/// Efficiency counters (for logs and benchmarks).
#[derive(Debug, Default)]
pub struct Efficiency {
    /// Trapped doorbell writes.
    pub doorbell_writes: AtomicU64,
    /// Commands completed.
    pub completions: AtomicU64,
    /// Event index updates written to host memory.
    pub eventidx_writes: AtomicU64,
}

/// The controller's queues.
#[derive(Debug)]
pub struct Queues {
    mem: Arc<GuestMemory>,
    table: RwLock<Table>,
    /// Bumped whenever the table changes.
    gen: AtomicU64,
    /// Queues are live (controller enabled and not fatally failed).
    live: AtomicBool,
    /// Memory page size selected by CC.MPS at enable.
    page_size: AtomicU64,
    max_queues: u16,
    /// Doorbell locations.
    pub doorbells: Doorbells,
    /// Interrupts.
    pub irq: Interrupter,
    /// Threads running the queues.
    pub workers: Workers,
    /// Counters.
    pub eff: Efficiency,
}

impl Queues {
    /// Queues over host memory `mem`: up to `max_queues` I/O queue pairs
    /// run by `workers` I/O threads.
    pub fn new(
        mem: Arc<GuestMemory>,
        max_queues: u16,
        workers: usize,
        doorbells: Doorbells,
        irq: Interrupter,
    ) -> Queues {
        Queues {
            mem,
            table: RwLock::new(Table::default()),
            gen: AtomicU64::new(0),
            live: AtomicBool::new(false),
            page_size: AtomicU64::new(4096),
            max_queues,
            doorbells,
            irq,
            workers: Workers::new(workers),
            eff: Efficiency::default(),
        }
    }

    fn table(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every live queue, for the control plane's state: submission queues
    /// (ID, size, its CQ, head, tail doorbell, commands completed, worker)
    /// and completion queues (ID, size, vector, interrupts enabled, head
    /// doorbell, tail, phase tag, SQs on it). No queue contents.
    pub(crate) fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        let t = self.table();
        let sq: Vec<serde_json::Value> = t
            .sqs
            .iter()
            .flatten()
            .filter(|s| !s.deleted.load(Ordering::Relaxed))
            .map(|s| {
                json!({
                    "qid": s.qid, "size": s.size, "cqid": s.cq.qid,
                    "base": format!("{:#x}", s.base),
                    "head": s.head.load(Ordering::Relaxed),
                    "tail": s.tail_db.load(Ordering::Relaxed),
                    "completed": s.completed.load(Ordering::Relaxed),
                    "worker": s.worker,
                })
            })
            .collect();
        let cq: Vec<serde_json::Value> = t
            .cqs
            .iter()
            .flatten()
            .filter(|c| !c.deleted.load(Ordering::Relaxed))
            .map(|c| {
                let st = c.st.lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "qid": c.qid, "size": c.size, "vector": c.vector, "ien": c.ien,
                    "base": format!("{:#x}", c.base),
                    "head": c.head_db.load(Ordering::Relaxed),
                    "tail": st.tail, "phase": st.phase,
                    "sqs": c.sqs.load(Ordering::Relaxed),
                    "worker": c.worker,
                })
            })
            .collect();
        json!({"sq": sq, "cq": cq})
    }

    /// Changes the table; workers see the change after [`Queues::publish`].
    fn edit<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(&mut self.table.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes table changes visible to the workers (they refresh their
    /// snapshots when the generation moves).
    fn publish(&self) {
        self.gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the queues are live.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Stops fetching commands (a fatal controller error).
    pub fn halt(&self) {
        self.live.store(false, Ordering::SeqCst);
    }

    /// The memory page size (CC.MPS) the queues and data pointers use.
    pub fn page_size(&self) -> u64 {
        self.page_size.load(Ordering::Relaxed)
    }

    /// Submission queue `qid`.
    pub fn sq(&self, qid: u16) -> Option<Arc<Sq>> {
        self.table().sqs.get(usize::from(qid)).cloned().flatten()
    }

    /// Completion queue `qid`.
    pub fn cq(&self, qid: u16) -> Option<Arc<Cq>> {
        self.table().cqs.get(usize::from(qid)).cloned().flatten()
    }

    /// Whether `len` bytes of queue memory at `base` are reachable.
    pub fn memory_ok(&self, base: u64, len: u64) -> bool {
        let mut b = [0u8; 1];
        let Some(last) = len.checked_sub(1).and_then(|l| base.checked_add(l)) else {
            return false;
        };
        self.mem.read(base, &mut b).is_ok() && self.mem.read(last, &mut b).is_ok()
    }

    /// Controller enable: a fresh table holding the admin queue pair, pages
    /// of `page_size` bytes, queues live.
    pub fn start(&self, page_size: u64, asq: u64, asqs: u32, acq: u64, acqs: u32) {
        self.page_size.store(page_size, Ordering::SeqCst);
        let cq = Arc::new(Cq::new(0, acq, acqs, 0, true, ADMIN));
        cq.sqs.store(1, Ordering::SeqCst);
        let sq = Arc::new(Sq::new(0, asq, asqs, Arc::clone(&cq)));
        // Doorbells start at 0 for every new queue.
        self.clear_doorbell_page(false);
        let n = usize::from(self.max_queues) + 1;
        self.edit(|t| {
            t.sqs = vec![None; n];
            t.cqs = vec![None; n];
            t.sqs[0] = Some(sq);
            t.cqs[0] = Some(cq);
        });
        self.publish();
        self.live.store(true, Ordering::SeqCst);
    }

    /// Controller reset: every queue goes (workers are between rounds when
    /// this returns), shadow doorbells and interrupt settings return to
    /// their defaults. Returns how many submission queues there were.
    pub fn stop(&self) -> usize {
        self.live.store(false, Ordering::SeqCst);
        self.disable_shadow();
        let n = self.edit(|t| {
            let n = t.sqs.iter().flatten().count();
            for sq in t.sqs.iter().flatten() {
                sq.deleted.store(true, Ordering::SeqCst);
            }
            for cq in t.cqs.iter().flatten() {
                cq.deleted.store(true, Ordering::SeqCst);
            }
            *t = Table::default();
            n
        });
        self.publish();
        self.workers.quiesce_io();
        self.irq.reset(false);
        n
    }

    /// Publishes an I/O completion queue.
    pub fn add_cq(&self, cq: Cq) -> Result<Arc<Cq>, QueueError> {
        let qid = cq.qid;
        let cq = Arc::new(cq);
        self.edit(|t| match t.cqs.get_mut(usize::from(qid)) {
            Some(slot @ None) if qid != 0 => {
                *slot = Some(Arc::clone(&cq));
                Ok(())
            }
            _ => Err(QueueError::QidTaken(qid)),
        })?;
        // The doorbell reads 0 before any worker sees the queue.
        self.reset_doorbell(qid, true);
        self.publish();
        Ok(cq)
    }

    /// Publishes an I/O submission queue completing into CQ `cqid`.
    pub fn add_sq(&self, qid: u16, base: u64, size: u32, cqid: u16) -> Result<Arc<Sq>, QueueError> {
        let sq = self.edit(|t| {
            let cq = match t.cqs.get(usize::from(cqid)) {
                Some(Some(cq)) if cqid != 0 => Arc::clone(cq),
                _ => return Err(QueueError::NoSuchQueue(cqid)),
            };
            match t.sqs.get_mut(usize::from(qid)) {
                Some(slot @ None) if qid != 0 => {
                    let sq = Arc::new(Sq::new(qid, base, size, Arc::clone(&cq)));
                    *slot = Some(Arc::clone(&sq));
                    cq.sqs.fetch_add(1, Ordering::SeqCst);
                    Ok(sq)
                }
                _ => Err(QueueError::QidTaken(qid)),
            }
        })?;
        self.reset_doorbell(qid, false);
        self.publish();
        Ok(sq)
    }

    /// Deletes I/O submission queue `qid`; its worker no longer uses it
    /// when this returns.
    pub fn remove_sq(&self, qid: u16) -> Result<Arc<Sq>, QueueError> {
        let sq = self
            .edit(|t| match t.sqs.get_mut(usize::from(qid)) {
                Some(slot) if qid != 0 => slot.take(),
                _ => None,
            })
            .ok_or(QueueError::NoSuchQueue(qid))?;
        sq.deleted.store(true, Ordering::SeqCst);
        self.publish();
        self.workers.get(sq.worker).quiesce();
        sq.cq.sqs.fetch_sub(1, Ordering::SeqCst);
        Ok(sq)
    }

    /// Deletes I/O completion queue `qid` (no submission queue may use it).
    pub fn remove_cq(&self, qid: u16) -> Result<Arc<Cq>, QueueError> {
        let cq = self.edit(|t| {
            let slot = match t.cqs.get_mut(usize::from(qid)) {
                Some(slot) if qid != 0 => slot,
                _ => return Err(QueueError::NoSuchQueue(qid)),
            };
            match slot {
                Some(cq) if cq.sqs.load(Ordering::SeqCst) > 0 => Err(QueueError::CqInUse(qid)),
                Some(_) => slot.take().ok_or(QueueError::NoSuchQueue(qid)),
                None => Err(QueueError::NoSuchQueue(qid)),
            }
        })?;
        cq.deleted.store(true, Ordering::SeqCst);
        self.publish();
        self.workers.get(cq.worker).quiesce();
        Ok(cq)
    }

    /// Marks command `cid` for abort if it sits in SQ `sqid` between the
    /// controller's head and the host's tail (submitted, not fetched).
    pub fn abort_queued(&self, sqid: u16, cid: u16, ev: &dyn QueueEvents) -> bool {
        let Some(sq) = self.sq(sqid) else {
            return false;
        };
        // Freeze the owning worker (the admin thread is the caller for SQ 0).
        let _busy = (sq.worker != ADMIN).then(|| self.workers.get(sq.worker).hold());
        if sq.deleted.load(Ordering::Acquire) {
            return false;
        }
        let head = sq.head.load(Ordering::Acquire);
        let tail = self.sq_tail(&sq, ev);
        let mut i = head;
        while i != tail {
            let mut b = [0u8; 4];
            let at = sq.base + u64::from(i) * crate::nvme::spec::SQE_SIZE as u64;
            if self.mem.read(at, &mut b).is_err() {
                return false;
            }
            if u16::from_le_bytes([b[2], b[3]]) == cid {
                sq.mark_abort(cid);
                return true;
            }
            i = (i + 1) % sq.size;
        }
        false
    }

    /// Vendor log page C0h (512 bytes): little-endian u64 counters since
    /// the server started: completions, trapped doorbell writes, interrupts
    /// raised, event-index updates; the rest is reserved (zero).
    pub fn efficiency_log(&self) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        for (i, v) in self.efficiency().iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// One line of efficiency counters.
    pub fn efficiency_line(&self) -> String {
        let [c, d, i, e] = self.efficiency();
        format!("{c} completions, {d} doorbell writes, {i} interrupts, {e} event-index updates")
    }

    /// Completions, trapped doorbell writes, interrupts, event-index updates.
    fn efficiency(&self) -> [u64; 4] {
        [
            self.eff.completions.load(Ordering::Relaxed),
            self.eff.doorbell_writes.load(Ordering::Relaxed),
            self.irq.raised.load(Ordering::Relaxed),
            self.eff.eventidx_writes.load(Ordering::Relaxed),
        ]
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

    fn refresh(&mut self, q: &Queues, w: usize) {
        let g = q.gen.load(Ordering::Acquire);
        if g == self.gen {
            return;
        }
        let t = q.table();
        self.sqs = t
            .sqs
            .iter()
            .flatten()
            .filter(|s| s.worker == w)
            .cloned()
            .collect();
        self.cqs = t
            .cqs
            .iter()
            .flatten()
            .filter(|s| s.worker == w)
            .cloned()
            .collect();
        self.gen = g;
    }
}
