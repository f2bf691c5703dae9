//! `trustdev`: serve trustdev devices over vfio-user, boot guests against
//! them, and show what the guest kernel does with them.

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use trustdev_devices::example::DmaCopy;
use trustdev_devices::nvme::{NvmeArgs, NvmeConfig, NvmeDevice, NvmeSecurity};
use trustdev_devices::security;
use trustdev_devices::security::ide::{Ide, IdeConfig, IdeDevice};
use trustdev_devices::security::tdisp::{IdeRequirement, Tdi, TdispConfig, TdispDevice};
use trustdev_devices::vm::{self, DeviceKind, DeviceSpec, Placement, VmError, VmSpec};
use vfio_user_server::pci::PortType;
use vfio_user_server::Server;

#[derive(Parser)]
#[command(
    name = "trustdev",
    version,
    about = "Trusted PCIe devices as vfio-user servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Serve one device on a vfio-user socket until SIGTERM/SIGINT.
    Serve {
        /// Device model: dma-copy, nvme, accel.
        kind: String,
        /// Socket path (created 0600; only a stale socket there is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// Present a Root Complex Integrated Endpoint (for q35's pcie.0).
        #[arg(long)]
        rciep: bool,
        #[command(flatten)]
        nvme: NvmeArgs,
        #[command(flatten)]
        security: SecurityArgs,
    },
    /// Serve the SPDM responder alone over the spdm-emu TCP protocol on
    /// 127.0.0.1 (for QEMU's `-device nvme,spdm_port=N`, DMTF's
    /// spdm_requester_emu, the SPDM responder validator).
    SpdmResponder {
        /// TCP port (spdm-emu uses 2323).
        #[arg(long, default_value_t = 2323)]
        port: u16,
        /// Identity directory (default: the nvme device's).
        #[arg(long)]
        identity_dir: Option<PathBuf>,
        /// HeartbeatPeriod in seconds advertised in KEY_EXCHANGE_RSP (0: none).
        #[arg(long, default_value_t = 0)]
        heartbeat: u8,
        /// IDE capability of each modelled port (see `serve --ide`); `off`:
        /// no IDE_KM.
        #[arg(long, default_value = "on")]
        ide: String,
        /// Number of IDE ports the IDE_KM responder models (PortIndex 0 to
        /// N-1). DMTF's spdm_requester_emu addresses PortIndex 1.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
        ide_ports: u16,
        /// TDISP for one TDI (see `serve --tdisp`; here LOCK requires keys
        /// armed for its stream by IDE_KM, `ide=keys`, as there is no
        /// configuration space to enable a stream in; its report shows the
        /// DMA-copy example's BARs as firmware would place them).
        #[arg(long, default_value = "on")]
        tdisp: String,
        #[command(flatten)]
        psk: PskArgs,
    },
    /// Boot a guest in QEMU against device servers and run a script in it.
    Vm(VmArgs),
    /// Boot a guest with trustdev devices and explain what its kernel did.
    Demo {
        /// Echo the guest console.
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(clap::Args)]
struct VmArgs {
    /// Device to attach: KIND[:OPT,...] (repeatable). A device sits behind a
    /// pcie-root-port unless `rciep` puts it on pcie.0. Options of every
    /// kind: no-spdm, no-tee, ide=SPEC (`serve --ide` with `+` between
    /// items, e.g. ide=selective=4+assoc=2), ide-trace=FILE (`serve
    /// --ide-trace`); NVMe also takes KEY=VALUE (see `trustdev serve --help`).
    #[arg(long = "device", short = 'd')]
    devices: Vec<DeviceSpec>,
    /// Guest script to run (its exit status is the verdict).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Interactive console instead of a script (exit the shell to power off).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Kernel image (default: the provisioned Debian kernel).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd (default: trustdev's busybox initramfs with trustdev-guest).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line words.
    #[arg(long)]
    append: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    mem: u32,
    /// Add an intel-iommu (scalable mode) to the machine.
    #[arg(long)]
    iommu: bool,
    /// Add an intel-iommu set up for SVA (first-stage translation, PASID,
    /// device IOTLB, page requests; implies --iommu). Binding SVA in the
    /// guest needs --qemu patched.
    #[arg(long)]
    sva: bool,
    /// QEMU to run: `stock` (the provisioned QEMU 11.1) or `patched` (built
    /// once from source with qemu-configs/patches: root ports with an IDE
    /// capability, SVA-capable VT-d; see docs/QEMU-PATCHES.md).
    #[arg(long, default_value = "stock")]
    qemu: vm::QemuBuild,
    /// Keep the serial console log here.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Echo the guest console while it runs.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Extra guest kernel modules (with dependencies).
    #[arg(long)]
    module: Vec<String>,
    /// Extra program to copy into the guest (/usr/local/bin).
    #[arg(long)]
    bin: Vec<PathBuf>,
    /// Extra file for the guest initramfs: HOST_PATH:GUEST_PATH (repeatable).
    #[arg(long, value_parser = parse_file_arg)]
    file: Vec<(PathBuf, String)>,
    /// Extra QEMU argument (repeatable, one word each).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// Load the test link TSM module (built for the guest kernel by
    /// qemu-configs/provision-kmod.sh; TRUSTDEV_KDIR for your own kernel) and
    /// start `trustdev-guest tsm-agent`: `echo tsm0 > .../tsm/connect` then
    /// authenticates a device through the kernel's PCI/TSM core.
    #[arg(long)]
    tsm: bool,
}

/// Device security options of `trustdev serve`.
#[derive(clap::Args, Debug, Clone)]
struct SecurityArgs {
    /// Where the device's SPDM identity (certificate chains, keys 0600) lives;
    /// generated on first use. Default: $TRUSTDEV_IDENTITY_DIR/KIND or
    /// ~/.local/share/trustdev/identity/KIND.
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// A DOE mailbox with discovery only (no CMA/SPDM); DEVCAP.TEE stays
    /// set, so a TSM's connect meets a mailbox it cannot use.
    #[arg(long)]
    no_spdm: bool,
    /// The IDE capability: `on` (1 link stream, 2 selective streams with 1
    /// address association block each, AER), `off`, or a comma list of
    /// link=N, selective=N, assoc=N, tee-limited, flow-through,
    /// partial-header, aggregation, pcrc, cfg, no-aer, rid=BB:DD.F, segment=N.
    #[arg(long, default_value = "on")]
    ide: String,
    /// Record every IDE TLP of the protected link (ciphertext, MAC, counter,
    /// key set; never keys) in this new pcap file.
    #[arg(long)]
    ide_trace: Option<PathBuf>,
    /// TDISP (answered over the DOE mailbox's SPDM sessions): `on`, `off`,
    /// or a comma list of rid=BB:DD.F (the function's Requester ID; by
    /// default any, bound by LOCK_INTERFACE), segment=N, ide=secure|keys|none
    /// (what LOCK requires of its IDE stream; default secure, none without
    /// --ide).
    #[arg(long, default_value = "on")]
    tdisp: String,
    /// Clear DEVCAP.TEE (the kernel then offers no tsm/ attributes for the
    /// device unless it has IDE).
    #[arg(long)]
    no_tee: bool,
    /// Device Serial Number (up to 16 hex digits), in the DSN capability and
    /// in the CMA subject-alt-name of the leaf certificate. Default: derived
    /// from the socket path (nvme: from the NVMe serial number).
    #[arg(long, value_name = "HEX", value_parser = parse_dsn)]
    dsn: Option<u64>,
    /// Test fault (wrong on purpose, never a default): the leaf
    /// certificate's CMA subject-alt-name names DSN xor 1 instead of this
    /// device, so a TSM's SAN check (the kernel's CMA code, tsm-agent) must
    /// refuse the device although its chain verifies.
    #[arg(long)]
    wrong_san: bool,
    #[command(flatten)]
    psk: PskArgs,
}

/// PSK session options (off unless given).
#[derive(clap::Args, Debug, Clone)]
struct PskArgs {
    /// Turn PSK_EXCHANGE sessions on with this pre-shared key: hex digits, or
    /// @FILE holding the raw key bytes (mode 0600 or stricter). Off by default.
    #[arg(long, value_name = "HEX|@FILE")]
    psk: Option<String>,
    /// The PSKHint that names the key (at most 16 bytes; a trailing `\0`
    /// stands for a NUL byte; a requester's hint with a trailing NUL matches
    /// a hint configured without it).
    #[arg(long, value_name = "STRING", requires = "psk")]
    psk_hint: Option<String>,
}

impl PskArgs {
    /// The responder configuration: defaults, plus the PSK if one was given.
    fn responder_config(&self) -> Result<spdm_responder::ResponderConfig, String> {
        let mut cfg = spdm_responder::ResponderConfig::default();
        if let Some(p) = &self.psk {
            let psk = spdm_responder::psk::PskEntry::from_arg(p, self.psk_hint.as_deref())
                .map_err(|e| e.to_string())?;
            cfg.psks.push(psk);
        }
        Ok(cfg)
    }
}

fn parse_dsn(s: &str) -> Result<u64, String> {
    let h = s.trim_start_matches("0x");
    u64::from_str_radix(h, 16)
        .ok()
        .filter(|_| !h.is_empty() && h.len() <= 16)
        .ok_or_else(|| format!("{s:?}: expected up to 16 hex digits"))
}

impl SecurityArgs {
    /// The device's IDE port, if it has one.
    fn ide(&self) -> Result<Option<Arc<Ide>>, String> {
        let cfg = IdeConfig::parse(&self.ide).map_err(|e| format!("--ide: {e}"))?;
        let ide = cfg.map(Ide::new);
        match (&ide, &self.ide_trace) {
            (Some(ide), Some(path)) => ide
                .set_trace(path)
                .map_err(|e| format!("--ide-trace {}: {e}", path.display()))?,
            (None, Some(_)) => return Err("--ide-trace needs an IDE capability (--ide)".into()),
            _ => {}
        }
        Ok(ide)
    }
}

fn parse_file_arg(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once(':') {
        Some((src, dest)) if !src.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(src), dest.to_string()))
        }
        _ => Err(format!("{s:?}: expected HOST_PATH:/GUEST/PATH")),
    }
}

impl SecurityArgs {
    /// The device's TDI (needs SPDM), bound to its IDE port if it has one.
    fn tdisp(&self, kind: &str, ide: Option<&Arc<Ide>>) -> Result<Option<Arc<Tdi>>, String> {
        if self.no_spdm {
            return Ok(None);
        }
        let base = TdispConfig {
            ide: if ide.is_some() {
                IdeRequirement::Secure
            } else {
                IdeRequirement::None
            },
            ..TdispConfig::default()
        };
        let cfg = TdispConfig::parse(&self.tdisp, base).map_err(|e| format!("--tdisp: {e}"))?;
        Ok(cfg.map(|c| {
            Tdi::new(
                c,
                &format!("trustdev {kind}"),
                ide.into_iter().cloned().collect(),
            )
        }))
    }

    /// The device's SPDM identity (generated on first use) for `name`, or
    /// `None` with `--no-spdm`; with `--wrong-san`, for another device.
    fn identity(
        &self,
        kind: &str,
        name: &spdm_responder::CmaDeviceName,
    ) -> Result<Option<spdm_responder::Identity>, String> {
        if self.no_spdm {
            return Ok(None);
        }
        let mut name = *name;
        if self.wrong_san {
            name.serial = Some(name.serial.unwrap_or(0) ^ 1);
            log::warn!(
                "--wrong-san: the certificate names {} (not this device)",
                name.other_name()
            );
        }
        let name = &name;
        let dir = self
            .identity_dir
            .clone()
            .unwrap_or_else(|| security::default_identity_dir(kind));
        security::cma::load_identity(&dir, name)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

fn serve(
    kind: &str,
    socket: &Path,
    rciep: bool,
    nvme: &NvmeArgs,
    security: &SecurityArgs,
) -> Result<(), String> {
    let port = if rciep {
        PortType::RcIntegratedEndpoint
    } else {
        PortType::Endpoint
    };
    let spdm_cfg = security.psk.responder_config()?;
    match kind {
        "dma-copy" => {
            use trustdev_devices::example;
            let dsn = security
                .dsn
                .unwrap_or_else(|| security::default_dsn(kind, socket));
            let name = spdm_responder::CmaDeviceName {
                vendor: example::VENDOR_ID,
                device: example::DEVICE_ID,
                class_code: 0x12_00_00,
                revision: 1,
                subsystem: Some((example::VENDOR_ID, 0x0001)),
                serial: Some(dsn),
            };
            let identity = security.identity(kind, &name)?;
            let tee = !security.no_tee;
            let ide = security.ide()?;
            let tdi = security.tdisp(kind, ide.as_ref())?;
            let mut caps = vec![security::doe_capability_secure(
                identity,
                spdm_cfg,
                ide.as_ref(),
                tdi.as_ref(),
            )];
            caps.extend(ide.iter().flat_map(|i| i.capabilities()));
            let dev = DmaCopy::with_capabilities(port, tee, dsn, caps)
                .map_err(|e| format!("cannot create the device: {e}"))?;
            run_linked(dev, ide, tdi, socket)
        }
        "nvme" => {
            let mut cfg = NvmeConfig::from_args(nvme, &socket.display().to_string())?;
            if let Some(dsn) = security.dsn {
                cfg.dsn = dsn;
            }
            let name = spdm_responder::CmaDeviceName {
                vendor: trustdev_devices::nvme::VENDOR_ID,
                device: trustdev_devices::nvme::DEVICE_ID,
                class_code: 0x01_08_02,
                revision: 2,
                subsystem: Some((trustdev_devices::nvme::VENDOR_ID, 0x0001)),
                serial: Some(cfg.dsn),
            };
            let identity = security.identity(kind, &name)?;
            let ide = security.ide()?;
            let tdi = security.tdisp(kind, ide.as_ref())?;
            let mut ext_caps = vec![security::doe_capability_secure(
                identity.clone(),
                spdm_cfg.clone(),
                ide.as_ref(),
                tdi.as_ref(),
            )];
            ext_caps.extend(ide.iter().flat_map(|i| i.capabilities()));
            let sec = NvmeSecurity {
                ext_caps,
                tee: !security.no_tee,
                // The same identity also answers over Security Send/Receive.
                storage: identity.map(|id| spdm_responder::Responder::new(spdm_cfg, id)),
            };
            let dev = NvmeDevice::new_secure(cfg, port, sec)
                .map_err(|e| format!("cannot create the NVMe controller: {e}"))?;
            run_linked(dev, ide, tdi, socket)
        }
        "accel" => {
            use trustdev_devices::accel;
            let mut cfg = accel::AccelArgs::default().config();
            cfg.dsn = security
                .dsn
                .unwrap_or_else(|| security::default_dsn(kind, socket));
            let name = spdm_responder::CmaDeviceName {
                vendor: accel::VENDOR_ID,
                device: accel::DEVICE_ID,
                class_code: accel::CLASS,
                revision: accel::REVISION,
                subsystem: Some((accel::VENDOR_ID, 0x0001)),
                serial: Some(cfg.dsn),
            };
            // The security blocks every device carries, built the same way.
            let identity = security.identity(kind, &name)?;
            let ide = security.ide()?;
            let tdi = security.tdisp(kind, ide.as_ref())?;
            cfg.port = port;
            cfg.tee = !security.no_tee;
            cfg.security_caps = vec![security::doe_capability_secure(
                identity,
                spdm_cfg,
                ide.as_ref(),
                tdi.as_ref(),
            )];
            cfg.security_caps
                .extend(ide.iter().flat_map(|i| i.capabilities()));
            let dev = accel::AccelDevice::new(cfg)
                .map_err(|e| format!("cannot create the accelerator: {e}"))?;
            run_linked(dev, ide, tdi, socket)
        }
        other => Err(format!(
            "unknown device kind {other:?} (known: dma-copy, nvme, accel)"
        )),
    }
}

/// Serves `dev`, behind its IDE link when it has an IDE port, with its TDI
/// watching it when it has one.
fn run_linked<D: vfio_user_server::Device>(
    dev: D,
    ide: Option<Arc<Ide>>,
    tdi: Option<Arc<Tdi>>,
    socket: &Path,
) -> Result<(), String> {
    match ide {
        Some(ide) => run_tdi(
            IdeDevice::new(dev, ide).map_err(|e| e.to_string())?,
            tdi,
            socket,
        ),
        None => run_tdi(dev, tdi, socket),
    }
}

fn run_tdi<D: vfio_user_server::Device>(
    dev: D,
    tdi: Option<Arc<Tdi>>,
    socket: &Path,
) -> Result<(), String> {
    match tdi {
        Some(tdi) => run_server(TdispDevice::new(dev, tdi), socket),
        None => run_server(dev, socket),
    }
}

fn run_server<D: vfio_user_server::Device>(dev: D, socket: &Path) -> Result<(), String> {
    // Server errors name the socket path themselves.
    let mut server = Server::new(dev, socket).map_err(|e| e.to_string())?;
    let stop = server.stop_handle();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| format!("signals: {e}"))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: stopping");
            stop.stop();
        }
    });
    server.run().map_err(|e| e.to_string())
}

fn spdm_responder_tcp(
    port: u16,
    dir: Option<PathBuf>,
    heartbeat: u8,
    ide: &str,
    ide_ports: u16,
    tdisp: &str,
    psk: &PskArgs,
) -> Result<(), String> {
    // The device behind QEMU's `-device nvme,spdm_port=N`.
    let name = spdm_responder::CmaDeviceName::QEMU_NVME;
    let dir = dir.unwrap_or_else(|| security::default_identity_dir("nvme"));
    let identity = security::cma::load_identity(&dir, &name).map_err(|e| e.to_string())?;
    for (algo, root) in security::cma::root_certificates(&dir) {
        eprintln!(
            "trustdev spdm-responder: {algo} root certificate: {}",
            root.display()
        );
    }
    let cfg = spdm_responder::ResponderConfig {
        heartbeat_period: heartbeat,
        ..psk.responder_config()?
    };
    let mut responder = spdm_responder::Responder::new(cfg, identity);
    let mut ports: Vec<Arc<Ide>> = Vec::new();
    if let Some(ide_cfg) = IdeConfig::parse(ide).map_err(|e| format!("--ide: {e}"))? {
        ports = (0..ide_ports).map(|_| Ide::new(ide_cfg.clone())).collect();
        let (key, handler) = security::ide::km::IdeKmPorts::new(ports.clone()).handler();
        responder.register_vendor(key, handler);
        eprintln!(
            "trustdev spdm-responder: IDE_KM for {ide_ports} IDE port(s) (PortIndex 0-{})",
            ide_ports - 1
        );
    }
    let base = TdispConfig {
        ide: if ports.is_empty() {
            IdeRequirement::None
        } else {
            IdeRequirement::KeysArmed
        },
        ..TdispConfig::default()
    };
    if let Some(c) = TdispConfig::parse(tdisp, base).map_err(|e| format!("--tdisp: {e}"))? {
        let tdi = Tdi::new(c, "trustdev spdm-responder (dma-copy layout)", ports);
        let mut cfg = trustdev_devices::example::config_space(
            PortType::Endpoint,
            true,
            trustdev_devices::example::DEFAULT_SERIAL,
            Vec::new(),
        );
        security::tdisp::view::assign_bars(&mut cfg, 0xfe00_0000);
        tdi.observe(&cfg);
        let (key, handler) = security::tdisp::TdispFunctions::new(vec![tdi]).handler();
        responder.register_vendor(key, handler);
        eprintln!("trustdev spdm-responder: TDISP for one TDI");
    }
    eprintln!("trustdev spdm-responder: listening on 127.0.0.1:{port} (spdm-emu protocol)");
    spdm_responder::serve_tcp(port, responder).map_err(|e| format!("127.0.0.1:{port}: {e}"))
}

fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

fn vm_spec(a: VmArgs) -> VmSpec {
    VmSpec {
        devices: a.devices,
        kernel: a.kernel,
        initrd: a.initrd,
        append: a.append,
        script: a.script,
        interactive: a.interactive,
        timeout: Duration::from_secs(a.timeout),
        smp: a.smp,
        mem_mb: a.mem,
        iommu: a.iommu,
        sva: a.sva,
        qemu: a.qemu,
        qemu_args: a.qemu_args,
        serial_log: a.serial_log,
        echo: a.verbose,
        modules: a.module,
        bins: a.bin,
        files: a.file,
        tsm: a.tsm,
    }
}

fn report_failure(e: &VmError) -> ExitCode {
    eprintln!("trustdev vm: error: {e}");
    ExitCode::from(3)
}

fn run_vm(a: VmArgs) -> ExitCode {
    let spec = vm_spec(a);
    match vm::run(&spec, stop_flag()) {
        Ok(out) => {
            println!("trustdev vm: {}", out.versions);
            println!(
                "trustdev vm: guest finished in {:.1} s; script exit status {}",
                out.elapsed.as_secs_f64(),
                out.guest_status
            );
            let mut ok = out.guest_status == 0;
            for (name, alive) in &out.servers_survived {
                if *alive {
                    println!("trustdev vm: server {name} survived the guest's poweroff and accepted a new client");
                } else {
                    println!("trustdev vm: server {name} did NOT survive the guest's poweroff");
                    ok = false;
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else if out.guest_status != 0 {
                ExitCode::from(out.guest_status.clamp(1, 255) as u8)
            } else {
                ExitCode::from(4)
            }
        }
        Err(e) => report_failure(&e),
    }
}

/// The demo's guest script: what the guest kernel made of each device.
const DEMO_SCRIPT: &str = include_str!("../../qemu-configs/guest/demo.sh");

fn demo(verbose: bool) -> ExitCode {
    println!("trustdev demo: booting a Debian guest kernel under QEMU 11.1 with trustdev devices:");
    println!("  - an NVMe controller behind a PCIe root port (1 GiB RAM namespace),");
    println!("  - a DMA-copy device behind a root port and one on pcie.0 (an RCiEP),");
    println!("  - a virtual Intel IOMMU so guest user space can drive devices through vfio-pci;");
    println!("  each device has a DOE mailbox with CMA/SPDM and a stable SPDM identity.");
    let script = std::env::temp_dir().join(format!("trustdev-demo-{}.sh", std::process::id()));
    if let Err(e) = std::fs::write(&script, DEMO_SCRIPT) {
        eprintln!("trustdev demo: {}: {e}", script.display());
        return ExitCode::from(3);
    }
    let spec = VmSpec {
        devices: vec![
            DeviceSpec {
                kind: DeviceKind::Nvme,
                placement: Placement::RootPort,
                args: vec!["--size".into(), "1G".into(), "--queues".into(), "4".into()],
            },
            DeviceSpec {
                kind: DeviceKind::DmaCopy,
                placement: Placement::RootPort,
                args: Vec::new(),
            },
            DeviceSpec {
                kind: DeviceKind::DmaCopy,
                placement: Placement::RootBus,
                args: Vec::new(),
            },
        ],
        script: Some(script.clone()),
        iommu: true,
        smp: 2,
        echo: verbose,
        timeout: Duration::from_secs(300),
        ..VmSpec::default()
    };
    let r = vm::run(&spec, stop_flag());
    let _ = std::fs::remove_file(&script);
    match r {
        Ok(out) => {
            println!("trustdev demo: {}", out.versions);
            println!(
                "trustdev demo: guest ran for {:.1} s. What the guest saw and did:\n",
                out.elapsed.as_secs_f64()
            );
            let mut inside = false;
            for l in out.serial.lines() {
                let l = l.trim_end_matches('\r');
                if l.starts_with("TRUSTDEV-BEGIN") {
                    inside = true;
                    continue;
                }
                if l.starts_with("TRUSTDEV-EXIT=") {
                    break;
                }
                if inside {
                    println!("  {l}");
                }
            }
            println!();
            for (name, alive) in &out.servers_survived {
                println!(
                    "trustdev demo: server {name} {} the guest's poweroff",
                    if *alive {
                        "survived"
                    } else {
                        "did NOT survive"
                    }
                );
            }
            if out.guest_status == 0 {
                println!("trustdev demo: all checks in the guest passed");
                ExitCode::SUCCESS
            } else {
                println!(
                    "trustdev demo: the guest reported a failure (status {})",
                    out.guest_status
                );
                ExitCode::from(1)
            }
        }
        Err(e) => report_failure(&e),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            kind,
            socket,
            rciep,
            nvme,
            security,
        } => match serve(&kind, &socket, rciep, &nvme, &security) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trustdev serve: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::SpdmResponder {
            port,
            identity_dir,
            heartbeat,
            ide,
            ide_ports,
            tdisp,
            psk,
        } => match spdm_responder_tcp(port, identity_dir, heartbeat, &ide, ide_ports, &tdisp, &psk)
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trustdev spdm-responder: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Vm(a) => run_vm(a),
        Cmd::Demo { verbose } => demo(verbose),
    }
}
