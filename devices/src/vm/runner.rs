//! Runs one VM: servers up, QEMU up, supervise, verdict, teardown.

use super::process::{describe, Child};
use super::qemu::{self, QemuDevice};
use super::toolchain::Toolchain;
use super::{initramfs, Placement, VmError, VmSpec};
use log::{debug, info};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The verdict line the guest's /init prints after the script.
const EXIT_MARKER: &str = "TRUSTDEV-EXIT=";
/// How many log lines an error shows.
const TAIL_LINES: usize = 40;

/// What happened in a successful run (QEMU started, the guest reported).
#[derive(Debug)]
pub struct VmOutcome {
    /// The guest script's exit status.
    pub guest_status: i32,
    /// The whole serial console log.
    pub serial: String,
    /// Per server: name, and whether it was still running and accepted a
    /// new client after the guest powered off.
    pub servers_survived: Vec<(String, bool)>,
    /// Wall time of the guest run.
    pub elapsed: Duration,
    /// QEMU and kernel versions used.
    pub versions: String,
}

struct Server {
    name: String,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
    placement: Placement,
}

/// The last `n` lines of a file, indented, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    match text {
        Ok(t) => {
            let lines: Vec<&str> = t.lines().collect();
            let start = lines.len().saturating_sub(n);
            let mut out = format!(
                "--- last {} lines of {} ---\n",
                lines.len() - start,
                path.display()
            );
            for l in &lines[start..] {
                out.push_str("  ");
                out.push_str(l);
                out.push('\n');
            }
            out
        }
        Err(e) => format!("--- {}: {e} ---\n", path.display()),
    }
}

/// Removes work directories of runners that no longer exist (killed with
/// SIGKILL, say), except those kept for their logs (failed runs).
fn remove_stale_work_dirs(base: &Path) {
    if std::env::var_os("TRUSTDEV_KEEP").is_some() {
        return;
    }
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("trustdev-vm-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && !e.path().join("KEEP").exists() {
            debug!("removing stale work directory {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn work_dir() -> std::io::Result<PathBuf> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    remove_stale_work_dirs(&base);
    let d = base.join(format!(
        "trustdev-vm-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&d)?;
    Ok(d)
}

fn start_server(
    exe: &Path,
    dir: &Path,
    idx: usize,
    kind: &str,
    placement: Placement,
    extra_args: &[String],
    control_dir: Option<&Path>,
) -> Result<Server, VmError> {
    let name = format!("{kind}{idx}");
    let socket = dir.join(format!("{name}.sock"));
    let log = dir.join(format!("{name}.log"));
    let logf = File::create(&log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg(kind).arg("--socket").arg(&socket);
    if let Some(c) = control_dir {
        cmd.arg("--control").arg(c.join(format!("{name}.ctl")));
        cmd.arg("--trace")
            .arg(c.join(format!("{name}.trace.jsonl")));
    }
    if placement == Placement::RootBus {
        cmd.arg("--rciep");
    }
    cmd.args(extra_args);
    if std::env::var_os("TRUSTDEV_IDENTITY_DIR").is_none() {
        // Stable device identities across runs, next to the toolchain.
        cmd.env("TRUSTDEV_IDENTITY_DIR", identity_base());
    }
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let mut child = Child::spawn(&name, cmd).map_err(|e| VmError::ServerStart {
        name: name.clone(),
        why: e.to_string(),
        log: String::new(),
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(st) = child.try_status() {
            return Err(VmError::ServerStart {
                name,
                why: describe(Some(st)),
                log: tail(&log, TAIL_LINES),
            });
        }
        if Instant::now() > deadline {
            return Err(VmError::ServerStart {
                name,
                why: "socket did not appear within 20 s".into(),
                log: tail(&log, TAIL_LINES),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    info!(
        "server {name} (pid {}) listening on {}",
        child.pid(),
        socket.display()
    );
    Ok(Server {
        name,
        socket,
        log,
        child,
        placement,
    })
}

/// Where `trustdev vm` keeps device identities: `<cache>/identity`.
fn identity_base() -> PathBuf {
    super::toolchain::cache_dir().join("identity")
}

/// Echoes new bytes of the serial log to stdout.
struct Echo {
    file: Option<File>,
    pos: u64,
}

impl Echo {
    fn pump(&mut self, path: &Path) {
        if self.file.is_none() {
            self.file = File::open(path).ok();
        }
        if let Some(f) = &mut self.file {
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(self.pos)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                self.pos += buf.len() as u64;
                let _ = std::io::stdout().write_all(&buf);
                let _ = std::io::stdout().flush();
            }
        }
    }
}

/// Parses the guest script's status from the serial log.
pub fn guest_status(serial: &str) -> Option<i32> {
    serial
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
        .and_then(|v| v.trim().parse().ok())
}

/// Checks that a server accepts a fresh client (VERSION handshake). QEMU's
/// end of the old connection can outlive the QEMU process by some
/// milliseconds (its io_uring is torn down asynchronously), and until it
/// closes the server refuses a second client: retry for a few seconds.
fn answers(socket: &Path) -> bool {
    use vfio_user_server::client::Client;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut c) = Client::connect_raw(socket) {
            if c.set_timeout(Some(Duration::from_secs(5))).is_ok() && c.negotiate().is_ok() {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the VM described by `spec`. `stop` aborts the run when set (signal).
pub fn run(spec: &VmSpec, stop: Arc<AtomicBool>) -> Result<VmOutcome, VmError> {
    let tc = Toolchain::load(true)?.with_qemu(spec.qemu)?;
    let dir = work_dir()?;
    let result = run_in(spec, &tc, &dir, &stop);
    match &result {
        Ok(_) if std::env::var_os("TRUSTDEV_KEEP").is_none() => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => {
            let _ = std::fs::write(dir.join("KEEP"), b"logs of a failed or kept run\n");
            eprintln!("trustdev vm: logs kept in {}", dir.display());
        }
    }
    result
}

fn run_in(
    spec: &VmSpec,
    tc: &Toolchain,
    dir: &Path,
    stop: &AtomicBool,
) -> Result<VmOutcome, VmError> {
    let versions = format!(
        "QEMU {}{} ({}), guest kernel {} ({})",
        tc.qemu_version,
        tc.qemu_patches
            .as_deref()
            .map(|p| format!(" [{p}]"))
            .unwrap_or_default(),
        tc.qemu.display(),
        tc.kernel_release,
        tc.kernel_version
    );
    info!("{versions}");
    let exe = std::env::current_exe()?;
    // Guest script: copied so QEMU's fw_cfg and the overlay read a stable file.
    let script = match &spec.script {
        Some(s) => {
            let dst = dir.join("test.sh");
            std::fs::copy(s, &dst).map_err(|e| {
                VmError::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", s.display()),
                ))
            })?;
            Some(dst)
        }
        None => None,
    };
    let kernel = spec.kernel.clone().unwrap_or_else(|| tc.kernel.clone());

    let mut servers = Vec::new();
    for (i, d) in spec.devices.iter().enumerate() {
        servers.push(start_server(
            &exe,
            dir,
            i,
            d.kind.name,
            d.placement,
            &d.args,
            spec.control_dir.as_deref(),
        )?);
    }
    let initrd = match &spec.initrd {
        Some(_) if spec.tsm => {
            return Err(VmError::Initramfs(
                "--tsm puts the TSM module into trustdev's initramfs: it cannot be combined with --initrd".into(),
            ))
        }
        Some(i) => i.clone(),
        None => {
            let mut modules: Vec<String> = initramfs::DEFAULT_MODULES
                .iter()
                .map(|s| s.to_string())
                .collect();
            modules.extend(spec.modules.iter().cloned());
            let base = initramfs::base(tc, &modules)?;
            let mut bins = spec.bins.clone();
            let guest_tool = exe.with_file_name("trustdev-guest");
            if guest_tool.exists() {
                bins.push(guest_tool);
            } else {
                log::warn!(
                    "{} not found: the guest gets no trustdev-guest (build it with `cargo build --workspace --bins`)",
                    guest_tool.display()
                );
            }
            // The root certificates of the servers' SPDM identities (generated
            // by the servers on first use), for requesters in the guest.
            let mut files = spec.files.clone();
            if spec.tsm {
                let m = super::tsm::build(tc, spec.kernel.is_some())?;
                info!("TSM module {} ({})", m.ko.display(), m.release);
                files.push(m.initramfs_file());
            }
            let mut dirs: Vec<(&str, PathBuf)> = spec
                .devices
                .iter()
                .map(|d| {
                    let dir = d.identity_dir().unwrap_or_else(|| {
                        std::env::var_os("TRUSTDEV_IDENTITY_DIR")
                            .map_or_else(identity_base, PathBuf::from)
                            .join(d.kind.name)
                    });
                    (d.kind.name, dir)
                })
                .collect();
            dirs.sort_unstable();
            dirs.dedup();
            for (i, (kind, dir)) in dirs.iter().enumerate() {
                // Named by kind; a kind's second identity gets its index.
                let tag = if dirs[..i].iter().any(|(k, _)| k == kind) {
                    format!("{kind}{i}")
                } else {
                    kind.to_string()
                };
                for (algo, root) in crate::security::cma::root_certificates(dir) {
                    files.push((root, format!("/etc/trustdev/roots/{tag}-{algo}.pem")));
                }
            }
            initramfs::assemble(tc, &base, &bins, &files, script.as_deref(), dir)?
        }
    };
    let qdevs: Vec<QemuDevice> = servers
        .iter()
        .map(|s| QemuDevice {
            socket: s.socket.clone(),
            placement: s.placement,
        })
        .collect();
    let serial_log = spec
        .serial_log
        .clone()
        .unwrap_or_else(|| dir.join("serial.log"));
    let _ = std::fs::remove_file(&serial_log);
    let qemu_log = dir.join("qemu.log");
    let args = qemu::args(
        spec,
        tc.qemu_major(),
        &kernel,
        &initrd,
        &qdevs,
        &serial_log,
        script.as_deref(),
    );
    debug!("{} {}", tc.qemu.display(), args.join(" "));
    std::fs::write(
        dir.join("qemu.cmdline"),
        format!(
            "{} {}\n",
            tc.qemu.display(),
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )?;
    let mut cmd = Command::new(&tc.qemu);
    cmd.args(&args);
    if spec.interactive {
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else {
        let ql = File::create(&qemu_log)?;
        cmd.stdin(Stdio::null()).stdout(ql.try_clone()?).stderr(ql);
    }
    let logs = |servers: &[Server]| {
        let mut s = tail(&serial_log, TAIL_LINES);
        if !spec.interactive {
            s.push_str(&tail(&qemu_log, 15));
        }
        for srv in servers {
            s.push_str(&tail(&srv.log, 15));
        }
        s
    };
    let started = Instant::now();
    let mut qemu = Child::spawn("qemu", cmd).map_err(|e| VmError::Qemu {
        status: format!("cannot start {}: {e}", tc.qemu.display()),
        logs: String::new(),
    })?;
    info!("QEMU pid {} started", qemu.pid());
    let mut echo = Echo { file: None, pos: 0 };
    let qemu_status = loop {
        if let Some(st) = qemu.try_status() {
            break st;
        }
        if spec.echo && !spec.interactive {
            echo.pump(&serial_log);
        }
        for s in servers.iter_mut() {
            if let Some(st) = s.child.try_status() {
                let name = s.name.clone();
                qemu.stop(Duration::from_secs(2));
                return Err(VmError::ServerDied {
                    name,
                    status: describe(Some(st)),
                    logs: logs(&servers),
                });
            }
        }
        if stop.load(Ordering::SeqCst) {
            qemu.stop(Duration::from_secs(2));
            return Err(VmError::Interrupted);
        }
        if !spec.interactive && started.elapsed() > spec.timeout {
            qemu.stop(Duration::from_secs(2));
            return Err(VmError::Timeout {
                secs: spec.timeout.as_secs(),
                logs: logs(&servers),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let elapsed = started.elapsed();
    if spec.echo && !spec.interactive {
        echo.pump(&serial_log);
    }
    if !qemu_status.success() {
        return Err(VmError::Qemu {
            status: describe(Some(qemu_status)),
            logs: logs(&servers),
        });
    }
    let serial = std::fs::read(&serial_log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let guest_status = match guest_status(&serial) {
        Some(s) => s,
        None if spec.interactive || spec.script.is_none() => 0,
        None => {
            return Err(VmError::NoVerdict {
                logs: logs(&servers),
            })
        }
    };
    // The servers must have survived the guest's poweroff and take a new client.
    let mut survived = Vec::new();
    for s in servers.iter_mut() {
        let alive = s.child.try_status().is_none() && answers(&s.socket);
        survived.push((s.name.clone(), alive));
    }
    for s in servers.iter_mut() {
        let st = s.child.stop(Duration::from_secs(5));
        debug!("server {} stopped: {}", s.name, describe(st));
    }
    Ok(VmOutcome {
        guest_status,
        serial,
        servers_survived: survived,
        elapsed,
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_parsing() {
        assert_eq!(guest_status("a\nTRUSTDEV-EXIT=3\r\nreboot\n"), Some(3));
        assert_eq!(guest_status("no marker"), None);
    }
}
