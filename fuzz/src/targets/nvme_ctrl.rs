//! `nvme-ctrl`: hostile submission queue entries against a live controller.
//!
//! The NVMe controller (as `trustdev serve nvme` builds it: RAM namespace,
//! DOE/CMA, Security Send/Receive with an SPDM responder) runs in process
//! with its admin thread and I/O worker; the crate's host driver enables it
//! and creates two I/O queue pairs in driver memory mapped far from the
//! fuzzed memory. Each input is one submission entry for the admin queue or
//! an I/O queue plus an image of a 64 KiB window of guest memory that its
//! data pointers, PRP lists and SGL segments point into. Inputs are
//! generated structure-aware (real opcodes, PRP lists and SGL chains laid
//! out in the window, plausible CDW10-15) and then mutated.
//!
//! Oracles: every command completes (Asynchronous Event Requests excepted,
//! which complete on events) within the hang limit with the submitted CID
//! and queue id; the controller never enters Controller Fatal Status; and
//! after each input the queue just used still serves a valid command
//! (Identify on the admin queue, a one-block Read on an I/O queue). Inputs
//! that may legitimately change the queue setup (queue create/delete,
//! Doorbell Buffer Config, Asynchronous Event Request) are followed by a
//! controller reset and queue re-creation, which must succeed.

use super::nvme_dptr::sgl_desc;
use super::spdm::{identity, responder};
use crate::engine::Target;
use crate::mutate::{mutate, Cursor, Rng};
use std::os::fd::OwnedFd;
use std::time::Duration;
use trustdev_devices::nvme::host::{Bar0, HostDriver, HostMemory};
use trustdev_devices::nvme::spec::{admin, csts, io, reg, Command, Status, SQE_SIZE};
use trustdev_devices::nvme::{NvmeArgs, NvmeConfig, NvmeDevice, NvmeSecurity};
use vfio_user_server::pci::PortType;
use vfio_user_server::protocol::DmaMapRequest;
use vfio_user_server::Device;

/// The NVMe device every NVMe-facing target serves: a 4 MiB RAM namespace,
/// 4 I/O queue pairs of up to 64 entries, one worker, MDTS 512 KiB, a DOE
/// mailbox with CMA/SPDM and an SPDM responder on Security Send/Receive.
pub fn device() -> Result<NvmeDevice, String> {
    let args = NvmeArgs {
        size: Some(4 << 20),
        queues: 4,
        queue_entries: 64,
        workers: Some(1),
        shadow_poll_us: 50,
        lba_size: 512,
        mdts: 7,
        temperature: 35,
        ..NvmeArgs::default()
    };
    let cfg = NvmeConfig::from_args(&args, "trustdev-fuzz").map_err(|e| e.to_string())?;
    let sec = NvmeSecurity {
        ext_caps: vec![trustdev_devices::security::doe_capability(
            Some(identity()),
            super::spdm::responder_config(),
        )],
        tee: true,
        storage: Some(responder()),
    };
    NvmeDevice::new_secure(cfg, PortType::Endpoint, sec).map_err(|e| e.to_string())
}

/// Guest address of the fuzzed window.
pub const WIN: u64 = 0x1000_0000;
/// Size of the window image an input can fill.
const WIN_IMAGE: usize = 64 << 10;
/// Size of the mapped window memory (transfers may run past the image).
const WIN_MAP: usize = 1 << 20;
/// Guest address of the driver's queues and buffers (far from the window).
const DRV: u64 = 0x7e00_0000_0000;
const DRV_SIZE: usize = 2 << 20;
const IO_QUEUES: u16 = 2;
const QUEUE_ENTRIES: u32 = 64;

fn map(dev: &NvmeDevice, mem: &HostMemory, iova: u64) -> Result<(), String> {
    let fd: OwnedFd = mem
        .fd()
        .try_clone_to_owned()
        .map_err(|e| format!("dup: {e}"))?;
    dev.context()
        .memory
        .map(&DmaMapRequest::read_write(iova, mem.len() as u64), Some(fd))
        .map_err(|e| format!("DMA map: {e}"))
}

/// The `nvme-ctrl` target.
pub struct NvmeCtrl {
    seeds: Vec<Vec<u8>>,
    drv: Option<HostDriver<NvmeDevice>>,
    win: HostMemory,
    /// Bytes of the window the last input wrote (cleared before the next).
    dirty: usize,
    /// Driver buffer for probes.
    buf: u64,
    /// Controller resets done.
    pub resets: u64,
    /// Completions with a success / an error status.
    ok: u64,
    errors: u64,
}

impl std::fmt::Debug for NvmeCtrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeCtrl")
            .field("resets", &self.resets)
            .finish_non_exhaustive()
    }
}

/// Admin opcodes after which the queue setup may have changed.
fn changes_queues(opcode: u8) -> bool {
    matches!(
        opcode,
        admin::DELETE_SQ
            | admin::CREATE_SQ
            | admin::DELETE_CQ
            | admin::CREATE_CQ
            | admin::DBBUF_CONFIG
            | admin::ASYNC_EVENT
            | admin::ABORT
    )
}

const ADMIN_OPS: [u8; 15] = [
    admin::DELETE_SQ,
    admin::CREATE_SQ,
    admin::GET_LOG_PAGE,
    admin::DELETE_CQ,
    admin::CREATE_CQ,
    admin::IDENTIFY,
    admin::ABORT,
    admin::SET_FEATURES,
    admin::GET_FEATURES,
    admin::ASYNC_EVENT,
    admin::KEEP_ALIVE,
    admin::DBBUF_CONFIG,
    admin::SECURITY_SEND,
    admin::SECURITY_RECV,
    0x80, // Format NVM
];

const IO_OPS: [u8; 7] = [
    io::FLUSH,
    io::WRITE,
    io::READ,
    io::COMPARE,
    io::WRITE_ZEROES,
    io::DSM,
    0x04, // Write Uncorrectable
];

fn encode(queue: u8, cmd: &Command, win: &[u8]) -> Vec<u8> {
    let mut v = vec![queue];
    v.extend_from_slice(&cmd.to_bytes());
    v.extend_from_slice(win);
    v
}

/// A structure-aware command: a real opcode, a data pointer into the
/// window (PRP entry, PRP list, or an SGL chain laid out in the window) and
/// plausible command dwords.
fn generate_command(rng: &mut Rng) -> Vec<u8> {
    let queue = rng.below(3) as u8;
    let opcode = if rng.one_in(16) {
        rng.byte()
    } else if queue == 0 {
        *rng.pick(&ADMIN_OPS)
    } else {
        *rng.pick(&IO_OPS)
    };
    let mut win = Vec::new();
    let page = 4096u64;
    let mut cmd = Command {
        opcode,
        nsid: {
            let any = rng.next_u64() as u32;
            *rng.pick(&[1, 1, 1, 0, 2, u32::MAX, any])
        },
        ..Default::default()
    };
    // Data pointer.
    match rng.below(5) {
        0 => {
            cmd.prp1 = WIN + (rng.below(16) as u64) * 4;
        }
        1 => {
            cmd.prp1 = WIN + page * (1 + rng.below(4) as u64);
            cmd.prp2 = WIN + page * (5 + rng.below(4) as u64);
        }
        2 => {
            // A PRP list at the start of the window.
            let n = 1 + rng.below(24);
            for i in 0..n as u64 {
                let e = WIN + page * (2 + i);
                win.extend_from_slice(&e.to_le_bytes());
            }
            cmd.prp1 = WIN + page;
            cmd.prp2 = WIN + (rng.below(2) as u64) * 8;
        }
        3 => {
            cmd.psdt = 1 + rng.below(2) as u8;
            let d = sgl_desc(WIN + page, 512 * (1 + rng.below(16) as u32), 0);
            cmd.prp1 = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            cmd.prp2 = u64::from_le_bytes(d[8..16].try_into().unwrap_or_default());
        }
        _ => {
            // An SGL segment in the window: data blocks, a bit bucket, and
            // a chain to a last segment.
            cmd.psdt = 1 + rng.below(2) as u8;
            let n = 1 + rng.below(6);
            for i in 0..n {
                let kind = if rng.one_in(6) { 1 } else { 0 };
                win.extend(sgl_desc(
                    WIN + page * (2 + i as u64),
                    512 * (1 + rng.below(8) as u32),
                    kind,
                ));
            }
            let last_at = WIN + 0x800;
            win.extend(sgl_desc(last_at, 32, 3));
            win.resize(0x800, 0);
            win.extend(sgl_desc(WIN + page * 12, 4096, 0));
            win.extend(sgl_desc(0, 512, 1));
            let first = sgl_desc(WIN, 16 * (n as u32 + 1), 2);
            cmd.prp1 = u64::from_le_bytes(first[0..8].try_into().unwrap_or_default());
            cmd.prp2 = u64::from_le_bytes(first[8..16].try_into().unwrap_or_default());
        }
    }
    // Command dwords.
    let small = |rng: &mut Rng| rng.below(64) as u32;
    cmd.cdw = match (queue, opcode) {
        (0, admin::IDENTIFY) => [
            {
                let any = u32::from(rng.byte());
                *rng.pick(&[0u32, 1, 2, 3, 5, 6, 7, 8, 0x1c, any])
            },
            0,
            0,
            0,
            0,
            0,
        ],
        (0, admin::GET_LOG_PAGE) => [
            {
                let any = u32::from(rng.byte());
                *rng.pick(&[1u32, 2, 3, 4, 5, 0xc0, any])
            } | (small(rng) << 16),
            small(rng),
            small(rng) * 4,
            0,
            0,
            0,
        ],
        (0, admin::SET_FEATURES | admin::GET_FEATURES) => [
            rng.below(0x20) as u32 | (rng.below(4) as u32) << 8,
            rng.next_u64() as u32,
            0,
            0,
            0,
            0,
        ],
        (0, admin::CREATE_CQ | admin::CREATE_SQ | admin::DELETE_CQ | admin::DELETE_SQ) => [
            rng.below(6) as u32 | (small(rng) << 16),
            rng.below(4) as u32 | ((rng.below(6) as u32) << 16),
            0,
            0,
            0,
            0,
        ],
        (0, admin::SECURITY_SEND | admin::SECURITY_RECV) => {
            let v: [u8; 4] = [0, 0x00, rng.below(2) as u8 * 0x14, 0xe8];
            win.resize(win.len().max(64), 0);
            win[..8].copy_from_slice(&[0x12, 0x84, 0, 0, 0x10, 0x84, 0, 0]);
            [u32::from_le_bytes(v), 64 + small(rng), 0, 0, 0, 0]
        }
        (_, io::READ | io::WRITE | io::COMPARE | io::WRITE_ZEROES | 0x04) => [
            small(rng) * 8,
            0,
            small(rng) | if rng.one_in(8) { 1 << 30 } else { 0 },
            0,
            0,
            0,
        ],
        (_, io::DSM) => {
            win.extend((0..16).flat_map(|i: u32| {
                let mut r = [0u8; 16];
                r[4..8].copy_from_slice(&8u32.to_le_bytes());
                r[8..16].copy_from_slice(&u64::from(i * 8).to_le_bytes());
                r
            }));
            [rng.below(16) as u32, 4, 0, 0, 0, 0]
        }
        _ => [rng.interesting() as u32, small(rng), small(rng), 0, 0, 0],
    };
    encode(queue, &cmd, &win)
}

impl NvmeCtrl {
    /// Builds the controller, enables it and creates the I/O queues.
    pub fn new() -> Result<Self, String> {
        let dev = device()?;
        let win = HostMemory::new(WIN, WIN_MAP).map_err(|e| e.to_string())?;
        map(&dev, &win, WIN)?;
        let mut rng = Rng::new(0x5eed);
        let seeds = (0..64).map(|_| generate_command(&mut rng)).collect();
        let mut t = NvmeCtrl {
            seeds,
            drv: None,
            win,
            dirty: 0,
            buf: 0,
            resets: 0,
            ok: 0,
            errors: 0,
        };
        t.setup(dev)?;
        Ok(t)
    }

    /// Enables the controller with fresh driver memory and I/O queues.
    fn setup(&mut self, mut dev: NvmeDevice) -> Result<(), String> {
        // Stop the controller before its queue memory changes.
        dev.write_reg32(reg::CC, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dev.read_reg32(reg::CSTS) & csts::RDY != 0 {
            if std::time::Instant::now() > deadline {
                return Err("the controller does not leave CSTS.RDY after CC.EN = 0".into());
            }
            std::thread::yield_now();
        }
        let _ = dev.context().memory.unmap(DRV, DRV_SIZE as u64);
        let mem = HostMemory::new(DRV, DRV_SIZE).map_err(|e| e.to_string())?;
        map(&dev, &mem, DRV)?;
        let mut drv = HostDriver::enable(dev, mem, 32).map_err(|e| e.to_string())?;
        drv.timeout = Duration::from_secs(5);
        let n = drv
            .create_io_queues(IO_QUEUES, QUEUE_ENTRIES)
            .map_err(|e| e.to_string())?;
        if n != IO_QUEUES {
            return Err(format!("{n} I/O queues created"));
        }
        self.buf = drv.mem.alloc(16 << 10, 4096);
        self.drv = Some(drv);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), String> {
        let drv = self.drv.take().ok_or("no driver")?;
        self.resets += 1;
        self.setup(drv.bar)
    }

    fn probe(&mut self, qid: u16) -> Result<(), String> {
        let buf = self.buf;
        let drv = self.drv.as_mut().ok_or("no driver")?;
        let cmd = if qid == 0 {
            Command {
                opcode: admin::IDENTIFY,
                prp1: buf,
                cdw: [1, 0, 0, 0, 0, 0],
                ..Default::default()
            }
        } else {
            Command {
                opcode: io::READ,
                nsid: 1,
                prp1: buf,
                cdw: [0, 0, 0, 0, 0, 0],
                ..Default::default()
            }
        };
        let cid = drv.submit(qid, cmd);
        let c = drv.wait(qid, cid).map_err(|e| e.to_string())?;
        if !Status(c.status).is_success() {
            return Err(format!(
                "probe opcode {:#04x} on queue {qid} failed: {}",
                cmd.opcode,
                Status(c.status)
            ));
        }
        if qid == 0 {
            let mut vid = [0u8; 2];
            drv.mem.read(buf, &mut vid);
            if u16::from_le_bytes(vid) != trustdev_devices::nvme::VENDOR_ID {
                return Err(format!("Identify Controller VID {vid:02x?}"));
            }
        }
        Ok(())
    }
}

impl Target for NvmeCtrl {
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    fn max_len(&self) -> usize {
        1 + SQE_SIZE + WIN_IMAGE
    }

    fn generate(&mut self, rng: &mut Rng, out: &mut Vec<u8>) {
        *out = generate_command(rng);
        if rng.one_in(2) {
            mutate(rng, out, &self.seeds, self.max_len());
        }
    }

    fn run(&mut self, input: &[u8]) -> Result<(), String> {
        let mut c = Cursor::new(input);
        let qid = u16::from(c.u8()) % (IO_QUEUES + 1);
        let mut sqe = [0u8; SQE_SIZE];
        let s = c.bytes(SQE_SIZE);
        sqe[..s.len()].copy_from_slice(s);
        let image = c.bytes(WIN_IMAGE);
        // The window holds exactly this input's image.
        self.win.write(WIN, &vec![0u8; self.dirty.max(image.len())]);
        self.win.write(WIN, image);
        self.dirty = image.len();

        let cmd = Command::parse(&sqe);
        let drv = self.drv.as_mut().ok_or("no driver")?;
        let cid = drv.submit(qid, cmd);
        let aer = qid == 0 && cmd.opcode == admin::ASYNC_EVENT;
        if !aer {
            let done = drv
                .wait(qid, cid)
                .map_err(|e| format!("{e} (opcode {:#04x})", cmd.opcode))?;
            if Status(done.status).is_success() {
                self.ok += 1;
            } else {
                self.errors += 1;
            }
            if done.sq_id != qid {
                return Err(format!(
                    "completion for queue {qid} names SQ {}",
                    done.sq_id
                ));
            }
        }
        let st = drv.bar.read_reg32(reg::CSTS);
        if st & csts::CFS != 0 {
            return Err(format!(
                "Controller Fatal Status after opcode {:#04x} (CSTS {st:#x})",
                cmd.opcode
            ));
        }
        if qid == 0 && changes_queues(cmd.opcode) {
            self.reset()?;
        }
        self.probe(qid)
    }

    fn check(&mut self) -> Result<(), String> {
        for q in 0..=IO_QUEUES {
            self.probe(q)?;
        }
        Ok(())
    }

    fn stats(&self) -> String {
        format!(
            "completions: {} success, {} error; controller resets {}",
            self.ok, self.errors, self.resets
        )
    }
}
