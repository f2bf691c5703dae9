//! A catalogue of hostile and malformed client input, run one case at a time
//! against a single server.
//!
//! Every case names what it sends and what the server must do: answer with
//! an exact errno (the connection stays usable), answer and then close (a
//! failed VERSION), close (framing lost), or stay silent (posted commands,
//! stray replies). After each case the same connection, or a new one when it
//! was closed, must still work; at the end the server thread must still be
//! running: it never panics on anything a client sends.

mod common;

use common::device::{error, reg, status, ID_VALUE};
use common::*;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use vfio_user_server::client::{Client, ClientError};
use vfio_user_server::protocol::{
    encode_write_multi, Command, DmaTransfer, MultiWrite, RegionAccess,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What the server must do with a case's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// An error reply with this errno; the connection stays usable.
    Errno(i32),
    /// An error reply with this errno, then the server closes the connection.
    ErrnoThenClosed(i32),
    /// The server closes the connection without a reply (framing lost).
    Closed,
    /// No reply at all (posted command, stray reply); connection usable.
    Silent,
    /// A success reply (hostile-looking but valid); connection usable.
    Accepted,
}

use Expect::*;

struct Case {
    name: &'static str,
    /// Negotiate VERSION before running the case.
    negotiated: bool,
    /// Sends the input; returns the reply's outcome (`Err(Server(errno))`
    /// for an error reply, `Ok` for success or when no reply is expected).
    run: fn(&mut Client) -> Result<(), ClientError>,
    expect: Expect,
}

const fn case(
    name: &'static str,
    expect: Expect,
    run: fn(&mut Client) -> Result<(), ClientError>,
) -> Case {
    Case {
        name,
        negotiated: true,
        run,
        expect,
    }
}

/// A case sent on a connection that has not negotiated VERSION.
const fn raw_case(
    name: &'static str,
    expect: Expect,
    run: fn(&mut Client) -> Result<(), ClientError>,
) -> Case {
    Case {
        name,
        negotiated: false,
        run,
        expect,
    }
}

// --- message builders -------------------------------------------------------

const EINVAL: i32 = libc::EINVAL;
const A: u64 = 0x10_0000;
const B: u64 = 0x20_0000;
const MIB: u32 = 1 << 20;

const DATA_NONE: u32 = 1;
const DATA_BOOL: u32 = 2;
const DATA_EVENTFD: u32 = 4;
const ACTION_MASK: u32 = 8;
const ACTION_UNMASK: u32 = 16;
const ACTION_TRIGGER: u32 = 32;

/// Raw message id used for hand-built messages.
const RAW_ID: u16 = 0x7a7a;

fn words(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn dma_map_p(argsz: u32, flags: u32, offset: u64, addr: u64, size: u64) -> Vec<u8> {
    words(&[
        &argsz.to_le_bytes(),
        &flags.to_le_bytes(),
        &offset.to_le_bytes(),
        &addr.to_le_bytes(),
        &size.to_le_bytes(),
    ])
}

fn dma_unmap_p(argsz: u32, flags: u32, addr: u64, size: u64) -> Vec<u8> {
    words(&[
        &argsz.to_le_bytes(),
        &flags.to_le_bytes(),
        &addr.to_le_bytes(),
        &size.to_le_bytes(),
    ])
}

/// argsz, flags, and two more u32 fields (GET_INFO, IO_FDS, IRQ_INFO).
fn info_p(argsz: u32, flags: u32, a: u32, b: u32) -> Vec<u8> {
    words(&[
        &argsz.to_le_bytes(),
        &flags.to_le_bytes(),
        &a.to_le_bytes(),
        &b.to_le_bytes(),
    ])
}

fn region_info_p(argsz: u32, index: u32) -> Vec<u8> {
    let mut p = info_p(argsz, 0, index, 0);
    p.resize(32, 0);
    p
}

fn set_irqs_p(flags: u32, index: u32, start: u32, count: u32, extra: &[u8]) -> Vec<u8> {
    let argsz = 20 + extra.len() as u32;
    set_irqs_argsz(argsz, flags, index, start, count, extra)
}

fn set_irqs_argsz(
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    extra: &[u8],
) -> Vec<u8> {
    words(&[
        &argsz.to_le_bytes(),
        &flags.to_le_bytes(),
        &index.to_le_bytes(),
        &start.to_le_bytes(),
        &count.to_le_bytes(),
        extra,
    ])
}

fn access_p(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .encode(data)
}

fn multi(region: u32, offset: u64, count: u32) -> MultiWrite {
    MultiWrite {
        access: RegionAccess {
            offset,
            region,
            count,
        },
        data: [0x11; 8],
    }
}

/// Sends a command with a raw command number and returns its outcome.
fn req(c: &mut Client, command: u16, payload: &[u8], fds: &[RawFd]) -> Result<(), ClientError> {
    raw_request(c, RAW_ID, command, payload, fds).map(|_| ())
}

fn cmd(c: Command) -> u16 {
    c as u16
}

/// Sends hand-built bytes, then receives one message: it must answer our
/// message id; an error reply becomes `Err(Server(errno))`.
fn send_raw(c: &mut Client, bytes: &[u8], fds: &[RawFd]) -> Result<(), ClientError> {
    let id = u16::from_le_bytes([bytes[0], bytes[1]]);
    c.send_bytes(bytes, fds)?;
    let m = c.recv()?;
    if m.header.msg_id != id {
        return Err(ClientError::Unexpected(format!(
            "reply id {} to message {id}",
            m.header.msg_id
        )));
    }
    match m.header.error {
        Some(e) => Err(ClientError::Server(e as i32)),
        None => Ok(()),
    }
}

/// A whole raw message: header (with `flags`) + payload.
fn message(command: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = raw_header(RAW_ID, command, 16 + payload.len() as u32, flags, 0);
    m.extend_from_slice(payload);
    m
}

/// A step that must succeed for the case to mean anything.
fn setup<T>(r: Result<T, ClientError>, what: &str) -> Result<T, ClientError> {
    r.map_err(|e| ClientError::Unexpected(format!("setup ({what}) failed: {e}")))
}

fn map(c: &mut Client, iova: u64, size: u64, fd: &OwnedFd) -> Result<(), ClientError> {
    setup(
        req(
            c,
            cmd(Command::DmaMap),
            &dma_map_p(32, 3, 0, iova, size),
            &[fd.as_raw_fd()],
        ),
        "DMA_MAP",
    )
}

fn version(json: &str) -> Vec<u8> {
    version_payload(0, 0, json)
}

fn read_id_payload() -> Vec<u8> {
    access_p(reg::ID, 0, 4, &[])
}

/// Starts a message-served copy of 16 bytes from window A to A+0x800 and
/// returns the server's DMA_READ request.
fn start_remote_copy(c: &mut Client) -> Result<vfio_user_server::transport::Message, ClientError> {
    setup(c.dma_map(A, 0x1000, 0, RW, None), "DMA_MAP without fd")?;
    c.remote_memory(A).unwrap()[..16].copy_from_slice(b"by-message data!");
    program_copy(c, A, A + 0x800, 16, false);
    ring(c);
    let m = c.recv()?;
    if m.header.command != cmd(Command::DmaRead) {
        return Err(ClientError::Unexpected(format!(
            "expected DMA_READ, got command {}",
            m.header.command
        )));
    }
    Ok(m)
}

/// Sends a reply to a server request.
fn reply_to(
    c: &mut Client,
    m: &vfio_user_server::transport::Message,
    payload: &[u8],
) -> Result<(), ClientError> {
    let mut bytes = m.header.reply(payload.len()).encode().to_vec();
    bytes.extend_from_slice(payload);
    c.send_bytes(&bytes, &[])
}

/// Waits for the copy and checks STATUS/ERROR.
fn expect_copy(c: &mut Client, want_status: u32, want_error: u32) -> Result<(), ClientError> {
    let st = wait_idle(c);
    let err = c.read32(0, reg::ERROR)?;
    if st != want_status || err != want_error {
        return Err(ClientError::Unexpected(format!(
            "copy ended with STATUS {st:#x} ERROR {err}, expected {want_status:#x}/{want_error}"
        )));
    }
    Ok(())
}

fn eventfds(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect()
}

fn raw_fds(evs: &[EventFd]) -> Vec<RawFd> {
    evs.iter().map(|e| e.as_raw_fd()).collect()
}

// --- the catalogue ----------------------------------------------------------

fn cases() -> Vec<Case> {
    vec![
        // Framing.
        case("short_header_then_close", Closed, |c| {
            c.send_bytes(&raw_header(1, cmd(Command::RegionRead), 32, 0, 0)[..8], &[])?;
            c.stream().shutdown(std::net::Shutdown::Write)?;
            Ok(())
        }),
        case("message_size_below_header", Closed, |c| {
            c.send_bytes(&raw_header(1, cmd(Command::RegionRead), 8, 0, 0), &[])
        }),
        case("message_size_zero", Closed, |c| {
            c.send_bytes(&raw_header(1, cmd(Command::DeviceReset), 0, 0, 0), &[])
        }),
        case("size_claims_more_than_sent_then_close", Closed, |c| {
            let mut m = raw_header(1, cmd(Command::RegionWrite), 16 + 64, 0, 0);
            m.extend_from_slice(&[0; 10]);
            c.send_bytes(&m, &[])?;
            c.stream().shutdown(std::net::Shutdown::Write)?;
            Ok(())
        }),
        case("reserved_header_flag_bits", Errno(EINVAL), |c| {
            send_raw(
                c,
                &message(cmd(Command::RegionRead), 1 << 6, &read_id_payload()),
                &[],
            )
        }),
        case("high_reserved_header_flag_bit", Errno(EINVAL), |c| {
            send_raw(
                c,
                &message(cmd(Command::RegionRead), 1 << 31, &read_id_payload()),
                &[],
            )
        }),
        case("message_type_2", Errno(EINVAL), |c| {
            send_raw(
                c,
                &message(cmd(Command::RegionRead), 2, &read_id_payload()),
                &[],
            )
        }),
        case("message_type_15", Errno(EINVAL), |c| {
            send_raw(c, &message(cmd(Command::DeviceReset), 15, &[0; 40]), &[])
        }),
        case("message_type_2_with_no_reply", Silent, |c| {
            c.send_bytes(
                &message(cmd(Command::RegionRead), 2 | 1 << 4, &read_id_payload()),
                &[],
            )
        }),
        case("error_flag_on_a_command", Errno(EINVAL), |c| {
            send_raw(
                c,
                &message(cmd(Command::RegionRead), 1 << 5, &read_id_payload()),
                &[],
            )
        }),
        case("error_flag_on_a_posted_command", Silent, |c| {
            c.send_bytes(
                &message(cmd(Command::RegionRead), 3 << 4, &read_id_payload()),
                &[],
            )
        }),
        case("unsolicited_reply", Silent, |c| {
            c.send_bytes(&message(cmd(Command::DmaRead), 1, &[]), &[])
        }),
        case("unsolicited_reply_with_payload", Silent, |c| {
            c.send_bytes(&message(cmd(Command::DmaWrite), 1, &[0xee; 100]), &[])
        }),
        case("reply_with_reserved_flag_bits", Silent, |c| {
            c.send_bytes(&message(cmd(Command::DmaRead), 1 | 1 << 7, &[0; 8]), &[])
        }),
        case("stale_dma_reply_ids", Silent, |c| {
            let rd = start_remote_copy(c)?;
            let t = DmaTransfer::decode(&rd.payload, "DMA_READ").unwrap().0;
            let data = c.remote_memory(A).unwrap()[..16].to_vec();
            let read_reply = t.encode(&data);
            reply_to(c, &rd, &read_reply)?;
            let wr = c.recv()?;
            let (wt, written) = DmaTransfer::decode(&wr.payload, "DMA_WRITE").unwrap();
            let at = (wt.address - A) as usize;
            c.remote_memory(A).unwrap()[at..at + written.len()].copy_from_slice(written);
            reply_to(c, &wr, &wt.encode(&[]))?;
            // Both ids are spent: the server must drop these replies.
            reply_to(c, &wr, &wt.encode(&[]))?;
            reply_to(c, &rd, &read_reply)?;
            expect_copy(c, status::DONE, 0)?;
            let got = &c.remote_memory(A).unwrap()[0x800..0x810];
            if got != b"by-message data!" {
                return Err(ClientError::Unexpected(format!("copied {got:?}")));
            }
            Ok(())
        }),
        case("client_fails_dma_read", Silent, |c| {
            let rd = start_remote_copy(c)?;
            let h = rd.header.error_reply(libc::EFAULT);
            c.send_bytes(&h.encode(), &[])?;
            expect_copy(c, status::ERROR, error::SOURCE_FAULT)
        }),
        case("client_dma_read_reply_short_of_data", Silent, |c| {
            let rd = start_remote_copy(c)?;
            let t = DmaTransfer::decode(&rd.payload, "DMA_READ").unwrap().0;
            reply_to(c, &rd, &t.encode(&[0; 8]))?;
            expect_copy(c, status::ERROR, error::SOURCE_FAULT)
        }),
        case("client_dma_read_reply_for_another_address", Silent, |c| {
            let rd = start_remote_copy(c)?;
            let mut t = DmaTransfer::decode(&rd.payload, "DMA_READ").unwrap().0;
            t.address += 0x100;
            reply_to(c, &rd, &t.encode(&[0; 16]))?;
            expect_copy(c, status::ERROR, error::SOURCE_FAULT)
        }),
        // Unknown, unsupported and server-to-client commands.
        case("unknown_command_0", Errno(libc::ENOSYS), |c| {
            req(c, 0, &[], &[])
        }),
        case("unknown_command_27", Errno(libc::ENOSYS), |c| {
            req(c, 27, &[1, 2, 3, 4], &[])
        }),
        // The PASID extension's commands (docs/VFIO-USER-PASID.md) without
        // having negotiated it, and its server-to-client ones sent by a client.
        case(
            "pasid_extension_not_negotiated",
            Errno(libc::ENOTSUP),
            |c| req(c, cmd(Command::AtsInvalidate), &[0; 24], &[]),
        ),
        case("page_request_sent_by_the_client", Errno(EINVAL), |c| {
            req(c, cmd(Command::PageRequest), &[0; 24], &[])
        }),
        case("unknown_command_0xffff", Errno(libc::ENOSYS), |c| {
            req(c, 0xffff, &[], &[])
        }),
        raw_case("unknown_command_before_version", Errno(libc::ENOSYS), |c| {
            req(c, 0x4242, &[], &[])
        }),
        case("dma_read_sent_by_the_client", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaRead),
                &DmaTransfer {
                    address: 0,
                    count: 4,
                }
                .encode(&[]),
                &[],
            )
        }),
        case("dma_write_sent_by_the_client", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaWrite),
                &DmaTransfer {
                    address: 0,
                    count: 4,
                }
                .encode(&[0; 4]),
                &[],
            )
        }),
        case("dirty_pages_command", Errno(libc::ENOTSUP), |c| {
            req(c, cmd(Command::DirtyPages), &[0; 16], &[])
        }),
        // Payloads whose size disagrees with their structure.
        case("dma_map_payload_short", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x1000)[..16],
                &[],
            )
        }),
        case("dma_unmap_payload_short", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 0, A, 0x1000)[..16],
                &[],
            )
        }),
        case("dma_unmap_with_bitmap_bytes", Errno(EINVAL), |c| {
            let mut p = dma_unmap_p(40, 0, A, 0x1000);
            p.extend_from_slice(&[0; 16]);
            req(c, cmd(Command::DmaUnmap), &p, &[])
        }),
        case("device_info_payload_short", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetInfo),
                &info_p(16, 0, 0, 0)[..8],
                &[],
            )
        }),
        case("region_info_payload_short", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetRegionInfo),
                &region_info_p(32, 0)[..16],
                &[],
            )
        }),
        case("region_read_payload_long", Errno(EINVAL), |c| {
            let mut p = read_id_payload();
            p.extend_from_slice(&[0; 8]);
            req(c, cmd(Command::RegionRead), &p, &[])
        }),
        case("region_read_payload_short", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &read_id_payload()[..12], &[])
        }),
        case("region_write_data_shorter_than_count", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionWrite),
                &access_p(reg::SCRATCH, 0, 8, &[1; 4]),
                &[],
            )
        }),
        case("region_write_data_longer_than_count", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionWrite),
                &access_p(reg::SCRATCH, 0, 4, &[1; 8]),
                &[],
            )
        }),
        case("set_irqs_eventfd_with_trailing_bytes", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_EVENTFD | ACTION_TRIGGER, 2, 0, 1, &[0; 4]),
                &[],
            )
        }),
        case("set_irqs_bool_count_mismatch", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_BOOL | ACTION_TRIGGER, 2, 0, 2, &[1]),
                &[],
            )
        }),
        case("device_reset_with_payload", Errno(EINVAL), |c| {
            req(c, cmd(Command::DeviceReset), &[0; 4], &[])
        }),
        case("write_multi_payload_short", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionWriteMulti), &[1, 0, 0, 0], &[])
        }),
        // Oversized messages and transfers.
        case("oversized_region_write", Errno(libc::E2BIG), |c| {
            let n = MIB + 8192;
            let p = access_p(0, 2, n, &vec![0; n as usize]);
            c.request(Command::RegionWrite, &p, &[]).map(|_| ())
        }),
        case("oversized_posted_region_write", Silent, |c| {
            let n = 2 * MIB;
            c.post(
                Command::RegionWrite,
                &access_p(0, 2, n, &vec![0; n as usize]),
            )
        }),
        case(
            "region_read_count_above_max_xfer",
            Errno(libc::E2BIG),
            |c| {
                req(
                    c,
                    cmd(Command::RegionRead),
                    &access_p(0, 7, MIB + 1, &[]),
                    &[],
                )
            },
        ),
        case(
            "region_write_count_above_max_xfer",
            Errno(libc::E2BIG),
            |c| {
                let n = MIB + 4;
                req(
                    c,
                    cmd(Command::RegionWrite),
                    &access_p(0, 2, n, &vec![0; n as usize]),
                    &[],
                )
            },
        ),
        // argsz smaller than the fixed structure, for every argsz command.
        case("dma_map_argsz_too_small", Errno(EINVAL), |c| {
            req(c, cmd(Command::DmaMap), &dma_map_p(8, 3, 0, A, 0x1000), &[])
        }),
        case("dma_unmap_argsz_too_small", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(8, 0, A, 0x1000),
                &[],
            )
        }),
        case("device_info_argsz_too_small", Errno(EINVAL), |c| {
            req(c, cmd(Command::DeviceGetInfo), &info_p(8, 0, 0, 0), &[])
        }),
        case("region_info_argsz_too_small", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetRegionInfo),
                &region_info_p(16, 0),
                &[],
            )
        }),
        case("region_io_fds_argsz_too_small", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetRegionIoFds),
                &info_p(8, 0, 0, 0),
                &[],
            )
        }),
        case("irq_info_argsz_too_small", Errno(EINVAL), |c| {
            req(c, cmd(Command::DeviceGetIrqInfo), &info_p(8, 0, 2, 0), &[])
        }),
        case("set_irqs_argsz_too_small", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_argsz(8, DATA_NONE | ACTION_TRIGGER, 2, 0, 0, &[]),
                &[],
            )
        }),
        // Bad flags.
        case("dma_map_unknown_flags", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 1 << 2 | 3, 0, A, 0x1000),
                &[],
            )
        }),
        case("dma_unmap_unknown_flags", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 1 << 2, A, 0x1000),
                &[],
            )
        }),
        case("dma_unmap_dirty_bitmap_flag", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 1, A, 0x1000),
                &[],
            )
        }),
        case("dma_unmap_all_and_dirty_bitmap", Errno(EINVAL), |c| {
            req(c, cmd(Command::DmaUnmap), &dma_unmap_p(24, 3, 0, 0), &[])
        }),
        case("set_irqs_two_data_flags", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | DATA_BOOL | ACTION_TRIGGER, 2, 0, 1, &[1]),
                &[],
            )
        }),
        case("set_irqs_two_action_flags", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_MASK | ACTION_TRIGGER, 0, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_no_data_flag", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(ACTION_TRIGGER, 2, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_no_action_flag", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE, 2, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_unknown_flag", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER | 1 << 6, 2, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_bool_value_2", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_BOOL | ACTION_TRIGGER, 2, 0, 1, &[2]),
                &[],
            )
        }),
        // DMA_MAP.
        case("dma_map_overlapping", Errno(libc::EEXIST), |c| {
            let ram = memfd(0x4000);
            map(c, A, 0x2000, &ram)?;
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0x2000, A + 0x1000, 0x2000),
                &[ram.as_raw_fd()],
            )
        }),
        case("dma_map_overlapping_from_below", Errno(libc::EEXIST), |c| {
            let ram = memfd(0x4000);
            map(c, A, 0x2000, &ram)?;
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A - 0x1000, 0x2000),
                &[ram.as_raw_fd()],
            )
        }),
        case("dma_map_same_range_twice", Errno(libc::EEXIST), |c| {
            let ram = memfd(0x2000);
            map(c, A, 0x2000, &ram)?;
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 1, 0, A, 0x2000),
                &[],
            )
        }),
        case("dma_map_containing_a_window", Errno(libc::EEXIST), |c| {
            let ram = memfd(0x1000);
            map(c, A + 0x1000, 0x1000, &ram)?;
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x10000),
                &[],
            )
        }),
        case("dma_map_unaligned_address", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A + 0x100, 0x1000),
                &[],
            )
        }),
        case("dma_map_unaligned_size", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x1800),
                &[],
            )
        }),
        case("dma_map_unaligned_fd_offset", Errno(EINVAL), |c| {
            let ram = memfd(0x4000);
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0x800, A, 0x1000),
                &[ram.as_raw_fd()],
            )
        }),
        case("dma_map_past_end_of_memfd", Errno(EINVAL), |c| {
            let ram = memfd(0x1000);
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x2000),
                &[ram.as_raw_fd()],
            )
        }),
        case("dma_map_offset_past_end_of_memfd", Errno(EINVAL), |c| {
            let ram = memfd(0x2000);
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0x2000, A, 0x1000),
                &[ram.as_raw_fd()],
            )
        }),
        case("dma_map_zero_size", Errno(EINVAL), |c| {
            req(c, cmd(Command::DmaMap), &dma_map_p(32, 3, 0, A, 0), &[])
        }),
        case("dma_map_address_overflow", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, u64::MAX - 0xfff, 0x2000),
                &[],
            )
        }),
        case("dma_map_fd_offset_overflow", Errno(EINVAL), |c| {
            let ram = memfd(0x1000);
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, u64::MAX - 0xfff, A, 0x2000),
                &[ram.as_raw_fd()],
            )
        }),
        case("dma_map_two_fds", Errno(EINVAL), |c| {
            let (a, b) = (memfd(0x1000), memfd(0x1000));
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x1000),
                &[a.as_raw_fd(), b.as_raw_fd()],
            )
        }),
        case("dma_map_pipe_fd", Errno(EINVAL), |c| {
            let (r, _w) = nix::unistd::pipe().map_err(std::io::Error::from)?;
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x1000),
                &[r.as_raw_fd()],
            )
        }),
        case("dma_map_directory_fd", Errno(EINVAL), |c| {
            let dir = std::fs::File::open(std::env::temp_dir())?;
            req(
                c,
                cmd(Command::DmaMap),
                &dma_map_p(32, 3, 0, A, 0x1000),
                &[dir.as_raw_fd()],
            )
        }),
        case(
            "dma_map_writable_from_read_only_fd",
            Errno(libc::EACCES),
            |c| {
                let ram = memfd(0x1000);
                let ro = std::fs::File::open(format!("/proc/self/fd/{}", ram.as_raw_fd()))?;
                req(
                    c,
                    cmd(Command::DmaMap),
                    &dma_map_p(32, 3, 0, A, 0x1000),
                    &[ro.as_raw_fd()],
                )
            },
        ),
        // DMA_UNMAP.
        case("dma_unmap_splitting_a_window", Errno(EINVAL), |c| {
            let ram = memfd(0x2000);
            map(c, A, 0x2000, &ram)?;
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 0, A, 0x1000),
                &[],
            )
        }),
        case("dma_unmap_straddling_a_window_start", Errno(EINVAL), |c| {
            let ram = memfd(0x2000);
            map(c, A, 0x2000, &ram)?;
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 0, A - 0x1000, 0x2000),
                &[],
            )
        }),
        case("dma_unmap_of_an_unknown_range_is_a_noop", Accepted, |c| {
            let ram = memfd(0x2000);
            map(c, A, 0x2000, &ram)?;
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 0, B, 0x1000),
                &[],
            )?;
            // The window at A is untouched.
            program_copy(c, A, A + 0x1000, 16, false);
            ring(c);
            expect_copy(c, status::DONE, 0)
        }),
        case("dma_unmap_zero_size", Errno(EINVAL), |c| {
            req(c, cmd(Command::DmaUnmap), &dma_unmap_p(24, 0, A, 0), &[])
        }),
        case("dma_unmap_address_overflow", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 0, u64::MAX - 0xfff, 0x2000),
                &[],
            )
        }),
        case("dma_unmap_all_with_address", Errno(EINVAL), |c| {
            req(c, cmd(Command::DmaUnmap), &dma_unmap_p(24, 2, A, 0), &[])
        }),
        case("dma_unmap_all_with_size", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DmaUnmap),
                &dma_unmap_p(24, 2, 0, 0x1000),
                &[],
            )
        }),
        // Region access.
        case("region_read_out_of_bounds", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionRead),
                &access_p(0x1000, 0, 4, &[]),
                &[],
            )
        }),
        case("region_read_past_the_end", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionRead),
                &access_p(0xffe, 0, 4, &[]),
                &[],
            )
        }),
        case("region_write_past_the_end", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionWrite),
                &access_p(0x3ffc, 2, 8, &[0; 8]),
                &[],
            )
        }),
        case("region_read_offset_overflow", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionRead),
                &access_p(u64::MAX - 1, 7, 4, &[]),
                &[],
            )
        }),
        case("region_read_count_zero", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &access_p(0, 0, 0, &[]), &[])
        }),
        case("region_write_count_zero", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionWrite), &access_p(0, 7, 0, &[]), &[])
        }),
        case("region_read_bad_index", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &access_p(0, 9, 4, &[]), &[])
        }),
        case("region_read_index_u32_max", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionRead),
                &access_p(0, u32::MAX, 4, &[]),
                &[],
            )
        }),
        case("region_write_to_rom", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionWrite),
                &access_p(0, 6, 4, &[0; 4]),
                &[],
            )
        }),
        case("region_read_of_empty_vga", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &access_p(0, 8, 4, &[]), &[])
        }),
        case("region_read_of_bar3_upper_half", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &access_p(0, 3, 4, &[]), &[])
        }),
        case("config_read_past_4k", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &access_p(4094, 7, 4, &[]), &[])
        }),
        case("bar0_access_wider_than_a_register", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &access_p(0, 0, 16, &[]), &[])
        }),
        case("posted_region_write_failing", Silent, |c| {
            c.post(Command::RegionWrite, &access_p(0, 9, 4, &[0; 4]))
        }),
        case("region_info_bad_index", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetRegionInfo),
                &region_info_p(32, 9),
                &[],
            )
        }),
        case("region_io_fds_bad_index", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetRegionIoFds),
                &info_p(16, 0, 9, 0),
                &[],
            )
        }),
        // Interrupts.
        case("irq_info_bad_index", Errno(EINVAL), |c| {
            req(c, cmd(Command::DeviceGetIrqInfo), &info_p(16, 0, 5, 0), &[])
        }),
        case("set_irqs_bad_index", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER, 5, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_start_plus_count_beyond", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER, 2, 3, 2, &[]),
                &[],
            )
        }),
        case("set_irqs_start_plus_count_overflow", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER, 2, u32::MAX, 2, &[]),
                &[],
            )
        }),
        case("set_irqs_huge_count", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER, 2, 0, u32::MAX, &[]),
                &[],
            )
        }),
        case("set_irqs_count_zero_with_start", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER, 2, 1, 0, &[]),
                &[],
            )
        }),
        case("set_irqs_mask_on_msix", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_MASK, 2, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_unmask_on_msi", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_UNMASK, 1, 0, 1, &[]),
                &[],
            )
        }),
        case("set_irqs_eventfd_count_mismatch", Errno(EINVAL), |c| {
            let evs = eventfds(1);
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_EVENTFD | ACTION_TRIGGER, 2, 0, 2, &[]),
                &raw_fds(&evs),
            )
        }),
        case("set_irqs_fds_with_data_none", Errno(EINVAL), |c| {
            let evs = eventfds(1);
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_NONE | ACTION_TRIGGER, 2, 0, 1, &[]),
                &raw_fds(&evs),
            )
        }),
        case("set_irqs_20_fds", Errno(EINVAL), |c| {
            let evs = eventfds(20);
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_EVENTFD | ACTION_TRIGGER, 2, 0, 4, &[]),
                &raw_fds(&evs),
            )
        }),
        case("set_irqs_70_fds", Errno(EINVAL), |c| {
            let ev = EventFd::new(EFD_NONBLOCK).unwrap();
            let fds = vec![ev.as_raw_fd(); 70];
            req(
                c,
                cmd(Command::DeviceSetIrqs),
                &set_irqs_p(DATA_EVENTFD | ACTION_TRIGGER, 2, 0, 4, &[]),
                &fds,
            )
        }),
        // File descriptors where none belong.
        case("region_read_with_an_fd", Errno(EINVAL), |c| {
            let ram = memfd(0x1000);
            req(
                c,
                cmd(Command::RegionRead),
                &read_id_payload(),
                &[ram.as_raw_fd()],
            )
        }),
        case("device_reset_with_an_fd", Errno(EINVAL), |c| {
            let ram = memfd(0x1000);
            req(c, cmd(Command::DeviceReset), &[], &[ram.as_raw_fd()])
        }),
        // REGION_WRITE_MULTI.
        case("write_multi_count_lies", Errno(EINVAL), |c| {
            let mut p = encode_write_multi(&[multi(0, reg::SCRATCH, 4)]);
            p[0] = 2;
            req(c, cmd(Command::RegionWriteMulti), &p, &[])
        }),
        case("write_multi_entry_count_9", Errno(EINVAL), |c| {
            let p = encode_write_multi(&[multi(0, reg::SCRATCH, 9)]);
            req(c, cmd(Command::RegionWriteMulti), &p, &[])
        }),
        case("write_multi_entry_count_0", Errno(EINVAL), |c| {
            let p = encode_write_multi(&[multi(0, reg::SCRATCH, 0)]);
            req(c, cmd(Command::RegionWriteMulti), &p, &[])
        }),
        case("write_multi_zero_writes", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::RegionWriteMulti),
                &encode_write_multi(&[]),
                &[],
            )
        }),
        case("write_multi_201_writes", Errno(EINVAL), |c| {
            let w: Vec<MultiWrite> = (0..201).map(|_| multi(0, reg::SCRATCH, 4)).collect();
            req(
                c,
                cmd(Command::RegionWriteMulti),
                &encode_write_multi(&w),
                &[],
            )
        }),
        case("write_multi_count_u64_max", Errno(EINVAL), |c| {
            let mut p = encode_write_multi(&[multi(0, reg::SCRATCH, 4)]);
            p[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            req(c, cmd(Command::RegionWriteMulti), &p, &[])
        }),
        case("write_multi_bad_region", Errno(EINVAL), |c| {
            let p = encode_write_multi(&[multi(0, reg::SCRATCH, 4), multi(9, 0, 4)]);
            req(c, cmd(Command::RegionWriteMulti), &p, &[])
        }),
        // VERSION and negotiation.
        raw_case("command_before_version", Errno(EINVAL), |c| {
            req(c, cmd(Command::RegionRead), &read_id_payload(), &[])
        }),
        case("second_version", Errno(EINVAL), |c| {
            req(c, cmd(Command::Version), &version(QEMU_CAPS), &[])
        }),
        raw_case("version_bad_json", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &version(r#"{"capabilities":"#), &[])
        }),
        raw_case("version_json_not_an_object", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &version("[1,2,3]"), &[])
        }),
        raw_case("version_negative_number", ErrnoThenClosed(EINVAL), |c| {
            req(
                c,
                1,
                &version(r#"{"capabilities":{"max_msg_fds":-1}}"#),
                &[],
            )
        }),
        raw_case("version_fractional_number", ErrnoThenClosed(EINVAL), |c| {
            req(
                c,
                1,
                &version(r#"{"capabilities":{"max_dma_maps":1.5}}"#),
                &[],
            )
        }),
        raw_case("version_number_above_u32", ErrnoThenClosed(EINVAL), |c| {
            req(
                c,
                1,
                &version(r#"{"capabilities":{"max_data_xfer_size":1099511627776}}"#),
                &[],
            )
        }),
        raw_case("version_string_for_number", ErrnoThenClosed(EINVAL), |c| {
            req(
                c,
                1,
                &version(r#"{"capabilities":{"max_msg_fds":"16"}}"#),
                &[],
            )
        }),
        raw_case(
            "version_capabilities_not_an_object",
            ErrnoThenClosed(EINVAL),
            |c| req(c, 1, &version(r#"{"capabilities":[16]}"#), &[]),
        ),
        raw_case(
            "version_write_multiple_not_a_bool",
            ErrnoThenClosed(EINVAL),
            |c| {
                req(
                    c,
                    1,
                    &version(r#"{"capabilities":{"write_multiple":1}}"#),
                    &[],
                )
            },
        ),
        raw_case("version_pgsizes_not_pages", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &version(r#"{"capabilities":{"pgsizes":512}}"#), &[])
        }),
        raw_case("version_missing_nul", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &[0, 0, 0, 0, b'{', b'}'], &[])
        }),
        raw_case("version_bytes_after_nul", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &[0, 0, 0, 0, b'{', b'}', 0, b'x', 0], &[])
        }),
        raw_case("version_invalid_utf8", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &[0, 0, 0, 0, b'"', 0xff, 0xfe, b'"', 0], &[])
        }),
        raw_case("version_deeply_nested_json", ErrnoThenClosed(EINVAL), |c| {
            let json = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
            req(c, 1, &version(&json), &[])
        }),
        raw_case("version_payload_truncated", ErrnoThenClosed(EINVAL), |c| {
            req(c, 1, &[0, 0], &[])
        }),
        raw_case("version_major_1", ErrnoThenClosed(libc::ENOTSUP), |c| {
            req(c, 1, &version_payload(1, 0, QEMU_CAPS), &[])
        }),
        raw_case("version_with_an_fd", ErrnoThenClosed(EINVAL), |c| {
            let ram = memfd(0x1000);
            req(c, 1, &version(QEMU_CAPS), &[ram.as_raw_fd()])
        }),
        // Info requests with junk in their input fields.
        case("device_info_reserved_fields_set", Errno(EINVAL), |c| {
            req(c, cmd(Command::DeviceGetInfo), &info_p(16, 1, 9, 5), &[])
        }),
        case("region_io_fds_reserved_fields_set", Errno(EINVAL), |c| {
            req(
                c,
                cmd(Command::DeviceGetRegionIoFds),
                &info_p(16, 1, 0, 3),
                &[],
            )
        }),
    ]
}

// --- the harness ------------------------------------------------------------

/// The connection works: a register read returns the ID, a write sticks, and
/// configuration space answers.
fn check_alive(c: &mut Client) -> Result<(), String> {
    let id = c.read32(0, reg::ID).map_err(|e| format!("ID read: {e}"))?;
    if id != ID_VALUE {
        return Err(format!("ID reads {id:#x}"));
    }
    c.write32(0, reg::SCRATCH, 0x5eed)
        .map_err(|e| format!("SCRATCH write: {e}"))?;
    let v = c
        .read32(0, reg::SCRATCH)
        .map_err(|e| format!("SCRATCH read: {e}"))?;
    if v != 0x5eed {
        return Err(format!("SCRATCH reads {v:#x}"));
    }
    c.read32(7, 0).map_err(|e| format!("config read: {e}"))?;
    Ok(())
}

fn run_case(s: &TestServer, case: &Case) -> Result<(), String> {
    let mut c = if case.negotiated {
        s.connect()
    } else {
        s.connect_raw()
    };
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| (case.run)(&mut c))).map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            format!("panicked: {msg}")
        })?;
    match (case.expect, outcome) {
        (Errno(want) | ErrnoThenClosed(want), Err(ClientError::Server(got))) if got == want => {}
        (Errno(want) | ErrnoThenClosed(want), other) => {
            return Err(format!("expected errno {want}, got {other:?}"));
        }
        (Closed | Silent | Accepted, Ok(())) => {}
        (_, Err(e)) => return Err(format!("expected {:?}, got {e}", case.expect)),
    }
    match case.expect {
        Errno(_) | Silent | Accepted => {
            if !case.negotiated {
                c.negotiate()
                    .map_err(|e| format!("VERSION afterwards: {e}"))?;
            }
            check_alive(&mut c).map_err(|e| format!("same connection afterwards: {e}"))
        }
        Closed | ErrnoThenClosed(_) => {
            match c.recv() {
                Err(e) if is_closed_error(&e) => {}
                Err(e) => return Err(format!("expected the connection closed, got {e}")),
                Ok(m) => {
                    return Err(format!(
                        "expected the connection closed, got {:?}",
                        m.header
                    ))
                }
            }
            drop(c);
            let mut fresh = s.connect();
            check_alive(&mut fresh).map_err(|e| format!("new connection afterwards: {e}"))
        }
    }
}

#[test]
fn hostile_input_catalogue() {
    let s = TestServer::start();
    let cases = cases();
    assert!(cases.len() >= 45, "only {} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let mut failures = Vec::new();
    for case in &cases {
        eprintln!("hostile case: {}", case.name);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run_case(&s, case)))
            .unwrap_or_else(|_| Err("panicked (see the message above)".into()));
        if let Err(e) = result {
            failures.push(format!("{}: {e}", case.name));
        }
        if !s.is_alive() {
            failures.push(format!("{}: the server thread died", case.name));
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The server survived everything: still running, still serving.
    assert!(s.is_alive(), "the server thread is gone");
    let mut last = s.connect();
    check_alive(&mut last).unwrap();
    assert!(s.stats.errors() > 0);
}

#[test]
fn hostile_inputs_in_one_connection() {
    // Every non-closing error case in a row on one connection: state left by
    // one malformed message never breaks the next.
    let s = TestServer::start();
    let mut c = s.connect();
    let mut n = 0;
    for case in cases()
        .iter()
        .filter(|k| k.negotiated && matches!(k.expect, Errno(_)))
    {
        match ((case.run)(&mut c), case.expect) {
            (Err(ClientError::Server(got)), Errno(want)) if got == want => n += 1,
            (other, _) => panic!("{}: {other:?}", case.name),
        }
        // Remove what a case's setup mapped, so the next starts clean.
        c.request(Command::DmaUnmap, &dma_unmap_p(24, 2, 0, 0), &[])
            .unwrap();
    }
    assert!(n >= 45);
    check_alive(&mut c).unwrap();
    assert!(s.is_alive());
}
