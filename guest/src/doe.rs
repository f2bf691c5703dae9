//! DOE mailboxes from guest user space, through the function's sysfs
//! `config` file (root may read and write all 4 KiB of it): find every DOE
//! extended capability, run the discovery walk, time exchanges.
//!
//! [`Mailbox`] drives the same registers the kernel's drivers/pci/doe.c
//! drives, the way it does (abort, write mailbox, Go, read mailbox with
//! per-dword acks), but polls DOE Status without the kernel's poll-interval
//! sleeps, so the time of an exchange as the guest sees it can be measured.
//! It is a [`DoeChannel`]: objects are encoded, decoded and discovered by
//! `spdm_responder::transport::doe` (the one home of DOE encoding), and the
//! SPDM requester runs over it through that module's `DoeTransport`.
//!
//! The kernel only uses a mailbox at enumeration and for TSM requests; don't
//! run this while a TSM driver talks to the same device.

use crate::pciconf::{walk, Cfg};
use crate::sysfs;
use serde_json::{json, Value};
use spdm_responder::error::TransportError;
use spdm_responder::transport::doe::ctrl::{ABORT, GO};
use spdm_responder::transport::doe::reg::{CTRL, READ, STATUS, WRITE};
use spdm_responder::transport::doe::status::{BUSY, ERROR, READY};
use spdm_responder::transport::doe::{
    self, discovery_request, length_dwords, DoeChannel, ProtocolId, DOE_EXT_CAP_ID,
};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// The kernel's DOE timeout.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Discovery request version for a version-2 DOE capability (what Linux sends).
pub const DISCOVERY_VERSION: u8 = 2;

/// One DOE mailbox of a function.
pub struct Mailbox {
    cfg: File,
    /// Offset of the DOE capability.
    pub offset: u16,
    /// The function.
    pub bdf: String,
    /// Status polls needed by the last exchange before the response was ready.
    pub last_polls: u32,
    /// Exchanges done.
    pub exchanges: u32,
    /// Time spent in exchanges.
    pub busy: Duration,
}

impl Mailbox {
    fn fail(&self, what: impl std::fmt::Display) -> TransportError {
        TransportError::Io(std::io::Error::other(format!(
            "{}: DOE [{:#x}] {what}",
            self.bdf, self.offset
        )))
    }

    fn rd(&self, reg: u16) -> Result<u32, TransportError> {
        let mut b = [0u8; 4];
        let at = u64::from(self.offset) + u64::from(reg);
        self.cfg
            .read_exact_at(&mut b, at)
            .map_err(|e| self.fail(format_args!("config read at {at:#x}: {e}")))?;
        Ok(u32::from_le_bytes(b))
    }

    fn wr(&self, reg: u16, v: u32) -> Result<(), TransportError> {
        let at = u64::from(self.offset) + u64::from(reg);
        self.cfg
            .write_all_at(&v.to_le_bytes(), at)
            .map_err(|e| self.fail(format_args!("config write at {at:#x}: {e}")))
    }

    /// Aborts whatever the mailbox is doing and waits for it to be idle.
    pub fn abort(&self) -> Result<(), TransportError> {
        self.wr(CTRL, ABORT)?;
        let start = Instant::now();
        loop {
            let s = self.rd(STATUS)?;
            if s & (BUSY | ERROR) == 0 {
                return Ok(());
            }
            if start.elapsed() > TIMEOUT {
                return Err(self.fail(format_args!("abort timed out (status {s:#010x})")));
            }
        }
    }

    fn transfer(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        let what = ProtocolId::from_header1(dword(obj, 0));
        let start = Instant::now();
        loop {
            let s = self.rd(STATUS)?;
            if s & ERROR != 0 {
                return Err(self.fail("reports Error before the request"));
            }
            if s & BUSY == 0 {
                break;
            }
            if start.elapsed() > TIMEOUT {
                return Err(self.fail("stays busy"));
            }
        }
        for d in obj.chunks_exact(4) {
            self.wr(WRITE, u32::from_le_bytes([d[0], d[1], d[2], d[3]]))?;
        }
        self.wr(CTRL, GO)?;
        let mut polls = 0;
        loop {
            polls += 1;
            let s = self.rd(STATUS)?;
            if s & ERROR != 0 {
                let _ = self.abort();
                return Err(self.fail("set Error after Go"));
            }
            if s & READY != 0 {
                break;
            }
            if start.elapsed() > TIMEOUT {
                let _ = self.abort();
                return Err(self.fail(format_args!(
                    "gave no response to a {what} request within 1 s \
                     (discarded as unsupported or malformed?)"
                )));
            }
        }
        self.last_polls = polls;
        let mut out = Vec::new();
        for _ in 0..2 {
            out.extend_from_slice(&self.rd(READ)?.to_le_bytes());
            self.wr(READ, 0)?;
        }
        let len = length_dwords(dword(&out, 4));
        if len < 2 {
            let _ = self.abort();
            return Err(self.fail(format_args!(
                "response length {len} is shorter than its header"
            )));
        }
        for _ in 2..len {
            if self.rd(STATUS)? & READY == 0 {
                return Err(self.fail(format_args!(
                    "response ended before its length ({len} dwords)"
                )));
            }
            out.extend_from_slice(&self.rd(READ)?.to_le_bytes());
            self.wr(READ, 0)?;
        }
        Ok(out)
    }
}

fn dword(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One object in, one object out, through the mailbox registers (counted
/// and timed).
impl DoeChannel for Mailbox {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        if obj.len() < 8 || obj.len() % 4 != 0 {
            return Err(TransportError::Malformed(
                "DOE object of whole dwords expected",
            ));
        }
        let t = Instant::now();
        let r = self.transfer(obj);
        self.busy += t.elapsed();
        self.exchanges += 1;
        r
    }
}

/// Every DOE mailbox of `bdf`.
pub fn mailboxes(bdf: &str) -> Result<Vec<Mailbox>, String> {
    let path = sysfs::dev_dir(bdf).join("config");
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 4096 {
        return Ok(Vec::new());
    }
    let w = walk(Cfg(&bytes));
    let mut out = Vec::new();
    for c in w.ext_caps.iter().filter(|c| c.id == DOE_EXT_CAP_ID) {
        let cfg = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e} (root needed)", path.display()))?;
        out.push(Mailbox {
            cfg,
            offset: c.offset,
            bdf: bdf.to_string(),
            last_polls: 0,
            exchanges: 0,
            busy: Duration::ZERO,
        });
    }
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Options of `trustdev-guest doe`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this function ([DDDD:]BB:DD.F).
    bdf: Option<String>,
    /// Time this many discovery exchanges per mailbox.
    #[arg(long, default_value_t = 0)]
    bench: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `trustdev-guest doe [BDF] [--bench N] [--json]`.
pub fn run(args: Args) -> Result<(), String> {
    let Args { bdf, bench, json } = args;
    let bdfs = match bdf.as_deref() {
        Some(b) => vec![sysfs::normalize_bdf(b).ok_or_else(|| format!("bad PCI address {b:?}"))?],
        None => sysfs::list_bdfs()?,
    };
    let mut report = Vec::new();
    let mut any = false;
    for b in &bdfs {
        for mut mb in mailboxes(b)? {
            any = true;
            mb.abort().map_err(|e| e.to_string())?;
            let t = Instant::now();
            let feats = doe::discover(&mut mb, DISCOVERY_VERSION).map_err(|e| e.to_string())?;
            let walk_time = t.elapsed();
            let request = discovery_request(0, DISCOVERY_VERSION);
            let mut times = Vec::new();
            for _ in 0..bench {
                let t = Instant::now();
                doe::exchange(&mut mb, ProtocolId::DISCOVERY, &request)
                    .map_err(|e| e.to_string())?;
                times.push(t.elapsed());
            }
            times.sort();
            if json {
                report.push(json!({
                    "bdf": b,
                    "offset": mb.offset,
                    "features": feats.iter().map(ProtocolId::to_string).collect::<Vec<_>>(),
                    "discovery_walk_us": walk_time.as_micros() as u64,
                    "exchanges": times.len(),
                    "exchange_us_p50": percentile(&times, 0.5).as_micros() as u64,
                    "exchange_us_p99": percentile(&times, 0.99).as_micros() as u64,
                    "exchange_us_max": times.last().map_or(0, |d| d.as_micros() as u64),
                    "status_polls_last": mb.last_polls,
                }));
            } else {
                println!("{b} DOE mailbox at {:#x}:", mb.offset);
                for p in &feats {
                    println!("  feature {p} {}", p.name());
                }
                println!(
                    "  discovery walk of {} entries: {} us",
                    feats.len(),
                    walk_time.as_micros()
                );
                if !times.is_empty() {
                    println!(
                        "  {} discovery exchanges: p50 {} us, p99 {} us, max {} us; response ready at the first status poll: {}",
                        times.len(),
                        percentile(&times, 0.5).as_micros(),
                        percentile(&times, 0.99).as_micros(),
                        times.last().map_or(0, |d| d.as_micros()),
                        if mb.last_polls == 1 { "yes" } else { "no" }
                    );
                }
            }
        }
    }
    if json {
        println!("{}", Value::Array(report));
    } else if !any {
        println!("no DOE mailbox found");
    }
    Ok(())
}
