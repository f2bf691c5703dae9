#!/usr/bin/env bash
# vfio-user-bench.sh - our vfio-user server against nutanix/libvfio-user, with
# every figure and ratio computed here (nothing aggregated by hand).
#
# Usage: scripts/vfio-user-bench.sh [--runs N] [--rounds R] [--no-pin] [--callgrind] GPIO_SAMPLE
#
# GPIO_SAMPLE is libvfio-user's samples/gpio-pci-idio-16 binary, built outside
# this repository (release build, see docs/PERFORMANCE.md); this script never
# builds libvfio-user. Its BAR2 (region 2) register 0x8 is the one accessed;
# override with REGION=... OFFSET=... in the environment.
#
# 1. Timing: starts GPIO_SAMPLE on a fresh socket and runs
#      cargo bench -p vfio-user-server --bench regio -- --external SOCKET ...
#    N times (default 3). Each invocation measures our server, the floor
#    server and libvfio-user in alternating rounds (R rounds, default 5), all
#    pinned to one CPU unless --no-pin, and reports medians over its rounds.
#    Printed: each invocation's ops/s and ours/libvfio-user ratio per
#    operation, then the median over the invocations.
# 2. With --callgrind (needs valgrind): user-space instructions per message of
#    both servers for each operation, counted by callgrind as the difference
#    between a run of 11000 and one of 1000 operations, divided by 10000
#    (startup and teardown cancel out; the kernel's share is not counted).
set -euo pipefail
RUNS=3
ROUNDS=5
PIN=()
CALLGRIND=0
while [ $# -gt 1 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --no-pin) PIN=(--no-pin); shift ;;
        --callgrind) CALLGRIND=1; shift ;;
        *) break ;;
    esac
done
if [ $# -ne 1 ] || [ ! -x "$1" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
GPIO=$(realpath "$1")
REGION=${REGION:-2}
OFFSET=${OFFSET:-0x8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/vfio-user-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

cd "$ROOT"
REGIO=$(cargo bench -q -p vfio-user-server --bench regio --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$REGIO" ] || { echo "cannot build the regio bench" >&2; exit 1; }

wait_socket() { # path pid
    for _ in $(seq 600); do
        [ -S "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || { echo "server $2 exited" >&2; return 1; }
        sleep 0.1
    done
    echo "no socket at $1" >&2
    return 1
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "# vfio-user-bench: $(date -u +%Y-%m-%dT%H:%MZ), trustdev $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server || echo ' (server/ modified)')"
echo "# libvfio-user server: $GPIO (region $REGION offset $OFFSET)"
echo "# $RUNS invocations of the regio bench, $ROUNDS rounds each; output in $OUT"

SOCK=$OUT/libvfio-user.sock
"$GPIO" "$SOCK" >"$OUT/gpio.log" 2>&1 &
PIDS+=($!)
wait_socket "$SOCK" "${PIDS[-1]}"

for r in $(seq "$RUNS"); do
    "$REGIO" --external "$SOCK" --region "$REGION" --offset "$OFFSET" --rounds "$ROUNDS" "${PIN[@]}" \
        >"$OUT/run-$r.txt"
    grep -E '^# regio|pinned|^total time' "$OUT/run-$r.txt" | sed "s/^/run $r: /"
done
kill "${PIDS[-1]}" 2>/dev/null || true

echo
echo "## Round trips: ops/s per invocation (each the median of $ROUNDS rounds), then the median of the $RUNS invocations"
printf '%-8s %-10s %s\n' op target "per invocation ... | median"
for op in read config write posted; do
    for t in ours floor external ratio; do
        vals=()
        for r in $(seq "$RUNS"); do
            f=$OUT/run-$r.txt
            get() { sed -n "s/^RESULT op=$op target=$1 ops_per_s=\([0-9.]*\).*/\1/p" "$f"; }
            if [ $t = ratio ]; then
                vals+=("$(awk -v a="$(get ours)" -v b="$(get external)" 'BEGIN { printf "%.3f", a / b }')")
            else
                vals+=("$(get $t)")
            fi
        done
        med=$(printf '%s\n' "${vals[@]}" | median)
        name=$t
        [ $t = external ] && name=libvfio-user
        [ $t = ratio ] && name=ours/lvu
        printf '%-8s %-12s %s | %s\n' "$op" "$name" "${vals[*]}" "$med"
    done
done
echo
echo "## p50 latency in us (median of the invocations' medians)"
for op in read config write; do
    line="$op:"
    for t in ours floor external; do
        med=$(for r in $(seq "$RUNS"); do
            sed -n "s/^RESULT op=$op target=$t .*p50_us=\([0-9.]*\).*/\1/p" "$OUT/run-$r.txt"
        done | median)
        line="$line $t $med"
    done
    echo "$line" | sed 's/external/libvfio-user/'
done

[ $CALLGRIND = 1 ] || exit 0
command -v valgrind >/dev/null || { echo "--callgrind needs valgrind" >&2; exit 1; }

# Instructions of a server process that serves one client doing N operations.
count() { # ours|lvu op n
    local d=$OUT/cg-$1-$2-$3 vp
    mkdir -p "$d"
    if [ "$1" = ours ]; then
        valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$REGIO" --serve-once "$d/s.sock" \
            >"$d/vg.log" 2>&1 &
        vp=$!
        PIDS+=($vp)
        wait_socket "$d/s.sock" $vp
        "$REGIO" --drive "$d/s.sock" --op "$2" --count "$3" --region 0 --offset 0x40
    else
        # -R: no restart; it still waits for one more client after ours
        # leaves, so it is stopped with SIGTERM (callgrind still writes its
        # profile). The last reply proves every message was processed.
        valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" "$GPIO" -R "$d/s.sock" \
            >"$d/vg.log" 2>&1 &
        vp=$!
        PIDS+=($vp)
        wait_socket "$d/s.sock" $vp
        "$REGIO" --drive "$d/s.sock" --op "$2" --count "$3" --region "$REGION" --offset "$OFFSET"
        sleep 1
        kill -TERM $vp
    fi
    wait $vp || true
    sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$d/cg.out" | head -1
}

echo
echo "## User-space instructions per message (callgrind; (I(11000 ops) - I(1000 ops)) / 10000)"
printf '%-8s %10s %14s %10s\n' op ours libvfio-user ours/lvu
for op in read write posted; do
    o=$(( ($(count ours $op 11000) - $(count ours $op 1000)) / 10000 ))
    l=$(( ($(count lvu $op 11000) - $(count lvu $op 1000)) / 10000 ))
    printf '%-8s %10d %14d %10.2f\n' $op $o $l "$(awk -v a=$o -v b=$l 'BEGIN { print a / b }')"
done
