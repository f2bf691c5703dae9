#!/bin/sh
# Guest half of the NVMe power-cut test (tests/e2e_nvme.rs): trustdev's NVMe
# server runs in this guest with its namespace on a virtio disk whose guest
# page cache is the volatile write cache, and a user-space NVMe driver (the
# test binary, nvme-powercut) writes and flushes through it. When the driver
# prints POWERCUT-READY the host SIGKILLs QEMU: what the guest kernel did not
# write to the disk by then (unsynced page cache) is lost, what it did (a
# Flush's fdatasync, an RWF_DSYNC write) is in the host's image file.
#   /dev/vda: write-back namespace (Flush = fdatasync)
#   /dev/vdb: write-through namespace (every write RWF_DSYNC)
say() { echo "POWERCUT-INFO $*"; }
fail() { echo "POWERCUT-FAIL $*"; for l in /tmp/*.log; do echo "--- $l"; cat "$l"; done; exit 1; }

# Unsynced data stays in the page cache until the power cut: no periodic
# and no background writeback.
echo 0 >/proc/sys/vm/dirty_writeback_centisecs
echo 8640000 >/proc/sys/vm/dirty_expire_centisecs
echo 90 >/proc/sys/vm/dirty_ratio
echo 80 >/proc/sys/vm/dirty_background_ratio

for d in vda vdb; do
    i=0
    while [ ! -b /dev/$d ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -b /dev/$d ] || fail "no /dev/$d"
done
say "disks: vda $(cat /sys/block/vda/size) vdb $(cat /sys/block/vdb/size) sectors"

serve() { # name device cache
    RUST_LOG=info trustdev serve nvme --socket /tmp/$1.sock --file /dev/$2 --cache $3 \
        --no-spdm --workers 1 --queues 2 >/tmp/$1.log 2>&1 &
}
serve wb vda writeback
serve wt vdb writethrough
i=0
while { [ ! -S /tmp/wb.sock ] || [ ! -S /tmp/wt.sock ]; } && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ -S /tmp/wb.sock ] && [ -S /tmp/wt.sock ] || fail "servers did not start"

# The driver prints POWERCUT-READY when every write completed, then waits
# (connected) for the power cut.
TRUSTDEV_POWERCUT_CLIENT=/tmp nvme-powercut nvme_power_cut --exact --nocapture --test-threads=1 ||
    fail "the driver failed"
fail "the driver returned instead of waiting for the power cut"
