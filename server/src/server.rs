//! The server core: accepts one client at a time on a UNIX socket, decodes
//! its messages, dispatches them to the device, and answers.

use crate::connection::ConnectionControl;
use crate::device::{Device, DeviceError};
use crate::dma::{DmaError, Requester};
use crate::irq::IrqError;
use crate::pci::{BarKind, CONFIG_SPACE_SIZE};
use crate::protocol::{
    decode_write_multi, encode_device_info, encode_irq_info, encode_region_info, region,
    ClientCaps, Command, DmaMapRequest, DmaUnmapKind, DmaUnmapRequest, Header, InfoRequest,
    IrqData, MessageType, ProtocolError, RegionAccess, ServerCaps, SetIrqsRequest, SparseArea,
    VersionRequest, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, FLAG_NO_REPLY, HEADER_SIZE,
    REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE,
};
use crate::stats::Stats;
use crate::transport::{Frame, ListenError, Listener, Receiver, Sender, TransportError};
use log::{debug, error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a request failed; each maps to the errno of the error reply.
#[derive(Debug, Error)]
pub enum RequestError {
    /// Malformed or unacceptable message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// DMA map management failed.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// SET_IRQS failed.
    #[error(transparent)]
    Irq(#[from] IrqError),
    /// The device refused a region access.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A command before VERSION, or a second VERSION.
    #[error("{0}")]
    Sequence(&'static str),
    /// A region index that does not exist or is empty.
    #[error("region {0} does not exist")]
    NoSuchRegion(u32),
    /// A region access outside the region.
    #[error("region {region}: access {offset:#x}+{count} is outside its {size} bytes")]
    OutOfRange {
        /// Region.
        region: u32,
        /// Offset.
        offset: u64,
        /// Count.
        count: u32,
        /// Region size.
        size: u64,
    },
    /// Access kind not allowed on the region.
    #[error("region {0} does not allow this access")]
    Permission(u32),
    /// Sending a reply failed.
    #[error("reply: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// errno for the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::Protocol(e) => e.errno(),
            RequestError::Dma(e) => e.errno(),
            RequestError::Device(e) => e.errno(),
            // Linux vfio-pci answers a write to the ROM region with EINVAL.
            RequestError::Permission(_) => libc::EINVAL,
            RequestError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EINVAL,
        }
    }
}

/// Errors that end serving.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket path cannot be listened on (nothing at it was touched).
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Setting up the server or accepting a client failed.
    #[error("server socket: {0}")]
    Io(#[from] io::Error),
}

/// Stops a running server from another thread.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    /// Asks the server to close its client (if any) and return from `run`.
    pub fn stop(&self) {
        let _ = self.0.write(1);
    }
}

/// The reply being built: room for the header, then the payload, and the fds
/// to attach. One per connection, reused for every message.
struct ReplyBuf {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl ReplyBuf {
    fn new() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.resize(HEADER_SIZE, 0);
        ReplyBuf {
            buf,
            fds: Vec::new(),
        }
    }

    /// Empties the payload and the fds.
    fn clear(&mut self) {
        self.buf.truncate(HEADER_SIZE);
        self.fds.clear();
    }

    /// Appends payload bytes.
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends `len` zero bytes and returns them, to be filled in place.
    fn put_zeroed(&mut self, len: usize) -> &mut [u8] {
        let at = self.buf.len();
        self.buf.resize(at + len, 0);
        &mut self.buf[at..]
    }

    /// The whole message with `header` written in front of the payload.
    fn message(&mut self, header: &Header) -> &[u8] {
        let h = header.reply(self.buf.len() - HEADER_SIZE);
        self.buf[..HEADER_SIZE].copy_from_slice(&h.encode());
        &self.buf
    }
}

/// Per-connection state.
struct Session {
    sender: Arc<Sender>,
    requester: Arc<Requester>,
    client: Option<ClientCaps>,
    reply: ReplyBuf,
}

/// How long a client may pause in the middle of sending a message.
const MID_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Number of standard IRQ indexes reported.
const NUM_IRQS: u32 = crate::protocol::irq_index::COUNT;

/// A vfio-user server for one device.
pub struct Server<D: Device> {
    device: D,
    listener: Listener,
    caps: ServerCaps,
    stop: Arc<EventFd>,
    stats: Arc<Stats>,
    conn: ConnectionControl,
}

impl<D: Device> std::fmt::Debug for Server<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket", &self.listener.path())
            .finish()
    }
}

enum Flow {
    Continue,
    Disconnect,
}

impl<D: Device> Server<D> {
    /// Binds `path` (mode 0600) for `device`.
    pub fn new(device: D, path: &Path) -> Result<Self, ServerError> {
        Ok(Server {
            device,
            listener: Listener::bind(path)?,
            caps: ServerCaps::default(),
            stop: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            stats: Arc::new(Stats::default()),
            conn: ConnectionControl::default(),
        })
    }

    /// Closes the client's connection from outside, now or at a message
    /// (see [`ConnectionControl`]).
    pub fn connection(&self) -> ConnectionControl {
        self.conn.clone()
    }

    /// Overrides the advertised capabilities (limits).
    pub fn with_caps(mut self, caps: ServerCaps) -> Self {
        self.caps = caps;
        self
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Message counters (shared, live).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    /// Serves clients one after another until stopped.
    pub fn run(&mut self) -> Result<(), ServerError> {
        info!("listening on {}", self.listener.path().display());
        loop {
            match self.wait_client()? {
                Some(stream) => {
                    self.serve(stream);
                    if self.stopped() {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
    }

    fn stopped(&self) -> bool {
        // The eventfd stays readable once written: we never consume it.
        let mut p = [PollFd::new(stop_fd(&self.stop), PollFlags::POLLIN)];
        matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    fn wait_client(&self) -> Result<Option<UnixStream>, ServerError> {
        loop {
            let l = self.listener.as_listener();
            let mut fds = [
                PollFd::new(l.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop_fd(&self.stop), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
                Ok(_) => {}
            }
            if fds[1].any().unwrap_or(false) {
                return Ok(None);
            }
            if fds[0].any().unwrap_or(false) {
                let (s, _) = l.accept()?;
                return Ok(Some(s));
            }
        }
    }

    /// Serves one connected client until it disconnects or the server stops,
    /// then resets the device and drops the client's memory and eventfds.
    pub fn serve(&mut self, stream: UnixStream) {
        info!("client connected");
        // This bounds only a client that stops in the middle of a message:
        // after it, framing is lost and the client is dropped instead of
        // blocking the device. Between messages the timeout just repeats
        // (see the `WouldBlock` arm below): an idle client is fine.
        if let Err(e) = stream.set_read_timeout(Some(MID_MESSAGE_TIMEOUT)) {
            warn!("cannot set the socket read timeout: {e}");
        }
        let sender = match stream.try_clone() {
            Ok(s) => Arc::new(Sender::new(s)),
            Err(e) => {
                error!("cannot clone client socket: {e}");
                return;
            }
        };
        let requester = Arc::new(Requester::new(
            Arc::clone(&sender),
            std::thread::current().id(),
            crate::protocol::ClientCaps::default().max_data_xfer_size,
        ));
        let mut sess = Session {
            sender,
            requester,
            client: None,
            reply: ReplyBuf::new(),
        };
        let max_payload = self.caps.max_data_xfer_size as usize + 4096;
        // This thread blocks in recvmsg, with no poll per message; the watcher
        // refuses other clients meanwhile and, on stop, shuts the socket down.
        let watcher = match Watcher::start(&stream, self.listener.as_listener(), &self.stop) {
            Ok(w) => w,
            Err(e) => {
                error!("cannot watch the client connection: {e}");
                return;
            }
        };
        match stream.try_clone() {
            Ok(s) => self.conn.attach(Some(s)),
            Err(e) => warn!("cannot share the client socket (no connection drops): {e}"),
        }
        let mut rx = Receiver::new(stream, max_payload);
        let mut received = 0u64;
        loop {
            let msg = match rx.recv() {
                Ok(m) => m,
                Err(_)
                    if self.conn.take_reason().is_some_and(|r| {
                        warn!("closed the client connection: {r}");
                        true
                    }) =>
                {
                    break;
                }
                Err(TransportError::Closed) if self.stopped() => {
                    info!("server stopping; closing the client connection");
                    break;
                }
                Err(TransportError::Closed) => {
                    info!("client disconnected");
                    break;
                }
                // The read timeout expired before a message began (inside one,
                // the transport reports `TimedOut`): the client is just idle.
                Err(TransportError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(TransportError::Oversized {
                    header,
                    size,
                    limit,
                }) => {
                    warn!(
                        "message {} ({} bytes) exceeds the {limit}-byte limit",
                        header.msg_id, size
                    );
                    self.stats.count_error();
                    if header.kind == MessageType::Command && !header.no_reply {
                        let _ = sess.sender.send(&header.error_reply(libc::E2BIG), &[], &[]);
                    }
                    continue;
                }
                Err(TransportError::BadHeader {
                    msg_id,
                    command,
                    flags,
                    error,
                }) => {
                    warn!("message {msg_id}: {error}");
                    self.stats.count_error();
                    // Answer anything but a reply or a message that asks for none.
                    let is_reply = flags & 0xf == 1;
                    if !is_reply && flags & FLAG_NO_REPLY == 0 {
                        let h = Header {
                            msg_id,
                            command,
                            msg_size: HEADER_SIZE as u32,
                            kind: MessageType::Reply,
                            no_reply: false,
                            error: Some(error.errno() as u32),
                        };
                        let _ = sess.sender.send(&h, &[], &[]);
                    }
                    continue;
                }
                Err(e) => {
                    warn!("dropping the client: {e}");
                    break;
                }
            };
            received += 1;
            if let Some(r) = self.conn.check_message(received) {
                let cmd = msg.header.command;
                match Command::from_raw(cmd) {
                    Some(c) => {
                        warn!("closing the client connection at message {received} ({c:?}): {r}")
                    }
                    None => warn!(
                        "closing the client connection at message {received} (command {cmd}): {r}"
                    ),
                }
                break;
            }
            match self.handle(&mut sess, msg) {
                Flow::Continue => {}
                Flow::Disconnect => break,
            }
        }
        self.conn.attach(None);
        watcher.finish();
        self.disconnect(&sess);
    }

    fn disconnect(&mut self, sess: &Session) {
        sess.sender.shutdown();
        let ctx = self.device.context().clone();
        ctx.memory.set_requester(None);
        // Workers waiting for a DMA reply fail now rather than after the
        // timeout (the device reset below waits for them).
        sess.requester.cancel_all();
        if ctx.pasid.features().any() {
            // Which translation path the connection used (PASID_DMA
            // messages, ATS/ATC, page requests): benchmarks quote it.
            info!("PASID so far: {:?}", ctx.pasid.stats());
        }
        ctx.pasid.disconnect();
        self.device.config().reset();
        self.device.reset();
        ctx.memory.unmap_all();
        ctx.irqs.clear();
        info!(
            "client gone: device reset, DMA windows and eventfds dropped ({})",
            self.stats.summary()
        );
    }

    fn handle(&mut self, sess: &mut Session, msg: Frame<'_>) -> Flow {
        let h = msg.header;
        if h.kind == MessageType::Reply {
            // A reply to one of our DMA_READ/WRITE requests.
            if !sess.requester.complete(h, msg.payload.to_vec()) {
                warn!(
                    "dropping an unsolicited reply (id {}, command {})",
                    h.msg_id, h.command
                );
                self.stats.count_error();
            }
            return Flow::Continue;
        }
        if h.error.is_some() {
            return self.answer(
                sess,
                &h,
                Err(ProtocolError::BadFlags {
                    what: "command header",
                    flags: crate::protocol::FLAG_ERROR,
                }
                .into()),
            );
        }
        self.stats.count(h.command);
        sess.reply.clear();
        let result = self.dispatch(sess, &h, msg);
        let is_version = h.command == Command::Version as u16;
        let failed_version = is_version && result.is_err() && sess.client.is_none();
        let flow = self.answer(sess, &h, result);
        if failed_version {
            // The spec: the server closes the connection if it cannot support
            // the client's version.
            return Flow::Disconnect;
        }
        flow
    }

    fn answer(&mut self, sess: &mut Session, h: &Header, result: Result<(), RequestError>) -> Flow {
        match result {
            Ok(()) => {
                if h.no_reply {
                    return Flow::Continue;
                }
                let out = &mut sess.reply;
                let fds: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
                let sent = sess.sender.send_encoded(out.message(h), &fds);
                // Our copies of the fds are not needed once sent.
                out.fds.clear();
                if let Err(e) = sent {
                    warn!("cannot send reply: {e}");
                    return Flow::Disconnect;
                }
            }
            Err(e) => {
                self.stats.count_error();
                let name = Command::from_raw(h.command)
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| format!("command {}", h.command));
                warn!("{name} (id {}) failed: {e}", h.msg_id);
                if !h.no_reply {
                    if let Err(e) = sess.sender.send(&h.error_reply(e.errno()), &[], &[]) {
                        warn!("cannot send error reply: {e}");
                        return Flow::Disconnect;
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Carries out one command; its reply payload goes to `sess.reply`.
    fn dispatch(
        &mut self,
        sess: &mut Session,
        h: &Header,
        mut msg: Frame<'_>,
    ) -> Result<(), RequestError> {
        let Some(cmd) = Command::from_raw(h.command) else {
            return Err(ProtocolError::UnknownCommand(h.command).into());
        };
        if msg.fds_truncated {
            return Err(ProtocolError::BadFdCount {
                what: "message",
                got: crate::transport::MAX_RECV_FDS + 1,
                expected: "at most max_msg_fds",
            }
            .into());
        }
        let fd_limit = match cmd {
            Command::DmaMap | Command::TranslatedDmaMap => 1,
            Command::DeviceSetIrqs => self.caps.max_msg_fds as usize,
            _ => 0,
        };
        if msg.fds.len() > fd_limit {
            return Err(ProtocolError::BadFdCount {
                what: "message",
                got: msg.fds.len(),
                expected: if fd_limit == 0 {
                    "none"
                } else {
                    "at most max_msg_fds"
                },
            }
            .into());
        }
        if cmd == Command::Version {
            if sess.client.is_some() {
                return Err(RequestError::Sequence("VERSION was already negotiated"));
            }
            let req = VersionRequest::decode(msg.payload)?;
            if req.major != 0 {
                return Err(ProtocolError::UnsupportedMajor(req.major).into());
            }
            let reply = self.caps.reply_payload(&req);
            info!(
                "client speaks vfio-user {}.{}; negotiated 0.0 (client max_msg_fds {}, max_data_xfer_size {})",
                req.major, req.minor, req.caps.max_msg_fds, req.caps.max_data_xfer_size
            );
            // Our DMA_READ replies must also fit what we accept ourselves.
            sess.requester = Arc::new(Requester::new(
                Arc::clone(&sess.sender),
                std::thread::current().id(),
                req.caps
                    .max_data_xfer_size
                    .min(self.caps.max_data_xfer_size),
            ));
            self.device
                .context()
                .memory
                .set_requester(Some(Arc::clone(&sess.requester)));
            let pasid = &self.device.context().pasid;
            pasid.set_features(self.caps.pasid_agreed(&req));
            pasid.log_features();
            sess.client = Some(req.caps);
            sess.reply.put(&reply);
            return Ok(());
        }
        if sess.client.is_none() {
            return Err(RequestError::Sequence("VERSION must be the first message"));
        }
        let max_xfer = self.caps.max_data_xfer_size;
        let p = msg.payload;
        match cmd {
            Command::Version => Err(RequestError::Sequence("VERSION was already negotiated")),
            Command::DmaMap => {
                let req = DmaMapRequest::decode(p)?;
                let fd = std::mem::take(&mut msg.fds).into_iter().next();
                debug!(
                    "DMA_MAP {:#x}+{:#x} {} fd offset {:#x}",
                    req.address,
                    req.size,
                    if fd.is_some() { "with" } else { "without" },
                    req.offset
                );
                self.device.context().memory.map(&req, fd)?;
                Ok(())
            }
            Command::DmaUnmap => {
                let req = DmaUnmapRequest::decode(p)?;
                let mem = &self.device.context().memory;
                match req.kind {
                    DmaUnmapKind::Range { address, size } => {
                        let n = mem.unmap(address, size)?;
                        debug!("DMA_UNMAP {address:#x}+{size:#x}: {n} window(s) removed");
                    }
                    DmaUnmapKind::All => mem.unmap_all(),
                }
                sess.reply.put(&req.encode());
                Ok(())
            }
            Command::DeviceGetInfo => {
                InfoRequest::decode_device_info(p)?;
                sess.reply.put(&encode_device_info(
                    DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
                    region::COUNT,
                    NUM_IRQS,
                ));
                Ok(())
            }
            Command::DeviceGetRegionInfo => {
                let req = InfoRequest::decode_region_info(p)?;
                self.region_info(req, &mut sess.reply)
            }
            Command::DeviceGetRegionIoFds => {
                let req = InfoRequest::decode_region_io_fds(p)?;
                if req.index >= region::COUNT {
                    return Err(RequestError::NoSuchRegion(req.index));
                }
                Err(ProtocolError::Unsupported(cmd).into())
            }
            Command::DeviceGetIrqInfo => {
                let req = InfoRequest::decode_irq_info(p)?;
                let infos = self.device.context().irqs.infos();
                let info = infos
                    .get(req.index as usize)
                    .ok_or(IrqError::BadIndex(req.index))?;
                sess.reply
                    .put(&encode_irq_info(info.flags, req.index, info.count));
                Ok(())
            }
            Command::DeviceSetIrqs => {
                let req = SetIrqsRequest::decode(p)?;
                if req.data != IrqData::Eventfd && !msg.fds.is_empty() {
                    return Err(ProtocolError::BadFdCount {
                        what: "DEVICE_SET_IRQS",
                        got: msg.fds.len(),
                        expected: "none without DATA_EVENTFD",
                    }
                    .into());
                }
                debug!("SET_IRQS {:?} with {} fds", req, msg.fds.len());
                self.device
                    .context()
                    .irqs
                    .set_irqs(&req, std::mem::take(&mut msg.fds))?;
                Ok(())
            }
            Command::RegionRead => {
                let a = RegionAccess::decode_read(p, max_xfer)?;
                // The reply is the request's fixed part followed by the data,
                // read in place.
                sess.reply.put(&a.fixed());
                self.region_access(a, Access::Read(sess.reply.put_zeroed(a.count as usize)))
            }
            Command::RegionWrite => {
                let (a, data) = RegionAccess::decode_write(p, max_xfer)?;
                self.region_access(a, Access::Write(data))?;
                if !h.no_reply {
                    // Not for a posted write (QEMU's memory-BAR writes).
                    sess.reply.put(&a.fixed());
                }
                Ok(())
            }
            Command::RegionWriteMulti => {
                let writes = decode_write_multi(p)?;
                let n = writes.len() as u64;
                for w in writes {
                    self.region_access(
                        w.access,
                        Access::Write(&w.data[..w.access.count as usize]),
                    )?;
                }
                sess.reply.put(&n.to_le_bytes());
                Ok(())
            }
            Command::DeviceReset => {
                if !p.is_empty() {
                    return Err(ProtocolError::PayloadSizeMismatch {
                        what: "DEVICE_RESET",
                        got: p.len(),
                        expected: 0,
                    }
                    .into());
                }
                info!("device reset requested by the client");
                // A reset aborts DMA in flight: fail pending DMA messages now so a
                // worker waiting for a reply (which only this thread can route)
                // releases the device instead of stalling the reset.
                sess.requester.cancel_all();
                self.device.context().pasid.reset();
                self.device.config().reset();
                self.device.reset();
                Ok(())
            }
            Command::TranslatedDmaMap
            | Command::TranslatedDmaUnmap
            | Command::AtsInvalidate
            | Command::PageResponse => {
                let pasid = &self.device.context().pasid;
                let data = crate::extension::dispatch(cmd, pasid, p, &mut msg.fds)?;
                sess.reply.put(&data);
                Ok(())
            }
            Command::DmaRead
            | Command::DmaWrite
            | Command::AtsTranslate
            | Command::PageRequest
            | Command::PasidDmaRead
            | Command::PasidDmaWrite => Err(ProtocolError::WrongDirection(cmd).into()),
            Command::DirtyPages
            | Command::DeviceFeature
            | Command::MigDataRead
            | Command::MigDataWrite => Err(ProtocolError::Unsupported(cmd).into()),
        }
    }

    fn region_size(&mut self, index: u32) -> u64 {
        match index {
            region::CONFIG => CONFIG_SPACE_SIZE as u64,
            0..=6 => self
                .device
                .config()
                .bar(index as usize)
                .map_or(0, |b| b.size),
            _ => 0,
        }
    }

    fn region_info(&mut self, req: InfoRequest, out: &mut ReplyBuf) -> Result<(), RequestError> {
        if req.index >= region::COUNT {
            return Err(RequestError::NoSuchRegion(req.index));
        }
        let size = self.region_size(req.index);
        let mut flags = if size > 0 {
            REGION_FLAG_READ | REGION_FLAG_WRITE
        } else {
            0
        };
        if req.index == region::ROM {
            flags &= !REGION_FLAG_WRITE;
        }
        let mut mmap_offset = 0;
        let mut sparse: Vec<SparseArea> = Vec::new();
        if size > 0 && req.index < region::ROM {
            let io_bar = matches!(
                self.device.config().bar(req.index as usize).map(|b| b.kind),
                Some(BarKind::Io)
            );
            if let (false, Some(m)) = (io_bar, self.device.region_mmap(req.index)) {
                let fd = m.fd.try_clone_to_owned()?;
                flags |= REGION_FLAG_MMAP;
                mmap_offset = m.offset;
                sparse = m.areas;
                out.fds.push(fd);
            }
        }
        out.put(&encode_region_info(
            req.argsz,
            req.index,
            flags,
            size,
            mmap_offset,
            &sparse,
        ));
        Ok(())
    }

    fn region_access(&mut self, a: RegionAccess, access: Access<'_>) -> Result<(), RequestError> {
        let size = self.region_size(a.region);
        if a.region >= region::COUNT || size == 0 {
            return Err(RequestError::NoSuchRegion(a.region));
        }
        let end = a.offset.checked_add(u64::from(a.count));
        if end.map_or(true, |e| e > size) {
            return Err(RequestError::OutOfRange {
                region: a.region,
                offset: a.offset,
                count: a.count,
                size,
            });
        }
        match (a.region, access) {
            (region::CONFIG, Access::Read(buf)) => {
                self.device.config().read(a.offset, buf);
            }
            (region::CONFIG, Access::Write(data)) => {
                let ev = self.device.config().write(a.offset, data);
                if ev != Default::default() {
                    self.device.config_written(ev);
                }
            }
            (region::ROM, Access::Write(_)) => return Err(RequestError::Permission(a.region)),
            (r, Access::Read(buf)) => self.device.region_read(r, a.offset, buf)?,
            (r, Access::Write(data)) => self.device.region_write(r, a.offset, data)?,
        }
        Ok(())
    }
}

/// Borrows the stop eventfd for poll (vmm-sys-util's EventFd has no AsFd).
fn stop_fd(e: &EventFd) -> std::os::fd::BorrowedFd<'_> {
    // SAFETY: the fd belongs to `e`, which outlives the returned borrow.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

/// Watches a connection from a second thread, so that the connection thread
/// can block in recvmsg instead of polling before every message: it refuses
/// clients that connect while this one is attached and, on a stop request,
/// shuts the connection down, which wakes the blocked reader.
struct Watcher {
    done: Arc<EventFd>,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn start(
        stream: &UnixStream,
        listener: &UnixListener,
        stop: &Arc<EventFd>,
    ) -> io::Result<Watcher> {
        let (stream, listener) = (stream.try_clone()?, listener.try_clone()?);
        let stop = Arc::clone(stop);
        let done = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let finished = Arc::clone(&done);
        let thread = std::thread::Builder::new()
            .name("vfio-user-watch".into())
            .spawn(move || watch(&stream, &listener, &stop, &finished))?;
        Ok(Watcher { done, thread })
    }

    /// Ends the watch (the connection is over) and waits for the thread.
    fn finish(self) {
        let _ = self.done.write(1);
        let _ = self.thread.join();
    }
}

fn watch(stream: &UnixStream, listener: &UnixListener, stop: &EventFd, done: &EventFd) {
    loop {
        let mut fds = [
            // Not POLLIN: the watcher must not wake for every message.
            PollFd::new(stream.as_fd(), PollFlags::from_bits_retain(libc::POLLRDHUP)),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop_fd(stop), PollFlags::POLLIN),
            PollFd::new(stop_fd(done), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                error!("poll: {e}");
                return;
            }
            Ok(_) => {}
        }
        if fds[3].any().unwrap_or(false) {
            return;
        }
        if fds[2].any().unwrap_or(false) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        // The attached client goes first: once it has hung up (its EOF may not
        // be read yet), a client connecting after it must be served next, not
        // refused as a second one. Any event on its socket means it hung up:
        // POLLRDHUP, which nix has no name for (`any()` is then None), or
        // POLLHUP/POLLERR.
        if fds[0].any() != Some(false) {
            return;
        }
        if fds[1].any().unwrap_or(false) {
            if let Ok((extra, _)) = listener.accept() {
                warn!("refusing a second client: this device already has one");
                drop(extra);
            }
        }
    }
}

enum Access<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}
