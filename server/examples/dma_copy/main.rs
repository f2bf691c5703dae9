//! `dma_copy`: serves the DMA-copy example device on a vfio-user socket.
//!
//! ```text
//! cargo run -p vfio-user-server --example dma_copy -- /tmp/dma.sock [--rciep]
//! ```
//! Then attach QEMU 11.1+:
//! `-device '{"driver":"vfio-user-pci","socket":{"path":"/tmp/dma.sock","type":"unix"}}'`

#[allow(dead_code)] // the register map is also used by the integration tests
mod device;

use vfio_user_server::pci::PortType;
use vfio_user_server::Server;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: dma_copy SOCKET [--rciep]");
        std::process::exit(2);
    };
    let port = if args.any(|a| a == "--rciep") {
        PortType::RcIntegratedEndpoint
    } else {
        PortType::Endpoint
    };
    let dev = match device::DmaCopy::new(port) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dma_copy: cannot create the device: {e}");
            std::process::exit(1);
        }
    };
    let mut server = match Server::new(dev, std::path::Path::new(&path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dma_copy: {path}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = server.run() {
        eprintln!("dma_copy: {e}");
        std::process::exit(1);
    }
}
