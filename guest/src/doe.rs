//! `trustdev-guest doe`: the DOE mailboxes of a function from guest user
//! space, through its sysfs `config` file: find every DOE extended
//! capability, run the discovery walk, time exchanges.
//!
//! The registers are driven by spdm-responder's [`doe::Mailbox`] (the one
//! DOE register driver) over [`ConfigFile`]; objects are encoded, decoded
//! and discovered by the same module, and the SPDM requester runs over a
//! mailbox through its `DoeTransport`. The driver polls DOE Status without
//! the kernel's poll-interval sleeps, so the time of an exchange as the
//! guest sees it can be measured.
//!
//! The kernel only uses a mailbox at enumeration and for TSM requests; don't
//! run this while a TSM driver talks to the same device.

use crate::pciconf::{walk, Cfg};
use crate::sysfs::{self, ConfigFile};
use serde_json::{json, Value};
use spdm_responder::transport::doe::{self, discovery_request, ProtocolId, DOE_EXT_CAP_ID};
use std::time::{Duration, Instant};

/// Discovery request version for a version-2 DOE capability (what Linux sends).
pub const DISCOVERY_VERSION: u8 = 2;

/// One DOE mailbox of a function, driven through sysfs `config`.
pub type Mailbox = doe::Mailbox<ConfigFile>;

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
        out.push(Mailbox::new(ConfigFile::open(bdf)?, c.offset));
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
                    "offset": mb.offset(),
                    "features": feats.iter().map(ProtocolId::to_string).collect::<Vec<_>>(),
                    "discovery_walk_us": walk_time.as_micros() as u64,
                    "exchanges": times.len(),
                    "exchange_us_p50": percentile(&times, 0.5).as_micros() as u64,
                    "exchange_us_p99": percentile(&times, 0.99).as_micros() as u64,
                    "exchange_us_max": times.last().map_or(0, |d| d.as_micros() as u64),
                    "status_polls_last": mb.stats().last_polls,
                }));
            } else {
                println!("{b} DOE mailbox at {:#x}:", mb.offset());
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
                        if mb.stats().last_polls == 1 { "yes" } else { "no" }
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
