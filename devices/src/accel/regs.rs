//! The BAR0 register map (docs/ACCEL.md). Dependency-free: the guest tool
//! includes this file as its own module to drive the device.

/// BAR0 size (32-bit non-prefetchable memory).
pub const BAR0_SIZE: u64 = 0x4000;
/// Value of the ID register.
pub const ID_VALUE: u32 = 0x7d0c_acc1;
/// Value of the VERSION register (1.0).
pub const VERSION_VALUE: u32 = 0x0001_0000;
/// Most queues a device has.
pub const MAX_QUEUES: usize = 8;
/// Most entries of a ring (log2 15).
pub const MAX_RING_ENTRIES: u32 = 1 << 15;
/// Required ring alignment.
pub const RING_ALIGN: u64 = 64;
/// Where queue register blocks start, and their stride.
pub const QUEUE_BASE: u64 = 0x1000;
/// Stride of the queue register blocks.
pub const QUEUE_STRIDE: u64 = 0x40;

/// Global registers.
pub mod global {
    /// Identification (RO).
    pub const ID: u64 = 0x000;
    /// Version (RO).
    pub const VERSION: u64 = 0x004;
    /// Capabilities (RO): queues, log2 ring size, PASID/ATS/PRI present.
    pub const CAP: u64 = 0x008;
    /// Supported opcodes, one bit each (RO).
    pub const OPCAP: u64 = 0x00c;
    /// Largest data length of one descriptor (RO).
    pub const MAX_XFER: u64 = 0x010;
    /// Largest AES-GCM length of one descriptor (RO).
    pub const MAX_CRYPTO: u64 = 0x014;
    /// Control: bit 0 reset every queue (reads 1 until done).
    pub const GCTRL: u64 = 0x018;
    /// PASID/ATS/PRI control as the host set them (RO mirror).
    pub const XLAT: u64 = 0x01c;
    /// Descriptors completed, all queues (RO, u64).
    pub const DESCRIPTORS: u64 = 0x020;
    /// Descriptors completed with an error status (RO, u64).
    pub const ERRORS: u64 = 0x028;
    /// Bytes processed (RO, u64).
    pub const BYTES: u64 = 0x030;
    /// Page requests issued (RO, u64).
    pub const PAGE_REQUESTS: u64 = 0x038;
}

/// Per-queue registers (offsets inside a queue block).
pub mod queue {
    /// Ring base, low half (RW while disabled).
    pub const RING_LO: u64 = 0x00;
    /// Ring base, high half.
    pub const RING_HI: u64 = 0x04;
    /// Ring entries, a power of two 2..=32768 (RW while disabled).
    pub const RING_SIZE: u64 = 0x08;
    /// Control.
    pub const CTRL: u64 = 0x0c;
    /// PASID of ring fetches and completion records when CTRL.RING_PASID.
    pub const PASID: u64 = 0x10;
    /// MSI-X vector.
    pub const VECTOR: u64 = 0x14;
    /// Tail (doorbell): index of the next free ring slot.
    pub const TAIL: u64 = 0x18;
    /// Head (RO): index of the next descriptor the device takes.
    pub const HEAD: u64 = 0x1c;
    /// Status (RO; CR_FAULT is W1C).
    pub const STATUS: u64 = 0x20;
    /// Ring index involved in the last queue error (RO).
    pub const ERR_INDEX: u64 = 0x24;
    /// Address involved in the last queue error (RO, u64).
    pub const ERR_ADDR: u64 = 0x28;
    /// Descriptors completed (RO, u64).
    pub const COMPLETED: u64 = 0x30;
    /// Completion records that could not be written (RO).
    pub const CR_FAULTS: u64 = 0x38;
}

/// CTRL bits.
pub mod ctrl {
    /// Process the ring.
    pub const ENABLE: u32 = 1 << 0;
    /// Raise VECTOR after descriptors with the INTERRUPT flag (and on a
    /// queue error).
    pub const IRQ: u32 = 1 << 1;
    /// Write 1: abort queued work and reset the queue (reads 1 until done).
    pub const RESET: u32 = 1 << 2;
    /// Ring fetches and completion records use PASID (else untranslated).
    pub const RING_PASID: u32 = 1 << 3;
    /// Bits software can set and read back.
    pub const RW: u32 = ENABLE | IRQ | RING_PASID;
}

/// STATUS bits.
pub mod qstatus {
    /// The queue is enabled.
    pub const ENABLED: u32 = 1 << 0;
    /// Stopped by a queue error (see ERR); only RESET recovers.
    pub const HALTED: u32 = 1 << 1;
    /// A reset is in progress.
    pub const RESETTING: u32 = 1 << 2;
    /// A completion record could not be written (W1C).
    pub const CR_FAULT: u32 = 1 << 3;
    /// Descriptors are waiting (HEAD != TAIL).
    pub const BUSY: u32 = 1 << 4;
    /// The error code of a halted queue (bits 15:8).
    pub const ERR_SHIFT: u32 = 8;
}

/// Queue error codes (STATUS bits 15:8).
pub mod qerr {
    /// None.
    pub const NONE: u32 = 0;
    /// Enabled with a misaligned ring or a bad ring size.
    pub const BAD_RING: u32 = 1;
    /// TAIL written with an index >= RING_SIZE.
    pub const TAIL_RANGE: u32 = 2;
    /// A descriptor could not be read from the ring.
    pub const FETCH_FAULT: u32 = 3;
    /// Ring fetches need a PASID that cannot be used.
    pub const RING_PASID: u32 = 4;

    /// Name, for logs and tools.
    pub fn name(e: u32) -> &'static str {
        match e {
            NONE => "none",
            BAD_RING => "bad ring configuration",
            TAIL_RANGE => "tail out of range",
            FETCH_FAULT => "descriptor fetch fault",
            RING_PASID => "ring PASID unusable",
            _ => "unknown",
        }
    }
}

/// PASID register bits.
pub mod qpasid {
    /// The PASID (bits 19:0).
    pub const PASID_MASK: u32 = 0x000f_ffff;
    /// Privileged-mode requests.
    pub const PRIV: u32 = 1 << 31;
}
