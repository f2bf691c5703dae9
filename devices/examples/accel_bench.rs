//! Accelerator benchmarks (docs/PERFORMANCE.md): the device served in this
//! process over vfio-user, driven by the project's client with pipelined
//! descriptors on one queue and one worker, each figure next to its
//! baseline measured in the same run:
//!
//! - memmove throughput per worker vs a memcpy of the same bytes (the same
//!   copy primitive on the same memory, without the device), per size;
//! - descriptors per second for small transfers (64 B memmove, NOP);
//! - AES-256-GCM encrypt, CRC-32C and SHA-256 offload vs the raw crate on
//!   the same sizes and the same walk over memory (ring, crc32c, sha2);
//! - memmove through a PASID (ATS translations from the client's IOMMU
//!   model, scattered 4 KiB pages), same memcpy baseline;
//! - the crate choices: ring vs RustCrypto AES-256-GCM, sha2 vs ring SHA-256.
//!
//! Device and baseline runs alternate (7 pairs, 3 with `--quick`); printed
//! for each: the medians of the device and baseline throughputs and of the
//! per-pair ratios, per wall-clock second and per second on a CPU (the
//! device's worker thread; the baseline's thread). On a shared machine the
//! pairs see similar load, and the on-CPU figures do not depend on how long
//! other processes keep a thread off the CPUs.
//!
//! `cargo run --release -p trustdev-devices --example accel_bench`
//! (`-- --quick` for a short run, `-- --only SECTION` for one of memmove,
//! small, offload, pasid, crates).

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};
use trustdev_devices::accel::desc::{flags, opcode, status, AesParams, Descriptor};
use trustdev_devices::accel::host::{AccelHost, HostQueue, RingSpace};
use trustdev_devices::accel::regs::{ctrl, queue};
use trustdev_devices::accel::{AccelConfig, AccelDevice};
use vfio_user_server::dma::{Access, GuestMemory};
use vfio_user_server::iommu::{IommuModel, PTE_W};
use vfio_user_server::protocol::DmaMapRequest;
use vfio_user_server::protocol::{irq_index, IrqAction, IrqData};
use vfio_user_server::Server;

const IOVA: u64 = 0x1_0000_0000;
/// Source and destination regions of this size each; copies walk them.
const REGION: usize = 32 << 20;
const RING: u32 = 4096;
const U: RingSpace = RingSpace::Untranslated;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Offset of the `i`-th transfer of `size` bytes: a walk over the region,
/// so data is not cache-resident between transfers.
fn offsets(i: usize, size: usize) -> u64 {
    ((i * size) % (REGION - size).max(1)) as u64
}

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// A throughput measured two ways: per wall-clock second, and per second
/// the working thread (the device's worker, or the baseline's thread) was
/// on a CPU. On a shared, oversubscribed machine the second is the stable
/// one; both are printed.
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

/// Time on a CPU from a schedstat file (its first field, in ns).
fn schedstat(path: &std::path::Path) -> Duration {
    let ns = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    schedstat(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// CPU time of this process's thread named `comm`.
fn named_thread_cpu(comm: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim() == comm))
        .map_or(Duration::ZERO, |t| schedstat(&t.path().join("schedstat")))
}

/// Runs `f` (moving `bytes`), timing the wall clock and `cpu()`.
fn rate(bytes: usize, cpu: impl Fn() -> Duration, f: impl FnOnce()) -> Rate {
    let (c0, t0) = (cpu(), Instant::now());
    f();
    let (wall, on_cpu) = (t0.elapsed(), cpu().saturating_sub(c0));
    Rate {
        wall: gbps(bytes, wall),
        cpu: gbps(bytes, on_cpu.max(Duration::from_nanos(1))),
    }
}

/// Alternates `reps` runs of `dev` and `base` (GB/s each); prints medians
/// and the median per-pair ratio.
fn compare(
    what: &str,
    reps: usize,
    mut dev: impl FnMut() -> Rate,
    mut base: impl FnMut() -> Rate,
    base_name: &str,
) {
    let mut v: [Vec<f64>; 6] = Default::default();
    for _ in 0..reps {
        let x = dev();
        let y = base();
        for (i, val) in [x.wall, y.wall, x.wall / y.wall, x.cpu, y.cpu, x.cpu / y.cpu]
            .into_iter()
            .enumerate()
        {
            v[i].push(val);
        }
    }
    let m: Vec<f64> = v.into_iter().map(median).collect();
    println!(
        "{what:<30} wall {:>6.2} vs {base_name} {:>6.2} GB/s = {:>4.2} | on-CPU {:>6.2} vs {:>6.2} GB/s = {:>4.2}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
}

struct Bench {
    host: AccelHost,
    q: HostQueue,
    /// MSI-X vector 0: the driver sleeps on it while a batch runs.
    irq: EventFd,
    src: u64,
    dst: u64,
    params: u64,
}

impl Bench {
    /// Runs `count` descriptors made by `make(i)` in batches of a quarter
    /// ring, up to three batches outstanding (the ring never overflows);
    /// returns the elapsed time.
    fn pipeline(&mut self, count: usize, make: &dyn Fn(usize) -> Descriptor) -> Duration {
        let batch = (RING / 4) as usize;
        let mut outstanding = std::collections::VecDeque::new();
        let t0 = Instant::now();
        let mut i = 0;
        while i < count || !outstanding.is_empty() {
            while i < count && outstanding.len() < 3 {
                let n = (count - i).min(batch);
                let mut last = 0;
                for k in 0..n {
                    let mut d = make(i + k);
                    d.flags |= flags::COMPLETION;
                    if k + 1 == n {
                        // One interrupt per batch, as a driver would ask.
                        d.flags |= flags::INTERRUPT;
                    }
                    let slot = self.host.push(&mut self.q, d);
                    last = self.q.record(slot);
                }
                self.host.ring(&self.q);
                outstanding.push_back(last);
                i += n;
            }
            let rec = outstanding.pop_front().expect("a batch is outstanding");
            loop {
                if let Some(c) = self.host.completion(self.q.space, rec) {
                    assert_eq!(c.status, status::SUCCESS, "{c:?}");
                    break;
                }
                if self.host.client.pasid().is_some() {
                    // The device may be waiting for a translation.
                    self.host
                        .client
                        .serve_requests(Duration::from_micros(200))
                        .expect("serve translations");
                } else {
                    // Sleep until the batch's interrupt (bounded: re-check).
                    let mut p = [PollFd::new(self.irq.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut p, PollTimeout::from(10u8));
                    let _ = self.irq.read();
                }
            }
        }
        t0.elapsed()
    }

    /// One device run of `count` descriptors of `size` bytes (on-CPU: the
    /// device's worker thread).
    fn device(&mut self, count: usize, size: usize, make: &dyn Fn(usize) -> Descriptor) -> Rate {
        rate(
            count * size,
            || named_thread_cpu("accel-w0"),
            || {
                self.pipeline(count, make);
            },
        )
    }
}

/// One memcpy run over the same walk, with the device's copy primitive.
fn memcpy(mem: &GuestMemory, src: u64, dst: u64, size: usize, count: usize) -> Rate {
    rate(count * size, thread_cpu, || {
        for i in 0..count {
            let o = offsets(i, size);
            mem.with_slice(src + o, size, Access::Read, |s| {
                mem.with_slice(dst + o, size, Access::Write, |d| s.copy_to_slice(&d))
            })
            .and_then(|r| r)
            .and_then(|r| r)
            .expect("memcpy baseline");
        }
    })
}

/// One run of `f(i)` for `iters` transfers of `size` bytes.
fn raw(size: usize, iters: usize, mut f: impl FnMut(usize)) -> Rate {
    rate(iters * size, thread_cpu, || {
        for i in 0..iters {
            f(i);
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let run = |section: &str| only.as_deref().map_or(true, |o| o == section);
    let reps = if quick { 3 } else { 7 };
    let scale = if quick { 4 } else { 1 };

    let dir = std::env::temp_dir().join(format!("accel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("accel.sock");
    let dev = AccelDevice::new(AccelConfig {
        queues: 1,
        workers: 1,
        ..AccelConfig::default()
    })
    .expect("accelerator");
    let mut server = Server::new(dev, &socket).expect("server");
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.run().expect("serve"));

    let mem_len = 2 * REGION + (4 << 20);
    let model = IommuModel::new(0x4000_0000, 40 << 20).expect("IOMMU model");
    let mut host = AccelHost::connect(&socket, IOVA, mem_len, Some(model)).expect("connect");
    host.enable_translation(64).expect("PASID/ATS/PRI");
    let q = host.setup_queue(0, RING);
    let irq = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd");
    host.client
        .set_irqs(
            irq_index::MSIX,
            0,
            1,
            IrqData::Eventfd,
            IrqAction::Trigger,
            &[irq.as_raw_fd()],
        )
        .expect("MSI-X eventfd");
    host.set_qreg(0, queue::VECTOR, 0);
    host.set_qreg(0, queue::CTRL, ctrl::ENABLE | ctrl::IRQ);
    let src = host.alloc(REGION, 4096);
    let dst = host.alloc(REGION, 4096);
    let params = host.alloc(0x50, 64);
    let p = AesParams {
        key: [0x42; 32],
        nonce: [7; 12],
        aad_len: 0,
        aad_addr: 0,
        rsvd: 0,
        tag: [0; 16],
    };
    host.write(U, params, &p.encode());
    // Non-zero data everywhere; destinations touched (no first-touch faults).
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 131 % 251) as u8).collect();
    for o in (0..REGION).step_by(1 << 20) {
        host.write(U, src + o as u64, &chunk);
        host.write(U, dst + o as u64, &chunk);
    }
    let base_mem = GuestMemory::new(4);
    let fd = host
        .memory_fd()
        .as_fd()
        .try_clone_to_owned()
        .expect("memfd");
    base_mem
        .map(&DmaMapRequest::read_write(IOVA, mem_len as u64), Some(fd))
        .expect("baseline mapping");
    let mut arena: Vec<u8> = (0..REGION).map(|i| (i * 131 % 251) as u8).collect();
    let mut b = Bench {
        host,
        q,
        irq,
        src,
        dst,
        params,
    };
    println!(
        "accel_bench: 1 queue, 1 worker, ring {RING}; {reps} alternating device/baseline runs, \
         medians; client and device in one process over a UNIX socket; {} CPUs online, \
         load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (s, d, pa) = (b.src, b.dst, b.params);

    if run("memmove") {
        println!("\nmemmove throughput per worker (untranslated; walks two 32 MiB regions):");
        for &size in &[4096usize, 65536, 262144, 1 << 20] {
            let count = ((1 << 30) / size / scale).max(64);
            let make = move |i: usize| Descriptor {
                opcode: opcode::MEMMOVE,
                src: s + offsets(i, size),
                dst: d + offsets(i, size),
                len: size as u32,
                ..Descriptor::default()
            };
            let bm = &base_mem;
            let bb = &mut b;
            compare(
                &format!("memmove {} KiB", size / 1024),
                reps,
                || bb.device(count, size, &make),
                || memcpy(bm, s, d, size, count),
                "memcpy",
            );
        }
    }

    if run("small") {
        println!("\ndescriptors per second, small transfers:");
        for (name, op, size) in [
            ("memmove 64 B", opcode::MEMMOVE, 64u32),
            ("nop", opcode::NOP, 0),
        ] {
            let count = 400_000 / scale;
            let (mut wall, mut cpu) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let c0 = named_thread_cpu("accel-w0");
                let t = b.pipeline(count, &|i| Descriptor {
                    opcode: op,
                    src: if size > 0 { s + offsets(i, 64) } else { 0 },
                    dst: if size > 0 { d + offsets(i, 64) } else { 0 },
                    len: size,
                    ..Descriptor::default()
                });
                let on = named_thread_cpu("accel-w0").saturating_sub(c0);
                wall.push(count as f64 / t.as_secs_f64());
                cpu.push(count as f64 / on.as_secs_f64().max(1e-9));
            }
            println!(
                "{name:<30} wall {:>9.0} descriptors/s | per worker on-CPU second {:>9.0}",
                median(wall),
                median(cpu)
            );
        }
    }

    if run("offload") {
        println!("\noffload vs the raw crate (same sizes, same walk over 32 MiB of data):");
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[0x42; 32]).expect("key"),
        );
        for &size in &[65536usize, 1 << 20] {
            let count = ((512 << 20) / size / scale).max(32);
            let kib = size / 1024;
            let aes = move |i: usize| Descriptor {
                opcode: opcode::AES_GCM_ENCRYPT,
                src: s + offsets(i, size),
                dst: d + offsets(i, size),
                len: size as u32,
                arg2: pa,
                ..Descriptor::default()
            };
            let (bb, ar) = (&mut b, &mut arena);
            compare(
                &format!("AES-256-GCM encrypt {kib} KiB"),
                reps,
                || bb.device(count, size, &aes),
                || {
                    raw(size, count, |i| {
                        let o = offsets(i, size) as usize;
                        let tag = key.seal_in_place_separate_tag(
                            ring::aead::Nonce::assume_unique_for_key([7; 12]),
                            ring::aead::Aad::empty(),
                            &mut ar[o..o + size],
                        );
                        let _ = std::hint::black_box(tag.expect("seal"));
                    })
                },
                "ring",
            );
            let crc = move |i: usize| Descriptor {
                opcode: opcode::CRC32C,
                src: s + offsets(i, size),
                len: size as u32,
                ..Descriptor::default()
            };
            let (bb, ar) = (&mut b, &arena);
            compare(
                &format!("CRC-32C {kib} KiB"),
                reps,
                || bb.device(count, size, &crc),
                || {
                    raw(size, count, |i| {
                        let o = offsets(i, size) as usize;
                        std::hint::black_box(crc32c::crc32c(&ar[o..o + size]));
                    })
                },
                "crc32c",
            );
            let sha = move |i: usize| Descriptor {
                opcode: opcode::SHA256,
                src: s + offsets(i, size),
                dst: d + (i % 1024) as u64 * 64,
                len: size as u32,
                ..Descriptor::default()
            };
            let bb = &mut b;
            compare(
                &format!("SHA-256 {kib} KiB"),
                reps,
                || bb.device(count / 4, size, &sha),
                || {
                    raw(size, count / 4, |i| {
                        use sha2::Digest;
                        let o = offsets(i, size) as usize;
                        std::hint::black_box(sha2::Sha256::digest(&ar[o..o + size]));
                    })
                },
                "sha2",
            );
        }
    }

    if run("pasid") {
        println!("\nmemmove through a PASID (ATS, scattered 4 KiB pages, ATC warm after run 1):");
        let pasid = 1;
        let len = 16usize << 20;
        let (va_src, va_dst) = (0x7f00_0000_0000u64, 0x7f80_0000_0000u64);
        let m = b.host.iommu();
        m.bind(pasid).expect("bind");
        for va in [va_src, va_dst] {
            for k in 0..(len as u64 / 4096) {
                let page = m.alloc_page().expect("page");
                // Pairs of pages swapped: virtually contiguous, never physically.
                m.map(pasid, va + (k ^ 1) * 4096, page, PTE_W).expect("map");
            }
        }
        for &size in &[65536usize, 1 << 20] {
            let count = ((512 << 20) / size / scale).max(64);
            let make = move |i: usize| Descriptor {
                opcode: opcode::MEMMOVE,
                flags: flags::PASID,
                pasid,
                src: va_src + ((i * size) % (len - size)) as u64,
                dst: va_dst + ((i * size) % (len - size)) as u64,
                len: size as u32,
                ..Descriptor::default()
            };
            let bm = &base_mem;
            let bb = &mut b;
            compare(
                &format!("memmove {} KiB via PASID", size / 1024),
                reps,
                || bb.device(count, size, &make),
                || memcpy(bm, s, d, size, count),
                "memcpy",
            );
        }
        let served = b.host.client.pasid().map_or(0, |p| p.translations_served);
        println!("  ({served} translation requests served by the client's IOMMU model)");
    }

    if run("crates") {
        println!("\ncrate choices (raw, in-cache buffers):");
        for &size in &[65536usize, 1 << 20] {
            let iters = ((256 << 20) / size / scale).max(16);
            let kib = size / 1024;
            let mut buf = chunk[..size].to_vec();
            let key = ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[1; 32]).expect("key"),
            );
            use aes_gcm::aead::AeadInPlace;
            use aes_gcm::KeyInit;
            let rc = aes_gcm::Aes256Gcm::new_from_slice(&[1; 32]).expect("key");
            let cell = std::cell::RefCell::new(&mut buf);
            compare(
                &format!("AES-256-GCM {kib} KiB: ring"),
                reps,
                || {
                    raw(size, iters, |_| {
                        let _ = key.seal_in_place_separate_tag(
                            ring::aead::Nonce::assume_unique_for_key([0; 12]),
                            ring::aead::Aad::empty(),
                            &mut cell.borrow_mut()[..],
                        );
                    })
                },
                || {
                    raw(size, iters, |_| {
                        let _ = rc.encrypt_in_place_detached(
                            (&[0u8; 12]).into(),
                            b"",
                            &mut cell.borrow_mut()[..],
                        );
                    })
                },
                "RustCrypto",
            );
            let data = &chunk[..size];
            compare(
                &format!("SHA-256 {kib} KiB: sha2"),
                reps,
                || {
                    raw(size, iters / 4, |_| {
                        use sha2::Digest;
                        std::hint::black_box(sha2::Sha256::digest(data));
                    })
                },
                || {
                    raw(size, iters / 4, |_| {
                        std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, data));
                    })
                },
                "ring",
            );
        }
    }
    stop.stop();
    let _ = thread.join();
    let _ = std::fs::remove_dir_all(&dir);
}
