//! Device-side PCIe security blocks shared by every trustdev device: the DOE
//! mailbox (and, as their issues land, CMA/SPDM over it, IDE registers and
//! key slots, TDISP interface state).

pub mod doe;
