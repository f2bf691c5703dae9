//! TDISP from the requester side: a TSM (or a test) locks, inspects, starts
//! and stops a device's interface over an established SPDM session. Every
//! response is checked the way DMTF's requester library checks it (version,
//! message type, echoed INTERFACE_ID, exact lengths); the report is read in
//! portions until REMAINDER_LENGTH is 0, with the total checked on every
//! portion.

use super::codec::{InterfaceReport, LockParams, Request, ResponderCaps, Response};
use super::{ErrorCode, InterfaceId, TdiState, NONCE_LEN, VERSION_10};
use crate::error::RequesterError;
use crate::requester::{Requester, Transport};
use crate::vendor::{PCISIG_VENDOR_ID, STANDARD_ID_PCISIG};
use thiserror::Error;

/// The portion length asked for per GET_DEVICE_INTERFACE_REPORT.
pub const PORTION: u16 = 0x200;
/// The largest report the requester accepts.
pub const MAX_REPORT: usize = 0x10000;

/// Why a TDISP request failed.
#[derive(Debug, Error)]
pub enum TdispError {
    /// The SPDM exchange failed (or the device answered an SPDM ERROR).
    #[error(transparent)]
    Spdm(#[from] RequesterError),
    /// The device answered TDISP_ERROR.
    #[error("TDISP_ERROR {} (0x{raw:x}), data 0x{data:x}", code.map_or("unknown", error_name))]
    Error {
        /// The code, if it is a defined one.
        code: Option<ErrorCode>,
        /// ERROR_CODE as received.
        raw: u32,
        /// ERROR_DATA.
        data: u32,
    },
    /// A response that does not fit the request.
    #[error("malformed TDISP response: {0}")]
    Malformed(&'static str),
}

impl TdispError {
    /// The TDISP_ERROR code, if the device answered one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            TdispError::Error { code, .. } => *code,
            _ => None,
        }
    }
}

/// The spec's name of a TDISP_ERROR code.
pub fn error_name(c: ErrorCode) -> &'static str {
    match c {
        ErrorCode::InvalidRequest => "INVALID_REQUEST",
        ErrorCode::Busy => "BUSY",
        ErrorCode::InvalidInterfaceState => "INVALID_INTERFACE_STATE",
        ErrorCode::Unspecified => "UNSPECIFIED",
        ErrorCode::UnsupportedRequest => "UNSUPPORTED_REQUEST",
        ErrorCode::VersionMismatch => "VERSION_MISMATCH",
        ErrorCode::InvalidInterface => "INVALID_INTERFACE",
        ErrorCode::InvalidNonce => "INVALID_NONCE",
        ErrorCode::InsufficientEntropy => "INSUFFICIENT_ENTROPY",
        ErrorCode::InvalidDeviceConfiguration => "INVALID_DEVICE_CONFIGURATION",
    }
}

fn malformed(what: &'static str) -> TdispError {
    TdispError::Malformed(what)
}

impl<T: Transport> Requester<T> {
    /// Sends one TDISP request about `iface` in session `sid`; a TDISP_ERROR
    /// answer becomes [`TdispError::Error`].
    pub fn tdisp(
        &mut self,
        sid: u32,
        iface: InterfaceId,
        req: &Request,
    ) -> Result<Response, TdispError> {
        let payload = req.encode(VERSION_10, iface);
        let r = self.vendor_request(
            Some(sid),
            STANDARD_ID_PCISIG,
            &PCISIG_VENDOR_ID.to_le_bytes(),
            &payload,
        )?;
        let (h, rsp) = Response::decode(&r).map_err(|_| malformed("TDISP response"))?;
        if h.version != VERSION_10 {
            return Err(malformed("TDISPVersion"));
        }
        if h.interface.function_id != iface.function_id {
            return Err(malformed("INTERFACE_ID not echoed"));
        }
        match rsp {
            Response::Error { code, data } => Err(TdispError::Error {
                code: ErrorCode::from_u32(code),
                raw: code,
                data,
            }),
            rsp if rsp.message_type() == req.message_type() & 0x7f => Ok(rsp),
            _ => Err(malformed("response type does not match the request")),
        }
    }

    /// GET_TDISP_VERSION: the versions the device supports.
    pub fn tdisp_get_version(
        &mut self,
        sid: u32,
        iface: InterfaceId,
    ) -> Result<Vec<u8>, TdispError> {
        match self.tdisp(sid, iface, &Request::GetVersion)? {
            Response::Version(v) if v.contains(&VERSION_10) => Ok(v),
            _ => Err(malformed("TDISP_VERSION without 1.0")),
        }
    }

    /// GET_TDISP_CAPABILITIES.
    pub fn tdisp_get_capabilities(
        &mut self,
        sid: u32,
        iface: InterfaceId,
        tsm_caps: u32,
    ) -> Result<ResponderCaps, TdispError> {
        match self.tdisp(sid, iface, &Request::GetCapabilities { tsm_caps })? {
            Response::Capabilities(c) => Ok(c),
            _ => Err(malformed("TDISP_CAPABILITIES")),
        }
    }

    /// LOCK_INTERFACE_REQUEST: the START_INTERFACE nonce.
    pub fn tdisp_lock(
        &mut self,
        sid: u32,
        iface: InterfaceId,
        params: &LockParams,
    ) -> Result<[u8; NONCE_LEN], TdispError> {
        match self.tdisp(sid, iface, &Request::LockInterface(*params))? {
            Response::LockInterface { nonce } => Ok(nonce),
            _ => Err(malformed("LOCK_INTERFACE_RESPONSE")),
        }
    }

    /// GET_DEVICE_INTERFACE_STATE.
    pub fn tdisp_get_state(
        &mut self,
        sid: u32,
        iface: InterfaceId,
    ) -> Result<TdiState, TdispError> {
        match self.tdisp(sid, iface, &Request::GetDeviceInterfaceState)? {
            Response::DeviceInterfaceState(s) => {
                TdiState::from_u8(s).ok_or(malformed("TDI_STATE value"))
            }
            _ => Err(malformed("DEVICE_INTERFACE_STATE")),
        }
    }

    /// The whole interface report, read `portion` bytes at a time, as raw
    /// bytes.
    pub fn tdisp_get_report_bytes(
        &mut self,
        sid: u32,
        iface: InterfaceId,
        portion: u16,
    ) -> Result<Vec<u8>, TdispError> {
        let mut out: Vec<u8> = Vec::new();
        let mut total = None;
        loop {
            let offset = u16::try_from(out.len()).map_err(|_| malformed("report too long"))?;
            let length = match total {
                Some(t) => portion.min(u16::try_from(t - out.len()).unwrap_or(u16::MAX)),
                None => portion,
            };
            let req = Request::GetDeviceInterfaceReport { offset, length };
            let Response::DeviceInterfaceReport {
                portion: p,
                remainder,
            } = self.tdisp(sid, iface, &req)?
            else {
                return Err(malformed("DEVICE_INTERFACE_REPORT"));
            };
            if p.is_empty() || p.len() > length as usize {
                return Err(malformed("PORTION_LENGTH"));
            }
            let t = out.len() + p.len() + remainder as usize;
            if *total.get_or_insert(t) != t || t > MAX_REPORT {
                return Err(malformed("REMAINDER_LENGTH inconsistent"));
            }
            out.extend_from_slice(&p);
            if remainder == 0 {
                return Ok(out);
            }
        }
    }

    /// The interface report, parsed.
    pub fn tdisp_get_report(
        &mut self,
        sid: u32,
        iface: InterfaceId,
    ) -> Result<InterfaceReport, TdispError> {
        let b = self.tdisp_get_report_bytes(sid, iface, PORTION)?;
        InterfaceReport::decode(&b).map_err(|_| malformed("interface report"))
    }

    /// START_INTERFACE_REQUEST.
    pub fn tdisp_start(
        &mut self,
        sid: u32,
        iface: InterfaceId,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<(), TdispError> {
        match self.tdisp(sid, iface, &Request::StartInterface { nonce: *nonce })? {
            Response::StartInterface => Ok(()),
            _ => Err(malformed("START_INTERFACE_RESPONSE")),
        }
    }

    /// STOP_INTERFACE_REQUEST.
    pub fn tdisp_stop(&mut self, sid: u32, iface: InterfaceId) -> Result<(), TdispError> {
        match self.tdisp(sid, iface, &Request::StopInterface)? {
            Response::StopInterface => Ok(()),
            _ => Err(malformed("STOP_INTERFACE_RESPONSE")),
        }
    }
}
