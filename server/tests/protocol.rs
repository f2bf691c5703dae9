//! Protocol conformance of the vfio-user server, driven by the project's own
//! client against the DMA-copy example device: version negotiation, device
//! and region information, configuration space, BAR registers, DMA windows,
//! interrupts, DMA by message, reset, posted writes, unsupported commands,
//! and connection management (one client at a time, reconnects).

mod common;

use common::device::{error, reg, status, BAR2_SIZE, DEVICE_ID, ID_VALUE, VENDOR_ID};
use common::*;
use memmap2::{MmapOptions, MmapRaw};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use vfio_user_server::client::{Client, ClientError};
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::{
    encode_write_multi, irq_index, region, Command, DmaMapRequest, Header, IrqAction, IrqData,
    MultiWrite, RegionAccess, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, DMA_UNMAP_ALL,
    IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, REGION_FLAG_CAPS,
    REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE, REGION_INFO_CAP_SPARSE_MMAP,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const CONFIG: u32 = region::CONFIG;

/// The errno of an error reply; panics on success or any other failure.
fn errno<T: std::fmt::Debug>(r: Result<T, ClientError>) -> i32 {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn cfg32(c: &mut Client, off: u64) -> u32 {
    c.read32(CONFIG, off).unwrap()
}

fn cfg16(c: &mut Client, off: u64) -> u16 {
    let d = c.region_read(CONFIG, off, 2).unwrap();
    u16::from_le_bytes([d[0], d[1]])
}

fn cfg8(c: &mut Client, off: u64) -> u8 {
    c.region_read(CONFIG, off, 1).unwrap()[0]
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// Assigns one trigger eventfd to `vector` of `index`.
fn assign(c: &mut Client, index: u32, vector: u32, ev: &EventFd) {
    c.set_irqs(
        index,
        vector,
        1,
        IrqData::Eventfd,
        IrqAction::Trigger,
        &[ev.as_raw_fd()],
    )
    .unwrap();
}

/// Disables a whole IRQ index (DATA_NONE | ACTION_TRIGGER, count 0).
fn disable(c: &mut Client, index: u32) {
    c.set_irqs(index, 0, 0, IrqData::None, IrqAction::Trigger, &[])
        .unwrap();
}

/// A recognisable byte pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

// ---------------------------------------------------------------------------
// VERSION

#[test]
fn version_reply_is_a_small_subset_of_the_proposal() {
    let s = TestServer::start();
    let mut c = s.connect_raw();
    let r = c
        .request(Command::Version, &version_payload(0, 0, QEMU_CAPS), &[])
        .unwrap();
    let total = 16 + r.payload.len();
    assert_eq!(r.header.msg_size as usize, total);
    assert!(
        total < 200,
        "VERSION reply of {total} bytes overflows QEMU's buffer"
    );
    assert_eq!(u16::from_le_bytes([r.payload[0], r.payload[1]]), 0, "major");
    assert_eq!(u16::from_le_bytes([r.payload[2], r.payload[3]]), 0, "minor");
    assert_eq!(r.payload.last(), Some(&0), "JSON is NUL-terminated");
    let json: serde_json::Value = serde_json::from_slice(&r.payload[4..r.payload.len() - 1])
        .expect("the reply carries valid JSON");
    let proposal: serde_json::Value = serde_json::from_str(QEMU_CAPS).unwrap();
    let caps = json["capabilities"]
        .as_object()
        .expect("capabilities object");
    for name in caps.keys() {
        assert!(
            proposal["capabilities"].get(name).is_some(),
            "reply names {name}, which the client did not propose"
        );
    }
    assert!(caps.get("migration").is_none(), "no migration support");
    // QEMU 11.1's acceptance checks.
    let fds = caps["max_msg_fds"].as_u64().unwrap();
    assert!((1..=16).contains(&fds));
    let xfer = caps["max_data_xfer_size"].as_u64().unwrap();
    assert!(xfer > 0 && xfer <= 64 << 20);
    let pg = caps["pgsizes"].as_u64().unwrap();
    assert!(pg != 0 && pg % 4096 == 0 && pg & 4096 != 0);
    assert!(caps["max_dma_maps"].as_u64().unwrap() <= 65535);
    assert_eq!(caps["write_multiple"], serde_json::Value::Bool(true));
    // Negotiated: the connection works.
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
}

#[test]
fn version_reply_names_only_what_was_proposed() {
    let s = TestServer::start();
    for (json, minor) in [
        (r#"{"capabilities":{"max_msg_fds":4}}"#, 0u16),
        (r#"{"capabilities":{}}"#, 3),
        (r#"{}"#, 1),
    ] {
        let mut c = s.connect_raw();
        let r = c
            .request(Command::Version, &version_payload(0, minor, json), &[])
            .unwrap();
        assert_eq!(u16::from_le_bytes([r.payload[2], r.payload[3]]), 0);
        let reply: serde_json::Value =
            serde_json::from_slice(&r.payload[4..r.payload.len() - 1]).unwrap();
        let proposed: serde_json::Value = serde_json::from_str(json).unwrap();
        let empty = serde_json::Map::new();
        let offered = proposed
            .get("capabilities")
            .and_then(|v| v.as_object())
            .unwrap_or(&empty);
        for name in reply["capabilities"].as_object().unwrap().keys() {
            assert!(offered.contains_key(name), "{json}: reply names {name}");
        }
        assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
    }
    // No JSON at all: defaults, and still a subset (empty).
    let mut c = s.connect_raw();
    let r = c.request(Command::Version, &[0, 0, 0, 0], &[]).unwrap();
    let reply: serde_json::Value =
        serde_json::from_slice(&r.payload[4..r.payload.len() - 1]).unwrap();
    assert!(reply["capabilities"].as_object().unwrap().is_empty());
}

#[test]
fn version_with_major_other_than_zero_is_refused_and_closed() {
    let s = TestServer::start();
    for major in [1u16, 0xffff] {
        let mut c = s.connect_raw();
        let r = c.request(Command::Version, &version_payload(major, 0, QEMU_CAPS), &[]);
        assert_eq!(errno(r), libc::ENOTSUP);
        assert_closed(&mut c);
    }
    assert_eq!(s.connect().read32(0, reg::ID).unwrap(), ID_VALUE);
}

#[test]
fn commands_before_version_get_an_error_reply() {
    let s = TestServer::start();
    let mut c = s.connect_raw();
    assert_eq!(errno(c.read32(0, reg::ID)), libc::EINVAL);
    assert_eq!(errno(c.device_info()), libc::EINVAL);
    assert_eq!(errno(c.reset()), libc::EINVAL);
    // The connection stays open and negotiates normally afterwards.
    c.negotiate().unwrap();
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
}

#[test]
fn second_version_is_rejected() {
    let s = TestServer::start();
    let mut c = s.connect();
    let r = c.request(Command::Version, &version_payload(0, 0, QEMU_CAPS), &[]);
    assert_eq!(errno(r), libc::EINVAL);
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
}

// ---------------------------------------------------------------------------
// Device, region and IRQ information

#[test]
fn device_and_irq_info() {
    let s = TestServer::start();
    let mut c = s.connect();
    let (flags, regions, irqs) = c.device_info().unwrap();
    assert_eq!(flags, DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET);
    assert_eq!(regions, 9);
    assert_eq!(irqs, 5);
    let r = c
        .request(
            Command::DeviceGetInfo,
            &{
                let mut p = vec![0u8; 16];
                p[0..4].copy_from_slice(&24u32.to_le_bytes());
                p
            },
            &[],
        )
        .unwrap();
    assert_eq!(
        r.payload.len(),
        16,
        "GET_INFO reply is the 16-byte structure"
    );

    let ev = IRQ_INFO_EVENTFD;
    let expected = [
        (
            irq_index::INTX,
            ev | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            1,
        ),
        (irq_index::MSI, ev | IRQ_INFO_NORESIZE, 1),
        (irq_index::MSIX, ev | IRQ_INFO_NORESIZE, 4),
        (irq_index::ERR, ev, 1),
        (irq_index::REQ, ev, 1),
    ];
    for (index, flags, count) in expected {
        assert_eq!(
            c.irq_info(index).unwrap(),
            (flags, count),
            "IRQ index {index}"
        );
    }
}

#[test]
fn region_info_for_all_nine_regions() {
    let s = TestServer::start();
    let mut c = s.connect();
    let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
    let expected: [(u64, u32); 9] = [
        (0x1000, rw),
        (0x1000, rw),
        (BAR2_SIZE as u64, rw | REGION_FLAG_MMAP | REGION_FLAG_CAPS),
        (0, 0), // upper half of the 64-bit BAR2
        (0, 0),
        (0, 0),
        (0, 0), // no expansion ROM
        (4096, rw),
        (0, 0), // no VGA
    ];
    for (index, (size, flags)) in expected.into_iter().enumerate() {
        let info = c.region_info(index as u32).unwrap();
        assert_eq!(info.size, size, "region {index} size");
        assert_eq!(info.flags, flags, "region {index} flags");
        if index == 2 {
            assert!(info.fd.is_some(), "BAR2 comes with its mmap fd");
            assert_eq!(info.sparse.len(), 1);
            assert_eq!(info.sparse[0].offset, 0x1000);
            assert_eq!(info.sparse[0].size, 0x3000);
        } else {
            assert!(info.fd.is_none(), "region {index} has no fd");
            assert!(info.sparse.is_empty());
        }
    }
}

/// Sends DEVICE_GET_REGION_INFO with `argsz` and returns (payload, fds).
fn region_info_raw(c: &mut Client, index: u32, argsz: u32) -> (Vec<u8>, usize) {
    let mut p = vec![0u8; 32];
    p[0..4].copy_from_slice(&argsz.to_le_bytes());
    p[8..12].copy_from_slice(&index.to_le_bytes());
    let r = c.request(Command::DeviceGetRegionInfo, &p, &[]).unwrap();
    (r.payload, r.fds.len())
}

#[test]
fn region_info_with_small_argsz_is_truncated_and_names_the_size_needed() {
    let s = TestServer::start();
    let mut c = s.connect();
    // argsz 32: only the fixed structure fits; argsz says what is needed.
    let (p, _) = region_info_raw(&mut c, 2, 32);
    assert_eq!(p.len(), 32, "reply fits the client's argsz");
    let needed = le32(&p, 0);
    assert_eq!(
        needed,
        32 + 16 + 16,
        "region info + sparse cap with one area"
    );
    assert_eq!(le32(&p, 12), 0, "no cap_offset when the caps are left out");
    assert_eq!(le64(&p, 16), BAR2_SIZE as u64);
    assert_ne!(le32(&p, 4) & REGION_FLAG_MMAP, 0);
    // Asking again with that argsz returns the capability.
    let (p, nfds) = region_info_raw(&mut c, 2, needed);
    assert_eq!(p.len(), needed as usize);
    assert_eq!(nfds, 1, "the mmap fd comes with the reply");
    assert_ne!(le32(&p, 4) & REGION_FLAG_CAPS, 0);
    let cap = le32(&p, 12) as usize;
    assert_eq!(cap, 32);
    assert_eq!(
        u16::from_le_bytes([p[cap], p[cap + 1]]),
        REGION_INFO_CAP_SPARSE_MMAP
    );
    assert_eq!(
        u16::from_le_bytes([p[cap + 2], p[cap + 3]]),
        1,
        "cap version"
    );
    assert_eq!(le32(&p, cap + 4), 0, "last capability");
    assert_eq!(le32(&p, cap + 8), 1, "one area");
    assert_eq!(le64(&p, cap + 16), 0x1000);
    assert_eq!(le64(&p, cap + 24), 0x3000);
    // A larger argsz does not make the reply larger.
    let (p, _) = region_info_raw(&mut c, 2, 4096);
    assert_eq!(p.len(), needed as usize);
    // Regions without caps answer with the bare structure at any argsz.
    let (p, nfds) = region_info_raw(&mut c, 0, 4096);
    assert_eq!(p.len(), 32);
    assert_eq!(nfds, 0);
}

/// Volatile byte access to a shared mapping.
fn map_read(m: &MmapRaw, off: usize, len: usize) -> Vec<u8> {
    assert!(off + len <= m.len());
    (0..len)
        // SAFETY: in bounds (checked above); the mapping lives while `m` does.
        .map(|i| unsafe { std::ptr::read_volatile(m.as_ptr().add(off + i)) })
        .collect()
}

fn map_write(m: &MmapRaw, off: usize, data: &[u8]) {
    assert!(off + data.len() <= m.len());
    for (i, b) in data.iter().enumerate() {
        // SAFETY: in bounds (checked above); the mapping is writable and
        // lives while `m` does.
        unsafe { std::ptr::write_volatile(m.as_mut_ptr().add(off + i), *b) };
    }
}

#[test]
fn bar2_sparse_mmap_is_coherent_with_region_access() {
    let s = TestServer::start();
    let mut c = s.connect();
    let info = c.region_info(2).unwrap();
    let fd = info.fd.expect("BAR2 mmap fd");
    let area = info.sparse[0];
    let file = std::fs::File::from(fd);
    let map = MmapOptions::new()
        .offset(info.offset + area.offset)
        .len(area.size as usize)
        .map_raw(&file)
        .expect("mmap the sparse area");

    // REGION_WRITE lands in the mapping.
    let a = pattern(64, 1);
    c.region_write(2, 0x1000, &a).unwrap();
    assert_eq!(map_read(&map, 0, 64), a);
    let b = pattern(8, 2);
    c.region_write(2, BAR2_SIZE as u64 - 8, &b).unwrap();
    assert_eq!(map_read(&map, area.size as usize - 8, 8), b);
    // A store through the mapping is what REGION_READ returns.
    let d = pattern(128, 3);
    map_write(&map, 0x2000 - 0x1000, &d);
    assert_eq!(c.region_read(2, 0x2000, 128).unwrap(), d);
    // Page 0 is trapped (not in the mmap) but reachable by message.
    c.region_write(2, 0x10, &[0xaa, 0xbb, 0xcc, 0xdd]).unwrap();
    assert_eq!(c.region_read(2, 0x10, 4).unwrap(), [0xaa, 0xbb, 0xcc, 0xdd]);
    // A whole-BAR read crosses the trapped and mapped pages.
    let all = c.region_read(2, 0, BAR2_SIZE as u32).unwrap();
    assert_eq!(&all[0x1000..0x1040], &a[..]);
    assert_eq!(&all[0x2000..0x2080], &d[..]);
}

// ---------------------------------------------------------------------------
// Configuration space

#[test]
fn config_space_masks() {
    let s = TestServer::start();
    let mut c = s.connect();
    let ids = u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16;
    // Vendor and device ID are read-only.
    assert_eq!(cfg32(&mut c, 0), ids);
    c.write32(CONFIG, 0, 0xffff_ffff).unwrap();
    assert_eq!(cfg32(&mut c, 0), ids);
    // Command: only I/O, memory, bus master, parity, SERR# and INTx-disable bits stick.
    c.region_write(CONFIG, 4, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(cfg16(&mut c, 4), 0x0547);
    c.region_write(CONFIG, 4, &0x0006u16.to_le_bytes()).unwrap();
    assert_eq!(cfg16(&mut c, 4), 0x0006);
    // Status: capability-list bit is read-only, error bits write-1-to-clear
    // (writing ones sets nothing).
    assert_eq!(cfg16(&mut c, 6), 0x0010);
    c.region_write(CONFIG, 6, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(cfg16(&mut c, 6), 0x0010);
    // A dword write to command+status applies each register's rules.
    c.write32(CONFIG, 4, 0xffff_0002).unwrap();
    assert_eq!(cfg32(&mut c, 4), 0x0010_0002);
    // Revision and class code are read-only.
    assert_eq!(cfg32(&mut c, 8), 0x1200_0001);
    c.write32(CONFIG, 8, 0).unwrap();
    assert_eq!(cfg32(&mut c, 8), 0x1200_0001);
    // Interrupt line RW, interrupt pin RO (INTA#).
    c.region_write(CONFIG, 0x3c, &[0x0b, 0x04]).unwrap();
    assert_eq!(cfg8(&mut c, 0x3c), 0x0b);
    assert_eq!(cfg8(&mut c, 0x3d), 1);
    // Subsystem IDs.
    assert_eq!(cfg32(&mut c, 0x2c), u32::from(VENDOR_ID) | 1 << 16);
}

#[test]
fn bar_sizing_reads_back_the_size_masks() {
    let s = TestServer::start();
    let mut c = s.connect();
    assert_eq!(cfg32(&mut c, 0x18) & 0xf, 0xc, "BAR2: 64-bit prefetchable");
    for off in (0x10..0x28).step_by(4) {
        c.write32(CONFIG, off, 0xffff_ffff).unwrap();
    }
    let sized: Vec<u32> = (0x10..0x28).step_by(4).map(|o| cfg32(&mut c, o)).collect();
    assert_eq!(
        sized,
        [0xffff_f000, 0xffff_f000, 0xffff_c00c, 0xffff_ffff, 0, 0],
        "BAR0 4K, BAR1 4K, BAR2 16K 64-bit prefetchable, BAR4/5 unused"
    );
    // No expansion ROM: the ROM BAR sizes to 0.
    c.write32(CONFIG, 0x30, 0xffff_ffff).unwrap();
    assert_eq!(cfg32(&mut c, 0x30), 0);
    // Programming addresses: the low bits stay the BAR type.
    c.write32(CONFIG, 0x10, 0xfebf_1234).unwrap();
    assert_eq!(cfg32(&mut c, 0x10), 0xfebf_1000);
    c.write32(CONFIG, 0x18, 0xfe00_0000).unwrap();
    c.write32(CONFIG, 0x1c, 0x0000_0001).unwrap();
    assert_eq!(cfg32(&mut c, 0x18), 0xfe00_000c);
    assert_eq!(cfg32(&mut c, 0x1c), 1);
}

/// Walks the standard capability list: (offset, id) pairs.
fn std_caps(c: &mut Client) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let mut p = u64::from(cfg8(c, 0x34));
    while p != 0 {
        assert!(out.len() < 48, "capability list loops");
        assert!(
            (0x40..0x100).contains(&p) && p % 4 == 0,
            "bad pointer {p:#x}"
        );
        out.push((p, cfg8(c, p)));
        p = u64::from(cfg8(c, p + 1));
    }
    out
}

/// Walks the extended capability list: (offset, id, version) triples.
fn ext_caps(c: &mut Client) -> Vec<(u64, u16, u8)> {
    let mut out = Vec::new();
    let mut p = 0x100u64;
    loop {
        let h = cfg32(c, p);
        if h == 0 {
            break;
        }
        out.push((p, h as u16, (h >> 16 & 0xf) as u8));
        let next = u64::from(h >> 20);
        if next == 0 {
            break;
        }
        assert!(
            next > p && next % 4 == 0 && next < 4096,
            "bad next {next:#x}"
        );
        assert!(out.len() < 512);
        p = next;
    }
    out
}

#[test]
fn capability_lists() {
    let s = TestServer::start();
    let mut c = s.connect();
    assert_ne!(cfg16(&mut c, 6) & 0x10, 0, "capabilities list present");
    assert_eq!(
        std_caps(&mut c),
        [(0x40, 0x01), (0x48, 0x05), (0x60, 0x11), (0x6c, 0x10)],
        "PM, MSI, MSI-X, PCI Express"
    );
    // MSI-X: 4 vectors, table in BAR1 at 0, PBA in BAR1 at 0x800.
    assert_eq!(cfg16(&mut c, 0x62) & 0x7ff, 3);
    assert_eq!(cfg32(&mut c, 0x64), 1);
    assert_eq!(cfg32(&mut c, 0x68), 0x800 | 1);
    // PCIe capability version 2, Endpoint; FLR advertised.
    let pcie_flags = cfg16(&mut c, 0x6e);
    assert_eq!(pcie_flags & 0xf, 2);
    assert_eq!(pcie_flags >> 4 & 0xf, 0, "Endpoint");
    assert_ne!(cfg32(&mut c, 0x70) & 1 << 28, 0, "FLR capable");

    assert_eq!(
        ext_caps(&mut c),
        [(0x100, 0x03, 1), (0x10c, 0x0b, 1)],
        "DSN then VSEC"
    );
    // DSN body: the 64-bit serial number.
    assert_eq!(cfg32(&mut c, 0x104), 0x0000_0001);
    assert_eq!(cfg32(&mut c, 0x108), 0x7d0c_0000);
    // VSEC header: ID 1, revision 1, length 16.
    let vsec = cfg32(&mut c, 0x110);
    assert_eq!((vsec & 0xffff, vsec >> 16 & 0xf, vsec >> 20), (1, 1, 16));
    // Its scratch dword is RW, the rest read-only.
    c.write32(CONFIG, 0x114, 0xdead_beef).unwrap();
    assert_eq!(cfg32(&mut c, 0x114), 0xdead_beef);
    c.write32(CONFIG, 0x118, 0xffff_ffff).unwrap();
    assert_eq!(cfg32(&mut c, 0x118), 0);
    c.write32(CONFIG, 0x110, 0).unwrap();
    assert_eq!(cfg32(&mut c, 0x110), vsec);
    // Capability headers are read-only.
    c.write32(CONFIG, 0x100, 0).unwrap();
    assert_eq!(cfg32(&mut c, 0x100) & 0xffff, 3);
    c.write32(CONFIG, 0x40, 0).unwrap();
    assert_eq!(cfg8(&mut c, 0x40), 0x01);
    // Past the last capability: zeros up to the end of the 4 KiB space.
    assert_eq!(cfg32(&mut c, 0x11c), 0);
    assert_eq!(cfg32(&mut c, 0xffc), 0);
    // One 4 KiB read agrees with the dword reads.
    let whole = c.region_read(CONFIG, 0, 4096).unwrap();
    assert_eq!(
        le32(&whole, 0),
        u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16
    );
    assert_eq!(le32(&whole, 0x114), 0xdead_beef);
    assert_eq!(le32(&whole, 0x10c) & 0xffff, 0x0b);
}

#[test]
fn rciep_has_no_link_registers() {
    let s = TestServer::start_with(PortType::RcIntegratedEndpoint);
    let mut c = s.connect();
    assert_eq!(cfg16(&mut c, 0x6e) >> 4 & 0xf, 9, "RCiEP");
    assert_eq!(cfg32(&mut c, 0x6c + 12), 0, "LinkCap zero");
}

#[test]
fn function_level_reset_through_config_space() {
    let s = TestServer::start();
    let mut c = s.connect();
    c.write32(0, reg::SCRATCH, 0x1234_5678).unwrap();
    c.region_write(CONFIG, 4, &6u16.to_le_bytes()).unwrap();
    let devctl = 0x6c + 8;
    let v = cfg16(&mut c, devctl);
    c.region_write(CONFIG, devctl, &(v | 0x8000).to_le_bytes())
        .unwrap();
    assert_eq!(cfg16(&mut c, devctl) & 0x8000, 0, "Initiate FLR reads 0");
    assert_eq!(
        c.read32(0, reg::SCRATCH).unwrap(),
        0,
        "FLR reset the device"
    );
    assert_eq!(cfg16(&mut c, 4), 0, "FLR reset config space");
}

// ---------------------------------------------------------------------------
// BAR0 registers

#[test]
fn bar0_registers() {
    let s = TestServer::start();
    let mut c = s.connect();
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
    assert_eq!(c.read32(0, reg::VERSION).unwrap(), 0x0001_0000);
    // ID and VERSION are read-only.
    c.write32(0, reg::ID, 0).unwrap();
    c.write32(0, reg::VERSION, 0).unwrap();
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
    // Sub-dword reads of the ID.
    assert_eq!(c.region_read(0, reg::ID + 1, 1).unwrap(), [0xd3]);
    assert_eq!(c.region_read(0, reg::ID + 2, 2).unwrap(), [0x0c, 0x7d]);
    // SCRATCH is RW.
    for v in [0xffff_ffffu32, 0, 0x5a5a_a5a5] {
        c.write32(0, reg::SCRATCH, v).unwrap();
        assert_eq!(c.read32(0, reg::SCRATCH).unwrap(), v);
    }
    // 64-bit registers, written whole or in halves.
    c.region_write(0, reg::SRC, &0x1122_3344_5566_7788u64.to_le_bytes())
        .unwrap();
    assert_eq!(
        c.region_read(0, reg::SRC, 8).unwrap(),
        0x1122_3344_5566_7788u64.to_le_bytes()
    );
    c.write32(0, reg::DST, 0xaabb_ccdd).unwrap();
    c.write32(0, reg::DST + 4, 0x0000_0001).unwrap();
    assert_eq!(
        c.region_read(0, reg::DST, 8).unwrap(),
        0x1_aabb_ccddu64.to_le_bytes()
    );
    // The idle device: no copy done yet.
    assert_eq!(c.read32(0, reg::STATUS).unwrap(), 0);
    assert_eq!(c.read32(0, reg::COMPLETED).unwrap(), 0);
    // Unused offsets read 0 and ignore writes.
    c.write32(0, 0x800, 0xffff_ffff).unwrap();
    assert_eq!(c.read32(0, 0x800).unwrap(), 0);
    // BAR1 (MSI-X table and PBA): the PBA reads 0.
    assert_eq!(c.read32(1, 0x800).unwrap(), 0);
}

// ---------------------------------------------------------------------------
// DMA windows

const A: u64 = 0x10_0000;
const B: u64 = 0x20_0000;
const C: u64 = 0x30_0000;
const D: u64 = 0x40_0000;

/// DMA_UNMAP with raw flags; returns the reply payload.
fn unmap_raw(c: &mut Client, flags: u32, address: u64, size: u64) -> Result<Vec<u8>, ClientError> {
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&24u32.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&address.to_le_bytes());
    p.extend_from_slice(&size.to_le_bytes());
    let r = c.request(Command::DmaUnmap, &p, &[])?;
    assert_eq!(r.payload, p, "DMA_UNMAP reply echoes the request");
    Ok(r.payload)
}

/// Clears STATUS DONE/ERROR (W1C).
fn clear_status(c: &mut Client) {
    c.write32(0, reg::STATUS, status::DONE | status::ERROR)
        .unwrap();
}

#[test]
fn dma_windows_read_only_offsets_and_unmap_all() {
    let s = TestServer::start();
    let mut c = s.connect();
    let ram_a = memfd(0x10000);
    let ram_b = memfd(0x10000);
    let ram_c = memfd(0x4000);
    let (fa, fb, fc) = (file(&ram_a), file(&ram_b), file(&ram_c));
    map_fd(&mut c, A, 0x10000, 0, RW, &ram_a);
    // B: 16 KiB of ram_b starting at file offset 0x8000.
    map_fd(&mut c, B, 0x4000, 0x8000, RW, &ram_b);
    // C: read-only for the device.
    map_fd(&mut c, C, 0x4000, 0, RO, &ram_c);

    // Read-only window as the source; non-zero fd offset as the destination.
    let data = pattern(0x1000, 7);
    fc.write_all_at(&data, 0x200).unwrap();
    assert_eq!(
        copy(&mut c, C + 0x200, B + 0x100, 0x1000, false),
        status::DONE
    );
    let mut out = vec![0u8; 0x1000];
    fb.read_exact_at(&mut out, 0x8000 + 0x100).unwrap();
    assert_eq!(out, data, "landed at fd offset 0x8000 + 0x100");
    let mut before = vec![0u8; 0x100];
    fb.read_exact_at(&mut before, 0x8000).unwrap();
    assert!(before.iter().all(|&b| b == 0));

    // The device may not write a read-only window.
    fa.write_all_at(&pattern(0x100, 9), 0).unwrap();
    assert_eq!(copy(&mut c, A, C, 0x100, false), status::ERROR);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::DEST_FAULT);
    clear_status(&mut c);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), 0);
    let mut untouched = vec![0u8; 0x100];
    fc.read_exact_at(&mut untouched, 0).unwrap();
    assert!(untouched.iter().all(|&b| b == 0));

    // A source running off the end of a window faults.
    assert_eq!(copy(&mut c, B + 0x3800, A, 0x1000, false), status::ERROR);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::SOURCE_FAULT);
    clear_status(&mut c);

    // Unmap of exactly B; the reply echoes the request.
    unmap_raw(&mut c, 0, B, 0x4000).unwrap();
    assert_eq!(copy(&mut c, A, B, 0x100, false), status::ERROR);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::DEST_FAULT);
    clear_status(&mut c);

    // Unmap-all drops A and C; both addresses can be mapped again.
    unmap_raw(&mut c, DMA_UNMAP_ALL, 0, 0).unwrap();
    assert_eq!(copy(&mut c, A, A + 0x8000, 0x100, false), status::ERROR);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::SOURCE_FAULT);
    clear_status(&mut c);
    // Nothing is left there: unmapping the old range is a no-op, and both
    // addresses can be mapped again (no EEXIST).
    c.dma_unmap(C, 0x4000).unwrap();
    map_fd(&mut c, A, 0x10000, 0, RW, &ram_a);
    map_fd(&mut c, C, 0x4000, 0, RW, &ram_c);
    assert_eq!(copy(&mut c, A, C, 0x100, false), status::DONE);
    let mut got = vec![0u8; 0x100];
    fc.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, pattern(0x100, 9));
}

#[test]
fn dma_unmap_removes_whole_windows_in_a_range() {
    // Like Linux VFIO type1 (and QEMU with a vIOMMU): every window wholly
    // inside the range goes; a range that would split one is refused and
    // removes nothing; a range with no window is a successful no-op.
    let s = TestServer::start();
    let mut c = s.connect();
    let rams: Vec<_> = (0..3).map(|_| memfd(0x2000)).collect();
    for (i, ram) in rams.iter().enumerate() {
        map_fd(&mut c, A + 0x4000 * i as u64, 0x2000, 0, RW, ram);
    }
    let mapped = |c: &mut Client, iova: u64| {
        let r = copy(c, iova, iova + 0x1000, 0x10, false);
        if r != status::DONE {
            clear_status(c);
        }
        r == status::DONE
    };
    // Splitting the middle window: EINVAL, all three stay.
    assert_eq!(errno(c.dma_unmap(A + 0x4000, 0x1000)), libc::EINVAL);
    assert_eq!(errno(c.dma_unmap(A + 0x3000, 0x2000)), libc::EINVAL);
    assert_eq!(errno(c.dma_unmap(A, 0x5000)), libc::EINVAL);
    assert!(mapped(&mut c, A) && mapped(&mut c, A + 0x4000) && mapped(&mut c, A + 0x8000));
    // An empty range (a gap between windows, or far away): success, no change.
    c.dma_unmap(A + 0x2000, 0x2000).unwrap();
    c.dma_unmap(0x8000_0000, 0x1000_0000).unwrap();
    assert!(mapped(&mut c, A) && mapped(&mut c, A + 0x4000) && mapped(&mut c, A + 0x8000));
    // A range covering the first two windows (and the gap) removes both.
    c.dma_unmap(A, 0x6000).unwrap();
    assert!(!mapped(&mut c, A));
    assert!(!mapped(&mut c, A + 0x4000));
    assert!(mapped(&mut c, A + 0x8000));
    // A power-of-two chunk far larger than the window removes it.
    c.dma_unmap(0, 1 << 32).unwrap();
    assert!(!mapped(&mut c, A + 0x8000));
    map_fd(&mut c, A, 0x2000, 0, RW, &rams[0]);
    assert!(mapped(&mut c, A));
}

#[test]
fn dma_copy_spans_adjacent_windows() {
    let s = TestServer::start();
    let mut c = s.connect();
    let src = memfd(0x2000);
    let (lo, hi) = (memfd(0x1000), memfd(0x1000));
    map_fd(&mut c, A, 0x2000, 0, RW, &src);
    map_fd(&mut c, B, 0x1000, 0, RW, &lo);
    map_fd(&mut c, B + 0x1000, 0x1000, 0, RW, &hi);
    let data = pattern(0x1000, 5);
    file(&src).write_all_at(&data, 0x400).unwrap();
    assert_eq!(
        copy(&mut c, A + 0x400, B + 0x800, 0x1000, false),
        status::DONE
    );
    let mut a = vec![0u8; 0x800];
    let mut b = vec![0u8; 0x800];
    file(&lo).read_exact_at(&mut a, 0x800).unwrap();
    file(&hi).read_exact_at(&mut b, 0).unwrap();
    assert_eq!([a, b].concat(), data);
    assert_eq!(c.read32(0, reg::COMPLETED).unwrap(), 1);
    assert_eq!(c.read32(0, reg::BYTES).unwrap(), 0x1000);
}

// ---------------------------------------------------------------------------
// Interrupts

#[test]
fn dma_copy_into_client_memory_signals_msix() {
    let s = TestServer::start();
    let mut c = s.connect();
    let ram = memfd(1 << 20);
    map_fd(&mut c, 0, 1 << 20, 0, RW, &ram);
    let f = file(&ram);
    let data = pattern(0x3000, 11);
    f.write_all_at(&data, 0x1000).unwrap();
    let evs: Vec<EventFd> = (0..4).map(|_| eventfd()).collect();
    let fds: Vec<i32> = evs.iter().map(|e| e.as_raw_fd()).collect();
    c.set_irqs(
        irq_index::MSIX,
        0,
        4,
        IrqData::Eventfd,
        IrqAction::Trigger,
        &fds,
    )
    .unwrap();
    c.write32(0, reg::VECTOR, 2).unwrap();
    program_copy(&mut c, 0x1000, 0x8_0000, 0x3000, true);
    ring(&mut c);
    assert_eq!(
        wait_eventfd(&evs[2], PATIENCE),
        Some(1),
        "vector 2 signalled"
    );
    assert_eq!(wait_idle(&mut c), status::DONE);
    let mut out = vec![0u8; 0x3000];
    f.read_exact_at(&mut out, 0x8_0000).unwrap();
    assert_eq!(out, data);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(eventfd_now(e), None, "vector {i} stays quiet");
    }
    assert_eq!(c.read32(0, reg::COMPLETED).unwrap(), 1);
    assert_eq!(
        c.region_read(0, reg::BYTES, 8).unwrap(),
        0x3000u64.to_le_bytes()
    );
    // A copy without CTRL.IRQ raises nothing.
    assert_eq!(copy(&mut c, 0x1000, 0x9_0000, 0x10, false), status::DONE);
    assert_eq!(eventfd_now(&evs[2]), None);
}

/// Rings the doorbell with LEN 0: the device reports BAD_LENGTH and raises
/// its interrupt synchronously, before the (non-posted) write is answered.
fn raise_now(c: &mut Client) {
    c.write32(0, reg::LEN, 0).unwrap();
    c.write32(0, reg::CTRL, 1).unwrap();
    c.write32(0, reg::DOORBELL, 1).unwrap();
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::BAD_LENGTH);
}

#[test]
fn interrupts_fall_back_from_msix_to_msi_to_intx() {
    let s = TestServer::start();
    let mut c = s.connect();
    let (msix, msi, intx) = (eventfd(), eventfd(), eventfd());
    assign(&mut c, irq_index::MSIX, 0, &msix);
    assign(&mut c, irq_index::MSI, 0, &msi);
    assign(&mut c, irq_index::INTX, 0, &intx);

    raise_now(&mut c);
    assert_eq!(eventfd_now(&msix), Some(1), "MSI-X wins when enabled");
    assert_eq!(eventfd_now(&msi), None);
    assert_eq!(eventfd_now(&intx), None);

    disable(&mut c, irq_index::MSIX);
    raise_now(&mut c);
    assert_eq!(eventfd_now(&msi), Some(1), "MSI when MSI-X is off");
    assert_eq!(eventfd_now(&msix), None);
    assert_eq!(eventfd_now(&intx), None);

    disable(&mut c, irq_index::MSI);
    raise_now(&mut c);
    assert_eq!(eventfd_now(&intx), Some(1), "INTx when neither is on");
    assert_eq!(eventfd_now(&msi), None);

    // A real copy completes with MSI as well.
    disable(&mut c, irq_index::INTX);
    assign(&mut c, irq_index::MSI, 0, &msi);
    clear_status(&mut c);
    let ram = memfd(0x4000);
    map_fd(&mut c, 0, 0x4000, 0, RW, &ram);
    program_copy(&mut c, 0, 0x2000, 0x1000, true);
    ring(&mut c);
    assert_eq!(wait_eventfd(&msi, PATIENCE), Some(1));
    assert_eq!(wait_idle(&mut c), status::DONE);
}

#[test]
fn intx_is_automasked_and_unmask_refires_while_asserted() {
    let s = TestServer::start();
    let mut c = s.connect();
    let intx = eventfd();
    assign(&mut c, irq_index::INTX, 0, &intx);
    let unmask = |c: &mut Client| {
        c.set_irqs(irq_index::INTX, 0, 1, IrqData::None, IrqAction::Unmask, &[])
            .unwrap()
    };

    raise_now(&mut c);
    assert_eq!(eventfd_now(&intx), Some(1));
    // Automasked: a second interrupt only becomes pending.
    raise_now(&mut c);
    assert_eq!(eventfd_now(&intx), None);
    // UNMASK with the line still asserted fires again (and masks again).
    unmask(&mut c);
    assert_eq!(eventfd_now(&intx), Some(1));
    // The driver clears the cause: the device de-asserts INTx ...
    clear_status(&mut c);
    // ... so the next UNMASK fires nothing.
    unmask(&mut c);
    assert_eq!(eventfd_now(&intx), None);
    // An explicit MASK holds a new interrupt back until UNMASK.
    c.set_irqs(irq_index::INTX, 0, 1, IrqData::None, IrqAction::Mask, &[])
        .unwrap();
    raise_now(&mut c);
    assert_eq!(eventfd_now(&intx), None);
    c.set_irqs(
        irq_index::INTX,
        0,
        1,
        IrqData::Bool(vec![true]),
        IrqAction::Unmask,
        &[],
    )
    .unwrap();
    assert_eq!(eventfd_now(&intx), Some(1));
    clear_status(&mut c);
    unmask(&mut c);
    assert_eq!(eventfd_now(&intx), None);
    // A completed copy raises INTx from the worker thread.
    let ram = memfd(0x4000);
    map_fd(&mut c, 0, 0x4000, 0, RW, &ram);
    program_copy(&mut c, 0, 0x2000, 0x800, true);
    ring(&mut c);
    assert_eq!(wait_eventfd(&intx, PATIENCE), Some(1));
    assert_eq!(wait_idle(&mut c), status::DONE);
    // TRIGGER with DATA_NONE fires the eventfd from the client side.
    clear_status(&mut c);
    unmask(&mut c);
    c.set_irqs(
        irq_index::INTX,
        0,
        1,
        IrqData::None,
        IrqAction::Trigger,
        &[],
    )
    .unwrap();
    assert_eq!(eventfd_now(&intx), Some(1));
}

// ---------------------------------------------------------------------------
// DMA by message (windows without an fd)

#[test]
fn dma_copy_through_windows_without_fd() {
    let s = TestServer::start();
    let mut c = s.connect();
    c.dma_map(A, 0x4000, 0, RW, None).unwrap();
    c.dma_map(B, 0x4000, 0, RW, None).unwrap();
    let data = pattern(0x2000, 13);
    c.remote_memory(A).unwrap()[0x10..0x2010].copy_from_slice(&data);
    let ev = eventfd();
    assign(&mut c, irq_index::MSIX, 0, &ev);
    program_copy(&mut c, A + 0x10, B + 0x20, 0x2000, true);
    ring(&mut c);
    // The copy worker reads the source with DMA_READ and writes the
    // destination with DMA_WRITE; the client serves both.
    let deadline = Instant::now() + PATIENCE;
    let mut served = 0;
    while served < 2 {
        served += c.serve_requests(Duration::from_millis(50)).unwrap();
        assert!(Instant::now() < deadline, "DMA requests did not arrive");
    }
    c.set_timeout(Some(PATIENCE)).unwrap();
    assert_eq!(served, 2, "one DMA_READ and one DMA_WRITE");
    assert_eq!(wait_eventfd(&ev, PATIENCE), Some(1));
    assert_eq!(wait_idle(&mut c), status::DONE);
    assert_eq!(&c.remote_memory(B).unwrap()[0x20..0x2020], &data[..]);
    assert!(c.remote_memory(B).unwrap()[..0x20].iter().all(|&b| b == 0));

    // Mixed: an fd-backed source into a message-only destination.
    let ram = memfd(0x4000);
    map_fd(&mut c, C, 0x4000, 0, RW, &ram);
    let data2 = pattern(0x800, 17);
    file(&ram).write_all_at(&data2, 0).unwrap();
    let before = c.dma_requests_served;
    assert_eq!(copy(&mut c, C, B + 0x3000, 0x800, false), status::DONE);
    assert_eq!(c.dma_requests_served - before, 1, "only the DMA_WRITE");
    assert_eq!(&c.remote_memory(B).unwrap()[0x3000..0x3800], &data2[..]);

    // A window the client does not serve (mapped behind the client
    // helper's back): its DMA_READ/DMA_WRITE get error replies and the copy
    // fails cleanly.
    let map = vfio_user_server::protocol::DmaMapRequest {
        prot: RW,
        offset: 0,
        address: D,
        size: 0x1000,
    };
    c.request(Command::DmaMap, &map.encode(), &[]).unwrap();
    assert_eq!(copy(&mut c, D, B, 0x100, false), status::ERROR);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::SOURCE_FAULT);
    clear_status(&mut c);
    assert_eq!(copy(&mut c, B, D, 0x100, false), status::ERROR);
    assert_eq!(c.read32(0, reg::ERROR).unwrap(), error::DEST_FAULT);
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
}

#[test]
fn dma_by_message_is_chunked_to_max_data_xfer_size() {
    let s = TestServer::start();
    let mut c = s.connect();
    let len = (1 << 20) + 0x1000;
    c.dma_map(A << 4, 2 << 20, 0, RW, None).unwrap();
    c.dma_map(B << 4, 2 << 20, 0, RW, None).unwrap();
    let data = pattern(len, 23);
    c.remote_memory(A << 4).unwrap()[..len].copy_from_slice(&data);
    let before = c.dma_requests_served;
    assert_eq!(
        copy(&mut c, A << 4, B << 4, len as u32, false),
        status::DONE
    );
    assert_eq!(
        c.dma_requests_served - before,
        4,
        "2 DMA_READs + 2 DMA_WRITEs"
    );
    assert_eq!(&c.remote_memory(B << 4).unwrap()[..len], &data[..]);
}

#[test]
fn dma_by_message_respects_the_servers_own_transfer_limit() {
    // A client that accepts 4 MiB transfers still gets requests whose
    // replies fit the server's 1 MiB limit.
    let s = TestServer::start();
    let mut c = s.connect_raw();
    let caps = r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":4194304}}"#;
    c.request(Command::Version, &version_payload(0, 0, caps), &[])
        .unwrap();
    let len = 2 << 20;
    c.dma_map(A << 4, 4 << 20, 0, RW, None).unwrap();
    c.dma_map(B << 4, 4 << 20, 0, RW, None).unwrap();
    let data = pattern(len, 29);
    c.remote_memory(A << 4).unwrap()[..len].copy_from_slice(&data);
    let before = c.dma_requests_served;
    assert_eq!(
        copy(&mut c, A << 4, B << 4, len as u32, false),
        status::DONE
    );
    assert_eq!(c.dma_requests_served - before, 4);
    assert_eq!(&c.remote_memory(B << 4).unwrap()[..len], &data[..]);
}

// ---------------------------------------------------------------------------
// Reset, posted writes, WRITE_MULTI

#[test]
fn device_reset_clears_registers_but_keeps_dma_windows() {
    let s = TestServer::start();
    let mut c = s.connect();
    let ram = memfd(0x10000);
    map_fd(&mut c, 0, 0x10000, 0, RW, &ram);
    let ev = eventfd();
    assign(&mut c, irq_index::MSIX, 1, &ev);
    c.write32(0, reg::VECTOR, 1).unwrap();
    assert_eq!(copy(&mut c, 0, 0x8000, 0x100, true), status::DONE);
    assert_eq!(wait_eventfd(&ev, PATIENCE), Some(1));
    c.write32(0, reg::SCRATCH, 0xfeed_f00d).unwrap();
    c.region_write(CONFIG, 4, &6u16.to_le_bytes()).unwrap();
    c.write32(CONFIG, 0x10, 0xfebf_0000).unwrap();
    c.write32(CONFIG, 0x114, 0x1234_5678).unwrap();

    c.reset().unwrap();

    for (name, off) in [
        ("SRC", reg::SRC),
        ("DST", reg::DST),
        ("LEN", reg::LEN),
        ("CTRL", reg::CTRL),
        ("STATUS", reg::STATUS),
        ("ERROR", reg::ERROR),
        ("VECTOR", reg::VECTOR),
        ("COMPLETED", reg::COMPLETED),
        ("BYTES", reg::BYTES),
        ("SCRATCH", reg::SCRATCH),
    ] {
        assert_eq!(c.read32(0, off).unwrap(), 0, "{name} after reset");
    }
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
    assert_eq!(cfg16(&mut c, 4), 0, "command register");
    assert_eq!(cfg32(&mut c, 0x10), 0, "BAR0");
    assert_eq!(cfg32(&mut c, 0x114), 0, "VSEC scratch");
    // DMA windows and eventfds belong to the client, not the device state.
    c.write32(0, reg::VECTOR, 1).unwrap();
    assert_eq!(copy(&mut c, 0, 0x9000, 0x100, true), status::DONE);
    assert_eq!(wait_eventfd(&ev, PATIENCE), Some(1));
}

fn mw(region: u32, offset: u64, bytes: &[u8]) -> MultiWrite {
    let mut data = [0u8; 8];
    data[..bytes.len()].copy_from_slice(bytes);
    MultiWrite {
        access: RegionAccess {
            offset,
            region,
            count: bytes.len() as u32,
        },
        data,
    }
}

#[test]
fn region_write_multi() {
    let s = TestServer::start();
    let mut c = s.connect();
    let writes = [
        mw(0, reg::SCRATCH, &0x1122_3344u32.to_le_bytes()),
        mw(0, reg::SRC, &0x0102_0304_0506_0708u64.to_le_bytes()),
        mw(CONFIG, 0x114, &0xcafe_babeu32.to_le_bytes()),
        mw(CONFIG, 0x3c, &[0x0a]),
        mw(2, 0x1000, &[1, 2, 3, 4, 5, 6, 7]),
    ];
    assert_eq!(c.write_multi(&writes).unwrap(), 5);
    assert_eq!(c.read32(0, reg::SCRATCH).unwrap(), 0x1122_3344);
    assert_eq!(
        c.region_read(0, reg::SRC, 8).unwrap(),
        0x0102_0304_0506_0708u64.to_le_bytes()
    );
    assert_eq!(cfg32(&mut c, 0x114), 0xcafe_babe);
    assert_eq!(cfg8(&mut c, 0x3c), 0x0a);
    assert_eq!(c.region_read(2, 0x1000, 7).unwrap(), [1, 2, 3, 4, 5, 6, 7]);
    // Posted, as QEMU sends it: no reply, applied in order.
    let many: Vec<MultiWrite> = (0..200u32)
        .map(|i| mw(0, reg::SCRATCH, &i.to_le_bytes()))
        .collect();
    c.post(Command::RegionWriteMulti, &encode_write_multi(&many))
        .unwrap();
    assert_eq!(c.read32(0, reg::SCRATCH).unwrap(), 199);
}

#[test]
fn posted_writes_get_no_reply() {
    let s = TestServer::start();
    let mut c = s.connect();
    let errors = s.stats.errors();
    c.region_write_posted(0, reg::SCRATCH, &7u32.to_le_bytes())
        .unwrap();
    // A failing posted write is not answered either.
    c.region_write_posted(9, 0, &[0; 4]).unwrap();
    c.region_write_posted(0, 0x2000, &[0; 4]).unwrap();
    c.region_write_posted(CONFIG, 0x114, &9u32.to_le_bytes())
        .unwrap();
    // The next message received is the reply to this read (the client
    // checks the id), so nothing was sent for the posted writes.
    assert_eq!(c.read32(0, reg::SCRATCH).unwrap(), 7);
    assert_eq!(cfg32(&mut c, 0x114), 9);
    assert_eq!(s.stats.errors() - errors, 2, "the bad writes were counted");
    c.set_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(c.recv().is_err(), "no stray reply is pending");
}

/// One message as bytes: `header` (flags as given) and `payload`.
fn wire(h: Header, payload: &[u8]) -> Vec<u8> {
    let mut m = h.encode().to_vec();
    m.extend_from_slice(payload);
    m
}

#[test]
fn queued_messages_are_answered_in_order_and_fds_stay_with_their_message() {
    // Everything is written before any reply is read, so the server takes
    // several messages per read; a malformed one in the middle is answered
    // and skipped, and the fd goes with the DMA_MAP it was sent with.
    let s = TestServer::start();
    let mut c = s.connect();
    let ram = memfd(0x4000);
    file(&ram).write_all_at(&pattern(0x100, 3), 0).unwrap();
    let access = |offset, data: &[u8]| {
        RegionAccess {
            offset,
            region: 0,
            count: if data.is_empty() {
                4
            } else {
                data.len() as u32
            },
        }
        .encode(data)
    };
    let mut posted = command_header(1, Command::RegionWrite as u16, 20);
    posted.no_reply = true;
    let mut batch = wire(posted, &access(reg::SCRATCH, &0x11u32.to_le_bytes()));
    batch.extend(wire(
        command_header(2, Command::RegionRead as u16, 16),
        &access(reg::SCRATCH, &[]),
    ));
    // Reserved flag bit 6: answered with EINVAL, its payload skipped.
    let mut bad = raw_header(3, Command::RegionRead as u16, 32, 1 << 6, 0);
    bad.extend_from_slice(&access(reg::SCRATCH, &[]));
    batch.extend(bad);
    batch.extend(wire(
        command_header(4, Command::RegionWrite as u16, 20),
        &access(reg::SCRATCH, &0x22u32.to_le_bytes()),
    ));
    c.send_bytes(&batch, &[]).unwrap();
    let map = DmaMapRequest {
        prot: RW,
        offset: 0,
        address: A,
        size: 0x4000,
    }
    .encode();
    c.send_bytes(
        &wire(command_header(5, Command::DmaMap as u16, map.len()), &map),
        &[ram.as_raw_fd()],
    )
    .unwrap();
    // REGION_READ refuses fds: had the fd been attributed to it, it would fail.
    c.send_bytes(
        &wire(
            command_header(6, Command::RegionRead as u16, 16),
            &access(reg::SCRATCH, &[]),
        ),
        &[],
    )
    .unwrap();

    let mut replies = Vec::new();
    for _ in 0..5 {
        let m = c.recv().unwrap();
        replies.push((m.header.msg_id, m.header.error, m.payload.clone()));
    }
    let ids: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(ids, [2, 3, 4, 5, 6], "in order, none for the posted write");
    assert_eq!(le32(&replies[0].2, 16), 0x11);
    assert_eq!(replies[1].1, Some(libc::EINVAL as u32));
    assert_eq!(replies[2].1, None);
    assert_eq!(replies[3].1, None, "DMA_MAP with its fd");
    assert_eq!(replies[4].1, None);
    assert_eq!(le32(&replies[4].2, 16), 0x22);
    // The window is backed by the fd: the device copies within the memfd.
    assert_eq!(copy(&mut c, A, A + 0x1000, 0x100, false), status::DONE);
    let mut got = vec![0u8; 0x100];
    file(&ram).read_exact_at(&mut got, 0x1000).unwrap();
    assert_eq!(got, pattern(0x100, 3));
}

#[test]
fn unsupported_and_unknown_commands() {
    let s = TestServer::start();
    let mut c = s.connect();
    // GET_REGION_IO_FDS: argsz, flags, index, count.
    let mut io = vec![0u8; 16];
    io[0..4].copy_from_slice(&16u32.to_le_bytes());
    assert_eq!(
        errno(c.request(Command::DeviceGetRegionIoFds, &io, &[])),
        libc::ENOTSUP
    );
    let feature = [16u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    assert_eq!(
        errno(c.request(Command::DeviceFeature, &feature, &[])),
        libc::ENOTSUP
    );
    let mig = [0u64.to_le_bytes(), 0u64.to_le_bytes()].concat();
    assert_eq!(
        errno(c.request(Command::MigDataRead, &mig, &[])),
        libc::ENOTSUP
    );
    assert_eq!(
        errno(c.request(Command::MigDataWrite, &mig, &[])),
        libc::ENOTSUP
    );
    assert_eq!(
        errno(c.request(Command::DirtyPages, &mig, &[])),
        libc::ENOTSUP
    );
    for cmd in [0u16, 27, 100, 0xffff] {
        let id = 0x100u16.wrapping_add(cmd);
        assert_eq!(
            errno(raw_request(&mut c, id, cmd, &[1, 2, 3], &[])),
            libc::ENOSYS
        );
    }
    assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
}

// ---------------------------------------------------------------------------
// Connections

#[test]
fn a_second_client_is_refused_while_the_first_keeps_working() {
    let s = TestServer::start();
    let mut first = s.connect();
    first.write32(0, reg::SCRATCH, 0x4242).unwrap();
    // Connected but refused: the server closes it without a word.
    let mut idle = s.connect_raw();
    assert_closed(&mut idle);
    // One that tries to negotiate fails the same way.
    let mut eager = s.connect_raw();
    match eager.negotiate() {
        Ok(()) => panic!("a second client must be refused"),
        Err(e) => assert!(is_closed_error(&e), "refused by closing, got {e}"),
    }
    // The first client is unaffected, its state intact.
    assert_eq!(first.read32(0, reg::SCRATCH).unwrap(), 0x4242);
    assert_eq!(first.read32(0, reg::ID).unwrap(), ID_VALUE);
    drop(first);
    // Once it is gone, the next client is served (with a fresh device).
    let mut next = s.connect();
    assert_eq!(next.read32(0, reg::SCRATCH).unwrap(), 0);
}

#[test]
fn a_client_vanishing_mid_request_resets_the_device_for_the_next() {
    let s = TestServer::start();
    let ram = memfd(0x10000);
    let ev = eventfd();
    {
        let mut first = s.connect();
        map_fd(&mut first, A, 0x10000, 0, RW, &ram);
        assign(&mut first, irq_index::MSIX, 0, &ev);
        first.write32(0, reg::SCRATCH, 0x55).unwrap();
        first.write32(0, reg::CTRL, 1).unwrap();
        first.region_write(CONFIG, 4, &6u16.to_le_bytes()).unwrap();
        first.write32(CONFIG, 0x114, 0x77).unwrap();
        // Half a REGION_WRITE: the header promises 36 bytes, 24 arrive.
        let a = RegionAccess {
            offset: reg::SCRATCH,
            region: 0,
            count: 4,
        };
        let mut msg = raw_header(0x99, Command::RegionWrite as u16, 36, 0, 0);
        msg.extend_from_slice(&a.encode(&[1, 2, 3, 4])[..8]);
        first.send_bytes(&msg, &[]).unwrap();
    } // the client closes its socket here

    let mut next = s.connect();
    assert_eq!(
        next.read32(0, reg::SCRATCH).unwrap(),
        0,
        "registers cleared"
    );
    assert_eq!(next.read32(0, reg::CTRL).unwrap(), 0);
    assert_eq!(cfg16(&mut next, 4), 0, "config space reset");
    assert_eq!(cfg32(&mut next, 0x114), 0);
    // The first client's DMA windows are gone (the device cannot reach
    // them, and the address is free to map again)...
    assert_eq!(copy(&mut next, A, A + 0x1000, 0x10, false), status::ERROR);
    assert_eq!(next.read32(0, reg::ERROR).unwrap(), error::SOURCE_FAULT);
    clear_status(&mut next);
    map_fd(&mut next, A, 0x10000, 0, RW, &ram);
    // ... and so are its eventfds: an interrupting copy signals nothing.
    assert_eq!(copy(&mut next, A, A + 0x1000, 0x10, true), status::DONE);
    assert_eq!(eventfd_now(&ev), None);
    assert_eq!(next.read32(0, reg::ID).unwrap(), ID_VALUE);
}

#[test]
fn a_client_vanishing_during_dma_by_message_does_not_stall_the_next() {
    let s = TestServer::start();
    {
        let mut first = s.connect();
        first.dma_map(A, 0x4000, 0, RW, None).unwrap();
        program_copy(&mut first, A, A + 0x2000, 0x1000, false);
        ring(&mut first);
        // The worker asks for the source; the client leaves instead.
        let m = first.recv().unwrap();
        assert_eq!(m.header.command, Command::DmaRead as u16);
    }
    let start = Instant::now();
    let mut next = s.connect();
    assert_eq!(next.read32(0, reg::STATUS).unwrap(), 0);
    // The worker's pending request fails at disconnect instead of waiting
    // out the server's 10 s DMA timeout.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "the next client waited {:?} for the device reset",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Unmap against a copy in flight

/// Runs a 16 MiB copy and unmaps right after ringing the doorbell.
/// `same_window`: source and destination share one window.
fn unmap_during_copy(same_window: bool) {
    const LEN: usize = 16 << 20;
    let s = TestServer::start();
    let mut c = s.connect();
    let data = {
        let mut v = vec![0u8; LEN];
        let p = pattern(4093, 41);
        for chunk in v.chunks_mut(p.len()) {
            chunk.copy_from_slice(&p[..chunk.len()]);
        }
        v
    };
    for round in 0..3 {
        let (src_fd, dst_fd, src, dst, unmap) = if same_window {
            let ram = memfd(2 * LEN as u64);
            map_fd(&mut c, A << 8, 2 * LEN as u64, 0, RW, &ram);
            let dst = ram.try_clone().unwrap();
            (
                ram,
                dst,
                A << 8,
                (A << 8) + LEN as u64,
                (A << 8, 2 * LEN as u64),
            )
        } else {
            let (a, b) = (memfd(LEN as u64), memfd(LEN as u64));
            map_fd(&mut c, A << 8, LEN as u64, 0, RW, &a);
            map_fd(&mut c, B << 8, LEN as u64, 0, RW, &b);
            (a, b, A << 8, B << 8, (A << 8, LEN as u64))
        };
        file(&src_fd).write_all_at(&data, 0).unwrap();
        program_copy(&mut c, src, dst, LEN as u32, false);
        ring(&mut c);
        // The unmap waits for the copy if it has started; either way it
        // succeeds, and nothing crashes.
        c.dma_unmap(unmap.0, unmap.1)
            .unwrap_or_else(|e| panic!("round {round}: unmap during copy: {e}"));
        let st = wait_idle(&mut c);
        let dst_off = if same_window { LEN as u64 } else { 0 };
        match st {
            status::DONE => {
                let mut out = vec![0u8; LEN];
                file(&dst_fd).read_exact_at(&mut out, dst_off).unwrap();
                assert!(out == data, "round {round}: a completed copy is whole");
            }
            status::ERROR => {
                let e = c.read32(0, reg::ERROR).unwrap();
                assert!(
                    e == error::SOURCE_FAULT || e == error::DEST_FAULT,
                    "round {round}: error code {e}"
                );
                clear_status(&mut c);
            }
            other => panic!("round {round}: status {other:#x}"),
        }
        c.request(
            Command::DmaUnmap,
            &{
                let mut p = vec![0u8; 24];
                p[0..4].copy_from_slice(&24u32.to_le_bytes());
                p[4..8].copy_from_slice(&DMA_UNMAP_ALL.to_le_bytes());
                p
            },
            &[],
        )
        .unwrap();
        assert_eq!(c.read32(0, reg::ID).unwrap(), ID_VALUE);
    }
}

#[test]
fn unmap_waits_for_an_in_flight_copy() {
    unmap_during_copy(false);
}

#[test]
fn unmap_of_a_window_copied_within_does_not_deadlock() {
    unmap_during_copy(true);
}

#[test]
fn mmap_fd_of_dma_map_is_used_zero_copy() {
    // The server maps the client's fd: a store by the device is visible in
    // the client's own mapping of the same memfd at once.
    let s = TestServer::start();
    let mut c = s.connect();
    let ram = memfd(0x4000);
    map_fd(&mut c, A, 0x4000, 0, RW, &ram);
    let view = MmapOptions::new().len(0x4000).map_raw(&file(&ram)).unwrap();
    map_write(&view, 0, b"zero-copy");
    assert_eq!(copy(&mut c, A, A + 0x3000, 9, false), status::DONE);
    assert_eq!(map_read(&view, 0x3000, 9), b"zero-copy");
}

// ---------------------------------------------------------------------------
// A device with an expansion ROM and an I/O BAR

mod rom_device {
    use vfio_user_server::irq::IrqInfo;
    use vfio_user_server::pci::{Bar, ConfigBuilder, ConfigSpace, PciIds};
    use vfio_user_server::{Device, DeviceContext, DeviceError};

    pub const ROM: [u8; 4] = [0x55, 0xaa, 0x04, 0xe9];

    /// BAR0: 32 bytes of I/O space; ROM: 2 KiB starting with a PCI ROM signature.
    pub struct RomDevice {
        ctx: DeviceContext,
        config: ConfigSpace,
    }

    impl RomDevice {
        pub fn new() -> Self {
            let ids = PciIds {
                vendor: 0x1b36,
                device: 0x0005,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
                class: 0xff_00_00,
                revision: 0,
            };
            RomDevice {
                ctx: DeviceContext::new(&IrqInfo::pci(1, 1)),
                config: ConfigBuilder::new(ids)
                    .bar(0, Bar::io(0x20))
                    .bar(6, Bar::rom(0x800))
                    .build()
                    .unwrap(),
            }
        }
    }

    impl Device for RomDevice {
        fn context(&self) -> &DeviceContext {
            &self.ctx
        }
        fn config(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn region_read(
            &mut self,
            region: u32,
            offset: u64,
            data: &mut [u8],
        ) -> Result<(), DeviceError> {
            for (i, b) in data.iter_mut().enumerate() {
                *b = match region {
                    6 => ROM.get(offset as usize + i).copied().unwrap_or(0xff),
                    _ => 0,
                };
            }
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn reset(&mut self) {}
    }
}

#[test]
fn expansion_rom_and_io_bar() {
    let s = TestServer::start_device(rom_device::RomDevice::new());
    let mut c = s.connect();
    let rom = c.region_info(region::ROM).unwrap();
    assert_eq!(
        (rom.size, rom.flags),
        (0x800, REGION_FLAG_READ),
        "ROM is read-only"
    );
    assert!(rom.fd.is_none());
    let io = c.region_info(0).unwrap();
    assert_eq!(io.size, 0x20);
    assert_eq!(
        io.flags,
        REGION_FLAG_READ | REGION_FLAG_WRITE,
        "I/O BARs never mmap"
    );
    assert_eq!(c.region_read(region::ROM, 0, 4).unwrap(), rom_device::ROM);
    // Writing the ROM region fails as on Linux vfio-pci: EINVAL.
    assert_eq!(errno(c.region_write(region::ROM, 0, &[0; 4])), libc::EINVAL);
    assert_eq!(errno(c.region_read(region::ROM, 0x7fe, 4)), libc::EINVAL);
    // ROM BAR sizing: the size mask plus the enable bit.
    c.write32(CONFIG, 0x30, 0xffff_ffff).unwrap();
    assert_eq!(cfg32(&mut c, 0x30), 0xffff_f801);
    // I/O BAR sizing keeps the I/O space indicator.
    c.write32(CONFIG, 0x10, 0xffff_ffff).unwrap();
    assert_eq!(cfg32(&mut c, 0x10), 0xffff_ffe1);
    // No capabilities: the status bit is clear and the pointer is 0.
    assert_eq!(cfg16(&mut c, 6) & 0x10, 0);
    assert_eq!(cfg8(&mut c, 0x34), 0);
}
