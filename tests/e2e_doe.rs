//! End-to-end: DOE mailboxes with CMA/SPDM in a stock Debian guest.
//!
//! `doe_cma_spdm_in_a_real_guest`: ONE boot with a DMA-copy device behind a
//! pcie-root-port and one on pcie.0. The guest kernel's DOE core probes both
//! mailboxes at enumeration without an error (doe_features lists discovery,
//! CMA/SPDM and secured CMA/SPDM; dyndbg shows the abort and the discovery
//! walk), function 0 advertises DEVCAP.TEE, and `trustdev-guest spdm`
//! authenticates each device against the root its server exported (chain,
//! CHALLENGE_AUTH, signed measurements) and runs a secured session over the
//! DOE registers through QEMU; a wrong trust anchor is refused. The test
//! prints the kernel's boot-time probe time and the exchange time guest user
//! space sees (printed, not asserted).
//!
//! `spdm_through_qemu_builtin_nvme_doe`: the interop check of the SPDM
//! responder issue. QEMU's own NVMe controller with `spdm_port=N` (one behind
//! a root port, one on pcie.0) forwards its DOE CMA objects over the spdm-emu
//! socket to `trustdev spdm-responder --port N`; the guest kernel lists CMA and
//! secured CMA for both controllers, and `trustdev-guest spdm` completes a
//! session through QEMU's DOE mailbox to our responder.

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DYNDBG: &str = r#"dyndbg="file drivers/pci/doe.c +p""#;

/// The guest's TIMING lines, and the per-message times `trustdev-guest spdm`
/// prints ("  STEP  OK  x.xx ms  detail") for docs/PERFORMANCE.md.
fn print_timings(run: &support::VmRun) {
    for l in run.lines("TIMING") {
        eprintln!("{l}");
    }
    for l in run.serial.lines() {
        let l = l.trim_end();
        if l.starts_with("  ") && l.contains(" OK ") && l.contains(" ms") {
            eprintln!("SPDM-STEP {}", l.trim_start());
        }
    }
}

fn check_all(run: &support::VmRun, bdfs: &[&str], checks: &[&str]) {
    let oks = run.lines("CHECK-OK");
    for bdf in bdfs {
        for what in checks {
            assert!(
                oks.iter()
                    .any(|l| l.starts_with(&format!("CHECK-OK {bdf} {what}"))),
                "missing check {what} for {bdf}:\n{}",
                run.dump()
            );
        }
    }
}

fn devices_line(run: &support::VmRun) -> Vec<String> {
    let devices = run.lines("DEVICES");
    assert_eq!(devices.len(), 1, "{}", run.dump());
    devices[0]
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[test]
fn doe_cma_spdm_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let script = support::guest_script("doe.sh");
    let run = support::vm(&[
        "-d",
        "dma-copy",
        "-d",
        "dma-copy:rciep",
        "--append",
        DYNDBG,
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ]);
    print_timings(&run);
    run.assert_checks_passed();
    let bdfs = devices_line(&run);
    assert_eq!(bdfs.len(), 2, "both devices enumerated: {}", run.dump());
    assert!(bdfs.iter().any(|b| b.starts_with("0000:00:")), "{bdfs:?}");
    assert!(bdfs.iter().any(|b| !b.starts_with("0000:00:")), "{bdfs:?}");
    let bdfs: Vec<&str> = bdfs.iter().map(String::as_str).collect();
    check_all(
        &run,
        &bdfs,
        &[
            "doe-discovery",
            "doe-features",
            "doe-dmesg",
            "doe-no-errors",
            "devcap-tee",
            "spdm version 1.3",
            "spdm-othername",
            "spdm-p256",
            "spdm-wrong-root",
            "doe-bench",
            "doe-features-after",
        ],
    );
    // The report as a user sees it: the chain to the exported root, the
    // CHALLENGE_AUTH signature, signed measurements, the session steps; per
    // device one P-384 (SPDM 1.3) and one P-256 (SPDM 1.2) run, and one run
    // refused for its trust anchor.
    for (needle, per_device) in [
        (
            "verified (root is /etc/trustdev/roots/dma-copy-ecp384.pem)",
            1,
        ),
        (
            "verified (root is /etc/trustdev/roots/dma-copy-ecp256.pem)",
            1,
        ),
        ("CHALLENGE_AUTH signature verified", 2),
        ("4 block(s), signature verified", 2),
        ("#3 version (type 0x86) \"", 2),
        ("UpdateAllKeys, then VerifyNewKey under the new keys", 2),
        ("4 block(s) over the secured session", 2),
        (
            "CERTIFICATE failed: verification failed: certificate: chain root is not trusted",
            1,
        ),
    ] {
        assert_eq!(
            run.serial.matches(needle).count(),
            2 * per_device,
            "{needle:?} {per_device} time(s) per device:\n{}",
            run.serial
        );
    }
    assert_eq!(
        run.stdout
            .matches("survived the guest's poweroff and accepted a new client")
            .count(),
        2,
        "{}",
        run.dump()
    );
}

/// A `trustdev spdm-responder` child, killed (by its pid) when dropped.
struct Responder {
    child: Child,
    port: u16,
}

impl Responder {
    fn start(identity: &std::path::Path, log: &std::path::Path) -> Responder {
        // A free port: bind an ephemeral one and release it.
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let logf = std::fs::File::create(log).expect("responder log");
        let child = Command::new(support::trustdev())
            .args(["spdm-responder", "--port", &port.to_string()])
            .arg("--identity-dir")
            .arg(identity)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("start trustdev spdm-responder");
        let mut r = Responder { child, port };
        // Ready when it accepts a connection (an empty connection is served
        // and closed; the responder keeps listening).
        let t = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!(
                    "trustdev spdm-responder exited ({st}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "trustdev spdm-responder not listening on {port} after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn spdm_through_qemu_builtin_nvme_doe() {
    if support::skip() {
        return;
    }
    let work = std::env::temp_dir().join(format!("trustdev-e2e-doe-qemu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let identity = work.join("identity");
    let a = Responder::start(&identity, &work.join("responder-a.log"));
    let b = Responder::start(&identity, &work.join("responder-b.log"));
    // Both roots (P-384 and P-256) in one PEM for the guest's trust store.
    let mut roots = String::new();
    for algo in ["ecp384", "ecp256"] {
        let p: PathBuf = identity.join(algo).join("root.cert.pem");
        roots.push_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        );
    }
    let roots_file = work.join("roots.pem");
    std::fs::write(&roots_file, roots).unwrap();
    let file_arg = format!(
        "{}:/etc/trustdev/roots/spdm-responder.pem",
        roots_file.display()
    );
    let nvme_rp = format!("nvme,serial=td0,spdm_port={},bus=rp20", a.port);
    let nvme_root = format!("nvme,serial=td1,spdm_port={},bus=pcie.0,addr=0x18", b.port);
    let script = support::guest_script("doe-qemu-nvme.sh");
    let run = support::vm(&[
        "--append",
        DYNDBG,
        "--file",
        &file_arg,
        "--qemu-arg",
        "-device",
        "--qemu-arg",
        "pcie-root-port,id=rp20,chassis=20,slot=20,bus=pcie.0",
        "--qemu-arg",
        "-device",
        "--qemu-arg",
        &nvme_rp,
        "--qemu-arg",
        "-device",
        "--qemu-arg",
        &nvme_root,
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ]);
    drop(a);
    drop(b);
    let logs = format!(
        "--- responder a\n{}\n--- responder b\n{}",
        std::fs::read_to_string(work.join("responder-a.log")).unwrap_or_default(),
        std::fs::read_to_string(work.join("responder-b.log")).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&work);
    print_timings(&run);
    run.assert_checks_passed_with(&format!("\n{logs}"));
    let bdfs = devices_line(&run);
    assert_eq!(bdfs.len(), 2, "both controllers enumerated: {}", run.dump());
    assert!(bdfs.iter().any(|b| b.starts_with("0000:00:")), "{bdfs:?}");
    assert!(bdfs.iter().any(|b| !b.starts_with("0000:00:")), "{bdfs:?}");
    let bdfs: Vec<&str> = bdfs.iter().map(String::as_str).collect();
    check_all(
        &run,
        &bdfs,
        &[
            "doe-features",
            "doe-no-errors",
            "spdm version 1.3",
            "spdm-1.2-json",
        ],
    );
    // The kernel's pci_cma_construct_san() string for QEMU's NVMe
    // controller (no Device Serial Number capability).
    let san =
        "leaf otherName 2.23.147: Vendor=1b36:Device=0010:CC=010802:REV=02:SSVID=1af4:SSID=1100";
    assert_eq!(
        run.serial
            .lines()
            .filter(|l| l.trim_end().ends_with(san))
            .count(),
        2,
        "{}",
        run.serial
    );
}
