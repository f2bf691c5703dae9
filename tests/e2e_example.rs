//! End-to-end: a stock Debian guest kernel under QEMU 11.1's vfio-user client
//! against the DMA-copy example device, once behind a pcie-root-port (an
//! Endpoint) and once on pcie.0 (an RCiEP), in ONE boot. The guest checks IDs,
//! BARs and capabilities (extended ones included) as its kernel sees them, and
//! drives DMA copies from user space through vfio-pci with MSI-X completion;
//! the host checks the verdicts, QEMU's clean exit and that both servers
//! survived the guest's poweroff.

mod support;

#[test]
fn example_device_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let script = support::guest_script("example.sh");
    let script = script.to_str().unwrap();
    let run = support::vm(&[
        "-d",
        "dma-copy",
        "-d",
        "dma-copy:rciep",
        "--iommu",
        "--script",
        script,
        "--timeout",
        "600",
    ]);
    run.assert_checks_passed();
    let oks = run.lines("CHECK-OK");
    let devices = run.lines("DEVICES");
    assert_eq!(devices.len(), 1, "{}", run.dump());
    let bdfs: Vec<&str> = devices[0].split_whitespace().skip(1).collect();
    assert_eq!(bdfs.len(), 2, "both devices enumerated: {}", run.dump());
    assert!(
        bdfs.iter().any(|b| b.starts_with("0000:00:")),
        "one on pcie.0: {bdfs:?}"
    );
    assert!(
        bdfs.iter().any(|b| !b.starts_with("0000:00:")),
        "one behind a root port: {bdfs:?}"
    );
    for bdf in &bdfs {
        for what in [
            "config-size",
            "bar2-64bit-prefetch",
            "ext-caps",
            "dsn",
            "doe-discovery",
            "doe-no-errors",
            "pcie-type",
            "msix-vectors",
            "dma-copy",
        ] {
            assert!(
                oks.iter()
                    .any(|l| l.starts_with(&format!("CHECK-OK {bdf} {what}"))),
                "missing check {what} for {bdf}:\n{}",
                run.dump()
            );
        }
        let copy = oks
            .iter()
            .find(|l| l.starts_with(&format!("CHECK-OK {bdf} dma-copy")))
            .unwrap();
        assert!(
            copy.contains("verified") && copy.contains("MSI-X"),
            "{copy}"
        );
    }
    assert!(
        run.stdout.contains("script exit status 0"),
        "{}",
        run.dump()
    );
    assert_eq!(
        run.stdout
            .matches("survived the guest's poweroff and accepted a new client")
            .count(),
        2,
        "{}",
        run.dump()
    );
    if !support::patched_qemu() {
        assert!(run.stdout.contains("QEMU 11.1"), "{}", run.stdout);
    }
}
