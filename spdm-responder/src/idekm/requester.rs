//! IDE_KM from the requester side: a TSM (or a test) programs a device's
//! IDE keys over an established SPDM session. Every response is checked the
//! way DMTF libspdm's requester checks it (object ID, echoed stream, slot and
//! port); KEY_PROG's in-memory copies of the key are zeroized.

use super::codec::{KpAckStatus, QueryResp, Request, Response, StreamHeader};
use super::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream};
use crate::error::RequesterError;
use crate::requester::{Requester, Transport};
use crate::vendor::{PCISIG_VENDOR_ID, STANDARD_ID_PCISIG};
use zeroize::Zeroize;

/// A failed IDE_KM step of a whole key set.
#[derive(Debug, thiserror::Error)]
pub enum IdeKmError {
    /// The request failed (transport, SPDM ERROR, malformed response).
    #[error("{step} {slot}: {source}")]
    Requester {
        /// KEY_PROG, K_SET_GO or K_SET_STOP.
        step: &'static str,
        /// The slot (`K0|RX|PR`).
        slot: String,
        /// Why.
        source: RequesterError,
    },
    /// The device acknowledged KEY_PROG with another status than Success.
    #[error("KEY_PROG {slot}: KP_ACK status {status}")]
    KpAck {
        /// The slot.
        slot: String,
        /// The status (name, or the raw byte of an undefined one).
        status: String,
    },
}

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

    /// KEY_PROG and K_SET_GO of every slot of key set `set` of
    /// `stream_id`: the receive keys first, then the transmit keys, so the
    /// port never transmits with a key its partner cannot receive yet (for a
    /// refresh, arming TX is the switch to the new set). `key` gives each
    /// slot's key.
    pub fn ide_km_program_set(
        &mut self,
        sid: u32,
        port_index: u8,
        stream_id: u8,
        set: KeySet,
        key: impl Fn(KeySlot) -> IdeKey,
    ) -> Result<(), IdeKmError> {
        let fail = |step, slot: KeySlot| {
            move |source| IdeKmError::Requester {
                step,
                slot: slot.name(),
                source,
            }
        };
        for d in [KeyDirection::Rx, KeyDirection::Tx] {
            for ss in SubStream::ALL {
                let slot = KeySlot::new(set, d, ss);
                match self
                    .ide_km_key_prog(sid, stream_id, slot, port_index, &key(slot))
                    .map_err(fail("KEY_PROG", slot))?
                {
                    Ok(KpAckStatus::Success) => {}
                    other => {
                        return Err(IdeKmError::KpAck {
                            slot: slot.name(),
                            status: match other {
                                Ok(s) => format!("{s:?}"),
                                Err(raw) => format!("{raw:#04x}"),
                            },
                        })
                    }
                }
                self.ide_km_key_set_go(sid, stream_id, slot, port_index)
                    .map_err(fail("K_SET_GO", slot))?;
            }
        }
        Ok(())
    }

    /// K_SET_STOP of every slot of key set `set` of `stream_id`: transmit
    /// keys first, then receive keys.
    pub fn ide_km_stop_set(
        &mut self,
        sid: u32,
        port_index: u8,
        stream_id: u8,
        set: KeySet,
    ) -> Result<(), IdeKmError> {
        for d in [KeyDirection::Tx, KeyDirection::Rx] {
            for ss in SubStream::ALL {
                let slot = KeySlot::new(set, d, ss);
                self.ide_km_key_set_stop(sid, stream_id, slot, port_index)
                    .map_err(|source| IdeKmError::Requester {
                        step: "K_SET_STOP",
                        slot: slot.name(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    fn go_stop(&mut self, sid: u32, req: Request, h: StreamHeader) -> Result<(), RequesterError> {
        match self.ide_km(sid, &req)? {
            Response::GoStopAck(a) if a == h => Ok(()),
            _ => Err(malformed("K_GOSTOP_ACK")),
        }
    }
}
