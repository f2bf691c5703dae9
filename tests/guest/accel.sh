#!/bin/sh
# Guest half of the accelerator end-to-end test (tests/e2e_accel.rs). The
# guest has intel-iommu in scalable mode with pasid-bits and device-iotlb,
# and one accelerator behind a root port plus one on pcie.0. For each:
#  - enumeration: IDs, BARs (BAR0 32-bit non-prefetchable), MSI-X, DEVCAP2
#    End-End TLP Prefix, the extended capability chain (DSN ATS PRI PASID DOE
#    IDE AER);
#  - what the IOMMU driver wrote to PASID/ATS/PRI at probe;
#  - DOE discovery and CMA/SPDM authentication with the device's root;
#  - every operation from user space through vfio-pci, with MSI-X and polled;
#  - `trustdev-guest accel-bench --path iova` (scripts/sva-bench.sh), tiny;
#  - uio_pci_generic_sva: bind, open, and where SVA stops (a kprobe on
#    iommu_sva_bind_device records its return value; the IOMMU's ecap SMPWC).
# Prints "CHECK-OK <bdf> <what>" / "CHECK-FAIL <bdf> <what>: <detail>",
# "DSN <bdf> <serial>" and "STATE <bdf> <stage> pasid=.. ats=.. pri=.." lines;
# exits non-zero on failure.
fail=0
ok() { echo "CHECK-OK $bdf $1"; }
bad() { echo "CHECK-FAIL $bdf $1: $2"; fail=1; }
expect() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "got $2, want $3"; fi; }
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }
hex() { printf '%d' "0x$1"; }
# ext_cap DEV ID -> offset of extended capability ID (decimal), or empty
ext_cap() {
    p=256 n=0
    while [ "$p" -ne 0 ] && [ $n -lt 64 ]; do
        v=$(hex "$(dw "$1" $p)")
        [ "$v" -eq 0 ] && return
        [ $((v & 0xffff)) -eq "$2" ] && { echo $p; return; }
        p=$(( (v >> 20) & 0xffc )); n=$((n + 1))
    done
}
state() { # DEV STAGE: PASID control, ATS control, PRI control and status
    pa=$(ext_cap "$1" 27) at=$(ext_cap "$1" 15) pr=$(ext_cap "$1" 19)
    pc=$(( $(hex "$(dw "$1" $((pa + 4)))") >> 16 & 0xffff ))
    ac=$(( $(hex "$(dw "$1" $((at + 4)))") >> 16 & 0xffff ))
    pw=$(hex "$(dw "$1" $((pr + 4)))")
    printf 'STATE %s %s pasid=%#06x ats=%#06x pri=%#06x pri-status=%#06x\n' \
        "${1##*/}" "$2" $pc $ac $((pw & 0xffff)) $((pw >> 16 & 0xffff))
}

bdfs=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xacc1 ] && bdfs="$bdfs ${d##*/}"
done
bdf=none
[ -n "$bdfs" ] || bad devices "no accelerator enumerated"
echo "DEVICES$bdfs"

# The vIOMMU: scalable mode, PASID, and whether it reports SMPWC (ecap bit 48),
# which Linux's intel_svm_check() needs before it allows SVA.
ecap=$(cat /sys/class/iommu/dmar0/intel-iommu/ecap 2>/dev/null)
echo "IOMMU ecap=$ecap smpwc=$(( (0x$ecap >> 48) & 1 )) pasid=$(( (0x$ecap >> 40) & 1 )) prs=$(( (0x$ecap >> 29) & 1 )) sm=$(( (0x$ecap >> 43) & 1 ))"

roots=""
for r in /etc/trustdev/roots/accel-*.pem; do [ -f "$r" ] && roots="$roots --root $r"; done

# A kprobe on iommu_sva_bind_device's return (tracefs, kprobe events).
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
if echo 'r:trustdev/svabind iommu_sva_bind_device ret=$retval:s64' >>$T/kprobe_events &&
    echo 1 >$T/events/trustdev/svabind/enable; then
    echo "KPROBE iommu_sva_bind_device armed"
else
    echo "KPROBE unavailable"
fi
insmod /lib/modules/uio_pci_generic_sva.ko && echo "MODULE uio_pci_generic_sva loaded"

for bdf in $bdfs; do
    d=/sys/bus/pci/devices/$bdf
    expect class "$(cat "$d/class")" 0x120000
    expect config-size "$(wc -c <"$d/config")" 4096
    set -- $(sed -n 1p "$d/resource"); expect bar0-size $(($2 - $1 + 1)) 16384
    # IORESOURCE_MEM without PREFETCH or MEM_64, and the BAR's own type bits 0.
    expect bar0-mem32-nonprefetch "$(( $3 & 0x102200 )):$(( $(hex "$(dw "$d" 16)") & 0xf ))" "$((0x200)):0"
    set -- $(sed -n 3p "$d/resource"); expect bar2-size $(($2 - $1 + 1)) 4096
    # Standard capabilities: MSI-X table size and PCIe DEVCAP2.
    p=$(( $(hex "$(dw "$d" 52)") & 0xfc )) n=0 msix="" devcap2=0 ptype=""
    while [ "$p" -ne 0 ] && [ $n -lt 48 ]; do
        v=$(hex "$(dw "$d" $p)")
        [ $((v & 0xff)) = 17 ] && msix=$(( ((v >> 16) & 0x7ff) + 1 ))
        [ $((v & 0xff)) = 16 ] && { devcap2=$(hex "$(dw "$d" $((p + 0x24)))"); ptype=$(( (v >> 20) & 0xf )); }
        p=$(( (v >> 8) & 0xfc )); n=$((n + 1))
    done
    expect msix-vectors "$msix" 8
    expect devcap2-ee-prefix $(( devcap2 >> 20 & 0x7 )) 7
    case $bdf in
        0000:00:*) expect pcie-type "$ptype" 9 ;;
        *) expect pcie-type "$ptype" 0 ;;
    esac
    ext="" p=256 n=0
    while [ "$p" -ne 0 ] && [ $n -lt 64 ]; do
        v=$(hex "$(dw "$d" $p)")
        [ "$v" -eq 0 ] && break
        ext="$ext $(printf '%04x' $((v & 0xffff)))"
        p=$(( (v >> 20) & 0xffc )); n=$((n + 1))
    done
    expect ext-caps "$ext" " 0003 000f 0013 001b 002e 0030 0001"
    ds=$(ext_cap "$d" 3)
    echo "DSN $bdf $(dw "$d" $((ds + 8)))$(dw "$d" $((ds + 4)))"
    pa=$(ext_cap "$d" 27)
    expect pasid-cap-20bit-exec-priv $(( $(hex "$(dw "$d" $((pa + 4)))") & 0xffff )) $((0x1406))
    # What the IOMMU driver did at probe (no driver bound yet).
    state "$d" probe
    at=$(ext_cap "$d" 15) pr=$(ext_cap "$d" 19)
    expect pasid-enabled-by-iommu $(( $(hex "$(dw "$d" $((pa + 4)))") >> 16 )) 7
    expect ats-enabled-by-iommu $(( $(hex "$(dw "$d" $((at + 4)))") >> 16 )) $((0x8000))
    expect pri-left-disabled-stopped $(( $(hex "$(dw "$d" $((pr + 4)))") )) $((0x81000000))
    # DOE and CMA/SPDM.
    expect doe-features "$(ls "$d/doe_features" 2>/dev/null | tr '\n' ' ')" "0001:01 0001:02 doe_discovery "
    if out=$(trustdev-guest spdm --bdf "$bdf" $roots 2>&1); then
        case "$out" in
            *"SPDM-OK $bdf"*) ok "spdm $(echo "$out" | grep '^SPDM-OK' | cut -d' ' -f3-)" ;;
            *) echo "$out"; bad spdm "no SPDM-OK line" ;;
        esac
    else
        echo "$out"; bad spdm "$(echo "$out" | tail -n 1)"
    fi
    # Every operation through vfio-pci: MSI-X, then polled.
    if out=$(trustdev-guest accel --bdf "$bdf" --size 65536 2>&1); then
        echo "$out"; ok "accel-msix $(echo "$out" | tail -n 1 | cut -d: -f2-)"
    else
        echo "$out"; bad accel-msix "$(echo "$out" | tail -n 1)"
    fi
    if out=$(trustdev-guest accel --bdf "$bdf" --size 8192 --poll 2>&1); then
        echo "$out"; ok "accel-poll $(echo "$out" | tail -n 1 | cut -d: -f2-)"
    else
        echo "$out"; bad accel-poll "$(echo "$out" | tail -n 1)"
    fi
    # The benchmark mode of scripts/sva-bench.sh, IOVA path, tiny (a smoke
    # run: it must parse and verify; not a figure).
    out=$(trustdev-guest accel-bench --path iova --bdf "$bdf" --sizes 4096 --rounds 1 2>&1)
    line=$(echo "$out" | grep '^BENCH path=iova size=4096 ')
    case "$line" in
        *" rounds=1 verified=1 median_ns="[1-9]*) ok "accel-bench-iova ${line#BENCH }" ;;
        *) echo "$out"; bad accel-bench-iova "$(echo "$out" | tail -n 1)" ;;
    esac
    state "$d" after-vfio
    # uio_pci_generic_sva: bind, open, and where SVA stops.
    [ -e $T/trace ] && echo >$T/trace
    out=$(trustdev-guest sva --bdf "$bdf" --json 2>/dev/null)
    echo "SVA-JSON $bdf $out"
    case "$out" in
        *'"uio":"uio'*) ok sva-bound ;;
        *) bad sva-bound "not bound to uio_pci_sva: $out" ;;
    esac
    state "$d" after-sva-open
    bind_ret=$(sed -n 's/.*svabind:.*ret=\(-*[0-9]*\).*/\1/p' $T/trace 2>/dev/null | tail -n 1)
    case "$out" in
        *'"verified":true'*) ok "sva-memmove PASID $(echo "$out" | sed -n 's/.*"pasid":\([0-9]*\).*/\1/p')" ;;
        *'"stage":"open"'*'"open_errno":22'*|*'"open_errno":22'*'"stage":"open"'*)
            echo "SVA-LIMIT $bdf open=EINVAL iommu_sva_bind_device=${bind_ret:-unknown} smpwc=$(( (0x$ecap >> 48) & 1 ))"
            ok sva-open-einval ;;
        *) bad sva "unexpected outcome: $out" ;;
    esac
done
exit $fail
