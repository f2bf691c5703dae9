//! The IDE step of a connection. Connect: the module sets the device's
//! selective stream up (the kernel's pci_ide_stream_* helpers where Linux
//! allows them, else platform-emulated register programming;
//! `TDTSM_IOC_IDE`), the agent runs IDE_KM inside the session - QUERY (the
//! register image checked against configuration space), KEY_PROG + K_SET_GO
//! of every key of set K0 (fresh random keys, never logged) - and the module
//! enables the stream, which must then read SECURE. Disconnect: the module
//! clears Enable (the Stream ID stays), the agent stops the keys with
//! K_SET_STOP; the session ends after this step and the module tears the
//! stream down after the verdict.

use super::link::{requester_failure, Failure, SessionStep, StepContext};
use super::uapi::{self, Ide};
use crate::sysfs::ConfigFile;
use spdm_responder::idekm::regs::{off, IdeLayout};
use spdm_responder::idekm::{IdeKey, IdeKmError, KeySet};
use spdm_responder::transport::doe::ConfigAccess;

/// The IDE step.
#[derive(Default)]
pub struct IdeStep {
    /// The stream and key set this connection armed.
    armed: Option<(u8, KeySet)>,
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

fn km_failure(step: &'static str, e: IdeKmError) -> Failure {
    match e {
        IdeKmError::Requester {
            step: s,
            slot,
            source,
        } => {
            let f = requester_failure(step, source);
            Failure::new(f.errno, step, format!("{s} {slot}: {}", f.msg))
        }
        other @ IdeKmError::KpAck { .. } => Failure::new(libc::EPROTO, step, other.to_string()),
    }
}

/// The device's IDE registers as configuration space shows them (from the
/// IDE Capability register on, `n` dwords).
fn config_image(bdf: &str, n: usize) -> Result<Vec<u32>, String> {
    let mut cfg = ConfigFile::open(bdf)?;
    let l = IdeLayout::read(&mut cfg)
        .map_err(|e| e.to_string())?
        .ok_or("no IDE capability in configuration space")?;
    (0..n as u16)
        .map(|i| {
            cfg.cfg_read32(l.offset + off::CAP + 4 * i)
                .map_err(|e| e.to_string())
        })
        .collect()
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
        let teardown = |cx: &mut StepContext<'_>| {
            let _ = cx.dev.ide(id, uapi::IDE_TEARDOWN);
        };
        // QUERY: the device's port and its register image.
        let q = match cx.requester.ide_km_query(cx.session, 0) {
            Ok(q) => q,
            Err(e) => {
                teardown(cx);
                return Err(requester_failure("IDE_KM QUERY", e));
            }
        };
        let image = match config_image(&cx.request.bdf(), q.regs.len()) {
            Ok(live) if live == q.regs => "its register image matches configuration space",
            Ok(_) => {
                teardown(cx);
                return Err(Failure::new(
                    libc::EPROTO,
                    "IDE_KM QUERY",
                    "QUERY_RESP's register image differs from configuration space",
                ));
            }
            Err(e) => {
                teardown(cx);
                return Err(Failure::new(libc::EIO, "IDE_KM QUERY", e));
            }
        };
        // K0: fresh keys for every sub-stream and direction.
        if let Err(e) = cx
            .requester
            .ide_km_program_set(cx.session, 0, sid, KeySet::K0, |_| IdeKey::random())
        {
            teardown(cx);
            return Err(km_failure("IDE_KM KEY_PROG/K_SET_GO", e));
        }
        let (r, e) = cx.dev.ide(id, uapi::IDE_ENABLE);
        if let Err(err) = r {
            let _ = cx.requester.ide_km_stop_set(cx.session, 0, sid, KeySet::K0);
            teardown(cx);
            return Err(ide_failure("IDE stream enable", err, &e));
        }
        self.armed = Some((sid, KeySet::K0));
        Ok(format!(
            "IDE: QUERY port {} of max {} ({image}); KEY_PROG + K_SET_GO of the 6 K0 keys (PR, NPR, CPL; RX then TX); selective stream {} (Stream ID {sid}) SECURE via {}",
            q.port_index,
            q.max_port_index,
            x.stream_index,
            mode_name(&x)
        ))
    }

    fn disconnect(&mut self, cx: &mut StepContext<'_>) -> Result<String, Failure> {
        let Some((sid, set)) = self.armed.take() else {
            return Ok("IDE: no stream".into());
        };
        // Enable off first (no traffic on a stream whose keys go away),
        // then the keys; the module tears the registers down afterwards.
        let (r, x) = cx.dev.ide(cx.request.id, uapi::IDE_DISABLE);
        let disabled = match r {
            Ok(()) => format!(
                "stream {} disabled (device state {})",
                x.stream_index, x.ep_state
            ),
            Err(e) => format!("disabling the stream failed ({e}: {})", x.why()),
        };
        cx.requester
            .ide_km_stop_set(cx.session, 0, sid, set)
            .map_err(|e| km_failure("IDE_KM K_SET_STOP", e))?;
        Ok(format!(
            "IDE: {disabled}; K_SET_STOP of the 6 K{} keys of Stream ID {sid}",
            set as u8
        ))
    }
}
