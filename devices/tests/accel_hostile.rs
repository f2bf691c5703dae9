//! The hostile-descriptor catalogue: every malformed or malicious
//! descriptor, ring setting and register write completes with an error
//! record or a documented queue error (docs/ACCEL.md), never a crash; the
//! device keeps working afterwards.

mod accel_common;

use accel_common::*;
use std::time::Instant;
use trustdev_devices::accel::desc::{flags, opcode, operand, status, AesParams, Descriptor};
use trustdev_devices::accel::host::{AccelHost, HostQueue, RingSpace};
use trustdev_devices::accel::regs::{ctrl, qerr, qstatus, queue, QUEUE_BASE};
use trustdev_devices::accel::AccelConfig;

const U: RingSpace = RingSpace::Untranslated;
const MEM: usize = 8 << 20;

fn setup() -> (Served, AccelHost, HostQueue) {
    let s = Served::start(AccelConfig::default());
    let mut h = s.host(MEM);
    let q = h.setup_queue(0, 64);
    (s, h, q)
}

/// Runs `d`, returns its completion's status.
fn st(h: &mut AccelHost, q: &mut HostQueue, d: Descriptor) -> u8 {
    h.run(q, d).expect("a completion record").status
}

fn still_works(h: &mut AccelHost, q: &mut HostQueue) {
    let buf = h.alloc(4096, 4096);
    let mut d = desc(opcode::FILL).with(0, buf, 4096);
    d.arg2 = 0x0101_0101_0101_0101;
    assert_eq!(st(h, q, d), status::SUCCESS, "the device still works");
    let mut out = [0u8; 4096];
    h.read(U, buf, &mut out);
    assert!(out.iter().all(|&b| b == 1));
}

#[test]
fn malformed_descriptors_get_error_records() {
    let (s, mut h, mut q) = setup();
    let a = h.alloc(8192, 4096);
    let b = h.alloc(8192, 4096);
    // Opcodes past the last one.
    for op in [opcode::LAST + 1, 0x7f, 0xff] {
        assert_eq!(
            st(&mut h, &mut q, desc(op).with(a, b, 16)),
            status::BAD_OPCODE
        );
    }
    // Unknown flags, reserved fields, PRIV or a PASID value without PASID.
    let mut d = desc(opcode::MEMMOVE).with(a, b, 16);
    d.flags |= 0x80;
    assert_eq!(st(&mut h, &mut q, d), status::BAD_FLAGS);
    let mut d = desc(opcode::MEMMOVE).with(a, b, 16);
    d.rsvd0 = 1;
    assert_eq!(st(&mut h, &mut q, d), status::BAD_FLAGS);
    let mut d = desc(opcode::MEMMOVE).with(a, b, 16);
    d.rsvd1 = u64::MAX;
    assert_eq!(st(&mut h, &mut q, d), status::BAD_FLAGS);
    let mut d = desc(opcode::MEMMOVE).with(a, b, 16);
    d.flags |= flags::PRIV;
    assert_eq!(st(&mut h, &mut q, d), status::BAD_FLAGS);
    let mut d = desc(opcode::MEMMOVE).with(a, b, 16);
    d.pasid = 5;
    assert_eq!(st(&mut h, &mut q, d), status::BAD_FLAGS);
    // Lengths: zero where data is needed, huge, above the crypto limit.
    assert_eq!(
        st(&mut h, &mut q, desc(opcode::MEMMOVE).with(a, b, 0)),
        status::BAD_LENGTH
    );
    assert_eq!(
        st(&mut h, &mut q, desc(opcode::FILL).with(0, b, 0)),
        status::BAD_LENGTH
    );
    for op in [
        opcode::MEMMOVE,
        opcode::COMPARE,
        opcode::CRC32C,
        opcode::SHA256,
    ] {
        let d = desc(op).with(a, b, u32::MAX);
        assert_eq!(st(&mut h, &mut q, d), status::BAD_LENGTH, "{op}");
    }
    let mut d = desc(opcode::AES_GCM_ENCRYPT).with(a, b, (1 << 20) + 1);
    d.arg2 = h.alloc(0x50, 64);
    assert_eq!(st(&mut h, &mut q, d), status::BAD_LENGTH);
    // An AAD length beyond the limit, a non-zero reserved parameter word.
    let params = h.alloc(0x50, 64);
    let mut p = AesParams {
        key: [1; 32],
        nonce: [2; 12],
        aad_len: u32::MAX,
        aad_addr: a,
        rsvd: 0,
        tag: [0; 16],
    };
    h.write(U, params, &p.encode());
    let mut d = desc(opcode::AES_GCM_ENCRYPT).with(a, b, 64);
    d.arg2 = params;
    assert_eq!(st(&mut h, &mut q, d), status::BAD_LENGTH);
    p.aad_len = 0;
    p.rsvd = 1;
    h.write(U, params, &p.encode());
    assert_eq!(st(&mut h, &mut q, d), status::BAD_FLAGS);
    // Zero-length CRC and SHA-256 are valid (empty input).
    let c = h.run(&mut q, desc(opcode::CRC32C).with(a, 0, 0)).unwrap();
    assert_eq!((c.status, c.result), (status::SUCCESS, 0));
    let (descs, errors, _, _) = h.counters();
    assert_eq!(descs - errors, 1);
    still_works(&mut h, &mut q);
    assert!(s.alive());
}

#[test]
fn bad_addresses_fault_with_the_operand_and_progress() {
    let (_s, mut h, mut q) = setup();
    let a = h.alloc(8192, 4096);
    let end = IOVA + MEM as u64;
    // Source outside client memory.
    let c = h
        .run(&mut q, desc(opcode::MEMMOVE).with(0x10, a, 64))
        .unwrap();
    assert_eq!(
        (c.status, c.fault_operand(), c.fault_write()),
        (status::ADDRESS_FAULT, operand::SRC, false)
    );
    // Destination running off the end after 4096 bytes.
    let c = h
        .run(&mut q, desc(opcode::MEMMOVE).with(a, end - 4096, 8192))
        .unwrap();
    assert_eq!(
        (c.status, c.fault_operand(), c.bytes_completed, c.fault_addr),
        (status::ADDRESS_FAULT, operand::DST, 4096, end)
    );
    assert!(c.fault_write());
    // Ranges that wrap the 64-bit space.
    let c = h
        .run(&mut q, desc(opcode::MEMMOVE).with(u64::MAX - 8, a, 64))
        .unwrap();
    assert_eq!(
        (c.status, c.fault_addr),
        (status::ADDRESS_FAULT, u64::MAX - 8)
    );
    let mut d = desc(opcode::FILL).with(0, u64::MAX, 2);
    d.arg2 = 1;
    assert_eq!(st(&mut h, &mut q, d), status::ADDRESS_FAULT);
    // AES parameter block and AAD outside memory.
    let mut d = desc(opcode::AES_GCM_ENCRYPT).with(a, a + 4096, 16);
    d.arg2 = 0x40;
    let c = h.run(&mut q, d).unwrap();
    assert_eq!(
        (c.status, c.fault_operand()),
        (status::ADDRESS_FAULT, operand::PARAMS)
    );
    let params = h.alloc(0x50, 64);
    let p = AesParams {
        key: [1; 32],
        nonce: [2; 12],
        aad_len: 16,
        aad_addr: 0x80,
        rsvd: 0,
        tag: [0; 16],
    };
    h.write(U, params, &p.encode());
    d.arg2 = params;
    let c = h.run(&mut q, d).unwrap();
    assert_eq!(
        (c.status, c.fault_operand()),
        (status::ADDRESS_FAULT, operand::AAD)
    );
    // SHA-256 digest to nowhere.
    let c = h
        .run(&mut q, desc(opcode::SHA256).with(a, 0x100, 64))
        .unwrap();
    assert_eq!(
        (c.status, c.fault_operand()),
        (status::ADDRESS_FAULT, operand::DST)
    );
    still_works(&mut h, &mut q);
}

#[test]
fn overlapping_buffers() {
    let (_s, mut h, mut q) = setup();
    let a = h.alloc(16384, 4096);
    let data = pattern(10000, 5);
    h.write(U, a, &data);
    // memmove semantics for overlapping memmoves, in both directions.
    assert_eq!(
        st(&mut h, &mut q, desc(opcode::MEMMOVE).with(a, a + 1, 10000)),
        status::SUCCESS
    );
    let mut out = vec![0u8; 10000];
    h.read(U, a + 1, &mut out);
    assert_eq!(out, data);
    assert_eq!(
        st(&mut h, &mut q, desc(opcode::MEMMOVE).with(a + 1, a, 10000)),
        status::SUCCESS
    );
    h.read(U, a, &mut out);
    assert_eq!(out, data);
    // The completion record inside the destination: ambiguous, refused.
    let mut d = desc(opcode::MEMMOVE).with(a, a + 8192, 4096);
    d.completion = a + 8192 + 64;
    let c = h.run(&mut q, d).unwrap();
    assert_eq!(c.status, status::OVERLAP);
    let mut d = desc(opcode::SHA256).with(a, a + 8192, 64);
    d.completion = a + 8192;
    assert_eq!(h.run(&mut q, d).unwrap().status, status::OVERLAP);
    // AES output over its own parameter block (the tag goes there).
    let mut d = desc(opcode::AES_GCM_ENCRYPT).with(a, a + 4096, 256);
    d.arg2 = a + 4096 + 128;
    assert_eq!(st(&mut h, &mut q, d), status::OVERLAP);
    // In-place AES (identical source and destination) is fine.
    let params = h.alloc(0x50, 64);
    let p = AesParams {
        key: [3; 32],
        nonce: [4; 12],
        aad_len: 0,
        aad_addr: 0,
        rsvd: 0,
        tag: [0; 16],
    };
    h.write(U, params, &p.encode());
    let mut d = desc(opcode::AES_GCM_ENCRYPT).with(a, a, 4096);
    d.arg2 = params;
    assert_eq!(st(&mut h, &mut q, d), status::SUCCESS);
    d.opcode = opcode::AES_GCM_DECRYPT;
    assert_eq!(st(&mut h, &mut q, d), status::SUCCESS);
    h.read(U, a, &mut out);
    assert_eq!(out[..4096], data[..4096], "decrypted back in place");
}

fn wait_status(h: &mut AccelHost, q: usize, mask: u32) -> u32 {
    let t0 = Instant::now();
    loop {
        let s = h.qreg(q, queue::STATUS);
        if s & mask != 0 {
            return s;
        }
        assert!(t0.elapsed() < PATIENCE, "queue {q} status {s:#x}");
        std::thread::yield_now();
    }
}

fn reset_queue(h: &mut AccelHost, q: usize) {
    h.set_qreg(q, queue::CTRL, ctrl::RESET);
    let t0 = Instant::now();
    while h.qreg(q, queue::CTRL) & ctrl::RESET != 0 {
        assert!(t0.elapsed() < PATIENCE);
    }
}

#[test]
fn ring_pointers_and_configuration_out_of_range() {
    let (s, mut h, _) = setup();
    // TAIL beyond the ring: queue error, halted, no descriptor run.
    h.set_qreg(0, queue::TAIL, 64);
    let st0 = wait_status(&mut h, 0, qstatus::HALTED);
    assert_eq!(st0 >> qstatus::ERR_SHIFT & 0xff, qerr::TAIL_RANGE);
    assert_eq!(h.qreg(0, queue::ERR_INDEX), 64);
    // Enabling a halted queue does nothing until it is reset.
    h.set_qreg(0, queue::CTRL, ctrl::ENABLE);
    assert_ne!(h.qreg(0, queue::STATUS) & qstatus::HALTED, 0);
    reset_queue(&mut h, 0);
    // Bad ring configurations are refused at enable.
    for (ring, size) in [
        (IOVA + 8, 64),
        (IOVA, 3),
        (IOVA, 0),
        (IOVA, 1 << 16),
        (IOVA, 1),
    ] {
        reset_queue(&mut h, 0);
        h.setup_queue_at(0, size, U, ring, IOVA + 0x10000);
        let s = wait_status(&mut h, 0, qstatus::HALTED);
        assert_eq!(
            s >> qstatus::ERR_SHIFT & 0xff,
            qerr::BAD_RING,
            "{ring:#x} x{size}"
        );
        assert_eq!(s & qstatus::ENABLED, 0);
    }
    // A ring outside client memory: fetch fault, halted.
    reset_queue(&mut h, 0);
    h.setup_queue_at(0, 8, U, 0x4000, IOVA);
    h.set_qreg(0, queue::TAIL, 1);
    let s1 = wait_status(&mut h, 0, qstatus::HALTED);
    assert_eq!(s1 >> qstatus::ERR_SHIFT & 0xff, qerr::FETCH_FAULT);
    assert_eq!(h.qreg(0, queue::ERR_ADDR), 0x4000);
    // Ring registers cannot move under an enabled queue.
    reset_queue(&mut h, 0);
    let mut q = h.setup_queue(0, 8);
    h.set_qreg(0, queue::RING_LO, 0x1000);
    h.set_qreg(0, queue::RING_SIZE, 1 << 15);
    assert_eq!(h.qreg(0, queue::RING_SIZE), 8);
    still_works(&mut h, &mut q);
    // Register blocks of queues that do not exist, and garbage writes.
    for off in (0..0x4000u64).step_by(4) {
        if off >= QUEUE_BASE || off == 0x18 {
            continue;
        }
        h.set_reg(off, 0xffff_ffff);
    }
    let _ = h.client.region_write(0, 0x3ffc, &[1, 2, 3, 4]);
    assert!(
        h.client.region_write(0, 0x3ffe, &[1, 2, 3, 4]).is_err(),
        "beyond BAR0"
    );
    assert!(h.client.region_read(0, 0, 16).is_err(), "16-byte access");
    still_works(&mut h, &mut q);
    assert!(s.alive());
}

#[test]
fn completion_records_that_cannot_be_written() {
    let (_s, mut h, mut q) = setup();
    let a = h.alloc(4096, 4096);
    // Misaligned, and outside memory: logged as queue errors, queue runs on.
    for bad in [a + 8, 0x20] {
        let mut d = nop();
        d.completion = bad;
        h.push(&mut q, d);
    }
    let ok = h.push(&mut q, nop());
    h.ring(&q);
    let c = h
        .wait_record(U, q.record(ok), PATIENCE)
        .expect("the queue carries on");
    assert_eq!(c.status, status::SUCCESS);
    assert_eq!(h.qreg(0, queue::CR_FAULTS), 2);
    let s = h.qreg(0, queue::STATUS);
    assert_ne!(s & qstatus::CR_FAULT, 0);
    assert_eq!(s & qstatus::HALTED, 0);
    assert_eq!(h.qreg(0, queue::ERR_ADDR), 0x20);
    h.set_qreg(0, queue::STATUS, qstatus::CR_FAULT);
    assert_eq!(h.qreg(0, queue::STATUS) & qstatus::CR_FAULT, 0, "W1C");
}

#[test]
fn queue_reset_mid_flight_and_device_reset_while_busy() {
    let (s, mut h, mut q) = setup();
    let a = h.alloc(2 << 20, 4096);
    let b = h.alloc(2 << 20, 4096);
    for _ in 0..63 {
        h.push(&mut q, desc(opcode::MEMMOVE).with(a, b, 2 << 20));
    }
    h.ring(&q);
    reset_queue(&mut h, 0);
    let done = h.qreg(0, 0x30);
    assert_eq!(done, 0, "counters cleared by the reset");
    assert_eq!(h.qreg(0, queue::HEAD), 0);
    // Whatever completed before the reset did so fully or was aborted.
    for slot in 0..63 {
        if let Some(c) = h.completion(U, q.record(slot)) {
            assert!(
                matches!(c.status, status::SUCCESS | status::ABORTED),
                "{c:?}"
            );
        }
    }
    // Device reset with a full queue.
    let mut q = h.setup_queue(0, 64);
    for _ in 0..63 {
        h.push(&mut q, desc(opcode::MEMMOVE).with(a, b, 2 << 20));
    }
    h.ring(&q);
    h.client.reset().unwrap();
    assert_eq!(h.qreg(0, queue::CTRL), 0);
    let mut q = h.setup_queue(0, 64);
    still_works(&mut h, &mut q);
    // Disconnect with work queued: the server resets and takes a new client.
    for _ in 0..63 {
        h.push(&mut q, desc(opcode::MEMMOVE).with(a, b, 2 << 20));
    }
    h.ring(&q);
    drop(h);
    let mut h2 = s.host(MEM);
    let mut q2 = h2.setup_queue(0, 8);
    still_works(&mut h2, &mut q2);
    assert!(s.alive());
}

#[test]
fn random_descriptors_never_crash() {
    let (s, mut h, mut q) = setup();
    let arena = h.alloc(1 << 20, 4096);
    let bytes = pattern(64 * 4000, 99);
    let mut n = 0;
    for chunk in bytes.chunks(64) {
        let mut raw = [0u8; 64];
        raw.copy_from_slice(chunk);
        let mut d = Descriptor::decode(&raw);
        // Keep some descriptors plausible so operations actually run.
        match n % 4 {
            0 => {
                d.opcode %= opcode::LAST + 2;
                d.flags &= flags::ALL & !(flags::INTERRUPT);
            }
            1 => {
                d.src = arena + (d.src % (1 << 20));
                d.dst = arena + (d.dst % (1 << 20));
                d.len %= 1 << 16;
            }
            _ => {}
        }
        d.flags |= flags::COMPLETION;
        d.completion = 0;
        let c = h.run(&mut q, d).expect("every descriptor completes");
        assert_ne!(c.status, status::PENDING);
        n += 1;
    }
    assert_eq!(n, 4000);
    still_works(&mut h, &mut q);
    assert!(s.alive());
}

#[test]
fn pasids_that_cannot_be_used() {
    let (s, mut h, mut q) = setup();
    let a = h.alloc(4096, 4096);
    let pasid_desc = |pasid: u32, extra: u8| Descriptor {
        opcode: opcode::CRC32C,
        flags: flags::COMPLETION | flags::PASID | extra,
        pasid,
        src: a,
        len: 64,
        ..Descriptor::default()
    };
    // The PASID capability was never enabled by the host.
    assert_eq!(st(&mut h, &mut q, pasid_desc(1, 0)), status::PASID_DISABLED);
    // Beyond 20 bits (and beyond the advertised width).
    assert_eq!(
        st(&mut h, &mut q, pasid_desc(1 << 20, 0)),
        status::PASID_INVALID
    );
    assert_eq!(
        st(&mut h, &mut q, pasid_desc(u32::MAX, 0)),
        status::PASID_INVALID
    );
    // Enabled, but this client offers no PASID path (QEMU 11.1's case);
    // privileged mode without Privileged Mode Enable; blocking on faults
    // changes nothing without a path.
    let cap = h.ext_cap(vfio_user_server::pci::ext_cap_id::PASID).unwrap();
    h.set_config(cap + 6, &1u16.to_le_bytes()).unwrap();
    assert_eq!(st(&mut h, &mut q, pasid_desc(1, 0)), status::NO_PASID_PATH);
    assert_eq!(
        st(&mut h, &mut q, pasid_desc(1, flags::PRIV)),
        status::PASID_DISABLED
    );
    assert_eq!(
        st(&mut h, &mut q, pasid_desc(1, flags::BLOCK_ON_FAULT)),
        status::NO_PASID_PATH
    );
    // A ring in a PASID's space that cannot be reached halts that queue only.
    h.setup_queue_at(1, 8, RingSpace::Pasid(3), 0x1000, 0x2000);
    h.set_qreg(1, queue::TAIL, 1);
    let st1 = wait_status(&mut h, 1, qstatus::HALTED);
    assert_eq!(st1 >> qstatus::ERR_SHIFT & 0xff, qerr::RING_PASID);
    still_works(&mut h, &mut q);
    assert!(s.alive());
}
