//! The address-translation extended capabilities of a function — PASID
//! (PCIe r6.x §7.8.8), ATS (§10.5.1) and PRI (§10.5.2) — with their control
//! semantics, and the state a device model and the DMA layer read from them.
//!
//! [`TranslationRegs`] is shared (`Arc`) between the configuration-space
//! handlers (the guest's writes land there, on the connection thread) and
//! the device's DMA path (worker threads read enable bits lock-free, count
//! outstanding page requests and set the PRI error bits).
//!
//! Semantics implemented (what Linux `drivers/pci/ats.c` relies on and what
//! the spec requires):
//! - PASID Control: Enable, Execute Permission Enable and Privileged Mode
//!   Enable are RW only where the capability advertises them (RsvdP
//!   otherwise).
//! - ATS Control: Enable and STU are RW; clearing Enable or changing STU
//!   invalidates the device's ATC ([`TranslationRegs::ats_epoch`] moves).
//! - PRI Control: Enable RW; Reset (reads 0) clears the outstanding page
//!   request state when Enable is (being written) clear. PRI Status:
//!   Response Failure and Unexpected PRG Index are RW1C, set by the DMA
//!   layer; Stopped reads 1 while disabled with nothing outstanding (Linux
//!   refuses to enable PRI otherwise); PRG Response PASID Required is set
//!   when the function also has a PASID capability. Outstanding Page
//!   Request Capacity is RO, Allocation RW.

use super::builder::{ext_cap_id, ExtCap};
use super::config::ConfigHandler;
use log::info;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Largest PASID width (bits) PCIe allows.
pub const MAX_PASID_WIDTH: u8 = 20;

/// What the PASID capability advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidCap {
    /// Max PASID Width: PASIDs `0..2^width` are valid (1..=20).
    pub width: u8,
    /// Execute Permission Supported.
    pub exec: bool,
    /// Privileged Mode Supported.
    pub privileged: bool,
}

/// What the ATS capability advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtsCap {
    /// Invalidate Queue Depth (1..=32 invalidations the function accepts
    /// at once; encoded 0 for 32).
    pub invalidate_queue_depth: u8,
    /// Page Aligned Request: translation requests are page aligned.
    pub page_aligned: bool,
    /// Global Invalidate Supported.
    pub global_invalidate: bool,
}

/// What the PRI capability advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriCap {
    /// Outstanding Page Request Capacity.
    pub capacity: u32,
}

/// Which translation capabilities a function has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranslationFeatures {
    /// PASID capability.
    pub pasid: Option<PasidCap>,
    /// ATS capability.
    pub ats: Option<AtsCap>,
    /// PRI capability.
    pub pri: Option<PriCap>,
}

/// PASID capability/control bits (include/uapi/linux/pci_regs.h).
pub mod pasid_bits {
    /// Capability: Execute Permission Supported.
    pub const CAP_EXEC: u16 = 0x0002;
    /// Capability: Privileged Mode Supported.
    pub const CAP_PRIV: u16 = 0x0004;
    /// Control: PASID Enable.
    pub const CTRL_ENABLE: u16 = 0x0001;
    /// Control: Execute Permission Enable.
    pub const CTRL_EXEC: u16 = 0x0002;
    /// Control: Privileged Mode Enable.
    pub const CTRL_PRIV: u16 = 0x0004;
}

/// ATS capability/control bits.
pub mod ats_bits {
    /// Capability: Page Aligned Request.
    pub const CAP_PAGE_ALIGNED: u16 = 0x0020;
    /// Capability: Global Invalidate Supported.
    pub const CAP_GLOBAL_INVALIDATE: u16 = 0x0040;
    /// Control: Enable.
    pub const CTRL_ENABLE: u16 = 0x8000;
    /// Control: Smallest Translation Unit (2^(12+STU) bytes).
    pub const CTRL_STU: u16 = 0x001f;
}

/// PRI control/status bits.
pub mod pri_bits {
    /// Control: Enable.
    pub const CTRL_ENABLE: u16 = 0x0001;
    /// Control: Reset.
    pub const CTRL_RESET: u16 = 0x0002;
    /// Status: Response Failure (RW1C).
    pub const STATUS_RF: u16 = 0x0001;
    /// Status: Unexpected Page Request Group Index (RW1C).
    pub const STATUS_UPRGI: u16 = 0x0002;
    /// Status: Stopped (RO).
    pub const STATUS_STOPPED: u16 = 0x0100;
    /// Status: PRG Response PASID Required (RO).
    pub const STATUS_PASID: u16 = 0x8000;
}

/// The live PASID/ATS/PRI register state of one function.
#[derive(Debug)]
pub struct TranslationRegs {
    features: TranslationFeatures,
    pasid_ctrl: AtomicU16,
    ats_ctrl: AtomicU16,
    pri_ctrl: AtomicU16,
    /// RW1C error bits of PRI Status (RF, UPRGI).
    pri_errors: AtomicU16,
    pri_alloc: AtomicU32,
    /// Page requests issued and not yet answered.
    pri_outstanding: AtomicU32,
    /// Moves whenever cached translations become invalid by a control
    /// change (ATS disabled or STU changed, PASID disabled, reset).
    ats_epoch: AtomicU64,
    /// Moves whenever outstanding page requests are flushed (PRI disabled,
    /// PRI Reset, function reset): waiters give up.
    pri_epoch: AtomicU64,
}

impl TranslationRegs {
    /// Register state for `features` (all controls at their reset values).
    /// A PASID width outside 1..=20 is clamped into that range.
    pub fn new(mut features: TranslationFeatures) -> Arc<Self> {
        if let Some(p) = &mut features.pasid {
            p.width = p.width.clamp(1, MAX_PASID_WIDTH);
        }
        if let Some(a) = &mut features.ats {
            a.invalidate_queue_depth = a.invalidate_queue_depth.clamp(1, 32);
        }
        Arc::new(TranslationRegs {
            features,
            pasid_ctrl: AtomicU16::new(0),
            ats_ctrl: AtomicU16::new(0),
            pri_ctrl: AtomicU16::new(0),
            pri_errors: AtomicU16::new(0),
            pri_alloc: AtomicU32::new(0),
            pri_outstanding: AtomicU32::new(0),
            ats_epoch: AtomicU64::new(0),
            pri_epoch: AtomicU64::new(0),
        })
    }

    /// The capabilities the function advertises.
    pub fn features(&self) -> TranslationFeatures {
        self.features
    }

    /// The extended capabilities to lay out, in the order Linux probes them
    /// (ATS, PRI, PASID); each shares this state.
    pub fn ext_caps(self: &Arc<Self>) -> Vec<ExtCap> {
        let mut caps = Vec::new();
        let mut add = |id: u16, kind: Kind, len: usize| {
            caps.push(ExtCap {
                id,
                version: 1,
                body: vec![0; len],
                rw: Vec::new(),
                handler: Some(Box::new(Handler {
                    regs: Arc::clone(self),
                    kind,
                })),
            });
        };
        if self.features.ats.is_some() {
            add(ext_cap_id::ATS, Kind::Ats, 4);
        }
        if self.features.pri.is_some() {
            add(ext_cap_id::PRI, Kind::Pri, 12);
        }
        if self.features.pasid.is_some() {
            add(ext_cap_id::PASID, Kind::Pasid, 4);
        }
        caps
    }

    /// PASID Control as written by the host.
    pub fn pasid_control(&self) -> u16 {
        self.pasid_ctrl.load(Ordering::Acquire)
    }

    /// Whether PASID-tagged requests are enabled.
    pub fn pasid_enabled(&self) -> bool {
        self.pasid_control() & pasid_bits::CTRL_ENABLE != 0
    }

    /// Whether `pasid` fits the advertised width (and PASIDs exist at all).
    pub fn pasid_in_range(&self, pasid: u32) -> bool {
        self.features
            .pasid
            .is_some_and(|p| u64::from(pasid) < 1u64 << p.width)
    }

    /// Whether requests may carry the Privileged Mode bit.
    pub fn privileged_enabled(&self) -> bool {
        let c = self.pasid_control();
        c & pasid_bits::CTRL_ENABLE != 0 && c & pasid_bits::CTRL_PRIV != 0
    }

    /// Whether requests may carry the Execute bit.
    pub fn exec_enabled(&self) -> bool {
        let c = self.pasid_control();
        c & pasid_bits::CTRL_ENABLE != 0 && c & pasid_bits::CTRL_EXEC != 0
    }

    /// ATS Control as written by the host.
    pub fn ats_control(&self) -> u16 {
        self.ats_ctrl.load(Ordering::Acquire)
    }

    /// Whether the function may issue translation requests and cache them.
    pub fn ats_enabled(&self) -> bool {
        self.ats_control() & ats_bits::CTRL_ENABLE != 0
    }

    /// Smallest Translation Unit in bytes (4 KiB << STU).
    pub fn stu_bytes(&self) -> u64 {
        4096u64 << (self.ats_control() & ats_bits::CTRL_STU)
    }

    /// Changes whenever cached translations must be dropped.
    pub fn ats_epoch(&self) -> u64 {
        self.ats_epoch.load(Ordering::Acquire)
    }

    /// Whether the function may issue page requests: PRI enabled and no
    /// Response Failure pending.
    pub fn pri_enabled(&self) -> bool {
        self.pri_ctrl.load(Ordering::Acquire) & pri_bits::CTRL_ENABLE != 0
            && self.pri_errors.load(Ordering::Acquire) & pri_bits::STATUS_RF == 0
    }

    /// Outstanding Page Request Allocation (page requests the host granted).
    pub fn pri_allocation(&self) -> u32 {
        let cap = self.features.pri.map_or(0, |p| p.capacity);
        self.pri_alloc.load(Ordering::Acquire).min(cap)
    }

    /// Changes whenever outstanding page requests are flushed.
    pub fn pri_epoch(&self) -> u64 {
        self.pri_epoch.load(Ordering::Acquire)
    }

    /// Takes one page request credit; false when none is left or PRI is
    /// not usable.
    pub fn pri_take_credit(&self) -> bool {
        if !self.pri_enabled() {
            return false;
        }
        let limit = self.pri_allocation();
        self.pri_outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns `n` page request credits (their requests were answered or
    /// abandoned).
    pub fn pri_return_credits(&self, n: u32) {
        let _ = self
            .pri_outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(o.saturating_sub(n))
            });
    }

    /// Page requests outstanding.
    pub fn pri_outstanding(&self) -> u32 {
        self.pri_outstanding.load(Ordering::Acquire)
    }

    /// Records a PRG Response with Response Failure: PRI stops issuing
    /// requests until software clears the bit.
    pub fn pri_response_failure(&self) {
        self.pri_errors
            .fetch_or(pri_bits::STATUS_RF, Ordering::AcqRel);
        info!("PRI: PRG Response Failure received; page requests stop until RF is cleared");
    }

    /// Records a PRG Response for a group that is not outstanding.
    pub fn pri_unexpected_response(&self) {
        self.pri_errors
            .fetch_or(pri_bits::STATUS_UPRGI, Ordering::AcqRel);
    }

    /// PRI Status as the host reads it.
    pub fn pri_status(&self) -> u16 {
        let mut s = self.pri_errors.load(Ordering::Acquire);
        let enabled = self.pri_ctrl.load(Ordering::Acquire) & pri_bits::CTRL_ENABLE != 0;
        if !enabled && self.pri_outstanding() == 0 {
            s |= pri_bits::STATUS_STOPPED;
        }
        if self.features.pasid.is_some() {
            s |= pri_bits::STATUS_PASID;
        }
        s
    }

    /// Back to power-on state (function reset): every control clear,
    /// cached translations and outstanding requests dropped.
    pub fn reset(&self) {
        self.pasid_ctrl.store(0, Ordering::Release);
        self.ats_ctrl.store(0, Ordering::Release);
        self.pri_ctrl.store(0, Ordering::Release);
        self.pri_errors.store(0, Ordering::Release);
        self.pri_alloc.store(0, Ordering::Release);
        self.flush_pri();
        self.ats_epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn flush_pri(&self) {
        self.pri_outstanding.store(0, Ordering::Release);
        self.pri_epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn pasid_cap_word(&self) -> u16 {
        let Some(p) = self.features.pasid else {
            return 0;
        };
        let mut w = u16::from(p.width) << 8;
        if p.exec {
            w |= pasid_bits::CAP_EXEC;
        }
        if p.privileged {
            w |= pasid_bits::CAP_PRIV;
        }
        w
    }

    fn ats_cap_word(&self) -> u16 {
        let Some(a) = self.features.ats else {
            return 0;
        };
        let mut w = u16::from(a.invalidate_queue_depth & 0x1f);
        if a.page_aligned {
            w |= ats_bits::CAP_PAGE_ALIGNED;
        }
        if a.global_invalidate {
            w |= ats_bits::CAP_GLOBAL_INVALIDATE;
        }
        w
    }

    fn image(&self, kind: Kind) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        match kind {
            Kind::Pasid => {
                out.extend_from_slice(&self.pasid_cap_word().to_le_bytes());
                out.extend_from_slice(&self.pasid_control().to_le_bytes());
            }
            Kind::Ats => {
                out.extend_from_slice(&self.ats_cap_word().to_le_bytes());
                out.extend_from_slice(&self.ats_control().to_le_bytes());
            }
            Kind::Pri => {
                let ctrl = self.pri_ctrl.load(Ordering::Acquire) & pri_bits::CTRL_ENABLE;
                out.extend_from_slice(&ctrl.to_le_bytes());
                out.extend_from_slice(&self.pri_status().to_le_bytes());
                let cap = self.features.pri.map_or(0, |p| p.capacity);
                out.extend_from_slice(&cap.to_le_bytes());
                out.extend_from_slice(&self.pri_alloc.load(Ordering::Acquire).to_le_bytes());
            }
        }
        out
    }

    fn write_pasid_ctrl(&self, v: u16) {
        let mut writable = pasid_bits::CTRL_ENABLE;
        let cap = self.pasid_cap_word();
        if cap & pasid_bits::CAP_EXEC != 0 {
            writable |= pasid_bits::CTRL_EXEC;
        }
        if cap & pasid_bits::CAP_PRIV != 0 {
            writable |= pasid_bits::CTRL_PRIV;
        }
        let new = v & writable;
        let old = self.pasid_ctrl.swap(new, Ordering::AcqRel);
        if old != new {
            info!("PASID control <- {new:#06x} ({})", describe_pasid(new));
            if old & pasid_bits::CTRL_ENABLE != 0 {
                // Translations cached for PASIDs are meaningless now.
                self.ats_epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn write_ats_ctrl(&self, v: u16) {
        let new = v & (ats_bits::CTRL_ENABLE | ats_bits::CTRL_STU);
        let old = self.ats_ctrl.swap(new, Ordering::AcqRel);
        if old != new {
            info!(
                "ATS control <- {new:#06x} (enable {}, STU {} bytes)",
                new & ats_bits::CTRL_ENABLE != 0,
                4096u64 << (new & ats_bits::CTRL_STU)
            );
            if old & ats_bits::CTRL_ENABLE != 0 {
                // Disabled, or STU changed under an enabled ATC: flush it.
                self.ats_epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn write_pri_ctrl(&self, v: u16) {
        let enable = v & pri_bits::CTRL_ENABLE;
        let old = self.pri_ctrl.swap(enable, Ordering::AcqRel);
        if v & pri_bits::CTRL_RESET != 0 && enable == 0 {
            info!("PRI reset: outstanding page request state cleared");
            self.flush_pri();
        } else if old & pri_bits::CTRL_ENABLE != 0 && enable == 0 {
            // Disabled: requests already issued are abandoned by their
            // waiters (the epoch moves); Stopped reads 1 once they are gone.
            self.pri_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if old != enable {
            info!(
                "PRI control <- {v:#06x} (enable {}, allocation {} of {})",
                enable != 0,
                self.pri_alloc.load(Ordering::Acquire),
                self.features.pri.map_or(0, |p| p.capacity)
            );
        }
    }
}

fn describe_pasid(v: u16) -> String {
    let mut parts = Vec::new();
    if v & pasid_bits::CTRL_ENABLE != 0 {
        parts.push("enable");
    }
    if v & pasid_bits::CTRL_EXEC != 0 {
        parts.push("exec");
    }
    if v & pasid_bits::CTRL_PRIV != 0 {
        parts.push("priv");
    }
    if parts.is_empty() {
        "disabled".into()
    } else {
        parts.join(", ")
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Pasid,
    Ats,
    Pri,
}

/// The body registers of one capability (offsets from capability + 4).
struct Handler {
    regs: Arc<TranslationRegs>,
    kind: Kind,
}

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl ConfigHandler for Handler {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let img = self.regs.image(self.kind);
        for (i, d) in data.iter_mut().enumerate() {
            *d = img.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let mut img = self.regs.image(self.kind);
        let start = usize::from(offset);
        // Which bytes were written: only registers touched get side effects.
        let mut touched = vec![false; img.len()];
        for (i, &v) in data.iter().enumerate() {
            if let Some(slot) = img.get_mut(start + i) {
                *slot = v;
                touched[start + i] = true;
            }
        }
        let hit = |a: usize, n: usize| touched[a..a + n].iter().any(|&t| t);
        let r = &self.regs;
        match self.kind {
            Kind::Pasid => {
                if hit(2, 2) {
                    r.write_pasid_ctrl(word(&img, 2));
                }
            }
            Kind::Ats => {
                if hit(2, 2) {
                    r.write_ats_ctrl(word(&img, 2));
                }
            }
            Kind::Pri => {
                // Allocation first: Linux writes it before setting Enable.
                if hit(8, 4) {
                    let v = u32::from_le_bytes([img[8], img[9], img[10], img[11]]);
                    r.pri_alloc.store(v, Ordering::Release);
                }
                if hit(2, 2) {
                    // RW1C: only bytes actually written can clear bits.
                    let mut written = 0u16;
                    for (i, b) in [2usize, 3].into_iter().enumerate() {
                        if touched[b] {
                            written |= u16::from(img[b]) << (8 * i);
                        }
                    }
                    let clear = written & (pri_bits::STATUS_RF | pri_bits::STATUS_UPRGI);
                    r.pri_errors.fetch_and(!clear, Ordering::AcqRel);
                }
                if hit(0, 2) {
                    r.write_pri_ctrl(word(&img, 0));
                }
            }
        }
    }

    fn reset(&mut self) {
        // Each capability's handler resets the shared state; doing it two
        // or three times is harmless.
        self.regs.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{ConfigBuilder, PciIds};

    fn space(regs: &Arc<TranslationRegs>) -> crate::pci::ConfigSpace {
        let ids = PciIds {
            vendor: 0x7d0c,
            device: 0xacc1,
            subsystem_vendor: 0,
            subsystem: 0,
            class: 0x120000,
            revision: 1,
        };
        ConfigBuilder::new(ids).translation(regs).build().unwrap()
    }

    fn all() -> Arc<TranslationRegs> {
        TranslationRegs::new(TranslationFeatures {
            pasid: Some(PasidCap {
                width: 20,
                exec: true,
                privileged: true,
            }),
            ats: Some(AtsCap {
                invalidate_queue_depth: 32,
                page_aligned: true,
                global_invalidate: true,
            }),
            pri: Some(PriCap { capacity: 512 }),
        })
    }

    fn rd16(c: &mut crate::pci::ConfigSpace, off: u64) -> u16 {
        let mut b = [0u8; 2];
        c.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn rd32(c: &mut crate::pci::ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Finds an extended capability's offset by walking the chain.
    fn find(c: &mut crate::pci::ConfigSpace, id: u16) -> u64 {
        let mut p = 0x100u64;
        while p != 0 {
            let h = rd32(c, p);
            if h & 0xffff == u32::from(id) {
                return p;
            }
            p = u64::from(h >> 20);
        }
        panic!("capability {id:#x} missing");
    }

    #[test]
    fn linux_enable_sequence() {
        let regs = all();
        let mut c = space(&regs);
        let (ats, pri, pasid) = (
            find(&mut c, ext_cap_id::ATS),
            find(&mut c, ext_cap_id::PRI),
            find(&mut c, ext_cap_id::PASID),
        );
        assert!(ats < pri && pri < pasid, "Linux probe order");
        // PASID: 20 bits, exec + priv supported.
        assert_eq!(rd16(&mut c, pasid + 4), 0x1406);
        // pci_enable_pasid(pdev, EXEC | PRIV).
        c.write(pasid + 6, &0x0007u16.to_le_bytes());
        assert_eq!(rd16(&mut c, pasid + 6), 0x0007);
        assert!(regs.pasid_enabled() && regs.privileged_enabled() && regs.exec_enabled());
        // ATS: depth 32 encodes as 0, page aligned, global invalidate.
        assert_eq!(rd16(&mut c, ats + 4), 0x0060);
        let epoch = regs.ats_epoch();
        c.write(ats + 6, &0x8000u16.to_le_bytes());
        assert!(regs.ats_enabled());
        assert_eq!(regs.stu_bytes(), 4096);
        // PRI: Stopped while disabled; PASID required in responses.
        assert_eq!(rd16(&mut c, pri + 6), 0x8100);
        assert_eq!(rd32(&mut c, pri + 8), 512);
        c.write(pri + 0xc, &32u32.to_le_bytes());
        c.write(pri + 4, &1u16.to_le_bytes());
        assert!(regs.pri_enabled());
        assert_eq!(regs.pri_allocation(), 32);
        assert_eq!(rd16(&mut c, pri + 6), 0x8000, "no longer stopped");
        // Credits are bounded by the allocation.
        for _ in 0..32 {
            assert!(regs.pri_take_credit());
        }
        assert!(!regs.pri_take_credit());
        // Disable with requests outstanding: not stopped until they return.
        c.write(pri + 4, &0u16.to_le_bytes());
        assert_eq!(rd16(&mut c, pri + 6) & pri_bits::STATUS_STOPPED, 0);
        regs.pri_return_credits(32);
        assert_ne!(rd16(&mut c, pri + 6) & pri_bits::STATUS_STOPPED, 0);
        // ATS disable moves the epoch (ATC flush).
        c.write(ats + 6, &0u16.to_le_bytes());
        assert_ne!(regs.ats_epoch(), epoch);
    }

    #[test]
    fn unsupported_modes_are_reserved_and_errors_are_w1c() {
        let regs = TranslationRegs::new(TranslationFeatures {
            pasid: Some(PasidCap {
                width: 8,
                exec: false,
                privileged: false,
            }),
            ats: None,
            pri: Some(PriCap { capacity: 4 }),
        });
        let mut c = space(&regs);
        let pasid = find(&mut c, ext_cap_id::PASID);
        c.write(pasid + 6, &0x0007u16.to_le_bytes());
        assert_eq!(rd16(&mut c, pasid + 6), 0x0001, "exec/priv are RsvdP");
        assert!(regs.pasid_in_range(255) && !regs.pasid_in_range(256));
        let pri = find(&mut c, ext_cap_id::PRI);
        regs.pri_response_failure();
        regs.pri_unexpected_response();
        assert_eq!(rd16(&mut c, pri + 6) & 3, 3);
        // Writing 0 leaves them; writing 1 clears only that bit.
        c.write(pri + 6, &0u16.to_le_bytes());
        assert_eq!(rd16(&mut c, pri + 6) & 3, 3);
        c.write(pri + 6, &2u16.to_le_bytes());
        assert_eq!(rd16(&mut c, pri + 6) & 3, 1);
        // RF blocks page requests even when enabled.
        c.write(pri + 0xc, &4u32.to_le_bytes());
        c.write(pri + 4, &1u16.to_le_bytes());
        assert!(!regs.pri_take_credit());
        c.write(pri + 6, &1u16.to_le_bytes());
        assert!(regs.pri_take_credit());
        // Reset while enabled does nothing; after disabling it clears.
        let e = regs.pri_epoch();
        c.write(pri + 4, &3u16.to_le_bytes());
        assert_eq!(regs.pri_outstanding(), 1);
        c.write(pri + 4, &2u16.to_le_bytes());
        assert_eq!(regs.pri_outstanding(), 0);
        assert_ne!(regs.pri_epoch(), e);
        assert_eq!(rd16(&mut c, pri + 4), 0, "Reset reads as 0");
        // Function reset clears everything.
        c.write(pasid + 6, &1u16.to_le_bytes());
        c.reset();
        assert!(!regs.pasid_enabled());
        assert_eq!(regs.pri_allocation(), 0);
    }
}
