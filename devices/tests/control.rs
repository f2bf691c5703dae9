//! `trustdev run CONFIG.toml` as a user runs it: several devices from one
//! file, their control socket, and the control protocol's hostile-input
//! catalogue (malformed JSON, unknown device, bad fault spec, huge lines,
//! many clients) with the daemon and its devices unaffected; surprise
//! removal through the REQ interrupt; the vfio-user connection drop (at
//! arming, at a message, after a delay) and reconnecting; `trustdev ctl`, `trustdev trace` and
//! `trustdev qemu-args` on it.

mod nvme_common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vfio_user_server::client::Client;
use vfio_user_server::protocol::{irq_index, region, IrqAction, IrqData};

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trustdev")
}

impl Daemon {
    fn start(tag: &str, config: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("td-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("td.toml"), config).unwrap();
        let child = Command::new(bin())
            .arg("run")
            .arg(dir.join("td.toml"))
            .env(
                "TRUSTDEV_IDENTITY_DIR",
                std::env::temp_dir().join("trustdev-control-test-identity"),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.path("ctl.sock").exists() {
            assert!(Instant::now() < deadline, "no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.join(n)
    }

    fn ctl(&self) -> Conn {
        Conn::new(&self.path("ctl.sock"))
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The daemon's log (stderr) so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }
}

struct Conn {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Conn {
    fn new(p: &Path) -> Conn {
        let s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            out: s.try_clone().unwrap(),
            input: BufReader::new(s),
        }
    }

    fn raw(&mut self, line: &[u8]) -> Value {
        self.out.write_all(line).unwrap();
        self.out.write_all(b"\n").unwrap();
        let mut l = String::new();
        self.input.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
    }

    fn req(&mut self, v: Value) -> Value {
        self.raw(v.to_string().as_bytes())
    }
}

const CONFIG: &str = r#"
control = "ctl.sock"
trace = "trace.jsonl"

[[device]]
kind = "nvme"
socket = "nvme0.sock"
size = "16M"
queues = 2

[[device]]
name = "dc"
kind = "dma-copy"
socket = "dc.sock"
rciep = true
[[device.fault]]
fault = "doe-error"
count = 2
"#;

fn vfio_works(sock: &Path) {
    let mut c = Client::connect(sock).expect("vfio-user connect");
    let id = c.read32(region::CONFIG, 0).unwrap();
    assert_ne!(id, 0xffff_ffff);
}

#[test]
fn run_control_and_hostile_catalogue() {
    let mut d = Daemon::start("hostile", CONFIG);
    let mode = std::fs::metadata(d.path("ctl.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut c = d.ctl();
    let list = c.req(json!({"cmd": "list"}));
    assert_eq!(list["ok"], true);
    let names: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nvme0", "dc"]);
    // Faults armed at start.
    let st = c.req(json!({"cmd": "state", "device": "dc"}));
    assert_eq!(st["state"]["faults"][0]["spec"]["fault"], "doe-error");
    assert_eq!(st["state"]["faults"][0]["remaining"], 2);

    // The catalogue: each gets a clear error, the connection goes on.
    let cases: &[(&[u8], &str)] = &[
        (b"{not json", "malformed JSON"),
        (b"[1,2]", "a request is a JSON object"),
        (b"\"list\"", "a request is a JSON object"),
        (br#"{"cmd": 7}"#, "no \"cmd\""),
        (br#"{"cmd": "reboot"}"#, "unknown cmd"),
        (br#"{"cmd": "state"}"#, "no \"device\""),
        (
            br#"{"cmd": "state", "device": "nvme9"}"#,
            "unknown device \"nvme9\"",
        ),
        (br#"{"cmd": "arm", "device": "nvme0"}"#, "bad fault spec"),
        (
            br#"{"cmd": "arm", "device": "nvme0", "fault": {"fault": "doe-bussy"}}"#,
            "unknown variant",
        ),
        (
            br#"{"cmd": "arm", "device": "nvme0", "fault": {"fault": "doe-busy", "ms": "soon"}}"#,
            "bad fault spec",
        ),
        (
            br#"{"cmd": "arm", "device": "nvme0", "fault": {"fault": "doe-error", "count": -1}}"#,
            "count",
        ),
        (
            br#"{"cmd": "arm", "device": "dc", "fault": {"fault": "nvme-fatal"}}"#,
            "cannot show fault",
        ),
        (
            br#"{"cmd": "disarm", "device": "dc", "id": 999}"#,
            "no armed fault 999",
        ),
        (br#"{"cmd": "disarm", "device": "dc", "id": "x"}"#, "bad id"),
        (
            br#"{"cmd": "trace", "device": "dc", "since": -4}"#,
            "bad since",
        ),
        (b"\xff\xfe{}", "malformed JSON"),
    ];
    for (line, want) in cases {
        let r = c.raw(line);
        assert_eq!(r["ok"], false, "{}", String::from_utf8_lossy(line));
        let e = r["error"].as_str().unwrap();
        assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(line));
    }
    // Blank lines are ignored.
    c.out.write_all(b"\n\n").unwrap();
    assert_eq!(c.req(json!({"cmd": "list"}))["ok"], true);

    // A huge line: refused, that connection closed, the daemon fine.
    let mut big = Conn::new(&d.path("ctl.sock"));
    let huge = vec![b'x'; 1 << 20];
    let _ = big.out.write_all(&huge);
    let mut l = String::new();
    big.input.read_line(&mut l).unwrap();
    assert!(l.contains("longer than"), "{l}");
    let mut rest = Vec::new();
    let _ = big.input.read_to_end(&mut rest);

    // Many clients: 32 served at once, the next told so; all fine after.
    let mut held: Vec<Conn> = (0..32).map(|_| d.ctl()).collect();
    for h in held.iter_mut().take(3) {
        assert_eq!(h.req(json!({"cmd": "list"}))["ok"], true);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = UnixStream::connect(d.path("ctl.sock")).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut s = String::new();
    let _ = extra.read_to_string(&mut s);
    assert!(s.contains("too many control clients"), "{s:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let mut c2 = d.ctl();
    assert_eq!(c2.req(json!({"cmd": "list"}))["ok"], true);

    // Devices unaffected: both answer vfio-user.
    vfio_works(&d.path("nvme0.sock"));
    vfio_works(&d.path("dc.sock"));
    assert!(d.alive());

    // Arm, see, disarm.
    let r = c2.req(json!({"cmd": "arm", "device": "nvme0", "fault": {"fault": "doe-busy", "ms": 10, "for_ms": 60000}}));
    let id = r["id"].as_u64().unwrap();
    let st = c2.req(json!({"cmd": "state", "device": "nvme0"}));
    assert_eq!(st["state"]["faults"][0]["id"], id);
    let r = c2.req(json!({"cmd": "disarm", "device": "nvme0", "id": id}));
    assert_eq!(r["disarmed"], 1);
    let tr = c2.req(json!({"cmd": "trace", "device": "nvme0"}));
    assert!(tr["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["disarmed"] == 1));

    // trustdev ctl and trustdev trace, as a user types them.
    let out = Command::new(bin())
        .args(["ctl", "-c"])
        .arg(d.path("ctl.sock"))
        .args(["arm", "dc", "doe-busy", "ms=5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(bin())
        .args(["ctl", "-c"])
        .arg(d.path("ctl.sock"))
        .args(["state", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device"));
    let out = Command::new(bin())
        .arg("trace")
        .arg(d.path("trace.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAULT"), "{text}");
    assert!(d.alive());
}

#[test]
fn surprise_removal_signals_req() {
    let d = Daemon::start("req", CONFIG);
    let mut c = d.ctl();
    // No client: refused with a reason.
    let r = c.req(json!({"cmd": "arm", "device": "dc", "fault": {"fault": "surprise-removal"}}));
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("could not act"));
    let mut v = Client::connect(&d.path("dc.sock")).unwrap();
    let efd = nix::sys::eventfd::EventFd::from_value_and_flags(
        0,
        nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
    )
    .unwrap();
    v.set_irqs(
        irq_index::REQ,
        0,
        1,
        IrqData::Eventfd,
        IrqAction::Trigger,
        &[efd.as_raw_fd()],
    )
    .unwrap();
    let r = c.req(json!({"cmd": "arm", "device": "dc", "fault": {"fault": "surprise-removal"}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(efd.read().unwrap(), 1, "REQ eventfd signalled");
}

#[test]
fn config_errors_and_qemu_args() {
    let dir = std::env::temp_dir().join(format!("td-control-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[device]]\nkind = \"nvme\"\nsocket = \"a.sock\"\nqueues = \"many\"\n",
    )
    .unwrap();
    let out = Command::new(bin()).arg("run").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(&format!("{}:4: device[0].queues:", bad.display())),
        "{e}"
    );
    let good = dir.join("good.toml");
    std::fs::write(&good, CONFIG).unwrap();
    let out = Command::new(bin())
        .arg("qemu-args")
        .arg(&good)
        .arg("--memory")
        .arg("1G")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let a = String::from_utf8_lossy(&out.stdout);
    assert!(
        a.contains("memory-backend-memfd,id=trustdev-mem,size=1G,share=on"),
        "{a}"
    );
    assert!(
        a.contains(&format!(r#""path":"{}""#, dir.join("nvme0.sock").display())),
        "{a}"
    );
    assert!(a.contains(r#""bus":"pcie.0""#), "{a}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nvme_faults_media_latency_fatal_and_admin_trace() {
    let d = Daemon::start("nvme", CONFIG);
    let mut c = d.ctl();
    let (mut drv, _vec) = nvme_common::connect(&d.path("nvme0.sock"), 4 << 20);
    let q = drv.create_io_queues(1, 32).unwrap();
    let data: Vec<u8> = (0..16 * 512).map(|i| (i % 251) as u8).collect();
    drv.write_blocks(q, 1, 0, &data).unwrap();
    // A media error on LBAs 4..=5: reads touching them fail, the rest reads
    // back intact; after count hits the fault is gone.
    let r = c.req(json!({"cmd": "arm", "device": "nvme0", "fault": {"fault": "nvme-media-error", "lba": [4, 5], "count": 2}}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(drv.read_blocks(q, 1, 0, 4 * 512).unwrap(), data[..4 * 512]);
    let e = drv.read_blocks(q, 1, 2, 4 * 512).unwrap_err();
    assert!(e.to_string().contains("SCT 0x2 SC 0x81"), "{e}");
    let e = drv.write_blocks(q, 1, 5, &data[..512]).unwrap_err();
    assert!(e.to_string().contains("SCT 0x2 SC 0x80"), "{e}");
    assert_eq!(
        drv.read_blocks(q, 1, 0, 16 * 512).unwrap(),
        data,
        "usable again"
    );
    let st = c.req(json!({"cmd": "state", "device": "nvme0"}));
    assert_eq!(st["state"]["nvme"]["counters"]["media_errors"], 2);
    // Latency.
    c.req(json!({"cmd": "arm", "device": "nvme0", "fault": {"fault": "nvme-latency", "ms": 300}}));
    let t = Instant::now();
    drv.read_blocks(q, 1, 0, 512).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Controller fatal status on the next I/O command.
    // Namespace change: an outstanding Asynchronous Event Request completes
    // with Notice / Namespace Attribute Changed / log page 04h.
    let aer = trustdev_devices::nvme::spec::Command {
        opcode: 0x0c,
        ..Default::default()
    };
    let cid = drv.submit(0, aer);
    std::thread::sleep(Duration::from_millis(100));
    assert!(drv.poll(0).is_none(), "no event yet");
    let r = c.req(json!({"cmd": "arm", "device": "nvme0", "fault": {"fault": "nvme-ns-change"}}));
    assert_eq!(r["ok"], true, "{r}");
    let done = drv.wait(0, cid).unwrap();
    assert_eq!(done.dw0, 0x0004_0002, "{done:?}");
    // It completes nothing: submit without waiting, see CSTS.CFS.
    c.req(json!({"cmd": "arm", "device": "nvme0", "fault": {"fault": "nvme-fatal"}}));
    let cmd = drv.rw_command(false, 1, 0, nvme_common::IOVA + (3 << 20), 1);
    drv.submit(q, cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c.req(json!({"cmd": "state", "device": "nvme0"}));
        if st["state"]["nvme"]["csts"]["cfs"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "no CSTS.CFS: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        drv.poll(q).is_none(),
        "a failed controller completes nothing"
    );
    // The admin commands in the trace.
    let tr = c.req(json!({"cmd": "trace", "device": "nvme0"}));
    let cmds: Vec<&str> = tr["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["cmd"].as_str())
        .collect();
    assert_eq!(
        cmds,
        [
            "SET_FEATURES",
            "CREATE_CQ",
            "CREATE_SQ",
            "ASYNC_EVENT_REQUEST"
        ]
    );
}

/// A vfio-user client, retried while the server finishes the previous
/// connection (it accepts the next client once the device is reset).
fn reconnect(sock: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(sock).and_then(|mut c| c.read32(region::CONFIG, 0).map(|_| c)) {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn vfio_user_drop_closes_the_connection_and_the_device_comes_back() {
    let mut d = Daemon::start("drop", CONFIG);
    let mut c = d.ctl();
    let sock = d.path("dc.sock");
    let arm = |c: &mut Conn, f: Value| c.req(json!({"cmd": "arm", "device": "dc", "fault": f}));
    // No client: the immediate form is refused with a reason.
    let r = arm(&mut c, json!({"fault": "vfio-user-drop"}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("could not act"),
        "{r}"
    );
    // At arming: the client's next request fails, the device is reset (the
    // Command register written before reads 0 again), the next client works.
    let mut v = reconnect(&sock);
    v.write32(region::CONFIG, 4, 0x0006).unwrap();
    assert_eq!(v.read32(region::CONFIG, 4).unwrap() & 0x6, 0x6);
    let r = arm(&mut c, json!({"fault": "vfio-user-drop"}));
    assert_eq!(
        (r["ok"].clone(), r["id"].clone()),
        (json!(true), json!(0)),
        "{r}"
    );
    assert!(v.read32(region::CONFIG, 0).is_err(), "connection closed");
    drop(v);
    let mut v = reconnect(&sock);
    assert_eq!(
        v.read32(region::CONFIG, 4).unwrap() & 0x6,
        0,
        "device reset"
    );
    // At the 3rd message from arming: two requests answered, the third not.
    let r = arm(&mut c, json!({"fault": "vfio-user-drop", "after": 3}));
    assert_eq!(r["ok"], true, "{r}");
    v.read32(region::CONFIG, 0).unwrap();
    v.read32(region::CONFIG, 0).unwrap();
    assert!(v.read32(region::CONFIG, 0).is_err(), "closed at message 3");
    drop(v);
    let mut v = reconnect(&sock);
    v.read32(region::CONFIG, 0).unwrap();
    v.read32(region::CONFIG, 0).unwrap();
    v.read32(region::CONFIG, 0).unwrap();
    // After a delay: fine before it, closed after it.
    let r = arm(&mut c, json!({"fault": "vfio-user-drop", "delay_ms": 300}));
    assert_eq!(r["ok"], true, "{r}");
    v.read32(region::CONFIG, 0).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(v.read32(region::CONFIG, 0).is_err(), "closed after 300 ms");
    drop(v);
    vfio_works(&sock);
    // The trace and the log say what happened; nothing is left armed.
    let tr = c.req(json!({"cmd": "trace", "device": "dc"}));
    let effects: Vec<&str> = tr["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["fault"] == "vfio-user-drop")
        .filter_map(|l| l["effect"].as_str())
        .collect();
    assert_eq!(
        effects,
        [
            "connection closed at arming",
            "connection closed at message 3 since arming (6 of the connection)",
            "connection closed 300 ms after arming"
        ]
    );
    let st = c.req(json!({"cmd": "state", "device": "dc"}));
    assert!(
        !st["state"]["faults"].to_string().contains("vfio-user-drop"),
        "{st}"
    );
    let log = d.log();
    assert_eq!(
        log.matches("closed the client connection: dc: fault vfio-user-drop")
            .count(),
        2,
        "{log}"
    );
    assert!(
        log.contains(
            "closing the client connection at message 6 (RegionRead): \
             dc: fault vfio-user-drop (message 3 since arming)"
        ),
        "{log}"
    );
    // The other device never noticed.
    vfio_works(&d.path("nvme0.sock"));
    assert!(d.alive());
}

#[test]
fn state_lists_nvme_queues_and_dma_windows() {
    let d = Daemon::start("state", CONFIG);
    let mut c = d.ctl();
    // NVMe: the admin queue pair and one I/O pair, with their positions.
    let (mut drv, _vec) = nvme_common::connect(&d.path("nvme0.sock"), 4 << 20);
    let q = drv.create_io_queues(1, 32).unwrap();
    let data = vec![0x5au8; 4 * 512];
    drv.write_blocks(q, 1, 0, &data).unwrap();
    drv.write_blocks(q, 1, 8, &data).unwrap();
    let st = c.req(json!({"cmd": "state", "device": "nvme0"}));
    let queues = &st["state"]["nvme"]["queues"];
    let sq = queues["sq"].as_array().unwrap();
    let cq = queues["cq"].as_array().unwrap();
    assert_eq!(
        sq.iter()
            .map(|s| s["qid"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1],
        "{queues}"
    );
    assert_eq!(sq[0]["size"], 32, "admin SQ (HostDriver::enable(.., 32))");
    let io = &sq[1];
    assert_eq!(
        (io["size"].clone(), io["cqid"].clone()),
        (json!(32), json!(1))
    );
    assert_eq!(io["tail"], 2, "two commands submitted: {io}");
    assert_eq!(io["head"], 2, "{io}");
    assert_eq!(io["completed"], 2, "{io}");
    let icq = cq.iter().find(|c| c["qid"] == 1).unwrap();
    assert_eq!(
        (
            icq["size"].clone(),
            icq["vector"].clone(),
            icq["ien"].clone()
        ),
        (json!(32), json!(1), json!(true)),
        "{icq}"
    );
    assert_eq!(
        (icq["tail"].clone(), icq["phase"].clone()),
        (json!(2), json!(true)),
        "{icq}"
    );
    // The DMA windows: the driver's memfd window.
    let w = &st["state"]["dma"]["windows"];
    assert_eq!(
        w,
        &json!([{"iova": format!("{:#x}", nvme_common::IOVA), "size": 4 << 20, "prot": "rw", "fd_backed": true}]),
        "{w}"
    );
    // A window without an fd (served by DMA_READ/WRITE messages), read-only.
    let v = &mut drv.bar;
    v.dma_map(
        0x7000_0000,
        0x2000,
        0,
        vfio_user_server::protocol::DmaProt {
            read: true,
            write: false,
        },
        None,
    )
    .unwrap();
    let st = c.req(json!({"cmd": "state", "device": "nvme0"}));
    let w = st["state"]["dma"]["windows"].as_array().unwrap().clone();
    assert_eq!(st["state"]["dma"]["maps"], 2);
    assert_eq!(
        w[0],
        json!({"iova": "0x70000000", "size": 0x2000, "prot": "r", "fd_backed": false}),
        "IOVA order"
    );
}
