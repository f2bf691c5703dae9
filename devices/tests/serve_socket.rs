//! `trustdev serve --socket PATH` never destroys what is at PATH: only a stale
//! socket (nothing listening) is replaced; a regular file, a directory, a
//! symbolic link or a live socket makes it exit with an error naming the path.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vfio_user_server::client::Client;

mod scratch;
use scratch::Scratch;

/// Long enough for a loaded machine; a healthy run takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);

fn serve(socket: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_trustdev"))
        .args(["serve", "dma-copy", "--no-spdm", "--socket"])
        .arg(socket)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trustdev serve")
}

/// Waits for the child to exit on its own (it must refuse the path).
fn refused(socket: &Path) -> Output {
    let mut child = serve(socket);
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("trustdev serve kept running on {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{:?}", out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&*socket.to_string_lossy()),
        "the error names the path: {err}"
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn regular_file_directory_and_symlinks_survive() {
    let d = Scratch::new("sock-files");
    let image = d.path("disk.img");
    let data: Vec<u8> = (0..64 << 10).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&image, &data).unwrap();
    let out = refused(&image);
    assert!(stderr(&out).contains("regular file"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&image).unwrap(), data, "the file is intact");

    let dir = d.path("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"x").unwrap();
    let out = refused(&dir);
    assert!(stderr(&out).contains("directory"), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.join("inside")).unwrap(), b"x");

    let link = d.path("link.sock");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let out = refused(&link);
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(std::fs::read_link(&link).unwrap(), image);
    assert_eq!(std::fs::read(&image).unwrap(), data);
}

#[test]
fn live_socket_is_refused() {
    let d = Scratch::new("sock-live");
    let sock = d.path("dev.sock");
    let live = UnixListener::bind(&sock).unwrap();
    let out = refused(&sock);
    assert!(stderr(&out).contains("listening"), "{}", stderr(&out));
    // The other server's socket is still there and still answers.
    let _c = UnixStream::connect(&sock).unwrap();
    live.accept().unwrap();
}

#[test]
fn stale_socket_is_replaced_and_served() {
    let d = Scratch::new("sock-stale");
    let sock = d.path("dev.sock");
    // A socket file left behind by a server that died: nothing listens.
    drop(UnixListener::bind(&sock).unwrap());
    assert_ne!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    let mut child = serve(&sock);
    let deadline = Instant::now() + PATIENCE;
    let mut client = loop {
        if let Ok(c) = Client::connect(&sock) {
            break c;
        }
        assert!(child.try_wait().unwrap().is_none(), "trustdev serve exited");
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    // Ours, created 0600 (the stale one had the default umask's mode).
    assert_eq!(meta.mode() & 0o777, 0o600);
    client.read32(7, 0).unwrap();
    drop(client);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!sock.exists(), "the server removes its socket on exit");
}
