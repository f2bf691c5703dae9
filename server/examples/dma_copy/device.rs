//! The DMA-copy example device: a PCIe endpoint that copies a block of client
//! memory to another place and signals completion with MSI-X (or MSI, or
//! INTx). It exercises every part of the `vfio-user-server` API: a capability
//! chain with extended capabilities, BAR handlers, an mmappable BAR with a
//! sparse-mmap layout, guest memory from worker threads (zero-copy through fd
//! maps, DMA_READ/WRITE messages otherwise) and interrupts.
//!
//! The register map (BAR0) is in `regs.rs`, shared with guest-side drivers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vfio_user_server::dma::{Access, GuestMemory};
use vfio_user_server::irq::{Interrupts, IrqInfo};
use vfio_user_server::pci::{
    ext_cap_id, Bar, ConfigBuilder, ConfigSpace, ExtCap, MsixCap, PciIds, PcieCap, PortType,
    SharedMemory,
};
use vfio_user_server::protocol::SparseArea;
use vfio_user_server::{Device, DeviceContext, DeviceError, RegionMmap};

#[path = "regs.rs"]
mod regs;
pub use regs::*;

/// Register state shared with the copy worker.
#[derive(Debug, Default)]
struct Regs {
    src: AtomicU64,
    dst: AtomicU64,
    len: AtomicU32,
    ctrl: AtomicU32,
    status: AtomicU32,
    error: AtomicU32,
    vector: AtomicU32,
    completed: AtomicU32,
    bytes: AtomicU64,
    scratch: AtomicU32,
    generation: AtomicU64,
}

impl Regs {
    fn clear(&self) {
        for r in [
            &self.len,
            &self.ctrl,
            &self.status,
            &self.error,
            &self.vector,
            &self.completed,
            &self.scratch,
        ] {
            r.store(0, Ordering::SeqCst);
        }
        for r in [&self.src, &self.dst, &self.bytes] {
            r.store(0, Ordering::SeqCst);
        }
    }
}

struct Job {
    /// Reset generation the job was issued in; stale jobs are dropped.
    generation: u64,
    src: u64,
    dst: u64,
    len: u32,
}

/// The DMA-copy device.
pub struct DmaCopy {
    ctx: DeviceContext,
    config: ConfigSpace,
    regs: Arc<Regs>,
    ram: Arc<SharedMemory>,
    jobs: Option<Sender<Job>>,
    /// Held by the worker while it touches client memory; reset takes it.
    busy: Arc<Mutex<()>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DmaCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaCopy").field("regs", &self.regs).finish()
    }
}

/// The Device Serial Number of [`DmaCopy::new`].
pub const DEFAULT_SERIAL: u64 = 0x7d0c_0000_0000_0001;

/// Builds the example's configuration space; `extra` extended capabilities
/// (a DOE mailbox, say) follow the built-in DSN (with `serial`) and VSEC
/// ones; `tee` sets DEVCAP.TEE (the function supports TDISP).
pub fn config_space(
    port_type: PortType,
    tee: bool,
    serial: u64,
    extra: Vec<ExtCap>,
) -> ConfigSpace {
    let ids = PciIds {
        vendor: VENDOR_ID,
        device: DEVICE_ID,
        subsystem_vendor: VENDOR_ID,
        subsystem: 0x0001,
        class: 0x12_00_00, // processing accelerator
        revision: 1,
    };
    let mut b = ConfigBuilder::new(ids)
        .bar(0, Bar::mem32(0x1000))
        .bar(1, Bar::mem32(0x1000))
        .bar(2, Bar::mem64(BAR2_SIZE as u64, true))
        .power_management()
        .msi(1)
        .msix(MsixCap {
            vectors: MSIX_VECTORS,
            table_bar: 1,
            table_offset: 0,
            pba_bar: 1,
            pba_offset: 0x800,
        })
        .pcie(PcieCap {
            port_type,
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
        })
        .ext_capability(ExtCap {
            // Vendor-specific: VSEC ID 1, rev 1, length 16; one RW scratch dword.
            id: ext_cap_id::VSEC,
            version: 1,
            body: [0x0101_0001u32, 0, 0]
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect(),
            rw: [0u32, 0xffff_ffff, 0]
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect(),
            handler: None,
        });
    for cap in extra {
        b = b.ext_capability(cap);
    }
    b.build().expect("the example's layout is valid")
}

impl DmaCopy {
    /// Creates the device (Endpoint behind a root port, or RCiEP on pcie.0).
    pub fn new(port_type: PortType) -> std::io::Result<Self> {
        Self::with_capabilities(port_type, false, DEFAULT_SERIAL, Vec::new())
    }

    /// Creates the device with DEVCAP.TEE as given, its Device Serial
    /// Number, and additional extended capabilities.
    pub fn with_capabilities(
        port_type: PortType,
        tee: bool,
        serial: u64,
        extra: Vec<ExtCap>,
    ) -> std::io::Result<Self> {
        let ctx = DeviceContext::new(&IrqInfo::pci(1, u32::from(MSIX_VECTORS)));
        let mut dev = DmaCopy {
            ctx,
            config: config_space(port_type, tee, serial, extra),
            regs: Arc::new(Regs::default()),
            ram: Arc::new(SharedMemory::new("dma-copy-bar2", BAR2_SIZE)?),
            jobs: None,
            busy: Arc::new(Mutex::new(())),
            worker: None,
        };
        dev.start_worker();
        Ok(dev)
    }

    fn start_worker(&mut self) {
        let (tx, rx) = channel::<Job>();
        let regs = Arc::clone(&self.regs);
        let mem = Arc::clone(&self.ctx.memory);
        let irqs = Arc::clone(&self.ctx.irqs);
        let busy = Arc::clone(&self.busy);
        self.jobs = Some(tx);
        self.worker = Some(
            std::thread::Builder::new()
                .name("dma-copy".into())
                .spawn(move || {
                    for job in rx {
                        let guard = busy.lock().unwrap_or_else(|p| p.into_inner());
                        if job.generation != regs.generation.load(Ordering::SeqCst) {
                            continue; // issued before a reset
                        }
                        let result = copy(&mem, &job);
                        match result {
                            Ok(()) => {
                                regs.completed.fetch_add(1, Ordering::SeqCst);
                                regs.bytes.fetch_add(u64::from(job.len), Ordering::SeqCst);
                                regs.error.store(0, Ordering::SeqCst);
                                regs.status.store(status::DONE, Ordering::SeqCst);
                            }
                            Err(code) => {
                                regs.error.store(code, Ordering::SeqCst);
                                regs.status.store(status::ERROR, Ordering::SeqCst);
                            }
                        }
                        drop(guard);
                        if regs.ctrl.load(Ordering::SeqCst) & 1 != 0 {
                            raise(&irqs, regs.vector.load(Ordering::SeqCst));
                        }
                    }
                })
                .expect("spawn the copy worker"),
        );
    }

    fn doorbell(&self) {
        let r = &self.regs;
        if r.status.load(Ordering::SeqCst) & status::BUSY != 0 {
            r.error.store(error::BUSY, Ordering::SeqCst);
            r.status.fetch_or(status::ERROR, Ordering::SeqCst);
            return;
        }
        let len = r.len.load(Ordering::SeqCst);
        if len == 0 || len > MAX_LEN {
            r.error.store(error::BAD_LENGTH, Ordering::SeqCst);
            r.status.store(status::ERROR, Ordering::SeqCst);
            if r.ctrl.load(Ordering::SeqCst) & 1 != 0 {
                raise(&self.ctx.irqs, r.vector.load(Ordering::SeqCst));
            }
            return;
        }
        r.status.store(status::BUSY, Ordering::SeqCst);
        let job = Job {
            generation: r.generation.load(Ordering::SeqCst),
            src: r.src.load(Ordering::SeqCst),
            dst: r.dst.load(Ordering::SeqCst),
            len,
        };
        if let Some(tx) = &self.jobs {
            let _ = tx.send(job);
        }
    }
}

/// Raises `vector` by whatever the client enabled (MSI-X, MSI, INTx).
fn raise(irqs: &Interrupts, vector: u32) {
    if !irqs.raise(vector) {
        log::debug!("completion interrupt {vector} not delivered: no eventfd assigned");
    }
}

/// Copies one job: zero-copy between fd-backed windows, otherwise through a
/// bounce buffer (DMA_READ/DMA_WRITE messages for windows without an fd).
fn copy(mem: &GuestMemory, job: &Job) -> Result<(), u32> {
    let len = job.len as usize;
    let direct = mem.with_slice(job.src, len, Access::Read, |src| {
        mem.with_slice(job.dst, len, Access::Write, |dst| src.copy_to_slice(&dst))
    });
    if let Ok(Ok(Ok(()))) = direct {
        return Ok(());
    }
    let mut buf = vec![0u8; len];
    mem.read(job.src, &mut buf).map_err(|e| {
        log::warn!("dma-copy: reading {:#x}+{len}: {e}", job.src);
        error::SOURCE_FAULT
    })?;
    mem.write(job.dst, &buf).map_err(|e| {
        log::warn!("dma-copy: writing {:#x}+{len}: {e}", job.dst);
        error::DEST_FAULT
    })
}

fn get(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn put(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
}

/// Merges a partial write of `data` at byte `shift` into `old`.
fn merge(old: u64, shift: u64, data: &[u8]) -> u64 {
    let mut b = old.to_le_bytes();
    for (i, &v) in data.iter().enumerate() {
        if let Some(slot) = b.get_mut(shift as usize + i) {
            *slot = v;
        }
    }
    u64::from_le_bytes(b)
}

impl Device for DmaCopy {
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
        let bad = DeviceError::BadAccess {
            region,
            offset,
            len: data.len(),
        };
        match region {
            0 => {
                if data.len() > 8 || (offset % 4 != 0 && data.len() >= 4) {
                    return Err(bad);
                }
                let r = &self.regs;
                let aligned = offset & !7;
                let (lo, hi): (u64, u64) = match aligned {
                    0x00 => (u64::from(ID_VALUE), u64::from(VERSION_VALUE)),
                    0x08 => (r.src.load(Ordering::SeqCst), 0),
                    0x10 => (r.dst.load(Ordering::SeqCst), 0),
                    0x18 => (
                        u64::from(r.len.load(Ordering::SeqCst)),
                        u64::from(r.ctrl.load(Ordering::SeqCst)),
                    ),
                    0x20 => (0, u64::from(r.status.load(Ordering::SeqCst))),
                    0x28 => (
                        u64::from(r.error.load(Ordering::SeqCst)),
                        u64::from(r.vector.load(Ordering::SeqCst)),
                    ),
                    0x30 => (u64::from(r.completed.load(Ordering::SeqCst)), 0),
                    0x38 => (r.bytes.load(Ordering::SeqCst), 0),
                    0x40 => (u64::from(r.scratch.load(Ordering::SeqCst)), 0),
                    _ => (0, 0),
                };
                // Registers are 64-bit wide at 8-byte slots, except where two
                // 32-bit registers share a slot (lo | hi << 32).
                let wide = matches!(aligned, 0x08 | 0x10 | 0x38);
                let slot = if wide {
                    lo
                } else {
                    (lo & 0xffff_ffff) | (hi << 32)
                };
                let shift = (offset - aligned) * 8;
                put(data, slot.checked_shr(shift as u32).unwrap_or(0));
                Ok(())
            }
            1 => {
                // Only the PBA (at 0x800) reaches us; nothing is ever pending
                // while vectors are unmasked, QEMU keeps the table.
                data.fill(0);
                Ok(())
            }
            2 => {
                if self.ram.read(offset as usize, data) {
                    Ok(())
                } else {
                    Err(bad)
                }
            }
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let bad = DeviceError::BadAccess {
            region,
            offset,
            len: data.len(),
        };
        match region {
            0 => {
                if data.len() > 8 {
                    return Err(bad);
                }
                let r = &self.regs;
                let v = get(data);
                match offset {
                    0x08..=0x0f => {
                        let old = r.src.load(Ordering::SeqCst);
                        r.src
                            .store(merge(old, offset - 0x08, data), Ordering::SeqCst);
                    }
                    0x10..=0x17 => {
                        let old = r.dst.load(Ordering::SeqCst);
                        r.dst
                            .store(merge(old, offset - 0x10, data), Ordering::SeqCst);
                    }
                    reg::LEN => r.len.store(v as u32, Ordering::SeqCst),
                    reg::CTRL => r.ctrl.store(v as u32 & 1, Ordering::SeqCst),
                    reg::DOORBELL if v & 1 != 0 => self.doorbell(),
                    reg::STATUS => {
                        let clear = v as u32 & (status::DONE | status::ERROR);
                        r.status.fetch_and(!clear, Ordering::SeqCst);
                        if clear & status::ERROR != 0 {
                            r.error.store(0, Ordering::SeqCst);
                        }
                        // INTx is level-triggered: with nothing left to
                        // report the device stops asserting it, so an
                        // UNMASK does not fire it again.
                        let left = r.status.load(Ordering::SeqCst);
                        if left & (status::DONE | status::ERROR) == 0 {
                            self.ctx.irqs.deassert(0, 0);
                        }
                    }
                    reg::VECTOR => r.vector.store(v as u32, Ordering::SeqCst),
                    reg::SCRATCH => r.scratch.store(v as u32, Ordering::SeqCst),
                    _ => {} // read-only or reserved: ignored, as hardware does
                }
                Ok(())
            }
            1 => Ok(()),
            2 => {
                if self.ram.write(offset as usize, data) {
                    Ok(())
                } else {
                    Err(bad)
                }
            }
            _ => Err(DeviceError::NoSuchRegion(region)),
        }
    }

    fn region_mmap(&self, region: u32) -> Option<RegionMmap<'_>> {
        (region == 2).then(|| RegionMmap {
            fd: self.ram.fd(),
            offset: 0,
            areas: vec![SparseArea {
                offset: 0x1000,
                size: (BAR2_SIZE - 0x1000) as u64,
            }],
        })
    }

    fn reset(&mut self) {
        // Wait for a copy in flight, then clear the registers.
        let _g = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        self.regs.clear();
        self.regs.generation.fetch_add(1, Ordering::SeqCst);
        self.ctx.irqs.deassert(0, 0);
    }
}

impl Drop for DmaCopy {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
