//! VENDOR_DEFINED_REQUEST: handed to the handler registered in [`crate::vendor`]
//! (IDE_KM, TDISP...). The dispatcher already checked the version, the
//! connection state and that a session, if any, is in its application phase.

use super::{fail, invalid, unexpected, unsupported, Reply, Responder, R};
use crate::codec::{rsp, Reader, Writer, V12};
use crate::error::ErrorCode;
use crate::vendor::VendorContext;

impl Responder {
    pub(super) fn vendor_defined(&mut self, req: &[u8], sid: Option<u32>) -> R {
        // Param1/Param2 are reserved in 1.0-1.3 (ignored).
        let mut r = Reader::new(&req[4..]);
        let std_id = r.u16().ok_or_else(invalid)?;
        let vlen = r.u8().ok_or_else(invalid)? as usize;
        let vendor_id = r.take(vlen).ok_or_else(invalid)?.to_vec();
        let plen = r.u16().ok_or_else(invalid)? as usize;
        let payload = r.take(plen).ok_or_else(invalid)?.to_vec();
        let version = self.conn.neg.version;
        let Some((key, handler)) = self.vendors.find(std_id, &vendor_id, &payload) else {
            return Err(unsupported(req[1]));
        };
        if key.require_session && sid.is_none() {
            return Err(if version >= V12 {
                fail(ErrorCode::SessionRequired)
            } else {
                unexpected()
            });
        }
        let ctx = VendorContext {
            session_id: sid,
            version,
            standard_id: std_id,
            vendor_id: vendor_id.clone(),
        };
        let out = handler.handle(&ctx, &payload).map_err(fail)?;
        if out.len() > u16::MAX as usize {
            return Err(fail(ErrorCode::Unspecified));
        }
        let mut w = Writer::header(version, rsp::VENDOR_DEFINED_RESPONSE, 0, 0);
        w.u16(std_id)
            .u8(vlen as u8)
            .bytes(&vendor_id)
            .u16(out.len() as u16)
            .bytes(&out);
        Ok(Reply::new(w.finish()))
    }
}
