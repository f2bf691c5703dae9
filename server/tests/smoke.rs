mod common;

use common::device::{reg, status};
use common::{memfd, TestServer};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use vfio_user_server::client::Client;
use vfio_user_server::protocol::{DmaProt, IrqAction, IrqData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn dma_copy_end_to_end() {
    let s = TestServer::start();
    let mut c = Client::connect(&s.path).unwrap();
    let (flags, nr, ni) = c.device_info().unwrap();
    assert_eq!((flags, nr, ni), (3, 9, 5));
    assert_eq!(c.read32(0, reg::ID).unwrap(), common::device::ID_VALUE);
    let ram = memfd(1 << 20);
    c.dma_map(
        0,
        1 << 20,
        0,
        DmaProt {
            read: true,
            write: true,
        },
        Some(ram.as_fd()),
    )
    .unwrap();
    let file = std::fs::File::from(ram.try_clone().unwrap());
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"hello, device", 0x1000).unwrap();
    let ev = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(
        2,
        0,
        1,
        IrqData::Eventfd,
        IrqAction::Trigger,
        &[ev.as_raw_fd()],
    )
    .unwrap();
    c.write32(0, reg::SRC, 0x1000).unwrap();
    c.write32(0, reg::DST, 0x8000).unwrap();
    c.write32(0, reg::LEN, 13).unwrap();
    c.write32(0, reg::CTRL, 1).unwrap();
    c.region_write_posted(0, reg::DOORBELL, &1u32.to_le_bytes())
        .unwrap();
    let mut st = 0;
    for _ in 0..1000 {
        st = c.read32(0, reg::STATUS).unwrap();
        if st & status::BUSY == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(st, status::DONE);
    let mut out = [0u8; 13];
    file.read_exact_at(&mut out, 0x8000).unwrap();
    assert_eq!(&out, b"hello, device");
    assert_eq!(ev.read().unwrap(), 1);
}
