// SPDX-License-Identifier: GPL-2.0
/*
 * trustdev_tsm: a test link TSM for Linux's PCI/TSM core.
 *
 * It registers a link TSM (tsm_register() with pci_tsm_ops.link_ops), so
 * that `echo tsmN > /sys/bus/pci/devices/BDF/tsm/connect` runs the kernel's
 * own connect path against a device without confidential-computing
 * hardware:
 *
 *   connect_store -> pci_tsm_connect -> tdtsm_probe -> pci_tsm_pf0_constructor
 *     (which insists on a DOE mailbox with CMA/SPDM) -> tdtsm_connect
 *
 * tdtsm_connect hands the protocol work to the user-space agent through
 * /dev/trustdev-tsm (agent.c): the agent runs SPDM (and IDE_KM) with every
 * DOE data object moved by the kernel's pci_tsm_doe_transfer() -> pci_doe(),
 * asks this module to set up and enable the IDE stream (ide.c), and returns
 * the verdict that completes connect. Disconnect asks the agent to stop the
 * keys and end the session, then tears the stream down.
 *
 * Copyright (c) 2026 the trustdev authors.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#define dev_fmt(fmt) "trustdev_tsm: " fmt

#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/pci-doe.h>
#include <linux/slab.h>

#include "trustdev_tsm.h"

static struct tsm_dev *tdtsm_tsm_dev;

/* Sub-functions of a connected DSM (other functions, VFs) get a plain link context. */
struct tdtsm_fn {
	struct pci_tsm base;
};

/*
 * ->probe: runs under pci_tsm_rwsem (write) from pci_tsm_connect() for the
 * DSM itself, and from probe_fn() for the functions it manages.
 */
static struct pci_tsm *tdtsm_probe(struct tsm_dev *tsm_dev,
				   struct pci_dev *pdev)
{
	int rc;

	if (is_pci_tsm_pf0(pdev)) {
		struct tdtsm_dsm *dsm = kzalloc(sizeof(*dsm), GFP_KERNEL);

		if (!dsm)
			return NULL;
		/* Finds the CMA mailbox; logs "TSM init failure, no CMA mailbox" */
		rc = pci_tsm_pf0_constructor(pdev, &dsm->pf0, tsm_dev);
		if (rc) {
			pci_err(pdev,
				"probe: pci_tsm_pf0_constructor() failed (%d): a link TSM needs a DOE mailbox offering CMA/SPDM (0001:01)\n",
				rc);
			pci_tsm_pf0_destructor(&dsm->pf0);
			kfree(dsm);
			return NULL;
		}
		pci_dbg(pdev, "probe: DSM context for %s built\n",
			dev_name(&tsm_dev->dev));
		return &dsm->pf0.base_tsm;
	} else {
		struct tdtsm_fn *fn = kzalloc(sizeof(*fn), GFP_KERNEL);

		if (!fn)
			return NULL;
		rc = pci_tsm_link_constructor(pdev, &fn->base, tsm_dev);
		if (rc) {
			pci_err(pdev, "probe: pci_tsm_link_constructor() failed (%d)\n", rc);
			kfree(fn);
			return NULL;
		}
		return &fn->base;
	}
}

/* ->remove: frees what ->probe built (connect failure, disconnect, unregister). */
static void tdtsm_remove(struct pci_tsm *tsm)
{
	struct pci_dev *pdev = tsm->pdev;

	if (is_pci_tsm_pf0(pdev)) {
		struct tdtsm_dsm *dsm = to_tdtsm_dsm(tsm);

		/* Normally gone already: connect and disconnect clean up. */
		tdtsm_ide_teardown(dsm);
		pci_tsm_pf0_destructor(&dsm->pf0);
		kfree(dsm);
		pci_dbg(pdev, "remove: DSM context freed\n");
	} else {
		kfree(container_of(tsm, struct tdtsm_fn, base));
	}
}

static const char *ide_state_name(u8 state)
{
	switch (state) {
	case PCI_IDE_SEL_STS_STATE_INSECURE:
		return "INSECURE";
	case PCI_IDE_SEL_STS_STATE_SECURE:
		return "SECURE";
	default:
		return "other";
	}
}

/*
 * ->connect: under pci_tsm_rwsem (write) and the DSM lock; pdev->tsm is
 * already our context, so pci_tsm_doe_transfer() works for the agent.
 */
static int tdtsm_connect(struct pci_dev *pdev)
{
	struct tdtsm_dsm *dsm = to_tdtsm_dsm(pdev->tsm);
	struct tdtsm_result *res;
	int rc;

	res = kzalloc(sizeof(*res), GFP_KERNEL);
	if (!res)
		return -ENOMEM;

	pci_dbg(pdev, "connect: asking the agent (timeout %u ms)\n",
		READ_ONCE(tdtsm_timeout_ms));
	rc = tdtsm_agent_call(dsm, TDTSM_OP_CONNECT, true, res);
	if (rc) {
		pci_err(pdev, "connect failed (%d): %s\n", rc, res->message);
		tdtsm_ide_teardown(dsm);
		dsm->session_id = 0;
		goto out;
	}

	dsm->session_id = res->session_id;
	if (dsm->stream.mode != TDTSM_IDE_OFF && !dsm->stream.enabled) {
		pci_info(pdev,
			 "connect: the agent left IDE stream %u disabled; tearing it down (link not encrypted)\n",
			 dsm->stream.stream_id);
		tdtsm_ide_teardown(dsm);
	}
	if (dsm->stream.enabled)
		pci_info(pdev,
			 "connected to %s: %s; IDE stream %u %s (%s)\n",
			 dev_name(&pdev->tsm->tsm_dev->dev), res->message,
			 dsm->stream.stream_id,
			 ide_state_name(PCI_IDE_SEL_STS_STATE_SECURE),
			 dsm->stream.mode == TDTSM_IDE_KERNEL ?
				 "kernel pci_ide_stream_*" :
				 "platform-emulated registers");
	else
		pci_info(pdev, "connected to %s: %s; no IDE stream\n",
			 dev_name(&pdev->tsm->tsm_dev->dev), res->message);
out:
	kfree(res);
	return rc;
}

/*
 * ->disconnect: under pci_tsm_rwsem (write) and the DSM lock; may be called
 * for device removal or TSM unregistration, so it never fails: when the agent
 * does not answer, the local state is torn down anyway and the log says what
 * was left on the device.
 */
static void tdtsm_disconnect(struct pci_dev *pdev)
{
	struct tdtsm_dsm *dsm = to_tdtsm_dsm(pdev->tsm);
	struct tdtsm_result *res;
	int rc;

	res = kzalloc(sizeof(*res), GFP_KERNEL);
	if (res) {
		rc = tdtsm_agent_call(dsm, TDTSM_OP_DISCONNECT, false, res);
		if (rc)
			pci_warn(pdev,
				 "disconnect: the agent did not end session %#x (%d: %s); tearing down locally\n",
				 dsm->session_id, rc, res->message);
		else
			pci_info(pdev, "disconnect: %s\n", res->message);
		kfree(res);
	} else {
		pci_warn(pdev, "disconnect: out of memory; tearing down locally\n");
	}
	tdtsm_ide_teardown(dsm);
	dsm->session_id = 0;
}

static struct pci_tsm_ops tdtsm_ops = {
	.probe = tdtsm_probe,
	.remove = tdtsm_remove,
	.connect = tdtsm_connect,
	.disconnect = tdtsm_disconnect,
};

static int __init tdtsm_init(void)
{
	struct tsm_dev *tsm_dev;
	int rc;

	rc = misc_register(&tdtsm_misc);
	if (rc) {
		pr_err("misc_register(/dev/%s) failed: %d\n", TDTSM_DEVICE_NAME, rc);
		return rc;
	}

	/* /sys/class/tsm/tsmN; pci_tsm_register() makes tsm/ visible on every PF0 */
	tsm_dev = tsm_register(tdtsm_misc.this_device, &tdtsm_ops);
	if (IS_ERR(tsm_dev)) {
		rc = PTR_ERR(tsm_dev);
		pr_err("tsm_register() failed: %d\n", rc);
		misc_deregister(&tdtsm_misc);
		return rc;
	}
	tdtsm_tsm_dev = tsm_dev;
	pr_info("registered link TSM %s; agent device /dev/%s; timeout %u ms\n",
		dev_name(&tsm_dev->dev), TDTSM_DEVICE_NAME, tdtsm_timeout_ms);
	return 0;
}

static void __exit tdtsm_exit(void)
{
	/* Disconnects every connected device (no agent can be attached: it holds a module reference). */
	tsm_unregister(tdtsm_tsm_dev);
	misc_deregister(&tdtsm_misc);
	tdtsm_ide_exit();
	pr_info("unregistered\n");
}

module_init(tdtsm_init);
module_exit(tdtsm_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("trustdev");
MODULE_DESCRIPTION("trustdev test link TSM: PCI/TSM connect through a user-space SPDM/IDE_KM agent");
