//! CMA/SPDM over DOE (PCIe r6.x §6.31): the SPDM responder of a device,
//! reached through its DOE mailbox as data object types 1 (CMA/SPDM) and 2
//! (secured CMA/SPDM), and the device identity behind it.

use super::doe::{DoeProtocol, PCI_SIG_VENDOR, TYPE_CMA, TYPE_SECURED_CMA};
use log::warn;
use spdm_responder::rng::OsEntropy;
use spdm_responder::{CmaDeviceName, Identity, Responder, ResponderConfig, SecuredReply};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Errors setting up a device's SPDM identity.
#[derive(Debug, Error)]
pub enum CmaError {
    /// The identity directory cannot be created or locked.
    #[error("identity directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Generating or loading the certificate chain failed.
    #[error("device identity in {dir}: {source}")]
    Identity {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: spdm_responder::error::IdentityError,
    },
}

/// Loads the identity stored in `dir` for the device named `name`: the
/// directory's root and intermediate CAs (created on first use, then kept),
/// and leaves with the CMA otherName of `name` (issued on first use, cached;
/// P-256 and P-384; private keys 0600). Several servers may start at once
/// with the same directory: this happens under an exclusive lock, so they
/// all share the same CAs.
pub fn load_identity(dir: &Path, name: &CmaDeviceName) -> Result<Identity, CmaError> {
    let derr = |source| CmaError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(derr)?;
    let lock = File::create(dir.join(".lock")).map_err(derr)?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| derr(std::io::Error::from(e)))?;
    Identity::load_or_generate(dir, name, &mut OsEntropy).map_err(|source| CmaError::Identity {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The root certificates (PEM files) of an identity directory, as
/// (algorithm directory name, path): what a requester must trust.
pub fn root_certificates(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path().join("root.cert.pem");
            if p.exists() {
                out.push((e.file_name().to_string_lossy().into_owned(), p));
            }
        }
    }
    out.sort();
    out
}

/// The two DOE protocols (CMA and secured CMA) of one SPDM responder.
pub fn doe_protocols(config: ResponderConfig, identity: Identity) -> Vec<Box<dyn DoeProtocol>> {
    let responder = Arc::new(Mutex::new(Responder::new(config, identity)));
    vec![
        Box::new(Cma {
            responder: Arc::clone(&responder),
            secured: false,
        }),
        Box::new(Cma {
            responder,
            secured: true,
        }),
    ]
}

/// One of the two CMA data object protocols over a shared responder.
struct Cma {
    responder: Arc<Mutex<Responder>>,
    secured: bool,
}

impl DoeProtocol for Cma {
    fn vendor_id(&self) -> u16 {
        PCI_SIG_VENDOR
    }

    fn object_type(&self) -> u8 {
        if self.secured {
            TYPE_SECURED_CMA
        } else {
            TYPE_CMA
        }
    }

    fn handle(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        let mut r = self.responder.lock().unwrap_or_else(|p| p.into_inner());
        if !self.secured {
            return Some(r.handle_message(request));
        }
        match r.handle_secured(request) {
            SecuredReply::Secured(rsp) => Some(rsp),
            SecuredReply::Plain(err) => {
                // The record cannot be answered inside a session (unknown
                // session, bad MAC...). A DOE response must carry the request's
                // type, and a plain SPDM ERROR in a secured object would not
                // parse either: discard, as the spec does for objects that
                // cannot be processed (the requester times out).
                warn!(
                    "secured CMA: record not answerable in a session; discarded (SPDM ERROR {:02x?})",
                    err.get(2..4)
                );
                None
            }
            SecuredReply::None => None,
        }
    }

    fn reset(&mut self) {
        // Both protocols share the responder; resetting twice is harmless.
        self.responder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
    }
}
