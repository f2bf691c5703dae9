//! The DMA-copy example device's register map: what a driver needs to know
//! and nothing else. The device model (`device.rs`) and drivers that must not
//! link it (the guest tool, which runs inside the guest) share this file;
//! it depends on nothing.
//!
//! BAR0 (4 KiB, registers; all little-endian):
//!
//! | off  | name        | access | meaning |
//! |------|-------------|--------|---------|
//! | 0x00 | ID          | RO     | `0x7d0c_d3a0` |
//! | 0x04 | VERSION     | RO     | `0x0001_0000` |
//! | 0x08 | SRC         | RW u64 | source DMA address |
//! | 0x10 | DST         | RW u64 | destination DMA address |
//! | 0x18 | LEN         | RW u32 | bytes to copy (at most `MAX_LEN`) |
//! | 0x1c | CTRL        | RW u32 | bit 0: interrupt on completion |
//! | 0x20 | DOORBELL    | WO u32 | write 1: start the copy |
//! | 0x24 | STATUS      | RO/W1C | bit 0 BUSY, bit 1 DONE (W1C), bit 2 ERROR (W1C) |
//! | 0x28 | ERROR       | RO u32 | 0 none, 1 source fault, 2 destination fault, 3 bad length, 4 busy |
//! | 0x2c | VECTOR      | RW u32 | interrupt vector to raise |
//! | 0x30 | COMPLETED   | RO u32 | copies completed |
//! | 0x38 | BYTES       | RO u64 | bytes copied in total |
//! | 0x40 | SCRATCH     | RW u32 | free for tests |
//!
//! BAR1 (4 KiB): MSI-X table at 0, PBA at 0x800 (QEMU emulates the table).
//! BAR2 (16 KiB, 64-bit prefetchable): device RAM shared with the client;
//! page 0 is trapped, pages 1-3 are mmappable (sparse mmap).

/// Vendor ID of the example device.
pub const VENDOR_ID: u16 = 0x7d0c;
/// Device ID of the example device.
pub const DEVICE_ID: u16 = 0xd3a0;
/// Value of the ID register.
pub const ID_VALUE: u32 = 0x7d0c_d3a0;
/// Largest single copy.
pub const MAX_LEN: u32 = 16 << 20;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 4;
/// Size of BAR2 (shared device RAM).
pub const BAR2_SIZE: usize = 16 * 1024;

/// Register offsets in BAR0.
pub mod reg {
    /// ID.
    pub const ID: u64 = 0x00;
    /// Version.
    pub const VERSION: u64 = 0x04;
    /// Source address (u64).
    pub const SRC: u64 = 0x08;
    /// Destination address (u64).
    pub const DST: u64 = 0x10;
    /// Length.
    pub const LEN: u64 = 0x18;
    /// Control.
    pub const CTRL: u64 = 0x1c;
    /// Doorbell.
    pub const DOORBELL: u64 = 0x20;
    /// Status.
    pub const STATUS: u64 = 0x24;
    /// Error code.
    pub const ERROR: u64 = 0x28;
    /// Interrupt vector.
    pub const VECTOR: u64 = 0x2c;
    /// Completed copies.
    pub const COMPLETED: u64 = 0x30;
    /// Bytes copied (u64).
    pub const BYTES: u64 = 0x38;
    /// Scratch.
    pub const SCRATCH: u64 = 0x40;
}

/// STATUS bits.
pub mod status {
    /// A copy is running.
    pub const BUSY: u32 = 1 << 0;
    /// The last copy completed.
    pub const DONE: u32 = 1 << 1;
    /// The last copy failed (see ERROR).
    pub const ERROR: u32 = 1 << 2;
}

/// ERROR codes.
pub mod error {
    /// Reading the source failed.
    pub const SOURCE_FAULT: u32 = 1;
    /// Writing the destination failed.
    pub const DEST_FAULT: u32 = 2;
    /// LEN is 0 or larger than MAX_LEN.
    pub const BAD_LENGTH: u32 = 3;
    /// Doorbell while busy.
    pub const BUSY: u32 = 4;
}

/// Value of the VERSION register.
pub const VERSION_VALUE: u32 = 0x0001_0000;
