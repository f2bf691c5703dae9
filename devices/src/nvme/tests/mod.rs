//! Controller tests: the in-process device driven through BAR0 by the host
//! driver, with its "guest memory" a memfd mapped into the DMA table.

pub(super) use super::host::{Bar0, BLOCK};
use super::host::{HostDriver, HostMemory};
use super::options::{NvmeArgs, NvmeConfig};
pub(super) use super::spec::{admin, cns, csts, feat, io, log_id, reg, Command, Status};
use super::NvmeDevice;
use std::os::fd::{AsFd, OwnedFd};
use vfio_user_server::irq::IrqInfo;
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::{irq_index, DmaMapRequest, IrqAction, IrqData, SetIrqsRequest};
use vfio_user_server::Device;
use vmm_eventfd::Efd;

mod ctrl_admin;
mod hostile;
mod nvm_io;
mod queues;

/// Minimal eventfd wrapper (counts interrupts).
mod vmm_eventfd {
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    pub struct Efd(pub OwnedFd);

    impl Efd {
        pub fn new() -> Efd {
            let fd =
                nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK)
                    .unwrap();
            Efd(OwnedFd::from(fd))
        }
        pub fn dup(&self) -> OwnedFd {
            self.0.as_fd().try_clone_to_owned().unwrap()
        }
        /// Reads and resets the counter (0 if nothing fired).
        pub fn take(&self) -> u64 {
            let mut b = [0u8; 8];
            match nix::unistd::read(self.0.as_raw_fd(), &mut b) {
                Ok(8) => u64::from_ne_bytes(b),
                _ => 0,
            }
        }
    }
}

pub(super) const BASE: u64 = 0x4000_0000;

pub(super) fn args() -> NvmeArgs {
    NvmeArgs {
        size: Some(8 << 20),
        queues: 8,
        queue_entries: 256,
        lba_size: 512,
        mdts: 7,
        temperature: 35,
        workers: Some(2),
        shadow_poll_us: 50,
        ..NvmeArgs::default()
    }
}

pub(super) struct Rig {
    pub(super) drv: HostDriver<NvmeDevice>,
    pub(super) vectors: Vec<Efd>,
}

pub(super) fn rig_with(a: &NvmeArgs) -> Rig {
    let cfg = NvmeConfig::from_args(a, "unit-test").unwrap();
    let dev = NvmeDevice::new(cfg, PortType::Endpoint).unwrap();
    let mem = HostMemory::new(BASE, 32 << 20).unwrap();
    let fd: OwnedFd = mem.fd().try_clone_to_owned().unwrap();
    dev.context()
        .memory
        .map(&DmaMapRequest::read_write(BASE, mem.len() as u64), Some(fd))
        .unwrap();
    let n = u32::from(a.queues) + 1;
    let vectors: Vec<Efd> = (0..n).map(|_| Efd::new()).collect();
    dev.context()
        .irqs
        .set_irqs(
            &SetIrqsRequest {
                index: irq_index::MSIX,
                start: 0,
                count: n,
                data: IrqData::Eventfd,
                action: IrqAction::Trigger,
            },
            vectors.iter().map(|e| e.dup()).collect(),
        )
        .unwrap();
    let drv = HostDriver::enable(dev, mem, 32).unwrap();
    Rig { drv, vectors }
}

pub(super) fn rig() -> Rig {
    rig_with(&args())
}

pub(super) fn cmd(opcode: u8, nsid: u32, cdw: [u32; 6]) -> Command {
    Command {
        opcode,
        nsid,
        cdw,
        ..Default::default()
    }
}

pub(super) fn st(c: &super::spec::Completion) -> Status {
    Status(c.status)
}
