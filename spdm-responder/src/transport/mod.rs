//! Transports: what carries SPDM messages between a requester and a
//! responder.
//!
//! The requester runs over the small [`Transport`] trait: send one
//! [`Message`] (plain SPDM, or a DSP0277 secured record), receive the
//! response. The bindings:
//!
//! - [`InMemory`]: calls a responder in the same process (tests, benchmarks);
//! - [`doe`]: PCIe DOE data objects (CMA/SPDM and secured CMA/SPDM), the one
//!   home of DOE encoding, discovery and CMA dispatch on both sides;
//! - [`tcp`]: the spdm-emu socket protocol (PCI_DOE, MCTP and NONE framing);
//! - [`storage`]: the DSP0286 binding (NVMe Security Send/Receive).

pub mod doe;
pub mod storage;
pub mod tcp;

use crate::error::TransportError;
use crate::responder::{Responder, SecuredReply};

/// A message on the wire between requester and responder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A plain SPDM message (DOE type 1 / MCTP type 5).
    Spdm(Vec<u8>),
    /// A DSP0277 secured record (DOE type 2 / MCTP type 6).
    Secured(Vec<u8>),
}

/// A requester-side transport: send one message, receive the response.
pub trait Transport {
    /// Sends `msg` and waits for the response to it.
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        (**self).send_receive(msg)
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        (**self).send_receive(msg)
    }
}

/// A requester transport that calls a responder in the same process.
pub struct InMemory {
    /// The responder every message goes to.
    pub responder: Responder,
    /// Every message exchanged, in order (requests and responses as on the wire).
    pub log: Option<Vec<Message>>,
}

impl InMemory {
    /// A transport to `responder`.
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
///
/// This is the transport-neutral view used in process: a secured record the
/// responder can only answer in plain (unknown session, ...) comes back as
/// [`Message::Spdm`], so tests see the ERROR. Over PCIe DOE such a reply is
/// not sent at all; see [`doe`] for that binding's policy.
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
