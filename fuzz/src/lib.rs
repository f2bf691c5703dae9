//! # trustdev-fuzz
//!
//! Fuzz targets for every decoder a vfio-user client or a guest feeds
//! trustdev, and the engine that runs them on the stable toolchain (no
//! libFuzzer, no sanitizer flags): structure-aware generation from valid
//! seeds plus havoc mutation, with oracles for panics, hangs, allocation
//! and liveness. `cargo test -p trustdev-fuzz` runs a bounded pass of
//! every target; the `trustdev-fuzz` binary runs long campaigns
//! (docs/FUZZING.md).

pub mod alloc;
pub mod engine;
pub mod mutate;
pub mod targets;
