/* SPDX-License-Identifier: GPL-2.0 */
/*
 * trustdev_tsm: a test link TSM for the PCI/TSM core (drivers/pci/tsm.c,
 * drivers/virt/coco/tsm-core.c) that hands the protocol work (SPDM, IDE_KM)
 * to a user-space agent. Internal declarations shared by the module's files.
 */
#ifndef TRUSTDEV_TSM_H
#define TRUSTDEV_TSM_H

#include <linux/pci.h>
#include <linux/pci-ide.h>
#include <linux/pci-tsm.h>
#include <linux/tsm.h>

#include "uapi/trustdev_tsm.h"

/*
 * enum tdtsm_ide_mode_k - who owns the device's selective IDE stream
 * @TDTSM_IDE_OFF: no stream
 * @TDTSM_IDE_KERNEL: allocated and programmed by drivers/pci/ide.c
 *	(pci_ide_stream_alloc/register/setup/enable) on endpoint and root port
 * @TDTSM_IDE_PLATFORM: the kernel's helpers refuse the topology (RCiEP, or a
 *	root port without IDE); the module programs the device's registers the
 *	way a TSM's platform code would
 */
enum tdtsm_ide_mode_k {
	TDTSM_IDE_OFF,
	TDTSM_IDE_KERNEL,
	TDTSM_IDE_PLATFORM,
};

/*
 * struct tdtsm_stream - the selective IDE stream of one connection
 * @mode: see enum tdtsm_ide_mode_k
 * @ide: the kernel's stream descriptor (TDTSM_IDE_KERNEL)
 * @cap: config offset of the device's IDE capability
 * @sel_pos: config offset of the selective stream block in use
 * @stream_index: its index among the device's selective streams
 * @stream_id: the Stream ID the TSM assigned (TDTSM_IDE_PLATFORM: from the
 *	module's own pool)
 * @enabled: SEL_CTL.EN was set by this module
 * @idle_ctl: TDTSM_IDE_PLATFORM: SEL_CTL as found before setup (the kernel
 *	writes the reserved Stream ID 255 into idle streams it parsed), restored
 *	by teardown
 */
struct tdtsm_stream {
	enum tdtsm_ide_mode_k mode;
	struct pci_ide *ide;
	u16 cap;
	u16 sel_pos;
	u8 stream_index;
	u8 stream_id;
	bool enabled;
	u32 idle_ctl;
};

/*
 * struct tdtsm_dsm - the module's context for a Physical Function 0 (DSM)
 * @pf0: the PCI/TSM core's context, built by pci_tsm_pf0_constructor()
 * @stream: the IDE stream of the connection, if any
 * @session_id: the agent's SPDM session with the device (0 if none)
 */
struct tdtsm_dsm {
	struct pci_tsm_pf0 pf0;
	struct tdtsm_stream stream;
	u32 session_id;
};

static inline struct tdtsm_dsm *to_tdtsm_dsm(struct pci_tsm *tsm)
{
	return container_of(tsm, struct tdtsm_dsm, pf0.base_tsm);
}

/* agent.c: /dev/trustdev-tsm and the request queue */
struct tdtsm_result {
	int status;
	u32 session_id;
	char message[TDTSM_MSG_MAX];
};

extern unsigned int tdtsm_timeout_ms;
extern struct miscdevice tdtsm_misc;
int tdtsm_agent_call(struct tdtsm_dsm *dsm, u32 op, bool killable,
		     struct tdtsm_result *res);

/* ide.c: selective IDE stream handling */
int tdtsm_ide_setup(struct tdtsm_dsm *dsm, struct tdtsm_ide *out);
int tdtsm_ide_enable(struct tdtsm_dsm *dsm, struct tdtsm_ide *out);
int tdtsm_ide_disable(struct tdtsm_dsm *dsm, struct tdtsm_ide *out);
void tdtsm_ide_teardown(struct tdtsm_dsm *dsm);
u16 tdtsm_ide_find_cap(struct pci_dev *pdev);
void tdtsm_ide_exit(void);

#endif /* TRUSTDEV_TSM_H */
