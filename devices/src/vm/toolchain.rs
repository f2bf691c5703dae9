//! The provisioned guest toolchain (QEMU 11.1, the Debian guest kernel,
//! busybox), as described by `qemu-configs/provision.sh`'s env file, and the
//! patched QEMU of `qemu-configs/provision-qemu-patched.sh`.

use super::{QemuBuild, VmError};
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
    /// QEMU version (what `-version` prints, e.g. 11.1.3).
    pub qemu_version: String,
    /// For the patched QEMU: its source version and patch series hash.
    pub qemu_patches: Option<String>,
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

/// Reads a KEY=VALUE env file; the returned lookup fails with a message
/// naming the file and the missing key.
fn env_reader(path: &Path) -> Result<impl Fn(&str) -> Result<String, VmError>, VmError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| VmError::NotProvisioned(format!("{}: {e}", path.display())))?;
    let env = parse_env(&text);
    let path = path.to_path_buf();
    Ok(move |k: &str| {
        env.get(k)
            .cloned()
            .ok_or_else(|| VmError::NotProvisioned(format!("{} has no {k}", path.display())))
    })
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
        let get = env_reader(&env_file)?;
        let tc = Toolchain {
            qemu: get("TRUSTDEV_QEMU")?.into(),
            kernel: get("TRUSTDEV_KERNEL")?.into(),
            kernel_release: get("TRUSTDEV_KERNEL_RELEASE")?,
            qemu_version: get("TRUSTDEV_QEMU_UPSTREAM_VERSION")?,
            qemu_patches: None,
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

    /// This toolchain with the QEMU `build` asks for: the stock one as
    /// provisioned, or the patched one, which is built first when the cache
    /// has no build of the current source version and patch series (about
    /// 20 minutes once on 2 cores; see provision-qemu-patched.sh).
    pub fn with_qemu(mut self, build: QemuBuild) -> Result<Toolchain, VmError> {
        if build == QemuBuild::Stock {
            return Ok(self);
        }
        if let Some(qemu) = std::env::var_os("TRUSTDEV_QEMU_PATCHED") {
            // A QEMU the user built with the series (their own tree).
            self.qemu = qemu.into();
            self.qemu_version = qemu_version_of(&self.qemu)?;
            self.qemu_patches = Some("TRUSTDEV_QEMU_PATCHED".into());
            return Ok(self);
        }
        let env_file = run_provision_patched()?;
        let get = env_reader(&env_file)?;
        self.qemu = get("TRUSTDEV_QEMU_PATCHED")?.into();
        self.qemu_version = get("TRUSTDEV_QEMU_PATCHED_VERSION")?;
        let series = get("TRUSTDEV_QEMU_PATCHED_SERIES")?;
        self.qemu_patches = Some(format!(
            "{} + trustdev patch series {}",
            get("TRUSTDEV_QEMU_PATCHED_SOURCE")?,
            &series[..series.len().min(12)]
        ));
        if !self.qemu.exists() {
            return Err(VmError::NotProvisioned(format!(
                "{} is missing (re-run provision-qemu-patched.sh)",
                self.qemu.display()
            )));
        }
        Ok(self)
    }

    /// The QEMU version's major number (0 if unparsable).
    pub fn qemu_major(&self) -> u32 {
        qemu_major(&self.qemu_version)
    }
}

/// What `QEMU -version` says the version is.
fn qemu_version_of(qemu: &Path) -> Result<String, VmError> {
    let out = Command::new(qemu)
        .arg("-version")
        .output()
        .map_err(|e| VmError::NotProvisioned(format!("{}: {e}", qemu.display())))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("QEMU emulator version "))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| {
            VmError::NotProvisioned(format!("{} -version printed no version", qemu.display()))
        })
}

/// The major number of a QEMU version string such as `10.2.2` (0 if none).
pub fn qemu_major(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
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

/// Runs `qemu-configs/provision-qemu-patched.sh` (its progress on our
/// stderr) and returns the env file it names on its last stdout line.
pub fn run_provision_patched() -> Result<PathBuf, VmError> {
    const KEY: &str = "TRUSTDEV_QEMU_PATCHED_ENV=";
    let script = qemu_configs_dir().join("provision-qemu-patched.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| VmError::NotProvisioned(format!("{}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(VmError::NotProvisioned(format!(
            "{} failed ({})",
            script.display(),
            out.status
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(KEY).map(PathBuf::from))
        .ok_or_else(|| {
            VmError::NotProvisioned(format!("{} printed no {KEY} line", script.display()))
        })
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

    #[test]
    fn qemu_major_numbers() {
        assert_eq!(qemu_major("11.1.3"), 11);
        assert_eq!(qemu_major("10.2.2"), 10);
        assert_eq!(qemu_major("garbage"), 0);
    }
}
