//! Queue mechanics: doorbells (invalid, strided, shadow, polled), wrapping
//! and full completion queues, interrupt coalescing, Abort.

use super::*;

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
    super::super::host::wait_csts(&mut d.bar, csts::RDY, 0).unwrap();
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
    a.doorbells = super::super::options::DoorbellMode::Poll;
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
