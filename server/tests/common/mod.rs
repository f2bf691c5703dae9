//! Shared test fixtures: a DMA-copy server on a fresh socket in its own thread.

#![allow(dead_code)]

#[path = "../../examples/dma_copy/device.rs"]
pub mod device;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use vfio_user_server::pci::PortType;
use vfio_user_server::stats::Stats;
use vfio_user_server::{Server, StopHandle};

static NEXT: AtomicU32 = AtomicU32::new(0);

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
        let _ = env_logger::builder().is_test(true).try_init();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("vus-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev.sock");
        let dev = device::DmaCopy::new(port).unwrap();
        let mut server = Server::new(dev, &path).unwrap();
        let stop = server.stop_handle();
        let stats = server.stats();
        let thread = std::thread::spawn(move || server.run().unwrap());
        TestServer {
            path,
            stats,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
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
