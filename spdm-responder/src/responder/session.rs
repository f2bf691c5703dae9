//! Sessions: KEY_EXCHANGE, FINISH, PSK_EXCHANGE, PSK_FINISH, HEARTBEAT, KEY_UPDATE, END_SESSION.

use std::time::Instant;

use log::{debug, info, warn};

use super::{
    fail, invalid, unexpected, Fail, Post, Post2, Reply, Responder, SessState, Session, MAX_OPAQUE,
    MAX_PSK_HINT, NONCE_SIZE, R,
};
use crate::codec::{caps, rsp, Reader, Writer, V13};
use crate::crypto::{self, AeadAlgo, DheSecret, HashAlgo};
use crate::error::ErrorCode;
use crate::identity::MAX_SLOTS;
use crate::keyschedule::{self, HandshakeSecrets};
use crate::opaque;
use crate::secured::{Direction, SecureChannel};

impl Responder {
    pub(super) fn session_caps_ok(&self, bit: u32) -> bool {
        let n = &self.conn.neg;
        n.req_caps & bit != 0 && n.rsp_caps & bit != 0
    }

    pub(super) fn new_session_id(&mut self, req_id: u16) -> Result<u32, Fail> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(fail(ErrorCode::SessionLimitExceeded));
        }
        for _ in 0..64 {
            let r: [u8; 2] = self.random();
            let rsp_id = u16::from_le_bytes(r);
            if rsp_id == 0 || rsp_id == 0xFFFF {
                continue;
            }
            let id = ((rsp_id as u32) << 16) | req_id as u32;
            if !self
                .sessions
                .iter()
                .any(|s| s.id == id || (s.id >> 16) as u16 == rsp_id)
            {
                return Ok(id);
            }
        }
        Err(fail(ErrorCode::Unspecified))
    }

    pub(super) fn select_secured_version(&self, opaque: &[u8]) -> Result<u16, Fail> {
        let fmt = self.conn.neg.opaque_fmt;
        if opaque.is_empty() || fmt == opaque::FMT_NONE {
            return Ok(opaque::SECURED_V10);
        }
        let list = opaque::parse_supported_versions(fmt, opaque).ok_or_else(invalid)?;
        if list.iter().any(|v| v & 0xFF00 == opaque::SECURED_V11) {
            Ok(opaque::SECURED_V11)
        } else if list.iter().any(|v| v & 0xFF00 == opaque::SECURED_V10) {
            Ok(opaque::SECURED_V10)
        } else {
            Err(invalid())
        }
    }

    pub(super) fn rsp_opaque(&self, selected: u16) -> Vec<u8> {
        match self.conn.neg.opaque_fmt {
            opaque::FMT_NONE => Vec::new(),
            f => opaque::version_selection(f, selected),
        }
    }

    /// KEY_EXCHANGE (outside a session, KEY_EX_CAP on both sides: checked by
    /// the dispatcher).
    pub(super) fn key_exchange(&mut self, req: &[u8]) -> R {
        let (hash, _) = self.require_negotiated()?;
        let (Some(dhe), Some(aead), true) = (
            self.conn.neg.dhe,
            self.conn.neg.aead,
            self.conn.neg.key_schedule,
        ) else {
            return Err(unexpected());
        };
        let ver = self.conn.neg.version;
        let hash_type = req[2];
        let slot = req[3];
        let mut r = Reader::new(&req[4..]);
        let req_sid = r.u16().ok_or_else(invalid)?;
        // SessionPolicy (1.2+): bit 0 TerminationPolicy (nothing here updates
        // at runtime), bit 1 EventAllPolicy (1.3) needs EVENT_CAP, which this
        // responder does not have. Then a reserved byte.
        let policy = r.u8().ok_or_else(invalid)?;
        if ver >= V13 && policy & 0x02 != 0 {
            return Err(invalid());
        }
        r.skip(1).ok_or_else(invalid)?;
        r.skip(NONCE_SIZE).ok_or_else(invalid)?;
        let exchange = r.take(dhe.exchange_size()).ok_or_else(invalid)?;
        let olen = r.u16().ok_or_else(invalid)? as usize;
        if olen > MAX_OPAQUE {
            return Err(invalid());
        }
        let opaque_in = r.take(olen).ok_or_else(invalid)?;
        let req_len = 4 + r.pos();
        if slot as usize >= MAX_SLOTS {
            return Err(invalid());
        }
        let chain = self.slot_chain(slot).ok_or_else(invalid)?;
        let summary = self.summary_hash(hash_type)?;
        let sec_ver = self.select_secured_version(opaque_in)?;
        let secret = DheSecret::generate_with(dhe, self.cfg.ecdh, &mut *self.rng)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        let public = secret.public_exchange();
        let shared = secret.agree(exchange).map_err(|_| invalid())?;
        let session_id = self.new_session_id(req_sid)?;
        let random: [u8; NONCE_SIZE] = self.random();
        let hb = if self.session_caps_ok(caps::HBEAT) {
            self.cfg.heartbeat_period
        } else {
            0
        };
        let mut w = Writer::header(ver, rsp::KEY_EXCHANGE_RSP, hb, 0);
        w.u16((session_id >> 16) as u16)
            .u8(0)
            .u8(0)
            .bytes(&random)
            .bytes(&public)
            .bytes(&summary);
        let op = self.rsp_opaque(sec_ver);
        w.u16(op.len() as u16).bytes(&op);
        let mut msg = w.finish();
        let mut th =
            Vec::with_capacity(self.conn.vca.len() + 2 * hash.size() + req_len + msg.len() + 200);
        th.extend_from_slice(&self.conn.vca);
        th.extend_from_slice(&hash.hash(&chain));
        th.extend_from_slice(&req[..req_len]);
        th.extend_from_slice(&msg);
        let sig = self.sign(slot, crypto::CTX_KEY_EXCHANGE_RSP, &th)?;
        msg.extend_from_slice(&sig);
        th.extend_from_slice(&sig);
        let th1 = hash.hash(&th);
        let hs = keyschedule::handshake_secrets(hash, ver, &shared, false, &th1)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        let verify = hash.hmac(&hs.rsp_finished_key, &th1);
        msg.extend_from_slice(&verify);
        th.extend_from_slice(&verify);
        self.add_session(session_id, false, hs, th, aead, hash, ver)?;
        info!("KEY_EXCHANGE: session {session_id:#010x} handshaking ({dhe:?}, {aead:?})");
        Ok(Reply::new(msg))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_session(
        &mut self,
        id: u32,
        psk: bool,
        hs: HandshakeSecrets,
        transcript: Vec<u8>,
        aead: AeadAlgo,
        hash: HashAlgo,
        ver: u8,
    ) -> Result<(), Fail> {
        let mac_only = !(self.session_caps_ok(caps::ENCRYPT));
        if mac_only && !self.session_caps_ok(caps::MAC) {
            return Err(unexpected());
        }
        let mut channel = SecureChannel::handshake(id, hash, aead, ver, mac_only, &hs)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        channel.set_max_sequence_number(self.cfg.max_sequence_number);
        if self.seq_in_header > 0 {
            channel.set_mctp_binding();
        }
        self.sessions.push(Session {
            id,
            state: SessState::Handshaking,
            psk,
            channel,
            hs,
            transcript,
            message_m: Vec::new(),
            last_key_update: None,
            key_updated: false,
            last_activity: Instant::now(),
            hash,
            version: ver,
        });
        Ok(())
    }

    pub(super) fn session_mut(&mut self, sid: Option<u32>) -> Result<&mut Session, Fail> {
        let id = sid.ok_or_else(unexpected)?;
        self.sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(unexpected)
    }

    /// FINISH (inside a session in its handshake phase, KEY_EX_CAP: checked by
    /// the dispatcher).
    pub(super) fn finish(&mut self, req: &[u8], sid: Option<u32>) -> R {
        // A signature is only allowed when we requested mutual authentication
        // (never).
        if req[2] & 0x01 != 0 {
            return Err(invalid());
        }
        self.end_handshake(req, sid, false)
    }

    /// FINISH or PSK_FINISH: check RequesterVerifyData over the transcript,
    /// answer, and move the session to its application phase. A mismatch is
    /// DecryptError and ends the session.
    fn end_handshake(&mut self, req: &[u8], sid: Option<u32>, psk: bool) -> R {
        let (name, code) = if psk {
            ("PSK_FINISH", rsp::PSK_FINISH_RSP)
        } else {
            ("FINISH", rsp::FINISH_RSP)
        };
        let s = self.session_mut(sid)?;
        if s.state != SessState::Handshaking || s.psk != psk {
            return Err(unexpected());
        }
        let h = s.hash.size();
        if req.len() < 4 + h {
            return Err(invalid());
        }
        let mut th = s.transcript.clone();
        th.extend_from_slice(&req[..4]);
        let ok = s
            .hash
            .hmac_verify(&s.hs.req_finished_key, &s.hash.hash(&th), &req[4..4 + h]);
        if !ok {
            warn!("{name}: RequesterVerifyData mismatch; session terminated");
            return Err(Fail(ErrorCode::DecryptError, 0, Some(Post2::KillSession)));
        }
        let msg = Writer::header(s.version, code, 0, 0).finish();
        s.transcript.extend_from_slice(&req[..4 + h]);
        s.transcript.extend_from_slice(&msg);
        let th2 = s.hash.hash(&s.transcript);
        let ds = keyschedule::data_secrets(s.hash, s.version, &s.hs.handshake_secret, &th2)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        Ok(Reply {
            msg,
            post: Post::EnterApplication(Box::new(ds)),
        })
    }

    pub(super) fn psk_exchange(&mut self, req: &[u8]) -> R {
        let (hash, _) = self.require_negotiated()?;
        let n = &self.conn.neg;
        let (Some(aead), true) = (n.aead, n.key_schedule) else {
            return Err(unexpected());
        };
        let ver = n.version;
        let hash_type = req[2];
        let mut r = Reader::new(&req[4..]);
        let req_sid = r.u16().ok_or_else(invalid)?;
        let hint_len = r.u16().ok_or_else(invalid)? as usize;
        let ctx_len = r.u16().ok_or_else(invalid)? as usize;
        let olen = r.u16().ok_or_else(invalid)? as usize;
        if hint_len > MAX_PSK_HINT || olen > MAX_OPAQUE {
            return Err(invalid());
        }
        let hint = r.take(hint_len).ok_or_else(invalid)?;
        r.skip(ctx_len).ok_or_else(invalid)?;
        let opaque_in = r.take(olen).ok_or_else(invalid)?;
        let req_len = 4 + r.pos();
        // No hint: the first (usually only) key; else the key it names.
        let psk = if hint.is_empty() {
            self.cfg.psks.first()
        } else {
            self.cfg.psks.iter().find(|p| p.matches(hint))
        }
        .ok_or_else(invalid)?
        .key
        .clone();
        let summary = self.summary_hash(hash_type)?;
        let sec_ver = self.select_secured_version(opaque_in)?;
        let session_id = self.new_session_id(req_sid)?;
        let mut rsp_ctx = vec![0u8; hash.size()];
        self.rng.fill(&mut rsp_ctx);
        let hb = if self.session_caps_ok(caps::HBEAT) {
            self.cfg.heartbeat_period
        } else {
            0
        };
        let op = self.rsp_opaque(sec_ver);
        let mut w = Writer::header(ver, rsp::PSK_EXCHANGE_RSP, hb, 0);
        w.u16((session_id >> 16) as u16)
            .u16(0)
            .u16(rsp_ctx.len() as u16)
            .u16(op.len() as u16);
        w.bytes(&summary).bytes(&rsp_ctx).bytes(&op);
        let mut msg = w.finish();
        let mut th = Vec::new();
        th.extend_from_slice(&self.conn.vca);
        th.extend_from_slice(&req[..req_len]);
        th.extend_from_slice(&msg);
        let th1 = hash.hash(&th);
        let hs = keyschedule::handshake_secrets(hash, ver, &psk, true, &th1)
            .map_err(|_| fail(ErrorCode::Unspecified))?;
        let verify = hash.hmac(&hs.rsp_finished_key, &th1);
        msg.extend_from_slice(&verify);
        th.extend_from_slice(&verify);
        self.add_session(session_id, true, hs, th, aead, hash, ver)?;
        info!("PSK_EXCHANGE: session {session_id:#010x} handshaking");
        Ok(Reply::new(msg))
    }

    /// PSK_FINISH (inside a session in its handshake phase, PSK_CAP: checked
    /// by the dispatcher).
    pub(super) fn psk_finish(&mut self, req: &[u8], sid: Option<u32>) -> R {
        self.end_handshake(req, sid, true)
    }

    /// The session of a request the dispatcher let through as an
    /// application-phase request.
    fn app_session(&mut self, sid: Option<u32>) -> Result<&mut Session, Fail> {
        let s = self.session_mut(sid)?;
        if s.state != SessState::Established {
            return Err(unexpected());
        }
        Ok(s)
    }

    /// HEARTBEAT (application phase, HBEAT_CAP on both sides). Param1/Param2
    /// reserved.
    pub(super) fn heartbeat(&mut self, sid: Option<u32>) -> R {
        let s = self.app_session(sid)?;
        Ok(Reply::new(
            Writer::header(s.version, rsp::HEARTBEAT_ACK, 0, 0).finish(),
        ))
    }

    /// KEY_UPDATE (application phase, KEY_UPD_CAP on both sides). Param1 the
    /// operation, Param2 the tag echoed in KEY_UPDATE_ACK.
    pub(super) fn key_update(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let s = self.app_session(sid)?;
        let (op, tag) = (req[2], req[3]);
        let repeat = s.last_key_update == Some((op, tag));
        match op {
            1 | 2 => {
                if !repeat {
                    s.channel
                        .update_key(Direction::Request)
                        .map_err(|_| fail(ErrorCode::Unspecified))?;
                    if op == 2 {
                        s.channel
                            .update_key(Direction::Response)
                            .map_err(|_| fail(ErrorCode::Unspecified))?;
                    }
                    s.key_updated = true;
                }
            }
            3 => {
                if !s.key_updated {
                    return Err(invalid());
                }
                s.key_updated = false;
            }
            _ => return Err(invalid()),
        }
        s.last_key_update = Some((op, tag));
        debug!("KEY_UPDATE op {op} tag {tag} on session {:#010x}", s.id);
        Ok(Reply::new(
            Writer::header(s.version, rsp::KEY_UPDATE_ACK, op, tag).finish(),
        ))
    }

    /// END_SESSION (application phase). Param1 bit 0: NegotiatedStateClearing.
    pub(super) fn end_session(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let s = self.app_session(sid)?;
        let clear_state = req[2] & 0x01 != 0;
        Ok(Reply {
            msg: Writer::header(s.version, rsp::END_SESSION_ACK, 0, 0).finish(),
            post: Post::EndSession { clear_state },
        })
    }
}
