//! [`TdispDevice`]: any device model with a TDI in front of its
//! configuration space. It shows the TDI every configuration the server
//! touches (before each access, and after each write with side effects),
//! and tells it about Function Level Reset and device reset. Everything
//! else goes straight to the model.

use super::Tdi;
use std::sync::Arc;
use vfio_user_server::pci::{ConfigEvents, ConfigSpace};
use vfio_user_server::{Device, DeviceContext, DeviceError, RegionMmap};

/// A device model whose function is a TDI.
pub struct TdispDevice<D> {
    inner: D,
    tdi: Arc<Tdi>,
}

impl<D: Device> std::fmt::Debug for TdispDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdispDevice")
            .field("tdi", &self.tdi)
            .finish()
    }
}

impl<D: Device> TdispDevice<D> {
    /// Puts `inner`'s function under `tdi`.
    pub fn new(mut inner: D, tdi: Arc<Tdi>) -> Self {
        tdi.attach_interrupts(inner.context().irqs.clone());
        tdi.observe(inner.config());
        TdispDevice { inner, tdi }
    }

    /// The TDI.
    pub fn tdi(&self) -> &Arc<Tdi> {
        &self.tdi
    }

    /// The wrapped model.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Device> Device for TdispDevice<D> {
    fn context(&self) -> &DeviceContext {
        self.inner.context()
    }

    /// The server calls this before every configuration access and before
    /// every BAR access (to size the region): the TDI compares what
    /// changed since (MSI-X Message Control writes and SET_IRQS have no
    /// other notification).
    fn config(&mut self) -> &mut ConfigSpace {
        let cfg = self.inner.config();
        self.tdi.observe(cfg);
        cfg
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.inner.region_read(region, offset, data)
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.inner.region_write(region, offset, data)
    }

    fn region_mmap(&self, region: u32) -> Option<RegionMmap<'_>> {
        self.inner.region_mmap(region)
    }

    fn config_written(&mut self, events: ConfigEvents) {
        if events.flr {
            self.tdi.flr();
        } else {
            // Command register or BAR writes.
            self.tdi.observe(self.inner.config());
        }
        self.inner.config_written(events);
        self.tdi.observe(self.inner.config());
    }

    fn reset(&mut self) {
        self.tdi.device_reset();
        self.inner.reset();
        self.tdi.observe(self.inner.config());
    }
}
