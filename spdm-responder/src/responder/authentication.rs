//! Authentication: GET_DIGESTS, GET_CERTIFICATE, CHALLENGE, GET_MEASUREMENTS.

use super::{
    fail, invalid, rd_hash, unexpected, ConnState, Fail, NotReady, Reply, Responder, NONCE_SIZE, R,
    REQ_CONTEXT_SIZE,
};
use crate::codec::{caps, error_response, rsp, RequestCode, Writer, V11, V12, V13};
use crate::crypto::{self, AsymAlgo, HashAlgo};
use crate::error::ErrorCode;
use crate::identity::MAX_SLOTS;

impl Responder {
    pub(super) fn require_negotiated(&self) -> Result<(HashAlgo, AsymAlgo), Fail> {
        if self.conn.state < ConnState::Negotiated {
            return Err(unexpected());
        }
        Ok((
            rd_hash(self.conn.neg.hash)?,
            self.conn.neg.asym.ok_or_else(unexpected)?,
        ))
    }

    pub(super) fn slot_chain(&self, slot: u8) -> Option<Vec<u8>> {
        let hash = self.conn.neg.hash?;
        let asym = self.conn.neg.asym?;
        self.identity.slot(asym, slot).map(|s| s.spdm_chain(hash))
    }

    pub(super) fn slot_mask(&self) -> u8 {
        self.conn
            .neg
            .asym
            .and_then(|a| self.identity.for_algo(a))
            .map_or(0, |a| a.slot_mask())
    }

    /// GET_DIGESTS (CERT_CAP checked by the dispatcher). Param1/Param2 are
    /// reserved and ignored.
    pub(super) fn get_digests(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let (hash, _) = self.require_negotiated()?;
        // 1.3: Param1 SupportedSlotMask, Param2 ProvisionedSlotMask; before
        // 1.3 Param1 is reserved (0).
        let mask = self.slot_mask();
        let p1 = if self.conn.neg.version >= V13 {
            mask
        } else {
            0
        };
        let mut w = Writer::header(self.conn.neg.version, rsp::DIGESTS, p1, mask);
        for slot in 0..MAX_SLOTS as u8 {
            if mask & (1 << slot) != 0 {
                let chain = self
                    .slot_chain(slot)
                    .ok_or_else(|| fail(ErrorCode::Unspecified))?;
                w.bytes(&hash.hash(&chain));
            }
        }
        let msg = w.finish();
        if sid.is_none() {
            self.conn.message_b.extend_from_slice(&req[..4]);
            self.conn.message_b.extend_from_slice(&msg);
            if self.conn.state < ConnState::AfterDigests {
                self.conn.state = ConnState::AfterDigests;
            }
        }
        Ok(Reply::new(msg))
    }

    /// GET_CERTIFICATE (CERT_CAP checked by the dispatcher).
    pub(super) fn get_certificate(&mut self, req: &[u8], sid: Option<u32>) -> R {
        self.require_negotiated()?;
        if req.len() < 8 {
            return Err(invalid());
        }
        // Param1 bits 7:4 are reserved in 1.0-1.3 (1.4's LargeCertChain is
        // bit 7): ignored.
        let slot = req[2] & 0x0F;
        let attrs = req[3];
        let offset = u16::from_le_bytes([req[4], req[5]]) as usize;
        let length = u16::from_le_bytes([req[6], req[7]]) as usize;
        let chain = self.slot_chain(slot).ok_or_else(invalid)?;
        let ver = self.conn.neg.version;
        let slot_size_requested = ver >= V13 && attrs & 0x01 != 0;
        let (portion, remainder) = if slot_size_requested {
            (0usize, chain.len())
        } else {
            if offset >= chain.len() || length == 0 {
                return Err(invalid());
            }
            let mut portion = length.min(chain.len() - offset);
            let both_chunk = self.conn.neg.req_caps & caps::CHUNK != 0
                && self.conn.neg.rsp_caps & caps::CHUNK != 0;
            if ver >= V12 && !both_chunk && self.conn.neg.req_data_transfer_size != 0 {
                portion =
                    portion.min((self.conn.neg.req_data_transfer_size as usize).saturating_sub(8));
            }
            (portion, chain.len() - offset - portion)
        };
        let mut w = Writer::header(ver, rsp::CERTIFICATE, slot, 0);
        w.u16(portion as u16).u16(remainder as u16);
        if portion > 0 {
            w.bytes(&chain[offset..offset + portion]);
        }
        let msg = w.finish();
        if sid.is_none() {
            self.conn.message_b.extend_from_slice(&req[..8]);
            self.conn.message_b.extend_from_slice(&msg);
            if self.conn.state < ConnState::AfterCertificate {
                self.conn.state = ConnState::AfterCertificate;
            }
        }
        Ok(Reply::new(msg))
    }

    pub(super) fn summary_hash(&self, ty: u8) -> Result<Vec<u8>, Fail> {
        let hash = rd_hash(self.conn.neg.hash)?;
        match ty {
            0 => Ok(Vec::new()),
            1 | 0xFF => {
                // A summary needs measurements and a negotiated measurement
                // specification.
                if self.conn.neg.rsp_caps & caps::MEAS_MASK == 0 || self.conn.neg.meas_spec == 0 {
                    return Err(invalid());
                }
                let mut data = Vec::new();
                for m in &self.cfg.measurements {
                    if ty == 0xFF || m.tcb {
                        data.extend_from_slice(&m.block(self.conn.neg.meas_hash, false));
                    }
                }
                Ok(hash.hash(&data))
            }
            _ => Err(invalid()),
        }
    }

    pub(super) fn sign(&self, slot: u8, context: &str, transcript: &[u8]) -> Result<Vec<u8>, Fail> {
        let hash = rd_hash(self.conn.neg.hash)?;
        let asym = self.conn.neg.asym.ok_or_else(unexpected)?;
        let key = &self.identity.slot(asym, slot).ok_or_else(invalid)?.key;
        let digest = crypto::signature_digest(hash, self.conn.neg.version, context, transcript);
        key.sign_prehash(&digest)
            .map_err(|_| fail(ErrorCode::Unspecified))
    }

    /// CHALLENGE (outside a session, CHAL_CAP: checked by the dispatcher).
    pub(super) fn challenge(&mut self, req: &[u8]) -> R {
        let (hash, _) = self.require_negotiated()?;
        let ver = self.conn.neg.version;
        let need = 4 + NONCE_SIZE + if ver >= V13 { REQ_CONTEXT_SIZE } else { 0 };
        if req.len() < need {
            return Err(invalid());
        }
        let slot = req[2];
        let hash_type = req[3];
        if slot as usize >= MAX_SLOTS {
            return Err(invalid());
        }
        let chain = self.slot_chain(slot).ok_or_else(invalid)?;
        let summary = self.summary_hash(hash_type)?;
        let nonce: [u8; NONCE_SIZE] = self.random();
        // Param1: SlotID (BasicMutAuthReq never set); Param2: SlotMask, the
        // slots that hold a certificate chain (as in DIGESTS).
        let mask = self.slot_mask();
        let mut w = Writer::header(ver, rsp::CHALLENGE_AUTH, slot & 0x0F, mask);
        w.bytes(&hash.hash(&chain))
            .bytes(&nonce)
            .bytes(&summary)
            .u16(0);
        if ver >= V13 {
            w.bytes(&req[4 + NONCE_SIZE..need]);
        }
        let mut msg = w.finish();
        let mut transcript =
            Vec::with_capacity(self.conn.vca.len() + self.conn.message_b.len() + need + msg.len());
        transcript.extend_from_slice(&self.conn.vca);
        transcript.extend_from_slice(&self.conn.message_b);
        transcript.extend_from_slice(&self.conn.message_c);
        transcript.extend_from_slice(&req[..need]);
        transcript.extend_from_slice(&msg);
        let sig = self.sign(slot, crypto::CTX_CHALLENGE_AUTH, &transcript)?;
        msg.extend_from_slice(&sig);
        self.conn.message_b.clear();
        self.conn.message_c.clear();
        self.conn.state = ConnState::Authenticated;
        self.maybe_not_ready(RequestCode::Challenge, msg, None)
    }

    pub(super) fn maybe_not_ready(
        &mut self,
        code: RequestCode,
        msg: Vec<u8>,
        sid: Option<u32>,
    ) -> R {
        if !self.cfg.respond_not_ready {
            return Ok(Reply::new(msg));
        }
        let token: [u8; 1] = self.random();
        self.not_ready = Some(NotReady {
            code: code as u8,
            token: token[0],
            response: msg,
            session: sid,
        });
        let mut e = error_response(self.conn.neg.version, ErrorCode::ResponseNotReady, 0);
        // RDExponent, RequestCode, Token, RDTM
        e.extend_from_slice(&[1, code as u8, token[0], 1]);
        Ok(Reply::new(e))
    }

    /// RESPOND_IF_READY: the response held back by ResponseNotReady, if the
    /// request code and token match and it comes from the same place.
    pub(super) fn respond_if_ready(&mut self, req: &[u8], sid: Option<u32>) -> R {
        match self.not_ready.take() {
            Some(nr) if nr.session == sid => {
                if nr.code != req[2] || nr.token != req[3] {
                    self.not_ready = Some(nr);
                    return Err(invalid());
                }
                Ok(Reply::new(nr.response))
            }
            other => {
                self.not_ready = other;
                Err(unexpected())
            }
        }
    }

    /// GET_MEASUREMENTS (MEAS_CAP, and inside a session the application
    /// phase: checked by the dispatcher).
    pub(super) fn get_measurements(&mut self, req: &[u8], sid: Option<u32>) -> R {
        let (_, _) = self.require_negotiated()?;
        let n = &self.conn.neg;
        // No measurement specification was negotiated (the requester sent
        // MeasurementSpecification 0): measurements are not usable on this
        // connection.
        if n.meas_spec == 0 {
            return Err(unexpected());
        }
        let ver = n.version;
        let attrs = req[2];
        let op = req[3];
        let signed = attrs & 0x01 != 0;
        let raw_requested = ver >= V12 && attrs & 0x02 != 0;
        let mut need = 4;
        if signed {
            need += NONCE_SIZE + if ver >= V11 { 1 } else { 0 };
        }
        if ver >= V13 {
            need += REQ_CONTEXT_SIZE;
        }
        if req.len() < need {
            return Err(invalid());
        }
        let slot = if signed && ver >= V11 {
            req[4 + NONCE_SIZE] & 0x0F
        } else {
            0
        };
        if signed {
            if slot as usize >= MAX_SLOTS || self.slot_chain(slot).is_none() {
                return Err(invalid());
            }
            if self.conn.neg.rsp_caps & caps::MEAS_SIG == 0 {
                return Err(invalid());
            }
        }
        let meas_hash = self.conn.neg.meas_hash;
        let (p1, blocks): (u8, Vec<Vec<u8>>) = match op {
            0 => (self.cfg.measurements.len() as u8, Vec::new()),
            0xFF => (
                0,
                self.cfg
                    .measurements
                    .iter()
                    .map(|m| m.block(meas_hash, raw_requested))
                    .collect(),
            ),
            i => {
                let m = self
                    .cfg
                    .measurements
                    .iter()
                    .find(|m| m.index == i)
                    .ok_or_else(invalid)?;
                (0, vec![m.block(meas_hash, raw_requested)])
            }
        };
        let record: Vec<u8> = blocks.concat();
        if record.len() > 0xFF_FFFF {
            return Err(fail(ErrorCode::Unspecified));
        }
        let nonce: [u8; NONCE_SIZE] = self.random();
        let mut w = Writer::header(ver, rsp::MEASUREMENTS, p1, if signed { slot } else { 0 });
        w.u8(blocks.len() as u8)
            .u24(record.len() as u32)
            .bytes(&record)
            .bytes(&nonce)
            .u16(0);
        if ver >= V13 {
            w.bytes(&req[need - REQ_CONTEXT_SIZE..need]);
        }
        let mut msg = w.finish();
        let vca = self.conn.vca.clone();
        let mm = self.message_m_mut(sid);
        mm.extend_from_slice(&req[..need]);
        mm.extend_from_slice(&msg);
        if signed {
            let mut l = Vec::new();
            if ver >= V12 {
                l.extend_from_slice(&vca);
            }
            l.extend_from_slice(&std::mem::take(self.message_m_mut(sid)));
            let sig = self.sign(slot, crypto::CTX_MEASUREMENTS, &l)?;
            msg.extend_from_slice(&sig);
            return self.maybe_not_ready(RequestCode::GetMeasurements, msg, sid);
        }
        Ok(Reply::new(msg))
    }
}
