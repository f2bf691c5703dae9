#!/bin/sh
# Guest half of scripts/sva-bench.sh (and of the smoke run in
# tests/e2e_qemu_patched.rs): accelerator memmove timed from a guest process
# through SVA (the first accelerator, uio_pci_generic_sva, process pointers
# tagged with its PASID) and through vfio-pci IOVA mappings (the second
# accelerator, type1 container, the vIOMMU), with `trustdev-guest
# accel-bench` (what is timed: guest/src/accel_bench.rs). The host script
# sets the three lines below (sed) before the boot.
SIZES=${BENCH_SIZES:-4096,65536,1048576}
ROUNDS=${BENCH_ROUNDS:-11}
PATHS=${BENCH_PATHS:-"sva iova"}
#
# Prints:
#   BENCH-IOMMU ecap=<hex> flts=<0|1> slts=<0|1> smpwc=<0|1>
#   BENCH-DEVICES <bdf> <bdf>
#   the tool's BENCH-INFO / BENCH lines for each path, or
#   BENCH-FAIL path=<p> bdf=<bdf> <the tool's error>
# Exits 1 if any requested path failed (a failure is never a figure).
fail=0
ecap=$(cat /sys/class/iommu/dmar0/intel-iommu/ecap 2>/dev/null)
e=$((0x${ecap:-0}))
echo "BENCH-IOMMU ecap=${ecap:-none} flts=$(( (e >> 47) & 1 )) slts=$(( (e >> 46) & 1 )) smpwc=$(( (e >> 48) & 1 ))"
bdfs=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xacc1 ] && bdfs="$bdfs ${d##*/}"
done
echo "BENCH-DEVICES$bdfs"
set -- $bdfs
sva_bdf=$1 iova_bdf=${2:-$1}
case " $PATHS " in
    *" sva "*)
        if [ -e /lib/modules/uio_pci_generic_sva.ko ]; then
            insmod /lib/modules/uio_pci_generic_sva.ko || echo "BENCH-NOTE insmod uio_pci_generic_sva.ko failed"
        fi ;;
esac
for p in $PATHS; do
    if [ "$p" = sva ]; then bdf=$sva_bdf; else bdf=$iova_bdf; fi
    if [ -z "$bdf" ]; then
        echo "BENCH-FAIL path=$p bdf=none no accelerator enumerated"; fail=1; continue
    fi
    if out=$(trustdev-guest accel-bench --path "$p" --bdf "$bdf" --sizes "$SIZES" --rounds "$ROUNDS" 2>&1); then
        echo "$out"
    else
        echo "$out" | grep '^BENCH' 
        echo "BENCH-FAIL path=$p bdf=$bdf $(echo "$out" | grep -v '^BENCH' | tail -n 1)"
        fail=1
    fi
done
if dmesg | grep -q 'BUG:\|Oops\|WARNING:'; then
    echo "BENCH-FAIL kernel: $(dmesg | grep -m1 'BUG:\|Oops\|WARNING:')"
    fail=1
fi
exit $fail
