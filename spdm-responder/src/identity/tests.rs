//! Identity tests.

use super::*;
use crate::rng::DeterministicEntropy;

#[test]
fn generated_chain_verifies_and_has_othername() {
    let mut rng = DeterministicEntropy::new(b"identity");
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384],
        &CmaDeviceName::default(),
        2,
        &mut rng,
    )
    .unwrap();
    for a in &id.algos {
        assert_eq!(a.slot_mask(), 0b11);
        for s in a.slots.iter().flatten() {
            let roots = vec![s.certs[0].clone()];
            let vk = verify_chain(&s.certs, &roots).unwrap();
            assert_eq!(vk, s.key.verifying_key());
            assert_eq!(
                leaf_other_name(s.leaf()).unwrap(),
                CmaDeviceName::default().other_name()
            );
            let chain = s.spdm_chain(HashAlgo::Sha384);
            assert_eq!(parse_spdm_chain(&chain, HashAlgo::Sha384).unwrap(), s.certs);
        }
    }
    assert_eq!(
        CmaDeviceName::default().other_name(),
        "Vendor=1b36:Device=0010:CC=010802:REV=02:SSVID=1af4:SSID=1100"
    );
}

/// A scratch directory removed on drop.
struct Scratch(std::path::PathBuf);
impl Scratch {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "spdm-id-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        Scratch(d)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn same_slots(a: &Identity, b: &Identity) -> bool {
    a.algos.iter().zip(b.algos.iter()).all(|(x, y)| {
        x.algo == y.algo
            && x.slots
                .iter()
                .zip(y.slots.iter())
                .all(|(s, t)| match (s, t) {
                    (Some(s), Some(t)) => {
                        s.certs == t.certs && s.key.verifying_key() == t.key.verifying_key()
                    }
                    (None, None) => true,
                    _ => false,
                })
    })
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn dev(serial: u64) -> CmaDeviceName {
    CmaDeviceName {
        serial: Some(serial),
        ..CmaDeviceName::default()
    }
}

#[test]
fn store_and_reload_is_stable_and_private() {
    let d = Scratch::new("store");
    let dir = &d.0;
    let mut rng = DeterministicEntropy::new(b"store");
    let a = Identity::load_or_generate(dir, &dev(1), &mut rng).unwrap();
    let b = Identity::load_or_generate(dir, &dev(1), &mut rng).unwrap();
    assert!(same_slots(&a, &b), "reloaded, not re-issued");
    let sub = dir.join("ecp256");
    let ldir = store::leaf_dir_for_test(&sub, &dev(1).other_name());
    for f in ["root.key.pem", "inter.key.pem"] {
        assert_eq!(mode(&sub.join(f)), 0o600, "{f}");
    }
    for f in ["slot0.key.pem", "slot1.key.pem"] {
        assert_eq!(mode(&ldir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&ldir), 0o700);
    assert_eq!(
        std::fs::read_to_string(ldir.join("san.txt"))
            .unwrap()
            .trim(),
        dev(1).other_name()
    );
    assert!(a
        .root_pem(AsymAlgo::EcdsaP384)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
}

/// Two instances of a device kind share the CAs and get their own leaves.
#[test]
fn each_name_gets_its_own_leaf_under_the_same_ca() {
    let d = Scratch::new("names");
    let mut rng = DeterministicEntropy::new(b"names");
    let a = Identity::load_or_generate(&d.0, &dev(1), &mut rng).unwrap();
    let b = Identity::load_or_generate(&d.0, &dev(2), &mut rng).unwrap();
    assert_eq!(a.roots_der(), b.roots_der());
    for algo in [AsymAlgo::EcdsaP256, AsymAlgo::EcdsaP384] {
        let (sa, sb) = (a.slot(algo, 0).unwrap(), b.slot(algo, 0).unwrap());
        assert_eq!(sa.certs[..2], sb.certs[..2], "same root and intermediate");
        assert_ne!(sa.leaf(), sb.leaf());
        assert_eq!(leaf_other_name(sa.leaf()).unwrap(), dev(1).other_name());
        assert_eq!(leaf_other_name(sb.leaf()).unwrap(), dev(2).other_name());
        verify_chain(&sb.certs, &a.roots_der()).unwrap();
    }
    // And device 1 still gets its own cached leaf back.
    let a2 = Identity::load_or_generate(&d.0, &dev(1), &mut rng).unwrap();
    assert!(same_slots(&a, &a2));
}

/// An identity directory of an older trustdev (CA files plus top-level
/// slot files with the old uppercase subject-alt-name) still starts: the CA is
/// kept, new leaves are issued, the old files stay untouched.
#[test]
fn identity_of_an_older_version_keeps_its_ca() {
    let d = Scratch::new("old");
    let mut rng = DeterministicEntropy::new(b"old");
    let old = Identity::load_or_generate(&d.0, &dev(7), &mut rng).unwrap();
    let sub = d.0.join("ecp256");
    // Fake the old layout: a top-level slot0 whose leaf has another name.
    let stale = old.slot(AsymAlgo::EcdsaP256, 0).unwrap();
    let chain: String = stale
        .certs
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(sub.join("slot0.cert.pem"), &chain).unwrap();
    std::fs::remove_dir_all(sub.join("leaves")).unwrap();
    let upper = "Vendor=1B36:Device=0010:CC=010802:REV=02:SSVID=1AF4:SSID=1100";
    assert_ne!(upper, dev(8).other_name());
    let new = Identity::load_or_generate(&d.0, &dev(8), &mut rng).unwrap();
    assert_eq!(new.roots_der(), old.roots_der());
    let leaf = new.slot(AsymAlgo::EcdsaP256, 0).unwrap().leaf().to_vec();
    assert_eq!(leaf_other_name(&leaf).unwrap(), dev(8).other_name());
    assert_eq!(
        std::fs::read_to_string(sub.join("slot0.cert.pem")).unwrap(),
        chain
    );
}

/// A cached leaf that names another device (here: planted under the wrong
/// cache entry) is issued again.
#[test]
fn a_cached_leaf_with_the_wrong_name_is_reissued() {
    let d = Scratch::new("wrong");
    let mut rng = DeterministicEntropy::new(b"wrong");
    Identity::load_or_generate(&d.0, &dev(1), &mut rng).unwrap();
    Identity::load_or_generate(&d.0, &dev(2), &mut rng).unwrap();
    let sub = d.0.join("ecp384");
    let l1 = store::leaf_dir_for_test(&sub, &dev(1).other_name());
    let l2 = store::leaf_dir_for_test(&sub, &dev(2).other_name());
    for f in ["slot0.cert.pem", "slot0.key.pem"] {
        std::fs::copy(l2.join(f), l1.join(f)).unwrap();
    }
    let again = Identity::load_or_generate(&d.0, &dev(1), &mut rng).unwrap();
    let leaf = again.slot(AsymAlgo::EcdsaP384, 0).unwrap().leaf().to_vec();
    assert_eq!(leaf_other_name(&leaf).unwrap(), dev(1).other_name());
}

/// A partial CA is refused with a clear error and nothing is overwritten.
#[test]
fn an_incomplete_ca_is_an_error() {
    let d = Scratch::new("partial");
    let mut rng = DeterministicEntropy::new(b"partial");
    Identity::load_or_generate(&d.0, &dev(1), &mut rng).unwrap();
    let sub = d.0.join("ecp256");
    std::fs::remove_file(sub.join("inter.key.pem")).unwrap();
    let root = std::fs::read(sub.join("root.cert.pem")).unwrap();
    let e = Identity::load_or_generate(&d.0, &dev(1), &mut rng).unwrap_err();
    assert!(e.to_string().contains("inter.key.pem missing"), "{e}");
    assert_eq!(std::fs::read(sub.join("root.cert.pem")).unwrap(), root);
}

#[test]
fn user_chain_der_and_pem() {
    let mut rng = DeterministicEntropy::new(b"user");
    let id = Identity::generate(
        &[AsymAlgo::EcdsaP256],
        &CmaDeviceName::default(),
        1,
        &mut rng,
    )
    .unwrap();
    let s = id.slot(AsymAlgo::EcdsaP256, 0).unwrap();
    let der_chain: Vec<u8> = s.certs.concat();
    let key_der = s.key.to_pkcs8_der().unwrap();
    let u = Identity::from_chain_and_key(&der_chain, &key_der, 1).unwrap();
    assert_eq!(u.slot(AsymAlgo::EcdsaP256, 1).unwrap().certs, s.certs);
    // PEM, leaf first (reordered).
    let mut pem = String::new();
    for c in s.certs.iter().rev() {
        pem.push_str(&pem_encode("CERTIFICATE", c));
    }
    let key_pem = s.key.to_pkcs8_pem().unwrap();
    let u = Identity::from_chain_and_key(pem.as_bytes(), key_pem.as_bytes(), 0).unwrap();
    assert_eq!(u.slot(AsymAlgo::EcdsaP256, 0).unwrap().certs, s.certs);
    // A key that matches nothing is refused.
    let other = SigningKey::generate(AsymAlgo::EcdsaP256, &mut rng)
        .to_pkcs8_der()
        .unwrap();
    assert!(Identity::from_chain_and_key(&der_chain, &other, 0).is_err());
}

#[test]
fn expired_leaf_is_refused_by_date_only() {
    let dir = Scratch::new("expired");
    let mut rng = DeterministicEntropy::new(b"expired");
    let name = CmaDeviceName::default();
    let good = Identity::load_or_generate(&dir.0, &name, &mut rng).unwrap();
    let old = store::expired_identity(&dir.0, &name, &mut rng).unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let expired_at = std::time::Duration::from_secs(EXPIRED_NOT_AFTER);
    for (g, o) in good.algos.iter().zip(old.algos.iter()) {
        let gs = g.slots[0].as_ref().unwrap();
        let os = o.slots[0].as_ref().unwrap();
        // The same CAs, the same subject-alt-name: only the leaf differs.
        assert_eq!(gs.certs[..2], os.certs[..2]);
        assert_eq!(leaf_other_name(os.leaf()), leaf_other_name(gs.leaf()));
        let roots = vec![gs.certs[0].clone()];
        // Inside its validity the expired leaf verifies: the chain is sound.
        let vk = verify_chain_at(&os.certs, &roots, expired_at - day).unwrap();
        assert_eq!(vk, os.key.verifying_key());
        // Past it (and at this clock), it is refused as expired.
        for e in [
            verify_chain_at(&os.certs, &roots, expired_at + day).unwrap_err(),
            verify_chain(&os.certs, &roots).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    IdentityError::Expired {
                        index: 2,
                        role: "leaf",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("certificate expired"), "{e}");
            assert!(e.to_string().contains("2025-01-01T00:00:00Z"), "{e}");
        }
        // The good chain verifies now, and is not yet valid before 2024.
        verify_chain(&gs.certs, &roots).unwrap();
        let e = verify_chain_at(&gs.certs, &roots, std::time::Duration::from_secs(1_000_000))
            .unwrap_err();
        assert!(
            matches!(
                e,
                IdentityError::NotYetValid {
                    index: 0,
                    role: "root",
                    ..
                }
            ),
            "{e}"
        );
    }
    // The cache still holds the good leaves.
    let again = Identity::load_or_generate(&dir.0, &name, &mut rng).unwrap();
    assert!(same_slots(&good, &again));
}
