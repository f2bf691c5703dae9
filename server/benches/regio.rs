//! Region-access round trips and guest-memory copy bandwidth.
//!
//! ```text
//! cargo bench -p vfio-user-server --bench regio
//! cargo bench -p vfio-user-server --bench regio -- --external SOCKET --region 2 --offset 0x8
//! ```
//! (the second line measures, e.g., libvfio-user's `samples/gpio-pci-idio-16`,
//! whose BAR2 callback accepts any access; see docs/PERFORMANCE.md).
//!
//! The default run starts two servers in child processes (this binary re-executed
//! with a hidden argument), connects to each with [`Client`] and measures, in
//! alternating rounds (the order rotates every round):
//!
//! - `ours`: `vfio_user_server::Server` serving the DMA-copy example device;
//! - `floor`: a minimal vfio-user responder (blocking `read` of the header,
//!   `read` of the payload, one `write` of the reply; no poll, no fd passing,
//!   no validation): the cost of the socket round trip itself, the baseline
//!   our server's figures are divided by.
//!
//! Then it measures `GuestMemory` copy bandwidth through a memfd map against
//! `memcpy` between two `Vec<u8>`, interleaved in the same run.
//!
//! `--external SOCKET` adds any vfio-user server (e.g. one of libvfio-user's
//! samples) to the rotation; `--region`, `--offset` and `--size` say which
//! register to read and write on it (writes store a counter value, so pick a
//! register whose writes have no side effects). The copy benchmark is skipped
//! in that mode. `--rounds N` sets the rounds (default 5).
//!
//! The client and every server run pinned to one CPU (`--cpu N`, default the
//! last CPU this process may use; an external server is found through
//! SO_PEERCRED, pinned for the run and given its affinity back afterwards).
//! A round trip then costs the CPU work of both sides plus two context
//! switches, which is what differs between server implementations. Unpinned
//! (`--no-pin`), a message may also wait for the peer's CPU to wake up: on a VM
//! whose idle vCPUs halt (cpuidle haltpoll with guest_halt_poll_ns=0) that is
//! ~60 us, and whether a round pays it depends on where the scheduler puts the
//! two sides, not on the server (the floor server flips between 5 and 65 us).

#[allow(dead_code)] // the register map is shared with the example and tests
#[path = "../examples/dma_copy/device.rs"]
mod device;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};
use vfio_user_server::client::Client;
use vfio_user_server::dma::{Access, GuestMemory};
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::{region, DmaMapRequest, FLAG_NO_REPLY, HEADER_SIZE};
use vfio_user_server::Server;

/// Round trips timed one by one (per round and target) for each synchronous
/// op: at most this many, and no more once the op's time budget is spent
/// (whatever comes first, but at least `MIN_SAMPLES`).
const READS: usize = 40_000;
const CONFIG_READS: usize = 15_000;
const WRITES: usize = 15_000;
/// Posted writes per round (throughput, then one synchronous read).
const POSTED: usize = 100_000;
const READ_BUDGET: Duration = Duration::from_millis(400);
const OTHER_BUDGET: Duration = Duration::from_millis(150);
const MIN_SAMPLES: usize = 2_000;
/// Untimed round trips before each measurement.
const WARMUP: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = match args.first().map(String::as_str) {
        Some("--serve") if args.len() == 2 => serve_ours(Path::new(&args[1])),
        Some("--serve-floor") if args.len() == 2 => serve_floor(Path::new(&args[1])),
        Some("--serve-once") if args.len() == 2 => serve_once(Path::new(&args[1])),
        Some("--drive") => drive(&args[1..]),
        _ => match Options::parse(&args) {
            Ok(o) => run(&o),
            Err(e) => {
                eprintln!("regio: {e}\n{USAGE}");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("regio: {e}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: regio [--rounds N] [--cpu N | --no-pin] \
                     [--external SOCKET [--region R] [--offset O] [--size 1|2|4|8]]";

type BoxError = Box<dyn std::error::Error>;

#[derive(Debug)]
struct Options {
    rounds: usize,
    /// CPU to pin the client and the servers to (None: no pinning).
    cpu: Option<usize>,
    external: Option<Target>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, BoxError> {
        let mut o = Options {
            rounds: 5,
            cpu: default_cpu(),
            external: None,
        };
        let (mut region, mut offset, mut size) = (0u32, 0u64, 4u32);
        let mut socket = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--rounds" => o.rounds = val()?.parse::<usize>()?.max(1),
                "--cpu" => o.cpu = Some(val()?.parse()?),
                "--no-pin" => o.cpu = None,
                "--external" => socket = Some(PathBuf::from(val()?)),
                "--region" => region = parse_num(val()?)? as u32,
                "--offset" => offset = parse_num(val()?)?,
                "--size" => size = parse_num(val()?)? as u32,
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        if ![1, 2, 4, 8].contains(&size) {
            return Err("--size must be 1, 2, 4 or 8".into());
        }
        o.external = socket.map(|path| Target {
            name: "external".into(),
            path,
            region,
            offset,
            size,
        });
        Ok(o)
    }
}

/// The last CPU this process may run on.
fn default_cpu() -> Option<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).ok()?;
    (0..CpuSet::count())
        .rev()
        .find(|&c| set.is_set(c).unwrap_or(false))
}

/// Pins every thread of process `pid` (0: this one) to `cpu`; returns the
/// affinities it had, for [`unpin`].
fn pin(pid: i32, cpu: usize) -> Result<Vec<(Pid, CpuSet)>, BoxError> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    let tids = if pid == 0 {
        vec![Pid::from_raw(0)]
    } else {
        let mut tids = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            tids.push(Pid::from_raw(task?.file_name().to_string_lossy().parse()?));
        }
        tids
    };
    let mut old = Vec::new();
    for tid in tids {
        old.push((tid, sched_getaffinity(tid)?));
        sched_setaffinity(tid, &set)?;
    }
    Ok(old)
}

/// Gives threads pinned by [`pin`] their affinity back.
fn unpin(old: &[(Pid, CpuSet)]) {
    for (tid, set) in old {
        let _ = sched_setaffinity(*tid, set);
    }
}

fn parse_num(s: &str) -> Result<u64, BoxError> {
    Ok(match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16)?,
        None => s.parse()?,
    })
}

/// A server to measure and the register used for reads and writes.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    path: PathBuf,
    region: u32,
    offset: u64,
    size: u32,
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Dies with the parent, so an aborted benchmark leaves no server behind.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// `--serve SOCKET`: our server with the DMA-copy example device.
fn serve_ours(path: &Path) -> Result<(), BoxError> {
    die_with_parent();
    let dev = device::DmaCopy::new(PortType::Endpoint)?;
    let mut server = Server::new(dev, path)?;
    server.run()?;
    Ok(())
}

/// `--serve-once SOCKET`: our server for exactly one client, then exit (for
/// instruction counts under valgrind, which writes its profile at exit).
fn serve_once(path: &Path) -> Result<(), BoxError> {
    die_with_parent();
    let dev = device::DmaCopy::new(PortType::Endpoint)?;
    // The server's own listener sits beside the socket the client uses: this
    // mode accepts the one client itself and hands it to `Server::serve`.
    let mut server = Server::new(dev, &path.with_extension("unused"))?;
    let listener = UnixListener::bind(path)?;
    let (stream, _) = listener.accept()?;
    drop(listener);
    let _ = std::fs::remove_file(path);
    server.serve(stream);
    Ok(())
}

/// `--drive SOCKET --op read|config|write|posted --count N [--region R]
/// [--offset O] [--size S]`: connects, negotiates, performs N operations
/// (posted writes end with one synchronous read) and disconnects. Used with
/// `--serve-once` under valgrind: instructions per message are the difference
/// between two counts divided by the difference in messages.
fn drive(args: &[String]) -> Result<(), BoxError> {
    let mut it = args.iter();
    let path = PathBuf::from(it.next().ok_or("--drive needs a socket")?);
    let (mut op, mut count, mut r, mut o, mut s) = (String::new(), 0usize, 0u32, 0u64, 4u32);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--op" => op = val()?.clone(),
            "--count" => count = val()?.parse()?,
            "--region" => r = parse_num(val()?)? as u32,
            "--offset" => o = parse_num(val()?)?,
            "--size" => s = parse_num(val()?)? as u32,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut c = connect(&path)?;
    for i in 0..count {
        match op.as_str() {
            "read" => drop(black_box(c.region_read(r, o, s)?)),
            "config" => drop(black_box(c.region_read(region::CONFIG, 0, 4)?)),
            "write" => c.region_write(r, o, &value(i)[..s as usize])?,
            "posted" => c.region_write_posted(r, o, &value(i)[..s as usize])?,
            other => return Err(format!("unknown op {other:?}").into()),
        }
    }
    if op == "posted" {
        c.region_read(r, o, s)?;
    }
    Ok(())
}

/// Connects and negotiates, waiting up to a minute for a server that is
/// still starting (one under valgrind starts slowly; a socket file may exist
/// before its server listens).
fn connect(path: &Path) -> Result<Client, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(path) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `--serve-floor SOCKET`: the least a vfio-user responder can do per message.
fn serve_floor(path: &Path) -> Result<(), BoxError> {
    die_with_parent();
    let listener = UnixListener::bind(path)?;
    for conn in listener.incoming() {
        if let Err(e) = floor_connection(conn?) {
            eprintln!("floor server: {e}");
        }
    }
    Ok(())
}

fn floor_connection(mut s: UnixStream) -> io::Result<()> {
    const MAX: usize = 64 * 1024;
    let mut payload = vec![0u8; MAX];
    let mut out = vec![0u8; HEADER_SIZE + MAX];
    loop {
        let mut h = [0u8; HEADER_SIZE];
        match s.read_exact(&mut h) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let cmd = u16::from_le_bytes([h[2], h[3]]);
        let len = (le32(&h[4..8]) as usize)
            .checked_sub(HEADER_SIZE)
            .filter(|&l| l <= MAX)
            .ok_or_else(|| io::Error::other("bad message size"))?;
        let no_reply = le32(&h[8..12]) & FLAG_NO_REPLY != 0;
        s.read_exact(&mut payload[..len])?;
        let (reply_len, errno) = match cmd {
            // VERSION: 0.0, no capabilities.
            1 => {
                let v = b"\0\0\0\0{}\0";
                out[HEADER_SIZE..HEADER_SIZE + v.len()].copy_from_slice(v);
                (v.len(), 0)
            }
            // REGION_READ: echo the access, then `count` zero bytes.
            9 if len >= 16 => {
                let count = (le32(&payload[12..16]) as usize).min(MAX - 16);
                out[HEADER_SIZE..HEADER_SIZE + 16].copy_from_slice(&payload[..16]);
                out[HEADER_SIZE + 16..HEADER_SIZE + 16 + count].fill(0);
                (16 + count, 0)
            }
            // REGION_WRITE: echo the access.
            10 if len >= 16 => {
                out[HEADER_SIZE..HEADER_SIZE + 16].copy_from_slice(&payload[..16]);
                (16, 0)
            }
            _ => (0, libc::ENOSYS as u32),
        };
        if no_reply {
            continue;
        }
        out[..4].copy_from_slice(&h[..4]); // id, command
        out[4..8].copy_from_slice(&((HEADER_SIZE + reply_len) as u32).to_le_bytes());
        let flags: u32 = if errno != 0 { 1 | 1 << 5 } else { 1 };
        out[8..12].copy_from_slice(&flags.to_le_bytes());
        out[12..16].copy_from_slice(&errno.to_le_bytes());
        s.write_all(&out[..HEADER_SIZE + reply_len])?;
    }
}

/// A server child process, killed when dropped.
struct ServerProcess {
    child: Child,
    dir: PathBuf,
}

impl ServerProcess {
    fn start(mode: &str, name: &str) -> Result<(ServerProcess, PathBuf), BoxError> {
        let dir = std::env::temp_dir().join(format!("vus-regio-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("dev.sock");
        let child = Process::new(std::env::current_exe()?)
            .arg(mode)
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()?;
        let p = ServerProcess { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(format!("{name} server did not create {}", sock.display()).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((p, sock))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

/// Latency distribution of one op in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Lat {
    ops_per_s: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Lat {
    fn from_samples(mut ns: Vec<u64>, elapsed: Duration) -> Lat {
        ns.sort_unstable();
        let n = ns.len();
        let pct = |q: f64| ns[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0;
        Lat {
            ops_per_s: n as f64 / elapsed.as_secs_f64(),
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            p999: pct(0.999),
            max: ns[n - 1] as f64 / 1000.0,
        }
    }

    /// Field-wise median over rounds.
    fn median(all: &[Lat]) -> Lat {
        let m = |f: fn(&Lat) -> f64| median(all.iter().map(f).collect());
        Lat {
            ops_per_s: m(|l| l.ops_per_s),
            p50: m(|l| l.p50),
            p90: m(|l| l.p90),
            p99: m(|l| l.p99),
            p999: m(|l| l.p999),
            max: m(|l| l.max),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One round of measurements on one target.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    read: Lat,
    config_read: Lat,
    write: Lat,
    posted_per_s: f64,
}

/// Short names of [`OPS`] in the RESULT lines.
const OP_KEYS: [&str; 4] = ["read", "config", "write", "posted"];

const OPS: [&str; 4] = [
    "REGION_READ",
    "config REGION_READ",
    "REGION_WRITE (sync)",
    "REGION_WRITE posted",
];

fn timed(
    n: usize,
    budget: Duration,
    mut op: impl FnMut(usize) -> Result<(), BoxError>,
) -> Result<Lat, BoxError> {
    for i in 0..WARMUP {
        op(i)?;
    }
    let mut ns = Vec::with_capacity(n);
    let start = Instant::now();
    let mut last = start;
    for i in 0..n {
        op(i)?;
        let now = Instant::now();
        ns.push((now - last).as_nanos() as u64);
        last = now;
        if i >= MIN_SAMPLES && now - start > budget {
            break;
        }
    }
    Ok(Lat::from_samples(ns, last - start))
}

/// What the `i`-th write stores (its low bytes, as many as the access size).
fn value(i: usize) -> [u8; 8] {
    (i as u64).to_le_bytes()
}

fn measure(c: &mut Client, t: &Target) -> Result<Round, BoxError> {
    let (r, o, s) = (t.region, t.offset, t.size);
    let read = timed(READS, READ_BUDGET, |_| {
        black_box(c.region_read(r, o, s)?);
        Ok(())
    })?;
    let config_read = timed(CONFIG_READS, OTHER_BUDGET, |_| {
        black_box(c.region_read(region::CONFIG, 0, 4)?);
        Ok(())
    })?;
    let write = timed(WRITES, OTHER_BUDGET, |i| {
        Ok(c.region_write(r, o, &value(i)[..s as usize])?)
    })?;
    for i in 0..WARMUP {
        c.region_write_posted(r, o, &value(i)[..s as usize])?;
    }
    c.region_read(r, o, s)?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < POSTED {
        for i in sent..sent + 1000 {
            c.region_write_posted(r, o, &value(i)[..s as usize])?;
        }
        sent += 1000;
        if start.elapsed() > OTHER_BUDGET * 2 {
            break;
        }
    }
    // The server handles messages in order: this reply means all were processed.
    c.region_read(r, o, s)?;
    let posted_per_s = sent as f64 / start.elapsed().as_secs_f64();
    Ok(Round {
        read,
        config_read,
        write,
        posted_per_s,
    })
}

fn run(o: &Options) -> Result<(), BoxError> {
    let t0 = Instant::now();
    print_machine();
    match o.cpu {
        // Children inherit the affinity.
        Some(cpu) => {
            pin(0, cpu)?;
            println!("client and servers pinned to CPU {cpu} (--no-pin to let them float)");
        }
        None => println!("not pinned: round trips include cross-CPU wakeups"),
    }
    let size = o.external.as_ref().map_or(4, |t| t.size);
    let (_ours_proc, ours_sock) = ServerProcess::start("--serve", "ours")?;
    let (_floor_proc, floor_sock) = ServerProcess::start("--serve-floor", "floor")?;
    let mut targets = vec![
        Target {
            name: "ours".into(),
            path: ours_sock,
            region: 0,
            offset: device::reg::SCRATCH,
            size,
        },
        Target {
            name: "floor".into(),
            path: floor_sock,
            region: 0,
            offset: device::reg::SCRATCH,
            size,
        },
    ];
    targets.extend(o.external.clone());
    let mut clients = Vec::new();
    for t in &targets {
        clients.push(connect(&t.path).map_err(|e| format!("{}: {e}", t.path.display()))?);
    }
    let id = clients[0].read32(0, device::reg::ID)?;
    if id != device::ID_VALUE {
        return Err(format!("our server answers ID {id:#x}, not the example device").into());
    }
    let mut external_affinity = Vec::new();
    if let Some(i) = targets.iter().position(|t| t.name == "external") {
        println!("external server capabilities: {}", clients[i].server_caps);
        if let Some(cpu) = o.cpu {
            let pid = getsockopt(clients[i].stream(), PeerCredentials)?.pid();
            external_affinity =
                pin(pid, cpu).map_err(|e| format!("pinning external server pid {pid}: {e}"))?;
            println!("external server (pid {pid}) pinned to CPU {cpu} for the run");
        }
    }
    let result = measure_all(o, &targets, &mut clients);
    unpin(&external_affinity);
    result?;
    drop(clients);
    if o.external.is_none() {
        copy_bench(o.rounds.max(5))?;
    }
    println!();
    println!(
        "total time {:.1} s; load average {} at the end",
        t0.elapsed().as_secs_f64(),
        load_average()
    );
    Ok(())
}

/// Alternating rounds over every target, then the table of medians.
fn measure_all(o: &Options, targets: &[Target], clients: &mut [Client]) -> Result<(), BoxError> {
    println!();
    println!("## Region access round trips (client: vfio_user_server::client::Client)");
    for t in targets {
        println!(
            "  {:<9} {}  region {} offset {:#x}, {}-byte accesses",
            t.name,
            t.path.display(),
            t.region,
            t.offset,
            t.size
        );
    }
    println!(
        "  per round and target: up to {READS} reads ({} ms at most), {CONFIG_READS} config reads, {WRITES} sync writes \
         ({} ms at most each), {POSTED} posted writes ({} ms at most); {} rounds, targets alternate",
        READ_BUDGET.as_millis(),
        OTHER_BUDGET.as_millis(),
        (OTHER_BUDGET * 2).as_millis(),
        o.rounds
    );
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for round in 0..o.rounds {
        // Rotate the order too, so no target always runs first.
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let r = measure(&mut clients[i], &targets[i])
                .map_err(|e| format!("{}: {e}", targets[i].name))?;
            println!(
                "  round {} {:<9} read {:>7.0}/s p50 {:>5.1} us | cfg {:>7.0}/s | write {:>7.0}/s | posted {:>8.0}/s",
                round + 1,
                targets[i].name,
                r.read.ops_per_s,
                r.read.p50,
                r.config_read.ops_per_s,
                r.write.ops_per_s,
                r.posted_per_s
            );
            rounds[i].push(r);
        }
    }
    let meds: Vec<[Lat; 4]> = rounds
        .iter()
        .map(|rs| {
            let pick = |f: fn(&Round) -> Lat| Lat::median(&rs.iter().map(f).collect::<Vec<_>>());
            let posted = median(rs.iter().map(|r| r.posted_per_s).collect());
            [
                pick(|r| r.read),
                pick(|r| r.config_read),
                pick(|r| r.write),
                Lat {
                    ops_per_s: posted,
                    ..Lat::default()
                },
            ]
        })
        .collect();
    println!();
    println!(
        "Medians of {} rounds (latency in microseconds; 'x floor' = ops/s relative to the floor server, higher is better)",
        o.rounds
    );
    let ext = targets.iter().position(|t| t.name == "external");
    print!(
        "{:<22} {:<9} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "op", "target", "ops/s", "p50", "p90", "p99", "p99.9", "max", "x floor"
    );
    println!("{}", if ext.is_some() { "   ours/ext" } else { "" });
    for (op, name) in OPS.iter().enumerate() {
        for (i, t) in targets.iter().enumerate() {
            let l = meds[i][op];
            let vs_floor = l.ops_per_s / meds[1][op].ops_per_s;
            print!("{:<22} {:<9} {:>10.0}", name, t.name, l.ops_per_s);
            if op == 3 {
                print!("{:>40}", "");
            } else {
                print!(
                    " {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.1}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                );
            }
            print!(" {vs_floor:>8.2}");
            if let (Some(e), 0) = (ext, i) {
                print!(" {:>10.2}", l.ops_per_s / meds[e][op].ops_per_s);
            }
            println!();
        }
    }
    // The same medians for scripts (scripts/vfio-user-bench.sh).
    println!();
    for (op, key) in OP_KEYS.iter().enumerate() {
        for (i, t) in targets.iter().enumerate() {
            let l = meds[i][op];
            println!(
                "RESULT op={key} target={} ops_per_s={:.0} p50_us={:.3} p99_us={:.3}",
                t.name, l.ops_per_s, l.p50, l.p99
            );
        }
    }
    Ok(())
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Fields 19 (nice) and 41 (policy) of /proc/self/stat; the fields after
    // the command name start at 3.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let field = |n: usize| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(n - 3))
            .unwrap_or("?")
            .to_string()
    };
    let nice = field(19);
    let policy = match field(41).as_str() {
        "0" => "SCHED_OTHER".to_string(),
        "1" => "SCHED_FIFO".to_string(),
        "2" => "SCHED_RR".to_string(),
        "3" => "SCHED_BATCH".to_string(),
        "5" => "SCHED_IDLE".to_string(),
        other => format!("policy {other}"),
    };
    // With autogroup scheduling, the session's group niceness is what counts
    // against other sessions.
    let group = std::fs::read_to_string("/proc/self/autogroup")
        .map(|g| g.trim().to_string())
        .unwrap_or_else(|_| "no autogroup".into());
    println!(
        "# regio: {cpus} CPUs, {cpu}; {policy}, nice {nice} ({group}); load average {} at start",
        load_average()
    );
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// Guest-memory copy bandwidth
// ---------------------------------------------------------------------------

fn memfd(len: u64) -> Result<OwnedFd, BoxError> {
    let fd =
        nix::sys::memfd::memfd_create(c"regio-guest", nix::sys::memfd::MemFdCreateFlag::empty())?;
    let f = std::fs::File::from(fd);
    f.set_len(len)?;
    Ok(f.into())
}

const GUEST_BASE: u64 = 0x1_0000_0000;
const GUEST_SIZE: u64 = 8 << 20;
/// Bytes copied per variant per repetition.
const COPY_BYTES: usize = 192 << 20;

/// A page-aligned heap buffer.
struct Aligned {
    buf: Vec<u8>,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        Aligned {
            buf: vec![0; len + 4096],
            len,
        }
    }

    fn get(&mut self) -> &mut [u8] {
        let skew = self.buf.as_ptr().align_offset(4096);
        &mut self.buf[skew..skew + self.len]
    }
}

fn copy_bench(reps: usize) -> Result<(), BoxError> {
    let mem = GuestMemory::new(16);
    let fd = memfd(GUEST_SIZE)?;
    let req = DmaMapRequest::read_write(GUEST_BASE, GUEST_SIZE);
    mem.map(&req, Some(fd.as_fd().try_clone_to_owned()?))?;
    drop(fd);
    // Fault the whole window in once.
    mem.write(GUEST_BASE, &vec![0x5a; GUEST_SIZE as usize])?;
    let src_iova = GUEST_BASE;
    let dst_iova = GUEST_BASE + GUEST_SIZE / 2;

    println!();
    println!(
        "## Guest-memory copy bandwidth (GuestMemory over a {} MiB memfd map vs memcpy between two Vec<u8>)",
        GUEST_SIZE >> 20
    );
    println!(
        "  {} MiB per variant and repetition, {reps} interleaved repetitions, medians; ratio = GB/s / memcpy GB/s",
        COPY_BYTES >> 20
    );
    println!(
        "{:<8} {:<38} {:>9} {:>7}",
        "block", "variant", "GB/s", "ratio"
    );
    for bs in [4usize << 10, 64 << 10, 1 << 20] {
        let iters = COPY_BYTES / bs;
        // Page-aligned like the guest window, so alignment does not favour either side.
        let (mut src_buf, mut dst_buf, mut bounce_buf) =
            (Aligned::new(bs), Aligned::new(bs), Aligned::new(bs));
        src_buf.get().fill(0xa5);
        let (src, dst, bounce) = (&*src_buf.get(), dst_buf.get(), bounce_buf.get());
        type Variant<'a> = (&'static str, Box<dyn FnMut() -> Result<(), BoxError> + 'a>);
        let mem = &mem;
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "memcpy Vec -> Vec (copy_from_slice)",
                Box::new(|| {
                    black_box(&mut *dst).copy_from_slice(black_box(src));
                    Ok(())
                }),
            ),
            (
                "with_slice x2 + copy_to_slice (g->g)",
                Box::new(|| {
                    mem.with_slice(src_iova, bs, Access::Read, |s| {
                        mem.with_slice(dst_iova, bs, Access::Write, |d| s.copy_to_slice(&d))
                    })???;
                    Ok(())
                }),
            ),
            (
                "GuestMemory::read (guest -> Vec)",
                Box::new(|| Ok(mem.read(src_iova, black_box(&mut *bounce))?)),
            ),
            (
                "GuestMemory::write (Vec -> guest)",
                Box::new(|| Ok(mem.write(dst_iova, black_box(src))?)),
            ),
        ];
        let mut gbps = vec![Vec::new(); variants.len()];
        for _ in 0..reps {
            for (k, (_, f)) in variants.iter_mut().enumerate() {
                for _ in 0..iters.min(64) {
                    f()?;
                }
                let start = Instant::now();
                for _ in 0..iters {
                    f()?;
                }
                let s = start.elapsed().as_secs_f64();
                gbps[k].push((iters * bs) as f64 / s / 1e9);
            }
        }
        let base = median(gbps[0].clone());
        for (k, (name, _)) in variants.iter().enumerate() {
            let g = median(gbps[k].clone());
            let label = if k == 0 {
                format!("{} KiB", bs >> 10)
            } else {
                String::new()
            };
            println!("{:<8} {:<38} {:>9.2} {:>7.2}", label, name, g, g / base);
        }
    }
    Ok(())
}
