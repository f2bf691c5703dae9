//! PASID-tagged DMA: per-PASID address spaces behind the guest-memory API.
//!
//! A device model asks for an address space — [`DmaSpace::Untranslated`]
//! (the DMA_MAP table, what every client provides) or a PASID's space
//! ([`PasidMemory::space`]) — and accesses `(space, address)`: it gets a
//! bounds-checked view of client memory or a typed [`DmaFault`].
//!
//! PASID-tagged requests reach client memory through the vfio-user PASID
//! extension (docs/VFIO-USER-PASID.md), the way a PCIe function reaches
//! memory through an IOMMU:
//! - with ATS enabled in the function's ATS capability and the `ats`
//!   feature negotiated, the device asks the client to translate (PASID,
//!   address) ranges (ATS_TRANSLATE), caches the translations in its ATC,
//!   and accesses the translated address space (TRANSLATED_DMA_MAP windows)
//!   directly, zero-copy. The client withdraws translations with
//!   ATS_INVALIDATE: the reply is sent only once no access uses them.
//! - a translation that is not present, with PRI enabled, the `pri` feature
//!   negotiated and the request allowed to block, becomes a PAGE_REQUEST;
//!   the device waits for the PAGE_RESPONSE and translates again.
//! - without ATS, PASID-tagged reads and writes go to the client as
//!   PASID_DMA_READ/WRITE messages (the `dma` feature), slowly.
//!
//! Every message the device sends is sent from a worker thread (the
//! connection thread serves the client and routes replies). No translation
//! guard is held across a round trip: an invalidation on the connection
//! thread waits only for copies in progress, never for a reply it would
//! itself have to route.

use super::region::Liveness;
use super::remote::{check_reply, Requester};
use super::{Access, DmaError, GuestMemory, GuestSlice};
use crate::pci::TranslationRegs;
use crate::protocol::pasid::{
    decode_translation, entry_flags, InvalidateRequest, InvalidateScope, PageRequest, PageResponse,
    PageResponseCode, PasidFeatures, PasidTag, PasidTransfer, TranslateRequest, TranslationEntry,
    PAGE,
};
use crate::protocol::Command;
use log::{debug, info, warn};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Translations the ATC holds before it is flushed to make room.
const ATC_CAPACITY: usize = 16384;
/// How far beyond the faulting address one translation request reaches.
const TRANSLATE_AHEAD: u64 = 1 << 20;
/// Most pages one page request group asks for.
const PRG_MAX_PAGES: u64 = 16;
/// How long a request waits for its page response.
const PAGE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for a page request credit or group index.
const PRI_CREDIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Translation attempts for one access (invalidations racing, page
/// responses that did not make the page present).
const MAX_ATTEMPTS: u32 = 32;
/// Poll interval of waits (also how fast a cancellation is noticed).
const WAIT_SLICE: Duration = Duration::from_millis(5);

/// Why a PASID cannot be used.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PasidError {
    /// The function has no PASID capability.
    #[error("the function has no PASID capability")]
    NoCapability,
    /// PASID Enable is clear.
    #[error("PASID-tagged requests are not enabled (PASID Control)")]
    Disabled,
    /// The PASID exceeds the advertised Max PASID Width.
    #[error("beyond the advertised PASID width")]
    OutOfRange,
    /// Privileged Mode Enable is clear.
    #[error("Privileged Mode is not enabled")]
    PrivilegedDisabled,
    /// Execute Permission Enable is clear.
    #[error("Execute Permission is not enabled")]
    ExecDisabled,
    /// The client's IOMMU has no address space for the PASID.
    #[error("not bound to an address space by the client's IOMMU")]
    Unbound,
}

/// A failed device access.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DmaFault {
    /// The address is outside client memory (untranslated), or a
    /// translation points outside the translated space.
    #[error("{addr:#x} is outside mapped client memory")]
    OutOfBounds {
        /// Faulting address (in the requester's address space).
        addr: u64,
    },
    /// The page exists but the access is not permitted.
    #[error("{} of {addr:#x} not permitted", if *write { "write" } else { "read" })]
    Permission {
        /// Faulting address.
        addr: u64,
        /// A write was refused (else a read).
        write: bool,
    },
    /// The page is not present and could not be made present.
    #[error("page fault at {addr:#x} ({})", if *write { "write" } else { "read" })]
    PageFault {
        /// Faulting address.
        addr: u64,
        /// The access was a write.
        write: bool,
    },
    /// The request's PASID cannot be used.
    #[error("PASID {pasid:#x}: {why}")]
    Pasid {
        /// The PASID.
        pasid: u32,
        /// Why.
        why: PasidError,
    },
    /// The client offers no way to carry PASID-tagged requests.
    #[error("no PASID path to client memory: {0}")]
    NoPath(&'static str),
    /// The access was abandoned (device reset, cancellation, PRI flushed).
    #[error("the access was aborted")]
    Aborted,
    /// Talking to the client failed.
    #[error("client transport: {0}")]
    Transport(String),
}

impl DmaFault {
    fn from_dma(e: DmaError, addr: u64, write: bool) -> DmaFault {
        match e {
            DmaError::OutOfBounds { .. } | DmaError::Client(libc::EFAULT) => {
                DmaFault::OutOfBounds { addr }
            }
            DmaError::ReadOnly => DmaFault::Permission { addr, write },
            other => DmaFault::Transport(other.to_string()),
        }
    }
}

/// Counters of the translation machinery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidStats {
    /// ATS_TRANSLATE requests sent.
    pub translations: u64,
    /// Accesses served from the ATC without a request.
    pub atc_hits: u64,
    /// ATS_INVALIDATE requests handled.
    pub invalidations: u64,
    /// Translations dropped by invalidations (and flushes).
    pub entries_invalidated: u64,
    /// PAGE_REQUEST messages sent.
    pub page_requests: u64,
    /// PAGE_RESPONSE messages matched to a group.
    pub page_responses: u64,
    /// PAGE_RESPONSE messages for no outstanding group.
    pub unexpected_responses: u64,
    /// PASID_DMA_READ/WRITE messages sent.
    pub pasid_dma_messages: u64,
}

#[derive(Debug, Default)]
struct Counters {
    translations: AtomicU64,
    atc_hits: AtomicU64,
    invalidations: AtomicU64,
    entries_invalidated: AtomicU64,
    page_requests: AtomicU64,
    page_responses: AtomicU64,
    unexpected_responses: AtomicU64,
    pasid_dma_messages: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One cached translation.
#[derive(Debug)]
struct AtcEntry {
    va: u64,
    len: u64,
    ta: u64,
    flags: u32,
    live: Liveness,
}

impl AtcEntry {
    fn end(&self) -> u64 {
        self.va + self.len
    }

    fn allows(&self, access: Access) -> bool {
        match access {
            Access::Read => self.flags & entry_flags::R != 0,
            Access::Write => self.flags & entry_flags::W != 0,
        }
    }
}

/// The address translation cache: per PASID, entries by start address.
#[derive(Debug, Default)]
struct Atc {
    /// `TranslationRegs::ats_epoch` the contents belong to.
    epoch: u64,
    spaces: HashMap<u32, BTreeMap<u64, Arc<AtcEntry>>>,
    count: usize,
}

impl Atc {
    fn find(&self, pasid: u32, addr: u64) -> Option<Arc<AtcEntry>> {
        self.spaces
            .get(&pasid)?
            .range(..=addr)
            .next_back()
            .filter(|(_, e)| addr < e.end())
            .map(|(_, e)| Arc::clone(e))
    }

    /// Removes the entries of `pasid` overlapping `[start, end)`.
    fn remove_range(&mut self, pasid: u32, start: u64, end: u64, out: &mut Vec<Arc<AtcEntry>>) {
        let Some(map) = self.spaces.get_mut(&pasid) else {
            return;
        };
        let keys: Vec<u64> = map
            .range(..end)
            .rev()
            .take_while(|(_, e)| e.end() > start)
            .map(|(&k, _)| k)
            .collect();
        let mut removed = 0;
        for k in keys {
            if let Some(e) = map.remove(&k) {
                out.push(e);
                removed += 1;
            }
        }
        self.count -= removed.min(self.count);
    }

    fn take_all(&mut self) -> Vec<Arc<AtcEntry>> {
        self.count = 0;
        std::mem::take(&mut self.spaces)
            .into_values()
            .flat_map(BTreeMap::into_values)
            .collect()
    }
}

/// An outstanding page request group.
#[derive(Debug)]
struct Group {
    code: Option<PageResponseCode>,
    credits: u32,
}

#[derive(Debug, Default)]
struct Pri {
    /// Outstanding groups by (PASID, PRG index).
    groups: HashMap<(Option<u32>, u16), Group>,
    next_index: u16,
}

const F_ATS: u8 = 1;
const F_PRI: u8 = 2;
const F_DMA: u8 = 4;

/// Client memory as PASID-tagged requests see it, plus the translated
/// address space. One per device, in its [`crate::DeviceContext`].
#[derive(Debug)]
pub struct PasidMemory {
    untranslated: Arc<GuestMemory>,
    translated: GuestMemory,
    regs: OnceLock<Arc<TranslationRegs>>,
    features: AtomicU8,
    atc: RwLock<Atc>,
    /// Moves on every invalidation: a translation requested before one
    /// and answered after it is not cached.
    inval_gen: AtomicU64,
    pri: Mutex<Pri>,
    pri_cv: Condvar,
    /// Moves on every reset: waits in progress give up.
    abort_gen: AtomicU64,
    stats: Counters,
}

impl PasidMemory {
    /// PASID access on top of `untranslated` (the DMA_MAP table, whose
    /// connection also carries the extension's messages); the translated
    /// space accepts up to `max_maps` windows.
    pub fn new(untranslated: Arc<GuestMemory>, max_maps: u32) -> Self {
        PasidMemory {
            untranslated,
            translated: GuestMemory::new(max_maps),
            regs: OnceLock::new(),
            features: AtomicU8::new(0),
            atc: RwLock::new(Atc::default()),
            inval_gen: AtomicU64::new(0),
            pri: Mutex::new(Pri::default()),
            pri_cv: Condvar::new(),
            abort_gen: AtomicU64::new(0),
            stats: Counters::default(),
        }
    }

    /// Connects the function's PASID/ATS/PRI registers (once, when the
    /// device is built); false if registers were attached already.
    pub fn attach(&self, regs: Arc<TranslationRegs>) -> bool {
        self.regs.set(regs).is_ok()
    }

    /// The function's PASID/ATS/PRI registers, if attached.
    pub fn regs(&self) -> Option<&Arc<TranslationRegs>> {
        self.regs.get()
    }

    /// The translated address space (TRANSLATED_DMA_MAP windows). The link
    /// between device and client is the same for translated requests: an
    /// interposer installed on the untranslated space (an IDE link model)
    /// is installed here too.
    pub fn translated(&self) -> &GuestMemory {
        if let Some(link) = self.untranslated.interposer() {
            if self.translated.interposer().is_none() {
                let _ = self.translated.set_interposer(link);
            }
        }
        &self.translated
    }

    /// The untranslated address space (DMA_MAP windows).
    pub fn untranslated(&self) -> &GuestMemory {
        &self.untranslated
    }

    /// What the connected client negotiated.
    pub fn features(&self) -> PasidFeatures {
        let f = self.features.load(Ordering::Acquire);
        PasidFeatures {
            ats: f & F_ATS != 0,
            pri: f & F_PRI != 0,
            dma: f & F_DMA != 0,
        }
    }

    /// Records the negotiated features (VERSION; none on disconnect).
    pub fn set_features(&self, f: PasidFeatures) {
        let bits = (f.ats as u8 * F_ATS) | (f.pri as u8 * F_PRI) | (f.dma as u8 * F_DMA);
        self.features.store(bits, Ordering::Release);
    }

    /// The address space of `tag` (`None`: untranslated requests). A PASID
    /// space does not block on faults and cannot be cancelled; see
    /// [`PasidSpace::blocking`] and [`PasidSpace::cancel_with`].
    pub fn space(&self, tag: Option<PasidTag>) -> DmaSpace<'_> {
        match tag {
            None => DmaSpace::Untranslated(&self.untranslated),
            Some(tag) => DmaSpace::Pasid(PasidSpace {
                mem: self,
                tag,
                block_on_fault: false,
                cancel: None,
            }),
        }
    }

    /// Counters.
    pub fn stats(&self) -> PasidStats {
        let c = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PasidStats {
            translations: g(&c.translations),
            atc_hits: g(&c.atc_hits),
            invalidations: g(&c.invalidations),
            entries_invalidated: g(&c.entries_invalidated),
            page_requests: g(&c.page_requests),
            page_responses: g(&c.page_responses),
            unexpected_responses: g(&c.unexpected_responses),
            pasid_dma_messages: g(&c.pasid_dma_messages),
        }
    }

    /// Translations cached now.
    pub fn atc_entries(&self) -> usize {
        self.atc.read().unwrap_or_else(|p| p.into_inner()).count
    }

    /// Handles ATS_INVALIDATE: drops the matching translations and returns
    /// once no access uses them any more. Returns how many were dropped.
    pub fn invalidate(&self, req: &InvalidateRequest) -> usize {
        let removed = {
            let mut atc = self.atc.write().unwrap_or_else(|p| p.into_inner());
            // Before removing: a translation in flight now is not cached.
            self.inval_gen.fetch_add(1, Ordering::SeqCst);
            let mut out = Vec::new();
            let (start, end) = match req.range {
                Some((a, s)) => (a, a.saturating_add(s)),
                None => (0, u64::MAX),
            };
            match req.scope {
                InvalidateScope::Pasid(Some(p)) => atc.remove_range(p, start, end, &mut out),
                // Requests without PASID are never translated here: nothing
                // to drop, but the generation moved all the same.
                InvalidateScope::Pasid(None) => {}
                InvalidateScope::Global => {
                    let pasids: Vec<u32> = atc.spaces.keys().copied().collect();
                    for p in pasids {
                        atc.remove_range(p, start, end, &mut out);
                    }
                }
            }
            out
        };
        for e in &removed {
            e.live.retire();
        }
        bump(&self.stats.invalidations, 1);
        bump(&self.stats.entries_invalidated, removed.len() as u64);
        debug!(
            "ATS invalidation {req:?}: {} translation(s) dropped",
            removed.len()
        );
        removed.len()
    }

    /// Handles PAGE_RESPONSE: wakes the request waiting for the group, or
    /// records an Unexpected Page Request Group Index.
    pub fn page_response(&self, rsp: &PageResponse) {
        let mut pri = self.pri.lock().unwrap_or_else(|p| p.into_inner());
        match pri.groups.get_mut(&(rsp.pasid, rsp.group)) {
            Some(g) if g.code.is_none() => {
                g.code = Some(rsp.code);
                bump(&self.stats.page_responses, 1);
                if rsp.code == PageResponseCode::ResponseFailure {
                    if let Some(r) = self.regs.get() {
                        r.pri_response_failure();
                    }
                }
                self.pri_cv.notify_all();
            }
            _ => {
                warn!(
                    "PAGE_RESPONSE for group {} (PASID {:?}) that is not outstanding",
                    rsp.group, rsp.pasid
                );
                bump(&self.stats.unexpected_responses, 1);
                if let Some(r) = self.regs.get() {
                    r.pri_unexpected_response();
                }
            }
        }
    }

    /// Device reset: waits in progress give up (their accesses fail with
    /// [`DmaFault::Aborted`]), messages awaiting replies are cancelled,
    /// cached translations and outstanding page requests are dropped.
    pub fn reset(&self) {
        self.abort_gen.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = self.untranslated.requester() {
            r.cancel_all();
        }
        self.flush_atc();
        let mut pri = self.pri.lock().unwrap_or_else(|p| p.into_inner());
        pri.groups.clear();
        self.pri_cv.notify_all();
    }

    /// The client is gone: everything of [`PasidMemory::reset`], the
    /// translated windows, and the negotiated features.
    pub fn disconnect(&self) {
        self.set_features(PasidFeatures::default());
        self.reset();
        self.translated.unmap_all();
    }

    fn flush_atc(&self) {
        let all = self
            .atc
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take_all();
        for e in &all {
            e.live.retire();
        }
        bump(&self.stats.entries_invalidated, all.len() as u64);
    }

    fn requester(&self) -> Result<Arc<Requester>, DmaFault> {
        self.untranslated
            .requester()
            .ok_or_else(|| DmaFault::Transport("no client connected".into()))
    }

    /// Checks that `tag` may issue requests now.
    fn check_tag(&self, tag: PasidTag) -> Result<&TranslationRegs, DmaFault> {
        let fault = |why| DmaFault::Pasid {
            pasid: tag.pasid,
            why,
        };
        let regs = self.regs.get().ok_or(fault(PasidError::NoCapability))?;
        if regs.features().pasid.is_none() {
            return Err(fault(PasidError::NoCapability));
        }
        if !regs.pasid_enabled() {
            return Err(fault(PasidError::Disabled));
        }
        if !regs.pasid_in_range(tag.pasid) {
            return Err(fault(PasidError::OutOfRange));
        }
        if tag.privileged && !regs.privileged_enabled() {
            return Err(fault(PasidError::PrivilegedDisabled));
        }
        if tag.exec && !regs.exec_enabled() {
            return Err(fault(PasidError::ExecDisabled));
        }
        Ok(regs)
    }

    /// Whether translations are requested and cached (else PASID requests
    /// go by message).
    fn ats_usable(&self, regs: &TranslationRegs) -> bool {
        self.features().ats && regs.ats_enabled()
    }

    fn lookup(&self, regs: &TranslationRegs, pasid: u32, addr: u64) -> Option<Arc<AtcEntry>> {
        {
            let atc = self.atc.read().unwrap_or_else(|p| p.into_inner());
            if atc.epoch == regs.ats_epoch() {
                return atc.find(pasid, addr);
            }
        }
        // ATS was disabled or reconfigured since these were cached.
        let stale = {
            let mut atc = self.atc.write().unwrap_or_else(|p| p.into_inner());
            atc.epoch = regs.ats_epoch();
            atc.take_all()
        };
        for e in &stale {
            e.live.retire();
        }
        None
    }

    /// Asks the client to translate around `addr` and caches what it
    /// answers. Returns the entry covering `addr` (cached or not) and
    /// whether it was cached.
    fn translate(
        &self,
        regs: &TranslationRegs,
        tag: PasidTag,
        addr: u64,
        len: u64,
        access: Access,
    ) -> Result<(TranslationEntry, bool), DmaFault> {
        let start = addr & !(PAGE - 1);
        // The last page of the 64-bit space cannot be asked for (its end
        // does not fit): nothing a client maps lives there.
        let first_end = start
            .checked_add(PAGE)
            .ok_or(DmaFault::OutOfBounds { addr })?;
        let want_end = addr.saturating_add(len.max(1)).saturating_add(PAGE - 1) & !(PAGE - 1);
        let end = want_end
            .min(start.saturating_add(TRANSLATE_AHEAD))
            .max(first_end);
        let req = TranslateRequest {
            tag: Some(tag),
            no_write: access == Access::Read,
            address: start,
            size: end - start,
        };
        let gen = self.inval_gen.load(Ordering::SeqCst);
        let epoch = regs.ats_epoch();
        let requester = self.requester()?;
        bump(&self.stats.translations, 1);
        let reply = requester
            .round_trip(Command::AtsTranslate, &req.encode())
            .map_err(|e| self.reply_fault(e, tag, addr, access))?;
        check_reply(&reply, Command::AtsTranslate)
            .map_err(|e| self.reply_fault(e, tag, addr, access))?;
        let entries = decode_translation(&reply.payload, &req)
            .map_err(|e| DmaFault::Transport(format!("ATS_TRANSLATE reply: {e}")))?;
        let first = entries
            .iter()
            .find(|e| e.address <= addr && addr < e.address + e.size)
            .copied()
            .ok_or_else(|| DmaFault::Transport("translation does not cover the address".into()))?;
        let mut dropped = Vec::new();
        let cached = {
            let mut atc = self.atc.write().unwrap_or_else(|p| p.into_inner());
            let fresh = self.inval_gen.load(Ordering::SeqCst) == gen
                && regs.ats_epoch() == epoch
                && atc.epoch == epoch;
            if fresh {
                if atc.count + entries.len() > ATC_CAPACITY {
                    dropped.extend(atc.take_all());
                }
                for e in entries.iter().filter(|e| e.present()) {
                    atc.remove_range(tag.pasid, e.address, e.address + e.size, &mut dropped);
                    atc.spaces.entry(tag.pasid).or_default().insert(
                        e.address,
                        Arc::new(AtcEntry {
                            va: e.address,
                            len: e.size,
                            ta: e.translated,
                            flags: e.flags,
                            live: Liveness::new(),
                        }),
                    );
                    atc.count += 1;
                }
            }
            fresh
        };
        for e in &dropped {
            e.live.retire();
        }
        Ok((first, cached))
    }

    fn reply_fault(&self, e: DmaError, tag: PasidTag, addr: u64, access: Access) -> DmaFault {
        let write = access == Access::Write;
        match e {
            DmaError::Client(errno) => match errno {
                libc::ESRCH => DmaFault::Pasid {
                    pasid: tag.pasid,
                    why: PasidError::Unbound,
                },
                libc::EPERM | libc::EACCES => DmaFault::Permission { addr, write },
                libc::EFAULT => DmaFault::PageFault { addr, write },
                libc::ENOSYS | libc::ENOTSUP => {
                    DmaFault::NoPath("the client does not implement the request")
                }
                other => DmaFault::Transport(format!("client errno {other}")),
            },
            // Requests awaiting replies are cancelled by a reset (and when
            // the client goes away): the access is abandoned.
            DmaError::Disconnected => DmaFault::Aborted,
            other => DmaFault::Transport(other.to_string()),
        }
    }

    fn aborted_since(&self, gen: u64) -> bool {
        self.abort_gen.load(Ordering::SeqCst) != gen
    }

    /// Issues one page request group for `pages` pages from `page` and
    /// waits for its response.
    fn page_request(
        &self,
        regs: &TranslationRegs,
        space: &PasidSpace<'_>,
        page: u64,
        pages: u64,
        write: bool,
    ) -> Result<PageResponseCode, DmaFault> {
        let fault = DmaFault::PageFault { addr: page, write };
        let abort = self.abort_gen.load(Ordering::SeqCst);
        let pri_epoch = regs.pri_epoch();
        let t0 = Instant::now();
        // Credits: at least one, up to `pages`.
        let mut credits = 0u32;
        while u64::from(credits) < pages {
            if regs.pri_take_credit() {
                credits += 1;
            } else if credits > 0 {
                break;
            } else if !regs.pri_enabled() || t0.elapsed() > PRI_CREDIT_TIMEOUT {
                return Err(fault);
            } else if self.aborted_since(abort) || space.cancelled() {
                return Err(DmaFault::Aborted);
            } else {
                std::thread::sleep(WAIT_SLICE);
            }
        }
        let key_pasid = Some(space.tag.pasid);
        let group = {
            let mut pri = self.pri.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            for i in 0..=crate::protocol::pasid::MAX_PRG_INDEX {
                let idx = (pri.next_index + i) % (crate::protocol::pasid::MAX_PRG_INDEX + 1);
                if !pri.groups.keys().any(|&(_, g)| g == idx) {
                    found = Some(idx);
                    break;
                }
            }
            let Some(idx) = found else {
                drop(pri);
                regs.pri_return_credits(credits);
                return Err(fault);
            };
            pri.next_index = idx.wrapping_add(1) % (crate::protocol::pasid::MAX_PRG_INDEX + 1);
            pri.groups.insert(
                (key_pasid, idx),
                Group {
                    code: None,
                    credits,
                },
            );
            idx
        };
        let requester = self.requester();
        let mut sent = Ok(());
        for i in 0..u64::from(credits) {
            let pr = PageRequest {
                tag: Some(space.tag),
                read: !write,
                write,
                last: i + 1 == u64::from(credits),
                address: page + i * PAGE,
                group,
            };
            sent = requester.as_ref().map_err(Clone::clone).and_then(|r| {
                r.post(Command::PageRequest, &pr.encode())
                    .map_err(|e| DmaFault::Transport(e.to_string()))
            });
            if sent.is_err() {
                break;
            }
            bump(&self.stats.page_requests, 1);
        }
        debug!(
            "page request group {group}: PASID {:#x} {:#x} x{credits} ({})",
            space.tag.pasid,
            page,
            if write { "write" } else { "read" }
        );
        let outcome = match sent {
            Err(e) => Err(e),
            Ok(()) => self
                .wait_group(regs, space, (key_pasid, group), abort, pri_epoch)
                .map_err(|e| match e {
                    DmaFault::PageFault { .. } => fault.clone(),
                    other => other,
                }),
        };
        // Whatever happened, the group is over: free its index and credits
        // (unless a PRI flush already zeroed the outstanding count).
        let g = self
            .pri
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .groups
            .remove(&(key_pasid, group));
        if regs.pri_epoch() == pri_epoch {
            regs.pri_return_credits(g.map_or(credits, |g| g.credits));
        }
        outcome
    }

    fn wait_group(
        &self,
        regs: &TranslationRegs,
        space: &PasidSpace<'_>,
        key: (Option<u32>, u16),
        abort: u64,
        pri_epoch: u64,
    ) -> Result<PageResponseCode, DmaFault> {
        let t0 = Instant::now();
        let mut pri = self.pri.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match pri.groups.get(&key) {
                Some(Group { code: Some(c), .. }) => return Ok(*c),
                Some(_) => {}
                None => return Err(DmaFault::Aborted),
            }
            if self.aborted_since(abort) || regs.pri_epoch() != pri_epoch || space.cancelled() {
                return Err(DmaFault::Aborted);
            }
            if t0.elapsed() > PAGE_RESPONSE_TIMEOUT {
                warn!("page request group {} got no response in time", key.1);
                return Err(DmaFault::PageFault {
                    addr: 0,
                    write: false,
                });
            }
            pri = self
                .pri_cv
                .wait_timeout(pri, WAIT_SLICE)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// PASID_DMA_READ / PASID_DMA_WRITE of `buf` at `addr`.
    fn message_transfer(
        &self,
        tag: PasidTag,
        addr: u64,
        buf: Transfer<'_>,
    ) -> Result<(), DmaFault> {
        if !self.features().dma {
            return Err(DmaFault::NoPath(
                "ATS is not usable and the client offers no PASID-tagged DMA messages",
            ));
        }
        let requester = self.requester()?;
        let max = requester.max_transfer().max(1);
        let (len, write) = match &buf {
            Transfer::Read(b) => (b.len(), false),
            Transfer::Write(b) => (b.len(), true),
        };
        let access = if write { Access::Write } else { Access::Read };
        let mut done = 0usize;
        let mut buf = buf;
        while done < len {
            let n = max.min(len - done);
            let at = addr.wrapping_add(done as u64);
            let t = PasidTransfer {
                tag,
                address: at,
                count: n as u64,
            };
            bump(&self.stats.pasid_dma_messages, 1);
            match &mut buf {
                Transfer::Read(b) => {
                    let r = requester
                        .round_trip(Command::PasidDmaRead, &t.encode(&[]))
                        .map_err(|e| self.reply_fault(e, tag, at, access))?;
                    check_reply(&r, Command::PasidDmaRead)
                        .map_err(|e| self.reply_fault(e, tag, at, access))?;
                    let (rt, data) = PasidTransfer::decode(&r.payload, "PASID_DMA_READ reply")
                        .map_err(|e| DmaFault::Transport(e.to_string()))?;
                    if rt != t || data.len() != n {
                        return Err(DmaFault::Transport(
                            "PASID_DMA_READ reply does not match the request".into(),
                        ));
                    }
                    b[done..done + n].copy_from_slice(data);
                }
                Transfer::Write(b) => {
                    let r = requester
                        .round_trip(Command::PasidDmaWrite, &t.encode(&b[done..done + n]))
                        .map_err(|e| self.reply_fault(e, tag, at, access))?;
                    check_reply(&r, Command::PasidDmaWrite)
                        .map_err(|e| self.reply_fault(e, tag, at, access))?;
                }
            }
            done += n;
        }
        Ok(())
    }
}

enum Transfer<'b> {
    Read(&'b mut [u8]),
    Write(&'b [u8]),
}

/// The outcome of [`DmaSpace::with_piece`].
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<R> {
    /// The closure ran on a direct view of client memory.
    Done(R),
    /// The translation is not cached (any more): [`DmaSpace::prepare`] and
    /// try again.
    NotResident,
    /// This part of client memory has no direct view (a window without fd,
    /// a PASID reached by messages): use [`DmaSpace::read`] /
    /// [`DmaSpace::write`].
    Indirect,
}

/// One PASID's address space, as a device request sees it.
#[derive(Clone, Copy)]
pub struct PasidSpace<'a> {
    mem: &'a PasidMemory,
    tag: PasidTag,
    block_on_fault: bool,
    cancel: Option<&'a (dyn Fn() -> bool + Sync)>,
}

impl std::fmt::Debug for PasidSpace<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasidSpace")
            .field("tag", &self.tag)
            .field("block_on_fault", &self.block_on_fault)
            .finish()
    }
}

impl<'a> PasidSpace<'a> {
    /// Page faults are resolved with page requests (PRI) when possible,
    /// the access waiting for the response, instead of failing at once.
    pub fn blocking(mut self, block: bool) -> Self {
        self.block_on_fault = block;
        self
    }

    /// Waits of this space's accesses give up (with [`DmaFault::Aborted`])
    /// once `cancel` returns true.
    pub fn cancel_with(mut self, cancel: &'a (dyn Fn() -> bool + Sync)) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// The requester tag.
    pub fn tag(&self) -> PasidTag {
        self.tag
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c())
    }

    fn prepare(&self, addr: u64, len: u64, access: Access) -> Result<(), DmaFault> {
        let mem = self.mem;
        let regs = mem.check_tag(self.tag)?;
        if !mem.ats_usable(regs) {
            return Ok(());
        }
        let write = access == Access::Write;
        for _ in 0..MAX_ATTEMPTS {
            if self.cancelled() {
                return Err(DmaFault::Aborted);
            }
            if let Some(e) = mem.lookup(regs, self.tag.pasid, addr) {
                if e.allows(access) {
                    bump(&mem.stats.atc_hits, 1);
                    return Ok(());
                }
            }
            let (first, cached) = mem.translate(regs, self.tag, addr, len, access)?;
            let ok = match access {
                Access::Read => first.flags & entry_flags::R != 0,
                Access::Write => first.flags & entry_flags::W != 0,
            };
            if ok {
                if !cached {
                    debug!("translation of {addr:#x} raced an invalidation; asking again");
                }
                continue;
            }
            if !self.block_on_fault || !mem.features().pri || !regs.pri_enabled() {
                return Err(if first.present() {
                    DmaFault::Permission { addr, write }
                } else {
                    DmaFault::PageFault { addr, write }
                });
            }
            let page = addr & !(PAGE - 1);
            let entry_end = first.address + first.size;
            let need_end = addr.saturating_add(len.max(1));
            let pages = ((entry_end.min(need_end) - page).div_ceil(PAGE)).clamp(1, PRG_MAX_PAGES);
            match mem.page_request(regs, self, page, pages, write)? {
                PageResponseCode::Success => continue,
                PageResponseCode::InvalidRequest | PageResponseCode::ResponseFailure => {
                    return Err(DmaFault::PageFault { addr, write })
                }
            }
        }
        Err(DmaFault::Transport(format!(
            "no stable translation for {addr:#x} after {MAX_ATTEMPTS} attempts"
        )))
    }

    fn with_piece<R>(
        &self,
        addr: u64,
        max: usize,
        access: Access,
        f: impl FnOnce(GuestSlice<'_>) -> R,
    ) -> Result<Piece<R>, DmaFault> {
        let mem = self.mem;
        let regs = mem.check_tag(self.tag)?;
        if !mem.ats_usable(regs) {
            return Ok(Piece::Indirect);
        }
        let Some(e) = mem.lookup(regs, self.tag.pasid, addr) else {
            return Ok(Piece::NotResident);
        };
        if !e.allows(access) {
            return Ok(Piece::NotResident);
        }
        if e.flags & entry_flags::U != 0 {
            return Ok(Piece::Indirect);
        }
        let Some(_guard) = e.live.enter() else {
            return Ok(Piece::NotResident);
        };
        let off = addr - e.va;
        let n = usize::try_from(e.len - off).unwrap_or(usize::MAX).min(max);
        mem.translated()
            .with_slice_upto(e.ta + off, n, access, f)
            .map(Piece::Done)
            .map_err(|err| match err {
                DmaError::NotDirect(_) => DmaFault::OutOfBounds { addr },
                other => DmaFault::from_dma(other, addr, access == Access::Write),
            })
    }

    fn transfer(&self, addr: u64, mut buf: Transfer<'_>) -> Result<(), DmaFault> {
        let (len, access) = match &buf {
            Transfer::Read(b) => (b.len(), Access::Read),
            Transfer::Write(b) => (b.len(), Access::Write),
        };
        let mut done = 0usize;
        let mut misses = 0;
        while done < len {
            let at = addr
                .checked_add(done as u64)
                .ok_or(DmaFault::OutOfBounds { addr })?;
            let rest = len - done;
            self.prepare(at, rest as u64, access)?;
            let piece = match &mut buf {
                Transfer::Read(b) => {
                    let part = &mut b[done..];
                    self.with_piece(at, rest, access, |s| {
                        let n = s.len();
                        s.copy_to(0, &mut part[..n]).map(|_| n)
                    })?
                }
                Transfer::Write(b) => {
                    let part = &b[done..];
                    self.with_piece(at, rest, access, |s| {
                        let n = s.len();
                        s.copy_from(0, &part[..n]).map(|_| n)
                    })?
                }
            };
            match piece {
                Piece::Done(r) => {
                    done += r.map_err(|e| DmaFault::from_dma(e, at, access == Access::Write))?;
                    misses = 0;
                }
                Piece::NotResident => {
                    misses += 1;
                    if misses > MAX_ATTEMPTS {
                        return Err(DmaFault::Transport(format!(
                            "translation of {at:#x} keeps vanishing"
                        )));
                    }
                }
                Piece::Indirect => {
                    // The rest by message (PASID DMA), up to the end of the
                    // untranslated-only entry when ATS is in use.
                    let regs = self.mem.check_tag(self.tag)?;
                    let n = if self.mem.ats_usable(regs) {
                        self.mem
                            .lookup(regs, self.tag.pasid, at)
                            .map_or(rest, |e| (e.end() - at).min(rest as u64) as usize)
                    } else {
                        rest
                    };
                    let part = match &mut buf {
                        Transfer::Read(b) => Transfer::Read(&mut b[done..done + n]),
                        Transfer::Write(b) => Transfer::Write(&b[done..done + n]),
                    };
                    self.mem.message_transfer(self.tag, at, part)?;
                    done += n;
                }
            }
        }
        Ok(())
    }
}

/// An address space a device request targets.
#[derive(Clone, Copy, Debug)]
pub enum DmaSpace<'a> {
    /// Requests without PASID: the DMA_MAP table.
    Untranslated(&'a GuestMemory),
    /// PASID-tagged requests.
    Pasid(PasidSpace<'a>),
}

impl<'a> DmaSpace<'a> {
    /// Whether two spaces are the same address space (so that their
    /// addresses can be compared for overlap).
    pub fn same_as(&self, other: &DmaSpace<'_>) -> bool {
        match (self, other) {
            (DmaSpace::Untranslated(a), DmaSpace::Untranslated(b)) => std::ptr::eq(*a, *b),
            (DmaSpace::Pasid(a), DmaSpace::Pasid(b)) => {
                std::ptr::eq(a.mem, b.mem) && a.tag.pasid == b.tag.pasid
            }
            _ => false,
        }
    }

    /// Makes the translation for `addr` (looking `len` bytes ahead)
    /// resident, resolving faults with page requests if the space blocks on
    /// faults. May exchange messages with the client: worker threads only.
    /// Holds nothing when it returns.
    pub fn prepare(&self, addr: u64, len: u64, access: Access) -> Result<(), DmaFault> {
        match self {
            DmaSpace::Untranslated(_) => Ok(()),
            DmaSpace::Pasid(p) => p.prepare(addr, len, access),
        }
    }

    /// Runs `f` on a direct view of up to `max` bytes (at least one) at
    /// `addr`, as far as one translation and one client window reach.
    /// Never exchanges messages, so it may be nested (a copy holds its
    /// source view while it takes the destination's).
    pub fn with_piece<R>(
        &self,
        addr: u64,
        max: usize,
        access: Access,
        f: impl FnOnce(GuestSlice<'_>) -> R,
    ) -> Result<Piece<R>, DmaFault> {
        match self {
            DmaSpace::Untranslated(m) => match m.with_slice_upto(addr, max, access, f) {
                Ok(r) => Ok(Piece::Done(r)),
                Err(DmaError::NotDirect(_)) => Ok(Piece::Indirect),
                Err(e) => Err(DmaFault::from_dma(e, addr, access == Access::Write)),
            },
            DmaSpace::Pasid(p) => p.with_piece(addr, max, access, f),
        }
    }

    /// Copies client memory at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        match self {
            DmaSpace::Untranslated(m) => m
                .read(addr, buf)
                .map_err(|e| DmaFault::from_dma(e, addr, false)),
            DmaSpace::Pasid(p) => p.transfer(addr, Transfer::Read(buf)),
        }
    }

    /// Copies `buf` into client memory at `addr`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<(), DmaFault> {
        match self {
            DmaSpace::Untranslated(m) => m
                .write(addr, buf)
                .map_err(|e| DmaFault::from_dma(e, addr, true)),
            DmaSpace::Pasid(p) => p.transfer(addr, Transfer::Write(buf)),
        }
    }
}

impl PasidMemory {
    /// Logs what the client negotiated (once per connection).
    pub fn log_features(&self) {
        let f = self.features();
        if f.any() {
            info!(
                "PASID extension negotiated: ats {}, pri {}, dma {}",
                f.ats, f.pri, f.dma
            );
        }
    }
}
