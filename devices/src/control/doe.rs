//! The controlled DOE front: a configuration-space handler put in front of
//! a device's DOE mailbox that traces every data object (decoded) and shows
//! the DOE and SPDM faults armed on the device.
//!
//! It owns the guest-visible mailbox state (the request being written, the
//! response being read, Busy and Error) and hands each complete request to
//! the mailbox behind it (the device's own [`crate::security::doe`] model,
//! or, while an `spdm-cert` fault holds, a mailbox answering with another
//! identity) through that mailbox's registers, draining the response it
//! produces in the same call. So the mailbox model itself stays untouched.

use super::fault::{CertFault, Fault, Match};
use super::trace::decode_doe;
use super::DeviceControl;
use crate::security::doe::{
    ctrl, read_dwords, reg, status, write_dwords, DoeMailbox, MAX_OBJECT_DWORDS,
};
use log::warn;
use serde_json::json;
use spdm_responder::transport::doe::{decode_object, encode_object, ProtocolId};
use spdm_responder::{CmaDeviceName, Identity, Responder, ResponderConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_user_server::pci::ConfigHandler;

/// SPDM GET_VERSION / RESPOND_IF_READY request codes, ERROR response code.
const GET_VERSION: u8 = 0x84;
const RESPOND_IF_READY: u8 = 0xFF;
const ERROR: u8 = 0x7F;
const RESPONSE_NOT_READY: u8 = 0x42;
const CHALLENGE_AUTH: u8 = 0x03;
const MEASUREMENTS: u8 = 0x60;
const GET_MEASUREMENTS: u8 = 0xE0;

/// How to build a mailbox answering with a wrong certificate.
#[derive(Clone)]
pub struct AltIdentity {
    /// The device's CMA name.
    pub name: CmaDeviceName,
    /// The responder configuration.
    pub config: ResponderConfig,
    /// The directory of the device's (trusted) CAs.
    pub dir: std::path::PathBuf,
}

impl AltIdentity {
    fn mailbox(&self, which: CertFault) -> Result<Box<dyn ConfigHandler>, String> {
        let mut rng = spdm_responder::rng::OsEntropy;
        let identity = match which {
            CertFault::UnknownRoot => {
                use spdm_responder::crypto::AsymAlgo;
                Identity::generate(
                    &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
                    &self.name,
                    2,
                    &mut rng,
                )
                .map_err(|e| e.to_string())?
            }
            CertFault::WrongSan => {
                // The same CAs, a leaf naming another function.
                let mut other = self.name;
                other.device ^= 0x5a5a;
                other.serial = Some(other.serial.unwrap_or(1) ^ 0xdead_beef);
                crate::security::cma::load_identity(&self.dir, &other).map_err(|e| e.to_string())?
            }
            CertFault::Expired => crate::security::cma::expired_identity(&self.dir, &self.name)
                .map_err(|e| e.to_string())?,
        };
        let r = Responder::new(self.config.clone(), identity);
        Ok(Box::new(DoeMailbox::new(vec![Box::new(r)])))
    }
}

/// The controlled DOE front (see the module documentation).
pub struct ControlledDoe {
    inner: Box<dyn ConfigHandler>,
    ctl: Arc<DeviceControl>,
    alt: Option<AltIdentity>,
    /// The wrong-certificate mailbox in use since the last GET_VERSION.
    alt_active: Option<(CertFault, Box<dyn ConfigHandler>)>,
    request: Vec<u32>,
    response: Vec<u32>,
    read_idx: usize,
    error: bool,
    /// DOE Busy until then; the request is answered after.
    busy_until: Option<Instant>,
    /// A request answered ResponseNotReady: (request code, token, object).
    not_ready: Option<(u8, u8, Vec<u32>)>,
    token: u8,
    go_at: Option<Instant>,
    /// What the mailbox carried, as the state shows it.
    seen: Arc<std::sync::Mutex<Seen>>,
}

/// The SPDM connection as seen on the mailbox (the device's own view of
/// the negotiation: its responder answered these).
#[derive(Default)]
struct Seen {
    version: Option<String>,
    phase: &'static str,
    last_request: Option<String>,
    last_error: Option<String>,
    /// Session IDs seen in secured messages, with their record counts.
    sessions: std::collections::BTreeMap<String, u64>,
    objects: u64,
}

impl Seen {
    fn note(&mut self, req: &serde_json::Value, rsp: &serde_json::Value) {
        self.objects += 1;
        if let Some(sid) = req["session_id"].as_str() {
            *self.sessions.entry(sid.to_string()).or_default() += 1;
            self.phase = "session";
            return;
        }
        let (Some(q), Some(r)) = (req["spdm"]["msg"].as_str(), rsp["spdm"]["msg"].as_str()) else {
            return;
        };
        self.last_request = Some(q.to_string());
        if r == "ERROR" {
            self.last_error = rsp["spdm"]["error"].as_str().map(|e| format!("{q}: {e}"));
            return;
        }
        self.version = rsp["spdm"]["version"].as_str().map(str::to_string);
        self.phase = match r {
            "VERSION" => {
                self.sessions.clear();
                "after VERSION"
            }
            "CAPABILITIES" => "after CAPABILITIES",
            "ALGORITHMS" => "negotiated",
            "DIGESTS" => "after DIGESTS",
            "CERTIFICATE" => "after CERTIFICATE",
            "CHALLENGE_AUTH" => "authenticated",
            "KEY_EXCHANGE_RSP" | "PSK_EXCHANGE_RSP" => "session handshake",
            _ => self.phase,
        };
    }
}

impl ControlledDoe {
    /// Puts the front before `inner` (a DOE mailbox handler).
    pub fn new(
        inner: Box<dyn ConfigHandler>,
        ctl: Arc<DeviceControl>,
        alt: Option<AltIdentity>,
    ) -> Self {
        let mut faults = vec!["doe-busy", "doe-error", "doe-no-response"];
        if alt.is_some() {
            faults.extend([
                "spdm-error",
                "spdm-not-ready",
                "spdm-bad-signature",
                "spdm-cert",
            ]);
        }
        ctl.support(&faults);
        let seen = Arc::new(std::sync::Mutex::new(Seen {
            phase: "not started",
            ..Seen::default()
        }));
        let view = Arc::clone(&seen);
        ctl.probe(
            "spdm",
            Box::new(move || {
                let s = view.lock().unwrap_or_else(|e| e.into_inner());
                json!({
                    "phase": s.phase,
                    "version": s.version,
                    "last_request": s.last_request,
                    "last_error": s.last_error,
                    "sessions_seen": s.sessions,
                    "doe_exchanges": s.objects,
                })
            }),
        );
        ControlledDoe {
            inner,
            ctl,
            alt,
            alt_active: None,
            request: Vec::new(),
            response: Vec::new(),
            read_idx: 0,
            error: false,
            busy_until: None,
            not_ready: None,
            token: 0,
            go_at: None,
            seen,
        }
    }

    fn ready(&self) -> bool {
        self.read_idx < self.response.len()
    }

    fn clear(&mut self) {
        self.request.clear();
        self.response.clear();
        self.read_idx = 0;
        self.error = false;
        self.busy_until = None;
    }

    fn fault(&self, f: &Fault, what: &str) {
        self.ctl.trace.record(json!({
            "ev": "fault", "fault": f.name(), "effect": what,
        }));
        log::info!("{}: fault {}: {what}", self.ctl.name, f.name());
    }

    fn status(&mut self) -> u32 {
        let mut s = 0;
        if let Some(until) = self.busy_until {
            if Instant::now() < until {
                s |= status::BUSY;
            } else {
                self.busy_until = None;
                self.answer();
            }
        }
        if self.error {
            s |= status::ERROR;
        }
        if self.ready() && !self.error {
            s |= status::READY;
        }
        s
    }

    fn go(&mut self) {
        if self.error || self.ready() || self.busy_until.is_some() {
            warn!("DOE: Go while busy, in error or with an unread response: request discarded");
            self.request.clear();
            return;
        }
        self.go_at = Some(Instant::now());
        let hit = self.ctl.faults.hit(|f, _| match f {
            Fault::DoeBusy { .. } | Fault::DoeError | Fault::DoeNoResponse => Match::Hit,
            _ => Match::No,
        });
        match hit {
            Some(f @ Fault::DoeError) => {
                self.fault(&f, "DOE Error set");
                self.request.clear();
                self.error = true;
            }
            Some(f @ Fault::DoeNoResponse) => {
                self.fault(&f, "request taken, no response");
                let obj = self.object(&self.request);
                self.ctl.trace.record(decode_doe("req", &obj));
                self.request.clear();
            }
            Some(f @ Fault::DoeBusy { ms }) => {
                self.fault(&f, &format!("DOE Busy for {ms} ms"));
                self.busy_until = Some(Instant::now() + Duration::from_millis(ms));
            }
            _ => self.answer(),
        }
    }

    fn object(&self, dwords: &[u32]) -> Vec<u8> {
        dwords.iter().flat_map(|d| d.to_le_bytes()).collect()
    }

    /// Answers the request written (now, or after Busy).
    fn answer(&mut self) {
        let request = std::mem::take(&mut self.request);
        let obj = self.object(&request);
        let req_ev = decode_doe("req", &obj);
        self.ctl.trace.record(req_ev.clone());
        let response = match decode_object(&obj) {
            Ok((ProtocolId::CMA, payload)) if self.alt.is_some() => {
                let payload = payload.to_vec();
                self.spdm(&request, &payload)
            }
            _ => Some(pass(&mut *self.inner, &request)),
        };
        let Some(response) = response else { return };
        let mut bytes = self.object(&response);
        if let Some(m) = self.corrupt_signature(&obj, &mut bytes) {
            self.fault(&Fault::SpdmBadSignature, m);
        }
        let mut ev = decode_doe("rsp", &bytes);
        if let (Some(at), serde_json::Value::Object(m)) = (self.go_at, &mut ev) {
            m.insert("us".into(), json!(at.elapsed().as_micros() as u64));
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(&req_ev, &ev);
        self.ctl.trace.record(ev);
        self.response = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.read_idx = 0;
    }

    /// A CMA/SPDM request: the SPDM faults, else the (right or wrong)
    /// responder's answer.
    fn spdm(&mut self, request: &[u32], payload: &[u8]) -> Option<Vec<u32>> {
        let ver = payload.first().copied().unwrap_or(0x10);
        let code = payload.get(1).copied().unwrap_or(0);
        if code == GET_VERSION {
            self.alt_active = None;
            self.not_ready = None;
            if let Some(Fault::SpdmCert { cert }) = self
                .ctl
                .faults
                .hit(|f, _| matches_bool(matches!(f, Fault::SpdmCert { .. })))
            {
                match self.alt.as_ref().map(|a| a.mailbox(cert)) {
                    Some(Ok(mb)) => {
                        self.fault(
                            &Fault::SpdmCert { cert },
                            "this negotiation is answered with another certificate chain",
                        );
                        self.alt_active = Some((cert, mb));
                    }
                    Some(Err(e)) => warn!("spdm-cert fault: cannot build the identity: {e}"),
                    None => {}
                }
            }
        }
        if code == RESPOND_IF_READY {
            if let Some((rc, token, orig)) = self.not_ready.take() {
                if payload.get(2) == Some(&rc) && payload.get(3) == Some(&token) {
                    return Some(self.target_pass(&orig));
                }
                self.not_ready = Some((rc, token, orig));
            }
        }
        let hit = self.ctl.faults.hit(|f, seen| match f {
            Fault::SpdmError { request, nth, .. } if request.0 == code => {
                if seen + 1 >= *nth {
                    Match::Hit
                } else {
                    Match::Counted
                }
            }
            Fault::SpdmNotReady { request, .. } if request.0 == code => Match::Hit,
            _ => Match::No,
        });
        match hit {
            Some(f @ Fault::SpdmError { code: e, data, .. }) => {
                self.fault(&f, &format!("SPDM ERROR {e:#04x} instead of the response"));
                Some(spdm_object(&[ver, ERROR, e, data]))
            }
            Some(f @ Fault::SpdmNotReady { delay_ms, .. }) => {
                // RDT = 2^exp µs with RDTM 1: the smallest power of two >= delay.
                let us = delay_ms.saturating_mul(1000).max(1);
                let exp = (64 - (us - 1).leading_zeros()).min(31) as u8;
                self.token = self.token.wrapping_add(1);
                self.not_ready = Some((code, self.token, request.to_vec()));
                self.fault(&f, &format!("ResponseNotReady, RDT 2^{exp} us"));
                Some(spdm_object(&[
                    ver,
                    ERROR,
                    RESPONSE_NOT_READY,
                    0,
                    exp,
                    code,
                    self.token,
                    1,
                ]))
            }
            _ => Some(self.target_pass(request)),
        }
    }

    fn target_pass(&mut self, request: &[u32]) -> Vec<u32> {
        match &mut self.alt_active {
            Some((_, mb)) => pass(&mut **mb, request),
            None => pass(&mut *self.inner, request),
        }
    }

    /// Flips a signature byte of CHALLENGE_AUTH or signed MEASUREMENTS when
    /// `spdm-bad-signature` hits.
    fn corrupt_signature(&self, req: &[u8], rsp: &mut [u8]) -> Option<&'static str> {
        let (Ok((ProtocolId::CMA, q)), Ok((ProtocolId::CMA, r))) =
            (decode_object(req), decode_object(rsp))
        else {
            return None;
        };
        let signed = match (q.get(1), r.get(1)) {
            (_, Some(&CHALLENGE_AUTH)) => true,
            (Some(&GET_MEASUREMENTS), Some(&MEASUREMENTS)) => q.get(2).is_some_and(|p| p & 1 != 0),
            _ => false,
        };
        // The signature (64 or 96 bytes) ends the message; the object adds
        // at most 3 bytes of padding: 16 bytes from the end is inside it.
        if !signed || r.len() < 100 {
            return None;
        }
        self.ctl
            .faults
            .hit(|f, _| matches_bool(*f == Fault::SpdmBadSignature))?;
        let at = rsp.len() - 16;
        rsp[at] ^= 0x5a;
        Some("signature byte flipped")
    }

    fn read_reg(&mut self, r: u16) -> u32 {
        match r {
            reg::STATUS => self.status(),
            reg::READ if self.ready() && !self.error => self.response[self.read_idx],
            reg::READ => 0,
            _ => {
                let mut b = [0u8; 4];
                self.inner.read(r - 4, &mut b);
                u32::from_le_bytes(b)
            }
        }
    }

    fn write_reg(&mut self, r: u16, value: u32, full: bool) {
        match r {
            reg::CTRL => {
                if value & ctrl::ABORT != 0 {
                    self.clear();
                    self.not_ready = None;
                    self.inner.write(r - 4, &value.to_le_bytes());
                    return;
                }
                // INT_EN (unsupported) to the mailbox; Go is ours.
                self.inner.write(r - 4, &(value & !ctrl::GO).to_le_bytes());
                if value & ctrl::GO != 0 {
                    self.go();
                }
            }
            reg::WRITE if full => {
                if self.error {
                    return;
                }
                if self.request.len() >= MAX_OBJECT_DWORDS {
                    warn!("DOE: write mailbox overflow (more than 2^18 dwords): DOE Error set");
                    self.error = true;
                    self.request.clear();
                    return;
                }
                self.request.push(value);
            }
            reg::READ if full => {
                if self.ready() {
                    self.read_idx += 1;
                    if !self.ready() {
                        self.response.clear();
                        self.read_idx = 0;
                    }
                }
            }
            reg::WRITE | reg::READ => {}
            _ => self.inner.write(r - 4, &value.to_le_bytes()),
        }
    }
}

fn matches_bool(b: bool) -> Match {
    if b {
        Match::Hit
    } else {
        Match::No
    }
}

/// A CMA object carrying SPDM message `msg`, as dwords.
fn spdm_object(msg: &[u8]) -> Vec<u32> {
    encode_object(ProtocolId::CMA, msg)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs one exchange on mailbox `mb` through its registers (what the
/// kernel's DOE code does) and returns the response object's dwords
/// (empty: the mailbox discarded the request).
fn pass(mb: &mut dyn ConfigHandler, request: &[u32]) -> Vec<u32> {
    let w = |mb: &mut dyn ConfigHandler, r: u16, v: u32| mb.write(r - 4, &v.to_le_bytes());
    let rd = |mb: &mut dyn ConfigHandler, r: u16| {
        let mut b = [0u8; 4];
        mb.read(r - 4, &mut b);
        u32::from_le_bytes(b)
    };
    for &d in request {
        w(mb, reg::WRITE, d);
    }
    w(mb, reg::CTRL, ctrl::GO);
    let mut out = Vec::new();
    while out.len() <= MAX_OBJECT_DWORDS && rd(mb, reg::STATUS) & status::READY != 0 {
        out.push(rd(mb, reg::READ));
        w(mb, reg::READ, 0);
    }
    out
}

impl ConfigHandler for ControlledDoe {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        read_dwords(offset, data, |r| self.read_reg(r));
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        write_dwords(offset, data, |r, v, full| self.write_reg(r, v, full));
    }

    fn reset(&mut self) {
        self.clear();
        self.not_ready = None;
        self.alt_active = None;
        self.inner.reset();
    }
}
