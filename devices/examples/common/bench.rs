//! Helpers the host-side benchmarks share (included with `#[path]`): the
//! CPU time of a server process, a small PRNG, and a 4 KiB random I/O loop
//! at a fixed queue depth through the user-space NVMe driver.

#![allow(dead_code)]

use std::time::{Duration, Instant};
use trustdev_devices::nvme::host::{Bar0, HostDriver};
use trustdev_devices::nvme::spec::Status;

/// IOVA of the benchmark's guest memory.
pub const IOVA: u64 = 0x1_0000_0000;
/// 4 KiB blocks of the 1 GiB namespace.
pub const BLOCKS: u64 = (1 << 30) / 4096;

/// CPU time (user + system) of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no side effects.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// xorshift64.
pub struct Rng(pub u64);
impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 4 KiB random reads or writes at queue depth `qd` on I/O queue 1 for
/// `secs` seconds: (I/Os done, per-I/O latencies in ns).
pub fn run<B: Bar0>(d: &mut HostDriver<B>, write: bool, qd: usize, secs: f64) -> (u64, Vec<u64>) {
    let bufs: Vec<u64> = (0..qd).map(|_| d.mem.alloc(4096, 4096)).collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut started = vec![Instant::now(); 1 << 16];
    let mut slot_of = vec![0usize; 1 << 16];
    let mut lat = Vec::new();
    let mut done = 0u64;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    for (i, &b) in bufs.iter().enumerate() {
        let c = d.rw_command(write, 1, (rng.next() % BLOCKS) * 8, b, 8);
        let cid = d.push(1, c);
        started[cid as usize] = Instant::now();
        slot_of[cid as usize] = i;
    }
    d.ring(1);
    let mut inflight = qd;
    while inflight > 0 {
        let Some(c) = d.poll(1) else {
            std::hint::spin_loop();
            continue;
        };
        assert!(
            Status(c.status).is_success(),
            "I/O failed: {}",
            Status(c.status)
        );
        lat.push(started[c.cid as usize].elapsed().as_nanos() as u64);
        done += 1;
        inflight -= 1;
        if Instant::now() < deadline {
            let b = bufs[slot_of[c.cid as usize]];
            let cmd = d.rw_command(write, 1, (rng.next() % BLOCKS) * 8, b, 8);
            let cid = d.push(1, cmd);
            started[cid as usize] = Instant::now();
            slot_of[cid as usize] = slot_of[c.cid as usize];
            d.ring(1);
            inflight += 1;
        }
    }
    (done, lat)
}
