//! State probes of the blocks every device may have: its DMA maps and its
//! IDE port (streams, key slot states; never a key), whose events also go
//! to the device's trace.

use super::DeviceControl;
use crate::security::ide::{Ide, IdeEvent};
use serde_json::json;
use std::sync::Arc;
use vfio_user_server::dma::GuestMemory;

/// The client's DMA windows.
pub fn dma(ctl: &DeviceControl, mem: Arc<GuestMemory>) {
    ctl.probe("dma", Box::new(move || json!({"maps": mem.map_count()})));
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
            json!({"link_active": port.link_active(), "streams": streams})
        }),
    );
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
