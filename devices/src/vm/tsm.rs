//! `trustdev vm --tsm`: the test link TSM module (guest/kmod) built for the
//! guest kernel by `qemu-configs/provision-kmod.sh`, carried in the
//! initramfs, loaded by the guest's /init, which also starts
//! `trustdev-guest tsm-agent` (log /run/tsm-agent.log, pid /run/tsm-agent.pid).

use super::toolchain::{qemu_configs_dir, Toolchain};
use super::VmError;
use std::path::PathBuf;
use std::process::Command;

/// Where the module sits in the guest, below /lib/modules/<release>.
pub const GUEST_KO: &str = "extra/trustdev_tsm.ko";

/// Kernel command-line word that makes the guest's /init load the module
/// and start the agent.
pub const CMDLINE: &str = "trustdev.tsm=1";

/// The built module.
#[derive(Clone, Debug)]
pub struct TsmModule {
    /// The .ko on the host.
    pub ko: PathBuf,
    /// The kernel release it was built for (its vermagic).
    pub release: String,
}

impl TsmModule {
    /// (host path, guest path) for the initramfs.
    pub fn initramfs_file(&self) -> (PathBuf, String) {
        (
            self.ko.clone(),
            format!("/lib/modules/{}/{GUEST_KO}", self.release),
        )
    }
}

fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// Builds (or finds cached) trustdev_tsm.ko for the guest kernel: Debian's
/// headers matching the provisioned kernel, or `$TRUSTDEV_KDIR` when a
/// custom kernel is booted (which then is required).
pub fn build(tc: &Toolchain, custom_kernel: bool) -> Result<TsmModule, VmError> {
    let kdir = std::env::var_os("TRUSTDEV_KDIR");
    if custom_kernel && kdir.is_none() {
        return Err(VmError::Initramfs(
            "--tsm with --kernel: set TRUSTDEV_KDIR to that kernel's build tree, so the module is built against it".into(),
        ));
    }
    let script = qemu_configs_dir().join("provision-kmod.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--only", "tsm", "--quiet"])
        .output()
        .map_err(|e| VmError::Initramfs(format!("{}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(VmError::Initramfs(format!(
            "building the TSM module failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (Some(ko), Some(release)) = (
        value(&text, "TRUSTDEV_TSM_KO"),
        value(&text, "TRUSTDEV_KMOD_RELEASE"),
    ) else {
        return Err(VmError::Initramfs(format!(
            "{} printed no module path:\n{text}",
            script.display()
        )));
    };
    if kdir.is_none() && release != tc.kernel_release {
        return Err(VmError::Initramfs(format!(
            "the TSM module was built for {release}, the guest kernel is {}",
            tc.kernel_release
        )));
    }
    Ok(TsmModule {
        ko: PathBuf::from(ko),
        release: release.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_output() {
        let out = "TRUSTDEV_KMOD_KDIR=/k\nTRUSTDEV_KMOD_RELEASE=7.3.4+deb13-amd64\nTRUSTDEV_TSM_KO=/c/t.ko\n";
        assert_eq!(value(out, "TRUSTDEV_TSM_KO"), Some("/c/t.ko"));
        assert_eq!(
            value(out, "TRUSTDEV_KMOD_RELEASE"),
            Some("7.3.4+deb13-amd64")
        );
        assert_eq!(value(out, "TRUSTDEV_KMOD"), None);
        let m = TsmModule {
            ko: "/c/t.ko".into(),
            release: "7.3.4+deb13-amd64".into(),
        };
        assert_eq!(
            m.initramfs_file().1,
            "/lib/modules/7.3.4+deb13-amd64/extra/trustdev_tsm.ko"
        );
    }
}
