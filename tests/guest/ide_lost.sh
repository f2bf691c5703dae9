#!/bin/sh
# Guest half of tests/e2e_faults.rs ide_stream_lost_under_io: an IDE
# stream lost under I/O.
# The NVMe controller (bound to the Linux nvme driver, behind a root port):
# trustdev-guest tdisp --expect-loss sets up an SPDM session, keys and a
# SECURE selective stream (Stream ID 5), LOCK and START (RUN), then keeps
# verified 4 KiB O_DIRECT I/O running and prints TDISP-LOSS-READY; the host
# test arms the `ide-integrity` fault on Stream ID 5 through the control
# socket. The guest tool must then see the stream INSECURE in configuration
# space and the TDI in ERROR (GET_DEVICE_INTERFACE_STATE); it STOPs the TDI,
# disables the stream, waits for what the kernel does with the I/O in flight
# (the nvme driver's timeout and controller reset: its dmesg lines are the
# evidence), then recovers in the same boot: new keys, SECURE, LOCK, START,
# the blocks written before the loss and new I/O verified, STOP. Then the
# disk is used again outside the TDI.
# Prints "CHECK-OK <what> ..." / "CHECK-FAIL <what>: <detail>" and
# "FACT <name> <value>"; exits non-zero on any failure.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }

ns=/dev/nvme0n1
i=0
while [ ! -b $ns ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b $ns ] && ok namespace $ns || bad namespace "no $ns"
nvme=$(basename "$(readlink -f /sys/class/nvme/nvme0/device)")
echo "DEVICES nvme=$nvme"
roots=""
for r in /etc/trustdev/roots/nvme-*.pem; do
    [ -f "$r" ] && roots="$roots --root $r"
done
n0=$(dmesg | wc -l)

# The tool's output goes to the console as it comes (the host waits for
# TDISP-LOSS-READY); its exit status follows as "EXIT n".
echo "--- trustdev-guest tdisp --bdf $nvme$roots --stream-id 5 --expect-loss 240"
# shellcheck disable=SC2086
{
    trustdev-guest tdisp --bdf "$nvme" $roots --stream-id 5 --expect-loss 240 2>&1
    echo "EXIT $?"
} | tee /tmp/loss.out
out=$(cat /tmp/loss.out)
st=$(sed -n 's/^EXIT //p' /tmp/loss.out)
[ "$st" = 0 ] && echo "$out" | grep -q "^TDISP-OK $nvme" && ok ide-lost-flow ||
    bad ide-lost-flow "exit $st: $(grep -v '^EXIT' /tmp/loss.out | tail -n 1)"
step() { # check-name step-name pattern
    line=$(echo "$out" | grep "^  $2  *OK" | head -n 1)
    if [ -n "$line" ] && echo "$line" | grep -q -E "$3"; then
        ok "$1" "$(echo "$line" | sed 's/.* ms  //')"
    else
        bad "$1" "no '$2' step matching '$3'"
    fi
}
echo "$out" | grep -q "^TDISP-LOSS-READY $nvme stream 5" && ok ide-lost-ready || bad ide-lost-ready "no TDISP-LOSS-READY"
step ide-lost-secure-first "IDE stream enable" "SECURE"
step ide-lost-run-first "START_INTERFACE" "RUN"
step ide-lost-insecure "IDE stream lost" "INSECURE with IDE Fail"
step ide-lost-tdi-error "TDI state after the loss" "ERROR"
step ide-lost-stop "STOP after the loss" "CONFIG_UNLOCKED"
step ide-lost-io-outcome "I/O when the stream was lost" "."
step ide-lost-rekeyed "IDE stream re-enabled" "SECURE"
step ide-lost-run-again "START_INTERFACE (again)" "RUN"
step ide-lost-data-intact "data before the loss" "intact"
step ide-lost-io-after "I/O after recovery" "verified"
echo "FACT ide-lost-io $(echo "$out" | grep '^  I/O when the stream was lost' | sed 's/.* ms  //')"

# What the kernel did: the nvme driver's own error path, new since boot.
new=$(dmesg | tail -n +$((n0 + 1)) | grep -i nvme)
echo "$new" | sed 's/^/DMESG-LOSS /'
kern=$(echo "$new" | grep -i -E "timeout|abort|reset|I/O error|controller is down|CSTS")
[ -n "$kern" ] && ok ide-lost-kernel-saw-it "$(echo "$kern" | head -n 1)" ||
    bad ide-lost-kernel-saw-it "no nvme timeout, abort, reset or I/O error in dmesg"

# The disk outside the TDI: the controller live, I/O correct.
[ "$(cat /sys/class/nvme/nvme0/state)" = live ] && ok ide-lost-live || bad ide-lost-live "$(cat /sys/class/nvme/nvme0/state)"
dd if=/dev/urandom of=/tmp/p bs=64k count=16 2>/dev/null
dd if=/tmp/p of=$ns bs=64k seek=100 oflag=direct 2>/dev/null
dd if=$ns of=/tmp/r bs=64k skip=100 count=16 iflag=direct 2>/dev/null
a=$(md5sum </tmp/p | cut -d' ' -f1)
b=$(md5sum </tmp/r | cut -d' ' -f1)
[ "$a" = "$b" ] && ok ide-lost-disk-after "$a" || bad ide-lost-disk-after "wrote $a, read $b"
exit $fail
