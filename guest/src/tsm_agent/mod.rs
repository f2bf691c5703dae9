//! `trustdev-guest tsm-agent`: the user-space half of the trustdev test link
//! TSM (guest/kmod, module `trustdev_tsm`).
//!
//! The module registers a link TSM with the kernel's PCI/TSM core. When the
//! kernel runs its connect operation for a device (`echo tsm0 >
//! /sys/bus/pci/devices/BDF/tsm/connect`), the module queues a request on
//! `/dev/trustdev-tsm` and waits; this agent claims it and runs SPDM with the
//! device - every message a DOE data object moved by the kernel's
//! `pci_tsm_doe_transfer()` on the device's CMA mailbox - authenticating it
//! against the trusted roots (default: every certificate in
//! /etc/trustdev/roots) and opening a secured session, then runs the
//! session's protocol steps (IDE_KM, TDISP: [`link::SessionStep`]) and gives
//! the verdict that completes connect. On disconnect it undoes the steps and
//! ends the session.
//!
//! One agent per guest (the module allows one open). It runs until killed;
//! the kernel fails a request the agent was handling when it goes away.
//! `--hang-after STEP` makes it stop answering after a connect step, to
//! exercise the kernel's timeout and teardown paths.

mod ide;
mod link;
mod san;
mod transport;
mod uapi;

use link::{Link, Policy};
use san::SanPolicy;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use transport::{kernel_doe, Channel};
use uapi::{Request, TsmDevice};

/// Options of `trustdev-guest tsm-agent`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The module's device.
    #[arg(long, default_value = "/dev/trustdev-tsm")]
    pub device: PathBuf,
    /// Trusted root certificate, PEM or DER, or a directory of them
    /// (repeatable; default /etc/trustdev/roots, which `trustdev vm` fills).
    #[arg(long = "root")]
    pub roots: Vec<PathBuf>,
    /// Certificate slot to authenticate and key the session with.
    #[arg(long, default_value_t = 0)]
    pub slot: u8,
    /// Offer only this SPDM version (1.0 .. 1.3).
    #[arg(long, value_parser = crate::spdm::parse_version)]
    pub version: Option<u8>,
    /// Offer only this signature algorithm: p256 or p384.
    #[arg(long, value_parser = crate::spdm::parse_asym)]
    pub asym: Option<u32>,
    /// Check the leaf certificate's CMA SAN against the device as the
    /// kernel's CMA code does: enforce, warn or off.
    #[arg(long, default_value = "enforce", value_parser = san::parse_policy)]
    pub san: SanPolicy,
    /// Fault injection: stop answering after this connect step (claim,
    /// version, certificate, challenge, session, steps).
    #[arg(long, value_parser = parse_step)]
    pub hang_after: Option<String>,
}

/// Parses a `--hang-after` step name.
pub fn parse_step(s: &str) -> Result<String, String> {
    if link::STEPS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("unknown step {s:?} ({})", link::STEPS.join(", ")))
    }
}

/// Reads the roots (files or directories of them), named by their files.
fn load_roots(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, String> {
    Ok(crate::spdm::load_roots(paths)?
        .into_iter()
        .map(|(f, c)| (f.display().to_string(), c))
        .collect())
}

fn log(msg: &str) {
    println!("tsm-agent: {msg}");
}

struct Agent {
    ch: Rc<Channel>,
    policy: Policy,
    hang_after: Option<String>,
    links: HashMap<String, Link>,
}

impl Agent {
    fn checkpoint(&self, id: u64, step: &str) {
        if self.hang_after.as_deref() == Some(step) {
            log(&format!(
                "fault injection: hanging after step {step:?} of request {id} (no verdict will come)"
            ));
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }

    /// The steps that run inside the session for this device: the
    /// measurements, then IDE (stream, IDE_KM keys, Enable) when the device
    /// has an IDE capability. TDISP plugs in here.
    fn session_steps(&self, req: &Request) -> Vec<Box<dyn link::SessionStep>> {
        let mut steps: Vec<Box<dyn link::SessionStep>> = vec![Box::new(link::MeasurementsStep {
            slot: self.policy.slot,
        })];
        if req.flags & uapi::REQ_IDE_CAP != 0 {
            steps.push(Box::new(ide::IdeStep::default()));
        }
        steps
    }

    fn connect(&mut self, req: &Request) -> (i32, u32, String) {
        let bdf = req.bdf();
        if self.links.remove(&bdf).is_some() {
            log(&format!(
                "{bdf}: dropping the state of an earlier connection the kernel no longer has"
            ));
        }
        if req.flags & uapi::REQ_SECURED_CMA == 0 {
            return (
                -libc::EOPNOTSUPP,
                0,
                "the CMA mailbox does not offer secured CMA/SPDM (0001:02): no session possible"
                    .into(),
            );
        }
        self.checkpoint(req.id, "claim");
        let t = kernel_doe(&self.ch);
        let steps = self.session_steps(req);
        let id = req.id;
        let cp = |s: &str| self.checkpoint(id, s);
        match link::connect(t, req, &self.ch.dev, &self.policy, steps, &cp) {
            Ok((l, summary)) => {
                let sid = l.session();
                self.links.insert(bdf, l);
                (0, sid, summary)
            }
            Err(f) => (-f.errno, 0, f.text()),
        }
    }

    fn disconnect(&mut self, req: &Request) -> (i32, u32, String) {
        let bdf = req.bdf();
        match self.links.remove(&bdf) {
            Some(mut l) => {
                let sid = l.session();
                match l.disconnect(req, &self.ch.dev) {
                    Ok(s) => (0, sid, s),
                    Err(f) => (-f.errno, sid, f.text()),
                }
            }
            None => match link::reset_device(kernel_doe(&self.ch), &self.policy) {
                Ok(s) => (0, 0, s),
                Err(f) => (-f.errno, 0, f.text()),
            },
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        loop {
            let req = match self.ch.dev.get_request() {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("waiting for a request: {e}")),
            };
            let bdf = req.bdf();
            let op = if req.op == uapi::OP_CONNECT {
                "connect"
            } else {
                "disconnect"
            };
            log(&format!(
                "request {}: {op} {bdf} ({:04x}:{:04x}) for {} [{}], kernel waits {} ms",
                req.id,
                req.vendor,
                req.device,
                req.tsm(),
                uapi::flag_names(req.flags).join(" "),
                req.timeout_ms
            ));
            self.ch.current.set(req.id);
            let before = self.ch.exchanges.get();
            let t = std::time::Instant::now();
            let (status, sid, msg) = match req.op {
                uapi::OP_CONNECT => self.connect(&req),
                uapi::OP_DISCONNECT => self.disconnect(&req),
                other => (-libc::EINVAL, 0, format!("unknown operation {other}")),
            };
            log(&format!(
                "request {}: {op} {bdf}: {} in {:.0} ms, {} DOE exchanges through the kernel: {msg}",
                req.id,
                if status == 0 { "OK".to_string() } else { format!("FAILED ({status})") },
                t.elapsed().as_secs_f64() * 1000.0,
                self.ch.exchanges.get() - before
            ));
            match self.ch.dev.complete(req.id, status, sid, &msg) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    log(&format!(
                        "request {}: the kernel stopped waiting before the verdict (timeout {} ms)",
                        req.id, req.timeout_ms
                    ));
                    if req.op == uapi::OP_CONNECT && status == 0 {
                        // The kernel failed this connect: forget the session.
                        if let Some(mut l) = self.links.remove(&bdf) {
                            let _ = l.disconnect(&req, &self.ch.dev);
                        }
                    }
                }
                Err(e) => return Err(format!("verdict for request {}: {e}", req.id)),
            }
        }
    }
}

/// `trustdev-guest tsm-agent`.
pub fn run(a: Args) -> Result<(), String> {
    let root_paths = if a.roots.is_empty() {
        vec![PathBuf::from(DEFAULT_ROOTS)]
    } else {
        a.roots
    };
    let roots = load_roots(&root_paths)?;
    let dev = TsmDevice::open(&a.device).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::ENOENT) => " (is the trustdev_tsm module loaded?)",
            Some(libc::EBUSY) => " (another agent is attached)",
            _ => "",
        };
        format!("{}: {e}{hint}", a.device.display())
    })?;
    log(&format!(
        "attached to {}; {} trusted root(s) from {}; SAN check {:?}",
        a.device.display(),
        roots.len(),
        root_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        a.san
    ));
    let mut agent = Agent {
        ch: Rc::new(Channel {
            dev,
            current: Default::default(),
            exchanges: Default::default(),
        }),
        policy: Policy {
            roots,
            slot: a.slot,
            version: a.version,
            asym: a.asym,
            san: a.san,
        },
        hang_after: a.hang_after,
        links: HashMap::new(),
    };
    agent.serve()
}

/// The trust store `trustdev vm` fills.
const DEFAULT_ROOTS: &str = "/etc/trustdev/roots";
