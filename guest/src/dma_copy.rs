//! `trustdev-guest dma-copy`: drives the DMA-copy example device (vfio-user
//! server example `dma_copy`, 7d0c:d3a0) from guest user space through
//! vfio-pci: no-IOMMU mode with physical addresses from /proc/self/pagemap,
//! or a type1 container with IOVA maps when the guest has a vIOMMU.

use crate::sysfs;
use crate::vfio::{self, Container, Device, EventFd};
use crate::vfio_session::Session;
use serde_json::json;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

// The register map is the example device's own, from its dependency-free
// file (server/examples/dma_copy/regs.rs): one source for device and driver.
#[allow(dead_code)] // the device's side of the map (MAX_LEN, BAR2_SIZE, ...)
#[path = "../../server/examples/dma_copy/regs.rs"]
mod regs;

use regs::status::{BUSY as STATUS_BUSY, DONE as STATUS_DONE, ERROR as STATUS_ERROR};
use regs::{error, reg, ID_VALUE, VERSION_VALUE};
/// Vendor and device ID of the example device.
pub use regs::{DEVICE_ID, VENDOR_ID};

/// Registers up to and including SCRATCH.
const REG_SPAN: u64 = reg::SCRATCH + 4;

fn error_name(code: u32) -> &'static str {
    match code {
        0 => "none",
        error::SOURCE_FAULT => "source fault",
        error::DEST_FAULT => "destination fault",
        error::BAD_LENGTH => "bad length",
        error::BUSY => "doorbell while busy",
        _ => "unknown error code",
    }
}

const PAGE: usize = 4096;

/// IOVAs used in type1 mode (below the x86 MSI window, above legacy areas).
const IOVA_SRC: u64 = 0x10_0000;
const IOVA_DST: u64 = 0x10_1000;

/// Options of `trustdev-guest dma-copy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// PCI address of the device ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Bytes per copy (1..=4096).
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Number of copies, each with its own data pattern.
    #[arg(long, default_value_t = 16)]
    pub count: u32,
    /// MSI-X vector the device raises on completion.
    #[arg(long, default_value_t = 0)]
    pub vector: u32,
    /// Seconds to wait for each completion.
    #[arg(long, default_value = "5", value_parser = crate::parse_seconds)]
    pub timeout: Duration,
    /// Poll STATUS instead of waiting for MSI-X interrupts.
    #[arg(long)]
    pub poll: bool,
    /// Issue VFIO_DEVICE_RESET first and check that the registers clear.
    #[arg(long)]
    pub reset: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints progress lines unless JSON output was asked for.
pub(crate) struct Log {
    pub(crate) prefix: String,
    pub(crate) quiet: bool,
}

impl Log {
    pub(crate) fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            println!("{}: {}", self.prefix, msg.as_ref());
        }
    }
}

/// Result of a successful run.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    copies: u32,
    interrupts: u64,
    mode: &'static str,
    group: String,
    previous_driver: Option<String>,
}

/// Runs the subcommand; prints the result. `Err` carries the failure message.
pub fn run(args: Args) -> Result<(), String> {
    let opts = &args;
    let bdf = sysfs::normalize_bdf(&opts.bdf).ok_or_else(|| {
        format!(
            "'{}' is not a PCI address (expected [DDDD:]BB:DD.F)",
            opts.bdf
        )
    })?;
    let log = Log {
        prefix: format!("dma-copy {bdf}"),
        quiet: opts.json,
    };
    if opts.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let result = with_device(&bdf, opts, &log, |c| {
        for iter in 0..opts.count {
            c.copy(iter)
                .map_err(|e| format!("copy {}/{}: {e}", iter + 1, opts.count))?;
        }
        Ok(())
    })
    .map(|(o, ())| o);
    match (&result, opts.json) {
        (Ok(o), false) => {
            let irq = if opts.poll {
                "completion polled, interrupts off".to_string()
            } else {
                format!(
                    "{} MSI-X interrupt{} received (vector {})",
                    o.interrupts,
                    if o.interrupts == 1 { "" } else { "s" },
                    opts.vector
                )
            };
            println!(
                "dma-copy {bdf}: {} cop{} of {} byte{} verified, {irq}",
                o.copies,
                if o.copies == 1 { "y" } else { "ies" },
                opts.size,
                if opts.size == 1 { "" } else { "s" }
            );
        }
        (Ok(o), true) => {
            let v = json!({
                "bdf": bdf, "ok": true, "copies": o.copies, "size": opts.size,
                "interrupts": o.interrupts, "vector": opts.vector, "polled": opts.poll,
                "mode": o.mode, "group": o.group, "previous_driver": o.previous_driver,
            });
            println!("{v}");
        }
        (Err(e), true) => {
            let v = json!({"bdf": bdf, "ok": false, "error": e});
            println!("{v}");
        }
        (Err(_), false) => {}
    }
    result
        .map(|_| ())
        .map_err(|e| format!("dma-copy {bdf}: FAILED: {e}"))
}

/// A locked, page-aligned anonymous page.
struct DmaPage {
    ptr: *mut u8,
}

impl DmaPage {
    fn new() -> Result<Self, String> {
        // SAFETY: anonymous private mapping with no address hint; the result
        // is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of a DMA buffer failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let page = DmaPage { ptr: p.cast() };
        // SAFETY: `p` is a mapping of PAGE bytes that we own.
        if unsafe { libc::mlock(p, PAGE) } != 0 {
            return Err(format!(
                "mlock of a DMA buffer failed: {} (RLIMIT_MEMLOCK?)",
                std::io::Error::last_os_error()
            ));
        }
        page.fill(|_| 0);
        Ok(page)
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Writes every byte through volatile stores (the device reads them).
    fn fill(&self, f: impl Fn(usize) -> u8) {
        for i in 0..PAGE {
            // SAFETY: `i < PAGE`, inside our live, writable mapping.
            unsafe { std::ptr::write_volatile(self.ptr.add(i), f(i)) };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Reads the page through volatile loads (the device wrote it).
    fn snapshot(&self) -> Vec<u8> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        (0..PAGE)
            // SAFETY: `i < PAGE`, inside our live, readable mapping.
            .map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(i)) })
            .collect()
    }
}

impl Drop for DmaPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing
        // references it after drop.
        unsafe {
            libc::munmap(self.ptr.cast(), PAGE);
        }
    }
}

/// Physical address of a user virtual address, from /proc/self/pagemap.
fn phys_addr(pagemap: &File, vaddr: u64) -> Result<u64, String> {
    let mut b = [0u8; 8];
    pagemap
        .read_exact_at(&mut b, (vaddr / PAGE as u64) * 8)
        .map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
    let e = u64::from_le_bytes(b);
    if e & (1 << 63) == 0 {
        return Err(format!(
            "page at {vaddr:#x} not present in pagemap (entry {e:#x})"
        ));
    }
    let pfn = e & ((1u64 << 55) - 1);
    if pfn == 0 {
        return Err("pagemap shows PFN 0: physical addresses are hidden \
                    (needs root with CAP_SYS_ADMIN)"
            .into());
    }
    Ok(pfn * PAGE as u64 + (vaddr % PAGE as u64))
}

/// Deterministic per-iteration pattern (xorshift64*).
fn pattern(iter: u32, size: usize) -> Vec<u8> {
    let mut x =
        0x9e37_79b9_7f4a_7c15u64 ^ (u64::from(iter) + 1).wrapping_mul(0xd1b5_4a32_d192_ed03);
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        for b in v.to_le_bytes() {
            if out.len() < size {
                out.push(b);
            }
        }
    }
    out
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// BAR0 access through the vfio device fd.
struct Regs<'a> {
    dev: &'a Device,
    base: u64,
}

impl Regs<'_> {
    fn rd(&self, r: u64) -> Result<u32, String> {
        self.dev
            .read32(self.base + r)
            .map_err(|e| format!("reading BAR0 register {r:#x}: {e}"))
    }

    fn wr(&self, r: u64, v: u32) -> Result<(), String> {
        self.dev
            .write32(self.base + r, v)
            .map_err(|e| format!("writing {v:#x} to BAR0 register {r:#x}: {e}"))
    }

    fn wr64(&self, r: u64, v: u64) -> Result<(), String> {
        self.wr(r, v as u32)?;
        self.wr(r + 4, (v >> 32) as u32)
    }

    fn rd64(&self, r: u64) -> Result<u64, String> {
        let lo = self.rd(r)?;
        let hi = self.rd(r + 4)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    fn state(&self) -> String {
        let g = |r| {
            self.rd(r)
                .map(|v| format!("{v:#x}"))
                .unwrap_or_else(|_| "?".into())
        };
        format!(
            "STATUS={} ERROR={} COMPLETED={}",
            g(reg::STATUS),
            g(reg::ERROR),
            g(reg::COMPLETED)
        )
    }
}

/// Binds `bdf` to vfio-pci, opens it (vfio-pci resets the function on
/// open), enables memory decode and bus mastering, checks BAR0 and sets up
/// MSI-X, then runs `body` with a [`Copier`]; tears down afterwards.
pub(crate) fn with_device<T>(
    bdf: &str,
    opts: &Args,
    log: &Log,
    body: impl FnOnce(&mut Copier<'_>) -> Result<T, String>,
) -> Result<(Outcome, T), String> {
    if opts.size == 0 || opts.size > PAGE {
        return Err(format!("--size must be 1..={PAGE} (got {})", opts.size));
    }
    let say = |m: String| log.say(m);
    let session = Session::open(bdf, (VENDOR_ID, DEVICE_ID), &say)?;
    let (dev, container, bar0) = (&session.dev, &session.container, &session.bar0);
    let rw = vfio::VFIO_REGION_INFO_FLAG_READ | vfio::VFIO_REGION_INFO_FLAG_WRITE;
    if bar0.size < REG_SPAN || bar0.flags & rw != rw {
        return Err(format!(
            "BAR0 region is {} bytes with flags {:#x}; need >= {} bytes, read+write",
            bar0.size, bar0.flags, REG_SPAN
        ));
    }
    let (noiommu, mode, group_path) = (session.noiommu, session.mode(), &session.group_path);

    let regs = Regs {
        dev,
        base: bar0.offset,
    };
    if opts.reset {
        if dev.info.flags & vfio::VFIO_DEVICE_FLAGS_RESET == 0 {
            return Err("--reset: the device does not support VFIO_DEVICE_RESET".into());
        }
        regs.wr(reg::SCRATCH, 0xdead_beef)?;
        dev.reset().map_err(|e| format!("VFIO_DEVICE_RESET: {e}"))?;
        let (scratch, completed) = (regs.rd(reg::SCRATCH)?, regs.rd(reg::COMPLETED)?);
        if scratch != 0 || completed != 0 {
            return Err(format!(
                "after VFIO_DEVICE_RESET SCRATCH={scratch:#x} COMPLETED={completed}: \
                 registers not cleared"
            ));
        }
        // The reset restores the command register: enable again.
        session.enable_bus_master(&say)?;
        log.say("VFIO_DEVICE_RESET done: registers cleared");
    }
    let id = regs.rd(reg::ID)?;
    if id != ID_VALUE {
        return Err(format!(
            "ID register reads {id:#010x}, expected {ID_VALUE:#010x} (BAR0 not reaching the device?)"
        ));
    }
    let version = regs.rd(reg::VERSION)?;
    if version >> 16 != VERSION_VALUE >> 16 {
        return Err(format!(
            "VERSION register reads {version:#010x}: this driver knows register map {VERSION_VALUE:#010x}"
        ));
    }
    // SCRATCH round trip: proves BAR writes reach the device.
    let probe = 0x5a5a_0000 | (std::process::id() & 0xffff);
    regs.wr(reg::SCRATCH, probe)?;
    let back = regs.rd(reg::SCRATCH)?;
    if back != probe {
        return Err(format!(
            "SCRATCH register reads {back:#010x} after writing {probe:#010x}"
        ));
    }

    // MSI-X eventfds for vectors 0..=vector.
    let mut fds: Vec<EventFd> = Vec::new();
    let mut msix_count = 0;
    let mut noresize = false;
    if !opts.poll {
        let irq = dev
            .irq_info(vfio::VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| format!("VFIO_DEVICE_GET_IRQ_INFO(MSI-X): {e}"))?;
        msix_count = irq.count;
        if irq.count == 0 || irq.flags & vfio::VFIO_IRQ_INFO_EVENTFD == 0 {
            return Err(format!(
                "device offers no MSI-X eventfds (count {}, flags {:#x})",
                irq.count, irq.flags
            ));
        }
        noresize = irq.flags & vfio::VFIO_IRQ_INFO_NORESIZE != 0;
        if opts.vector >= irq.count {
            return Err(format!(
                "--vector {} out of range: the device has {} MSI-X vectors",
                opts.vector, irq.count
            ));
        }
        for _ in 0..=opts.vector {
            fds.push(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        }
        let raw: Vec<i32> = fds.iter().map(EventFd::raw).collect();
        dev.set_irq_eventfds(vfio::VFIO_PCI_MSIX_IRQ_INDEX, 0, &raw)
            .map_err(|e| format!("VFIO_DEVICE_SET_IRQS(MSI-X, {} eventfds): {e}", raw.len()))?;
    }
    log.say(format!(
        "{mode} via {}, BAR0 {} bytes at fd offset {:#x}{}, ID {id:#010x} version \
         {version:#010x}, {}",
        group_path.display(),
        bar0.size,
        bar0.offset,
        if bar0.flags & vfio::VFIO_REGION_INFO_FLAG_MMAP != 0 {
            " (mmappable)"
        } else {
            ""
        },
        if opts.poll {
            "polling (no interrupts)".to_string()
        } else {
            format!(
                "MSI-X {msix_count} vectors{}, using vector {}",
                if noresize { " (noresize)" } else { "" },
                opts.vector
            )
        }
    ));

    let result = Copier::new(&regs, container, noiommu, &fds, opts, log).and_then(|mut c| {
        let r = body(&mut c)?;
        Ok((r, c.copies, c.interrupts))
    });
    if !opts.poll {
        if let Err(e) = session.disable_msix() {
            log.say(format!("warning: {e}"));
        }
    }
    let (r, copies, interrupts) = result?;
    Ok((
        Outcome {
            copies,
            interrupts,
            mode,
            group: group_path.display().to_string(),
            previous_driver: session.previous_driver.clone(),
        },
        r,
    ))
}

/// An open DMA-copy device with a source and a destination page mapped
/// for its DMA.
pub(crate) struct Copier<'a> {
    regs: &'a Regs<'a>,
    container: &'a Container,
    noiommu: bool,
    fds: &'a [EventFd],
    opts: &'a Args,
    log: &'a Log,
    src: DmaPage,
    dst: DmaPage,
    pagemap: Option<File>,
    copies: u32,
    interrupts: u64,
}

impl<'a> Copier<'a> {
    fn new(
        regs: &'a Regs<'a>,
        container: &'a Container,
        noiommu: bool,
        fds: &'a [EventFd],
        opts: &'a Args,
        log: &'a Log,
    ) -> Result<Self, String> {
        let src = DmaPage::new()?;
        let dst = DmaPage::new()?;
        let pagemap = if noiommu {
            Some(
                File::open("/proc/self/pagemap")
                    .map_err(|e| format!("open /proc/self/pagemap: {e}"))?,
            )
        } else {
            container
                .map_dma(src.addr(), IOVA_SRC, PAGE as u64)
                .map_err(|e| format!("VFIO_IOMMU_MAP_DMA(src at IOVA {IOVA_SRC:#x}): {e}"))?;
            if let Err(e) = container.map_dma(dst.addr(), IOVA_DST, PAGE as u64) {
                let _ = container.unmap_dma(IOVA_SRC, PAGE as u64);
                return Err(format!(
                    "VFIO_IOMMU_MAP_DMA(dst at IOVA {IOVA_DST:#x}): {e}"
                ));
            }
            None
        };
        Ok(Copier {
            regs,
            container,
            noiommu,
            fds,
            opts,
            log,
            src,
            dst,
            pagemap,
            copies: 0,
            interrupts: 0,
        })
    }

    /// One copy of `opts.size` bytes with data pattern `iter`, checked: the
    /// data, the counters, the completion interrupt.
    pub(crate) fn copy(&mut self, iter: u32) -> Result<(), String> {
        let (src_dma, dst_dma) = match &self.pagemap {
            // Re-resolved every time: mlock pins pages in memory but
            // does not strictly forbid migration.
            Some(pm) => (
                phys_addr(pm, self.src.addr())?,
                phys_addr(pm, self.dst.addr())?,
            ),
            None => (IOVA_SRC, IOVA_DST),
        };
        if self.copies == 0 {
            self.log.say(format!(
                "buffers: source {src_dma:#x}, destination {dst_dma:#x} ({})",
                if self.noiommu { "physical" } else { "IOVA" }
            ));
        }
        let got = one_copy(
            self.regs, self.fds, self.opts, iter, &self.src, &self.dst, src_dma, dst_dma,
        )?;
        self.copies += 1;
        self.interrupts += got;
        Ok(())
    }
}

impl Drop for Copier<'_> {
    fn drop(&mut self) {
        if !self.noiommu {
            let _ = self.container.unmap_dma(IOVA_SRC, PAGE as u64);
            let _ = self.container.unmap_dma(IOVA_DST, PAGE as u64);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn one_copy(
    regs: &Regs,
    fds: &[EventFd],
    opts: &Args,
    iter: u32,
    src: &DmaPage,
    dst: &DmaPage,
    src_dma: u64,
    dst_dma: u64,
) -> Result<u64, String> {
    let size = opts.size;
    let expect = pattern(iter, PAGE);
    src.fill(|i| expect[i]);
    // Poison: the complement of what must arrive, so every byte has to change.
    dst.fill(|i| !expect[i]);

    let completed0 = regs.rd(reg::COMPLETED)?;
    let bytes0 = regs.rd64(reg::BYTES)?;
    let st0 = regs.rd(reg::STATUS)?;
    if st0 & STATUS_BUSY != 0 {
        return Err(format!("device busy before the copy ({})", regs.state()));
    }
    regs.wr(reg::STATUS, STATUS_DONE | STATUS_ERROR)?;
    regs.wr64(reg::SRC, src_dma)?;
    regs.wr64(reg::DST, dst_dma)?;
    regs.wr(reg::LEN, size as u32)?;
    regs.wr(reg::CTRL, u32::from(!opts.poll))?;
    regs.wr(reg::VECTOR, opts.vector)?;
    // Read back what we programmed (also flushes posted writes).
    let (s, d, l) = (
        regs.rd64(reg::SRC)?,
        regs.rd64(reg::DST)?,
        regs.rd(reg::LEN)?,
    );
    if (s, d, l) != (src_dma, dst_dma, size as u32) {
        return Err(format!(
            "registers read back SRC={s:#x} DST={d:#x} LEN={l} after writing \
             {src_dma:#x}/{dst_dma:#x}/{size}"
        ));
    }
    for f in fds {
        f.take().map_err(|e| format!("eventfd read: {e}"))?;
    }

    regs.wr(reg::DOORBELL, 1)?;
    let t0 = Instant::now();
    let mut got = 0u64;
    if opts.poll {
        loop {
            let st = regs.rd(reg::STATUS)?;
            if st & STATUS_BUSY == 0 && st & (STATUS_DONE | STATUS_ERROR) != 0 {
                break;
            }
            if t0.elapsed() > opts.timeout {
                return Err(format!(
                    "no completion within {:.1} s ({})",
                    opts.timeout.as_secs_f64(),
                    regs.state()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    } else {
        let fd = &fds[opts.vector as usize];
        let ms = i32::try_from(opts.timeout.as_millis()).unwrap_or(i32::MAX);
        let fired = fd
            .wait(ms)
            .map_err(|e| format!("poll on the eventfd: {e}"))?;
        if !fired {
            let others: Vec<String> = fds
                .iter()
                .enumerate()
                .filter_map(|(i, f)| match f.take() {
                    Ok(n) if n > 0 => Some(format!("vector {i} fired {n}x")),
                    _ => None,
                })
                .collect();
            return Err(format!(
                "no MSI-X interrupt on vector {} within {:.1} s ({}{})",
                opts.vector,
                opts.timeout.as_secs_f64(),
                regs.state(),
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; but {}", others.join(", "))
                }
            ));
        }
        got = fd.take().map_err(|e| format!("eventfd read: {e}"))?;
        for (i, f) in fds.iter().enumerate() {
            if i != opts.vector as usize {
                let n = f.take().map_err(|e| format!("eventfd read: {e}"))?;
                if n > 0 {
                    return Err(format!(
                        "MSI-X vector {i} fired {n}x; only vector {} was programmed",
                        opts.vector
                    ));
                }
            }
        }
    }

    let st = regs.rd(reg::STATUS)?;
    if st & STATUS_ERROR != 0 {
        let code = regs.rd(reg::ERROR)?;
        return Err(format!(
            "device reports ERROR {code} ({}) ({}; src {src_dma:#x} dst {dst_dma:#x} len {size})",
            error_name(code),
            regs.state()
        ));
    }
    if st & STATUS_BUSY != 0 || st & STATUS_DONE == 0 {
        return Err(format!(
            "STATUS {st:#x} after completion: expected DONE without BUSY ({})",
            regs.state()
        ));
    }
    let completed = regs.rd(reg::COMPLETED)?;
    if completed != completed0.wrapping_add(1) {
        return Err(format!(
            "COMPLETED went from {completed0} to {completed}, expected +1"
        ));
    }
    let bytes = regs.rd64(reg::BYTES)?;
    if bytes != bytes0.wrapping_add(size as u64) {
        return Err(format!(
            "BYTES went from {bytes0} to {bytes}, expected +{size}"
        ));
    }

    let got_data = dst.snapshot();
    let (want, have) = (&expect[..size], &got_data[..size]);
    if want != have {
        let bad = want.iter().zip(have).filter(|(a, b)| a != b).count();
        let first = want.iter().zip(have).position(|(a, b)| a != b).unwrap_or(0);
        let untouched = have.iter().zip(want).filter(|(h, w)| **h == !**w).count();
        return Err(format!(
            "destination differs from source: {bad} of {size} bytes wrong, first at offset \
             {first} (expected {:#04x}, got {:#04x}); {untouched} bytes still hold the poison; \
             checksum expected {:#018x} got {:#018x}",
            want[first],
            have[first],
            fnv1a(want),
            fnv1a(have)
        ));
    }
    if let Some(off) = (size..PAGE).find(|&i| got_data[i] != !expect[i]) {
        return Err(format!(
            "device wrote past LEN: destination byte {off} changed (LEN {size})"
        ));
    }
    if got > 1 {
        return Err(format!(
            "{got} interrupts for one copy on vector {}",
            opts.vector
        ));
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_iteration() {
        let a = pattern(0, 4096);
        let b = pattern(1, 4096);
        assert_eq!(a.len(), 4096);
        assert_ne!(a, b);
        assert_eq!(a, pattern(0, 4096));
        assert_eq!(pattern(3, 7), pattern(3, 4096)[..7]);
        assert_ne!(fnv1a(&a), fnv1a(&b));
    }

    #[test]
    fn pagemap_gives_a_pfn_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // PFNs read as 0 without CAP_SYS_ADMIN
        }
        let p = DmaPage::new().unwrap();
        let pm = File::open("/proc/self/pagemap").unwrap();
        let pa = phys_addr(&pm, p.addr()).unwrap();
        assert_eq!(pa % PAGE as u64, 0);
        assert_ne!(pa, 0);
    }

    #[test]
    fn dma_page_roundtrip() {
        let p = DmaPage::new().unwrap();
        assert_eq!(p.addr() % PAGE as u64, 0);
        p.fill(|i| i as u8);
        assert_eq!(p.snapshot()[..4], [0, 1, 2, 3]);
    }
}
