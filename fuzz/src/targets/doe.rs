//! `doe-endpoint` and `doe-mailbox`: DOE data objects as a guest writes them.
//!
//! `doe-endpoint` hands a sequence of objects to `DoeEndpoint::handle` (the
//! one home of DOE decoding, discovery and CMA dispatch) with an SPDM
//! responder behind CMA and secured CMA; seeds are discovery requests and
//! the recorded SPDM conversations of the `spdm` target wrapped in objects.
//! Oracles: every response is a well-formed object of the request's
//! protocol, no larger than 2^18 dwords; a discovery response names an
//! entry of the table and a next index that ends the walk; after the input
//! a discovery walk still lists exactly discovery, CMA and secured CMA.
//!
//! `doe-mailbox` drives the mailbox registers (`DoeMailbox` as the
//! configuration-space handler a guest reaches) with arbitrary reads and
//! writes of any width at any offset of the capability: Control (Abort, Go),
//! Status, the write and read mailboxes, including writing past 2^18 dwords.
//! Oracles: Status never shows Data Object Ready together with Error, and
//! after every input an Abort followed by a discovery exchange through the
//! registers returns the right answer.

use super::spdm::{recorded_flows, responder};
use crate::engine::Target;
use crate::mutate::{mutate, mutated_seed, push_chunk, Cursor, Rng};
use spdm_responder::transport::doe::{
    ctrl, decode_object, discover, discovery_request, encode_object, parse_discovery_response, reg,
    status, DoeEndpoint, DoeProtocol, ProtocolId, DOE_CAP_SIZE, DOE_MAX_BYTES, MAX_OBJECT_DWORDS,
};
use spdm_responder::Message;
use trustdev_devices::security::doe::DoeMailbox;
use vfio_user_server::pci::ConfigHandler;

fn endpoint() -> DoeEndpoint {
    DoeEndpoint::new(vec![Box::new(responder()) as Box<dyn DoeProtocol>])
}

fn object(p: ProtocolId, payload: &[u8]) -> Vec<u8> {
    encode_object(p, payload).unwrap_or_default()
}

/// The recorded conversations as sequences of DOE objects.
fn object_flows() -> Vec<Vec<Vec<u8>>> {
    let mut flows: Vec<Vec<Vec<u8>>> = recorded_flows()
        .iter()
        .map(|f| {
            f.iter()
                .map(|m| match m {
                    Message::Spdm(b) => object(ProtocolId::CMA, b),
                    Message::Secured(b) => object(ProtocolId::SECURED_CMA, b),
                })
                .collect()
        })
        .collect();
    flows.push(
        (0..4u8)
            .map(|i| object(ProtocolId::DISCOVERY, &discovery_request(i, 2)))
            .collect(),
    );
    flows
}

fn check_response(req: &[u8], rsp: &[u8], table: &[ProtocolId]) -> Result<(), String> {
    let (rp, payload) =
        decode_object(rsp).map_err(|e| format!("malformed response object ({e}): {rsp:02x?}"))?;
    let (qp, _) =
        decode_object(req).map_err(|e| format!("an invalid request was answered: {e}"))?;
    if rp != qp {
        return Err(format!("a {qp} request was answered with a {rp} object"));
    }
    if rsp.len() > DOE_MAX_BYTES {
        return Err(format!("response of {} bytes", rsp.len()));
    }
    if rp == ProtocolId::DISCOVERY {
        let (entry, next) = parse_discovery_response(payload).map_err(|e| e.to_string())?;
        if !table.contains(&entry) && entry != ProtocolId::NONE {
            return Err(format!("discovery named {entry}, not in the table"));
        }
        if usize::from(next) >= table.len() {
            return Err(format!("discovery next index {next} past the table"));
        }
    }
    Ok(())
}

fn check_discovery(ep: &mut DoeEndpoint) -> Result<(), String> {
    let found = discover(ep, 2).map_err(|e| format!("discovery walk: {e}"))?;
    let want = [
        ProtocolId::DISCOVERY,
        ProtocolId::CMA,
        ProtocolId::SECURED_CMA,
    ];
    if found != want {
        return Err(format!("discovery lists {found:?}"));
    }
    Ok(())
}

fn chunks(objs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in objs {
        push_chunk(&mut out, o);
    }
    out
}

/// The `doe-endpoint` target.
pub struct DoeEndpointTarget {
    answered: u64,
    discarded: u64,
    seeds: Vec<Vec<u8>>,
    flows: Vec<Vec<Vec<u8>>>,
    table: Vec<ProtocolId>,
}

impl std::fmt::Debug for DoeEndpointTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoeEndpointTarget").finish_non_exhaustive()
    }
}

impl DoeEndpointTarget {
    /// The target and its seeds.
    pub fn new() -> Self {
        let flows = object_flows();
        let seeds = flows.iter().map(|f| chunks(f)).collect();
        DoeEndpointTarget {
            answered: 0,
            discarded: 0,
            seeds,
            flows,
            table: endpoint().protocols(),
        }
    }
}

impl Default for DoeEndpointTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for DoeEndpointTarget {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        16 << 10
    }

    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        if rng.one_in(4) {
            mutated_seed(rng, &self.seeds, self.max_len(), out);
            return;
        }
        // A valid prefix of a conversation, then mutated objects.
        let flow = rng.pick(&self.flows);
        let cut = rng.below(flow.len().min(4) + 1);
        let mut objs: Vec<Vec<u8>> = flow[..cut].to_vec();
        for _ in 0..1 + rng.below(2) {
            let flow = rng.pick(&self.flows);
            let mut o = rng.pick(flow.as_slice()).clone();
            mutate(rng, &mut o, &[], 4096);
            if rng.one_in(2) && o.len() >= 8 {
                // Keep the length field consistent half the time, so the
                // mutation reaches the protocol behind the header.
                o.truncate(o.len() / 4 * 4);
                let dw = ((o.len() / 4) as u32) & 0x3_ffff;
                o[4..8].copy_from_slice(&dw.to_le_bytes());
            }
            objs.push(o);
        }
        *out = chunks(&objs);
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut ep = endpoint();
        let mut c = Cursor::new(input);
        while !c.is_empty() {
            let obj = c.chunk();
            match ep.handle(obj) {
                Ok(rsp) => {
                    self.answered += 1;
                    check_response(obj, &rsp, &self.table)?;
                }
                Err(_) => self.discarded += 1,
            }
        }
        check_discovery(&mut ep)
    }

    fn stats(&self) -> String {
        format!(
            "objects answered {}, discarded {}",
            self.answered, self.discarded
        )
    }
}

/// The mailbox registers, as offsets the configuration-space handler takes
/// (relative to the capability header + 4).
fn h(reg: u16) -> u16 {
    reg - 4
}

/// Mailbox operations an input encodes.
#[derive(Clone, Copy, Debug)]
enum Op {
    WriteDword,
    Control,
    Status,
    ReadAck,
    RawWrite,
    RawRead,
    Object,
    Flood,
    ReadAll,
}

const OPS: [Op; 9] = [
    Op::WriteDword,
    Op::Control,
    Op::Status,
    Op::ReadAck,
    Op::RawWrite,
    Op::RawRead,
    Op::Object,
    Op::Flood,
    Op::ReadAll,
];

fn op_byte(op: Op) -> u8 {
    OPS.iter()
        .position(|o| std::mem::discriminant(o) == std::mem::discriminant(&op))
        .unwrap_or(0) as u8
}

struct Regs<'a>(&'a mut DoeMailbox);

impl Regs<'_> {
    fn read(&mut self, reg: u16) -> u32 {
        let mut b = [0u8; 4];
        self.0.read(h(reg), &mut b);
        u32::from_le_bytes(b)
    }
    fn write(&mut self, reg: u16, v: u32) {
        self.0.write(h(reg), &v.to_le_bytes());
    }
    fn status(&mut self) -> Result<u32, String> {
        let s = self.read(reg::STATUS);
        if s & status::READY != 0 && s & status::ERROR != 0 {
            return Err(format!(
                "DOE Status {s:#010x}: Data Object Ready with Error"
            ));
        }
        Ok(s)
    }
    fn send(&mut self, obj: &[u8]) {
        for d in obj.chunks(4) {
            let mut b = [0u8; 4];
            b[..d.len()].copy_from_slice(d);
            self.write(reg::WRITE, u32::from_le_bytes(b));
        }
        self.write(reg::CTRL, ctrl::GO);
    }
    fn read_all(&mut self, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while self.status()? & status::READY != 0 && out.len() < limit {
            out.extend_from_slice(&self.read(reg::READ).to_le_bytes());
            self.write(reg::READ, 0);
        }
        Ok(out)
    }
}

/// The `doe-mailbox` target.
pub struct DoeMailboxTarget {
    seeds: Vec<Vec<u8>>,
    objects: Vec<Vec<u8>>,
    mb: DoeMailbox,
}

impl std::fmt::Debug for DoeMailboxTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoeMailboxTarget").finish_non_exhaustive()
    }
}

fn encode_ops(objs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in objs {
        out.push(op_byte(Op::Object));
        push_chunk(&mut out, o);
        out.push(op_byte(Op::Status));
        out.push(op_byte(Op::ReadAll));
    }
    out
}

impl DoeMailboxTarget {
    /// The target: one mailbox kept across inputs (state carries over, as
    /// for a guest), with an SPDM responder behind CMA.
    pub fn new() -> Self {
        let flows = object_flows();
        let objects: Vec<Vec<u8>> = flows.iter().flatten().cloned().collect();
        let mut seeds: Vec<Vec<u8>> = flows
            .iter()
            .map(|f| encode_ops(&f[..f.len().min(6)]))
            .collect();
        // Abort in the middle of a write, Go with an object pending, a
        // write-mailbox overflow, sub-dword accesses.
        let disc = &flows[flows.len() - 1][0];
        let mut s = vec![op_byte(Op::WriteDword)];
        s.extend_from_slice(&disc[..4]);
        s.push(op_byte(Op::Control));
        s.extend_from_slice(&ctrl::ABORT.to_le_bytes());
        s.extend(encode_ops(std::slice::from_ref(disc)));
        seeds.push(s);
        let mut s = vec![op_byte(Op::Object)];
        push_chunk(&mut s, disc);
        s.push(op_byte(Op::Object));
        push_chunk(&mut s, disc);
        s.push(op_byte(Op::ReadAll));
        seeds.push(s);
        let mut s = vec![op_byte(Op::Flood)];
        s.extend_from_slice(&(MAX_OBJECT_DWORDS as u32 + 2).to_le_bytes());
        s.extend_from_slice(&0x0001_0001u32.to_le_bytes());
        s.push(op_byte(Op::Status));
        seeds.push(s);
        seeds.push(vec![
            op_byte(Op::RawWrite),
            (reg::WRITE - 4 + 1) as u8,
            2,
            0xaa,
            0xbb,
            op_byte(Op::RawRead),
            (reg::STATUS - 4 + 2) as u8,
            2,
        ]);
        DoeMailboxTarget {
            seeds,
            objects,
            mb: endpoint_mailbox(),
        }
    }
}

fn endpoint_mailbox() -> DoeMailbox {
    DoeMailbox::new(vec![Box::new(responder())])
}

impl Default for DoeMailboxTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for DoeMailboxTarget {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        16 << 10
    }

    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        mutated_seed(rng, &self.seeds, self.max_len(), out);
        if rng.one_in(2) {
            // Append a whole (possibly mutated) object exchange.
            let mut o = rng.pick(&self.objects).clone();
            if rng.one_in(2) {
                mutate(rng, &mut o, &[], 4096);
            }
            out.extend(encode_ops(&[o]));
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let cap_body = (DOE_CAP_SIZE - 4) as u16;
        let mut r = Regs(&mut self.mb);
        let mut c = Cursor::new(input);
        while !c.is_empty() {
            match OPS[c.u8() as usize % OPS.len()] {
                Op::WriteDword => r.write(reg::WRITE, c.u32()),
                Op::Control => r.write(reg::CTRL, c.u32()),
                Op::Status => drop(r.status()?),
                Op::ReadAck => {
                    r.read(reg::READ);
                    r.write(reg::READ, c.u32());
                }
                Op::RawWrite => {
                    let off = u16::from(c.u8()) % cap_body;
                    let len = (usize::from(c.u8()) % 8 + 1).min(usize::from(cap_body - off));
                    let data = c.bytes(len).to_vec();
                    r.0.write(off, &data);
                }
                Op::RawRead => {
                    let off = u16::from(c.u8()) % cap_body;
                    let len = (usize::from(c.u8()) % 8 + 1).min(usize::from(cap_body - off));
                    let mut b = vec![0u8; len];
                    r.0.read(off, &mut b);
                }
                Op::Object => r.send(c.chunk()),
                Op::Flood => {
                    let n = (c.u32() as usize).min(MAX_OBJECT_DWORDS + 8);
                    let v = c.u32();
                    for _ in 0..n {
                        r.write(reg::WRITE, v);
                    }
                }
                Op::ReadAll => drop(r.read_all(MAX_OBJECT_DWORDS * 4)?),
            }
            r.status()?;
        }
        // Liveness: Abort, then discovery index 0 through the registers.
        r.write(reg::CTRL, ctrl::ABORT);
        if r.status()? & (status::ERROR | status::READY | status::BUSY) != 0 {
            return Err("Abort left Status non-zero".into());
        }
        let req = object(ProtocolId::DISCOVERY, &discovery_request(0, 2));
        r.send(&req);
        let rsp = r.read_all(64)?;
        let (p, payload) =
            decode_object(&rsp).map_err(|e| format!("discovery after Abort: {e}"))?;
        match (p, parse_discovery_response(payload)) {
            (ProtocolId::DISCOVERY, Ok((ProtocolId::DISCOVERY, 1))) => Ok(()),
            other => Err(format!("discovery after Abort answered {other:?}")),
        }
    }

    fn stats(&self) -> String {
        let s = self.mb.stats();
        format!(
            "mailbox objects answered {}, discarded {}, aborts {}",
            s.answered, s.discarded, s.aborts
        )
    }

    fn check(&mut self) -> Result<(), String> {
        // GET_VERSION through the registers.
        let mut r = Regs(&mut self.mb);
        r.write(reg::CTRL, ctrl::ABORT);
        r.send(&object(ProtocolId::CMA, &[0x10, 0x84, 0, 0]));
        let rsp = r.read_all(4096)?;
        match decode_object(&rsp) {
            Ok((ProtocolId::CMA, p)) if p.get(1) == Some(&0x04) => Ok(()),
            other => Err(format!(
                "GET_VERSION through the mailbox answered {other:?}"
            )),
        }
    }
}
