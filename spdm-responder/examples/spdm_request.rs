//! A host-side requester over the spdm-emu socket (PCI_DOE or MCTP): runs
//! authentication, measurements and sessions against any spdm-emu compatible
//! responder (ours, DMTF spdm_responder_emu, ...).
//!
//! ```text
//! cargo run -p spdm-responder --example spdm_request -- --root ROOT.{pem,der} [--port 2323]
//!     [--trans PCI_DOE|MCTP] [--ver 1.0|1.1|1.2|1.3] [--p256] [--chacha] [--dts BYTES]
//!     [--psk HEX|@FILE [--psk-hint STRING]]
//! ```
//! The PSK session runs only with `--psk` (DMTF's spdm_responder_emu uses
//! "TestPskData\0" = 5465737450736b4461746100 with hint "TestPskHint").

use spdm_responder::codec::{V10, V11, V12, V13};
use spdm_responder::crypto::*;
use spdm_responder::identity;
use spdm_responder::requester::Transport;
use spdm_responder::transport::doe::DoeTransport;
use spdm_responder::transport::tcp::{EmuClient, TRANSPORT_MCTP, TRANSPORT_PCI_DOE};
use spdm_responder::{Requester, RequesterConfig};

fn flow<T: Transport>(r: &mut Requester<T>) -> Result<(), Box<dyn std::error::Error>> {
    let c = r.init_connection()?.clone();
    println!(
        "negotiated SPDM {}.{}: {:?} {:?} dhe={:?} aead={:?} caps={:#010x}",
        c.version >> 4,
        c.version & 0xF,
        c.hash,
        c.asym,
        c.dhe,
        c.aead,
        c.rsp_caps
    );
    let (mask, _) = r.get_digests()?;
    println!("DIGESTS: slot mask {mask:#04x}");
    let chain = r.get_certificate(0)?;
    println!(
        "CERTIFICATE slot 0: {} bytes, chain verified to the trusted root",
        chain.len()
    );
    let ch = r.challenge(0, 0xFF)?;
    println!(
        "CHALLENGE_AUTH verified (summary hash {} bytes)",
        ch.measurement_summary_hash.len()
    );
    let m = r.get_measurements(None, 0xFF, true, 0)?;
    println!(
        "MEASUREMENTS: {} blocks, signature verified",
        m.blocks.len()
    );
    for b in &m.blocks {
        println!(
            "  index {:#04x} type {:#04x} {} bytes",
            b.index,
            b.value_type,
            b.value.len()
        );
    }
    if c.version == V10 {
        return Ok(());
    }
    let s = r.key_exchange(0, 0)?;
    println!("KEY_EXCHANGE/FINISH: session {s:#010x} established");
    r.heartbeat(s).or_else(|e| {
        println!("  HEARTBEAT: {e}");
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    r.get_measurements(Some(s), 0xFF, true, 0)?;
    println!("  MEASUREMENTS in session verified");
    r.key_update(s, false)?;
    r.key_update(s, true)?;
    println!("  KEY_UPDATE UpdateKey + UpdateAllKeys + VerifyNewKey ok");
    r.end_session(s)?;
    println!("  END_SESSION ok");
    if r.connection().rsp_caps & spdm_responder::codec::caps::PSK_MASK == 0 {
        println!("no PSK_CAP (or no --psk): PSK session skipped");
        return Ok(());
    }
    let p = r.psk_exchange(0)?;
    println!("PSK_EXCHANGE/PSK_FINISH: session {p:#010x} established");
    r.key_update(p, true)?;
    r.end_session(p)?;
    println!("  PSK session: KEY_UPDATE + END_SESSION ok");
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut port = 2323u16;
    let mut trans = TRANSPORT_PCI_DOE;
    let mut cfg = RequesterConfig::default();
    let (mut psk, mut psk_hint) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--port" => port = val().parse().expect("port"),
            "--root" => {
                let data = std::fs::read(val()).expect("read root");
                cfg.trusted_roots
                    .extend(identity::parse_certs(&data).expect("root certificate"));
            }
            "--trans" => {
                trans = if val() == "MCTP" {
                    TRANSPORT_MCTP
                } else {
                    TRANSPORT_PCI_DOE
                }
            }
            "--ver" => {
                cfg.versions = vec![match val().as_str() {
                    "1.0" => V10,
                    "1.1" => V11,
                    "1.2" => V12,
                    _ => V13,
                }]
            }
            "--p256" => {
                cfg.base_asym = ASYM_ECDSA_P256;
                cfg.base_hash = HASH_SHA256;
                cfg.dhe = DHE_SECP256R1;
            }
            "--chacha" => cfg.aead = AEAD_CHACHA20_POLY1305,
            "--dts" => cfg.data_transfer_size = val().parse().expect("bytes"),
            "--psk" => psk = Some(val()),
            "--psk-hint" => psk_hint = Some(val()),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(p) = psk {
        let entry = spdm_responder::psk::PskEntry::from_arg(&p, psk_hint.as_deref())
            .unwrap_or_else(|e| panic!("{e}"));
        cfg.psk = Some(entry);
    }
    let client = EmuClient::connect(port, trans).expect("connect");
    let res = if trans == TRANSPORT_MCTP {
        let mut r = Requester::new(cfg, client);
        r.set_mctp_binding(true);
        let res = flow(&mut r);
        let _ = r.transport_mut().shutdown();
        res
    } else {
        let mut t = DoeTransport::new(client);
        println!("DOE discovery: {:?}", t.discover().expect("discovery"));
        let mut r = Requester::new(cfg, t);
        let res = flow(&mut r);
        let _ = r.transport_mut().channel.shutdown();
        res
    };
    if let Err(e) = res {
        eprintln!("FAILED: {e}");
        std::process::exit(1);
    }
    println!("PASS");
}
