//! SPDM 1.0-1.3 responder and requester for trustdev (DSP0274, DSP0277 secured
//! messages, PCIe DOE/CMA binding, spdm-emu socket transport).
//!
//! The crate knows nothing about vfio-user: it consumes and produces byte messages.

pub mod codec;
pub mod crypto;
pub mod error;
pub mod idekm;
pub mod identity;
pub mod keyschedule;
pub mod measurement;
pub mod opaque;
pub mod psk;
pub mod responder;
pub mod rng;
pub mod secured;
pub mod tdisp;
pub mod vendor;

pub use error::ErrorCode;
pub use identity::{CmaDeviceName, Identity};
pub use responder::{Responder, ResponderConfig, SecuredReply};
pub mod requester;
pub mod transport;

pub use requester::{Requester, RequesterConfig};
pub use transport::doe::{DoeEndpoint, DoeError, DoeProtocol, ProtocolId};
pub use transport::tcp::serve_tcp;
pub use transport::{Message, Transport};
