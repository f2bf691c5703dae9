//! DOE mailboxes from guest user space, through the function's sysfs
//! `config` file (root may read and write all 4 KiB of it): find every DOE
//! extended capability, run the discovery walk, time exchanges.
//!
//! This drives the same registers the kernel's drivers/pci/doe.c drives, the
//! way it does (abort, write mailbox, Go, read mailbox with per-dword acks),
//! but polls DOE Status without the kernel's 7.8 ms sleeps, so the time of an
//! exchange as the guest sees it can be measured. The kernel only uses a
//! mailbox at enumeration and for TSM requests; don't run this while a TSM
//! driver talks to the same device.

use crate::pciconf::{walk, Cfg};
use crate::sysfs;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const DOE_EXT_CAP_ID: u16 = 0x2e;
const CTRL: u64 = 0x08;
const STATUS: u64 = 0x0c;
const WRITE: u64 = 0x10;
const READ: u64 = 0x14;
const ABORT: u32 = 1;
const GO: u32 = 1 << 31;
const BUSY: u32 = 1;
const ERROR: u32 = 1 << 2;
const READY: u32 = 1 << 31;
/// The kernel's DOE timeout.
const TIMEOUT: Duration = Duration::from_secs(1);

/// One DOE mailbox of a function.
pub struct Mailbox {
    cfg: File,
    /// Offset of the DOE capability.
    pub offset: u16,
    /// The function.
    pub bdf: String,
    /// Status polls needed by the last exchange before the response was ready.
    pub last_polls: u32,
}

impl Mailbox {
    fn rd(&self, reg: u64) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.cfg
            .read_exact_at(&mut b, u64::from(self.offset) + reg)
            .map_err(|e| {
                format!(
                    "{}: config read at {:#x}: {e}",
                    self.bdf,
                    self.offset as u64 + reg
                )
            })?;
        Ok(u32::from_le_bytes(b))
    }

    fn wr(&self, reg: u64, v: u32) -> Result<(), String> {
        self.cfg
            .write_all_at(&v.to_le_bytes(), u64::from(self.offset) + reg)
            .map_err(|e| {
                format!(
                    "{}: config write at {:#x}: {e}",
                    self.bdf,
                    self.offset as u64 + reg
                )
            })
    }

    /// Aborts whatever the mailbox is doing and waits for it to be idle.
    pub fn abort(&self) -> Result<(), String> {
        self.wr(CTRL, ABORT)?;
        let start = Instant::now();
        loop {
            let s = self.rd(STATUS)?;
            if s & (BUSY | ERROR) == 0 {
                return Ok(());
            }
            if start.elapsed() > TIMEOUT {
                return Err(format!(
                    "{}: DOE [{:x}] abort timed out (status {s:#010x})",
                    self.bdf, self.offset
                ));
            }
        }
    }

    /// Sends one data object and returns the response object's payload
    /// (the 2-dword header checked against the request and stripped).
    pub fn exchange(&mut self, vendor: u16, ty: u8, payload: &[u8]) -> Result<Vec<u8>, String> {
        let (rv, rt, out) = self.exchange_object(vendor, ty, payload)?;
        if (rv, rt) != (vendor, ty) {
            return Err(format!(
                "{}: DOE response object {rv:04x}:{rt:02x} does not match the request {vendor:04x}:{ty:02x}",
                self.bdf
            ));
        }
        Ok(out)
    }

    /// Sends one data object and returns the response object's vendor id,
    /// type and payload (header stripped, padding kept), whatever protocol
    /// it names: a secured CMA/SPDM request may be answered with a plain
    /// CMA/SPDM ERROR object.
    pub fn exchange_object(
        &mut self,
        vendor: u16,
        ty: u8,
        payload: &[u8],
    ) -> Result<(u16, u8, Vec<u8>), String> {
        let start = Instant::now();
        loop {
            let s = self.rd(STATUS)?;
            if s & ERROR != 0 {
                return Err(format!(
                    "{}: DOE [{:x}] reports Error before the request",
                    self.bdf, self.offset
                ));
            }
            if s & BUSY == 0 {
                break;
            }
            if start.elapsed() > TIMEOUT {
                return Err(format!("{}: DOE [{:x}] stays busy", self.bdf, self.offset));
            }
        }
        let dwords = 2 + payload.len().div_ceil(4);
        self.wr(WRITE, u32::from(vendor) | (u32::from(ty) << 16))?;
        self.wr(WRITE, (dwords as u32) & 0x3ffff)?;
        for chunk in payload.chunks(4) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            self.wr(WRITE, u32::from_le_bytes(b))?;
        }
        self.wr(CTRL, GO)?;
        let mut polls = 0;
        loop {
            polls += 1;
            let s = self.rd(STATUS)?;
            if s & ERROR != 0 {
                let _ = self.abort();
                return Err(format!(
                    "{}: DOE [{:x}] set Error after Go",
                    self.bdf, self.offset
                ));
            }
            if s & READY != 0 {
                break;
            }
            if start.elapsed() > TIMEOUT {
                let _ = self.abort();
                return Err(format!(
                    "{}: DOE [{:x}] gave no response to {vendor:04x}:{ty:02x} within 1 s (discarded as unsupported or malformed?)",
                    self.bdf, self.offset
                ));
            }
        }
        self.last_polls = polls;
        let h1 = self.rd(READ)?;
        self.wr(READ, 0)?;
        let h2 = self.rd(READ)?;
        self.wr(READ, 0)?;
        let len = match h2 & 0x3ffff {
            0 => 1 << 18,
            n => n as usize,
        };
        if len < 2 {
            let _ = self.abort();
            return Err(format!(
                "{}: DOE response length {len} is shorter than its header",
                self.bdf
            ));
        }
        let mut out = Vec::with_capacity((len - 2) * 4);
        for _ in 2..len {
            if self.rd(STATUS)? & READY == 0 {
                return Err(format!(
                    "{}: DOE response ended before its length ({len} dwords)",
                    self.bdf
                ));
            }
            out.extend_from_slice(&self.rd(READ)?.to_le_bytes());
            self.wr(READ, 0)?;
        }
        Ok(((h1 & 0xffff) as u16, ((h1 >> 16) & 0xff) as u8, out))
    }

    /// The discovery walk: (vendor, type) of every protocol, index order.
    pub fn discover(&mut self) -> Result<Vec<(u16, u8)>, String> {
        let mut out = Vec::new();
        let mut index: u32 = 0;
        for _ in 0..256 {
            let rsp = self.exchange(0x0001, 0, &(index | (2 << 8)).to_le_bytes())?;
            if rsp.len() < 4 {
                return Err(format!("{}: short discovery response", self.bdf));
            }
            let v = u32::from_le_bytes([rsp[0], rsp[1], rsp[2], rsp[3]]);
            out.push(((v & 0xffff) as u16, ((v >> 16) & 0xff) as u8));
            index = v >> 24;
            if index == 0 {
                return Ok(out);
            }
        }
        Err(format!(
            "{}: discovery did not end after 256 entries",
            self.bdf
        ))
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
        });
    }
    Ok(out)
}

fn protocol_name(vendor: u16, ty: u8) -> &'static str {
    match (vendor, ty) {
        (1, 0) => "discovery",
        (1, 1) => "CMA/SPDM",
        (1, 2) => "secured CMA/SPDM",
        _ => "vendor-defined",
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `trustdev-guest doe [BDF] [--bench N] [--json]`.
pub fn run(bdf: Option<&str>, bench: u32, json_out: bool) -> Result<(), String> {
    let bdfs = match bdf {
        Some(b) => vec![sysfs::normalize_bdf(b).ok_or_else(|| format!("bad PCI address {b:?}"))?],
        None => sysfs::list_bdfs()?,
    };
    let mut report = Vec::new();
    let mut any = false;
    for b in &bdfs {
        for mut mb in mailboxes(b)? {
            any = true;
            mb.abort()?;
            let t = Instant::now();
            let feats = mb.discover()?;
            let walk_time = t.elapsed();
            let mut times = Vec::new();
            for _ in 0..bench {
                let t = Instant::now();
                mb.exchange(0x0001, 0, &(2u32 << 8).to_le_bytes())?;
                times.push(t.elapsed());
            }
            times.sort();
            if json_out {
                report.push(json!({
                    "bdf": b,
                    "offset": mb.offset,
                    "features": feats.iter().map(|(v, t)| format!("{v:04x}:{t:02x}")).collect::<Vec<_>>(),
                    "discovery_walk_us": walk_time.as_micros() as u64,
                    "exchanges": times.len(),
                    "exchange_us_p50": percentile(&times, 0.5).as_micros() as u64,
                    "exchange_us_p99": percentile(&times, 0.99).as_micros() as u64,
                    "exchange_us_max": times.last().map_or(0, |d| d.as_micros() as u64),
                    "status_polls_last": mb.last_polls,
                }));
            } else {
                println!("{b} DOE mailbox at {:#x}:", mb.offset);
                for (v, t) in &feats {
                    println!("  feature {v:04x}:{t:02x} {}", protocol_name(*v, *t));
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
    if json_out {
        println!("{}", Value::Array(report));
    } else if !any {
        println!("no DOE mailbox found");
    }
    Ok(())
}
