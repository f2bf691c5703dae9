//! The decoded trace: one JSON object per line, each with the time since the
//! daemon started (`t`, seconds), the device (`dev`) and the event (`ev`):
//! DOE objects (`doe`: direction, protocol, length, and for CMA/SPDM the
//! decoded message; for secured CMA the session ID and length only),
//! injected faults (`fault`) and NVMe admin commands (`nvme-admin`).
//!
//! What is decoded is chosen field by field: headers, codes, lengths,
//! session IDs, slot and stream numbers. Message bodies (certificates,
//! signatures, key shares, and the key material IDE_KM KEY_PROG carries
//! inside encrypted records) never enter the trace.
//!
//! Each device keeps its last [`RING_LINES`] lines for `trustdev ctl trace`;
//! the daemon's `--trace FILE` gets every line.

use serde_json::{json, Map, Value};
use spdm_responder::transport::doe::{decode_object, ProtocolId};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines a device keeps for `trustdev ctl trace`.
pub const RING_LINES: usize = 4096;

/// Where trace lines go: the daemon's file (shared by its devices).
#[derive(Clone)]
pub struct TraceSink {
    start: Instant,
    file: Option<Arc<Mutex<std::io::BufWriter<File>>>>,
}

impl Default for TraceSink {
    fn default() -> Self {
        TraceSink {
            start: Instant::now(),
            file: None,
        }
    }
}

impl TraceSink {
    /// Lines also go to `path` (created new, 0600; an existing file is
    /// never overwritten).
    pub fn to_file(path: &std::path::Path) -> std::io::Result<TraceSink> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(TraceSink {
            start: Instant::now(),
            file: Some(Arc::new(Mutex::new(std::io::BufWriter::new(f)))),
        })
    }
}

/// One device's trace.
pub struct Trace {
    dev: String,
    sink: TraceSink,
    ring: Mutex<(u64, VecDeque<String>)>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trace({})", self.dev)
    }
}

impl Trace {
    /// The trace of device `dev`.
    pub fn new(dev: &str, sink: TraceSink) -> Trace {
        Trace {
            dev: dev.to_string(),
            sink,
            ring: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Microseconds since the daemon started.
    pub fn now_us(&self) -> u64 {
        self.sink.start.elapsed().as_micros() as u64
    }

    /// Records `event` (an object with `ev`), stamped with time and device.
    pub fn record(&self, event: Value) {
        let mut m = Map::new();
        m.insert("t".into(), json!(self.now_us() as f64 / 1e6));
        m.insert("dev".into(), json!(self.dev));
        if let Value::Object(e) = event {
            m.extend(e);
        }
        let line = Value::Object(m).to_string();
        if let Some(f) = &self.sink.file {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{line}").and_then(|_| f.flush());
        }
        let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        r.0 += 1;
        if r.1.len() == RING_LINES {
            r.1.pop_front();
        }
        r.1.push_back(line);
    }

    /// The kept lines after sequence number `since` (0: all kept), and the
    /// sequence number of the last line.
    pub fn lines(&self, since: u64, max: usize) -> (Vec<String>, u64) {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.0 - r.1.len() as u64; // sequence number before the oldest kept line
        let skip = since.saturating_sub(first) as usize;
        let lines: Vec<String> = r.1.iter().skip(skip).take(max).cloned().collect();
        let last = first + (skip + lines.len()) as u64;
        (lines, last)
    }
}

/// SPDM request and response names (DSP0274), by code.
const SPDM_NAMES: &[(u8, &str)] = &[
    (0x01, "DIGESTS"),
    (0x02, "CERTIFICATE"),
    (0x03, "CHALLENGE_AUTH"),
    (0x04, "VERSION"),
    (0x05, "CHUNK_SEND_ACK"),
    (0x06, "CHUNK_RESPONSE"),
    (0x60, "MEASUREMENTS"),
    (0x61, "CAPABILITIES"),
    (0x63, "ALGORITHMS"),
    (0x64, "KEY_EXCHANGE_RSP"),
    (0x65, "FINISH_RSP"),
    (0x66, "PSK_EXCHANGE_RSP"),
    (0x67, "PSK_FINISH_RSP"),
    (0x68, "HEARTBEAT_ACK"),
    (0x69, "KEY_UPDATE_ACK"),
    (0x6A, "ENCAPSULATED_REQUEST"),
    (0x6B, "ENCAPSULATED_RESPONSE_ACK"),
    (0x6C, "END_SESSION_ACK"),
    (0x7E, "VENDOR_DEFINED_RESPONSE"),
    (0x7F, "ERROR"),
    (0x81, "GET_DIGESTS"),
    (0x82, "GET_CERTIFICATE"),
    (0x83, "CHALLENGE"),
    (0x84, "GET_VERSION"),
    (0x85, "CHUNK_SEND"),
    (0x86, "CHUNK_GET"),
    (0xE0, "GET_MEASUREMENTS"),
    (0xE1, "GET_CAPABILITIES"),
    (0xE3, "NEGOTIATE_ALGORITHMS"),
    (0xE4, "KEY_EXCHANGE"),
    (0xE5, "FINISH"),
    (0xE6, "PSK_EXCHANGE"),
    (0xE7, "PSK_FINISH"),
    (0xE8, "HEARTBEAT"),
    (0xE9, "KEY_UPDATE"),
    (0xEA, "GET_ENCAPSULATED_REQUEST"),
    (0xEB, "DELIVER_ENCAPSULATED_RESPONSE"),
    (0xEC, "END_SESSION"),
    (0xFE, "VENDOR_DEFINED_REQUEST"),
    (0xFF, "RESPOND_IF_READY"),
];

/// The DSP0274 name of SPDM code `code`.
pub fn spdm_name(code: u8) -> Option<&'static str> {
    SPDM_NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// The request code named `name` (case-insensitive, `-` or `_`).
pub fn spdm_request_code(name: &str) -> Option<u8> {
    let n = name.to_ascii_uppercase().replace('-', "_");
    SPDM_NAMES
        .iter()
        .find(|(c, s)| *c & 0x80 != 0 && *s == n)
        .map(|(c, _)| *c)
}

/// SPDM ERROR codes (DSP0274 table "Error code and error data").
fn spdm_error_name(code: u8) -> &'static str {
    match code {
        0x01 => "InvalidRequest",
        0x03 => "Busy",
        0x04 => "UnexpectedRequest",
        0x05 => "Unspecified",
        0x06 => "DecryptError",
        0x07 => "UnsupportedRequest",
        0x08 => "RequestInFlight",
        0x09 => "InvalidResponseCode",
        0x0A => "SessionLimitExceeded",
        0x0B => "SessionRequired",
        0x0C => "ResetRequired",
        0x0D => "ResponseTooLarge",
        0x0E => "RequestTooLarge",
        0x0F => "LargeResponse",
        0x10 => "MessageLost",
        0x11 => "InvalidPolicy",
        0x41 => "VersionMismatch",
        0x42 => "ResponseNotReady",
        0x43 => "RequestResynch",
        0x44 => "OperationFailed",
        0x45 => "NoPendingRequests",
        0xFF => "VendorDefined",
        _ => "?",
    }
}

/// Decodes one SPDM message's header (never its body).
pub fn decode_spdm(msg: &[u8]) -> Value {
    let (Some(&ver), Some(&code)) = (msg.first(), msg.get(1)) else {
        return json!({"malformed": true, "len": msg.len()});
    };
    let p1 = msg.get(2).copied().unwrap_or(0);
    let p2 = msg.get(3).copied().unwrap_or(0);
    let mut m = Map::new();
    m.insert(
        "msg".into(),
        json!(spdm_name(code)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{code:#04x}"))),
    );
    m.insert(
        "version".into(),
        json!(format!("{}.{}", ver >> 4, ver & 0xf)),
    );
    m.insert("len".into(), json!(msg.len()));
    match code {
        0x7F => {
            m.insert("error".into(), json!(spdm_error_name(p1)));
            m.insert("error_code".into(), json!(p1));
            m.insert("error_data".into(), json!(p2));
        }
        // GET_CERTIFICATE: slot, offset, length.
        0x82 if msg.len() >= 8 => {
            m.insert("slot".into(), json!(p1 & 0xf));
            m.insert("offset".into(), json!(u16::from_le_bytes([msg[4], msg[5]])));
            m.insert("length".into(), json!(u16::from_le_bytes([msg[6], msg[7]])));
        }
        // CERTIFICATE: slot, portion, remainder.
        0x02 if msg.len() >= 8 => {
            m.insert("slot".into(), json!(p1 & 0xf));
            m.insert(
                "portion".into(),
                json!(u16::from_le_bytes([msg[4], msg[5]])),
            );
            m.insert(
                "remainder".into(),
                json!(u16::from_le_bytes([msg[6], msg[7]])),
            );
        }
        0x83 | 0x03 | 0xE0 | 0x81 => {
            m.insert("param1".into(), json!(p1));
            m.insert("param2".into(), json!(p2));
        }
        // KEY_EXCHANGE(_RSP) / PSK_EXCHANGE(_RSP): the session ID halves.
        0xE4 | 0xE6 if msg.len() >= 6 => {
            m.insert(
                "req_session_id".into(),
                json!(format!("{:#06x}", u16::from_le_bytes([msg[4], msg[5]]))),
            );
        }
        0x64 | 0x66 if msg.len() >= 6 => {
            m.insert(
                "rsp_session_id".into(),
                json!(format!("{:#06x}", u16::from_le_bytes([msg[4], msg[5]]))),
            );
        }
        0xFF => {
            m.insert("request".into(), json!(spdm_name(p1)));
            m.insert("token".into(), json!(p2));
        }
        _ => {}
    }
    Value::Object(m)
}

/// Decodes a DOE data object (`dir` is `req` or `rsp`).
pub fn decode_doe(dir: &str, object: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("ev".into(), json!("doe"));
    m.insert("dir".into(), json!(dir));
    m.insert("bytes".into(), json!(object.len()));
    match decode_object(object) {
        Ok((proto, payload)) => {
            m.insert("protocol".into(), json!(proto.name()));
            if proto == ProtocolId::CMA {
                m.insert("spdm".into(), decode_spdm(payload));
            } else if proto == ProtocolId::SECURED_CMA {
                if let Some(sid) = payload.get(..4) {
                    m.insert(
                        "session_id".into(),
                        json!(format!(
                            "{:#010x}",
                            u32::from_le_bytes([sid[0], sid[1], sid[2], sid[3]])
                        )),
                    );
                }
            } else if proto == ProtocolId::DISCOVERY && dir == "req" {
                m.insert("index".into(), json!(payload.first().copied()));
            } else if proto == ProtocolId::DISCOVERY {
                // Vendor ID, data object type, next index.
                if let Some(p) = payload.get(..4) {
                    m.insert(
                        "feature".into(),
                        json!(format!(
                            "{:04x}:{:02x}",
                            u16::from_le_bytes([p[0], p[1]]),
                            p[2]
                        )),
                    );
                    m.insert("next".into(), json!(p[3]));
                }
            }
        }
        Err(e) => {
            m.insert("malformed".into(), json!(e.to_string()));
        }
    }
    Value::Object(m)
}

/// One trace line as a human reads it.
pub fn pretty_line(line: &str) -> String {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(_) => return format!("?? {line}"),
    };
    let t = v["t"].as_f64().unwrap_or(0.0);
    let dev = v["dev"].as_str().unwrap_or("?");
    let ev = v["ev"].as_str().unwrap_or("?");
    let rest = |skip: &[&str]| -> String {
        match &v {
            Value::Object(m) => m
                .iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    v => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    };
    let body = match ev {
        "doe" => {
            let arrow = if v["dir"] == "req" { "->" } else { "<-" };
            let proto = v["protocol"].as_str().unwrap_or("?");
            match &v["spdm"] {
                Value::Object(s) => {
                    let name = s.get("msg").and_then(Value::as_str).unwrap_or("?");
                    let ver = s.get("version").and_then(Value::as_str).unwrap_or("?");
                    let extra: Vec<String> = s
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "msg" | "version"))
                        .map(|(k, v)| match v {
                            Value::String(s) => format!("{k}={s}"),
                            v => format!("{k}={v}"),
                        })
                        .collect();
                    let us = v["us"]
                        .as_u64()
                        .map(|u| format!(" ({u} us)"))
                        .unwrap_or_default();
                    format!("DOE {arrow} SPDM {ver} {name} {}{us}", extra.join(" "))
                }
                _ => format!(
                    "DOE {arrow} {proto} {}",
                    rest(&["t", "dev", "ev", "dir", "protocol"])
                ),
            }
        }
        "fault" => format!("FAULT {}", rest(&["t", "dev", "ev"])),
        "nvme-admin" => format!("NVMe admin {}", rest(&["t", "dev", "ev"])),
        other => format!("{other} {}", rest(&["t", "dev", "ev"])),
    };
    format!("{t:>12.6} {dev:<10} {}", body.trim_end())
}

/// Pretty-prints a trace file (or stdin for `-`) to `out`.
pub fn pretty(input: impl BufRead, mut out: impl Write) -> std::io::Result<usize> {
    let mut n = 0;
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        writeln!(out, "{}", pretty_line(&line))?;
        n += 1;
    }
    Ok(n)
}

/// `trustdev trace FILE`: pretty-prints `file` (`-`: stdin) to stdout.
pub fn pretty_file(file: &std::path::Path) -> Result<(), String> {
    let out = std::io::stdout().lock();
    let r = if file == std::path::Path::new("-") {
        pretty(std::io::stdin().lock(), out)
    } else {
        let f = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        pretty(std::io::BufReader::new(f), out)
    };
    r.map(|_| ())
        .map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spdm_responder::transport::doe::encode_object;

    #[test]
    fn names_and_decoding() {
        assert_eq!(spdm_request_code("get_certificate"), Some(0x82));
        assert_eq!(spdm_request_code("CERTIFICATE"), None, "a response");
        let obj = encode_object(ProtocolId::CMA, &[0x12, 0x7F, 0x42, 0, 0x0e, 0x82, 7, 1]).unwrap();
        let v = decode_doe("rsp", &obj);
        assert_eq!(v["spdm"]["msg"], "ERROR");
        assert_eq!(v["spdm"]["error"], "ResponseNotReady");
        assert_eq!(v["spdm"]["version"], "1.2");
        let p = pretty_line(
            &json!({"t": 1.5, "dev": "nvme0", "ev": "doe", "dir": "rsp", "protocol": "CMA", "spdm": v["spdm"]}).to_string(),
        );
        assert!(p.contains("DOE <- SPDM 1.2 ERROR"), "{p}");
        let obj = encode_object(ProtocolId::DISCOVERY, &[0x01, 0x00, 0x02, 0x00]).unwrap();
        let v = decode_doe("rsp", &obj);
        assert_eq!(
            (v["feature"].as_str(), v["next"].as_u64()),
            (Some("0001:02"), Some(0))
        );
        let bad = decode_doe("req", &[1, 2, 3]);
        assert!(bad.get("malformed").is_some());
    }

    #[test]
    fn ring_keeps_the_last_lines() {
        let t = Trace::new("d", TraceSink::default());
        for i in 0..RING_LINES + 10 {
            t.record(json!({"ev": "x", "i": i}));
        }
        let (l, last) = t.lines(0, usize::MAX);
        assert_eq!(l.len(), RING_LINES);
        assert_eq!(last, (RING_LINES + 10) as u64);
        assert!(l[0].contains("\"i\":10"));
        let (l, last2) = t.lines(last - 2, 100);
        assert_eq!(l.len(), 2);
        assert_eq!(last2, last);
        assert!(t.lines(last, 10).0.is_empty());
    }
}
