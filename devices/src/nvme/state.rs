//! Controller state beside the queues: features, health counters, the error
//! log and asynchronous events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Current values of the features the controller implements.
#[derive(Clone, Debug)]
pub struct Features {
    /// Arbitration (01h) CDW11.
    pub arbitration: u32,
    /// Power Management (02h): PS | WH << 5.
    pub power_mgmt: u32,
    /// Over-temperature thresholds (Kelvin), composite and sensors 1-8.
    pub temp_over: [u16; 9],
    /// Under-temperature thresholds.
    pub temp_under: [u16; 9],
    /// Error Recovery (05h) CDW11.
    pub error_recovery: u32,
    /// Number of Queues (07h): allocated (I/O SQs, I/O CQs), 1-based; None
    /// until the host sets it (all queues are then available).
    pub num_queues: Option<(u16, u16)>,
    /// Write Atomicity Normal (0Ah).
    pub write_atomicity: u32,
    /// Asynchronous Event Configuration (0Bh).
    pub async_event_cfg: u32,
    /// Timestamp (0Eh): milliseconds since the epoch when set, and when.
    pub timestamp: Option<(u64, Instant)>,
    /// Keep Alive Timer (0Fh), milliseconds.
    pub kato: u32,
    /// Host Behavior Support (16h) data structure.
    pub host_behavior: [u8; 512],
}

/// WCTEMP reported in Identify Controller (Kelvin): 70 °C.
pub const WCTEMP: u16 = 343;
/// CCTEMP: 85 °C.
pub const CCTEMP: u16 = 358;

impl Default for Features {
    fn default() -> Self {
        Features::new()
    }
}

impl Features {
    /// Defaults after a controller reset (interrupt coalescing lives with
    /// the queues: [`super::queue::Coalescing`]).
    pub fn new() -> Features {
        Features {
            arbitration: 0,
            power_mgmt: 0,
            temp_over: [WCTEMP, 0, 0, 0, 0, 0, 0, 0, 0],
            temp_under: [0; 9],
            error_recovery: 0,
            num_queues: None,
            write_atomicity: 0,
            async_event_cfg: 0,
            timestamp: None,
            kato: 0,
            host_behavior: [0; 512],
        }
    }

    /// The Timestamp feature's 8-byte data (timestamp, attributes).
    pub fn timestamp_data(&self, since_start: Instant) -> [u8; 8] {
        let (ms, origin) = match self.timestamp {
            Some((ms, at)) => (ms.wrapping_add(at.elapsed().as_millis() as u64), 1u8),
            None => (since_start.elapsed().as_millis() as u64, 0u8),
        };
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&ms.to_le_bytes()[..6]);
        // Attributes: Timestamp Origin (bits 3:1): 0 = reset, 1 = Set Features.
        b[6] = origin << 1;
        b
    }
}

/// Health counters (SMART / Health Information log).
#[derive(Debug, Default)]
pub struct Counters {
    /// 512-byte units read by the host.
    pub units_read: AtomicU64,
    /// 512-byte units written by the host.
    pub units_written: AtomicU64,
    /// Read and Compare commands completed.
    pub host_reads: AtomicU64,
    /// Write commands completed.
    pub host_writes: AtomicU64,
    /// Nanoseconds spent executing I/O commands.
    pub busy_ns: AtomicU64,
    /// Media and data integrity errors.
    pub media_errors: AtomicU64,
    /// Power cycles (controller enables).
    pub power_cycles: AtomicU64,
    /// Shutdowns that were not announced (controller reset while enabled
    /// without a shutdown notification, or the client vanishing).
    pub unsafe_shutdowns: AtomicU64,
}

impl Counters {
    /// The 512-byte SMART / Health Information log page.
    pub fn smart_log(
        &self,
        temperature_k: u16,
        critical_warning: u8,
        power_on: Instant,
        error_entries: u64,
    ) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        let put128 =
            |b: &mut [u8], at: usize, v: u128| b[at..at + 16].copy_from_slice(&v.to_le_bytes());
        b[0] = critical_warning;
        b[1..3].copy_from_slice(&temperature_k.to_le_bytes());
        b[3] = 100; // available spare
        b[4] = 10; // available spare threshold
        b[5] = 0; // percentage used
                  // Data units are thousands of 512-byte units, rounded up.
        let du = |n: u64| u128::from(n.div_ceil(1000));
        put128(&mut b, 32, du(self.units_read.load(Ordering::Relaxed)));
        put128(&mut b, 48, du(self.units_written.load(Ordering::Relaxed)));
        put128(
            &mut b,
            64,
            u128::from(self.host_reads.load(Ordering::Relaxed)),
        );
        put128(
            &mut b,
            80,
            u128::from(self.host_writes.load(Ordering::Relaxed)),
        );
        let busy_min = self.busy_ns.load(Ordering::Relaxed) / 60_000_000_000;
        put128(&mut b, 96, u128::from(busy_min));
        put128(
            &mut b,
            112,
            u128::from(self.power_cycles.load(Ordering::Relaxed)),
        );
        put128(&mut b, 128, u128::from(power_on.elapsed().as_secs() / 3600));
        put128(
            &mut b,
            144,
            u128::from(self.unsafe_shutdowns.load(Ordering::Relaxed)),
        );
        put128(
            &mut b,
            160,
            u128::from(self.media_errors.load(Ordering::Relaxed)),
        );
        put128(&mut b, 176, u128::from(error_entries));
        // Temperature sensor 1 (200..202) mirrors the composite.
        b[200..202].copy_from_slice(&temperature_k.to_le_bytes());
        b
    }
}

/// One Error Information log entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorEntry {
    /// Error count (unique, increasing).
    pub count: u64,
    /// Submission queue.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Status field (15 bits, without phase).
    pub status: u16,
    /// Parameter error location (byte | bit << 8), 0xffff if unknown.
    pub location: u16,
    /// LBA of the error, if any.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
}

/// Error Information log: the last `cap` entries, newest first.
#[derive(Debug)]
pub struct ErrorLog {
    entries: VecDeque<ErrorEntry>,
    cap: usize,
    count: u64,
}

impl ErrorLog {
    /// A log keeping `cap` entries.
    pub fn new(cap: usize) -> ErrorLog {
        ErrorLog {
            entries: VecDeque::new(),
            cap,
            count: 0,
        }
    }

    /// Records an error; returns its count.
    pub fn record(&mut self, mut e: ErrorEntry) -> u64 {
        self.count += 1;
        e.count = self.count;
        if self.entries.len() == self.cap {
            self.entries.pop_back();
        }
        self.entries.push_front(e);
        self.count
    }

    /// Errors recorded over the controller's life.
    pub fn total(&self) -> u64 {
        self.count
    }

    /// The log page: `cap` 64-byte entries, newest first.
    pub fn page(&self) -> Vec<u8> {
        let mut b = vec![0u8; 64 * self.cap];
        for (i, e) in self.entries.iter().enumerate() {
            let o = 64 * i;
            b[o..o + 8].copy_from_slice(&e.count.to_le_bytes());
            b[o + 8..o + 10].copy_from_slice(&e.sqid.to_le_bytes());
            b[o + 10..o + 12].copy_from_slice(&e.cid.to_le_bytes());
            b[o + 12..o + 14].copy_from_slice(&(e.status << 1).to_le_bytes());
            b[o + 14..o + 16].copy_from_slice(&e.location.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&e.lba.to_le_bytes());
            b[o + 24..o + 28].copy_from_slice(&e.nsid.to_le_bytes());
        }
        b
    }
}

/// Asynchronous event types.
pub mod event {
    /// Error status (log page 01h).
    pub const ERROR: u8 = 0;
    /// SMART / Health status (log page 02h).
    pub const SMART: u8 = 1;
    /// Notice (e.g. namespace attribute changed, log page 04h).
    pub const NOTICE: u8 = 2;
    /// Error information: write to an invalid doorbell register.
    pub const INFO_INVALID_DOORBELL_REGISTER: u8 = 0x00;
    /// Error information: invalid doorbell write value.
    pub const INFO_INVALID_DOORBELL_VALUE: u8 = 0x01;
    /// SMART information: temperature threshold.
    pub const INFO_TEMPERATURE: u8 = 0x01;
}

/// A pending asynchronous event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Asynchronous event type.
    pub kind: u8,
    /// Asynchronous event information.
    pub info: u8,
    /// Associated log page.
    pub log: u8,
}

impl Event {
    /// Completion DW0 of the AER that reports this event.
    pub fn dw0(&self) -> u32 {
        u32::from(self.kind & 7) | (u32::from(self.info) << 8) | (u32::from(self.log) << 16)
    }
}

/// Outstanding Asynchronous Event Requests and events waiting for one.
#[derive(Debug, Default)]
pub struct AerState {
    /// CIDs of outstanding AER commands (admin queue), oldest first.
    pub outstanding: VecDeque<u16>,
    /// Events not yet reported.
    pub pending: VecDeque<Event>,
    /// Event types reported and not yet cleared by reading their log page.
    pub masked: [bool; 8],
}

impl AerState {
    /// Queues `e` unless an identical one is already pending.
    pub fn post(&mut self, e: Event) {
        if !self.pending.contains(&e) && self.pending.len() < 64 {
            self.pending.push_back(e);
        }
    }

    /// The next (AER CID, event) pair that can complete now.
    pub fn next_ready(&mut self) -> Option<(u16, Event)> {
        if self.outstanding.is_empty() {
            return None;
        }
        let i = self
            .pending
            .iter()
            .position(|e| !self.masked[e.kind as usize & 7])?;
        let e = self.pending.remove(i)?;
        let cid = self.outstanding.pop_front()?;
        self.masked[e.kind as usize & 7] = true;
        Some((cid, e))
    }

    /// Reading log page `log` without RAE unmasks its event type.
    pub fn log_read(&mut self, log: u8) {
        let kind = match log {
            super::spec::log_id::ERROR => event::ERROR,
            super::spec::log_id::SMART => event::SMART,
            super::spec::log_id::CHANGED_NS => event::NOTICE,
            _ => return,
        };
        self.masked[kind as usize] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aer_masking() {
        let mut a = AerState::default();
        let e = Event {
            kind: event::ERROR,
            info: event::INFO_INVALID_DOORBELL_VALUE,
            log: 1,
        };
        a.post(e);
        a.post(e);
        assert_eq!(a.pending.len(), 1, "duplicates coalesce");
        assert_eq!(a.next_ready(), None, "no AER outstanding");
        a.outstanding.push_back(7);
        a.outstanding.push_back(8);
        assert_eq!(a.next_ready(), Some((7, e)));
        assert_eq!(e.dw0(), 0x0001_0100);
        a.post(e);
        assert_eq!(a.next_ready(), None, "masked until the log is read");
        a.log_read(1);
        assert_eq!(a.next_ready(), Some((8, e)));
    }

    #[test]
    fn error_log_and_smart() {
        let mut l = ErrorLog::new(2);
        for i in 0..3u16 {
            l.record(ErrorEntry {
                cid: i,
                ..Default::default()
            });
        }
        let p = l.page();
        assert_eq!(p.len(), 128);
        assert_eq!(u64::from_le_bytes(p[0..8].try_into().unwrap()), 3);
        assert_eq!(u16::from_le_bytes([p[10], p[11]]), 2);
        assert_eq!(u64::from_le_bytes(p[64..72].try_into().unwrap()), 2);
        let c = Counters::default();
        c.units_read.store(1001, Ordering::Relaxed);
        c.host_writes.store(5, Ordering::Relaxed);
        let s = c.smart_log(308, 0, Instant::now(), 3);
        assert_eq!(u16::from_le_bytes([s[1], s[2]]), 308);
        assert_eq!(s[32], 2, "1001 units -> 2 thousand, rounded up");
        assert_eq!(s[80], 5);
        assert_eq!(s[176], 3);
        let f = Features::new();
        assert_eq!(f.temp_over[0], WCTEMP);
        assert_eq!(f.num_queues, None);
    }
}
