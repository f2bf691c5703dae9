//! VERSION negotiation: the client's proposal and the server's (small) reply.

use super::pasid::{PasidFeatures, CAPABILITY as PASID_CAPABILITY};
use super::{ProtocolError, Reader, Writer};
use serde_json::{Map, Value};

/// Default `max_msg_fds` when the peer does not state one.
const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Default `max_data_xfer_size` when the peer does not state one.
pub const DEFAULT_MAX_DATA_XFER: u32 = 1 << 20;
/// Default `max_dma_maps`.
const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
/// Default `pgsizes`: 4 KiB pages only.
const DEFAULT_PGSIZES: u64 = 4096;

/// What the client proposed in its VERSION message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCaps {
    /// Fds the client accepts in one message.
    pub max_msg_fds: u32,
    /// Largest DMA_READ/WRITE `count` the client accepts.
    pub max_data_xfer_size: u32,
    /// Page sizes for DMA maps.
    pub pgsizes: u64,
    /// DMA windows the client may create.
    pub max_dma_maps: u32,
    /// Client may send REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// The PASID/ATS/PRI extension features the client offers.
    pub pasid: Option<PasidFeatures>,
    /// Names of the capabilities present in the proposal (the reply may only
    /// contain a subset of them).
    pub proposed: Vec<String>,
}

impl Default for ClientCaps {
    fn default() -> Self {
        ClientCaps {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            pgsizes: DEFAULT_PGSIZES,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            write_multiple: false,
            pasid: None,
            proposed: Vec::new(),
        }
    }
}

/// A decoded VERSION request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRequest {
    /// Proposed major version.
    pub major: u16,
    /// Proposed minor version.
    pub minor: u16,
    /// Proposed capabilities.
    pub caps: ClientCaps,
}

fn as_u32(v: &Value, name: &str) -> Result<u32, ProtocolError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ProtocolError::BadVersionData(format!("{name} must be a 32-bit number")))
}

impl VersionRequest {
    /// Decodes a VERSION payload: major, minor and optional NUL-terminated JSON.
    pub fn decode(payload: &[u8]) -> Result<VersionRequest, ProtocolError> {
        let mut r = Reader::new(payload, "VERSION");
        let major = r.u16()?;
        let minor = r.u16()?;
        let mut caps = ClientCaps::default();
        let data = r.rest();
        if data.is_empty() {
            return Ok(VersionRequest { major, minor, caps });
        }
        let nul = data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| ProtocolError::BadVersionData("JSON is not NUL-terminated".into()))?;
        if data[nul + 1..].iter().any(|&b| b != 0) {
            return Err(ProtocolError::BadVersionData(
                "bytes after the terminating NUL".into(),
            ));
        }
        let json: Value = serde_json::from_slice(&data[..nul])
            .map_err(|e| ProtocolError::BadVersionData(e.to_string()))?;
        let obj = json
            .as_object()
            .ok_or_else(|| ProtocolError::BadVersionData("not a JSON object".into()))?;
        let Some(c) = obj.get("capabilities") else {
            return Ok(VersionRequest { major, minor, caps });
        };
        let c = c
            .as_object()
            .ok_or_else(|| ProtocolError::BadVersionData("capabilities is not an object".into()))?;
        for (name, value) in c {
            match name.as_str() {
                "max_msg_fds" => caps.max_msg_fds = as_u32(value, name)?,
                "max_data_xfer_size" => caps.max_data_xfer_size = as_u32(value, name)?,
                "max_dma_maps" => caps.max_dma_maps = as_u32(value, name)?,
                "pgsizes" => {
                    caps.pgsizes = value.as_u64().ok_or_else(|| {
                        ProtocolError::BadVersionData("pgsizes must be a number".into())
                    })?;
                    if caps.pgsizes & 0xfff != 0 || caps.pgsizes == 0 {
                        return Err(ProtocolError::BadVersionData(format!(
                            "pgsizes {:#x} is not a set of page sizes of at least 4 KiB",
                            caps.pgsizes
                        )));
                    }
                }
                "write_multiple" => {
                    caps.write_multiple = value.as_bool().ok_or_else(|| {
                        ProtocolError::BadVersionData("write_multiple must be a boolean".into())
                    })?
                }
                PASID_CAPABILITY => caps.pasid = Some(PasidFeatures::from_json(value)?),
                _ => {}
            }
            caps.proposed.push(name.clone());
        }
        Ok(VersionRequest { major, minor, caps })
    }
}

/// The capabilities this server supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCaps {
    /// Fds the server accepts in one message.
    pub max_msg_fds: u32,
    /// Largest REGION_READ/WRITE `count` the server accepts.
    pub max_data_xfer_size: u32,
    /// Page sizes for DMA maps.
    pub pgsizes: u64,
    /// DMA windows the server keeps at once.
    pub max_dma_maps: u32,
    /// Server handles REGION_WRITE_MULTI.
    pub write_multiple: bool,
    /// PASID/ATS/PRI extension features the server offers.
    pub pasid: PasidFeatures,
}

impl Default for ServerCaps {
    fn default() -> Self {
        ServerCaps {
            max_msg_fds: 16,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER,
            pgsizes: DEFAULT_PGSIZES,
            max_dma_maps: DEFAULT_MAX_DMA_MAPS,
            write_multiple: true,
            pasid: PasidFeatures::ALL,
        }
    }
}

impl ServerCaps {
    /// Builds the VERSION reply payload for `req`: same major, minor 0, and a
    /// compact NUL-terminated JSON naming only capabilities the client
    /// proposed (QEMU's receive buffer is only as large as its own request).
    pub fn reply_payload(&self, req: &VersionRequest) -> Vec<u8> {
        let mut caps = Map::new();
        for name in &req.caps.proposed {
            let value = match name.as_str() {
                "max_msg_fds" => Value::from(self.max_msg_fds),
                "max_data_xfer_size" => Value::from(self.max_data_xfer_size),
                "pgsizes" => Value::from(self.pgsizes & req.caps.pgsizes),
                "max_dma_maps" => Value::from(self.max_dma_maps.min(req.caps.max_dma_maps)),
                "write_multiple" => Value::from(self.write_multiple && req.caps.write_multiple),
                PASID_CAPABILITY => self.pasid_agreed(req).to_json(),
                _ => continue,
            };
            caps.insert(name.clone(), value);
        }
        let mut root = Map::new();
        root.insert("capabilities".into(), Value::Object(caps));
        let json = Value::Object(root).to_string();
        let mut w = Writer::with_capacity(4 + json.len() + 1);
        w.u16(req.major).u16(0).bytes(json.as_bytes()).bytes(&[0]);
        w.into_vec()
    }
}

impl ServerCaps {
    /// The extension features both sides support (none if the client did
    /// not propose the extension).
    pub fn pasid_agreed(&self, req: &VersionRequest) -> PasidFeatures {
        req.caps
            .pasid
            .map_or(PasidFeatures::default(), |c| c.intersect(self.pasid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(json: &str) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0];
        v.extend_from_slice(json.as_bytes());
        v.push(0);
        v
    }

    #[test]
    fn qemu_proposal_gets_a_small_subset_reply() {
        let p = payload(
            r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true,"migration":{"pgsize":4096,"max_bitmap_size":268435456}}}"#,
        );
        let req = VersionRequest::decode(&p).unwrap();
        assert_eq!(req.caps.max_msg_fds, 16);
        assert!(req.caps.write_multiple);
        let reply = ServerCaps::default().reply_payload(&req);
        assert!(reply.len() + 16 < 200, "reply must fit QEMU's buffer");
        let json: Value = serde_json::from_slice(&reply[4..reply.len() - 1]).unwrap();
        assert!(json["capabilities"].get("migration").is_none());
        assert_eq!(json["capabilities"]["write_multiple"], true);
    }

    #[test]
    fn pasid_extension_is_answered_only_when_proposed() {
        let p = payload(
            r#"{"capabilities":{"max_msg_fds":16,"pasid":{"ats":true,"pri":true,"dma":false}}}"#,
        );
        let req = VersionRequest::decode(&p).unwrap();
        let reply = ServerCaps::default().reply_payload(&req);
        let json: Value = serde_json::from_slice(&reply[4..reply.len() - 1]).unwrap();
        assert_eq!(json["capabilities"]["pasid"]["pri"], true);
        assert!(json["capabilities"]["pasid"].get("dma").is_none());
        assert!(reply.len() <= p.len(), "reply never outgrows the proposal");
        let plain = VersionRequest::decode(&payload(r#"{"capabilities":{"max_msg_fds":16}}"#));
        let reply = ServerCaps::default().reply_payload(&plain.unwrap());
        assert!(!String::from_utf8_lossy(&reply).contains("pasid"));
        let bad = payload(r#"{"capabilities":{"pasid":true}}"#);
        assert!(VersionRequest::decode(&bad).is_err());
    }

    #[test]
    fn rejects_bad_json() {
        assert!(VersionRequest::decode(&payload("{")).is_err());
        assert!(VersionRequest::decode(&payload("[1]")).is_err());
        assert!(
            VersionRequest::decode(&payload(r#"{"capabilities":{"max_msg_fds":-1}}"#)).is_err()
        );
        assert!(VersionRequest::decode(&[0, 0, 0, 0, b'{', b'}']).is_err());
        assert!(VersionRequest::decode(&[0, 0]).is_err());
    }

    #[test]
    fn no_json_uses_defaults() {
        let req = VersionRequest::decode(&[0, 0, 0, 0]).unwrap();
        assert_eq!(req.caps, ClientCaps::default());
    }
}
