//! The IDE step of a connection: the module sets the device's selective
//! stream up (the kernel's pci_ide_stream_* helpers where Linux allows them,
//! else platform-emulated register programming; `TDTSM_IOC_IDE`), the
//! IDE_KM requester programs and arms the keys inside the session, and the
//! module enables the stream, which must then read SECURE. On disconnect the
//! keys are stopped; the module tears the stream down after the verdict.

use super::link::{Failure, SessionStep, StepContext};
use super::uapi::{self, Ide};

/// IDE_KM key programming for one stream, inside the secured session
/// (provided by the IDE_KM requester of the SPDM crate).
pub trait KeyProgrammer {
    /// KEY_PROG of every sub-stream (PR, NPR, CPL) in both directions, then
    /// K_SET_GO; returns a summary.
    fn program_and_go(
        &mut self,
        cx: &mut StepContext<'_>,
        stream_id: u8,
    ) -> Result<String, Failure>;
    /// K_SET_STOP of the stream's keys; returns a summary.
    fn stop(&mut self, cx: &mut StepContext<'_>, stream_id: u8) -> Result<String, Failure>;
}

/// The IDE step; `km` is `None` while no IDE_KM requester is available, and
/// the step then reports what the module could set up and tears it down.
pub struct IdeStep {
    km: Option<Box<dyn KeyProgrammer>>,
    stream_id: Option<u8>,
}

impl IdeStep {
    /// An IDE step with the given key programmer.
    pub fn new(km: Option<Box<dyn KeyProgrammer>>) -> IdeStep {
        IdeStep {
            km,
            stream_id: None,
        }
    }
}

fn mode_name(x: &Ide) -> &'static str {
    match x.mode {
        uapi::IDE_MODE_KERNEL => "the kernel's pci_ide_stream_* helpers",
        uapi::IDE_MODE_PLATFORM => "platform-emulated register programming",
        _ => "nobody",
    }
}

fn ide_failure(step: &'static str, e: std::io::Error, x: &Ide) -> Failure {
    Failure::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        step,
        format!("{e}: {}", x.why()),
    )
}

impl SessionStep for IdeStep {
    fn name(&self) -> &'static str {
        "IDE"
    }

    fn connect(&mut self, cx: &mut StepContext<'_>) -> Result<String, Failure> {
        let id = cx.request.id;
        let (r, x) = cx.dev.ide(id, uapi::IDE_SETUP);
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                return Ok(format!("IDE: {}: link not encrypted", x.why()));
            }
            Err(e) => return Err(ide_failure("IDE stream setup", e, &x)),
        }
        let sid = x.stream_id;
        let Some(km) = self.km.as_mut() else {
            let (_, _) = cx.dev.ide(id, uapi::IDE_TEARDOWN);
            return Ok(format!(
                "IDE: stream {} (Stream ID {sid}) was set up by {}; no IDE_KM requester in this agent, so it was torn down: link not encrypted",
                x.stream_index,
                mode_name(&x)
            ));
        };
        let keys = match km.program_and_go(cx, sid) {
            Ok(s) => s,
            Err(f) => {
                let _ = cx.dev.ide(id, uapi::IDE_TEARDOWN);
                return Err(f);
            }
        };
        let (r, e) = cx.dev.ide(id, uapi::IDE_ENABLE);
        if let Err(err) = r {
            let _ = km.stop(cx, sid);
            let _ = cx.dev.ide(id, uapi::IDE_TEARDOWN);
            return Err(ide_failure("IDE stream enable", err, &e));
        }
        self.stream_id = Some(sid);
        Ok(format!(
            "IDE: {keys}; stream {} (Stream ID {sid}) SECURE via {}",
            x.stream_index,
            mode_name(&x)
        ))
    }

    fn disconnect(&mut self, cx: &mut StepContext<'_>) -> Result<String, Failure> {
        match (self.stream_id.take(), self.km.as_mut()) {
            (Some(sid), Some(km)) => km.stop(cx, sid),
            _ => Ok("IDE: no stream to stop".into()),
        }
    }
}
