#!/usr/bin/env bash
# sva-bench.sh - accelerator memmove from a guest process through SVA
# (process virtual addresses, PASID, uio_pci_generic_sva) vs through vfio-pci
# IOVA mappings (type1 container, the vIOMMU), same guest kernel, same guest
# tool, same device model, same sizes, in one invocation.
#
# Usage: scripts/sva-bench.sh [--rounds N] [--boots K] [--sizes BYTES,...] [--timeout S]
#                             [--qemu-arg ARG]...
#   defaults: --rounds 11 --boots 1 --sizes 4096,65536,1048576 --timeout 900 (per boot)
#   --qemu-arg: passed to every boot's QEMU (`trustdev vm --qemu-arg`), e.g.
#   `--qemu-arg -global --qemu-arg vfio-user-pci.x-pasid-ats=off` keeps a
#   QEMU with ATS support on PASID_DMA messages.
#
# Needs the patched QEMU (`trustdev vm --qemu patched`; honours
# TRUSTDEV_QEMU_PATCHED=/path/to/wrapper) and uio_pci_generic_sva.ko
# (qemu-configs/provision-kmod.sh --only uio-sva, run here). TRUSTDEV picks
# the trustdev binary (default target/debug/trustdev; the guest gets the
# trustdev-guest beside it); its build directory is printed.
#
# Each of K rounds of boots: boot svaK (`--qemu patched --sva`, two
# accelerators behind root ports): the guest (tests/guest/sva_bench.sh) times
# `trustdev-guest accel-bench --path sva` on the first accelerator, then
# `--path iova` on the second one in the same guest. With `--sva` the vIOMMU
# does first-stage translation only (Linux's SVA needs it), and QEMU then
# sends no DMA_MAP for a vfio-pci IOVA domain (it leaves stage-1 to host
# nesting: the device's ring fetch faults), so on today's QEMU the same-guest
# IOVA run fails; the script says why and boots iovaK: the same QEMU binary,
# kernel, tool and devices with `--iommu` (second-stage translation, caching
# mode: every guest IOVA mapping becomes a DMA_MAP with an fd), IOVA path
# only. The SVA and IOVA boots alternate, so load drift on a shared machine
# hits both; the output says where the IOVA figures come from.
#
# What is timed (guest/src/accel_bench.rs): in the guest process, from just
# before the queue's TAIL doorbell write to the busy-poll loop seeing the
# completion record's status change; buffers, ring and source data are set
# up and pre-faulted beforehand, one untimed warm-up per size, every round's
# destination checked against its source. Rounds are interleaved over the
# sizes. Printed per size: median, min and max MB/s (1 MB = 10^6 bytes) over
# all K x N timed rounds, and SVA/IOVA = the ratio of the two medians.
#
# The SVA path depends on what QEMU's vfio-user client negotiated with the
# accelerator: the server log's "PASID extension negotiated: ats X, pri Y,
# dma Z" and its PASID counters at disconnect are printed, and the path is
# named from them: PASID_DMA messages (QEMU translates each page and copies
# the data through the socket) or ATS translations into the device's ATC
# (zero-copy through translated windows).
#
# A boot or a path that fails stops the script with status 1 and the path
# of its output: a failure is never a figure.
set -euo pipefail
ROUNDS=11
BOOTS=1
QARGS=()
SIZES=4096,65536,1048576
TIMEOUT=900
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --boots) BOOTS=$2; shift 2 ;;
        --qemu-arg) QARGS+=(--qemu-arg "$2"); shift 2 ;;
        --sizes) SIZES=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "sva-bench: --rounds must be a positive integer" >&2; exit 2; }
[[ $BOOTS =~ ^[1-9][0-9]*$ ]] || { echo "sva-bench: --boots must be a positive integer" >&2; exit 2; }
[[ $SIZES =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "sva-bench: --sizes must be BYTES[,BYTES...]" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TD=${TRUSTDEV:-$ROOT/target/debug/trustdev}
[ -x "$TD" ] || { echo "sva-bench: $TD missing (cargo build --bins)" >&2; exit 1; }
[ -x "$(dirname "$TD")/trustdev-guest" ] || { echo "sva-bench: trustdev-guest missing beside $TD" >&2; exit 1; }
OUT=$(mktemp -d "${TMPDIR:-/tmp}/sva-bench.XXXXXX")
KO=$(bash "$ROOT/qemu-configs/provision-kmod.sh" --only uio-sva --quiet | sed -n 's/^TRUSTDEV_UIO_SVA_KO=//p')
[ -f "$KO" ] || { echo "sva-bench: uio_pci_generic_sva.ko not built (qemu-configs/provision-kmod.sh --only uio-sva)" >&2; exit 1; }

# boot NAME PATHS trustdev-vm-args...: runs one guest; its serial output in
# $OUT/NAME.serial, trustdev's in $OUT/NAME.out, server logs in $OUT/NAME.logs/.
boot() {
    local name=$1 paths=$2 dir; shift 2
    sed -e "s/^SIZES=.*/SIZES=$SIZES/" -e "s/^ROUNDS=.*/ROUNDS=$ROUNDS/" \
        -e "s/^PATHS=.*/PATHS=\"$paths\"/" "$ROOT/tests/guest/sva_bench.sh" >"$OUT/$name.sh"
    TRUSTDEV_KEEP=1 RUST_LOG=info "$TD" vm "$@" ${QARGS[@]+"${QARGS[@]}"} -d accel -d accel \
        --file "$KO:/lib/modules/uio_pci_generic_sva.ko" --script "$OUT/$name.sh" \
        --serial-log "$OUT/$name.serial" --timeout "$TIMEOUT" >"$OUT/$name.out" 2>&1 || true
    dir=$(sed -n 's/.*logs kept in //p' "$OUT/$name.out" | tail -n 1)
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        mkdir -p "$OUT/$name.logs"
        cp "$dir"/*.log "$dir"/qemu.cmdline "$OUT/$name.logs/" 2>/dev/null || true
        rm -rf "$dir"
    fi
    grep -q 'script exit status' "$OUT/$name.out" || {
        echo "sva-bench: boot $name FAILED: $(grep -m1 -iE 'error|failed' "$OUT/$name.out" || echo 'no verdict') (see $OUT/$name.out)" >&2
        exit 1
    }
}
# results NAME PATH: that path's BENCH lines, each checked (rounds verified).
results() {
    local lines n
    lines=$(grep -a "^BENCH path=$2 " "$OUT/$1.serial" | tr -d '\r' || true)
    n=$(printf '%s\n' "$lines" | grep -c "verified=$ROUNDS " || true)
    [ "$n" -eq "$(tr ',' '\n' <<<"$SIZES" | wc -l)" ] || return 1
    printf '%s\n' "$lines"
}
fail_reason() { grep -a "^BENCH-FAIL path=$2 " "$OUT/$1.serial" | tr -d '\r' | head -n 1 | cut -d' ' -f4-; }
# num FIELD: a counter of the PasidStats line in $STATS (0 if absent).
num() { local x; x=$(sed -n "s/.*[{ ]$1: \([0-9]*\).*/\1/p" <<<"$STATS"); echo "${x:-0}"; }

echo "sva-bench: trustdev $TD ($(basename "$(dirname "$TD")") build), sizes $SIZES, $ROUNDS rounds, $BOOTS boot(s) per path, outputs in $OUT"
[ ${#QARGS[@]} -eq 0 ] || echo "sva-bench: extra QEMU arguments: $(for ((i = 1; i < ${#QARGS[@]}; i += 2)); do printf '%s ' "${QARGS[i]}"; done)"
SVA="" IOVA="" IOVA_FROM="" SVA_PATHS=""
for k in $(seq 1 "$BOOTS"); do
    boot "sva$k" "sva iova" --qemu patched --sva
    grep -a -m1 '^trustdev vm: QEMU .*guest kernel' "$OUT/sva$k.out" | sed "s/^trustdev vm: /boot sva$k: --sva, /" || true
    grep -a '^BENCH-IOMMU\|^BENCH-INFO' "$OUT/sva$k.serial" | tr -d '\r' | sed 's/^/  /'
    lines=$(results "sva$k" sva) || {
        echo "sva-bench: SVA path FAILED in boot sva$k: $(fail_reason "sva$k" sva) (see $OUT/sva$k.serial)" >&2
        exit 1
    }
    SVA+=$lines$'\n'
    STATS=$(grep -a -o 'PASID so far: .*' "$OUT/sva$k.logs/accel0.log" 2>/dev/null | head -n 1 || true)
    echo "  accel0 (SVA): $(grep -a -m1 -o 'PASID extension negotiated: .*' "$OUT/sva$k.logs/accel0.log" 2>/dev/null || echo 'PASID extension not negotiated')"
    echo "  accel0 (SVA): ${STATS:-no PASID counters in the server log}"
    if [ -z "$STATS" ]; then
        p="unknown (no PASID counters in the server log)"
    elif [ "$(num translations)" -gt 0 ] || [ "$(num atc_hits)" -gt 0 ]; then
        p="ATS: the device's ATC and translated windows"
    else
        p="PASID_DMA messages: QEMU translates and copies every piece, no ATS translations"
    fi
    echo "  => SVA path: $p"
    case "$SVA_PATHS" in *"[$p]"*) ;; *) SVA_PATHS+="[$p]" ;; esac
    if lines=$(results "sva$k" iova); then
        IOVA+=$lines$'\n'
        IOVA_FROM="the same guests (--sva)"
        continue
    fi
    echo "  IOVA in the same guest: $(fail_reason "sva$k" iova)"
    echo "  -> the IOVA path in a boot of its own: --iommu (second-stage) instead of --sva (first-stage)"
    boot "iova$k" "iova" --qemu patched --iommu
    grep -a -m1 '^trustdev vm: QEMU .*guest kernel' "$OUT/iova$k.out" | sed "s/^trustdev vm: /boot iova$k: --iommu, /" || true
    grep -a '^BENCH-IOMMU\|^BENCH-INFO' "$OUT/iova$k.serial" | tr -d '\r' | sed 's/^/  /'
    lines=$(results "iova$k" iova) || {
        echo "sva-bench: IOVA path FAILED in boot iova$k: $(fail_reason "iova$k" iova) (see $OUT/iova$k.serial)" >&2
        exit 1
    }
    IOVA+=$lines$'\n'
    IOVA_FROM="boots of their own (--iommu), alternating with the SVA boots"
done
echo
echo "SVA path: $SVA_PATHS"
echo "IOVA path: vfio-pci type1 mappings in $IOVA_FROM; device DMA through the DMA_MAP windows (guest RAM fds)"
echo
# Statistics over every timed round of every boot (the ns= lists).
{ sed '/^$/d; s/^/S /' <<<"$SVA"; sed '/^$/d; s/^/I /' <<<"$IOVA"; } | awk '
{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    s = v["size"]
    if (!(s in seen)) { seen[s] = 1; order[++n] = s }
    m = split(v["ns"], t, ",")
    for (j = 1; j <= m; j++) { c = ++cnt[$1, s]; val[$1, s, c] = t[j] + 0 }
    delete v
}
function stats(p, s,   c, i, j, x, a) {
    c = cnt[p, s]
    for (i = 1; i <= c; i++) a[i] = val[p, s, i]
    for (i = 2; i <= c; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
    MED = a[int((c + 1) / 2)]; MIN = a[1]; MAX = a[c]; N = c
}
function mbs(size, ns) { return ns > 0 ? size * 1000 / ns : 0 }
function human(b) { return b >= 1048576 ? b / 1048576 " MiB" : b >= 1024 ? b / 1024 " KiB" : b " B" }
END {
    printf "%-9s %11s %19s %11s %19s %9s %11s\n", "size", "SVA MB/s", "SVA min..max", "IOVA MB/s", "IOVA min..max", "SVA/IOVA", "rounds S/I"
    for (k = 1; k <= n; k++) {
        s = order[k]
        stats("S", s); sm = mbs(s, MED); sr = sprintf("%.2f..%.2f", mbs(s, MAX), mbs(s, MIN)); sn = N
        stats("I", s); im = mbs(s, MED); ir = sprintf("%.2f..%.2f", mbs(s, MAX), mbs(s, MIN)); in_ = N
        printf "%-9s %11.2f %19s %11.2f %19s %9.3f %11s\n", human(s), sm, sr, im, ir,
            (im > 0 ? sm / im : 0), sn "/" in_
    }
    print "MB/s (1 MB = 10^6 bytes): median (lower middle if even) and min..max over all timed rounds of all boots, every round"
    print "verified; SVA/IOVA: ratio of the two medians. Debug or release: see the first line."
}'
echo "(raw outputs in $OUT)"
