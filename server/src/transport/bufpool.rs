//! A small per-thread pool of byte buffers, so the request loop does not
//! allocate a payload and a reply buffer for every message.

use std::cell::RefCell;

/// Buffers larger than this are not kept.
const KEEP_MAX: usize = 64 * 1024;
/// At most this many buffers are kept per thread.
const KEEP_COUNT: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zero-filled buffer of `len` bytes, reusing a pooled one if possible.
pub fn take(len: usize) -> Vec<u8> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.clear();
    v.resize(len, 0);
    v
}

/// An empty buffer with room for `cap` bytes, reusing a pooled one if possible.
pub fn with_capacity(cap: usize) -> Vec<u8> {
    let mut v = take(0);
    v.reserve(cap);
    v
}

/// Returns a buffer to the pool.
pub fn give(v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > KEEP_MAX {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP_COUNT {
            p.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_zeroes() {
        let mut a = take(16);
        a.fill(7);
        let ptr = a.as_ptr();
        give(a);
        let b = take(8);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b, vec![0; 8]);
        give(vec![0; KEEP_MAX + 1]);
    }
}
