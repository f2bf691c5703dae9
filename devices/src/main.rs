//! `trustdev`: serve trustdev devices over vfio-user, boot guests against
//! them, and show what the guest kernel does with them.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use trustdev_devices::control::{self as ctl, config::Config, DeviceControl};
use trustdev_devices::kinds::KindError;
use trustdev_devices::kinds::{self, PskArgs, KINDS};
use trustdev_devices::security;
use trustdev_devices::security::ide::{Ide, IdeConfig};
use trustdev_devices::security::tdisp::{IdeRequirement, Tdi, TdispConfig};
use trustdev_devices::vm::{self, DeviceSpec, VmError, VmSpec};
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
    #[command(
        subcommand,
        override_usage = "trustdev serve KIND --socket PATH [OPTIONS]"
    )]
    Serve(ServeKind),
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
    /// Serve every device a TOML file describes from one process (see
    /// docs/CONTROL.md), with a control socket and a decoded trace.
    Run {
        /// The configuration file.
        config: PathBuf,
        /// Control socket (overrides the file's `control`).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Trace file, JSON lines, created new (overrides the file's `trace`).
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Talk to a daemon's control socket: list, state DEV, arm DEV FAULT...,
    /// disarm DEV [ID], trace DEV, faults.
    Ctl(ctl::client::CtlArgs),
    /// Pretty-print a trace file (`-`: stdin).
    Trace {
        /// The JSON-lines trace.
        file: PathBuf,
    },
    /// Print the QEMU arguments that attach a configuration's devices (for
    /// virtme-ng's `--qemu-opts` or your own QEMU command line).
    QemuArgs {
        /// The configuration file.
        config: PathBuf,
        /// Also print q35 and a shared memfd memory backend of this size
        /// (vfio-user needs guest RAM the server can map), e.g. 2G.
        #[arg(long)]
        memory: Option<String>,
    },
    /// Boot a guest with trustdev devices and explain what its kernel did.
    Demo {
        /// Echo the guest console.
        #[arg(long)]
        verbose: bool,
    },
}

/// `trustdev serve KIND ...`: the kind and its arguments, parsed by the
/// kind's entry in the device-kind registry.
#[derive(Subcommand)]
enum ServeKind {
    #[command(external_subcommand)]
    Kind(Vec<String>),
}

/// Options of `trustdev serve` common to every kind (besides the security
/// options, which the kind registry adds).
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Socket path (created 0600; only a stale socket there is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Present a Root Complex Integrated Endpoint (for q35's pcie.0).
    #[arg(long)]
    rciep: bool,
    #[command(flatten)]
    control: ServeControlArgs,
}

/// Control-plane options of `trustdev serve` (one device).
#[derive(clap::Args, Debug)]
struct ServeControlArgs {
    /// Control socket (created 0600; protocol in docs/CONTROL.md).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Decoded trace, JSON lines, in this new file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Arm a fault at start: a JSON fault spec (repeatable; docs/CONTROL.md).
    #[arg(long, value_name = "JSON")]
    fault: Vec<String>,
    /// The device's name on the control socket and in the trace (default:
    /// KIND0).
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
struct VmArgs {
    /// Give each device server a control socket DIR/KIND<index>.ctl
    /// (`trustdev ctl -c` arms faults while the guest runs) and a decoded
    /// trace DIR/KIND<index>.trace.jsonl.
    #[arg(long, value_name = "DIR")]
    control_dir: Option<PathBuf>,
    /// Devices from a `trustdev run` configuration file (their sockets are
    /// the runner's; their faults are armed at start), before any -d.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device to attach: KIND[:OPT,...] (repeatable): `rciep` puts it on
    /// pcie.0 (default: behind its own pcie-root-port); any other OPT is
    /// KEY=VALUE or KEY, a security option or one of the kind's own, as
    /// `trustdev serve KIND --KEY [VALUE]` takes it (`,,` stands for a comma
    /// inside a value). `--device help` lists every kind's options.
    #[arg(long = "device", short = 'd', value_parser = parse_device)]
    devices: Vec<DeviceArg>,
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

fn parse_file_arg(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once(':') {
        Some((src, dest)) if !src.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(src), dest.to_string()))
        }
        _ => Err(format!("{s:?}: expected HOST_PATH:/GUEST/PATH")),
    }
}

/// A `trustdev vm --device` value.
#[derive(Clone)]
enum DeviceArg {
    /// `help`: list the kinds and their options.
    Help,
    /// A device.
    Device(DeviceSpec),
}

fn parse_device(s: &str) -> Result<DeviceArg, String> {
    if s == "help" {
        return Ok(DeviceArg::Help);
    }
    s.parse()
        .map(DeviceArg::Device)
        .map_err(|e: KindError| e.to_string())
}

/// The kinds `trustdev serve --help` lists.
fn kinds_help() -> String {
    let mut s = String::from("Device kinds:\n");
    for k in KINDS {
        s.push_str(&format!("  {:<10} {}\n", k.name, k.about));
    }
    s.push_str("\n`trustdev serve KIND --help` lists a kind's options.");
    s
}

/// The `trustdev serve KIND` command line parser of `kind`.
fn serve_command(kind: &kinds::DeviceKind) -> clap::Command {
    ServeArgs::augment_args(kind.augment(clap::Command::new(kind.name)))
        .bin_name(format!("trustdev serve {}", kind.name))
        .about(kind.about)
}

/// `trustdev serve KIND ARGS...`: parses the kind's options and serves it,
/// with its control socket, trace and faults when asked.
fn serve(argv: &[String]) -> Result<(), String> {
    let (name, _) = argv.split_first().ok_or("no device kind")?;
    let kind = kinds::find(name).map_err(|e| e.to_string())?;
    let m = serve_command(kind)
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| e.exit());
    let args = ServeArgs::from_arg_matches(&m).map_err(|e| e.to_string())?;
    let c = &args.control;
    let sink = match &c.trace {
        Some(p) => ctl::trace::TraceSink::to_file(p)
            .map_err(|e| format!("--trace {}: {e}", p.display()))?,
        None => ctl::trace::TraceSink::default(),
    };
    let dev_name = c.name.clone().unwrap_or_else(|| format!("{}0", kind.name));
    let control = DeviceControl::new(&dev_name, kind.name, args.socket.clone(), sink);
    let dev = kind
        .build_controlled(&m, &args.socket, port_type(args.rciep), Some(&control))
        .map_err(|e| e.to_string())?;
    for f in &c.fault {
        let v: serde_json::Value =
            serde_json::from_str(f).map_err(|e| format!("--fault {f}: {e}"))?;
        let spec =
            ctl::fault::FaultSpec::from_value(&v).map_err(|e| format!("--fault {f}: {e}"))?;
        control.arm(spec).map_err(|e| format!("--fault {f}: {e}"))?;
    }
    let registry = ctl::Registry::default();
    registry.add(Arc::clone(&control));
    let _socket = match &c.control {
        Some(p) => Some(
            ctl::socket::ControlSocket::start(p, registry)
                .map_err(|e| format!("--control {}: {e}", p.display()))?,
        ),
        None => None,
    };
    run_server(dev, &args.socket, &control)
}

fn port_type(rciep: bool) -> PortType {
    if rciep {
        PortType::RcIntegratedEndpoint
    } else {
        PortType::Endpoint
    }
}

fn run_server<D: vfio_user_server::Device>(
    dev: D,
    socket: &Path,
    control: &Arc<DeviceControl>,
) -> Result<(), String> {
    // Server errors name the socket path themselves.
    let mut server = Server::new(dev, socket).map_err(|e| e.to_string())?;
    ctl::daemon::probe_server(control, &server);
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

/// Checks a configured device's `trustdev serve KIND` options with the
/// registry's parser.
fn validate_options(kind: &'static kinds::DeviceKind, args: &[String]) -> Result<(), String> {
    kind.check_args(args).map_err(|e| e.to_string())
}

/// `trustdev run CONFIG`.
fn run_config(path: &Path, control: Option<PathBuf>, trace: Option<PathBuf>) -> Result<(), String> {
    let mut cfg = Config::load(path, &validate_options).map_err(|e| e.to_string())?;
    cfg.control = control.or(cfg.control);
    cfg.trace = trace.or(cfg.trace);
    let build = |d: &ctl::config::DeviceConf, c: &Arc<DeviceControl>| {
        let socket = d.socket.clone().unwrap_or_default();
        let m = d
            .kind
            .augment(clap::Command::new(d.kind.name).no_binary_name(true))
            .try_get_matches_from(&d.args)
            .map_err(|e| e.to_string())?;
        let port = port_type(d.placement == vm::Placement::RootBus);
        d.kind
            .build_controlled(&m, &socket, port, Some(c))
            .map_err(|e| e.to_string())
    };
    let daemon = ctl::daemon::Daemon::start(&cfg, &build)?;
    for d in daemon.registry.all() {
        eprintln!(
            "trustdev run: {} ({}) on {}",
            d.name,
            d.kind,
            d.socket.display()
        );
    }
    if let Some(c) = &cfg.control {
        eprintln!("trustdev run: control socket {}", c.display());
    }
    let stop = stop_flag();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.stop();
    daemon.wait()
}

fn exit(cmd: &str, r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trustdev {cmd}: {e}");
            ExitCode::from(1)
        }
    }
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

fn vm_spec(a: VmArgs) -> Result<VmSpec, String> {
    let mut devices = Vec::new();
    if let Some(path) = &a.config {
        let cfg = Config::load(path, &validate_options).map_err(|e| e.to_string())?;
        for d in &cfg.devices {
            let mut spec = d.vm_spec();
            spec.args.extend(["--name".to_string(), d.name.clone()]);
            for f in &d.faults {
                spec.args
                    .extend(["--fault".to_string(), f.to_value().to_string()]);
            }
            devices.push(spec);
        }
    }
    devices.extend(a.devices.into_iter().filter_map(|d| match d {
        DeviceArg::Device(d) => Some(d),
        DeviceArg::Help => None,
    }));
    Ok(VmSpec {
        devices,
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
        control_dir: a.control_dir,
    })
}

fn report_failure(e: &VmError) -> ExitCode {
    eprintln!("trustdev vm: error: {e}");
    ExitCode::from(3)
}

fn run_vm(a: VmArgs) -> ExitCode {
    if a.devices.iter().any(|d| matches!(d, DeviceArg::Help)) {
        print!("{}", kinds::vm_device_help());
        return ExitCode::SUCCESS;
    }
    let spec = match vm_spec(a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trustdev vm: {e}");
            return ExitCode::from(2);
        }
    };
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

/// The demo's devices: an NVMe controller and a DMA-copy device behind root
/// ports, a second DMA-copy device on pcie.0.
fn demo_devices() -> Vec<DeviceSpec> {
    ["nvme:size=1G,queues=4", "dma-copy", "dma-copy:rciep"]
        .iter()
        .map(|s| s.parse().expect("the demo's devices are valid"))
        .collect()
}

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
        devices: demo_devices(),
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
    let matches = Cli::command()
        .mut_subcommand("serve", |s| s.after_help(kinds_help()))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.cmd {
        Cmd::Serve(ServeKind::Kind(argv)) => match serve(&argv) {
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
        Cmd::Run {
            config,
            control,
            trace,
        } => exit("run", run_config(&config, control, trace)),
        Cmd::Ctl(a) => ctl::client::main(a),
        Cmd::Trace { file } => exit("trace", ctl::trace::pretty_file(&file)),
        Cmd::QemuArgs { config, memory } => exit(
            "qemu-args",
            ctl::config::print_qemu_args(&config, memory.as_deref(), &validate_options),
        ),
        Cmd::Demo { verbose } => demo(verbose),
    }
}
