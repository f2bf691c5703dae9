//! The QEMU command line: q35, memfd `share=on` guest RAM (so servers map it),
//! each vfio-user device behind its own pcie-root-port or on pcie.0, an
//! optional intel-iommu in scalable mode, the serial console to a log file.

use super::{Placement, QemuBuild, VmSpec};

/// Selective IDE streams of each root port under the patched QEMU (its
/// `x-ide-sel-streams`), with its default of two address association blocks
/// each (memory and prefetchable memory windows).
pub const ROOT_PORT_IDE_STREAMS: u32 = 4;
use std::path::{Path, PathBuf};

/// A vfio-user device as QEMU should attach it.
#[derive(Clone, Debug)]
pub struct QemuDevice {
    /// Server socket.
    pub socket: PathBuf,
    /// Topology.
    pub placement: Placement,
}

/// Whether KVM can run a guest here (the CPU advertises VMX/SVM and /dev/kvm
/// exists). Without both, TCG is used.
pub fn kvm_usable() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    virt && Path::new("/dev/kvm").exists() && std::env::var_os("TRUSTDEV_NO_KVM").is_none()
}

/// Minimal JSON string quoting (paths are the only strings we embed).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The intel-iommu device: scalable mode with caching mode (vfio needs it);
/// with `sva`, also first-stage translation, PASID, a device IOTLB (ATS) and
/// page requests (`svm=on`), which Linux's SVA needs. QEMU 11 renamed the
/// experimental `x-scalable-mode`, `x-flts` and `x-pasid-mode`.
fn intel_iommu(qemu_major: u32, sva: bool) -> String {
    let (base, sva_props) = if qemu_major >= 11 {
        (
            "intel-iommu,scalable-mode=on,caching-mode=on",
            ",fsts=on,pasid-bits=20,device-iotlb=on,svm=on",
        )
    } else {
        (
            "intel-iommu,x-scalable-mode=on,caching-mode=on",
            ",x-flts=on,x-pasid-mode=on,device-iotlb=on,svm=on",
        )
    };
    format!("{base}{}", if sva { sva_props } else { "" })
}

/// Builds QEMU's arguments (without the program) for a QEMU of major
/// version `qemu_major`.
pub fn args(
    spec: &VmSpec,
    qemu_major: u32,
    kernel: &Path,
    initrd: &Path,
    devices: &[QemuDevice],
    serial_log: &Path,
    script: Option<&Path>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &str| a.push(s.to_string());
    let accel = if kvm_usable() { "kvm" } else { "tcg" };
    push("-machine");
    push(&format!("q35,accel={accel},memory-backend=mem"));
    push("-m");
    push(&format!("{}M", spec.mem_mb));
    push("-object");
    push(&format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        spec.mem_mb
    ));
    push("-cpu");
    let iommu = spec.iommu || spec.sva;
    push(if iommu { "max,la57=off" } else { "max" });
    push("-smp");
    push(&spec.smp.to_string());
    push("-display");
    push("none");
    push("-no-reboot");
    push("-nodefaults");
    if spec.interactive {
        push("-chardev");
        push(&format!(
            "stdio,id=con0,mux=on,signal=off,logfile={}",
            serial_log.display()
        ));
        push("-serial");
        push("chardev:con0");
        push("-mon");
        push("chardev=con0");
    } else {
        push("-monitor");
        push("none");
        push("-chardev");
        push(&format!("file,id=con0,path={}", serial_log.display()));
        push("-serial");
        push("chardev:con0");
    }
    if iommu {
        push("-device");
        push(&intel_iommu(qemu_major, spec.sva));
    }
    push("-kernel");
    push(&kernel.display().to_string());
    push("-initrd");
    push(&initrd.display().to_string());
    let mut cmdline = vec![
        "console=ttyS0".to_string(),
        "panic=-1".into(),
        "oops=panic".into(),
        "loglevel=6".into(),
        "pci=pcie_bus_perf".into(),
        // Under TCG on a loaded host the boot-time check that the 8254
        // timer reaches the IO-APIC can miss its window and panic ("IO-APIC
        // + timer doesn't work"); the timer works, skip the check.
        "no_timer_check".into(),
    ];
    if iommu {
        cmdline.push("intel_iommu=on,sm_on".into());
        // With interrupt remapping the kernel panics ("timer doesn't work
        // through Interrupt-remapped IO-APIC") when its boot-time check sees
        // too few timer ticks during a short TSC-timed wait - which TCG on a
        // loaded host produces (seen here at load 15-20). The check is about
        // broken chipsets, not about anything we test.
        cmdline.push("no_timer_check".into());
    }
    if spec.interactive {
        cmdline.push("trustdev.shell=1".into());
    }
    if spec.tsm {
        cmdline.push(super::tsm::CMDLINE.into());
    }
    cmdline.extend(spec.append.iter().cloned());
    push("-append");
    push(&cmdline.join(" "));
    if let Some(s) = script {
        push("-fw_cfg");
        push(&format!("name=opt/trustdev/test.sh,file={}", s.display()));
    }
    a.extend(device_args(devices, spec.qemu == QemuBuild::Patched));
    a.extend(spec.qemu_args.iter().cloned());
    a
}

/// The arguments attaching `devices` (each behind its own pcie-root-port,
/// or on pcie.0 at slot 0x10 + index). `root_port_ide`: the root ports get
/// the IDE capability of the patched QEMU (qemu-configs/patches).
pub fn device_args(devices: &[QemuDevice], root_port_ide: bool) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &str| a.push(s.to_string());
    let mut port = 0;
    for (i, d) in devices.iter().enumerate() {
        let sock = json_str(&d.socket.display().to_string());
        match d.placement {
            Placement::RootPort => {
                port += 1;
                push("-device");
                let ide = if root_port_ide {
                    format!(",x-ide-sel-streams={ROOT_PORT_IDE_STREAMS}")
                } else {
                    String::new()
                };
                push(&format!(
                    "pcie-root-port,id=rp{port},chassis={port},slot={port},bus=pcie.0{ide}"
                ));
                push("-device");
                push(&format!(
                    r#"{{"driver":"vfio-user-pci","id":"dev{i}","socket":{{"path":{sock},"type":"unix"}},"bus":"rp{port}"}}"#
                ));
            }
            Placement::RootBus => {
                push("-device");
                push(&format!(
                    r#"{{"driver":"vfio-user-pci","id":"dev{i}","socket":{{"path":{sock},"type":"unix"}},"bus":"pcie.0","addr":"{:#x}"}}"#,
                    0x10 + i
                ));
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_memfd_and_devices() {
        let spec = VmSpec::default();
        let devs = vec![
            QemuDevice {
                socket: "/tmp/a \"b\".sock".into(),
                placement: Placement::RootPort,
            },
            QemuDevice {
                socket: "/tmp/c.sock".into(),
                placement: Placement::RootBus,
            },
        ];
        let a = args(
            &spec,
            11,
            Path::new("/k"),
            Path::new("/i"),
            &devs,
            Path::new("/log"),
            None,
        );
        let s = a.join(" ");
        assert!(s.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(s.contains(r#""path":"/tmp/a \"b\".sock""#));
        assert!(s.contains(r#""bus":"rp1""#));
        assert!(s.contains(r#""bus":"pcie.0","addr":"0x11""#));
    }

    /// The command line of `spec` for a QEMU of major version `major`.
    fn line(spec: &VmSpec, major: u32, devs: &[QemuDevice]) -> String {
        let (k, i, l) = (Path::new("/k"), Path::new("/i"), Path::new("/l"));
        args(spec, major, k, i, devs, l, None).join(" ")
    }

    #[test]
    fn iommu_property_names_follow_the_qemu_version() {
        let iommu = VmSpec {
            iommu: true,
            ..VmSpec::default()
        };
        assert!(line(&iommu, 11, &[]).contains("intel-iommu,scalable-mode=on,caching-mode=on"));
        assert!(line(&iommu, 10, &[]).contains("intel-iommu,x-scalable-mode=on,caching-mode=on"));
        let sva = VmSpec {
            sva: true,
            ..VmSpec::default()
        };
        assert!(line(&sva, 11, &[]).contains(
            "intel-iommu,scalable-mode=on,caching-mode=on,fsts=on,pasid-bits=20,device-iotlb=on,svm=on"
        ));
        let old = line(&sva, 10, &[]);
        assert!(old.contains(
            "intel-iommu,x-scalable-mode=on,caching-mode=on,x-flts=on,x-pasid-mode=on,device-iotlb=on,svm=on"
        ));
        assert!(old.contains("max,la57=off") && old.contains("intel_iommu=on,sm_on"));
        assert!(old.contains("no_timer_check"));
    }

    #[test]
    fn root_ports_get_ide_only_with_the_patched_qemu() {
        let devs = [QemuDevice {
            socket: "/tmp/a.sock".into(),
            placement: Placement::RootPort,
        }];
        let with = |qemu| {
            let spec = VmSpec {
                qemu,
                ..VmSpec::default()
            };
            line(&spec, 11, &devs)
        };
        assert!(!with(QemuBuild::Stock).contains("x-ide"));
        assert!(with(QemuBuild::Patched).contains("bus=pcie.0,x-ide-sel-streams=4"));
    }
}
