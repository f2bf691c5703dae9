//! The vfio-user wire protocol: header, command numbers, message payloads and
//! capability negotiation, as specified by QEMU's `docs/interop/vfio-user.rst`.
//!
//! Everything here is pure data: decoding never panics, every length and count
//! is checked, and each failure is a [`ProtocolError`] that maps to the errno the
//! server puts in its error reply.

mod header;
mod messages;
pub mod pasid;
mod version;
mod wire;

pub use header::{Header, MessageType, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE};
pub use messages::*;
pub use version::{ClientCaps, ServerCaps, VersionRequest};
pub use wire::{Reader, Writer};

use thiserror::Error;

/// Message commands (the `command` header field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// Version and capability negotiation.
    Version = 1,
    /// Make client memory available for DMA.
    DmaMap = 2,
    /// Withdraw client memory.
    DmaUnmap = 3,
    /// Device flags and region/IRQ counts.
    DeviceGetInfo = 4,
    /// One region's size, flags, mmap fd and capabilities.
    DeviceGetRegionInfo = 5,
    /// ioeventfd/ioregionfd sub-regions of a region.
    DeviceGetRegionIoFds = 6,
    /// One IRQ index's count and flags.
    DeviceGetIrqInfo = 7,
    /// Assign eventfds / mask / unmask / trigger interrupts.
    DeviceSetIrqs = 8,
    /// Read from a device region.
    RegionRead = 9,
    /// Write to a device region.
    RegionWrite = 10,
    /// Server -> client: read client memory.
    DmaRead = 11,
    /// Server -> client: write client memory.
    DmaWrite = 12,
    /// Reset the device.
    DeviceReset = 13,
    /// Deprecated dirty-page command (never valid).
    DirtyPages = 14,
    /// Several small region writes in one message.
    RegionWriteMulti = 15,
    /// VFIO device features (migration, DMA logging).
    DeviceFeature = 16,
    /// Migration data out.
    MigDataRead = 17,
    /// Migration data in.
    MigDataWrite = 18,
    /// PASID extension: map client memory into the translated address space.
    TranslatedDmaMap = 19,
    /// PASID extension: withdraw translated-space memory.
    TranslatedDmaUnmap = 20,
    /// PASID extension, server -> client: ATS translation request.
    AtsTranslate = 21,
    /// PASID extension: invalidate the device's cached translations.
    AtsInvalidate = 22,
    /// PASID extension, server -> client (posted): PRI page request.
    PageRequest = 23,
    /// PASID extension: PRG response to page requests.
    PageResponse = 24,
    /// PASID extension, server -> client: PASID-tagged read of client memory.
    PasidDmaRead = 25,
    /// PASID extension, server -> client: PASID-tagged write of client memory.
    PasidDmaWrite = 26,
}

impl Command {
    /// Maps a raw command number to a known command.
    pub fn from_raw(raw: u16) -> Option<Command> {
        use Command::*;
        Some(match raw {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            19 => TranslatedDmaMap,
            20 => TranslatedDmaUnmap,
            21 => AtsTranslate,
            22 => AtsInvalidate,
            23 => PageRequest,
            24 => PageResponse,
            25 => PasidDmaRead,
            26 => PasidDmaWrite,
            _ => return None,
        })
    }
}

/// A message that cannot be decoded or is not acceptable.
///
/// [`ProtocolError::errno`] gives the errno put in the error reply.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The header's message size is smaller than the header itself.
    #[error("message size {0} is smaller than the 16-byte header")]
    MessageTooShort(u32),
    /// The type bits of the header flags are neither command nor reply.
    #[error("message type {0} is neither command (0) nor reply (1)")]
    BadMessageType(u32),
    /// Reserved header flag bits are set.
    #[error("reserved header flag bits set: {0:#x}")]
    ReservedFlags(u32),
    /// The message is larger than the server accepts.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Claimed size.
        size: u64,
        /// Accepted maximum.
        limit: u64,
    },
    /// The payload is shorter than the command's fixed part.
    #[error("{what}: payload of {got} bytes, need at least {need}")]
    PayloadTooShort {
        /// What was being decoded.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The payload length does not match what its fields describe.
    #[error("{what}: payload of {got} bytes, fields describe {expected}")]
    PayloadSizeMismatch {
        /// What was being decoded.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes the fields describe.
        expected: usize,
    },
    /// `argsz` is smaller than the fixed structure.
    #[error("{what}: argsz {argsz} is smaller than {min}")]
    ArgszTooSmall {
        /// What was being decoded.
        what: &'static str,
        /// The argsz given.
        argsz: u32,
        /// The minimum.
        min: u32,
    },
    /// Unknown or contradictory flags.
    #[error("{what}: invalid flags {flags:#x}")]
    BadFlags {
        /// What was being decoded.
        what: &'static str,
        /// The flags given.
        flags: u32,
    },
    /// A field that must be zero is not.
    #[error("{what}: reserved field is non-zero")]
    ReservedField {
        /// What was being decoded.
        what: &'static str,
    },
    /// A field value is out of range.
    #[error("{what}: {detail}")]
    InvalidField {
        /// What was being decoded.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The version data is not the JSON the spec describes.
    #[error("version capabilities: {0}")]
    BadVersionData(String),
    /// The client proposed a major version we do not speak.
    #[error("unsupported protocol major version {0}")]
    UnsupportedMajor(u16),
    /// The command number is unknown.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// A known command this server does not implement.
    #[error("command {0:?} is not supported")]
    Unsupported(Command),
    /// A command only the server may send.
    #[error("command {0:?} is server-to-client only")]
    WrongDirection(Command),
    /// The command carried a different number of fds than it takes.
    #[error("{what}: {got} file descriptors, expected {expected}")]
    BadFdCount {
        /// What was being decoded.
        what: &'static str,
        /// Fds received.
        got: usize,
        /// Fds accepted.
        expected: &'static str,
    },
    /// A transfer is larger than max_data_xfer_size.
    #[error("{what}: count {count} exceeds max_data_xfer_size {limit}")]
    TransferTooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Requested count.
        count: u64,
        /// Limit.
        limit: u64,
    },
}

impl ProtocolError {
    /// The errno this error is reported with.
    pub fn errno(&self) -> i32 {
        use ProtocolError::*;
        match self {
            MessageTooLarge { .. } | TransferTooLarge { .. } => libc::E2BIG,
            UnknownCommand(_) => libc::ENOSYS,
            Unsupported(_) => libc::ENOTSUP,
            UnsupportedMajor(_) => libc::ENOTSUP,
            _ => libc::EINVAL,
        }
    }
}
