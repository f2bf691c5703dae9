//! Running queues: fetching submission queue entries, handing them to the
//! controller's [`Executor`], posting completions (phase tag last), and
//! signalling them, coalesced when the host asked for it.

use super::ring::{Cq, Sq};
use super::{lock, QueueError, QueueEvents, Queues, Snapshot};
use crate::nvme::spec::{self, Command, Completion, Status};
use log::{debug, warn};
use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

/// Commands one queue may run per round before the worker moves on.
const BUDGET: u32 = 64;

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
    /// Success with `dw0`.
    pub fn ok(dw0: u32) -> Outcome {
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

/// Runs the commands the queues fetch.
pub trait Executor {
    /// Runs `cmd`, fetched from `sq`.
    fn exec(&mut self, sq: &Sq, cmd: &Command) -> Outcome;
    /// `cmd` completed with a failure `status` (for the error log).
    fn failed(&mut self, sq: &Sq, cmd: &Command, status: Status);
}

impl Queues {
    /// Whether `cq` has room for `n` more entries (refreshing the head).
    pub fn cq_room_for(&self, cq: &Cq, n: u32, ev: &dyn QueueEvents) -> bool {
        let mut st = lock(&cq.st);
        if st.free(cq.size) >= n {
            return true;
        }
        let h = self.cq_head(cq, &st, ev);
        st.head = h;
        st.free(cq.size) >= n
    }

    /// Posts a completion entry; false if there is no room (callers check
    /// first) or the queue memory is gone (reported as fatal).
    pub fn post(&self, cq: &Cq, c: Completion, ev: &dyn QueueEvents) -> bool {
        let mut st = lock(&cq.st);
        if st.free(cq.size) == 0 {
            let h = self.cq_head(cq, &st, ev);
            st.head = h;
            if st.free(cq.size) == 0 {
                // Never overwrite an entry the host has not consumed.
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
            ev.fatal(QueueError::Post { qid: cq.qid, addr });
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
    pub fn signal(&self, cq: &Cq) -> Option<Instant> {
        let mut st = lock(&cq.st);
        if st.unsignalled == 0 {
            return None;
        }
        if cq.ien && cq.qid != 0 {
            let first = st.first_unsignalled.unwrap_or_else(Instant::now);
            if let Some(due) = self.irq.hold_until(cq.vector, st.unsignalled, first) {
                return Some(due);
            }
        }
        st.unsignalled = 0;
        st.first_unsignalled = None;
        drop(st);
        if cq.ien {
            self.irq.raise(cq.vector);
        }
        None
    }

    /// Fetches and runs up to `budget` commands of `sq`. Returns how many ran.
    pub fn drain(
        &self,
        sq: &Sq,
        budget: u32,
        exec: &mut dyn Executor,
        ev: &dyn QueueEvents,
    ) -> u32 {
        let mut n = 0;
        let mut tail = self.sq_tail(sq, ev);
        let mut head = sq.head.load(Ordering::Relaxed);
        while n < budget {
            if head == tail {
                tail = self.sq_tail(sq, ev);
                if head == tail {
                    break;
                }
            }
            if !self.live() || sq.deleted.load(Ordering::Acquire) {
                break;
            }
            let cq = &sq.cq;
            if !self.cq_room_for(cq, 1, ev) {
                cq.want_space.store(true, Ordering::SeqCst);
                self.arm_cq_event(cq);
                // Re-check after announcing the wait (the host may have
                // consumed entries in between).
                if !self.cq_room_for(cq, 1, ev) {
                    break;
                }
            }
            cq.want_space.store(false, Ordering::Relaxed);
            let mut raw = [0u8; spec::SQE_SIZE];
            let addr = sq.base + u64::from(head) * spec::SQE_SIZE as u64;
            if self.mem.read(addr, &mut raw).is_err() {
                ev.fatal(QueueError::Fetch { qid: sq.qid, addr });
                break;
            }
            let cmd = Command::parse(&raw);
            head = (head + 1) % sq.size;
            sq.head.store(head, Ordering::Release);
            let out = if sq.take_abort(cmd.cid) {
                Outcome::from(Status::ABORT_REQUESTED)
            } else {
                exec.exec(sq, &cmd)
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
                    exec.failed(sq, &cmd, status);
                }
                let c = Completion {
                    dw0,
                    dw1: 0,
                    sq_head: head as u16,
                    sq_id: sq.qid,
                    cid: cmd.cid,
                    status: status.0,
                };
                if !self.post(cq, c, ev) {
                    break;
                }
                sq.completed.fetch_add(1, Ordering::Relaxed);
            }
        }
        n
    }

    /// Drains the admin submission queue (admin thread).
    pub fn drain_admin(&self, exec: &mut dyn Executor, ev: &dyn QueueEvents) -> u32 {
        match self.sq(0) {
            Some(sq) if self.live() => self.drain(&sq, BUDGET, exec, ev),
            _ => 0,
        }
    }

    /// One round of I/O worker `w`: its submission queues drained (up to a
    /// budget each), its completion queues signalled; with shadow doorbells
    /// and `arm`, event indexes published before it idles. Returns
    /// (commands run, when to look again for held-back interrupts, whether
    /// the host consumed completions).
    pub fn io_round(
        &self,
        w: usize,
        snap: &mut Snapshot,
        exec: &mut dyn Executor,
        ev: &dyn QueueEvents,
        arm: bool,
    ) -> (u32, Option<Instant>, bool) {
        let _busy = self.workers.get(w).hold();
        if !self.live() {
            snap.clear();
            return (0, None, false);
        }
        snap.refresh(self, w);
        let mut did = 0;
        for sq in &snap.sqs {
            if sq.deleted.load(Ordering::Acquire) {
                continue;
            }
            did += self.drain(sq, BUDGET, exec, ev);
        }
        let mut deadline: Option<Instant> = None;
        let mut host_moved = false;
        let shadow = self.doorbells.shadow_active();
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
                let h = self.cq_head(cq, &st, ev);
                host_moved |= h != st.head;
                st.head = h;
            }
        }
        if did == 0 && arm && self.arm_sq_events(&snap.sqs, ev) {
            did = 1; // work arrived while arming: go round again
        }
        (did, deadline, host_moved)
    }
}
