//! End-to-end: the IDE capability in a stock Debian guest.
//!
//! `ide_capability_at_enumeration`: ONE boot with a DMA-copy device and an
//! NVMe controller on pcie.0 (RCiEPs) and a DMA-copy device behind a
//! pcie-root-port. Linux 7.3's pci_ide_init() parses the capability of the
//! RCiEPs and writes the reserved Stream ID 255 into every idle stream; the
//! writes reach the server and read back. The Endpoint behind QEMU's root
//! port (which has no IDE capability) is left alone. Every stream stays
//! INSECURE and AER reports nothing.

mod support;

#[test]
fn ide_capability_at_enumeration() {
    if support::skip() {
        return;
    }
    let script = support::guest_script("ide.sh");
    let run = support::vm(&[
        "-d",
        "dma-copy:rciep",
        "-d",
        "dma-copy",
        "-d",
        "nvme:rciep",
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ]);
    let fails = run.lines("CHECK-FAIL");
    assert!(
        fails.is_empty(),
        "guest checks failed: {fails:#?}\n{}",
        run.dump()
    );
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let ide = run.lines("IDE ");
    let placements: Vec<&str> = ide
        .iter()
        .filter(|l| l.contains("cap@"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        placements.iter().filter(|p| **p == "rciep").count(),
        2,
        "{ide:#?}"
    );
    assert_eq!(
        placements.iter().filter(|p| **p == "endpoint").count(),
        1,
        "{ide:#?}"
    );
    for what in [
        "ide-capability",
        "assoc-blocks",
        "link-stream-id",
        "sel0-stream-id",
        "sel1-stream-id",
        "insecure",
        "aer-after-ide",
        "aer-uncorrectable",
    ] {
        assert_eq!(
            run.lines("CHECK-OK")
                .iter()
                .filter(|l| l.split_whitespace().nth(2) == Some(what))
                .count(),
            3,
            "{what} on all three devices:\n{}",
            run.dump()
        );
    }
    for l in ide {
        eprintln!("{l}");
    }
}
