//! Shared test fixtures: a DMA-copy server on a fresh socket in its own
//! thread, and helpers to drive it with the project's own client.

#![allow(dead_code)]

#[path = "../../examples/dma_copy/device.rs"]
pub mod device;

use device::{reg, status};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_user_server::client::{Client, ClientError};
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::{DmaProt, Header, MessageType};
use vfio_user_server::stats::Stats;
use vfio_user_server::transport::TransportError;
use vfio_user_server::{Device, Server, StopHandle};
use vmm_sys_util::eventfd::EventFd;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Upper bound for any single wait in the tests: generous, since the machine
/// is shared; a healthy run never comes close.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running example server; stopped and joined on drop.
pub struct TestServer {
    pub path: PathBuf,
    pub stats: Arc<Stats>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
    _dir: PathBuf,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(PortType::Endpoint)
    }

    pub fn start_with(port: PortType) -> TestServer {
        Self::start_device(device::DmaCopy::new(port).unwrap())
    }

    /// Serves any device model.
    pub fn start_device<D: Device + 'static>(dev: D) -> TestServer {
        let _ = env_logger::builder().is_test(true).try_init();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("vus-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev.sock");
        let mut server = Server::new(dev, &path).unwrap();
        let stop = server.stop_handle();
        let stats = server.stats();
        let thread = std::thread::Builder::new()
            .name(format!("vfio-user-server-{n}"))
            .spawn(move || server.run().unwrap())
            .unwrap();
        TestServer {
            path,
            stats,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// True while the server thread runs (it has neither panicked nor returned).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// A negotiated client with a receive timeout (a hung server fails the
    /// test instead of hanging it).
    pub fn connect(&self) -> Client {
        let c = Client::connect(&self.path).expect("connect and negotiate");
        c.set_timeout(Some(PATIENCE)).unwrap();
        c
    }

    /// A client that has not sent VERSION yet.
    pub fn connect_raw(&self) -> Client {
        let c = Client::connect_raw(&self.path).expect("connect");
        c.set_timeout(Some(PATIENCE)).unwrap();
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// A memfd of `len` bytes (client "guest RAM").
pub fn memfd(len: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"guest-ram", nix::sys::memfd::MemFdCreateFlag::empty())
        .unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(len).unwrap();
    f.into()
}

/// The memfd as a file (for pread/pwrite of "guest RAM").
pub fn file(fd: &OwnedFd) -> std::fs::File {
    std::fs::File::from(fd.try_clone().unwrap())
}

/// Read-write DMA access.
pub const RW: DmaProt = DmaProt {
    read: true,
    write: true,
};
/// Read-only DMA access (the device may only read).
pub const RO: DmaProt = DmaProt {
    read: true,
    write: false,
};

/// DMA_MAP of a whole fd-backed window.
pub fn map_fd(c: &mut Client, iova: u64, size: u64, offset: u64, prot: DmaProt, fd: &OwnedFd) {
    let b: BorrowedFd<'_> = std::os::fd::AsFd::as_fd(fd);
    c.dma_map(iova, size, offset, prot, Some(b))
        .unwrap_or_else(|e| panic!("DMA_MAP {iova:#x}+{size:#x}: {e}"));
}

/// Programs a copy; rings the doorbell (posted, as QEMU does) when `go`.
pub fn program_copy(c: &mut Client, src: u64, dst: u64, len: u32, irq: bool) {
    c.region_write(0, reg::SRC, &src.to_le_bytes()).unwrap();
    c.region_write(0, reg::DST, &dst.to_le_bytes()).unwrap();
    c.write32(0, reg::LEN, len).unwrap();
    c.write32(0, reg::CTRL, u32::from(irq)).unwrap();
}

/// Rings the doorbell with a posted write (no reply).
pub fn ring(c: &mut Client) {
    c.region_write_posted(0, reg::DOORBELL, &1u32.to_le_bytes())
        .unwrap();
}

/// Polls STATUS until BUSY clears (bounded); returns the final STATUS.
/// Reads serve the server's DMA requests that arrive meanwhile.
pub fn wait_idle(c: &mut Client) -> u32 {
    let start = Instant::now();
    loop {
        let st = c.read32(0, reg::STATUS).unwrap();
        if st & status::BUSY == 0 {
            return st;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "copy still busy after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Copies and waits: programs, rings, waits for the device; returns STATUS.
pub fn copy(c: &mut Client, src: u64, dst: u64, len: u32, irq: bool) -> u32 {
    program_copy(c, src, dst, len, irq);
    ring(c);
    wait_idle(c)
}

/// Waits (bounded) for the eventfd to be signalled; returns its counter.
pub fn wait_eventfd(ev: &EventFd, timeout: Duration) -> Option<u64> {
    // SAFETY: the fd belongs to `ev`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(ev.as_raw_fd()) };
    let deadline = Instant::now() + timeout;
    loop {
        match ev.read() {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("eventfd read: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
        let _ = poll(&mut p, PollTimeout::from(ms));
    }
}

/// The eventfd's counter if it was signalled, without waiting.
pub fn eventfd_now(ev: &EventFd) -> Option<u64> {
    ev.read().ok()
}

/// True when `e` means the peer closed the connection.
pub fn is_closed_error(e: &ClientError) -> bool {
    let closed_io = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ENOTCONN)
        ) || e.kind() == io::ErrorKind::UnexpectedEof
    };
    match e {
        ClientError::Transport(TransportError::Closed)
        | ClientError::Transport(TransportError::Truncated { .. }) => true,
        ClientError::Transport(TransportError::Io(e)) | ClientError::Io(e) => closed_io(e),
        _ => false,
    }
}

/// Asserts that the server closed this connection: the next receive sees EOF
/// (or a reset) rather than a message or a timeout.
pub fn assert_closed(c: &mut Client) {
    match c.recv() {
        Ok(m) => panic!("expected the connection to be closed, got {:?}", m.header),
        Err(e) => assert!(is_closed_error(&e), "expected a closed connection, got {e}"),
    }
}

/// A raw 16-byte header.
pub fn raw_header(msg_id: u16, command: u16, msg_size: u32, flags: u32, error: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&msg_id.to_le_bytes());
    h.extend_from_slice(&command.to_le_bytes());
    h.extend_from_slice(&msg_size.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&error.to_le_bytes());
    h
}

/// A command header with a raw command number and the right size.
pub fn command_header(msg_id: u16, command: u16, payload_len: usize) -> Header {
    Header {
        msg_id,
        command,
        msg_size: (16 + payload_len) as u32,
        kind: MessageType::Command,
        no_reply: false,
        error: None,
    }
}

/// Sends a command with a raw command number and waits for its reply.
pub fn raw_request(
    c: &mut Client,
    msg_id: u16,
    command: u16,
    payload: &[u8],
    fds: &[i32],
) -> Result<vfio_user_server::client::Response, ClientError> {
    c.request_with_header(command_header(msg_id, command, payload.len()), payload, fds)
}

/// Little-endian helpers.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Little-endian u64 at `at`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The VERSION payload: major, minor, NUL-terminated JSON.
pub fn version_payload(major: u16, minor: u16, json: &str) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&major.to_le_bytes());
    p.extend_from_slice(&minor.to_le_bytes());
    p.extend_from_slice(json.as_bytes());
    p.push(0);
    p
}

/// QEMU 11.1's VERSION proposal.
pub const QEMU_CAPS: &str = r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true,"migration":{"pgsize":4096,"max_bitmap_size":268435456}}}"#;
