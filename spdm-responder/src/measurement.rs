//! DMTF measurement blocks (DSP0274 "Measurement block" / "DMTF measurement specification format").

use crate::crypto::HashAlgo;

/// DMTFSpecMeasurementValueType values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MeasurementKind {
    ImmutableRom = 0,
    MutableFirmware = 1,
    HardwareConfiguration = 2,
    FirmwareConfiguration = 3,
    MeasurementManifest = 4,
    DeviceMode = 5,
    Version = 6,
    SecureVersionNumber = 7,
}

/// How a measurement is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// A digest of `content` with the negotiated MeasurementHashAlgo (raw if the
    /// requester asks for raw bit streams, 1.2+).
    Digest,
    /// `content` itself (type bit 7 set).
    Raw,
}

/// One measurement the device reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// Index 1..=0xFE.
    pub index: u8,
    pub kind: MeasurementKind,
    pub representation: Representation,
    pub content: Vec<u8>,
    /// Included in the TCB measurement summary hash.
    pub tcb: bool,
}

impl Measurement {
    /// The full measurement block: common header + DMTF header + value.
    pub fn block(&self, meas_hash: Option<HashAlgo>, raw_requested: bool) -> Vec<u8> {
        let raw =
            self.representation == Representation::Raw || raw_requested || meas_hash.is_none();
        let (ty, value) = if raw {
            (self.kind as u8 | 0x80, self.content.clone())
        } else {
            (
                self.kind as u8,
                meas_hash.map(|h| h.hash(&self.content)).unwrap_or_default(),
            )
        };
        let value = if value.len() > 0xFFF0 {
            value[..0xFFF0].to_vec()
        } else {
            value
        };
        let msize = 3 + value.len();
        let mut v = Vec::with_capacity(4 + msize);
        v.push(self.index);
        v.push(0x01); // MeasurementSpecification DMTF
        v.extend_from_slice(&(msize as u16).to_le_bytes());
        v.push(ty);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(&value);
        v
    }
}

/// The default measurements of a trustdev device.
pub fn default_measurements(firmware_version: &str, device_config: &[u8]) -> Vec<Measurement> {
    vec![
        Measurement {
            index: 1,
            kind: MeasurementKind::ImmutableRom,
            representation: Representation::Digest,
            content: b"trustdev immutable boot ROM v1".to_vec(),
            tcb: true,
        },
        Measurement {
            index: 2,
            kind: MeasurementKind::MutableFirmware,
            representation: Representation::Digest,
            content: format!("trustdev firmware image {firmware_version}").into_bytes(),
            tcb: true,
        },
        Measurement {
            index: 3,
            kind: MeasurementKind::Version,
            representation: Representation::Raw,
            content: firmware_version.as_bytes().to_vec(),
            tcb: false,
        },
        Measurement {
            index: 4,
            kind: MeasurementKind::HardwareConfiguration,
            representation: Representation::Digest,
            content: device_config.to_vec(),
            tcb: false,
        },
    ]
}

/// Parse a measurement record into `(index, type, value)` triples (requester side).
pub fn parse_record(mut rec: &[u8], count: usize) -> Option<Vec<(u8, u8, Vec<u8>)>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if rec.len() < 4 {
            return None;
        }
        let index = rec[0];
        let spec = rec[1];
        let size = u16::from_le_bytes([rec[2], rec[3]]) as usize;
        let body = rec.get(4..4 + size)?;
        if spec != 0x01 || body.len() < 3 {
            return None;
        }
        let ty = body[0];
        let vsize = u16::from_le_bytes([body[1], body[2]]) as usize;
        if 3 + vsize != size {
            return None;
        }
        out.push((index, ty, body[3..].to_vec()));
        rec = &rec[4 + size..];
    }
    rec.is_empty().then_some(out)
}
