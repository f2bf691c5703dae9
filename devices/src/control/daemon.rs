//! `trustdev run CONFIG.toml`: one process serving every configured device
//! (a vfio-user server thread each), their faults armed at start, the
//! control socket and the trace file.

use super::config::{Config, DeviceConf};
use super::socket::ControlSocket;
use super::trace::TraceSink;
use super::{DeviceControl, Registry};
use crate::kinds::AnyDevice;
use serde_json::json;
use std::sync::Arc;
use vfio_user_server::Server;

/// The vfio-user message counters of `server` in `ctl`'s state, and the
/// `vfio-user-drop` fault on its client connection.
pub fn probe_server<D: vfio_user_server::Device>(ctl: &Arc<DeviceControl>, server: &Server<D>) {
    let stats = server.stats();
    ctl.probe(
        "vfio_user",
        Box::new(move || json!({"messages": stats.summary()})),
    );
    ctl.attach_connection(server.connection());
}

/// Builds one configured device with its control (the binary provides it:
/// it parses the device's `trustdev serve` arguments).
pub type Build<'a> = &'a dyn Fn(&DeviceConf, &Arc<DeviceControl>) -> Result<AnyDevice, String>;

/// A device's server thread: its name, stop handle and thread.
type Running = (
    String,
    vfio_user_server::StopHandle,
    std::thread::JoinHandle<Result<(), String>>,
);

/// A running daemon.
pub struct Daemon {
    /// Its devices.
    pub registry: Registry,
    servers: Vec<Running>,
    _control: Option<ControlSocket>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("registry", &self.registry)
            .finish()
    }
}

impl Daemon {
    /// Starts every device of `cfg` (sockets required), arms their faults,
    /// opens the control socket and the trace file.
    pub fn start(cfg: &Config, build: Build<'_>) -> Result<Daemon, String> {
        cfg.require_sockets().map_err(|e| e.to_string())?;
        let sink = match &cfg.trace {
            Some(p) => {
                TraceSink::to_file(p).map_err(|e| format!("trace file {}: {e}", p.display()))?
            }
            None => TraceSink::default(),
        };
        let registry = Registry::default();
        let mut servers = Vec::new();
        for d in &cfg.devices {
            let socket = d.socket.clone().unwrap_or_default();
            let ctl = DeviceControl::new(&d.name, d.kind.name, socket.clone(), sink.clone());
            let dev = build(d, &ctl).map_err(|e| format!("device {}: {e}", d.name))?;
            let server = Server::new(dev, &socket)
                .map_err(|e| format!("device {}: {}: {e}", d.name, socket.display()))?;
            probe_server(&ctl, &server);
            for f in &d.faults {
                ctl.arm(f.clone())
                    .map_err(|e| format!("device {}: fault at start: {e}", d.name))?;
            }
            registry.add(Arc::clone(&ctl));
            servers.push((d.name.clone(), server));
        }
        let control = match &cfg.control {
            Some(p) => Some(
                ControlSocket::start(p, registry.clone())
                    .map_err(|e| format!("control socket {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let servers = servers
            .into_iter()
            .map(|(name, mut s)| {
                let stop = s.stop_handle();
                let n = name.clone();
                let t = std::thread::Builder::new()
                    .name(format!("vfio-user {name}"))
                    .spawn(move || s.run().map_err(|e| format!("device {n}: {e}")))
                    .map_err(|e| format!("device {name}: thread: {e}"))?;
                Ok((name, stop, t))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Daemon {
            registry,
            servers,
            _control: control,
        })
    }

    /// Stops every server.
    pub fn stop(&self) {
        for (_, stop, _) in &self.servers {
            stop.stop();
        }
    }

    /// Waits for every server to end; the first error.
    pub fn wait(self) -> Result<(), String> {
        let mut first = Ok(());
        for (name, _, t) in self.servers {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(format!("device {name}: server thread panicked")));
            if let Err(e) = r {
                log::error!("{e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
