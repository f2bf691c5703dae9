//! Key slots of one IDE stream: 3 sub-streams × 2 directions × 2 key sets,
//! each empty, programmed (KEY_PROG) or armed (K_SET_GO), and the key set
//! each direction of each sub-stream currently uses.
//!
//! Keys are held as seen from the device (this port): an RX key opens what
//! the host transmits, a TX key seals what the device transmits. The host
//! end of the modelled link holds the same keys the other way round (a TSM
//! programs the root port with the keys it gives the device), so one armed
//! key, with one invocation counter, serves both ends of its direction.

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use spdm_responder::idekm::{IdeKey, KeyDirection, KeySet, KeySlot, SubStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An armed key: the AES-256-GCM key schedule, the IFV, and the invocation
/// field of the next TLP sealed with it.
///
/// ring gives no way to scrub its expanded key schedule: the raw key is
/// zeroized (as [`IdeKey`]) when it is armed, the schedule is freed when the
/// last TLP using it is done.
pub(crate) struct ArmedKey {
    cipher: LessSafeKey,
    ifv: u64,
    next: AtomicU64,
    /// The SPDM session that programmed it.
    pub session: u32,
}

impl std::fmt::Debug for ArmedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmedKey")
            .field("ifv", &self.ifv)
            .field("next", &self.next.load(Ordering::Relaxed))
            .field("session", &self.session)
            .finish()
    }
}

impl ArmedKey {
    fn new(key: &IdeKey, session: u32) -> Option<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.key_bytes()).ok()?;
        Some(ArmedKey {
            cipher: LessSafeKey::new(unbound),
            ifv: key.ifv(),
            next: AtomicU64::new(key.ifv()),
            session,
        })
    }

    /// The cipher.
    pub fn cipher(&self) -> &LessSafeKey {
        &self.cipher
    }

    /// The initial invocation field value.
    pub fn ifv(&self) -> u64 {
        self.ifv
    }

    /// Claims the invocation field of the next TLP on the wire with this
    /// key (the transmitter's counter; the receiver's counter for the same
    /// TLP is IFV + the number of TLPs before it, which is the same value).
    pub fn claim(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// One key slot.
#[derive(Debug, Default)]
pub(crate) enum Slot {
    /// No key.
    #[default]
    Empty,
    /// KEY_PROG received, not armed.
    Programmed {
        /// The key (zeroized on drop).
        key: IdeKey,
        /// The SPDM session that programmed it.
        session: u32,
    },
    /// K_SET_GO received.
    Armed(Arc<ArmedKey>),
}

impl Slot {
    fn session(&self) -> Option<u32> {
        match self {
            Slot::Empty => None,
            Slot::Programmed { session, .. } => Some(*session),
            Slot::Armed(k) => Some(k.session),
        }
    }
}

/// Why a key operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// KEY_PROG into an armed slot.
    InUse,
    /// GO / STOP of an empty slot.
    Empty,
    /// The slot belongs to another session.
    OtherSession,
}

/// The key slots of one Stream ID.
#[derive(Debug, Default)]
pub(crate) struct StreamKeys {
    slots: [Slot; KeySlot::COUNT],
    /// Key set in use per sub-stream, per direction (`[dir][sub-stream]`).
    in_use: [[Option<KeySet>; 3]; 2],
}

impl StreamKeys {
    /// KEY_PROG.
    pub fn program(&mut self, slot: KeySlot, key: IdeKey, session: u32) -> Result<(), KeyError> {
        let s = &mut self.slots[slot.index()];
        match s {
            Slot::Armed(_) => Err(KeyError::InUse),
            Slot::Programmed { session: other, .. } if *other != session => {
                Err(KeyError::OtherSession)
            }
            _ => {
                *s = Slot::Programmed { key, session };
                Ok(())
            }
        }
    }

    /// K_SET_GO: arms the slot and makes its key set the one its direction
    /// uses on its sub-stream (for TX: the transmitter switches to it).
    /// Arming an armed slot again changes nothing (its counter continues).
    pub fn go(&mut self, slot: KeySlot, session: u32) -> Result<(), KeyError> {
        let s = &mut self.slots[slot.index()];
        match s.session() {
            None => return Err(KeyError::Empty),
            Some(o) if o != session => return Err(KeyError::OtherSession),
            _ => {}
        }
        if matches!(s, Slot::Programmed { .. }) {
            if let Slot::Programmed { key, session } = std::mem::take(s) {
                *s = match ArmedKey::new(&key, session) {
                    Some(k) => Slot::Armed(Arc::new(k)),
                    None => Slot::Empty,
                };
            }
        }
        if !matches!(s, Slot::Armed(_)) {
            return Err(KeyError::Empty);
        }
        self.in_use[slot.direction as usize][slot.sub_stream as usize] = Some(slot.set);
        Ok(())
    }

    /// K_SET_STOP: retires (zeroizes) the slot's key; if its set was in use
    /// in that direction, that direction has no key any more. Stopping an
    /// empty slot is not an error: a stream that left SECURE has already
    /// lost its keys, and a TSM tearing it down stops every slot anyway.
    pub fn stop(&mut self, slot: KeySlot, session: u32) -> Result<(), KeyError> {
        if let Some(o) = self.slots[slot.index()].session() {
            if o != session {
                return Err(KeyError::OtherSession);
            }
        }
        self.clear(slot);
        Ok(())
    }

    fn clear(&mut self, slot: KeySlot) {
        self.slots[slot.index()] = Slot::Empty;
        let u = &mut self.in_use[slot.direction as usize][slot.sub_stream as usize];
        if *u == Some(slot.set) {
            *u = None;
        }
    }

    /// Zeroizes every key programmed in `session`; true if any was.
    pub fn end_session(&mut self, session: u32) -> bool {
        let mut any = false;
        for slot in KeySlot::all() {
            if self.slots[slot.index()].session() == Some(session) {
                self.clear(slot);
                any = true;
            }
        }
        any
    }

    /// Whether any slot holds a key.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| matches!(s, Slot::Empty))
    }

    /// The armed key of `slot`.
    pub fn armed(&self, slot: KeySlot) -> Option<&Arc<ArmedKey>> {
        match &self.slots[slot.index()] {
            Slot::Armed(k) => Some(k),
            _ => None,
        }
    }

    /// The key set `direction` uses on `sub_stream`, if its key is armed.
    pub fn in_use(&self, direction: KeyDirection, sub_stream: SubStream) -> Option<KeySet> {
        self.in_use[direction as usize][sub_stream as usize].filter(|&set| {
            self.armed(KeySlot::new(set, direction, sub_stream))
                .is_some()
        })
    }

    /// Keys for every sub-stream in both directions are armed and in use:
    /// the key condition of the SECURE state.
    pub fn ready(&self) -> bool {
        SubStream::ALL.iter().all(|&ss| {
            KeyDirection::ALL
                .iter()
                .all(|&d| self.in_use(d, ss).is_some())
        })
    }

    /// A description of every slot (for logs and tests; never the keys).
    pub fn describe(&self) -> Vec<(KeySlot, &'static str)> {
        KeySlot::all()
            .map(|s| {
                (
                    s,
                    match &self.slots[s.index()] {
                        Slot::Empty => "empty",
                        Slot::Programmed { .. } => "programmed",
                        Slot::Armed(_) => "armed",
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_go(k: &mut StreamKeys, set: KeySet, session: u32) {
        for ss in SubStream::ALL {
            for d in KeyDirection::ALL {
                let slot = KeySlot::new(set, d, ss);
                k.program(slot, IdeKey::new([set as u8 + 1; 32], 1), session)
                    .unwrap();
                k.go(slot, session).unwrap();
            }
        }
    }

    #[test]
    fn lifecycle() {
        let mut k = StreamKeys::default();
        let s = KeySlot::new(KeySet::K0, KeyDirection::Tx, SubStream::Posted);
        assert_eq!(k.go(s, 1), Err(KeyError::Empty));
        assert_eq!(k.stop(s, 1), Ok(()), "stopping an empty slot is harmless");
        k.program(s, IdeKey::new([1; 32], 5), 1).unwrap();
        assert_eq!(k.go(s, 2), Err(KeyError::OtherSession));
        k.go(s, 1).unwrap();
        assert_eq!(k.armed(s).unwrap().claim(), 5);
        assert_eq!(k.armed(s).unwrap().claim(), 6);
        k.go(s, 1).unwrap();
        assert_eq!(
            k.armed(s).unwrap().claim(),
            7,
            "a second GO keeps the counter"
        );
        assert_eq!(
            k.program(s, IdeKey::new([2; 32], 1), 1),
            Err(KeyError::InUse)
        );
        assert!(!k.ready());
        all_go(&mut k, KeySet::K1, 1);
        assert!(k.ready());
        // Refresh: K0 everywhere, then retire K1.
        for slot in KeySlot::all().filter(|s| s.set == KeySet::K0) {
            let _ = k.stop(slot, 1);
        }
        all_go(&mut k, KeySet::K0, 1);
        for slot in KeySlot::all().filter(|s| s.set == KeySet::K1) {
            k.stop(slot, 1).unwrap();
        }
        assert!(k.ready(), "retiring the old set keeps the stream keyed");
        k.stop(
            KeySlot::new(KeySet::K0, KeyDirection::Rx, SubStream::Completion),
            1,
        )
        .unwrap();
        assert!(!k.ready(), "retiring the set in use un-keys it");
        assert!(k.end_session(1));
        assert!(k.is_empty());
    }
}
