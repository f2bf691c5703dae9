//! AES-256-GCM with IDE's 96-bit MAC, on ring.
//!
//! IDE carries the first 96 bits of the GCM tag. ring seals with the full
//! 128-bit tag and its open() only accepts a full tag (it compares inside
//! and never returns the tag it computed), so the receiver cannot hand it
//! the MAC it got. It recomputes the tag instead, with two seal passes (GCM
//! encryption and decryption are the same CTR keystream): seal(C) yields the
//! plaintext P, seal(P) yields C again and the tag over C, whose first 12
//! bytes are compared with the MAC in constant time. The plaintext is
//! released only after that comparison succeeds. Receiving thus costs two
//! GCM passes where a full-tag open costs one. Still the fastest choice
//! measured (`ide_bench crypto`, docs/PERFORMANCE.md): RustCrypto's one-pass
//! 96-bit open, ring plus RustCrypto's GHASH and OpenSSL's EVP are all
//! slower at the TLP sizes links use.

use ring::aead::{Aad, LessSafeKey, Nonce};
use spdm_responder::idekm::IdeKey;
use subtle::ConstantTimeEq;

/// MAC length on the wire.
pub(crate) const MAC_LEN: usize = 12;

fn nonce(invocation: u64) -> Nonce {
    Nonce::assume_unique_for_key(IdeKey::iv(invocation))
}

/// Encrypts `payload` in place; returns the 96-bit MAC over `aad` and the
/// ciphertext.
pub(crate) fn seal(
    key: &LessSafeKey,
    invocation: u64,
    aad: &[u8],
    payload: &mut [u8],
) -> [u8; MAC_LEN] {
    let mut mac = [0u8; MAC_LEN];
    // Sealing cannot fail for TLP-sized inputs (ring's limit is ~64 GiB).
    if let Ok(tag) = key.seal_in_place_separate_tag(nonce(invocation), Aad::from(aad), payload) {
        mac.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    }
    mac
}

/// Verifies `mac` over `aad` and the ciphertext in `wire` and puts the
/// plaintext into `plain` (cleared on failure). `wire` holds the ciphertext
/// again afterwards.
pub(crate) fn open(
    key: &LessSafeKey,
    invocation: u64,
    aad: &[u8],
    wire: &mut [u8],
    mac: &[u8; MAC_LEN],
    plain: &mut Vec<u8>,
) -> bool {
    // CTR keystream: "sealing" the ciphertext decrypts it (its tag, over
    // the plaintext, is meaningless here)...
    let _ = seal(key, invocation, aad, wire);
    plain.clear();
    plain.extend_from_slice(wire);
    // ...and sealing the plaintext gives back the ciphertext and its tag.
    let expected = seal(key, invocation, aad, wire);
    let ok: bool = expected.ct_eq(mac).into();
    if !ok {
        plain.iter_mut().for_each(|b| *b = 0);
        plain.clear();
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use ring::aead::{UnboundKey, AES_256_GCM};

    type Gcm96 = aes_gcm::AesGcm<
        aes_gcm::aes::Aes256,
        aes_gcm::aead::consts::U12,
        aes_gcm::aead::consts::U12,
    >;

    #[test]
    fn matches_an_independent_gcm_with_96_bit_tags() {
        let kb = [0x5au8; 32];
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &kb).unwrap());
        let aad = [0x92, 0x40, 0, 0, 0x60, 0, 0, 1];
        for len in [0usize, 4, 17, 256] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut ct = pt.clone();
            let mac = seal(&key, 7, &aad, &mut ct);
            // RustCrypto, 96-bit tag: same ciphertext and MAC.
            let mut ct2 = pt.clone();
            let tag = Gcm96::new(&kb.into())
                .encrypt_in_place_detached(&IdeKey::iv(7).into(), &aad, &mut ct2)
                .unwrap();
            assert_eq!(ct, ct2);
            assert_eq!(&mac[..], &tag[..]);
            let mut p = Vec::new();
            let mut wire = ct.clone();
            assert!(open(&key, 7, &aad, &mut wire, &mac, &mut p));
            assert_eq!(p, pt);
            assert_eq!(wire, ct, "the wire buffer holds the ciphertext again");
            // Any flipped bit, in the data, the MAC, the AAD or the counter, fails.
            if len > 0 {
                let mut bad = ct.clone();
                bad[len / 2] ^= 1;
                assert!(!open(&key, 7, &aad, &mut bad, &mac, &mut p));
                assert!(p.is_empty());
            }
            let mut badmac = mac;
            badmac[11] ^= 0x80;
            assert!(!open(&key, 7, &aad, &mut ct.clone(), &badmac, &mut p));
            assert!(!open(&key, 8, &aad, &mut ct.clone(), &mac, &mut p));
            assert!(!open(&key, 7, &aad[..4], &mut ct.clone(), &mac, &mut p));
        }
    }
}
