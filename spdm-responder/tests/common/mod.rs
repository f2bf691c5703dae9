#![allow(dead_code)]
//! Shared helpers for the integration tests.

use std::sync::OnceLock;

use spdm_responder::crypto::{
    AsymAlgo, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, ASYM_ECDSA_P256, ASYM_ECDSA_P384,
    DHE_SECP256R1, DHE_SECP384R1, HASH_SHA256, HASH_SHA384,
};
use spdm_responder::error::ErrorCode;
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::psk::PskEntry;

pub const INVALID: u8 = ErrorCode::InvalidRequest as u8;
pub const UNEXPECTED: u8 = ErrorCode::UnexpectedRequest as u8;
pub const UNSUPPORTED: u8 = ErrorCode::UnsupportedRequest as u8;
pub const MISMATCH: u8 = ErrorCode::VersionMismatch as u8;
pub const SESSION_REQUIRED: u8 = ErrorCode::SessionRequired as u8;
pub const DECRYPT: u8 = ErrorCode::DecryptError as u8;
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::transport::InMemory;
use spdm_responder::{Requester, RequesterConfig, Responder, ResponderConfig};

/// A fixed identity (both algorithms, slots 0 and 1), generated once.
pub fn identity() -> Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let mut rng = DeterministicEntropy::new(b"trustdev test identity");
        Identity::generate(
            &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
            &CmaDeviceName::default(),
            2,
            &mut rng,
        )
        .unwrap()
    })
    .clone()
}

/// An algorithm set a requester offers.
#[derive(Clone, Copy, Debug)]
pub struct Algos {
    pub name: &'static str,
    pub asym: u32,
    pub hash: u32,
    pub dhe: u16,
    pub aead: u16,
}

pub const ALGOS: [Algos; 4] = [
    Algos {
        name: "P256-SHA256-AES256GCM",
        asym: ASYM_ECDSA_P256,
        hash: HASH_SHA256,
        dhe: DHE_SECP256R1,
        aead: AEAD_AES_256_GCM,
    },
    Algos {
        name: "P384-SHA384-AES256GCM",
        asym: ASYM_ECDSA_P384,
        hash: HASH_SHA384,
        dhe: DHE_SECP384R1,
        aead: AEAD_AES_256_GCM,
    },
    Algos {
        name: "P256-SHA256-CHACHA20",
        asym: ASYM_ECDSA_P256,
        hash: HASH_SHA256,
        dhe: DHE_SECP256R1,
        aead: AEAD_CHACHA20_POLY1305,
    },
    Algos {
        name: "P384-SHA384-CHACHA20",
        asym: ASYM_ECDSA_P384,
        hash: HASH_SHA384,
        dhe: DHE_SECP384R1,
        aead: AEAD_CHACHA20_POLY1305,
    },
];

pub fn requester_config(version: u8, a: &Algos) -> RequesterConfig {
    RequesterConfig {
        versions: vec![version],
        base_asym: a.asym,
        base_hash: a.hash,
        dhe: a.dhe,
        aead: a.aead,
        trusted_roots: identity().roots_der(),
        psk: Some(PskEntry::dmtf_test()),
        ..RequesterConfig::default()
    }
}

/// The default configuration plus DMTF's public test PSK (PSK sessions are
/// off by default; these tests turn them on explicitly).
pub fn psk_config() -> ResponderConfig {
    ResponderConfig {
        psks: vec![PskEntry::dmtf_test()],
        ..ResponderConfig::default()
    }
}

pub fn responder(cfg: ResponderConfig) -> Responder {
    Responder::with_entropy(
        cfg,
        identity(),
        Box::new(DeterministicEntropy::new(b"responder")),
    )
}

pub fn in_memory(version: u8, a: &Algos, cfg: ResponderConfig) -> Requester<InMemory> {
    Requester::with_entropy(
        requester_config(version, a),
        InMemory::new(responder(cfg)),
        Box::new(DeterministicEntropy::new(b"requester")),
    )
}
