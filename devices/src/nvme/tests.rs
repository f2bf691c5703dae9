//! Controller tests: the in-process device driven through BAR0 by the host
//! driver, with its "guest memory" a memfd mapped into the DMA table.

use super::host::{Bar0, HostDriver, HostMemory, BLOCK};
use super::options::{NvmeArgs, NvmeConfig};
use super::spec::{admin, cns, csts, feat, io, log_id, reg, Command, Status};
use super::NvmeDevice;
use std::os::fd::{AsFd, OwnedFd};
use vfio_user_server::irq::IrqInfo;
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::{
    irq_index, DmaMapRequest, DmaProt, IrqAction, IrqData, SetIrqsRequest,
};
use vfio_user_server::Device;
use vmm_eventfd::Efd;

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

const BASE: u64 = 0x4000_0000;

fn args() -> NvmeArgs {
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

struct Rig {
    drv: HostDriver<NvmeDevice>,
    vectors: Vec<Efd>,
}

fn rig_with(a: &NvmeArgs) -> Rig {
    let cfg = NvmeConfig::from_args(a, "unit-test").unwrap();
    let dev = NvmeDevice::new(cfg, PortType::Endpoint).unwrap();
    let mem = HostMemory::new(BASE, 32 << 20).unwrap();
    let fd: OwnedFd = mem.fd().try_clone_to_owned().unwrap();
    dev.context()
        .memory
        .map(
            &DmaMapRequest {
                prot: DmaProt {
                    read: true,
                    write: true,
                },
                offset: 0,
                address: BASE,
                size: mem.len() as u64,
            },
            Some(fd),
        )
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

fn rig() -> Rig {
    rig_with(&args())
}

fn cmd(opcode: u8, nsid: u32, cdw: [u32; 6]) -> Command {
    Command {
        opcode,
        nsid,
        cdw,
        ..Default::default()
    }
}

fn st(c: &super::spec::Completion) -> Status {
    Status(c.status)
}

#[test]
fn irq_info_has_a_vector_per_queue() {
    let infos = IrqInfo::pci(1, 9);
    assert_eq!(infos[irq_index::MSIX as usize].count, 9);
    let (t, pba, size) = super::msix_layout(65);
    assert_eq!(t, 0);
    assert!(u64::from(pba) >= 65 * 16 && u64::from(pba) + 16 <= size);
    assert_eq!(super::bar0_size(64, 0), 0x4000);
    assert!(super::bar0_size(128, 4) >= 0x1000 + 129 * 2 * 64);
}

#[test]
fn registers_and_lifecycle() {
    let mut r = rig();
    let d = &mut r.drv;
    let cap = d.bar.read_reg64(reg::CAP);
    assert_eq!(cap & 0xffff, 255, "MQES");
    assert_ne!(cap & (1 << 16), 0, "CQR");
    assert_ne!(cap & (1 << 37), 0, "CSS NVM");
    assert_eq!((cap >> 48) & 0xf, 0, "MPSMIN 4K");
    assert_eq!((cap >> 52) & 0xf, 4, "MPSMAX 64K");
    assert_eq!(d.bar.read_reg32(reg::VS), 0x0002_0000);
    assert_eq!(d.bar.read_reg32(reg::CSTS) & csts::RDY, 1);
    // INTMS/INTMC.
    d.bar.write_reg32(reg::INTMS, 0b101);
    assert_eq!(d.bar.read_reg32(reg::INTMC), 0b101);
    d.bar.write_reg32(reg::INTMC, 0b001);
    assert_eq!(d.bar.read_reg32(reg::INTMS), 0b100);
    // Byte-wide register write merges.
    let mut bytes = [0u8; 1];
    d.bar.region_read(0, reg::VS + 2, &mut bytes).unwrap();
    assert_eq!(bytes, [2]);
    // Shutdown notification.
    d.shutdown().unwrap();
    assert_eq!(
        d.bar.read_reg32(reg::CSTS) & csts::SHST_MASK,
        csts::SHST_COMPLETE
    );
    // Reset (EN=0) clears RDY and SHST.
    d.bar.write_reg32(reg::CC, 0);
    super::host::wait_csts(&mut d.bar, csts::RDY | csts::SHST_MASK, 0).unwrap();
    // Invalid CC values: MPS above MPSMAX, AMS not round robin, CSS.
    for bad in [(5 << 7), (1 << 11), (1 << 4)] {
        d.bar.write_reg32(reg::CC, 1 | (6 << 16) | (4 << 20) | bad);
        super::host::wait_csts(&mut d.bar, csts::CFS, csts::CFS).unwrap();
        assert_eq!(d.bar.read_reg32(reg::CSTS) & csts::RDY, 0);
        d.bar.write_reg32(reg::CC, 0);
        super::host::wait_csts(&mut d.bar, csts::CFS, 0).unwrap();
    }
    // NVM subsystem reset.
    d.bar.write_reg32(reg::CC, 1 | (6 << 16) | (4 << 20));
    super::host::wait_csts(&mut d.bar, csts::RDY, csts::RDY).unwrap();
    d.bar.write_reg32(reg::NSSR, 0x4E56_4D65);
    super::host::wait_csts(&mut d.bar, csts::NSSRO | csts::RDY, csts::NSSRO).unwrap();
    d.bar.write_reg32(reg::CSTS, csts::NSSRO);
    assert_eq!(
        d.bar.read_reg32(reg::CSTS) & csts::NSSRO,
        0,
        "NSSRO is RW1C"
    );
    // FLR-style device reset.
    d.bar.reset();
    assert_eq!(d.bar.read_reg32(reg::CC), 0);
    assert_eq!(d.bar.read_reg32(reg::CSTS), 0);
}

#[test]
fn identify_structures() {
    let mut r = rig();
    let d = &mut r.drv;
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), super::VENDOR_ID);
    assert_eq!(
        std::str::from_utf8(&id[24..64]).unwrap().trim(),
        "trustdev NVMe Controller"
    );
    assert_eq!(id[77], 7, "MDTS");
    assert_eq!(
        u32::from_le_bytes(id[80..84].try_into().unwrap()),
        0x0002_0000
    );
    assert_eq!(id[111], 1, "CNTRLTYPE I/O");
    assert_eq!(
        u16::from_le_bytes([id[256], id[257]]) & (1 << 8),
        1 << 8,
        "OACS DBBC"
    );
    assert_eq!((id[512], id[513]), (0x66, 0x44));
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        1,
        "NN"
    );
    assert_eq!(id[525] & 1, 0, "RAM: no volatile write cache");
    assert_eq!(
        u32::from_le_bytes(id[536..540].try_into().unwrap()) & 3,
        1,
        "SGLS"
    );
    assert!(std::str::from_utf8(&id[768..800])
        .unwrap()
        .starts_with("nqn.2024-01.dev.trustdev"));
    let ns = d.identify(cns::NS, 1, 0).unwrap();
    assert_eq!(
        u64::from_le_bytes(ns[0..8].try_into().unwrap()),
        (8 << 20) / 512
    );
    let list = d.identify(cns::ACTIVE_NS_LIST, 0, 0).unwrap();
    assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let desc = d.identify(cns::NS_DESCRIPTORS, 1, 0).unwrap();
    assert_eq!((desc[0], desc[1]), (1, 8));
    assert_eq!(d.identify(cns::CS_INDEP_NS, 1, 0).unwrap()[14], 1);
    d.identify(cns::CS_CTRL, 0, 0).unwrap();
    // Errors.
    let bad = |d: &mut HostDriver<NvmeDevice>, cns: u32, nsid: u32, cdw11: u32| {
        let buf = d.mem.alloc(4096, 4096);
        let c = d
            .admin_cmd(Command {
                opcode: admin::IDENTIFY,
                nsid,
                prp1: buf,
                cdw: [cns, cdw11, 0, 0, 0, 0],
                ..Default::default()
            })
            .unwrap();
        Status(c.status)
    };
    assert_eq!(bad(d, 0, 2, 0), Status::INVALID_NAMESPACE);
    assert_eq!(bad(d, 0, 0, 0), Status::INVALID_NAMESPACE);
    assert_eq!(bad(d, 0, 0xffff_ffff, 0), Status::INVALID_NAMESPACE);
    assert_eq!(bad(d, 3, 9, 0), Status::INVALID_NAMESPACE);
    assert_eq!(bad(d, 6, 0, 2 << 24), Status::INVALID_FIELD, "CSI 2 (ZNS)");
    assert_eq!(bad(d, 0x15, 0, 0), Status::INVALID_FIELD);
    assert_eq!(bad(d, 2, 0xffff_fffe, 0), Status::INVALID_NAMESPACE);
}

#[test]
fn features_and_logs() {
    let mut r = rig();
    let d = &mut r.drv;
    let get = |d: &mut HostDriver<NvmeDevice>, fid: u8, sel: u32, cdw11: u32| {
        d.admin_cmd(cmd(
            admin::GET_FEATURES,
            0,
            [u32::from(fid) | (sel << 8), cdw11, 0, 0, 0, 0],
        ))
        .unwrap()
    };
    let set = |d: &mut HostDriver<NvmeDevice>, fid: u8, v: u32| {
        d.admin_cmd(cmd(admin::SET_FEATURES, 0, [u32::from(fid), v, 0, 0, 0, 0]))
            .unwrap()
    };
    // Number of queues: asks 100, gets 8; the count is honoured.
    let c = set(d, feat::NUM_QUEUES, 99 | (99 << 16));
    assert_eq!(c.dw0, 7 | (7 << 16));
    assert_eq!(get(d, feat::NUM_QUEUES, 0, 0).dw0, 7 | (7 << 16));
    assert_eq!(st(&set(d, feat::NUM_QUEUES, 0xffff)), Status::INVALID_FIELD);
    // Arbitration, power, coalescing, vector config, AEC, KATO.
    set(d, feat::ARBITRATION, 0x0302_0103);
    assert_eq!(get(d, feat::ARBITRATION, 0, 0).dw0, 0x0302_0103);
    assert_eq!(get(d, feat::ARBITRATION, 1, 0).dw0, 0, "default");
    assert_eq!(get(d, feat::ARBITRATION, 3, 0).dw0, 1 << 2, "changeable");
    assert_eq!(st(&set(d, feat::POWER_MGMT, 1)), Status::INVALID_FIELD);
    set(d, feat::IRQ_COALESCE, 0x0a03);
    assert_eq!(get(d, feat::IRQ_COALESCE, 0, 0).dw0, 0x0a03);
    assert_eq!(
        get(d, feat::IRQ_CONFIG, 0, 0).dw0,
        1 << 16,
        "vector 0 never coalesces"
    );
    assert_eq!(get(d, feat::IRQ_CONFIG, 0, 3).dw0, 3);
    assert_eq!(st(&set(d, feat::IRQ_CONFIG, 0)), Status::INVALID_FIELD);
    assert_eq!(st(&set(d, feat::IRQ_CONFIG, 99)), Status::INVALID_FIELD);
    set(d, feat::KEEP_ALIVE, 5000);
    assert_eq!(get(d, feat::KEEP_ALIVE, 0, 0).dw0, 5000);
    assert_eq!(
        st(&d.admin_cmd(cmd(admin::KEEP_ALIVE, 0, [0; 6])).unwrap()),
        Status::SUCCESS
    );
    // RAM namespaces: no volatile write cache feature.
    assert_eq!(st(&get(d, feat::VOLATILE_WC, 0, 0)), Status::INVALID_FIELD);
    assert_eq!(st(&set(d, 0x7e, 0)), Status::INVALID_FIELD);
    // Saving is not supported.
    let c = d
        .admin_cmd(cmd(
            admin::SET_FEATURES,
            0,
            [u32::from(feat::ARBITRATION) | (1 << 31), 0, 0, 0, 0, 0],
        ))
        .unwrap();
    assert_eq!(st(&c), Status::FEATURE_NOT_SAVEABLE);
    // Host behavior support round trip (data transfer).
    let buf = d.mem.alloc(4096, 4096);
    d.mem.write(buf, &[0x5a; 512]);
    let c = d
        .admin_cmd(Command {
            opcode: admin::SET_FEATURES,
            prp1: buf,
            cdw: [u32::from(feat::HOST_BEHAVIOR), 0, 0, 0, 0, 0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(st(&c), Status::SUCCESS);
    let out = d.mem.alloc(4096, 4096);
    d.admin_ok(Command {
        opcode: admin::GET_FEATURES,
        prp1: out,
        cdw: [u32::from(feat::HOST_BEHAVIOR), 0, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    let mut b = [0u8; 512];
    d.mem.read(out, &mut b);
    assert_eq!(b, [0x5a; 512]);
    // Logs.
    let log = |d: &mut HostDriver<NvmeDevice>, lid: u8, nsid: u32, dwords: u32, off: u64| {
        let buf = d.mem.alloc(8192, 4096);
        let c = d
            .admin_cmd(Command {
                opcode: admin::GET_LOG_PAGE,
                nsid,
                prp1: buf,
                prp2: buf + 4096,
                cdw: [
                    u32::from(lid) | ((dwords - 1) << 16),
                    0,
                    off as u32,
                    (off >> 32) as u32,
                    0,
                    0,
                ],
                ..Default::default()
            })
            .unwrap();
        let mut v = vec![0u8; dwords as usize * 4];
        d.mem.read(buf, &mut v);
        (Status(c.status), v)
    };
    let (s, smart) = log(d, log_id::SMART, 0xffff_ffff, 128, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(u16::from_le_bytes([smart[1], smart[2]]), 308, "35 C");
    assert_eq!(smart[3], 100);
    assert_eq!(log(d, log_id::SMART, 1, 128, 0).0, Status::INVALID_FIELD);
    let (s, fw) = log(d, log_id::FW_SLOT, 0, 128, 0);
    assert_eq!((s, fw[0]), (Status::SUCCESS, 1));
    let (s, eff) = log(d, log_id::CMD_EFFECTS, 0, 1024, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(eff[4 * admin::IDENTIFY as usize], 1);
    assert_eq!(eff[1024 + 4 * io::WRITE as usize], 3, "CSUPP | LBCC");
    assert_eq!(log(d, 0x06, 0, 16, 0).0, Status::INVALID_LOG_PAGE);
    assert_eq!(
        log(d, log_id::SMART, 0, 1, 3).0,
        Status::INVALID_FIELD,
        "unaligned offset"
    );
    assert_eq!(
        log(d, log_id::SMART, 0, 1, 4096).0,
        Status::INVALID_FIELD,
        "past the end"
    );
    // Offset into the log.
    let (_, part) = log(d, log_id::SMART, 0, 1, 0);
    let (_, part2) = log(d, log_id::SMART, 0, 1, 4);
    assert_eq!(part[1..3], smart[1..3]);
    assert_eq!(part2[..], smart[4..8]);
}

#[test]
fn io_patterns_prp_lists_and_counters() {
    let mut r = rig();
    let d = &mut r.drv;
    assert_eq!(d.create_io_queues(4, 64).unwrap(), 4);
    let mut pattern = vec![0u8; 512 * 1024];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    // 512 KiB (MDTS) through every queue, with chained... single PRP lists;
    // odd sizes; unaligned PRP1.
    for q in 1..=4u16 {
        let lba = u64::from(q) * 1024;
        d.write_blocks(q, 1, lba, &pattern).unwrap();
        let back = d.read_blocks(q, 1, lba, pattern.len()).unwrap();
        assert!(back == pattern, "queue {q}");
    }
    let m = d.mark();
    let buf = d.mem.alloc(3 * 4096 + 4096, 4096) + 0x200;
    d.mem.write(buf, &pattern[..3 * 4096]);
    let w = d.rw_command(true, 1, 77, buf, 24);
    assert_eq!(st(&d.io_cmd(1, w).unwrap()), Status::SUCCESS);
    let got = d.read_blocks(2, 1, 77, 3 * 4096).unwrap();
    assert!(got == pattern[..3 * 4096]);
    d.release(m);
    d.flush(1, 1).unwrap();
    d.flush(1, 0xffff_ffff).unwrap();
    // SMART counters follow.
    let buf = d.mem.alloc(4096, 4096);
    d.admin_ok(Command {
        opcode: admin::GET_LOG_PAGE,
        nsid: 0xffff_ffff,
        prp1: buf,
        cdw: [u32::from(log_id::SMART) | (127 << 16), 0, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    let mut s = [0u8; 512];
    d.mem.read(buf, &mut s);
    let rd = u128::from_le_bytes(s[64..80].try_into().unwrap());
    let wr = u128::from_le_bytes(s[80..96].try_into().unwrap());
    let du_w = u128::from_le_bytes(s[48..64].try_into().unwrap());
    assert_eq!((rd, wr), (5, 5));
    assert_eq!(du_w, (4 * 1024 + 24u128).div_ceil(1000));
    // Interrupts: each queue has its own vector.
    for q in 1..=4 {
        assert!(r.vectors[q].take() > 0, "vector {q} fired");
    }
    assert_eq!(r.vectors[5].take(), 0);
}

#[test]
fn write_zeroes_dsm_compare() {
    let mut r = rig();
    let d = &mut r.drv;
    d.create_io_queues(1, 16).unwrap();
    let data = vec![0xabu8; 8 * BLOCK];
    d.write_blocks(1, 1, 100, &data).unwrap();
    // Compare: equal, then different.
    let buf = d.mem.alloc(8 * BLOCK, 4096);
    d.mem.write(buf, &data);
    let mut c = d.rw_command(false, 1, 100, buf, 8);
    c.opcode = io::COMPARE;
    assert_eq!(st(&d.io_cmd(1, c).unwrap()), Status::SUCCESS);
    d.mem.write(buf + 5, &[0]);
    assert_eq!(st(&d.io_cmd(1, c).unwrap()), Status::COMPARE_FAILURE);
    // Write Zeroes over 2 blocks.
    let wz = cmd(io::WRITE_ZEROES, 1, [101, 0, 1, 0, 0, 0]);
    assert_eq!(st(&d.io_cmd(1, wz).unwrap()), Status::SUCCESS);
    let back = d.read_blocks(1, 1, 100, 8 * BLOCK).unwrap();
    assert!(back[..BLOCK].iter().all(|&b| b == 0xab));
    assert!(back[BLOCK..3 * BLOCK].iter().all(|&b| b == 0));
    assert!(back[3 * BLOCK..].iter().all(|&b| b == 0xab));
    // DSM deallocate two ranges.
    let ranges = d.mem.alloc(4096, 4096);
    let mut r2 = Vec::new();
    for (slba, nlb) in [(104u64, 1u32), (106, 2)] {
        r2.extend(0u32.to_le_bytes());
        r2.extend(nlb.to_le_bytes());
        r2.extend(slba.to_le_bytes());
    }
    d.mem.write(ranges, &r2);
    let dsm = Command {
        opcode: io::DSM,
        nsid: 1,
        prp1: ranges,
        cdw: [1, 1 << 2, 0, 0, 0, 0],
        ..Default::default()
    };
    assert_eq!(st(&d.io_cmd(1, dsm).unwrap()), Status::SUCCESS);
    let back = d.read_blocks(1, 1, 100, 8 * BLOCK).unwrap();
    let blk = |i: usize| &back[i * BLOCK..(i + 1) * BLOCK];
    assert!(blk(4).iter().all(|&b| b == 0) && blk(6).iter().all(|&b| b == 0));
    assert!(blk(5).iter().all(|&b| b == 0xab) && blk(7).iter().all(|&b| b == 0));
    // DSM with a range past the end.
    d.mem.write(ranges + 8, &(1u64 << 40).to_le_bytes());
    assert_eq!(st(&d.io_cmd(1, dsm).unwrap()), Status::LBA_OUT_OF_RANGE);
}

fn sgl_desc(addr: u64, len: u32, kind: u8) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[15] = kind << 4;
    d
}

fn with_sgl(mut c: Command, d: [u8; 16]) -> Command {
    c.psdt = 1;
    c.prp1 = u64::from_le_bytes(d[..8].try_into().unwrap());
    c.prp2 = u64::from_le_bytes(d[8..].try_into().unwrap());
    c
}

#[test]
fn sgl_transfers() {
    let mut r = rig();
    let d = &mut r.drv;
    d.create_io_queues(1, 16).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    // Write from three pieces through a segment chain.
    let a = d.mem.alloc(4096, 4096);
    let b = d.mem.alloc(4096, 4096);
    d.mem.write(a + 100, &data[..1000]);
    d.mem.write(b, &data[1000..4096]);
    let seg2 = d.mem.alloc(4096, 4096);
    let seg1 = d.mem.alloc(4096, 4096);
    let mut s1 = Vec::new();
    s1.extend(sgl_desc(a + 100, 1000, 0));
    s1.extend(sgl_desc(seg2, 16, 3));
    d.mem.write(seg1, &s1);
    d.mem.write(seg2, &sgl_desc(b, 3096, 0));
    let w = with_sgl(
        cmd(io::WRITE, 1, [10, 0, 7, 0, 0, 0]),
        sgl_desc(seg1, 32, 2),
    );
    assert_eq!(st(&d.io_cmd(1, w).unwrap()), Status::SUCCESS);
    assert_eq!(d.read_blocks(1, 1, 10, 4096).unwrap(), data);
    // Read with a bit bucket for the first 512 bytes.
    let out = d.mem.alloc(4096, 4096);
    let seg = d.mem.alloc(4096, 4096);
    let mut s = Vec::new();
    s.extend(sgl_desc(0, 512, 1));
    s.extend(sgl_desc(out, 3584, 0));
    d.mem.write(seg, &s);
    let rd = with_sgl(cmd(io::READ, 1, [10, 0, 7, 0, 0, 0]), sgl_desc(seg, 32, 3));
    assert_eq!(st(&d.io_cmd(1, rd).unwrap()), Status::SUCCESS);
    let mut got = vec![0u8; 3584];
    d.mem.read(out, &mut got);
    assert_eq!(got, data[512..]);
    // Hostile SGLs.
    let bad = [
        (sgl_desc(out, 4096, 4), Status::SGL_TYPE_INVALID),
        (sgl_desc(out, 100, 0), Status::SGL_LENGTH_INVALID),
        (sgl_desc(seg, 20, 2), Status::INVALID_SGL_SEGMENT),
        (
            sgl_desc(0x7000_0000_0000, 4096, 0),
            Status::DATA_TRANSFER_ERROR,
        ),
        (
            sgl_desc(0x7000_0000_0000, 32, 2),
            Status::DATA_TRANSFER_ERROR,
        ),
    ];
    for (desc, want) in bad {
        let c = with_sgl(cmd(io::READ, 1, [10, 0, 7, 0, 0, 0]), desc);
        assert_eq!(st(&d.io_cmd(1, c).unwrap()), want, "{desc:?}");
    }
    let mut w = with_sgl(cmd(io::WRITE, 1, [10, 0, 7, 0, 0, 0]), sgl_desc(0, 4096, 1));
    assert_eq!(
        st(&d.io_cmd(1, w).unwrap()),
        Status::SGL_TYPE_INVALID,
        "bit bucket write"
    );
    w.psdt = 3;
    assert_eq!(
        st(&d.io_cmd(1, w).unwrap()),
        Status::INVALID_FIELD,
        "PSDT 11b"
    );
    // SGLs are not for admin commands (NVMe over PCIe).
    let mut idc = cmd(admin::IDENTIFY, 0, [1, 0, 0, 0, 0, 0]);
    idc = with_sgl(idc, sgl_desc(out, 4096, 0));
    assert_eq!(st(&d.admin_cmd(idc).unwrap()), Status::INVALID_FIELD);
}

#[test]
fn hostile_commands() {
    let mut r = rig();
    let d = &mut r.drv;
    assert_eq!(d.set_queue_count(4).unwrap(), 4);
    d.create_pair(1, 16, 16, 1).unwrap();
    d.create_pair(2, 16, 16, 2).unwrap();
    let buf = d.mem.alloc(8192, 4096);
    let rd = |lba: u64, blocks: u32| {
        cmd(
            io::READ,
            1,
            [lba as u32, (lba >> 32) as u32, blocks - 1, 0, 0, 0],
        )
    };
    let cases: Vec<(Command, Status)> = vec![
        (cmd(0x7f, 1, [0; 6]), Status::INVALID_OPCODE),
        (cmd(io::READ, 0, [0; 6]), Status::INVALID_NAMESPACE),
        (cmd(io::READ, 2, [0; 6]), Status::INVALID_NAMESPACE),
        (cmd(io::FLUSH, 7, [0; 6]), Status::INVALID_NAMESPACE),
        (
            Command {
                prp1: buf,
                ..rd(16383, 2)
            },
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            Command {
                prp1: buf,
                ..rd(u64::MAX, 1)
            },
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            Command {
                prp1: buf,
                ..rd(0, 2048)
            },
            Status::INVALID_FIELD,
        ), // > MDTS
        (
            Command {
                prp1: buf + 2,
                ..rd(0, 1)
            },
            Status::PRP_OFFSET_INVALID,
        ),
        (
            Command {
                prp1: buf,
                prp2: buf + 4100,
                ..rd(0, 16)
            },
            Status::PRP_OFFSET_INVALID,
        ),
        (
            Command {
                prp1: 0x10,
                ..rd(0, 1)
            },
            Status::DATA_TRANSFER_ERROR,
        ),
        (
            Command {
                prp1: buf,
                prp2: 0x7000_0000,
                ..rd(0, 24)
            },
            Status::DATA_TRANSFER_ERROR,
        ),
        (
            Command {
                fuse: 1,
                prp1: buf,
                ..rd(0, 1)
            },
            Status::INVALID_FIELD,
        ),
        (
            cmd(io::WRITE_ZEROES, 1, [16383, 0, 1, 0, 0, 0]),
            Status::LBA_OUT_OF_RANGE,
        ),
    ];
    for (c, want) in cases {
        let got = d.io_cmd(1, c).unwrap();
        assert_eq!(st(&got), want, "{c:?}");
        assert_ne!(got.status & (1 << 14), 0, "DNR set");
    }
    // Writes from unmapped memory fail without touching the medium.
    let w = Command {
        prp1: 0x20_0000,
        ..cmd(io::WRITE, 1, [0, 0, 0, 0, 0, 0])
    };
    assert_eq!(st(&d.io_cmd(1, w).unwrap()), Status::DATA_TRANSFER_ERROR);
    // Admin: queue management errors.
    let q = |op: u8, cdw10: u32, cdw11: u32, prp1: u64| Command {
        opcode: op,
        prp1,
        cdw: [cdw10, cdw11, 0, 0, 0, 0],
        ..Default::default()
    };
    let page = d.mem.alloc(4096 * 16, 4096);
    let admin_cases = [
        (q(admin::CREATE_CQ, 15 << 16, 1, page), Status::INVALID_QID),
        (
            q(admin::CREATE_CQ, 1 | (15 << 16), 1, page),
            Status::INVALID_QID,
        ), // exists
        (
            q(admin::CREATE_CQ, 5 | (15 << 16), 1, page),
            Status::INVALID_QID,
        ), // > allocated
        (
            q(admin::CREATE_CQ, 3 | (256 << 16), 1, page),
            Status::INVALID_QUEUE_SIZE,
        ),
        (q(admin::CREATE_CQ, 3, 1, page), Status::INVALID_QUEUE_SIZE),
        (
            q(admin::CREATE_CQ, 3 | (15 << 16), 0, page),
            Status::INVALID_FIELD,
        ), // PC=0
        (
            q(admin::CREATE_CQ, 3 | (15 << 16), 1 | (9 << 16), page),
            Status::INVALID_VECTOR,
        ),
        (
            q(admin::CREATE_CQ, 3 | (15 << 16), 1, page + 8),
            Status::PRP_OFFSET_INVALID,
        ),
        (
            q(admin::CREATE_CQ, 3 | (15 << 16), 1, 0x6000_0000),
            Status::INVALID_FIELD,
        ),
        (
            q(admin::CREATE_SQ, 3 | (15 << 16), 1 | (5 << 16), page),
            Status::CQ_INVALID,
        ),
        (
            q(admin::CREATE_SQ, 3 | (15 << 16), 1, page),
            Status::CQ_INVALID,
        ), // CQ 0
        (
            q(admin::CREATE_SQ, 1 | (15 << 16), 1 | (1 << 16), page),
            Status::INVALID_QID,
        ),
        (q(admin::DELETE_CQ, 1, 0, 0), Status::INVALID_QUEUE_DELETION), // SQ 1 uses it
        (q(admin::DELETE_CQ, 0, 0, 0), Status::INVALID_QID),
        (q(admin::DELETE_SQ, 7, 0, 0), Status::INVALID_QID),
        (q(admin::DELETE_SQ, 0, 0, 0), Status::INVALID_QID),
        (q(0x80, 0, 0, 0), Status::INVALID_OPCODE), // Format NVM: not supported
        (q(io::READ | 0x40, 0, 0, 0), Status::INVALID_OPCODE),
        (
            q(admin::DBBUF_CONFIG, 0, 0, page + 4),
            Status::INVALID_FIELD,
        ),
        (
            q(admin::SET_FEATURES, u32::from(feat::NUM_QUEUES), 3, 0),
            Status::SEQUENCE_ERROR,
        ),
    ];
    for (c, want) in admin_cases {
        let got = d.admin_cmd(c).unwrap();
        assert_eq!(st(&got), want, "{c:?}");
    }
    // Queue 2 still works after all that, and so does queue 1.
    d.write_blocks(2, 1, 5, &[1u8; 512]).unwrap();
    assert_eq!(d.read_blocks(1, 1, 5, 512).unwrap(), vec![1u8; 512]);
    // Delete in the right order works; the queue is then gone.
    d.admin_ok(q(admin::DELETE_SQ, 2, 0, 0)).unwrap();
    d.admin_ok(q(admin::DELETE_CQ, 2, 0, 0)).unwrap();
    assert_eq!(
        st(&d.admin_cmd(q(admin::DELETE_CQ, 2, 0, 0)).unwrap()),
        Status::INVALID_QID
    );
    // The error log recorded the failures, newest first.
    let buf = d.mem.alloc(4096, 4096);
    d.admin_ok(Command {
        opcode: admin::GET_LOG_PAGE,
        prp1: buf,
        cdw: [u32::from(log_id::ERROR) | (15 << 16), 0, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    let mut e = [0u8; 64];
    d.mem.read(buf, &mut e);
    assert!(u64::from_le_bytes(e[0..8].try_into().unwrap()) >= 30);
    assert_eq!(
        u16::from_le_bytes([e[8], e[9]]),
        0,
        "last error on the admin queue"
    );
}

#[test]
fn invalid_doorbells_raise_async_events() {
    let mut r = rig();
    let d = &mut r.drv;
    d.create_io_queues(1, 16).unwrap();
    let aer = d.submit(0, cmd(admin::ASYNC_EVENT, 0, [0; 6]));
    let aer2 = d.submit(0, cmd(admin::ASYNC_EVENT, 0, [0; 6]));
    // An SQ tail past the queue size: ignored, reported.
    let db = reg::DOORBELLS + 2 * d.stride;
    d.bar.write_reg32(db, 99);
    let c = d.wait(0, aer).unwrap();
    assert_eq!(st(&c), Status::SUCCESS);
    assert_eq!(c.dw0 & 7, 0, "error status");
    assert_eq!((c.dw0 >> 8) & 0xff, 1, "invalid doorbell write value");
    assert_eq!((c.dw0 >> 16) & 0xff, 1, "error log");
    // Masked until the error log is read.
    d.bar.write_reg32(reg::DOORBELLS + 40 * d.stride, 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(d.poll(0).is_none(), "event type masked");
    let buf = d.mem.alloc(4096, 4096);
    d.admin_ok(Command {
        opcode: admin::GET_LOG_PAGE,
        prp1: buf,
        cdw: [u32::from(log_id::ERROR) | (15 << 16), 0, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    let c = d.wait(0, aer2).unwrap();
    assert_eq!(
        (c.dw0 >> 8) & 0xff,
        0,
        "write to an invalid doorbell register"
    );
    // The queue still works from its real tail.
    d.write_blocks(1, 1, 0, &[9u8; 512]).unwrap();
    // AER limit: 4 outstanding.
    let cids: Vec<u16> = (0..4)
        .map(|_| d.submit(0, cmd(admin::ASYNC_EVENT, 0, [0; 6])))
        .collect();
    let c = d.admin_cmd(cmd(admin::ASYNC_EVENT, 0, [0; 6])).unwrap();
    assert_eq!(st(&c), Status::AER_LIMIT_EXCEEDED);
    // Abort an outstanding AER.
    let c = d
        .admin_cmd(cmd(
            admin::ABORT,
            0,
            [u32::from(cids[1]) << 16, 0, 0, 0, 0, 0],
        ))
        .unwrap();
    assert_eq!(c.dw0 & 1, 0, "aborted");
    // (The aborted AER's completion arrived first and was skipped by wait.)
    let c = d
        .admin_cmd(cmd(admin::ABORT, 0, [(999 << 16) | 1, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(c.dw0 & 1, 1, "nothing to abort");
    // Temperature threshold below the current temperature: SMART event.
    d.admin_ok(cmd(
        admin::SET_FEATURES,
        0,
        [u32::from(feat::ASYNC_EVENT_CFG), 0xff, 0, 0, 0, 0],
    ))
    .unwrap();
    let c = d
        .admin_cmd(cmd(
            admin::SET_FEATURES,
            0,
            [u32::from(feat::TEMP_THRESH), 300, 0, 0, 0, 0],
        ))
        .unwrap();
    assert_eq!(st(&c), Status::SUCCESS);
    let ev = d.wait(0, cids[0]).unwrap();
    assert_eq!(ev.dw0, 1 | (1 << 8) | (2 << 16), "SMART temperature");
}

#[test]
fn queue_wraps_and_full_completion_queue() {
    let mut r = rig();
    let d = &mut r.drv;
    d.set_queue_count(2).unwrap();
    d.create_pair(1, 4, 4, 1).unwrap();
    // 40 commands through a 4-entry queue: phases flip many times.
    for i in 0..40u64 {
        d.write_blocks(1, 1, i, &[i as u8; 512]).unwrap();
    }
    for i in 0..40u64 {
        assert_eq!(d.read_blocks(1, 1, i, 512).unwrap()[0], i as u8);
    }
    // An SQ of 16 entries on a CQ of 4: 12 commands at once fill the CQ
    // (3 usable slots); the controller waits for the host to consume
    // completions and loses nothing.
    d.create_pair(2, 16, 4, 2).unwrap();
    let buf = d.mem.alloc(4096, 4096);
    let cids: Vec<u16> = (0..12)
        .map(|_| {
            let c = d.rw_command(false, 1, 0, buf, 1);
            d.push(2, c)
        })
        .collect();
    d.ring(2);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut seen = Vec::new();
    for _ in 0..12 {
        let c = d.wait_any(2).unwrap();
        assert_eq!(st(&c), Status::SUCCESS, "{c:?} seen {seen:?}");
        seen.push(c.cid);
    }
    assert_eq!(seen, cids);
}

#[test]
fn shadow_doorbells_cut_register_writes() {
    let mut r = rig();
    let d = &mut r.drv;
    d.create_io_queues(2, 64).unwrap();
    d.enable_shadow_doorbells().unwrap();
    let before = d.stats;
    // Batches of 16 commands: the controller drains while the host keeps
    // writing the shadow buffer.
    let buf = d.mem.alloc(16 * 4096, 4096);
    for round in 0..20u64 {
        let mut cids = Vec::new();
        for i in 0..16u64 {
            let c = d.rw_command(true, 1, round * 16 + i, buf + i * 4096, 8);
            cids.push(d.submit(1, c));
        }
        for cid in cids {
            assert_eq!(st(&d.wait(1, cid).unwrap()), Status::SUCCESS);
        }
    }
    let writes = d.stats.doorbell_writes - before.doorbell_writes;
    let shadow = d.stats.shadow_only - before.shadow_only;
    // 320 submissions + 320 completions: with event indexes most doorbell
    // updates stay in memory.
    assert!(
        shadow > writes,
        "{writes} register writes, {shadow} shadow-only"
    );
    assert!(
        writes < 200,
        "{writes} register writes for 640 doorbell updates"
    );
    // Data still right, through both queues.
    d.write_blocks(2, 1, 1000, &[3u8; 1024]).unwrap();
    assert_eq!(d.read_blocks(1, 1, 1000, 1024).unwrap(), vec![3u8; 1024]);
    // A reset forgets the buffers.
    d.bar.write_reg32(reg::CC, 0);
    super::host::wait_csts(&mut d.bar, csts::RDY, 0).unwrap();
}

#[test]
fn interrupt_coalescing_is_honoured() {
    let mut r = rig();
    let d = &mut r.drv;
    d.create_io_queues(1, 64).unwrap();
    let _ = r.vectors[1].take();
    for i in 0..16 {
        d.write_blocks(1, 1, i, &[0u8; 512]).unwrap();
    }
    let plain = r.vectors[1].take();
    assert!(
        plain >= 12,
        "one interrupt per command without coalescing: {plain}"
    );
    // Threshold 8 completions, time 25.5 ms.
    d.admin_ok(cmd(
        admin::SET_FEATURES,
        0,
        [u32::from(feat::IRQ_COALESCE), 7 | (255 << 8), 0, 0, 0, 0],
    ))
    .unwrap();
    for i in 0..16 {
        d.write_blocks(1, 1, i, &[0u8; 512]).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(60));
    let coalesced = r.vectors[1].take();
    assert!(
        (1..=4).contains(&coalesced),
        "{coalesced} interrupts for 16 completions"
    );
    // Vector 1 opts out.
    d.admin_ok(cmd(
        admin::SET_FEATURES,
        0,
        [u32::from(feat::IRQ_CONFIG), 1 | (1 << 16), 0, 0, 0, 0],
    ))
    .unwrap();
    for i in 0..8 {
        d.write_blocks(1, 1, i, &[0u8; 512]).unwrap();
    }
    assert!(r.vectors[1].take() >= 6);
}

#[test]
fn several_namespaces_and_4k_blocks() {
    let mut a = args();
    a.size = None;
    a.namespaces = vec!["ram:4M".into(), "ram:8M".into()];
    a.lba_size = 4096;
    let mut r = rig_with(&a);
    let d = &mut r.drv;
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    assert_eq!(u32::from_le_bytes(id[516..520].try_into().unwrap()), 2);
    let list = d.identify(cns::ACTIVE_NS_LIST, 1, 0).unwrap();
    assert_eq!(&list[0..8], &[2, 0, 0, 0, 0, 0, 0, 0], "IDs above 1");
    let ns2 = d.identify(cns::NS, 2, 0).unwrap();
    assert_eq!(u64::from_le_bytes(ns2[0..8].try_into().unwrap()), 2048);
    assert_eq!(ns2[26], 1, "FLBAS: the 4 KiB format");
    d.create_io_queues(1, 8).unwrap();
    // One 4 KiB block per namespace, different data.
    let buf = d.mem.alloc(4096, 4096);
    for ns in 1..=2u32 {
        d.mem.write(buf, &[ns as u8; 4096]);
        let c = Command {
            opcode: io::WRITE,
            nsid: ns,
            prp1: buf,
            cdw: [3, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        assert_eq!(st(&d.io_cmd(1, c).unwrap()), Status::SUCCESS);
    }
    for ns in 1..=2u32 {
        let c = Command {
            opcode: io::READ,
            nsid: ns,
            prp1: buf,
            cdw: [3, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        assert_eq!(st(&d.io_cmd(1, c).unwrap()), Status::SUCCESS);
        let mut b = vec![0u8; 4096];
        d.mem.read(buf, &mut b);
        assert!(b.iter().all(|&x| x == ns as u8));
    }
    let c = Command {
        opcode: io::READ,
        nsid: 1,
        prp1: buf,
        cdw: [1024, 0, 0, 0, 0, 0],
        ..Default::default()
    };
    assert_eq!(st(&d.io_cmd(1, c).unwrap()), Status::LBA_OUT_OF_RANGE);
}

#[test]
fn memory_page_size_64k() {
    let mut r = rig();
    let d = &mut r.drv;
    // Re-enable with CC.MPS = 4 (64 KiB pages).
    d.reenable(4).unwrap();
    d.create_io_queues(1, 16).unwrap();
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    d.write_blocks(1, 1, 0, &data).unwrap();
    assert!(d.read_blocks(1, 1, 0, data.len()).unwrap() == data);
}

#[test]
fn abort_a_queued_command() {
    let mut r = rig();
    let d = &mut r.drv;
    // Abort and its target in one doorbell: the Abort runs first and finds
    // the Get Features still queued behind it.
    let target_cid = d.admin.tail as u16 + 1; // CIDs follow the slot order here
    let abort = d.push(
        0,
        cmd(
            admin::ABORT,
            0,
            [u32::from(target_cid) << 16, 0, 0, 0, 0, 0],
        ),
    );
    let victim = d.push(
        0,
        cmd(
            admin::GET_FEATURES,
            0,
            [u32::from(feat::ARBITRATION), 0, 0, 0, 0, 0],
        ),
    );
    assert_eq!(victim, target_cid);
    d.ring(0);
    let a = d.wait(0, abort).unwrap();
    assert_eq!((st(&a), a.dw0 & 1), (Status::SUCCESS, 0), "aborted");
    let v = d.wait(0, victim).unwrap();
    assert_eq!(st(&v), Status::ABORT_REQUESTED);
    // Nothing queued with that CID: not aborted.
    let c = d
        .admin_cmd(cmd(admin::ABORT, 0, [(0x7777 << 16) | 1, 0, 0, 0, 0, 0]))
        .unwrap();
    assert_eq!(c.dw0 & 1, 1);
}

#[test]
fn doorbell_stride() {
    let mut a = args();
    a.doorbell_stride = 3; // 32-byte doorbell stride
    let mut r = rig_with(&a);
    let d = &mut r.drv;
    assert_eq!(d.stride, 32);
    d.create_io_queues(3, 16).unwrap();
    d.enable_shadow_doorbells().unwrap();
    for q in 1..=3u16 {
        d.write_blocks(q, 1, u64::from(q), &[q as u8; 512]).unwrap();
    }
    for q in 1..=3u16 {
        assert_eq!(
            d.read_blocks(4 - q, 1, u64::from(q), 512).unwrap(),
            vec![q as u8; 512]
        );
    }
    // A write between two doorbells (not stride aligned) is ignored.
    d.bar.write_reg32(reg::DOORBELLS + 4, 5);
    d.write_blocks(1, 1, 9, &[9u8; 512]).unwrap();
}

#[test]
fn poll_mode_doorbells() {
    let mut a = args();
    a.doorbells = super::options::DoorbellMode::Poll;
    let mut r = rig_with(&a);
    {
        let m = r
            .drv
            .bar
            .region_mmap(0)
            .expect("doorbell page is mmappable");
        assert_eq!(m.areas[0].offset, 0x1000);
        assert_eq!(m.areas[0].size, 0x3000);
        let _ = m.fd.as_fd();
    }
    let d = &mut r.drv;
    d.create_io_queues(2, 32).unwrap();
    d.write_blocks(2, 1, 9, &[4u8; 4096]).unwrap();
    assert_eq!(d.read_blocks(1, 1, 9, 4096).unwrap(), vec![4u8; 4096]);
}

/// Random commands on the admin and an I/O queue: every one completes (with
/// whatever status), the server does not panic, and afterwards the
/// controller still works.
#[test]
fn random_commands_never_break_the_controller() {
    let mut r = rig();
    let d = &mut r.drv;
    d.create_io_queues(2, 256).unwrap();
    // Buffers the random commands may scribble on (queues live elsewhere).
    let junk = d.mem.alloc(2 << 20, 4096);
    let mut seen = std::collections::BTreeMap::new();
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ptr = |v: u64| match v % 4 {
        0 => junk + (v >> 8) % (2 << 20), // anywhere in the junk area
        1 => (junk + (v >> 8) % (2 << 20)) & !0xfff, // page aligned
        2 => v >> 3,                      // unmapped, mostly
        _ => 0,
    };
    for i in 0..3000u32 {
        let a = rnd();
        let b = rnd();
        let c = rnd();
        let admin_q = i % 3 == 0;
        let opcode = if a % 5 == 0 {
            (a >> 8) as u8
        } else if admin_q {
            // Leave queue management and shutdown-like commands out: they
            // would take the test's own queues away.
            [
                admin::IDENTIFY,
                admin::GET_LOG_PAGE,
                admin::GET_FEATURES,
                admin::SET_FEATURES,
                admin::ABORT,
                admin::KEEP_ALIVE,
            ][(a >> 8) as usize % 6]
        } else {
            [
                io::READ,
                io::WRITE,
                io::FLUSH,
                io::COMPARE,
                io::WRITE_ZEROES,
                io::DSM,
            ][(a >> 8) as usize % 6]
        };
        if admin_q
            && matches!(
                opcode,
                admin::DELETE_SQ
                    | admin::DELETE_CQ
                    | admin::CREATE_SQ
                    | admin::CREATE_CQ
                    | admin::DBBUF_CONFIG
                    | admin::ASYNC_EVENT
            )
        {
            continue;
        }
        let mut cdw = [
            (b as u32),
            (b >> 32) as u32,
            (c as u32),
            (c >> 32) as u32,
            rnd() as u32,
            rnd() as u32,
        ];
        if a % 3 != 0 {
            cdw[2] &= 0xffff_00ff; // mostly small transfers
        }
        if admin_q && opcode == admin::SET_FEATURES {
            // Keep the number of queues, coalescing and VWC sane.
            cdw[0] = [0x01, 0x02, 0x04, 0x05, 0x0a, 0x0b, 0x0e, 0x0f, 0x16, 0x7f]
                [(b >> 40) as usize % 10];
        }
        let command = Command {
            opcode,
            fuse: if rnd() % 50 == 0 { 1 } else { 0 },
            psdt: (rnd() % 4 == 0) as u8,
            nsid: [1, 1, 1, 0, 2, 0xffff_ffff][(c >> 50) as usize % 6],
            mptr: 0,
            prp1: ptr(rnd()),
            prp2: ptr(rnd()),
            cdw,
            cid: 0,
        };
        let q = if admin_q { 0 } else { 1 + (i % 2) as u16 };
        let done = if q == 0 {
            d.admin_cmd(command)
        } else {
            d.io_cmd(q, command)
        };
        let done = done.unwrap_or_else(|e| panic!("command {i} {command:?}: {e}"));
        *seen.entry(done.status & 0x7ff).or_insert(0u32) += 1;
        assert_eq!(
            d.bar.read_reg32(reg::CSTS) & csts::CFS,
            0,
            "no fatal status after {command:?}"
        );
    }
    // Many different outcomes, successes among them.
    assert!(
        seen.len() > 8 && seen.get(&0).copied().unwrap_or(0) > 100,
        "{seen:?}"
    );
    eprintln!("status counts: {seen:x?}");
    // Still healthy.
    d.write_blocks(1, 1, 42, &[0x5c; 4096]).unwrap();
    assert_eq!(d.read_blocks(2, 1, 42, 4096).unwrap(), vec![0x5c; 4096]);
}
