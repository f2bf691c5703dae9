//! The controller's threads: the admin thread (CC changes, the admin queue,
//! asynchronous events) and the I/O workers (their I/O queue pairs), each
//! sleeping when idle, polling where the doorbell mode asks for it.

use super::ctrl::{lock, Ctrl, Scratch};
use super::options::DoorbellMode;
use super::queue::{Cq, Executor, Outcome, Snapshot, Sq};
use super::spec::{Command, Completion, Status};
use log::info;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a polling thread keeps spinning after its last work.
const POLL_SPIN: Duration = Duration::from_millis(2);
/// How long a polling thread sleeps between looks once idle.
const POLL_IDLE_SLEEP: Duration = Duration::from_micros(200);
/// How often a worker looks at the shadow doorbells while the host is active.
const SHADOW_POLL_INTERVAL: Duration = Duration::from_micros(25);

/// Runs the commands a queue fetches: admin or NVM I/O commands.
struct Exec<'a> {
    ctrl: &'a Ctrl,
    sc: &'a mut Scratch,
    run: fn(&Ctrl, &Command, &mut Scratch) -> Outcome,
}

impl Executor for Exec<'_> {
    fn exec(&mut self, _sq: &Sq, cmd: &Command) -> Outcome {
        self.sc.err_lba = 0;
        (self.run)(self.ctrl, cmd, self.sc)
    }

    fn failed(&mut self, sq: &Sq, cmd: &Command, status: Status) {
        self.ctrl.record_error(sq.qid, cmd, status, self.sc.err_lba);
    }
}

fn idle_wait(poll: bool, idle_since: Instant, deadline: Option<Instant>) {
    let now = Instant::now();
    let until_deadline = deadline.map(|d| d.saturating_duration_since(now));
    if poll {
        if now.duration_since(idle_since) < POLL_SPIN {
            std::thread::yield_now();
        } else {
            let d = until_deadline.map_or(POLL_IDLE_SLEEP, |d| d.min(POLL_IDLE_SLEEP));
            std::thread::park_timeout(d);
        }
    } else {
        match until_deadline {
            Some(d) => std::thread::park_timeout(d),
            None => std::thread::park(),
        }
    }
}

/// The admin thread's loop.
pub(crate) fn admin_thread(c: &Ctrl) {
    let mut sc = Scratch::default();
    let poll = c.cfg.doorbells == DoorbellMode::Poll;
    let mut idle_since = Instant::now();
    while !c.stop.load(Ordering::SeqCst) {
        let n = admin_round(c, &mut sc);
        if n > 0 {
            idle_since = Instant::now();
            continue;
        }
        // A polled admin queue is looked at less eagerly than I/O queues.
        idle_wait(
            poll,
            idle_since.checked_sub(POLL_SPIN).unwrap_or(idle_since),
            None,
        );
    }
}

/// One round of the admin thread: pending CC changes, the admin queue,
/// asynchronous events. Returns commands run.
pub(crate) fn admin_round(c: &Ctrl, sc: &mut Scratch) -> u32 {
    let _busy = c.queues.workers.admin.hold();
    c.apply_pending();
    if !c.queues.live() {
        return 0;
    }
    let mut exec = Exec {
        ctrl: c,
        sc,
        run: Ctrl::exec_admin_controlled,
    };
    let n = c.queues.drain_admin(&mut exec, c);
    if let Some(cq) = c.queues.cq(0) {
        deliver_events(c, &cq);
        c.queues.signal(&cq);
    }
    n
}

/// Completes outstanding Asynchronous Event Requests with pending events.
fn deliver_events(c: &Ctrl, cq: &Cq) {
    loop {
        if !c.queues.live() {
            return;
        }
        if !c.queues.cq_room_for(cq, 1, c) {
            // The CQ head doorbell wakes the admin thread again.
            cq.want_space.store(true, Ordering::SeqCst);
            return;
        }
        let Some((cid, ev)) = lock(&c.aer).next_ready() else {
            return;
        };
        info!(
            "asynchronous event: type {} info {:#04x} (log page {:#04x}) to AER CID {cid}",
            ev.kind, ev.info, ev.log
        );
        let c2 = Completion {
            dw0: ev.dw0(),
            dw1: 0,
            // SQHD: the admin SQ's current head.
            sq_head: c
                .queues
                .sq(0)
                .map_or(0, |s| s.head.load(Ordering::Relaxed) as u16),
            sq_id: 0,
            cid,
            status: 0,
        };
        if !c.queues.post(cq, c2, c) {
            return;
        }
    }
}

/// The loop of I/O worker `w`.
pub(crate) fn io_thread(c: &Ctrl, w: usize) {
    // Short sleeps (the shadow-buffer and doorbell-page polls) should be
    // short: the default 50 µs timer slack would triple them.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let mut sc = Scratch::default();
    let mut snap = Snapshot::default();
    let poll = c.cfg.doorbells == DoorbellMode::Poll;
    let window = Duration::from_micros(c.cfg.shadow_poll_us);
    let mut idle_since = Instant::now();
    let mut active_at = Instant::now();
    while !c.stop.load(Ordering::SeqCst) {
        // With shadow doorbells, a worker that ran out of work keeps
        // watching the shadow buffer while the host is active (it posted
        // completions or consumed some within the window) before it
        // publishes its event indexes (asking the host to ring again) and
        // sleeps: submissions that follow completions then cost no doorbell
        // write, at the price of a worker waking every SHADOW_POLL_INTERVAL.
        let shadow = c.queues.doorbells.shadow_active();
        let arm = !shadow || active_at.elapsed() >= window;
        let (n, deadline, host_moved) = c.queues.io_round(
            w,
            &mut snap,
            &mut Exec {
                ctrl: c,
                sc: &mut sc,
                run: Ctrl::exec_io_controlled,
            },
            c,
            arm,
        );
        if n > 0 || host_moved {
            active_at = Instant::now();
        }
        if n > 0 {
            idle_since = Instant::now();
            continue;
        }
        if !arm {
            let d = deadline.map_or(SHADOW_POLL_INTERVAL, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SHADOW_POLL_INTERVAL)
            });
            std::thread::park_timeout(d);
            continue;
        }
        idle_wait(poll, idle_since, deadline);
    }
}
