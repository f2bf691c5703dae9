//! The IDE extended capability's register layout (PCIe 6.x §7.9.26, as
//! drivers/pci/ide.c parses it) - the image IDE_KM QUERY_RESP carries - and
//! a driver of a port's selective stream registers through configuration
//! space ([`IdeRegs`]), doing what a TSM does with them: the writes of
//! Linux's `pci_ide_stream_setup` / `_enable` / `_disable` / `_teardown`.
//!
//! Offsets in [`off`] are relative to the capability header, like Linux's
//! `PCI_IDE_*`; a device model that keeps the capability body (from the
//! IDE Capability register on) subtracts 4.
//!
//! ```text
//! 04h  IDE Capability                       RO
//! 08h  IDE Control                          RW (Flow-Through enable, if supported)
//! 0Ch  Link IDE Stream block i (8 bytes)    Control RW / Status RO, IDE_FAIL RW1C
//!      Selective IDE Stream block j (20 + 12 × assoc bytes):
//!      +00h Capability (ASSOC_NUM) RO, +04h Control, +08h Status,
//!      +0Ch RID Association 1, +10h RID Association 2,
//!      +14h + 12k Address Association k: Reg 1, Reg 2 (limit upper), Reg 3 (base upper)
//! ```

use crate::transport::doe::{find_ext_cap, ConfigAccess};
use std::io;

/// Extended capability ID of IDE.
pub const IDE_EXT_CAP_ID: u16 = 0x0030;

/// The Stream ID Linux writes into every idle stream at enumeration
/// (`PCI_IDE_RESERVED_STREAM_ID`).
pub const RESERVED_STREAM_ID: u8 = 255;

/// IDE Capability register bits.
pub mod cap {
    /// Link IDE streams supported.
    pub const LINK: u32 = 1 << 0;
    /// Selective IDE streams supported.
    pub const SELECTIVE: u32 = 1 << 1;
    /// Flow-through IDE stream supported.
    pub const FLOWTHROUGH: u32 = 1 << 2;
    /// Partial header encryption supported.
    pub const PARTIAL_HEADER: u32 = 1 << 3;
    /// Aggregation supported.
    pub const AGGREGATION: u32 = 1 << 4;
    /// PCRC supported.
    pub const PCRC: u32 = 1 << 5;
    /// IDE_KM protocol supported (responder).
    pub const IDE_KM: u32 = 1 << 6;
    /// Selective IDE for configuration requests supported.
    pub const SEL_CFG: u32 = 1 << 7;
    /// Supported algorithms (5 bits, 0 = AES-GCM-256 with a 96-bit MAC).
    pub const ALG_SHIFT: u32 = 8;
    /// Number of TCs supported for link IDE, minus one.
    pub const LINK_TC_NUM_SHIFT: u32 = 13;
    /// Number of selective streams supported, minus one.
    pub const SEL_NUM_SHIFT: u32 = 16;
    /// TEE-limited stream supported.
    pub const TEE_LIMITED: u32 = 1 << 24;
}

/// IDE Control: Flow-Through IDE stream enabled.
pub const CTL_FLOWTHROUGH: u32 = 1 << 2;

/// Link / selective stream Control register fields.
pub mod ctl {
    /// Stream enable.
    pub const EN: u32 = 1 << 0;
    /// Tx aggregation mode NPR, PR, CPL (2 bits each, bits 7:2).
    pub const TX_AGGR: u32 = 0xfc;
    /// PCRC enable.
    pub const PCRC_EN: u32 = 1 << 8;
    /// Selective IDE for configuration requests (selective streams).
    pub const CFG_EN: u32 = 1 << 9;
    /// Partial header encryption mode (bits 13:10).
    pub const PART_ENC: u32 = 0xf << 10;
    /// Algorithm (bits 18:14).
    pub const ALG: u32 = 0x1f << 14;
    /// Traffic class (bits 21:19).
    pub const TC: u32 = 0x7 << 19;
    /// Default stream (selective streams).
    pub const DEFAULT: u32 = 1 << 22;
    /// TEE-limited stream (selective streams).
    pub const TEE_LIMITED: u32 = 1 << 23;
    /// Stream ID (bits 31:24).
    pub const ID_SHIFT: u32 = 24;
    /// Stream ID mask.
    pub const ID: u32 = 0xff << 24;
}

/// Stream Status register fields.
pub mod sts {
    /// State field (bits 3:0).
    pub const STATE: u32 = 0xf;
    /// Insecure.
    pub const INSECURE: u32 = 0;
    /// Secure.
    pub const SECURE: u32 = 2;
    /// An IDE Fail message was received for the stream (RW1C).
    pub const IDE_FAIL: u32 = 1 << 31;
}

/// RID Association register 1: RID limit (bits 23:8).
pub const RID1_MASK: u32 = 0x00ff_ff00;
/// RID Association register 2: valid, RID base (23:8), segment base (31:24).
pub const RID2_MASK: u32 = 0xffff_ff01;
/// Address Association register 1: valid, base (19:8 = address 31:20), limit (31:20).
pub const ADDR1_MASK: u32 = 0xffff_ff01;

/// Register offsets from the capability header.
pub mod off {
    /// IDE Capability.
    pub const CAP: u16 = 0x04;
    /// IDE Control.
    pub const CTL: u16 = 0x08;
    /// The first link stream block.
    pub const LINK_STREAM_0: u16 = 0x0c;
    /// Size of a link stream block.
    pub const LINK_BLOCK: u16 = 8;
    /// Selective stream block: its Capability register.
    pub const SEL_CAP: u16 = 0x00;
    /// Selective stream block: Control.
    pub const SEL_CTL: u16 = 0x04;
    /// Selective stream block: Status.
    pub const SEL_STS: u16 = 0x08;
    /// Selective stream block: RID Association 1.
    pub const SEL_RID_1: u16 = 0x0c;
    /// Selective stream block: RID Association 2.
    pub const SEL_RID_2: u16 = 0x10;
    /// Selective stream block: Address Association k, register 1.
    pub const fn sel_addr_1(k: u16) -> u16 {
        0x14 + 12 * k
    }
    /// Size of a selective stream block with `assoc` address blocks.
    pub const fn sel_block(assoc: u16) -> u16 {
        0x14 + 12 * assoc
    }
}

/// The IDE capability of one port: where it is and how many blocks of
/// each kind it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdeLayout {
    /// Offset of the capability header.
    pub offset: u16,
    /// The IDE Capability register.
    pub cap: u32,
    /// Link stream blocks.
    pub link_streams: u8,
    /// Selective stream blocks.
    pub selective_streams: u16,
    /// Address-association blocks per selective stream (from stream 0's
    /// Capability register; Linux assumes the same number in every stream).
    pub assoc: u8,
}

impl IdeLayout {
    /// Reads the layout of the function's IDE capability, if it has one.
    pub fn read(a: &mut (impl ConfigAccess + ?Sized)) -> io::Result<Option<IdeLayout>> {
        let Some(offset) = find_ext_cap(a, IDE_EXT_CAP_ID)? else {
            return Ok(None);
        };
        let cap_reg = a.cfg_read32(offset + off::CAP)?;
        let link_streams = if cap_reg & cap::LINK != 0 {
            1 + ((cap_reg >> cap::LINK_TC_NUM_SHIFT) & 7) as u8
        } else {
            0
        };
        let selective_streams = if cap_reg & cap::SELECTIVE != 0 {
            1 + ((cap_reg >> cap::SEL_NUM_SHIFT) & 0xff) as u16
        } else {
            0
        };
        let mut l = IdeLayout {
            offset,
            cap: cap_reg,
            link_streams,
            selective_streams,
            assoc: 0,
        };
        if selective_streams > 0 {
            l.assoc = (a.cfg_read32(l.selective(0) + off::SEL_CAP)? & 0xf) as u8;
        }
        Ok(Some(l))
    }

    /// Offset of link stream block `i`.
    pub fn link(&self, i: u8) -> u16 {
        self.offset + off::LINK_STREAM_0 + off::LINK_BLOCK * u16::from(i)
    }

    /// Offset of selective stream block `i`.
    pub fn selective(&self, i: u16) -> u16 {
        self.link(self.link_streams) + off::sel_block(u16::from(self.assoc)) * i
    }
}

/// What a TSM programs into one port's selective stream before its keys
/// (Linux's `struct pci_ide_partner` for that port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// Stream ID (0..=254; 255 is the kernel's reserved idle ID).
    pub stream_id: u8,
    /// Requester IDs of the partner port's side (RID association).
    pub rid_base: u16,
    /// Last requester ID of the range.
    pub rid_limit: u16,
    /// Default Stream: the port's requests that match no address
    /// association go here (what a TSM sets on an Endpoint).
    pub default_stream: bool,
    /// Address association ranges (inclusive bus addresses, 1 MiB
    /// granular); none on an Endpoint, as Linux programs one.
    pub addr: Vec<(u64, u64)>,
    /// Selective IDE for configuration requests.
    pub cfg_en: bool,
    /// TEE-limited stream.
    pub tee_limited: bool,
}

impl StreamSettings {
    /// The Control value with Enable as given.
    pub fn control(&self, enable: bool) -> u32 {
        (u32::from(self.stream_id) << ctl::ID_SHIFT)
            | if self.default_stream { ctl::DEFAULT } else { 0 }
            | if self.cfg_en { ctl::CFG_EN } else { 0 }
            | if self.tee_limited {
                ctl::TEE_LIMITED
            } else {
                0
            }
            | u32::from(enable)
    }
}

/// The stream's State field as a name.
pub fn state_name(status: u32) -> &'static str {
    match status & sts::STATE {
        sts::INSECURE => "INSECURE",
        sts::SECURE => "SECURE",
        _ => "reserved",
    }
}

/// Errors of [`IdeRegs`].
#[derive(Debug, thiserror::Error)]
pub enum IdeRegsError {
    /// Configuration space could not be read or written.
    #[error("configuration space: {0}")]
    Config(#[from] io::Error),
    /// The function has no IDE capability.
    #[error("no IDE extended capability")]
    NoCapability,
    /// No selective stream block with that index.
    #[error("no selective stream {index} (the capability has {count})")]
    NoStream {
        /// The index asked for.
        index: u16,
        /// How many there are.
        count: u16,
    },
    /// More address ranges than the stream has association blocks.
    #[error("{ranges} address ranges but {blocks} association blocks per stream")]
    TooManyRanges {
        /// Ranges given.
        ranges: usize,
        /// Blocks available.
        blocks: u8,
    },
}

/// A port's IDE registers through configuration space.
pub struct IdeRegs<'a, A: ?Sized> {
    access: &'a mut A,
    layout: IdeLayout,
}

impl<'a, A: ConfigAccess + ?Sized> IdeRegs<'a, A> {
    /// The function's IDE capability.
    pub fn open(access: &'a mut A) -> Result<Self, IdeRegsError> {
        let layout = IdeLayout::read(access)?.ok_or(IdeRegsError::NoCapability)?;
        Ok(IdeRegs { access, layout })
    }

    /// With a layout read before.
    pub fn with_layout(access: &'a mut A, layout: IdeLayout) -> Self {
        IdeRegs { access, layout }
    }

    /// The layout.
    pub fn layout(&self) -> IdeLayout {
        self.layout
    }

    fn sel(&self, index: u16) -> Result<u16, IdeRegsError> {
        if index >= self.layout.selective_streams {
            return Err(IdeRegsError::NoStream {
                index,
                count: self.layout.selective_streams,
            });
        }
        Ok(self.layout.selective(index))
    }

    /// Control of selective stream `index`.
    pub fn control(&mut self, index: u16) -> Result<u32, IdeRegsError> {
        let b = self.sel(index)?;
        Ok(self.access.cfg_read32(b + off::SEL_CTL)?)
    }

    /// Status of selective stream `index`.
    pub fn status(&mut self, index: u16) -> Result<u32, IdeRegsError> {
        let b = self.sel(index)?;
        Ok(self.access.cfg_read32(b + off::SEL_STS)?)
    }

    /// Status of link stream `i`.
    pub fn link_status(&mut self, i: u8) -> Result<u32, IdeRegsError> {
        let b = self.layout.link(i);
        Ok(self.access.cfg_read32(b + 4)?)
    }

    /// `pci_ide_stream_setup`: RID association, address association
    /// (unused blocks cleared), then Control with the Stream ID and Enable
    /// clear (devices may expect the Stream ID before key programming).
    pub fn setup(&mut self, index: u16, s: &StreamSettings) -> Result<(), IdeRegsError> {
        let b = self.sel(index)?;
        if s.addr.len() > usize::from(self.layout.assoc) {
            return Err(IdeRegsError::TooManyRanges {
                ranges: s.addr.len(),
                blocks: self.layout.assoc,
            });
        }
        let a = &mut *self.access;
        a.cfg_write32(b + off::SEL_RID_1, u32::from(s.rid_limit) << 8)?;
        a.cfg_write32(b + off::SEL_RID_2, 1 | (u32::from(s.rid_base) << 8))?;
        for k in 0..u16::from(self.layout.assoc) {
            let (r1, r2, r3) = match s.addr.get(usize::from(k)) {
                Some(&(base, limit)) => (
                    1 | ((base as u32 >> 20) << 8) | ((limit as u32 >> 20) << 20),
                    (limit >> 32) as u32,
                    (base >> 32) as u32,
                ),
                None => (0, 0, 0),
            };
            a.cfg_write32(b + off::sel_addr_1(k), r1)?;
            a.cfg_write32(b + off::sel_addr_1(k) + 4, r2)?;
            a.cfg_write32(b + off::sel_addr_1(k) + 8, r3)?;
        }
        a.cfg_write32(b + off::SEL_CTL, s.control(false))?;
        Ok(())
    }

    /// `pci_ide_stream_enable`: Control with Enable set; returns the Status
    /// register read right after (its State must be SECURE).
    pub fn enable(&mut self, index: u16, s: &StreamSettings) -> Result<u32, IdeRegsError> {
        let b = self.sel(index)?;
        self.access.cfg_write32(b + off::SEL_CTL, s.control(true))?;
        Ok(self.access.cfg_read32(b + off::SEL_STS)?)
    }

    /// `pci_ide_stream_disable` (keeping the Stream ID, so the keys can
    /// still be named in IDE_KM): Enable clear; returns the Status after.
    pub fn disable(&mut self, index: u16, s: &StreamSettings) -> Result<u32, IdeRegsError> {
        let b = self.sel(index)?;
        self.access
            .cfg_write32(b + off::SEL_CTL, s.control(false))?;
        Ok(self.access.cfg_read32(b + off::SEL_STS)?)
    }

    /// `pci_ide_stream_teardown`: Control to `idle` (the kernel's reserved
    /// Stream ID 255 where it wrote one at enumeration, else 0), address
    /// and RID association cleared.
    pub fn teardown(&mut self, index: u16, idle: u32) -> Result<(), IdeRegsError> {
        let b = self.sel(index)?;
        let a = &mut *self.access;
        a.cfg_write32(b + off::SEL_CTL, idle & !ctl::EN)?;
        for k in 0..u16::from(self.layout.assoc) {
            for r in 0..3 {
                a.cfg_write32(b + off::sel_addr_1(k) + 4 * r, 0)?;
            }
        }
        a.cfg_write32(b + off::SEL_RID_2, 0)?;
        a.cfg_write32(b + off::SEL_RID_1, 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 KiB of configuration space with an IDE capability at 100h: 1 link
    /// stream, 2 selective streams with 1 association block each.
    struct Cfg(Vec<u32>);

    impl ConfigAccess for Cfg {
        fn cfg_read32(&mut self, o: u16) -> io::Result<u32> {
            Ok(self.0[usize::from(o) / 4])
        }
        fn cfg_write32(&mut self, o: u16, v: u32) -> io::Result<()> {
            self.0[usize::from(o) / 4] = v;
            Ok(())
        }
    }

    fn cfg() -> Cfg {
        let mut c = Cfg(vec![0; 1024]);
        c.0[0x100 / 4] = 0x0001_0030;
        c.0[0x104 / 4] = cap::LINK | cap::SELECTIVE | cap::IDE_KM | (1 << cap::SEL_NUM_SHIFT);
        c.0[0x114 / 4] = 1; // selective stream 0: 1 association block
        c
    }

    #[test]
    fn layout_and_stream_writes() {
        let mut c = cfg();
        let l = IdeLayout::read(&mut c).unwrap().unwrap();
        assert_eq!(
            (l.offset, l.link_streams, l.selective_streams, l.assoc),
            (0x100, 1, 2, 1)
        );
        assert_eq!(
            (l.link(0), l.selective(0), l.selective(1)),
            (0x10c, 0x114, 0x134)
        );
        let s = StreamSettings {
            stream_id: 7,
            rid_base: 0x0008,
            rid_limit: 0x0008,
            default_stream: true,
            addr: vec![(0x1_0000_0000, 0x1_001f_ffff)],
            cfg_en: false,
            tee_limited: false,
        };
        let mut r = IdeRegs::open(&mut c).unwrap();
        r.setup(1, &s).unwrap();
        assert!(matches!(r.setup(2, &s), Err(IdeRegsError::NoStream { .. })));
        r.enable(1, &s).unwrap();
        assert_eq!(r.control(1).unwrap(), 0x0740_0001);
        let b = 0x134 / 4;
        assert_eq!(&c.0[b + 3..b + 8], [0x0800, 0x0801, 0x0010_0001, 1, 1]);
        let mut r = IdeRegs::open(&mut c).unwrap();
        r.teardown(1, 0xff00_0000).unwrap();
        assert_eq!(&c.0[b + 1..b + 8], [0xff00_0000, 0, 0, 0, 0, 0, 0]);
        assert_eq!(state_name(2), "SECURE");
    }
}
