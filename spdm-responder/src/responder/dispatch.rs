//! The dispatcher: the checks every request goes through, in one order, before
//! its handler runs (see CONFORMANCE.md "Error precedence").
//!
//! 1. framing (a 4-byte header) -> InvalidRequest; a request other than
//!    CHUNK_GET/CHUNK_SEND (or GET_VERSION) during a chunked transfer ->
//!    UnexpectedRequest;
//! 2. SPDMVersion (GET_VERSION is 1.0; before CAPABILITIES only GET_CAPABILITIES
//!    with a version VERSION offered; afterwards the negotiated one) ->
//!    VersionMismatch / UnexpectedRequest;
//! 3. request code unknown, or newer than the negotiated version ->
//!    UnsupportedRequest (ErrorData = the code);
//! 4. the capability the request needs was not negotiated -> UnsupportedRequest;
//! 5. connection state (VCA not complete) -> UnexpectedRequest;
//! 6. session phase (DSP0274 1.3 "SPDM request and response code issuance
//!    allowance") -> SessionRequired (1.2+) / UnexpectedRequest;
//! 7. message larger than our DataTransferSize (1.2+) -> RequestTooLarge;
//! 8. the handler's own field checks.

use super::{
    fail, invalid, unexpected, unsupported, ConnState, Fail, Reply, Responder, SessState, R,
};
use crate::codec::{caps, error_response, RequestCode, V10, V12};
use crate::error::ErrorCode;

/// What a request needs negotiated before it is supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// Nothing beyond the version that defines it.
    Nothing,
    /// A capability this responder advertised.
    Responder(u32),
    /// A capability both sides advertised.
    Both(u32),
    /// A request this responder does not implement (it advertises none of
    /// the capabilities behind it).
    Never,
}

/// Where a request may be sent (DSP0274 1.3, "SPDM request and response code
/// issuance allowance"): outside a session, inside a session in its handshake
/// phase, inside a session in its application phase.
#[derive(Clone, Copy, Debug)]
struct Allowed {
    outside: bool,
    handshake: bool,
    application: bool,
}

const OUTSIDE: Allowed = Allowed {
    outside: true,
    handshake: false,
    application: false,
};
const OUTSIDE_OR_APP: Allowed = Allowed {
    outside: true,
    handshake: false,
    application: true,
};
const HANDSHAKE: Allowed = Allowed {
    outside: false,
    handshake: true,
    application: false,
};
const APP: Allowed = Allowed {
    outside: false,
    handshake: false,
    application: true,
};
const ANYWHERE: Allowed = Allowed {
    outside: true,
    handshake: true,
    application: true,
};

/// The rule of a request code: what it needs negotiated and where it may come.
fn rule(code: RequestCode) -> (Needs, Allowed) {
    use RequestCode::*;
    match code {
        GetVersion | GetCapabilities | NegotiateAlgorithms => (Needs::Nothing, OUTSIDE),
        GetDigests | GetCertificate => (Needs::Responder(caps::CERT), OUTSIDE_OR_APP),
        Challenge => (Needs::Responder(caps::CHAL), OUTSIDE),
        GetMeasurements => (Needs::Responder(caps::MEAS_MASK), OUTSIDE_OR_APP),
        KeyExchange => (Needs::Both(caps::KEY_EX), OUTSIDE),
        // Without HANDSHAKE_IN_THE_CLEAR (never advertised here) FINISH travels
        // inside the session it finishes.
        Finish => (Needs::Both(caps::KEY_EX), HANDSHAKE),
        PskExchange => (Needs::Both(caps::PSK_MASK), OUTSIDE),
        PskFinish => (Needs::Both(caps::PSK_MASK), HANDSHAKE),
        Heartbeat => (Needs::Both(caps::HBEAT), APP),
        KeyUpdate => (Needs::Both(caps::KEY_UPD), APP),
        EndSession => (Needs::Nothing, APP),
        VendorDefinedRequest => (Needs::Nothing, OUTSIDE_OR_APP),
        RespondIfReady => (Needs::Nothing, ANYWHERE),
        ChunkSend | ChunkGet => (Needs::Both(caps::CHUNK), ANYWHERE),
        GetEncapsulatedRequest
        | DeliverEncapsulatedResponse
        | GetCsr
        | SetCertificate
        | GetEndpointInfo
        | GetSupportedEventTypes
        | SubscribeEventTypes
        | SendEvent
        | GetMeasurementExtensionLog
        | GetKeyPairInfo
        | SetKeyPairInfo
        | SlotManagement => (Needs::Never, ANYWHERE),
    }
}

impl Responder {
    /// SPDMVersion of an ERROR answering `req` (DSP0274 1.3 "SPDM version",
    /// "ERROR response message"): 1.0 for GET_VERSION and before a version is
    /// selected; the version of a GET_CAPABILITIES that selects a version we
    /// offered; the negotiated version afterwards.
    pub(super) fn error_version(&self, req: &[u8]) -> u8 {
        let code = req.get(1).copied().and_then(RequestCode::from_u8);
        match (code, self.conn.state) {
            (Some(RequestCode::GetVersion), _) => V10,
            (Some(RequestCode::GetCapabilities), ConnState::AfterVersion)
                if self.cfg.versions.contains(&req[0]) =>
            {
                req[0]
            }
            (_, s) if s >= ConnState::AfterCapabilities => self.conn.neg.version,
            _ => V10,
        }
    }

    /// One request in, one response out (an ERROR when a check fails).
    pub(super) fn respond(&mut self, req: &[u8], sid: Option<u32>, from_chunk: bool) -> Reply {
        let version = self.error_version(req);
        match self.process(req, sid, from_chunk) {
            Ok(r) => r,
            Err(Fail(code, data, kill)) => {
                log::debug!("answering ERROR {code:?} data {data:#04x}");
                Reply {
                    msg: error_response(version, code, data),
                    post: if kill.is_some() {
                        super::Post::KillSession
                    } else {
                        super::Post::None
                    },
                }
            }
        }
    }

    fn process(&mut self, req: &[u8], sid: Option<u32>, from_chunk: bool) -> R {
        if req.len() < 4 {
            return Err(invalid());
        }
        let (ver, code_u8) = (req[0], req[1]);
        let code = RequestCode::from_u8(code_u8);
        // DSP0274 1.3 CHUNK_SEND / CHUNK_GET: a chunked transfer is not
        // interrupted by other requests (GET_VERSION excepted); they get
        // UnexpectedRequest and the transfer goes on.
        if !from_chunk && code != Some(RequestCode::GetVersion) {
            let other_than = |c| code != Some(c);
            if (self.chunk_out.is_some() && other_than(RequestCode::ChunkGet))
                || (self.chunk_in.is_some() && other_than(RequestCode::ChunkSend))
            {
                return Err(unexpected());
            }
        }
        self.check_version(ver, code_u8)?;
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
        let (needs, allowed) = rule(code);
        self.check_needs(needs, code_u8)?;
        if !matches!(
            code,
            RequestCode::GetVersion
                | RequestCode::GetCapabilities
                | RequestCode::NegotiateAlgorithms
        ) && self.conn.state < ConnState::Negotiated
        {
            return Err(unexpected());
        }
        self.check_allowed(allowed, sid, version)?;
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
        self.reset_transcripts_for(code, sid);
        let r = match code {
            RequestCode::GetVersion => self.get_version(req),
            RequestCode::GetCapabilities => self.get_capabilities(req),
            RequestCode::NegotiateAlgorithms => self.negotiate_algorithms(req),
            RequestCode::GetDigests => self.get_digests(req, sid),
            RequestCode::GetCertificate => self.get_certificate(req, sid),
            RequestCode::Challenge => self.challenge(req),
            RequestCode::GetMeasurements => self.get_measurements(req, sid),
            RequestCode::KeyExchange => self.key_exchange(req),
            RequestCode::Finish => self.finish(req, sid),
            RequestCode::PskExchange => self.psk_exchange(req),
            RequestCode::PskFinish => self.psk_finish(req, sid),
            RequestCode::Heartbeat => self.heartbeat(sid),
            RequestCode::KeyUpdate => self.key_update(req, sid),
            RequestCode::EndSession => self.end_session(req, sid),
            RequestCode::VendorDefinedRequest => self.vendor_defined(req, sid),
            RequestCode::RespondIfReady => self.respond_if_ready(req, sid),
            RequestCode::ChunkSend => self.chunk_send(req, sid),
            RequestCode::ChunkGet => self.chunk_get(req, sid),
            _ => Err(unsupported(code_u8)),
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

    /// Step 2: SPDMVersion of the request against the connection state.
    fn check_version(&self, ver: u8, raw_code: u8) -> Result<(), Fail> {
        let state = self.conn.state;
        let code = RequestCode::from_u8(raw_code);
        match code {
            Some(RequestCode::GetVersion) if ver != V10 => Err(fail(ErrorCode::VersionMismatch)),
            Some(RequestCode::GetVersion) => Ok(()),
            _ if state < ConnState::AfterVersion => Err(unexpected()),
            Some(RequestCode::GetCapabilities) if state == ConnState::AfterVersion => {
                if self.cfg.versions.contains(&ver) {
                    Ok(())
                } else {
                    Err(fail(ErrorCode::VersionMismatch))
                }
            }
            // Only GET_CAPABILITIES may follow VERSION.
            None if state == ConnState::AfterVersion => Err(unsupported(raw_code)),
            _ if state == ConnState::AfterVersion => Err(unexpected()),
            _ if ver != self.conn.neg.version => Err(fail(ErrorCode::VersionMismatch)),
            _ => Ok(()),
        }
    }

    /// Step 4: the capability behind the request.
    fn check_needs(&self, needs: Needs, code: u8) -> Result<(), Fail> {
        let n = &self.conn.neg;
        let ok = match needs {
            Needs::Nothing => true,
            Needs::Responder(bit) => n.rsp_caps & bit != 0,
            Needs::Both(bit) => n.rsp_caps & bit != 0 && n.req_caps & bit != 0,
            Needs::Never => false,
        };
        if ok || self.conn.state < ConnState::AfterCapabilities {
            Ok(())
        } else {
            Err(unsupported(code))
        }
    }

    /// Step 6: the session phase the request arrived in.
    fn check_allowed(&self, allowed: Allowed, sid: Option<u32>, version: u8) -> Result<(), Fail> {
        let Some(id) = sid else {
            if allowed.outside {
                return Ok(());
            }
            // DSP0274 1.2 added SessionRequired; 1.1 has no better code.
            return Err(if version >= V12 {
                fail(ErrorCode::SessionRequired)
            } else {
                unexpected()
            });
        };
        let phase = self.sessions.iter().find(|s| s.id == id).map(|s| s.state);
        let ok = match phase {
            Some(SessState::Handshaking) => allowed.handshake,
            Some(SessState::Established) => allowed.application,
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(unexpected())
        }
    }

    pub(super) fn message_m_mut(&mut self, sid: Option<u32>) -> &mut Vec<u8> {
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
}
