//! The host side of IDE setup over a vfio-user client: spdm-responder's
//! [`IdeHost`] (the DOE mailbox driver, SPDM session, IDE_KM and stream
//! registers, one home for host and guest) reaching configuration space
//! through region 7 of a [`Client`]. Used by tests and benchmarks.

use spdm_responder::idekm::{IdeHost, IdeHostError};
use spdm_responder::transport::doe::ConfigAccess;
use spdm_responder::RequesterConfig;
use std::io;
use std::ops::{Deref, DerefMut};
use vfio_user_server::client::Client;

/// A vfio-user client as a configuration-space accessor (region 7); it
/// derefs to the client for the device's other regions.
pub struct ClientConfig(pub Client);

impl ConfigAccess for ClientConfig {
    fn cfg_read32(&mut self, off: u16) -> io::Result<u32> {
        self.0.read32(7, u64::from(off)).map_err(io::Error::other)
    }
    fn cfg_write32(&mut self, off: u16, v: u32) -> io::Result<()> {
        self.0
            .write32(7, u64::from(off), v)
            .map_err(io::Error::other)
    }
    fn name(&self) -> String {
        "vfio-user client".into()
    }
}

impl Deref for ClientConfig {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl DerefMut for ClientConfig {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0
    }
}

/// An IDE setup over a vfio-user client.
pub type ClientIdeHost = IdeHost<ClientConfig>;

/// Authenticates the device behind `client` (its chain verified to one of
/// `roots`, DER) and opens an SPDM session on its DOE mailbox.
pub fn connect(client: Client, roots: Vec<Vec<u8>>) -> Result<ClientIdeHost, IdeHostError> {
    let cfg = RequesterConfig {
        trusted_roots: roots,
        ..RequesterConfig::default()
    };
    IdeHost::connect(ClientConfig(client), cfg, false)
}

/// BAR0 of a device reached through the client that carries the IDE setup
/// (e.g. the user-space NVMe driver of `crate::nvme::host` driving a
/// controller whose stream this setup made SECURE).
impl crate::nvme::host::Bar0 for ClientIdeHost {
    fn read_reg32(&mut self, off: u64) -> u32 {
        self.access().read32(0, off).unwrap_or(u32::MAX)
    }
    fn write_reg32(&mut self, off: u64, v: u32) {
        let _ = self.access().region_write_posted(0, off, &v.to_le_bytes());
    }
}
