//! Admin commands.

use super::ctrl::{lock, Ctrl, Scratch};
use super::queue::{Coalescing, Cq, Outcome, QueueError};
use super::security::{secp_spsp, MAX_TRANSFER};
use super::spec::{admin, cc, cns, feat, log_id, Command, Completion, Status, CSI_NVM};
use super::state::{event, Event, Features};
use log::{debug, info, warn};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// PCI vendor ID reported in Identify Controller (and config space).
pub const VENDOR_ID: u16 = 0x7d0c;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x4e56;

fn put_str(b: &mut [u8], s: &str) {
    b.fill(b' ');
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The status a queue management command completes with for `e`.
fn queue_status(e: QueueError) -> Status {
    match e {
        QueueError::CqInUse(_) => Status::INVALID_QUEUE_DELETION,
        QueueError::NoSuchQueue(_) | QueueError::QidTaken(_) => Status::INVALID_QID,
        QueueError::Fetch { .. } | QueueError::Post { .. } => Status::INTERNAL_ERROR,
    }
}

/// Commands the controller implements, for the Commands Supported and
/// Effects log: (opcode, effects) with CSUPP (bit 0) and LBCC (bit 1).
const ADMIN_CMDS: &[u8] = &[
    admin::DELETE_SQ,
    admin::CREATE_SQ,
    admin::GET_LOG_PAGE,
    admin::DELETE_CQ,
    admin::CREATE_CQ,
    admin::IDENTIFY,
    admin::ABORT,
    admin::SET_FEATURES,
    admin::GET_FEATURES,
    admin::ASYNC_EVENT,
    admin::KEEP_ALIVE,
];

impl Ctrl {
    /// Runs one admin command.
    pub(crate) fn exec_admin(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        if cmd.fuse != 0 {
            return Status::INVALID_FIELD.into();
        }
        match cmd.opcode {
            admin::DELETE_SQ => self.delete_sq(cmd),
            admin::CREATE_SQ => self.create_sq(cmd),
            admin::GET_LOG_PAGE => self.get_log_page(cmd, sc),
            admin::DELETE_CQ => self.delete_cq(cmd),
            admin::CREATE_CQ => self.create_cq(cmd),
            admin::IDENTIFY => self.identify(cmd, sc),
            admin::ABORT => self.abort(cmd),
            admin::SET_FEATURES => self.set_features(cmd, sc),
            admin::GET_FEATURES => self.get_features(cmd, sc),
            admin::ASYNC_EVENT => {
                let mut a = lock(&self.aer);
                if a.outstanding.len() >= 4 {
                    return Status::AER_LIMIT_EXCEEDED.into();
                }
                a.outstanding.push_back(cmd.cid);
                Outcome::Deferred
            }
            admin::KEEP_ALIVE => Outcome::ok(0),
            admin::DBBUF_CONFIG if self.cfg.shadow_doorbells => self.dbbuf_config(cmd),
            admin::SECURITY_SEND if self.spdm.get().is_some() => self.security_send(cmd, sc),
            admin::SECURITY_RECV if self.spdm.get().is_some() => self.security_recv(cmd, sc),
            _ => Status::INVALID_OPCODE.into(),
        }
    }

    /// I/O queues the host may use: (SQs, CQs), 1-based counts.
    fn allowed_queues(&self) -> (u16, u16) {
        lock(&self.features)
            .num_queues
            .unwrap_or((self.cfg.max_queues, self.cfg.max_queues))
    }

    fn create_cq(&self, cmd: &Command) -> Outcome {
        let qid = (cmd.cdw10() & 0xffff) as u16;
        let size = (cmd.cdw10() >> 16) + 1;
        let pc = cmd.cdw11() & 1 != 0;
        let ien = cmd.cdw11() & 2 != 0;
        let iv = (cmd.cdw11() >> 16) as u16;
        let (_, ncq) = self.allowed_queues();
        if qid == 0 || qid > ncq {
            return Status::INVALID_QID.into();
        }
        if size < 2 || size > self.cfg.queue_entries {
            return Status::INVALID_QUEUE_SIZE.into();
        }
        if !pc {
            return Status::INVALID_FIELD.into(); // CAP.CQR: contiguous only
        }
        if iv >= self.vectors() {
            return Status::INVALID_VECTOR.into();
        }
        if cc::iocqes(lock(&self.regs).cc) != 4 {
            return Status::INVALID_FIELD.into();
        }
        let page = self.queues.page_size();
        if cmd.prp1 == 0 || cmd.prp1 & (page - 1) != 0 {
            return Status::PRP_OFFSET_INVALID.into();
        }
        if !self.queues.memory_ok(cmd.prp1, u64::from(size) * 16) {
            return Status::INVALID_FIELD.into();
        }
        let worker = self.queues.workers.for_io_queue(qid);
        if let Err(e) = self
            .queues
            .add_cq(Cq::new(qid, cmd.prp1, size, iv, ien, worker))
        {
            return queue_status(e).into();
        }
        self.io_queues_created.store(true, Ordering::SeqCst);
        debug!(
            "created I/O CQ {qid}: {size} entries at {:#x}, vector {iv}, worker {worker}",
            cmd.prp1
        );
        Outcome::ok(0)
    }

    fn create_sq(&self, cmd: &Command) -> Outcome {
        let qid = (cmd.cdw10() & 0xffff) as u16;
        let size = (cmd.cdw10() >> 16) + 1;
        let pc = cmd.cdw11() & 1 != 0;
        let cqid = (cmd.cdw11() >> 16) as u16;
        let (nsq, _) = self.allowed_queues();
        if qid == 0 || qid > nsq || self.queues.sq(qid).is_some() {
            return Status::INVALID_QID.into();
        }
        if cqid == 0 || self.queues.cq(cqid).is_none() {
            return Status::CQ_INVALID.into();
        }
        if size < 2 || size > self.cfg.queue_entries {
            return Status::INVALID_QUEUE_SIZE.into();
        }
        if !pc {
            return Status::INVALID_FIELD.into();
        }
        if cc::iosqes(lock(&self.regs).cc) != 6 {
            return Status::INVALID_FIELD.into();
        }
        let page = self.queues.page_size();
        if cmd.prp1 == 0 || cmd.prp1 & (page - 1) != 0 {
            return Status::PRP_OFFSET_INVALID.into();
        }
        if !self.queues.memory_ok(cmd.prp1, u64::from(size) * 64) {
            return Status::INVALID_FIELD.into();
        }
        if let Err(e) = self.queues.add_sq(qid, cmd.prp1, size, cqid) {
            return queue_status(e).into();
        }
        self.io_queues_created.store(true, Ordering::SeqCst);
        debug!(
            "created I/O SQ {qid}: {size} entries at {:#x}, CQ {cqid}",
            cmd.prp1
        );
        Outcome::ok(0)
    }

    fn delete_sq(&self, cmd: &Command) -> Outcome {
        let qid = (cmd.cdw10() & 0xffff) as u16;
        match self.queues.remove_sq(qid) {
            Ok(sq) => {
                debug!(
                    "deleted I/O SQ {qid} ({} commands completed)",
                    sq.completed.load(Ordering::Relaxed)
                );
                Outcome::ok(0)
            }
            Err(e) => queue_status(e).into(),
        }
    }

    fn delete_cq(&self, cmd: &Command) -> Outcome {
        let qid = (cmd.cdw10() & 0xffff) as u16;
        match self.queues.remove_cq(qid) {
            Ok(_) => {
                debug!("deleted I/O CQ {qid}");
                Outcome::ok(0)
            }
            Err(e) => queue_status(e).into(),
        }
    }

    fn abort(&self, cmd: &Command) -> Outcome {
        let sqid = (cmd.cdw10() & 0xffff) as u16;
        let cid = (cmd.cdw10() >> 16) as u16;
        // Commands run as soon as they are fetched: what can still be
        // aborted is a submitted command not fetched yet (completed with
        // Command Abort Requested when it is), or an outstanding
        // Asynchronous Event Request.
        if self.queues.abort_queued(sqid, cid, self) {
            return Outcome::ok(0);
        }
        let Some(sq) = self.queues.sq(0) else {
            return Outcome::ok(1);
        };
        // Room for the AER's completion and this command's.
        if sqid == 0 && self.queues.cq_room_for(&sq.cq, 2, self) {
            let found = {
                let mut a = lock(&self.aer);
                match a.outstanding.iter().position(|&c| c == cid) {
                    Some(i) => a.outstanding.remove(i).is_some(),
                    None => false,
                }
            };
            if found {
                let c = Completion {
                    dw0: 0,
                    dw1: 0,
                    sq_head: sq.head.load(Ordering::Relaxed) as u16,
                    sq_id: 0,
                    cid,
                    status: Status::ABORT_REQUESTED.0,
                };
                self.queues.post(&sq.cq, c, self);
                return Outcome::ok(0);
            }
        }
        Outcome::ok(1) // not aborted
    }

    fn dbbuf_config(&self, cmd: &Command) -> Outcome {
        let (dbs, eis) = (cmd.prp1, cmd.prp2);
        let page = self.queues.page_size();
        if dbs == 0 || eis == 0 || dbs & (page - 1) != 0 || eis & (page - 1) != 0 || cmd.psdt != 0 {
            return Status::INVALID_FIELD.into();
        }
        let len = self.queues.shadow_len();
        if !self.queues.memory_ok(dbs, len) || !self.queues.memory_ok(eis, len) {
            return Status::INVALID_FIELD.into();
        }
        self.queues.enable_shadow(dbs, eis);
        info!("shadow doorbells enabled: doorbell buffer {dbs:#x}, event index buffer {eis:#x}");
        Outcome::ok(0)
    }

    // ------------------------------------------------------------ identify

    fn identify(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let cns_v = (cmd.cdw10() & 0xff) as u8;
        let csi = (cmd.cdw11() >> 24) as u8;
        let nn = self.namespaces.len() as u32;
        let data = match cns_v {
            cns::NS => match self.namespace(cmd.nsid) {
                Some(ns) => ns.identify(self.mdts_bytes() as u32 >> ns.lba_shift),
                None => return Status::INVALID_NAMESPACE.into(),
            },
            cns::CTRL => self.identify_ctrl(),
            cns::ACTIVE_NS_LIST | cns::CS_ACTIVE_NS_LIST => {
                if cns_v == cns::CS_ACTIVE_NS_LIST && csi != CSI_NVM {
                    return Status::INVALID_FIELD.into();
                }
                if cmd.nsid >= 0xffff_fffe {
                    return Status::INVALID_NAMESPACE.into();
                }
                let mut b = vec![0u8; 4096];
                for (i, id) in ((cmd.nsid + 1)..=nn).take(1024).enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                }
                b
            }
            cns::NS_DESCRIPTORS => match self.namespace(cmd.nsid) {
                Some(ns) => ns.descriptors(),
                None => return Status::INVALID_NAMESPACE.into(),
            },
            cns::CS_NS => {
                if csi != CSI_NVM {
                    return Status::INVALID_FIELD.into();
                }
                if self.namespace(cmd.nsid).is_none() {
                    return Status::INVALID_NAMESPACE.into();
                }
                // NVM command set Identify Namespace: no PI, no storage tags,
                // extended LBA formats all zero.
                vec![0u8; 4096]
            }
            cns::CS_CTRL => {
                if csi != CSI_NVM {
                    return Status::INVALID_FIELD.into();
                }
                // NVM command set Identify Controller: VSL, WZSL, WUSL, DMRL
                // 0 (no limits beyond MDTS); DMRSL, DMSL 0 (no limit).
                vec![0u8; 4096]
            }
            cns::CS_INDEP_NS => match self.namespace(cmd.nsid) {
                Some(ns) => ns.identify_cs_indep(),
                None => return Status::INVALID_NAMESPACE.into(),
            },
            cns::IO_CMD_SETS => {
                let mut b = vec![0u8; 4096];
                b[0] = 1; // combination 0: NVM only
                b
            }
            _ => return Status::INVALID_FIELD.into(),
        };
        self.send_to_host(cmd, &data, sc).into()
    }

    /// Whether any namespace has a volatile write cache.
    pub(crate) fn vwc_present(&self) -> bool {
        self.namespaces.iter().any(|n| n.backend.volatile_cache())
    }

    /// Identify Controller (CNS 01h).
    pub(crate) fn identify_ctrl(&self) -> Vec<u8> {
        let c = &self.cfg;
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
        b[2..4].copy_from_slice(&VENDOR_ID.to_le_bytes());
        put_str(&mut b[4..24], &c.serial);
        put_str(&mut b[24..64], &c.model);
        put_str(&mut b[64..72], &c.firmware);
        b[72] = 6; // RAB
        b[77] = c.mdts;
        b[78..80].copy_from_slice(&1u16.to_le_bytes()); // CNTLID
        b[80..84].copy_from_slice(&super::spec::VERSION_2_0.to_le_bytes());
        b[84..88].copy_from_slice(&500_000u32.to_le_bytes()); // RTD3R (µs)
        b[88..92].copy_from_slice(&1_000_000u32.to_le_bytes()); // RTD3E (µs)
        b[92..96].copy_from_slice(&(1u32 << 8).to_le_bytes()); // OAES: NS attribute notices
        b[111] = 1; // CNTRLTYPE: I/O controller
        let mut oacs: u16 = if c.shadow_doorbells { 1 << 8 } else { 0 };
        if self.spdm.get().is_some() {
            oacs |= 1; // Security Send / Security Receive
        }
        b[256..258].copy_from_slice(&oacs.to_le_bytes());
        b[258] = 3; // ACL
        b[259] = 3; // AERL: 4 outstanding
        b[260] = 0x03; // FRMW: 1 slot, slot 1 read-only
        b[261] = (1 << 1) | (1 << 2); // LPA: effects log, extended data
        b[262] = 63; // ELPE
        b[263] = 0; // NPSS: one power state
        b[264] = 1; // AVSCC
        b[266..268].copy_from_slice(&super::state::WCTEMP.to_le_bytes());
        b[268..270].copy_from_slice(&super::state::CCTEMP.to_le_bytes());
        let total: u128 = self
            .namespaces
            .iter()
            .map(|n| u128::from(n.blocks) << n.lba_shift)
            .sum();
        b[280..296].copy_from_slice(&total.to_le_bytes()); // TNVMCAP
        b[320..322].copy_from_slice(&10u16.to_le_bytes()); // KAS: 1 s
        b[512] = 0x66; // SQES
        b[513] = 0x44; // CQES
        b[516..520].copy_from_slice(&(self.namespaces.len() as u32).to_le_bytes()); // NN
                                                                                    // ONCS: Compare, Dataset Management, Write Zeroes, Save/Select, Timestamp.
        let oncs: u16 = 1 | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6);
        b[520..522].copy_from_slice(&oncs.to_le_bytes());
        // VWC: present (bit 0); Flush with NSID FFFFFFFFh supported (11b).
        b[525] = u8::from(self.vwc_present()) | (3 << 1);
        b[530] = 1; // NVSCC
                    // SGLS: supported without alignment, bit bucket, longer SGLs.
        let sgls: u32 = 1 | (1 << 16) | (1 << 18);
        b[536..540].copy_from_slice(&sgls.to_le_bytes());
        let nqn = c.subnqn.as_bytes();
        let n = nqn.len().min(255);
        b[768..768 + n].copy_from_slice(&nqn[..n]);
        // Power state 0: 25 W, operational.
        b[2048..2050].copy_from_slice(&2500u16.to_le_bytes());
        b
    }

    // ------------------------------------------------------------ logs

    fn get_log_page(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let lid = (cmd.cdw10() & 0xff) as u8;
        let rae = cmd.cdw10() & (1 << 15) != 0;
        let numd = (u64::from(cmd.cdw11() & 0xffff) << 16) | u64::from(cmd.cdw10() >> 16);
        let len = (numd + 1) * 4;
        let off = u64::from(cmd.cdw12()) | (u64::from(cmd.cdw13()) << 32);
        let csi = (cmd.cdw14() >> 24) as u8;
        if off % 4 != 0 || len > self.mdts_bytes() {
            return Status::INVALID_FIELD.into();
        }
        let data = match lid {
            log_id::SUPPORTED => {
                let mut b = vec![0u8; 1024];
                for l in [
                    log_id::SUPPORTED,
                    log_id::ERROR,
                    log_id::SMART,
                    log_id::FW_SLOT,
                    log_id::CHANGED_NS,
                    log_id::CMD_EFFECTS,
                    log_id::VENDOR_EFFICIENCY,
                ] {
                    b[4 * l as usize] = 1;
                }
                b
            }
            log_id::ERROR => lock(&self.errors).page(),
            log_id::SMART => {
                if cmd.nsid != 0 && cmd.nsid != 0xffff_ffff {
                    // LPA bit 0 is clear: no per-namespace health.
                    return Status::INVALID_FIELD.into();
                }
                let errors = lock(&self.errors).total();
                self.counters.smart_log(
                    self.cfg.temperature_k,
                    self.critical_warning(),
                    self.started,
                    errors,
                )
            }
            log_id::FW_SLOT => {
                let mut b = vec![0u8; 512];
                b[0] = 1; // AFI: slot 1 active
                put_str(&mut b[8..16], &self.cfg.firmware);
                b
            }
            log_id::CHANGED_NS => vec![0u8; 4096],
            log_id::VENDOR_EFFICIENCY => self.queues.efficiency_log(),
            log_id::CMD_EFFECTS => {
                if csi != CSI_NVM {
                    return Status::INVALID_FIELD.into();
                }
                let mut b = vec![0u8; 4096];
                let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                for &op in ADMIN_CMDS {
                    put(4 * op as usize, 1);
                }
                if self.cfg.shadow_doorbells {
                    put(4 * admin::DBBUF_CONFIG as usize, 1);
                }
                use super::spec::io;
                for (op, lbcc) in [
                    (io::FLUSH, false),
                    (io::WRITE, true),
                    (io::READ, false),
                    (io::COMPARE, false),
                    (io::WRITE_ZEROES, true),
                    (io::DSM, true),
                ] {
                    put(1024 + 4 * op as usize, 1 | (u32::from(lbcc) << 1));
                }
                b
            }
            _ => return Status::INVALID_LOG_PAGE.into(),
        };
        if off > data.len() as u64 || (off == data.len() as u64 && off != 0) {
            return Status::INVALID_FIELD.into();
        }
        let mut out = data[off as usize..].to_vec();
        out.resize(len as usize, 0);
        let st = self.send_to_host(cmd, &out, sc);
        if st.is_success() && !rae {
            lock(&self.aer).log_read(lid);
        }
        st.into()
    }

    /// SMART critical warning bits (bit 1: temperature).
    fn critical_warning(&self) -> u8 {
        if self.temperature_alarm() {
            1 << 1
        } else {
            0
        }
    }

    fn temperature_alarm(&self) -> bool {
        let f = lock(&self.features);
        let t = self.cfg.temperature_k;
        t >= f.temp_over[0] || (f.temp_under[0] != 0 && t <= f.temp_under[0])
    }

    /// Reports a temperature threshold crossing if the host asked for it.
    fn check_temperature(&self) {
        let enabled = lock(&self.features).async_event_cfg & (1 << 1) != 0;
        if enabled && self.temperature_alarm() {
            self.post_event(Event {
                kind: event::SMART,
                info: event::INFO_TEMPERATURE,
                log: log_id::SMART,
            });
        }
    }

    // ------------------------------------------------------------ features

    fn set_features(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let fid = (cmd.cdw10() & 0xff) as u8;
        if cmd.cdw10() & (1 << 31) != 0 {
            return Status::FEATURE_NOT_SAVEABLE.into();
        }
        let v = cmd.cdw11();
        let mut dw0 = 0;
        match fid {
            feat::ARBITRATION => lock(&self.features).arbitration = v,
            feat::POWER_MGMT => {
                if v & 0x1f != 0 {
                    return Status::INVALID_FIELD.into(); // only power state 0
                }
                lock(&self.features).power_mgmt = v & 0xff;
            }
            feat::TEMP_THRESH => {
                let (th, sel, thsel) = ((v & 0xffff) as u16, (v >> 16) & 0xf, (v >> 20) & 3);
                if thsel > 1 || !(sel <= 1 || sel == 0xf) {
                    return Status::INVALID_FIELD.into();
                }
                {
                    let mut f = lock(&self.features);
                    let slots: &mut [u16; 9] = if thsel == 0 {
                        &mut f.temp_over
                    } else {
                        &mut f.temp_under
                    };
                    if sel == 0xf {
                        slots[0] = th;
                        slots[1] = th;
                    } else {
                        slots[sel as usize] = th;
                    }
                }
                self.check_temperature();
            }
            feat::ERROR_RECOVERY => {
                if v & (1 << 16) != 0 {
                    return Status::INVALID_FIELD.into(); // DULBE unsupported
                }
                lock(&self.features).error_recovery = v & 0xffff;
            }
            feat::VOLATILE_WC => {
                if !self.vwc_present() {
                    return Status::INVALID_FIELD.into();
                }
                for ns in &self.namespaces {
                    if let Err(e) = ns.backend.set_write_cache(v & 1 != 0) {
                        // Disabling the cache could not make it durable.
                        warn!("namespace {}: volatile write cache: {e}", ns.nsid);
                        return Status::INTERNAL_ERROR.into();
                    }
                }
                info!(
                    "volatile write cache {}",
                    if v & 1 != 0 { "enabled" } else { "disabled" }
                );
            }
            feat::NUM_QUEUES => {
                let (nsqr, ncqr) = (v & 0xffff, v >> 16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return Status::INVALID_FIELD.into();
                }
                if self.io_queues_created.load(Ordering::SeqCst) {
                    return Status::SEQUENCE_ERROR.into();
                }
                let max = u32::from(self.cfg.max_queues);
                let nsq = (nsqr + 1).min(max) as u16;
                let ncq = (ncqr + 1).min(max) as u16;
                lock(&self.features).num_queues = Some((nsq, ncq));
                info!(
                    "number of queues: host asked {} SQs / {} CQs, allocated {nsq} / {ncq}",
                    nsqr + 1,
                    ncqr + 1
                );
                dw0 = u32::from(nsq - 1) | (u32::from(ncq - 1) << 16);
            }
            feat::IRQ_COALESCE => self.queues.irq.set_coalescing(v),
            feat::IRQ_CONFIG => {
                let iv = (v & 0xffff) as usize;
                let cd = v & (1 << 16) != 0;
                if !self.queues.irq.set_vector_coalescing(iv, cd) {
                    return Status::INVALID_FIELD.into();
                }
            }
            feat::WRITE_ATOMICITY => lock(&self.features).write_atomicity = v & 1,
            feat::ASYNC_EVENT_CFG => {
                lock(&self.features).async_event_cfg = v;
                self.check_temperature();
            }
            feat::TIMESTAMP => {
                if let Err(s) = self.receive_from_host(cmd, 8, true, sc) {
                    return s.into();
                }
                let mut ts = [0u8; 8];
                ts[..6].copy_from_slice(&sc.buf[..6]);
                lock(&self.features).timestamp = Some((u64::from_le_bytes(ts), Instant::now()));
            }
            feat::KEEP_ALIVE => lock(&self.features).kato = v,
            feat::HOST_BEHAVIOR => {
                if let Err(s) = self.receive_from_host(cmd, 512, true, sc) {
                    return s.into();
                }
                lock(&self.features)
                    .host_behavior
                    .copy_from_slice(&sc.buf[..512]);
            }
            _ => return Status::INVALID_FIELD.into(),
        }
        Outcome::ok(dw0)
    }

    fn get_features(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let fid = (cmd.cdw10() & 0xff) as u8;
        let sel = (cmd.cdw10() >> 8) & 7;
        const KNOWN: &[u8] = &[
            feat::ARBITRATION,
            feat::POWER_MGMT,
            feat::TEMP_THRESH,
            feat::ERROR_RECOVERY,
            feat::VOLATILE_WC,
            feat::NUM_QUEUES,
            feat::IRQ_COALESCE,
            feat::IRQ_CONFIG,
            feat::WRITE_ATOMICITY,
            feat::ASYNC_EVENT_CFG,
            feat::TIMESTAMP,
            feat::KEEP_ALIVE,
            feat::HOST_BEHAVIOR,
        ];
        if !KNOWN.contains(&fid) || (fid == feat::VOLATILE_WC && !self.vwc_present()) {
            return Status::INVALID_FIELD.into();
        }
        let current;
        let default;
        let (f, coalescing): (&Features, Coalescing) = match sel {
            0 | 2 => {
                // Nothing is saveable: "saved" is the current value.
                current = lock(&self.features).clone();
                (&current, self.queues.irq.coalescing())
            }
            1 => {
                default = Features::new();
                (&default, Coalescing::new(usize::from(self.vectors())))
            }
            3 => {
                // Capabilities: changeable (bit 2); not saveable, not
                // namespace specific.
                return Outcome::ok(1 << 2);
            }
            _ => return Status::INVALID_FIELD.into(),
        };
        let v = cmd.cdw11();
        let dw0 = match fid {
            feat::ARBITRATION => f.arbitration,
            feat::POWER_MGMT => f.power_mgmt,
            feat::TEMP_THRESH => {
                let (tsel, thsel) = ((v >> 16) & 0xf, (v >> 20) & 3);
                if thsel > 1 || tsel > 8 {
                    return Status::INVALID_FIELD.into();
                }
                let t = if thsel == 0 {
                    f.temp_over[tsel as usize]
                } else {
                    f.temp_under[tsel as usize]
                };
                u32::from(t) | (tsel << 16) | (thsel << 20)
            }
            feat::ERROR_RECOVERY => f.error_recovery,
            feat::VOLATILE_WC => {
                if sel == 1 {
                    1
                } else {
                    u32::from(
                        self.namespaces
                            .iter()
                            .any(|n| n.backend.write_cache_enabled()),
                    )
                }
            }
            feat::NUM_QUEUES => {
                let (s, c) = f
                    .num_queues
                    .unwrap_or((self.cfg.max_queues, self.cfg.max_queues));
                u32::from(s - 1) | (u32::from(c - 1) << 16)
            }
            feat::IRQ_COALESCE => coalescing.setting,
            feat::IRQ_CONFIG => {
                let iv = (v & 0xffff) as usize;
                match coalescing.disabled.get(iv) {
                    Some(cd) => iv as u32 | (u32::from(*cd) << 16),
                    None => return Status::INVALID_FIELD.into(),
                }
            }
            feat::WRITE_ATOMICITY => f.write_atomicity,
            feat::ASYNC_EVENT_CFG => f.async_event_cfg,
            feat::TIMESTAMP => {
                let data = f.timestamp_data(self.started);
                return self.send_to_host(cmd, &data, sc).into();
            }
            feat::KEEP_ALIVE => f.kato,
            feat::HOST_BEHAVIOR => {
                let data = f.host_behavior;
                return self.send_to_host(cmd, &data, sc).into();
            }
            _ => return Status::INVALID_FIELD.into(),
        };
        Outcome::ok(dw0)
    }

    // ------------------------------------------------------------ security

    /// Security Send: the host hands an SPDM request (SECP 0xE8).
    fn security_send(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let Some(spdm) = self.spdm.get() else {
            return Status::INVALID_OPCODE.into();
        };
        let (secp, spsp) = secp_spsp(cmd.cdw10());
        let len = cmd.cdw11() as usize;
        if len == 0 || len > MAX_TRANSFER {
            return Status::INVALID_FIELD.into();
        }
        if let Err(s) = self.receive_from_host(cmd, len, true, sc) {
            return s.into();
        }
        match lock(spdm).send(secp, spsp, &sc.buf) {
            Ok(()) => Outcome::ok(0),
            Err(e) => {
                warn!("Security Send SECP {secp:#04x} SPSP {spsp:#06x}: {e}");
                Status::INVALID_FIELD.into()
            }
        }
    }

    /// Security Receive: supported protocols (SECP 0), storage-binding
    /// discovery, pending info, or the pending SPDM response.
    fn security_recv(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        let Some(spdm) = self.spdm.get() else {
            return Status::INVALID_OPCODE.into();
        };
        let (secp, spsp) = secp_spsp(cmd.cdw10());
        let alloc = (cmd.cdw11() as usize).min(MAX_TRANSFER);
        if alloc == 0 {
            return Status::INVALID_FIELD.into();
        }
        let data = match lock(spdm).receive(secp, spsp, alloc) {
            Ok(d) => d,
            Err(e) => {
                warn!("Security Receive SECP {secp:#04x} SPSP {spsp:#06x}: {e}");
                return Status::INVALID_FIELD.into();
            }
        };
        self.send_to_host(cmd, &data, sc).into()
    }
}
