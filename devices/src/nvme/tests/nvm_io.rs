//! NVM I/O: PRP lists and SGLs, Write Zeroes, DSM, Compare, several
//! namespaces, 4 KiB blocks and 64 KiB memory pages.

use super::*;

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
