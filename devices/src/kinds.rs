//! The device kinds trustdev serves, in one table: each kind's name, PCI
//! IDs, options (a clap argument set) and how its server device is built.
//! `trustdev serve KIND` parses and builds through it; `trustdev vm -d
//! KIND:OPT,...` checks kinds and turns options into `serve` arguments
//! through it. Adding a kind is adding an entry to [`KINDS`].

use crate::control::{doe::AltIdentity, DeviceControl};
use crate::example::{self, DmaCopy};
use crate::nvme::{self, NvmeArgs, NvmeConfig, NvmeDevice, NvmeSecurity};
use crate::security::{self, ide::Ide, ide::IdeDevice};
use clap::{ArgMatches, Args, FromArgMatches};
use spdm_responder::{CmaDeviceName, Identity, Responder, ResponderConfig};
use std::path::{Path, PathBuf};
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
    #[error("{kind}: unknown device option {option:?} (rciep, root-port, no-spdm, no-tee{hint})", hint = option_hint(.kind))]
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
    #[error("{0}")]
    Args(#[from] clap::Error),
    /// The kind's options are invalid.
    #[error("{0}")]
    Options(#[from] nvme::options::OptionsError),
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

fn option_hint(kind: &str) -> String {
    match find(kind) {
        Ok(k) if k.options().get_arguments().next().is_some() => {
            format!(", or {kind} options: see `trustdev serve {kind} --help`")
        }
        _ => String::new(),
    }
}

/// Where a served device's security comes from (`trustdev serve`'s
/// security options).
pub trait SecuritySource {
    /// The Device Serial Number asked for, if any (else the kind's default).
    fn dsn(&self) -> Option<u64>;
    /// The security setup of the function named `name` served as `kind`.
    fn setup(&self, kind: &str, name: &CmaDeviceName) -> Result<SecuritySetup, KindError>;
    /// Where the kind's identity (its CAs) lives.
    fn identity_dir(&self, kind: &str) -> PathBuf {
        security::default_identity_dir(kind)
    }
}

/// A device's security blocks.
pub struct SecuritySetup {
    /// Its SPDM identity (None: a DOE mailbox without CMA/SPDM).
    pub identity: Option<Identity>,
    /// How its SPDM responders behave (PSK, heartbeat).
    pub config: ResponderConfig,
    /// Its IDE port, if it has one.
    pub ide: Option<Arc<Ide>>,
    /// DEVCAP.TEE (TDISP support).
    pub tee: bool,
}

impl SecuritySetup {
    /// The extended capabilities: the DOE mailbox (CMA/SPDM, secured
    /// CMA/SPDM, IDE_KM when the device has an IDE port) and IDE's.
    fn ext_caps(&self) -> Vec<ExtCap> {
        let mut caps = vec![security::doe_capability_with_ide(
            self.identity.clone(),
            self.config.clone(),
            self.ide.as_ref(),
        )];
        caps.extend(self.ide.iter().flat_map(|i| i.capabilities()));
        caps
    }

    /// [`SecuritySetup::ext_caps`], with the DOE mailbox behind the device
    /// control's front (traced, DOE and SPDM faults) when there is one.
    fn controlled_ext_caps(
        &self,
        ctx: &BuildContext<'_>,
        kind: &str,
        name: &CmaDeviceName,
    ) -> Vec<ExtCap> {
        let mut caps = self.ext_caps();
        if let Some(ctl) = ctx.control {
            let alt = self.identity.as_ref().map(|_| AltIdentity {
                name: name.clone(),
                config: self.config.clone(),
                dir: ctx.security.identity_dir(kind),
            });
            ctl.wrap_doe(&mut caps, alt);
            if let Some(ide) = &self.ide {
                crate::control::probes::ide(ctl, ide);
            }
        }
        caps
    }

    /// `dev` behind its IDE link when it has an IDE port.
    fn finish(&self, dev: impl Device + 'static) -> Result<AnyDevice, KindError> {
        Ok(match &self.ide {
            Some(ide) => AnyDevice::new(
                IdeDevice::new(dev, Arc::clone(ide)).map_err(|_| KindError::IdeLinked)?,
            ),
            None => AnyDevice::new(dev),
        })
    }
}

/// What building a device needs besides its options.
pub struct BuildContext<'a> {
    /// The socket it will serve on (seeds default identifiers).
    pub socket: &'a Path,
    /// PCIe port type.
    pub port: PortType,
    /// Its security setup.
    pub security: &'a dyn SecuritySource,
    /// Its control-plane handle (trace, faults, state), if it has one.
    pub control: Option<&'a Arc<DeviceControl>>,
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
    /// Builds the device from parsed options.
    build: fn(&ArgMatches, &BuildContext<'_>) -> Result<AnyDevice, KindError>,
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
        build: build_nvme,
    },
    DeviceKind {
        name: "dma-copy",
        about: "DMA-copy accelerator (the vfio-user example device, with a DOE mailbox)",
        pci_ids: example::PCI_IDS,
        args: no_args,
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

    /// Adds this kind's options to `cmd`.
    pub fn augment(&self, cmd: clap::Command) -> clap::Command {
        (self.args)(cmd)
    }

    /// Builds the device from matches of a command [`DeviceKind::augment`]ed.
    pub fn build(&self, m: &ArgMatches, ctx: &BuildContext<'_>) -> Result<AnyDevice, KindError> {
        let dev = (self.build)(m, ctx)?;
        if let Some(ctl) = ctx.control {
            ctl.attach_interrupts(Arc::clone(&dev.context().irqs));
            crate::control::probes::dma(ctl, Arc::clone(&dev.context().memory));
        }
        Ok(dev)
    }

    /// Turns one `trustdev vm -d KIND:OPT` option (`KEY=VALUE` or a flag
    /// `KEY`) into `trustdev serve KIND` arguments.
    pub fn vm_option_args(&self, opt: &str) -> Result<Vec<String>, KindError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let cmd = self.options();
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

fn build_nvme(m: &ArgMatches, ctx: &BuildContext<'_>) -> Result<AnyDevice, KindError> {
    let args = NvmeArgs::from_arg_matches(m)?;
    let mut cfg = NvmeConfig::from_args(&args, &ctx.socket.display().to_string())?;
    // Default DSN: derived from the NVMe serial number.
    if let Some(dsn) = ctx.security.dsn() {
        cfg.dsn = dsn;
    }
    let name = security::cma_name(&nvme::PCI_IDS, cfg.dsn);
    let setup = ctx.security.setup("nvme", &name)?;
    let sec = NvmeSecurity {
        ext_caps: setup.controlled_ext_caps(ctx, "nvme", &name),
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

fn build_dma_copy(_m: &ArgMatches, ctx: &BuildContext<'_>) -> Result<AnyDevice, KindError> {
    let dsn = ctx
        .security
        .dsn()
        .unwrap_or_else(|| security::default_dsn("dma-copy", ctx.socket));
    let name = security::cma_name(&example::PCI_IDS, dsn);
    let setup = ctx.security.setup("dma-copy", &name)?;
    let caps = setup.controlled_ext_caps(ctx, "dma-copy", &name);
    let dev =
        DmaCopy::with_capabilities(ctx.port, setup.tee, dsn, caps).map_err(KindError::Device)?;
    setup.finish(dev)
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
        assert_eq!(names(), "nvme, dma-copy");
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
        assert!(!d
            .vm_option_args("x")
            .unwrap_err()
            .to_string()
            .contains("see"));
        assert!(n
            .vm_option_args("x")
            .unwrap_err()
            .to_string()
            .contains("trustdev serve nvme --help"));
    }
}
