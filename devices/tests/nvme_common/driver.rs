//! A vfio-user client set up like a user-space NVMe driver (memfd "guest
//! RAM" mapped with DMA_MAP, MSI-X eventfds, the controller enabled), and
//! the data patterns the tests write. Also used by the power-cut test of
//! the e2e package, inside a guest.

#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use trustdev_devices::nvme::host::{HostDriver, HostMemory};
use vfio_user_server::client::Client;
use vfio_user_server::protocol::{irq_index, IrqAction, IrqData};

/// IOVA of the test's guest memory.
pub const IOVA: u64 = 0x1_0000_0000;

/// MSI-X eventfds handed to the server.
pub struct Vectors(pub Vec<OwnedFd>);

impl Vectors {
    /// Interrupts fired on `v` since the last look.
    pub fn take(&self, v: usize) -> u64 {
        let mut b = [0u8; 8];
        match nix::unistd::read(self.0[v].as_raw_fd(), &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }
}

/// Connects, maps `mem_len` bytes of memfd memory at [`IOVA`], assigns
/// MSI-X eventfds for every vector and enables the controller.
pub fn connect(socket: &Path, mem_len: usize) -> (HostDriver<Client>, Vectors) {
    // The socket file appears at bind(), a moment before listen(): retry
    // while the server gets there.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        match Client::connect(socket) {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() > deadline => panic!("connect: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    c.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let mem = HostMemory::new(IOVA, mem_len).unwrap();
    mem.dma_map(&mut c).unwrap();
    let (_, count) = c.irq_info(irq_index::MSIX).unwrap();
    let fds: Vec<OwnedFd> = (0..count)
        .map(|_| {
            OwnedFd::from(
                nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)
                    .unwrap(),
            )
        })
        .collect();
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_fd().as_raw_fd()).collect();
    for (i, chunk) in raw.chunks(16).enumerate() {
        c.set_irqs(
            irq_index::MSIX,
            (i * 16) as u32,
            chunk.len() as u32,
            IrqData::Eventfd,
            IrqAction::Trigger,
            chunk,
        )
        .unwrap();
    }
    let drv = HostDriver::enable(c, mem, 32).expect("enable the controller");
    (drv, Vectors(fds))
}

/// A deterministic pattern for block `lba` of generation `gen`.
pub fn pattern(lba: u64, gen: u64, len: usize) -> Vec<u8> {
    let mut x =
        lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ gen.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
