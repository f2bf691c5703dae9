//! Typed payloads of every client-to-server command, and the replies.

use super::{ProtocolError, Reader, Writer};

/// `VFIO_DEVICE_FLAGS_RESET`: the device accepts DEVICE_RESET.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`: the device is a PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// Region flag: readable.
pub const REGION_FLAG_READ: u32 = 1 << 0;
/// Region flag: writable.
pub const REGION_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: mmappable with the fd in the reply.
pub const REGION_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: capabilities follow the structure.
pub const REGION_FLAG_CAPS: u32 = 1 << 3;
/// Region capability id of the sparse-mmap capability.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Size of `struct vfio_region_info`.
pub const REGION_INFO_SIZE: u32 = 32;

/// IRQ info flag: eventfd signalling.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info flag: MASK/UNMASK supported.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info flag: masks itself when triggered.
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// IRQ info flag: vectors are set up as a whole.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

const SET_IRQS_DATA_NONE: u32 = 1 << 0;
const SET_IRQS_DATA_BOOL: u32 = 1 << 1;
const SET_IRQS_DATA_EVENTFD: u32 = 1 << 2;
const SET_IRQS_ACTION_MASK: u32 = 1 << 3;
const SET_IRQS_ACTION_UNMASK: u32 = 1 << 4;
const SET_IRQS_ACTION_TRIGGER: u32 = 1 << 5;
/// `SET_IRQS` data flag bits.
pub const SET_IRQS_DATA_MASK: u32 = SET_IRQS_DATA_NONE | SET_IRQS_DATA_BOOL | SET_IRQS_DATA_EVENTFD;
/// `SET_IRQS` action flag bits.
pub const SET_IRQS_ACTION_MASK_BITS: u32 =
    SET_IRQS_ACTION_MASK | SET_IRQS_ACTION_UNMASK | SET_IRQS_ACTION_TRIGGER;

/// PCI region indexes (VFIO_PCI_*_REGION_INDEX).
pub mod region {
    /// First BAR.
    pub const BAR0: u32 = 0;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// Configuration space.
    pub const CONFIG: u32 = 7;
    /// Legacy VGA.
    pub const VGA: u32 = 8;
    /// Number of standard PCI regions.
    pub const COUNT: u32 = 9;
}

/// PCI IRQ indexes (VFIO_PCI_*_IRQ_INDEX).
pub mod irq_index {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// Error (AER) notification.
    pub const ERR: u32 = 3;
    /// Device request (hot-unplug request).
    pub const REQ: u32 = 4;
    /// Number of standard PCI IRQ indexes.
    pub const COUNT: u32 = 5;
}

fn check_argsz(what: &'static str, argsz: u32, min: u32) -> Result<(), ProtocolError> {
    if argsz < min {
        return Err(ProtocolError::ArgszTooSmall { what, argsz, min });
    }
    Ok(())
}

/// Access rights of a DMA mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaProt {
    /// The device may read the memory.
    pub read: bool,
    /// The device may write the memory.
    pub write: bool,
}

/// DMA_MAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMapRequest {
    /// Access rights.
    pub prot: DmaProt,
    /// Offset into the fd (0 without one).
    pub offset: u64,
    /// Base DMA address.
    pub address: u64,
    /// Length in bytes.
    pub size: u64,
}

impl DmaMapRequest {
    /// Size of the fixed structure.
    pub const SIZE: usize = 32;

    /// A readable and writable window of `size` bytes at DMA address
    /// `address`, from offset 0 of its fd (what a client maps for guest RAM).
    pub fn read_write(address: u64, size: u64) -> Self {
        DmaMapRequest {
            prot: DmaProt {
                read: true,
                write: true,
            },
            offset: 0,
            address,
            size,
        }
    }

    /// Decodes and validates a DMA_MAP payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DMA_MAP";
        let mut r = Reader::new(payload, what);
        r.require(Self::SIZE)?;
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let offset = r.u64()?;
        let address = r.u64()?;
        let size = r.u64()?;
        check_argsz(what, argsz, Self::SIZE as u32)?;
        if flags & !0x3 != 0 {
            return Err(ProtocolError::BadFlags { what, flags });
        }
        if size == 0 {
            return Err(ProtocolError::InvalidField {
                what,
                detail: "size is zero".into(),
            });
        }
        if address.checked_add(size).is_none() || offset.checked_add(size).is_none() {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!("range {address:#x}+{size:#x} overflows"),
            });
        }
        Ok(DmaMapRequest {
            prot: DmaProt {
                read: flags & 1 != 0,
                write: flags & 2 != 0,
            },
            offset,
            address,
            size,
        })
    }

    /// Encodes the request (used by clients).
    pub fn encode(&self) -> Vec<u8> {
        let flags = self.prot.read as u32 | (self.prot.write as u32) << 1;
        let mut w = Writer::with_capacity(Self::SIZE);
        w.u32(Self::SIZE as u32)
            .u32(flags)
            .u64(self.offset)
            .u64(self.address)
            .u64(self.size);
        w.into_vec()
    }
}

/// What a DMA_UNMAP removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaUnmapKind {
    /// Exactly the mapping at `address` with `size`.
    Range {
        /// Base DMA address.
        address: u64,
        /// Length.
        size: u64,
    },
    /// Every mapping.
    All,
}

/// DMA_UNMAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmapRequest {
    /// The request's argsz (echoed).
    pub argsz: u32,
    /// Raw flags (echoed).
    pub flags: u32,
    /// What to remove.
    pub kind: DmaUnmapKind,
    /// Raw address field (echoed).
    pub address: u64,
    /// Raw size field (echoed).
    pub size: u64,
}

/// DMA_UNMAP flag: return a dirty bitmap (not supported: no dirty tracking).
pub const DMA_UNMAP_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// DMA_UNMAP flag: unmap everything.
pub const DMA_UNMAP_ALL: u32 = 1 << 1;

impl DmaUnmapRequest {
    /// Size of the fixed structure.
    pub const SIZE: usize = 24;

    /// Decodes and validates a DMA_UNMAP payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DMA_UNMAP";
        let mut r = Reader::new(payload, what);
        r.require(Self::SIZE)?;
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let address = r.u64()?;
        let size = r.u64()?;
        check_argsz(what, argsz, Self::SIZE as u32)?;
        if payload.len() != Self::SIZE {
            // A dirty bitmap structure would follow; we do not track dirty pages.
            return Err(ProtocolError::PayloadSizeMismatch {
                what,
                got: payload.len(),
                expected: Self::SIZE,
            });
        }
        let kind = match flags {
            0 => {
                // The end may be exactly 2^64 (QEMU: "unmap everything above").
                if size == 0 || u128::from(address) + u128::from(size) > 1u128 << 64 {
                    return Err(ProtocolError::InvalidField {
                        what,
                        detail: format!("bad range {address:#x}+{size:#x}"),
                    });
                }
                DmaUnmapKind::Range { address, size }
            }
            DMA_UNMAP_ALL => {
                if address != 0 || size != 0 {
                    return Err(ProtocolError::InvalidField {
                        what,
                        detail: "unmap-all with a non-zero address or size".into(),
                    });
                }
                DmaUnmapKind::All
            }
            _ => return Err(ProtocolError::BadFlags { what, flags }),
        };
        Ok(DmaUnmapRequest {
            argsz,
            flags,
            kind,
            address,
            size,
        })
    }

    /// The reply payload: the original entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::SIZE);
        w.u32(self.argsz)
            .u32(self.flags)
            .u64(self.address)
            .u64(self.size);
        w.into_vec()
    }
}

/// The argsz-led "info" requests: GET_INFO, GET_REGION_INFO, GET_REGION_IO_FDS
/// and GET_IRQ_INFO all start with `argsz, flags` and (but for GET_INFO) an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// Maximum reply payload the client accepts.
    pub argsz: u32,
    /// Index queried (0 for DEVICE_GET_INFO).
    pub index: u32,
}

impl InfoRequest {
    /// Decodes DEVICE_GET_INFO (argsz, flags, num_regions, num_irqs).
    pub fn decode_device_info(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DEVICE_GET_INFO";
        let mut r = Reader::new(payload, what);
        r.require(16)?;
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let nr = r.u32()?;
        let ni = r.u32()?;
        check_argsz(what, argsz, 16)?;
        if flags != 0 || nr != 0 || ni != 0 {
            return Err(ProtocolError::ReservedField { what });
        }
        Ok(InfoRequest { argsz, index: 0 })
    }

    /// Decodes DEVICE_GET_REGION_INFO (only argsz and index are meaningful).
    pub fn decode_region_info(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DEVICE_GET_REGION_INFO";
        let mut r = Reader::new(payload, what);
        r.require(REGION_INFO_SIZE as usize)?;
        let argsz = r.u32()?;
        let _flags = r.u32()?;
        let index = r.u32()?;
        check_argsz(what, argsz, REGION_INFO_SIZE)?;
        Ok(InfoRequest { argsz, index })
    }

    /// Decodes DEVICE_GET_REGION_IO_FDS.
    pub fn decode_region_io_fds(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DEVICE_GET_REGION_IO_FDS";
        let mut r = Reader::new(payload, what);
        r.require(16)?;
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let count = r.u32()?;
        check_argsz(what, argsz, 16)?;
        if flags != 0 || count != 0 {
            return Err(ProtocolError::ReservedField { what });
        }
        Ok(InfoRequest { argsz, index })
    }

    /// Decodes DEVICE_GET_IRQ_INFO.
    pub fn decode_irq_info(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DEVICE_GET_IRQ_INFO";
        let mut r = Reader::new(payload, what);
        r.require(16)?;
        let argsz = r.u32()?;
        let _flags = r.u32()?;
        let index = r.u32()?;
        let _count = r.u32()?;
        check_argsz(what, argsz, 16)?;
        Ok(InfoRequest { argsz, index })
    }
}

/// Encodes the DEVICE_GET_INFO reply.
pub fn encode_device_info(flags: u32, num_regions: u32, num_irqs: u32) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.u32(16).u32(flags).u32(num_regions).u32(num_irqs);
    w.into_vec()
}

/// Encodes the DEVICE_GET_IRQ_INFO reply.
pub fn encode_irq_info(flags: u32, index: u32, count: u32) -> Vec<u8> {
    let mut w = Writer::with_capacity(16);
    w.u32(16).u32(flags).u32(index).u32(count);
    w.into_vec()
}

/// An mmappable window inside a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset inside the region.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// Encodes a DEVICE_GET_REGION_INFO reply. When `argsz` is too small for the
/// capabilities, only the fixed structure is sent, with `argsz` set to the
/// full size so the client can ask again.
pub fn encode_region_info(
    client_argsz: u32,
    index: u32,
    flags: u32,
    size: u64,
    mmap_offset: u64,
    sparse: &[SparseArea],
) -> Vec<u8> {
    let cap_len = if sparse.is_empty() {
        0
    } else {
        16 + 16 * sparse.len() as u32
    };
    let full = REGION_INFO_SIZE + cap_len;
    let include_caps = cap_len > 0 && client_argsz >= full;
    // Linux sets FLAG_CAPS with cap_offset 0 when the caps do not fit, but
    // QEMU's vfio-user client rejects CAPS with an out-of-range cap_offset:
    // announce the capabilities only when they are included.
    let flags = if include_caps {
        flags | REGION_FLAG_CAPS
    } else {
        flags
    };
    let mut w = Writer::with_capacity(full as usize);
    w.u32(full)
        .u32(flags)
        .u32(index)
        .u32(if include_caps { REGION_INFO_SIZE } else { 0 })
        .u64(size)
        .u64(mmap_offset);
    if include_caps {
        w.u16(REGION_INFO_CAP_SPARSE_MMAP)
            .u16(1)
            .u32(0)
            .u32(sparse.len() as u32)
            .u32(0);
        for a in sparse {
            w.u64(a.offset).u64(a.size);
        }
    }
    w.into_vec()
}

/// What a SET_IRQS message carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqData {
    /// Act on every sub-index in the range.
    None,
    /// Act where the corresponding bool is true.
    Bool(Vec<bool>),
    /// Eventfds follow as ancillary data (none: de-assign).
    Eventfd,
}

/// The action a SET_IRQS performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask (or with eventfds: signal on mask).
    Mask,
    /// Unmask (or with eventfds: signal on unmask).
    Unmask,
    /// Trigger (or with eventfds: the fds the server signals).
    Trigger,
}

/// DEVICE_SET_IRQS request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetIrqsRequest {
    /// IRQ index.
    pub index: u32,
    /// First sub-index.
    pub start: u32,
    /// Number of sub-indexes.
    pub count: u32,
    /// Data kind.
    pub data: IrqData,
    /// Action.
    pub action: IrqAction,
}

impl SetIrqsRequest {
    /// Size of the fixed structure.
    pub const SIZE: usize = 20;

    /// Decodes and validates a SET_IRQS payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        let what = "DEVICE_SET_IRQS";
        let mut r = Reader::new(payload, what);
        r.require(Self::SIZE)?;
        let argsz = r.u32()?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let start = r.u32()?;
        let count = r.u32()?;
        check_argsz(what, argsz, Self::SIZE as u32)?;
        if flags & !(SET_IRQS_DATA_MASK | SET_IRQS_ACTION_MASK_BITS) != 0 {
            return Err(ProtocolError::BadFlags { what, flags });
        }
        let action = match flags & SET_IRQS_ACTION_MASK_BITS {
            SET_IRQS_ACTION_MASK => IrqAction::Mask,
            SET_IRQS_ACTION_UNMASK => IrqAction::Unmask,
            SET_IRQS_ACTION_TRIGGER => IrqAction::Trigger,
            _ => return Err(ProtocolError::BadFlags { what, flags }),
        };
        if start.checked_add(count).is_none() {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!("start {start} + count {count} overflows"),
            });
        }
        let rest = r.rest();
        let data = match flags & SET_IRQS_DATA_MASK {
            SET_IRQS_DATA_NONE | SET_IRQS_DATA_EVENTFD => {
                if !rest.is_empty() {
                    return Err(ProtocolError::PayloadSizeMismatch {
                        what,
                        got: payload.len(),
                        expected: Self::SIZE,
                    });
                }
                if flags & SET_IRQS_DATA_NONE != 0 {
                    IrqData::None
                } else {
                    IrqData::Eventfd
                }
            }
            SET_IRQS_DATA_BOOL => {
                if rest.len() != count as usize {
                    return Err(ProtocolError::PayloadSizeMismatch {
                        what,
                        got: payload.len(),
                        expected: Self::SIZE + count as usize,
                    });
                }
                if rest.iter().any(|&b| b > 1) {
                    return Err(ProtocolError::InvalidField {
                        what,
                        detail: "bool data must be 0 or 1".into(),
                    });
                }
                IrqData::Bool(rest.iter().map(|&b| b == 1).collect())
            }
            _ => return Err(ProtocolError::BadFlags { what, flags }),
        };
        if count == 0 && !(data == IrqData::None && action == IrqAction::Trigger && start == 0) {
            if data == IrqData::Eventfd && action == IrqAction::Trigger && start == 0 {
                // Linux vfio accepts DATA_EVENTFD with count 0 as "disable"; so do we.
            } else {
                return Err(ProtocolError::InvalidField {
                    what,
                    detail: "count 0 is only valid to disable the whole index".into(),
                });
            }
        }
        Ok(SetIrqsRequest {
            index,
            start,
            count,
            data,
            action,
        })
    }

    /// Encodes the request (used by clients); `bools` only with `IrqData::Bool`.
    pub fn encode(&self) -> Vec<u8> {
        let data_flag = match self.data {
            IrqData::None => SET_IRQS_DATA_NONE,
            IrqData::Bool(_) => SET_IRQS_DATA_BOOL,
            IrqData::Eventfd => SET_IRQS_DATA_EVENTFD,
        };
        let action_flag = match self.action {
            IrqAction::Mask => SET_IRQS_ACTION_MASK,
            IrqAction::Unmask => SET_IRQS_ACTION_UNMASK,
            IrqAction::Trigger => SET_IRQS_ACTION_TRIGGER,
        };
        let extra = match &self.data {
            IrqData::Bool(b) => b.len(),
            _ => 0,
        };
        let mut w = Writer::with_capacity(Self::SIZE + extra);
        w.u32((Self::SIZE + extra) as u32)
            .u32(data_flag | action_flag)
            .u32(self.index)
            .u32(self.start)
            .u32(self.count);
        if let IrqData::Bool(b) = &self.data {
            for &v in b {
                w.bytes(&[v as u8]);
            }
        }
        w.into_vec()
    }
}

/// REGION_READ / REGION_WRITE fixed part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset inside the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes transferred.
    pub count: u32,
}

impl RegionAccess {
    /// Size of the fixed structure.
    pub const SIZE: usize = 16;

    /// Decodes a REGION_READ request (exactly the fixed part).
    pub fn decode_read(payload: &[u8], max_xfer: u32) -> Result<Self, ProtocolError> {
        let a = Self::decode_fixed(payload, "REGION_READ", max_xfer)?;
        if payload.len() != Self::SIZE {
            return Err(ProtocolError::PayloadSizeMismatch {
                what: "REGION_READ",
                got: payload.len(),
                expected: Self::SIZE,
            });
        }
        Ok(a)
    }

    /// Decodes a REGION_WRITE request; returns the access and its data.
    pub fn decode_write(payload: &[u8], max_xfer: u32) -> Result<(Self, &[u8]), ProtocolError> {
        let what = "REGION_WRITE";
        let a = Self::decode_fixed(payload, what, max_xfer)?;
        let data = &payload[Self::SIZE..];
        if data.len() != a.count as usize {
            return Err(ProtocolError::PayloadSizeMismatch {
                what,
                got: payload.len(),
                expected: Self::SIZE + a.count as usize,
            });
        }
        Ok((a, data))
    }

    fn decode_fixed(payload: &[u8], what: &'static str, max: u32) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload, what);
        r.require(Self::SIZE)?;
        let offset = r.u64()?;
        let region = r.u32()?;
        let count = r.u32()?;
        if count == 0 {
            return Err(ProtocolError::InvalidField {
                what,
                detail: "count is zero".into(),
            });
        }
        if count > max {
            return Err(ProtocolError::TransferTooLarge {
                what,
                count: count.into(),
                limit: max.into(),
            });
        }
        Ok(RegionAccess {
            offset,
            region,
            count,
        })
    }

    /// The fixed part, encoded.
    pub fn fixed(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.region.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// Encodes the fixed part followed by `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::SIZE + data.len());
        w.u64(self.offset)
            .u32(self.region)
            .u32(self.count)
            .bytes(data);
        w.into_vec()
    }
}

/// One write of a REGION_WRITE_MULTI message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiWrite {
    /// The access.
    pub access: RegionAccess,
    /// Up to 8 bytes of data (`access.count` are valid).
    pub data: [u8; 8],
}

/// Most writes in one REGION_WRITE_MULTI (QEMU's limit).
pub const MAX_WRITE_MULTI: u64 = 200;
const MULTI_ENTRY_SIZE: usize = 24;

/// Decodes a REGION_WRITE_MULTI payload.
pub fn decode_write_multi(payload: &[u8]) -> Result<Vec<MultiWrite>, ProtocolError> {
    let what = "REGION_WRITE_MULTI";
    let mut r = Reader::new(payload, what);
    let n = r.u64()?;
    if n == 0 || n > MAX_WRITE_MULTI {
        return Err(ProtocolError::InvalidField {
            what,
            detail: format!("wr_cnt {n} not in 1..={MAX_WRITE_MULTI}"),
        });
    }
    let expected = 8 + n as usize * MULTI_ENTRY_SIZE;
    if payload.len() != expected {
        return Err(ProtocolError::PayloadSizeMismatch {
            what,
            got: payload.len(),
            expected,
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let offset = r.u64()?;
        let region = r.u32()?;
        let count = r.u32()?;
        let data = r.u64()?.to_le_bytes();
        if count == 0 || count > 8 {
            return Err(ProtocolError::InvalidField {
                what,
                detail: format!("write count {count} not in 1..=8"),
            });
        }
        out.push(MultiWrite {
            access: RegionAccess {
                offset,
                region,
                count,
            },
            data,
        });
    }
    Ok(out)
}

/// Encodes a REGION_WRITE_MULTI payload (used by clients).
pub fn encode_write_multi(writes: &[MultiWrite]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + writes.len() * MULTI_ENTRY_SIZE);
    w.u64(writes.len() as u64);
    for m in writes {
        w.u64(m.access.offset)
            .u32(m.access.region)
            .u32(m.access.count)
            .bytes(&m.data);
    }
    w.into_vec()
}

/// DMA_READ / DMA_WRITE fixed part (server-to-client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaTransfer {
    /// Client DMA address.
    pub address: u64,
    /// Bytes.
    pub count: u64,
}

impl DmaTransfer {
    /// Size of the fixed part.
    pub const SIZE: usize = 16;

    /// Encodes the fixed part followed by `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::SIZE + data.len());
        w.u64(self.address).u64(self.count).bytes(data);
        w.into_vec()
    }

    /// Decodes the fixed part of a DMA_READ/DMA_WRITE message or reply.
    pub fn decode<'a>(
        payload: &'a [u8],
        what: &'static str,
    ) -> Result<(Self, &'a [u8]), ProtocolError> {
        let mut r = Reader::new(payload, what);
        let address = r.u64()?;
        let count = r.u64()?;
        Ok((DmaTransfer { address, count }, r.rest()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_map_validation() {
        let good = DmaMapRequest {
            prot: DmaProt {
                read: true,
                write: true,
            },
            offset: 0,
            address: 0x1000,
            size: 0x2000,
        };
        assert_eq!(DmaMapRequest::decode(&good.encode()).unwrap(), good);
        let mut bad = good.encode();
        bad[4] = 0x7;
        assert!(DmaMapRequest::decode(&bad).is_err());
        let mut small = good.encode();
        small[0] = 8;
        assert!(DmaMapRequest::decode(&small).is_err());
        assert!(DmaMapRequest::decode(&good.encode()[..31]).is_err());
        let over = DmaMapRequest {
            address: u64::MAX - 10,
            ..good
        };
        assert!(DmaMapRequest::decode(&over.encode()).is_err());
    }

    #[test]
    fn region_info_truncates_caps_when_argsz_is_small() {
        let areas = [SparseArea {
            offset: 0x1000,
            size: 0x1000,
        }];
        let short = encode_region_info(32, 0, REGION_FLAG_READ, 0x2000, 0, &areas);
        assert_eq!(short.len(), 32);
        assert_eq!(u32::from_le_bytes(short[0..4].try_into().unwrap()), 64);
        let full = encode_region_info(64, 0, REGION_FLAG_READ, 0x2000, 0, &areas);
        assert_eq!(full.len(), 64);
        assert_eq!(u32::from_le_bytes(full[12..16].try_into().unwrap()), 32);
    }

    #[test]
    fn set_irqs_rules() {
        let r = SetIrqsRequest {
            index: 2,
            start: 0,
            count: 0,
            data: IrqData::None,
            action: IrqAction::Trigger,
        };
        assert_eq!(SetIrqsRequest::decode(&r.encode()).unwrap(), r);
        let bad = SetIrqsRequest {
            action: IrqAction::Mask,
            ..r.clone()
        };
        assert!(SetIrqsRequest::decode(&bad.encode()).is_err());
        let mut two_actions = r.encode();
        two_actions[4] |= 1 << 3;
        assert!(SetIrqsRequest::decode(&two_actions).is_err());
        let b = SetIrqsRequest {
            count: 2,
            data: IrqData::Bool(vec![true, false]),
            ..r.clone()
        };
        assert_eq!(SetIrqsRequest::decode(&b.encode()).unwrap(), b);
        let mut truncated = b.encode();
        truncated.pop();
        assert!(SetIrqsRequest::decode(&truncated).is_err());
    }

    #[test]
    fn write_multi_bounds() {
        let w = MultiWrite {
            access: RegionAccess {
                offset: 4,
                region: 0,
                count: 4,
            },
            data: [1, 2, 3, 4, 0, 0, 0, 0],
        };
        assert_eq!(
            decode_write_multi(&encode_write_multi(&[w])).unwrap(),
            vec![w]
        );
        let mut lie = encode_write_multi(&[w]);
        lie[0] = 2;
        assert!(decode_write_multi(&lie).is_err());
        assert!(decode_write_multi(&encode_write_multi(&[])).is_err());
    }
}
