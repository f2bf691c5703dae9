//! The listening UNIX socket, created with mode 0600.

use nix::sys::stat::{umask, Mode};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Serialises umask changes: umask is process-wide.
static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// A listening socket that removes its path when dropped.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path` with permissions 0600. A stale socket file (nobody
    /// listening) is replaced; a live one is an `AddrInUse` error.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let inner = {
            let _g = UMASK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            // Create the socket file with 0600 from the start (no window where
            // another user could connect), then restore the umask.
            let old = umask(Mode::from_bits_truncate(0o177));
            let r = UnixListener::bind(path);
            umask(old);
            r?
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying listener.
    pub fn as_listener(&self) -> &UnixListener {
        &self.inner
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn socket_is_0600_and_removed() {
        let dir = std::env::temp_dir().join(format!("vus-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.sock");
        {
            let l = Listener::bind(&p).unwrap();
            assert_eq!(std::fs::metadata(l.path()).unwrap().mode() & 0o777, 0o600);
            assert!(
                Listener::bind(&p).is_err(),
                "live socket must not be stolen"
            );
        }
        assert!(!p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
