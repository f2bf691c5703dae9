//! What TDISP a device offers (`--tdisp SPEC`).

use super::super::ide::config::parse_bdf;
use spdm_responder::tdisp::lock_flags;
use thiserror::Error;

/// What LOCK_INTERFACE_REQUEST requires of the IDE stream named by its
/// DEFAULT_STREAM_ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeRequirement {
    /// An enabled selective stream with that Stream ID in the SECURE state
    /// (a device served over vfio-user: the TSM enabled the stream through
    /// configuration space).
    Secure,
    /// Keys for every sub-stream in both directions of that Stream ID
    /// programmed and armed by IDE_KM (`trustdev spdm-responder`, which has
    /// no configuration space to enable a stream in).
    KeysArmed,
    /// None (TDISP without IDE, for testing the state machine alone).
    None,
}

/// A device's TDISP configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdispConfig {
    /// The function's Requester ID. vfio-user does not tell a server where
    /// the guest put the device, so unless configured the TDI accepts any
    /// INTERFACE_ID while CONFIG_UNLOCKED and is bound to the one
    /// LOCK_INTERFACE named until STOP.
    pub rid: Option<u16>,
    /// The function's segment (checked when an INTERFACE_ID says its
    /// segment is valid).
    pub segment: u8,
    /// What LOCK requires of IDE.
    pub ide: IdeRequirement,
    /// LOCK_INTERFACE_FLAGS_SUPPORTED.
    pub lock_flags: u16,
}

impl Default for TdispConfig {
    fn default() -> Self {
        TdispConfig {
            rid: None,
            segment: 0,
            ide: IdeRequirement::Secure,
            lock_flags: lock_flags::NO_FW_UPDATE
                | lock_flags::SYSTEM_CACHE_LINE_SIZE
                | lock_flags::LOCK_MSIX,
        }
    }
}

/// A bad `--tdisp` specification.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TdispConfigError {
    /// Unknown key.
    #[error(
        "unknown TDISP option {0:?} (known: on, off, rid=BB:DD.F, segment=N, ide=secure|keys|none)"
    )]
    UnknownKey(String),
    /// A bad value.
    #[error("TDISP option {key}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
}

impl TdispConfig {
    /// Parses `--tdisp SPEC`: `off`, `on` (the defaults) or a comma list of
    /// `rid=BB:DD.F`, `segment=N`, `ide=secure|keys|none` applied to
    /// `base`. `Ok(None)` for `off`.
    pub fn parse(spec: &str, base: TdispConfig) -> Result<Option<TdispConfig>, TdispConfigError> {
        let mut c = base;
        let bad = |k: &str, why: &str| TdispConfigError::BadValue {
            key: k.into(),
            why: why.into(),
        };
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            match k {
                "off" | "none" => return Ok(None),
                "on" => {}
                "rid" => c.rid = Some(parse_bdf(v).ok_or_else(|| bad(k, "expected BB:DD.F"))?),
                "segment" => {
                    c.segment = v
                        .parse()
                        .map_err(|_| bad(k, &format!("{v:?} is not a number 0-255")))?
                }
                "ide" => {
                    c.ide = match v {
                        "secure" => IdeRequirement::Secure,
                        "keys" => IdeRequirement::KeysArmed,
                        "none" => IdeRequirement::None,
                        _ => return Err(bad(k, "expected secure, keys or none")),
                    }
                }
                other => return Err(TdispConfigError::UnknownKey(other.into())),
            }
        }
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let d = TdispConfig::default();
        assert_eq!(TdispConfig::parse("on", d.clone()), Ok(Some(d.clone())));
        assert_eq!(TdispConfig::parse("off", d.clone()), Ok(None));
        let c = TdispConfig::parse("rid=be:1d.7,ide=keys,segment=2", d.clone())
            .unwrap()
            .unwrap();
        assert_eq!(c.rid, Some(0xbeef));
        assert_eq!(c.ide, IdeRequirement::KeysArmed);
        assert_eq!(c.segment, 2);
        assert!(TdispConfig::parse("rid=zz", d.clone()).is_err());
        assert!(TdispConfig::parse("ide=maybe", d.clone()).is_err());
        assert!(matches!(
            TdispConfig::parse("p2p", d),
            Err(TdispConfigError::UnknownKey(_))
        ));
    }
}
