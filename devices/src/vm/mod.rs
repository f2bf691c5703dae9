//! `trustdev vm`: boots a guest kernel in QEMU against trustdev device
//! servers, runs a guest script, and returns the guest's verdict. Servers and
//! QEMU are child processes that die with the runner, whatever happens.

pub mod initramfs;
mod process;
pub mod qemu;
pub mod runner;
pub mod toolchain;
pub mod tsm;

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

/// A device model to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The DMA-copy example device.
    DmaCopy,
    /// The NVMe controller.
    Nvme,
    /// The work-queue accelerator with PASID/ATS/PRI.
    Accel,
}

impl DeviceKind {
    /// Name used on the command line and for `trustdev serve`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::DmaCopy => "dma-copy",
            DeviceKind::Nvme => "nvme",
            DeviceKind::Accel => "accel",
        }
    }
}

/// One device of the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Model.
    pub kind: DeviceKind,
    /// Topology.
    pub placement: Placement,
    /// Extra `trustdev serve` arguments (device options, e.g. NVMe's
    /// `--size 64M` from `nvme:size=64M`).
    pub args: Vec<String>,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    /// `KIND[:OPT,...]`, e.g. `dma-copy`, `dma-copy:rciep`,
    /// `nvme:size=64M,queues=8` (NVMe options: see
    /// [`crate::nvme::options::VM_OPTION_KEYS`]).
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, opts) = s.split_once(':').unwrap_or((s, ""));
        let kind = match kind {
            "dma-copy" => DeviceKind::DmaCopy,
            "nvme" => DeviceKind::Nvme,
            "accel" => DeviceKind::Accel,
            other => {
                return Err(format!(
                    "unknown device kind {other:?} (known: dma-copy, nvme, accel)"
                ))
            }
        };
        let mut placement = Placement::RootPort;
        let mut args = Vec::new();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "rciep" | "pcie.0" => placement = Placement::RootBus,
                "root-port" => placement = Placement::RootPort,
                // Device security: a DOE mailbox without CMA/SPDM; DEVCAP.TEE clear.
                "no-spdm" => args.push("--no-spdm".into()),
                "no-tee" => args.push("--no-tee".into()),
                // Test fault: a certificate whose CMA SAN names another device.
                "wrong-san" => args.push("--wrong-san".into()),
                other if other.starts_with("dsn=") => {
                    args.extend(["--dsn".into(), other["dsn=".len()..].into()])
                }
                other if other.starts_with("ide=") || other.starts_with("ide-trace=") => {
                    args.extend(ide_option_args(other)?)
                }
                other => match crate::nvme::options::vm_option_args(other) {
                    Some(a) if kind == DeviceKind::Nvme => args.extend(a),
                    _ => {
                        return Err(format!(
                            "unknown device option {other:?} (rciep, root-port, no-spdm, no-tee, wrong-san, dsn=HEX, ide=SPEC, ide-trace=FILE{})",
                            if kind == DeviceKind::Nvme {
                                ", or NVMe KEY=VALUE: see `trustdev serve --help`"
                            } else {
                                ""
                            }
                        ))
                    }
                },
            }
        }
        Ok(DeviceSpec {
            kind,
            placement,
            args,
        })
    }
}

/// `ide=SPEC` and `ide-trace=FILE` of any kind as `trustdev serve`
/// arguments: SPEC is `serve --ide`'s with `+` between its items (`,`
/// separates device options), e.g. `ide=selective=4+assoc=2+tee-limited`
/// or `ide=off`; FILE is `--ide-trace` (a new pcap file).
fn ide_option_args(opt: &str) -> Result<Vec<String>, String> {
    if let Some(spec) = opt.strip_prefix("ide=") {
        let spec = spec.replace('+', ",");
        crate::security::ide::IdeConfig::parse(&spec).map_err(|e| format!("{opt}: {e}"))?;
        return Ok(vec!["--ide".into(), spec]);
    }
    match opt.strip_prefix("ide-trace=") {
        Some(f) if !f.is_empty() => Ok(vec!["--ide-trace".into(), f.into()]),
        _ => Err(format!("{opt}: ide-trace needs a file name")),
    }
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
        assert_eq!(n.kind, DeviceKind::Nvme);
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
        let d: DeviceSpec = "nvme:ide=selective=4+assoc=2+tee-limited,ide-trace=/tmp/w.pcap"
            .parse()
            .unwrap();
        assert_eq!(
            d.args,
            [
                "--ide",
                "selective=4,assoc=2,tee-limited",
                "--ide-trace",
                "/tmp/w.pcap"
            ]
        );
        let d: DeviceSpec = "dma-copy:ide=off".parse().unwrap();
        assert_eq!(d.args, ["--ide", "off"]);
        assert!("dma-copy:ide=bogus".parse::<DeviceSpec>().is_err());
        assert!("dma-copy:ide=selective=0".parse::<DeviceSpec>().is_err());
        assert!("dma-copy:ide-trace=".parse::<DeviceSpec>().is_err());
        let d: DeviceSpec = "dma-copy:wrong-san,dsn=7d0c00000000ba05".parse().unwrap();
        assert_eq!(d.args, ["--wrong-san", "--dsn", "7d0c00000000ba05"]);
    }

    #[test]
    fn qemu_build_parsing() {
        assert_eq!("stock".parse::<QemuBuild>(), Ok(QemuBuild::Stock));
        assert_eq!("patched".parse::<QemuBuild>(), Ok(QemuBuild::Patched));
        assert!("11.1".parse::<QemuBuild>().is_err());
    }
}
