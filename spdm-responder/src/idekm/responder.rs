//! The IDE_KM responder: decodes requests, checks them and hands them to the
//! device's key store behind [`IdeKmBackend`]; registered with a
//! [`crate::Responder`] as the PCI-SIG protocol 0 vendor handler, which
//! refuses IDE_KM outside a secured session before it reaches this code
//! (SPDM 1.2+: ERROR SessionRequired; 1.0/1.1: ERROR UnexpectedRequest).
//!
//! What each malformed or refused request gets:
//! - a payload that is not a whole IDE_KM request object, an unknown object
//!   ID, a QUERY of the wrong length or for a port that does not exist,
//!   K_SET_GO / K_SET_STOP of the wrong length: ERROR InvalidRequest;
//! - KEY_PROG with a complete header: always KP_ACK, with status
//!   IncorrectLength, UnsupportedPortIndex, UnsupportedValue (reserved
//!   sub-stream value, unknown stream) or UnspecifiedFailure (the slot's key
//!   is armed: it must be retired with K_SET_STOP first);
//! - K_SET_GO / K_SET_STOP for a missing port, a reserved sub-stream or an
//!   unknown stream: ERROR InvalidRequest (K_GOSTOP_ACK has no status field);
//!   K_SET_GO for a slot without a key, or either for a key programmed in
//!   another session: ERROR UnexpectedRequest. Nothing changes in the device
//!   in any of these cases. (K_SET_STOP of an empty slot is acknowledged:
//!   there is nothing left to stop.)

use super::codec::{
    DecodeError, KpAckStatus, QueryResp, Request, Response, StreamHeader, KEY_PROG_LEN,
};
use super::{object, IdeKey, KeySlot};
use crate::error::ErrorCode;
use crate::vendor::{VendorContext, VendorHandler};
use log::{info, warn};

/// Why a K_SET_GO / K_SET_STOP (or KEY_PROG) cannot be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeKmRefusal {
    /// No port with that index.
    UnsupportedPort,
    /// No IDE stream of the port carries that Stream ID.
    UnknownStream,
    /// The slot holds no key (GO), or nothing to stop (STOP).
    NoKey,
    /// The slot's key was programmed in another SPDM session.
    OtherSession,
    /// The slot's key is armed and cannot be replaced (KEY_PROG).
    SlotInUse,
}

impl IdeKmRefusal {
    /// The SPDM error a K_SET_GO / K_SET_STOP refusal is answered with.
    pub fn error_code(self) -> ErrorCode {
        match self {
            IdeKmRefusal::UnsupportedPort | IdeKmRefusal::UnknownStream => {
                ErrorCode::InvalidRequest
            }
            IdeKmRefusal::NoKey | IdeKmRefusal::OtherSession | IdeKmRefusal::SlotInUse => {
                ErrorCode::UnexpectedRequest
            }
        }
    }

    /// The KP_ACK status a KEY_PROG refusal is answered with.
    pub fn kp_ack_status(self) -> KpAckStatus {
        match self {
            IdeKmRefusal::UnsupportedPort => KpAckStatus::UnsupportedPortIndex,
            IdeKmRefusal::UnknownStream => KpAckStatus::UnsupportedValue,
            _ => KpAckStatus::UnspecifiedFailure,
        }
    }
}

/// The device side of IDE_KM: its ports' IDE registers and key slots.
pub trait IdeKmBackend: Send {
    /// The highest port index (0 for a single-port endpoint).
    fn max_port_index(&self) -> u8;
    /// QUERY_RESP for an existing port (`port_index <= max_port_index`).
    fn query(&mut self, port_index: u8) -> QueryResp;
    /// Programs `key` into `slot` of stream `stream_id` on an existing port.
    fn key_prog(
        &mut self,
        session_id: u32,
        port_index: u8,
        stream_id: u8,
        slot: KeySlot,
        key: IdeKey,
    ) -> Result<(), IdeKmRefusal>;
    /// Arms the slot's key (K_SET_GO).
    fn key_set_go(
        &mut self,
        session_id: u32,
        port_index: u8,
        stream_id: u8,
        slot: KeySlot,
    ) -> Result<(), IdeKmRefusal>;
    /// Retires the slot's key (K_SET_STOP): zeroized.
    fn key_set_stop(
        &mut self,
        session_id: u32,
        port_index: u8,
        stream_id: u8,
        slot: KeySlot,
    ) -> Result<(), IdeKmRefusal>;
    /// The SPDM session ended (END_SESSION, a new GET_VERSION, reset): every
    /// key it programmed is zeroized.
    fn session_ended(&mut self, session_id: u32);
}

/// IDE_KM as a [`VendorHandler`] over a device backend.
#[derive(Debug)]
pub struct IdeKmResponder<B> {
    backend: B,
}

impl<B: IdeKmBackend> IdeKmResponder<B> {
    /// A responder for `backend`.
    pub fn new(backend: B) -> Self {
        IdeKmResponder { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Answers one IDE_KM payload received in `session_id`.
    pub fn respond(&mut self, session_id: u32, payload: &[u8]) -> Result<Vec<u8>, ErrorCode> {
        let obj = Request::object_id(payload).map_err(|e| {
            warn!("IDE_KM: {e}");
            ErrorCode::InvalidRequest
        })?;
        // KEY_PROG with a whole header always gets a KP_ACK.
        if obj == object::KEY_PROG {
            if let Some(h) = Request::stream_header(payload) {
                if payload.len() != KEY_PROG_LEN {
                    warn!(
                        "IDE_KM KEY_PROG: {} bytes, expected {KEY_PROG_LEN}",
                        payload.len()
                    );
                    return Ok(kp_ack(h, KpAckStatus::IncorrectLength));
                }
            }
        }
        let req = Request::decode(payload).map_err(|e: DecodeError| {
            warn!("IDE_KM: {e}");
            ErrorCode::InvalidRequest
        })?;
        let max_port = self.backend.max_port_index();
        match req {
            Request::Query { port_index } => {
                if port_index > max_port {
                    warn!("IDE_KM QUERY: port {port_index} (max {max_port})");
                    return Err(ErrorCode::InvalidRequest);
                }
                info!("IDE_KM QUERY port {port_index}");
                Ok(Response::QueryResp(self.backend.query(port_index)).encode())
            }
            Request::KeyProg { header, key } => {
                let status = if header.port_index > max_port {
                    KpAckStatus::UnsupportedPortIndex
                } else {
                    match header.slot() {
                        Err(v) => {
                            warn!("IDE_KM KEY_PROG: reserved sub-stream value {v}");
                            KpAckStatus::UnsupportedValue
                        }
                        Ok(slot) => match self.backend.key_prog(
                            session_id,
                            header.port_index,
                            header.stream_id,
                            slot,
                            key,
                        ) {
                            Ok(()) => KpAckStatus::Success,
                            Err(r) => r.kp_ack_status(),
                        },
                    }
                };
                info!(
                    "IDE_KM KEY_PROG stream {} {} port {}: {status:?}",
                    header.stream_id,
                    slot_name(&header),
                    header.port_index
                );
                Ok(kp_ack(header, status))
            }
            Request::KSetGo(h) | Request::KSetStop(h) => {
                let go = matches!(req, Request::KSetGo(_));
                let what = if go { "K_SET_GO" } else { "K_SET_STOP" };
                let r = if h.port_index > max_port {
                    Err(IdeKmRefusal::UnsupportedPort)
                } else {
                    match h.slot() {
                        Err(_) => Err(IdeKmRefusal::UnknownStream),
                        Ok(slot) if go => {
                            self.backend
                                .key_set_go(session_id, h.port_index, h.stream_id, slot)
                        }
                        Ok(slot) => {
                            self.backend
                                .key_set_stop(session_id, h.port_index, h.stream_id, slot)
                        }
                    }
                };
                match r {
                    Ok(()) => {
                        info!(
                            "IDE_KM {what} stream {} {} port {}",
                            h.stream_id,
                            slot_name(&h),
                            h.port_index
                        );
                        Ok(Response::GoStopAck(h).encode())
                    }
                    Err(e) => {
                        warn!(
                            "IDE_KM {what} stream {} {} port {} refused: {e:?}",
                            h.stream_id,
                            slot_name(&h),
                            h.port_index
                        );
                        Err(e.error_code())
                    }
                }
            }
        }
    }
}

fn kp_ack(header: StreamHeader, status: KpAckStatus) -> Vec<u8> {
    Response::KpAck {
        header,
        status: status as u8,
    }
    .encode()
}

fn slot_name(h: &StreamHeader) -> String {
    h.slot()
        .map(|s| s.name())
        .unwrap_or_else(|v| format!("sub-stream {v}"))
}

impl<B: IdeKmBackend> VendorHandler for IdeKmResponder<B> {
    fn handle(&mut self, ctx: &VendorContext, payload: &[u8]) -> Result<Vec<u8>, ErrorCode> {
        // The registry only routes IDE_KM here inside a session; refuse
        // anyway if a caller registered it without that requirement.
        let Some(sid) = ctx.session_id else {
            return Err(ErrorCode::SessionRequired);
        };
        self.respond(sid, payload)
    }

    fn session_ended(&mut self, session_id: u32) {
        self.backend.session_ended(session_id);
    }
}
