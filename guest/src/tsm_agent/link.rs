//! One device's connection as the agent runs it: authentication and the
//! secured session on connect, the session's end on disconnect, and the
//! protocol steps that run inside the session (IDE_KM, TDISP) plugged in
//! through [`SessionStep`].

use super::san::{self, SanPolicy};
use super::transport::KernelDoe;
use super::uapi::{Request, TsmDevice};
use spdm_responder::crypto::{AsymAlgo, HashAlgo};
use spdm_responder::error::RequesterError;
use spdm_responder::identity;
use spdm_responder::{Requester, RequesterConfig};

/// Why a connect or disconnect failed: the errno the kernel's operation
/// returns, the step, and a precise message.
#[derive(Debug)]
pub struct Failure {
    /// Positive errno (the verdict carries it negated).
    pub errno: i32,
    /// The step that failed.
    pub step: &'static str,
    /// What went wrong.
    pub msg: String,
}

impl Failure {
    /// A failure of `step` with `errno`.
    pub fn new(errno: i32, step: &'static str, msg: impl Into<String>) -> Failure {
        Failure {
            errno,
            step,
            msg: msg.into(),
        }
    }

    /// The message the kernel logs.
    pub fn text(&self) -> String {
        format!("{} failed: {}", self.step, self.msg)
    }
}

/// The errno for a requester error: a chain or signature that does not
/// verify is EACCES, a device that answers wrongly EPROTO, a transport that
/// fails EIO.
fn errno_of(e: &RequesterError) -> i32 {
    match e {
        RequesterError::Verify(_) => libc::EACCES,
        RequesterError::Transport(_) => libc::EIO,
        RequesterError::Negotiation(_) => libc::EOPNOTSUPP,
        _ => libc::EPROTO,
    }
}

/// A requester error of `step` as a [`Failure`].
pub(super) fn requester_failure(step: &'static str, e: RequesterError) -> Failure {
    let msg = match &e {
        RequesterError::ErrorResponse { code, raw, .. } => format!(
            "the device answered SPDM ERROR {} ({raw:#04x})",
            code.map_or_else(|| "unknown".to_string(), |c| format!("{c:?}"))
        ),
        _ => e.to_string(),
    };
    Failure::new(errno_of(&e), step, msg)
}

/// What the agent needs from a protocol step plugged into the session.
pub struct StepContext<'a> {
    /// The requester, with the secured session open.
    pub requester: &'a mut Requester<KernelDoe>,
    /// The session.
    pub session: u32,
    /// The kernel's request (device, capabilities).
    pub request: &'a Request,
    /// The module, for stream operations (`TsmDevice::ide`).
    pub dev: &'a TsmDevice,
}

/// A protocol run inside the secured session after authentication - IDE_KM
/// key programming with the stream setup, TDISP - in order on connect and in
/// reverse on disconnect.
pub trait SessionStep {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Runs on connect; returns a summary for the verdict.
    fn connect(&mut self, cx: &mut StepContext<'_>) -> Result<String, Failure>;
    /// Undoes it on disconnect (stop keys, unlock); returns a summary.
    fn disconnect(&mut self, cx: &mut StepContext<'_>) -> Result<String, Failure>;
}

/// GET_MEASUREMENTS of every block inside the session: the device's
/// measurements as a TSM records them for attestation, protected by the
/// session.
pub struct MeasurementsStep {
    /// Certificate slot of the session.
    pub slot: u8,
}

impl SessionStep for MeasurementsStep {
    fn name(&self) -> &'static str {
        "MEASUREMENTS"
    }

    fn connect(&mut self, cx: &mut StepContext<'_>) -> Result<String, Failure> {
        let m = cx
            .requester
            .get_measurements(Some(cx.session), 0xff, false, self.slot)
            .map_err(|e| requester_failure("MEASUREMENTS in session", e))?;
        Ok(format!(
            "{} measurement blocks in the session",
            m.blocks.len()
        ))
    }

    fn disconnect(&mut self, _cx: &mut StepContext<'_>) -> Result<String, Failure> {
        Ok(String::new())
    }
}

/// How the agent authenticates devices.
pub struct Policy {
    /// Trusted roots (DER), with the file each came from.
    pub roots: Vec<(String, Vec<u8>)>,
    /// Certificate slot.
    pub slot: u8,
    /// Only this SPDM version, if set.
    pub version: Option<u8>,
    /// Only this signature algorithm (BaseAsymAlgo bits), if set.
    pub asym: Option<u32>,
    /// The CMA SAN check.
    pub san: SanPolicy,
}

impl Policy {
    fn requester_config(&self) -> RequesterConfig {
        let mut cfg = RequesterConfig {
            trusted_roots: self.roots.iter().map(|(_, d)| d.clone()).collect(),
            // The agent authenticates with certificates only.
            psk: None,
            ..Default::default()
        };
        if let Some(v) = self.version {
            cfg.versions = vec![v];
        }
        if let Some(a) = self.asym {
            cfg.base_asym = a;
        }
        cfg
    }
}

/// A connected device.
pub struct Link {
    requester: Requester<KernelDoe>,
    session: u32,
    steps: Vec<Box<dyn SessionStep>>,
}

/// Connect steps, in order; `--hang-after` names one of them.
pub const STEPS: &[&str] = &[
    "claim",
    "version",
    "certificate",
    "challenge",
    "session",
    "steps",
];

fn version_str(v: u8) -> String {
    format!("{}.{}", v >> 4, v & 0xf)
}

fn algo_str(asym: Option<AsymAlgo>, hash: Option<HashAlgo>) -> String {
    let a = match asym {
        Some(AsymAlgo::EcdsaP256) => "ECDSA P-256",
        Some(AsymAlgo::EcdsaP384) => "ECDSA P-384",
        None => "no signature",
    };
    let h = match hash {
        Some(HashAlgo::Sha256) => "SHA-256",
        Some(HashAlgo::Sha384) => "SHA-384",
        None => "no hash",
    };
    format!("{a}/{h}")
}

/// Authenticates the device behind `transport` and opens a session:
/// VERSION/CAPABILITIES/ALGORITHMS, DIGESTS, CERTIFICATE (chain verified to
/// a trusted root, CMA SAN checked), CHALLENGE, KEY_EXCHANGE + FINISH; then
/// runs `steps`. `checkpoint` is called after each named step (fault
/// injection). Returns the link and the verdict's summary.
pub fn connect(
    transport: KernelDoe,
    req: &Request,
    dev: &TsmDevice,
    policy: &Policy,
    steps: Vec<Box<dyn SessionStep>>,
    checkpoint: &dyn Fn(&str),
) -> Result<(Link, String), Failure> {
    let bdf = req.bdf();
    let mut r = Requester::new(policy.requester_config(), transport);
    let step = "VERSION/CAPABILITIES/ALGORITHMS";
    let conn = match r.init_connection() {
        Ok(c) => c.clone(),
        Err(e) => return Err(requester_failure(step, e)),
    };
    checkpoint("version");

    let step = "CERTIFICATE";
    r.get_digests()
        .map_err(|e| requester_failure("DIGESTS", e))?;
    let chain = r
        .get_certificate(policy.slot)
        .map_err(|e| requester_failure(step, e))?;
    let hash = conn
        .hash
        .ok_or_else(|| Failure::new(libc::EPROTO, step, "no hash negotiated"))?;
    let certs = identity::parse_spdm_chain(&chain, hash)
        .map_err(|e| Failure::new(libc::EPROTO, step, e.to_string()))?;
    let root = policy
        .roots
        .iter()
        .find(|(_, der)| Some(der) == certs.first())
        .map_or("a trusted root", |(f, _)| {
            f.rsplit('/').next().unwrap_or(f.as_str())
        });
    let mut notes = Vec::new();
    if policy.san != SanPolicy::Off {
        let want = san::expected_for(&bdf).map_err(|e| Failure::new(libc::EIO, step, e))?;
        let have = certs.last().and_then(|l| identity::leaf_other_name(l));
        if have.as_deref() != Some(want.as_str()) {
            let msg = format!(
                "leaf certificate SAN {} does not match the device ({want})",
                have.as_deref().unwrap_or("(none)")
            );
            if policy.san == SanPolicy::Enforce {
                return Err(Failure::new(libc::EACCES, step, msg));
            }
            eprintln!("tsm-agent: {bdf}: warning: {msg}");
            notes.push("SAN mismatch (warned)".to_string());
        }
    }
    checkpoint("certificate");

    let step = "CHALLENGE";
    r.challenge(policy.slot, 0xff)
        .map_err(|e| requester_failure(step, e))?;
    checkpoint("challenge");

    let step = "KEY_EXCHANGE+FINISH";
    let sid = r
        .key_exchange(policy.slot, 0)
        .map_err(|e| requester_failure(step, e))?;
    checkpoint("session");

    let mut link = Link {
        requester: r,
        session: sid,
        steps,
    };
    let mut summaries = Vec::new();
    for i in 0..link.steps.len() {
        let mut cx = StepContext {
            requester: &mut link.requester,
            session: sid,
            request: req,
            dev,
        };
        match link.steps[i].connect(&mut cx) {
            Ok(s) => summaries.push(s),
            Err(f) => {
                // Undo what ran, end the session, report the first failure.
                link.steps.truncate(i);
                let _ = link.disconnect(req, dev);
                return Err(f);
            }
        }
    }
    checkpoint("steps");
    if req.flags & super::uapi::REQ_IDE_CAP == 0 {
        summaries.push("no IDE capability (link not encrypted)".into());
    }
    let summary = format!(
        "SPDM {} {}, chain to {root} verified, CHALLENGE_AUTH verified, session {sid:#010x}{}; {}",
        version_str(conn.version),
        algo_str(conn.asym, conn.hash),
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        },
        summaries.join("; ")
    );
    Ok((link, summary))
}

impl Link {
    /// The session's id.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// Undoes the steps in reverse, then END_SESSION. Every part runs even
    /// if an earlier one failed; the first failure is returned.
    pub fn disconnect(&mut self, req: &Request, dev: &TsmDevice) -> Result<String, Failure> {
        let mut first: Option<Failure> = None;
        let mut done = Vec::new();
        while let Some(mut s) = self.steps.pop() {
            let mut cx = StepContext {
                requester: &mut self.requester,
                session: self.session,
                request: req,
                dev,
            };
            match s.disconnect(&mut cx) {
                Ok(m) if m.is_empty() => {}
                Ok(m) => done.push(m),
                Err(f) => {
                    eprintln!("tsm-agent: {}: {}: {}", req.bdf(), s.name(), f.text());
                    first.get_or_insert(f);
                }
            }
        }
        let sid = self.session;
        match self.requester.end_session(sid) {
            Ok(()) => done.push(format!("session {sid:#010x} ended (END_SESSION_ACK)")),
            Err(e) => {
                let f = requester_failure("END_SESSION", e);
                first.get_or_insert(f);
            }
        }
        match first {
            Some(f) => Err(f),
            None => Ok(done.join("; ")),
        }
    }
}

/// Without a session to end (the agent restarted since connect), GET_VERSION
/// still resets the device's SPDM connection and every session on it.
pub fn reset_device(transport: KernelDoe, policy: &Policy) -> Result<String, Failure> {
    let mut r = Requester::new(policy.requester_config(), transport);
    match r.init_connection() {
        Ok(_) => {
            Ok("no session known to this agent; GET_VERSION reset the device's SPDM state".into())
        }
        Err(e) => Err(requester_failure("GET_VERSION", e)),
    }
}
