#!/bin/sh
# guest-init.sh - default /init of the trustdev test initramfs (busybox ash,
# PID 1). Installed by mkinitramfs.sh unless --init names another file.
#
#  1. mounts proc, sys, devtmpfs (+ devpts, tmpfs /tmp /run, debugfs);
#  2. insmods the modules listed in /lib/modules/$(uname -r)/load.list, in
#     that (dependency) order; module parameters come from the kernel command
#     line in modprobe style: "vfio_pci.ids=1b36:0010" (- and _ are equal);
#  3. runs ONE guest script, the first of:
#       - trustdev.script=/path      (kernel command line, a path in the guest)
#       - fw_cfg file opt/trustdev/test.sh (QEMU: -fw_cfg name=opt/trustdev/test.sh,file=HOSTFILE)
#       - /test.sh                   (e.g. from an appended per-test cpio)
#     and prints "TRUSTDEV-EXIT=<status>" when it ends;
#  4. with trustdev.shell=1 starts an interactive shell on the console;
#  5. powers off (poweroff -f: QEMU exits; with -no-reboot a panic exits too).
#
# trustdev.tsm=1 (set by `trustdev vm --tsm`): after the modules, insmod
# /lib/modules/$KVER/extra/trustdev_tsm.ko (parameters as above, e.g.
# trustdev_tsm.timeout_ms=5000) and start `trustdev-guest tsm-agent` in the
# background (log /run/tsm-agent.log, pid /run/tsm-agent.pid), waiting until
# it is attached.
#
# Other command-line switches: trustdev.noload=1 (load no modules),
# trustdev.quiet=1 (no init progress lines), trustdev.debugexit=PORT: after
# the script, write its status byte to I/O port PORT (QEMU
# -device isa-debug-exit,iobase=0xf4,iosize=0x04 + trustdev.debugexit=0xf4):
# QEMU then exits with (status << 1) | 1 instead of powering off with 0.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM="${TERM:-vt100}"
umask 022

mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
ip link set lo up 2>/dev/null || true

CMDLINE=$(cat /proc/cmdline)
QUIET=0 NOLOAD=0 SHELL_AFTER=0 SCRIPT='' DEBUGEXIT='' RC='' TSM=0
for arg in $CMDLINE; do
    case $arg in
        trustdev.script=*) SCRIPT=${arg#*=} ;;
        trustdev.shell=1) SHELL_AFTER=1 ;;
        trustdev.noload=1) NOLOAD=1 ;;
        trustdev.quiet=1) QUIET=1 ;;
        trustdev.debugexit=*) DEBUGEXIT=${arg#*=} ;;
        trustdev.tsm=1) TSM=1 ;;
    esac
done

say() { [ "$QUIET" = 1 ] || echo "trustdev-init: $*"; }

KVER=$(uname -r)
MODDIR=/lib/modules/$KVER
say "kernel $KVER, cmdline: $CMDLINE"

# Module parameters from the command line: "<module>.<param>=<value>" with
# the module name compared after turning '-' into '_'.
modparams() {
    want=$(echo "$1" | tr - _)
    for arg in $CMDLINE; do
        case $arg in
            *.*=*)
                mod=$(echo "${arg%%.*}" | tr - _)
                [ "$mod" = "$want" ] && echo "${arg#*.}"
                ;;
        esac
    done
}

LOAD_FAILED=0
if [ "$NOLOAD" != 1 ] && [ -f "$MODDIR/load.list" ]; then
    while read -r rel; do
        [ -n "$rel" ] || continue
        name=${rel##*/}
        name=${name%.ko}
        # shellcheck disable=SC2046 # parameters are whitespace separated on purpose
        if insmod "$MODDIR/$rel" $(modparams "$name"); then
            say "loaded $name $(modparams "$name" | tr '\n' ' ')"
        else
            echo "trustdev-init: FAILED to load $name" >&2
            LOAD_FAILED=1
        fi
    done <"$MODDIR/load.list"
fi

# The test link TSM and its agent.
if [ "$TSM" = 1 ]; then
    # shellcheck disable=SC2046 # parameters are whitespace separated on purpose
    if insmod "$MODDIR/extra/trustdev_tsm.ko" $(modparams trustdev_tsm); then
        say "loaded trustdev_tsm $(modparams trustdev_tsm | tr '\n' ' ')"
        trustdev-guest tsm-agent >/run/tsm-agent.log 2>&1 &
        echo $! >/run/tsm-agent.pid
        i=0
        while ! grep -q '^tsm-agent: attached' /run/tsm-agent.log 2>/dev/null; do
            i=$((i + 1))
            if [ $i -gt 100 ] || ! kill -0 "$(cat /run/tsm-agent.pid)" 2>/dev/null; then
                echo "trustdev-init: FAILED to start tsm-agent:" >&2
                cat /run/tsm-agent.log >&2
                LOAD_FAILED=1
                break
            fi
            sleep 0.1
        done
        say "tsm-agent pid $(cat /run/tsm-agent.pid) (log /run/tsm-agent.log)"
    else
        echo "trustdev-init: FAILED to load trustdev_tsm" >&2
        LOAD_FAILED=1
    fi
fi

# Pick the guest script.
FWCFG=/sys/firmware/qemu_fw_cfg/by_name/opt/trustdev/test.sh/raw
if [ -z "$SCRIPT" ] && [ -r "$FWCFG" ]; then
    cat "$FWCFG" >/run/fw_cfg-test.sh
    SCRIPT=/run/fw_cfg-test.sh
fi
[ -n "$SCRIPT" ] || { [ -f /test.sh ] && SCRIPT=/test.sh; }

if [ -n "$SCRIPT" ]; then
    if [ -f "$SCRIPT" ]; then
        say "running $SCRIPT"
        echo "TRUSTDEV-BEGIN"
        # An executable (script with #! or program) runs as is, anything else via sh.
        if [ -x "$SCRIPT" ]; then
            TRUSTDEV_MODULES_FAILED=$LOAD_FAILED "$SCRIPT"
        else
            TRUSTDEV_MODULES_FAILED=$LOAD_FAILED sh "$SCRIPT"
        fi
        RC=$?
    else
        echo "trustdev-init: script $SCRIPT not found" >&2
        RC=127
    fi
    echo "TRUSTDEV-EXIT=$RC"
else
    say "no guest script (trustdev.script=, fw_cfg opt/trustdev/test.sh, /test.sh)"
fi

if [ "$SHELL_AFTER" = 1 ]; then
    say "interactive shell; exit it to power off"
    setsid cttyhack sh -l
fi

sync
if [ -n "$DEBUGEXIT" ] && [ -n "$RC" ]; then
    # shellcheck disable=SC2059 # the format is the octal escape of the status byte
    printf "\\$(printf '%03o' "$((RC & 255))")" |
        dd of=/dev/port bs=1 seek="$((DEBUGEXIT))" count=1 2>/dev/null
fi
say "powering off"
poweroff -f
# Not reached; if it were, PID 1 exiting panics and -no-reboot ends QEMU.
sleep 5
