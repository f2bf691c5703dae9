//! A simple IOMMU model for vfio-user clients of the PASID extension: the
//! client's "physical" memory is a memfd (mapped into the server's
//! translated address space with TRANSLATED_DMA_MAP), and each bound PASID
//! has a 4-level page table stored in that memory, as a process's page
//! tables are. The model answers ATS_TRANSLATE, PASID_DMA_READ/WRITE and
//! walks the tables for the client's own CPU-side accesses.
//!
//! Page table format (x86-64-like, 4 KiB pages, 48-bit virtual addresses):
//! each table is one 4 KiB page of 512 little-endian u64 entries, indexed
//! by VA bits 47:39, 38:30, 29:21 and 20:12. An entry holds the physical
//! address of the next table (or, at the last level, of the page) in bits
//! 51:12 and flags: bit 0 present, bit 1 writable, bit 2 executable.
//! Memory is read and written with `pread`/`pwrite` on the memfd (no
//! mapping on the client side).

use crate::protocol::pasid::{
    encode_translation, entry_flags, PageRequest, PageResponse, PageResponseCode, PasidTag,
    PasidTransfer, TranslateRequest, TranslationEntry, MAX_TRANSLATION_ENTRIES, PAGE,
};
use crate::protocol::Command;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

/// PTE: present.
pub const PTE_P: u64 = 1 << 0;
/// PTE: writable.
pub const PTE_W: u64 = 1 << 1;
/// PTE: executable.
pub const PTE_X: u64 = 1 << 2;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Highest user virtual address + 1 (48-bit canonical lower half).
pub const VA_LIMIT: u64 = 1 << 47;

/// Errors of the model's own accesses.
#[derive(Debug, thiserror::Error)]
pub enum IommuError {
    /// The PASID has no page table.
    #[error("PASID {0:#x} is not bound")]
    Unbound(u32),
    /// The virtual page is not mapped (or not writable for a write).
    #[error("PASID {pasid:#x}: {va:#x} is not mapped{}", if *write { " writable" } else { "" })]
    NotMapped {
        /// PASID.
        pasid: u32,
        /// Virtual address.
        va: u64,
        /// Write access.
        write: bool,
    },
    /// Physical memory is exhausted.
    #[error("out of physical memory")]
    OutOfMemory,
    /// The address is not canonical / outside the model.
    #[error("{0:#x} is outside the model's address range")]
    BadAddress(u64),
    /// memfd I/O.
    #[error("memory: {0}")]
    Io(#[from] io::Error),
}

/// Client memory with per-PASID page tables.
#[derive(Debug)]
pub struct IommuModel {
    file: File,
    /// Physical address of the memory's first byte.
    base: u64,
    size: u64,
    /// Next never-used physical page (bump allocator) and freed pages.
    next: u64,
    free: Vec<u64>,
    /// PASID table: PASID -> physical address of its top-level table.
    roots: HashMap<u32, u64>,
}

impl IommuModel {
    /// `size` bytes (a multiple of 4 KiB) of physical memory at physical
    /// address `base`.
    pub fn new(base: u64, size: u64) -> io::Result<IommuModel> {
        if base % PAGE != 0 || size % PAGE != 0 || size == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let fd = nix::sys::memfd::memfd_create(
            c"iommu-model",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let file = File::from(fd);
        file.set_len(size)?;
        Ok(IommuModel {
            file,
            base,
            size,
            next: base,
            free: Vec::new(),
            roots: HashMap::new(),
        })
    }

    /// The memfd (for TRANSLATED_DMA_MAP).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Physical base address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Physical size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn off(&self, pa: u64, len: u64) -> Result<u64, IommuError> {
        match pa.checked_sub(self.base) {
            Some(o) if o.checked_add(len).is_some_and(|e| e <= self.size) => Ok(o),
            _ => Err(IommuError::BadAddress(pa)),
        }
    }

    /// Reads physical memory.
    pub fn read_pa(&self, pa: u64, buf: &mut [u8]) -> Result<(), IommuError> {
        let o = self.off(pa, buf.len() as u64)?;
        self.file.read_exact_at(buf, o)?;
        Ok(())
    }

    /// Writes physical memory.
    pub fn write_pa(&self, pa: u64, buf: &[u8]) -> Result<(), IommuError> {
        let o = self.off(pa, buf.len() as u64)?;
        self.file.write_all_at(buf, o)?;
        Ok(())
    }

    fn read_u64(&self, pa: u64) -> Result<u64, IommuError> {
        let mut b = [0u8; 8];
        self.read_pa(pa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_u64(&self, pa: u64, v: u64) -> Result<(), IommuError> {
        self.write_pa(pa, &v.to_le_bytes())
    }

    /// Allocates a zeroed physical page.
    pub fn alloc_page(&mut self) -> Result<u64, IommuError> {
        let pa = match self.free.pop() {
            Some(p) => p,
            None if self.next < self.base + self.size => {
                let p = self.next;
                self.next += PAGE;
                p
            }
            None => return Err(IommuError::OutOfMemory),
        };
        self.write_pa(pa, &[0u8; PAGE as usize])?;
        Ok(pa)
    }

    /// Returns a page to the allocator.
    pub fn free_page(&mut self, pa: u64) {
        self.free.push(pa);
    }

    /// Creates an (empty) address space for `pasid` (an SVA bind).
    pub fn bind(&mut self, pasid: u32) -> Result<(), IommuError> {
        if !self.roots.contains_key(&pasid) {
            let root = self.alloc_page()?;
            self.roots.insert(pasid, root);
        }
        Ok(())
    }

    /// Drops the address space of `pasid` (its tables are leaked into the
    /// free list, data pages stay with their owner).
    pub fn unbind(&mut self, pasid: u32) -> bool {
        self.roots.remove(&pasid).is_some()
    }

    /// Whether `pasid` is bound.
    pub fn is_bound(&self, pasid: u32) -> bool {
        self.roots.contains_key(&pasid)
    }

    fn index(va: u64, level: u32) -> u64 {
        (va >> (12 + 9 * level)) & 0x1ff
    }

    /// The leaf PTE slot of `va`, creating tables on the way if `create`.
    fn slot(&mut self, pasid: u32, va: u64, create: bool) -> Result<Option<u64>, IommuError> {
        if va >= VA_LIMIT {
            return Err(IommuError::BadAddress(va));
        }
        let mut table = *self.roots.get(&pasid).ok_or(IommuError::Unbound(pasid))?;
        for level in (1..4).rev() {
            let slot = table + Self::index(va, level) * 8;
            let e = self.read_u64(slot)?;
            table = if e & PTE_P != 0 {
                e & PTE_ADDR
            } else if create {
                let t = self.alloc_page()?;
                self.write_u64(slot, t | PTE_P | PTE_W)?;
                t
            } else {
                return Ok(None);
            };
        }
        Ok(Some(table + Self::index(va, 0) * 8))
    }

    /// Maps the page at `va` to physical page `pa` with `flags` (PTE_W,
    /// PTE_X).
    pub fn map(&mut self, pasid: u32, va: u64, pa: u64, flags: u64) -> Result<(), IommuError> {
        self.off(pa, PAGE)?;
        let slot = self
            .slot(pasid, va & !(PAGE - 1), true)?
            .ok_or(IommuError::BadAddress(va))?;
        self.write_u64(slot, (pa & PTE_ADDR) | PTE_P | (flags & (PTE_W | PTE_X)))
    }

    /// Maps `len` bytes from `va` to freshly allocated pages; returns the
    /// physical pages in order.
    pub fn map_new(
        &mut self,
        pasid: u32,
        va: u64,
        len: u64,
        flags: u64,
    ) -> Result<Vec<u64>, IommuError> {
        let mut pages = Vec::new();
        let start = va & !(PAGE - 1);
        let end = va.checked_add(len).ok_or(IommuError::BadAddress(va))?;
        let mut p = start;
        while p < end {
            let pa = self.alloc_page()?;
            self.map(pasid, p, pa, flags)?;
            pages.push(pa);
            p += PAGE;
        }
        Ok(pages)
    }

    /// Unmaps the page at `va`; returns its physical page if it was mapped.
    pub fn unmap(&mut self, pasid: u32, va: u64) -> Result<Option<u64>, IommuError> {
        let Some(slot) = self.slot(pasid, va & !(PAGE - 1), false)? else {
            return Ok(None);
        };
        let e = self.read_u64(slot)?;
        self.write_u64(slot, 0)?;
        Ok((e & PTE_P != 0).then_some(e & PTE_ADDR))
    }

    /// Walks the tables: (physical address, PTE flags) of `va`, or `None`
    /// when not mapped.
    pub fn walk(&self, pasid: u32, va: u64) -> Result<Option<(u64, u64)>, IommuError> {
        if va >= VA_LIMIT {
            return Ok(None);
        }
        let mut table = *self.roots.get(&pasid).ok_or(IommuError::Unbound(pasid))?;
        let mut entry = 0;
        for level in (0..4).rev() {
            entry = self.read_u64(table + Self::index(va, level) * 8)?;
            if entry & PTE_P == 0 {
                return Ok(None);
            }
            table = entry & PTE_ADDR;
        }
        // `table` is now the page; the flags are those of the leaf entry.
        Ok(Some((table + (va & (PAGE - 1)), entry & (PTE_W | PTE_X))))
    }

    /// Walks `[va, va+len)` page by page, calling `each(pa, offset, n)`.
    fn access_va(
        &self,
        pasid: u32,
        va: u64,
        len: usize,
        write: bool,
        mut each: impl FnMut(u64, usize, usize) -> Result<(), IommuError>,
    ) -> Result<(), IommuError> {
        let mut done = 0usize;
        while done < len {
            let at = va
                .checked_add(done as u64)
                .ok_or(IommuError::BadAddress(va))?;
            let (pa, flags) = self.walk(pasid, at)?.ok_or(IommuError::NotMapped {
                pasid,
                va: at,
                write,
            })?;
            if write && flags & PTE_W == 0 {
                return Err(IommuError::NotMapped {
                    pasid,
                    va: at,
                    write,
                });
            }
            let n = ((PAGE - (at & (PAGE - 1))) as usize).min(len - done);
            each(pa, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at virtual address `va` of `pasid`.
    pub fn read_va(&self, pasid: u32, va: u64, buf: &mut [u8]) -> Result<(), IommuError> {
        let len = buf.len();
        self.access_va(pasid, va, len, false, |pa, off, n| {
            self.read_pa(pa, &mut buf[off..off + n])
        })
    }

    /// Writes `buf` at virtual address `va` of `pasid`.
    pub fn write_va(&self, pasid: u32, va: u64, buf: &[u8]) -> Result<(), IommuError> {
        self.access_va(pasid, va, buf.len(), true, |pa, off, n| {
            self.write_pa(pa, &buf[off..off + n])
        })
    }

    /// Answers an ATS translation request: one entry per run of pages that
    /// are contiguous in physical memory with the same permissions, and
    /// runs of unmapped pages as not-present entries. `Err(errno)`: ESRCH
    /// for an unbound PASID, EINVAL for a request without PASID.
    pub fn translate(&self, req: &TranslateRequest) -> Result<Vec<TranslationEntry>, i32> {
        let Some(tag) = req.tag else {
            return Err(libc::EINVAL);
        };
        if !self.is_bound(tag.pasid) {
            return Err(libc::ESRCH);
        }
        let mut out: Vec<TranslationEntry> = Vec::new();
        let mut va = req.address;
        let end = req.address + req.size;
        while va < end {
            let (pa, flags) = match self.walk(tag.pasid, va) {
                Ok(Some((pa, f))) => {
                    let mut fl = entry_flags::R;
                    if f & PTE_W != 0 && !req.no_write {
                        fl |= entry_flags::W;
                    }
                    if f & PTE_X != 0 && tag.exec {
                        fl |= entry_flags::X;
                    }
                    if tag.privileged {
                        fl |= entry_flags::PRIV;
                    }
                    (pa, fl)
                }
                Ok(None) | Err(IommuError::BadAddress(_)) => (0, 0),
                Err(_) => return Err(libc::EIO),
            };
            let full = out.len() as u32 == MAX_TRANSLATION_ENTRIES;
            match out.last_mut() {
                Some(last)
                    if last.flags == flags && (flags == 0 || last.translated + last.size == pa) =>
                {
                    last.size += PAGE;
                }
                _ if full => break,
                _ => out.push(TranslationEntry {
                    address: va,
                    translated: pa,
                    size: PAGE,
                    flags,
                }),
            }
            va += PAGE;
        }
        Ok(out)
    }

    /// Serves a PASID-tagged read (PASID_DMA_READ): errno EFAULT when a
    /// page is not mapped, ESRCH for an unbound PASID.
    pub fn dma_read(&self, tag: PasidTag, va: u64, buf: &mut [u8]) -> Result<(), i32> {
        self.read_va(tag.pasid, va, buf).map_err(errno)
    }

    /// Serves a PASID-tagged write (PASID_DMA_WRITE).
    pub fn dma_write(&self, tag: PasidTag, va: u64, buf: &[u8]) -> Result<(), i32> {
        self.write_va(tag.pasid, va, buf).map_err(errno)
    }
}

/// Resolves a page request on the client side (the IOMMU driver's fault
/// handler): typically maps the page and answers Success.
pub type FaultHandler = Box<dyn FnMut(&mut IommuModel, &PageRequest) -> PageResponseCode + Send>;

/// What serving one server request produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// Reply with this payload.
    Reply(Vec<u8>),
    /// Error reply with this errno.
    Error(i32),
    /// A posted request (no reply); possibly a PAGE_RESPONSE to send.
    Posted(Option<PageResponse>),
}

/// The client side of the PASID extension: the IOMMU model plus page
/// request bookkeeping.
pub struct PasidClient {
    /// The IOMMU and its memory.
    pub iommu: IommuModel,
    /// Page requests received and not answered by `fault_handler`, in
    /// arrival order (answer them with `Client::page_response`).
    pub page_requests: Vec<PageRequest>,
    /// Resolves page requests automatically when set.
    pub fault_handler: Option<FaultHandler>,
    /// Outcome so far of groups whose last request has not arrived.
    groups: HashMap<(Option<u32>, u16), PageResponseCode>,
    /// ATS_TRANSLATE requests answered.
    pub translations_served: u64,
    /// PASID_DMA_READ/WRITE requests answered.
    pub pasid_dma_served: u64,
}

impl std::fmt::Debug for PasidClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasidClient")
            .field("page_requests", &self.page_requests.len())
            .field("translations_served", &self.translations_served)
            .finish()
    }
}

impl PasidClient {
    /// Client state around `iommu`, with no fault handler.
    pub fn new(iommu: IommuModel) -> Self {
        PasidClient {
            iommu,
            page_requests: Vec::new(),
            fault_handler: None,
            groups: HashMap::new(),
            translations_served: 0,
            pasid_dma_served: 0,
        }
    }

    /// Serves one server-to-client request of the extension.
    pub fn serve(&mut self, cmd: Command, payload: &[u8]) -> Served {
        match cmd {
            Command::AtsTranslate => match TranslateRequest::decode(payload) {
                Ok(req) => {
                    self.translations_served += 1;
                    match self.iommu.translate(&req) {
                        Ok(entries) => Served::Reply(encode_translation(&entries)),
                        Err(e) => Served::Error(e),
                    }
                }
                Err(_) => Served::Error(libc::EINVAL),
            },
            Command::PasidDmaRead => match PasidTransfer::decode(payload, "PASID_DMA_READ") {
                Ok((t, _)) => {
                    self.pasid_dma_served += 1;
                    let Ok(n) = usize::try_from(t.count) else {
                        return Served::Error(libc::EINVAL);
                    };
                    if n > 64 << 20 {
                        return Served::Error(libc::E2BIG);
                    }
                    let mut buf = vec![0u8; n];
                    match self.iommu.dma_read(t.tag, t.address, &mut buf) {
                        Ok(()) => Served::Reply(t.encode(&buf)),
                        Err(e) => Served::Error(e),
                    }
                }
                Err(_) => Served::Error(libc::EINVAL),
            },
            Command::PasidDmaWrite => match PasidTransfer::decode(payload, "PASID_DMA_WRITE") {
                Ok((t, data)) if data.len() as u64 == t.count => {
                    self.pasid_dma_served += 1;
                    match self.iommu.dma_write(t.tag, t.address, data) {
                        Ok(()) => Served::Reply(t.encode(&[])),
                        Err(e) => Served::Error(e),
                    }
                }
                _ => Served::Error(libc::EINVAL),
            },
            Command::PageRequest => {
                let Ok(pr) = PageRequest::decode(payload) else {
                    return Served::Posted(None);
                };
                let Some(handler) = self.fault_handler.as_mut() else {
                    self.page_requests.push(pr);
                    return Served::Posted(None);
                };
                let code = handler(&mut self.iommu, &pr);
                let key = (pr.tag.map(|t| t.pasid), pr.group);
                let so_far = self
                    .groups
                    .remove(&key)
                    .unwrap_or(PageResponseCode::Success);
                let code = if so_far == PageResponseCode::Success {
                    code
                } else {
                    so_far
                };
                if !pr.last {
                    self.groups.insert(key, code);
                    return Served::Posted(None);
                }
                Served::Posted(Some(PageResponse {
                    pasid: key.0,
                    group: pr.group,
                    code,
                }))
            }
            _ => Served::Error(libc::ENOSYS),
        }
    }
}

fn errno(e: IommuError) -> i32 {
    match e {
        IommuError::Unbound(_) => libc::ESRCH,
        IommuError::NotMapped { .. } | IommuError::BadAddress(_) => libc::EFAULT,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_translate_and_coalesce() {
        let mut m = IommuModel::new(0x1000_0000, 64 * PAGE).unwrap();
        assert!(matches!(
            m.map(1, 0, 0x1000_0000, 0),
            Err(IommuError::Unbound(1))
        ));
        m.bind(1).unwrap();
        let pa = m.alloc_page().unwrap();
        let pb = m.alloc_page().unwrap();
        let va = 0x7fff_0000_0000;
        m.map(1, va, pa, PTE_W).unwrap();
        m.map(1, va + PAGE, pb, PTE_W).unwrap();
        m.write_va(1, va + PAGE - 2, b"abcd").unwrap();
        let mut b = [0u8; 4];
        m.read_va(1, va + PAGE - 2, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        m.read_pa(pb, &mut b[..2]).unwrap();
        assert_eq!(&b[..2], b"cd");
        let tag = PasidTag {
            pasid: 1,
            privileged: false,
            exec: false,
        };
        let req = TranslateRequest {
            tag: Some(tag),
            no_write: false,
            address: va,
            size: 3 * PAGE,
        };
        let t = m.translate(&req).unwrap();
        // Two adjacent physical pages coalesce; the third page is absent.
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].translated, t[0].size), (pa, 2 * PAGE));
        assert_eq!(t[0].flags, entry_flags::R | entry_flags::W);
        assert_eq!((t[1].address, t[1].flags), (va + 2 * PAGE, 0));
        let ro = TranslateRequest {
            no_write: true,
            ..req
        };
        assert_eq!(m.translate(&ro).unwrap()[0].flags, entry_flags::R);
        assert_eq!(m.unmap(1, va).unwrap(), Some(pa));
        assert_eq!(m.dma_read(tag, va, &mut b), Err(libc::EFAULT));
        assert!(m.unbind(1));
        assert_eq!(m.translate(&req), Err(libc::ESRCH));
    }
}
