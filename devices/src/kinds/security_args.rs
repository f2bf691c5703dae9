//! The device-security options every kind takes (`trustdev serve KIND
//! --psk ...`, `trustdev vm -d KIND:psk=...`), and the security blocks they
//! build: SPDM identity, responder configuration, IDE port, TDI, DEVCAP.TEE.

use super::KindError;
use crate::security::ide::{Ide, IdeConfig};
use crate::security::tdisp::{IdeRequirement, Tdi, TdispConfig};
use crate::security::{self, cma};
use spdm_responder::{CmaDeviceName, Identity, ResponderConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// Device security options of `trustdev serve KIND` (every kind).
#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Where the device's SPDM identity (certificate chains, keys 0600) lives;
    /// generated on first use. Default: $TRUSTDEV_IDENTITY_DIR/KIND or
    /// ~/.local/share/trustdev/identity/KIND.
    #[arg(long)]
    pub identity_dir: Option<PathBuf>,
    /// A DOE mailbox with discovery only (no CMA/SPDM, hence no TDISP);
    /// DEVCAP.TEE stays set, so a TSM's connect meets a mailbox it cannot
    /// use.
    #[arg(long)]
    pub no_spdm: bool,
    /// The IDE capability: `on` (1 link stream, 2 selective streams with 1
    /// address association block each, AER), `off`, or a comma list of
    /// link=N, selective=N, assoc=N, tee-limited, flow-through,
    /// partial-header, aggregation, pcrc, cfg, no-aer, rid=BB:DD.F, segment=N.
    #[arg(long, default_value = "on")]
    pub ide: String,
    /// Record every IDE TLP of the protected link (ciphertext, MAC, counter,
    /// key set; never keys) in this new pcap file.
    #[arg(long)]
    pub ide_trace: Option<PathBuf>,
    /// TDISP (answered over the DOE mailbox's SPDM sessions): `on`, `off`,
    /// or a comma list of rid=BB:DD.F (the function's Requester ID; by
    /// default any, bound by LOCK_INTERFACE), segment=N, ide=secure|keys|none
    /// (what LOCK requires of its IDE stream; default secure, none without
    /// --ide).
    #[arg(long, default_value = "on")]
    pub tdisp: String,
    /// Clear DEVCAP.TEE (the kernel then offers no tsm/ attributes for the
    /// device unless it has IDE).
    #[arg(long)]
    pub no_tee: bool,
    /// Device Serial Number (up to 16 hex digits), in the DSN capability and
    /// in the CMA subject-alt-name of the leaf certificate. Default: derived
    /// from the socket path (nvme: from the NVMe serial number).
    #[arg(long, value_name = "HEX", value_parser = parse_dsn)]
    pub dsn: Option<u64>,
    #[command(flatten)]
    pub psk: PskArgs,
}

/// PSK session options (off unless given).
#[derive(clap::Args, Debug, Clone)]
pub struct PskArgs {
    /// Turn PSK_EXCHANGE sessions on with this pre-shared key: hex digits, or
    /// @FILE holding the raw key bytes (mode 0600 or stricter). Off by default.
    #[arg(long, value_name = "HEX|@FILE")]
    pub psk: Option<String>,
    /// The PSKHint that names the key (at most 16 bytes; a trailing `\0`
    /// stands for a NUL byte; a requester's hint with a trailing NUL matches
    /// a hint configured without it).
    #[arg(long, value_name = "STRING", requires = "psk")]
    pub psk_hint: Option<String>,
}

impl PskArgs {
    /// The responder configuration: defaults, plus the PSK if one was given.
    pub fn responder_config(&self) -> Result<ResponderConfig, String> {
        let mut cfg = ResponderConfig::default();
        if let Some(p) = &self.psk {
            let psk = spdm_responder::psk::PskEntry::from_arg(p, self.psk_hint.as_deref())
                .map_err(|e| format!("--psk: {e}"))?;
            cfg.psks.push(psk);
        }
        Ok(cfg)
    }
}

/// `--dsn HEX`: up to 16 hex digits, `0x` optional.
pub fn parse_dsn(s: &str) -> Result<u64, String> {
    let h = s.trim_start_matches("0x");
    u64::from_str_radix(h, 16)
        .ok()
        .filter(|_| !h.is_empty() && h.len() <= 16)
        .ok_or_else(|| format!("{s:?}: expected up to 16 hex digits"))
}

/// A device's security blocks, built from [`SecurityArgs`].
pub struct SecuritySetup {
    /// Its SPDM identity (None: a DOE mailbox without CMA/SPDM).
    pub identity: Option<Identity>,
    /// How its SPDM responders behave (PSK, heartbeat).
    pub config: ResponderConfig,
    /// Its IDE port, if it has one.
    pub ide: Option<Arc<Ide>>,
    /// Its TDI (TDISP over the mailbox's secured sessions), if it has one.
    pub tdi: Option<Arc<Tdi>>,
    /// DEVCAP.TEE (TDISP support).
    pub tee: bool,
}

impl SecurityArgs {
    /// The security blocks of the function named `name` served as `kind`:
    /// its SPDM identity (generated on first use; none with `--no-spdm`),
    /// the responder configuration (PSK), the IDE port, the TDI (needs
    /// SPDM) and DEVCAP.TEE.
    pub fn setup(&self, kind: &str, name: &CmaDeviceName) -> Result<SecuritySetup, KindError> {
        let identity = if self.no_spdm {
            None
        } else {
            let dir = self
                .identity_dir
                .clone()
                .unwrap_or_else(|| security::default_identity_dir(kind));
            Some(cma::load_identity(&dir, name)?)
        };
        let config = self.psk.responder_config().map_err(KindError::Security)?;
        let ide = self.ide().map_err(KindError::Security)?;
        let tdi = self.tdi(kind, ide.as_ref()).map_err(KindError::Security)?;
        Ok(SecuritySetup {
            identity,
            config,
            ide,
            tdi,
            tee: !self.no_tee,
        })
    }

    /// Checks the options that name configurations (`--ide`, `--tdisp`)
    /// without building anything.
    pub fn check(&self) -> Result<(), String> {
        IdeConfig::parse(&self.ide).map_err(|e| format!("--ide: {e}"))?;
        TdispConfig::parse(&self.tdisp, TdispConfig::default())
            .map_err(|e| format!("--tdisp: {e}"))?;
        Ok(())
    }

    /// The device's IDE port, if it has one.
    fn ide(&self) -> Result<Option<Arc<Ide>>, String> {
        let cfg = IdeConfig::parse(&self.ide).map_err(|e| format!("--ide: {e}"))?;
        let ide = cfg.map(Ide::new);
        match (&ide, &self.ide_trace) {
            (Some(ide), Some(path)) => ide
                .set_trace(path)
                .map_err(|e| format!("--ide-trace {}: {e}", path.display()))?,
            (None, Some(_)) => return Err("--ide-trace needs an IDE capability (--ide)".into()),
            _ => {}
        }
        Ok(ide)
    }

    /// The device's TDI (needs SPDM), bound to its IDE port if it has one.
    fn tdi(&self, kind: &str, ide: Option<&Arc<Ide>>) -> Result<Option<Arc<Tdi>>, String> {
        let base = TdispConfig {
            ide: if ide.is_some() {
                IdeRequirement::Secure
            } else {
                IdeRequirement::None
            },
            ..TdispConfig::default()
        };
        // Checked even without SPDM: a bad value is a mistake either way.
        let cfg = TdispConfig::parse(&self.tdisp, base).map_err(|e| format!("--tdisp: {e}"))?;
        if self.no_spdm {
            return Ok(None);
        }
        Ok(cfg.map(|c| {
            Tdi::new(
                c,
                &format!("trustdev {kind}"),
                ide.into_iter().cloned().collect(),
            )
        }))
    }
}
