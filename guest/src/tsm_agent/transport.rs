//! The SPDM requester's transport inside the agent: the DOE binding of
//! spdm-responder ([`DoeTransport`]) over a [`DoeChannel`] whose objects the
//! kernel moves (`TDTSM_IOC_DOE` -> `pci_tsm_doe_transfer()` -> `pci_doe()`
//! on the device's CMA mailbox), on behalf of the request the agent holds.
//! The kernel builds the object headers itself, so the channel hands it the
//! payload and the type and wraps the response payload back into an object.

use super::uapi::TsmDevice;
use spdm_responder::error::TransportError;
use spdm_responder::transport::doe::{self, DoeChannel, DoeTransport, ProtocolId};
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

/// [`DoeChannel`] through the kernel; cheap to create per device.
pub struct KernelChannel(pub Rc<Channel>);

/// The requester's transport of the agent.
pub type KernelDoe = DoeTransport<KernelChannel>;

/// A transport on `ch`.
pub fn kernel_doe(ch: &Rc<Channel>) -> KernelDoe {
    DoeTransport::new(KernelChannel(Rc::clone(ch)))
}

fn fail(msg: String) -> TransportError {
    TransportError::Io(std::io::Error::other(msg))
}

impl DoeChannel for KernelChannel {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        let (protocol, payload) = doe::decode_object(obj)?;
        if protocol != ProtocolId::CMA && protocol != ProtocolId::SECURED_CMA {
            return Err(TransportError::Unsupported(
                "the kernel moves only CMA/SPDM and secured CMA/SPDM objects",
            ));
        }
        let ch = &self.0;
        let id = ch.current.get();
        let ty = protocol.object_type;
        let r = ch.dev.doe(id, ty, payload, RSP_CAP);
        ch.exchanges.set(ch.exchanges.get() + 1);
        let rsp = match r {
            Ok(rsp) if rsp.len() >= RSP_CAP => {
                return Err(fail(format!(
                    "the DOE response filled the whole {RSP_CAP}-byte buffer (truncated?)"
                )))
            }
            Ok(rsp) => rsp,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                return Err(fail(format!(
                    "the kernel no longer waits for request {id} (timed out or cancelled)"
                )))
            }
            Err(e) => {
                return Err(fail(format!(
                    "pci_tsm_doe_transfer() of a type {ty} object ({} bytes) failed: {e} (see the kernel log)",
                    payload.len()
                )))
            }
        };
        // drivers/pci/doe.c checked that the response is of the request's type.
        Ok(doe::encode_object(protocol, &rsp)?)
    }
}
