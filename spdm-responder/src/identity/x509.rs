//! X.509 for the identity: building the CA and leaf certificates (with the
//! CMA otherName), parsing and verifying chains.

use std::str::FromStr;
use std::time::Duration;

use der::referenced::OwnedToRef;
use der::{Decode, Encode};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use super::{cert_err, CMA_OTHERNAME_OID};
use crate::crypto::{HashAlgo, SigningKey, VerifyingKey};
use crate::error::IdentityError;
use crate::rng::EntropySource;

/// PEM-encode DER.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap_or_default()
}

/// Split PEM or concatenated DER certificates.
pub fn parse_certs(data: &[u8]) -> Result<Vec<Vec<u8>>, IdentityError> {
    if let Ok(s) = std::str::from_utf8(data) {
        if s.contains("-----BEGIN") {
            let certs = Certificate::load_pem_chain(data).map_err(cert_err)?;
            return certs.iter().map(|c| c.to_der().map_err(cert_err)).collect();
        }
    }
    split_der(data)
}

/// Split concatenated DER SEQUENCEs.
pub fn split_der(mut data: &[u8]) -> Result<Vec<Vec<u8>>, IdentityError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = der_tlv_len(data)
            .ok_or_else(|| IdentityError::Cert("malformed DER certificate".into()))?;
        out.push(data[..n].to_vec());
        data = &data[n..];
    }
    Ok(out)
}

/// Total length of the DER TLV at the start of `d` (SEQUENCE only).
pub fn der_tlv_len(d: &[u8]) -> Option<usize> {
    if d.len() < 2 || d[0] != 0x30 {
        return None;
    }
    let (hdr, len) = match d[1] {
        l if l < 0x80 => (2usize, l as usize),
        0x81 => (3, *d.get(2)? as usize),
        0x82 => (4, u16::from_be_bytes([*d.get(2)?, *d.get(3)?]) as usize),
        0x83 => (
            5,
            u32::from_be_bytes([0, *d.get(2)?, *d.get(3)?, *d.get(4)?]) as usize,
        ),
        _ => return None,
    };
    let total = hdr.checked_add(len)?;
    (total <= d.len()).then_some(total)
}

/// The subject name of a DER certificate.
pub(super) fn cert_subject(der: &[u8]) -> Result<Name, IdentityError> {
    let c = Certificate::from_der(der).map_err(cert_err)?;
    Ok(c.tbs_certificate.subject)
}

/// DER SubjectPublicKeyInfo of a certificate.
pub fn cert_spki(der: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let c = Certificate::from_der(der).map_err(cert_err)?;
    c.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(cert_err)
}

fn spki_of(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, IdentityError> {
    let der = key.verifying_key().to_spki_der()?;
    SubjectPublicKeyInfoOwned::from_der(&der).map_err(cert_err)
}

fn serial(rng: &mut dyn EntropySource) -> Result<SerialNumber, IdentityError> {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[0] = (b[0] & 0x7F) | 0x01;
    SerialNumber::new(&b).map_err(cert_err)
}

/// 2024-01-01T00:00:00Z: the start of every certificate's validity.
pub(super) const NOT_BEFORE: u64 = 1_704_067_200;
/// 9999-12-31T23:59:59Z (RFC 5280 "no well-defined expiration").
pub(super) const NOT_AFTER_NEVER: u64 = 253_402_300_799;
/// 2025-01-01T00:00:00Z: the end of an expired leaf's validity
/// ([`super::store::expired_identity`]).
pub const EXPIRED_NOT_AFTER: u64 = 1_735_689_600;

/// The validity `not_before ..= not_after` (seconds since the epoch).
pub(super) fn validity(not_before: u64, not_after: u64) -> Result<Validity, IdentityError> {
    let time = |secs: u64| -> Result<Time, IdentityError> {
        // RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime after.
        let d = Duration::from_secs(secs);
        Ok(if secs < 2_524_608_000 {
            Time::UtcTime(der::asn1::UtcTime::from_unix_duration(d).map_err(cert_err)?)
        } else {
            Time::GeneralTime(der::asn1::GeneralizedTime::from_unix_duration(d).map_err(cert_err)?)
        })
    };
    Ok(Validity {
        not_before: time(not_before)?,
        not_after: time(not_after)?,
    })
}

/// What a built certificate is.
pub(super) enum Kind {
    Root,
    Intermediate,
    Leaf(String),
}

pub(super) fn build_cert(
    kind: Kind,
    subject: &str,
    issuer: Option<(&Name, &SigningKey)>,
    subject_key: &SigningKey,
    validity: Validity,
    rng: &mut dyn EntropySource,
) -> Result<Vec<u8>, IdentityError> {
    let subject = Name::from_str(subject).map_err(cert_err)?;
    let spki = spki_of(subject_key)?;
    let (issuer_name, signer) = match issuer {
        Some((n, k)) => (Some(n.clone()), k),
        None => (None, subject_key),
    };
    let issuer_spki = spki_of(signer)?;
    let serial = serial(rng)?;
    macro_rules! go {
        ($k:expr, $sig:ty) => {{
            let mut b = CertificateBuilder::new(
                Profile::Manual {
                    issuer: issuer_name,
                },
                serial,
                validity,
                subject,
                spki.clone(),
                $k,
            )
            .map_err(cert_err)?;
            add_exts(&mut b, &kind, &spki, &issuer_spki)?;
            b.build::<$sig>().map_err(cert_err)?
        }};
    }
    let cert = match signer {
        SigningKey::P256(k) => go!(k, p256::ecdsa::DerSignature),
        SigningKey::P384(k) => go!(k, p384::ecdsa::DerSignature),
    };
    cert.to_der().map_err(cert_err)
}

fn add_exts<S>(
    b: &mut CertificateBuilder<'_, S>,
    kind: &Kind,
    spki: &SubjectPublicKeyInfoOwned,
    issuer_spki: &SubjectPublicKeyInfoOwned,
) -> Result<(), IdentityError>
where
    S: spki::DynSignatureAlgorithmIdentifier + ecdsa::signature::Keypair,
    S::VerifyingKey: spki::EncodePublicKey,
{
    let ski = SubjectKeyIdentifier::try_from(spki.owned_to_ref()).map_err(cert_err)?;
    b.add_extension(&ski).map_err(cert_err)?;
    if !matches!(kind, Kind::Root) {
        let aki = AuthorityKeyIdentifier::try_from(issuer_spki.owned_to_ref()).map_err(cert_err)?;
        b.add_extension(&aki).map_err(cert_err)?;
    }
    match kind {
        Kind::Root => {
            b.add_extension(&BasicConstraints {
                ca: true,
                path_len_constraint: None,
            })
            .map_err(cert_err)?;
            b.add_extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))
                .map_err(cert_err)?;
        }
        Kind::Intermediate => {
            b.add_extension(&BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            })
            .map_err(cert_err)?;
            b.add_extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))
                .map_err(cert_err)?;
        }
        Kind::Leaf(other) => {
            b.add_extension(&BasicConstraints {
                ca: false,
                path_len_constraint: None,
            })
            .map_err(cert_err)?;
            b.add_extension(&KeyUsage(KeyUsages::DigitalSignature.into()))
                .map_err(cert_err)?;
            let value =
                der::Any::encode_from(&der::asn1::Utf8StringRef::new(other).map_err(cert_err)?)
                    .map_err(cert_err)?;
            let on = OtherName {
                type_id: const_oid::ObjectIdentifier::new_unwrap(CMA_OTHERNAME_OID),
                value,
            };
            b.add_extension(&SubjectAltName(vec![GeneralName::OtherName(on)]))
                .map_err(cert_err)?;
        }
    }
    Ok(())
}

/// Verify a DER chain (root first) with this crate's own X.509 signature checks:
/// every certificate's signature with its issuer's key (the root's with its own),
/// CA basicConstraints on issuers, that the root is one of `trusted_roots`
/// (byte-equal) or is signed by one, and that every certificate is inside its
/// validity period at this system's clock. Returns the leaf's public key.
pub fn verify_chain(
    certs: &[Vec<u8>],
    trusted_roots: &[Vec<u8>],
) -> Result<VerifyingKey, IdentityError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    verify_chain_at(certs, trusted_roots, now)
}

/// [`verify_chain`] with the validity checked at `now` (since the epoch).
pub fn verify_chain_at(
    certs: &[Vec<u8>],
    trusted_roots: &[Vec<u8>],
    now: Duration,
) -> Result<VerifyingKey, IdentityError> {
    if certs.is_empty() {
        return Err(IdentityError::Cert("empty chain".into()));
    }
    let parsed: Vec<Certificate> = certs
        .iter()
        .map(|c| Certificate::from_der(c).map_err(cert_err))
        .collect::<Result<_, _>>()?;
    let root_ok = trusted_roots.iter().any(|t| t == &certs[0])
        || trusted_roots.iter().any(|t| {
            Certificate::from_der(t)
                .ok()
                .map(|tc| check_sig(&parsed[0], &tc).is_ok())
                .unwrap_or(false)
        });
    if !root_ok {
        return Err(IdentityError::Cert("chain root is not trusted".into()));
    }
    for i in 0..parsed.len() {
        let issuer = if i == 0 { &parsed[0] } else { &parsed[i - 1] };
        if i > 0 {
            if issuer.tbs_certificate.subject != parsed[i].tbs_certificate.issuer {
                return Err(IdentityError::Cert(format!(
                    "certificate {i}: issuer name does not match"
                )));
            }
            if !is_ca(issuer) {
                return Err(IdentityError::Cert(format!(
                    "certificate {}: issuer is not a CA",
                    i
                )));
            }
        }
        if i == 0
            && parsed[0].tbs_certificate.subject != parsed[0].tbs_certificate.issuer
            && parsed.len() > 1
        {
            // The first certificate need not be self-signed when a trusted root signed it.
        } else {
            check_sig(&parsed[i], issuer)?;
        }
    }
    // Dates after signatures: a forged certificate is reported as such,
    // whatever dates it claims.
    for (i, c) in parsed.iter().enumerate() {
        check_validity(c, i, parsed.len(), now)?;
    }
    let leaf_spki = parsed[parsed.len() - 1]
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(cert_err)?;
    Ok(VerifyingKey::from_spki_der(&leaf_spki)?)
}

/// The role of certificate `i` of `n` (root first), for messages.
fn role(i: usize, n: usize) -> &'static str {
    if i + 1 == n {
        "leaf"
    } else if i == 0 {
        "root"
    } else {
        "intermediate"
    }
}

/// RFC 3339 UTC text of seconds since the epoch.
fn utc(secs: Duration) -> String {
    der::DateTime::from_unix_duration(secs)
        .map(|d| d.to_string())
        .unwrap_or_else(|_| format!("{}s after the epoch", secs.as_secs()))
}

fn check_validity(
    c: &Certificate,
    index: usize,
    n: usize,
    now: Duration,
) -> Result<(), IdentityError> {
    let v = &c.tbs_certificate.validity;
    let (nb, na) = (
        v.not_before.to_unix_duration(),
        v.not_after.to_unix_duration(),
    );
    if now > na {
        return Err(IdentityError::Expired {
            index,
            role: role(index, n),
            not_after: utc(na),
            now: utc(now),
        });
    }
    if now < nb {
        return Err(IdentityError::NotYetValid {
            index,
            role: role(index, n),
            not_before: utc(nb),
            now: utc(now),
        });
    }
    Ok(())
}

fn is_ca(c: &Certificate) -> bool {
    c.tbs_certificate.extensions.iter().flatten().any(|e| {
        e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
            && BasicConstraints::from_der(e.extn_value.as_bytes())
                .map(|b| b.ca)
                .unwrap_or(false)
    })
}

fn check_sig(cert: &Certificate, issuer: &Certificate) -> Result<(), IdentityError> {
    let tbs = cert.tbs_certificate.to_der().map_err(cert_err)?;
    let alg = &cert.signature_algorithm.oid;
    let hash = if *alg == const_oid::db::rfc5912::ECDSA_WITH_SHA_256 {
        HashAlgo::Sha256
    } else if *alg == const_oid::db::rfc5912::ECDSA_WITH_SHA_384 {
        HashAlgo::Sha384
    } else {
        return Err(IdentityError::Cert(format!(
            "unsupported signature algorithm {alg}"
        )));
    };
    let ispki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(cert_err)?;
    let vk = VerifyingKey::from_spki_der(&ispki)?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or_else(|| IdentityError::Cert("bad signature bits".into()))?;
    vk.verify_prehash_der(&hash.hash(&tbs), sig)
        .map_err(|_| IdentityError::Cert("certificate signature does not verify".into()))
}

/// Parse an SPDM certificate chain (`Length u16 || Reserved u16 || RootHash || certs`),
/// checking Length and the RootHash. Returns the DER certificates.
pub fn parse_spdm_chain(chain: &[u8], hash: HashAlgo) -> Result<Vec<Vec<u8>>, IdentityError> {
    let h = hash.size();
    if chain.len() < 4 + h {
        return Err(IdentityError::Cert("SPDM chain too short".into()));
    }
    let len = u16::from_le_bytes([chain[0], chain[1]]) as usize;
    if len != chain.len() {
        return Err(IdentityError::Cert(format!(
            "SPDM chain length {len} != {}",
            chain.len()
        )));
    }
    let certs = split_der(&chain[4 + h..])?;
    let root = certs
        .first()
        .ok_or_else(|| IdentityError::Cert("no certificate".into()))?;
    if hash.hash(root) != chain[4..4 + h] {
        return Err(IdentityError::Cert(
            "RootHash does not match the root certificate".into(),
        ));
    }
    Ok(certs)
}

/// The CMA otherName string of a leaf certificate, if present.
pub fn leaf_other_name(der: &[u8]) -> Option<String> {
    let c = Certificate::from_der(der).ok()?;
    for e in c.tbs_certificate.extensions.iter().flatten() {
        if e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(e.extn_value.as_bytes()).ok()?;
            for g in san.0 {
                if let GeneralName::OtherName(on) = g {
                    if on.type_id == const_oid::ObjectIdentifier::new_unwrap(CMA_OTHERNAME_OID) {
                        let s: der::asn1::Utf8StringRef<'_> = on.value.decode_as().ok()?;
                        return Some(s.as_str().to_string());
                    }
                }
            }
        }
    }
    None
}
