//! TDISP, the TEE Device Interface Security Protocol (PCIe Base 6.1+
//! chapter 11): how a TSM locks a device's interface (a TDI: one function),
//! reads its interface report and moves it into RUN, inside a secured SPDM
//! session. It travels as PCI-SIG vendor-defined protocol 1
//! ([`crate::vendor::PCI_PROTOCOL_TDISP`]) in VENDOR_DEFINED_REQUEST /
//! VENDOR_DEFINED_RESPONSE, after the protocol ID byte.
//!
//! - [`codec`]: the messages, the interface report and their byte layout
//!   (DMTF libspdm's `industry_standard/pci_tdisp.h`).
//! - [`responder`]: a [`crate::vendor::VendorHandler`] that checks every
//!   request (message type, length, version, interface) and hands it to a
//!   device's TDIs behind [`responder::TdispBackend`]; refusals become
//!   TDISP_ERROR responses.
//! - [`requester`]: TDISP requests from a [`crate::Requester`] in a session
//!   (the report read in portions).
//!
//! ```text
//! CONFIG_UNLOCKED ──LOCK_INTERFACE──> CONFIG_LOCKED ──START (nonce)──> RUN
//!        ^                                 │                           │
//!        └──────────── STOP ───────────────┴── change to locked ──> ERROR
//!                                              configuration, IDE loss    │
//!        ^─────────────────────────────── STOP ───────────────────────────┘
//! ```

pub mod codec;
pub mod requester;
pub mod responder;

pub use codec::{
    DecodeError, Header, InterfaceReport, LockParams, MmioRange, Request, ResponderCaps, Response,
};
pub use requester::TdispError;
pub use responder::{TdispBackend, TdispResponder};

/// TDISP version 1.0 (the version byte of every message).
pub const VERSION_10: u8 = 0x10;

/// Length of the START_INTERFACE nonce.
pub const NONCE_LEN: usize = 32;

/// Request and response message types.
pub mod code {
    /// GET_TDISP_VERSION.
    pub const GET_VERSION: u8 = 0x81;
    /// GET_TDISP_CAPABILITIES.
    pub const GET_CAPABILITIES: u8 = 0x82;
    /// LOCK_INTERFACE_REQUEST.
    pub const LOCK_INTERFACE: u8 = 0x83;
    /// GET_DEVICE_INTERFACE_REPORT.
    pub const GET_DEVICE_INTERFACE_REPORT: u8 = 0x84;
    /// GET_DEVICE_INTERFACE_STATE.
    pub const GET_DEVICE_INTERFACE_STATE: u8 = 0x85;
    /// START_INTERFACE_REQUEST.
    pub const START_INTERFACE: u8 = 0x86;
    /// STOP_INTERFACE_REQUEST.
    pub const STOP_INTERFACE: u8 = 0x87;
    /// BIND_P2P_STREAM_REQUEST.
    pub const BIND_P2P_STREAM: u8 = 0x88;
    /// UNBIND_P2P_STREAM_REQUEST.
    pub const UNBIND_P2P_STREAM: u8 = 0x89;
    /// SET_MMIO_ATTRIBUTE_REQUEST.
    pub const SET_MMIO_ATTRIBUTE: u8 = 0x8A;
    /// VDM_REQUEST.
    pub const VDM: u8 = 0x8B;

    /// TDISP_VERSION.
    pub const VERSION: u8 = 0x01;
    /// TDISP_CAPABILITIES.
    pub const CAPABILITIES: u8 = 0x02;
    /// LOCK_INTERFACE_RESPONSE.
    pub const LOCK_INTERFACE_RSP: u8 = 0x03;
    /// DEVICE_INTERFACE_REPORT.
    pub const DEVICE_INTERFACE_REPORT: u8 = 0x04;
    /// DEVICE_INTERFACE_STATE.
    pub const DEVICE_INTERFACE_STATE: u8 = 0x05;
    /// START_INTERFACE_RESPONSE.
    pub const START_INTERFACE_RSP: u8 = 0x06;
    /// STOP_INTERFACE_RESPONSE.
    pub const STOP_INTERFACE_RSP: u8 = 0x07;
    /// TDISP_ERROR.
    pub const ERROR: u8 = 0x7F;
}

/// LOCK_INTERFACE_REQUEST flags.
pub mod lock_flags {
    /// No firmware update while locked.
    pub const NO_FW_UPDATE: u16 = 0x1;
    /// The system cache line size is 128 bytes.
    pub const SYSTEM_CACHE_LINE_SIZE: u16 = 0x2;
    /// Lock the MSI-X capability, table and PBA.
    pub const LOCK_MSIX: u16 = 0x4;
    /// Bind peer-to-peer streams.
    pub const BIND_P2P: u16 = 0x8;
    /// Redirect all requests (ATS-translated ones included) upstream.
    pub const ALL_REQUEST_REDIRECT: u16 = 0x10;
}

/// MMIO_RANGE attributes (bits 15:0 of the attributes dword).
pub mod range_attr {
    /// The range holds the MSI-X table.
    pub const MSIX_TABLE: u16 = 0x1;
    /// The range holds the MSI-X PBA.
    pub const MSIX_PBA: u16 = 0x2;
    /// Not TEE memory (the host may access it).
    pub const IS_NON_TEE_MEM: u16 = 0x4;
    /// SET_MMIO_ATTRIBUTE may change it.
    pub const IS_MEM_ATTR_UPDATABLE: u16 = 0x8;
}

/// INTERFACE_INFO bits of the interface report.
pub mod interface_info {
    /// No firmware update after LOCK.
    pub const NO_UPDATE_AFTER_LOCK: u16 = 0x1;
    /// The TDI issues DMA requests without PASID.
    pub const DMA_WITHOUT_PASID: u16 = 0x2;
    /// The TDI issues DMA requests with PASID.
    pub const DMA_WITH_PASID: u16 = 0x4;
    /// ATS supported and enabled.
    pub const ATS_SUPPORTED: u16 = 0x8;
    /// PRS supported and enabled.
    pub const PRS_SUPPORTED: u16 = 0x10;
}

/// TDISP_ERROR codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A malformed request or one the TDI cannot honour.
    InvalidRequest = 0x01,
    /// The device cannot answer now.
    Busy = 0x03,
    /// The request is not valid in the TDI's state.
    InvalidInterfaceState = 0x04,
    /// Anything else.
    Unspecified = 0x05,
    /// The message type is not supported.
    UnsupportedRequest = 0x07,
    /// The TDISP version is not supported.
    VersionMismatch = 0x41,
    /// No such interface (function).
    InvalidInterface = 0x101,
    /// START_INTERFACE with the wrong nonce.
    InvalidNonce = 0x102,
    /// No randomness for the nonce.
    InsufficientEntropy = 0x103,
    /// The device's configuration does not allow the request.
    InvalidDeviceConfiguration = 0x104,
}

impl ErrorCode {
    /// From the ERROR_CODE field.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            0x01 => InvalidRequest,
            0x03 => Busy,
            0x04 => InvalidInterfaceState,
            0x05 => Unspecified,
            0x07 => UnsupportedRequest,
            0x41 => VersionMismatch,
            0x101 => InvalidInterface,
            0x102 => InvalidNonce,
            0x103 => InsufficientEntropy,
            0x104 => InvalidDeviceConfiguration,
            _ => return None,
        })
    }
}

/// The state of a TDI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TdiState {
    /// Configuration may change; not trusted.
    ConfigUnlocked = 0,
    /// Configuration locked; waiting for START_INTERFACE.
    ConfigLocked = 1,
    /// Running as a trusted interface.
    Run = 2,
    /// Locked configuration changed or a security fault: left only by STOP.
    Error = 3,
}

impl TdiState {
    /// From the TDI_STATE byte.
    pub fn from_u8(v: u8) -> Option<TdiState> {
        Some(match v {
            0 => TdiState::ConfigUnlocked,
            1 => TdiState::ConfigLocked,
            2 => TdiState::Run,
            3 => TdiState::Error,
            _ => return None,
        })
    }

    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            TdiState::ConfigUnlocked => "CONFIG_UNLOCKED",
            TdiState::ConfigLocked => "CONFIG_LOCKED",
            TdiState::Run => "RUN",
            TdiState::Error => "ERROR",
        }
    }
}

impl std::fmt::Display for TdiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// INTERFACE_ID: which function (TDI) a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct InterfaceId {
    /// FUNCTION_ID: bits 15:0 the function's Requester ID, bits 23:16 the
    /// requester segment, bit 24 "segment valid", bits 31:25 reserved.
    pub function_id: u32,
    /// Reserved.
    pub reserved: u64,
}

impl InterfaceId {
    /// Bit 24 of FUNCTION_ID: the segment field is valid.
    pub const SEGMENT_VALID: u32 = 1 << 24;

    /// The interface of the function with Requester ID `rid` (bus << 8 |
    /// devfn), segment not given.
    pub fn from_rid(rid: u16) -> InterfaceId {
        InterfaceId {
            function_id: u32::from(rid),
            reserved: 0,
        }
    }

    /// The Requester ID.
    pub fn rid(&self) -> u16 {
        self.function_id as u16
    }

    /// The segment, when the segment-valid bit is set.
    pub fn segment(&self) -> Option<u8> {
        (self.function_id & Self::SEGMENT_VALID != 0).then_some((self.function_id >> 16) as u8)
    }
}

impl std::fmt::Display for InterfaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rid = self.rid();
        if let Some(seg) = self.segment() {
            write!(f, "{seg:04x}:")?;
        }
        write!(f, "{:02x}:{:02x}.{}", rid >> 8, (rid >> 3) & 0x1f, rid & 7)
    }
}
