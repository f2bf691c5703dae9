//! UNIX-socket transport: message framing, SCM_RIGHTS fd passing, the listening
//! socket (created 0600) and the shared sender used for replies and for
//! server-to-client requests.

pub mod bufpool;
mod listener;

pub use listener::{FileKind, ListenError, Listener};

use crate::protocol::{Header, ProtocolError, HEADER_SIZE};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use thiserror::Error;

/// Most fds accepted in one message (anything beyond is an error; the kernel
/// closes what does not fit the control buffer and we see MSG_CTRUNC).
pub const MAX_RECV_FDS: usize = 64;

/// A message as received: header, payload and the fds that came with it.
#[derive(Debug)]
pub struct Message {
    /// Decoded header.
    pub header: Header,
    /// Payload (message size minus header).
    pub payload: Vec<u8>,
    /// Fds received with the message (closed when dropped).
    pub fds: Vec<OwnedFd>,
    /// The control data was truncated: the peer sent more fds than we accept.
    pub fds_truncated: bool,
}

impl Drop for Message {
    fn drop(&mut self) {
        // The payload buffer goes back to the receiving thread's pool.
        bufpool::give(std::mem::take(&mut self.payload));
    }
}

/// Errors while receiving.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("peer closed the connection mid-message ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The header cannot be trusted: message boundaries are lost.
    #[error("framing lost: {0}")]
    Framing(#[from] ProtocolError),
    /// The header's flags are invalid (unknown message type, reserved bits)
    /// but its size is usable: the payload was drained, so the stream is
    /// still in frame and an error reply can be sent.
    #[error("malformed header of message {msg_id} (drained): {error}")]
    BadHeader {
        /// Message id.
        msg_id: u16,
        /// Raw command number.
        command: u16,
        /// Raw header flags.
        flags: u32,
        /// What is wrong.
        error: ProtocolError,
    },
    /// The message is larger than we accept; its payload was drained, so the
    /// stream is still in frame and an error reply can be sent.
    #[error("message of {size} bytes exceeds the {limit}-byte limit (drained)")]
    Oversized {
        /// The message's header.
        header: Header,
        /// Claimed size.
        size: u32,
        /// Our limit.
        limit: usize,
    },
    /// A socket error.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

fn to_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Reports a read timeout that expired after a message began as `TimedOut`:
/// the peer stalled mid-message and framing is lost. A timeout before the
/// first byte of a message stays `WouldBlock`: the peer is merely idle.
fn mid_message(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stalled in the middle of a message",
        )
    } else {
        e
    }
}

/// A control-message buffer with room for [`MAX_RECV_FDS`] fds.
fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!([RawFd; MAX_RECV_FDS])
}

/// Reads exactly `buf.len()` bytes, collecting fds that arrive with them;
/// `cmsg` (from [`cmsg_buffer`]) is scratch space, reused across calls.
/// Returns the number of bytes read before EOF (== len on success).
fn recv_exact(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let msg = match recvmsg::<UnixAddr>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(e) if got > 0 => return Err(mid_message(to_io(e))),
            Err(e) => return Err(to_io(e)),
        };
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            *truncated = true;
        }
        let n = msg.bytes;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: the kernel just installed this descriptor in our
                        // table for us (SCM_RIGHTS); nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        if n == 0 {
            return Ok(got);
        }
        got += n;
    }
    Ok(got)
}

/// Receives one whole message from `stream`. `max_payload` bounds the payload
/// the caller accepts; larger messages are drained and reported as
/// [`TransportError::Oversized`].
pub fn recv_message(stream: &UnixStream, max_payload: usize) -> Result<Message, TransportError> {
    // One control-message buffer per receiving thread, reused for every message.
    thread_local! {
        static CMSG: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(cmsg_buffer());
    }
    CMSG.with(|c| recv_with(stream.as_raw_fd(), max_payload, &mut c.borrow_mut()))
}

fn recv_with(fd: RawFd, max_payload: usize, cmsg: &mut Vec<u8>) -> Result<Message, TransportError> {
    let mut fds = Vec::new();
    let mut truncated = false;
    let mut hdr = [0u8; HEADER_SIZE];
    let got = recv_exact(fd, &mut hdr, cmsg, &mut fds, &mut truncated)?;
    if got == 0 {
        return Err(TransportError::Closed);
    }
    if got < HEADER_SIZE {
        return Err(TransportError::Truncated {
            got,
            want: HEADER_SIZE,
        });
    }
    let header = match Header::decode(&hdr) {
        Ok(h) => h,
        Err(e @ ProtocolError::MessageTooShort(_)) => return Err(e.into()),
        Err(error) => {
            // The size field passed its check: skip the payload and stay in frame.
            let size = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
            drain(
                fd,
                size.saturating_sub(HEADER_SIZE),
                &mut fds,
                &mut truncated,
            )?;
            return Err(TransportError::BadHeader {
                msg_id: u16::from_le_bytes([hdr[0], hdr[1]]),
                command: u16::from_le_bytes([hdr[2], hdr[3]]),
                flags: u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]),
                error,
            });
        }
    };
    let len = header.payload_len();
    if len > max_payload {
        drain(fd, len, &mut fds, &mut truncated)?;
        return Err(TransportError::Oversized {
            header,
            size: header.msg_size,
            limit: max_payload + HEADER_SIZE,
        });
    }
    let mut payload = bufpool::take(len);
    let got = recv_exact(fd, &mut payload, cmsg, &mut fds, &mut truncated).map_err(mid_message)?;
    if got < len {
        return Err(TransportError::Truncated {
            got: got + HEADER_SIZE,
            want: len + HEADER_SIZE,
        });
    }
    Ok(Message {
        header,
        payload,
        fds,
        fds_truncated: truncated,
    })
}

fn drain(fd: RawFd, mut len: usize, fds: &mut Vec<OwnedFd>, tr: &mut bool) -> io::Result<()> {
    let mut scratch = vec![0u8; 64 * 1024];
    let mut cmsg = cmsg_buffer();
    while len > 0 {
        let chunk = len.min(scratch.len());
        let got = recv_exact(fd, &mut scratch[..chunk], &mut cmsg, fds, tr).map_err(mid_message)?;
        if got < chunk {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed while an oversized message was drained",
            ));
        }
        len -= chunk;
    }
    Ok(())
}

/// Sends `header` + `payload` with `fds` as SCM_RIGHTS on `stream`.
pub fn send_message(
    stream: &UnixStream,
    header: &Header,
    payload: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    let hdr = header.encode();
    let total = hdr.len() + payload.len();
    let mut sent = 0usize;
    let fd = stream.as_raw_fd();
    while sent < total {
        let (a, b): (&[u8], &[u8]) = if sent < hdr.len() {
            (&hdr[sent..], payload)
        } else {
            (&payload[sent - hdr.len()..], &[])
        };
        let iov = [IoSlice::new(a), IoSlice::new(b)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
            &rights
        } else {
            &[]
        };
        match sendmsg::<UnixAddr>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => sent += n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(to_io(e)),
        }
    }
    Ok(())
}

/// The sending half of a connection, shared by the request loop (replies) and
/// worker threads (server-to-client DMA requests). Whole messages are written
/// under a lock so they never interleave.
#[derive(Debug)]
pub struct Sender {
    stream: Mutex<UnixStream>,
}

impl Sender {
    /// Wraps a clone of the connection's stream.
    pub fn new(stream: UnixStream) -> Self {
        Sender {
            stream: Mutex::new(stream),
        }
    }

    /// Sends one message atomically with respect to other senders.
    pub fn send(&self, header: &Header, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        send_message(&stream, header, payload, fds)
    }

    /// Shuts the socket down in both directions (wakes a blocked reader).
    pub fn shutdown(&self) {
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    #[test]
    fn message_roundtrip_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let h = Header::command(3, Command::DmaMap, 4);
        send_message(&a, &h, &[1, 2, 3, 4], &[file.as_raw_fd()]).unwrap();
        let m = recv_message(&b, 1024).unwrap();
        assert_eq!(m.header, h);
        assert_eq!(m.payload, vec![1, 2, 3, 4]);
        assert_eq!(m.fds.len(), 1);
        drop(a);
        assert!(matches!(
            recv_message(&b, 1024),
            Err(TransportError::Closed)
        ));
    }

    #[test]
    fn oversized_is_drained_and_stream_stays_in_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let big = vec![0u8; 100];
        let h = Header::command(1, Command::RegionWrite, big.len());
        let sender = std::thread::spawn(move || {
            send_message(&a, &h, &big, &[]).unwrap();
            let h2 = Header::command(2, Command::DeviceReset, 0);
            send_message(&a, &h2, &[], &[]).unwrap();
            a
        });
        assert!(matches!(
            recv_message(&b, 50),
            Err(TransportError::Oversized { .. })
        ));
        let m = recv_message(&b, 50).unwrap();
        assert_eq!(m.header.msg_id, 2);
        drop(sender.join());
    }
}
