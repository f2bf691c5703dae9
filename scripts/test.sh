#!/usr/bin/env bash
# The whole trustdev test suite: formatting, lints, unit and integration
# tests, and the end-to-end tests that boot a real Debian guest kernel under
# QEMU 11.1 against our servers. It provisions QEMU and the guest kernel
# itself (qemu-configs/provision.sh, cached under ~/.cache/trustdev), and
# builds the patched QEMU once (qemu-configs/provision-qemu-patched.sh).
# .ci/run runs exactly this.
#
# TRUSTDEV_SKIP_E2E=1 skips the guest boots (they then say SKIPPED);
# TRUSTDEV_SKIP_NVME_CLI=1 skips only the nvme-cli checks in the NVMe guest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }
start=$SECONDS

step "Rust toolchain"
cargo --version
rustc --version

if [[ ${TRUSTDEV_SKIP_E2E:-0} != 1 ]]; then
    step "guest toolchain: QEMU 11.1 + Debian 7.x kernel (provision.sh)"
    bash qemu-configs/provision.sh
    # tests/e2e_qemu_patched.rs boots the patched QEMU: build it here (once;
    # cached by source version + patch series) rather than inside a test.
    step "patched QEMU: qemu-configs/patches (provision-qemu-patched.sh)"
    bash qemu-configs/provision-qemu-patched.sh
    # nvme-cli runs inside the NVMe guest test (copied in with its libraries).
    if ! command -v nvme >/dev/null 2>&1 && [[ ${TRUSTDEV_SKIP_NVME_CLI:-0} != 1 ]]; then
        step "host package: nvme-cli (Debian 12)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nvme-cli
    fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, integration, end-to-end)"
cargo test --workspace

step "done in $((SECONDS - start)) s"
