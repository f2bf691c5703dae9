//! Shared helpers of the end-to-end tests: run `trustdev vm` against real
//! device servers and a real guest kernel under QEMU, and inspect the result.
//!
//! These tests provision QEMU 11.1 and the Debian guest kernel themselves
//! (qemu-configs/provision.sh) when they are missing. They are never skipped
//! silently: the only way to skip them is `TRUSTDEV_SKIP_E2E=1`, which prints
//! that they were skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Guest boots run one at a time (2 cores; TCG is CPU-bound).
static VM_LOCK: Mutex<()> = Mutex::new(());

/// True (and says so) when the user opted out of guest tests.
pub fn skip() -> bool {
    if std::env::var_os("TRUSTDEV_SKIP_E2E").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: TRUSTDEV_SKIP_E2E=1 disables the guest end-to-end tests");
        return true;
    }
    false
}

/// The trustdev binary under test.
pub fn trustdev() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trustdev"))
}

/// A guest script from tests/guest/.
pub fn guest_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/guest")
        .join(name)
}

/// Result of one `trustdev vm` run.
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
    let log = std::env::temp_dir().join(format!(
        "trustdev-e2e-{}-{}.log",
        std::process::id(),
        rand_suffix()
    ));
    let out = vm_command(args, &log).output().expect("run trustdev vm");
    finish(out, &log)
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
