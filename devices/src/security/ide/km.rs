//! The IDE_KM backend of a component: its IDE ports by PortIndex (a
//! trustdev device is one port; `trustdev spdm-responder` can model more).

use super::keys::KeyError;
use super::state::KmError;
use super::Ide;
use spdm_responder::idekm::{
    IdeKey, IdeKmBackend, IdeKmRefusal, IdeKmResponder, KeySlot, QueryResp,
};
use spdm_responder::vendor::{VendorKey, PCI_PROTOCOL_IDE_KM};
use std::sync::Arc;

/// The ports of a component, PortIndex 0 first.
#[derive(Debug, Clone)]
pub struct IdeKmPorts {
    ports: Vec<Arc<Ide>>,
}

impl IdeKmPorts {
    /// A component with `ports` (at least one; at most 256).
    pub fn new(ports: Vec<Arc<Ide>>) -> Self {
        assert!(
            !ports.is_empty() && ports.len() <= 256,
            "1 to 256 IDE ports"
        );
        IdeKmPorts { ports }
    }

    /// The IDE_KM vendor handler for an SPDM responder, and the key to
    /// register it under (PCI-SIG protocol 0, secured sessions only).
    pub fn handler(self) -> (VendorKey, Box<IdeKmResponder<IdeKmPorts>>) {
        (
            VendorKey::pcisig(PCI_PROTOCOL_IDE_KM),
            Box::new(IdeKmResponder::new(self)),
        )
    }

    fn port(&self, i: u8) -> Result<&Arc<Ide>, IdeKmRefusal> {
        self.ports
            .get(i as usize)
            .ok_or(IdeKmRefusal::UnsupportedPort)
    }
}

fn refusal(e: KmError) -> IdeKmRefusal {
    match e {
        KmError::UnknownStream => IdeKmRefusal::UnknownStream,
        KmError::Key(KeyError::Empty) => IdeKmRefusal::NoKey,
        KmError::Key(KeyError::InUse) => IdeKmRefusal::SlotInUse,
        KmError::Key(KeyError::OtherSession) => IdeKmRefusal::OtherSession,
    }
}

impl IdeKmBackend for IdeKmPorts {
    fn max_port_index(&self) -> u8 {
        (self.ports.len() - 1) as u8
    }

    fn query(&mut self, port_index: u8) -> QueryResp {
        let max = self.max_port_index();
        match self.ports.get(port_index as usize) {
            Some(p) => p.query_resp(port_index, max),
            None => QueryResp {
                port_index,
                dev_func: 0,
                bus: 0,
                segment: 0,
                max_port_index: max,
                regs: Vec::new(),
            },
        }
    }

    fn key_prog(
        &mut self,
        session_id: u32,
        port_index: u8,
        stream_id: u8,
        slot: KeySlot,
        key: IdeKey,
    ) -> Result<(), IdeKmRefusal> {
        self.port(port_index)?
            .km_program(session_id, stream_id, slot, key)
            .map_err(refusal)
    }

    fn key_set_go(
        &mut self,
        session_id: u32,
        port_index: u8,
        stream_id: u8,
        slot: KeySlot,
    ) -> Result<(), IdeKmRefusal> {
        self.port(port_index)?
            .km_go(session_id, stream_id, slot)
            .map_err(refusal)
    }

    fn key_set_stop(
        &mut self,
        session_id: u32,
        port_index: u8,
        stream_id: u8,
        slot: KeySlot,
    ) -> Result<(), IdeKmRefusal> {
        self.port(port_index)?
            .km_stop(session_id, stream_id, slot)
            .map_err(refusal)
    }

    fn session_ended(&mut self, session_id: u32) {
        for p in &self.ports {
            p.km_session_ended(session_id);
        }
    }
}
