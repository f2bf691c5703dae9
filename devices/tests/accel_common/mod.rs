//! Shared helpers of the accelerator's host-side tests: the device served
//! in this process on a fresh socket, and a connected driver.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use trustdev_devices::accel::desc::{flags, opcode, Descriptor};
use trustdev_devices::accel::host::AccelHost;
use trustdev_devices::accel::{AccelConfig, AccelDevice};
use vfio_user_server::iommu::IommuModel;
use vfio_user_server::stats::Stats;
use vfio_user_server::{Server, StopHandle};

/// IOVA of the driver's untranslated memory.
pub const IOVA: u64 = 0x1_0000_0000;
/// Physical base of the IOMMU model's memory.
pub const PHYS: u64 = 0x4000_0000;

/// A served accelerator; stopped on drop.
pub struct Served {
    pub socket: PathBuf,
    pub stop: StopHandle,
    pub stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Served {
    pub fn start(cfg: AccelConfig) -> Served {
        let _ = env_logger::builder().is_test(true).try_init();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "trustdev-accel-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("accel.sock");
        let dev = AccelDevice::new(cfg).unwrap();
        let mut server = Server::new(dev, &socket).unwrap();
        let stop = server.stop_handle();
        let stats = server.stats();
        let thread = std::thread::spawn(move || server.run().unwrap());
        Served {
            socket,
            stop,
            stats,
            thread: Some(thread),
            dir,
        }
    }

    /// True while the server thread runs.
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// A driver with `mem` bytes of untranslated memory.
    pub fn host(&self, mem: usize) -> AccelHost {
        AccelHost::connect(&self.socket, IOVA, mem, None).unwrap()
    }

    /// A driver with the PASID extension and an IOMMU model of `phys` bytes.
    pub fn pasid_host(&self, mem: usize, phys: u64) -> AccelHost {
        let m = IommuModel::new(PHYS, phys).unwrap();
        AccelHost::connect(&self.socket, IOVA, mem, Some(m)).unwrap()
    }
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

/// A descriptor asking for a completion record.
pub fn desc(op: u8) -> Descriptor {
    Descriptor {
        opcode: op,
        flags: flags::COMPLETION,
        ..Descriptor::default()
    }
}

/// A NOP.
pub fn nop() -> Descriptor {
    desc(opcode::NOP)
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Generous bound for waits on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Sets a descriptor's addresses and length.
pub trait With {
    /// `src`, `dst`, `len`.
    fn with(self, src: u64, dst: u64, len: u32) -> Self;
}

impl With for Descriptor {
    fn with(mut self, src: u64, dst: u64, len: u32) -> Self {
        self.src = src;
        self.dst = dst;
        self.len = len;
        self
    }
}
