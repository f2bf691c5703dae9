//! `trustdev-guest sva`: shared virtual addressing with uio_pci_generic_sva
//! (driver `uio_pci_sva`, Linux 6.19+, built out of tree for Debian). Binds
//! the function, finds its uio device and maps, and opens it — the open is
//! where the driver binds the process's address space to a PASID
//! (iommu_sva_bind_device). Reports exactly how far that gets. When the
//! bind succeeds, it drives the accelerator with process virtual addresses:
//! ring, records and buffers in this process's memory, PASID from sysfs,
//! descriptors tagged with it, page faults resolved through PRI.

use crate::sysfs;
use crate::vfio_session::{bind, Anon};
use serde_json::json;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::accel::desc::{flags, opcode, status, Completion, Descriptor};
use crate::accel::regs::{self, ctrl, global, qpasid, queue, QUEUE_BASE};

/// The driver name of uio_pci_generic_sva.
pub const DRIVER: &str = "uio_pci_sva";

/// Options of `trustdev-guest sva`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// PCI address of the accelerator ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// How far SVA got.
#[derive(Debug, Default)]
struct Report {
    stage: &'static str,
    uio: Option<String>,
    maps: Vec<(String, u64, u64)>,
    open_errno: Option<i32>,
    pasid: Option<u32>,
    verified: bool,
    detail: String,
}

fn uio_name(bdf: &str) -> Option<String> {
    let dir = sysfs::dev_dir(bdf).join("uio");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("uio"))
}

fn maps(uio: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for i in 0..5 {
        let d = Path::new("/sys/class/uio")
            .join(uio)
            .join(format!("maps/map{i}"));
        let (Some(addr), Some(size)) = (
            sysfs::read_hex(&d.join("addr")),
            sysfs::read_hex(&d.join("size")),
        ) else {
            continue;
        };
        let name = sysfs::read_str(&d.join("name")).unwrap_or_default();
        out.push((name, addr, size));
    }
    out
}

/// BAR0 mapped from the uio device.
struct Bar {
    ptr: *mut u32,
    len: usize,
}

impl Bar {
    fn map(fd: i32, len: usize) -> Result<Bar, String> {
        // SAFETY: maps uio map0 (offset 0) of an open uio fd; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap map0: {}", std::io::Error::last_os_error()));
        }
        Ok(Bar { ptr: p.cast(), len })
    }

    fn rd(&self, off: u64) -> u32 {
        assert!(off as usize + 4 <= self.len && off % 4 == 0);
        // SAFETY: in bounds and aligned (asserted), inside our MMIO mapping.
        unsafe { std::ptr::read_volatile(self.ptr.add(off as usize / 4)) }
    }

    fn wr(&self, off: u64, v: u32) {
        assert!(off as usize + 4 <= self.len && off % 4 == 0);
        // SAFETY: in bounds and aligned (asserted), inside our MMIO mapping.
        unsafe { std::ptr::write_volatile(self.ptr.add(off as usize / 4), v) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A memmove with process virtual addresses (the SVA path proper).
fn drive(bar: &Bar, pasid: u32) -> Result<(), String> {
    if bar.rd(global::ID) != regs::ID_VALUE {
        return Err(format!(
            "ID register {:#x} through map0",
            bar.rd(global::ID)
        ));
    }
    // Everything lives in ordinary process memory: no pinning, no IOVA.
    const RING: usize = 0;
    const RECORD: usize = 0x1000;
    const SRC: usize = 0x2000;
    const DST: usize = 0x12000;
    const LEN: usize = 0x10000;
    let m = Anon::new(DST + LEN, false)?;
    let src: Vec<u8> = (0..LEN as u32).map(|i| (i * 31 % 251) as u8).collect();
    m.write(SRC, &src)?;
    let d = Descriptor {
        opcode: opcode::MEMMOVE,
        flags: flags::COMPLETION | flags::PASID | flags::BLOCK_ON_FAULT,
        pasid,
        src: m.addr(SRC),
        dst: m.addr(DST),
        len: LEN as u32,
        completion: m.addr(RECORD),
        ..Descriptor::default()
    };
    m.write(RING, &d.encode())?;
    let q = QUEUE_BASE;
    bar.wr(q + queue::CTRL, ctrl::RESET);
    let t0 = Instant::now();
    while bar.rd(q + queue::CTRL) & ctrl::RESET != 0 && t0.elapsed() < Duration::from_secs(5) {}
    bar.wr(q + queue::RING_LO, m.addr(RING) as u32);
    bar.wr(q + queue::RING_HI, (m.addr(RING) >> 32) as u32);
    bar.wr(q + queue::RING_SIZE, 4);
    bar.wr(q + queue::PASID, pasid & qpasid::PASID_MASK);
    bar.wr(q + queue::CTRL, ctrl::ENABLE | ctrl::RING_PASID);
    bar.wr(q + queue::TAIL, 1);
    while m.byte(RECORD)? == status::PENDING {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "no completion with PASID {pasid} (queue STATUS {:#x})",
                bar.rd(q + queue::STATUS)
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut b = [0u8; 32];
    m.read(RECORD, &mut b)?;
    let c = Completion::decode(&b);
    bar.wr(q + queue::CTRL, 0);
    if c.status != status::SUCCESS {
        return Err(format!(
            "memmove with PASID {pasid}: {}",
            status::name(c.status)
        ));
    }
    let mut got = vec![0u8; LEN];
    m.read(DST, &mut got)?;
    if got != src {
        return Err("SVA memmove: destination differs".into());
    }
    Ok(())
}

fn attempt(bdf: &str, r: &mut Report) -> Result<(), String> {
    r.stage = "bind";
    if !Path::new("/sys/bus/pci/drivers").join(DRIVER).exists() {
        return Err(format!(
            "driver {DRIVER} is not registered (insmod uio_pci_generic_sva.ko first)"
        ));
    }
    bind(bdf, DRIVER, false)?;
    r.stage = "uio";
    let t0 = Instant::now();
    let uio = loop {
        if let Some(u) = uio_name(bdf) {
            break u;
        }
        if t0.elapsed() > Duration::from_secs(2) {
            return Err("bound, but no uio device appeared".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    r.maps = maps(&uio);
    r.uio = Some(uio.clone());
    let dev = Path::new("/dev").join(&uio);
    let t0 = Instant::now();
    while !dev.exists() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    r.stage = "open";
    let f = match OpenOptions::new().read(true).write(true).open(&dev) {
        Ok(f) => f,
        Err(e) => {
            r.open_errno = e.raw_os_error();
            return Err(format!(
                "open {}: {e}: uio_pci_sva's open() could not bind this process to a PASID \
                 (iommu_sva_bind_device failed)",
                dev.display()
            ));
        }
    };
    r.stage = "pasid";
    let pasid = sysfs::read_str(&sysfs::dev_dir(bdf).join("pasid"))
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or("no readable pasid attribute")?;
    r.pasid = Some(pasid);
    r.stage = "dma";
    let len = r
        .maps
        .first()
        .map(|m| m.2 as usize)
        .ok_or("uio device has no map0 (BAR0 is not 32-bit non-prefetchable?)")?;
    let bar = Bar::map(f.as_raw_fd(), len)?;
    drive(&bar, pasid)?;
    r.verified = true;
    r.stage = "done";
    Ok(())
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<(), String> {
    let bdf =
        sysfs::normalize_bdf(&a.bdf).ok_or_else(|| format!("'{}' is not a PCI address", a.bdf))?;
    let mut r = Report::default();
    let res = attempt(&bdf, &mut r);
    if let Err(e) = &res {
        r.detail = e.clone();
    }
    if a.json {
        println!(
            "{}",
            json!({"bdf": bdf, "ok": res.is_ok(), "stage": r.stage, "uio": r.uio,
                   "maps": r.maps.iter().map(|m| json!({"name": m.0, "addr": m.1, "size": m.2}))
                       .collect::<Vec<_>>(),
                   "open_errno": r.open_errno, "pasid": r.pasid, "verified": r.verified,
                   "detail": r.detail})
        );
    } else {
        if let Some(u) = &r.uio {
            let m: Vec<String> = r
                .maps
                .iter()
                .enumerate()
                .map(|(i, (n, a, s))| format!("map{i} {n} {a:#x}+{s:#x}"))
                .collect();
            println!("sva {bdf}: bound to {DRIVER} as {u} ({})", m.join(", "));
        }
        match (&res, r.open_errno) {
            (Err(e), Some(errno)) => {
                println!("sva {bdf}: stopped at {}: {e} (errno {errno})", r.stage)
            }
            (Err(e), None) => println!("sva {bdf}: stopped at {}: {e}", r.stage),
            (Ok(()), _) => println!(
                "sva {bdf}: PASID {} bound; memmove with process virtual addresses verified",
                r.pasid.unwrap_or(0)
            ),
        }
    }
    res.map_err(|e| format!("sva {bdf}: {e}"))
}
