//! `trustdev-guest accel-bench`: times the accelerator's memmove from this
//! process, through one of two addressing paths, for the SVA vs IOVA
//! benchmark (scripts/sva-bench.sh, docs/PERFORMANCE.md):
//!
//! - `--path sva`: the function bound to uio_pci_generic_sva, this process's
//!   address space bound to a PASID by the open; ring, completion records
//!   and buffers are plain process memory, descriptors carry the PASID;
//!   doorbell = a store to BAR0 mapped through uio.
//! - `--path iova`: the function bound to vfio-pci with a type1 container
//!   (the vIOMMU translates); the same memory layout mapped at an IOVA with
//!   VFIO_IOMMU_MAP_DMA; doorbell = a store to BAR0 mmapped from the vfio
//!   device fd (a pwrite() to it where vfio-pci does not allow the mmap;
//!   BENCH-INFO says which).
//!
//! Everything is set up before the clock runs: memory allocated, populated
//! and locked, source data written, queue 0 enabled (completions polled, no
//! interrupts), one untimed warm-up memmove per size. Then, for each round
//! and each size: untimed, the destination is poisoned, the source's first 8
//! bytes are set to the round number, the completion record is cleared and
//! the descriptor written into the ring; timed, from just before the TAIL
//! doorbell write until the busy-polling loop sees the completion record's
//! status leave PENDING; untimed again, the status must be SUCCESS and the
//! destination must equal the source (every round is verified).
//!
//! Output, one line per size (sizes in bytes, times in nanoseconds):
//!
//! ```text
//! BENCH-INFO path=sva bdf=0000:01:00.0 pasid=1 doorbell=uio-mmap ...
//! BENCH path=sva size=4096 rounds=5 verified=5 median_ns=.. min_ns=.. max_ns=.. ns=t1,t2,..
//! ```

use crate::accel::desc::{flags, opcode, status, Completion, Descriptor, COMPLETION_SIZE};
use crate::accel::regs::{self, ctrl, global, qerr, qpasid, qstatus, queue, QUEUE_BASE};
use crate::accel::IDS;
use crate::sva::Bar;
use crate::sysfs;
use crate::vfio;
use crate::vfio_session::{Anon, DmaBuffer, Session};
use std::time::{Duration, Instant};

/// The addressing path under test.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Process virtual addresses through a PASID (uio_pci_generic_sva).
    Sva,
    /// IOVAs mapped through vfio-pci's type1 container (the vIOMMU).
    Iova,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Sva => "sva",
            Path::Iova => "iova",
        }
    }
}

/// Options of `trustdev-guest accel-bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// PCI address of the accelerator ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Addressing path.
    #[arg(long, value_enum)]
    pub path: Path,
    /// Transfer sizes in bytes, comma-separated (each 1..=16777216).
    #[arg(long, value_delimiter = ',', default_values_t = [4096usize, 65536, 1048576])]
    pub sizes: Vec<usize>,
    /// Timed memmoves per size (after one untimed warm-up).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds to wait for each completion.
    #[arg(long, default_value = "60", value_parser = crate::parse_seconds)]
    pub timeout: Duration,
}

const MAX_SIZE: usize = 16 << 20;
const MAX_ROUNDS: u32 = 10_000;
/// The round number of the untimed warm-up memmoves.
const WARM_UP: u64 = u64::MAX;
/// After this long without a completion the poll also reads the queue's
/// STATUS (a halted queue never completes).
const HALT_CHECK_AFTER: Duration = Duration::from_secs(1);
const RING_SLOTS: u32 = 8;
const RING: usize = 0;
const RECORDS: usize = 0x1000;
const SRC: usize = 0x10_0000;
/// IOVA of the buffer's first byte on the IOVA path.
const IOVA: u64 = 0x100_0000;

/// Median, minimum and maximum of `v` (the lower middle for even lengths);
/// `None` when empty.
pub(crate) fn stats(v: &[u64]) -> Option<(u64, u64, u64)> {
    let mut s = v.to_vec();
    s.sort_unstable();
    let mid = *s.get((s.len().checked_sub(1)?) / 2)?;
    Some((mid, *s.first()?, *s.last()?))
}

/// What differs between the paths: how addresses are formed, how the
/// doorbell is written, what tags a descriptor.
trait Port {
    fn rd(&self, reg: u64) -> Result<u32, String>;
    fn wr(&self, reg: u64, v: u32) -> Result<(), String>;
    /// The device address of buffer byte `off`.
    fn addr(&self, off: usize) -> u64;
    /// PASID for descriptors and the ring, if any.
    fn pasid(&self) -> Option<u32>;
}

struct SvaPort<'a> {
    o: &'a crate::sva::Opened,
    mem: &'a Anon,
}

impl Port for SvaPort<'_> {
    fn rd(&self, reg: u64) -> Result<u32, String> {
        Ok(self.o.bar.rd(reg))
    }
    fn wr(&self, reg: u64, v: u32) -> Result<(), String> {
        self.o.bar.wr(reg, v);
        Ok(())
    }
    fn addr(&self, off: usize) -> u64 {
        self.mem.addr(off)
    }
    fn pasid(&self) -> Option<u32> {
        Some(self.o.pasid)
    }
}

struct IovaPort<'a> {
    s: &'a Session,
    /// BAR0 mapped from the vfio device fd, when vfio-pci allows it (then
    /// a register access is a store, as on the SVA path); else pread/pwrite.
    bar: Option<Bar>,
    buf: &'a DmaBuffer<'a>,
}

impl Port for IovaPort<'_> {
    fn rd(&self, reg: u64) -> Result<u32, String> {
        match &self.bar {
            Some(b) => Ok(b.rd(reg)),
            None => self.s.rd(reg),
        }
    }
    fn wr(&self, reg: u64, v: u32) -> Result<(), String> {
        match &self.bar {
            Some(b) => {
                b.wr(reg, v);
                Ok(())
            }
            None => self.s.wr(reg, v),
        }
    }
    fn addr(&self, off: usize) -> u64 {
        self.buf.iova + off as u64
    }
    fn pasid(&self) -> Option<u32> {
        None
    }
}

/// Per-size results: the timed nanoseconds of each round.
struct SizeResult {
    size: usize,
    ns: Vec<u64>,
    verified: u32,
}

struct Bench<'a> {
    port: &'a dyn Port,
    mem: &'a Anon,
    dst: usize,
    slot: u32,
    timeout: Duration,
}

impl Bench<'_> {
    fn setup_queue(&self) -> Result<(), String> {
        let q = QUEUE_BASE;
        let p = self.port;
        if p.rd(global::ID)? != regs::ID_VALUE {
            return Err(format!("ID register {:#x}", p.rd(global::ID)?));
        }
        p.wr(q + queue::CTRL, ctrl::RESET)?;
        let t0 = Instant::now();
        while p.rd(q + queue::CTRL)? & ctrl::RESET != 0 {
            if t0.elapsed() > self.timeout {
                return Err("queue 0 reset did not finish".into());
            }
        }
        let ring = p.addr(RING);
        p.wr(q + queue::RING_LO, ring as u32)?;
        p.wr(q + queue::RING_HI, (ring >> 32) as u32)?;
        p.wr(q + queue::RING_SIZE, RING_SLOTS)?;
        let mut c = ctrl::ENABLE;
        if let Some(pasid) = p.pasid() {
            p.wr(q + queue::PASID, pasid & qpasid::PASID_MASK)?;
            c |= ctrl::RING_PASID;
        }
        p.wr(q + queue::CTRL, c)?;
        let st = p.rd(q + queue::STATUS)?;
        if st & 1 == 0 {
            return Err(format!("queue 0 did not enable (STATUS {st:#x})"));
        }
        Ok(())
    }

    /// One memmove of `size` bytes from SRC to the destination; returns
    /// the timed nanoseconds (doorbell to completion seen).
    fn memmove(&mut self, size: usize) -> Result<u64, String> {
        let p = self.port;
        let rec = RECORDS + self.slot as usize * COMPLETION_SIZE;
        let mut d = Descriptor {
            opcode: opcode::MEMMOVE,
            flags: flags::COMPLETION,
            src: p.addr(SRC),
            dst: p.addr(self.dst),
            len: u32::try_from(size).map_err(|_| format!("size {size} too large"))?,
            completion: p.addr(rec),
            ..Descriptor::default()
        };
        if let Some(pasid) = p.pasid() {
            d.flags |= flags::PASID | flags::BLOCK_ON_FAULT;
            d.pasid = pasid;
        }
        self.mem.write(rec, &[0u8; COMPLETION_SIZE])?;
        self.mem
            .write(RING + self.slot as usize * 64, &d.encode())?;
        self.slot = (self.slot + 1) % RING_SLOTS;
        let t0 = Instant::now();
        p.wr(QUEUE_BASE + queue::TAIL, self.slot)?;
        let mut spins = 0u32;
        let ns = loop {
            if self.mem.byte(rec)? != status::PENDING {
                break t0.elapsed().as_nanos() as u64;
            }
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && t0.elapsed() > HALT_CHECK_AFTER {
                // Slow: is the queue halted (the ring or the record not
                // reachable)? Not checked earlier: a register read is a
                // trap to QEMU and a message to the server, inside the
                // timed region.
                let st = p.rd(QUEUE_BASE + queue::STATUS)?;
                let stuck = st & (qstatus::HALTED | qstatus::CR_FAULT) != 0;
                if stuck || t0.elapsed() > self.timeout {
                    return Err(format!(
                        "memmove {size}: no completion after {:?}, queue STATUS {st:#x} \
                         (halted {}, record fault {}, error: {})",
                        t0.elapsed(),
                        st & qstatus::HALTED != 0,
                        st & qstatus::CR_FAULT != 0,
                        qerr::name(st >> qstatus::ERR_SHIFT & 0xff)
                    ));
                }
            }
            std::hint::spin_loop();
        };
        let mut b = [0u8; COMPLETION_SIZE];
        self.mem.read(rec, &mut b)?;
        let c = Completion::decode(&b);
        if c.status != status::SUCCESS {
            return Err(format!(
                "memmove {size}: status {:#04x} ({}), fault at {:#x}",
                c.status,
                status::name(c.status),
                c.fault_addr
            ));
        }
        Ok(ns)
    }

    /// Untimed preparation of round `round`, the timed memmove, the check.
    fn round(&mut self, size: usize, round: u64, src: &mut [u8]) -> Result<u64, String> {
        let src = &mut src[..size];
        let head = round.to_le_bytes();
        let n = head.len().min(size);
        src[..n].copy_from_slice(&head[..n]);
        self.mem.write(SRC, src)?;
        self.mem.write(self.dst, &vec![0xa5 ^ round as u8; size])?;
        let ns = self.memmove(size)?;
        let mut got = vec![0u8; size];
        self.mem.read(self.dst, &mut got)?;
        if got != *src {
            let at = got.iter().zip(src.iter()).position(|(a, b)| a != b);
            let which = if round == WARM_UP {
                "warm-up".to_string()
            } else {
                format!("round {round}")
            };
            return Err(format!(
                "memmove {size}, {which}: destination differs from the source (first at byte {})",
                at.unwrap_or(0)
            ));
        }
        Ok(ns)
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn measure(port: &dyn Port, mem: &Anon, dst: usize, a: &Args) -> Result<Vec<SizeResult>, String> {
    let mut b = Bench {
        port,
        mem,
        dst,
        slot: 0,
        timeout: a.timeout.max(Duration::from_millis(100)),
    };
    let max = a.sizes.iter().copied().max().unwrap_or(0);
    let dev_max = port.rd(global::MAX_XFER)? as usize;
    if max > dev_max {
        return Err(format!(
            "size {max} exceeds the device's MAX_XFER {dev_max}"
        ));
    }
    b.setup_queue()?;
    let mut src = data(max);
    let mut out: Vec<SizeResult> = a
        .sizes
        .iter()
        .map(|&size| SizeResult {
            size,
            ns: Vec::new(),
            verified: 0,
        })
        .collect();
    let r = (|| {
        // Warm-up: one untimed, verified memmove per size (first-touch
        // costs: translation caches, QEMU's and the server's lookups).
        for r in &out {
            b.round(r.size, WARM_UP, &mut src)?;
        }
        for round in 0..u64::from(a.rounds) {
            for r in out.iter_mut() {
                let ns = b.round(r.size, round, &mut src)?;
                r.ns.push(ns);
                r.verified += 1;
            }
        }
        Ok::<(), String>(())
    })();
    let _ = port.wr(QUEUE_BASE + queue::CTRL, 0);
    r.map(|()| out)
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<(), String> {
    let bdf =
        sysfs::normalize_bdf(&a.bdf).ok_or_else(|| format!("'{}' is not a PCI address", a.bdf))?;
    if a.sizes.is_empty() || a.sizes.iter().any(|&s| s == 0 || s > MAX_SIZE) {
        return Err(format!("--sizes: each must be 1..={MAX_SIZE}"));
    }
    if a.rounds == 0 || a.rounds > MAX_ROUNDS {
        return Err(format!("--rounds must be 1..={MAX_ROUNDS}"));
    }
    let max = a.sizes.iter().copied().max().unwrap_or(0);
    let dst = (SRC + max).next_multiple_of(SRC);
    let len = dst + max;
    let name = a.path.name();
    let fail = |e: String| format!("accel-bench {name} {bdf}: FAILED: {e}");
    let (results, info) = match a.path {
        Path::Sva => {
            let o = crate::sva::open(&bdf).map_err(fail)?;
            let mem = Anon::new(len, true).map_err(fail)?;
            let port = SvaPort { o: &o, mem: &mem };
            let r = measure(&port, &mem, dst, &a).map_err(fail)?;
            (r, format!("pasid={} doorbell=uio-mmap", o.pasid))
        }
        Path::Iova => {
            let quiet = |_: String| {};
            let s = Session::open(&bdf, IDS, &quiet).map_err(fail)?;
            if s.noiommu {
                return Err(fail(
                    "vfio no-IOMMU mode: no IOVA mappings to measure (the guest needs a vIOMMU)"
                        .into(),
                ));
            }
            let buf = DmaBuffer::new(&s.container, len, IOVA).map_err(fail)?;
            let bar = (s.bar0.flags & vfio::VFIO_REGION_INFO_FLAG_MMAP != 0
                && s.bar0.size >= regs::BAR0_SIZE)
                .then(|| Bar::map_at(s.dev.raw_fd(), regs::BAR0_SIZE as usize, s.bar0.offset))
                .and_then(Result::ok);
            let doorbell = if bar.is_some() {
                "vfio-mmap"
            } else {
                "vfio-pwrite"
            };
            let port = IovaPort {
                s: &s,
                bar,
                buf: &buf,
            };
            let r = measure(&port, &buf, dst, &a).map_err(fail)?;
            (
                r,
                format!("iova={IOVA:#x} container={} doorbell={doorbell}", s.mode()),
            )
        }
    };
    println!(
        "BENCH-INFO path={name} bdf={bdf} {info} warmup=1 polled=busy \
         timed=doorbell-write..completion-status-seen verified=every-round"
    );
    for r in &results {
        let (med, min, max) = stats(&r.ns).ok_or_else(|| fail("no rounds".into()))?;
        let list: Vec<String> = r.ns.iter().map(u64::to_string).collect();
        println!(
            "BENCH path={name} size={} rounds={} verified={} median_ns={med} min_ns={min} max_ns={max} ns={}",
            r.size,
            r.ns.len(),
            r.verified,
            list.join(",")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_min_max() {
        assert_eq!(stats(&[]), None);
        assert_eq!(stats(&[7]), Some((7, 7, 7)));
        assert_eq!(stats(&[9, 1, 5]), Some((5, 1, 9)));
        // Even count: the lower middle.
        assert_eq!(stats(&[4, 1, 3, 2]), Some((2, 1, 4)));
    }
}
