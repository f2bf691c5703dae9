//! The loss phase of `trustdev-guest tdisp --expect-loss SECS`: verified
//! NVMe I/O in RUN on a thread while the host injects an IDE integrity
//! failure on the TDI's stream; the stream read INSECURE and the TDI ERROR,
//! STOP, the stream disabled, the I/O in flight waited for, then recovery
//! (new keys, SECURE, LOCK, report, START) and verified I/O again.

use super::*;

/// What the I/O thread of the loss phase saw.
struct LossIo {
    io: NvmeIo,
    /// I/Os 0..done completed and verified before the end.
    done: u64,
    /// The I/O in flight when the loss phase stopped the thread (its
    /// number, its outcome, how long it took), if one was.
    in_flight: Option<(u64, Result<(), String>, Duration)>,
}

/// Verified I/O until `stop` is set or an I/O fails; `done` counts the
/// I/Os completed.
fn loss_io(mut io: NvmeIo, stop: &AtomicBool, done: &AtomicU64) -> LossIo {
    let mut n = 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return LossIo {
                io,
                done: n,
                in_flight: None,
            };
        }
        let t = Instant::now();
        let r = io.one(n);
        let dt = t.elapsed();
        if r.is_err() || stop.load(Ordering::Acquire) {
            return LossIo {
                io,
                done: n,
                in_flight: Some((n, r, dt)),
            };
        }
        n += 1;
        done.store(n, Ordering::Release);
    }
}

/// How long the I/O in flight at the loss may take to come back (the
/// kernel's I/O timeout, abort and controller reset included).
const LOSS_IO_WAIT: Duration = Duration::from_secs(300);

/// Step 5': the stream lost under I/O, and the TDI brought back.
#[allow(clippy::too_many_arguments)]
pub(super) fn loss_and_recovery(
    r: &mut Req,
    t: Tdi<'_>,
    o: &Args,
    s: Stream,
    lock_flags: u16,
    flow: &mut Flow,
    wait: Duration,
) -> StepResult<()> {
    let step = "I/O running in RUN";
    let io = NvmeIo::open(t.bdf).map_err(|e| (step, e))?;
    let describe = io.describe();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        std::thread::Builder::new()
            .name("loss-io".into())
            .spawn(move || {
                let _ = tx.send(loss_io(io, &stop, &done));
            })
            .map_err(|e| (step, format!("I/O thread: {e}")))?;
    }
    let started = Instant::now();
    while done.load(Ordering::Acquire) == 0 {
        if let Ok(l) = rx.try_recv() {
            let why = match l.in_flight {
                Some((n, Err(e), _)) => format!("I/O {n} failed: {e}"),
                _ => "the I/O thread ended".into(),
            };
            return Err((step, format!("before any I/O completed: {why}")));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err((step, "no I/O completed within 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    flow.ok(step, describe);
    println!("TDISP-LOSS-READY {} stream {}", t.bdf, o.stream_id);

    // The stream leaves SECURE (the host injects the integrity failure).
    let step = "IDE stream lost";
    let st = loop {
        let st = t.cfg.rd(s.sel + 8).map_err(|e| (step, e))?;
        if st & sts::STATE != sts::SECURE {
            break st;
        }
        if let Ok(l) = rx.try_recv() {
            let why = match l.in_flight {
                Some((n, Err(e), _)) => format!("I/O {n} failed: {e}"),
                _ => "the I/O thread ended".into(),
            };
            return Err((step, format!("while the stream was SECURE: {why}")));
        }
        if started.elapsed() > wait {
            stop.store(true, Ordering::Release);
            return Err((
                step,
                format!(
                    "the stream stayed SECURE for {} s ({} I/Os)",
                    wait.as_secs(),
                    done.load(Ordering::Acquire)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    stop.store(true, Ordering::Release);
    let before = done.load(Ordering::Acquire);
    flow.ok(
        step,
        format!(
            "Stream Status {st:#010x}: {}{}, after {before} verified I/Os",
            state_name(st),
            if st & sts::IDE_FAIL != 0 {
                " with IDE Fail"
            } else {
                ""
            }
        ),
    );
    let step = "TDI state after the loss";
    let state = r.tdisp_get_state(t.sid, t.iface).map_err(tdisp_err(step))?;
    if state != TdiState::Error {
        return Err((step, format!("the TDI is in {state}, expected ERROR")));
    }
    flow.ok(step, format!("{state}"));
    let step = "STOP after the loss";
    r.tdisp_stop(t.sid, t.iface).map_err(tdisp_err(step))?;
    expect_state(r, t.sid, t.iface, TdiState::ConfigUnlocked, step)?;
    flow.ok(step, "CONFIG_UNLOCKED".into());
    // Enable clear (the device's DMA goes in the clear again), IDE Fail
    // cleared (RW1C).
    let step = "IDE stream disabled";
    t.cfg.wr(s.sel + 4, s.ctl).map_err(|e| (step, e))?;
    t.cfg.wr(s.sel + 8, sts::IDE_FAIL).map_err(|e| (step, e))?;
    let st = t.cfg.rd(s.sel + 8).map_err(|e| (step, e))?;
    flow.ok(step, format!("Stream Status {st:#010x}"));
    // What the kernel made of the I/O in flight.
    let step = "I/O when the stream was lost";
    let LossIo {
        mut io,
        done: done_before,
        in_flight,
    } = rx.recv_timeout(LOSS_IO_WAIT).map_err(|_| {
        (
            step,
            format!(
                "the I/O in flight did not come back within {} s",
                LOSS_IO_WAIT.as_secs()
            ),
        )
    })?;
    let (last, what) = match &in_flight {
        Some((n, Err(e), dt)) => (
            *n,
            format!("I/O {n} failed after {} ms: {e}", dt.as_millis()),
        ),
        Some((n, Ok(()), dt)) => (
            *n,
            format!("I/O {n} completed and verified after {} ms", dt.as_millis()),
        ),
        None => (done_before, "no I/O was in flight".into()),
    };
    flow.ok(step, what);

    // Recovery: new keys, SECURE, LOCK, START.
    let step = "IDE_KM new keys";
    // Always random: the seeded keys would be the lost ones again.
    program_keys(
        r,
        t.sid,
        o.stream_id,
        &crate::ide::Keys::from_seed(None),
        step,
    )?;
    flow.ok(step, "fresh K0 keys, armed".into());
    let step = "IDE stream re-enabled";
    let st = enable_stream(t.cfg, s.sel, s.ctl, step)?;
    flow.ok(step, format!("Stream Status {st:#010x}: SECURE"));
    lock_and_start(r, t, o, lock_flags, flow, true)?;
    // The blocks written before the loss are intact (the place of the I/O
    // in flight, whose write may or may not have landed, excepted).
    let step = "data before the loss";
    let first = (last + 1).saturating_sub(NvmeIo::PLACES);
    for n in first..last {
        io.verify(n).map_err(|e| (step, e))?;
    }
    flow.ok(
        step,
        format!("I/Os {first}..{last}: blocks read back intact"),
    );
    let step = "I/O after recovery";
    for n in last + 1..last + 33 {
        io.one(n).map_err(|e| (step, format!("I/O {n}: {e}")))?;
    }
    flow.ok(step, "32 verified I/Os in RUN".into());
    Ok(())
}
