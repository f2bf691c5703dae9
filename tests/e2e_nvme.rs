//! End-to-end: a stock Debian guest kernel (2 vCPUs) under QEMU 11.1's
//! vfio-user client against trustdev's NVMe controller. SeaBIOS probes the
//! controller first; then the Linux nvme driver brings it live with one I/O
//! queue per CPU and shadow doorbells; the guest writes O_DIRECT patterns
//! through both queues and reads them back crosswise, discards, builds an
//! ext2 filesystem, remounts it and re-reads it, reads the temperature
//! through hwmon, and runs nvme-cli (id-ctrl, id-ns, smart-log) when the
//! host has it. At poweroff the kernel shuts the controller down: the
//! server must log a completed shutdown notification.

mod support;

use std::path::{Path, PathBuf};

const NVME_CLI: &str = "/usr/sbin/nvme";

fn kept_dir(stderr: &str) -> Option<PathBuf> {
    stderr
        .lines()
        .find_map(|l| l.split_once("logs kept in ").map(|(_, d)| PathBuf::from(d.trim())))
}

#[test]
fn nvme_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let script = support::guest_script("nvme.sh");
    let script = script.to_str().unwrap();
    let mut args = vec![
        "-d",
        "nvme:size=256M,queues=8",
        "--smp",
        "2",
        "--module",
        "ext4",
        "--script",
        script,
        "--timeout",
        "600",
    ];
    let have_cli = Path::new(NVME_CLI).exists();
    if have_cli {
        args.extend(["--bin", NVME_CLI]);
    } else {
        eprintln!(
            "NOTE: {NVME_CLI} not found on the host (apt-get install nvme-cli): \
             the nvme-cli checks (id-ctrl, id-ns, smart-log) are not run"
        );
    }
    let run = {
        let _g = support::lock();
        let log = std::env::temp_dir().join(format!("trustdev-e2e-nvme-{}.log", std::process::id()));
        let out = support::vm_command(&args, &log)
            .env("TRUSTDEV_KEEP", "1")
            .env("RUST_LOG", "info")
            .output()
            .expect("run trustdev vm");
        support::finish(out, &log)
    };
    // The server's log (kept by TRUSTDEV_KEEP) shows the shutdown.
    let dir = kept_dir(&run.stderr);
    let server_log = dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("nvme0.log")).ok())
        .unwrap_or_default();
    if let Some(d) = &dir {
        let _ = std::fs::remove_dir_all(d);
    }
    let dump = format!("{}\n--- server log\n{server_log}", run.dump());
    let fails = run.lines("CHECK-FAIL");
    assert!(fails.is_empty(), "guest checks failed: {fails:#?}\n{dump}");
    assert_eq!(run.code, Some(0), "{dump}");
    let oks = run.lines("CHECK-OK");
    let mut want = vec![
        "namespace",
        "pci-class",
        "controller-live",
        "io-queues",
        "direct-io-0",
        "direct-io-1",
        "direct-io-2",
        "per-queue-interrupts",
        "discard-zeroes",
        "mkfs",
        "filesystem-remount",
        "hwmon-temperature",
    ];
    if have_cli {
        want.extend(["nvme-id-ctrl", "nvme-id-ns", "nvme-smart-log", "smart-host-writes"]);
    }
    for w in want {
        assert!(
            oks.iter().any(|l| l.starts_with(&format!("CHECK-OK {w}"))),
            "missing check {w}\n{dump}"
        );
    }
    assert!(
        oks.iter().any(|l| l.starts_with("CHECK-OK hwmon-temperature 35")),
        "35 C through hwmon: {oks:#?}"
    );
    // SeaBIOS drove the controller before Linux (an admin queue of 64 entries).
    assert!(server_log.contains("admin SQ 64 entries"), "SeaBIOS probe\n{dump}");
    assert!(server_log.contains("number of queues: host asked 2 SQs"), "{dump}");
    assert!(server_log.contains("shadow doorbells enabled"), "{dump}");
    assert!(
        server_log.contains("shutdown notification (normal): all namespaces flushed; CSTS.SHST = shutdown complete"),
        "clean shutdown at poweroff\n{dump}"
    );
    assert!(
        run.stdout
            .contains("survived the guest's poweroff and accepted a new client"),
        "{dump}"
    );
    for l in run.lines("ID-CTRL").iter().chain(run.lines("SMART").iter()) {
        println!("{l}");
    }
}
