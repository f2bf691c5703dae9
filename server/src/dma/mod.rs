//! The DMA map table and device access to client (guest) memory.
//!
//! [`GuestMemory`] is shared by the connection thread (which adds and removes
//! windows on DMA_MAP/DMA_UNMAP) and device worker threads (which read and
//! write through it). Windows with an fd are mmapped and accessed directly;
//! windows without one are reached by DMA_READ/DMA_WRITE messages, which only
//! worker threads may send. An unmap waits for copies in flight on the window
//! and no copy starts on a withdrawn one.
//!
//! A [`DmaInterposer`] (a model of the PCIe link with IDE encryption) can be
//! installed once: from then on every device read and write passes through
//! it, and [`GuestMemory::with_slice`] hands out views of a bounce buffer
//! while it is active. Without one, the cost is one atomic load per access.

mod ops;
mod pasid;
mod region;
mod remote;

pub use ops::{copy, fill, read_stream, Bounce, OpFault, Operand};
pub use pasid::{DmaFault, DmaSpace, PasidError, PasidMemory, PasidSpace, PasidStats, Piece};
pub use region::GuestSlice;

pub(crate) use remote::Requester;

use crate::protocol::{DmaMapRequest, DmaProt};
use region::{Backing, DmaRegion};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use thiserror::Error;

/// Page size the server requires DMA windows to be aligned to.
pub const DMA_PAGE_SIZE: u64 = 4096;

/// Errors of DMA map management and guest-memory access.
#[derive(Debug, Error)]
pub enum DmaError {
    /// The window overlaps an existing one.
    #[error("DMA window {iova:#x}+{len:#x} overlaps an existing mapping")]
    Overlap {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Address, size or offset not page aligned.
    #[error("DMA window {iova:#x}+{len:#x} (fd offset {offset:#x}) is not 4 KiB aligned")]
    Unaligned {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
        /// fd offset.
        offset: u64,
    },
    /// More windows than max_dma_maps.
    #[error("too many DMA windows (limit {0})")]
    TooManyMaps(u32),
    /// The unmap range is malformed (overflows).
    #[error("DMA unmap range {iova:#x}+{len:#x} is invalid")]
    BadUnmapRange {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// The unmap range would split a window.
    #[error("DMA unmap {iova:#x}+{len:#x} would split the window {window:#x}+{window_len:#x}")]
    WouldSplit {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
        /// The window's start.
        window: u64,
        /// The window's length.
        window_len: u64,
    },
    /// The fd range is past the end of the file.
    #[error("fd range {offset:#x}+{len:#x} is past the end of the {file_len}-byte file")]
    BeyondFile {
        /// fd offset.
        offset: u64,
        /// Length.
        len: u64,
        /// File size.
        file_len: u64,
    },
    /// The fd cannot be mapped.
    #[error("the fd cannot be mapped")]
    NotMappable,
    /// mmap failed.
    #[error("mmap: {0}")]
    Map(std::io::Error),
    /// An access falls outside every window (or spans a gap).
    #[error("DMA access {iova:#x}+{len} is outside mapped client memory")]
    OutOfBounds {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Write to a read-only window (or read from a write-only one).
    #[error("DMA access violates the window's permissions")]
    ReadOnly,
    /// The window has no fd, so no direct slice exists.
    #[error("DMA window at {0:#x} has no fd; use read/write (messages)")]
    NotDirect(u64),
    /// DMA messages requested on the connection thread.
    #[error("DMA by message from the connection thread would deadlock the client")]
    WouldDeadlock,
    /// No client is connected.
    #[error("no client connected")]
    Disconnected,
    /// The client did not answer in time.
    #[error("client did not answer a DMA message in time")]
    Timeout,
    /// The client answered with an error.
    #[error("client failed the DMA message: errno {0}")]
    Client(i32),
    /// The client's answer was malformed.
    #[error("malformed DMA reply: {0}")]
    BadReply(String),
    /// Sending failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The interposed link refused or lost the access (e.g. an IDE stream
    /// that is enabled but not secure, or a TLP that failed its integrity
    /// check).
    #[error("link: {0}")]
    Link(String),
}

impl DmaError {
    /// The errno a DMA_MAP/UNMAP failure is reported with.
    pub fn errno(&self) -> i32 {
        match self {
            DmaError::Overlap { .. } => libc::EEXIST,
            DmaError::TooManyMaps(_) => libc::ENOSPC,
            DmaError::Map(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            _ => libc::EINVAL,
        }
    }
}

/// Direction of a device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads client memory.
    Read,
    /// The device writes client memory.
    Write,
}

/// Something every device access to client memory passes through once it
/// is installed with [`GuestMemory::set_interposer`]: a model of the link
/// between the device and the client (root port, PCIe IDE). It moves the
/// bytes itself, through the [`DirectMemory`] view it is handed.
pub trait DmaInterposer: Send + Sync {
    /// Whether accesses are currently transformed. While false,
    /// [`GuestMemory::with_slice`] gives direct views of client memory
    /// (reads and writes still call [`DmaInterposer::read`] / `write`).
    fn active(&self) -> bool;
    /// The device reads `buf.len()` bytes at `iova`.
    fn read(&self, mem: DirectMemory<'_>, iova: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// The device writes `data` at `iova`.
    fn write(&self, mem: DirectMemory<'_>, iova: u64, data: &[u8]) -> Result<(), DmaError>;
}

/// Client memory without the interposer: what the far end of the link
/// reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct DirectMemory<'a>(&'a GuestMemory);

impl DirectMemory<'_> {
    /// Copies client memory at `iova` into `buf`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.0.read_direct(iova, buf)
    }
    /// Copies `data` into client memory at `iova`.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        self.0.write_direct(iova, data)
    }
}

/// One DMA window as [`GuestMemory::windows`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaWindow {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// The device may read it.
    pub read: bool,
    /// The device may write it.
    pub write: bool,
    /// Backed by the client's fd (mapped here); false: served by
    /// DMA_READ/DMA_WRITE messages.
    pub fd_backed: bool,
}

/// Client memory as the device sees it.
pub struct GuestMemory {
    table: RwLock<BTreeMap<u64, Arc<DmaRegion>>>,
    requester: Mutex<Option<Arc<Requester>>>,
    max_maps: u32,
    interposer: OnceLock<Arc<dyn DmaInterposer>>,
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("windows", &self.map_count())
            .field("max_maps", &self.max_maps)
            .field("interposer", &self.interposer.get().is_some())
            .finish()
    }
}

impl GuestMemory {
    /// An empty table accepting up to `max_maps` windows.
    pub fn new(max_maps: u32) -> Self {
        GuestMemory {
            table: RwLock::new(BTreeMap::new()),
            requester: Mutex::new(None),
            max_maps,
            interposer: OnceLock::new(),
        }
    }

    /// Installs the interposer every later access passes through (once;
    /// a second call returns the rejected one).
    pub fn set_interposer(
        &self,
        interposer: Arc<dyn DmaInterposer>,
    ) -> Result<(), Arc<dyn DmaInterposer>> {
        self.interposer.set(interposer)
    }

    /// The installed interposer, if any.
    pub fn interposer(&self) -> Option<Arc<dyn DmaInterposer>> {
        self.interposer.get().cloned()
    }

    /// This memory without the interposer.
    pub fn direct(&self) -> DirectMemory<'_> {
        DirectMemory(self)
    }

    pub(crate) fn set_requester(&self, r: Option<Arc<Requester>>) {
        *self.requester.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    pub(crate) fn requester(&self) -> Option<Arc<Requester>> {
        self.requester
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds a window (DMA_MAP).
    pub fn map(&self, req: &DmaMapRequest, fd: Option<OwnedFd>) -> Result<(), DmaError> {
        let offset = if fd.is_some() { req.offset } else { 0 };
        if req.address % DMA_PAGE_SIZE != 0
            || req.size % DMA_PAGE_SIZE != 0
            || offset % DMA_PAGE_SIZE != 0
        {
            return Err(DmaError::Unaligned {
                iova: req.address,
                len: req.size,
                offset: req.offset,
            });
        }
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            check_free(&t, req.address, req.size, self.max_maps)?;
        }
        let region = DmaRegion::new(req.address, req.size, req.prot, fd, offset)?;
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        check_free(&t, req.address, req.size, self.max_maps)?;
        t.insert(req.address, Arc::new(region));
        Ok(())
    }

    /// Removes the windows inside `[iova, iova+len)` (DMA_UNMAP), waiting for
    /// copies in flight on them; returns how many were removed.
    ///
    /// The spec asks clients to unmap exactly what they mapped, but QEMU
    /// 11.1 with a vIOMMU withdraws whole address-space ranges in power-of-two
    /// chunks when the guest enables translation, as Linux VFIO type1 allows.
    /// So, like type1: every window wholly inside the range goes, a range
    /// that would split a window fails (nothing is removed), and a range with
    /// no window in it is a successful no-op.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<usize, DmaError> {
        // The range may end exactly at 2^64 (QEMU unmaps "everything above X").
        let end = u128::from(iova) + u128::from(len);
        if len == 0 || end > 1u128 << 64 {
            return Err(DmaError::BadUnmapRange { iova, len });
        }
        let last = (end - 1) as u64;
        let removed: Vec<Arc<DmaRegion>> = {
            let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
            let mut keys = Vec::new();
            for (&k, r) in t.range(..=last).rev() {
                if r.end() <= iova {
                    break;
                }
                if r.iova < iova || u128::from(r.end()) > end {
                    return Err(DmaError::WouldSplit {
                        iova,
                        len,
                        window: r.iova,
                        window_len: r.len,
                    });
                }
                keys.push(k);
            }
            keys.iter().filter_map(|k| t.remove(k)).collect()
        };
        for r in &removed {
            retire(r);
        }
        Ok(removed.len())
    }

    /// Removes every window (unmap-all, and on disconnect).
    pub fn unmap_all(&self) {
        let all = std::mem::take(&mut *self.table.write().unwrap_or_else(|p| p.into_inner()));
        for r in all.values() {
            retire(r);
        }
    }

    /// The windows, in IOVA order (what a control plane shows; no data).
    pub fn windows(&self) -> Vec<DmaWindow> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| DmaWindow {
                iova: r.iova,
                size: r.len,
                read: r.prot.read,
                write: r.prot.write,
                fd_backed: matches!(r.backing, Backing::Mapped(_)),
            })
            .collect()
    }

    /// Number of windows.
    pub fn map_count(&self) -> usize {
        self.table.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn find(&self, iova: u64) -> Option<Arc<DmaRegion>> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.range(..=iova)
            .next_back()
            .filter(|(_, r)| iova < r.end())
            .map(|(_, r)| Arc::clone(r))
    }

    /// Runs `f` on a direct view of `len` bytes at `iova`. The range must lie
    /// in one fd-backed window that allows `access`. The window cannot be
    /// unmapped while `f` runs (an unmap waits for it).
    ///
    /// While an active interposer is installed, `f` gets a view of a bounce
    /// buffer instead: filled through the interposer before `f` runs
    /// ([`Access::Read`]), or written through it after ([`Access::Write`];
    /// the whole range is written, so `f` must fill all of it).
    pub fn with_slice<R>(
        &self,
        iova: u64,
        len: usize,
        access: Access,
        f: impl FnOnce(GuestSlice<'_>) -> R,
    ) -> Result<R, DmaError> {
        let oob = DmaError::OutOfBounds {
            iova,
            len: len as u64,
        };
        let region = self.find(iova).ok_or(oob)?;
        if let Some(link) = self.interposer.get().filter(|l| l.active()) {
            // Same preconditions as the direct view, then bounce.
            direct(&region, iova, len, access, |_| ())?;
            drop(region);
            let mut bounce = vec![0u8; len];
            return match access {
                Access::Read => {
                    link.read(self.direct(), iova, &mut bounce)?;
                    Ok(f(GuestSlice::local(&mut bounce)))
                }
                Access::Write => {
                    let r = f(GuestSlice::local(&mut bounce));
                    link.write(self.direct(), iova, &bounce)?;
                    Ok(r)
                }
            };
        }
        direct(&region, iova, len, access, f)
    }

    /// Runs `f` on a direct view of up to `max_len` bytes at `iova`: as many
    /// as the fd-backed window holding `iova` has from there (at least one).
    /// For device engines that walk a range window by window.
    pub fn with_slice_upto<R>(
        &self,
        iova: u64,
        max_len: usize,
        access: Access,
        f: impl FnOnce(GuestSlice<'_>) -> R,
    ) -> Result<R, DmaError> {
        let oob = DmaError::OutOfBounds {
            iova,
            len: max_len as u64,
        };
        let region = self.find(iova).ok_or(oob)?;
        let avail = usize::try_from(region.end() - iova).unwrap_or(usize::MAX);
        let n = max_len.min(avail);
        if self.interposer.get().is_some_and(|l| l.active()) {
            // Through the link's bounce buffer, like every other access.
            drop(region);
            return self.with_slice(iova, n, access, f);
        }
        direct(&region, iova, n, access, f)
    }

    /// Splits `[iova, iova+len)` into pieces that each lie in one window
    /// allowing `access`, and calls `f(window, address, offset, length)` for
    /// each in order.
    fn for_each_window(
        &self,
        iova: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(&DmaRegion, u64, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let oob = || DmaError::OutOfBounds {
            iova,
            len: len as u64,
        };
        let mut done = 0usize;
        while done < len {
            let addr = iova.checked_add(done as u64).ok_or_else(oob)?;
            let region = self.find(addr).ok_or_else(oob)?;
            check_prot(region.prot, access)?;
            let n = ((region.end() - addr) as usize).min(len - done);
            f(&region, addr, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Copies client memory at `iova` into `buf`, across adjacent windows and
    /// through DMA_READ messages where a window has no fd (through the
    /// interposer when one is installed).
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self.interposer.get() {
            Some(link) => link.read(self.direct(), iova, buf),
            None => self.read_direct(iova, buf),
        }
    }

    /// Copies `buf` into client memory at `iova` (see [`GuestMemory::read`]).
    pub fn write(&self, iova: u64, buf: &[u8]) -> Result<(), DmaError> {
        match self.interposer.get() {
            Some(link) => link.write(self.direct(), iova, buf),
            None => self.write_direct(iova, buf),
        }
    }

    fn read_direct(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.for_each_window(iova, buf.len(), Access::Read, |region, addr, off, n| {
            let part = &mut buf[off..off + n];
            match region.backing {
                Backing::Mapped(_) => {
                    direct(region, addr, n, Access::Read, |s| s.copy_to(0, part))?
                }
                Backing::Remote => self.remote()?.read(addr, part),
            }
        })
    }

    fn write_direct(&self, iova: u64, buf: &[u8]) -> Result<(), DmaError> {
        self.for_each_window(iova, buf.len(), Access::Write, |region, addr, off, n| {
            let part = &buf[off..off + n];
            match region.backing {
                Backing::Mapped(_) => {
                    direct(region, addr, n, Access::Write, |s| s.copy_from(0, part))?
                }
                Backing::Remote => self.remote()?.write(addr, part),
            }
        })
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, iova: u64) -> Result<u32, DmaError> {
        let mut b = [0u8; 4];
        self.read(iova, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, iova: u64) -> Result<u64, DmaError> {
        let mut b = [0u8; 8];
        self.read(iova, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u32.
    pub fn write_u32(&self, iova: u64, v: u32) -> Result<(), DmaError> {
        self.write(iova, &v.to_le_bytes())
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, iova: u64, v: u64) -> Result<(), DmaError> {
        self.write(iova, &v.to_le_bytes())
    }

    fn remote(&self) -> Result<Arc<Requester>, DmaError> {
        self.requester().ok_or(DmaError::Disconnected)
    }
}

/// Runs `f` on a view of `len` bytes at `iova` inside the fd-backed `region`
/// (one lookup per access: callers pass the window they found).
fn direct<R>(
    region: &DmaRegion,
    iova: u64,
    len: usize,
    access: Access,
    f: impl FnOnce(GuestSlice<'_>) -> R,
) -> Result<R, DmaError> {
    let oob = || DmaError::OutOfBounds {
        iova,
        len: len as u64,
    };
    let end = iova.checked_add(len as u64).ok_or_else(oob)?;
    if iova < region.iova || end > region.end() {
        return Err(oob());
    }
    check_prot(region.prot, access)?;
    let live = region.live.enter().ok_or_else(oob)?;
    let Backing::Mapped(map) = &region.backing else {
        return Err(DmaError::NotDirect(region.iova));
    };
    let off = (iova - region.iova) as usize;
    // SAFETY: region.iova <= iova and iova + len <= region.end(), so
    // off + len <= region.len == map.len(); the mapping stays alive while we
    // hold `live` (an unmap waits for every guard before the Arc, and so the
    // mapping, can go).
    let slice = unsafe { GuestSlice::new(map.as_mut_ptr().add(off), len, region.prot.write) };
    let r = f(slice);
    drop(live);
    Ok(r)
}

fn check_prot(prot: DmaProt, access: Access) -> Result<(), DmaError> {
    let ok = match access {
        Access::Read => prot.read,
        Access::Write => prot.write,
    };
    if ok {
        Ok(())
    } else {
        Err(DmaError::ReadOnly)
    }
}

fn check_free(
    t: &BTreeMap<u64, Arc<DmaRegion>>,
    iova: u64,
    len: u64,
    max: u32,
) -> Result<(), DmaError> {
    if t.len() >= max as usize {
        return Err(DmaError::TooManyMaps(max));
    }
    let before = t.range(..iova.saturating_add(len)).next_back();
    if before.is_some_and(|(_, r)| r.overlaps(iova, len)) {
        return Err(DmaError::Overlap { iova, len });
    }
    Ok(())
}

/// Marks a removed window dead, waiting for copies in flight.
fn retire(region: &DmaRegion) {
    region.live.retire();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A memfd of `len` bytes (test "client memory").
    pub(crate) fn memfd(len: u64) -> OwnedFd {
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(len).unwrap();
        f.into()
    }

    fn req(address: u64, size: u64) -> DmaMapRequest {
        DmaMapRequest::read_write(address, size)
    }

    #[test]
    fn map_access_unmap() {
        let mem = GuestMemory::new(8);
        mem.map(&req(0x10000, 0x2000), Some(memfd(0x2000))).unwrap();
        mem.write(0x10ffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        mem.read(0x10ffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(mem.read(0x11ffe, &mut b).is_err(), "crosses end of window");
        assert!(matches!(
            mem.map(&req(0x11000, 0x2000), Some(memfd(0x2000))),
            Err(DmaError::Overlap { .. })
        ));
        assert!(matches!(
            mem.map(&req(0x100, 0x1000), None),
            Err(DmaError::Unaligned { .. })
        ));
        assert!(matches!(
            mem.unmap(0x10000, 0x1000),
            Err(DmaError::WouldSplit { .. })
        ));
        assert_eq!(
            mem.unmap(0x40000, 0x1000).unwrap(),
            0,
            "empty range is a no-op"
        );
        assert_eq!(mem.unmap(0x10000, 0x2000).unwrap(), 1);
        assert!(mem.read(0x10ffe, &mut b).is_err());
    }

    #[test]
    fn windows_list_iova_size_prot_and_backing() {
        let mem = GuestMemory::new(8);
        mem.map(&req(0x20000, 0x3000), Some(memfd(0x3000))).unwrap();
        let mut ro = req(0x1000, 0x1000);
        ro.prot.write = false;
        mem.map(&ro, None).unwrap();
        assert_eq!(
            mem.windows(),
            [
                DmaWindow {
                    iova: 0x1000,
                    size: 0x1000,
                    read: true,
                    write: false,
                    fd_backed: false
                },
                DmaWindow {
                    iova: 0x20000,
                    size: 0x3000,
                    read: true,
                    write: true,
                    fd_backed: true
                },
            ]
        );
        mem.unmap_all();
        assert!(mem.windows().is_empty());
    }

    #[test]
    fn adjacent_windows_and_file_bounds() {
        let mem = GuestMemory::new(8);
        mem.map(&req(0, 0x1000), Some(memfd(0x1000))).unwrap();
        mem.map(&req(0x1000, 0x1000), Some(memfd(0x1000))).unwrap();
        mem.write(0xffc, &[9; 8]).unwrap();
        assert_eq!(mem.read_u64(0xffc).unwrap(), 0x0909090909090909);
        // One range covering both windows removes both (QEMU vIOMMU style).
        assert_eq!(mem.unmap(0, 0x10000).unwrap(), 2);
        assert_eq!(mem.map_count(), 0);
        // A range ending exactly at 2^64, as QEMU sends at poweroff.
        mem.map(&req(0xfef0_0000, 0x1000), Some(memfd(0x1000)))
            .unwrap();
        assert_eq!(
            mem.unmap(0xfef0_0000, 0u64.wrapping_sub(0xfef0_0000))
                .unwrap(),
            1
        );
        assert!(mem.unmap(2, u64::MAX).is_err(), "past 2^64");
        assert!(matches!(
            mem.map(&req(0x4000, 0x2000), Some(memfd(0x1000))),
            Err(DmaError::BeyondFile { .. })
        ));
    }

    #[test]
    fn read_only_and_remote_without_client() {
        let mem = GuestMemory::new(8);
        let mut r = req(0, 0x1000);
        r.prot.write = false;
        let fd = memfd(0x1000);
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        f.write_all(b"abcd").unwrap();
        mem.map(&r, Some(fd)).unwrap();
        assert!(matches!(mem.write(0, b"x"), Err(DmaError::ReadOnly)));
        assert_eq!(mem.read_u32(0).unwrap(), u32::from_le_bytes(*b"abcd"));
        mem.map(&req(0x2000, 0x1000), None).unwrap();
        assert!(matches!(mem.read_u32(0x2000), Err(DmaError::Disconnected)));
        assert!(matches!(
            mem.with_slice(0x2000, 4, Access::Read, |_| ()),
            Err(DmaError::NotDirect(_))
        ));
    }

    #[test]
    fn nested_access_does_not_deadlock_with_unmap() {
        let mem = Arc::new(GuestMemory::new(8));
        mem.map(&req(0, 0x2000), Some(memfd(0x2000))).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let unmapper = Arc::clone(&mem);
        mem.with_slice(0, 0x1000, Access::Read, |_| {
            std::thread::spawn(move || {
                unmapper.unmap(0, 0x2000).unwrap();
                tx.send(()).unwrap();
            });
            // The unmap cannot finish while this copy is inside the window.
            assert!(rx
                .recv_timeout(std::time::Duration::from_millis(50))
                .is_err());
            // A second access to the same window (a copy within one
            // window) neither blocks nor deadlocks: it is refused once the
            // unmap has begun, or allowed if it has not.
            let _either = mem.with_slice(0x1000, 0x1000, Access::Write, |_| ());
        })
        .unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("unmap finishes once the copy leaves");
        assert_eq!(mem.map_count(), 0);
    }

    #[test]
    fn map_limit() {
        let mem = GuestMemory::new(1);
        mem.map(&req(0, 0x1000), None).unwrap();
        assert!(matches!(
            mem.map(&req(0x1000, 0x1000), None),
            Err(DmaError::TooManyMaps(1))
        ));
        mem.unmap_all();
        assert_eq!(mem.map_count(), 0);
    }
}
