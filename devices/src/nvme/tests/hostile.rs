//! Hostile and random commands: every one completes with the status the
//! spec names, nothing panics, the controller keeps working.

use super::*;

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
