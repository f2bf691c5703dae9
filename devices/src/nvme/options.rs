//! Controller configuration: the `trustdev serve nvme` options, their
//! defaults, and the identity values derived from them.

use super::backend::CacheMode;
use std::path::PathBuf;

/// How the host's doorbell writes reach the controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DoorbellMode {
    /// Doorbell writes are trapped: each is a (posted) REGION_WRITE.
    #[default]
    Trap,
    /// The doorbell page is mmapped by the client (sparse mmap of BAR0 from
    /// 0x1000); worker threads poll it. Costs CPU, saves every doorbell message.
    Poll,
}

/// Write cache policy of file-backed namespaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheArg {
    /// Volatile write cache reported; Flush makes writes durable (fdatasync).
    #[default]
    Writeback,
    /// No volatile write cache: the image is opened O_DSYNC.
    Writethrough,
}

/// `trustdev serve nvme` options (ignored by other device kinds).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "NVMe options (serve nvme)")]
pub struct NvmeArgs {
    /// Back namespace 1 with this raw image (created with --size if missing).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Size of the default RAM namespace, or of an image created by --file
    /// (bytes, or with K/M/G/T suffix). Default 1G.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// A namespace: ram:SIZE or file:PATH[:SIZE] (repeatable, in NSID
    /// order; replaces the default namespace).
    #[arg(long = "ns", value_name = "SPEC")]
    pub namespaces: Vec<String>,
    /// Logical block size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    pub lba_size: u32,
    /// Most I/O queue pairs the host may create (1..=128; MSI-X vectors = this + 1).
    #[arg(long, default_value_t = 64)]
    pub queues: u16,
    /// Most entries per queue (CAP.MQES + 1, 2..=65536).
    #[arg(long, default_value_t = 4096)]
    pub queue_entries: u32,
    /// Doorbell delivery: trapped register writes, or a polled mmapped page.
    #[arg(long, value_enum, default_value_t = DoorbellMode::Trap)]
    pub doorbells: DoorbellMode,
    /// Do not offer Doorbell Buffer Config (shadow doorbells).
    #[arg(long)]
    pub no_shadow_doorbells: bool,
    /// With shadow doorbells: how long after the host's last activity an
    /// idle I/O worker keeps watching the shadow buffer (every 25 µs)
    /// before it asks the host to ring the doorbell again (µs; 0 = never).
    #[arg(long, default_value_t = 1000)]
    pub shadow_poll_us: u64,
    /// I/O worker threads (default: CPUs, at most 4).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Write cache policy of file-backed namespaces.
    #[arg(long, value_enum, default_value_t = CacheArg::Writeback)]
    pub cache: CacheArg,
    /// CAP.DSTRD: doorbell stride is 4 << N bytes (0..=4).
    #[arg(long, default_value_t = 0)]
    pub doorbell_stride: u8,
    /// MDTS: largest transfer is 2^N memory pages (1..=10).
    #[arg(long, default_value_t = 7)]
    pub mdts: u8,
    /// Serial number (default derived from the socket path).
    #[arg(long)]
    pub serial: Option<String>,
    /// Model number.
    #[arg(long)]
    pub model: Option<String>,
    /// Firmware revision.
    #[arg(long)]
    pub firmware: Option<String>,
    /// NVM subsystem NQN.
    #[arg(long)]
    pub subnqn: Option<String>,
    /// EUI-64 of namespace 1 (16 hex digits; others get derived values).
    #[arg(long)]
    pub eui64: Option<String>,
    /// NGUID of namespace 1 (32 hex digits).
    #[arg(long)]
    pub nguid: Option<String>,
    /// UUID of namespace 1.
    #[arg(long)]
    pub uuid: Option<String>,
    /// Composite temperature the controller reports, in degrees Celsius.
    #[arg(long, default_value_t = 35)]
    pub temperature: i16,
}

/// Keys accepted in `trustdev vm -d nvme:KEY=VALUE,...` (each becomes
/// `--KEY VALUE` of `trustdev serve nvme`; `ns` may repeat).
pub const VM_OPTION_KEYS: &[&str] = &[
    "file",
    "size",
    "ns",
    "lba-size",
    "queues",
    "queue-entries",
    "doorbells",
    "workers",
    "shadow-poll-us",
    "cache",
    "doorbell-stride",
    "mdts",
    "serial",
    "model",
    "firmware",
    "subnqn",
    "temperature",
];

/// Flag-style keys of `trustdev vm -d nvme:KEY` (no value).
pub const VM_FLAG_KEYS: &[&str] = &["no-shadow-doorbells"];

/// Turns one `-d nvme:...` option into `trustdev serve` arguments, or
/// None when it is not an NVMe option.
pub fn vm_option_args(opt: &str) -> Option<Vec<String>> {
    if let Some((k, v)) = opt.split_once('=') {
        if VM_OPTION_KEYS.contains(&k) && !v.is_empty() {
            return Some(vec![format!("--{k}"), v.to_string()]);
        }
        return None;
    }
    VM_FLAG_KEYS
        .contains(&opt)
        .then(|| vec![format!("--{opt}")])
}

/// Parses a size: digits with an optional K/M/G/T (binary) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        Some('t' | 'T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 512M, 4G, 1048576)"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("bad size {s:?}"))
}

/// Where a namespace keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsBacking {
    /// Sparse RAM of this many bytes.
    Ram(u64),
    /// A raw image; created with the size if missing.
    File(PathBuf, Option<u64>),
}

impl std::str::FromStr for NsBacking {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("ram:") {
            return Ok(NsBacking::Ram(parse_size(rest)?));
        }
        if s == "ram" {
            return Ok(NsBacking::Ram(1 << 30));
        }
        if let Some(rest) = s.strip_prefix("file:") {
            // file:PATH or file:PATH:SIZE (a size-looking last component).
            if let Some((p, sz)) = rest.rsplit_once(':') {
                if let Ok(size) = parse_size(sz) {
                    return Ok(NsBacking::File(PathBuf::from(p), Some(size)));
                }
            }
            if rest.is_empty() {
                return Err("file: needs a path".into());
            }
            return Ok(NsBacking::File(PathBuf::from(rest), None));
        }
        Err(format!("bad namespace {s:?}: ram:SIZE or file:PATH[:SIZE]"))
    }
}

/// One namespace's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsConfig {
    /// Storage.
    pub backing: NsBacking,
    /// EUI-64.
    pub eui64: [u8; 8],
    /// NGUID.
    pub nguid: [u8; 16],
    /// UUID.
    pub uuid: [u8; 16],
}

/// Everything the controller needs to know, validated.
#[derive(Clone, Debug)]
pub struct NvmeConfig {
    /// Namespaces, NSID 1.. in order.
    pub namespaces: Vec<NsConfig>,
    /// log2 of the logical block size.
    pub lba_shift: u8,
    /// Most I/O queue pairs.
    pub max_queues: u16,
    /// Most entries per queue.
    pub queue_entries: u32,
    /// Doorbell delivery.
    pub doorbells: DoorbellMode,
    /// Offer shadow doorbells.
    pub shadow_doorbells: bool,
    /// I/O worker threads.
    pub workers: usize,
    /// Shadow-buffer watch window after host activity (µs).
    pub shadow_poll_us: u64,
    /// File write cache policy.
    pub cache: CacheMode,
    /// CAP.DSTRD.
    pub dstrd: u8,
    /// MDTS.
    pub mdts: u8,
    /// Serial number (<= 20 ASCII).
    pub serial: String,
    /// Device Serial Number capability value (default: derived from the
    /// serial number).
    pub dsn: u64,
    /// Model number (<= 40 ASCII).
    pub model: String,
    /// Firmware revision (<= 8 ASCII).
    pub firmware: String,
    /// Subsystem NQN (<= 223 bytes).
    pub subnqn: String,
    /// Composite temperature in Kelvin.
    pub temperature_k: u16,
}

/// FNV-1a: a stable hash for identifiers derived from names.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn derived16(seed: &str) -> [u8; 16] {
    let a = fnv64(seed.as_bytes());
    let b = fnv64(format!("{seed}/2").as_bytes());
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn parse_hex(s: &str, n: usize, what: &str) -> Result<Vec<u8>, String> {
    let h: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    if h.len() != 2 * n {
        return Err(format!("{what}: expected {} hex digits, got {s:?}", 2 * n));
    }
    (0..n)
        .map(|i| {
            u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{what}: bad hex {s:?}"))
        })
        .collect()
}

fn ascii_field(s: &str, max: usize, what: &str) -> Result<String, String> {
    if s.len() > max || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "{what} must be at most {max} printable ASCII characters"
        ));
    }
    Ok(s.to_string())
}

impl NvmeConfig {
    /// Validates `args`; `seed` (the socket path) makes default identities
    /// unique per server.
    pub fn from_args(args: &NvmeArgs, seed: &str) -> Result<NvmeConfig, String> {
        let lba_shift = match args.lba_size {
            512 => 9,
            4096 => 12,
            n => return Err(format!("--lba-size must be 512 or 4096 (got {n})")),
        };
        if !(1..=128).contains(&args.queues) {
            return Err("--queues must be 1..=128".into());
        }
        if !(2..=65536).contains(&args.queue_entries) {
            return Err("--queue-entries must be 2..=65536".into());
        }
        if args.doorbell_stride > 4 {
            return Err("--doorbell-stride must be 0..=4".into());
        }
        if !(1..=10).contains(&args.mdts) {
            return Err("--mdts must be 1..=10".into());
        }
        let mut backings: Vec<NsBacking> = Vec::new();
        if let Some(f) = &args.file {
            backings.push(NsBacking::File(f.clone(), args.size));
        }
        for s in &args.namespaces {
            backings.push(s.parse()?);
        }
        if backings.is_empty() {
            backings.push(NsBacking::Ram(args.size.unwrap_or(1 << 30)));
        }
        if backings.len() > 1024 {
            return Err("at most 1024 namespaces".into());
        }
        let h = fnv64(seed.as_bytes());
        let serial = match &args.serial {
            Some(s) => ascii_field(s, 20, "--serial")?,
            None => format!("TD{:016X}", h).chars().take(20).collect(),
        };
        let mut namespaces = Vec::new();
        for (i, b) in backings.into_iter().enumerate() {
            let nsid = i + 1;
            let id_seed = match &b {
                NsBacking::File(p, _) => {
                    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                    format!("file:{}#{nsid}", canon.display())
                }
                NsBacking::Ram(_) => format!("ram:{seed}#{nsid}"),
            };
            let mut eui64 = [0u8; 8];
            eui64.copy_from_slice(&derived16(&id_seed)[..8]);
            eui64[0] = (eui64[0] | 0x02) & !0x01;
            let nguid = derived16(&format!("nguid:{id_seed}"));
            let mut uuid = derived16(&format!("uuid:{id_seed}"));
            uuid[6] = (uuid[6] & 0x0f) | 0x80; // version 8 (custom)
            uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
            let mut ns = NsConfig {
                backing: b,
                eui64,
                nguid,
                uuid,
            };
            if nsid == 1 {
                if let Some(e) = &args.eui64 {
                    ns.eui64.copy_from_slice(&parse_hex(e, 8, "--eui64")?);
                }
                if let Some(g) = &args.nguid {
                    ns.nguid.copy_from_slice(&parse_hex(g, 16, "--nguid")?);
                }
                if let Some(u) = &args.uuid {
                    ns.uuid.copy_from_slice(&parse_hex(u, 16, "--uuid")?);
                }
            }
            namespaces.push(ns);
        }
        let workers = args
            .workers
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(4)
            })
            .clamp(1, 64);
        let subnqn = match &args.subnqn {
            Some(s) => ascii_field(s, 223, "--subnqn")?,
            None => format!("nqn.2024-01.dev.trustdev:nvme:{serial}"),
        };
        Ok(NvmeConfig {
            namespaces,
            lba_shift,
            max_queues: args.queues,
            queue_entries: args.queue_entries,
            doorbells: args.doorbells,
            shadow_doorbells: !args.no_shadow_doorbells,
            workers,
            shadow_poll_us: args.shadow_poll_us.min(100_000),
            cache: match args.cache {
                CacheArg::Writeback => CacheMode::WriteBack,
                CacheArg::Writethrough => CacheMode::WriteThrough,
            },
            dstrd: args.doorbell_stride,
            mdts: args.mdts,
            dsn: fnv64(serial.as_bytes()),
            serial,
            model: ascii_field(
                args.model.as_deref().unwrap_or("trustdev NVMe Controller"),
                40,
                "--model",
            )?,
            firmware: ascii_field(
                args.firmware
                    .as_deref()
                    .unwrap_or(env!("CARGO_PKG_VERSION")),
                8,
                "--firmware",
            )?,
            subnqn,
            temperature_k: (273i32 + i32::from(args.temperature)).clamp(1, 0xffff) as u16,
        })
    }

    /// A RAM-backed configuration for tests.
    pub fn ram_for_tests(size: u64) -> NvmeConfig {
        let args = NvmeArgs {
            size: Some(size),
            queues: 64,
            queue_entries: 4096,
            lba_size: 512,
            mdts: 7,
            temperature: 35,
            workers: Some(2),
            ..NvmeArgs::default()
        };
        NvmeConfig::from_args(&args, "test").unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn namespaces_and_identity() {
        assert_eq!("ram:16M".parse(), Ok(NsBacking::Ram(16 << 20)));
        assert_eq!(
            "file:/a/b.img".parse(),
            Ok(NsBacking::File("/a/b.img".into(), None))
        );
        assert_eq!(
            "file:/a/b.img:1G".parse(),
            Ok(NsBacking::File("/a/b.img".into(), Some(1 << 30)))
        );
        assert!("disk:x".parse::<NsBacking>().is_err());
        let mut a = NvmeArgs {
            queues: 8,
            queue_entries: 1024,
            lba_size: 512,
            mdts: 7,
            namespaces: vec!["ram:1M".into(), "ram:2M".into()],
            ..Default::default()
        };
        let c = NvmeConfig::from_args(&a, "/tmp/s1").unwrap();
        let d = NvmeConfig::from_args(&a, "/tmp/s2").unwrap();
        assert_ne!(c.serial, d.serial, "default serials differ per socket");
        assert_eq!(c.serial.len(), 18);
        assert_ne!(c.namespaces[0].nguid, c.namespaces[1].nguid);
        assert_eq!(
            c.subnqn,
            format!("nqn.2024-01.dev.trustdev:nvme:{}", c.serial)
        );
        a.eui64 = Some("0011223344556677".into());
        let e = NvmeConfig::from_args(&a, "/tmp/s1").unwrap();
        assert_eq!(
            e.namespaces[0].eui64,
            [0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]
        );
        a.lba_size = 1024;
        assert!(NvmeConfig::from_args(&a, "x").is_err());
        a.lba_size = 512;
        a.serial = Some("x".repeat(21));
        assert!(NvmeConfig::from_args(&a, "x").is_err());
    }

    #[test]
    fn vm_options() {
        assert_eq!(
            vm_option_args("size=64M"),
            Some(vec!["--size".to_string(), "64M".to_string()])
        );
        assert_eq!(
            vm_option_args("no-shadow-doorbells"),
            Some(vec!["--no-shadow-doorbells".to_string()])
        );
        assert_eq!(vm_option_args("bogus=1"), None);
        assert_eq!(vm_option_args("rciep"), None);
    }
}
