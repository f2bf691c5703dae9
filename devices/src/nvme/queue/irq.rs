//! Interrupts of the queues: MSI-X per completion queue vector, else MSI or
//! level-triggered INTx on vector 0 (held back by INTMS), and interrupt
//! coalescing (Set Features 08h / 09h).

use super::lock;
use log::debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_user_server::irq::Interrupts;
use vfio_user_server::protocol::irq_index;

/// Interrupt Coalescing (08h) and Interrupt Vector Configuration (09h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coalescing {
    /// Feature 08h: THR (7:0) | TIME (15:8), 100 µs units.
    pub setting: u32,
    /// Feature 09h: coalescing disabled, per vector.
    pub disabled: Vec<bool>,
}

impl Coalescing {
    /// Defaults after a controller reset for `vectors` MSI-X vectors: off,
    /// and never on the admin vector.
    pub fn new(vectors: usize) -> Coalescing {
        let mut disabled = vec![false; vectors];
        if let Some(v) = disabled.first_mut() {
            *v = true;
        }
        Coalescing {
            setting: 0,
            disabled,
        }
    }

    /// Aggregation threshold (completions, 1-based) and time for `vector`,
    /// if it coalesces.
    pub fn for_vector(&self, vector: u16) -> Option<(u32, Duration)> {
        let thr = self.setting & 0xff;
        let time = (self.setting >> 8) & 0xff;
        let disabled = self
            .disabled
            .get(usize::from(vector))
            .copied()
            .unwrap_or(true);
        if (thr == 0 && time == 0) || disabled {
            return None;
        }
        Some((thr + 1, Duration::from_micros(u64::from(time) * 100)))
    }
}

/// INTMS state: masked vectors and interrupts held back by the mask.
#[derive(Debug, Default, Clone, Copy)]
struct Mask {
    intms: u32,
    pending: u32,
}

/// Raises the controller's interrupts.
#[derive(Debug)]
pub struct Interrupter {
    irqs: Arc<Interrupts>,
    vectors: u16,
    mask: Mutex<Mask>,
    coalescing: Mutex<Coalescing>,
    /// Interrupts raised (efficiency counter).
    pub(crate) raised: AtomicU64,
}

impl Interrupter {
    /// Interrupts over `irqs` with `vectors` MSI-X vectors.
    pub fn new(irqs: Arc<Interrupts>, vectors: u16) -> Interrupter {
        Interrupter {
            irqs,
            vectors,
            mask: Mutex::new(Mask::default()),
            coalescing: Mutex::new(Coalescing::new(usize::from(vectors))),
            raised: AtomicU64::new(0),
        }
    }

    /// MSI-X vectors.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Raises interrupt `vector`: MSI-X if enabled, else MSI or INTx
    /// (subject to INTMS, all on vector 0).
    pub fn raise(&self, vector: u16) {
        self.raised.fetch_add(1, Ordering::Relaxed);
        if self.irqs.enabled(irq_index::MSIX) > 0 {
            if !self.irqs.trigger(irq_index::MSIX, u32::from(vector)) {
                debug!("MSI-X vector {vector} has no eventfd");
            }
            return;
        }
        {
            let mut m = lock(&self.mask);
            if m.intms & 1 != 0 {
                m.pending |= 1;
                return;
            }
        }
        if self.irqs.enabled(irq_index::MSI) > 0 {
            self.irqs.trigger(irq_index::MSI, 0);
        } else {
            self.irqs.trigger(irq_index::INTX, 0);
        }
    }

    /// Whether the function signals with INTx (neither MSI-X nor MSI on).
    pub(crate) fn intx(&self) -> bool {
        self.irqs.enabled(irq_index::MSIX) == 0 && self.irqs.enabled(irq_index::MSI) == 0
    }

    /// Deasserts INTx (no completion queue holds unconsumed entries).
    pub(crate) fn deassert_intx(&self) {
        self.irqs.deassert(irq_index::INTX, 0);
    }

    /// INTMS / INTMC as read.
    pub fn intms(&self) -> u32 {
        lock(&self.mask).intms
    }

    /// A write of `bits` to INTMS: masks those vectors.
    pub fn set_mask(&self, bits: u32) {
        lock(&self.mask).intms |= bits;
    }

    /// A write of `bits` to INTMC: unmasks them and raises what they held back.
    pub fn clear_mask(&self, bits: u32) {
        let fire = {
            let mut m = lock(&self.mask);
            m.intms &= !bits;
            let fire = m.pending & bits;
            m.pending &= !fire;
            fire
        };
        for v in 0..32u16 {
            if fire & (1 << v) != 0 {
                self.raise(v);
            }
        }
    }

    /// Controller reset: held-back interrupts are dropped, coalescing
    /// returns to its defaults; `registers` also clears INTMS (a function
    /// reset).
    pub fn reset(&self, registers: bool) {
        {
            let mut m = lock(&self.mask);
            m.pending = 0;
            if registers {
                m.intms = 0;
            }
        }
        *lock(&self.coalescing) = Coalescing::new(usize::from(self.vectors));
    }

    /// The coalescing settings.
    pub fn coalescing(&self) -> Coalescing {
        lock(&self.coalescing).clone()
    }

    /// Sets Interrupt Coalescing (feature 08h, CDW11 bits 15:0).
    pub fn set_coalescing(&self, setting: u32) {
        lock(&self.coalescing).setting = setting & 0xffff;
    }

    /// Sets Interrupt Vector Configuration (feature 09h) for `vector`;
    /// false if the vector does not exist or is the admin vector asked to
    /// coalesce.
    pub fn set_vector_coalescing(&self, vector: usize, disabled: bool) -> bool {
        let mut c = lock(&self.coalescing);
        match c.disabled.get_mut(vector) {
            Some(d) if vector != 0 || disabled => {
                *d = disabled;
                true
            }
            _ => false,
        }
    }

    /// For `count` completions waiting since `first` on `vector`: None to
    /// raise the interrupt now, or when to raise it if coalescing holds it back.
    pub(crate) fn hold_until(&self, vector: u16, count: u32, first: Instant) -> Option<Instant> {
        let (thr, time) = lock(&self.coalescing).for_vector(vector)?;
        let due = first + time;
        (count < thr && Instant::now() < due).then_some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_settings() {
        let mut c = Coalescing::new(4);
        assert_eq!(c.for_vector(1), None, "off by default");
        c.setting = 3 | (2 << 8);
        assert_eq!(c.for_vector(1), Some((4, Duration::from_micros(200))));
        assert_eq!(c.for_vector(0), None, "admin vector never coalesces");
        assert_eq!(c.for_vector(9), None, "no such vector");
        c.disabled[1] = true;
        assert_eq!(c.for_vector(1), None);
    }

    #[test]
    fn vector_configuration() {
        let i = Interrupter::new(
            Arc::new(Interrupts::new(&vfio_user_server::irq::IrqInfo::pci(1, 4))),
            4,
        );
        assert!(!i.set_vector_coalescing(0, false), "admin vector");
        assert!(i.set_vector_coalescing(0, true));
        assert!(i.set_vector_coalescing(3, true));
        assert!(!i.set_vector_coalescing(4, true));
        assert!(i.coalescing().disabled[3]);
        i.set_coalescing(0x1_0203);
        assert_eq!(i.coalescing().setting, 0x0203);
        i.reset(false);
        assert_eq!(i.coalescing(), Coalescing::new(4));
    }
}
