//! Faults a device can be told to show: what each one is ([`Fault`]), how
//! long it stays armed ([`FaultSpec`]: the next N matching events and/or a
//! time window), and the per-device table the device's hooks consult
//! ([`Faults`]).
//!
//! A fault spec is a JSON object (the control protocol) or a TOML table (a
//! `trustdev run` configuration) with the same keys:
//! `{"fault": "doe-busy", "ms": 1500, "count": 1}`,
//! `{"fault": "spdm-error", "request": "GET_CERTIFICATE", "nth": 2, "code": 1}`,
//! `{"fault": "nvme-media-error", "lba": [0, 7], "for_ms": 5000}`.
//! `count` (default 1) is how many matching events the fault hits before it
//! disarms itself; `for_ms` bounds it in time (with `for_ms` and no `count`,
//! every matching event inside the window hits).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which certificate a `spdm-cert` fault presents instead of the device's.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CertFault {
    /// A complete, self-consistent chain under a root nobody trusts.
    UnknownRoot,
    /// A chain under the device's real root whose leaf names another device
    /// (the CMA subject-alt-name does not match the function).
    WrongSan,
    /// The device's own chain (its real CAs, its own subject-alt-name) with
    /// a leaf whose validity ended on 2025-01-01: only the date is wrong.
    Expired,
}

/// One kind of fault, with its parameters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// DOE Go makes the mailbox Busy for `ms` milliseconds; the request is
    /// then answered (past the kernel's 1 s timeout it aborts first).
    DoeBusy {
        /// How long DOE Busy stays set.
        ms: u64,
    },
    /// DOE Go sets DOE Error (until the requester aborts).
    DoeError,
    /// DOE Go is taken, and no response ever becomes ready.
    DoeNoResponse,
    /// The `nth` CMA/SPDM request of type `request` (counted from arming)
    /// gets an SPDM ERROR with `code` and `data` instead of its answer.
    SpdmError {
        /// Request code name (`GET_CERTIFICATE`) or number.
        request: SpdmCode,
        /// Which occurrence (1 = the next one).
        #[serde(default = "one")]
        nth: u32,
        /// SPDM error code (1 InvalidRequest, 3 Busy, 4 UnexpectedRequest, ...).
        code: u8,
        /// Error data.
        #[serde(default)]
        data: u8,
    },
    /// The next request of type `request` gets ERROR ResponseNotReady; the
    /// answer is produced when the requester sends RESPOND_IF_READY.
    SpdmNotReady {
        /// Request code name or number.
        request: SpdmCode,
        /// The ready time announced (rounded up to a power of two in µs).
        #[serde(default = "hundred")]
        delay_ms: u64,
    },
    /// CHALLENGE_AUTH and signed MEASUREMENTS responses carry a signature
    /// with one byte flipped.
    SpdmBadSignature,
    /// From the next GET_VERSION on, the negotiation is answered with
    /// another certificate chain (and its key).
    SpdmCert {
        /// Which wrong certificate.
        cert: CertFault,
    },
    /// NVMe reads and writes touching LBAs `lba[0]..=lba[1]` fail with a
    /// media error (Unrecovered Read Error / Write Fault, Do Not Retry).
    NvmeMediaError {
        /// Inclusive LBA range.
        lba: [u64; 2],
        /// Namespace (default: any).
        #[serde(default)]
        nsid: Option<u32>,
    },
    /// NVMe I/O commands complete `ms` milliseconds late.
    NvmeLatency {
        /// Added latency.
        ms: u64,
    },
    /// The next NVMe I/O command (touching LBAs `lba[0]..=lba[1]`, if
    /// given) sets CSTS.CFS (controller fatal status).
    NvmeFatal {
        /// Inclusive LBA range (default: any command).
        #[serde(default)]
        lba: Option<[u64; 2]>,
    },
    /// A Namespace Attribute Changed asynchronous event (on arming).
    NvmeNsChange,
    /// The next IDE TLP on the link towards `towards` (`host`: device
    /// writes and completions, checked by the host end; `device`: host
    /// requests) fails its integrity check: the stream goes INSECURE with
    /// its keys zeroized (and a bound TDI to ERROR), on arming.
    IdeIntegrity {
        /// The receiving end that detects it.
        #[serde(default = "host_end")]
        towards: End,
        /// Only TLPs of the SECURE stream with this Stream ID (default: the
        /// next IDE TLP of any stream). Arming is refused unless a stream
        /// with this ID is SECURE; the fault is dropped if that stream
        /// leaves SECURE before it hit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<u8>,
        /// Matching TLPs let through before the one that fails (default 0:
        /// the next one), so the failure lands inside a transfer already
        /// under way.
        #[serde(default, skip_serializing_if = "is_zero")]
        skip: u32,
    },
    /// IDE_KM K_SET_GO (switching a stream to a key set) is refused with an
    /// SPDM ERROR; the keys stay as they were.
    IdeKeySetRefusal,
    /// A CONFIG_LOCKED or RUN TDI goes to ERROR, on arming.
    TdiError,
    /// The device asks the client to release it through the REQ interrupt
    /// (QEMU unplugs it from the guest), on arming.
    SurpriseRemoval,
    /// The server closes the client's vfio-user connection: at arming
    /// (neither parameter), when the `after`-th message from the client
    /// (counted from arming) arrives (instead of handling it), or
    /// `delay_ms` after arming. The server resets the device and accepts
    /// the next client.
    VfioUserDrop {
        /// Close at this message (1 = the next one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u32>,
        /// Close this long after arming.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
}

/// An end of the IDE link.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum End {
    /// The host's end (root port).
    Host,
    /// The device.
    Device,
}

fn host_end() -> End {
    End::Host
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn one() -> u32 {
    1
}

fn hundred() -> u64 {
    100
}

impl Fault {
    /// The fault's name (the `fault` key).
    pub fn name(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m
                .get("fault")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            _ => "?".into(),
        }
    }

    /// Whether the fault acts once when armed (instead of on device events).
    pub fn immediate(&self) -> bool {
        matches!(
            self,
            Fault::NvmeNsChange
                | Fault::SurpriseRemoval
                | Fault::VfioUserDrop { after: None, .. }
                | Fault::IdeIntegrity { .. }
                | Fault::TdiError
        )
    }
}

/// An SPDM request code, written as its DSP0274 name or its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpdmCode(pub u8);

impl Serialize for SpdmCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match super::trace::spdm_name(self.0) {
            Some(n) => s.serialize_str(n),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for SpdmCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .filter(|v| v & 0x80 != 0)
                .map(SpdmCode)
                .ok_or_else(|| D::Error::custom(format!("{n} is not an SPDM request code"))),
            Value::String(s) => super::trace::spdm_request_code(&s)
                .map(SpdmCode)
                .ok_or_else(|| D::Error::custom(format!("unknown SPDM request {s:?}"))),
            other => Err(D::Error::custom(format!(
                "expected an SPDM request name or code, not {other}"
            ))),
        }
    }
}

/// A fault and how long it stays armed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// What.
    pub fault: Fault,
    /// Hits before it disarms itself (None: unlimited inside `window`).
    pub count: Option<u32>,
    /// How long after arming it stays armed.
    pub window: Option<Duration>,
}

/// Why a fault spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad fault spec: {0}")]
pub struct FaultSpecError(pub String);

impl FaultSpec {
    /// Parses a spec from a JSON object (see the module documentation).
    pub fn from_value(v: &Value) -> Result<FaultSpec, FaultSpecError> {
        let err = |s: String| FaultSpecError(s);
        let Value::Object(map) = v else {
            return Err(err(format!("expected an object, got {v}")));
        };
        let mut map = map.clone();
        let count = match map.remove("count") {
            None => None,
            Some(c) => Some(
                c.as_u64()
                    .and_then(|c| u32::try_from(c).ok())
                    .filter(|&c| c > 0)
                    .ok_or_else(|| err(format!("count {c}: expected 1 to 2^32-1")))?,
            ),
        };
        let window = match map.remove("for_ms") {
            None => None,
            Some(w) => Some(Duration::from_millis(
                w.as_u64()
                    .filter(|&w| w > 0 && w <= 86_400_000)
                    .ok_or_else(|| err(format!("for_ms {w}: expected 1 to 86400000")))?,
            )),
        };
        if map.get("fault").and_then(Value::as_str) == Some("ide-integrity") {
            if let Some(s) = map.get("stream") {
                if !s.as_u64().is_some_and(|s| s <= 255) {
                    return Err(err(format!(
                        "ide-integrity stream {s}: expected a Stream ID, 0 to 255"
                    )));
                }
            }
            if let Some(n) = map.get("skip") {
                if !n.as_u64().is_some_and(|n| u32::try_from(n).is_ok()) {
                    return Err(err(format!(
                        "ide-integrity skip {n}: expected a TLP count, 0 to 4294967295"
                    )));
                }
            }
        }
        if !map.contains_key("fault") {
            return Err(err(format!(
                "no \"fault\" key (one of: {})",
                FAULT_NAMES.join(", ")
            )));
        }
        let fault: Fault =
            serde_json::from_value(Value::Object(map)).map_err(|e| err(e.to_string()))?;
        if let Fault::NvmeMediaError { lba, .. } = &fault {
            if lba[0] > lba[1] {
                return Err(err(format!("lba range {}..{} is empty", lba[0], lba[1])));
            }
        }
        if let Fault::SpdmError { nth: 0, .. } = &fault {
            return Err(err("nth counts from 1".into()));
        }
        match &fault {
            Fault::VfioUserDrop { after: Some(0), .. } => {
                return Err(err("after counts messages from 1".into()))
            }
            Fault::VfioUserDrop {
                after: Some(_),
                delay_ms: Some(_),
            } => return Err(err("give after or delay_ms, not both".into())),
            Fault::VfioUserDrop {
                delay_ms: Some(d), ..
            } if *d > 86_400_000 => {
                return Err(err(format!("delay_ms {d}: expected at most 86400000")))
            }
            _ => {}
        }
        Ok(FaultSpec {
            count: count.or(if window.is_some() { None } else { Some(1) }),
            window,
            fault,
        })
    }

    /// As JSON (the form [`FaultSpec::from_value`] reads).
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(&self.fault).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            if let Some(c) = self.count {
                m.insert("count".into(), c.into());
            }
            if let Some(w) = self.window {
                m.insert("for_ms".into(), (w.as_millis() as u64).into());
            }
        }
        v
    }
}

/// Every fault name, for messages.
pub const FAULT_NAMES: &[&str] = &[
    "doe-busy",
    "doe-error",
    "doe-no-response",
    "spdm-error",
    "spdm-not-ready",
    "spdm-bad-signature",
    "spdm-cert",
    "nvme-media-error",
    "nvme-latency",
    "nvme-fatal",
    "nvme-ns-change",
    "ide-integrity",
    "ide-key-set-refusal",
    "tdi-error",
    "surprise-removal",
    "vfio-user-drop",
];

struct Armed {
    id: u64,
    spec: FaultSpec,
    armed_at: Instant,
    hits: u64,
    /// Matching events seen (for `nth`).
    seen: u32,
}

impl Armed {
    fn expired(&self, now: Instant) -> bool {
        self.spec.count == Some(0) || self.spec.window.is_some_and(|w| now >= self.armed_at + w)
    }
}

/// The faults armed on one device.
#[derive(Default)]
pub struct Faults {
    armed: Mutex<(u64, Vec<Armed>)>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faults")
    }
}

/// What [`Faults::hit`] asks of the matcher for one armed fault.
pub enum Match {
    /// Not this event.
    No,
    /// This event counts (for `nth`) but is not hit yet.
    Counted,
    /// Hit.
    Hit,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Armed>)> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms `spec`; returns its id.
    pub fn arm(&self, spec: FaultSpec) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        let id = g.0;
        log::info!("fault {id} armed: {}", spec.to_value());
        g.1.push(Armed {
            id,
            spec,
            armed_at: Instant::now(),
            hits: 0,
            seen: 0,
        });
        id
    }

    /// Disarms fault `id` (None: all); returns how many were disarmed.
    pub fn disarm(&self, id: Option<u64>) -> usize {
        let mut g = self.lock();
        let before = g.1.len();
        g.1.retain(|a| id.is_some_and(|id| a.id != id));
        before - g.1.len()
    }

    /// The first armed fault `m` hits for this event: its count is used up
    /// by one (it disarms itself at zero). `m` sees each armed fault and how
    /// many matching events it saw before.
    pub fn hit(&self, mut m: impl FnMut(&Fault, u32) -> Match) -> Option<Fault> {
        let mut g = self.lock();
        let now = Instant::now();
        g.1.retain(|a| !a.expired(now));
        let mut found = None;
        for a in g.1.iter_mut() {
            match m(&a.spec.fault, a.seen) {
                Match::No => {}
                Match::Counted => a.seen += 1,
                Match::Hit => {
                    a.seen += 1;
                    a.hits += 1;
                    if let Some(c) = &mut a.spec.count {
                        *c -= 1;
                    }
                    found = Some(a.spec.fault.clone());
                    break;
                }
            }
        }
        g.1.retain(|a| !a.expired(now));
        found
    }

    /// Whether a fault `m` matches is armed (without using it up).
    pub fn armed(&self, mut m: impl FnMut(&Fault) -> bool) -> bool {
        let now = Instant::now();
        self.lock()
            .1
            .iter()
            .any(|a| !a.expired(now) && m(&a.spec.fault))
    }

    /// The armed faults, as JSON (id, spec, hits, remaining).
    pub fn list(&self) -> Vec<Value> {
        let now = Instant::now();
        self.lock()
            .1
            .iter()
            .filter(|a| !a.expired(now))
            .map(|a| {
                serde_json::json!({
                    "id": a.id,
                    "spec": a.spec.to_value(),
                    "hits": a.hits,
                    "remaining": a.spec.count,
                    "remaining_ms": a.spec.window.map(|w| (a.armed_at + w).saturating_duration_since(now).as_millis() as u64),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<FaultSpec, FaultSpecError> {
        FaultSpec::from_value(&v)
    }

    #[test]
    fn specs_parse_and_refuse() {
        let s = spec(json!({"fault": "doe-busy", "ms": 1500})).unwrap();
        assert_eq!(s.fault, Fault::DoeBusy { ms: 1500 });
        assert_eq!(s.count, Some(1));
        let s = spec(json!({"fault": "spdm-error", "request": "GET_CERTIFICATE", "code": 1, "nth": 2, "count": 3})).unwrap();
        assert_eq!(
            s.fault,
            Fault::SpdmError {
                request: SpdmCode(0x82),
                nth: 2,
                code: 1,
                data: 0
            }
        );
        assert_eq!(s.count, Some(3));
        let s = spec(json!({"fault": "nvme-latency", "ms": 5, "for_ms": 100})).unwrap();
        assert_eq!(s.count, None);
        assert_eq!(s.window, Some(Duration::from_millis(100)));
        assert_eq!(spec(s.to_value()).unwrap(), s);
        for bad in [
            json!("doe-busy"),
            json!({"ms": 3}),
            json!({"fault": "bogus"}),
            json!({"fault": "doe-busy"}),
            json!({"fault": "doe-busy", "ms": 1, "bogus": 2}),
            json!({"fault": "doe-busy", "ms": -1}),
            json!({"fault": "doe-error", "count": 0}),
            json!({"fault": "doe-error", "for_ms": "x"}),
            json!({"fault": "spdm-error", "request": "GET_NOTHING", "code": 1}),
            json!({"fault": "spdm-error", "request": 4, "code": 1}),
            json!({"fault": "spdm-error", "request": "CHALLENGE", "code": 1, "nth": 0}),
            json!({"fault": "nvme-media-error", "lba": [9, 1]}),
            json!({"fault": "spdm-cert", "cert": "expired-yesterday"}),
            json!({"fault": "vfio-user-drop", "after": 0}),
            json!({"fault": "vfio-user-drop", "after": 3, "delay_ms": 5}),
            json!({"fault": "vfio-user-drop", "delay_ms": -1}),
            json!({"fault": "ide-integrity", "stream": 256}),
            json!({"fault": "ide-integrity", "stream": -1}),
            json!({"fault": "ide-integrity", "stream": "5"}),
            json!({"fault": "ide-integrity", "skip": 4294967296u64}),
            json!({"fault": "ide-integrity", "skip": 1.5}),
            json!({"fault": "ide-integrity", "towards": "sideways"}),
        ] {
            let e = spec(bad.clone()).unwrap_err();
            assert!(e.to_string().starts_with("bad fault spec"), "{bad}: {e}");
        }
        // ide-integrity: per stream, with a skip count; the defaults stay
        // out of the spec as shown.
        let s = spec(json!({"fault": "ide-integrity", "stream": 5, "skip": 300})).unwrap();
        assert_eq!(
            s.fault,
            Fault::IdeIntegrity {
                towards: End::Host,
                stream: Some(5),
                skip: 300
            }
        );
        assert_eq!(spec(s.to_value()).unwrap(), s);
        let s = spec(json!({"fault": "ide-integrity"})).unwrap();
        assert_eq!(
            s.to_value(),
            json!({"fault": "ide-integrity", "towards": "host", "count": 1})
        );
        let e = spec(json!({"fault": "ide-integrity", "stream": 300})).unwrap_err();
        assert!(
            e.to_string().contains("stream 300: expected a Stream ID"),
            "{e}"
        );
        assert!(spec(json!({"fault": "bogus"}))
            .unwrap_err()
            .to_string()
            .contains("doe-busy"));
    }

    #[test]
    fn count_window_and_nth() {
        let f = Faults::default();
        let id = f.arm(spec(json!({"fault": "doe-error", "count": 2})).unwrap());
        let is_err = |x: &Fault, _| {
            if *x == Fault::DoeError {
                Match::Hit
            } else {
                Match::No
            }
        };
        assert!(f.hit(is_err).is_some());
        assert_eq!(f.list()[0]["remaining"], 1);
        assert!(f.hit(is_err).is_some());
        assert!(f.hit(is_err).is_none(), "used up after count hits");
        assert_eq!(f.disarm(Some(id)), 0);
        // nth: the third matching event is hit.
        f.arm(
            spec(json!({"fault": "spdm-error", "request": "CHALLENGE", "code": 1, "nth": 3}))
                .unwrap(),
        );
        let nth = |x: &Fault, seen: u32| match x {
            Fault::SpdmError { nth, .. } if seen + 1 == *nth => Match::Hit,
            Fault::SpdmError { .. } => Match::Counted,
            _ => Match::No,
        };
        assert!(f.hit(nth).is_none());
        assert!(f.hit(nth).is_none());
        assert!(f.hit(nth).is_some());
        assert!(f.list().is_empty());
        // A window expires.
        f.arm(spec(json!({"fault": "doe-error", "for_ms": 30})).unwrap());
        assert!(f.hit(is_err).is_some());
        assert!(f.hit(is_err).is_some(), "unlimited inside the window");
        std::thread::sleep(Duration::from_millis(40));
        assert!(f.hit(is_err).is_none());
        // Disarm all.
        f.arm(spec(json!({"fault": "doe-error"})).unwrap());
        f.arm(spec(json!({"fault": "doe-no-response"})).unwrap());
        assert_eq!(f.disarm(None), 2);
    }
}
