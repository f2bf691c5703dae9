//! `spdm` and `spdm-secured`: the SPDM responder on what a requester sends.
//!
//! `spdm` runs a sequence of messages (plain requests and DSP0277 records)
//! against a fresh responder: the seeds are whole recorded conversations of
//! the crate's own requester (VCA, digests, certificate, challenge, signed
//! measurements, KEY_EXCHANGE/FINISH, in-session heartbeat, key update,
//! measurements, END_SESSION; PSK_EXCHANGE/PSK_FINISH), replayable because
//! both sides run on deterministic entropy. Most inputs keep a valid prefix
//! (often just VCA) and mutate, splice or append later requests; the rest
//! are mutated whole sequences.
//!
//! `spdm-secured` keeps one live session and feeds the responder's
//! `handle_secured` arbitrary records, records sealed with the session's
//! real keys around mutated application messages, and mutated records of
//! the live session; a session that ends (END_SESSION, a record that fails
//! to open, a KEY_UPDATE the requester did not follow) is re-established,
//! which must always succeed.
//!
//! Oracles: a plain reply is a well-formed SPDM message (a supported
//! version; ERROR or the response code of the request; the request's
//! version on success; no larger than MaxSPDMmsgSize), a secured reply to a
//! live session opens with the session's keys, and after every input the
//! responder still completes a fresh VCA, and a new session can be set up.

use crate::engine::Target;
use crate::mutate::{mutate, push_chunk, Cursor, Rng};
use spdm_responder::codec::{V10, V11, V12, V13};
use spdm_responder::crypto::{
    AsymAlgo, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, ASYM_ECDSA_P256, ASYM_ECDSA_P384,
    DHE_SECP256R1, DHE_SECP384R1, HASH_SHA256, HASH_SHA384,
};
use spdm_responder::idekm::codec::StreamHeader;
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream, KEY_LEN};
use spdm_responder::identity::{CmaDeviceName, Identity};
use spdm_responder::responder::PskEntry;
use spdm_responder::rng::DeterministicEntropy;
use spdm_responder::tdisp::{
    InterfaceId, LockParams, Request as TdispRequest, TdiState, NONCE_LEN, VERSION_10,
};
use spdm_responder::transport::InMemory;
use spdm_responder::vendor::{PCISIG_VENDOR_ID, STANDARD_ID_PCISIG};
use spdm_responder::{
    Message, Requester, RequesterConfig, Responder, ResponderConfig, SecuredReply,
};
use std::sync::{Arc, OnceLock};
use trustdev_devices::security::ide::{km::IdeKmPorts, Ide, IdeConfig};
use trustdev_devices::security::tdisp::{IdeRequirement, Tdi, TdispConfig, TdispFunctions};

/// The device identity every SPDM target uses (P-256 and P-384, two
/// slots), generated once from a fixed seed.
pub fn identity() -> Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let mut rng = DeterministicEntropy::new(b"trustdev fuzz identity");
        Identity::generate(
            &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
            &CmaDeviceName::default(),
            2,
            &mut rng,
        )
        .expect("generate the fuzz identity")
    })
    .clone()
}

/// The responder configuration fuzzed: the default with PSK sessions on
/// (so PSK_EXCHANGE/PSK_FINISH are reachable) and a heartbeat period.
pub fn responder_config() -> ResponderConfig {
    ResponderConfig {
        psks: vec![PskEntry::dmtf_test()],
        ..ResponderConfig::default()
    }
}

/// A responder on deterministic entropy (so recorded sessions replay),
/// answering IDE_KM for one IDE port and TDISP for one TDI in secured
/// sessions (as `trustdev serve` devices with IDE and TDISP do). The TDI
/// locks once IDE_KM armed keys for its stream (there are no configuration
/// registers here to enable a stream with), and reports the DMA-copy
/// example's function with BARs assigned.
pub fn responder() -> Responder {
    let mut r = Responder::with_entropy(
        responder_config(),
        identity(),
        Box::new(DeterministicEntropy::new(b"trustdev fuzz responder")),
    );
    let ide = Ide::new(IdeConfig::default());
    let tdi = Tdi::new(
        TdispConfig {
            ide: IdeRequirement::KeysArmed,
            ..TdispConfig::default()
        },
        "trustdev fuzz",
        vec![Arc::clone(&ide)],
    );
    TDI_FUNCTION.with(|cfg| tdi.observe(cfg));
    let (key, handler) = IdeKmPorts::new(vec![ide]).handler();
    r.register_vendor(key, handler);
    let (key, handler) = TdispFunctions::new(vec![tdi]).handler();
    r.register_vendor(key, handler);
    r
}

thread_local! {
    /// The configuration space the fuzzed TDI reports on: the DMA-copy
    /// example's function with its BARs assigned (built once per thread).
    static TDI_FUNCTION: vfio_user_server::pci::ConfigSpace = {
        let mut cfg = trustdev_devices::example::config_space(
            vfio_user_server::pci::PortType::Endpoint,
            true,
            trustdev_devices::example::DEFAULT_SERIAL,
            Vec::new(),
        );
        trustdev_devices::security::tdisp::view::assign_bars(&mut cfg, 0xfe00_0000);
        cfg
    };
}

/// The TDI's INTERFACE_ID in every recorded request.
pub const TDI_INTERFACE: u16 = 0x0100;

/// TDISP requests a TSM sends, each once, in the order of a whole flow
/// (the START nonce is a wrong one here; the recorded flows use the real
/// one), plus one the device does not support (BIND_P2P).
pub fn tdisp_requests() -> Vec<TdispRequest> {
    vec![
        TdispRequest::GetVersion,
        TdispRequest::GetCapabilities { tsm_caps: 0 },
        TdispRequest::LockInterface(LockParams::default()),
        TdispRequest::GetDeviceInterfaceReport {
            offset: 0,
            length: 0x400,
        },
        TdispRequest::GetDeviceInterfaceState,
        TdispRequest::StartInterface {
            nonce: [0x11; NONCE_LEN],
        },
        TdispRequest::BindP2pStream { stream_id: 1 },
        TdispRequest::StopInterface,
    ]
}

/// IDE_KM KEY_PROG and K_SET_GO for every sub-stream and direction of key
/// set K0 of stream 0: what LOCK_INTERFACE of the fuzzed TDI needs.
fn arm_stream_zero() -> Vec<spdm_responder::idekm::Request> {
    use spdm_responder::idekm::Request;
    let mut prog = Vec::new();
    let mut go = Vec::new();
    for dir in [KeyDirection::Rx, KeyDirection::Tx] {
        for sub in [
            SubStream::Posted,
            SubStream::NonPosted,
            SubStream::Completion,
        ] {
            let h = StreamHeader::new(0, KeySlot::new(KeySet::K0, dir, sub), 0);
            prog.push(Request::KeyProg {
                header: h,
                key: IdeKey::new([0x3c; KEY_LEN], 7),
            });
            go.push(Request::KSetGo(h));
        }
    }
    prog.extend(go);
    prog
}

/// IDE_KM requests a TSM sends: QUERY, KEY_PROG for two slots, K_SET_GO,
/// K_SET_STOP.
pub fn ide_km_requests() -> Vec<spdm_responder::idekm::Request> {
    use spdm_responder::idekm::Request;
    let slot = KeySlot::new(KeySet::K0, KeyDirection::Rx, SubStream::Posted);
    let tx = KeySlot::new(KeySet::K0, KeyDirection::Tx, SubStream::Completion);
    let h = StreamHeader::new(0, slot, 0);
    vec![
        Request::Query { port_index: 0 },
        Request::KeyProg {
            header: h,
            key: IdeKey::new([0x5a; KEY_LEN], 0x1122_3344_5566_7788),
        },
        Request::KeyProg {
            header: StreamHeader::new(0, tx, 0),
            key: IdeKey::new([0xa5; KEY_LEN], 1),
        },
        Request::KSetGo(h),
        Request::KSetStop(h),
    ]
}

/// An IDE_KM request as the SPDM VENDOR_DEFINED_REQUEST carrying it.
fn ide_km_message(version: u8, req: &spdm_responder::idekm::Request) -> Vec<u8> {
    pcisig_message(version, &req.encode())
}

/// A TDISP request about [`TDI_INTERFACE`] as the SPDM
/// VENDOR_DEFINED_REQUEST carrying it.
fn tdisp_message(version: u8, req: &TdispRequest) -> Vec<u8> {
    pcisig_message(
        version,
        &req.encode(VERSION_10, InterfaceId::from_rid(TDI_INTERFACE)),
    )
}

/// A PCI-SIG VENDOR_DEFINED_REQUEST with `payload` (protocol byte first).
fn pcisig_message(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![version, 0xFE, 0, 0];
    m.extend_from_slice(&STANDARD_ID_PCISIG.to_le_bytes());
    m.push(2);
    m.extend_from_slice(&PCISIG_VENDOR_ID.to_le_bytes());
    m.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// An algorithm set the recording requester offers.
struct Algos {
    version: u8,
    asym: u32,
    hash: u32,
    dhe: u16,
    aead: u16,
}

const FLOWS: [Algos; 4] = [
    Algos {
        version: V12,
        asym: ASYM_ECDSA_P256,
        hash: HASH_SHA256,
        dhe: DHE_SECP256R1,
        aead: AEAD_AES_256_GCM,
    },
    Algos {
        version: V13,
        asym: ASYM_ECDSA_P384,
        hash: HASH_SHA384,
        dhe: DHE_SECP384R1,
        aead: AEAD_CHACHA20_POLY1305,
    },
    Algos {
        version: V11,
        asym: ASYM_ECDSA_P256,
        hash: HASH_SHA256,
        dhe: DHE_SECP256R1,
        aead: AEAD_CHACHA20_POLY1305,
    },
    Algos {
        version: V10,
        asym: ASYM_ECDSA_P384,
        hash: HASH_SHA384,
        dhe: DHE_SECP384R1,
        aead: AEAD_AES_256_GCM,
    },
];

fn requester_config(a: &Algos) -> RequesterConfig {
    RequesterConfig {
        versions: vec![a.version],
        base_asym: a.asym,
        base_hash: a.hash,
        dhe: a.dhe,
        aead: a.aead,
        trusted_roots: identity().roots_der(),
        psk: Some(PskEntry::dmtf_test()),
        ..RequesterConfig::default()
    }
}

/// A requester over an in-memory responder, recording every message.
fn recording_requester(a: &Algos, tag: &[u8]) -> Requester<InMemory> {
    Requester::with_entropy(
        requester_config(a),
        InMemory::recording(responder()),
        Box::new(DeterministicEntropy::new(tag)),
    )
}

/// Whole conversations: the requests of each, in order.
pub fn recorded_flows() -> Vec<Vec<Message>> {
    let mut flows = Vec::new();
    for (i, a) in FLOWS.iter().enumerate() {
        let mut r = recording_requester(a, format!("fuzz requester {i}").as_bytes());
        let _ = (|| -> Result<(), spdm_responder::error::RequesterError> {
            r.init_connection()?;
            r.authenticate(0)?;
            r.get_measurements(None, 0xFF, true, 0)?;
            if a.version >= V11 {
                let sid = r.key_exchange(0, 0)?;
                r.heartbeat(sid)?;
                r.get_measurements(Some(sid), 0xFF, false, 0)?;
                r.key_update(sid, false)?;
                // An unknown vendor protocol (an ERROR), then IDE_KM.
                let _ = r.vendor_request(Some(sid), 3, &[1, 0], &[0x7f, 1, 2, 3]);
                for req in ide_km_requests() {
                    let _ = r.ide_km(sid, &req);
                }
                tdisp_flow(&mut r, sid);
                r.end_session(sid)?;
                let psk = r.psk_exchange(0)?;
                r.get_measurements(Some(psk), 1, false, 0)?;
                r.end_session(psk)?;
            }
            Ok(())
        })();
        let log = r.transport_mut().log.take().unwrap_or_default();
        flows.push(log.into_iter().step_by(2).collect());
    }
    flows
}

/// A whole TDISP flow in session `sid`: keys for stream 0 armed, then
/// version, capabilities, LOCK, the report, START with LOCK's nonce (RUN),
/// state, STOP, and the unsupported and out-of-state requests once each.
/// Returns the state the TDI reached before STOP.
fn tdisp_flow<T: spdm_responder::transport::Transport>(
    r: &mut Requester<T>,
    sid: u32,
) -> Option<TdiState> {
    for req in arm_stream_zero() {
        let _ = r.ide_km(sid, &req);
    }
    let iface = InterfaceId::from_rid(TDI_INTERFACE);
    let _ = r.tdisp_get_version(sid, iface);
    let _ = r.tdisp_get_capabilities(sid, iface, 0);
    let nonce = r.tdisp_lock(sid, iface, &LockParams::default()).ok();
    let _ = r.tdisp_get_report(sid, iface);
    if let Some(n) = nonce {
        let _ = r.tdisp_start(sid, iface, &n);
    }
    let state = r.tdisp_get_state(sid, iface).ok();
    let _ = r.tdisp(sid, iface, &TdispRequest::BindP2pStream { stream_id: 1 });
    let _ = r.tdisp_lock(sid, iface, &LockParams::default());
    let _ = r.tdisp_stop(sid, iface);
    state
}

/// Serialises a sequence: per message a kind byte (bit 0: secured record)
/// and a u16-length-prefixed body.
pub fn encode_sequence(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let (kind, body) = match m {
            Message::Spdm(b) => (0u8, b),
            Message::Secured(b) => (1u8, b),
        };
        out.push(kind);
        push_chunk(&mut out, body);
    }
    out
}

fn decode_sequence(input: &[u8]) -> Vec<Message> {
    let mut c = Cursor::new(input);
    let mut out = Vec::new();
    while !c.is_empty() && out.len() < 64 {
        let kind = c.u8();
        let body = c.chunk().to_vec();
        out.push(if kind & 1 == 0 {
            Message::Spdm(body)
        } else {
            Message::Secured(body)
        });
    }
    out
}

/// Checks a plain reply to `req`.
pub fn check_plain_reply(req: &[u8], rsp: &[u8], max_msg: usize) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{why}: request {req:02x?} answered {rsp:02x?}"));
    if rsp.len() < 4 {
        return bad("reply shorter than an SPDM header");
    }
    if !matches!(rsp[0], V10 | V11 | V12 | V13) {
        return bad("reply with an unsupported SPDMVersion");
    }
    if rsp.len() > max_msg {
        return bad("reply larger than MaxSPDMmsgSize");
    }
    let code = rsp[1];
    if code == 0x7F || req.len() < 2 || req[1] == 0xFF {
        return Ok(());
    }
    if code != req[1] & 0x7F {
        return bad("reply code does not answer the request code");
    }
    if rsp[0] != req[0] {
        return bad("successful reply in another SPDMVersion than the request");
    }
    Ok(())
}

/// The `spdm` target.
pub struct Spdm {
    seeds: Vec<Vec<u8>>,
    flows: Vec<Vec<Message>>,
    max_msg: usize,
    /// Requests of all flows (material for splices and appends).
    pool: Vec<Message>,
    /// Plain replies: success / ERROR.
    ok: u64,
    errors: u64,
}

impl std::fmt::Debug for Spdm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spdm")
            .field("seeds", &self.seeds.len())
            .finish()
    }
}

impl Spdm {
    /// The target; records the seed conversations (a few signatures).
    pub fn new() -> Self {
        let flows = recorded_flows();
        let seeds = flows.iter().map(|f| encode_sequence(f)).collect();
        let pool = flows.iter().flatten().cloned().collect();
        Spdm {
            seeds,
            flows,
            max_msg: responder_config().max_spdm_msg_size as usize,
            pool,
            ok: 0,
            errors: 0,
        }
    }
}

impl Default for Spdm {
    fn default() -> Self {
        Self::new()
    }
}

fn mutate_message(rng: &mut Rng, m: &mut Message, others: &[Vec<u8>]) {
    let body = match m {
        Message::Spdm(b) | Message::Secured(b) => b,
    };
    mutate(rng, body, others, 4096);
}

impl Target for Spdm {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        16 << 10
    }

    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        out.clear();
        if rng.one_in(8) {
            // A mutated whole sequence (framing included).
            crate::mutate::mutated_seed(rng, &self.seeds, self.max_len(), out);
            return;
        }
        let flow = rng.pick(&self.flows);
        // A valid prefix: VCA (3 requests) half the time, else any cut.
        let cut = if rng.one_in(2) || flow.len() <= 3 {
            3.min(flow.len())
        } else {
            rng.below(flow.len() + 1)
        };
        let mut msgs: Vec<Message> = flow[..cut].to_vec();
        let others: Vec<Vec<u8>> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let mut m = if rng.one_in(2) {
                flow.get(msgs.len())
                    .cloned()
                    .unwrap_or_else(|| rng.pick(&self.pool).clone())
            } else {
                rng.pick(&self.pool).clone()
            };
            if !rng.one_in(8) {
                mutate_message(rng, &mut m, &others);
            }
            msgs.push(m);
        }
        *out = encode_sequence(&msgs);
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut r = responder();
        for m in decode_sequence(input) {
            match m {
                Message::Spdm(req) => {
                    let rsp = r.handle_message(&req);
                    check_plain_reply(&req, &rsp, self.max_msg)?;
                    if rsp[1] == 0x7F {
                        self.errors += 1;
                    } else {
                        self.ok += 1;
                    }
                }
                Message::Secured(rec) => match r.handle_secured(&rec) {
                    SecuredReply::Plain(rsp) => {
                        if rsp.len() < 4 || rsp[1] != 0x7F {
                            return Err(format!(
                                "plain reply to a secured record is not an ERROR: {rsp:02x?}"
                            ));
                        }
                    }
                    SecuredReply::Secured(_) | SecuredReply::None => {}
                },
            }
        }
        // The responder must still negotiate from scratch.
        vca(&mut r)
    }

    fn stats(&self) -> String {
        format!("plain replies: {} success, {} ERROR", self.ok, self.errors)
    }
}

/// GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS (1.2, P-256) on a
/// responder in any state must succeed.
pub fn vca(r: &mut Responder) -> Result<(), String> {
    let v = r.handle_message(&[V10, 0x84, 0, 0]);
    if v.get(1) != Some(&0x04) {
        return Err(format!("GET_VERSION after the input answered {v:02x?}"));
    }
    let mut caps = vec![V12, 0xE1, 0, 0, 0, 12, 0, 0];
    caps.extend_from_slice(&0x0000_62C6u32.to_le_bytes());
    caps.extend_from_slice(&0x1200u32.to_le_bytes());
    caps.extend_from_slice(&0x1200u32.to_le_bytes());
    let c = r.handle_message(&caps);
    if c.get(1) != Some(&0x61) {
        return Err(format!(
            "GET_CAPABILITIES after the input answered {c:02x?}"
        ));
    }
    let mut algs = vec![V12, 0xE3, 4, 0, 48, 0, 1, 2];
    algs.extend_from_slice(&ASYM_ECDSA_P256.to_le_bytes());
    algs.extend_from_slice(&HASH_SHA256.to_le_bytes());
    algs.extend_from_slice(&[0u8; 16]);
    for (t, s) in [(2u8, 0x0008u16), (3, 0x0002), (4, 0x0080), (5, 0x0001)] {
        algs.extend_from_slice(&[t, 0x20]);
        algs.extend_from_slice(&s.to_le_bytes());
    }
    let a = r.handle_message(&algs);
    if a.get(1) != Some(&0x63) {
        return Err(format!(
            "NEGOTIATE_ALGORITHMS after the input answered {a:02x?}"
        ));
    }
    Ok(())
}

/// The `spdm-secured` target.
pub struct SpdmSecured {
    seeds: Vec<Vec<u8>>,
    req: Requester<InMemory>,
    sid: Option<u32>,
    sessions: u64,
    sealed_ok: u64,
}

impl std::fmt::Debug for SpdmSecured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdmSecured")
            .field("sid", &self.sid)
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// Input modes of `spdm-secured` (first byte modulo 4).
const MODE_RAW: u8 = 0;
const MODE_SEALED: u8 = 1;
const MODE_MUTATED_RECORD: u8 = 2;

impl SpdmSecured {
    /// The target with a session established (SPDM 1.2, P-256, AES-256-GCM).
    pub fn new() -> Result<Self, String> {
        let req = Requester::with_entropy(
            requester_config(&FLOWS[0]),
            InMemory::new(responder()),
            Box::new(DeterministicEntropy::new(b"fuzz secured requester")),
        );
        let mut t = SpdmSecured {
            seeds: Vec::new(),
            req,
            sid: None,
            sessions: 0,
            sealed_ok: 0,
        };
        t.session()?;
        // Application messages a requester sends in a session.
        let v = V12;
        let apps: Vec<Vec<u8>> = vec![
            vec![v, 0xE8, 0, 0],                            // HEARTBEAT
            vec![v, 0xE9, 1, 0x42],                         // KEY_UPDATE UpdateKey
            vec![v, 0xE9, 3, 0x43],                         // KEY_UPDATE VerifyNewKey
            vec![v, 0xE0, 0, 0xFF],                         // GET_MEASUREMENTS all, unsigned
            vec![v, 0xE0, 0, 1],                            // GET_MEASUREMENTS index 1
            vec![v, 0x81, 0, 0],                            // GET_DIGESTS
            vec![v, 0x82, 0, 0, 0, 0, 0, 1],                // GET_CERTIFICATE
            vec![v, 0xFE, 0, 0, 3, 0, 2, 1, 0, 2, 0, 1, 2], // VENDOR_DEFINED_REQUEST
            vec![v, 0xEC, 0, 0],                            // END_SESSION
            vec![v, 0x84, 0, 0],                            // GET_VERSION (not in a session)
            vec![v, 0xE5, 0, 0],                            // FINISH (handshake is over)
        ];
        let apps: Vec<Vec<u8>> = apps
            .into_iter()
            .chain(ide_km_requests().iter().map(|r| ide_km_message(v, r)))
            .chain(arm_stream_zero().iter().map(|r| ide_km_message(v, r)))
            .chain(tdisp_requests().iter().map(|r| tdisp_message(v, r)))
            .collect();
        for (i, app) in apps.iter().enumerate() {
            let mut s = vec![MODE_SEALED];
            s.extend_from_slice(app);
            t.seeds.push(s);
            let rec = t
                .req
                .seal_only(t.sid.unwrap_or(0), app)
                .map_err(|e| format!("seal a seed: {e}"))?;
            // Keep the requester's sequence numbers in step: deliver it.
            let rsp = t.req.transport_mut().responder.handle_secured(&rec);
            if let (SecuredReply::Secured(r), Some(sid)) = (rsp, t.sid) {
                let _ = t.req.open_response(sid, &r);
            }
            if i % 3 == 0 {
                let mut m = vec![MODE_MUTATED_RECORD];
                m.extend_from_slice(app);
                t.seeds.push(m);
                let mut raw = vec![MODE_RAW];
                raw.extend_from_slice(&rec);
                t.seeds.push(raw);
            }
            t.ensure_session()?;
        }
        Ok(t)
    }

    fn session(&mut self) -> Result<(), String> {
        // A fresh connection: VCA, then KEY_EXCHANGE + FINISH (or, every
        // fourth time, PSK_EXCHANGE + PSK_FINISH).
        self.req
            .init_connection()
            .map_err(|e| format!("init_connection: {e}"))?;
        if self.sessions % 4 != 3 {
            // KEY_EXCHANGE needs the responder's certificate (its key).
            self.req
                .get_digests()
                .and_then(|_| self.req.get_certificate(0))
                .map_err(|e| format!("certificate: {e}"))?;
        }
        let sid = if self.sessions % 4 == 3 {
            self.req.psk_exchange(0)
        } else {
            self.req.key_exchange(0, 0)
        }
        .map_err(|e| format!("session setup: {e}"))?;
        self.sid = Some(sid);
        self.sessions += 1;
        Ok(())
    }

    fn ensure_session(&mut self) -> Result<(), String> {
        let alive = self
            .sid
            .is_some_and(|sid| self.req.transport_mut().responder.session_established(sid));
        if alive {
            if let Some(sid) = self.sid {
                if self.req.heartbeat(sid).is_ok() {
                    return Ok(());
                }
            }
        }
        // Ended or out of step: the old session is gone for the requester.
        if let Some(sid) = self.sid.take() {
            self.req.forget_session(sid);
        }
        self.session()
    }
}

impl Target for SpdmSecured {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        8192
    }

    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        crate::mutate::mutated_seed(rng, &self.seeds, self.max_len(), out);
        if out.is_empty() {
            out.push(0);
        }
        // Steer the mode: a record that fails to open ends the session, and
        // setting up the next one costs a signature, so most inputs are
        // sealed application messages (which keep the session) and records
        // for other sessions.
        out[0] = match rng.below(100) {
            0..=69 => MODE_SEALED,
            70..=96 => MODE_RAW,
            _ => MODE_MUTATED_RECORD,
        };
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Some((&mode, body)) = input.split_first() else {
            return Ok(());
        };
        let sid = self.sid.ok_or("no session")?;
        let record = match mode % 4 {
            MODE_RAW | 3 => body.to_vec(),
            MODE_SEALED => self
                .req
                .seal_only(sid, body)
                .map_err(|e| format!("seal: {e}"))?,
            _ => {
                let mut rec = self
                    .req
                    .seal_only(sid, body)
                    .map_err(|e| format!("seal: {e}"))?;
                // Deterministic corruption derived from the input.
                let h = body
                    .iter()
                    .fold(0x9e37u64, |h, &b| h.wrapping_mul(31) ^ u64::from(b));
                let mut rng = Rng::new(h);
                mutate(&mut rng, &mut rec, &[], 8192);
                rec
            }
        };
        let reply = self.req.transport_mut().responder.handle_secured(&record);
        match (mode % 4, reply) {
            (MODE_SEALED, SecuredReply::Secured(r)) => {
                // A reply to a well-sealed record must open, and hold a
                // well-formed SPDM message (END_SESSION_ACK included). The
                // exception: KEY_UPDATE UpdateAllKeys, whose ACK goes out
                // under the new response key, which this requester (it only
                // sealed the request) does not have.
                let update_all = body.get(1) == Some(&0xE9) && body.get(2) == Some(&2);
                let msg = match self.req.open_response(sid, &r) {
                    Ok(m) => m,
                    Err(_) if update_all => return self.ensure_session(),
                    Err(e) => {
                        return Err(format!("the reply to a sealed record does not open: {e}"))
                    }
                };
                check_plain_reply(body, &msg, 0x1_0000)?;
                if msg[1] != 0x7F {
                    self.sealed_ok += 1;
                }
            }
            (MODE_SEALED, other) => {
                return Err(format!(
                    "a record sealed in the live session got {}",
                    match other {
                        SecuredReply::Plain(p) => format!("a plain reply {p:02x?}"),
                        _ => "no reply".into(),
                    }
                ));
            }
            (_, SecuredReply::Plain(p)) if p.len() < 4 || p[1] != 0x7F => {
                return Err(format!("plain reply to a record is not an ERROR: {p:02x?}"));
            }
            _ => {}
        }
        self.ensure_session()
    }

    fn stats(&self) -> String {
        format!(
            "in-session successes {}, sessions set up {}",
            self.sealed_ok, self.sessions
        )
    }

    fn check(&mut self) -> Result<(), String> {
        self.ensure_session()?;
        let sid = self.sid.ok_or("no session")?;
        self.req
            .get_measurements(Some(sid), 0xFF, false, 0)
            .map(drop)
            .map_err(|e| format!("measurements in the session: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_oracle() {
        let get_version = [V10, 0x84, 0, 0];
        assert!(check_plain_reply(&get_version, &[V10, 0x04, 0, 0, 0, 1, 0, 0x12], 64).is_ok());
        assert!(check_plain_reply(&get_version, &[V12, 0x7F, 0x01, 0], 64).is_ok());
        // Wrong response code, version, size, or a short reply.
        assert!(check_plain_reply(&get_version, &[V10, 0x01, 0, 0], 64).is_err());
        assert!(check_plain_reply(&[V12, 0x81, 0, 0], &[V11, 0x01, 0, 0], 64).is_err());
        assert!(check_plain_reply(&get_version, &[0x20, 0x7F, 1, 0], 64).is_err());
        assert!(check_plain_reply(&get_version, &[V10, 0x04, 0], 64).is_err());
        assert!(check_plain_reply(&get_version, &[V10, 0x04, 0, 0, 0], 4).is_err());
    }

    #[test]
    fn ide_km_is_answered_in_the_session() {
        let mut t = SpdmSecured::new().unwrap();
        for req in ide_km_requests() {
            let before = t.sealed_ok;
            let mut input = vec![MODE_SEALED];
            input.extend(ide_km_message(V12, &req));
            t.run(&input).unwrap();
            assert_eq!(t.sealed_ok, before + 1, "{req:?} was not answered");
        }
    }

    #[test]
    fn tdisp_is_answered_in_the_session() {
        let mut t = SpdmSecured::new().unwrap();
        for req in tdisp_requests() {
            let before = t.sealed_ok;
            let mut input = vec![MODE_SEALED];
            input.extend(tdisp_message(V12, &req));
            t.run(&input).unwrap();
            assert_eq!(t.sealed_ok, before + 1, "{req:?} was not answered");
        }
    }

    #[test]
    fn the_recorded_tdisp_flow_reaches_run() {
        // The seeds reach deep into the TDI state machine: with the keys
        // armed, LOCK succeeds and START with its nonce gives RUN.
        let mut r = Requester::new(
            RequesterConfig {
                versions: vec![V12],
                trusted_roots: identity().roots_der(),
                ..RequesterConfig::default()
            },
            InMemory::new(responder()),
        );
        r.init_connection().unwrap();
        r.get_digests().unwrap();
        r.get_certificate(0).unwrap();
        let sid = r.key_exchange(0, 0).unwrap();
        assert_eq!(tdisp_flow(&mut r, sid), Some(TdiState::Run));
    }

    #[test]
    fn sequences_round_trip() {
        let m = vec![Message::Spdm(vec![1, 2, 3]), Message::Secured(vec![4; 300])];
        assert_eq!(decode_sequence(&encode_sequence(&m)), m);
    }
}
