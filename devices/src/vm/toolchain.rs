//! The provisioned guest toolchain (QEMU 11.1, the Debian guest kernel,
//! busybox), as described by `qemu-configs/provision.sh`'s env file.

use super::VmError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths and versions of the provisioned guest toolchain.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// QEMU wrapper script (runs the provisioned QEMU with its own loader).
    pub qemu: PathBuf,
    /// Guest kernel image.
    pub kernel: PathBuf,
    /// Kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// QEMU version.
    pub qemu_version: String,
    /// Kernel package version.
    pub kernel_version: String,
    /// The env file this came from.
    pub env_file: PathBuf,
}

/// The `qemu-configs` directory: `$TRUSTDEV_QEMU_CONFIGS`, else the one in
/// the source tree this binary was built from.
pub fn qemu_configs_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRUSTDEV_QEMU_CONFIGS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-configs")
}

/// The cache directory provision.sh fills.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRUSTDEV_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("trustdev")
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("export ").unwrap_or(l);
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            Some((
                k.trim().to_string(),
                v.trim().trim_matches('\'').trim_matches('"').to_string(),
            ))
        })
        .collect()
}

impl Toolchain {
    /// Loads the toolchain; with `provision`, runs provision.sh first when it
    /// is missing (provision.sh itself is idempotent and fast when warm).
    pub fn load(provision: bool) -> Result<Toolchain, VmError> {
        let env_file = cache_dir().join("provisioned.env");
        if !env_file.exists() {
            if !provision {
                return Err(VmError::NotProvisioned(format!(
                    "{} is missing: run {}/provision.sh (or `trustdev demo`, which provisions)",
                    env_file.display(),
                    qemu_configs_dir().display()
                )));
            }
            run_provision()?;
        }
        let text = std::fs::read_to_string(&env_file)
            .map_err(|e| VmError::NotProvisioned(format!("{}: {e}", env_file.display())))?;
        let env = parse_env(&text);
        let get = |k: &str| {
            env.get(k).cloned().ok_or_else(|| {
                VmError::NotProvisioned(format!("{} has no {k}", env_file.display()))
            })
        };
        let tc = Toolchain {
            qemu: get("TRUSTDEV_QEMU")?.into(),
            kernel: get("TRUSTDEV_KERNEL")?.into(),
            kernel_release: get("TRUSTDEV_KERNEL_RELEASE")?,
            qemu_version: get("TRUSTDEV_QEMU_UPSTREAM_VERSION")?,
            kernel_version: get("TRUSTDEV_KERNEL_PKG_VERSION")?,
            env_file,
        };
        for p in [&tc.qemu, &tc.kernel] {
            if !p.exists() {
                return Err(VmError::NotProvisioned(format!(
                    "{} is missing (re-run provision.sh)",
                    p.display()
                )));
            }
        }
        Ok(tc)
    }
}

/// Runs `qemu-configs/provision.sh`, streaming its output.
pub fn run_provision() -> Result<(), VmError> {
    let script = qemu_configs_dir().join("provision.sh");
    eprintln!(
        "trustdev: provisioning QEMU and the guest kernel ({})",
        script.display()
    );
    let st = Command::new("bash")
        .arg(&script)
        .status()
        .map_err(|e| VmError::NotProvisioned(format!("{}: {e}", script.display())))?;
    if !st.success() {
        return Err(VmError::NotProvisioned(format!(
            "{} failed ({st})",
            script.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_parsing() {
        let e = parse_env("# c\nexport A=1\nB='x y'\n\nC=\"z\"\n");
        assert_eq!(e["A"], "1");
        assert_eq!(e["B"], "x y");
        assert_eq!(e["C"], "z");
    }
}
