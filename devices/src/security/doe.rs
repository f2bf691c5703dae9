//! The PCIe Data Object Exchange mailbox (PCIe r6.x §6.30) as an extended
//! capability with behaviour.
//!
//! A request is handled synchronously inside the configuration write that
//! sets DOE Go, so the kernel's first status poll after Go already sees
//! Data Object Ready (each further poll costs the guest a 7.8 ms sleep).
//! Discovery (PCI-SIG type 0) is built in; other protocols (CMA/SPDM,
//! secured CMA/SPDM) plug in through [`DoeProtocol`].
//!
//! Behaviour on malformed use, per the spec (and as QEMU's own DOE model does):
//! a data object whose length field does not match the dwords written, or
//! that names an unsupported protocol, is silently discarded (and logged);
//! writing more than 2^18 dwords sets DOE Error until an Abort; reads of the
//! Read Data Mailbox with no object ready return 0; sub-dword mailbox
//! accesses are ignored; Abort clears everything, Error included.

use log::{debug, warn};
use vfio_user_server::pci::{ext_cap_id, ConfigHandler, ExtCap};

/// PCI-SIG vendor id of the standard data object protocols.
pub const PCI_SIG_VENDOR: u16 = 0x0001;
/// Discovery data object type.
pub const TYPE_DISCOVERY: u8 = 0;
/// CMA/SPDM data object type.
pub const TYPE_CMA: u8 = 1;
/// Secured CMA/SPDM data object type.
pub const TYPE_SECURED_CMA: u8 = 2;
/// Largest data object: 2^18 dwords.
pub const MAX_OBJECT_DWORDS: usize = 1 << 18;
/// Size of the DOE capability (header included).
pub const DOE_CAP_SIZE: usize = 0x18;

/// Register offsets relative to the capability header.
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

/// A data object protocol served by the mailbox.
pub trait DoeProtocol: Send {
    /// Vendor id of the protocol.
    fn vendor_id(&self) -> u16;
    /// Data object type.
    fn object_type(&self) -> u8;
    /// Handles a request payload (the 2-dword header stripped; the length is
    /// a multiple of 4, padding included). Returns the response payload, or
    /// `None` to discard the request without a response.
    fn handle(&mut self, request: &[u8]) -> Option<Vec<u8>>;
    /// Returns to the power-on state (FLR, reset, client change).
    fn reset(&mut self) {}
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoeStats {
    /// Objects answered.
    pub answered: u64,
    /// Objects discarded (malformed or unsupported).
    pub discarded: u64,
    /// Aborts.
    pub aborts: u64,
}

/// One DOE mailbox instance.
pub struct DoeMailbox {
    protocols: Vec<Box<dyn DoeProtocol>>,
    write: Vec<u32>,
    read: Vec<u32>,
    read_idx: usize,
    error: bool,
    int_en: bool,
    stats: DoeStats,
}

impl std::fmt::Debug for DoeMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoeMailbox")
            .field("protocols", &self.protocols.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn header1(vendor: u16, ty: u8) -> u32 {
    u32::from(vendor) | (u32::from(ty) << 16)
}

impl DoeMailbox {
    /// A mailbox serving discovery plus `protocols` (in discovery order).
    pub fn new(protocols: Vec<Box<dyn DoeProtocol>>) -> Self {
        DoeMailbox {
            protocols,
            write: Vec::new(),
            read: Vec::new(),
            read_idx: 0,
            error: false,
            int_en: false,
            stats: DoeStats::default(),
        }
    }

    /// The extended capability (version 2) carrying this mailbox.
    pub fn into_ext_cap(self) -> ExtCap {
        ExtCap {
            id: ext_cap_id::DOE,
            version: 2,
            body: vec![0; DOE_CAP_SIZE - 4],
            rw: vec![],
            handler: Some(Box::new(self)),
        }
    }

    /// Counters.
    pub fn stats(&self) -> DoeStats {
        self.stats
    }

    fn ready(&self) -> bool {
        self.read_idx < self.read.len()
    }

    fn status(&self) -> u32 {
        let mut s = 0;
        if self.error {
            s |= status::ERROR;
        }
        if self.ready() && !self.error {
            s |= status::READY;
        }
        s
    }

    fn abort(&mut self) {
        debug!("DOE: abort");
        self.write.clear();
        self.read.clear();
        self.read_idx = 0;
        self.error = false;
        self.stats.aborts += 1;
    }

    fn discard(&mut self, why: &str) {
        warn!("DOE: discarding a request data object: {why}");
        self.write.clear();
        self.stats.discarded += 1;
    }

    fn go(&mut self) {
        if self.error || self.ready() {
            self.discard("DOE Go while an error or an unread response is pending");
            return;
        }
        let obj = std::mem::take(&mut self.write);
        if obj.len() < 2 {
            self.discard(&format!("{} dwords is shorter than the header", obj.len()));
            return;
        }
        let len = match obj[1] & 0x3ffff {
            0 => MAX_OBJECT_DWORDS,
            n => n as usize,
        };
        if len != obj.len() {
            self.discard(&format!(
                "length field says {len} dwords, {} were written",
                obj.len()
            ));
            return;
        }
        let vendor = (obj[0] & 0xffff) as u16;
        let ty = ((obj[0] >> 16) & 0xff) as u8;
        let payload: Vec<u8> = obj[2..].iter().flat_map(|d| d.to_le_bytes()).collect();
        let response = if vendor == PCI_SIG_VENDOR && ty == TYPE_DISCOVERY {
            self.discovery(&payload)
        } else {
            match self
                .protocols
                .iter_mut()
                .find(|p| p.vendor_id() == vendor && p.object_type() == ty)
            {
                Some(p) => p.handle(&payload),
                None => {
                    self.discard(&format!("unsupported protocol {vendor:04x}:{ty:02x}"));
                    return;
                }
            }
        };
        let Some(resp) = response else {
            self.discard(&format!("protocol {vendor:04x}:{ty:02x} gave no response"));
            return;
        };
        let dwords = 2 + resp.len().div_ceil(4);
        if dwords > MAX_OBJECT_DWORDS {
            self.discard("response larger than a data object");
            return;
        }
        let mut out = Vec::with_capacity(dwords);
        out.push(header1(vendor, ty));
        out.push(if dwords == MAX_OBJECT_DWORDS {
            0
        } else {
            dwords as u32
        });
        for chunk in resp.chunks(4) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            out.push(u32::from_le_bytes(b));
        }
        self.read = out;
        self.read_idx = 0;
        self.stats.answered += 1;
    }

    fn discovery(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let index = *payload.first()? as usize;
        // Index 0 is discovery itself; then the protocols in order.
        let (vendor, ty) = match index {
            0 => (PCI_SIG_VENDOR, TYPE_DISCOVERY),
            i if i <= self.protocols.len() => {
                let p = &self.protocols[i - 1];
                (p.vendor_id(), p.object_type())
            }
            // An index past the end answers with no protocol and no next.
            _ => (0xffff, 0xff),
        };
        let next = if index < self.protocols.len() {
            index as u32 + 1
        } else {
            0
        };
        let v = u32::from(vendor) | (u32::from(ty) << 16) | (next << 24);
        Some(v.to_le_bytes().to_vec())
    }

    fn read_reg(&self, reg: u16) -> u32 {
        match reg {
            // CAP reads 0: no interrupt support (Linux never enables DOE interrupts).
            reg::CTRL if self.int_en => ctrl::INT_EN,
            reg::STATUS => self.status(),
            reg::READ if self.ready() && !self.error => self.read[self.read_idx],
            _ => 0,
        }
    }

    /// A write to the Read Data Mailbox: the dword was consumed.
    fn ack(&mut self) {
        if !self.ready() {
            return;
        }
        self.read_idx += 1;
        if !self.ready() {
            self.read.clear();
            self.read_idx = 0;
        }
    }

    fn write_reg(&mut self, reg: u16, value: u32, full_dword: bool) {
        match reg {
            reg::CTRL => {
                if value & ctrl::ABORT != 0 {
                    self.abort();
                    return;
                }
                self.int_en = false; // interrupts are not supported (CAP = 0)
                if value & ctrl::GO != 0 {
                    self.go();
                }
            }
            reg::WRITE if full_dword => {
                if self.error {
                    return;
                }
                if self.write.len() >= MAX_OBJECT_DWORDS {
                    warn!("DOE: write mailbox overflow (more than 2^18 dwords): DOE Error set");
                    self.error = true;
                    self.write.clear();
                    return;
                }
                self.write.push(value);
            }
            reg::READ if full_dword => self.ack(),
            reg::WRITE | reg::READ => {
                debug!("DOE: ignoring a sub-dword mailbox access");
            }
            _ => {}
        }
    }
}

impl ConfigHandler for DoeMailbox {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // `offset` is relative to cap+4.
        for (i, b) in data.iter_mut().enumerate() {
            let a = offset as usize + 4 + i;
            let v = self.read_reg((a & !3) as u16);
            *b = v.to_le_bytes()[a & 3];
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let start = offset as usize + 4;
        let mut pos = 0;
        while pos < data.len() {
            let a = start + pos;
            let reg = (a & !3) as u16;
            let within = a & 3;
            let n = (4 - within).min(data.len() - pos);
            let mut v = [0u8; 4];
            v[within..within + n].copy_from_slice(&data[pos..pos + n]);
            let full = within == 0 && n == 4;
            self.write_reg(reg, u32::from_le_bytes(v), full);
            pos += n;
        }
    }

    fn reset(&mut self) {
        self.write.clear();
        self.read.clear();
        self.read_idx = 0;
        self.error = false;
        self.int_en = false;
        for p in &mut self.protocols {
            p.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl DoeProtocol for Echo {
        fn vendor_id(&self) -> u16 {
            PCI_SIG_VENDOR
        }
        fn object_type(&self) -> u8 {
            TYPE_CMA
        }
        fn handle(&mut self, request: &[u8]) -> Option<Vec<u8>> {
            Some(request.iter().rev().copied().collect())
        }
    }

    fn w(m: &mut DoeMailbox, reg: u16, v: u32) {
        m.write(reg - 4, &v.to_le_bytes());
    }
    fn r(m: &mut DoeMailbox, reg: u16) -> u32 {
        let mut b = [0u8; 4];
        m.read(reg - 4, &mut b);
        u32::from_le_bytes(b)
    }

    /// Does what drivers/pci/doe.c does for one exchange.
    fn exchange(m: &mut DoeMailbox, vendor: u16, ty: u8, payload: &[u32]) -> Option<Vec<u32>> {
        assert_eq!(r(m, reg::STATUS) & status::BUSY, 0);
        w(m, reg::WRITE, header1(vendor, ty));
        w(m, reg::WRITE, 2 + payload.len() as u32);
        for &d in payload {
            w(m, reg::WRITE, d);
        }
        w(m, reg::CTRL, ctrl::GO);
        // The first poll already finds the response.
        if r(m, reg::STATUS) & status::READY == 0 {
            return None;
        }
        let mut out = vec![];
        while r(m, reg::STATUS) & status::READY != 0 {
            out.push(r(m, reg::READ));
            w(m, reg::READ, 0);
        }
        Some(out)
    }

    #[test]
    fn kernel_discovery_walk() {
        let mut m = DoeMailbox::new(vec![Box::new(Echo)]);
        w(&mut m, reg::CTRL, ctrl::ABORT);
        assert_eq!(r(&mut m, reg::STATUS) & (status::BUSY | status::ERROR), 0);
        let mut index = 0u32;
        let mut found = vec![];
        loop {
            let rsp = exchange(&mut m, 1, 0, &[index | (2 << 8)]).unwrap();
            assert_eq!(rsp.len(), 3);
            assert_eq!(rsp[0], header1(1, 0));
            assert_eq!(rsp[1], 3);
            found.push((rsp[2] & 0xffff, (rsp[2] >> 16) & 0xff));
            index = rsp[2] >> 24;
            if index == 0 {
                break;
            }
        }
        assert_eq!(found, vec![(1, 0), (1, 1)]);
    }

    #[test]
    fn protocol_exchange_and_padding() {
        let mut m = DoeMailbox::new(vec![Box::new(Echo)]);
        let rsp = exchange(&mut m, 1, 1, &[0x04030201, 0x00000005]).unwrap();
        assert_eq!(rsp[0], header1(1, 1));
        assert_eq!(rsp[1], 4);
        assert_eq!(rsp[2], 0x05000000);
        assert_eq!(rsp[3], 0x01020304);
        assert_eq!(m.stats().answered, 1);
    }

    #[test]
    fn malformed_objects_are_discarded() {
        let mut m = DoeMailbox::new(vec![Box::new(Echo)]);
        // Length lies.
        w(&mut m, reg::WRITE, header1(1, 1));
        w(&mut m, reg::WRITE, 5);
        w(&mut m, reg::WRITE, 0);
        w(&mut m, reg::CTRL, ctrl::GO);
        assert_eq!(r(&mut m, reg::STATUS), 0);
        assert_eq!(r(&mut m, reg::READ), 0, "nothing to read");
        // Unsupported protocol.
        assert!(exchange(&mut m, 0x1234, 7, &[]).is_none());
        // Header only shorter than 2 dwords.
        w(&mut m, reg::WRITE, header1(1, 1));
        w(&mut m, reg::CTRL, ctrl::GO);
        assert_eq!(m.stats().discarded, 3);
        // Sub-dword mailbox writes are ignored; the mailbox still works.
        m.write(reg::WRITE - 4, &[1, 2]);
        assert!(exchange(&mut m, 1, 1, &[7]).is_some());
    }

    #[test]
    fn abort_mid_transfer_and_overflow() {
        let mut m = DoeMailbox::new(vec![Box::new(Echo)]);
        w(&mut m, reg::WRITE, header1(1, 1));
        w(&mut m, reg::CTRL, ctrl::ABORT);
        assert!(
            exchange(&mut m, 1, 1, &[1]).is_some(),
            "abort cleared the half object"
        );
        // Abort while a response is half read.
        w(&mut m, reg::WRITE, header1(1, 1));
        w(&mut m, reg::WRITE, 3);
        w(&mut m, reg::WRITE, 9);
        w(&mut m, reg::CTRL, ctrl::GO);
        let _ = r(&mut m, reg::READ);
        w(&mut m, reg::READ, 0);
        w(&mut m, reg::CTRL, ctrl::ABORT);
        assert_eq!(r(&mut m, reg::STATUS), 0);
        for _ in 0..MAX_OBJECT_DWORDS + 1 {
            w(&mut m, reg::WRITE, 0);
        }
        assert_ne!(r(&mut m, reg::STATUS) & status::ERROR, 0);
        w(&mut m, reg::CTRL, ctrl::ABORT);
        assert_eq!(r(&mut m, reg::STATUS), 0);
        assert!(exchange(&mut m, 1, 0, &[0]).is_some());
    }
}
