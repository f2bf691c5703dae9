//! What IDE a device offers: the capability bits and the number of streams
//! and address-association blocks, chosen per device (`--ide SPEC`).

use super::regs::cap;
use thiserror::Error;

/// A device's IDE capability configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdeConfig {
    /// Link IDE stream register blocks (one per supported TC; 0: no Link IDE).
    pub link_streams: u8,
    /// Selective IDE stream register blocks (at least 1).
    pub selective_streams: u16,
    /// Address-association blocks per selective stream (the same in every
    /// stream, as Linux requires).
    pub addr_assoc: u8,
    /// TEE-Limited streams supported.
    pub tee_limited: bool,
    /// Flow-Through IDE streams supported (a switch feature).
    pub flow_through: bool,
    /// Partial header encryption supported (advertised; the link model
    /// always encrypts the whole payload and no header bytes).
    pub partial_header: bool,
    /// Aggregation supported (advertised; the link model puts one MAC on
    /// every TLP).
    pub aggregation: bool,
    /// PCRC supported (advertised; not computed by the link model).
    pub pcrc: bool,
    /// Selective IDE for configuration requests supported (advertised;
    /// configuration requests never travel through the link model).
    pub sel_cfg: bool,
    /// Add an AER capability (IDE Check Failed is reported there).
    pub aer: bool,
    /// Requester ID of the function (bus << 8 | devfn) for QUERY_RESP and
    /// TLP headers: vfio-user does not tell a server where the guest put
    /// the device, so it is configured (default 0).
    pub rid: u16,
    /// PCI segment for QUERY_RESP.
    pub segment: u8,
}

impl Default for IdeConfig {
    fn default() -> Self {
        IdeConfig {
            link_streams: 1,
            selective_streams: 2,
            addr_assoc: 1,
            tee_limited: false,
            flow_through: false,
            partial_header: false,
            aggregation: false,
            pcrc: false,
            sel_cfg: false,
            aer: true,
            rid: 0,
            segment: 0,
        }
    }
}

/// A bad `--ide` specification.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdeConfigError {
    /// Unknown key.
    #[error("unknown IDE option {0:?} (known: off, link=N, selective=N, assoc=N, tee-limited, flow-through, partial-header, aggregation, pcrc, cfg, no-aer, rid=BB:DD.F, segment=N)")]
    UnknownKey(String),
    /// A value out of range or not a number.
    #[error("IDE option {key}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
}

fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, IdeConfigError> {
    v.parse().map_err(|_| IdeConfigError::BadValue {
        key: key.into(),
        why: format!("{v:?} is not a number"),
    })
}

fn bad(key: &str, why: &str) -> IdeConfigError {
    IdeConfigError::BadValue {
        key: key.into(),
        why: why.into(),
    }
}

impl IdeConfig {
    /// Parses `--ide SPEC`: `off`, `on` (the defaults) or a comma-separated
    /// list of `link=N`, `selective=N`, `assoc=N`, `tee-limited`,
    /// `flow-through`, `partial-header`, `aggregation`, `pcrc`, `cfg`,
    /// `no-aer`, `rid=BB:DD.F`, `segment=N` applied to the defaults.
    /// `Ok(None)` for `off`.
    pub fn parse(spec: &str) -> Result<Option<IdeConfig>, IdeConfigError> {
        let mut c = IdeConfig::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            match k {
                "off" | "none" => return Ok(None),
                "on" => {}
                "link" => c.link_streams = num(k, v)?,
                "selective" => c.selective_streams = num(k, v)?,
                "assoc" => c.addr_assoc = num(k, v)?,
                "tee-limited" => c.tee_limited = true,
                "flow-through" => c.flow_through = true,
                "partial-header" => c.partial_header = true,
                "aggregation" => c.aggregation = true,
                "pcrc" => c.pcrc = true,
                "cfg" => c.sel_cfg = true,
                "no-aer" => c.aer = false,
                "segment" => c.segment = num(k, v)?,
                "rid" => c.rid = parse_bdf(v).ok_or_else(|| bad(k, "expected BB:DD.F"))?,
                other => return Err(IdeConfigError::UnknownKey(other.into())),
            }
        }
        c.validate()?;
        Ok(Some(c))
    }

    /// Checks the counts against the register fields (and a size that fits
    /// configuration space).
    pub fn validate(&self) -> Result<(), IdeConfigError> {
        if self.link_streams > 8 {
            return Err(bad("link", "at most 8 link streams (one per TC)"));
        }
        if self.selective_streams == 0 || self.selective_streams > 256 {
            return Err(bad("selective", "1 to 256 selective streams"));
        }
        if self.addr_assoc > 15 {
            return Err(bad("assoc", "at most 15 address association blocks"));
        }
        if self.body_len() > 2048 {
            return Err(bad(
                "selective",
                "the capability would not fit in configuration space",
            ));
        }
        Ok(())
    }

    /// Dwords of one selective stream block.
    pub fn sel_block_dwords(&self) -> usize {
        5 + 3 * self.addr_assoc as usize
    }

    /// Dword index of selective block `i`.
    pub fn sel_block_start(&self, i: usize) -> usize {
        2 + 2 * self.link_streams as usize + i * self.sel_block_dwords()
    }

    /// Dwords of the capability body (everything after the header).
    pub fn body_dwords(&self) -> usize {
        self.sel_block_start(self.selective_streams as usize)
    }

    /// Bytes of the capability body.
    pub fn body_len(&self) -> usize {
        4 * self.body_dwords()
    }

    /// The IDE Capability register.
    pub fn cap_register(&self) -> u32 {
        let mut v = cap::SELECTIVE | cap::IDE_KM;
        if self.link_streams > 0 {
            v |= cap::LINK | (u32::from(self.link_streams - 1) << cap::LINK_TC_NUM_SHIFT);
        }
        v |= u32::from(self.selective_streams - 1) << cap::SEL_NUM_SHIFT;
        for (on, bit) in [
            (self.flow_through, cap::FLOWTHROUGH),
            (self.partial_header, cap::PARTIAL_HEADER),
            (self.aggregation, cap::AGGREGATION),
            (self.pcrc, cap::PCRC),
            (self.sel_cfg, cap::SEL_CFG),
            (self.tee_limited, cap::TEE_LIMITED),
        ] {
            if on {
                v |= bit;
            }
        }
        v
    }
}

/// Parses `BB:DD.F` into a requester ID.
pub fn parse_bdf(s: &str) -> Option<u16> {
    let (bus, rest) = s.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let bus = u16::from_str_radix(bus, 16).ok().filter(|b| *b < 256)?;
    let dev = u16::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u16::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some(bus << 8 | dev << 3 | func)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(IdeConfig::parse("off"), Ok(None));
        assert_eq!(IdeConfig::parse("on"), Ok(Some(IdeConfig::default())));
        let c = IdeConfig::parse("link=0,selective=4,assoc=2,tee-limited,rid=01:02.3")
            .unwrap()
            .unwrap();
        assert_eq!(c.link_streams, 0);
        assert_eq!(c.selective_streams, 4);
        assert_eq!(c.rid, 0x0113);
        assert_eq!(c.body_dwords(), 2 + 4 * 11);
        assert_eq!(
            c.cap_register(),
            cap::SELECTIVE | cap::IDE_KM | (3 << 16) | cap::TEE_LIMITED
        );
        assert!(IdeConfig::parse("bogus").is_err());
        assert!(IdeConfig::parse("selective=0").is_err());
        assert!(IdeConfig::parse("assoc=16").is_err());
        assert!(
            IdeConfig::parse("selective=256,assoc=15").is_err(),
            "too big"
        );
        // The default: one link stream (TC num 0), two selective streams.
        let d = IdeConfig::default();
        assert_eq!(d.cap_register(), 0x0001_0043);
        assert_eq!(d.body_dwords(), 20);
    }
}
