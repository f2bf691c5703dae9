//! Benchmarks of the IDE link model.
//!
//! `link`: payload throughput of the modelled link per core (device writes:
//! MWr sealed by the device, opened and verified by the host end, landed in
//! guest memory; device reads: MRd + CplD), single thread, at several TLP
//! payload sizes (Max_Payload_Size), and in the same run the raw ring
//! AES-256-GCM seal+open speed on buffers of the same size; the ratio is
//! link / raw.
//!
//! `nvme`: host-side 4 KiB random I/O IOPS per server core against
//! `trustdev serve nvme` (a child process) with IDE off, with the IDE
//! capability present but no stream, and with a SECURE selective stream
//! (set up over DOE/SPDM/IDE_KM by this process, as a TSM would), all in
//! one invocation.
//!
//! `crypto`: the AES-256-GCM candidates for the link, per core, on TLP
//! payloads of each size with a 20-byte AAD (IDE prefix + 4-DW header):
//! ring seal+open with its 128-bit tag (the baseline of `link`), and the
//! whole cost of one IDE TLP with a 96-bit MAC (seal at the transmitter,
//! verify-and-decrypt at the receiver) with ring the way the link does it
//! (open as two seals), with ring for the keystream plus RustCrypto's GHASH
//! and AES for the tag, with RustCrypto's AES-GCM alone, and (built with
//! `--features openssl-bench`, needs libssl-dev) OpenSSL's EVP AES-GCM.
//!
//! ```text
//! cargo build --release -p trustdev-devices --bins --examples
//! target/release/examples/ide_bench crypto [--seconds S] [--sizes 128,256,512,4096]
//! target/release/examples/ide_bench link [--seconds S] [--sizes 128,256,512,4096]
//! target/release/examples/ide_bench nvme [--seconds S] [--qd N] [--mps 128|256|512] [--doorbells shadow|trap]
//!     [--variants off,idle,secure]
//! ```

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use spdm_responder::idekm::{IdeKey, IdeKmBackend, KeyDirection, KeySet, KeySlot, SubStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trustdev_devices::nvme::host::{HostDriver, HostMemory};

#[path = "common/bench.rs"]
mod bench_util;
use bench_util::{cpu_seconds, IOVA};
use spdm_responder::idekm::regs::StreamSettings;
use trustdev_devices::security::ide::host;
use trustdev_devices::security::ide::km::IdeKmPorts;
use trustdev_devices::security::ide::{Ide, IdeConfig};
use vfio_user_server::client::Client;
use vfio_user_server::dma::GuestMemory;
use vfio_user_server::protocol::DmaMapRequest;

/// CPU time of the calling thread.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Runs `f` repeatedly for about `secs` of this thread's CPU time; returns
/// bytes per CPU second.
fn rate(secs: f64, bytes_per_call: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..8 {
        f();
    }
    let c0 = thread_cpu();
    let mut n = 0u64;
    while thread_cpu() - c0 < secs {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    (n as f64 * bytes_per_call as f64) / (thread_cpu() - c0)
}

fn key(slot: KeySlot) -> IdeKey {
    IdeKey::new([0x42 ^ slot.to_byte(); 32], 1)
}

fn link_bench(secs: f64, sizes: &[usize]) {
    // A device with IDE, stream 0 SECURE (keys through the IDE_KM backend),
    // guest memory behind its link.
    let ide = Ide::new(IdeConfig::default());
    let mut cfg = ide.function_config_space().expect("configuration space");
    // Selective stream 0 (after the one link stream block): ID 5, Default;
    // keys through the IDE_KM backend; then Enable.
    let sel0_ctl = 0x100 + 0x0c + 8 + 4;
    cfg.write(sel0_ctl, &((5u32 << 24) | (1 << 22)).to_le_bytes());
    let mut km = IdeKmPorts::new(vec![Arc::clone(&ide)]);
    for d in KeyDirection::ALL {
        for ss in SubStream::ALL {
            let s = KeySlot::new(KeySet::K0, d, ss);
            km.key_prog(1, 0, 5, s, key(s)).unwrap();
            km.key_set_go(1, 0, 5, s).unwrap();
        }
    }
    cfg.write(sel0_ctl, &((5u32 << 24) | (1 << 22) | 1).to_le_bytes());
    assert!(ide.is_secure(5), "stream SECURE");
    let mem = Arc::new(GuestMemory::new(4));
    let fd =
        nix::sys::memfd::memfd_create(c"bench", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
    let f = std::fs::File::from(fd);
    f.set_len(1 << 20).unwrap();
    mem.map(
        &DmaMapRequest::read_write(0x1000_0000, 1 << 20),
        Some(f.into()),
    )
    .unwrap();
    if mem.set_interposer(ide.link_model()).is_err() {
        panic!("interposer");
    }
    let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
    let aad = [0u8; 20];
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>8} {:>8}",
        "TLP", "ring seal+open", "link write", "link read", "write/raw", "read/raw"
    );
    const ACCESS: usize = 64 << 10;
    for &size in sizes {
        // Max_Payload_Size = Max_Read_Request_Size = size.
        ide.set_tlp_sizes(size, size);
        let mut buf = vec![0x5au8; size];
        let mut n = 0u64;
        let raw = rate(secs, size, || {
            n += 1;
            let mut iv = [0u8; 12];
            iv[4..].copy_from_slice(&n.to_be_bytes());
            let tag = raw_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(&aad),
                    &mut buf,
                )
                .unwrap();
            raw_key
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(iv),
                    Aad::from(&aad),
                    tag,
                    &mut buf,
                    0..,
                )
                .unwrap();
        });
        let data = vec![0xa5u8; ACCESS];
        let w = rate(secs, ACCESS, || mem.write(0x1000_0000, &data).unwrap());
        let mut back = vec![0u8; ACCESS];
        let r = rate(secs, ACCESS, || mem.read(0x1000_0000, &mut back).unwrap());
        assert!(back == data);
        println!(
            "{size:>6} {:>11.2} GB/s {:>9.2} GB/s {:>9.2} GB/s {:>8.3} {:>8.3}",
            raw / 1e9,
            w / 1e9,
            r / 1e9,
            w / raw,
            r / raw
        );
    }
    let s = ide.link_stats();
    println!(
        "link: {} IDE TLPs verified, {} integrity failures",
        s.ide_tlps, s.integrity_failures
    );
}

/// One TLP's crypto with a 96-bit MAC: seal at the transmitter, open at
/// the receiver (which must verify before it releases the plaintext).
trait Candidate {
    fn name(&self) -> &'static str;
    fn tlp(&mut self, invocation: u64, aad: &[u8], buf: &mut [u8]);
}

fn nonce(n: u64) -> Nonce {
    Nonce::assume_unique_for_key(IdeKey::iv(n))
}

/// ring, receiver as in the link (devices/src/security/ide/aead.rs): ring's
/// open takes only a full 128-bit tag, so the receiver seals the ciphertext
/// (decrypting it) and seals the plaintext again (for the tag over the
/// ciphertext): 3 GCM passes per TLP.
struct RingThreePass(LessSafeKey, Vec<u8>);

impl Candidate for RingThreePass {
    fn name(&self) -> &'static str {
        "ring 3-pass"
    }
    fn tlp(&mut self, n: u64, aad: &[u8], buf: &mut [u8]) {
        let t = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf)
            .unwrap();
        let _ = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf);
        self.1.clear();
        self.1.extend_from_slice(buf);
        let t2 = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf)
            .unwrap();
        assert_eq!(t.as_ref()[..12], t2.as_ref()[..12]);
    }
}

/// ring for the keystream (the receiver seals the ciphertext to decrypt
/// it), the tag recomputed over the ciphertext with RustCrypto's GHASH and
/// one AES block: GHASH(H; AAD, C) xor AES_K(J0).
struct RingGhash(LessSafeKey, aes::Aes256, ghash::GHash);

impl RingGhash {
    fn new(k: &[u8; 32]) -> Self {
        use aes::cipher::{BlockEncrypt, KeyInit};
        let aes = aes::Aes256::new(k.into());
        let mut h = [0u8; 16].into();
        aes.encrypt_block(&mut h);
        let gh = <ghash::GHash as ghash::universal_hash::KeyInit>::new(&h);
        RingGhash(
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).unwrap()),
            aes,
            gh,
        )
    }
}

impl Candidate for RingGhash {
    fn name(&self) -> &'static str {
        "ring+GHASH"
    }
    fn tlp(&mut self, n: u64, aad: &[u8], buf: &mut [u8]) {
        use aes::cipher::BlockEncrypt;
        use ghash::universal_hash::UniversalHash;
        let t = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf)
            .unwrap();
        let mut g = self.2.clone();
        g.update_padded(aad);
        g.update_padded(buf);
        let mut lens = [0u8; 16];
        lens[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lens[8..].copy_from_slice(&(buf.len() as u64 * 8).to_be_bytes());
        g.update(&[lens.into()]);
        let mut j0 = [0u8; 16];
        j0[..12].copy_from_slice(&IdeKey::iv(n));
        j0[15] = 1;
        let mut j0 = j0.into();
        self.1.encrypt_block(&mut j0);
        let mut tag = g.finalize();
        tag.iter_mut().zip(j0.iter()).for_each(|(a, b)| *a ^= b);
        let _ = self
            .0
            .seal_in_place_separate_tag(nonce(n), Aad::from(aad), buf);
        assert_eq!(t.as_ref()[..12], tag[..12]);
    }
}

type Gcm96 = aes_gcm::AesGcm<aes::Aes256, aes_gcm::aead::consts::U12, aes_gcm::aead::consts::U12>;

/// RustCrypto's AES-GCM with a 96-bit tag: one pass each way.
struct RustCrypto(Gcm96);

impl Candidate for RustCrypto {
    fn name(&self) -> &'static str {
        "RustCrypto"
    }
    fn tlp(&mut self, n: u64, aad: &[u8], buf: &mut [u8]) {
        use aes_gcm::aead::AeadInPlace;
        let iv = IdeKey::iv(n).into();
        let t = self.0.encrypt_in_place_detached(&iv, aad, buf).unwrap();
        self.0.decrypt_in_place_detached(&iv, aad, buf, &t).unwrap();
    }
}

/// OpenSSL's EVP AES-256-GCM with a 12-byte tag, key schedules set once,
/// only the IV per TLP: one pass each way.
#[cfg(feature = "openssl-bench")]
struct OpenSsl(
    openssl::cipher_ctx::CipherCtx,
    openssl::cipher_ctx::CipherCtx,
);

#[cfg(feature = "openssl-bench")]
impl OpenSsl {
    fn new(k: &[u8; 32]) -> Self {
        use openssl::cipher::Cipher;
        use openssl::cipher_ctx::CipherCtx;
        let mut e = CipherCtx::new().unwrap();
        e.encrypt_init(Some(Cipher::aes_256_gcm()), Some(k), None)
            .unwrap();
        let mut d = CipherCtx::new().unwrap();
        d.decrypt_init(Some(Cipher::aes_256_gcm()), Some(k), None)
            .unwrap();
        OpenSsl(e, d)
    }
}

#[cfg(feature = "openssl-bench")]
impl Candidate for OpenSsl {
    fn name(&self) -> &'static str {
        "OpenSSL"
    }
    fn tlp(&mut self, n: u64, aad: &[u8], buf: &mut [u8]) {
        let iv = IdeKey::iv(n);
        let (e, d) = (&mut self.0, &mut self.1);
        let len = buf.len();
        e.encrypt_init(None, None, Some(&iv)).unwrap();
        e.cipher_update(aad, None).unwrap();
        e.cipher_update_inplace(buf, len).unwrap();
        e.cipher_final(&mut []).unwrap();
        let mut tag = [0u8; 12];
        e.tag(&mut tag).unwrap();
        d.decrypt_init(None, None, Some(&iv)).unwrap();
        d.set_tag(&tag).unwrap();
        d.cipher_update(aad, None).unwrap();
        d.cipher_update_inplace(buf, len).unwrap();
        d.cipher_final(&mut []).unwrap();
    }
}

fn crypto_bench(secs: f64, sizes: &[usize]) {
    let k = [7u8; 32];
    let ring = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).unwrap());
    let mut cands: Vec<Box<dyn Candidate>> = vec![
        Box::new(RingThreePass(
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).unwrap()),
            Vec::new(),
        )),
        Box::new(RingGhash::new(&k)),
        {
            use aes_gcm::aead::KeyInit;
            Box::new(RustCrypto(Gcm96::new(&k.into())))
        },
    ];
    #[cfg(feature = "openssl-bench")]
    cands.push(Box::new(OpenSsl::new(&k)));
    let aad = [0x92u8; 20];
    print!("{:>6} {:>16}", "TLP", "ring seal+open");
    for c in &cands {
        print!(" {:>16}", c.name());
    }
    println!("   (GB/s of payload per core; in parentheses: / ring seal+open)");
    for &size in sizes {
        let mut buf = vec![0x5au8; size];
        let base = rate(secs, size, || {
            let t = ring
                .seal_in_place_separate_tag(nonce(1), Aad::from(&aad), &mut buf)
                .unwrap();
            ring.open_in_place_separate_tag(nonce(1), Aad::from(&aad), t, &mut buf, 0..)
                .unwrap();
        });
        print!("{size:>6} {:>11.2} GB/s", base / 1e9);
        for c in cands.iter_mut() {
            let mut n = 0u64;
            let r = rate(secs, size, || {
                n += 1;
                c.tlp(n, &aad, &mut buf);
            });
            print!(" {:>5.2} GB/s ({:.2})", r / 1e9, r / base);
        }
        println!();
    }
}

fn nvme_bench(secs: f64, qd: usize, mps: usize, shadow: bool, variants: &[String]) {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("trustdev")))
        .unwrap_or_else(|| PathBuf::from("trustdev"));
    let dir = std::env::temp_dir().join(format!("ide-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id_dir = dir.join("identity");
    for variant in ["IDE off", "IDE idle", "IDE SECURE"] {
        if !variants
            .iter()
            .any(|v| variant.eq_ignore_ascii_case(&format!("IDE {v}")))
        {
            continue;
        }
        let sock = dir.join("nvme.sock");
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(&exe);
        cmd.args(["serve", "nvme", "--socket"])
            .arg(&sock)
            .args(["--size", "1G", "--workers", "1", "--identity-dir"])
            .arg(&id_dir);
        if variant == "IDE off" {
            cmd.args(["--ide", "off"]);
        }
        if !shadow {
            cmd.arg("--no-shadow-doorbells");
        }
        let mut server: Child = cmd
            .env("RUST_LOG", "warn,trustdev_devices::security::ide=info")
            .spawn()
            .expect("trustdev serve nvme");
        while !sock.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut c = Client::connect(&sock).unwrap();
        let mem = HostMemory::new(IOVA, 16 << 20).unwrap();
        mem.dma_map(&mut c).unwrap();
        // Max_Payload_Size (DevCtl of the PCIe capability) as firmware sets it.
        let pcie = find_cap(&mut c, 0x10).expect("PCIe capability");
        let devctl = c.read32(7, u64::from(pcie + 8)).unwrap();
        let enc = (mps / 128).trailing_zeros();
        c.write32(
            7,
            u64::from(pcie + 8),
            (devctl & !0xe0 & 0xffff) | (enc << 5),
        )
        .unwrap();
        let pid = server.id();
        let run = |d: &mut dyn FnMut(bool) -> u64| {
            for write in [false, true] {
                let (c0, t0) = (cpu_seconds(pid), Instant::now());
                let done = d(write);
                let (cpu, wall) = (cpu_seconds(pid) - c0, t0.elapsed().as_secs_f64());
                println!(
                    "{variant:<11} 4k rand{:<5} QD{qd}: {:>8.0} IOPS {:>9.0} IOPS/server-core ({done} I/Os)",
                    if write { "write" } else { "read" },
                    done as f64 / wall,
                    done as f64 / cpu.max(1e-9)
                );
            }
        };
        if variant == "IDE SECURE" {
            let roots: Vec<Vec<u8>> = ["ecp256", "ecp384"]
                .iter()
                .filter_map(|a| std::fs::read(id_dir.join(a).join("root.cert.pem")).ok())
                .flat_map(|p| spdm_responder::identity::parse_certs(&p).unwrap_or_default())
                .collect();
            let mut host = host::connect(c, roots).expect("SPDM session");
            let sel = StreamSettings::endpoint(1, 0);
            host.setup(0, &sel).unwrap();
            host.program(1, KeySet::K0, key).unwrap();
            assert_eq!(host.enable(0, &sel).unwrap(), 2, "stream SECURE");
            let mut d = HostDriver::enable(host, mem, 32).unwrap();
            d.create_io_queues(1, 1024).unwrap();
            if shadow {
                d.enable_shadow_doorbells().unwrap();
            }
            run(&mut |w| bench_util::run(&mut d, w, qd, secs).0);
            assert_eq!(d.bar.status(0).unwrap(), 2, "still SECURE");
        } else {
            let mut d = HostDriver::enable(c, mem, 32).unwrap();
            d.create_io_queues(1, 1024).unwrap();
            if shadow {
                d.enable_shadow_doorbells().unwrap();
            }
            run(&mut |w| bench_util::run(&mut d, w, qd, secs).0);
        }
        // Disconnect first: the server logs the link's TLP counts on reset.
        std::thread::sleep(Duration::from_millis(200));
        let _ = server.kill();
        let _ = server.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn find_cap(c: &mut Client, id: u8) -> Option<u16> {
    let mut p = c.read32(7, 0x34).ok()? as u16 & 0xfc;
    for _ in 0..48 {
        if p == 0 {
            return None;
        }
        let h = c.read32(7, u64::from(p)).ok()?;
        if h as u8 == id {
            return Some(p);
        }
        p = (h >> 8) as u16 & 0xfc;
    }
    None
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let (mut secs, mut qd, mut mps) = (2.0f64, 32usize, 256usize);
    let mut shadow = true;
    let mut variants: Vec<String> = ["off", "idle", "secure"].map(String::from).to_vec();
    let mut sizes = vec![128usize, 256, 512, 4096];
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--seconds" => secs = v.parse().unwrap_or(secs),
            "--qd" => qd = v.parse().unwrap_or(qd),
            "--mps" => mps = v.parse().unwrap_or(mps),
            "--sizes" => sizes = v.split(',').filter_map(|s| s.parse().ok()).collect(),
            "--doorbells" => shadow = v != "trap",
            "--variants" => variants = v.split(',').map(String::from).collect(),
            _ => what_usage(),
        }
    }
    match what.as_str() {
        "crypto" => crypto_bench(secs, &sizes),
        "link" => link_bench(secs, &sizes),
        "nvme" => nvme_bench(secs, qd, mps, shadow, &variants),
        _ => what_usage(),
    }
}

fn what_usage() -> ! {
    eprintln!("usage: ide_bench crypto|link [--seconds S] [--sizes 128,256,...] | nvme [--seconds S] [--qd N] [--mps N] [--doorbells shadow|trap] [--variants off,idle,secure]");
    std::process::exit(2)
}
