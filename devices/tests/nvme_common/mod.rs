//! Shared helpers of the NVMe host-side tests: a server in this process or
//! as a `trustdev serve nvme` child, and (driver.rs) a vfio-user client set
//! up like a user-space NVMe driver.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trustdev_devices::nvme::host::Bar0;
use trustdev_devices::nvme::{NvmeArgs, NvmeConfig, NvmeDevice};
use vfio_user_server::pci::PortType;
use vfio_user_server::stats::Stats;
use vfio_user_server::{Server, StopHandle};

mod driver;
pub use driver::*;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "trustdev-nvme-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Defaults for tests: 32 MiB RAM namespace, 8 queue pairs.
pub fn args() -> NvmeArgs {
    NvmeArgs {
        size: Some(32 << 20),
        queues: 8,
        queue_entries: 1024,
        lba_size: 512,
        mdts: 7,
        temperature: 35,
        workers: Some(2),
        shadow_poll_us: 50,
        ..NvmeArgs::default()
    }
}

/// A server running in this process.
pub struct InProcess {
    pub socket: PathBuf,
    pub stop: StopHandle,
    pub stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl InProcess {
    pub fn start(a: &NvmeArgs) -> InProcess {
        InProcess::with(|socket| {
            let cfg = NvmeConfig::from_args(a, &socket.display().to_string()).unwrap();
            NvmeDevice::new(cfg, PortType::Endpoint).unwrap()
        })
    }

    /// Serves the device `make` builds for the socket path.
    pub fn with(make: impl FnOnce(&Path) -> NvmeDevice) -> InProcess {
        let dir = TempDir::new("srv");
        let socket = dir.path("nvme.sock");
        let dev = make(&socket);
        let mut server = Server::new(dev, &socket).unwrap();
        let stop = server.stop_handle();
        let stats = server.stats();
        let thread = std::thread::spawn(move || {
            server.run().unwrap();
        });
        InProcess {
            socket,
            stop,
            stats,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `trustdev serve nvme` as a child process.
pub struct ChildServer {
    pub socket: PathBuf,
    pub child: Child,
}

impl ChildServer {
    pub fn start(socket: &Path, extra: &[&str]) -> ChildServer {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(env!("CARGO_BIN_EXE_trustdev"))
            .arg("serve")
            .arg("nvme")
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn trustdev serve nvme");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "server socket did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        ChildServer {
            socket: socket.to_path_buf(),
            child,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let st = self.child.wait().unwrap();
        assert!(!st.success(), "killed by SIGKILL: {st:?}");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a 32-bit register of a client (panics on failure).
pub fn reg32<B: Bar0>(b: &mut B, off: u64) -> u32 {
    b.read_reg32(off)
}
