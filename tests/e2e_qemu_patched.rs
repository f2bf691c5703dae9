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

/// One `--tsm` boot with an NVMe controller behind a root port (server
/// `nvme0`) and one on pcie.0 (`nvme1`): every controller connected through
/// the link TSM, NVMe I/O while connected, disconnected
/// (tests/guest/tsm-ide-kernel.sh). Returns the run and nvme0's server log.
fn link_tsm_run(qemu: &str) -> (support::VmRun, String) {
    let script = support::guest_script("tsm-ide-kernel.sh");
    let args = [
        "--qemu",
        qemu,
        "-d",
        "nvme:size=64M",
        "-d",
        "nvme:size=64M,rciep",
        "--tsm",
        "--append",
        "trustdev_tsm.dyndbg=+p",
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "400",
    ];
    let (run, mut logs) = support::vm_with_server_logs(&args, &["nvme0"]);
    for l in run
        .lines("KERNEL-LOG")
        .iter()
        .chain(run.lines("AGENT").iter())
    {
        eprintln!("{l}");
    }
    run.assert_checks_passed();
    (run, logs.remove(0))
}

/// `IDE link so far: LinkStats { ide_tlps: N, ... }` of a server log: the
/// TLPs that crossed the emulated link on a SECURE stream, and integrity
/// failures.
fn link_stats(log: &str) -> Option<(u64, u64)> {
    let l = log.lines().rev().find(|l| l.contains("IDE link so far"))?;
    let num = |key: &str| -> Option<u64> {
        let rest = &l[l.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    Some((num("ide_tlps: ")?, num("integrity_failures: ")?))
}

#[test]
fn link_tsm_sets_up_kernel_ide_streams_behind_the_patched_root_port() {
    if support::skip() {
        return;
    }
    let (run, nvme0) = link_tsm_run("patched");
    let rp = fact(&run, "rp-root-port").unwrap_or_default();
    // The Endpoint behind the root port: the kernel's helpers allocated,
    // registered and set up the stream on both ends...
    expect_fact(&run, "connect-root-port", "0 ");
    expect_fact(&run, "ide-mode-root-port", "kernel");
    let setup = run
        .lines("KERNEL-LOG ")
        .into_iter()
        .find(|l| l.contains("0000:01:00.0"))
        .unwrap_or_default();
    assert!(
        setup.contains(&format!(
            "IDE: kernel helpers: pci_ide_stream_alloc/register/setup on 0000:01:00.0 and root port {rp} (stream0.0.0)"
        )),
        "{setup}\n{}",
        run.dump()
    );
    // ...pci_ide_stream_register() linked it under the host bridge and took
    // one of its secure streams...
    expect_fact(&run, "links-before", "");
    expect_fact(&run, "available-secure-streams-before", "256");
    expect_fact(&run, "links-root-port", "stream0.0.0->0000:01:00.0");
    expect_fact(&run, "available-secure-streams-root-port", "255");
    // ...and pci_ide_stream_enable() left both ends SECURE (the device's
    // keys programmed by the agent over IDE_KM in the SPDM session).
    expect_fact(
        &run,
        "ide-enable-root-port",
        "pci_ide_stream_enable(): device SECURE, root port SECURE: 0",
    );
    expect_fact(&run, "ep-streams-root-port", "1 1");
    expect_fact(&run, "rp-streams-root-port", "1 1");
    let agent = run
        .lines("AGENT ")
        .into_iter()
        .find(|l| l.contains("connect 0000:01:00.0: OK"))
        .unwrap_or_default();
    assert!(
        agent.contains("KEY_PROG + K_SET_GO of the 6 K0 keys")
            && agent.contains("SECURE via the kernel's pci_ide_stream_* helpers"),
        "{agent}\n{}",
        run.dump()
    );
    // NVMe I/O while the stream is SECURE, and the device saw it as IDE
    // TLPs on the stream, none failing its integrity check.
    expect_fact(&run, "nvme-io-root-port", "verified 1 1");
    let (tlps, failures) =
        link_stats(&nvme0).unwrap_or_else(|| panic!("no link stats in nvme0's log\n{nvme0}"));
    assert!(tlps > 1000, "{tlps} IDE TLPs\n{nvme0}");
    assert_eq!(failures, 0, "{nvme0}");
    assert!(nvme0.contains(") is SECURE"), "{nvme0}");
    // Disconnect released the stream on both ends and in sysfs.
    expect_fact(&run, "disconnect-root-port", "0 ");
    expect_fact(
        &run,
        "after-root-port",
        "ep 0 0 rp 0 0 links '' available 256",
    );
    // The RCiEP stays outside the kernel's helpers on any QEMU.
    expect_fact(&run, "ide-mode-rciep", "platform");
    expect_fact(
        &run,
        "ide-refusal-rciep",
        "pci_ide_stream_alloc() gives streams only to PCIe Endpoints and 0000:00:11.0 is a Root Complex Integrated Endpoint",
    );
    expect_fact(&run, "links-rciep", "");
}

#[test]
fn stock_qemu_link_tsm_cannot_use_the_kernel_ide_helpers() {
    if support::skip() {
        return;
    }
    let (run, _) = link_tsm_run("stock");
    assert!(run.stdout.contains("QEMU 11.1"), "{}", run.stdout);
    let rp = fact(&run, "rp-root-port").unwrap_or_default();
    // The same Endpoint: pci_ide_init() ignored its IDE capability (its root
    // port has none), so pci_ide_stream_alloc() refuses it; the module falls
    // back to programming the device end itself and says why.
    expect_fact(&run, "connect-root-port", "0 ");
    expect_fact(&run, "ide-mode-root-port", "platform");
    expect_fact(
        &run,
        "ide-refusal-root-port",
        &format!("pci_ide_init() ignored the device's IDE capability because its root port {rp} has none"),
    );
    expect_fact(&run, "links-root-port", "");
    expect_fact(&run, "available-secure-streams-root-port", "256");
    expect_fact(&run, "rp-streams-root-port", "0 0");
    expect_fact(&run, "ide-mode-rciep", "platform");
    expect_fact(
        &run,
        "ide-refusal-rciep",
        "pci_ide_stream_alloc() gives streams only to PCIe Endpoints and 0000:00:11.0 is a Root Complex Integrated Endpoint",
    );
}

/// One `--sva` boot with the accelerator behind a root port and
/// uio_pci_generic_sva (tests/guest/sva.sh); QEMU traces its PASID DMA
/// translations. Returns the run, the accelerator's server log and QEMU's
/// log.
fn sva_run(qemu: &str, extra: &[&str]) -> (support::VmRun, String, String) {
    let ko = support::uio_sva_module();
    let module = format!("{ko}:/lib/modules/uio_pci_generic_sva.ko");
    let script = support::guest_script("sva.sh");
    let mut args = vec![
        "--qemu",
        qemu,
        "-d",
        "accel",
        "--sva",
        "--file",
        &module,
        "--script",
        script.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (run, mut logs) = support::vm_with_server_logs(&args, &["accel0", "qemu"]);
    for l in run.lines("SVA-JSON") {
        eprintln!("{l}");
    }
    run.assert_checks_passed();
    let qemu_log = logs.pop().unwrap_or_default();
    (run, logs.pop().unwrap_or_default(), qemu_log)
}

#[test]
fn sva_process_pointers_through_the_pasid_dma_extension() {
    if support::skip() {
        return;
    }
    // ATS turned off on QEMU's side (x-pasid-ats=off): the extension's
    // PASID_DMA messages carry every access, as without ATS support.
    let (run, accel0, qemu_log) = sva_run(
        "patched",
        &[
            "--qemu-arg",
            "-global",
            "--qemu-arg",
            "vfio-user-pci.x-pasid-ats=off",
            "--qemu-arg",
            "-trace",
            "--qemu-arg",
            "vfio_user_pasid_dma*",
        ],
    );
    // The bind: SMPWC (patch 0202) lets iommu_sva_bind_device() succeed,
    // the process gets a PASID.
    expect_fact(&run, "smpwc", "1");
    // iommu_sva_bind_device() returns a pointer (an iommu_sva), not an
    // errno (-4095..=-1) and not NULL.
    let bind: i64 = fact(&run, "sva-bind-ret")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        !(-4095..=0).contains(&bind),
        "iommu_sva_bind_device() returned {bind}\n{}",
        run.dump()
    );
    let pasid = fact(&run, "sva-pasid").unwrap_or_default();
    assert!(
        pasid.parse::<u32>().is_ok_and(|p| p > 0),
        "PASID {pasid:?}\n{}",
        run.dump()
    );
    // Heap pointers of the process: results in its memory, checked against
    // software; an unmapped address comes back as a fault.
    expect_fact(&run, "sva-verified", "true");
    expect_fact(&run, "sva-stage", "done");
    let ops = fact(&run, "sva-ops").unwrap_or_default();
    for op in [
        "memmove",
        "crc32c=",
        "aes-gcm-encrypt",
        "aes-gcm-decrypt",
        "unmapped-source=page fault",
    ] {
        assert!(ops.contains(op), "{op} not in {ops}\n{}", run.dump());
    }
    // The benchmark mode (scripts/sva-bench.sh) through the same PASID: its
    // output parses, every round verified, a non-zero time.
    expect_fact(&run, "sva-bench", "4096:1:1 65536:1:1");
    // The device side: the extension was negotiated (patch 0301 proposes
    // "dma"), the guest enabled PASID, and QEMU translated the PASID's
    // addresses through the vIOMMU (its trace), faulting the unmapped one.
    assert!(
        accel0.contains("PASID extension negotiated: ats false, pri false, dma true"),
        "{accel0}"
    );
    assert!(accel0.contains("PASID control <- 0x0007"), "{accel0}");
    let translated = qemu_log
        .lines()
        .filter(|l| l.contains(&format!("vfio_user_pasid_dma pasid {pasid} ")))
        .count();
    assert!(
        translated > 64,
        "{translated} translated PASID DMA pieces\n{qemu_log}"
    );
    assert!(
        qemu_log
            .lines()
            .any(|l| l.contains(&format!("vfio_user_pasid_dma_fault pasid {pasid} 0x1000 "))),
        "no fault for the unmapped address\n{qemu_log}"
    );
}

/// The accelerator's translation counters, from its "queue N: disabled;
/// PasidStats { .. }" log line (the last one): `field` of it.
fn pasid_stat(accel0: &str, field: &str) -> Option<u64> {
    let line = accel0
        .lines()
        .rev()
        .find(|l| l.contains("disabled; PasidStats"))?;
    let at = line.find(&format!("{field}: "))? + field.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// QEMU trace lines of `event` for `pasid`.
fn traced(qemu_log: &str, event: &str, pasid: &str) -> usize {
    let needle = format!("{event} pasid {pasid} ");
    qemu_log.lines().filter(|l| l.contains(&needle)).count()
}

/// The common part of the ATS runs: the bind, the verified results, and
/// that the extension's ATS and PRI were negotiated and used instead of
/// PASID_DMA messages. Returns the PASID.
fn expect_sva_over_ats(run: &support::VmRun, accel0: &str, qemu_log: &str) -> String {
    for l in accel0
        .lines()
        .filter(|l| l.contains("PASID") || l.contains("PasidStats"))
    {
        eprintln!("accel0: {l}");
    }
    for l in run.lines("FACT ") {
        eprintln!("{l}");
    }
    for event in [
        "vfio_user_translated_dma_map",
        "vfio_user_ats_translate ",
        "vfio_user_ats_invalidate",
        "vfio_user_page_request ",
        "vfio_user_page_response",
        "vfio_user_pasid_dma ",
    ] {
        let n = qemu_log.lines().filter(|l| l.contains(event)).count();
        eprintln!("qemu trace {}: {n}", event.trim());
    }
    let pasid = fact(run, "sva-pasid").unwrap_or_default();
    assert!(
        pasid.parse::<u32>().is_ok_and(|p| p > 0),
        "PASID {pasid:?}\n{}",
        run.dump()
    );
    expect_fact(run, "sva-verified", "true");
    expect_fact(run, "sva-stage", "done");
    assert!(
        accel0.contains("PASID extension negotiated: ats true, pri true, dma true"),
        "{accel0}"
    );
    // The guest enabled ATS (XLAT bit 15) and PRI (bit 16) on the device.
    let xlat: u32 = fact(run, "sva-xlat")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(xlat & 0x1_8000, 0x1_8000, "XLAT {xlat:#x}\n{}", run.dump());
    // QEMU shared system memory as the translated space and answered
    // translation requests for the PASID through the vIOMMU.
    assert!(
        qemu_log.contains("vfio_user_translated_dma_map iova 0x100000 "),
        "no TRANSLATED_DMA_MAP of RAM\n{qemu_log}"
    );
    assert!(
        traced(qemu_log, "vfio_user_ats_translate", &pasid) > 0,
        "no ATS_TRANSLATE for PASID {pasid}\n{qemu_log}"
    );
    // The device reached the process's memory through its ATC, not by
    // PASID_DMA messages.
    let translations = pasid_stat(accel0, "translations").unwrap_or(0);
    let hits = pasid_stat(accel0, "atc_hits").unwrap_or(0);
    assert!(translations > 0 && hits > 0, "{accel0}");
    assert_eq!(
        pasid_stat(accel0, "pasid_dma_messages"),
        Some(0),
        "{accel0}"
    );
    assert_eq!(
        traced(qemu_log, "vfio_user_pasid_dma", &pasid),
        0,
        "{qemu_log}"
    );
    pasid
}

const ATS_TRACES: &[&str] = &[
    "--qemu-arg",
    "-trace",
    "--qemu-arg",
    "vfio_user_ats*",
    "--qemu-arg",
    "-trace",
    "--qemu-arg",
    "vfio_user_page*",
    "--qemu-arg",
    "-trace",
    "--qemu-arg",
    "vfio_user_translated*",
    "--qemu-arg",
    "-trace",
    "--qemu-arg",
    "vfio_user_pasid_dma*",
];

#[test]
fn sva_process_pointers_through_ats_translations() {
    if support::skip() {
        return;
    }
    let (run, accel0, qemu_log) = sva_run("patched", ATS_TRACES);
    let pasid = expect_sva_over_ats(&run, &accel0, &qemu_log);
    expect_fact(&run, "sva-prefault", "true");
    // The benchmark mode (scripts/sva-bench.sh) over ATS: parses, verified.
    expect_fact(&run, "sva-bench", "4096:1:1 65536:1:1");
    // Pre-faulted buffers: every translation succeeds at once, no page
    // requests; the unmapped source still faults.
    expect_fact(&run, "sva-page-requests", "0");
    let ops = fact(&run, "sva-ops").unwrap_or_default();
    assert!(ops.contains("unmapped-source=page fault"), "{ops}");
    // The process freeing its heap makes Linux invalidate the device TLB
    // for the PASID, which reaches the server as ATS_INVALIDATE.
    assert!(
        qemu_log.contains(&format!(
            "vfio_user_ats_invalidate flags 0x1 pasid {pasid} "
        )),
        "no ATS_INVALIDATE for PASID {pasid}\n{qemu_log}"
    );
}

#[test]
fn sva_fresh_pages_come_in_through_page_requests() {
    if support::skip() {
        return;
    }
    let mut args = ATS_TRACES.to_vec();
    args.extend_from_slice(&["--append", "trustdev.sva=noprefault"]);
    let (run, accel0, qemu_log) = sva_run("patched", &args);
    let pasid = expect_sva_over_ats(&run, &accel0, &qemu_log);
    expect_fact(&run, "sva-prefault", "false");
    // Destination pages the process never touched: the translations came
    // back not present, the device asked for the pages (PRI), the VT-d
    // queued the page requests and interrupted the guest, whose I/O page
    // fault handler faulted them in and answered each group with Success.
    let requests: u64 = fact(&run, "sva-page-requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(requests > 0, "no page requests\n{}", run.dump());
    let irqs: u64 = fact(&run, "prq-irqs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(irqs > 0, "no page request interrupt\n{}", run.dump());
    let delivered = qemu_log
        .lines()
        .filter(|l| {
            l.contains(&format!("vfio_user_page_request pasid {pasid} ")) && l.ends_with(" ret 0")
        })
        .count() as u64;
    assert_eq!(delivered, requests, "page requests delivered\n{qemu_log}");
    let answered = qemu_log
        .lines()
        .filter(|l| {
            l.contains(&format!("vfio_user_page_response pasid {pasid} ")) && l.ends_with(" code 0")
        })
        .count() as u64;
    assert!(answered > 0, "no successful page response\n{qemu_log}");
    assert_eq!(
        pasid_stat(&accel0, "page_requests"),
        Some(requests),
        "{accel0}"
    );
    assert_eq!(
        pasid_stat(&accel0, "page_responses"),
        Some(answered),
        "{accel0}"
    );
    assert_eq!(
        pasid_stat(&accel0, "unexpected_responses"),
        Some(0),
        "{accel0}"
    );
}

#[test]
fn stock_qemu_sva_stops_at_the_bind() {
    if support::skip() {
        return;
    }
    let (run, accel0, _) = sva_run("stock", &[]);
    assert!(run.stdout.contains("QEMU 11.1"), "{}", run.stdout);
    // Same setup: SMPWC clear, iommu_sva_bind_device() -ENODEV, open()
    // EINVAL, and QEMU 11.1 never proposes PASID-tagged DMA.
    expect_fact(&run, "smpwc", "0");
    expect_fact(&run, "sva-bind-ret", "-19");
    expect_fact(&run, "sva-stage", "open");
    expect_fact(&run, "sva-open-errno", "22");
    expect_fact(&run, "sva-verified", "false");
    assert!(!accel0.contains("PASID extension negotiated"), "{accel0}");
}
