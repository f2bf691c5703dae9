#!/bin/sh
# Guest half of tests/e2e_trace.rs: one NVMe controller served with the
# control plane's trace on (`trustdev vm --control-dir`). The guest drives
# everything the trace decodes, over the device's real DOE mailbox and
# registers: the nvme driver's admin commands at probe (and again after a
# controller reset); `trustdev-guest ide` (CMA/SPDM, a secured session,
# IDE_KM QUERY, KEY_PROG of every K0 and K1 key, K_SET_GO, K_SET_STOP,
# verified NVMe I/O); `trustdev-guest tdisp` (another session, K0 keys,
# LOCK_INTERFACE, the interface report, START_INTERFACE, I/O in RUN, ERROR,
# STOP_INTERFACE). Keys come from a seed only the test knows
# (--insecure-test-keys): the host side then searches the trace for them.
# Prints "CHECK-OK <what>" / "CHECK-FAIL <what>: ..." lines.
SEED=e2e-trace-seed
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
for r in /etc/trustdev/roots/nvme-*.pem; do [ -f "$r" ] && roots="$roots --root $r"; done

if out=$(trustdev-guest ide --bdf "$nvme" --insecure-test-keys "$SEED" --ios 4 2>&1); then
    ok ide-flow
else
    bad ide-flow "exit $?"
fi
echo "$out" | sed 's/^/IDE-FLOW /'
# shellcheck disable=SC2086
if out=$(trustdev-guest tdisp --bdf "$nvme" $roots --io $ns --insecure-test-keys "$SEED" 2>&1) &&
    echo "$out" | grep -q "^TDISP-OK"; then
    ok tdisp-flow
else
    bad tdisp-flow "$(echo "$out" | tail -n 1)"
fi
echo "$out" | sed 's/^/TDISP-FLOW /'
# A TDI in ERROR does no DMA: reset the controller as the host does before
# it uses the device again (more admin commands for the trace), then I/O.
echo 1 >/sys/class/nvme/nvme0/reset_controller || bad nvme-reset "refused"
i=0
while [ "$(cat /sys/class/nvme/nvme0/state)" != live ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if dd if=$ns of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null; then ok nvme-after; else
    bad nvme-after "read failed"; fi
exit $fail
