#!/bin/sh
# Guest half of the IDE enumeration test (tests/e2e_ide.rs). For every
# trustdev device, reads its IDE extended capability through sysfs config
# (QEMU forwards every access to the server) and reports what the kernel's
# drivers/pci/ide.c pci_ide_init() did at enumeration:
#  - on pcie.0 (an RCiEP) Linux 7.3 parses the capability and writes the
#    reserved Stream ID 255 into every idle link and selective stream
#    (Control = ff000000h: ID 255, Enable clear);
#  - behind QEMU's pcie-root-port (no IDE capability) it ignores the
#    Endpoint's capability: every Control register keeps its reset value 0.
# Also: the capability's layout (IDE Capability register, one address
# association block per stream, AER after it), INSECURE status everywhere.
# Then, per device, the IDE flow of `trustdev-guest ide` over the real DOE
# and IDE registers (SPDM session, IDE_KM QUERY/KEY_PROG/K_SET_GO, Enable,
# SECURE, verified NVMe I/O through the kernel's nvme driver or DMA copies
# through vfio-pci, a K0 -> K1 refresh while the I/O runs, K_SET_STOP,
# disable, teardown, END_SESSION) with test keys from a seed the host side
# knows, and the stream's registers read back afterwards.
# Prints "IDE <bdf> <placement> ..." and "CHECK-OK/CHECK-FAIL" lines.
SEED=e2e-ide-seed
fail=0
ok() { echo "CHECK-OK $bdf $*"; }
bad() { echo "CHECK-FAIL $bdf $1: $2"; fail=1; }
expect() { # name got want
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "got '$2', want '$3'"; fi
}
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }

for d in /sys/bus/pci/devices/*; do
    v=$(cat "$d/vendor")
    case "$v:$(cat "$d/device")" in
        0x7d0c:0xd3a0|0x7d0c:0x4e56) ;;
        *) continue ;;
    esac
    bdf=${d##*/}
    case "$bdf" in
        0000:00:*) placement=rciep; want=ff000000 ;;
        *) placement=endpoint; want=00000000 ;;
    esac
    # Walk the extended capabilities for IDE (30h) and AER (01h).
    off=256; ide=0; aer=0
    while [ "$off" -ne 0 ]; do
        h=$(dw "$d" "$off")
        id=$(( 0x$h & 0xffff ))
        [ "$id" -eq 48 ] && ide=$off
        [ "$id" -eq 1 ] && aer=$off
        off=$(( (0x$h >> 20) & 0xffc ))
    done
    if [ "$ide" -eq 0 ]; then bad ide-cap "no IDE capability"; continue; fi
    cap=$(dw "$d" $((ide + 4)))
    echo "IDE $bdf $placement cap@$ide=$cap"
    expect ide-capability "$cap" 00010043
    link_ctl=$(dw "$d" $((ide + 12)))
    link_sts=$(dw "$d" $((ide + 16)))
    sel0=$((ide + 20)); sel1=$((sel0 + 32))
    echo "IDE $bdf $placement link-ctl=$link_ctl link-sts=$link_sts sel0-cap=$(dw "$d" $sel0) sel0-ctl=$(dw "$d" $((sel0 + 4))) sel1-ctl=$(dw "$d" $((sel1 + 4)))"
    expect assoc-blocks "$(dw "$d" $sel0) $(dw "$d" $sel1)" "00000001 00000001"
    expect link-stream-id "$link_ctl" "$want"
    expect sel0-stream-id "$(dw "$d" $((sel0 + 4)))" "$want"
    expect sel1-stream-id "$(dw "$d" $((sel1 + 4)))" "$want"
    expect insecure "$link_sts $(dw "$d" $((sel0 + 8))) $(dw "$d" $((sel1 + 8)))" "00000000 00000000 00000000"
    expect aer-after-ide "$aer" $((ide + 4 + 80))
    expect aer-uncorrectable "$(dw "$d" $((aer + 4)))" 00000000
    if trustdev-guest ide --bdf "$bdf" --insecure-test-keys "$SEED" --ios 16; then
        ok ide-flow
    else
        bad ide-flow "trustdev-guest ide exited $?"
    fi
    # Back to the idle registers the tool found. For the DMA-copy device
    # that is the reset value 0 even on pcie.0: vfio-pci resets the function
    # when the tool opens it (before the flow), which clears the ID 255 the
    # kernel wrote at boot.
    idle=$want
    [ "$(cat "$d/device")" = 0xd3a0 ] && idle=00000000
    expect ide-idle-after "$(dw "$d" $((sel0 + 4))) $(dw "$d" $((sel0 + 8))) $(dw "$d" $((sel0 + 12))) $(dw "$d" $((sel0 + 16)))" "$idle 00000000 00000000 00000000"
done
dmesg -s 1000000 | grep -i -E "PCI/IDE|ide_" | head -20
exit $fail
