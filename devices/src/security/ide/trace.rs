//! `--ide-trace FILE`: the wire view of the protected link as a classic
//! pcap file (little-endian, microsecond timestamps, link type 147,
//! LINKTYPE_USER0). Every packet is one IDE TLP as it crossed the modelled
//! link, after a 24-byte record header:
//!
//! ```text
//! off size
//!  0   1   record version (1)
//!  1   1   direction: 0 device -> host (upstream), 1 host -> device (downstream)
//!  2   1   stream kind: 0 selective, 1 link
//!  3   1   stream register block index
//!  4   1   Stream ID
//!  5   1   sub-stream: 0 PR (posted), 1 NPR (non-posted), 2 CPL (completion)
//!  6   1   key set: 0 K0, 1 K1 (the prefix's K bit)
//!  7   1   result: 0 verified and delivered, 1 integrity check failed (dropped)
//!  8   8   invocation field of the IV (u64 LE); IV = 00000000h || this, big-endian
//! 16   2   prefix + header bytes (u16 LE): 16 or 20
//! 18   2   payload bytes (u16 LE), a multiple of 4
//! 20   4   reserved (0)
//! 24   -   the TLP: IDE prefix (4) | header (12/16) | ciphertext payload | MAC (12)
//! ```
//!
//! The TLP bytes are in wire order (header dword bytes most significant
//! first). Decrypt a record with AES-256-GCM, the key programmed for its
//! (Stream ID, sub-stream, key set, transmitting direction), the IV above,
//! AAD = prefix | header, and a 96-bit tag = the MAC. No key is ever written.
//! The file is created new (an existing file is never overwritten), mode 0600.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// pcap link type of the records (LINKTYPE_USER0).
pub const LINKTYPE: u32 = 147;
/// Record header length.
pub const RECORD_HEADER_LEN: usize = 24;
/// MAC length.
pub const MAC_LEN: usize = 12;

/// Direction of a TLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Device to host.
    Upstream = 0,
    /// Host to device.
    Downstream = 1,
}

/// One recorded TLP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Direction.
    pub flow: Flow,
    /// 0 selective, 1 link.
    pub kind: u8,
    /// Register block index.
    pub index: u8,
    /// Stream ID.
    pub stream_id: u8,
    /// Sub-stream (0 PR, 1 NPR, 2 CPL).
    pub sub_stream: u8,
    /// Key set (0 or 1).
    pub key_set: u8,
    /// False when the receiver's integrity check failed.
    pub verified: bool,
    /// Invocation field of the IV.
    pub invocation: u64,
    /// IDE prefix + header.
    pub header: Vec<u8>,
    /// Ciphertext payload.
    pub payload: Vec<u8>,
    /// MAC.
    pub mac: [u8; MAC_LEN],
}

impl TraceRecord {
    /// The record as pcap packet data.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            RECORD_HEADER_LEN + self.header.len() + self.payload.len() + MAC_LEN,
        );
        v.extend_from_slice(&[
            1,
            self.flow as u8,
            self.kind,
            self.index,
            self.stream_id,
            self.sub_stream,
            self.key_set,
            u8::from(!self.verified),
        ]);
        v.extend_from_slice(&self.invocation.to_le_bytes());
        v.extend_from_slice(&(self.header.len() as u16).to_le_bytes());
        v.extend_from_slice(&(self.payload.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&self.header);
        v.extend_from_slice(&self.payload);
        v.extend_from_slice(&self.mac);
        v
    }

    /// Parses pcap packet data.
    pub fn decode(d: &[u8]) -> Option<TraceRecord> {
        if d.len() < RECORD_HEADER_LEN || d[0] != 1 {
            return None;
        }
        let hl = u16::from_le_bytes([d[16], d[17]]) as usize;
        let pl = u16::from_le_bytes([d[18], d[19]]) as usize;
        let body = &d[RECORD_HEADER_LEN..];
        if body.len() != hl + pl + MAC_LEN {
            return None;
        }
        Some(TraceRecord {
            flow: if d[1] == 0 {
                Flow::Upstream
            } else {
                Flow::Downstream
            },
            kind: d[2],
            index: d[3],
            stream_id: d[4],
            sub_stream: d[5],
            key_set: d[6],
            verified: d[7] == 0,
            invocation: u64::from_le_bytes(d[8..16].try_into().ok()?),
            header: body[..hl].to_vec(),
            payload: body[hl..hl + pl].to_vec(),
            mac: body[hl + pl..].try_into().ok()?,
        })
    }
}

/// Writes records to a new pcap file.
#[derive(Debug)]
pub struct TraceWriter {
    out: BufWriter<File>,
}

impl TraceWriter {
    /// Creates `path` (it must not exist) and writes the pcap header.
    pub fn create(path: &Path) -> io::Result<TraceWriter> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&65535u32.to_le_bytes());
        h.extend_from_slice(&LINKTYPE.to_le_bytes());
        out.write_all(&h)?;
        out.flush()?;
        Ok(TraceWriter { out })
    }

    /// Appends one record.
    pub fn record(&mut self, r: &TraceRecord) -> io::Result<()> {
        let data = r.encode();
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(t.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&t.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(&data)
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads every record of a trace file.
pub fn read_trace(path: &Path) -> io::Result<Vec<TraceRecord>> {
    let mut d = Vec::new();
    File::open(path)?.read_to_end(&mut d)?;
    let bad = |w: &str| io::Error::new(io::ErrorKind::InvalidData, w.to_string());
    if d.len() < 24 || d[..4] != 0xa1b2_c3d4u32.to_le_bytes() {
        return Err(bad("not a little-endian pcap file"));
    }
    if u32::from_le_bytes([d[20], d[21], d[22], d[23]]) != LINKTYPE {
        return Err(bad("not an IDE trace (link type)"));
    }
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= d.len() {
        let n = u32::from_le_bytes([d[pos + 8], d[pos + 9], d[pos + 10], d[pos + 11]]) as usize;
        let body = d
            .get(pos + 16..pos + 16 + n)
            .ok_or_else(|| bad("truncated record"))?;
        out.push(TraceRecord::decode(body).ok_or_else(|| bad("malformed record"))?);
        pos += 16 + n;
    }
    Ok(out)
}

/// What [`verify`] found in a trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceCheck {
    /// Records checked.
    pub records: usize,
    /// Records per (direction, sub-stream): direction 0 upstream, 1 downstream.
    pub kinds: BTreeMap<(u8, u8), usize>,
    /// Records per key set (K0, K1).
    pub key_sets: [usize; 2],
    /// Records whose integrity check failed at the receiver (and whose MAC
    /// indeed does not verify).
    pub failed: usize,
}

/// AES-256-GCM with IDE's 96-bit MAC, from RustCrypto: an implementation
/// independent of the link's own.
type Gcm96 =
    aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U12, aes_gcm::aead::consts::U12>;

/// Checks a recorded trace against the keys that were programmed, with an
/// AES-GCM implementation that is not the link's (RustCrypto): every
/// record decrypts and its MAC verifies with `key(stream_id, slot)` of its
/// transmitter (the device's TX key upstream, its RX key downstream)
/// exactly when the record says it was verified, and each (stream,
/// sub-stream, direction, key set) counts up by one from its key's IFV.
/// `plain` sees the plaintext of every verified record.
pub fn verify(
    recs: &[TraceRecord],
    key: impl Fn(u8, KeySlot) -> IdeKey,
    mut plain: impl FnMut(&TraceRecord, &[u8]),
) -> Result<TraceCheck, String> {
    let mut next: HashMap<(u8, u8, u8, u8), u64> = HashMap::new();
    let mut ciphers: HashMap<(u8, KeySlot), (Gcm96, u64)> = HashMap::new();
    let mut c = TraceCheck::default();
    for (i, r) in recs.iter().enumerate() {
        let set = KeySet::from_bit(r.key_set == 1);
        let dir = match r.flow {
            Flow::Upstream => KeyDirection::Tx,
            Flow::Downstream => KeyDirection::Rx,
        };
        let ss = SubStream::from_bits(r.sub_stream)
            .ok_or_else(|| format!("record {i}: sub-stream {}", r.sub_stream))?;
        let slot = KeySlot::new(set, dir, ss);
        let (gcm, ifv) = ciphers.entry((r.stream_id, slot)).or_insert_with(|| {
            let k = key(r.stream_id, slot);
            (Gcm96::new(k.key_bytes().into()), k.ifv())
        });
        let n = next
            .entry((r.stream_id, r.sub_stream, r.flow as u8, r.key_set))
            .or_insert(*ifv);
        if r.invocation != *n {
            return Err(format!(
                "record {i} ({:?} {} K{} Stream ID {}): invocation {:#x}, expected {:#x}",
                r.flow,
                ss.name(),
                r.key_set,
                r.stream_id,
                r.invocation,
                *n
            ));
        }
        *n += 1;
        let mut p = r.payload.clone();
        let ok = gcm
            .decrypt_in_place_detached(
                &IdeKey::iv(r.invocation).into(),
                &r.header,
                &mut p,
                (&r.mac).into(),
            )
            .is_ok();
        if ok != r.verified {
            return Err(format!(
                "record {i} ({:?} {} K{}): the MAC {} with the programmed key but the link {} it",
                r.flow,
                ss.name(),
                r.key_set,
                if ok { "verifies" } else { "does not verify" },
                if r.verified { "accepted" } else { "rejected" }
            ));
        }
        if ok {
            plain(r, &p);
        } else {
            c.failed += 1;
        }
        c.records += 1;
        *c.kinds.entry((r.flow as u8, r.sub_stream)).or_insert(0) += 1;
        c.key_sets[usize::from(r.key_set & 1)] += 1;
    }
    Ok(c)
}
