//! Latency and throughput of the SPDM stack, per algorithm set (in-process
//! transport, so this measures the SPDM/crypto work, not a transport).
//!
//! ```text
//! cargo run --release -p spdm-responder --example spdm_bench -- [--iters N] [--only TEXT]
//! ```
//! `--only` keeps the algorithm sets whose name contains TEXT (e.g. `P-384/SHA-384/AES`)
//! and skips the primitives (for profiling one set).
//!
//! Per algorithm set and SPDM 1.2/1.3 it prints, over `N` repetitions, the
//! median and the 10th-90th percentile range of:
//! - `auth`: GET_VERSION..CHALLENGE_AUTH (certificate retrieval, chain
//!   verification and signature checks: both sides' work);
//! - `session`: KEY_EXCHANGE + FINISH (both sides, wall clock), and `rsp cpu`:
//!   the responder's CPU time in it (its ECDHE, signature, key schedule,
//!   HMACs; the thread's CPU clock around each call into the responder, so
//!   time the thread is preempted does not count);
//! - `rsp cpu ring`: the same with the responder's ephemeral ECDHE keys from
//!   ring (`ResponderConfig::ecdh = EcdhBackend::Ring`; signatures stay
//!   RustCrypto's RFC 6979 ones);
//! - `end`: END_SESSION, timed separately;
//! - secured-message throughput: 4000-byte VENDOR_DEFINED echoes in a session
//!   for 300 ms, bytes both ways per second (one figure, not a median).
//!
//! Then the ECDSA/ECDH primitives of the two candidate backends, RustCrypto
//! (what the responder uses) and ring, medians of `N` operations each.

use std::time::{Duration, Instant};

use spdm_responder::crypto::*;
use spdm_responder::error::{ErrorCode, TransportError};
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::requester::{Message, Transport};
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

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// The in-process transport, accumulating the CPU time spent in the responder.
struct Timed {
    inner: InMemory,
    responder: Duration,
}

impl Transport for Timed {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        let t = thread_cpu();
        let r = self.inner.send_receive(msg);
        self.responder += thread_cpu() - t;
        r
    }
}

/// Median and 10th/90th percentiles, in milliseconds.
struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Stats {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() - 1) as f64 * q).round() as usize;
            samples[i].as_secs_f64() * 1e3
        };
        Stats {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = format!("{:.3} [{:.3}-{:.3}]", self.median, self.p10, self.p90);
        f.pad(&s)
    }
}

/// `n` timings of `op`.
fn time(n: usize, mut op: impl FnMut()) -> Stats {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed()
        })
        .collect();
    Stats::of(&mut v)
}

fn protocol(id: &Identity, iters: usize, only: Option<&str>) {
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
        "{:<32} {:>3} {:>22} {:>22} {:>22} {:>22} {:>22} {:>8}",
        "algorithms",
        "ver",
        "auth ms",
        "session ms",
        "rsp cpu ms",
        "rsp cpu ring",
        "end ms",
        "MB/s"
    );
    for (name, asym, hash, dhe, aead) in sets {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
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
            let transport = Timed {
                inner: InMemory::new(resp),
                responder: Duration::ZERO,
            };
            let mut r = Requester::new(cfg, transport);
            let auth = time(iters, || {
                r.authenticate(0).expect("authenticate");
            });
            let (mut setup, mut rsp, mut end) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..iters {
                r.transport_mut().responder = Duration::ZERO;
                let t = Instant::now();
                let sid = r.key_exchange(0, 0).expect("session");
                setup.push(t.elapsed());
                rsp.push(r.transport_mut().responder);
                let t = Instant::now();
                r.end_session(sid).expect("end");
                end.push(t.elapsed());
            }
            let sid = r.key_exchange(0, 0).expect("session");
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
            r.end_session(sid).expect("end");
            // The responder's CPU with ring's ECDHE.
            r.transport_mut().inner.responder = Responder::new(
                ResponderConfig {
                    ecdh: EcdhBackend::Ring,
                    ..ResponderConfig::default()
                },
                id.clone(),
            );
            r.init_connection().expect("connection");
            r.get_certificate(0).expect("certificate");
            let mut rsp_ring = Vec::new();
            for _ in 0..iters {
                r.transport_mut().responder = Duration::ZERO;
                let sid = r.key_exchange(0, 0).expect("session");
                rsp_ring.push(r.transport_mut().responder);
                r.end_session(sid).expect("end");
            }
            println!(
                "{:<32} {:>3} {:>22} {:>22} {:>22} {:>22} {:>22} {:>8.1}",
                name,
                format!("{}.{}", ver >> 4, ver & 0xF),
                auth,
                Stats::of(&mut setup),
                Stats::of(&mut rsp),
                Stats::of(&mut rsp_ring),
                Stats::of(&mut end),
                mbps
            );
        }
    }
}

fn primitives(iters: usize) {
    use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
    use ring::signature::{self as rs, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    println!();
    println!(
        "{:<40} {:>24} {:>24}",
        "primitive (ms)", "RustCrypto", "ring"
    );
    for (curve, algo, hash, group, ring_sig, ring_ecdh) in [
        (
            "P-256",
            AsymAlgo::EcdsaP256,
            HashAlgo::Sha256,
            DheGroup::Secp256r1,
            &rs::ECDSA_P256_SHA256_FIXED_SIGNING,
            &agreement::ECDH_P256,
        ),
        (
            "P-384",
            AsymAlgo::EcdsaP384,
            HashAlgo::Sha384,
            DheGroup::Secp384r1,
            &rs::ECDSA_P384_SHA384_FIXED_SIGNING,
            &agreement::ECDH_P384,
        ),
    ] {
        let key = SigningKey::generate(algo, &mut OsEntropy);
        let message = [0x5Au8; 100];
        let digest = hash.hash(&message);
        let rc = time(iters, || {
            key.sign_prehash(&digest).expect("sign");
        });
        let pkcs8 = key.to_pkcs8_der().expect("pkcs8");
        let kp = EcdsaKeyPair::from_pkcs8(ring_sig, &pkcs8, &rng).expect("ring key");
        let rg = time(iters, || {
            kp.sign(&rng, &message).expect("sign");
        });
        println!(
            "{:<40} {:>24} {:>24}",
            format!("{curve} ECDSA sign"),
            rc,
            rg
        );
        // One side of an ECDHE: key generation, public key, agreement.
        let peer = DheSecret::generate(group, &mut OsEntropy).public_exchange();
        let rc = time(iters, || {
            let s = DheSecret::generate(group, &mut OsEntropy);
            let _ = s.public_exchange();
            s.agree(&peer).expect("agree");
        });
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&peer);
        let rg = time(iters, || {
            let s = EphemeralPrivateKey::generate(ring_ecdh, &rng).expect("ring key");
            let _ = s.compute_public_key().expect("public");
            agreement::agree_ephemeral(s, &UnparsedPublicKey::new(ring_ecdh, &sec1), |k| k.len())
                .expect("agree");
        });
        println!(
            "{:<40} {:>24} {:>24}",
            format!("{curve} ECDHE (keygen + agree)"),
            rc,
            rg
        );
        let sig = key.sign_prehash(&digest).expect("sign");
        let vk = key.verifying_key();
        let rc = time(iters, || vk.verify_prehash(&digest, &sig).expect("verify"));
        println!(
            "{:<40} {:>24} {:>24}",
            format!("{curve} ECDSA verify"),
            rc,
            "-"
        );
    }
}

fn main() {
    let mut iters = 50usize;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters),
            "--only" => only = args.next(),
            _ => {}
        }
    }
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
        &CmaDeviceName::default(),
        1,
        &mut OsEntropy,
    )
    .expect("identity");
    println!("{iters} repetitions; each cell: median [10th-90th percentile]");
    protocol(&id, iters, only.as_deref());
    if only.is_none() {
        primitives(iters.max(50));
    }
}
