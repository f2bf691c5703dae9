//! `trustdev vm`: boots a guest kernel in QEMU against trustdev device
//! servers, runs a guest script, and returns the guest's verdict. Servers and
//! QEMU are child processes that die with the runner, whatever happens.

pub mod initramfs;
mod process;
pub mod qemu;
pub mod runner;
pub mod toolchain;
pub mod tsm;

use crate::kinds::{self, DeviceKind, KindError};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

pub use runner::{run, VmOutcome};

/// Errors of the VM runner. Each carries enough context to act on.
#[derive(Debug, Error)]
pub enum VmError {
    /// QEMU / kernel not provisioned.
    #[error("guest toolchain not provisioned: {0}")]
    NotProvisioned(String),
    /// The initramfs could not be built.
    #[error("initramfs: {0}")]
    Initramfs(String),
    /// A device server failed to start.
    #[error("device server {name} failed to start: {why}\n{log}")]
    ServerStart {
        /// Server name.
        name: String,
        /// Why.
        why: String,
        /// Tail of its log.
        log: String,
    },
    /// A device server died while the guest ran.
    #[error("device server {name} died while the guest was running ({status})\n{logs}")]
    ServerDied {
        /// Server name.
        name: String,
        /// Exit status.
        status: String,
        /// Log tails.
        logs: String,
    },
    /// QEMU could not be started or exited with an error.
    #[error("QEMU failed ({status})\n{logs}")]
    Qemu {
        /// Exit status or spawn error.
        status: String,
        /// Log tails.
        logs: String,
    },
    /// The guest did not finish in time.
    #[error("guest did not finish within {secs} s (hung?)\n{logs}")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// Log tails.
        logs: String,
    },
    /// The guest powered off without reporting the script's verdict.
    #[error("guest stopped without reporting its script's result (kernel panic or init failure?)\n{logs}")]
    NoVerdict {
        /// Log tails.
        logs: String,
    },
    /// Interrupted by a signal.
    #[error("interrupted; QEMU and the servers were stopped")]
    Interrupted,
    /// Other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Which QEMU runs the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QemuBuild {
    /// The provisioned Debian QEMU 11.1 (qemu-configs/provision.sh).
    #[default]
    Stock,
    /// QEMU built from source with trustdev's patch series
    /// (qemu-configs/patches, built and cached by
    /// qemu-configs/provision-qemu-patched.sh): root ports with an IDE
    /// capability, a VT-d that can do SVA.
    Patched,
}

impl std::str::FromStr for QemuBuild {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stock" => Ok(QemuBuild::Stock),
            "patched" => Ok(QemuBuild::Patched),
            other => Err(format!("unknown QEMU {other:?} (stock, patched)")),
        }
    }
}

/// Where a device sits in the guest's PCIe topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Endpoint behind its own pcie-root-port.
    RootPort,
    /// Root Complex Integrated Endpoint on q35's pcie.0.
    RootBus,
}

/// One device of the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Model.
    pub kind: &'static DeviceKind,
    /// Topology.
    pub placement: Placement,
    /// Extra `trustdev serve KIND` arguments (the kind's options, e.g.
    /// NVMe's `--size 64M` from `nvme:size=64M`).
    pub args: Vec<String>,
}

impl DeviceSpec {
    /// The identity directory given with `identity-dir=PATH`, if any.
    pub fn identity_dir(&self) -> Option<PathBuf> {
        self.args
            .windows(2)
            .rev()
            .find(|w| w[0] == "--identity-dir")
            .map(|w| PathBuf::from(&w[1]))
    }

    /// A device of kind `name` with default options behind a root port.
    pub fn new(name: &str) -> Result<DeviceSpec, KindError> {
        Ok(DeviceSpec {
            kind: kinds::find(name)?,
            placement: Placement::RootPort,
            args: Vec::new(),
        })
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = KindError;

    /// `KIND[:OPT,...]`, e.g. `dma-copy`, `dma-copy:rciep`,
    /// `nvme:size=64M,queues=8`, `accel:psk=@key,ide=selective=1,,cfg`:
    /// `rciep` (or `pcie.0`) and `root-port` place the device, anything
    /// else is a security option or one of the kind's own (`KEY=VALUE` or
    /// a flag `KEY`, see `trustdev vm --device help`); `,,` stands for a
    /// comma inside a value.
    fn from_str(s: &str) -> Result<Self, KindError> {
        let (kind, opts) = s.split_once(':').unwrap_or((s, ""));
        let mut spec = DeviceSpec::new(kind)?;
        for o in split_options(opts) {
            match o.as_str() {
                "rciep" | "pcie.0" => spec.placement = Placement::RootBus,
                "root-port" => spec.placement = Placement::RootPort,
                other => spec.args.extend(spec.kind.vm_option_args(other)?),
            }
        }
        // Values and combinations are refused now, not when the server
        // starts after the guest is built.
        spec.kind.check_args(&spec.args)?;
        Ok(spec)
    }
}

/// `OPT,OPT,...` split at single commas; `,,` is a comma inside an option.
fn split_options(opts: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = opts.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                cur.push(',');
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|o| !o.is_empty());
    out
}

/// Everything a VM run needs.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Devices, in slot order.
    pub devices: Vec<DeviceSpec>,
    /// Kernel image (default: the provisioned one).
    pub kernel: Option<PathBuf>,
    /// Initrd (default: trustdev's busybox initramfs with the guest tools).
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line.
    pub append: Vec<String>,
    /// Guest script to run (delivered as /test.sh and via fw_cfg).
    pub script: Option<PathBuf>,
    /// Interactive console instead of a script run.
    pub interactive: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// vCPUs.
    pub smp: u32,
    /// Guest RAM in MiB.
    pub mem_mb: u32,
    /// Add an intel-iommu in scalable mode.
    pub iommu: bool,
    /// Add an intel-iommu set up for shared virtual addressing (implies
    /// `iommu`): first-stage translation, PASID, device IOTLB, page requests.
    /// A guest can bind SVA only with [`QemuBuild::Patched`] (stock QEMU's
    /// VT-d lacks ECAP.SMPWC). vfio-user DMA then goes through DMA messages:
    /// QEMU sends no DMA_MAP for first-stage mappings.
    pub sva: bool,
    /// Which QEMU to run.
    pub qemu: QemuBuild,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Where to keep the serial log (default: in the work directory).
    pub serial_log: Option<PathBuf>,
    /// Echo the guest console while it runs.
    pub echo: bool,
    /// Extra guest kernel modules.
    pub modules: Vec<String>,
    /// Guest programs to put into the initramfs (besides trustdev-guest).
    pub bins: Vec<PathBuf>,
    /// Extra files for the initramfs: (host path, guest path).
    pub files: Vec<(PathBuf, String)>,
    /// Build the test link TSM module (guest/kmod) for the guest kernel,
    /// load it in the guest and start `trustdev-guest tsm-agent`.
    pub tsm: bool,
    /// Give each device server a control socket `NAME.ctl` (for faults armed
    /// while the guest runs) and a trace `NAME.trace.jsonl` here (NAME as in
    /// its log: KIND + index).
    pub control_dir: Option<PathBuf>,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            devices: Vec::new(),
            kernel: None,
            initrd: None,
            append: Vec::new(),
            script: None,
            interactive: false,
            timeout: Duration::from_secs(300),
            smp: 1,
            mem_mb: 512,
            iommu: false,
            sva: false,
            qemu: QemuBuild::Stock,
            qemu_args: Vec::new(),
            serial_log: None,
            echo: false,
            modules: Vec::new(),
            bins: Vec::new(),
            files: Vec::new(),
            tsm: false,
            control_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spec_parsing() {
        let d: DeviceSpec = "dma-copy:rciep".parse().unwrap();
        assert_eq!(d.placement, Placement::RootBus);
        assert!("bogus".parse::<DeviceSpec>().is_err());
        let n: DeviceSpec = "nvme:size=64M,rciep,ns=ram:1M,no-shadow-doorbells"
            .parse()
            .unwrap();
        assert_eq!(n.kind.name, "nvme");
        assert_eq!(n.placement, Placement::RootBus);
        assert_eq!(
            n.args,
            ["--size", "64M", "--ns", "ram:1M", "--no-shadow-doorbells"]
        );
        assert!("nvme:bogus=1".parse::<DeviceSpec>().is_err());
        assert!("dma-copy:size=1M".parse::<DeviceSpec>().is_err());
        assert!("dma-copy:bogus".parse::<DeviceSpec>().is_err());
        let d: DeviceSpec = "dma-copy:no-spdm,rciep".parse().unwrap();
        assert_eq!(d.args, ["--no-spdm"]);
        let a: DeviceSpec = "accel:queues=2,no-pri,rciep".parse().unwrap();
        assert_eq!(a.args, ["--queues", "2", "--no-pri"]);
        assert!("accel:size=1M".parse::<DeviceSpec>().is_err());
    }

    /// Every kind takes every security option, with the same spelling as
    /// `trustdev serve KIND` (a kind the registry left out fails here).
    #[test]
    fn every_kind_takes_the_security_options() {
        for k in kinds::KINDS {
            let s = format!(
                "{}:psk=@/k,psk-hint=h,dsn=1234,ide=selective=1,,cfg,ide-trace=/t.pcap,\
                 tdisp=rid=01:00.0,,ide=none,no-spdm,no-tee,wrong-san,identity-dir=/id",
                k.name
            );
            let d: DeviceSpec = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                d.args,
                [
                    "--psk",
                    "@/k",
                    "--psk-hint",
                    "h",
                    "--dsn",
                    "1234",
                    "--ide",
                    "selective=1,cfg",
                    "--ide-trace",
                    "/t.pcap",
                    "--tdisp",
                    "rid=01:00.0,ide=none",
                    "--no-spdm",
                    "--no-tee",
                    "--wrong-san",
                    "--identity-dir",
                    "/id"
                ],
                "{}",
                k.name
            );
            assert_eq!(d.identity_dir(), Some(PathBuf::from("/id")));
        }
    }

    #[test]
    fn option_splitting() {
        assert_eq!(split_options("a,b=1,,2,,,c,"), ["a", "b=1,2,", "c"]);
        assert!(split_options("").is_empty());
    }

    #[test]
    fn qemu_build_parsing() {
        assert_eq!("stock".parse::<QemuBuild>(), Ok(QemuBuild::Stock));
        assert_eq!("patched".parse::<QemuBuild>(), Ok(QemuBuild::Patched));
        assert!("11.1".parse::<QemuBuild>().is_err());
    }
}
