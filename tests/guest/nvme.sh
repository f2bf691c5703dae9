#!/bin/sh
# Guest half of the NVMe end-to-end test: the stock Linux nvme driver against
# trustdev's controller. Prints "CHECK-OK <what> [detail]" or
# "CHECK-FAIL <what>: <detail>" lines; exits non-zero on any failure.
# Needs: 2 vCPUs (two I/O queues), the nvme and ext4 modules, optionally
# nvme-cli as /usr/local/bin/nvme.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }

dev=/dev/nvme0n1
i=0
while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -b $dev ]; then
    bad namespace "no $dev"
    dmesg | grep -i nvme
    exit 1
fi
ok namespace "$dev $(cat /sys/block/nvme0n1/size) sectors"

ctrl=/sys/class/nvme/nvme0
pci=$(readlink -f $ctrl/device)
[ "$(cat "$pci/class")" = 0x010802 ] && ok pci-class 0x010802 || bad pci-class "$(cat "$pci/class")"
[ "$(cat $ctrl/state)" = live ] && ok controller-live || bad controller-live "$(cat $ctrl/state)"
echo "INFO model=$(cat $ctrl/model) serial=$(cat $ctrl/serial) fw=$(cat $ctrl/firmware_rev)"
echo "INFO subsysnqn=$(cat $ctrl/subsysnqn)"

# One hardware queue per CPU (2 vCPUs), each with its own MSI-X vector.
nq=$(ls /sys/block/nvme0n1/mq | wc -l)
[ "$nq" -ge 2 ] && ok io-queues "$nq" || bad io-queues "$nq hardware queues"
dmesg | grep -i "nvme0.*queues" | sed 's/^/INFO /'

irq() { awk -v q="nvme0q$1" '$NF == q { s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break; print s }' /proc/interrupts; }

# O_DIRECT patterns, written from CPU 0 and CPU 1 (so through both I/O
# queues), read back crosswise, checksums compared.
before1=$(irq 1) before2=$(irq 2)
dd if=/dev/urandom of=/tmp/p0 bs=64k count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/p1 bs=64k count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/p2 bs=4k count=300 2>/dev/null
taskset -c 0 dd if=/tmp/p0 of=$dev bs=64k oflag=direct 2>/dev/null &
taskset -c 1 dd if=/tmp/p1 of=$dev bs=64k seek=64 oflag=direct 2>/dev/null &
wait
taskset -c 1 dd if=/tmp/p2 of=$dev bs=4k seek=2048 oflag=direct 2>/dev/null
taskset -c 1 dd if=$dev of=/tmp/r0 bs=64k count=64 iflag=direct 2>/dev/null
taskset -c 0 dd if=$dev of=/tmp/r1 bs=64k skip=64 count=64 iflag=direct 2>/dev/null
taskset -c 0 dd if=$dev of=/tmp/r2 bs=4k skip=2048 count=300 iflag=direct 2>/dev/null
for k in 0 1 2; do
    a=$(md5sum </tmp/p$k | cut -d' ' -f1)
    b=$(md5sum </tmp/r$k | cut -d' ' -f1)
    [ "$a" = "$b" ] && ok direct-io-$k "$a" || bad direct-io-$k "wrote $a, read $b"
done
d1=$(( $(irq 1) - before1 )) d2=$(( $(irq 2) - before2 ))
[ "$d1" -gt 0 ] && [ "$d2" -gt 0 ] && ok per-queue-interrupts "q1 $d1 q2 $d2" ||
    bad per-queue-interrupts "q1 $d1 q2 $d2"

# Discard (Dataset Management deallocate): the blocks read back as zeroes.
if blkdiscard -o $((4096 * 2048)) -l $((4096 * 300)) $dev 2>/tmp/err; then
    dd if=$dev of=/tmp/z bs=4k skip=2048 count=300 iflag=direct 2>/dev/null
    dd if=/dev/zero of=/tmp/zz bs=4k count=300 2>/dev/null
    cmp -s /tmp/z /tmp/zz && ok discard-zeroes || bad discard-zeroes "discarded blocks not zero"
else
    bad discard "$(cat /tmp/err)"
fi

# A filesystem: create, mount, write, remount, re-read.
if mke2fs -F -b 4096 $dev >/tmp/mkfs.log 2>&1; then
    ok mkfs "$(head -1 /tmp/mkfs.log)"
else
    bad mkfs "$(tail -3 /tmp/mkfs.log)"
fi
mkdir -p /mnt
if mount -t ext2 $dev /mnt 2>/tmp/err; then
    mkdir -p /mnt/dir
    cp /tmp/p0 /mnt/dir/big
    i=0
    while [ $i -lt 50 ]; do echo "file $i $(cat /proc/uptime)" >/mnt/dir/f$i; i=$((i + 1)); done
    (cd /mnt && find . -type f | sort | xargs md5sum) >/tmp/sum1
    sync
    umount /mnt
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext2 $dev /mnt
    (cd /mnt && find . -type f | sort | xargs md5sum) >/tmp/sum2
    n=$(wc -l </tmp/sum2)
    cmp -s /tmp/sum1 /tmp/sum2 && ok filesystem-remount "$n files identical" ||
        bad filesystem-remount "$(diff /tmp/sum1 /tmp/sum2 | head -5)"
    umount /mnt
else
    bad mount "$(cat /tmp/err)"
fi

# Temperature through the kernel's hwmon (SMART log + thresholds).
t=$(cat $ctrl/hwmon*/temp1_input 2>/dev/null || cat $ctrl/device/hwmon/hwmon*/temp1_input 2>/dev/null)
[ -n "$t" ] && ok hwmon-temperature "$t" || echo "INFO no hwmon temperature"

# nvme-cli, if the test put it into the guest.
if command -v nvme >/dev/null 2>&1; then
    nvme id-ctrl /dev/nvme0 >/tmp/idctrl 2>&1
    grep -E '^(vid|ssvid|sn|mn|fr|mdts|cntlid|ver|oacs|sqes|cqes|nn|oncs|vwc|sgls|subnqn) ' /tmp/idctrl | sed 's/^/ID-CTRL /'
    grep -q '^sqes .*0x66' /tmp/idctrl && grep -q '^nn .*: 1$' /tmp/idctrl &&
        ok nvme-id-ctrl || bad nvme-id-ctrl "$(head -5 /tmp/idctrl)"
    nvme id-ns /dev/nvme0n1 >/tmp/idns 2>&1
    grep -E '^(nsze|ncap|flbas|nlbaf|dlfeat|nguid|eui64|lbaf)' /tmp/idns | sed 's/^/ID-NS /'
    grep -q '^nsze' /tmp/idns && ok nvme-id-ns || bad nvme-id-ns "$(head -5 /tmp/idns)"
    nvme smart-log /dev/nvme0 >/tmp/smart 2>&1
    sed 's/^/SMART /' /tmp/smart
    grep -qi '^temperature.*35 *C\|^temperature.*308 *K' /tmp/smart &&
        grep -qi '^host_write_commands' /tmp/smart && ok nvme-smart-log ||
        bad nvme-smart-log "$(head -8 /tmp/smart)"
    w=$(awk -F: '/^host_write_commands/ { gsub(/[ ,]/, "", $2); print $2 }' /tmp/smart)
    [ "${w:-0}" -gt 0 ] && ok smart-host-writes "$w" || bad smart-host-writes "${w:-none}"
    nvme get-feature /dev/nvme0 -f 7 -H 2>&1 | sed 's/^/FEATURE /' | head -4
    nvme error-log /dev/nvme0 -e 1 >/dev/null 2>&1 && ok nvme-error-log || bad nvme-error-log "failed"
else
    echo "INFO nvme-cli not in the guest"
fi

# The controller's DOE mailbox: the kernel's probe found CMA and secured CMA,
# DEVCAP.TEE is set, and SPDM authenticates it over the real DOE registers
# against the root certificate the server exported.
bdf=${pci##*/}
feats=$(ls "$pci/doe_features" 2>/dev/null | tr '\n' ' ')
case "$feats" in
    *0001:01*0001:02*doe_discovery*) ok doe-features "$feats" ;;
    *) bad doe-features "${feats:-no doe_features}" ;;
esac
roots=""
for r in /etc/trustdev/roots/nvme-*.pem; do [ -f "$r" ] && roots="$roots --root $r"; done
if out=$(trustdev-guest spdm --bdf "$bdf" $roots 2>&1); then
    echo "$out" | sed 's/^/SPDM /'
    ok spdm-doe "$(echo "$out" | grep '^SPDM-OK' | head -n 1)"
else
    echo "$out" | sed 's/^/SPDM /'
    bad spdm-doe "$(echo "$out" | tail -n 1)"
fi

# The kernel's nvme driver must not have timed out a command, reset the
# controller or aborted anything, and no block I/O may have failed: the
# data checks above could still pass after a timeout and a retry. The
# patterns are the driver's own messages (drivers/nvme/host/pci.c, core.c):
# "I/O tag N (...) QID N timeout, aborting", "... timeout, reset controller",
# "Abort status: ...", "controller is down; will reset", "Removing after
# probe failure", "Device not ready; aborting ...", "I/O error, dev nvme0n1".
dmesg >/tmp/dmesg.txt
grep -iE 'nvme' /tmp/dmesg.txt | sed 's/^/DMESG /'
trouble=$(grep -iE 'nvme' /tmp/dmesg.txt |
    grep -iE 'timeout|timed out|reset|abort|I/O error|critical|failure|failed|not ready|disabling' |
    grep -vE 'Shutdown timeout set to [0-9]+ seconds')
if [ -z "$trouble" ]; then
    ok dmesg-no-timeouts-resets-aborts
else
    bad dmesg-no-timeouts-resets-aborts "$(echo "$trouble" | head -n 5 | tr '\n' '|')"
fi
echo "NVME-GUEST-DONE fail=$fail"
exit $fail
