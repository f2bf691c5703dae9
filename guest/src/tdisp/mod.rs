//! `trustdev-guest tdisp`: a TSM's TDISP flow from guest user space, over
//! the function's real DOE mailbox and configuration registers (sysfs
//! `config`):
//!
//! 1. an SPDM session (the device authenticated to a `--root`);
//! 2. IDE: IDE_KM QUERY, KEY_PROG + K_SET_GO of fresh random K0 keys (or,
//!    for tests, keys from `--insecure-test-keys SEED`) for
//!    every sub-stream in both directions, the selective stream's registers
//!    (Stream ID, Default Stream, Enable) — the stream reads SECURE;
//! 3. TDISP: GET_TDISP_VERSION, GET_TDISP_CAPABILITIES, LOCK_INTERFACE
//!    (every flag the device supports, the stream as default), the
//!    interface report checked against the function's BARs and MSI-X
//!    capability as the kernel sees them, START_INTERFACE: RUN;
//! 4. optionally I/O through a file of the function in RUN (`--io`, e.g.
//!    the NVMe namespace): the device's DMA on the bound stream;
//! 5. a locked register touched (Command register, INTx Disable toggled;
//!    or with `--touch msix` MSI-X Message Control's Function Mask): the
//!    TDI reads ERROR and refuses the report; the register restored;
//!    or, with `--expect-loss SECS` (an NVMe function bound to the nvme
//!    driver), the stream lost under I/O: verified O_DIRECT I/O kept
//!    running on a thread, `TDISP-LOSS-READY <bdf> stream <id>` printed
//!    (the host then injects an IDE integrity failure on the stream), the
//!    Stream Status read INSECURE and the TDI ERROR, STOP, the stream
//!    disabled, the I/O in flight waited for (its outcome reported: the
//!    kernel's timeout and controller reset run meanwhile), then new keys,
//!    SECURE, LOCK, report, START, the blocks written before the loss and
//!    new I/O verified;
//! 6. STOP_INTERFACE: CONFIG_UNLOCKED; then the stream disabled, its keys
//!    retired, the session ended.
//!
//! A TDI in ERROR lets its device do no DMA at all: a device that was busy
//! (an NVMe controller reading its shadow doorbells) may fail on that and
//! need a reset before the host uses it again (for NVMe:
//! `echo 1 > /sys/class/nvme/nvmeN/reset_controller`).
//!
//! Each state is read back with GET_DEVICE_INTERFACE_STATE. The last line
//! is `TDISP-OK <bdf> ...` when every step passed.
//!
//! The first step aborts the mailbox, which resets the device's SPDM state:
//! don't run this while a TSM driver talks to the same device.

mod loss;

use crate::doe::{mailboxes, Mailbox, DISCOVERY_VERSION};
use crate::ide::io::{NvmeIo, Workload};
use crate::spdm::load_roots;
use crate::sysfs;
use serde_json::{json, Value};
use spdm_responder::idekm::regs::{ctl, state_name, sts};
use spdm_responder::idekm::{KeyDirection, KeySet, KeySlot, KpAckStatus, SubStream};
use spdm_responder::tdisp::{
    range_attr, ErrorCode, InterfaceId, InterfaceReport, LockParams, TdiState, TdispError,
};
use spdm_responder::transport::doe::{self, DoeTransport, ProtocolId};
use spdm_responder::{Requester, RequesterConfig};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The IDE extended capability ID (PCIe 6.x §7.9.26); its selective stream
/// registers' fields are spdm_responder's (`idekm::regs`).
const IDE_CAP_ID: u16 = 0x30;

/// Options of `trustdev-guest tdisp`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// PCI address of the device ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Trusted root certificate, PEM or DER (repeatable).
    #[arg(long = "root", required = true)]
    pub roots: Vec<PathBuf>,
    /// Stream ID of the selective IDE stream the TDI is bound to.
    #[arg(long, default_value_t = 1)]
    pub stream_id: u8,
    /// Selective IDE stream register block to use.
    #[arg(long, default_value_t = 0)]
    pub stream_index: u8,
    /// MMIO_REPORTING_OFFSET of LOCK_INTERFACE (decimal or 0x hex).
    #[arg(long, default_value = "0", value_parser = parse_u64)]
    pub mmio_offset: u64,
    /// In RUN, write and read back a pattern through this file with
    /// O_DIRECT (a block device of the function, e.g. /dev/nvme0n1; 64 KiB
    /// at 1 MiB are overwritten).
    #[arg(long)]
    pub io: Option<PathBuf>,
    /// The locked register to touch in step 5: `command` (INTx Disable in
    /// the Command register) or `msix` (Function Mask in MSI-X Message
    /// Control; locked by LOCK_MSIX).
    #[arg(long, default_value = "command", value_parser = ["command", "msix"])]
    pub touch: String,
    /// Leave the TDI in RUN and the stream SECURE (skip steps 5 and 6).
    #[arg(long)]
    pub keep: bool,
    /// In RUN, keep verified 4 KiB O_DIRECT I/O running on the function's
    /// NVMe namespace, print `TDISP-LOSS-READY <bdf> stream <id>` and wait
    /// up to this many seconds for the stream to be lost (an IDE integrity
    /// failure injected from the host): then the stream must read INSECURE
    /// and the TDI ERROR; STOP, the stream disabled, what the I/O in flight
    /// did; then recovery (new keys, SECURE, LOCK, START, RUN), the blocks
    /// written before the loss and new I/O verified. Replaces step 5.
    #[arg(long, value_name = "SECS", conflicts_with = "keep")]
    pub expect_loss: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// INSECURE, for tests: derive the IDE keys from SEED (as
    /// `trustdev-guest ide --insecure-test-keys`) instead of the random
    /// source, so a test knows the keys it must never find in a trace.
    #[arg(long, value_name = "SEED")]
    pub insecure_test_keys: Option<String>,
}

/// Parses a decimal or `0x` hexadecimal number.
fn parse_u64(s: &str) -> Result<u64, String> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("{s:?} is not a number"))
}

type StepResult<T> = Result<T, (&'static str, String)>;

struct Flow {
    json: bool,
    steps: Vec<Value>,
    t: Instant,
}

impl Flow {
    fn ok(&mut self, name: &'static str, detail: String) {
        let ms = self.t.elapsed().as_secs_f64() * 1000.0;
        if !self.json {
            println!("  {name:<34} OK {ms:>8.2} ms  {detail}");
        }
        self.steps
            .push(json!({"step": name, "ok": true, "ms": ms, "detail": detail}));
        self.t = Instant::now();
    }
}

fn tdisp_err(step: &'static str) -> impl Fn(TdispError) -> (&'static str, String) {
    move |e| (step, format!("{e}"))
}

fn spdm_err<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> (&'static str, String) {
    move |e| (step, e.to_string())
}

/// The function's configuration space file.
struct Config(File);

impl Config {
    fn rd(&self, off: u16) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.0
            .read_exact_at(&mut b, u64::from(off))
            .map_err(|e| format!("config read at {off:#x}: {e}"))?;
        Ok(u32::from_le_bytes(b))
    }

    fn wr(&self, off: u16, v: u32) -> Result<(), String> {
        self.0
            .write_all_at(&v.to_le_bytes(), u64::from(off))
            .map_err(|e| format!("config write at {off:#x}: {e}"))
    }

    fn wr16(&self, off: u16, v: u16) -> Result<(), String> {
        self.0
            .write_all_at(&v.to_le_bytes(), u64::from(off))
            .map_err(|e| format!("config write at {off:#x}: {e}"))
    }

    fn ext_cap(&self, id: u16) -> Result<Option<u16>, String> {
        let mut off = 0x100u16;
        for _ in 0..512 {
            let h = self.rd(off)?;
            if h == 0 || h == u32::MAX {
                return Ok(None);
            }
            if h as u16 == id {
                return Ok(Some(off));
            }
            off = (h >> 20) as u16 & 0xffc;
            if off < 0x100 {
                return Ok(None);
            }
        }
        Ok(None)
    }

    fn std_cap(&self, id: u8) -> Result<Option<u16>, String> {
        let mut off = (self.rd(0x34)? & 0xfc) as u16;
        for _ in 0..48 {
            if off < 0x40 {
                return Ok(None);
            }
            let h = self.rd(off)?;
            if h as u8 == id {
                return Ok(Some(off));
            }
            off = ((h >> 8) & 0xfc) as u16;
        }
        Ok(None)
    }

    /// Offset of selective stream `index`'s register block.
    fn sel_stream(&self, ide: u16, index: u8) -> Result<u16, String> {
        let cap = self.rd(ide + 4)?;
        if cap & 2 == 0 {
            return Err("the IDE capability has no selective streams".into());
        }
        let nsel = ((cap >> 16) & 0xff) + 1;
        if u32::from(index) >= nsel {
            return Err(format!("selective stream {index} of {nsel}"));
        }
        let nlink = if cap & 1 != 0 {
            1 + ((cap >> 13) & 7)
        } else {
            0
        } as u16;
        let mut off = ide + 0x0c + 8 * nlink;
        for _ in 0..index {
            let assoc = (self.rd(off)? & 0xf) as u16;
            off += 20 + 12 * assoc;
        }
        Ok(off)
    }
}

/// `trustdev-guest tdisp`.
pub fn run(args: Args) -> Result<(), String> {
    let bdf =
        sysfs::normalize_bdf(&args.bdf).ok_or_else(|| format!("bad PCI address {:?}", args.bdf))?;
    let roots = load_roots(&args.roots)?;
    let mut flow = Flow {
        json: args.json,
        steps: Vec::new(),
        t: Instant::now(),
    };
    if !args.json {
        println!("TDISP flow on {bdf}");
    }
    let r = run_inner(
        &args,
        &bdf,
        roots.into_iter().map(|(_, d)| d).collect(),
        &mut flow,
    );
    let mut out = json!({"bdf": bdf, "steps": flow.steps, "ok": r.is_ok()});
    match r {
        Ok(summary) => {
            if args.json {
                out["summary"] = json!(summary);
                println!("{out}");
            } else {
                println!("TDISP-OK {bdf} {summary}");
            }
            Ok(())
        }
        Err((step, msg)) => {
            if args.json {
                out["failed_step"] = json!(step);
                out["error"] = json!(msg);
                println!("{out}");
            } else {
                println!("  {step:<34} FAILED: {msg}");
            }
            Err(format!("tdisp {bdf}: {step} failed: {msg}"))
        }
    }
}

/// The CMA mailbox (discovery lists CMA/SPDM and secured CMA/SPDM).
fn cma_mailbox(bdf: &str) -> Result<Mailbox, String> {
    for mut mb in mailboxes(bdf)? {
        mb.abort().map_err(|e| e.to_string())?;
        let feats = doe::discover(&mut mb, DISCOVERY_VERSION).map_err(|e| e.to_string())?;
        if feats.contains(&ProtocolId::CMA) && feats.contains(&ProtocolId::SECURED_CMA) {
            return Ok(mb);
        }
    }
    Err(format!(
        "{bdf} has no DOE mailbox with CMA/SPDM and secured CMA/SPDM"
    ))
}

fn interface_of(bdf: &str) -> InterfaceId {
    // normalize_bdf gives DDDD:BB:DD.F.
    let p = |s: &str| u32::from_str_radix(s, 16).unwrap_or(0);
    let (dom, rest) = bdf.split_at(4);
    let bus = p(&rest[1..3]);
    let dev = p(&rest[4..6]);
    let func = p(&rest[7..8]);
    let mut function_id = (bus << 8) | (dev << 3) | func;
    let seg = p(dom);
    if seg != 0 {
        function_id |= ((seg & 0xff) << 16) | InterfaceId::SEGMENT_VALID;
    }
    InterfaceId {
        function_id,
        reserved: 0,
    }
}

type Req = Requester<DoeTransport<Mailbox>>;

fn expect_state(
    r: &mut Req,
    sid: u32,
    iface: InterfaceId,
    want: TdiState,
    step: &'static str,
) -> StepResult<()> {
    let s = r.tdisp_get_state(sid, iface).map_err(tdisp_err(step))?;
    if s == want {
        Ok(())
    } else {
        Err((step, format!("the TDI is in {s}, expected {want}")))
    }
}

/// The memory BARs of the function from sysfs `resource`: (index, start, size).
fn bars(bdf: &str) -> Result<Vec<(u16, u64, u64)>, String> {
    let path = sysfs::dev_dir(bdf).join("resource");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in text.lines().take(6).enumerate() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok())
            .collect();
        if let [start, end, flags] = f[..] {
            // IORESOURCE_MEM.
            if end > start && flags & 0x200 != 0 {
                v.push((i as u16, start, end - start + 1));
            }
        }
    }
    Ok(v)
}

/// Checks the report against the function's BARs and MSI-X capability.
fn check_report(
    rep: &InterfaceReport,
    bars: &[(u16, u64, u64)],
    msix: Option<(u8, u32, u8, u32)>,
    offset: u64,
) -> Result<(), String> {
    for &(i, start, size) in bars {
        let mine: Vec<_> = rep.ranges.iter().filter(|r| r.range_id == i).collect();
        let first = start.wrapping_add(offset) >> 12;
        let pages: u64 = mine.iter().map(|r| u64::from(r.number_of_pages)).sum();
        if mine.first().map(|r| r.first_page) != Some(first) || pages != size.div_ceil(4096) {
            return Err(format!(
                "BAR{i} ({start:#x}, {size:#x} bytes) is not reported as pages {first:#x}.. ({} pages): {mine:?}",
                size.div_ceil(4096)
            ));
        }
    }
    if rep.ranges.len() < bars.len() {
        return Err("fewer ranges than BARs".into());
    }
    if let Some((tbir, toff, pbir, poff)) = msix {
        for (bir, off, attr, what) in [
            (tbir, toff, range_attr::MSIX_TABLE, "MSI-X table"),
            (pbir, poff, range_attr::MSIX_PBA, "MSI-X PBA"),
        ] {
            let Some(&(_, start, _)) = bars.iter().find(|b| b.0 == u16::from(bir)) else {
                return Err(format!(
                    "{what} in BAR{bir}, which the kernel did not place"
                ));
            };
            let page = (start + u64::from(off)).wrapping_add(offset) >> 12;
            let hit = rep.ranges.iter().find(|r| {
                r.first_page <= page && page < r.first_page + u64::from(r.number_of_pages)
            });
            if !hit.is_some_and(|r| r.attributes & attr != 0) {
                return Err(format!(
                    "{what} page {page:#x} is not marked in the report: {hit:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Writes 64 KiB at 1 MiB of `path` with O_DIRECT and reads them back.
fn io_check(path: &Path, seed: u8) -> Result<(), String> {
    const LEN: usize = 64 << 10;
    const AT: u64 = 1 << 20;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // An aligned buffer for O_DIRECT.
    let mut raw = vec![0u8; LEN + 4096];
    let a = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[a..a + LEN];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ seed;
    }
    let want = buf.to_vec();
    f.write_all_at(buf, AT)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    buf.fill(0);
    f.read_exact_at(buf, AT)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if buf != &want[..] {
        return Err(format!("{}: the data read back differs", path.display()));
    }
    Ok(())
}

/// The TDI this flow drives: its session, interface, function.
#[derive(Clone, Copy)]
struct Tdi<'a> {
    sid: u32,
    iface: InterfaceId,
    bdf: &'a str,
    cfg: &'a Config,
}

/// The selective stream's register block and its Control value without
/// Enable.
#[derive(Clone, Copy)]
struct Stream {
    sel: u16,
    ctl: u32,
}

/// IDE_KM KEY_PROG + K_SET_GO of fresh random K0 keys for every sub-stream
/// in both directions of Stream ID `id`.
fn program_keys(
    r: &mut Req,
    sid: u32,
    id: u8,
    keys: &crate::ide::Keys,
    step: &'static str,
) -> StepResult<()> {
    for d in [KeyDirection::Rx, KeyDirection::Tx] {
        for ss in SubStream::ALL {
            let slot = KeySlot::new(KeySet::K0, d, ss);
            let key = keys.key(id, slot);
            match r
                .ide_km_key_prog(sid, id, slot, 0, &key)
                .map_err(spdm_err(step))?
            {
                Ok(KpAckStatus::Success) => {}
                other => return Err((step, format!("KP_ACK {other:?} for {}", slot.name()))),
            }
            r.ide_km_key_set_go(sid, id, slot, 0)
                .map_err(spdm_err(step))?;
        }
    }
    Ok(())
}

/// Sets the selective stream's Enable; it must read SECURE. Returns its
/// Stream Status.
fn enable_stream(cfg: &Config, sel: u16, ctl: u32, step: &'static str) -> StepResult<u32> {
    cfg.wr(sel + 4, ctl | ctl::EN).map_err(|e| (step, e))?;
    let st = cfg.rd(sel + 8).map_err(|e| (step, e))?;
    if st & sts::STATE != sts::SECURE {
        return Err((step, format!("Stream Status {st:#010x}: not SECURE")));
    }
    Ok(st)
}

/// LOCK_INTERFACE (`lock_flags`, the stream as default), the interface
/// report checked against the function's BARs and MSI-X, START_INTERFACE:
/// RUN. `again` names the steps of a second pass.
fn lock_and_start(
    r: &mut Req,
    t: Tdi<'_>,
    o: &Args,
    lock_flags: u16,
    flow: &mut Flow,
    again: bool,
) -> StepResult<LockParams> {
    let step = if again {
        "LOCK_INTERFACE (again)"
    } else {
        "LOCK_INTERFACE"
    };
    let params = LockParams {
        flags: lock_flags,
        default_stream_id: o.stream_id,
        mmio_reporting_offset: o.mmio_offset,
        bind_p2p_address_mask: 0,
    };
    let nonce = r
        .tdisp_lock(t.sid, t.iface, &params)
        .map_err(tdisp_err(step))?;
    expect_state(r, t.sid, t.iface, TdiState::ConfigLocked, step)?;
    flow.ok(
        step,
        format!(
            "flags {:#06x}, stream {}: CONFIG_LOCKED",
            params.flags, o.stream_id
        ),
    );
    let step = if again {
        "GET_DEVICE_INTERFACE_REPORT (again)"
    } else {
        "GET_DEVICE_INTERFACE_REPORT"
    };
    let rep = r
        .tdisp_get_report(t.sid, t.iface)
        .map_err(tdisp_err(step))?;
    let msix = match t.cfg.std_cap(0x11).map_err(|e| (step, e))? {
        Some(m) => {
            let tbl = t.cfg.rd(m + 4).map_err(|e| (step, e))?;
            let pba = t.cfg.rd(m + 8).map_err(|e| (step, e))?;
            Some(((tbl & 7) as u8, tbl & !7, (pba & 7) as u8, pba & !7))
        }
        None => None,
    };
    let b = bars(t.bdf).map_err(|e| (step, e))?;
    check_report(&rep, &b, msix, o.mmio_offset).map_err(|e| (step, e))?;
    let ranges: Vec<String> = rep
        .ranges
        .iter()
        .map(|r| {
            format!(
                "BAR{}:{:#x}+{}p/{:#x}",
                r.range_id,
                r.first_page << 12,
                r.number_of_pages,
                r.attributes
            )
        })
        .collect();
    flow.ok(
        step,
        format!(
            "{} range(s) match the BARs and MSI-X: {}",
            rep.ranges.len(),
            ranges.join(" ")
        ),
    );
    let step = if again {
        "START_INTERFACE (again)"
    } else {
        "START_INTERFACE"
    };
    r.tdisp_start(t.sid, t.iface, &nonce)
        .map_err(tdisp_err(step))?;
    expect_state(r, t.sid, t.iface, TdiState::Run, step)?;
    flow.ok(step, "RUN".into());
    Ok(params)
}

fn run_inner(o: &Args, bdf: &str, roots: Vec<Vec<u8>>, flow: &mut Flow) -> StepResult<String> {
    let iface = interface_of(bdf);
    let cfg_path = sysfs::dev_dir(bdf).join("config");
    let cfg = Config(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&cfg_path)
            .map_err(|e| {
                (
                    "open config",
                    format!("{}: {e} (root needed)", cfg_path.display()),
                )
            })?,
    );

    // 1. SPDM session.
    let step = "SPDM session";
    let mb = cma_mailbox(bdf).map_err(|e| (step, e))?;
    let rcfg = RequesterConfig {
        trusted_roots: roots,
        ..RequesterConfig::default()
    };
    let mut r: Req = Requester::new(rcfg, DoeTransport::new(mb));
    r.init_connection().map_err(spdm_err(step))?;
    r.get_digests().map_err(spdm_err(step))?;
    r.get_certificate(0).map_err(spdm_err(step))?;
    let sid = r.key_exchange(0, 0).map_err(spdm_err(step))?;
    flow.ok(step, format!("certificate verified, session {sid:#010x}"));

    // 2. IDE.
    let step = "IDE_KM QUERY";
    let q = r.ide_km_query(sid, 0).map_err(spdm_err(step))?;
    flow.ok(
        step,
        format!(
            "port 0 of {}, {} IDE register(s)",
            q.max_port_index + 1,
            q.regs.len()
        ),
    );
    let step = "IDE stream setup";
    let ide = cfg
        .ext_cap(IDE_CAP_ID)
        .map_err(|e| (step, e))?
        .ok_or((step, format!("{bdf} has no IDE capability")))?;
    let sel = cfg.sel_stream(ide, o.stream_index).map_err(|e| (step, e))?;
    let ctl = (u32::from(o.stream_id) << ctl::ID_SHIFT) | ctl::DEFAULT;
    cfg.wr(sel + 4, ctl).map_err(|e| (step, e))?;
    flow.ok(
        step,
        format!(
            "selective stream {} (config {sel:#x}): Stream ID {}, Default Stream",
            o.stream_index, o.stream_id
        ),
    );
    let step = "IDE_KM KEY_PROG+K_SET_GO";
    let keys = crate::ide::Keys::from_seed(o.insecure_test_keys.as_deref());
    program_keys(&mut r, sid, o.stream_id, &keys, step)?;
    flow.ok(
        step,
        format!("K0 {}, RX and TX × PR/NPR/CPL, armed", keys.describe()),
    );
    let step = "IDE stream enable";
    let st = enable_stream(&cfg, sel, ctl, step)?;
    flow.ok(step, format!("Stream Status {st:#010x}: SECURE"));

    // 3. TDISP.
    let step = "GET_TDISP_VERSION";
    let v = r.tdisp_get_version(sid, iface).map_err(tdisp_err(step))?;
    flow.ok(
        step,
        format!(
            "interface {iface} (FUNCTION_ID {:#x}): versions {v:02x?}",
            iface.function_id
        ),
    );
    let step = "GET_TDISP_CAPABILITIES";
    let caps = r
        .tdisp_get_capabilities(sid, iface, 0)
        .map_err(tdisp_err(step))?;
    flow.ok(
        step,
        format!(
            "REQ_MSGS_SUPPORTED {:02x} {:02x}, LOCK flags {:#06x}, address width {}",
            caps.req_msgs_supported[0],
            caps.req_msgs_supported[1],
            caps.lock_flags_supported,
            caps.dev_addr_width
        ),
    );
    let step = "GET_DEVICE_INTERFACE_STATE";
    let s0 = r.tdisp_get_state(sid, iface).map_err(tdisp_err(step))?;
    if s0 != TdiState::ConfigUnlocked {
        // Left over from an earlier run: STOP is the way out.
        r.tdisp_stop(sid, iface).map_err(tdisp_err(step))?;
    }
    expect_state(&mut r, sid, iface, TdiState::ConfigUnlocked, step)?;
    flow.ok(
        step,
        format!(
            "{s0}{}",
            if s0 == TdiState::ConfigUnlocked {
                ""
            } else {
                ", STOP -> CONFIG_UNLOCKED"
            }
        ),
    );
    let tdi = Tdi {
        sid,
        iface,
        bdf,
        cfg: &cfg,
    };
    let params = lock_and_start(&mut r, tdi, o, caps.lock_flags_supported, flow, false)?;
    if let Some(p) = &o.io {
        let step = "I/O in RUN";
        io_check(p, 0x5a).map_err(|e| (step, e))?;
        flow.ok(
            step,
            format!("64 KiB written and read back through {}", p.display()),
        );
    }
    if o.keep {
        return Ok(format!(
            "interface {iface} in RUN on stream {} (kept)",
            o.stream_id
        ));
    }

    let what = if let Some(secs) = o.expect_loss {
        // 5'. The stream lost under I/O, and recovery.
        loss::loss_and_recovery(
            &mut r,
            tdi,
            o,
            Stream { sel, ctl },
            caps.lock_flags_supported,
            flow,
            Duration::from_secs(secs),
        )?;
        "LOCK, report, RUN, the stream lost under I/O (INSECURE, ERROR), STOP, new keys, RUN again, I/O verified, STOP"
    } else {
        // 5. A locked register.
        let step = "touch a locked register";
        let (off, bit, what) = if o.touch == "msix" {
            if params.flags & spdm_responder::tdisp::lock_flags::LOCK_MSIX == 0 {
                return Err((step, "the device does not offer LOCK_MSIX".into()));
            }
            let m = cfg
                .std_cap(0x11)
                .map_err(|e| (step, e))?
                .ok_or((step, "no MSI-X capability".to_string()))?;
            (m + 2, 0x4000u16, "MSI-X Message Control (Function Mask)")
        } else {
            (4, 0x400u16, "Command (INTx Disable)")
        };
        let old = (cfg.rd(off & !3).map_err(|e| (step, e))? >> ((off & 3) * 8)) as u16;
        cfg.wr16(off, old ^ bit).map_err(|e| (step, e))?;
        let s = r.tdisp_get_state(sid, iface).map_err(tdisp_err(step));
        cfg.wr16(off, old).map_err(|e| (step, e))?;
        if s? != TdiState::Error {
            return Err((step, "the TDI did not go to ERROR".into()));
        }
        flow.ok(
            step,
            format!("{what} {old:#06x} -> {:#06x}: ERROR; restored", old ^ bit),
        );
        let step = "report in ERROR";
        match r.tdisp_get_report(sid, iface) {
            Err(e) if e.code() == Some(ErrorCode::InvalidInterfaceState) => {
                flow.ok(step, format!("refused: {e}"))
            }
            other => {
                return Err((
                    step,
                    format!("expected INVALID_INTERFACE_STATE, got {other:?}"),
                ))
            }
        }
        expect_state(&mut r, sid, iface, TdiState::Error, step)?;
        "LOCK, report, RUN, ERROR on a locked register, STOP"
    };

    // 6. STOP and teardown.
    let step = "STOP_INTERFACE";
    r.tdisp_stop(sid, iface).map_err(tdisp_err(step))?;
    expect_state(&mut r, sid, iface, TdiState::ConfigUnlocked, step)?;
    flow.ok(step, "CONFIG_UNLOCKED".into());
    let step = "IDE teardown";
    cfg.wr(sel + 4, ctl).map_err(|e| (step, e))?;
    for d in [KeyDirection::Tx, KeyDirection::Rx] {
        for ss in SubStream::ALL {
            r.ide_km_key_set_stop(sid, o.stream_id, KeySlot::new(KeySet::K0, d, ss), 0)
                .map_err(spdm_err(step))?;
        }
    }
    r.end_session(sid).map_err(spdm_err(step))?;
    flow.ok(step, "stream disabled, keys retired, session ended".into());
    Ok(format!("interface {iface}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spdm_responder::tdisp::MmioRange;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x100000000"), Ok(1 << 32));
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert!(parse_u64("0xg").is_err());
    }

    #[test]
    fn interface_ids() {
        assert_eq!(interface_of("0000:01:00.0").function_id, 0x100);
        assert_eq!(interface_of("0000:00:10.0").function_id, 0x80);
        let i = interface_of("0002:be:1d.7");
        assert_eq!(i.rid(), 0xbeef);
        assert_eq!(i.segment(), Some(2));
    }

    #[test]
    fn report_check() {
        let range = |first_page, number_of_pages, attributes, range_id| MmioRange {
            first_page,
            number_of_pages,
            attributes,
            range_id,
        };
        let rep = InterfaceReport {
            ranges: vec![range(0xfe000, 4, 0, 0), range(0xfe004, 1, 3, 4)],
            ..InterfaceReport::default()
        };
        let bars = [(0, 0xfe00_0000, 0x4000), (4, 0xfe00_4000, 0x1000)];
        let msix = Some((4, 0, 4, 0x800));
        assert!(check_report(&rep, &bars, msix, 0).is_ok());
        assert!(
            check_report(&rep, &bars, Some((0, 0, 4, 0x800)), 0).is_err(),
            "table not marked"
        );
        assert!(
            check_report(&rep, &bars, msix, 0x1000).is_err(),
            "offset not applied"
        );
        let moved = [(0, 0xfd00_0000, 0x4000), (4, 0xfe00_4000, 0x1000)];
        assert!(check_report(&rep, &moved, msix, 0).is_err());
    }
}
