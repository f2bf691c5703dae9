//! `trustdev serve accel` options.

use super::exec::Limits;
use super::AccelConfig;

/// Options of the accelerator (`trustdev serve accel --help`).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AccelArgs {
    /// Work queues (1..=8), one MSI-X vector each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub queues: u8,
    /// Worker threads (queue q is served by worker q % workers).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub workers: u8,
    /// Max PASID Width advertised in the PASID capability (1..=20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub pasid_bits: u8,
    /// Outstanding Page Request Capacity advertised in the PRI capability.
    #[arg(long, default_value_t = 512)]
    pub pri_capacity: u32,
    /// Largest data length of one descriptor, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_xfer: u32,
    /// Largest AES-GCM length of one descriptor, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_crypto: u32,
}

impl Default for AccelArgs {
    fn default() -> Self {
        AccelArgs {
            queues: 8,
            workers: 2,
            pasid_bits: 20,
            pri_capacity: 512,
            max_xfer: 16 << 20,
            max_crypto: 1 << 20,
        }
    }
}

impl AccelArgs {
    /// The device configuration (port type and security added by the caller).
    pub fn config(&self) -> AccelConfig {
        AccelConfig {
            queues: usize::from(self.queues),
            workers: usize::from(self.workers),
            limits: Limits {
                max_xfer: self.max_xfer.max(4096),
                max_crypto: self.max_crypto.max(4096),
            },
            pasid_bits: self.pasid_bits,
            pri_capacity: self.pri_capacity,
            ..AccelConfig::default()
        }
    }
}
