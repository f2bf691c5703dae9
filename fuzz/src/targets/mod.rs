//! The fuzz targets, by name.

pub mod accel_desc;
pub mod doe;
pub mod nvme_ctrl;
pub mod nvme_dptr;
pub mod spdm;
pub mod vfio_decode;
pub mod vfio_server;

use crate::engine::Target;

/// Every target: name and what it fuzzes.
pub const TARGETS: [(&str, &str); 9] = [
    (
        "vfio-decode",
        "vfio-user header and every command's payload decoder",
    ),
    (
        "vfio-server",
        "whole messages against a live server (NVMe device) over its socket",
    ),
    (
        "nvme-dptr",
        "PRP and SGL walks over adversarial host memory",
    ),
    (
        "nvme-ctrl",
        "admin and I/O submission entries against a live NVMe controller",
    ),
    (
        "doe-endpoint",
        "DOE objects into DoeEndpoint::handle (discovery, CMA, secured CMA)",
    ),
    (
        "doe-mailbox",
        "DOE mailbox registers driven by arbitrary config reads/writes",
    ),
    (
        "spdm",
        "SPDM request sequences (valid prefix + mutated requests) into a fresh responder",
    ),
    (
        "spdm-secured",
        "secured-message records into a responder with a live session",
    ),
    (
        "accel-desc",
        "accelerator descriptors (every operation, PASID) over adversarial client memory",
    ),
];

/// Builds the target called `name`.
pub fn make(name: &str) -> Result<Box<dyn Target>, String> {
    Ok(match name {
        "vfio-decode" => Box::new(vfio_decode::VfioDecode::new()),
        "vfio-server" => Box::new(vfio_server::VfioServer::new()?),
        "nvme-dptr" => Box::new(nvme_dptr::NvmeDptr::new()),
        "nvme-ctrl" => Box::new(nvme_ctrl::NvmeCtrl::new()?),
        "doe-endpoint" => Box::new(doe::DoeEndpointTarget::new()),
        "doe-mailbox" => Box::new(doe::DoeMailboxTarget::new()),
        "spdm" => Box::new(spdm::Spdm::new()),
        "spdm-secured" => Box::new(spdm::SpdmSecured::new()?),
        "accel-desc" => Box::new(accel_desc::AccelDesc::new()?),
        _ => {
            return Err(format!(
                "unknown target {name:?}; targets: {}",
                TARGETS.map(|t| t.0).join(", ")
            ))
        }
    })
}
