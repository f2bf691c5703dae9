//! NVMe through a SECURE IDE stream, host side: `trustdev serve nvme
//! --ide-trace FILE` as a child process; this process authenticates it over
//! the DOE mailbox, programs IDE keys (K0), enables a selective stream, and
//! writes and reads back data with the user-space NVMe driver, refreshing to
//! K1 in the middle; then every TLP in the server's trace decrypts with the
//! keys programmed here (RustCrypto AES-256-GCM with a 96-bit tag), every
//! counter counts up from its IFV, and no plaintext block is on the wire.

use spdm_responder::idekm::regs::StreamSettings;
use spdm_responder::idekm::{IdeKey, KeySet, KeySlot};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use trustdev_devices::nvme::host::{HostDriver, HostMemory};
use trustdev_devices::security::ide::host;
use trustdev_devices::security::ide::trace::{read_trace, verify};
use vfio_user_server::client::Client;

struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key(set: KeySet, slot: KeySlot) -> IdeKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13) ^ slot.to_byte() ^ (0x80 * set as u8);
    }
    IdeKey::new(k, 0xa000 + u64::from(slot.to_byte()))
}

#[test]
fn nvme_data_through_a_secure_stream_with_key_refresh() {
    let dir = std::env::temp_dir().join(format!("trustdev-ide-nvme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("nvme.sock");
    let trace = dir.join("wire.pcap");
    let id_dir = dir.join("identity");
    let child = Command::new(env!("CARGO_BIN_EXE_trustdev"))
        .args(["serve", "nvme", "--socket"])
        .arg(&sock)
        .args(["--size", "64M", "--workers", "1", "--identity-dir"])
        .arg(&id_dir)
        .arg("--ide-trace")
        .arg(&trace)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let server = Server { child, dir };
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Client::connect(&sock).unwrap();
    let mem = HostMemory::new(0x1_0000_0000, 8 << 20).unwrap();
    mem.dma_map(&mut c).unwrap();
    let roots: Vec<Vec<u8>> = ["ecp256", "ecp384"]
        .iter()
        .filter_map(|a| std::fs::read(id_dir.join(a).join("root.cert.pem")).ok())
        .flat_map(|p| spdm_responder::identity::parse_certs(&p).unwrap())
        .collect();
    let mut host = host::connect(c, roots).unwrap();
    let sel = StreamSettings::endpoint(7, 0);
    host.setup(0, &sel).unwrap();
    host.program(7, KeySet::K0, |s| key(KeySet::K0, s)).unwrap();
    assert_eq!(host.enable(0, &sel).unwrap(), 2, "SECURE");
    let mut d = HostDriver::enable(host, mem, 32).unwrap();
    d.create_io_queues(1, 256).unwrap();
    let data: Vec<u8> = (0..64 * 1024)
        .map(|i| (i as u8) ^ ((i >> 9) as u8))
        .collect();
    d.write_blocks(1, 1, 0, &data).unwrap();
    assert!(d.read_blocks(1, 1, 0, data.len()).unwrap() == data);
    // Refresh to K1 between I/Os, then retire K0.
    d.bar
        .program(7, KeySet::K1, |s| key(KeySet::K1, s))
        .unwrap();
    d.write_blocks(1, 1, 1024, &data[..32768]).unwrap();
    d.bar.stop(7, KeySet::K0).unwrap();
    assert!(d.read_blocks(1, 1, 1024, 32768).unwrap() == data[..32768]);
    assert!(d.read_blocks(1, 1, 0, data.len()).unwrap() == data);
    assert_eq!(d.bar.status(0).unwrap(), 2, "still SECURE");
    d.bar.end().unwrap();
    drop(d); // disconnect: the server resets the device and flushes the trace
    let t = Instant::now();
    let recs = loop {
        let r = read_trace(&trace).unwrap_or_default();
        if r.iter().any(|x| x.key_set == 1) || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(recs.len() > 100, "{} TLPs", recs.len());
    verify(&recs, |_, slot| key(slot.set, slot), |_, _| {}).unwrap();
    assert!(recs.iter().all(|r| r.verified && r.stream_id == 7));
    assert!(recs.iter().any(|r| r.key_set == 0) && recs.iter().any(|r| r.key_set == 1));
    // The data blocks were on the wire only as ciphertext.
    for r in &recs {
        assert!(
            !r.payload.windows(64).any(|w| w == &data[4096..4160]),
            "plaintext on the wire"
        );
    }
    drop(server);
}
