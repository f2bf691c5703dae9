//! The I/O `trustdev-guest ide` runs through a stream: NVMe blocks through
//! the kernel's nvme driver, DMA copies of the DMA-copy device through
//! vfio-pci, or none. Every I/O is verified.
//!
//! NVMe blocks carry [`MARKER`] in every 64-byte line, so a test can look
//! for it in the device server's link trace: it must appear in the
//! decrypted payloads and never in the ciphertext.

use crate::dma_copy::{self, Copier};
use crate::sysfs;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

/// The plaintext marker of NVMe blocks (also in tests/e2e_ide.rs).
pub const MARKER: &[u8; 32] = b"trustdev IDE plaintext marker 01";

/// Block size of the NVMe I/Os.
const BLOCK: usize = 4096;
/// Blocks the NVMe workload cycles through.
const BLOCKS: u64 = 256;
/// Where on the namespace they start (past any partition table).
const BASE: u64 = 1 << 20;

/// One kind of verified I/O.
pub trait Workload {
    /// Does I/O number `n` and checks it.
    fn one(&mut self, n: u64) -> Result<(), String>;
    /// What one I/O is called ("I/Os", "copies").
    fn unit(&self) -> &'static str;
    /// What the workload is.
    fn describe(&self) -> String;
    /// True for the workload that does nothing.
    fn is_none(&self) -> bool {
        false
    }
    /// With the stream enabled but not SECURE: an I/O that must be refused
    /// (fail closed); `None` where the check cannot be made safely.
    fn refused(&mut self, _n: u64) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// No I/O (the stream's setup and teardown only).
pub struct NoIo;

impl Workload for NoIo {
    fn one(&mut self, _n: u64) -> Result<(), String> {
        Ok(())
    }
    fn unit(&self) -> &'static str {
        "I/Os"
    }
    fn describe(&self) -> String {
        "no I/O".into()
    }
    fn is_none(&self) -> bool {
        true
    }
}

/// The namespace block device the kernel's nvme driver made for `bdf`
/// (`/sys/bus/pci/devices/BDF/nvme/nvmeX/nvmeXnY`).
pub fn nvme_block_device(bdf: &str) -> Option<PathBuf> {
    let dir = sysfs::dev_dir(bdf).join("nvme");
    let ctrl = std::fs::read_dir(&dir).ok()?.flatten().next()?.file_name();
    let ctrl = ctrl.to_string_lossy().into_owned();
    let mut ns: Vec<String> = std::fs::read_dir(dir.join(&ctrl))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&ctrl) && n[ctrl.len()..].starts_with('n'))
        .collect();
    ns.sort();
    Some(PathBuf::from("/dev").join(ns.first()?))
}

/// The content of block `n` in round `n / BLOCKS`: 64-byte lines of the
/// marker, the I/O number and the line index.
fn block_pattern(n: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK);
    for line in 0..(BLOCK / 64) as u64 {
        b.extend_from_slice(MARKER);
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&line.to_le_bytes());
        b.extend_from_slice(&(n ^ 0x5a5a_5a5a_5a5a_5a5a).to_be_bytes());
        b.extend_from_slice(&(line * 0x0101_0101_0101_0101).to_le_bytes());
    }
    b
}

/// One block, aligned as O_DIRECT wants it (to the page, which covers any
/// logical block size up to 4 KiB).
#[repr(C, align(4096))]
struct AlignedBlock([u8; BLOCK]);

/// 4 KiB blocks written and read back with O_DIRECT through the kernel's
/// nvme driver.
pub struct NvmeIo {
    dev: PathBuf,
    file: File,
    buf: Box<AlignedBlock>,
}

impl NvmeIo {
    /// Opens `bdf`'s first namespace.
    pub fn open(bdf: &str) -> Result<NvmeIo, String> {
        let dev = nvme_block_device(bdf)
            .ok_or_else(|| format!("{bdf}: no NVMe namespace block device (is nvme bound?)"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&dev)
            .map_err(|e| format!("{}: {e}", dev.display()))?;
        Ok(NvmeIo {
            dev,
            file,
            buf: Box::new(AlignedBlock([0; BLOCK])),
        })
    }
}

impl NvmeIo {
    /// Where I/O `n`'s block lives (I/Os `BLOCKS` apart share a place).
    fn place(n: u64) -> u64 {
        BASE + (n % BLOCKS) * BLOCK as u64
    }

    /// How many I/Os in a row have places of their own.
    pub const PLACES: u64 = BLOCKS;

    /// Reads block `n`'s place back with O_DIRECT and checks that it holds
    /// what I/O `n` wrote.
    pub fn verify(&mut self, n: u64) -> Result<(), String> {
        let at = Self::place(n);
        let want = block_pattern(n);
        let buf = &mut self.buf.0;
        buf.fill(0);
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| format!("O_DIRECT read at {at:#x}: {e}"))?;
        let got = &buf[..];
        if got != &want[..] {
            let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "block at {at:#x} read back differs from what I/O {n} wrote (first at byte {first})"
            ));
        }
        Ok(())
    }
}

impl Workload for NvmeIo {
    fn one(&mut self, n: u64) -> Result<(), String> {
        let at = Self::place(n);
        let buf = &mut self.buf.0;
        buf.copy_from_slice(&block_pattern(n));
        self.file
            .write_all_at(buf, at)
            .map_err(|e| format!("O_DIRECT write at {at:#x}: {e}"))?;
        self.verify(n)
    }
    fn unit(&self) -> &'static str {
        "I/Os"
    }
    fn describe(&self) -> String {
        format!(
            "each a 4 KiB O_DIRECT write and read-back on {} through the kernel's nvme driver",
            self.dev.display()
        )
    }
}

/// The options of a `dma-copy` run for the IDE flow: 4 KiB copies, MSI-X
/// completion on vector 0.
pub fn dma_copy_args(bdf: &str) -> dma_copy::Args {
    dma_copy::Args {
        bdf: bdf.to_string(),
        size: 4096,
        count: 0,
        vector: 0,
        timeout: Duration::from_secs(5),
        poll: false,
        reset: false,
        json: false,
    }
}

/// DMA copies of the DMA-copy device through vfio-pci.
pub struct DmaCopyIo<'a, 'b> {
    c: &'a mut Copier<'b>,
}

impl<'a, 'b> DmaCopyIo<'a, 'b> {
    /// Copies with `c`.
    pub fn new(c: &'a mut Copier<'b>) -> Self {
        DmaCopyIo { c }
    }
}

impl Workload for DmaCopyIo<'_, '_> {
    fn one(&mut self, n: u64) -> Result<(), String> {
        self.c.copy(n as u32)
    }
    fn unit(&self) -> &'static str {
        "copies"
    }
    fn describe(&self) -> String {
        "4 KiB DMA copies of the DMA-copy device through vfio-pci, data, counters and MSI-X checked"
            .into()
    }
    fn refused(&mut self, n: u64) -> Result<Option<String>, String> {
        match self.c.copy(n as u32) {
            Ok(()) => Err("a DMA copy went through an enabled stream that is not SECURE".into()),
            Err(e) if e.contains("device reports ERROR") => {
                Ok(Some(format!("the copy was refused by the link: {e}")))
            }
            Err(e) => Err(format!("the copy failed otherwise than refused: {e}")),
        }
    }
}
