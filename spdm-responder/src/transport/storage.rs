//! DSP0286 (SPDM over storage) helper for NVMe Security Send / Security Receive
//! with Security Protocol 0xE8 (DMTF SPDM), following libspdm's storage binding
//! (`spdm_storage_binding.h`):
//!
//! SP Specific (SPSP, NVMe CDW10 bits 23:8): SPSP0 = (operation << 2) | connection id
//! (bits 1:0), SPSP1 = 0. Operations: 0x01 discovery, 0x02 pending info,
//! 0x05 SPDM message, 0x06 secured SPDM message.
//!
//! Implemented: discovery, pending info and plain SPDM messages. Secured
//! messages over storage (2-byte sequence numbers, reserved header bytes and
//! message descriptors) are refused with [`StorageError::Operation`] for now.

use crate::responder::Responder;

/// NVMe Security Protocol for DMTF SPDM.
pub const SECP_SPDM: u8 = 0xE8;
pub const OP_DISCOVERY: u8 = 0x01;
pub const OP_PENDING_INFO: u8 = 0x02;
pub const OP_SPDM: u8 = 0x05;
pub const OP_SECURED_SPDM: u8 = 0x06;
/// DSP0286 binding version in responses.
pub const STORAGE_BINDING_VERSION: u16 = 0x1000;

/// The SPSP value of an operation on connection 0.
pub const fn spsp(op: u8, connection: u8) -> u16 {
    ((op << 2) | (connection & 3)) as u16
}

/// Errors a controller maps to an NVMe status (Invalid Field in Command).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("security protocol {0:#04x} is not SPDM")]
    Protocol(u8),
    #[error("unsupported DSP0286 operation {0:#04x}")]
    Operation(u8),
    #[error("invalid SP Specific field {0:#06x}")]
    Spsp(u16),
    #[error("no response pending")]
    NothingPending,
}

/// Per-controller DSP0286 state: one pending response.
#[derive(Default)]
pub struct StorageBinding {
    pending: Option<Vec<u8>>,
}

fn decode_spsp(spsp: u16) -> Result<(u8, u8), StorageError> {
    if spsp >> 8 != 0 || spsp & 3 != 0 {
        // One connection (id 0) is supported.
        return Err(StorageError::Spsp(spsp));
    }
    Ok((((spsp & 0xFC) >> 2) as u8, (spsp & 3) as u8))
}

impl StorageBinding {
    pub fn new() -> Self {
        Self { pending: None }
    }

    /// NVMe Security Send (SECP = `secp`, SPSP = `spsp`) with `data`.
    pub fn security_send(
        &mut self,
        responder: &mut Responder,
        secp: u8,
        spsp: u16,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if secp != SECP_SPDM {
            return Err(StorageError::Protocol(secp));
        }
        match decode_spsp(spsp)?.0 {
            OP_SPDM => {
                self.pending = Some(responder.handle_message(data));
                Ok(())
            }
            other => Err(StorageError::Operation(other)),
        }
    }

    /// NVMe Security Receive: discovery, pending info, or the pending SPDM
    /// response (truncated to `alloc_len`). SECP 0 lists the supported protocols.
    pub fn security_receive(
        &mut self,
        secp: u8,
        spsp: u16,
        alloc_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let mut out = if secp == 0x00 {
            // SPC-5 "supported security protocols": length 2, protocols 0x00 and 0xE8.
            vec![0, 0, 0, 0, 0, 0, 0, 2, 0x00, SECP_SPDM]
        } else if secp != SECP_SPDM {
            return Err(StorageError::Protocol(secp));
        } else {
            match decode_spsp(spsp)?.0 {
                OP_DISCOVERY => {
                    let mut v = Vec::with_capacity(32);
                    v.extend_from_slice(&32u16.to_le_bytes());
                    v.extend_from_slice(&STORAGE_BINDING_VERSION.to_le_bytes());
                    v.push(0); // conn_params: max connection id 0
                    v.extend_from_slice(&[0; 3]);
                    v.push((1 << OP_DISCOVERY) | (1 << OP_PENDING_INFO) | (1 << OP_SPDM));
                    v.resize(32, 0);
                    v
                }
                OP_PENDING_INFO => {
                    let mut v = Vec::with_capacity(12);
                    v.extend_from_slice(&12u16.to_le_bytes());
                    v.extend_from_slice(&STORAGE_BINDING_VERSION.to_le_bytes());
                    v.extend_from_slice(&u32::from(self.pending.is_some()).to_le_bytes());
                    v.extend_from_slice(
                        &(self.pending.as_ref().map_or(0, |p| p.len()) as u32).to_le_bytes(),
                    );
                    v
                }
                OP_SPDM => self.pending.take().ok_or(StorageError::NothingPending)?,
                other => return Err(StorageError::Operation(other)),
            }
        };
        out.truncate(alloc_len);
        Ok(out)
    }
}
