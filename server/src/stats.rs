//! Message counters, for diagnostics and device-efficiency benchmarks
//! (messages per I/O).

use std::sync::atomic::{AtomicU64, Ordering};

const SLOTS: usize = 19;

/// Live per-command message counters of a server.
#[derive(Debug, Default)]
pub struct Stats {
    by_command: [AtomicU64; SLOTS],
    errors: AtomicU64,
}

impl Stats {
    pub(crate) fn count(&self, command: u16) {
        let slot = (command as usize).min(SLOTS - 1);
        self.by_command[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Commands received with this command number (unknown ones share slot 18+).
    pub fn received(&self, command: u16) -> u64 {
        self.by_command[(command as usize).min(SLOTS - 1)].load(Ordering::Relaxed)
    }

    /// All commands received.
    pub fn total(&self) -> u64 {
        self.by_command
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests answered with an error (or dropped as invalid).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// One-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} messages: {} region reads, {} region writes, {} errors",
            self.total(),
            self.received(9),
            self.received(10) + self.received(15),
            self.errors()
        )
    }
}
