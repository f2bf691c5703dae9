#!/usr/bin/env bash
# smoke-test.sh - end-to-end check of the guest toolchain: provision (or reuse
# the cache), build a base initramfs and a per-test overlay, boot the Debian
# kernel under QEMU/TCG and check what the guest reports.
#
# Usage: qemu-configs/smoke-test.sh [--keep DIR]
#   --keep DIR   keep the initramfs files and the console log in DIR
# Prints "smoke-test: N passed, M failed" last; exits non-zero on any failure.
# Takes ~10 s cold-cache provisioning + ~2 s initramfs + ~5 s boot.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
KEEP=''
if [[ ${1:-} == --keep ]]; then KEEP=${2:?--keep needs a directory}; fi

"$HERE/provision.sh" >&2
CACHE=${TRUSTDEV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trustdev}
# shellcheck disable=SC1091
. "$CACHE/provisioned.env"

WORK=${KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/trustdev-smoke.XXXXXX")}
mkdir -p "$WORK"
[[ -n $KEEP ]] || trap 'rm -rf "$WORK"' EXIT

pass=0 fail=0
check() { # NAME COMMAND...
    local name=$1; shift
    if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi
}

qemu_has_vfio_user() { "$TRUSTDEV_QEMU" -device help | grep -q '"vfio-user-pci"'; }
check "qemu lists vfio-user-pci" qemu_has_vfio_user

cat >"$WORK/test.sh" <<'EOF'
#!/bin/sh
echo "uname-r=$(uname -r)"
for m in vfio_pci vfio_iommu_type1 uio_pci_generic; do
    grep -q "^$m " /proc/modules && echo "module-loaded=$m"
done
for d in /sys/bus/pci/devices/*; do
    echo "pci ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") class=$(cat "$d/class")"
done
/usr/local/bin/true && echo "host-binary-ran=yes"
edu=$(grep -l 0x11e8 /sys/bus/pci/devices/*/device | head -n1)
edu=${edu%/device}
echo uio_pci_generic >"$edu/driver_override"
echo "${edu##*/}" >/sys/bus/pci/drivers_probe
[ -c /dev/uio0 ] && echo "uio-bound=yes"
exit 0
EOF

"$HERE/mkinitramfs.sh" --quiet --out "$WORK/base.cpio.gz" --bin /bin/true
"$HERE/mkinitramfs.sh" --quiet --overlay --out "$WORK/test.cpio.gz" --script "$WORK/test.sh"
cat "$WORK/base.cpio.gz" "$WORK/test.cpio.gz" >"$WORK/test.initrd"

start=$(date +%s%N)
rc=0
timeout 120 "$TRUSTDEV_QEMU" \
    -machine q35,accel=tcg,memory-backend=mem -m 512M \
    -object memory-backend-memfd,id=mem,size=512M,share=on \
    -cpu max -smp 1 -nographic -monitor none -serial "file:$WORK/console.log" \
    -no-reboot -nic none -vga none \
    -kernel "$TRUSTDEV_KERNEL" -initrd "$WORK/test.initrd" \
    -append "console=ttyS0 panic=-1 quiet trustdev.debugexit=0xf4" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -device edu || rc=$?
echo "boot: $(( ($(date +%s%N) - start) / 1000000 )) ms, qemu exit $rc (1 = script exited 0)"

log=$WORK/console.log
has() { grep -aq -- "$1" "$log"; }
check "qemu exit code 1 (isa-debug-exit, script status 0)" test "$rc" -eq 1
check "guest ran the script" has "TRUSTDEV-EXIT=0"
check "uname -r is $TRUSTDEV_KERNEL_RELEASE" has "uname-r=$TRUSTDEV_KERNEL_RELEASE"
check "vfio_pci loaded" has "module-loaded=vfio_pci"
check "vfio_iommu_type1 loaded" has "module-loaded=vfio_iommu_type1"
check "uio_pci_generic loaded" has "module-loaded=uio_pci_generic"
check "edu device enumerated" has "pci .*0x1234:0x11e8"
check "host glibc binary runs in the guest" has "host-binary-ran=yes"
check "uio_pci_generic binds (/dev/uio0)" has "uio-bound=yes"
((fail == 0)) || { echo "--- console log"; cat "$log"; }
echo "smoke-test: $pass passed, $fail failed"
((fail == 0))
