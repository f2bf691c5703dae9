//! VENDOR_DEFINED_REQUEST hook: handlers registered by (StandardID, VendorID,
//! protocol id) so IDE_KM and TDISP responders plug in without touching the
//! state machine.

use crate::error::ErrorCode;

/// StandardID of PCI-SIG (DSP0274 "Registry or standards body ID").
pub const STANDARD_ID_PCISIG: u16 = 0x0003;
/// PCI-SIG VendorID for its own protocols.
pub const PCISIG_VENDOR_ID: u16 = 0x0001;
/// PCI-SIG protocol ids (first payload byte).
pub const PCI_PROTOCOL_IDE_KM: u8 = 0x00;
pub const PCI_PROTOCOL_TDISP: u8 = 0x01;

/// What a vendor handler sees about the request.
#[derive(Clone, Debug)]
pub struct VendorContext {
    /// The session the request arrived in, if any.
    pub session_id: Option<u32>,
    /// Negotiated SPDM version.
    pub version: u8,
    pub standard_id: u16,
    pub vendor_id: Vec<u8>,
}

/// A vendor-defined protocol responder.
pub trait VendorHandler: Send {
    /// Handle the request payload (starting with the protocol id byte for PCI-SIG)
    /// and return the response payload, or an SPDM error code.
    fn handle(&mut self, ctx: &VendorContext, payload: &[u8]) -> Result<Vec<u8>, ErrorCode>;
    /// Called when a session ends (to drop per-session state, e.g. IDE keys).
    fn session_ended(&mut self, _session_id: u32) {}
}

/// The key a handler is registered under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorKey {
    pub standard_id: u16,
    /// VendorID bytes as on the wire (little-endian u16 for PCI-SIG).
    pub vendor_id: Vec<u8>,
    /// First payload byte; `None` matches any payload.
    pub protocol_id: Option<u8>,
    /// Only inside a secured session (IDE_KM, TDISP).
    pub require_session: bool,
}

impl VendorKey {
    /// A PCI-SIG protocol (StandardID 3, VendorID 0x0001) that requires a session.
    pub fn pcisig(protocol_id: u8) -> Self {
        Self {
            standard_id: STANDARD_ID_PCISIG,
            vendor_id: PCISIG_VENDOR_ID.to_le_bytes().to_vec(),
            protocol_id: Some(protocol_id),
            require_session: true,
        }
    }
}

/// Registry of vendor handlers.
#[derive(Default)]
pub struct VendorRegistry {
    handlers: Vec<(VendorKey, Box<dyn VendorHandler>)>,
}

impl std::fmt::Debug for VendorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|(k, _)| k))
            .finish()
    }
}

impl VendorRegistry {
    pub fn register(&mut self, key: VendorKey, handler: Box<dyn VendorHandler>) {
        self.handlers.retain(|(k, _)| k != &key);
        self.handlers.push((key, handler));
    }
    pub(crate) fn find(
        &mut self,
        standard_id: u16,
        vendor_id: &[u8],
        payload: &[u8],
    ) -> Option<(&VendorKey, &mut Box<dyn VendorHandler>)> {
        self.handlers
            .iter_mut()
            .find(|(k, _)| {
                k.standard_id == standard_id
                    && k.vendor_id == vendor_id
                    && k.protocol_id.map_or(true, |p| payload.first() == Some(&p))
            })
            .map(|(k, h)| (&*k, h))
    }
    pub(crate) fn session_ended(&mut self, session_id: u32) {
        for (_, h) in self.handlers.iter_mut() {
            h.session_ended(session_id);
        }
    }
}
