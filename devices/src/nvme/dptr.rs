//! Data pointers: turns a command's PRP entries or SGL into a list of
//! guest-memory segments, validating everything the host supplied, and moves
//! data between those segments and controller buffers.
//!
//! PRP rules (NVMe 2.0 base, 4.1.1): PRP1 may carry a dword-aligned offset;
//! every later entry must be memory-page aligned; when the transfer needs
//! more than two pages PRP2 points to a PRP list (qword aligned, it may start
//! inside a page) whose last entry in each page chains to the next list page.
//!
//! SGL rules (4.1.2): SGL1 is a Data Block, Segment or Last Segment
//! descriptor; a segment is an array of 16-byte descriptors in host memory;
//! only its last descriptor may point to the next segment, and a Last
//! Segment contains no segment descriptors. Bit Bucket descriptors discard
//! read data and are invalid for writes.

use super::spec::Status;
use vfio_user_server::dma::{DmaError, GuestMemory};

/// One piece of the host buffer of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest (DMA) address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// A Bit Bucket: read data for these bytes is discarded.
    pub bucket: bool,
}

/// Host memory as the walker sees it (a trait so tests can fake it).
pub trait HostMem {
    /// Copies host memory at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError>;
}

impl HostMem for GuestMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        GuestMemory::read(self, addr, buf)
    }
}

/// Direction of a transfer, from the host's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Controller to host (Read, Identify, Get Log Page).
    ToHost,
    /// Host to controller (Write, Set Features data, DSM ranges).
    FromHost,
}

/// Most SGL descriptors one command may use (bounds the walk).
pub const MAX_SGL_DESCRIPTORS: usize = 4096;

fn push(out: &mut Vec<Seg>, addr: u64, len: u64, bucket: bool) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.bucket == bucket && !bucket && last.addr.checked_add(last.len) == Some(addr) {
            last.len += len;
            return;
        }
        if last.bucket && bucket {
            last.len += len;
            return;
        }
    }
    out.push(Seg { addr, len, bucket });
}

/// Walks PRP1/PRP2 for a transfer of `len` bytes with memory page size
/// `page` (a power of two >= 4096) into `out` (cleared first).
pub fn prp_segments(
    mem: &dyn HostMem,
    prp1: u64,
    prp2: u64,
    len: u64,
    page: u64,
    out: &mut Vec<Seg>,
) -> Result<(), Status> {
    out.clear();
    if len == 0 {
        return Ok(());
    }
    let mask = page - 1;
    if prp1 & 3 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let first = len.min(page - (prp1 & mask));
    push(out, prp1, first, false);
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= page {
        if prp2 & mask != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        push(out, prp2, remaining, false);
        return Ok(());
    }
    // PRP2 is a list pointer.
    if prp2 & 7 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let mut list = prp2;
    let mut entries = vec![0u8; 0];
    // Every list page yields at least one data entry except possibly the
    // first (a list starting in the page's last qword is only a chain
    // pointer), so this bound is never reached by a valid list.
    let mut budget = len / page + 3;
    loop {
        if budget == 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        budget -= 1;
        let in_page = (page - (list & mask)) / 8;
        let needed = remaining.div_ceil(page);
        let chained = needed > in_page;
        let n = if chained { in_page } else { needed } as usize;
        entries.resize(n * 8, 0);
        mem.read(list, &mut entries)
            .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        let data_entries = if chained { n - 1 } else { n };
        for i in 0..data_entries {
            let e = u64::from_le_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            if e & mask != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            let l = remaining.min(page);
            push(out, e, l, false);
            remaining -= l;
        }
        if remaining == 0 {
            return Ok(());
        }
        let next = u64::from_le_bytes(entries[(n - 1) * 8..n * 8].try_into().unwrap_or([0; 8]));
        if next & mask != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        list = next;
    }
}

/// SGL descriptor types.
mod sgl_type {
    pub const DATA_BLOCK: u8 = 0x0;
    pub const BIT_BUCKET: u8 = 0x1;
    pub const SEGMENT: u8 = 0x2;
    pub const LAST_SEGMENT: u8 = 0x3;
}

#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    kind: u8,
    subtype: u8,
}

impl Desc {
    fn parse(b: &[u8]) -> Desc {
        Desc {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8])),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4])),
            kind: b[15] >> 4,
            subtype: b[15] & 0xf,
        }
    }
}

/// Walks an SGL for a transfer of `len` bytes into `out` (cleared first).
/// An SGL describing more than `len` bytes is accepted (SGLS bit 18) and
/// the excess is ignored.
pub fn sgl_segments(
    mem: &dyn HostMem,
    sgl1: [u8; 16],
    len: u64,
    dir: Dir,
    out: &mut Vec<Seg>,
) -> Result<(), Status> {
    out.clear();
    let mut remaining = len;
    let mut used = 0usize;
    let take = |d: &Desc, remaining: &mut u64, out: &mut Vec<Seg>| -> Result<(), Status> {
        if d.subtype != 0 {
            return Err(Status::SGL_TYPE_INVALID);
        }
        let n = u64::from(d.len).min(*remaining);
        match d.kind {
            sgl_type::DATA_BLOCK => {
                if n > 0 && d.addr.checked_add(n).is_none() {
                    return Err(Status::DATA_TRANSFER_ERROR);
                }
                push(out, d.addr, n, false);
            }
            sgl_type::BIT_BUCKET => {
                if dir == Dir::FromHost {
                    return Err(Status::SGL_TYPE_INVALID);
                }
                push(out, 0, n, true);
            }
            _ => return Err(Status::SGL_TYPE_INVALID),
        }
        *remaining -= n;
        Ok(())
    };
    let first = Desc::parse(&sgl1);
    let mut seg = match first.kind {
        sgl_type::DATA_BLOCK | sgl_type::BIT_BUCKET => {
            take(&first, &mut remaining, out)?;
            None
        }
        sgl_type::SEGMENT | sgl_type::LAST_SEGMENT => {
            if first.subtype != 0 {
                return Err(Status::SGL_TYPE_INVALID);
            }
            Some(first)
        }
        _ => return Err(Status::SGL_TYPE_INVALID),
    };
    const CHUNK: usize = 256;
    let mut buf = vec![0u8; 0];
    while let Some(s) = seg.take() {
        if remaining == 0 {
            break;
        }
        if s.len == 0 || s.len % 16 != 0 {
            return Err(Status::INVALID_SGL_SEGMENT);
        }
        let is_last = s.kind == sgl_type::LAST_SEGMENT;
        let count = (s.len / 16) as usize;
        used = used.saturating_add(count);
        if used > MAX_SGL_DESCRIPTORS {
            return Err(Status::INVALID_SGL_COUNT);
        }
        let mut idx = 0usize;
        while idx < count && remaining > 0 {
            let n = (count - idx).min(CHUNK);
            buf.resize(n * 16, 0);
            let addr = s
                .addr
                .checked_add(idx as u64 * 16)
                .ok_or(Status::DATA_TRANSFER_ERROR)?;
            mem.read(addr, &mut buf)
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            for k in 0..n {
                let d = Desc::parse(&buf[k * 16..k * 16 + 16]);
                let pos = idx + k;
                match d.kind {
                    sgl_type::SEGMENT | sgl_type::LAST_SEGMENT => {
                        // Only a Segment's last descriptor may chain.
                        if is_last || pos != count - 1 {
                            return Err(Status::INVALID_SGL_SEGMENT);
                        }
                        if d.subtype != 0 {
                            return Err(Status::SGL_TYPE_INVALID);
                        }
                        seg = Some(d);
                    }
                    _ => {
                        take(&d, &mut remaining, out)?;
                        if remaining == 0 {
                            break;
                        }
                    }
                }
            }
            idx += n;
        }
        if seg.is_none() && remaining > 0 && !is_last {
            // A Segment whose last descriptor does not chain ends the list
            // too early.
            return Err(Status::SGL_LENGTH_INVALID);
        }
    }
    if remaining > 0 {
        return Err(Status::SGL_LENGTH_INVALID);
    }
    Ok(())
}

/// Total bytes described by `segs`.
pub fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// Copies `data` to the host buffer `segs` (bit buckets skip bytes).
pub fn write_to_host(mem: &GuestMemory, segs: &[Seg], data: &[u8]) -> Result<(), Status> {
    let mut pos = 0usize;
    for s in segs {
        let n = (s.len as usize).min(data.len().saturating_sub(pos));
        if n == 0 {
            break;
        }
        if !s.bucket {
            mem.write(s.addr, &data[pos..pos + n])
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        }
        pos += n;
    }
    Ok(())
}

/// Copies the host buffer `segs` into `data`.
pub fn read_from_host(mem: &GuestMemory, segs: &[Seg], data: &mut [u8]) -> Result<(), Status> {
    let mut pos = 0usize;
    for s in segs {
        let n = (s.len as usize).min(data.len().saturating_sub(pos));
        if n == 0 {
            break;
        }
        if !s.bucket {
            mem.read(s.addr, &mut data[pos..pos + n])
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
        }
        pos += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Sparse fake host memory: 4 KiB pages that exist only where written.
    #[derive(Default)]
    struct Fake {
        pages: BTreeMap<u64, Vec<u8>>,
    }

    impl Fake {
        fn put(&mut self, addr: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                let a = addr + i as u64;
                let p = self
                    .pages
                    .entry(a & !0xfff)
                    .or_insert_with(|| vec![0; 4096]);
                p[(a & 0xfff) as usize] = *b;
            }
        }
        fn put_u64s(&mut self, addr: u64, v: &[u64]) {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.put(addr, &b);
        }
    }

    impl HostMem for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr + i as u64;
                let p = self
                    .pages
                    .get(&(a & !0xfff))
                    .ok_or(DmaError::OutOfBounds { iova: a, len: 1 })?;
                *b = p[(a & 0xfff) as usize];
            }
            Ok(())
        }
    }

    const P: u64 = 4096;

    fn segs(v: &[(u64, u64)]) -> Vec<Seg> {
        v.iter()
            .map(|&(addr, len)| Seg {
                addr,
                len,
                bucket: false,
            })
            .collect()
    }

    #[test]
    fn prp_single_and_two_pages() {
        let m = Fake::default();
        let mut out = Vec::new();
        prp_segments(&m, 0x10200, 0, 512, P, &mut out).unwrap();
        assert_eq!(out, segs(&[(0x10200, 512)]));
        // Crosses one page boundary: PRP2 is the second page.
        prp_segments(&m, 0x10200, 0x50000, 4096, P, &mut out).unwrap();
        assert_eq!(out, segs(&[(0x10200, 0xe00), (0x50000, 0x200)]));
        // Contiguous pages merge.
        prp_segments(&m, 0x10000, 0x11000, 8192, P, &mut out).unwrap();
        assert_eq!(out, segs(&[(0x10000, 8192)]));
        assert_eq!(
            prp_segments(&m, 0x10002, 0, 512, P, &mut out),
            Err(Status::PRP_OFFSET_INVALID),
            "PRP1 must be dword aligned"
        );
        assert_eq!(
            prp_segments(&m, 0x10000, 0x50010, 8192, P, &mut out),
            Err(Status::PRP_OFFSET_INVALID),
            "PRP2 data pointer must be page aligned"
        );
        prp_segments(&m, 0, 0, 0, P, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn prp_list_and_chaining() {
        let mut m = Fake::default();
        // 4 pages: PRP1 + list of 3 at an offset inside its page.
        m.put_u64s(0x8f00, &[0x20000, 0x40000, 0x60000]);
        let mut out = Vec::new();
        prp_segments(&m, 0x1000, 0x8f00, 4 * P, P, &mut out).unwrap();
        assert_eq!(
            out,
            segs(&[(0x1000, P), (0x20000, P), (0x40000, P), (0x60000, P)])
        );
        // A list that starts in the last qword of its page is only a chain
        // pointer; the chained page holds the data entries.
        m.put_u64s(0xaff8, &[0xb000]);
        m.put_u64s(0xb000, &[0x70000, 0x90000]);
        prp_segments(&m, 0x1000, 0xaff8, 3 * P, P, &mut out).unwrap();
        assert_eq!(out, segs(&[(0x1000, P), (0x70000, P), (0x90000, P)]));
        // A full chain: 512 entries per page, the last chains.
        let n = 700u64;
        let mut first: Vec<u64> = (0..511).map(|i| 0x100_0000 + i * 2 * P).collect();
        first.push(0xc000);
        m.put_u64s(0xd000, &first);
        let second: Vec<u64> = (511..n - 1).map(|i| 0x100_0000 + i * 2 * P).collect();
        m.put_u64s(0xc000, &second);
        prp_segments(&m, 0x2000, 0xd000, n * P, P, &mut out).unwrap();
        assert_eq!(out.len() as u64, n);
        assert_eq!(total(&out), n * P);
        assert_eq!(out[n as usize - 1].addr, 0x100_0000 + (n - 2) * 2 * P);
        // Unaligned data entry in a list.
        m.put_u64s(0xe000, &[0x20000, 0x40008]);
        assert_eq!(
            prp_segments(&m, 0x1000, 0xe000, 3 * P, P, &mut out),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // Unaligned chain pointer.
        let mut bad = vec![0x20000u64; 511];
        bad.push(0xc010);
        m.put_u64s(0xf000, &bad);
        assert_eq!(
            prp_segments(&m, 0x1000, 0xf000, 600 * P, P, &mut out),
            Err(Status::PRP_OFFSET_INVALID)
        );
        // List in unmapped memory.
        assert_eq!(
            prp_segments(&m, 0x1000, 0x7777_0000, 3 * P, P, &mut out),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // Misaligned list pointer.
        assert_eq!(
            prp_segments(&m, 0x1000, 0x8f04, 4 * P, P, &mut out),
            Err(Status::PRP_OFFSET_INVALID)
        );
    }

    #[test]
    fn prp_self_referencing_chain_terminates() {
        let mut m = Fake::default();
        // Every entry of the page is a chain pointer back to the same page.
        let looped = vec![0x3000u64; 512];
        m.put_u64s(0x3000, &looped);
        let mut out = Vec::new();
        // 0x3000 as data pages: valid (aligned), the list is consumed in
        // order, and the walk ends when the length is covered.
        prp_segments(&m, 0x1000, 0x3000, 2000 * P, P, &mut out).unwrap();
        assert_eq!(total(&out), 2000 * P);
        // A list that starts at the last qword and chains to itself.
        m.put_u64s(0x5ff8, &[0x5000]);
        let r = prp_segments(&m, 0x1000, 0x5ff8, 4 * P, P, &mut out);
        assert!(r.is_ok() || r == Err(Status::PRP_OFFSET_INVALID));
    }

    #[test]
    fn prp_large_pages() {
        let mut m = Fake::default();
        let page = 65536;
        m.put_u64s(0x9000, &[0x100000, 0x200000]);
        let mut out = Vec::new();
        prp_segments(
            &m,
            0x30000 + 0x8000,
            0x9000,
            page * 2 + 0x8000,
            page,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            segs(&[(0x38000, 0x8000), (0x100000, page), (0x200000, page)])
        );
    }

    fn desc(addr: u64, len: u32, kind: u8) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[15] = kind << 4;
        d
    }

    #[test]
    fn sgl_data_block_and_segments() {
        let mut m = Fake::default();
        let mut out = Vec::new();
        sgl_segments(&m, desc(0x1234, 100, 0), 100, Dir::ToHost, &mut out).unwrap();
        assert_eq!(out, segs(&[(0x1234, 100)]));
        // Too short.
        assert_eq!(
            sgl_segments(&m, desc(0x1234, 100, 0), 200, Dir::ToHost, &mut out),
            Err(Status::SGL_LENGTH_INVALID)
        );
        // Longer than needed: excess ignored.
        sgl_segments(&m, desc(0x1234, 4096, 0), 512, Dir::ToHost, &mut out).unwrap();
        assert_eq!(out, segs(&[(0x1234, 512)]));
        // Segment -> (data, data, last segment) -> (data, bucket).
        let mut seg1 = Vec::new();
        seg1.extend(desc(0x10000, 1000, 0));
        seg1.extend(desc(0x20000, 24, 0));
        seg1.extend(desc(0x9000, 32, 3));
        m.put(0x8000, &seg1);
        let mut seg2 = Vec::new();
        seg2.extend(desc(0x30000, 500, 0));
        seg2.extend(desc(0, 524, 1));
        m.put(0x9000, &seg2);
        sgl_segments(&m, desc(0x8000, 48, 2), 2048, Dir::ToHost, &mut out).unwrap();
        assert_eq!(total(&out), 2048);
        assert_eq!(out[0], segs(&[(0x10000, 1000)])[0]);
        assert!(out[3].bucket);
        // Bit bucket in a write.
        assert_eq!(
            sgl_segments(&m, desc(0x8000, 48, 2), 2048, Dir::FromHost, &mut out),
            Err(Status::SGL_TYPE_INVALID)
        );
        assert_eq!(
            sgl_segments(&m, desc(0, 512, 1), 512, Dir::FromHost, &mut out),
            Err(Status::SGL_TYPE_INVALID)
        );
    }

    #[test]
    fn sgl_hostile() {
        let mut m = Fake::default();
        let mut out = Vec::new();
        // Keyed / transport / reserved types.
        for t in [4u8, 5, 6, 0xf] {
            assert_eq!(
                sgl_segments(&m, desc(0x1000, 512, t), 512, Dir::ToHost, &mut out),
                Err(Status::SGL_TYPE_INVALID)
            );
        }
        // Offset subtype.
        let mut d = desc(0x1000, 512, 0);
        d[15] |= 1;
        assert_eq!(
            sgl_segments(&m, d, 512, Dir::ToHost, &mut out),
            Err(Status::SGL_TYPE_INVALID)
        );
        // Segment length not a multiple of 16 / zero.
        assert_eq!(
            sgl_segments(&m, desc(0x8000, 20, 2), 512, Dir::ToHost, &mut out),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        assert_eq!(
            sgl_segments(&m, desc(0x8000, 0, 3), 512, Dir::ToHost, &mut out),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        // Segment descriptor inside a Last Segment.
        let mut s = Vec::new();
        s.extend(desc(0x10000, 100, 0));
        s.extend(desc(0xa000, 16, 2));
        m.put(0x8000, &s);
        assert_eq!(
            sgl_segments(&m, desc(0x8000, 32, 3), 512, Dir::ToHost, &mut out),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        // Segment descriptor not last in its segment.
        let mut s = Vec::new();
        s.extend(desc(0xa000, 16, 2));
        s.extend(desc(0x10000, 100, 0));
        m.put(0x8100, &s);
        assert_eq!(
            sgl_segments(&m, desc(0x8100, 32, 2), 512, Dir::ToHost, &mut out),
            Err(Status::INVALID_SGL_SEGMENT)
        );
        // A segment that chains to itself forever: bounded.
        let mut s = Vec::new();
        s.extend(desc(0x10000, 1, 0));
        s.extend(desc(0x8200, 32, 2));
        m.put(0x8200, &s);
        assert_eq!(
            sgl_segments(&m, desc(0x8200, 32, 2), 1 << 20, Dir::ToHost, &mut out),
            Err(Status::INVALID_SGL_COUNT)
        );
        // Segment in unmapped memory.
        assert_eq!(
            sgl_segments(&m, desc(0xdead_0000, 32, 2), 512, Dir::ToHost, &mut out),
            Err(Status::DATA_TRANSFER_ERROR)
        );
        // Address overflow.
        assert_eq!(
            sgl_segments(&m, desc(u64::MAX - 10, 512, 0), 512, Dir::ToHost, &mut out),
            Err(Status::DATA_TRANSFER_ERROR)
        );
    }
}
