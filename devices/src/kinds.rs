//! The device kinds trustdev serves, in one table: each kind's name, PCI
//! IDs, options (a clap argument set) and how its server device is built.
//! Every kind also takes the security options of [`SecurityArgs`] and gets
//! its security blocks from them the same way. `trustdev serve KIND`
//! parses and builds through it; `trustdev vm -d KIND:OPT,...` checks kinds
//! and turns options into `serve` arguments through it. Adding a kind is
//! adding an entry to [`KINDS`].

mod security_args;

pub use security_args::{parse_dsn, PskArgs, SecurityArgs, SecuritySetup};

use crate::accel::{self, AccelArgs, AccelDevice};
use crate::control::DeviceControl;
use crate::example::{self, DmaCopy};
use crate::nvme::{self, NvmeArgs, NvmeConfig, NvmeDevice, NvmeSecurity};
use crate::security::{self, ide::IdeDevice, tdisp::TdispDevice};
use clap::{ArgMatches, Args, FromArgMatches};
use spdm_responder::Responder;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use vfio_user_server::pci::{ConfigSpace, ExtCap, PciIds, PortType};
use vfio_user_server::{Device, DeviceContext, DeviceError, RegionMmap};

/// Why a device could not be described or built.
#[derive(Debug, Error)]
pub enum KindError {
    /// No such kind.
    #[error("unknown device kind {0:?} (known: {known})", known = names())]
    Unknown(String),
    /// A `trustdev vm -d KIND:OPT` option the kind does not have.
    #[error("{kind}: unknown device option {option:?} (rciep, root-port, a security option or one of the kind's own: see `trustdev vm --device help`)")]
    UnknownOption {
        /// The kind.
        kind: &'static str,
        /// The option.
        option: String,
    },
    /// A `trustdev vm -d KIND:KEY` option that needs `=VALUE` (or has one
    /// it does not take).
    #[error("{kind}: device option {option:?} {}", if *.needs_value { "needs =VALUE" } else { "takes no value" })]
    OptionValue {
        /// The kind.
        kind: &'static str,
        /// The option.
        option: String,
        /// Whether it needs a value.
        needs_value: bool,
    },
    /// The kind's options could not be read.
    #[error("{}", clap_message(.0))]
    Args(#[from] clap::Error),
    /// The kind's options are invalid.
    #[error("{0}")]
    Options(#[from] nvme::options::OptionsError),
    /// The accelerator's options do not fit together.
    #[error("{0}")]
    AccelOptions(#[from] accel::AccelOptionsError),
    /// The device's SPDM identity could not be loaded.
    #[error("SPDM identity: {0}")]
    Identity(#[from] security::cma::CmaError),
    /// The device's security options are invalid (PSK, IDE).
    #[error("{0}")]
    Security(String),
    /// The IDE link could not be put in front of the device.
    #[error("the IDE port is linked to another device already")]
    IdeLinked,
    /// The NVMe controller could not be created.
    #[error("cannot create the NVMe controller: {0}")]
    Nvme(#[from] nvme::NvmeError),
    /// Another device could not be created.
    #[error("cannot create the device: {0}")]
    Device(#[source] std::io::Error),
}

impl SecuritySetup {
    /// The extended capabilities: the DOE mailbox (CMA/SPDM, secured
    /// CMA/SPDM, IDE_KM when the device has an IDE port, TDISP when it has a
    /// TDI) and IDE's.
    /// With a control-plane handle `ctl`, the IDE_KM and TDISP messages go
    /// to its trace.
    fn ext_caps(&self, ctl: Option<&Arc<DeviceControl>>) -> Vec<ExtCap> {
        let wrap = |h| match ctl {
            Some(c) => crate::control::vendor::Traced::wrap(h, Arc::clone(c)),
            None => h,
        };
        let mut caps = vec![security::doe_capability_wrapped(
            self.identity.clone(),
            self.config.clone(),
            self.ide.as_ref(),
            self.tdi.as_ref(),
            &wrap,
        )];
        caps.extend(self.ide.iter().flat_map(|i| i.capabilities()));
        caps
    }

    /// `dev` behind its IDE link when it has an IDE port, with its TDI
    /// watching it when it has one.
    fn finish(&self, dev: impl Device + 'static) -> Result<AnyDevice, KindError> {
        let dev = match &self.ide {
            Some(ide) => AnyDevice::new(
                IdeDevice::new(dev, Arc::clone(ide)).map_err(|_| KindError::IdeLinked)?,
            ),
            None => AnyDevice::new(dev),
        };
        Ok(match &self.tdi {
            Some(tdi) => AnyDevice::new(TdispDevice::new(dev, Arc::clone(tdi))),
            None => dev,
        })
    }
}

/// What building a device needs besides the kind's own options.
struct BuildContext<'a> {
    /// The socket it will serve on (seeds default identifiers).
    socket: &'a Path,
    /// PCIe port type.
    port: PortType,
    /// Its security options.
    security: SecurityArgs,
    /// Its control-plane handle (trace, faults, state), if it has one.
    control: Option<&'a Arc<DeviceControl>>,
}

impl BuildContext<'_> {
    /// `setup`'s extended capabilities, the DOE mailbox behind the device
    /// control's front (trace, DOE and SPDM faults) when there is one.
    fn ext_caps(&self, k: &DeviceKind, setup: &SecuritySetup, dsn: u64) -> Vec<ExtCap> {
        let mut caps = setup.ext_caps(self.control);
        if let Some(ctl) = self.control {
            let dir = (self.security.identity_dir.clone())
                .unwrap_or_else(|| security::default_identity_dir(k.name));
            let name = security::cma_name(&k.pci_ids, dsn);
            crate::control::probes::security(ctl, &mut caps, setup, name, dir);
        }
        caps
    }
}

/// clap's message without its `error: ` prefix, usage and hints.
fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let s = s.strip_prefix("error: ").unwrap_or(&s);
    let end = ["\n\nUsage:", "\n\nFor more information"]
        .iter()
        .filter_map(|m| s.find(m))
        .min()
        .unwrap_or(s.len());
    s[..end].trim_end().to_string()
}

/// A device kind.
pub struct DeviceKind {
    /// Name on the command line (`trustdev serve NAME`, `-d NAME`).
    pub name: &'static str,
    /// One line about it.
    pub about: &'static str,
    /// Its PCI IDs.
    pub pci_ids: PciIds,
    /// Adds the kind's own options to a command.
    args: fn(clap::Command) -> clap::Command,
    /// Checks parsed options that clap cannot check alone (how they fit
    /// together), without building anything.
    check: fn(&ArgMatches) -> Result<(), KindError>,
    /// Builds the device from parsed options.
    build: fn(&DeviceKind, &ArgMatches, &BuildContext<'_>) -> Result<AnyDevice, KindError>,
}

impl std::fmt::Debug for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for DeviceKind {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for DeviceKind {}

/// Every kind trustdev serves.
pub static KINDS: &[DeviceKind] = &[
    DeviceKind {
        name: "nvme",
        about:
            "NVMe 2.0 controller (RAM or file namespaces, SPDM over DOE and Security Send/Receive)",
        pci_ids: nvme::PCI_IDS,
        args: NvmeArgs::augment_args,
        check: |m| {
            NvmeConfig::from_args(&NvmeArgs::from_arg_matches(m)?, "")?;
            Ok(())
        },
        build: build_nvme,
    },
    DeviceKind {
        name: "accel",
        about: "work-queue accelerator (PASID/ATS/PRI, per-PASID DMA, AES-GCM, CRC, SHA-256)",
        pci_ids: accel::PCI_IDS,
        args: AccelArgs::augment_args,
        check: |m| {
            AccelArgs::from_arg_matches(m)?.config()?;
            Ok(())
        },
        build: build_accel,
    },
    DeviceKind {
        name: "dma-copy",
        about: "DMA-copy accelerator (the vfio-user example device, with a DOE mailbox)",
        pci_ids: example::PCI_IDS,
        args: no_args,
        check: |_| Ok(()),
        build: build_dma_copy,
    },
];

fn no_args(c: clap::Command) -> clap::Command {
    c
}

/// The kind named `name`.
pub fn find(name: &str) -> Result<&'static DeviceKind, KindError> {
    KINDS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| KindError::Unknown(name.to_string()))
}

/// The kinds' names, comma-separated.
pub fn names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

impl DeviceKind {
    /// A command carrying only this kind's own options.
    pub fn options(&self) -> clap::Command {
        (self.args)(clap::Command::new(self.name))
    }

    /// Adds this kind's options and the security options to `cmd`.
    pub fn augment(&self, cmd: clap::Command) -> clap::Command {
        SecurityArgs::augment_args((self.args)(cmd))
    }

    /// Builds the device, to be served on `socket` as a function of type
    /// `port`, from matches of a command [`DeviceKind::augment`]ed: the
    /// kind's own options and the security options.
    pub fn build(
        &self,
        m: &ArgMatches,
        socket: &Path,
        port: PortType,
    ) -> Result<AnyDevice, KindError> {
        self.build_controlled(m, socket, port, None)
    }

    /// [`DeviceKind::build`] with the device's control-plane handle: its
    /// DOE mailbox, SPDM, IDE, TDI, interrupts (and the kind's own hooks)
    /// report to it and show the faults armed on it.
    pub fn build_controlled(
        &self,
        m: &ArgMatches,
        socket: &Path,
        port: PortType,
        control: Option<&Arc<DeviceControl>>,
    ) -> Result<AnyDevice, KindError> {
        let ctx = BuildContext {
            socket,
            port,
            security: SecurityArgs::from_arg_matches(m)?,
            control,
        };
        let dev = (self.build)(self, m, &ctx)?;
        if let Some(ctl) = control {
            crate::control::probes::device(ctl, dev.context());
        }
        Ok(dev)
    }

    /// The security blocks of this kind's function with Device Serial
    /// Number `dsn`, as the security options say.
    fn security(&self, ctx: &BuildContext<'_>, dsn: u64) -> Result<SecuritySetup, KindError> {
        ctx.security
            .setup(self.name, &security::cma_name(&self.pci_ids, dsn))
    }

    /// The Device Serial Number asked for, else the default one of this
    /// kind's instance on the context's socket.
    fn dsn(&self, ctx: &BuildContext<'_>) -> u64 {
        ctx.security
            .dsn
            .unwrap_or_else(|| security::default_dsn(self.name, ctx.socket))
    }

    /// Checks `trustdev serve KIND` arguments (besides `--socket` and
    /// `--rciep`) as serving would, without building anything: the kind's
    /// own options, the security options, and how they fit together.
    pub fn check_args(&self, args: &[String]) -> Result<(), KindError> {
        let m = self
            .augment(clap::Command::new(self.name).no_binary_name(true))
            .try_get_matches_from(args)?;
        SecurityArgs::from_arg_matches(&m)?
            .check()
            .map_err(KindError::Security)?;
        (self.check)(&m)
    }

    /// Turns one `trustdev vm -d KIND:OPT` option (`KEY=VALUE` or a flag
    /// `KEY`: one of the kind's own options or a security option) into
    /// `trustdev serve KIND` arguments.
    pub fn vm_option_args(&self, opt: &str) -> Result<Vec<String>, KindError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let cmd = self.augment(clap::Command::new(self.name));
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key))
            .ok_or_else(|| KindError::UnknownOption {
                kind: self.name,
                option: opt.to_string(),
            })?;
        let takes = arg.get_action().takes_values();
        match value {
            Some(v) if takes && !v.is_empty() => Ok(vec![format!("--{key}"), v.to_string()]),
            None if !takes => Ok(vec![format!("--{key}")]),
            _ => Err(KindError::OptionValue {
                kind: self.name,
                option: opt.to_string(),
                needs_value: takes,
            }),
        }
    }
}

fn build_nvme(
    k: &DeviceKind,
    m: &ArgMatches,
    ctx: &BuildContext<'_>,
) -> Result<AnyDevice, KindError> {
    let args = NvmeArgs::from_arg_matches(m)?;
    let mut cfg = NvmeConfig::from_args(&args, &ctx.socket.display().to_string())?;
    // Default DSN: derived from the NVMe serial number.
    if let Some(dsn) = ctx.security.dsn {
        cfg.dsn = dsn;
    }
    let setup = k.security(ctx, cfg.dsn)?;
    let sec = NvmeSecurity {
        ext_caps: ctx.ext_caps(k, &setup, cfg.dsn),
        tee: setup.tee,
        // The same identity also answers over Security Send/Receive.
        storage: setup
            .identity
            .clone()
            .map(|id| Responder::new(setup.config.clone(), id)),
    };
    let dev = NvmeDevice::new_secure(cfg, ctx.port, sec)?;
    if let Some(ctl) = ctx.control {
        dev.attach_control(ctl);
    }
    setup.finish(dev)
}

fn build_accel(
    k: &DeviceKind,
    m: &ArgMatches,
    ctx: &BuildContext<'_>,
) -> Result<AnyDevice, KindError> {
    let mut cfg = AccelArgs::from_arg_matches(m)?.config()?;
    cfg.dsn = k.dsn(ctx);
    let setup = k.security(ctx, cfg.dsn)?;
    cfg.port = ctx.port;
    cfg.tee = setup.tee;
    cfg.security_caps = ctx.ext_caps(k, &setup, cfg.dsn);
    setup.finish(AccelDevice::new(cfg).map_err(KindError::Device)?)
}

fn build_dma_copy(
    k: &DeviceKind,
    _m: &ArgMatches,
    ctx: &BuildContext<'_>,
) -> Result<AnyDevice, KindError> {
    let dsn = k.dsn(ctx);
    let setup = k.security(ctx, dsn)?;
    let dev = DmaCopy::with_capabilities(ctx.port, setup.tee, dsn, ctx.ext_caps(k, &setup, dsn))
        .map_err(KindError::Device)?;
    setup.finish(dev)
}

/// What `trustdev vm --device help` prints: placement, the security
/// options and each kind's own options, as `-d KIND:OPT,...` takes them.
pub fn vm_device_help() -> String {
    let mut s = String::from(
        "trustdev vm --device KIND[:OPT,...]: OPT is KEY=VALUE or a flag KEY, exactly\n\
         what `trustdev serve KIND --KEY [VALUE]` takes; `,,` in a VALUE stands for a comma\n\
         (e.g. accel:queues=4,ide=selective=1,,tee-limited,psk=@key.bin).\n\n\
         Placement (every kind):\n  \
         rciep                 on pcie.0, a Root Complex Integrated Endpoint\n  \
         root-port             behind its own pcie-root-port (the default)\n",
    );
    let security = SecurityArgs::augment_args(clap::Command::new("security"));
    s.push_str("\nSecurity options (every kind):\n");
    s.push_str(&options_help(&security));
    for k in KINDS {
        s.push_str(&format!("\n{}: {}\n", k.name, k.about));
        let own = options_help(&k.options());
        s.push_str(if own.is_empty() {
            "  (no options of its own)\n"
        } else {
            &own
        });
    }
    s
}

/// One line per option of `cmd`: `KEY[=VALUE]`, its help, its default.
fn options_help(cmd: &clap::Command) -> String {
    let mut s = String::new();
    for a in cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        let key = if a.get_action().takes_values() {
            let v = a
                .get_value_names()
                .and_then(|v| v.first())
                .map_or_else(|| a.get_id().as_str().to_uppercase(), |v| v.to_string());
            format!("{long}={v}")
        } else {
            long.to_string()
        };
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let default = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy())
            .collect::<Vec<_>>()
            .join(",");
        s.push_str(&format!("  {key:<21} {help}"));
        if !default.is_empty() {
            s.push_str(&format!(" [default: {default}]"));
        }
        s.push('\n');
    }
    s
}

/// A device of any kind, served as one type.
pub struct AnyDevice(Box<dyn Device>);

impl std::fmt::Debug for AnyDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnyDevice")
    }
}

impl AnyDevice {
    /// Wraps `dev`.
    pub fn new(dev: impl Device + 'static) -> AnyDevice {
        AnyDevice(Box::new(dev))
    }
}

impl Device for AnyDevice {
    fn context(&self) -> &DeviceContext {
        self.0.context()
    }

    fn config(&mut self) -> &mut ConfigSpace {
        self.0.config()
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.0.region_read(region, offset, data)
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.0.region_write(region, offset, data)
    }

    fn region_mmap(&self, region: u32) -> Option<RegionMmap<'_>> {
        self.0.region_mmap(region)
    }

    fn config_written(&mut self, events: vfio_user_server::pci::ConfigEvents) {
        self.0.config_written(events)
    }

    fn reset(&mut self) {
        self.0.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_vm_options() {
        assert_eq!(names(), "nvme, accel, dma-copy");
        assert!(matches!(find("bogus"), Err(KindError::Unknown(_))));
        let n = find("nvme").unwrap();
        assert_eq!(n.pci_ids.class, 0x01_08_02);
        assert_eq!(n.vm_option_args("size=64M").unwrap(), ["--size", "64M"]);
        assert_eq!(
            n.vm_option_args("no-shadow-doorbells").unwrap(),
            ["--no-shadow-doorbells"]
        );
        assert!(matches!(
            n.vm_option_args("size"),
            Err(KindError::OptionValue {
                needs_value: true,
                ..
            })
        ));
        assert!(matches!(
            n.vm_option_args("no-shadow-doorbells=1"),
            Err(KindError::OptionValue {
                needs_value: false,
                ..
            })
        ));
        assert!(matches!(
            n.vm_option_args("bogus=1"),
            Err(KindError::UnknownOption { .. })
        ));
        let d = find("dma-copy").unwrap();
        assert!(d.vm_option_args("size=1M").is_err());
        assert!(n
            .vm_option_args("x")
            .unwrap_err()
            .to_string()
            .contains("trustdev vm --device help"));
        // Security options belong to every kind.
        assert_eq!(d.vm_option_args("dsn=12").unwrap(), ["--dsn", "12"]);
        let a = find("accel").unwrap();
        assert_eq!(a.pci_ids.class, 0x12_00_00);
        assert_eq!(a.vm_option_args("no-pri").unwrap(), ["--no-pri"]);
        assert_eq!(a.vm_option_args("queues=2").unwrap(), ["--queues", "2"]);
    }

    #[test]
    fn check_args_refuses_what_serving_would() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = find("accel").unwrap();
        assert!(a.check_args(&args(&["--queues", "4", "--no-pri"])).is_ok());
        for bad in [
            &["--queues", "0"][..],
            &["--no-ats"],
            &["--workers", "3", "--queues", "2"],
            &["--ide", "bogus"],
            &["--tdisp", "rid=x"],
            &["--psk-hint", "h"],
            &["--dsn", "xyz"],
        ] {
            let e = a.check_args(&args(bad)).unwrap_err().to_string();
            assert!(!e.contains("Usage"), "{bad:?}: {e}");
        }
        let n = find("nvme").unwrap();
        assert!(n.check_args(&args(&["--lba-size", "4096"])).is_ok());
        assert!(n.check_args(&args(&["--lba-size", "1000"])).is_err());
    }
}
