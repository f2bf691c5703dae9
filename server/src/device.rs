//! The [`Device`] trait a device model implements, and the [`DeviceContext`]
//! (client memory + interrupts) it works with.

use crate::dma::{GuestMemory, PasidMemory};
use crate::irq::{Interrupts, IrqInfo};
use crate::pci::{ConfigEvents, ConfigSpace};
use crate::protocol::SparseArea;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use thiserror::Error;

/// Default limit of DMA windows per client.
pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;

/// What a device model works with: the client's memory and the interrupt
/// table. Both outlive connections: on disconnect the server empties them,
/// and the next client fills them again. Clone it into worker threads.
#[derive(Clone, Debug)]
pub struct DeviceContext {
    /// Client (guest) memory.
    pub memory: Arc<GuestMemory>,
    /// Interrupts.
    pub irqs: Arc<Interrupts>,
    /// PASID-tagged access to client memory (the vfio-user PASID extension).
    pub pasid: Arc<PasidMemory>,
}

impl DeviceContext {
    /// A context with the given IRQ indexes (see [`IrqInfo::pci`]).
    pub fn new(irqs: &[IrqInfo]) -> Self {
        let memory = Arc::new(GuestMemory::new(DEFAULT_MAX_DMA_MAPS));
        DeviceContext {
            pasid: Arc::new(PasidMemory::new(Arc::clone(&memory), DEFAULT_MAX_DMA_MAPS)),
            memory,
            irqs: Arc::new(Interrupts::new(irqs)),
        }
    }
}

/// Errors a device model reports for a region access.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The region does not exist or is not accessible that way.
    #[error("region {0} is not accessible")]
    NoSuchRegion(u32),
    /// Offset/size not supported by the register layout.
    #[error("region {region}: unsupported access of {len} bytes at {offset:#x}")]
    BadAccess {
        /// Region index.
        region: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// The device is in a state that refuses the access.
    #[error("device busy")]
    Busy,
}

impl DeviceError {
    /// errno for the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Busy => libc::EBUSY,
            _ => libc::EINVAL,
        }
    }
}

/// How the client may mmap a region.
#[derive(Debug)]
pub struct RegionMmap<'a> {
    /// The fd the client maps.
    pub fd: BorrowedFd<'a>,
    /// File offset of the region's start (the `offset` of the region info).
    pub offset: u64,
    /// The mmappable windows; empty means the whole region.
    pub areas: Vec<SparseArea>,
}

/// A PCI device model served over vfio-user.
///
/// The server owns the device and calls these methods from its connection
/// thread, one at a time; data paths run on the model's own worker threads
/// using a clone of [`Device::context`]. Configuration space (region 7) is
/// served from [`Device::config`]; BAR and ROM accesses come to
/// [`Device::region_read`] / [`Device::region_write`] already bounds-checked
/// against the BAR sizes declared in configuration space.
pub trait Device: Send {
    /// The memory and interrupts this device uses.
    fn context(&self) -> &DeviceContext;

    /// Configuration space.
    fn config(&mut self) -> &mut ConfigSpace;

    /// Reads a BAR (0-5) or the ROM (6).
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8])
        -> Result<(), DeviceError>;

    /// Writes a BAR (0-5). Memory-BAR writes from QEMU are posted: the guest
    /// does not wait for them.
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// The mmap backing of a region, if it has one.
    fn region_mmap(&self, _region: u32) -> Option<RegionMmap<'_>> {
        None
    }

    /// Called after a configuration write with its side effects. The default
    /// resets the device on Function Level Reset (configuration space by
    /// [`ConfigSpace::function_reset`]: BAR addresses survive).
    fn config_written(&mut self, events: ConfigEvents) {
        if events.flr {
            self.config().function_reset();
            self.reset();
        }
    }

    /// Returns the device to its power-on state (configuration space is reset
    /// by the caller). Workers must stop touching client memory before this
    /// returns.
    fn reset(&mut self);
}
