#!/bin/sh
# Guest half of tests/e2e_qemu_patched.rs, link TSM flow: a connect through
# the trustdev_tsm link TSM and its agent (`trustdev vm --tsm`, started by
# /init) of NVMe controllers behind a root port and on pcie.0, with the IDE
# stream the connect sets up.
#
# On the patched QEMU (root ports with an IDE capability) the Endpoint's
# stream is allocated, registered, set up and enabled by the kernel's own
# helpers (drivers/pci/ide.c pci_ide_stream_alloc/register/setup/enable) on
# the Endpoint and its root port: the kernel registers the stream in sysfs
# (a link named after the stream under the host bridge, one secure stream
# less available), both ends' selective streams read SECURE, and NVMe I/O
# runs over the stream. On stock QEMU 11.1 the kernel refuses the same
# Endpoint (its root port has no IDE capability) and the RCiEP in both.
# The script reports what happened; the Rust half decides what must have.
#
# Prints "FACT <name> <value>" and "CHECK-OK/CHECK-FAIL" lines.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }
fact() { echo "FACT $*"; }
kmsg() { dmesg -s 1000000; }
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }
# ide_streams DEV-DIR: "Control/Status" of every selective IDE stream.
ide_streams() {
    d=$1 off=256 ide=0 n=0
    while [ "$off" -ne 0 ] && [ $n -lt 64 ]; do
        h=$(dw "$d" "$off")
        [ $((0x$h & 0xffff)) -eq 48 ] && ide=$off
        off=$(((0x$h >> 20) & 0xffc))
        n=$((n + 1))
    done
    [ "$ide" -eq 0 ] && return
    cap=$((0x$(dw "$d" $((ide + 4)))))
    nlink=0
    [ $((cap & 1)) -ne 0 ] && nlink=$((((cap >> 13) & 7) + 1))
    p=$((ide + 12 + 8 * nlink)) i=0 out=""
    while [ $i -le $(((cap >> 16) & 0xff)) ]; do
        out="$out $(dw "$d" $((p + 4)))/$(dw "$d" $((p + 8)))"
        p=$((p + 20 + 12 * (0x$(dw "$d" "$p") & 0xf)))
        i=$((i + 1))
    done
    echo $out
}
# "SECURE ENABLED": how many selective streams are enabled and SECURE, and
# how many are enabled.
streams() {
    s=0 e=0
    for x in $(ide_streams "$1"); do
        [ $((0x${x%/*} & 1)) -eq 1 ] || continue
        e=$((e + 1))
        [ $((0x${x#*/} & 15)) -eq 2 ] && s=$((s + 1))
    done
    echo "$s $e"
}
LOG=/run/tsm-agent.log
HB=/sys/devices/pci0000:00
connect() {
    ERR=$({ echo tsm0 >"/sys/bus/pci/devices/$1/tsm/connect"; } 2>&1)
    RC=$?
    ERR=${ERR##*write error: }
}
disconnect() {
    ERR=$({ echo tsm0 >"/sys/bus/pci/devices/$1/tsm/disconnect"; } 2>&1)
    RC=$?
    ERR=${ERR##*write error: }
}
# The kernel's IDE stream links under the host bridge: "NAME->BDF ...".
links() {
    out=""
    for l in "$HB"/stream*; do
        [ -L "$l" ] || continue
        out="$out ${l##*/}->$(basename "$(readlink -f "$l")")"
    done
    echo "${out# }"
}

i=0
while ! grep -q '^tsm-agent: attached' $LOG 2>/dev/null && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ -d /sys/class/tsm/tsm0 ] && ok tsm-class || { bad tsm-class "no /sys/class/tsm/tsm0"; exit 1; }
grep -q '^tsm-agent: attached' $LOG && ok agent-attached || bad agent-attached "$(cat $LOG)"
fact available-secure-streams-before "$(cat $HB/available_secure_streams 2>/dev/null || echo none)"
fact links-before "$(links)"

for d in /sys/bus/pci/devices/*; do
    bdf=${d##*/}
    [ "$(cat "$d/vendor")" = 0x7d0c ] && [ "$(cat "$d/device")" = 0x4e56 ] || continue
    case $bdf in 0000:00:*) place=rciep ;; *) place=root-port ;; esac
    rp=$(dirname "$(readlink -f "$d")")
    echo "DEVICE $bdf nvme $place"
    n0=$(kmsg | wc -l)
    connect "$bdf"
    fact "connect-$place" "$RC $ERR"
    # What trustdev_tsm said about the stream (its pci_info line of setup).
    line=$(kmsg | tail -n +$((n0 + 1)) | grep -F "$bdf" | grep 'IDE: kernel helpers: \|IDE: platform-emulated: ' | head -n1)
    case $line in
        *'IDE: kernel helpers: '*) fact "ide-mode-$place" kernel ;;
        *'IDE: platform-emulated: '*) fact "ide-mode-$place" platform ;;
        *) fact "ide-mode-$place" "none" ;;
    esac
    echo "KERNEL-LOG ${line#*] }"
    why=$(echo "$line" | sed -n 's/.*IDE: platform-emulated: \(.*\), so trustdev_tsm.*/\1/p')
    [ -n "$why" ] && fact "ide-refusal-$place" "$why"
    en=$(kmsg | tail -n +$((n0 + 1)) | grep -F "$bdf" | grep -o 'pci_ide_stream_enable(): .*\|platform-emulated enable of stream .*' | head -n1)
    fact "ide-enable-$place" "$en"
    fact "ep-streams-$place" "$(streams "$d")"
    if [ "$place" = root-port ]; then
        fact "rp-streams-$place" "$(streams "$rp")"
        fact "rp-$place" "${rp##*/}"
    fi
    fact "links-$place" "$(links)"
    fact "available-secure-streams-$place" "$(cat $HB/available_secure_streams 2>/dev/null || echo none)"
    grep "connect $bdf: OK" $LOG | tail -n1 | sed 's/^/AGENT /'

    # NVMe I/O over the connected, stream-protected function.
    ctrl=$(ls "$d/nvme" 2>/dev/null | head -n1)
    ns=/dev/${ctrl}n1
    i=0
    while [ ! -b "$ns" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -b "$ns" ]; then
        dd if=/dev/urandom of=/tmp/w bs=64k count=16 2>/dev/null
        dd if=/tmp/w of="$ns" bs=64k oflag=direct 2>/dev/null
        dd if="$ns" of=/tmp/r bs=64k count=16 iflag=direct 2>/dev/null
        a=$(md5sum </tmp/w | cut -d' ' -f1)
        b=$(md5sum </tmp/r | cut -d' ' -f1)
        if [ "$a" = "$b" ]; then
            fact "nvme-io-$place" "verified $(streams "$d")"
        else
            fact "nvme-io-$place" "mismatch"
        fi
    else
        fact "nvme-io-$place" "no block device $ns"
    fi

    disconnect "$bdf"
    fact "disconnect-$place" "$RC $ERR"
    fact "after-$place" "ep $(streams "$d") rp $(streams "$rp") links '$(links)' available $(cat $HB/available_secure_streams 2>/dev/null || echo none)"
done
if kmsg | grep -q 'BUG:\|Oops\|WARNING:'; then
    bad no-oops "$(kmsg | grep -A5 'BUG:\|Oops\|WARNING:' | head -n 20)"
else
    ok no-oops
fi
exit $fail
