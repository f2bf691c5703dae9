//! End-to-end: the kernel's own PCI/TSM code against trustdev devices in a
//! stock Debian guest, through the trustdev_tsm test link TSM (guest/kmod)
//! and `trustdev-guest tsm-agent`.
//!
//! ONE boot (`trustdev vm --tsm`, which builds the module for the guest
//! kernel with qemu-configs/provision-kmod.sh - Debian's headers and gcc-14
//! fetched through the private apt - and starts the agent from /init) with an
//! NVMe controller and a DMA-copy device behind root ports and on pcie.0,
//! plus a DMA-copy device served with `--no-spdm` and one served with
//! `--wrong-san` (chain valid, CMA SAN naming another device). The guest script
//! (tests/guest/tsm.sh) checks what the kernel did: /sys/class/tsm/tsm0, the
//! tsm/ attributes, connect / read-back / disconnect / connect again for every
//! CMA device, the kernel's call path (ftrace) and dyndbg of tsm.c and doe.c,
//! NVMe I/O while connected, and the failure paths (no CMA mailbox refused by
//! pci_tsm_pf0_constructor, a chain the agent's roots do not verify, a SAN
//! refused by the agent's default policy (enforce) and accepted with `warn`, the
//! agent killed mid-connect, a hung agent timing out, no agent), each leaving
//! no state behind; removal of a connected function and a rescan; rmmod with
//! a device connected. Connect also sets IDE up (IDE_KM QUERY and K0 keys
//! inside the session, the device's selective stream enabled and SECURE in
//! configuration space, platform-emulated as QEMU 11.1's topology requires);
//! disconnect disables the stream and stops the keys. Here the servers' logs
//! must show every session the guest reported as established, its keys
//! programmed, armed, SECURE and stopped inside it, and the session ended by
//! END_SESSION.

mod support;

const DYNDBG: &str = r#"dyndbg="file drivers/pci/doe.c +p; file drivers/pci/tsm.c +p""#;

/// (kind, placement) -> the server `trustdev vm` started for it (servers are
/// named KIND<index of -d>).
const SERVERS: &[(&str, &str, &str)] = &[
    ("nvme", "root-port", "nvme0"),
    ("nvme", "rciep", "nvme1"),
    ("dma-copy", "root-port", "dma-copy2"),
    ("dma-copy", "rciep", "dma-copy3"),
];

#[test]
fn tsm_connect_in_a_real_guest() {
    if support::skip() {
        return;
    }
    let script = support::guest_script("tsm.sh");
    let args = [
        "-d",
        "nvme:size=64M",
        "-d",
        "nvme:size=64M,rciep",
        "-d",
        "dma-copy",
        "-d",
        "dma-copy:rciep",
        "-d",
        "dma-copy:no-spdm",
        "-d",
        "dma-copy:wrong-san,dsn=7d0c00000000ba05",
        "--tsm",
        "--append",
        DYNDBG,
        "--append",
        "trustdev_tsm.dyndbg=+p",
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "600",
    ];
    let names: Vec<&str> = SERVERS.iter().map(|(_, _, n)| *n).collect();
    let (run, texts) = support::vm_with_server_logs(&args, &names);
    let logs: Vec<(&str, String)> = names.into_iter().zip(texts).collect();
    let server_logs: String = logs
        .iter()
        .map(|(name, text)| format!("\n--- server {name}\n{text}"))
        .collect();
    let dump = || format!("{}{server_logs}", run.dump());
    for l in run
        .lines("TIMING")
        .iter()
        .chain(run.lines("KERNEL-PATH").iter())
    {
        eprintln!("{l}");
    }
    run.assert_checks_passed_with(&server_logs);

    // Every device, in both placements, with and without CMA.
    let devices = run.lines("DEVICE ");
    assert_eq!(devices.len(), 6, "{devices:#?}\n{}", dump());
    for (kind, place, _) in SERVERS {
        assert!(
            devices
                .iter()
                .any(|d| d.ends_with(&format!(" {kind} {place} cma"))),
            "no {kind} {place} with CMA: {devices:#?}"
        );
    }
    assert!(
        devices
            .iter()
            .any(|d| d.ends_with(" dma-copy root-port no-cma")),
        "{devices:#?}"
    );
    assert!(
        devices
            .iter()
            .any(|d| d.ends_with(" dma-copy root-port wrong-san")),
        "{devices:#?}"
    );
    let bdfs: Vec<&str> = devices
        .iter()
        .filter_map(|d| d.split_whitespace().nth(1))
        .collect();
    let oks = run.lines("CHECK-OK");
    let has = |what: &str| {
        oks.iter()
            .any(|l| l.starts_with(&format!("CHECK-OK {what}")))
    };
    for bdf in &bdfs {
        for what in ["tsm-attrs", "not-connected", "dyndbg-tsm", "dyndbg-doe"] {
            assert!(
                has(&format!("{what} {bdf}")),
                "missing {what} {bdf}\n{}",
                dump()
            );
        }
    }
    let cma: Vec<&str> = devices
        .iter()
        .filter(|d| d.ends_with(" cma"))
        .filter_map(|d| d.split_whitespace().nth(1))
        .collect();
    assert_eq!(cma.len(), 4);
    for bdf in &cma {
        for what in [
            "connect",
            "connect-readback",
            "ide-secure",
            "ide-connect-agent",
            "disconnect",
            "disconnect-cleared",
            "ide-disabled",
            "ide-keys-stopped",
            "session-ended",
            "connect-again",
            "disconnect-again",
        ] {
            assert!(
                has(&format!("{what} {bdf}")),
                "missing {what} {bdf}\n{}",
                dump()
            );
        }
    }
    for what in [
        "tsm-class",
        "agent-started",
        "no-tsm-on-host-bridge",
        "ftrace-run",
        "kernel-path-in-order",
        "ftrace-doe-transfers",
        "nvme-io-while-connected",
        "no-cma-refused",
        "no-cma-kernel-message",
        "no-cma-state",
        "wrong-root-refused",
        "wrong-root-kernel-message",
        "wrong-root-state",
        "connect-after-wrong-root",
        "wrong-san-refused",
        "wrong-san-kernel-message",
        "wrong-san-state",
        "wrong-san-warn-connects",
        "wrong-san-warned",
        "agent-mid-connect",
        "killed-agent-fails-connect",
        "killed-agent-kernel-message",
        "killed-agent-state",
        "no-agent",
        "hung-agent-times-out",
        "timeout-bounded",
        "timeout-kernel-message",
        "timeout-state",
        "connect-after-timeout",
        "disconnect-after-timeout",
        "connect-before-remove",
        "removed",
        "remove-disconnects",
        "rescan-tsm-attrs",
        "connect-after-rescan",
        "rmmod",
        "unregister-disconnects",
        "tsm-class-gone",
        "tsm-attrs-hidden",
        "no-oops",
    ] {
        assert!(has(what), "missing check {what}\n{}", dump());
    }
    assert_eq!(
        oks.iter()
            .filter(|l| l.starts_with("CHECK-OK nvme-io-while-connected"))
            .count(),
        2,
        "NVMe I/O on both controllers\n{}",
        dump()
    );

    // The device side: each session the guest reported was established and
    // ended by END_SESSION in its server.
    let sessions = run.lines("SESSION ");
    assert_eq!(
        sessions.len(),
        8,
        "two sessions per CMA device: {sessions:#?}"
    );
    for s in &sessions {
        let w: Vec<&str> = s.split_whitespace().collect();
        let (kind, place, sid) = (w[1], w[2], w.get(3).copied().unwrap_or("?"));
        let server = SERVERS
            .iter()
            .find(|(k, p, _)| *k == kind && *p == place)
            .map(|(_, _, n)| *n)
            .unwrap_or_else(|| panic!("unknown device in {s:?}"));
        let log = &logs.iter().find(|(n, _)| *n == server).unwrap().1;
        for what in ["established", "ended by END_SESSION"] {
            assert!(
                log.contains(&format!("session {sid} {what}")),
                "server {server} log lacks \"session {sid} {what}\"\n{}",
                dump()
            );
        }
        // Inside the session: 6 keys programmed and armed, the stream
        // SECURE, then the keys stopped, all before END_SESSION.
        let start = log.find(&format!("session {sid} established")).unwrap();
        let end = log
            .find(&format!("session {sid} ended by END_SESSION"))
            .unwrap();
        let inside = &log[start..end.max(start)];
        for (what, n) in [
            ("port 0: Success", 6),
            ("IDE_KM K_SET_GO stream", 6),
            (") is SECURE", 1),
            ("IDE_KM K_SET_STOP stream", 6),
            (") is INSECURE", 1),
        ] {
            assert_eq!(
                inside.matches(what).count(),
                n,
                "server {server}, session {sid}: {n} x {what:?} expected between its start and END_SESSION\n{inside}"
            );
        }
    }
}
