//! The TDISP backend of a device: its TDIs (one per function; a trustdev
//! device has one).

use super::Tdi;
use spdm_responder::tdisp::{
    code, ErrorCode, InterfaceId, InterfaceReport, LockParams, ResponderCaps, TdiState,
    TdispBackend, TdispResponder, NONCE_LEN,
};
use spdm_responder::vendor::{VendorKey, PCI_PROTOCOL_TDISP};
use std::sync::Arc;

/// The TDIs of a device, answering TDISP.
#[derive(Debug, Clone)]
pub struct TdispFunctions {
    tdis: Vec<Arc<Tdi>>,
}

impl TdispFunctions {
    /// A device with `tdis` (at least one).
    pub fn new(tdis: Vec<Arc<Tdi>>) -> Self {
        assert!(!tdis.is_empty(), "at least one TDI");
        TdispFunctions { tdis }
    }

    /// The TDISP vendor handler for an SPDM responder, and the key to
    /// register it under (PCI-SIG protocol 1, secured sessions only).
    pub fn handler(self) -> (VendorKey, Box<TdispResponder<TdispFunctions>>) {
        (
            VendorKey::pcisig(PCI_PROTOCOL_TDISP),
            Box::new(TdispResponder::new(self)),
        )
    }

    fn tdi(&self, i: usize) -> &Arc<Tdi> {
        // Indexes come from `interface`, which only returns valid ones.
        &self.tdis[i.min(self.tdis.len() - 1)]
    }
}

impl TdispBackend for TdispFunctions {
    fn interface(&mut self, id: &InterfaceId) -> Option<usize> {
        self.tdis.iter().position(|t| t.matches(id))
    }

    fn capabilities(&self) -> ResponderCaps {
        ResponderCaps {
            dsm_caps: 0,
            // GET_TDISP_VERSION .. STOP_INTERFACE_REQUEST; no P2P, no
            // updatable MMIO attributes, no VDMs.
            req_msgs_supported: ResponderCaps::msgs(&[
                code::GET_VERSION,
                code::GET_CAPABILITIES,
                code::LOCK_INTERFACE,
                code::GET_DEVICE_INTERFACE_REPORT,
                code::GET_DEVICE_INTERFACE_STATE,
                code::START_INTERFACE,
                code::STOP_INTERFACE,
            ]),
            lock_flags_supported: self.tdis[0].config().lock_flags,
            // The device models' DMA addresses are 64-bit.
            dev_addr_width: 64,
            // One request at a time (DOE is one exchange at a time).
            num_req_this: 1,
            num_req_all: 1,
        }
    }

    fn state(&mut self, tdi: usize) -> TdiState {
        self.tdi(tdi).state()
    }

    fn lock(
        &mut self,
        session: u32,
        tdi: usize,
        id: InterfaceId,
        params: &LockParams,
    ) -> Result<[u8; NONCE_LEN], ErrorCode> {
        self.tdi(tdi).lock(session, id, params)
    }

    fn report(&mut self, tdi: usize) -> Result<InterfaceReport, ErrorCode> {
        self.tdi(tdi).report()
    }

    fn start(
        &mut self,
        session: u32,
        tdi: usize,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<(), ErrorCode> {
        self.tdi(tdi).start(session, nonce)
    }

    fn stop(&mut self, _session: u32, tdi: usize) -> Result<(), ErrorCode> {
        self.tdi(tdi).stop();
        Ok(())
    }

    fn session_ended(&mut self, session: u32) {
        for t in &self.tdis {
            t.session_ended(session);
        }
    }
}
