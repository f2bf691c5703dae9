//! The TLP framing the link model puts on the wire (non-Flit mode):
//!
//! ```text
//! IDE TLP = IDE prefix (1 DW) | header (3 or 4 DW) | payload (n DW, encrypted) | MAC (3 DW)
//! ```
//!
//! - IDE prefix, byte 0 first: `0x92` (Fmt 100b: TLP prefix; Type 1_0010b:
//!   End-End prefix "IDE"), then `M K T P | Sub-stream[2:0] | 0` (M: a MAC
//!   follows, always 1 here, no aggregation; K: key set; T: TEE originator;
//!   P: PCRC, 0), then the Stream ID, then a reserved byte.
//! - Headers are PCIe's: MWr/MRd with 32-bit addresses below 4 GiB and
//!   64-bit ones above, CplD (Successful Completion) with Byte Count and
//!   Lower Address. TC 0, no attributes, 8-bit tags.
//! - The MAC authenticates the prefix and the header (the AAD, in wire
//!   order) and the payload; the whole payload is encrypted, no header byte
//!   is (no partial header encryption).
//! - Payloads are dword-aligned: bytes outside First/Last Byte Enable (or
//!   before a completion's Lower Address) are zero.
//! - Writes are split at Max_Payload_Size boundaries; reads are requested
//!   in Max_Read_Request_Size pieces and completed in Max_Payload_Size
//!   pieces (both sizes are powers of two, so no TLP crosses 4 KiB).

use spdm_responder::idekm::{KeySet, SubStream};

/// Prefix byte 0: Fmt 100b, Type 1_0010b (End-End TLP prefix: IDE).
pub const PREFIX_TYPE: u8 = 0x92;

/// The IDE TLP prefix.
pub fn ide_prefix(set: KeySet, tee: bool, ss: SubStream, stream_id: u8) -> [u8; 4] {
    let b1 = 0x80 | ((set as u8) << 6) | (u8::from(tee) << 5) | ((ss as u8) << 1);
    [PREFIX_TYPE, b1, stream_id, 0]
}

/// Decoded prefix fields: (key set, T, sub-stream, stream ID).
pub fn parse_prefix(p: &[u8; 4]) -> Option<(KeySet, bool, SubStream, u8)> {
    if p[0] != PREFIX_TYPE || p[1] & 0x80 == 0 {
        return None;
    }
    Some((
        KeySet::from_bit(p[1] & 0x40 != 0),
        p[1] & 0x20 != 0,
        SubStream::from_bits((p[1] >> 1) & 0x7)?,
        p[2],
    ))
}

/// A TLP header (3 or 4 dwords) in wire byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; 16],
    len: usize,
}

impl Header {
    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    /// As dwords with header byte 0 in bits 31:24 (the AER Header Log form).
    pub fn log_dwords(&self) -> [u32; 4] {
        let mut d = [0u32; 4];
        for (i, c) in self.as_bytes().chunks_exact(4).enumerate() {
            d[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        d
    }
}

/// The dword-aligned span of `[addr, addr+len)`: (first DW address, DW
/// count, First BE, Last BE).
pub fn dw_span(addr: u64, len: usize) -> (u64, usize, u8, u8) {
    let start = addr & !3;
    let end = (addr + len as u64 + 3) & !3;
    let dws = ((end - start) / 4) as usize;
    let first = (0xfu8 << (addr & 3)) & 0xf;
    let tail = ((addr + len as u64) & 3) as u8;
    let last = if tail == 0 { 0xf } else { (1u8 << tail) - 1 };
    if dws == 1 {
        (start, 1, first & last, 0)
    } else {
        (start, dws, first, last)
    }
}

fn dw0(fmt: u8, ty: u8, dws: usize) -> [u8; 4] {
    let l = (dws & 0x3ff) as u16; // 1024 DW encodes as 0
    [(fmt << 5) | ty, 0, (l >> 8) as u8, l as u8]
}

/// A memory request header (MWr when `write`, else MRd) for `[addr, addr+len)`.
pub fn mem_request(write: bool, addr: u64, len: usize, requester: u16, tag: u8) -> Header {
    let (_, dws, fbe, lbe) = dw_span(addr, len);
    let wide = addr >> 32 != 0;
    let fmt = match (write, wide) {
        (false, false) => 0b000,
        (false, true) => 0b001,
        (true, false) => 0b010,
        (true, true) => 0b011,
    };
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&dw0(fmt, 0b00000, dws));
    b[4..6].copy_from_slice(&requester.to_be_bytes());
    b[6] = tag;
    b[7] = (lbe << 4) | fbe;
    let len = if wide {
        b[8..12].copy_from_slice(&((addr >> 32) as u32).to_be_bytes());
        b[12..16].copy_from_slice(&((addr as u32) & !3).to_be_bytes());
        16
    } else {
        b[8..12].copy_from_slice(&((addr as u32) & !3).to_be_bytes());
        12
    };
    Header { bytes: b, len }
}

/// A Completion with Data header: `dws` payload dwords, `byte_count`
/// bytes remaining (this completion's included), first byte at `addr`.
pub fn completion(
    completer: u16,
    requester: u16,
    tag: u8,
    addr: u64,
    byte_count: usize,
    dws: usize,
) -> Header {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&dw0(0b010, 0b01010, dws));
    b[4..6].copy_from_slice(&completer.to_be_bytes());
    let bc = (byte_count & 0xfff) as u16; // 4096 encodes as 0
    b[6] = (bc >> 8) as u8; // Status 000b (SC), BCM 0
    b[7] = bc as u8;
    b[8..10].copy_from_slice(&requester.to_be_bytes());
    b[10] = tag;
    b[11] = (addr & 0x7f) as u8;
    Header { bytes: b, len: 12 }
}

/// Splits `[addr, addr+len)` at multiples of `max` (a power of two).
pub fn split(addr: u64, len: usize, max: usize) -> impl Iterator<Item = (u64, usize)> {
    let end = addr + len as u64;
    let max = max as u64;
    let mut a = addr;
    std::iter::from_fn(move || {
        if a >= end {
            return None;
        }
        let next = ((a / max) + 1) * max;
        let n = next.min(end) - a;
        let r = (a, n as usize);
        a += n;
        Some(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_byte_enables() {
        assert_eq!(dw_span(0x1000, 4), (0x1000, 1, 0xf, 0));
        assert_eq!(dw_span(0x1001, 2), (0x1000, 1, 0x6, 0));
        assert_eq!(dw_span(0x1002, 4), (0x1000, 2, 0xc, 0x3));
        assert_eq!(dw_span(0x1000, 256), (0x1000, 64, 0xf, 0xf));
    }

    #[test]
    fn headers() {
        let h = mem_request(true, 0x1_2345_6780, 128, 0x0100, 7);
        assert_eq!(
            h.as_bytes(),
            [0x60, 0, 0, 32, 0x01, 0x00, 7, 0xff, 0, 0, 0, 1, 0x23, 0x45, 0x67, 0x80]
        );
        let h = mem_request(false, 0x8000_0000, 4096, 0, 1);
        assert_eq!(h.as_bytes()[..4], [0x00, 0, 0, 0], "1024 DW encodes as 0");
        assert_eq!(h.as_bytes().len(), 12);
        let c = completion(0x0100, 0, 9, 0x1044, 60, 15);
        assert_eq!(c.as_bytes(), [0x4a, 0, 0, 15, 1, 0, 0, 60, 0, 0, 9, 0x44]);
        assert_eq!(c.log_dwords()[0], 0x4a00_000f);
        let p = ide_prefix(KeySet::K1, false, SubStream::Completion, 5);
        assert_eq!(p, [0x92, 0xc4, 5, 0]);
        assert_eq!(
            parse_prefix(&p),
            Some((KeySet::K1, false, SubStream::Completion, 5))
        );
    }

    #[test]
    fn splitting() {
        let v: Vec<_> = split(0x1f80, 0x200, 256).collect();
        assert_eq!(v, [(0x1f80, 0x80), (0x2000, 0x100), (0x2100, 0x80)]);
        assert_eq!(split(0, 0, 128).count(), 0);
    }
}
