//! A vfio-pci session for a user-space driver in a guest: the function
//! bound to vfio-pci, its group in a container (type1 with a vIOMMU, or
//! no-IOMMU where the kernel allows it), the device fd with memory decoding
//! and bus mastering on, and DMA buffers. The one home of that setup for
//! the guest tool's drivers (dma-copy, accel).

use crate::sysfs;
use crate::vfio::{self, Container, Device, EventFd, Group, RegionInfo};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NOIOMMU_PARAM: &str = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode";
const VFIO_PCI_DRIVER: &str = "/sys/bus/pci/drivers/vfio-pci";
const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;
const PAGE: usize = 4096;

/// An open device.
#[derive(Debug)]
pub struct Session {
    /// The container.
    pub container: Container,
    /// The device's group.
    pub group: Group,
    /// The device fd.
    pub dev: Device,
    /// BAR0 region.
    pub bar0: RegionInfo,
    /// Configuration space region.
    pub config: RegionInfo,
    /// /dev/vfio/N (or noiommu-N).
    pub group_path: PathBuf,
    /// No-IOMMU mode (physical addresses) instead of type1 (IOVAs).
    pub noiommu: bool,
    /// Driver bound before vfio-pci.
    pub previous_driver: Option<String>,
}

fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Tries `modprobe NAME ARGS...`; returns a description of the failure.
fn modprobe(name: &str, args: &[&str]) -> Result<(), String> {
    match std::process::Command::new("modprobe")
        .arg(name)
        .args(args)
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "modprobe {name} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run modprobe: {e}")),
    }
}

const MODULE_HINT: &str = "load, in this order: insmod vfio.ko enable_unsafe_noiommu_mode=1; \
     insmod vfio_iommu_type1.ko; insmod irqbypass.ko; insmod vfio-pci-core.ko; insmod vfio-pci.ko";

/// Makes sure vfio + vfio-pci are present and, if wanted, no-IOMMU mode is
/// allowed.
fn ensure_modules(say: &dyn Fn(String), want_noiommu: bool) -> Result<(), String> {
    if !module_loaded("vfio") {
        modprobe("vfio", &["enable_unsafe_noiommu_mode=1"]).map_err(|e| {
            format!("kernel module vfio is not loaded (and not built in); {e}; {MODULE_HINT}")
        })?;
        say("loaded vfio with modprobe".into());
    }
    if !Path::new(VFIO_PCI_DRIVER).exists() {
        let missing: Vec<&str> = [
            "vfio",
            "vfio_iommu_type1",
            "irqbypass",
            "vfio_pci_core",
            "vfio_pci",
        ]
        .into_iter()
        .filter(|m| !module_loaded(m))
        .collect();
        modprobe("vfio-pci", &[]).map_err(|e| {
            format!(
                "driver vfio-pci is not registered ({VFIO_PCI_DRIVER} missing; modules not \
                 loaded: {}); {e}; {MODULE_HINT}",
                if missing.is_empty() {
                    "none".to_string()
                } else {
                    missing.join(" ")
                }
            )
        })?;
        say("loaded vfio-pci with modprobe".into());
    }
    if want_noiommu {
        let p = Path::new(NOIOMMU_PARAM);
        let cur = sysfs::read_str(p).ok_or_else(|| {
            format!(
                "the device has no IOMMU group and {NOIOMMU_PARAM} does not exist: this \
                 kernel's vfio was built without CONFIG_VFIO_NOIOMMU (Debian's is), so \
                 no-IOMMU mode is impossible; give the guest a vIOMMU instead (QEMU \
                 -device intel-iommu,caching-mode=on and kernel parameter intel_iommu=on) \
                 so that vfio-pci uses type1 DMA maps"
            )
        })?;
        if cur != "Y" && cur != "1" {
            sysfs::write_attr(p, "Y")?;
            say(
                "enabled vfio no-IOMMU mode (enable_unsafe_noiommu_mode=Y; taints the kernel)"
                    .into(),
            );
        }
    }
    if !Path::new(VFIO_CONTAINER).exists() {
        return Err(format!(
            "{VFIO_CONTAINER} does not exist (vfio is loaded; is devtmpfs mounted on /dev? \
             does the kernel have CONFIG_VFIO_CONTAINER?)"
        ));
    }
    Ok(())
}

fn iommu_group(bdf: &str) -> Option<String> {
    sysfs::link_name(&sysfs::dev_dir(bdf).join("iommu_group"))
}

/// Waits for a device node (devtmpfs creates it asynchronously to us).
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
/// had before. A function already bound to `driver` is left alone unless
/// `rebind` says it must be bound again (vfio-pci bound before no-IOMMU
/// mode was on: it has no group yet).
pub fn bind(bdf: &str, driver: &str, rebind: bool) -> Result<Option<String>, String> {
    let dir = sysfs::dev_dir(bdf);
    let before = sysfs::link_name(&dir.join("driver"));
    if before.as_deref() == Some(driver) && !rebind {
        return Ok(before);
    }
    if let Some(drv) = &before {
        sysfs::write_attr(&dir.join("driver").join("unbind"), bdf)
            .map_err(|e| format!("cannot unbind from {drv}: {e}"))?;
    }
    sysfs::write_attr(&dir.join("driver_override"), driver)?;
    let bind = Path::new("/sys/bus/pci/drivers").join(driver).join("bind");
    if let Err(e) = sysfs::write_attr(&bind, bdf) {
        // drivers_probe honours driver_override too; try it before giving up.
        let _ = sysfs::write_attr(Path::new("/sys/bus/pci/drivers_probe"), bdf);
        if sysfs::link_name(&dir.join("driver")).as_deref() != Some(driver) {
            return Err(format!(
                "binding to {driver} failed: {e} (see dmesg; vfio-pci refuses devices \
                 without an IOMMU group unless no-IOMMU mode is on)"
            ));
        }
    }
    match sysfs::link_name(&dir.join("driver")) {
        Some(d) if d == driver => Ok(before),
        other => Err(format!(
            "after binding, the device's driver is {}, not {driver}",
            other.as_deref().unwrap_or("(none)")
        )),
    }
}

/// Opens the container for `group_path` with the right IOMMU type.
fn open_container(
    group_path: &Path,
    group_id: &str,
    noiommu: bool,
) -> Result<(Container, Group), String> {
    let container = Container::open(Path::new(VFIO_CONTAINER))
        .map_err(|e| format!("open {VFIO_CONTAINER}: {e}"))?;
    let api = container
        .api_version()
        .map_err(|e| format!("VFIO_GET_API_VERSION: {e}"))?;
    if api != vfio::VFIO_API_VERSION {
        return Err(format!(
            "VFIO API version {api}, expected {}",
            vfio::VFIO_API_VERSION
        ));
    }
    let iommu_type = if noiommu {
        vfio::VFIO_NOIOMMU_IOMMU
    } else if container
        .check_extension(vfio::VFIO_TYPE1V2_IOMMU)
        .unwrap_or(0)
        > 0
    {
        vfio::VFIO_TYPE1V2_IOMMU
    } else {
        vfio::VFIO_TYPE1_IOMMU
    };
    let ext = container
        .check_extension(iommu_type)
        .map_err(|e| format!("VFIO_CHECK_EXTENSION({iommu_type}): {e}"))?;
    if ext <= 0 {
        return Err(if noiommu {
            "the VFIO container does not offer VFIO_NOIOMMU_IOMMU (is \
             enable_unsafe_noiommu_mode=Y?)"
                .to_string()
        } else {
            format!(
                "the VFIO container does not offer IOMMU type {iommu_type} \
                 (is vfio_iommu_type1 loaded?)"
            )
        });
    }
    let group =
        Group::open(group_path).map_err(|e| format!("open {}: {e}", group_path.display()))?;
    let st = group
        .status()
        .map_err(|e| format!("VFIO_GROUP_GET_STATUS: {e}"))?;
    if st & vfio::VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(format!(
            "IOMMU group {group_id} is not viable: every device in \
             /sys/kernel/iommu_groups/{group_id}/devices must be bound to vfio-pci or unbound"
        ));
    }
    group
        .set_container(&container)
        .map_err(|e| format!("VFIO_GROUP_SET_CONTAINER: {e}"))?;
    let st = group
        .status()
        .map_err(|e| format!("VFIO_GROUP_GET_STATUS: {e}"))?;
    if st & vfio::VFIO_GROUP_FLAGS_CONTAINER_SET == 0 {
        return Err(format!(
            "group status {st:#x} lacks CONTAINER_SET after VFIO_GROUP_SET_CONTAINER"
        ));
    }
    container
        .set_iommu(iommu_type)
        .map_err(|e| format!("VFIO_SET_IOMMU({iommu_type}): {e}"))?;
    Ok((container, group))
}

impl Session {
    /// Opens `bdf` (which must have IDs `ids`) through vfio-pci: type1 when
    /// the function has an IOMMU group, no-IOMMU mode otherwise (if the
    /// kernel allows it). `say` reports progress.
    pub fn open(bdf: &str, ids: (u16, u16), say: &dyn Fn(String)) -> Result<Session, String> {
        let dir = sysfs::dev_dir(bdf);
        if !dir.exists() {
            let present = sysfs::list_bdfs().unwrap_or_default().join(" ");
            return Err(format!("no such PCI device (present: {present})"));
        }
        match sysfs::ids(bdf) {
            Some(found) if found == ids => {}
            Some((v, d)) => {
                return Err(format!(
                    "device is {v:04x}:{d:04x}, not {:04x}:{:04x}",
                    ids.0, ids.1
                ))
            }
            None => return Err("cannot read vendor/device from sysfs".into()),
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("must run as root (sysfs binding, /dev/vfio, /proc/self/pagemap)".into());
        }
        // An IOMMU group before binding means a real (v)IOMMU: use type1.
        let has_iommu = iommu_group(bdf).is_some_and(|g| {
            let name = Path::new("/sys/kernel/iommu_groups").join(g).join("name");
            sysfs::read_str(&name).as_deref() != Some("vfio-noiommu")
        });
        ensure_modules(say, !has_iommu)?;
        let rebind = !has_iommu && iommu_group(bdf).is_none();
        let previous_driver = bind(bdf, "vfio-pci", rebind)?;
        say(format!(
            "bound to vfio-pci (was: {})",
            previous_driver.as_deref().unwrap_or("no driver")
        ));
        let group_id = iommu_group(bdf).ok_or_else(|| {
            format!(
                "no IOMMU group after binding to vfio-pci ({}/iommu_group missing)",
                dir.display()
            )
        })?;
        // vfio names the fake groups it creates for no-IOMMU devices.
        let group_name = Path::new("/sys/kernel/iommu_groups")
            .join(&group_id)
            .join("name");
        let noiommu = sysfs::read_str(&group_name).as_deref() == Some("vfio-noiommu");
        let group_path = PathBuf::from(if noiommu {
            format!("/dev/vfio/noiommu-{group_id}")
        } else {
            format!("/dev/vfio/{group_id}")
        });
        if !wait_path(&group_path, Duration::from_secs(2)) {
            return Err(format!(
                "{} does not exist for IOMMU group {group_id} (devtmpfs not mounted on /dev?)",
                group_path.display()
            ));
        }
        let (container, group) = open_container(&group_path, &group_id, noiommu)?;
        let dev = group
            .device(bdf)
            .map_err(|e| format!("VFIO_GROUP_GET_DEVICE_FD({bdf}): {e}"))?;
        if dev.info.flags & vfio::VFIO_DEVICE_FLAGS_PCI == 0
            || dev.info.num_regions <= vfio::VFIO_PCI_CONFIG_REGION_INDEX
            || dev.info.num_irqs <= vfio::VFIO_PCI_MSIX_IRQ_INDEX
        {
            return Err(format!(
                "unexpected VFIO device info: flags {:#x}, {} regions, {} irqs",
                dev.info.flags, dev.info.num_regions, dev.info.num_irqs
            ));
        }
        let bar0 = dev
            .region_info(vfio::VFIO_PCI_BAR0_REGION_INDEX)
            .map_err(|e| format!("VFIO_DEVICE_GET_REGION_INFO(BAR0): {e}"))?;
        let config = dev
            .region_info(vfio::VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| format!("VFIO_DEVICE_GET_REGION_INFO(config): {e}"))?;
        let s = Session {
            container,
            group,
            dev,
            bar0,
            config,
            group_path,
            noiommu,
            previous_driver,
        };
        s.enable_bus_master(say)?;
        Ok(s)
    }

    /// "type1" or "no-IOMMU".
    pub fn mode(&self) -> &'static str {
        if self.noiommu {
            "no-IOMMU"
        } else {
            "type1"
        }
    }

    /// Turns on memory decoding and bus mastering: vfio-pci enables the
    /// device (memory decode) but leaves bus mastering to the user; without
    /// it QEMU drops the device's MSI-X writes. Also needed again after a
    /// VFIO_DEVICE_RESET.
    pub fn enable_bus_master(&self, say: &dyn Fn(String)) -> Result<(), String> {
        let off = self.config.offset + PCI_COMMAND;
        let cmd = self
            .dev
            .read16(off)
            .map_err(|e| format!("reading the command register: {e}"))?;
        let want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        if want != cmd {
            self.dev
                .write16(off, want)
                .map_err(|e| format!("writing the command register: {e}"))?;
            say(format!(
                "command register {cmd:#06x} -> {want:#06x} (memory decode + bus master)"
            ));
        }
        let got = self
            .dev
            .read16(off)
            .map_err(|e| format!("reading the command register: {e}"))?;
        let both = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        if got & both != both {
            return Err(format!(
                "command register reads {got:#06x} after writing {want:#06x}: memory decode / \
                 bus master did not stick"
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
        if n == 0 || irq.flags & vfio::VFIO_IRQ_INFO_EVENTFD == 0 {
            return Err(format!(
                "device offers no MSI-X eventfds (count {}, flags {:#x})",
                irq.count, irq.flags
            ));
        }
        let fds: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new().map_err(|e| format!("eventfd: {e}")))
            .collect::<Result<_, _>>()?;
        let raw: Vec<i32> = fds.iter().map(EventFd::raw).collect();
        self.dev
            .set_irq_eventfds(vfio::VFIO_PCI_MSIX_IRQ_INDEX, 0, &raw)
            .map_err(|e| format!("VFIO_DEVICE_SET_IRQS(MSI-X, {n} eventfds): {e}"))?;
        Ok(fds)
    }

    /// Turns MSI-X off again.
    pub fn disable_msix(&self) -> Result<(), String> {
        self.dev
            .disable_irq(vfio::VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| format!("disabling MSI-X: {e}"))
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
