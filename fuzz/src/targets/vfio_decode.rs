//! `vfio-decode`: the vfio-user header and every command's payload decoder,
//! as the server applies them to what a client sends.
//!
//! Input: one selector byte (which decoder), then the bytes it decodes.
//! Oracles beyond "no panic": every decoded value re-encodes to bytes that
//! decode to the same value (the encoders clients use agree with the
//! decoders), a REGION_WRITE's data is exactly `count` bytes, a
//! REGION_WRITE_MULTI has 1..=200 writes of 1..=8 bytes, and the VERSION
//! reply built for any accepted proposal fits QEMU's receive buffer.

use crate::engine::Target;
use vfio_user_server::protocol::{
    decode_write_multi, encode_write_multi, Command, DmaMapRequest, DmaProt, DmaTransfer,
    DmaUnmapRequest, Header, InfoRequest, IrqAction, IrqData, MultiWrite, RegionAccess, ServerCaps,
    SetIrqsRequest, VersionRequest, HEADER_SIZE, MAX_WRITE_MULTI,
};

/// The decoders, by selector (input byte 0 modulo the count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoder {
    Header,
    Version,
    DmaMap,
    DmaUnmap,
    DeviceInfo,
    RegionInfo,
    RegionIoFds,
    IrqInfo,
    SetIrqs,
    RegionRead,
    RegionWrite,
    WriteMulti,
    DmaTransfer,
}

const DECODERS: [Decoder; 13] = [
    Decoder::Header,
    Decoder::Version,
    Decoder::DmaMap,
    Decoder::DmaUnmap,
    Decoder::DeviceInfo,
    Decoder::RegionInfo,
    Decoder::RegionIoFds,
    Decoder::IrqInfo,
    Decoder::SetIrqs,
    Decoder::RegionRead,
    Decoder::RegionWrite,
    Decoder::WriteMulti,
    Decoder::DmaTransfer,
];

/// The largest REGION_READ/WRITE count the server accepts (its default cap).
const MAX_XFER: u32 = 1 << 20;

/// QEMU's VERSION reply buffer (reference/vfio-user-qemu.md): header + payload.
const VERSION_REPLY_LIMIT: usize = 200;

/// The `vfio-decode` target.
#[derive(Debug)]
pub struct VfioDecode {
    seeds: Vec<Vec<u8>>,
    accepted: [u64; DECODERS.len()],
}

fn seed(d: Decoder, payload: Vec<u8>) -> Vec<u8> {
    let sel = DECODERS.iter().position(|&x| x == d).unwrap_or(0) as u8;
    let mut v = vec![sel];
    v.extend(payload);
    v
}

fn info(argsz: u32, a: u32, b: u32, c: u32) -> Vec<u8> {
    [argsz, a, b, c]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

/// QEMU 11.1's VERSION proposal.
pub const QEMU_VERSION_JSON: &str = r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true,"migration":{"pgsize":4096,"max_bitmap_size":268435456}}}"#;

/// A VERSION payload: major, minor, NUL-terminated JSON.
pub fn version_payload(json: &str) -> Vec<u8> {
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(json.as_bytes());
    p.push(0);
    p
}

impl VfioDecode {
    /// The target with seeds made by the protocol's own encoders.
    pub fn new() -> Self {
        let rw = DmaProt {
            read: true,
            write: true,
        };
        let map = DmaMapRequest {
            prot: rw,
            offset: 0x1000,
            address: 0x10_0000,
            size: 0x20_0000,
        };
        let access = RegionAccess {
            offset: 0x40,
            region: 7,
            count: 4,
        };
        let multi = [
            MultiWrite {
                access: RegionAccess {
                    offset: 0x1000,
                    region: 0,
                    count: 4,
                },
                data: [1, 0, 0, 0, 0, 0, 0, 0],
            },
            MultiWrite {
                access: RegionAccess {
                    offset: 0x1004,
                    region: 0,
                    count: 8,
                },
                data: [0xff; 8],
            },
        ];
        let irqs = |data, action, count| SetIrqsRequest {
            index: 2,
            start: 0,
            count,
            data,
            action,
        };
        let mut hdr = Header::command(7, Command::RegionWrite, 20);
        let mut seeds = vec![seed(Decoder::Header, hdr.encode().to_vec())];
        hdr.no_reply = true;
        seeds.push(seed(Decoder::Header, hdr.encode().to_vec()));
        seeds.push(seed(
            Decoder::Header,
            hdr.reply(0).error_reply(22).encode().to_vec(),
        ));
        seeds.extend([
            seed(Decoder::Version, version_payload(QEMU_VERSION_JSON)),
            seed(Decoder::Version, vec![0, 0, 0, 0]),
            seed(
                Decoder::Version,
                version_payload(r#"{"capabilities":{"max_msg_fds":1,"pgsizes":65536}}"#),
            ),
            seed(Decoder::DmaMap, map.encode()),
            seed(
                Decoder::DmaUnmap,
                DmaUnmapRequest {
                    argsz: 24,
                    flags: 0,
                    kind: vfio_user_server::protocol::DmaUnmapKind::Range {
                        address: 0x10_0000,
                        size: 0x20_0000,
                    },
                    address: 0x10_0000,
                    size: 0x20_0000,
                }
                .encode(),
            ),
            seed(Decoder::DeviceInfo, info(16, 0, 0, 0)),
            seed(Decoder::RegionInfo, info(32, 0, 7, 0)),
            seed(Decoder::RegionIoFds, info(32, 0, 0, 0)),
            seed(Decoder::IrqInfo, info(16, 0, 2, 0)),
            seed(
                Decoder::SetIrqs,
                irqs(IrqData::Eventfd, IrqAction::Trigger, 4).encode(),
            ),
            seed(
                Decoder::SetIrqs,
                irqs(IrqData::Bool(vec![true, false]), IrqAction::Mask, 2).encode(),
            ),
            seed(
                Decoder::SetIrqs,
                irqs(IrqData::None, IrqAction::Unmask, 1).encode(),
            ),
            seed(Decoder::RegionRead, access.encode(&[])),
            seed(Decoder::RegionWrite, access.encode(&[1, 2, 3, 4])),
            seed(Decoder::WriteMulti, encode_write_multi(&multi)),
            seed(
                Decoder::DmaTransfer,
                DmaTransfer {
                    address: 0x1000,
                    count: 4,
                }
                .encode(&[9, 9, 9, 9]),
            ),
        ]);
        VfioDecode {
            seeds,
            accepted: [0; DECODERS.len()],
        }
    }
}

impl Default for VfioDecode {
    fn default() -> Self {
        Self::new()
    }
}

fn roundtrip<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    value: &T,
    bytes: Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<(), String> {
    match decode(&bytes) {
        Ok(again) if &again == value => Ok(()),
        other => Err(format!(
            "{what}: {value:?} re-encodes to {bytes:02x?}, which decodes to {other:?}"
        )),
    }
}

impl Target for VfioDecode {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        8 + MAX_WRITE_MULTI as usize * 24 + 64
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let Some((&sel, p)) = input.split_first() else {
            return Ok(());
        };
        let d = DECODERS[sel as usize % DECODERS.len()];
        if decode(d, p)? {
            self.accepted[d as usize] += 1;
        }
        Ok(())
    }

    fn stats(&self) -> String {
        DECODERS
            .iter()
            .map(|d| format!("{d:?} {}", self.accepted[*d as usize]))
            .collect::<Vec<_>>()
            .join(", ")
            + " accepted"
    }
}

/// Runs decoder `d` on `p`; `Ok(true)` if it accepted the bytes.
fn decode(d: Decoder, p: &[u8]) -> Result<bool, String> {
    Ok(match d {
        Decoder::Header => {
            let Some(b) = p.get(..HEADER_SIZE) else {
                return Ok(false);
            };
            let b: &[u8; HEADER_SIZE] = b.try_into().map_err(|_| "header slice")?;
            let Ok(h) = Header::decode(b) else {
                return Ok(false);
            };
            roundtrip("header", &h, h.encode().to_vec(), |b| {
                Header::decode(b.try_into().map_err(|_| "len")?).map_err(|e| e.to_string())
            })?;
            true
        }
        Decoder::Version => {
            let Ok(req) = VersionRequest::decode(p) else {
                return Ok(false);
            };
            let reply = ServerCaps::default().reply_payload(&req);
            if reply.len() + HEADER_SIZE > VERSION_REPLY_LIMIT {
                return Err(format!(
                    "VERSION reply of {} bytes exceeds QEMU's {VERSION_REPLY_LIMIT}-byte buffer",
                    reply.len() + HEADER_SIZE
                ));
            }
            true
        }
        Decoder::DmaMap => {
            let Ok(m) = DmaMapRequest::decode(p) else {
                return Ok(false);
            };
            roundtrip("DMA_MAP", &m, m.encode(), DmaMapRequest::decode)?;
            true
        }
        Decoder::DmaUnmap => {
            let Ok(m) = DmaUnmapRequest::decode(p) else {
                return Ok(false);
            };
            roundtrip("DMA_UNMAP", &m, m.encode(), DmaUnmapRequest::decode)?;
            true
        }
        Decoder::DeviceInfo => InfoRequest::decode_device_info(p).is_ok(),
        Decoder::RegionInfo => InfoRequest::decode_region_info(p).is_ok(),
        Decoder::RegionIoFds => InfoRequest::decode_region_io_fds(p).is_ok(),
        Decoder::IrqInfo => InfoRequest::decode_irq_info(p).is_ok(),
        Decoder::SetIrqs => {
            let Ok(m) = SetIrqsRequest::decode(p) else {
                return Ok(false);
            };
            roundtrip("SET_IRQS", &m, m.encode(), SetIrqsRequest::decode)?;
            true
        }
        Decoder::RegionRead => {
            let Ok(a) = RegionAccess::decode_read(p, MAX_XFER) else {
                return Ok(false);
            };
            roundtrip("REGION_READ", &a, a.encode(&[]), |b| {
                RegionAccess::decode_read(b, MAX_XFER)
            })?;
            true
        }
        Decoder::RegionWrite => {
            let Ok((a, data)) = RegionAccess::decode_write(p, MAX_XFER) else {
                return Ok(false);
            };
            if data.len() != a.count as usize || a.count == 0 || a.count > MAX_XFER {
                return Err(format!(
                    "REGION_WRITE accepted {a:?} with {} data bytes",
                    data.len()
                ));
            }
            true
        }
        Decoder::WriteMulti => {
            let Ok(w) = decode_write_multi(p) else {
                return Ok(false);
            };
            if w.is_empty()
                || w.len() as u64 > MAX_WRITE_MULTI
                || w.iter().any(|m| !(1..=8).contains(&m.access.count))
            {
                return Err(format!("REGION_WRITE_MULTI accepted {w:?}"));
            }
            roundtrip(
                "REGION_WRITE_MULTI",
                &w,
                encode_write_multi(&w),
                decode_write_multi,
            )?;
            true
        }
        Decoder::DmaTransfer => {
            let Ok((t, data)) = DmaTransfer::decode(p, "DMA_READ reply") else {
                return Ok(false);
            };
            if data.len() + DmaTransfer::SIZE != p.len() {
                return Err(format!("DMA transfer {t:?} lost bytes"));
            }
            true
        }
    })
}
