//! NVMe 2.0 definitions used by the controller: register offsets and fields,
//! opcodes, status codes, and the submission/completion queue entry layouts.

/// Controller register offsets in BAR0.
pub mod reg {
    /// Controller Capabilities (64-bit).
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: u64 = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: u64 = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue base (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue base (64-bit).
    pub const ACQ: u64 = 0x30;
    /// First doorbell.
    pub const DOORBELLS: u64 = 0x1000;
}

/// NVMe version 2.0.0 as VS reports it.
pub const VERSION_2_0: u32 = 0x0002_0000;

/// The value written to NSSR to start an NVM subsystem reset ("NVMe").
pub const NSSR_MAGIC: u32 = 0x4E56_4D65;

/// CC fields.
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1 << 0;
    /// I/O command set selected (bits 6:4).
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 7
    }
    /// Memory page size: 2 ^ (12 + MPS).
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xf
    }
    /// Arbitration mechanism (bits 13:11).
    pub fn ams(cc: u32) -> u32 {
        (cc >> 11) & 7
    }
    /// Shutdown notification (bits 15:14).
    pub fn shn(cc: u32) -> u32 {
        (cc >> 14) & 3
    }
    /// I/O SQ entry size, log2 (bits 19:16).
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xf
    }
    /// I/O CQ entry size, log2 (bits 23:20).
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xf
    }
}

/// CSTS bits.
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown status: processing.
    pub const SHST_PROCESSING: u32 = 1 << 2;
    /// Shutdown status: complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
    /// Shutdown status mask.
    pub const SHST_MASK: u32 = 3 << 2;
    /// NVM Subsystem Reset Occurred (RW1C).
    pub const NSSRO: u32 = 1 << 4;
}

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0c;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Doorbell Buffer Config.
    pub const DBBUF_CONFIG: u8 = 0x7c;
    /// Security Send.
    pub const SECURITY_SEND: u8 = 0x81;
    /// Security Receive.
    pub const SECURITY_RECV: u8 = 0x82;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
}

/// Feature identifiers.
pub mod feat {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MGMT: u8 = 0x02;
    /// Temperature Threshold.
    pub const TEMP_THRESH: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WC: u8 = 0x06;
    /// Number of Queues.
    pub const NUM_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const IRQ_COALESCE: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const IRQ_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CFG: u8 = 0x0b;
    /// Timestamp.
    pub const TIMESTAMP: u8 = 0x0e;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE: u8 = 0x0f;
    /// Host Behavior Support.
    pub const HOST_BEHAVIOR: u8 = 0x16;
}

/// Log page identifiers.
pub mod log_id {
    /// Supported Log Pages.
    pub const SUPPORTED: u8 = 0x00;
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FW_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NS: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Vendor specific: trustdev efficiency counters (see
    /// `Ctrl::efficiency_log`).
    pub const VENDOR_EFFICIENCY: u8 = 0xc0;
}

/// Identify CNS values.
pub mod cns {
    /// Identify Namespace (NVM).
    pub const NS: u8 = 0x00;
    /// Identify Controller.
    pub const CTRL: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Namespace.
    pub const CS_NS: u8 = 0x05;
    /// I/O Command Set specific Identify Controller.
    pub const CS_CTRL: u8 = 0x06;
    /// I/O Command Set specific Active Namespace ID list.
    pub const CS_ACTIVE_NS_LIST: u8 = 0x07;
    /// I/O Command Set Independent Identify Namespace.
    pub const CS_INDEP_NS: u8 = 0x08;
    /// Identify I/O Command Set data structure.
    pub const IO_CMD_SETS: u8 = 0x1c;
}

/// Command Set Identifier of the NVM command set.
pub const CSI_NVM: u8 = 0;

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u16 = 0;
    /// Command specific status.
    pub const CMD_SPECIFIC: u16 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u16 = 2;
}

/// A completion status (the 15-bit Status Field without the phase tag):
/// SC in bits 7:0, SCT in 10:8, DNR in bit 14.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

const DNR: u16 = 1 << 14;

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    /// Internal Error.
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status((0x07) | (sct::GENERIC << 8));
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b);
    /// Command Sequence Error.
    pub const SEQUENCE_ERROR: Status = Status::generic(0x0c);
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT: Status = Status::generic(0x0d);
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_COUNT: Status = Status::generic(0x0e);
    /// Data SGL Length Invalid.
    pub const SGL_LENGTH_INVALID: Status = Status::generic(0x0f);
    /// SGL Descriptor Type Invalid.
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = Status::generic(0x13);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    /// Completion Queue Invalid.
    pub const CQ_INVALID: Status = Status::specific(0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QID: Status = Status::specific(0x01);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Status = Status::specific(0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    /// Invalid Interrupt Vector.
    pub const INVALID_VECTOR: Status = Status::specific(0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = Status::specific(0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0d);
    /// Write Fault.
    pub const WRITE_FAULT: Status = Status::media(0x80);
    /// Unrecovered Read Error.
    pub const READ_ERROR: Status = Status::media(0x81);
    /// Compare Failure.
    pub const COMPARE_FAILURE: Status = Status::media(0x85);

    /// A generic status code (Do Not Retry set).
    pub const fn generic(sc: u8) -> Status {
        Status(sc as u16 | (sct::GENERIC << 8) | DNR)
    }

    /// A command-specific status code (Do Not Retry set).
    pub const fn specific(sc: u8) -> Status {
        Status(sc as u16 | (sct::CMD_SPECIFIC << 8) | DNR)
    }

    /// A media error status code (Do Not Retry set).
    pub const fn media(sc: u8) -> Status {
        Status(sc as u16 | (sct::MEDIA << 8) | DNR)
    }

    /// Status Code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type.
    pub fn sct(self) -> u16 {
        (self.0 >> 8) & 7
    }

    /// Whether this is a successful completion.
    pub fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SCT {:#x} SC {:#04x}", self.sct(), self.sc())
    }
}

/// Size of a submission queue entry.
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry.
pub const CQE_SIZE: usize = 16;

/// A decoded submission queue entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Opcode.
    pub opcode: u8,
    /// Fused operation (bits 9:8 of CDW0).
    pub fuse: u8,
    /// PRP or SGL for Data Transfer (bits 15:14 of CDW0).
    pub psdt: u8,
    /// Command identifier.
    pub cid: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP entry 1 (or the first half of SGL1).
    pub prp1: u64,
    /// Data pointer: PRP entry 2 (or the second half of SGL1).
    pub prp2: u64,
    /// Command dwords 10-15.
    pub cdw: [u32; 6],
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

impl Command {
    /// Decodes a 64-byte submission queue entry.
    pub fn parse(b: &[u8; SQE_SIZE]) -> Command {
        let cdw0 = le32(b, 0);
        let mut cdw = [0u32; 6];
        for (i, d) in cdw.iter_mut().enumerate() {
            *d = le32(b, 40 + 4 * i);
        }
        Command {
            opcode: cdw0 as u8,
            fuse: ((cdw0 >> 8) & 3) as u8,
            psdt: ((cdw0 >> 14) & 3) as u8,
            cid: (cdw0 >> 16) as u16,
            nsid: le32(b, 4),
            mptr: le64(b, 16),
            prp1: le64(b, 24),
            prp2: le64(b, 32),
            cdw,
        }
    }

    /// Encodes the entry (tests and host-side tools).
    pub fn to_bytes(&self) -> [u8; SQE_SIZE] {
        let mut b = [0u8; SQE_SIZE];
        let cdw0 = u32::from(self.opcode)
            | (u32::from(self.fuse & 3) << 8)
            | (u32::from(self.psdt & 3) << 14)
            | (u32::from(self.cid) << 16);
        b[0..4].copy_from_slice(&cdw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[16..24].copy_from_slice(&self.mptr.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, d) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }

    /// Command dword 10.
    pub fn cdw10(&self) -> u32 {
        self.cdw[0]
    }
    /// Command dword 11.
    pub fn cdw11(&self) -> u32 {
        self.cdw[1]
    }
    /// Command dword 12.
    pub fn cdw12(&self) -> u32 {
        self.cdw[2]
    }
    /// Command dword 13.
    pub fn cdw13(&self) -> u32 {
        self.cdw[3]
    }
    /// Command dword 14.
    pub fn cdw14(&self) -> u32 {
        self.cdw[4]
    }
    /// Command dword 15.
    pub fn cdw15(&self) -> u32 {
        self.cdw[5]
    }

    /// The 16-byte SGL1 descriptor (the data pointer read as an SGL).
    pub fn sgl1(&self) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&self.prp1.to_le_bytes());
        d[8..].copy_from_slice(&self.prp2.to_le_bytes());
        d
    }
}

/// A completion queue entry as the controller posts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Command specific result (DW0).
    pub dw0: u32,
    /// DW1 (command specific).
    pub dw1: u32,
    /// SQ head pointer.
    pub sq_head: u16,
    /// SQ identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Status field (without the phase tag).
    pub status: u16,
}

impl Completion {
    /// The first 12 bytes (written before the dword carrying the phase tag).
    pub fn head_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b
    }

    /// Dword 3 with the phase tag.
    pub fn dw3(&self, phase: bool) -> u32 {
        u32::from(self.cid) | (u32::from(phase) << 16) | (u32::from(self.status & 0x7fff) << 17)
    }

    /// Decodes a completion entry (host side); returns it and its phase tag.
    pub fn parse(b: &[u8; CQE_SIZE]) -> (Completion, bool) {
        let dw3 = le32(b, 12);
        (
            Completion {
                dw0: le32(b, 0),
                dw1: le32(b, 4),
                sq_head: u16::from_le_bytes([b[8], b[9]]),
                sq_id: u16::from_le_bytes([b[10], b[11]]),
                cid: dw3 as u16,
                status: ((dw3 >> 17) & 0x7fff) as u16,
            },
            dw3 & (1 << 16) != 0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_roundtrip() {
        let c = Command {
            opcode: 0x02,
            fuse: 0,
            psdt: 1,
            cid: 0xbeef,
            nsid: 7,
            mptr: 0x1122,
            prp1: 0x1000,
            prp2: 0x2000_0000_0000,
            cdw: [1, 2, 3, 4, 5, 6],
        };
        assert_eq!(Command::parse(&c.to_bytes()), c);
        assert_eq!(c.cdw15(), 6);
    }

    #[test]
    fn completion_encoding() {
        let c = Completion {
            dw0: 9,
            dw1: 0,
            sq_head: 3,
            sq_id: 1,
            cid: 0x42,
            status: Status::LBA_OUT_OF_RANGE.0,
        };
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&c.head_bytes());
        b[12..].copy_from_slice(&c.dw3(true).to_le_bytes());
        let (d, phase) = Completion::parse(&b);
        assert!(phase);
        assert_eq!(d, c);
        assert_eq!(Status(d.status).sc(), 0x80);
        assert_eq!(Status(d.status).sct(), 0);
        assert!(d.status & (1 << 14) != 0, "DNR");
        assert!(Status::SUCCESS.is_success());
        assert_eq!(Status::INVALID_QID.sct(), 1);
    }
}
