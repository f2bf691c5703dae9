//! A synchronous vfio-user client: the project's own peer for tests,
//! benchmarks and host-side tools. It also serves the server's DMA_READ and
//! DMA_WRITE requests for memory it registered without an fd.

use crate::iommu::{IommuModel, PasidClient, Served};
use crate::protocol::pasid::{InvalidateRequest, PageResponse};
use crate::protocol::{
    encode_write_multi, Command, DmaMapRequest, DmaProt, DmaTransfer, Header, IrqAction, IrqData,
    MessageType, MultiWrite, ProtocolError, Reader, RegionAccess, SetIrqsRequest, SparseArea,
    REGION_INFO_SIZE,
};
use crate::transport::{send_message, Message, Receiver, TransportError};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Client errors.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// Receiving failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server's reply is malformed.
    #[error("bad reply: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server answered with an error reply.
    #[error("server error reply: {}", io::Error::from_raw_os_error(*.0))]
    Server(i32),
    /// Something unexpected arrived.
    #[error("unexpected: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The errno of a server error reply, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ClientError::Server(e) => Some(*e),
            _ => None,
        }
    }
}

/// Largest message payload the client accepts.
const MAX_MESSAGE: usize = 64 << 20;

/// A reply as received.
#[derive(Debug)]
pub struct Response {
    /// Reply header.
    pub header: Header,
    /// Reply payload.
    pub payload: Vec<u8>,
    /// Fds attached to the reply.
    pub fds: Vec<OwnedFd>,
}

/// A decoded DEVICE_GET_REGION_INFO reply.
#[derive(Debug)]
pub struct RegionInfo {
    /// Region flags.
    pub flags: u32,
    /// Region size.
    pub size: u64,
    /// mmap offset.
    pub offset: u64,
    /// Sparse mmap areas.
    pub sparse: Vec<SparseArea>,
    /// The mmap fd, if any.
    pub fd: Option<OwnedFd>,
}

/// A vfio-user client connection.
#[derive(Debug)]
pub struct Client {
    rx: Receiver,
    next_id: u16,
    /// The server's VERSION reply JSON.
    pub server_caps: String,
    /// Memory the client serves to DMA_READ/DMA_WRITE (windows mapped without fd).
    remote: BTreeMap<u64, Vec<u8>>,
    /// DMA_READ/WRITE requests served so far.
    pub dma_requests_served: u64,
    /// The PASID extension's client side, once enabled.
    pasid: Option<PasidClient>,
    /// Commands sent without waiting for their reply (automatic page
    /// responses); their replies are consumed when they arrive.
    detached: HashSet<u16>,
    /// Error replies received for detached commands: (id, errno).
    pub detached_errors: Vec<(u16, i32)>,
    /// Reused message buffer.
    scratch: Vec<u8>,
}

impl Client {
    /// Connects and negotiates the version (QEMU's capability proposal).
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let mut c = Client::connect_raw(path)?;
        c.negotiate()?;
        Ok(c)
    }

    /// Sends VERSION with QEMU 11.1's capability proposal and checks the reply.
    pub fn negotiate(&mut self) -> Result<(), ClientError> {
        self.negotiate_with("")
    }

    /// Sends VERSION with QEMU 11.1's capability proposal plus `extra`
    /// members of the capabilities object (e.g.
    /// `"pasid":{"ats":true,"pri":true,"dma":true}`), and checks the reply.
    pub fn negotiate_with(&mut self, extra: &str) -> Result<(), ClientError> {
        let c = self;
        let sep = if extra.is_empty() { "" } else { "," };
        let json = format!(
            r#"{{"capabilities":{{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true{sep}{extra}}}}}"#
        );
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(json.as_bytes());
        p.push(0);
        let r = c.request(Command::Version, &p, &[])?;
        let mut rd = Reader::new(&r.payload, "VERSION reply");
        let (major, minor) = (rd.u16()?, rd.u16()?);
        if major != 0 || minor != 0 {
            return Err(ClientError::Unexpected(format!("version {major}.{minor}")));
        }
        let rest = rd.rest();
        c.server_caps = String::from_utf8_lossy(rest.strip_suffix(&[0]).unwrap_or(rest)).into();
        Ok(())
    }

    /// Connects without negotiating (for protocol tests).
    pub fn connect_raw(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)?;
        Ok(Client {
            rx: Receiver::new(stream, MAX_MESSAGE),
            next_id: 1,
            server_caps: String::new(),
            remote: BTreeMap::new(),
            dma_requests_served: 0,
            pasid: None,
            detached: HashSet::new(),
            detached_errors: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The socket (for raw writes in tests).
    pub fn stream(&self) -> &UnixStream {
        self.rx.stream()
    }

    /// Sets a receive timeout for replies.
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.rx.stream().set_read_timeout(t)
    }

    fn id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends a command and waits for its reply, serving server DMA requests
    /// meanwhile. An error reply becomes [`ClientError::Server`].
    pub fn request(
        &mut self,
        cmd: Command,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<Response, ClientError> {
        let h = Header::command(self.id(), cmd, payload.len());
        self.request_with_header(h, payload, fds)
    }

    /// Like [`Client::request`] with a caller-made header (any id, flags).
    pub fn request_with_header(
        &mut self,
        h: Header,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<Response, ClientError> {
        send_message(self.rx.stream(), &h, payload, fds)?;
        self.wait_reply(h.msg_id)
    }

    /// Sends a command with NO_REPLY set.
    pub fn post(&mut self, cmd: Command, payload: &[u8]) -> Result<(), ClientError> {
        let mut h = Header::command(self.id(), cmd, payload.len());
        h.no_reply = true;
        send_message(self.rx.stream(), &h, payload, &[])?;
        Ok(())
    }

    /// Sends raw bytes (hostile-input tests).
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<(), ClientError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let iov = [io::IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cm: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<UnixAddr>(
            self.rx.stream().as_raw_fd(),
            &iov,
            cm,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        Ok(())
    }

    /// Receives the next message (reply or server request) as is.
    pub fn recv(&mut self) -> Result<Message, ClientError> {
        Ok(self.rx.recv()?.into_owned())
    }

    /// Waits for the reply with `id`, serving DMA requests that come first.
    pub fn wait_reply(&mut self, id: u16) -> Result<Response, ClientError> {
        loop {
            let mut m = self.recv()?;
            if m.header.kind == MessageType::Command {
                self.serve_dma(m)?;
                continue;
            }
            if m.header.msg_id != id && self.detached.remove(&m.header.msg_id) {
                if let Some(e) = m.header.error {
                    self.detached_errors.push((m.header.msg_id, e as i32));
                }
                continue;
            }
            if m.header.msg_id != id {
                return Err(ClientError::Unexpected(format!(
                    "reply id {} while waiting for {id}",
                    m.header.msg_id
                )));
            }
            if let Some(errno) = m.header.error {
                return Err(ClientError::Server(errno as i32));
            }
            return Ok(Response {
                header: m.header,
                payload: std::mem::take(&mut m.payload),
                fds: std::mem::take(&mut m.fds),
            });
        }
    }

    /// Serves server requests (DMA_READ/WRITE) until `timeout` passes with
    /// none arriving. Returns how many were served.
    pub fn serve_requests(&mut self, timeout: Duration) -> Result<u64, ClientError> {
        let before = self.dma_requests_served;
        self.rx.stream().set_read_timeout(Some(timeout))?;
        let r = loop {
            match self.recv() {
                Ok(m) if m.header.kind == MessageType::Command => self.serve_dma(m)?,
                Ok(m) if self.detached.remove(&m.header.msg_id) => {
                    if let Some(e) = m.header.error {
                        self.detached_errors.push((m.header.msg_id, e as i32));
                    }
                }
                Ok(m) => {
                    break Err(ClientError::Unexpected(format!(
                        "reply {} with nothing outstanding",
                        m.header.msg_id
                    )))
                }
                Err(ClientError::Transport(TransportError::Io(e)))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(())
                }
                Err(e) => break Err(e),
            }
        };
        self.rx.stream().set_read_timeout(None)?;
        r.map(|_| self.dma_requests_served - before)
    }

    fn remote_slice(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let (base, buf) = self.remote.range_mut(..=addr).next_back()?;
        let off = usize::try_from(addr - base).ok()?;
        buf.get_mut(off..off.checked_add(len)?)
    }

    fn serve_dma(&mut self, m: Message) -> Result<(), ClientError> {
        let h = m.header;
        let cmd = Command::from_raw(h.command);
        let reply = match cmd {
            Some(Command::DmaRead) => {
                let (t, _) = DmaTransfer::decode(&m.payload, "DMA_READ")?;
                match self.remote_slice(t.address, t.count as usize) {
                    Some(s) => Ok(t.encode(s)),
                    None => Err(libc::EFAULT),
                }
            }
            Some(Command::DmaWrite) => {
                let (t, data) = DmaTransfer::decode(&m.payload, "DMA_WRITE")?;
                let data = data.to_vec();
                match self.remote_slice(t.address, data.len()) {
                    Some(s) if t.count as usize == data.len() => {
                        s.copy_from_slice(&data);
                        Ok(t.encode(&[]))
                    }
                    _ => Err(libc::EFAULT),
                }
            }
            Some(
                c @ (Command::AtsTranslate
                | Command::PageRequest
                | Command::PasidDmaRead
                | Command::PasidDmaWrite),
            ) if self.pasid.is_some() => {
                let served = self.pasid.as_mut().map(|p| p.serve(c, &m.payload));
                match served {
                    Some(Served::Reply(p)) => Ok(p),
                    Some(Served::Error(e)) => Err(e),
                    Some(Served::Posted(rsp)) => {
                        if let Some(rsp) = rsp {
                            let payload = rsp.encode();
                            let hdr =
                                Header::command(self.id(), Command::PageResponse, payload.len());
                            self.detached.insert(hdr.msg_id);
                            send_message(self.rx.stream(), &hdr, &payload, &[])?;
                        }
                        return Ok(());
                    }
                    None => Err(libc::ENOSYS),
                }
            }
            _ => Err(libc::ENOSYS),
        };
        self.dma_requests_served += 1;
        if h.no_reply {
            return Ok(());
        }
        match reply {
            Ok(p) => send_message(self.rx.stream(), &h.reply(p.len()), &p, &[])?,
            Err(e) => send_message(self.rx.stream(), &h.error_reply(e), &[], &[])?,
        }
        Ok(())
    }

    /// DEVICE_GET_INFO: (flags, num_regions, num_irqs).
    pub fn device_info(&mut self) -> Result<(u32, u32, u32), ClientError> {
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_le_bytes());
        let r = self.request(Command::DeviceGetInfo, &p, &[])?;
        let mut rd = Reader::new(&r.payload, "DEVICE_GET_INFO reply");
        let _argsz = rd.u32()?;
        Ok((rd.u32()?, rd.u32()?, rd.u32()?))
    }

    /// DEVICE_GET_REGION_INFO, asking again with a larger argsz if needed.
    pub fn region_info(&mut self, index: u32) -> Result<RegionInfo, ClientError> {
        let mut argsz = REGION_INFO_SIZE;
        loop {
            let mut p = vec![0u8; REGION_INFO_SIZE as usize];
            p[0..4].copy_from_slice(&argsz.to_le_bytes());
            p[8..12].copy_from_slice(&index.to_le_bytes());
            let r = self.request(Command::DeviceGetRegionInfo, &p, &[])?;
            let mut rd = Reader::new(&r.payload, "REGION_INFO reply");
            let need = rd.u32()?;
            let flags = rd.u32()?;
            let _index = rd.u32()?;
            let cap_offset = rd.u32()?;
            let size = rd.u64()?;
            let offset = rd.u64()?;
            if need > argsz && cap_offset == 0 {
                argsz = need;
                continue;
            }
            let mut sparse = Vec::new();
            if cap_offset != 0 {
                let caps = &r.payload;
                let mut c = Reader::new(
                    caps.get(cap_offset as usize..).unwrap_or(&[]),
                    "region capability",
                );
                let id = c.u16()?;
                let _ver = c.u16()?;
                let _next = c.u32()?;
                if id == crate::protocol::REGION_INFO_CAP_SPARSE_MMAP {
                    let n = c.u32()?;
                    let _ = c.u32()?;
                    for _ in 0..n {
                        sparse.push(SparseArea {
                            offset: c.u64()?,
                            size: c.u64()?,
                        });
                    }
                }
            }
            return Ok(RegionInfo {
                flags,
                size,
                offset,
                sparse,
                fd: r.fds.into_iter().next(),
            });
        }
    }

    /// DEVICE_GET_IRQ_INFO: (flags, count).
    pub fn irq_info(&mut self, index: u32) -> Result<(u32, u32), ClientError> {
        let mut p = vec![0u8; 16];
        p[0..4].copy_from_slice(&16u32.to_le_bytes());
        p[8..12].copy_from_slice(&index.to_le_bytes());
        let r = self.request(Command::DeviceGetIrqInfo, &p, &[])?;
        let mut rd = Reader::new(&r.payload, "IRQ_INFO reply");
        let _ = rd.u32()?;
        let flags = rd.u32()?;
        let _ = rd.u32()?;
        Ok((flags, rd.u32()?))
    }

    /// DEVICE_SET_IRQS.
    pub fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        data: IrqData,
        action: IrqAction,
        fds: &[RawFd],
    ) -> Result<(), ClientError> {
        let req = SetIrqsRequest {
            index,
            start,
            count,
            data,
            action,
        };
        self.request(Command::DeviceSetIrqs, &req.encode(), fds)?;
        Ok(())
    }

    /// REGION_READ.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let a = RegionAccess {
            offset,
            region,
            count: len,
        };
        let r = self.request(Command::RegionRead, &a.encode(&[]), &[])?;
        let data = r.payload.get(RegionAccess::SIZE..).unwrap_or(&[]);
        if data.len() != len as usize {
            return Err(ClientError::Unexpected(format!(
                "REGION_READ returned {} bytes, asked {len}",
                data.len()
            )));
        }
        Ok(data.to_vec())
    }

    /// Reads a little-endian u32 from a region.
    pub fn read32(&mut self, region: u32, offset: u64) -> Result<u32, ClientError> {
        let d = self.region_read(region, offset, 4)?;
        Ok(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
    }

    /// REGION_WRITE, waiting for the reply.
    pub fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let a = RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        };
        self.request(Command::RegionWrite, &a.encode(data), &[])?;
        Ok(())
    }

    /// Writes a little-endian u32 to a region (waits for the reply).
    pub fn write32(&mut self, region: u32, offset: u64, v: u32) -> Result<(), ClientError> {
        self.region_write(region, offset, &v.to_le_bytes())
    }

    /// Posted REGION_WRITE (NO_REPLY), as QEMU sends memory-BAR writes.
    pub fn region_write_posted(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let a = RegionAccess {
            offset,
            region,
            count: data.len() as u32,
        };
        // Posted writes come in streams: encode into a reused buffer.
        let mut p = std::mem::take(&mut self.scratch);
        p.clear();
        p.extend_from_slice(&a.fixed());
        p.extend_from_slice(data);
        let r = self.post(Command::RegionWrite, &p);
        self.scratch = p;
        r
    }

    /// REGION_WRITE_MULTI with a reply; returns the reported write count.
    pub fn write_multi(&mut self, writes: &[MultiWrite]) -> Result<u64, ClientError> {
        let r = self.request(Command::RegionWriteMulti, &encode_write_multi(writes), &[])?;
        Ok(Reader::new(&r.payload, "WRITE_MULTI reply").u64()?)
    }

    /// DMA_MAP of `fd` (or, with `None`, of message-served memory the client
    /// keeps itself, zero-filled).
    pub fn dma_map(
        &mut self,
        address: u64,
        size: u64,
        offset: u64,
        prot: DmaProt,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        self.map_window(Command::DmaMap, (address, size, offset), prot, fd)?;
        if fd.is_none() {
            self.remote.insert(address, vec![0; size as usize]);
        }
        Ok(())
    }

    /// Message-served memory at `address` (registered with `dma_map(.., None)`).
    pub fn remote_memory(&mut self, address: u64) -> Option<&mut Vec<u8>> {
        self.remote.get_mut(&address)
    }

    /// DMA_UNMAP of exactly `address+size`.
    pub fn dma_unmap(&mut self, address: u64, size: u64) -> Result<(), ClientError> {
        self.unmap_window(Command::DmaUnmap, address, size)?;
        self.remote.remove(&address);
        Ok(())
    }

    /// DMA_MAP or TRANSLATED_DMA_MAP of `size` bytes at `address` from
    /// `fd` at `offset`.
    fn map_window(
        &mut self,
        cmd: Command,
        (address, size, offset): (u64, u64, u64),
        prot: DmaProt,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let req = DmaMapRequest {
            prot,
            offset,
            address,
            size,
        };
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.request(cmd, &req.encode(), &fds)?;
        Ok(())
    }

    /// DMA_UNMAP or TRANSLATED_DMA_UNMAP of exactly `address+size`.
    fn unmap_window(&mut self, cmd: Command, address: u64, size: u64) -> Result<(), ClientError> {
        let mut p = Vec::with_capacity(24);
        p.extend_from_slice(&24u32.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&address.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        self.request(cmd, &p, &[])?;
        Ok(())
    }

    /// Enables the PASID extension's client side around `iommu` (after
    /// negotiating `"pasid"`): ATS_TRANSLATE, PAGE_REQUEST and PASID DMA
    /// requests are then served from the model.
    pub fn enable_pasid(&mut self, iommu: IommuModel) {
        self.pasid = Some(PasidClient::new(iommu));
    }

    /// The extension's client side, if enabled.
    pub fn pasid(&mut self) -> Option<&mut PasidClient> {
        self.pasid.as_mut()
    }

    /// TRANSLATED_DMA_MAP: like [`Client::dma_map`], into the translated
    /// (physical) address space.
    pub fn translated_dma_map(
        &mut self,
        address: u64,
        size: u64,
        offset: u64,
        prot: DmaProt,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        self.map_window(Command::TranslatedDmaMap, (address, size, offset), prot, fd)
    }

    /// TRANSLATED_DMA_UNMAP of exactly `address+size`.
    pub fn translated_dma_unmap(&mut self, address: u64, size: u64) -> Result<(), ClientError> {
        self.unmap_window(Command::TranslatedDmaUnmap, address, size)
    }

    /// ATS_INVALIDATE; returns when the device no longer uses the
    /// translations.
    pub fn ats_invalidate(&mut self, req: &InvalidateRequest) -> Result<(), ClientError> {
        self.request(Command::AtsInvalidate, &req.encode(), &[])?;
        Ok(())
    }

    /// PAGE_RESPONSE, waiting for its reply.
    pub fn page_response(&mut self, rsp: &PageResponse) -> Result<(), ClientError> {
        self.request(Command::PageResponse, &rsp.encode(), &[])?;
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<(), ClientError> {
        self.request(Command::DeviceReset, &[], &[])?;
        Ok(())
    }
}
