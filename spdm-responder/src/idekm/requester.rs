//! IDE_KM from the requester side: a TSM (or a test) programs a device's
//! IDE keys over an established SPDM session. Every response is checked the
//! way DMTF libspdm's requester checks it (object ID, echoed stream, slot and
//! port); KEY_PROG's in-memory copies of the key are zeroized.

use super::codec::{KpAckStatus, QueryResp, Request, Response, StreamHeader};
use super::{IdeKey, KeySlot};
use crate::error::RequesterError;
use crate::requester::{Requester, Transport};
use crate::vendor::{PCISIG_VENDOR_ID, STANDARD_ID_PCISIG};
use zeroize::Zeroize;

fn malformed(what: &'static str) -> RequesterError {
    RequesterError::Malformed(what)
}

impl<T: Transport> Requester<T> {
    /// Sends one IDE_KM request in session `sid` and decodes the response.
    pub fn ide_km(&mut self, sid: u32, req: &Request) -> Result<Response, RequesterError> {
        let mut payload = req.encode();
        let r = self.vendor_request(
            Some(sid),
            STANDARD_ID_PCISIG,
            &PCISIG_VENDOR_ID.to_le_bytes(),
            &payload,
        );
        payload.zeroize();
        Response::decode(&r?).map_err(|_| malformed("IDE_KM response"))
    }

    /// QUERY: the port's identity and IDE register image.
    pub fn ide_km_query(&mut self, sid: u32, port_index: u8) -> Result<QueryResp, RequesterError> {
        match self.ide_km(sid, &Request::Query { port_index })? {
            Response::QueryResp(q) if q.port_index == port_index => Ok(q),
            _ => Err(malformed("QUERY_RESP")),
        }
    }

    /// KEY_PROG; returns the KP_ACK status (the raw byte when it is not a
    /// defined status).
    pub fn ide_km_key_prog(
        &mut self,
        sid: u32,
        stream_id: u8,
        slot: KeySlot,
        port_index: u8,
        key: &IdeKey,
    ) -> Result<Result<KpAckStatus, u8>, RequesterError> {
        let header = StreamHeader::new(stream_id, slot, port_index);
        let req = Request::KeyProg {
            header,
            key: key.clone(),
        };
        match self.ide_km(sid, &req)? {
            Response::KpAck { header: h, status } if h == header => {
                Ok(KpAckStatus::from_u8(status).ok_or(status))
            }
            _ => Err(malformed("KP_ACK")),
        }
    }

    /// K_SET_GO.
    pub fn ide_km_key_set_go(
        &mut self,
        sid: u32,
        stream_id: u8,
        slot: KeySlot,
        port_index: u8,
    ) -> Result<(), RequesterError> {
        let h = StreamHeader::new(stream_id, slot, port_index);
        self.go_stop(sid, Request::KSetGo(h), h)
    }

    /// K_SET_STOP.
    pub fn ide_km_key_set_stop(
        &mut self,
        sid: u32,
        stream_id: u8,
        slot: KeySlot,
        port_index: u8,
    ) -> Result<(), RequesterError> {
        let h = StreamHeader::new(stream_id, slot, port_index);
        self.go_stop(sid, Request::KSetStop(h), h)
    }

    fn go_stop(&mut self, sid: u32, req: Request, h: StreamHeader) -> Result<(), RequesterError> {
        match self.ide_km(sid, &req)? {
            Response::GoStopAck(a) if a == h => Ok(()),
            _ => Err(malformed("K_GOSTOP_ACK")),
        }
    }
}
