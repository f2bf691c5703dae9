//! PCIe Data Object Exchange (PCIe r6.x §6.30) carrying CMA/SPDM (§6.31):
//! the one home of DOE data-object encoding, discovery and CMA dispatch, for
//! both ends.
//!
//! ```text
//! dword 0: VendorID u16 | DataObjectType u8 | reserved u8
//! dword 1: Length[17:0] in dwords including the 2-dword header (0 = 2^18)
//! payload, zero-padded to a dword
//! ```
//! PCI-SIG (vendor 0x0001) types: 0 discovery, 1 CMA/SPDM, 2 secured CMA/SPDM.
//!
//! Device side: a DOE instance serves discovery (built in) plus the protocols
//! of a [`DoeProtocol`] set; [`DoeEndpoint::handle`] takes the request object
//! the requester wrote and returns the response object. A [`Responder`] is the
//! CMA/SPDM and secured CMA/SPDM protocol; other protocols (vendor-defined
//! data objects) plug in beside it with a `Vec<Box<dyn DoeProtocol>>`. Note
//! that IDE_KM and TDISP are not DOE protocols: they are SPDM
//! VENDOR_DEFINED_REQUESTs inside a secured CMA session and plug into the
//! responder ([`Responder::register_vendor`]), not here.
//!
//! Requester side: anything that moves whole objects to a DOE instance (a
//! mailbox's registers, an spdm-emu socket, an in-process endpoint)
//! implements [`DoeChannel`]; [`discover`] walks discovery over it and
//! [`DoeTransport`] turns it into the requester's [`Transport`].
//!
//! Driving a mailbox's registers (PCIe §6.30.2): [`Mailbox`] is the one
//! driver of the DOE registers through configuration space, over anything
//! that reads and writes a function's configuration dwords
//! ([`ConfigAccess`]: a sysfs `config` file in a guest, a vfio-user client's
//! region 7 on the host). The register layout ([`reg`], [`ctrl`],
//! [`status`]) is here; the register behaviour (the device's mailbox state
//! machine) is the device model's (devices/src/security/doe.rs).

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use log::warn;
use thiserror::Error;

use crate::error::TransportError;
use crate::responder::{Responder, SecuredReply};
use crate::transport::{Message, Transport};

/// PCI-SIG's vendor ID, owner of the standard data object types.
pub const PCI_SIG_VENDOR: u16 = 0x0001;
/// Largest DOE object in dwords (the length field's 0 encodes 2^18).
pub const MAX_OBJECT_DWORDS: usize = 1 << 18;
/// Largest DOE object in bytes.
pub const DOE_MAX_BYTES: usize = MAX_OBJECT_DWORDS * 4;
/// Size of the header (two dwords).
pub const HEADER_BYTES: usize = 8;

/// Extended capability ID of DOE.
pub const DOE_EXT_CAP_ID: u16 = 0x002e;

/// Size of the DOE capability (header included).
pub const DOE_CAP_SIZE: usize = 0x18;

/// Register offsets relative to the DOE capability header (PCIe §7.9.24),
/// for the device model of the registers and for drivers of them.
pub mod reg {
    /// DOE Capabilities.
    pub const CAP: u16 = 0x04;
    /// DOE Control.
    pub const CTRL: u16 = 0x08;
    /// DOE Status.
    pub const STATUS: u16 = 0x0c;
    /// DOE Write Data Mailbox.
    pub const WRITE: u16 = 0x10;
    /// DOE Read Data Mailbox.
    pub const READ: u16 = 0x14;
}

/// DOE Control bits.
pub mod ctrl {
    /// Abort.
    pub const ABORT: u32 = 1 << 0;
    /// Interrupt enable.
    pub const INT_EN: u32 = 1 << 1;
    /// Go.
    pub const GO: u32 = 1 << 31;
}

/// DOE Status bits.
pub mod status {
    /// Busy.
    pub const BUSY: u32 = 1 << 0;
    /// Interrupt status.
    pub const INT_STATUS: u32 = 1 << 1;
    /// Error.
    pub const ERROR: u32 = 1 << 2;
    /// Data Object Ready.
    pub const READY: u32 = 1 << 31;
}

/// A data object protocol: (Vendor ID, Data Object Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolId {
    /// Vendor ID (PCI-SIG is 0x0001).
    pub vendor: u16,
    /// Data object type.
    pub object_type: u8,
}

impl ProtocolId {
    /// DOE Discovery (PCI-SIG type 0).
    pub const DISCOVERY: Self = Self::new(PCI_SIG_VENDOR, 0);
    /// CMA/SPDM (PCI-SIG type 1).
    pub const CMA: Self = Self::new(PCI_SIG_VENDOR, 1);
    /// Secured CMA/SPDM (PCI-SIG type 2).
    pub const SECURED_CMA: Self = Self::new(PCI_SIG_VENDOR, 2);
    /// What discovery reports for an index past the last protocol (QEMU's
    /// DOE model answers the same).
    pub const NONE: Self = Self::new(0xffff, 0xff);

    /// A protocol.
    pub const fn new(vendor: u16, object_type: u8) -> Self {
        Self {
            vendor,
            object_type,
        }
    }

    /// The first header dword of an object of this protocol.
    pub const fn header1(self) -> u32 {
        self.vendor as u32 | (self.object_type as u32) << 16
    }

    /// The protocol named by a first header dword.
    pub const fn from_header1(dw: u32) -> Self {
        Self::new((dw & 0xffff) as u16, (dw >> 16) as u8)
    }

    /// A human name for the standard protocols.
    pub fn name(self) -> &'static str {
        match self {
            Self::DISCOVERY => "discovery",
            Self::CMA => "CMA/SPDM",
            Self::SECURED_CMA => "secured CMA/SPDM",
            _ => "vendor-defined",
        }
    }
}

/// `VVVV:TT`, as the kernel names a feature in sysfs `doe_features/`.
impl fmt::Display for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}", self.vendor, self.object_type)
    }
}

/// Errors of a DOE object. A device discards the object (a mailbox logs it
/// and sets no Data Object Ready; the requester times out).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DoeError {
    /// Fewer than the two header dwords.
    #[error("object shorter than its 2-dword header")]
    Truncated,
    /// A byte count that is not a whole number of dwords.
    #[error("object is not a whole number of dwords ({0} bytes)")]
    NotDwordAligned(usize),
    /// The length field disagrees with the dwords present.
    #[error("header length {header} dwords does not match the object ({actual} dwords)")]
    LengthMismatch {
        /// What the length field says.
        header: usize,
        /// What arrived.
        actual: usize,
    },
    /// No protocol of this DOE instance has this (vendor, type).
    #[error("unsupported data object protocol {0}")]
    UnsupportedProtocol(ProtocolId),
    /// More than 2^18 dwords.
    #[error("payload too large for a DOE object ({0} bytes)")]
    TooLarge(usize),
    /// A discovery request without its index dword, or a discovery response
    /// without its entry.
    #[error("discovery object without its dword")]
    BadDiscovery,
    /// The protocol handler produced no response (see its log for why).
    #[error("protocol {0} produced no response; request discarded")]
    NoResponse(ProtocolId),
    /// A response object of another protocol than the request's.
    #[error("a {request} request was answered with a {response} object")]
    ProtocolMismatch {
        /// The request's protocol.
        request: ProtocolId,
        /// The response's protocol.
        response: ProtocolId,
    },
}

/// The object length in dwords that a header's second dword announces.
pub fn length_dwords(header2: u32) -> usize {
    match header2 & 0x3_ffff {
        0 => MAX_OBJECT_DWORDS,
        n => n as usize,
    }
}

/// Build a DOE object (header + payload zero-padded to a dword).
pub fn encode_object(protocol: ProtocolId, payload: &[u8]) -> Result<Vec<u8>, DoeError> {
    let padded = payload.len().div_ceil(4) * 4;
    let total = HEADER_BYTES + padded;
    if total > DOE_MAX_BYTES {
        return Err(DoeError::TooLarge(payload.len()));
    }
    let dwords = (total / 4) as u32 & 0x3_ffff; // 2^18 encodes as 0
    let mut v = Vec::with_capacity(total);
    v.extend_from_slice(&protocol.header1().to_le_bytes());
    v.extend_from_slice(&dwords.to_le_bytes());
    v.extend_from_slice(payload);
    v.resize(total, 0);
    Ok(v)
}

/// Split a DOE object into its protocol and payload (padding included).
pub fn decode_object(obj: &[u8]) -> Result<(ProtocolId, &[u8]), DoeError> {
    if obj.len() < HEADER_BYTES {
        return Err(DoeError::Truncated);
    }
    if obj.len() % 4 != 0 {
        return Err(DoeError::NotDwordAligned(obj.len()));
    }
    if obj.len() > DOE_MAX_BYTES {
        return Err(DoeError::TooLarge(obj.len()));
    }
    let dword = |i: usize| u32::from_le_bytes([obj[i], obj[i + 1], obj[i + 2], obj[i + 3]]);
    let header = length_dwords(dword(4));
    if header != obj.len() / 4 || header < 2 {
        return Err(DoeError::LengthMismatch {
            header,
            actual: obj.len() / 4,
        });
    }
    Ok((ProtocolId::from_header1(dword(0)), &obj[HEADER_BYTES..]))
}

/// The payload of a discovery request: `Index u8 | Version u8 | reserved u16`.
/// Linux sends version 2 to a DOE capability of version 2 or later.
pub fn discovery_request(index: u8, version: u8) -> [u8; 4] {
    [index, version, 0, 0]
}

/// One discovery response: the protocol at the asked index and the next
/// index to ask for (0: that was the last one).
pub fn parse_discovery_response(payload: &[u8]) -> Result<(ProtocolId, u8), DoeError> {
    let p = payload.get(..4).ok_or(DoeError::BadDiscovery)?;
    Ok((
        ProtocolId::new(u16::from_le_bytes([p[0], p[1]]), p[2]),
        p[3],
    ))
}

// ---------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------

/// Data object protocols a DOE instance serves besides discovery.
///
/// A device builds its instance from any number of these; discovery lists
/// them in the order given.
pub trait DoeProtocol: Send {
    /// The (vendor, type) pairs this handler answers, in discovery order.
    fn protocols(&self) -> Vec<ProtocolId>;
    /// Handles the payload of a request of `protocol` (the header stripped;
    /// the length is a multiple of 4, padding included) and returns the
    /// response payload, sent as an object of the same protocol, or `None`
    /// to discard the request without a response (log why).
    fn handle(&mut self, protocol: ProtocolId, request: &[u8]) -> Option<Vec<u8>>;
    /// Returns to the power-on state (DOE Abort, FLR, reset, new client).
    fn reset(&mut self) {}
}

impl<T: DoeProtocol + ?Sized> DoeProtocol for Box<T> {
    fn protocols(&self) -> Vec<ProtocolId> {
        (**self).protocols()
    }
    fn handle(&mut self, protocol: ProtocolId, request: &[u8]) -> Option<Vec<u8>> {
        (**self).handle(protocol, request)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

/// A set of protocols: each request goes to the first handler listing its
/// protocol.
impl<T: DoeProtocol> DoeProtocol for Vec<T> {
    fn protocols(&self) -> Vec<ProtocolId> {
        self.iter().flat_map(|p| p.protocols()).collect()
    }
    fn handle(&mut self, protocol: ProtocolId, request: &[u8]) -> Option<Vec<u8>> {
        self.iter_mut()
            .find(|p| p.protocols().contains(&protocol))?
            .handle(protocol, request)
    }
    fn reset(&mut self) {
        self.iter_mut().for_each(|p| p.reset());
    }
}

/// CMA/SPDM (type 1) and secured CMA/SPDM (type 2) answered by an SPDM
/// responder.
///
/// # A secured request whose reply could only go out in plain
///
/// The responder answers some secured records with a plain SPDM ERROR
/// ([`SecuredReply::Plain`]): a record for a session it does not know (never
/// established, ended, timed out by the heartbeat), a record too short to
/// name a session, or one arriving after a sequence number ran out, so that
/// no key is left to seal the reply with. (A record that fails to decrypt in
/// a live session is answered with an ERROR DecryptError sealed in that
/// session, a normal type-2 reply, and the session ends.) Over DOE such a
/// request is **discarded**: no response object, the mailbox logs it, and
/// the requester times out.
///
/// Why not answer with a type-1 (CMA/SPDM) object carrying the ERROR:
/// - DOE (PCIe §6.30) answers a request with an object of the request's
///   protocol, and requesters rely on it: Linux's DOE core fails an exchange
///   whose response names another (vendor, type) with -EIO
///   (drivers/pci/doe.c, pci_doe_recv_resp). A type-2 object must carry a
///   DSP0277 record, which a plain ERROR is not.
/// - DSP0277 gives no way to carry an unprotected ERROR inside a secured
///   message, and a reply for an unknown session cannot be protected.
/// - DMTF libspdm, which spdm-emu's responder and most device firmware use,
///   drops a record for an unknown session without any response
///   (libspdm_build_response, SPDM_ERROR_CODE_INVALID_SESSION: "just ignore
///   this message") and seals DecryptError in the session when the session
///   is known. So a requester sees from trustdev what it sees from them.
///
/// A requester, on the other hand, accepts a type-1 reply to a type-2
/// request (see [`DoeTransport`]): older libspdm responders answered an
/// unknown session that way, and reporting their ERROR beats a timeout.
impl DoeProtocol for Responder {
    fn protocols(&self) -> Vec<ProtocolId> {
        vec![ProtocolId::CMA, ProtocolId::SECURED_CMA]
    }

    fn handle(&mut self, protocol: ProtocolId, request: &[u8]) -> Option<Vec<u8>> {
        match protocol {
            ProtocolId::CMA => Some(self.handle_message(request)),
            ProtocolId::SECURED_CMA => match self.handle_secured(request) {
                SecuredReply::Secured(rsp) => Some(rsp),
                SecuredReply::Plain(err) => {
                    warn!(
                        "secured CMA: the record cannot be answered inside a session \
                         (SPDM ERROR {:02x?} in plain); discarded without a response",
                        err.get(2..4).unwrap_or_default()
                    );
                    None
                }
                SecuredReply::None => None,
            },
            _ => None,
        }
    }

    fn reset(&mut self) {
        Responder::reset(self);
    }
}

/// A DOE instance's protocol logic: discovery plus a [`DoeProtocol`] set.
///
/// A device model calls [`DoeEndpoint::handle`] with the object the guest
/// wrote (on DOE Go) and places the returned object in the read mailbox.
pub struct DoeEndpoint<P: DoeProtocol = Vec<Box<dyn DoeProtocol>>> {
    protocols: P,
}

impl<P: DoeProtocol> DoeEndpoint<P> {
    /// An instance serving discovery plus `protocols`.
    pub fn new(protocols: P) -> Self {
        Self { protocols }
    }

    /// The protocols discovery lists, index order (discovery itself first).
    pub fn protocols(&self) -> Vec<ProtocolId> {
        let mut v = vec![ProtocolId::DISCOVERY];
        v.extend(self.protocols.protocols());
        v
    }

    /// The protocol set.
    pub fn protocol(&self) -> &P {
        &self.protocols
    }

    /// The protocol set, mutably.
    pub fn protocol_mut(&mut self) -> &mut P {
        &mut self.protocols
    }

    /// DOE Abort, function reset: every protocol returns to its power-on
    /// state (for CMA: the SPDM connection and its sessions end).
    pub fn reset(&mut self) {
        self.protocols.reset();
    }

    /// Handle one request object and return the response object.
    pub fn handle(&mut self, obj: &[u8]) -> Result<Vec<u8>, DoeError> {
        let (protocol, payload) = decode_object(obj)?;
        let response = if protocol == ProtocolId::DISCOVERY {
            self.discovery(payload)?
        } else {
            if !self.protocols.protocols().contains(&protocol) {
                return Err(DoeError::UnsupportedProtocol(protocol));
            }
            self.protocols
                .handle(protocol, payload)
                .ok_or(DoeError::NoResponse(protocol))?
        };
        encode_object(protocol, &response)
    }

    /// PCIe §6.30.1.1: the entry at the requested index and the next index,
    /// 0 after the last entry. An index past the table answers
    /// [`ProtocolId::NONE`] with next index 0, so no walk can loop.
    fn discovery(&self, payload: &[u8]) -> Result<Vec<u8>, DoeError> {
        let index = *payload.first().ok_or(DoeError::BadDiscovery)? as usize;
        let table = self.protocols();
        let entry = table.get(index).copied().unwrap_or(ProtocolId::NONE);
        let next = if index + 1 < table.len() && index < 255 {
            index as u8 + 1
        } else {
            0
        };
        let mut p = entry.header1().to_le_bytes();
        p[3] = next;
        Ok(p.to_vec())
    }
}

impl DoeEndpoint<Responder> {
    /// The SPDM responder behind CMA.
    pub fn responder(&self) -> &Responder {
        &self.protocols
    }
    /// The SPDM responder behind CMA, mutably.
    pub fn responder_mut(&mut self) -> &mut Responder {
        &mut self.protocols
    }
}

// ---------------------------------------------------------------------------
// Requester side
// ---------------------------------------------------------------------------

/// Something that carries whole DOE objects to a DOE instance and brings the
/// response object back (a mailbox's registers, a socket, an in-process
/// endpoint).
pub trait DoeChannel {
    /// Sends one request object; returns the response object.
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError>;
}

impl<C: DoeChannel + ?Sized> DoeChannel for &mut C {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).exchange_object(obj)
    }
}

impl<P: DoeProtocol> DoeChannel for DoeEndpoint<P> {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.handle(obj)?)
    }
}

/// Sends one request of `protocol` and returns the response's protocol and
/// payload (padding included).
pub fn exchange(
    channel: &mut (impl DoeChannel + ?Sized),
    protocol: ProtocolId,
    payload: &[u8],
) -> Result<(ProtocolId, Vec<u8>), TransportError> {
    let obj = encode_object(protocol, payload)?;
    let rsp = channel.exchange_object(&obj)?;
    let (p, payload) = decode_object(&rsp)?;
    Ok((p, payload.to_vec()))
}

/// The discovery walk from index 0 until the next index is 0: every protocol
/// of the instance, discovery first. `version` is the request's version
/// field (2 for a version-2 DOE capability, as Linux sends; 0 before).
pub fn discover(
    channel: &mut (impl DoeChannel + ?Sized),
    version: u8,
) -> Result<Vec<ProtocolId>, TransportError> {
    let mut out = Vec::new();
    let mut index = 0u8;
    for _ in 0..=255 {
        let req = discovery_request(index, version);
        let (p, payload) = exchange(channel, ProtocolId::DISCOVERY, &req)?;
        if p != ProtocolId::DISCOVERY {
            return Err(DoeError::ProtocolMismatch {
                request: ProtocolId::DISCOVERY,
                response: p,
            }
            .into());
        }
        let (entry, next) = parse_discovery_response(&payload)?;
        out.push(entry);
        if next == 0 {
            return Ok(out);
        }
        index = next;
    }
    Err(TransportError::Malformed(
        "DOE discovery did not end after 256 entries",
    ))
}

/// The requester's [`Transport`] over DOE: SPDM messages as CMA/SPDM objects,
/// secured records as secured CMA/SPDM objects, one object per message.
///
/// A CMA/SPDM reply to a secured request is passed on as a plain message
/// (older libspdm responders answer an unknown session that way; the
/// requester then reports the ERROR). Any other protocol in a reply is an
/// error.
pub struct DoeTransport<C: DoeChannel> {
    /// The channel to the DOE instance.
    pub channel: C,
}

impl<C: DoeChannel> DoeTransport<C> {
    /// A transport over `channel`.
    pub fn new(channel: C) -> Self {
        Self { channel }
    }

    /// The discovery walk (version 0 requests, as spdm-emu sends).
    pub fn discover(&mut self) -> Result<Vec<ProtocolId>, TransportError> {
        discover(&mut self.channel, 0)
    }
}

impl<C: DoeChannel> Transport for DoeTransport<C> {
    fn send_receive(&mut self, msg: Message) -> Result<Message, TransportError> {
        let (request, payload) = match &msg {
            Message::Spdm(m) => (ProtocolId::CMA, m),
            Message::Secured(r) => (ProtocolId::SECURED_CMA, r),
        };
        let (response, p) = exchange(&mut self.channel, request, payload)?;
        match (request, response) {
            (_, ProtocolId::CMA) => Ok(Message::Spdm(p)),
            (ProtocolId::SECURED_CMA, ProtocolId::SECURED_CMA) => Ok(Message::Secured(p)),
            _ => Err(DoeError::ProtocolMismatch { request, response }.into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Requester side: the mailbox registers, through configuration space
// ---------------------------------------------------------------------------

/// Dword access to one PCI function's configuration space: a sysfs
/// `config` file in a guest, a vfio-user client's region 7 on the host.
pub trait ConfigAccess {
    /// Reads the dword at `offset`.
    fn cfg_read32(&mut self, offset: u16) -> io::Result<u32>;
    /// Writes the dword at `offset`.
    fn cfg_write32(&mut self, offset: u16, value: u32) -> io::Result<()>;
    /// Names the function in error messages (e.g. its BDF).
    fn name(&self) -> String {
        String::new()
    }
}

impl<A: ConfigAccess + ?Sized> ConfigAccess for &mut A {
    fn cfg_read32(&mut self, offset: u16) -> io::Result<u32> {
        (**self).cfg_read32(offset)
    }
    fn cfg_write32(&mut self, offset: u16, value: u32) -> io::Result<()> {
        (**self).cfg_write32(offset, value)
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// The offsets of every extended capability with `id`, in list order
/// (a walk from 100h that stops at a zero or all-ones header, a next
/// pointer below 100h, or after 1024 entries).
pub fn find_ext_caps(a: &mut (impl ConfigAccess + ?Sized), id: u16) -> io::Result<Vec<u16>> {
    let mut out = Vec::new();
    let mut off = 0x100u16;
    for _ in 0..1024 {
        let h = a.cfg_read32(off)?;
        if h == 0 || h == u32::MAX {
            break;
        }
        if (h & 0xffff) as u16 == id {
            out.push(off);
        }
        let next = (h >> 20) as u16 & 0xffc;
        if next < 0x100 {
            break;
        }
        off = next;
    }
    Ok(out)
}

/// The offset of the first extended capability with `id`.
pub fn find_ext_cap(a: &mut (impl ConfigAccess + ?Sized), id: u16) -> io::Result<Option<u16>> {
    Ok(find_ext_caps(a, id)?.first().copied())
}

/// How long the driver waits for Busy to clear, for a response, or for an
/// abort to finish: the 1 s drivers/pci/doe.c uses (PCIe's DOE timeout).
pub const DOE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a [`Mailbox`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Exchanges (request objects sent).
    pub exchanges: u64,
    /// Time spent in exchanges.
    pub busy: Duration,
    /// Status polls the last exchange needed until Data Object Ready.
    pub last_polls: u32,
}

/// A DOE mailbox driven through configuration space the way
/// drivers/pci/doe.c drives one (Busy check, the request dword by dword
/// into the write mailbox, Go, Data Object Ready, the response dword by
/// dword with a read-mailbox ack each, Abort after an error), but polling
/// Status without the kernel's poll-interval sleeps. It is a
/// [`DoeChannel`]: [`discover`] and [`DoeTransport`] run over it.
///
/// The kernel itself uses a mailbox at enumeration and for TSM requests;
/// don't drive one while a TSM driver talks to the same function.
pub struct Mailbox<A> {
    access: A,
    offset: u16,
    stats: MailboxStats,
}

impl<A: ConfigAccess> Mailbox<A> {
    /// The mailbox whose DOE capability is at `offset` (not aborted).
    pub fn new(access: A, offset: u16) -> Self {
        Mailbox {
            access,
            offset,
            stats: MailboxStats::default(),
        }
    }

    /// The function's first DOE mailbox, aborted (idle).
    pub fn open(mut access: A) -> Result<Self, TransportError> {
        let offset = find_ext_cap(&mut access, DOE_EXT_CAP_ID)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no DOE extended capability", access.name()),
            )
        })?;
        let mut mb = Mailbox::new(access, offset);
        mb.abort()?;
        Ok(mb)
    }

    /// Offset of the DOE capability.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// What the mailbox has done so far.
    pub fn stats(&self) -> MailboxStats {
        self.stats
    }

    /// The configuration-space accessor (for the function's other registers).
    pub fn access(&mut self) -> &mut A {
        &mut self.access
    }

    fn fail(&self, what: impl fmt::Display) -> TransportError {
        let name = self.access.name();
        let sep = if name.is_empty() { "" } else { ": " };
        TransportError::Io(io::Error::other(format!(
            "{name}{sep}DOE [{:#x}] {what}",
            self.offset
        )))
    }

    fn rd(&mut self, reg: u16) -> Result<u32, TransportError> {
        let at = self.offset + reg;
        self.access
            .cfg_read32(at)
            .map_err(|e| self.fail(format_args!("config read at {at:#x}: {e}")))
    }

    fn wr(&mut self, reg: u16, v: u32) -> Result<(), TransportError> {
        let at = self.offset + reg;
        self.access
            .cfg_write32(at, v)
            .map_err(|e| self.fail(format_args!("config write at {at:#x}: {e}")))
    }

    /// Polls Status until `done` holds; returns it (the number of polls in
    /// `polls`), or fails with `what` after [`DOE_TIMEOUT`].
    fn poll(
        &mut self,
        start: Instant,
        polls: &mut u32,
        done: impl Fn(u32) -> bool,
        what: &str,
    ) -> Result<u32, TransportError> {
        loop {
            *polls += 1;
            let s = self.rd(reg::STATUS)?;
            if done(s) {
                return Ok(s);
            }
            if start.elapsed() > DOE_TIMEOUT {
                return Err(self.fail(format_args!("{what} (status {s:#010x})")));
            }
        }
    }

    /// Aborts whatever the mailbox is doing and waits until it is idle
    /// (Busy and Error clear).
    pub fn abort(&mut self) -> Result<(), TransportError> {
        self.wr(reg::CTRL, ctrl::ABORT)?;
        let mut polls = 0;
        self.poll(
            Instant::now(),
            &mut polls,
            |s| s & (status::BUSY | status::ERROR) == 0,
            "abort did not finish within 1 s",
        )
        .map(|_| ())
    }

    fn transfer(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        let p = ProtocolId::from_header1(dword(obj, 0));
        let what = format!("{p} ({})", p.name());
        let start = Instant::now();
        let mut polls = 0;
        let s = self.poll(
            start,
            &mut polls,
            |s| s & (status::BUSY | status::ERROR) != status::BUSY,
            "stays busy",
        )?;
        if s & status::ERROR != 0 {
            return Err(self.fail("reports Error before the request"));
        }
        for d in obj.chunks_exact(4) {
            self.wr(reg::WRITE, dword(d, 0))?;
        }
        self.wr(reg::CTRL, ctrl::GO)?;
        polls = 0;
        let s = self.poll(
            start,
            &mut polls,
            |s| s & (status::READY | status::ERROR) != 0,
            &format!("gave no response to a {what} request within 1 s (discarded as unsupported or malformed?)"),
        );
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                let _ = self.abort();
                return Err(e);
            }
        };
        if s & status::ERROR != 0 {
            let _ = self.abort();
            return Err(self.fail(format_args!("set Error after a {what} request")));
        }
        self.stats.last_polls = polls;
        let mut out = Vec::with_capacity(64);
        for _ in 0..2 {
            out.extend_from_slice(&self.rd(reg::READ)?.to_le_bytes());
            self.wr(reg::READ, 0)?;
        }
        let len = length_dwords(dword(&out, 4));
        if len < 2 {
            let _ = self.abort();
            return Err(self.fail(format_args!(
                "response length {len} is shorter than its header"
            )));
        }
        for _ in 2..len {
            if self.rd(reg::STATUS)? & status::READY == 0 {
                return Err(self.fail(format_args!(
                    "response ended before its length ({len} dwords)"
                )));
            }
            out.extend_from_slice(&self.rd(reg::READ)?.to_le_bytes());
            self.wr(reg::READ, 0)?;
        }
        Ok(out)
    }
}

fn dword(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One object in, one object out, through the mailbox registers (counted
/// and timed in [`Mailbox::stats`]).
impl<A: ConfigAccess> DoeChannel for Mailbox<A> {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        if obj.len() < HEADER_BYTES || obj.len() % 4 != 0 {
            return Err(TransportError::Malformed(
                "DOE object of whole dwords expected",
            ));
        }
        let t = Instant::now();
        let r = self.transfer(obj);
        self.stats.busy += t.elapsed();
        self.stats.exchanges += 1;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_layout() {
        let o = encode_object(ProtocolId::CMA, &[0x10, 0x84, 0, 0, 0xAA]).unwrap();
        assert_eq!(
            o,
            vec![1, 0, 1, 0, 4, 0, 0, 0, 0x10, 0x84, 0, 0, 0xAA, 0, 0, 0]
        );
        let (p, payload) = decode_object(&o).unwrap();
        assert_eq!((p, payload.len()), (ProtocolId::CMA, 8));
        assert_eq!(
            decode_object(&o[..12]),
            Err(DoeError::LengthMismatch {
                header: 4,
                actual: 3
            })
        );
        assert_eq!(decode_object(&o[..7]), Err(DoeError::Truncated));
        assert_eq!(decode_object(&o[..9]), Err(DoeError::NotDwordAligned(9)));
        assert_eq!(length_dwords(0), MAX_OBJECT_DWORDS);
        assert_eq!(length_dwords(0xfffc_0003), 3);
    }

    /// The mailbox registers of PCIe §6.30.2 over a discovery-only DOE
    /// instance, at 100h of a fake configuration space.
    struct FakeMailbox {
        ep: DoeEndpoint,
        write: Vec<u8>,
        read: Vec<u8>,
        at: usize,
        error: bool,
    }

    impl ConfigAccess for FakeMailbox {
        fn cfg_read32(&mut self, o: u16) -> io::Result<u32> {
            Ok(match o {
                0x100 => 0x0001_002e,
                0x10c => {
                    let ready = self.at < self.read.len();
                    (u32::from(ready) << 31) | if self.error { status::ERROR } else { 0 }
                }
                0x114 if self.at < self.read.len() => dword(&self.read, self.at),
                _ => 0,
            })
        }
        fn cfg_write32(&mut self, o: u16, v: u32) -> io::Result<()> {
            match (o, v) {
                (0x108, ctrl::ABORT) => {
                    *self = FakeMailbox::new();
                }
                (0x108, ctrl::GO) => match self.ep.handle(&std::mem::take(&mut self.write)) {
                    Ok(r) => (self.read, self.at) = (r, 0),
                    Err(_) => self.error = true,
                },
                (0x110, v) => self.write.extend_from_slice(&v.to_le_bytes()),
                (0x114, _) => self.at += 4,
                _ => {}
            }
            Ok(())
        }
    }

    impl FakeMailbox {
        fn new() -> Self {
            FakeMailbox {
                ep: DoeEndpoint::new(Vec::new()),
                write: Vec::new(),
                read: Vec::new(),
                at: 0,
                error: false,
            }
        }
    }

    #[test]
    fn mailbox_driver() {
        let mut mb = Mailbox::open(FakeMailbox::new()).unwrap();
        assert_eq!(mb.offset(), 0x100);
        assert_eq!(discover(&mut mb, 2).unwrap(), [ProtocolId::DISCOVERY]);
        assert_eq!(mb.stats().exchanges, 1);
        assert_eq!(mb.stats().last_polls, 1, "ready at the first poll");
        // A request the instance discards sets Error (here): the driver
        // aborts and says so; the mailbox works again afterwards.
        let bad = encode_object(ProtocolId::CMA, &[0x10, 0x84, 0, 0]).unwrap();
        let e = mb.exchange_object(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "i/o: DOE [0x100] set Error after a 0001:01 (CMA/SPDM) request"
        );
        assert_eq!(discover(&mut mb, 2).unwrap().len(), 1);
        assert!(mb.exchange_object(&[0; 6]).is_err(), "not whole dwords");
    }

    #[test]
    fn protocol_ids() {
        assert_eq!(ProtocolId::SECURED_CMA.header1(), 0x0002_0001);
        assert_eq!(
            ProtocolId::from_header1(0xab02_0001),
            ProtocolId::SECURED_CMA
        );
        assert_eq!(ProtocolId::new(0x1e0f, 0x22).to_string(), "1e0f:22");
        assert_eq!(ProtocolId::CMA.name(), "CMA/SPDM");
    }
}
