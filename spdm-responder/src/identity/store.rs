//! The identity on disk.
//!
//! ```text
//! DIR/ecp256/root.cert.pem  root.key.pem  inter.cert.pem  inter.key.pem
//! DIR/ecp256/leaves/<16 hex digits of SHA-256(subject-alt-name)>/
//!            san.txt  slot0.cert.pem  slot0.key.pem  slot1.cert.pem  slot1.key.pem
//! DIR/ecp384/...
//! ```
//!
//! The CAs are created on first use and then never replaced, so a requester
//! that trusts `DIR/ecpNNN/root.cert.pem` keeps trusting every device of the
//! directory (the `trustdev vm` runner copies the roots into the guest). Each
//! distinct CMA subject-alt-name (one per device instance once its serial
//! number is part of it) gets its own leaves, issued on first use and reused
//! afterwards; a cached leaf that no longer names the device or no longer
//! chains to the CA (a stale cache, an identity of an older trustdev) is
//! issued again. At most [`MAX_CACHED_NAMES`] names are cached per
//! algorithm; the least recently used are removed. `*.key.pem` files are
//! written 0600, directories 0700; every file is written to a temporary name
//! and renamed, so a crash leaves no half-written key.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ca::Ca;
use super::{io_err, leaf_other_name, parse_certs, pem_encode, AlgoIdentity, CmaDeviceName};
use super::{Identity, MAX_SLOTS};
use crate::crypto::{AsymAlgo, SigningKey};
use crate::error::IdentityError;
use crate::rng::EntropySource;

/// Slots issued per algorithm.
pub const LEAF_SLOTS: usize = 2;
/// Subject-alt-names whose leaves are kept per algorithm.
pub const MAX_CACHED_NAMES: usize = 64;

const CA_FILES: [&str; 4] = [
    "root.cert.pem",
    "root.key.pem",
    "inter.cert.pem",
    "inter.key.pem",
];

/// The directory of an algorithm below an identity directory.
pub fn algo_dir(algo: AsymAlgo) -> &'static str {
    match algo {
        AsymAlgo::EcdsaP256 => "ecp256",
        AsymAlgo::EcdsaP384 => "ecp384",
    }
}

/// See [`Identity::load_or_generate`].
pub fn load_or_generate(
    dir: &Path,
    name: &CmaDeviceName,
    rng: &mut dyn EntropySource,
) -> Result<Identity, IdentityError> {
    let mut out = Identity::default();
    for algo in [AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384] {
        let sub = dir.join(algo_dir(algo));
        let ca = load_or_create_ca(&sub, algo, rng)?;
        out.algos.push(leaves(&sub, &ca, name, rng)?);
    }
    Ok(out)
}

/// Like [`load_or_generate`], but the leaves naming `name` expired on
/// 2025-01-01 ([`super::x509::EXPIRED_NOT_AFTER`]): a chain under the
/// directory's real CAs, correct but for the date. Issued in memory each
/// time, never cached (the cached leaves stay the device's good ones).
pub fn expired_identity(
    dir: &Path,
    name: &CmaDeviceName,
    rng: &mut dyn EntropySource,
) -> Result<Identity, IdentityError> {
    let mut out = Identity::default();
    for algo in [AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384] {
        let ca = load_or_create_ca(&dir.join(algo_dir(algo)), algo, rng)?;
        out.algos.push(ca.issue_valid(
            name,
            LEAF_SLOTS,
            (super::x509::NOT_BEFORE, super::x509::EXPIRED_NOT_AFTER),
            rng,
        )?);
    }
    Ok(out)
}

fn mkdir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))
}

/// Write `data` to `path` through a temporary file and a rename; secrets 0600.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(data).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn read_one_cert(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let data = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let mut certs = parse_certs(&data)?;
    if certs.len() != 1 {
        return Err(IdentityError::Cert(format!(
            "{}: expected one certificate",
            path.display()
        )));
    }
    Ok(certs.remove(0))
}

fn read_key(path: &Path, algo: AsymAlgo) -> Result<SigningKey, IdentityError> {
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io_err(path, e))?);
    let key = SigningKey::from_pem(&pem)?;
    if key.algo() != algo {
        return Err(IdentityError::Cert(format!(
            "{} holds a {:?} key",
            path.display(),
            key.algo()
        )));
    }
    Ok(key)
}

/// The CA pair of `sub`, created (and stored) when none is there. A partial
/// set of CA files is an error: nothing is overwritten.
fn load_or_create_ca(
    sub: &Path,
    algo: AsymAlgo,
    rng: &mut dyn EntropySource,
) -> Result<Ca, IdentityError> {
    let present: Vec<&str> = CA_FILES
        .iter()
        .copied()
        .filter(|f| sub.join(f).exists())
        .collect();
    if present.is_empty() {
        let (ca, root_key) = Ca::generate(algo, rng)?;
        mkdir(sub)?;
        write_file(
            &sub.join("root.key.pem"),
            root_key.to_pkcs8_pem()?.as_bytes(),
            true,
        )?;
        write_file(
            &sub.join("inter.key.pem"),
            ca.inter_key.to_pkcs8_pem()?.as_bytes(),
            true,
        )?;
        write_file(
            &sub.join("inter.cert.pem"),
            pem_encode("CERTIFICATE", &ca.inter).as_bytes(),
            false,
        )?;
        // The root last: its presence marks a complete CA.
        write_file(
            &sub.join("root.cert.pem"),
            pem_encode("CERTIFICATE", &ca.root).as_bytes(),
            false,
        )?;
        log::info!("created the {algo:?} CA in {}", sub.display());
        return Ok(ca);
    }
    if present.len() != CA_FILES.len() {
        let missing: Vec<&str> = CA_FILES
            .iter()
            .copied()
            .filter(|f| !present.contains(f))
            .collect();
        return Err(IdentityError::Cert(format!(
            "{}: incomplete CA ({} missing); move the directory away to create a new identity",
            sub.display(),
            missing.join(", ")
        )));
    }
    let root = read_one_cert(&sub.join("root.cert.pem"))?;
    let inter = read_one_cert(&sub.join("inter.cert.pem"))?;
    let inter_key = read_key(&sub.join("inter.key.pem"), algo)?;
    if super::cert_spki(&inter)? != inter_key.verifying_key().to_spki_der()? {
        return Err(IdentityError::Cert(format!(
            "{}: inter.key.pem does not belong to inter.cert.pem",
            sub.display()
        )));
    }
    Ok(Ca {
        algo,
        root,
        inter,
        inter_key,
    })
}

/// The cache directory of a subject-alt-name.
fn leaf_dir(sub: &Path, san: &str) -> PathBuf {
    let h = Sha256::digest(san.as_bytes());
    let id: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    sub.join("leaves").join(id)
}

#[cfg(test)]
pub(super) fn leaf_dir_for_test(sub: &Path, san: &str) -> PathBuf {
    leaf_dir(sub, san)
}

/// The leaves naming `name`: cached, or issued and cached.
fn leaves(
    sub: &Path,
    ca: &Ca,
    name: &CmaDeviceName,
    rng: &mut dyn EntropySource,
) -> Result<AlgoIdentity, IdentityError> {
    let san = name.other_name();
    let ldir = leaf_dir(sub, &san);
    if ldir.join("slot0.cert.pem").exists() {
        match load_leaves(&ldir, ca, &san) {
            Ok(a) => {
                touch(&ldir.join("san.txt"));
                return Ok(a);
            }
            Err(e) => log::warn!("{}: {e}; issuing new leaf certificates", ldir.display()),
        }
    }
    if sub.join("slot0.cert.pem").exists() {
        log::info!(
            "{}: slot*.pem of an older trustdev (another subject-alt-name) are no longer used",
            sub.display()
        );
    }
    let a = ca.issue(name, LEAF_SLOTS, rng)?;
    mkdir(&ldir)?;
    for (i, s) in a.slots.iter().enumerate() {
        if let Some(s) = s {
            let chain: String = s
                .certs
                .iter()
                .map(|c| pem_encode("CERTIFICATE", c))
                .collect();
            write_file(
                &ldir.join(format!("slot{i}.key.pem")),
                s.key.to_pkcs8_pem()?.as_bytes(),
                true,
            )?;
            write_file(
                &ldir.join(format!("slot{i}.cert.pem")),
                chain.as_bytes(),
                false,
            )?;
        }
    }
    write_file(&ldir.join("san.txt"), format!("{san}\n").as_bytes(), false)?;
    log::info!(
        "issued {:?} leaf certificates for {san} in {}",
        ca.algo,
        ldir.display()
    );
    prune(&sub.join("leaves"), &ldir);
    Ok(a)
}

/// Cached leaves, if every one chains to `ca` and names `san`.
fn load_leaves(ldir: &Path, ca: &Ca, san: &str) -> Result<AlgoIdentity, IdentityError> {
    let mut out = AlgoIdentity {
        algo: ca.algo,
        slots: Default::default(),
    };
    for i in 0..MAX_SLOTS {
        let cp = ldir.join(format!("slot{i}.cert.pem"));
        if !cp.exists() {
            continue;
        }
        let id = Identity::from_files(&cp, &ldir.join(format!("slot{i}.key.pem")), i as u8)?;
        let slot = id
            .algos
            .into_iter()
            .next()
            .and_then(|a| (a.algo == ca.algo).then_some(a))
            .and_then(|a| a.slots.into_iter().nth(i).flatten())
            .ok_or_else(|| IdentityError::Cert(format!("{}: wrong key", cp.display())))?;
        if slot.certs.len() != 3 || slot.certs[0] != ca.root || slot.certs[1] != ca.inter {
            return Err(IdentityError::Cert(format!(
                "{}: does not chain to the current CA",
                cp.display()
            )));
        }
        if leaf_other_name(slot.leaf()).as_deref() != Some(san) {
            return Err(IdentityError::Cert(format!(
                "{}: names another device",
                cp.display()
            )));
        }
        out.slots[i] = Some(slot);
    }
    if out.slot_mask() & 1 == 0 {
        return Err(IdentityError::Slot(0));
    }
    Ok(out)
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Remove the least recently used cache entries beyond [`MAX_CACHED_NAMES`]
/// (only directories that look like ours: 16 hex digits with a san.txt).
fn prune(leaves: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(leaves) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .filter_map(|p| {
            let t = std::fs::metadata(p.join("san.txt")).ok()?.modified().ok()?;
            Some((t, p))
        })
        .collect();
    if entries.len() <= MAX_CACHED_NAMES {
        return;
    }
    entries.sort();
    let excess = entries.len() - MAX_CACHED_NAMES;
    for (_, p) in entries.into_iter().filter(|(_, p)| p != keep).take(excess) {
        match std::fs::remove_dir_all(&p) {
            Ok(()) => log::info!("removed cached leaf certificates {}", p.display()),
            Err(e) => log::warn!("{}: {e}", p.display()),
        }
    }
}
