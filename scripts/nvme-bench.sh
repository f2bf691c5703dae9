#!/usr/bin/env bash
# nvme-bench.sh - guest-side NVMe benchmark: fio 4 KiB random read/write at
# QD1 and QD32 in a Debian guest (TCG, 1 vCPU) against
#   trapped : trustdev NVMe, shadow doorbells off (every doorbell trapped)
#   shadow  : trustdev NVMe, shadow doorbells + event indexes (default)
#   qemu    : QEMU's built-in -device nvme on a tmpfs image (same size)
# each RUNS times (default 3), interleaved; prints per-run lines, then the
# medians, doorbell writes (= vfio-user messages) and interrupts per I/O, and
# trustdev/QEMU IOPS ratios. A run that fails (the guest, QEMU, a server,
# or any fio run in the guest) stops the script with status 1 and the path
# of that run's output: a failure is never recorded as a figure.
# Needs fio and nvme-cli on the host (copied into the guest).
# Usage: scripts/nvme-bench.sh [RUNS] [SECONDS]
set -euo pipefail
RUNS=${1:-3}
T=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TD=${TRUSTDEV:-$ROOT/target/debug/trustdev}
SCRIPT=$ROOT/tests/guest/nvme_bench.sh
IMG=/dev/shm/trustdev-bench-qemu-nvme.img
OUT=$(mktemp -d "${TMPDIR:-/tmp}/nvme-bench.XXXXXX")
trap 'rm -f "$IMG"' EXIT
for t in fio nvme; do command -v $t >/dev/null || { echo "need $t on the host" >&2; exit 1; }; done
truncate -s 1G "$IMG"
tmp_script=$OUT/bench.sh
sed "s/^T=\${BENCH_TIME:-8}/T=$T/" "$SCRIPT" >"$tmp_script"
common=(-v --smp 1 --mem 1024 --bin "$(command -v fio)" --bin "$(command -v nvme)"
        --script "$tmp_script" --timeout 900)
run() { # name args...
    local name=$1 n; shift
    if ! "$TD" vm "$@" "${common[@]}" >"$OUT/$name.out" 2>&1; then
        echo "nvme-bench: $name FAILED: $(grep -m1 -E 'BENCH-FAIL|error' "$OUT/$name.out" || echo "trustdev vm failed") (see $OUT/$name.out)" >&2
        exit 1
    fi
    n=$(grep -c '^BENCH rw' "$OUT/$name.out" || true)
    if [ "$n" -ne 4 ]; then
        echo "nvme-bench: $name FAILED: $n of 4 results (see $OUT/$name.out)" >&2
        exit 1
    fi
    grep '^BENCH rw' "$OUT/$name.out" | sed "s/^/$name /"
}
for r in $(seq 1 "$RUNS"); do
    run "trapped-$r" -d nvme:size=1G,no-shadow-doorbells
    run "shadow-$r" -d nvme:size=1G
    run "qemu-$r" --qemu-arg=-drive --qemu-arg="file=$IMG,if=none,id=qn0,format=raw,cache=writeback" \
        --qemu-arg=-device --qemu-arg=nvme,serial=qemu0001,drive=qn0
done | tee "$OUT/all.txt"
echo
awk '
/BENCH rw=/ {
    split($1, n, "-"); cfg = n[1]
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    k = cfg " " v["rw"] " qd" v["qd"]
    iops[k] = iops[k] " " v["iops"]
    if (v["completions"] > 0) {
        db[k] = db[k] " " v["doorbells"] / v["completions"]
        irq[k] = irq[k] " " v["irqs"] / v["completions"]
    }
    delete v
}
function median(s,   a, n, i, j, t) {
    n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n ? a[int((n + 1) / 2)] : 0
}
END {
    printf "%-26s %8s %14s %14s %10s\n", "config", "IOPS", "doorbells/IO", "irqs/IO", "vs qemu"
    split("randread randwrite", rws, " "); split("1 32", qds, " ")
    for (c = 1; c <= 3; c++) {
        cfg = (c == 1) ? "trapped" : (c == 2) ? "shadow" : "qemu"
        for (r = 1; r <= 2; r++) for (q = 1; q <= 2; q++) {
            k = cfg " " rws[r] " qd" qds[q]; kq = "qemu " rws[r] " qd" qds[q]
            m = median(iops[k]); mq = median(iops[kq])
            printf "%-26s %8d %14s %14s %10s\n", k, m,
                (k in db) ? sprintf("%.4f", median(db[k])) : "-",
                (k in irq) ? sprintf("%.3f", median(irq[k])) : "-",
                (mq > 0) ? sprintf("%.2fx", m / mq) : "-"
        }
    }
}' "$OUT/all.txt"
echo "(raw outputs in $OUT)"
