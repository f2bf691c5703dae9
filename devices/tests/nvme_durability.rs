//! Durability: a file-backed namespace written (and flushed) by a client,
//! then the server killed with SIGKILL; after a restart on the same image
//! every flushed block reads back intact (and, with the write-through
//! cache policy, every completed write).

mod nvme_common;

use nvme_common::{connect, pattern, ChildServer, TempDir};
use trustdev_devices::nvme::spec::cns;

const CHUNK: usize = 32 * 1024;

fn lbas(n: u64) -> impl Iterator<Item = u64> {
    // Scattered over the 16 MiB image, 32 KiB apart at least.
    (0..n).map(|i| (i * 7919 % 512) * (CHUNK as u64 / 512))
}

#[test]
fn flushed_data_survives_kill_9() {
    let dir = TempDir::new("dur");
    let img = dir.path("disk.img");
    let sock = dir.path("nvme.sock");
    let img_s = img.display().to_string();

    let srv = ChildServer::start(&sock, &["--file", &img_s, "--size", "16M"]);
    let (mut d, _v) = connect(&srv.socket, 16 << 20);
    let id = d.identify(cns::CTRL, 0, 0).unwrap();
    assert_eq!(
        id[525] & 1,
        1,
        "write-back file: volatile write cache reported"
    );
    d.create_io_queues(2, 128).unwrap();
    for (i, lba) in lbas(64).enumerate() {
        let q = 1 + (i % 2) as u16;
        d.write_blocks(q, 1, lba, &pattern(lba, 1, CHUNK)).unwrap();
    }
    d.flush(1, 1).unwrap();
    // Generation 2 over half the blocks, flushed again with the broadcast NSID.
    for lba in lbas(32) {
        d.write_blocks(2, 1, lba, &pattern(lba, 2, CHUNK)).unwrap();
    }
    d.flush(2, 0xffff_ffff).unwrap();
    // Unflushed writes after that: may or may not survive; not checked.
    for lba in lbas(8) {
        d.write_blocks(1, 1, lba + 1, &pattern(lba, 3, 512))
            .unwrap();
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
        let want = pattern(lba, want_gen, CHUNK);
        // The first block of the gen-2 chunks saw an unflushed overwrite of
        // its second block: compare the rest exactly.
        assert!(got[..512] == want[..512], "lba {lba}: first block");
        assert!(got[1024..] == want[1024..], "lba {lba}: flushed data lost");
    }
    // The image on disk holds the same bytes.
    let raw = std::fs::read(&img).unwrap();
    let lba = lbas(40).last().unwrap();
    let off = lba as usize * 512;
    assert!(raw[off..off + CHUNK] == pattern(lba, 1, CHUNK)[..]);
}

#[test]
fn write_through_survives_kill_9_without_flush() {
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
