//! Registers, controller lifecycle, Identify, features and log pages.

use super::*;

#[test]
fn irq_info_has_a_vector_per_queue() {
    let infos = IrqInfo::pci(1, 9);
    assert_eq!(infos[irq_index::MSIX as usize].count, 9);
    let (t, pba, size) = super::super::msix_layout(65);
    assert_eq!(t, 0);
    assert!(u64::from(pba) >= 65 * 16 && u64::from(pba) + 16 <= size);
    assert_eq!(super::super::bar0_size(64, 0), 0x4000);
    assert!(super::super::bar0_size(128, 4) >= 0x1000 + 129 * 2 * 64);
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
    super::super::host::wait_csts(&mut d.bar, csts::RDY | csts::SHST_MASK, 0).unwrap();
    // Invalid CC values: MPS above MPSMAX, AMS not round robin, CSS.
    for bad in [(5 << 7), (1 << 11), (1 << 4)] {
        d.bar.write_reg32(reg::CC, 1 | (6 << 16) | (4 << 20) | bad);
        super::super::host::wait_csts(&mut d.bar, csts::CFS, csts::CFS).unwrap();
        assert_eq!(d.bar.read_reg32(reg::CSTS) & csts::RDY, 0);
        d.bar.write_reg32(reg::CC, 0);
        super::super::host::wait_csts(&mut d.bar, csts::CFS, 0).unwrap();
    }
    // NVM subsystem reset.
    d.bar.write_reg32(reg::CC, 1 | (6 << 16) | (4 << 20));
    super::super::host::wait_csts(&mut d.bar, csts::RDY, csts::RDY).unwrap();
    d.bar.write_reg32(reg::NSSR, 0x4E56_4D65);
    super::super::host::wait_csts(&mut d.bar, csts::NSSRO | csts::RDY, csts::NSSRO).unwrap();
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
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), super::super::VENDOR_ID);
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
