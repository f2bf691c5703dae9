//! Child processes that cannot outlive the runner: each child gets
//! PR_SET_PDEATHSIG(SIGKILL), and [`Child`] kills and reaps on drop.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// A supervised child process.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    status: Option<ExitStatus>,
}

impl Child {
    /// Spawns `cmd` so that it is killed if this process dies.
    pub fn spawn(name: &str, mut cmd: Command) -> io::Result<Child> {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let inner = cmd.spawn()?;
        log::debug!("started {name} (pid {})", inner.id());
        Ok(Child {
            inner,
            status: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// The exit status if the child has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.inner.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs. Returns the status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        let pid = Pid::from_raw(self.inner.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.inner.kill();
        self.status = self.inner.wait().ok();
        self.status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.inner.kill();
            let _ = self.inner.wait();
        }
    }
}

/// Describes an exit status in words.
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "still running".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
                format!("killed by signal {sig} ({name})")
            }
            _ => format!("{s}"),
        },
    }
}
