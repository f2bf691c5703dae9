//! An NVMe 2.0 controller (NVM command set) served over vfio-user.
//!
//! PCI function: class 01:08:02, BAR0 (64-bit, 16 KiB: registers and
//! doorbells from 0x1000), BAR4 (MSI-X table and PBA, emulated by QEMU),
//! PM, MSI, MSI-X (one vector per I/O queue plus the admin vector), a PCIe
//! Endpoint (or RCiEP) capability with FLR, and a Device Serial Number.
//!
//! Threads: the connection thread handles register and doorbell writes
//! (posted by QEMU) and only records them; an admin thread applies CC
//! changes (enable, reset, shutdown) and runs the admin queue; I/O workers
//! run the I/O queues (queue pair `q` on worker `(q - 1) % workers`),
//! reading and writing guest memory in place.
//!
//! Doorbells: trapped by default; once the host configures Doorbell Buffer
//! Config, I/O queues are read through the shadow doorbell buffer and the
//! controller publishes event indexes so the host rings only when a worker
//! is idle. `--doorbells poll` maps the doorbell page into the client and
//! the workers poll it.

pub mod admin;
pub mod backend;
mod control;
pub mod ctrl;
pub mod dptr;
#[cfg(any(test, feature = "host-driver"))]
pub mod host;
pub mod io;
pub mod namespace;
pub mod options;
pub mod queue;
pub mod security;
pub mod spec;
pub mod state;
mod threads;

pub use admin::{DEVICE_ID, VENDOR_ID};
pub use options::{NvmeArgs, NvmeConfig};
pub use security::NvmeSecurity;

use backend::BackendError;
use ctrl::Ctrl;
use log::info;
use namespace::Namespace;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;
use vfio_user_server::irq::IrqInfo;
use vfio_user_server::pci::{
    ext_cap_id, Bar, BuildError, ConfigBuilder, ConfigSpace, ExtCap, MsixCap, PciIds, PcieCap,
    PortType,
};
use vfio_user_server::protocol::SparseArea;
use vfio_user_server::{Device, DeviceContext, DeviceError, RegionMmap};

/// Why a controller could not be created.
#[derive(Debug, Error)]
pub enum NvmeError {
    /// A namespace's storage could not be opened.
    #[error("namespace {nsid}: {source}")]
    Namespace {
        /// Namespace ID.
        nsid: u32,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The configuration space does not fit (too many capabilities).
    #[error("configuration space layout: {0}")]
    ConfigSpace(#[from] BuildError),
    /// The shared doorbell page (poll mode) could not be created.
    #[error("doorbell page: {0}")]
    DoorbellPage(#[source] std::io::Error),
    /// A controller thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The controller's PCI IDs (class: mass storage, NVM, NVM Express I/O
/// controller).
pub const PCI_IDS: PciIds = PciIds {
    vendor: VENDOR_ID,
    device: DEVICE_ID,
    subsystem_vendor: VENDOR_ID,
    subsystem: 0x0001,
    class: 0x01_08_02,
    revision: 2,
};

/// The MSI-X BAR.
pub const MSIX_BAR: usize = 4;

/// Where the MSI-X table and PBA go in BAR4: (table offset, PBA offset, BAR size).
pub fn msix_layout(vectors: u16) -> (u32, u32, u64) {
    let table = u32::from(vectors) * 16;
    let pba_len = u32::from(vectors).div_ceil(64) * 8;
    let pba = if table <= 0x800 {
        0x800
    } else {
        table.next_multiple_of(4096)
    };
    let size = u64::from(pba + pba_len).next_power_of_two().max(4096);
    (0, pba, size)
}

/// BAR0 size for `queues` I/O queue pairs with stride `dstrd`.
pub fn bar0_size(queues: u16, dstrd: u8) -> u64 {
    let doorbells = (u64::from(queues) + 1) * 2 * (4 << dstrd);
    (0x1000 + doorbells).next_power_of_two().max(0x4000)
}

/// The NVMe controller device.
pub struct NvmeDevice {
    ctx: DeviceContext,
    config: ConfigSpace,
    ctrl: Arc<Ctrl>,
    threads: Vec<JoinHandle<()>>,
}

impl NvmeDevice {
    /// Attaches the control plane: NVMe faults, admin commands in the
    /// trace, queues and counters in the state.
    pub fn attach_control(&self, ctl: &Arc<crate::control::DeviceControl>) {
        control::attach(&self.ctrl, ctl);
    }
}

impl std::fmt::Debug for NvmeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeDevice")
            .field("ctrl", &self.ctrl)
            .finish()
    }
}

fn config_space(
    cfg: &NvmeConfig,
    port: PortType,
    vectors: u16,
    bar0: u64,
    tee: bool,
    extra: Vec<ExtCap>,
) -> Result<ConfigSpace, BuildError> {
    let (table, pba, msix_size) = msix_layout(vectors);
    let serial = cfg.dsn;
    let mut b = ConfigBuilder::new(PCI_IDS)
        .bar(0, Bar::mem64(bar0, false))
        .bar(MSIX_BAR, Bar::mem64(msix_size, false))
        .power_management()
        .msi(1)
        .msix(MsixCap {
            vectors,
            table_bar: MSIX_BAR as u8,
            table_offset: table,
            pba_bar: MSIX_BAR as u8,
            pba_offset: pba,
        })
        .pcie(PcieCap {
            port_type: port,
            tee,
            ee_prefix: false,
            flr: true,
        })
        .ext_capability(ExtCap {
            id: ext_cap_id::DSN,
            version: 1,
            body: serial.to_le_bytes().to_vec(),
            rw: vec![],
            handler: None,
        });
    for cap in extra {
        b = b.ext_capability(cap);
    }
    b.build()
}

impl NvmeDevice {
    /// Opens the namespaces and starts the controller's threads.
    pub fn new(cfg: NvmeConfig, port: PortType) -> Result<NvmeDevice, NvmeError> {
        Self::new_secure(cfg, port, NvmeSecurity::default())
    }

    /// Like [`NvmeDevice::new`], with security features (DOE mailbox with
    /// CMA/SPDM, DEVCAP.TEE, SPDM over Security Send/Receive).
    pub fn new_secure(
        cfg: NvmeConfig,
        port: PortType,
        security: NvmeSecurity,
    ) -> Result<NvmeDevice, NvmeError> {
        let mut namespaces = Vec::new();
        for (i, ns) in cfg.namespaces.iter().enumerate() {
            let nsid = i as u32 + 1;
            let n = Namespace::open(nsid, ns, &cfg)
                .map_err(|source| NvmeError::Namespace { nsid, source })?;
            info!(
                "namespace {}: {} blocks of {} bytes on {}",
                n.nsid,
                n.blocks,
                1u32 << n.lba_shift,
                n.backend.describe()
            );
            namespaces.push(Arc::new(n));
        }
        Self::build(cfg, port, namespaces, security)
    }

    /// A controller over already opened namespaces.
    pub fn with_namespaces(
        cfg: NvmeConfig,
        port: PortType,
        namespaces: Vec<Arc<Namespace>>,
    ) -> Result<NvmeDevice, NvmeError> {
        Self::build(cfg, port, namespaces, NvmeSecurity::default())
    }

    fn build(
        cfg: NvmeConfig,
        port: PortType,
        namespaces: Vec<Arc<Namespace>>,
        security: NvmeSecurity,
    ) -> Result<NvmeDevice, NvmeError> {
        let vectors = cfg.max_queues + 1;
        let bar0 = bar0_size(cfg.max_queues, cfg.dstrd);
        let ctx = DeviceContext::new(&IrqInfo::pci(1, u32::from(vectors)));
        let config = config_space(&cfg, port, vectors, bar0, security.tee, security.ext_caps)?;
        info!(
            "NVMe controller {} ({}): {} namespace(s), up to {} I/O queue pairs of {} entries, {} worker(s), {:?} doorbells{}",
            cfg.serial,
            cfg.model,
            namespaces.len(),
            cfg.max_queues,
            cfg.queue_entries,
            cfg.workers,
            cfg.doorbells,
            if cfg.shadow_doorbells { " + shadow doorbells" } else { "" }
        );
        let ctrl = Arc::new(
            Ctrl::new(
                cfg,
                namespaces,
                Arc::clone(&ctx.memory),
                Arc::clone(&ctx.irqs),
                bar0 as usize,
            )
            .map_err(NvmeError::DoorbellPage)?,
        );
        if let Some(r) = security.storage {
            let _ = ctrl
                .spdm
                .set(std::sync::Mutex::new(security::StorageSpdm::new(r)));
        }
        let mut threads = Vec::new();
        {
            let c = Arc::clone(&ctrl);
            let t = std::thread::Builder::new()
                .name("nvme-admin".into())
                .spawn(move || threads::admin_thread(&c))
                .map_err(|source| NvmeError::Thread {
                    name: "nvme-admin".into(),
                    source,
                })?;
            let _ = ctrl.queues.workers.admin.thread.set(t.thread().clone());
            threads.push(t);
        }
        for w in 0..ctrl.queues.workers.io.len() {
            let c = Arc::clone(&ctrl);
            let t = std::thread::Builder::new()
                .name(format!("nvme-io{w}"))
                .spawn(move || threads::io_thread(&c, w))
                .map_err(|source| NvmeError::Thread {
                    name: format!("nvme-io{w}"),
                    source,
                })?;
            let _ = ctrl.queues.workers.io[w].thread.set(t.thread().clone());
            threads.push(t);
        }
        Ok(NvmeDevice {
            ctx,
            config,
            ctrl,
            threads,
        })
    }

    /// The controller's one-line efficiency counters.
    pub fn efficiency(&self) -> String {
        self.ctrl.queues.efficiency_line()
    }
}

impl Device for NvmeDevice {
    fn context(&self) -> &DeviceContext {
        &self.ctx
    }

    fn config(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        match region {
            0 => {
                if data.len() > 8 {
                    return Err(DeviceError::BadAccess {
                        region,
                        offset,
                        len: data.len(),
                    });
                }
                self.ctrl.read_bar0(offset, data);
                Ok(())
            }
            // Only the PBA reaches us (QEMU keeps the table); nothing is
            // pending while vectors are unmasked.
            4 => {
                data.fill(0);
                Ok(())
            }
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match region {
            0 => {
                if data.len() > 8 {
                    return Err(DeviceError::BadAccess {
                        region,
                        offset,
                        len: data.len(),
                    });
                }
                self.ctrl.write_bar0(offset, data);
                Ok(())
            }
            4 => Ok(()),
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn region_mmap(&self, region: u32) -> Option<RegionMmap<'_>> {
        let page = self.ctrl.queues.doorbells.page()?;
        (region == 0).then(|| RegionMmap {
            fd: page.fd(),
            offset: 0,
            areas: vec![SparseArea {
                offset: spec::reg::DOORBELLS,
                size: page.len() as u64 - spec::reg::DOORBELLS,
            }],
        })
    }

    fn reset(&mut self) {
        self.ctrl.hard_reset();
        // A function reset also ends the SPDM connection over Security Send/Receive.
        if let Some(s) = self.ctrl.spdm.get() {
            s.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
    }
}

impl Drop for NvmeDevice {
    fn drop(&mut self) {
        self.ctrl.stop.store(true, Ordering::SeqCst);
        self.ctrl.queues.workers.admin.wake();
        self.ctrl.queues.workers.wake_io();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in &self.ctrl.namespaces {
            let _ = ns.backend.flush();
        }
    }
}

#[cfg(test)]
mod tests;
