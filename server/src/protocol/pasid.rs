//! The PASID/ATS/PRI extension of vfio-user (docs/VFIO-USER-PASID.md): the
//! negotiated feature set and the payloads of commands 19-26.
//!
//! Every structure is little-endian and decoded with the same bounds-checked
//! reader as the base protocol: a malformed payload is a [`ProtocolError`],
//! never a panic.

use super::{ProtocolError, Reader, Writer};
use serde_json::{Map, Value};

/// Name of the capability in the VERSION JSON.
pub const CAPABILITY: &str = "pasid";

/// Largest PASID (20 bits).
pub const PASID_MAX: u32 = (1 << 20) - 1;

/// Page granule of every address and size in the extension.
pub const PAGE: u64 = 4096;

/// Largest range one ATS_TRANSLATE may ask for.
pub const MAX_TRANSLATE: u64 = 1 << 30;

/// Largest number of entries one ATS_TRANSLATE reply may carry.
pub const MAX_TRANSLATION_ENTRIES: u32 = 512;

/// Largest PRG index (9 bits, as in PCIe Page Request Messages).
pub const MAX_PRG_INDEX: u16 = 511;

/// The extension's optional parts, as proposed by the client and accepted
/// by the server (the reply holds the intersection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidFeatures {
    /// ATS: TRANSLATED_DMA_MAP/UNMAP, ATS_TRANSLATE, ATS_INVALIDATE.
    pub ats: bool,
    /// PRI: PAGE_REQUEST, PAGE_RESPONSE (needs `ats`).
    pub pri: bool,
    /// PASID-tagged untranslated DMA: PASID_DMA_READ/WRITE.
    pub dma: bool,
}

impl PasidFeatures {
    /// Everything.
    pub const ALL: PasidFeatures = PasidFeatures {
        ats: true,
        pri: true,
        dma: true,
    };

    /// Parses the `"pasid"` member of the client's capabilities. Unknown
    /// keys are ignored (later revisions may add some); known keys must be
    /// booleans.
    pub fn from_json(v: &Value) -> Result<PasidFeatures, ProtocolError> {
        let obj = v.as_object().ok_or_else(|| {
            ProtocolError::BadVersionData("pasid capability is not an object".into())
        })?;
        let flag = |name: &str| -> Result<bool, ProtocolError> {
            match obj.get(name) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(ProtocolError::BadVersionData(format!(
                    "pasid.{name} must be a boolean"
                ))),
            }
        };
        let mut f = PasidFeatures {
            ats: flag("ats")?,
            pri: flag("pri")?,
            dma: flag("dma")?,
        };
        // PRI without ATS is meaningless (a page request resolves a failed
        // translation); drop it rather than fail the connection.
        f.pri &= f.ats;
        Ok(f)
    }

    /// The JSON value of the reply: the agreed features, each `true`
    /// (absent means not agreed). Every agreed feature was proposed as
    /// `true`, so the reply is never longer than the proposal.
    pub fn to_json(self) -> Value {
        let mut m = Map::new();
        for (name, on) in [("ats", self.ats), ("pri", self.pri), ("dma", self.dma)] {
            if on {
                m.insert(name.into(), Value::Bool(true));
            }
        }
        Value::Object(m)
    }

    /// What both sides support.
    pub fn intersect(self, other: PasidFeatures) -> PasidFeatures {
        PasidFeatures {
            ats: self.ats && other.ats,
            pri: self.pri && other.pri && self.ats && other.ats,
            dma: self.dma && other.dma,
        }
    }

    /// Whether anything was agreed.
    pub fn any(self) -> bool {
        self.ats || self.pri || self.dma
    }
}

/// Flag bits shared by the extension's requests.
pub mod flags {
    /// The PASID field is valid (else the request has no PASID).
    pub const PASID_VALID: u32 = 1 << 0;
    /// Privileged Mode Requested.
    pub const PRIV: u32 = 1 << 1;
    /// Execute Requested.
    pub const EXEC: u32 = 1 << 2;
    /// ATS_TRANSLATE: No Write (a read-only translation suffices).
    pub const NO_WRITE: u32 = 1 << 3;
    /// PAGE_REQUEST: read access needed.
    pub const READ: u32 = 1 << 3;
    /// PAGE_REQUEST: write access needed.
    pub const WRITE: u32 = 1 << 4;
    /// PAGE_REQUEST: last request of its group.
    pub const LAST: u32 = 1 << 5;
    /// ATS_INVALIDATE: every PASID (Global Invalidate).
    pub const GLOBAL: u32 = 1 << 1;
    /// ATS_INVALIDATE: the whole address space (address/size ignored).
    pub const ALL: u32 = 1 << 2;
}

/// Flag bits of a translation entry.
pub mod entry_flags {
    /// Read permitted.
    pub const R: u32 = 1 << 0;
    /// Write permitted.
    pub const W: u32 = 1 << 1;
    /// Execute permitted.
    pub const X: u32 = 1 << 2;
    /// Privileged-mode translation.
    pub const PRIV: u32 = 1 << 3;
    /// Untranslated access only: use the untranslated address (PASID DMA).
    pub const U: u32 = 1 << 4;
    /// Global mapping (valid for every PASID).
    pub const GLOBAL: u32 = 1 << 5;
    /// Every defined bit.
    pub const ALL: u32 = R | W | X | PRIV | U | GLOBAL;
}

/// Whom a request is issued for: no PASID, or a PASID with its mode bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PasidTag {
    /// The PASID (0..=PASID_MAX).
    pub pasid: u32,
    /// Privileged Mode Requested.
    pub privileged: bool,
    /// Execute Requested.
    pub exec: bool,
}

fn what_pasid(
    what: &'static str,
    flags: u32,
    pasid: u32,
) -> Result<Option<PasidTag>, ProtocolError> {
    if flags & flags::PASID_VALID == 0 {
        if pasid != 0 || flags & (flags::PRIV | flags::EXEC) != 0 {
            return Err(ProtocolError::InvalidField {
                what,
                detail: "PASID or mode bits without PASID_VALID".into(),
            });
        }
        return Ok(None);
    }
    if pasid > PASID_MAX {
        return Err(ProtocolError::InvalidField {
            what,
            detail: format!("PASID {pasid:#x} exceeds 20 bits"),
        });
    }
    Ok(Some(PasidTag {
        pasid,
        privileged: flags & flags::PRIV != 0,
        exec: flags & flags::EXEC != 0,
    }))
}

fn tag_flags(tag: Option<PasidTag>) -> (u32, u32) {
    match tag {
        None => (0, 0),
        Some(t) => {
            let mut f = flags::PASID_VALID;
            if t.privileged {
                f |= flags::PRIV;
            }
            if t.exec {
                f |= flags::EXEC;
            }
            (f, t.pasid)
        }
    }
}

fn check_pages(what: &'static str, address: u64, size: u64, max: u64) -> Result<(), ProtocolError> {
    if address % PAGE != 0 || size % PAGE != 0 || size == 0 || size > max {
        return Err(ProtocolError::InvalidField {
            what,
            detail: format!(
                "range {address:#x}+{size:#x} must be 4 KiB aligned, non-empty and at most {max:#x}"
            ),
        });
    }
    if address.checked_add(size).is_none() {
        return Err(ProtocolError::InvalidField {
            what,
            detail: format!("range {address:#x}+{size:#x} overflows"),
        });
    }
    Ok(())
}

/// ATS_TRANSLATE request (server to client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslateRequest {
    /// Requester PASID, if any.
    pub tag: Option<PasidTag>,
    /// A read-only translation suffices (No Write).
    pub no_write: bool,
    /// Untranslated start (4 KiB aligned).
    pub address: u64,
    /// Bytes (multiple of 4 KiB, at most [`MAX_TRANSLATE`]).
    pub size: u64,
}

impl TranslateRequest {
    /// Size of the payload.
    pub const SIZE: usize = 24;

    /// Decodes and validates the payload.
    pub fn decode(p: &[u8]) -> Result<Self, ProtocolError> {
        let what = "ATS_TRANSLATE";
        exact(what, p, Self::SIZE)?;
        let mut r = Reader::new(p, what);
        let f = r.u32()?;
        let pasid = r.u32()?;
        let address = r.u64()?;
        let size = r.u64()?;
        if f & !(flags::PASID_VALID | flags::PRIV | flags::EXEC | flags::NO_WRITE) != 0 {
            return Err(ProtocolError::BadFlags { what, flags: f });
        }
        let tag = what_pasid(what, f, pasid)?;
        check_pages(what, address, size, MAX_TRANSLATE)?;
        Ok(TranslateRequest {
            tag,
            no_write: f & flags::NO_WRITE != 0,
            address,
            size,
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let (mut f, pasid) = tag_flags(self.tag);
        if self.no_write {
            f |= flags::NO_WRITE;
        }
        let mut w = Writer::with_capacity(Self::SIZE);
        w.u32(f).u32(pasid).u64(self.address).u64(self.size);
        w.into_vec()
    }
}

/// One translation of an ATS_TRANSLATE reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationEntry {
    /// Untranslated start of the entry.
    pub address: u64,
    /// Translated address (meaningful when R or W is set and U is clear).
    pub translated: u64,
    /// Bytes (multiple of 4 KiB).
    pub size: u64,
    /// [`entry_flags`].
    pub flags: u32,
}

impl TranslationEntry {
    /// Encoded size.
    pub const SIZE: usize = 32;

    /// Whether the range is accessible at all (R or W).
    pub fn present(&self) -> bool {
        self.flags & (entry_flags::R | entry_flags::W) != 0
    }
}

/// Decodes an ATS_TRANSLATE reply for `req`: entries are contiguous from
/// the request address, inside the requested range, each page-granular.
pub fn decode_translation(
    p: &[u8],
    req: &TranslateRequest,
) -> Result<Vec<TranslationEntry>, ProtocolError> {
    let what = "ATS_TRANSLATE reply";
    let mut r = Reader::new(p, what);
    let count = r.u32()?;
    let _reserved = r.u32()?;
    if count == 0 || count > MAX_TRANSLATION_ENTRIES {
        return Err(ProtocolError::InvalidField {
            what,
            detail: format!("{count} entries (1..={MAX_TRANSLATION_ENTRIES} allowed)"),
        });
    }
    exact(what, p, 8 + count as usize * TranslationEntry::SIZE)?;
    let mut out = Vec::with_capacity(count as usize);
    let mut next = req.address;
    let end = req.address + req.size;
    for _ in 0..count {
        let e = TranslationEntry {
            address: r.u64()?,
            translated: r.u64()?,
            size: r.u64()?,
            flags: r.u32()?,
        };
        let _ = r.u32()?;
        if e.address != next {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!("entry at {:#x}, expected {next:#x}", e.address),
            });
        }
        check_pages(what, e.address, e.size, req.size)?;
        if e.address + e.size > end {
            return Err(ProtocolError::InvalidField {
                what,
                detail: "entry beyond the requested range".into(),
            });
        }
        if e.flags & !entry_flags::ALL != 0 {
            return Err(ProtocolError::BadFlags {
                what,
                flags: e.flags,
            });
        }
        let translated_ok = e.translated % PAGE == 0 && e.translated.checked_add(e.size).is_some();
        if e.present() && e.flags & entry_flags::U == 0 && !translated_ok {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!(
                    "translated address {:#x} unaligned or overflowing",
                    e.translated
                ),
            });
        }
        next = e.address + e.size;
        out.push(e);
    }
    Ok(out)
}

/// Encodes an ATS_TRANSLATE reply (clients).
pub fn encode_translation(entries: &[TranslationEntry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + entries.len() * TranslationEntry::SIZE);
    w.u32(entries.len() as u32).u32(0);
    for e in entries {
        w.u64(e.address)
            .u64(e.translated)
            .u64(e.size)
            .u32(e.flags)
            .u32(0);
    }
    w.into_vec()
}

/// What an ATS_INVALIDATE covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidateScope {
    /// One PASID (or requests without PASID: `None`).
    Pasid(Option<u32>),
    /// Every PASID (Global Invalidate).
    Global,
}

/// ATS_INVALIDATE request (client to server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidateRequest {
    /// Whose translations.
    pub scope: InvalidateScope,
    /// Untranslated range, or `None` for all of it.
    pub range: Option<(u64, u64)>,
}

impl InvalidateRequest {
    /// Size of the payload.
    pub const SIZE: usize = 24;

    /// Decodes and validates the payload.
    pub fn decode(p: &[u8]) -> Result<Self, ProtocolError> {
        let what = "ATS_INVALIDATE";
        exact(what, p, Self::SIZE)?;
        let mut r = Reader::new(p, what);
        let f = r.u32()?;
        let pasid = r.u32()?;
        let address = r.u64()?;
        let size = r.u64()?;
        if f & !(flags::PASID_VALID | flags::GLOBAL | flags::ALL) != 0 {
            return Err(ProtocolError::BadFlags { what, flags: f });
        }
        let scope = match (f & flags::PASID_VALID != 0, f & flags::GLOBAL != 0) {
            (true, true) => return Err(ProtocolError::BadFlags { what, flags: f }),
            (false, true) | (false, false) if pasid != 0 => {
                return Err(ProtocolError::InvalidField {
                    what,
                    detail: "PASID without PASID_VALID".into(),
                })
            }
            (false, true) => InvalidateScope::Global,
            (false, false) => InvalidateScope::Pasid(None),
            (true, false) if pasid > PASID_MAX => {
                return Err(ProtocolError::InvalidField {
                    what,
                    detail: format!("PASID {pasid:#x} exceeds 20 bits"),
                })
            }
            (true, false) => InvalidateScope::Pasid(Some(pasid)),
        };
        let range = if f & flags::ALL != 0 {
            if address != 0 || size != 0 {
                return Err(ProtocolError::ReservedField { what });
            }
            None
        } else {
            check_pages(what, address, size, u64::MAX)?;
            Some((address, size))
        };
        Ok(InvalidateRequest { scope, range })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let (mut f, pasid) = match self.scope {
            InvalidateScope::Pasid(None) => (0, 0),
            InvalidateScope::Pasid(Some(p)) => (flags::PASID_VALID, p),
            InvalidateScope::Global => (flags::GLOBAL, 0),
        };
        let (address, size) = match self.range {
            Some(r) => r,
            None => {
                f |= flags::ALL;
                (0, 0)
            }
        };
        let mut w = Writer::with_capacity(Self::SIZE);
        w.u32(f).u32(pasid).u64(address).u64(size);
        w.into_vec()
    }
}

/// PAGE_REQUEST (server to client, posted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Requester PASID, if any.
    pub tag: Option<PasidTag>,
    /// Read access needed.
    pub read: bool,
    /// Write access needed.
    pub write: bool,
    /// Last request of its group.
    pub last: bool,
    /// Page address (4 KiB aligned, untranslated).
    pub address: u64,
    /// Page Request Group index (0..=511).
    pub group: u16,
}

impl PageRequest {
    /// Size of the payload.
    pub const SIZE: usize = 24;

    /// Decodes and validates the payload.
    pub fn decode(p: &[u8]) -> Result<Self, ProtocolError> {
        let what = "PAGE_REQUEST";
        exact(what, p, Self::SIZE)?;
        let mut r = Reader::new(p, what);
        let f = r.u32()?;
        let pasid = r.u32()?;
        let address = r.u64()?;
        let group = r.u16()?;
        let rsv1 = r.u16()?;
        let rsv2 = r.u32()?;
        let known = flags::PASID_VALID
            | flags::PRIV
            | flags::EXEC
            | flags::READ
            | flags::WRITE
            | flags::LAST;
        if f & !known != 0 || f & (flags::READ | flags::WRITE) == 0 {
            return Err(ProtocolError::BadFlags { what, flags: f });
        }
        if rsv1 != 0 || rsv2 != 0 {
            return Err(ProtocolError::ReservedField { what });
        }
        if address % PAGE != 0 || group > MAX_PRG_INDEX {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!("page {address:#x} group {group}"),
            });
        }
        Ok(PageRequest {
            tag: what_pasid(what, f, pasid)?,
            read: f & flags::READ != 0,
            write: f & flags::WRITE != 0,
            last: f & flags::LAST != 0,
            address,
            group,
        })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let (mut f, pasid) = tag_flags(self.tag);
        if self.read {
            f |= flags::READ;
        }
        if self.write {
            f |= flags::WRITE;
        }
        if self.last {
            f |= flags::LAST;
        }
        let mut w = Writer::with_capacity(Self::SIZE);
        w.u32(f)
            .u32(pasid)
            .u64(self.address)
            .u16(self.group)
            .u16(0)
            .u32(0);
        w.into_vec()
    }
}

/// Response code of a PAGE_RESPONSE (PCIe PRG Response codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageResponseCode {
    /// The pages are now resident: translate again.
    Success,
    /// The request is invalid (the pages will never be available).
    InvalidRequest,
    /// Catastrophic failure: PRI stops until software intervenes.
    ResponseFailure,
}

impl PageResponseCode {
    fn raw(self) -> u16 {
        match self {
            PageResponseCode::Success => 0,
            PageResponseCode::InvalidRequest => 1,
            PageResponseCode::ResponseFailure => 0xf,
        }
    }
}

/// PAGE_RESPONSE (client to server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponse {
    /// PASID of the group answered (`None`: a group without PASID).
    pub pasid: Option<u32>,
    /// Page Request Group index.
    pub group: u16,
    /// Outcome.
    pub code: PageResponseCode,
}

impl PageResponse {
    /// Size of the payload.
    pub const SIZE: usize = 16;

    /// Decodes and validates the payload.
    pub fn decode(p: &[u8]) -> Result<Self, ProtocolError> {
        let what = "PAGE_RESPONSE";
        exact(what, p, Self::SIZE)?;
        let mut r = Reader::new(p, what);
        let f = r.u32()?;
        let pasid = r.u32()?;
        let group = r.u16()?;
        let code = r.u16()?;
        let rsv = r.u32()?;
        if f & !flags::PASID_VALID != 0 {
            return Err(ProtocolError::BadFlags { what, flags: f });
        }
        if rsv != 0 {
            return Err(ProtocolError::ReservedField { what });
        }
        let pasid = what_pasid(what, f, pasid)?.map(|t| t.pasid);
        if group > MAX_PRG_INDEX {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!("group {group} exceeds {MAX_PRG_INDEX}"),
            });
        }
        let code = match code {
            0 => PageResponseCode::Success,
            1 => PageResponseCode::InvalidRequest,
            0xf => PageResponseCode::ResponseFailure,
            other => {
                return Err(ProtocolError::InvalidField {
                    what,
                    detail: format!("response code {other:#x}"),
                })
            }
        };
        Ok(PageResponse { pasid, group, code })
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let (f, pasid) = match self.pasid {
            Some(p) => (flags::PASID_VALID, p),
            None => (0, 0),
        };
        let mut w = Writer::with_capacity(Self::SIZE);
        w.u32(f)
            .u32(pasid)
            .u16(self.group)
            .u16(self.code.raw())
            .u32(0);
        w.into_vec()
    }
}

/// PASID_DMA_READ / PASID_DMA_WRITE fixed part (server to client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidTransfer {
    /// Requester PASID (these requests always carry one).
    pub tag: PasidTag,
    /// Untranslated address in the PASID's address space.
    pub address: u64,
    /// Bytes.
    pub count: u64,
}

impl PasidTransfer {
    /// Size of the fixed part.
    pub const SIZE: usize = 24;

    /// Decodes the fixed part; returns it and the data after it.
    pub fn decode<'a>(p: &'a [u8], what: &'static str) -> Result<(Self, &'a [u8]), ProtocolError> {
        let mut r = Reader::new(p, what);
        r.require(Self::SIZE)?;
        let f = r.u32()?;
        let pasid = r.u32()?;
        let address = r.u64()?;
        let count = r.u64()?;
        if f & !(flags::PASID_VALID | flags::PRIV | flags::EXEC) != 0 {
            return Err(ProtocolError::BadFlags { what, flags: f });
        }
        let tag = what_pasid(what, f, pasid)?.ok_or(ProtocolError::InvalidField {
            what,
            detail: "PASID_VALID is required".into(),
        })?;
        if address.checked_add(count).is_none() {
            return Err(ProtocolError::InvalidField {
                what,
                detail: "range overflows".into(),
            });
        }
        Ok((
            PasidTransfer {
                tag,
                address,
                count,
            },
            r.rest(),
        ))
    }

    /// Encodes the fixed part followed by `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let (f, pasid) = tag_flags(Some(self.tag));
        let mut w = Writer::with_capacity(Self::SIZE + data.len());
        w.u32(f)
            .u32(pasid)
            .u64(self.address)
            .u64(self.count)
            .bytes(data);
        w.into_vec()
    }
}

fn exact(what: &'static str, p: &[u8], n: usize) -> Result<(), ProtocolError> {
    if p.len() != n {
        return Err(ProtocolError::PayloadSizeMismatch {
            what,
            got: p.len(),
            expected: n,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(p: u32) -> Option<PasidTag> {
        Some(PasidTag {
            pasid: p,
            privileged: false,
            exec: false,
        })
    }

    #[test]
    fn features_negotiate() {
        let v: Value = serde_json::from_str(r#"{"ats":true,"pri":true,"future":1}"#).unwrap();
        let f = PasidFeatures::from_json(&v).unwrap();
        assert_eq!(
            f,
            PasidFeatures {
                ats: true,
                pri: true,
                dma: false
            }
        );
        let pri_only: Value = serde_json::from_str(r#"{"pri":true}"#).unwrap();
        assert!(!PasidFeatures::from_json(&pri_only).unwrap().pri);
        assert!(PasidFeatures::from_json(&Value::from(1)).is_err());
        let bad: Value = serde_json::from_str(r#"{"ats":1}"#).unwrap();
        assert!(PasidFeatures::from_json(&bad).is_err());
        assert_eq!(f.to_json().to_string(), r#"{"ats":true,"pri":true}"#);
        assert_eq!(PasidFeatures::default().to_json().to_string(), "{}");
    }

    #[test]
    fn translate_roundtrip_and_reply_checks() {
        let req = TranslateRequest {
            tag: tag(5),
            no_write: true,
            address: 0x7f00_0000_0000,
            size: 0x3000,
        };
        assert_eq!(TranslateRequest::decode(&req.encode()).unwrap(), req);
        let e = |a: u64, s: u64, f: u32| TranslationEntry {
            address: a,
            translated: 0x10_0000 + a % 0x10_0000,
            size: s,
            flags: f,
        };
        let good = [
            e(0x7f00_0000_0000, 0x1000, entry_flags::R),
            e(0x7f00_0000_1000, 0x2000, 0),
        ];
        let got = decode_translation(&encode_translation(&good), &req).unwrap();
        assert_eq!(got, good);
        // A gap, an overrun, an empty reply, unknown flags.
        let gap = [e(0x7f00_0000_1000, 0x1000, entry_flags::R)];
        assert!(decode_translation(&encode_translation(&gap), &req).is_err());
        let over = [e(0x7f00_0000_0000, 0x4000, entry_flags::R)];
        assert!(decode_translation(&encode_translation(&over), &req).is_err());
        assert!(decode_translation(&encode_translation(&[]), &req).is_err());
        let flags = [e(0x7f00_0000_0000, 0x1000, 1 << 9)];
        assert!(decode_translation(&encode_translation(&flags), &req).is_err());
        // Request validation.
        let mut bad = req;
        bad.address += 1;
        assert!(TranslateRequest::decode(&bad.encode()).is_err());
        let mut p = req.encode();
        p[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(TranslateRequest::decode(&p).is_err(), "PASID > 20 bits");
        p = req.encode();
        p[0] = 0;
        assert!(TranslateRequest::decode(&p).is_err(), "PASID without VALID");
    }

    #[test]
    fn invalidate_page_request_response() {
        for r in [
            InvalidateRequest {
                scope: InvalidateScope::Pasid(Some(3)),
                range: Some((0x1000, 0x2000)),
            },
            InvalidateRequest {
                scope: InvalidateScope::Global,
                range: None,
            },
            InvalidateRequest {
                scope: InvalidateScope::Pasid(None),
                range: Some((0, 0x1000)),
            },
        ] {
            assert_eq!(InvalidateRequest::decode(&r.encode()).unwrap(), r);
        }
        let mut p = InvalidateRequest {
            scope: InvalidateScope::Global,
            range: None,
        }
        .encode();
        p[0] |= flags::PASID_VALID as u8;
        assert!(InvalidateRequest::decode(&p).is_err());
        let pr = PageRequest {
            tag: tag(9),
            read: true,
            write: true,
            last: true,
            address: 0x5000,
            group: 511,
        };
        assert_eq!(PageRequest::decode(&pr.encode()).unwrap(), pr);
        let rsp = PageResponse {
            pasid: Some(9),
            group: 511,
            code: PageResponseCode::ResponseFailure,
        };
        assert_eq!(PageResponse::decode(&rsp.encode()).unwrap(), rsp);
        let mut p = rsp.encode();
        p[10] = 7;
        assert!(PageResponse::decode(&p).is_err(), "unknown code");
        let mut p = rsp.encode();
        p[8..10].copy_from_slice(&512u16.to_le_bytes());
        assert!(PageResponse::decode(&p).is_err(), "group > 511");
        assert!(PageResponse::decode(&[0; 15]).is_err());
    }

    #[test]
    fn pasid_transfer() {
        let t = PasidTransfer {
            tag: PasidTag {
                pasid: 1,
                privileged: true,
                exec: false,
            },
            address: 0x1000,
            count: 3,
        };
        let p = t.encode(b"abc");
        let (d, data) = PasidTransfer::decode(&p, "x").unwrap();
        assert_eq!((d, data), (t, &b"abc"[..]));
        let mut p = t.encode(&[]);
        p[0] = 0;
        p[4] = 0;
        assert!(PasidTransfer::decode(&p, "x").is_err(), "PASID required");
    }
}
