//! The sparse RAM disk.

use super::{check, Backend, BackendError};
use std::ptr::NonNull;
use vfio_user_server::dma::GuestSlice;

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
    pub fn new(len: u64) -> Result<RamBackend, BackendError> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        let fail = |source| BackendError::Ram { size: len, source };
        let size = usize::try_from(len)
            .ok()
            .and_then(std::num::NonZeroUsize::new)
            .ok_or_else(|| fail(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
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
        .map_err(|e| fail(std::io::Error::from(e)))?;
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

    fn read_guest(&self, off: u64, dst: &GuestSlice<'_>) -> Result<(), BackendError> {
        check(self.len, off, dst.len() as u64)?;
        if !dst.is_writable() {
            return Err(BackendError::ReadOnlyDestination);
        }
        // SAFETY: source range checked against our mapping; destination is
        // a live, writable guest view of dst.len() bytes; the two mappings
        // are distinct.
        unsafe { std::ptr::copy_nonoverlapping(self.at(off), dst.as_ptr(), dst.len()) };
        Ok(())
    }

    fn write_guest(&self, off: u64, src: &GuestSlice<'_>, _fua: bool) -> Result<(), BackendError> {
        check(self.len, off, src.len() as u64)?;
        // SAFETY: destination range checked against our writable mapping;
        // the source is a live guest view of src.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.at(off), src.len()) };
        Ok(())
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        check(self.len, off, buf.len() as u64)?;
        // SAFETY: range checked; `buf` is our own memory.
        unsafe { std::ptr::copy_nonoverlapping(self.at(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, off: u64, buf: &[u8], _fua: bool) -> Result<(), BackendError> {
        check(self.len, off, buf.len() as u64)?;
        // SAFETY: range checked; `buf` is our own memory.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.at(off), buf.len()) };
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn write_zeroes(&self, off: u64, len: u64, _deallocate: bool) -> Result<(), BackendError> {
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

    fn set_write_cache(&self, _enabled: bool) -> Result<(), BackendError> {
        Ok(())
    }

    fn write_cache_enabled(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("RAM ({} MiB, sparse)", self.len >> 20)
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
}
