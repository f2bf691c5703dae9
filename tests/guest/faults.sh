#!/bin/sh
# Guest half of tests/e2e_faults.rs: one guest, the devices of
# tests/faults.toml (booted with `trustdev vm --config`), each with a fault
# armed at start for a limited count, so the kernel's error path runs first
# and the device is usable again after the fault used itself up:
#  - dc-doe (doe-no-response, 1): the kernel's DOE discovery times out and
#    aborts at enumeration; user-space SPDM over the same mailbox then works;
#  - dc-sig (spdm-bad-signature, 1): trustdev-guest spdm reports the bad
#    CHALLENGE_AUTH signature, then authenticates;
#  - dc-cert (spdm-cert unknown-root, 1): trustdev-guest spdm refuses the
#    chain, then authenticates;
#  - dc-expired (spdm-cert expired, 1): trustdev-guest spdm refuses the
#    leaf as expired (at the guest's clock), then authenticates and opens a
#    session with the device's good chain;
#  - nvme-media (nvme-media-error on LBAs 4096-4103, 1): a direct read there
#    is an I/O error, data written elsewhere reads back intact, the read
#    then succeeds;
#  - nvme-fatal (nvme-fatal at LBA 2048, 1): reading there sets CSTS.CFS;
#    the nvme driver resets the controller and the disk works again.
# Prints "CHECK-OK <what> ..." / "CHECK-FAIL <what>: ..." lines.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }

roots=""
for r in /etc/trustdev/roots/dma-copy-*.pem; do roots="$roots --root $r"; done
# DMA-copy devices in slot order: dc-doe, dc-sig, dc-cert, dc-expired.
dcs=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xd3a0 ] && dcs="$dcs ${d##*/}"
done
set -- $dcs
doe=$1 sig=$2 cert=$3 expired=$4
echo "DEVICES dc-doe=$doe dc-sig=$sig dc-cert=$cert dc-expired=$expired"
echo "GUEST-CLOCK $(date -u +%Y-%m-%dT%H:%M:%SZ)"
dmesg >/tmp/dmesg.txt

# --- DOE: the kernel's timeout and abort
lines=$(grep -F "$doe" /tmp/dmesg.txt | grep -i -E "doe|mailbox")
echo "$lines" | sed 's/^/DMESG-DOE /'
# The kernel's DOE core times out (1 s), aborts and gives up the mailbox:
# "failed to cache features : -5", "failed to create mailbox: -EIO".
if echo "$lines" | grep -q -i -E "failed to cache features|timed out|timeout"; then
    ok doe-kernel-timeout
else
    bad doe-kernel-timeout "no DOE timeout in dmesg for $doe"
fi
# shellcheck disable=SC2086
if out=$(trustdev-guest spdm --bdf "$doe" $roots 2>&1); then ok doe-usable-after; else
    echo "$out"; bad doe-usable-after "$(echo "$out" | tail -n 1)"; fi

# --- SPDM: bad signature, bad chain, each once
spdm_fail_then_ok() { # name bdf pattern
    # shellcheck disable=SC2086
    out=$(trustdev-guest spdm --bdf "$2" $roots 2>&1)
    st=$?
    echo "$out" | sed "s/^/SPDM-$1-refused /"
    if [ $st -ne 0 ] && echo "$out" | grep -q -i -E "$3"; then ok "$1-refused"; else
        bad "$1-refused" "status $st, want a failure matching '$3'"; fi
    # shellcheck disable=SC2086
    if out=$(trustdev-guest spdm --bdf "$2" $roots 2>&1); then ok "$1-usable-after"; else
        echo "$out"; bad "$1-usable-after" "$(echo "$out" | tail -n 1)"; fi
}
spdm_fail_then_ok bad-signature "$sig" "signature"
spdm_fail_then_ok bad-chain "$cert" "root is not trusted|chain"
spdm_fail_then_ok expired-cert "$expired" "certificate expired"
# The good chain after the fault: authenticated, and a secured session.
# shellcheck disable=SC2086
out=$(trustdev-guest spdm --bdf "$expired" $roots 2>&1)
if echo "$out" | grep -q "session 0x[0-9a-f]* established"; then ok expired-cert-session-after; else
    echo "$out" | sed 's/^/SPDM-expired-session /'; bad expired-cert-session-after "no session established"; fi

# --- NVMe: which namespace is which (serial numbers in the config)
media="" fatal=""
for c in /sys/class/nvme/nvme*; do
    case "$(cat "$c/serial" 2>/dev/null)" in
        *media*) media=/dev/$(ls "$c" | grep -m1 -E '^nvme[0-9]+n1$') ;;
        *fatal*) fatal=/dev/$(ls "$c" | grep -m1 -E '^nvme[0-9]+n1$') ;;
    esac
done
echo "NVME media=$media fatal=$fatal"
# Media error: pattern elsewhere, the error, the pattern intact, then fine.
i=0; while [ $i -lt 128 ]; do echo "trustdev block $i pattern"; i=$((i + 1)); done | head -c 2048 >/tmp/pat
dd if=/tmp/pat of="$media" bs=512 seek=100 count=4 oflag=direct conv=fsync 2>/dev/null
if dd if="$media" of=/dev/null bs=512 skip=4096 count=8 iflag=direct 2>/tmp/dd.err; then
    bad nvme-media-error "the read at LBA 4096 succeeded"
else
    ok nvme-media-error "$(tail -n 1 /tmp/dd.err)"
fi
dmesg | grep -i -E "critical medium error|I/O error.*sector 4096|Unrecovered" | tail -n 3 | sed 's/^/DMESG-MEDIA /'
dmesg | grep -q -i -E "critical medium error|I/O error, dev nvme[0-9]+n1, sector 4096" &&
    ok nvme-media-dmesg || bad nvme-media-dmesg "no medium error in dmesg"
dd if="$media" bs=512 skip=100 count=4 iflag=direct 2>/dev/null >/tmp/back
head -c 2048 /tmp/pat | cmp -s - /tmp/back && ok nvme-data-intact || bad nvme-data-intact "pattern differs"
dd if="$media" of=/dev/null bs=512 skip=4096 count=8 iflag=direct 2>/dev/null &&
    ok nvme-media-usable-after || bad nvme-media-usable-after "second read failed"

# --- NVMe: controller fatal status at a read of LBA 2048; the command
# times out (nvme_core.io_timeout=4), the driver sees CSTS.CFS, resets the
# controller and retries; then the disk works.
dd if="$fatal" of=/dev/null bs=512 skip=2048 count=1 iflag=direct 2>&1 | sed 's/^/DD-FATAL /'
n=0
until dmesg | grep -q -i -E "controller is down; will reset|CSTS=0x3" || [ $n -ge 60 ]; do
    sleep 0.5; n=$((n + 1))
done
dmesg | grep -i -E "nvme[0-9]+: .*(controller is down|reset|CSTS|timeout)" | sed 's/^/DMESG-FATAL /'
dmesg | grep -q -i -E "controller is down; will reset|CSTS=0x3" &&
    ok nvme-fatal-reset || bad nvme-fatal-reset "no controller reset in dmesg"
if [ -b "$fatal" ] && dd if=/tmp/pat of="$fatal" bs=512 count=4 oflag=direct conv=fsync 2>/dev/null &&
    dd if="$fatal" bs=512 count=4 iflag=direct 2>/dev/null | cmp -s - /tmp/pat -n 2048; then
    ok nvme-fatal-recovered
else
    bad nvme-fatal-recovered "$fatal not usable after the reset"
fi

dmesg | grep -i nvme | sed 's/^/DMESG-NVME /'
exit $fail
