//! # trustdev-devices
//!
//! Trusted PCIe device models served over vfio-user, and the tooling around
//! them: the `vm` runner that boots a guest kernel in QEMU against the
//! servers.

/// The DMA-copy example device (its source lives with the server library's
/// examples, `server/examples/dma_copy/device.rs`, and is shared here so the
/// `trustdev` binary can serve it and boot guests against it).
#[allow(dead_code)]
#[path = "../../server/examples/dma_copy/device.rs"]
pub mod example;

pub mod accel;
pub mod nvme;
pub mod security;
pub mod vm;
