//! The accelerator's operations from a vfio-user client (the project's own
//! driver, untranslated memory): every opcode verified against a software
//! reference, MSI-X completion interrupts, polling, queue/device reset and
//! the capability chain.

mod accel_common;

use accel_common::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Digest;
use std::os::fd::AsRawFd;
use trustdev_devices::accel::desc::{flags, opcode, status, AesParams, AES_TAG_OFFSET};
use trustdev_devices::accel::host::RingSpace;
use trustdev_devices::accel::regs::{ctrl, global, queue, ID_VALUE};
use trustdev_devices::accel::AccelConfig;
use vfio_user_server::pci::ext_cap_id;
use vfio_user_server::protocol::{irq_index, IrqAction, IrqData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const U: RingSpace = RingSpace::Untranslated;

#[test]
fn identity_and_capabilities() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.host(1 << 20);
    assert_eq!(h.reg(global::ID), ID_VALUE);
    assert_eq!(h.reg(global::CAP) & 0xff, 8, "eight queues");
    assert_eq!(h.reg(global::OPCAP), 0xff, "opcodes 0-7");
    // BAR0: 32-bit non-prefetchable (type bits 0).
    h.set_config(0x10, &u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(h.config32(0x10), 0xffff_c000);
    for id in [
        ext_cap_id::DSN,
        ext_cap_id::ATS,
        ext_cap_id::PRI,
        ext_cap_id::PASID,
    ] {
        assert!(h.ext_cap(id).is_some(), "capability {id:#x}");
    }
    // DEVCAP2: End-End TLP Prefix supported (needed for PASID).
    let pcie = {
        let mut p = h.config32(0x34) as u64 & 0xfc;
        loop {
            let v = h.config32(p);
            if v & 0xff == 0x10 {
                break p;
            }
            p = u64::from(v >> 8) & 0xfc;
        }
    };
    assert_ne!(h.config32(pcie + 0x24) & (1 << 21), 0);
    let pasid = h.ext_cap(ext_cap_id::PASID).unwrap();
    assert_eq!(
        h.config32(pasid + 4) & 0xffff,
        0x1406,
        "20 bits, exec, priv"
    );
}

#[test]
fn every_operation_is_verified() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.host(64 << 20);
    let mut q = h.setup_queue(0, 64);
    let len = 300_001usize;
    let src = h.alloc(len, 4096);
    let dst = h.alloc(len, 4096);
    let data = pattern(len, 1);
    h.write(U, src, &data);

    // memmove
    let c = h
        .run(&mut q, desc(opcode::MEMMOVE).with(src, dst, len as u32))
        .unwrap();
    assert_eq!(c.status, status::SUCCESS, "{c:?}");
    let mut out = vec![0u8; len];
    h.read(U, dst, &mut out);
    assert_eq!(out, data);

    // compare: equal, then one byte different
    let c = h
        .run(&mut q, desc(opcode::COMPARE).with(src, dst, len as u32))
        .unwrap();
    assert_eq!((c.status, c.result), (status::SUCCESS, 0));
    h.write(U, dst + 123_457, &[data[123_457] ^ 0x40]);
    let c = h
        .run(&mut q, desc(opcode::COMPARE).with(src, dst, len as u32))
        .unwrap();
    assert_eq!(
        (c.status, c.result, c.bytes_completed),
        (status::SUCCESS, 1, 123_457)
    );

    // fill with an 8-byte pattern, from an odd address
    let mut d = desc(opcode::FILL).with(0, dst + 3, 1000);
    d.arg2 = u64::from_le_bytes(*b"ABCDEFGH");
    assert_eq!(h.run(&mut q, d).unwrap().status, status::SUCCESS);
    h.read(U, dst + 3, &mut out[..1000]);
    let want: Vec<u8> = b"ABCDEFGH".iter().copied().cycle().take(1000).collect();
    assert_eq!(out[..1000], want[..]);

    // crc32c, seeded
    let mut d = desc(opcode::CRC32C).with(src, 0, len as u32);
    d.arg = 0x1234_5678;
    let c = h.run(&mut q, d).unwrap();
    assert_eq!(c.status, status::SUCCESS);
    assert_eq!(
        c.result,
        u64::from(crc32c::crc32c_append(0x1234_5678, &data))
    );

    // sha256
    let digest_at = h.alloc(32, 64);
    let c = h
        .run(
            &mut q,
            desc(opcode::SHA256).with(src, digest_at, len as u32),
        )
        .unwrap();
    assert_eq!(c.status, status::SUCCESS);
    let mut dg = [0u8; 32];
    h.read(U, digest_at, &mut dg);
    assert_eq!(dg[..], sha2::Sha256::digest(&data)[..]);

    // AES-256-GCM encrypt, checked against ring; then decrypt back
    let aad = b"trustdev accelerator AAD";
    let aad_at = h.alloc(aad.len(), 64);
    h.write(U, aad_at, aad);
    let params_at = h.alloc(0x50, 64);
    let params = AesParams {
        key: [7; 32],
        nonce: [9; 12],
        aad_len: aad.len() as u32,
        aad_addr: aad_at,
        rsvd: 0,
        tag: [0; 16],
    };
    h.write(U, params_at, &params.encode());
    let ct_at = h.alloc(len, 4096);
    let mut d = desc(opcode::AES_GCM_ENCRYPT).with(src, ct_at, len as u32);
    d.arg2 = params_at;
    assert_eq!(h.run(&mut q, d).unwrap().status, status::SUCCESS);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
    let mut want = data.clone();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([9; 12]),
            Aad::from(&aad[..]),
            &mut want,
        )
        .unwrap();
    h.read(U, ct_at, &mut out);
    assert_eq!(out, want, "ciphertext");
    let mut got_tag = [0u8; 16];
    h.read(U, params_at + AES_TAG_OFFSET, &mut got_tag);
    assert_eq!(&got_tag[..], tag.as_ref(), "tag");
    let pt_at = h.alloc(len, 4096);
    let mut d = desc(opcode::AES_GCM_DECRYPT).with(ct_at, pt_at, len as u32);
    d.arg2 = params_at;
    assert_eq!(h.run(&mut q, d).unwrap().status, status::SUCCESS);
    h.read(U, pt_at, &mut out);
    assert_eq!(out, data, "plaintext");
    // A flipped ciphertext bit fails authentication and writes nothing.
    h.write(U, ct_at + 77, &[want[77] ^ 1]);
    let sentinel = vec![0x5a; len];
    h.write(U, pt_at, &sentinel);
    assert_eq!(h.run(&mut q, d).unwrap().status, status::AUTH_FAIL);
    h.read(U, pt_at, &mut out);
    assert_eq!(out, sentinel, "no unauthenticated plaintext written");

    let (descs, errors, _, _) = h.counters();
    assert_eq!((descs, errors), (9, 1));
    assert!(s.alive());
}

#[test]
fn msix_interrupts_and_polling() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.host(8 << 20);
    let efds: Vec<EventFd> = (0..8)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let raw: Vec<i32> = efds.iter().map(|e| e.as_raw_fd()).collect();
    h.client
        .set_irqs(
            irq_index::MSIX,
            0,
            8,
            IrqData::Eventfd,
            IrqAction::Trigger,
            &raw,
        )
        .unwrap();
    let mut q = h.setup_queue(3, 16);
    h.set_qreg(3, queue::VECTOR, 5);
    h.set_qreg(3, queue::CTRL, ctrl::ENABLE | ctrl::IRQ);
    let buf = h.alloc(4096, 4096);
    // No INTERRUPT flag: completion is polled, no interrupt.
    let c = h
        .run(&mut q, desc(opcode::FILL).with(0, buf, 4096))
        .unwrap();
    assert_eq!(c.status, status::SUCCESS);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(efds[5].read().is_err(), "no interrupt without the flag");
    // With INTERRUPT: vector 5 fires (once per batch).
    let mut d = desc(opcode::FILL).with(0, buf, 4096);
    d.flags |= flags::INTERRUPT;
    let slot = h.push(&mut q, d);
    h.ring(&q);
    let t0 = std::time::Instant::now();
    loop {
        if efds[5].read().is_ok() {
            break;
        }
        assert!(t0.elapsed() < PATIENCE, "MSI-X vector 5 never fired");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        h.completion(U, q.record(slot)).unwrap().status,
        status::SUCCESS
    );
    for (i, e) in efds.iter().enumerate() {
        assert!(i == 5 || e.read().is_err(), "only the queue's vector");
    }
    // HEAD caught up with TAIL.
    assert_eq!(h.qreg(3, queue::HEAD), q.tail);
}

#[test]
fn queue_and_device_reset() {
    let s = Served::start(AccelConfig::default());
    let mut h = s.host(8 << 20);
    let mut q = h.setup_queue(1, 8);
    assert_eq!(h.run(&mut q, nop()).unwrap().status, status::SUCCESS);
    h.set_qreg(1, queue::CTRL, ctrl::RESET);
    let t0 = std::time::Instant::now();
    while h.qreg(1, queue::CTRL) & ctrl::RESET != 0 {
        assert!(t0.elapsed() < PATIENCE);
    }
    assert_eq!(h.qreg(1, queue::HEAD), 0);
    assert_eq!(h.qreg(1, queue::RING_SIZE), 0, "registers cleared");
    let mut q = h.setup_queue(1, 8);
    assert_eq!(h.run(&mut q, nop()).unwrap().status, status::SUCCESS);
    h.client.reset().unwrap();
    assert_eq!(h.qreg(1, queue::CTRL), 0);
    assert_eq!(h.reg(global::DESCRIPTORS), 2, "device counters survive");
}
