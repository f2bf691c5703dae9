//! The PCIe Data Object Exchange mailbox (PCIe r6.x §6.30): the registers a
//! guest drives through configuration space, as an extended capability with
//! behaviour.
//!
//! This is only the register model (write mailbox, Go, Busy, Data Object
//! Ready, read mailbox, Abort, Error). What an object means (its encoding,
//! discovery, CMA/SPDM dispatch and the policy for secured requests) lives in
//! one place, `spdm_responder::transport::doe`, and the protocol set a mailbox
//! serves is pluggable: any [`DoeProtocol`]s (an SPDM responder serves CMA and
//! secured CMA; IDE_KM and TDISP run inside secured CMA sessions and plug into
//! the responder, not here).
//!
//! A request is handled synchronously inside the configuration write that
//! sets DOE Go, so the kernel's first status poll after Go already sees
//! Data Object Ready (each further poll costs the guest a poll interval).
//!
//! Behaviour on malformed use, per the spec (and as QEMU's own DOE model does):
//! a data object whose length field does not match the dwords written, or
//! that names an unsupported protocol, is silently discarded (and logged);
//! writing more than 2^18 dwords sets DOE Error until an Abort; reads of the
//! Read Data Mailbox with no object ready return 0; sub-dword mailbox
//! accesses are ignored; Abort clears everything, Error included.

use log::{debug, warn};
use spdm_responder::transport::doe::DoeEndpoint;
pub use spdm_responder::transport::doe::{
    ctrl, reg, status, DoeProtocol, ProtocolId, DOE_CAP_SIZE, MAX_OBJECT_DWORDS,
};
use vfio_user_server::pci::{ext_cap_id, ConfigHandler, ExtCap};

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
    endpoint: DoeEndpoint,
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
            .field("protocols", &self.endpoint.protocols())
            .field("stats", &self.stats)
            .finish()
    }
}

impl DoeMailbox {
    /// A mailbox serving discovery plus `protocols` (in discovery order).
    pub fn new(protocols: Vec<Box<dyn DoeProtocol>>) -> Self {
        DoeMailbox {
            endpoint: DoeEndpoint::new(protocols),
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

    fn discard(&mut self, why: &dyn std::fmt::Display) {
        warn!("DOE: discarding a request data object: {why}");
        self.write.clear();
        self.stats.discarded += 1;
    }

    fn go(&mut self) {
        if self.error || self.ready() {
            self.discard(&"DOE Go while an error or an unread response is pending");
            return;
        }
        let request: Vec<u8> = std::mem::take(&mut self.write)
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect();
        match self.endpoint.handle(&request) {
            Ok(response) => {
                self.read = response
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                self.read_idx = 0;
                self.stats.answered += 1;
            }
            Err(e) => self.discard(&e),
        }
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
        self.endpoint.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl DoeProtocol for Echo {
        fn protocols(&self) -> Vec<ProtocolId> {
            vec![ProtocolId::CMA]
        }
        fn handle(&mut self, _: ProtocolId, request: &[u8]) -> Option<Vec<u8>> {
            Some(request.iter().rev().copied().collect())
        }
    }

    fn header1(vendor: u16, ty: u8) -> u32 {
        ProtocolId::new(vendor, ty).header1()
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

    /// The mailbox answers secured CMA with the one policy of
    /// spdm_responder::transport::doe: a record that could only be answered
    /// in plain (here: an unknown session) gets no response object.
    #[test]
    fn secured_cma_for_an_unknown_session_is_discarded() {
        use spdm_responder::crypto::AsymAlgo;
        use spdm_responder::rng::DeterministicEntropy;
        use spdm_responder::{CmaDeviceName, Identity, Responder, ResponderConfig};
        let identity = Identity::generate(
            &[AsymAlgo::EcdsaP256],
            &CmaDeviceName::default(),
            1,
            &mut DeterministicEntropy::new(b"doe mailbox"),
        )
        .unwrap();
        let responder = Responder::new(ResponderConfig::default(), identity);
        let mut m = DoeMailbox::new(vec![Box::new(responder)]);
        // Discovery lists CMA and secured CMA.
        let rsp = exchange(&mut m, 1, 0, &[1 | (2 << 8)]).unwrap();
        assert_eq!(rsp[2], header1(1, 1) | (2 << 24));
        // GET_VERSION over CMA is answered in a CMA object.
        let rsp = exchange(&mut m, 1, 1, &[0x0000_8410]).unwrap();
        assert_eq!(rsp[0], header1(1, 1));
        assert_eq!(rsp[2] & 0xffff, 0x0410, "VERSION");
        // A record for session 0x12345678: discarded, no Data Object Ready.
        let before = m.stats();
        assert!(exchange(&mut m, 1, 2, &[0x1234_5678, 0x14, 0, 0, 0, 0, 0]).is_none());
        assert_eq!(m.stats().discarded, before.discarded + 1);
        assert_eq!(r(&mut m, reg::STATUS), 0);
        // The mailbox keeps working.
        assert!(exchange(&mut m, 1, 1, &[0x0000_8410]).is_some());
    }
}
