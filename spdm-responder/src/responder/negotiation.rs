//! Negotiation: GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS.

use log::info;

use super::{invalid, unexpected, ConnState, Reply, Responder, R};
use crate::codec::{caps, rsp, Reader, Writer, V10, V11, V12, V13};
use crate::crypto::{
    AeadAlgo, AsymAlgo, DheGroup, HashAlgo, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305,
    ASYM_ECDSA_P256, ASYM_ECDSA_P384, DHE_SECP256R1, DHE_SECP384R1, HASH_SHA256, HASH_SHA384,
    KEY_SCHEDULE_SPDM,
};
use crate::opaque;

impl Responder {
    pub(super) fn rsp_caps(&self, version: u8) -> u32 {
        let mut f = caps::CERT | caps::CHAL | caps::MEAS_SIG | caps::MEAS_FRESH;
        if version >= V11 {
            f |= caps::MAC | caps::KEY_EX | caps::HBEAT | caps::KEY_UPD;
            if self.cfg.encrypt {
                f |= caps::ENCRYPT;
            }
            if !self.cfg.psks.is_empty() {
                f |= caps::PSK_WITH_CONTEXT;
            }
        }
        if version >= V12 && self.cfg.chunk {
            f |= caps::CHUNK;
        }
        if self.cfg.measurements.is_empty() {
            f &= !caps::MEAS_MASK & !caps::MEAS_FRESH;
        }
        let mask = match version {
            V10 => caps::MASK_10,
            V11 => caps::MASK_11,
            V12 => caps::MASK_12,
            _ => caps::MASK_13,
        };
        f & mask
    }

    /// GET_VERSION (the dispatcher checked SPDMVersion 1.0 and that it came
    /// outside a session). Param1/Param2 are reserved and ignored.
    pub(super) fn get_version(&mut self, req: &[u8]) -> R {
        // GET_VERSION resets the connection (and every session).
        self.reset();
        let mut w = Writer::header(V10, rsp::VERSION, 0, 0);
        w.u8(0).u8(self.cfg.versions.len() as u8);
        for v in &self.cfg.versions {
            w.u16((*v as u16) << 8);
        }
        let msg = w.finish();
        self.conn.vca.extend_from_slice(&req[..4]);
        self.conn.vca.extend_from_slice(&msg);
        self.conn.state = ConnState::AfterVersion;
        Ok(Reply::new(msg))
    }

    /// GET_CAPABILITIES: only right after VERSION; the dispatcher checked that
    /// its SPDMVersion is one VERSION offered, which it selects.
    pub(super) fn get_capabilities(&mut self, req: &[u8]) -> R {
        if self.conn.state != ConnState::AfterVersion {
            return Err(unexpected());
        }
        let ver = req[0];
        let need = match ver {
            V10 => 4,
            V11 => 12,
            _ => 20,
        };
        if req.len() < need {
            return Err(invalid());
        }
        let mut r = Reader::new(&req[4..need]);
        let (mut flags, mut ct, mut dts, mut max_msg) = (0u32, 0u8, 0u32, 0u32);
        if ver >= V11 {
            r.u8();
            ct = r.u8().unwrap_or(0);
            r.u16();
            // Bits a requester of this version does not define are reserved
            // (ignored).
            flags = r.u32().unwrap_or(0) & caps::request_mask(ver);
        }
        if ver >= V12 {
            dts = r.u32().unwrap_or(0);
            max_msg = r.u32().unwrap_or(0);
        }
        if ver >= V11 && !check_requester_flags(flags, ver) {
            return Err(invalid());
        }
        if ver >= V12 {
            if dts < crate::codec::MIN_DATA_TRANSFER_SIZE || dts > max_msg {
                return Err(invalid());
            }
            if dts != max_msg && flags & caps::CHUNK == 0 {
                return Err(invalid());
            }
        }
        if ct > 31 {
            return Err(invalid());
        }
        // 1.3 Param1 bit 0 (SupportedAlgorithms) asks for the algorithms
        // block, which needs a chunked response: only with CHUNK_CAP. (We
        // honour the request by not including the block, as Param1 bit 0 of
        // CAPABILITIES says.)
        if ver >= V13 && req[2] & 0x01 != 0 && flags & caps::CHUNK == 0 {
            return Err(invalid());
        }
        let rsp_caps = self.rsp_caps(ver);
        let mut w = Writer::header(ver, rsp::CAPABILITIES, 0, 0);
        w.u8(0).u8(self.cfg.ct_exponent).u16(0).u32(rsp_caps);
        if ver >= V12 {
            w.u32(self.cfg.data_transfer_size)
                .u32(self.cfg.max_spdm_msg_size);
        }
        let msg = w.finish();
        self.conn.vca.extend_from_slice(&req[..need]);
        self.conn.vca.extend_from_slice(&msg);
        let n = &mut self.conn.neg;
        n.version = ver;
        n.req_caps = flags;
        n.rsp_caps = rsp_caps;
        n.req_data_transfer_size = dts;
        n.req_max_msg_size = max_msg;
        self.conn.state = ConnState::AfterCapabilities;
        Ok(Reply::new(msg))
    }

    /// NEGOTIATE_ALGORITHMS: only right after CAPABILITIES.
    pub(super) fn negotiate_algorithms(&mut self, req: &[u8]) -> R {
        if self.conn.state != ConnState::AfterCapabilities {
            return Err(unexpected());
        }
        let ver = self.conn.neg.version;
        if req.len() < 32 {
            return Err(invalid());
        }
        let mut r = Reader::new(req);
        r.skip(2);
        let num_structs = r.u8().unwrap_or(0) as usize;
        r.u8();
        let length = r.u16().unwrap_or(0) as usize;
        let meas_spec = r.u8().unwrap_or(0);
        let other_params = r.u8().unwrap_or(0);
        let base_asym = r.u32().unwrap_or(0);
        let base_hash = r.u32().unwrap_or(0);
        r.skip(12);
        let ext_asym = r.u8().unwrap_or(0) as usize;
        let ext_hash = r.u8().unwrap_or(0) as usize;
        r.skip(2);
        let max_len = if ver == V10 { 0x40 } else { 0x80 };
        let max_ext = if ver == V10 { 8 } else { 20 };
        if length > req.len() || length > max_len || length < 32 || ext_asym + ext_hash > max_ext {
            return Err(invalid());
        }
        if r.skip(4 * (ext_asym + ext_hash)).is_none() {
            return Err(invalid());
        }
        let mut tables: Vec<(u8, u16)> = Vec::new();
        if ver >= V11 {
            if num_structs > 4 {
                return Err(invalid());
            }
            for _ in 0..num_structs {
                let ty = r.u8().ok_or_else(invalid)?;
                let count = r.u8().ok_or_else(invalid)?;
                if count >> 4 != 2 {
                    return Err(invalid());
                }
                let sup = r.u16().ok_or_else(invalid)?;
                r.skip(4 * (count & 0xF) as usize).ok_or_else(invalid)?;
                if !(2..=5).contains(&ty) || sup == 0 {
                    return Err(invalid());
                }
                // AlgType shall increase from one structure to the next.
                if tables.last().is_some_and(|(t, _)| *t >= ty) {
                    return Err(invalid());
                }
                if tables.iter().any(|(t, _)| *t == ty) {
                    return Err(invalid());
                }
                tables.push((ty, sup));
            }
        }
        if r.pos() != length {
            return Err(invalid());
        }
        // Selection.
        let n = &self.conn.neg;
        let meas_cap = n.rsp_caps & caps::MEAS_MASK != 0;
        let hash_common = base_hash & self.cfg.base_hash;
        let hash = if hash_common & HASH_SHA384 != 0 {
            Some(HashAlgo::Sha384)
        } else if hash_common & HASH_SHA256 != 0 {
            Some(HashAlgo::Sha256)
        } else {
            None
        };
        let asym_common = base_asym & self.cfg.base_asym & self.identity.asym_bits();
        let asym = if asym_common & ASYM_ECDSA_P384 != 0 {
            Some(AsymAlgo::EcdsaP384)
        } else if asym_common & ASYM_ECDSA_P256 != 0 {
            Some(AsymAlgo::EcdsaP256)
        } else {
            None
        };
        let Some(hash) = hash else {
            return Err(invalid());
        };
        let Some(asym) = asym else {
            return Err(invalid());
        };
        let meas_spec_sel = if meas_cap { meas_spec & 0x01 } else { 0 };
        let meas_hash = (meas_spec_sel != 0).then_some(hash);
        let mut dhe = None;
        let mut aead = None;
        let mut ks = false;
        let mut rsp_tables = Vec::new();
        for (ty, sup) in &tables {
            let sel: u16 = match ty {
                2 => {
                    let c = sup & self.cfg.dhe;
                    dhe = if c & DHE_SECP384R1 != 0 {
                        Some(DheGroup::Secp384r1)
                    } else if c & DHE_SECP256R1 != 0 {
                        Some(DheGroup::Secp256r1)
                    } else {
                        None
                    };
                    dhe.map_or(0, |d| d.bits())
                }
                3 => {
                    let c = sup & self.cfg.aead;
                    aead = if c & AEAD_AES_256_GCM != 0 {
                        Some(AeadAlgo::Aes256Gcm)
                    } else if c & AEAD_CHACHA20_POLY1305 != 0 {
                        Some(AeadAlgo::ChaCha20Poly1305)
                    } else {
                        None
                    };
                    aead.map_or(0, |a| a.bits())
                }
                // ReqBaseAsymAlg: the requester's signing algorithm for mutual
                // authentication. This responder has no MUT_AUTH_CAP, so it
                // selects none (DSP0274 1.3 ALGORITHMS: zero when mutual
                // authentication is not supported).
                4 => 0,
                5 => {
                    ks = sup & KEY_SCHEDULE_SPDM != 0;
                    if ks {
                        KEY_SCHEDULE_SPDM
                    } else {
                        0
                    }
                }
                _ => 0,
            };
            rsp_tables.push((*ty, sel));
        }
        let opaque_fmt = if ver >= V12 {
            if other_params & opaque::FMT1 != 0 {
                opaque::FMT1
            } else if other_params & opaque::FMT0 != 0 {
                opaque::FMT0
            } else {
                opaque::FMT_NONE
            }
        } else if ver == V11 {
            opaque::FMT0
        } else {
            opaque::FMT_NONE
        };
        let rsp_len = 36 + 4 * rsp_tables.len();
        let mut w = Writer::header(ver, rsp::ALGORITHMS, rsp_tables.len() as u8, 0);
        w.u16(rsp_len as u16)
            .u8(meas_spec_sel)
            .u8(if ver >= V12 { opaque_fmt } else { 0 });
        w.u32(meas_hash.map_or(0, |h| h.meas_bits()))
            .u32(asym.bits())
            .u32(hash.bits());
        w.zeros(12).u8(0).u8(0).u16(0);
        for (ty, sel) in &rsp_tables {
            w.u8(*ty).u8(0x20).u16(*sel);
        }
        let msg = w.finish();
        self.conn.vca.extend_from_slice(&req[..length]);
        self.conn.vca.extend_from_slice(&msg);
        let n = &mut self.conn.neg;
        n.hash = Some(hash);
        n.asym = Some(asym);
        n.meas_hash = meas_hash;
        n.meas_spec = meas_spec_sel;
        n.dhe = dhe;
        n.aead = aead;
        n.key_schedule = ks;
        n.opaque_fmt = opaque_fmt;
        self.conn.state = ConnState::Negotiated;
        info!(
            "negotiated SPDM {}.{} {:?} {:?} dhe={:?} aead={:?}",
            ver >> 4,
            ver & 0xF,
            hash,
            asym,
            dhe,
            aead
        );
        Ok(Reply::new(msg))
    }
}

/// Consistency rules of the requester's capability flags (DSP0274 1.3
/// GET_CAPABILITIES, Table "Flag fields definitions for the Requester", the
/// same rules libspdm's responder applies); a violation is InvalidRequest.
/// `f` is already masked to the bits `ver` defines.
pub(super) fn check_requester_flags(f: u32, ver: u8) -> bool {
    let bit = |b: u32| f & b != 0;
    let psk = (f >> 10) & 3;
    let ep_info = (f & caps::EP_INFO_MASK) >> 22;
    let multi_key = (f & caps::MULTI_KEY_MASK) >> 26;
    // PSK_CAP 10b and 11b are reserved for a requester.
    if psk >= 2 {
        return false;
    }
    if bit(caps::KEY_EX) || psk != 0 {
        // A session needs MAC (and maybe ENCRYPT).
        if !bit(caps::MAC) && !bit(caps::ENCRYPT) {
            return false;
        }
    } else if bit(caps::MAC)
        || bit(caps::ENCRYPT)
        || bit(caps::HANDSHAKE_IN_THE_CLEAR)
        || bit(caps::HBEAT)
        || bit(caps::KEY_UPD)
        || (ver >= V13 && bit(caps::EVENT))
    {
        // Session features without a way to open a session.
        return false;
    }
    if !bit(caps::KEY_EX) && psk == 1 && bit(caps::HANDSHAKE_IN_THE_CLEAR) {
        return false;
    }
    if bit(caps::CERT) || bit(caps::PUB_KEY_ID) {
        if bit(caps::CERT) && bit(caps::PUB_KEY_ID) {
            return false;
        }
        // A key is useless without a flow that uses it (1.3 adds signed
        // GET_ENDPOINT_INFO).
        let signed_ep_info = ver >= V13 && ep_info == 2;
        if !(bit(caps::CHAL) || bit(caps::KEY_EX) || signed_ep_info) {
            return false;
        }
    } else if bit(caps::CHAL) || bit(caps::MUT_AUTH) || (ver >= V13 && ep_info == 2) {
        return false;
    }
    if bit(caps::MUT_AUTH) && !bit(caps::KEY_EX) && !bit(caps::CHAL) {
        return false;
    }
    if ver == V11 && bit(caps::MUT_AUTH) && !bit(caps::ENCAP) {
        return false;
    }
    if ver >= V13 {
        // Reserved encodings.
        if ep_info == 3 || multi_key == 3 {
            return false;
        }
        if multi_key != 0 && (bit(caps::PUB_KEY_ID) || !bit(caps::CERT)) {
            return false;
        }
    }
    true
}
