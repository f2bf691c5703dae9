//! Latency and throughput of the SPDM stack, per algorithm set (in-process
//! transport, so this measures the SPDM/crypto work a device pays).
//!
//! ```text
//! cargo run --release -p spdm-responder --example spdm_bench -- [--iters N]
//! ```
//! Prints, per algorithm set and SPDM 1.2/1.3: full authentication
//! (GET_VERSION..CHALLENGE_AUTH incl. certificate chain and signature checks),
//! session setup (KEY_EXCHANGE..FINISH, both sides' ECDHE, signature and
//! HMACs), and secured-message throughput (4 KiB VENDOR_DEFINED echo in a session).

use std::time::{Duration, Instant};

use spdm_responder::crypto::*;
use spdm_responder::error::ErrorCode;
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::rng::OsEntropy;
use spdm_responder::transport::InMemory;
use spdm_responder::vendor::{VendorContext, VendorHandler, VendorKey};
use spdm_responder::{Requester, RequesterConfig, Responder, ResponderConfig};

struct Echo;
impl VendorHandler for Echo {
    fn handle(&mut self, _: &VendorContext, p: &[u8]) -> Result<Vec<u8>, ErrorCode> {
        Ok(p.to_vec())
    }
}

fn main() {
    let mut iters = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iters" {
            iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters);
        }
    }
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
        &CmaDeviceName::default(),
        1,
        &mut OsEntropy,
    )
    .expect("identity");
    let sets: [(&str, u32, u32, u16, u16); 4] = [
        (
            "P-256/SHA-256/AES-256-GCM",
            ASYM_ECDSA_P256,
            HASH_SHA256,
            DHE_SECP256R1,
            AEAD_AES_256_GCM,
        ),
        (
            "P-256/SHA-256/ChaCha20-Poly1305",
            ASYM_ECDSA_P256,
            HASH_SHA256,
            DHE_SECP256R1,
            AEAD_CHACHA20_POLY1305,
        ),
        (
            "P-384/SHA-384/AES-256-GCM",
            ASYM_ECDSA_P384,
            HASH_SHA384,
            DHE_SECP384R1,
            AEAD_AES_256_GCM,
        ),
        (
            "P-384/SHA-384/ChaCha20-Poly1305",
            ASYM_ECDSA_P384,
            HASH_SHA384,
            DHE_SECP384R1,
            AEAD_CHACHA20_POLY1305,
        ),
    ];
    println!(
        "{:<34} {:>4} {:>14} {:>14} {:>14}",
        "algorithms", "ver", "auth (ms)", "session (ms)", "secured MB/s"
    );
    for (name, asym, hash, dhe, aead) in sets {
        for ver in [0x12u8, 0x13] {
            let mut resp = Responder::new(ResponderConfig::default(), id.clone());
            resp.register_vendor(
                VendorKey {
                    require_session: true,
                    ..VendorKey::pcisig(0x7F)
                },
                Box::new(Echo),
            );
            let cfg = RequesterConfig {
                versions: vec![ver],
                base_asym: asym,
                base_hash: hash,
                dhe,
                aead,
                trusted_roots: id.roots_der(),
                ..RequesterConfig::default()
            };
            let mut r = Requester::new(cfg, InMemory::new(resp));
            let t = Instant::now();
            for _ in 0..iters {
                r.authenticate(0).expect("authenticate");
            }
            let auth = t.elapsed() / iters as u32;
            let t = Instant::now();
            let mut sid = 0;
            for i in 0..iters {
                sid = r.key_exchange(0, 0).expect("session");
                if i + 1 < iters {
                    r.end_session(sid).expect("end");
                }
            }
            let sess = t.elapsed() / iters as u32;
            let payload = vec![0x7Fu8; 4000];
            let t = Instant::now();
            let mut bytes = 0usize;
            while t.elapsed() < Duration::from_millis(300) {
                let out = r
                    .vendor_request(Some(sid), 3, &[1, 0], &payload)
                    .expect("vendor");
                bytes += payload.len() + out.len();
            }
            let mbps = bytes as f64 / t.elapsed().as_secs_f64() / 1e6;
            println!(
                "{:<34} {:>4} {:>14.3} {:>14.3} {:>14.1}",
                name,
                format!("{}.{}", ver >> 4, ver & 0xF),
                auth.as_secs_f64() * 1e3,
                sess.as_secs_f64() * 1e3,
                mbps
            );
        }
    }
}
