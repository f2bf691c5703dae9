//! Minimal VFIO user-space interface (include/uapi/linux/vfio.h): container,
//! group and device fds, region access through pread/pwrite, MSI-X eventfds,
//! type1 DMA maps. The ioctl numbers and structs are defined here.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const VFIO_TYPE: u32 = b';' as u32; // 0x3b
const VFIO_BASE: u32 = 100;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: direction and size are 0 for VFIO.
const fn vfio_io(nr: u32) -> libc::Ioctl {
    ((VFIO_TYPE << 8) | (VFIO_BASE + nr)) as libc::Ioctl
}

pub const VFIO_GET_API_VERSION: libc::Ioctl = vfio_io(0);
pub const VFIO_CHECK_EXTENSION: libc::Ioctl = vfio_io(1);
pub const VFIO_SET_IOMMU: libc::Ioctl = vfio_io(2);
pub const VFIO_GROUP_GET_STATUS: libc::Ioctl = vfio_io(3);
pub const VFIO_GROUP_SET_CONTAINER: libc::Ioctl = vfio_io(4);
pub const VFIO_GROUP_UNSET_CONTAINER: libc::Ioctl = vfio_io(5);
pub const VFIO_GROUP_GET_DEVICE_FD: libc::Ioctl = vfio_io(6);
pub const VFIO_DEVICE_GET_INFO: libc::Ioctl = vfio_io(7);
pub const VFIO_DEVICE_GET_REGION_INFO: libc::Ioctl = vfio_io(8);
pub const VFIO_DEVICE_GET_IRQ_INFO: libc::Ioctl = vfio_io(9);
pub const VFIO_DEVICE_SET_IRQS: libc::Ioctl = vfio_io(10);
pub const VFIO_DEVICE_RESET: libc::Ioctl = vfio_io(11);
pub const VFIO_IOMMU_MAP_DMA: libc::Ioctl = vfio_io(13);
pub const VFIO_IOMMU_UNMAP_DMA: libc::Ioctl = vfio_io(14);

pub const VFIO_API_VERSION: i32 = 0;
pub const VFIO_TYPE1_IOMMU: u32 = 1;
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
pub const VFIO_NOIOMMU_IOMMU: u32 = 8;

pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1 << 0;
pub const VFIO_GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;

pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;

pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;

pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

pub const VFIO_DMA_MAP_FLAG_READ: u32 = 1 << 0;
pub const VFIO_DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

/// `struct vfio_iommu_type1_dma_map`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` (without the trailing data).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn argsz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

fn open_rw(path: &Path) -> io::Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(f))
}

/// `ioctl(fd, req, arg)` with an integer argument.
fn ioctl_val(fd: RawFd, req: libc::Ioctl, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: VFIO ioctls taking an integer argument do not dereference it;
    // `fd` is a valid open descriptor owned by the caller.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, req, &mut T)` for a `#[repr(C)]` argument struct.
fn ioctl_ptr<T>(fd: RawFd, req: libc::Ioctl, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a valid, exclusively borrowed `#[repr(C)]` struct whose
    // layout matches what the kernel expects for `req`, and whose `argsz`
    // field (set by the caller) does not exceed its size; the kernel reads
    // and writes at most that many bytes. `fd` is valid for the call.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `/dev/vfio/vfio`.
#[derive(Debug)]
pub struct Container {
    fd: OwnedFd,
}

impl Container {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Container { fd: open_rw(path)? })
    }

    pub fn api_version(&self) -> io::Result<i32> {
        ioctl_val(self.fd.as_raw_fd(), VFIO_GET_API_VERSION, 0)
    }

    /// `VFIO_CHECK_EXTENSION`: > 0 when supported.
    pub fn check_extension(&self, ext: u32) -> io::Result<i32> {
        ioctl_val(
            self.fd.as_raw_fd(),
            VFIO_CHECK_EXTENSION,
            libc::c_ulong::from(ext),
        )
    }

    pub fn set_iommu(&self, iommu_type: u32) -> io::Result<()> {
        ioctl_val(
            self.fd.as_raw_fd(),
            VFIO_SET_IOMMU,
            libc::c_ulong::from(iommu_type),
        )
        .map(|_| ())
    }

    /// Type1: maps `size` bytes at user address `vaddr` to `iova`.
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64) -> io::Result<()> {
        let mut m = DmaMap {
            argsz: argsz::<DmaMap>(),
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        ioctl_ptr(self.fd.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &mut m).map(|_| ())
    }

    /// Type1: unmaps what `map_dma` mapped.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut m = DmaUnmap {
            argsz: argsz::<DmaUnmap>(),
            flags: 0,
            iova,
            size,
        };
        ioctl_ptr(self.fd.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut m).map(|_| ())
    }
}

/// `/dev/vfio/N` or `/dev/vfio/noiommu-N`.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Group { fd: open_rw(path)? })
    }

    /// `VFIO_GROUP_GET_STATUS` flags.
    pub fn status(&self) -> io::Result<u32> {
        let mut s = GroupStatus {
            argsz: argsz::<GroupStatus>(),
            flags: 0,
        };
        ioctl_ptr(self.fd.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut s)?;
        Ok(s.flags)
    }

    pub fn set_container(&self, c: &Container) -> io::Result<()> {
        let mut fd: libc::c_int = c.fd.as_raw_fd();
        ioctl_ptr(self.fd.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &mut fd).map(|_| ())
    }

    pub fn unset_container(&self) -> io::Result<()> {
        ioctl_val(self.fd.as_raw_fd(), VFIO_GROUP_UNSET_CONTAINER, 0).map(|_| ())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` for the device named `name` (its BDF).
    pub fn device(&self, name: &str) -> io::Result<Device> {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the argument is a valid NUL-terminated string that outlives
        // the call; the kernel only reads it. `self.fd` is a valid group fd.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                VFIO_GROUP_GET_DEVICE_FD,
                cname.as_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success the ioctl returns a new file descriptor that
        // nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        let mut info = DeviceInfo {
            argsz: argsz::<DeviceInfo>(),
            ..Default::default()
        };
        ioctl_ptr(fd.as_raw_fd(), VFIO_DEVICE_GET_INFO, &mut info)?;
        Ok(Device { fd, info })
    }
}

/// A VFIO device fd.
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
    pub info: DeviceInfo,
}

impl Device {
    /// The device fd (for mmap of a region).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn region_info(&self, index: u32) -> io::Result<RegionInfo> {
        let mut r = RegionInfo {
            argsz: argsz::<RegionInfo>(),
            index,
            ..Default::default()
        };
        ioctl_ptr(self.fd.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut r)?;
        Ok(r)
    }

    pub fn irq_info(&self, index: u32) -> io::Result<IrqInfo> {
        let mut r = IrqInfo {
            argsz: argsz::<IrqInfo>(),
            index,
            ..Default::default()
        };
        ioctl_ptr(self.fd.as_raw_fd(), VFIO_DEVICE_GET_IRQ_INFO, &mut r)?;
        Ok(r)
    }

    /// Assigns eventfds to vectors `start..start + fds.len()` of IRQ `index`
    /// (`-1` de-assigns one), enabling the interrupt type.
    pub fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        // struct vfio_irq_set { argsz, flags, index, start, count; u8 data[] }
        // followed by `count` s32 eventfds: all 32-bit words.
        let mut buf: Vec<u32> = Vec::with_capacity(5 + fds.len());
        let sz = 4 * (5 + fds.len());
        buf.push(sz as u32);
        buf.push(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER);
        buf.push(index);
        buf.push(start);
        buf.push(fds.len() as u32);
        buf.extend(fds.iter().map(|&fd| fd as u32));
        self.set_irqs_raw(&mut buf)
    }

    /// Disables IRQ `index` (DATA_NONE | ACTION_TRIGGER, count 0).
    pub fn disable_irq(&self, index: u32) -> io::Result<()> {
        let mut buf: Vec<u32> = vec![
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            0,
            0,
        ];
        self.set_irqs_raw(&mut buf)
    }

    fn set_irqs_raw(&self, buf: &mut [u32]) -> io::Result<()> {
        debug_assert!(buf.len() >= 5 && buf[0] as usize == buf.len() * 4);
        // SAFETY: `buf` is a live, exclusively borrowed buffer of exactly
        // `argsz` (= buf[0]) bytes laid out as struct vfio_irq_set plus its
        // data; the kernel reads at most argsz bytes from it.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), VFIO_DEVICE_SET_IRQS, buf.as_mut_ptr()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn reset(&self) -> io::Result<()> {
        ioctl_val(self.fd.as_raw_fd(), VFIO_DEVICE_RESET, 0).map(|_| ())
    }

    /// Reads exactly `buf.len()` bytes at device-fd offset `off`.
    pub fn pread(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let off =
            libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // duration of the call; `self.fd` is a valid descriptor.
        let n =
            unsafe { libc::pread(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read: {n} of {} bytes", buf.len()),
            ));
        }
        Ok(())
    }

    /// Writes all of `buf` at device-fd offset `off`.
    pub fn pwrite(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let off =
            libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the
        // duration of the call; `self.fd` is a valid descriptor.
        let n = unsafe { libc::pwrite(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", buf.len()),
            ));
        }
        Ok(())
    }

    pub fn read32(&self, off: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.pread(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write32(&self, off: u64, v: u32) -> io::Result<()> {
        self.pwrite(off, &v.to_le_bytes())
    }

    pub fn read16(&self, off: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.pread(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn write16(&self, off: u64, v: u16) -> io::Result<()> {
        self.pwrite(off, &v.to_le_bytes())
    }
}

/// A non-blocking eventfd.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let r = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `r` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        Ok(EventFd { fd })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads and resets the counter; 0 if nothing was signalled.
    pub fn take(&self) -> io::Result<u64> {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v`, which is valid for writes of 8 bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(v);
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
            Ok(0)
        } else if n < 0 {
            Err(e)
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short eventfd read",
            ))
        }
    }

    /// Waits up to `timeout_ms` for the eventfd to be signalled.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `p` is one valid pollfd, and nfds is 1.
            let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(r > 0 && p.revents & libc::POLLIN != 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers() {
        // Values from the kernel headers (_IO(';', 100 + n)).
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<DeviceInfo>(), 24);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
    }

    #[test]
    fn eventfd_roundtrip() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.take().unwrap(), 0);
        assert!(!e.wait(0).unwrap());
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array to a valid eventfd.
        let n = unsafe { libc::write(e.raw(), one.as_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert!(e.wait(0).unwrap());
        assert_eq!(e.take().unwrap(), 1);
    }
}
