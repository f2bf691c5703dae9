//! The SPDM responder state machine (DSP0274 1.0-1.3).
//!
//! [`Responder::handle_message`] takes one plain SPDM request and returns the
//! response; [`Responder::handle_secured`] takes one DSP0277 record (DOE binding)
//! and returns the protected response. Every request is parsed with bounds
//! checks; anything wrong is answered with the SPDM ERROR DSP0274 prescribes and
//! leaves the connection usable.

use std::time::{Duration, Instant};

use crate::codec::{error_response, rsp, V10};
use crate::crypto::{AeadAlgo, AsymAlgo, DheGroup, HashAlgo};
use crate::error::ErrorCode;
use crate::identity::Identity;
use crate::keyschedule::{self, HandshakeSecrets};
use crate::measurement::Measurement;
use crate::rng::{EntropySource, OsEntropy};
use crate::secured::{self, Direction, SecureChannel};
use crate::vendor::{VendorHandler, VendorKey, VendorRegistry};
use log::{info, warn};

mod authentication;
mod chunking;
mod config;
pub use crate::psk::{PskEntry, MAX_PSK_HINT};
mod dispatch;
mod negotiation;
mod session;
#[cfg(test)]
mod tests;
mod vendor_defined;

pub use config::{
    ResponderConfig, ERROR_INVALID_SESSION, MAX_OPAQUE, NONCE_SIZE, REQ_CONTEXT_SIZE,
};

/// Connection state (ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum ConnState {
    #[default]
    NotStarted,
    AfterVersion,
    AfterCapabilities,
    Negotiated,
    AfterDigests,
    AfterCertificate,
    Authenticated,
}

/// What was negotiated on the connection.
#[derive(Clone, Debug, Default)]
pub struct Negotiated {
    pub version: u8,
    pub req_caps: u32,
    pub rsp_caps: u32,
    pub req_data_transfer_size: u32,
    pub req_max_msg_size: u32,
    pub hash: Option<HashAlgo>,
    pub asym: Option<AsymAlgo>,
    pub meas_hash: Option<HashAlgo>,
    pub meas_spec: u8,
    pub dhe: Option<DheGroup>,
    pub aead: Option<AeadAlgo>,
    pub key_schedule: bool,
    pub opaque_fmt: u8,
}

#[derive(Default)]
struct Conn {
    state: ConnState,
    neg: Negotiated,
    vca: Vec<u8>,
    message_b: Vec<u8>,
    message_c: Vec<u8>,
    message_m: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessState {
    Handshaking,
    Established,
}

struct Session {
    id: u32,
    state: SessState,
    psk: bool,
    channel: SecureChannel,
    hs: HandshakeSecrets,
    /// VCA || [H(cert chain)] || message_k || message_f
    transcript: Vec<u8>,
    message_m: Vec<u8>,
    last_key_update: Option<(u8, u8)>,
    key_updated: bool,
    last_activity: Instant,
    hash: HashAlgo,
    version: u8,
}

/// The reply to a secured record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecuredReply {
    /// A secured record to send back (DOE type 2).
    Secured(Vec<u8>),
    /// A plain SPDM message to send back (DOE type 1), e.g. an ERROR for an unknown session.
    Plain(Vec<u8>),
    /// Nothing to send.
    None,
}

enum Post {
    None,
    EnterApplication(Box<keyschedule::DataSecrets>),
    EndSession { clear_state: bool },
    KillSession,
}

struct Reply {
    msg: Vec<u8>,
    post: Post,
}

impl Reply {
    fn new(msg: Vec<u8>) -> Self {
        Self {
            msg,
            post: Post::None,
        }
    }
}

/// An error answer: code and ErrorData (param2).
#[derive(Clone, Copy, Debug)]
struct Fail(ErrorCode, u8, Option<Post2>);

#[derive(Clone, Copy, Debug)]
enum Post2 {
    KillSession,
}

fn fail(code: ErrorCode) -> Fail {
    Fail(code, 0, None)
}
fn invalid() -> Fail {
    fail(ErrorCode::InvalidRequest)
}
fn unexpected() -> Fail {
    fail(ErrorCode::UnexpectedRequest)
}
fn unsupported(code: u8) -> Fail {
    Fail(ErrorCode::UnsupportedRequest, code, None)
}

type R = Result<Reply, Fail>;

struct ChunkOut {
    handle: u8,
    data: Vec<u8>,
    next_seq: u16,
    offset: usize,
    session: Option<u32>,
}

struct ChunkIn {
    handle: u8,
    data: Vec<u8>,
    expected_total: usize,
    next_seq: u16,
    session: Option<u32>,
}

struct NotReady {
    code: u8,
    token: u8,
    response: Vec<u8>,
    session: Option<u32>,
}

/// The SPDM responder.
pub struct Responder {
    cfg: ResponderConfig,
    identity: Identity,
    rng: Box<dyn EntropySource>,
    vendors: VendorRegistry,
    conn: Conn,
    sessions: Vec<Session>,
    chunk_out: Option<ChunkOut>,
    chunk_in: Option<ChunkIn>,
    not_ready: Option<NotReady>,
    next_handle: u8,
    seq_in_header: usize,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("state", &self.conn.state)
            .field("negotiated", &self.conn.neg)
            .field(
                "sessions",
                &self
                    .sessions
                    .iter()
                    .map(|s| format!("{:#010x}", s.id))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn rd_hash(h: Option<HashAlgo>) -> Result<HashAlgo, Fail> {
    h.ok_or_else(unexpected)
}

impl Responder {
    /// A responder with OS randomness.
    pub fn new(cfg: ResponderConfig, identity: Identity) -> Self {
        Self::with_entropy(cfg, identity, Box::new(OsEntropy))
    }

    /// A responder with injected randomness (deterministic tests).
    pub fn with_entropy(
        cfg: ResponderConfig,
        identity: Identity,
        rng: Box<dyn EntropySource>,
    ) -> Self {
        Self {
            cfg,
            identity,
            rng,
            vendors: VendorRegistry::default(),
            conn: Conn::default(),
            sessions: Vec::new(),
            chunk_out: None,
            chunk_in: None,
            not_ready: None,
            next_handle: 1,
            seq_in_header: 0,
        }
    }

    /// Secured-message binding of new sessions: `false` = PCIe DOE (no sequence
    /// number in the record), `true` = MCTP (DSP0275: 2-byte sequence number).
    pub fn set_mctp_binding(&mut self, mctp: bool) {
        self.seq_in_header = if mctp { 2 } else { 0 };
    }

    /// Register a VENDOR_DEFINED_REQUEST handler.
    pub fn register_vendor(&mut self, key: VendorKey, handler: Box<dyn VendorHandler>) {
        self.vendors.register(key, handler);
    }

    pub fn config(&self) -> &ResponderConfig {
        &self.cfg
    }
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn state(&self) -> ConnState {
        self.conn.state
    }
    pub fn negotiated(&self) -> &Negotiated {
        &self.conn.neg
    }
    /// Ids of the sessions (handshaking or established).
    pub fn session_ids(&self) -> Vec<u32> {
        self.sessions.iter().map(|s| s.id).collect()
    }
    /// Whether a session is established (past FINISH / PSK_FINISH).
    pub fn session_established(&self, id: u32) -> bool {
        self.sessions
            .iter()
            .any(|s| s.id == id && s.state == SessState::Established)
    }
    /// Replace the measurements (e.g. after a firmware update of the device model).
    pub fn set_measurements(&mut self, m: Vec<Measurement>) {
        self.cfg.measurements = m;
    }

    /// Reset to the power-on state (device reset): all sessions and negotiation dropped.
    pub fn reset(&mut self) {
        for s in self.sessions.drain(..) {
            self.vendors.session_ended(s.id);
        }
        self.conn = Conn::default();
        self.chunk_in = None;
        self.chunk_out = None;
        self.not_ready = None;
    }

    /// SPDMVersion of an ERROR about a secured record (not about a request).
    fn err_version(&self) -> u8 {
        if self.conn.state >= ConnState::AfterCapabilities {
            self.conn.neg.version
        } else {
            V10
        }
    }

    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.rng.fill(&mut b);
        b
    }

    // ------------------------------------------------------------------
    // Entry points
    // ------------------------------------------------------------------

    /// Handle one plain (non-secured) SPDM request and return the response.
    pub fn handle_message(&mut self, req: &[u8]) -> Vec<u8> {
        let r = self.respond(req, None, false);
        self.apply_post(None, r.post);
        r.msg
    }

    /// Handle one DSP0277 record (PCIe DOE binding: no sequence number field).
    pub fn handle_secured(&mut self, record: &[u8]) -> SecuredReply {
        let Some(sid) = secured::record_session_id(record) else {
            return SecuredReply::Plain(error_response(
                self.err_version(),
                ErrorCode::InvalidRequest,
                0,
            ));
        };
        let Some(idx) = self.sessions.iter().position(|s| s.id == sid) else {
            warn!("secured record for unknown session {sid:#010x}");
            return SecuredReply::Plain(vec![
                self.err_version(),
                rsp::ERROR,
                ERROR_INVALID_SESSION,
                0,
            ]);
        };
        // Heartbeat timeout: no message within 2 x HeartbeatPeriod ends the session.
        let hb = self.cfg.heartbeat_period as u64;
        if hb != 0
            && self.sessions[idx].state == SessState::Established
            && self.sessions[idx].last_activity.elapsed() > Duration::from_secs(2 * hb)
        {
            info!("session {sid:#010x} timed out (heartbeat)");
            self.remove_session(sid);
            return SecuredReply::Plain(vec![
                self.err_version(),
                rsp::ERROR,
                ERROR_INVALID_SESSION,
                0,
            ]);
        }
        let opened = self.sessions[idx].channel.open(Direction::Request, record);
        let msg = match opened {
            Ok(m) => m,
            Err(crate::error::SecuredError::SequenceExhausted) => {
                info!("session {sid:#010x}: request sequence number exhausted, session ended");
                self.remove_session(sid);
                return SecuredReply::Plain(error_response(
                    self.err_version(),
                    ErrorCode::DecryptError,
                    0,
                ));
            }
            Err(e) => {
                warn!("session {sid:#010x}: record rejected ({e}); session terminated");
                let err = error_response(self.conn.neg.version, ErrorCode::DecryptError, 0);
                let reply = self.seal_for(sid, &err);
                self.remove_session(sid);
                return reply
                    .map(SecuredReply::Secured)
                    .unwrap_or(SecuredReply::Plain(err));
            }
        };
        self.sessions[idx].last_activity = Instant::now();
        let Reply { msg: msg_out, post } = self.respond(&msg, Some(sid), false);
        let sealed = self.seal_for(sid, &msg_out);
        self.apply_post(Some(sid), post);
        match sealed {
            Some(r) => SecuredReply::Secured(r),
            None => {
                // Response sequence number exhausted: end the session cleanly.
                info!("session {sid:#010x}: response sequence number exhausted, session ended");
                self.remove_session(sid);
                SecuredReply::Plain(error_response(
                    self.err_version(),
                    ErrorCode::DecryptError,
                    0,
                ))
            }
        }
    }

    fn seal_for(&mut self, sid: u32, msg: &[u8]) -> Option<Vec<u8>> {
        let pad_len = if self.cfg.max_padding > 0 {
            let r: [u8; 1] = self.random();
            r[0] as usize % (self.cfg.max_padding + 1)
        } else {
            0
        };
        let mut pad = vec![0u8; pad_len];
        self.rng.fill(&mut pad);
        let s = self.sessions.iter_mut().find(|s| s.id == sid)?;
        s.channel.seal(Direction::Response, msg, &pad).ok()
    }

    fn remove_session(&mut self, sid: u32) {
        if let Some(p) = self.sessions.iter().position(|s| s.id == sid) {
            self.sessions.remove(p);
            self.vendors.session_ended(sid);
            if self
                .chunk_out
                .as_ref()
                .is_some_and(|c| c.session == Some(sid))
            {
                self.chunk_out = None;
            }
            if self
                .chunk_in
                .as_ref()
                .is_some_and(|c| c.session == Some(sid))
            {
                self.chunk_in = None;
            }
        }
    }

    fn apply_post(&mut self, sid: Option<u32>, post: Post) {
        let Some(sid) = sid else { return };
        match post {
            Post::None => {}
            Post::EnterApplication(ds) => {
                if let Some(s) = self.sessions.iter_mut().find(|s| s.id == sid) {
                    if s.channel.enter_application(&ds).is_ok() {
                        s.state = SessState::Established;
                        info!("session {sid:#010x} established");
                    }
                }
            }
            Post::EndSession { clear_state } => {
                info!("session {sid:#010x} ended by END_SESSION");
                self.remove_session(sid);
                if clear_state {
                    let keep = std::mem::take(&mut self.sessions);
                    self.reset();
                    self.sessions = keep;
                }
            }
            Post::KillSession => self.remove_session(sid),
        }
    }
}
