//! `trustdev-guest lspci`: PCI functions as sysfs shows them, with BARs and
//! both capability lists decoded from the `config` file.

use crate::pciconf::{self, CapWalk, Cfg};
use crate::sysfs;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

// IORESOURCE_* flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x0000_0100;
const IORESOURCE_MEM: u64 = 0x0000_0200;
const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
const IORESOURCE_READONLY: u64 = 0x0000_4000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;
const IORESOURCE_DISABLED: u64 = 0x1000_0000;
const IORESOURCE_UNSET: u64 = 0x2000_0000;

/// One line of the `resource` file with a non-zero size.
#[derive(Debug, Clone)]
pub struct Resource {
    pub index: usize,
    pub name: String,
    pub start: u64,
    pub size: u64,
    pub flags: u64,
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        if self.flags & IORESOURCE_IO != 0 {
            "io"
        } else if self.flags & IORESOURCE_MEM != 0 {
            if self.flags & IORESOURCE_MEM_64 != 0 {
                "mem64"
            } else {
                "mem32"
            }
        } else {
            "unknown"
        }
    }

    pub fn attrs(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & IORESOURCE_PREFETCH != 0 {
            v.push("prefetch");
        }
        if self.flags & IORESOURCE_READONLY != 0 {
            v.push("read-only");
        }
        if self.flags & IORESOURCE_DISABLED != 0 {
            v.push("disabled");
        }
        if self.flags & IORESOURCE_UNSET != 0 {
            v.push("unassigned");
        }
        v
    }
}

/// Parses the sysfs `resource` file.
pub fn parse_resources(text: &str) -> Vec<Resource> {
    let lines: Vec<&str> = text.lines().collect();
    // Lines: 0-5 BARs, 6 ROM, then (with CONFIG_PCI_IOV) 7-12 VF BARs, then
    // bridge windows. Non-bridges stop before the windows.
    let iov = lines.len() >= 13;
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
            .collect();
        let [start, end, flags] = nums[..] else {
            continue;
        };
        if end == 0 && start == 0 {
            continue;
        }
        let size = end.wrapping_sub(start).wrapping_add(1);
        let name = match i {
            0..=5 => format!("BAR{i}"),
            6 => "ROM".to_string(),
            7..=12 if iov => format!("VF-BAR{}", i - 7),
            _ => format!("window{}", if iov { i - 13 } else { i - 7 }),
        };
        out.push(Resource {
            index: i,
            name,
            start,
            size,
            flags,
        });
    }
    out
}

fn human_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (u, s) in UNITS {
        if n >= u && n % u == 0 {
            return format!("{}{s}", n / u);
        }
    }
    format!("{n}")
}

/// Everything `lspci` shows about one function.
#[derive(Debug)]
pub struct Function {
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
    pub class: u32,
    pub revision: u8,
    pub header_type: Option<u8>,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<String>,
    pub resources: Vec<Resource>,
    pub config_len: usize,
    pub walk: CapWalk,
    pub doe_features: Vec<String>,
}

fn read_u16(dir: &Path, attr: &str) -> Option<u16> {
    sysfs::read_hex(&dir.join(attr)).and_then(|v| u16::try_from(v).ok())
}

/// Collects one function from sysfs.
pub fn probe(bdf: &str) -> Result<Function, String> {
    let dir = sysfs::dev_dir(bdf);
    if !dir.exists() {
        return Err(format!(
            "no PCI device {bdf} ({} does not exist)",
            dir.display()
        ));
    }
    let config = fs::read(dir.join("config"))
        .map_err(|e| format!("{bdf}: cannot read {}: {e}", dir.join("config").display()))?;
    let cfg = Cfg(&config);
    let vendor = read_u16(&dir, "vendor")
        .or_else(|| cfg.u16(0))
        .unwrap_or(0xffff);
    let device = read_u16(&dir, "device")
        .or_else(|| cfg.u16(2))
        .unwrap_or(0xffff);
    let class = sysfs::read_hex(&dir.join("class"))
        .map(|c| c as u32)
        .or_else(|| cfg.u32(8).map(|v| v >> 8))
        .unwrap_or(0);
    let revision = sysfs::read_hex(&dir.join("revision"))
        .map(|r| r as u8)
        .or_else(|| cfg.u8(8))
        .unwrap_or(0);
    let resources = fs::read_to_string(dir.join("resource"))
        .map(|t| parse_resources(&t))
        .unwrap_or_default();
    let mut doe_features: Vec<String> = fs::read_dir(dir.join("doe_features"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    doe_features.sort();
    let driver_override =
        sysfs::read_str(&dir.join("driver_override")).filter(|s| !s.is_empty() && s != "(null)");
    Ok(Function {
        bdf: bdf.to_string(),
        vendor,
        device,
        subsystem_vendor: read_u16(&dir, "subsystem_vendor"),
        subsystem_device: read_u16(&dir, "subsystem_device"),
        class,
        revision,
        header_type: pciconf::header_type(cfg),
        driver: sysfs::link_name(&dir.join("driver")),
        driver_override,
        iommu_group: sysfs::link_name(&dir.join("iommu_group")),
        resources,
        config_len: config.len(),
        walk: pciconf::walk(cfg),
        doe_features,
    })
}

impl Function {
    pub fn to_json(&self) -> Value {
        let bars: Vec<Value> = self
            .resources
            .iter()
            .map(|r| {
                json!({
                    "index": r.index, "name": r.name, "start": r.start,
                    "start_hex": format!("{:#x}", r.start), "size": r.size,
                    "flags": r.flags, "type": r.kind(),
                    "prefetchable": r.flags & IORESOURCE_PREFETCH != 0,
                    "attributes": r.attrs(),
                })
            })
            .collect();
        json!({
            "bdf": self.bdf,
            "vendor": format!("{:04x}", self.vendor),
            "device": format!("{:04x}", self.device),
            "subsystem_vendor": self.subsystem_vendor.map(|v| format!("{v:04x}")),
            "subsystem_device": self.subsystem_device.map(|v| format!("{v:04x}")),
            "class": format!("{:06x}", self.class),
            "class_name": pciconf::class_name(self.class),
            "revision": self.revision,
            "header_type": self.header_type,
            "driver": self.driver,
            "driver_override": self.driver_override,
            "iommu_group": self.iommu_group,
            "pcie_type": self.walk.pcie_type.map(pciconf::pcie_type_name),
            "resources": bars,
            "config_size": self.config_len,
            "capabilities": self.walk.caps.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            "extended_capabilities":
                self.walk.ext_caps.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            "doe_features": self.doe_features,
            "warnings": self.walk.warnings,
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{} {:04x}:{:04x} {} [{:06x}] rev {:02x}\n",
            self.bdf,
            self.vendor,
            self.device,
            pciconf::class_name(self.class),
            self.class,
            self.revision
        ));
        let subsys = match (self.subsystem_vendor, self.subsystem_device) {
            (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
            _ => "-".into(),
        };
        let mut line = format!(
            "  subsystem {subsys}, driver {}",
            self.driver.as_deref().unwrap_or("(none)")
        );
        if let Some(o) = &self.driver_override {
            line.push_str(&format!(" (override {o})"));
        }
        if let Some(g) = &self.iommu_group {
            line.push_str(&format!(", iommu group {g}"));
        }
        s.push_str(&line);
        s.push('\n');
        for r in &self.resources {
            let mut attrs = r.attrs();
            attrs.insert(0, r.kind());
            s.push_str(&format!(
                "  {:<8} {:#018x} size {:#x} ({}) {}\n",
                r.name,
                r.start,
                r.size,
                human_size(r.size),
                attrs.join(" ")
            ));
        }
        s.push_str(&format!("  config space: {} bytes\n", self.config_len));
        if self.walk.caps.is_empty() {
            s.push_str("  capabilities: none\n");
        } else {
            s.push_str("  capabilities:\n");
            for c in &self.walk.caps {
                s.push_str(&format!("    [{:02x}] {:02x} {}", c.offset, c.id, c.name));
                if !c.details.is_empty() {
                    s.push_str(&format!(": {}", c.details));
                }
                s.push('\n');
            }
        }
        if !self.walk.ext_caps.is_empty() {
            s.push_str("  extended capabilities:\n");
            for c in &self.walk.ext_caps {
                s.push_str(&format!(
                    "    [{:03x}] {:04x} v{} {}",
                    c.offset,
                    c.id,
                    c.version.unwrap_or(0),
                    c.name
                ));
                if !c.details.is_empty() {
                    s.push_str(&format!(": {}", c.details));
                }
                s.push('\n');
            }
        } else if self.config_len > 256 {
            s.push_str("  extended capabilities: none\n");
        }
        if !self.doe_features.is_empty() {
            s.push_str(&format!(
                "  DOE features: {}\n",
                self.doe_features.join(" ")
            ));
        }
        for w in &self.walk.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        s
    }
}

/// Options of `trustdev-guest lspci`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON (an array, or one object when BDF is given).
    #[arg(long)]
    json: bool,
    /// Only this function ([DDDD:]BB:DD.F).
    bdf: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), String> {
    let (bdf, as_json) = (args.bdf.as_deref(), args.json);
    let bdfs = match bdf {
        Some(b) => {
            let n = sysfs::normalize_bdf(b)
                .ok_or_else(|| format!("'{b}' is not a PCI address (expected [DDDD:]BB:DD.F)"))?;
            vec![n]
        }
        None => sysfs::list_bdfs()?,
    };
    let mut funcs = Vec::new();
    let mut errors = Vec::new();
    for b in &bdfs {
        match probe(b) {
            Ok(f) => funcs.push(f),
            Err(e) => errors.push(e),
        }
    }
    if as_json {
        let v: Vec<Value> = funcs.iter().map(Function::to_json).collect();
        let out = if bdf.is_some() {
            v.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(v)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
    } else {
        if funcs.is_empty() && errors.is_empty() {
            println!("no PCI devices");
        }
        for f in &funcs {
            print!("{}", f.to_text());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources() {
        let text = "\
0x00000000fe800000 0x00000000fe800fff 0x0000000000040200
0x00000000fe801000 0x00000000fe801fff 0x0000000000040200
0x0000000fe0000000 0x0000000fe0003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000c000 0x000000000000c03f 0x0000000000040101
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";
        let r = parse_resources(text);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].kind(), "mem32");
        assert_eq!(r[0].size, 0x1000);
        assert_eq!(r[2].name, "BAR2");
        assert_eq!(r[2].kind(), "mem64");
        assert_eq!(r[2].attrs(), ["prefetch"]);
        assert_eq!(r[2].size, 0x4000);
        assert_eq!(r[3].kind(), "io");
        assert_eq!(human_size(0x4000), "16K");
        assert_eq!(human_size(0x40), "64");
    }
}
