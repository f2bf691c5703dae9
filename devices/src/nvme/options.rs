//! Controller configuration: the `trustdev serve nvme` options, their
//! defaults, and the identity values derived from them.

use super::backend::CacheMode;
use std::path::PathBuf;
use thiserror::Error;

/// An option value the controller cannot take.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum OptionsError {
    /// Not a size.
    #[error("bad size {0:?} (e.g. 512M, 4G, 1048576)")]
    Size(String),
    /// Not a namespace specification.
    #[error("bad namespace {0:?}: ram:SIZE or file:PATH[:SIZE]")]
    Namespace(String),
    /// A number outside its range.
    #[error("--{option} must be {allowed} (got {value})")]
    OutOfRange {
        /// The option.
        option: &'static str,
        /// What it accepts.
        allowed: &'static str,
        /// What it got.
        value: u64,
    },
    /// More namespaces than the controller describes.
    #[error("at most {MAX_NAMESPACES} namespaces")]
    TooManyNamespaces,
    /// An identifier that is not the right number of hex digits.
    #[error("--{option}: expected {digits} hex digits, got {value:?}")]
    Hex {
        /// The option.
        option: &'static str,
        /// Hex digits expected.
        digits: usize,
        /// What it got.
        value: String,
    },
    /// A string field too long or not printable ASCII.
    #[error("--{option} must be at most {max} printable ASCII characters")]
    Ascii {
        /// The option.
        option: &'static str,
        /// Longest allowed.
        max: usize,
    },
}

/// Most namespaces a controller serves.
pub const MAX_NAMESPACES: usize = 1024;

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

/// `trustdev serve nvme` options.
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

/// Parses a size: digits with an optional K/M/G/T (binary) suffix.
pub fn parse_size(s: &str) -> Result<u64, OptionsError> {
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
    let bad = || OptionsError::Size(s.to_string());
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(bad)
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
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, OptionsError> {
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
                return Err(OptionsError::Namespace(s.to_string()));
            }
            return Ok(NsBacking::File(PathBuf::from(rest), None));
        }
        Err(OptionsError::Namespace(s.to_string()))
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

fn parse_hex(s: &str, n: usize, option: &'static str) -> Result<Vec<u8>, OptionsError> {
    let bad = || OptionsError::Hex {
        option,
        digits: 2 * n,
        value: s.to_string(),
    };
    let h: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    if h.len() != 2 * n || !h.is_ascii() {
        return Err(bad());
    }
    (0..n)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

fn ascii_field(s: &str, max: usize, option: &'static str) -> Result<String, OptionsError> {
    if s.len() > max || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(OptionsError::Ascii { option, max });
    }
    Ok(s.to_string())
}

fn in_range(
    option: &'static str,
    allowed: &'static str,
    value: u64,
    ok: impl FnOnce(u64) -> bool,
) -> Result<(), OptionsError> {
    if ok(value) {
        Ok(())
    } else {
        Err(OptionsError::OutOfRange {
            option,
            allowed,
            value,
        })
    }
}

impl NvmeConfig {
    /// Validates `args`; `seed` (the socket path) makes default identities
    /// unique per server.
    pub fn from_args(args: &NvmeArgs, seed: &str) -> Result<NvmeConfig, OptionsError> {
        let lba_shift = match args.lba_size {
            512 => 9,
            4096 => 12,
            n => {
                return Err(OptionsError::OutOfRange {
                    option: "lba-size",
                    allowed: "512 or 4096",
                    value: n.into(),
                })
            }
        };
        in_range("queues", "1..=128", args.queues.into(), |v| {
            (1..=128).contains(&v)
        })?;
        in_range(
            "queue-entries",
            "2..=65536",
            args.queue_entries.into(),
            |v| (2..=65536).contains(&v),
        )?;
        in_range(
            "doorbell-stride",
            "0..=4",
            args.doorbell_stride.into(),
            |v| v <= 4,
        )?;
        in_range("mdts", "1..=10", args.mdts.into(), |v| {
            (1..=10).contains(&v)
        })?;
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
        if backings.len() > MAX_NAMESPACES {
            return Err(OptionsError::TooManyNamespaces);
        }
        let h = fnv64(seed.as_bytes());
        let serial = match &args.serial {
            Some(s) => ascii_field(s, 20, "serial")?,
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
                    ns.eui64.copy_from_slice(&parse_hex(e, 8, "eui64")?);
                }
                if let Some(g) = &args.nguid {
                    ns.nguid.copy_from_slice(&parse_hex(g, 16, "nguid")?);
                }
                if let Some(u) = &args.uuid {
                    ns.uuid.copy_from_slice(&parse_hex(u, 16, "uuid")?);
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
            Some(s) => ascii_field(s, 223, "subnqn")?,
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
                "model",
            )?,
            firmware: ascii_field(
                args.firmware
                    .as_deref()
                    .unwrap_or(env!("CARGO_PKG_VERSION")),
                8,
                "firmware",
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
        assert_eq!(
            NvmeConfig::from_args(&a, "x").unwrap_err().to_string(),
            "--lba-size must be 512 or 4096 (got 1024)"
        );
        a.lba_size = 512;
        a.serial = Some("x".repeat(21));
        assert_eq!(
            NvmeConfig::from_args(&a, "x").unwrap_err(),
            OptionsError::Ascii {
                option: "serial",
                max: 20
            }
        );
        a.serial = None;
        a.eui64 = Some("00112233445566zz".into());
        assert!(matches!(
            NvmeConfig::from_args(&a, "x"),
            Err(OptionsError::Hex {
                option: "eui64",
                ..
            })
        ));
    }
}
