//! How the control plane attaches to the blocks every device may have: its
//! DMA maps and REQ interrupt, its DOE mailbox, its IDE port (streams, key
//! slot states, never a key; stream events in the trace) and its TDI.

use super::doe::AltIdentity;
use super::fault::{End, Fault};
use super::DeviceControl;
use crate::kinds::SecuritySetup;
use crate::security::ide::link::FaultTarget;
use crate::security::ide::{Ide, IdeEvent, LinkEnd, WireFault};
use crate::security::tdisp::Tdi;
use serde_json::json;
use spdm_responder::CmaDeviceName;
use std::path::PathBuf;
use std::sync::Arc;
use vfio_user_server::dma::GuestMemory;
use vfio_user_server::pci::ExtCap;
use vfio_user_server::DeviceContext;

/// What every device has: its DMA windows in the state, surprise removal
/// through its REQ interrupt, the vfio-user connection drop (acted on by
/// the server's connection, attached with the server:
/// [`super::daemon::probe_server`]).
pub fn device(ctl: &DeviceControl, ctx: &DeviceContext) {
    let mem: Arc<GuestMemory> = Arc::clone(&ctx.memory);
    ctl.probe(
        "dma",
        Box::new(move || {
            let w = mem.windows();
            json!({
                "maps": w.len(),
                "windows": w.iter().map(|w| json!({
                    "iova": format!("{:#x}", w.iova),
                    "size": w.size,
                    "prot": match (w.read, w.write) {
                        (true, true) => "rw",
                        (true, false) => "r",
                        (false, true) => "w",
                        (false, false) => "-",
                    },
                    "fd_backed": w.fd_backed,
                })).collect::<Vec<_>>(),
            })
        }),
    );
    ctl.attach_interrupts(Arc::clone(&ctx.irqs));
    ctl.support(&["vfio-user-drop"]);
}

/// The security blocks of a device: its DOE mailbox behind the controlled
/// front (with SPDM faults when it has an identity named `name` under the
/// CAs in `dir`), its IDE port and TDI in the state and the trace.
pub fn security(
    ctl: &Arc<DeviceControl>,
    caps: &mut [ExtCap],
    setup: &SecuritySetup,
    name: CmaDeviceName,
    dir: PathBuf,
) {
    let alt = setup.identity.as_ref().map(|_| AltIdentity {
        name,
        config: setup.config.clone(),
        dir,
    });
    ctl.wrap_doe(caps, alt);
    if let Some(i) = &setup.ide {
        ide(ctl, i);
    }
    if let Some(t) = &setup.tdi {
        tdi(ctl, t);
    }
}

/// The TDI's state (and why it is in ERROR); the `tdi-error` fault.
pub fn tdi(ctl: &DeviceControl, tdi: &Arc<Tdi>) {
    let t = Arc::clone(tdi);
    ctl.action(
        &["tdi-error"],
        Box::new(move |f| Ok(*f == Fault::TdiError && t.inject_error())),
    );
    let t = Arc::clone(tdi);
    ctl.probe(
        "tdi",
        Box::new(move || {
            json!({
                "state": format!("{:?}", t.state()),
                "error_reason": t.error_reason().map(|r| format!("{r:?}")),
            })
        }),
    );
}

/// IDE streams and key slots in the state, stream changes and integrity
/// failures in the trace.
pub fn ide(ctl: &Arc<DeviceControl>, ide: &Arc<Ide>) {
    let port = Arc::clone(ide);
    ctl.probe(
        "ide",
        Box::new(move || {
            let streams: Vec<_> = port
                .streams()
                .iter()
                .map(|s| {
                    json!({
                        "stream": s.stream.to_string(),
                        "id": s.id,
                        "enabled": s.enabled,
                        "secure": s.secure,
                        "default": s.default,
                        "tee_limited": s.tee_limited,
                        "key_slots": port.key_states(s.id).iter().map(|(slot, st)| json!({
                            "slot": format!("{slot:?}"), "state": st,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let pending: Vec<_> = port
                .pending_faults()
                .iter()
                .map(|f| {
                    json!({
                        "towards": format!("{:?}", f.towards),
                        "stream_id": f.stream_id,
                        "skip": f.skip,
                    })
                })
                .collect();
            json!({"link_active": port.link_active(), "streams": streams, "pending_faults": pending})
        }),
    );
    ctl.support(&["ide-key-set-refusal"]);
    let port = Arc::clone(ide);
    ctl.action(
        &["ide-integrity"],
        Box::new(move |f| {
            let Fault::IdeIntegrity {
                towards,
                stream,
                skip,
            } = *f
            else {
                return Ok(false);
            };
            let secure = port.secure_stream_ids();
            match stream {
                _ if secure.is_empty() => return Err("no IDE stream is SECURE".into()),
                Some(id) if !secure.contains(&id) => {
                    return Err(format!(
                        "no SECURE IDE stream has Stream ID {id} (SECURE: {})",
                        secure
                            .iter()
                            .map(u8::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
                _ => {}
            }
            port.inject_fault(WireFault {
                towards: match towards {
                    End::Host => LinkEnd::Host,
                    End::Device => LinkEnd::Device,
                },
                sub_stream: None,
                stream_id: stream,
                skip,
                target: FaultTarget::Mac(5),
            });
            Ok(true)
        }),
    );
    let port = Arc::clone(ide);
    ctl.on_disarm_all(Box::new(move || port.clear_faults()));
    let weak = Arc::downgrade(ctl);
    ide.subscribe(move |e| {
        let Some(ctl) = weak.upgrade() else { return };
        let ev = match e {
            IdeEvent::StreamSecure { stream, id } => {
                json!({"ev": "ide", "event": "secure", "stream": stream.to_string(), "id": id})
            }
            IdeEvent::StreamInsecure { stream, id, reason } => json!({
                "ev": "ide", "event": "insecure", "stream": stream.to_string(), "id": id,
                "reason": format!("{reason:?}"),
            }),
            IdeEvent::IntegrityFailure {
                stream,
                id,
                detected_by,
            } => json!({
                "ev": "ide", "event": "integrity-failure", "stream": stream.to_string(),
                "id": id, "detected_by": format!("{detected_by:?}"),
            }),
            #[allow(unreachable_patterns)]
            other => json!({"ev": "ide", "event": format!("{other:?}")}),
        };
        ctl.trace.record(ev);
    });
}
