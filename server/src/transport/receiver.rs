//! Buffered message reception: one `recvmsg` takes every byte queued on the
//! socket (up to the buffer's size), and messages are parsed out of the
//! buffer in place. Posted writes that arrive back to back cost one system
//! call for the whole batch instead of two per message.
//!
//! # File descriptors
//!
//! On a UNIX stream socket the kernel attaches the fds of a `sendmsg` to the
//! first socket buffer of that call, hands them to the `recvmsg` that reads
//! any byte of that buffer, and ends that `recvmsg` right after the buffer
//! (`unix_stream_read_generic`). The fds of one read therefore belong to the
//! buffer holding the read's *last* byte, and the receiver attributes them to
//! the message containing that byte. For a sender that sends each message with
//! one `sendmsg`, fds first (QEMU, libvfio-user, our client), that is exactly
//! the message they were sent with. Fds of a message that is refused or
//! drained are closed with it.

use super::{mid_message, to_io, Message, TransportError, MAX_RECV_FDS};
use crate::protocol::{Header, ProtocolError, HEADER_SIZE};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Initial size of the receive buffer; it grows to the largest message
/// accepted so far.
const INITIAL_BUFFER: usize = 64 * 1024;

/// A message parsed out of the receive buffer: the payload is borrowed and
/// valid until the next [`Receiver::recv`].
#[derive(Debug)]
pub struct Frame<'a> {
    /// Decoded header.
    pub header: Header,
    /// Payload (message size minus header).
    pub payload: &'a [u8],
    /// Fds received with the message (closed when dropped).
    pub fds: Vec<OwnedFd>,
    /// The control data was truncated: the peer sent more fds than we accept.
    pub fds_truncated: bool,
}

impl Frame<'_> {
    /// Copies the payload out of the receive buffer.
    pub fn into_owned(self) -> Message {
        Message {
            header: self.header,
            payload: self.payload.to_vec(),
            fds: self.fds,
            fds_truncated: self.fds_truncated,
        }
    }
}

/// Fds that arrived with one `recvmsg`.
#[derive(Debug)]
struct FdBatch {
    /// Stream offset of the last byte that `recvmsg` read.
    at: u64,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// The receiving half of a connection.
#[derive(Debug)]
pub struct Receiver {
    stream: UnixStream,
    buf: Vec<u8>,
    /// First byte not yet parsed.
    start: usize,
    /// End of the received bytes.
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Largest payload accepted; larger messages are drained.
    max_payload: usize,
    cmsg: Vec<u8>,
    fds: Vec<FdBatch>,
}

impl Receiver {
    /// Receives from `stream`; payloads above `max_payload` bytes are drained
    /// and reported as [`TransportError::Oversized`].
    pub fn new(stream: UnixStream, max_payload: usize) -> Receiver {
        Receiver {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            base: 0,
            max_payload,
            cmsg: nix::cmsg_space!([RawFd; MAX_RECV_FDS]),
            fds: Vec::new(),
        }
    }

    /// The connection (for writes, timeouts, shutdown).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next message: from the buffer if it holds a whole one, otherwise
    /// after as many reads as it takes.
    pub fn recv(&mut self) -> Result<Frame<'_>, TransportError> {
        if self.end - self.start < HEADER_SIZE {
            self.fill(HEADER_SIZE)?;
        }
        let raw: &[u8; HEADER_SIZE] = self.buf[self.start..self.start + HEADER_SIZE]
            .try_into()
            .expect("HEADER_SIZE bytes");
        let header = match Header::decode(raw) {
            Ok(h) => h,
            // The size itself is unusable: message boundaries are lost.
            Err(e @ ProtocolError::MessageTooShort(_)) => return Err(e.into()),
            Err(error) => {
                // The size field passed its check: skip the message, stay in frame.
                let le16 = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
                let le32 =
                    |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
                let (msg_id, command, size, flags) = (le16(0), le16(2), le32(4), le32(8));
                self.skip(size as usize)?;
                return Err(TransportError::BadHeader {
                    msg_id,
                    command,
                    flags,
                    error,
                });
            }
        };
        let len = header.payload_len();
        if len > self.max_payload {
            self.skip(header.msg_size as usize)?;
            return Err(TransportError::Oversized {
                header,
                size: header.msg_size,
                limit: self.max_payload + HEADER_SIZE,
            });
        }
        let size = HEADER_SIZE + len;
        if self.end - self.start < size {
            self.fill(size)?;
        }
        let at = self.start;
        self.start += size;
        let (fds, fds_truncated) = if self.fds.is_empty() {
            (Vec::new(), false)
        } else {
            self.take_fds(self.base + self.start as u64)
        };
        Ok(Frame {
            header,
            payload: &self.buf[at + HEADER_SIZE..at + size],
            fds,
            fds_truncated,
        })
    }

    /// Makes the buffer hold at least `want` bytes of the current message.
    #[inline(never)]
    fn fill(&mut self, want: usize) -> Result<(), TransportError> {
        if self.end - self.start >= want {
            return Ok(());
        }
        if self.start + want > self.buf.len() {
            self.compact();
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
        }
        while self.end - self.start < want {
            let got = self.end - self.start;
            let n = self.read().map_err(|e| {
                if got > 0 {
                    TransportError::Io(mid_message(e))
                } else {
                    TransportError::Io(e)
                }
            })?;
            if n == 0 {
                return Err(match got {
                    0 => TransportError::Closed,
                    _ => TransportError::Truncated {
                        got,
                        want: self.message_size().unwrap_or(want),
                    },
                });
            }
        }
        Ok(())
    }

    /// The size the current message's header claims, if it is buffered.
    fn message_size(&self) -> Option<usize> {
        let h = self.buf.get(self.start..self.start + HEADER_SIZE)?;
        Some(u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize)
    }

    /// Moves the unparsed bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Discards the next `len` bytes of the stream (a message that is not
    /// accepted), keeping whatever follows them.
    fn skip(&mut self, mut len: usize) -> Result<(), TransportError> {
        loop {
            let n = len.min(self.end - self.start);
            self.start += n;
            len -= n;
            if len == 0 {
                // Fds sent with the skipped message go with it.
                drop(self.take_fds(self.base + self.start as u64));
                return Ok(());
            }
            self.compact();
            match self.read().map_err(mid_message)? {
                0 => {
                    return Err(TransportError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed while an oversized message was drained",
                    )))
                }
                _ => continue,
            }
        }
    }

    /// One `recvmsg` into the free part of the buffer; returns the bytes read.
    fn read(&mut self) -> io::Result<usize> {
        let fd = self.stream.as_raw_fd();
        loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
            let msg = match recvmsg::<UnixAddr>(
                fd,
                &mut iov,
                Some(&mut self.cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(to_io(e)),
            };
            let n = msg.bytes;
            let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel just installed this descriptor
                            // in our table for us (SCM_RIGHTS); nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
            }
            if n > 0 && (truncated || !fds.is_empty()) {
                self.fds.push(FdBatch {
                    at: self.base + (self.end + n - 1) as u64,
                    fds,
                    truncated,
                });
            }
            self.end += n;
            return Ok(n);
        }
    }

    /// The fds of every read whose last byte lies before stream offset `end`
    /// (that is, in the message ending there, or in skipped ones before it).
    #[cold]
    fn take_fds(&mut self, end: u64) -> (Vec<OwnedFd>, bool) {
        let (mut fds, mut truncated) = (Vec::new(), false);
        self.fds.retain_mut(|b| {
            if b.at >= end {
                return true;
            }
            fds.append(&mut b.fds);
            truncated |= b.truncated;
            false
        });
        (fds, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use crate::transport::send_message;
    use std::io::Write;
    use std::time::Duration;

    fn pair(max_payload: usize) -> (UnixStream, Receiver) {
        let (a, b) = UnixStream::pair().unwrap();
        (a, Receiver::new(b, max_payload))
    }

    fn devnull() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    #[test]
    fn message_roundtrip_with_fds() {
        let (a, mut rx) = pair(1024);
        let file = devnull();
        let h = Header::command(3, Command::DmaMap, 4);
        send_message(&a, &h, &[1, 2, 3, 4], &[file.as_raw_fd()]).unwrap();
        let m = rx.recv().unwrap();
        assert_eq!(m.header, h);
        assert_eq!(m.payload, [1, 2, 3, 4]);
        assert_eq!(m.fds.len(), 1);
        drop(m);
        drop(a);
        assert!(matches!(rx.recv(), Err(TransportError::Closed)));
    }

    #[test]
    fn queued_messages_come_from_one_read_and_fds_stay_with_theirs() {
        let (a, mut rx) = pair(1024);
        let (f1, f2) = (devnull(), devnull());
        // 1: no fds; 2: one fd; 3: none; 4: two fds; 5: none.
        let fds: [&[RawFd]; 5] = [
            &[],
            &[f1.as_raw_fd()],
            &[],
            &[f1.as_raw_fd(), f2.as_raw_fd()],
            &[],
        ];
        for (i, f) in fds.iter().enumerate() {
            let h = Header::command(i as u16 + 1, Command::RegionWrite, i);
            send_message(&a, &h, &vec![i as u8; i], f).unwrap();
        }
        for (i, f) in fds.iter().enumerate() {
            let m = rx.recv().unwrap();
            assert_eq!(m.header.msg_id, i as u16 + 1);
            assert_eq!(m.payload, vec![i as u8; i]);
            assert_eq!(m.fds.len(), f.len(), "message {}", i + 1);
            assert!(!m.fds_truncated);
        }
        // The kernel ends a read after a buffer with fds: messages 1+2, 3+4, 5.
        assert_eq!(rx.buffered(), 0);
    }

    #[test]
    fn many_posted_messages_are_parsed_from_the_buffer() {
        let (a, mut rx) = pair(1024);
        // More than the socket buffer holds: the writer blocks until we read.
        let writer = std::thread::spawn(move || {
            for i in 0..500u16 {
                let h = Header::command(i, Command::RegionWrite, 20);
                send_message(&a, &h, &[i as u8; 20], &[]).unwrap();
            }
            a
        });
        let fd = rx.stream().as_raw_fd();
        let peek = |b: &mut [u8]| nix::sys::socket::recv(fd, b, MsgFlags::MSG_PEEK).unwrap();
        while peek(&mut [0; 64]) < 64 {
            std::thread::yield_now();
        }
        let first = rx.recv().unwrap().header.msg_id;
        assert_eq!(first, 0);
        assert!(rx.buffered() > 36, "one read took more than one message");
        for i in 1..500u16 {
            let m = rx.recv().unwrap();
            assert_eq!(m.header.msg_id, i);
            assert_eq!(m.payload, [i as u8; 20]);
        }
        drop(writer.join());
    }

    #[test]
    fn message_split_across_writes_and_larger_than_the_buffer() {
        let (mut a, mut rx) = pair(4 * INITIAL_BUFFER);
        let big: Vec<u8> = (0..3 * INITIAL_BUFFER).map(|i| (i % 253) as u8).collect();
        let h = Header::command(9, Command::RegionWrite, big.len());
        let writer = std::thread::spawn(move || {
            // Byte by byte for the header, then in odd chunks, then a small one.
            for b in h.encode() {
                a.write_all(&[b]).unwrap();
            }
            for c in big.chunks(7777) {
                a.write_all(c).unwrap();
            }
            send_message(&a, &Header::command(10, Command::DeviceReset, 0), &[], &[]).unwrap();
            (a, big)
        });
        let m = rx.recv().unwrap().into_owned();
        let (_a, big) = writer.join().unwrap();
        assert_eq!(m.header.msg_id, 9);
        assert_eq!(m.payload, big);
        assert_eq!(rx.recv().unwrap().header.msg_id, 10);
    }

    #[test]
    fn oversized_is_drained_and_stream_stays_in_frame() {
        let (a, mut rx) = pair(50);
        let file = devnull();
        let big = vec![0u8; 3 * INITIAL_BUFFER];
        let h = Header::command(1, Command::RegionWrite, big.len());
        let sender = std::thread::spawn(move || {
            send_message(&a, &h, &big, &[file.as_raw_fd()]).unwrap();
            let h2 = Header::command(2, Command::DeviceReset, 0);
            send_message(&a, &h2, &[], &[]).unwrap();
            a
        });
        assert!(matches!(rx.recv(), Err(TransportError::Oversized { .. })));
        let m = rx.recv().unwrap();
        assert_eq!(m.header.msg_id, 2);
        assert!(m.fds.is_empty(), "the drained message's fd went with it");
        drop(m);
        drop(sender.join());
    }

    #[test]
    fn bad_header_is_skipped_with_its_payload() {
        let (a, mut rx) = pair(1024);
        let mut bad = Header::command(1, Command::RegionRead, 8).encode();
        bad[8] = 7; // message type 7
        let mut bytes = bad.to_vec();
        bytes.extend_from_slice(&[0xee; 8]);
        bytes.extend_from_slice(&Header::command(2, Command::DeviceReset, 0).encode());
        (&a).write_all(&bytes).unwrap();
        assert!(matches!(
            rx.recv(),
            Err(TransportError::BadHeader { msg_id: 1, .. })
        ));
        assert_eq!(rx.recv().unwrap().header.msg_id, 2);
    }

    #[test]
    fn short_size_loses_framing_and_eof_mid_message_is_truncation() {
        let (a, mut rx) = pair(1024);
        let mut h = Header::command(1, Command::DeviceReset, 0).encode();
        h[4] = 8;
        (&a).write_all(&h).unwrap();
        assert!(matches!(
            rx.recv(),
            Err(TransportError::Framing(ProtocolError::MessageTooShort(8)))
        ));
        let (a, mut rx) = pair(1024);
        let h = Header::command(1, Command::RegionWrite, 64).encode();
        (&a).write_all(&h).unwrap();
        (&a).write_all(&[0; 10]).unwrap();
        drop(a);
        assert!(matches!(
            rx.recv(),
            Err(TransportError::Truncated { got: 26, want: 80 })
        ));
    }

    #[test]
    fn idle_timeout_is_would_block_and_mid_message_timeout_is_timed_out() {
        let (a, mut rx) = pair(1024);
        rx.stream()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        match rx.recv() {
            Err(TransportError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            other => panic!("{other:?}"),
        }
        (&a).write_all(&Header::command(1, Command::RegionWrite, 4).encode())
            .unwrap();
        match rx.recv() {
            Err(TransportError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        // The receiver is still in frame: the rest completes the message.
        (&a).write_all(&[1, 2, 3, 4]).unwrap();
        assert_eq!(rx.recv().unwrap().payload, [1, 2, 3, 4]);
    }

    #[test]
    fn too_many_fds_are_reported_truncated() {
        let (a, mut rx) = pair(1024);
        let f = devnull();
        let fds = vec![f.as_raw_fd(); MAX_RECV_FDS + 1];
        let h = Header::command(1, Command::DeviceSetIrqs, 4);
        send_message(&a, &h, &[0; 4], &fds).unwrap();
        let m = rx.recv().unwrap();
        assert!(m.fds_truncated);
    }
}
