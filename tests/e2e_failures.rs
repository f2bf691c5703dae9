//! End-to-end failure handling of `trustdev vm`: a guest that hangs, a device
//! server that dies, QEMU failing to start. Each must end with a clear error
//! carrying the serial and server log tails, and leave no process behind.

mod support;

use std::time::{Duration, Instant};

/// Bound of the interactive run: boot (~10 s, a minute under load), two
/// commands, poweroff.
const INTERACTIVE_LIMIT_S: u64 = 240;

fn no_strays(run_pid: u32, what: &str) {
    // Children die with the runner; give the kernel a moment to reap.
    for _ in 0..100 {
        if support::children_of(run_pid).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let strays = support::processes_mentioning(&format!("trustdev-vm-{run_pid}-"));
    assert!(
        strays.is_empty(),
        "{what}: stray processes left: {strays:#?}"
    );
}

fn script(tag: &str, body: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("trustdev-e2e-{}-{tag}.sh", std::process::id()));
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    p
}

#[test]
fn hung_guest_times_out_with_logs_and_no_strays() {
    if support::skip() {
        return;
    }
    let s = script("hang", "echo guest-is-hanging; sleep 1000");
    let _g = support::lock();
    let log = std::env::temp_dir().join(format!("trustdev-e2e-hang-{}.log", std::process::id()));
    let child = support::spawn_vm(
        &[
            "-d",
            "dma-copy",
            "--script",
            s.to_str().unwrap(),
            "--timeout",
            "40",
        ],
        &log,
    );
    let pid = child.id();
    // The runner's own 40 s timeout must end it; 240 s bounds a runner that hangs.
    let out = support::wait_with_timeout(child, Duration::from_secs(240), "trustdev vm (hang)");
    let run = support::finish(out, &log);
    assert_eq!(run.code, Some(3), "{}", run.dump());
    assert!(
        run.stderr.contains("did not finish within 40 s"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains("guest-is-hanging"),
        "serial tail shown: {}",
        run.dump()
    );
    assert!(
        run.stderr.contains("dma-copy0.log"),
        "server log tail shown: {}",
        run.dump()
    );
    no_strays(pid, "hang");
}

#[test]
fn dying_server_is_reported_and_everything_is_torn_down() {
    if support::skip() {
        return;
    }
    let s = script("die", "echo waiting-for-the-server-to-die; sleep 1000");
    let _g = support::lock();
    let log = std::env::temp_dir().join(format!("trustdev-e2e-die-{}.log", std::process::id()));
    let mut child = support::spawn_vm(
        &[
            "-d",
            "dma-copy",
            "--script",
            s.to_str().unwrap(),
            "--timeout",
            "300",
        ],
        &log,
    );
    let pid = child.id();
    // Wait until the guest runs its script, then SIGKILL the device server.
    let deadline = Instant::now() + Duration::from_secs(240);
    let server = loop {
        let serial = std::fs::read_to_string(&log).unwrap_or_default();
        if serial.contains("waiting-for-the-server-to-die") {
            let kids = support::children_of(pid);
            if let Some((spid, _)) = kids.iter().find(|(_, c)| c.contains(" serve dma-copy ")) {
                break *spid;
            }
        }
        assert!(Instant::now() < deadline, "guest never started its script");
        assert!(
            child.try_wait().unwrap().is_none(),
            "trustdev vm ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = support::wait_with_timeout(child, Duration::from_secs(120), "trustdev vm (die)");
    let run = support::finish(out, &log);
    assert_eq!(run.code, Some(3), "{}", run.dump());
    assert!(
        run.stderr.contains("device server dma-copy0 died while the guest was running (killed by signal 9 (SIGKILL))"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains("waiting-for-the-server-to-die"),
        "{}",
        run.dump()
    );
    no_strays(pid, "server death");
}

#[test]
fn qemu_failing_to_start_is_reported() {
    if support::skip() {
        return;
    }
    let s = script("qemu-fail", "exit 0");
    let run = support::vm(&[
        "-d",
        "dma-copy",
        "--script",
        s.to_str().unwrap(),
        "--qemu-arg",
        "-no-such-qemu-option",
    ]);
    assert_eq!(run.code, Some(3), "{}", run.dump());
    assert!(
        run.stderr.contains("QEMU failed (exit code 1)"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains("no-such-qemu-option"),
        "QEMU's own message shown: {}",
        run.dump()
    );
}

#[test]
fn guest_verdict_is_the_exit_status() {
    if support::skip() {
        return;
    }
    let s = script("verdict", "echo failing-on-purpose; exit 7");
    let run = support::vm(&["-d", "dma-copy:rciep", "--script", s.to_str().unwrap()]);
    assert_eq!(run.code, Some(7), "{}", run.dump());
    assert!(
        run.stdout.contains("script exit status 7"),
        "{}",
        run.dump()
    );
    assert!(run.serial.contains("failing-on-purpose"));
}

/// `trustdev vm -i` has no timeout of its own (a person is typing): the test
/// bounds it, so a shell that never reads our `exit` fails the test instead
/// of hanging CI. It types only once the shell's prompt is on the console
/// (input sent while the kernel still boots can lose characters).
#[test]
fn interactive_console_takes_commands() {
    if support::skip() {
        return;
    }
    use std::io::Write;
    let _g = support::lock();
    let mut child = std::process::Command::new(support::trustdev())
        .args(["vm", "-d", "dma-copy", "-i"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(INTERACTIVE_LIMIT_S);
    let mut stdin = child.stdin.take().unwrap();
    let out = support::Collector::start(child.stdout.take());
    let err = support::Collector::start(child.stderr.take());
    // Waits for `needle` after `from` in the console; false at the deadline
    // or when trustdev vm ended.
    let mut appeared = |needle: &str, from: &str| loop {
        let text = out.text();
        if text
            .split_once(from)
            .is_some_and(|(_, after)| after.contains(needle))
        {
            return true;
        }
        if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let shell = "interactive shell; exit it to power off";
    let mut typed = appeared("/ # ", shell);
    if typed {
        stdin.write_all(b"echo INTERACTIVE-$((6*7))-OK\n").unwrap();
        typed = appeared("INTERACTIVE-42-OK", shell);
    }
    if typed {
        stdin.write_all(b"exit\n").unwrap();
    }
    let status = support::wait_until(&mut child, deadline);
    drop(stdin);
    let (stdout, stderr) = (out.finish(), err.finish());
    let stdout = String::from_utf8_lossy(&stdout);
    let dump = format!("{stdout}\n--- stderr\n{}", String::from_utf8_lossy(&stderr));
    assert!(
        status.is_some(),
        "trustdev vm -i: no result within {INTERACTIVE_LIMIT_S} s; killed\n{dump}"
    );
    assert!(typed, "the shell ran our command:\n{dump}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{dump}");
    assert!(stdout.contains("survived the guest's poweroff"), "{dump}");
}
