//! The accelerator behind the IDE link model, as `trustdev serve accel`
//! builds it (the security blocks every device carries): a client that does
//! what a TSM does (SPDM session, IDE_KM, stream registers) and then drives
//! the accelerator over a SECURE stream — untranslated DMA and, with the
//! PASID extension, translated DMA — sees its data arrive and the link
//! count the protected TLPs.

use spdm_responder::crypto::AsymAlgo;
use spdm_responder::idekm::regs::StreamSettings;
use spdm_responder::idekm::{IdeKey, KeySet, KeySlot};
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::rng::DeterministicEntropy;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use trustdev_devices::accel::desc::{flags, opcode, status, Completion, Descriptor};
use trustdev_devices::accel::regs::{ctrl, queue, QUEUE_BASE};
use trustdev_devices::accel::{AccelConfig, AccelDevice};
use trustdev_devices::security;
use trustdev_devices::security::ide::host;
use trustdev_devices::security::ide::{Ide, IdeConfig, IdeDevice};
use vfio_user_server::client::Client;
use vfio_user_server::iommu::{IommuModel, PTE_W};
use vfio_user_server::pci::{ext_cap_id, PortType, SharedMemory};
use vfio_user_server::protocol::DmaProt;
use vfio_user_server::Server;

const IOVA: u64 = 0x8000_0000;
const RAM: usize = 4 << 20;
const PHYS: u64 = 0x4000_0000;
const RW: DmaProt = DmaProt {
    read: true,
    write: true,
};

fn key(set: KeySet, slot: KeySlot) -> IdeKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8) ^ slot.to_byte() ^ (0x40 * set as u8) ^ 0x3a;
    }
    IdeKey::new(k, 0x2_0000_0000 + u64::from(slot.to_byte()))
}

/// Runs `d` in slot `slot` of queue 0 (ring at IOVA, records at IOVA +
/// 0x1000) and waits for its record, serving the device's requests.
fn run(c: &mut Client, ram: &SharedMemory, slot: u32, mut d: Descriptor) -> Completion {
    let rec = 0x1000 + u64::from(slot) * 32;
    d.flags |= flags::COMPLETION;
    d.completion = IOVA + rec;
    assert!(ram.write(rec as usize, &[0; 32]));
    assert!(ram.write(slot as usize * 64, &d.encode()));
    c.write32(0, QUEUE_BASE + queue::TAIL, slot + 1).unwrap();
    let t0 = Instant::now();
    loop {
        let mut b = [0u8; 32];
        assert!(ram.read(rec as usize, &mut b));
        if b[0] != 0 {
            return Completion::decode(&b);
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no completion");
        c.serve_requests(Duration::from_millis(1)).unwrap();
    }
}

#[test]
fn accelerator_dma_over_a_secure_ide_stream() {
    let mut rng = DeterministicEntropy::new(b"trustdev accel_ide test identity");
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP256],
        &CmaDeviceName::default(),
        1,
        &mut rng,
    )
    .unwrap();
    let ide = Ide::new(IdeConfig::default());
    let mut caps = vec![security::doe_capability_with_ide(
        Some(id.clone()),
        spdm_responder::ResponderConfig::default(),
        Some(&ide),
    )];
    caps.extend(ide.capabilities());
    let dev = AccelDevice::new(AccelConfig {
        port: PortType::RcIntegratedEndpoint,
        tee: true,
        security_caps: caps,
        ..AccelConfig::default()
    })
    .unwrap();
    let dev = IdeDevice::new(dev, std::sync::Arc::clone(&ide)).unwrap();
    let dir = std::env::temp_dir().join(format!("trustdev-accel-ide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("accel.sock");
    let mut server = Server::new(dev, &socket).unwrap();
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.run().unwrap());

    // A client with the PASID extension, untranslated RAM and an IOMMU model.
    let mut c = Client::connect_raw(&socket).unwrap();
    c.set_timeout(Some(Duration::from_secs(30))).unwrap();
    c.negotiate_with(r#""pasid":{"ats":true,"pri":true,"dma":true}"#)
        .unwrap();
    let ram = SharedMemory::new("accel-ide-ram", RAM).unwrap();
    c.dma_map(IOVA, RAM as u64, 0, RW, Some(ram.fd().as_fd()))
        .unwrap();
    let model = IommuModel::new(PHYS, 8 << 20).unwrap();
    c.translated_dma_map(PHYS, 8 << 20, 0, RW, Some(model.fd()))
        .unwrap();
    c.enable_pasid(model);
    c.write32(7, 0x10, 0xfe00_0000).unwrap();
    c.write32(7, 0x04, 0x6).unwrap();

    // What a TSM does: SPDM session, IDE_KM key programming, stream enable.
    let mut host = host::connect(c, id.roots_der()).unwrap();
    let sel = StreamSettings::endpoint(1, 0x0008);
    host.setup(0, &sel).unwrap();
    host.program(1, KeySet::K0, |s| key(KeySet::K0, s)).unwrap();
    assert_eq!(host.enable(0, &sel).unwrap(), 2, "SECURE");
    assert!(ide.is_secure(1));
    let c = host.access();

    // Queue 0 over the link.
    let q = |r: u64| QUEUE_BASE + r;
    c.write32(0, q(queue::RING_LO), IOVA as u32).unwrap();
    c.write32(0, q(queue::RING_HI), (IOVA >> 32) as u32)
        .unwrap();
    c.write32(0, q(queue::RING_SIZE), 64).unwrap();
    c.write32(0, q(queue::CTRL), ctrl::ENABLE).unwrap();

    // Untranslated memmove: through the link's bounce and seal/open.
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    assert!(ram.write(0x10000, &data));
    let before = ide.link_stats();
    let d = Descriptor {
        opcode: opcode::MEMMOVE,
        src: IOVA + 0x10000,
        dst: IOVA + 0x30000,
        len: data.len() as u32,
        ..Descriptor::default()
    };
    assert_eq!(run(c, &ram, 0, d).status, status::SUCCESS);
    let mut out = vec![0u8; data.len()];
    assert!(ram.read(0x30000, &mut out));
    assert_eq!(out, data, "copied over the SECURE stream");
    let mid = ide.link_stats();
    assert!(
        mid.ide_tlps > before.ide_tlps + 100,
        "the copy crossed the link as IDE TLPs: {before:?} -> {mid:?}"
    );
    assert_eq!(mid.integrity_failures, 0);

    // PASID-tagged DMA: translated requests cross the same link.
    for (off, v) in [(6u64, 0x0007u16), (0x6, 0x8000)] {
        let id = if v == 7 {
            ext_cap_id::PASID
        } else {
            ext_cap_id::ATS
        };
        let cap = spdm_responder::transport::doe::find_ext_cap(c, id)
            .unwrap()
            .unwrap();
        c.region_write(7, u64::from(cap) + off, &v.to_le_bytes())
            .unwrap();
    }
    let va = 0x7f00_0000_0000u64;
    {
        let m = &mut c.pasid().unwrap().iommu;
        m.bind(3).unwrap();
        for k in 0..4 {
            let pa = m.alloc_page().unwrap();
            m.map(3, va + k * 4096, pa, PTE_W).unwrap();
        }
        m.write_va(3, va, &data[..8192]).unwrap();
    }
    let d = Descriptor {
        opcode: opcode::MEMMOVE,
        flags: flags::PASID,
        pasid: 3,
        src: va,
        dst: va + 8192,
        len: 8192,
        ..Descriptor::default()
    };
    assert_eq!(run(c, &ram, 1, d).status, status::SUCCESS);
    let mut out = vec![0u8; 8192];
    c.pasid()
        .unwrap()
        .iommu
        .read_va(3, va + 8192, &mut out)
        .unwrap();
    assert_eq!(out, data[..8192]);
    let after = ide.link_stats();
    assert!(
        after.ide_tlps > mid.ide_tlps + 20,
        "translated DMA crossed the link: {mid:?} -> {after:?}"
    );
    assert_eq!(after.integrity_failures, 0);
    drop(host);
    stop.stop();
    let _ = thread.join();
    let _ = std::fs::remove_dir_all(&dir);
}
