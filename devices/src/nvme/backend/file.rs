//! The file backend: a raw image file or block device, with the NVMe
//! volatile write cache semantics on top of it.
//!
//! [`FileBackend`] decides *when* data must be durable (Flush, FUA, the
//! write cache disabled, write-through mode); the [`Medium`] under it
//! stores blocks and makes them durable when asked. [`ImageFile`] is the
//! real medium (`pread`/`pwritev2(RWF_DSYNC)`/`fdatasync` on an image);
//! tests put a model there whose unsynced writes are lost at a power cut.

use super::{check, Backend, BackendError};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use vfio_user_server::dma::GuestSlice;

/// How a file backend makes writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Writes land in the page cache; Flush (fdatasync) makes them durable.
    /// The controller reports a volatile write cache.
    WriteBack,
    /// Every write is durable when it completes (`RWF_DSYNC`); no volatile
    /// write cache is reported.
    WriteThrough,
}

/// Data to write: guest memory or a buffer of ours.
#[derive(Debug, Clone, Copy)]
pub enum Src<'a> {
    /// Guest memory.
    Guest(GuestSlice<'a>),
    /// Our memory.
    Buf(&'a [u8]),
}

impl Src<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Src::Guest(g) => g.len(),
            Src::Buf(b) => b.len(),
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where read data goes: guest memory (writable) or a buffer of ours.
#[derive(Debug)]
pub enum Dst<'a> {
    /// Guest memory the device may write.
    Guest(GuestSlice<'a>),
    /// Our memory.
    Buf(&'a mut [u8]),
}

impl Dst<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Dst::Guest(g) => g.len(),
            Dst::Buf(b) => b.len(),
        }
    }

    /// Whether there is nothing to read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The storage under a [`FileBackend`]. Offsets and lengths are checked
/// against [`Medium::len`] by the caller.
pub trait Medium: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the size is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads `dst.len()` bytes at `off` into `dst` (bytes past the end of a
    /// file that shrank read as zero).
    fn read_at(&self, off: u64, dst: Dst<'_>) -> Result<(), BackendError>;
    /// Writes `src` at `off`. With `durable`, the data is on stable storage
    /// when this returns; without, it may sit in a volatile cache until
    /// [`Medium::sync`].
    fn write_at(&self, off: u64, src: Src<'_>, durable: bool) -> Result<(), BackendError>;
    /// Zeroes `len` bytes at `off` (releasing the space when `deallocate`);
    /// durable only after [`Medium::sync`].
    fn zero(&self, off: u64, len: u64, deallocate: bool) -> Result<(), BackendError>;
    /// Makes every completed write durable.
    fn sync(&self) -> Result<(), BackendError>;
    /// Human-readable description for logs.
    fn describe(&self) -> String;
}

/// A file backend: NVMe write-cache semantics over a [`Medium`].
#[derive(Debug)]
pub struct FileBackend<M: Medium = ImageFile> {
    medium: M,
    mode: CacheMode,
    /// Volatile write cache enabled (Set Features 06h); when off, every
    /// write is made durable before it completes.
    wce: AtomicBool,
}

impl FileBackend<ImageFile> {
    /// Opens (or creates with `size` bytes) a raw image; see [`ImageFile::open`].
    pub fn open(
        path: &Path,
        size: Option<u64>,
        mode: CacheMode,
    ) -> Result<FileBackend, BackendError> {
        Ok(FileBackend::with_medium(ImageFile::open(path, size)?, mode))
    }
}

impl<M: Medium> FileBackend<M> {
    /// A backend over `medium`.
    pub fn with_medium(medium: M, mode: CacheMode) -> FileBackend<M> {
        FileBackend {
            medium,
            mode,
            wce: AtomicBool::new(mode == CacheMode::WriteBack),
        }
    }

    /// The medium.
    pub fn medium(&self) -> &M {
        &self.medium
    }

    /// Whether a write must be durable before it completes: with FUA, or
    /// without an enabled volatile write cache (write-through mode, or the
    /// host disabled it).
    fn durable(&self, fua: bool) -> bool {
        fua || !self.write_cache_enabled()
    }
}

impl<M: Medium> Backend for FileBackend<M> {
    fn len(&self) -> u64 {
        self.medium.len()
    }

    fn read_guest(&self, off: u64, dst: &GuestSlice<'_>) -> Result<(), BackendError> {
        check(self.len(), off, dst.len() as u64)?;
        if !dst.is_writable() {
            return Err(BackendError::ReadOnlyDestination);
        }
        self.medium.read_at(off, Dst::Guest(*dst))
    }

    fn write_guest(&self, off: u64, src: &GuestSlice<'_>, fua: bool) -> Result<(), BackendError> {
        check(self.len(), off, src.len() as u64)?;
        self.medium
            .write_at(off, Src::Guest(*src), self.durable(fua))
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check(self.len(), off, buf.len() as u64)?;
        self.medium.read_at(off, Dst::Buf(buf))
    }

    fn write(&self, off: u64, buf: &[u8], fua: bool) -> Result<(), BackendError> {
        check(self.len(), off, buf.len() as u64)?;
        self.medium.write_at(off, Src::Buf(buf), self.durable(fua))
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.medium.sync()
    }

    fn write_zeroes(&self, off: u64, len: u64, deallocate: bool) -> Result<(), BackendError> {
        check(self.len(), off, len)?;
        if len == 0 {
            return Ok(());
        }
        self.medium.zero(off, len, deallocate)?;
        if self.durable(false) {
            self.medium.sync()?;
        }
        Ok(())
    }

    fn volatile_cache(&self) -> bool {
        self.mode == CacheMode::WriteBack
    }

    fn set_write_cache(&self, enabled: bool) -> Result<(), BackendError> {
        if self.mode == CacheMode::WriteBack {
            if !enabled {
                // Whatever the cache holds becomes durable now.
                self.medium.sync()?;
            }
            self.wce.store(enabled, Ordering::Relaxed);
        }
        Ok(())
    }

    fn write_cache_enabled(&self) -> bool {
        self.mode == CacheMode::WriteBack && self.wce.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.medium.describe(),
            match self.mode {
                CacheMode::WriteBack => "write-back: durable at Flush",
                CacheMode::WriteThrough => "write-through: every write durable (RWF_DSYNC)",
            }
        )
    }
}

/// A raw image file or block device, opened once (an exclusive `flock`
/// keeps a second server away).
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    path: PathBuf,
    len: u64,
}

/// Repeats `op(ptr, len, off)` (a pread/pwrite-like call returning bytes
/// done or -1) until `len` bytes are done or it returns 0.
fn io_loop(
    what: &'static str,
    mut len: usize,
    mut off: u64,
    mut ptr: *mut u8,
    mut op: impl FnMut(*mut u8, usize, u64) -> isize,
) -> Result<usize, BackendError> {
    let mut done = 0usize;
    while len > 0 {
        let n = op(ptr, len, off);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BackendError::Io {
                op: what,
                off,
                source: e,
            });
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        done += n;
        len -= n;
        off += n as u64;
        ptr = ptr.wrapping_add(n);
    }
    Ok(done)
}

fn block_device_size(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

impl ImageFile {
    /// Opens (or creates with `size` bytes) a raw image. An existing file
    /// keeps its size unless it is smaller than `size`, then it is extended.
    pub fn open(path: &Path, size: Option<u64>) -> Result<ImageFile, BackendError> {
        let opened = |source| BackendError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size.is_some())
            .truncate(false)
            .open(path)
            .map_err(opened)?;
        // One server per image: a second one would corrupt it.
        // SAFETY: flock on our own open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(BackendError::InUse {
                path: path.to_path_buf(),
            });
        }
        let meta = file.metadata().map_err(opened)?;
        let mut len = if meta.file_type().is_block_device() {
            block_device_size(&file).map_err(opened)?
        } else {
            meta.len()
        };
        if let Some(s) = size {
            if len < s && meta.is_file() {
                file.set_len(s).map_err(opened)?;
                len = s;
            }
        }
        if len == 0 {
            return Err(BackendError::EmptyImage {
                path: path.to_path_buf(),
            });
        }
        Ok(ImageFile {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fdatasync(&self, off: u64) -> Result<(), BackendError> {
        self.file.sync_data().map_err(|source| BackendError::Io {
            op: "fdatasync",
            off,
            source,
        })
    }
}

impl Medium for ImageFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, off: u64, dst: Dst<'_>) -> Result<(), BackendError> {
        let (ptr, len) = match dst {
            Dst::Guest(g) => (g.as_ptr(), g.len()),
            Dst::Buf(b) => (b.as_mut_ptr(), b.len()),
        };
        let fd = self.file.as_raw_fd();
        // SAFETY: ptr..ptr+len is writable memory: a live guest view the
        // caller checked for write access, or our own buffer.
        let n = io_loop("pread", len, off, ptr, |p, n, o| unsafe {
            libc::pread(fd, p.cast(), n, o as i64)
        })?;
        if n < len {
            // Past the end of a file that shrank under us: zeroes.
            // SAFETY: the tail of the same writable range.
            unsafe { std::ptr::write_bytes(ptr.add(n), 0, len - n) };
        }
        Ok(())
    }

    fn write_at(&self, off: u64, src: Src<'_>, durable: bool) -> Result<(), BackendError> {
        let (ptr, len) = match src {
            Src::Guest(g) => (g.as_ptr().cast_const(), g.len()),
            Src::Buf(b) => (b.as_ptr(), b.len()),
        };
        let fd = self.file.as_raw_fd();
        let mut dsync = durable;
        let n = io_loop("pwrite", len, off, ptr.cast_mut(), |p, n, o| {
            let iov = libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            };
            if dsync {
                // SAFETY: the iovec describes n readable bytes at p (a live
                // guest view or our buffer).
                let r = unsafe { libc::pwritev2(fd, &iov, 1, o as i64, libc::RWF_DSYNC) };
                if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return r;
                }
                // No RWF_DSYNC here: plain writes, then fdatasync.
                dsync = false;
            }
            // SAFETY: as above.
            unsafe { libc::pwrite(fd, p.cast(), n, o as i64) }
        })?;
        if n != len {
            return Err(BackendError::ShortWrite { off, done: n, len });
        }
        if durable && !dsync {
            self.fdatasync(off)?;
        }
        Ok(())
    }

    fn zero(&self, off: u64, len: u64, deallocate: bool) -> Result<(), BackendError> {
        let mode = if deallocate {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: fallocate on our own fd with a checked range.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) };
        if r != 0 {
            // Not supported here: write zeroes.
            let zeros = vec![0u8; (len as usize).min(1 << 20)];
            let mut pos = off;
            while pos < off + len {
                let n = ((off + len - pos) as usize).min(zeros.len());
                self.file
                    .write_all_at(&zeros[..n], pos)
                    .map_err(|source| BackendError::Io {
                        op: "pwrite",
                        off: pos,
                        source,
                    })?;
                pos += n as u64;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.fdatasync(0)
    }

    fn describe(&self) -> String {
        format!("file {} ({} MiB)", self.path.display(), self.len >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_roundtrip_zeroes_and_cache() {
        let dir = std::env::temp_dir().join(format!("trustdev-nvme-be-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("img");
        let _ = std::fs::remove_file(&p);
        let f = FileBackend::open(&p, Some(1 << 20), CacheMode::WriteBack).unwrap();
        assert_eq!(f.len(), 1 << 20);
        assert!(f.volatile_cache() && f.write_cache_enabled());
        f.write(4096, &[5; 8192], false).unwrap();
        f.flush().unwrap();
        f.write_zeroes(4096 + 512, 4096, true).unwrap();
        let mut b = vec![0u8; 8192];
        f.read(4096, &mut b).unwrap();
        assert!(b[..512].iter().all(|&x| x == 5));
        assert!(b[512..4608].iter().all(|&x| x == 0));
        assert!(b[4608..].iter().all(|&x| x == 5));
        f.set_write_cache(false).unwrap();
        assert!(!f.write_cache_enabled());
        f.write(0, &[1; 512], true).unwrap();
        assert!(matches!(
            f.write(u64::MAX - 2, &[1; 8], false),
            Err(BackendError::OutOfRange { .. })
        ));
        drop(f);
        // Reopen: existing size kept; a second opener is refused meanwhile.
        let g = FileBackend::open(&p, None, CacheMode::WriteThrough).unwrap();
        assert!(matches!(
            FileBackend::open(&p, None, CacheMode::WriteBack),
            Err(BackendError::InUse { .. })
        ));
        assert_eq!(g.len(), 1 << 20);
        assert!(!g.volatile_cache());
        assert!(g.describe().contains("write-through"));
        let mut one = [0u8; 1];
        g.read(0, &mut one).unwrap();
        assert_eq!(one, [1]);
        assert!(matches!(
            FileBackend::open(&dir.join("missing"), None, CacheMode::WriteBack),
            Err(BackendError::Open { .. })
        ));
        std::fs::write(dir.join("empty"), b"").unwrap();
        assert!(matches!(
            FileBackend::open(&dir.join("empty"), None, CacheMode::WriteBack),
            Err(BackendError::EmptyImage { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
