/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * trustdev_tsm: the ioctl interface between the test link TSM module and its
 * user-space agent (`trustdev-guest tsm-agent`), through /dev/trustdev-tsm.
 *
 * The module registers a link TSM with the PCI/TSM core. When the kernel
 * runs the TSM's connect or disconnect operation for a device (a write to
 * /sys/bus/pci/devices/BDF/tsm/connect or .../disconnect), the module queues
 * one request and waits, bounded by the module parameter timeout_ms. The
 * agent, the only process that may have the device open:
 *
 *   TDTSM_IOC_GET_REQUEST  blocks until a request is queued and claims it;
 *   TDTSM_IOC_DOE          moves one DOE data object through the kernel's
 *                          pci_tsm_doe_transfer() -> pci_doe() on the
 *                          device's CMA mailbox (type 1 SPDM, type 2 secured
 *                          SPDM), only while it holds a claimed request;
 *   TDTSM_IOC_IDE          asks the module to set up, enable, disable or tear down the
 *                          device's selective IDE stream for the request;
 *   TDTSM_IOC_COMPLETE     gives the verdict: 0 completes connect/disconnect,
 *                          a negative errno fails it with the message shown
 *                          in the kernel log.
 *
 * A request the module gave up on (timeout, killed writer, agent closed the
 * device) answers every later ioctl naming it with -ESRCH.
 *
 * Every structure is naturally aligned with explicit padding; the layout is
 * the same for 64-bit user space on any architecture. The Rust agent mirrors
 * it (trustdev-guest tsm_agent/uapi.rs) and checks the sizes below.
 */
#ifndef _UAPI_TRUSTDEV_TSM_H
#define _UAPI_TRUSTDEV_TSM_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define TDTSM_DEVICE_NAME "trustdev-tsm"

/* Largest DOE payload one TDTSM_IOC_DOE moves each way (the DOE maximum is
 * 2^18 dwords including the 2-dword header). */
#define TDTSM_DOE_MAX ((1u << 20) - 8)

#define TDTSM_MSG_MAX 512

/* struct tdtsm_request.op */
#define TDTSM_OP_CONNECT 1
#define TDTSM_OP_DISCONNECT 2

/* struct tdtsm_request.flags */
#define TDTSM_REQ_SECURED_CMA (1u << 0)	/* the CMA mailbox also offers secured CMA (0001:02) */
#define TDTSM_REQ_IDE_CAP (1u << 1)	/* the device has an IDE extended capability */
#define TDTSM_REQ_DEVCAP_TEE (1u << 2)	/* the device sets PCI_EXP_DEVCAP_TEE */
#define TDTSM_REQ_IDE_ACTIVE (1u << 3)	/* disconnect: a stream of this connection is set up */

/* Size 64. */
struct tdtsm_request {
	__u64 id;		/* names the request in later ioctls */
	__u32 op;		/* TDTSM_OP_* */
	__u32 flags;		/* TDTSM_REQ_* */
	__u16 segment;		/* PCI domain */
	__u8 bus;
	__u8 devfn;
	__u16 vendor;
	__u16 device;
	__u16 ide_cap;		/* config offset of the IDE capability, 0 if none */
	__u16 reserved0;
	__u32 timeout_ms;	/* how long the kernel waits for the verdict */
	char tsm_name[16];	/* e.g. "tsm0" */
	__u8 reserved1[16];
};

/* Size 40. */
struct tdtsm_doe {
	__u64 id;		/* the claimed request */
	__u64 req_ptr;		/* user address of the request payload */
	__u64 rsp_ptr;		/* user address of the response buffer */
	__u32 req_len;		/* 1 .. TDTSM_DOE_MAX bytes */
	__u32 rsp_cap;		/* 4 .. TDTSM_DOE_MAX bytes */
	__u32 rsp_len;		/* out: bytes received (dword granular, as pci_doe() returns) */
	__u8 type;		/* DOE data object type (PCI-SIG vendor): 1 CMA/SPDM, 2 secured */
	__u8 reserved[3];
};

/* struct tdtsm_ide.op */
#define TDTSM_IDE_SETUP 1	/* allocate and program a selective stream, EN still 0 */
#define TDTSM_IDE_ENABLE 2	/* set EN; the stream must read SECURE */
#define TDTSM_IDE_TEARDOWN 3	/* disable and clear the stream */
#define TDTSM_IDE_DISABLE 4	/* disconnect: clear EN, keep the settings (pci_ide_stream_disable) */

/* struct tdtsm_ide.mode (out) */
#define TDTSM_IDE_MODE_NONE 0
#define TDTSM_IDE_MODE_KERNEL 1	/* drivers/pci/ide.c pci_ide_stream_* on endpoint and root port */
#define TDTSM_IDE_MODE_PLATFORM 2	/* the module programs the device's registers (platform-emulated) */

/* Size 544. */
struct tdtsm_ide {
	__u64 id;		/* the claimed request */
	__u32 op;		/* TDTSM_IDE_* */
	__u32 mode;		/* out: TDTSM_IDE_MODE_* */
	__u8 stream_id;		/* out: the Stream ID the TSM assigned */
	__u8 stream_index;	/* out: selective stream register block on the device */
	__u8 ep_state;		/* out: device SEL_STS.STATE after the op */
	__u8 rp_state;		/* out: root port SEL_STS.STATE (kernel mode), else 0xff */
	__u16 ide_cap;		/* out: the device's IDE capability offset */
	__u16 reserved0;
	__u32 reserved1[2];
	char why[TDTSM_MSG_MAX];	/* out: how the stream was set up, or why not */
};

/* Size 528. */
struct tdtsm_verdict {
	__u64 id;		/* the claimed request */
	__s32 status;		/* 0, or a negative errno that connect returns */
	__u32 session_id;	/* the SPDM session of the connection (0 if none) */
	char message[TDTSM_MSG_MAX];	/* NUL-terminated; logged by the kernel */
};

#define TDTSM_IOC_MAGIC 0xD5
#define TDTSM_IOC_GET_REQUEST _IOR(TDTSM_IOC_MAGIC, 1, struct tdtsm_request)
#define TDTSM_IOC_DOE _IOWR(TDTSM_IOC_MAGIC, 2, struct tdtsm_doe)
#define TDTSM_IOC_IDE _IOWR(TDTSM_IOC_MAGIC, 3, struct tdtsm_ide)
#define TDTSM_IOC_COMPLETE _IOW(TDTSM_IOC_MAGIC, 4, struct tdtsm_verdict)

#endif /* _UAPI_TRUSTDEV_TSM_H */
