//! End-to-end: the accelerator in a stock Debian guest under QEMU 11.1 with
//! intel-iommu in scalable mode (pasid-bits=20, device-iotlb=on), one
//! device behind a pcie-root-port and one on pcie.0, in ONE boot. The guest
//! (tests/guest/accel.sh) checks enumeration and capabilities, what the
//! IOMMU driver wrote to PASID/ATS/PRI, DOE + CMA/SPDM authentication, every
//! operation from user space through vfio-pci with MSI-X and polled, and
//! how far uio_pci_generic_sva gets (built out of tree by
//! qemu-configs/provision-kmod.sh); the host checks the verdicts.

mod support;

#[test]
fn accelerator_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let ko = support::uio_sva_module();
    let module = format!("{ko}:/lib/modules/uio_pci_generic_sva.ko");
    let script = support::guest_script("accel.sh");
    let (run, logs) = support::vm_with_server_logs(
        &[
            "-d",
            "accel",
            "-d",
            // A security option through `vm -d` (every kind takes them).
            "accel:rciep,dsn=7d0cacc1e2e00002",
            "--iommu",
            "--qemu-arg",
            "-global",
            "--qemu-arg",
            "intel-iommu.pasid-bits=20",
            "--qemu-arg",
            "-global",
            "--qemu-arg",
            "intel-iommu.device-iotlb=on",
            "--file",
            &module,
            "--script",
            script.to_str().unwrap(),
            "--timeout",
            "900",
        ],
        &["accel0", "accel1"],
    );
    run.assert_checks_passed();
    let devices = run.lines("DEVICES");
    let bdfs: Vec<String> = devices
        .first()
        .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
        .unwrap_or_default();
    assert_eq!(
        bdfs.len(),
        2,
        "both accelerators enumerated: {}",
        run.dump()
    );
    assert!(
        bdfs.iter().any(|b| b.starts_with("0000:00:")),
        "one on pcie.0"
    );
    // The DSN given with `-d accel:rciep,dsn=...` is what the guest reads
    // from the function on pcie.0; the other keeps its own.
    for bdf in &bdfs {
        let dsn = run.lines(&format!("DSN {bdf} "));
        let given = dsn.iter().any(|l| l.ends_with(" 7d0cacc1e2e00002"));
        assert_eq!(given, bdf.starts_with("0000:00:"), "{dsn:?}");
    }
    let oks = run.lines("CHECK-OK");
    for bdf in &bdfs {
        for what in [
            "bar0-mem32-nonprefetch",
            "msix-vectors",
            "devcap2-ee-prefix",
            "ext-caps",
            "pasid-cap-20bit-exec-priv",
            "pasid-enabled-by-iommu",
            "ats-enabled-by-iommu",
            "pri-left-disabled-stopped",
            "doe-features",
            "spdm",
            "accel-msix",
            "accel-poll",
            "accel-bench-iova",
            "sva-bound",
        ] {
            assert!(
                oks.iter()
                    .any(|l| l.starts_with(&format!("CHECK-OK {bdf} {what}"))),
                "missing check {what} for {bdf}:\n{}",
                run.dump()
            );
        }
        let msix = oks
            .iter()
            .find(|l| l.starts_with(&format!("CHECK-OK {bdf} accel-msix")))
            .unwrap();
        assert!(
            msix.contains("10 operations verified")
                && msix.contains("MSI-X interrupts on 8 vectors"),
            "{msix}"
        );
        // Where SVA stops with QEMU 11.1.3's VT-d: open() fails with EINVAL
        // because iommu_sva_bind_device() returned -ENODEV (no SMPWC).
        let limit = run.lines(&format!("SVA-LIMIT {bdf}"));
        assert_eq!(
            limit,
            vec![format!(
                "SVA-LIMIT {bdf} open=EINVAL iommu_sva_bind_device=-19 smpwc=0"
            )],
            "{}",
            run.dump()
        );
    }
    // What the guest kernel wrote to PASID/ATS/PRI control, as each device
    // logged it: the IOMMU driver enabled PASID (exec, priv) and ATS at
    // probe; vfio-pci's reset cleared them and the kernel restored them.
    for (name, log) in ["accel0", "accel1"].iter().zip(&logs) {
        let writes: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" control <- "))
            .map(|l| l.split_once("] ").map_or(l, |(_, r)| r))
            .collect();
        eprintln!(
            "{name}: translation control writes:\n  {}",
            writes.join("\n  ")
        );
        assert!(
            writes
                .iter()
                .any(|w| w.contains("PASID control <- 0x0007 (enable, exec, priv)")),
            "{name}: {writes:#?}"
        );
        assert!(
            writes
                .iter()
                .any(|w| w.contains("ATS control <- 0x8000 (enable true, STU 4096 bytes)")),
            "{name}: {writes:#?}"
        );
        assert!(
            !writes.iter().any(|w| w.contains("PRI control")),
            "PRI is enabled only for SVA, which never gets that far: {writes:#?}"
        );
    }
    let iommu = run.lines("IOMMU ecap=");
    assert!(
        iommu
            .first()
            .is_some_and(|l| l.contains("smpwc=0") && l.contains("pasid=1")),
        "{iommu:?}"
    );
    assert_eq!(
        run.stdout
            .matches("survived the guest's poweroff and accepted a new client")
            .count(),
        2,
        "{}",
        run.dump()
    );
}
