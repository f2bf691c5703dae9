//! An SPDM requester that drives every flow of the responder and verifies the
//! device: certificate chain to a trusted root (this crate's own X.509 signature
//! verification, [`crate::identity::verify_chain`]; tests cross-check with
//! rustls-webpki), CHALLENGE_AUTH and MEASUREMENTS signatures over the
//! transcripts, KEY_EXCHANGE_RSP signature and ResponderVerifyData, secured
//! sessions (DSP0277), heartbeat, key update, end session, chunking and
//! ResponseNotReady.
//!
//! It runs over any [`Transport`].

use crate::codec::{caps, rsp, Reader, Writer, V10, V11, V12, V13};
use crate::crypto::{
    self, AeadAlgo, AsymAlgo, DheGroup, DheSecret, HashAlgo, VerifyingKey, AEAD_AES_256_GCM,
    AEAD_CHACHA20_POLY1305, ASYM_ECDSA_P256, ASYM_ECDSA_P384, DHE_SECP256R1, DHE_SECP384R1,
    HASH_SHA256, HASH_SHA384, KEY_SCHEDULE_SPDM,
};
use crate::error::{ErrorCode, RequesterError};
use crate::identity;
use crate::keyschedule::{self, HandshakeSecrets};
use crate::measurement;
use crate::opaque;
use crate::psk::PskEntry;
use crate::responder::{NONCE_SIZE, REQ_CONTEXT_SIZE};
use crate::rng::{EntropySource, OsEntropy};
use crate::secured::{Direction, SecureChannel};
/// The requester runs over any [`Transport`] (defined with the transports).
pub use crate::transport::{Message, Transport};

/// Requester configuration.
#[derive(Clone, Debug)]
pub struct RequesterConfig {
    /// Versions the requester supports; the highest common one is used.
    pub versions: Vec<u8>,
    pub caps: u32,
    pub ct_exponent: u8,
    pub data_transfer_size: u32,
    pub max_spdm_msg_size: u32,
    pub base_hash: u32,
    pub base_asym: u32,
    pub dhe: u16,
    pub aead: u16,
    /// Trusted root certificates (DER).
    pub trusted_roots: Vec<Vec<u8>>,
    /// The PSK for PSK_EXCHANGE (none by default); GET_CAPABILITIES
    /// advertises PSK_CAP exactly when one is set.
    pub psk: Option<PskEntry>,
    /// Block size for GET_CERTIFICATE.
    pub cert_block: u16,
    /// Deliberate protocol faults, for testing responders.
    #[doc(hidden)]
    pub fault: Fault,
}

/// Deliberate faults the requester can inject (tests of responder behaviour).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Send FINISH / PSK_FINISH with a corrupted RequesterVerifyData.
    CorruptFinish,
    /// Stop after KEY_EXCHANGE_RSP / PSK_EXCHANGE_RSP: the session stays in
    /// its handshake phase (no FINISH / PSK_FINISH is sent).
    NoFinish,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self {
            versions: vec![V10, V11, V12, V13],
            caps: caps::CERT
                | caps::CHAL
                | caps::ENCRYPT
                | caps::MAC
                | caps::KEY_EX
                | caps::HBEAT
                | caps::KEY_UPD
                | caps::CHUNK,
            ct_exponent: 12,
            data_transfer_size: 0x1200,
            max_spdm_msg_size: 0x1_0000,
            base_hash: HASH_SHA256 | HASH_SHA384,
            base_asym: ASYM_ECDSA_P256 | ASYM_ECDSA_P384,
            dhe: DHE_SECP256R1 | DHE_SECP384R1,
            aead: AEAD_AES_256_GCM | AEAD_CHACHA20_POLY1305,
            trusted_roots: Vec::new(),
            psk: None,
            cert_block: 0x400,
            fault: Fault::None,
        }
    }
}

/// What the requester negotiated.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub version: u8,
    pub rsp_caps: u32,
    pub rsp_ct_exponent: u8,
    pub rsp_data_transfer_size: u32,
    pub rsp_max_msg_size: u32,
    pub hash: Option<HashAlgo>,
    pub asym: Option<AsymAlgo>,
    pub meas_hash: u32,
    pub dhe: Option<DheGroup>,
    pub aead: Option<AeadAlgo>,
    pub opaque_fmt: u8,
}

/// Result of CHALLENGE.
#[derive(Clone, Debug)]
pub struct ChallengeResult {
    pub slot: u8,
    pub slot_mask: u8,
    pub cert_chain_hash: Vec<u8>,
    pub measurement_summary_hash: Vec<u8>,
}

/// One measurement block as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    pub index: u8,
    /// DMTFSpecMeasurementValueType (bit 7 = raw bit stream).
    pub value_type: u8,
    pub value: Vec<u8>,
}

/// Result of GET_MEASUREMENTS.
#[derive(Clone, Debug)]
pub struct Measurements {
    /// Param1: total number of measurements (operation 0).
    pub total: u8,
    pub blocks: Vec<MeasurementBlock>,
    /// Whether a signature was requested and verified.
    pub signature_verified: bool,
}

/// KEY_UPDATE operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyUpdateOp {
    UpdateKey = 1,
    UpdateAllKeys = 2,
    VerifyNewKey = 3,
}

struct ReqSession {
    id: u32,
    channel: SecureChannel,
    hs: HandshakeSecrets,
    transcript: Vec<u8>,
    message_m: Vec<u8>,
    hash: HashAlgo,
    established: bool,
    heartbeat_period: u8,
}

/// The SPDM requester.
pub struct Requester<T: Transport> {
    cfg: RequesterConfig,
    transport: T,
    rng: Box<dyn EntropySource>,
    conn: Connection,
    vca: Vec<u8>,
    message_b: Vec<u8>,
    message_m: Vec<u8>,
    /// Verified SPDM certificate chains per slot.
    chains: [Option<Vec<u8>>; 8],
    keys: [Option<VerifyingKey>; 8],
    sessions: Vec<ReqSession>,
    next_req_session: u16,
    key_update_tag: u8,
    seq_in_header: usize,
}

fn malformed(what: &'static str) -> RequesterError {
    RequesterError::Malformed(what)
}

fn check_error(msg: &[u8]) -> Result<(), RequesterError> {
    if msg.len() >= 4 && msg[1] == rsp::ERROR {
        return Err(RequesterError::ErrorResponse {
            code: ErrorCode::from_u8(msg[2]),
            raw: msg[2],
            data: msg[3],
        });
    }
    Ok(())
}

impl<T: Transport> Requester<T> {
    pub fn new(cfg: RequesterConfig, transport: T) -> Self {
        Self::with_entropy(cfg, transport, Box::new(OsEntropy))
    }

    pub fn with_entropy(cfg: RequesterConfig, transport: T, rng: Box<dyn EntropySource>) -> Self {
        Self {
            cfg,
            transport,
            rng,
            conn: Connection::default(),
            vca: Vec::new(),
            message_b: Vec::new(),
            message_m: Vec::new(),
            chains: Default::default(),
            keys: Default::default(),
            sessions: Vec::new(),
            next_req_session: 0xFFFE,
            key_update_tag: 0,
            seq_in_header: 0,
        }
    }

    /// Use the MCTP secured-message binding (2-byte sequence number in records).
    pub fn set_mctp_binding(&mut self, mctp: bool) {
        self.seq_in_header = if mctp { 2 } else { 0 };
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    pub fn config_mut(&mut self) -> &mut RequesterConfig {
        &mut self.cfg
    }
    /// The verified SPDM certificate chain of a slot.
    pub fn peer_chain(&self, slot: u8) -> Option<&[u8]> {
        self.chains.get(slot as usize)?.as_deref()
    }
    /// Established session ids.
    pub fn session_ids(&self) -> Vec<u32> {
        self.sessions
            .iter()
            .filter(|s| s.established)
            .map(|s| s.id)
            .collect()
    }
    /// (request, response) sequence numbers of a session.
    pub fn sequence_numbers(&self, sid: u32) -> Option<(u64, u64)> {
        self.sessions
            .iter()
            .find(|s| s.id == sid)
            .map(|s| s.channel.sequence_numbers())
    }

    fn random<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.rng.fill(&mut b);
        b
    }

    fn hash(&self) -> Result<HashAlgo, RequesterError> {
        self.conn
            .hash
            .ok_or(RequesterError::Negotiation("no hash negotiated"))
    }

    // ------------------------------------------------------------------
    // Message exchange (chunking, ResponseNotReady, sessions)
    // ------------------------------------------------------------------

    /// Send one SPDM request (plain or in a session) and return the raw response,
    /// which may be an ERROR. No chunking or retry.
    pub fn raw_exchange(
        &mut self,
        sid: Option<u32>,
        req: &[u8],
    ) -> Result<Vec<u8>, RequesterError> {
        match sid {
            None => match self
                .transport
                .send_receive(Message::Spdm(req.to_vec()))
                .map_err(|e| RequesterError::Transport(e.to_string()))?
            {
                Message::Spdm(m) => Ok(m),
                Message::Secured(_) => Err(malformed("secured reply to a plain request")),
            },
            Some(id) => {
                let pad_len = (self.random::<1>()[0] % 4) as usize;
                let mut pad = vec![0u8; pad_len];
                self.rng.fill(&mut pad);
                let s = self
                    .sessions
                    .iter_mut()
                    .find(|s| s.id == id)
                    .ok_or(RequesterError::Session("unknown session"))?;
                let rec = s.channel.seal(Direction::Request, req, &pad)?;
                let reply = self
                    .transport
                    .send_receive(Message::Secured(rec))
                    .map_err(|e| RequesterError::Transport(e.to_string()))?;
                match reply {
                    Message::Secured(r) => {
                        let s = self
                            .sessions
                            .iter_mut()
                            .find(|s| s.id == id)
                            .ok_or(RequesterError::Session("unknown session"))?;
                        let m = s.channel.open(Direction::Response, &r)?;
                        if m.len() >= 4
                            && m[1] == rsp::ERROR
                            && m[2] == ErrorCode::DecryptError as u8
                        {
                            self.drop_session(id);
                        }
                        Ok(m)
                    }
                    Message::Spdm(m) => {
                        // The responder could not process the record (unknown session, MAC failure...).
                        self.drop_session(id);
                        Ok(m)
                    }
                }
            }
        }
    }

    /// Send raw bytes as a secured record without protecting them (tests of hostile input).
    pub fn raw_record(&mut self, record: &[u8]) -> Result<Message, RequesterError> {
        self.transport
            .send_receive(Message::Secured(record.to_vec()))
            .map_err(|e| RequesterError::Transport(e.to_string()))
    }

    /// Protect a message for a session without sending it (for replay tests).
    pub fn seal_only(&mut self, sid: u32, msg: &[u8]) -> Result<Vec<u8>, RequesterError> {
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == sid)
            .ok_or(RequesterError::Session("unknown session"))?;
        Ok(s.channel.seal(Direction::Request, msg, &[])?)
    }

    /// Open a secured response record of a session (tests of hostile input).
    pub fn open_response(&mut self, sid: u32, record: &[u8]) -> Result<Vec<u8>, RequesterError> {
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == sid)
            .ok_or(RequesterError::Session("unknown session"))?;
        Ok(s.channel.open(Direction::Response, record)?)
    }

    /// Forget a session locally without telling the responder.
    pub fn forget_session(&mut self, sid: u32) {
        self.drop_session(sid);
    }

    fn drop_session(&mut self, id: u32) {
        self.sessions.retain(|s| s.id != id);
    }

    /// Exchange with CHUNK_SEND / CHUNK_GET and RESPOND_IF_READY handled; ERROR is an error.
    pub fn exchange(&mut self, sid: Option<u32>, req: &[u8]) -> Result<Vec<u8>, RequesterError> {
        let v = self.conn.version;
        let chunk =
            v >= V12 && self.conn.rsp_caps & caps::CHUNK != 0 && self.cfg.caps & caps::CHUNK != 0;
        let mut resp = if chunk
            && self.conn.rsp_data_transfer_size != 0
            && req.len() > self.conn.rsp_data_transfer_size as usize
        {
            self.chunk_send(sid, req)?
        } else {
            self.raw_exchange(sid, req)?
        };
        // ResponseNotReady -> RESPOND_IF_READY (bounded).
        for _ in 0..8 {
            if resp.len() >= 8
                && resp[1] == rsp::ERROR
                && resp[2] == ErrorCode::ResponseNotReady as u8
            {
                let (code, token) = (resp[5], resp[6]);
                resp = self.raw_exchange(sid, &[v, 0xFF, code, token])?;
            } else {
                break;
            }
        }
        if chunk
            && resp.len() >= 5
            && resp[1] == rsp::ERROR
            && resp[2] == ErrorCode::LargeResponse as u8
        {
            resp = self.chunk_get(sid, resp[4])?;
        }
        check_error(&resp)?;
        Ok(resp)
    }

    fn chunk_get(&mut self, sid: Option<u32>, handle: u8) -> Result<Vec<u8>, RequesterError> {
        let v = self.conn.version;
        let mut out = Vec::new();
        let mut total = None;
        for seq in 0u16..=u16::MAX {
            let mut w = Writer::header(v, 0x86, 0, handle);
            w.u16(seq);
            let r = self.raw_exchange(sid, &w.finish())?;
            check_error(&r)?;
            if r.len() < 12 || r[1] != rsp::CHUNK_RESPONSE || r[3] != handle {
                return Err(malformed("CHUNK_RESPONSE"));
            }
            let mut rd = Reader::new(&r[4..]);
            let rseq = rd.u16().ok_or(malformed("chunk"))?;
            rd.u16();
            let size = rd.u32().ok_or(malformed("chunk"))? as usize;
            if rseq != seq {
                return Err(malformed("chunk sequence"));
            }
            if seq == 0 {
                total = Some(rd.u32().ok_or(malformed("chunk"))? as usize);
                if total.unwrap_or(0) > self.cfg.max_spdm_msg_size as usize {
                    return Err(malformed("large response exceeds MaxSPDMmsgSize"));
                }
            }
            out.extend_from_slice(rd.take(size).ok_or(malformed("chunk"))?);
            if r[2] & 1 != 0 {
                break;
            }
        }
        if Some(out.len()) != total {
            return Err(malformed("chunked response size"));
        }
        Ok(out)
    }

    fn chunk_send(&mut self, sid: Option<u32>, req: &[u8]) -> Result<Vec<u8>, RequesterError> {
        let v = self.conn.version;
        let dts = self.conn.rsp_data_transfer_size as usize;
        let handle = self.random::<1>()[0];
        let mut off = 0usize;
        let mut seq = 0u16;
        loop {
            let hdr = 12 + if seq == 0 { 4 } else { 0 };
            let n = (dts - hdr).min(req.len() - off);
            let last = off + n == req.len();
            let mut w = Writer::header(v, 0x85, u8::from(last), handle);
            w.u16(seq).u16(0).u32(n as u32);
            if seq == 0 {
                w.u32(req.len() as u32);
            }
            w.bytes(&req[off..off + n]);
            let r = self.raw_exchange(sid, &w.finish())?;
            check_error(&r)?;
            if r.len() < 6 || r[1] != rsp::CHUNK_SEND_ACK {
                return Err(malformed("CHUNK_SEND_ACK"));
            }
            if r[2] & 1 != 0 {
                let inner = r[6..].to_vec();
                check_error(&inner)?;
                return Err(malformed("early error in CHUNK_SEND_ACK"));
            }
            off += n;
            seq += 1;
            if last {
                return Ok(r[6..].to_vec());
            }
        }
    }

    // ------------------------------------------------------------------
    // VCA
    // ------------------------------------------------------------------

    /// GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS.
    pub fn init_connection(&mut self) -> Result<&Connection, RequesterError> {
        self.conn = Connection::default();
        self.vca.clear();
        self.message_b.clear();
        self.message_m.clear();
        self.sessions.clear();
        self.chains = Default::default();
        self.keys = Default::default();
        // GET_VERSION
        let req = [V10, 0x84, 0, 0];
        let r = self.raw_exchange(None, &req)?;
        check_error(&r)?;
        if r.len() < 6 || r[1] != rsp::VERSION {
            return Err(malformed("VERSION"));
        }
        let n = r[5] as usize;
        let entries = r.get(6..6 + 2 * n).ok_or(malformed("VERSION entries"))?;
        let offered: Vec<u8> = entries
            .chunks(2)
            .map(|c| (u16::from_le_bytes([c[0], c[1]]) >> 8) as u8)
            .collect();
        let version = self
            .cfg
            .versions
            .iter()
            .copied()
            .filter(|v| offered.contains(v))
            .max()
            .ok_or(RequesterError::Negotiation("no common SPDM version"))?;
        self.vca.extend_from_slice(&req);
        self.vca.extend_from_slice(&r[..6 + 2 * n]);
        // GET_CAPABILITIES
        let mut w = Writer::header(version, 0xE1, 0, 0);
        if version >= V11 {
            let mask = if version == V11 {
                caps::MASK_11
            } else {
                caps::MASK_13
            };
            // PSK_CAP (requester) exactly when a PSK is configured.
            let psk = if self.cfg.psk.is_some() { caps::PSK } else { 0 };
            let flags = (self.cfg.caps & !caps::PSK_MASK) | psk;
            w.u8(0)
                .u8(self.cfg.ct_exponent)
                .u16(0)
                .u32(flags & mask & !if version == V11 { caps::CHUNK } else { 0 });
        }
        if version >= V12 {
            w.u32(self.cfg.data_transfer_size)
                .u32(self.cfg.max_spdm_msg_size);
        }
        let req = w.finish();
        let r = self.raw_exchange(None, &req)?;
        check_error(&r)?;
        let need = if version >= V12 { 20 } else { 12 };
        if r.len() < need || r[1] != rsp::CAPABILITIES || r[0] != version {
            return Err(malformed("CAPABILITIES"));
        }
        self.conn.version = version;
        self.conn.rsp_ct_exponent = r[5];
        self.conn.rsp_caps = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
        if version >= V12 {
            self.conn.rsp_data_transfer_size = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
            self.conn.rsp_max_msg_size = u32::from_le_bytes([r[16], r[17], r[18], r[19]]);
        }
        self.vca.extend_from_slice(&req);
        self.vca.extend_from_slice(&r[..need]);
        // NEGOTIATE_ALGORITHMS
        let tables: Vec<(u8, u16)> = if version >= V11 {
            // No ReqBaseAsymAlg table: this requester does not do mutual
            // authentication, and an empty table is invalid (libspdm rejects it).
            vec![
                (2, self.cfg.dhe),
                (3, self.cfg.aead),
                (5, KEY_SCHEDULE_SPDM),
            ]
        } else {
            Vec::new()
        };
        let len = 32 + 4 * tables.len();
        let mut w = Writer::header(version, 0xE3, tables.len() as u8, 0);
        w.u16(len as u16)
            .u8(0x01)
            .u8(if version >= V12 { opaque::FMT1 } else { 0 });
        w.u32(self.cfg.base_asym)
            .u32(self.cfg.base_hash)
            .zeros(12)
            .u8(0)
            .u8(0)
            .u8(0)
            .u8(0);
        for (t, v) in &tables {
            w.u8(*t).u8(0x20).u16(*v);
        }
        let req = w.finish();
        let r = self.raw_exchange(None, &req)?;
        check_error(&r)?;
        if r.len() < 36 || r[1] != rsp::ALGORITHMS {
            return Err(malformed("ALGORITHMS"));
        }
        let rlen = u16::from_le_bytes([r[4], r[5]]) as usize;
        if rlen > r.len() || rlen < 36 {
            return Err(malformed("ALGORITHMS length"));
        }
        let mut rd = Reader::new(&r[6..rlen]);
        let _meas_spec = rd.u8();
        let other = rd.u8().unwrap_or(0);
        let meas_hash = rd.u32().unwrap_or(0);
        let asym = rd.u32().unwrap_or(0);
        let hash = rd.u32().unwrap_or(0);
        rd.skip(12);
        let ea = rd.u8().unwrap_or(0) as usize;
        let eh = rd.u8().unwrap_or(0) as usize;
        rd.skip(2);
        rd.skip(4 * (ea + eh)).ok_or(malformed("ALGORITHMS ext"))?;
        for _ in 0..r[2] {
            let t = rd.u8().ok_or(malformed("ALGORITHMS table"))?;
            let c = rd.u8().ok_or(malformed("ALGORITHMS table"))?;
            let s = rd.u16().ok_or(malformed("ALGORITHMS table"))?;
            rd.skip(4 * (c & 0xF) as usize)
                .ok_or(malformed("ALGORITHMS table"))?;
            match t {
                2 => self.conn.dhe = DheGroup::from_bits(s),
                3 => self.conn.aead = AeadAlgo::from_bits(s),
                _ => {}
            }
        }
        self.conn.hash = Some(HashAlgo::from_bits(hash).ok_or(RequesterError::Negotiation(
            "responder selected no usable hash",
        ))?);
        self.conn.asym = AsymAlgo::from_bits(asym);
        if self.conn.asym.is_none() && self.conn.rsp_caps & (caps::CHAL | caps::KEY_EX) != 0 {
            return Err(RequesterError::Negotiation(
                "responder selected no usable signature algorithm",
            ));
        }
        self.conn.meas_hash = meas_hash;
        self.conn.opaque_fmt = if version >= V12 {
            other & 0x0F
        } else if version == V11 {
            opaque::FMT0
        } else {
            0
        };
        self.vca.extend_from_slice(&req);
        self.vca.extend_from_slice(&r[..rlen]);
        Ok(&self.conn)
    }

    // ------------------------------------------------------------------
    // Authentication
    // ------------------------------------------------------------------

    /// GET_DIGESTS: returns (slot mask, digests in slot order).
    pub fn get_digests(&mut self) -> Result<(u8, Vec<Vec<u8>>), RequesterError> {
        let h = self.hash()?;
        let req = [self.conn.version, 0x81, 0, 0];
        let r = self.exchange(None, &req)?;
        if r.len() < 4 || r[1] != rsp::DIGESTS {
            return Err(malformed("DIGESTS"));
        }
        let mask = r[3];
        let n = mask.count_ones() as usize;
        let body = r
            .get(4..4 + n * h.size())
            .ok_or(malformed("DIGESTS length"))?;
        self.message_b.clear();
        self.message_b.extend_from_slice(&req);
        self.message_b.extend_from_slice(&r[..4 + n * h.size()]);
        Ok((mask, body.chunks(h.size()).map(|c| c.to_vec()).collect()))
    }

    /// GET_CERTIFICATE (offset/length loop); verifies the chain to a trusted root.
    pub fn get_certificate(&mut self, slot: u8) -> Result<Vec<u8>, RequesterError> {
        let h = self.hash()?;
        let mut chain = Vec::new();
        let mut remainder = 1usize;
        let mut guard = 0;
        while remainder > 0 {
            guard += 1;
            if guard > 256 {
                return Err(malformed("certificate chain too long"));
            }
            let mut w = Writer::header(self.conn.version, 0x82, slot, 0);
            w.u16(chain.len() as u16).u16(self.cfg.cert_block);
            let req = w.finish();
            let r = self.exchange(None, &req)?;
            if r.len() < 8 || r[1] != rsp::CERTIFICATE {
                return Err(malformed("CERTIFICATE"));
            }
            let portion = u16::from_le_bytes([r[4], r[5]]) as usize;
            remainder = u16::from_le_bytes([r[6], r[7]]) as usize;
            let data = r
                .get(8..8 + portion)
                .ok_or(malformed("CERTIFICATE portion"))?;
            if portion == 0 && remainder > 0 {
                return Err(malformed("empty CERTIFICATE portion"));
            }
            if chain.len() + portion + remainder > 0xFFFF {
                return Err(malformed("chain too large"));
            }
            chain.extend_from_slice(data);
            self.message_b.extend_from_slice(&req);
            self.message_b.extend_from_slice(&r[..8 + portion]);
        }
        let certs = identity::parse_spdm_chain(&chain, h)
            .map_err(|e| RequesterError::Verify(e.to_string()))?;
        let key = identity::verify_chain(&certs, &self.cfg.trusted_roots)
            .map_err(|e| RequesterError::Verify(e.to_string()))?;
        if Some(key.algo()) != self.conn.asym {
            return Err(RequesterError::Verify(
                "leaf key does not match the negotiated algorithm".into(),
            ));
        }
        self.keys[slot as usize & 7] = Some(key);
        self.chains[slot as usize & 7] = Some(chain.clone());
        Ok(chain)
    }

    fn verify_sig(
        &self,
        slot: u8,
        context: &str,
        transcript: &[u8],
        sig: &[u8],
    ) -> Result<(), RequesterError> {
        let h = self.hash()?;
        let key = self.keys[slot as usize & 7]
            .as_ref()
            .ok_or(RequesterError::Verify(
                "no verified certificate for slot".into(),
            ))?;
        let digest = crypto::signature_digest(h, self.conn.version, context, transcript);
        key.verify_prehash(&digest, sig)
            .map_err(|_| RequesterError::Verify(format!("{context}: signature does not verify")))
    }

    /// CHALLENGE: verifies CHALLENGE_AUTH's signature over A || B || C.
    pub fn challenge(
        &mut self,
        slot: u8,
        hash_type: u8,
    ) -> Result<ChallengeResult, RequesterError> {
        let h = self.hash()?;
        let asym = self
            .conn
            .asym
            .ok_or(RequesterError::Negotiation("no signature algorithm"))?;
        let v = self.conn.version;
        let nonce: [u8; NONCE_SIZE] = self.random();
        let ctx: [u8; REQ_CONTEXT_SIZE] = self.random();
        let mut w = Writer::header(v, 0x83, slot, hash_type);
        w.bytes(&nonce);
        if v >= V13 {
            w.bytes(&ctx);
        }
        let req = w.finish();
        let r = self.exchange(None, &req)?;
        let ms = if hash_type == 0 { 0 } else { h.size() };
        let fixed = 4 + h.size() + NONCE_SIZE + ms + 2;
        if r.len() < fixed || r[1] != rsp::CHALLENGE_AUTH {
            return Err(malformed("CHALLENGE_AUTH"));
        }
        let olen = u16::from_le_bytes([r[fixed - 2], r[fixed - 1]]) as usize;
        let ctx_len = if v >= V13 { REQ_CONTEXT_SIZE } else { 0 };
        let body_end = fixed + olen + ctx_len;
        if r.len() < body_end + asym.sig_size() {
            return Err(malformed("CHALLENGE_AUTH length"));
        }
        let r = &r[..body_end + asym.sig_size()];
        if v >= V13 && r[fixed + olen..body_end] != ctx {
            return Err(RequesterError::Verify("RequesterContext not echoed".into()));
        }
        let cert_hash = r[4..4 + h.size()].to_vec();
        if let Some(chain) = &self.chains[slot as usize & 7] {
            if h.hash(chain) != cert_hash {
                return Err(RequesterError::Verify(
                    "CertChainHash does not match the retrieved chain".into(),
                ));
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&self.vca);
        m.extend_from_slice(&self.message_b);
        m.extend_from_slice(&req);
        m.extend_from_slice(&r[..body_end]);
        self.verify_sig(slot, crypto::CTX_CHALLENGE_AUTH, &m, &r[body_end..])?;
        self.message_b.clear();
        Ok(ChallengeResult {
            slot: r[2] & 0xF,
            slot_mask: r[3],
            cert_chain_hash: cert_hash,
            measurement_summary_hash: r[4 + h.size() + NONCE_SIZE..4 + h.size() + NONCE_SIZE + ms]
                .to_vec(),
        })
    }

    /// VCA, DIGESTS, CERTIFICATE (verified) and CHALLENGE on a slot.
    pub fn authenticate(&mut self, slot: u8) -> Result<ChallengeResult, RequesterError> {
        self.init_connection()?;
        self.get_digests()?;
        self.get_certificate(slot)?;
        self.challenge(slot, 0xFF)
    }

    /// GET_MEASUREMENTS. `op`: 0 = count, 0xFF = all, else an index. Signed
    /// requests are verified over L1/L2.
    pub fn get_measurements(
        &mut self,
        sid: Option<u32>,
        op: u8,
        signed: bool,
        slot: u8,
    ) -> Result<Measurements, RequesterError> {
        let v = self.conn.version;
        // SPDM 1.0 has no SlotIDParam: slot 0 signs.
        let slot = if v == V10 { 0 } else { slot };
        let asym = self
            .conn
            .asym
            .ok_or(RequesterError::Negotiation("no signature algorithm"))?;
        let nonce: [u8; NONCE_SIZE] = self.random();
        let ctx: [u8; REQ_CONTEXT_SIZE] = self.random();
        let mut w = Writer::header(v, 0xE0, u8::from(signed), op);
        if signed {
            w.bytes(&nonce);
            if v >= V11 {
                w.u8(slot);
            }
        }
        if v >= V13 {
            w.bytes(&ctx);
        }
        let req = w.finish();
        let r = self.exchange(sid, &req)?;
        if r.len() < 8 || r[1] != rsp::MEASUREMENTS {
            return Err(malformed("MEASUREMENTS"));
        }
        let count = r[4] as usize;
        let rec_len = u32::from_le_bytes([r[5], r[6], r[7], 0]) as usize;
        let rec = r
            .get(8..8 + rec_len)
            .ok_or(malformed("measurement record"))?;
        let blocks =
            measurement::parse_record(rec, count).ok_or(malformed("measurement blocks"))?;
        let mut p = 8 + rec_len + NONCE_SIZE;
        let olen = r
            .get(p..p + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
            .ok_or(malformed("MEASUREMENTS opaque"))?;
        p += 2 + olen;
        if v >= V13 {
            if r.get(p..p + REQ_CONTEXT_SIZE) != Some(&ctx[..]) {
                return Err(RequesterError::Verify("RequesterContext not echoed".into()));
            }
            p += REQ_CONTEXT_SIZE;
        }
        let expected = p + if signed { asym.sig_size() } else { 0 };
        if r.len() < expected {
            return Err(malformed("MEASUREMENTS length"));
        }
        let r = &r[..expected];
        let mm = match sid {
            Some(id) => {
                &mut self
                    .sessions
                    .iter_mut()
                    .find(|s| s.id == id)
                    .ok_or(RequesterError::Session("unknown session"))?
                    .message_m
            }
            None => &mut self.message_m,
        };
        mm.extend_from_slice(&req);
        mm.extend_from_slice(&r[..p]);
        let mut verified = false;
        if signed {
            let mut l = Vec::new();
            if v >= V12 {
                l.extend_from_slice(&self.vca);
            }
            l.extend_from_slice(&std::mem::take(mm));
            self.verify_sig(slot, crypto::CTX_MEASUREMENTS, &l, &r[p..])?;
            verified = true;
        } else {
            mm.extend_from_slice(&r[p..]);
        }
        Ok(Measurements {
            total: r[2],
            blocks: blocks
                .into_iter()
                .map(|(index, value_type, value)| MeasurementBlock {
                    index,
                    value_type,
                    value,
                })
                .collect(),
            signature_verified: verified,
        })
    }

    // ------------------------------------------------------------------
    // Sessions
    // ------------------------------------------------------------------

    fn sec_versions_opaque(&self) -> Vec<u8> {
        match self.conn.opaque_fmt {
            opaque::FMT_NONE => Vec::new(),
            f => opaque::supported_versions(f, &[opaque::SECURED_V10, opaque::SECURED_V11]),
        }
    }

    fn check_version_selection(&self, op: &[u8]) -> Result<(), RequesterError> {
        if self.conn.opaque_fmt == opaque::FMT_NONE {
            return Ok(());
        }
        match opaque::parse_version_selection(self.conn.opaque_fmt, op) {
            Some(v) if v & 0xFF00 == opaque::SECURED_V10 || v & 0xFF00 == opaque::SECURED_V11 => {
                Ok(())
            }
            _ => Err(RequesterError::Verify(
                "no secured message version selected".into(),
            )),
        }
    }

    fn mac_only(&self) -> bool {
        !(self.cfg.caps & caps::ENCRYPT != 0 && self.conn.rsp_caps & caps::ENCRYPT != 0)
    }

    /// KEY_EXCHANGE + FINISH: returns the established session id.
    pub fn key_exchange(&mut self, slot: u8, hash_type: u8) -> Result<u32, RequesterError> {
        let h = self.hash()?;
        let v = self.conn.version;
        let asym = self
            .conn
            .asym
            .ok_or(RequesterError::Negotiation("no signature algorithm"))?;
        let dhe = self
            .conn
            .dhe
            .ok_or(RequesterError::Negotiation("no DHE group"))?;
        let aead = self
            .conn
            .aead
            .ok_or(RequesterError::Negotiation("no AEAD"))?;
        let chain = self.chains[slot as usize & 7]
            .clone()
            .ok_or(RequesterError::Verify("GET_CERTIFICATE first".into()))?;
        let req_sid = self.next_req_session;
        self.next_req_session = self.next_req_session.wrapping_sub(1).max(1);
        let secret = DheSecret::generate(dhe, &mut *self.rng);
        let random: [u8; NONCE_SIZE] = self.random();
        let op = self.sec_versions_opaque();
        let mut w = Writer::header(v, 0xE4, hash_type, slot);
        w.u16(req_sid)
            .u8(0)
            .u8(0)
            .bytes(&random)
            .bytes(&secret.public_exchange())
            .u16(op.len() as u16)
            .bytes(&op);
        let req = w.finish();
        let r = self.exchange(None, &req)?;
        if r.len() < 4 || r[1] != rsp::KEY_EXCHANGE_RSP {
            return Err(malformed("KEY_EXCHANGE_RSP"));
        }
        let heartbeat_period = r[2];
        let mut rd = Reader::new(&r[4..]);
        let rsp_sid = rd.u16().ok_or(malformed("KEY_EXCHANGE_RSP"))?;
        let mut_auth = rd.u8().ok_or(malformed("KEY_EXCHANGE_RSP"))?;
        rd.u8();
        rd.skip(NONCE_SIZE).ok_or(malformed("KEY_EXCHANGE_RSP"))?;
        let exch = rd
            .take(dhe.exchange_size())
            .ok_or(malformed("KEY_EXCHANGE_RSP exchange"))?;
        rd.skip(if hash_type == 0 { 0 } else { h.size() })
            .ok_or(malformed("KEY_EXCHANGE_RSP summary"))?;
        let olen = rd.u16().ok_or(malformed("KEY_EXCHANGE_RSP"))? as usize;
        let op_in = rd.take(olen).ok_or(malformed("KEY_EXCHANGE_RSP opaque"))?;
        let sig_at = 4 + rd.pos();
        if r.len() < sig_at + asym.sig_size() + h.size() {
            return Err(malformed("KEY_EXCHANGE_RSP length"));
        }
        let r = &r[..sig_at + asym.sig_size() + h.size()];
        if mut_auth != 0 {
            return Err(RequesterError::Session(
                "mutual authentication requested (not supported by this requester)",
            ));
        }
        self.check_version_selection(op_in)?;
        let mut th = Vec::new();
        th.extend_from_slice(&self.vca);
        th.extend_from_slice(&h.hash(&chain));
        th.extend_from_slice(&req);
        th.extend_from_slice(&r[..sig_at]);
        let sig = &r[sig_at..sig_at + asym.sig_size()];
        self.verify_sig(slot, crypto::CTX_KEY_EXCHANGE_RSP, &th, sig)?;
        th.extend_from_slice(sig);
        let shared = secret.agree(exch)?;
        let th1 = h.hash(&th);
        let hs = keyschedule::handshake_secrets(h, v, &shared, false, &th1)?;
        if !h.hmac_verify(&hs.rsp_finished_key, &th1, &r[sig_at + asym.sig_size()..]) {
            return Err(RequesterError::Verify(
                "ResponderVerifyData mismatch".into(),
            ));
        }
        th.extend_from_slice(&r[sig_at + asym.sig_size()..]);
        let id = ((rsp_sid as u32) << 16) | req_sid as u32;
        let mut channel = SecureChannel::handshake(id, h, aead, v, self.mac_only(), &hs)?;
        if self.seq_in_header > 0 {
            channel.set_mctp_binding();
        }
        self.sessions.push(ReqSession {
            id,
            channel,
            hs,
            transcript: th,
            message_m: Vec::new(),
            hash: h,
            established: false,
            heartbeat_period,
        });
        if self.cfg.fault == Fault::NoFinish {
            return Ok(id);
        }
        // FINISH (in the handshake-secured channel).
        let s = self
            .sessions
            .last()
            .ok_or(RequesterError::Session("lost"))?;
        let hdr = [v, 0xE5, 0, 0];
        let mut t = s.transcript.clone();
        t.extend_from_slice(&hdr);
        let mut verify = h.hmac(&s.hs.req_finished_key, &h.hash(&t));
        if self.cfg.fault == Fault::CorruptFinish {
            verify[0] ^= 0xFF;
        }
        let mut fin = hdr.to_vec();
        fin.extend_from_slice(&verify);
        let r = self.exchange(Some(id), &fin);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.drop_session(id);
                return Err(e);
            }
        };
        if r.len() < 4 || r[1] != rsp::FINISH_RSP {
            self.drop_session(id);
            return Err(malformed("FINISH_RSP"));
        }
        self.finish_established(id, &fin, &r[..4])?;
        Ok(id)
    }

    fn finish_established(
        &mut self,
        id: u32,
        fin: &[u8],
        rsp_msg: &[u8],
    ) -> Result<(), RequesterError> {
        let v = self.conn.version;
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(RequesterError::Session("lost"))?;
        s.transcript.extend_from_slice(fin);
        s.transcript.extend_from_slice(rsp_msg);
        let th2 = s.hash.hash(&s.transcript);
        let ds = keyschedule::data_secrets(s.hash, v, &s.hs.handshake_secret, &th2)?;
        s.channel.enter_application(&ds)?;
        s.established = true;
        Ok(())
    }

    /// PSK_EXCHANGE + PSK_FINISH with the configured PSK.
    pub fn psk_exchange(&mut self, hash_type: u8) -> Result<u32, RequesterError> {
        let h = self.hash()?;
        let v = self.conn.version;
        let aead = self
            .conn
            .aead
            .ok_or(RequesterError::Negotiation("no AEAD"))?;
        let psk = self
            .cfg
            .psk
            .clone()
            .ok_or(RequesterError::Session("no PSK configured"))?;
        let req_sid = self.next_req_session;
        self.next_req_session = self.next_req_session.wrapping_sub(1).max(1);
        let ctx: [u8; 32] = self.random();
        let op = self.sec_versions_opaque();
        let mut w = Writer::header(v, 0xE6, hash_type, 0);
        w.u16(req_sid)
            .u16(psk.hint.len() as u16)
            .u16(ctx.len() as u16)
            .u16(op.len() as u16);
        w.bytes(&psk.hint).bytes(&ctx).bytes(&op);
        let req = w.finish();
        let r = self.exchange(None, &req)?;
        if r.len() < 12 || r[1] != rsp::PSK_EXCHANGE_RSP {
            return Err(malformed("PSK_EXCHANGE_RSP"));
        }
        let heartbeat_period = r[2];
        let rsp_sid = u16::from_le_bytes([r[4], r[5]]);
        let ctx_len = u16::from_le_bytes([r[8], r[9]]) as usize;
        let olen = u16::from_le_bytes([r[10], r[11]]) as usize;
        let ms = if hash_type == 0 { 0 } else { h.size() };
        let vd_at = 12 + ms + ctx_len + olen;
        if r.len() < vd_at + h.size() {
            return Err(malformed("PSK_EXCHANGE_RSP length"));
        }
        let r = &r[..vd_at + h.size()];
        self.check_version_selection(&r[12 + ms + ctx_len..vd_at])?;
        let mut th = Vec::new();
        th.extend_from_slice(&self.vca);
        th.extend_from_slice(&req);
        th.extend_from_slice(&r[..vd_at]);
        let th1 = h.hash(&th);
        let hs = keyschedule::handshake_secrets(h, v, &psk.key, true, &th1)?;
        if !h.hmac_verify(&hs.rsp_finished_key, &th1, &r[vd_at..]) {
            return Err(RequesterError::Verify(
                "PSK ResponderVerifyData mismatch".into(),
            ));
        }
        th.extend_from_slice(&r[vd_at..]);
        let id = ((rsp_sid as u32) << 16) | req_sid as u32;
        let mut channel = SecureChannel::handshake(id, h, aead, v, self.mac_only(), &hs)?;
        if self.seq_in_header > 0 {
            channel.set_mctp_binding();
        }
        let hdr = [v, 0xE7, 0, 0];
        let mut t = th.clone();
        t.extend_from_slice(&hdr);
        let mut verify = h.hmac(&hs.req_finished_key, &h.hash(&t));
        if self.cfg.fault == Fault::CorruptFinish {
            verify[0] ^= 0xFF;
        }
        self.sessions.push(ReqSession {
            id,
            channel,
            hs,
            transcript: th,
            message_m: Vec::new(),
            hash: h,
            established: false,
            heartbeat_period,
        });
        if self.cfg.fault == Fault::NoFinish {
            return Ok(id);
        }
        let mut fin = hdr.to_vec();
        fin.extend_from_slice(&verify);
        let r = match self.exchange(Some(id), &fin) {
            Ok(r) => r,
            Err(e) => {
                self.drop_session(id);
                return Err(e);
            }
        };
        if r.len() < 4 || r[1] != rsp::PSK_FINISH_RSP {
            self.drop_session(id);
            return Err(malformed("PSK_FINISH_RSP"));
        }
        self.finish_established(id, &fin, &r[..4])?;
        Ok(id)
    }

    /// HEARTBEAT.
    pub fn heartbeat(&mut self, sid: u32) -> Result<(), RequesterError> {
        let r = self.exchange(Some(sid), &[self.conn.version, 0xE8, 0, 0])?;
        if r.len() < 4 || r[1] != rsp::HEARTBEAT_ACK {
            return Err(malformed("HEARTBEAT_ACK"));
        }
        Ok(())
    }

    /// The HeartbeatPeriod the responder announced for a session.
    pub fn heartbeat_period(&self, sid: u32) -> Option<u8> {
        self.sessions
            .iter()
            .find(|s| s.id == sid)
            .map(|s| s.heartbeat_period)
    }

    /// KEY_UPDATE: UpdateKey / UpdateAllKeys switch keys as DSP0274 prescribes,
    /// then VerifyNewKey confirms the new request key.
    pub fn key_update(&mut self, sid: u32, all: bool) -> Result<(), RequesterError> {
        let op = if all {
            KeyUpdateOp::UpdateAllKeys
        } else {
            KeyUpdateOp::UpdateKey
        };
        self.key_update_op(sid, op)?;
        self.key_update_op(sid, KeyUpdateOp::VerifyNewKey)
    }

    /// One KEY_UPDATE operation.
    pub fn key_update_op(&mut self, sid: u32, op: KeyUpdateOp) -> Result<(), RequesterError> {
        self.key_update_tag = self.key_update_tag.wrapping_add(1);
        let tag = self.key_update_tag;
        let req = [self.conn.version, 0xE9, op as u8, tag];
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == sid)
            .ok_or(RequesterError::Session("unknown session"))?;
        let rec = s.channel.seal(Direction::Request, &req, &[])?;
        // The request goes out under the old key; then our sending key moves on.
        if op != KeyUpdateOp::VerifyNewKey {
            s.channel.update_key(Direction::Request)?;
            if op == KeyUpdateOp::UpdateAllKeys {
                s.channel.update_key(Direction::Response)?;
            }
        }
        let reply = self
            .transport
            .send_receive(Message::Secured(rec))
            .map_err(|e| RequesterError::Transport(e.to_string()))?;
        let Message::Secured(rr) = reply else {
            self.drop_session(sid);
            return Err(RequesterError::Session("plain reply to KEY_UPDATE"));
        };
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == sid)
            .ok_or(RequesterError::Session("unknown session"))?;
        let r = s.channel.open(Direction::Response, &rr)?;
        check_error(&r)?;
        if r.len() < 4 || r[1] != rsp::KEY_UPDATE_ACK || r[2] != op as u8 || r[3] != tag {
            return Err(malformed("KEY_UPDATE_ACK"));
        }
        Ok(())
    }

    /// END_SESSION.
    pub fn end_session(&mut self, sid: u32) -> Result<(), RequesterError> {
        let r = self.exchange(Some(sid), &[self.conn.version, 0xEC, 0, 0]);
        self.drop_session(sid);
        let r = r?;
        if r.len() < 4 || r[1] != rsp::END_SESSION_ACK {
            return Err(malformed("END_SESSION_ACK"));
        }
        Ok(())
    }

    /// VENDOR_DEFINED_REQUEST; returns the response payload.
    pub fn vendor_request(
        &mut self,
        sid: Option<u32>,
        standard_id: u16,
        vendor_id: &[u8],
        payload: &[u8],
    ) -> Result<Vec<u8>, RequesterError> {
        let mut w = Writer::header(self.conn.version, 0xFE, 0, 0);
        w.u16(standard_id)
            .u8(vendor_id.len() as u8)
            .bytes(vendor_id)
            .u16(payload.len() as u16)
            .bytes(payload);
        let r = self.exchange(sid, &w.finish())?;
        if r.len() < 7 || r[1] != rsp::VENDOR_DEFINED_RESPONSE {
            return Err(malformed("VENDOR_DEFINED_RESPONSE"));
        }
        let mut rd = Reader::new(&r[4..]);
        rd.u16();
        let vl = rd.u8().unwrap_or(0) as usize;
        rd.skip(vl).ok_or(malformed("vendor id"))?;
        let pl = rd.u16().ok_or(malformed("vendor len"))? as usize;
        Ok(rd.take(pl).ok_or(malformed("vendor payload"))?.to_vec())
    }
}
