//! SPDM over NVMe Security Send / Security Receive (DSP0286 storage binding,
//! SECP 0xE8), and the security options of the controller (DOE mailbox,
//! DEVCAP.TEE).

use spdm_responder::transport::storage::{StorageBinding, StorageError};
use spdm_responder::Responder;
use vfio_user_server::pci::ExtCap;

/// The SPDM responder behind Security Send/Receive and its pending response.
pub struct StorageSpdm {
    responder: Responder,
    binding: StorageBinding,
}

impl std::fmt::Debug for StorageSpdm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageSpdm")
    }
}

impl StorageSpdm {
    /// Wraps a responder.
    pub fn new(responder: Responder) -> Self {
        StorageSpdm {
            responder,
            binding: StorageBinding::new(),
        }
    }

    /// Returns to the power-on state (controller reset).
    pub fn reset(&mut self) {
        self.responder.reset();
        self.binding = StorageBinding::new();
    }
}

/// Security features of a controller.
#[derive(Default)]
pub struct NvmeSecurity {
    /// Extended capabilities to add (the DOE mailbox with CMA/SPDM).
    pub ext_caps: Vec<ExtCap>,
    /// DEVCAP.TEE.
    pub tee: bool,
    /// SPDM responder for Security Send/Receive (SECP 0xE8).
    pub storage: Option<Responder>,
}

impl std::fmt::Debug for NvmeSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeSecurity")
            .field("ext_caps", &self.ext_caps)
            .field("tee", &self.tee)
            .field("storage", &self.storage.is_some())
            .finish()
    }
}

/// CDW10 of Security Send/Receive: (SECP, SPSP).
pub fn secp_spsp(cdw10: u32) -> (u8, u16) {
    let secp = (cdw10 >> 24) as u8;
    let spsp0 = (cdw10 >> 8) & 0xff;
    let spsp1 = (cdw10 >> 16) & 0xff;
    (secp, ((spsp1 << 8) | spsp0) as u16)
}

/// Largest Security Send transfer accepted (and Security Receive returned).
pub const MAX_TRANSFER: usize = 64 * 1024;

impl StorageSpdm {
    /// Security Send: the host hands an SPDM request (or another SECP's data).
    pub fn send(&mut self, secp: u8, spsp: u16, data: &[u8]) -> Result<(), StorageError> {
        let StorageSpdm { responder, binding } = self;
        binding.security_send(responder, secp, spsp, data)
    }

    /// Security Receive: supported protocols (SECP 0), storage-binding
    /// discovery, pending info, or the pending SPDM response, at most
    /// `alloc` bytes.
    pub fn receive(&mut self, secp: u8, spsp: u16, alloc: usize) -> Result<Vec<u8>, StorageError> {
        self.binding.security_receive(secp, spsp, alloc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdw10_layout() {
        // SECP 0xE8, SPSP1 0x00, SPSP0 0x14 (operation 5 << 2), NSSF 0.
        assert_eq!(secp_spsp(0xe800_1400), (0xe8, 0x0014));
    }
}
