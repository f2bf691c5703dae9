//! Serve the spdm-emu socket protocol on 127.0.0.1 (default port 2323).
//!
//! ```text
//! cargo run -p spdm-responder --example spdm_serve -- [--port N] [--identity-dir DIR]
//!     [--chain FILE --key FILE [--slot N]]...   (user chains; PEM or DER)
//!     [--export-root FILE]                      (PEM root(s) for a requester's trust store)
//!     [--heartbeat SECONDS] [--data-transfer-size BYTES]
//!     [--psk HEX|@FILE [--psk-hint STRING]]    (PSK sessions; off without --psk)
//! ```
//! Without --chain, an identity is generated on first run in --identity-dir
//! (default ./trustdev-identity) and reloaded afterwards.

use std::path::PathBuf;

use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::rng::OsEntropy;
use spdm_responder::{serve_tcp, Responder, ResponderConfig};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let mut port = 2323u16;
    let mut dir = PathBuf::from("trustdev-identity");
    let mut chains: Vec<(PathBuf, PathBuf, u8)> = Vec::new();
    let mut pending_chain: Option<PathBuf> = None;
    let mut slot = 0u8;
    let mut export: Option<PathBuf> = None;
    let mut cfg = ResponderConfig::default();
    let (mut psk, mut psk_hint) = (None, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--port" => port = val().parse().expect("port"),
            "--identity-dir" => dir = val().into(),
            "--chain" => pending_chain = Some(val().into()),
            "--slot" => slot = val().parse().expect("slot"),
            "--key" => chains.push((
                pending_chain.take().expect("--chain before --key"),
                val().into(),
                slot,
            )),
            "--export-root" => export = Some(val().into()),
            "--heartbeat" => cfg.heartbeat_period = val().parse().expect("seconds"),
            "--data-transfer-size" => cfg.data_transfer_size = val().parse().expect("bytes"),
            "--psk" => psk = Some(val()),
            "--psk-hint" => psk_hint = Some(val()),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(p) = psk {
        let entry = spdm_responder::psk::PskEntry::from_arg(&p, psk_hint.as_deref())
            .unwrap_or_else(|e| panic!("{e}"));
        cfg.psks.push(entry);
    }
    let identity = if chains.is_empty() {
        Identity::load_or_generate(&dir, &CmaDeviceName::default(), &mut OsEntropy)
            .expect("identity")
    } else {
        let mut id = Identity::default();
        for (c, k, s) in &chains {
            id.merge(Identity::from_files(c, k, *s).expect("load chain/key"));
        }
        id
    };
    if let Some(p) = export {
        let pem: String = identity
            .roots_der()
            .iter()
            .map(|d| spdm_responder::identity::pem_encode("CERTIFICATE", d))
            .collect();
        std::fs::write(&p, pem).expect("export root");
    }
    serve_tcp(port, Responder::new(cfg, identity)).expect("serve");
}
