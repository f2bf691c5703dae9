//! The IDE model in-process: registers through configuration space, keys
//! through the IDE_KM backend, DMA through guest memory with the link
//! installed, the trace checked with an independent AES-GCM.

use super::regs::{aer, ctl, sts};
use super::trace::{read_trace, Flow, TraceRecord};
use super::*;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use spdm_responder::idekm::{KeyDirection, KeySet, SubStream};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use vfio_user_server::dma::GuestMemory;
use vfio_user_server::protocol::DmaMapRequest;

type Gcm96 =
    aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U12, aes_gcm::aead::consts::U12>;

const SESSION: u32 = 0xfffe_0001;
/// The IDE capability is the first extended capability.
const IDE: u64 = 0x100;
const SEL0: u64 = IDE + 0x0c + 8; // one link stream block before it
const SEL1: u64 = SEL0 + 32;
const MEM: u64 = 0x10_0000;

fn memfd(len: u64) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"ide", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(len).unwrap();
    f.into()
}

struct Rig {
    ide: Arc<Ide>,
    cfg: vfio_user_server::pci::ConfigSpace,
    mem: Arc<GuestMemory>,
    events: Arc<Mutex<Vec<IdeEvent>>>,
    keys: HashMap<(u8, KeySlot), IdeKey>,
}

impl Rig {
    fn new(cfg: IdeConfig) -> Rig {
        let ide = Ide::new(cfg);
        let cfg = ide.function_config_space().unwrap();
        let mem = Arc::new(GuestMemory::new(16));
        mem.map(
            &DmaMapRequest::read_write(MEM, 0x10_0000),
            Some(memfd(0x10_0000)),
        )
        .unwrap();
        assert!(mem.set_interposer(ide.link_model()).is_ok());
        let events = Arc::new(Mutex::new(Vec::new()));
        let e2 = Arc::clone(&events);
        ide.subscribe(move |e| e2.lock().unwrap().push(e.clone()));
        Rig {
            ide,
            cfg,
            mem,
            events,
            keys: HashMap::new(),
        }
    }

    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.cfg.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(&mut self, off: u64, v: u32) {
        self.cfg.write(off, &v.to_le_bytes());
    }

    fn program(&mut self, id: u8, set: KeySet) {
        for ss in SubStream::ALL {
            for d in KeyDirection::ALL {
                let slot = KeySlot::new(set, d, ss);
                let mut kb = [0u8; 32];
                kb[0] = id;
                kb[1] = slot.to_byte();
                kb[2] = 0xa5;
                let key = IdeKey::new(kb, 1 + slot.index() as u64 * 1000);
                self.keys.insert((id, slot), key.clone());
                self.ide.km_program(SESSION, id, slot, key).unwrap();
                self.ide.km_go(SESSION, id, slot).unwrap();
            }
        }
    }

    fn sel_state(&mut self, base: u64) -> u32 {
        self.rd(base + 8)
    }

    /// Selective stream 0 as Linux sets it up: ID, Default, then Enable.
    fn secure_stream0(&mut self, id: u8) {
        self.wr(SEL0 + 4, (u32::from(id) << 24) | ctl::DEFAULT);
        self.program(id, KeySet::K0);
        self.wr(SEL0 + 4, (u32::from(id) << 24) | ctl::DEFAULT | ctl::EN);
        assert_eq!(self.sel_state(SEL0) & sts::STATE, sts::SECURE);
    }

    fn take_events(&self) -> Vec<IdeEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Decrypts and checks every record with RustCrypto: the MAC, and
    /// that each (stream, sub-stream, direction, key set) counts up by one
    /// from its key's IFV.
    fn verify_trace(&self, recs: &[TraceRecord]) -> usize {
        let mut next: HashMap<(u8, u8, u8, u8), u64> = HashMap::new();
        let mut ok = 0;
        for r in recs {
            let ss = SubStream::from_bits(r.sub_stream).unwrap();
            let set = KeySet::from_bit(r.key_set == 1);
            // The transmitter's key: the device's TX key upstream, its RX key downstream.
            let dir = match r.flow {
                Flow::Upstream => KeyDirection::Tx,
                Flow::Downstream => KeyDirection::Rx,
            };
            let key = &self.keys[&(r.stream_id, KeySlot::new(set, dir, ss))];
            let k = next
                .entry((r.stream_id, r.sub_stream, r.flow as u8, r.key_set))
                .or_insert(key.ifv());
            assert_eq!(r.invocation, *k, "invocation counter of {r:?}");
            *k += 1;
            let (prefix, _) = r.header.split_at(4);
            assert_eq!(
                tlp::parse_prefix(&prefix.try_into().unwrap()).map(|p| (p.0, p.2, p.3)),
                Some((set, ss, r.stream_id))
            );
            let mut buf = r.payload.clone();
            let res = Gcm96::new(key.key_bytes().into()).decrypt_in_place_detached(
                &IdeKey::iv(r.invocation).into(),
                &r.header,
                &mut buf,
                (&r.mac).into(),
            );
            assert_eq!(res.is_ok(), r.verified, "MAC of {r:?}");
            ok += usize::from(res.is_ok());
        }
        ok
    }
}

#[test]
fn registers_as_linux_sees_them() {
    let mut r = Rig::new(IdeConfig::default());
    let hdr = r.rd(IDE);
    assert_eq!(hdr & 0xffff, 0x30, "IDE extended capability ID");
    assert_eq!(r.rd(IDE + 4), 0x0001_0043, "link + selective (2) + IDE_KM");
    assert_eq!(r.rd(SEL0), 1, "one address association block");
    assert_eq!(r.rd(SEL1), 1, "the same in every stream");
    // pci_ide_init: reserved Stream ID 255 into every idle stream.
    for off in [IDE + 0x0c, SEL0 + 4, SEL1 + 4] {
        r.wr(off, 0xff00_0000);
        assert_eq!(r.rd(off), 0xff00_0000);
    }
    // Reserved and unsupported bits read 0; ID writable while disabled.
    r.wr(SEL0 + 4, 0x12ff_fffe);
    assert_eq!(
        r.rd(SEL0 + 4),
        0x12ff_fffe & (ctl::ID | ctl::DEFAULT | ctl::TC | ctl::ALG)
    );
    r.wr(SEL0 + 4, 0x1200_0001);
    assert_eq!(r.rd(SEL0 + 4), 0x1200_0001);
    r.wr(SEL0 + 4, 0x3400_0001);
    assert_eq!(r.rd(SEL0 + 4) >> 24, 0x12, "ID locked while enabled");
    r.wr(SEL0 + 4, 0x3400_0000);
    assert_eq!(r.rd(SEL0 + 4), 0x3400_0000, "disabling takes the new ID");
    // Byte writes merge.
    r.cfg.write(SEL0 + 7, &[0x56]);
    assert_eq!(r.rd(SEL0 + 4) >> 24, 0x56);
    // Status: state RO, never SECURE without keys.
    r.wr(SEL0 + 8, 0x7fff_ffff);
    assert_eq!(r.rd(SEL0 + 8), 0);
    // RID / address association.
    r.wr(SEL0 + 0x0c, 0xffff_ffff);
    assert_eq!(r.rd(SEL0 + 0x0c), 0x00ff_ff00);
    r.wr(SEL0 + 0x10, 0xffff_ffff);
    assert_eq!(r.rd(SEL0 + 0x10), 0xffff_ff01);
    r.wr(SEL0 + 0x14, 0xffff_fffe);
    assert_eq!(r.rd(SEL0 + 0x14), 0xffff_ff00);
    r.wr(SEL0 + 0x18, 0x1234_5678);
    assert_eq!(r.rd(SEL0 + 0x18), 0x1234_5678);
    // Capability and control: RO without flow-through.
    r.wr(IDE + 4, 0);
    assert_eq!(r.rd(IDE + 4), 0x0001_0043);
    r.wr(IDE + 8, 0xffff_ffff);
    assert_eq!(r.rd(IDE + 8), 0);
    // The register image QUERY_RESP carries is the live one.
    let img = r.ide.register_image();
    assert_eq!(img.len(), 20);
    assert_eq!(img[5], 0x5600_0000, "selective stream 0 control");
    // Reset restores everything.
    r.cfg.reset();
    assert_eq!(r.rd(SEL0 + 4), 0);
}

#[test]
fn options_change_the_capability() {
    let c = IdeConfig::parse(
        "link=0,selective=3,assoc=2,tee-limited,flow-through,aggregation,pcrc,partial-header,cfg",
    )
    .unwrap()
    .unwrap();
    let mut r = Rig::new(c);
    let capreg = r.rd(IDE + 4);
    assert_eq!(capreg & 1, 0, "no link IDE");
    assert_eq!((capreg >> 16) & 0xff, 2, "3 selective streams");
    assert_eq!(capreg & 0x1bc, 0x1bc & capreg);
    let sel0 = IDE + 0x0c;
    let sel1 = sel0 + 20 + 24;
    assert_eq!(r.rd(sel0), 2);
    assert_eq!(r.rd(sel1), 2);
    r.wr(sel1 + 4, 0xffff_fffe);
    assert_eq!(r.rd(sel1 + 4), 0xffff_fffc, "every optional field writable");
    r.wr(IDE + 8, 0xffff_ffff);
    assert_eq!(r.rd(IDE + 8), 4, "flow-through enable");
}

#[test]
fn secure_only_with_every_key_armed() {
    let mut r = Rig::new(IdeConfig::default());
    r.wr(SEL0 + 4, 0x0700_0001);
    assert_eq!(r.sel_state(SEL0), sts::INSECURE, "enabled without keys");
    r.wr(SEL0 + 4, 0x0700_0000);
    // Every slot but one armed: not secure.
    for ss in SubStream::ALL {
        for d in KeyDirection::ALL {
            let slot = KeySlot::new(KeySet::K0, d, ss);
            r.ide
                .km_program(SESSION, 7, slot, IdeKey::new([1; 32], 1))
                .unwrap();
            if !(ss == SubStream::Completion && d == KeyDirection::Rx) {
                r.ide.km_go(SESSION, 7, slot).unwrap();
            }
        }
    }
    r.wr(SEL0 + 4, 0x0700_0001);
    assert_eq!(r.sel_state(SEL0), sts::INSECURE, "RX CPL not armed");
    r.ide
        .km_go(
            SESSION,
            7,
            KeySlot::new(KeySet::K0, KeyDirection::Rx, SubStream::Completion),
        )
        .unwrap();
    assert_eq!(r.sel_state(SEL0), sts::SECURE);
    assert!(r.ide.is_secure(7));
    assert_eq!(
        r.take_events(),
        [IdeEvent::StreamSecure {
            stream: StreamRef {
                kind: StreamKind::Selective,
                index: 0
            },
            id: 7
        }]
    );
    assert_eq!(r.ide.bound_stream().map(|s| s.id), Some(7));
    // Stop the set in use: INSECURE, every key of the stream zeroized.
    r.ide
        .km_stop(
            SESSION,
            7,
            KeySlot::new(KeySet::K0, KeyDirection::Tx, SubStream::NonPosted),
        )
        .unwrap();
    assert_eq!(r.sel_state(SEL0), sts::INSECURE);
    assert!(r.ide.key_states(7).is_empty());
    assert!(matches!(
        r.take_events()[..],
        [IdeEvent::StreamInsecure {
            reason: InsecureReason::KeySetStopped,
            ..
        }]
    ));
}

#[test]
fn every_way_out_of_secure() {
    let mut r = Rig::new(IdeConfig::default());
    // Disable.
    r.secure_stream0(3);
    r.wr(SEL0 + 4, 0);
    assert_eq!(r.sel_state(SEL0), sts::INSECURE);
    assert!(r.ide.key_states(3).is_empty(), "keys zeroized");
    // Re-enabling without new keys stays insecure.
    r.wr(SEL0 + 4, 0x0300_0001);
    assert_eq!(r.sel_state(SEL0), sts::INSECURE);
    r.wr(SEL0 + 4, 0);
    // Session end.
    r.secure_stream0(3);
    r.ide.km_session_ended(SESSION + 1);
    assert_eq!(
        r.sel_state(SEL0) & sts::STATE,
        sts::SECURE,
        "another session's end"
    );
    r.ide.km_session_ended(SESSION);
    assert_eq!(r.sel_state(SEL0), sts::INSECURE);
    r.wr(SEL0 + 4, 0);
    // Function level reset (through the PCIe capability's Initiate FLR).
    r.secure_stream0(3);
    r.cfg.reset();
    assert_eq!(r.sel_state(SEL0), sts::INSECURE);
    assert_eq!(r.rd(SEL0 + 4), 0);
    assert!(r.ide.key_states(3).is_empty());
    let ev = r.take_events();
    assert!(ev.iter().any(|e| matches!(
        e,
        IdeEvent::StreamInsecure {
            reason: InsecureReason::Reset,
            ..
        }
    )));
}

fn fill(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn protected_dma_and_a_decryptable_trace() {
    let dir = tempdir();
    let trace = dir.join("ide.pcap");
    let mut r = Rig::new(IdeConfig::default());
    r.ide.set_trace(&trace).unwrap();
    assert!(
        r.ide.set_trace(&trace).is_err(),
        "an existing file is never overwritten"
    );
    r.secure_stream0(9);
    r.ide.mps.store(256, Ordering::Relaxed);
    // Device writes (MWr) and reads (MRd + CplD), odd addresses and sizes.
    let data = fill(5000, 3);
    r.mem.write(MEM + 0x1003, &data).unwrap();
    let mut back = vec![0u8; 5000];
    r.mem.read(MEM + 0x1003, &mut back).unwrap();
    assert!(back == data);
    // with_slice hands out bounce buffers on a secure stream.
    r.mem
        .with_slice(MEM + 0x8000, 4096, Access::Write, |s| {
            s.copy_from(0, &data[..4096])
        })
        .unwrap()
        .unwrap();
    let mut v = vec![0u8; 4096];
    r.mem
        .with_slice(MEM + 0x8000, 4096, Access::Read, |s| s.copy_to(0, &mut v))
        .unwrap()
        .unwrap();
    assert!(v == data[..4096]);
    // Key refresh while traffic runs: K1 programmed and armed, RX first.
    for ss in SubStream::ALL {
        for d in [KeyDirection::Rx, KeyDirection::Tx] {
            let slot = KeySlot::new(KeySet::K1, d, ss);
            let key = IdeKey::new([0x11 + slot.index() as u8; 32], 77);
            r.keys.insert((9, slot), key.clone());
            r.ide.km_program(SESSION, 9, slot, key).unwrap();
            r.ide.km_go(SESSION, 9, slot).unwrap();
            r.mem.write(MEM + 0x6000, &data[..300]).unwrap();
            assert_eq!(r.sel_state(SEL0) & sts::STATE, sts::SECURE);
        }
    }
    for slot in KeySlot::all().filter(|s| s.set == KeySet::K0) {
        r.ide.km_stop(SESSION, 9, slot).unwrap();
    }
    assert_eq!(
        r.sel_state(SEL0) & sts::STATE,
        sts::SECURE,
        "old set retired"
    );
    r.mem.read(MEM + 0x1003, &mut back).unwrap();
    assert!(back == data);
    r.ide.flush_trace().unwrap();
    let recs = read_trace(&trace).unwrap();
    let stats = r.ide.link_stats();
    assert_eq!(recs.len() as u64, stats.ide_tlps);
    assert_eq!(r.verify_trace(&recs), recs.len());
    // MPS 256: 5000 bytes from ...1003 are 253 + 18 x 256 + 139 bytes: 20 MWr TLPs.
    let first_write = recs
        .iter()
        .take_while(|x| x.flow == Flow::Upstream && x.sub_stream == 0)
        .count();
    assert_eq!(first_write, 20);
    assert!(
        recs.iter().any(|x| x.key_set == 1),
        "K1 in use after the refresh"
    );
    assert!(
        recs.iter()
            .any(|x| x.flow == Flow::Downstream && x.sub_stream == 2),
        "read completions"
    );
    // The plaintext never appears on the wire.
    assert!(!recs
        .iter()
        .any(|x| x.payload.windows(16).any(|w| w == &data[100..116])));
}

#[test]
fn flipped_bit_is_caught_and_data_never_lands() {
    let mut r = Rig::new(IdeConfig::default());
    r.secure_stream0(4);
    let old = fill(512, 1);
    r.mem.direct().write(MEM, &old).unwrap();
    r.take_events();
    // Upstream: one ciphertext bit of a device write, checked by the host end.
    r.ide.inject_fault(WireFault {
        towards: LinkEnd::Host,
        sub_stream: Some(SubStream::Posted),
        stream_id: None,
        skip: 0,
        target: link::FaultTarget::Payload(77),
    });
    let e = r.mem.write(MEM, &fill(512, 9)).unwrap_err();
    assert!(e.to_string().contains("integrity"), "{e}");
    let mut now = vec![0u8; 512];
    r.mem.direct().read(MEM, &mut now).unwrap();
    assert!(now == old, "the write did not land");
    assert_eq!(r.sel_state(SEL0), sts::INSECURE | sts::IDE_FAIL);
    assert!(r.ide.key_states(4).is_empty());
    let ev = r.take_events();
    assert!(ev.contains(&IdeEvent::IntegrityFailure {
        stream: StreamRef {
            kind: StreamKind::Selective,
            index: 0
        },
        id: 4,
        detected_by: LinkEnd::Host
    }));
    // Fail closed: the stream is still enabled, so nothing goes in the clear.
    assert!(r.mem.write(MEM, &[1, 2, 3]).is_err());
    r.mem.direct().read(MEM, &mut now[..3]).unwrap();
    assert_eq!(now[..3], old[..3]);
    // IDE_FAIL is RW1C.
    r.wr(SEL0 + 8, sts::IDE_FAIL);
    assert_eq!(r.sel_state(SEL0), 0);
    // Disabled, the device talks in the clear again.
    r.wr(SEL0 + 4, 0);
    r.mem.write(MEM, &[1, 2, 3]).unwrap();

    // Downstream: a read completion checked by the device: AER.
    r.secure_stream0(4);
    r.ide.inject_fault(WireFault {
        towards: LinkEnd::Device,
        sub_stream: Some(SubStream::Completion),
        stream_id: None,
        skip: 0,
        target: link::FaultTarget::Mac(3),
    });
    let mut got = vec![0u8; 64];
    assert!(r.mem.read(MEM, &mut got).is_err());
    assert!(got == vec![0u8; 64], "nothing reached the device");
    assert_eq!(
        r.sel_state(SEL0),
        sts::INSECURE,
        "no IDE Fail message from the device's own check"
    );
    assert_eq!(r.ide.aer_uncorrectable_status(), aer::UNC_IDE_CHECK);
    let aer_base = IDE + 4 + r.ide.config().body_len() as u64;
    assert_eq!(r.rd(aer_base) & 0xffff, 1, "AER capability follows IDE");
    assert_eq!(r.rd(aer_base + 4), aer::UNC_IDE_CHECK);
    assert_eq!(r.rd(aer_base + 0x18) & 0x1f, 28, "first error pointer");
    assert_eq!(r.rd(aer_base + 0x1c) >> 24, 0x4a, "header log: CplD");
    assert_eq!(r.rd(aer_base + 0x38) >> 24, 0x92, "prefix log: IDE prefix");
    assert_eq!(r.ide.link_stats().integrity_failures, 2);
}

#[test]
fn wire_fault_chosen_by_stream_after_a_skip_count() {
    let mut r = Rig::new(IdeConfig::default());
    const MEM2: u64 = MEM + 0x10_0000;
    r.mem
        .map(
            &DmaMapRequest::read_write(MEM2, 0x10_0000),
            Some(memfd(0x10_0000)),
        )
        .unwrap();
    // Stream ID 6 (selective stream 1) covers MEM's MiB by address; Stream
    // ID 5 (selective stream 0, Default Stream) carries the rest.
    r.wr(
        SEL1 + 0x14,
        1 | (((MEM >> 20) as u32) << 8) | ((((MEM + 0xf_ffff) >> 20) as u32) << 20),
    );
    r.wr(SEL1 + 4, 0x0600_0000);
    r.program(6, KeySet::K0);
    r.wr(SEL1 + 4, 0x0600_0001);
    r.secure_stream0(5);
    assert_eq!(r.sel_state(SEL1) & sts::STATE, sts::SECURE);
    r.take_events();
    r.ide.inject_fault(WireFault {
        towards: LinkEnd::Host,
        sub_stream: None,
        stream_id: Some(5),
        skip: 2,
        target: link::FaultTarget::Mac(1),
    });
    // Stream ID 6's TLPs are neither hit nor counted.
    for _ in 0..5 {
        r.mem.write(MEM, &[1; 64]).unwrap();
    }
    assert_eq!(r.ide.pending_faults()[0].skip, 2);
    // Stream ID 5: two TLPs go through, the third fails.
    r.mem.write(MEM2, &[2; 64]).unwrap();
    assert_eq!(r.ide.pending_faults()[0].skip, 1);
    r.mem.write(MEM2, &[2; 64]).unwrap();
    assert!(r.mem.write(MEM2, &[3; 64]).is_err());
    assert!(r.ide.pending_faults().is_empty());
    let mut got = [0u8; 64];
    r.mem.direct().read(MEM2, &mut got).unwrap();
    assert_eq!(got, [2; 64], "the failed write did not land");
    assert_ne!(r.sel_state(SEL0) & sts::STATE, sts::SECURE);
    assert_eq!(
        r.sel_state(SEL1) & sts::STATE,
        sts::SECURE,
        "the other stream"
    );
    r.mem.write(MEM, &[4; 64]).unwrap();
    let ev = r.take_events();
    assert!(ev.iter().any(|e| matches!(
        e,
        IdeEvent::IntegrityFailure {
            id: 5,
            detected_by: LinkEnd::Host,
            ..
        }
    )));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, IdeEvent::IntegrityFailure { id: 6, .. })));
    // A fault aimed at a stream goes away with the stream's SECURE state:
    // it never hits a stream later set up with that Stream ID.
    r.ide.inject_fault(WireFault {
        towards: LinkEnd::Host,
        sub_stream: None,
        stream_id: Some(6),
        skip: 1000,
        target: link::FaultTarget::Mac(1),
    });
    assert_eq!(r.ide.pending_faults().len(), 1);
    r.wr(SEL1 + 4, 0x0600_0000);
    assert!(r.ide.pending_faults().is_empty());
    r.program(6, KeySet::K0);
    r.wr(SEL1 + 4, 0x0600_0001);
    assert_eq!(r.sel_state(SEL1) & sts::STATE, sts::SECURE);
    for _ in 0..1001 {
        r.mem.write(MEM, &[5; 64]).unwrap();
    }
}

#[test]
fn routing_by_address_association() {
    let mut r = Rig::new(IdeConfig::default());
    // Stream 1 (not default) covers MEM..MEM+1M; stream 0 is enabled, default, no keys.
    r.wr(
        SEL1 + 0x14,
        1 | (((MEM >> 20) as u32) << 8) | ((((MEM + 0xf_ffff) >> 20) as u32) << 20),
    );
    r.wr(SEL1 + 4, 0x0600_0000);
    r.program(6, KeySet::K0);
    r.wr(SEL1 + 4, 0x0600_0001);
    assert_eq!(r.rd(SEL1 + 8), sts::SECURE);
    r.mem.write(MEM + 64, &[7; 64]).unwrap();
    assert_eq!(r.ide.link_stats().ide_tlps, 1, "on stream 1 by address");
    r.wr(SEL0 + 4, 0x0500_0000 | ctl::DEFAULT | ctl::EN);
    r.mem.write(MEM + 64, &[7; 64]).unwrap();
    assert_eq!(
        r.ide.link_stats().ide_tlps,
        2,
        "address match beats the default stream"
    );
    // Outside the association: the default stream, enabled but insecure: refused.
    let mut far = Rig::new(IdeConfig::default());
    far.wr(SEL0 + 4, ctl::DEFAULT | ctl::EN);
    assert!(far.mem.write(MEM, &[1]).is_err());
    assert_eq!(far.ide.link_stats().refused, 1);
    // SECURE required (TDISP RUN): no stream at all means no DMA.
    let strict = Rig::new(IdeConfig::default());
    strict.ide.set_require_secure(true);
    assert!(strict.mem.write(MEM, &[1]).is_err());
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "trustdev-ide-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

use vfio_user_server::dma::Access;
