//! One DMA window: an mmap of the client's fd, or a window reached only by
//! DMA_READ/DMA_WRITE messages.

use super::DmaError;
use crate::protocol::DmaProt;
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// How the server reaches a window's memory.
#[derive(Debug)]
pub(crate) enum Backing {
    /// The client's fd, mapped into our address space.
    Mapped(MmapRaw),
    /// No fd: DMA_READ/DMA_WRITE messages to the client.
    Remote,
}

/// A DMA window of client memory.
#[derive(Debug)]
pub(crate) struct DmaRegion {
    pub iova: u64,
    pub len: u64,
    pub prot: DmaProt,
    pub backing: Backing,
    /// Mapped or withdrawn, and the copies in flight. Accessors hold a
    /// [`LiveGuard`] for the duration of a copy; unmap retires the window, so
    /// it waits for in-flight copies and no copy starts on a withdrawn window.
    pub live: Liveness,
}

/// Whether a window is still mapped, and how many accessors are inside it.
///
/// Unlike a read-write lock, entering never blocks: one thread may enter the
/// same window twice (a copy whose source and destination share a window)
/// while an unmap waits, without deadlocking against it. Entering and leaving
/// are one atomic operation each (no lock on the data path); only an unmap,
/// and the last accessor leaving a retired window, take the mutex.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// Accessors inside, with [`DEAD`] set once the window is retired.
    state: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

/// Set in [`Liveness::state`] when the window has been withdrawn.
const DEAD: usize = 1 << (usize::BITS - 1);

impl Liveness {
    pub fn new() -> Self {
        Liveness {
            state: AtomicUsize::new(0),
            lock: Mutex::new(()),
            idle: Condvar::new(),
        }
    }

    /// Enters the window, or `None` when it has been withdrawn.
    pub fn enter(&self) -> Option<LiveGuard<'_>> {
        let prev = self.state.fetch_add(1, Ordering::Acquire);
        let guard = LiveGuard(self);
        if prev & DEAD != 0 {
            return None; // dropping the guard leaves again
        }
        Some(guard)
    }

    fn leave(&self) {
        let prev = self.state.fetch_sub(1, Ordering::Release);
        if prev == DEAD | 1 {
            // Last accessor out of a retired window: wake the unmap.
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.idle.notify_all();
        }
    }

    /// Marks the window withdrawn and waits until every accessor has left.
    pub fn retire(&self) {
        self.state.fetch_or(DEAD, Ordering::AcqRel);
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.state.load(Ordering::Acquire) & !DEAD != 0 {
            g = self
                .idle
                .wait_timeout(g, std::time::Duration::from_millis(10))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// An accessor inside a live window (see [`Liveness::enter`]).
#[derive(Debug)]
pub(crate) struct LiveGuard<'a>(&'a Liveness);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl DmaRegion {
    /// Maps `len` bytes of `fd` at `offset`, or creates a message-only window.
    pub fn new(
        iova: u64,
        len: u64,
        prot: DmaProt,
        fd: Option<OwnedFd>,
        offset: u64,
    ) -> Result<DmaRegion, DmaError> {
        let backing = match fd {
            None => Backing::Remote,
            Some(fd) => {
                let file = File::from(fd);
                let meta = file.metadata().map_err(DmaError::Map)?;
                let ft = meta.file_type();
                // Mapping past the end of a file would SIGBUS on access.
                if ft.is_file() && offset.checked_add(len).map_or(true, |e| e > meta.len()) {
                    return Err(DmaError::BeyondFile {
                        offset,
                        len,
                        file_len: meta.len(),
                    });
                }
                if ft.is_dir() || ft.is_socket() || ft.is_fifo() {
                    return Err(DmaError::NotMappable);
                }
                let len_usize = usize::try_from(len).map_err(|_| DmaError::NotMappable)?;
                let mut opts = MmapOptions::new();
                opts.offset(offset).len(len_usize);
                let map = if prot.write {
                    opts.map_raw(&file)
                } else {
                    opts.map_raw_read_only(&file)
                }
                .map_err(DmaError::Map)?;
                Backing::Mapped(map)
            }
        };
        Ok(DmaRegion {
            iova,
            len,
            prot,
            backing,
            live: Liveness::new(),
        })
    }

    /// Exclusive end address.
    pub fn end(&self) -> u64 {
        self.iova + self.len
    }

    /// Whether `[iova, iova+len)` overlaps this window.
    pub fn overlaps(&self, iova: u64, len: u64) -> bool {
        iova < self.end() && self.iova < iova.saturating_add(len)
    }
}

/// A borrowed, bounds-checked view of mapped client memory.
///
/// The client (and the guest behind it) may change this memory at any time,
/// so the view hands out copies and raw pointers, never Rust references.
#[derive(Debug, Clone, Copy)]
pub struct GuestSlice<'a> {
    ptr: *mut u8,
    len: usize,
    writable: bool,
    _life: PhantomData<&'a ()>,
}

// SAFETY: a GuestSlice is a pointer into a shared mapping that outlives it
// (guarded by the region's read lock); copies through it are plain memory
// accesses that are valid from any thread.
unsafe impl Send for GuestSlice<'_> {}
// SAFETY: as above; concurrent copies race only with the guest, as real DMA does.
unsafe impl Sync for GuestSlice<'_> {}

impl<'a> GuestSlice<'a> {
    /// # Safety
    /// `ptr..ptr+len` must stay mapped for `'a`.
    pub(crate) unsafe fn new(ptr: *mut u8, len: usize, writable: bool) -> Self {
        GuestSlice {
            ptr,
            len,
            writable,
            _life: PhantomData,
        }
    }

    /// A view of the server's own buffer (a bounce buffer standing in for
    /// client memory).
    pub(crate) fn local(buf: &'a mut [u8]) -> Self {
        // SAFETY: `buf` is valid and exclusively borrowed for 'a.
        unsafe { GuestSlice::new(buf.as_mut_ptr(), buf.len(), true) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length view.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the device may write through this view.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Copies `buf.len()` bytes at `offset` out of client memory.
    pub fn copy_to(&self, offset: usize, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check(offset, buf.len())?;
        // SAFETY: bounds checked above; the mapping is live for 'a; `buf` is
        // our own memory and cannot overlap the client's shared mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into client memory at `offset`.
    pub fn copy_from(&self, offset: usize, buf: &[u8]) -> Result<(), DmaError> {
        if !self.writable {
            return Err(DmaError::ReadOnly);
        }
        self.check(offset, buf.len())?;
        // SAFETY: bounds and write permission checked above; mapping live for 'a.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.ptr.add(offset), buf.len()) };
        Ok(())
    }

    /// Copies between two views (e.g. a device copy engine).
    pub fn copy_to_slice(&self, dst: &GuestSlice<'_>) -> Result<(), DmaError> {
        if !dst.writable {
            return Err(DmaError::ReadOnly);
        }
        if dst.len != self.len {
            return Err(DmaError::OutOfBounds {
                iova: 0,
                len: dst.len as u64,
            });
        }
        // SAFETY: both views are live and of equal length; `copy` tolerates
        // overlap (both may point into the same guest RAM).
        unsafe { std::ptr::copy(self.ptr, dst.ptr, self.len) };
        Ok(())
    }

    /// The sub-view `offset..offset + len`, or `None` if it does not fit.
    pub fn sub(&self, offset: usize, len: usize) -> Option<GuestSlice<'a>> {
        self.check(offset, len).ok()?;
        // SAFETY: offset + len <= self.len (checked), so the sub-view lies in
        // the same live mapping for 'a.
        Some(unsafe { GuestSlice::new(self.ptr.add(offset), len, self.writable) })
    }

    /// Fills the view with copies of `pattern` (repeated from offset 0; the
    /// last copy may be cut short).
    pub fn fill(&self, pattern: &[u8]) -> Result<(), DmaError> {
        if !self.writable {
            return Err(DmaError::ReadOnly);
        }
        if pattern.is_empty() {
            return Ok(());
        }
        let mut off = 0;
        while off < self.len {
            let n = pattern.len().min(self.len - off);
            // SAFETY: off + n <= len, inside the live writable mapping;
            // `pattern` is our own memory.
            unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), self.ptr.add(off), n) };
            off += n;
        }
        Ok(())
    }

    /// The raw start pointer, for handing to the OS (e.g. `pread` straight into
    /// guest memory). Valid for `len()` bytes while this view lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), DmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(DmaError::OutOfBounds {
                iova: offset as u64,
                len: len as u64,
            }),
        }
    }
}
