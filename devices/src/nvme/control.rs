//! The NVMe controller's control-plane hooks: its faults (media errors on
//! an LBA range, command latency, controller fatal status, namespace
//! change events), its admin commands in the trace, its queues and
//! counters in the state. The queue threads run commands through
//! [`Ctrl::exec_io_controlled`] and [`Ctrl::exec_admin_controlled`].

use super::ctrl::{Ctrl, Scratch};
use super::queue::Outcome;
use super::spec::{admin, csts, io, Command, Status};
use super::state::Event;
use crate::control::fault::{Fault, Match};
use crate::control::DeviceControl;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The admin command names the trace uses.
fn admin_name(op: u8) -> &'static str {
    match op {
        admin::DELETE_SQ => "DELETE_SQ",
        admin::CREATE_SQ => "CREATE_SQ",
        admin::GET_LOG_PAGE => "GET_LOG_PAGE",
        admin::DELETE_CQ => "DELETE_CQ",
        admin::CREATE_CQ => "CREATE_CQ",
        admin::IDENTIFY => "IDENTIFY",
        admin::ABORT => "ABORT",
        admin::SET_FEATURES => "SET_FEATURES",
        admin::GET_FEATURES => "GET_FEATURES",
        admin::ASYNC_EVENT => "ASYNC_EVENT_REQUEST",
        admin::KEEP_ALIVE => "KEEP_ALIVE",
        admin::DBBUF_CONFIG => "DOORBELL_BUFFER_CONFIG",
        admin::SECURITY_SEND => "SECURITY_SEND",
        admin::SECURITY_RECV => "SECURITY_RECEIVE",
        _ => "?",
    }
}

impl Ctrl {
    /// [`Ctrl::exec_io`] with the armed I/O faults.
    pub(crate) fn exec_io_controlled(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        if let Some(ctl) = self.control.get() {
            if let Some(out) = self.io_fault(ctl, cmd) {
                return out;
            }
        }
        self.exec_io(cmd, sc)
    }

    /// [`Ctrl::exec_admin`], traced.
    pub(crate) fn exec_admin_controlled(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let Some(ctl) = self.control.get() else {
            return self.exec_admin(cmd, sc);
        };
        let start = Instant::now();
        let out = self.exec_admin(cmd, sc);
        let mut ev = json!({
            "ev": "nvme-admin",
            "cmd": admin_name(cmd.opcode),
            "opcode": format!("{:#04x}", cmd.opcode),
            "cid": cmd.cid,
            "us": start.elapsed().as_micros() as u64,
        });
        if cmd.nsid != 0 {
            ev["nsid"] = json!(cmd.nsid);
        }
        match cmd.opcode {
            admin::IDENTIFY => ev["cns"] = json!(cmd.cdw[0] & 0xff),
            admin::GET_LOG_PAGE => ev["lid"] = json!(format!("{:#04x}", cmd.cdw[0] & 0xff)),
            admin::SET_FEATURES | admin::GET_FEATURES => {
                ev["fid"] = json!(format!("{:#04x}", cmd.cdw[0] & 0xff))
            }
            admin::CREATE_SQ | admin::CREATE_CQ | admin::DELETE_SQ | admin::DELETE_CQ => {
                ev["qid"] = json!(cmd.cdw[0] & 0xffff)
            }
            _ => {}
        }
        match &out {
            Outcome::Done { status, .. } => {
                ev["status"] = json!(format!("{:#06x}", status.0));
            }
            Outcome::Deferred => ev["status"] = json!("deferred"),
        }
        ctl.trace.record(ev);
        out
    }

    /// The outcome an armed fault gives `cmd`, if one hits it.
    fn io_fault(&self, ctl: &DeviceControl, cmd: &Command) -> Option<Outcome> {
        let rw = matches!(cmd.opcode, io::READ | io::WRITE | io::COMPARE);
        let slba = u64::from(cmd.cdw[0]) | (u64::from(cmd.cdw[1]) << 32);
        let nlb = u64::from(cmd.cdw[2] & 0xffff) + 1;
        let last = slba.saturating_add(nlb - 1);
        let hit = ctl.faults.hit(|f, _| match f {
            Fault::NvmeMediaError { lba, nsid }
                if rw
                    && nsid.map_or(true, |n| n == cmd.nsid)
                    && slba <= lba[1]
                    && last >= lba[0] =>
            {
                Match::Hit
            }
            Fault::NvmeFatal { lba: Some(lba) } if rw && slba <= lba[1] && last >= lba[0] => {
                Match::Hit
            }
            Fault::NvmeLatency { .. } | Fault::NvmeFatal { lba: None } => Match::Hit,
            _ => Match::No,
        })?;
        let record = |effect: String| {
            ctl.trace.record(json!({
                "ev": "fault", "fault": hit.name(), "effect": effect,
                "opcode": format!("{:#04x}", cmd.opcode), "cid": cmd.cid, "nsid": cmd.nsid,
                "slba": slba, "nlb": nlb,
            }));
        };
        match hit {
            Fault::NvmeMediaError { .. } => {
                let s = if cmd.opcode == io::WRITE {
                    Status::WRITE_FAULT
                } else {
                    Status::READ_ERROR
                };
                self.counters.media_errors.fetch_add(1, Ordering::Relaxed);
                record(format!("media error status {:#06x}", s.0));
                Some(s.into())
            }
            Fault::NvmeLatency { ms } => {
                record(format!("{ms} ms late"));
                std::thread::sleep(Duration::from_millis(ms));
                None
            }
            Fault::NvmeFatal { .. } => {
                // A failed controller completes nothing: the host's
                // timeout finds CSTS.CFS and resets it.
                record("controller fatal status (CSTS.CFS); command left uncompleted".into());
                self.fatal(&"injected fault nvme-fatal");
                Some(Outcome::Deferred)
            }
            _ => None,
        }
    }
}

/// Attaches `ctl` to the controller: faults, state, namespace-change action.
pub(crate) fn attach(ctrl: &Arc<Ctrl>, ctl: &Arc<DeviceControl>) {
    if ctrl.control.set(Arc::clone(ctl)).is_err() {
        return;
    }
    ctl.support(&["nvme-media-error", "nvme-latency", "nvme-fatal"]);
    let weak = Arc::downgrade(ctrl);
    ctl.action(
        &["nvme-ns-change"],
        Box::new(move |f| {
            let Some(c) = weak.upgrade() else {
                return Ok(false);
            };
            if *f != Fault::NvmeNsChange || c.csts.load(Ordering::SeqCst) & csts::RDY == 0 {
                return Ok(false);
            }
            // Notice: Namespace Attribute Changed, log page 04h.
            c.post_event(Event {
                kind: super::state::event::NOTICE,
                info: 0,
                log: 0x04,
            });
            Ok(true)
        }),
    );
    let weak = Arc::downgrade(ctrl);
    ctl.probe(
        "nvme",
        Box::new(move || {
            let Some(c) = weak.upgrade() else {
                return json!(null);
            };
            let csts = c.csts.load(Ordering::SeqCst);
            let n = &c.counters;
            json!({
                "csts": {
                    "rdy": csts & csts::RDY != 0,
                    "cfs": csts & csts::CFS != 0,
                },
                "io_queues_created": c.io_queues_created.load(Ordering::SeqCst),
                "queues": c.queues.describe(),
                "namespaces": c.namespaces.iter().map(|ns| json!({
                    "nsid": ns.nsid, "blocks": ns.blocks, "lba_bytes": 1u64 << ns.lba_shift,
                })).collect::<Vec<_>>(),
                "counters": {
                    "host_reads": n.host_reads.load(Ordering::Relaxed),
                    "host_writes": n.host_writes.load(Ordering::Relaxed),
                    "media_errors": n.media_errors.load(Ordering::Relaxed),
                    "power_cycles": n.power_cycles.load(Ordering::Relaxed),
                },
                "aer": {
                    "outstanding": super::queue::lock(&c.aer).outstanding.len(),
                    "pending": super::queue::lock(&c.aer).pending.len(),
                },
            })
        }),
    );
}
