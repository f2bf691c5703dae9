//! Device-side PCIe security blocks shared by every trustdev device: the DOE
//! mailbox, CMA/SPDM over it with the device's identity, IDE registers and
//! key slots with the protected link, and TDISP interface state.

pub mod cma;
pub mod doe;
pub mod ide;
pub mod tdisp;

use spdm_responder::{Identity, Responder, ResponderConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfio_user_server::pci::ExtCap;

/// Where a device kind keeps its SPDM identity unless told otherwise:
/// `$TRUSTDEV_IDENTITY_DIR/KIND`, else `$XDG_DATA_HOME/trustdev/identity/KIND`
/// (`~/.local/share/trustdev/identity/KIND`).
pub fn default_identity_dir(kind: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("TRUSTDEV_IDENTITY_DIR") {
        return PathBuf::from(d).join(kind);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("trustdev/identity").join(kind)
}

/// The DOE mailbox capability of a device: discovery, plus CMA/SPDM and
/// secured CMA/SPDM answered by an SPDM responder configured by `config`
/// with `identity` (see [`cma::load_identity`]); without an identity the
/// mailbox serves discovery only. A device that serves more (vendor-defined
/// data objects, or a responder with IDE_KM/TDISP handlers registered) builds
/// [`doe::DoeMailbox::new`] with its own protocol set.
pub fn doe_capability(identity: Option<Identity>, config: ResponderConfig) -> ExtCap {
    doe_capability_with_ide(identity, config, None)
}

/// [`doe_capability`] whose SPDM responder also answers IDE_KM (inside
/// secured sessions) for the device's IDE port.
pub fn doe_capability_with_ide(
    identity: Option<Identity>,
    config: ResponderConfig,
    ide: Option<&Arc<ide::Ide>>,
) -> ExtCap {
    doe_capability_secure(identity, config, ide, None)
}

/// [`doe_capability_with_ide`] whose SPDM responder also answers TDISP
/// (inside secured sessions) for the device's TDI.
pub fn doe_capability_secure(
    identity: Option<Identity>,
    config: ResponderConfig,
    ide: Option<&Arc<ide::Ide>>,
    tdi: Option<&Arc<tdisp::Tdi>>,
) -> ExtCap {
    let mut protocols: Vec<Box<dyn doe::DoeProtocol>> = Vec::new();
    if let Some(identity) = identity {
        let mut r = Responder::new(config, identity);
        if let Some(ide) = ide {
            let (key, handler) = ide::km::IdeKmPorts::new(vec![Arc::clone(ide)]).handler();
            r.register_vendor(key, handler);
        }
        if let Some(tdi) = tdi {
            let (key, handler) = tdisp::TdispFunctions::new(vec![Arc::clone(tdi)]).handler();
            r.register_vendor(key, handler);
        }
        protocols.push(Box::new(r));
    }
    doe::DoeMailbox::new(protocols).into_ext_cap()
}

/// The default Device Serial Number of a device instance: a stable value
/// derived from its kind and the absolute path of its socket (FNV-1a), so
/// two instances of a kind differ and one instance keeps its number across
/// restarts. Never 0 (Linux reads 0 as "no serial number").
pub fn default_dsn(kind: &str, socket: &Path) -> u64 {
    let abs = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    crate::nvme::options::fnv64(format!("{kind}\0{}", abs.display()).as_bytes()).max(1)
}
