//! Guest initramfs: a cached base archive (busybox, kernel modules, /init)
//! plus a small per-run overlay (guest programs and the guest script),
//! concatenated. Both are built by `qemu-configs/mkinitramfs.sh`.

use super::toolchain::{cache_dir, qemu_configs_dir, Toolchain};
use super::VmError;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules every trustdev guest gets (dependencies are added by the builder).
pub const DEFAULT_MODULES: &[&str] = &[
    "vfio-pci",
    "vfio_iommu_type1",
    "uio_pci_generic",
    "qemu_fw_cfg",
    "nvme",
];

fn run(script: &Path, args: &[String]) -> Result<(), VmError> {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| VmError::Initramfs(format!("{}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(VmError::Initramfs(format!(
            "{} {} failed: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn file_hash(p: &Path, h: &mut DefaultHasher) {
    if let Ok(b) = std::fs::read(p) {
        b.hash(h);
    }
}

/// Builds (or reuses) the base archive for `modules`.
pub fn base(tc: &Toolchain, modules: &[String]) -> Result<PathBuf, VmError> {
    let dir = qemu_configs_dir();
    let mut h = DefaultHasher::new();
    modules.hash(&mut h);
    tc.kernel_release.hash(&mut h);
    file_hash(&dir.join("mkinitramfs.sh"), &mut h);
    file_hash(&dir.join("guest-init.sh"), &mut h);
    let out_dir = cache_dir().join("initramfs");
    std::fs::create_dir_all(&out_dir).map_err(|e| VmError::Initramfs(e.to_string()))?;
    let out = out_dir.join(format!("base-{:016x}.cpio.gz", h.finish()));
    if out.exists() {
        return Ok(out);
    }
    let args = vec![
        "--quiet".into(),
        "--out".into(),
        out.display().to_string(),
        "--modules".into(),
        modules.join(" "),
        "--env".into(),
        tc.env_file.display().to_string(),
    ];
    run(&dir.join("mkinitramfs.sh"), &args)?;
    Ok(out)
}

/// Builds the overlay (guest programs, extra files, `/test.sh`) and the final initrd
/// `base + overlay` in `work`.
pub fn assemble(
    tc: &Toolchain,
    base: &Path,
    bins: &[PathBuf],
    files: &[(PathBuf, String)],
    script: Option<&Path>,
    work: &Path,
) -> Result<PathBuf, VmError> {
    let overlay = work.join("overlay.cpio.gz");
    let mut args: Vec<String> = vec![
        "--quiet".into(),
        "--overlay".into(),
        "--out".into(),
        overlay.display().to_string(),
        "--env".into(),
        tc.env_file.display().to_string(),
    ];
    for b in bins {
        args.push("--bin".into());
        args.push(b.display().to_string());
    }
    for (src, dest) in files {
        args.push("--file".into());
        args.push(format!("{}:{dest}", src.display()));
    }
    if let Some(s) = script {
        args.push("--script".into());
        args.push(s.display().to_string());
    }
    run(&qemu_configs_dir().join("mkinitramfs.sh"), &args)?;
    let initrd = work.join("initrd.cpio.gz");
    let mut data = std::fs::read(base).map_err(|e| VmError::Initramfs(e.to_string()))?;
    data.extend(std::fs::read(&overlay).map_err(|e| VmError::Initramfs(e.to_string()))?);
    std::fs::write(&initrd, data).map_err(|e| VmError::Initramfs(e.to_string()))?;
    Ok(initrd)
}
