//! Memory shared with the client: a memfd the server maps and hands out (as
//! the fd of an mmappable region) so the client can map it too.

use memmap2::MmapRaw;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// A memfd-backed buffer mapped into the server, shareable with the client.
#[derive(Debug)]
pub struct SharedMemory {
    file: File,
    map: MmapRaw,
}

impl SharedMemory {
    /// Creates `len` zeroed bytes named `name` (visible in /proc/PID/fd).
    pub fn new(name: &str, len: usize) -> io::Result<Self> {
        let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
        let fd = memfd_create(cname.as_c_str(), MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len(len as u64)?;
        let map = MmapRaw::map_raw(&file)?;
        Ok(SharedMemory { file, map })
    }

    /// The fd to send to the client.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Reads `buf.len()` bytes at `offset`; false when out of bounds.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        if offset
            .checked_add(buf.len())
            .map_or(true, |e| e > self.len())
        {
            return false;
        }
        // SAFETY: bounds checked; the mapping lives as long as self. The
        // client may write concurrently, as with any shared device memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    }

    /// Writes `buf` at `offset`; false when out of bounds.
    pub fn write(&self, offset: usize, buf: &[u8]) -> bool {
        if offset
            .checked_add(buf.len())
            .map_or(true, |e| e > self.len())
        {
            return false;
        }
        // SAFETY: bounds checked; the mapping is writable and lives as long as self.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                buf.len(),
            )
        };
        true
    }

    /// Reads a little-endian u32 with a single aligned load where possible
    /// (doorbell polling).
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        if offset % 4 != 0 || offset.checked_add(4).map_or(true, |e| e > self.len()) {
            return None;
        }
        // SAFETY: aligned and in bounds; volatile because the client writes it.
        Some(unsafe { std::ptr::read_volatile(self.map.as_ptr().add(offset) as *const u32) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_roundtrip() {
        let m = SharedMemory::new("t", 4096).unwrap();
        assert!(m.write(8, &7u32.to_le_bytes()));
        assert_eq!(m.read_u32(8), Some(7));
        assert!(!m.write(4094, &[0; 4]));
        assert_eq!(m.read_u32(4094), None);
    }
}
