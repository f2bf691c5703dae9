//! PCIe Data Object Exchange (PCIe 6.x §6.30) objects for CMA/SPDM (§6.31).
//!
//! ```text
//! dword 0: VendorID u16 | DataObjectType u8 | reserved u8
//! dword 1: Length[17:0] in dwords including the 2-dword header (0 = 2^18)
//! payload, zero-padded to a dword
//! ```
//! PCI-SIG (vendor 0x0001) types: 0 discovery, 1 CMA/SPDM, 2 secured CMA/SPDM.

use thiserror::Error;

use crate::error::TransportError;
use crate::requester::{Message, Transport};
use crate::responder::{Responder, SecuredReply};

pub const DOE_VENDOR_PCISIG: u16 = 0x0001;
pub const DOE_TYPE_DISCOVERY: u8 = 0x00;
pub const DOE_TYPE_CMA: u8 = 0x01;
pub const DOE_TYPE_SECURED_CMA: u8 = 0x02;
/// Largest DOE object: 2^18 dwords.
pub const DOE_MAX_BYTES: usize = (1 << 18) * 4;

/// Errors of a DOE object; the mailbox sets its Error bit and discards the object.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DoeError {
    #[error("object shorter than its 2-dword header")]
    Truncated,
    #[error("object is not a whole number of dwords ({0} bytes)")]
    NotDwordAligned(usize),
    #[error("header length {header} dwords does not match the object ({actual} dwords)")]
    LengthMismatch { header: usize, actual: usize },
    #[error("unsupported data object protocol {vendor:#06x}:{ty}")]
    UnsupportedProtocol { vendor: u16, ty: u8 },
    #[error("payload too large for a DOE object ({0} bytes)")]
    TooLarge(usize),
    #[error("the responder produced no response")]
    NoResponse,
}

/// Build a DOE object (header + payload zero-padded to a dword).
pub fn encode_object(vendor: u16, ty: u8, payload: &[u8]) -> Result<Vec<u8>, DoeError> {
    let padded = payload.len().div_ceil(4) * 4;
    let total = 8 + padded;
    if total > DOE_MAX_BYTES {
        return Err(DoeError::TooLarge(payload.len()));
    }
    let dwords = (total / 4) as u32 & 0x3_FFFF; // 2^18 encodes as 0
    let mut v = Vec::with_capacity(total);
    v.extend_from_slice(&vendor.to_le_bytes());
    v.push(ty);
    v.push(0);
    v.extend_from_slice(&dwords.to_le_bytes());
    v.extend_from_slice(payload);
    v.resize(total, 0);
    Ok(v)
}

/// Split a DOE object into (vendor, type, payload including padding).
pub fn decode_object(obj: &[u8]) -> Result<(u16, u8, &[u8]), DoeError> {
    if obj.len() < 8 {
        return Err(DoeError::Truncated);
    }
    if obj.len() % 4 != 0 {
        return Err(DoeError::NotDwordAligned(obj.len()));
    }
    if obj.len() > DOE_MAX_BYTES {
        return Err(DoeError::TooLarge(obj.len()));
    }
    let vendor = u16::from_le_bytes([obj[0], obj[1]]);
    let ty = obj[2];
    let mut header = (u32::from_le_bytes([obj[4], obj[5], obj[6], obj[7]]) & 0x3_FFFF) as usize;
    if header == 0 {
        header = 1 << 18;
    }
    if header != obj.len() / 4 || header < 2 {
        return Err(DoeError::LengthMismatch {
            header,
            actual: obj.len() / 4,
        });
    }
    Ok((vendor, ty, &obj[8..]))
}

/// The device side of a CMA DOE mailbox: discovery, CMA/SPDM and secured CMA/SPDM.
///
/// A device model calls [`DoeEndpoint::handle`] with the object the guest wrote
/// (on DOE Go) and places the returned object in the read mailbox.
pub struct DoeEndpoint {
    responder: Responder,
    protocols: Vec<(u16, u8)>,
}

impl DoeEndpoint {
    pub fn new(responder: Responder) -> Self {
        Self {
            responder,
            protocols: vec![
                (DOE_VENDOR_PCISIG, DOE_TYPE_DISCOVERY),
                (DOE_VENDOR_PCISIG, DOE_TYPE_CMA),
                (DOE_VENDOR_PCISIG, DOE_TYPE_SECURED_CMA),
            ],
        }
    }
    pub fn responder(&self) -> &Responder {
        &self.responder
    }
    pub fn responder_mut(&mut self) -> &mut Responder {
        &mut self.responder
    }
    /// The protocols listed by discovery.
    pub fn protocols(&self) -> &[(u16, u8)] {
        &self.protocols
    }
    /// DOE Abort / function reset: the SPDM connection is reset too.
    pub fn reset(&mut self) {
        self.responder.reset();
    }

    /// Handle one request object and return the response object.
    pub fn handle(&mut self, obj: &[u8]) -> Result<Vec<u8>, DoeError> {
        let (vendor, ty, payload) = decode_object(obj)?;
        match (vendor, ty) {
            (DOE_VENDOR_PCISIG, DOE_TYPE_DISCOVERY) => {
                let index = payload.first().copied().unwrap_or(0) as usize;
                let (v, t) = self.protocols.get(index).copied().unwrap_or((0, 0));
                let next = if index + 1 < self.protocols.len() {
                    index as u8 + 1
                } else {
                    0
                };
                let mut p = Vec::with_capacity(4);
                p.extend_from_slice(&v.to_le_bytes());
                p.push(t);
                p.push(next);
                encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_DISCOVERY, &p)
            }
            (DOE_VENDOR_PCISIG, DOE_TYPE_CMA) => {
                let r = self.responder.handle_message(payload);
                encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_CMA, &r)
            }
            (DOE_VENDOR_PCISIG, DOE_TYPE_SECURED_CMA) => {
                match self.responder.handle_secured(payload) {
                    SecuredReply::Secured(r) => {
                        encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_SECURED_CMA, &r)
                    }
                    SecuredReply::Plain(m) => encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_CMA, &m),
                    SecuredReply::None => Err(DoeError::NoResponse),
                }
            }
            (vendor, ty) => Err(DoeError::UnsupportedProtocol { vendor, ty }),
        }
    }
}

/// Something that carries DOE objects to a DOE instance (in-process or over a socket).
pub trait DoeChannel {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError>;
}

impl DoeChannel for DoeEndpoint {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.handle(obj)
            .map_err(|e| TransportError::Malformed(doe_err_str(&e)))
    }
}

fn doe_err_str(e: &DoeError) -> &'static str {
    match e {
        DoeError::Truncated => "DOE: truncated",
        DoeError::NotDwordAligned(_) => "DOE: not dword aligned",
        DoeError::LengthMismatch { .. } => "DOE: length mismatch",
        DoeError::UnsupportedProtocol { .. } => "DOE: unsupported protocol",
        DoeError::TooLarge(_) => "DOE: too large",
        DoeError::NoResponse => "DOE: no response",
    }
}

/// A requester transport over DOE objects.
pub struct DoeTransport<C: DoeChannel> {
    pub channel: C,
}

impl<C: DoeChannel> DoeTransport<C> {
    pub fn new(channel: C) -> Self {
        Self { channel }
    }

    /// Walk DOE discovery from index 0 until next index 0.
    pub fn discover(&mut self) -> Result<Vec<(u16, u8)>, TransportError> {
        let mut out = Vec::new();
        let mut index = 0u8;
        for _ in 0..=255 {
            let obj = encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_DISCOVERY, &[index, 0, 0, 0])
                .map_err(|_| TransportError::Malformed("DOE encode"))?;
            let r = self.channel.exchange_object(&obj)?;
            let (_, ty, p) = decode_object(&r)
                .map_err(|_| TransportError::Malformed("DOE discovery response"))?;
            if ty != DOE_TYPE_DISCOVERY || p.len() < 4 {
                return Err(TransportError::Malformed("DOE discovery response"));
            }
            out.push((u16::from_le_bytes([p[0], p[1]]), p[2]));
            if p[3] == 0 {
                break;
            }
            index = p[3];
        }
        Ok(out)
    }
}

impl<C: DoeChannel> Transport for DoeTransport<C> {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        let obj = match &msg {
            Message::Spdm(m) => encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_CMA, m),
            Message::Secured(r) => encode_object(DOE_VENDOR_PCISIG, DOE_TYPE_SECURED_CMA, r),
        }
        .map_err(|_| TransportError::TooLarge(0))?;
        let r = self.channel.exchange_object(&obj)?;
        let (vendor, ty, p) =
            decode_object(&r).map_err(|_| TransportError::Malformed("DOE response object"))?;
        match (vendor, ty) {
            (DOE_VENDOR_PCISIG, DOE_TYPE_CMA) => Ok(Message::Spdm(p.to_vec())),
            (DOE_VENDOR_PCISIG, DOE_TYPE_SECURED_CMA) => Ok(Message::Secured(p.to_vec())),
            _ => Err(TransportError::Malformed("unexpected DOE object type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_layout() {
        let o = encode_object(1, 1, &[0x10, 0x84, 0, 0, 0xAA]).unwrap();
        assert_eq!(
            o,
            vec![1, 0, 1, 0, 4, 0, 0, 0, 0x10, 0x84, 0, 0, 0xAA, 0, 0, 0]
        );
        let (v, t, p) = decode_object(&o).unwrap();
        assert_eq!((v, t, p.len()), (1, 1, 8));
        assert_eq!(
            decode_object(&o[..12]),
            Err(DoeError::LengthMismatch {
                header: 4,
                actual: 3
            })
        );
        assert_eq!(decode_object(&o[..7]), Err(DoeError::Truncated));
        assert_eq!(decode_object(&o[..9]), Err(DoeError::NotDwordAligned(9)));
    }
}
