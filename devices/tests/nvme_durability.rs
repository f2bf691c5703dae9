//! Durability of file-backed namespaces, at two levels:
//!
//! - the controller's write-cache semantics, against a medium that behaves
//!   like a disk with a volatile cache (what is not synced is lost at a
//!   power cut): every write completed before a completed Flush, every FUA
//!   write, every write with the cache disabled and every write-through
//!   write is on stable storage when its command completes;
//! - a server crash (SIGKILL of `trustdev serve`): the page cache survives
//!   it, so everything the server completed reads back after a restart on
//!   the same image (this alone cannot tell whether Flush syncs; the
//!   power-cut test in tests/e2e_nvme.rs can).

mod nvme_common;

use nvme_common::{args, connect, pattern, ChildServer, InProcess, TempDir};
use std::sync::{Arc, Mutex};
use trustdev_devices::nvme::backend::{
    Backend, BackendError, CacheMode, Dst, FileBackend, Medium, Src,
};
use trustdev_devices::nvme::host::HostDriver;
use trustdev_devices::nvme::namespace::Namespace;
use trustdev_devices::nvme::options::{NsBacking, NvmeConfig};
use trustdev_devices::nvme::spec::{admin, cns, feat, io, Command, Status};
use trustdev_devices::nvme::NvmeDevice;
use vfio_user_server::client::Client;
use vfio_user_server::pci::PortType;

const CHUNK: usize = 32 * 1024;

fn lbas(n: u64) -> impl Iterator<Item = u64> {
    // Scattered over a 16 MiB image, 32 KiB apart at least.
    (0..n).map(|i| (i * 7919 % 512) * (CHUNK as u64 / 512))
}

/// What the model medium saw, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write { off: u64, len: usize, durable: bool },
    Zero { off: u64, len: u64 },
    Sync,
}

#[derive(Debug)]
struct ModelState {
    /// What reads see (the volatile cache over the stable image).
    current: Vec<u8>,
    /// What survives a power cut.
    stable: Vec<u8>,
    log: Vec<Op>,
}

/// A disk with a volatile write cache: writes reach `stable` only when
/// asked to be durable or at a sync.
#[derive(Debug, Clone)]
struct VolatileDisk(Arc<Mutex<ModelState>>);

impl VolatileDisk {
    fn new(len: usize) -> VolatileDisk {
        VolatileDisk(Arc::new(Mutex::new(ModelState {
            current: vec![0; len],
            stable: vec![0; len],
            log: Vec::new(),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ModelState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `len` bytes at `off` as a power cut now would leave them.
    fn stable(&self, off: u64, len: usize) -> Vec<u8> {
        self.state().stable[off as usize..off as usize + len].to_vec()
    }

    fn syncs(&self) -> usize {
        self.state().log.iter().filter(|o| **o == Op::Sync).count()
    }
}

impl Medium for VolatileDisk {
    fn len(&self) -> u64 {
        self.state().current.len() as u64
    }

    fn read_at(&self, off: u64, dst: Dst<'_>) -> Result<(), BackendError> {
        let st = self.state();
        let src = &st.current[off as usize..off as usize + dst.len()];
        match dst {
            Dst::Guest(g) => g.copy_from(0, src).expect("guest view"),
            Dst::Buf(b) => b.copy_from_slice(src),
        }
        Ok(())
    }

    fn write_at(&self, off: u64, src: Src<'_>, durable: bool) -> Result<(), BackendError> {
        let mut data = vec![0u8; src.len()];
        match src {
            Src::Guest(g) => g.copy_to(0, &mut data).expect("guest view"),
            Src::Buf(b) => data.copy_from_slice(b),
        }
        let mut st = self.state();
        let r = off as usize..off as usize + data.len();
        st.current[r.clone()].copy_from_slice(&data);
        if durable {
            st.stable[r].copy_from_slice(&data);
        }
        st.log.push(Op::Write {
            off,
            len: data.len(),
            durable,
        });
        Ok(())
    }

    fn zero(&self, off: u64, len: u64, _deallocate: bool) -> Result<(), BackendError> {
        let mut st = self.state();
        st.current[off as usize..(off + len) as usize].fill(0);
        st.log.push(Op::Zero { off, len });
        Ok(())
    }

    fn sync(&self) -> Result<(), BackendError> {
        let mut st = self.state();
        st.stable = st.current.clone();
        st.log.push(Op::Sync);
        Ok(())
    }

    fn describe(&self) -> String {
        "volatile-cache disk model".into()
    }
}

/// An in-process controller whose namespace 1 is a 16 MiB file backend
/// over a fresh [`VolatileDisk`], and a driver with two I/O queue pairs.
fn model_rig(mode: CacheMode) -> (InProcess, HostDriver<Client>, VolatileDisk) {
    let disk = VolatileDisk::new(16 << 20);
    let medium = disk.clone();
    let srv = InProcess::with(move |socket| {
        let mut a = args();
        a.size = Some(16 << 20);
        let cfg = NvmeConfig::from_args(&a, &socket.display().to_string()).unwrap();
        let backend: Arc<dyn Backend> = Arc::new(FileBackend::with_medium(medium, mode));
        let ids = cfg.namespaces[0].clone();
        assert_eq!(ids.backing, NsBacking::Ram(16 << 20));
        let ns = Namespace::with_backend(1, backend, cfg.lba_shift, &ids);
        NvmeDevice::with_namespaces(cfg, PortType::Endpoint, vec![Arc::new(ns)]).unwrap()
    });
    let (mut d, _v) = connect(&srv.socket, 16 << 20);
    d.create_io_queues(2, 128).unwrap();
    (srv, d, disk)
}

fn assert_stable(disk: &VolatileDisk, lba: u64, want: &[u8], what: &str) {
    let got = disk.stable(lba * 512, want.len());
    assert!(
        got == want,
        "LBA {lba}: {what} is not on stable storage (a power cut now would lose it); medium log: {:?}",
        disk.state().log
    );
}

fn set_features(d: &mut HostDriver<Client>, fid: u8, v: u32) {
    d.admin_ok(Command {
        opcode: admin::SET_FEATURES,
        cdw: [u32::from(fid), v, 0, 0, 0, 0],
        ..Default::default()
    })
    .unwrap();
}

/// Write-back: a completed Flush (of one namespace or all) leaves every
/// write completed before it on stable storage; FUA writes and writes
/// with the volatile cache disabled are stable when they complete;
/// unflushed writes are not (the model loses them, as a power cut would).
#[test]
fn write_back_flush_fua_and_disabled_cache_are_durable() {
    let (_srv, mut d, disk) = model_rig(CacheMode::WriteBack);
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    assert_eq!(id[525] & 1, 1, "volatile write cache reported");
    for (i, lba) in lbas(64).enumerate() {
        let q = 1 + (i % 2) as u16;
        d.write_blocks(q, 1, lba, &pattern(lba, 1, CHUNK)).unwrap();
    }
    d.flush(1, 1).unwrap();
    for lba in lbas(64) {
        assert_stable(&disk, lba, &pattern(lba, 1, CHUNK), "a write before Flush");
    }
    // Generation 2 over half, flushed with the broadcast NSID from queue 2.
    for lba in lbas(32) {
        d.write_blocks(2, 1, lba, &pattern(lba, 2, CHUNK)).unwrap();
    }
    d.flush(2, 0xffff_ffff).unwrap();
    for lba in lbas(32) {
        assert_stable(
            &disk,
            lba,
            &pattern(lba, 2, CHUNK),
            "a write before Flush (all namespaces)",
        );
    }
    // Unflushed writes stay volatile: the model (and the test) can tell.
    let syncs = disk.syncs();
    for lba in lbas(8) {
        d.write_blocks(1, 1, lba, &pattern(lba, 3, CHUNK)).unwrap();
        assert!(disk.stable(lba * 512, CHUNK) == pattern(lba, 2, CHUNK));
    }
    assert_eq!(disk.syncs(), syncs, "plain writes sync nothing");
    // FUA: durable at completion, without a Flush.
    let lba = lbas(40).last().unwrap();
    let buf = d.mem.alloc(4096, 4096);
    d.mem.write(buf, &pattern(lba, 4, 4096));
    let mut w = d.rw_command(true, 1, lba, buf, 8);
    w.cdw[2] |= 1 << 30;
    let c = d.io_cmd(1, w).unwrap();
    assert!(Status(c.status).is_success());
    assert_stable(&disk, lba, &pattern(lba, 4, 4096), "a FUA write");
    // Volatile write cache disabled: what it held becomes durable, and
    // every later write is durable at completion.
    set_features(&mut d, feat::VOLATILE_WC, 0);
    for lba in lbas(8) {
        assert_stable(
            &disk,
            lba,
            &pattern(lba, 3, CHUNK),
            "cache contents at VWC disable",
        );
    }
    let lba = lbas(41).last().unwrap();
    d.write_blocks(2, 1, lba, &pattern(lba, 5, CHUNK)).unwrap();
    assert_stable(
        &disk,
        lba,
        &pattern(lba, 5, CHUNK),
        "a write with VWC disabled",
    );
    // Write Zeroes with the cache off: durable too.
    let z = Command {
        opcode: io::WRITE_ZEROES,
        nsid: 1,
        cdw: [lba as u32, 0, 63, 0, 0, 0],
        ..Default::default()
    };
    assert!(Status(d.io_cmd(1, z).unwrap().status).is_success());
    assert_stable(&disk, lba, &[0; CHUNK], "Write Zeroes with VWC disabled");
    // Re-enabled: plain writes are volatile again; a normal shutdown
    // (CC.SHN) makes them durable.
    set_features(&mut d, feat::VOLATILE_WC, 1);
    let lba = lbas(42).last().unwrap();
    d.write_blocks(1, 1, lba, &pattern(lba, 6, CHUNK)).unwrap();
    assert!(disk.stable(lba * 512, CHUNK) != pattern(lba, 6, CHUNK));
    d.shutdown().unwrap();
    assert_stable(
        &disk,
        lba,
        &pattern(lba, 6, CHUNK),
        "a write before shutdown",
    );
}

/// Write-through: no volatile cache is reported and every write, and
/// every Write Zeroes, is on stable storage when it completes.
#[test]
fn write_through_completes_only_durable_writes() {
    let (_srv, mut d, disk) = model_rig(CacheMode::WriteThrough);
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    assert_eq!(id[525] & 1, 0, "write-through: no volatile write cache");
    for (i, lba) in lbas(32).enumerate() {
        let q = 1 + (i % 2) as u16;
        d.write_blocks(q, 1, lba, &pattern(lba, 7, CHUNK)).unwrap();
        assert_stable(&disk, lba, &pattern(lba, 7, CHUNK), "a write-through write");
    }
    let lba = lbas(3).last().unwrap();
    let z = Command {
        opcode: io::WRITE_ZEROES,
        nsid: 1,
        cdw: [lba as u32, 0, 63, 0, 0, 0],
        ..Default::default()
    };
    assert!(Status(d.io_cmd(2, z).unwrap().status).is_success());
    assert_stable(&disk, lba, &[0; CHUNK], "a write-through Write Zeroes");
    assert!(disk
        .state()
        .log
        .iter()
        .all(|o| !matches!(o, Op::Write { durable: false, .. })));
}

#[test]
fn completed_writes_survive_a_server_crash() {
    let dir = TempDir::new("dur");
    let img = dir.path("disk.img");
    let sock = dir.path("nvme.sock");
    let img_s = img.display().to_string();

    let srv = ChildServer::start(&sock, &["--file", &img_s, "--size", "16M"]);
    let (mut d, _v) = connect(&srv.socket, 16 << 20);
    d.create_io_queues(2, 128).unwrap();
    for (i, lba) in lbas(64).enumerate() {
        let q = 1 + (i % 2) as u16;
        d.write_blocks(q, 1, lba, &pattern(lba, 1, CHUNK)).unwrap();
    }
    d.flush(1, 1).unwrap();
    // Completed but unflushed writes: the page cache outlives the server.
    for lba in lbas(32) {
        d.write_blocks(2, 1, lba, &pattern(lba, 2, CHUNK)).unwrap();
    }
    srv.kill9();
    drop(d);

    let srv = ChildServer::start(&sock, &["--file", &img_s]);
    let (mut d, _v) = connect(&srv.socket, 16 << 20);
    let ns = d.identify(cns::NS, 1, 0).unwrap();
    assert_eq!(
        u64::from_le_bytes(ns[0..8].try_into().unwrap()),
        (16 << 20) / 512
    );
    d.create_io_queues(1, 64).unwrap();
    for (i, lba) in lbas(64).enumerate() {
        let want_gen = if i < 32 { 2 } else { 1 };
        let got = d.read_blocks(1, 1, lba, CHUNK).unwrap();
        assert!(got == pattern(lba, want_gen, CHUNK), "lba {lba}: lost");
    }
    // The image on disk holds the same bytes.
    let raw = std::fs::read(&img).unwrap();
    let lba = lbas(40).last().unwrap();
    let off = lba as usize * 512;
    assert!(raw[off..off + CHUNK] == pattern(lba, 1, CHUNK)[..]);
}

#[test]
fn write_through_survives_a_server_crash() {
    let dir = TempDir::new("durwt");
    let img = dir.path("disk.img");
    let sock = dir.path("nvme.sock");
    let img_s = img.display().to_string();
    let srv = ChildServer::start(
        &sock,
        &["--file", &img_s, "--size", "8M", "--cache", "writethrough"],
    );
    let (mut d, _v) = connect(&srv.socket, 16 << 20);
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    assert_eq!(id[525] & 1, 0, "write-through: no volatile write cache");
    d.create_io_queues(1, 64).unwrap();
    for lba in lbas(16) {
        let lba = lba / 2;
        d.write_blocks(1, 1, lba, &pattern(lba, 5, 4096)).unwrap();
    }
    srv.kill9();
    drop(d);
    let srv = ChildServer::start(&sock, &["--file", &img_s, "--cache", "writethrough"]);
    let (mut d, _v) = connect(&srv.socket, 16 << 20);
    d.create_io_queues(1, 64).unwrap();
    for lba in lbas(16) {
        let lba = lba / 2;
        assert!(d.read_blocks(1, 1, lba, 4096).unwrap() == pattern(lba, 5, 4096));
    }
}
