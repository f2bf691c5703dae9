//! End-to-end: IDE in a stock Debian guest, in ONE boot with an NVMe
//! controller and a DMA-copy device, each once on pcie.0 (an RCiEP) and
//! once behind a pcie-root-port (an Endpoint), every server writing its
//! link trace (`-d KIND:ide-trace=FILE`).
//!
//! Enumeration: Linux 7.3's pci_ide_init() parses the capability of the
//! RCiEPs and writes the reserved Stream ID 255 into every idle stream; the
//! writes reach the server and read back. The Endpoints behind QEMU's root
//! port (which has no IDE capability) are left alone. Every stream is
//! INSECURE and AER reports nothing.
//!
//! The flow: `trustdev-guest ide` on every device drives its stream over
//! the real DOE and IDE registers (tests/guest/ide.sh): SPDM session,
//! IDE_KM, Enable, SECURE, verified NVMe I/O through the kernel's nvme
//! driver or DMA copies through vfio-pci, a K0 -> K1 refresh while the
//! I/O runs, K_SET_STOP (a copy is refused while the stream stays enabled),
//! disable, teardown. The guest uses test keys derived from a seed (the
//! tool never prints a key; random keys are its default); here every
//! recorded TLP is decrypted and its MAC and counter checked with the keys
//! that seed gives, with RustCrypto's AES-GCM (not the link's), and the
//! NVMe blocks' plaintext marker must appear in the decrypted payloads and
//! never on the wire.

mod support;

use spdm_responder::idekm::{IdeKey, KeySlot};
use std::path::Path;
use trustdev_devices::security::ide::trace::{read_trace, verify, Flow, TraceCheck};

/// The seed of the guest's `--insecure-test-keys` (tests/guest/ide.sh).
const SEED: &str = "e2e-ide-seed";
/// The plaintext marker in every 64-byte line of the guest's NVMe blocks
/// (guest/src/ide/io.rs).
const MARKER: &[u8] = b"trustdev IDE plaintext marker 01";

/// Checks one device's trace; returns what it found and how often the
/// marker appeared in plaintext.
fn check_trace(path: &Path, nvme: bool) -> (TraceCheck, usize) {
    let recs = read_trace(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!recs.is_empty(), "{}: no IDE TLPs recorded", path.display());
    let mut marker_plain = 0;
    let mut same = 0;
    let c = verify(
        &recs,
        |id, slot| IdeKey::test_key(SEED, id, slot),
        |r, plain| {
            if plain.windows(MARKER.len()).any(|w| w == MARKER) {
                marker_plain += 1;
            }
            if plain.len() >= 16 && plain == &r.payload[..] {
                same += 1;
            }
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for r in &recs {
        assert!(
            !r.payload.windows(MARKER.len()).any(|w| w == MARKER)
                && !r.header.windows(MARKER.len()).any(|w| w == MARKER),
            "{}: plaintext marker on the wire in {r:?}",
            path.display()
        );
    }
    assert_eq!(same, 0, "{}: payloads sent in the clear", path.display());
    assert_eq!(c.failed, 0, "{}: integrity failures: {c:?}", path.display());
    assert!(
        c.key_sets[0] > 0 && c.key_sets[1] > 0,
        "{}: traffic under K0 and K1 expected: {c:?}",
        path.display()
    );
    let up = Flow::Upstream as u8;
    let down = Flow::Downstream as u8;
    // Device writes (MWr, PR) and reads (MRd, NPR) upstream, the host end's
    // read completions (CplD) downstream.
    for k in [(up, 0), (up, 1), (down, 2)] {
        assert!(
            c.kinds.contains_key(&k),
            "{}: no {k:?} TLPs: {c:?}",
            path.display()
        );
    }
    if nvme {
        assert!(
            marker_plain > 0,
            "{}: the NVMe blocks' marker is not in any decrypted payload",
            path.display()
        );
    } else {
        // The driver's BAR writes and reads, and the device's completions.
        for k in [(down, 0), (down, 1), (up, 2)] {
            assert!(
                c.kinds.contains_key(&k),
                "{}: no {k:?} TLPs: {c:?}",
                path.display()
            );
        }
    }
    (c, marker_plain)
}

#[test]
fn ide_enumeration_and_flows_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("trustdev-e2e-ide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["dma-copy-rciep", "dma-copy-ep", "nvme-rciep", "nvme-ep"];
    let trace = |n: &str| dir.join(format!("{n}.pcap"));
    let devs = [
        format!("dma-copy:rciep,ide-trace={}", trace(names[0]).display()),
        format!("dma-copy:ide-trace={}", trace(names[1]).display()),
        format!("nvme:rciep,ide-trace={}", trace(names[2]).display()),
        format!("nvme:ide-trace={}", trace(names[3]).display()),
    ];
    let script = support::guest_script("ide.sh");
    let mut args: Vec<&str> = Vec::new();
    for d in &devs {
        args.extend(["-d", d.as_str()]);
    }
    args.extend([
        "--iommu",
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "900",
    ]);
    let run = support::vm(&args);
    run.assert_checks_passed();
    let ide = run.lines("IDE ");
    let placements: Vec<&str> = ide
        .iter()
        .filter(|l| l.contains("cap@"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    for p in ["rciep", "endpoint"] {
        assert_eq!(
            placements.iter().filter(|x| **x == p).count(),
            2,
            "{ide:#?}"
        );
    }
    for what in [
        "ide-capability",
        "assoc-blocks",
        "link-stream-id",
        "sel0-stream-id",
        "sel1-stream-id",
        "insecure",
        "aer-after-ide",
        "aer-uncorrectable",
        "ide-flow",
        "ide-idle-after",
    ] {
        assert_eq!(
            run.lines("CHECK-OK")
                .iter()
                .filter(|l| l.split_whitespace().nth(2) == Some(what))
                .count(),
            4,
            "{what} on all four devices:\n{}",
            run.dump()
        );
    }
    // What the tool reported for each device: SECURE, I/O during the
    // refresh, fail closed for the copies.
    let flow = run.lines("ide ");
    assert_eq!(
        flow.iter().filter(|l| l.contains(": OK: ")).count(),
        4,
        "{flow:#?}"
    );
    assert_eq!(
        flow.iter()
            .filter(|l| l.contains("Enable set: stream 0 reads SECURE"))
            .count(),
        4
    );
    assert_eq!(
        flow.iter()
            .filter(|l| l.contains("fail closed: the copy was refused by the link"))
            .count(),
        2,
        "{flow:#?}"
    );
    // The guest's output names steps, never keys.
    for slot in KeySlot::all() {
        let k = IdeKey::test_key(SEED, 1, slot);
        let hex: String = k.key_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            !run.serial.to_lowercase().contains(&hex),
            "key material of {} on the guest console",
            slot.name()
        );
    }
    for (n, nvme) in names.iter().zip([false, false, true, true]) {
        let (c, marker) = check_trace(&trace(n), nvme);
        eprintln!("{n}: {} IDE TLPs verified ({:?} per key set), marker in {marker} decrypted payloads, {:?}", c.records, c.key_sets, c.kinds);
    }
    for l in ide.iter().chain(&flow) {
        eprintln!("{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
