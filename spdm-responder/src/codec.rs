//! Message codec helpers: bounds-checked reader/writer and the DSP0274 code table.

/// SPDM versions this crate speaks (major.minor as in the header byte).
pub const V10: u8 = 0x10;
pub const V11: u8 = 0x11;
pub const V12: u8 = 0x12;
pub const V13: u8 = 0x13;
pub const SUPPORTED_VERSIONS: [u8; 4] = [V10, V11, V12, V13];

/// Request codes of DSP0274 (1.0-1.3, plus 1.4 SLOT_MANAGEMENT for recognition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RequestCode {
    GetDigests = 0x81,
    GetCertificate = 0x82,
    Challenge = 0x83,
    GetVersion = 0x84,
    ChunkSend = 0x85,
    ChunkGet = 0x86,
    GetEndpointInfo = 0x87,
    SlotManagement = 0x88,
    GetMeasurements = 0xE0,
    GetCapabilities = 0xE1,
    GetSupportedEventTypes = 0xE2,
    NegotiateAlgorithms = 0xE3,
    KeyExchange = 0xE4,
    Finish = 0xE5,
    PskExchange = 0xE6,
    PskFinish = 0xE7,
    Heartbeat = 0xE8,
    KeyUpdate = 0xE9,
    GetEncapsulatedRequest = 0xEA,
    DeliverEncapsulatedResponse = 0xEB,
    EndSession = 0xEC,
    GetCsr = 0xED,
    SetCertificate = 0xEE,
    GetMeasurementExtensionLog = 0xEF,
    SubscribeEventTypes = 0xF0,
    SendEvent = 0xF1,
    GetKeyPairInfo = 0xFC,
    SetKeyPairInfo = 0xFD,
    VendorDefinedRequest = 0xFE,
    RespondIfReady = 0xFF,
}

impl RequestCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        use RequestCode::*;
        Some(match v {
            0x81 => GetDigests,
            0x82 => GetCertificate,
            0x83 => Challenge,
            0x84 => GetVersion,
            0x85 => ChunkSend,
            0x86 => ChunkGet,
            0x87 => GetEndpointInfo,
            0x88 => SlotManagement,
            0xE0 => GetMeasurements,
            0xE1 => GetCapabilities,
            0xE2 => GetSupportedEventTypes,
            0xE3 => NegotiateAlgorithms,
            0xE4 => KeyExchange,
            0xE5 => Finish,
            0xE6 => PskExchange,
            0xE7 => PskFinish,
            0xE8 => Heartbeat,
            0xE9 => KeyUpdate,
            0xEA => GetEncapsulatedRequest,
            0xEB => DeliverEncapsulatedResponse,
            0xEC => EndSession,
            0xED => GetCsr,
            0xEE => SetCertificate,
            0xEF => GetMeasurementExtensionLog,
            0xF0 => SubscribeEventTypes,
            0xF1 => SendEvent,
            0xFC => GetKeyPairInfo,
            0xFD => SetKeyPairInfo,
            0xFE => VendorDefinedRequest,
            0xFF => RespondIfReady,
            _ => return None,
        })
    }
    /// The SPDM version that introduced the request.
    pub fn min_version(self) -> u8 {
        use RequestCode::*;
        match self {
            GetDigests | GetCertificate | Challenge | GetVersion | GetMeasurements
            | GetCapabilities | NegotiateAlgorithms | VendorDefinedRequest | RespondIfReady => V10,
            KeyExchange
            | Finish
            | PskExchange
            | PskFinish
            | Heartbeat
            | KeyUpdate
            | GetEncapsulatedRequest
            | DeliverEncapsulatedResponse
            | EndSession => V11,
            ChunkSend | ChunkGet | GetCsr | SetCertificate => V12,
            GetEndpointInfo
            | GetSupportedEventTypes
            | GetMeasurementExtensionLog
            | SubscribeEventTypes
            | SendEvent
            | GetKeyPairInfo
            | SetKeyPairInfo => V13,
            SlotManagement => 0x14,
        }
    }
    /// The response code that answers this request.
    pub fn response_code(self) -> u8 {
        match self {
            RequestCode::RespondIfReady => 0x7F,
            RequestCode::SendEvent => 0x71,
            c => (c as u8) & 0x7F,
        }
    }
}

/// Response codes.
pub mod rsp {
    pub const DIGESTS: u8 = 0x01;
    pub const CERTIFICATE: u8 = 0x02;
    pub const CHALLENGE_AUTH: u8 = 0x03;
    pub const VERSION: u8 = 0x04;
    pub const CHUNK_SEND_ACK: u8 = 0x05;
    pub const CHUNK_RESPONSE: u8 = 0x06;
    pub const MEASUREMENTS: u8 = 0x60;
    pub const CAPABILITIES: u8 = 0x61;
    pub const ALGORITHMS: u8 = 0x63;
    pub const KEY_EXCHANGE_RSP: u8 = 0x64;
    pub const FINISH_RSP: u8 = 0x65;
    pub const PSK_EXCHANGE_RSP: u8 = 0x66;
    pub const PSK_FINISH_RSP: u8 = 0x67;
    pub const HEARTBEAT_ACK: u8 = 0x68;
    pub const KEY_UPDATE_ACK: u8 = 0x69;
    pub const END_SESSION_ACK: u8 = 0x6C;
    pub const VENDOR_DEFINED_RESPONSE: u8 = 0x7E;
    pub const ERROR: u8 = 0x7F;
}

/// A bounds-checked little-endian reader. Every accessor returns `None` past the end.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Some(s)
    }
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Some(a)
    }
}

/// A little-endian writer.
#[derive(Default, Debug, Clone)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(64),
        }
    }
    pub fn header(version: u8, code: u8, p1: u8, p2: u8) -> Self {
        let mut w = Self::new();
        w.buf.extend_from_slice(&[version, code, p1, p2]);
        w
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u24(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes()[..3]);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Build an SPDM ERROR response.
pub fn error_response(version: u8, code: crate::error::ErrorCode, data: u8) -> Vec<u8> {
    vec![version, rsp::ERROR, code as u8, data]
}

/// Capability flag bits (DSP0274 CAPABILITIES Flags).
pub mod caps {
    pub const CACHE: u32 = 1 << 0;
    pub const CERT: u32 = 1 << 1;
    pub const CHAL: u32 = 1 << 2;
    pub const MEAS_NO_SIG: u32 = 1 << 3;
    pub const MEAS_SIG: u32 = 1 << 4;
    pub const MEAS_MASK: u32 = 3 << 3;
    pub const MEAS_FRESH: u32 = 1 << 5;
    pub const ENCRYPT: u32 = 1 << 6;
    pub const MAC: u32 = 1 << 7;
    pub const MUT_AUTH: u32 = 1 << 8;
    pub const KEY_EX: u32 = 1 << 9;
    pub const PSK: u32 = 1 << 10;
    pub const PSK_WITH_CONTEXT: u32 = 1 << 11;
    pub const PSK_MASK: u32 = 3 << 10;
    pub const ENCAP: u32 = 1 << 12;
    pub const HBEAT: u32 = 1 << 13;
    pub const KEY_UPD: u32 = 1 << 14;
    pub const HANDSHAKE_IN_THE_CLEAR: u32 = 1 << 15;
    pub const PUB_KEY_ID: u32 = 1 << 16;
    pub const CHUNK: u32 = 1 << 17;
    pub const ALIAS_CERT: u32 = 1 << 18;
    /// 1.3 EP_INFO_CAP (2 bits): 01b without, 10b with signature, 11b reserved.
    pub const EP_INFO_MASK: u32 = 3 << 22;
    pub const EVENT: u32 = 1 << 25;
    /// 1.3 MULTI_KEY_CAP (2 bits): 01b only, 10b negotiated, 11b reserved.
    pub const MULTI_KEY_MASK: u32 = 3 << 26;
    /// Bits a requester of each version defines (the others are reserved).
    pub const REQ_MASK_11: u32 = 0x0001_FFC6;
    pub const REQ_MASK_12: u32 = REQ_MASK_11 | CHUNK;
    pub const REQ_MASK_13: u32 = REQ_MASK_12 | EP_INFO_MASK | EVENT | MULTI_KEY_MASK;

    /// The requester flag bits `version` defines.
    pub fn request_mask(version: u8) -> u32 {
        match version {
            super::V10 => 0,
            super::V11 => REQ_MASK_11,
            super::V12 => REQ_MASK_12,
            _ => REQ_MASK_13,
        }
    }
    /// Bits defined by each version (for masking what we advertise).
    pub const MASK_10: u32 = 0x3F;
    pub const MASK_11: u32 = 0x1_FFFF;
    pub const MASK_12: u32 = 0x3F_FFFF;
    pub const MASK_13: u32 = 0x3FFF_FFFF;
}

/// Minimum DataTransferSize in 1.2+.
pub const MIN_DATA_TRANSFER_SIZE: u32 = 42;
