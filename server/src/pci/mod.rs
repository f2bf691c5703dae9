//! The PCI device model: configuration space with per-bit semantics, the
//! capability builder, BAR descriptions and shared-memory BAR backing.

mod builder;
mod config;
mod shm;
pub mod translation;

pub use builder::{
    cap_id, ext_cap_id, BuildError, ConfigBuilder, ExtCap, MsixCap, PciIds, PcieCap, PortType,
};
pub use config::{ConfigEvents, ConfigHandler, ConfigSpace, CONFIG_SPACE_SIZE};
pub use shm::SharedMemory;
pub use translation::{AtsCap, PasidCap, PriCap, TranslationFeatures, TranslationRegs};

/// What kind of resource a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Mem32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory (uses the next BAR slot for the upper half).
    Mem64 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O space.
    Io,
    /// Expansion ROM (BAR index 6).
    Rom,
}

/// A BAR: kind and size (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
}

impl Bar {
    /// A 32-bit non-prefetchable memory BAR.
    pub fn mem32(size: u64) -> Bar {
        Bar {
            kind: BarKind::Mem32 {
                prefetchable: false,
            },
            size,
        }
    }

    /// A 64-bit memory BAR.
    pub fn mem64(size: u64, prefetchable: bool) -> Bar {
        Bar {
            kind: BarKind::Mem64 { prefetchable },
            size,
        }
    }

    /// An I/O BAR.
    pub fn io(size: u64) -> Bar {
        Bar {
            kind: BarKind::Io,
            size,
        }
    }

    /// An expansion ROM.
    pub fn rom(size: u64) -> Bar {
        Bar {
            kind: BarKind::Rom,
            size,
        }
    }
}
