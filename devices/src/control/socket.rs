//! The control socket: line-delimited JSON over a UNIX socket (mode 0600),
//! served by its own threads so it never blocks a device. Each request is
//! one JSON object on one line; each gets exactly one response line,
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`. docs/CONTROL.md is
//! the reference.
//!
//! Limits: requests longer than [`MAX_LINE`] bytes are refused and the
//! connection closed (framing is lost); at most [`MAX_CLIENTS`] clients at
//! once (one more is told so and closed); a client idle for
//! [`IDLE_TIMEOUT`] is closed.

use super::fault::{FaultSpec, FAULT_NAMES};
use super::{ControlError, Registry};
use log::{debug, info, warn};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest request line accepted (bytes, newline excluded).
pub const MAX_LINE: usize = 64 * 1024;
/// Clients served at once.
pub const MAX_CLIENTS: usize = 32;
/// An idle client is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Trace lines one `trace` request returns at most.
pub const MAX_TRACE_LINES: usize = 1000;

/// A running control socket.
#[derive(Debug)]
pub struct ControlSocket {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlSocket {
    /// Serves `registry` on `path`.
    pub fn start(path: &Path, registry: Registry) -> std::io::Result<ControlSocket> {
        // 0600; only a stale socket is replaced; the file appears listening.
        let listener = vfio_user_server::transport::Listener::bind(path)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        listener.as_listener().set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let clients = Arc::new(AtomicUsize::new(0));
        info!("control socket on {}", path.display());
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match listener.as_listener().accept() {
                        Ok((s, _)) => accept(s, &registry, &clients),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => {
                            warn!("control socket: accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(ControlSocket {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The listener, dropped with the thread, removes its own socket.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept(mut s: UnixStream, registry: &Registry, clients: &Arc<AtomicUsize>) {
    let _ = s.set_nonblocking(false);
    if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
        clients.fetch_sub(1, Ordering::SeqCst);
        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = writeln!(
            s,
            "{}",
            json!({"ok": false, "error": format!("too many control clients (limit {MAX_CLIENTS})")})
        );
        return;
    }
    let registry = registry.clone();
    let clients2 = Arc::clone(clients);
    let spawned = std::thread::Builder::new()
        .name("control-client".into())
        .spawn(move || {
            serve_client(s, &registry);
            clients2.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        warn!("control socket: cannot start a client thread: {e}");
        clients.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_client(s: UnixStream, registry: &Registry) {
    let _ = s.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = s.try_clone() else { return };
    let mut input = BufReader::new(s);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                debug!("control client: {e}");
                return;
            }
        };
        if line.last() != Some(&b'\n') && n > MAX_LINE {
            let _ = writeln!(
                out,
                "{}",
                json!({"ok": false, "error": format!("request line longer than {MAX_LINE} bytes; closing")})
            );
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let reply = handle_line(text, registry);
        if writeln!(out, "{reply}").is_err() {
            return;
        }
        if line.last() != Some(&b'\n') {
            return; // EOF without a newline: that was the last request
        }
    }
}

/// Answers one request line.
pub fn handle_line(line: &str, registry: &Registry) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(other) => return err(format!("a request is a JSON object, not {other}")),
        Err(e) => return err(format!("malformed JSON: {e}")),
    };
    match handle(&req, registry) {
        Ok(mut v) => {
            if let Value::Object(m) = &mut v {
                m.insert("ok".into(), json!(true));
            }
            v
        }
        Err(e) => err(e),
    }
}

fn err(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

const COMMANDS: &str = "list, state, arm, disarm, trace, faults";

fn handle(req: &Value, registry: &Registry) -> Result<Value, String> {
    let cmd = req["cmd"]
        .as_str()
        .ok_or_else(|| format!("no \"cmd\" (one of: {COMMANDS})"))?;
    let device = || -> Result<_, String> {
        let name = req["device"]
            .as_str()
            .ok_or_else(|| format!("{cmd}: no \"device\""))?;
        registry.get(name).map_err(|e| e.to_string())
    };
    match cmd {
        "list" => Ok(json!({"devices": registry.all().iter().map(|d| json!({
            "name": d.name, "kind": d.kind, "socket": d.socket.display().to_string(),
            "faults_armed": d.faults.list().len(),
        })).collect::<Vec<_>>()})),
        "faults" => Ok(json!({"faults": FAULT_NAMES})),
        "state" => Ok(json!({"state": device()?.state()})),
        "arm" => {
            let d = device()?;
            let spec = FaultSpec::from_value(&req["fault"]).map_err(|e| e.to_string())?;
            let id = d.arm(spec).map_err(|e: ControlError| e.to_string())?;
            Ok(json!({"id": id}))
        }
        "disarm" => {
            let d = device()?;
            let id = match &req["id"] {
                Value::Null => None,
                v => Some(v.as_u64().ok_or_else(|| format!("disarm: bad id {v}"))?),
            };
            let n = d.disarm(id);
            if id.is_some() && n == 0 {
                return Err(format!(
                    "disarm: no armed fault {} on {}",
                    req["id"], d.name
                ));
            }
            d.trace
                .record(json!({"ev": "fault", "disarmed": n, "id": id}));
            Ok(json!({"disarmed": n}))
        }
        "trace" => {
            let d = device()?;
            let since = match &req["since"] {
                Value::Null => 0,
                v => v.as_u64().ok_or_else(|| format!("trace: bad since {v}"))?,
            };
            let max = match &req["max"] {
                Value::Null => MAX_TRACE_LINES,
                v => v
                    .as_u64()
                    .ok_or_else(|| format!("trace: bad max {v}"))?
                    .min(MAX_TRACE_LINES as u64) as usize,
            };
            let (lines, last) = d.trace.lines(since, max);
            let lines: Vec<Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!(l)))
                .collect();
            Ok(json!({"lines": lines, "last": last}))
        }
        other => Err(format!("unknown cmd {other:?} (one of: {COMMANDS})")),
    }
}
