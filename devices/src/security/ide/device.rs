//! [`IdeDevice`]: any device model behind the IDE link. It installs the
//! link on the device's guest memory (so every DMA the model does goes
//! through it), passes BAR accesses over it, and follows the device's
//! Max_Payload_Size and Max_Read_Request_Size (PCIe Device Control) for TLP
//! sizes. Everything else goes straight to the model.
//!
//! BAR areas a client maps directly (sparse mmap) never reach the server and
//! so never cross the modelled link.

use super::link::IdeLink;
use super::Ide;
use std::sync::Arc;
use thiserror::Error;
use vfio_user_server::pci::{BarKind, ConfigEvents, ConfigSpace};
use vfio_user_server::{Device, DeviceContext, DeviceError, RegionMmap};

/// The device's guest memory already has an interposer.
#[derive(Debug, Error)]
#[error("the device's guest memory already has a link interposer")]
pub struct AlreadyLinked;

/// A device model with the IDE link in front of it.
pub struct IdeDevice<D> {
    inner: D,
    ide: Arc<Ide>,
    link: Arc<IdeLink>,
}

impl<D: Device> std::fmt::Debug for IdeDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdeDevice").field("ide", &self.ide).finish()
    }
}

const PCIE_DEVCTL: u16 = 0x08;

impl<D: Device> IdeDevice<D> {
    /// Puts `inner` behind `ide`'s link (whose capabilities `inner`'s
    /// configuration space must carry).
    pub fn new(inner: D, ide: Arc<Ide>) -> Result<Self, AlreadyLinked> {
        let link = ide.link_model();
        inner
            .context()
            .memory
            .set_interposer(link.clone())
            .map_err(|_| AlreadyLinked)?;
        let mut d = IdeDevice { inner, ide, link };
        d.follow_devctl();
        Ok(d)
    }

    /// The IDE port.
    pub fn ide(&self) -> &Arc<Ide> {
        &self.ide
    }

    /// The wrapped model.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped model.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Reads MPS and MRRS from Device Control.
    fn follow_devctl(&mut self) {
        let cfg = self.inner.config();
        let Some(pc) = cfg.pcie_cap() else {
            return;
        };
        let devctl = cfg.read_u16((pc + PCIE_DEVCTL) as usize);
        let size = |v: u16| 128usize << v.min(5);
        self.ide
            .set_tlp_sizes(size((devctl >> 5) & 7), size((devctl >> 12) & 7));
    }

    /// The bus address of BAR `region` (as the guest programmed it).
    fn bar_address(cfg: &ConfigSpace, region: u32) -> Option<u64> {
        let bar = cfg.bar(region as usize)?;
        let off = 0x10 + 4 * region as usize;
        let low = u64::from(cfg.read_u32(off) & !0xf);
        Some(match bar.kind {
            BarKind::Mem64 { .. } => low | (u64::from(cfg.read_u32(off + 4)) << 32),
            BarKind::Mem32 { .. } => low,
            BarKind::Io | BarKind::Rom => return None,
        })
    }

    fn on_link(&mut self, region: u32) -> Option<u64> {
        if region > 5 || !self.ide.link_active() {
            return None;
        }
        Self::bar_address(self.inner.config(), region)
    }
}

impl<D: Device> Device for IdeDevice<D> {
    fn context(&self) -> &DeviceContext {
        self.inner.context()
    }

    fn config(&mut self) -> &mut ConfigSpace {
        self.inner.config()
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        let Some(base) = self.on_link(region) else {
            return self.inner.region_read(region, offset, data);
        };
        let inner = &mut self.inner;
        let mut r = Ok(());
        self.link.host_read(base.wrapping_add(offset), data, |buf| {
            r = inner.region_read(region, offset, buf)
        });
        r
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if let Some(base) = self.on_link(region) {
            if !self.link.host_write(base.wrapping_add(offset), data) {
                // Failed its integrity check at the device: dropped (a
                // posted write has no completion to fail).
                return Ok(());
            }
        }
        self.inner.region_write(region, offset, data)
    }

    fn region_mmap(&self, region: u32) -> Option<RegionMmap<'_>> {
        self.inner.region_mmap(region)
    }

    fn config_written(&mut self, events: ConfigEvents) {
        self.inner.config_written(events);
        self.follow_devctl();
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.follow_devctl();
    }
}
