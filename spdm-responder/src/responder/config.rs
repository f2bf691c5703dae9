//! Responder configuration.

use crate::codec::{V10, V11, V12, V13};
use crate::crypto::{
    EcdhBackend, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, ASYM_ECDSA_P256, ASYM_ECDSA_P384,
    DHE_SECP256R1, DHE_SECP384R1, HASH_SHA256, HASH_SHA384,
};
use crate::measurement::{self, Measurement};
use crate::psk::PskEntry;

/// Size of nonces and random data.
pub const NONCE_SIZE: usize = 32;
/// Size of the 1.3 RequesterContext.
pub const REQ_CONTEXT_SIZE: usize = 8;
/// Maximum opaque data length accepted (DSP0274: 1024).
pub const MAX_OPAQUE: usize = 1024;
/// Error code the responder uses for an unknown session id (libspdm's InvalidSession).
pub const ERROR_INVALID_SESSION: u8 = 0x02;
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
    /// Ephemeral ECDHE keys of KEY_EXCHANGE: RustCrypto (default; zeroized,
    /// from the injected entropy) or ring (faster, not zeroized by ring).
    pub ecdh: EcdhBackend,
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
            // PSK sessions only with a key the user provides.
            psks: Vec::new(),
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
            ecdh: EcdhBackend::RustCrypto,
        }
    }
}
