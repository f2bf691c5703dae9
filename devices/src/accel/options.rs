//! `trustdev serve accel` options (`trustdev vm -d accel:KEY=VALUE`).

use super::exec::Limits;
use super::{regs, AccelConfig};
use thiserror::Error;

/// The largest `--max-crypto`: every worker keeps a buffer this big.
pub const MAX_CRYPTO_LIMIT: u32 = 64 << 20;

/// Options of the accelerator (`trustdev serve accel --help`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AccelArgs {
    /// Work queues (1..=8), one MSI-X vector each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=regs::MAX_QUEUES as i64))]
    pub queues: u8,
    /// Worker threads (1..=queues; queue q is served by worker q % workers).
    /// Default: 2, or 1 with one queue.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=regs::MAX_QUEUES as i64))]
    pub workers: Option<u8>,
    /// Max PASID Width advertised in the PASID capability (1..=20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub pasid_bits: u8,
    /// Outstanding Page Request Capacity advertised in the PRI capability
    /// (at least 1).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub pri_capacity: u32,
    /// No PASID capability: descriptors tagged with a PASID fail, the
    /// kernel cannot bind a process address space (SVA).
    #[arg(long)]
    pub no_pasid: bool,
    /// No ATS capability (needs --no-pri too: page requests are part of ATS).
    #[arg(long)]
    pub no_ats: bool,
    /// No PRI capability: a translation fault fails the descriptor instead
    /// of asking the host to page in.
    #[arg(long)]
    pub no_pri: bool,
    /// Largest data length of one descriptor, in bytes (at least 4096).
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u32).range(4096..))]
    pub max_xfer: u32,
    /// Largest AES-GCM length of one descriptor, in bytes (4096..=64 MiB;
    /// each worker keeps a buffer this big).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(4096..=MAX_CRYPTO_LIMIT as i64))]
    pub max_crypto: u32,
}

/// Accelerator options that do not fit together.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AccelOptionsError {
    /// More workers than queues.
    #[error("--workers {workers} exceeds --queues {queues} (a worker serves whole queues)")]
    Workers {
        /// Workers asked for.
        workers: u8,
        /// Queues.
        queues: u8,
    },
    /// PRI without ATS.
    #[error("--no-ats needs --no-pri (page requests are part of ATS)")]
    PriNeedsAts,
}

impl Default for AccelArgs {
    fn default() -> Self {
        AccelArgs {
            queues: 8,
            workers: None,
            pasid_bits: 20,
            pri_capacity: 512,
            no_pasid: false,
            no_ats: false,
            no_pri: false,
            max_xfer: 16 << 20,
            max_crypto: 1 << 20,
        }
    }
}

impl AccelArgs {
    /// The device configuration (port type and security added by the
    /// caller), or why these options do not fit together.
    pub fn config(&self) -> Result<AccelConfig, AccelOptionsError> {
        let workers = match self.workers {
            Some(w) if w > self.queues => {
                return Err(AccelOptionsError::Workers {
                    workers: w,
                    queues: self.queues,
                })
            }
            Some(w) => w,
            None => self.queues.min(2),
        };
        if self.no_ats && !self.no_pri {
            return Err(AccelOptionsError::PriNeedsAts);
        }
        Ok(AccelConfig {
            queues: usize::from(self.queues),
            workers: usize::from(workers),
            limits: Limits {
                max_xfer: self.max_xfer,
                max_crypto: self.max_crypto,
            },
            pasid_bits: (!self.no_pasid).then_some(self.pasid_bits),
            ats: !self.no_ats,
            pri_capacity: (!self.no_pri).then_some(self.pri_capacity),
            ..AccelConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn parse(argv: &[&str]) -> Result<AccelArgs, String> {
        let cmd = AccelArgs::augment_args(clap::Command::new("accel"));
        let m = cmd
            .try_get_matches_from(std::iter::once("accel").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        AccelArgs::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_device_defaults() {
        assert_eq!(parse(&[]).unwrap(), AccelArgs::default());
        let c = AccelArgs::default().config().unwrap();
        let d = AccelConfig::default();
        assert_eq!(
            (c.queues, c.workers, c.pasid_bits, c.ats, c.pri_capacity),
            (d.queues, d.workers, d.pasid_bits, d.ats, d.pri_capacity)
        );
    }

    #[test]
    fn options_reach_the_config() {
        let a = parse(&[
            "--queues",
            "3",
            "--workers",
            "3",
            "--pasid-bits",
            "8",
            "--pri-capacity",
            "16",
            "--max-xfer",
            "8192",
        ])
        .unwrap();
        let c = a.config().unwrap();
        assert_eq!((c.queues, c.workers), (3, 3));
        assert_eq!(c.pasid_bits, Some(8));
        assert_eq!(c.pri_capacity, Some(16));
        assert_eq!(c.limits.max_xfer, 8192);
        let c = parse(&["--no-pasid", "--no-ats", "--no-pri", "--queues", "1"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!((c.pasid_bits, c.ats, c.pri_capacity), (None, false, None));
        assert_eq!((c.queues, c.workers), (1, 1), "one worker for one queue");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--queues", "0"][..],
            &["--queues", "9"],
            &["--pasid-bits", "21"],
            &["--pri-capacity", "0"],
            &["--max-xfer", "100"],
            &["--max-crypto", "1000000000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse(&["--queues", "2", "--workers", "4"])
            .unwrap()
            .config()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--workers 4 exceeds --queues 2 (a worker serves whole queues)"
        );
        assert_eq!(
            parse(&["--no-ats"]).unwrap().config().unwrap_err(),
            AccelOptionsError::PriNeedsAts
        );
    }
}
