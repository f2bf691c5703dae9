//! Randomness and byte-level mutation: the input generator of every target.
//!
//! No coverage feedback (the stable toolchain has no sanitizer-coverage
//! flags): inputs are valid seeds that each target builds from the real
//! encoders, mutated by a stack of classic havoc operations (bit flips,
//! interesting integers at random offsets, block insert/delete/duplicate,
//! splices with other seeds), plus a small share of purely random bytes.
//! Structure-aware targets mutate fields before serialising and call
//! [`mutate`] on top.

/// A small, fast, seedable PRNG (SplitMix64): reproducible runs from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// One element of `items` (non-empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Appends `n` random bytes to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        out.extend((0..n).map(|_| self.byte()));
    }

    /// An "interesting" 64-bit value: boundaries, powers of two, small
    /// numbers, or random bits.
    pub fn interesting(&mut self) -> u64 {
        const VALUES: [u64; 20] = [
            0,
            1,
            2,
            3,
            4,
            7,
            8,
            16,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xfff,
            0x1000,
            0x7fff,
            0xffff,
            0x7fff_ffff,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            u64::MAX,
        ];
        match self.below(4) {
            0 => 1u64 << self.below(64),
            1 => self.next_u64(),
            2 => (1u64 << self.below(64)).wrapping_sub(1 + self.below(2) as u64),
            _ => *self.pick(&VALUES),
        }
    }
}

fn put(data: &mut [u8], at: usize, bytes: &[u8]) {
    let n = bytes.len().min(data.len() - at);
    data[at..at + n].copy_from_slice(&bytes[..n]);
}

/// Applies one havoc operation to `data` (kept at most `max_len` bytes).
fn havoc_once(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], max_len: usize) {
    if data.is_empty() {
        let n = 1 + rng.below(16);
        rng.fill(data, n);
        return;
    }
    let at = rng.below(data.len());
    match rng.below(14) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.byte(),
        2 => data[at] = rng.interesting() as u8,
        3 => {
            let v = rng.interesting() as u16;
            let b = if rng.one_in(2) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            put(data, at, &b);
        }
        4 => put(data, at, &(rng.interesting() as u32).to_le_bytes()),
        5 => put(data, at, &rng.interesting().to_le_bytes()),
        6 => {
            // Small arithmetic on a little-endian u32 (lengths, counts).
            let mut b = [0u8; 4];
            let n = 4.min(data.len() - at);
            b[..n].copy_from_slice(&data[at..at + n]);
            let d = 1 + rng.below(16) as u32;
            let v = u32::from_le_bytes(b);
            let v = if rng.one_in(2) {
                v.wrapping_add(d)
            } else {
                v.wrapping_sub(d)
            };
            put(data, at, &v.to_le_bytes());
        }
        7 => {
            let n = 1 + rng.below((data.len() - at).min(64));
            data.drain(at..at + n);
        }
        8 => {
            let n = 1 + rng.below(32);
            let mut b = Vec::with_capacity(n);
            if rng.one_in(2) {
                rng.fill(&mut b, n);
            } else {
                let fill = [0u8, 0xff, rng.byte()];
                b.resize(n, *rng.pick(&fill));
            }
            data.splice(at..at, b);
        }
        9 => {
            // Duplicate a block (repeated structures, e.g. descriptors).
            let n = 1 + rng.below((data.len() - at).min(64));
            let block = data[at..at + n].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, block);
        }
        10 => data.truncate(at.max(1)),
        11 | 12 if !others.is_empty() => {
            let o = rng.pick(others);
            if o.is_empty() {
                return;
            }
            let from = rng.below(o.len());
            let n = 1 + rng.below((o.len() - from).min(256));
            if rng.one_in(2) {
                put(data, at, &o[from..from + n]);
            } else {
                data.splice(at..at, o[from..from + n].iter().copied());
            }
        }
        _ => {
            let n = 1 + rng.below(64);
            rng.fill(data, n);
        }
    }
    data.truncate(max_len);
}

/// Mutates `data` with a stack of 1-16 havoc operations; `others` are
/// inputs to splice from.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], max_len: usize) {
    let ops = 1 << rng.below(5);
    for _ in 0..ops {
        havoc_once(rng, data, others, max_len);
    }
}

/// The default generator: a mutated seed, or (1 in 32) random bytes.
pub fn mutated_seed(rng: &mut Rng, seeds: &[Vec<u8>], max_len: usize, out: &mut Vec<u8>) {
    out.clear();
    if seeds.is_empty() || rng.one_in(32) {
        let n = rng.below(max_len.min(512) + 1);
        rng.fill(out, n);
        return;
    }
    out.extend_from_slice(rng.pick(seeds).as_slice());
    out.truncate(max_len);
    // 1 in 16 inputs is a valid seed as is: the oracles must hold for it too.
    if !rng.one_in(16) {
        mutate(rng, out, seeds, max_len);
    }
}

/// Reads fields of a generated input in order; a short input reads zeros
/// (so every byte string is a valid input for the target's interpreter).
#[derive(Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// The next little-endian u16 (zero-extended past the end).
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.bytes(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.bytes(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.bytes(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }

    /// A length-prefixed (u16) chunk.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }
}

/// Appends a u16-length-prefixed chunk (the framing [`Cursor::chunk`] reads).
pub fn push_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    let n = chunk.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&chunk[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_spread() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[a.below(10)] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
    }

    #[test]
    fn mutation_respects_the_length_cap() {
        let mut rng = Rng::new(1);
        let seeds = vec![vec![1u8; 100], vec![2u8; 300]];
        let mut out = Vec::new();
        let mut changed = 0;
        for _ in 0..10_000 {
            mutated_seed(&mut rng, &seeds, 128, &mut out);
            assert!(out.len() <= 128);
            if out != seeds[0] && out != seeds[1][..out.len().min(300)] {
                changed += 1;
            }
        }
        assert!(changed > 8_000, "only {changed} inputs changed");
    }

    #[test]
    fn cursor_reads_zeros_past_the_end() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16(), 0x0201);
        assert_eq!(c.u32(), 3);
        assert!(c.is_empty());
        assert_eq!(c.chunk(), &[] as &[u8]);
    }
}
