#!/bin/sh
# Guest half of the NVMe benchmark: fio 4 KiB random read and write at queue
# depth 1 and 32 on /dev/nvme0n1 (O_DIRECT, libaio), one line per run:
#   BENCH rw=<randread|randwrite> qd=<n> iops=<n> [completions=.. doorbells=.. irqs=.. eventidx=..]
# The counters (trustdev's vendor log page C0h, read with nvme-cli) are
# deltas over the run; they are absent for other controllers. A fio run
# that fails (or prints no result) prints "BENCH-FAIL ..." and ends the
# script with status 1: a failure is never a figure.
# Needs fio and nvme-cli in the guest (--bin /usr/bin/fio --bin /usr/sbin/nvme).
dev=/dev/nvme0n1
T=${BENCH_TIME:-8}
i=0
while [ ! -b $dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b $dev ] || { echo "BENCH-FAIL no $dev"; exit 1; }
echo "BENCH-INFO model=$(cat /sys/class/nvme/nvme0/model)"
counters() {
    nvme get-log /dev/nvme0 --log-id=0xc0 --log-len=32 -b 2>/dev/null | od -An -tu8 -w32 | tr -s ' '
}
# Fill the region once so reads hit written blocks.
fio --name=fill --filename=$dev --direct=1 --rw=write --bs=1M --size=256M \
    --ioengine=libaio --iodepth=4 >/tmp/fill.out 2>&1 ||
    { echo "BENCH-FAIL fill: $(tail -3 /tmp/fill.out | tr '\n' ' ')"; exit 1; }
for rw in randread randwrite; do
    for qd in 1 32; do
        c0=$(counters)
        if ! out=$(fio --name=b --filename=$dev --direct=1 --rw=$rw --bs=4k --size=256M \
            --iodepth=$qd --ioengine=libaio --ramp_time=2 --runtime=$T --time_based \
            --minimal 2>&1); then
            echo "BENCH-FAIL rw=$rw qd=$qd: fio failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
            exit 1
        fi
        c1=$(counters)
        iops=$(echo "$out" | awk -F';' 'NF > 50 { printf "%d", $8 + $49 }')
        if [ -z "$iops" ] || [ "$iops" -le 0 ]; then
            echo "BENCH-FAIL rw=$rw qd=$qd: no IOPS in fio's output: $(echo "$out" | tail -3 | tr '\n' ' ')"
            exit 1
        fi
        extra=""
        if [ -n "$c0" ] && [ -n "$c1" ]; then
            set -- $c0
            a1=$1 a2=$2 a3=$3 a4=$4
            set -- $c1
            extra="completions=$(($1 - a1)) doorbells=$(($2 - a2)) irqs=$(($3 - a3)) eventidx=$(($4 - a4))"
        fi
        echo "BENCH rw=$rw qd=$qd iops=$iops $extra"
    done
done
