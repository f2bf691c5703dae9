//! Interoperability with an independent peer: the rust-vmm `vfio_user` crate
//! (0.1.7) as the client, against the DMA-copy example device.
//!
//! That client's quirks, which these tests rely on or document:
//! - it proposes version 0.1 (our server answers 0.0);
//! - it stores `resettable` inverted (`flags & RESET != RESET`), so
//!   `resettable()` is false for our resettable device;
//! - it never serves DMA_READ/DMA_WRITE, so only fd-backed DMA is used here;
//! - it ignores error replies (it reads a fixed-size reply whatever comes),
//!   so every request below must be valid.

mod common;

use common::device::{error, reg, status, BAR2_SIZE, DEVICE_ID, ID_VALUE, VENDOR_ID};
use common::*;
use memmap2::MmapOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::Instant;
use vfio_user_server::protocol::{
    irq_index, Command, DEVICE_FLAGS_PCI, IRQ_INFO_EVENTFD, IRQ_INFO_NORESIZE, REGION_FLAG_MMAP,
    REGION_FLAG_READ, REGION_FLAG_WRITE,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER.
const EVENTFD_TRIGGER: u32 = (1 << 2) | (1 << 5);
/// VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER.
const NONE_TRIGGER: u32 = 1 | (1 << 5);

/// Runs `f` on its own thread and fails the test if it takes longer than
/// [`PATIENCE`]: the rust-vmm client has no receive timeout, so a server that
/// failed to answer would otherwise hang the test run.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(v) => {
            let _ = worker.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: surface its message.
            match worker.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!("sent nothing yet returned"),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("rust-vmm client hung for {PATIENCE:?}"),
    }
}

fn read32(v: &mut vfio_user::Client, region: u32, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    v.region_read(region, offset, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn write32(v: &mut vfio_user::Client, region: u32, offset: u64, val: u32) {
    v.region_write(region, offset, &val.to_le_bytes()).unwrap();
}

fn wait_idle_vmm(v: &mut vfio_user::Client) -> u32 {
    let start = Instant::now();
    loop {
        let st = read32(v, 0, reg::STATUS);
        if st & status::BUSY == 0 {
            return st;
        }
        assert!(start.elapsed() < PATIENCE, "copy still busy");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn connect_and_inspect_regions() {
    let s = TestServer::start();
    let path = s.path.clone();
    bounded(move || {
        let v = vfio_user::Client::new(&path).expect("rust-vmm client connects");
        // Documented quirk: vfio_user 0.1.7 inverts VFIO_DEVICE_FLAGS_RESET,
        // so our resettable device reads as not resettable.
        assert!(
            !v.resettable(),
            "vfio_user 0.1.7 inverts the RESET flag; if this fails, the crate fixed it"
        );
        let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
        let sizes = [0x1000, 0x1000, BAR2_SIZE as u64, 0, 0, 0, 0, 4096, 0];
        for (i, size) in sizes.into_iter().enumerate() {
            let r = v.region(i as u32).unwrap_or_else(|| panic!("region {i}"));
            assert_eq!(r.size, size, "region {i} size");
            if size > 0 {
                assert_eq!(r.flags & rw, rw, "region {i} is read-write");
            }
            if i != 2 {
                assert!(r.file_offset.is_none(), "region {i} has no fd");
                assert!(r.sparse_areas.is_empty());
            }
        }
        let bar2 = v.region(2).unwrap();
        assert_ne!(bar2.flags & REGION_FLAG_MMAP, 0);
        let fo = bar2.file_offset.as_ref().expect("BAR2 mmap fd");
        assert_eq!(fo.start(), 0, "BAR2 starts at file offset 0");
        assert_eq!(bar2.sparse_areas.len(), 1);
        assert_eq!(
            (bar2.sparse_areas[0].offset, bar2.sparse_areas[0].size),
            (0x1000, 0x3000)
        );
        // The area is mmappable from the fd and shared with the device.
        let map = MmapOptions::new()
            .offset(fo.start() + 0x1000)
            .len(0x3000)
            .map_raw(fo.file())
            .unwrap();
        let mut v = v;
        v.region_write(2, 0x1000, b"rust-vmm").unwrap();
        let mut seen = [0u8; 8];
        for (i, b) in seen.iter_mut().enumerate() {
            // SAFETY: i < 8 <= the mapping's 0x3000 bytes; it lives while `map` does.
            *b = unsafe { std::ptr::read_volatile(map.as_ptr().add(i)) };
        }
        assert_eq!(&seen, b"rust-vmm");
        let irq = v.get_irq_info(irq_index::MSIX).unwrap();
        assert_eq!((irq.index, irq.count), (irq_index::MSIX, 4));
        assert_eq!(irq.flags, IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE);
        v.shutdown().unwrap();
    });
    // It proposed version 0.1 and was answered (0.0); one VERSION arrived.
    assert_eq!(s.stats.received(Command::Version as u16), 1);
    // Its DEVICE_GET_INFO carried argsz 32 (header included) and was accepted.
    assert_eq!(s.stats.received(Command::DeviceGetInfo as u16), 1);
    // The server serves the next client after it left.
    let mut c = s.connect();
    let (flags, _, _) = c.device_info().unwrap();
    assert_ne!(flags & DEVICE_FLAGS_PCI, 0);
}

#[test]
fn config_bar0_dma_interrupt_reset_unmap() {
    let s = TestServer::start();
    let path = s.path.clone();
    bounded(move || {
        let mut v = vfio_user::Client::new(&path).unwrap();
        // Configuration space.
        let ids = u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16;
        assert_eq!(read32(&mut v, 7, 0), ids);
        v.region_write(7, 4, &6u16.to_le_bytes()).unwrap();
        assert_eq!(read32(&mut v, 7, 4) & 0xffff, 6);
        write32(&mut v, 7, 0x114, 0xabcd_ef01);
        assert_eq!(read32(&mut v, 7, 0x114), 0xabcd_ef01);
        // BAR0.
        assert_eq!(read32(&mut v, 0, reg::ID), ID_VALUE);
        write32(&mut v, 0, reg::SCRATCH, 0x600d_cafe);
        assert_eq!(read32(&mut v, 0, reg::SCRATCH), 0x600d_cafe);

        // DMA into a memfd the client maps (it always asks for read-write).
        let ram = memfd(1 << 20);
        let f = file(&ram);
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i * 7 + 3) as u8).collect();
        f.write_all_at(&data, 0x1000).unwrap();
        const IOVA: u64 = 0x4000_0000;
        v.dma_map(0, IOVA, 1 << 20, ram.as_raw_fd()).unwrap();

        // MSI-X vector 0 with an eventfd.
        let ev = EventFd::new(EFD_NONBLOCK).unwrap();
        v.set_irqs(irq_index::MSIX, EVENTFD_TRIGGER, 0, 1, &[ev.as_raw_fd()])
            .unwrap();

        v.region_write(0, reg::SRC, &(IOVA + 0x1000).to_le_bytes())
            .unwrap();
        v.region_write(0, reg::DST, &(IOVA + 0x10_0000 - 0x2000).to_le_bytes())
            .unwrap();
        write32(&mut v, 0, reg::LEN, 0x2000);
        write32(&mut v, 0, reg::CTRL, 1);
        write32(&mut v, 0, reg::DOORBELL, 1);
        assert_eq!(wait_eventfd(&ev, PATIENCE), Some(1), "MSI-X signalled");
        assert_eq!(wait_idle_vmm(&mut v), status::DONE);
        let mut out = vec![0u8; 0x2000];
        f.read_exact_at(&mut out, 0x10_0000 - 0x2000).unwrap();
        assert_eq!(out, data);
        assert_eq!(read32(&mut v, 0, reg::COMPLETED), 1);

        // Reset clears the device (registers, config space), not the maps.
        v.reset().unwrap();
        assert_eq!(read32(&mut v, 0, reg::SCRATCH), 0);
        assert_eq!(read32(&mut v, 0, reg::COMPLETED), 0);
        assert_eq!(read32(&mut v, 7, 4) & 0xffff, 0);
        assert_eq!(read32(&mut v, 7, 0x114), 0);
        v.region_write(0, reg::SRC, &IOVA.to_le_bytes()).unwrap();
        v.region_write(0, reg::DST, &(IOVA + 0x8000).to_le_bytes())
            .unwrap();
        write32(&mut v, 0, reg::LEN, 0x100);
        write32(&mut v, 0, reg::DOORBELL, 1);
        assert_eq!(wait_idle_vmm(&mut v), status::DONE);

        // Unmap: the device can no longer reach that memory.
        v.dma_unmap(IOVA, 1 << 20).unwrap();
        write32(&mut v, 0, reg::DOORBELL, 1);
        assert_eq!(wait_idle_vmm(&mut v), status::ERROR);
        assert_eq!(read32(&mut v, 0, reg::ERROR), error::SOURCE_FAULT);

        // Disable MSI-X (count 0) the way the crate can express it.
        v.set_irqs(irq_index::MSIX, NONE_TRIGGER, 0, 0, &[])
            .unwrap();
        write32(&mut v, 0, reg::STATUS, status::ERROR);
        write32(&mut v, 0, reg::CTRL, 1);
        write32(&mut v, 0, reg::LEN, 0);
        write32(&mut v, 0, reg::DOORBELL, 1); // BAD_LENGTH raises at once
        assert_eq!(read32(&mut v, 0, reg::ERROR), error::BAD_LENGTH);
        assert_eq!(eventfd_now(&ev), None, "MSI-X was disabled");
        v.shutdown().unwrap();
    });
    // The server is back to listening, device reset.
    let mut c = s.connect();
    assert_eq!(c.read32(0, reg::SCRATCH).unwrap(), 0);
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
}
