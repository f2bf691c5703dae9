//! PCIe Integrity and Data Encryption (IDE) for every trustdev device: the
//! IDE extended capability (PCIe 6.x §7.9.26), IDE_KM key slots (§6.33.3),
//! an AER capability that reports IDE Check Failed, and a model of the
//! protected link between the device and guest memory (§6.33.4-5).
//!
//! ```text
//! config space ── IdeRegisters / AerRegisters (ConfigHandler) ─┐
//! DOE ── SPDM session ── IDE_KM (spdm_responder::idekm) ───────┼── Ide (one port's state)
//! device DMA ── GuestMemory ── IdeLink (DmaInterposer) ────────┤     registers, key slots,
//! BAR accesses ── IdeDevice<D> (wraps any Device) ─────────────┘     SECURE rule, events
//! ```
//!
//! - [`Ide`]: one port's state, shared by all of the above. It publishes a
//!   frozen view of the enabled streams and their armed keys that the link
//!   reads without locks on the data path.
//! - [`IdeLink`]: both ends of the link. Every TLP of a device's traffic on
//!   a SECURE stream is sealed by its transmitter and opened and verified by
//!   its receiver before the data reaches guest memory or the device; see
//!   [`tlp`] for the framing and [`trace`] for the wire recording.
//! - [`IdeDevice`]: wraps any [`vfio_user_server::Device`]: installs the
//!   link on its guest memory, passes its BAR accesses over the link,
//!   follows Max_Payload_Size / Max_Read_Request_Size in its PCIe
//!   capability. Device models need no IDE code of their own.
//! - [`km::IdeKmPorts`]: the IDE_KM backend over one or more ports.
//!
//! # For TDISP
//!
//! [`Ide::stream`], [`Ide::secure_stream_ids`], [`Ide::bound_stream`] say
//! which streams exist and are SECURE; [`Ide::subscribe`] delivers
//! [`IdeEvent`]s (a stream became SECURE / went INSECURE and why, an
//! integrity failure); [`Ide::set_tee_originator`] sets the T bit on the
//! device's TLPs (and lets them use TEE-limited streams), and
//! [`Ide::set_require_secure`] makes the link refuse device DMA that is not
//! on a SECURE stream.

mod aead;
pub mod config;
pub mod device;
pub mod host;
mod keys;
pub mod km;
pub mod link;
pub mod regs;
mod state;
pub mod tlp;
pub mod trace;

#[cfg(test)]
mod tests;

pub use config::{IdeConfig, IdeConfigError};
pub use device::IdeDevice;
pub use link::{IdeLink, LinkStats, WireFault};

use regs::{dword_writes, read_bytes};
use spdm_responder::idekm::{IdeKey, KeySlot, QueryResp};
use state::{KmError, LinkView, PortState};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use vfio_user_server::pci::{
    ext_cap_id, BuildError, ConfigBuilder, ConfigHandler, ConfigSpace, ExtCap, PciIds, PcieCap,
    PortType,
};

/// Link IDE stream or selective IDE stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// A Link IDE stream (one per traffic class).
    Link,
    /// A Selective IDE stream.
    Selective,
}

/// A stream register block of the capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamRef {
    /// Link or selective.
    pub kind: StreamKind,
    /// Register block index.
    pub index: u8,
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            StreamKind::Link => write!(f, "link stream {}", self.index),
            StreamKind::Selective => write!(f, "selective stream {}", self.index),
        }
    }
}

/// The two ends of the modelled link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The device (this port).
    Device,
    /// The host end (the root port or root complex).
    Host,
}

/// Why a stream left SECURE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsecureReason {
    /// Its Control register was written (Enable cleared) or its
    /// configuration changed.
    Disabled,
    /// K_SET_STOP retired a key set in use.
    KeySetStopped,
    /// The SPDM session that programmed its keys ended.
    SessionEnded,
    /// A TLP failed its integrity check.
    IntegrityFailure(LinkEnd),
    /// Function Level Reset, device reset or the client went away.
    Reset,
}

/// What happens to the device's IDE streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdeEvent {
    /// A stream entered SECURE.
    StreamSecure {
        /// Which.
        stream: StreamRef,
        /// Its Stream ID.
        id: u8,
    },
    /// A stream left SECURE; its keys are zeroized.
    StreamInsecure {
        /// Which.
        stream: StreamRef,
        /// Its Stream ID.
        id: u8,
        /// Why.
        reason: InsecureReason,
    },
    /// A TLP failed its integrity check; its data was dropped.
    IntegrityFailure {
        /// The stream it travelled on.
        stream: StreamRef,
        /// Its Stream ID.
        id: u8,
        /// The end that detected it.
        detected_by: LinkEnd,
    },
}

/// Which device DMA the link lets through (set by TDISP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaGate {
    /// All of it (the link's own rules apply).
    Open,
    /// Only requests routed to the SECURE stream with this Stream ID.
    Stream(u8),
    /// None.
    Closed,
}

impl DmaGate {
    fn encode(self) -> u16 {
        match self {
            DmaGate::Open => 0,
            DmaGate::Stream(id) => 0x100 | u16::from(id),
            DmaGate::Closed => 0x200,
        }
    }

    fn decode(v: u16) -> DmaGate {
        match v >> 8 {
            0 => DmaGate::Open,
            1 => DmaGate::Stream(v as u8),
            _ => DmaGate::Closed,
        }
    }
}

/// A stream's current state, for TDISP and tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Which block.
    pub stream: StreamRef,
    /// Its Stream ID field.
    pub id: u8,
    /// Enable bit.
    pub enabled: bool,
    /// State SECURE.
    pub secure: bool,
    /// Default-stream bit (selective).
    pub default: bool,
    /// TEE-limited bit (selective).
    pub tee_limited: bool,
}

/// Extended capability ID of AER.
const AER_CAP_ID: u16 = 0x0001;

type Listener = Arc<dyn Fn(&IdeEvent) + Send + Sync>;

/// One IDE port: registers, key slots, AER, the published link view.
pub struct Ide {
    cfg: IdeConfig,
    state: Mutex<PortState>,
    view: RwLock<Arc<LinkView>>,
    active: AtomicBool,
    listeners: Mutex<Vec<Listener>>,
    /// Max_Payload_Size and Max_Read_Request_Size in bytes (from DevCtl).
    pub(crate) mps: AtomicU32,
    pub(crate) mrrs: AtomicU32,
    pub(crate) tee: AtomicBool,
    pub(crate) require_secure: AtomicBool,
    pub(crate) link: link::LinkShared,
    /// TDISP: which device DMA the link lets through ([`DmaGate`]).
    pub(crate) gate: AtomicU16,
}

impl std::fmt::Debug for Ide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ide").field("cfg", &self.cfg).finish()
    }
}

impl Ide {
    /// A port with `cfg`'s capability, in its reset state.
    pub fn new(cfg: IdeConfig) -> Arc<Ide> {
        Arc::new(Ide {
            state: Mutex::new(PortState::new(cfg.clone())),
            cfg,
            view: RwLock::new(Arc::new(LinkView::default())),
            active: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            mps: AtomicU32::new(128),
            mrrs: AtomicU32::new(512),
            tee: AtomicBool::new(false),
            require_secure: AtomicBool::new(false),
            link: link::LinkShared::default(),
            gate: AtomicU16::new(DmaGate::Open.encode()),
        })
    }

    /// The capability configuration.
    pub fn config(&self) -> &IdeConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, PortState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The extended capabilities to add to the device: IDE, then AER
    /// (unless configured off).
    pub fn capabilities(self: &Arc<Self>) -> Vec<ExtCap> {
        let mut v = vec![ExtCap {
            id: ext_cap_id::IDE,
            version: 1,
            body: vec![0; self.cfg.body_len()],
            rw: Vec::new(),
            handler: Some(Box::new(IdeRegisters(Arc::clone(self)))),
        }];
        if self.cfg.aer {
            v.push(ExtCap {
                id: AER_CAP_ID,
                version: 2,
                body: vec![0; regs::aer::LEN],
                rw: Vec::new(),
                handler: Some(Box::new(AerRegisters(Arc::clone(self)))),
            });
        }
        v
    }

    /// A minimal configuration space carrying only this port's
    /// capabilities (an RCiEP with a PCIe capability): for tools, tests and
    /// benchmarks that drive the IDE registers without a device model.
    pub fn function_config_space(self: &Arc<Self>) -> Result<ConfigSpace, BuildError> {
        let mut b = ConfigBuilder::new(PciIds {
            vendor: 0x7d0c,
            device: 0x1de0,
            subsystem_vendor: 0x7d0c,
            subsystem: 0,
            class: 0xff_0000,
            revision: 0,
        })
        .pcie(PcieCap {
            port_type: PortType::RcIntegratedEndpoint,
            tee: true,
            ee_prefix: true,
            flr: true,
        });
        for c in self.capabilities() {
            b = b.ext_capability(c);
        }
        b.build()
    }

    /// Runs `f` on the state, then re-publishes the link view and delivers
    /// the events `f` produced (outside the lock).
    fn update<R>(&self, f: impl FnOnce(&mut PortState) -> (R, Vec<IdeEvent>)) -> R {
        let (r, events) = {
            let mut st = self.lock();
            let (r, events) = f(&mut st);
            let view = Arc::new(st.view());
            self.active.store(view.active(), Ordering::Release);
            *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
            (r, events)
        };
        self.emit(&events);
        r
    }

    fn emit(&self, events: &[IdeEvent]) {
        if events.is_empty() {
            return;
        }
        for e in events {
            match e {
                IdeEvent::StreamSecure { stream, id } => {
                    log::info!("IDE: {stream} (ID {id}) is SECURE")
                }
                IdeEvent::StreamInsecure { stream, id, reason } => {
                    log::info!("IDE: {stream} (ID {id}) is INSECURE: {reason:?}; keys zeroized");
                    let n = self.link.drop_faults_for(*id);
                    if n > 0 {
                        log::info!("IDE: {n} wire fault(s) aimed at Stream ID {id} dropped");
                    }
                }
                IdeEvent::IntegrityFailure {
                    stream,
                    id,
                    detected_by,
                } => log::warn!(
                    "IDE: integrity check failed on {stream} (ID {id}), detected by the {detected_by:?} end; data dropped"
                ),
            }
        }
        let ls: Vec<Listener> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for l in ls {
            for e in events {
                l(e);
            }
        }
    }

    /// Calls `f` for every later [`IdeEvent`] (from whatever thread caused
    /// it: keep it short, and do not call back into IDE_KM from it).
    pub fn subscribe(&self, f: impl Fn(&IdeEvent) + Send + Sync + 'static) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(f));
    }

    pub(crate) fn view(&self) -> Arc<LinkView> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether any stream is enabled (the link has work to do).
    pub fn link_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Every stream register block and its state.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let st = self.lock();
        st.streams()
            .map(|(r, c)| StreamInfo {
                stream: r,
                id: (c >> regs::ctl::ID_SHIFT) as u8,
                enabled: c & regs::ctl::EN != 0,
                secure: st.is_secure(r),
                default: c & regs::ctl::DEFAULT != 0,
                tee_limited: c & regs::ctl::TEE_LIMITED != 0,
            })
            .collect()
    }

    /// One stream's state.
    pub fn stream(&self, s: StreamRef) -> Option<StreamInfo> {
        self.streams().into_iter().find(|i| i.stream == s)
    }

    /// Stream IDs of the SECURE streams.
    pub fn secure_stream_ids(&self) -> Vec<u8> {
        self.streams()
            .into_iter()
            .filter(|s| s.secure)
            .map(|s| s.id)
            .collect()
    }

    /// Whether a SECURE stream carries Stream ID `id`.
    pub fn is_secure(&self, id: u8) -> bool {
        self.secure_stream_ids().contains(&id)
    }

    /// The selective stream the device's requests go to by default: the
    /// enabled one with the Default Stream bit, else the first enabled one.
    pub fn bound_stream(&self) -> Option<StreamInfo> {
        let sel: Vec<StreamInfo> = self
            .streams()
            .into_iter()
            .filter(|s| s.stream.kind == StreamKind::Selective && s.enabled)
            .collect();
        sel.iter()
            .find(|s| s.default)
            .or_else(|| sel.first())
            .cloned()
    }

    /// Key slot states of Stream ID `id` ("empty", "programmed", "armed";
    /// never a key).
    pub fn key_states(&self, id: u8) -> Vec<(KeySlot, &'static str)> {
        self.lock().key_states(id)
    }

    /// Marks the device's TLPs as TEE-originated (T bit), which also lets
    /// them use TEE-limited streams (TDISP: the interface is in RUN).
    pub fn set_tee_originator(&self, on: bool) {
        self.tee.store(on, Ordering::Release);
    }

    /// Makes the link refuse device DMA that would not travel on a SECURE
    /// stream (TDISP: a TDI in RUN must not leak data in the clear).
    pub fn set_require_secure(&self, on: bool) {
        self.require_secure.store(on, Ordering::Release);
    }

    // --- TDISP hooks (helper "tdisp"): the DMA gate and key readiness ---

    /// Sets which device DMA the link lets through (TDISP: a TDI in RUN
    /// may only use its bound stream; a TDI in ERROR may not DMA at all).
    pub fn set_dma_gate(&self, gate: DmaGate) {
        self.gate.store(gate.encode(), Ordering::Release);
    }

    /// The DMA gate.
    pub fn dma_gate(&self) -> DmaGate {
        DmaGate::decode(self.gate.load(Ordering::Acquire))
    }

    /// Whether keys for every sub-stream in both directions of Stream ID
    /// `id` are programmed and armed (the key condition of SECURE, whether
    /// or not a stream register block is enabled with that ID).
    pub fn keys_ready(&self, id: u8) -> bool {
        self.lock().keys_ready(id)
    }

    // --- end of TDISP hooks ---

    /// Sets Max_Payload_Size and Max_Read_Request_Size in bytes (powers of
    /// two, 128 to 4096). [`IdeDevice`] keeps them equal to the device's
    /// PCIe Device Control register.
    pub fn set_tlp_sizes(&self, mps: usize, mrrs: usize) {
        let clamp = |v: usize| v.clamp(128, 4096).next_power_of_two() as u32;
        self.mps.store(clamp(mps), Ordering::Relaxed);
        self.mrrs.store(clamp(mrrs), Ordering::Relaxed);
    }

    /// The Uncorrectable Error Status of the AER capability.
    pub fn aer_uncorrectable_status(&self) -> u32 {
        self.lock().aer().uncorrectable_status()
    }

    /// The live register image (IDE Capability register on), as IDE_KM
    /// QUERY_RESP carries it.
    pub fn register_image(&self) -> Vec<u32> {
        self.lock().image()
    }

    /// QUERY_RESP for this port as `port_index` of a component.
    pub fn query_resp(&self, port_index: u8, max_port_index: u8) -> QueryResp {
        QueryResp {
            port_index,
            dev_func: self.cfg.rid as u8,
            bus: (self.cfg.rid >> 8) as u8,
            segment: self.cfg.segment,
            max_port_index,
            regs: self.register_image(),
        }
    }

    /// Power-on state (FLR, device reset, client disconnect): registers
    /// reset, every key zeroized, every SECURE stream INSECURE.
    pub fn reset(&self) {
        if let Err(e) = self.flush_trace() {
            log::warn!("IDE trace: {e}");
        }
        let st = self.link_stats();
        if st != LinkStats::default() {
            log::info!("IDE link so far: {st:?}");
        }
        self.update(|st| {
            st.reset();
            ((), st.settle(InsecureReason::Reset))
        })
    }

    fn write_registers(&self, offset: u16, data: &[u8]) {
        self.update(|st| {
            let mut reason = None;
            for (dw, v, m) in dword_writes(offset, data, |dw| st.read(dw)) {
                reason = st.write(dw, v, m).or(reason);
            }
            let ev = reason.map(|r| st.settle(r)).unwrap_or_default();
            ((), ev)
        })
    }

    pub(crate) fn km_program(
        &self,
        session: u32,
        id: u8,
        slot: KeySlot,
        key: IdeKey,
    ) -> Result<(), KmError> {
        self.update(|st| (st.program(session, id, slot, key), Vec::new()))
    }

    pub(crate) fn km_go(&self, session: u32, id: u8, slot: KeySlot) -> Result<(), KmError> {
        self.update(|st| {
            let r = st.go(session, id, slot);
            (r, st.settle(InsecureReason::KeySetStopped))
        })
    }

    pub(crate) fn km_stop(&self, session: u32, id: u8, slot: KeySlot) -> Result<(), KmError> {
        self.update(|st| {
            let r = st.stop(session, id, slot);
            (r, st.settle(InsecureReason::KeySetStopped))
        })
    }

    pub(crate) fn km_session_ended(&self, session: u32) {
        self.update(|st| {
            st.end_session(session);
            ((), st.settle(InsecureReason::SessionEnded))
        })
    }

    /// An integrity failure seen on the link.
    pub(crate) fn integrity_failure(
        &self,
        s: StreamRef,
        id: u8,
        by: LinkEnd,
        header: [u32; 4],
        prefix: u32,
    ) {
        self.update(|st| {
            st.integrity_failure(s, by, header, prefix);
            let mut ev = vec![IdeEvent::IntegrityFailure {
                stream: s,
                id,
                detected_by: by,
            }];
            ev.extend(st.settle(InsecureReason::IntegrityFailure(by)));
            ((), ev)
        })
    }
}

/// The IDE capability's registers in configuration space.
struct IdeRegisters(Arc<Ide>);

impl ConfigHandler for IdeRegisters {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let st = self.0.lock();
        read_bytes(offset, data, |dw| st.read(dw));
    }
    fn write(&mut self, offset: u16, data: &[u8]) {
        self.0.write_registers(offset, data);
    }
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// The AER capability's registers.
struct AerRegisters(Arc<Ide>);

impl ConfigHandler for AerRegisters {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let mut st = self.0.lock();
        let aer = st.aer();
        read_bytes(offset, data, |dw| aer.read(dw));
    }
    fn write(&mut self, offset: u16, data: &[u8]) {
        let mut st = self.0.lock();
        let aer = st.aer();
        for (dw, v, m) in dword_writes(offset, data, |dw| aer.read(dw)) {
            aer.write(dw, v, m);
        }
    }
    fn reset(&mut self) {
        // The IDE registers' reset (same port) resets AER too.
    }
}
