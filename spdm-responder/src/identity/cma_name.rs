//! The CMA subject-alt-name of a device's leaf certificate.
//!
//! PCIe r6.1 §6.31.3 asks the leaf certificate to name the device it belongs
//! to; Linux's CMA-SPDM validation (`pci_cma_construct_san()` in
//! drivers/pci/cma.c of Lukas Wunner's and Alistair Francis's series) builds
//! the expected name from the function's configuration space and compares it
//! byte for byte with the UTF8String of the otherName with OID 2.23.147:
//!
//! ```text
//! Vendor=%04hx:Device=%04hx:CC=%06x:REV=%02hhx       always
//! :SSVID=%04hx:SSID=%04hx                           type-0 header only
//! :%016llx                                          Device Serial Number, if non-zero
//! ```

/// What the CMA otherName of a device is made of: the values Linux reads
/// from the function's configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CmaDeviceName {
    /// Vendor ID (config 0x00).
    pub vendor: u16,
    /// Device ID (config 0x02).
    pub device: u16,
    /// Class code, 24 bits: base class, sub-class, programming interface.
    pub class_code: u32,
    /// Revision ID (config 0x08).
    pub revision: u8,
    /// (Subsystem Vendor ID, Subsystem ID) of a type-0 header; `None` for
    /// type-1 (bridge) headers, which have none.
    pub subsystem: Option<(u16, u16)>,
    /// The Device Serial Number capability's value, if the function has one.
    /// Linux reads 0 when the capability is absent, so `Some(0)` names the
    /// device exactly as `None` does.
    pub serial: Option<u64>,
}

impl CmaDeviceName {
    /// QEMU's emulated NVMe controller (`-device nvme`: 1b36:0010, class
    /// 010802, revision 2, subsystem 1af4:1100, no DSN), the device behind
    /// `trustdev spdm-responder` when QEMU forwards its SPDM over `spdm_port`.
    pub const QEMU_NVME: CmaDeviceName = CmaDeviceName {
        vendor: 0x1b36,
        device: 0x0010,
        class_code: 0x01_08_02,
        revision: 0x02,
        subsystem: Some((0x1af4, 0x1100)),
        serial: None,
    };

    /// The otherName string, byte for byte what `pci_cma_construct_san()`
    /// builds for this function.
    pub fn other_name(&self) -> String {
        let mut s = format!(
            "Vendor={:04x}:Device={:04x}:CC={:06x}:REV={:02x}",
            self.vendor,
            self.device,
            self.class_code & 0xFF_FFFF,
            self.revision
        );
        if let Some((ssvid, ssid)) = self.subsystem {
            s.push_str(&format!(":SSVID={ssvid:04x}:SSID={ssid:04x}"));
        }
        match self.serial {
            Some(dsn) if dsn != 0 => s.push_str(&format!(":{dsn:016x}")),
            _ => {}
        }
        s
    }
}

impl Default for CmaDeviceName {
    fn default() -> Self {
        Self::QEMU_NVME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_format() {
        let mut n = CmaDeviceName {
            vendor: 0x1DE5,
            device: 0xC0DE,
            class_code: 0x12_00_00,
            revision: 0xA1,
            subsystem: Some((0x1DE5, 0x0001)),
            serial: Some(0x7D0C_0000_0000_00AB),
        };
        assert_eq!(
            n.other_name(),
            "Vendor=1de5:Device=c0de:CC=120000:REV=a1:SSVID=1de5:SSID=0001:7d0c0000000000ab"
        );
        n.serial = Some(0);
        assert_eq!(
            n.other_name(),
            "Vendor=1de5:Device=c0de:CC=120000:REV=a1:SSVID=1de5:SSID=0001"
        );
        n.subsystem = None;
        n.serial = Some(1);
        assert_eq!(
            n.other_name(),
            "Vendor=1de5:Device=c0de:CC=120000:REV=a1:0000000000000001"
        );
        // The longest name fits the kernel's CMA_NAME_MAX (its sizeof, which
        // counts the NUL).
        let max = "Vendor=1234:Device=1234:CC=123456:REV=12:SSVID=1234:SSID=1234:1234567890123456";
        n = CmaDeviceName {
            vendor: 0xffff,
            device: 0xffff,
            class_code: 0xffff_ffff,
            revision: 0xff,
            subsystem: Some((0xffff, 0xffff)),
            serial: Some(u64::MAX),
        };
        assert_eq!(n.other_name().len(), max.len());
    }
}
