//! A small user-space driver of the accelerator over a vfio-user
//! [`Client`], for tests, benchmarks and tools. Its memory is a memfd
//! mapped at an IOVA with DMA_MAP (untranslated requests); with the PASID
//! extension, it also carries an [`IommuModel`] whose memory is mapped into
//! the translated space and whose page tables give PASIDs their process
//! address spaces.

use super::desc::{Completion, Descriptor, COMPLETION_SIZE, DESC_SIZE};
use super::regs::{ctrl, global, queue, QUEUE_BASE, QUEUE_STRIDE};
use std::path::Path;
use std::time::{Duration, Instant};
use vfio_user_server::client::{Client, ClientError};
use vfio_user_server::iommu::IommuModel;
use vfio_user_server::pci::{ext_cap_id, SharedMemory};
use vfio_user_server::protocol::{region, DmaProt};

/// Read-write DMA.
pub const RW: DmaProt = DmaProt {
    read: true,
    write: true,
};

/// Where a queue's ring and completion records live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSpace {
    /// Untranslated memory (the driver's memfd at its IOVA).
    Untranslated,
    /// The address space of a PASID (the IOMMU model's page tables).
    Pasid(u32),
}

/// A queue as the driver sees it.
#[derive(Debug)]
pub struct HostQueue {
    /// Queue index.
    pub index: usize,
    /// Ring address.
    pub ring: u64,
    /// Entries.
    pub size: u32,
    /// Next free slot.
    pub tail: u32,
    /// Completion record array (one 32-byte record per ring slot).
    pub records: u64,
    /// Address space of ring and records.
    pub space: RingSpace,
}

impl HostQueue {
    /// The completion record address of ring slot `slot`.
    pub fn record(&self, slot: u32) -> u64 {
        self.records + u64::from(slot) * COMPLETION_SIZE as u64
    }
}

/// The driver.
#[derive(Debug)]
pub struct AccelHost {
    /// The vfio-user connection.
    pub client: Client,
    mem: SharedMemory,
    /// IOVA of the memfd's first byte.
    pub base: u64,
    next: usize,
}

/// Driver errors.
pub type HostError = String;

fn cerr(e: ClientError) -> HostError {
    e.to_string()
}

impl AccelHost {
    /// Connects to the accelerator at `path`, maps `mem_size` bytes of
    /// memory at IOVA `base`. With `iommu`, negotiates the PASID extension
    /// (ATS, PRI, PASID DMA) and maps the model's memory into the
    /// translated space at its physical base.
    pub fn connect(
        path: &Path,
        base: u64,
        mem_size: usize,
        iommu: Option<IommuModel>,
    ) -> Result<AccelHost, HostError> {
        let mut client = Client::connect_raw(path).map_err(cerr)?;
        client
            .set_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        if iommu.is_some() {
            client
                .negotiate_with(r#""pasid":{"ats":true,"pri":true,"dma":true}"#)
                .map_err(cerr)?;
        } else {
            client.negotiate().map_err(cerr)?;
        }
        let mem = SharedMemory::new("accel-host", mem_size).map_err(|e| e.to_string())?;
        client
            .dma_map(base, mem_size as u64, 0, RW, Some(mem.fd()))
            .map_err(cerr)?;
        if let Some(m) = iommu {
            client
                .translated_dma_map(m.base(), m.size(), 0, RW, Some(m.fd()))
                .map_err(cerr)?;
            client.enable_pasid(m);
        }
        Ok(AccelHost {
            client,
            mem,
            base,
            next: 0,
        })
    }

    /// The memfd of the untranslated memory (e.g. to map it elsewhere).
    pub fn memory_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.mem.fd()
    }

    /// The IOMMU model (with the PASID extension).
    pub fn iommu(&mut self) -> &mut IommuModel {
        &mut self
            .client
            .pasid()
            .expect("the PASID extension is enabled")
            .iommu
    }

    /// Allocates `len` zeroed bytes of untranslated memory aligned to
    /// `align`; returns the IOVA.
    pub fn alloc(&mut self, len: usize, align: usize) -> u64 {
        let off = self.next.next_multiple_of(align.max(1));
        assert!(off + len <= self.mem.len(), "host memory exhausted");
        self.next = off + len;
        assert!(self.mem.write(off, &vec![0u8; len]));
        self.base + off as u64
    }

    /// Frees everything allocated.
    pub fn reset_alloc(&mut self) {
        self.next = 0;
    }

    fn off(&self, iova: u64) -> usize {
        iova.checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .unwrap_or(usize::MAX)
    }

    /// Writes memory in `space` if the range exists there; false if not.
    pub fn try_write(&mut self, space: RingSpace, addr: u64, buf: &[u8]) -> bool {
        match space {
            RingSpace::Untranslated => self.mem.write(self.off(addr), buf),
            RingSpace::Pasid(p) => self.iommu().write_va(p, addr, buf).is_ok(),
        }
    }

    /// Reads memory in `space`.
    pub fn read(&mut self, space: RingSpace, addr: u64, buf: &mut [u8]) {
        match space {
            RingSpace::Untranslated => {
                assert!(self.mem.read(self.off(addr), buf), "read out of bounds")
            }
            RingSpace::Pasid(p) => self.iommu().read_va(p, addr, buf).expect("VA read"),
        }
    }

    /// Writes memory in `space`.
    pub fn write(&mut self, space: RingSpace, addr: u64, buf: &[u8]) {
        match space {
            RingSpace::Untranslated => {
                assert!(self.mem.write(self.off(addr), buf), "write out of bounds")
            }
            RingSpace::Pasid(p) => self.iommu().write_va(p, addr, buf).expect("VA write"),
        }
    }

    /// Reads a BAR0 register.
    pub fn reg(&mut self, off: u64) -> u32 {
        self.client.read32(region::BAR0, off).unwrap_or(u32::MAX)
    }

    /// Writes a BAR0 register (posted, as QEMU sends BAR writes).
    pub fn set_reg(&mut self, off: u64, v: u32) {
        let _ = self
            .client
            .region_write_posted(region::BAR0, off, &v.to_le_bytes());
    }

    /// Reads queue `q`'s register `r`.
    pub fn qreg(&mut self, q: usize, r: u64) -> u32 {
        self.reg(QUEUE_BASE + q as u64 * QUEUE_STRIDE + r)
    }

    /// Writes queue `q`'s register `r`.
    pub fn set_qreg(&mut self, q: usize, r: u64, v: u32) {
        self.set_reg(QUEUE_BASE + q as u64 * QUEUE_STRIDE + r, v)
    }

    /// Reads a config-space dword.
    pub fn config32(&mut self, off: u64) -> u32 {
        self.client.read32(region::CONFIG, off).unwrap_or(u32::MAX)
    }

    /// Writes config space (waits for the reply).
    pub fn set_config(&mut self, off: u64, data: &[u8]) -> Result<(), HostError> {
        self.client
            .region_write(region::CONFIG, off, data)
            .map_err(cerr)
    }

    /// Offset of extended capability `id`.
    pub fn ext_cap(&mut self, id: u16) -> Option<u64> {
        let mut p = 0x100u64;
        for _ in 0..64 {
            let h = self.config32(p);
            if h & 0xffff == u32::from(id) {
                return Some(p);
            }
            p = u64::from(h >> 20);
            if p == 0 {
                return None;
            }
        }
        None
    }

    /// Enables PASID (exec + priv), ATS (STU 4 KiB) and PRI with
    /// `pri_alloc` requests, as Linux's IOMMU driver does for SVA.
    pub fn enable_translation(&mut self, pri_alloc: u32) -> Result<(), HostError> {
        let pasid = self.ext_cap(ext_cap_id::PASID).ok_or("no PASID cap")?;
        let ats = self.ext_cap(ext_cap_id::ATS).ok_or("no ATS cap")?;
        let pri = self.ext_cap(ext_cap_id::PRI).ok_or("no PRI cap")?;
        self.set_config(pasid + 6, &0x0007u16.to_le_bytes())?;
        self.set_config(ats + 6, &0x8000u16.to_le_bytes())?;
        self.set_config(pri + 0xc, &pri_alloc.to_le_bytes())?;
        self.set_config(pri + 4, &1u16.to_le_bytes())?;
        Ok(())
    }

    /// Sets up queue `q` with `entries` slots in `space` at `ring`, with
    /// completion records at `records`, and enables it (interrupts off).
    pub fn setup_queue_at(
        &mut self,
        q: usize,
        entries: u32,
        space: RingSpace,
        ring: u64,
        records: u64,
    ) -> HostQueue {
        self.set_qreg(q, queue::RING_LO, ring as u32);
        self.set_qreg(q, queue::RING_HI, (ring >> 32) as u32);
        self.set_qreg(q, queue::RING_SIZE, entries);
        let mut c = ctrl::ENABLE;
        if let RingSpace::Pasid(p) = space {
            self.set_qreg(q, queue::PASID, p);
            c |= ctrl::RING_PASID;
        }
        self.set_qreg(q, queue::CTRL, c);
        HostQueue {
            index: q,
            ring,
            size: entries,
            tail: 0,
            records,
            space,
        }
    }

    /// Sets up queue `q` with ring and records in untranslated memory.
    pub fn setup_queue(&mut self, q: usize, entries: u32) -> HostQueue {
        let ring = self.alloc(entries as usize * DESC_SIZE, 4096);
        let records = self.alloc(entries as usize * COMPLETION_SIZE, 4096);
        self.setup_queue_at(q, entries, RingSpace::Untranslated, ring, records)
    }

    /// Writes `d` into the next slot (its completion record pointed at the
    /// slot's record, zeroed first); returns the slot. Does not ring.
    pub fn push(&mut self, q: &mut HostQueue, mut d: Descriptor) -> u32 {
        let slot = q.tail;
        if d.completion == 0 {
            d.completion = q.record(slot);
        }
        // A deliberately bad record address (tests) is left alone.
        self.try_write(q.space, d.completion, &[0u8; COMPLETION_SIZE]);
        self.write(
            q.space,
            q.ring + u64::from(slot) * DESC_SIZE as u64,
            &d.encode(),
        );
        q.tail = (q.tail + 1) % q.size;
        slot
    }

    /// Rings queue `q`'s doorbell (TAIL).
    pub fn ring(&mut self, q: &HostQueue) {
        self.set_qreg(q.index, queue::TAIL, q.tail);
    }

    /// The completion record at `addr`, if written.
    pub fn completion(&mut self, space: RingSpace, addr: u64) -> Option<Completion> {
        let mut b = [0u8; COMPLETION_SIZE];
        self.read(space, addr, &mut b);
        (b[0] != 0).then(|| Completion::decode(&b))
    }

    /// Waits for the completion record at `addr`, serving the device's
    /// requests (translations, page requests) meanwhile.
    pub fn wait_record(
        &mut self,
        space: RingSpace,
        addr: u64,
        timeout: Duration,
    ) -> Result<Completion, HostError> {
        let t0 = Instant::now();
        loop {
            if let Some(c) = self.completion(space, addr) {
                return Ok(c);
            }
            if t0.elapsed() > timeout {
                return Err(format!("no completion at {addr:#x} within {timeout:?}"));
            }
            if self.client.pasid().is_some() {
                self.client
                    .serve_requests(Duration::from_millis(1))
                    .map_err(cerr)?;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Submits one descriptor and waits for its completion record.
    pub fn run(&mut self, q: &mut HostQueue, d: Descriptor) -> Result<Completion, HostError> {
        let slot = self.push(q, d);
        self.ring(q);
        let rec = if d.completion == 0 {
            q.record(slot)
        } else {
            d.completion
        };
        self.wait_record(q.space, rec, Duration::from_secs(30))
    }

    /// Device-wide counters: (descriptors, errors, bytes, page requests).
    pub fn counters(&mut self) -> (u64, u64, u64, u64) {
        let r64 = |h: &mut Self, o: u64| u64::from(h.reg(o)) | u64::from(h.reg(o + 4)) << 32;
        (
            r64(self, global::DESCRIPTORS),
            r64(self, global::ERRORS),
            r64(self, global::BYTES),
            r64(self, global::PAGE_REQUESTS),
        )
    }
}
