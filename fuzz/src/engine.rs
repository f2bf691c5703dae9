//! The fuzz loop: generate an input, run it against a target, apply the
//! oracles, and stop at the first violation with the input saved.
//!
//! Oracles, for every input of every target:
//! - no panic, on the calling thread or any other (a server thread, an NVMe
//!   worker): a panic hook records every panic in the process;
//! - no hang: a watchdog thread aborts the process (after saving the input)
//!   when one input runs longer than [`Limits::hang`]; the slowest input is
//!   reported;
//! - no unbounded allocation: no single allocation above
//!   [`Limits::max_alloc`], the live heap below [`Limits::max_heap`] after
//!   each input, the resident set below [`Limits::max_rss_kib`] (checked
//!   every 1024 inputs);
//! - the target's own checks ([`Target::run`]: well-formed answers, the
//!   server or controller still answers a valid request) and, every
//!   `check_every` inputs and at the end, [`Target::check`].

use crate::alloc;
use crate::mutate::{mutated_seed, Rng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// A fuzz target: a decoder (or a live server) and its oracles.
pub trait Target {
    /// Valid inputs the generator starts from (built with the real encoders).
    fn seeds(&self) -> &[Vec<u8>];

    /// Longest input generated.
    fn max_len(&self) -> usize {
        4096
    }

    /// Produces the next input into `out` (default: a mutated seed).
    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        let max = self.max_len();
        mutated_seed(rng, self.seeds(), max, out);
    }

    /// Runs one input. `Err` is an oracle violation (a panic is caught by
    /// the engine).
    fn run(&mut self, input: &[u8]) -> Result<(), String>;

    /// A deeper liveness check run every `check_every` inputs and at the end.
    fn check(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// What the inputs reached (counters), for the report.
    fn stats(&self) -> String {
        String::new()
    }
}

/// Resource limits per input.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest time one input may take before it counts as a hang.
    pub hang: Duration,
    /// Largest single allocation.
    pub max_alloc: usize,
    /// Largest live heap after an input.
    pub max_heap: usize,
    /// Largest resident set, KiB.
    pub max_rss_kib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hang: Duration::from_secs(10),
            // The largest legitimate buffers: a 1 MiB DOE object, an NVMe
            // transfer of MDTS, a 1 MiB vfio-user message.
            max_alloc: 16 << 20,
            max_heap: 512 << 20,
            max_rss_kib: 2 << 20,
        }
    }
}

/// How to run a target.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Inputs to run.
    pub inputs: u64,
    /// Seed of the input generator.
    pub seed: u64,
    /// Stop after this long even if fewer inputs ran.
    pub max_time: Option<Duration>,
    /// Run [`Target::check`] every this many inputs.
    pub check_every: u64,
    /// Resource limits.
    pub limits: Limits,
    /// Where a failing input is saved.
    pub artifacts: Option<PathBuf>,
    /// Print a progress line this often.
    pub progress: Option<Duration>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            inputs: 10_000,
            seed: 1,
            max_time: None,
            check_every: 1000,
            limits: Limits::default(),
            artifacts: None,
            progress: None,
        }
    }
}

/// An oracle violation.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Index of the input (0-based) in the run.
    pub index: u64,
    /// What went wrong.
    pub reason: String,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was saved.
    pub saved: Option<PathBuf>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Target name.
    pub target: String,
    /// Inputs run (including a failing one).
    pub inputs: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The slowest input's time.
    pub slowest: Duration,
    /// The slowest input's index.
    pub slowest_index: u64,
    /// Largest single allocation seen (0: allocator not counted).
    pub largest_alloc: usize,
    /// Peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// Whether allocations were counted.
    pub alloc_counted: bool,
    /// The first violation, if any.
    pub failure: Option<Failure>,
    /// The target's counters ([`Target::stats`]).
    pub stats: String,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One line: target, inputs, time, rate, slowest input, memory.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} inputs in {:.1} s ({:.0}/s), slowest input {:.3} ms (#{}), largest allocation {} KiB{}, peak RSS {} MiB: {}",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.slowest.as_secs_f64() * 1e3,
            self.slowest_index,
            self.largest_alloc / 1024,
            if self.alloc_counted { "" } else { " (not counted)" },
            self.peak_rss_kib / 1024,
            match &self.failure {
                None => "no failure".to_string(),
                Some(f) => format!("FAILED at input #{}: {}", f.index, f.reason),
            }
        )
    }
}

/// Panics anywhere in the process, recorded by the hook.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: Once = Once::new();

fn install_panic_hook() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let msg = format!("thread '{}': {info}", thread.name().unwrap_or("unnamed"));
            PANICS.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
            default(info);
        }));
    });
}

fn take_panics() -> Vec<String> {
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The watchdog's view of the input in flight.
struct Watch {
    epoch: Instant,
    /// Start of the current input in ns since `epoch` + 1 (0: idle).
    started: AtomicU64,
    input: Mutex<Vec<u8>>,
    done: AtomicBool,
}

fn save(dir: Option<&Path>, target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = dir?;
    std::fs::create_dir_all(dir).ok()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in input {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let path = dir.join(format!("{target}-{h:016x}.bin"));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

fn start_watchdog(
    watch: &Arc<Watch>,
    target: &str,
    hang: Duration,
    artifacts: Option<PathBuf>,
) -> std::thread::JoinHandle<()> {
    let w = Arc::clone(watch);
    let target = target.to_string();
    std::thread::Builder::new()
        .name("fuzz-watchdog".into())
        .spawn(move || {
            while !w.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let s = w.started.load(Ordering::Relaxed);
                if s == 0 {
                    continue;
                }
                let ran = w.epoch.elapsed().saturating_sub(Duration::from_nanos(s - 1));
                if ran > hang && w.started.load(Ordering::Relaxed) == s {
                    let input = w.input.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let saved = save(artifacts.as_deref(), &format!("{target}-hang"), &input);
                    eprintln!(
                        "HANG: {target}: one input has run for {:.1} s (limit {:.1} s); input {:02x?}{}",
                        ran.as_secs_f64(),
                        hang.as_secs_f64(),
                        &input[..input.len().min(256)],
                        saved.map(|p| format!(", saved to {}", p.display())).unwrap_or_default()
                    );
                    std::process::exit(3);
                }
            }
        })
        .expect("spawn the watchdog thread")
}

/// Runs `inputs` (given, e.g. a saved corpus) or generated ones against
/// `target` under the oracles.
fn run_loop(
    name: &str,
    target: &mut dyn Target,
    cfg: &RunConfig,
    mut next: impl FnMut(&mut dyn Target, u64, &mut Vec<u8>) -> bool,
) -> Report {
    install_panic_hook();
    take_panics();
    let alloc_counted = alloc::installed();
    let watch = Arc::new(Watch {
        epoch: Instant::now(),
        started: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
    });
    let dog = start_watchdog(&watch, name, cfg.limits.hang, cfg.artifacts.clone());
    let start = Instant::now();
    let mut last_progress = start;
    let mut report = Report {
        target: name.to_string(),
        inputs: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
        slowest_index: 0,
        largest_alloc: 0,
        peak_rss_kib: 0,
        alloc_counted,
        failure: None,
        stats: String::new(),
    };
    let mut input = Vec::new();
    let mut i = 0u64;
    alloc::take_largest();
    while next(target, i, &mut input) {
        watch
            .input
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(&input);
        let t0 = Instant::now();
        watch.started.store(
            t0.duration_since(watch.epoch).as_nanos() as u64 + 1,
            Ordering::Relaxed,
        );
        let outcome = catch_unwind(AssertUnwindSafe(|| target.run(&input)));
        let mut check = Ok(());
        if (i + 1) % cfg.check_every.max(1) == 0 {
            check = catch_unwind(AssertUnwindSafe(|| target.check()))
                .unwrap_or_else(|_| Err("panic in the liveness check".into()));
        }
        watch.started.store(0, Ordering::Relaxed);
        let took = t0.elapsed();
        if took > report.slowest {
            report.slowest = took;
            report.slowest_index = i;
        }
        let largest = alloc::take_largest();
        report.largest_alloc = report.largest_alloc.max(largest);
        let mut reason = match outcome {
            Err(_) => Some("panic".to_string()),
            Ok(Err(e)) => Some(e),
            Ok(Ok(())) => check.err().map(|e| format!("liveness check: {e}")),
        };
        let panics = take_panics();
        if !panics.is_empty() {
            reason = Some(format!(
                "{}panic: {}",
                reason.map(|r| format!("{r}; ")).unwrap_or_default(),
                panics.join(" | ")
            ));
        }
        if reason.is_none() && alloc_counted {
            if largest > cfg.limits.max_alloc {
                reason = Some(format!(
                    "allocation of {largest} bytes (limit {})",
                    cfg.limits.max_alloc
                ));
            } else if alloc::live() > cfg.limits.max_heap {
                reason = Some(format!(
                    "live heap of {} bytes after the input (limit {})",
                    alloc::live(),
                    cfg.limits.max_heap
                ));
            }
        }
        if reason.is_none() && i % 1024 == 0 && alloc::rss_kib() > cfg.limits.max_rss_kib {
            reason = Some(format!(
                "resident set of {} KiB (limit {})",
                alloc::rss_kib(),
                cfg.limits.max_rss_kib
            ));
        }
        if reason.is_none() && took > cfg.limits.hang {
            reason = Some(format!("input took {:.1} s", took.as_secs_f64()));
        }
        i += 1;
        if let Some(reason) = reason {
            let saved = save(cfg.artifacts.as_deref(), name, &input);
            report.failure = Some(Failure {
                index: i - 1,
                reason,
                input: input.clone(),
                saved,
            });
            break;
        }
        if let Some(every) = cfg.progress {
            if last_progress.elapsed() >= every {
                last_progress = Instant::now();
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "{name}: {i} inputs, {secs:.0} s, {:.0}/s, slowest {:.3} ms, RSS {} MiB",
                    i as f64 / secs,
                    report.slowest.as_secs_f64() * 1e3,
                    alloc::rss_kib() / 1024
                );
            }
        }
    }
    if report.failure.is_none() {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| target.check()))
            .unwrap_or_else(|_| Err("panic in the liveness check".into()))
        {
            report.failure = Some(Failure {
                index: i,
                reason: format!("final liveness check: {e}"),
                input: Vec::new(),
                saved: None,
            });
        }
    }
    watch.done.store(true, Ordering::Relaxed);
    let _ = dog.join();
    report.inputs = i;
    report.elapsed = start.elapsed();
    report.peak_rss_kib = alloc::peak_rss_kib();
    report.stats = target.stats();
    report
}

/// Runs `cfg.inputs` generated inputs (or until `cfg.max_time`).
pub fn run(name: &str, target: &mut dyn Target, cfg: &RunConfig) -> Report {
    let mut rng = Rng::new(cfg.seed);
    let deadline = cfg.max_time.map(|t| Instant::now() + t);
    run_loop(name, target, cfg, |t, i, out| {
        if i >= cfg.inputs || deadline.is_some_and(|d| i % 64 == 0 && Instant::now() >= d) {
            return false;
        }
        t.generate(&mut rng, out);
        true
    })
}

/// Runs the given inputs (a saved failure, a regression corpus).
pub fn replay(name: &str, target: &mut dyn Target, inputs: &[Vec<u8>], cfg: &RunConfig) -> Report {
    run_loop(name, target, cfg, |_, i, out| {
        match inputs.get(i as usize) {
            Some(x) => {
                out.clone_from(x);
                true
            }
            None => false,
        }
    })
}
