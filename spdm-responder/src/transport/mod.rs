//! Transports: in-memory, PCIe DOE data objects, the spdm-emu TCP socket
//! protocol, and the DSP0286 storage (NVMe Security Send/Receive) binding.

pub mod doe;
pub mod storage;
pub mod tcp;

use crate::error::TransportError;
use crate::requester::{Message, Transport};
use crate::responder::{Responder, SecuredReply};

/// A requester transport that calls a responder in the same process.
pub struct InMemory {
    pub responder: Responder,
    /// Every message exchanged, in order (requests and responses as on the wire).
    pub log: Option<Vec<Message>>,
}

impl InMemory {
    pub fn new(responder: Responder) -> Self {
        Self {
            responder,
            log: None,
        }
    }
    /// Record the exchange (golden-transcript tests).
    pub fn recording(responder: Responder) -> Self {
        Self {
            responder,
            log: Some(Vec::new()),
        }
    }
}

/// Dispatch one message to a responder.
pub fn dispatch(responder: &mut Responder, msg: Message) -> Result<Message, TransportError> {
    Ok(match msg {
        Message::Spdm(m) => Message::Spdm(responder.handle_message(&m)),
        Message::Secured(r) => match responder.handle_secured(&r) {
            SecuredReply::Secured(r) => Message::Secured(r),
            SecuredReply::Plain(m) => Message::Spdm(m),
            SecuredReply::None => return Err(TransportError::Malformed("no response")),
        },
    })
}

impl Transport for InMemory {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        if let Some(l) = self.log.as_mut() {
            l.push(msg.clone());
        }
        let r = dispatch(&mut self.responder, msg)?;
        if let Some(l) = self.log.as_mut() {
            l.push(r.clone());
        }
        Ok(r)
    }
}
