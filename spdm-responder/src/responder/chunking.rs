//! Chunked transfers (1.2+): CHUNK_SEND, CHUNK_GET and large responses.

use log::debug;

use super::{
    fail, invalid, unexpected, unsupported, ChunkIn, ChunkOut, ConnState, Reply, Responder, R,
};
use crate::codec::{caps, error_response, rsp, Reader, Writer, V12};
use crate::error::ErrorCode;

impl Responder {
    pub(super) fn maybe_chunk_response(&mut self, r: Reply, sid: Option<u32>) -> R {
        let n = &self.conn.neg;
        if n.version < V12
            || n.req_data_transfer_size == 0
            || r.msg.len() <= n.req_data_transfer_size as usize
        {
            return Ok(r);
        }
        let both_chunk = n.req_caps & caps::CHUNK != 0 && n.rsp_caps & caps::CHUNK != 0;
        if !both_chunk || r.msg.len() > n.req_max_msg_size as usize {
            return Err(fail(ErrorCode::ResponseTooLarge));
        }
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        debug!(
            "response of {} bytes exceeds DataTransferSize; LargeResponse handle {handle}",
            r.msg.len()
        );
        self.chunk_out = Some(ChunkOut {
            handle,
            data: r.msg,
            next_seq: 0,
            offset: 0,
            session: sid,
        });
        let mut e = error_response(self.conn.neg.version, ErrorCode::LargeResponse, 0);
        e.push(handle);
        Ok(Reply {
            msg: e,
            post: r.post,
        })
    }

    pub(super) fn chunk_get(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if self.conn.state < ConnState::Negotiated || !self.session_caps_ok(caps::CHUNK) {
            return Err(unsupported(req[1]));
        }
        if req.len() < 6 {
            return Err(invalid());
        }
        let handle = req[3];
        let seq = u16::from_le_bytes([req[4], req[5]]);
        let dts = self.conn.neg.req_data_transfer_size as usize;
        let ver = self.conn.neg.version;
        let Some(c) = self.chunk_out.as_mut() else {
            return Err(unexpected());
        };
        // A wrong handle or sequence number is refused; the transfer goes on.
        if c.handle != handle || c.next_seq != seq || c.session != sid {
            return Err(invalid());
        }
        let hdr = 12 + if seq == 0 { 4 } else { 0 };
        let room = dts.saturating_sub(hdr).max(1);
        let len = room.min(c.data.len() - c.offset);
        let last = c.offset + len == c.data.len();
        let mut w = Writer::header(ver, rsp::CHUNK_RESPONSE, u8::from(last), handle);
        w.u16(seq).u16(0).u32(len as u32);
        if seq == 0 {
            w.u32(c.data.len() as u32);
        }
        w.bytes(&c.data[c.offset..c.offset + len]);
        c.offset += len;
        c.next_seq = c.next_seq.wrapping_add(1);
        if last {
            self.chunk_out = None;
        }
        Ok(Reply::new(w.finish()))
    }

    pub(super) fn chunk_send(&mut self, req: &[u8], sid: Option<u32>) -> R {
        if self.conn.state < ConnState::Negotiated || !self.session_caps_ok(caps::CHUNK) {
            return Err(unsupported(req[1]));
        }
        let ver = self.conn.neg.version;
        let last = req[2] & 0x01 != 0;
        let handle = req[3];
        let mut r = Reader::new(&req[4..]);
        let seq = r.u16().ok_or_else(invalid)?;
        r.u16().ok_or_else(invalid)?;
        let size = r.u32().ok_or_else(invalid)? as usize;
        let early_error = |this: &mut Self, code: ErrorCode| -> R {
            this.chunk_in = None;
            let mut w = Writer::header(ver, rsp::CHUNK_SEND_ACK, 0x01, handle);
            w.u16(seq).bytes(&error_response(ver, code, 0));
            Ok(Reply::new(w.finish()))
        };
        if seq == 0 {
            let total = r.u32().ok_or_else(invalid)? as usize;
            if total <= self.cfg.data_transfer_size as usize
                || total > self.cfg.max_spdm_msg_size as usize
            {
                return early_error(self, ErrorCode::InvalidRequest);
            }
            self.chunk_in = Some(ChunkIn {
                handle,
                data: Vec::with_capacity(total.min(1 << 16)),
                expected_total: total,
                next_seq: 0,
                session: sid,
            });
        }
        let chunk = match r.take(size) {
            Some(c) if size > 0 => c,
            _ => return early_error(self, ErrorCode::InvalidRequest),
        };
        let Some(ci) = self.chunk_in.as_mut() else {
            return early_error(self, ErrorCode::UnexpectedRequest);
        };
        if ci.handle != handle
            || ci.next_seq != seq
            || ci.session != sid
            || ci.data.len() + size > ci.expected_total
        {
            return early_error(self, ErrorCode::InvalidRequest);
        }
        ci.data.extend_from_slice(chunk);
        ci.next_seq = ci.next_seq.wrapping_add(1);
        let complete = ci.data.len() == ci.expected_total;
        if last != complete {
            return early_error(self, ErrorCode::InvalidRequest);
        }
        let mut w = Writer::header(ver, rsp::CHUNK_SEND_ACK, 0, handle);
        w.u16(seq);
        if !last {
            return Ok(Reply::new(w.finish()));
        }
        let big = self.chunk_in.take().map(|c| c.data).unwrap_or_default();
        let Reply { msg: inner, post } = self.respond(&big, sid, true);
        w.bytes(&inner);
        Ok(Reply {
            msg: w.finish(),
            post,
        })
    }
}
