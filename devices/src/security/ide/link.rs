//! The modelled link between the device and guest memory (a root port with
//! IDE and the device's port), as a [`DmaInterposer`] on the device's
//! guest memory plus the BAR-access path [`super::IdeDevice`] uses.
//!
//! Per TLP on a SECURE stream: the transmitting end claims the next
//! invocation counter of its in-use key (`IV = 00000000h || counter`),
//! builds the IDE prefix and header ([`super::tlp`]), encrypts the payload
//! and computes the 96-bit MAC; the receiving end picks its key by the
//! prefix's K bit, decrypts and checks the MAC, and only then does the
//! payload reach guest memory (device writes, read completions to the
//! device are checked at the device) or the device. A TLP that fails is
//! dropped: the stream goes INSECURE (keys zeroized); a failure found by
//! the device is logged in its AER capability (IDE Check Failed, header and
//! prefix logged), one found by the host end sets the stream's IDE_FAIL
//! status bit (the IDE Fail message), and [`super::IdeEvent`]s tell
//! listeners.
//!
//! Routing (what goes on which stream): a device request goes to the
//! enabled selective stream whose address association covers its address,
//! else to the enabled selective stream with Default Stream set, else to an
//! enabled link stream for TC0, else it is an ordinary TLP. A request routed
//! to a stream that is enabled but not SECURE is refused (fail closed: no
//! silent downgrade to clear text). Host requests to the device's BARs use
//! the lowest SECURE selective stream (the root port's association is not
//! modelled), else a SECURE TC0 link stream, else go in the clear.
//! Completions travel on their request's stream.
//!
//! The crypto runs on the thread that does the DMA (the device's worker
//! threads, never the vfio-user connection thread for DMA); BAR accesses,
//! which are synchronous on the connection thread, carry at most a few
//! small TLPs each.

use super::aead::{self, MAC_LEN};
use super::state::ViewStream;
use super::tlp::{self, Header};
use super::trace::{Flow, TraceRecord, TraceWriter};
use super::{Ide, LinkEnd, StreamKind};
use spdm_responder::idekm::{KeyDirection, SubStream};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vfio_user_server::dma::{DirectMemory, DmaError, DmaInterposer};

/// Requester/completer ID of the host end (the root complex).
pub const HOST_RID: u16 = 0x0000;

/// What to corrupt in a TLP on the wire (tests: an attacker on the link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// Flip bit `n` (modulo the length) of the encrypted payload.
    Payload(usize),
    /// Flip bit `n` (modulo 96) of the MAC.
    Mac(usize),
    /// Flip bit `n` (modulo the length) of the prefix + header.
    Header(usize),
}

/// A one-shot corruption of the next IDE TLP travelling towards `towards`
/// (on `sub_stream` and the stream with Stream ID `stream_id`, if given),
/// after `skip` such TLPs went through unharmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFault {
    /// The receiving end.
    pub towards: LinkEnd,
    /// Only TLPs of this sub-stream.
    pub sub_stream: Option<SubStream>,
    /// Only TLPs of the stream with this Stream ID. Such a fault is
    /// dropped when that stream leaves SECURE before it hit.
    pub stream_id: Option<u8>,
    /// Matching TLPs to let through first.
    pub skip: u32,
    /// What to flip.
    pub target: FaultTarget,
}

impl WireFault {
    fn matches(&self, towards: LinkEnd, ss: SubStream, id: u8) -> bool {
        self.towards == towards
            && self.sub_stream.map_or(true, |s| s == ss)
            && self.stream_id.map_or(true, |s| s == id)
    }
}

/// Counters of the link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// IDE TLPs that crossed the link and were verified.
    pub ide_tlps: u64,
    /// Payload bytes they carried.
    pub ide_bytes: u64,
    /// Ordinary TLPs (not on any stream).
    pub plain_tlps: u64,
    /// TLPs that failed their integrity check.
    pub integrity_failures: u64,
    /// Accesses refused (stream enabled but not SECURE, or SECURE required).
    pub refused: u64,
}

/// Mutable link state kept in [`Ide`].
#[derive(Debug, Default)]
pub(crate) struct LinkShared {
    ide_tlps: AtomicU64,
    ide_bytes: AtomicU64,
    plain_tlps: AtomicU64,
    failures: AtomicU64,
    refused: AtomicU64,
    faults_pending: AtomicBool,
    faults: Mutex<VecDeque<WireFault>>,
    tracing: AtomicBool,
    trace: Mutex<Option<TraceWriter>>,
    tag: AtomicU32,
}

impl LinkShared {
    fn next_tag(&self) -> u8 {
        self.tag.fetch_add(1, Ordering::Relaxed) as u8
    }

    /// The corruption for this TLP (towards `towards`, sub-stream `ss`,
    /// Stream ID `id`), if one is queued and its skip count is used up; a
    /// matching fault with TLPs left to skip counts this one.
    fn take_fault(&self, towards: LinkEnd, ss: SubStream, id: u8) -> Option<FaultTarget> {
        if !self.faults_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let i = q.iter().position(|f| f.matches(towards, ss, id))?;
        if let Some(f) = q.get_mut(i).filter(|f| f.skip > 0) {
            f.skip -= 1;
            return None;
        }
        let f = q.remove(i)?;
        self.faults_pending.store(!q.is_empty(), Ordering::Release);
        Some(f.target)
    }

    /// Drops the queued faults aimed at Stream ID `id` (it left SECURE).
    pub(crate) fn drop_faults_for(&self, id: u8) -> usize {
        if !self.faults_pending.load(Ordering::Acquire) {
            return 0;
        }
        let mut q = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let before = q.len();
        q.retain(|f| f.stream_id != Some(id));
        self.faults_pending.store(!q.is_empty(), Ordering::Release);
        before - q.len()
    }

    fn pending(&self) -> Vec<WireFault> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Per-thread buffers: the TLP payload on the wire, the receiver's
/// plaintext, the AAD.
#[derive(Default)]
struct Scratch {
    wire: Vec<u8>,
    plain: Vec<u8>,
    aad: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Ide {
    /// The link model of this port (install it with
    /// [`vfio_user_server::dma::GuestMemory::set_interposer`]).
    pub fn link_model(self: &Arc<Self>) -> Arc<IdeLink> {
        Arc::new(IdeLink {
            ide: Arc::clone(self),
        })
    }

    /// Records the wire view of every later IDE TLP in a new pcap file (see
    /// [`super::trace`]).
    pub fn set_trace(&self, path: &Path) -> std::io::Result<()> {
        let w = TraceWriter::create(path)?;
        *self.link.trace.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        self.link.tracing.store(true, Ordering::Release);
        Ok(())
    }

    /// Flushes the trace file.
    pub fn flush_trace(&self) -> std::io::Result<()> {
        match self
            .link
            .trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// Queues a one-shot corruption of a later IDE TLP.
    pub fn inject_fault(&self, f: WireFault) {
        self.link
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(f);
        self.link.faults_pending.store(true, Ordering::Release);
    }

    /// Drops every queued corruption; returns how many.
    pub fn clear_faults(&self) -> usize {
        let mut q = self.link.faults.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len();
        q.clear();
        self.link.faults_pending.store(false, Ordering::Release);
        n
    }

    /// The corruptions queued and not yet applied (with their remaining
    /// skip counts).
    pub fn pending_faults(&self) -> Vec<WireFault> {
        self.link.pending()
    }

    /// The link's counters.
    pub fn link_stats(&self) -> LinkStats {
        let l = &self.link;
        LinkStats {
            ide_tlps: l.ide_tlps.load(Ordering::Relaxed),
            ide_bytes: l.ide_bytes.load(Ordering::Relaxed),
            plain_tlps: l.plain_tlps.load(Ordering::Relaxed),
            integrity_failures: l.failures.load(Ordering::Relaxed),
            refused: l.refused.load(Ordering::Relaxed),
        }
    }
}

/// Both ends of the device's link.
#[derive(Debug)]
pub struct IdeLink {
    ide: Arc<Ide>,
}

fn link_err(msg: String) -> DmaError {
    DmaError::Link(msg)
}

impl IdeLink {
    /// The port.
    pub fn ide(&self) -> &Arc<Ide> {
        &self.ide
    }

    fn mps(&self) -> usize {
        self.ide.mps.load(Ordering::Relaxed) as usize
    }

    fn mrrs(&self) -> usize {
        self.ide.mrrs.load(Ordering::Relaxed) as usize
    }

    fn refuse(&self, s: Option<&ViewStream>) -> DmaError {
        self.ide.link.refused.fetch_add(1, Ordering::Relaxed);
        match s {
            Some(s) => link_err(format!(
                "{} (Stream ID {}) is enabled but not SECURE: TLP refused",
                s.stream, s.id
            )),
            None => link_err("no SECURE stream for this access and SECURE is required".into()),
        }
    }

    /// Sends one TLP over stream `s` from `from`, its payload (plaintext,
    /// dword-aligned) in `sc.wire`; on success `out` holds the verified
    /// plaintext the receiver got.
    fn tlp(
        &self,
        s: &ViewStream,
        from: LinkEnd,
        ss: SubStream,
        header: &Header,
        out: &mut Vec<u8>,
        sc: &mut Scratch,
    ) -> Result<(), DmaError> {
        let keys = s.keys.as_ref().ok_or_else(|| self.refuse(Some(s)))?;
        // The device transmits with its TX keys; the host end transmits with
        // the keys the device receives with.
        let tx_dir = match from {
            LinkEnd::Device => KeyDirection::Tx,
            LinkEnd::Host => KeyDirection::Rx,
        };
        let (set, tx_key) = keys
            .in_use(tx_dir, ss)
            .ok_or_else(|| self.refuse(Some(s)))?;
        let invocation = tx_key.claim();
        let tee = from == LinkEnd::Device && self.ide.tee.load(Ordering::Relaxed);
        let prefix = tlp::ide_prefix(set, tee, ss, s.id);
        sc.aad.clear();
        sc.aad.extend_from_slice(&prefix);
        sc.aad.extend_from_slice(header.as_bytes());
        let payload_len = sc.wire.len();
        let mut mac = aead::seal(tx_key.cipher(), invocation, &sc.aad, &mut sc.wire);

        let towards = match from {
            LinkEnd::Device => LinkEnd::Host,
            LinkEnd::Host => LinkEnd::Device,
        };
        if let Some(t) = self.ide.link.take_fault(towards, ss, s.id) {
            match t {
                FaultTarget::Payload(n) if !sc.wire.is_empty() => {
                    let bit = n % (sc.wire.len() * 8);
                    sc.wire[bit / 8] ^= 1 << (bit % 8);
                }
                FaultTarget::Header(n) => {
                    let bit = n % (sc.aad.len() * 8);
                    sc.aad[bit / 8] ^= 1 << (bit % 8);
                }
                FaultTarget::Payload(n) | FaultTarget::Mac(n) => {
                    let bit = n % (MAC_LEN * 8);
                    mac[bit / 8] ^= 1 << (bit % 8);
                }
            }
        }

        // The receiving end: key set from the K bit (as received), its own
        // counter: its IFV plus this TLP's position in the key's sequence.
        let rx_set = tlp::parse_prefix(&[sc.aad[0], sc.aad[1], sc.aad[2], sc.aad[3]])
            .map(|(k, ..)| k)
            .unwrap_or(set);
        let ok = match keys.armed(tx_dir, ss, rx_set) {
            Some(rx_key) => {
                let rx_invocation = rx_key
                    .ifv()
                    .wrapping_add(invocation.wrapping_sub(tx_key.ifv()));
                aead::open(
                    rx_key.cipher(),
                    rx_invocation,
                    &sc.aad,
                    &mut sc.wire,
                    &mac,
                    out,
                )
            }
            None => false,
        };
        if self.ide.link.tracing.load(Ordering::Relaxed) {
            let rec = TraceRecord {
                flow: match from {
                    LinkEnd::Device => Flow::Upstream,
                    LinkEnd::Host => Flow::Downstream,
                },
                kind: match s.stream.kind {
                    StreamKind::Selective => 0,
                    StreamKind::Link => 1,
                },
                index: s.stream.index,
                stream_id: s.id,
                sub_stream: ss as u8,
                key_set: set as u8,
                verified: ok,
                invocation,
                header: sc.aad.clone(),
                payload: sc.wire.clone(),
                mac,
            };
            if let Some(w) = self
                .ide
                .link
                .trace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                if let Err(e) = w.record(&rec) {
                    log::warn!("IDE trace: {e}");
                }
            }
        }
        if !ok {
            self.ide.link.failures.fetch_add(1, Ordering::Relaxed);
            let prefix_dw = u32::from_be_bytes(prefix);
            self.ide
                .integrity_failure(s.stream, s.id, towards, header.log_dwords(), prefix_dw);
            return Err(link_err(format!(
                "{} (Stream ID {}): {} TLP failed its integrity check at the {:?} end; dropped",
                s.stream,
                s.id,
                ss.name(),
                towards
            )));
        }
        self.ide.link.ide_tlps.fetch_add(1, Ordering::Relaxed);
        self.ide
            .link
            .ide_bytes
            .fetch_add(payload_len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Puts `data` (at `addr`) into a dword-aligned TLP payload in `into`;
    /// returns the offset of `data` in it.
    fn pad(addr: u64, data: &[u8], into: &mut Vec<u8>) -> usize {
        let (start, dws, _, _) = tlp::dw_span(addr, data.len());
        let off = (addr - start) as usize;
        into.clear();
        into.resize(off, 0);
        into.extend_from_slice(data);
        into.resize(dws * 4, 0);
        off
    }

    /// A device write to guest memory (MWr on the PR sub-stream).
    fn dma_write(&self, mem: DirectMemory<'_>, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let strict = self.ide.require_secure.load(Ordering::Relaxed);
        if !self.ide.link_active() && !strict {
            return mem.write(iova, data);
        }
        let view = self.ide.view();
        let tee = self.ide.tee.load(Ordering::Relaxed);
        let rid = self.ide.config().rid;
        SCRATCH.with(|c| {
            let sc = &mut *c.borrow_mut();
            let mut out = std::mem::take(&mut sc.plain);
            let r = (|| {
                for (a, n) in tlp::split(iova, data.len(), self.mps()) {
                    let chunk = &data[(a - iova) as usize..][..n];
                    match view.route_request(a, tee) {
                        None if strict => return Err(self.refuse(None)),
                        None => {
                            self.ide.link.plain_tlps.fetch_add(1, Ordering::Relaxed);
                            mem.write(a, chunk)?;
                        }
                        Some(s) if !s.secure => return Err(self.refuse(Some(s))),
                        Some(s) => {
                            let off = Self::pad(a, chunk, &mut sc.wire);
                            let h = tlp::mem_request(true, a, n, rid, self.ide.link.next_tag());
                            self.tlp(s, LinkEnd::Device, SubStream::Posted, &h, &mut out, sc)?;
                            mem.write(a, &out[off..off + n])?;
                        }
                    }
                }
                Ok(())
            })();
            sc.plain = out;
            r
        })
    }

    /// A device read of guest memory (MRd on NPR, completions on CPL).
    fn dma_read(&self, mem: DirectMemory<'_>, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let strict = self.ide.require_secure.load(Ordering::Relaxed);
        if !self.ide.link_active() && !strict {
            return mem.read(iova, buf);
        }
        let view = self.ide.view();
        let tee = self.ide.tee.load(Ordering::Relaxed);
        let rid = self.ide.config().rid;
        let (mps, mrrs) = (self.mps(), self.mrrs());
        let len = buf.len();
        SCRATCH.with(|c| {
            let sc = &mut *c.borrow_mut();
            let mut out = std::mem::take(&mut sc.plain);
            let r = (|| {
                for (a, n) in tlp::split(iova, len, mrrs) {
                    let dst = &mut buf[(a - iova) as usize..][..n];
                    match view.route_request(a, tee) {
                        None if strict => return Err(self.refuse(None)),
                        None => {
                            self.ide.link.plain_tlps.fetch_add(1, Ordering::Relaxed);
                            mem.read(a, dst)?;
                        }
                        Some(s) if !s.secure => return Err(self.refuse(Some(s))),
                        Some(s) => {
                            let tag = self.ide.link.next_tag();
                            let req = tlp::mem_request(false, a, n, rid, tag);
                            sc.wire.clear();
                            self.tlp(s, LinkEnd::Device, SubStream::NonPosted, &req, &mut out, sc)?;
                            let mut remaining = n;
                            for (ca, cn) in tlp::split(a, n, mps) {
                                // The host end reads guest memory straight
                                // into its completion...
                                let (start, dws, _, _) = tlp::dw_span(ca, cn);
                                let off = (ca - start) as usize;
                                sc.wire.clear();
                                sc.wire.resize(dws * 4, 0);
                                mem.read(ca, &mut sc.wire[off..off + cn])?;
                                let cpl = tlp::completion(HOST_RID, rid, tag, ca, remaining, dws);
                                // ...and the device end gets the verified data.
                                self.tlp(
                                    s,
                                    LinkEnd::Host,
                                    SubStream::Completion,
                                    &cpl,
                                    &mut out,
                                    sc,
                                )?;
                                dst[(ca - a) as usize..][..cn].copy_from_slice(&out[off..off + cn]);
                                remaining -= cn;
                            }
                        }
                    }
                }
                Ok(())
            })();
            sc.plain = out;
            r
        })
    }

    /// A host write to the device's BAR at bus address `addr`: true when
    /// the data may be delivered to the device (verified, or not on a
    /// stream), false when it failed its integrity check (dropped).
    pub fn host_write(&self, addr: u64, data: &[u8]) -> bool {
        let view = self.ide.view();
        let Some(s) = view.route_host() else {
            return true;
        };
        SCRATCH.with(|c| {
            let sc = &mut *c.borrow_mut();
            let mut out = std::mem::take(&mut sc.plain);
            let mut ok = true;
            for (a, n) in tlp::split(addr, data.len(), self.mps()) {
                Self::pad(a, &data[(a - addr) as usize..][..n], &mut sc.wire);
                let h = tlp::mem_request(true, a, n, HOST_RID, self.ide.link.next_tag());
                if self
                    .tlp(s, LinkEnd::Host, SubStream::Posted, &h, &mut out, sc)
                    .is_err()
                {
                    ok = false;
                    break;
                }
            }
            sc.plain = out;
            ok
        })
    }

    /// A host read of the device's BAR: the request crosses to the device,
    /// `fetch` reads the register(s), the completion crosses back. False
    /// when a TLP failed its integrity check (the host sees all-ones).
    pub fn host_read(&self, addr: u64, buf: &mut [u8], fetch: impl FnOnce(&mut [u8])) -> bool {
        let view = self.ide.view();
        let Some(s) = view.route_host() else {
            fetch(buf);
            return true;
        };
        let rid = self.ide.config().rid;
        SCRATCH.with(|c| {
            let sc = &mut *c.borrow_mut();
            let mut out = std::mem::take(&mut sc.plain);
            let tag = self.ide.link.next_tag();
            let req = tlp::mem_request(false, addr, buf.len(), HOST_RID, tag);
            sc.wire.clear();
            let mut ok = self
                .tlp(s, LinkEnd::Host, SubStream::NonPosted, &req, &mut out, sc)
                .is_ok();
            if ok {
                fetch(buf);
                let mut remaining = buf.len();
                for (ca, cn) in tlp::split(addr, buf.len(), self.mps()) {
                    let part = &mut buf[(ca - addr) as usize..][..cn];
                    let off = Self::pad(ca, part, &mut sc.wire);
                    let cpl = tlp::completion(rid, HOST_RID, tag, ca, remaining, sc.wire.len() / 4);
                    if self
                        .tlp(
                            s,
                            LinkEnd::Device,
                            SubStream::Completion,
                            &cpl,
                            &mut out,
                            sc,
                        )
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                    part.copy_from_slice(&out[off..off + cn]);
                    remaining -= cn;
                }
            }
            sc.plain = out;
            if !ok {
                buf.fill(0xff);
            }
            ok
        })
    }
}

impl IdeLink {
    /// TDISP's DMA gate ([`super::DmaGate`]): refuses the whole access
    /// before any TLP of it crosses the link when the gate is closed, or
    /// when a TLP of it would not travel on the bound SECURE stream.
    fn gate(&self, iova: u64, len: usize, max: usize) -> Result<(), DmaError> {
        let id = match self.ide.dma_gate() {
            super::DmaGate::Open => return Ok(()),
            super::DmaGate::Closed => {
                self.ide.link.refused.fetch_add(1, Ordering::Relaxed);
                return Err(link_err("the TDI is in ERROR: device DMA refused".into()));
            }
            super::DmaGate::Stream(id) => id,
        };
        let view = self.ide.view();
        let tee = self.ide.tee.load(Ordering::Relaxed);
        for (a, _) in tlp::split(iova, len, max) {
            if !view
                .route_request(a, tee)
                .is_some_and(|s| s.secure && s.id == id)
            {
                self.ide.link.refused.fetch_add(1, Ordering::Relaxed);
                return Err(link_err(format!(
                    "DMA at {a:#x} is not on the TDI's bound stream (Stream ID {id}): refused"
                )));
            }
        }
        Ok(())
    }
}

impl DmaInterposer for IdeLink {
    fn active(&self) -> bool {
        self.ide.link_active()
            || self.ide.require_secure.load(Ordering::Relaxed)
            || self.ide.dma_gate() != super::DmaGate::Open
    }

    fn read(&self, mem: DirectMemory<'_>, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.gate(iova, buf.len(), self.mrrs())?;
        self.dma_read(mem, iova, buf)
    }

    fn write(&self, mem: DirectMemory<'_>, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        self.gate(iova, data.len(), self.mps())?;
        self.dma_write(mem, iova, data)
    }
}
