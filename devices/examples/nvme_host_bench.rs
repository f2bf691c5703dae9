//! Host-side NVMe benchmark (no VM): a user-space NVMe driver in this
//! process drives `trustdev serve nvme` (a child process, RAM namespace)
//! over vfio-user with 4 KiB random reads or writes, and reports IOPS, IOPS
//! per server CPU-second (the server's utime + stime from /proc), latency
//! percentiles, and the same loop with the controller replaced by a memcpy
//! of each 4 KiB block (the floor: what moving the data costs).
//!
//! ```text
//! cargo build -p trustdev-devices --bins --examples
//! target/debug/examples/nvme_host_bench [--seconds 5] [--qd 32] [--doorbells shadow|poll|trap]
//! ```

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use trustdev_devices::nvme::host::{Bar0, HostDriver, HostMemory};
use trustdev_devices::nvme::spec::reg;
use vfio_user_server::client::Client;
use vfio_user_server::protocol::REGION_FLAG_MMAP;

#[path = "common/bench.rs"]
mod bench_util;
use bench_util::{cpu_seconds, run, Rng, IOVA};

/// BAR0 with doorbells written into the mmapped page (poll mode).
struct Mapped {
    c: Client,
    map: *mut u8,
    len: usize,
}

impl Bar0 for Mapped {
    fn read_reg32(&mut self, off: u64) -> u32 {
        self.c.read32(0, off).unwrap_or(u32::MAX)
    }
    fn write_reg32(&mut self, off: u64, v: u32) {
        if off >= reg::DOORBELLS && ((off - reg::DOORBELLS) as usize) < self.len {
            // SAFETY: inside the live shared mapping of the doorbell page.
            unsafe {
                std::ptr::write_volatile(
                    self.map.add((off - reg::DOORBELLS) as usize) as *mut u32,
                    v,
                )
            };
        } else {
            let _ = self.c.region_write_posted(0, off, &v.to_le_bytes());
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn memcpy_floor(secs: f64) -> f64 {
    let src = vec![7u8; 64 << 20];
    let mut dst = vec![0u8; 4096 * 32];
    let mut rng = Rng(99);
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..1024 {
            let off = (rng.next() % (src.len() as u64 / 4096)) as usize * 4096;
            let slot = (n % 32) as usize * 4096;
            dst[slot..slot + 4096].copy_from_slice(&src[off..off + 4096]);
            n += 1;
        }
    }
    std::hint::black_box(&dst);
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let mut secs = 5.0;
    let mut qd = 32usize;
    let mut mode = "shadow".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => secs = args.next().and_then(|v| v.parse().ok()).unwrap_or(secs),
            "--qd" => qd = args.next().and_then(|v| v.parse().ok()).unwrap_or(qd),
            "--doorbells" => mode = args.next().unwrap_or(mode),
            _ => {
                eprintln!(
                    "usage: nvme_host_bench [--seconds S] [--qd N] [--doorbells shadow|poll|trap]"
                );
                std::process::exit(2);
            }
        }
    }
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("trustdev")))
        .unwrap_or_else(|| PathBuf::from("trustdev"));
    let dir = std::env::temp_dir().join(format!("nvme-host-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("nvme.sock");
    let mut cmd = Command::new(&exe);
    cmd.args(["serve", "nvme", "--socket"])
        .arg(&sock)
        .args(["--size", "1G", "--workers", "1"]);
    if mode == "poll" {
        cmd.args(["--doorbells", "poll"]);
    }
    if mode == "trap" {
        cmd.arg("--no-shadow-doorbells");
    }
    let mut server: Child = cmd
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start trustdev serve nvme");
    while !sock.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Client::connect(&sock).unwrap();
    let mem = HostMemory::new(IOVA, 16 << 20).unwrap();
    mem.dma_map(&mut c).unwrap();
    let report = |name: &str, done: u64, mut lat: Vec<u64>, wall: f64, cpu: f64, floor: f64| {
        lat.sort_unstable();
        let iops = done as f64 / wall;
        println!(
            "{name:<28} {:>9.0} IOPS  {:>9.0} IOPS/server-core  p50 {:>7.1} us  p99 {:>7.1} us  p99.9 {:>7.1} us  ({:.4} of the memcpy floor)",
            iops,
            done as f64 / cpu.max(1e-9),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            iops / floor
        );
    };
    let floor = memcpy_floor(1.0);
    println!("memcpy-only 4 KiB loop: {floor:.0} copies/s (the floor)");
    let pid = server.id();
    macro_rules! bench {
        ($d:expr) => {{
            let d = $d;
            d.create_io_queues(1, 1024).unwrap();
            if mode == "shadow" {
                d.enable_shadow_doorbells().unwrap();
            }
            for write in [false, true] {
                let cpu0 = cpu_seconds(pid);
                let t0 = Instant::now();
                let (done, lat) = run(d, write, qd, secs);
                let wall = t0.elapsed().as_secs_f64();
                let cpu = cpu_seconds(pid) - cpu0;
                let name = format!(
                    "4k rand{} QD{qd} {mode}",
                    if write { "write" } else { "read" }
                );
                report(&name, done, lat, wall, cpu, floor);
            }
            println!(
                "driver: {} doorbell register writes, {} shadow-only updates",
                d.stats.doorbell_writes, d.stats.shadow_only
            );
        }};
    }
    if mode == "poll" {
        let info = c.region_info(0).unwrap();
        assert_ne!(info.flags & REGION_FLAG_MMAP, 0);
        let area = info.sparse[0];
        let fd = info.fd.unwrap();
        // SAFETY: maps the server's doorbell page (shared memfd).
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                area.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                (info.offset + area.offset) as i64,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let bar = Mapped {
            c,
            map: map.cast(),
            len: area.size as usize,
        };
        let mut d = HostDriver::enable(bar, mem, 32).unwrap();
        bench!(&mut d);
    } else {
        let mut d = HostDriver::enable(c, mem, 32).unwrap();
        bench!(&mut d);
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
