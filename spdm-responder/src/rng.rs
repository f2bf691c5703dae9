//! Randomness injected into the responder and requester.
//!
//! Production code uses [`OsEntropy`] (getrandom). Tests inject
//! [`DeterministicEntropy`] so nonces, ECDHE keys, session ids and secured-message
//! padding are reproducible and golden transcripts can pin exact bytes.

use sha2::Digest;

/// A source of random bytes.
pub trait EntropySource: Send {
    fn fill(&mut self, dest: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl EntropySource for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        use rand_core::RngCore;
        rand_core::OsRng.fill_bytes(dest);
    }
}

/// A reproducible stream: SHA-256(seed || counter) blocks. For tests only.
#[derive(Debug, Clone)]
pub struct DeterministicEntropy {
    seed: [u8; 32],
    counter: u64,
    buf: Vec<u8>,
}

impl DeterministicEntropy {
    pub fn new(seed: &[u8]) -> Self {
        let mut s = [0u8; 32];
        s.copy_from_slice(&sha2::Sha256::digest(seed));
        Self {
            seed: s,
            counter: 0,
            buf: Vec::new(),
        }
    }
}

impl EntropySource for DeterministicEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest.iter_mut() {
            if self.buf.is_empty() {
                let mut h = sha2::Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.counter += 1;
                self.buf = h.finalize().to_vec();
                self.buf.reverse();
            }
            *b = self.buf.pop().unwrap_or(0);
        }
    }
}

/// Adapter so RustCrypto APIs that want `RngCore + CryptoRng` can use an entropy source.
pub struct RngAdapter<'a>(pub &'a mut dyn EntropySource);

impl rand_core::RngCore for RngAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for RngAdapter<'_> {}
