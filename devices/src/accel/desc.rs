//! Work descriptors, completion records and the AES-GCM parameter block
//! (docs/ACCEL.md has the tables). All little-endian. Dependency-free: the
//! guest tool includes this file as its own module.

/// Size of a descriptor in a ring.
pub const DESC_SIZE: usize = 64;
/// Size of a completion record.
pub const COMPLETION_SIZE: usize = 32;
/// Required alignment of a completion record.
pub const COMPLETION_ALIGN: u64 = 32;
/// Size of the AES-GCM parameter block.
pub const AES_PARAMS_SIZE: usize = 0x50;
/// Offset of the tag in the AES-GCM parameter block.
pub const AES_TAG_OFFSET: u64 = 0x40;
/// Largest AAD an AES-GCM descriptor may name.
pub const MAX_AAD: u32 = 64 << 10;
/// SHA-256 digest length.
pub const SHA256_LEN: usize = 32;

/// Operation codes.
pub mod opcode {
    /// No operation (completes at once; tests the queue).
    pub const NOP: u8 = 0x00;
    /// Copy `len` bytes from `src` to `dst` (memmove semantics).
    pub const MEMMOVE: u8 = 0x01;
    /// Fill `len` bytes at `dst` with the 8-byte pattern in `arg2`.
    pub const FILL: u8 = 0x02;
    /// Compare `len` bytes at `src` and `dst`.
    pub const COMPARE: u8 = 0x03;
    /// CRC-32C of `len` bytes at `src`, seeded with `arg`.
    pub const CRC32C: u8 = 0x04;
    /// AES-256-GCM encrypt `src` to `dst`; parameter block at `arg2`.
    pub const AES_GCM_ENCRYPT: u8 = 0x05;
    /// AES-256-GCM decrypt `src` to `dst`; parameter block at `arg2`.
    pub const AES_GCM_DECRYPT: u8 = 0x06;
    /// SHA-256 of `len` bytes at `src`; the 32-byte digest goes to `dst`.
    pub const SHA256: u8 = 0x07;
    /// The highest opcode.
    pub const LAST: u8 = SHA256;

    /// Name, for logs and tools.
    pub fn name(op: u8) -> &'static str {
        match op {
            NOP => "nop",
            MEMMOVE => "memmove",
            FILL => "fill",
            COMPARE => "compare",
            CRC32C => "crc32c",
            AES_GCM_ENCRYPT => "aes-gcm-encrypt",
            AES_GCM_DECRYPT => "aes-gcm-decrypt",
            SHA256 => "sha256",
            _ => "unknown",
        }
    }
}

/// Descriptor flags.
pub mod flags {
    /// Write a completion record to `completion`.
    pub const COMPLETION: u8 = 1 << 0;
    /// Raise the queue's interrupt once this descriptor completes (if the
    /// queue has interrupts enabled).
    pub const INTERRUPT: u8 = 1 << 1;
    /// Addresses are in the address space of `pasid` (else untranslated).
    pub const PASID: u8 = 1 << 2;
    /// Privileged-mode requests (with `PASID`).
    pub const PRIV: u8 = 1 << 3;
    /// Resolve page faults with page requests (PRI) and wait, instead of
    /// completing with a page fault.
    pub const BLOCK_ON_FAULT: u8 = 1 << 4;
    /// Every defined flag.
    pub const ALL: u8 = COMPLETION | INTERRUPT | PASID | PRIV | BLOCK_ON_FAULT;
}

/// Completion status codes.
pub mod status {
    /// Not written yet (software zeroes records before submitting).
    pub const PENDING: u8 = 0x00;
    /// The operation completed.
    pub const SUCCESS: u8 = 0x01;
    /// Unknown opcode.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Unknown flags, PRIV without PASID, or a reserved field set.
    pub const BAD_FLAGS: u8 = 0x11;
    /// Length zero where data is required, or above the device maximum.
    pub const BAD_LENGTH: u8 = 0x12;
    /// Buffers overlap where the result would be ambiguous.
    pub const OVERLAP: u8 = 0x13;
    /// An address outside client memory (or an address range that wraps).
    pub const ADDRESS_FAULT: u8 = 0x14;
    /// A page not present that could not be made present.
    pub const PAGE_FAULT: u8 = 0x15;
    /// Access not permitted (e.g. a write to a read-only page).
    pub const PERMISSION: u8 = 0x16;
    /// The PASID is out of range or not bound on the host.
    pub const PASID_INVALID: u8 = 0x17;
    /// PASID-tagged requests (or privileged mode) are not enabled.
    pub const PASID_DISABLED: u8 = 0x18;
    /// The client offers no path for PASID-tagged requests.
    pub const NO_PASID_PATH: u8 = 0x19;
    /// AES-GCM authentication failed (decrypt): nothing was written.
    pub const AUTH_FAIL: u8 = 0x1a;
    /// Aborted by a queue or device reset.
    pub const ABORTED: u8 = 0x1b;
    /// The client did not answer a request of the device.
    pub const TRANSPORT: u8 = 0x1c;

    /// Name, for logs and tools.
    pub fn name(s: u8) -> &'static str {
        match s {
            PENDING => "pending",
            SUCCESS => "success",
            BAD_OPCODE => "bad opcode",
            BAD_FLAGS => "bad flags or reserved field",
            BAD_LENGTH => "bad length",
            OVERLAP => "overlapping buffers",
            ADDRESS_FAULT => "address fault",
            PAGE_FAULT => "page fault",
            PERMISSION => "permission fault",
            PASID_INVALID => "PASID invalid",
            PASID_DISABLED => "PASID not enabled",
            NO_PASID_PATH => "no PASID path",
            AUTH_FAIL => "authentication failure",
            ABORTED => "aborted",
            TRANSPORT => "transport error",
            _ => "unknown status",
        }
    }
}

/// The operand a fault hit (completion record `fault_info` bits 3:1).
pub mod operand {
    /// Source buffer.
    pub const SRC: u8 = 0;
    /// Destination buffer.
    pub const DST: u8 = 1;
    /// AES-GCM parameter block.
    pub const PARAMS: u8 = 2;
    /// AES-GCM additional authenticated data.
    pub const AAD: u8 = 3;
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Operation.
    pub opcode: u8,
    /// [`flags`].
    pub flags: u8,
    /// Reserved (must be 0).
    pub rsvd0: u16,
    /// PASID (with [`flags::PASID`]).
    pub pasid: u32,
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Bytes.
    pub len: u32,
    /// 32-bit argument (CRC seed).
    pub arg: u32,
    /// 64-bit argument (fill pattern, AES parameter block address).
    pub arg2: u64,
    /// Completion record address.
    pub completion: u64,
    /// Software's tag, echoed in the completion record.
    pub tag: u64,
    /// Reserved (must be 0).
    pub rsvd1: u64,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl Descriptor {
    /// Decodes 64 bytes.
    pub fn decode(b: &[u8; DESC_SIZE]) -> Descriptor {
        Descriptor {
            opcode: b[0],
            flags: b[1],
            rsvd0: u16_at(b, 2),
            pasid: u32_at(b, 4),
            src: u64_at(b, 8),
            dst: u64_at(b, 16),
            len: u32_at(b, 24),
            arg: u32_at(b, 28),
            arg2: u64_at(b, 32),
            completion: u64_at(b, 40),
            tag: u64_at(b, 48),
            rsvd1: u64_at(b, 56),
        }
    }

    /// Encodes 64 bytes (drivers and tests).
    pub fn encode(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.rsvd0.to_le_bytes());
        b[4..8].copy_from_slice(&self.pasid.to_le_bytes());
        b[8..16].copy_from_slice(&self.src.to_le_bytes());
        b[16..24].copy_from_slice(&self.dst.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..32].copy_from_slice(&self.arg.to_le_bytes());
        b[32..40].copy_from_slice(&self.arg2.to_le_bytes());
        b[40..48].copy_from_slice(&self.completion.to_le_bytes());
        b[48..56].copy_from_slice(&self.tag.to_le_bytes());
        b[56..64].copy_from_slice(&self.rsvd1.to_le_bytes());
        b
    }
}

/// A completion record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// [`status`].
    pub status: u8,
    /// Bit 0: the faulting access was a write; bits 3:1: [`operand`].
    pub fault_info: u8,
    /// Bytes processed before a fault (or the offset of the first
    /// difference for COMPARE).
    pub bytes_completed: u32,
    /// CRC-32C value; COMPARE: 0 equal, 1 different.
    pub result: u64,
    /// Faulting address (in the descriptor's address space).
    pub fault_addr: u64,
    /// The descriptor's tag.
    pub tag: u64,
}

impl Completion {
    /// Encodes 32 bytes.
    pub fn encode(&self) -> [u8; COMPLETION_SIZE] {
        let mut b = [0u8; COMPLETION_SIZE];
        b[0] = self.status;
        b[1] = self.fault_info;
        b[4..8].copy_from_slice(&self.bytes_completed.to_le_bytes());
        b[8..16].copy_from_slice(&self.result.to_le_bytes());
        b[16..24].copy_from_slice(&self.fault_addr.to_le_bytes());
        b[24..32].copy_from_slice(&self.tag.to_le_bytes());
        b
    }

    /// Decodes 32 bytes (drivers and tests).
    pub fn decode(b: &[u8; COMPLETION_SIZE]) -> Completion {
        Completion {
            status: b[0],
            fault_info: b[1],
            bytes_completed: u32_at(b, 4),
            result: u64_at(b, 8),
            fault_addr: u64_at(b, 16),
            tag: u64_at(b, 24),
        }
    }

    /// The faulting operand ([`operand`]).
    pub fn fault_operand(&self) -> u8 {
        (self.fault_info >> 1) & 0x7
    }

    /// Whether the faulting access was a write.
    pub fn fault_write(&self) -> bool {
        self.fault_info & 1 != 0
    }
}

/// The AES-256-GCM parameter block (80 bytes at `arg2`): key, nonce, AAD
/// location; the tag is written (encrypt) or read (decrypt) at +0x40.
#[derive(Clone, PartialEq, Eq)]
pub struct AesParams {
    /// 256-bit key.
    pub key: [u8; 32],
    /// 96-bit nonce.
    pub nonce: [u8; 12],
    /// AAD length.
    pub aad_len: u32,
    /// AAD address (same address space as the descriptor's buffers).
    pub aad_addr: u64,
    /// Reserved (0).
    pub rsvd: u64,
    /// Tag (decrypt input).
    pub tag: [u8; 16],
}

impl std::fmt::Debug for AesParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("AesParams")
            .field("aad_len", &self.aad_len)
            .field("aad_addr", &self.aad_addr)
            .finish_non_exhaustive()
    }
}

impl AesParams {
    /// Decodes the block.
    pub fn decode(b: &[u8; AES_PARAMS_SIZE]) -> AesParams {
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[0..32]);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[32..44]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&b[64..80]);
        AesParams {
            key,
            nonce,
            aad_len: u32_at(b, 44),
            aad_addr: u64_at(b, 48),
            rsvd: u64_at(b, 56),
            tag,
        }
    }

    /// Encodes the block (drivers and tests).
    pub fn encode(&self) -> [u8; AES_PARAMS_SIZE] {
        let mut b = [0u8; AES_PARAMS_SIZE];
        b[0..32].copy_from_slice(&self.key);
        b[32..44].copy_from_slice(&self.nonce);
        b[44..48].copy_from_slice(&self.aad_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.aad_addr.to_le_bytes());
        b[56..64].copy_from_slice(&self.rsvd.to_le_bytes());
        b[64..80].copy_from_slice(&self.tag);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips() {
        let d = Descriptor {
            opcode: opcode::CRC32C,
            flags: flags::COMPLETION | flags::PASID,
            pasid: 7,
            src: 0x1000,
            dst: 0x2000,
            len: 99,
            arg: 0xdead,
            arg2: 0x55,
            completion: 0x3000,
            tag: 42,
            ..Default::default()
        };
        assert_eq!(Descriptor::decode(&d.encode()), d);
        let c = Completion {
            status: status::PAGE_FAULT,
            fault_info: (operand::DST << 1) | 1,
            bytes_completed: 4096,
            result: 1,
            fault_addr: 0x7000,
            tag: 9,
        };
        assert_eq!(Completion::decode(&c.encode()), c);
        assert_eq!(c.fault_operand(), operand::DST);
        assert!(c.fault_write());
        let p = AesParams {
            key: [1; 32],
            nonce: [2; 12],
            aad_len: 5,
            aad_addr: 0x9000,
            rsvd: 0,
            tag: [3; 16],
        };
        assert_eq!(AesParams::decode(&p.encode()), p);
        assert!(!format!("{p:?}").contains("1, 1"), "no key in Debug");
    }
}
