//! Doorbells: how the host tells the controller about new submissions and
//! consumed completions. Three ways, per queue:
//!
//! - trapped: each doorbell write is a (posted) register write that lands
//!   in [`Sq::tail_db`] / [`Cq::head_db`];
//! - shadow (Doorbell Buffer Config, I/O queues only): the host writes the
//!   values into a page of its memory and rings only when the controller's
//!   event index asks it to;
//! - polled page (`--doorbells poll`): BAR0's doorbell page is shared with
//!   the client and workers read it.
//!
//! Values read from host-controlled places are validated; a bad one is
//! reported once per queue and ignored.

use super::ring::{head_move_ok, Cq, CqState, Sq};
use super::{lock, QueueEvents, Queues};
use crate::nvme::spec::reg;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use vfio_user_server::pci::SharedMemory;

/// A doorbell the host must not have written.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DoorbellError {
    /// A doorbell of a queue that does not exist.
    #[error("doorbell write to {} {qid}, which does not exist", if *.cq { "CQ" } else { "SQ" })]
    NoSuchQueue {
        /// Queue ID.
        qid: u16,
        /// A completion queue head doorbell.
        cq: bool,
    },
    /// A tail past the queue's size, or a head that frees entries the
    /// controller has not posted.
    #[error("invalid {} {qid} {} {value} (size {size})", if *.cq { "CQ" } else { "SQ" }, if *.cq { "head" } else { "tail" })]
    InvalidValue {
        /// Queue ID.
        qid: u16,
        /// A completion queue head doorbell.
        cq: bool,
        /// The value.
        value: u32,
        /// The queue's size.
        size: u32,
    },
}

/// Where the doorbells of a controller are.
#[derive(Debug)]
pub struct Doorbells {
    /// Doorbell stride in bytes (4 << CAP.DSTRD).
    stride: u64,
    /// The mmapped doorbell page (poll mode): the whole BAR0 image.
    page: Option<SharedMemory>,
    /// Shadow doorbell buffer (0 = not configured).
    shadow: AtomicU64,
    /// Event index buffer.
    event_idx: AtomicU64,
}

impl Doorbells {
    /// Doorbells with stride `4 << dstrd`; `page` is the polled BAR0 image.
    pub fn new(dstrd: u8, page: Option<SharedMemory>) -> Doorbells {
        Doorbells {
            stride: 4 << dstrd,
            page,
            shadow: AtomicU64::new(0),
            event_idx: AtomicU64::new(0),
        }
    }

    /// Offset of queue `qid`'s SQ tail (or CQ head) doorbell from 0x1000,
    /// which is also its offset in the shadow doorbell buffer.
    pub fn offset(&self, qid: u16, cq: bool) -> u64 {
        (2 * u64::from(qid) + u64::from(cq)) * self.stride
    }

    /// The queue a doorbell at `rel` bytes past 0x1000 belongs to: (qid, cq).
    fn decode(&self, rel: u64) -> Option<(u16, bool)> {
        if rel % self.stride != 0 {
            return None;
        }
        let idx = rel / self.stride;
        u16::try_from(idx / 2).ok().map(|qid| (qid, idx % 2 == 1))
    }

    /// The polled doorbell page, if doorbells are polled.
    pub fn page(&self) -> Option<&SharedMemory> {
        self.page.as_ref()
    }

    fn page_value(&self, qid: u16, cq: bool) -> Option<u32> {
        let page = self.page.as_ref()?;
        Some(
            page.read_u32((reg::DOORBELLS + self.offset(qid, cq)) as usize)
                .unwrap_or(0),
        )
    }

    /// Zeroes the polled page's doorbells (from `from` bytes into BAR0).
    fn clear_page(&self, from: u64) {
        if let Some(page) = &self.page {
            let zero = vec![0u8; page.len().saturating_sub(from as usize)];
            page.write(from as usize, &zero);
        }
    }

    /// Whether shadow doorbells are configured.
    pub fn shadow_active(&self) -> bool {
        self.event_idx.load(Ordering::Relaxed) != 0
    }
}

impl Queues {
    /// A trapped doorbell write at `rel` bytes past 0x1000 (the controller
    /// is ready). Wakes the queue's worker; a write the host must not make
    /// is ignored and returned.
    pub fn write_doorbell(&self, rel: u64, value: u32) -> Result<(), DoorbellError> {
        self.eff.doorbell_writes.fetch_add(1, Ordering::Relaxed);
        let Some((qid, is_cq)) = self.doorbells.decode(rel) else {
            return Ok(()); // between doorbells (a stride above 4): ignored
        };
        let t = self.table();
        if let Some(page) = self.doorbells.page() {
            // Poll mode: the page is the doorbell (the worker validates what
            // it reads there); a trapped write just lands in it.
            page.write((reg::DOORBELLS + rel) as usize, &value.to_le_bytes());
            let w = if is_cq {
                t.cqs
                    .get(usize::from(qid))
                    .cloned()
                    .flatten()
                    .map(|c| c.worker)
            } else {
                t.sqs
                    .get(usize::from(qid))
                    .cloned()
                    .flatten()
                    .map(|s| s.worker)
            };
            drop(t);
            if let Some(w) = w {
                self.workers.wake(w);
            }
            return Ok(());
        }
        let missing = DoorbellError::NoSuchQueue { qid, cq: is_cq };
        if is_cq {
            let cq = t
                .cqs
                .get(usize::from(qid))
                .cloned()
                .flatten()
                .ok_or(missing)?;
            drop(t);
            if !cq.trapped_head_ok(value) {
                return Err(DoorbellError::InvalidValue {
                    qid,
                    cq: true,
                    value,
                    size: cq.size,
                });
            }
            cq.head_db.store(value, Ordering::Release);
            if cq.want_space.load(Ordering::Acquire) {
                self.workers.wake(cq.worker);
            }
            if self.irq.intx() {
                self.update_intx();
            }
        } else {
            let sq = t
                .sqs
                .get(usize::from(qid))
                .cloned()
                .flatten()
                .ok_or(missing)?;
            drop(t);
            if value >= sq.size {
                return Err(DoorbellError::InvalidValue {
                    qid,
                    cq: false,
                    value,
                    size: sq.size,
                });
            }
            sq.tail_db.store(value, Ordering::Release);
            self.workers.wake(sq.worker);
        }
        Ok(())
    }

    /// INTx is level-triggered: it stays asserted while any completion queue
    /// with interrupts enabled holds entries the host has not consumed.
    fn update_intx(&self) {
        let pending = self
            .table()
            .cqs
            .iter()
            .flatten()
            .any(|cq| cq.has_unconsumed());
        if !pending {
            self.irq.deassert_intx();
        }
    }

    /// Addresses of queue `qid`'s slots in the shadow doorbell and event
    /// index buffers, when shadow doorbells apply to it: configured, an I/O
    /// queue (Linux keeps ringing the admin doorbells), and inside the
    /// buffers' one memory page.
    pub(crate) fn shadow_slot(&self, qid: u16, cq: bool) -> Option<(u64, u64)> {
        let dbs = self.doorbells.shadow.load(Ordering::Acquire);
        let eis = self.doorbells.event_idx.load(Ordering::Acquire);
        let off = self.doorbells.offset(qid, cq);
        if qid == 0 || dbs == 0 || eis == 0 || off + 4 > self.page_size() {
            return None;
        }
        Some((dbs + off, eis + off))
    }

    /// The value the host published for a doorbell in the shadow buffer or
    /// the polled page; None when only the trapped doorbell (`trapped`)
    /// counts.
    fn published(&self, qid: u16, cq: bool, trapped: &AtomicU32) -> Option<u32> {
        if let Some((db, _)) = self.shadow_slot(qid, cq) {
            fence(Ordering::SeqCst);
            return Some(
                self.mem
                    .read_u32(db)
                    .unwrap_or_else(|_| trapped.load(Ordering::Acquire)),
            );
        }
        self.doorbells.page_value(qid, cq)
    }

    /// Current SQ tail as the host published it (shadow buffer, polled page
    /// or trapped doorbell), validated: an invalid value is reported once
    /// and ignored.
    pub(crate) fn sq_tail(&self, sq: &Sq, ev: &dyn QueueEvents) -> u32 {
        let Some(v) = self.published(sq.qid, false, &sq.tail_db) else {
            return sq.tail_db.load(Ordering::Acquire);
        };
        if v >= sq.size {
            if !sq.bad_db.swap(true, Ordering::SeqCst) {
                ev.doorbell_error(DoorbellError::InvalidValue {
                    qid: sq.qid,
                    cq: false,
                    value: v,
                    size: sq.size,
                });
            }
            return sq.head.load(Ordering::Relaxed);
        }
        v
    }

    /// Current CQ head as the host published it, validated against what
    /// was posted (`st`).
    pub(crate) fn cq_head(&self, cq: &Cq, st: &CqState, ev: &dyn QueueEvents) -> u32 {
        let Some(v) = self.published(cq.qid, true, &cq.head_db) else {
            return cq.head_db.load(Ordering::Acquire);
        };
        if !head_move_ok(cq.size, st.tail, st.head, v) {
            if !cq.bad_db.swap(true, Ordering::SeqCst) {
                ev.doorbell_error(DoorbellError::InvalidValue {
                    qid: cq.qid,
                    cq: true,
                    value: v,
                    size: cq.size,
                });
            }
            return st.head;
        }
        v
    }

    /// With shadow doorbells: ask the host to ring the CQ head doorbell on
    /// its next update (we are waiting for room).
    pub(crate) fn arm_cq_event(&self, cq: &Cq) {
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
    pub(crate) fn arm_sq_events(&self, sqs: &[Arc<Sq>], ev: &dyn QueueEvents) -> bool {
        if !self.doorbells.shadow_active() {
            return false;
        }
        for sq in sqs.iter().filter(|s| !s.deleted.load(Ordering::Acquire)) {
            if let Some((_, ei)) = self.shadow_slot(sq.qid, false) {
                let head = sq.head.load(Ordering::Relaxed);
                let _ = self.mem.write_u32(ei, head);
                self.eff.eventidx_writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        fence(Ordering::SeqCst);
        sqs.iter()
            .filter(|s| s.qid != 0 && !s.deleted.load(Ordering::Acquire))
            .any(|sq| self.sq_tail(sq, ev) != sq.head.load(Ordering::Relaxed))
    }

    /// A new queue's doorbell reads 0 (polled page and shadow buffer).
    pub(crate) fn reset_doorbell(&self, qid: u16, cq: bool) {
        let off = self.doorbells.offset(qid, cq);
        if let Some(page) = self.doorbells.page() {
            page.write((reg::DOORBELLS + off) as usize, &[0; 4]);
        }
        if let Some((db, ei)) = self.shadow_slot(qid, cq) {
            let _ = self.mem.write_u32(db, 0);
            let _ = self.mem.write_u32(ei, 0);
        }
    }

    /// Bytes of shadow buffer the host's queues can use: every doorbell up
    /// to the last CQ's, within one memory page.
    pub fn shadow_len(&self) -> u64 {
        (self.doorbells.offset(self.max_queues, true) + 4).min(self.page_size())
    }

    /// Doorbell Buffer Config: from now on the I/O queues' doorbells live
    /// at `dbs` (shadow doorbells) and `eis` (event indexes), seeded with
    /// the values the host last wrote to the trapped doorbells (queues
    /// whose slots fall outside the page keep trapped doorbells).
    pub fn enable_shadow(&self, dbs: u64, eis: u64) {
        let page = self.page_size();
        let in_page = |off: u64| off + 4 <= page;
        {
            let t = self.table();
            let seeds = t
                .sqs
                .iter()
                .flatten()
                .filter(|s| s.qid != 0)
                .map(|s| (s.qid, false, s.tail_db.load(Ordering::Acquire)))
                .chain(
                    t.cqs
                        .iter()
                        .flatten()
                        .filter(|c| c.qid != 0)
                        .map(|c| (c.qid, true, c.head_db.load(Ordering::Acquire))),
                );
            for (qid, cq, v) in seeds {
                let off = self.doorbells.offset(qid, cq);
                if in_page(off) {
                    let _ = self.mem.write_u32(dbs + off, v);
                    let _ = self.mem.write_u32(eis + off, v);
                }
            }
        }
        self.doorbells.event_idx.store(eis, Ordering::SeqCst);
        self.doorbells.shadow.store(dbs, Ordering::SeqCst);
        // Workers re-read their queues through the buffer now.
        self.workers.wake_io();
    }

    /// Shadow doorbells off (controller reset).
    pub(crate) fn disable_shadow(&self) {
        self.doorbells.shadow.store(0, Ordering::SeqCst);
        self.doorbells.event_idx.store(0, Ordering::SeqCst);
    }

    /// Polled doorbells read 0 for new queues; `all` also clears the
    /// registers' image (a function reset).
    pub(crate) fn clear_doorbell_page(&self, all: bool) {
        self.doorbells
            .clear_page(if all { 0 } else { reg::DOORBELLS });
    }
}
