//! End-to-end: the control plane's decoded trace of a full flow, and no key
//! material in it (issue 13). ONE boot: an NVMe controller served with
//! `trustdev vm --control-dir` (control socket and JSON trace per server);
//! the guest (tests/guest/trace.sh) drives the nvme driver's admin
//! commands, `trustdev-guest ide` (SPDM session, IDE_KM KEY_PROG of every
//! K0 and K1 key, K_SET_GO/K_SET_STOP) and `trustdev-guest tdisp` (another
//! session, K0 keys, LOCK/START/STOP_INTERFACE), with keys derived from a
//! seed (`--insecure-test-keys`) that only this test and the guest know.
//! On the host: `trustdev trace FILE` decodes every line, the SPDM, IDE_KM,
//! TDISP and NVMe admin entries are there, and neither the trace file nor
//! its decoded form carries any 8-byte window of any key the seed gives
//! (every Stream ID, every key slot), as programmed or in KEY_PROG's
//! dword-swapped wire order, as raw bytes, hex (either case, either nibble
//! alignment) or decimal byte lists. The keys are never printed.

mod support;

use spdm_responder::idekm::{IdeKey, KeySlot};
use std::collections::HashSet;

/// The seed of the guest's `--insecure-test-keys` (tests/guest/trace.sh).
const SEED: &str = "e2e-trace-seed";
/// The window searched for: long enough that random text never matches.
const WIN: usize = 8;

/// Every WIN-byte window of every key the seed gives, in both byte orders.
fn key_windows() -> HashSet<[u8; WIN]> {
    let mut set = HashSet::new();
    for id in 0..=255u8 {
        for slot in KeySlot::all() {
            let k = IdeKey::test_key(SEED, id, slot);
            let wire = k.to_wire();
            for form in [&k.key_bytes()[..], &wire[..32]] {
                for w in form.windows(WIN) {
                    let mut a = [0u8; WIN];
                    a.copy_from_slice(w);
                    set.insert(a);
                }
            }
        }
    }
    set
}

fn hit(keys: &HashSet<[u8; WIN]>, bytes: &[u8]) -> bool {
    bytes.windows(WIN).any(|w| {
        let mut a = [0u8; WIN];
        a.copy_from_slice(w);
        keys.contains(&a)
    })
}

/// Where in `text` a key window appears (raw, hex, decimal lists); names
/// the form, never the bytes.
fn find_key(keys: &HashSet<[u8; WIN]>, text: &str) -> Option<&'static str> {
    if hit(keys, text.as_bytes()) {
        return Some("raw bytes");
    }
    let b = text.as_bytes();
    // Hex runs, at both nibble alignments.
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i - start >= 2 * WIN {
            let run = &text[start..i];
            for off in 0..2 {
                let bytes: Vec<u8> = run.as_bytes()[off..]
                    .chunks_exact(2)
                    .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
                    .collect();
                if hit(keys, &bytes) {
                    return Some("hex");
                }
            }
        }
        i += 1;
    }
    // Decimal byte lists: numbers 0..=255 separated by commas/spaces.
    let mut cur: Vec<u8> = Vec::new();
    for tok in text.split(|c: char| !(c.is_ascii_digit() || c == ',' || c == ' ')) {
        for n in tok.split([',', ' ']) {
            match n.parse::<u16>() {
                Ok(v) if v <= 255 => cur.push(v as u8),
                _ if n.is_empty() => {}
                _ => {
                    if hit(keys, &cur) {
                        return Some("decimal");
                    }
                    cur.clear();
                }
            }
        }
        if hit(keys, &cur) {
            return Some("decimal");
        }
        cur.clear();
    }
    None
}

#[test]
fn key_search_finds_a_dumped_key() {
    // The checker itself can fail: a key in each form is found.
    let keys = key_windows();
    let k = IdeKey::test_key(SEED, 1, KeySlot::all().nth(3).unwrap());
    let wire = k.to_wire();
    let hex: String = wire[..32].iter().map(|b| format!("{b:02X}")).collect();
    let dec: Vec<String> = k.key_bytes().iter().map(|b| b.to_string()).collect();
    assert_eq!(
        find_key(&keys, &format!("{{\"p\":\"{hex}\"}}")),
        Some("hex")
    );
    assert_eq!(
        find_key(&keys, &format!("x=0{}", &hex[1..])),
        Some("hex"),
        "odd alignment"
    );
    assert_eq!(
        find_key(&keys, &format!("{{\"p\":[{}]}}", dec.join(","))),
        Some("decimal")
    );
    assert_eq!(find_key(&keys, "KEY_PROG slot=K0|RX|PR len=52 7d0c"), None);
}

#[test]
fn decoded_trace_of_a_full_flow_has_no_keys() {
    if support::skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("td-e2e-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = support::guest_script("trace.sh");
    let args = [
        "-d",
        "nvme:size=64M",
        "--control-dir",
        dir.to_str().unwrap(),
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ];
    let run = support::vm(&args);
    for l in run.lines("CHECK-") {
        eprintln!("{l}");
    }
    let file = dir.join("nvme0.trace.jsonl");
    let raw = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", file.display(), run.dump()));
    let out = std::process::Command::new(support::trustdev())
        .arg("trace")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "trustdev trace: {out:?}");
    let pretty = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every line decoded: one output line per event, none undecodable.
    let events: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    let lines: Vec<&str> = pretty.lines().collect();
    assert_eq!(events.len(), lines.len(), "one decoded line per event");
    assert!(events.len() > 100, "{} events only", events.len());
    for l in &lines {
        assert!(!l.starts_with("??"), "undecoded: {l}");
        assert!(l.contains(" nvme0 "), "no device: {l}");
    }
    let count = |s: &str| lines.iter().filter(|l| l.contains(s)).count();
    for want in [
        "DOE -> SPDM 1.",
        "GET_CERTIFICATE",
        "KEY_EXCHANGE",
        "DOE -> secured CMA/SPDM",
        "msg=QUERY",
        "msg=K_SET_GO",
        "msg=K_SET_STOP",
        "slot=K1|TX|CPL",
        "protocol=TDISP",
        "msg=LOCK_INTERFACE_REQUEST",
        "msg=START_INTERFACE_REQUEST",
        "msg=STOP_INTERFACE_REQUEST",
        "msg=DEVICE_INTERFACE_REPORT",
        "NVMe admin",
        "cmd=IDENTIFY",
        "cmd=CREATE_SQ",
    ] {
        assert!(count(want) > 0, "{want:?} not in the decoded trace");
    }
    // KEY_PROG requests: 12 by the IDE flow (K0 and K1), 6 by TDISP.
    let key_progs = lines
        .iter()
        .filter(|l| l.contains("dir=req") && l.contains("msg=KEY_PROG"))
        .count();
    eprintln!(
        "trace: {} events, {key_progs} KEY_PROG, {} NVMe admin, {} TDISP",
        events.len(),
        count("NVMe admin"),
        count("protocol=TDISP")
    );
    for l in lines.iter().filter(|l| l.contains("KEY_PROG")).take(3) {
        eprintln!("TRACE {l}");
    }
    assert!(key_progs >= 18, "{key_progs} KEY_PROG requests");
    // No key in the file or its decoded form.
    let keys = key_windows();
    for (what, text) in [("trace file", &raw), ("decoded trace", &pretty)] {
        if let Some(form) = find_key(&keys, text) {
            panic!("key material ({form}) in the {what}");
        }
    }
    // Nor on the guest console (the tools never print keys).
    assert_eq!(find_key(&keys, &run.serial), None, "keys on the console");
    run.assert_checks_passed();
    for want in ["ide-flow", "tdisp-flow", "nvme-after"] {
        assert!(
            run.lines("CHECK-OK")
                .iter()
                .any(|l| l.starts_with(&format!("CHECK-OK {want}"))),
            "missing {want}:\n{}",
            run.dump()
        );
    }
}
