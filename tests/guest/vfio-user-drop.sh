#!/bin/sh
# Guest half of tests/e2e_faults.rs vfio_user_drop_in_a_real_guest: an NVMe
# controller whose server closes QEMU's vfio-user connection while the
# guest runs (the host arms vfio-user-drop once it reads READY-FOR-DROP).
# What the guest sees then: config reads of the function return all ones
# (QEMU cannot reach the server), the next I/O times out, the nvme driver
# finds CSTS all ones, fails to reset the controller and disables it
# (state dead); the guest itself keeps running and powers off normally.
# Prints "CHECK-OK <what>" / "CHECK-FAIL <what>: ..." lines.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }
ns=/dev/nvme0n1
i=0
while [ ! -b $ns ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
bdf=$(basename "$(readlink -f /sys/class/nvme/nvme0/device)")
dd if=$ns of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null && ok io-before || bad io-before "read failed"
echo "READY-FOR-DROP $bdf"
# Until the connection is gone (the config space reads all ones), then I/O.
i=0
while [ "$(od -An -tx4 -N4 /sys/bus/pci/devices/$bdf/config | tr -d ' ')" != ffffffff ] && [ $i -lt 600 ]; do
    sleep 0.1; i=$((i + 1))
done
cfg=$(od -An -tx4 -N4 /sys/bus/pci/devices/$bdf/config | tr -d ' ')
echo "DROP cfg0=$cfg after $i polls"
[ "$cfg" = ffffffff ] && ok config-all-ones || bad config-all-ones "config reads $cfg"
if dd if=$ns of=/dev/null bs=4k count=1 skip=7 iflag=direct 2>/tmp/e; then
    bad io-after "the read succeeded"
else
    ok io-after "$(tail -n 1 /tmp/e)"
fi
i=0
while [ "$(cat /sys/class/nvme/nvme0/state 2>/dev/null)" != dead ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
st=$(cat /sys/class/nvme/nvme0/state 2>/dev/null)
[ "$st" = dead ] && ok controller-dead || bad controller-dead "state $st"
dmesg | grep -i -E "nvme|vfio" | tail -n 8 | sed 's/^/DMESG /'
dmesg | grep -q "controller is down; will reset: CSTS=0xffffffff" && ok dmesg-csts-all-ones ||
    bad dmesg-csts-all-ones "no 'controller is down' with CSTS all ones"
exit $fail
