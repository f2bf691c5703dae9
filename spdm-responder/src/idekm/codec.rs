//! The IDE_KM data objects as bytes (the VENDOR_DEFINED payload, starting
//! with the PCI-SIG protocol ID byte 0x00).
//!
//! ```text
//! QUERY         00 | 00 | rsvd | PortIndex                                     4 bytes
//! QUERY_RESP    00 | 01 | rsvd | PortIndex | DevFunc | Bus | Segment | MaxPortIndex
//!               | IDE capability registers from the IDE Capability register on (u32 LE each)
//! KEY_PROG      00 | 02 | rsvd rsvd | StreamID | rsvd   | KeySubStream | PortIndex
//!               | KEY (8 dwords) | IFV (2 dwords)                               48 bytes
//! KP_ACK        00 | 03 | rsvd rsvd | StreamID | Status | KeySubStream | PortIndex   8 bytes
//! K_SET_GO      00 | 04 | rsvd rsvd | StreamID | rsvd   | KeySubStream | PortIndex   8 bytes
//! K_SET_STOP    00 | 05 | (as K_SET_GO)                                              8 bytes
//! K_GOSTOP_ACK  00 | 06 | (as K_SET_GO)                                              8 bytes
//! ```
//! Reserved bytes are sent as zero and ignored on receipt.

use super::{object, IdeKey, KeySlot, KEY_WIRE_LEN};
use crate::vendor::PCI_PROTOCOL_IDE_KM;
use thiserror::Error;

/// Length of QUERY.
pub const QUERY_LEN: usize = 4;
/// Length of the QUERY_RESP header (before the register image).
pub const QUERY_RESP_HEADER_LEN: usize = 8;
/// Length of the stream header shared by KEY_PROG, KP_ACK, K_SET_GO, K_SET_STOP, K_GOSTOP_ACK.
pub const STREAM_HEADER_LEN: usize = 8;
/// Length of KEY_PROG.
pub const KEY_PROG_LEN: usize = STREAM_HEADER_LEN + KEY_WIRE_LEN;

/// KP_ACK status values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KpAckStatus {
    /// The key was programmed.
    Success = 0,
    /// KEY_PROG had the wrong length.
    IncorrectLength = 1,
    /// No port with that PortIndex.
    UnsupportedPortIndex = 2,
    /// A field holds a value the port does not support (stream, sub-stream).
    UnsupportedValue = 3,
    /// Any other failure (e.g. the slot is in use).
    UnspecifiedFailure = 4,
}

impl KpAckStatus {
    /// From the Status byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => KpAckStatus::Success,
            1 => KpAckStatus::IncorrectLength,
            2 => KpAckStatus::UnsupportedPortIndex,
            3 => KpAckStatus::UnsupportedValue,
            4 => KpAckStatus::UnspecifiedFailure,
            _ => return None,
        })
    }
}

/// The fields KEY_PROG, K_SET_GO, K_SET_STOP and their acknowledgements
/// share, as raw bytes (acknowledgements echo them as received).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// Stream ID.
    pub stream_id: u8,
    /// KeySubStream byte (see [`KeySlot::from_byte`]).
    pub key_sub_stream: u8,
    /// Port index.
    pub port_index: u8,
}

impl StreamHeader {
    /// A header for `slot`.
    pub fn new(stream_id: u8, slot: KeySlot, port_index: u8) -> Self {
        StreamHeader {
            stream_id,
            key_sub_stream: slot.to_byte(),
            port_index,
        }
    }

    /// The key slot, or `Err(value)` for a reserved sub-stream value.
    pub fn slot(&self) -> Result<KeySlot, u8> {
        KeySlot::from_byte(self.key_sub_stream)
    }

    fn encode(&self, obj: u8, byte5: u8) -> Vec<u8> {
        vec![
            PCI_PROTOCOL_IDE_KM,
            obj,
            0,
            0,
            self.stream_id,
            byte5,
            self.key_sub_stream,
            self.port_index,
        ]
    }

    fn decode(p: &[u8]) -> Option<Self> {
        (p.len() >= STREAM_HEADER_LEN).then(|| StreamHeader {
            stream_id: p[4],
            key_sub_stream: p[6],
            port_index: p[7],
        })
    }
}

/// QUERY_RESP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryResp {
    /// Port index (echoed).
    pub port_index: u8,
    /// Device/function number of the port's function.
    pub dev_func: u8,
    /// Bus number.
    pub bus: u8,
    /// Segment.
    pub segment: u8,
    /// Highest port index of the component.
    pub max_port_index: u8,
    /// The port's IDE extended capability registers, from the IDE
    /// Capability register (offset 04h of the capability) on.
    pub regs: Vec<u32>,
}

/// An IDE_KM request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// QUERY.
    Query {
        /// Port index.
        port_index: u8,
    },
    /// KEY_PROG.
    KeyProg {
        /// Stream, slot, port.
        header: StreamHeader,
        /// The key and IFV.
        key: IdeKey,
    },
    /// K_SET_GO.
    KSetGo(StreamHeader),
    /// K_SET_STOP.
    KSetStop(StreamHeader),
}

/// An IDE_KM response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// QUERY_RESP.
    QueryResp(QueryResp),
    /// KP_ACK with its Status byte.
    KpAck {
        /// Echoed stream, slot, port.
        header: StreamHeader,
        /// Status (see [`KpAckStatus`]).
        status: u8,
    },
    /// K_GOSTOP_ACK.
    GoStopAck(StreamHeader),
}

/// Why a payload is not a well-formed IDE_KM object.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty payload or not protocol 0.
    #[error("not an IDE_KM payload (protocol {0:?})")]
    NotIdeKm(Option<u8>),
    /// No object ID.
    #[error("IDE_KM payload without an object ID")]
    NoObject,
    /// An object ID that is not (or not this side's) IDE_KM object.
    #[error("unknown IDE_KM object 0x{0:02x}")]
    UnknownObject(u8),
    /// Wrong length for the object.
    #[error("IDE_KM object 0x{object:02x}: {len} bytes, expected {expected}")]
    Length {
        /// Object ID.
        object: u8,
        /// Length received (whole payload).
        len: usize,
        /// Length expected.
        expected: usize,
    },
    /// QUERY_RESP register image not whole dwords.
    #[error("QUERY_RESP register image of {0} bytes is not whole dwords")]
    RegisterImage(usize),
}

fn object_of(p: &[u8]) -> Result<u8, DecodeError> {
    match p.first() {
        Some(&PCI_PROTOCOL_IDE_KM) => p.get(1).copied().ok_or(DecodeError::NoObject),
        other => Err(DecodeError::NotIdeKm(other.copied())),
    }
}

fn exact(p: &[u8], object: u8, expected: usize) -> Result<(), DecodeError> {
    if p.len() == expected {
        Ok(())
    } else {
        Err(DecodeError::Length {
            object,
            len: p.len(),
            expected,
        })
    }
}

impl Request {
    /// The object ID of an IDE_KM payload, if it has one.
    pub fn object_id(payload: &[u8]) -> Result<u8, DecodeError> {
        object_of(payload)
    }

    /// The stream header of a KEY_PROG / K_SET_GO / K_SET_STOP payload that is
    /// at least long enough to carry one (for acknowledging malformed ones).
    pub fn stream_header(payload: &[u8]) -> Option<StreamHeader> {
        StreamHeader::decode(payload)
    }

    /// Decodes a request payload (lengths must be exact).
    pub fn decode(p: &[u8]) -> Result<Request, DecodeError> {
        let obj = object_of(p)?;
        match obj {
            object::QUERY => {
                exact(p, obj, QUERY_LEN)?;
                Ok(Request::Query { port_index: p[3] })
            }
            object::KEY_PROG => {
                exact(p, obj, KEY_PROG_LEN)?;
                let header = StreamHeader::decode(p).ok_or(DecodeError::NoObject)?;
                let mut wire = zeroize::Zeroizing::new([0u8; KEY_WIRE_LEN]);
                wire.copy_from_slice(&p[STREAM_HEADER_LEN..]);
                Ok(Request::KeyProg {
                    header,
                    key: IdeKey::from_wire(&wire),
                })
            }
            object::K_SET_GO | object::K_SET_STOP => {
                exact(p, obj, STREAM_HEADER_LEN)?;
                let h = StreamHeader::decode(p).ok_or(DecodeError::NoObject)?;
                Ok(if obj == object::K_SET_GO {
                    Request::KSetGo(h)
                } else {
                    Request::KSetStop(h)
                })
            }
            other => Err(DecodeError::UnknownObject(other)),
        }
    }

    /// Encodes the request payload (KEY_PROG's copy holds the key: callers
    /// zeroize it after sending, see [`crate::idekm::requester`]).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Query { port_index } => {
                vec![PCI_PROTOCOL_IDE_KM, object::QUERY, 0, *port_index]
            }
            Request::KeyProg { header, key } => {
                let mut v = header.encode(object::KEY_PROG, 0);
                v.extend_from_slice(&key.to_wire()[..]);
                v
            }
            Request::KSetGo(h) => h.encode(object::K_SET_GO, 0),
            Request::KSetStop(h) => h.encode(object::K_SET_STOP, 0),
        }
    }
}

impl Response {
    /// Decodes a response payload.
    pub fn decode(p: &[u8]) -> Result<Response, DecodeError> {
        let obj = object_of(p)?;
        match obj {
            object::QUERY_RESP => {
                if p.len() < QUERY_RESP_HEADER_LEN {
                    return Err(DecodeError::Length {
                        object: obj,
                        len: p.len(),
                        expected: QUERY_RESP_HEADER_LEN,
                    });
                }
                let img = &p[QUERY_RESP_HEADER_LEN..];
                if img.len() % 4 != 0 {
                    return Err(DecodeError::RegisterImage(img.len()));
                }
                Ok(Response::QueryResp(QueryResp {
                    port_index: p[3],
                    dev_func: p[4],
                    bus: p[5],
                    segment: p[6],
                    max_port_index: p[7],
                    regs: img
                        .chunks_exact(4)
                        .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
                        .collect(),
                }))
            }
            object::KP_ACK => {
                exact(p, obj, STREAM_HEADER_LEN)?;
                Ok(Response::KpAck {
                    header: StreamHeader::decode(p).ok_or(DecodeError::NoObject)?,
                    status: p[5],
                })
            }
            object::K_GOSTOP_ACK => {
                exact(p, obj, STREAM_HEADER_LEN)?;
                Ok(Response::GoStopAck(
                    StreamHeader::decode(p).ok_or(DecodeError::NoObject)?,
                ))
            }
            other => Err(DecodeError::UnknownObject(other)),
        }
    }

    /// Encodes the response payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::QueryResp(q) => {
                let mut v = vec![
                    PCI_PROTOCOL_IDE_KM,
                    object::QUERY_RESP,
                    0,
                    q.port_index,
                    q.dev_func,
                    q.bus,
                    q.segment,
                    q.max_port_index,
                ];
                for r in &q.regs {
                    v.extend_from_slice(&r.to_le_bytes());
                }
                v
            }
            Response::KpAck { header, status } => header.encode(object::KP_ACK, *status),
            Response::GoStopAck(h) => h.encode(object::K_GOSTOP_ACK, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idekm::{KeyDirection, KeySet, SubStream};

    #[test]
    fn round_trips() {
        let slot = KeySlot::new(KeySet::K1, KeyDirection::Tx, SubStream::Completion);
        let h = StreamHeader::new(7, slot, 0);
        let key = IdeKey::new([0x42; 32], 0x1_0000_0002);
        for r in [
            Request::Query { port_index: 3 },
            Request::KeyProg {
                header: h,
                key: key.clone(),
            },
            Request::KSetGo(h),
            Request::KSetStop(h),
        ] {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        for r in [
            Response::QueryResp(QueryResp {
                port_index: 0,
                dev_func: 8,
                bus: 1,
                segment: 0,
                max_port_index: 0,
                regs: vec![0x0001_0042, 0, 1, 2],
            }),
            Response::KpAck {
                header: h,
                status: 3,
            },
            Response::GoStopAck(h),
        ] {
            assert_eq!(Response::decode(&r.encode()), Ok(r));
        }
        // DMTF's K_SET_GO for K0|TX|CPL on stream 0, port 1.
        assert_eq!(
            Request::KSetGo(StreamHeader {
                stream_id: 0,
                key_sub_stream: 0x22,
                port_index: 1
            })
            .encode(),
            [0, 4, 0, 0, 0, 0, 0x22, 1]
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(Request::decode(&[]), Err(DecodeError::NotIdeKm(None)));
        assert_eq!(
            Request::decode(&[1, 0, 0, 0]),
            Err(DecodeError::NotIdeKm(Some(1)))
        );
        assert_eq!(Request::decode(&[0]), Err(DecodeError::NoObject));
        assert_eq!(
            Request::decode(&[0, 0, 0, 0, 0]),
            Err(DecodeError::Length {
                object: 0,
                len: 5,
                expected: 4
            })
        );
        assert_eq!(
            Request::decode(&[0, 1, 0, 0]),
            Err(DecodeError::UnknownObject(1))
        );
        assert!(matches!(
            Request::decode(&[0, 2, 0, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::Length { object: 2, .. })
        ));
        assert_eq!(
            Response::decode(&[0, 1, 0, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::RegisterImage(1))
        );
    }
}
