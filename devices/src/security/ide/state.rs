//! The state of one IDE port: its registers, its key slots, its AER
//! registers, and the rule that ties them together — a stream reads SECURE
//! only while it is enabled, uses a supported algorithm, and keys for every
//! sub-stream in both directions of the key sets in use are programmed and
//! armed. Whenever a stream leaves SECURE (disabled, key set retired, session
//! ended, integrity failure, reset) every key of its Stream ID is zeroized,
//! so an invocation counter can never restart under an old key.

use super::config::IdeConfig;
use super::keys::{ArmedKey, KeyError, StreamKeys};
use super::regs::{self, ctl, sts, AerRegs, ADDR1_MASK, CTL_FLOWTHROUGH, RID1_MASK, RID2_MASK};
use super::{IdeEvent, InsecureReason, LinkEnd, StreamKind, StreamRef};
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
struct LinkBlock {
    ctl: u32,
    fail: bool,
}

#[derive(Clone, Debug)]
struct SelBlock {
    ctl: u32,
    fail: bool,
    rid1: u32,
    rid2: u32,
    addr: Vec<[u32; 3]>,
}

/// What a register dword is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Cap,
    Ctl,
    LinkCtl(usize),
    LinkSts(usize),
    SelCap(usize),
    SelCtl(usize),
    SelSts(usize),
    Rid1(usize),
    Rid2(usize),
    Addr(usize, usize, usize),
    None,
}

/// Why a key operation was refused, as IDE_KM reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KmError {
    /// No stream register block carries the Stream ID.
    UnknownStream,
    /// The slot-level refusal.
    Key(KeyError),
}

/// One port's registers, keys and error state.
#[derive(Debug)]
pub(crate) struct PortState {
    cfg: IdeConfig,
    ctl: u32,
    link: Vec<LinkBlock>,
    sel: Vec<SelBlock>,
    keys: BTreeMap<u8, StreamKeys>,
    aer: AerRegs,
    /// The Stream ID of each stream that is SECURE, as last published
    /// (link blocks first).
    secure: Vec<Option<u8>>,
}

/// Everything the link needs about one enabled stream, frozen.
#[derive(Debug)]
pub(crate) struct ViewStream {
    pub stream: StreamRef,
    pub id: u8,
    pub secure: bool,
    pub default: bool,
    pub tee_limited: bool,
    pub tc: u8,
    /// Address-association ranges (inclusive), valid blocks only.
    pub ranges: Vec<(u64, u64)>,
    /// Armed keys by `[direction][sub-stream][set]` and the set each
    /// direction uses (device view), when secure.
    pub keys: Option<ViewKeys>,
}

/// The armed keys of a secure stream.
#[derive(Debug, Default)]
pub(crate) struct ViewKeys {
    armed: [[[Option<Arc<ArmedKey>>; 2]; 3]; 2],
    in_use: [[Option<KeySet>; 3]; 2],
}

impl ViewKeys {
    /// The key `direction` transmits (device TX) or the host transmits to
    /// the device with (device RX) on `ss`: (set, key).
    pub fn in_use(
        &self,
        direction: KeyDirection,
        ss: SubStream,
    ) -> Option<(KeySet, &Arc<ArmedKey>)> {
        let set = self.in_use[direction as usize][ss as usize]?;
        Some((set, self.armed(direction, ss, set)?))
    }
    /// The armed key of a slot.
    pub fn armed(
        &self,
        direction: KeyDirection,
        ss: SubStream,
        set: KeySet,
    ) -> Option<&Arc<ArmedKey>> {
        self.armed[direction as usize][ss as usize][set as usize].as_ref()
    }
}

/// The frozen routing and key state the link uses for one access.
#[derive(Debug, Default)]
pub(crate) struct LinkView {
    /// Enabled streams: selective ones by index, then link streams.
    pub streams: Vec<ViewStream>,
}

impl LinkView {
    /// Whether any stream is enabled (else every access goes straight through).
    pub fn active(&self) -> bool {
        !self.streams.is_empty()
    }

    /// The stream a device-originated request to `addr` belongs to:
    /// an address-association match, else the default selective stream,
    /// else a link stream for TC0; `None`: an ordinary (non-IDE) TLP.
    /// Streams that only carry TEE traffic are skipped when `tee` is false.
    pub fn route_request(&self, addr: u64, tee: bool) -> Option<&ViewStream> {
        let eligible = |s: &&ViewStream| tee || !s.tee_limited;
        let sel = || {
            self.streams
                .iter()
                .filter(|s| s.stream.kind == StreamKind::Selective)
                .filter(eligible)
        };
        sel()
            .find(|s| s.ranges.iter().any(|&(b, l)| b <= addr && addr <= l))
            .or_else(|| sel().find(|s| s.default))
            .or_else(|| {
                self.streams
                    .iter()
                    .filter(eligible)
                    .find(|s| s.stream.kind == StreamKind::Link && s.tc == 0)
            })
    }

    /// The stream the (modelled) root port sends its requests to the device
    /// on: the lowest-numbered SECURE selective stream, else a SECURE link
    /// stream for TC0; `None`: ordinary TLPs.
    pub fn route_host(&self) -> Option<&ViewStream> {
        self.streams
            .iter()
            .filter(|s| s.secure)
            .find(|s| s.stream.kind == StreamKind::Selective)
            .or_else(|| {
                self.streams
                    .iter()
                    .find(|s| s.secure && s.stream.kind == StreamKind::Link && s.tc == 0)
            })
    }
}

fn id_of(ctl: u32) -> u8 {
    (ctl >> ctl::ID_SHIFT) as u8
}

impl PortState {
    pub fn new(cfg: IdeConfig) -> Self {
        let n = cfg.link_streams as usize + cfg.selective_streams as usize;
        let mut p = PortState {
            link: vec![LinkBlock::default(); cfg.link_streams as usize],
            sel: Vec::new(),
            ctl: 0,
            keys: BTreeMap::new(),
            aer: AerRegs::default(),
            secure: vec![None; n],
            cfg,
        };
        p.reset_registers();
        p
    }

    fn reset_registers(&mut self) {
        self.ctl = 0;
        for l in &mut self.link {
            *l = LinkBlock::default();
        }
        self.sel = vec![
            SelBlock {
                ctl: 0,
                fail: false,
                rid1: 0,
                rid2: 0,
                addr: vec![[0; 3]; self.cfg.addr_assoc as usize],
            };
            self.cfg.selective_streams as usize
        ];
        self.aer = AerRegs::default();
    }

    fn decode(&self, dw: usize) -> Reg {
        let nlink = self.cfg.link_streams as usize;
        match dw {
            0 => Reg::Cap,
            1 => Reg::Ctl,
            d if d < 2 + 2 * nlink => {
                let i = (d - 2) / 2;
                if (d - 2) % 2 == 0 {
                    Reg::LinkCtl(i)
                } else {
                    Reg::LinkSts(i)
                }
            }
            d if d < self.cfg.body_dwords() => {
                let rel = d - self.cfg.sel_block_start(0);
                let (j, o) = (
                    rel / self.cfg.sel_block_dwords(),
                    rel % self.cfg.sel_block_dwords(),
                );
                match o {
                    0 => Reg::SelCap(j),
                    1 => Reg::SelCtl(j),
                    2 => Reg::SelSts(j),
                    3 => Reg::Rid1(j),
                    4 => Reg::Rid2(j),
                    o => Reg::Addr(j, (o - 5) / 3, (o - 5) % 3),
                }
            }
            _ => Reg::None,
        }
    }

    /// Bits of a stream Control register software may write.
    fn ctl_mask(&self, selective: bool) -> u32 {
        let c = &self.cfg;
        let mut m = ctl::EN | ctl::ALG | ctl::TC | ctl::ID;
        if c.aggregation {
            m |= ctl::TX_AGGR;
        }
        if c.pcrc {
            m |= ctl::PCRC_EN;
        }
        if c.partial_header {
            m |= ctl::PART_ENC;
        }
        if selective {
            m |= ctl::DEFAULT;
            if c.sel_cfg {
                m |= ctl::CFG_EN;
            }
            if c.tee_limited {
                m |= ctl::TEE_LIMITED;
            }
        }
        m
    }

    fn status(secure: bool, fail: bool) -> u32 {
        (if secure { sts::SECURE } else { sts::INSECURE }) | if fail { sts::IDE_FAIL } else { 0 }
    }

    /// Reads body dword `dw`.
    pub fn read(&self, dw: usize) -> u32 {
        match self.decode(dw) {
            Reg::Cap => self.cfg.cap_register(),
            Reg::Ctl => self.ctl,
            Reg::LinkCtl(i) => self.link[i].ctl,
            Reg::LinkSts(i) => Self::status(self.secure[i].is_some(), self.link[i].fail),
            Reg::SelCap(_) => u32::from(self.cfg.addr_assoc),
            Reg::SelCtl(j) => self.sel[j].ctl,
            Reg::SelSts(j) => Self::status(
                self.secure[self.cfg.link_streams as usize + j].is_some(),
                self.sel[j].fail,
            ),
            Reg::Rid1(j) => self.sel[j].rid1,
            Reg::Rid2(j) => self.sel[j].rid2,
            Reg::Addr(j, k, r) => self.sel[j].addr[k][r],
            Reg::None => 0,
        }
    }

    /// A stream Control write: while a stream stays enabled its other
    /// fields (Stream ID included) are locked; a write that leaves it
    /// disabled takes every writable field.
    fn write_ctl(old: u32, v: u32, mask: u32) -> u32 {
        let new = (old & !mask) | (v & mask);
        if old & ctl::EN != 0 && new & ctl::EN != 0 {
            old
        } else {
            new
        }
    }

    /// Writes body dword `dw` (`touched`: the bits the access covered).
    /// Returns the reason to re-evaluate streams, if the write can change one.
    pub fn write(&mut self, dw: usize, v: u32, touched: u32) -> Option<InsecureReason> {
        match self.decode(dw) {
            Reg::Ctl => {
                if self.cfg.flow_through {
                    let m = CTL_FLOWTHROUGH & touched;
                    self.ctl = (self.ctl & !m) | (v & m);
                }
                None
            }
            Reg::LinkCtl(i) => {
                let m = self.ctl_mask(false) & touched;
                self.link[i].ctl = Self::write_ctl(self.link[i].ctl, v, m);
                Some(InsecureReason::Disabled)
            }
            Reg::SelCtl(j) => {
                let m = self.ctl_mask(true) & touched;
                self.sel[j].ctl = Self::write_ctl(self.sel[j].ctl, v, m);
                Some(InsecureReason::Disabled)
            }
            Reg::LinkSts(i) => {
                if v & sts::IDE_FAIL & touched != 0 {
                    self.link[i].fail = false;
                }
                None
            }
            Reg::SelSts(j) => {
                if v & sts::IDE_FAIL & touched != 0 {
                    self.sel[j].fail = false;
                }
                None
            }
            Reg::Rid1(j) => {
                let m = RID1_MASK & touched;
                self.sel[j].rid1 = (self.sel[j].rid1 & !m) | (v & m);
                None
            }
            Reg::Rid2(j) => {
                let m = RID2_MASK & touched;
                self.sel[j].rid2 = (self.sel[j].rid2 & !m) | (v & m);
                None
            }
            Reg::Addr(j, k, r) => {
                let m = if r == 0 { ADDR1_MASK } else { u32::MAX } & touched;
                let a = &mut self.sel[j].addr[k][r];
                *a = (*a & !m) | (v & m);
                // Address association changes routing.
                Some(InsecureReason::Disabled)
            }
            Reg::Cap | Reg::SelCap(_) | Reg::None => None,
        }
    }

    /// The register image IDE_KM's QUERY_RESP carries.
    pub fn image(&self) -> Vec<u32> {
        (0..self.cfg.body_dwords()).map(|d| self.read(d)).collect()
    }

    /// Every stream register block.
    pub fn streams(&self) -> impl Iterator<Item = (StreamRef, u32)> + '_ {
        let link = self.link.iter().enumerate().map(|(i, l)| {
            (
                StreamRef {
                    kind: StreamKind::Link,
                    index: i as u8,
                },
                l.ctl,
            )
        });
        let sel = self.sel.iter().enumerate().map(|(j, s)| {
            (
                StreamRef {
                    kind: StreamKind::Selective,
                    index: j as u8,
                },
                s.ctl,
            )
        });
        link.chain(sel)
    }

    fn slot_index(&self, s: StreamRef) -> usize {
        match s.kind {
            StreamKind::Link => s.index as usize,
            StreamKind::Selective => self.cfg.link_streams as usize + s.index as usize,
        }
    }

    fn evaluate(&self, ctl: u32) -> bool {
        ctl & ctl::EN != 0
            && ctl & ctl::ALG == 0
            && self.keys.get(&id_of(ctl)).is_some_and(StreamKeys::ready)
    }

    /// Whether `s` is SECURE (as last published).
    pub fn is_secure(&self, s: StreamRef) -> bool {
        self.secure
            .get(self.slot_index(s))
            .is_some_and(|id| id.is_some())
    }

    /// The Stream ID configured in `s`'s Control register.
    pub fn stream_id(&self, s: StreamRef) -> u8 {
        self.streams()
            .find(|(r, _)| *r == s)
            .map_or(0, |(_, c)| id_of(c))
    }

    /// Re-evaluates every stream; a stream leaving SECURE takes every key
    /// of its Stream ID with it. Returns the events (`reason`: why streams
    /// went insecure).
    pub fn settle(&mut self, reason: InsecureReason) -> Vec<IdeEvent> {
        let mut events = Vec::new();
        // Iterate until stable: zeroizing keys can take other streams
        // with the same ID down too.
        for _ in 0..4 {
            let now: Vec<(StreamRef, u32, bool)> = self
                .streams()
                .map(|(r, c)| (r, c, self.evaluate(c)))
                .collect();
            let mut changed = false;
            for (r, c, sec) in now {
                let i = self.slot_index(r);
                let id = id_of(c);
                match (self.secure[i], sec) {
                    (None, true) => {
                        self.secure[i] = Some(id);
                        events.push(IdeEvent::StreamSecure { stream: r, id });
                    }
                    (Some(old), false) => {
                        // The keys of the ID it was SECURE with go (the
                        // write that disabled it may have changed the ID).
                        self.secure[i] = None;
                        if self.keys.remove(&old).is_some() {
                            changed = true;
                        }
                        events.push(IdeEvent::StreamInsecure {
                            stream: r,
                            id: old,
                            reason,
                        });
                    }
                    _ => {}
                }
            }
            if !changed {
                break;
            }
        }
        events
    }

    fn known_id(&self, id: u8) -> bool {
        self.streams().any(|(_, c)| id_of(c) == id)
    }

    /// KEY_PROG.
    pub fn program(
        &mut self,
        session: u32,
        id: u8,
        slot: KeySlot,
        key: IdeKey,
    ) -> Result<(), KmError> {
        if !self.known_id(id) {
            return Err(KmError::UnknownStream);
        }
        self.keys
            .entry(id)
            .or_default()
            .program(slot, key, session)
            .map_err(KmError::Key)
    }

    /// K_SET_GO.
    pub fn go(&mut self, session: u32, id: u8, slot: KeySlot) -> Result<(), KmError> {
        if !self.known_id(id) {
            return Err(KmError::UnknownStream);
        }
        self.keys
            .get_mut(&id)
            .ok_or(KmError::Key(KeyError::Empty))?
            .go(slot, session)
            .map_err(KmError::Key)
    }

    /// K_SET_STOP.
    pub fn stop(&mut self, session: u32, id: u8, slot: KeySlot) -> Result<(), KmError> {
        if !self.known_id(id) {
            return Err(KmError::UnknownStream);
        }
        let Some(keys) = self.keys.get_mut(&id) else {
            return Ok(());
        };
        keys.stop(slot, session).map_err(KmError::Key)?;
        if keys.is_empty() {
            self.keys.remove(&id);
        }
        Ok(())
    }

    /// Zeroizes the keys `session` programmed.
    pub fn end_session(&mut self, session: u32) -> bool {
        let mut any = false;
        for k in self.keys.values_mut() {
            any |= k.end_session(session);
        }
        self.keys.retain(|_, k| !k.is_empty());
        any
    }

    /// Whether every key of Stream ID `id` needed for SECURE is armed.
    pub fn keys_ready(&self, id: u8) -> bool {
        self.keys.get(&id).is_some_and(StreamKeys::ready)
    }

    /// Key slot states of a Stream ID (never the keys).
    pub fn key_states(&self, id: u8) -> Vec<(KeySlot, &'static str)> {
        self.keys.get(&id).map(|k| k.describe()).unwrap_or_default()
    }

    /// An integrity failure on stream `s`: its keys are gone (and with them
    /// SECURE); the end that detected it reports it — the device in AER
    /// (IDE Check Failed, with the TLP's header and IDE prefix logged), the
    /// host end by an IDE Fail message, which sets the stream's IDE_FAIL
    /// status bit here.
    pub fn integrity_failure(
        &mut self,
        s: StreamRef,
        detected_by: LinkEnd,
        header: [u32; 4],
        prefix: u32,
    ) {
        let id = self.stream_id(s);
        self.keys.remove(&id);
        match detected_by {
            LinkEnd::Device => {
                self.aer
                    .record_uncorrectable(regs::aer::UNC_IDE_CHECK, header, prefix);
            }
            LinkEnd::Host => match s.kind {
                StreamKind::Link => self.link[s.index as usize].fail = true,
                StreamKind::Selective => self.sel[s.index as usize].fail = true,
            },
        }
    }

    /// Power-on state: registers reset, every key zeroized.
    pub fn reset(&mut self) {
        self.keys.clear();
        self.reset_registers();
    }

    /// The AER registers.
    pub fn aer(&mut self) -> &mut AerRegs {
        &mut self.aer
    }

    /// Freezes what the link needs.
    pub fn view(&self) -> LinkView {
        let mut streams = Vec::new();
        let nlink = self.cfg.link_streams as usize;
        let mk = |r: StreamRef, c: u32, ranges: Vec<(u64, u64)>, secure: bool| ViewStream {
            stream: r,
            id: id_of(c),
            secure,
            default: c & ctl::DEFAULT != 0,
            tee_limited: c & ctl::TEE_LIMITED != 0,
            tc: ((c & ctl::TC) >> 19) as u8,
            ranges,
            keys: if secure {
                self.keys.get(&id_of(c)).map(freeze)
            } else {
                None
            },
        };
        for (j, s) in self.sel.iter().enumerate() {
            if s.ctl & ctl::EN == 0 {
                continue;
            }
            let ranges = s
                .addr
                .iter()
                .filter(|a| a[0] & 1 != 0)
                .map(|a| {
                    let base = (u64::from(a[2]) << 32) | (u64::from((a[0] >> 8) & 0xfff) << 20);
                    let limit = (u64::from(a[1]) << 32) | (u64::from(a[0] >> 20) << 20) | 0xf_ffff;
                    (base, limit)
                })
                .collect();
            streams.push(mk(
                StreamRef {
                    kind: StreamKind::Selective,
                    index: j as u8,
                },
                s.ctl,
                ranges,
                self.secure[nlink + j].is_some(),
            ));
        }
        for (i, l) in self.link.iter().enumerate() {
            if l.ctl & ctl::EN != 0 {
                streams.push(mk(
                    StreamRef {
                        kind: StreamKind::Link,
                        index: i as u8,
                    },
                    l.ctl,
                    Vec::new(),
                    self.secure[i].is_some(),
                ));
            }
        }
        LinkView { streams }
    }
}

fn freeze(k: &StreamKeys) -> ViewKeys {
    let mut v = ViewKeys::default();
    for d in KeyDirection::ALL {
        for ss in SubStream::ALL {
            v.in_use[d as usize][ss as usize] = k.in_use(d, ss);
            for set in KeySet::ALL {
                v.armed[d as usize][ss as usize][set as usize] =
                    k.armed(KeySlot::new(set, d, ss)).cloned();
            }
        }
    }
    v
}
