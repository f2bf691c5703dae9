//! CMA/SPDM (PCIe r6.x §6.31): the identity behind a device's SPDM
//! responder. The responder itself is the DOE mailbox's CMA and secured CMA
//! protocol (`spdm_responder::transport::doe`, `impl DoeProtocol for
//! Responder`).

use spdm_responder::rng::OsEntropy;
use spdm_responder::{CmaDeviceName, Identity};
use std::fs::File;
use std::path::{Path, PathBuf};
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
    locked(dir, |dir| {
        Identity::load_or_generate(dir, name, &mut OsEntropy)
    })
}

/// `f(dir)` under the directory's exclusive lock (created if needed).
fn locked(
    dir: &Path,
    f: impl FnOnce(&Path) -> Result<Identity, spdm_responder::error::IdentityError>,
) -> Result<Identity, CmaError> {
    let derr = |source| CmaError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(derr)?;
    let lock = File::create(dir.join(".lock")).map_err(derr)?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| derr(std::io::Error::from(e)))?;
    f(dir).map_err(|source| CmaError::Identity {
        dir: dir.to_path_buf(),
        source,
    })
}

/// The identity of `name` in `dir` with leaves that expired on 2025-01-01
/// (the `spdm-cert` fault `expired`): the directory's real CAs, issued in
/// memory, the cached leaves untouched.
pub fn expired_identity(dir: &Path, name: &CmaDeviceName) -> Result<Identity, CmaError> {
    locked(dir, |dir| {
        spdm_responder::identity::store::expired_identity(dir, name, &mut OsEntropy)
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
