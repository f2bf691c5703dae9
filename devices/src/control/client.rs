//! `trustdev ctl`: a client of the control socket.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A connection to a daemon's control socket.
#[derive(Debug)]
pub struct Ctl {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Ctl {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> std::io::Result<Ctl> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Ctl {
            out: s.try_clone()?,
            input: BufReader::new(s),
        })
    }

    /// Sends one request, returns the response (an `ok: false` response is
    /// an `Err` with its error text).
    pub fn request(&mut self, req: &Value) -> std::io::Result<Result<Value, String>> {
        writeln!(self.out, "{req}")?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the control connection",
            ));
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(if v["ok"] == true {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        })
    }
}

/// `trustdev ctl` arguments.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, short = 'c')]
    pub control: PathBuf,
    /// Print the raw JSON response.
    #[arg(long)]
    pub json: bool,
    /// list | faults | state DEV | arm DEV (JSON | NAME KEY=VALUE...) |
    /// disarm DEV [ID] | trace DEV [SINCE]
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    pub words: Vec<String>,
}

/// The request `words` make.
pub fn request_from_words(words: &[String]) -> Result<Value, String> {
    let (cmd, rest) = words.split_first().ok_or("no command")?;
    let dev = || {
        rest.first()
            .cloned()
            .ok_or_else(|| format!("{cmd}: which device?"))
    };
    let num = |w: Option<&String>, what: &str| -> Result<Option<u64>, String> {
        w.map(|w| {
            w.parse()
                .map_err(|_| format!("{cmd}: {what} {w:?} is not a number"))
        })
        .transpose()
    };
    Ok(match cmd.as_str() {
        "list" | "faults" => json!({"cmd": cmd}),
        "state" => json!({"cmd": "state", "device": dev()?}),
        "arm" => json!({"cmd": "arm", "device": dev()?, "fault": fault_from_words(&rest[1..])?}),
        "disarm" => json!({"cmd": "disarm", "device": dev()?, "id": num(rest.get(1), "id")?}),
        "trace" => json!({"cmd": "trace", "device": dev()?, "since": num(rest.get(1), "since")?}),
        other => {
            return Err(format!(
                "unknown command {other:?} (list, faults, state, arm, disarm, trace)"
            ))
        }
    })
}

/// `trustdev ctl`.
pub fn main(a: CtlArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let req = match request_from_words(&a.words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trustdev ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let resp = Ctl::connect(&a.control).and_then(|mut c| c.request(&req));
    match resp {
        Err(e) => {
            eprintln!("trustdev ctl: {}: {e}", a.control.display());
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("trustdev ctl: {e}");
            ExitCode::from(1)
        }
        Ok(Ok(v)) if a.json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(Ok(v)) => {
            match req["cmd"].as_str() {
                Some("list") => {
                    for d in v["devices"].as_array().into_iter().flatten() {
                        println!(
                            "{:<12} {:<10} {} ({} fault(s) armed)",
                            d["name"].as_str().unwrap_or("?"),
                            d["kind"].as_str().unwrap_or("?"),
                            d["socket"].as_str().unwrap_or("?"),
                            d["faults_armed"]
                        );
                    }
                }
                Some("trace") => {
                    for l in v["lines"].as_array().into_iter().flatten() {
                        println!("{}", super::trace::pretty_line(&l.to_string()));
                    }
                }
                Some("state") => println!(
                    "{}",
                    serde_json::to_string_pretty(&v["state"]).unwrap_or_default()
                ),
                _ => {
                    let mut v = v;
                    if let Value::Object(m) = &mut v {
                        m.remove("ok");
                    }
                    println!("{v}");
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// A fault spec from the command line: one JSON object, or `NAME KEY=VALUE...`
/// (a VALUE that parses as JSON is taken as such, else as a string).
pub fn fault_from_words(words: &[String]) -> Result<Value, String> {
    let (first, rest) = words.split_first().ok_or("no fault given")?;
    if first.trim_start().starts_with('{') {
        if !rest.is_empty() {
            return Err("a JSON fault spec is one argument".into());
        }
        return serde_json::from_str(first).map_err(|e| format!("fault spec: {e}"));
    }
    let mut m = serde_json::Map::new();
    m.insert("fault".into(), json!(first));
    for w in rest {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?}: expected KEY=VALUE"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
        m.insert(k.replace('-', "_"), v);
    }
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_to_spec() {
        let w = |s: &[&str]| fault_from_words(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            w(&["nvme-media-error", "lba=[0,7]", "for-ms=100"]).unwrap(),
            json!({"fault": "nvme-media-error", "lba": [0, 7], "for_ms": 100})
        );
        assert_eq!(
            w(&["spdm-error", "request=CHALLENGE", "code=1"]).unwrap(),
            json!({"fault": "spdm-error", "request": "CHALLENGE", "code": 1})
        );
        assert_eq!(
            w(&[r#"{"fault":"doe-error"}"#]).unwrap(),
            json!({"fault": "doe-error"})
        );
        assert!(w(&[]).is_err());
        assert!(w(&["doe-busy", "ms"]).is_err());
    }
}
