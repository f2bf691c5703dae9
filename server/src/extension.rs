//! Server side of the client-to-server commands of the vfio-user PASID
//! extension (docs/VFIO-USER-PASID.md): translated-space DMA windows, ATS
//! invalidations and PRG responses. The server core hands these commands
//! here; they act on the device's [`PasidMemory`].

use crate::dma::PasidMemory;
use crate::protocol::pasid::{InvalidateRequest, PageResponse};
use crate::protocol::{Command, DmaMapRequest, DmaUnmapKind, DmaUnmapRequest, ProtocolError};
use crate::server::RequestError;
use log::debug;
use std::os::fd::OwnedFd;

/// Handles one extension command; returns the reply payload.
pub(crate) fn dispatch(
    cmd: Command,
    pasid: &PasidMemory,
    payload: &[u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<Vec<u8>, RequestError> {
    let features = pasid.features();
    let negotiated = match cmd {
        Command::TranslatedDmaMap | Command::TranslatedDmaUnmap | Command::AtsInvalidate => {
            features.ats
        }
        Command::PageResponse => features.pri,
        _ => false,
    };
    if !negotiated {
        return Err(ProtocolError::Unsupported(cmd).into());
    }
    match cmd {
        Command::TranslatedDmaMap => {
            let req = DmaMapRequest::decode(payload)?;
            // Translated memory is only ever accessed directly: there is no
            // message to reach a translated address (a client marks such
            // ranges U in its translations instead).
            let Some(fd) = std::mem::take(fds).into_iter().next() else {
                return Err(ProtocolError::BadFdCount {
                    what: "TRANSLATED_DMA_MAP",
                    got: 0,
                    expected: "one",
                }
                .into());
            };
            debug!("TRANSLATED_DMA_MAP {:#x}+{:#x}", req.address, req.size);
            pasid.translated().map(&req, Some(fd))?;
            Ok(Vec::new())
        }
        Command::TranslatedDmaUnmap => {
            let req = DmaUnmapRequest::decode(payload)?;
            match req.kind {
                DmaUnmapKind::Range { address, size } => {
                    pasid.translated().unmap(address, size)?;
                }
                DmaUnmapKind::All => pasid.translated().unmap_all(),
            }
            Ok(req.encode())
        }
        Command::AtsInvalidate => {
            let req = InvalidateRequest::decode(payload)?;
            pasid.invalidate(&req);
            Ok(Vec::new())
        }
        Command::PageResponse => {
            let rsp = PageResponse::decode(payload)?;
            pasid.page_response(&rsp);
            Ok(Vec::new())
        }
        _ => Err(ProtocolError::Unsupported(cmd).into()),
    }
}
