//! End-to-end: TDISP in a stock Debian guest, driven from guest user space
//! over the devices' real DOE mailboxes and configuration registers.
//!
//! ONE boot with the NVMe controller behind a pcie-root-port (bound to the
//! Linux nvme driver) and the DMA-copy device on pcie.0, both served with
//! their defaults (IDE capability, TDISP). For each, `trustdev-guest tdisp`
//! (tests/guest/tdisp.sh) runs twice: SPDM session, IDE keys and a SECURE
//! selective stream, LOCK_INTERFACE, the interface report checked against
//! the BARs and MSI-X table/PBA the guest kernel assigned, START (RUN), NVMe
//! I/O in RUN, a locked register touched (ERROR; the report refused: the
//! Command register, then in the second run MSI-X Message Control), STOP
//! (CONFIG_UNLOCKED), teardown; the DMA-copy device a third time after a
//! Function Level Reset (its BAR addresses kept). After each NVMe flow the controller is
//! reset (what the host does before using a device it took back from a
//! TDI: a TDI in ERROR does no DMA, which a busy controller may not
//! survive) and is live again at once, its I/O correct, no I/O ever timed
//! out. The servers' logs show every transition, and the ERROR with its
//! reason.

mod support;

#[test]
fn tdisp_flow_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let script = support::guest_script("tdisp.sh");
    let args = [
        "-d",
        "nvme:size=64M",
        "-d",
        "dma-copy:rciep",
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ];
    // The servers' logs (nvme0, dma-copy1) for the checks below.
    let (run, logs) = support::vm_with_server_logs(&args, &["nvme0", "dma-copy1"]);
    let server_logs = logs.concat();
    run.assert_checks_passed();
    let oks = run.lines("CHECK-OK");
    for what in [
        "namespace",
        "tdisp-nvme ",
        "tdisp-nvme-secure",
        "tdisp-nvme-error",
        "tdisp-nvme-report-refused",
        "tdisp-nvme-stop",
        "tdisp-nvme-io-in-run",
        "tdisp-nvme-after-live",
        "tdisp-nvme-after-io",
        "tdisp-nvme-again ",
        "tdisp-nvme-again-error",
        "tdisp-nvme-again-after-io",
        "tdisp-dma-copy ",
        "tdisp-dma-copy-secure",
        "tdisp-dma-copy-error",
        "tdisp-dma-copy-report-refused",
        "tdisp-dma-copy-stop",
        "tdisp-dma-copy-again ",
        "tdisp-dma-copy-again-error",
        "dma-copy-flr",
        "tdisp-dma-copy-after-flr ",
        "nvme-dmesg-clean",
    ] {
        assert!(
            oks.iter()
                .any(|l| format!("{l} ").starts_with(&format!("CHECK-OK {what}"))),
            "missing check {what:?}:\n{}",
            run.dump()
        );
    }
    // The placements: the NVMe controller behind a root port, the
    // DMA-copy device on pcie.0.
    let devices = run.lines("DEVICES");
    assert_eq!(devices.len(), 1, "{}", run.dump());
    assert!(devices[0].contains("nvme=0000:01:00.0"), "{}", devices[0]);
    assert!(devices[0].contains("dma-copy=0000:00:"), "{}", devices[0]);
    // The servers saw it: every transition, and the ERROR with its reason.
    for (needle, n) in [
        ("TDISP: TDI 01:00.0 locked", 2),
        (
            "TDISP: TDI RUN -> ERROR: locked configuration changed: Command register",
            2,
        ),
        (
            "TDISP: TDI RUN -> ERROR: locked configuration changed: MSI-X Message Control",
            2,
        ),
        ("TDISP: TDI ERROR -> CONFIG_UNLOCKED (STOP)", 5),
        ("TDISP START_INTERFACE_REQUEST for 01:00.0: ok, TDI RUN", 2),
        ("refused in ERROR: TDISP_ERROR InvalidInterfaceState", 5),
    ] {
        assert!(
            server_logs.matches(needle).count() >= n,
            "{n} x {needle:?} expected in the server logs:\n{server_logs}\n{}",
            run.dump()
        );
    }
}
