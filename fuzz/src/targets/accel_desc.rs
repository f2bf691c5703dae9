//! `accel-desc`: the accelerator's descriptor executor on adversarial
//! descriptors over adversarial client memory.
//!
//! Input: a 64-byte descriptor as a guest writes it into a ring, then an
//! image of client memory at [`WIN`] (up to [`WIN_IMAGE`] bytes; the rest of
//! the mapped window is zero, everything outside it unmapped) holding the
//! buffers, AES-GCM parameter blocks and AAD the descriptor points at. The
//! executor runs it untranslated, or with `PASID` set against a device whose
//! PASID capability was never enabled (the guest-side state of a stock
//! guest). Seeds are one well-formed descriptor per operation.
//!
//! Oracles: the completion status is one the device documents, never
//! PENDING; `bytes_completed` never exceeds the length; a successful
//! memmove leaves the source bytes at the destination; a successful fill
//! writes the pattern; nothing a memmove or fill did not address changes
//! in the window (a walk past its bounds faults after writing the part
//! inside, never elsewhere);
//! a decrypt that fails authentication writes nothing.

use crate::engine::Target;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use trustdev_devices::accel::desc::{
    flags, opcode, status, AesParams, Descriptor, AES_PARAMS_SIZE, DESC_SIZE,
};
use trustdev_devices::accel::exec::{execute, Limits, Scratch};
use trustdev_devices::nvme::host::HostMemory;
use vfio_user_server::dma::{GuestMemory, PasidMemory};
use vfio_user_server::protocol::DmaMapRequest;

/// Guest address of the mapped window.
pub const WIN: u64 = 0x4000_0000;
/// Bytes of the window an input can fill.
pub const WIN_IMAGE: usize = 64 << 10;
/// Size of the mapped window (transfers may run past the image).
const WIN_MAP: usize = 256 << 10;

/// The `accel-desc` target.
pub struct AccelDesc {
    seeds: Vec<Vec<u8>>,
    win: HostMemory,
    pasid: PasidMemory,
    scratch: Scratch,
    limits: Limits,
    before: Vec<u8>,
    after: Vec<u8>,
    /// Completions by status, for the run summary.
    by_status: std::collections::BTreeMap<u8, u64>,
}

fn desc(op: u8, src: u64, dst: u64, len: u32) -> Descriptor {
    Descriptor {
        opcode: op,
        flags: flags::COMPLETION,
        rsvd0: 0,
        pasid: 0,
        src,
        dst,
        len,
        arg: 0,
        arg2: 0,
        completion: WIN + 0xff00,
        tag: 0x7a6,
        rsvd1: 0,
    }
}

fn input(d: &Descriptor, image: &[u8]) -> Vec<u8> {
    let mut v = d.encode().to_vec();
    v.extend_from_slice(image);
    v
}

impl AccelDesc {
    /// The target, its mapped window and its seeds.
    pub fn new() -> Result<Self, String> {
        let win = HostMemory::new(WIN, WIN_MAP).map_err(|e| format!("window: {e}"))?;
        let mem = Arc::new(GuestMemory::new(4));
        let fd: OwnedFd = win
            .fd()
            .try_clone_to_owned()
            .map_err(|e| format!("dup: {e}"))?;
        mem.map(&DmaMapRequest::read_write(WIN, WIN_MAP as u64), Some(fd))
            .map_err(|e| format!("DMA map: {e}"))?;
        let pasid = PasidMemory::new(mem, 4);
        let limits = Limits::default();
        let (a, b, p, aad) = (WIN, WIN + 0x8000, WIN + 0x4000, WIN + 0x4100);
        let mut image = vec![0u8; 0x9000];
        for (i, x) in image.iter_mut().enumerate().take(0x2000) {
            *x = (i * 7 + 3) as u8;
        }
        let params = AesParams {
            key: [0x42; 32],
            nonce: [7; 12],
            aad_len: 20,
            aad_addr: aad,
            rsvd: 0,
            tag: [0; 16],
        };
        image[0x4000..0x4000 + AES_PARAMS_SIZE].copy_from_slice(&params.encode());
        let mut fill = desc(opcode::FILL, 0, b, 4096);
        fill.arg2 = 0x0123_4567_89ab_cdef;
        let mut crc = desc(opcode::CRC32C, a, 0, 4096);
        crc.arg = 0xffff_ffff;
        let mut enc = desc(opcode::AES_GCM_ENCRYPT, a, b, 1024);
        enc.arg2 = p;
        let mut dec = desc(opcode::AES_GCM_DECRYPT, a, b, 1024);
        dec.arg2 = p;
        let mut pasid_move = desc(opcode::MEMMOVE, a, b, 64);
        pasid_move.flags |= flags::PASID;
        pasid_move.pasid = 1;
        let seeds = [
            desc(opcode::NOP, 0, 0, 0),
            desc(opcode::MEMMOVE, a, b, 4096),
            desc(opcode::MEMMOVE, a, a + 100, 4096),
            fill,
            desc(opcode::COMPARE, a, a, 4096),
            crc,
            enc,
            dec,
            desc(opcode::SHA256, a, b, 8192),
            pasid_move,
        ]
        .iter()
        .map(|d| input(d, &image))
        .collect();
        Ok(AccelDesc {
            seeds,
            win,
            pasid,
            scratch: Scratch::new(&limits),
            limits,
            before: vec![0; WIN_MAP],
            after: vec![0; WIN_MAP],
            by_status: Default::default(),
        })
    }

    /// Completions by status so far.
    pub fn statuses(&self) -> &std::collections::BTreeMap<u8, u64> {
        &self.by_status
    }
}

/// Whether `[addr, addr+len)` lies in the window; its offset there.
fn in_window(addr: u64, len: u64) -> Option<usize> {
    let off = addr.checked_sub(WIN)?;
    (off.checked_add(len)? <= WIN_MAP as u64).then_some(off as usize)
}

impl Target for AccelDesc {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut raw = [0u8; DESC_SIZE];
        let n = input.len().min(DESC_SIZE);
        raw[..n].copy_from_slice(&input[..n]);
        let d = Descriptor::decode(&raw);
        let image = &input[n..input.len().min(n + WIN_IMAGE)];
        // A fresh window: the image, zeroes after it.
        self.before.fill(0);
        self.before[..image.len()].copy_from_slice(image);
        self.win.write(WIN, &self.before);

        let never = || false;
        let completion_space = self.pasid.space(None);
        let out = execute(
            &d,
            &self.pasid,
            &completion_space,
            &self.limits,
            &mut self.scratch,
            &never,
        );
        let c = out.completion;
        *self.by_status.entry(c.status).or_default() += 1;
        if c.status == status::PENDING || status::name(c.status) == "unknown status" {
            return Err(format!("undocumented status {:#x} for {d:?}", c.status));
        }
        if c.tag != d.tag {
            return Err(format!("tag {:#x} not echoed ({:#x})", c.tag, d.tag));
        }
        if c.bytes_completed > d.len && !matches!(d.opcode, opcode::NOP) {
            return Err(format!(
                "{} bytes completed of {} ({d:?})",
                c.bytes_completed, d.len
            ));
        }
        self.win.read(WIN, &mut self.after);
        let len = u64::from(d.len);
        match d.opcode {
            opcode::MEMMOVE | opcode::FILL => {
                let dst = in_window(d.dst, len);
                if c.status == status::SUCCESS {
                    let Some(o) = dst else {
                        return Err(format!("success outside the window: {d:?}"));
                    };
                    let got = &self.after[o..o + d.len as usize];
                    let ok = if d.opcode == opcode::MEMMOVE {
                        let s = in_window(d.src, len).ok_or("memmove from outside")?;
                        got == &self.before[s..s + d.len as usize]
                    } else {
                        let pat = d.arg2.to_le_bytes();
                        got.iter().enumerate().all(|(i, b)| *b == pat[i % 8])
                    };
                    if !ok {
                        return Err(format!("wrong result at the destination: {d:?}"));
                    }
                }
                // Nothing outside the destination changed (a transfer that
                // runs off the window faults there, after writing the part
                // inside it, as `bytes_completed` says).
                let win_end = WIN + WIN_MAP as u64;
                let lo = d.dst.clamp(WIN, win_end);
                let hi = d.dst.saturating_add(len).clamp(WIN, win_end);
                let (lo, hi) = ((lo - WIN) as usize, (hi - WIN) as usize);
                if self.before[..lo] != self.after[..lo] || self.before[hi..] != self.after[hi..] {
                    return Err(format!("a write outside the destination: {d:?}"));
                }
            }
            opcode::AES_GCM_DECRYPT
                if c.status == status::AUTH_FAIL && self.before != self.after =>
            {
                return Err(format!("a failed decrypt wrote memory: {d:?}"));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_succeed_where_they_should() {
        let mut t = AccelDesc::new().unwrap();
        let seeds = t.seeds().to_vec();
        for s in &seeds {
            t.run(s).unwrap();
        }
        // NOP, two memmoves, fill, compare, CRC, encrypt, SHA succeed; the
        // decrypt of unencrypted data fails authentication; PASID without
        // an enabled capability is refused.
        let st = t.statuses();
        assert_eq!(st.get(&status::SUCCESS), Some(&8), "{st:?}");
        assert_eq!(st.get(&status::AUTH_FAIL), Some(&1), "{st:?}");
        assert_eq!(st.values().sum::<u64>(), 10, "{st:?}");
    }
}
