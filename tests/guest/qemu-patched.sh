#!/bin/sh
# Guest half of the patched-QEMU end-to-end test (tests/e2e_qemu_patched.rs):
# what the guest kernel sees of the root port above the DMA-copy device (its
# IDE capability: parsed by the kernel's pci_ide_init(), register semantics
# of PCIe r6.2 section 7.9.26) and of the vIOMMU (the ECAP/CAP bits Linux's
# SVA support checks). The same script runs on the stock QEMU: it then
# reports what is missing. Prints "FACT <name> <value>" lines for the host to
# judge, and "CHECK-FAIL" only for things that break the script itself.
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }
hex() { printf '%d' "0x$1"; }
# wr DEV OFFSET VALUE: 32-bit little-endian config write through sysfs
wr() {
    v=$3
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((v & 255)) $(((v >> 8) & 255)) \
        $(((v >> 16) & 255)) $(((v >> 24) & 255)))" |
        dd of="$1/config" bs=4 seek=$(($2 / 4)) conv=notrunc 2>/dev/null
}
fact() { echo "FACT $*"; }

dev=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xd3a0 ] && dev=$d
done
[ -n "$dev" ] || { echo "CHECK-FAIL no DMA-copy device"; exit 1; }
rp=$(dirname "$(readlink -f "$dev")")
fact device "${dev##*/}"
fact root-port "${rp##*/}"

# The root port's extended capabilities; the IDE one (0x30) if any.
ide=0 ext="" p=256 n=0
while [ "$p" -ne 0 ] && [ $n -lt 64 ]; do
    v=$(hex "$(dw "$rp" $p)")
    [ "$v" -eq 0 ] && break
    ext="$ext $(printf '%04x@%x' $((v & 0xffff)) $p)"
    [ $((v & 0xffff)) -eq 48 ] && ide=$p
    p=$(( (v >> 20) & 0xffc ))
    n=$((n + 1))
done
fact rp-ext-caps "${ext# }"
hb=/sys/devices/pci0000:00
fact available-secure-streams "$(cat $hb/available_secure_streams 2>/dev/null || echo none)"

if [ "$ide" -ne 0 ]; then
    cap=$(hex "$(dw "$rp" $((ide + 4)))")
    fact ide-cap "$(printf '%08x' $cap)"
    fact ide-ctl "$(dw "$rp" $((ide + 8)))"
    nsel=$(( ((cap >> 16) & 255) + 1 ))
    nassoc=$(( $(hex "$(dw "$rp" $((ide + 12)))") & 15 ))
    fact ide-streams "$nsel"
    fact ide-addr-assoc "$nassoc"
    # What the kernel left in each stream at boot: pci_ide_init() writes the
    # reserved Stream ID 255 into every idle stream of a port it accepted.
    ctls=""
    i=0
    while [ $i -lt $nsel ]; do
        blk=$((ide + 12 + i * (20 + 12 * nassoc)))
        ctls="$ctls $(dw "$rp" $((blk + 4)))"
        i=$((i + 1))
    done
    fact ide-boot-ctl "${ctls# }"
    # Register semantics of stream 0 (restored afterwards).
    blk=$((ide + 12))
    saved=$(hex "$(dw "$rp" $((blk + 4)))")
    wr "$rp" $((blk + 4)) $((0x05000001))        # Stream ID 5, enable
    fact sel-enable "ctl=$(dw "$rp" $((blk + 4))) sts=$(dw "$rp" $((blk + 8)))"
    wr "$rp" $((blk + 4)) $((0x05004001))        # unsupported algorithm 1
    fact sel-bad-alg "ctl=$(dw "$rp" $((blk + 4))) sts=$(dw "$rp" $((blk + 8)))"
    wr "$rp" $((blk + 4)) $((0xffffffff))
    fact sel-ctl-ones "$(dw "$rp" $((blk + 4)))"
    wr "$rp" $((blk + 8)) $((0xffffffff))
    fact sel-sts-ones "$(dw "$rp" $((blk + 8)))"
    wr "$rp" $((blk + 4)) 0
    fact sel-disable "sts=$(dw "$rp" $((blk + 8)))"
    wr "$rp" $((blk + 12)) $((0xffffffff))
    wr "$rp" $((blk + 16)) $((0xffffffff))
    fact sel-rid-ones "$(dw "$rp" $((blk + 12))) $(dw "$rp" $((blk + 16)))"
    wr "$rp" $((blk + 20)) $((0xffffffff))
    wr "$rp" $((blk + 24)) $((0xffffffff))
    wr "$rp" $((blk + 28)) $((0xffffffff))
    fact sel-addr-ones "$(dw "$rp" $((blk + 20))) $(dw "$rp" $((blk + 24))) $(dw "$rp" $((blk + 28)))"
    wr "$rp" $((ide + 4)) $((0xffffffff))
    wr "$rp" $blk $((0xffffffff))
    fact ro-after-ones "cap=$(dw "$rp" $((ide + 4))) selcap=$(dw "$rp" $blk)"
    for o in 12 16 20 24 28; do wr "$rp" $((blk + o)) 0; done
    wr "$rp" $((blk + 4)) "$saved"
    fact sel-restored "$(dw "$rp" $((blk + 4)))"
fi

# The vIOMMU, if any: the bits intel_svm_check() and the SVA bind path test.
if [ -e /sys/class/iommu/dmar0/intel-iommu/ecap ]; then
    e=$(cat /sys/class/iommu/dmar0/intel-iommu/ecap)
    c=$(cat /sys/class/iommu/dmar0/intel-iommu/cap)
    fact ecap "$e"
    bit() { echo $(( (0x$1 >> $2) & 1 )); }
    fact ecap-bits "SMPWC=$(bit $e 48) FLTS=$(bit $e 47) SMTS=$(bit $e 43) PDS=$(bit $e 42) PASID=$(bit $e 40) NWFS=$(bit $e 33) PRS=$(bit $e 29) DT=$(bit $e 2)"
    fact cap-bits "FS1GP=$(bit $c 56) FS5LP=$(bit $c 60)"
    fact svm-disabled "$(dmesg | grep -c 'SVM disabled')"
fi
exit 0
