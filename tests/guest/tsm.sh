#!/bin/sh
# Guest half of tests/e2e_tsm.rs: the kernel's own PCI/TSM code (drivers/pci/
# tsm.c, drivers/virt/coco/tsm-core.c, drivers/pci/doe.c) against trustdev
# devices through the trustdev_tsm test link TSM and its agent, started by
# /init (`trustdev vm --tsm`).
#
# Devices: NVMe controllers and DMA-copy devices behind root ports and on
# pcie.0, one DMA-copy device served with --no-spdm (a DOE mailbox
# without CMA/SPDM, DEVCAP.TEE set), and one served with --wrong-san (its
# certificate chain verifies, its CMA SAN names another device; DSN
# $WRONG_SAN_DSN identifies it).
#
#  - /sys/class/tsm/tsm0 exists; every trustdev device shows tsm/{connect,
#    disconnect,dsm,bound} and authenticated; other functions do not;
#  - connect succeeds for every CMA device in both placements: the kernel
#    reads back tsm0 in tsm/connect and authenticated, dsm names the device;
#    the connect also set up IDE (the agent's IDE_KM QUERY, K0 keys, the
#    module's stream Enable): exactly one selective stream of the device is
#    enabled and SECURE in configuration space; disconnect disables it
#    (K_SET_STOP) and the module restores its idle registers;
#  - the kernel's path, function by function (ftrace function_graph of one
#    connect and disconnect) and dyndbg of tsm.c and doe.c;
#  - NVMe I/O works while both controllers are connected;
#  - disconnect ends the SPDM session and clears the state; connect works again;
#  - failures: the --no-spdm device is refused by pci_tsm_pf0_constructor()
#    ("no CMA mailbox"); a chain that does not verify against the agent's
#    roots fails with EACCES; so does, with the agent's default SAN policy
#    (enforce), the device whose SAN names another device, which connects
#    with --san warn; killing the agent mid-connect fails connect at
#    once (EPIPE); a hung agent times out (ETIMEDOUT); no agent: ENOTCONN;
#    after each, connect works again;
#  - removing a connected function disconnects it (pci_tsm_destroy), a rescan
#    brings it back with tsm/; rmmod with a device connected disconnects it
#    (pci_tsm_unregister) and leaves nothing behind; no oops.
# Prints "CHECK-OK <what> [detail]" / "CHECK-FAIL <what>: <detail>",
# "DEVICE <bdf> <kind> <placement> <cma|no-cma>", "SESSION <kind> <placement>
# <id>" and "TIMING ..." lines; exits non-zero on any failure.
fail=0
ok() { echo "CHECK-OK $*"; }
bad() { echo "CHECK-FAIL $1: $2"; fail=1; }
expect() { # name got want
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "got '$2', want '$3'"; fi
}
kmsg() { dmesg -s 1000000; }
WRONG_SAN_DSN=7d0c00000000ba05
# dsn DEV-DIR: the Device Serial Number (16 hex digits), or nothing.
dsn() {
    off=256
    while [ "$off" -ne 0 ]; do
        h=$(dw "$1" "$off")
        [ $((0x$h & 0xffff)) -eq 3 ] && { echo "$(dw "$1" $((off + 8)))$(dw "$1" $((off + 4)))"; return; }
        off=$(((0x$h >> 20) & 0xffc))
    done
}
# dword DEV-DIR OFFSET -> 8 hex digits of the config dword
dw() { od -An -tx4 -j "$2" -N4 "$1/config" | tr -d ' \n'; }
# ide_streams BDF: "Control/Status" of every selective IDE stream.
ide_streams() {
    d=/sys/bus/pci/devices/$1
    off=256 ide=0
    while [ "$off" -ne 0 ]; do
        h=$(dw "$d" "$off")
        [ $((0x$h & 0xffff)) -eq 48 ] && ide=$off
        off=$(((0x$h >> 20) & 0xffc))
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
# secure_streams BDF: how many selective streams are enabled and SECURE;
# enabled_streams BDF: how many are enabled.
secure_streams() {
    n=0
    for s in $(ide_streams "$1"); do
        [ $((0x${s%/*} & 1)) -eq 1 ] && [ $((0x${s#*/} & 15)) -eq 2 ] && n=$((n + 1))
    done
    echo $n
}
enabled_streams() {
    n=0
    for s in $(ide_streams "$1"); do [ $((0x${s%/*} & 1)) -eq 1 ] && n=$((n + 1)); done
    echo $n
}
T=/sys/kernel/tracing
LOG=/run/tsm-agent.log

# connect BDF / disconnect BDF: RC and ERR (the errno text of the shell's
# "write error: ...") set.
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
state() { cat "/sys/bus/pci/devices/$1/tsm/connect"; }

agent_pid() { cat /run/tsm-agent.pid 2>/dev/null; }
# Stops the agent (SIGKILL) and waits until it is gone or a zombie: its file
# is closed by then.
agent_stop() {
    p=$(agent_pid)
    [ -n "$p" ] || return 0
    kill -9 "$p" 2>/dev/null
    i=0
    while [ -d "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    wait "$p" 2>/dev/null
    rm -f /run/tsm-agent.pid
}
# Starts an agent with the given arguments; waits until it is attached.
agent_start() {
    trustdev-guest tsm-agent "$@" >>$LOG 2>&1 &
    echo $! >/run/tsm-agent.pid
    i=0
    while [ "$(grep -c '^tsm-agent: attached' $LOG)" -le "$attached" ] && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    attached=$(grep -c '^tsm-agent: attached' $LOG)
}
attached=$(grep -c '^tsm-agent: attached' $LOG 2>/dev/null)

# ------------------------------------------------------------ module, agent
if [ -d /sys/class/tsm/tsm0 ]; then
    ok tsm-class "/sys/class/tsm/tsm0 -> $(readlink /sys/class/tsm/tsm0)"
else
    bad tsm-class "no /sys/class/tsm/tsm0 (trustdev_tsm loaded? $(ls /sys/module | grep -c trustdev_tsm))"
    kmsg | grep -i tsm
    exit 1
fi
p=$(agent_pid)
if [ -n "$p" ] && [ -d "/proc/$p" ] && [ "$attached" -ge 1 ]; then
    ok agent-started "pid $p by /init"
else
    bad agent-started "no running tsm-agent from /init: $(cat $LOG 2>&1)"
fi

# ------------------------------------------------------------ devices
devices=""
for d in /sys/bus/pci/devices/*; do
    bdf=${d##*/}
    [ "$(cat "$d/vendor")" = 0x7d0c ] || continue
    case $(cat "$d/device") in
        0x4e56) kind=nvme ;;
        0xd3a0) kind=dma-copy ;;
        *) continue ;;
    esac
    case $bdf in 0000:00:*) place=rciep ;; *) place=root-port ;; esac
    if [ -e "$d/doe_features/0001:01" ]; then cma=cma; else cma=no-cma; fi
    [ "$(dsn "$d")" = $WRONG_SAN_DSN ] && cma=wrong-san
    echo "DEVICE $bdf $kind $place $cma"
    devices="$devices $bdf:$kind:$place:$cma"
    # The TSM attributes the core shows once a link TSM is registered.
    missing=""
    for a in tsm/connect tsm/disconnect tsm/dsm tsm/bound authenticated; do
        [ -e "$d/$a" ] || missing="$missing $a"
    done
    expect "tsm-attrs $bdf" "$missing" ""
    expect "not-connected $bdf" "$(state "$bdf")|$(cat "$d/authenticated")" "|"
done
[ -n "$devices" ] || { bad devices "no trustdev device"; exit 1; }
# A function that is not a TSM PF0 (the host bridge) has no tsm/ group.
[ -e /sys/bus/pci/devices/0000:00:00.0/tsm ] && bad no-tsm-on-host-bridge "00:00.0 has tsm/" ||
    ok no-tsm-on-host-bridge

kmsg >/tmp/boot.txt
for e in $devices; do
    bdf=$(echo "$e" | cut -d: -f1-3)
    n=$(grep -F "$bdf" /tmp/boot.txt | grep -c 'PCI/TSM: Platform TEE Security Manager detected')
    [ "$n" -ge 1 ] && ok "dyndbg-tsm $bdf" "tsm.c: Platform TEE Security Manager detected" ||
        bad "dyndbg-tsm $bdf" "no tsm.c dyndbg line"
    n=$(grep -F "$bdf" /tmp/boot.txt | grep -c 'Found feature')
    [ "$n" -ge 1 ] && ok "dyndbg-doe $bdf" "doe.c: $n Found feature lines" ||
        bad "dyndbg-doe $bdf" "no doe.c dyndbg line"
done

field() { echo "$1" | cut -d: -f"$2"; }
bdf_of() { echo "$1" | cut -d: -f1-3; }

# ------------------------------------------------------------ the kernel's path (ftrace)
first=""
for e in $devices; do
    [ "$(field "$e" 6)" = cma ] && [ "$(field "$e" 4)" = dma-copy ] && { first=$(bdf_of "$e"); break; }
done
mount -t tracefs tracefs $T 2>/dev/null
for f in connect_store disconnect_store find_tsm_dev pci_tsm_pf0_constructor pci_tsm_link_constructor \
    pci_tsm_pf0_destructor pci_find_doe_mailbox pci_tsm_doe_transfer pci_doe doe_statemachine_work \
    pci_doe_task_complete __pci_tsm_disconnect to_pci_tsm_pf0 tdtsm_probe tdtsm_connect tdtsm_disconnect \
    tdtsm_remove tdtsm_agent_call tdtsm_ioctl; do
    echo "$f" >>$T/set_ftrace_filter 2>/dev/null || echo "INFO no ftrace function $f"
done
echo function_graph >$T/current_tracer
echo 1 >$T/tracing_on
connect "$first"
c1=$RC
disconnect "$first"
echo 0 >$T/tracing_on
echo "$c1 $RC" | grep -q '^0 0$' && ok ftrace-run "$first" || bad ftrace-run "connect $c1 disconnect $RC: $ERR"
cp $T/trace /tmp/trace.txt
echo nop >$T/current_tracer
# Function names in order of first appearance.
path=$(sed -n 's/.*|  *\([a-z_0-9.]*\)\( \[trustdev_tsm\]\)*() *[{;].*/\1/p' /tmp/trace.txt | awk '!s[$0]++' | tr '\n' ' ')
echo "KERNEL-PATH $path"
# Each step of connect and disconnect, in order.
want="connect_store find_tsm_dev tdtsm_probe pci_tsm_pf0_constructor pci_find_doe_mailbox pci_tsm_link_constructor tdtsm_connect tdtsm_agent_call tdtsm_ioctl pci_tsm_doe_transfer pci_doe doe_statemachine_work pci_doe_task_complete disconnect_store __pci_tsm_disconnect tdtsm_disconnect tdtsm_remove pci_tsm_pf0_destructor"
rest=" $path"
missing=""
for f in $want; do
    case $rest in
        *" $f "*) rest=" ${rest#* "$f" }" ;;
        *) missing="$missing $f" ;;
    esac
done
expect kernel-path-in-order "$missing" ""
n=$(grep -c 'pci_tsm_doe_transfer() {' /tmp/trace.txt)
[ "$n" -ge 8 ] && ok ftrace-doe-transfers "$n pci_tsm_doe_transfer calls" || bad ftrace-doe-transfers "$n"

# ------------------------------------------------------------ connect every CMA device
for e in $devices; do
    [ "$(field "$e" 6)" = cma ] || continue
    bdf=$(bdf_of "$e")
    d=/sys/bus/pci/devices/$bdf
    connect "$bdf"
    expect "connect $bdf" "$RC $ERR" "0 "
    expect "connect-readback $bdf" "$(state "$bdf")|$(cat "$d/authenticated")|$(cat "$d/tsm/dsm")" "tsm0|tsm0|$bdf"
    expect "ide-secure $bdf" "$(secure_streams "$bdf") $(enabled_streams "$bdf")" "1 1"
    grep "connect $bdf: OK" $LOG | tail -n1 | grep -q 'IDE: QUERY port 0 .*its register image matches configuration space.*KEY_PROG + K_SET_GO of the 6 K0 keys.*SECURE via platform-emulated' &&
        ok "ide-connect-agent $bdf" "$(grep "connect $bdf: OK" $LOG | tail -n1 | sed 's/.*IDE: /IDE: /')" ||
        bad "ide-connect-agent $bdf" "$(grep "connect $bdf" $LOG | tail -n1)"
    ms=$(grep "connect $bdf: OK in" $LOG | tail -n1 | sed 's/.*OK in \([0-9]*\) ms, \([0-9]*\) DOE.*/\1 ms \2/')
    echo "TIMING connect $(field "$e" 4) $(field "$e" 5) $ms DOE exchanges"
done
kmsg | grep -F 'trustdev_tsm: connected to tsm0' >/tmp/connected.txt
n=$(wc -l </tmp/connected.txt)
echo "INFO $(head -n1 /tmp/connected.txt)"

# ------------------------------------------------------------ NVMe I/O while connected
for e in $devices; do
    [ "$(field "$e" 4)" = nvme ] && [ "$(field "$e" 6)" = cma ] || continue
    bdf=$(bdf_of "$e")
    ctrl=$(ls "/sys/bus/pci/devices/$bdf/nvme" 2>/dev/null | head -n1)
    ns=/dev/${ctrl}n1
    i=0
    while [ ! -b "$ns" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -z "$ctrl" ] || [ ! -b "$ns" ]; then
        bad "nvme-io $bdf" "no namespace block device ($ctrl)"
        continue
    fi
    dd if=/dev/urandom of=/tmp/w bs=64k count=16 2>/dev/null
    dd if=/tmp/w of="$ns" bs=64k oflag=direct 2>/dev/null
    dd if="$ns" of=/tmp/r bs=64k count=16 iflag=direct 2>/dev/null
    a=$(md5sum </tmp/w | cut -d' ' -f1)
    b=$(md5sum </tmp/r | cut -d' ' -f1)
    expect "nvme-io-while-connected $bdf" "$b $(state "$bdf")" "$a tsm0"
done

# ------------------------------------------------------------ disconnect, connect again
for e in $devices; do
    [ "$(field "$e" 6)" = cma ] || continue
    bdf=$(bdf_of "$e")
    d=/sys/bus/pci/devices/$bdf
    sid=$(grep "connect $bdf: OK" $LOG | tail -n1 | sed -n 's/.*session \(0x[0-9a-f]*\).*/\1/p')
    echo "SESSION $(field "$e" 4) $(field "$e" 5) $sid"
    disconnect "$bdf"
    expect "disconnect $bdf" "$RC $ERR" "0 "
    expect "disconnect-cleared $bdf" "$(state "$bdf")|$(cat "$d/authenticated")" "|"
    expect "ide-disabled $bdf" "$(enabled_streams "$bdf") $(secure_streams "$bdf")" "0 0"
    grep "disconnect $bdf: OK" $LOG | tail -n1 | grep -q 'IDE: stream [0-9]* disabled (device state 0); K_SET_STOP of the 6 K0 keys' &&
        ok "ide-keys-stopped $bdf" || bad "ide-keys-stopped $bdf" "$(grep "disconnect $bdf" $LOG | tail -n1)"
    grep "disconnect $bdf: OK" $LOG | tail -n1 | grep -q "session $sid ended (END_SESSION_ACK)" &&
        ok "session-ended $bdf" "$sid" || bad "session-ended $bdf" "$(grep "disconnect $bdf" $LOG | tail -n1)"
    connect "$bdf"
    expect "connect-again $bdf" "$RC $ERR $(state "$bdf")" "0  tsm0"
    sid=$(grep "connect $bdf: OK" $LOG | tail -n1 | sed -n 's/.*session \(0x[0-9a-f]*\).*/\1/p')
    echo "SESSION $(field "$e" 4) $(field "$e" 5) $sid"
    disconnect "$bdf"
    expect "disconnect-again $bdf" "$RC $ERR $(state "$bdf")" "0  "
done

# Picks the first CMA DMA-copy device for the failure paths.
dev=$first

# ------------------------------------------------------------ failure: no CMA mailbox
for e in $devices; do
    [ "$(field "$e" 6)" = no-cma ] || continue
    bdf=$(bdf_of "$e")
    connect "$bdf"
    expect "no-cma-refused $bdf" "$RC $ERR" "1 No such device or address"
    kmsg | grep -F "$bdf" | grep -q 'PCI/TSM: TSM init failure, no CMA mailbox' &&
        ok "no-cma-kernel-message $bdf" "pci_tsm_pf0_constructor: TSM init failure, no CMA mailbox" ||
        bad "no-cma-kernel-message $bdf" "$(kmsg | grep -F "$bdf" | tail -n3)"
    expect "no-cma-state $bdf" "$(state "$bdf")" ""
done

# ------------------------------------------------------------ failure: roots that do not verify
agent_stop
agent_start --root /etc/trustdev/roots/nvme-ecp384.pem --root /etc/trustdev/roots/nvme-ecp256.pem
connect "$dev"
expect wrong-root-refused "$RC $ERR" "1 Permission denied"
kmsg | grep -F "$dev" | grep 'connect failed (-13)' | tail -n1 | grep -q 'CERTIFICATE failed: verification failed' &&
    ok wrong-root-kernel-message "$(kmsg | grep -F "$dev" | grep 'connect failed (-13)' | tail -n1 | sed 's/.*trustdev_tsm: //')" ||
    bad wrong-root-kernel-message "$(kmsg | grep -F "$dev" | tail -n3)"
expect wrong-root-state "$(state "$dev")" ""
agent_stop
agent_start
connect "$dev"
expect connect-after-wrong-root "$RC $ERR $(state "$dev")" "0  tsm0"
disconnect "$dev"

# ------------------------------------------------------------ failure: a SAN naming another device
# The agent runs with its default SAN policy (enforce).
wsan=""
for e in $devices; do [ "$(field "$e" 6)" = wrong-san ] && wsan=$(bdf_of "$e"); done
if [ -z "$wsan" ]; then
    bad wrong-san-device "no device with DSN $WRONG_SAN_DSN"
else
    connect "$wsan"
    expect wrong-san-refused "$RC $ERR" "1 Permission denied"
    msg=$(kmsg | grep -F "$wsan" | grep 'connect failed (-13)' | tail -n1)
    echo "$msg" | grep -q 'CERTIFICATE failed: leaf certificate SAN .* does not match the device' &&
        ok wrong-san-kernel-message "$(echo "$msg" | sed 's/.*trustdev_tsm: //')" ||
        bad wrong-san-kernel-message "$(kmsg | grep -F "$wsan" | tail -n3)"
    expect wrong-san-state "$(state "$wsan")" ""
    agent_stop
    agent_start --san warn
    connect "$wsan"
    expect wrong-san-warn-connects "$RC $ERR $(state "$wsan")" "0  tsm0"
    grep "connect $wsan: OK" $LOG | tail -n1 | grep -q 'SAN mismatch (warned)' &&
        ok wrong-san-warned || bad wrong-san-warned "$(grep "$wsan" $LOG | tail -n2)"
    disconnect "$wsan"
    agent_stop
    agent_start
fi

# ------------------------------------------------------------ failure: agent killed mid-connect
agent_stop
agent_start --hang-after certificate
(
    connect "$dev"
    echo "$RC $ERR" >/tmp/bg.out
) &
bg=$!
i=0
while ! grep -q 'fault injection: hanging after step "certificate"' $LOG && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
grep -q 'fault injection: hanging after step "certificate"' $LOG && ok agent-mid-connect "hung after CERTIFICATE" ||
    bad agent-mid-connect "the agent never reached the step"
t0=$(cut -d' ' -f1 /proc/uptime)
agent_stop
wait $bg
t1=$(cut -d' ' -f1 /proc/uptime)
expect killed-agent-fails-connect "$(cat /tmp/bg.out)" "1 Broken pipe"
echo "TIMING killed-agent connect failed $(echo "$t0 $t1" | awk '{ printf "%.2f", $2 - $1 }') s after the kill"
kmsg | grep -F "$dev" | grep -q 'connect failed (-32): the agent (pid [0-9]*) closed /dev/trustdev-tsm before its verdict' &&
    ok killed-agent-kernel-message || bad killed-agent-kernel-message "$(kmsg | grep -F "$dev" | tail -n3)"
expect killed-agent-state "$(state "$dev")" ""

# ------------------------------------------------------------ failure: no agent
connect "$dev"
expect no-agent "$RC $ERR" "1 Transport endpoint is not connected"

# ------------------------------------------------------------ failure: hung agent, timeout
echo 3000 >/sys/module/trustdev_tsm/parameters/timeout_ms
agent_start --hang-after claim
t0=$(cut -d' ' -f1 /proc/uptime)
connect "$dev"
t1=$(cut -d' ' -f1 /proc/uptime)
expect hung-agent-times-out "$RC $ERR" "1 Connection timed out"
secs=$(echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }')
echo "$secs" | awk '{ exit !($1 >= 2.9 && $1 < 10) }' && ok timeout-bounded "$secs s for timeout_ms=3000" ||
    bad timeout-bounded "$secs s"
kmsg | grep -F "$dev" | grep -q 'connect failed (-110): the agent gave no verdict within 3000 ms' &&
    ok timeout-kernel-message || bad timeout-kernel-message "$(kmsg | grep -F "$dev" | tail -n3)"
expect timeout-state "$(state "$dev")" ""
agent_stop
echo 30000 >/sys/module/trustdev_tsm/parameters/timeout_ms
agent_start
connect "$dev"
expect connect-after-timeout "$RC $ERR $(state "$dev")" "0  tsm0"
disconnect "$dev"
expect disconnect-after-timeout "$RC $ERR $(state "$dev")" "0  "

# ------------------------------------------------------------ removal while connected
# pci_stop_and_remove_bus_device -> pci_tsm_destroy -> the TSM's disconnect;
# a rescan brings the function back with its tsm/ attributes (pci_tsm_init).
connect "$dev"
expect connect-before-remove "$RC $ERR $(state "$dev")" "0  tsm0"
n0=$(grep -c "disconnect $dev: OK" $LOG)
echo 1 >"/sys/bus/pci/devices/$dev/remove"
[ -e "/sys/bus/pci/devices/$dev" ] && bad removed "$dev still present" || ok removed "$dev"
n1=$(grep -c "disconnect $dev: OK" $LOG)
[ "$n1" -gt "$n0" ] && ok remove-disconnects "$(grep "disconnect $dev: OK" $LOG | tail -n1 | sed 's/.*exchanges through the kernel: //')" ||
    bad remove-disconnects "no disconnect request for the removed device"
echo 1 >/sys/bus/pci/rescan
i=0
while [ ! -e "/sys/bus/pci/devices/$dev/tsm/connect" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
expect rescan-tsm-attrs "$(state "$dev" 2>&1)|$(cat "/sys/bus/pci/devices/$dev/authenticated" 2>&1)" "|"
connect "$dev"
expect connect-after-rescan "$RC $ERR $(state "$dev")" "0  tsm0"

# ------------------------------------------------------------ no oops, nothing leaked
# rmmod with $dev still connected: tsm_unregister -> pci_tsm_unregister ->
# __pci_tsm_destroy -> disconnect, with no agent left to end the session.
agent_stop
if rmmod trustdev_tsm; then ok rmmod; else bad rmmod "rmmod trustdev_tsm failed"; fi
kmsg | grep -F "$dev" | grep -q 'disconnect: the agent did not end session 0x[0-9a-f]* (-107: no agent' &&
    ok unregister-disconnects "$(kmsg | grep -F "$dev" | grep 'disconnect: the agent did not' | tail -n1 | sed 's/.*trustdev_tsm: //')" ||
    bad unregister-disconnects "$(kmsg | grep -F "$dev" | tail -n3)"
[ -e /sys/class/tsm/tsm0 ] && bad tsm-class-gone "tsm0 still registered" || ok tsm-class-gone
left=""
for e in $devices; do
    bdf=$(bdf_of "$e")
    [ -e "/sys/bus/pci/devices/$bdf/tsm" ] && left="$left $bdf"
done
expect tsm-attrs-hidden "$left" ""
oops=$(kmsg | grep -E 'Oops|BUG:|WARNING:|Call Trace|general protection|KASAN|refcount_t')
expect no-oops "$oops" ""

echo "--- agent log"
cat $LOG
echo "--- kernel log (trustdev_tsm, PCI/TSM)"
kmsg | grep -E 'trustdev_tsm|PCI/TSM' | tail -n 60
exit $fail
