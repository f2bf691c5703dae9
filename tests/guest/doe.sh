#!/bin/sh
# Guest half of the DOE/CMA end-to-end test (tests/e2e_doe.rs). For every
# DMA-copy device (one behind a root port, one on pcie.0):
#  - the kernel's DOE core probed the mailbox at enumeration: doe_features/
#    lists discovery, CMA/SPDM and secured CMA/SPDM; dmesg (doe.c dyndbg) has
#    "Issuing Abort" and "Found feature" lines and no DOE error or timeout;
#  - function 0 advertises DEVCAP.TEE;
#  - trustdev-guest spdm authenticates the device against the root the server
#    exported and runs a secured session over the DOE registers;
#  - a wrong trust anchor is refused at CERTIFICATE;
#  - timings: the kernel's boot-time probe (Issuing Abort -> last Found
#    feature, dmesg clock) and the guest-side exchange time (doe --bench).
# Prints "CHECK-OK <bdf> <what> ..." / "CHECK-FAIL <bdf> <what>: <detail>"
# and "TIMING <bdf> <what> <value>" lines; exits non-zero on any failure.
fail=0
ok() { echo "CHECK-OK $bdf $*"; }
bad() { echo "CHECK-FAIL $bdf $1: $2"; fail=1; }
expect() { # name got want
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "got '$2', want '$3'"; fi
}
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }
hex() { printf '%d' "0x$1"; }

bdfs=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0xd3a0 ] && bdfs="$bdfs ${d##*/}"
done
bdf=none
[ -n "$bdfs" ] || bad devices "no DMA-copy device enumerated"
echo "DEVICES$bdfs"

roots=""
for r in /etc/trustdev/roots/dma-copy-*.pem; do
    [ -f "$r" ] && roots="$roots --root $r"
done
echo "ROOTS$roots"
[ -n "$roots" ] || bad roots "no root certificate in /etc/trustdev/roots"
p256_root=$(ls /etc/trustdev/roots/dma-copy-*256*.pem 2>/dev/null | head -n 1)

dmesg >/tmp/dmesg.txt
for bdf in $bdfs; do
    d=/sys/bus/pci/devices/$bdf
    # --- the kernel's view: doe_features
    expect doe-discovery "$(cat "$d/doe_features/doe_discovery" 2>&1)" 0001:00
    feats=$(ls "$d/doe_features" 2>&1 | tr '\n' ' ')
    expect doe-features "$feats" "0001:01 0001:02 doe_discovery "
    # --- the kernel's log of its boot-time probe
    lines=$(grep -F "$bdf" /tmp/dmesg.txt | grep -F "DOE")
    echo "--- dmesg DOE lines of $bdf"
    echo "$lines"
    n_abort=$(echo "$lines" | grep -c "Issuing Abort")
    n_found=$(echo "$lines" | grep -c "Found feature")
    if [ "$n_abort" -ge 1 ] && [ "$n_found" -ge 3 ]; then
        ok doe-dmesg "$n_abort abort(s), $n_found features"
    else
        bad doe-dmesg "want an 'Issuing Abort' and 3 'Found feature' lines, got $n_abort and $n_found"
    fi
    errs=$(grep -F "$bdf" /tmp/dmesg.txt | grep -i -E "doe|mailbox" | grep -i -E "error|timed out|timeout|fail|-EIO|-EBUSY")
    expect doe-no-errors "$errs" ""
    # Boot-time probe on the dmesg clock: Issuing Abort -> last Found feature,
    # split at the first Found feature (the kernel sleeps one poll interval
    # after every Abort before it reads Status, whatever the device does).
    ts() { sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'; }
    us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000000 + 0.5 }'; }
    t0=$(echo "$lines" | grep "Issuing Abort" | head -n 1 | ts)
    t1=$(echo "$lines" | grep "Found feature" | head -n 1 | ts)
    t2=$(echo "$lines" | grep "Found feature" | tail -n 1 | ts)
    if [ -n "$t0" ] && [ -n "$t1" ] && [ -n "$t2" ]; then
        echo "TIMING $bdf kernel-probe-us $(us "$t0" "$t2") (abort + first discovery $(us "$t0" "$t1"), remaining discovery $(us "$t1" "$t2"))"
    fi
    # --- DEVCAP.TEE (PCIe capability, Device Capabilities bit 30)
    p=$(( $(hex "$(dw "$d" 52)") & 0xfc ))
    devcap="" n=0
    while [ "$p" -ne 0 ] && [ $n -lt 48 ]; do
        v=$(hex "$(dw "$d" $p)")
        if [ $((v & 0xff)) = 16 ]; then
            devcap=$(hex "$(dw "$d" $((p + 4)))")
            break
        fi
        p=$(( (v >> 8) & 0xfc ))
        n=$((n + 1))
    done
    if [ -n "$devcap" ]; then
        expect devcap-tee $(( (devcap >> 30) & 1 )) 1
    else
        bad devcap-tee "no PCIe capability"
    fi
    # --- SPDM over the DOE registers, from guest user space
    echo "--- trustdev-guest spdm --bdf $bdf$roots"
    # shellcheck disable=SC2086
    if out=$(trustdev-guest spdm --bdf "$bdf" $roots 2>&1); then
        echo "$out"
        case "$out" in
            *"SPDM-OK $bdf"*) ok spdm "$(echo "$out" | grep '^SPDM-OK' | cut -d' ' -f3-)" ;;
            *) bad spdm "no SPDM-OK line" ;;
        esac
        echo "$out" | grep -q -E "leaf otherName 2.23.147: Vendor=7d0c:Device=d3a0:CC=120000:REV=01:SSVID=7d0c:SSID=0001:[0-9a-f]{16}$" &&
            ok spdm-othername || bad spdm-othername "leaf otherName missing or wrong"
        for step in CERTIFICATE CHALLENGE "MEASUREMENTS (signed, all)" KEY_EXCHANGE+FINISH HEARTBEAT KEY_UPDATE "MEASUREMENTS in session" END_SESSION; do
            echo "$out" | grep -q "^  $step  *OK" || bad spdm-steps "step $step not OK"
        done
        t=$(echo "$out" | sed -n 's/^authentication (VERSION..CHALLENGE_AUTH): \([0-9.]*\) ms; session setup (KEY_EXCHANGE+FINISH): \([0-9.]*\) ms$/\1 \2/p')
        echo "TIMING $bdf spdm-auth-ms ${t% *}"
        echo "TIMING $bdf spdm-session-setup-ms ${t#* }"
        echo "TIMING $bdf spdm-auth-and-session-ms $(echo "$out" | sed -n 's/^authentication and session setup: \([0-9.]*\) ms.*/\1/p')"
    else
        echo "$out"
        bad spdm "$(echo "$out" | tail -n 1)"
    fi
    # --- the P-256 identity, SPDM 1.2
    echo "--- trustdev-guest spdm --bdf $bdf$roots --asym p256 --version 1.2"
    # shellcheck disable=SC2086
    if out=$(trustdev-guest spdm --bdf "$bdf" $roots --asym p256 --version 1.2 2>&1); then
        echo "$out"
        case "$out" in
            *"SPDM-OK $bdf version 1.2 ECDSA P-256"*) ok spdm-p256 ;;
            *) bad spdm-p256 "no SPDM-OK line for 1.2/P-256" ;;
        esac
        echo "TIMING $bdf spdm-p256-auth-and-session-ms $(echo "$out" | sed -n 's/^authentication and session setup: \([0-9.]*\) ms.*/\1/p')"
    else
        echo "$out"
        bad spdm-p256 "$(echo "$out" | tail -n 1)"
    fi
    # --- a trust anchor that did not sign the negotiated (P-384) chain
    if [ -n "$p256_root" ]; then
        out=$(trustdev-guest spdm --bdf "$bdf" --root "$p256_root" 2>&1)
        rc=$?
        echo "--- trustdev-guest spdm --bdf $bdf --root $p256_root (exit $rc)"
        echo "$out"
        case "$rc:$out" in
            1:*"CERTIFICATE failed"*"not trusted"*) ok spdm-wrong-root ;;
            *) bad spdm-wrong-root "exit $rc: $(echo "$out" | tail -n 1)" ;;
        esac
    fi
    # --- the DOE exchange time as guest user space sees it
    echo "--- trustdev-guest doe $bdf --bench 100"
    if out=$(trustdev-guest doe "$bdf" --bench 100 2>&1); then
        echo "$out"
        ok doe-bench
        echo "TIMING $bdf doe-exchange $(echo "$out" | sed -n 's/.*discovery exchanges: \(.*\)/\1/p')"
    else
        echo "$out"
        bad doe-bench "$(echo "$out" | tail -n 1)"
    fi
done
# After all that traffic (sessions, aborts, a refused chain, 100 bench
# exchanges) the mailbox must still serve the kernel's own DOE core. sysfs
# doe_features is only built at enumeration, so make the kernel probe again:
# remove the function and rescan the bus; pci_doe_init then aborts the
# mailbox and walks discovery anew, logging (dyndbg) one "Found feature" line
# per protocol, and doe_features is rebuilt from what it found.
for bdf in $bdfs; do
    d=/sys/bus/pci/devices/$bdf
    n0=$(dmesg | wc -l)
    echo 1 >"$d/remove"
    echo 1 >/sys/bus/pci/rescan
    i=0
    while [ ! -d "$d/doe_features" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    new=$(dmesg | tail -n +$((n0 + 1)) | grep -F "$bdf")
    echo "--- dmesg of $bdf after remove + rescan"
    echo "$new" | grep -F DOE
    found=$(echo "$new" | grep -c "Found feature")
    errs=$(echo "$new" | grep -i -E "doe|mailbox" | grep -i -E "error|timed out|timeout|fail|-EIO|-EBUSY")
    feats=$(ls "$d/doe_features" 2>&1 | tr '\n' ' ')
    if [ "$feats" = "0001:01 0001:02 doe_discovery " ] && [ "$found" -ge 3 ] && [ -z "$errs" ]; then
        ok doe-features-after "re-probed after remove + rescan: $found features, $feats"
    else
        bad doe-features-after "after remove + rescan: doe_features '$feats', $found 'Found feature' lines, errors: $(echo "$errs" | head -n 3 | tr '\n' '|')"
    fi
done
exit $fail
