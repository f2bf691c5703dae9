//! Shared by the IDE integration tests: checking a wire trace with an
//! AES-GCM implementation that is not the link's (RustCrypto, 96-bit tags).

#![allow(dead_code)]

use aes_gcm::aead::{AeadInPlace, KeyInit};
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream};
use std::collections::HashMap;
use trustdev_devices::security::ide::trace::{Flow, TraceRecord};

type Gcm96 =
    aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U12, aes_gcm::aead::consts::U12>;

/// Checks every record: it decrypts and its MAC verifies with the key
/// `key(stream_id, slot)` of its transmitter (the device's TX key upstream,
/// its RX key downstream), and each (stream, sub-stream, direction, key
/// set) counts up by one from its key's IFV. Returns the number of records
/// per (direction, sub-stream).
pub fn verify_trace(
    recs: &[TraceRecord],
    key: impl Fn(u8, KeySlot) -> IdeKey,
) -> HashMap<(u8, u8), usize> {
    let mut next: HashMap<(u8, u8, u8, u8), u64> = HashMap::new();
    let mut kinds = HashMap::new();
    for r in recs {
        let set = KeySet::from_bit(r.key_set == 1);
        let dir = match r.flow {
            Flow::Upstream => KeyDirection::Tx,
            Flow::Downstream => KeyDirection::Rx,
        };
        let k = key(
            r.stream_id,
            KeySlot::new(set, dir, SubStream::from_bits(r.sub_stream).unwrap()),
        );
        let n = next
            .entry((r.stream_id, r.sub_stream, r.flow as u8, r.key_set))
            .or_insert(k.ifv());
        assert_eq!(r.invocation, *n, "invocation counter of {r:?}");
        *n += 1;
        let mut p = r.payload.clone();
        let ok = Gcm96::new(k.key_bytes().into())
            .decrypt_in_place_detached(
                &IdeKey::iv(r.invocation).into(),
                &r.header,
                &mut p,
                (&r.mac).into(),
            )
            .is_ok();
        assert_eq!(ok, r.verified, "MAC of {r:?}");
        *kinds.entry((r.flow as u8, r.sub_stream)).or_insert(0) += 1;
    }
    kinds
}
