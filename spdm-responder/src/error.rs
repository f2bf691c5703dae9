//! Typed errors.

use thiserror::Error;

/// SPDM ERROR response codes (DSP0274 Table "Error code and error data").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    InvalidRequest = 0x01,
    Busy = 0x03,
    UnexpectedRequest = 0x04,
    Unspecified = 0x05,
    DecryptError = 0x06,
    UnsupportedRequest = 0x07,
    RequestInFlight = 0x08,
    InvalidResponseCode = 0x09,
    SessionLimitExceeded = 0x0A,
    SessionRequired = 0x0B,
    ResetRequired = 0x0C,
    ResponseTooLarge = 0x0D,
    RequestTooLarge = 0x0E,
    LargeResponse = 0x0F,
    MessageLost = 0x10,
    VersionMismatch = 0x41,
    ResponseNotReady = 0x42,
    RequestResynch = 0x43,
    OperationFailed = 0x44,
    NoPendingRequests = 0x45,
    VendorDefined = 0xFF,
}

impl ErrorCode {
    pub fn from_u8(v: u8) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            0x01 => InvalidRequest,
            0x03 => Busy,
            0x04 => UnexpectedRequest,
            0x05 => Unspecified,
            0x06 => DecryptError,
            0x07 => UnsupportedRequest,
            0x08 => RequestInFlight,
            0x09 => InvalidResponseCode,
            0x0A => SessionLimitExceeded,
            0x0B => SessionRequired,
            0x0C => ResetRequired,
            0x0D => ResponseTooLarge,
            0x0E => RequestTooLarge,
            0x0F => LargeResponse,
            0x10 => MessageLost,
            0x41 => VersionMismatch,
            0x42 => ResponseNotReady,
            0x43 => RequestResynch,
            0x44 => OperationFailed,
            0x45 => NoPendingRequests,
            0xFF => VendorDefined,
            _ => return None,
        })
    }
}

/// Errors from the cryptographic layer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("key derivation failed")]
    Kdf,
    #[error("signing failed")]
    Sign,
    #[error("signature verification failed")]
    BadSignature,
    #[error("invalid or unsupported private/public key")]
    BadKey,
    #[error("invalid peer DHE public key")]
    BadPublicKey,
    #[error("AEAD operation failed (bad MAC or key)")]
    Aead,
}

/// Errors while decoding a secured message record (DSP0277).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecuredError {
    #[error("record truncated or malformed")]
    Malformed,
    #[error("unknown session id {0:#010x}")]
    UnknownSession(u32),
    #[error("session {0:#010x} is not in a state that accepts records")]
    BadState(u32),
    #[error("MAC check failed (bad key, replayed or corrupted record)")]
    Mac,
    #[error("sequence number exhausted; session ended")]
    SequenceExhausted,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Errors of the device identity (certificates, keys, storage).
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(String),
    /// A certificate's validity ended before the verifier's clock.
    #[error("certificate expired: certificate {index} ({role}) was valid until {not_after}, the clock says {now}")]
    Expired {
        index: usize,
        role: &'static str,
        not_after: String,
        now: String,
    },
    /// A certificate's validity starts after the verifier's clock.
    #[error("certificate not yet valid: certificate {index} ({role}) is valid from {not_before}, the clock says {now}")]
    NotYetValid {
        index: usize,
        role: &'static str,
        not_before: String,
        now: String,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("slot {0} is out of range or empty")]
    Slot(u8),
}

/// Errors loading a pre-shared key (`--psk HEX|@FILE`).
#[derive(Debug, Error)]
pub enum PskError {
    #[error("PSK: expected an even number of hex digits, or @FILE")]
    Hex,
    #[error("PSK must be 1 to 256 bytes (got {0})")]
    KeyLength(usize),
    #[error("PSK hint must be at most 16 bytes (got {0})")]
    HintLength(usize),
    #[error("PSK file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("PSK file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 600 {path})")]
    Permissions { path: String, mode: u32 },
}

/// Errors seen by the requester.
#[derive(Debug, Error)]
pub enum RequesterError {
    #[error("transport: {0}")]
    Transport(String),
    #[error("responder answered ERROR {code:?} (0x{raw:02x}), data 0x{data:02x}")]
    ErrorResponse {
        code: Option<ErrorCode>,
        raw: u8,
        data: u8,
    },
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("unexpected response code 0x{0:02x}")]
    UnexpectedResponse(u8),
    #[error("negotiation failed: {0}")]
    Negotiation(&'static str),
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("session: {0}")]
    Session(&'static str),
    #[error(transparent)]
    Secured(#[from] SecuredError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Errors of the transports.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("frame too large: {0} bytes")]
    TooLarge(usize),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    #[error("DOE: {0}")]
    Doe(#[from] crate::transport::doe::DoeError),
}
