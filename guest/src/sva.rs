//! `trustdev-guest sva`: shared virtual addressing with uio_pci_generic_sva
//! (driver `uio_pci_sva`, Linux 6.19+, built out of tree for Debian). Binds
//! the function, finds its uio device and maps, and opens it — the open is
//! where the driver binds the process's address space to a PASID
//! (iommu_sva_bind_device). Reports exactly how far that gets. When the
//! bind succeeds, it drives the accelerator with process virtual addresses:
//! ring, records and buffers in this process's memory, PASID from sysfs,
//! descriptors tagged with it, page faults resolved through PRI.

use crate::sysfs;
use crate::vfio_session::bind;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use serde_json::json;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::accel::desc::{
    flags, opcode, status, AesParams, Completion, Descriptor, AES_TAG_OFFSET,
};
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
    /// Leave the destination buffers as fresh, never touched pages (not
    /// present in the process's page table): the accelerator's translations
    /// for them fail and only page requests (PRI) get them faulted in.
    #[arg(long)]
    pub no_prefault: bool,
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
    ops: Vec<String>,
    /// The accelerator's page request counter (BAR0 0x38) before and after.
    page_requests: Option<(u64, u64)>,
    /// The accelerator's XLAT register: PASID/ATS/PRI control as set.
    xlat: Option<u32>,
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
pub(crate) struct Bar {
    ptr: *mut u32,
    len: usize,
}

impl Bar {
    fn map(fd: i32, len: usize) -> Result<Bar, String> {
        Bar::map_at(fd, len, 0).map_err(|e| format!("mmap map0: {e}"))
    }

    /// Maps `len` bytes of MMIO at `offset` of `fd` (a uio device, or a
    /// vfio device fd's BAR region).
    pub(crate) fn map_at(fd: i32, len: usize, offset: u64) -> Result<Bar, String> {
        let off = libc::off_t::try_from(offset).map_err(|_| format!("offset {offset:#x}"))?;
        // SAFETY: a new shared mapping of an open fd with no address hint;
        // the result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Bar { ptr: p.cast(), len })
    }

    pub(crate) fn rd(&self, off: u64) -> u32 {
        assert!(off as usize + 4 <= self.len && off % 4 == 0);
        // SAFETY: in bounds and aligned (asserted), inside our MMIO mapping.
        unsafe { std::ptr::read_volatile(self.ptr.add(off as usize / 4)) }
    }

    pub(crate) fn wr(&self, off: u64, v: u32) {
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

/// Process heap memory (malloc) the device reads and writes through the
/// PASID: the program only ever touches it through volatile accesses.
struct Heap {
    buf: Vec<u8>,
    base: usize,
}

impl Heap {
    /// `len` bytes of heap, the usable part starting page-aligned.
    fn new(len: usize) -> Heap {
        let buf = vec![0u8; len + 4096];
        let base = buf.as_ptr().align_offset(4096);
        Heap { buf, base }
    }

    fn ptr(&self, off: usize, len: usize) -> Result<*mut u8, String> {
        if self.base + off + len > self.buf.len() {
            return Err(format!("heap access {off:#x}+{len:#x} out of bounds"));
        }
        // SAFETY: in bounds (checked); the device writes this memory
        // behind the compiler's back, so all access is volatile.
        Ok(unsafe { self.buf.as_ptr().add(self.base + off).cast_mut() })
    }

    fn addr(&self, off: usize) -> u64 {
        self.buf.as_ptr() as u64 + (self.base + off) as u64
    }

    fn write(&self, off: usize, data: &[u8]) -> Result<(), String> {
        let p = self.ptr(off, data.len())?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `p..p+len` is inside the buffer (checked by `ptr`).
            unsafe { std::ptr::write_volatile(p.add(i), *b) };
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn read(&self, off: usize, out: &mut [u8]) -> Result<(), String> {
        let p = self.ptr(off, out.len())?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `p..p+len` is inside the buffer (checked by `ptr`).
            *b = unsafe { std::ptr::read_volatile(p.add(i)) };
        }
        Ok(())
    }
}

/// Heap layout of `drive`: ring, completion records, AES parameters and
/// AAD, then the data buffers.
const RING_SLOTS: u32 = 8;
const RECORDS: usize = 0x1000;
const PARAMS: usize = 0x1800;
const AAD: usize = 0x1900;
const SRC: usize = 0x2000;
const LEN: usize = 0x10000;
const DST: usize = SRC + LEN;
const CT: usize = DST + LEN;
const PT: usize = CT + LEN;

/// The accelerator driven with this process's own pointers: ring, records
/// and buffers on the heap, descriptors tagged with the bound PASID. Runs
/// memmove, CRC-32C, AES-GCM encrypt and decrypt (checked against software)
/// and a memmove from an address the process has not mapped, whose fault
/// must come back in the completion record. Returns what ran.
fn drive(bar: &Bar, pasid: u32, prefault: bool) -> Result<Vec<String>, String> {
    if bar.rd(global::ID) != regs::ID_VALUE {
        return Err(format!(
            "ID register {:#x} through map0",
            bar.rd(global::ID)
        ));
    }
    let m = Heap::new(PT + LEN);
    // Pre-fault every page (a fresh large allocation is not present until
    // touched, and without PRI the device cannot ask for it) — or, without
    // `prefault`, only the ones this process writes: ring, records, AES
    // parameters and the source; DST, CT and PT stay fresh pages the device
    // must ask for.
    if prefault {
        m.write(0, &vec![0u8; PT + LEN])?;
    }
    let src: Vec<u8> = (0..LEN as u32).map(|i| (i * 31 % 251) as u8).collect();
    m.write(SRC, &src)?;
    let q = QUEUE_BASE;
    bar.wr(q + queue::CTRL, ctrl::RESET);
    let t0 = Instant::now();
    while bar.rd(q + queue::CTRL) & ctrl::RESET != 0 && t0.elapsed() < Duration::from_secs(5) {}
    bar.wr(q + queue::RING_LO, m.addr(0) as u32);
    bar.wr(q + queue::RING_HI, (m.addr(0) >> 32) as u32);
    bar.wr(q + queue::RING_SIZE, RING_SLOTS);
    bar.wr(q + queue::PASID, pasid & qpasid::PASID_MASK);
    bar.wr(q + queue::CTRL, ctrl::ENABLE | ctrl::RING_PASID);
    let mut slot = 0u32;
    let mut submit = |d: Descriptor| -> Result<Completion, String> {
        let rec = RECORDS + slot as usize * 32;
        let d = Descriptor {
            flags: d.flags | flags::COMPLETION | flags::PASID,
            pasid,
            completion: m.addr(rec),
            ..d
        };
        m.write(rec, &[0u8; 32])?;
        m.write(slot as usize * 64, &d.encode())?;
        slot = (slot + 1) % RING_SLOTS;
        bar.wr(q + queue::TAIL, slot);
        let t0 = Instant::now();
        let mut b = [0u8; 32];
        loop {
            m.read(rec, &mut b)?;
            if b[0] != status::PENDING {
                return Ok(Completion::decode(&b));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "{}: no completion with PASID {pasid} (queue STATUS {:#x})",
                    opcode::name(d.opcode),
                    bar.rd(q + queue::STATUS)
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let ok = |what: &str, c: &Completion| -> Result<(), String> {
        if c.status == status::SUCCESS {
            Ok(())
        } else {
            Err(format!(
                "{what} with PASID {pasid}: {}",
                status::name(c.status)
            ))
        }
    };
    let mut done = Vec::new();
    let desc = |op: u8, src: usize, dst: usize| Descriptor {
        opcode: op,
        flags: flags::BLOCK_ON_FAULT,
        src: m.addr(src),
        dst: m.addr(dst),
        len: LEN as u32,
        ..Descriptor::default()
    };

    let c = submit(desc(opcode::MEMMOVE, SRC, DST))?;
    ok("memmove", &c)?;
    let mut got = vec![0u8; LEN];
    m.read(DST, &mut got)?;
    if got != src {
        return Err("SVA memmove: destination differs".into());
    }
    done.push("memmove".to_string());

    let c = submit(Descriptor {
        dst: 0,
        arg: 0xfeed_f00d,
        ..desc(opcode::CRC32C, SRC, 0)
    })?;
    ok("crc32c", &c)?;
    let want = crate::accel::crc32c_sw(0xfeed_f00d, &src);
    if c.result != u64::from(want) {
        return Err(format!(
            "crc32c: device {:#010x}, software {want:#010x}",
            c.result
        ));
    }
    done.push(format!("crc32c={want:08x}"));

    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ 0x5a).collect();
    let nonce: Vec<u8> = (0..12u8).map(|i| i ^ 0xa5).collect();
    let aad = b"trustdev guest sva".to_vec();
    m.write(AAD, &aad)?;
    let mut p = AesParams {
        key: [0; 32],
        nonce: [0; 12],
        aad_len: aad.len() as u32,
        aad_addr: m.addr(AAD),
        rsvd: 0,
        tag: [0; 16],
    };
    p.key.copy_from_slice(&key);
    p.nonce.copy_from_slice(&nonce);
    m.write(PARAMS, &p.encode())?;
    let c = submit(Descriptor {
        arg2: m.addr(PARAMS),
        ..desc(opcode::AES_GCM_ENCRYPT, SRC, CT)
    })?;
    ok("aes-gcm encrypt", &c)?;
    let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
    let mut want_ct = src.clone();
    let tag = cipher
        .encrypt_in_place_detached(nonce[..].into(), &aad, &mut want_ct)
        .map_err(|e| e.to_string())?;
    m.read(CT, &mut got)?;
    let mut got_tag = [0u8; 16];
    m.read(PARAMS + AES_TAG_OFFSET as usize, &mut got_tag)?;
    if got != want_ct || got_tag[..] != tag[..] {
        return Err("aes-gcm encrypt: ciphertext or tag differs from RustCrypto".into());
    }
    done.push("aes-gcm-encrypt".to_string());
    let c = submit(Descriptor {
        arg2: m.addr(PARAMS),
        ..desc(opcode::AES_GCM_DECRYPT, CT, PT)
    })?;
    ok("aes-gcm decrypt", &c)?;
    m.read(PT, &mut got)?;
    if got != src {
        return Err("aes-gcm decrypt: plaintext differs".into());
    }
    done.push("aes-gcm-decrypt".to_string());

    // An address this process never mapped (below mmap_min_addr): the
    // IOMMU has no translation for the PASID, the fault comes back.
    let c = submit(Descriptor {
        flags: 0,
        src: 0x1000,
        len: 4096,
        ..desc(opcode::MEMMOVE, 0, DST)
    })?;
    if c.status == status::SUCCESS {
        return Err("memmove from an unmapped address succeeded".into());
    }
    done.push(format!("unmapped-source={}", status::name(c.status)));
    bar.wr(q + queue::CTRL, 0);
    Ok(done)
}

/// A function bound to uio_pci_sva and opened by this process: the open
/// bound the process's address space to `pasid`; `bar` is BAR0 (uio map0).
pub(crate) struct Opened {
    pub bar: Bar,
    pub pasid: u32,
    // Closing the uio device unbinds the PASID: kept open with the mapping.
    _file: std::fs::File,
}

/// Binds `bdf` to uio_pci_sva, opens its uio device (the PASID bind) and
/// maps BAR0: the setup of `trustdev-guest sva`, for other subcommands.
pub(crate) fn open(bdf: &str) -> Result<Opened, String> {
    let mut r = Report::default();
    open_reporting(bdf, &mut r).map_err(|e| format!("SVA setup stopped at {}: {e}", r.stage))
}

fn open_reporting(bdf: &str, r: &mut Report) -> Result<Opened, String> {
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
    Ok(Opened {
        bar,
        pasid,
        _file: f,
    })
}

fn attempt(bdf: &str, prefault: bool, r: &mut Report) -> Result<(), String> {
    let o = open_reporting(bdf, r)?;
    let (bar, pasid) = (&o.bar, o.pasid);
    let page_requests = |b: &Bar| {
        u64::from(b.rd(global::PAGE_REQUESTS)) | u64::from(b.rd(global::PAGE_REQUESTS + 4)) << 32
    };
    let before = page_requests(bar);
    let ops = drive(bar, pasid, prefault);
    r.page_requests = Some((before, page_requests(bar)));
    r.xlat = Some(bar.rd(global::XLAT));
    r.ops = ops?;
    r.verified = true;
    r.stage = "done";
    Ok(())
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<(), String> {
    let bdf =
        sysfs::normalize_bdf(&a.bdf).ok_or_else(|| format!("'{}' is not a PCI address", a.bdf))?;
    let mut r = Report::default();
    let res = attempt(&bdf, !a.no_prefault, &mut r);
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
                   "ops": r.ops, "prefault": !a.no_prefault,
                   "page_requests": r.page_requests.map(|(b, a)| a.saturating_sub(b)),
                   "xlat": r.xlat,
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
                "sva {bdf}: PASID {} bound; with heap pointers of this process: {} verified",
                r.pasid.unwrap_or(0),
                r.ops.join(" ")
            ),
        }
    }
    res.map_err(|e| format!("sva {bdf}: {e}"))
}
