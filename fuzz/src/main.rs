//! `trustdev-fuzz`: long fuzz campaigns against trustdev's decoders
//! (docs/FUZZING.md).
//!
//! ```text
//! trustdev-fuzz --list
//! trustdev-fuzz --target spdm --inputs 10000000
//! trustdev-fuzz --all --seconds 60
//! trustdev-fuzz --target vfio-server --replay fuzz-artifacts/vfio-server-*.bin
//! ```

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use trustdev_fuzz::alloc::CountingAlloc;
use trustdev_fuzz::engine::{self, Limits, RunConfig};
use trustdev_fuzz::targets::{make, TARGETS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(
    name = "trustdev-fuzz",
    about = "Fuzz trustdev's decoders (stable toolchain)"
)]
struct Args {
    /// Target to run (repeatable); see --list.
    #[arg(long = "target", short = 't')]
    targets: Vec<String>,
    /// Run every target.
    #[arg(long)]
    all: bool,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// Inputs per target.
    #[arg(long, default_value_t = 100_000)]
    inputs: u64,
    /// Stop each target after this many seconds even if fewer inputs ran.
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of the input generator (a run is reproducible from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where failing inputs are saved.
    #[arg(long, default_value = "fuzz-artifacts")]
    artifacts: PathBuf,
    /// Run these saved inputs instead of generating (one target).
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// Per-input time that counts as a hang, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    hang_ms: u64,
    /// Run the target's deeper liveness check every N inputs.
    #[arg(long, default_value_t = 1000)]
    check_every: u64,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 30)]
    progress: u64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let args = Args::parse();
    if args.list {
        for (name, what) in TARGETS {
            println!("{name:14} {what}");
        }
        return;
    }
    let names: Vec<String> = if args.all {
        TARGETS.iter().map(|t| t.0.to_string()).collect()
    } else {
        args.targets.clone()
    };
    if names.is_empty() {
        eprintln!("name a --target (or --all); --list shows them");
        std::process::exit(2);
    }
    let cfg = RunConfig {
        inputs: args.inputs,
        seed: args.seed,
        max_time: args.seconds.map(Duration::from_secs),
        check_every: args.check_every,
        limits: Limits {
            hang: Duration::from_millis(args.hang_ms),
            ..Limits::default()
        },
        artifacts: Some(args.artifacts.clone()),
        progress: (args.progress > 0).then(|| Duration::from_secs(args.progress)),
    };
    let mut failed = false;
    for name in &names {
        let mut target = match make(name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(2);
            }
        };
        let report = if args.replay.is_empty() {
            engine::run(name, target.as_mut(), &cfg)
        } else {
            let inputs: Vec<Vec<u8>> = args
                .replay
                .iter()
                .map(|p| {
                    std::fs::read(p).unwrap_or_else(|e| {
                        eprintln!("{}: {e}", p.display());
                        std::process::exit(2)
                    })
                })
                .collect();
            engine::replay(name, target.as_mut(), &inputs, &cfg)
        };
        println!("{}", report.summary());
        if !report.stats.is_empty() {
            println!("  reached: {}", report.stats);
        }
        if let Some(f) = &report.failure {
            failed = true;
            println!(
                "  input ({} bytes){}: {:02x?}",
                f.input.len(),
                f.saved
                    .as_ref()
                    .map(|p| format!(", saved to {}", p.display()))
                    .unwrap_or_default(),
                &f.input[..f.input.len().min(512)]
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
