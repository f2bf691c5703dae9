//! The TSM side of IDE setup for one function, in one place: its DOE
//! mailbox (driven through configuration space), an SPDM session, IDE_KM
//! key programming inside it, and the selective stream registers - the
//! sequence a TSM runs (Linux: `pci_ide_stream_setup`, IDE_KM KEY_PROG +
//! K_SET_GO, `pci_ide_stream_enable`; refresh by the other key set;
//! K_SET_STOP, disable, teardown, END_SESSION).
//!
//! Generic over [`ConfigAccess`]: the guest tool runs it over a sysfs
//! `config` file, host tests and benchmarks over a vfio-user client.
//!
//! Only the device's side of the link is programmed: the port partner (a
//! root port with IDE) is modelled inside the device's server, which uses
//! the keys the device gets (what a platform TSM programs into both ends).

use super::regs::{IdeLayout, IdeRegs, IdeRegsError, StreamSettings};
use super::requester::IdeKmError;
use super::{IdeKey, KeySet, KeySlot, QueryResp};
use crate::error::{RequesterError, TransportError};
use crate::transport::doe::{ConfigAccess, DoeTransport, Mailbox};
use crate::{Requester, RequesterConfig};

/// Why an IDE setup step failed.
#[derive(Debug, thiserror::Error)]
pub enum IdeHostError {
    /// The DOE mailbox or configuration space failed.
    #[error("DOE: {0}")]
    Transport(#[from] TransportError),
    /// The IDE registers.
    #[error("IDE registers: {0}")]
    Regs(#[from] IdeRegsError),
    /// An SPDM step failed.
    #[error("{step}: {source}")]
    Spdm {
        /// The step.
        step: &'static str,
        /// Why.
        source: RequesterError,
    },
    /// An IDE_KM step failed.
    #[error("IDE_KM {0}")]
    IdeKm(#[from] IdeKmError),
}

fn spdm(step: &'static str) -> impl FnOnce(RequesterError) -> IdeHostError {
    move |source| IdeHostError::Spdm { step, source }
}

/// The requester an [`IdeHost`] runs.
pub type HostRequester<A> = Requester<DoeTransport<Mailbox<A>>>;

/// An IDE setup in progress: an SPDM session with the function over its
/// DOE mailbox, and its IDE capability.
pub struct IdeHost<A: ConfigAccess> {
    req: HostRequester<A>,
    sid: u32,
    layout: IdeLayout,
    port: u8,
}

impl<A: ConfigAccess> IdeHost<A> {
    /// Authenticates the function (VERSION/CAPABILITIES/ALGORITHMS,
    /// DIGESTS, its slot-0 chain verified to one of `cfg.trusted_roots`,
    /// CHALLENGE when `challenge`) and opens a session (KEY_EXCHANGE +
    /// FINISH) on its first DOE mailbox.
    pub fn connect(access: A, cfg: RequesterConfig, challenge: bool) -> Result<Self, IdeHostError> {
        let mut mb = Mailbox::open(access)?;
        let layout = IdeLayout::read(mb.access())
            .map_err(TransportError::Io)?
            .ok_or(IdeRegsError::NoCapability)?;
        let mut req = Requester::new(cfg, DoeTransport::new(mb));
        req.init_connection().map_err(spdm("VCA"))?;
        req.get_digests().map_err(spdm("GET_DIGESTS"))?;
        req.get_certificate(0).map_err(spdm("GET_CERTIFICATE"))?;
        if challenge {
            req.challenge(0, 0xff).map_err(spdm("CHALLENGE"))?;
        }
        let sid = req.key_exchange(0, 0).map_err(spdm("KEY_EXCHANGE"))?;
        Ok(IdeHost {
            req,
            sid,
            layout,
            port: 0,
        })
    }

    /// The SPDM session.
    pub fn session(&self) -> u32 {
        self.sid
    }

    /// The IDE capability's layout.
    pub fn layout(&self) -> IdeLayout {
        self.layout
    }

    /// The IDE_KM PortIndex used (0: the function's own port).
    pub fn port(&self) -> u8 {
        self.port
    }

    /// The requester (for raw requests and statistics).
    pub fn requester(&mut self) -> &mut HostRequester<A> {
        &mut self.req
    }

    /// The configuration-space accessor (for the function's other
    /// registers, e.g. through a vfio-user client).
    pub fn access(&mut self) -> &mut A {
        self.req.transport_mut().channel.access()
    }

    /// The function's IDE registers.
    pub fn regs(&mut self) -> IdeRegs<'_, A> {
        let layout = self.layout;
        IdeRegs::with_layout(self.access(), layout)
    }

    /// IDE_KM QUERY.
    pub fn query(&mut self) -> Result<QueryResp, IdeHostError> {
        let (sid, port) = (self.sid, self.port);
        self.req
            .ide_km_query(sid, port)
            .map_err(spdm("IDE_KM QUERY"))
    }

    /// KEY_PROG + K_SET_GO of every slot of `set` (receive keys first);
    /// `key` gives each slot's key.
    pub fn program(
        &mut self,
        stream_id: u8,
        set: KeySet,
        key: impl Fn(KeySlot) -> IdeKey,
    ) -> Result<(), IdeHostError> {
        let (sid, port) = (self.sid, self.port);
        Ok(self
            .req
            .ide_km_program_set(sid, port, stream_id, set, key)?)
    }

    /// K_SET_STOP of every slot of `set`.
    pub fn stop(&mut self, stream_id: u8, set: KeySet) -> Result<(), IdeHostError> {
        let (sid, port) = (self.sid, self.port);
        Ok(self.req.ide_km_stop_set(sid, port, stream_id, set)?)
    }

    /// Key refresh while traffic runs: programs and arms the other key set
    /// than `from` (the device's transmitter switches when its TX keys are
    /// armed, the K bit tells the receiver), then retires `from`. Returns
    /// the new set.
    pub fn refresh(
        &mut self,
        stream_id: u8,
        from: KeySet,
        key: impl Fn(KeySlot) -> IdeKey,
    ) -> Result<KeySet, IdeHostError> {
        let to = from.other();
        self.program(stream_id, to, key)?;
        self.stop(stream_id, from)?;
        Ok(to)
    }

    /// `pci_ide_stream_setup` of selective stream `index`.
    pub fn setup(&mut self, index: u16, s: &StreamSettings) -> Result<(), IdeHostError> {
        Ok(self.regs().setup(index, s)?)
    }

    /// `pci_ide_stream_enable`: returns the Status register after it.
    pub fn enable(&mut self, index: u16, s: &StreamSettings) -> Result<u32, IdeHostError> {
        Ok(self.regs().enable(index, s)?)
    }

    /// `pci_ide_stream_disable` (Stream ID kept): returns the Status after.
    pub fn disable(&mut self, index: u16, s: &StreamSettings) -> Result<u32, IdeHostError> {
        Ok(self.regs().disable(index, s)?)
    }

    /// The Status register of selective stream `index`.
    pub fn status(&mut self, index: u16) -> Result<u32, IdeHostError> {
        Ok(self.regs().status(index)?)
    }

    /// `pci_ide_stream_teardown` to the idle Control value `idle`.
    pub fn teardown(&mut self, index: u16, idle: u32) -> Result<(), IdeHostError> {
        Ok(self.regs().teardown(index, idle)?)
    }

    /// Ends the session (the device zeroizes the keys it programmed).
    pub fn end(&mut self) -> Result<(), IdeHostError> {
        let sid = self.sid;
        self.req.end_session(sid).map_err(spdm("END_SESSION"))
    }
}

impl StreamSettings {
    /// What a TSM programs into an Endpoint's stream (Linux's
    /// `pci_ide_stream_alloc` for `PCI_IDE_EP`, with the Default Stream bit
    /// SEV-TIO sets): RID association = the partner port `partner_rid` (the
    /// root port; the root complex, RID 0, for an RCiEP), no address
    /// association, so every request of the device uses the stream.
    pub fn endpoint(stream_id: u8, partner_rid: u16) -> Self {
        StreamSettings {
            stream_id,
            rid_base: partner_rid,
            rid_limit: partner_rid,
            default_stream: true,
            addr: Vec::new(),
            cfg_en: false,
            tee_limited: false,
        }
    }
}
