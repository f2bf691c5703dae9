//! A counting global allocator: the "no unbounded allocation" oracle.
//!
//! The fuzz binary and the bounded test install [`CountingAlloc`] as their
//! global allocator; the engine then checks after every input that no single
//! allocation exceeded a cap and that the live heap did not grow past one.
//! It wraps the system allocator and adds two relaxed atomics per call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

fn note(size: usize) {
    LIVE.fetch_add(size, Relaxed);
    if size > LARGEST.load(Relaxed) {
        LARGEST.fetch_max(size, Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; the
// counters are plain atomics and never affect what is returned.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Relaxed);
        note(new_size);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Bytes currently allocated (0 when [`CountingAlloc`] is not installed).
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// The largest single allocation since the last call, and resets it.
pub fn take_largest() -> usize {
    LARGEST.swap(0, Relaxed)
}

/// Whether [`CountingAlloc`] is the global allocator of this process.
pub fn installed() -> bool {
    let before = live();
    let b = std::hint::black_box(Box::new([0u8; 64]));
    let counted = live() >= before + 64;
    drop(b);
    counted
}

/// Resident set size of this process in KiB (`/proc/self/statm`).
pub fn rss_kib() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page / 1024
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
