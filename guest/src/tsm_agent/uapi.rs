//! The ioctl interface of `/dev/trustdev-tsm`, mirroring
//! guest/kmod/uapi/trustdev_tsm.h (sizes checked at compile time), and the
//! agent's handle on the device.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Largest DOE payload one exchange moves (`TDTSM_DOE_MAX`).
pub const DOE_MAX: usize = (1 << 20) - 8;
/// Length of the message buffers (`TDTSM_MSG_MAX`).
pub const MSG_MAX: usize = 512;

/// `TDTSM_OP_CONNECT`.
pub const OP_CONNECT: u32 = 1;
/// `TDTSM_OP_DISCONNECT`.
pub const OP_DISCONNECT: u32 = 2;

/// `TDTSM_REQ_SECURED_CMA`: the CMA mailbox also offers secured CMA.
pub const REQ_SECURED_CMA: u32 = 1 << 0;
/// `TDTSM_REQ_IDE_CAP`: the device has an IDE extended capability.
pub const REQ_IDE_CAP: u32 = 1 << 1;
/// `TDTSM_REQ_DEVCAP_TEE`: the device sets DEVCAP.TEE.
pub const REQ_DEVCAP_TEE: u32 = 1 << 2;
/// `TDTSM_REQ_IDE_ACTIVE`: disconnect of a connection with an IDE stream.
pub const REQ_IDE_ACTIVE: u32 = 1 << 3;

/// Names of the set `REQ_*` flags.
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    [
        (REQ_SECURED_CMA, "secured-CMA"),
        (REQ_IDE_CAP, "IDE-cap"),
        (REQ_DEVCAP_TEE, "DEVCAP.TEE"),
        (REQ_IDE_ACTIVE, "IDE-active"),
    ]
    .iter()
    .filter(|(b, _)| flags & b != 0)
    .map(|(_, n)| *n)
    .collect()
}

/// `TDTSM_IDE_SETUP`.
pub const IDE_SETUP: u32 = 1;
/// `TDTSM_IDE_ENABLE`.
pub const IDE_ENABLE: u32 = 2;
/// `TDTSM_IDE_TEARDOWN`.
pub const IDE_TEARDOWN: u32 = 3;
/// `TDTSM_IDE_DISABLE`: clear Enable, keep the Stream ID (disconnect).
pub const IDE_DISABLE: u32 = 4;

/// `TDTSM_IDE_MODE_KERNEL`: drivers/pci/ide.c helpers on both ends.
pub const IDE_MODE_KERNEL: u32 = 1;
/// `TDTSM_IDE_MODE_PLATFORM`: the module programs the device's registers.
pub const IDE_MODE_PLATFORM: u32 = 2;

/// `struct tdtsm_request`: one connect or disconnect the kernel waits on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    pub id: u64,
    pub op: u32,
    pub flags: u32,
    pub segment: u16,
    pub bus: u8,
    pub devfn: u8,
    pub vendor: u16,
    pub device: u16,
    pub ide_cap: u16,
    reserved0: u16,
    pub timeout_ms: u32,
    pub tsm_name: [u8; 16],
    reserved1: [u8; 16],
}

/// `struct tdtsm_doe`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Doe {
    id: u64,
    req_ptr: u64,
    rsp_ptr: u64,
    req_len: u32,
    rsp_cap: u32,
    rsp_len: u32,
    ty: u8,
    reserved: [u8; 3],
}

/// `struct tdtsm_ide`: a stream operation and its result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ide {
    pub id: u64,
    pub op: u32,
    pub mode: u32,
    pub stream_id: u8,
    pub stream_index: u8,
    pub ep_state: u8,
    pub rp_state: u8,
    pub ide_cap: u16,
    reserved0: u16,
    reserved1: [u32; 2],
    pub why: [u8; MSG_MAX],
}

/// `struct tdtsm_verdict`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Verdict {
    id: u64,
    status: i32,
    session_id: u32,
    message: [u8; MSG_MAX],
}

const _: () = assert!(std::mem::size_of::<Request>() == 64);
const _: () = assert!(std::mem::size_of::<Doe>() == 40);
const _: () = assert!(std::mem::size_of::<Ide>() == 544);
const _: () = assert!(std::mem::size_of::<Verdict>() == 528);

const MAGIC: u64 = 0xD5;
const fn ioc(dir: u64, nr: u64, size: usize) -> libc::Ioctl {
    ((dir << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr) as libc::Ioctl
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const IOC_GET_REQUEST: libc::Ioctl = ioc(IOC_READ, 1, std::mem::size_of::<Request>());
const IOC_DOE: libc::Ioctl = ioc(IOC_READ | IOC_WRITE, 2, std::mem::size_of::<Doe>());
const IOC_IDE: libc::Ioctl = ioc(IOC_READ | IOC_WRITE, 3, std::mem::size_of::<Ide>());
const IOC_COMPLETE: libc::Ioctl = ioc(IOC_WRITE, 4, std::mem::size_of::<Verdict>());

/// A NUL-terminated C string field as text.
pub fn c_text(b: &[u8]) -> String {
    CStr::from_bytes_until_nul(b)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned())
}

/// Copies `s` into a C string field, cut at a character boundary.
fn set_text(dst: &mut [u8; MSG_MAX], s: &str) {
    let mut n = s.len().min(MSG_MAX - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
    dst[n..].fill(0);
}

impl Request {
    /// `DDDD:BB:DD.F` of the device.
    pub fn bdf(&self) -> String {
        format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment,
            self.bus,
            self.devfn >> 3,
            self.devfn & 7
        )
    }

    /// The TSM's name (`tsm0`).
    pub fn tsm(&self) -> String {
        c_text(&self.tsm_name)
    }
}

impl Ide {
    /// The module's explanation of the stream's setup.
    pub fn why(&self) -> String {
        c_text(&self.why)
    }
}

/// The agent's open `/dev/trustdev-tsm` (the module allows one).
pub struct TsmDevice {
    file: File,
}

impl TsmDevice {
    /// Opens the device; EBUSY means another agent is attached.
    pub fn open(path: &Path) -> io::Result<TsmDevice> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(TsmDevice { file })
    }

    fn ioctl<T>(&self, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is an exclusively borrowed #[repr(C)] struct whose
        // size is encoded in `req` (checked against the C header above); the
        // module reads and writes at most that many bytes of it, and any user
        // pointers inside it stay valid for the duration of the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req, arg as *mut T) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Blocks until the kernel queues a connect/disconnect, and claims it.
    pub fn get_request(&self) -> io::Result<Request> {
        let mut r = Request::default();
        self.ioctl(IOC_GET_REQUEST, &mut r)?;
        Ok(r)
    }

    /// One DOE exchange through the kernel's `pci_tsm_doe_transfer()`;
    /// returns the response payload (dword granular, as `pci_doe()` gives it).
    pub fn doe(&self, id: u64, ty: u8, req: &[u8], rsp_cap: usize) -> io::Result<Vec<u8>> {
        if req.is_empty() || req.len() > DOE_MAX || !(4..=DOE_MAX).contains(&rsp_cap) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("DOE request of {} bytes is out of range", req.len()),
            ));
        }
        let mut rsp = vec![0u8; rsp_cap];
        let mut x = Doe {
            id,
            req_ptr: req.as_ptr() as u64,
            rsp_ptr: rsp.as_mut_ptr() as u64,
            req_len: req.len() as u32,
            rsp_cap: rsp_cap as u32,
            ty,
            ..Doe::default()
        };
        self.ioctl(IOC_DOE, &mut x)?;
        rsp.truncate((x.rsp_len as usize).min(rsp_cap));
        Ok(rsp)
    }

    /// A stream operation (`IDE_SETUP`, `IDE_ENABLE`, `IDE_DISABLE`,
    /// `IDE_TEARDOWN`); the
    /// result comes back on failure too.
    pub fn ide(&self, id: u64, op: u32) -> (io::Result<()>, Ide) {
        let mut x = Ide {
            id,
            op,
            mode: 0,
            stream_id: 0,
            stream_index: 0,
            ep_state: 0,
            rp_state: 0,
            ide_cap: 0,
            reserved0: 0,
            reserved1: [0; 2],
            why: [0; MSG_MAX],
        };
        let r = self.ioctl(IOC_IDE, &mut x);
        (r, x)
    }

    /// Completes request `id` with `status` (0 or a negative errno).
    pub fn complete(&self, id: u64, status: i32, session_id: u32, message: &str) -> io::Result<()> {
        let mut v = Verdict {
            id,
            status,
            session_id,
            message: [0; MSG_MAX],
        };
        set_text(&mut v.message, message);
        self.ioctl(IOC_COMPLETE, &mut v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_c_header() {
        // _IOR(0xD5, 1, 64), _IOWR(0xD5, 2, 40), _IOWR(0xD5, 3, 544), _IOW(0xD5, 4, 528)
        assert_eq!(IOC_GET_REQUEST, 0x8040_D501);
        assert_eq!(IOC_DOE, 0xC028_D502);
        assert_eq!(IOC_IDE, 0xC220_D503);
        assert_eq!(IOC_COMPLETE, 0x4210_D504);
    }

    #[test]
    fn text_fields() {
        let mut b = [0u8; MSG_MAX];
        set_text(&mut b, &"é".repeat(400));
        let t = c_text(&b);
        assert!(t.len() < MSG_MAX && t.chars().all(|c| c == 'é'));
        let r = Request {
            bus: 1,
            devfn: (3 << 3) | 2,
            tsm_name: *b"tsm0\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Request::default()
        };
        assert_eq!(r.bdf(), "0000:01:03.2");
        assert_eq!(r.tsm(), "tsm0");
    }
}
