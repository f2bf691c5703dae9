//! Parsing of a PCI function's configuration space (the sysfs `config`
//! file): header fields and the standard and extended capability lists.
//!
//! Everything here works on a byte slice of whatever length the kernel gave
//! us (64 bytes for non-root, 256 for conventional PCI, 4096 for PCIe with
//! extended config space); every access is bounds-checked and every walk has
//! a loop limit, alignment and cycle checks.

use serde_json::{json, Map, Value};

/// Config space as read from sysfs.
#[derive(Clone, Copy)]
pub struct Cfg<'a>(pub &'a [u8]);

impl Cfg<'_> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn u8(&self, off: usize) -> Option<u8> {
        self.0.get(off).copied()
    }

    pub fn u16(&self, off: usize) -> Option<u16> {
        let b = self.0.get(off..off.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&self, off: usize) -> Option<u32> {
        let b = self.0.get(off..off.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// One capability found in the list.
#[derive(Debug, Clone)]
pub struct CapInfo {
    /// Offset in config space.
    pub offset: u16,
    /// Capability ID (8-bit for standard, 16-bit for extended).
    pub id: u16,
    /// Capability version (extended capabilities only).
    pub version: Option<u8>,
    /// Short name (`MSI-X`, `DSN`, ...).
    pub name: &'static str,
    /// Human-readable details (may be empty).
    pub details: String,
    /// The same details as JSON fields.
    pub fields: Map<String, Value>,
}

impl CapInfo {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("offset".into(), json!(self.offset));
        m.insert("id".into(), json!(self.id));
        if let Some(v) = self.version {
            m.insert("version".into(), json!(v));
        }
        m.insert("name".into(), json!(self.name));
        if !self.details.is_empty() {
            m.insert("details".into(), json!(self.details));
        }
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// Result of walking both capability lists.
#[derive(Debug, Default)]
pub struct CapWalk {
    pub caps: Vec<CapInfo>,
    pub ext_caps: Vec<CapInfo>,
    /// Problems found while walking (loops, bad pointers, truncation).
    pub warnings: Vec<String>,
    /// PCIe device/port type, if there is a PCIe capability.
    pub pcie_type: Option<u8>,
}

/// Accumulates details in both human and JSON form.
struct Details {
    parts: Vec<String>,
    fields: Map<String, Value>,
}

impl Details {
    fn new() -> Self {
        Details {
            parts: Vec::new(),
            fields: Map::new(),
        }
    }

    /// A JSON field plus a human fragment.
    fn add(&mut self, key: &str, value: Value, human: impl Into<String>) {
        self.fields.insert(key.into(), value);
        let h = human.into();
        if !h.is_empty() {
            self.parts.push(h);
        }
    }

    /// A JSON field only.
    fn field(&mut self, key: &str, value: Value) {
        self.fields.insert(key.into(), value);
    }

    /// A human fragment only.
    fn text(&mut self, human: impl Into<String>) {
        self.parts.push(human.into());
    }

    fn finish(self) -> (String, Map<String, Value>) {
        (self.parts.join(", "), self.fields)
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn hex32(v: u32) -> String {
    format!("{v:#010x}")
}

/// Header type (without the multi-function bit).
pub fn header_type(cfg: Cfg) -> Option<u8> {
    cfg.u8(0x0e).map(|h| h & 0x7f)
}

/// Name of a standard capability ID.
pub fn cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "Power Management",
        0x02 => "AGP",
        0x03 => "VPD",
        0x04 => "Slot ID",
        0x05 => "MSI",
        0x06 => "CompactPCI Hot Swap",
        0x07 => "PCI-X",
        0x08 => "HyperTransport",
        0x09 => "Vendor Specific",
        0x0a => "Debug Port",
        0x0b => "CompactPCI CRC",
        0x0c => "PCI Hot-Plug",
        0x0d => "Bridge Subsystem Vendor ID",
        0x0e => "AGP 8x",
        0x0f => "Secure Device",
        0x10 => "PCI Express",
        0x11 => "MSI-X",
        0x12 => "SATA",
        0x13 => "Advanced Features",
        0x14 => "Enhanced Allocation",
        0x15 => "Flattening Portal Bridge",
        _ => "unknown",
    }
}

/// Name of an extended capability ID.
pub fn ext_cap_name(id: u16) -> &'static str {
    match id {
        0x0001 => "AER",
        0x0002 => "Virtual Channel",
        0x0003 => "DSN",
        0x0004 => "Power Budgeting",
        0x0005 => "Root Complex Link Declaration",
        0x0006 => "Root Complex Internal Link Control",
        0x0007 => "Root Complex Event Collector Endpoint Association",
        0x0008 => "Multi-Function VC",
        0x0009 => "Virtual Channel (MFVC present)",
        0x000a => "RCRB Header",
        0x000b => "VSEC",
        0x000c => "Configuration Access Correlation",
        0x000d => "ACS",
        0x000e => "ARI",
        0x000f => "ATS",
        0x0010 => "SR-IOV",
        0x0011 => "MR-IOV",
        0x0012 => "Multicast",
        0x0013 => "PRI",
        0x0015 => "Resizable BAR",
        0x0016 => "Dynamic Power Allocation",
        0x0017 => "TPH Requester",
        0x0018 => "LTR",
        0x0019 => "Secondary PCIe",
        0x001a => "PMUX",
        0x001b => "PASID",
        0x001c => "LN Requester",
        0x001d => "DPC",
        0x001e => "L1 PM Substates",
        0x001f => "PTM",
        0x0020 => "M-PCIe",
        0x0021 => "FRS Queueing",
        0x0022 => "Readiness Time Reporting",
        0x0023 => "DVSEC",
        0x0024 => "VF Resizable BAR",
        0x0025 => "Data Link Feature",
        0x0026 => "Physical Layer 16.0 GT/s",
        0x0027 => "Lane Margining at the Receiver",
        0x0028 => "Hierarchy ID",
        0x0029 => "NPEM",
        0x002a => "Physical Layer 32.0 GT/s",
        0x002b => "Alternate Protocol",
        0x002c => "System Firmware Intermediary",
        0x002d => "Shadow Functions",
        0x002e => "DOE",
        0x002f => "Device 3",
        0x0030 => "IDE",
        0x0031 => "Physical Layer 64.0 GT/s",
        0x0032 => "Flit Logging",
        0x0033 => "Flit Performance Measurement",
        0x0034 => "Flit Error Injection",
        _ => "unknown",
    }
}

/// Name of a PCIe device/port type (PCIe capability flags bits 7:4).
pub fn pcie_type_name(t: u8) -> &'static str {
    match t {
        0x0 => "Endpoint",
        0x1 => "Legacy Endpoint",
        0x4 => "Root Port",
        0x5 => "Upstream Switch Port",
        0x6 => "Downstream Switch Port",
        0x7 => "PCIe-to-PCI Bridge",
        0x8 => "PCI-to-PCIe Bridge",
        0x9 => "RCiEP",
        0xa => "Root Complex Event Collector",
        _ => "reserved type",
    }
}

fn link_speed(s: u32) -> &'static str {
    match s {
        1 => "2.5GT/s",
        2 => "5GT/s",
        3 => "8GT/s",
        4 => "16GT/s",
        5 => "32GT/s",
        6 => "64GT/s",
        _ => "unknown speed",
    }
}

/// Walks the standard and extended capability lists.
pub fn walk(cfg: Cfg) -> CapWalk {
    let mut w = CapWalk::default();
    if cfg.len() < 0x40 {
        w.warnings.push(format!(
            "config space truncated to {} bytes (run as root to read it all)",
            cfg.len()
        ));
        return w;
    }
    walk_std(cfg, &mut w);
    if cfg.len() < 256 {
        w.warnings.push(format!(
            "config space truncated to {} bytes: capabilities beyond it not shown (run as root)",
            cfg.len()
        ));
    }
    if cfg.len() > 0x100 {
        walk_ext(cfg, &mut w);
    }
    w
}

fn walk_std(cfg: Cfg, w: &mut CapWalk) {
    let status = cfg.u16(0x06).unwrap_or(0);
    if status & 0x10 == 0 {
        return; // no capability list
    }
    let ptr_off = match header_type(cfg) {
        Some(2) => 0x14, // CardBus
        _ => 0x34,
    };
    let mut ptr = usize::from(cfg.u8(ptr_off).unwrap_or(0) & 0xfc);
    let mut seen = [false; 256];
    // 48 = (256 - 64) / 4: at most that many dword-aligned caps fit.
    for _ in 0..48 {
        if ptr == 0 {
            return;
        }
        if !(0x40..=0xfc).contains(&ptr) {
            w.warnings.push(format!(
                "capability pointer {ptr:#04x} outside 0x40..0xfc; walk stopped"
            ));
            return;
        }
        if seen[ptr] {
            w.warnings.push(format!(
                "capability list loops back to {ptr:#04x}; walk stopped"
            ));
            return;
        }
        seen[ptr] = true;
        let (Some(id), Some(next)) = (cfg.u8(ptr), cfg.u8(ptr + 1)) else {
            w.warnings.push(format!(
                "capability at {ptr:#04x} beyond the {} bytes read",
                cfg.len()
            ));
            return;
        };
        if id == 0xff {
            w.warnings.push(format!(
                "capability at {ptr:#04x} reads 0xff (device gone?)"
            ));
            return;
        }
        let cap = std_cap(cfg, ptr, id, w);
        w.caps.push(cap);
        ptr = usize::from(next & 0xfc);
    }
    w.warnings
        .push("more than 48 standard capabilities; walk stopped".into());
}

fn std_cap(cfg: Cfg, p: usize, id: u8, w: &mut CapWalk) -> CapInfo {
    let mut d = Details::new();
    match id {
        0x01 => {
            if let (Some(pmc), Some(csr)) = (cfg.u16(p + 2), cfg.u16(p + 4)) {
                let state = csr & 3;
                d.add("pm_version", json!(pmc & 7), format!("v{}", pmc & 7));
                d.add(
                    "power_state",
                    json!(format!("D{state}")),
                    format!("D{state}"),
                );
                d.field("pmc", json!(pmc));
                d.field("pmcsr", json!(csr));
            }
        }
        0x05 => {
            if let Some(ctl) = cfg.u16(p + 2) {
                let en = ctl & 1 != 0;
                let cap = 1u32 << ((ctl >> 1) & 7);
                let enabled = 1u32 << ((ctl >> 4) & 7);
                d.add("vectors", json!(cap), format!("{cap} vector(s)"));
                d.add(
                    "enabled",
                    json!(en),
                    if en { "enabled" } else { "disabled" },
                );
                if en {
                    d.add(
                        "vectors_enabled",
                        json!(enabled),
                        format!("{enabled} in use"),
                    );
                }
                d.add(
                    "address_64bit",
                    json!(ctl & 0x80 != 0),
                    if ctl & 0x80 != 0 { "64-bit" } else { "32-bit" },
                );
                d.add(
                    "per_vector_masking",
                    json!(ctl & 0x100 != 0),
                    if ctl & 0x100 != 0 { "maskable" } else { "" },
                );
            }
        }
        0x09 => {
            if let Some(len) = cfg.u8(p + 2) {
                d.add("length", json!(len), format!("length {len}"));
            }
        }
        0x10 => pcie_cap(cfg, p, &mut d, w),
        0x11 => {
            if let (Some(ctl), Some(table), Some(pba)) =
                (cfg.u16(p + 2), cfg.u32(p + 4), cfg.u32(p + 8))
            {
                let size = u32::from(ctl & 0x7ff) + 1;
                d.add("table_size", json!(size), format!("table size {size}"));
                d.add(
                    "table_bir",
                    json!(table & 7),
                    format!("table BAR{}+{:#x}", table & 7, table & !7),
                );
                d.field("table_offset", json!(table & !7));
                d.add(
                    "pba_bir",
                    json!(pba & 7),
                    format!("PBA BAR{}+{:#x}", pba & 7, pba & !7),
                );
                d.field("pba_offset", json!(pba & !7));
                let en = ctl & 0x8000 != 0;
                d.add(
                    "enabled",
                    json!(en),
                    if en { "enabled" } else { "disabled" },
                );
                let masked = ctl & 0x4000 != 0;
                d.add(
                    "function_mask",
                    json!(masked),
                    if masked { "function masked" } else { "" },
                );
            }
        }
        _ => {}
    }
    let (details, fields) = d.finish();
    CapInfo {
        offset: p as u16,
        id: u16::from(id),
        version: None,
        name: cap_name(id),
        details,
        fields,
    }
}

fn pcie_cap(cfg: Cfg, p: usize, d: &mut Details, w: &mut CapWalk) {
    let Some(flags) = cfg.u16(p + 2) else { return };
    let version = flags & 0xf;
    let ty = ((flags >> 4) & 0xf) as u8;
    w.pcie_type.get_or_insert(ty);
    d.add("cap_version", json!(version), format!("v{version}"));
    d.add("port_type", json!(pcie_type_name(ty)), pcie_type_name(ty));
    d.field("port_type_code", json!(ty));
    if let Some(devcap) = cfg.u32(p + 4) {
        let mps = 128u32 << (devcap & 7);
        let tee = devcap & 0x4000_0000 != 0;
        let flr = devcap & 0x1000_0000 != 0;
        d.add("devcap", json!(devcap), format!("DEVCAP {}", hex32(devcap)));
        d.add("max_payload", json!(mps), format!("MPS {mps}"));
        d.add("flr", json!(flr), format!("FLR {}", yes_no(flr)));
        d.add("tee_io", json!(tee), format!("TEE-IO {}", yes_no(tee)));
    }
    // Link registers are meaningless for RCiEPs and event collectors.
    if !matches!(ty, 0x9 | 0xa) {
        if let (Some(lnkcap), Some(lnksta)) = (cfg.u32(p + 0x0c), cfg.u16(p + 0x12)) {
            let (cs, cw) = (lnkcap & 0xf, (lnkcap >> 4) & 0x3f);
            let (ss, sw) = (u32::from(lnksta & 0xf), u32::from((lnksta >> 4) & 0x3f));
            d.add(
                "link",
                json!({"cap_speed": link_speed(cs), "cap_width": cw,
                       "speed": link_speed(ss), "width": sw}),
                format!(
                    "link {} x{sw} (cap {} x{cw})",
                    link_speed(ss),
                    link_speed(cs)
                ),
            );
        }
    }
    if version >= 2 {
        if let Some(devcap2) = cfg.u32(p + 0x24) {
            let ee = devcap2 & 0x0020_0000 != 0;
            d.add(
                "devcap2",
                json!(devcap2),
                format!("DEVCAP2 {}", hex32(devcap2)),
            );
            d.add("ee_prefix", json!(ee), format!("EE-prefix {}", yes_no(ee)));
            if ee {
                let max = (devcap2 >> 22) & 3;
                let max = if max == 0 { 4 } else { max };
                d.field("max_ee_prefixes", json!(max));
            }
        }
    }
}

fn walk_ext(cfg: Cfg, w: &mut CapWalk) {
    let mut ptr = 0x100usize;
    let mut seen = vec![false; cfg.len() / 4 + 1];
    // (4096 - 256) / 4 headers at most.
    let limit = (cfg.len().saturating_sub(0x100)) / 4;
    for _ in 0..limit.max(1) {
        let Some(hdr) = cfg.u32(ptr) else {
            w.warnings.push(format!(
                "extended capability at {ptr:#05x} beyond the {} bytes read",
                cfg.len()
            ));
            return;
        };
        if hdr == 0 || hdr == 0xffff_ffff {
            if ptr != 0x100 {
                w.warnings.push(format!(
                    "extended capability pointer to {ptr:#05x} reads {hdr:#010x}"
                ));
            }
            return;
        }
        if seen[ptr / 4] {
            w.warnings.push(format!(
                "extended capability list loops back to {ptr:#05x}; walk stopped"
            ));
            return;
        }
        seen[ptr / 4] = true;
        let id = (hdr & 0xffff) as u16;
        let version = ((hdr >> 16) & 0xf) as u8;
        let next = (hdr >> 20) as usize;
        // ID 0 is a placeholder header (QEMU hides a cap that way); show it.
        let cap = ext_cap(cfg, ptr, id, version);
        w.ext_caps.push(cap);
        if next == 0 {
            return;
        }
        if next < 0x100 || next & 3 != 0 {
            w.warnings.push(format!(
                "extended capability at {ptr:#05x} has bad next pointer {next:#05x}; walk stopped"
            ));
            return;
        }
        ptr = next;
    }
    w.warnings
        .push("too many extended capabilities; walk stopped".into());
}

fn ext_cap(cfg: Cfg, p: usize, id: u16, version: u8) -> CapInfo {
    let mut d = Details::new();
    match id {
        0x0003 => {
            if let (Some(lo), Some(hi)) = (cfg.u32(p + 4), cfg.u32(p + 8)) {
                let serial = (u64::from(hi) << 32) | u64::from(lo);
                let dashed = serial
                    .to_be_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join("-");
                d.add(
                    "serial",
                    json!(format!("{serial:#018x}")),
                    format!("serial {dashed}"),
                );
            }
        }
        0x000b => {
            if let Some(h) = cfg.u32(p + 4) {
                d.add(
                    "vsec_id",
                    json!(h & 0xffff),
                    format!("VSEC ID {:#06x}", h & 0xffff),
                );
                d.add(
                    "vsec_rev",
                    json!((h >> 16) & 0xf),
                    format!("rev {}", (h >> 16) & 0xf),
                );
                d.add("vsec_length", json!(h >> 20), format!("length {}", h >> 20));
            }
        }
        0x0023 => {
            if let (Some(h1), Some(h2)) = (cfg.u32(p + 4), cfg.u16(p + 8)) {
                d.add(
                    "dvsec_vendor",
                    json!(h1 & 0xffff),
                    format!("vendor {:04x}", h1 & 0xffff),
                );
                d.add("dvsec_id", json!(h2), format!("ID {h2:#06x}"));
                d.add(
                    "dvsec_rev",
                    json!((h1 >> 16) & 0xf),
                    format!("rev {}", (h1 >> 16) & 0xf),
                );
                d.add(
                    "dvsec_length",
                    json!(h1 >> 20),
                    format!("length {}", h1 >> 20),
                );
            }
        }
        0x000d => {
            if let (Some(cap), Some(ctl)) = (cfg.u16(p + 4), cfg.u16(p + 6)) {
                d.add("acs_cap", json!(cap), format!("cap {cap:#06x}"));
                d.add("acs_ctrl", json!(ctl), format!("ctrl {ctl:#06x}"));
            }
        }
        0x000e => {
            if let Some(cap) = cfg.u16(p + 4) {
                d.add(
                    "next_function",
                    json!(cap >> 8),
                    format!("next function {}", cap >> 8),
                );
            }
        }
        0x000f => {
            if let (Some(cap), Some(ctl)) = (cfg.u16(p + 4), cfg.u16(p + 6)) {
                let q = cap & 0x1f;
                let q = if q == 0 { 32 } else { q };
                let en = ctl & 0x8000 != 0;
                d.add(
                    "invalidate_queue_depth",
                    json!(q),
                    format!("queue depth {q}"),
                );
                d.add(
                    "page_aligned",
                    json!(cap & 0x20 != 0),
                    if cap & 0x20 != 0 {
                        "page-aligned requests"
                    } else {
                        ""
                    },
                );
                d.add(
                    "enabled",
                    json!(en),
                    if en { "enabled" } else { "disabled" },
                );
                if en {
                    d.add("stu", json!(ctl & 0x1f), format!("STU {}", ctl & 0x1f));
                }
            }
        }
        0x0010 => {
            if let (Some(ctl), Some(initial), Some(total), Some(num), Some(vfdev)) = (
                cfg.u16(p + 8),
                cfg.u16(p + 0x0c),
                cfg.u16(p + 0x0e),
                cfg.u16(p + 0x10),
                cfg.u16(p + 0x1a),
            ) {
                d.add("total_vfs", json!(total), format!("total VFs {total}"));
                d.add("initial_vfs", json!(initial), format!("initial {initial}"));
                d.add("num_vfs", json!(num), format!("enabled {num}"));
                d.add(
                    "vf_device_id",
                    json!(vfdev),
                    format!("VF device {vfdev:04x}"),
                );
                d.add(
                    "vf_enable",
                    json!(ctl & 1 != 0),
                    if ctl & 1 != 0 { "VF enable" } else { "" },
                );
            }
        }
        0x0013 => {
            if let (Some(ctl), Some(sta), Some(cap), Some(alloc)) = (
                cfg.u16(p + 4),
                cfg.u16(p + 6),
                cfg.u32(p + 8),
                cfg.u32(p + 0x0c),
            ) {
                let en = ctl & 1 != 0;
                d.add(
                    "enabled",
                    json!(en),
                    if en { "enabled" } else { "disabled" },
                );
                d.add("status", json!(sta), format!("status {sta:#06x}"));
                d.add("capacity", json!(cap), format!("capacity {cap}"));
                d.add("allocation", json!(alloc), format!("allocation {alloc}"));
            }
        }
        0x0015 => {
            if let Some(ctl) = cfg.u32(p + 8) {
                let n = (ctl >> 5) & 7;
                d.add("resizable_bars", json!(n), format!("{n} BAR(s)"));
            }
        }
        0x001b => {
            if let (Some(cap), Some(ctl)) = (cfg.u16(p + 4), cfg.u16(p + 6)) {
                let width = (cap >> 8) & 0x1f;
                let en = ctl & 1 != 0;
                d.add("width", json!(width), format!("width {width}"));
                d.add(
                    "exec",
                    json!(cap & 2 != 0),
                    if cap & 2 != 0 { "exec" } else { "" },
                );
                d.add(
                    "priv",
                    json!(cap & 4 != 0),
                    if cap & 4 != 0 { "priv" } else { "" },
                );
                d.add(
                    "enabled",
                    json!(en),
                    if en { "enabled" } else { "disabled" },
                );
                if en {
                    d.field("ctrl", json!(ctl));
                }
            }
        }
        0x002e => {
            if let (Some(cap), Some(sta)) = (cfg.u32(p + 4), cfg.u32(p + 0x0c)) {
                let irq = cap & 1 != 0;
                d.add(
                    "interrupt_support",
                    json!(irq),
                    format!("interrupts {}", yes_no(irq)),
                );
                if irq {
                    d.field("interrupt_message", json!((cap >> 1) & 0x7ff));
                }
                d.add("status", json!(sta), format!("status {}", hex32(sta)));
                let mut s = Vec::new();
                if sta & 1 != 0 {
                    s.push("BUSY");
                }
                if sta & 4 != 0 {
                    s.push("ERROR");
                }
                if sta & 0x8000_0000 != 0 {
                    s.push("DATA_OBJECT_READY");
                }
                if !s.is_empty() {
                    d.text(s.join("|"));
                }
            }
        }
        0x0030 => ide_cap(cfg, p, &mut d),
        _ => {}
    }
    let (details, fields) = d.finish();
    CapInfo {
        offset: p as u16,
        id,
        version: Some(version),
        name: ext_cap_name(id),
        details,
        fields,
    }
}

fn ide_cap(cfg: Cfg, p: usize, d: &mut Details) {
    let (Some(cap), Some(ctl)) = (cfg.u32(p + 4), cfg.u32(p + 8)) else {
        return;
    };
    let link = cap & 1 != 0;
    let sel = cap & 2 != 0;
    let tc_num = (cap >> 13) & 7;
    let sel_num = (cap >> 16) & 0xff;
    let nr_link = if link { 1 + tc_num } else { 0 };
    let nr_sel = if sel { 1 + sel_num } else { 0 };
    d.add("ide_cap", json!(cap), format!("cap {}", hex32(cap)));
    d.add("ide_ctl", json!(ctl), format!("ctl {}", hex32(ctl)));
    d.add(
        "link_streams",
        json!(nr_link),
        format!("{nr_link} link stream(s)"),
    );
    d.add(
        "selective_streams",
        json!(nr_sel),
        format!("{nr_sel} selective stream(s)"),
    );
    let mut flags = Vec::new();
    for (bit, name) in [
        (0x4, "flowthrough"),
        (0x8, "partial-header-enc"),
        (0x10, "aggregation"),
        (0x20, "PCRC"),
        (0x40, "IDE_KM"),
        (0x80, "sel-cfg"),
        (0x100_0000, "TEE-limited"),
    ] {
        if cap & bit != 0 {
            flags.push(name);
        }
    }
    if !flags.is_empty() {
        d.add("flags", json!(flags), flags.join(" "));
    }
    // Selective stream blocks: state and ID of each.
    let mut off = p + 0x0c + nr_link as usize * 8;
    let mut streams = Vec::new();
    let mut human = Vec::new();
    for i in 0..nr_sel.min(256) {
        let (Some(scap), Some(sctl), Some(ssts)) =
            (cfg.u32(off), cfg.u32(off + 4), cfg.u32(off + 8))
        else {
            break;
        };
        let assoc = (scap & 0xf) as usize;
        let en = sctl & 1 != 0;
        let id = sctl >> 24;
        let state = ssts & 0xf;
        streams.push(json!({"index": i, "enabled": en, "id": id, "state": state,
                            "ctl": sctl, "sts": ssts, "address_blocks": assoc}));
        human.push(format!(
            "sel{i}: {} ID {id} state {state}",
            if en { "EN" } else { "off" }
        ));
        off += 20 + 12 * assoc;
    }
    if !streams.is_empty() {
        d.add("selective", json!(streams), human.join("; "));
    }
}

/// Name of a PCI class code (`class` sysfs attribute, 24 bits).
pub fn class_name(class: u32) -> &'static str {
    let base = (class >> 16) & 0xff;
    let sub = (class >> 8) & 0xff;
    match (base, sub) {
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "Network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, _) => "Display controller",
        (0x04, _) => "Multimedia controller",
        (0x05, _) => "Memory controller",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "Bridge",
        (0x07, _) => "Communication controller",
        (0x08, _) => "System peripheral",
        (0x09, _) => "Input device controller",
        (0x0a, _) => "Docking station",
        (0x0b, _) => "Processor",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "Serial bus controller",
        (0x0d, _) => "Wireless controller",
        (0x0e, _) => "Intelligent controller",
        (0x0f, _) => "Satellite communications controller",
        (0x10, _) => "Encryption controller",
        (0x11, _) => "Signal processing controller",
        (0x12, _) => "Processing accelerator",
        (0x13, _) => "Non-Essential Instrumentation",
        (0x40, _) => "Coprocessor",
        (0xff, _) => "Unassigned class",
        _ => "Unknown class",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A config space resembling the DMA-copy example device.
    fn example() -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        put32(&mut c, 0, 0xd3a0_7d0c);
        c[0x06] = 0x10; // cap list
        c[0x34] = 0x40;
        // PM at 0x40 -> MSI at 0x48
        c[0x40] = 0x01;
        c[0x41] = 0x48;
        c[0x42] = 0x03;
        // MSI at 0x48 -> MSI-X at 0x60
        c[0x48] = 0x05;
        c[0x49] = 0x60;
        c[0x4a] = 0x80;
        // MSI-X at 0x60 -> PCIe at 0x70
        c[0x60] = 0x11;
        c[0x61] = 0x70;
        c[0x62] = 0x03;
        put32(&mut c, 0x64, 0x1);
        put32(&mut c, 0x68, 0x801);
        // PCIe v2 RCiEP at 0x70
        c[0x70] = 0x10;
        c[0x71] = 0x00;
        c[0x72] = 0x92;
        put32(&mut c, 0x74, 0x5000_0000);
        put32(&mut c, 0x70 + 0x24, 0x0020_0000);
        // DSN at 0x100 -> VSEC at 0x10c
        put32(&mut c, 0x100, 0x0003 | (1 << 16) | (0x10c << 20));
        put32(&mut c, 0x104, 0x0000_0001);
        put32(&mut c, 0x108, 0x7d0c_0000);
        put32(&mut c, 0x10c, 0x000b | (1 << 16));
        put32(&mut c, 0x110, 0x0101_0001);
        c
    }

    #[test]
    fn walks_example() {
        let c = example();
        let w = walk(Cfg(&c));
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
        let names: Vec<_> = w.caps.iter().map(|c| c.name).collect();
        assert_eq!(names, ["Power Management", "MSI", "MSI-X", "PCI Express"]);
        assert_eq!(w.pcie_type, Some(9));
        let msix = &w.caps[2];
        assert!(msix.details.contains("table size 4"), "{}", msix.details);
        assert!(msix.details.contains("PBA BAR1+0x800"), "{}", msix.details);
        let pcie = &w.caps[3];
        assert!(pcie.details.contains("RCiEP"));
        assert!(pcie.details.contains("TEE-IO yes"));
        assert!(pcie.details.contains("EE-prefix yes"));
        assert_eq!(w.ext_caps.len(), 2);
        assert!(w.ext_caps[0].details.contains("7d-0c-00-00-00-00-00-01"));
        assert!(w.ext_caps[1].details.contains("VSEC ID 0x0001"));
        assert!(w.ext_caps[1].details.contains("length 16"));
    }

    #[test]
    fn survives_loops_and_garbage() {
        let mut c = example();
        c[0x71] = 0x40; // PCIe -> PM: loop
        put32(&mut c, 0x10c, 0x000b | (1 << 16) | (0x100 << 20)); // ext loop
        let w = walk(Cfg(&c));
        assert_eq!(w.caps.len(), 4);
        assert_eq!(w.ext_caps.len(), 2);
        assert_eq!(w.warnings.len(), 2, "{:?}", w.warnings);

        // Misaligned / out-of-range pointers.
        put32(&mut c, 0x10c, 0x000b | (0x0ff << 20));
        c[0x71] = 0x20;
        let w = walk(Cfg(&c));
        assert_eq!(w.warnings.len(), 2, "{:?}", w.warnings);

        // Every truncation length and every byte value must not panic.
        for len in 0..c.len() {
            let _ = walk(Cfg(&c[..len]));
        }
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = walk(Cfg(&junk));
        let ff = vec![0xffu8; 4096];
        let _ = walk(Cfg(&ff));
    }
}
