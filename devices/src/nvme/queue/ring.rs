//! Submission and completion queues: where they live in host memory, the
//! ring positions on both sides, the phase tag, and who owns them.

use super::lock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Worker index of the admin thread (it owns the admin queue pair).
pub const ADMIN: usize = usize::MAX;

/// Whether moving a completion queue head from `from` to `to` frees only
/// entries the controller posted (it has filled up to `tail`).
pub(crate) fn head_move_ok(size: u32, tail: u32, from: u32, to: u32) -> bool {
    if to >= size || from >= size || tail >= size {
        return false;
    }
    let posted = (tail + size - from) % size;
    let advance = (to + size - from) % size;
    advance <= posted
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

impl CqState {
    fn new() -> CqState {
        CqState {
            tail: 0,
            phase: true,
            head: 0,
            unsignalled: 0,
            first_unsignalled: None,
        }
    }

    /// Free slots in a queue of `size` entries (one always stays empty, so
    /// that a full queue is not mistaken for an empty one).
    pub(crate) fn free(&self, size: u32) -> u32 {
        (self.head + size - self.tail - 1) % size
    }
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

impl Cq {
    /// A completion queue with nothing posted yet.
    pub fn new(qid: u16, base: u64, size: u32, vector: u16, ien: bool, worker: usize) -> Cq {
        Cq {
            qid,
            base,
            size,
            vector,
            ien,
            worker,
            head_db: AtomicU32::new(0),
            st: Mutex::new(CqState::new()),
            want_space: AtomicBool::new(false),
            sqs: AtomicU32::new(0),
            deleted: AtomicBool::new(false),
            bad_db: AtomicBool::new(false),
        }
    }

    /// Whether the host moving the trapped head doorbell to `value` frees
    /// only posted entries.
    pub(crate) fn trapped_head_ok(&self, value: u32) -> bool {
        let st = lock(&self.st);
        head_move_ok(
            self.size,
            st.tail,
            self.head_db.load(Ordering::Acquire),
            value,
        )
    }

    /// Whether entries are posted that the host has not consumed (by its
    /// trapped doorbell): what keeps INTx asserted.
    pub(crate) fn has_unconsumed(&self) -> bool {
        self.ien && lock(&self.st).tail != self.head_db.load(Ordering::Acquire)
    }
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
    aborts: Mutex<Vec<u16>>,
    /// `aborts` is not empty.
    abort_pending: AtomicBool,
}

/// Most aborts a submission queue remembers at once.
const MAX_ABORTS: usize = 64;

impl Sq {
    /// A submission queue (no commands yet) completing into `cq`, run by
    /// the CQ's worker.
    pub fn new(qid: u16, base: u64, size: u32, cq: Arc<Cq>) -> Sq {
        let worker = cq.worker;
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

    /// Remembers that command `cid` (submitted, not fetched) is to be
    /// aborted when it is fetched.
    pub(crate) fn mark_abort(&self, cid: u16) {
        let mut a = lock(&self.aborts);
        if a.len() < MAX_ABORTS && !a.contains(&cid) {
            a.push(cid);
        }
        self.abort_pending.store(true, Ordering::Release);
    }

    /// Whether the command `cid` just fetched was aborted (and forgets it).
    pub(crate) fn take_abort(&self, cid: u16) -> bool {
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
pub(crate) struct Table {
    /// Submission queues.
    pub sqs: Vec<Option<Arc<Sq>>>,
    /// Completion queues.
    pub cqs: Vec<Option<Arc<Cq>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_moves() {
        // 8 entries, 3 posted from 6: 6, 7, 0.
        assert!(head_move_ok(8, 1, 6, 6));
        assert!(head_move_ok(8, 1, 6, 0));
        assert!(head_move_ok(8, 1, 6, 1));
        assert!(!head_move_ok(8, 1, 6, 2), "past the tail");
        assert!(!head_move_ok(8, 1, 6, 5), "backwards");
        assert!(!head_move_ok(8, 1, 6, 8), "out of range");
        let st = CqState::new();
        assert_eq!(st.free(8), 7);
    }

    #[test]
    fn aborts_are_remembered_once() {
        let cq = Arc::new(Cq::new(1, 0x1000, 4, 1, true, 0));
        let sq = Sq::new(1, 0x2000, 4, cq);
        assert!(!sq.take_abort(7));
        sq.mark_abort(7);
        sq.mark_abort(7);
        assert!(!sq.take_abort(8));
        assert!(sq.take_abort(7));
        assert!(!sq.take_abort(7));
    }
}
