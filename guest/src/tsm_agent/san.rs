//! The CMA Subject Alternative Name a device's leaf certificate must carry,
//! as the kernel's CMA-SPDM code builds it (pci_cma_construct_san in the
//! CMA series): otherName 2.23.147 =
//! `Vendor=%04hx:Device=%04hx:CC=%06x:REV=%02hhx`, then
//! `:SSVID=%04hx:SSID=%04hx` for a type-0 header, then `:%016llx` with the
//! Device Serial Number when the function has a DSN capability.

use crate::pciconf::Cfg;
use crate::sysfs;
use spdm_responder::identity::CmaDeviceName;

/// What the agent does when the SAN does not match the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanPolicy {
    /// Fail connect (what the kernel's CMA code does).
    Enforce,
    /// Report it in the verdict and the log, connect anyway.
    Warn,
    /// Do not check.
    Off,
}

/// Parses `enforce`, `warn` or `off`.
pub fn parse_policy(s: &str) -> Result<SanPolicy, String> {
    match s {
        "enforce" => Ok(SanPolicy::Enforce),
        "warn" => Ok(SanPolicy::Warn),
        "off" => Ok(SanPolicy::Off),
        other => Err(format!("unknown SAN policy {other:?} (enforce, warn, off)")),
    }
}

const PCI_EXT_CAP_ID_DSN: u16 = 0x03;

/// The Device Serial Number from extended configuration space, if any.
fn dsn(cfg: Cfg) -> Option<u64> {
    let mut off = 0x100usize;
    for _ in 0..512 {
        let hdr = cfg.u32(off)?;
        if hdr == 0 || hdr == 0xffff_ffff {
            return None;
        }
        if (hdr & 0xffff) as u16 == PCI_EXT_CAP_ID_DSN {
            let lo = cfg.u32(off + 4)?;
            let hi = cfg.u32(off + 8)?;
            return Some((u64::from(hi) << 32) | u64::from(lo));
        }
        off = (hdr >> 20) as usize;
        if off < 0x100 {
            return None;
        }
    }
    None
}

/// The expected SAN of the function with configuration space `cfg`
/// (spdm_responder's [`CmaDeviceName`] formats it: one home for the
/// kernel's format, here and in the device identities).
pub fn expected(cfg: Cfg) -> Option<String> {
    let type0 = cfg.u8(0x0e)? & 0x7f == 0;
    let name = CmaDeviceName {
        vendor: cfg.u16(0)?,
        device: cfg.u16(2)?,
        class_code: cfg.u32(8)? >> 8,
        revision: cfg.u8(8)?,
        subsystem: if type0 {
            Some((cfg.u16(0x2c)?, cfg.u16(0x2e)?))
        } else {
            None
        },
        serial: dsn(cfg),
    };
    Some(name.other_name())
}

/// The expected SAN of `bdf`, read from sysfs `config`.
pub fn expected_for(bdf: &str) -> Result<String, String> {
    let path = sysfs::dev_dir(bdf).join("config");
    let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    expected(Cfg(&data)).ok_or_else(|| format!("{}: short configuration space", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_format() {
        let mut c = vec![0u8; 0x200];
        c[0..2].copy_from_slice(&0x7d0cu16.to_le_bytes());
        c[2..4].copy_from_slice(&0xd3a0u16.to_le_bytes());
        c[8] = 1;
        c[9..12].copy_from_slice(&[0x00, 0x00, 0x12]);
        c[0x2c..0x2e].copy_from_slice(&0x7d0cu16.to_le_bytes());
        c[0x2e..0x30].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            expected(Cfg(&c)).unwrap(),
            "Vendor=7d0c:Device=d3a0:CC=120000:REV=01:SSVID=7d0c:SSID=0001"
        );
        // DSN capability at 0x100.
        c[0x100..0x104].copy_from_slice(&0x0001_0003u32.to_le_bytes());
        c[0x104..0x108].copy_from_slice(&0x89ab_cdefu32.to_le_bytes());
        c[0x108..0x10c].copy_from_slice(&0x0123_4567u32.to_le_bytes());
        assert!(expected(Cfg(&c)).unwrap().ends_with(":0123456789abcdef"));
        assert!(parse_policy("bogus").is_err());
    }
}
