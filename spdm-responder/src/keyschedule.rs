//! The DSP0274 key schedule ("Key schedule" clause): HKDF-Extract/Expand with
//! `bin_concat(Length u16 LE, "spdm1.x ", Label, Context)`.
//!
//! ```text
//! Salt_0            = 0^H                     (0xFF^H for PSK sessions from 1.3)
//! HandshakeSecret   = HKDF-Extract(Salt_0, DHE secret | PSK)
//! {req,rsp}_hs      = HKDF-Expand(HandshakeSecret, bin_concat(H, "req hs data"|"rsp hs data", TH1))
//! Salt_1            = HKDF-Expand(HandshakeSecret, bin_concat(H, "derived"))
//! MasterSecret      = HKDF-Extract(Salt_1, 0^H)
//! {req,rsp}_data    = HKDF-Expand(MasterSecret, bin_concat(H, "req app data"|"rsp app data", TH2))
//! ExportMaster      = HKDF-Expand(MasterSecret, bin_concat(H, "exp master", TH2))
//! finished_key      = HKDF-Expand(hs secret, bin_concat(H, "finished"))
//! key / iv          = HKDF-Expand(secret, bin_concat(32, "key")) / bin_concat(12, "iv")
//! updated secret    = HKDF-Expand(secret, bin_concat(H, "traffic upd"))
//! ```

use zeroize::Zeroizing;

use crate::crypto::{HashAlgo, AEAD_IV_SIZE, AEAD_KEY_SIZE};
use crate::error::CryptoError;

/// `bin_concat` of DSP0274.
pub fn bin_concat(version: u8, length: u16, label: &str, context: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + 8 + label.len() + context.map_or(0, |c| c.len()));
    v.extend_from_slice(&length.to_le_bytes());
    v.extend_from_slice(format!("spdm{}.{} ", version >> 4, version & 0xF).as_bytes());
    v.extend_from_slice(label.as_bytes());
    if let Some(c) = context {
        v.extend_from_slice(c);
    }
    v
}

/// AEAD key + IV (salt) of one direction and phase.
pub struct TrafficKeys {
    pub key: Zeroizing<[u8; AEAD_KEY_SIZE]>,
    pub salt: Zeroizing<[u8; AEAD_IV_SIZE]>,
}

/// Derive the AEAD key and IV from a major secret.
pub fn traffic_keys(
    hash: HashAlgo,
    version: u8,
    secret: &[u8],
) -> Result<TrafficKeys, CryptoError> {
    let k = hash.hkdf_expand(
        secret,
        &bin_concat(version, AEAD_KEY_SIZE as u16, "key", None),
        AEAD_KEY_SIZE,
    )?;
    let i = hash.hkdf_expand(
        secret,
        &bin_concat(version, AEAD_IV_SIZE as u16, "iv", None),
        AEAD_IV_SIZE,
    )?;
    let mut key = Zeroizing::new([0u8; AEAD_KEY_SIZE]);
    key.copy_from_slice(&k);
    let mut salt = Zeroizing::new([0u8; AEAD_IV_SIZE]);
    salt.copy_from_slice(&i);
    Ok(TrafficKeys { key, salt })
}

/// The handshake-phase secrets of a session.
pub struct HandshakeSecrets {
    pub handshake_secret: Zeroizing<Vec<u8>>,
    pub req_secret: Zeroizing<Vec<u8>>,
    pub rsp_secret: Zeroizing<Vec<u8>>,
    pub req_finished_key: Zeroizing<Vec<u8>>,
    pub rsp_finished_key: Zeroizing<Vec<u8>>,
}

/// The application-phase secrets of a session.
pub struct DataSecrets {
    pub req_secret: Zeroizing<Vec<u8>>,
    pub rsp_secret: Zeroizing<Vec<u8>>,
    pub export_master_secret: Zeroizing<Vec<u8>>,
}

/// Derive the handshake secrets from the DHE shared secret (or PSK) and TH1.
pub fn handshake_secrets(
    hash: HashAlgo,
    version: u8,
    ikm: &[u8],
    psk: bool,
    th1: &[u8],
) -> Result<HandshakeSecrets, CryptoError> {
    let h = hash.size();
    let salt0 = if psk && version >= 0x13 {
        vec![0xFFu8; h]
    } else {
        vec![0u8; h]
    };
    let hs = hash.hkdf_extract(&salt0, ikm);
    let req = hash.hkdf_expand(
        &hs,
        &bin_concat(version, h as u16, "req hs data", Some(th1)),
        h,
    )?;
    let rsp = hash.hkdf_expand(
        &hs,
        &bin_concat(version, h as u16, "rsp hs data", Some(th1)),
        h,
    )?;
    let fin = bin_concat(version, h as u16, "finished", None);
    let req_finished_key = hash.hkdf_expand(&req, &fin, h)?;
    let rsp_finished_key = hash.hkdf_expand(&rsp, &fin, h)?;
    Ok(HandshakeSecrets {
        handshake_secret: hs,
        req_secret: req,
        rsp_secret: rsp,
        req_finished_key,
        rsp_finished_key,
    })
}

/// Derive the data secrets from the handshake secret and TH2.
pub fn data_secrets(
    hash: HashAlgo,
    version: u8,
    handshake_secret: &[u8],
    th2: &[u8],
) -> Result<DataSecrets, CryptoError> {
    let h = hash.size();
    let salt1 = hash.hkdf_expand(
        handshake_secret,
        &bin_concat(version, h as u16, "derived", None),
        h,
    )?;
    let master = hash.hkdf_extract(&salt1, &vec![0u8; h]);
    let req = hash.hkdf_expand(
        &master,
        &bin_concat(version, h as u16, "req app data", Some(th2)),
        h,
    )?;
    let rsp = hash.hkdf_expand(
        &master,
        &bin_concat(version, h as u16, "rsp app data", Some(th2)),
        h,
    )?;
    let exp = hash.hkdf_expand(
        &master,
        &bin_concat(version, h as u16, "exp master", Some(th2)),
        h,
    )?;
    Ok(DataSecrets {
        req_secret: req,
        rsp_secret: rsp,
        export_master_secret: exp,
    })
}

/// KEY_UPDATE: the next secret of one direction.
pub fn update_secret(
    hash: HashAlgo,
    version: u8,
    secret: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let h = hash.size();
    hash.hkdf_expand(
        secret,
        &bin_concat(version, h as u16, "traffic upd", None),
        h,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_concat_layout() {
        let b = bin_concat(0x12, 32, "derived", None);
        assert_eq!(&b[..2], &[32, 0]);
        assert_eq!(&b[2..], b"spdm1.2 derived");
        let b = bin_concat(0x13, 48, "req hs data", Some(&[0xAA; 48]));
        assert_eq!(b.len(), 2 + 8 + 11 + 48);
        assert_eq!(&b[2..10], b"spdm1.3 ");
    }

    #[test]
    fn hkdf_rfc5869_case1() {
        // RFC 5869 test case 1 (SHA-256).
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let prk = HashAlgo::Sha256.hkdf_extract(&salt, &ikm);
        assert_eq!(
            prk.as_slice(),
            &[
                0x07, 0x77, 0x09, 0x36, 0x2c, 0x2e, 0x32, 0xdf, 0x0d, 0xdc, 0x3f, 0x0d, 0xc4, 0x7b,
                0xba, 0x63, 0x90, 0xb6, 0xc7, 0x3b, 0xb5, 0x0f, 0x9c, 0x31, 0x22, 0xec, 0x84, 0x4a,
                0xd7, 0xc2, 0xb3, 0xe5
            ]
        );
        let okm = HashAlgo::Sha256.hkdf_expand(&prk, &info, 42).unwrap();
        assert_eq!(&okm[..4], &[0x3c, 0xb2, 0x5f, 0x25]);
        assert_eq!(okm[41], 0x65);
    }

    #[test]
    fn psk_salt_differs_from_13() {
        let a = handshake_secrets(HashAlgo::Sha256, 0x12, b"psk", true, &[0; 32]).unwrap();
        let b = handshake_secrets(HashAlgo::Sha256, 0x13, b"psk", true, &[0; 32]).unwrap();
        let c = handshake_secrets(HashAlgo::Sha256, 0x13, b"psk", false, &[0; 32]).unwrap();
        assert_ne!(a.req_secret.as_slice(), b.req_secret.as_slice());
        assert_ne!(b.req_secret.as_slice(), c.req_secret.as_slice());
    }
}
