//! The bounded fuzz pass that runs in CI (`cargo test --workspace`): every
//! target for a few seconds of debug-build inputs under all its oracles.
//! The long campaigns use the `trustdev-fuzz` binary (docs/FUZZING.md).
//!
//! The seed is fixed so a failure reproduces; `TRUSTDEV_FUZZ_SEED=N` picks
//! another stream and `TRUSTDEV_FUZZ_SCALE=K` multiplies every input count.
//! A failing input is saved under target/fuzz-artifacts.

use std::sync::Mutex;
use trustdev_fuzz::alloc::CountingAlloc;
use trustdev_fuzz::engine::{run, RunConfig};
use trustdev_fuzz::targets::make;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The engine's panic and allocation oracles are process-wide: one target
/// at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fuzz(name: &str, inputs: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut target = make(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cfg = RunConfig {
        inputs: inputs * env_u64("TRUSTDEV_FUZZ_SCALE", 1),
        seed: env_u64("TRUSTDEV_FUZZ_SEED", 1),
        check_every: (inputs / 4).max(1),
        artifacts: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-artifacts"),
        ),
        ..RunConfig::default()
    };
    let report = run(name, target.as_mut(), &cfg);
    println!("{}", report.summary());
    println!("  reached: {}", report.stats);
    assert!(
        report.alloc_counted,
        "the counting allocator is not installed"
    );
    if let Some(f) = report.failure {
        panic!(
            "{name}: input #{} failed: {}\n  input ({} bytes){}: {:02x?}",
            f.index,
            f.reason,
            f.input.len(),
            f.saved
                .map(|p| format!(", saved to {}", p.display()))
                .unwrap_or_default(),
            &f.input[..f.input.len().min(512)]
        );
    }
    assert_eq!(report.inputs, cfg.inputs, "{name}: not every input ran");
}

#[test]
fn vfio_decode() {
    fuzz("vfio-decode", 20_000);
}

#[test]
fn vfio_server() {
    fuzz("vfio-server", 3_000);
}

#[test]
fn nvme_dptr() {
    fuzz("nvme-dptr", 20_000);
}

#[test]
fn nvme_ctrl() {
    fuzz("nvme-ctrl", 4_000);
}

#[test]
fn doe_endpoint() {
    fuzz("doe-endpoint", 500);
}

#[test]
fn doe_mailbox() {
    fuzz("doe-mailbox", 200);
}

#[test]
fn spdm() {
    fuzz("spdm", 300);
}

#[test]
fn spdm_secured() {
    fuzz("spdm-secured", 2_000);
}

#[test]
fn accel_desc() {
    fuzz("accel-desc", 5_000);
}
