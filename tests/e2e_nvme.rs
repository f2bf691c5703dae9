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

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NVME_CLI: &str = "/usr/sbin/nvme";

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
    } else if support::skip_requested("TRUSTDEV_SKIP_NVME_CLI", "its nvme-cli checks") {
        // Reported as skipped; the rest of the test runs.
    } else {
        panic!(
            "{NVME_CLI} not found on the host: scripts/test.sh installs Debian's nvme-cli \
             (apt-get install nvme-cli); TRUSTDEV_SKIP_NVME_CLI=1 skips these checks"
        );
    }
    // The server's log shows the shutdown.
    let (run, mut logs) = support::vm_with_server_logs(&args, &["nvme0"]);
    let server_log = logs.remove(0);
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
        "doe-features",
        "spdm-doe",
        "dmesg-no-timeouts-resets-aborts",
    ];
    if have_cli {
        want.extend([
            "nvme-id-ctrl",
            "nvme-id-ns",
            "nvme-smart-log",
            "smart-host-writes",
        ]);
    }
    for w in want {
        assert!(
            oks.iter().any(|l| l.starts_with(&format!("CHECK-OK {w}"))),
            "missing check {w}\n{dump}"
        );
    }
    assert!(
        // 308 K as the kernel reports it: (308 - 273.15) * 1000 m°C.
        oks.iter().any(|l| l == "CHECK-OK hwmon-temperature 34850"),
        "35 C through hwmon: {oks:#?}"
    );
    // SeaBIOS drove the controller before Linux (an admin queue of 64 entries).
    assert!(
        server_log.contains("admin SQ 64 entries"),
        "SeaBIOS probe\n{dump}"
    );
    assert!(
        server_log.contains("number of queues: host asked 2 SQs"),
        "{dump}"
    );
    assert!(server_log.contains("shadow doorbells enabled"), "{dump}");
    assert!(
        server_log.contains(
            "shutdown notification (normal): all namespaces flushed; CSTS.SHST = shutdown complete"
        ),
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

/// The MBR boot sector of tests/guest/nvme_boot.S, assembled (GNU as, see
/// the file): reads LBAs 1-8 through INT 13h, checks a signature at both
/// ends, prints NVME-BOOT-OK on COM1, exits QEMU with isa-debug-exit 0x10.
const BOOT_SECTOR: [u8; 512] = [
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0xfc, 0x88, 0x16,
    0x6f, 0x7c, 0xbe, 0x90, 0x7c, 0xe8, 0x3f, 0x00, 0xb4, 0x42, 0x8a, 0x16, 0x6f, 0x7c, 0xbe, 0x70,
    0x7c, 0xcd, 0x13, 0x72, 0x25, 0xbe, 0x00, 0x80, 0xbf, 0x80, 0x7c, 0xb9, 0x10, 0x00, 0xf3, 0xa6,
    0x75, 0x18, 0xbe, 0xf0, 0x8f, 0xbf, 0x80, 0x7c, 0xb9, 0x10, 0x00, 0xf3, 0xa6, 0x75, 0x0b, 0xbe,
    0xb3, 0x7c, 0xe8, 0x12, 0x00, 0xb0, 0x10, 0xe6, 0xf4, 0xf4, 0xbe, 0xe0, 0x7c, 0xe8, 0x07, 0x00,
    0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0xac, 0x84, 0xc0, 0x74, 0x12, 0x88, 0xc3, 0xba, 0xfd,
    0x03, 0xec, 0xa8, 0x20, 0x74, 0xf8, 0xba, 0xf8, 0x03, 0x88, 0xd8, 0xee, 0xeb, 0xe9, 0xc3, 0x00,
    0x10, 0x00, 0x08, 0x00, 0x00, 0x80, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x54, 0x52, 0x55, 0x53, 0x54, 0x44, 0x45, 0x56, 0x2d, 0x4e, 0x56, 0x4d, 0x45, 0x42, 0x54, 0x21,
    0x4e, 0x56, 0x4d, 0x45, 0x2d, 0x42, 0x4f, 0x4f, 0x54, 0x3a, 0x20, 0x4d, 0x42, 0x52, 0x20, 0x6c,
    0x6f, 0x61, 0x64, 0x65, 0x64, 0x20, 0x62, 0x79, 0x20, 0x53, 0x65, 0x61, 0x42, 0x49, 0x4f, 0x53,
    0x0d, 0x0a, 0x00, 0x4e, 0x56, 0x4d, 0x45, 0x2d, 0x42, 0x4f, 0x4f, 0x54, 0x2d, 0x4f, 0x4b, 0x3a,
    0x20, 0x4c, 0x42, 0x41, 0x20, 0x31, 0x2d, 0x38, 0x20, 0x72, 0x65, 0x61, 0x64, 0x20, 0x74, 0x68,
    0x72, 0x6f, 0x75, 0x67, 0x68, 0x20, 0x49, 0x4e, 0x54, 0x20, 0x31, 0x33, 0x68, 0x0d, 0x0a, 0x00,
    0x4e, 0x56, 0x4d, 0x45, 0x2d, 0x42, 0x4f, 0x4f, 0x54, 0x2d, 0x46, 0x41, 0x49, 0x4c, 0x0d, 0x0a,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x55, 0xaa,
];

/// Signature the boot sector looks for at LBA 1 and at the end of LBA 8.
const BOOT_SIGNATURE: &[u8; 16] = b"TRUSTDEV-NVMEBT!";

/// SeaBIOS boots a disk image on the NVMe namespace: it enables the
/// controller, finds the namespace, reads the MBR and hands INT 13h reads of
/// the boot code to its NVMe driver.
#[test]
fn seabios_boots_from_nvme() {
    if support::skip() {
        return;
    }
    let _g = support::lock();
    let tc = trustdev_devices::vm::toolchain::Toolchain::load(true).expect("QEMU toolchain");
    let dir = std::env::temp_dir().join(format!("trustdev-e2e-nvme-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    let mut disk = vec![0u8; 1 << 20];
    disk[..512].copy_from_slice(&BOOT_SECTOR);
    disk[512..528].copy_from_slice(BOOT_SIGNATURE);
    disk[512 + 4096 - 16..512 + 4096].copy_from_slice(BOOT_SIGNATURE);
    std::fs::write(&img, &disk).unwrap();
    let sock = dir.join("nvme.sock");
    let serial = dir.join("serial.log");
    let srv_log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut server = Command::new(support::trustdev())
        .args(["serve", "nvme", "--socket"])
        .arg(&sock)
        .arg("--file")
        .arg(&img)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(srv_log)
        .spawn()
        .expect("start the NVMe server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dev = format!(
        r#"{{"driver":"vfio-user-pci","id":"nvme0","socket":{{"path":"{}","type":"unix"}},"bus":"rp1","bootindex":1}}"#,
        sock.display()
    );
    let mut qemu = Command::new(&tc.qemu)
        .args([
            "-machine",
            "q35,accel=tcg,memory-backend=mem",
            "-m",
            "256M",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-monitor",
            "none",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-device",
            "pcie-root-port,id=rp1,chassis=1,slot=1,bus=pcie.0",
            "-device",
            &dev,
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start QEMU");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = qemu.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let dump = format!("QEMU status {status:?}\n--- console\n{console}\n--- server log\n{log}");
    assert!(
        console.contains("NVME-BOOT: MBR loaded by SeaBIOS"),
        "{dump}"
    );
    assert!(console.contains("NVME-BOOT-OK"), "{dump}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(33),
        "isa-debug-exit 0x10\n{dump}"
    );
    assert!(log.contains("controller enabled"), "{dump}");
}

/// The same guest checks against a file-backed namespace with 4 KiB blocks
/// and the doorbell page mmapped into QEMU (polled doorbells); afterwards
/// the image on the host holds the guest's ext2 filesystem.
#[test]
fn file_backed_polled_doorbells_4k_blocks() {
    if support::skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("trustdev-e2e-nvme-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    let dev = format!(
        "nvme:file={},size=256M,doorbells=poll,lba-size=4096,queues=4",
        img.display()
    );
    let script = support::guest_script("nvme.sh");
    let run = support::vm(&[
        "-d",
        &dev,
        "--smp",
        "2",
        "--module",
        "ext4",
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ]);
    let image = std::fs::read(&img).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let fails = run.lines("CHECK-FAIL");
    assert!(
        fails.is_empty(),
        "guest checks failed: {fails:#?}\n{}",
        run.dump()
    );
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let oks = run.lines("CHECK-OK");
    for w in [
        "direct-io-0",
        "direct-io-1",
        "per-queue-interrupts",
        "filesystem-remount",
        "dmesg-no-timeouts-resets-aborts",
    ] {
        assert!(
            oks.iter().any(|l| l.starts_with(&format!("CHECK-OK {w}"))),
            "missing check {w}\n{}",
            run.dump()
        );
    }
    assert_eq!(image.len(), 256 << 20);
    // ext2 superblock magic at byte 1024 + 56.
    assert_eq!(
        &image[1024 + 56..1024 + 58],
        &[0x53, 0xef],
        "ext2 on the image"
    );
}
