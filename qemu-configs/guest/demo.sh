#!/bin/sh
# The guest half of `trustdev demo`: for every trustdev device the guest
# kernel enumerated, show what the kernel saw (IDs, BARs, capabilities, DOE
# features, driver) and what it and guest programs did with it (SPDM over the
# DOE mailbox, a verified DMA copy with MSI-X, NVMe I/O).
rc=0
# Keep kernel messages off the console while we print (dmesg has them all).
echo 1 >/proc/sys/kernel/printk 2>/dev/null
found=0
echo "Guest kernel $(uname -r) on $(grep -c ^processor /proc/cpuinfo) vCPU(s)"

roots() { # KIND -> --root arguments for the exported identity roots
    for r in /etc/trustdev/roots/"$1"-*.pem; do [ -f "$r" ] && printf ' --root %s' "$r"; done
}

spdm() { # BDF KIND
    echo "--- SPDM over the device's DOE mailbox (the kernel found: $(ls /sys/bus/pci/devices/$1/doe_features | tr '\n' ' '))"
    # shellcheck disable=SC2046 # roots() prints separate arguments
    trustdev-guest spdm --bdf "$1" $(roots "$2") | grep -v '^      #' || rc=1
}

for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x7d0c ] || continue
    bdf=${d##*/}
    found=$((found + 1))
    case "$(cat "$d/device")" in
    0xd3a0)
        echo
        echo "=== DMA-copy device $bdf ==="
        trustdev-guest lspci "$bdf" || rc=1
        spdm "$bdf" dma-copy
        echo "--- driving it from guest user space through vfio-pci and the virtual IOMMU ---"
        trustdev-guest dma-copy --bdf "$bdf" --count 8 || rc=1
        drv=$(readlink "$d/driver" 2>/dev/null)
        echo "bound driver afterwards: ${drv##*/}"
        ;;
    0x4e56)
        echo
        echo "=== NVMe controller $bdf ==="
        trustdev-guest lspci "$bdf" || rc=1
        spdm "$bdf" nvme
        drv=$(readlink "$d/driver" 2>/dev/null)
        echo "--- the Linux ${drv##*/} driver ---"
        for c in /sys/class/nvme/nvme*; do
            [ "$(readlink -f "$c/device")" = "$(readlink -f "$d")" ] || continue
            echo "controller ${c##*/}: state $(cat "$c/state"), model '$(cat "$c/model" | sed 's/ *$//')', serial $(cat "$c/serial" | tr -d ' '), firmware $(cat "$c/firmware_rev" | tr -d ' ')"
            for n in "$c"/nvme*n*; do
                [ -e "$n/size" ] || continue
                echo "namespace ${n##*/}: $(($(cat "$n/size") / 2048)) MiB, $(ls /sys/block/${n##*/}/mq | wc -l) I/O queue(s)"
                dev=/dev/${n##*/}
                dd if=/dev/urandom of=/tmp/pattern bs=64k count=16 2>/dev/null
                if dd if=/tmp/pattern of="$dev" bs=64k oflag=direct 2>/dev/null &&
                    dd if="$dev" of=/tmp/back bs=64k count=16 iflag=direct 2>/dev/null &&
                    cmp -s /tmp/pattern /tmp/back; then
                    echo "wrote 1 MiB with O_DIRECT and read it back identical (md5 $(md5sum </tmp/pattern | cut -c1-12))"
                else
                    echo "FAIL: data written to $dev did not read back identical"
                    rc=1
                fi
            done
        done
        grep nvme /proc/interrupts | awk '{ s = 0; for (i = 2; i <= NF - 3; i++) s += $i; print "interrupts " $NF ": " s }' | head -8
        ;;
    *) continue ;;
    esac
    echo "--- kernel log about $bdf ---"
    dmesg | grep -F "$bdf" | sed 's/^/  /' | tail -n 8
done
echo
if [ "$found" -eq 0 ]; then
    echo "FAIL: the guest kernel found no trustdev device"
    rc=1
else
    echo "The guest kernel enumerated $found trustdev device(s)."
fi
exit $rc
