//! NVM command set I/O commands.

use super::ctrl::{Ctrl, Scratch};
use super::dptr::{Dir, Seg};
use super::namespace::Namespace;
use super::queue::Outcome;
use super::spec::{io, Command, Status};
use log::warn;
use std::sync::atomic::Ordering;
use std::time::Instant;
use vfio_user_server::dma::Access;

/// Size of one DSM range.
const DSM_RANGE: usize = 16;

impl Ctrl {
    /// Runs one I/O command.
    pub(crate) fn exec_io(&self, cmd: &Command, sc: &mut Scratch) -> Outcome {
        if cmd.fuse != 0 {
            return Status::INVALID_FIELD.into();
        }
        let start = Instant::now();
        let out = match cmd.opcode {
            io::FLUSH => self.flush(cmd),
            io::READ | io::WRITE | io::COMPARE => match self.namespace(cmd.nsid) {
                Some(ns) => self.read_write(ns, cmd, sc),
                None => Status::INVALID_NAMESPACE,
            },
            io::WRITE_ZEROES => match self.namespace(cmd.nsid) {
                Some(ns) => self.write_zeroes(ns, cmd, sc),
                None => Status::INVALID_NAMESPACE,
            },
            io::DSM => match self.namespace(cmd.nsid) {
                Some(ns) => self.dsm(ns, cmd, sc),
                None => Status::INVALID_NAMESPACE,
            },
            _ => Status::INVALID_OPCODE,
        };
        self.counters
            .busy_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out.into()
    }

    fn flush(&self, cmd: &Command) -> Status {
        let targets: Vec<_> = if cmd.nsid == 0xffff_ffff {
            self.namespaces.iter().collect()
        } else {
            match self.namespace(cmd.nsid) {
                Some(ns) => vec![ns],
                None => return Status::INVALID_NAMESPACE,
            }
        };
        for ns in targets {
            if let Err(e) = ns.backend.flush() {
                warn!("flush of namespace {}: {e}", ns.nsid);
                return Status::WRITE_FAULT;
            }
        }
        Status::SUCCESS
    }

    fn read_write(&self, ns: &Namespace, cmd: &Command, sc: &mut Scratch) -> Status {
        let slba = u64::from(cmd.cdw10()) | (u64::from(cmd.cdw11()) << 32);
        let nlb = u64::from(cmd.cdw12() & 0xffff) + 1;
        let fua = cmd.cdw12() & (1 << 30) != 0;
        sc.err_lba = slba;
        let Some((off, len)) = ns.range(slba, nlb) else {
            return Status::LBA_OUT_OF_RANGE;
        };
        if len > self.mdts_bytes() {
            return Status::INVALID_FIELD;
        }
        let dir = if cmd.opcode == io::READ {
            Dir::ToHost
        } else {
            Dir::FromHost
        };
        if let Err(s) = self.map_data(cmd, len, dir, false, sc) {
            return s;
        }
        let st = match cmd.opcode {
            io::READ => self.read_to_host(ns, off, sc),
            io::WRITE => self.write_from_host(ns, off, fua, sc),
            _ => self.compare(ns, off, len, sc),
        };
        if st.is_success() {
            let units = len / 512;
            if cmd.opcode == io::WRITE {
                self.counters
                    .units_written
                    .fetch_add(units, Ordering::Relaxed);
                self.counters.host_writes.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.units_read.fetch_add(units, Ordering::Relaxed);
                self.counters.host_reads.fetch_add(1, Ordering::Relaxed);
            }
        } else if st.sct() == super::spec::sct::MEDIA && st != Status::COMPARE_FAILURE {
            self.counters.media_errors.fetch_add(1, Ordering::Relaxed);
        }
        st
    }

    /// Medium -> host buffer, zero-copy where the buffer lies in one
    /// fd-backed DMA window, bounced otherwise.
    fn read_to_host(&self, ns: &Namespace, mut off: u64, sc: &mut Scratch) -> Status {
        let segs: Vec<Seg> = std::mem::take(&mut sc.segs);
        let mut status = Status::SUCCESS;
        for s in &segs {
            if !s.bucket {
                let direct = self
                    .mem
                    .with_slice(s.addr, s.len as usize, Access::Write, |g| {
                        ns.backend.read_guest(off, &g)
                    });
                match direct {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!("namespace {}: read at {off:#x}: {e}", ns.nsid);
                        status = Status::READ_ERROR;
                        break;
                    }
                    Err(_) => {
                        sc.buf.resize(s.len as usize, 0);
                        if let Err(e) = ns.backend.read(off, &mut sc.buf) {
                            warn!("namespace {}: read at {off:#x}: {e}", ns.nsid);
                            status = Status::READ_ERROR;
                            break;
                        }
                        if self.mem.write(s.addr, &sc.buf).is_err() {
                            status = Status::DATA_TRANSFER_ERROR;
                            break;
                        }
                    }
                }
            }
            off += s.len;
        }
        sc.segs = segs;
        status
    }

    /// Host buffer -> medium.
    fn write_from_host(&self, ns: &Namespace, mut off: u64, fua: bool, sc: &mut Scratch) -> Status {
        let segs: Vec<Seg> = std::mem::take(&mut sc.segs);
        let mut status = Status::SUCCESS;
        for s in &segs {
            let direct = self
                .mem
                .with_slice(s.addr, s.len as usize, Access::Read, |g| {
                    ns.backend.write_guest(off, &g, fua)
                });
            match direct {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!("namespace {}: write at {off:#x}: {e}", ns.nsid);
                    status = Status::WRITE_FAULT;
                    break;
                }
                Err(_) => {
                    sc.buf.resize(s.len as usize, 0);
                    if self.mem.read(s.addr, &mut sc.buf).is_err() {
                        status = Status::DATA_TRANSFER_ERROR;
                        break;
                    }
                    if let Err(e) = ns.backend.write(off, &sc.buf, fua) {
                        warn!("namespace {}: write at {off:#x}: {e}", ns.nsid);
                        status = Status::WRITE_FAULT;
                        break;
                    }
                }
            }
            off += s.len;
        }
        sc.segs = segs;
        status
    }

    fn compare(&self, ns: &Namespace, off: u64, len: u64, sc: &mut Scratch) -> Status {
        let len = len as usize;
        sc.buf.clear();
        sc.buf.resize(len, 0);
        if super::dptr::read_from_host(&self.mem, &sc.segs, &mut sc.buf).is_err() {
            return Status::DATA_TRANSFER_ERROR;
        }
        sc.buf2.clear();
        sc.buf2.resize(len, 0);
        if ns.backend.read(off, &mut sc.buf2).is_err() {
            return Status::READ_ERROR;
        }
        if sc.buf != sc.buf2 {
            return Status::COMPARE_FAILURE;
        }
        Status::SUCCESS
    }

    fn write_zeroes(&self, ns: &Namespace, cmd: &Command, sc: &mut Scratch) -> Status {
        let slba = u64::from(cmd.cdw10()) | (u64::from(cmd.cdw11()) << 32);
        let nlb = u64::from(cmd.cdw12() & 0xffff) + 1;
        let deac = cmd.cdw12() & (1 << 25) != 0;
        sc.err_lba = slba;
        let Some((off, len)) = ns.range(slba, nlb) else {
            return Status::LBA_OUT_OF_RANGE;
        };
        match ns.backend.write_zeroes(off, len, deac) {
            Ok(()) => Status::SUCCESS,
            Err(e) => {
                warn!("namespace {}: write zeroes at {off:#x}: {e}", ns.nsid);
                Status::WRITE_FAULT
            }
        }
    }

    fn dsm(&self, ns: &Namespace, cmd: &Command, sc: &mut Scratch) -> Status {
        let nr = (cmd.cdw10() & 0xff) as usize + 1;
        let deallocate = cmd.cdw11() & (1 << 2) != 0;
        if let Err(s) = self.receive_from_host(cmd, nr * DSM_RANGE, false, sc) {
            return s;
        }
        let mut ranges = Vec::with_capacity(nr);
        for r in sc.buf.chunks_exact(DSM_RANGE) {
            let nlb = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
            let slba = u64::from_le_bytes(r[8..16].try_into().unwrap_or([0; 8]));
            if nlb == 0 {
                continue;
            }
            match ns.range(slba, nlb) {
                Some(range) => ranges.push(range),
                None => {
                    sc.err_lba = slba;
                    return Status::LBA_OUT_OF_RANGE;
                }
            }
        }
        if deallocate {
            for (off, len) in ranges {
                if let Err(e) = ns.backend.write_zeroes(off, len, true) {
                    warn!("namespace {}: deallocate at {off:#x}: {e}", ns.nsid);
                    return Status::WRITE_FAULT;
                }
            }
        }
        Status::SUCCESS
    }
}
