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
pub mod ctrl;
pub mod dptr;
pub mod host;
pub mod io;
pub mod namespace;
pub mod options;
pub mod security;
pub mod spec;
pub mod state;

pub use admin::{DEVICE_ID, VENDOR_ID};
pub use options::{NvmeArgs, NvmeConfig};
pub use security::NvmeSecurity;

use ctrl::{Ctrl, Scratch, Snapshot};
use log::info;
use namespace::Namespace;
use options::DoorbellMode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_user_server::irq::IrqInfo;
use vfio_user_server::pci::{
    ext_cap_id, Bar, ConfigBuilder, ConfigSpace, ExtCap, MsixCap, PciIds, PcieCap, PortType,
};
use vfio_user_server::protocol::SparseArea;
use vfio_user_server::{Device, DeviceContext, DeviceError, RegionMmap};

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
) -> ConfigSpace {
    let ids = PciIds {
        vendor: VENDOR_ID,
        device: DEVICE_ID,
        subsystem_vendor: VENDOR_ID,
        subsystem: 0x0001,
        class: 0x01_08_02, // mass storage, NVM, NVM Express I/O controller
        revision: 2,
    };
    let (table, pba, msix_size) = msix_layout(vectors);
    let serial = cfg.dsn;
    let mut b = ConfigBuilder::new(ids)
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
        .unwrap_or_else(|e| panic!("NVMe configuration space layout: {e}"))
}

impl NvmeDevice {
    /// Opens the namespaces and starts the controller's threads.
    pub fn new(cfg: NvmeConfig, port: PortType) -> std::io::Result<NvmeDevice> {
        Self::new_secure(cfg, port, NvmeSecurity::default())
    }

    /// Like [`NvmeDevice::new`], with security features (DOE mailbox with
    /// CMA/SPDM, DEVCAP.TEE, SPDM over Security Send/Receive).
    pub fn new_secure(
        cfg: NvmeConfig,
        port: PortType,
        security: NvmeSecurity,
    ) -> std::io::Result<NvmeDevice> {
        let mut namespaces = Vec::new();
        for (i, ns) in cfg.namespaces.iter().enumerate() {
            let n = Namespace::open(i as u32 + 1, ns, &cfg)?;
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
    ) -> std::io::Result<NvmeDevice> {
        Self::build(cfg, port, namespaces, NvmeSecurity::default())
    }

    fn build(
        cfg: NvmeConfig,
        port: PortType,
        namespaces: Vec<Arc<Namespace>>,
        security: NvmeSecurity,
    ) -> std::io::Result<NvmeDevice> {
        let vectors = cfg.max_queues + 1;
        let bar0 = bar0_size(cfg.max_queues, cfg.dstrd);
        let ctx = DeviceContext::new(&IrqInfo::pci(1, u32::from(vectors)));
        let config = config_space(&cfg, port, vectors, bar0, security.tee, security.ext_caps);
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
        let ctrl = Arc::new(Ctrl::new(
            cfg,
            namespaces,
            Arc::clone(&ctx.memory),
            Arc::clone(&ctx.irqs),
            bar0 as usize,
        )?);
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
                .spawn(move || admin_thread(&c))?;
            let _ = ctrl.admin.thread.set(t.thread().clone());
            threads.push(t);
        }
        for w in 0..ctrl.io.len() {
            let c = Arc::clone(&ctrl);
            let t = std::thread::Builder::new()
                .name(format!("nvme-io{w}"))
                .spawn(move || io_thread(&c, w))?;
            let _ = ctrl.io[w].thread.set(t.thread().clone());
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
        self.ctrl.efficiency_line()
    }
}

/// How long a polling thread keeps spinning after its last work.
const POLL_SPIN: Duration = Duration::from_millis(2);
/// How long a polling thread sleeps between looks once idle.
const POLL_IDLE_SLEEP: Duration = Duration::from_micros(200);
/// How often a worker looks at the shadow doorbells while the host is active.
const SHADOW_POLL_INTERVAL: Duration = Duration::from_micros(25);

fn idle_wait(poll: bool, idle_since: Instant, deadline: Option<Instant>) {
    let now = Instant::now();
    let until_deadline = deadline.map(|d| d.saturating_duration_since(now));
    if poll {
        if now.duration_since(idle_since) < POLL_SPIN {
            std::thread::yield_now();
        } else {
            let d = until_deadline.map_or(POLL_IDLE_SLEEP, |d| d.min(POLL_IDLE_SLEEP));
            std::thread::park_timeout(d);
        }
    } else {
        match until_deadline {
            Some(d) => std::thread::park_timeout(d),
            None => std::thread::park(),
        }
    }
}

fn admin_thread(c: &Ctrl) {
    let mut sc = Scratch::default();
    let poll = c.cfg.doorbells == DoorbellMode::Poll;
    let mut idle_since = Instant::now();
    while !c.stop.load(Ordering::SeqCst) {
        let n = c.admin_round(&mut sc);
        if n > 0 {
            idle_since = Instant::now();
            continue;
        }
        // A polled admin queue is looked at less eagerly than I/O queues.
        idle_wait(
            poll,
            idle_since.checked_sub(POLL_SPIN).unwrap_or(idle_since),
            None,
        );
    }
}

fn io_thread(c: &Ctrl, w: usize) {
    // Short sleeps (the shadow-buffer and doorbell-page polls) should be
    // short: the default 50 µs timer slack would triple them.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let mut sc = Scratch::default();
    let mut snap = Snapshot::default();
    let poll = c.cfg.doorbells == DoorbellMode::Poll;
    let window = Duration::from_micros(c.cfg.shadow_poll_us);
    let mut idle_since = Instant::now();
    let mut active_at = Instant::now();
    while !c.stop.load(Ordering::SeqCst) {
        // With shadow doorbells, a worker that ran out of work keeps
        // watching the shadow buffer while the host is active (it posted
        // completions or consumed some within the window) before it
        // publishes its event indexes (asking the host to ring again) and
        // sleeps: submissions that follow completions then cost no doorbell
        // write, at the price of a worker waking every SHADOW_POLL_INTERVAL.
        let shadow = c.shadow_active();
        let arm = !shadow || active_at.elapsed() >= window;
        let (n, deadline, host_moved) = c.io_round(w, &mut snap, &mut sc, arm);
        if n > 0 || host_moved {
            active_at = Instant::now();
        }
        if n > 0 {
            idle_since = Instant::now();
            continue;
        }
        if !arm {
            let d = deadline.map_or(SHADOW_POLL_INTERVAL, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(SHADOW_POLL_INTERVAL)
            });
            std::thread::park_timeout(d);
            continue;
        }
        idle_wait(poll, idle_since, deadline);
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
        let page = self.ctrl.doorbell_page.as_ref()?;
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
        self.ctrl.admin.wake();
        for w in &self.ctrl.io {
            w.wake();
        }
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
