#!/bin/sh
# Guest half of tests/e2e_qemu_patched.rs, SVA flow: a process opens
# uio_pci_generic_sva (driver uio_pci_sva) on the accelerator, which binds
# its address space to a PASID (iommu_sva_bind_device()); `trustdev-guest
# sva` then hands the accelerator pointers into its own heap (ring,
# completion records, AES parameters, data): memmove, CRC-32C and AES-GCM
# encrypt/decrypt results land in its memory and are checked against
# software; a memmove from an address it never mapped must come back as a
# fault in the completion record.
#
# Reports what happened (the Rust half decides what must have):
#   FACT smpwc <0|1>               the vIOMMU's ECAP.SMPWC
#   FACT sva-bind-ret <n>          iommu_sva_bind_device()'s return (kprobe)
#   FACT sva-stage / sva-open-errno / sva-pasid / sva-ops / sva-verified
#   FACT pasid-attr <n>            the uio device's pasid attribute in sysfs
#   FACT sva-prefault <true|false> buffers pre-faulted (kernel command line
#                                  trustdev.sva=noprefault: fresh pages only)
#   FACT sva-page-requests <n>     the accelerator's page request counter delta
#   FACT sva-xlat <n>              the accelerator's XLAT register (PASID/ATS/PRI
#                                  control as the guest set them)
#   FACT prq-irqs <n>              page request interrupts of the VT-d (dmar*-prq)
#   FACT prq-events <n>            intel_iommu:prq_report tracepoint hits (-1: none)
#   FACT sva-bench <size:rounds:verified>...  `trustdev-guest accel-bench --path sva`, tiny
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }
fact() { echo "FACT $*"; }
kmsg() { dmesg -s 1000000; }
json() { echo "$2" | sed -n "s/.*\"$1\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" | tr -d '"'; }

ecap=$(cat /sys/class/iommu/dmar0/intel-iommu/ecap 2>/dev/null)
fact smpwc "$(( (0x${ecap:-0} >> 48) & 1 ))"
mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
T=/sys/kernel/tracing
echo 'r:trustdev/svabind iommu_sva_bind_device ret=$retval:s64' >>$T/kprobe_events &&
    echo 1 >$T/events/trustdev/svabind/enable || bad kprobe "cannot arm a kprobe on iommu_sva_bind_device"
insmod /lib/modules/uio_pci_generic_sva.ko && ok module-loaded || bad module-loaded "insmod uio_pci_generic_sva.ko failed"

bdf=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xacc1 ] && bdf=${d##*/}
done
[ -n "$bdf" ] || { bad device "no accelerator"; exit 1; }
echo "DEVICE $bdf"
prq_irqs() { awk '/prq/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; s += n } END { print s + 0 }' /proc/interrupts; }
opt=""
case " $(cat /proc/cmdline) " in *" trustdev.sva=noprefault "*) opt="--no-prefault" ;; esac
prq_ev=-1
if [ -d $T/events/intel_iommu/prq_report ]; then
    echo 1 >$T/events/intel_iommu/prq_report/enable && prq_ev=0
fi
irq0=$(prq_irqs)
echo >$T/trace
out=$(trustdev-guest sva --bdf "$bdf" --json $opt 2>&1)
echo "SVA-JSON $out"
fact prq-irqs "$(( $(prq_irqs) - irq0 ))"
[ "$prq_ev" = 0 ] && prq_ev=$(grep -c 'prq_report:' $T/trace)
fact prq-events "$prq_ev"
grep 'prq_report:' $T/trace | head -n 3
fact sva-prefault "$(json prefault "$out")"
fact sva-page-requests "$(json page_requests "$out")"
fact sva-xlat "$(json xlat "$out")"
fact sva-bind-ret "$(sed -n 's/.*svabind:.*ret=\(-*[0-9]*\).*/\1/p' $T/trace | tail -n 1)"
fact sva-stage "$(json stage "$out")"
fact sva-open-errno "$(json open_errno "$out")"
fact sva-pasid "$(json pasid "$out")"
fact sva-verified "$(json verified "$out")"
fact sva-ops "$(echo "$out" | sed -n 's/.*"ops":\[\([^]]*\)\].*/\1/p' | tr -d '"' | tr ',' ' ')"
uio=$(ls "/sys/bus/pci/devices/$bdf/uio" 2>/dev/null | head -n1)
fact uio "$uio"
# The benchmark mode of scripts/sva-bench.sh on the same binding, tiny (a
# smoke run: it must parse and verify; not a figure).
bench=$(trustdev-guest accel-bench --path sva --bdf "$bdf" --sizes 4096,65536 --rounds 1 2>&1)
echo "$bench" | sed 's/^/SVA-BENCH /'
fact sva-bench "$(echo "$bench" | sed -n 's/^BENCH path=sva size=\([0-9]*\) rounds=\([0-9]*\) verified=\([0-9]*\) median_ns=[1-9][0-9]* .*/\1:\2:\3/p' | tr '\n' ' ' | sed 's/ $//')"
if kmsg | grep -q 'BUG:\|Oops\|WARNING:'; then
    bad no-oops "$(kmsg | grep -A5 'BUG:\|Oops\|WARNING:' | head -n 20)"
else
    ok no-oops
fi
exit $fail
