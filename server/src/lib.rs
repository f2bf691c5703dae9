//! # vfio-user-server
//!
//! A vfio-user protocol server library for emulating PCI devices out of
//! process. QEMU's `vfio-user-pci` (and any spec-conforming client) connects
//! to a UNIX socket; a [`Device`] model answers configuration and BAR
//! accesses, reaches client memory through [`dma::GuestMemory`], and raises
//! interrupts through [`irq::Interrupts`].
//!
//! Layers, each in its own module:
//! - [`protocol`]: wire structures, decode/encode with typed errors;
//! - [`transport`]: socket, SCM_RIGHTS, framing;
//! - [`dma`]: the DMA map table and guest-memory access;
//! - [`pci`]: configuration space, capability builder, BARs;
//! - [`irq`]: eventfd-backed interrupts;
//! - [`device`]: the trait device models implement;
//! - [`server`]: the request loop;
//! - [`client`]: a client for tests, benchmarks and tools;
//! - [`iommu`]: an IOMMU model (per-PASID page tables in client memory)
//!   for clients of the PASID extension.

pub mod client;
pub mod connection;
pub mod device;
pub mod dma;
mod extension;
pub mod iommu;
pub mod irq;
pub mod pci;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod transport;

pub use connection::ConnectionControl;
pub use device::{Device, DeviceContext, DeviceError, RegionMmap};
pub use server::{RequestError, Server, ServerError, StopHandle};
