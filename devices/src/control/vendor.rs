//! IDE_KM and TDISP messages in the trace, and the IDE key-set switch
//! refusal: a wrapper around the vendor-defined handlers a device's SPDM
//! responder runs inside secured sessions, where the messages are plain.
//!
//! Decoded are the object or message type, the session, the Stream ID, key
//! slot and port index (IDE_KM), the interface ID and TDI state (TDISP), the
//! handler's time and an error code: never a key (KEY_PROG's key and IV
//! bytes are not looked at) or a nonce.

use super::fault::{Fault, Match};
use super::DeviceControl;
use serde_json::{json, Map, Value};
use spdm_responder::error::ErrorCode;
use spdm_responder::idekm::{codec, object, KeySlot};
use spdm_responder::tdisp::code;
use spdm_responder::vendor::{VendorContext, VendorHandler};
use std::sync::Arc;
use std::time::Instant;

/// PCI-SIG vendor-defined protocol IDs (the payload's first byte).
const PROTOCOL_IDE_KM: u8 = 0x00;
const PROTOCOL_TDISP: u8 = 0x01;

fn ide_km_name(obj: u8) -> &'static str {
    match obj {
        object::QUERY => "QUERY",
        object::QUERY_RESP => "QUERY_RESP",
        object::KEY_PROG => "KEY_PROG",
        object::KP_ACK => "KP_ACK",
        object::K_SET_GO => "K_SET_GO",
        object::K_SET_STOP => "K_SET_STOP",
        object::K_GOSTOP_ACK => "K_GOSTOP_ACK",
        _ => "?",
    }
}

/// Decodes one IDE_KM or TDISP payload (protocol ID first) for the trace.
pub fn decode(payload: &[u8]) -> Value {
    let mut m = Map::new();
    match payload.first() {
        Some(&PROTOCOL_IDE_KM) => {
            let obj = payload.get(1).copied().unwrap_or(0xff);
            m.insert("protocol".into(), json!("IDE_KM"));
            m.insert("msg".into(), json!(ide_km_name(obj)));
            if obj == object::QUERY || obj == object::QUERY_RESP {
                m.insert("port_index".into(), json!(payload.get(3)));
            } else if let Some(h) = codec::Request::stream_header(payload) {
                m.insert("stream_id".into(), json!(h.stream_id));
                m.insert("port_index".into(), json!(h.port_index));
                m.insert(
                    "slot".into(),
                    json!(KeySlot::from_byte(h.key_sub_stream)
                        .map(KeySlot::name)
                        .unwrap_or_else(|b| format!("{b:#04x}"))),
                );
            }
        }
        Some(&PROTOCOL_TDISP) => {
            let t = payload.get(2).copied().unwrap_or(0);
            m.insert("protocol".into(), json!("TDISP"));
            m.insert("msg".into(), json!(code::name(t).unwrap_or("?")));
            if let Some(v) = payload.get(1) {
                m.insert("version".into(), json!(format!("{}.{}", v >> 4, v & 0xf)));
            }
            if let Some(id) = payload.get(4..16) {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                m.insert("interface_id".into(), json!(hex));
            }
            if t == code::DEVICE_INTERFACE_STATE {
                m.insert("tdi_state".into(), json!(payload.get(16)));
            }
        }
        other => {
            m.insert("protocol".into(), json!(other.map(|p| format!("{p:#04x}"))));
        }
    }
    m.insert("len".into(), json!(payload.len()));
    Value::Object(m)
}

/// A vendor handler whose messages are traced and which shows the
/// `ide-key-set-refusal` fault.
pub struct Traced {
    inner: Box<dyn VendorHandler>,
    ctl: Arc<DeviceControl>,
}

impl Traced {
    /// Wraps `inner`.
    pub fn wrap(inner: Box<dyn VendorHandler>, ctl: Arc<DeviceControl>) -> Box<dyn VendorHandler> {
        Box::new(Traced { inner, ctl })
    }
}

impl VendorHandler for Traced {
    fn handle(&mut self, ctx: &VendorContext, payload: &[u8]) -> Result<Vec<u8>, ErrorCode> {
        let sid = ctx.session_id.map(|s| format!("{s:#010x}"));
        let mut ev = json!({"ev": "vendor", "dir": "req", "session_id": sid});
        if let (Value::Object(e), Value::Object(d)) = (&mut ev, decode(payload)) {
            e.extend(d);
        }
        self.ctl.trace.record(ev);
        let start = Instant::now();
        let refused = payload.first() == Some(&PROTOCOL_IDE_KM)
            && payload.get(1) == Some(&object::K_SET_GO)
            && self
                .ctl
                .faults
                .hit(|f, _| {
                    if *f == Fault::IdeKeySetRefusal {
                        Match::Hit
                    } else {
                        Match::No
                    }
                })
                .is_some();
        let r = if refused {
            self.ctl.trace.record(json!({
                "ev": "fault", "fault": "ide-key-set-refusal",
                "effect": "K_SET_GO refused (SPDM ERROR UnspecifiedError); keys unchanged",
            }));
            Err(ErrorCode::Unspecified)
        } else {
            self.inner.handle(ctx, payload)
        };
        let mut ev = json!({
            "ev": "vendor", "dir": "rsp", "session_id": sid,
            "us": start.elapsed().as_micros() as u64,
        });
        match &r {
            Ok(rsp) => {
                if let (Value::Object(e), Value::Object(d)) = (&mut ev, decode(rsp)) {
                    e.extend(d);
                }
            }
            Err(code) => ev["error"] = json!(format!("{code:?}")),
        }
        self.ctl.trace.record(ev);
        r
    }

    fn session_ended(&mut self, session_id: u32) {
        self.inner.session_ended(session_id)
    }
}
