//! `nvme-dptr`: the PRP and SGL walkers on adversarial data pointers and
//! adversarial PRP lists / SGL segments in host memory.
//!
//! Input: a control byte (memory page size 4-32 KiB, direction), PRP1, PRP2,
//! the transfer length, SGL1, then an image of host memory at [`MEM`] that
//! holds the PRP lists and SGL segments (anything outside it fails to read,
//! as unmapped guest memory does). Seeds are well-formed pointers and lists
//! (single page, two pages, a chained PRP list, SGL data blocks, segments,
//! last segments, bit buckets).
//!
//! Oracles: an accepted PRP walk describes exactly `len` bytes, every
//! segment after the first starts on a page boundary, and it has at most one
//! segment per page; an accepted SGL describes exactly `len` bytes (excess is
//! ignored), bit buckets only for transfers to the host, and at most
//! [`MAX_SGL_DESCRIPTORS`] segments.

use crate::engine::Target;
use crate::mutate::Cursor;
use trustdev_devices::nvme::dptr::{
    prp_segments, sgl_segments, total, Dir, HostMem, Seg, MAX_SGL_DESCRIPTORS,
};
use vfio_user_server::dma::DmaError;

/// Guest address of the memory image.
pub const MEM: u64 = 0x10_0000;

/// Host memory: the image in the input, nothing else.
struct Image<'a>(&'a [u8]);

impl HostMem for Image<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len();
        let src = addr
            .checked_sub(MEM)
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| self.0.get(off..off.checked_add(len)?))
            .ok_or(DmaError::OutOfBounds {
                iova: addr,
                len: len as u64,
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The `nvme-dptr` target.
#[derive(Debug)]
pub struct NvmeDptr {
    seeds: Vec<Vec<u8>>,
    segs: Vec<Seg>,
    prp_ok: u64,
    sgl_ok: u64,
}

/// An SGL descriptor.
pub fn sgl_desc(addr: u64, len: u32, kind: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[15] = kind << 4;
    d
}

fn input(ctl: u8, prp1: u64, prp2: u64, len: u32, sgl1: [u8; 16], mem: &[u8]) -> Vec<u8> {
    let mut v = vec![ctl];
    v.extend_from_slice(&prp1.to_le_bytes());
    v.extend_from_slice(&prp2.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&sgl1);
    v.extend_from_slice(mem);
    v
}

fn qwords(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl NvmeDptr {
    /// The target and its seeds.
    pub fn new() -> Self {
        let p = 4096u64;
        let data = 0x80_0000u64;
        let none = [0u8; 16];
        // A PRP list of three entries at MEM, and a chained one: the first
        // list page's last entry points to a second page at MEM + 4096.
        let list = qwords(&[data + p, data + 2 * p, data + 3 * p]);
        let mut chained = vec![0u8; 4096];
        for i in 0..511u64 {
            chained[i as usize * 8..i as usize * 8 + 8]
                .copy_from_slice(&(data + (i + 1) * p).to_le_bytes());
        }
        chained[4088..].copy_from_slice(&(MEM + p).to_le_bytes());
        chained.extend(qwords(&[data + 600 * p, data + 601 * p]));
        // SGL: a segment of two data blocks chaining to a last segment with a
        // bit bucket and a data block.
        let mut sgl = Vec::new();
        sgl.extend(sgl_desc(data, 512, 0));
        sgl.extend(sgl_desc(MEM + 64, 32, 3));
        sgl.extend([0u8; 32]);
        sgl.extend(sgl_desc(0, 512, 1));
        sgl.extend(sgl_desc(data + p, 1024, 0));
        let seeds = vec![
            input(0, data, 0, 512, none, &[]),
            input(0, data + 0x800, data + p, 4096, none, &[]),
            input(0, data, MEM, 4 * 4096, none, &list),
            input(
                0,
                data,
                MEM + 8,
                3 * 4096,
                none,
                &qwords(&[0, data + p, data + 2 * p]),
            ),
            input(0, data, MEM, 513 * 4096, none, &chained),
            input(
                1,
                data,
                MEM,
                3 * 8192,
                none,
                &qwords(&[data + 8192, data + 16384]),
            ),
            input(4, 0, 0, 2048, sgl_desc(data, 4096, 0), &[]),
            input(4, 0, 0, 1536, sgl_desc(MEM, 32, 2), &sgl),
            input(0, 0, 0, 2048, sgl_desc(MEM, 32, 2), &sgl),
            input(4, 0, 0, 1024, sgl_desc(MEM + 64, 32, 3), &sgl[64..]),
        ];
        NvmeDptr {
            seeds,
            segs: Vec::new(),
            prp_ok: 0,
            sgl_ok: 0,
        }
    }
}

impl Default for NvmeDptr {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for NvmeDptr {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        8192
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut c = Cursor::new(input);
        let ctl = c.u8();
        let page = 4096u64 << (ctl & 3);
        let dir = if ctl & 4 != 0 {
            Dir::ToHost
        } else {
            Dir::FromHost
        };
        let (prp1, prp2) = (c.u64(), c.u64());
        // Lengths up to 4 GiB: far past any MDTS, to stress the bounds.
        let len = u64::from(c.u32());
        let mut sgl1 = [0u8; 16];
        let s = c.bytes(16);
        sgl1[..s.len()].copy_from_slice(s);
        let mem = Image(c.rest());

        if prp_segments(&mem, prp1, prp2, len, page, &mut self.segs).is_ok() {
            self.prp_ok += 1;
            let segs = &self.segs;
            if total(segs) != len {
                return Err(format!(
                    "PRP walk of {len} bytes accepted {} bytes: {segs:x?}",
                    total(segs)
                ));
            }
            if segs.iter().skip(1).any(|s| s.addr % page != 0 || s.bucket) {
                return Err(format!("PRP segment not page aligned: {segs:x?}"));
            }
            if segs.len() as u64 > len / page + 2 {
                return Err(format!("{} PRP segments for {len} bytes", segs.len()));
            }
        }
        if sgl_segments(&mem, sgl1, len, dir, &mut self.segs).is_ok() {
            self.sgl_ok += 1;
            let segs = &self.segs;
            if total(segs) != len {
                return Err(format!(
                    "SGL of {len} bytes accepted {} bytes: {segs:x?}",
                    total(segs)
                ));
            }
            if dir == Dir::FromHost && segs.iter().any(|s| s.bucket) {
                return Err("bit bucket accepted for a transfer from the host".into());
            }
            if segs.len() > MAX_SGL_DESCRIPTORS + 1 {
                return Err(format!("{} SGL segments", segs.len()));
            }
            if segs
                .iter()
                .any(|s| s.len == 0 || (!s.bucket && s.addr.checked_add(s.len).is_none()))
            {
                return Err(format!("empty or wrapping SGL segment: {segs:x?}"));
            }
        }
        Ok(())
    }

    fn stats(&self) -> String {
        format!(
            "PRP walks accepted {}, SGL walks accepted {}",
            self.prp_ok, self.sgl_ok
        )
    }
}
