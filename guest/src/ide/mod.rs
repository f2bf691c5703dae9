//! `trustdev-guest ide`: a device's IDE stream driven from guest user space
//! the way a TSM drives it, over the real registers (sysfs `config`: the
//! DOE mailbox and the IDE capability), with I/O through it:
//!
//! 1. the IDE capability's layout and the stream's idle registers;
//! 2. an SPDM session over the DOE mailbox (chain verified to a trusted
//!    root, CHALLENGE, KEY_EXCHANGE + FINISH);
//! 3. IDE_KM QUERY: the port and its register image, compared with
//!    configuration space;
//! 4. the selective stream's registers (RID association with the partner
//!    port, Stream ID, Default Stream; Enable clear) - **platform-emulated**:
//!    this tool writes them itself, as a TSM's platform code does (Linux's
//!    `pci_ide_stream_*` helpers are kernel-internal, and 7.3 refuses them
//!    for QEMU's topology: docs/TSM.md);
//! 5. IDE_KM KEY_PROG + K_SET_GO of every key of set K0 (PR, NPR, CPL, RX
//!    then TX), Enable, and the Status register must read SECURE;
//! 6. verified I/O through the stream: NVMe blocks through the kernel's
//!    nvme driver (O_DIRECT writes and reads of patterned blocks) or DMA
//!    copies of the DMA-copy device through vfio-pci;
//! 7. a key refresh K0 -> K1 on another thread while the I/O keeps running,
//!    then more I/O on K1;
//! 8. K_SET_STOP of the set in use (the stream reads INSECURE; a DMA copy is
//!    refused while it stays enabled: fail closed), Enable clear, the
//!    registers back to their idle values, I/O in the clear, END_SESSION.
//!
//! Keys are random unless `--insecure-test-keys SEED` derives them from a
//! seed (so a test can decrypt the device server's `--ide-trace`); no key is
//! ever printed.

pub(crate) mod io;

use crate::sysfs::{self, ConfigFile};
use io::{DmaCopyIo, NvmeIo, Workload};
use spdm_responder::idekm::regs::{self, state_name, sts, IdeRegs, StreamSettings};
use spdm_responder::idekm::{IdeHost, IdeKey, KeySet, KeySlot};
use spdm_responder::transport::doe::ConfigAccess;
use spdm_responder::RequesterConfig;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `trustdev-guest ide`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// PCI address of the device ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Trusted root certificate, PEM or DER, or a directory of them
    /// (repeatable; default /etc/trustdev/roots, which `trustdev vm` fills).
    #[arg(long = "root")]
    pub roots: Vec<PathBuf>,
    /// Selective stream register block to use.
    #[arg(long, default_value_t = 0)]
    pub stream: u16,
    /// Stream ID to program (0-254; 255 is the kernel's reserved ID).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=254))]
    pub stream_id: u8,
    /// I/O through the stream: auto (by device), nvme, dma-copy or none.
    #[arg(long, default_value = "auto")]
    pub io: String,
    /// Verified I/Os before the refresh, and again after it (an NVMe I/O is
    /// a 4 KiB block written and read back; a DMA copy is 4 KiB).
    #[arg(long, default_value_t = 32)]
    pub ios: u64,
    /// Skip the K0 -> K1 refresh.
    #[arg(long)]
    pub no_refresh: bool,
    /// A shell command to run while the stream is SECURE on K0, after the
    /// verified I/O and before the refresh (e.g. fio against the NVMe
    /// namespace: scripts/ide-fio-bench.sh); it must exit 0 and the stream
    /// must still be SECURE afterwards.
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,
    /// INSECURE, for tests: derive every key from SEED (anyone who knows
    /// the seed can decrypt the link) instead of the random source.
    #[arg(long, value_name = "SEED")]
    pub insecure_test_keys: Option<String>,
}

/// How the tool's keys are made (also `trustdev-guest tdisp`'s).
#[derive(Clone)]
pub(crate) enum Keys {
    Random,
    Test(String),
}

impl Keys {
    /// `--insecure-test-keys SEED`, or random keys.
    pub(crate) fn from_seed(seed: Option<&str>) -> Keys {
        seed.map_or(Keys::Random, |s| Keys::Test(s.to_string()))
    }
    pub(crate) fn key(&self, stream_id: u8, slot: KeySlot) -> IdeKey {
        match self {
            Keys::Random => IdeKey::random(),
            Keys::Test(seed) => IdeKey::test_key(seed, stream_id, slot),
        }
    }
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Keys::Random => "random keys",
            Keys::Test(_) => "INSECURE test keys derived from the --insecure-test-keys seed",
        }
    }
}

fn say(bdf: &str, msg: impl AsRef<str>) {
    println!("ide {bdf}: {}", msg.as_ref());
}

/// `trustdev-guest ide`.
pub fn run(a: Args) -> Result<(), String> {
    let bdf =
        sysfs::normalize_bdf(&a.bdf).ok_or_else(|| format!("'{}' is not a PCI address", a.bdf))?;
    if !sysfs::dev_dir(&bdf).exists() {
        return Err(format!("{bdf}: no such PCI device"));
    }
    let io = match a.io.as_str() {
        "auto" => match sysfs::ids(&bdf) {
            Some((crate::dma_copy::VENDOR_ID, crate::dma_copy::DEVICE_ID)) => "dma-copy",
            _ if io::nvme_block_device(&bdf).is_some() => "nvme",
            _ => "none",
        },
        "nvme" | "dma-copy" | "none" => a.io.as_str(),
        other => {
            return Err(format!(
                "--io {other}: expected auto, nvme, dma-copy or none"
            ))
        }
    };
    let r = match io {
        "dma-copy" => {
            // vfio-pci resets the function when it opens it (which also
            // ends any SPDM session): open first, then set IDE up.
            let opts = io::dma_copy_args(&bdf);
            let log = crate::dma_copy::Log {
                prefix: format!("ide {bdf}: dma-copy"),
                quiet: false,
            };
            crate::dma_copy::with_device(&bdf, &opts, &log, |c| {
                flow(&bdf, &a, &mut DmaCopyIo::new(c))
            })
            .map(|(_, r)| r)
        }
        "nvme" => NvmeIo::open(&bdf).and_then(|mut w| flow(&bdf, &a, &mut w)),
        _ => flow(&bdf, &a, &mut io::NoIo),
    };
    r.map_err(|e| format!("ide {bdf}: FAILED: {e}"))
}

/// The partner port of `bdf`'s link and its requester ID: the root port it
/// sits behind, or the root complex (RID 0) for an RCiEP on the root bus.
fn partner(bdf: &str) -> (u16, String) {
    let parent = std::fs::canonicalize(sysfs::dev_dir(bdf))
        .ok()
        .and_then(|p| {
            p.parent()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
    match parent.as_deref().and_then(sysfs::normalize_bdf) {
        Some(p) => {
            let rid = u16::from_str_radix(&p[5..7], 16).unwrap_or(0) << 8
                | u16::from_str_radix(&p[8..10], 16).unwrap_or(0) << 3
                | u16::from_str_radix(&p[11..12], 16).unwrap_or(0);
            (rid, format!("root port {p}"))
        }
        None => (0, "the root complex (an RCiEP on the root bus)".into()),
    }
}

/// The trusted roots: `paths`, or /etc/trustdev/roots (which `trustdev vm`
/// fills).
fn load_roots(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    let default = [PathBuf::from("/etc/trustdev/roots")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    Ok(crate::spdm::load_roots(paths)?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// The stream's Status, read straight from configuration space (not
/// through the setup's own accessor).
fn read_status(bdf: &str, index: u16) -> Result<u32, String> {
    let mut cfg = ConfigFile::open(bdf)?;
    IdeRegs::open(&mut cfg)
        .and_then(|mut r| r.status(index))
        .map_err(|e| e.to_string())
}

fn expect_state(bdf: &str, index: u16, want: u32, when: &str) -> Result<(), String> {
    let s = read_status(bdf, index)?;
    if s & sts::STATE != want {
        return Err(format!(
            "{when}: stream {index} Status {s:#010x} ({}), expected {}",
            state_name(s),
            state_name(want)
        ));
    }
    say(
        bdf,
        format!(
            "{when}: stream {index} reads {} (Status {s:#010x})",
            state_name(s)
        ),
    );
    Ok(())
}

/// Runs `n` verified I/Os; returns how many.
fn io_phase(
    bdf: &str,
    w: &mut dyn Workload,
    next: &mut u64,
    n: u64,
    what: &str,
) -> Result<u64, String> {
    let t = Instant::now();
    for _ in 0..n {
        w.one(*next)
            .map_err(|e| format!("{what}: I/O {}: {e}", *next))?;
        *next += 1;
    }
    if n > 0 {
        say(
            bdf,
            format!(
                "{what}: {n} {} verified in {:.0} ms",
                w.unit(),
                t.elapsed().as_secs_f64() * 1000.0
            ),
        );
    }
    Ok(n)
}

fn flow(bdf: &str, a: &Args, w: &mut dyn Workload) -> Result<(), String> {
    let keys = Keys::from_seed(a.insecure_test_keys.as_deref());
    let (index, sid) = (a.stream, a.stream_id);
    let roots = load_roots(&a.roots)?;

    // 1. The capability and the stream's idle registers.
    let mut cfg = ConfigFile::open(bdf)?;
    let (layout, idle) = {
        let mut r = IdeRegs::open(&mut cfg).map_err(|e| e.to_string())?;
        (r.layout(), r.control(index).map_err(|e| e.to_string())?)
    };
    say(
        bdf,
        format!(
            "IDE capability at {:#x}: cap {:#010x}, {} link and {} selective stream(s), {} address block(s) each; stream {index} idle Control {idle:#010x}",
            layout.offset, layout.cap, layout.link_streams, layout.selective_streams, layout.assoc
        ),
    );

    // 2. The session.
    let t = Instant::now();
    let rcfg = RequesterConfig {
        trusted_roots: roots,
        ..RequesterConfig::default()
    };
    let mut host = IdeHost::connect(cfg, rcfg, true).map_err(|e| e.to_string())?;
    let conn = host.requester().connection().clone();
    say(
        bdf,
        format!(
            "SPDM {}.{} session {:#010x} over the DOE mailbox (chain verified, CHALLENGE_AUTH verified) in {:.0} ms",
            conn.version >> 4,
            conn.version & 0xf,
            host.session(),
            t.elapsed().as_secs_f64() * 1000.0
        ),
    );

    // 3. QUERY and the register image.
    let q = host.query().map_err(|e| e.to_string())?;
    let mut live = Vec::with_capacity(q.regs.len());
    for i in 0..q.regs.len() as u16 {
        let off = layout.offset + regs::off::CAP + 4 * i;
        live.push(host.access().cfg_read32(off).map_err(|e| e.to_string())?);
    }
    if q.regs != live {
        return Err(format!(
            "QUERY_RESP register image {:08x?} differs from configuration space {live:08x?}",
            q.regs
        ));
    }
    say(
        bdf,
        format!(
            "IDE_KM QUERY_RESP: port {} of max {}, bus {:02x} devfn {:02x} segment {}; its {}-dword register image matches configuration space",
            q.port_index, q.max_port_index, q.bus, q.dev_func, q.segment, q.regs.len()
        ),
    );

    // 4. The stream's registers (platform-emulated).
    let (rid, who) = partner(bdf);
    let s = StreamSettings::endpoint(sid, rid);
    host.setup(index, &s).map_err(|e| e.to_string())?;
    say(
        bdf,
        format!(
            "platform-emulated stream setup (this tool writes the device's registers as a TSM's platform code would; the kernel's pci_ide_stream_* helpers are not available to user space): stream {index}, Stream ID {sid}, Default Stream, RID association {rid:04x} ({who}), no address association, Control {:#010x}",
            s.control(false)
        ),
    );

    // 5. K0, Enable, SECURE.
    let t = Instant::now();
    let k = keys.clone();
    host.program(sid, KeySet::K0, move |slot| k.key(sid, slot))
        .map_err(|e| e.to_string())?;
    say(
        bdf,
        format!(
            "IDE_KM KEY_PROG + K_SET_GO of the 6 keys of K0 (PR, NPR, CPL; RX then TX), {}, in {:.0} ms",
            keys.describe(),
            t.elapsed().as_secs_f64() * 1000.0
        ),
    );
    let st = host.enable(index, &s).map_err(|e| e.to_string())?;
    if st & sts::STATE != sts::SECURE {
        return Err(format!(
            "Enable set but stream {index} Status is {st:#010x} ({}), not SECURE",
            state_name(st)
        ));
    }
    expect_state(bdf, index, sts::SECURE, "Enable set")?;

    // 6. I/O on K0.
    let mut next = 0u64;
    let mut total = io_phase(bdf, w, &mut next, a.ios, "K0")?;
    if let Some(cmd) = &a.run {
        say(bdf, format!("--run with the stream SECURE: {cmd}"));
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .map_err(|e| format!("--run: cannot start sh: {e}"))?;
        if !st.success() {
            return Err(format!("--run command failed ({st})"));
        }
        expect_state(bdf, index, sts::SECURE, "after --run")?;
    }

    // 7. Refresh while I/O runs.
    let mut set = KeySet::K0;
    if !a.no_refresh {
        let t = Instant::now();
        let k = keys.clone();
        let (during, refreshed) = std::thread::scope(|sc| {
            let h = sc.spawn(|| host.refresh(sid, KeySet::K0, move |slot| k.key(sid, slot)));
            let mut during = 0u64;
            let mut err = None;
            while !h.is_finished() {
                if w.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                match w.one(next) {
                    Ok(()) => {
                        next += 1;
                        during += 1;
                    }
                    Err(e) => {
                        err = Some(format!("I/O {next} during the refresh: {e}"));
                        break;
                    }
                }
            }
            let r = h
                .join()
                .map_err(|_| "the refresh thread panicked".to_string());
            match err {
                Some(e) => Err(e),
                None => r.map(|r| (during, r)),
            }
        })?;
        set = refreshed.map_err(|e| format!("refresh: {e}"))?;
        total += during;
        say(
            bdf,
            format!(
                "refresh K0 -> K1 (KEY_PROG + K_SET_GO of K1, then K_SET_STOP of K0) in {:.0} ms while I/O ran: {during} {} verified during it",
                t.elapsed().as_secs_f64() * 1000.0,
                w.unit()
            ),
        );
        if !w.is_none() && during == 0 {
            return Err("no I/O completed while the refresh ran".into());
        }
        expect_state(bdf, index, sts::SECURE, "after the refresh")?;
        total += io_phase(bdf, w, &mut next, a.ios, "K1")?;
    }

    // 8. Stop, disable, tear down, end.
    host.stop(sid, set).map_err(|e| e.to_string())?;
    say(
        bdf,
        format!("IDE_KM K_SET_STOP of the 6 keys of K{}", set as u8),
    );
    expect_state(bdf, index, sts::INSECURE, "keys stopped, Enable still set")?;
    if let Some(m) = w
        .refused(next)
        .map_err(|e| format!("fail-closed check: {e}"))?
    {
        say(bdf, format!("fail closed: {m}"));
        next += 1;
    }
    let st = host.disable(index, &s).map_err(|e| e.to_string())?;
    say(
        bdf,
        format!("Enable cleared: Status {st:#010x} ({})", state_name(st)),
    );
    host.teardown(index, idle).map_err(|e| e.to_string())?;
    let ctl = host.regs().control(index).map_err(|e| e.to_string())?;
    if ctl != idle {
        return Err(format!(
            "teardown: Control reads {ctl:#010x}, idle was {idle:#010x}"
        ));
    }
    say(
        bdf,
        format!("registers torn down: Control back to its idle value {ctl:#010x}"),
    );
    total += io_phase(bdf, w, &mut next, a.ios.min(4), "in the clear")?;
    let sid_spdm = host.session();
    host.end().map_err(|e| e.to_string())?;
    say(bdf, format!("END_SESSION: session {sid_spdm:#010x} ended"));
    say(
        bdf,
        format!(
            "OK: {total} {} verified ({}), stream {index} (Stream ID {sid}) was SECURE with K0{}",
            w.unit(),
            w.describe(),
            if a.no_refresh { "" } else { " and K1" }
        ),
    );
    Ok(())
}
