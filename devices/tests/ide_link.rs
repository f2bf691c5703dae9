//! The protected link end to end on the host, over a real vfio-user socket:
//! the DMA-copy device served with IDE, a client that does what a TSM and a
//! driver do (DOE mailbox, SPDM session, IDE_KM, stream registers, BAR
//! accesses, guest memory), then the wire trace decrypted with the keys the
//! client programmed, by an AES-GCM implementation that is not ring.

use spdm_responder::idekm::regs::StreamSettings;
use spdm_responder::idekm::{IdeKey, KeySet, KeySlot, SubStream};
use spdm_responder::ResponderConfig;
use std::sync::{Arc, Mutex};
use trustdev_devices::example::{self, reg, status, DmaCopy};
use trustdev_devices::security;
use trustdev_devices::security::ide::host;
use trustdev_devices::security::ide::link::FaultTarget;
use trustdev_devices::security::ide::trace::{read_trace, verify};
use trustdev_devices::security::ide::{
    Ide, IdeConfig, IdeDevice, IdeEvent, InsecureReason, LinkEnd, WireFault,
};
use vfio_user_server::pci::PortType;

mod dma_copy_rig;

use dma_copy_rig::{copy, identity, Served};

struct Rig {
    s: Served,
    ide: Arc<Ide>,
    events: Arc<Mutex<Vec<IdeEvent>>>,
}

impl std::ops::Deref for Rig {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.s
    }
}

fn start(tag: &str) -> Rig {
    let ide = Ide::new(IdeConfig::default());
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = Arc::clone(&events);
    ide.subscribe(move |e| e2.lock().unwrap().push(e.clone()));
    let s = dma_copy_rig::serve(&format!("ide-link-{tag}"), |dir| {
        ide.set_trace(&dir.join("wire.pcap")).unwrap();
        let mut caps = vec![security::doe_capability_with_ide(
            Some(identity()),
            ResponderConfig::default(),
            Some(&ide),
        )];
        caps.extend(ide.capabilities());
        let dev = DmaCopy::with_capabilities(
            PortType::RcIntegratedEndpoint,
            true,
            example::DEFAULT_SERIAL,
            caps,
        )
        .unwrap();
        IdeDevice::new(dev, Arc::clone(&ide)).unwrap()
    });
    Rig { s, ide, events }
}

fn key_for(set: KeySet, slot: KeySlot) -> IdeKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8) ^ slot.to_byte() ^ (0x40 * set as u8) ^ 0x5c;
    }
    IdeKey::new(k, 0x1_0000_0000 + u64::from(slot.to_byte()))
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[test]
fn protected_copies_key_refresh_and_a_verified_trace() {
    let rig = start("main");
    let mut host = host::connect(rig.client(), identity().roots_der()).unwrap();
    let q = host.query().unwrap();
    assert_eq!(q.regs, rig.ide.register_image());
    // pci_ide_stream_setup, IDE_KM, pci_ide_stream_enable.
    let sel = StreamSettings::endpoint(1, 0x0008);
    host.setup(0, &sel).unwrap();
    host.program(1, KeySet::K0, |s| key_for(KeySet::K0, s))
        .unwrap();
    assert_eq!(
        host.enable(0, &sel).unwrap(),
        2,
        "SECURE right after Enable"
    );
    assert!(rig.ide.is_secure(1));

    // Device traffic on the stream: MMIO (BAR0) and DMA both ways.
    let src = pattern(40000, 1);
    rig.ram_write(0x1000, &src);
    assert_eq!(
        copy(host.access(), 0x1000, 0x20000, src.len() as u32) & status::ERROR,
        0
    );
    assert!(
        rig.ram_read(0x20000, src.len()) == src,
        "copied through the link"
    );
    let before = rig.ide.link_stats();
    assert!(before.ide_tlps > 300, "{before:?}");
    assert_eq!(
        host.access().read32(0, reg::ID).unwrap(),
        example::ID_VALUE,
        "MMIO read over the link"
    );

    // Key refresh to K1 while copies run.
    let src2 = pattern(9000, 2);
    rig.ram_write(0x1000, &src2);
    host.program(1, KeySet::K1, |s| key_for(KeySet::K1, s))
        .unwrap();
    assert_eq!(
        copy(host.access(), 0x1000, 0x40000, src2.len() as u32) & status::ERROR,
        0
    );
    host.stop(1, KeySet::K0).unwrap();
    assert!(rig.ide.is_secure(1), "retiring K0 keeps the stream SECURE");
    assert_eq!(
        copy(host.access(), 0x1000, 0x50000, src2.len() as u32) & status::ERROR,
        0
    );
    assert!(rig.ram_read(0x50000, src2.len()) == src2);

    // Stopping the set in use drops the stream; the enabled stream then
    // refuses traffic (fail closed): the copy fails, nothing lands.
    host.stop(1, KeySet::K1).unwrap();
    assert_eq!(host.status(0).unwrap() & 0xf, 0, "INSECURE");
    rig.ram_write(0x60000, &[0xee; 64]);
    assert_ne!(copy(host.access(), 0x1000, 0x60000, 64) & status::ERROR, 0);
    assert_eq!(rig.ram_read(0x60000, 64), vec![0xee; 64]);
    host.disable(0, &sel).unwrap();
    assert_eq!(
        copy(host.access(), 0x1000, 0x60000, 64) & status::ERROR,
        0,
        "in the clear"
    );
    host.end().unwrap();

    // The trace: every TLP decrypts with the keys programmed above, every
    // MAC verifies, every counter counts up from its key's IFV.
    drop(host);
    rig.ide.flush_trace().unwrap();
    let recs = read_trace(&rig.dir.join("wire.pcap")).unwrap();
    assert_eq!(recs.len() as u64, rig.ide.link_stats().ide_tlps);
    let kinds = verify(&recs, |_, slot| key_for(slot.set, slot), |_, _| {})
        .unwrap()
        .kinds;
    assert!(recs.iter().all(|r| r.verified));
    // MWr, MRd, CplD of the copies; MWr/MRd/CplD of the BAR accesses.
    for k in [(0, 0), (0, 1), (1, 2), (1, 0), (1, 1), (0, 2)] {
        assert!(kinds.contains_key(&k), "no {k:?} TLPs: {kinds:?}");
    }
    assert!(recs.iter().any(|r| r.key_set == 1));
    let ev = rig.events.lock().unwrap();
    assert!(ev.iter().any(|e| matches!(
        e,
        IdeEvent::StreamInsecure {
            reason: InsecureReason::KeySetStopped,
            ..
        }
    )));
}

#[test]
fn one_flipped_bit_on_the_wire() {
    let rig = start("fault");
    let mut host = host::connect(rig.client(), identity().roots_der()).unwrap();
    let sel = StreamSettings::endpoint(3, 0);
    host.setup(0, &sel).unwrap();
    host.program(3, KeySet::K0, |s| key_for(KeySet::K0, s))
        .unwrap();
    assert_eq!(host.enable(0, &sel).unwrap(), 2);
    let src = pattern(4096, 9);
    rig.ram_write(0x1000, &src);
    rig.ram_write(0x9000, &[0x11; 4096]);
    // A ciphertext bit of the device's memory write, on its way to the host.
    rig.ide.inject_fault(WireFault {
        towards: LinkEnd::Host,
        sub_stream: Some(SubStream::Posted),
        stream_id: None,
        skip: 0,
        target: FaultTarget::Payload(1000),
    });
    let s = copy(host.access(), 0x1000, 0x9000, 4096);
    assert_ne!(s & status::ERROR, 0, "the copy fails");
    // The first memory write TLP of the copy was corrupted: the host end
    // dropped it, the stream went INSECURE, nothing else went out.
    assert!(
        rig.ram_read(0x9000, 4096).iter().all(|&b| b == 0x11),
        "no data landed"
    );
    assert_eq!(
        host.status(0).unwrap(),
        0x8000_0000,
        "INSECURE, IDE_FAIL (host detected)"
    );
    assert!(rig.ide.key_states(3).is_empty());
    assert_eq!(rig.ide.link_stats().integrity_failures, 1);
    // The device is still usable: new keys, enabled again, copies work.
    host.disable(0, &sel).unwrap();
    host.program(3, KeySet::K1, |s| key_for(KeySet::K1, s))
        .unwrap();
    assert_eq!(
        host.enable(0, &sel).unwrap() & 0xf,
        2,
        "SECURE (IDE_FAIL stays set until cleared)"
    );
    assert_eq!(copy(host.access(), 0x1000, 0x9000, 4096) & status::ERROR, 0);
    assert!(rig.ram_read(0x9000, 4096) == src);
    drop(host);
    rig.ide.flush_trace().unwrap();
    let recs = read_trace(&rig.dir.join("wire.pcap")).unwrap();
    assert_eq!(
        recs.iter().filter(|r| !r.verified).count(),
        1,
        "the failed TLP is in the trace"
    );
}
