//! TDISP messages as bytes: the VENDOR_DEFINED payload, starting with the
//! PCI-SIG protocol ID byte 0x01, then the TDISP message (all fields
//! little-endian, as DMTF libspdm's `pci_tdisp.h` packs them).
//!
//! ```text
//! header (16)                 version | type | rsvd[2] | FUNCTION_ID u32 | rsvd u64
//! GET_TDISP_VERSION           header                                             16
//! TDISP_VERSION               header | count u8 | versions[count]                17+n
//! GET_TDISP_CAPABILITIES      header | TSM_CAPS u32                              20
//! TDISP_CAPABILITIES          header | DSM_CAPS u32 | REQ_MSGS_SUPPORTED[16] | LOCK_FLAGS u16
//!                             | rsvd[3] | DEV_ADDR_WIDTH | NUM_REQ_THIS | NUM_REQ_ALL  44
//! LOCK_INTERFACE_REQUEST      header | FLAGS u16 | DEFAULT_STREAM_ID | rsvd
//!                             | MMIO_REPORTING_OFFSET u64 | BIND_P2P_ADDRESS_MASK u64  36
//! LOCK_INTERFACE_RESPONSE     header | START_INTERFACE_NONCE[32]                 48
//! GET_DEVICE_INTERFACE_REPORT header | OFFSET u16 | LENGTH u16                   20
//! DEVICE_INTERFACE_REPORT     header | PORTION_LENGTH u16 | REMAINDER_LENGTH u16 | REPORT[portion]
//! GET_DEVICE_INTERFACE_STATE  header                                             16
//! DEVICE_INTERFACE_STATE      header | TDI_STATE u8                              17
//! START_INTERFACE_REQUEST     header | START_INTERFACE_NONCE[32]                 48
//! START/STOP_INTERFACE_RSP    header                                             16
//! STOP_INTERFACE_REQUEST      header                                             16
//! BIND/UNBIND_P2P_STREAM      header | P2P_STREAM_ID u8                          17
//! SET_MMIO_ATTRIBUTE_REQUEST  header | MMIO_RANGE (16)                           32
//! VDM_REQUEST                 header | REGISTRY_ID | VENDOR_ID_LEN | VENDOR_ID | data
//! TDISP_ERROR                 header | ERROR_CODE u32 | ERROR_DATA u32 | extended 24+
//! ```
//!
//! The interface report (the bytes DEVICE_INTERFACE_REPORT carries in
//! portions):
//!
//! ```text
//! INTERFACE_INFO u16 | rsvd u16 | MSI_X_MESSAGE_CONTROL u16 | LNR_CONTROL u16 | TPH_CONTROL u32
//! | MMIO_RANGE_COUNT u32 | MMIO_RANGE[count] (FIRST_PAGE u64 | NUMBER_OF_PAGES u32
//! | RANGE_ATTRIBUTES u16 | RANGE_ID u16) | DEVICE_SPECIFIC_INFO_LEN u32 | DEVICE_SPECIFIC_INFO
//! ```
//! Reserved bytes are sent as zero and ignored on receipt.

use super::{code, InterfaceId, NONCE_LEN};
use crate::codec::{Reader, Writer};
use crate::vendor::PCI_PROTOCOL_TDISP;
use thiserror::Error;

/// Length of the TDISP message header.
pub const HEADER_LEN: usize = 16;
/// Length of an MMIO_RANGE.
pub const MMIO_RANGE_LEN: usize = 16;
/// Length of the interface report's fixed part (before the ranges).
pub const REPORT_FIXED_LEN: usize = 16;

/// The header of every TDISP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// TDISPVersion (0x10).
    pub version: u8,
    /// Message type.
    pub message_type: u8,
    /// The interface the message is about.
    pub interface: InterfaceId,
}

impl Header {
    /// Decodes the header of a TDISP vendor payload (protocol byte first);
    /// returns it and the body after it.
    pub fn decode(payload: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
        match payload.first() {
            Some(&PCI_PROTOCOL_TDISP) => {}
            other => return Err(DecodeError::NotTdisp(other.copied())),
        }
        let m = &payload[1..];
        if m.len() < HEADER_LEN {
            return Err(DecodeError::Short(m.len()));
        }
        let mut r = Reader::new(m);
        let version = r.u8().unwrap_or(0);
        let message_type = r.u8().unwrap_or(0);
        r.skip(2);
        let function_id = r.u32().unwrap_or(0);
        let reserved = u64::from_le_bytes(r.array::<8>().unwrap_or_default());
        Ok((
            Header {
                version,
                message_type,
                interface: InterfaceId {
                    function_id,
                    reserved,
                },
            },
            &m[HEADER_LEN..],
        ))
    }

    /// A writer holding the protocol byte and this header.
    fn writer(&self) -> Writer {
        let mut w = Writer::new();
        w.u8(PCI_PROTOCOL_TDISP)
            .u8(self.version)
            .u8(self.message_type)
            .zeros(2)
            .u32(self.interface.function_id)
            .bytes(&self.interface.reserved.to_le_bytes());
        w
    }
}

/// LOCK_INTERFACE_REQUEST parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LockParams {
    /// FLAGS (see [`super::lock_flags`]).
    pub flags: u16,
    /// The Stream ID of the selective IDE stream the TDI's traffic uses by
    /// default.
    pub default_stream_id: u8,
    /// Added to every MMIO address the interface report gives.
    pub mmio_reporting_offset: u64,
    /// Address mask for peer-to-peer binding (with BIND_P2P).
    pub bind_p2p_address_mask: u64,
}

/// TDISP_CAPABILITIES of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResponderCaps {
    /// DSM_CAPS.
    pub dsm_caps: u32,
    /// REQ_MSGS_SUPPORTED: bit N set when request code 80h + N is
    /// supported (0xFE in byte 0: GET_TDISP_VERSION .. STOP_INTERFACE, as
    /// DMTF's responder sample and intel/tee-io-validator expect).
    pub req_msgs_supported: [u8; 16],
    /// LOCK_INTERFACE_FLAGS_SUPPORTED.
    pub lock_flags_supported: u16,
    /// DEV_ADDR_WIDTH: address bits the device's DMA can generate.
    pub dev_addr_width: u8,
    /// NUM_REQ_THIS: outstanding requests the device accepts for this TDI.
    pub num_req_this: u8,
    /// NUM_REQ_ALL: outstanding requests across all its TDIs.
    pub num_req_all: u8,
}

impl ResponderCaps {
    /// Whether REQ_MSGS_SUPPORTED has request code `code`.
    pub fn supports(&self, code: u8) -> bool {
        let bit = code.wrapping_sub(0x80) as usize;
        bit < 128 && self.req_msgs_supported[bit / 8] & (1 << (bit % 8)) != 0
    }

    /// REQ_MSGS_SUPPORTED with exactly `codes`.
    pub fn msgs(codes: &[u8]) -> [u8; 16] {
        let mut m = [0u8; 16];
        for &c in codes {
            let bit = c.wrapping_sub(0x80) as usize;
            if bit < 128 {
                m[bit / 8] |= 1 << (bit % 8);
            }
        }
        m
    }
}

/// One MMIO range of the interface report (4 KiB pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmioRange {
    /// First page: (address + MMIO_REPORTING_OFFSET) >> 12.
    pub first_page: u64,
    /// Number of pages.
    pub number_of_pages: u32,
    /// RANGE_ATTRIBUTES (see [`super::range_attr`]).
    pub attributes: u16,
    /// RANGE_ID (trustdev: the BAR index).
    pub range_id: u16,
}

impl MmioRange {
    fn encode(&self, w: &mut Writer) {
        w.bytes(&self.first_page.to_le_bytes())
            .u32(self.number_of_pages)
            .u16(self.attributes)
            .u16(self.range_id);
    }

    fn decode(r: &mut Reader<'_>) -> Option<MmioRange> {
        Some(MmioRange {
            first_page: u64::from_le_bytes(r.array::<8>()?),
            number_of_pages: r.u32()?,
            attributes: r.u16()?,
            range_id: r.u16()?,
        })
    }
}

/// The device interface report (TDISP's DEVICE_INTERFACE_REPORT structure).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InterfaceReport {
    /// INTERFACE_INFO (see [`super::interface_info`]).
    pub interface_info: u16,
    /// MSI-X Message Control as locked (with LOCK_MSIX), else 0.
    pub msix_message_control: u16,
    /// LN Requester Control (0: not supported).
    pub lnr_control: u16,
    /// TPH Requester Control (0: not supported).
    pub tph_control: u32,
    /// The TDI's MMIO ranges, in address order.
    pub ranges: Vec<MmioRange>,
    /// Device-specific information.
    pub device_specific: Vec<u8>,
}

impl InterfaceReport {
    /// The report's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.interface_info)
            .u16(0)
            .u16(self.msix_message_control)
            .u16(self.lnr_control)
            .u32(self.tph_control)
            .u32(self.ranges.len() as u32);
        for r in &self.ranges {
            r.encode(&mut w);
        }
        w.u32(self.device_specific.len() as u32)
            .bytes(&self.device_specific);
        w.finish()
    }

    /// Parses report bytes; the length must be exact.
    pub fn decode(b: &[u8]) -> Result<InterfaceReport, DecodeError> {
        let bad = || DecodeError::Report(b.len());
        let mut r = Reader::new(b);
        let interface_info = r.u16().ok_or_else(bad)?;
        r.skip(2).ok_or_else(bad)?;
        let msix_message_control = r.u16().ok_or_else(bad)?;
        let lnr_control = r.u16().ok_or_else(bad)?;
        let tph_control = r.u32().ok_or_else(bad)?;
        let n = r.u32().ok_or_else(bad)? as usize;
        if n > r.remaining() / MMIO_RANGE_LEN {
            return Err(bad());
        }
        let ranges = (0..n)
            .map(|_| MmioRange::decode(&mut r))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        let len = r.u32().ok_or_else(bad)? as usize;
        let device_specific = r.take(len).ok_or_else(bad)?.to_vec();
        if r.remaining() != 0 {
            return Err(bad());
        }
        Ok(InterfaceReport {
            interface_info,
            msix_message_control,
            lnr_control,
            tph_control,
            ranges,
            device_specific,
        })
    }
}

/// A TDISP request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// GET_TDISP_VERSION.
    GetVersion,
    /// GET_TDISP_CAPABILITIES.
    GetCapabilities {
        /// TSM_CAPS.
        tsm_caps: u32,
    },
    /// LOCK_INTERFACE_REQUEST.
    LockInterface(LockParams),
    /// GET_DEVICE_INTERFACE_REPORT.
    GetDeviceInterfaceReport {
        /// Offset into the report.
        offset: u16,
        /// Bytes wanted.
        length: u16,
    },
    /// GET_DEVICE_INTERFACE_STATE.
    GetDeviceInterfaceState,
    /// START_INTERFACE_REQUEST.
    StartInterface {
        /// The nonce LOCK_INTERFACE_RESPONSE returned.
        nonce: [u8; NONCE_LEN],
    },
    /// STOP_INTERFACE_REQUEST.
    StopInterface,
    /// BIND_P2P_STREAM_REQUEST.
    BindP2pStream {
        /// P2P_STREAM_ID.
        stream_id: u8,
    },
    /// UNBIND_P2P_STREAM_REQUEST.
    UnbindP2pStream {
        /// P2P_STREAM_ID.
        stream_id: u8,
    },
    /// SET_MMIO_ATTRIBUTE_REQUEST.
    SetMmioAttribute(MmioRange),
    /// VDM_REQUEST (registry ID, vendor ID, vendor data as received).
    Vdm(Vec<u8>),
}

/// A TDISP response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// TDISP_VERSION.
    Version(Vec<u8>),
    /// TDISP_CAPABILITIES.
    Capabilities(ResponderCaps),
    /// LOCK_INTERFACE_RESPONSE.
    LockInterface {
        /// START_INTERFACE_NONCE.
        nonce: [u8; NONCE_LEN],
    },
    /// DEVICE_INTERFACE_REPORT.
    DeviceInterfaceReport {
        /// This portion of the report.
        portion: Vec<u8>,
        /// Bytes of the report after it.
        remainder: u16,
    },
    /// DEVICE_INTERFACE_STATE (the raw TDI_STATE byte).
    DeviceInterfaceState(u8),
    /// START_INTERFACE_RESPONSE.
    StartInterface,
    /// STOP_INTERFACE_RESPONSE.
    StopInterface,
    /// TDISP_ERROR.
    Error {
        /// ERROR_CODE (see [`super::ErrorCode`]).
        code: u32,
        /// ERROR_DATA.
        data: u32,
    },
}

/// Why a payload is not a well-formed TDISP message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty payload or not protocol 1.
    #[error("not a TDISP payload (protocol {0:?})")]
    NotTdisp(Option<u8>),
    /// Shorter than the 16-byte header.
    #[error("TDISP message of {0} bytes is shorter than its header")]
    Short(usize),
    /// A message type this side does not know.
    #[error("unknown TDISP message type 0x{0:02x}")]
    UnknownType(u8),
    /// Wrong length for the message type.
    #[error("TDISP message 0x{message_type:02x}: {len} bytes, expected {expected}")]
    Length {
        /// Message type.
        message_type: u8,
        /// Length received (TDISP message, header included).
        len: usize,
        /// Length expected.
        expected: usize,
    },
    /// An interface report that does not parse.
    #[error("interface report of {0} bytes does not parse")]
    Report(usize),
}

fn exact(h: &Header, body: &[u8], body_len: usize) -> Result<(), DecodeError> {
    if body.len() == body_len {
        Ok(())
    } else {
        Err(DecodeError::Length {
            message_type: h.message_type,
            len: HEADER_LEN + body.len(),
            expected: HEADER_LEN + body_len,
        })
    }
}

impl Request {
    /// The message type.
    pub fn message_type(&self) -> u8 {
        match self {
            Request::GetVersion => code::GET_VERSION,
            Request::GetCapabilities { .. } => code::GET_CAPABILITIES,
            Request::LockInterface(_) => code::LOCK_INTERFACE,
            Request::GetDeviceInterfaceReport { .. } => code::GET_DEVICE_INTERFACE_REPORT,
            Request::GetDeviceInterfaceState => code::GET_DEVICE_INTERFACE_STATE,
            Request::StartInterface { .. } => code::START_INTERFACE,
            Request::StopInterface => code::STOP_INTERFACE,
            Request::BindP2pStream { .. } => code::BIND_P2P_STREAM,
            Request::UnbindP2pStream { .. } => code::UNBIND_P2P_STREAM,
            Request::SetMmioAttribute(_) => code::SET_MMIO_ATTRIBUTE,
            Request::Vdm(_) => code::VDM,
        }
    }

    /// Whether `t` is a request message type.
    pub fn is_request_type(t: u8) -> bool {
        (code::GET_VERSION..=code::VDM).contains(&t)
    }

    /// Decodes the body of a request with header `h` (lengths must be
    /// exact; the VDM body is at least its registry ID and vendor ID).
    pub fn decode_body(h: &Header, body: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(body);
        Ok(match h.message_type {
            code::GET_VERSION => {
                exact(h, body, 0)?;
                Request::GetVersion
            }
            code::GET_CAPABILITIES => {
                exact(h, body, 4)?;
                Request::GetCapabilities {
                    tsm_caps: r.u32().unwrap_or(0),
                }
            }
            code::LOCK_INTERFACE => {
                exact(h, body, 20)?;
                let flags = r.u16().unwrap_or(0);
                let default_stream_id = r.u8().unwrap_or(0);
                r.skip(1);
                Request::LockInterface(LockParams {
                    flags,
                    default_stream_id,
                    mmio_reporting_offset: u64::from_le_bytes(r.array::<8>().unwrap_or_default()),
                    bind_p2p_address_mask: u64::from_le_bytes(r.array::<8>().unwrap_or_default()),
                })
            }
            code::GET_DEVICE_INTERFACE_REPORT => {
                exact(h, body, 4)?;
                Request::GetDeviceInterfaceReport {
                    offset: r.u16().unwrap_or(0),
                    length: r.u16().unwrap_or(0),
                }
            }
            code::GET_DEVICE_INTERFACE_STATE => {
                exact(h, body, 0)?;
                Request::GetDeviceInterfaceState
            }
            code::START_INTERFACE => {
                exact(h, body, NONCE_LEN)?;
                Request::StartInterface {
                    nonce: r.array::<NONCE_LEN>().unwrap_or([0; NONCE_LEN]),
                }
            }
            code::STOP_INTERFACE => {
                exact(h, body, 0)?;
                Request::StopInterface
            }
            code::BIND_P2P_STREAM | code::UNBIND_P2P_STREAM => {
                exact(h, body, 1)?;
                let stream_id = r.u8().unwrap_or(0);
                if h.message_type == code::BIND_P2P_STREAM {
                    Request::BindP2pStream { stream_id }
                } else {
                    Request::UnbindP2pStream { stream_id }
                }
            }
            code::SET_MMIO_ATTRIBUTE => {
                exact(h, body, MMIO_RANGE_LEN)?;
                Request::SetMmioAttribute(MmioRange::decode(&mut r).unwrap_or_default())
            }
            code::VDM => {
                let id_len = body.get(1).copied().unwrap_or(0) as usize;
                if body.len() < 2 + id_len {
                    return Err(DecodeError::Length {
                        message_type: h.message_type,
                        len: HEADER_LEN + body.len(),
                        expected: HEADER_LEN + 2 + id_len,
                    });
                }
                Request::Vdm(body.to_vec())
            }
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    /// Decodes a whole request payload.
    pub fn decode(payload: &[u8]) -> Result<(Header, Request), DecodeError> {
        let (h, body) = Header::decode(payload)?;
        Ok((h, Request::decode_body(&h, body)?))
    }

    /// Encodes the request payload (protocol byte, header with `version`
    /// and `interface`, body).
    pub fn encode(&self, version: u8, interface: InterfaceId) -> Vec<u8> {
        let mut w = Header {
            version,
            message_type: self.message_type(),
            interface,
        }
        .writer();
        match self {
            Request::GetVersion | Request::GetDeviceInterfaceState | Request::StopInterface => {}
            Request::GetCapabilities { tsm_caps } => {
                w.u32(*tsm_caps);
            }
            Request::LockInterface(p) => {
                w.u16(p.flags)
                    .u8(p.default_stream_id)
                    .u8(0)
                    .bytes(&p.mmio_reporting_offset.to_le_bytes())
                    .bytes(&p.bind_p2p_address_mask.to_le_bytes());
            }
            Request::GetDeviceInterfaceReport { offset, length } => {
                w.u16(*offset).u16(*length);
            }
            Request::StartInterface { nonce } => {
                w.bytes(nonce);
            }
            Request::BindP2pStream { stream_id } | Request::UnbindP2pStream { stream_id } => {
                w.u8(*stream_id);
            }
            Request::SetMmioAttribute(r) => r.encode(&mut w),
            Request::Vdm(data) => {
                w.bytes(data);
            }
        }
        w.finish()
    }
}

impl Response {
    /// The message type.
    pub fn message_type(&self) -> u8 {
        match self {
            Response::Version(_) => code::VERSION,
            Response::Capabilities(_) => code::CAPABILITIES,
            Response::LockInterface { .. } => code::LOCK_INTERFACE_RSP,
            Response::DeviceInterfaceReport { .. } => code::DEVICE_INTERFACE_REPORT,
            Response::DeviceInterfaceState(_) => code::DEVICE_INTERFACE_STATE,
            Response::StartInterface => code::START_INTERFACE_RSP,
            Response::StopInterface => code::STOP_INTERFACE_RSP,
            Response::Error { .. } => code::ERROR,
        }
    }

    /// Encodes the response payload.
    pub fn encode(&self, version: u8, interface: InterfaceId) -> Vec<u8> {
        let mut w = Header {
            version,
            message_type: self.message_type(),
            interface,
        }
        .writer();
        match self {
            Response::Version(v) => {
                w.u8(v.len() as u8).bytes(v);
            }
            Response::Capabilities(c) => {
                w.u32(c.dsm_caps)
                    .bytes(&c.req_msgs_supported)
                    .u16(c.lock_flags_supported)
                    .zeros(3)
                    .u8(c.dev_addr_width)
                    .u8(c.num_req_this)
                    .u8(c.num_req_all);
            }
            Response::LockInterface { nonce } => {
                w.bytes(nonce);
            }
            Response::DeviceInterfaceReport { portion, remainder } => {
                w.u16(portion.len() as u16).u16(*remainder).bytes(portion);
            }
            Response::DeviceInterfaceState(s) => {
                w.u8(*s);
            }
            Response::StartInterface | Response::StopInterface => {}
            Response::Error { code, data } => {
                w.u32(*code).u32(*data);
            }
        }
        w.finish()
    }

    /// Decodes a response payload (exact lengths; TDISP_ERROR may carry
    /// extended error data, which is ignored).
    pub fn decode(payload: &[u8]) -> Result<(Header, Response), DecodeError> {
        let (h, body) = Header::decode(payload)?;
        let mut r = Reader::new(body);
        let rsp = match h.message_type {
            code::VERSION => {
                let n = body.first().copied().unwrap_or(0) as usize;
                exact(&h, body, 1 + n)?;
                Response::Version(body[1..].to_vec())
            }
            code::CAPABILITIES => {
                exact(&h, body, 28)?;
                let dsm_caps = r.u32().unwrap_or(0);
                let req_msgs_supported = r.array::<16>().unwrap_or_default();
                let lock_flags_supported = r.u16().unwrap_or(0);
                r.skip(3);
                Response::Capabilities(ResponderCaps {
                    dsm_caps,
                    req_msgs_supported,
                    lock_flags_supported,
                    dev_addr_width: r.u8().unwrap_or(0),
                    num_req_this: r.u8().unwrap_or(0),
                    num_req_all: r.u8().unwrap_or(0),
                })
            }
            code::LOCK_INTERFACE_RSP => {
                exact(&h, body, NONCE_LEN)?;
                Response::LockInterface {
                    nonce: r.array::<NONCE_LEN>().unwrap_or([0; NONCE_LEN]),
                }
            }
            code::DEVICE_INTERFACE_REPORT => {
                let n = u16::from_le_bytes([
                    body.first().copied().unwrap_or(0),
                    body.get(1).copied().unwrap_or(0),
                ]) as usize;
                exact(&h, body, 4 + n)?;
                Response::DeviceInterfaceReport {
                    portion: body[4..].to_vec(),
                    remainder: u16::from_le_bytes([body[2], body[3]]),
                }
            }
            code::DEVICE_INTERFACE_STATE => {
                exact(&h, body, 1)?;
                Response::DeviceInterfaceState(body[0])
            }
            code::START_INTERFACE_RSP => {
                exact(&h, body, 0)?;
                Response::StartInterface
            }
            code::STOP_INTERFACE_RSP => {
                exact(&h, body, 0)?;
                Response::StopInterface
            }
            code::ERROR => {
                if body.len() < 8 {
                    exact(&h, body, 8)?;
                }
                Response::Error {
                    code: r.u32().unwrap_or(0),
                    data: r.u32().unwrap_or(0),
                }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok((h, rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdisp::VERSION_10;

    fn iface() -> InterfaceId {
        InterfaceId {
            function_id: 0xbeef,
            reserved: 0,
        }
    }

    #[test]
    fn request_round_trips() {
        for r in [
            Request::GetVersion,
            Request::GetCapabilities { tsm_caps: 7 },
            Request::LockInterface(LockParams {
                flags: 5,
                default_stream_id: 3,
                mmio_reporting_offset: 0xD000_0000,
                bind_p2p_address_mask: 0xffff_0000,
            }),
            Request::GetDeviceInterfaceReport {
                offset: 0x40,
                length: 0x40,
            },
            Request::GetDeviceInterfaceState,
            Request::StartInterface { nonce: [9; 32] },
            Request::StopInterface,
            Request::BindP2pStream { stream_id: 4 },
            Request::UnbindP2pStream { stream_id: 4 },
            Request::SetMmioAttribute(MmioRange {
                first_page: 0xfe000,
                number_of_pages: 4,
                attributes: 8,
                range_id: 2,
            }),
            Request::Vdm(vec![0, 2, 0x86, 0x80, 1, 2, 3]),
        ] {
            let p = r.encode(VERSION_10, iface());
            let (h, d) = Request::decode(&p).unwrap();
            assert_eq!(d, r);
            assert_eq!(h.interface, iface());
            assert_eq!(h.version, VERSION_10);
        }
    }

    /// The sizes of DMTF's packed structures (plus the protocol byte).
    #[test]
    fn sizes_match_libspdm() {
        let i = iface();
        assert_eq!(Request::GetVersion.encode(0x10, i).len(), 1 + 16);
        assert_eq!(
            Request::GetCapabilities { tsm_caps: 0 }
                .encode(0x10, i)
                .len(),
            1 + 20
        );
        assert_eq!(
            Request::LockInterface(LockParams::default())
                .encode(0x10, i)
                .len(),
            1 + 36
        );
        assert_eq!(
            Request::GetDeviceInterfaceReport {
                offset: 0,
                length: 0
            }
            .encode(0x10, i)
            .len(),
            1 + 20
        );
        assert_eq!(
            Request::StartInterface { nonce: [0; 32] }
                .encode(0x10, i)
                .len(),
            1 + 48
        );
        assert_eq!(
            Response::Capabilities(ResponderCaps::default())
                .encode(0x10, i)
                .len(),
            1 + 44
        );
        assert_eq!(
            Response::Error { code: 1, data: 0 }.encode(0x10, i).len(),
            1 + 24
        );
        assert_eq!(Response::Version(vec![0x10]).encode(0x10, i).len(), 1 + 18);
        // The header as DMTF's requester sends GET_TDISP_VERSION for 0xbeef.
        assert_eq!(
            Request::GetVersion.encode(0x10, i),
            [1, 0x10, 0x81, 0, 0, 0xef, 0xbe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn response_round_trips() {
        let caps = ResponderCaps {
            dsm_caps: 0,
            req_msgs_supported: ResponderCaps::msgs(&[0x81, 0x82, 0x87]),
            lock_flags_supported: 7,
            dev_addr_width: 64,
            num_req_this: 1,
            num_req_all: 1,
        };
        assert!(caps.supports(0x81) && caps.supports(0x87) && !caps.supports(0x83));
        assert_eq!(caps.req_msgs_supported[0], 0x86);
        for r in [
            Response::Version(vec![0x10]),
            Response::Capabilities(caps),
            Response::LockInterface { nonce: [1; 32] },
            Response::DeviceInterfaceReport {
                portion: vec![1, 2, 3],
                remainder: 9,
            },
            Response::DeviceInterfaceState(2),
            Response::StartInterface,
            Response::StopInterface,
            Response::Error {
                code: 0x102,
                data: 0,
            },
        ] {
            let (h, d) = Response::decode(&r.encode(VERSION_10, iface())).unwrap();
            assert_eq!(d, r);
            assert_eq!(h.interface, iface());
        }
    }

    #[test]
    fn report_round_trips_and_rejects_garbage() {
        let rep = InterfaceReport {
            interface_info: 3,
            msix_message_control: 0x8003,
            lnr_control: 0,
            tph_control: 0,
            ranges: vec![
                MmioRange {
                    first_page: 0xd00fe000,
                    number_of_pages: 4,
                    attributes: 0,
                    range_id: 0,
                },
                MmioRange {
                    first_page: 0xd00fe004,
                    number_of_pages: 1,
                    attributes: 3,
                    range_id: 4,
                },
            ],
            device_specific: b"trustdev".to_vec(),
        };
        let b = rep.encode();
        assert_eq!(b.len(), REPORT_FIXED_LEN + 2 * MMIO_RANGE_LEN + 4 + 8);
        assert_eq!(InterfaceReport::decode(&b).unwrap(), rep);
        assert!(InterfaceReport::decode(&b[..b.len() - 1]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(InterfaceReport::decode(&long).is_err());
        let mut huge = b;
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(InterfaceReport::decode(&huge).is_err());
    }

    #[test]
    fn malformed() {
        assert_eq!(
            Header::decode(&[]).unwrap_err(),
            DecodeError::NotTdisp(None)
        );
        assert_eq!(
            Header::decode(&[0; 17]).unwrap_err(),
            DecodeError::NotTdisp(Some(0))
        );
        assert_eq!(
            Header::decode(&[1; 16]).unwrap_err(),
            DecodeError::Short(15)
        );
        let mut p = Request::GetVersion.encode(0x10, iface());
        p.push(0);
        assert!(matches!(
            Request::decode(&p),
            Err(DecodeError::Length {
                len: 17,
                expected: 16,
                ..
            })
        ));
        let mut p = Request::GetVersion.encode(0x10, iface());
        p[2] = 0x8C;
        assert_eq!(
            Request::decode(&p).unwrap_err(),
            DecodeError::UnknownType(0x8C)
        );
        let mut p = Request::Vdm(vec![0, 2, 1, 2]).encode(0x10, iface());
        p.truncate(p.len() - 1);
        assert!(matches!(
            Request::decode(&p),
            Err(DecodeError::Length { .. })
        ));
    }
}
