//! UNIX-socket transport: message framing ([`Receiver`]: buffered, many
//! messages per read), SCM_RIGHTS fd passing, the listening socket (created
//! 0600) and the shared sender used for replies and for server-to-client
//! requests.

mod listener;
mod receiver;

pub use listener::{FileKind, ListenError, Listener};
pub use receiver::{Frame, Receiver};

use crate::protocol::{Header, ProtocolError};
use nix::sys::socket::{send, sendmsg, ControlMessage, MsgFlags, UnixAddr};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use thiserror::Error;

/// Most fds accepted in one message (anything beyond is an error; the kernel
/// closes what does not fit the control buffer and we see MSG_CTRUNC).
pub const MAX_RECV_FDS: usize = 64;

/// A message as received, with its payload copied out of the receive buffer
/// (see [`Frame::into_owned`]).
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

/// Sends `header` + `payload` with `fds` as SCM_RIGHTS on `stream`.
pub fn send_message(
    stream: &UnixStream,
    header: &Header,
    payload: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    send_parts(stream, &header.encode(), payload, fds)
}

/// Sends `a` followed by `b` (one `sendmsg` unless the socket takes less),
/// with `fds` attached to the first byte.
fn send_parts(stream: &UnixStream, a: &[u8], b: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let total = a.len() + b.len();
    let mut sent = 0usize;
    let fd = stream.as_raw_fd();
    while sent < total {
        let (x, y): (&[u8], &[u8]) = if sent < a.len() {
            (&a[sent..], b)
        } else {
            (&b[sent - a.len()..], &[])
        };
        let with_fds = sent == 0 && !fds.is_empty();
        let r = if y.is_empty() && !with_fds {
            // The common case (every reply but REGION_INFO's): a plain send.
            send(fd, x, MsgFlags::MSG_NOSIGNAL)
        } else {
            let iov = [IoSlice::new(x), IoSlice::new(y)];
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage] = if with_fds { &rights } else { &[] };
            sendmsg::<UnixAddr>(fd, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        };
        match r {
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

    /// Sends a message already encoded (header included) atomically.
    pub fn send_encoded(&self, message: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        send_parts(&stream, message, &[], fds)
    }

    /// Shuts the socket down in both directions (wakes a blocked reader).
    pub fn shutdown(&self) {
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}
