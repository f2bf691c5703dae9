// SPDX-License-Identifier: GPL-2.0
/*
 * trustdev_tsm: the device's selective IDE stream for a connection.
 *
 * Where Linux lets a TSM use its IDE stream helpers (drivers/pci/ide.c), the
 * module uses them in the order a link TSM follows: pci_ide_stream_alloc(),
 * pci_ide_stream_register(), pci_ide_stream_setup() on endpoint and root
 * port, (the agent runs IDE_KM KEY_PROG + K_SET_GO), pci_ide_stream_enable()
 * on both, and pci_ide_stream_release() to undo.
 *
 * The helpers refuse two topologies, and with stock QEMU every device is in
 * one of them:
 *   - an RCiEP (device on q35's pcie.0): pci_ide_stream_alloc() gives
 *     streams only to PCI_EXP_TYPE_ENDPOINT;
 *   - an Endpoint whose root port has no IDE capability (QEMU's
 *     pcie-root-port): pci_ide_init() leaves the device's ide_cap at 0.
 * There the module programs the device's own stream registers itself - RID
 * association, Stream ID, enable, status check - the way a TSM's platform
 * code programs the root-port side on real hardware, and says so in the log
 * and in the agent's result ("platform-emulated"). Nothing is written to
 * the root port in that mode (it has no IDE registers).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#define dev_fmt(fmt) "trustdev_tsm: " fmt

#include <linux/bitfield.h>
#include <linux/idr.h>
#include <linux/pci.h>

#include "trustdev_tsm.h"

/* Stream IDs of platform-emulated streams (255 is the kernel's reserved ID). */
static DEFINE_IDA(tdtsm_stream_ids);

/* The IDE capability layout, as drivers/pci/ide.c pci_ide_init() parses it. */
struct ide_layout {
	u16 cap;
	u8 nr_link;
	u16 nr_sel;
	u8 nr_mem;
	bool sel_cfg;
	bool tee_limited;
};

u16 tdtsm_ide_find_cap(struct pci_dev *pdev)
{
	if (!pci_is_pcie(pdev))
		return 0;
	return pci_find_ext_capability(pdev, PCI_EXT_CAP_ID_IDE);
}

static u16 sel_offset(const struct ide_layout *l, u16 idx)
{
	return l->cap + PCI_IDE_LINK_STREAM_0 + l->nr_link * PCI_IDE_LINK_BLOCK_SIZE +
	       idx * PCI_IDE_SEL_BLOCK_SIZE(l->nr_mem);
}

static int parse_layout(struct pci_dev *pdev, u16 cap, struct ide_layout *l,
			char *why, size_t len)
{
	u32 val;

	pci_read_config_dword(pdev, cap + PCI_IDE_CAP, &val);
	if (!(val & PCI_IDE_CAP_SELECTIVE)) {
		snprintf(why, len, "the IDE capability at %#x has no selective streams", cap);
		return -EOPNOTSUPP;
	}
	l->cap = cap;
	l->nr_link = (val & PCI_IDE_CAP_LINK) ? 1 + FIELD_GET(PCI_IDE_CAP_LINK_TC_NUM, val) : 0;
	l->nr_sel = 1 + FIELD_GET(PCI_IDE_CAP_SEL_NUM, val);
	l->sel_cfg = FIELD_GET(PCI_IDE_CAP_SEL_CFG, val);
	l->tee_limited = FIELD_GET(PCI_IDE_CAP_TEE_LIMITED, val);
	l->nr_mem = 0;
	pci_read_config_dword(pdev, sel_offset(l, 0) + PCI_IDE_SEL_CAP, &val);
	l->nr_mem = FIELD_GET(PCI_IDE_SEL_CAP_ASSOC_NUM, val);
	return 0;
}

static u8 sel_state(struct pci_dev *pdev, u16 pos)
{
	u32 val;

	pci_read_config_dword(pdev, pos + PCI_IDE_SEL_STS, &val);
	return FIELD_GET(PCI_IDE_SEL_STS_STATE, val);
}

/* Config offset of @pdev's selective block for @ide (kernel mode). */
static u16 kernel_sel_offset(struct pci_dev *pdev, struct pci_ide *ide)
{
	struct pci_ide_partner *settings = pci_ide_to_settings(pdev, ide);
	struct ide_layout l = {
		.cap = pdev->ide_cap,
		.nr_link = pdev->nr_link_ide,
		.nr_mem = pdev->nr_ide_mem,
	};

	return settings ? sel_offset(&l, settings->stream_index) : 0;
}

/* Why the kernel's helpers cannot set up a stream for @pdev (NULL if they can). */
static const char *kernel_refusal(struct pci_dev *pdev, char *buf, size_t len)
{
	struct pci_dev *rp;

	if (pci_pcie_type(pdev) == PCI_EXP_TYPE_RC_END) {
		snprintf(buf, len,
			 "pci_ide_stream_alloc() gives streams only to PCIe Endpoints and %s is a Root Complex Integrated Endpoint",
			 pci_name(pdev));
		return buf;
	}
	if (pci_pcie_type(pdev) != PCI_EXP_TYPE_ENDPOINT) {
		snprintf(buf, len, "pci_ide_stream_alloc() refuses PCIe device type %d",
			 pci_pcie_type(pdev));
		return buf;
	}
	if (!pdev->ide_cap) {
		rp = pcie_find_root_port(pdev);
		if (rp && !rp->ide_cap)
			snprintf(buf, len,
				 "pci_ide_init() ignored the device's IDE capability because its root port %s has none",
				 pci_name(rp));
		else
			snprintf(buf, len, "pci_ide_init() did not accept the device's IDE capability");
		return buf;
	}
	return NULL;
}

static int setup_kernel(struct tdtsm_dsm *dsm, struct pci_dev *pdev,
			struct pci_ide *ide, struct tdtsm_ide *out)
{
	struct tdtsm_stream *s = &dsm->stream;
	struct pci_dev *rp = pcie_find_root_port(pdev);
	int rc;

	/* The TSM owns Stream IDs; like SEV-TIO, use the host bridge stream index. */
	ide->stream_id = ide->host_bridge_stream;
	ide->partner[PCI_IDE_EP].default_stream = 1;
	rc = pci_ide_stream_register(ide);
	if (rc) {
		snprintf(out->why, sizeof(out->why),
			 "pci_ide_stream_register(Stream ID %d) failed: %d", ide->stream_id, rc);
		pci_ide_stream_free(ide);
		return rc;
	}
	pci_ide_stream_setup(pdev, ide);
	pci_ide_stream_setup(rp, ide);
	s->mode = TDTSM_IDE_KERNEL;
	s->ide = ide;
	s->cap = pdev->ide_cap;
	s->stream_index = ide->partner[PCI_IDE_EP].stream_index;
	s->stream_id = ide->stream_id;
	s->sel_pos = kernel_sel_offset(pdev, ide);
	out->mode = TDTSM_IDE_MODE_KERNEL;
	out->rp_state = sel_state(rp, kernel_sel_offset(rp, ide));
	snprintf(out->why, sizeof(out->why),
		 "kernel helpers: pci_ide_stream_alloc/register/setup on %s and root port %s (%s)",
		 pci_name(pdev), pci_name(rp), ide->name);
	pci_info(pdev, "IDE: %s, Stream ID %u, device stream %u, root port stream %u\n",
		 out->why, s->stream_id, s->stream_index, ide->partner[PCI_IDE_RP].stream_index);
	return 0;
}

static int setup_platform(struct tdtsm_dsm *dsm, struct pci_dev *pdev, u16 cap,
			  const char *refusal, struct tdtsm_ide *out)
{
	struct tdtsm_stream *s = &dsm->stream;
	struct pci_dev *rp = pcie_find_root_port(pdev);
	struct ide_layout l;
	u16 rid, idx, pos = 0;
	u32 val;
	int id, i, rc;

	rc = parse_layout(pdev, cap, &l, out->why, sizeof(out->why));
	if (rc)
		return rc;
	for (idx = 0; idx < l.nr_sel; idx++) {
		pos = sel_offset(&l, idx);
		pci_read_config_dword(pdev, pos + PCI_IDE_SEL_CTL, &val);
		if (!(val & PCI_IDE_SEL_CTL_EN))
			break;
	}
	if (idx == l.nr_sel) {
		snprintf(out->why, sizeof(out->why), "all %u selective streams are enabled already",
			 l.nr_sel);
		return -EBUSY;
	}
	id = ida_alloc_max(&tdtsm_stream_ids, PCI_IDE_RESERVED_STREAM_ID - 1, GFP_KERNEL);
	if (id < 0) {
		snprintf(out->why, sizeof(out->why), "no free Stream ID");
		return id;
	}
	/* The partner port: the root port, or the root complex (RID 0) for an RCiEP. */
	rid = (pci_pcie_type(pdev) == PCI_EXP_TYPE_ENDPOINT && rp) ? pci_dev_id(rp) : 0;
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_RID_1,
			       FIELD_PREP(PCI_IDE_SEL_RID_1_LIMIT, rid));
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_RID_2,
			       FIELD_PREP(PCI_IDE_SEL_RID_2_VALID, 1) |
			       FIELD_PREP(PCI_IDE_SEL_RID_2_BASE, rid));
	for (i = 0; i < l.nr_mem; i++) {
		pci_write_config_dword(pdev, pos + PCI_IDE_SEL_ADDR_1(i), 0);
		pci_write_config_dword(pdev, pos + PCI_IDE_SEL_ADDR_2(i), 0);
		pci_write_config_dword(pdev, pos + PCI_IDE_SEL_ADDR_3(i), 0);
	}
	/* Stream ID before key programming, EN later (as pci_ide_stream_setup() does) */
	pci_write_config_dword(pdev, pos + PCI_IDE_SEL_CTL,
			       FIELD_PREP(PCI_IDE_SEL_CTL_ID, id) |
			       FIELD_PREP(PCI_IDE_SEL_CTL_DEFAULT, 1) |
			       FIELD_PREP(PCI_IDE_SEL_CTL_CFG_EN, l.sel_cfg) |
			       FIELD_PREP(PCI_IDE_SEL_CTL_TEE_LIMITED, l.tee_limited));
	s->mode = TDTSM_IDE_PLATFORM;
	s->idle_ctl = val & ~PCI_IDE_SEL_CTL_EN;
	s->cap = cap;
	s->sel_pos = pos;
	s->stream_index = idx;
	s->stream_id = id;
	out->mode = TDTSM_IDE_MODE_PLATFORM;
	snprintf(out->why, sizeof(out->why),
		 "platform-emulated: %s, so trustdev_tsm programs the device's stream registers itself as a TSM's platform code would",
		 refusal);
	pci_info(pdev,
		 "IDE: %s; selective stream %u at config %#x, Stream ID %u, partner RID %04x\n",
		 out->why, idx, pos, id, rid);
	return 0;
}

/**
 * tdtsm_ide_setup() - allocate and program the device's stream (EN = 0)
 * @dsm: the connection
 * @out: result for the agent (mode, Stream ID, stream index, why)
 */
int tdtsm_ide_setup(struct tdtsm_dsm *dsm, struct tdtsm_ide *out)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	char refusal[TDTSM_MSG_MAX];
	struct pci_ide *ide;
	const char *why;
	u16 cap;
	int rc;

	out->mode = TDTSM_IDE_MODE_NONE;
	out->rp_state = 0xff;
	out->why[0] = 0;
	cap = tdtsm_ide_find_cap(pdev);
	out->ide_cap = cap;
	if (dsm->stream.mode != TDTSM_IDE_OFF) {
		snprintf(out->why, sizeof(out->why), "a stream is set up already (Stream ID %u)",
			 dsm->stream.stream_id);
		return -EBUSY;
	}
	if (!cap) {
		snprintf(out->why, sizeof(out->why), "%s has no IDE extended capability",
			 pci_name(pdev));
		return -EOPNOTSUPP;
	}
	/* Ask the kernel first; fall back only where it refuses the topology. */
	ide = pci_ide_stream_alloc(pdev);
	if (ide) {
		rc = setup_kernel(dsm, pdev, ide, out);
	} else {
		why = kernel_refusal(pdev, refusal, sizeof(refusal));
		if (why) {
			pci_info(pdev, "IDE: pci_ide_stream_alloc() returned NULL: %s\n", why);
			rc = setup_platform(dsm, pdev, cap, why, out);
		} else {
			snprintf(out->why, sizeof(out->why),
				 "pci_ide_stream_alloc() found no free stream (host bridge pool, root port or device)");
			rc = -EBUSY;
		}
	}
	if (rc) {
		pci_err(pdev, "IDE setup failed (%d): %s\n", rc, out->why);
		return rc;
	}
	out->stream_id = dsm->stream.stream_id;
	out->stream_index = dsm->stream.stream_index;
	out->ep_state = sel_state(pdev, dsm->stream.sel_pos);
	return 0;
}

/*
 * stream_result() - the stream's identity in @out for enable and disable;
 * -EINVAL with the reason when no stream is set up
 */
static int stream_result(const struct tdtsm_stream *s, struct tdtsm_ide *out)
{
	out->mode = s->mode;
	out->stream_id = s->stream_id;
	out->stream_index = s->stream_index;
	out->ide_cap = s->cap;
	out->rp_state = 0xff;
	if (s->mode != TDTSM_IDE_OFF)
		return 0;
	snprintf(out->why, sizeof(out->why), "no stream is set up");
	return -EINVAL;
}

/**
 * tdtsm_ide_enable() - set the stream's enable bit(s); the device end (and
 * the root port end in kernel mode) must then read SECURE
 * @dsm: the connection
 * @out: result for the agent (states)
 */
int tdtsm_ide_enable(struct tdtsm_dsm *dsm, struct tdtsm_ide *out)
{
	struct tdtsm_stream *s = &dsm->stream;
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	int rc = 0;
	u32 val;

	rc = stream_result(s, out);
	if (rc)
		return rc;
	if (s->mode == TDTSM_IDE_KERNEL) {
		struct pci_dev *rp = pcie_find_root_port(pdev);

		rc = pci_ide_stream_enable(pdev, s->ide);
		out->ep_state = sel_state(pdev, s->sel_pos);
		if (!rc) {
			rc = pci_ide_stream_enable(rp, s->ide);
			out->rp_state = sel_state(rp, kernel_sel_offset(rp, s->ide));
		}
		snprintf(out->why, sizeof(out->why),
			 "pci_ide_stream_enable(): device %s, root port %s: %d",
			 out->ep_state == PCI_IDE_SEL_STS_STATE_SECURE ? "SECURE" : "not SECURE",
			 out->rp_state == PCI_IDE_SEL_STS_STATE_SECURE ? "SECURE" : "not SECURE",
			 rc);
	} else { /* TDTSM_IDE_PLATFORM */
		pci_read_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_CTL, &val);
		pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_CTL,
				       val | PCI_IDE_SEL_CTL_EN);
		out->ep_state = sel_state(pdev, s->sel_pos);
		if (out->ep_state != PCI_IDE_SEL_STS_STATE_SECURE)
			rc = -ENXIO;
		snprintf(out->why, sizeof(out->why),
			 "platform-emulated enable of stream %u: device SEL_STS.STATE %u (%s)",
			 s->stream_index, out->ep_state,
			 rc ? "not SECURE" : "SECURE");
	}
	/* A failed enable leaves EN set until teardown (as pci_ide_stream_enable() documents). */
	s->enabled = !rc;
	if (rc)
		pci_err(pdev, "IDE enable failed (%d): %s\n", rc, out->why);
	else
		pci_info(pdev, "IDE: %s\n", out->why);
	return rc;
}

/**
 * tdtsm_ide_disable() - clear the stream's enable bit(s), keep its settings
 * (the Stream ID stays, so the agent can still K_SET_STOP its keys)
 * @dsm: the connection
 * @out: result for the agent (states after)
 */
int tdtsm_ide_disable(struct tdtsm_dsm *dsm, struct tdtsm_ide *out)
{
	struct tdtsm_stream *s = &dsm->stream;
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	u32 val;
	int rc;

	rc = stream_result(s, out);
	if (rc)
		return rc;
	if (s->mode == TDTSM_IDE_KERNEL) {
		struct pci_dev *rp = pcie_find_root_port(pdev);

		/* As pci_ide_stream_release() orders it: root port, then endpoint. */
		pci_ide_stream_disable(rp, s->ide);
		pci_ide_stream_disable(pdev, s->ide);
		out->rp_state = sel_state(rp, kernel_sel_offset(rp, s->ide));
	} else { /* TDTSM_IDE_PLATFORM */
		pci_read_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_CTL, &val);
		pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_CTL,
				       val & ~PCI_IDE_SEL_CTL_EN);
	}
	s->enabled = false;
	out->ep_state = sel_state(pdev, s->sel_pos);
	snprintf(out->why, sizeof(out->why), "stream %u (Stream ID %u) disabled: device state %u",
		 s->stream_index, s->stream_id, out->ep_state);
	pci_info(pdev, "IDE: %s\n", out->why);
	return 0;
}

/**
 * tdtsm_ide_teardown() - disable and clear the stream, free its IDs
 * @dsm: the connection; a no-op without a stream
 */
void tdtsm_ide_teardown(struct tdtsm_dsm *dsm)
{
	struct tdtsm_stream *s = &dsm->stream;
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	struct ide_layout l;
	char why[64];
	int i;

	switch (s->mode) {
	case TDTSM_IDE_OFF:
		return;
	case TDTSM_IDE_KERNEL:
		/* disable (rp, ep), teardown (rp, ep), unregister, free */
		pci_ide_stream_release(s->ide);
		break;
	case TDTSM_IDE_PLATFORM:
		/*
		 * As pci_ide_stream_teardown(): zero address and RID registers;
		 * the control register goes back to its idle value (Stream ID
		 * 255 where pci_ide_init() reserved it), not to a live ID 0.
		 */
		pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_CTL, s->idle_ctl);
		if (!parse_layout(pdev, s->cap, &l, why, sizeof(why))) {
			for (i = 0; i < l.nr_mem; i++) {
				pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_ADDR_1(i), 0);
				pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_ADDR_2(i), 0);
				pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_ADDR_3(i), 0);
			}
		}
		pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_RID_2, 0);
		pci_write_config_dword(pdev, s->sel_pos + PCI_IDE_SEL_RID_1, 0);
		ida_free(&tdtsm_stream_ids, s->stream_id);
		break;
	}
	pci_info(pdev, "IDE: stream %u (Stream ID %u) torn down; device state %u\n",
		 s->stream_index, s->stream_id, sel_state(pdev, s->sel_pos));
	memset(s, 0, sizeof(*s));
}

void tdtsm_ide_exit(void)
{
	ida_destroy(&tdtsm_stream_ids);
}
