//! `trustdev serve` as a user runs it, driven over vfio-user like a guest
//! kernel would: config space reads and the DOE mailbox registers carry CMA/
//! SPDM to the device's responder.
//!
//! - PSK sessions are off unless `--psk` is given (no PSK_CAP in CAPABILITIES,
//!   PSK_EXCHANGE refused); with `--psk @FILE --psk-hint` a PSK session works;
//!   a key file readable by others is refused at startup.
//! - Every device instance has its own Device Serial Number, and the leaf
//!   certificate's CMA otherName is, byte for byte, the string Linux's
//!   `pci_cma_construct_san()` builds from the configuration space.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spdm_responder::codec::caps;
use spdm_responder::error::TransportError;
use spdm_responder::psk::PskEntry;
use spdm_responder::transport::doe::{DoeChannel, DoeTransport};
use spdm_responder::{Requester, RequesterConfig};
use vfio_user_server::client::Client;
use vfio_user_server::protocol::region;

mod scratch;
use scratch::Scratch;

/// A `trustdev serve KIND` child, killed when dropped.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn start(kind: &str, socket: &Path, identity: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trustdev"))
            .args(["serve", kind, "--socket"])
            .arg(socket)
            .args(extra)
            .env("TRUSTDEV_IDENTITY_DIR", identity)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn trustdev serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("trustdev serve {kind} exited: {st}");
            }
            assert!(Instant::now() < deadline, "no socket after 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Served {
            child,
            socket: socket.to_path_buf(),
        }
    }

    /// A vfio-user client (the server serves one at a time: drop the last
    /// one first). Retries while the socket is bound but not yet listening.
    fn connect(&self) -> Function {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::connect(&self.socket) {
                Ok(c) => return Function { c },
                Err(e) if Instant::now() > deadline => panic!("vfio-user connect: {e:?}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A function's configuration space over vfio-user.
struct Function {
    c: Client,
}

impl Function {
    fn cfg32(&mut self, off: u64) -> u32 {
        self.c.read32(region::CONFIG, off).unwrap()
    }

    /// Offset of an extended capability.
    fn ext_cap(&mut self, id: u16) -> Option<u64> {
        let mut off = 0x100u64;
        for _ in 0..64 {
            let h = self.cfg32(off);
            if h & 0xFFFF == u32::from(id) {
                return Some(off);
            }
            off = u64::from(h >> 20);
            if off < 0x100 {
                return None;
            }
        }
        None
    }

    /// Exactly what Linux's `pci_cma_construct_san()` formats for this
    /// function (drivers/pci/cma.c): vendor, device, `pdev->class` (the
    /// 24-bit class code), revision; SSVID/SSID for a type-0 header; the DSN
    /// (`pci_get_dsn()`: upper dword at +8, lower at +4) when non-zero.
    fn kernel_cma_san(&mut self) -> String {
        let id = self.cfg32(0);
        let class_rev = self.cfg32(8);
        let hdr_type = (self.cfg32(0x0C) >> 16) & 0x7F;
        let mut name = format!(
            "Vendor={:04x}:Device={:04x}:CC={:06x}:REV={:02x}",
            id & 0xFFFF,
            id >> 16,
            class_rev >> 8,
            class_rev & 0xFF
        );
        if hdr_type == 0 {
            let ss = self.cfg32(0x2C);
            name += &format!(":SSVID={:04x}:SSID={:04x}", ss & 0xFFFF, ss >> 16);
        }
        if let Some(serial) = self.dsn().filter(|s| *s != 0) {
            name += &format!(":{serial:016x}");
        }
        name
    }

    /// The Device Serial Number capability's value.
    fn dsn(&mut self) -> Option<u64> {
        let at = self.ext_cap(0x0003)?;
        Some(u64::from(self.cfg32(at + 8)) << 32 | u64::from(self.cfg32(at + 4)))
    }

    /// A requester over the DOE mailbox.
    fn requester(self, cfg: RequesterConfig) -> Requester<DoeTransport<Mailbox>> {
        let mut f = self;
        let base = f.ext_cap(0x002E).expect("DOE capability");
        Requester::new(cfg, DoeTransport::new(Mailbox { f, base }))
    }
}

/// The DOE mailbox registers (PCIe r6.x §7.9.24): control +8 (GO bit 31),
/// status +0xC (Data Object Ready bit 31), write mailbox +0x10, read mailbox
/// +0x14 (a write advances it).
struct Mailbox {
    f: Function,
    base: u64,
}

impl DoeChannel for Mailbox {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        let io = |e: vfio_user_server::client::ClientError| {
            TransportError::Io(std::io::Error::other(e.to_string()))
        };
        let (c, b) = (&mut self.f.c, self.base);
        for d in obj.chunks(4) {
            let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            c.write32(region::CONFIG, b + 0x10, v).map_err(io)?;
        }
        c.write32(region::CONFIG, b + 0x08, 1 << 31).map_err(io)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.read32(region::CONFIG, b + 0x0C).map_err(io)? & (1 << 31) == 0 {
            if Instant::now() > deadline {
                return Err(TransportError::Malformed("DOE: no Data Object Ready"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut out = Vec::new();
        let mut len = 2usize;
        while out.len() / 4 < len {
            let d = c.read32(region::CONFIG, b + 0x14).map_err(io)?;
            c.write32(region::CONFIG, b + 0x14, 0).map_err(io)?;
            out.extend_from_slice(&d.to_le_bytes());
            if out.len() == 8 {
                len = (d & 0x3_FFFF) as usize;
            }
        }
        Ok(out)
    }
}

fn roots(identity: &Path, kind: &str) -> Vec<Vec<u8>> {
    ["ecp256", "ecp384"]
        .iter()
        .map(|a| {
            let pem = std::fs::read(identity.join(kind).join(a).join("root.cert.pem")).unwrap();
            spdm_responder::identity::parse_certs(&pem)
                .unwrap()
                .remove(0)
        })
        .collect()
}

fn requester_config(roots: Vec<Vec<u8>>, psk: Option<PskEntry>) -> RequesterConfig {
    RequesterConfig {
        trusted_roots: roots,
        psk,
        ..RequesterConfig::default()
    }
}

/// `trustdev serve nvme` without flags: no PSK_CAP, PSK_EXCHANGE refused.
/// With `--psk @FILE --psk-hint`: a PSK session works, a wrong key does not.
#[test]
fn psk_sessions_only_with_psk() {
    let d = Scratch::new("psk");
    let identity = d.path("identity");
    let key = b"\x8f\x11trustdev test key, not DMTF's";
    let plain = Served::start("nvme", &d.path("a.sock"), &identity, &[]);
    let mut r = plain.connect().requester(requester_config(
        roots(&identity, "nvme"),
        Some(PskEntry::new(b"td", key.to_vec().into()).unwrap()),
    ));
    let c = r.init_connection().unwrap().clone();
    assert_ne!(c.rsp_caps & caps::KEY_EX, 0, "sessions are on");
    assert_eq!(c.rsp_caps & caps::PSK_MASK, 0, "no PSK_CAP without --psk");
    let e = r.psk_exchange(0).unwrap_err();
    assert!(e.to_string().contains("UnsupportedRequest"), "{e}");
    drop(r);
    // The DMTF test key is not accepted either.
    let mut r = plain.connect().requester(requester_config(
        roots(&identity, "nvme"),
        Some(PskEntry::dmtf_test()),
    ));
    r.init_connection().unwrap();
    assert!(r.psk_exchange(0).is_err());
    drop(r);
    drop(plain);

    let file = d.path("psk.bin");
    std::fs::write(&file, key).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let arg = format!("@{}", file.display());
    let mut refused = Command::new(env!("CARGO_BIN_EXE_trustdev"))
        .args(["serve", "nvme", "--socket"])
        .arg(d.path("b.sock"))
        .args(["--psk", &arg])
        .env("TRUSTDEV_IDENTITY_DIR", &identity)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = refused.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!("trustdev serve started with a PSK file readable by others");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!d.path("b.sock").exists());

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with = Served::start(
        "nvme",
        &d.path("b.sock"),
        &identity,
        &["--psk", &arg, "--psk-hint", "td"],
    );
    let mut r = with.connect().requester(requester_config(
        roots(&identity, "nvme"),
        Some(PskEntry::new(b"td", key.to_vec().into()).unwrap()),
    ));
    let c = r.init_connection().unwrap().clone();
    assert_eq!(c.rsp_caps & caps::PSK_MASK, caps::PSK_WITH_CONTEXT);
    let s = r.psk_exchange(0).unwrap();
    r.heartbeat(s).unwrap();
    r.key_update(s, true).unwrap();
    r.get_measurements(Some(s), 0xFF, false, 0).unwrap();
    r.end_session(s).unwrap();
    drop(r);
    // Another key under the same hint: the handshake fails.
    let mut r = with.connect().requester(requester_config(
        roots(&identity, "nvme"),
        Some(PskEntry::new(b"td", b"wrong key".to_vec().into()).unwrap()),
    ));
    r.init_connection().unwrap();
    assert!(r.psk_exchange(0).is_err());
}

/// The CMA otherName of every instance matches what the kernel builds from
/// that instance's configuration space, DSN included; instances differ.
#[test]
fn cma_othername_matches_the_kernel_per_instance() {
    let d = Scratch::new("san");
    let identity = d.path("identity");
    let a = Served::start("dma-copy", &d.path("a.sock"), &identity, &[]);
    let b = Served::start("dma-copy", &d.path("b.sock"), &identity, &["--rciep"]);
    let c = Served::start(
        "dma-copy",
        &d.path("c.sock"),
        &identity,
        &["--dsn", "0123456789abcdef"],
    );
    let n = Served::start("nvme", &d.path("n.sock"), &identity, &["--size", "1M"]);
    let mut seen = Vec::new();
    for (served, kind) in [
        (&a, "dma-copy"),
        (&b, "dma-copy"),
        (&c, "dma-copy"),
        (&n, "nvme"),
    ] {
        let mut f = served.connect();
        let dsn = f.dsn().expect("a DSN capability");
        assert_ne!(dsn, 0);
        let want = f.kernel_cma_san();
        let mut r = f.requester(requester_config(roots(&identity, kind), None));
        r.init_connection().unwrap();
        r.get_digests().unwrap();
        let chain = r.get_certificate(0).unwrap();
        let hash = r.connection().hash.unwrap();
        let certs = spdm_responder::identity::parse_spdm_chain(&chain, hash).unwrap();
        let got = spdm_responder::identity::leaf_other_name(certs.last().unwrap()).unwrap();
        assert_eq!(got.as_bytes(), want.as_bytes(), "{kind}");
        r.authenticate(0).unwrap();
        drop(r);
        seen.push((dsn, got));
    }
    assert_eq!(seen[2].0, 0x0123_4567_89ab_cdef, "--dsn");
    assert!(seen[2].1.ends_with(":0123456789abcdef"));
    for i in 0..seen.len() {
        for j in i + 1..seen.len() {
            assert_ne!(seen[i].0, seen[j].0, "instances {i} and {j} share a DSN");
        }
    }
    // Restarting an instance keeps its DSN (derived from the socket path).
    drop(a);
    let a = Served::start("dma-copy", &d.path("a.sock"), &identity, &[]);
    assert_eq!(a.connect().dsn().unwrap(), seen[0].0);
}
