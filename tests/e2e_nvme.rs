//! End-to-end: a stock Debian guest kernel (2 vCPUs) under QEMU 11.1's
//! vfio-user client against trustdev's NVMe controller. SeaBIOS probes the
//! controller first; then the Linux nvme driver brings it live with one I/O
//! queue per CPU and shadow doorbells; the guest writes O_DIRECT patterns
//! through both queues and reads them back crosswise, discards, builds an
//! ext2 filesystem, remounts it and re-reads it, reads the temperature
//! through hwmon, and runs nvme-cli (id-ctrl, id-ns, smart-log) when the
//! host has it. At poweroff the kernel shuts the controller down: the
//! server must log a completed shutdown notification.
//!
//! A power cut: the server runs inside a guest with its image on a virtio
//! disk, the guest is killed, and every flushed (or write-through) block
//! must be in the disk image while unflushed ones are gone.

#[path = "../devices/tests/nvme_common/driver.rs"]
mod nvme_driver;
mod support;

use std::path::{Path, PathBuf};
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
    run.assert_checks_passed_with(&format!("\n--- server log\n{server_log}"));
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
    run.assert_checks_passed();
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

/// Set (to the guest's socket directory) when this test binary runs inside
/// the power-cut guest as the NVMe driver.
const POWERCUT_CLIENT: &str = "TRUSTDEV_POWERCUT_CLIENT";
/// Size of each power-cut disk.
const POWERCUT_DISK: u64 = 64 << 20;
/// A chunk of the power-cut test's writes.
const PC_CHUNK: usize = 32 * 1024;
/// Where the FUA write goes (beyond the chunks).
const PC_FUA_LBA: u64 = 40_000;

/// 64 chunk LBAs scattered over the first 16 MiB; the first `n`.
fn pc_lbas(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(|i| (i * 7919 % 512) * (PC_CHUNK as u64 / 512))
}

/// The driver inside the guest: writes and flushes through both servers,
/// prints POWERCUT-READY, then stays connected until the power cut.
fn powercut_client(dir: &Path) -> ! {
    use nvme_driver::{connect, pattern};
    use trustdev_devices::nvme::spec::Status;
    // Off the test harness's "test ... " line.
    println!();
    let (mut wb, _v) = connect(&dir.join("wb.sock"), 16 << 20);
    wb.create_io_queues(2, 64).unwrap();
    for (i, lba) in pc_lbas(64).enumerate() {
        let q = 1 + (i % 2) as u16;
        wb.write_blocks(q, 1, lba, &pattern(lba, 1, PC_CHUNK))
            .unwrap();
    }
    wb.flush(1, 1).unwrap();
    println!("POWERCUT-INFO write-back: generation 1 written and flushed");
    for lba in pc_lbas(32) {
        wb.write_blocks(2, 1, lba, &pattern(lba, 2, PC_CHUNK))
            .unwrap();
    }
    wb.flush(2, 0xffff_ffff).unwrap();
    println!("POWERCUT-INFO write-back: generation 2 written and flushed (all namespaces)");
    let buf = wb.mem.alloc(4096, 4096);
    wb.mem.write(buf, &pattern(PC_FUA_LBA, 4, 4096));
    let mut fua = wb.rw_command(true, 1, PC_FUA_LBA, buf, 8);
    fua.cdw[2] |= 1 << 30;
    let c = wb.io_cmd(1, fua).unwrap();
    assert!(
        Status(c.status).is_success(),
        "FUA write: {}",
        Status(c.status)
    );
    println!("POWERCUT-INFO write-back: FUA write completed");
    for lba in pc_lbas(8) {
        wb.write_blocks(1, 1, lba, &pattern(lba, 3, PC_CHUNK))
            .unwrap();
    }
    println!("POWERCUT-INFO write-back: generation 3 written, not flushed");
    let (mut wt, _v2) = connect(&dir.join("wt.sock"), 16 << 20);
    wt.create_io_queues(1, 64).unwrap();
    for lba in pc_lbas(32) {
        wt.write_blocks(1, 1, lba, &pattern(lba, 5, PC_CHUNK))
            .unwrap();
    }
    println!("POWERCUT-INFO write-through: generation 5 written, not flushed");
    println!("POWERCUT-READY");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A copy of `exe` without debug information (smaller initramfs), or
/// `exe` itself when `strip` is not there.
fn stripped(exe: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(exe)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        out
    } else {
        exe.to_path_buf()
    }
}

/// Power cut: trustdev's NVMe server runs inside a guest, its namespaces on
/// virtio disks (ordinary write-back cache; the guest's page cache is the
/// volatile cache) backed by image files here, driven by this test binary
/// as a user-space NVMe driver in the guest. When the driver has written
/// and flushed, QEMU is SIGKILLed: the guest's unsynced page cache dies with
/// it, what the server synced reached the image files. Every flushed, FUA
/// and write-through block must be there; unflushed ones must not (else
/// the setup could not tell a Flush that syncs from one that does not).
#[test]
fn nvme_power_cut() {
    if let Some(dir) = std::env::var_os(POWERCUT_CLIENT) {
        powercut_client(Path::new(&dir));
    }
    if support::skip() {
        return;
    }
    use nvme_driver::pattern;
    let _g = support::lock();
    let dir = std::env::temp_dir().join(format!("trustdev-e2e-powercut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (wb, wt) = (dir.join("wb.img"), dir.join("wt.img"));
    for img in [&wb, &wt] {
        std::fs::File::create(img)
            .unwrap()
            .set_len(POWERCUT_DISK)
            .unwrap();
    }
    let server = stripped(&support::trustdev(), &dir, "trustdev");
    let client = stripped(&std::env::current_exe().unwrap(), &dir, "nvme-powercut");
    let script = support::guest_script("nvme_powercut.sh");
    let drive = |img: &Path, id: &str| {
        format!(
            "file={},if=none,id={id},format=raw,cache=writeback",
            img.display()
        )
    };
    let (wb_drive, wt_drive) = (drive(&wb, "wb"), drive(&wt, "wt"));
    let client_bin = format!("{}:/usr/local/bin/nvme-powercut", client.display());
    let args = [
        "--script",
        script.to_str().unwrap(),
        "--module",
        "virtio_blk",
        "--bin",
        server.to_str().unwrap(),
        "--bin",
        &client_bin,
        "--qemu-arg=-drive",
        &format!("--qemu-arg={wb_drive}"),
        "--qemu-arg=-device",
        "--qemu-arg=virtio-blk-pci,drive=wb",
        "--qemu-arg=-drive",
        &format!("--qemu-arg={wt_drive}"),
        "--qemu-arg=-device",
        "--qemu-arg=virtio-blk-pci,drive=wt",
        "--timeout",
        "600",
    ];
    let log = dir.join("serial.log");
    let mut child = support::spawn_vm(&args, &log);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(400);
    let killed = loop {
        let serial = std::fs::read_to_string(&log).unwrap_or_default();
        if serial.contains("POWERCUT-READY") {
            let qemu = support::children_of(pid)
                .into_iter()
                .find(|(_, c)| c.contains("qemu-system"));
            if let Some((qpid, _)) = qemu {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(qpid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                break true;
            }
        }
        if serial.contains("POWERCUT-FAIL")
            || Instant::now() > deadline
            || child.try_wait().unwrap().is_some()
        {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let run = support::finish(out, &log);
    let wb_img = std::fs::read(&wb).unwrap_or_default();
    let wt_img = std::fs::read(&wt).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        killed,
        "the guest never reported POWERCUT-READY\n{}",
        run.dump()
    );
    assert!(
        !run.serial.contains("TRUSTDEV-EXIT"),
        "the guest ended on its own instead of losing power\n{}",
        run.dump()
    );
    for l in run.lines("POWERCUT-INFO") {
        println!("{l}");
    }
    let at = |img: &[u8], lba: u64, len: usize| img[lba as usize * 512..][..len].to_vec();
    // Generation 3 (chunks 0..8) was never flushed: the power cut must have
    // taken it, leaving generation 2; else this setup could not tell a
    // Flush that syncs from one that does not.
    let mut lost = Vec::new();
    let mut unflushed_kept = 0;
    for (i, lba) in pc_lbas(64).enumerate() {
        let got = at(&wb_img, lba, PC_CHUNK);
        if i < 8 && got == pattern(lba, 3, PC_CHUNK) {
            unflushed_kept += 1;
            continue;
        }
        let want = if i < 32 { 2 } else { 1 };
        if got != pattern(lba, want, PC_CHUNK) {
            lost.push(format!(
                "write-back LBA {lba}: generation {want} (flushed) missing"
            ));
        }
    }
    assert_eq!(
        unflushed_kept,
        0,
        "unflushed writes reached the disk: the power cut did not drop the guest's cache\n{}",
        run.dump()
    );
    if at(&wb_img, PC_FUA_LBA, 4096) != pattern(PC_FUA_LBA, 4, 4096) {
        lost.push(format!(
            "write-back LBA {PC_FUA_LBA}: the FUA write is missing"
        ));
    }
    for lba in pc_lbas(32) {
        if at(&wt_img, lba, PC_CHUNK) != pattern(lba, 5, PC_CHUNK) {
            lost.push(format!(
                "write-through LBA {lba}: a completed write is missing"
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "durable data lost at the power cut:\n  {}\n{}",
        lost.join("\n  "),
        run.dump()
    );
}
