#!/usr/bin/env bash
# The trustdev demo: builds trustdev, provisions QEMU 11.1 and the Debian guest
# kernel if needed, boots a guest against trustdev devices and explains what
# the guest kernel did with them. Extra arguments go to `trustdev demo`
# (e.g. --verbose to watch the guest console).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --quiet --workspace --bins
exec target/debug/trustdev demo "$@"
