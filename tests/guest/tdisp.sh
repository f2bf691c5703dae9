#!/bin/sh
# Guest half of the TDISP end-to-end test (tests/e2e_tdisp.rs). For the NVMe
# controller (bound to the Linux nvme driver, behind a root port) and the
# DMA-copy device (on pcie.0), trustdev-guest tdisp drives the flow a TSM
# drives over the device's real DOE mailbox and configuration registers:
# SPDM session, IDE keys and a SECURE selective stream, LOCK_INTERFACE, the
# interface report checked against the BARs and MSI-X the kernel assigned,
# START (RUN), NVMe I/O in RUN (the device's DMA on the bound stream), a
# locked register touched (ERROR, the report refused), STOP (CONFIG_UNLOCKED),
# teardown. Each device runs the flow twice (a TDI is reusable after STOP):
# the second run touches MSI-X Message Control (Function Mask) instead of the
# Command register, locked by LOCK_MSIX (QEMU emulates MSI-X but writes
# Message Control through to the server). The DMA-copy device then gets a
# Function Level Reset and runs the flow a third time: its report must still
# match the BARs the kernel assigned.
# A TDI in ERROR does no DMA, so an NVMe controller busy at that moment (its
# shadow doorbells) may go fatal (CSTS.CFS): after each flow the script resets
# the controller (nvme reset_controller), as the host does before it uses a
# device it took back from a TDI, and the controller must come back live at
# once (no I/O timeout in dmesg) and its I/O must work.
# Prints "CHECK-OK <what> ..." / "CHECK-FAIL <what>: <detail>"; exits
# non-zero on any failure.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }

find_dev() { # vendor device
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] && echo "${d##*/}" && return
    done
}

ns=/dev/nvme0n1
i=0
while [ ! -b $ns ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b $ns ] && ok namespace $ns || bad namespace "no $ns"
nvme=$(basename "$(readlink -f /sys/class/nvme/nvme0/device)")
dma=$(find_dev 0x7d0c 0xd3a0)
echo "DEVICES nvme=$nvme dma-copy=$dma"

run_flow() { # name bdf kind [extra args]
    name=$1 bdf=$2 kind=$3
    shift 3
    roots=""
    for r in /etc/trustdev/roots/$kind-*.pem; do
        [ -f "$r" ] && roots="$roots --root $r"
    done
    echo "--- trustdev-guest tdisp --bdf $bdf$roots $*"
    # shellcheck disable=SC2086
    out=$(trustdev-guest tdisp --bdf "$bdf" $roots "$@" 2>&1)
    st=$?
    echo "$out"
    if [ $st -ne 0 ]; then
        bad "$name" "exit $st: $(echo "$out" | tail -n 1)"
        return
    fi
    echo "$out" | grep -q "^TDISP-OK $bdf" && ok "$name" "$(echo "$out" | grep '^TDISP-OK' | cut -d' ' -f3-)" ||
        bad "$name" "no TDISP-OK line"
    for step in "SPDM session" "IDE stream enable" LOCK_INTERFACE GET_DEVICE_INTERFACE_REPORT \
        START_INTERFACE "touch a locked register" "report in ERROR" STOP_INTERFACE "IDE teardown"; do
        echo "$out" | grep -q "^  $step  *OK" || bad "$name-steps" "step '$step' not OK"
    done
    echo "$out" | grep -q "^  IDE stream enable .*SECURE" && ok "$name-secure" || bad "$name-secure" "stream not SECURE"
    echo "$out" | grep -q "^  touch a locked register .*: ERROR; restored" && ok "$name-error" ||
        bad "$name-error" "no ERROR after touching the Command register"
    echo "$out" | grep -q "^  report in ERROR .*INVALID_INTERFACE_STATE" && ok "$name-report-refused" ||
        bad "$name-report-refused" "the report was not refused in ERROR"
    echo "$out" | grep -q "^  STOP_INTERFACE .*CONFIG_UNLOCKED" && ok "$name-stop" || bad "$name-stop" "no CONFIG_UNLOCKED"
}

nvme_back() { # name: reset the controller, the controller live, I/O works
    echo 1 >/sys/class/nvme/nvme0/reset_controller || bad "$1-reset" "controller reset refused"
    i=0
    while [ "$(cat /sys/class/nvme/nvme0/state)" != live ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ "$(cat /sys/class/nvme/nvme0/state)" = live ] && ok "$1-live" || bad "$1-live" "$(cat /sys/class/nvme/nvme0/state)"
    dd if=/dev/urandom of=/tmp/p bs=64k count=16 2>/dev/null
    dd if=/tmp/p of=$ns bs=64k seek=100 oflag=direct 2>/dev/null
    dd if=$ns of=/tmp/r bs=64k skip=100 count=16 iflag=direct 2>/dev/null
    a=$(md5sum </tmp/p | cut -d' ' -f1)
    b=$(md5sum </tmp/r | cut -d' ' -f1)
    [ "$a" = "$b" ] && ok "$1-io" "$a" || bad "$1-io" "wrote $a, read $b"
}

if [ -n "$nvme" ]; then
    run_flow tdisp-nvme "$nvme" nvme --io $ns
    echo "$out" | grep -q "^  I/O in RUN .*OK" && ok tdisp-nvme-io-in-run || bad tdisp-nvme-io-in-run "no I/O step"
    nvme_back tdisp-nvme-after
    run_flow tdisp-nvme-again "$nvme" nvme --io $ns --stream-id 7 --mmio-offset 0x100000000 --touch msix
    nvme_back tdisp-nvme-again-after
else
    bad tdisp-nvme "no NVMe controller"
fi
if [ -n "$dma" ]; then
    run_flow tdisp-dma-copy "$dma" dma-copy
    run_flow tdisp-dma-copy-again "$dma" dma-copy --stream-id 9 --stream-index 1 --touch msix
    # A Function Level Reset through the kernel (pci_reset_function: FLR,
    # then the saved state restored) keeps the BAR addresses the kernel
    # assigned on the device side, so a new interface report still matches
    # them.
    if echo 1 >"/sys/bus/pci/devices/$dma/reset"; then ok dma-copy-flr; else bad dma-copy-flr "reset refused"; fi
    run_flow tdisp-dma-copy-after-flr "$dma" dma-copy
else
    bad tdisp-dma-copy "no DMA-copy device"
fi

# No I/O ever timed out or failed.
errs=$(dmesg | grep -i nvme | grep -i -E "timeout|I/O error|controller is down|abort")
[ -z "$errs" ] && ok nvme-dmesg-clean || bad nvme-dmesg-clean "$errs"
dmesg | grep -i nvme | sed 's/^/DMESG /'
exit $fail
