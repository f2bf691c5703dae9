//! `trustdev-guest`: the guest-side companion of trustdev. It runs inside a
//! (busybox) Linux guest that QEMU attached trustdev devices to, and shows
//! or exercises them from user space:
//!
//! ```text
//! trustdev-guest lspci [--json] [BDF]
//! trustdev-guest dma-copy --bdf BDF [--size N] [--count K] [--vector V] [--poll] [--reset] [--json]
//! trustdev-guest wait-dev VENDOR:DEVICE [--timeout S] [--all] [--rescan]
//! trustdev-guest doe [BDF] [--bench N] [--json]
//! trustdev-guest spdm --bdf BDF --root PEM [--root PEM...] [--version V] [--asym p256|p384] [--slot N] [--session-only] [--json]
//! trustdev-guest ide --bdf BDF [--root PEM|DIR]... [--stream I] [--stream-id ID] [--io auto|nvme|dma-copy|none] [--ios N] [--no-refresh] [--run CMD] [--insecure-test-keys SEED]
//! trustdev-guest tdisp --bdf BDF --root PEM [--stream-id N] [--stream-index N] [--mmio-offset A] [--io FILE] [--touch command|msix] [--keep | --expect-loss SECS] [--json]
//! trustdev-guest tsm-agent [--root PEM|DIR]... [--san enforce|warn|off] [--hang-after STEP]
//! trustdev-guest accel --bdf BDF [--size N] [--poll] [--timeout S] [--json]
//! trustdev-guest sva --bdf BDF [--json]
//! trustdev-guest accel-bench --bdf BDF --path sva|iova [--sizes N,N..] [--rounds R] [--timeout S]
//! ```
//!
//! Exit status: 0 success, 1 failure (a message on stderr), 2 usage error.
//!
//! It is its own crate so it does not link the device models: what it shares
//! with the host side is the SPDM requester and the DOE encoding
//! (spdm-responder) and the register maps of the DMA-copy example and the
//! accelerator (dependency-free files of the device models).
//!
//! Each subcommand is a module with `pub struct Args` (clap `Args`: its
//! options, documented) and `pub fn run(Args) -> Result<(), String>`; adding
//! one is that module plus one line in [`subcommands!`] below.

mod accel;
mod accel_bench;
mod dma_copy;
mod doe;
mod ide;
mod lspci;
mod pciconf;
mod spdm;
mod sva;
mod sysfs;
mod tdisp;
mod tsm_agent;
mod vfio;
mod vfio_session;
mod wait_dev;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// Declares the subcommands: `/// help` then `Variant => module,` per line.
/// Generates `enum Cmd` (clap subcommands with the module's `Args`) and its
/// dispatch to `module::run`.
macro_rules! subcommands {
    ($($(#[$doc:meta])* $variant:ident => $module:ident,)*) => {
        #[derive(Subcommand, Debug)]
        enum Cmd {
            $($(#[$doc])* $variant($module::Args),)*
        }

        impl Cmd {
            fn run(self) -> Result<(), String> {
                match self {
                    $(Cmd::$variant(args) => $module::run(args),)*
                }
            }
        }
    };
}

subcommands! {
    /// List PCI functions with BARs and decoded (extended) capabilities.
    Lspci => lspci,
    /// Copy buffers with the DMA-copy example device through vfio-pci and
    /// verify the data, the counters and the MSI-X completion interrupts.
    DmaCopy => dma_copy,
    /// List the DOE mailboxes of every (or one) function: discovery walk from
    /// user space through sysfs config, optionally timing exchanges.
    Doe => doe,
    /// Authenticate a device with CMA/SPDM over its DOE mailbox (chain to a
    /// root, CHALLENGE, signed measurements) and run a secured session
    /// (KEY_EXCHANGE, FINISH, HEARTBEAT, KEY_UPDATE, measurements, END_SESSION).
    Spdm => spdm,
    /// Drive a device's IDE stream as a TSM does over the DOE and IDE
    /// registers (SPDM session, IDE_KM keys, Enable, SECURE), run verified
    /// NVMe I/O or DMA copies through it, refresh K0 -> K1 while they run,
    /// then stop, disable and end the session.
    Ide => ide,
    /// Wait until a PCI function with these IDs exists; print its BDF.
    WaitDev => wait_dev,
    /// TDISP as a TSM drives it: SPDM session, IDE keys and a SECURE stream,
    /// LOCK, the interface report, START (RUN); a locked register touched
    /// (ERROR); STOP.
    Tdisp => tdisp,
    /// The user-space agent of the trustdev_tsm link TSM module: runs SPDM
    /// for the kernel's tsm/connect and tsm/disconnect over
    /// pci_tsm_doe_transfer() (guest/kmod, docs/TSM.md).
    TsmAgent => tsm_agent,
    /// Drive the trustdev accelerator through vfio-pci: every operation on
    /// rings in user memory, verified against software, with MSI-X or polling.
    Accel => accel,
    /// Bind the accelerator to uio_pci_generic_sva and try shared virtual
    /// addressing: report how far it gets; drive it with process addresses
    /// if the PASID bind succeeds.
    Sva => sva,
    AccelBench => accel_bench,
}

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

/// Parses a number of seconds (0 to one day) for options like `--timeout`.
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if (0.0..=86_400.0).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("must be between 0 and 86400 seconds (got {v})"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trustdev-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("1e9").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
