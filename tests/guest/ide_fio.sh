#!/bin/sh
# Guest half of scripts/ide-fio-bench.sh: fio 4 KiB random read and write at
# QD32 (O_DIRECT, libaio) on the trustdev NVMe namespace, alternately with
# the device's IDE stream off (the capability present, no stream enabled)
# and SECURE (set up by `trustdev-guest ide`, which runs fio through --run
# while the stream is SECURE on K0 and checks it is still SECURE after), all
# in this one boot. One line per fio run:
#   BENCH ide=<off|secure> round=<n> rw=<randread|randwrite> iops=<n>
# Needs fio in the guest (--bin /usr/bin/fio). ROUNDS and T are edited in by
# the host script.
ROUNDS=2
T=8
bdf=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x7d0c:0x4e56 ] && { bdf=${d##*/}; break; }
done
[ -n "$bdf" ] || { echo "BENCH-FAIL no trustdev NVMe controller"; exit 1; }
i=0
while ! ls /sys/bus/pci/devices/$bdf/nvme/*/ 2>/dev/null | grep -q n1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ctrl=$(ls /sys/bus/pci/devices/$bdf/nvme | head -n1)
dev=/dev/${ctrl}n1
i=0
while [ ! -b "$dev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b "$dev" ] || { echo "BENCH-FAIL no $dev"; exit 1; }
echo "BENCH-INFO $bdf $dev"
# Fill the region once so reads hit written blocks.
fio --name=fill --filename=$dev --direct=1 --rw=write --bs=1M --size=256M \
    --ioengine=libaio --iodepth=4 >/dev/null 2>&1
cat >/tmp/fio.sh <<FIO
#!/bin/sh
# fio.sh MODE ROUND
for rw in randread randwrite; do
    out=\$(fio --name=b --filename=$dev --direct=1 --rw=\$rw --bs=4k --size=256M \
        --iodepth=32 --ioengine=libaio --ramp_time=2 --runtime=$T --time_based \
        --minimal 2>&1)
    iops=\$(echo "\$out" | awk -F';' 'NF > 50 { printf "%d", \$8 + \$49 }')
    [ -n "\$iops" ] || { echo "BENCH-FAIL fio: \$out"; exit 1; }
    echo "BENCH ide=\$1 round=\$2 rw=\$rw iops=\$iops"
done
FIO
fail=0
r=1
while [ $r -le $ROUNDS ]; do
    sh /tmp/fio.sh off $r || fail=1
    trustdev-guest ide --bdf "$bdf" --io nvme --ios 8 --no-refresh --run "sh /tmp/fio.sh secure $r" || fail=1
    r=$((r + 1))
done
exit $fail
