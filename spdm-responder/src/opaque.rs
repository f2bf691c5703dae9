//! Secured-message opaque data (DSP0277 "Secured Messages opaque data"): the
//! version negotiation elements carried in KEY_EXCHANGE / PSK_EXCHANGE.

/// OtherParamsSupport opaque data formats.
pub const FMT_NONE: u8 = 0;
pub const FMT0: u8 = 1;
pub const FMT1: u8 = 2;

const SPEC_ID_DMTF: u32 = 0x444D_5446;
const SM_DATA_VERSION: u8 = 1;
const SM_ID_VERSION_SELECTION: u8 = 0;
const SM_ID_SUPPORTED_VERSION: u8 = 1;

/// Secured message versions (spdm_version_number_t layout).
pub const SECURED_V10: u16 = 0x1000;
pub const SECURED_V11: u16 = 0x1100;

fn wrap(fmt: u8, elements: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    if fmt == FMT1 {
        v.push(elements.len() as u8);
        v.extend_from_slice(&[0, 0, 0]);
    } else {
        v.extend_from_slice(&SPEC_ID_DMTF.to_le_bytes());
        v.push(1);
        v.push(elements.len() as u8);
        v.extend_from_slice(&[0, 0]);
    }
    for data in elements {
        v.push(0); // id DMTF
        v.push(0); // vendor_len
        v.extend_from_slice(&(data.len() as u16).to_le_bytes());
        v.extend_from_slice(data);
        while v.len() % 4 != 0 {
            v.push(0);
        }
    }
    v
}

/// The requester's SupportedVersion element.
pub fn supported_versions(fmt: u8, versions: &[u16]) -> Vec<u8> {
    let mut d = vec![
        SM_DATA_VERSION,
        SM_ID_SUPPORTED_VERSION,
        versions.len() as u8,
    ];
    for v in versions {
        d.extend_from_slice(&v.to_le_bytes());
    }
    wrap(fmt, &[d])
}

/// The responder's VersionSelection element.
pub fn version_selection(fmt: u8, version: u16) -> Vec<u8> {
    let mut d = vec![SM_DATA_VERSION, SM_ID_VERSION_SELECTION];
    d.extend_from_slice(&version.to_le_bytes());
    wrap(fmt, &[d])
}

/// Parse the DMTF elements' data; `None` if malformed.
pub fn elements(fmt: u8, data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (count, mut pos) = if fmt == FMT1 {
        (*data.first()? as usize, 4usize)
    } else {
        if data.len() < 8
            || u32::from_le_bytes([data[0], data[1], data[2], data[3]]) != SPEC_ID_DMTF
        {
            return None;
        }
        (data[5] as usize, 8usize)
    };
    if data.len() < pos {
        return None;
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let id = *data.get(pos)?;
        let vlen = *data.get(pos + 1)? as usize;
        let lpos = pos + 2 + vlen;
        let len = u16::from_le_bytes([*data.get(lpos)?, *data.get(lpos + 1)?]) as usize;
        let body = data.get(lpos + 2..lpos + 2 + len)?;
        if id == 0 {
            out.push(body.to_vec());
        }
        pos = lpos + 2 + len;
        pos = pos.checked_add(3)? & !3;
    }
    Some(out)
}

/// The versions a requester supports, if the opaque data carries them.
pub fn parse_supported_versions(fmt: u8, data: &[u8]) -> Option<Vec<u16>> {
    for e in elements(fmt, data)? {
        if e.len() >= 3 && e[0] == SM_DATA_VERSION && e[1] == SM_ID_SUPPORTED_VERSION {
            let n = e[2] as usize;
            let list = e.get(3..3 + 2 * n)?;
            return Some(
                list.chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            );
        }
    }
    None
}

/// The version a responder selected, if present.
pub fn parse_version_selection(fmt: u8, data: &[u8]) -> Option<u16> {
    for e in elements(fmt, data)? {
        if e.len() >= 4 && e[0] == SM_DATA_VERSION && e[1] == SM_ID_VERSION_SELECTION {
            return Some(u16::from_le_bytes([e[2], e[3]]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip() {
        for fmt in [FMT0, FMT1] {
            let s = supported_versions(fmt, &[SECURED_V10, SECURED_V11]);
            assert_eq!(s.len() % 4, 0);
            assert_eq!(
                parse_supported_versions(fmt, &s).unwrap(),
                vec![SECURED_V10, SECURED_V11]
            );
            let v = version_selection(fmt, SECURED_V11);
            assert_eq!(parse_version_selection(fmt, &v), Some(SECURED_V11));
        }
        assert!(elements(FMT1, &[5, 0, 0, 0, 0]).is_none());
    }
}
