//! SPDM through the NVMe controller's Security Send / Security Receive admin
//! commands (DSP0286 storage binding, SECP 0xE8), driven over vfio-user like
//! a user-space NVMe driver: our requester authenticates the controller (chain
//! to the stored root, CHALLENGE_AUTH, signed measurements), and bad Security
//! commands get NVMe errors while the controller keeps working. The same
//! controller also answers discovery on its DOE mailbox.

mod nvme_common;

use nvme_common::{connect, TempDir};
use spdm_responder::requester::{Message, Requester, RequesterConfig, Transport};
use spdm_responder::transport::storage::{spsp, OP_PENDING_INFO, OP_SPDM, SECP_SPDM};
use trustdev_devices::nvme::host::HostDriver;
use trustdev_devices::nvme::spec::{admin, Command};
use trustdev_devices::nvme::{NvmeConfig, NvmeDevice, NvmeSecurity};
use trustdev_devices::security;
use vfio_user_server::client::Client;
use vfio_user_server::pci::PortType;
use vfio_user_server::Server;

fn cdw10(secp: u8, spsp: u16) -> u32 {
    (u32::from(secp) << 24) | (u32::from(spsp >> 8) << 16) | (u32::from(spsp & 0xff) << 8)
}

/// The requester's transport: Security Send, then Security Receive of the
/// pending-response length, then of the response.
struct SecurityCommands<'a> {
    drv: &'a mut HostDriver<Client>,
}

impl SecurityCommands<'_> {
    fn send(&mut self, secp: u8, spsp: u16, data: &[u8]) -> Result<(), String> {
        let buf = self.drv.mem.alloc(data.len().max(1), 4096);
        self.drv.mem.write(buf, data);
        let (prp1, prp2) = self.drv.prps(buf, data.len());
        let mut cmd = Command {
            opcode: admin::SECURITY_SEND,
            prp1,
            prp2,
            ..Default::default()
        };
        cmd.cdw[0] = cdw10(secp, spsp);
        cmd.cdw[1] = data.len() as u32;
        self.drv.admin_ok(cmd).map(|_| ())
    }

    fn receive(&mut self, secp: u8, spsp: u16, len: usize) -> Result<Vec<u8>, String> {
        let buf = self.drv.mem.alloc(len.max(1), 4096);
        let (prp1, prp2) = self.drv.prps(buf, len);
        let mut cmd = Command {
            opcode: admin::SECURITY_RECV,
            prp1,
            prp2,
            ..Default::default()
        };
        cmd.cdw[0] = cdw10(secp, spsp);
        cmd.cdw[1] = len as u32;
        self.drv.admin_ok(cmd)?;
        let mut out = vec![0u8; len];
        self.drv.mem.read(buf, &mut out);
        Ok(out)
    }
}

impl Transport for SecurityCommands<'_> {
    fn send_receive(
        &mut self,
        msg: Message,
    ) -> Result<Message, spdm_responder::error::TransportError> {
        use spdm_responder::error::TransportError as E;
        let Message::Spdm(req) = msg else {
            return Err(E::Unsupported("secured messages over the storage binding"));
        };
        let io = |e: String| E::Io(std::io::Error::other(e));
        self.send(SECP_SPDM, spsp(OP_SPDM, 0), &req).map_err(io)?;
        let info = self
            .receive(SECP_SPDM, spsp(OP_PENDING_INFO, 0), 12)
            .map_err(io)?;
        let len = u32::from_le_bytes([info[8], info[9], info[10], info[11]]) as usize;
        if u32::from_le_bytes([info[4], info[5], info[6], info[7]]) == 0 || len == 0 {
            return Err(E::Malformed("no pending SPDM response"));
        }
        let rsp = self.receive(SECP_SPDM, spsp(OP_SPDM, 0), len).map_err(io)?;
        Ok(Message::Spdm(rsp))
    }
}

#[test]
fn spdm_over_nvme_security_send_receive() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = TempDir::new("spdm");
    let socket = dir.path("nvme.sock");
    let ids = spdm_responder::CmaDeviceName::default();
    let idir = dir.path("identity");
    let identity = security::cma::load_identity(&idir, &ids).unwrap();
    let roots = identity.roots_der();
    let sec = NvmeSecurity {
        ext_caps: vec![security::doe_capability(
            Some(identity.clone()),
            spdm_responder::ResponderConfig::default(),
        )],
        tee: true,
        storage: Some(spdm_responder::Responder::new(
            spdm_responder::ResponderConfig::default(),
            identity,
        )),
    };
    let cfg = NvmeConfig::from_args(&nvme_common::args(), "spdm").unwrap();
    let dev = NvmeDevice::new_secure(cfg, PortType::Endpoint, sec).unwrap();
    let mut server = Server::new(dev, &socket).unwrap();
    let stop = server.stop_handle();
    let t = std::thread::spawn(move || server.run().unwrap());

    let (mut drv, _vectors) = connect(&socket, 32 << 20);
    // Identify Controller advertises Security Send/Receive (OACS bit 0).
    let id = drv.identify(1, 0, 0).unwrap();
    assert_eq!(u16::from_le_bytes([id[256], id[257]]) & 1, 1);
    // SECP 0: the supported protocols list names 0x00 and 0xE8.
    let list = SecurityCommands { drv: &mut drv }
        .receive(0, 0, 16)
        .unwrap();
    assert_eq!(&list[6..10], &[0, 2, 0x00, 0xE8]);

    let cfg = RequesterConfig {
        trusted_roots: roots,
        ..RequesterConfig::default()
    };
    {
        let mut req = Requester::new(cfg, SecurityCommands { drv: &mut drv });
        let conn = req.init_connection().unwrap().clone();
        assert_eq!(conn.version, 0x13);
        let (mask, digests) = req.get_digests().unwrap();
        assert_eq!(mask & 1, 1);
        assert!(!digests.is_empty());
        req.get_certificate(0).unwrap();
        let ch = req.authenticate(0).unwrap();
        assert_eq!(ch.slot, 0);
        let m = req.get_measurements(None, 0xff, true, 0).unwrap();
        assert!(m.signature_verified);
        assert!(m.blocks.len() >= 3);
    }

    // Hostile Security commands: NVMe errors, and the controller still works.
    let mut s = SecurityCommands { drv: &mut drv };
    assert!(
        s.send(0x01, 0, &[0; 16]).is_err(),
        "TCG SECP is not supported"
    );
    assert!(
        s.send(SECP_SPDM, 0x0100, &[0x12, 0x84, 0, 0]).is_err(),
        "bad SPSP"
    );
    assert!(
        s.receive(SECP_SPDM, spsp(OP_SPDM, 0), 64).is_err(),
        "nothing pending"
    );
    let id = drv.identify(1, 0, 0).unwrap();
    assert_eq!(
        u16::from_le_bytes([id[0], id[1]]),
        trustdev_devices::nvme::VENDOR_ID,
        "Identify still works"
    );
    drop(drv);
    stop.stop();
    t.join().unwrap();
}
