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
//! ```text
//! cargo build --release -p trustdev-devices --bins --examples
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
use vfio_user_server::protocol::{DmaMapRequest, DmaProt};

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
        &DmaMapRequest {
            prot: DmaProt {
                read: true,
                write: true,
            },
            offset: 0,
            address: 0x1000_0000,
            size: 1 << 20,
        },
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
        "link" => link_bench(secs, &sizes),
        "nvme" => nvme_bench(secs, qd, mps, shadow, &variants),
        _ => what_usage(),
    }
}

fn what_usage() -> ! {
    eprintln!("usage: ide_bench link [--seconds S] [--sizes 128,256,...] | nvme [--seconds S] [--qd N] [--mps N] [--doorbells shadow|trap] [--variants off,idle,secure]");
    std::process::exit(2)
}
