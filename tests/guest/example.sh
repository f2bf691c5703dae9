#!/bin/sh
# Guest half of the example-device end-to-end test: what the stock guest
# kernel made of every DMA-copy device (IDs, BARs, capabilities in the 4 KiB
# config space), then a DMA copy driven from guest user space through
# vfio-pci with MSI-X completion. Prints "CHECK-OK <bdf> <what>" or
# "CHECK-FAIL <bdf> <what>: <detail>" lines; exits non-zero on any failure.
fail=0
ok() { echo "CHECK-OK $bdf $1"; }
bad() { echo "CHECK-FAIL $bdf $1: $2"; fail=1; }
expect() { # name got want
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "got $2, want $3"; fi
}
# dword DEV OFFSET -> 8 hex digits of the config dword
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }
hex() { printf '%d' "0x$1"; }

bdfs=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xd3a0 ] && bdfs="$bdfs ${d##*/}"
done
bdf=none
[ -n "$bdfs" ] || bad devices "no DMA-copy device enumerated"
echo "DEVICES$bdfs"

for bdf in $bdfs; do
    d=/sys/bus/pci/devices/$bdf
    expect class "$(cat "$d/class")" 0x120000
    expect subsystem "$(cat "$d/subsystem_vendor"):$(cat "$d/subsystem_device")" 0x7d0c:0x0001
    expect config-size "$(wc -c <"$d/config")" 4096
    # BARs: start end flags per line.
    set -- $(sed -n 1p "$d/resource"); expect bar0-size $(($2 - $1 + 1)) 4096
    set -- $(sed -n 2p "$d/resource"); expect bar1-size $(($2 - $1 + 1)) 4096
    set -- $(sed -n 3p "$d/resource"); expect bar2-size $(($2 - $1 + 1)) 16384
    expect bar2-64bit-prefetch $(( $3 & 0x102000 )) $((0x102000))
    # Standard capability list.
    caps="" pcie_type="" msix_size=""
    p=$(( $(hex "$(dw "$d" 52)") & 0xfc ))
    n=0
    while [ "$p" -ne 0 ] && [ $n -lt 48 ]; do
        v=$(hex "$(dw "$d" $p)")
        id=$((v & 0xff))
        caps="$caps $(printf '%02x' $id)"
        [ $id = 16 ] && pcie_type=$(( (v >> 20) & 0xf ))
        [ $id = 17 ] && msix_size=$(( ((v >> 16) & 0x7ff) + 1 ))
        p=$(( (v >> 8) & 0xfc ))
        n=$((n + 1))
    done
    expect std-caps "$caps" " 01 05 11 10"
    expect msix-vectors "$msix_size" 4
    # Extended capabilities (visible only with the 4 KiB config region).
    ext="" p=256 n=0
    while [ "$p" -ne 0 ] && [ $n -lt 64 ]; do
        v=$(hex "$(dw "$d" $p)")
        [ "$v" -eq 0 ] && break
        ext="$ext $(printf '%04x@%x' $((v & 0xffff)) $p)"
        p=$(( (v >> 20) & 0xffc ))
        n=$((n + 1))
    done
    expect ext-caps "$ext" " 0003@100 000b@10c 002e@11c 0030@134 0001@188"
    # Every instance has its own non-zero Device Serial Number.
    dsn="$(dw "$d" 264)$(dw "$d" 260)"
    if [ "$dsn" = 0000000000000000 ] || [ ${#dsn} -ne 16 ]; then
        bad dsn "no serial number ($dsn)"
    elif echo " $dsns " | grep -q " $dsn "; then
        bad dsn "$dsn also on another device"
    else
        ok "dsn $dsn"
    fi
    dsns="$dsns $dsn"
    # The kernel's DOE core probed the mailbox at enumeration (abort +
    # discovery walk) without errors.
    expect doe-discovery "$(cat "$d/doe_features/doe_discovery" 2>&1)" 0001:00
    doe_errs=$(dmesg | grep -F "$bdf" | grep -i -E "doe|mailbox" | grep -i -E "error|timed out|fail|abort")
    expect doe-no-errors "$doe_errs" ""
    case $bdf in
        0000:00:*) expect pcie-type "$pcie_type" 9 ;;   # RCiEP on pcie.0
        *) expect pcie-type "$pcie_type" 0 ;;           # Endpoint behind a root port
    esac
    echo "--- trustdev-guest lspci $bdf"
    trustdev-guest lspci "$bdf" || bad lspci "trustdev-guest lspci failed"
    echo "--- trustdev-guest dma-copy $bdf"
    if out=$(trustdev-guest dma-copy --bdf "$bdf" --count 4 --size 4096 2>&1); then
        echo "$out"
        ok "dma-copy $(echo "$out" | tail -n 1)"
    else
        echo "$out"
        bad dma-copy "$(echo "$out" | tail -n 1)"
    fi
done
exit $fail
