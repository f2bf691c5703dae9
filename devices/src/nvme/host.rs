//! A small synchronous user-space NVMe host driver, for tests, benchmarks
//! and tools: it drives a controller through BAR0 register accesses (over a
//! vfio-user [`Client`], or directly on an [`NvmeDevice`]) with its queues
//! and buffers in a memfd it shares with the controller as "guest memory".
//!
//! It is deliberately simple (bump-allocated DMA memory, polled
//! completions), but does what Linux does where it matters: admin queue
//! setup, Identify, Number of Queues, queue creation, PRP lists, and
//! optionally shadow doorbells with event indexes.

use super::spec::{admin, cc, csts, io, reg, Command, Completion, Status, CQE_SIZE, SQE_SIZE};
use super::NvmeDevice;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};
use vfio_user_server::client::Client;
use vfio_user_server::pci::SharedMemory;
use vfio_user_server::protocol::DmaProt;
use vfio_user_server::Device;

/// What went wrong driving the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A command did not complete in time.
    #[error("no completion{} on queue {qid} (CSTS {csts:#x})", cid.map_or(String::new(), |c| format!(" for CID {c}")))]
    NoCompletion {
        /// Queue.
        qid: u16,
        /// The command waited for, if one.
        cid: Option<u16>,
        /// CSTS at the time.
        csts: u32,
    },
    /// A command completed with an error status.
    #[error("{what} opcode {opcode:#04x} failed: {status}")]
    Failed {
        /// Admin or I/O.
        what: &'static str,
        /// Opcode.
        opcode: u8,
        /// Status.
        status: Status,
    },
    /// The controller reports a fatal status.
    #[error("controller fatal status (CSTS {csts:#x})")]
    Fatal {
        /// CSTS.
        csts: u32,
    },
    /// CSTS did not reach the wanted state in time.
    #[error("CSTS {csts:#x}: timed out waiting for {want:#x}/{mask:#x}")]
    NotReady {
        /// CSTS.
        csts: u32,
        /// Bits looked at.
        mask: u32,
        /// Value wanted.
        want: u32,
    },
}

/// Register access to a controller's BAR0.
pub trait Bar0 {
    /// Reads a 32-bit register.
    fn read_reg32(&mut self, off: u64) -> u32;
    /// Writes a 32-bit register (doorbells: posted where the transport can).
    fn write_reg32(&mut self, off: u64, v: u32);
    /// Reads a 64-bit register.
    fn read_reg64(&mut self, off: u64) -> u64 {
        u64::from(self.read_reg32(off)) | (u64::from(self.read_reg32(off + 4)) << 32)
    }
    /// Writes a 64-bit register (low dword first).
    fn write_reg64(&mut self, off: u64, v: u64) {
        self.write_reg32(off, v as u32);
        self.write_reg32(off + 4, (v >> 32) as u32);
    }
}

/// BAR0 through a vfio-user client: reads wait for the reply, writes are
/// posted (as QEMU sends memory-BAR writes).
impl Bar0 for Client {
    fn read_reg32(&mut self, off: u64) -> u32 {
        Client::read32(self, 0, off).unwrap_or(u32::MAX)
    }
    fn write_reg32(&mut self, off: u64, v: u32) {
        let _ = self.region_write_posted(0, off, &v.to_le_bytes());
    }
}

/// BAR0 of an in-process device.
impl Bar0 for NvmeDevice {
    fn read_reg32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.region_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn write_reg32(&mut self, off: u64, v: u32) {
        let _ = self.region_write(0, off, &v.to_le_bytes());
    }
}

/// Host memory the controller may DMA to: a memfd at IOVA `base`, with a
/// bump allocator of page-aligned buffers.
#[derive(Debug)]
pub struct HostMemory {
    map: SharedMemory,
    /// IOVA of the first byte.
    pub base: u64,
    next: usize,
}

impl HostMemory {
    /// `len` bytes at IOVA `base`.
    pub fn new(base: u64, len: usize) -> std::io::Result<HostMemory> {
        Ok(HostMemory {
            map: SharedMemory::new("nvme-host", len)?,
            base,
            next: 0,
        })
    }

    /// The memfd (for DMA_MAP).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Allocates `len` zeroed bytes aligned to `align` (a power of two);
    /// returns the IOVA.
    pub fn alloc(&mut self, len: usize, align: usize) -> u64 {
        let off = self.next.next_multiple_of(align);
        assert!(off + len <= self.len(), "host memory exhausted");
        self.next = off + len;
        assert!(self.map.write(off, &vec![0u8; len]));
        self.base + off as u64
    }

    fn off(&self, iova: u64) -> usize {
        (iova - self.base) as usize
    }

    /// Copies memory at `iova` into `buf`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) {
        assert!(
            self.map.read(self.off(iova), buf),
            "host read out of bounds"
        );
    }

    /// Copies `buf` to `iova`.
    pub fn write(&self, iova: u64, buf: &[u8]) {
        assert!(
            self.map.write(self.off(iova), buf),
            "host write out of bounds"
        );
    }

    /// Reads a u32 (one aligned load).
    pub fn read_u32(&self, iova: u64) -> u32 {
        self.map.read_u32(self.off(iova)).unwrap_or(0)
    }

    /// Writes a u32.
    pub fn write_u32(&self, iova: u64, v: u32) {
        self.write(iova, &v.to_le_bytes());
    }

    /// Maps this memory into the controller through a vfio-user client.
    pub fn dma_map(&self, c: &mut Client) -> Result<(), vfio_user_server::client::ClientError> {
        c.dma_map(
            self.base,
            self.len() as u64,
            0,
            DmaProt {
                read: true,
                write: true,
            },
            Some(self.map.fd().as_fd()),
        )
    }
}

/// A queue pair as the host sees it.
#[derive(Debug, Clone)]
pub struct HostQueue {
    /// Queue ID.
    pub qid: u16,
    /// SQ entries.
    pub size: u32,
    /// CQ entries.
    pub cq_size: u32,
    /// SQ base IOVA.
    pub sq: u64,
    /// CQ base IOVA.
    pub cq: u64,
    /// Next SQ slot.
    pub tail: u32,
    /// Next CQ slot to look at.
    pub head: u32,
    /// Expected phase tag.
    pub phase: bool,
    next_cid: u16,
    /// Tail value the controller was last told.
    last_rung: u32,
}

impl HostQueue {
    fn new(qid: u16, size: u32, cq_size: u32, sq: u64, cq: u64) -> HostQueue {
        HostQueue {
            qid,
            size,
            cq_size,
            sq,
            cq,
            tail: 0,
            head: 0,
            phase: true,
            next_cid: 0,
            last_rung: 0,
        }
    }
}

/// Shadow doorbell buffers (Doorbell Buffer Config).
#[derive(Debug, Clone, Copy)]
pub struct ShadowBuffers {
    /// Shadow doorbell page.
    pub dbs: u64,
    /// Event index page.
    pub eis: u64,
}

/// Counters of what the driver did.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStats {
    /// Doorbell register writes.
    pub doorbell_writes: u64,
    /// Doorbell updates that only went to the shadow buffer.
    pub shadow_only: u64,
}

/// The driver.
#[derive(Debug)]
pub struct HostDriver<B: Bar0> {
    /// Register access.
    pub bar: B,
    /// DMA memory.
    pub mem: HostMemory,
    /// Admin queue.
    pub admin: HostQueue,
    /// I/O queues (index 0 is qid 1).
    pub io: Vec<HostQueue>,
    /// Doorbell stride in bytes.
    pub stride: u64,
    /// CAP.MQES + 1.
    pub max_entries: u32,
    /// Memory page size.
    pub page: u64,
    /// Shadow doorbells in use.
    pub shadow: Option<ShadowBuffers>,
    /// Counters.
    pub stats: HostStats,
    /// Completions timeout.
    pub timeout: Duration,
}

/// Logical block size used by the helpers.
pub const BLOCK: usize = 512;

fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

impl<B: Bar0> HostDriver<B> {
    /// Resets and enables the controller with a `admin_entries` admin queue.
    pub fn enable(
        bar: B,
        mut mem: HostMemory,
        admin_entries: u32,
    ) -> Result<HostDriver<B>, HostError> {
        let mut bar = bar;
        let cap = bar.read_reg64(reg::CAP);
        let stride = 4u64 << ((cap >> 32) & 0xf);
        let max_entries = (cap & 0xffff) as u32 + 1;
        bar.write_reg32(reg::CC, 0);
        wait_csts(&mut bar, csts::RDY, 0)?;
        let asq = mem.alloc(admin_entries as usize * SQE_SIZE, 4096);
        let acq = mem.alloc(admin_entries as usize * CQE_SIZE, 4096);
        bar.write_reg32(reg::AQA, ((admin_entries - 1) << 16) | (admin_entries - 1));
        bar.write_reg64(reg::ASQ, asq);
        bar.write_reg64(reg::ACQ, acq);
        let ccv = cc::EN | (6 << 16) | (4 << 20);
        bar.write_reg32(reg::CC, ccv);
        wait_csts(&mut bar, csts::RDY, csts::RDY)?;
        Ok(HostDriver {
            bar,
            mem,
            admin: HostQueue::new(0, admin_entries, admin_entries, asq, acq),
            io: Vec::new(),
            stride,
            max_entries,
            page: 4096,
            shadow: None,
            stats: HostStats::default(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Controller reset (CC.EN 1 -> 0 -> 1) with memory page size
    /// 2^(12 + `mps`); the admin queue starts over, I/O queues are gone.
    pub fn reenable(&mut self, mps: u32) -> Result<(), HostError> {
        self.bar.write_reg32(reg::CC, 0);
        wait_csts(&mut self.bar, csts::RDY, 0)?;
        let a = &self.admin;
        self.admin = HostQueue::new(0, a.size, a.cq_size, a.sq, a.cq);
        self.io.clear();
        self.shadow = None;
        self.page = 1 << (12 + mps);
        self.bar
            .write_reg32(reg::CC, cc::EN | (mps << 7) | (6 << 16) | (4 << 20));
        wait_csts(&mut self.bar, csts::RDY, csts::RDY)
    }

    fn queue(&mut self, qid: u16) -> &mut HostQueue {
        if qid == 0 {
            &mut self.admin
        } else {
            &mut self.io[usize::from(qid) - 1]
        }
    }

    /// Writes `cmd` into queue `qid` without ringing the doorbell; returns
    /// the CID assigned.
    pub fn push(&mut self, qid: u16, mut cmd: Command) -> u16 {
        let q = self.queue(qid);
        cmd.cid = q.next_cid;
        q.next_cid = q.next_cid.wrapping_add(1);
        let at = q.sq + u64::from(q.tail) * SQE_SIZE as u64;
        q.tail = (q.tail + 1) % q.size;
        let cid = cmd.cid;
        let bytes = cmd.to_bytes();
        self.mem.write(at, &bytes);
        cid
    }

    /// Tells the controller about every pushed command of `qid`.
    pub fn ring(&mut self, qid: u16) {
        let stride = self.stride;
        let shadow = self.shadow;
        let q = self.queue(qid);
        let (tail, old) = (q.tail, q.last_rung);
        q.last_rung = tail;
        let off = 2 * u64::from(qid) * stride;
        if let (Some(sh), true) = (shadow, qid != 0) {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            self.mem.write_u32(sh.dbs + off, tail);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let ei = self.mem.read_u32(sh.eis + off);
            if !need_event(ei as u16, tail as u16, old as u16) {
                self.stats.shadow_only += 1;
                return;
            }
        }
        self.stats.doorbell_writes += 1;
        self.bar.write_reg32(reg::DOORBELLS + off, tail);
    }

    /// Submits one command and rings.
    pub fn submit(&mut self, qid: u16, cmd: Command) -> u16 {
        let cid = self.push(qid, cmd);
        self.ring(qid);
        cid
    }

    /// The next completion of `qid`, if one is posted (updates the head
    /// and the CQ head doorbell).
    pub fn poll(&mut self, qid: u16) -> Option<Completion> {
        let q = self.queue(qid).clone();
        let at = q.cq + u64::from(q.head) * CQE_SIZE as u64;
        let mut b = [0u8; CQE_SIZE];
        self.mem.read(at, &mut b);
        let (_, phase) = Completion::parse(&b);
        if phase != q.phase {
            return None;
        }
        // The phase tag is written last: read the entry again after seeing it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        self.mem.read(at, &mut b);
        let (c2, _) = Completion::parse(&b);
        let q = self.queue(qid);
        let old = q.head;
        q.head = (q.head + 1) % q.cq_size;
        if q.head == 0 {
            q.phase = !q.phase;
        }
        let head = q.head;
        let off = (2 * u64::from(qid) + 1) * self.stride;
        if let (Some(sh), true) = (self.shadow, qid != 0) {
            self.mem.write_u32(sh.dbs + off, head);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let ei = self.mem.read_u32(sh.eis + off);
            if !need_event(ei as u16, head as u16, old as u16) {
                self.stats.shadow_only += 1;
                return Some(c2);
            }
        }
        self.stats.doorbell_writes += 1;
        self.bar.write_reg32(reg::DOORBELLS + off, head);
        Some(c2)
    }

    /// Waits for the completion of `cid` on `qid` (other completions seen
    /// meanwhile are dropped).
    pub fn wait(&mut self, qid: u16, cid: u16) -> Result<Completion, HostError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(c) = self.poll(qid) {
                if c.cid == cid {
                    return Ok(c);
                }
                continue;
            }
            if Instant::now() > deadline {
                let st = self.bar.read_reg32(reg::CSTS);
                return Err(HostError::NoCompletion {
                    qid,
                    cid: Some(cid),
                    csts: st,
                });
            }
            std::thread::yield_now();
        }
    }

    /// Waits for any completion on `qid`.
    pub fn wait_any(&mut self, qid: u16) -> Result<Completion, HostError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(c) = self.poll(qid) {
                return Ok(c);
            }
            if Instant::now() > deadline {
                let csts = self.bar.read_reg32(reg::CSTS);
                return Err(HostError::NoCompletion {
                    qid,
                    cid: None,
                    csts,
                });
            }
            std::thread::yield_now();
        }
    }

    /// Runs an admin command to completion.
    pub fn admin_cmd(&mut self, cmd: Command) -> Result<Completion, HostError> {
        let cid = self.submit(0, cmd);
        self.wait(0, cid)
    }

    /// Runs an admin command and insists on success.
    pub fn admin_ok(&mut self, cmd: Command) -> Result<Completion, HostError> {
        let c = self.admin_cmd(cmd)?;
        if !Status(c.status).is_success() {
            return Err(HostError::Failed {
                what: "admin command",
                opcode: cmd.opcode,
                status: Status(c.status),
            });
        }
        Ok(c)
    }

    /// Identify with `cns` for `nsid` into a fresh 4 KiB buffer.
    pub fn identify(&mut self, cns: u8, nsid: u32, cdw11: u32) -> Result<Vec<u8>, HostError> {
        let buf = self.mem.alloc(4096, 4096);
        self.admin_ok(Command {
            opcode: admin::IDENTIFY,
            nsid,
            prp1: buf,
            cdw: [u32::from(cns), cdw11, 0, 0, 0, 0],
            ..Default::default()
        })?;
        let mut out = vec![0u8; 4096];
        self.mem.read(buf, &mut out);
        Ok(out)
    }

    /// Set Features Number of Queues, then creates `n` queue pairs of
    /// `entries` entries, pair `i` on MSI-X vector `i` (interrupts on).
    /// Returns the number of queues the controller allocated.
    pub fn create_io_queues(&mut self, n: u16, entries: u32) -> Result<u16, HostError> {
        let n = n.min(self.set_queue_count(n)?);
        for qid in 1..=n {
            self.create_pair(qid, entries, entries, qid)?;
        }
        Ok(n)
    }

    /// Set Features Number of Queues; returns the pairs granted.
    pub fn set_queue_count(&mut self, n: u16) -> Result<u16, HostError> {
        let c = self.admin_ok(Command {
            opcode: admin::SET_FEATURES,
            cdw: [
                u32::from(super::spec::feat::NUM_QUEUES),
                u32::from(n - 1) | (u32::from(n - 1) << 16),
                0,
                0,
                0,
                0,
            ],
            ..Default::default()
        })?;
        Ok(((c.dw0 & 0xffff) + 1).min((c.dw0 >> 16) + 1) as u16)
    }

    /// Creates I/O CQ `qid` (`cq_entries`, MSI-X `vector`) and SQ `qid`
    /// (`sq_entries`) on it. Queue IDs must be created in order 1, 2, ...
    pub fn create_pair(
        &mut self,
        qid: u16,
        sq_entries: u32,
        cq_entries: u32,
        vector: u16,
    ) -> Result<(), HostError> {
        let page = self.page as usize;
        let cq = self.mem.alloc(cq_entries as usize * CQE_SIZE, page);
        let sq = self.mem.alloc(sq_entries as usize * SQE_SIZE, page);
        self.admin_ok(Command {
            opcode: admin::CREATE_CQ,
            prp1: cq,
            cdw: [
                u32::from(qid) | ((cq_entries - 1) << 16),
                0b11 | (u32::from(vector) << 16),
                0,
                0,
                0,
                0,
            ],
            ..Default::default()
        })?;
        self.admin_ok(Command {
            opcode: admin::CREATE_SQ,
            prp1: sq,
            cdw: [
                u32::from(qid) | ((sq_entries - 1) << 16),
                1 | (u32::from(qid) << 16),
                0,
                0,
                0,
                0,
            ],
            ..Default::default()
        })?;
        self.io
            .push(HostQueue::new(qid, sq_entries, cq_entries, sq, cq));
        Ok(())
    }

    /// Configures shadow doorbells (Doorbell Buffer Config).
    pub fn enable_shadow_doorbells(&mut self) -> Result<(), HostError> {
        let dbs = self.mem.alloc(4096, 4096);
        let eis = self.mem.alloc(4096, 4096);
        self.admin_ok(Command {
            opcode: admin::DBBUF_CONFIG,
            prp1: dbs,
            prp2: eis,
            ..Default::default()
        })?;
        self.shadow = Some(ShadowBuffers { dbs, eis });
        Ok(())
    }

    /// Builds PRP1/PRP2 for a buffer of `len` bytes at `buf` (allocating a
    /// PRP list when needed).
    pub fn prps(&mut self, buf: u64, len: usize) -> (u64, u64) {
        let page = self.page;
        let first = (page - (buf & (page - 1))).min(len as u64);
        let rest = len as u64 - first;
        if rest == 0 {
            return (buf, 0);
        }
        let second = buf + first;
        if rest <= page {
            return (buf, second);
        }
        let n = rest.div_ceil(page) as usize;
        let per_list = (page / 8) as usize;
        // Lists of one page each, chained through their last entry.
        let lists = if n <= per_list {
            1
        } else {
            1 + (n - per_list).div_ceil(per_list - 1)
        };
        let list_base = self.mem.alloc(lists * page as usize, page as usize);
        let mut entries: Vec<u64> = (0..n as u64).map(|i| second + i * page).collect();
        let mut li = 0usize;
        while !entries.is_empty() {
            let list = list_base + li as u64 * page;
            let take = if entries.len() > per_list {
                per_list - 1
            } else {
                entries.len()
            };
            let mut raw: Vec<u8> = entries
                .drain(..take)
                .flat_map(|e| e.to_le_bytes())
                .collect();
            if !entries.is_empty() {
                raw.extend((list + page).to_le_bytes());
            }
            self.mem.write(list, &raw);
            li += 1;
        }
        (buf, list_base)
    }

    /// A Read or Write of `blocks` 512-byte blocks at `lba` to/from `buf`.
    pub fn rw_command(
        &mut self,
        write: bool,
        nsid: u32,
        lba: u64,
        buf: u64,
        blocks: u32,
    ) -> Command {
        let (prp1, prp2) = self.prps(buf, blocks as usize * BLOCK);
        Command {
            opcode: if write { io::WRITE } else { io::READ },
            nsid,
            prp1,
            prp2,
            cdw: [lba as u32, (lba >> 32) as u32, blocks - 1, 0, 0, 0],
            ..Default::default()
        }
    }

    /// Runs an I/O command on `qid` to completion.
    pub fn io_cmd(&mut self, qid: u16, cmd: Command) -> Result<Completion, HostError> {
        let cid = self.submit(qid, cmd);
        self.wait(qid, cid)
    }

    /// Writes `data` (a multiple of 512 bytes) at `lba` through `qid`.
    pub fn write_blocks(
        &mut self,
        qid: u16,
        nsid: u32,
        lba: u64,
        data: &[u8],
    ) -> Result<(), HostError> {
        let mark = self.mark();
        let buf = self.scratch(data.len());
        self.mem.write(buf, data);
        let cmd = self.rw_command(true, nsid, lba, buf, (data.len() / BLOCK) as u32);
        let c = self.io_cmd(qid, cmd);
        self.release(mark);
        status_ok(c?, io::WRITE)
    }

    /// Reads `len` bytes (a multiple of 512) at `lba` through `qid`.
    pub fn read_blocks(
        &mut self,
        qid: u16,
        nsid: u32,
        lba: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        let mark = self.mark();
        let buf = self.scratch(len);
        let cmd = self.rw_command(false, nsid, lba, buf, (len / BLOCK) as u32);
        let c = self.io_cmd(qid, cmd);
        let mut out = vec![0u8; len];
        self.mem.read(buf, &mut out);
        self.release(mark);
        status_ok(c?, io::READ)?;
        Ok(out)
    }

    /// Flush of `nsid` through `qid`.
    pub fn flush(&mut self, qid: u16, nsid: u32) -> Result<(), HostError> {
        let c = self.io_cmd(
            qid,
            Command {
                opcode: io::FLUSH,
                nsid,
                ..Default::default()
            },
        )?;
        status_ok(c, io::FLUSH)
    }

    /// A page-aligned buffer for one transfer.
    fn scratch(&mut self, len: usize) -> u64 {
        self.mem.alloc(len.next_multiple_of(4096), 4096)
    }

    /// The bump allocator's position (see [`HostDriver::release`]).
    pub fn mark(&self) -> usize {
        self.mem.next
    }

    /// Frees everything allocated after `mark`.
    pub fn release(&mut self, mark: usize) {
        self.mem.next = mark;
    }

    /// Normal shutdown: deletes I/O queues, CC.SHN = 01b, waits for SHST.
    pub fn shutdown(&mut self) -> Result<(), HostError> {
        let qids: Vec<u16> = self.io.iter().map(|q| q.qid).collect();
        for &q in &qids {
            self.admin_ok(Command {
                opcode: admin::DELETE_SQ,
                cdw: [u32::from(q), 0, 0, 0, 0, 0],
                ..Default::default()
            })?;
        }
        for &q in &qids {
            self.admin_ok(Command {
                opcode: admin::DELETE_CQ,
                cdw: [u32::from(q), 0, 0, 0, 0, 0],
                ..Default::default()
            })?;
        }
        self.io.clear();
        let ccv = self.bar.read_reg32(reg::CC);
        self.bar
            .write_reg32(reg::CC, (ccv & !(3 << 14)) | (1 << 14));
        wait_csts(&mut self.bar, csts::SHST_MASK, csts::SHST_COMPLETE)
    }
}

fn status_ok(c: Completion, opcode: u8) -> Result<(), HostError> {
    if Status(c.status).is_success() {
        Ok(())
    } else {
        Err(HostError::Failed {
            what: "I/O command",
            opcode,
            status: Status(c.status),
        })
    }
}

/// Polls CSTS until `(CSTS & mask) == want` (10 s).
pub fn wait_csts<B: Bar0>(bar: &mut B, mask: u32, want: u32) -> Result<(), HostError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = bar.read_reg32(reg::CSTS);
        if s & mask == want {
            return Ok(());
        }
        if s & csts::CFS != 0 && mask & csts::CFS == 0 {
            return Err(HostError::Fatal { csts: s });
        }
        if Instant::now() > deadline {
            return Err(HostError::NotReady {
                csts: s,
                mask,
                want,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_index_math() {
        // The Linux formula: ring when the new value passes event_idx.
        assert!(need_event(5, 6, 5));
        assert!(!need_event(5, 9, 7));
        assert!(need_event(5, 9, 3));
        assert!(need_event(0xffff, 0, 0xfffe));
    }
}
