//! The host side of IDE setup, as a TSM does it, over any configuration
//! space accessor (a vfio-user client in tests and benchmarks; a sysfs
//! `config` file in the guest): the DOE mailbox, an SPDM session, IDE_KM,
//! and the selective stream registers (the writes Linux's
//! `pci_ide_stream_setup` / `pci_ide_stream_enable` make).

use super::regs::{ctl, sts};
use spdm_responder::error::{RequesterError, TransportError};
use spdm_responder::idekm::{
    IdeKey, KeyDirection, KeySet, KeySlot, KpAckStatus, QueryResp, SubStream,
};
use spdm_responder::transport::doe::{
    ctrl, decode_object, length_dwords, reg, status, DoeChannel, DoeTransport, DOE_EXT_CAP_ID,
};
use spdm_responder::{Requester, RequesterConfig};
use std::time::{Duration, Instant};
use vfio_user_server::client::Client;

/// Configuration-space access to one function.
pub trait ConfigAccess {
    /// Reads the dword at `off`.
    fn cfg_read32(&mut self, off: u16) -> Result<u32, String>;
    /// Writes the dword at `off`.
    fn cfg_write32(&mut self, off: u16, v: u32) -> Result<(), String>;
}

/// Region 7 of a vfio-user client.
impl ConfigAccess for Client {
    fn cfg_read32(&mut self, off: u16) -> Result<u32, String> {
        self.read32(7, u64::from(off)).map_err(|e| e.to_string())
    }
    fn cfg_write32(&mut self, off: u16, v: u32) -> Result<(), String> {
        self.write32(7, u64::from(off), v)
            .map_err(|e| e.to_string())
    }
}

/// The offset of the first extended capability with `id`.
pub fn find_ext_cap(a: &mut impl ConfigAccess, id: u16) -> Result<Option<u16>, String> {
    let mut off = 0x100u16;
    for _ in 0..256 {
        let h = a.cfg_read32(off)?;
        if h == 0 || h == u32::MAX {
            return Ok(None);
        }
        if (h & 0xffff) as u16 == id {
            return Ok(Some(off));
        }
        let next = (h >> 20) as u16 & 0xffc;
        if next < 0x100 {
            return Ok(None);
        }
        off = next;
    }
    Ok(None)
}

const DOE_TIMEOUT: Duration = Duration::from_secs(1);

/// A DOE mailbox driven through configuration space, as drivers/pci/doe.c
/// drives one (without its sleeps).
pub struct ConfigDoe<A> {
    /// The accessor.
    pub access: A,
    base: u16,
}

fn terr(e: String) -> TransportError {
    TransportError::Io(std::io::Error::other(e))
}

impl<A: ConfigAccess> ConfigDoe<A> {
    /// The first DOE mailbox of the function, aborted (idle).
    pub fn open(mut access: A) -> Result<Self, String> {
        let base = find_ext_cap(&mut access, DOE_EXT_CAP_ID)?.ok_or("no DOE capability")?;
        let mut d = ConfigDoe { access, base };
        d.wr(reg::CTRL, ctrl::ABORT)?;
        d.wait(|s| s & (status::BUSY | status::ERROR) == 0, "abort")?;
        Ok(d)
    }

    fn rd(&mut self, r: u16) -> Result<u32, String> {
        self.access.cfg_read32(self.base + r)
    }

    fn wr(&mut self, r: u16, v: u32) -> Result<(), String> {
        self.access.cfg_write32(self.base + r, v)
    }

    fn wait(&mut self, done: impl Fn(u32) -> bool, what: &str) -> Result<u32, String> {
        let start = Instant::now();
        loop {
            let s = self.rd(reg::STATUS)?;
            if done(s) {
                return Ok(s);
            }
            if start.elapsed() > DOE_TIMEOUT {
                return Err(format!("DOE {what}: timed out (status {s:#010x})"));
            }
        }
    }
}

impl<A: ConfigAccess> DoeChannel for ConfigDoe<A> {
    fn exchange_object(&mut self, obj: &[u8]) -> Result<Vec<u8>, TransportError> {
        if obj.len() % 4 != 0 {
            return Err(TransportError::Malformed("DOE object not whole dwords"));
        }
        self.wait(|s| s & status::BUSY == 0, "busy").map_err(terr)?;
        for d in obj.chunks_exact(4) {
            self.wr(reg::WRITE, u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
                .map_err(terr)?;
        }
        self.wr(reg::CTRL, ctrl::GO).map_err(terr)?;
        let s = self
            .wait(|s| s & (status::READY | status::ERROR) != 0, "response")
            .map_err(terr)?;
        if s & status::ERROR != 0 {
            return Err(terr("DOE Error set".into()));
        }
        let mut out = Vec::new();
        let mut len = 2usize;
        while out.len() / 4 < len {
            let v = self.rd(reg::READ).map_err(terr)?;
            self.wr(reg::READ, 0).map_err(terr)?;
            out.extend_from_slice(&v.to_le_bytes());
            if out.len() == 8 {
                len = length_dwords(u32::from_le_bytes([out[4], out[5], out[6], out[7]])).max(2);
            }
        }
        decode_object(&out).map_err(|_| TransportError::Malformed("DOE response"))?;
        Ok(out)
    }
}

/// An IDE setup in progress: an SPDM session with the device over its DOE
/// mailbox, and its IDE capability.
pub struct IdeHost<A: ConfigAccess> {
    req: Requester<DoeTransport<ConfigDoe<A>>>,
    sid: u32,
    ide: u16,
    port: u8,
}

fn rerr(what: &str) -> impl Fn(RequesterError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl<A: ConfigAccess> IdeHost<A> {
    /// Authenticates the device (certificate chained to one of `roots`)
    /// and opens a session (KEY_EXCHANGE).
    pub fn connect(access: A, roots: Vec<Vec<u8>>) -> Result<Self, String> {
        let mut doe = ConfigDoe::open(access)?;
        let ide = find_ext_cap(&mut doe.access, 0x30)?.ok_or("no IDE capability")?;
        let cfg = RequesterConfig {
            trusted_roots: roots,
            ..RequesterConfig::default()
        };
        let mut req = Requester::new(cfg, DoeTransport::new(doe));
        req.init_connection().map_err(rerr("SPDM VCA"))?;
        req.get_digests().map_err(rerr("GET_DIGESTS"))?;
        req.get_certificate(0).map_err(rerr("GET_CERTIFICATE"))?;
        let sid = req.key_exchange(0, 0).map_err(rerr("KEY_EXCHANGE"))?;
        Ok(IdeHost {
            req,
            sid,
            ide,
            port: 0,
        })
    }

    /// The SPDM session.
    pub fn session(&self) -> u32 {
        self.sid
    }

    /// The requester (for raw requests).
    pub fn requester(&mut self) -> &mut Requester<DoeTransport<ConfigDoe<A>>> {
        &mut self.req
    }

    /// The configuration space accessor (e.g. the vfio-user client, for
    /// the device's other registers).
    pub fn access(&mut self) -> &mut A {
        &mut self.req.transport_mut().channel.access
    }

    /// IDE_KM QUERY.
    pub fn query(&mut self) -> Result<QueryResp, String> {
        let (sid, port) = (self.sid, self.port);
        self.req.ide_km_query(sid, port).map_err(rerr("QUERY"))
    }

    /// KEY_PROG + K_SET_GO for every sub-stream of `set`: the receive keys
    /// first, then the transmit keys (so the device never transmits with a
    /// key its partner cannot receive yet). `key` gives each slot's key.
    pub fn program(
        &mut self,
        stream_id: u8,
        set: KeySet,
        key: impl Fn(KeySlot) -> IdeKey,
    ) -> Result<(), String> {
        let (sid, port) = (self.sid, self.port);
        for d in [KeyDirection::Rx, KeyDirection::Tx] {
            for ss in SubStream::ALL {
                let slot = KeySlot::new(set, d, ss);
                match self
                    .req
                    .ide_km_key_prog(sid, stream_id, slot, port, &key(slot))
                    .map_err(rerr("KEY_PROG"))?
                {
                    Ok(KpAckStatus::Success) => {}
                    other => return Err(format!("KEY_PROG {}: KP_ACK {other:?}", slot.name())),
                }
                self.req
                    .ide_km_key_set_go(sid, stream_id, slot, port)
                    .map_err(rerr("K_SET_GO"))?;
            }
        }
        Ok(())
    }

    /// K_SET_STOP for every slot of `set`.
    pub fn stop(&mut self, stream_id: u8, set: KeySet) -> Result<(), String> {
        let (sid, port) = (self.sid, self.port);
        for d in [KeyDirection::Tx, KeyDirection::Rx] {
            for ss in SubStream::ALL {
                self.req
                    .ide_km_key_set_stop(sid, stream_id, KeySlot::new(set, d, ss), port)
                    .map_err(rerr("K_SET_STOP"))?;
            }
        }
        Ok(())
    }

    /// Offset of selective stream `index`'s register block.
    fn sel(&mut self, index: u8) -> Result<u16, String> {
        let ide = self.ide;
        let cap = self.access().cfg_read32(ide + 4)?;
        let nlink = if cap & 1 != 0 {
            1 + ((cap >> 13) & 7)
        } else {
            0
        };
        let assoc = self.access().cfg_read32(ide + 0x0c + 8 * nlink as u16)? & 0xf;
        Ok(ide + 0x0c + 8 * nlink as u16 + u16::from(index) * (20 + 12 * assoc as u16))
    }

    /// pci_ide_stream_setup: RID association (partner `rid`) and the
    /// Control register with the Stream ID, Enable clear.
    pub fn setup(
        &mut self,
        index: u8,
        stream_id: u8,
        default: bool,
        rid: u16,
    ) -> Result<(), String> {
        let b = self.sel(index)?;
        let a = self.access();
        a.cfg_write32(b + 0x0c, u32::from(rid) << 8)?;
        a.cfg_write32(b + 0x10, 1 | (u32::from(rid) << 8))?;
        let c = (u32::from(stream_id) << ctl::ID_SHIFT) | if default { ctl::DEFAULT } else { 0 };
        a.cfg_write32(b + 4, c)
    }

    /// pci_ide_stream_enable: sets Enable, returns the State field.
    pub fn enable(&mut self, index: u8) -> Result<u32, String> {
        let b = self.sel(index)?;
        let a = self.access();
        let c = a.cfg_read32(b + 4)?;
        a.cfg_write32(b + 4, c | ctl::EN)?;
        Ok(a.cfg_read32(b + 8)? & sts::STATE)
    }

    /// Clears Enable.
    pub fn disable(&mut self, index: u8) -> Result<(), String> {
        let b = self.sel(index)?;
        let a = self.access();
        let c = a.cfg_read32(b + 4)?;
        a.cfg_write32(b + 4, c & !ctl::EN)
    }

    /// The Status register of selective stream `index`.
    pub fn status(&mut self, index: u8) -> Result<u32, String> {
        let b = self.sel(index)?;
        self.access().cfg_read32(b + 8)
    }

    /// Ends the session (the device zeroizes the keys it programmed).
    pub fn end(&mut self) -> Result<(), String> {
        let sid = self.sid;
        self.req.end_session(sid).map_err(rerr("END_SESSION"))
    }
}

/// BAR0 of a device reached through the client that carries the IDE setup
/// (e.g. the user-space NVMe driver of `crate::nvme::host` driving a
/// controller whose stream this setup made SECURE).
#[cfg(any(test, feature = "host-driver"))]
impl crate::nvme::host::Bar0 for IdeHost<Client> {
    fn read_reg32(&mut self, off: u64) -> u32 {
        self.access().read32(0, off).unwrap_or(u32::MAX)
    }
    fn write_reg32(&mut self, off: u64, v: u32) {
        let _ = self.access().region_write_posted(0, off, &v.to_le_bytes());
    }
}
