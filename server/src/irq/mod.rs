//! Interrupts: the eventfds the client hands over with SET_IRQS, mask state, and
//! the API device models use to raise INTx, MSI, MSI-X, ERR and REQ.

use crate::protocol::{
    irq_index, IrqAction, IrqData, SetIrqsRequest, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD,
    IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use thiserror::Error;

/// Errors of SET_IRQS.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrqError {
    /// No such IRQ index.
    #[error("IRQ index {0} does not exist")]
    BadIndex(u32),
    /// start+count beyond the index's vectors.
    #[error("IRQ index {index}: sub-indexes {start}..{end} exceed its {count} vectors")]
    BadRange {
        /// Index.
        index: u32,
        /// First.
        start: u32,
        /// End (exclusive).
        end: u64,
        /// Available.
        count: u32,
    },
    /// Wrong number of fds for DATA_EVENTFD (or fds with other data).
    #[error("IRQ index {index}: {got} eventfds for {count} sub-indexes")]
    BadFdCount {
        /// Index.
        index: u32,
        /// Fds received.
        got: usize,
        /// Sub-indexes.
        count: u32,
    },
    /// MASK/UNMASK on an index that is not maskable.
    #[error("IRQ index {0} is not maskable")]
    NotMaskable(u32),
}

/// Static description of one IRQ index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// Number of vectors.
    pub count: u32,
    /// `IRQ_INFO_*` flags.
    pub flags: u32,
}

impl IrqInfo {
    /// The standard PCI IRQ set: INTx (maskable, automasked), MSI with
    /// `msi` vectors, MSI-X with `msix` vectors (NORESIZE), ERR and REQ.
    pub fn pci(msi: u32, msix: u32) -> Vec<IrqInfo> {
        let ev = IRQ_INFO_EVENTFD;
        vec![
            IrqInfo {
                count: 1,
                flags: ev | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            },
            IrqInfo {
                count: msi,
                flags: ev | IRQ_INFO_NORESIZE,
            },
            IrqInfo {
                count: msix,
                flags: ev | IRQ_INFO_NORESIZE,
            },
            IrqInfo {
                count: 1,
                flags: ev,
            },
            IrqInfo {
                count: 1,
                flags: ev,
            },
        ]
    }
}

#[derive(Debug, Default)]
struct Vector {
    trigger: Option<OwnedFd>,
    on_mask: Option<OwnedFd>,
    on_unmask: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

#[derive(Debug)]
struct Index {
    info: IrqInfo,
    vectors: Vec<Vector>,
}

/// The interrupt table of one device, shared between the connection thread
/// (SET_IRQS) and the device model (raising interrupts).
#[derive(Debug)]
pub struct Interrupts {
    indexes: Mutex<Vec<Index>>,
}

fn signal(fd: &Option<OwnedFd>) -> bool {
    match fd {
        Some(fd) => {
            let one = 1u64.to_ne_bytes();
            // An eventfd write only fails if the counter would overflow, in
            // which case the interrupt is pending anyway.
            let _ = nix::unistd::write(fd, &one);
            true
        }
        None => false,
    }
}

impl Interrupts {
    /// A table with the given indexes (see [`IrqInfo::pci`]).
    pub fn new(infos: &[IrqInfo]) -> Self {
        let indexes = infos
            .iter()
            .map(|&info| Index {
                info,
                vectors: (0..info.count).map(|_| Vector::default()).collect(),
            })
            .collect();
        Interrupts {
            indexes: Mutex::new(indexes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Index>> {
        self.indexes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The description of every index.
    pub fn infos(&self) -> Vec<IrqInfo> {
        self.lock().iter().map(|i| i.info).collect()
    }

    /// Applies a SET_IRQS request with the fds that came with it.
    pub fn set_irqs(&self, req: &SetIrqsRequest, fds: Vec<OwnedFd>) -> Result<(), IrqError> {
        let mut idx = self.lock();
        let index = idx
            .get_mut(req.index as usize)
            .ok_or(IrqError::BadIndex(req.index))?;
        let bad_fds = IrqError::BadFdCount {
            index: req.index,
            got: fds.len(),
            count: req.count,
        };
        if req.data != IrqData::Eventfd && !fds.is_empty() {
            return Err(bad_fds);
        }
        if req.count == 0 {
            // Disable the whole index.
            if !fds.is_empty() {
                return Err(bad_fds);
            }
            for v in &mut index.vectors {
                *v = Vector::default();
            }
            return Ok(());
        }
        let end = u64::from(req.start) + u64::from(req.count);
        if end > u64::from(index.info.count) {
            return Err(IrqError::BadRange {
                index: req.index,
                start: req.start,
                end,
                count: index.info.count,
            });
        }
        let maskable = index.info.flags & IRQ_INFO_MASKABLE != 0;
        if req.action != IrqAction::Trigger && !maskable {
            return Err(IrqError::NotMaskable(req.index));
        }
        let range = req.start as usize..end as usize;
        match &req.data {
            IrqData::Eventfd => {
                if !fds.is_empty() && fds.len() != req.count as usize {
                    return Err(bad_fds);
                }
                let mut fds = fds.into_iter();
                for v in &mut index.vectors[range] {
                    let fd = fds.next();
                    match req.action {
                        IrqAction::Trigger => v.trigger = fd,
                        IrqAction::Mask => v.on_mask = fd,
                        IrqAction::Unmask => v.on_unmask = fd,
                    }
                }
            }
            IrqData::None | IrqData::Bool(_) => {
                let sel: Vec<bool> = match &req.data {
                    IrqData::Bool(b) => b.clone(),
                    _ => vec![true; req.count as usize],
                };
                let automask = index.info.flags & IRQ_INFO_AUTOMASKED != 0;
                for (v, _) in index.vectors[range].iter_mut().zip(sel).filter(|(_, s)| *s) {
                    match req.action {
                        IrqAction::Trigger => fire(v, automask),
                        IrqAction::Mask => {
                            if !v.masked {
                                v.masked = true;
                                signal(&v.on_mask);
                            }
                        }
                        IrqAction::Unmask => {
                            if v.masked {
                                v.masked = false;
                                signal(&v.on_unmask);
                                if v.pending {
                                    fire(v, automask);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops every eventfd and clears mask state (client gone, or reset).
    pub fn clear(&self) {
        for index in self.lock().iter_mut() {
            for v in &mut index.vectors {
                *v = Vector::default();
            }
        }
    }

    /// Number of vectors of `index` that have a trigger eventfd.
    pub fn enabled(&self, index: u32) -> usize {
        self.lock().get(index as usize).map_or(0, |i| {
            i.vectors.iter().filter(|v| v.trigger.is_some()).count()
        })
    }

    /// Raises `vector` of `index`. Returns false when no eventfd is assigned
    /// (the interrupt is lost, as on hardware with the vector disabled).
    /// A masked vector becomes pending and fires on unmask.
    pub fn trigger(&self, index: u32, vector: u32) -> bool {
        let mut idx = self.lock();
        let Some(i) = idx.get_mut(index as usize) else {
            return false;
        };
        let automask = i.info.flags & IRQ_INFO_AUTOMASKED != 0;
        match i.vectors.get_mut(vector as usize) {
            Some(v) if v.trigger.is_some() => {
                fire(v, automask);
                true
            }
            _ => false,
        }
    }

    /// Withdraws a pending level-triggered interrupt (INTx de-assert).
    pub fn deassert(&self, index: u32, vector: u32) {
        if let Some(v) = self
            .lock()
            .get_mut(index as usize)
            .and_then(|i| i.vectors.get_mut(vector as usize))
        {
            v.pending = false;
        }
    }

    /// Raises the device's interrupt `vector` with whatever mechanism the
    /// client enabled: MSI-X, else MSI, else INTx. Returns false when none is.
    pub fn raise(&self, vector: u32) -> bool {
        if self.enabled(irq_index::MSIX) > 0 {
            return self.trigger(irq_index::MSIX, vector);
        }
        if self.enabled(irq_index::MSI) > 0 {
            return self.trigger(irq_index::MSI, vector);
        }
        self.trigger(irq_index::INTX, 0)
    }

    /// Signals the ERR eventfd (AER notification to the client).
    pub fn error(&self) -> bool {
        self.trigger(irq_index::ERR, 0)
    }

    /// Signals the REQ eventfd (asks the client to release the device).
    pub fn request(&self) -> bool {
        self.trigger(irq_index::REQ, 0)
    }

    /// Raw fd numbers assigned to `index` (for diagnostics and tests).
    pub fn trigger_fds(&self, index: u32) -> Vec<Option<i32>> {
        self.lock().get(index as usize).map_or(Vec::new(), |i| {
            i.vectors
                .iter()
                .map(|v| v.trigger.as_ref().map(|f| f.as_raw_fd()))
                .collect()
        })
    }
}

fn fire(v: &mut Vector, automask: bool) {
    if v.masked {
        v.pending = true;
        return;
    }
    v.pending = automask;
    if signal(&v.trigger) && automask {
        v.masked = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn efd() -> (EventFd, OwnedFd) {
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        let dup = e.try_clone().unwrap();
        // SAFETY: into_raw_fd hands us sole ownership of the duplicated fd.
        let owned = unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                dup,
            ))
        };
        (e, owned)
    }

    fn req(index: u32, start: u32, count: u32, data: IrqData, action: IrqAction) -> SetIrqsRequest {
        SetIrqsRequest {
            index,
            start,
            count,
            data,
            action,
        }
    }

    #[test]
    fn msix_assign_trigger_disable() {
        let irqs = Interrupts::new(&IrqInfo::pci(1, 4));
        let (e, fd) = efd();
        irqs.set_irqs(
            &req(2, 1, 1, IrqData::Eventfd, IrqAction::Trigger),
            vec![fd],
        )
        .unwrap();
        assert!(irqs.raise(1));
        assert_eq!(e.read().unwrap(), 1);
        assert!(!irqs.trigger(2, 0), "vector 0 has no fd");
        // De-assign with no fds.
        irqs.set_irqs(&req(2, 1, 1, IrqData::Eventfd, IrqAction::Trigger), vec![])
            .unwrap();
        assert_eq!(irqs.enabled(2), 0);
        assert!(matches!(
            irqs.set_irqs(&req(2, 3, 2, IrqData::None, IrqAction::Trigger), vec![]),
            Err(IrqError::BadRange { .. })
        ));
        assert!(matches!(
            irqs.set_irqs(&req(2, 0, 1, IrqData::None, IrqAction::Mask), vec![]),
            Err(IrqError::NotMaskable(2))
        ));
        assert!(matches!(
            irqs.set_irqs(&req(9, 0, 1, IrqData::None, IrqAction::Trigger), vec![]),
            Err(IrqError::BadIndex(9))
        ));
    }

    #[test]
    fn intx_automask_and_unmask_refires() {
        let irqs = Interrupts::new(&IrqInfo::pci(1, 1));
        let (e, fd) = efd();
        irqs.set_irqs(
            &req(0, 0, 1, IrqData::Eventfd, IrqAction::Trigger),
            vec![fd],
        )
        .unwrap();
        assert!(irqs.trigger(0, 0));
        assert_eq!(e.read().unwrap(), 1);
        assert!(irqs.trigger(0, 0)); // masked: becomes pending only
        assert!(e.read().is_err());
        irqs.set_irqs(&req(0, 0, 1, IrqData::None, IrqAction::Unmask), vec![])
            .unwrap();
        assert_eq!(e.read().unwrap(), 1, "pending level fires on unmask");
        irqs.deassert(0, 0);
        irqs.set_irqs(
            &req(0, 0, 1, IrqData::Bool(vec![true]), IrqAction::Unmask),
            vec![],
        )
        .unwrap();
        assert!(e.read().is_err());
    }
}
