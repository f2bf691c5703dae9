//! Shared helpers of the end-to-end tests: run `trustdev vm` against real
//! device servers and a real guest kernel under QEMU, and inspect the result.
//!
//! These tests provision QEMU 11.1 and the Debian guest kernel themselves
//! (qemu-configs/provision.sh) when they are missing, and build the binaries
//! they run (`trustdev` and the guest's `trustdev-guest`, see [`bins`]).
//!
//! A skipped test is never a pass. The only way to skip them is
//! `TRUSTDEV_SKIP_E2E=1` (and `TRUSTDEV_SKIP_NVME_CLI=1` for the nvme-cli
//! part of the NVMe guest), and [`skip`] then: refuses when `CI` is set (the
//! test fails), prints `SKIPPED: <binary>::<test> (<reason>)` straight to the
//! terminal (past the test harness's output capture), and appends that line
//! to `$TRUSTDEV_SKIP_LOG` when set (scripts/test.sh reports them at the end).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Guest boots run one at a time (2 cores; TCG is CPU-bound).
static VM_LOCK: Mutex<()> = Mutex::new(());

/// True when the CI environment variable says this is a CI run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `binary::test` of the running test (libtest names a test's thread after it).
fn test_name() -> String {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(b, _)| b.to_string()))
        .unwrap_or_default();
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    format!("{bin}::{test}")
}

/// Whether the user asked to skip `what` with `var=1`. Refused in CI (the
/// test fails); otherwise the skip is reported as above.
pub fn skip_requested(var: &str, what: &str) -> bool {
    if std::env::var_os(var).map_or(true, |v| v != "1") {
        return false;
    }
    assert!(
        !in_ci(),
        "{var}=1 in CI (CI={:?}): CI refuses to skip {what}; unset {var}",
        std::env::var("CI").unwrap_or_default()
    );
    let line = format!("SKIPPED: {} ({what}: {var}=1)\n", test_name());
    // Straight to the terminal: libtest only captures the print macros.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("TRUSTDEV_SKIP_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!(
                "cannot record the skip in {}: {e}",
                Path::new(&log).display()
            );
        }
    }
    true
}

/// True (and reported, see the module doc) when the user opted out of guest
/// tests with TRUSTDEV_SKIP_E2E=1.
pub fn skip() -> bool {
    skip_requested("TRUSTDEV_SKIP_E2E", "guest end-to-end test")
}

/// The binaries under test.
pub struct Bins {
    /// `trustdev` (devices/).
    pub trustdev: PathBuf,
    /// `trustdev-guest` (guest/), which `trustdev vm` finds next to `trustdev`.
    pub guest: PathBuf,
}

/// Builds the workspace's binaries once per test binary (`cargo build
/// --workspace --bins`, quick when they are up to date) into the target
/// directory and profile this test was built for, and returns them. The e2e
/// tests need binaries of two other packages, which Cargo's
/// CARGO_BIN_EXE_* does not provide; building here also keeps a
/// `cargo test -p trustdev-e2e --test X` from running a stale guest tool.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        // <target>[/<triple>]/<profile dir>/deps/<this test>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary under <target>/<profile>/deps")
            .to_path_buf();
        let above = profile_dir.parent().expect("target directory");
        let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
            (above.to_path_buf(), None)
        } else {
            let triple = above.file_name().map(|t| t.to_string_lossy().into_owned());
            (
                above.parent().expect("target directory").to_path_buf(),
                triple,
            )
        };
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(p) => p.to_string(),
            None => "dev".to_string(),
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(&workspace)
            .args(["build", "--quiet", "--workspace", "--bins", "--profile"])
            .arg(&profile)
            .arg("--target-dir")
            .arg(&target_dir);
        if let Some(t) = &triple {
            cmd.args(["--target", t]);
        }
        let t = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", env!("CARGO")));
        assert!(
            out.status.success(),
            "building the binaries under test failed ({cmd:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bins = Bins {
            trustdev: profile_dir.join("trustdev"),
            guest: profile_dir.join("trustdev-guest"),
        };
        for b in [&bins.trustdev, &bins.guest] {
            assert!(b.exists(), "{} missing after {cmd:?}", b.display());
        }
        let _ = writeln!(
            std::io::stderr(),
            "e2e: binaries up to date in {:.1} s ({})",
            t.elapsed().as_secs_f64(),
            profile_dir.display()
        );
        bins
    })
}

/// The trustdev binary under test.
pub fn trustdev() -> PathBuf {
    bins().trustdev.clone()
}

/// A guest script from tests/guest/.
pub fn guest_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guest")
        .join(name)
}

/// Everything a child's pipe produces, readable while the child runs.
pub struct Collector {
    buf: std::sync::Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Collector {
    /// Starts reading `r` (nothing if `None`) on a thread.
    pub fn start(r: Option<impl std::io::Read + Send + 'static>) -> Collector {
        let buf = std::sync::Arc::new(Mutex::new(Vec::new()));
        let b = std::sync::Arc::clone(&buf);
        let thread = std::thread::spawn(move || {
            let Some(mut r) = r else { return };
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                b.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Collector { buf, thread }
    }

    /// What arrived so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Everything, once the pipe closed.
    pub fn finish(self) -> Vec<u8> {
        let _ = self.thread.join();
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Waits until `child` exits or `deadline` passes; then kills it (SIGKILL;
/// its own children die with it: `trustdev vm` gives them
/// PR_SET_PDEATHSIG) and returns `None`.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Waits for `child` at most `limit`, collecting its output; on expiry kills
/// it and fails the test with what it printed.
pub fn wait_with_timeout(mut child: Child, limit: Duration, what: &str) -> Output {
    let out = Collector::start(child.stdout.take());
    let err = Collector::start(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + limit);
    let (stdout, stderr) = (out.finish(), err.finish());
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what}: no result within {} s; killed.\n--- stdout\n{}\n--- stderr\n{}",
            limit.as_secs(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Result of one `trustdev vm` run.
#[derive(Clone, Debug)]
pub struct VmRun {
    /// Exit code of `trustdev vm`.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// The guest's serial console.
    pub serial: String,
}

impl VmRun {
    /// Lines of the serial console starting with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.serial
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// Asserts that the guest script passed: no `CHECK-FAIL` line (they are
    /// listed otherwise) and exit status 0.
    pub fn assert_checks_passed(&self) {
        self.assert_checks_passed_with("");
    }

    /// [`VmRun::assert_checks_passed`], with `context` (server logs, say)
    /// after the run in the failure message.
    pub fn assert_checks_passed_with(&self, context: &str) {
        let fails = self.lines("CHECK-FAIL");
        assert!(
            fails.is_empty(),
            "guest checks failed: {fails:#?}\n{}{context}",
            self.dump()
        );
        assert_eq!(self.code, Some(0), "{}{context}", self.dump());
    }

    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- serial\n{}",
            self.code, self.stdout, self.stderr, self.serial
        )
    }
}

/// Runs `trustdev vm ARGS --serial-log <tmp>`; boots are serialised.
pub fn vm(args: &[&str]) -> VmRun {
    let _g = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let log = serial_log_path();
    let out = vm_command(args, &log).output().expect("run trustdev vm");
    finish(out, &log)
}

/// A fresh temporary path for a run's serial log.
fn serial_log_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "trustdev-e2e-{}-{}.log",
        std::process::id(),
        rand_suffix()
    ))
}

/// True when `TRUSTDEV_E2E_QEMU=patched` runs the guests on the patched
/// QEMU instead of the stock 11.1.
pub fn patched_qemu() -> bool {
    std::env::var_os("TRUSTDEV_E2E_QEMU").is_some_and(|v| v == "patched")
}

/// The command `vm` runs (for tests that need to act while it runs).
/// `TRUSTDEV_E2E_QEMU=patched` runs every guest on the patched QEMU
/// (`trustdev vm --qemu patched`) unless a test chose its QEMU itself.
pub fn vm_command(args: &[&str], log: &Path) -> Command {
    let mut c = Command::new(trustdev());
    c.arg("vm").args(args).arg("--serial-log").arg(log);
    if let Some(q) = std::env::var_os("TRUSTDEV_E2E_QEMU") {
        if !args.contains(&"--qemu") {
            c.arg("--qemu").arg(q);
        }
    }
    c
}

/// Starts `trustdev vm ARGS --serial-log LOG` with stdout and stderr
/// captured, for tests that act while the guest runs.
pub fn spawn_vm(args: &[&str], log: &Path) -> std::process::Child {
    vm_command(args, log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start trustdev vm")
}

/// Collects a finished run.
pub fn finish(out: Output, log: &Path) -> VmRun {
    let serial = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let _ = std::fs::remove_file(log);
    VmRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        serial,
    }
}

/// Runs `trustdev vm ARGS` with `TRUSTDEV_KEEP=1` and `RUST_LOG=info` and
/// returns the run with the logs of the named servers (`NAME.log` of the
/// kept work directory, which is removed afterwards; empty if missing).
pub fn vm_with_server_logs(args: &[&str], servers: &[&str]) -> (VmRun, Vec<String>) {
    let _g = lock();
    let log = serial_log_path();
    let out = vm_command(args, &log)
        .env("TRUSTDEV_KEEP", "1")
        .env("RUST_LOG", "info")
        .output()
        .expect("run trustdev vm");
    let run = finish(out, &log);
    let dir = run.stderr.lines().find_map(|l| {
        l.split_once("logs kept in ")
            .map(|(_, d)| PathBuf::from(d.trim()))
    });
    let logs = servers
        .iter()
        .map(|name| {
            dir.as_ref()
                .and_then(|d| std::fs::read_to_string(d.join(format!("{name}.log"))).ok())
                .unwrap_or_default()
        })
        .collect();
    if let Some(d) = &dir {
        let _ = std::fs::remove_dir_all(d);
    }
    (run, logs)
}

/// Holds the VM lock for tests that drive `trustdev vm` themselves.
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Processes (pid, cmdline) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                if c.contains(needle) {
                    out.push((pid, c));
                }
            }
        }
    }
    out
}

/// Children of `parent` (by /proc/PID/stat's ppid).
pub fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
                continue;
            };
            let ppid: u32 = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid == parent {
                let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                out.push((pid, String::from_utf8_lossy(&c).replace('\0', " ")));
            }
        }
    }
    out
}

/// Builds (or finds, cached) uio_pci_generic_sva.ko for the guest kernel.
pub fn uio_sva_module() -> String {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-configs/provision-kmod.sh");
    assert!(
        script.exists(),
        "{} is missing: uio_pci_generic_sva.ko cannot be built",
        script.display()
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(["--only", "uio-sva", "--quiet"])
        .output()
        .expect("run provision-kmod.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "provision-kmod.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("TRUSTDEV_UIO_SVA_KO="))
        .unwrap_or_else(|| panic!("no TRUSTDEV_UIO_SVA_KO in:\n{stdout}"))
        .to_string()
}

/// A `trustdev vm` run that a test acts on while the guest runs: each
/// server gets a control socket `NAME.ctl` and a trace in a fresh control
/// directory (`--control-dir`), logs at info level, and its log is kept for
/// [`Finished::log`]. The test waits for the guest script's cue lines
/// ([`LiveVm::wait_for`]) and arms faults ([`LiveVm::ctl`]) meanwhile. Holds
/// the VM lock for its whole life.
pub struct LiveVm {
    _lock: std::sync::MutexGuard<'static, ()>,
    child: Child,
    serial: PathBuf,
    control_dir: PathBuf,
    out: Option<Collector>,
    err: Option<Collector>,
    limit: Duration,
    deadline: Instant,
}

impl Drop for LiveVm {
    /// A test that failed while the guest ran: stop the run (its servers
    /// and QEMU die with it) and remove the control directory.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.control_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.control_dir);
        }
    }
}

impl LiveVm {
    /// Starts `trustdev vm ARGS --control-dir DIR --serial-log LOG`; the
    /// whole run must end within `limit`. `tag` names the temporary files.
    pub fn start(tag: &str, args: &[&str], limit: Duration) -> LiveVm {
        let lock = lock();
        let base = std::env::temp_dir().join(format!("trustdev-e2e-{tag}-{}", std::process::id()));
        let control_dir = base.with_extension("ctl");
        let serial = base.with_extension("log");
        let _ = std::fs::remove_dir_all(&control_dir);
        let _ = std::fs::remove_file(&serial);
        std::fs::create_dir_all(&control_dir).expect("create the control directory");
        let mut child = vm_command(args, &serial)
            .arg("--control-dir")
            .arg(&control_dir)
            .env("TRUSTDEV_KEEP", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start trustdev vm");
        let out = Collector::start(child.stdout.take());
        let err = Collector::start(child.stderr.take());
        LiveVm {
            _lock: lock,
            child,
            serial,
            control_dir,
            out: Some(out),
            err: Some(err),
            limit,
            deadline: Instant::now() + limit,
        }
    }

    /// The `trustdev vm` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the guest console has a line that is `cue` or starts
    /// with `cue` and a space; fails the test (with the console and the
    /// runner's output) if the run ends or the deadline passes first.
    pub fn wait_for(&mut self, cue: &str) {
        loop {
            let serial = std::fs::read_to_string(&self.serial).unwrap_or_default();
            let seen = serial.lines().map(|l| l.trim_end()).any(|l| {
                l == cue
                    || l.strip_prefix(cue)
                        .is_some_and(|rest| rest.starts_with(' '))
            });
            if seen {
                return;
            }
            let ended = !matches!(self.child.try_wait(), Ok(None));
            if ended || Instant::now() > self.deadline {
                // Let the collectors catch the runner's last words.
                std::thread::sleep(Duration::from_millis(300));
                panic!(
                    "{} before the guest printed {cue}:\n{serial}\n--- trustdev vm stderr\n{}",
                    if ended {
                        "trustdev vm ended"
                    } else {
                        "time ran out"
                    },
                    self.err.as_ref().map(Collector::text).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The control socket of server `name` (KIND + index, e.g. `nvme0`).
    pub fn control_socket(&self, name: &str) -> PathBuf {
        self.control_dir.join(format!("{name}.ctl"))
    }

    /// `trustdev ctl -c <server's socket> WORDS...`: whether it succeeded,
    /// and what it printed (stdout + stderr).
    pub fn ctl(&self, server: &str, words: &[&str]) -> (bool, String) {
        let out = Command::new(trustdev())
            .arg("ctl")
            .arg("-c")
            .arg(self.control_socket(server))
            .args(words)
            .output()
            .expect("run trustdev ctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Waits for the run to end (killed at the deadline: the test fails).
    pub fn finish(mut self) -> Finished {
        let status = wait_until(&mut self.child, self.deadline);
        let drain = |c: Option<Collector>| c.map(Collector::finish).unwrap_or_default();
        let (stdout, stderr) = (drain(self.out.take()), drain(self.err.take()));
        let Some(status) = status else {
            panic!(
                "trustdev vm: no result within {} s; killed\n--- stderr\n{}\n--- serial\n{}",
                self.limit.as_secs(),
                String::from_utf8_lossy(&stderr),
                std::fs::read_to_string(&self.serial).unwrap_or_default()
            );
        };
        let run = finish(
            Output {
                status,
                stdout,
                stderr,
            },
            &self.serial,
        );
        let kept = run.stderr.lines().find_map(|l| {
            l.split_once("logs kept in ")
                .map(|(_, d)| PathBuf::from(d.trim()))
        });
        Finished {
            run,
            kept,
            control_dir: std::mem::take(&mut self.control_dir),
        }
    }
}

/// A finished [`LiveVm`] run; its kept logs and control directory are
/// removed when it is dropped.
pub struct Finished {
    /// The run.
    pub run: VmRun,
    kept: Option<PathBuf>,
    control_dir: PathBuf,
}

impl Finished {
    /// A file of the kept work directory, e.g. `nvme0.log`, `qemu.log`
    /// (empty if missing).
    pub fn log(&self, name: &str) -> String {
        self.kept
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join(name)).ok())
            .unwrap_or_default()
    }

    /// A file of the control directory, e.g. `nvme0.trace.jsonl`.
    pub fn control_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.control_dir.join(name)).unwrap_or_default()
    }

    /// The control directory (e.g. to decode a trace in it).
    pub fn control_dir(&self) -> &Path {
        &self.control_dir
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(d) = &self.kept {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}
