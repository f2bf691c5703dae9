//! The DOE and SPDM faults and the trace, end to end in memory: a device's
//! DOE capability behind the controlled front, driven through its registers
//! the way drivers/pci/doe.c does, with our SPDM requester on top.

use super::doe::AltIdentity;
use super::fault::FaultSpec;
use super::trace::TraceSink;
use super::DeviceControl;
use crate::security::doe::{ctrl, reg, status};
use crate::security::ide::{Ide, IdeConfig};
use serde_json::{json, Value};
use spdm_responder::error::TransportError;
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, KpAckStatus, SubStream};
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::transport::doe::{DoeChannel, DoeTransport};
use spdm_responder::{Requester, RequesterConfig, ResponderConfig};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use vfio_user_server::pci::ConfigHandler;

/// The test identity's directory (its CAs also sign the wrong-SAN leaf).
fn identity_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("trustdev-control-test-identity")
}

fn identity() -> Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        crate::security::cma::load_identity(&identity_dir(), &CmaDeviceName::default()).unwrap()
    })
    .clone()
}

struct Rig {
    doe: Box<dyn ConfigHandler>,
    ctl: Arc<DeviceControl>,
    ide: Arc<Ide>,
}

fn rig() -> Rig {
    let ctl = DeviceControl::new("t0", "test", "/nonexistent".into(), TraceSink::default());
    let ide = Ide::new(IdeConfig::default());
    let c = Arc::clone(&ctl);
    let mut caps = vec![crate::security::doe_capability_wrapped(
        Some(identity()),
        ResponderConfig::default(),
        Some(&ide),
        None,
        &move |h| super::vendor::Traced::wrap(h, Arc::clone(&c)),
    )];
    ctl.wrap_doe(
        &mut caps,
        Some(AltIdentity {
            name: CmaDeviceName::default(),
            config: ResponderConfig::default(),
            dir: identity_dir(),
        }),
    );
    super::probes::ide(&ctl, &ide);
    let doe = caps.remove(0).handler.unwrap();
    Rig { doe, ctl, ide }
}

fn arm(ctl: &DeviceControl, v: Value) {
    ctl.arm(FaultSpec::from_value(&v).unwrap()).unwrap();
}

fn w(h: &mut dyn ConfigHandler, r: u16, v: u32) {
    h.write(r - 4, &v.to_le_bytes());
}

fn r(h: &mut dyn ConfigHandler, r: u16) -> u32 {
    let mut b = [0u8; 4];
    h.read(r - 4, &mut b);
    u32::from_le_bytes(b)
}

/// What drivers/pci/doe.c does: wait for Busy clear, write, Go, poll for
/// Data Object Ready (or Error) for at most 1 s, else Abort.
struct Kernel<'a>(&'a mut dyn ConfigHandler);

impl DoeChannel for Kernel<'_> {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        let h = &mut *self.0;
        let deadline = Instant::now() + Duration::from_secs(1);
        while r(h, reg::STATUS) & status::BUSY != 0 {
            if Instant::now() > deadline {
                return Err(TransportError::Malformed("DOE busy"));
            }
            std::thread::sleep(Duration::from_millis(4));
        }
        for d in obj.chunks(4) {
            w(h, reg::WRITE, u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
        }
        w(h, reg::CTRL, ctrl::GO);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let s = r(h, reg::STATUS);
            if s & status::ERROR != 0 {
                w(h, reg::CTRL, ctrl::ABORT);
                return Err(TransportError::Malformed("DOE error"));
            }
            if s & status::READY != 0 {
                break;
            }
            if Instant::now() > deadline {
                w(h, reg::CTRL, ctrl::ABORT);
                return Err(TransportError::Malformed("DOE timeout"));
            }
            std::thread::sleep(Duration::from_millis(4));
        }
        let mut out = Vec::new();
        while r(h, reg::STATUS) & status::READY != 0 {
            out.extend_from_slice(&r(h, reg::READ).to_le_bytes());
            w(h, reg::READ, 0);
        }
        Ok(out)
    }
}

fn requester(doe: &mut dyn ConfigHandler) -> Requester<DoeTransport<Kernel<'_>>> {
    let cfg = RequesterConfig {
        trusted_roots: identity().roots_der(),
        ..RequesterConfig::default()
    };
    Requester::new(cfg, DoeTransport::new(Kernel(doe)))
}

fn trace(ctl: &DeviceControl) -> Vec<Value> {
    ctl.trace
        .lines(0, usize::MAX)
        .0
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn authenticate(doe: &mut dyn ConfigHandler) -> Result<(), String> {
    let mut q = requester(doe);
    q.init_connection().map_err(|e| e.to_string())?;
    q.get_digests().map_err(|e| e.to_string())?;
    q.get_certificate(0).map_err(|e| e.to_string())?;
    q.challenge(0, 0).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn doe_busy_error_and_no_response() {
    let mut t = rig();
    let doe = &mut *t.doe;
    authenticate(doe).unwrap();
    // Busy for 50 ms, then the answer.
    arm(&t.ctl, json!({"fault": "doe-busy", "ms": 50}));
    let mut q = requester(doe);
    let start = Instant::now();
    q.init_connection().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(50));
    // Busy past the kernel's 1 s: the exchange times out; the next works.
    arm(&t.ctl, json!({"fault": "doe-busy", "ms": 1300}));
    let e = requester(doe).init_connection().unwrap_err();
    assert!(e.to_string().contains("DOE timeout"), "{e}");
    std::thread::sleep(Duration::from_millis(400));
    // DOE Error, cleared by Abort.
    arm(&t.ctl, json!({"fault": "doe-error"}));
    let e = requester(doe).init_connection().unwrap_err();
    assert!(e.to_string().contains("DOE error"), "{e}");
    // No response: the kernel's timeout and Abort.
    arm(&t.ctl, json!({"fault": "doe-no-response", "count": 1}));
    let e = requester(doe).init_connection().unwrap_err();
    assert!(e.to_string().contains("DOE timeout"), "{e}");
    // Usable again.
    authenticate(doe).unwrap();
    let tr = trace(&t.ctl);
    let effects: Vec<&str> = tr.iter().filter_map(|l| l["effect"].as_str()).collect();
    assert_eq!(
        effects,
        [
            "DOE Busy for 50 ms",
            "DOE Busy for 1300 ms",
            "DOE Error set",
            "request taken, no response"
        ]
    );
}

#[test]
fn spdm_error_on_the_nth_request() {
    let mut t = rig();
    let doe = &mut *t.doe;
    arm(
        &t.ctl,
        json!({"fault": "spdm-error", "request": "GET_DIGESTS", "nth": 2, "code": 3}),
    );
    authenticate(doe).unwrap();
    let e = authenticate(doe).unwrap_err();
    assert!(e.contains("ERROR") && e.contains("0x03"), "{e}");
    authenticate(doe).unwrap();
    let st = t.ctl.state();
    assert_eq!(st["spdm"]["phase"], "authenticated", "{st}");
    assert_eq!(st["spdm"]["version"], "1.3");
    assert_eq!(st["spdm"]["last_error"], "GET_DIGESTS: Busy");
    let errors: Vec<Value> = trace(&t.ctl)
        .into_iter()
        .filter(|l| l["spdm"]["msg"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["spdm"]["error"], "Busy");
}

#[test]
fn response_not_ready_then_respond_if_ready() {
    let mut t = rig();
    let doe = &mut *t.doe;
    arm(
        &t.ctl,
        json!({"fault": "spdm-not-ready", "request": "CHALLENGE", "delay_ms": 2}),
    );
    authenticate(doe).unwrap();
    let tr = trace(&t.ctl);
    let msgs: Vec<&str> = tr
        .iter()
        .filter_map(|l| l["spdm"]["msg"].as_str())
        .collect();
    let i = msgs.iter().position(|m| *m == "CHALLENGE").unwrap();
    assert_eq!(
        &msgs[i..i + 4],
        ["CHALLENGE", "ERROR", "RESPOND_IF_READY", "CHALLENGE_AUTH"]
    );
}

#[test]
fn corrupted_signature() {
    let mut t = rig();
    let doe = &mut *t.doe;
    arm(&t.ctl, json!({"fault": "spdm-bad-signature"}));
    let e = authenticate(doe).unwrap_err();
    assert!(e.to_lowercase().contains("signature"), "{e}");
    authenticate(doe).unwrap();
}

#[test]
fn wrong_certificates() {
    let mut t = rig();
    let doe = &mut *t.doe;
    arm(
        &t.ctl,
        json!({"fault": "spdm-cert", "cert": "unknown-root"}),
    );
    let e = authenticate(doe).unwrap_err();
    assert!(
        e.to_lowercase().contains("root") || e.to_lowercase().contains("chain"),
        "{e}"
    );
    authenticate(doe).unwrap();
    // Wrong SAN: a chain the requester trusts (same CAs), whose leaf names
    // another function.
    let leaf_san = |doe: &mut dyn ConfigHandler| {
        let mut q = requester(doe);
        q.init_connection().unwrap();
        q.get_digests().unwrap();
        let chain = q.get_certificate(0).unwrap();
        q.challenge(0, 0).unwrap();
        let hash = q.connection().hash.unwrap();
        let certs = spdm_responder::identity::parse_spdm_chain(&chain, hash).unwrap();
        spdm_responder::identity::leaf_other_name(certs.last().unwrap()).unwrap()
    };
    let good = leaf_san(doe);
    arm(&t.ctl, json!({"fault": "spdm-cert", "cert": "wrong-san"}));
    let wrong = leaf_san(doe);
    assert_ne!(good, wrong);
    assert_eq!(leaf_san(doe), good, "one negotiation only");
    // Expired: the device's own CAs and name, a leaf past its validity.
    arm(&t.ctl, json!({"fault": "spdm-cert", "cert": "expired"}));
    let e = authenticate(doe).unwrap_err();
    assert!(e.contains("certificate expired"), "{e}");
    assert!(e.contains("2025-01-01"), "{e}");
    assert_eq!(leaf_san(doe), good, "used up: the good chain again");
    authenticate(doe).unwrap();
}

#[test]
fn trace_never_carries_keys() {
    let mut t = rig();
    let ide = Arc::clone(&t.ide);
    let doe = &mut *t.doe;
    let mut q = requester(doe);
    q.init_connection().unwrap();
    q.get_digests().unwrap();
    q.get_certificate(0).unwrap();
    let sid = q.key_exchange(0, 0).unwrap();
    let mut keys = Vec::new();
    for d in [KeyDirection::Rx, KeyDirection::Tx] {
        for ss in SubStream::ALL {
            let s = KeySlot::new(KeySet::K0, d, ss);
            let k: [u8; 32] =
                std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ s.to_byte() ^ 0xa5);
            keys.push(k);
            assert_eq!(
                q.ide_km_key_prog(sid, 0, s, 0, &IdeKey::new(k, 1)).unwrap(),
                Ok(KpAckStatus::Success)
            );
        }
    }
    // The key-set switch refusal: K_SET_GO refused, keys left as they were.
    arm(&t.ctl, json!({"fault": "ide-key-set-refusal"}));
    let slot = KeySlot::new(KeySet::K0, KeyDirection::Rx, SubStream::Posted);
    let e = q.ide_km_key_set_go(sid, 0, slot, 0).unwrap_err();
    assert!(e.to_string().contains("0x05"), "{e}");
    q.ide_km_key_set_go(sid, 0, slot, 0).unwrap();
    drop(q);
    assert!(!ide.key_states(0).is_empty());
    let text: String = t.ctl.trace.lines(0, usize::MAX).0.join("\n");
    assert!(text.to_lowercase().contains("secured"), "{text}");
    assert!(
        text.contains(r#""msg":"KEY_PROG""#),
        "IDE_KM decoded: {text}"
    );
    assert!(text.contains(r#""slot":"K0|TX|CPL""#), "{text}");
    assert!(text.contains("K_SET_GO refused"), "{text}");
    // The key as programmed and as it travels in KEY_PROG (dwords byte-swapped).
    for k in &keys {
        let wire = IdeKey::new(*k, 1).to_wire();
        for form in [&k[..], &wire[..32]] {
            for win in form.windows(4) {
                let hex: String = win.iter().map(|b| format!("{b:02x}")).collect();
                let dec = win
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                assert!(
                    !text.to_lowercase().contains(&hex),
                    "key bytes {hex} in the trace"
                );
                assert!(!text.contains(&dec), "key bytes {dec} in the trace");
            }
        }
    }
    // The state shows the session and the key slots, never keys.
    assert_eq!(t.ctl.state()["spdm"]["phase"], "session");
    let state = t.ctl.state().to_string();
    assert!(state.contains("key_slots"));
    for k in &keys {
        let hex: String = k[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!state.contains(&hex));
    }
}
