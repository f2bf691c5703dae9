//! The TDISP responder: checks every request and hands it to the device's
//! TDIs behind [`TdispBackend`]; registered with a [`crate::Responder`] as
//! the PCI-SIG protocol 1 vendor handler, which refuses TDISP outside a
//! secured session before it reaches this code (SPDM 1.2+: ERROR
//! SessionRequired; 1.0/1.1: ERROR UnexpectedRequest).
//!
//! Every refused request is answered with TDISP_ERROR (inside
//! VENDOR_DEFINED_RESPONSE), checked in this order, as DMTF's responder
//! library does:
//! 1. a message type that is not a TDISP request, or a request the device
//!    does not support (BIND_P2P_STREAM, UNBIND_P2P_STREAM,
//!    SET_MMIO_ATTRIBUTE, VDM here): UnsupportedRequest, ERROR_DATA = the
//!    message type;
//! 2. a request of the wrong length: InvalidRequest;
//! 3. a TDISPVersion other than 1.0: VersionMismatch;
//! 4. an INTERFACE_ID that names no TDI of the device: InvalidInterface;
//! 5. what the TDI's state machine refuses ([`TdispBackend`]):
//!    InvalidInterfaceState, InvalidRequest, InvalidNonce, ...;
//!    GET_DEVICE_INTERFACE_REPORT with LENGTH 0 or an OFFSET at or past the
//!    end of the report: InvalidRequest.
//!
//! Only a payload too short to carry a TDISP header (there is no header to
//! answer in) gets an SPDM ERROR InvalidRequest. Nothing changes in the
//! device for any refused request.

use super::codec::{Header, InterfaceReport, LockParams, Request, ResponderCaps, Response};
use super::{code, ErrorCode, InterfaceId, TdiState, NONCE_LEN, VERSION_10};
use crate::vendor::{VendorContext, VendorHandler};
use log::{info, warn};

/// The longest report portion one DEVICE_INTERFACE_REPORT carries.
pub const MAX_PORTION: u16 = 0x400;

/// The device side of TDISP: its TDIs and their state machines.
pub trait TdispBackend: Send {
    /// The TDI `id` names (an index the other calls take), or `None`
    /// (InvalidInterface).
    fn interface(&mut self, id: &InterfaceId) -> Option<usize>;
    /// TDISP_CAPABILITIES (the same for every TDI of the device).
    fn capabilities(&self) -> ResponderCaps;
    /// The TDI's state.
    fn state(&mut self, tdi: usize) -> TdiState;
    /// LOCK_INTERFACE_REQUEST from `session` naming the TDI as `id`:
    /// the START_INTERFACE nonce.
    fn lock(
        &mut self,
        session: u32,
        tdi: usize,
        id: InterfaceId,
        params: &LockParams,
    ) -> Result<[u8; NONCE_LEN], ErrorCode>;
    /// The interface report (CONFIG_LOCKED and RUN only).
    fn report(&mut self, tdi: usize) -> Result<InterfaceReport, ErrorCode>;
    /// START_INTERFACE_REQUEST with `nonce`.
    fn start(&mut self, session: u32, tdi: usize, nonce: &[u8; NONCE_LEN])
        -> Result<(), ErrorCode>;
    /// STOP_INTERFACE_REQUEST.
    fn stop(&mut self, session: u32, tdi: usize) -> Result<(), ErrorCode>;
    /// The SPDM session ended.
    fn session_ended(&mut self, session: u32);
}

/// TDISP as a [`VendorHandler`] over a device backend.
#[derive(Debug)]
pub struct TdispResponder<B> {
    backend: B,
}

fn error(h: &Header, code: ErrorCode, data: u32) -> Vec<u8> {
    Response::Error {
        code: code as u32,
        data,
    }
    .encode(VERSION_10, h.interface)
}

fn name(t: u8) -> &'static str {
    match t {
        code::GET_VERSION => "GET_TDISP_VERSION",
        code::GET_CAPABILITIES => "GET_TDISP_CAPABILITIES",
        code::LOCK_INTERFACE => "LOCK_INTERFACE_REQUEST",
        code::GET_DEVICE_INTERFACE_REPORT => "GET_DEVICE_INTERFACE_REPORT",
        code::GET_DEVICE_INTERFACE_STATE => "GET_DEVICE_INTERFACE_STATE",
        code::START_INTERFACE => "START_INTERFACE_REQUEST",
        code::STOP_INTERFACE => "STOP_INTERFACE_REQUEST",
        code::BIND_P2P_STREAM => "BIND_P2P_STREAM_REQUEST",
        code::UNBIND_P2P_STREAM => "UNBIND_P2P_STREAM_REQUEST",
        code::SET_MMIO_ATTRIBUTE => "SET_MMIO_ATTRIBUTE_REQUEST",
        code::VDM => "VDM_REQUEST",
        _ => "message",
    }
}

impl<B: TdispBackend> TdispResponder<B> {
    /// A responder for `backend`.
    pub fn new(backend: B) -> Self {
        TdispResponder { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Answers one TDISP payload received in `session`.
    pub fn respond(&mut self, session: u32, payload: &[u8]) -> Result<Vec<u8>, crate::ErrorCode> {
        let (h, body) = Header::decode(payload).map_err(|e| {
            warn!("TDISP: {e}");
            crate::ErrorCode::InvalidRequest
        })?;
        let t = h.message_type;
        let refuse = |code: ErrorCode, data: u32, why: &str| {
            warn!(
                "TDISP {} (0x{t:02x}) for {}: {why}: TDISP_ERROR {code:?}",
                name(t),
                h.interface
            );
            Ok(error(&h, code, data))
        };
        let caps = self.backend.capabilities();
        if !Request::is_request_type(t) || !caps.supports(t) {
            return refuse(ErrorCode::UnsupportedRequest, u32::from(t), "not supported");
        }
        let req = match Request::decode_body(&h, body) {
            Ok(r) => r,
            Err(e) => return refuse(ErrorCode::InvalidRequest, 0, &e.to_string()),
        };
        if h.version != VERSION_10 {
            return refuse(
                ErrorCode::VersionMismatch,
                0,
                &format!("TDISPVersion 0x{:02x}", h.version),
            );
        }
        let Some(tdi) = self.backend.interface(&h.interface) else {
            return refuse(ErrorCode::InvalidInterface, 0, "no such interface");
        };
        let rsp = match req {
            Request::GetVersion => Ok(Response::Version(vec![VERSION_10])),
            Request::GetCapabilities { tsm_caps } => {
                info!("TDISP: TSM_CAPS 0x{tsm_caps:08x}");
                Ok(Response::Capabilities(caps))
            }
            Request::LockInterface(p) => self
                .backend
                .lock(session, tdi, h.interface, &p)
                .map(|nonce| Response::LockInterface { nonce }),
            Request::GetDeviceInterfaceReport { offset, length } => {
                self.backend.report(tdi).and_then(|rep| {
                    let bytes = rep.encode();
                    let (offset, length) = (offset as usize, length.min(MAX_PORTION) as usize);
                    if length == 0 || offset >= bytes.len() {
                        return Err(ErrorCode::InvalidRequest);
                    }
                    let end = (offset + length).min(bytes.len());
                    Ok(Response::DeviceInterfaceReport {
                        portion: bytes[offset..end].to_vec(),
                        remainder: u16::try_from(bytes.len() - end).unwrap_or(u16::MAX),
                    })
                })
            }
            Request::GetDeviceInterfaceState => {
                Ok(Response::DeviceInterfaceState(self.backend.state(tdi) as u8))
            }
            Request::StartInterface { nonce } => self
                .backend
                .start(session, tdi, &nonce)
                .map(|()| Response::StartInterface),
            Request::StopInterface => self
                .backend
                .stop(session, tdi)
                .map(|()| Response::StopInterface),
            // Only reached if a backend advertises them.
            Request::BindP2pStream { .. }
            | Request::UnbindP2pStream { .. }
            | Request::SetMmioAttribute(_)
            | Request::Vdm(_) => Err(ErrorCode::UnsupportedRequest),
        };
        match rsp {
            Ok(r) => {
                let state = self.backend.state(tdi);
                info!("TDISP {} for {}: ok, TDI {state}", name(t), h.interface);
                Ok(r.encode(VERSION_10, h.interface))
            }
            Err(code) => {
                let state = self.backend.state(tdi);
                refuse(code, 0, &format!("refused in {state}"))
            }
        }
    }
}

impl<B: TdispBackend> VendorHandler for TdispResponder<B> {
    fn handle(&mut self, ctx: &VendorContext, payload: &[u8]) -> Result<Vec<u8>, crate::ErrorCode> {
        // The registry only routes TDISP here inside a session; refuse
        // anyway if a caller registered it without that requirement.
        let Some(sid) = ctx.session_id else {
            return Err(crate::ErrorCode::SessionRequired);
        };
        self.respond(sid, payload)
    }

    fn session_ended(&mut self, session_id: u32) {
        self.backend.session_ended(session_id);
    }
}
