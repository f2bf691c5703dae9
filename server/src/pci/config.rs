//! The 4 KiB PCI Express configuration space with per-bit write semantics and
//! pluggable register handlers.

use super::Bar;
use std::ops::Range;

/// Size of PCIe configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;

/// Registers with behaviour (a DOE mailbox, IDE stream control...). The
/// handler owns the bytes of its range: reads and writes there go to it, not
/// to the mask-driven store.
pub trait ConfigHandler: Send {
    /// Reads `data.len()` bytes at `offset` (relative to the handler's range).
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes `data` at `offset` (relative to the handler's range).
    fn write(&mut self, offset: u16, data: &[u8]);
    /// Returns the registers to their reset state.
    fn reset(&mut self) {}
}

/// Side effects of a configuration write that the device model may act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigEvents {
    /// The Command register changed.
    pub command: bool,
    /// A BAR register changed.
    pub bars: bool,
    /// Function Level Reset was initiated (PCIe DevCtl bit 15).
    pub flr: bool,
}

struct Handler {
    range: Range<u16>,
    handler: Box<dyn ConfigHandler>,
}

/// Configuration space: current bytes, the reset image, and per-bit masks.
pub struct ConfigSpace {
    data: Box<[u8; CONFIG_SPACE_SIZE]>,
    reset_image: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Bits the guest may write.
    rw: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Bits cleared by writing 1.
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    handlers: Vec<Handler>,
    /// Offset of the PCIe capability, for FLR detection.
    pcie_cap: Option<u16>,
    /// BARs 0-5 and the ROM (6).
    bars: [Option<Bar>; 7],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(0)))
            .field("device", &format_args!("{:#06x}", self.read_u16(2)))
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

const COMMAND: usize = 0x04;
const BAR0: usize = 0x10;
const ROM_BAR: usize = 0x30;
/// PCIe DevCtl offset inside the PCIe capability, and its FLR bit.
const PCIE_DEVCTL: u16 = 0x08;
const DEVCTL_FLR: u16 = 1 << 15;

impl ConfigSpace {
    pub(crate) fn new() -> Self {
        ConfigSpace {
            data: Box::new([0; CONFIG_SPACE_SIZE]),
            reset_image: Box::new([0; CONFIG_SPACE_SIZE]),
            rw: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            handlers: Vec::new(),
            pcie_cap: None,
            bars: [None; 7],
        }
    }

    pub(crate) fn set_bars(&mut self, bars: [Option<Bar>; 7]) {
        self.bars = bars;
    }

    /// BAR `index` (0-5, 6 = ROM) as declared by the builder.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Offset of the PCI Express capability, if any.
    pub fn pcie_cap(&self) -> Option<u16> {
        self.pcie_cap
    }

    /// Sets bytes of the initial image (builder use).
    pub(crate) fn init(&mut self, offset: usize, bytes: &[u8]) {
        self.data[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Sets write masks for bytes at `offset` (builder use).
    pub(crate) fn mask(&mut self, offset: usize, rw: &[u8], w1c: &[u8]) {
        for (i, b) in rw.iter().enumerate() {
            self.rw[offset + i] = *b;
        }
        for (i, b) in w1c.iter().enumerate() {
            self.w1c[offset + i] = *b;
        }
    }

    pub(crate) fn set_pcie_cap(&mut self, off: u16) {
        self.pcie_cap = Some(off);
    }

    /// Installs a handler for `range` (builder use; ranges must not overlap).
    pub(crate) fn add_handler(&mut self, range: Range<u16>, handler: Box<dyn ConfigHandler>) {
        self.handlers.push(Handler { range, handler });
        self.handlers.sort_by_key(|h| h.range.start);
    }

    /// Freezes the current bytes as the reset image.
    pub(crate) fn seal(&mut self) {
        *self.reset_image = *self.data;
    }

    /// Restores the reset image and resets every handler.
    pub fn reset(&mut self) {
        *self.data = *self.reset_image;
        for h in &mut self.handlers {
            h.handler.reset();
        }
    }

    /// Function Level Reset as the guest sees it through a vfio-user client:
    /// everything returns to the reset image except the BAR and expansion-ROM
    /// base addresses. For a passed-through function the host restores those
    /// after the reset itself (vfio-pci saves and restores the function's
    /// state), and the client emulates them, so the guest kernel's own
    /// restore (`pci_restore_config_space()` rewrites only dwords that read
    /// back changed) never writes them again. Without this the device would
    /// report BARs at 0 after `echo 1 > reset` (and, for example, a TDISP
    /// interface report with no MMIO ranges).
    pub fn function_reset(&mut self) {
        let mut bars = [0u8; 24];
        bars.copy_from_slice(&self.data[BAR0..BAR0 + 24]);
        let mut rom = [0u8; 4];
        rom.copy_from_slice(&self.data[ROM_BAR..ROM_BAR + 4]);
        self.reset();
        self.data[BAR0..BAR0 + 24].copy_from_slice(&bars);
        self.data[ROM_BAR..ROM_BAR + 4].copy_from_slice(&rom);
    }

    /// Reads a little-endian u16 from the store (not through handlers).
    pub fn read_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.data[off], self.data[off + 1]])
    }

    /// Reads a little-endian u32 from the store (not through handlers).
    pub fn read_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().unwrap_or([0; 4]))
    }

    /// Whether `offset..offset+len` lies inside configuration space.
    pub fn contains(offset: u64, len: usize) -> bool {
        offset
            .checked_add(len as u64)
            .is_some_and(|e| e <= CONFIG_SPACE_SIZE as u64)
    }

    /// Splits `[off, off+len)` into runs that are either wholly inside one
    /// handler (Some(index)) or wholly in the store (None).
    fn runs(&self, off: usize, len: usize) -> Vec<(usize, usize, Option<usize>)> {
        let mut out = Vec::new();
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let hit = self
                .handlers
                .iter()
                .enumerate()
                .find(|(_, h)| (h.range.start as usize) < end && pos < h.range.end as usize);
            match hit {
                Some((i, h)) if (h.range.start as usize) <= pos => {
                    let e = end.min(h.range.end as usize);
                    out.push((pos, e, Some(i)));
                    pos = e;
                }
                Some((_, h)) => {
                    let e = h.range.start as usize;
                    out.push((pos, e, None));
                    pos = e;
                }
                None => {
                    out.push((pos, end, None));
                    pos = end;
                }
            }
        }
        out
    }

    /// Reads `data.len()` bytes at `offset`. The caller has bounds-checked
    /// the access with [`ConfigSpace::contains`]; an access outside reads as 0xff.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !Self::contains(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let off = offset as usize;
        for (s, e, h) in self.runs(off, data.len()) {
            let out = &mut data[s - off..e - off];
            match h {
                Some(i) => {
                    let h = &mut self.handlers[i];
                    h.handler.read((s - h.range.start as usize) as u16, out);
                }
                None => out.copy_from_slice(&self.data[s..e]),
            }
        }
    }

    /// Writes `data` at `offset`, honouring read-only, read-write and
    /// write-1-to-clear bits. Writes outside config space are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> ConfigEvents {
        let mut ev = ConfigEvents::default();
        if !Self::contains(offset, data.len()) {
            return ev;
        }
        let off = offset as usize;
        for (s, e, h) in self.runs(off, data.len()) {
            let src = &data[s - off..e - off];
            if let Some(i) = h {
                let h = &mut self.handlers[i];
                h.handler.write((s - h.range.start as usize) as u16, src);
                continue;
            }
            for (k, &v) in src.iter().enumerate() {
                let a = s + k;
                let old = self.data[a];
                let mut new = (old & !self.rw[a]) | (v & self.rw[a]);
                new &= !(v & self.w1c[a]);
                self.data[a] = new;
                if new != old || v != 0 {
                    if (COMMAND..COMMAND + 2).contains(&a) && new != old {
                        ev.command = true;
                    }
                    if ((BAR0..BAR0 + 24).contains(&a) || (ROM_BAR..ROM_BAR + 4).contains(&a))
                        && new != old
                    {
                        ev.bars = true;
                    }
                }
            }
            if let Some(pc) = self.pcie_cap {
                let devctl = (pc + PCIE_DEVCTL) as usize;
                if s <= devctl + 1 && devctl + 1 < e && src[devctl + 1 - s] & 0x80 != 0 {
                    ev.flr = true;
                    // Initiate FLR always reads as zero.
                    self.data[devctl + 1] &= !((DEVCTL_FLR >> 8) as u8);
                }
            }
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u32);
    impl ConfigHandler for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            let b = self.0.to_le_bytes();
            for (i, d) in data.iter_mut().enumerate() {
                *d = b[(offset as usize + i) % 4];
            }
        }
        fn write(&mut self, _offset: u16, data: &[u8]) {
            let mut b = [0u8; 4];
            b[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
            self.0 = u32::from_le_bytes(b);
        }
        fn reset(&mut self) {
            self.0 = 0;
        }
    }

    #[test]
    fn masks() {
        let mut c = ConfigSpace::new();
        c.init(0x10, &[0xaa, 0xbb]);
        c.mask(0x10, &[0x0f, 0x00], &[0x00, 0xf0]);
        c.seal();
        c.write(0x10, &[0xff, 0xff]);
        let mut b = [0u8; 2];
        c.read(0x10, &mut b);
        assert_eq!(b, [0xaf, 0x0b]);
        c.reset();
        c.read(0x10, &mut b);
        assert_eq!(b, [0xaa, 0xbb]);
    }

    #[test]
    fn handler_split_access() {
        let mut c = ConfigSpace::new();
        c.init(0x100, &[1, 2, 3, 4]);
        c.add_handler(0x104..0x108, Box::new(Echo(0x11223344)));
        let mut b = [0u8; 8];
        c.read(0x100, &mut b);
        assert_eq!(b, [1, 2, 3, 4, 0x44, 0x33, 0x22, 0x11]);
        c.write(0x104, &[9, 0, 0, 0]);
        let mut d = [0u8; 4];
        c.read(0x104, &mut d);
        assert_eq!(d, [9, 0, 0, 0]);
        let mut oob = [0u8; 4];
        c.read(4094, &mut oob);
        assert_eq!(oob, [0xff; 4]);
    }
}
