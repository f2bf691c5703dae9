//! The listening UNIX socket, created with mode 0600.
//!
//! Binding never destroys a user's file: a path that already exists is
//! replaced only when it is a stale socket (a socket file that nothing
//! accepts connections on). A regular file, a directory, a symbolic link or a
//! socket a server still listens on is refused with a [`ListenError`] naming
//! the path. On drop, the listener removes its socket only if the path still
//! holds the socket it created.

use nix::sys::stat::{umask, Mode};
use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// Serialises umask changes: umask is process-wide.
static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// What occupies a socket path that is not a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    RegularFile,
    /// A directory.
    Directory,
    /// A symbolic link (whatever it points to).
    Symlink,
    /// A FIFO, a device node or anything else.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::RegularFile => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Other => "a special file",
        })
    }
}

/// Why a socket path cannot be listened on.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Something other than a socket is at the path; it is left untouched.
    #[error("{}: {kind} is in the way (not a socket); refusing to replace it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        kind: FileKind,
    },
    /// A server accepts connections on the socket at the path.
    #[error("{}: a server is listening on this socket", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// A socket is at the path but whether it is live cannot be told (e.g.
    /// no permission to connect); it is left untouched.
    #[error("{}: cannot tell whether the socket there is live ({source}); not replacing it", path.display())]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// A system call on the path failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl ListenError {
    fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ListenError + 'a {
        move |source| ListenError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}

/// Device and inode of a file: identifies the socket file we created.
type FileId = (u64, u64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino())
}

/// A listening socket that removes its path when dropped.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
    id: FileId,
}

impl Listener {
    /// Binds `path` with permissions 0600. A stale socket (nothing accepts
    /// connections on it) is replaced; anything else at `path` is refused and
    /// left as it is.
    pub fn bind(path: &Path) -> Result<Listener, ListenError> {
        remove_stale_socket(path)?;
        let inner = {
            let _g = UMASK_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            // Create the socket file with 0600 from the start (no window where
            // another user could connect), then restore the umask.
            let old = umask(Mode::from_bits_truncate(0o177));
            let r = UnixListener::bind(path);
            umask(old);
            r.map_err(|e| match e.kind() {
                // Something appeared at the path since the check: not ours.
                io::ErrorKind::AddrInUse => ListenError::InUse {
                    path: path.to_path_buf(),
                },
                _ => ListenError::io(path, "bind")(e),
            })?
        };
        let meta = std::fs::symlink_metadata(path).map_err(ListenError::io(path, "stat"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(ListenError::io(path, "chmod"))?;
        Ok(Listener {
            inner,
            path: path.to_path_buf(),
            id: file_id(&meta),
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

/// Removes `path` if it is a stale socket; succeeds if nothing is there.
fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ListenError::io(path, "stat")(e)),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let kind = if ft.is_file() {
            FileKind::RegularFile
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        return Err(ListenError::NotASocket {
            path: path.to_path_buf(),
            kind,
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => {
            return Err(ListenError::InUse {
                path: path.to_path_buf(),
            })
        }
        // Only a refused connection proves that nothing listens.
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        // EAGAIN: a listener whose backlog is full.
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
            return Err(ListenError::InUse {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(ListenError::Probe {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    // Remove exactly the stale socket that was probed, not whatever may have
    // been put there meanwhile.
    match std::fs::symlink_metadata(path) {
        Ok(now) if file_id(&now) == file_id(&meta) => {
            std::fs::remove_file(path).map_err(ListenError::io(path, "remove stale socket"))?;
            log::info!("{}: replaced a stale socket", path.display());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ListenError::io(path, "stat")(e)),
        // Replaced while we probed: judge the newcomer from scratch.
        Ok(_) => remove_stale_socket(path),
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Only our own socket: the path may have been replaced since.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && file_id(&m) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("vus-listener-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A socket file nobody listens on (its listener is gone).
    fn stale_socket(p: &Path) {
        drop(UnixListener::bind(p).unwrap());
        assert!(std::fs::symlink_metadata(p)
            .unwrap()
            .file_type()
            .is_socket());
    }

    #[test]
    fn socket_is_0600_and_removed() {
        let d = Dir::new("mode");
        let p = d.0.join("s.sock");
        {
            let l = Listener::bind(&p).unwrap();
            assert_eq!(std::fs::metadata(l.path()).unwrap().mode() & 0o777, 0o600);
        }
        assert!(!p.exists());
    }

    #[test]
    fn live_socket_is_refused() {
        let d = Dir::new("live");
        let p = d.0.join("s.sock");
        let l = Listener::bind(&p).unwrap();
        let e = Listener::bind(&p).unwrap_err();
        assert!(matches!(e, ListenError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
        // The first listener still accepts.
        UnixStream::connect(&p).unwrap();
        l.as_listener().accept().unwrap();
    }

    #[test]
    fn stale_socket_is_replaced() {
        let d = Dir::new("stale");
        let p = d.0.join("s.sock");
        stale_socket(&p);
        let l = Listener::bind(&p).unwrap();
        UnixStream::connect(&p).unwrap();
        l.as_listener().accept().unwrap();
    }

    #[test]
    fn regular_file_directory_and_symlinks_survive() {
        let d = Dir::new("files");
        let file = d.0.join("disk.img");
        std::fs::write(&file, b"precious data").unwrap();
        let dir = d.0.join("dir");
        std::fs::create_dir(&dir).unwrap();
        let link = d.0.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let sock = d.0.join("stale.sock");
        stale_socket(&sock);
        let link_to_sock = d.0.join("link.sock");
        std::os::unix::fs::symlink(&sock, &link_to_sock).unwrap();
        let fifo = d.0.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        for (p, kind) in [
            (&file, FileKind::RegularFile),
            (&dir, FileKind::Directory),
            (&link, FileKind::Symlink),
            (&link_to_sock, FileKind::Symlink),
            (&fifo, FileKind::Other),
        ] {
            match Listener::bind(p) {
                Err(e @ ListenError::NotASocket { kind: k, .. }) if k == kind => {
                    assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
                }
                other => panic!("{}: {other:?}", p.display()),
            }
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"precious data");
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_link(&link).unwrap(), file);
        assert_eq!(std::fs::read_link(&link_to_sock).unwrap(), sock);
        assert!(sock.exists() && fifo.exists());
    }

    #[test]
    fn drop_leaves_a_replacement_alone() {
        let d = Dir::new("drop");
        let p = d.0.join("s.sock");
        let l = Listener::bind(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"not yours").unwrap();
        drop(l);
        assert_eq!(std::fs::read(&p).unwrap(), b"not yours");
    }
}
