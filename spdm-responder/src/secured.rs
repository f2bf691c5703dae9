//! DSP0277 secured messages with the PCIe DOE binding.
//!
//! ```text
//! record = SessionID u32 || Length u16 || Enc(AppDataLength u16 || SPDM message || random) || MAC[16]
//! AAD    = SessionID || Length            (no sequence number on DOE)
//! IV     = salt XOR (sequence number, 64-bit little-endian in bytes 0..8)   (libspdm default)
//! ```
//! MAC-only sessions carry `AppData` in the clear and authenticate
//! `SessionID || Length || AppData`.

use zeroize::Zeroizing;

use crate::crypto::{AeadAlgo, HashAlgo, AEAD_IV_SIZE, AEAD_TAG_SIZE};
use crate::error::SecuredError;
use crate::keyschedule::{self, DataSecrets, HandshakeSecrets};

/// Direction of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Requester to responder.
    Request,
    /// Responder to requester.
    Response,
}

/// Header size of a DOE secured record (SessionID + Length).
pub const RECORD_HEADER: usize = 6;

/// The session id of a record, if the record is long enough.
pub fn record_session_id(record: &[u8]) -> Option<u32> {
    record
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

struct DirKeys {
    secret: Zeroizing<Vec<u8>>,
    key: Zeroizing<[u8; 32]>,
    salt: Zeroizing<[u8; AEAD_IV_SIZE]>,
    seq: u64,
}

impl DirKeys {
    fn new(hash: HashAlgo, version: u8, secret: Zeroizing<Vec<u8>>) -> Result<Self, SecuredError> {
        let t = keyschedule::traffic_keys(hash, version, &secret)?;
        Ok(Self {
            secret,
            key: t.key,
            salt: t.salt,
            seq: 0,
        })
    }
    fn iv(&self) -> [u8; AEAD_IV_SIZE] {
        let mut iv = *self.salt;
        for (i, b) in self.seq.to_le_bytes().iter().enumerate() {
            iv[i] ^= b;
        }
        iv
    }
}

/// Record protection state of one session (both directions).
pub struct SecureChannel {
    session_id: u32,
    hash: HashAlgo,
    aead: AeadAlgo,
    version: u8,
    mac_only: bool,
    req: DirKeys,
    rsp: DirKeys,
    /// The highest sequence number that may be used (inclusive).
    max_seq: u64,
    exhausted: bool,
    /// Bytes of sequence number carried in the record header: 0 on PCIe DOE,
    /// 2 on MCTP (DSP0275).
    seq_in_header: usize,
    /// MCTP: the application data starts with the MCTP message type (0x05).
    app_prefix: Option<u8>,
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("session_id", &format_args!("{:#010x}", self.session_id))
            .field("aead", &self.aead)
            .field("mac_only", &self.mac_only)
            .field("req_seq", &self.req.seq)
            .field("rsp_seq", &self.rsp.seq)
            .finish_non_exhaustive()
    }
}

impl SecureChannel {
    /// A channel in the handshake phase.
    pub fn handshake(
        session_id: u32,
        hash: HashAlgo,
        aead: AeadAlgo,
        version: u8,
        mac_only: bool,
        hs: &HandshakeSecrets,
    ) -> Result<Self, SecuredError> {
        Ok(Self {
            session_id,
            hash,
            aead,
            version,
            mac_only,
            req: DirKeys::new(hash, version, hs.req_secret.clone())?,
            rsp: DirKeys::new(hash, version, hs.rsp_secret.clone())?,
            max_seq: u64::MAX - 1,
            exhausted: false,
            seq_in_header: 0,
            app_prefix: None,
        })
    }

    /// Switch both directions to the data keys (sequence numbers restart at 0).
    pub fn enter_application(&mut self, ds: &DataSecrets) -> Result<(), SecuredError> {
        self.req = DirKeys::new(self.hash, self.version, ds.req_secret.clone())?;
        self.rsp = DirKeys::new(self.hash, self.version, ds.rsp_secret.clone())?;
        Ok(())
    }

    /// KEY_UPDATE: derive the next key of one direction (sequence number restarts at 0).
    pub fn update_key(&mut self, dir: Direction) -> Result<(), SecuredError> {
        let d = match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.rsp,
        };
        let next = keyschedule::update_secret(self.hash, self.version, &d.secret)?;
        *d = DirKeys::new(self.hash, self.version, next)?;
        Ok(())
    }

    /// Limit the sequence numbers (tests of exhaustion; AEAD limits).
    pub fn set_max_sequence_number(&mut self, max: u64) {
        self.max_seq = max.min(u64::MAX - 1);
    }

    /// Carry `n` low bytes of the sequence number in the record header (MCTP: 2).
    pub fn set_sequence_number_in_header(&mut self, n: usize) {
        self.seq_in_header = n.min(8);
    }

    /// The MCTP binding (DSP0275): 2-byte sequence number in the record header
    /// and the MCTP message type 0x05 at the start of the application data.
    pub fn set_mctp_binding(&mut self) {
        self.seq_in_header = 2;
        self.app_prefix = Some(0x05);
    }

    fn header_len(&self) -> usize {
        RECORD_HEADER + self.seq_in_header
    }

    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    pub fn sequence_numbers(&self) -> (u64, u64) {
        (self.req.seq, self.rsp.seq)
    }

    /// Protect `app` (an SPDM message) for `dir`, appending `padding` random bytes
    /// inside the encrypted part (ignored for MAC-only sessions).
    pub fn seal(
        &mut self,
        dir: Direction,
        app: &[u8],
        padding: &[u8],
    ) -> Result<Vec<u8>, SecuredError> {
        let prefixed;
        let app = match self.app_prefix {
            Some(p) => {
                prefixed = [&[p][..], app].concat();
                &prefixed[..]
            }
            None => app,
        };
        let max_seq = self.max_seq;
        let (aead, mac_only, sid) = (self.aead, self.mac_only, self.session_id);
        let (hl, sn) = (self.header_len(), self.seq_in_header);
        let d = match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.rsp,
        };
        if d.seq > max_seq {
            self.exhausted = true;
            return Err(SecuredError::SequenceExhausted);
        }
        let iv = d.iv();
        let mut out;
        if mac_only {
            let len = app
                .len()
                .checked_add(AEAD_TAG_SIZE)
                .filter(|l| *l <= u16::MAX as usize)
                .ok_or(SecuredError::Malformed)?;
            out = Vec::with_capacity(hl + len);
            out.extend_from_slice(&sid.to_le_bytes());
            out.extend_from_slice(&d.seq.to_le_bytes()[..sn]);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(app);
            let tag = aead.seal(&d.key[..], &iv, &out, &mut [])?;
            out.extend_from_slice(&tag);
        } else {
            if app.len() > u16::MAX as usize {
                return Err(SecuredError::Malformed);
            }
            let plain_len = 2 + app.len() + padding.len();
            let len = plain_len
                .checked_add(AEAD_TAG_SIZE)
                .filter(|l| *l <= u16::MAX as usize)
                .ok_or(SecuredError::Malformed)?;
            out = Vec::with_capacity(hl + len);
            out.extend_from_slice(&sid.to_le_bytes());
            out.extend_from_slice(&d.seq.to_le_bytes()[..sn]);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&(app.len() as u16).to_le_bytes());
            out.extend_from_slice(app);
            out.extend_from_slice(padding);
            let (aad, body) = out.split_at_mut(hl);
            let tag = aead.seal(&d.key[..], &iv, aad, body)?;
            out.extend_from_slice(&tag);
        }
        d.seq += 1;
        Ok(out)
    }

    /// Check and decrypt a record of `dir`; returns the SPDM message.
    pub fn open(&mut self, dir: Direction, record: &[u8]) -> Result<Vec<u8>, SecuredError> {
        let hl = self.header_len();
        if record.len() < hl + AEAD_TAG_SIZE {
            return Err(SecuredError::Malformed);
        }
        let sid = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
        if sid != self.session_id {
            return Err(SecuredError::UnknownSession(sid));
        }
        let len = u16::from_le_bytes([record[hl - 2], record[hl - 1]]) as usize;
        if len < AEAD_TAG_SIZE || hl + len > record.len() {
            return Err(SecuredError::Malformed);
        }
        // Trailing bytes past Length (transport padding) are ignored.
        let record = &record[..hl + len];
        let sn = self.seq_in_header;
        let max_seq = self.max_seq;
        let (aead, mac_only) = (self.aead, self.mac_only);
        let d = match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.rsp,
        };
        if d.seq > max_seq {
            self.exhausted = true;
            return Err(SecuredError::SequenceExhausted);
        }
        if record[4..4 + sn] != d.seq.to_le_bytes()[..sn] {
            return Err(SecuredError::Mac);
        }
        let iv = d.iv();
        let body_end = record.len() - AEAD_TAG_SIZE;
        let tag = &record[body_end..];
        let msg = if mac_only {
            aead.open(&d.key[..], &iv, &record[..body_end], &mut [], tag)
                .map_err(|_| SecuredError::Mac)?;
            record[hl..body_end].to_vec()
        } else {
            let mut body = Zeroizing::new(record[hl..body_end].to_vec());
            aead.open(&d.key[..], &iv, &record[..hl], &mut body, tag)
                .map_err(|_| SecuredError::Mac)?;
            if body.len() < 2 {
                return Err(SecuredError::Malformed);
            }
            let app_len = u16::from_le_bytes([body[0], body[1]]) as usize;
            if 2 + app_len > body.len() {
                return Err(SecuredError::Malformed);
            }
            body[2..2 + app_len].to_vec()
        };
        d.seq += 1;
        match self.app_prefix {
            Some(p) if msg.first() == Some(&p) => Ok(msg[1..].to_vec()),
            Some(_) => Err(SecuredError::Malformed),
            None => Ok(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyschedule::handshake_secrets;

    fn chan(aead: AeadAlgo, mac_only: bool) -> SecureChannel {
        let hs = handshake_secrets(HashAlgo::Sha256, 0x12, &[7u8; 32], false, &[1u8; 32]).unwrap();
        SecureChannel::handshake(0xFFFE_0001, HashAlgo::Sha256, aead, 0x12, mac_only, &hs).unwrap()
    }

    #[test]
    fn roundtrip_and_replay() {
        for aead in [AeadAlgo::Aes256Gcm, AeadAlgo::ChaCha20Poly1305] {
            for mac_only in [false, true] {
                let mut a = chan(aead, mac_only);
                let mut b = chan(aead, mac_only);
                let r = a
                    .seal(Direction::Request, &[0x12, 0xE8, 0, 0], &[9, 9, 9])
                    .unwrap();
                assert_eq!(&r[..4], &0xFFFE_0001u32.to_le_bytes());
                assert_eq!(
                    b.open(Direction::Request, &r).unwrap(),
                    vec![0x12, 0xE8, 0, 0]
                );
                // A replay uses the old sequence number: the MAC check fails.
                assert_eq!(b.open(Direction::Request, &r), Err(SecuredError::Mac));
                let mut bad = a.seal(Direction::Request, &[1, 2, 3], &[]).unwrap();
                bad[7] ^= 1;
                assert_eq!(b.open(Direction::Request, &bad), Err(SecuredError::Mac));
            }
        }
    }

    #[test]
    fn iv_is_salt_xor_le_sequence() {
        let mut c = chan(AeadAlgo::Aes256Gcm, false);
        let salt = *c.req.salt;
        c.req.seq = 0x0102;
        let iv = c.req.iv();
        assert_eq!(iv[0], salt[0] ^ 0x02);
        assert_eq!(iv[1], salt[1] ^ 0x01);
        assert_eq!(&iv[8..], &salt[8..]);
    }

    #[test]
    fn exhaustion() {
        let mut a = chan(AeadAlgo::Aes256Gcm, false);
        a.set_max_sequence_number(1);
        a.seal(Direction::Response, b"x", &[]).unwrap();
        a.seal(Direction::Response, b"x", &[]).unwrap();
        assert_eq!(
            a.seal(Direction::Response, b"x", &[]),
            Err(SecuredError::SequenceExhausted)
        );
        assert!(a.is_exhausted());
    }
}
