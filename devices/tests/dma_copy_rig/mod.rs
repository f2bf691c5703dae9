//! A device served over a real vfio-user socket by a server thread of the
//! test, the client memory (a memfd) it DMAs into, DMA-copy jobs through
//! BAR0, and a device identity: shared by the IDE_KM, IDE link and TDISP
//! tests.

#![allow(dead_code)]

use spdm_responder::crypto::AsymAlgo;
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::rng::DeterministicEntropy;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use trustdev_devices::example::{reg, status};
use vfio_user_server::client::Client;
use vfio_user_server::protocol::DmaProt;
use vfio_user_server::{Device, Server};

/// Where the client memory is mapped for the device.
pub const IOVA: u64 = 0x8000_0000;
/// Its size.
pub const RAM: u64 = 4 << 20;
/// Where the client places BAR0.
pub const BAR0: u64 = 0xfe00_0000;

/// A device identity (P-256), generated once per test binary.
pub fn identity() -> Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let mut rng = DeterministicEntropy::new(b"trustdev dma-copy rig identity");
        Identity::generate(
            &[AsymAlgo::EcdsaP256],
            &CmaDeviceName::default(),
            1,
            &mut rng,
        )
        .unwrap()
    })
    .clone()
}

/// A device being served, and the client memory.
pub struct Served {
    /// A scratch directory (the socket, traces), removed on drop.
    pub dir: PathBuf,
    /// The client memory.
    pub ram: std::fs::File,
    /// The socket.
    pub socket: PathBuf,
    stop: vfio_user_server::StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves the device `build` makes (given the scratch directory) on a
/// socket in a new scratch directory named after `tag`.
pub fn serve<D: Device + 'static>(tag: &str, build: impl FnOnce(&Path) -> D) -> Served {
    let dir = std::env::temp_dir().join(format!("trustdev-rig-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dev = build(&dir);
    let socket = dir.join("dev.sock");
    let mut server = Server::new(dev, &socket).unwrap();
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.run().unwrap());
    let fd: OwnedFd = {
        let fd = nix::sys::memfd::memfd_create(c"ram", nix::sys::memfd::MemFdCreateFlag::empty())
            .unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(RAM).unwrap();
        f.into()
    };
    Served {
        dir,
        ram: std::fs::File::from(fd),
        socket,
        stop,
        thread: Some(thread),
    }
}

impl Served {
    /// A client with the memory mapped, BAR0 where a guest would put it,
    /// memory decode and bus master on.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket).unwrap();
        let rw = DmaProt {
            read: true,
            write: true,
        };
        c.dma_map(IOVA, RAM, 0, rw, Some(self.ram.as_fd())).unwrap();
        c.write32(7, 0x10, BAR0 as u32).unwrap();
        c.write32(7, 0x04, 0x6).unwrap();
        c
    }

    /// Writes client memory at `off`.
    pub fn ram_write(&self, off: u64, data: &[u8]) {
        self.ram.write_all_at(data, off).unwrap();
    }

    /// Reads client memory at `off`.
    pub fn ram_read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.ram.read_exact_at(&mut v, off).unwrap();
        v
    }
}

/// Programs a DMA-copy job through BAR0 (over the link when a stream is
/// secure) and waits for it; returns STATUS.
pub fn copy(c: &mut Client, src: u64, dst: u64, len: u32) -> u32 {
    c.region_write(0, reg::SRC, &(IOVA + src).to_le_bytes())
        .unwrap();
    c.region_write(0, reg::DST, &(IOVA + dst).to_le_bytes())
        .unwrap();
    c.write32(0, reg::LEN, len).unwrap();
    c.write32(0, reg::STATUS, status::DONE | status::ERROR)
        .unwrap();
    c.write32(0, reg::DOORBELL, 1).unwrap();
    let t = Instant::now();
    loop {
        let s = c.read32(0, reg::STATUS).unwrap();
        if s & status::BUSY == 0 && s & (status::DONE | status::ERROR) != 0 {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "copy stuck: {s:#x}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
