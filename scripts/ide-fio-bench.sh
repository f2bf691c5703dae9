#!/usr/bin/env bash
# ide-fio-bench.sh - guest fio 4 KiB random read/write at QD32 against the
# trustdev NVMe controller with its IDE stream off and SECURE, alternating,
# ROUNDS times, in ONE guest session (TCG, 1 vCPU; the stream set up by
# `trustdev-guest ide` over DOE/SPDM/IDE_KM, fio run through its --run while
# the stream is SECURE). Prints the fio lines, then per direction the median
# IOPS of each mode and secure/off.
# Needs fio on the host (copied into the guest).
# Usage: scripts/ide-fio-bench.sh [ROUNDS] [SECONDS]
set -euo pipefail
ROUNDS=${1:-2}
T=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TD=${TRUSTDEV:-$ROOT/target/debug/trustdev}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ide-fio-bench.XXXXXX")
command -v fio >/dev/null || { echo "need fio on the host" >&2; exit 1; }
sed -e "s/^ROUNDS=2\$/ROUNDS=$ROUNDS/" -e "s/^T=8\$/T=$T/" "$ROOT/tests/guest/ide_fio.sh" >"$OUT/ide_fio.sh"
"$TD" vm -v --smp 1 --mem 1024 -d nvme:size=1G --bin "$(command -v fio)" \
    --script "$OUT/ide_fio.sh" --timeout 1800 >"$OUT/vm.out" 2>&1 || {
    echo "the guest run failed: see $OUT/vm.out" >&2
    grep -E '^BENCH|FAILED' "$OUT/vm.out" >&2 || true
    exit 1
}
grep '^BENCH ide=' "$OUT/vm.out" | tee "$OUT/all.txt"
echo
awk '
{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
  k = v["rw"] " " v["ide"]; s[k] = s[k] " " v["iops"] }
function median(x,   a, n, i, j, t) {
    n = split(x, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
    printf "%-10s %12s %12s %12s\n", "fio QD32", "IDE off", "IDE SECURE", "secure/off"
    split("randread randwrite", rws, " ")
    for (r = 1; r <= 2; r++) {
        off = median(s[rws[r] " off"]); sec = median(s[rws[r] " secure"])
        printf "%-10s %12d %12d %12s\n", rws[r], off, sec, (off > 0 ? sprintf("%.3f", sec / off) : "-")
    }
    print "(IOPS: median of the rounds)"
}' "$OUT/all.txt"
echo "(raw output in $OUT)"
