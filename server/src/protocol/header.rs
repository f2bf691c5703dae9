//! The 16-byte header every vfio-user message starts with.

use super::{Command, ProtocolError};

/// Size of the message header in bytes.
pub const HEADER_SIZE: usize = 16;

/// Type bits of the header flags (bits 0-3).
const FLAG_TYPE_MASK: u32 = 0xf;
/// The message does not want a reply.
pub const FLAG_NO_REPLY: u32 = 1 << 4;
/// The reply reports an error; the error field is valid.
pub const FLAG_ERROR: u32 = 1 << 5;
const FLAGS_KNOWN: u32 = FLAG_TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR;

/// Whether a message is a command or a reply to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// A request that (unless `no_reply`) expects a reply.
    Command,
    /// A reply to an earlier command with the same message id.
    Reply,
}

/// A decoded message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message id, chosen by the sender of a command and echoed in its reply.
    pub msg_id: u16,
    /// Raw command number (kept raw so unknown commands can still be answered).
    pub command: u16,
    /// Size of the whole message including this header.
    pub msg_size: u32,
    /// Command or reply.
    pub kind: MessageType,
    /// The sender asks for no reply (commands only).
    pub no_reply: bool,
    /// For replies: the command failed and `error` holds an errno (may be 0).
    pub error: Option<u32>,
}

impl Header {
    /// Decodes a header, rejecting reserved flag bits and unknown types.
    pub fn decode(buf: &[u8; HEADER_SIZE]) -> Result<Header, ProtocolError> {
        let msg_id = u16::from_le_bytes([buf[0], buf[1]]);
        let command = u16::from_le_bytes([buf[2], buf[3]]);
        let msg_size = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let flags = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let error = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
        if (msg_size as usize) < HEADER_SIZE {
            return Err(ProtocolError::MessageTooShort(msg_size));
        }
        let kind = match flags & FLAG_TYPE_MASK {
            0 => MessageType::Command,
            1 => MessageType::Reply,
            other => return Err(ProtocolError::BadMessageType(other)),
        };
        if flags & !FLAGS_KNOWN != 0 {
            return Err(ProtocolError::ReservedFlags(flags));
        }
        Ok(Header {
            msg_id,
            command,
            msg_size,
            kind,
            no_reply: flags & FLAG_NO_REPLY != 0,
            error: (flags & FLAG_ERROR != 0).then_some(error),
        })
    }

    /// A command header for `command` with a payload of `payload_len` bytes.
    pub fn command(msg_id: u16, command: Command, payload_len: usize) -> Header {
        Header {
            msg_id,
            command: command as u16,
            msg_size: (HEADER_SIZE + payload_len) as u32,
            kind: MessageType::Command,
            no_reply: false,
            error: None,
        }
    }

    /// The reply header answering `self` with a payload of `payload_len` bytes.
    pub fn reply(&self, payload_len: usize) -> Header {
        Header {
            msg_id: self.msg_id,
            command: self.command,
            msg_size: (HEADER_SIZE + payload_len) as u32,
            kind: MessageType::Reply,
            no_reply: false,
            error: None,
        }
    }

    /// The error reply answering `self` (header only, as the spec demands).
    pub fn error_reply(&self, errno: i32) -> Header {
        Header {
            msg_id: self.msg_id,
            command: self.command,
            msg_size: HEADER_SIZE as u32,
            kind: MessageType::Reply,
            no_reply: false,
            error: Some(errno as u32),
        }
    }

    /// Payload length (message size minus the header).
    pub fn payload_len(&self) -> usize {
        self.msg_size as usize - HEADER_SIZE
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut flags = match self.kind {
            MessageType::Command => 0,
            MessageType::Reply => 1,
        };
        if self.no_reply {
            flags |= FLAG_NO_REPLY;
        }
        if self.error.is_some() {
            flags |= FLAG_ERROR;
        }
        let mut out = [0u8; HEADER_SIZE];
        out[0..2].copy_from_slice(&self.msg_id.to_le_bytes());
        out[2..4].copy_from_slice(&self.command.to_le_bytes());
        out[4..8].copy_from_slice(&self.msg_size.to_le_bytes());
        out[8..12].copy_from_slice(&flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.error.unwrap_or(0).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = Header::command(7, Command::RegionRead, 16);
        let d = Header::decode(&h.encode()).unwrap();
        assert_eq!(h, d);
        let e = d.error_reply(libc::EINVAL);
        let d2 = Header::decode(&e.encode()).unwrap();
        assert_eq!(d2.error, Some(libc::EINVAL as u32));
        assert_eq!(d2.kind, MessageType::Reply);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut raw = Header::command(1, Command::Version, 0).encode();
        raw[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            Header::decode(&raw),
            Err(ProtocolError::MessageTooShort(8))
        ));
        let mut raw = Header::command(1, Command::Version, 0).encode();
        raw[8] = 2;
        assert!(matches!(
            Header::decode(&raw),
            Err(ProtocolError::BadMessageType(2))
        ));
        let mut raw = Header::command(1, Command::Version, 0).encode();
        raw[9] = 1;
        assert!(matches!(
            Header::decode(&raw),
            Err(ProtocolError::ReservedFlags(_))
        ));
    }
}
