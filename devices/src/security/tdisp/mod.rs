//! TDISP for every trustdev device: the TDI state machine of a function
//! (PCIe Base 6.1+ chapter 11), what it locks, what moves it to ERROR, and
//! what a TDI in RUN or ERROR lets the device do on the link.
//!
//! ```text
//! DOE ── SPDM session ── TDISP (spdm_responder::tdisp) ── TdispFunctions ──┐
//! config space / BAR accesses / FLR / reset ── TdispDevice<D> (observe) ───┼── Tdi
//! IDE stream events (Ide::subscribe) ──────────────────────────────────────┤   state, locked view,
//! MSI-X vectors (the device's Interrupts) ─────────────────────────────────┘   nonce, report
//! ```
//!
//! What the TDI watches while CONFIG_LOCKED or RUN (any change moves it to
//! ERROR, left only through STOP_INTERFACE):
//! - the Command register and every BAR (the ROM BAR too): configuration
//!   writes reach the server ([`TdispDevice`] compares after each one);
//! - with LOCK_MSIX, MSI-X Message Control (Enable, Function Mask) and the
//!   MSI-X vectors the client enabled: QEMU emulates the MSI-X table and its
//!   mask bits, so table writes never reach the server; what does is a
//!   Message Control write (configuration space) and every change of the
//!   vector set (SET_IRQS on the MSI-X index), both compared at the next
//!   access the server handles (a configuration or BAR access, or a TDISP
//!   request) — PBA reads reach the server but change nothing;
//! - the IDE stream it is bound to (LOCK's DEFAULT_STREAM_ID): leaving
//!   SECURE for any reason (disabled, key set stopped, the session that
//!   programmed its keys ended, an integrity failure, reset);
//! - Function Level Reset and device reset (DEVICE_RESET, client gone);
//! - the end of the SPDM session that locked it.
//!
//! On the link ([`crate::security::ide::DmaGate`]): in RUN the device's
//! TLPs carry the T bit and its DMA is refused unless every TLP of it
//! travels on the bound SECURE stream; in ERROR its DMA is refused
//! altogether. vfio-user carries no T bit for the host's own accesses to
//! the device's BARs, so those are not filtered.

mod backend;
pub mod config;
pub mod device;
pub mod view;

#[cfg(test)]
mod tests;

pub use backend::TdispFunctions;
pub use config::{IdeRequirement, TdispConfig, TdispConfigError};
pub use device::TdispDevice;
pub use view::{ConfigChange, ConfigView};

use crate::security::ide::{DmaGate, Ide, IdeEvent, InsecureReason, StreamKind};
use log::{info, warn};
use spdm_responder::tdisp::{
    lock_flags, ErrorCode, InterfaceId, InterfaceReport, LockParams, TdiState, NONCE_LEN,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use vfio_user_server::irq::Interrupts;
use vfio_user_server::pci::ConfigSpace;
use vfio_user_server::protocol::irq_index;
use zeroize::Zeroizing;

/// Why a TDI went to ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// A locked register changed.
    Config(ConfigChange),
    /// The set of MSI-X vectors the client enabled changed (LOCK_MSIX).
    MsixVectors,
    /// The bound IDE stream left SECURE.
    IdeStream {
        /// Its Stream ID.
        id: u8,
        /// Why.
        reason: InsecureReason,
    },
    /// The bound stream's keys are no longer all armed ([`IdeRequirement::KeysArmed`]).
    KeysLost {
        /// The Stream ID.
        id: u8,
    },
    /// Function Level Reset.
    Flr,
    /// Device reset (DEVICE_RESET, or the client went away).
    DeviceReset,
    /// The SPDM session that locked the TDI ended.
    SessionEnded(u32),
}

impl std::fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorReason::Config(c) => write!(f, "locked configuration changed: {c}"),
            ErrorReason::MsixVectors => write!(f, "the MSI-X vectors changed (LOCK_MSIX)"),
            ErrorReason::IdeStream { id, reason } => {
                write!(f, "IDE stream {id} left SECURE: {reason:?}")
            }
            ErrorReason::KeysLost { id } => write!(f, "the keys of IDE stream {id} were retired"),
            ErrorReason::Flr => write!(f, "Function Level Reset"),
            ErrorReason::DeviceReset => write!(f, "device reset"),
            ErrorReason::SessionEnded(s) => write!(f, "SPDM session {s:#010x} ended"),
        }
    }
}

/// What LOCK_INTERFACE fixed.
struct Locked {
    iface: InterfaceId,
    session: u32,
    params: LockParams,
    /// Until START_INTERFACE consumes it.
    nonce: Option<Zeroizing<[u8; NONCE_LEN]>>,
    view: ConfigView,
    msix_vectors: Vec<bool>,
    report: InterfaceReport,
}

struct Inner {
    state: TdiState,
    /// The device's configuration as last observed.
    current: ConfigView,
    locked: Option<Locked>,
    reason: Option<ErrorReason>,
}

/// One TDI: a function's TDISP state machine.
pub struct Tdi {
    cfg: TdispConfig,
    device_info: Vec<u8>,
    ports: Vec<Arc<Ide>>,
    irqs: OnceLock<Arc<Interrupts>>,
    inner: Mutex<Inner>,
    /// CONFIG_LOCKED or RUN: observations are compared with the locked view.
    watching: AtomicBool,
    /// The MSI-X capability's offset (the capability list never changes).
    msix_cap: OnceLock<Option<usize>>,
    /// The registers `Inner::current` was read from ([`view::fingerprint`]),
    /// valid once `seen_valid`: an unchanged configuration is not read again.
    seen: [AtomicU32; view::FINGERPRINT_LEN],
    seen_valid: AtomicBool,
}

impl std::fmt::Debug for Tdi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tdi")
            .field("cfg", &self.cfg)
            .field("state", &self.lock_inner().state)
            .finish()
    }
}

fn msix_vectors(irqs: &OnceLock<Arc<Interrupts>>) -> Vec<bool> {
    irqs.get().map_or(Vec::new(), |i| {
        i.trigger_fds(irq_index::MSIX)
            .iter()
            .map(Option::is_some)
            .collect()
    })
}

impl Tdi {
    /// A TDI in CONFIG_UNLOCKED whose traffic uses the streams of `ports`;
    /// `device_info` goes into its interface report (DEVICE_SPECIFIC_INFO).
    /// It follows the ports' IDE events from now on.
    pub fn new(cfg: TdispConfig, device_info: &str, ports: Vec<Arc<Ide>>) -> Arc<Tdi> {
        let tdi = Arc::new(Tdi {
            cfg,
            device_info: device_info.as_bytes().to_vec(),
            ports,
            irqs: OnceLock::new(),
            inner: Mutex::new(Inner {
                state: TdiState::ConfigUnlocked,
                current: ConfigView::default(),
                locked: None,
                reason: None,
            }),
            watching: AtomicBool::new(false),
            msix_cap: OnceLock::new(),
            seen: Default::default(),
            seen_valid: AtomicBool::new(false),
        });
        for p in &tdi.ports {
            let w: Weak<Tdi> = Arc::downgrade(&tdi);
            p.subscribe(move |e| {
                if let Some(t) = w.upgrade() {
                    t.ide_event(e);
                }
            });
        }
        tdi
    }

    /// Watches `irqs` (the device's interrupts) for MSI-X changes under
    /// LOCK_MSIX; [`TdispDevice::new`] attaches the device's.
    pub fn attach_interrupts(&self, irqs: Arc<Interrupts>) {
        let _ = self.irqs.set(irqs);
    }

    /// The configuration.
    pub fn config(&self) -> &TdispConfig {
        &self.cfg
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TDI's state.
    pub fn state(&self) -> TdiState {
        let mut g = self.lock_inner();
        self.refresh(&mut g);
        g.state
    }

    /// Why it is in ERROR (the last reason, kept until STOP).
    pub fn error_reason(&self) -> Option<ErrorReason> {
        self.lock_inner().reason.clone()
    }

    /// The interface report fixed by LOCK (CONFIG_LOCKED and RUN).
    pub fn report(&self) -> Result<InterfaceReport, ErrorCode> {
        let mut g = self.lock_inner();
        self.refresh(&mut g);
        match (g.state, &g.locked) {
            (TdiState::ConfigLocked | TdiState::Run, Some(l)) => Ok(l.report.clone()),
            _ => Err(ErrorCode::InvalidInterfaceState),
        }
    }

    /// Takes note of the device's configuration (after a configuration
    /// write, before every access the server handles): while CONFIG_LOCKED
    /// or RUN, a change to locked configuration moves the TDI to ERROR.
    pub fn observe(&self, cfg: &ConfigSpace) {
        // The fast path (every BAR access of an unlocked TDI): nothing
        // changed since the last look.
        let fp = view::fingerprint(cfg, *self.msix_cap.get_or_init(|| view::msix_cap(cfg)));
        let watching = self.watching.load(Ordering::Acquire);
        let same = self.seen_valid.load(Ordering::Acquire)
            && self
                .seen
                .iter()
                .zip(fp)
                .all(|(s, v)| s.load(Ordering::Relaxed) == v);
        if same && !watching {
            return;
        }
        let mut g = self.lock_inner();
        if !same {
            g.current = ConfigView::read(cfg);
            for (s, v) in self.seen.iter().zip(fp) {
                s.store(v, Ordering::Relaxed);
            }
            self.seen_valid.store(true, Ordering::Release);
        }
        if !watching {
            return;
        }
        let Some(l) = &g.locked else { return };
        let lock_msix = l.params.flags & lock_flags::LOCK_MSIX != 0;
        let reason = match g.current.change_from(&l.view, lock_msix) {
            Some(c) => Some(ErrorReason::Config(c)),
            None if lock_msix && msix_vectors(&self.irqs) != l.msix_vectors => {
                Some(ErrorReason::MsixVectors)
            }
            None => None,
        };
        if let Some(r) = reason {
            self.to_error(&mut g, r);
        }
    }

    /// Function Level Reset of the function.
    pub fn flr(&self) {
        let mut g = self.lock_inner();
        self.to_error(&mut g, ErrorReason::Flr);
    }

    /// Device reset (DEVICE_RESET, or the client went away).
    pub fn device_reset(&self) {
        let mut g = self.lock_inner();
        self.to_error(&mut g, ErrorReason::DeviceReset);
    }

    fn ide_event(&self, e: &IdeEvent) {
        let mut g = self.lock_inner();
        let Some(bound) = g.locked.as_ref().map(|l| l.params.default_stream_id) else {
            return;
        };
        match *e {
            IdeEvent::StreamInsecure { id, reason, .. } if id == bound => {
                self.to_error(&mut g, ErrorReason::IdeStream { id, reason });
            }
            _ => {}
        }
    }

    /// Whether the IDE condition LOCK requires holds for Stream ID `id`.
    fn ide_ready(&self, id: u8) -> bool {
        match self.cfg.ide {
            IdeRequirement::None => true,
            IdeRequirement::KeysArmed => self.ports.iter().any(|p| p.keys_ready(id)),
            IdeRequirement::Secure => self.ports.iter().any(|p| {
                p.streams().iter().any(|s| {
                    s.stream.kind == StreamKind::Selective && s.id == id && s.enabled && s.secure
                })
            }),
        }
    }

    /// Re-checks the IDE condition of a locked TDI (events cover SECURE
    /// streams as they change; armed keys are checked here).
    fn refresh(&self, g: &mut Inner) {
        if !matches!(g.state, TdiState::ConfigLocked | TdiState::Run) {
            return;
        }
        let Some(id) = g.locked.as_ref().map(|l| l.params.default_stream_id) else {
            return;
        };
        if !self.ide_ready(id) {
            let reason = match self.cfg.ide {
                IdeRequirement::KeysArmed => ErrorReason::KeysLost { id },
                _ => ErrorReason::IdeStream {
                    id,
                    reason: InsecureReason::Disabled,
                },
            };
            self.to_error(g, reason);
        }
    }

    fn to_error(&self, g: &mut Inner, reason: ErrorReason) {
        if !matches!(g.state, TdiState::ConfigLocked | TdiState::Run) {
            return;
        }
        warn!("TDISP: TDI {} -> ERROR: {reason}", g.state);
        g.state = TdiState::Error;
        g.reason = Some(reason);
        if let Some(l) = g.locked.as_mut() {
            l.nonce = None;
        }
        self.set_state_effects(g);
    }

    /// What the state means for the link and the observers.
    fn set_state_effects(&self, g: &Inner) {
        self.watching.store(
            matches!(g.state, TdiState::ConfigLocked | TdiState::Run),
            Ordering::Release,
        );
        let gate = match (g.state, &g.locked) {
            (TdiState::Error, _) => DmaGate::Closed,
            (TdiState::Run, Some(l)) if self.cfg.ide != IdeRequirement::None => {
                DmaGate::Stream(l.params.default_stream_id)
            }
            _ => DmaGate::Open,
        };
        for p in &self.ports {
            p.set_tee_originator(g.state == TdiState::Run);
            p.set_dma_gate(gate);
        }
    }

    /// Whether INTERFACE_ID `id` names this TDI: its configured Requester
    /// ID, else (vfio-user cannot tell the device its bus position) any ID
    /// while CONFIG_UNLOCKED and the ID LOCK named until STOP. A valid
    /// segment must be the TDI's.
    pub fn matches(&self, id: &InterfaceId) -> bool {
        if id.segment().is_some_and(|s| s != self.cfg.segment) {
            return false;
        }
        if let Some(rid) = self.cfg.rid {
            return id.rid() == rid;
        }
        let g = self.lock_inner();
        match &g.locked {
            Some(l) => l.iface.function_id == id.function_id,
            None => true,
        }
    }

    /// LOCK_INTERFACE_REQUEST.
    pub fn lock(
        &self,
        session: u32,
        iface: InterfaceId,
        params: &LockParams,
    ) -> Result<[u8; NONCE_LEN], ErrorCode> {
        let mut g = self.lock_inner();
        if g.state != TdiState::ConfigUnlocked {
            return Err(ErrorCode::InvalidInterfaceState);
        }
        if params.flags & !self.cfg.lock_flags != 0 {
            warn!(
                "TDISP LOCK: flags {:#06x} not supported (supported {:#06x})",
                params.flags, self.cfg.lock_flags
            );
            return Err(ErrorCode::InvalidRequest);
        }
        if !self.ide_ready(params.default_stream_id) {
            warn!(
                "TDISP LOCK: IDE stream {} is not {}",
                params.default_stream_id,
                match self.cfg.ide {
                    IdeRequirement::KeysArmed => "keyed (K_SET_GO for every sub-stream)",
                    _ => "SECURE",
                }
            );
            return Err(ErrorCode::InvalidRequest);
        }
        let mut nonce = Zeroizing::new([0u8; NONCE_LEN]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce[..])
            .map_err(|_| ErrorCode::InsufficientEntropy)?;
        let view = g.current.clone();
        let report = view.report(params, &self.device_info);
        let out = *nonce;
        g.locked = Some(Locked {
            iface,
            session,
            params: *params,
            nonce: Some(nonce),
            msix_vectors: msix_vectors(&self.irqs),
            report,
            view,
        });
        g.state = TdiState::ConfigLocked;
        g.reason = None;
        info!(
            "TDISP: TDI {iface} locked (flags {:#06x}, stream {}, MMIO offset {:#x})",
            params.flags, params.default_stream_id, params.mmio_reporting_offset
        );
        self.set_state_effects(&g);
        Ok(out)
    }

    /// START_INTERFACE_REQUEST (the nonce compared in constant time).
    pub fn start(&self, session: u32, nonce: &[u8; NONCE_LEN]) -> Result<(), ErrorCode> {
        let mut g = self.lock_inner();
        self.refresh(&mut g);
        if g.state != TdiState::ConfigLocked {
            return Err(ErrorCode::InvalidInterfaceState);
        }
        let Some(l) = g.locked.as_mut() else {
            return Err(ErrorCode::InvalidInterfaceState);
        };
        if l.session != session {
            warn!(
                "TDISP START: from session {session:#010x}, locked in {:#010x}",
                l.session
            );
            return Err(ErrorCode::InvalidRequest);
        }
        let ok = l
            .nonce
            .as_ref()
            .is_some_and(|n| bool::from(subtle::ConstantTimeEq::ct_eq(&n[..], &nonce[..])));
        if !ok {
            return Err(ErrorCode::InvalidNonce);
        }
        l.nonce = None;
        g.state = TdiState::Run;
        self.set_state_effects(&g);
        Ok(())
    }

    /// STOP_INTERFACE_REQUEST: back to CONFIG_UNLOCKED from any state (from
    /// CONFIG_UNLOCKED it changes nothing, as intel/tee-io-validator
    /// expects; DMTF's sample refuses it).
    pub fn stop(&self) {
        let mut g = self.lock_inner();
        if g.state != TdiState::ConfigUnlocked {
            info!("TDISP: TDI {} -> CONFIG_UNLOCKED (STOP)", g.state);
        }
        g.state = TdiState::ConfigUnlocked;
        g.locked = None;
        g.reason = None;
        self.set_state_effects(&g);
    }

    /// The SPDM session ended: a TDI it locked goes to ERROR.
    pub fn session_ended(&self, session: u32) {
        let mut g = self.lock_inner();
        if g.locked.as_ref().is_some_and(|l| l.session == session) {
            self.to_error(&mut g, ErrorReason::SessionEnded(session));
        }
    }
}
