//! `vfio-server`: whole vfio-user messages against a live server.
//!
//! A [`Server`] serving the NVMe controller (with its DOE mailbox, CMA/SPDM
//! responder and Security Send/Receive) runs on its own thread on a UNIX
//! socket; the target connects like QEMU, negotiates, and sends each input
//! as raw bytes (one or more messages, possibly with a memfd or an eventfd
//! attached as SCM_RIGHTS). Seeds are valid messages of every command built
//! with the protocol's encoders, and sequences that map guest memory,
//! enable the controller, ring doorbells and run a DOE exchange.
//!
//! Oracles:
//! - when the input is whole messages (every header's size adds up to the
//!   input), the server keeps the connection and answers a valid
//!   DEVICE_GET_INFO on it correctly (framing intact: errors are replies,
//!   never a dropped connection);
//! - when it is not (a truncated message, a size below the header), the
//!   target closes its side and the server must close the connection
//!   (framing lost), then accept a new client that negotiates and gets a
//!   correct DEVICE_GET_INFO;
//! - the server thread never exits or panics, and a full check (config
//!   space header, BAR0 CAP) passes every `check_every` inputs.

use super::nvme_ctrl::device;
use super::vfio_decode::{version_payload, QEMU_VERSION_JSON};
use crate::engine::Target;
use crate::mutate::{mutated_seed, Rng};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;
use vfio_user_server::client::{Client, ClientError};
use vfio_user_server::protocol::{
    encode_write_multi, Command, DmaMapRequest, DmaProt, DmaUnmapKind, DmaUnmapRequest, Header,
    IrqAction, IrqData, MessageType, MultiWrite, RegionAccess, SetIrqsRequest, HEADER_SIZE,
};
use vfio_user_server::{Server, StopHandle};

/// Guest-physical address the seeds map the memfd at.
const IOVA: u64 = 0x4000_0000;
/// Size of the memfd offered with DMA_MAP.
const MEMFD_SIZE: u64 = 1 << 20;
/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Input flag bits (first byte).
const ATTACH_MEMFD: u8 = 1;
const ATTACH_EVENTFD: u8 = 2;

/// The `vfio-server` target.
pub struct VfioServer {
    seeds: Vec<Vec<u8>>,
    path: PathBuf,
    dir: PathBuf,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    client: Option<Client>,
    memfd: OwnedFd,
    eventfd: OwnedFd,
    next_id: u16,
    /// Expected DEVICE_GET_INFO answer.
    info: (u32, u32, u32),
    /// Connections closed because framing was lost.
    pub reconnects: u64,
    /// Inputs of whole messages (the connection had to stay).
    whole: u64,
}

impl std::fmt::Debug for VfioServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioServer")
            .field("path", &self.path)
            .field("reconnects", &self.reconnects)
            .finish()
    }
}

fn msg(id: u16, cmd: Command, payload: &[u8]) -> Vec<u8> {
    let mut v = Header::command(id, cmd, payload.len()).encode().to_vec();
    v.extend_from_slice(payload);
    v
}

fn posted(id: u16, cmd: Command, payload: &[u8]) -> Vec<u8> {
    let mut h = Header::command(id, cmd, payload.len());
    h.no_reply = true;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

fn info_payload(argsz: u32, index: u32) -> Vec<u8> {
    [argsz, 0, index, 0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

fn region_write(id: u16, region: u32, offset: u64, data: &[u8]) -> Vec<u8> {
    let a = RegionAccess {
        offset,
        region,
        count: data.len() as u32,
    };
    msg(id, Command::RegionWrite, &a.encode(data))
}

fn region_read(id: u16, region: u32, offset: u64, count: u32) -> Vec<u8> {
    let a = RegionAccess {
        offset,
        region,
        count,
    };
    msg(id, Command::RegionRead, &a.encode(&[]))
}

/// Finds an extended capability in configuration space through the client.
fn find_ext_cap(c: &mut Client, id: u16) -> Option<u64> {
    let mut off = 0x100u64;
    for _ in 0..64 {
        let h = c.read32(7, off).ok()?;
        if h & 0xffff == u32::from(id) {
            return Some(off);
        }
        off = u64::from(h >> 20);
        if off < 0x100 {
            return None;
        }
    }
    None
}

/// The seeds: every command, valid, plus sequences that reach the device.
fn seeds(doe: u64) -> Vec<Vec<u8>> {
    let rw = DmaProt {
        read: true,
        write: true,
    };
    let map = DmaMapRequest {
        prot: rw,
        offset: 0,
        address: IOVA,
        size: MEMFD_SIZE,
    }
    .encode();
    let unmap = |kind, address, size, flags| {
        DmaUnmapRequest {
            argsz: 24,
            flags,
            kind,
            address,
            size,
        }
        .encode()
    };
    let irqs = |index, data, action, count| {
        SetIrqsRequest {
            index,
            start: 0,
            count,
            data,
            action,
        }
        .encode()
    };
    let with = |flags: u8, parts: &[Vec<u8>]| {
        let mut v = vec![flags];
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    };
    // Enabling the controller: AQA, ASQ, ACQ, CC.EN, then an admin doorbell.
    let enable = [
        posted(
            20,
            Command::RegionWrite,
            &RegionAccess {
                offset: 0x24,
                region: 0,
                count: 4,
            }
            .encode(&0x000f_000fu32.to_le_bytes()),
        ),
        region_write(21, 0, 0x28, &IOVA.to_le_bytes()),
        region_write(22, 0, 0x30, &(IOVA + 0x1000).to_le_bytes()),
        region_write(23, 0, 0x14, &0x0046_0001u32.to_le_bytes()),
        region_read(24, 0, 0x1c, 4),
        msg(
            25,
            Command::RegionWriteMulti,
            &encode_write_multi(&[MultiWrite {
                access: RegionAccess {
                    offset: 0x1000,
                    region: 0,
                    count: 4,
                },
                data: [1, 0, 0, 0, 0, 0, 0, 0],
            }]),
        ),
    ];
    // A DOE discovery through the mailbox registers (config space).
    let doe_exchange = [
        region_write(30, 7, doe + 0x10, &0x0000_0001u32.to_le_bytes()),
        region_write(31, 7, doe + 0x10, &3u32.to_le_bytes()),
        region_write(32, 7, doe + 0x10, &0x0000_0200u32.to_le_bytes()),
        region_write(33, 7, doe + 0x08, &0x8000_0000u32.to_le_bytes()),
        region_read(34, 7, doe + 0x0c, 4),
        region_read(35, 7, doe + 0x14, 4),
        region_write(36, 7, doe + 0x14, &0u32.to_le_bytes()),
    ];
    let mut s = vec![
        with(
            0,
            &[msg(
                1,
                Command::Version,
                &version_payload(QEMU_VERSION_JSON),
            )],
        ),
        with(ATTACH_MEMFD, &[msg(2, Command::DmaMap, &map)]),
        with(0, &[msg(3, Command::DmaMap, &map)]),
        with(
            0,
            &[msg(
                4,
                Command::DmaUnmap,
                &unmap(
                    DmaUnmapKind::Range {
                        address: IOVA,
                        size: MEMFD_SIZE,
                    },
                    IOVA,
                    MEMFD_SIZE,
                    0,
                ),
            )],
        ),
        with(
            0,
            &[msg(
                5,
                Command::DmaUnmap,
                &unmap(DmaUnmapKind::All, 0, 0, 2),
            )],
        ),
        with(
            0,
            &[msg(6, Command::DeviceGetInfo, &info_payload(16, 0)[..16])],
        ),
        with(
            0,
            &[msg(7, Command::DeviceGetRegionInfo, &info_payload(32, 0))],
        ),
        with(
            0,
            &[msg(8, Command::DeviceGetRegionInfo, &info_payload(32, 7))],
        ),
        with(
            0,
            &[msg(9, Command::DeviceGetRegionIoFds, &info_payload(32, 0))],
        ),
        with(
            0,
            &[msg(
                10,
                Command::DeviceGetIrqInfo,
                &info_payload(16, 2)[..16],
            )],
        ),
        with(
            ATTACH_EVENTFD,
            &[msg(
                11,
                Command::DeviceSetIrqs,
                &irqs(2, IrqData::Eventfd, IrqAction::Trigger, 1),
            )],
        ),
        with(
            0,
            &[msg(
                12,
                Command::DeviceSetIrqs,
                &irqs(2, IrqData::Bool(vec![true, false]), IrqAction::Mask, 2),
            )],
        ),
        with(
            0,
            &[msg(
                13,
                Command::DeviceSetIrqs,
                &irqs(0, IrqData::None, IrqAction::Unmask, 1),
            )],
        ),
        with(0, &[region_read(14, 7, 0, 64)]),
        with(0, &[region_read(15, 7, 0x100, 4)]),
        with(0, &[region_read(16, 0, 0, 8)]),
        with(0, &[region_write(17, 7, 4, &[6, 0])]),
        with(0, &[region_write(18, 4, 0, &[0; 16])]),
        with(0, &[msg(19, Command::DeviceReset, &[])]),
        with(
            0,
            &[msg(
                26,
                Command::DeviceFeature,
                &[16, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )],
        ),
        with(0, &[msg(27, Command::DirtyPages, &[])]),
        with(
            0,
            &[msg(
                28,
                Command::MigDataRead,
                &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0],
            )],
        ),
        with(
            0,
            &[{
                let mut h = Header::command(29, Command::DmaRead, 0);
                h.kind = MessageType::Reply;
                h.encode().to_vec()
            }],
        ),
    ];
    let mut all = vec![msg(2, Command::DmaMap, &map)];
    all.extend(enable.iter().cloned());
    s.push(with(ATTACH_MEMFD, &all));
    s.push(with(0, &enable));
    s.push(with(0, &doe_exchange));
    s
}

impl VfioServer {
    /// Starts the server (NVMe device) on a socket in a fresh directory.
    pub fn new() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "trustdev-fuzz-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("nvme.sock");
        let mut server = Server::new(device()?, &path).map_err(|e| format!("server: {e}"))?;
        let stop = server.stop_handle();
        let thread = std::thread::Builder::new()
            .name("fuzz-server".into())
            .spawn(move || {
                if let Err(e) = server.run() {
                    eprintln!("vfio-server: the server stopped: {e}");
                }
            })
            .map_err(|e| e.to_string())?;
        let memfd = nix::sys::memfd::memfd_create(
            c"trustdev-fuzz-guest",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .map_err(|e| format!("memfd: {e}"))?;
        nix::unistd::ftruncate(memfd.as_fd(), MEMFD_SIZE as i64)
            .map_err(|e| format!("ftruncate: {e}"))?;
        let eventfd = OwnedFd::from(
            nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)
                .map_err(|e| format!("eventfd: {e}"))?,
        );
        let mut t = VfioServer {
            seeds: Vec::new(),
            path,
            dir,
            stop,
            thread: Some(thread),
            client: None,
            memfd,
            eventfd,
            next_id: 0x8000,
            info: (0, 0, 0),
            reconnects: 0,
            whole: 0,
        };
        let c = t.connect()?;
        let info = c.device_info().map_err(|e| format!("device info: {e}"))?;
        let doe = find_ext_cap(c, 0x2e).ok_or("the device has no DOE capability")?;
        t.info = info;
        t.seeds = seeds(doe);
        Ok(t)
    }

    fn connect(&mut self) -> Result<&mut Client, String> {
        if self.client.is_none() {
            let mut last = String::new();
            // The server accepts the next client once it has finished with
            // the previous one (device reset, maps dropped).
            for _ in 0..200 {
                match Client::connect(&self.path) {
                    Ok(c) => {
                        c.set_timeout(Some(REPLY_TIMEOUT))
                            .map_err(|e| e.to_string())?;
                        self.client = Some(c);
                        break;
                    }
                    Err(e) => {
                        last = e.to_string();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            if self.client.is_none() {
                return Err(format!("cannot connect a new client: {last}"));
            }
        }
        self.client.as_mut().ok_or_else(|| "no client".into())
    }

    /// DEVICE_GET_INFO on the current connection, skipping replies to the
    /// input and refusing server DMA requests; `Ok(false)` if the server
    /// closed the connection.
    fn probe(&mut self) -> Result<bool, String> {
        self.next_id = self.next_id.wrapping_add(1).max(0x8000);
        let id = self.next_id;
        let want = self.info;
        let c = self.client.as_mut().ok_or("no client")?;
        let mut p = info_payload(16, 0);
        p.truncate(16);
        let m = msg(id, Command::DeviceGetInfo, &p);
        if let Err(e) = c.send_bytes(&m, &[]) {
            return if closed(&e) {
                Ok(false)
            } else {
                Err(format!("send the probe: {e}"))
            };
        }
        loop {
            let r = match c.recv() {
                Ok(r) => r,
                Err(e) if closed(&e) => return Ok(false),
                Err(e) => return Err(format!("no answer to DEVICE_GET_INFO: {e}")),
            };
            if r.header.kind == MessageType::Command {
                // A DMA_READ/WRITE for memory mapped without an fd: refuse.
                let h = r.header.error_reply(libc::EFAULT);
                let _ = c.send_bytes(&h.encode(), &[]);
                continue;
            }
            if r.header.msg_id != id || r.header.error.is_some() || r.payload.len() != 16 {
                continue;
            }
            let le =
                |i: usize| u32::from_le_bytes(r.payload[i..i + 4].try_into().unwrap_or([0; 4]));
            let got = (le(4), le(8), le(12));
            if got != want {
                return Err(format!(
                    "DEVICE_GET_INFO answered {got:?}, expected {want:?}"
                ));
            }
            return Ok(true);
        }
    }

    /// Closes our side and waits for the server to close the connection.
    fn hang_up(&mut self) -> Result<(), String> {
        let Some(mut c) = self.client.take() else {
            return Ok(());
        };
        let _ = c.stream().shutdown(std::net::Shutdown::Write);
        loop {
            match c.recv() {
                Ok(_) => {}
                Err(e) if closed(&e) => break,
                Err(e) => return Err(format!("the server did not close the connection: {e}")),
            }
        }
        self.reconnects += 1;
        Ok(())
    }
}

fn closed(e: &ClientError) -> bool {
    use vfio_user_server::transport::TransportError;
    match e {
        ClientError::Transport(TransportError::Closed | TransportError::Truncated { .. }) => true,
        ClientError::Transport(TransportError::Io(io)) | ClientError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Whether `bytes` is a sequence of whole messages as the server frames
/// them (each header's size at least the header, the sizes adding up).
pub fn whole_messages(bytes: &[u8]) -> bool {
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(h) = bytes.get(pos..pos + HEADER_SIZE) else {
            return false;
        };
        let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if size < HEADER_SIZE {
            return false;
        }
        pos = match pos.checked_add(size) {
            Some(p) => p,
            None => return false,
        };
    }
    pos == bytes.len()
}

impl Target for VfioServer {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        8192
    }

    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        mutated_seed(rng, &self.seeds, self.max_len(), out);
        // Half the inputs keep the framing whole (the payload mutated, the
        // size field fixed up), so most reach the decoders and the device.
        if rng.one_in(2) && out.len() > 1 + HEADER_SIZE && !whole_messages(&out[1..]) {
            let size = (out.len() - 1) as u32;
            out[5..9].copy_from_slice(&size.to_le_bytes());
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Some((&flags, bytes)) = input.split_first() else {
            return Ok(());
        };
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return Err("the server thread has exited".into());
        }
        let mut fds: Vec<RawFd> = Vec::new();
        if flags & ATTACH_MEMFD != 0 {
            fds.push(self.memfd.as_raw_fd());
        }
        if flags & ATTACH_EVENTFD != 0 {
            fds.push(self.eventfd.as_raw_fd());
        }
        let whole = whole_messages(bytes);
        let c = self.connect()?;
        if !bytes.is_empty() {
            if let Err(e) = c.send_bytes(bytes, &fds) {
                if !closed(&e) {
                    return Err(format!("send: {e}"));
                }
            }
        }
        if whole {
            self.whole += 1;
            if !self.probe()? {
                return Err("the server closed a connection whose framing was intact".into());
            }
        } else {
            self.hang_up()?;
            self.connect()?;
            if !self.probe()? {
                return Err("a new client was closed".into());
            }
        }
        Ok(())
    }

    fn stats(&self) -> String {
        format!(
            "{} inputs of whole messages (connection kept), {} connections closed after lost framing",
            self.whole, self.reconnects
        )
    }

    fn check(&mut self) -> Result<(), String> {
        self.hang_up()?;
        let c = self.connect()?;
        let id = c.read32(7, 0).map_err(|e| format!("config read: {e}"))?;
        let cap = c.read32(0, 0).map_err(|e| format!("BAR0 read: {e}"))?;
        if id & 0xffff != u32::from(trustdev_devices::nvme::VENDOR_ID) || cap == 0 {
            return Err(format!("config ID {id:#010x}, CAP {cap:#010x}"));
        }
        Ok(())
    }
}

impl Drop for VfioServer {
    fn drop(&mut self) {
        self.client = None;
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_oracle_follows_the_header_sizes() {
        let a = msg(1, Command::DeviceGetInfo, &[0; 16]);
        let b = msg(2, Command::DeviceReset, &[]);
        assert!(whole_messages(&[a.clone(), b.clone()].concat()));
        assert!(whole_messages(&[]));
        // Truncated second message, a size below the header, a size past the end.
        assert!(!whole_messages(&[a.clone(), b[..10].to_vec()].concat()));
        let mut small = b.clone();
        small[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert!(!whole_messages(&small));
        let mut big = a;
        big[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!whole_messages(&big));
    }
}
