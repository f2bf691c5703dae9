#!/bin/sh
# Guest half of the QEMU interop check (tests/e2e_doe.rs): QEMU's built-in
# NVMe controllers with `spdm_port=N` forward their DOE CMA objects to
# `trustdev spdm-responder`. For every QEMU NVMe controller (1b36:0010): the
# kernel's DOE discovery lists CMA/SPDM and secured CMA/SPDM without errors,
# and trustdev-guest spdm authenticates and runs a session through QEMU's DOE
# mailbox to our responder, with the root certificate the test put at
# /etc/trustdev/roots/spdm-responder.pem.
fail=0
ok() { echo "CHECK-OK $bdf $*"; }
bad() { echo "CHECK-FAIL $bdf $1: $2"; fail=1; }
root=/etc/trustdev/roots/spdm-responder.pem

bdfs=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1b36 ] && [ "$(cat "$d/device")" = 0x0010 ] && bdfs="$bdfs ${d##*/}"
done
bdf=none
[ -n "$bdfs" ] || bad devices "no QEMU NVMe controller enumerated"
[ -f "$root" ] || bad root "$root missing"
echo "DEVICES$bdfs"
dmesg >/tmp/dmesg.txt
for bdf in $bdfs; do
    d=/sys/bus/pci/devices/$bdf
    feats=$(ls "$d/doe_features" 2>&1 | tr '\n' ' ')
    case "$feats" in
        *0001:01*0001:02*) ok doe-features "$feats" ;;
        *) bad doe-features "got '$feats'" ;;
    esac
    echo "--- dmesg DOE lines of $bdf"
    lines=$(grep -F "$bdf" /tmp/dmesg.txt | grep -F "DOE")
    echo "$lines"
    ts() { sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
    us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000000 + 0.5 }'; }
    t0=$(echo "$lines" | grep "Issuing Abort" | head -n 1 | ts)
    t1=$(echo "$lines" | grep "Found feature" | head -n 1 | ts)
    t2=$(echo "$lines" | grep "Found feature" | tail -n 1 | ts)
    if [ -n "$t0" ] && [ -n "$t1" ] && [ -n "$t2" ]; then
        echo "TIMING $bdf kernel-probe-us $(us "$t0" "$t2") (abort + first discovery $(us "$t0" "$t1"), remaining discovery $(us "$t1" "$t2"))"
    fi
    errs=$(grep -F "$bdf" /tmp/dmesg.txt | grep -i -E "doe|mailbox" | grep -i -E "error|timed out|timeout|fail|-EIO|-EBUSY")
    [ -z "$errs" ] && ok doe-no-errors || bad doe-no-errors "$errs"
    echo "--- trustdev-guest spdm --bdf $bdf --root $root"
    if out=$(trustdev-guest spdm --bdf "$bdf" --root "$root" 2>&1); then
        echo "$out"
        case "$out" in
            *"SPDM-OK $bdf"*) ok spdm "$(echo "$out" | grep '^SPDM-OK' | cut -d' ' -f3-)" ;;
            *) bad spdm "no SPDM-OK line" ;;
        esac
        echo "TIMING $bdf spdm-auth-and-session-ms $(echo "$out" | sed -n 's/^authentication and session setup: \([0-9.]*\) ms.*/\1/p')"
    else
        echo "$out"
        bad spdm "$(echo "$out" | tail -n 1)"
    fi
    # QEMU answers discovery itself (in-process): the baseline exchange time.
    echo "--- trustdev-guest doe $bdf --bench 100"
    if out=$(trustdev-guest doe "$bdf" --bench 100 2>&1); then
        echo "$out"
        echo "TIMING $bdf doe-exchange $(echo "$out" | sed -n 's/.*discovery exchanges: \(.*\)/\1/p')"
    else
        echo "$out"
        bad doe-bench "$(echo "$out" | tail -n 1)"
    fi
    echo "--- trustdev-guest spdm --bdf $bdf --root $root --version 1.2 --session-only --json"
    if out=$(trustdev-guest spdm --bdf "$bdf" --root "$root" --version 1.2 --session-only --json 2>&1); then
        echo "$out"
        case "$out" in
            *'"ok":true'*'"version":"1.2"'* | *'"version":"1.2"'*'"ok":true'*) ok spdm-1.2-json ;;
            *) bad spdm-1.2-json "unexpected JSON" ;;
        esac
    else
        echo "$out"
        bad spdm-1.2-json "$(echo "$out" | tail -n 1)"
    fi
done
exit $fail
