//! `trustdev-guest wait-dev VENDOR:DEVICE`: waits for a PCI function with
//! those IDs to appear in sysfs and prints its BDF.

use crate::sysfs;
use std::time::{Duration, Instant};

/// BDFs of all functions with these IDs, sorted.
pub fn find(vendor: u16, device: u16) -> Vec<String> {
    sysfs::list_bdfs()
        .unwrap_or_default()
        .into_iter()
        .filter(|b| sysfs::ids(b) == Some((vendor, device)))
        .collect()
}

/// Options of `trustdev-guest wait-dev`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Vendor and device ID in hex, e.g. 7d0c:d3a0.
    ids: String,
    /// Seconds to wait.
    #[arg(long, default_value = "10", value_parser = crate::parse_seconds)]
    timeout: Duration,
    /// Print every matching function, one per line.
    #[arg(long)]
    all: bool,
    /// Write /sys/bus/pci/rescan once half the timeout has passed.
    #[arg(long)]
    rescan: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), String> {
    let Args {
        ids,
        timeout,
        all,
        rescan,
    } = args;
    let ids = ids.as_str();
    let (vendor, device) = sysfs::parse_id_pair(ids)
        .ok_or_else(|| format!("'{ids}' is not VENDOR:DEVICE in hex (e.g. 7d0c:d3a0)"))?;
    let t0 = Instant::now();
    let mut rescanned = false;
    loop {
        let found = find(vendor, device);
        if !found.is_empty() {
            if all {
                for b in &found {
                    println!("{b}");
                }
            } else {
                println!("{}", found[0]);
            }
            return Ok(());
        }
        if rescan && !rescanned && t0.elapsed() >= timeout / 2 {
            // Half the time gone: ask the kernel to look again once.
            let _ = sysfs::write_attr(std::path::Path::new("/sys/bus/pci/rescan"), "1");
            rescanned = true;
        }
        if t0.elapsed() >= timeout {
            let present: Vec<String> = sysfs::list_bdfs()
                .unwrap_or_default()
                .into_iter()
                .map(|b| match sysfs::ids(&b) {
                    Some((v, d)) => format!("{b} {v:04x}:{d:04x}"),
                    None => b,
                })
                .collect();
            return Err(format!(
                "wait-dev: no PCI device {vendor:04x}:{device:04x} appeared within {:.1} s \
                 (present: {})",
                timeout.as_secs_f64(),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
