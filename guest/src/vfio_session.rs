//! A vfio-pci session for a user-space driver in a guest with a vIOMMU:
//! the function bound to vfio-pci, its group in a type1 container, the
//! device fd with memory decoding and bus mastering on, and DMA buffers
//! mapped at IOVAs of the driver's choice.

use crate::sysfs;
use crate::vfio::{self, Container, Device, EventFd, Group, RegionInfo};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VFIO_PCI_DRIVER: &str = "/sys/bus/pci/drivers/vfio-pci";
const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;
const PAGE: usize = 4096;

/// An open device.
#[derive(Debug)]
pub struct Session {
    /// The type1 container.
    pub container: Container,
    /// The device's group.
    pub group: Group,
    /// The device fd.
    pub dev: Device,
    /// BAR0 region.
    pub bar0: RegionInfo,
    /// Configuration space region.
    pub config: RegionInfo,
}

fn modprobe(name: &str) -> Result<(), String> {
    match std::process::Command::new("modprobe").arg(name).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "modprobe {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run modprobe: {e}")),
    }
}

fn iommu_group(bdf: &str) -> Option<String> {
    sysfs::link_name(&sysfs::dev_dir(bdf).join("iommu_group"))
}

fn wait_path(p: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while !p.exists() {
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Binds `bdf` to `driver` through driver_override; returns the driver it
/// had before.
pub fn bind(bdf: &str, driver: &str) -> Result<Option<String>, String> {
    let dir = sysfs::dev_dir(bdf);
    let before = sysfs::link_name(&dir.join("driver"));
    if before.as_deref() == Some(driver) {
        return Ok(before);
    }
    if let Some(drv) = &before {
        sysfs::write_attr(&dir.join("driver").join("unbind"), bdf)
            .map_err(|e| format!("cannot unbind from {drv}: {e}"))?;
    }
    sysfs::write_attr(&dir.join("driver_override"), driver)?;
    let bind = Path::new("/sys/bus/pci/drivers").join(driver).join("bind");
    if let Err(e) = sysfs::write_attr(&bind, bdf) {
        let _ = sysfs::write_attr(Path::new("/sys/bus/pci/drivers_probe"), bdf);
        if sysfs::link_name(&dir.join("driver")).as_deref() != Some(driver) {
            return Err(format!("binding to {driver} failed: {e} (see dmesg)"));
        }
    }
    match sysfs::link_name(&dir.join("driver")) {
        Some(d) if d == driver => Ok(before),
        other => Err(format!(
            "after binding, the driver is {}, not {driver}",
            other.as_deref().unwrap_or("(none)")
        )),
    }
}

impl Session {
    /// Opens `bdf` (which must have IDs `ids`) through vfio-pci with a
    /// type1 container. `say` reports progress.
    pub fn open(bdf: &str, ids: (u16, u16), say: &dyn Fn(String)) -> Result<Session, String> {
        match sysfs::ids(bdf) {
            Some(found) if found == ids => {}
            Some((v, d)) => {
                return Err(format!(
                    "device is {v:04x}:{d:04x}, not {:04x}:{:04x}",
                    ids.0, ids.1
                ))
            }
            None => return Err("no such PCI device (or unreadable IDs)".into()),
        }
        let group_id = iommu_group(bdf).ok_or(
            "the device has no IOMMU group: give the guest a vIOMMU (QEMU -device \
             intel-iommu,caching-mode=on and intel_iommu=on); Debian's kernel has no \
             no-IOMMU vfio",
        )?;
        for m in ["vfio", "vfio_iommu_type1", "vfio-pci"] {
            if !Path::new(VFIO_PCI_DRIVER).exists() || m == "vfio_iommu_type1" {
                let _ = modprobe(m);
            }
        }
        if !Path::new(VFIO_PCI_DRIVER).exists() {
            return Err(format!("{VFIO_PCI_DRIVER} missing: vfio-pci is not loaded"));
        }
        let previous_driver = bind(bdf, "vfio-pci")?;
        say(format!(
            "bound to vfio-pci (was: {})",
            previous_driver.as_deref().unwrap_or("no driver")
        ));
        let group_path = PathBuf::from(format!("/dev/vfio/{group_id}"));
        if !wait_path(&group_path, Duration::from_secs(2)) {
            return Err(format!("{} does not exist", group_path.display()));
        }
        let container = Container::open(Path::new(VFIO_CONTAINER))
            .map_err(|e| format!("open {VFIO_CONTAINER}: {e}"))?;
        let api = container
            .api_version()
            .map_err(|e| format!("VFIO_GET_API_VERSION: {e}"))?;
        if api != vfio::VFIO_API_VERSION {
            return Err(format!("VFIO API version {api}"));
        }
        let t = if container
            .check_extension(vfio::VFIO_TYPE1V2_IOMMU)
            .unwrap_or(0)
            > 0
        {
            vfio::VFIO_TYPE1V2_IOMMU
        } else {
            vfio::VFIO_TYPE1_IOMMU
        };
        let group =
            Group::open(&group_path).map_err(|e| format!("open {}: {e}", group_path.display()))?;
        let st = group
            .status()
            .map_err(|e| format!("VFIO_GROUP_GET_STATUS: {e}"))?;
        if st & vfio::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(format!("IOMMU group {group_id} is not viable"));
        }
        group
            .set_container(&container)
            .map_err(|e| format!("VFIO_GROUP_SET_CONTAINER: {e}"))?;
        container
            .set_iommu(t)
            .map_err(|e| format!("VFIO_SET_IOMMU({t}): {e}"))?;
        let dev = group
            .device(bdf)
            .map_err(|e| format!("VFIO_GROUP_GET_DEVICE_FD({bdf}): {e}"))?;
        let bar0 = dev
            .region_info(vfio::VFIO_PCI_BAR0_REGION_INDEX)
            .map_err(|e| format!("VFIO_DEVICE_GET_REGION_INFO(BAR0): {e}"))?;
        let config = dev
            .region_info(vfio::VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| format!("VFIO_DEVICE_GET_REGION_INFO(config): {e}"))?;
        say(format!("type1 container via {}", group_path.display()));
        let s = Session {
            container,
            group,
            dev,
            bar0,
            config,
        };
        s.enable_bus_master()?;
        Ok(s)
    }

    /// Turns on memory decoding and bus mastering (vfio-pci leaves bus
    /// mastering to the user; without it QEMU drops MSI-X writes).
    pub fn enable_bus_master(&self) -> Result<(), String> {
        let off = self.config.offset + PCI_COMMAND;
        let cmd = self
            .dev
            .read16(off)
            .map_err(|e| format!("reading the command register: {e}"))?;
        let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.dev
            .write16(off, want)
            .map_err(|e| format!("writing the command register: {e}"))?;
        let got = self.dev.read16(off).unwrap_or(0);
        if got & want != want {
            return Err(format!(
                "command register reads {got:#06x} after {want:#06x}"
            ));
        }
        Ok(())
    }

    /// Reads a BAR0 register.
    pub fn rd(&self, r: u64) -> Result<u32, String> {
        self.dev
            .read32(self.bar0.offset + r)
            .map_err(|e| format!("reading BAR0 {r:#x}: {e}"))
    }

    /// Writes a BAR0 register.
    pub fn wr(&self, r: u64, v: u32) -> Result<(), String> {
        self.dev
            .write32(self.bar0.offset + r, v)
            .map_err(|e| format!("writing {v:#x} to BAR0 {r:#x}: {e}"))
    }

    /// Assigns one eventfd per MSI-X vector (up to `max`); returns them.
    pub fn msix_eventfds(&self, max: u32) -> Result<Vec<EventFd>, String> {
        let irq = self
            .dev
            .irq_info(vfio::VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| format!("VFIO_DEVICE_GET_IRQ_INFO(MSI-X): {e}"))?;
        let n = irq.count.min(max);
        if n == 0 {
            return Err("the device offers no MSI-X vectors".into());
        }
        let fds: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new().map_err(|e| format!("eventfd: {e}")))
            .collect::<Result<_, _>>()?;
        let raw: Vec<i32> = fds.iter().map(EventFd::raw).collect();
        self.dev
            .set_irq_eventfds(vfio::VFIO_PCI_MSIX_IRQ_INDEX, 0, &raw)
            .map_err(|e| format!("VFIO_DEVICE_SET_IRQS(MSI-X x{n}): {e}"))?;
        Ok(fds)
    }

    /// Turns MSI-X off again.
    pub fn disable_msix(&self) {
        let _ = self.dev.disable_irq(vfio::VFIO_PCI_MSIX_IRQ_INDEX);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.group.unset_container();
    }
}

/// Anonymous process memory a device reads and writes asynchronously: it
/// is accessed through raw copies ordered by fences, never through Rust
/// references.
#[derive(Debug)]
pub struct Anon {
    ptr: *mut u8,
    len: usize,
}

impl Anon {
    /// `len` bytes (rounded up to pages), populated; locked if `lock`.
    pub fn new(len: usize, lock: bool) -> Result<Anon, String> {
        let len = len.next_multiple_of(PAGE);
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let a = Anon { ptr: p.cast(), len };
        // SAFETY: `p` is our mapping of `len` bytes.
        if lock && unsafe { libc::mlock(p, len) } != 0 {
            return Err(format!("mlock: {}", std::io::Error::last_os_error()));
        }
        Ok(a)
    }

    /// The process virtual address of byte `off`.
    pub fn addr(&self, off: usize) -> u64 {
        self.ptr as u64 + off as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, n: usize) -> Result<(), String> {
        match off.checked_add(n) {
            Some(e) if e <= self.len => Ok(()),
            _ => Err(format!(
                "buffer access {off:#x}+{n} out of {} bytes",
                self.len
            )),
        }
    }

    /// Copies `data` in at `off`, then a fence (the device may read it once
    /// a later register write is seen).
    pub fn write(&self, off: usize, data: &[u8]) -> Result<(), String> {
        self.check(off, data.len())?;
        // SAFETY: bounds checked; our live writable mapping; `data` is ours.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// A fence, then copies `buf.len()` bytes out at `off`.
    pub fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), String> {
        self.check(off, buf.len())?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: bounds checked; our live readable mapping; `buf` is ours.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// One byte, read volatile (status polling).
    pub fn byte(&self, off: usize) -> Result<u8, String> {
        self.check(off, 1)?;
        // SAFETY: bounds checked; our live readable mapping.
        Ok(unsafe { std::ptr::read_volatile(self.ptr.add(off)) })
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping; nothing references it now.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Locked process memory mapped for the device at an IOVA (type1).
#[derive(Debug)]
pub struct DmaBuffer<'c> {
    mem: Anon,
    /// IOVA of the first byte.
    pub iova: u64,
    container: &'c Container,
}

impl<'c> DmaBuffer<'c> {
    /// `len` bytes (rounded up to pages) mapped at `iova`.
    pub fn new(container: &'c Container, len: usize, iova: u64) -> Result<Self, String> {
        let mem = Anon::new(len, true)?;
        container
            .map_dma(mem.addr(0), iova, mem.len() as u64)
            .map_err(|e| format!("VFIO_IOMMU_MAP_DMA({len} bytes at IOVA {iova:#x}): {e}"))?;
        Ok(DmaBuffer {
            mem,
            iova,
            container,
        })
    }
}

impl std::ops::Deref for DmaBuffer<'_> {
    type Target = Anon;
    fn deref(&self) -> &Anon {
        &self.mem
    }
}

impl Drop for DmaBuffer<'_> {
    fn drop(&mut self) {
        let _ = self.container.unmap_dma(self.iova, self.mem.len() as u64);
    }
}
