//! Small helpers for /sys/bus/pci: BDF names, hex attribute files, links,
//! and a function's configuration space through its `config` file.

use spdm_responder::transport::doe::ConfigAccess;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the kernel lists PCI functions.
pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Path of a function's sysfs directory.
pub fn dev_dir(bdf: &str) -> PathBuf {
    Path::new(PCI_DEVICES).join(bdf)
}

/// Normalises a BDF: `1:0.0`, `01:00.0` and `0000:01:00.0` all become
/// `0000:01:00.0`. Returns `None` for anything that is not a BDF.
pub fn normalize_bdf(s: &str) -> Option<String> {
    let s = s.trim();
    let (rest, func) = s.rsplit_once('.')?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, dev) = match parts.as_slice() {
        [b, d] => ("0", *b, *d),
        [dom, b, d] => (*dom, *b, *d),
        _ => return None,
    };
    let hex = |v: &str, max: u32| -> Option<u32> {
        if v.is_empty() || v.len() > 8 {
            return None;
        }
        u32::from_str_radix(v, 16).ok().filter(|&n| n <= max)
    };
    let domain = hex(domain, 0xffff_ffff)?;
    let bus = hex(bus, 0xff)?;
    let dev = hex(dev, 0x1f)?;
    let func = hex(func, 0x7)?;
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// Reads a sysfs attribute as a trimmed string.
pub fn read_str(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Reads a sysfs attribute holding one hex number (`0x7d0c`).
pub fn read_hex(path: &Path) -> Option<u64> {
    let s = read_str(path)?;
    let s = s.strip_prefix("0x").unwrap_or(&s);
    u64::from_str_radix(s, 16).ok()
}

/// Last component of a symlink's target (`driver` -> `vfio-pci`).
pub fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// All PCI functions known to sysfs, sorted by BDF.
pub fn list_bdfs() -> Result<Vec<String>, String> {
    let rd = fs::read_dir(PCI_DEVICES).map_err(|e| format!("cannot list {PCI_DEVICES}: {e}"))?;
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| normalize_bdf(n).as_deref() == Some(n.as_str()))
        .collect();
    v.sort();
    Ok(v)
}

/// Vendor and device ID of a function, from sysfs.
pub fn ids(bdf: &str) -> Option<(u16, u16)> {
    let d = dev_dir(bdf);
    let v = read_hex(&d.join("vendor"))?;
    let dv = read_hex(&d.join("device"))?;
    Some((u16::try_from(v).ok()?, u16::try_from(dv).ok()?))
}

/// Writes `value` to a sysfs attribute, with the attribute named in the error.
pub fn write_attr(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing '{value}' to {}: {e}", path.display()))
}

/// A function's configuration space through its sysfs `config` file, read
/// and written a dword at a time (root may access all 4 KiB of a PCIe
/// function; QEMU forwards every access to the device's server).
pub struct ConfigFile {
    file: File,
    bdf: String,
}

impl ConfigFile {
    /// Opens `bdf`'s `config` for reading and writing.
    pub fn open(bdf: &str) -> Result<ConfigFile, String> {
        let path = dev_dir(bdf).join("config");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e} (root needed)", path.display()))?;
        Ok(ConfigFile {
            file,
            bdf: bdf.to_string(),
        })
    }
}

impl ConfigAccess for ConfigFile {
    fn cfg_read32(&mut self, offset: u16) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.file.read_exact_at(&mut b, u64::from(offset))?;
        Ok(u32::from_le_bytes(b))
    }
    fn cfg_write32(&mut self, offset: u16, value: u32) -> io::Result<()> {
        self.file
            .write_all_at(&value.to_le_bytes(), u64::from(offset))
    }
    fn name(&self) -> String {
        self.bdf.clone()
    }
}

/// Parses `VVVV:DDDD` (hex, optional `0x` prefixes).
pub fn parse_id_pair(s: &str) -> Option<(u16, u16)> {
    let (v, d) = s.trim().split_once(':')?;
    let p = |x: &str| {
        let x = x.trim();
        let x = x
            .strip_prefix("0x")
            .or_else(|| x.strip_prefix("0X"))
            .unwrap_or(x);
        if x.is_empty() || x.len() > 4 {
            return None;
        }
        u16::from_str_radix(x, 16).ok()
    };
    Some((p(v)?, p(d)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_forms() {
        assert_eq!(normalize_bdf("01:00.0").as_deref(), Some("0000:01:00.0"));
        assert_eq!(normalize_bdf("0:5.0").as_deref(), Some("0000:00:05.0"));
        assert_eq!(
            normalize_bdf("0000:00:1f.3").as_deref(),
            Some("0000:00:1f.3")
        );
        assert_eq!(normalize_bdf("00:20.0"), None);
        assert_eq!(normalize_bdf("00:00.8"), None);
        assert_eq!(normalize_bdf("garbage"), None);
        assert_eq!(normalize_bdf("1:2:3:4.0"), None);
    }

    #[test]
    fn id_pairs() {
        assert_eq!(parse_id_pair("7d0c:d3a0"), Some((0x7d0c, 0xd3a0)));
        assert_eq!(parse_id_pair("0x1b36:0x0010"), Some((0x1b36, 0x10)));
        assert_eq!(parse_id_pair("7d0c"), None);
        assert_eq!(parse_id_pair("12345:1"), None);
    }
}
