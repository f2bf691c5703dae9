//! The SPDM requester's transport inside the agent: every message is one DOE
//! data object moved by the kernel (`TDTSM_IOC_DOE` -> `pci_tsm_doe_transfer()`
//! -> `pci_doe()` on the device's CMA mailbox), on behalf of the request the
//! agent currently holds.

use super::uapi::{TsmDevice, DOE_CMA, DOE_SECURED_CMA};
use spdm_responder::error::TransportError;
use spdm_responder::requester::{Message, Transport};
use std::cell::Cell;
use std::rc::Rc;

/// Response buffer per exchange: the requester's MaxSPDMmsgSize (64 KiB) plus
/// room for a secured record's header and MAC.
const RSP_CAP: usize = 0x1_0000 + 64;

/// The agent's device and the request whose DOE exchanges it may run.
pub struct Channel {
    /// The open /dev/trustdev-tsm.
    pub dev: TsmDevice,
    /// Id of the claimed request (the kernel refuses others with ESRCH).
    pub current: Cell<u64>,
    /// DOE exchanges so far.
    pub exchanges: Cell<u64>,
}

/// [`Transport`] over the kernel's DOE path; cheap to create per device.
pub struct KernelDoe {
    ch: Rc<Channel>,
    /// The full text of the last failure (the requester keeps only a string).
    pub last_error: Option<String>,
}

impl KernelDoe {
    /// A transport on `ch`.
    pub fn new(ch: Rc<Channel>) -> KernelDoe {
        KernelDoe {
            ch,
            last_error: None,
        }
    }

    fn fail(&mut self, msg: String) -> TransportError {
        self.last_error = Some(msg.clone());
        TransportError::Io(std::io::Error::other(msg))
    }
}

impl Transport for KernelDoe {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        let (ty, payload) = match &msg {
            Message::Spdm(m) => (DOE_CMA, m),
            Message::Secured(r) => (DOE_SECURED_CMA, r),
        };
        let id = self.ch.current.get();
        let r = self.ch.dev.doe(id, ty, payload, RSP_CAP);
        self.ch.exchanges.set(self.ch.exchanges.get() + 1);
        match r {
            Ok(rsp) if rsp.len() >= RSP_CAP => Err(self.fail(format!(
                "the DOE response filled the whole {RSP_CAP}-byte buffer (truncated?)"
            ))),
            Ok(rsp) if ty == DOE_CMA => Ok(Message::Spdm(rsp)),
            Ok(rsp) => Ok(Message::Secured(rsp)),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(self.fail(format!(
                "the kernel no longer waits for request {id} (timed out or cancelled)"
            ))),
            Err(e) => Err(self.fail(format!(
                "pci_tsm_doe_transfer() of a type {ty} object ({} bytes) failed: {e} (see the kernel log)",
                payload.len()
            ))),
        }
    }
}
