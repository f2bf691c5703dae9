//! End-to-end: the patched QEMU (qemu-configs/patches, `trustdev vm --qemu
//! patched`) under a stock Debian 7.3 guest kernel, against the stock QEMU
//! 11.1 as the control.
//!
//! - pcie-root-port with `x-ide-sel-streams`: the kernel's pci_ide_init()
//!   parses the root port's IDE capability at boot (it writes the reserved
//!   Stream ID 255 into every idle stream), and the registers behave as PCIe
//!   r6.2 section 7.9.26 says; stock QEMU's root port has no IDE capability.
//! - intel-iommu for SVA: ECAP.SMPWC set next to PASID, first-stage
//!   translation, page requests and a device IOTLB, so Linux's
//!   intel_svm_check() can mark the IOMMU SVM-capable; stock QEMU 11.1
//!   leaves SMPWC clear.
//! - vfio-user DMA through messages (guest memory the server cannot map)
//!   with the base's DMA_READ/DMA_WRITE layout fix.
//!
//! The first `--qemu patched` run builds QEMU (provision-qemu-patched.sh,
//! several minutes once; scripts/test.sh does it before the tests).

mod support;

/// The value of `FACT <name> <value>` in the guest's output.
fn fact(run: &support::VmRun, name: &str) -> Option<String> {
    let prefix = format!("FACT {name} ");
    run.lines(&prefix)
        .first()
        .map(|l| l[prefix.len()..].to_string())
}

fn expect_fact(run: &support::VmRun, name: &str, want: &str) {
    assert_eq!(
        fact(run, name).as_deref(),
        Some(want),
        "FACT {name}\n{}",
        run.dump()
    );
}

fn ide_and_iommu_facts(qemu: &str) -> support::VmRun {
    let script = support::guest_script("qemu-patched.sh");
    let run = support::vm(&[
        "--qemu",
        qemu,
        "-d",
        "dma-copy",
        "--sva",
        "--script",
        script.to_str().unwrap(),
    ]);
    assert!(
        run.stdout.contains("script exit status 0"),
        "{}",
        run.dump()
    );
    run
}

#[test]
fn patched_root_port_has_ide_and_the_iommu_can_do_sva() {
    if support::skip() {
        return;
    }
    let run = ide_and_iommu_facts("patched");
    assert!(
        run.stdout.contains("trustdev patch series")
            || run.stdout.contains("[TRUSTDEV_QEMU_PATCHED]"),
        "not the patched QEMU: {}",
        run.stdout
    );
    // The root port's IDE capability, after AER (0x100) and ACS (0x148).
    let ext = fact(&run, "rp-ext-caps").unwrap_or_default();
    assert!(ext.contains("0030@150"), "{ext}\n{}", run.dump());
    // Selective streams, selective IDE for config requests, AES-GCM-256,
    // 4 streams; no Link IDE, not an IDE_KM responder.
    expect_fact(&run, "ide-cap", "00030082");
    expect_fact(&run, "ide-ctl", "00000000");
    expect_fact(&run, "ide-streams", "4");
    expect_fact(&run, "ide-addr-assoc", "2");
    // pci_ide_init() accepted the port: reserved Stream ID 255 in every idle
    // stream (it writes nothing into a capability it ignores).
    expect_fact(&run, "ide-boot-ctl", "ff000000 ff000000 ff000000 ff000000");
    expect_fact(&run, "available-secure-streams", "256");
    // Enabled with AES-GCM-256: SECURE (no IDE partner below the port);
    // an unsupported algorithm: INSECURE.
    expect_fact(&run, "sel-enable", "ctl=05000001 sts=00000002");
    expect_fact(&run, "sel-bad-alg", "ctl=05004001 sts=00000000");
    // Writable control bits only: EN, CFG_EN, ALG, TC, DEFAULT, ID.
    expect_fact(&run, "sel-ctl-ones", "ff7fc201");
    // Stream State is RO, the integrity-fail bit RW1C.
    expect_fact(&run, "sel-sts-ones", "00000000");
    expect_fact(&run, "sel-disable", "sts=00000000");
    // RID association: limit 23:8; valid, base 23:8, segment 31:24.
    expect_fact(&run, "sel-rid-ones", "00ffff00 ffffff01");
    // Address association: valid, base/limit 31:20; upper halves.
    expect_fact(&run, "sel-addr-ones", "ffffff01 ffffffff ffffffff");
    expect_fact(&run, "ro-after-ones", "cap=00030082 selcap=00000002");
    expect_fact(&run, "sel-restored", "ff000000");
    // Everything Linux 7.3's SVA path checks on the IOMMU.
    expect_fact(
        &run,
        "ecap-bits",
        "SMPWC=1 FLTS=1 SMTS=1 PDS=1 PASID=1 NWFS=1 PRS=1 DT=1",
    );
    expect_fact(&run, "cap-bits", "FS1GP=1 FS5LP=0");
    expect_fact(&run, "svm-disabled", "0");
}

#[test]
fn stock_qemu_reports_the_limits_the_patches_remove() {
    if support::skip() {
        return;
    }
    let run = ide_and_iommu_facts("stock");
    assert!(run.stdout.contains("QEMU 11.1"), "{}", run.stdout);
    let ext = fact(&run, "rp-ext-caps").unwrap_or_default();
    assert!(
        !ext.contains("0030@"),
        "stock root port with IDE? {ext}\n{}",
        run.dump()
    );
    assert_eq!(fact(&run, "ide-cap"), None, "{}", run.dump());
    // The same SVA setup (svm=on), SMPWC clear: intel_svm_check() returns
    // before marking the IOMMU SVM-capable, so iommu_sva_bind_device()
    // fails with -ENODEV for every device.
    expect_fact(
        &run,
        "ecap-bits",
        "SMPWC=0 FLTS=1 SMTS=1 PDS=1 PASID=1 NWFS=1 PRS=1 DT=1",
    );
}

#[test]
fn dma_messages_with_unshared_guest_memory() {
    if support::skip() {
        return;
    }
    // Guest RAM QEMU cannot share (no fd in DMA_MAP): every device DMA is a
    // VFIO_USER_DMA_READ/DMA_WRITE message. Unpatched 10.2.2 misplaces the
    // data of these messages by 4 bytes and the copy fails.
    let script = support::guest_script("example.sh");
    let run = support::vm(&[
        "--qemu",
        "patched",
        "-d",
        "dma-copy:rciep",
        "--iommu",
        "--qemu-arg",
        "-object",
        "--qemu-arg",
        "memory-backend-ram,id=unshared,size=512M",
        "--qemu-arg",
        "-machine",
        "--qemu-arg",
        "memory-backend=unshared",
        "--script",
        script.to_str().unwrap(),
    ]);
    let copy = run
        .lines("CHECK-OK ")
        .into_iter()
        .find(|l| l.contains(" dma-copy "))
        .unwrap_or_default();
    assert!(
        copy.contains("verified") && copy.contains("MSI-X"),
        "{copy}\n{}",
        run.dump()
    );
    assert!(
        run.stdout.contains("script exit status 0"),
        "{}",
        run.dump()
    );
}
