//! PCIe IDE_KM (PCIe Base 6.x §6.33.3): the key-management protocol a TSM
//! uses, inside a secured SPDM session, to program the AES-256-GCM keys of a
//! device's IDE streams. It travels as PCI-SIG vendor-defined protocol 0
//! ([`crate::vendor::PCI_PROTOCOL_IDE_KM`]) in VENDOR_DEFINED_REQUEST /
//! VENDOR_DEFINED_RESPONSE.
//!
//! - [`codec`]: the seven data objects (QUERY/QUERY_RESP, KEY_PROG/KP_ACK,
//!   K_SET_GO/K_SET_STOP/K_GOSTOP_ACK) and their byte layout.
//! - [`responder`]: a [`crate::vendor::VendorHandler`] answering IDE_KM for a
//!   device model behind the [`responder::IdeKmBackend`] trait.
//! - [`requester`]: IDE_KM requests from a [`crate::Requester`] in a session.
//! - [`regs`]: the IDE capability's register layout and a driver of a
//!   port's stream registers through configuration space.
//! - [`host`]: the TSM side of IDE setup in one place ([`IdeHost`]): the
//!   DOE mailbox, the SPDM session, IDE_KM and the stream registers of one
//!   function, used by the guest tool, host tests and benchmarks.
//!
//! # Key and IFV byte order (the interop trap)
//!
//! KEY_PROG carries the key as eight dwords and the initial invocation field
//! (IFV) as two, each dword little-endian on the wire, most significant
//! dword first: wire dword 0 is Key DW7 = AES key bytes 0..3 (byte 0 in bits
//! 31:24), ..., wire dword 7 is Key DW0 = key bytes 28..31; then IFV DW1
//! (IFV bits 63:32) and IFV DW0 (bits 31:0). This is the layout of PCIe's
//! IDE_KM figures as intel/tee-io-validator documents it
//! (doc/key_byte_order.md), what DMTF libspdm's requester sends from its
//! `uint32_t key[8], iv[2]` buffer (`iv = {0, 1}` is IFV 1) and what spdm-rs
//! encodes (it reverses its in-memory arrays). Implementations differ only
//! in how they name the dwords in memory; [`IdeKey`] holds the AES-order key
//! bytes and the IFV as a number, and converts at the wire.

pub mod codec;
pub mod host;
pub mod regs;
pub mod requester;
pub mod responder;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use codec::{DecodeError, KpAckStatus, QueryResp, Request, Response};
pub use host::{IdeHost, IdeHostError};
pub use requester::IdeKmError;
pub use responder::{IdeKmBackend, IdeKmRefusal, IdeKmResponder};

/// IDE_KM object IDs (second byte of the vendor payload).
pub mod object {
    /// QUERY.
    pub const QUERY: u8 = 0x00;
    /// QUERY_RESP.
    pub const QUERY_RESP: u8 = 0x01;
    /// KEY_PROG.
    pub const KEY_PROG: u8 = 0x02;
    /// KP_ACK.
    pub const KP_ACK: u8 = 0x03;
    /// K_SET_GO.
    pub const K_SET_GO: u8 = 0x04;
    /// K_SET_STOP.
    pub const K_SET_STOP: u8 = 0x05;
    /// K_GOSTOP_ACK.
    pub const K_GOSTOP_ACK: u8 = 0x06;
}

/// Length of the AES-256 key.
pub const KEY_LEN: usize = 32;
/// Length of KEY + IFV on the wire.
pub const KEY_WIRE_LEN: usize = 40;

/// Key set K0 or K1 (bit 0 of the KeySubStream byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeySet {
    /// K0.
    K0 = 0,
    /// K1.
    K1 = 1,
}

impl KeySet {
    /// Both key sets.
    pub const ALL: [KeySet; 2] = [KeySet::K0, KeySet::K1];
    /// The other key set.
    pub fn other(self) -> KeySet {
        match self {
            KeySet::K0 => KeySet::K1,
            KeySet::K1 => KeySet::K0,
        }
    }
    /// From the K bit.
    pub fn from_bit(bit: bool) -> KeySet {
        if bit {
            KeySet::K1
        } else {
            KeySet::K0
        }
    }
}

/// Direction of a key, seen from the port being programmed (bit 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyDirection {
    /// Receive.
    Rx = 0,
    /// Transmit.
    Tx = 1,
}

impl KeyDirection {
    /// Both directions.
    pub const ALL: [KeyDirection; 2] = [KeyDirection::Rx, KeyDirection::Tx];
    /// The partner's direction for the same traffic.
    pub fn opposite(self) -> KeyDirection {
        match self {
            KeyDirection::Rx => KeyDirection::Tx,
            KeyDirection::Tx => KeyDirection::Rx,
        }
    }
}

/// IDE sub-stream (bits 7:4 of the KeySubStream byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubStream {
    /// Posted requests (memory writes, messages).
    Posted = 0,
    /// Non-posted requests (memory reads, ...).
    NonPosted = 1,
    /// Completions.
    Completion = 2,
}

impl SubStream {
    /// The three sub-streams.
    pub const ALL: [SubStream; 3] = [
        SubStream::Posted,
        SubStream::NonPosted,
        SubStream::Completion,
    ];
    /// From the 4-bit field; `None` for the reserved values 3..=15.
    pub fn from_bits(v: u8) -> Option<SubStream> {
        match v {
            0 => Some(SubStream::Posted),
            1 => Some(SubStream::NonPosted),
            2 => Some(SubStream::Completion),
            _ => None,
        }
    }
    /// Short name (PR, NPR, CPL).
    pub fn name(self) -> &'static str {
        match self {
            SubStream::Posted => "PR",
            SubStream::NonPosted => "NPR",
            SubStream::Completion => "CPL",
        }
    }
}

/// One key slot of a stream: key set × direction × sub-stream (the
/// KeySubStream byte of KEY_PROG, K_SET_GO and K_SET_STOP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeySlot {
    /// Sub-stream.
    pub sub_stream: SubStream,
    /// Direction.
    pub direction: KeyDirection,
    /// Key set.
    pub set: KeySet,
}

impl KeySlot {
    /// Number of slots per stream.
    pub const COUNT: usize = 12;

    /// A slot.
    pub fn new(set: KeySet, direction: KeyDirection, sub_stream: SubStream) -> Self {
        KeySlot {
            sub_stream,
            direction,
            set,
        }
    }

    /// Decodes the KeySubStream byte; `Err(value)` when bits 7:4 hold a
    /// reserved sub-stream value. Bits 3:2 are reserved and ignored.
    pub fn from_byte(b: u8) -> Result<Self, u8> {
        let sub_stream = SubStream::from_bits(b >> 4).ok_or(b >> 4)?;
        Ok(KeySlot {
            sub_stream,
            direction: if b & 0x2 != 0 {
                KeyDirection::Tx
            } else {
                KeyDirection::Rx
            },
            set: KeySet::from_bit(b & 0x1 != 0),
        })
    }

    /// The KeySubStream byte.
    pub fn to_byte(self) -> u8 {
        ((self.sub_stream as u8) << 4) | ((self.direction as u8) << 1) | self.set as u8
    }

    /// Dense index 0..12 (sub-stream major, then direction, then key set).
    pub fn index(self) -> usize {
        (self.sub_stream as usize) * 4 + (self.direction as usize) * 2 + self.set as usize
    }

    /// Every slot, in [`KeySlot::index`] order.
    pub fn all() -> impl Iterator<Item = KeySlot> {
        SubStream::ALL.into_iter().flat_map(|s| {
            KeyDirection::ALL
                .into_iter()
                .flat_map(move |d| KeySet::ALL.into_iter().map(move |k| KeySlot::new(k, d, s)))
        })
    }

    /// Human-readable name, e.g. `K0|RX|PR` (the spelling DMTF's tools log).
    pub fn name(self) -> String {
        format!(
            "K{}|{}|{}",
            self.set as u8,
            match self.direction {
                KeyDirection::Rx => "RX",
                KeyDirection::Tx => "TX",
            },
            self.sub_stream.name()
        )
    }
}

/// An IDE key as programmed by KEY_PROG: the AES-256 key (bytes in AES
/// order, byte 0 first) and the initial value of the 64-bit invocation field
/// of the IV. Zeroized on drop; `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct IdeKey {
    key: [u8; KEY_LEN],
    ifv: u64,
}

impl std::fmt::Debug for IdeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdeKey")
            .field("key", &"<redacted>")
            .field("ifv", &self.ifv)
            .finish()
    }
}

impl IdeKey {
    /// A key from AES-order bytes and an IFV.
    pub fn new(key: [u8; KEY_LEN], ifv: u64) -> Self {
        IdeKey { key, ifv }
    }

    /// The AES-256 key bytes.
    pub fn key_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The initial invocation field value.
    pub fn ifv(&self) -> u64 {
        self.ifv
    }

    /// Decodes KEY (8 dwords) + IFV (2 dwords) as KEY_PROG carries them (see
    /// the module documentation).
    pub fn from_wire(wire: &[u8; KEY_WIRE_LEN]) -> Self {
        let mut key = [0u8; KEY_LEN];
        for (i, dw) in wire[..KEY_LEN].chunks_exact(4).enumerate() {
            // Wire dword i (little-endian) is Key DW(7-i), whose bits 31:24
            // are AES key byte 4i.
            let v = u32::from_le_bytes([dw[0], dw[1], dw[2], dw[3]]);
            key[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        let hi = u32::from_le_bytes([wire[32], wire[33], wire[34], wire[35]]);
        let lo = u32::from_le_bytes([wire[36], wire[37], wire[38], wire[39]]);
        IdeKey {
            key,
            ifv: (u64::from(hi) << 32) | u64::from(lo),
        }
    }

    /// Encodes KEY + IFV for KEY_PROG.
    pub fn to_wire(&self) -> Zeroizing<[u8; KEY_WIRE_LEN]> {
        let mut w = Zeroizing::new([0u8; KEY_WIRE_LEN]);
        for (i, k) in self.key.chunks_exact(4).enumerate() {
            let v = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
            w[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        w[32..36].copy_from_slice(&((self.ifv >> 32) as u32).to_le_bytes());
        w[36..40].copy_from_slice(&(self.ifv as u32).to_le_bytes());
        w
    }

    /// The 96-bit AES-GCM IV of the TLP with invocation field `invocation`:
    /// the 32-bit fixed field (0 for PCIe IDE) followed by the invocation
    /// field, most significant byte first.
    pub fn iv(invocation: u64) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[4..].copy_from_slice(&invocation.to_be_bytes());
        iv
    }

    /// A fresh key from the operating system's random source, with a
    /// random IFV below 2^32 (so the 64-bit counter never wraps).
    pub fn random() -> Self {
        use rand_core::{OsRng, RngCore};
        let mut key = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut key);
        let k = IdeKey {
            key,
            ifv: u64::from(OsRng.next_u32()),
        };
        key.zeroize();
        k
    }

    /// **Test keys, not secret**: the key of `slot` of Stream ID `stream_id`
    /// derived from `seed` alone (SHA-512 of a label, the seed, the Stream
    /// ID and the KeySubStream byte: key = bytes 0..32, IFV = bytes 32..36),
    /// so a test that knows the seed can decrypt a recorded link trace.
    /// Anyone who knows the seed can; tools offer it only behind an option
    /// named as insecure.
    pub fn test_key(seed: &str, stream_id: u8, slot: KeySlot) -> Self {
        use sha2::{Digest, Sha512};
        let mut h = Sha512::new();
        h.update(b"trustdev IDE test key v1\0");
        h.update(seed.as_bytes());
        h.update([0, stream_id, slot.to_byte()]);
        let d = h.finalize();
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&d[..KEY_LEN]);
        let k = IdeKey {
            key,
            ifv: u64::from(u32::from_le_bytes([d[32], d[33], d[34], d[35]])),
        };
        key.zeroize();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sub_stream_byte() {
        for s in KeySlot::all() {
            assert_eq!(KeySlot::from_byte(s.to_byte()), Ok(s));
        }
        // DMTF's constants: K0|RX|PR = 0x00, K0|TX|CPL = 0x22, K1|TX|NPR = 0x13.
        assert_eq!(
            KeySlot::new(KeySet::K0, KeyDirection::Tx, SubStream::Completion).to_byte(),
            0x22
        );
        assert_eq!(
            KeySlot::new(KeySet::K1, KeyDirection::Tx, SubStream::NonPosted).to_byte(),
            0x13
        );
        assert_eq!(KeySlot::from_byte(0x30), Err(3));
        // Reserved bits 3:2 are ignored.
        assert_eq!(KeySlot::from_byte(0x0c).map(|s| s.to_byte()), Ok(0x00));
        let idx: Vec<usize> = KeySlot::all().map(|s| s.index()).collect();
        assert_eq!(idx, (0..KeySlot::COUNT).collect::<Vec<_>>());
    }

    /// The example of intel/tee-io-validator doc/key_byte_order.md: AES key
    /// df 25 41 52 ... 27 20 and IV 00..01 as the IDE_KM dwords
    /// Key_DW7 = 0xdf254152 ... Key_DW0 = 0x9ccd2720, IFV_DW1 = 0, IFV_DW0 = 1.
    #[test]
    fn key_wire_order_matches_tee_io_validator() {
        let aes: [u8; 32] = [
            0xdf, 0x25, 0x41, 0x52, 0x05, 0x6e, 0x02, 0xe0, 0xef, 0x8b, 0x7f, 0xeb, 0x97, 0x39,
            0xd4, 0xd9, 0x6a, 0x4e, 0xb8, 0x01, 0x03, 0x24, 0x1d, 0xf7, 0xcd, 0x5e, 0x24, 0xb4,
            0x9c, 0xcd, 0x27, 0x20,
        ];
        let dwords: [u32; 10] = [
            0xdf254152, 0x056e02e0, 0xef8b7feb, 0x9739d4d9, 0x6a4eb801, 0x03241df7, 0xcd5e24b4,
            0x9ccd2720, 0, 1,
        ];
        let mut wire = [0u8; KEY_WIRE_LEN];
        for (i, d) in dwords.iter().enumerate() {
            wire[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        let k = IdeKey::from_wire(&wire);
        assert_eq!(k.key_bytes(), &aes);
        assert_eq!(k.ifv(), 1);
        assert_eq!(*k.to_wire(), wire);
        assert_eq!(
            IdeKey::iv(k.ifv()),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            "PCIe IV: fixed field 0, invocation 1"
        );
        assert!(
            !format!("{k:?}").contains("df"),
            "Debug must not print the key"
        );
    }
}
