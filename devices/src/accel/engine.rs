//! The accelerator's workers: each serves a fixed set of queues (queue `q`
//! on worker `q % workers`), fetching descriptors from the rings in client
//! memory, executing them and writing completion records, in ring order.
//! A doorbell (TAIL write) unparks the queue's worker; an idle worker parks.
//!
//! Resets: a queue reset (CTRL.RESET) is carried out by the queue's worker
//! between descriptors (a descriptor waiting for a page response is
//! cancelled and completes ABORTED); a device reset ([`Engine::reset`])
//! cancels waits and messages in flight and then takes every worker's busy
//! lock, so no worker touches client memory once it returns.

use super::desc::{
    flags, status, Completion, Descriptor, COMPLETION_ALIGN, COMPLETION_SIZE, DESC_SIZE,
};
use super::exec::{self, Limits, Scratch};
use super::regs::{ctrl, qerr, qpasid, RING_ALIGN};
use super::state::{Counters, QueueRegs};
use log::{debug, warn};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use vfio_user_server::dma::{DmaFault, DmaSpace};
use vfio_user_server::protocol::pasid::PasidTag;
use vfio_user_server::DeviceContext;

/// Descriptors fetched with one ring read.
const FETCH_BATCH: usize = 32;
/// Descriptors a worker takes from one queue before looking at the others.
const QUEUE_BUDGET: usize = 256;
/// How long an idle worker sleeps before looking again unprompted.
const IDLE_PARK: Duration = Duration::from_millis(100);
/// How long a worker that just ran out of work keeps looking before it
/// parks: a driver refilling the ring does not pay a thread wake-up.
const IDLE_SPIN: Duration = Duration::from_micros(50);

/// One worker's slot: held while it works, and its thread to wake.
#[derive(Debug, Default)]
struct Slot {
    busy: Mutex<()>,
    thread: OnceLock<Thread>,
}

/// State shared by the device (connection thread) and its workers.
#[derive(Debug)]
pub struct Engine {
    /// The queues' registers.
    pub queues: Vec<QueueRegs>,
    /// Device-wide counters.
    pub counters: Counters,
    /// Client memory and interrupts.
    pub ctx: DeviceContext,
    /// Per-descriptor limits.
    pub limits: Limits,
    /// Moves on every device reset.
    generation: AtomicU64,
    stop: AtomicBool,
    slots: Vec<Slot>,
}

impl Engine {
    /// An engine for `queues` queues served by `workers` workers.
    pub fn new(ctx: DeviceContext, queues: usize, workers: usize, limits: Limits) -> Arc<Engine> {
        Arc::new(Engine {
            queues: (0..queues).map(|_| QueueRegs::default()).collect(),
            counters: Counters::default(),
            ctx,
            limits,
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            slots: (0..workers.clamp(1, queues.max(1)))
                .map(|_| Slot::default())
                .collect(),
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    /// Starts the workers.
    pub fn start(self: &Arc<Self>) -> std::io::Result<Vec<JoinHandle<()>>> {
        let mut handles = Vec::new();
        for w in 0..self.slots.len() {
            let e = Arc::clone(self);
            let h = std::thread::Builder::new()
                .name(format!("accel-w{w}"))
                .spawn(move || e.worker(w))?;
            let _ = self.slots[w].thread.set(h.thread().clone());
            handles.push(h);
        }
        Ok(handles)
    }

    /// Asks the workers to exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for s in &self.slots {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
    }

    /// Wakes the worker of queue `q` (a doorbell or a reset request).
    pub fn kick(&self, q: usize) {
        if let Some(t) = self.slots[q % self.slots.len()].thread.get() {
            t.unpark();
        }
    }

    /// Device reset: every queue back to its reset state; no worker touches
    /// client memory once this returns.
    pub fn reset(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for q in &self.queues {
            q.generation.fetch_add(1, Ordering::AcqRel);
        }
        let mut held: Vec<MutexGuard<'_, ()>> = Vec::new();
        for s in &self.slots {
            loop {
                // A worker may be waiting for a reply only this thread can
                // route, or for a page response: cancel (again) until its
                // lock is free.
                self.ctx.pasid.reset();
                match s.busy.try_lock() {
                    Ok(g) => break held.push(g),
                    Err(std::sync::TryLockError::Poisoned(p)) => break held.push(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                }
            }
        }
        for q in &self.queues {
            q.clear();
        }
        drop(held);
    }

    fn worker(&self, w: usize) {
        let mut scratch = Scratch::new(&self.limits);
        let mine: Vec<usize> = (0..self.queues.len())
            .filter(|q| q % self.slots.len() == w)
            .collect();
        let mut fetch = vec![0u8; FETCH_BATCH * DESC_SIZE];
        let mut idle_since: Option<std::time::Instant> = None;
        while !self.stop.load(Ordering::Acquire) {
            let mut worked = false;
            {
                let _busy = self.slots[w].busy.lock().unwrap_or_else(|p| p.into_inner());
                for &q in &mine {
                    worked |= self.service(q, &mut scratch, &mut fetch);
                }
            }
            if worked {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < IDLE_SPIN {
                std::hint::spin_loop();
                continue;
            }
            std::thread::park_timeout(IDLE_PARK);
            idle_since = None;
        }
    }

    /// The address space of queue `q`'s ring and completion records.
    fn ring_space(&self, regs: &QueueRegs) -> DmaSpace<'_> {
        if regs.ctrl.load(Ordering::Acquire) & ctrl::RING_PASID == 0 {
            return self.ctx.pasid.space(None);
        }
        let p = regs.pasid.load(Ordering::Acquire);
        self.ctx.pasid.space(Some(PasidTag {
            pasid: p & qpasid::PASID_MASK,
            privileged: p & qpasid::PRIV != 0,
            exec: false,
        }))
    }

    /// Serves queue `q` for a while; true if it did anything.
    fn service(&self, q: usize, scratch: &mut Scratch, fetch: &mut [u8]) -> bool {
        let regs = &self.queues[q];
        if regs.reset_pending.load(Ordering::Acquire) {
            debug!("queue {q}: reset");
            regs.clear();
            return true;
        }
        if !regs.runnable() {
            return false;
        }
        let gen = regs.generation.load(Ordering::Acquire);
        let dgen = self.generation.load(Ordering::Acquire);
        let cancel = || {
            regs.generation.load(Ordering::Acquire) != gen
                || self.generation.load(Ordering::Acquire) != dgen
                || self.stop.load(Ordering::Acquire)
        };
        let size = regs.size.load(Ordering::Acquire);
        let ring = regs.ring.load(Ordering::Acquire);
        let fits = ring
            .checked_add(u64::from(size) * DESC_SIZE as u64)
            .is_some();
        if size < 2 || !size.is_power_of_two() || ring % RING_ALIGN != 0 || !fits {
            // Cannot happen (checked at enable); never index with it.
            regs.halt(qerr::BAD_RING, 0, ring);
            return true;
        }
        let space = self.ring_space(regs);
        let mut head = regs.head.load(Ordering::Acquire);
        let mut done = 0usize;
        let mut irq = false;
        'ring: while done < QUEUE_BUDGET && !cancel() && regs.runnable() {
            let tail = regs.tail.load(Ordering::Acquire);
            if tail >= size {
                warn!("queue {q}: TAIL {tail} is outside the {size}-entry ring");
                regs.halt(qerr::TAIL_RANGE, tail, 0);
                irq = true;
                break;
            }
            if head == tail {
                break;
            }
            let avail = (tail + size - head) % size;
            let n = (avail.min(size - head) as usize).min(FETCH_BATCH);
            // The whole ring fits below 2^64 (checked at enable).
            let addr = ring.wrapping_add(u64::from(head) * DESC_SIZE as u64);
            let buf = &mut fetch[..n * DESC_SIZE];
            if let Err(f) = space.read(addr, buf) {
                let code = match f {
                    DmaFault::Pasid { .. } | DmaFault::NoPath(_) => qerr::RING_PASID,
                    _ => qerr::FETCH_FAULT,
                };
                warn!("queue {q}: cannot fetch descriptors at {addr:#x}: {f}");
                regs.halt(code, head, addr);
                irq = true;
                break;
            }
            for i in 0..n {
                if cancel() || !regs.runnable() {
                    break 'ring;
                }
                let mut raw = [0u8; DESC_SIZE];
                raw.copy_from_slice(&buf[i * DESC_SIZE..(i + 1) * DESC_SIZE]);
                let d = Descriptor::decode(&raw);
                let out =
                    exec::execute(&d, &self.ctx.pasid, &space, &self.limits, scratch, &cancel);
                self.complete(regs, head, &d, &out.completion, &space);
                let c = &self.counters;
                c.descriptors.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(out.bytes, Ordering::Relaxed);
                if out.completion.status != status::SUCCESS {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                head = (head + 1) % size;
                regs.head.store(head, Ordering::Release);
                regs.completed.fetch_add(1, Ordering::AcqRel);
                irq |= d.flags & flags::INTERRUPT != 0;
                done += 1;
            }
        }
        let c = regs.ctrl.load(Ordering::Acquire);
        if irq && c & ctrl::IRQ != 0 {
            let v = regs.vector.load(Ordering::Acquire);
            if !self.ctx.irqs.raise(v) {
                debug!("queue {q}: interrupt vector {v} has no eventfd");
            }
        }
        done > 0 || irq
    }

    /// Writes `c` for descriptor `d` (ring index `index`): every byte but
    /// the status first, the status last, so a poller that sees the status
    /// sees the whole record.
    fn complete(
        &self,
        regs: &QueueRegs,
        index: u32,
        d: &Descriptor,
        c: &Completion,
        space: &DmaSpace<'_>,
    ) {
        if c.status != status::SUCCESS {
            debug!(
                "descriptor {index} ({}) -> {} (fault at {:#x})",
                super::desc::opcode::name(d.opcode),
                status::name(c.status),
                c.fault_addr
            );
        }
        if d.flags & flags::COMPLETION == 0 {
            return;
        }
        if d.completion % COMPLETION_ALIGN != 0 || d.completion.checked_add(32).is_none() {
            regs.cr_fault(index, d.completion);
            return;
        }
        let rec = c.encode();
        let body = space.write(d.completion + 1, &rec[1..COMPLETION_SIZE]);
        std::sync::atomic::fence(Ordering::Release);
        let head = body.and_then(|_| space.write(d.completion, &rec[..1]));
        if let Err(f) = head {
            warn!(
                "completion record of descriptor {index} at {:#x}: {f}",
                d.completion
            );
            regs.cr_fault(index, d.completion);
        }
    }
}
