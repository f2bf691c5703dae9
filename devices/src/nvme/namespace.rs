//! Namespaces: a backend, a block size, identifiers, and the Identify data
//! structures that describe them.

use super::backend::{Backend, BackendError, FileBackend, RamBackend};
use super::options::{NsBacking, NsConfig, NvmeConfig};
use std::sync::Arc;

/// One active namespace.
#[derive(Debug)]
pub struct Namespace {
    /// Namespace ID (1-based).
    pub nsid: u32,
    /// Storage.
    pub backend: Arc<dyn Backend>,
    /// log2 of the LBA data size.
    pub lba_shift: u8,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// EUI-64.
    pub eui64: [u8; 8],
    /// NGUID.
    pub nguid: [u8; 16],
    /// UUID.
    pub uuid: [u8; 16],
}

/// LBA formats the controller describes: 512 B and 4 KiB data, no metadata.
pub const LBA_FORMATS: [u8; 2] = [9, 12];

impl Namespace {
    /// Opens the storage of namespace `nsid`.
    pub fn open(nsid: u32, ns: &NsConfig, cfg: &NvmeConfig) -> Result<Namespace, BackendError> {
        let backend: Arc<dyn Backend> = match &ns.backing {
            NsBacking::Ram(size) => Arc::new(RamBackend::new(*size)?),
            NsBacking::File(path, size) => Arc::new(FileBackend::open(path, *size, cfg.cache)?),
        };
        Ok(Namespace::with_backend(nsid, backend, cfg.lba_shift, ns))
    }

    /// A namespace over an existing backend.
    pub fn with_backend(
        nsid: u32,
        backend: Arc<dyn Backend>,
        lba_shift: u8,
        ids: &NsConfig,
    ) -> Namespace {
        let blocks = backend.len() >> lba_shift;
        Namespace {
            nsid,
            backend,
            lba_shift,
            blocks,
            eui64: ids.eui64,
            nguid: ids.nguid,
            uuid: ids.uuid,
        }
    }

    /// Index of the formatted LBA format.
    pub fn flbas(&self) -> u8 {
        LBA_FORMATS
            .iter()
            .position(|&s| s == self.lba_shift)
            .unwrap_or(0) as u8
    }

    /// Identify Namespace (CNS 00h) for the NVM command set.
    pub fn identify(&self, mdts_blocks_hint: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put64(&mut b, 0, self.blocks); // NSZE
        put64(&mut b, 8, self.blocks); // NCAP
        put64(&mut b, 16, self.blocks); // NUSE
                                        // NSFEAT: bit 3 = NGUID/EUI64 never reused; bit 4 = NPWG.. fields valid.
        b[24] = (1 << 3) | (1 << 4);
        b[25] = (LBA_FORMATS.len() - 1) as u8; // NLBAF (0-based)
        b[26] = self.flbas(); // FLBAS
        b[27] = 0; // MC
        b[28] = 0; // DPC
        b[29] = 0; // DPS
        b[30] = 0; // NMIC
                   // DLFEAT: deallocated blocks read as zeroes (001b); Write Zeroes
                   // with DEAC deallocates (bit 3).
        b[33] = 0x1 | (1 << 3);
        // NVMCAP (16 bytes).
        let cap = u128::from(self.blocks) << self.lba_shift;
        b[48..64].copy_from_slice(&cap.to_le_bytes());
        // NPWG / NPWA / NPDG / NPDA / NOWS (0-based, in blocks): one memory
        // page granularity for 512 B blocks, one block for 4 KiB blocks.
        let per_page = (4096u32 >> self.lba_shift).max(1) as u16 - 1;
        let opt = (mdts_blocks_hint.clamp(1, 0x10000) - 1) as u16;
        for (at, v) in [
            (64, per_page),
            (66, per_page),
            (68, per_page),
            (70, per_page),
            (72, opt),
        ] {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        // ANAGRPID 0, NSATTR 0, NVMSETID 0, ENDGID 0.
        b[104..120].copy_from_slice(&self.nguid);
        b[120..128].copy_from_slice(&self.eui64);
        for (i, shift) in LBA_FORMATS.iter().enumerate() {
            // LBAF: MS = 0, LBADS (23:16), RP (25:24): 4 KiB "better".
            let rp: u32 = if *shift == 12 { 0 } else { 2 };
            let f: u32 = (u32::from(*shift) << 16) | (rp << 24);
            b[128 + 4 * i..132 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        b
    }

    /// I/O Command Set Independent Identify Namespace (CNS 08h).
    pub fn identify_cs_indep(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0] = 1 << 3; // NSFEAT: identifiers never reused
        b[1] = 0; // NMIC
        b[14] = 1; // NSTAT: namespace ready
        b
    }

    /// Namespace Identification Descriptor list (CNS 03h).
    pub fn descriptors(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let mut at = 0;
        let mut put = |b: &mut [u8], kind: u8, id: &[u8]| {
            b[at] = kind;
            b[at + 1] = id.len() as u8;
            b[at + 4..at + 4 + id.len()].copy_from_slice(id);
            at += 4 + id.len();
        };
        put(&mut b, 1, &self.eui64);
        put(&mut b, 2, &self.nguid);
        put(&mut b, 3, &self.uuid);
        put(&mut b, 4, &[super::spec::CSI_NVM]);
        b
    }

    /// Byte offset and length of `nlb` blocks at `slba`, or None when the
    /// range is not inside the namespace.
    pub fn range(&self, slba: u64, nlb: u64) -> Option<(u64, u64)> {
        let end = slba.checked_add(nlb)?;
        if end > self.blocks {
            return None;
        }
        Some((slba << self.lba_shift, nlb << self.lba_shift))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(size: u64, shift: u8) -> Namespace {
        let ids = NsConfig {
            backing: NsBacking::Ram(size),
            eui64: [1; 8],
            nguid: [2; 16],
            uuid: [3; 16],
        };
        Namespace::with_backend(1, Arc::new(RamBackend::new(size).unwrap()), shift, &ids)
    }

    #[test]
    fn identify_fields() {
        let n = ns(1 << 20, 9);
        let id = n.identify(256);
        assert_eq!(u64::from_le_bytes(id[0..8].try_into().unwrap()), 2048);
        assert_eq!(id[26], 0);
        assert_eq!(
            u32::from_le_bytes(id[128..132].try_into().unwrap()) >> 16 & 0xff,
            9
        );
        assert_eq!(&id[120..128], &[1; 8]);
        let n4 = ns(1 << 20, 12);
        assert_eq!(n4.identify(32)[26], 1);
        assert_eq!(n4.blocks, 256);
        let d = n.descriptors();
        assert_eq!((d[0], d[1]), (1, 8));
        assert_eq!((d[12], d[13]), (2, 16));
        assert_eq!((d[32], d[33]), (3, 16));
        assert_eq!((d[52], d[53], d[56]), (4, 1, 0));
        assert_eq!(n.range(2047, 1), Some((2047 * 512, 512)));
        assert_eq!(n.range(2047, 2), None);
        assert_eq!(n.range(u64::MAX, 2), None);
        assert_eq!(n.identify_cs_indep()[14], 1);
    }
}
