//! Closing the client's connection from outside the server thread (fault
//! injection: a vfio-user connection drop), at once or at a chosen message.
//!
//! [`ConnectionControl`] is shared between the server and whoever wants the
//! client gone. [`ConnectionControl::drop_client`] shuts the current
//! client's socket down: the server thread's blocking receive returns, the
//! server logs the reason, resets the device, drops the client's maps and
//! eventfds, and listens for the next client, as on any disconnect. A
//! message hook ([`ConnectionControl::set_message_hook`]) sees every message
//! before it is handled and may close the connection instead of handling it.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// Consulted before each received message with the message's 1-based
/// number on this connection; `Some(reason)` closes the connection instead
/// of handling the message.
pub type MessageHook = Box<dyn Fn(u64) -> Option<String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// The connected client's socket (a clone), if any.
    current: Mutex<Option<UnixStream>>,
    /// Why the connection was closed from outside, for the server's log.
    reason: Mutex<Option<String>>,
    hook: Mutex<Option<MessageHook>>,
}

/// See the module documentation. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ConnectionControl(Arc<Inner>);

impl std::fmt::Debug for ConnectionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionControl")
            .field("connected", &self.connected())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnectionControl {
    /// Whether a client is connected.
    pub fn connected(&self) -> bool {
        lock(&self.0.current).is_some()
    }

    /// Closes the current client's connection (the server logs `reason`);
    /// false when no client is connected.
    pub fn drop_client(&self, reason: &str) -> bool {
        let cur = lock(&self.0.current);
        let Some(s) = cur.as_ref() else {
            return false;
        };
        *lock(&self.0.reason) = Some(reason.to_string());
        if let Err(e) = s.shutdown(std::net::Shutdown::Both) {
            log::warn!("cannot close the client connection: {e}");
            return false;
        }
        true
    }

    /// Installs the hook every received message passes first.
    pub fn set_message_hook(&self, hook: MessageHook) {
        *lock(&self.0.hook) = Some(hook);
    }

    pub(crate) fn attach(&self, stream: Option<UnixStream>) {
        *lock(&self.0.reason) = None;
        *lock(&self.0.current) = stream;
    }

    /// Why the connection was closed from outside (taken once).
    pub(crate) fn take_reason(&self) -> Option<String> {
        lock(&self.0.reason).take()
    }

    pub(crate) fn check_message(&self, n: u64) -> Option<String> {
        lock(&self.0.hook).as_ref().and_then(|h| h(n))
    }
}
