//! The IDE extended capability's registers (PCIe 6.x §7.9.26, the layout
//! drivers/pci/ide.c parses) and the AER registers the IDE model reports
//! integrity failures in.
//!
//! Offsets here are relative to the capability body (the capability header
//! at +00h belongs to configuration space):
//!
//! ```text
//! 00h  IDE Capability                       RO
//! 04h  IDE Control                          RW (Flow-Through enable, if supported)
//! 08h  Link IDE Stream block i (8 bytes)    Control RW / Status RO, IDE_FAIL RW1C
//!      Selective IDE Stream block j (20 + 12 × assoc bytes):
//!      +00h Capability (ASSOC_NUM) RO, +04h Control, +08h Status,
//!      +0Ch RID Association 1, +10h RID Association 2,
//!      +14h + 12k Address Association k: Reg 1, Reg 2 (limit upper), Reg 3 (base upper)
//! ```

// The capability's register layout has one home, next to IDE_KM (whose
// QUERY_RESP carries this register image) in spdm-responder, shared with
// the TSM side that programs these registers.
pub use spdm_responder::idekm::regs::{
    cap, ctl, sts, ADDR1_MASK, CTL_FLOWTHROUGH, RID1_MASK, RID2_MASK,
};

/// The AER extended capability body (offsets relative to the body, i.e.
/// AER register offset - 4).
pub mod aer {
    /// Uncorrectable Error Status (RW1C).
    pub const UNCOR_STATUS: usize = 0x00;
    /// Uncorrectable Error Mask.
    pub const UNCOR_MASK: usize = 0x04;
    /// Uncorrectable Error Severity.
    pub const UNCOR_SEVER: usize = 0x08;
    /// Correctable Error Status (RW1C).
    pub const COR_STATUS: usize = 0x0c;
    /// Correctable Error Mask.
    pub const COR_MASK: usize = 0x10;
    /// Advanced Error Capabilities and Control.
    pub const CAP_CTL: usize = 0x14;
    /// Header Log (4 dwords).
    pub const HEADER_LOG: usize = 0x18;
    /// TLP Prefix Log (4 dwords; after the root-port-only registers).
    pub const PREFIX_LOG: usize = 0x34;
    /// Body length.
    pub const LEN: usize = 0x44;
    /// IDE Check Failed (uncorrectable, bit 28).
    pub const UNC_IDE_CHECK: u32 = 1 << 28;
    /// Misrouted IDE TLP (bit 29).
    pub const UNC_MISR_IDE: u32 = 1 << 29;
    /// PCRC Check Failed (bit 30).
    pub const UNC_PCRC_CHECK: u32 = 1 << 30;
    /// Uncorrectable bits that are defined (mask/severity are RW there).
    pub const UNC_DEFINED: u32 = 0xffff_f030;
    /// Correctable bits that are defined.
    pub const COR_DEFINED: u32 = 0x0000_f1c1;
    /// TLP Prefix Log Present (capabilities, bit 11).
    pub const CAP_PREFIX_LOG_PRESENT: u32 = 1 << 11;
}

/// Which bits of a dword a byte-granular write touches.
pub fn byte_mask(first: usize, len: usize) -> u32 {
    let mut m = 0u32;
    for b in first..(first + len).min(4) {
        m |= 0xff << (8 * b);
    }
    m
}

/// Splits a byte-granular write of `data` at byte `offset` of a
/// dword-addressed register file into dword writes: (dword index, merged
/// value, bits the access covered), merging with the current values `read`
/// returns.
pub fn dword_writes(
    offset: u16,
    data: &[u8],
    read: impl Fn(usize) -> u32,
) -> Vec<(usize, u32, u32)> {
    let mut out = Vec::new();
    let mut pos = offset as usize;
    let end = pos + data.len();
    while pos < end {
        let dw = pos / 4;
        let first = pos % 4;
        let n = (4 - first).min(end - pos);
        let mut bytes = read(dw).to_le_bytes();
        bytes[first..first + n].copy_from_slice(&data[pos - offset as usize..][..n]);
        out.push((dw, u32::from_le_bytes(bytes), byte_mask(first, n)));
        pos += n;
    }
    out
}

/// Reads `data.len()` bytes at byte `offset` of a dword-addressed register file.
pub fn read_bytes(offset: u16, data: &mut [u8], mut read: impl FnMut(usize) -> u32) {
    for (i, d) in data.iter_mut().enumerate() {
        let pos = offset as usize + i;
        *d = read(pos / 4).to_le_bytes()[pos % 4];
    }
}

/// The AER registers (endpoint subset: no root-port registers).
#[derive(Debug, Clone)]
pub struct AerRegs {
    uncor_status: u32,
    uncor_mask: u32,
    uncor_sever: u32,
    cor_status: u32,
    cor_mask: u32,
    first_error: u32,
    header_log: [u32; 4],
    prefix_log: [u32; 4],
}

impl Default for AerRegs {
    fn default() -> Self {
        AerRegs {
            uncor_status: 0,
            uncor_mask: 0,
            // The default severities of PCIe's Uncorrectable Error Severity
            // register (DLP, Surprise Down, FCP, Receiver Overflow,
            // Malformed TLP, Uncorrectable Internal Error: fatal). IDE
            // Check Failed defaults to non-fatal here.
            uncor_sever: 0x0046_2030,
            cor_status: 0,
            cor_mask: 1 << 13, // Advisory Non-Fatal masked by default
            first_error: 0,
            header_log: [0; 4],
            prefix_log: [0; 4],
        }
    }
}

impl AerRegs {
    /// Reads the dword at body offset `4 * dw`.
    pub fn read(&self, dw: usize) -> u32 {
        match dw * 4 {
            aer::UNCOR_STATUS => self.uncor_status,
            aer::UNCOR_MASK => self.uncor_mask,
            aer::UNCOR_SEVER => self.uncor_sever,
            aer::COR_STATUS => self.cor_status,
            aer::COR_MASK => self.cor_mask,
            aer::CAP_CTL => self.first_error | aer::CAP_PREFIX_LOG_PRESENT,
            o if (aer::HEADER_LOG..aer::HEADER_LOG + 16).contains(&o) => {
                self.header_log[(o - aer::HEADER_LOG) / 4]
            }
            o if (aer::PREFIX_LOG..aer::PREFIX_LOG + 16).contains(&o) => {
                self.prefix_log[(o - aer::PREFIX_LOG) / 4]
            }
            _ => 0,
        }
    }

    /// Writes the dword at body offset `4 * dw` (`touched`: bits written).
    pub fn write(&mut self, dw: usize, v: u32, touched: u32) {
        let rw = |old: u32, mask: u32| (old & !(mask & touched)) | (v & mask & touched);
        match dw * 4 {
            aer::UNCOR_STATUS => {
                self.uncor_status &= !(v & touched & aer::UNC_DEFINED);
                self.update_first_error();
            }
            aer::UNCOR_MASK => self.uncor_mask = rw(self.uncor_mask, aer::UNC_DEFINED),
            aer::UNCOR_SEVER => self.uncor_sever = rw(self.uncor_sever, aer::UNC_DEFINED),
            aer::COR_STATUS => self.cor_status &= !(v & touched & aer::COR_DEFINED),
            aer::COR_MASK => self.cor_mask = rw(self.cor_mask, aer::COR_DEFINED),
            _ => {}
        }
    }

    /// Records an uncorrectable error `bit` with the TLP's header and prefix
    /// (header dwords with header byte 0 in bits 31:24, as PCIe logs them).
    /// The logs are loaded when no unmasked error is already recorded.
    pub fn record_uncorrectable(&mut self, bit: u32, header: [u32; 4], prefix: u32) {
        let pending = self.uncor_status & !self.uncor_mask;
        self.uncor_status |= bit;
        if pending == 0 && bit & !self.uncor_mask != 0 {
            self.first_error = bit.trailing_zeros();
            self.header_log = header;
            self.prefix_log = [prefix, 0, 0, 0];
        }
    }

    fn update_first_error(&mut self) {
        if self.uncor_status & (1 << self.first_error) == 0 {
            self.first_error = 0;
        }
    }

    /// The Uncorrectable Error Status register.
    pub fn uncorrectable_status(&self) -> u32 {
        self.uncor_status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_writes() {
        let mut regs = [0x1122_3344u32, 0x5566_7788];
        for (i, v, m) in dword_writes(3, &[0xaa, 0xbb], |i| regs[i]) {
            regs[i] = v;
            assert_eq!(m, if i == 0 { 0xff00_0000 } else { 0xff });
        }
        assert_eq!(regs, [0xaa22_3344, 0x5566_77bb]);
        let mut out = [0u8; 3];
        read_bytes(2, &mut out, |i| regs[i]);
        assert_eq!(out, [0x22, 0xaa, 0xbb]);
    }

    #[test]
    fn aer_first_error_and_w1c() {
        let mut a = AerRegs::default();
        a.record_uncorrectable(aer::UNC_IDE_CHECK, [1, 2, 3, 4], 0x92);
        assert_eq!(a.read(0), aer::UNC_IDE_CHECK);
        assert_eq!(a.read(aer::CAP_CTL / 4) & 0x1f, 28);
        assert_eq!(a.read(aer::HEADER_LOG / 4), 1);
        assert_eq!(a.read(aer::PREFIX_LOG / 4), 0x92);
        a.write(0, 0, u32::MAX);
        assert_eq!(a.read(0), aer::UNC_IDE_CHECK, "writing 0 clears nothing");
        a.write(0, aer::UNC_IDE_CHECK, u32::MAX);
        assert_eq!(a.read(0), 0);
        assert_eq!(a.read(aer::CAP_CTL / 4) & 0x1f, 0);
    }
}
