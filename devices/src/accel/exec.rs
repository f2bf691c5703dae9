//! Executes one descriptor against client memory: validation, then the
//! operation, through the server's address spaces (zero-copy where the
//! memory allows, staged where it must). Crypto: ring (AES-256-GCM),
//! crc32c (SSE4.2), sha2 (SHA-NI when the CPU has it).

use super::desc::{
    flags, opcode, operand, status, AesParams, Completion, Descriptor, AES_PARAMS_SIZE,
    AES_TAG_OFFSET, COMPLETION_SIZE, MAX_AAD, SHA256_LEN,
};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use sha2::Digest as _;
use vfio_user_server::dma::{
    self, Bounce, DmaFault, DmaSpace, OpFault, Operand, PasidError, PasidMemory,
};
use vfio_user_server::protocol::pasid::{PasidTag, PASID_MAX};
use zeroize::Zeroize;

/// Staging buffer size of copies and compares.
pub const STAGE: usize = 64 << 10;
/// Chunk of the hashing operations (CRC-32C, SHA-256): small enough that the
/// staged chunk stays in L1 while it is hashed.
pub const STREAM_CHUNK: usize = 16 << 10;

/// Per-descriptor limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest length of a data operation.
    pub max_xfer: u32,
    /// Largest AES-GCM length.
    pub max_crypto: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_xfer: 16 << 20,
            max_crypto: 1 << 20,
        }
    }
}

/// A worker's staging memory (device-internal SRAM, as it were).
#[derive(Debug)]
pub struct Scratch {
    a: Bounce,
    b: Bounce,
    stream: Bounce,
    crypto: Vec<u8>,
    aad: Vec<u8>,
}

impl Scratch {
    /// Buffers for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Scratch {
            a: Bounce::new(STAGE),
            b: Bounce::new(STAGE),
            stream: Bounce::new(STREAM_CHUNK),
            crypto: Vec::with_capacity(limits.max_crypto as usize),
            aad: Vec::new(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Plaintext of decryptions passed through here.
        self.crypto.zeroize();
    }
}

/// What executing a descriptor produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The completion record (tag filled in).
    pub completion: Completion,
    /// Bytes of data processed (for the counters).
    pub bytes: u64,
}

/// A failed descriptor: status, faulting operand, address, progress.
struct Failure {
    status: u8,
    operand: u8,
    write: bool,
    addr: u64,
    done: u64,
}

impl Failure {
    fn plain(status: u8) -> Failure {
        Failure {
            status,
            operand: 0,
            write: false,
            addr: 0,
            done: 0,
        }
    }
}

/// The completion status a DMA fault is reported with.
pub fn fault_status(f: &DmaFault) -> u8 {
    match f {
        DmaFault::OutOfBounds { .. } => status::ADDRESS_FAULT,
        DmaFault::Permission { .. } => status::PERMISSION,
        DmaFault::PageFault { .. } => status::PAGE_FAULT,
        DmaFault::Pasid { why, .. } => match why {
            PasidError::OutOfRange | PasidError::Unbound => status::PASID_INVALID,
            PasidError::NoCapability
            | PasidError::Disabled
            | PasidError::PrivilegedDisabled
            | PasidError::ExecDisabled => status::PASID_DISABLED,
        },
        DmaFault::NoPath(_) => status::NO_PASID_PATH,
        DmaFault::Aborted => status::ABORTED,
        DmaFault::Transport(_) => status::TRANSPORT,
    }
}

fn fault_addr(f: &DmaFault) -> Option<u64> {
    match f {
        DmaFault::OutOfBounds { addr }
        | DmaFault::Permission { addr, .. }
        | DmaFault::PageFault { addr, .. } => Some(*addr),
        _ => None,
    }
}

fn dma_failure(f: DmaFault, op: u8, write: bool, base: u64, done: u64) -> Failure {
    Failure {
        status: fault_status(&f),
        operand: op,
        write,
        addr: fault_addr(&f).unwrap_or(base.wrapping_add(done)),
        done,
    }
}

fn op_failure(f: OpFault, src: u64, dst: u64) -> Failure {
    let (op, write, base) = match f.operand {
        Operand::Source => (operand::SRC, false, src),
        Operand::Destination => (operand::DST, true, dst),
    };
    dma_failure(f.fault, op, write, base, f.done)
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen > 0 && blen > 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// The address space `d` names. `cancel` ends waits for page responses.
pub fn descriptor_space<'a>(
    d: &Descriptor,
    pasid: &'a PasidMemory,
    cancel: &'a (dyn Fn() -> bool + Sync),
) -> Result<DmaSpace<'a>, u8> {
    if d.flags & flags::PASID == 0 {
        if d.flags & flags::PRIV != 0 || d.pasid != 0 {
            return Err(status::BAD_FLAGS);
        }
        return Ok(pasid.space(None));
    }
    if d.pasid > PASID_MAX {
        return Err(status::PASID_INVALID);
    }
    let tag = PasidTag {
        pasid: d.pasid,
        privileged: d.flags & flags::PRIV != 0,
        exec: false,
    };
    Ok(match pasid.space(Some(tag)) {
        DmaSpace::Pasid(p) => DmaSpace::Pasid(
            p.blocking(d.flags & flags::BLOCK_ON_FAULT != 0)
                .cancel_with(cancel),
        ),
        other => other,
    })
}

/// Executes `d`. `completion_space` is where its completion record goes
/// (for the overlap checks).
pub fn execute(
    d: &Descriptor,
    pasid: &PasidMemory,
    completion_space: &DmaSpace<'_>,
    limits: &Limits,
    scratch: &mut Scratch,
    cancel: &(dyn Fn() -> bool + Sync),
) -> Outcome {
    let mut c = Completion {
        tag: d.tag,
        ..Completion::default()
    };
    let r = run(d, pasid, completion_space, limits, scratch, cancel, &mut c);
    let bytes = match r {
        Ok(bytes) => {
            c.status = status::SUCCESS;
            bytes
        }
        Err(f) => {
            c.status = f.status;
            c.fault_info = (f.operand << 1) | u8::from(f.write);
            c.fault_addr = f.addr;
            c.bytes_completed = u32::try_from(f.done).unwrap_or(u32::MAX);
            f.done
        }
    };
    Outcome {
        completion: c,
        bytes,
    }
}

fn run(
    d: &Descriptor,
    pasid: &PasidMemory,
    cspace: &DmaSpace<'_>,
    limits: &Limits,
    s: &mut Scratch,
    cancel: &(dyn Fn() -> bool + Sync),
    c: &mut Completion,
) -> Result<u64, Failure> {
    if d.flags & !flags::ALL != 0 || d.rsvd0 != 0 || d.rsvd1 != 0 {
        return Err(Failure::plain(status::BAD_FLAGS));
    }
    if d.opcode > opcode::LAST {
        return Err(Failure::plain(status::BAD_OPCODE));
    }
    let space = descriptor_space(d, pasid, cancel).map_err(Failure::plain)?;
    let len = u64::from(d.len);
    let data_ok = |min: u32, max: u32| {
        if d.len < min || d.len > max {
            Err(Failure::plain(status::BAD_LENGTH))
        } else {
            Ok(())
        }
    };
    // Ranges must not wrap the 64-bit address space.
    let range = |base: u64, n: u64, op: u8, write: bool| {
        if base.checked_add(n).is_none() {
            Err(Failure {
                status: status::ADDRESS_FAULT,
                operand: op,
                write,
                addr: base,
                done: 0,
            })
        } else {
            Ok(())
        }
    };
    // The completion record must not land in what the operation writes.
    let comp_hits = |base: u64, n: u64| {
        d.flags & flags::COMPLETION != 0
            && cspace.same_as(&space)
            && overlaps(d.completion, COMPLETION_SIZE as u64, base, n)
    };
    match d.opcode {
        opcode::NOP => Ok(0),
        opcode::MEMMOVE => {
            data_ok(1, limits.max_xfer)?;
            range(d.src, len, operand::SRC, false)?;
            range(d.dst, len, operand::DST, true)?;
            if comp_hits(d.dst, len) {
                return Err(Failure::plain(status::OVERLAP));
            }
            dma::copy(&space, d.src, &space, d.dst, len, &mut s.a)
                .map_err(|f| op_failure(f, d.src, d.dst))?;
            Ok(len)
        }
        opcode::FILL => {
            data_ok(1, limits.max_xfer)?;
            range(d.dst, len, operand::DST, true)?;
            if comp_hits(d.dst, len) {
                return Err(Failure::plain(status::OVERLAP));
            }
            dma::fill(&space, d.dst, len, &d.arg2.to_le_bytes(), &mut s.a)
                .map_err(|f| op_failure(f, d.src, d.dst))?;
            Ok(len)
        }
        opcode::COMPARE => {
            data_ok(1, limits.max_xfer)?;
            range(d.src, len, operand::SRC, false)?;
            range(d.dst, len, operand::DST, false)?;
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(STAGE as u64) as usize;
                let a = &mut s.a.bytes_mut()[..n];
                space
                    .read(d.src + done, a)
                    .map_err(|f| dma_failure(f, operand::SRC, false, d.src, done))?;
                let b = &mut s.b.bytes_mut()[..n];
                space
                    .read(d.dst + done, b)
                    .map_err(|f| dma_failure(f, operand::DST, false, d.dst, done))?;
                if let Some(i) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
                    c.result = 1;
                    c.bytes_completed = (done + i as u64) as u32;
                    return Ok(done + i as u64);
                }
                done += n as u64;
            }
            c.result = 0;
            c.bytes_completed = d.len;
            Ok(len)
        }
        opcode::CRC32C => {
            data_ok(0, limits.max_xfer)?;
            range(d.src, len, operand::SRC, false)?;
            let mut crc = d.arg;
            dma::read_stream(&space, d.src, len, &mut s.stream, |chunk| {
                crc = crc32c::crc32c_append(crc, chunk);
            })
            .map_err(|f| op_failure(f, d.src, d.dst))?;
            c.result = u64::from(crc);
            c.bytes_completed = d.len;
            Ok(len)
        }
        opcode::SHA256 => {
            data_ok(0, limits.max_xfer)?;
            range(d.src, len, operand::SRC, false)?;
            range(d.dst, SHA256_LEN as u64, operand::DST, true)?;
            if comp_hits(d.dst, SHA256_LEN as u64) {
                return Err(Failure::plain(status::OVERLAP));
            }
            let mut h = sha2::Sha256::new();
            dma::read_stream(&space, d.src, len, &mut s.stream, |chunk| h.update(chunk))
                .map_err(|f| op_failure(f, d.src, d.dst))?;
            let digest = h.finalize();
            space
                .write(d.dst, &digest)
                .map_err(|f| dma_failure(f, operand::DST, true, d.dst, len))?;
            c.bytes_completed = d.len;
            Ok(len)
        }
        opcode::AES_GCM_ENCRYPT | opcode::AES_GCM_DECRYPT => {
            data_ok(0, limits.max_crypto)?;
            range(d.src, len, operand::SRC, false)?;
            range(d.dst, len, operand::DST, true)?;
            range(d.arg2, AES_PARAMS_SIZE as u64, operand::PARAMS, false)?;
            let encrypt = d.opcode == opcode::AES_GCM_ENCRYPT;
            // The tag is written into the parameter block: it must not be
            // part of the output, nor share bytes with the record.
            if overlaps(d.dst, len, d.arg2, AES_PARAMS_SIZE as u64)
                || comp_hits(d.dst, len)
                || comp_hits(d.arg2, AES_PARAMS_SIZE as u64)
            {
                return Err(Failure::plain(status::OVERLAP));
            }
            aes_gcm(d, &space, s, encrypt)?;
            c.bytes_completed = d.len;
            Ok(len)
        }
        _ => Err(Failure::plain(status::BAD_OPCODE)),
    }
}

/// Zeroizes the key of a parameter block when it goes out of scope.
struct KeyGuard(AesParams);

impl std::ops::Deref for KeyGuard {
    type Target = AesParams;
    fn deref(&self) -> &AesParams {
        &self.0
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.0.key.zeroize();
    }
}

fn aes_gcm(
    d: &Descriptor,
    space: &DmaSpace<'_>,
    s: &mut Scratch,
    encrypt: bool,
) -> Result<(), Failure> {
    let len = d.len as usize;
    let mut raw = [0u8; AES_PARAMS_SIZE];
    let read = space.read(d.arg2, &mut raw);
    let params = KeyGuard(AesParams::decode(&raw));
    raw.zeroize();
    read.map_err(|f| dma_failure(f, operand::PARAMS, false, d.arg2, 0))?;
    if params.rsvd != 0 {
        return Err(Failure::plain(status::BAD_FLAGS));
    }
    if params.aad_len > MAX_AAD {
        return Err(Failure::plain(status::BAD_LENGTH));
    }
    let aad_len = u64::from(params.aad_len);
    if params.aad_addr.checked_add(aad_len).is_none() {
        return Err(Failure {
            status: status::ADDRESS_FAULT,
            operand: operand::AAD,
            write: false,
            addr: params.aad_addr,
            done: 0,
        });
    }
    s.aad.clear();
    s.aad.resize(params.aad_len as usize, 0);
    space
        .read(params.aad_addr, &mut s.aad)
        .map_err(|f| dma_failure(f, operand::AAD, false, params.aad_addr, 0))?;
    // Grow the staging buffer once; never clear it (it is overwritten).
    if s.crypto.len() < len {
        s.crypto.resize(len, 0);
    }
    let buf = &mut s.crypto[..len];
    space
        .read(d.src, buf)
        .map_err(|f| dma_failure(f, operand::SRC, false, d.src, 0))?;
    // ring keeps its expanded key schedule in the key object, which it
    // does not zeroize; the raw key bytes are (AesParams' Drop).
    let key = UnboundKey::new(&AES_256_GCM, &params.key)
        .map(LessSafeKey::new)
        .map_err(|_| Failure::plain(status::BAD_FLAGS))?;
    let nonce = Nonce::assume_unique_for_key(params.nonce);
    let aad = Aad::from(&s.aad[..]);
    if encrypt {
        let tag = key
            .seal_in_place_separate_tag(nonce, aad, buf)
            .map_err(|_| Failure::plain(status::BAD_LENGTH))?;
        space
            .write(d.dst, buf)
            .map_err(|f| dma_failure(f, operand::DST, true, d.dst, 0))?;
        space
            .write(d.arg2 + AES_TAG_OFFSET, tag.as_ref())
            .map_err(|f| dma_failure(f, operand::PARAMS, true, d.arg2, 0))?;
    } else {
        // Verify before anything is written: unauthenticated plaintext
        // never reaches client memory.
        let opened = key.open_in_place_separate_tag(nonce, aad, Tag::from(params.tag), buf, 0..);
        if opened.is_err() {
            // Nothing unauthenticated stays behind either.
            buf.fill(0);
            return Err(Failure::plain(status::AUTH_FAIL));
        }
        space
            .write(d.dst, buf)
            .map_err(|f| dma_failure(f, operand::DST, true, d.dst, 0))?;
    }
    Ok(())
}
