//! Cryptographic primitives used by SPDM, built on RustCrypto.
//!
//! Everything here works on the algorithms a connection negotiated: the hash
//! (SHA-256/384), the signature (ECDSA P-256/P-384, raw `r || s` as SPDM
//! carries it), the DHE group (secp256r1/secp384r1, exchange data `X || Y`) and
//! the AEAD (AES-256-GCM, ChaCha20-Poly1305).

use hmac::Mac;
use sha2::Digest;
use zeroize::{Zeroize, Zeroizing};

use crate::error::CryptoError;
use crate::rng::EntropySource;

/// SPDM BaseHashAlgo bits.
pub const HASH_SHA256: u32 = 0x1;
pub const HASH_SHA384: u32 = 0x2;
/// SPDM BaseAsymAlgo bits.
pub const ASYM_ECDSA_P256: u32 = 0x10;
pub const ASYM_ECDSA_P384: u32 = 0x80;
/// SPDM MeasurementHashAlgo bits.
pub const MEAS_HASH_RAW: u32 = 0x1;
pub const MEAS_HASH_SHA256: u32 = 0x2;
pub const MEAS_HASH_SHA384: u32 = 0x4;
/// DHE named groups.
pub const DHE_SECP256R1: u16 = 0x8;
pub const DHE_SECP384R1: u16 = 0x10;
/// AEAD cipher suites.
pub const AEAD_AES_256_GCM: u16 = 0x2;
pub const AEAD_CHACHA20_POLY1305: u16 = 0x4;
/// Key schedule.
pub const KEY_SCHEDULE_SPDM: u16 = 0x1;

/// A negotiated hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgo {
    Sha256,
    Sha384,
}

impl HashAlgo {
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            HASH_SHA256 => Some(Self::Sha256),
            HASH_SHA384 => Some(Self::Sha384),
            _ => None,
        }
    }
    pub fn bits(self) -> u32 {
        match self {
            Self::Sha256 => HASH_SHA256,
            Self::Sha384 => HASH_SHA384,
        }
    }
    pub fn meas_bits(self) -> u32 {
        match self {
            Self::Sha256 => MEAS_HASH_SHA256,
            Self::Sha384 => MEAS_HASH_SHA384,
        }
    }
    pub fn from_meas_bits(bits: u32) -> Option<Self> {
        match bits {
            MEAS_HASH_SHA256 => Some(Self::Sha256),
            MEAS_HASH_SHA384 => Some(Self::Sha384),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
        }
    }
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
        }
    }
    pub fn hash_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                let mut h = sha2::Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            Self::Sha384 => {
                let mut h = sha2::Sha384::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
        }
    }
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Self::Sha384 => {
                let mut m = <hmac::Hmac<sha2::Sha384> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }
    /// Constant-time HMAC check.
    pub fn hmac_verify(self, key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        match self {
            Self::Sha256 => {
                let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts any key length");
                m.update(data);
                m.verify_slice(tag).is_ok()
            }
            Self::Sha384 => {
                let mut m = <hmac::Hmac<sha2::Sha384> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts any key length");
                m.update(data);
                m.verify_slice(tag).is_ok()
            }
        }
    }
    /// HKDF-Extract(salt, ikm) = HMAC(salt, ikm).
    pub fn hkdf_extract(self, salt: &[u8], ikm: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.hmac(salt, ikm))
    }
    /// HKDF-Expand(prk, info, len).
    pub fn hkdf_expand(
        self,
        prk: &[u8],
        info: &[u8],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut out = Zeroizing::new(vec![0u8; len]);
        match self {
            Self::Sha256 => hkdf::Hkdf::<sha2::Sha256>::from_prk(prk)
                .map_err(|_| CryptoError::Kdf)?
                .expand(info, &mut out)
                .map_err(|_| CryptoError::Kdf)?,
            Self::Sha384 => hkdf::Hkdf::<sha2::Sha384>::from_prk(prk)
                .map_err(|_| CryptoError::Kdf)?
                .expand(info, &mut out)
                .map_err(|_| CryptoError::Kdf)?,
        }
        Ok(out)
    }
}

/// A negotiated signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsymAlgo {
    EcdsaP256,
    EcdsaP384,
}

impl AsymAlgo {
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            ASYM_ECDSA_P256 => Some(Self::EcdsaP256),
            ASYM_ECDSA_P384 => Some(Self::EcdsaP384),
            _ => None,
        }
    }
    pub fn bits(self) -> u32 {
        match self {
            Self::EcdsaP256 => ASYM_ECDSA_P256,
            Self::EcdsaP384 => ASYM_ECDSA_P384,
        }
    }
    /// Size of a raw `r || s` signature.
    pub fn sig_size(self) -> usize {
        match self {
            Self::EcdsaP256 => 64,
            Self::EcdsaP384 => 96,
        }
    }
}

/// A private signing key (ECDSA, RFC 6979 deterministic nonces). Zeroized on drop
/// by the underlying RustCrypto types; never printed.
#[derive(Clone)]
pub enum SigningKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, <redacted>)", self.algo())
    }
}

impl SigningKey {
    pub fn algo(&self) -> AsymAlgo {
        match self {
            Self::P256(_) => AsymAlgo::EcdsaP256,
            Self::P384(_) => AsymAlgo::EcdsaP384,
        }
    }
    /// Generate a key from the entropy source.
    pub fn generate(algo: AsymAlgo, rng: &mut dyn EntropySource) -> Self {
        loop {
            match algo {
                AsymAlgo::EcdsaP256 => {
                    let mut b = Zeroizing::new([0u8; 32]);
                    rng.fill(&mut b[..]);
                    if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&b[..]) {
                        return Self::P256(k);
                    }
                }
                AsymAlgo::EcdsaP384 => {
                    let mut b = Zeroizing::new([0u8; 48]);
                    rng.fill(&mut b[..]);
                    if let Ok(k) = p384::ecdsa::SigningKey::from_slice(&b[..]) {
                        return Self::P384(k);
                    }
                }
            }
        }
    }
    /// Parse a PKCS#8 (or SEC1) private key in DER.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        use p256::pkcs8::DecodePrivateKey;
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(Self::P384(k));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_der(der) {
            return Ok(Self::P256(k.into()));
        }
        if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
            return Ok(Self::P384(k.into()));
        }
        Err(CryptoError::BadKey)
    }
    /// Parse a PEM private key (PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY").
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let (_label, der) =
            der::pem::decode_vec(pem.trim().as_bytes()).map_err(|_| CryptoError::BadKey)?;
        let der = Zeroizing::new(der);
        Self::from_der(&der)
    }
    /// PKCS#8 DER encoding (secret).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use p256::pkcs8::EncodePrivateKey;
        let doc = match self {
            Self::P256(k) => k.to_pkcs8_der(),
            Self::P384(k) => k.to_pkcs8_der(),
        }
        .map_err(|_| CryptoError::BadKey)?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }
    /// PKCS#8 PEM encoding (secret).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let s = match self {
            Self::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
        }
        .map_err(|_| CryptoError::BadKey)?;
        Ok(Zeroizing::new(s.to_string()))
    }
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            Self::P256(k) => VerifyingKey::P256(*k.verifying_key()),
            Self::P384(k) => VerifyingKey::P384(*k.verifying_key()),
        }
    }
    /// Sign a digest; returns raw `r || s`.
    pub fn sign_prehash(&self, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        use ecdsa::signature::hazmat::PrehashSigner;
        match self {
            Self::P256(k) => {
                let s: p256::ecdsa::Signature =
                    k.sign_prehash(digest).map_err(|_| CryptoError::Sign)?;
                Ok(s.to_bytes().to_vec())
            }
            Self::P384(k) => {
                let s: p384::ecdsa::Signature =
                    k.sign_prehash(digest).map_err(|_| CryptoError::Sign)?;
                Ok(s.to_bytes().to_vec())
            }
        }
    }
}

/// A public verification key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyingKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl VerifyingKey {
    pub fn algo(&self) -> AsymAlgo {
        match self {
            Self::P256(_) => AsymAlgo::EcdsaP256,
            Self::P384(_) => AsymAlgo::EcdsaP384,
        }
    }
    /// Parse a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        use p256::pkcs8::DecodePublicKey;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(Self::P384(k));
        }
        Err(CryptoError::BadKey)
    }
    pub fn to_spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        use p256::pkcs8::EncodePublicKey;
        let d = match self {
            Self::P256(k) => k.to_public_key_der(),
            Self::P384(k) => k.to_public_key_der(),
        }
        .map_err(|_| CryptoError::BadKey)?;
        Ok(d.as_bytes().to_vec())
    }
    /// Verify a raw `r || s` signature over a digest.
    pub fn verify_prehash(&self, digest: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        use ecdsa::signature::hazmat::PrehashVerifier;
        match self {
            Self::P256(k) => {
                let s = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| CryptoError::BadSignature)?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| CryptoError::BadSignature)
            }
            Self::P384(k) => {
                let s = p384::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| CryptoError::BadSignature)?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| CryptoError::BadSignature)
            }
        }
    }
    /// Verify a DER-encoded ECDSA signature (X.509) over a digest.
    pub fn verify_prehash_der(&self, digest: &[u8], sig_der: &[u8]) -> Result<(), CryptoError> {
        use ecdsa::signature::hazmat::PrehashVerifier;
        match self {
            Self::P256(k) => {
                let s = p256::ecdsa::DerSignature::try_from(sig_der)
                    .map_err(|_| CryptoError::BadSignature)?;
                let s: p256::ecdsa::Signature =
                    s.try_into().map_err(|_| CryptoError::BadSignature)?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| CryptoError::BadSignature)
            }
            Self::P384(k) => {
                let s = p384::ecdsa::DerSignature::try_from(sig_der)
                    .map_err(|_| CryptoError::BadSignature)?;
                let s: p384::ecdsa::Signature =
                    s.try_into().map_err(|_| CryptoError::BadSignature)?;
                k.verify_prehash(digest, &s)
                    .map_err(|_| CryptoError::BadSignature)
            }
        }
    }
}

/// A negotiated DHE group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DheGroup {
    Secp256r1,
    Secp384r1,
}

impl DheGroup {
    pub fn from_bits(bits: u16) -> Option<Self> {
        match bits {
            DHE_SECP256R1 => Some(Self::Secp256r1),
            DHE_SECP384R1 => Some(Self::Secp384r1),
            _ => None,
        }
    }
    pub fn bits(self) -> u16 {
        match self {
            Self::Secp256r1 => DHE_SECP256R1,
            Self::Secp384r1 => DHE_SECP384R1,
        }
    }
    /// Exchange data size: `X || Y`.
    pub fn exchange_size(self) -> usize {
        match self {
            Self::Secp256r1 => 64,
            Self::Secp384r1 => 96,
        }
    }
}

/// Which implementation makes ephemeral ECDHE keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EcdhBackend {
    /// RustCrypto: keys from the injected entropy source (reproducible
    /// transcripts with a deterministic one), zeroized on drop.
    #[default]
    RustCrypto,
    /// ring: about 1.5x faster for P-384 and 5x for P-256 (see
    /// examples/spdm_bench.rs), keys from ring's own OS randomness, and NOT
    /// zeroized by ring when dropped.
    Ring,
}

/// An ephemeral ECDHE private key (the RustCrypto ones zeroized on drop).
pub enum DheSecret {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    /// A ring key and its public key `X || Y`.
    Ring(ring::agreement::EphemeralPrivateKey, Vec<u8>),
}

impl DheSecret {
    /// A key from `backend` (`rng` is used by RustCrypto only).
    pub fn generate_with(
        group: DheGroup,
        backend: EcdhBackend,
        rng: &mut dyn EntropySource,
    ) -> Result<Self, CryptoError> {
        if backend == EcdhBackend::RustCrypto {
            return Ok(Self::generate(group, rng));
        }
        let alg = match group {
            DheGroup::Secp256r1 => &ring::agreement::ECDH_P256,
            DheGroup::Secp384r1 => &ring::agreement::ECDH_P384,
        };
        let k =
            ring::agreement::EphemeralPrivateKey::generate(alg, &ring::rand::SystemRandom::new())
                .map_err(|_| CryptoError::BadKey)?;
        let public = k.compute_public_key().map_err(|_| CryptoError::BadKey)?;
        let xy = public
            .as_ref()
            .get(1..)
            .ok_or(CryptoError::BadKey)?
            .to_vec();
        Ok(Self::Ring(k, xy))
    }

    /// A RustCrypto key from the entropy source.
    pub fn generate(group: DheGroup, rng: &mut dyn EntropySource) -> Self {
        loop {
            match group {
                DheGroup::Secp256r1 => {
                    let mut b = Zeroizing::new([0u8; 32]);
                    rng.fill(&mut b[..]);
                    if let Ok(k) = p256::SecretKey::from_slice(&b[..]) {
                        return Self::P256(k);
                    }
                }
                DheGroup::Secp384r1 => {
                    let mut b = Zeroizing::new([0u8; 48]);
                    rng.fill(&mut b[..]);
                    if let Ok(k) = p384::SecretKey::from_slice(&b[..]) {
                        return Self::P384(k);
                    }
                }
            }
        }
    }
    /// `X || Y` of the public key.
    pub fn public_exchange(&self) -> Vec<u8> {
        use elliptic_curve::sec1::ToEncodedPoint;
        let p = match self {
            Self::P256(k) => k.public_key().to_encoded_point(false).as_bytes().to_vec(),
            Self::P384(k) => k.public_key().to_encoded_point(false).as_bytes().to_vec(),
            Self::Ring(_, xy) => return xy.clone(),
        };
        p[1..].to_vec()
    }
    /// The shared secret (X coordinate) with the peer's `X || Y`; the key is
    /// used once.
    pub fn agree(self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut sec1 = Vec::with_capacity(peer.len() + 1);
        sec1.push(0x04);
        sec1.extend_from_slice(peer);
        match self {
            Self::Ring(k, xy) => {
                if peer.len() != xy.len() {
                    return Err(CryptoError::BadPublicKey);
                }
                let alg = k.algorithm();
                ring::agreement::agree_ephemeral(
                    k,
                    &ring::agreement::UnparsedPublicKey::new(alg, &sec1),
                    |s| Zeroizing::new(s.to_vec()),
                )
                .map_err(|_| CryptoError::BadPublicKey)
            }
            Self::P256(k) => {
                if peer.len() != 64 {
                    return Err(CryptoError::BadPublicKey);
                }
                let pk = p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| CryptoError::BadPublicKey)?;
                let s = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), pk.as_affine());
                Ok(Zeroizing::new(s.raw_secret_bytes().to_vec()))
            }
            Self::P384(k) => {
                if peer.len() != 96 {
                    return Err(CryptoError::BadPublicKey);
                }
                let pk = p384::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| CryptoError::BadPublicKey)?;
                let s = p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), pk.as_affine());
                Ok(Zeroizing::new(s.raw_secret_bytes().to_vec()))
            }
        }
    }
}

/// A negotiated AEAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadAlgo {
    Aes256Gcm,
    ChaCha20Poly1305,
}

pub const AEAD_KEY_SIZE: usize = 32;
pub const AEAD_IV_SIZE: usize = 12;
pub const AEAD_TAG_SIZE: usize = 16;

impl AeadAlgo {
    pub fn from_bits(bits: u16) -> Option<Self> {
        match bits {
            AEAD_AES_256_GCM => Some(Self::Aes256Gcm),
            AEAD_CHACHA20_POLY1305 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
    pub fn bits(self) -> u16 {
        match self {
            Self::Aes256Gcm => AEAD_AES_256_GCM,
            Self::ChaCha20Poly1305 => AEAD_CHACHA20_POLY1305,
        }
    }
    /// Encrypt `buf` in place; returns the 16-byte tag.
    pub fn seal(
        self,
        key: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; 16], CryptoError> {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let tag = match self {
            Self::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::Aead)?
                .encrypt_in_place_detached(iv.into(), aad, buf)
                .map_err(|_| CryptoError::Aead)?,
            Self::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .map_err(|_| CryptoError::Aead)?
                .encrypt_in_place_detached(iv.into(), aad, buf)
                .map_err(|_| CryptoError::Aead)?,
        };
        let mut t = [0u8; 16];
        t.copy_from_slice(&tag);
        Ok(t)
    }
    /// Decrypt `buf` in place, checking the tag.
    pub fn open(
        self,
        key: &[u8],
        iv: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        if tag.len() != AEAD_TAG_SIZE {
            return Err(CryptoError::Aead);
        }
        let r = match self {
            Self::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(key)
                .map_err(|_| CryptoError::Aead)?
                .decrypt_in_place_detached(iv.into(), aad, buf, tag.into()),
            Self::ChaCha20Poly1305 => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                .map_err(|_| CryptoError::Aead)?
                .decrypt_in_place_detached(iv.into(), aad, buf, tag.into()),
        };
        if r.is_err() {
            buf.zeroize();
            return Err(CryptoError::Aead);
        }
        Ok(())
    }
}

/// The SPDM 1.2+ signing prefix: 4 × "dmtf-spdm-v1.X.*" then the context
/// string right-aligned in 36 zero-padded bytes (DSP0274 §"Signature generation").
pub fn signing_prefix(version: u8, context: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(100);
    for _ in 0..4 {
        v.extend_from_slice(format!("dmtf-spdm-v{}.{}.*", version >> 4, version & 0xF).as_bytes());
    }
    let pad = 36usize.saturating_sub(context.len());
    v.extend(std::iter::repeat(0u8).take(pad));
    v.extend_from_slice(context.as_bytes());
    v
}

/// The digest that ECDSA signs for a transcript: for 1.0/1.1 `Hash(transcript)`,
/// for 1.2+ `Hash(prefix || Hash(transcript))`.
pub fn signature_digest(hash: HashAlgo, version: u8, context: &str, transcript: &[u8]) -> Vec<u8> {
    let th = hash.hash(transcript);
    if version >= 0x12 {
        let prefix = signing_prefix(version, context);
        hash.hash_parts(&[&prefix, &th])
    } else {
        th
    }
}

pub const CTX_CHALLENGE_AUTH: &str = "responder-challenge_auth signing";
pub const CTX_MEASUREMENTS: &str = "responder-measurements signing";
pub const CTX_KEY_EXCHANGE_RSP: &str = "responder-key_exchange_rsp signing";
pub const CTX_FINISH: &str = "requester-finish signing";
