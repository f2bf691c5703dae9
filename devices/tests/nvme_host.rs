//! The NVMe controller over a real vfio-user socket, driven like a
//! user-space NVMe driver: memfd guest memory mapped with DMA_MAP, MSI-X
//! eventfds, admin queue, Identify, I/O queues, patterns written and read
//! back, Flush, hostile commands, shadow and mmapped (polled) doorbells,
//! and a client that vanishes mid-I/O.

mod nvme_common;

use nvme_common::{args, connect, pattern, InProcess, IOVA};
use std::os::fd::AsRawFd;
use trustdev_devices::nvme::host::{Bar0, HostDriver, BLOCK};
use trustdev_devices::nvme::options::DoorbellMode;
use trustdev_devices::nvme::spec::{admin, cns, csts, io, log_id, reg, Command, Status};
use vfio_user_server::client::Client;
use vfio_user_server::protocol::{irq_index, region, Command as Msg, REGION_FLAG_MMAP};

fn st(c: &trustdev_devices::nvme::spec::Completion) -> Status {
    Status(c.status)
}

#[test]
fn pci_function_and_regions() {
    let srv = InProcess::start(&args());
    let mut c = Client::connect(&srv.socket).unwrap();
    let (flags, regions, irqs) = c.device_info().unwrap();
    assert_ne!(flags & 2, 0, "PCI device");
    assert!(regions >= 8 && irqs >= 5);
    let bar0 = c.region_info(0).unwrap();
    assert_eq!(bar0.size, 0x4000);
    assert_eq!(
        bar0.flags & REGION_FLAG_MMAP,
        0,
        "trapped doorbells: no mmap"
    );
    let bar4 = c.region_info(4).unwrap();
    assert!(bar4.size >= 4096);
    assert_eq!(
        c.irq_info(irq_index::MSIX).unwrap().1,
        9,
        "8 I/O queues + admin"
    );
    let cfg = c.region_read(region::CONFIG, 0, 256).unwrap();
    let dw = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(dw(0), 0x4e56_7d0c, "vendor/device");
    assert_eq!(dw(8) >> 8, 0x01_08_02, "class: NVM Express");
    assert_eq!(dw(0x10) & 0x6, 0x4, "BAR0 64-bit memory");
    // Capabilities: PM, MSI, MSI-X (9 vectors, table in BAR4), PCIe endpoint.
    let mut p = (dw(0x34) & 0xfc) as usize;
    let mut ids = Vec::new();
    while p != 0 {
        let v = dw(p);
        ids.push(v & 0xff);
        if v & 0xff == 0x11 {
            assert_eq!(((v >> 16) & 0x7ff) + 1, 9);
            assert_eq!(dw(p + 4) & 7, 4, "table BIR");
        }
        if v & 0xff == 0x10 {
            assert_eq!((v >> 20) & 0xf, 0, "Endpoint");
            assert_ne!(dw(p + 4) & (1 << 28), 0, "FLR");
        }
        p = ((v >> 8) & 0xfc) as usize;
    }
    assert_eq!(ids, vec![0x01, 0x05, 0x11, 0x10]);
    let ext = c.region_read(region::CONFIG, 0x100, 12).unwrap();
    assert_eq!(u16::from_le_bytes([ext[0], ext[1]]), 0x0003, "DSN");
}

#[test]
fn user_space_driver_over_the_socket() {
    let srv = InProcess::start(&args());
    let (mut d, vecs) = connect(&srv.socket, 64 << 20);
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    let serial = String::from_utf8_lossy(&id[4..24]).trim().to_string();
    assert!(serial.starts_with("TD"), "{serial}");
    let ns = d.identify(cns::NS, 1, 0).unwrap();
    let blocks = u64::from_le_bytes(ns[0..8].try_into().unwrap());
    assert_eq!(blocks, (32 << 20) / 512);
    assert_eq!(d.create_io_queues(4, 256).unwrap(), 4);

    // Pipelined: 8 writes of 64 KiB in flight on each of 4 queues.
    let chunk = 64 * 1024;
    let mut jobs = Vec::new();
    for q in 1..=4u16 {
        for k in 0..8u64 {
            let lba = (u64::from(q) * 8 + k) * (chunk as u64 / 512);
            let data = pattern(lba, 1, chunk);
            let buf = d.mem.alloc(chunk, 4096);
            d.mem.write(buf, &data);
            let cmd = d.rw_command(true, 1, lba, buf, (chunk / BLOCK) as u32);
            let cid = d.push(q, cmd);
            jobs.push((q, cid, lba));
        }
    }
    for q in 1..=4u16 {
        d.ring(q);
    }
    for (q, cid, _) in &jobs {
        let c = d.wait(*q, *cid).unwrap();
        assert_eq!(st(&c), Status::SUCCESS);
    }
    d.flush(1, 1).unwrap();
    // Read back through other queues than the ones that wrote.
    for (q, _, lba) in &jobs {
        let rq = (q % 4) + 1;
        let got = d.read_blocks(rq, 1, *lba, chunk).unwrap();
        assert!(got == pattern(*lba, 1, chunk), "lba {lba}");
    }
    for v in 1..=4 {
        assert!(vecs.take(v) > 0, "MSI-X vector {v} fired");
    }

    // Hostile commands are answered with the spec's status, nothing breaks.
    let buf = d.mem.alloc(4096, 4096);
    let hostile = [
        (
            Command {
                opcode: 0x99,
                nsid: 1,
                ..Default::default()
            },
            Status::INVALID_OPCODE,
        ),
        (
            Command {
                opcode: io::READ,
                nsid: 1,
                prp1: 0xdead_0000,
                cdw: [0, 0, 7, 0, 0, 0],
                ..Default::default()
            },
            Status::DATA_TRANSFER_ERROR,
        ),
        (
            Command {
                opcode: io::WRITE,
                nsid: 1,
                prp1: buf,
                cdw: [blocks as u32, 0, 0, 0, 0, 0],
                ..Default::default()
            },
            Status::LBA_OUT_OF_RANGE,
        ),
        (
            Command {
                opcode: io::READ,
                nsid: 3,
                prp1: buf,
                ..Default::default()
            },
            Status::INVALID_NAMESPACE,
        ),
    ];
    for (cmd, want) in hostile {
        assert_eq!(st(&d.io_cmd(2, cmd).unwrap()), want, "{cmd:?}");
    }
    let bad_q = Command {
        opcode: admin::CREATE_SQ,
        prp1: buf,
        cdw: [9 | (15 << 16), 1 | (1 << 16), 0, 0, 0, 0],
        ..Default::default()
    };
    assert_eq!(st(&d.admin_cmd(bad_q).unwrap()), Status::INVALID_QID);
    // A doorbell value past the queue: asynchronous event, queue intact.
    let aer = d.submit(
        0,
        Command {
            opcode: admin::ASYNC_EVENT,
            ..Default::default()
        },
    );
    d.bar.write_reg32(reg::DOORBELLS + 2 * 3 * d.stride, 5000);
    let ev = d.wait(0, aer).unwrap();
    assert_eq!(
        ev.dw0 & 0xff_ff07,
        0x01_0100,
        "error / invalid doorbell value / log 01h"
    );
    let again = d.read_blocks(3, 1, jobs[0].2, chunk).unwrap();
    assert!(again == pattern(jobs[0].2, 1, chunk));

    // SMART / health counters saw the traffic.
    let log = d.mem.alloc(4096, 4096);
    d.admin_ok(Command {
        opcode: admin::GET_LOG_PAGE,
        nsid: 0xffff_ffff,
        prp1: log,
        cdw: [u32::from(log_id::SMART) | (127 << 16), 0, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
    let mut s = [0u8; 512];
    d.mem.read(log, &mut s);
    let host_writes = u128::from_le_bytes(s[80..96].try_into().unwrap());
    let du_written = u128::from_le_bytes(s[48..64].try_into().unwrap());
    assert_eq!(host_writes, 32);
    assert_eq!(du_written, (32 * 128u128).div_ceil(1000));

    // Clean shutdown.
    d.shutdown().unwrap();
    assert_eq!(
        d.bar.read_reg32(reg::CSTS) & csts::SHST_MASK,
        csts::SHST_COMPLETE
    );
}

/// Region writes (doorbells, mostly) the server received so far.
fn writes(srv: &InProcess) -> u64 {
    srv.stats.received(Msg::RegionWrite as u16)
}

fn qd_run(d: &mut HostDriver<Client>, q: u16, ios: u64, qd: u64) {
    let buf = d.mem.alloc(qd as usize * 4096, 4096);
    let mut done = 0;
    while done < ios {
        let mut cids = Vec::new();
        for k in 0..qd {
            let c = d.rw_command(k % 2 == 0, 1, (done + k) * 8, buf + k * 4096, 8);
            cids.push(d.submit(q, c));
        }
        for cid in cids {
            assert_eq!(st(&d.wait(q, cid).unwrap()), Status::SUCCESS);
        }
        done += qd;
    }
}

#[test]
fn shadow_doorbells_save_messages() {
    let srv = InProcess::start(&args());
    let (mut d, _vecs) = connect(&srv.socket, 32 << 20);
    d.create_io_queues(1, 256).unwrap();
    let ios = 512;
    let before = writes(&srv);
    qd_run(&mut d, 1, ios, 16);
    let trapped = writes(&srv) - before;
    d.enable_shadow_doorbells().unwrap();
    let before = writes(&srv);
    qd_run(&mut d, 1, ios, 16);
    let shadow = writes(&srv) - before;
    eprintln!(
        "region writes per I/O at QD16: trapped {:.2}, shadow {:.2}",
        trapped as f64 / ios as f64,
        shadow as f64 / ios as f64
    );
    assert!(
        trapped >= ios,
        "every submission rings when trapped: {trapped}"
    );
    assert!(shadow * 3 < trapped, "shadow {shadow} vs trapped {trapped}");
}

/// BAR0 with the doorbell page mapped from the region's fd.
struct Mapped {
    c: Client,
    map: *mut u8,
    len: usize,
    offset: u64,
}

impl Bar0 for Mapped {
    fn read_reg32(&mut self, off: u64) -> u32 {
        self.c.read32(0, off).unwrap()
    }
    fn write_reg32(&mut self, off: u64, v: u32) {
        if off >= reg::DOORBELLS && off < self.offset + self.len as u64 {
            let at = (off - self.offset) as usize;
            // SAFETY: `at` is inside the live shared mapping of the
            // doorbell page; the controller polls it.
            unsafe { std::ptr::write_volatile(self.map.add(at) as *mut u32, v) };
        } else {
            let _ = self.c.region_write_posted(0, off, &v.to_le_bytes());
        }
    }
}

#[test]
fn polled_doorbells_through_the_mmapped_page() {
    let mut a = args();
    a.doorbells = DoorbellMode::Poll;
    let srv = InProcess::start(&a);
    let (d, _vecs) = connect(&srv.socket, 32 << 20);
    let HostDriver { mut bar, mem, .. } = d;
    let info = bar.region_info(0).unwrap();
    assert_ne!(info.flags & REGION_FLAG_MMAP, 0);
    assert_eq!(info.sparse.len(), 1);
    let area = info.sparse[0];
    assert_eq!(area.offset, 0x1000);
    let fd = info.fd.expect("doorbell page fd");
    let len = area.size as usize;
    // SAFETY: maps the server's memfd (shared) at the sparse area's offset;
    // unmapped at the end of the test.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            (info.offset + area.offset) as i64,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let mapped = Mapped {
        c: bar,
        map: map.cast(),
        len,
        offset: area.offset,
    };
    let mut d = HostDriver::enable(mapped, mem, 32).unwrap();
    d.create_io_queues(2, 64).unwrap();
    let before = writes(&srv);
    for i in 0..64u64 {
        let data = pattern(i, 3, 4096);
        d.write_blocks(1 + (i % 2) as u16, 1, i * 8, &data).unwrap();
    }
    for i in 0..64u64 {
        assert!(d.read_blocks(2 - (i % 2) as u16, 1, i * 8, 4096).unwrap() == pattern(i, 3, 4096));
    }
    let msgs = writes(&srv) - before;
    assert_eq!(msgs, 0, "no doorbell went through the socket");
    // SAFETY: unmaps what we mapped above.
    unsafe { libc::munmap(map, len) };
}

#[test]
fn client_vanishing_mid_io_and_a_new_client() {
    let srv = InProcess::start(&args());
    {
        let (mut d, _v) = connect(&srv.socket, 32 << 20);
        d.create_io_queues(2, 256).unwrap();
        d.write_blocks(1, 1, 100, &pattern(100, 9, 8192)).unwrap();
        // Leave 64 commands in flight and drop the connection.
        let buf = d.mem.alloc(64 * 4096, 4096);
        for k in 0..64u64 {
            let c = d.rw_command(true, 1, 1000 + k * 8, buf + k * 4096, 8);
            d.push(2, c);
        }
        d.ring(2);
    }
    // A new client finds a reset controller and the data written before.
    let (mut d, _v) = connect(&srv.socket, 32 << 20);
    assert_eq!(d.bar.read_reg32(reg::CSTS) & csts::RDY, csts::RDY);
    d.create_io_queues(1, 64).unwrap();
    assert!(d.read_blocks(1, 1, 100, 8192).unwrap() == pattern(100, 9, 8192));
    // Admin after reset: number of queues can be set again.
    assert_eq!(d.admin.qid, 0);
    assert_eq!(
        st(&d
            .admin_cmd(Command {
                opcode: admin::DELETE_SQ,
                cdw: [2, 0, 0, 0, 0, 0],
                ..Default::default()
            })
            .unwrap()),
        Status::INVALID_QID,
        "queues of the old client are gone"
    );
    let _ = IOVA;
}
