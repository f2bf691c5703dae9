//! Bulk operations a device engine performs on client memory through any
//! [`DmaSpace`]: copy (memmove semantics), fill, and streaming reads. They
//! work zero-copy between direct views where they can and through a
//! device-side staging buffer ([`Bounce`]) where they must (windows reached
//! by message, overlapping copies). A failure reports the fault, which
//! operand it hit, and how many bytes were completed before it.

use super::pasid::{DmaFault, DmaSpace, Piece};
use super::Access;

/// Largest piece copied under one view (bounds how long an invalidation or
/// unmap waits for a copy in progress).
const MAX_PIECE: usize = 2 << 20;
/// Attempts at a piece whose translation keeps disappearing.
const MAX_MISSES: u32 = 64;

/// A device-side staging buffer, reused across operations.
#[derive(Debug)]
pub struct Bounce {
    buf: Vec<u8>,
}

impl Bounce {
    /// A buffer of `size` bytes (at least 4 KiB).
    pub fn new(size: usize) -> Self {
        Bounce {
            buf: vec![0; size.max(4096)],
        }
    }

    /// Its size.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole buffer.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

/// Which operand of an operation faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The source (read).
    Source,
    /// The destination (written).
    Destination,
}

/// A failed bulk operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpFault {
    /// What went wrong.
    pub fault: DmaFault,
    /// Which operand.
    pub operand: Operand,
    /// Bytes completed before the fault.
    pub done: u64,
}

fn at(fault: DmaFault, operand: Operand, done: u64) -> OpFault {
    OpFault {
        fault,
        operand,
        done,
    }
}

/// Counts one more translation miss in a row; fails once they keep coming
/// (translations invalidated faster than they are used).
fn missed(misses: &mut u32, operand: Operand, done: u64) -> Result<(), OpFault> {
    *misses += 1;
    if *misses > MAX_MISSES {
        return Err(at(
            DmaFault::Transport("translations keep disappearing".into()),
            operand,
            done,
        ));
    }
    Ok(())
}

fn offset(base: u64, done: u64, operand: Operand) -> Result<u64, OpFault> {
    base.checked_add(done)
        .ok_or_else(|| at(DmaFault::OutOfBounds { addr: base }, operand, done))
}

/// Copies `len` bytes from `src`@`sa` to `dst`@`da`. When both are the same
/// address space and the ranges overlap, the result is memmove's (through
/// the staging buffer, in the safe direction); otherwise pieces are copied
/// directly between views of client memory.
pub fn copy(
    src: &DmaSpace<'_>,
    sa: u64,
    dst: &DmaSpace<'_>,
    da: u64,
    len: u64,
    bounce: &mut Bounce,
) -> Result<(), OpFault> {
    let overlap = src.same_as(dst) && sa < da.saturating_add(len) && da < sa.saturating_add(len);
    if overlap {
        return copy_staged(src, sa, dst, da, len, bounce, da > sa);
    }
    let mut done = 0u64;
    let mut misses = 0;
    while done < len {
        let s = offset(sa, done, Operand::Source)?;
        let d = offset(da, done, Operand::Destination)?;
        let rest = len - done;
        let max = usize::try_from(rest).unwrap_or(usize::MAX).min(MAX_PIECE);
        // Try the cached translations first; translate (prepare) only on a
        // miss, so a warm copy costs one lookup per piece and side.
        let r = src.with_piece(s, max, Access::Read, |sv| {
            dst.with_piece(d, sv.len(), Access::Write, |dv| {
                let n = dv.len();
                // A view is never longer than asked for, so `n <= sv.len()`.
                sv.sub(0, n).map(|part| part.copy_to_slice(&dv).map(|_| n))
            })
        });
        let step = match r.map_err(|f| at(f, Operand::Source, done))? {
            Piece::Done(inner) => match inner.map_err(|f| at(f, Operand::Destination, done))? {
                Piece::Done(Some(Ok(n))) => Some(n as u64),
                Piece::Done(Some(Err(e))) => {
                    return Err(at(
                        DmaFault::Transport(e.to_string()),
                        Operand::Destination,
                        done,
                    ))
                }
                Piece::Done(None) => {
                    return Err(at(
                        DmaFault::Transport("destination view longer than the source's".into()),
                        Operand::Destination,
                        done,
                    ))
                }
                Piece::NotResident => {
                    dst.prepare(d, rest, Access::Write)
                        .map_err(|f| at(f, Operand::Destination, done))?;
                    None
                }
                Piece::Indirect => Some(staged_chunk(src, s, dst, d, rest, bounce, done)?),
            },
            Piece::NotResident => {
                src.prepare(s, rest, Access::Read)
                    .map_err(|f| at(f, Operand::Source, done))?;
                None
            }
            Piece::Indirect => Some(staged_chunk(src, s, dst, d, rest, bounce, done)?),
        };
        match step {
            Some(n) => {
                done += n;
                misses = 0;
            }
            None => missed(&mut misses, Operand::Source, done)?,
        }
    }
    Ok(())
}

/// One chunk through the staging buffer; returns its length.
fn staged_chunk(
    src: &DmaSpace<'_>,
    s: u64,
    dst: &DmaSpace<'_>,
    d: u64,
    rest: u64,
    bounce: &mut Bounce,
    done: u64,
) -> Result<u64, OpFault> {
    let n = usize::try_from(rest)
        .unwrap_or(usize::MAX)
        .min(bounce.len());
    through(src, s, dst, d, &mut bounce.bytes_mut()[..n], done)?;
    Ok(n as u64)
}

/// Reads `b.len()` bytes at `src`@`s` into `b`, then writes them to
/// `dst`@`d`.
fn through(
    src: &DmaSpace<'_>,
    s: u64,
    dst: &DmaSpace<'_>,
    d: u64,
    b: &mut [u8],
    done: u64,
) -> Result<(), OpFault> {
    src.read(s, b).map_err(|f| at(f, Operand::Source, done))?;
    dst.write(d, b)
        .map_err(|f| at(f, Operand::Destination, done))
}

/// An overlapping copy: staged chunks walked so that no chunk reads bytes
/// an earlier chunk wrote (backwards when the destination is above).
fn copy_staged(
    src: &DmaSpace<'_>,
    sa: u64,
    dst: &DmaSpace<'_>,
    da: u64,
    len: u64,
    bounce: &mut Bounce,
    backwards: bool,
) -> Result<(), OpFault> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(bounce.len() as u64);
        let off = if backwards { len - done - n } else { done };
        let s = offset(sa, off, Operand::Source)?;
        let d = offset(da, off, Operand::Destination)?;
        through(src, s, dst, d, &mut bounce.bytes_mut()[..n as usize], done)?;
        done += n;
    }
    Ok(())
}

/// Fills `len` bytes at `dst`@`da` with `pattern` repeated (the first byte
/// at `da` is `pattern[0]`). `pattern` must not be empty.
pub fn fill(
    dst: &DmaSpace<'_>,
    da: u64,
    len: u64,
    pattern: &[u8],
    bounce: &mut Bounce,
) -> Result<(), OpFault> {
    let plen = pattern.len().max(1);
    // A block of whole patterns, so a piece starting at a pattern boundary
    // is filled with block copies.
    let block_len = (bounce.len() / plen).max(1) * plen;
    let mut block = vec![0u8; block_len];
    for (i, b) in block.iter_mut().enumerate() {
        *b = pattern.get(i % plen).copied().unwrap_or(0);
    }
    let mut done = 0u64;
    let mut misses = 0;
    while done < len {
        let d = offset(da, done, Operand::Destination)?;
        let rest = len - done;
        let phase = (done % plen as u64) as usize;
        let max = usize::try_from(rest).unwrap_or(usize::MAX).min(MAX_PIECE);
        let piece = dst
            .with_piece(d, max, Access::Write, |v| {
                let n = v.len();
                if phase == 0 {
                    v.fill(&block).map(|_| n)
                } else {
                    let mut rotated = block.clone();
                    rotated.rotate_left(phase);
                    v.fill(&rotated).map(|_| n)
                }
            })
            .map_err(|f| at(f, Operand::Destination, done))?;
        match piece {
            Piece::Done(r) => {
                let n = r.map_err(|e| {
                    at(
                        DmaFault::Transport(e.to_string()),
                        Operand::Destination,
                        done,
                    )
                })?;
                done += n as u64;
                misses = 0;
            }
            Piece::NotResident => {
                dst.prepare(d, rest, Access::Write)
                    .map_err(|f| at(f, Operand::Destination, done))?;
                missed(&mut misses, Operand::Destination, done)?;
            }
            Piece::Indirect => {
                let n = usize::try_from(rest)
                    .unwrap_or(usize::MAX)
                    .min(block_len - phase);
                let mut chunk = block[phase..].to_vec();
                chunk.truncate(n);
                dst.write(d, &chunk)
                    .map_err(|f| at(f, Operand::Destination, done))?;
                done += n as u64;
            }
        }
    }
    Ok(())
}

/// Reads `len` bytes at `src`@`sa` chunk by chunk through the staging
/// buffer, handing each chunk to `f` in order (hashes, CRCs, compares).
pub fn read_stream(
    src: &DmaSpace<'_>,
    sa: u64,
    len: u64,
    bounce: &mut Bounce,
    mut f: impl FnMut(&[u8]),
) -> Result<(), OpFault> {
    let mut done = 0u64;
    while done < len {
        let s = offset(sa, done, Operand::Source)?;
        let n = (len - done).min(bounce.len() as u64) as usize;
        let b = &mut bounce.bytes_mut()[..n];
        src.read(s, b).map_err(|e| at(e, Operand::Source, done))?;
        f(b);
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::tests::memfd;
    use crate::dma::GuestMemory;
    use crate::protocol::{DmaMapRequest, DmaProt};

    fn mem() -> GuestMemory {
        let m = GuestMemory::new(8);
        let rw = DmaProt {
            read: true,
            write: true,
        };
        // Two adjacent windows (pieces split at 0x10000) and a hole after.
        for (a, fd) in [
            (0u64, Some(memfd(0x10000))),
            (0x10000, Some(memfd(0x10000))),
        ] {
            m.map(
                &DmaMapRequest {
                    prot: rw,
                    offset: 0,
                    address: a,
                    size: 0x10000,
                },
                fd,
            )
            .unwrap();
        }
        m
    }

    #[test]
    fn copy_across_windows_and_overlapping() {
        let m = mem();
        let s = DmaSpace::Untranslated(&m);
        let data: Vec<u8> = (0..0x9000u32).map(|i| (i * 7 % 251) as u8).collect();
        s.write(0x8000, &data).unwrap();
        let mut b = Bounce::new(4096);
        copy(&s, 0x8000, &s, 0x18000, 0x7000, &mut b).unwrap();
        let mut out = vec![0u8; 0x7000];
        s.read(0x18000, &mut out).unwrap();
        assert_eq!(out, data[..0x7000]);
        // Overlap, destination above: memmove semantics.
        copy(&s, 0x8000, &s, 0x8100, 0x9000, &mut b).unwrap();
        let mut out = vec![0u8; 0x9000];
        s.read(0x8100, &mut out).unwrap();
        assert_eq!(out, data);
        // Destination below.
        s.write(0x8000, &data).unwrap();
        copy(&s, 0x8100, &s, 0x8000, 0x8f00, &mut b).unwrap();
        s.read(0x8000, &mut out[..0x8f00]).unwrap();
        assert_eq!(out[..0x8f00], data[0x100..]);
        // Into the hole: destination fault after the bytes that fit.
        let e = copy(&s, 0, &s, 0x1f000, 0x2000, &mut b).unwrap_err();
        assert_eq!(e.operand, Operand::Destination);
        assert_eq!(e.done, 0x1000);
        assert!(matches!(e.fault, DmaFault::OutOfBounds { addr: 0x20000 }));
    }

    #[test]
    fn fill_keeps_pattern_phase() {
        let m = mem();
        let s = DmaSpace::Untranslated(&m);
        let mut b = Bounce::new(4096);
        fill(&s, 0xfffd, 0x20, b"01234567", &mut b).unwrap();
        let mut out = [0u8; 0x20];
        s.read(0xfffd, &mut out).unwrap();
        assert_eq!(&out, b"01234567012345670123456701234567");
        let mut sum = 0u64;
        read_stream(&s, 0xfffd, 0x20, &mut b, |c| {
            sum += c.iter().map(|&x| u64::from(x)).sum::<u64>()
        })
        .unwrap();
        assert_eq!(sum, out.iter().map(|&x| u64::from(x)).sum::<u64>());
        let e = fill(&s, 0x1fff0, 0x20, b"x", &mut b).unwrap_err();
        assert_eq!(e.done, 0x10);
    }
}
