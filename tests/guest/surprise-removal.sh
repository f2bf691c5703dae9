#!/bin/sh
# Guest half of tests/e2e_surprise_removal.rs (patched QEMU: patch 0501 gives
# vfio-user-pci its REQ interrupt). One NVMe controller behind a hot-plug
# capable pcie-root-port:
#  1. data written and read back (O_DIRECT);
#  2. "ARM-REMOVAL": the host arms the surprise-removal fault on the running
#     device; the server signals its REQ interrupt, QEMU asks the guest to
#     release the slot, and the kernel's hot-plug driver removes the device
#     (waited for here, the kernel's own messages reported);
#  3. "REMOVED": the host plugs the same device back (QMP device_add on the
#     same socket); the kernel enumerates it again, the nvme driver binds,
#     the data written before the removal reads back, new data works.
# Prints "CHECK-OK <what> ..." / "CHECK-FAIL <what>: ..." lines and FACTs.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }
fact() { echo "FACT $*"; }
kmsg() { dmesg -s 1000000; }

nvme_bdf() {
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat "$c/serial" 2>/dev/null | tr -d ' ')" = trustdev-hotplug ] || continue
        basename "$(readlink -f "$c/device")"
        return
    done
}
nvme_disk() {
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat "$c/serial" 2>/dev/null | tr -d ' ')" = trustdev-hotplug ] || continue
        n=$(ls "$c" | grep -m1 -E '^nvme[0-9]+n1$') && [ -b "/dev/$n" ] && echo "/dev/$n"
        return
    done
}
# wait_for SECONDS COMMAND...: polls every 0.2 s until COMMAND succeeds.
wait_for() {
    t=$(($1 * 5)); shift
    while [ $t -gt 0 ]; do "$@" && return 0; sleep 0.2; t=$((t - 1)); done
    return 1
}
present() { [ -n "$(nvme_disk)" ]; }
gone() { [ ! -e "/sys/bus/pci/devices/$bdf" ]; }

i=0; while [ $i -lt 256 ]; do echo "trustdev hot-plug block $i"; i=$((i + 1)); done | head -c 4096 >/tmp/pat
wait_for 30 present || { bad device "no NVMe controller with serial trustdev-hotplug"; exit 1; }
bdf=$(nvme_bdf) disk=$(nvme_disk)
port=$(basename "$(dirname "$(readlink -f "/sys/bus/pci/devices/$bdf")")")
echo "DEVICE $bdf disk $disk port $port"
dd if=/tmp/pat of="$disk" bs=4096 seek=10 count=1 oflag=direct conv=fsync 2>/dev/null &&
    dd if="$disk" bs=4096 skip=10 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/pat &&
    ok io-before || bad io-before "write/read at block 10 of $disk failed"



# --- removal: the host arms the fault when it sees this line.
echo "ARM-REMOVAL"
t0=$(date +%s)
if wait_for 90 gone; then
    ok removed "$bdf gone after $(($(date +%s) - t0)) s"
else
    bad removed "$bdf still present 90 s after ARM-REMOVAL"
fi
[ -z "$(nvme_disk)" ] && ok disk-gone || bad disk-gone "$(nvme_disk) still there"
kmsg | grep -i -E "pciehp|hotplug|acpiphp|$bdf.*(remov|surprise)|Slot\(" | sed 's/^/DMESG-REMOVE /'

# --- the device comes back on the same slot.
echo "REMOVED"
if wait_for 90 present; then
    ok replugged "$(nvme_bdf) as $(nvme_disk)"
else
    bad replugged "no NVMe controller 90 s after REMOVED"
fi
disk=$(nvme_disk)
kmsg | grep -i -E "pciehp|hotplug|acpiphp|Slot\(|nvme nvme[0-9]+: pci function" | sed 's/^/DMESG-ADD /'
if [ -n "$disk" ] && dd if="$disk" bs=4096 skip=10 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/pat; then
    ok data-kept "block 10 reads back as written before the removal"
else
    bad data-kept "block 10 of ${disk:-<none>} differs from what was written before the removal"
fi
tr 'a-z' 'A-Z' </tmp/pat >/tmp/pat2
if [ -n "$disk" ] && dd if=/tmp/pat2 of="$disk" bs=4096 seek=20 count=1 oflag=direct conv=fsync 2>/dev/null &&
    dd if="$disk" bs=4096 skip=20 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/pat2; then
    ok io-after
else
    bad io-after "write/read at block 20 after the re-plug failed"
fi
if kmsg | grep -q 'BUG:\|Oops\|WARNING:'; then
    bad no-oops "$(kmsg | grep -A5 'BUG:\|Oops\|WARNING:' | head -n 20)"
else
    ok no-oops
fi
exit $fail
