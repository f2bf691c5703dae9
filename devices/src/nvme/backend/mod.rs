//! Namespace storage: a sparse RAM disk ([`RamBackend`]) and a raw image
//! file or block device ([`FileBackend`] over an [`ImageFile`]).
//!
//! Both move data straight between guest memory and the medium: the RAM
//! backend copies between its mapping and the guest's, the file backend
//! hands guest memory to `pread`/`pwrite`.

mod file;
mod ram;

pub use file::{CacheMode, Dst, FileBackend, ImageFile, Medium, Src};
pub use ram::RamBackend;

use std::io;
use std::path::PathBuf;
use thiserror::Error;
use vfio_user_server::dma::GuestSlice;

/// Why a backend could not be opened or an access failed.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The access does not fit in the medium.
    #[error("access {off:#x}+{len:#x} beyond the end of the medium ({size:#x} bytes)")]
    OutOfRange {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
        /// Medium size.
        size: u64,
    },
    /// A read into guest memory the device may not write.
    #[error("the destination buffer is read-only")]
    ReadOnlyDestination,
    /// The operating system refused an access.
    #[error("{op} at {off:#x}: {source}")]
    Io {
        /// The operation (pread, pwrite, fdatasync, fallocate).
        op: &'static str,
        /// Offset.
        off: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A write stopped short (disk full, file truncated under us).
    #[error("short write at {off:#x}: {done} of {len} bytes")]
    ShortWrite {
        /// Offset.
        off: u64,
        /// Bytes written.
        done: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// An image could not be opened (or created, or sized).
    #[error("{}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another server holds the image.
    #[error("{}: in use by another server", path.display())]
    InUse {
        /// The image.
        path: PathBuf,
    },
    /// An existing image of size zero and no size to give it.
    #[error("{}: empty image (give a size)", path.display())]
    EmptyImage {
        /// The image.
        path: PathBuf,
    },
    /// The RAM disk could not be mapped.
    #[error("RAM disk of {size} bytes: {source}")]
    Ram {
        /// Requested size.
        size: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What a namespace stores its blocks in.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Capacity in bytes.
    fn len(&self) -> u64;
    /// Whether the capacity is zero (never, once opened).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `dst.len()` bytes at `off` into guest memory.
    fn read_guest(&self, off: u64, dst: &GuestSlice<'_>) -> Result<(), BackendError>;
    /// Copies guest memory `src` to `off`; with `fua` it is durable when
    /// this returns.
    fn write_guest(&self, off: u64, src: &GuestSlice<'_>, fua: bool) -> Result<(), BackendError>;
    /// Copies `buf.len()` bytes at `off` into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BackendError>;
    /// Writes `buf` at `off`; with `fua` it is durable when this returns.
    fn write(&self, off: u64, buf: &[u8], fua: bool) -> Result<(), BackendError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), BackendError>;
    /// Zeroes `len` bytes at `off`, releasing the space when `deallocate`.
    fn write_zeroes(&self, off: u64, len: u64, deallocate: bool) -> Result<(), BackendError>;
    /// Whether writes may sit in a volatile cache until flushed.
    fn volatile_cache(&self) -> bool;
    /// Enables or disables the volatile write cache (Set Features 06h);
    /// disabling it makes what it holds durable first.
    fn set_write_cache(&self, enabled: bool) -> Result<(), BackendError>;
    /// Whether the write cache is enabled.
    fn write_cache_enabled(&self) -> bool;
    /// Human-readable description for logs.
    fn describe(&self) -> String;
}

/// Checks that `n` bytes at `off` fit in `size` bytes.
pub(crate) fn check(size: u64, off: u64, n: u64) -> Result<(), BackendError> {
    match off.checked_add(n) {
        Some(e) if e <= size => Ok(()),
        _ => Err(BackendError::OutOfRange { off, len: n, size }),
    }
}
