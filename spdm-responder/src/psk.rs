//! Pre-shared keys for PSK_EXCHANGE sessions.
//!
//! A responder has none unless its user provides one: [`PskEntry::from_arg`]
//! takes the `--psk HEX|@FILE` and `--psk-hint STRING` command-line values. A
//! key file must not be accessible by group or others (mode 0600 or stricter).
//! Key bytes live in [`Zeroizing`] buffers and never appear in `Debug` output
//! or logs.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::PskError;

/// Longest PSKHint accepted (as libspdm's LIBSPDM_PSK_MAX_HINT_LENGTH).
pub const MAX_PSK_HINT: usize = 16;
/// Longest key accepted.
pub const MAX_PSK_LEN: usize = 256;

/// A pre-shared key and the hint that selects it.
#[derive(Clone)]
pub struct PskEntry {
    /// PSKHint a requester names this key by (may be empty).
    pub hint: Vec<u8>,
    /// The key (zeroized on drop).
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PskEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PskEntry {{ hint: {:?}, key: <redacted> }}",
            String::from_utf8_lossy(&self.hint)
        )
    }
}

impl PskEntry {
    /// A key and its hint.
    pub fn new(hint: &[u8], key: Zeroizing<Vec<u8>>) -> Result<Self, PskError> {
        if key.is_empty() || key.len() > MAX_PSK_LEN {
            return Err(PskError::KeyLength(key.len()));
        }
        if hint.len() > MAX_PSK_HINT {
            return Err(PskError::HintLength(hint.len()));
        }
        Ok(Self {
            hint: hint.to_vec(),
            key,
        })
    }

    /// The PSK and hint DMTF's spdm-emu uses by default ("TestPskData\0",
    /// "TestPskHint\0"). The key is public: for interoperability tests with
    /// DMTF's tools only, never a default of anything here.
    pub fn dmtf_test() -> Self {
        Self {
            hint: b"TestPskHint\0".to_vec(),
            key: Zeroizing::new(b"TestPskData\0".to_vec()),
        }
    }

    /// From the command line: `psk` is the key in hex, or `@PATH` of a file
    /// holding the raw key bytes (mode 0600 or stricter, else refused);
    /// `hint` is the PSKHint as a string (empty when absent); a trailing `\0`
    /// (backslash, zero) stands for a NUL byte, as DMTF's tools send their
    /// hint "TestPskHint\0".
    pub fn from_arg(psk: &str, hint: Option<&str>) -> Result<Self, PskError> {
        let key = match psk.strip_prefix('@') {
            Some(path) => read_key_file(Path::new(path))?,
            None => decode_hex(psk)?,
        };
        let hint = hint.unwrap_or("");
        let hint = match hint.strip_suffix("\\0") {
            Some(h) => [h.as_bytes(), &[0]].concat(),
            None => hint.as_bytes().to_vec(),
        };
        Self::new(&hint, key)
    }

    /// Whether a requester's PSKHint names this key. A hint sent as a
    /// NUL-terminated C string (as DMTF's tools send "TestPskHint\0") names
    /// the key configured without the NUL.
    pub fn matches(&self, hint: &[u8]) -> bool {
        hint == self.hint.as_slice()
            || (hint.last() == Some(&0) && &hint[..hint.len() - 1] == self.hint.as_slice())
    }
}

fn decode_hex(s: &str) -> Result<Zeroizing<Vec<u8>>, PskError> {
    let digits = s.trim();
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    if digits.len() % 2 != 0 || digits.is_empty() {
        return Err(PskError::Hex);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
    for pair in digits.as_bytes().chunks(2) {
        let hi = (pair[0] as char).to_digit(16).ok_or(PskError::Hex)?;
        let lo = (pair[1] as char).to_digit(16).ok_or(PskError::Hex)?;
        out.push((hi << 4 | lo) as u8);
    }
    Ok(out)
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PskError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| PskError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mode = f.metadata().map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(PskError::Permissions {
            path: path.display().to_string(),
            mode: mode & 0o777,
        });
    }
    let mut key = Zeroizing::new(Vec::new());
    f.read_to_end(&mut key).map_err(io)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn hex_and_hint() {
        let p = PskEntry::from_arg("0x5465737450736b4461746100", Some("TestPskHint")).unwrap();
        assert_eq!(p.key.as_slice(), b"TestPskData\0");
        assert!(p.matches(b"TestPskHint"));
        assert!(p.matches(b"TestPskHint\0"));
        assert!(!p.matches(b"TestPskHin"));
        assert!(!p.matches(b""));
        let nul = PskEntry::from_arg("00", Some("TestPskHint\\0")).unwrap();
        assert_eq!(nul.hint, b"TestPskHint\0");
        assert!(PskEntry::from_arg("abc", None).is_err());
        assert!(PskEntry::from_arg("zz", None).is_err());
        assert!(PskEntry::from_arg("", None).is_err());
        assert!(PskEntry::from_arg("00", Some("seventeen bytes!!")).is_err());
        // The key never shows in Debug output.
        let d = format!("{p:?}");
        assert!(!d.contains("TestPskData") && !d.contains("54657374"), "{d}");
    }

    #[test]
    fn key_file_must_be_private() {
        let path = std::env::temp_dir().join(format!("psk-test-{}", std::process::id()));
        std::fs::write(&path, b"\x01\x02\x03secret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let arg = format!("@{}", path.display());
        let e = PskEntry::from_arg(&arg, None).unwrap_err();
        assert!(
            matches!(e, PskError::Permissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("0644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = PskEntry::from_arg(&arg, Some("h")).unwrap();
        assert_eq!(p.key.as_slice(), b"\x01\x02\x03secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(PskEntry::from_arg(&arg, None).is_ok());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            PskEntry::from_arg(&arg, None),
            Err(PskError::Io { .. })
        ));
    }
}
