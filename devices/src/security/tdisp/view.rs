//! What a TDI locks: the part of its function's configuration that decides
//! where its MMIO lives and how it interrupts ([`ConfigView`], read from the
//! device's configuration space), and the interface report built from it.

use spdm_responder::tdisp::{
    interface_info, lock_flags, range_attr, InterfaceReport, LockParams, MmioRange,
};
use vfio_user_server::pci::{BarKind, ConfigSpace};

const COMMAND: usize = 0x04;
const BAR0: usize = 0x10;
const ROM_BAR: usize = 0x30;
const CAP_PTR: usize = 0x34;
const CAP_MSIX: u8 = 0x11;
/// MSI-X Message Control bits software writes: Enable, Function Mask.
const MSIX_CTL_WRITABLE: u16 = 0xc000;
const PAGE: u64 = 4096;

/// One memory BAR as programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarView {
    /// BAR index (0-5; 6 is the expansion ROM).
    pub index: u8,
    /// Size in bytes.
    pub size: u64,
    /// The address the guest programmed (bus address).
    pub addr: u64,
    /// The register dword(s) as they read (both halves of a 64-bit BAR).
    pub raw: u64,
}

/// The MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixView {
    /// Message Control.
    pub control: u16,
    /// Table BIR and offset.
    pub table: (u8, u32),
    /// PBA BIR and offset.
    pub pba: (u8, u32),
}

impl MsixView {
    /// Table size in vectors.
    pub fn vectors(&self) -> u32 {
        u32::from(self.control & 0x7ff) + 1
    }
}

/// The locked part of a function's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConfigView {
    /// Command register.
    pub command: u16,
    /// Memory BARs by index (6: the expansion ROM).
    pub bars: [Option<BarView>; 7],
    /// MSI-X capability, if the function has one.
    pub msix: Option<MsixView>,
}

/// What changed between two views (for the ERROR reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// The Command register.
    Command {
        /// Locked value.
        locked: u16,
        /// New value.
        now: u16,
    },
    /// A BAR register (index; 6 = ROM).
    Bar(u8),
    /// MSI-X Message Control (Enable / Function Mask).
    MsixControl {
        /// Locked value.
        locked: u16,
        /// New value.
        now: u16,
    },
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigChange::Command { locked, now } => {
                write!(f, "Command register {locked:#06x} -> {now:#06x}")
            }
            ConfigChange::Bar(6) => write!(f, "expansion ROM BAR"),
            ConfigChange::Bar(i) => write!(f, "BAR{i}"),
            ConfigChange::MsixControl { locked, now } => {
                write!(f, "MSI-X Message Control {locked:#06x} -> {now:#06x}")
            }
        }
    }
}

/// Offset of the MSI-X capability, if the function has one.
pub fn msix_cap(cfg: &ConfigSpace) -> Option<usize> {
    find_cap(cfg, CAP_MSIX)
}

/// Number of dwords in a [`fingerprint`].
pub const FINGERPRINT_LEN: usize = 9;

/// The raw registers a [`ConfigView`] is made of (Command, the six BAR
/// dwords, the ROM BAR, MSI-X Message Control at `msix`): cheap to read on
/// every access, to tell whether the view needs reading again.
pub fn fingerprint(cfg: &ConfigSpace, msix: Option<usize>) -> [u32; FINGERPRINT_LEN] {
    let mut f = [0u32; FINGERPRINT_LEN];
    f[0] = u32::from(cfg.read_u16(COMMAND));
    for (i, d) in f[1..7].iter_mut().enumerate() {
        *d = cfg.read_u32(BAR0 + 4 * i);
    }
    f[7] = cfg.read_u32(ROM_BAR);
    f[8] = msix.map_or(0, |o| u32::from(cfg.read_u16(o + 2)));
    f
}

fn find_cap(cfg: &ConfigSpace, id: u8) -> Option<usize> {
    let mut off = (cfg.read_u16(CAP_PTR) & 0xfc) as usize;
    for _ in 0..48 {
        if !(0x40..0xfc).contains(&off) {
            return None;
        }
        let h = cfg.read_u16(off);
        if h as u8 == id {
            return Some(off);
        }
        off = ((h >> 8) & 0xfc) as usize;
    }
    None
}

impl ConfigView {
    /// Reads the view from configuration space (the stored register
    /// values; no handler runs).
    pub fn read(cfg: &ConfigSpace) -> ConfigView {
        let mut bars = [None; 7];
        for (i, slot) in bars.iter_mut().enumerate() {
            let Some(bar) = cfg.bar(i) else { continue };
            let off = if i == 6 { ROM_BAR } else { BAR0 + 4 * i };
            let lo = cfg.read_u32(off);
            let (addr, raw) = match bar.kind {
                BarKind::Mem32 { .. } => (u64::from(lo & !0xf), u64::from(lo)),
                BarKind::Mem64 { .. } if i < 5 => {
                    let hi = u64::from(cfg.read_u32(off + 4));
                    (
                        (hi << 32) | u64::from(lo & !0xf),
                        (hi << 32) | u64::from(lo),
                    )
                }
                BarKind::Rom => (u64::from(lo & !0x7ff), u64::from(lo)),
                BarKind::Mem64 { .. } | BarKind::Io => continue,
            };
            *slot = Some(BarView {
                index: i as u8,
                size: bar.size,
                addr,
                raw,
            });
        }
        let msix = find_cap(cfg, CAP_MSIX).map(|o| {
            let t = cfg.read_u32(o + 4);
            let p = cfg.read_u32(o + 8);
            MsixView {
                control: cfg.read_u16(o + 2),
                table: ((t & 7) as u8, t & !7),
                pba: ((p & 7) as u8, p & !7),
            }
        });
        ConfigView {
            command: cfg.read_u16(COMMAND),
            bars,
            msix,
        }
    }

    /// The first difference from `locked` that TDISP forbids: the Command
    /// register, any BAR (the ROM BAR included), and, with `lock_msix`, MSI-X
    /// Message Control.
    pub fn change_from(&self, locked: &ConfigView, lock_msix: bool) -> Option<ConfigChange> {
        if self.command != locked.command {
            return Some(ConfigChange::Command {
                locked: locked.command,
                now: self.command,
            });
        }
        for (i, (a, b)) in locked.bars.iter().zip(&self.bars).enumerate() {
            if a.map(|a| a.raw) != b.map(|b| b.raw) {
                return Some(ConfigChange::Bar(i as u8));
            }
        }
        if lock_msix {
            let ctl = |m: &Option<MsixView>| m.map_or(0, |m| m.control & MSIX_CTL_WRITABLE);
            if ctl(&self.msix) != ctl(&locked.msix) {
                return Some(ConfigChange::MsixControl {
                    locked: locked.msix.map_or(0, |m| m.control),
                    now: self.msix.map_or(0, |m| m.control),
                });
            }
        }
        None
    }

    /// The interface report of a TDI locked with `params` in this
    /// configuration: every placed memory BAR (not the ROM) as 4 KiB-page ranges
    /// with RANGE_ID = the BAR index, the pages holding the MSI-X table and
    /// PBA as their own ranges (non-TEE memory unless LOCK_MSIX), each
    /// address plus MMIO_REPORTING_OFFSET.
    pub fn report(&self, params: &LockParams, device_info: &[u8]) -> InterfaceReport {
        let lock_msix = params.flags & lock_flags::LOCK_MSIX != 0;
        let msix_attr = if lock_msix {
            0
        } else {
            range_attr::IS_NON_TEE_MEM
        };
        let mut ranges = Vec::new();
        // A BAR the guest did not place (still 0) decodes nothing.
        for b in self.bars[..6].iter().flatten().filter(|b| b.addr != 0) {
            let first = b.addr.wrapping_add(params.mmio_reporting_offset) / PAGE;
            let pages = b.size.div_ceil(PAGE).max(1);
            let attr_of = |page: u64| -> u16 {
                let (lo, hi) = (page * PAGE, (page + 1) * PAGE);
                let mut a = 0;
                if let Some(m) = self.msix {
                    let in_page = |(bir, off): (u8, u32), len: u64| {
                        bir == b.index && u64::from(off) < hi && u64::from(off) + len > lo
                    };
                    if in_page(m.table, u64::from(m.vectors()) * 16) {
                        a |= range_attr::MSIX_TABLE | msix_attr;
                    }
                    if in_page(m.pba, u64::from(m.vectors()).div_ceil(64) * 8) {
                        a |= range_attr::MSIX_PBA | msix_attr;
                    }
                }
                a
            };
            // The attributes only change at the pages where the table or
            // the PBA starts or ends.
            let mut cuts = vec![0, pages];
            if let Some(m) = self.msix {
                for ((bir, off), len) in [
                    (m.table, u64::from(m.vectors()) * 16),
                    (m.pba, u64::from(m.vectors()).div_ceil(64) * 8),
                ] {
                    if bir == b.index {
                        let off = u64::from(off);
                        cuts.push((off / PAGE).min(pages));
                        cuts.push((off + len).div_ceil(PAGE).min(pages));
                    }
                }
            }
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces: Vec<(u64, u64, u16)> = Vec::new();
            for w in cuts.windows(2) {
                let attr = attr_of(w[0]);
                match pieces.last_mut() {
                    Some(last) if last.2 == attr && last.1 == w[0] => last.1 = w[1],
                    _ => pieces.push((w[0], w[1], attr)),
                }
            }
            for (start, end, attr) in pieces {
                ranges.push(MmioRange {
                    first_page: first.wrapping_add(start),
                    number_of_pages: u32::try_from(end - start).unwrap_or(u32::MAX),
                    attributes: attr,
                    range_id: u16::from(b.index),
                });
            }
        }
        ranges.sort_by_key(|r| r.first_page);
        InterfaceReport {
            interface_info: interface_info::NO_UPDATE_AFTER_LOCK
                | interface_info::DMA_WITHOUT_PASID,
            msix_message_control: match self.msix {
                Some(m) if lock_msix => m.control,
                _ => 0,
            },
            lnr_control: 0,
            tph_control: 0,
            ranges,
            device_specific: device_info.to_vec(),
        }
    }
}

/// Programs every memory BAR of `cfg` the way firmware would, naturally
/// aligned from `base` up in BAR order, and enables memory decoding: for a
/// TDI without a guest (`trustdev spdm-responder`), so its interface report
/// shows a plausible layout.
pub fn assign_bars(cfg: &mut ConfigSpace, base: u64) {
    let mut next = base;
    for i in 0..6usize {
        let Some(bar) = cfg.bar(i) else { continue };
        let size = bar.size.max(16).next_power_of_two();
        let addr = next.next_multiple_of(size);
        let off = (BAR0 + 4 * i) as u64;
        let flags = u64::from(cfg.read_u32(off as usize) & 0xf);
        match bar.kind {
            BarKind::Mem32 { .. } => {
                cfg.write(off, &((addr as u32) | flags as u32).to_le_bytes());
            }
            BarKind::Mem64 { .. } if i < 5 => {
                cfg.write(off, &(addr | flags).to_le_bytes());
            }
            _ => continue,
        }
        next = addr + size;
    }
    let cmd = cfg.read_u16(COMMAND) | 0x2;
    cfg.write(COMMAND as u64, &cmd.to_le_bytes());
}
