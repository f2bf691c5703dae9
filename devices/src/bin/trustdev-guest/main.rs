//! `trustdev-guest`: the guest-side companion of trustdev. It runs inside a
//! (busybox) Linux guest that QEMU attached trustdev devices to, and shows
//! or exercises them from user space:
//!
//! ```text
//! trustdev-guest lspci [--json] [BDF]
//! trustdev-guest dma-copy --bdf BDF [--size N] [--count K] [--vector V] [--poll] [--reset] [--json]
//! trustdev-guest accel --bdf BDF [--size N] [--poll] [--timeout S] [--json]
//! trustdev-guest sva --bdf BDF [--json]
//! trustdev-guest wait-dev VENDOR:DEVICE [--timeout S] [--all] [--rescan]
//! trustdev-guest doe [BDF] [--bench N] [--json]
//! trustdev-guest spdm --bdf BDF --root PEM [--root PEM...] [--version V] [--asym p256|p384] [--slot N] [--session-only] [--json]
//! ```
//!
//! Exit status: 0 success, 1 failure (a message on stderr), 2 usage error.

mod accel;
mod dma_copy;
mod doe;
mod lspci;
mod pciconf;
mod spdm;
mod sva;
mod sysfs;
mod vfio;
mod vfio_session;
mod wait_dev;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "trustdev-guest",
    version,
    about = "Inspect and exercise trustdev PCIe devices from inside a Linux guest"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List PCI functions with BARs and decoded (extended) capabilities.
    Lspci {
        /// Print JSON (an array, or one object when BDF is given).
        #[arg(long)]
        json: bool,
        /// Only this function ([DDDD:]BB:DD.F).
        bdf: Option<String>,
    },
    /// Copy buffers with the DMA-copy example device through vfio-pci and
    /// verify the data, the counters and the MSI-X completion interrupts.
    DmaCopy {
        /// PCI address of the device ([DDDD:]BB:DD.F).
        #[arg(long)]
        bdf: String,
        /// Bytes per copy (1..=4096).
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Number of copies, each with its own data pattern.
        #[arg(long, default_value_t = 16)]
        count: u32,
        /// MSI-X vector the device raises on completion.
        #[arg(long, default_value_t = 0)]
        vector: u32,
        /// Seconds to wait for each completion.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Poll STATUS instead of waiting for MSI-X interrupts.
        #[arg(long)]
        poll: bool,
        /// Issue VFIO_DEVICE_RESET first and check that the registers clear.
        #[arg(long)]
        reset: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the DOE mailboxes of every (or one) function: discovery walk from
    /// user space through sysfs config, optionally timing exchanges.
    Doe {
        /// Only this function ([DDDD:]BB:DD.F).
        bdf: Option<String>,
        /// Time this many discovery exchanges per mailbox.
        #[arg(long, default_value_t = 0)]
        bench: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Authenticate a device with CMA/SPDM over its DOE mailbox (chain to a
    /// root, CHALLENGE, signed measurements) and run a secured session
    /// (KEY_EXCHANGE, FINISH, HEARTBEAT, KEY_UPDATE, measurements, END_SESSION).
    Spdm {
        /// PCI address of the device ([DDDD:]BB:DD.F).
        #[arg(long)]
        bdf: String,
        /// Trusted root certificate, PEM or DER (repeatable).
        #[arg(long = "root", required = true)]
        roots: Vec<std::path::PathBuf>,
        /// Offer only this SPDM version (1.0, 1.1, 1.2 or 1.3).
        #[arg(long, value_parser = spdm::parse_version)]
        version: Option<u8>,
        /// Certificate slot to authenticate and key the session with.
        #[arg(long, default_value_t = 0)]
        slot: u8,
        /// Offer only this signature algorithm: p256 or p384 (default both;
        /// the device picks).
        #[arg(long, value_parser = spdm::parse_asym)]
        asym: Option<u32>,
        /// Skip CHALLENGE and the signed measurements; only the session.
        #[arg(long)]
        session_only: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Drive the trustdev accelerator through vfio-pci: every operation on
    /// rings in user memory, verified against software, with MSI-X or polling.
    Accel(accel::Args),
    /// Bind the accelerator to uio_pci_generic_sva and try shared virtual
    /// addressing: report how far it gets, drive it with process addresses
    /// if the PASID bind succeeds.
    Sva(sva::Args),
    /// Wait until a PCI function with these IDs exists; print its BDF.
    WaitDev {
        /// Vendor and device ID in hex, e.g. 7d0c:d3a0.
        ids: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Print every matching function, one per line.
        #[arg(long)]
        all: bool,
        /// Write /sys/bus/pci/rescan once half the timeout has passed.
        #[arg(long)]
        rescan: bool,
    },
}

fn seconds(s: f64, what: &str) -> Result<Duration, String> {
    if (0.0..=86_400.0).contains(&s) {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "{what} must be between 0 and 86400 seconds (got {s})"
        ))
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Lspci { json, bdf } => lspci::run(bdf.as_deref(), json),
        Cmd::DmaCopy {
            bdf,
            size,
            count,
            vector,
            timeout,
            poll,
            reset,
            json,
        } => dma_copy::run(&dma_copy::Options {
            bdf,
            size,
            count,
            vector,
            timeout: seconds(timeout, "--timeout")?,
            poll,
            reset,
            json,
        }),
        Cmd::Doe { bdf, bench, json } => doe::run(bdf.as_deref(), bench, json),
        Cmd::Spdm {
            bdf,
            roots,
            version,
            slot,
            asym,
            session_only,
            json,
        } => spdm::run(&spdm::Options {
            bdf,
            roots,
            json,
            version,
            session_only,
            slot,
            asym,
        }),
        Cmd::Accel(a) => accel::run(a),
        Cmd::Sva(a) => sva::run(a),
        Cmd::WaitDev {
            ids,
            timeout,
            all,
            rescan,
        } => wait_dev::run(&ids, seconds(timeout, "--timeout")?, all, rescan),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trustdev-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
