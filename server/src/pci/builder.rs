//! Builds a type-0 configuration space: header, BARs, standard capabilities
//! (PM, MSI, MSI-X, PCI Express) and extended capabilities with behaviour.

use super::config::{ConfigHandler, ConfigSpace, CONFIG_SPACE_SIZE};
use super::translation::TranslationRegs;
use super::{Bar, BarKind};
use thiserror::Error;

/// Errors while laying out configuration space.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    /// Standard capabilities do not fit below 0x100.
    #[error("standard capabilities overflow the 256-byte header space")]
    StdCapsOverflow,
    /// Extended capabilities do not fit in 4 KiB.
    #[error("extended capabilities overflow the 4 KiB configuration space")]
    ExtCapsOverflow,
    /// A BAR is malformed.
    #[error("BAR {index}: {why}")]
    BadBar {
        /// BAR index.
        index: usize,
        /// Why.
        why: &'static str,
    },
    /// A capability is malformed.
    #[error("capability: {0}")]
    BadCapability(&'static str),
}

/// The identity registers of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Class code (base class, sub-class, prog-if), 24 bits.
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
}

/// PCI Express device/port type of the PCIe capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// PCI Express Endpoint (behind a root port).
    Endpoint,
    /// Root Complex Integrated Endpoint (on the root bus, e.g. q35 pcie.0).
    RcIntegratedEndpoint,
}

/// Options of the PCI Express capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieCap {
    /// Device/port type.
    pub port_type: PortType,
    /// DEVCAP bit 30: TEE Device Interface Security Protocol (TDISP) supported.
    pub tee: bool,
    /// DEVCAP2 bit 21: End-End TLP Prefix supported (needed for PASID).
    pub ee_prefix: bool,
    /// DEVCAP bit 28: Function Level Reset supported.
    pub flr: bool,
}

/// MSI-X table and PBA placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Number of vectors (1..=2048).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Table offset in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// PBA offset in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

/// An extended capability: header id/version, body bytes and masks, and an
/// optional handler that owns the body's registers.
pub struct ExtCap {
    /// Capability ID (e.g. 0x2E DOE, 0x30 IDE).
    pub id: u16,
    /// Capability version.
    pub version: u8,
    /// Body after the 4-byte header (its length is the capability's size - 4).
    pub body: Vec<u8>,
    /// Writable bits of the body (same length, or empty for read-only).
    pub rw: Vec<u8>,
    /// Registers with behaviour; when set, every body access goes to it.
    pub handler: Option<Box<dyn ConfigHandler>>,
}

impl std::fmt::Debug for ExtCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtCap")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("len", &(self.body.len() + 4))
            .field("handler", &self.handler.is_some())
            .finish()
    }
}

/// Standard capability IDs.
pub mod cap_id {
    /// Power management.
    pub const PM: u8 = 0x01;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// PCI Express.
    pub const PCIE: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability IDs used by trustdev.
pub mod ext_cap_id {
    /// Device serial number.
    pub const DSN: u16 = 0x03;
    /// Vendor-specific extended capability.
    pub const VSEC: u16 = 0x0b;
    /// Address Translation Services.
    pub const ATS: u16 = 0x0f;
    /// Page Request Interface.
    pub const PRI: u16 = 0x13;
    /// PASID.
    pub const PASID: u16 = 0x1b;
    /// Data Object Exchange.
    pub const DOE: u16 = 0x2e;
    /// Integrity and Data Encryption.
    pub const IDE: u16 = 0x30;
}

enum StdCap {
    Pm,
    Msi(u8),
    Msix(MsixCap),
    Pcie(PcieCap),
}

/// Lays out a type-0 configuration space.
pub struct ConfigBuilder {
    ids: PciIds,
    bars: [Option<Bar>; 7],
    std: Vec<StdCap>,
    ext: Vec<ExtCap>,
    interrupt_pin: u8,
}

impl std::fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("ids", &self.ids)
            .field("bars", &self.bars)
            .field("ext", &self.ext)
            .finish()
    }
}

fn put(cfg: &mut ConfigSpace, off: usize, bytes: &[u8], rw: &[u8], w1c: &[u8]) {
    cfg.init(off, bytes);
    cfg.mask(off, rw, w1c);
}

impl ConfigBuilder {
    /// Starts a function with these identity registers and INTA#.
    pub fn new(ids: PciIds) -> Self {
        ConfigBuilder {
            ids,
            bars: Default::default(),
            std: Vec::new(),
            ext: Vec::new(),
            interrupt_pin: 1,
        }
    }

    /// Declares BAR `index` (0..=5; 6 is the expansion ROM).
    pub fn bar(mut self, index: usize, bar: Bar) -> Self {
        if index < self.bars.len() {
            self.bars[index] = Some(bar);
        }
        self
    }

    /// Adds the power-management capability (D0/D3hot, No_Soft_Reset).
    pub fn power_management(mut self) -> Self {
        self.std.push(StdCap::Pm);
        self
    }

    /// Adds a 64-bit MSI capability with per-vector masking and `vectors`
    /// (1, 2, 4, 8, 16 or 32) vectors.
    pub fn msi(mut self, vectors: u8) -> Self {
        self.std.push(StdCap::Msi(vectors));
        self
    }

    /// Adds the MSI-X capability.
    pub fn msix(mut self, cap: MsixCap) -> Self {
        self.std.push(StdCap::Msix(cap));
        self
    }

    /// Adds the PCI Express capability (version 2).
    pub fn pcie(mut self, cap: PcieCap) -> Self {
        self.std.push(StdCap::Pcie(cap));
        self
    }

    /// Appends the ATS, PRI and PASID capabilities `regs` describes (those
    /// it has, in that order), sharing their live state with `regs`.
    pub fn translation(mut self, regs: &std::sync::Arc<TranslationRegs>) -> Self {
        self.ext.extend(regs.ext_caps());
        self
    }

    /// Appends an extended capability (laid out from 0x100 in call order).
    pub fn ext_capability(mut self, cap: ExtCap) -> Self {
        self.ext.push(cap);
        self
    }

    /// Builds the configuration space.
    pub fn build(self) -> Result<ConfigSpace, BuildError> {
        let mut cfg = ConfigSpace::new();
        let ids = self.ids;
        put(&mut cfg, 0x00, &ids.vendor.to_le_bytes(), &[0, 0], &[]);
        put(&mut cfg, 0x02, &ids.device.to_le_bytes(), &[0, 0], &[]);
        // Command: I/O, memory, bus master, parity, SERR#, INTx disable.
        put(&mut cfg, 0x04, &[0, 0], &[0x47, 0x05], &[]);
        // Status: capabilities list; error bits are RW1C.
        let status: u16 = if self.std.is_empty() { 0 } else { 0x0010 };
        put(
            &mut cfg,
            0x06,
            &status.to_le_bytes(),
            &[0, 0],
            &[0x00, 0xf9],
        );
        let class = ids.class.to_le_bytes();
        put(
            &mut cfg,
            0x08,
            &[ids.revision, class[0], class[1], class[2]],
            &[0; 4],
            &[],
        );
        put(&mut cfg, 0x0c, &[0, 0, 0, 0], &[0xff, 0, 0, 0], &[]);
        self.layout_bars(&mut cfg)?;
        put(
            &mut cfg,
            0x2c,
            &ids.subsystem_vendor.to_le_bytes(),
            &[0, 0],
            &[],
        );
        put(&mut cfg, 0x2e, &ids.subsystem.to_le_bytes(), &[0, 0], &[]);
        put(&mut cfg, 0x3c, &[0, self.interrupt_pin], &[0xff, 0], &[]);

        let mut off = 0x40usize;
        let mut prev_next: usize = 0x34;
        for cap in &self.std {
            let len = match cap {
                StdCap::Pm => 8,
                StdCap::Msi(_) => 24,
                StdCap::Msix(_) => 12,
                StdCap::Pcie(_) => 0x3c,
            };
            if off + len > 0x100 {
                return Err(BuildError::StdCapsOverflow);
            }
            cfg.init(prev_next, &[off as u8]);
            match cap {
                StdCap::Pm => {
                    // PMC: version 3, D3hot PME not supported.
                    put(&mut cfg, off, &[cap_id::PM, 0, 0x03, 0x00], &[0; 4], &[]);
                    // PMCSR: power state RW, No_Soft_Reset set.
                    put(&mut cfg, off + 4, &[0x08, 0, 0, 0], &[0x03, 0, 0, 0], &[]);
                }
                StdCap::Msi(n) => {
                    if !n.is_power_of_two() || *n > 32 {
                        return Err(BuildError::BadCapability(
                            "MSI vectors must be 1..=32, a power of two",
                        ));
                    }
                    let mmc = n.trailing_zeros() as u16;
                    // 64-bit, per-vector masking, MMC; enable + MME writable.
                    let ctl: u16 = (1 << 7) | (1 << 8) | (mmc << 1);
                    put(&mut cfg, off, &[cap_id::MSI, 0], &[0, 0], &[]);
                    put(&mut cfg, off + 2, &ctl.to_le_bytes(), &[0x71, 0], &[]);
                    put(
                        &mut cfg,
                        off + 4,
                        &[0; 8],
                        &[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                        &[],
                    );
                    put(&mut cfg, off + 12, &[0; 4], &[0xff, 0xff, 0, 0], &[]);
                    let mask_bits: u32 = if *n == 32 { u32::MAX } else { (1u32 << n) - 1 };
                    put(&mut cfg, off + 16, &[0; 4], &mask_bits.to_le_bytes(), &[]);
                    put(&mut cfg, off + 20, &[0; 4], &[0; 4], &[]);
                }
                StdCap::Msix(m) => {
                    if m.vectors == 0 || m.vectors > 2048 || m.table_bar > 5 || m.pba_bar > 5 {
                        return Err(BuildError::BadCapability("bad MSI-X vectors or BIR"));
                    }
                    if m.table_offset % 8 != 0 || m.pba_offset % 8 != 0 {
                        return Err(BuildError::BadCapability(
                            "MSI-X offsets must be 8-byte aligned",
                        ));
                    }
                    let ctl = m.vectors - 1;
                    put(&mut cfg, off, &[cap_id::MSIX, 0], &[0, 0], &[]);
                    put(&mut cfg, off + 2, &ctl.to_le_bytes(), &[0, 0xc0], &[]);
                    put(
                        &mut cfg,
                        off + 4,
                        &(m.table_offset | u32::from(m.table_bar)).to_le_bytes(),
                        &[0; 4],
                        &[],
                    );
                    put(
                        &mut cfg,
                        off + 8,
                        &(m.pba_offset | u32::from(m.pba_bar)).to_le_bytes(),
                        &[0; 4],
                        &[],
                    );
                }
                StdCap::Pcie(p) => {
                    cfg.set_pcie_cap(off as u16);
                    let ptype: u16 = match p.port_type {
                        PortType::Endpoint => 0,
                        PortType::RcIntegratedEndpoint => 9,
                    };
                    let caps: u16 = 2 | (ptype << 4);
                    put(&mut cfg, off, &[cap_id::PCIE, 0], &[0, 0], &[]);
                    put(&mut cfg, off + 2, &caps.to_le_bytes(), &[0, 0], &[]);
                    // DevCap: MPS 256B, extended tag, role-based error reporting.
                    let mut devcap: u32 = 0x1 | (1 << 5) | (1 << 15);
                    if p.flr {
                        devcap |= 1 << 28;
                    }
                    if p.tee {
                        devcap |= 1 << 30;
                    }
                    put(&mut cfg, off + 4, &devcap.to_le_bytes(), &[0; 4], &[]);
                    // DevCtl (RW, incl. Initiate FLR which reads 0) / DevSta (RW1C).
                    put(
                        &mut cfg,
                        off + 8,
                        &0x2810u16.to_le_bytes(),
                        &[0xff, 0xff],
                        &[],
                    );
                    put(&mut cfg, off + 10, &[0, 0], &[0, 0], &[0x0f, 0]);
                    let is_ep = p.port_type == PortType::Endpoint;
                    // LinkCap: 8 GT/s x4 (zeroed for an RCiEP), port number 0.
                    let linkcap: u32 = if is_ep { 0x3 | (4 << 4) | (1 << 10) } else { 0 };
                    put(&mut cfg, off + 12, &linkcap.to_le_bytes(), &[0; 4], &[]);
                    let linkctl_rw: [u8; 2] = if is_ep { [0xc3, 0x01] } else { [0, 0] };
                    put(&mut cfg, off + 16, &[0, 0], &linkctl_rw, &[]);
                    let linksta: u16 = if is_ep { 0x3 | (4 << 4) } else { 0 };
                    put(
                        &mut cfg,
                        off + 18,
                        &linksta.to_le_bytes(),
                        &[0, 0],
                        &[0, 0xc0],
                    );
                    // DevCap2: completion timeout ranges, 10-bit tags, EE prefix.
                    let mut devcap2: u32 = 0xf | (1 << 4) | (1 << 16) | (1 << 17);
                    if p.ee_prefix {
                        // Extended Fmt Field (required with prefixes), End-End
                        // TLP Prefix Supported, Max End-End TLP Prefixes = 1.
                        devcap2 |= (1 << 20) | (1 << 21) | (1 << 22);
                    }
                    put(&mut cfg, off + 0x24, &devcap2.to_le_bytes(), &[0; 4], &[]);
                    put(&mut cfg, off + 0x28, &[0, 0], &[0xff, 0xff], &[]);
                    if is_ep {
                        // LinkCap2: 2.5-8 GT/s supported.
                        put(&mut cfg, off + 0x2c, &0x0eu32.to_le_bytes(), &[0; 4], &[]);
                        put(&mut cfg, off + 0x30, &[3, 0], &[0xff, 0xff], &[]);
                    }
                }
            }
            prev_next = off + 1;
            off += len;
            off = (off + 3) & !3;
        }

        let mut ext_off = 0x100usize;
        let count = self.ext.len();
        for (i, cap) in self.ext.into_iter().enumerate() {
            if cap.body.len() % 4 != 0 {
                return Err(BuildError::BadCapability(
                    "extended capability body must be whole dwords",
                ));
            }
            if !cap.rw.is_empty() && cap.rw.len() != cap.body.len() {
                return Err(BuildError::BadCapability(
                    "rw mask length differs from body",
                ));
            }
            let len = 4 + cap.body.len();
            if ext_off + len > CONFIG_SPACE_SIZE {
                return Err(BuildError::ExtCapsOverflow);
            }
            let next = if i + 1 == count { 0 } else { ext_off + len };
            let hdr: u32 =
                u32::from(cap.id) | (u32::from(cap.version & 0xf) << 16) | ((next as u32) << 20);
            put(&mut cfg, ext_off, &hdr.to_le_bytes(), &[0; 4], &[]);
            put(&mut cfg, ext_off + 4, &cap.body, &cap.rw, &[]);
            if let Some(h) = cap.handler {
                cfg.add_handler((ext_off + 4) as u16..(ext_off + len) as u16, h);
            }
            ext_off += len;
        }
        cfg.set_bars(self.bars);
        cfg.seal();
        Ok(cfg)
    }

    fn layout_bars(&self, cfg: &mut ConfigSpace) -> Result<(), BuildError> {
        let mut skip_next = false;
        for (i, bar) in self.bars.iter().enumerate() {
            if skip_next {
                if bar.is_some() {
                    return Err(BuildError::BadBar {
                        index: i,
                        why: "occupied by the upper half of a 64-bit BAR",
                    });
                }
                skip_next = false;
                continue;
            }
            let Some(bar) = bar else { continue };
            let size = bar.size;
            if !size.is_power_of_two() {
                return Err(BuildError::BadBar {
                    index: i,
                    why: "size must be a power of two",
                });
            }
            let addr_mask = !(size - 1);
            let reg = if i == 6 { 0x30 } else { 0x10 + 4 * i };
            match bar.kind {
                BarKind::Rom => {
                    if i != 6 || size < 2048 {
                        return Err(BuildError::BadBar {
                            index: i,
                            why: "ROM is BAR 6, >= 2 KiB",
                        });
                    }
                    let rw = (addr_mask as u32 & 0xffff_f800) | 1;
                    put(cfg, reg, &[0; 4], &rw.to_le_bytes(), &[]);
                }
                BarKind::Io => {
                    if i == 6 || !(4..=256).contains(&size) {
                        return Err(BuildError::BadBar {
                            index: i,
                            why: "I/O BARs are 4..=256 bytes",
                        });
                    }
                    let rw = addr_mask as u32 & 0xffff_fffc;
                    put(cfg, reg, &1u32.to_le_bytes(), &rw.to_le_bytes(), &[]);
                }
                BarKind::Mem32 { prefetchable } => {
                    if i == 6 || !(16..=1 << 31).contains(&size) {
                        return Err(BuildError::BadBar {
                            index: i,
                            why: "32-bit BARs are 16 B..=2 GiB",
                        });
                    }
                    let ty: u32 = if prefetchable { 0x8 } else { 0 };
                    let rw = addr_mask as u32 & 0xffff_fff0;
                    put(cfg, reg, &ty.to_le_bytes(), &rw.to_le_bytes(), &[]);
                }
                BarKind::Mem64 { prefetchable } => {
                    if i >= 5 || size < 16 {
                        return Err(BuildError::BadBar {
                            index: i,
                            why: "64-bit BAR needs a following slot",
                        });
                    }
                    let ty: u32 = 0x4 | if prefetchable { 0x8 } else { 0 };
                    let lo = addr_mask as u32 & 0xffff_fff0;
                    let hi = (addr_mask >> 32) as u32;
                    put(cfg, reg, &ty.to_le_bytes(), &lo.to_le_bytes(), &[]);
                    put(cfg, reg + 4, &[0; 4], &hi.to_le_bytes(), &[]);
                    skip_next = true;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1b36,
            device: 0x0001,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            class: 0x088000,
            revision: 1,
        }
    }

    #[test]
    fn bar_sizing_reads_back_size_mask() {
        let mut c = ConfigBuilder::new(ids())
            .bar(0, Bar::mem32(0x1000))
            .bar(2, Bar::mem64(0x10000, true))
            .bar(6, Bar::rom(0x800))
            .build()
            .unwrap();
        c.write(0x10, &[0xff; 4]);
        assert_eq!(c.read_u32(0x10), 0xffff_f000);
        c.write(0x18, &[0xff; 4]);
        c.write(0x1c, &[0xff; 4]);
        assert_eq!(c.read_u32(0x18), 0xffff_000c);
        assert_eq!(c.read_u32(0x1c), 0xffff_ffff);
        c.write(0x30, &[0xff; 4]);
        assert_eq!(c.read_u32(0x30), 0xffff_f801);
        c.reset();
        assert_eq!(c.read_u32(0x10), 0);
    }

    #[test]
    fn capability_chains() {
        let mut c = ConfigBuilder::new(ids())
            .bar(0, Bar::mem32(0x4000))
            .power_management()
            .msi(1)
            .msix(MsixCap {
                vectors: 4,
                table_bar: 0,
                table_offset: 0x2000,
                pba_bar: 0,
                pba_offset: 0x3000,
            })
            .pcie(PcieCap {
                port_type: PortType::Endpoint,
                tee: true,
                ee_prefix: true,
                flr: true,
            })
            .ext_capability(ExtCap {
                id: ext_cap_id::DSN,
                version: 1,
                body: vec![1, 2, 3, 4, 5, 6, 7, 8],
                rw: vec![],
                handler: None,
            })
            .ext_capability(ExtCap {
                id: ext_cap_id::VSEC,
                version: 1,
                body: vec![0; 8],
                rw: vec![0xff; 8],
                handler: None,
            })
            .build()
            .unwrap();
        // Walk the standard list.
        let mut ids_seen = vec![];
        let mut p = c.read_u32(0x34) as usize & 0xff;
        while p != 0 {
            ids_seen.push(c.read_u32(p) & 0xff);
            p = (c.read_u32(p) >> 8) as usize & 0xff;
        }
        assert_eq!(ids_seen, vec![1, 5, 0x11, 0x10]);
        // Extended list.
        let h = c.read_u32(0x100);
        assert_eq!(h & 0xffff, 3);
        let next = (h >> 20) as usize;
        assert_eq!(c.read_u32(next) & 0xffff, 0x0b);
        assert_eq!(c.read_u32(next) >> 20, 0);
        // DEVCAP.TEE set; FLR write reported and reads back 0.
        let pcie = 0x40 + 8 + 24 + 12;
        assert_ne!(c.read_u32(pcie + 4) & (1 << 30), 0);
        let ev = c.write((pcie + 8) as u64, &0x8000u16.to_le_bytes());
        assert!(ev.flr);
        assert_eq!(c.read_u16(pcie + 8) & 0x8000, 0);
        // Status error bits are W1C and RO otherwise.
        c.write(0x06, &[0xff, 0xff]);
        assert_eq!(c.read_u16(0x06), 0x0010);
    }

    #[test]
    fn function_reset_keeps_bar_addresses() {
        let mut c = ConfigBuilder::new(ids())
            .bar(0, Bar::mem32(0x4000))
            .pcie(PcieCap {
                port_type: PortType::Endpoint,
                tee: false,
                ee_prefix: false,
                flr: true,
            })
            .build()
            .unwrap();
        c.write(0x10, &0xfebf_0000u32.to_le_bytes());
        c.write(0x04, &0x0006u16.to_le_bytes());
        c.function_reset();
        // The BAR address is what the host restores after FLR; the command
        // register returns to its reset value for the guest to restore.
        assert_eq!(c.read_u32(0x10), 0xfebf_0000);
        assert_eq!(c.read_u16(0x04), 0);
        // A power-on reset (client gone) clears it.
        c.reset();
        assert_eq!(c.read_u32(0x10), 0);
    }
}
