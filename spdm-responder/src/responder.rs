//! The SPDM responder state machine (DSP0274 1.0-1.3).
//!
//! [`Responder::handle_message`] takes one plain SPDM request and returns the
//! response; [`Responder::handle_secured`] takes one DSP0277 record (DOE binding)
//! and returns the protected response. Every request is parsed with bounds
//! checks; anything wrong is answered with the SPDM ERROR DSP0274 prescribes and
//! leaves the connection usable.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use zeroize::Zeroizing;

use crate::codec::{caps, error_response, rsp, Reader, RequestCode, Writer, V10, V11, V12, V13};
use crate::crypto::{
    self, AeadAlgo, AsymAlgo, DheGroup, DheSecret, HashAlgo, AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305, ASYM_ECDSA_P256, ASYM_ECDSA_P384, DHE_SECP256R1, DHE_SECP384R1,
    HASH_SHA256, HASH_SHA384, KEY_SCHEDULE_SPDM,
};
use crate::error::ErrorCode;
use crate::identity::{Identity, MAX_SLOTS};
use crate::keyschedule::{self, HandshakeSecrets};
use crate::measurement::{self, Measurement};
use crate::opaque;
use crate::rng::{EntropySource, OsEntropy};
use crate::secured::{self, Direction, SecureChannel};
use crate::vendor::{VendorContext, VendorHandler, VendorKey, VendorRegistry};

/// Size of nonces and random data.
pub const NONCE_SIZE: usize = 32;
/// Size of the 1.3 RequesterContext.
pub const REQ_CONTEXT_SIZE: usize = 8;
/// Maximum opaque data length accepted (DSP0274: 1024).
pub const MAX_OPAQUE: usize = 1024;
/// Error code the responder uses for an unknown session id (libspdm's InvalidSession).
pub const ERROR_INVALID_SESSION: u8 = 0x02;

/// A pre-shared key selected by its hint.
#[derive(Clone)]
pub struct PskEntry {
    pub hint: Vec<u8>,
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PskEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PskEntry {{ hint: {:?}, key: <redacted> }}",
            String::from_utf8_lossy(&self.hint)
        )
    }
}

impl PskEntry {
    /// The PSK and hint DMTF's spdm-emu uses by default ("TestPskData\0", "TestPskHint\0").
    pub fn dmtf_test() -> Self {
        Self {
            hint: b"TestPskHint\0".to_vec(),
            key: Zeroizing::new(b"TestPskData\0".to_vec()),
        }
    }
}

/// Responder configuration.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// Versions advertised in VERSION (subset of 1.0-1.3).
    pub versions: Vec<u8>,
    pub ct_exponent: u8,
    /// Our DataTransferSize (1.2+).
    pub data_transfer_size: u32,
    /// Our MaxSPDMmsgSize (1.2+).
    pub max_spdm_msg_size: u32,
    /// BaseHashAlgo bits we accept, in preference order SHA-384 > SHA-256.
    pub base_hash: u32,
    /// BaseAsymAlgo bits we accept (also limited by the identity's keys).
    pub base_asym: u32,
    pub dhe: u16,
    pub aead: u16,
    /// Advertise the ENCRYPT capability (else MAC-only sessions).
    pub encrypt: bool,
    pub psks: Vec<PskEntry>,
    /// HeartbeatPeriod in seconds (0 = no heartbeat timeout).
    pub heartbeat_period: u8,
    pub max_sessions: usize,
    /// Highest usable secured-message sequence number per direction.
    pub max_sequence_number: u64,
    /// Random padding added to each secured response: 0..=max bytes.
    pub max_padding: usize,
    pub measurements: Vec<Measurement>,
    /// Answer CHALLENGE and signed GET_MEASUREMENTS with ResponseNotReady first
    /// (the requester then sends RESPOND_IF_READY).
    pub respond_not_ready: bool,
    /// Advertise the CHUNK capability (1.2+).
    pub chunk: bool,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        Self {
            versions: vec![V10, V11, V12, V13],
            ct_exponent: 12,
            data_transfer_size: 0x1200,
            max_spdm_msg_size: 0x1_0000,
            base_hash: HASH_SHA256 | HASH_SHA384,
            base_asym: ASYM_ECDSA_P256 | ASYM_ECDSA_P384,
            dhe: DHE_SECP256R1 | DHE_SECP384R1,
            aead: AEAD_AES_256_GCM | AEAD_CHACHA20_POLY1305,
            encrypt: true,
            psks: vec![PskEntry::dmtf_test()],
            heartbeat_period: 0,
            max_sessions: 4,
            max_sequence_number: u64::MAX - 1,
            max_padding: 0,
            measurements: measurement::default_measurements(
                "1.0.0",
                b"trustdev default device configuration",
            ),
            respond_not_ready: false,
            chunk: true,
        }
    }
}

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

    fn rsp_caps(&self, version: u8) -> u32 {
        let mut f = caps::CERT | caps::CHAL | caps::MEAS_SIG | caps::MEAS_FRESH;
        if version >= V11 {
            f |= caps::MAC | caps::KEY_EX | caps::HBEAT | caps::KEY_UPD;
            if self.cfg.encrypt {
                f |= caps::ENCRYPT;
            }
            if !self.cfg.psks.is_empty() {
                f |= caps::PSK_WITH_CONTEXT;
            }
        }
        if version >= V12 && self.cfg.chunk {
            f |= caps::CHUNK;
        }
        if self.cfg.measurements.is_empty() {
            f &= !caps::MEAS_MASK & !caps::MEAS_FRESH;
        }
        let mask = match version {
            V10 => caps::MASK_10,
            V11 => caps::MASK_11,
            V12 => caps::MASK_12,
            _ => caps::MASK_13,
        };
        f & mask
    }

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
        let out = self.process(req, None, false);
        match out {
            Ok(r) => {
                self.apply_post(None, r.post);
                r.msg
            }
            Err(f) => self.error_msg(f),
        }
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
        let (msg_out, post) = match self.process(&msg, Some(sid), false) {
            Ok(r) => (r.msg, r.post),
            Err(f) => {
                let kill = matches!(f.2, Some(Post2::KillSession));
                (
                    self.error_msg(f),
                    if kill { Post::KillSession } else { Post::None },
                )
            }
        };
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

    fn error_msg(&mut self, f: Fail) -> Vec<u8> {
        debug!("answering ERROR {:?} data {:#04x}", f.0, f.1);
        error_response(self.err_version(), f.0, f.1)
    }

    // ------------------------------------------------------------------
    // Dispatch
    // ------------------------------------------------------------------

    fn process(&mut self, req: &[u8], sid: Option<u32>, from_chunk: bool) -> R {
        if req.len() < 4 {
            return Err(invalid());
        }
        let (ver, code_u8) = (req[0], req[1]);
        let code = RequestCode::from_u8(code_u8);
        // Version checks.
        match code {
            Some(RequestCode::GetVersion) => {
                if ver != V10 {
                    return Err(fail(ErrorCode::VersionMismatch));
                }
            }
            _ if self.conn.state < ConnState::AfterVersion => return Err(unexpected()),
            Some(RequestCode::GetCapabilities) if self.conn.state == ConnState::AfterVersion => {
                if !self.cfg.versions.contains(&ver) {
                    return Err(fail(ErrorCode::VersionMismatch));
                }
            }
            _ if self.conn.state == ConnState::AfterVersion => {
                // Only GET_CAPABILITIES may follow VERSION.
                if code.is_none() {
                    return Err(unsupported(code_u8));
                }
                return Err(unexpected());
            }
            _ => {
                if ver != self.conn.neg.version {
                    return Err(fail(ErrorCode::VersionMismatch));
                }
            }
        }
        let Some(code) = code else {
            return Err(unsupported(code_u8));
        };
        let version = if self.conn.state >= ConnState::AfterCapabilities {
            self.conn.neg.version
        } else {
            ver
        };
        if code.min_version() > version {
            return Err(unsupported(code_u8));
        }
        // 1.2+: a single message larger than our DataTransferSize must be chunked.
        if !from_chunk
            && version >= V12
            && self.conn.state >= ConnState::AfterCapabilities
            && req.len() > self.cfg.data_transfer_size as usize
        {
            return Err(fail(ErrorCode::RequestTooLarge));
        }
        // A pending ResponseNotReady is abandoned by any other request.
        if code != RequestCode::RespondIfReady {
            self.not_ready = None;
        }
        if !matches!(code, RequestCode::ChunkGet) && !from_chunk {
            self.chunk_out = None;
        }
        self.reset_transcripts_for(code, sid);
        let r = match code {
            RequestCode::GetVersion => self.get_version(req, sid),
            RequestCode::GetCapabilities => self.get_capabilities(req, sid),
            RequestCode::NegotiateAlgorithms => self.negotiate_algorithms(req, sid),
            RequestCode::GetDigests => self.get_digests(req, sid),
            RequestCode::GetCertificate => self.get_certificate(req, sid),
            RequestCode::Challenge => self.challenge(req, sid),
            RequestCode::GetMeasurements => self.get_measurements(req, sid),
            RequestCode::KeyExchange => self.key_exchange(req, sid),
            RequestCode::Finish => self.finish(req, sid),
            RequestCode::PskExchange => self.psk_exchange(req, sid),
            RequestCode::PskFinish => self.psk_finish(req, sid),
            RequestCode::Heartbeat => self.heartbeat(req, sid),
            RequestCode::KeyUpdate => self.key_update(req, sid),
            RequestCode::EndSession => self.end_session(req, sid),
            RequestCode::VendorDefinedRequest => self.vendor_defined(req, sid),
            RequestCode::RespondIfReady => self.respond_if_ready(req, sid),
            RequestCode::ChunkSend => self.chunk_send(req, sid),
            RequestCode::ChunkGet => self.chunk_get(req, sid),
            // Recognised but not implemented by this responder.
            RequestCode::GetEncapsulatedRequest
            | RequestCode::DeliverEncapsulatedResponse
            | RequestCode::GetCsr
            | RequestCode::SetCertificate
            | RequestCode::GetEndpointInfo
            | RequestCode::GetSupportedEventTypes
            | RequestCode::SubscribeEventTypes
            | RequestCode::SendEvent
            | RequestCode::GetMeasurementExtensionLog
            | RequestCode::GetKeyPairInfo
            | RequestCode::SetKeyPairInfo
            | RequestCode::SlotManagement => Err(unsupported(code_u8)),
        };
        if r.is_err() && code == RequestCode::GetMeasurements {
            self.message_m_mut(sid).clear();
        }
        let r = r?;
        // Large responses: chunk (1.2+, both CHUNK_CAP) or refuse.
        if !matches!(code, RequestCode::ChunkGet | RequestCode::ChunkSend) {
            return self.maybe_chunk_response(r, sid);
        }
        Ok(r)
    }

    fn maybe_chunk_response(&mut self, r: Reply, sid: Option<u32>) -> R {
        let n = &self.conn.neg;
        if n.version < V12
            || n.req_data_transfer_size == 0
            || r.msg.len() <= n.req_data_transfer_size as usize
        {
            return Ok(r);
        }
        let both_chunk = n.req_caps & caps::CHUNK != 0 && n.rsp_caps & caps::CHUNK != 0;
        if !both_chunk || r.msg.len() > n.req_max_msg_size as usize {
            return Err(fail(ErrorCode::ResponseTooLarge));
        }
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        debug!(
            "response of {} bytes exceeds DataTransferSize; LargeResponse handle {handle}",
            r.msg.len()
        );
        self.chunk_out = Some(ChunkOut {
            handle,
            data: r.msg,
            next_seq: 0,
            offset: 0,
            session: sid,
        });
        let mut e = error_response(self.conn.neg.version, ErrorCode::LargeResponse, 0);
        e.push(handle);
        Ok(Reply {
            msg: e,
            post: r.post,
        })
    }

    fn message_m_mut(&mut self, sid: Option<u32>) -> &mut Vec<u8> {
        if let Some(id) = sid {
            if let Some(p) = self.sessions.iter().position(|s| s.id == id) {
                return &mut self.sessions[p].message_m;
            }
        }
        &mut self.conn.message_m
    }

    /// libspdm-compatible transcript resets on each request code.
    fn reset_transcripts_for(&mut self, code: RequestCode, sid: Option<u32>) {
        use RequestCode::*;
        if !matches!(
            code,
            GetMeasurements | RespondIfReady | ChunkGet | ChunkSend
        ) {
            self.message_m_mut(sid).clear();
        }
        match code {
            KeyExchange
            | GetMeasurements
            | Finish
            | PskExchange
            | PskFinish
            | KeyUpdate
            | Heartbeat
            | GetEncapsulatedRequest
            | EndSession
            | DeliverEncapsulatedResponse
            | GetMeasurementExtensionLog
                if self.conn.state < ConnState::Authenticated =>
            {
                self.conn.message_b.clear();
                self.conn.message_c.clear();
            }
            GetDigests if sid.is_none() => self.conn.message_b.clear(),
            _ => {}
        }
    }

    // ------------------------------------------------------------------
    // VCA
    // ------------------------------------------------------------------

    fn get_version(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_some() {
            return Err(unexpected());
        }
        // GET_VERSION resets the connection (and every session).
        self.reset();
        let mut w = Writer::header(V10, rsp::VERSION, 0, 0);
        w.u8(0).u8(self.cfg.versions.len() as u8);
        for v in &self.cfg.versions {
            w.u16((*v as u16) << 8);
        }
        let msg = w.finish();
        self.conn.vca.extend_from_slice(&req[..4]);
        self.conn.vca.extend_from_slice(&msg);
        self.conn.state = ConnState::AfterVersion;
        Ok(Reply::new(msg))
    }

    fn get_capabilities(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_some() || self.conn.state != ConnState::AfterVersion {
            return Err(unexpected());
        }
        let ver = req[0];
        let need = match ver {
            V10 => 4,
            V11 => 12,
            _ => 20,
        };
        if req.len() < need {
            return Err(invalid());
        }
        let mut r = Reader::new(&req[4..need]);
        let (mut flags, mut ct, mut dts, mut max_msg) = (0u32, 0u8, 0u32, 0u32);
        if ver >= V11 {
            r.u8();
            ct = r.u8().unwrap_or(0);
            r.u16();
            flags = r.u32().unwrap_or(0);
        }
        if ver >= V12 {
            dts = r.u32().unwrap_or(0);
            max_msg = r.u32().unwrap_or(0);
        }
        if ver >= V11 && !check_requester_flags(flags, ver) {
            return Err(invalid());
        }
        if ver >= V12 {
            if dts < crate::codec::MIN_DATA_TRANSFER_SIZE || dts > max_msg {
                return Err(invalid());
            }
            if dts != max_msg && flags & caps::CHUNK == 0 {
                return Err(invalid());
            }
        }
        if ct > 31 {
            return Err(invalid());
        }
        let rsp_caps = self.rsp_caps(ver);
        let mut w = Writer::header(ver, rsp::CAPABILITIES, 0, 0);
        w.u8(0).u8(self.cfg.ct_exponent).u16(0).u32(rsp_caps);
        if ver >= V12 {
            w.u32(self.cfg.data_transfer_size)
                .u32(self.cfg.max_spdm_msg_size);
        }
        let msg = w.finish();
        self.conn.vca.extend_from_slice(&req[..need]);
        self.conn.vca.extend_from_slice(&msg);
        let n = &mut self.conn.neg;
        n.version = ver;
        n.req_caps = flags;
        n.rsp_caps = rsp_caps;
        n.req_data_transfer_size = dts;
        n.req_max_msg_size = max_msg;
        self.conn.state = ConnState::AfterCapabilities;
        Ok(Reply::new(msg))
    }

    fn negotiate_algorithms(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_some() || self.conn.state != ConnState::AfterCapabilities {
            return Err(unexpected());
        }
        let ver = self.conn.neg.version;
        if req.len() < 32 {
            return Err(invalid());
        }
        let mut r = Reader::new(req);
        r.skip(2);
        let num_structs = r.u8().unwrap_or(0) as usize;
        r.u8();
        let length = r.u16().unwrap_or(0) as usize;
        let meas_spec = r.u8().unwrap_or(0);
        let other_params = r.u8().unwrap_or(0);
        let base_asym = r.u32().unwrap_or(0);
        let base_hash = r.u32().unwrap_or(0);
        r.skip(12);
        let ext_asym = r.u8().unwrap_or(0) as usize;
        let ext_hash = r.u8().unwrap_or(0) as usize;
        r.skip(2);
        let max_len = if ver == V10 { 0x40 } else { 0x80 };
        let max_ext = if ver == V10 { 8 } else { 20 };
        if length > req.len() || length > max_len || length < 32 || ext_asym + ext_hash > max_ext {
            return Err(invalid());
        }
        if r.skip(4 * (ext_asym + ext_hash)).is_none() {
            return Err(invalid());
        }
        let mut tables: Vec<(u8, u16)> = Vec::new();
        if ver >= V11 {
            if num_structs > 4 {
                return Err(invalid());
            }
            for _ in 0..num_structs {
                let ty = r.u8().ok_or_else(invalid)?;
                let count = r.u8().ok_or_else(invalid)?;
                if count >> 4 != 2 {
                    return Err(invalid());
                }
                let sup = r.u16().ok_or_else(invalid)?;
                r.skip(4 * (count & 0xF) as usize).ok_or_else(invalid)?;
                if !(2..=5).contains(&ty) || sup == 0 {
                    return Err(invalid());
                }
                if ver >= V12 && tables.last().is_some_and(|(t, _)| *t >= ty) {
                    return Err(invalid());
                }
                if tables.iter().any(|(t, _)| *t == ty) {
                    return Err(invalid());
                }
                tables.push((ty, sup));
            }
        }
        if r.pos() != length {
            return Err(invalid());
        }
        // Selection.
        let n = &self.conn.neg;
        let meas_cap = n.rsp_caps & caps::MEAS_MASK != 0;
        let hash_common = base_hash & self.cfg.base_hash;
        let hash = if hash_common & HASH_SHA384 != 0 {
            Some(HashAlgo::Sha384)
        } else if hash_common & HASH_SHA256 != 0 {
            Some(HashAlgo::Sha256)
        } else {
            None
        };
        let asym_common = base_asym & self.cfg.base_asym & self.identity.asym_bits();
        let asym = if asym_common & ASYM_ECDSA_P384 != 0 {
            Some(AsymAlgo::EcdsaP384)
        } else if asym_common & ASYM_ECDSA_P256 != 0 {
            Some(AsymAlgo::EcdsaP256)
        } else {
            None
        };
        let Some(hash) = hash else {
            return Err(invalid());
        };
        let Some(asym) = asym else {
            return Err(invalid());
        };
        let meas_spec_sel = if meas_cap { meas_spec & 0x01 } else { 0 };
        let meas_hash = (meas_spec_sel != 0).then_some(hash);
        let mut dhe = None;
        let mut aead = None;
        let mut ks = false;
        let mut rsp_tables = Vec::new();
        for (ty, sup) in &tables {
            let sel: u16 = match ty {
                2 => {
                    let c = sup & self.cfg.dhe;
                    dhe = if c & DHE_SECP384R1 != 0 {
                        Some(DheGroup::Secp384r1)
                    } else if c & DHE_SECP256R1 != 0 {
                        Some(DheGroup::Secp256r1)
                    } else {
                        None
                    };
                    dhe.map_or(0, |d| d.bits())
                }
                3 => {
                    let c = sup & self.cfg.aead;
                    aead = if c & AEAD_AES_256_GCM != 0 {
                        Some(AeadAlgo::Aes256Gcm)
                    } else if c & AEAD_CHACHA20_POLY1305 != 0 {
                        Some(AeadAlgo::ChaCha20Poly1305)
                    } else {
                        None
                    };
                    aead.map_or(0, |a| a.bits())
                }
                // ReqBaseAsymAlg: we never request mutual authentication, but a
                // requester that can sign (MUT_AUTH / EP_INFO_CAP_SIG) expects a
                // selection; pick ECDSA if offered.
                4 => {
                    if sup & (ASYM_ECDSA_P384 as u16) != 0 {
                        ASYM_ECDSA_P384 as u16
                    } else if sup & (ASYM_ECDSA_P256 as u16) != 0 {
                        ASYM_ECDSA_P256 as u16
                    } else {
                        0
                    }
                }
                5 => {
                    ks = sup & KEY_SCHEDULE_SPDM != 0;
                    if ks {
                        KEY_SCHEDULE_SPDM
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            rsp_tables.push((*ty, sel));
        }
        let opaque_fmt = if ver >= V12 {
            if other_params & opaque::FMT1 != 0 {
                opaque::FMT1
            } else if other_params & opaque::FMT0 != 0 {
                opaque::FMT0
            } else {
                opaque::FMT_NONE
            }
        } else if ver == V11 {
            opaque::FMT0
        } else {
            opaque::FMT_NONE
        };
        let rsp_len = 36 + 4 * rsp_tables.len();
        let mut w = Writer::header(ver, rsp::ALGORITHMS, rsp_tables.len() as u8, 0);
        w.u16(rsp_len as u16)
            .u8(meas_spec_sel)
            .u8(if ver >= V12 { opaque_fmt } else { 0 });
        w.u32(meas_hash.map_or(0, |h| h.meas_bits()))
            .u32(asym.bits())
            .u32(hash.bits());
        w.zeros(12).u8(0).u8(0).u16(0);
        for (ty, sel) in &rsp_tables {
            w.u8(*ty).u8(0x20).u16(*sel);
        }
        let msg = w.finish();
        self.conn.vca.extend_from_slice(&req[..length]);
        self.conn.vca.extend_from_slice(&msg);
        let n = &mut self.conn.neg;
        n.hash = Some(hash);
        n.asym = Some(asym);
        n.meas_hash = meas_hash;
        n.meas_spec = meas_spec_sel;
        n.dhe = dhe;
        n.aead = aead;
        n.key_schedule = ks;
        n.opaque_fmt = opaque_fmt;
        self.conn.state = ConnState::Negotiated;
        info!(
            "negotiated SPDM {}.{} {:?} {:?} dhe={:?} aead={:?}",
            ver >> 4,
            ver & 0xF,
            hash,
            asym,
            dhe,
            aead
        );
        Ok(Reply::new(msg))
    }

    // ------------------------------------------------------------------
    // Authentication
    // ------------------------------------------------------------------

    fn require_negotiated(&self) -> Result<(HashAlgo, AsymAlgo), Fail> {
        if self.conn.state < ConnState::Negotiated {
            return Err(unexpected());
        }
        Ok((
            rd_hash(self.conn.neg.hash)?,
            self.conn.neg.asym.ok_or_else(unexpected)?,
        ))
    }

    fn slot_chain(&self, slot: u8) -> Option<Vec<u8>> {
        let hash = self.conn.neg.hash?;
        let asym = self.conn.neg.asym?;
        self.identity.slot(asym, slot).map(|s| s.spdm_chain(hash))
    }

    fn slot_mask(&self) -> u8 {
        self.conn
            .neg
            .asym
            .and_then(|a| self.identity.for_algo(a))
            .map_or(0, |a| a.slot_mask())
    }

    fn get_digests(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let (hash, _) = self.require_negotiated()?;
        if self.conn.neg.rsp_caps & caps::CERT == 0 {
            return Err(unsupported(req[1]));
        }
        let mask = self.slot_mask();
        let p1 = if self.conn.neg.version >= V13 {
            mask
        } else {
            0
        };
        let mut w = Writer::header(self.conn.neg.version, rsp::DIGESTS, p1, mask);
        for slot in 0..MAX_SLOTS as u8 {
            if mask & (1 << slot) != 0 {
                let chain = self
                    .slot_chain(slot)
                    .ok_or_else(|| fail(ErrorCode::Unspecified))?;
                w.bytes(&hash.hash(&chain));
            }
        }
        let msg = w.finish();
        if sid.is_none() {
            self.conn.message_b.extend_from_slice(&req[..4]);
            self.conn.message_b.extend_from_slice(&msg);
            if self.conn.state < ConnState::AfterDigests {
                self.conn.state = ConnState::AfterDigests;
            }
        }
        Ok(Reply::new(msg))
    }

    fn get_certificate(&mut self, req: &[u8], sid: Option<u32>) -> R {
        self.require_negotiated()?;
        if self.conn.neg.rsp_caps & caps::CERT == 0 {
            return Err(unsupported(req[1]));
        }
        if req.len() < 8 {
            return Err(invalid());
        }
        let slot = req[2] & 0x0F;
        if req[2] & 0x80 != 0 {
            return Err(invalid()); // 1.4 LargeCertChain
        }
        let attrs = req[3];
        let offset = u16::from_le_bytes([req[4], req[5]]) as usize;
        let length = u16::from_le_bytes([req[6], req[7]]) as usize;
        let chain = self.slot_chain(slot).ok_or_else(invalid)?;
        let ver = self.conn.neg.version;
        let slot_size_requested = ver >= V13 && attrs & 0x01 != 0;
        let (portion, remainder) = if slot_size_requested {
            (0usize, chain.len())
        } else {
            if offset >= chain.len() || length == 0 {
                return Err(invalid());
            }
            let mut portion = length.min(chain.len() - offset);
            let both_chunk = self.conn.neg.req_caps & caps::CHUNK != 0
                && self.conn.neg.rsp_caps & caps::CHUNK != 0;
            if ver >= V12 && !both_chunk && self.conn.neg.req_data_transfer_size != 0 {
                portion =
                    portion.min((self.conn.neg.req_data_transfer_size as usize).saturating_sub(8));
            }
            (portion, chain.len() - offset - portion)
        };
        let mut w = Writer::header(ver, rsp::CERTIFICATE, slot, 0);
        w.u16(portion as u16).u16(remainder as u16);
        if portion > 0 {
            w.bytes(&chain[offset..offset + portion]);
        }
        let msg = w.finish();
        if sid.is_none() {
            self.conn.message_b.extend_from_slice(&req[..8]);
            self.conn.message_b.extend_from_slice(&msg);
            if self.conn.state < ConnState::AfterCertificate {
                self.conn.state = ConnState::AfterCertificate;
            }
        }
        Ok(Reply::new(msg))
    }

    fn summary_hash(&self, ty: u8) -> Result<Vec<u8>, Fail> {
        let hash = rd_hash(self.conn.neg.hash)?;
        match ty {
            0 => Ok(Vec::new()),
            1 | 0xFF => {
                if self.conn.neg.rsp_caps & caps::MEAS_MASK == 0 {
                    return Err(invalid());
                }
                let mut data = Vec::new();
                for m in &self.cfg.measurements {
                    if ty == 0xFF || m.tcb {
                        data.extend_from_slice(&m.block(self.conn.neg.meas_hash, false));
                    }
                }
                Ok(hash.hash(&data))
            }
            _ => Err(invalid()),
        }
    }

    fn sign(&self, slot: u8, context: &str, transcript: &[u8]) -> Result<Vec<u8>, Fail> {
        let hash = rd_hash(self.conn.neg.hash)?;
        let asym = self.conn.neg.asym.ok_or_else(unexpected)?;
        let key = &self.identity.slot(asym, slot).ok_or_else(invalid)?.key;
        let digest = crypto::signature_digest(hash, self.conn.neg.version, context, transcript);
        key.sign_prehash(&digest)
            .map_err(|_| fail(ErrorCode::Unspecified))
    }

    fn challenge(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_some() {
            return Err(unexpected());
        }
        let (hash, _) = self.require_negotiated()?;
        if self.conn.neg.rsp_caps & caps::CHAL == 0 {
            return Err(unsupported(req[1]));
        }
        let ver = self.conn.neg.version;
        let need = 4 + NONCE_SIZE + if ver >= V13 { REQ_CONTEXT_SIZE } else { 0 };
        if req.len() < need {
            return Err(invalid());
        }
        let slot = req[2];
        let hash_type = req[3];
        if slot as usize >= MAX_SLOTS {
            return Err(invalid());
        }
        let chain = self.slot_chain(slot).ok_or_else(invalid)?;
        let summary = self.summary_hash(hash_type)?;
        let nonce: [u8; NONCE_SIZE] = self.random();
        let mut w = Writer::header(ver, rsp::CHALLENGE_AUTH, slot & 0x0F, 1 << slot);
        w.bytes(&hash.hash(&chain))
            .bytes(&nonce)
            .bytes(&summary)
            .u16(0);
        if ver >= V13 {
            w.bytes(&req[4 + NONCE_SIZE..need]);
        }
        let mut msg = w.finish();
        let mut transcript =
            Vec::with_capacity(self.conn.vca.len() + self.conn.message_b.len() + need + msg.len());
        transcript.extend_from_slice(&self.conn.vca);
        transcript.extend_from_slice(&self.conn.message_b);
        transcript.extend_from_slice(&self.conn.message_c);
        transcript.extend_from_slice(&req[..need]);
        transcript.extend_from_slice(&msg);
        let sig = self.sign(slot, crypto::CTX_CHALLENGE_AUTH, &transcript)?;
        msg.extend_from_slice(&sig);
        self.conn.message_b.clear();
        self.conn.message_c.clear();
        self.conn.state = ConnState::Authenticated;
        self.maybe_not_ready(RequestCode::Challenge, msg, sid)
    }

    fn maybe_not_ready(&mut self, code: RequestCode, msg: Vec<u8>, sid: Option<u32>) -> R {
        if !self.cfg.respond_not_ready {
            return Ok(Reply::new(msg));
        }
        let token: [u8; 1] = self.random();
        self.not_ready = Some(NotReady {
            code: code as u8,
            token: token[0],
            response: msg,
            session: sid,
        });
        let mut e = error_response(self.conn.neg.version, ErrorCode::ResponseNotReady, 0);
        // RDExponent, RequestCode, Token, RDTM
        e.extend_from_slice(&[1, code as u8, token[0], 1]);
        Ok(Reply::new(e))
    }

    fn respond_if_ready(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if self.conn.state < ConnState::Negotiated {
            return Err(unexpected());
        }
        match self.not_ready.take() {
            Some(nr) if nr.session == sid => {
                if nr.code != req[2] || nr.token != req[3] {
                    self.not_ready = Some(nr);
                    return Err(invalid());
                }
                Ok(Reply::new(nr.response))
            }
            other => {
                self.not_ready = other;
                Err(unexpected())
            }
        }
    }

    fn get_measurements(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let (_, _) = self.require_negotiated()?;
        let n = &self.conn.neg;
        if n.rsp_caps & caps::MEAS_MASK == 0 || n.meas_spec == 0 {
            return Err(unsupported(req[1]));
        }
        let ver = n.version;
        let attrs = req[2];
        let op = req[3];
        let signed = attrs & 0x01 != 0;
        let raw_requested = ver >= V12 && attrs & 0x02 != 0;
        let mut need = 4;
        if signed {
            need += NONCE_SIZE + if ver >= V11 { 1 } else { 0 };
        }
        if ver >= V13 {
            need += REQ_CONTEXT_SIZE;
        }
        if req.len() < need {
            return Err(invalid());
        }
        let slot = if signed && ver >= V11 {
            req[4 + NONCE_SIZE] & 0x0F
        } else {
            0
        };
        if signed {
            if slot as usize >= MAX_SLOTS || self.slot_chain(slot).is_none() {
                return Err(invalid());
            }
            if self.conn.neg.rsp_caps & caps::MEAS_SIG == 0 {
                return Err(invalid());
            }
        }
        let meas_hash = self.conn.neg.meas_hash;
        let (p1, blocks): (u8, Vec<Vec<u8>>) = match op {
            0 => (self.cfg.measurements.len() as u8, Vec::new()),
            0xFF => (
                0,
                self.cfg
                    .measurements
                    .iter()
                    .map(|m| m.block(meas_hash, raw_requested))
                    .collect(),
            ),
            i => {
                let m = self
                    .cfg
                    .measurements
                    .iter()
                    .find(|m| m.index == i)
                    .ok_or_else(invalid)?;
                (0, vec![m.block(meas_hash, raw_requested)])
            }
        };
        let record: Vec<u8> = blocks.concat();
        if record.len() > 0xFF_FFFF {
            return Err(fail(ErrorCode::Unspecified));
        }
        let nonce: [u8; NONCE_SIZE] = self.random();
        let mut w = Writer::header(ver, rsp::MEASUREMENTS, p1, if signed { slot } else { 0 });
        w.u8(blocks.len() as u8)
            .u24(record.len() as u32)
            .bytes(&record)
            .bytes(&nonce)
            .u16(0);
        if ver >= V13 {
            w.bytes(&req[need - REQ_CONTEXT_SIZE..need]);
        }
        let mut msg = w.finish();
        let vca = self.conn.vca.clone();
        let mm = self.message_m_mut(sid);
        mm.extend_from_slice(&req[..need]);
        mm.extend_from_slice(&msg);
        if signed {
            let mut l = Vec::new();
            if ver >= V12 {
                l.extend_from_slice(&vca);
            }
            l.extend_from_slice(&std::mem::take(self.message_m_mut(sid)));
            let sig = self.sign(slot, crypto::CTX_MEASUREMENTS, &l)?;
            msg.extend_from_slice(&sig);
            return self.maybe_not_ready(RequestCode::GetMeasurements, msg, sid);
        }
        Ok(Reply::new(msg))
    }

    // ------------------------------------------------------------------
    // Sessions
    // ------------------------------------------------------------------

    fn session_caps_ok(&self, bit: u32) -> bool {
        let n = &self.conn.neg;
        n.req_caps & bit != 0 && n.rsp_caps & bit != 0
    }

    fn new_session_id(&mut self, req_id: u16) -> Result<u32, Fail> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(fail(ErrorCode::SessionLimitExceeded));
        }
        for _ in 0..64 {
            let r: [u8; 2] = self.random();
            let rsp_id = u16::from_le_bytes(r);
            if rsp_id == 0 || rsp_id == 0xFFFF {
                continue;
            }
            let id = ((rsp_id as u32) << 16) | req_id as u32;
            if !self
                .sessions
                .iter()
                .any(|s| s.id == id || (s.id >> 16) as u16 == rsp_id)
            {
                return Ok(id);
            }
        }
        Err(fail(ErrorCode::Unspecified))
    }

    fn select_secured_version(&self, opaque: &[u8]) -> Result<u16, Fail> {
        let fmt = self.conn.neg.opaque_fmt;
        if opaque.is_empty() || fmt == opaque::FMT_NONE {
            return Ok(opaque::SECURED_V10);
        }
        let list = opaque::parse_supported_versions(fmt, opaque).ok_or_else(invalid)?;
        if list.iter().any(|v| v & 0xFF00 == opaque::SECURED_V11) {
            Ok(opaque::SECURED_V11)
        } else if list.iter().any(|v| v & 0xFF00 == opaque::SECURED_V10) {
            Ok(opaque::SECURED_V10)
        } else {
            Err(invalid())
        }
    }

    fn rsp_opaque(&self, selected: u16) -> Vec<u8> {
        match self.conn.neg.opaque_fmt {
            opaque::FMT_NONE => Vec::new(),
            f => opaque::version_selection(f, selected),
        }
    }

    fn key_exchange(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_some() {
            return Err(unexpected());
        }
        let (hash, _) = self.require_negotiated()?;
        if !self.session_caps_ok(caps::KEY_EX) {
            return Err(unsupported(req[1]));
        }
        let (Some(dhe), Some(aead), true) = (
            self.conn.neg.dhe,
            self.conn.neg.aead,
            self.conn.neg.key_schedule,
        ) else {
            return Err(unexpected());
        };
        let ver = self.conn.neg.version;
        let hash_type = req[2];
        let slot = req[3];
        let mut r = Reader::new(&req[4..]);
        let req_sid = r.u16().ok_or_else(invalid)?;
        r.skip(2).ok_or_else(invalid)?; // SessionPolicy (1.2), reserved
        r.skip(NONCE_SIZE).ok_or_else(invalid)?;
        let exchange = r.take(dhe.exchange_size()).ok_or_else(invalid)?;
        let olen = r.u16().ok_or_else(invalid)? as usize;
        if olen > MAX_OPAQUE {
            return Err(invalid());
        }
        let opaque_in = r.take(olen).ok_or_else(invalid)?;
        let req_len = 4 + r.pos();
        if slot as usize >= MAX_SLOTS {
            return Err(invalid());
        }
        let chain = self.slot_chain(slot).ok_or_else(invalid)?;
        let summary = self.summary_hash(hash_type)?;
        let sec_ver = self.select_secured_version(opaque_in)?;
        let secret = DheSecret::generate(dhe, &mut *self.rng);
        let shared = secret.agree(exchange).map_err(|_| invalid())?;
        let session_id = self.new_session_id(req_sid)?;
        let random: [u8; NONCE_SIZE] = self.random();
        let hb = if self.session_caps_ok(caps::HBEAT) {
            self.cfg.heartbeat_period
        } else {
            0
        };
        let mut w = Writer::header(ver, rsp::KEY_EXCHANGE_RSP, hb, 0);
        w.u16((session_id >> 16) as u16)
            .u8(0)
            .u8(0)
            .bytes(&random)
            .bytes(&secret.public_exchange())
            .bytes(&summary);
        let op = self.rsp_opaque(sec_ver);
        w.u16(op.len() as u16).bytes(&op);
        let mut msg = w.finish();
        let mut th =
            Vec::with_capacity(self.conn.vca.len() + 2 * hash.size() + req_len + msg.len() + 200);
        th.extend_from_slice(&self.conn.vca);
        th.extend_from_slice(&hash.hash(&chain));
        th.extend_from_slice(&req[..req_len]);
        th.extend_from_slice(&msg);
        let sig = self.sign(slot, crypto::CTX_KEY_EXCHANGE_RSP, &th)?;
        msg.extend_from_slice(&sig);
        th.extend_from_slice(&sig);
        let th1 = hash.hash(&th);
        let hs = keyschedule::handshake_secrets(hash, ver, &shared, false, &th1)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        let verify = hash.hmac(&hs.rsp_finished_key, &th1);
        msg.extend_from_slice(&verify);
        th.extend_from_slice(&verify);
        self.add_session(session_id, false, hs, th, aead, hash, ver)?;
        info!("KEY_EXCHANGE: session {session_id:#010x} handshaking ({dhe:?}, {aead:?})");
        Ok(Reply::new(msg))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_session(
        &mut self,
        id: u32,
        psk: bool,
        hs: HandshakeSecrets,
        transcript: Vec<u8>,
        aead: AeadAlgo,
        hash: HashAlgo,
        ver: u8,
    ) -> Result<(), Fail> {
        let mac_only = !(self.session_caps_ok(caps::ENCRYPT));
        if mac_only && !self.session_caps_ok(caps::MAC) {
            return Err(unexpected());
        }
        let mut channel = SecureChannel::handshake(id, hash, aead, ver, mac_only, &hs)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        channel.set_max_sequence_number(self.cfg.max_sequence_number);
        if self.seq_in_header > 0 {
            channel.set_mctp_binding();
        }
        self.sessions.push(Session {
            id,
            state: SessState::Handshaking,
            psk,
            channel,
            hs,
            transcript,
            message_m: Vec::new(),
            last_key_update: None,
            key_updated: false,
            last_activity: Instant::now(),
            hash,
            version: ver,
        });
        Ok(())
    }

    fn session_mut(&mut self, sid: Option<u32>) -> Result<&mut Session, Fail> {
        let id = sid.ok_or_else(unexpected)?;
        self.sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(unexpected)
    }

    fn finish(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_none() {
            return Err(unexpected());
        }
        if !self.session_caps_ok(caps::KEY_EX) {
            return Err(unsupported(req[1]));
        }
        let s = self.session_mut(sid)?;
        if s.state != SessState::Handshaking || s.psk {
            return Err(unexpected());
        }
        let h = s.hash.size();
        if req[2] & 0x01 != 0 {
            // A signature is only allowed when we requested mutual authentication (never).
            return Err(invalid());
        }
        if req.len() < 4 + h {
            return Err(invalid());
        }
        let mut th = s.transcript.clone();
        th.extend_from_slice(&req[..4]);
        let ok = s
            .hash
            .hmac_verify(&s.hs.req_finished_key, &s.hash.hash(&th), &req[4..4 + h]);
        if !ok {
            warn!("FINISH: RequesterVerifyData mismatch; session terminated");
            return Err(Fail(ErrorCode::DecryptError, 0, Some(Post2::KillSession)));
        }
        let msg = Writer::header(s.version, rsp::FINISH_RSP, 0, 0).finish();
        s.transcript.extend_from_slice(&req[..4 + h]);
        s.transcript.extend_from_slice(&msg);
        let th2 = s.hash.hash(&s.transcript);
        let ds = keyschedule::data_secrets(s.hash, s.version, &s.hs.handshake_secret, &th2)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        Ok(Reply {
            msg,
            post: Post::EnterApplication(Box::new(ds)),
        })
    }

    fn psk_exchange(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_some() {
            return Err(unexpected());
        }
        let (hash, _) = self.require_negotiated()?;
        let n = &self.conn.neg;
        if n.rsp_caps & caps::PSK_MASK == 0 || n.req_caps & caps::PSK_MASK == 0 {
            return Err(unsupported(req[1]));
        }
        let (Some(aead), true) = (n.aead, n.key_schedule) else {
            return Err(unexpected());
        };
        let ver = n.version;
        let hash_type = req[2];
        let mut r = Reader::new(&req[4..]);
        let req_sid = r.u16().ok_or_else(invalid)?;
        let hint_len = r.u16().ok_or_else(invalid)? as usize;
        let ctx_len = r.u16().ok_or_else(invalid)? as usize;
        let olen = r.u16().ok_or_else(invalid)? as usize;
        if hint_len > 16 || olen > MAX_OPAQUE || ctx_len > 64 {
            return Err(invalid());
        }
        let hint = r.take(hint_len).ok_or_else(invalid)?;
        r.skip(ctx_len).ok_or_else(invalid)?;
        let opaque_in = r.take(olen).ok_or_else(invalid)?;
        let req_len = 4 + r.pos();
        let psk = if hint.is_empty() {
            self.cfg.psks.first()
        } else {
            self.cfg.psks.iter().find(|p| p.hint == hint)
        }
        .ok_or_else(invalid)?
        .key
        .clone();
        let summary = self.summary_hash(hash_type)?;
        let sec_ver = self.select_secured_version(opaque_in)?;
        let session_id = self.new_session_id(req_sid)?;
        let mut rsp_ctx = vec![0u8; hash.size()];
        self.rng.fill(&mut rsp_ctx);
        let hb = if self.session_caps_ok(caps::HBEAT) {
            self.cfg.heartbeat_period
        } else {
            0
        };
        let op = self.rsp_opaque(sec_ver);
        let mut w = Writer::header(ver, rsp::PSK_EXCHANGE_RSP, hb, 0);
        w.u16((session_id >> 16) as u16)
            .u16(0)
            .u16(rsp_ctx.len() as u16)
            .u16(op.len() as u16);
        w.bytes(&summary).bytes(&rsp_ctx).bytes(&op);
        let mut msg = w.finish();
        let mut th = Vec::new();
        th.extend_from_slice(&self.conn.vca);
        th.extend_from_slice(&req[..req_len]);
        th.extend_from_slice(&msg);
        let th1 = hash.hash(&th);
        let hs = keyschedule::handshake_secrets(hash, ver, &psk, true, &th1)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        let verify = hash.hmac(&hs.rsp_finished_key, &th1);
        msg.extend_from_slice(&verify);
        th.extend_from_slice(&verify);
        self.add_session(session_id, true, hs, th, aead, hash, ver)?;
        info!("PSK_EXCHANGE: session {session_id:#010x} handshaking");
        Ok(Reply::new(msg))
    }

    fn psk_finish(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if sid.is_none() {
            return Err(unexpected());
        }
        let s = self.session_mut(sid)?;
        if s.state != SessState::Handshaking || !s.psk {
            return Err(unexpected());
        }
        let h = s.hash.size();
        if req.len() < 4 + h {
            return Err(invalid());
        }
        let mut th = s.transcript.clone();
        th.extend_from_slice(&req[..4]);
        if !s
            .hash
            .hmac_verify(&s.hs.req_finished_key, &s.hash.hash(&th), &req[4..4 + h])
        {
            warn!("PSK_FINISH: RequesterVerifyData mismatch; session terminated");
            return Err(Fail(ErrorCode::DecryptError, 0, Some(Post2::KillSession)));
        }
        let msg = Writer::header(s.version, rsp::PSK_FINISH_RSP, 0, 0).finish();
        s.transcript.extend_from_slice(&req[..4 + h]);
        s.transcript.extend_from_slice(&msg);
        let th2 = s.hash.hash(&s.transcript);
        let ds = keyschedule::data_secrets(s.hash, s.version, &s.hs.handshake_secret, &th2)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        Ok(Reply {
            msg,
            post: Post::EnterApplication(Box::new(ds)),
        })
    }

    fn established_session(&mut self, sid: Option<u32>) -> Result<&mut Session, Fail> {
        let ver = self.conn.neg.version;
        let Some(id) = sid else {
            return Err(if ver >= V12 {
                fail(ErrorCode::SessionRequired)
            } else {
                unexpected()
            });
        };
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(unexpected)?;
        if s.state != SessState::Established {
            return Err(unexpected());
        }
        Ok(s)
    }

    fn heartbeat(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if !self.session_caps_ok(caps::HBEAT) {
            return Err(unsupported(req[1]));
        }
        let s = self.established_session(sid)?;
        Ok(Reply::new(
            Writer::header(s.version, rsp::HEARTBEAT_ACK, 0, 0).finish(),
        ))
    }

    fn key_update(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if !self.session_caps_ok(caps::KEY_UPD) {
            return Err(unsupported(req[1]));
        }
        let s = self.established_session(sid)?;
        let (op, tag) = (req[2], req[3]);
        let repeat = s.last_key_update == Some((op, tag));
        match op {
            1 | 2 => {
                if !repeat {
                    s.channel
                        .update_key(Direction::Request)
                        .map_err(|_| fail(ErrorCode::Unspecified))?;
                    if op == 2 {
                        s.channel
                            .update_key(Direction::Response)
                            .map_err(|_| fail(ErrorCode::Unspecified))?;
                    }
                    s.key_updated = true;
                }
            }
            3 => {
                if !s.key_updated {
                    return Err(invalid());
                }
                s.key_updated = false;
            }
            _ => return Err(invalid()),
        }
        s.last_key_update = Some((op, tag));
        debug!("KEY_UPDATE op {op} tag {tag} on session {:#010x}", s.id);
        Ok(Reply::new(
            Writer::header(s.version, rsp::KEY_UPDATE_ACK, op, tag).finish(),
        ))
    }

    fn end_session(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let s = self.established_session(sid)?;
        let clear_state = req[2] & 0x01 != 0;
        Ok(Reply {
            msg: Writer::header(s.version, rsp::END_SESSION_ACK, 0, 0).finish(),
            post: Post::EndSession { clear_state },
        })
    }

    // ------------------------------------------------------------------
    // Vendor-defined, chunking
    // ------------------------------------------------------------------

    fn vendor_defined(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if self.conn.state < ConnState::Negotiated {
            return Err(unexpected());
        }
        let mut r = Reader::new(&req[4..]);
        let std_id = r.u16().ok_or_else(invalid)?;
        let vlen = r.u8().ok_or_else(invalid)? as usize;
        let vendor_id = r.take(vlen).ok_or_else(invalid)?.to_vec();
        let plen = r.u16().ok_or_else(invalid)? as usize;
        let payload = r.take(plen).ok_or_else(invalid)?.to_vec();
        let version = self.conn.neg.version;
        if let Some(id) = sid {
            if !self
                .sessions
                .iter()
                .any(|s| s.id == id && s.state == SessState::Established)
            {
                return Err(unexpected());
            }
        }
        let Some((key, handler)) = self.vendors.find(std_id, &vendor_id, &payload) else {
            return Err(unsupported(req[1]));
        };
        if key.require_session && sid.is_none() {
            return Err(if version >= V12 {
                fail(ErrorCode::SessionRequired)
            } else {
                unexpected()
            });
        }
        let ctx = VendorContext {
            session_id: sid,
            version,
            standard_id: std_id,
            vendor_id: vendor_id.clone(),
        };
        let out = handler.handle(&ctx, &payload).map_err(fail)?;
        if out.len() > u16::MAX as usize {
            return Err(fail(ErrorCode::Unspecified));
        }
        let mut w = Writer::header(version, rsp::VENDOR_DEFINED_RESPONSE, 0, 0);
        w.u16(std_id)
            .u8(vlen as u8)
            .bytes(&vendor_id)
            .u16(out.len() as u16)
            .bytes(&out);
        Ok(Reply::new(w.finish()))
    }

    fn chunk_get(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if self.conn.state < ConnState::Negotiated || !self.session_caps_ok(caps::CHUNK) {
            return Err(unsupported(req[1]));
        }
        if req.len() < 6 {
            return Err(invalid());
        }
        let handle = req[3];
        let seq = u16::from_le_bytes([req[4], req[5]]);
        let dts = self.conn.neg.req_data_transfer_size as usize;
        let ver = self.conn.neg.version;
        let Some(c) = self.chunk_out.as_mut() else {
            return Err(unexpected());
        };
        if c.handle != handle || c.next_seq != seq || c.session != sid {
            self.chunk_out = None;
            return Err(invalid());
        }
        let hdr = 12 + if seq == 0 { 4 } else { 0 };
        let room = dts.saturating_sub(hdr).max(1);
        let len = room.min(c.data.len() - c.offset);
        let last = c.offset + len == c.data.len();
        let mut w = Writer::header(ver, rsp::CHUNK_RESPONSE, u8::from(last), handle);
        w.u16(seq).u16(0).u32(len as u32);
        if seq == 0 {
            w.u32(c.data.len() as u32);
        }
        w.bytes(&c.data[c.offset..c.offset + len]);
        c.offset += len;
        c.next_seq = c.next_seq.wrapping_add(1);
        if last {
            self.chunk_out = None;
        }
        Ok(Reply::new(w.finish()))
    }

    fn chunk_send(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if self.conn.state < ConnState::Negotiated || !self.session_caps_ok(caps::CHUNK) {
            return Err(unsupported(req[1]));
        }
        let ver = self.conn.neg.version;
        let last = req[2] & 0x01 != 0;
        let handle = req[3];
        let mut r = Reader::new(&req[4..]);
        let seq = r.u16().ok_or_else(invalid)?;
        r.u16().ok_or_else(invalid)?;
        let size = r.u32().ok_or_else(invalid)? as usize;
        let early_error = |this: &mut Self, code: ErrorCode| -> R {
            this.chunk_in = None;
            let mut w = Writer::header(ver, rsp::CHUNK_SEND_ACK, 0x01, handle);
            w.u16(seq).bytes(&error_response(ver, code, 0));
            Ok(Reply::new(w.finish()))
        };
        if seq == 0 {
            let total = r.u32().ok_or_else(invalid)? as usize;
            if total <= self.cfg.data_transfer_size as usize
                || total > self.cfg.max_spdm_msg_size as usize
            {
                return early_error(self, ErrorCode::InvalidRequest);
            }
            self.chunk_in = Some(ChunkIn {
                handle,
                data: Vec::with_capacity(total.min(1 << 16)),
                expected_total: total,
                next_seq: 0,
                session: sid,
            });
        }
        let chunk = match r.take(size) {
            Some(c) if size > 0 => c,
            _ => return early_error(self, ErrorCode::InvalidRequest),
        };
        let Some(ci) = self.chunk_in.as_mut() else {
            return early_error(self, ErrorCode::UnexpectedRequest);
        };
        if ci.handle != handle
            || ci.next_seq != seq
            || ci.session != sid
            || ci.data.len() + size > ci.expected_total
        {
            return early_error(self, ErrorCode::InvalidRequest);
        }
        ci.data.extend_from_slice(chunk);
        ci.next_seq = ci.next_seq.wrapping_add(1);
        let complete = ci.data.len() == ci.expected_total;
        if last != complete {
            return early_error(self, ErrorCode::InvalidRequest);
        }
        let mut w = Writer::header(ver, rsp::CHUNK_SEND_ACK, 0, handle);
        w.u16(seq);
        if !last {
            return Ok(Reply::new(w.finish()));
        }
        let big = self.chunk_in.take().map(|c| c.data).unwrap_or_default();
        let (inner, post) = match self.process(&big, sid, true) {
            Ok(r) => (r.msg, r.post),
            Err(f) => (self.error_msg(f), Post::None),
        };
        w.bytes(&inner);
        Ok(Reply {
            msg: w.finish(),
            post,
        })
    }
}

/// libspdm-compatible consistency checks of the requester's capability flags.
fn check_requester_flags(f: u32, ver: u8) -> bool {
    let bit = |b: u32| f & b != 0;
    let psk = (f >> 10) & 3;
    if psk >= 2 {
        return false;
    }
    if bit(caps::KEY_EX) || psk != 0 {
        if !bit(caps::MAC) && !bit(caps::ENCRYPT) {
            return false;
        }
    } else if bit(caps::MAC)
        || bit(caps::ENCRYPT)
        || bit(caps::HANDSHAKE_IN_THE_CLEAR)
        || bit(caps::HBEAT)
        || bit(caps::KEY_UPD)
    {
        return false;
    }
    if !bit(caps::KEY_EX) && psk == 1 && bit(caps::HANDSHAKE_IN_THE_CLEAR) {
        return false;
    }
    if bit(caps::CERT) || bit(caps::PUB_KEY_ID) {
        if bit(caps::CERT) && bit(caps::PUB_KEY_ID) {
            return false;
        }
        if !bit(caps::CHAL) && !bit(caps::KEY_EX) && ver < V13 {
            return false;
        }
    } else if bit(caps::CHAL) || bit(caps::MUT_AUTH) {
        return false;
    }
    if bit(caps::MUT_AUTH) && !bit(caps::KEY_EX) && !bit(caps::CHAL) {
        return false;
    }
    if ver == V11 && bit(caps::MUT_AUTH) && !bit(caps::ENCAP) {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AsymAlgo;
    use crate::identity::PciIds;
    use crate::rng::DeterministicEntropy;

    fn responder() -> Responder {
        let mut rng = DeterministicEntropy::new(b"unit");
        let id =
            Identity::generate(&[AsymAlgo::EcdsaP256], &PciIds::default(), 1, &mut rng).unwrap();
        Responder::with_entropy(ResponderConfig::default(), id, Box::new(rng))
    }

    #[test]
    fn version_response_and_reset() {
        let mut r = responder();
        assert_eq!(
            r.handle_message(&[0x10, 0x84, 0, 0]),
            vec![0x10, 0x04, 0, 0, 0, 4, 0, 0x10, 0, 0x11, 0, 0x12, 0, 0x13]
        );
        assert_eq!(r.state(), ConnState::AfterVersion);
        // Trailing bytes (DOE padding) are ignored and not part of the transcript.
        assert_eq!(r.handle_message(&[0x10, 0x84, 0, 0, 0, 0, 0, 0])[1], 0x04);
        assert_eq!(r.conn.vca.len(), 4 + 14);
    }

    #[test]
    fn capabilities_are_masked_per_version() {
        let r = responder();
        assert_eq!(r.rsp_caps(V10) & !caps::MASK_10, 0);
        assert_eq!(
            r.rsp_caps(V10),
            caps::CERT | caps::CHAL | caps::MEAS_SIG | caps::MEAS_FRESH
        );
        assert_eq!(r.rsp_caps(V11) & caps::CHUNK, 0);
        assert_ne!(r.rsp_caps(V12) & caps::CHUNK, 0);
        assert_ne!(r.rsp_caps(V13) & caps::PSK_WITH_CONTEXT, 0);
    }

    #[test]
    fn requester_flag_rules() {
        let ok = caps::CERT | caps::CHAL | caps::ENCRYPT | caps::MAC | caps::KEY_EX;
        assert!(check_requester_flags(ok, V12));
        assert!(!check_requester_flags(ok | caps::PSK_MASK, V12));
        assert!(!check_requester_flags(caps::KEY_EX | caps::CERT, V12));
        assert!(!check_requester_flags(caps::HBEAT, V12));
        assert!(!check_requester_flags(caps::CHAL, V12));
        assert!(!check_requester_flags(ok | caps::PUB_KEY_ID, V12));
        assert!(!check_requester_flags(ok | caps::MUT_AUTH, V11));
        assert!(check_requester_flags(
            ok | caps::MUT_AUTH | caps::ENCAP,
            V11
        ));
    }

    #[test]
    fn measurement_blocks() {
        let m = &measurement::default_measurements("9.9", b"cfg")[2];
        let b = m.block(Some(HashAlgo::Sha256), false);
        assert_eq!(b, vec![3, 1, 6, 0, 0x86, 3, 0, b'9', b'.', b'9']);
        let d = measurement::default_measurements("9.9", b"cfg")[0]
            .block(Some(HashAlgo::Sha384), false);
        assert_eq!(&d[..7], &[1, 1, 51, 0, 0x00, 48, 0]);
        assert_eq!(
            measurement::parse_record(&[b.clone(), d.clone()].concat(), 2)
                .unwrap()
                .len(),
            2
        );
        assert!(measurement::parse_record(&b[..5], 1).is_none());
    }

    #[test]
    fn every_request_code_is_answered_without_panic() {
        let mut r = responder();
        for code in 0u8..=255 {
            for len in [0usize, 1, 4, 5, 12, 40, 200] {
                let mut m = vec![0x10u8, code, 0xFF, 0xFF];
                m.resize(len, 0xA5);
                let out = r.handle_message(&m);
                assert!(out.len() >= 4);
            }
        }
        // Same after negotiation, with the negotiated version.
        let mut r = responder();
        r.handle_message(&[0x10, 0x84, 0, 0]);
        let mut c = vec![0x12, 0xE1, 0, 0, 0, 12, 0, 0];
        c.extend_from_slice(
            &(caps::CERT | caps::CHAL | caps::MAC | caps::KEY_EX | caps::CHUNK).to_le_bytes(),
        );
        c.extend_from_slice(&0x1200u32.to_le_bytes());
        c.extend_from_slice(&0x1200u32.to_le_bytes());
        assert_eq!(r.handle_message(&c)[1], rsp::CAPABILITIES);
        let mut a = vec![0x12, 0xE3, 2, 0, 40, 0, 1, 2];
        a.extend_from_slice(&0x10u32.to_le_bytes());
        a.extend_from_slice(&1u32.to_le_bytes());
        a.extend_from_slice(&[0u8; 16]);
        a.extend_from_slice(&[2, 0x20, 0x08, 0, 5, 0x20, 1, 0]);
        assert_eq!(r.handle_message(&a)[1], rsp::ALGORITHMS);
        for code in 0u8..=255 {
            for len in [4usize, 5, 12, 40, 200] {
                let mut m = vec![0x12u8, code, 0, 0];
                m.resize(len, 0x00);
                assert!(r.handle_message(&m).len() >= 4);
                let mut m = vec![0x12u8, code, 0xFF, 0xFF];
                m.resize(len, 0xFF);
                assert!(r.handle_message(&m).len() >= 4);
            }
        }
    }
}
