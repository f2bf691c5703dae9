//! `trustdev-guest spdm`: CMA/SPDM from guest user space over a function's
//! real DOE mailbox (the registers in its configuration space, reached
//! through sysfs `config`).
//!
//! SPDM messages travel as DOE data objects of type 1 (CMA/SPDM) and secured
//! messages (DSP0277) as type 2 (secured CMA/SPDM). The run: VERSION,
//! CAPABILITIES, ALGORITHMS; DIGESTS; CERTIFICATE (the chain verified to one
//! of the `--root` certificates); CHALLENGE (CHALLENGE_AUTH signature);
//! signed MEASUREMENTS (all blocks); KEY_EXCHANGE + FINISH; HEARTBEAT;
//! KEY_UPDATE with VerifyNewKey; MEASUREMENTS inside the session;
//! END_SESSION. Every step is timed. `--session-only` skips CHALLENGE and the
//! measurements outside the session.
//!
//! The first step aborts the mailbox (DOE Abort), which also resets the
//! device's SPDM state; don't run this while a TSM driver talks to the same
//! device.

use crate::doe::{mailboxes, Mailbox, DISCOVERY_VERSION};
use crate::sysfs;
use serde_json::{json, Value};
use spdm_responder::codec::caps;
use spdm_responder::crypto::{AeadAlgo, AsymAlgo, DheGroup, HashAlgo};
use spdm_responder::error::RequesterError;
use spdm_responder::identity;
use spdm_responder::requester::{Connection, MeasurementBlock};
use spdm_responder::transport::doe::{self, DoeTransport, ProtocolId};
use spdm_responder::{Requester, RequesterConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `trustdev-guest spdm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// PCI address of the device ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Trusted root certificate, PEM or DER (repeatable).
    #[arg(long = "root", required = true)]
    pub roots: Vec<PathBuf>,
    /// Offer only this SPDM version (1.0, 1.1, 1.2 or 1.3).
    #[arg(long, value_parser = parse_version)]
    pub version: Option<u8>,
    /// Certificate slot to authenticate and key the session with.
    #[arg(long, default_value_t = 0)]
    pub slot: u8,
    /// Offer only this signature algorithm: p256 or p384 (default both;
    /// the device picks).
    #[arg(long, value_parser = parse_asym)]
    pub asym: Option<u32>,
    /// Skip CHALLENGE and the signed measurements; only the session.
    #[arg(long)]
    pub session_only: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Parses `p256` / `p384` into SPDM BaseAsymAlgo bits.
pub fn parse_asym(s: &str) -> Result<u32, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "p256" | "p-256" | "ecdsa-p256" => Ok(spdm_responder::crypto::ASYM_ECDSA_P256),
        "p384" | "p-384" | "ecdsa-p384" => Ok(spdm_responder::crypto::ASYM_ECDSA_P384),
        other => Err(format!(
            "unsupported signature algorithm {other:?} (p256 or p384)"
        )),
    }
}

/// Parses `1.2` (or `12`, `0x12`) into an SPDM version byte.
pub fn parse_version(s: &str) -> Result<u8, String> {
    let v = match s.trim() {
        "1.0" | "10" | "0x10" => 0x10,
        "1.1" | "11" | "0x11" => 0x11,
        "1.2" | "12" | "0x12" => 0x12,
        "1.3" | "13" | "0x13" => 0x13,
        other => {
            return Err(format!(
                "unsupported SPDM version {other:?} (1.0, 1.1, 1.2 or 1.3)"
            ))
        }
    };
    Ok(v)
}

/// The requester's transport: SPDM over DOE type 1, secured messages over
/// DOE type 2, one data object per message, through the mailbox registers.
type Transport = DoeTransport<Mailbox>;

fn version_str(v: u8) -> String {
    format!("{}.{}", v >> 4, v & 0xf)
}

fn hash_name(h: Option<HashAlgo>) -> &'static str {
    match h {
        Some(HashAlgo::Sha256) => "SHA-256",
        Some(HashAlgo::Sha384) => "SHA-384",
        None => "none",
    }
}

fn asym_name(a: Option<AsymAlgo>) -> &'static str {
    match a {
        Some(AsymAlgo::EcdsaP256) => "ECDSA P-256",
        Some(AsymAlgo::EcdsaP384) => "ECDSA P-384",
        None => "none",
    }
}

fn dhe_name(d: Option<DheGroup>) -> &'static str {
    match d {
        Some(DheGroup::Secp256r1) => "secp256r1",
        Some(DheGroup::Secp384r1) => "secp384r1",
        None => "none",
    }
}

fn aead_name(a: Option<AeadAlgo>) -> &'static str {
    match a {
        Some(AeadAlgo::Aes256Gcm) => "AES-256-GCM",
        Some(AeadAlgo::ChaCha20Poly1305) => "ChaCha20-Poly1305",
        None => "none",
    }
}

fn meas_hash_name(bits: u32) -> &'static str {
    match bits {
        0 => "none",
        1 => "raw bit stream",
        2 => "SHA-256",
        4 => "SHA-384",
        8 => "SHA-512",
        _ => "other",
    }
}

fn cap_names(c: u32) -> Vec<&'static str> {
    const NAMES: [(u32, &str); 18] = [
        (caps::CACHE, "CACHE"),
        (caps::CERT, "CERT"),
        (caps::CHAL, "CHAL"),
        (caps::MEAS_NO_SIG, "MEAS_NO_SIG"),
        (caps::MEAS_SIG, "MEAS_SIG"),
        (caps::MEAS_FRESH, "MEAS_FRESH"),
        (caps::ENCRYPT, "ENCRYPT"),
        (caps::MAC, "MAC"),
        (caps::MUT_AUTH, "MUT_AUTH"),
        (caps::KEY_EX, "KEY_EX"),
        (caps::PSK, "PSK"),
        (caps::PSK_WITH_CONTEXT, "PSK_CTX"),
        (caps::ENCAP, "ENCAP"),
        (caps::HBEAT, "HBEAT"),
        (caps::KEY_UPD, "KEY_UPD"),
        (caps::HANDSHAKE_IN_THE_CLEAR, "HANDSHAKE_IN_CLEAR"),
        (caps::PUB_KEY_ID, "PUB_KEY_ID"),
        (caps::CHUNK, "CHUNK"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| c & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kind_name(t: u8) -> &'static str {
    match t & 0x7f {
        0 => "immutable ROM",
        1 => "mutable firmware",
        2 => "hardware configuration",
        3 => "firmware configuration",
        4 => "measurement manifest",
        5 => "device mode",
        6 => "version",
        7 => "secure version number",
        _ => "other",
    }
}

/// One block as text: `#1 immutable ROM digest 1a2b...` or `#3 version "1.0"`.
fn block_text(b: &MeasurementBlock) -> String {
    let raw = b.value_type & 0x80 != 0;
    let printable = b
        .value
        .iter()
        .all(|c| (0x20..0x7f).contains(c) || *c == b'\n');
    let value = if raw && printable && !b.value.is_empty() {
        format!("\"{}\"", String::from_utf8_lossy(&b.value))
    } else if raw {
        format!("raw {}", hex(&b.value))
    } else {
        format!("digest {}", hex(&b.value))
    };
    format!(
        "#{} {} (type {:#04x}) {value}",
        b.index,
        kind_name(b.value_type),
        b.value_type
    )
}

fn block_json(b: &MeasurementBlock) -> Value {
    let raw = b.value_type & 0x80 != 0;
    json!({
        "index": b.index,
        "type": b.value_type,
        "kind": kind_name(b.value_type),
        "raw": raw,
        "value_hex": hex(&b.value),
        "value_str": if raw { Some(String::from_utf8_lossy(&b.value).into_owned()) } else { None },
    })
}

// ----------------------------------------------------------------------
// A few DER walks for printing certificate subjects.
// ----------------------------------------------------------------------

/// (tag, contents, rest) of the DER TLV at the start of `d`.
fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *d.first()?;
    let l0 = *d.get(1)? as usize;
    let (hdr, len) = if l0 < 0x80 {
        (2, l0)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *d.get(2 + i)? as usize;
        }
        (2 + n, len)
    };
    let end = hdr.checked_add(len)?;
    let body = d.get(hdr..end)?;
    Some((tag, body, &d[end..]))
}

fn oid_str(b: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut v: u64 = 0;
    for (i, &c) in b.iter().enumerate() {
        v = (v << 7) | u64::from(c & 0x7f);
        if c & 0x80 == 0 {
            if parts.is_empty() {
                let first = if v < 40 {
                    0
                } else if v < 80 {
                    1
                } else {
                    2
                };
                parts.push(first);
                parts.push(v - first * 40);
            } else {
                parts.push(v);
            }
            v = 0;
        }
        if i > 32 {
            break;
        }
    }
    parts
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

fn attr_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN".into(),
        "2.5.4.5" => "serialNumber".into(),
        "2.5.4.6" => "C".into(),
        "2.5.4.7" => "L".into(),
        "2.5.4.8" => "ST".into(),
        "2.5.4.10" => "O".into(),
        "2.5.4.11" => "OU".into(),
        other => other.to_string(),
    }
}

/// An X.501 Name as `CN=..., O=...`.
fn name_str(name: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    let mut rdns = name;
    while !rdns.is_empty() {
        let (_, set, rest) = tlv(rdns)?;
        rdns = rest;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, rest) = tlv(atvs)?;
            atvs = rest;
            let (_, oid, val) = tlv(atv)?;
            let (_, value, _) = tlv(val)?;
            out.push(format!(
                "{}={}",
                attr_name(&oid_str(oid)),
                String::from_utf8_lossy(value)
            ));
        }
    }
    Some(out.join(", "))
}

/// Subject of a DER certificate.
fn cert_subject(der: &[u8]) -> String {
    let f = || -> Option<String> {
        let (_, cert, _) = tlv(der)?;
        let (_, tbs, _) = tlv(cert)?;
        let mut rest = tbs;
        // [0] version is optional.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.2;
        }
        rest = tlv(rest)?.2; // serial
        rest = tlv(rest)?.2; // signature algorithm
        rest = tlv(rest)?.2; // issuer
        rest = tlv(rest)?.2; // validity
        let (_, subject, _) = tlv(rest)?;
        name_str(subject)
    };
    f().unwrap_or_else(|| "(unparsable subject)".into())
}

// ----------------------------------------------------------------------
// The run.
// ----------------------------------------------------------------------

struct Step {
    name: &'static str,
    ms: f64,
    detail: String,
}

struct Report {
    json: bool,
    steps: Vec<Step>,
    out: serde_json::Map<String, Value>,
}

impl Report {
    fn step(&mut self, name: &'static str, d: Duration, detail: String) {
        let ms = d.as_secs_f64() * 1000.0;
        if !self.json {
            println!("  {name:<34} OK {ms:>8.2} ms  {detail}");
        }
        self.steps.push(Step { name, ms, detail });
    }
    fn line(&self, s: &str) {
        if !self.json {
            println!("{s}");
        }
    }
    fn set(&mut self, k: &str, v: Value) {
        self.out.insert(k.to_string(), v);
    }
}

/// (step, precise message) of a failed requester call.
fn fail(step: &'static str, e: RequesterError) -> (&'static str, String) {
    let msg = match e {
        RequesterError::ErrorResponse { code, raw, data } => {
            let name = code.map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"));
            format!("the device answered SPDM ERROR {name} (code {raw:#04x}, data {data:#04x})")
        }
        other => other.to_string(),
    };
    (step, msg)
}

/// Reads trusted roots: each path a PEM/DER file (one or more
/// certificates) or a directory of them (sorted by name). Every
/// certificate comes with the file it was read from; no certificate at all
/// is an error.
pub(crate) fn load_roots(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| format!("--root {}: {e}", p.display()))?;
            let mut v: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .collect();
            v.sort();
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(&f).map_err(|e| format!("--root {}: {e}", f.display()))?;
        let certs = identity::parse_certs(&data)
            .map_err(|e| format!("--root {}: not a PEM or DER certificate: {e}", f.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--root {}: no certificate in the file",
                f.display()
            ));
        }
        out.extend(certs.into_iter().map(|c| (f.clone(), c)));
    }
    if out.is_empty() {
        return Err(format!(
            "no trusted root certificate in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(out)
}

/// `trustdev-guest spdm`.
pub fn run(args: Args) -> Result<(), String> {
    let o = &args;
    if o.roots.is_empty() {
        return Err("spdm: give at least one --root certificate".into());
    }
    if o.slot > 7 {
        return Err(format!("spdm: --slot {} is not 0..7", o.slot));
    }
    let bdf = sysfs::normalize_bdf(&o.bdf).ok_or_else(|| format!("bad PCI address {:?}", o.bdf))?;
    let roots = load_roots(&o.roots)?;
    let mut rep = Report {
        json: o.json,
        steps: Vec::new(),
        out: serde_json::Map::new(),
    };
    rep.set("bdf", json!(bdf));
    let result = run_inner(o, &bdf, &roots, &mut rep);
    let steps: Vec<Value> = rep
        .steps
        .iter()
        .map(|s| json!({"step": s.name, "ok": true, "ms": s.ms, "detail": s.detail}))
        .collect();
    rep.set("steps", Value::Array(steps));
    match result {
        Ok(()) => {
            rep.set("ok", json!(true));
            if o.json {
                println!("{}", Value::Object(rep.out));
            }
            Ok(())
        }
        Err((step, msg)) => {
            rep.set("ok", json!(false));
            rep.set("failed_step", json!(step));
            rep.set("error", json!(msg));
            if o.json {
                println!("{}", Value::Object(rep.out));
            } else {
                println!("  {step:<34} FAILED: {msg}");
            }
            Err(format!("spdm {bdf}: {step} failed: {msg}"))
        }
    }
}

type StepResult = Result<(), (&'static str, String)>;

fn run_inner(o: &Args, bdf: &str, roots: &[(PathBuf, Vec<u8>)], rep: &mut Report) -> StepResult {
    let whole = Instant::now();
    // Find the mailbox that offers CMA/SPDM and secured CMA/SPDM.
    let step = "DOE discovery";
    let mbs = mailboxes(bdf).map_err(|e| (step, e))?;
    if mbs.is_empty() {
        return Err((step, format!("{bdf} has no DOE extended capability")));
    }
    let mut chosen = None;
    let mut seen = Vec::new();
    for mut mb in mbs {
        let t = Instant::now();
        mb.abort().map_err(|e| (step, e.to_string()))?;
        let feats = doe::discover(&mut mb, DISCOVERY_VERSION).map_err(|e| (step, e.to_string()))?;
        let names: Vec<String> = feats.iter().map(ProtocolId::to_string).collect();
        seen.push(format!("{:#x}: {}", mb.offset(), names.join(" ")));
        if feats.contains(&ProtocolId::CMA) && feats.contains(&ProtocolId::SECURED_CMA) {
            chosen = Some((mb, names, t.elapsed()));
            break;
        }
    }
    let Some((mb, feats, disc_time)) = chosen else {
        return Err((
            step,
            format!(
                "no DOE mailbox of {bdf} lists both 0001:01 (CMA/SPDM) and 0001:02 (secured CMA/SPDM); found {}",
                seen.join("; ")
            ),
        ));
    };
    rep.line(&format!(
        "{bdf}: SPDM over the DOE mailbox at config {:#x}",
        mb.offset()
    ));
    rep.set("doe_offset", json!(mb.offset()));
    rep.set("doe_features", json!(feats));
    rep.step(
        step,
        disc_time,
        format!("abort + discovery: {}", feats.join(" ")),
    );

    let mut cfg = RequesterConfig {
        trusted_roots: roots.iter().map(|(_, d)| d.clone()).collect(),
        ..Default::default()
    };
    if let Some(v) = o.version {
        cfg.versions = vec![v];
    }
    if let Some(a) = o.asym {
        cfg.base_asym = a;
    }
    // The SPDM exchanges only (not the discovery walk) count below.
    let (n0, busy0) = (mb.stats().exchanges, mb.stats().busy);
    let mut r = Requester::new(cfg, DoeTransport::new(mb));

    // VERSION / CAPABILITIES / ALGORITHMS.
    let auth_start = Instant::now();
    let step = "VERSION/CAPABILITIES/ALGORITHMS";
    let t = Instant::now();
    let conn: Connection = match r.init_connection() {
        Ok(c) => c.clone(),
        Err(e) => return Err(fail(step, e)),
    };
    let d = t.elapsed();
    let algos = json!({
        "version": version_str(conn.version),
        "hash": hash_name(conn.hash),
        "asym": asym_name(conn.asym),
        "measurement_hash": meas_hash_name(conn.meas_hash),
        "dhe": dhe_name(conn.dhe),
        "aead": aead_name(conn.aead),
        "responder_caps": cap_names(conn.rsp_caps),
        "responder_data_transfer_size": conn.rsp_data_transfer_size,
        "responder_max_spdm_msg_size": conn.rsp_max_msg_size,
    });
    rep.set("negotiated", algos);
    rep.step(
        step,
        d,
        format!(
            "SPDM {}; hash {}, signature {}, measurement hash {}, DHE {}, AEAD {}",
            version_str(conn.version),
            hash_name(conn.hash),
            asym_name(conn.asym),
            meas_hash_name(conn.meas_hash),
            dhe_name(conn.dhe),
            aead_name(conn.aead)
        ),
    );
    rep.line(&format!(
        "      responder capabilities: {}; DataTransferSize {}, MaxSPDMmsgSize {}",
        cap_names(conn.rsp_caps).join(" "),
        conn.rsp_data_transfer_size,
        conn.rsp_max_msg_size
    ));
    let Some(hash) = conn.hash else {
        return Err((step, "no hash algorithm negotiated".into()));
    };

    // DIGESTS.
    let step = "DIGESTS";
    let t = Instant::now();
    let (mask, digests) = r.get_digests().map_err(|e| fail(step, e))?;
    rep.step(
        step,
        t.elapsed(),
        format!("slot mask {mask:#04x}, {} digest(s)", digests.len()),
    );
    rep.set("slot_mask", json!(mask));
    // CERTIFICATE.
    let step = "CERTIFICATE";
    let t = Instant::now();
    let chain = r.get_certificate(o.slot).map_err(|e| {
        let (step, msg) = fail(step, e);
        if mask & (1 << o.slot) == 0 {
            (
                step,
                format!(
                    "{msg}; slot {} is not in the DIGESTS slot mask {mask:#04x}",
                    o.slot
                ),
            )
        } else {
            (step, msg)
        }
    })?;
    let d = t.elapsed();
    let certs = identity::parse_spdm_chain(&chain, hash).map_err(|e| (step, e.to_string()))?;
    let root_file = roots
        .iter()
        .find(|(_, der)| Some(der) == certs.first())
        .map(|(p, _)| format!("root is {}", p.display()))
        .unwrap_or_else(|| "root signed by a trusted root".into());
    rep.step(
        step,
        d,
        format!(
            "slot {}: chain of {} certificate(s), {} bytes, verified ({root_file})",
            o.slot,
            certs.len(),
            chain.len()
        ),
    );
    let mut cert_json = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        let role = if i == 0 {
            "root"
        } else if i + 1 == certs.len() {
            "leaf"
        } else {
            "intermediate"
        };
        let subject = cert_subject(c);
        rep.line(&format!("      [{i}] {role:<12} subject: {subject}"));
        cert_json.push(json!({"role": role, "subject": subject, "der_bytes": c.len()}));
    }
    let other = certs.last().and_then(|l| identity::leaf_other_name(l));
    match &other {
        Some(s) => rep.line(&format!("      leaf otherName 2.23.147: {s}")),
        None => rep.line("      leaf otherName 2.23.147: (none)"),
    }
    rep.set("certificates", Value::Array(cert_json));
    rep.set("leaf_other_name", json!(other));

    if !o.session_only {
        // CHALLENGE.
        let step = "CHALLENGE";
        let t = Instant::now();
        let c = r.challenge(o.slot, 0xff).map_err(|e| fail(step, e))?;
        let auth = auth_start.elapsed();
        rep.step(
            step,
            t.elapsed(),
            format!(
                "CHALLENGE_AUTH signature verified (slot {}, measurement summary hash {}..)",
                c.slot,
                hex(&c.measurement_summary_hash[..c.measurement_summary_hash.len().min(8)])
            ),
        );
        rep.set("authentication_ms", json!(auth.as_secs_f64() * 1000.0));

        // Signed MEASUREMENTS, all blocks.
        let step = "MEASUREMENTS (signed, all)";
        let t = Instant::now();
        let m = r
            .get_measurements(None, 0xff, true, o.slot)
            .map_err(|e| fail(step, e))?;
        rep.step(
            step,
            t.elapsed(),
            format!(
                "{} block(s), signature {}",
                m.blocks.len(),
                if m.signature_verified {
                    "verified"
                } else {
                    "absent"
                }
            ),
        );
        for b in &m.blocks {
            rep.line(&format!("      {}", block_text(b)));
        }
        rep.set(
            "measurements",
            Value::Array(m.blocks.iter().map(block_json).collect()),
        );
    }

    // The secured session (SPDM 1.1+ with KEY_EX_CAP).
    let step = "KEY_EXCHANGE+FINISH";
    let no_session = if conn.version < 0x11 {
        Some("SPDM 1.0 has no KEY_EXCHANGE (sessions need SPDM 1.1 or later)")
    } else if conn.rsp_caps & caps::KEY_EX == 0 {
        Some("the responder does not advertise KEY_EX_CAP")
    } else {
        None
    };
    let setup = match no_session {
        None => Some(session(&mut r, o, rep, auth_start)?),
        Some(why) if o.session_only => return Err((step, why.to_string())),
        Some(why) => {
            rep.line(&format!("  sessions skipped: {why}"));
            rep.set("session_skipped", json!(why));
            None
        }
    };

    let whole = whole.elapsed();
    let mb = &r.transport_mut().channel;
    let (n, busy) = (
        mb.stats().exchanges - n0,
        mb.stats().busy.saturating_sub(busy0),
    );
    rep.set("doe_exchanges", json!(n));
    rep.set("doe_time_ms", json!(busy.as_secs_f64() * 1000.0));
    rep.set("total_ms", json!(whole.as_secs_f64() * 1000.0));
    let auth = rep.out.get("authentication_ms").and_then(Value::as_f64);
    match (auth, setup) {
        (Some(a), Some((d, _))) => rep.line(&format!(
            "authentication (VERSION..CHALLENGE_AUTH): {a:.2} ms; session setup (KEY_EXCHANGE+FINISH): {:.2} ms",
            d.as_secs_f64() * 1000.0
        )),
        (Some(a), None) => rep.line(&format!(
            "authentication (VERSION..CHALLENGE_AUTH): {a:.2} ms"
        )),
        _ => {}
    }
    if let Some((_, total)) = setup {
        rep.line(&format!(
            "authentication and session setup: {:.2} ms",
            total.as_secs_f64() * 1000.0
        ));
    }
    rep.line(&format!(
        "whole run: {:.2} ms, {n} DOE exchanges taking {:.2} ms",
        whole.as_secs_f64() * 1000.0,
        busy.as_secs_f64() * 1000.0
    ));
    rep.line(&format!(
        "SPDM-OK {bdf} version {} {} {}",
        version_str(conn.version),
        asym_name(conn.asym),
        hash_name(conn.hash)
    ));
    Ok(())
}

/// KEY_EXCHANGE + FINISH, HEARTBEAT, KEY_UPDATE, MEASUREMENTS in the
/// session, END_SESSION. Returns (session setup time, VERSION..FINISH time).
fn session(
    r: &mut Requester<Transport>,
    o: &Args,
    rep: &mut Report,
    auth_start: Instant,
) -> Result<(Duration, Duration), (&'static str, String)> {
    let step = "KEY_EXCHANGE+FINISH";
    let t = Instant::now();
    let sid = r.key_exchange(o.slot, 0).map_err(|e| fail(step, e))?;
    let d = t.elapsed();
    rep.step(
        step,
        d,
        format!(
            "session {sid:#010x} established (heartbeat period {} s)",
            r.heartbeat_period(sid).unwrap_or(0)
        ),
    );
    rep.set("session_id", json!(sid));
    rep.set("session_setup_ms", json!(d.as_secs_f64() * 1000.0));
    rep.set(
        "authentication_and_session_ms",
        json!(auth_start.elapsed().as_secs_f64() * 1000.0),
    );
    let setup_total = auth_start.elapsed();

    let step = "HEARTBEAT";
    let t = Instant::now();
    r.heartbeat(sid).map_err(|e| fail(step, e))?;
    rep.step(step, t.elapsed(), "HEARTBEAT_ACK".into());

    let step = "KEY_UPDATE";
    let t = Instant::now();
    r.key_update(sid, true).map_err(|e| fail(step, e))?;
    rep.step(
        step,
        t.elapsed(),
        "UpdateAllKeys, then VerifyNewKey under the new keys".into(),
    );

    let step = "MEASUREMENTS in session";
    let t = Instant::now();
    let m = r
        .get_measurements(Some(sid), 0xff, false, o.slot)
        .map_err(|e| fail(step, e))?;
    rep.step(
        step,
        t.elapsed(),
        format!("{} block(s) over the secured session", m.blocks.len()),
    );
    if o.session_only {
        for b in &m.blocks {
            rep.line(&format!("      {}", block_text(b)));
        }
        rep.set(
            "measurements",
            Value::Array(m.blocks.iter().map(block_json).collect()),
        );
    }

    let step = "END_SESSION";
    let t = Instant::now();
    r.end_session(sid).map_err(|e| fail(step, e))?;
    rep.step(step, t.elapsed(), "END_SESSION_ACK".into());

    Ok((d, setup_total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.2").unwrap(), 0x12);
        assert_eq!(parse_version("0x13").unwrap(), 0x13);
        assert!(parse_version("1.4").is_err());
        assert_eq!(parse_asym("P256").unwrap(), 0x10);
        assert!(parse_asym("rsa").is_err());
    }

    #[test]
    fn oids() {
        assert_eq!(oid_str(&[0x55, 0x04, 0x03]), "2.5.4.3");
        assert_eq!(oid_str(&[0x67, 0x81, 0x13]), "2.23.147");
    }

    #[test]
    fn subject_of_a_generated_certificate() {
        let mut rng = spdm_responder::rng::DeterministicEntropy::new(b"subject");
        let id = spdm_responder::Identity::generate(
            &[AsymAlgo::EcdsaP256],
            &spdm_responder::CmaDeviceName::default(),
            1,
            &mut rng,
        )
        .unwrap();
        let s = id.slot(AsymAlgo::EcdsaP256, 0).unwrap();
        for c in &s.certs {
            let subj = cert_subject(c);
            assert!(subj.contains("CN="), "{subj}");
        }
    }
}
