//! Server-to-client DMA_READ / DMA_WRITE messages, matched to their replies by
//! message id. Only worker threads may use them: the connection thread serves
//! client requests, and QEMU holds its big lock while it waits for our reply,
//! so waiting there for QEMU to serve a DMA message would deadlock.

use super::DmaError;
use crate::protocol::{Command, DmaTransfer, Header, HEADER_SIZE};
use crate::transport::Sender;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

/// A reply routed back to the waiting worker.
#[derive(Debug)]
pub(crate) struct ReplyMsg {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Issues DMA messages on one connection.
#[derive(Debug)]
pub(crate) struct Requester {
    sender: Arc<Sender>,
    pending: Mutex<HashMap<u16, SyncSender<ReplyMsg>>>,
    next_id: AtomicU16,
    conn_thread: ThreadId,
    /// The client's max_data_xfer_size.
    max_xfer: u64,
    timeout: Duration,
}

impl Requester {
    pub fn new(sender: Arc<Sender>, conn_thread: ThreadId, max_xfer: u32) -> Self {
        Requester {
            sender,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU16::new(0x8000),
            conn_thread,
            max_xfer: u64::from(max_xfer.max(4096)),
            timeout: Duration::from_secs(10),
        }
    }

    /// Routes a reply from the client; false when nobody waits for that id.
    pub fn complete(&self, header: Header, payload: Vec<u8>) -> bool {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&header.msg_id);
        match tx {
            Some(tx) => tx.try_send(ReplyMsg { header, payload }).is_ok(),
            None => false,
        }
    }

    /// The largest data transfer one message may carry.
    pub fn max_transfer(&self) -> usize {
        self.max_xfer as usize
    }

    /// Sends a command that asks for no reply (a posted message).
    pub fn post(&self, cmd: Command, payload: &[u8]) -> Result<(), DmaError> {
        if std::thread::current().id() == self.conn_thread {
            return Err(DmaError::WouldDeadlock);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut header = Header::command(id, cmd, payload.len());
        header.no_reply = true;
        self.sender
            .send(&header, payload, &[])
            .map_err(|e| DmaError::Transport(e.to_string()))
    }

    /// Sends `cmd` and waits for its reply (worker threads only).
    pub fn round_trip(&self, cmd: Command, payload: &[u8]) -> Result<ReplyMsg, DmaError> {
        if std::thread::current().id() == self.conn_thread {
            return Err(DmaError::WouldDeadlock);
        }
        let (tx, rx) = sync_channel(1);
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let std::collections::hash_map::Entry::Vacant(e) = p.entry(id) {
                e.insert(tx);
                break id;
            }
        };
        let header = Header::command(id, cmd, payload.len());
        if let Err(e) = self.sender.send(&header, payload, &[]) {
            self.forget(id);
            return Err(DmaError::Transport(e.to_string()));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => {
                self.forget(id);
                Err(DmaError::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => Err(DmaError::Disconnected),
        }
    }

    /// Fails every request waiting for a reply (the client is gone): their
    /// workers see [`DmaError::Disconnected`] at once instead of timing out.
    pub fn cancel_all(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn forget(&self, id: u16) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Reads client memory at `address` into `buf` with DMA_READ messages.
    pub fn read(&self, mut address: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        for chunk in buf.chunks_mut(self.max_xfer as usize) {
            let req = DmaTransfer {
                address,
                count: chunk.len() as u64,
            };
            let r = self.round_trip(Command::DmaRead, &req.encode(&[]))?;
            check_reply(&r, Command::DmaRead)?;
            let (t, data) = DmaTransfer::decode(&r.payload, "DMA_READ reply")
                .map_err(|e| DmaError::BadReply(e.to_string()))?;
            if t.address != address || t.count != chunk.len() as u64 || data.len() != chunk.len() {
                return Err(DmaError::BadReply(format!(
                    "DMA_READ reply for {:#x}+{} carries {:#x}+{} with {} bytes",
                    address,
                    chunk.len(),
                    t.address,
                    t.count,
                    data.len()
                )));
            }
            chunk.copy_from_slice(data);
            address += chunk.len() as u64;
        }
        Ok(())
    }

    /// Writes `buf` to client memory at `address` with DMA_WRITE messages.
    pub fn write(&self, mut address: u64, buf: &[u8]) -> Result<(), DmaError> {
        for chunk in buf.chunks(self.max_xfer as usize) {
            let req = DmaTransfer {
                address,
                count: chunk.len() as u64,
            };
            let r = self.round_trip(Command::DmaWrite, &req.encode(chunk))?;
            check_reply(&r, Command::DmaWrite)?;
            address += chunk.len() as u64;
        }
        Ok(())
    }
}

pub(crate) fn check_reply(r: &ReplyMsg, cmd: Command) -> Result<(), DmaError> {
    if let Some(errno) = r.header.error {
        return Err(DmaError::Client(errno as i32));
    }
    if r.header.command != cmd as u16 {
        return Err(DmaError::BadReply(format!(
            "reply to {cmd:?} names command {}",
            r.header.command
        )));
    }
    if r.header.msg_size as usize != HEADER_SIZE + r.payload.len() {
        return Err(DmaError::BadReply("reply size mismatch".into()));
    }
    Ok(())
}
