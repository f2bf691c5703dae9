#!/usr/bin/env bash
# vfio-user-bench.sh - our vfio-user server against nutanix/libvfio-user, with
# every figure and ratio computed here (nothing aggregated by hand).
#
# Usage: scripts/vfio-user-bench.sh [--runs N] [--rounds R] [--no-pin] [--nice N] [--copy]
#                                   [--sched] [--callgrind] GPIO_SAMPLE
#
# GPIO_SAMPLE is libvfio-user's samples/gpio-pci-idio-16 binary, built outside
# this repository (release build, see docs/PERFORMANCE.md); this script never
# builds libvfio-user. Its BAR2 (region 2) register 0x8 is the one accessed;
# override with REGION=... OFFSET=... in the environment. The timing part
# (1) starts it as `GPIO_SAMPLE SOCKET`, so any vfio-user server started that
# way can be compared (NAME=... labels it; e.g. an older build of ours).
#
# 1. Timing: starts GPIO_SAMPLE on a fresh socket and runs
#      cargo bench -p vfio-user-server --bench regio -- --external SOCKET ...
#    N times (default 3). Each invocation measures our server, the floor
#    server and libvfio-user in alternating rounds (R rounds, default 5), all
#    pinned to one CPU unless --no-pin, and reports medians over its rounds.
#    Printed: each invocation's ops/s and ours/libvfio-user ratio per
#    operation, then the median over the invocations. --nice N (root) runs
#    everything in a new session whose scheduler autogroup gets niceness N
#    (e.g. -20), so that other sessions' work on a shared machine rarely
#    gets the pinned CPU. (With autogroup scheduling a process's own nice
#    value only counts inside its session.) Client and servers stay in that
#    one group, under the normal policy, with equal weights.
# 2. With --copy: one more invocation without --external, for its
#    guest-memory copy bandwidth table (GuestMemory vs memcpy).
# 3. With --sched (needs perf): 200000 posted writes to each server, client
#    and server pinned to one CPU; perf stat's task-clock and context switches
#    of the client and of the server, per message (where the time goes).
# 4. With --callgrind (needs valgrind): user-space instructions per message of
#    both servers for each operation, counted by callgrind as the difference
#    between a run of 11000 and one of 1000 operations, divided by 10000
#    (startup and teardown cancel out; the kernel's share is not counted).
set -euo pipefail
ARGS=("$@")
RUNS=3
ROUNDS=5
PIN=()
NICE=
CALLGRIND=0
COPY=0
SCHED=0
while [ $# -gt 1 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --no-pin) PIN=(--no-pin); shift ;;
        --nice) NICE=$2; shift 2 ;;
        --callgrind) CALLGRIND=1; shift ;;
        --copy) COPY=1; shift ;;
        --sched) SCHED=1; shift ;;
        *) break ;;
    esac
done
if [ $# -ne 1 ] || [ ! -x "$1" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
if [ -n "$NICE" ] && [ -z "${VFIO_USER_BENCH_SESSION:-}" ]; then
    # A session of our own: its autogroup holds only this benchmark.
    VFIO_USER_BENCH_SESSION=1 exec setsid -w "$0" "${ARGS[@]}"
fi
if [ -n "$NICE" ]; then
    echo "$NICE" >/proc/self/autogroup
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
# REGIO=... uses another build of the bench (e.g. an older commit's, for
# before/after instruction counts with --runs 0 --callgrind).
REGIO=${REGIO:-$(cargo bench -q -p vfio-user-server --bench regio --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)}
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

echo "# vfio-user-bench: $(date -u +%Y-%m-%dT%H:%MZ), trustdev $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server || echo ' (server/ modified)'), bench $REGIO"
NAME=${NAME:-libvfio-user}
echo "# $NAME server: $GPIO (region $REGION offset $OFFSET)"
echo "# $RUNS invocations of the regio bench, $ROUNDS rounds each; scheduler $(cat /proc/self/autogroup 2>/dev/null || echo 'autogroup: n/a'); output in $OUT"

if [ "$RUNS" -gt 0 ]; then
    SOCK=$OUT/external.sock
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
    printf '%-8s %-12s %s\n' op target "per invocation ... | median"
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
            [ $t = external ] && name=$NAME
            [ $t = ratio ] && name=ours/ext
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
        echo "$line" | sed "s|external|$NAME|"
    done
fi

if [ $COPY = 1 ]; then
    "$REGIO" --rounds "$ROUNDS" "${PIN[@]}" >"$OUT/copy.txt"
    echo
    sed -n '/^## Guest-memory copy/,/^total time/p' "$OUT/copy.txt"
fi

# Starts server ours|lvu on socket $2 (pinned to CPU $3 if given); sets SRV.
# WRAP, if set, is a command prefix (valgrind).
WRAP=()
start_server() {
    local pin=()
    [ -n "${3:-}" ] && pin=(taskset -c "$3")
    if [ "$1" = ours ]; then
        "${pin[@]}" "${WRAP[@]}" "$REGIO" --serve-once "$2" >/dev/null 2>&1 &
    else
        "${pin[@]}" "${WRAP[@]}" "$GPIO" -R "$2" >/dev/null 2>&1 &
    fi
    SRV=$!
    PIDS+=($SRV)
    wait_socket "$2" $SRV
}
target_args() { # ours|lvu
    if [ "$1" = ours ]; then echo "--region 0 --offset 0x40"; else echo "--region $REGION --offset $OFFSET"; fi
}

if [ $SCHED = 1 ]; then
    command -v perf >/dev/null || { echo "--sched needs perf" >&2; exit 1; }
    CPU=$(taskset -pc $$ | sed 's/.*: //; s/.*[,-]//')
    N=200000
    echo
    echo "## Posted writes: CPU time and context switches per message ($N writes, client and server on CPU $CPU)"
    printf '%-14s %10s %14s %14s %16s %16s
' server msgs/s 'client us/msg' 'server us/msg' 'client cs/msg' 'server cs/msg'
    for t in ours lvu ours lvu; do
        d=$OUT/sched-$t-$RANDOM
        mkdir -p "$d"
        start_server $t "$d/s.sock" "$CPU"
        sleep 0.5
        perf stat -x, -e task-clock,context-switches -p $SRV -o "$d/server.csv" &
        pp=$!
        sleep 0.3
        t0=$(date +%s%N)
        # shellcheck disable=SC2046
        perf stat -x, -e task-clock,context-switches -o "$d/client.csv" \
            taskset -c "$CPU" "$REGIO" --drive "$d/s.sock" --op posted --count $N $(target_args $t) \
            2>"$d/drive.err" >/dev/null
        el=$(( $(date +%s%N) - t0 ))
        sleep 0.3
        kill -INT $pp 2>/dev/null || true
        wait $pp 2>/dev/null || true
        kill $SRV 2>/dev/null || true
        wait $SRV 2>/dev/null || true
        val() { awk -F, -v e="$2" '$3 == e { print $1 }' "$1"; }
        # msgs/s over the client's whole run (connect and final read included).
        awk -v n=$N -v t="$([ $t = ours ] && echo ours || echo "$NAME")" \
            -v ct="$(val "$d/client.csv" task-clock)" -v cc="$(val "$d/client.csv" context-switches)" \
            -v st="$(val "$d/server.csv" task-clock)" -v sc="$(val "$d/server.csv" context-switches)" \
            -v el="$el" 'BEGIN { printf "%-14s %10.0f %14.2f %14.2f %16.3f %16.3f\n", t, n / (el / 1e9), ct * 1000 / n, st * 1000 / n, cc / n, sc / n }'
    done
fi

[ $CALLGRIND = 1 ] || exit 0
command -v valgrind >/dev/null || { echo "--callgrind needs valgrind" >&2; exit 1; }

# Instructions of a server process that serves one client doing N operations.
count() { # ours|lvu op n
    local d=$OUT/cg-$1-$2-$3
    mkdir -p "$d"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$d/cg.out")
    start_server "$1" "$d/s.sock"
    WRAP=()
    # shellcheck disable=SC2046
    "$REGIO" --drive "$d/s.sock" --op "$2" --count "$3" $(target_args "$1") >/dev/null
    if [ "$1" = lvu ]; then
        # -R: no restart, but it still waits for one more client after ours
        # leaves; callgrind writes its profile on SIGTERM too. The last reply
        # proved that every message was processed.
        sleep 1
        kill -TERM $SRV
    fi
    wait $SRV || true
    sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$d/cg.out" | head -1
}

echo
echo "## User-space instructions per message (callgrind; (I(11000 ops) - I(1000 ops)) / 10000)"
printf '%-8s %10s %14s %10s\n' op ours "$NAME" ours/ext
for op in read write posted; do
    o=$(( ($(count ours $op 11000) - $(count ours $op 1000)) / 10000 ))
    l=$(( ($(count lvu $op 11000) - $(count lvu $op 1000)) / 10000 ))
    printf '%-8s %10d %14d %10.2f\n' $op $o $l "$(awk -v a=$o -v b=$l 'BEGIN { print a / b }')"
done
