//! `trustdev-guest accel`: drives the trustdev accelerator (7d0c:acc1)
//! from guest user space through vfio-pci with IOVA mappings (the guest
//! needs a vIOMMU): every operation on rings in locked user memory, each
//! result verified against an independent software implementation
//! (RustCrypto AES-GCM and SHA-256, a bitwise CRC-32C), completions
//! signalled by MSI-X (one vector per queue) or polled.

use crate::vfio::EventFd;
use crate::vfio_session::{DmaBuffer, Session};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use serde_json::json;
use sha2::Digest;
use std::time::{Duration, Instant};

// The register map and descriptor formats are the device's own
// dependency-free files: one source for device and driver.
#[allow(dead_code)]
#[path = "../../devices/src/accel/desc.rs"]
pub mod desc;
#[allow(dead_code)]
#[path = "../../devices/src/accel/regs.rs"]
pub mod regs;

use desc::{flags, opcode, status, AesParams, Completion, Descriptor};
use regs::{ctrl, global, queue, QUEUE_BASE, QUEUE_STRIDE};

/// Vendor and device ID of the accelerator.
pub const IDS: (u16, u16) = (0x7d0c, 0xacc1);

/// Options of `trustdev-guest accel`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// PCI address of the accelerator ([DDDD:]BB:DD.F).
    #[arg(long)]
    pub bdf: String,
    /// Bytes per data operation (1..=1048576).
    #[arg(long, default_value_t = 65536)]
    pub size: usize,
    /// Poll completion records instead of waiting for MSI-X interrupts.
    #[arg(long)]
    pub poll: bool,
    /// Seconds to wait for each completion.
    #[arg(long, default_value = "10", value_parser = crate::parse_seconds)]
    pub timeout: Duration,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

const IOVA: u64 = 0x10_0000;
const RING_ENTRIES: u32 = 16;
const RINGS: usize = 0x0000;
const RECORDS: usize = 0x2000;
const PARAMS: usize = 0x3000;
const AAD: usize = 0x3100;
const DIGEST: usize = 0x3200;
const SRC: usize = 0x10_0000;
const DST: usize = 0x20_0000;
const CT: usize = 0x30_0000;
const PT: usize = 0x40_0000;
const BUF_LEN: usize = 0x50_0000;
const MAX_SIZE: usize = 1 << 20;

/// CRC-32C (Castagnoli, reflected 0x82F63B78) continuing from `seed`, bit by
/// bit: an implementation independent of the device's.
pub(crate) fn crc32c_sw(seed: u32, data: &[u8]) -> u32 {
    let mut crc = !seed;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

struct Driver<'s> {
    s: &'s Session,
    buf: DmaBuffer<'s>,
    queues: usize,
    tails: Vec<u32>,
    fds: Vec<EventFd>,
    timeout: Duration,
    interrupts: u64,
    vectors_seen: Vec<bool>,
}

impl Driver<'_> {
    fn qreg(&self, q: usize, r: u64) -> u64 {
        QUEUE_BASE + q as u64 * QUEUE_STRIDE + r
    }

    fn setup_queues(&mut self, poll: bool) -> Result<(), String> {
        for q in 0..self.queues {
            let ring = IOVA + (RINGS + q * RING_ENTRIES as usize * 64) as u64;
            self.s.wr(self.qreg(q, queue::CTRL), ctrl::RESET)?;
            let t0 = Instant::now();
            while self.s.rd(self.qreg(q, queue::CTRL))? & ctrl::RESET != 0 {
                if t0.elapsed() > self.timeout {
                    return Err(format!("queue {q} reset did not finish"));
                }
            }
            self.s.wr(self.qreg(q, queue::RING_LO), ring as u32)?;
            self.s
                .wr(self.qreg(q, queue::RING_HI), (ring >> 32) as u32)?;
            self.s.wr(self.qreg(q, queue::RING_SIZE), RING_ENTRIES)?;
            self.s.wr(self.qreg(q, queue::VECTOR), q as u32)?;
            let c = if poll {
                ctrl::ENABLE
            } else {
                ctrl::ENABLE | ctrl::IRQ
            };
            self.s.wr(self.qreg(q, queue::CTRL), c)?;
            let st = self.s.rd(self.qreg(q, queue::STATUS))?;
            if st & 1 == 0 {
                return Err(format!("queue {q} did not enable (STATUS {st:#x})"));
            }
        }
        Ok(())
    }

    /// Runs `d` on queue `q`; returns its completion record.
    fn run(&mut self, q: usize, mut d: Descriptor) -> Result<Completion, String> {
        let slot = self.tails[q];
        let rec_off = RECORDS + (q * RING_ENTRIES as usize + slot as usize) * 32;
        d.completion = IOVA + rec_off as u64;
        d.flags |= flags::COMPLETION;
        if !self.fds.is_empty() {
            d.flags |= flags::INTERRUPT;
        }
        self.buf.write(rec_off, &[0u8; 32])?;
        let ring_off = RINGS + (q * RING_ENTRIES as usize + slot as usize) * 64;
        self.buf.write(ring_off, &d.encode())?;
        for f in &self.fds {
            f.take().map_err(|e| format!("eventfd: {e}"))?;
        }
        self.tails[q] = (slot + 1) % RING_ENTRIES;
        self.s.wr(self.qreg(q, queue::TAIL), self.tails[q])?;
        let t0 = Instant::now();
        if let Some(fd) = self.fds.get(q) {
            let ms = i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX);
            if !fd.wait(ms).map_err(|e| format!("poll: {e}"))? {
                return Err(format!(
                    "no MSI-X interrupt on vector {q} within {:?} (queue STATUS {:#x})",
                    self.timeout,
                    self.s.rd(self.qreg(q, queue::STATUS)).unwrap_or(0)
                ));
            }
            self.interrupts += fd.take().map_err(|e| format!("eventfd: {e}"))?;
            self.vectors_seen[q] = true;
            for (i, f) in self.fds.iter().enumerate() {
                let n = f.take().unwrap_or(0);
                if i != q && n > 0 {
                    return Err(format!("vector {i} fired for a queue {q} completion"));
                }
            }
        }
        loop {
            if self.buf.byte(rec_off)? != status::PENDING {
                break;
            }
            if t0.elapsed() > self.timeout {
                return Err(format!("no completion record within {:?}", self.timeout));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut b = [0u8; 32];
        self.buf.read(rec_off, &mut b)?;
        Ok(Completion::decode(&b))
    }
}

fn desc(op: u8, src: usize, dst: usize, len: usize) -> Descriptor {
    Descriptor {
        opcode: op,
        src: IOVA + src as u64,
        dst: IOVA + dst as u64,
        len: len as u32,
        ..Descriptor::default()
    }
}

fn expect(what: &str, c: &Completion, want: u8) -> Result<(), String> {
    if c.status == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: status {:#04x} ({}), expected {:#04x} ({}); fault at {:#x}, {} bytes done",
            c.status,
            status::name(c.status),
            want,
            status::name(want),
            c.fault_addr,
            c.bytes_completed
        ))
    }
}

/// Runs every operation; returns the names of those verified.
fn operations(d: &mut Driver<'_>, size: usize) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut q = 0usize;
    let mut next = |d: &Driver<'_>| {
        let r = q % d.queues;
        q += 1;
        r
    };
    let src = data(size, 1);
    d.buf.write(SRC, &src)?;
    let mut out = vec![0u8; size];

    let c = d.run(next(d), desc(opcode::NOP, 0, 0, 0))?;
    expect("nop", &c, status::SUCCESS)?;
    done.push("nop".to_string());

    d.buf.write(DST, &vec![0xee; size])?;
    let c = d.run(next(d), desc(opcode::MEMMOVE, SRC, DST, size))?;
    expect("memmove", &c, status::SUCCESS)?;
    d.buf.read(DST, &mut out)?;
    if out != src {
        return Err("memmove: destination differs from source".into());
    }
    done.push(format!("memmove {size}"));

    // Overlapping memmove, destination one byte above the source.
    let c = d.run(next(d), desc(opcode::MEMMOVE, DST, DST + 1, size - 1))?;
    expect("overlapping memmove", &c, status::SUCCESS)?;
    d.buf.read(DST + 1, &mut out[..size - 1])?;
    if out[..size - 1] != src[..size - 1] {
        return Err("overlapping memmove: not memmove semantics".into());
    }
    done.push("memmove-overlap".into());

    let mut f = desc(opcode::FILL, 0, DST, size);
    f.arg2 = u64::from_le_bytes(*b"trustdev");
    let c = d.run(next(d), f)?;
    expect("fill", &c, status::SUCCESS)?;
    d.buf.read(DST, &mut out)?;
    if !out.chunks(8).all(|c| c == &b"trustdev"[..c.len()]) {
        return Err("fill: pattern not found".into());
    }
    done.push("fill".into());

    d.buf.write(DST, &src)?;
    let c = d.run(next(d), desc(opcode::COMPARE, SRC, DST, size))?;
    expect("compare", &c, status::SUCCESS)?;
    if c.result != 0 {
        return Err(format!("compare of equal buffers: result {}", c.result));
    }
    let at = size / 3;
    d.buf.write(DST + at, &[src[at] ^ 0x80])?;
    let c = d.run(next(d), desc(opcode::COMPARE, SRC, DST, size))?;
    expect("compare", &c, status::SUCCESS)?;
    if (c.result, c.bytes_completed as usize) != (1, at) {
        return Err(format!(
            "compare: result {} at {}, expected 1 at {at}",
            c.result, c.bytes_completed
        ));
    }
    done.push("compare".into());

    let mut crc = desc(opcode::CRC32C, SRC, 0, size);
    crc.dst = 0;
    crc.arg = 0xfeed_f00d;
    let c = d.run(next(d), crc)?;
    expect("crc32c", &c, status::SUCCESS)?;
    let want = crc32c_sw(0xfeed_f00d, &src);
    if c.result != u64::from(want) {
        return Err(format!(
            "crc32c: device {:#010x}, software {want:#010x}",
            c.result
        ));
    }
    done.push("crc32c".into());

    let c = d.run(next(d), desc(opcode::SHA256, SRC, DIGEST, size))?;
    expect("sha256", &c, status::SUCCESS)?;
    let mut dg = [0u8; 32];
    d.buf.read(DIGEST, &mut dg)?;
    if dg[..] != sha2::Sha256::digest(&src)[..] {
        return Err("sha256: digest differs from software".into());
    }
    done.push("sha256".into());

    let key = data(32, 9);
    let nonce = data(12, 10);
    let aad = b"trustdev guest accel".to_vec();
    d.buf.write(AAD, &aad)?;
    let mut p = AesParams {
        key: [0; 32],
        nonce: [0; 12],
        aad_len: aad.len() as u32,
        aad_addr: IOVA + AAD as u64,
        rsvd: 0,
        tag: [0; 16],
    };
    p.key.copy_from_slice(&key);
    p.nonce.copy_from_slice(&nonce);
    d.buf.write(PARAMS, &p.encode())?;
    let mut enc = desc(opcode::AES_GCM_ENCRYPT, SRC, CT, size);
    enc.arg2 = IOVA + PARAMS as u64;
    let c = d.run(next(d), enc)?;
    expect("aes-gcm encrypt", &c, status::SUCCESS)?;
    let cipher = Aes256Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
    let mut want_ct = src.clone();
    let tag = cipher
        .encrypt_in_place_detached(nonce[..].into(), &aad, &mut want_ct)
        .map_err(|e| e.to_string())?;
    d.buf.read(CT, &mut out)?;
    let mut got_tag = [0u8; 16];
    d.buf.read(PARAMS + 0x40, &mut got_tag)?;
    if out != want_ct || got_tag[..] != tag[..] {
        return Err("aes-gcm encrypt: ciphertext or tag differs from RustCrypto".into());
    }
    done.push("aes-gcm-encrypt".into());

    let mut dec = desc(opcode::AES_GCM_DECRYPT, CT, PT, size);
    dec.arg2 = IOVA + PARAMS as u64;
    let c = d.run(next(d), dec)?;
    expect("aes-gcm decrypt", &c, status::SUCCESS)?;
    d.buf.read(PT, &mut out)?;
    if out != src {
        return Err("aes-gcm decrypt: plaintext differs".into());
    }
    d.buf.write(CT + 5, &[want_ct[5] ^ 1])?;
    d.buf.write(PT, &vec![0x77; size])?;
    let c = d.run(next(d), dec)?;
    expect(
        "aes-gcm decrypt of tampered ciphertext",
        &c,
        status::AUTH_FAIL,
    )?;
    d.buf.read(PT, &mut out)?;
    if out.iter().any(|&b| b != 0x77) {
        return Err("aes-gcm: unauthenticated plaintext was written".into());
    }
    done.push("aes-gcm-decrypt".into());

    // Error paths reach user space as records, not hangs.
    let c = d.run(next(d), desc(opcode::LAST + 1, SRC, DST, 16))?;
    expect("bad opcode", &c, status::BAD_OPCODE)?;
    let mut far = desc(opcode::MEMMOVE, SRC, DST, 4096);
    far.src = 0x7000_0000_0000;
    let c = d.run(next(d), far)?;
    expect("unmapped IOVA", &c, status::ADDRESS_FAULT)?;
    done.push("errors".into());
    Ok(done)
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<(), String> {
    let bdf = crate::sysfs::normalize_bdf(&a.bdf)
        .ok_or_else(|| format!("'{}' is not a PCI address", a.bdf))?;
    if a.size < 2 || a.size > MAX_SIZE {
        return Err(format!("--size must be 2..={MAX_SIZE}"));
    }
    let quiet = a.json;
    let say = |m: String| {
        if !quiet {
            println!("accel {bdf}: {m}");
        }
    };
    let r =
        (|| {
            let s = Session::open(&bdf, IDS, &say)?;
            let id = s.rd(global::ID)?;
            if id != regs::ID_VALUE {
                return Err(format!("ID register {id:#010x}"));
            }
            let queues = (s.rd(global::CAP)? & 0xff) as usize;
            let xlat = s.rd(global::XLAT)?;
            say(format!(
            "{queues} queues; PASID control {:#x}, ATS {} (STU {}), PRI {} as the kernel left them",
            xlat & 7,
            if xlat & 0x8000 != 0 { "enabled" } else { "disabled" },
            (xlat >> 8) & 0x1f,
            if xlat & (1 << 16) != 0 { "enabled" } else { "disabled" },
        ));
            let buf = DmaBuffer::new(&s.container, BUF_LEN, IOVA)?;
            let fds = if a.poll {
                Vec::new()
            } else {
                s.msix_eventfds(queues as u32)?
            };
            let mut d = Driver {
                s: &s,
                buf,
                queues: queues.max(1),
                tails: vec![0; queues.max(1)],
                timeout: a.timeout.max(Duration::from_millis(100)),
                interrupts: 0,
                vectors_seen: vec![false; queues.max(1)],
                fds,
            };
            d.setup_queues(a.poll)?;
            let ops = operations(&mut d, a.size);
            for q in 0..d.queues {
                let _ = s.wr(d.qreg(q, queue::CTRL), 0);
            }
            if !a.poll {
                let _ = s.disable_msix();
            }
            let ops = ops?;
            let vectors = d.vectors_seen.iter().filter(|&&v| v).count();
            Ok((ops, d.interrupts, vectors, d.queues, xlat))
        })();
    match (&r, a.json) {
        (Ok((ops, irqs, vectors, queues, xlat)), true) => println!(
            "{}",
            json!({"bdf": bdf, "ok": true, "operations": ops, "interrupts": irqs,
                   "vectors": vectors, "queues": queues, "polled": a.poll, "xlat": xlat})
        ),
        (Ok((ops, irqs, vectors, queues, _)), false) => println!(
            "accel {bdf}: {} operations verified ({}) over {queues} queues, {}",
            ops.len(),
            ops.join(", "),
            if a.poll {
                "completions polled".to_string()
            } else {
                format!("{irqs} MSI-X interrupts on {vectors} vectors")
            }
        ),
        (Err(e), true) => println!("{}", json!({"bdf": bdf, "ok": false, "error": e})),
        (Err(_), false) => {}
    }
    r.map(|_| ())
        .map_err(|e| format!("accel {bdf}: FAILED: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_reference() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c_sw(0, &[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c_sw(0, b"123456789"), 0xe306_9283);
        let (a, b) = b"123456789".split_at(4);
        assert_eq!(crc32c_sw(crc32c_sw(0, a), b), 0xe306_9283);
    }
}
