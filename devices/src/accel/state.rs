//! The register state shared between the connection thread (MMIO) and the
//! workers, and dword helpers of the register file.

use super::regs::{ctrl, qstatus};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One queue's register state.
#[derive(Debug, Default)]
pub struct QueueRegs {
    /// Ring base.
    pub ring: AtomicU64,
    /// Ring entries.
    pub size: AtomicU32,
    /// CTRL (RW bits).
    pub ctrl: AtomicU32,
    /// PASID register.
    pub pasid: AtomicU32,
    /// MSI-X vector.
    pub vector: AtomicU32,
    /// Producer index.
    pub tail: AtomicU32,
    /// Consumer index.
    pub head: AtomicU32,
    /// HALTED / CR_FAULT and the error code.
    pub status: AtomicU32,
    /// ERR_INDEX.
    pub err_index: AtomicU32,
    /// ERR_ADDR.
    pub err_addr: AtomicU64,
    /// Descriptors completed.
    pub completed: AtomicU64,
    /// Completion records lost.
    pub cr_faults: AtomicU32,
    /// A reset was requested and not yet carried out.
    pub reset_pending: AtomicBool,
    /// Moves on every queue (or device) reset: work of an older
    /// generation is abandoned.
    pub generation: AtomicU64,
}

impl QueueRegs {
    /// Whether the queue should be processed.
    pub fn runnable(&self) -> bool {
        self.ctrl.load(Ordering::Acquire) & ctrl::ENABLE != 0
            && self.status.load(Ordering::Acquire) & qstatus::HALTED == 0
            && !self.reset_pending.load(Ordering::Acquire)
    }

    /// Stops the queue with `code` (a queue error) at ring index `index`.
    pub fn halt(&self, code: u32, index: u32, addr: u64) {
        self.err_index.store(index, Ordering::Release);
        self.err_addr.store(addr, Ordering::Release);
        self.status.store(
            (self.status.load(Ordering::Acquire) & qstatus::CR_FAULT)
                | qstatus::HALTED
                | (code << qstatus::ERR_SHIFT),
            Ordering::Release,
        );
    }

    /// Records a completion record that could not be written.
    pub fn cr_fault(&self, index: u32, addr: u64) {
        self.cr_faults.fetch_add(1, Ordering::AcqRel);
        self.err_index.store(index, Ordering::Release);
        self.err_addr.store(addr, Ordering::Release);
        self.status.fetch_or(qstatus::CR_FAULT, Ordering::AcqRel);
    }

    /// Back to the reset state (registers cleared, generation moved).
    pub fn clear(&self) {
        for r in [
            &self.size,
            &self.ctrl,
            &self.pasid,
            &self.vector,
            &self.tail,
            &self.head,
            &self.status,
            &self.err_index,
            &self.cr_faults,
        ] {
            r.store(0, Ordering::Release);
        }
        for r in [&self.ring, &self.err_addr, &self.completed] {
            r.store(0, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.reset_pending.store(false, Ordering::Release);
    }

    /// STATUS as software reads it.
    pub fn status_value(&self) -> u32 {
        let mut s = self.status.load(Ordering::Acquire);
        if self.ctrl.load(Ordering::Acquire) & ctrl::ENABLE != 0 {
            s |= qstatus::ENABLED;
        }
        if self.reset_pending.load(Ordering::Acquire) {
            s |= qstatus::RESETTING;
        }
        if self.head.load(Ordering::Acquire) != self.tail.load(Ordering::Acquire) {
            s |= qstatus::BUSY;
        }
        s
    }
}

/// Device-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Descriptors completed.
    pub descriptors: AtomicU64,
    /// Descriptors completed with an error status.
    pub errors: AtomicU64,
    /// Bytes processed.
    pub bytes: AtomicU64,
}

/// Reads `data.len()` bytes of a register file laid out as 32-bit words
/// (`word(offset)` for each aligned dword touched).
pub fn read_words(offset: u64, data: &mut [u8], word: impl Fn(u64) -> u32) {
    for (i, d) in data.iter_mut().enumerate() {
        let at = offset + i as u64;
        let w = word(at & !3);
        *d = (w >> (8 * (at & 3))) as u8;
    }
}

/// Merges a write of `data` at `offset` into the dword at `aligned`;
/// returns the new value and which of its bytes were written (bit i for
/// byte i).
pub fn merge_word(old: u32, aligned: u64, offset: u64, data: &[u8]) -> (u32, u8) {
    let mut b = old.to_le_bytes();
    let mut mask = 0u8;
    for (i, &v) in data.iter().enumerate() {
        let at = offset + i as u64;
        if at & !3 == aligned {
            b[(at & 3) as usize] = v;
            mask |= 1 << (at & 3);
        }
    }
    (u32::from_le_bytes(b), mask)
}
