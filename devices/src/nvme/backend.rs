//! Namespace storage: a sparse RAM disk and a raw image file.
//!
//! Both move data straight between guest memory and the medium: the RAM
//! backend copies between its mapping and the guest's, the file backend
//! hands guest memory to `pread`/`pwrite`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use vfio_user_server::dma::GuestSlice;

/// What a namespace stores its blocks in.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Capacity in bytes.
    fn len(&self) -> u64;
    /// Whether the capacity is zero (never, once opened).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `dst.len()` bytes at `off` into guest memory.
    fn read_guest(&self, off: u64, dst: &GuestSlice<'_>) -> io::Result<()>;
    /// Copies guest memory `src` to `off`.
    fn write_guest(&self, off: u64, src: &GuestSlice<'_>, fua: bool) -> io::Result<()>;
    /// Copies `buf.len()` bytes at `off` into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf` at `off`.
    fn write(&self, off: u64, buf: &[u8], fua: bool) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Zeroes `len` bytes at `off`, releasing the space when `deallocate`.
    fn write_zeroes(&self, off: u64, len: u64, deallocate: bool) -> io::Result<()>;
    /// Whether writes may sit in a volatile cache until flushed.
    fn volatile_cache(&self) -> bool;
    /// Enables or disables the volatile write cache (Set Features 06h).
    fn set_write_cache(&self, enabled: bool);
    /// Whether the write cache is enabled.
    fn write_cache_enabled(&self) -> bool;
    /// Human-readable description for logs.
    fn describe(&self) -> String;
}

fn check(len: u64, off: u64, n: u64) -> io::Result<()> {
    match off.checked_add(n) {
        Some(e) if e <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("access {off:#x}+{n:#x} beyond {len:#x}"),
        )),
    }
}

/// A RAM disk: an anonymous `MAP_NORESERVE` mapping. Pages are allocated by
/// the kernel on first write (4 KiB granularity); never-written and
/// deallocated ranges read as zeroes from the shared zero page, so a large
/// mostly-empty namespace costs only what was written.
#[derive(Debug)]
pub struct RamBackend {
    ptr: NonNull<u8>,
    len: u64,
}

// SAFETY: the mapping is plain memory owned by this value; all accesses go
// through raw-pointer copies (concurrent I/O to the same blocks races the way
// it does on a real device, without touching Rust references).
unsafe impl Send for RamBackend {}
// SAFETY: as above.
unsafe impl Sync for RamBackend {}

impl RamBackend {
    /// A zeroed RAM disk of `len` bytes (not committed until written).
    pub fn new(len: u64) -> io::Result<RamBackend> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        let size = usize::try_from(len)
            .ok()
            .and_then(std::num::NonZeroUsize::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad RAM disk size"))?;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to
        // the range it returns.
        let p = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(RamBackend { ptr: p.cast(), len })
    }

    fn at(&self, off: u64) -> *mut u8 {
        // SAFETY (of the callers' use): callers check off + n <= len first.
        self.ptr.as_ptr().wrapping_add(off as usize)
    }

    /// Bytes of RAM actually committed (resident pages), for tests/logs.
    pub fn resident_bytes(&self) -> u64 {
        let pages = self.len.div_ceil(4096) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: mincore reads our own mapping's residency into `vec`,
        // which has one byte per page of the mapping.
        let r = unsafe {
            libc::mincore(
                self.ptr.as_ptr().cast(),
                self.len as usize,
                vec.as_mut_ptr().cast(),
            )
        };
        if r != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 != 0).count() as u64 * 4096
    }
}

impl Drop for RamBackend {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in new(); no borrows of
        // it outlive self.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len as usize) };
    }
}

impl Backend for RamBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_guest(&self, off: u64, dst: &GuestSlice<'_>) -> io::Result<()> {
        check(self.len, off, dst.len() as u64)?;
        if !dst.is_writable() {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        // SAFETY: source range checked against our mapping; destination is
        // a live, writable guest view of dst.len() bytes; the two mappings
        // are distinct.
        unsafe { std::ptr::copy_nonoverlapping(self.at(off), dst.as_ptr(), dst.len()) };
        Ok(())
    }

    fn write_guest(&self, off: u64, src: &GuestSlice<'_>, _fua: bool) -> io::Result<()> {
        check(self.len, off, src.len() as u64)?;
        // SAFETY: destination range checked against our writable mapping;
        // the source is a live guest view of src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.at(off), src.len()) };
        Ok(())
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self.len, off, buf.len() as u64)?;
        // SAFETY: range checked; `buf` is our own memory.
        unsafe { std::ptr::copy_nonoverlapping(self.at(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8], _fua: bool) -> io::Result<()> {
        check(self.len, off, buf.len() as u64)?;
        // SAFETY: range checked; `buf` is our own memory.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.at(off), buf.len()) };
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, off: u64, len: u64, _deallocate: bool) -> io::Result<()> {
        check(self.len, off, len)?;
        // Whole pages go back to the kernel (they read as zero again);
        // partial pages at the edges are zeroed in place.
        let page = 4096u64;
        let start = off.next_multiple_of(page);
        let end = (off + len) / page * page;
        let zero = |a: u64, n: u64| {
            // SAFETY: a..a+n lies inside off..off+len, checked above.
            unsafe { std::ptr::write_bytes(self.at(a), 0, n as usize) }
        };
        if start < end {
            zero(off, start - off);
            // SAFETY: start..end is page aligned and inside our private
            // anonymous mapping; MADV_DONTNEED makes it read as zero.
            let r = unsafe {
                libc::madvise(
                    self.at(start).cast(),
                    (end - start) as usize,
                    libc::MADV_DONTNEED,
                )
            };
            if r != 0 {
                zero(start, end - start);
            }
            zero(end, off + len - end);
        } else {
            zero(off, len);
        }
        Ok(())
    }

    fn volatile_cache(&self) -> bool {
        false
    }

    fn set_write_cache(&self, _enabled: bool) {}

    fn write_cache_enabled(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("RAM ({} MiB, sparse)", self.len >> 20)
    }
}

/// How a file backend makes writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Writes land in the page cache; Flush (fdatasync) makes them durable.
    /// The controller reports a volatile write cache.
    WriteBack,
    /// The file is opened O_DSYNC: every write is durable when it completes;
    /// no volatile write cache is reported.
    WriteThrough,
}

/// A raw image file.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len: u64,
    mode: CacheMode,
    /// Volatile write cache enabled (Set Features 06h); when off, every
    /// write is made durable before it completes.
    wce: AtomicBool,
}

fn io_loop(
    what: &str,
    mut len: usize,
    mut off: u64,
    mut ptr: *mut u8,
    mut op: impl FnMut(*mut u8, usize, u64) -> isize,
) -> io::Result<usize> {
    let mut done = 0usize;
    while len > 0 {
        let n = op(ptr, len, off);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
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

impl FileBackend {
    /// Opens (or creates with `size` bytes) a raw image. An existing file
    /// keeps its size unless it is smaller than `size`, then it is extended.
    pub fn open(path: &Path, size: Option<u64>, mode: CacheMode) -> io::Result<FileBackend> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(size.is_some());
        if mode == CacheMode::WriteThrough {
            o.custom_flags(libc::O_DSYNC);
        }
        let file = o
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // One server per image: a second one would corrupt it.
        // SAFETY: flock on our own open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("{}: in use by another server ({e})", path.display()),
            ));
        }
        let meta = file.metadata()?;
        let mut len = if meta.file_type().is_block_device() {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        if let Some(s) = size {
            if len < s && meta.is_file() {
                file.set_len(s)?;
                len = s;
            }
        }
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: empty image (give a size)", path.display()),
            ));
        }
        Ok(FileBackend {
            file,
            path: path.to_path_buf(),
            len,
            mode,
            wce: AtomicBool::new(mode == CacheMode::WriteBack),
        })
    }

    /// Whether a write must be durable before it completes.
    fn sync_write(&self, fua: bool) -> bool {
        self.mode == CacheMode::WriteBack && (fua || !self.wce.load(Ordering::Relaxed))
    }

    fn pwrite_ptr(&self, off: u64, ptr: *const u8, len: usize, sync: bool) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mut dsync_ok = true;
        let n = io_loop("pwrite", len, off, ptr as *mut u8, |p, n, o| {
            let iov = libc::iovec {
                iov_base: p.cast(),
                iov_len: n,
            };
            if sync && dsync_ok {
                // SAFETY: the iovec describes n readable bytes at p (a live
                // guest view or our buffer, per the callers).
                let r = unsafe { libc::pwritev2(fd, &iov, 1, o as i64, libc::RWF_DSYNC) };
                if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return r;
                }
                dsync_ok = false;
            }
            // SAFETY: as above.
            unsafe { libc::pwrite(fd, p.cast(), n, o as i64) }
        })?;
        if n != len {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        if sync && !dsync_ok {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn pread_ptr(&self, off: u64, ptr: *mut u8, len: usize) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: ptr..ptr+len is writable memory (a live guest view or our
        // buffer, per the callers).
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

impl Backend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_guest(&self, off: u64, dst: &GuestSlice<'_>) -> io::Result<()> {
        check(self.len, off, dst.len() as u64)?;
        if !dst.is_writable() {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.pread_ptr(off, dst.as_ptr(), dst.len())
    }

    fn write_guest(&self, off: u64, src: &GuestSlice<'_>, fua: bool) -> io::Result<()> {
        check(self.len, off, src.len() as u64)?;
        self.pwrite_ptr(off, src.as_ptr(), src.len(), self.sync_write(fua))
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check(self.len, off, buf.len() as u64)?;
        self.pread_ptr(off, buf.as_mut_ptr(), buf.len())
    }

    fn write(&self, off: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        check(self.len, off, buf.len() as u64)?;
        self.pwrite_ptr(off, buf.as_ptr(), buf.len(), self.sync_write(fua))
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn write_zeroes(&self, off: u64, len: u64, deallocate: bool) -> io::Result<()> {
        check(self.len, off, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = if deallocate {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: fallocate on our own fd with a checked range.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off as i64, len as i64) };
        if r != 0 {
            // Not supported here (or a block device): write zeroes.
            let zeros = vec![0u8; (len as usize).min(1 << 20)];
            let mut pos = off;
            while pos < off + len {
                let n = ((off + len - pos) as usize).min(zeros.len());
                self.file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
        }
        if self.sync_write(false) {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn volatile_cache(&self) -> bool {
        self.mode == CacheMode::WriteBack
    }

    fn set_write_cache(&self, enabled: bool) {
        if self.mode == CacheMode::WriteBack {
            if !enabled {
                // Whatever the cache holds becomes durable now.
                let _ = self.file.sync_data();
            }
            self.wce.store(enabled, Ordering::Relaxed);
        }
    }

    fn write_cache_enabled(&self) -> bool {
        self.mode == CacheMode::WriteBack && self.wce.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!(
            "file {} ({} MiB, {})",
            self.path.display(),
            self.len >> 20,
            match self.mode {
                CacheMode::WriteBack => "write-back: durable at Flush",
                CacheMode::WriteThrough => "write-through: O_DSYNC",
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_sparse_and_deallocates() {
        let r = RamBackend::new(1 << 30).unwrap();
        assert_eq!(r.len(), 1 << 30);
        let mut b = [0xffu8; 16];
        r.read(123 << 20, &mut b).unwrap();
        assert_eq!(b, [0; 16]);
        assert!(r.resident_bytes() <= 64 << 10, "reading allocates nothing");
        r.write(4096 * 10 + 100, &[7; 9000], false).unwrap();
        let res = r.resident_bytes();
        assert!((8192..=4 * 4096).contains(&res), "{res}");
        r.write_zeroes(4096 * 10 + 200, 8000, true).unwrap();
        let mut c = vec![0u8; 9000];
        r.read(4096 * 10 + 100, &mut c).unwrap();
        assert!(c[..100].iter().all(|&x| x == 7));
        assert!(c[100..8100].iter().all(|&x| x == 0));
        assert!(c[8100..].iter().all(|&x| x == 7));
        assert!(r.read((1 << 30) - 4, &mut b).is_err(), "past the end");
        assert!(r.write(u64::MAX - 2, &[1; 8], false).is_err());
    }

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
        f.set_write_cache(false);
        assert!(!f.write_cache_enabled());
        f.write(0, &[1; 512], false).unwrap();
        drop(f);
        // Reopen: existing size kept; a second opener is refused meanwhile.
        let g = FileBackend::open(&p, None, CacheMode::WriteThrough).unwrap();
        assert!(FileBackend::open(&p, None, CacheMode::WriteBack).is_err());
        assert_eq!(g.len(), 1 << 20);
        assert!(!g.volatile_cache());
        let mut one = [0u8; 1];
        g.read(0, &mut one).unwrap();
        assert_eq!(one, [1]);
        assert!(FileBackend::open(&dir.join("missing"), None, CacheMode::WriteBack).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
