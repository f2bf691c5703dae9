//! trustdev under another runner: virtme-ng (`vng`) boots the Debian guest
//! kernel with the arguments `trustdev qemu-args` prints for a configuration
//! that `trustdev run` serves — the recipe of docs/CONTROL.md, run as
//! written (virtme-ng 1.42 from PyPI, provisioned by
//! qemu-configs/provision-vng.sh; stock QEMU 11.1).
//!
//! vng shares the host's root file system with the guest (9p, read-only),
//! so the guest runs this build's `trustdev-guest` and reads the devices'
//! root certificates straight from the host paths. Checks: both devices
//! enumerate behind their root ports, the DMA-copy device authenticates
//! over CMA/SPDM against its root, the NVMe controller's disk reads back
//! what was written, and the daemon's control socket and trace saw it all.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Boot (TCG, vng's initramfs and 9p root), SPDM, a few I/Os.
const RUN_LIMIT: Duration = Duration::from_secs(420);

/// `qemu-configs/provision-vng.sh`: the vng wrapper it installed.
fn provision_vng() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-configs/provision-vng.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .expect("run provision-vng.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "provision-vng.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("TRUSTDEV_VNG="))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("provision-vng.sh printed no TRUSTDEV_VNG:\n{stdout}"))
}

/// A KEY of the stock toolchain's provisioned.env (provision.sh ran above).
fn provisioned(key: &str) -> String {
    let cache = std::env::var_os("TRUSTDEV_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("trustdev")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trustdev")))
        .expect("no cache directory");
    let env = std::fs::read_to_string(cache.join("provisioned.env")).expect("provisioned.env");
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("{key} not in provisioned.env"))
}

/// Waits for `path` to exist (a socket the daemon creates).
fn wait_for(path: &Path, daemon: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "trustdev run exited before creating {}",
            path.display()
        );
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the guest runs (through vng's --exec; the host's files are visible).
fn guest_script(guest_tool: &Path, identity: &Path) -> String {
    format!(
        r#"
ok() {{ echo "CHECK-OK $*"; }}
bad() {{ echo "CHECK-FAIL $1: $2"; }}
G={guest}
roots=""
for r in {identity}/*/*/root.cert.pem; do roots="$roots --root $r"; done
# vng loads only the modules its own boot needs: the nvme driver is ours.
modprobe nvme
n=0; until ls /sys/class/nvme/nvme*/nvme*n1 >/dev/null 2>&1 || [ $n -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
dc="" nv=""
for d in /sys/bus/pci/devices/*; do
    case "$(cat $d/vendor):$(cat $d/device)" in
        0x7d0c:0xd3a0) dc=${{d##*/}} ;;
    esac
done
for c in /sys/class/nvme/nvme*; do
    [ "$(cat $c/serial 2>/dev/null | tr -d ' ')" = trustdev-vng ] && nv=$(ls $c | grep -m1 -E '^nvme[0-9]+n1$')
done
echo "VNG-DEVICES dc=$dc nvme=$nv"
[ -n "$dc" ] && ok dma-copy-enumerated "$dc" || bad dma-copy-enumerated "no DMA-copy device"
[ -n "$nv" ] && ok nvme-bound "/dev/$nv" || bad nvme-bound "no NVMe disk with serial trustdev-vng"
if out=$($G spdm --bdf "$dc" $roots --json 2>&1); then ok spdm "$out"; else bad spdm "$out"; fi
echo "trustdev under virtme-ng" | dd of=/tmp/pat bs=512 conv=sync 2>/dev/null
dd if=/tmp/pat of=/dev/$nv bs=512 seek=8 count=1 oflag=direct 2>/dev/null &&
    dd if=/dev/$nv bs=512 skip=8 count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/pat &&
    ok nvme-io || bad nvme-io "write/read of /dev/$nv failed"
dmesg | grep -i -E "doe|$dc" | sed 's/^/VNG-DMESG /' | head -n 20
echo VNG-DONE
"#,
        guest = guest_tool.display(),
        identity = identity.display()
    )
}

#[test]
fn virtme_ng_boots_the_devices_of_a_config_served_by_trustdev_run() {
    if support::skip() {
        return;
    }
    let _g = support::lock();
    let vng = provision_vng();
    let dir = std::env::temp_dir().join(format!("trustdev-e2e-vng-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("devices.toml");
    std::fs::write(
        &config,
        r#"control = "ctl.sock"
trace = "trace.jsonl"

[[device]]
name = "dc"
kind = "dma-copy"
socket = "dc.sock"
identity-dir = "identity/dc"

[[device]]
name = "disk"
kind = "nvme"
socket = "disk.sock"
size = "16M"
serial = "trustdev-vng"
identity-dir = "identity/disk"
"#,
    )
    .unwrap();

    let trustdev = support::trustdev();
    let mut daemon = Command::new(&trustdev)
        .arg("run")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trustdev run");
    let daemon_out = support::Collector::start(daemon.stdout.take());
    let daemon_err = support::Collector::start(daemon.stderr.take());
    for s in ["dc.sock", "disk.sock", "ctl.sock"] {
        wait_for(&dir.join(s), &mut daemon);
    }

    let args = Command::new(&trustdev)
        .args(["qemu-args", "--memory", "1G"])
        .arg(&config)
        .output()
        .expect("trustdev qemu-args");
    assert!(args.status.success(), "{args:?}");
    let qemu_opts = String::from_utf8(args.stdout).unwrap();

    let script = dir.join("guest.sh");
    std::fs::write(
        &script,
        guest_script(&support::bins().guest, &dir.join("identity")),
    )
    .unwrap();
    let child = Command::new(&vng)
        .arg("--run")
        .arg(provisioned("TRUSTDEV_KERNEL"))
        .arg("--qemu")
        .arg(provisioned("TRUSTDEV_QEMU"))
        .arg("--busybox")
        .arg(provisioned("TRUSTDEV_BUSYBOX"))
        // No KVM here; vng's microvm has no PCIe. --verbose: the Debian
        // kernel lacks virtio_console in vng's module set, so the script's
        // output comes on the console.
        .args(["--disable-kvm", "--disable-microvm", "--verbose"])
        .args(["--memory", "1G"])
        // One argument: argparse takes a separate value starting with '-'
        // for an option.
        .arg(format!("--qemu-opts={}", qemu_opts.trim()))
        .arg("--exec")
        .arg(format!("sh {}", script.display()))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vng");
    let out = support::wait_with_timeout(child, RUN_LIMIT, "vng");
    let console = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What the daemon saw, before stopping it.
    let list = Command::new(&trustdev)
        .arg("ctl")
        .arg("-c")
        .arg(dir.join("ctl.sock"))
        .arg("list")
        .output()
        .expect("trustdev ctl list");
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let decoded = Command::new(&trustdev)
        .arg("trace")
        .arg(dir.join("trace.jsonl"))
        .output()
        .expect("trustdev trace");
    let decoded = String::from_utf8_lossy(&decoded.stdout).into_owned();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = support::wait_until(&mut daemon, Instant::now() + Duration::from_secs(20));
    let daemon_log = format!(
        "{}{}",
        String::from_utf8_lossy(&daemon_out.finish()),
        daemon_err.text()
    );

    for l in console
        .lines()
        .filter(|l| l.starts_with("CHECK") || l.starts_with("VNG-"))
    {
        eprintln!("{l}");
    }
    let dump = format!("--- vng\n{console}\n--- daemon\n{daemon_log}\n--- ctl list\n{list}");
    assert!(
        console.contains("Linux version 7.") && console.contains("VNG-DONE"),
        "the guest did not run the script:\n{dump}"
    );
    assert!(!console.contains("CHECK-FAIL"), "{dump}");
    for check in ["dma-copy-enumerated", "nvme-bound", "spdm", "nvme-io"] {
        assert!(
            console.contains(&format!("CHECK-OK {check}")),
            "{check} missing:\n{dump}"
        );
    }
    assert!(list.contains("dc") && list.contains("disk"), "{dump}");
    for msg in ["CHALLENGE_AUTH", "KEY_EXCHANGE_RSP"] {
        assert!(
            decoded.contains(msg),
            "{msg} not in the decoded trace:\n{decoded}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
