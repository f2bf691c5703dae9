//! PASID-tagged DMA end to end on the host: the accelerator served over
//! vfio-user, the project's client speaking the PASID extension with an
//! IOMMU model (per-PASID page tables in client memory). Process-virtual-
//! address memmoves, ATS translation and caching, a page request for an
//! unmapped page, invalidation, a PASID torn down while work is queued, a
//! queue reset with a page request outstanding, PASID DMA by message, and
//! the errors of PASIDs that cannot be used.

mod accel_common;

use accel_common::*;
use std::time::{Duration, Instant};
use trustdev_devices::accel::desc::{flags, opcode, status, Descriptor};
use trustdev_devices::accel::host::{AccelHost, RingSpace};
use trustdev_devices::accel::regs::{ctrl, global, queue};
use trustdev_devices::accel::AccelConfig;
use vfio_user_server::iommu::{IommuModel, PTE_W};
use vfio_user_server::pci::ext_cap_id;
use vfio_user_server::protocol::pasid::{
    InvalidateRequest, InvalidateScope, PageResponse, PageResponseCode,
};

const PAGE: u64 = 4096;
/// Where the "process" keeps its ring and completion records.
const RING_VA: u64 = 0x5555_0000_0000;
const SRC_VA: u64 = 0x7f00_1234_0000;
const DST_VA: u64 = 0x7f20_0000_0000;

/// Maps `len` bytes at `va` for `pasid` onto physical pages allocated in a
/// scattered order (every other page), so that contiguous virtual ranges
/// are not contiguous physically.
fn map_scattered(h: &mut AccelHost, pasid: u32, va: u64, len: u64) {
    let pages = len.div_ceil(PAGE);
    let m = h.iommu();
    let mut phys = Vec::new();
    for _ in 0..pages * 2 {
        phys.push(m.alloc_page().unwrap());
    }
    for i in 0..pages {
        // Pages 1, 0, 3, 2, ... of the odd half: neither order nor adjacency.
        let p = phys[(2 * (i ^ 1) + 1).min(phys.len() as u64 - 1) as usize];
        m.map(pasid, va + i * PAGE, p, PTE_W).unwrap();
    }
}

/// A driver with PASID, ATS and PRI enabled and `pasid` bound, its queue 0
/// ring and records in the PASID's address space.
fn sva_host(s: &Served, pasid: u32) -> (AccelHost, trustdev_devices::accel::host::HostQueue) {
    let mut h = s.pasid_host(1 << 20, 64 << 20);
    h.enable_translation(32).unwrap();
    // The device mirrors what the host enabled: PASID (exec, priv), ATS
    // (STU 4 KiB), PRI.
    assert_eq!(h.reg(global::XLAT), 0x0001_8007);
    h.iommu().bind(pasid).unwrap();
    map_scattered(&mut h, pasid, RING_VA, 2 * PAGE);
    let q = h.setup_queue_at(0, 32, RingSpace::Pasid(pasid), RING_VA, RING_VA + PAGE);
    (h, q)
}

fn pasid_desc(op: u8, pasid: u32, src: u64, dst: u64, len: u32) -> Descriptor {
    Descriptor {
        opcode: op,
        flags: flags::COMPLETION | flags::PASID,
        pasid,
        src,
        dst,
        len,
        ..Descriptor::default()
    }
}

#[test]
fn process_virtual_address_memmove() {
    let s = Served::start(AccelConfig::default());
    let (mut h, mut q) = sva_host(&s, 5);
    let len = 64 * 1024 + 100;
    map_scattered(&mut h, 5, SRC_VA, len as u64 + PAGE);
    map_scattered(&mut h, 5, DST_VA, len as u64 + PAGE);
    let data = pattern(len, 7);
    h.iommu().write_va(5, SRC_VA + 10, &data).unwrap();
    let c = h
        .run(
            &mut q,
            pasid_desc(opcode::MEMMOVE, 5, SRC_VA + 10, DST_VA + 3, len as u32),
        )
        .unwrap();
    assert_eq!(c.status, status::SUCCESS, "{c:?}");
    let mut out = vec![0u8; len];
    h.iommu().read_va(5, DST_VA + 3, &mut out).unwrap();
    assert_eq!(out, data, "process VA memmove");
    let served = h.client.pasid().unwrap().translations_served;
    assert!(served > 0, "the device translated through the client");
    // A second memmove over the same pages is served from the ATC.
    let c = h
        .run(
            &mut q,
            pasid_desc(opcode::CRC32C, 5, DST_VA + 3, 0, len as u32),
        )
        .unwrap();
    assert_eq!(c.result, u64::from(crc32c::crc32c(&data)));
    let again = h.client.pasid().unwrap().translations_served;
    assert_eq!(again, served, "no new translation requests: ATC hits");
}

#[test]
fn page_request_for_an_unmapped_page() {
    let s = Served::start(AccelConfig::default());
    let (mut h, mut q) = sva_host(&s, 9);
    map_scattered(&mut h, 9, SRC_VA, 3 * PAGE);
    let data = pattern(3 * PAGE as usize, 3);
    h.iommu().write_va(9, SRC_VA, &data).unwrap();
    // The destination's middle page is not mapped.
    map_scattered(&mut h, 9, DST_VA, PAGE);
    map_scattered(&mut h, 9, DST_VA + 2 * PAGE, PAGE);

    // Without BLOCK_ON_FAULT: a page fault at the hole, after one page.
    let c = h
        .run(
            &mut q,
            pasid_desc(opcode::MEMMOVE, 9, SRC_VA, DST_VA, 3 * PAGE as u32),
        )
        .unwrap();
    assert_eq!(c.status, status::PAGE_FAULT, "{c:?}");
    assert_eq!(c.fault_addr, DST_VA + PAGE);
    assert_eq!(c.bytes_completed as u64, PAGE);
    assert!(c.fault_write());
    assert!(h.client.pasid().unwrap().page_requests.is_empty());

    // With BLOCK_ON_FAULT, and the client's fault handler mapping the page
    // (as an IOMMU driver's page-fault handler would): success.
    h.client.pasid().unwrap().fault_handler = Some(Box::new(|m: &mut IommuModel, pr| {
        let pa = m.alloc_page().unwrap();
        m.map(pr.tag.unwrap().pasid, pr.address, pa, PTE_W).unwrap();
        PageResponseCode::Success
    }));
    let mut d = pasid_desc(opcode::MEMMOVE, 9, SRC_VA, DST_VA, 3 * PAGE as u32);
    d.flags |= flags::BLOCK_ON_FAULT;
    let c = h.run(&mut q, d).unwrap();
    assert_eq!(c.status, status::SUCCESS, "{c:?}");
    let mut out = vec![0u8; data.len()];
    h.iommu().read_va(9, DST_VA, &mut out).unwrap();
    assert_eq!(out, data);
    let (_, _, _, page_requests) = h.counters();
    assert_eq!(page_requests, 1, "one page request for the one hole");

    // A page the handler refuses: Invalid Request -> page fault.
    h.client.pasid().unwrap().fault_handler = Some(Box::new(|_: &mut IommuModel, _| {
        PageResponseCode::InvalidRequest
    }));
    let mut d = pasid_desc(opcode::FILL, 9, 0, DST_VA + 8 * PAGE, 16);
    d.flags |= flags::BLOCK_ON_FAULT;
    let c = h.run(&mut q, d).unwrap();
    assert_eq!(
        (c.status, c.fault_addr),
        (status::PAGE_FAULT, DST_VA + 8 * PAGE)
    );
    assert!(
        h.client.detached_errors.is_empty(),
        "page responses accepted"
    );
}

#[test]
fn invalidation_makes_the_device_see_the_new_mapping() {
    let s = Served::start(AccelConfig::default());
    let (mut h, mut q) = sva_host(&s, 3);
    map_scattered(&mut h, 3, SRC_VA, PAGE);
    map_scattered(&mut h, 3, DST_VA, PAGE);
    h.iommu().write_va(3, SRC_VA, &[0x11; 64]).unwrap();
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 3, SRC_VA, 0, 64))
        .unwrap();
    assert_eq!(c.result, u64::from(crc32c::crc32c(&[0x11; 64])));
    // The process remaps SRC_VA to another page (new content)...
    let fresh = h.iommu().alloc_page().unwrap();
    h.iommu().write_pa(fresh, &[0x22; 64]).unwrap();
    h.iommu().map(3, SRC_VA, fresh, PTE_W).unwrap();
    // ...without invalidating: the device still uses its cached translation.
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 3, SRC_VA, 0, 64))
        .unwrap();
    assert_eq!(
        c.result,
        u64::from(crc32c::crc32c(&[0x11; 64])),
        "stale ATC entry in use, as on hardware"
    );
    // ATS invalidation of the page: the device translates again.
    h.client
        .ats_invalidate(&InvalidateRequest {
            scope: InvalidateScope::Pasid(Some(3)),
            range: Some((SRC_VA, PAGE)),
        })
        .unwrap();
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 3, SRC_VA, 0, 64))
        .unwrap();
    assert_eq!(c.result, u64::from(crc32c::crc32c(&[0x22; 64])));
}

/// Serves the device's requests until a page request arrives.
fn await_page_request(h: &mut AccelHost) -> vfio_user_server::protocol::pasid::PageRequest {
    let t0 = Instant::now();
    loop {
        h.client.serve_requests(Duration::from_millis(5)).unwrap();
        if let Some(pr) = h.client.pasid().unwrap().page_requests.pop() {
            return pr;
        }
        assert!(t0.elapsed() < PATIENCE, "no page request");
    }
}

#[test]
fn pasid_torn_down_while_work_is_queued() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.pasid_host(1 << 20, 64 << 20);
    h.enable_translation(32).unwrap();
    h.iommu().bind(7).unwrap();
    h.iommu().bind(8).unwrap();
    // Ring in untranslated memory: completion records outlive the PASID.
    let mut q = h.setup_queue(0, 16);
    map_scattered(&mut h, 7, SRC_VA, PAGE);
    map_scattered(&mut h, 8, SRC_VA, PAGE);
    h.iommu().write_va(8, SRC_VA, &[0x33; 256]).unwrap();
    // First descriptor blocks on a fault (no fault handler: the page
    // request stays pending); three more PASID 7 descriptors queue behind
    // it, then one for PASID 8.
    let mut first = pasid_desc(opcode::FILL, 7, 0, DST_VA, 256);
    first.flags |= flags::BLOCK_ON_FAULT;
    let mut slots = vec![h.push(&mut q, first)];
    for _ in 0..3 {
        slots.push(h.push(&mut q, pasid_desc(opcode::CRC32C, 7, SRC_VA, 0, 256)));
    }
    slots.push(h.push(&mut q, pasid_desc(opcode::CRC32C, 8, SRC_VA, 0, 256)));
    h.ring(&q);
    let pr = await_page_request(&mut h);
    assert_eq!((pr.tag.unwrap().pasid, pr.address), (7, DST_VA));
    // Unbind PASID 7 as an IOMMU driver does: drop the address space,
    // invalidate the device's translations, answer its pending fault.
    assert!(h.iommu().unbind(7));
    h.client
        .ats_invalidate(&InvalidateRequest {
            scope: InvalidateScope::Pasid(Some(7)),
            range: None,
        })
        .unwrap();
    h.client
        .page_response(&PageResponse {
            pasid: Some(7),
            group: pr.group,
            code: PageResponseCode::InvalidRequest,
        })
        .unwrap();
    let rec: Vec<_> = slots
        .iter()
        .map(|&s| {
            h.wait_record(RingSpace::Untranslated, q.record(s), PATIENCE)
                .unwrap()
        })
        .collect();
    assert_eq!(rec[0].status, status::PAGE_FAULT, "{:?}", rec[0]);
    for r in &rec[1..4] {
        assert_eq!(r.status, status::PASID_INVALID, "{r:?}");
    }
    assert_eq!(rec[4].status, status::SUCCESS, "the queue carries on");
    assert_eq!(rec[4].result, u64::from(crc32c::crc32c(&[0x33; 256])));
    assert_eq!(h.qreg(0, queue::STATUS) & 0x2, 0, "not halted");
}

#[test]
fn queue_reset_with_a_page_request_outstanding() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.pasid_host(1 << 20, 16 << 20);
    h.enable_translation(4).unwrap();
    h.iommu().bind(2).unwrap();
    let mut q = h.setup_queue(0, 8);
    let mut d = pasid_desc(opcode::FILL, 2, 0, DST_VA, 64);
    d.flags |= flags::BLOCK_ON_FAULT;
    let slot = h.push(&mut q, d);
    h.ring(&q);
    let pr = await_page_request(&mut h);
    h.set_qreg(0, queue::CTRL, ctrl::RESET);
    let c = h
        .wait_record(RingSpace::Untranslated, q.record(slot), PATIENCE)
        .unwrap();
    assert_eq!(c.status, status::ABORTED);
    let t0 = Instant::now();
    while h.qreg(0, queue::CTRL) & ctrl::RESET != 0 {
        assert!(t0.elapsed() < PATIENCE);
    }
    // The late response matches no outstanding group: PRI Status UPRGI.
    h.client
        .page_response(&PageResponse {
            pasid: Some(2),
            group: pr.group,
            code: PageResponseCode::Success,
        })
        .unwrap();
    let pri = h.ext_cap(ext_cap_id::PRI).unwrap();
    let st = h.config32(pri + 4) >> 16;
    assert_ne!(st & 0x2, 0, "Unexpected Page Request Group Index");
    assert_eq!(st & 0x1, 0, "no Response Failure");
    // The credit came back: the queue works again with the same allocation.
    let mut q = h.setup_queue(0, 8);
    h.client.pasid().unwrap().fault_handler = Some(Box::new(|m: &mut IommuModel, pr| {
        let pa = m.alloc_page().unwrap();
        m.map(pr.tag.unwrap().pasid, pr.address, pa, PTE_W).unwrap();
        PageResponseCode::Success
    }));
    for i in 0..8 {
        let mut d = pasid_desc(opcode::FILL, 2, 0, DST_VA + (i + 1) * PAGE, 64);
        d.flags |= flags::BLOCK_ON_FAULT;
        assert_eq!(h.run(&mut q, d).unwrap().status, status::SUCCESS);
    }
}

#[test]
fn pasid_dma_by_message_without_ats() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.pasid_host(1 << 20, 16 << 20);
    // PASID enabled, ATS left disabled: PASID_DMA_READ/WRITE messages.
    let pasid = h.ext_cap(ext_cap_id::PASID).unwrap();
    h.set_config(pasid + 6, &1u16.to_le_bytes()).unwrap();
    h.iommu().bind(4).unwrap();
    map_scattered(&mut h, 4, SRC_VA, 2 * PAGE);
    map_scattered(&mut h, 4, DST_VA, 2 * PAGE);
    let data = pattern(6000, 4);
    h.iommu().write_va(4, SRC_VA + 1, &data).unwrap();
    let mut q = h.setup_queue(0, 8);
    let c = h
        .run(
            &mut q,
            pasid_desc(opcode::MEMMOVE, 4, SRC_VA + 1, DST_VA + 2, 6000),
        )
        .unwrap();
    assert_eq!(c.status, status::SUCCESS, "{c:?}");
    let mut out = vec![0u8; 6000];
    h.iommu().read_va(4, DST_VA + 2, &mut out).unwrap();
    assert_eq!(out, data);
    let p = h.client.pasid().unwrap();
    assert!(p.pasid_dma_served >= 2 && p.translations_served == 0);
    // A hole is a page fault (EFAULT from the client).
    let c = h
        .run(
            &mut q,
            pasid_desc(opcode::CRC32C, 4, SRC_VA, 0, 3 * PAGE as u32),
        )
        .unwrap();
    assert_eq!(c.status, status::PAGE_FAULT);
}

#[test]
fn unusable_pasids_complete_with_errors() {
    let s = Served::start(AccelConfig::default());
    // A client that does not speak the extension (QEMU 11.1's view).
    let mut plain = s.host(1 << 20);
    let mut q = plain.setup_queue(0, 8);
    let c = plain
        .run(&mut q, pasid_desc(opcode::CRC32C, 1, 0x1000, 0, 16))
        .unwrap();
    assert_eq!(c.status, status::PASID_DISABLED, "PASID cap not enabled");
    let pasid = plain.ext_cap(ext_cap_id::PASID).unwrap();
    plain.set_config(pasid + 6, &1u16.to_le_bytes()).unwrap();
    let c = plain
        .run(&mut q, pasid_desc(opcode::CRC32C, 1, 0x1000, 0, 16))
        .unwrap();
    assert_eq!(c.status, status::NO_PASID_PATH);
    let mut d = pasid_desc(opcode::CRC32C, 1, 0x1000, 0, 16);
    d.flags |= flags::PRIV;
    plain.set_config(pasid + 6, &1u16.to_le_bytes()).unwrap();
    assert_eq!(plain.run(&mut q, d).unwrap().status, status::PASID_DISABLED);
    assert_eq!(
        plain.reg(global::XLAT) & 0x7,
        1,
        "the device mirrors PASID control"
    );
    drop(plain);

    let (mut h, mut q) = sva_host(&s, 1);
    // Never bound on the client: PASID invalid.
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 77, SRC_VA, 0, 16))
        .unwrap();
    assert_eq!(c.status, status::PASID_INVALID);
    // Beyond 20 bits.
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 1 << 20, SRC_VA, 0, 16))
        .unwrap();
    assert_eq!(c.status, status::PASID_INVALID);
    // A ring whose PASID the client does not know halts the queue.
    h.setup_queue_at(1, 8, RingSpace::Pasid(99), RING_VA, RING_VA + PAGE);
    h.set_qreg(1, queue::TAIL, 1);
    let t0 = Instant::now();
    while h.qreg(1, queue::STATUS) & 0x2 == 0 {
        h.client.serve_requests(Duration::from_millis(2)).unwrap();
        assert!(t0.elapsed() < PATIENCE, "queue 1 never halted");
    }
    assert_eq!(
        (h.qreg(1, queue::STATUS) >> 8) & 0xff,
        4,
        "ring PASID error"
    );
    assert!(s.alive());
}

#[test]
fn translations_outside_the_translated_space_fault() {
    let s = Served::start(AccelConfig::default());
    let (mut h, mut q) = sva_host(&s, 6);
    // The client withdraws all but the first 4 MiB of its physical memory
    // from the translated space, then answers translations pointing beyond.
    let (base, size) = (h.iommu().base(), h.iommu().size());
    h.client.translated_dma_unmap(base, size).unwrap();
    let fd = h.iommu().fd().try_clone_to_owned().unwrap();
    h.client
        .translated_dma_map(
            base,
            4 << 20,
            0,
            trustdev_devices::accel::host::RW,
            Some(std::os::fd::AsFd::as_fd(&fd)),
        )
        .unwrap();
    let mut low = Vec::new();
    let far = loop {
        let pa = h.iommu().alloc_page().unwrap();
        if pa >= base + (4 << 20) {
            break pa;
        }
        low.push(pa);
    };
    h.iommu().map(6, SRC_VA, far, PTE_W).unwrap();
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 6, SRC_VA + 8, 0, 64))
        .unwrap();
    assert_eq!(c.status, status::ADDRESS_FAULT, "{c:?}");
    assert_eq!(c.fault_addr, SRC_VA + 8);
    // The queue and device carry on with memory inside the window.
    let near = low.pop().expect("pages below 4 MiB");
    h.iommu().map(6, DST_VA, near, PTE_W).unwrap();
    h.iommu().write_va(6, DST_VA, &[7; 64]).unwrap();
    let c = h
        .run(&mut q, pasid_desc(opcode::CRC32C, 6, DST_VA, 0, 64))
        .unwrap();
    assert_eq!(c.result, u64::from(crc32c::crc32c(&[7; 64])));
    assert!(s.alive());
}
