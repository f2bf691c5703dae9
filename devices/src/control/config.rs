//! `trustdev run CONFIG.toml` configuration files: several devices, each
//! with its kind, socket, the kind's own `trustdev serve KIND` options and
//! the faults armed at start. A device table's keys other than `name`,
//! `kind`, `socket`, `rciep` and `fault` ARE `trustdev serve KIND` options
//! (`size = "64M"` is `--size 64M`, `no-spdm = true` is `--no-spdm`, an
//! array repeats the option): one option parser, the kind registry's.
//!
//! ```toml
//! control = "/run/trustdev/ctl.sock"   # optional: the control socket
//! trace = "/run/trustdev/trace.jsonl"  # optional: the decoded trace
//!
//! [[device]]
//! name = "nvme0"                # default: KIND + index
//! kind = "nvme"
//! socket = "/run/trustdev/nvme0.sock"
//! size = "64M"
//! queues = 4
//! [[device.fault]]
//! fault = "nvme-media-error"
//! lba = [0, 7]
//!
//! [[device]]
//! kind = "dma-copy"
//! socket = "/run/trustdev/dma0.sock"
//! rciep = true
//! ```
//!
//! Errors name the file, the line and the key.

use super::fault::FaultSpec;
use crate::kinds::{self, DeviceKind};
use crate::vm::{DeviceSpec, Placement};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A configuration error: where and what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {key}: {msg}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The key (dotted path).
    pub key: String,
    /// What is wrong.
    pub msg: String,
}

/// Checks `trustdev serve KIND` arguments (without `--socket`) with the
/// kind's parser; the binary provides it (the common serve options live
/// there).
pub type Validator<'a> = &'a dyn Fn(&'static DeviceKind, &[String]) -> Result<(), String>;

/// One configured device.
#[derive(Debug, Clone)]
pub struct DeviceConf {
    /// Its name (unique in the file).
    pub name: String,
    /// Its kind.
    pub kind: &'static DeviceKind,
    /// Its socket (may be absent for `trustdev vm --config`, which picks one).
    pub socket: Option<PathBuf>,
    /// Topology in a VM.
    pub placement: Placement,
    /// `trustdev serve KIND` arguments (options; no `--socket`, no `--rciep`).
    pub args: Vec<String>,
    /// Faults armed at start.
    pub faults: Vec<FaultSpec>,
}

impl DeviceConf {
    /// The device as `trustdev vm` attaches it.
    pub fn vm_spec(&self) -> DeviceSpec {
        DeviceSpec {
            kind: self.kind,
            placement: self.placement,
            args: self.args.clone(),
        }
    }
}

/// A parsed configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file.
    pub path: PathBuf,
    /// The control socket.
    pub control: Option<PathBuf>,
    /// The trace file.
    pub trace: Option<PathBuf>,
    /// The devices.
    pub devices: Vec<DeviceConf>,
}

type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    control: Option<Spanned<PathBuf>>,
    trace: Option<Spanned<PathBuf>>,
    #[serde(default)]
    device: Vec<Spanned<Table>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Resolves a path relative to the configuration file's directory.
fn relative_to(base: &Path, p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    };
    std::path::absolute(&p).unwrap_or(p)
}

/// A device option's value with the file path in it resolved relative to
/// the configuration file, like `socket`: `identity-dir`, `ide-trace` and
/// `file` are paths, `psk` may be `@FILE`, `ns` may be `file:PATH[:SIZE]`.
/// Other values are returned as they are.
fn option_value_relative(base: &Path, key: &str, value: &str) -> String {
    let resolve = |p: &str| relative_to(base, Path::new(p)).display().to_string();
    match key.replace('_', "-").as_str() {
        "identity-dir" | "ide-trace" | "file" => resolve(value),
        "psk" => match value.strip_prefix('@') {
            Some(f) => format!("@{}", resolve(f)),
            None => value.to_string(),
        },
        "ns" => match value.strip_prefix("file:") {
            Some(rest) => {
                // file:PATH or file:PATH:SIZE (as NsBacking parses it).
                let (p, size) = match rest.rsplit_once(':') {
                    Some((p, sz)) if crate::nvme::options::parse_size(sz).is_ok() => (p, Some(sz)),
                    _ => (rest, None),
                };
                match size {
                    Some(sz) => format!("file:{}:{sz}", resolve(p)),
                    None => format!("file:{}", resolve(p)),
                }
            }
            None => value.to_string(),
        },
        _ => value.to_string(),
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path, validate: Validator<'_>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            key: "-".into(),
            msg: e.to_string(),
        })?;
        Config::parse(path, &text, validate)
    }

    /// Checks the text of a configuration file named `path`.
    pub fn parse(path: &Path, text: &str, validate: Validator<'_>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let at = |span: std::ops::Range<usize>, key: &str, msg: String| ConfigError {
            file: file.clone(),
            line: line_of(text, span.start),
            key: key.to_string(),
            msg,
        };
        let f: FileToml = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            at(0..0, "-", e.message().trim().to_string()).with_line(line)
        })?;
        let mut devices: Vec<DeviceConf> = Vec::new();
        for (i, dev) in f.device.iter().enumerate() {
            let dspan = dev.span();
            let table = dev.get_ref();
            let get = |k: &str| table.iter().find(|(key, _)| key.get_ref() == k);
            let here = |k: &str| format!("device[{i}].{k}");
            let kind_v =
                get("kind").ok_or_else(|| at(dspan.clone(), &here("kind"), "missing".into()))?;
            let kind_name =
                kind_v.1.get_ref().as_str().ok_or_else(|| {
                    at(kind_v.1.span(), &here("kind"), "expected a string".into())
                })?;
            let kind = kinds::find(kind_name)
                .map_err(|e| at(kind_v.1.span(), &here("kind"), e.to_string()))?;
            let name = match get("name") {
                Some((_, v)) => {
                    let n = v
                        .get_ref()
                        .as_str()
                        .filter(|n| valid_name(n))
                        .ok_or_else(|| {
                            at(
                                v.span(),
                                &here("name"),
                                "expected a name of letters, digits, - and _".into(),
                            )
                        })?;
                    n.to_string()
                }
                None => format!("{}{i}", kind.name),
            };
            if let Some(other) = devices.iter().find(|d| d.name == name) {
                return Err(at(
                    get("name").map_or(dspan.clone(), |(_, v)| v.span()),
                    &here("name"),
                    format!(
                        "device name {:?} used twice (also {})",
                        name, other.kind.name
                    ),
                ));
            }
            let mut conf = DeviceConf {
                name,
                kind,
                socket: None,
                placement: Placement::RootPort,
                args: Vec::new(),
                faults: Vec::new(),
            };
            for (k, v) in table {
                let key = k.get_ref().as_str();
                let kp = here(key);
                let vspan = v.span();
                match key {
                    "kind" | "name" => {}
                    "socket" => {
                        let s = v.get_ref().as_str().ok_or_else(|| {
                            at(vspan.clone(), &kp, "expected a path string".into())
                        })?;
                        conf.socket = Some(relative_to(path, Path::new(s)));
                    }
                    "rciep" => {
                        let b = v.get_ref().as_bool().ok_or_else(|| {
                            at(vspan.clone(), &kp, "expected true or false".into())
                        })?;
                        if b {
                            conf.placement = Placement::RootBus;
                        }
                    }
                    "fault" => {
                        let arr = v.get_ref().as_array().ok_or_else(|| {
                            at(
                                vspan.clone(),
                                &kp,
                                "expected [[device.fault]] tables".into(),
                            )
                        })?;
                        for (j, f) in arr.iter().enumerate() {
                            let json = serde_json::to_value(f).map_err(|e| {
                                at(vspan.clone(), &format!("{kp}[{j}]"), e.to_string())
                            })?;
                            let spec = FaultSpec::from_value(&json).map_err(|e| {
                                at(vspan.clone(), &format!("{kp}[{j}]"), e.to_string())
                            })?;
                            if spec.fault.immediate() {
                                return Err(at(
                                    vspan.clone(),
                                    &format!("{kp}[{j}]"),
                                    format!(
                                        "fault {} acts when armed, on a running device: arm it \
                                         with `trustdev ctl` instead",
                                        spec.fault.name()
                                    ),
                                ));
                            }
                            conf.faults.push(spec);
                        }
                    }
                    _ => {
                        let mut words =
                            option_args(key, v.get_ref()).map_err(|m| at(k.span(), &kp, m))?;
                        // [--key, value]*: values naming files are relative
                        // to this file, like `socket`.
                        for w in words.iter_mut().skip(1).step_by(2) {
                            *w = option_value_relative(path, key, w);
                        }
                        validate(kind, &words).map_err(|m| at(k.span(), &kp, m))?;
                        conf.args.extend(words);
                    }
                }
            }
            validate(kind, &conf.args)
                .map_err(|m| at(dspan.clone(), &format!("device[{i}]"), m))?;
            devices.push(conf);
        }
        if devices.is_empty() {
            return Err(ConfigError {
                file,
                line: 1,
                key: "device".into(),
                msg: "no [[device]] tables".into(),
            });
        }
        Ok(Config {
            path: path.to_path_buf(),
            control: f.control.map(|c| relative_to(path, c.get_ref())),
            trace: f.trace.map(|t| relative_to(path, t.get_ref())),
            devices,
        })
    }

    /// Checks that every device has a socket (what `trustdev run` needs).
    pub fn require_sockets(&self) -> Result<(), ConfigError> {
        for (i, d) in self.devices.iter().enumerate() {
            if d.socket.is_none() {
                return Err(ConfigError {
                    file: self.path.display().to_string(),
                    line: 0,
                    key: format!("device[{i}].socket"),
                    msg: format!("device {} has no socket", d.name),
                });
            }
        }
        Ok(())
    }
}

impl ConfigError {
    fn with_line(mut self, line: usize) -> Self {
        self.line = line;
        self
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `trustdev serve` arguments for option `key = value`.
fn option_args(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let flag = format!("--{}", key.replace('_', "-"));
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(format!(
                "expected a string or number, not {}",
                other.type_str()
            )),
        }
    };
    Ok(match value {
        toml::Value::Boolean(true) => vec![flag],
        toml::Value::Boolean(false) => vec![],
        toml::Value::Array(a) => {
            let mut out = Vec::new();
            for v in a {
                out.push(flag.clone());
                out.push(scalar(v)?);
            }
            out
        }
        v => vec![flag, scalar(v)?],
    })
}

/// `trustdev qemu-args CONFIG`: prints the QEMU arguments attaching the
/// configured devices (with `memory`, also q35 with a shared memfd memory
/// backend of that size, which vfio-user needs).
pub fn print_qemu_args(
    path: &Path,
    memory: Option<&str>,
    validate: Validator<'_>,
) -> Result<(), String> {
    let cfg = Config::load(path, validate).map_err(|e| e.to_string())?;
    cfg.require_sockets().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(m) = memory {
        out.extend([
            "-machine".to_string(),
            "q35,memory-backend=trustdev-mem".into(),
            "-m".into(),
            m.to_string(),
            "-object".into(),
            format!("memory-backend-memfd,id=trustdev-mem,size={m},share=on"),
        ]);
    }
    let devs: Vec<crate::vm::qemu::QemuDevice> = cfg
        .devices
        .iter()
        .map(|d| crate::vm::qemu::QemuDevice {
            socket: d.socket.clone().unwrap_or_default(),
            placement: d.placement,
        })
        .collect();
    out.extend(crate::vm::qemu::device_args(&devs, false));
    let quoted: Vec<String> = out.iter().map(|a| shell_quote(a)).collect();
    println!("{}", quoted.join(" "));
    Ok(())
}

/// `a` quoted for a POSIX shell when it needs to be.
fn shell_quote(a: &str) -> String {
    if a.chars()
        .all(|c| c.is_ascii_alphanumeric() || ",.=_-/:+".contains(c))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A validator that knows `--size VALUE` (needs a number+unit) and `--no-spdm`.
    fn validate(_k: &'static DeviceKind, args: &[String]) -> Result<(), String> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--no-spdm" | "--no-shadow-doorbells" => {}
                "--size" | "--ns" => {
                    let v = it.next().ok_or("--size needs a value")?;
                    if !v.ends_with('M') {
                        return Err(format!("invalid value {v:?} for '{a}'"));
                    }
                }
                other => return Err(format!("unexpected argument '{other}'")),
            }
        }
        Ok(())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/td.toml"), text, &validate)
    }

    #[test]
    fn file_paths_in_options_are_relative_to_the_file() {
        let any = |_: &'static DeviceKind, _: &[String]| Ok(());
        let c = Config::parse(
            Path::new("/etc/td/devices.toml"),
            r#"[[device]]
kind = "nvme"
identity-dir = "identity/disk"
ide-trace = "/var/ide.pcap"
psk = "@psk.bin"
file = "disk.img"
ns = ["file:ns1.img:16M", "file:ns2.img", "ram:1M"]

[[device]]
kind = "dma-copy"
psk = "00112233"
"#,
            &any,
        )
        .unwrap();
        assert_eq!(
            c.devices[0].args,
            [
                "--file",
                "/etc/td/disk.img",
                "--ide-trace",
                "/var/ide.pcap",
                "--identity-dir",
                "/etc/td/identity/disk",
                "--ns",
                "file:/etc/td/ns1.img:16M",
                "--ns",
                "file:/etc/td/ns2.img",
                "--ns",
                "ram:1M",
                "--psk",
                "@/etc/td/psk.bin",
            ]
        );
        // A key, not a file: left alone.
        assert_eq!(c.devices[1].args, ["--psk", "00112233"]);
    }

    #[test]
    fn devices_options_and_faults() {
        let c = parse(
            r#"control = "ctl.sock"
[[device]]
kind = "nvme"
socket = "/tmp/n.sock"
size = "64M"
ns = ["1M", "2M"]
no-spdm = true
no-shadow-doorbells = false
[[device.fault]]
fault = "nvme-media-error"
lba = [0, 7]

[[device]]
name = "dc"
kind = "dma-copy"
socket = "dc.sock"
rciep = true
"#,
        )
        .unwrap();
        assert_eq!(c.control.as_deref(), Some(Path::new("/etc/ctl.sock")));
        let n = &c.devices[0];
        assert_eq!(n.name, "nvme0");
        assert_eq!(
            n.args,
            ["--no-spdm", "--ns", "1M", "--ns", "2M", "--size", "64M"]
        );
        assert_eq!(n.faults.len(), 1);
        assert_eq!(n.placement, Placement::RootPort);
        let d = &c.devices[1];
        assert_eq!(d.socket.as_deref(), Some(Path::new("/etc/dc.sock")));
        assert_eq!(d.placement, Placement::RootBus);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("[[device]]\nkind = \"nvme\"\nsize = \"64G\"\n", 3, "device[0].size", "invalid value"),
            ("[[device]]\nkind = \"nvme\"\n\nbogus = 1\n", 4, "device[0].bogus", "unexpected argument"),
            ("[[device]]\nkind = \"toaster\"\n", 2, "device[0].kind", "unknown device kind"),
            ("[[device]]\nsocket = \"x\"\n", 1, "device[0].kind", "missing"),
            ("[[device]]\nkind = \"nvme\"\n[[device.fault]]\nfault = \"doe-bussy\"\n", 3, "device[0].fault[0]", "bad fault spec"),
            ("[[device]]\nkind = \"nvme\"\n[[device.fault]]\nfault = \"surprise-removal\"\n", 3, "device[0].fault[0]", "acts when armed"),
            ("sockets = 1\n[[device]]\nkind = \"nvme\"\n", 1, "-", "unknown field"),
            ("[[device]]\nkind = \"nvme\"\nsize = [\n", 3, "-", ""),
            ("[[device]]\nkind = \"nvme\"\nname = \"a\"\n[[device]]\nkind = \"dma-copy\"\nname = \"a\"\n", 6, "device[1].name", "used twice"),
            ("", 1, "device", "no [[device]]"),
        ];
        for (text, line, key, msg) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.file, "/etc/td.toml");
            assert_eq!((e.line, e.key.as_str()), (*line, *key), "{text}: {e}");
            assert!(e.msg.contains(msg), "{text}: {e}");
        }
    }
}
