//! The control plane: what a daemon knows about each device it serves
//! ([`DeviceControl`]: its faults, its trace, its live state), the control
//! socket that exposes it ([`socket`], protocol in docs/CONTROL.md), the
//! `trustdev ctl` client ([`client`]), `trustdev run` configuration files
//! ([`config`]) and the hooks devices consult ([`doe`] for the DOE mailbox
//! and SPDM, the NVMe controller's own).

pub mod client;
pub mod config;
pub mod daemon;
pub mod doe;
pub mod fault;
pub mod probes;
pub mod socket;
pub mod trace;
pub mod vendor;

use fault::{Fault, FaultSpec, FaultSpecError, Faults};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use trace::{Trace, TraceSink};
use vfio_user_server::pci::{ext_cap_id, ExtCap};

/// A live view of part of a device's state, as JSON.
pub type Probe = Box<dyn Fn() -> Value + Send + Sync>;

/// Acts on a fault at arming time (NVMe namespace change, surprise
/// removal); returns whether it did (`Ok(false)`: not its fault, or the
/// device is not in a state for it), or why it refused the fault's
/// parameters in the device's present state.
pub type Action = Box<dyn Fn(&Fault) -> Result<bool, String> + Send + Sync>;

/// Everything the control plane knows about one served device.
pub struct DeviceControl {
    /// Its name (`nvme0`).
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its vfio-user socket.
    pub socket: PathBuf,
    /// The faults armed on it.
    pub faults: Faults,
    /// Its trace.
    pub trace: Trace,
    supported: Mutex<Vec<&'static str>>,
    probes: Mutex<Vec<(&'static str, Probe)>>,
    actions: Mutex<Vec<Action>>,
    clears: Mutex<Vec<Clear>>,
}

/// Drops what an immediate fault left queued in a device block (an IDE
/// corruption waiting for its TLP); returns how many it dropped.
pub type Clear = Box<dyn Fn() -> usize + Send + Sync>;

impl std::fmt::Debug for DeviceControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceControl")
            .field("name", &self.name)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a control operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// No device of that name.
    #[error("unknown device {0:?} (devices: {1})")]
    UnknownDevice(String, String),
    /// The fault spec is invalid.
    #[error("{0}")]
    Spec(#[from] FaultSpecError),
    /// The device has no hook for that fault.
    #[error("device {dev} ({kind}) cannot show fault {fault:?} (it supports: {supported})")]
    Unsupported {
        /// Device.
        dev: String,
        /// Its kind.
        kind: String,
        /// The fault.
        fault: String,
        /// What it supports.
        supported: String,
    },
    /// An immediate fault could not act (no client connected, say).
    #[error("device {dev}: fault {fault:?} could not act: {why}")]
    NotNow {
        /// Device.
        dev: String,
        /// The fault.
        fault: String,
        /// Why.
        why: String,
    },
}

impl DeviceControl {
    /// The control of device `name` of `kind` served on `socket`.
    pub fn new(name: &str, kind: &str, socket: PathBuf, sink: TraceSink) -> Arc<DeviceControl> {
        Arc::new(DeviceControl {
            name: name.to_string(),
            kind: kind.to_string(),
            socket,
            faults: Faults::default(),
            trace: Trace::new(name, sink),
            supported: Mutex::new(Vec::new()),
            probes: Mutex::new(Vec::new()),
            actions: Mutex::new(Vec::new()),
            clears: Mutex::new(Vec::new()),
        })
    }

    /// Declares faults the device's hooks show.
    pub fn support(&self, faults: &[&'static str]) {
        let mut s = lock(&self.supported);
        for f in faults {
            if !s.contains(f) {
                s.push(f);
            }
        }
    }

    /// Adds a part (`section`) to the device's state.
    pub fn probe(&self, section: &'static str, p: Probe) {
        lock(&self.probes).push((section, p));
    }

    /// Adds an action for immediate faults, supporting `faults`.
    pub fn action(&self, faults: &[&'static str], a: Action) {
        self.support(faults);
        lock(&self.actions).push(a);
    }

    /// Adds what `disarm` of all faults also drops (see [`Clear`]).
    pub fn on_disarm_all(&self, c: Clear) {
        lock(&self.clears).push(c);
    }

    /// Disarms fault `id`, or all of them and whatever immediate faults
    /// left queued (`None`); returns how many.
    pub fn disarm(&self, id: Option<u64>) -> usize {
        let n = self.faults.disarm(id);
        if id.is_some() {
            return n;
        }
        n + lock(&self.clears).iter().map(|c| c()).sum::<usize>()
    }

    /// Arms a fault (immediate ones act now); returns its id (0 for an
    /// immediate fault).
    pub fn arm(&self, spec: FaultSpec) -> Result<u64, ControlError> {
        let name = spec.fault.name();
        let supported = lock(&self.supported).clone();
        if !supported.contains(&name.as_str()) {
            return Err(ControlError::Unsupported {
                dev: self.name.clone(),
                kind: self.kind.clone(),
                fault: name,
                supported: supported.join(", "),
            });
        }
        self.trace.record(json!({
            "ev": "fault", "armed": spec.to_value(),
        }));
        if spec.fault.immediate() {
            let mut refused = None;
            for a in lock(&self.actions).iter() {
                match a(&spec.fault) {
                    Ok(true) => return Ok(0),
                    Ok(false) => {}
                    Err(why) => refused = refused.or(Some(why)),
                }
            }
            return Err(ControlError::NotNow {
                dev: self.name.clone(),
                fault: name,
                why: refused.unwrap_or_else(|| {
                    "the device is not in a state for it (REQ interrupt not enabled by \
                     the client, no SECURE IDE stream, TDI not CONFIG_LOCKED or RUN, \
                     NVMe controller not ready)"
                        .into()
                }),
            });
        }
        Ok(self.faults.arm(spec))
    }

    /// The device's state: each probe's section, and the armed faults.
    pub fn state(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("kind".into(), json!(self.kind));
        m.insert("socket".into(), json!(self.socket.display().to_string()));
        for (section, p) in lock(&self.probes).iter() {
            m.insert((*section).into(), p());
        }
        m.insert("faults".into(), json!(self.faults.list()));
        m.insert("supported_faults".into(), json!(*lock(&self.supported)));
        Value::Object(m)
    }

    /// Puts the controlled DOE front ([`doe::ControlledDoe`]) before the DOE
    /// mailbox among `caps`; `alt` enables the SPDM faults.
    pub fn wrap_doe(self: &Arc<Self>, caps: &mut [ExtCap], alt: Option<doe::AltIdentity>) {
        for cap in caps.iter_mut().filter(|c| c.id == ext_cap_id::DOE) {
            if let Some(h) = cap.handler.take() {
                cap.handler = Some(Box::new(doe::ControlledDoe::new(
                    h,
                    Arc::clone(self),
                    alt.clone(),
                )));
            }
        }
    }

    /// Registers what every device has: surprise removal through the REQ
    /// interrupt of `irqs`.
    pub fn attach_interrupts(&self, irqs: Arc<vfio_user_server::irq::Interrupts>) {
        let dev = self.name.clone();
        self.action(
            &["surprise-removal"],
            Box::new(move |f| {
                if *f != Fault::SurpriseRemoval {
                    return Ok(false);
                }
                let sent = irqs.request();
                log::warn!(
                    "{dev}: surprise removal: REQ interrupt {}",
                    if sent {
                        "signalled"
                    } else {
                        "not enabled by the client"
                    }
                );
                Ok(sent)
            }),
        );
    }
}

impl DeviceControl {
    /// The `vfio-user-drop` fault on the server's client connection: the
    /// message hook (the `after` form) and the action (at arming, or a
    /// timer for `delay_ms`).
    pub fn attach_connection(self: &Arc<Self>, conn: vfio_user_server::ConnectionControl) {
        let weak = Arc::downgrade(self);
        conn.set_message_hook(Box::new(move |n| {
            let ctl = weak.upgrade()?;
            let hit = ctl.faults.hit(|f, seen| match f {
                Fault::VfioUserDrop { after: Some(a), .. } if seen + 1 >= *a => fault::Match::Hit,
                Fault::VfioUserDrop { after: Some(_), .. } => fault::Match::Counted,
                _ => fault::Match::No,
            })?;
            let since = match hit {
                Fault::VfioUserDrop { after: Some(a), .. } => a,
                _ => 0,
            };
            let effect = format!(
                "connection closed at message {since} since arming ({n} of the connection)"
            );
            ctl.trace.record(json!({
                "ev": "fault", "fault": "vfio-user-drop", "effect": effect,
            }));
            Some(format!(
                "{}: fault vfio-user-drop (message {since} since arming)",
                ctl.name
            ))
        }));
        let weak = Arc::downgrade(self);
        self.action(
            &["vfio-user-drop"],
            Box::new(move |f| {
                let Fault::VfioUserDrop {
                    after: None,
                    delay_ms,
                } = f
                else {
                    return Ok(false);
                };
                let Some(ctl) = weak.upgrade() else {
                    return Ok(false);
                };
                let reason = format!("{}: fault vfio-user-drop", ctl.name);
                let note = |ctl: &DeviceControl, effect: String| {
                    ctl.trace.record(json!({
                        "ev": "fault", "fault": "vfio-user-drop", "effect": effect,
                    }));
                };
                match *delay_ms {
                    None => {
                        if !conn.drop_client(&reason) {
                            return Err("no vfio-user client is connected".into());
                        }
                        note(&ctl, "connection closed at arming".into());
                        Ok(true)
                    }
                    Some(ms) => {
                        let (conn, weak) = (conn.clone(), weak.clone());
                        std::thread::Builder::new()
                            .name("vfio-user-drop".into())
                            .spawn(move || {
                                std::thread::sleep(std::time::Duration::from_millis(ms));
                                let effect = if conn.drop_client(&reason) {
                                    format!("connection closed {ms} ms after arming")
                                } else {
                                    log::warn!("{reason}: no client connected after {ms} ms");
                                    format!("no client connected {ms} ms after arming")
                                };
                                if let Some(ctl) = weak.upgrade() {
                                    note(&ctl, effect);
                                }
                            })
                            .map(|_| true)
                            .map_err(|e| format!("cannot start the drop timer: {e}"))
                    }
                }
            }),
        );
    }
}

/// The devices of one daemon, by name.
#[derive(Default, Debug, Clone)]
pub struct Registry {
    devices: Arc<Mutex<Vec<Arc<DeviceControl>>>>,
}

impl Registry {
    /// Adds a device.
    pub fn add(&self, d: Arc<DeviceControl>) {
        lock(&self.devices).push(d);
    }

    /// The devices.
    pub fn all(&self) -> Vec<Arc<DeviceControl>> {
        lock(&self.devices).clone()
    }

    /// The device named `name`.
    pub fn get(&self, name: &str) -> Result<Arc<DeviceControl>, ControlError> {
        let all = lock(&self.devices);
        all.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
            ControlError::UnknownDevice(
                name.to_string(),
                all.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
    }
}

#[cfg(test)]
mod tests;
