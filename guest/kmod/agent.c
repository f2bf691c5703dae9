// SPDX-License-Identifier: GPL-2.0
/*
 * trustdev_tsm: /dev/trustdev-tsm, the request queue between the TSM's
 * connect/disconnect operations and the user-space agent.
 *
 * The PCI/TSM core runs ->connect and ->disconnect with pci_tsm_rwsem held
 * for write, so at most one request exists at a time (tdtsm.cur). Its life:
 *
 *   QUEUED   tdtsm_agent_call() published it and waits (bounded);
 *   CLAIMED  the agent took it with TDTSM_IOC_GET_REQUEST; its DOE and IDE
 *            ioctls name it by id;
 *   DONE     the agent's verdict arrived, or the waiter gave up (timeout,
 *            fatal signal), or the agent closed the device: tdtsm.cur is
 *            cleared under tdtsm.lock and later ioctls naming the id get
 *            -ESRCH.
 *
 * tdtsm.lock is held across each pci_tsm_doe_transfer() of the agent, so a
 * waiter that gives up cannot return (and let the core free the context)
 * while a transfer is using it; pci_doe() itself is bounded by the DOE
 * timeouts of drivers/pci/doe.c.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#define dev_fmt(fmt) "trustdev_tsm: " fmt

#include <linux/completion.h>
#include <linux/ctype.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-doe.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "trustdev_tsm.h"

static_assert(sizeof(struct tdtsm_request) == 64);
static_assert(sizeof(struct tdtsm_doe) == 40);
static_assert(sizeof(struct tdtsm_ide) == 544);
static_assert(sizeof(struct tdtsm_verdict) == 528);

unsigned int tdtsm_timeout_ms = 30000;
module_param_named(timeout_ms, tdtsm_timeout_ms, uint, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "How long connect/disconnect wait for the agent's verdict (ms, default 30000)");

enum tdtsm_req_state {
	TDTSM_REQ_QUEUED,
	TDTSM_REQ_CLAIMED,
	TDTSM_REQ_DONE,
};

struct tdtsm_req {
	u64 id;
	u32 op;
	struct tdtsm_dsm *dsm;
	struct pci_dev *pdev;
	enum tdtsm_req_state state;
	struct completion done;
	struct tdtsm_result *res;
};

static struct {
	struct mutex lock;	/* protects everything below */
	wait_queue_head_t wq;	/* the agent waits here for a request */
	struct tdtsm_req *cur;	/* the one outstanding request */
	bool queued;		/* cur is QUEUED (read unlocked by the agent's wait) */
	struct file *agent;	/* the attached agent's open file, NULL if none */
	u64 next_id;
	u32 agent_pid;
} tdtsm = {
	.lock = __MUTEX_INITIALIZER(tdtsm.lock),
	.wq = __WAIT_QUEUE_HEAD_INITIALIZER(tdtsm.wq),
};

static const char *op_name(u32 op)
{
	return op == TDTSM_OP_CONNECT ? "connect" : "disconnect";
}

/* Ends @req with @status and a message; caller holds tdtsm.lock. */
static void finish_locked(struct tdtsm_req *req, int status, const char *fmt, ...)
{
	va_list ap;

	req->res->status = status;
	va_start(ap, fmt);
	vsnprintf(req->res->message, sizeof(req->res->message), fmt, ap);
	va_end(ap);
	req->state = TDTSM_REQ_DONE;
	if (tdtsm.cur == req) {
		tdtsm.cur = NULL;
		WRITE_ONCE(tdtsm.queued, false);
	}
	complete(&req->done);
}

/**
 * tdtsm_agent_call() - hand @op for @dsm to the agent and wait for its verdict
 * @dsm: the DSM context (pdev->tsm) of the device
 * @op: TDTSM_OP_CONNECT or TDTSM_OP_DISCONNECT
 * @killable: a fatal signal to the writer ends the wait (connect is
 *	sysfs-driven; disconnect may run for device teardown and is not)
 * @res: the verdict (status, session, message)
 *
 * Return: 0 or the negative errno of the verdict; -ENOTCONN without an
 * agent, -ETIMEDOUT after timeout_ms, -EINTR when killed, -EPIPE when the
 * agent closed the device while the request was pending.
 */
int tdtsm_agent_call(struct tdtsm_dsm *dsm, u32 op, bool killable,
		     struct tdtsm_result *res)
{
	struct pci_dev *pdev = dsm->pf0.base_tsm.pdev;
	unsigned int timeout = READ_ONCE(tdtsm_timeout_ms);
	struct tdtsm_req req = {
		.op = op,
		.dsm = dsm,
		.pdev = pdev,
		.state = TDTSM_REQ_QUEUED,
		.res = res,
	};
	enum tdtsm_req_state seen;
	long left;

	init_completion(&req.done);
	mutex_lock(&tdtsm.lock);
	if (!tdtsm.agent) {
		mutex_unlock(&tdtsm.lock);
		snprintf(res->message, sizeof(res->message),
			 "no agent has /dev/%s open (start `trustdev-guest tsm-agent`)",
			 TDTSM_DEVICE_NAME);
		return res->status = -ENOTCONN;
	}
	if (tdtsm.cur) {
		/* Cannot happen while pci_tsm_rwsem serialises the ops. */
		mutex_unlock(&tdtsm.lock);
		snprintf(res->message, sizeof(res->message),
			 "another request is outstanding");
		return res->status = -EBUSY;
	}
	req.id = ++tdtsm.next_id;
	tdtsm.cur = &req;
	WRITE_ONCE(tdtsm.queued, true);
	mutex_unlock(&tdtsm.lock);
	pci_dbg(pdev, "%s: request %llu queued for agent pid %u\n", op_name(op),
		req.id, tdtsm.agent_pid);
	wake_up_interruptible(&tdtsm.wq);

	if (killable)
		left = wait_for_completion_killable_timeout(&req.done,
							     msecs_to_jiffies(timeout));
	else
		left = wait_for_completion_timeout(&req.done,
						   msecs_to_jiffies(timeout));

	/* Waits for an agent transfer in flight, if any (see top of file). */
	mutex_lock(&tdtsm.lock);
	seen = req.state;
	if (seen != TDTSM_REQ_DONE) {
		if (left < 0)
			finish_locked(&req, -EINTR,
				      "%s of %s interrupted by a fatal signal while the agent %s the request",
				      op_name(op), pci_name(pdev),
				      seen == TDTSM_REQ_QUEUED ? "had not claimed" : "was handling");
		else
			finish_locked(&req, -ETIMEDOUT,
				      "the agent gave no verdict within %u ms (request %llu %s)",
				      timeout, req.id,
				      seen == TDTSM_REQ_QUEUED ? "never claimed" :
								 "claimed, then no answer");
	}
	mutex_unlock(&tdtsm.lock);
	/* Nobody references @req any more: tdtsm.cur no longer points to it. */
	return res->status;
}

static int tdtsm_open(struct inode *inode, struct file *file)
{
	int rc = 0;

	mutex_lock(&tdtsm.lock);
	if (tdtsm.agent) {
		rc = -EBUSY;
	} else {
		tdtsm.agent = file;
		tdtsm.agent_pid = task_tgid_nr(current);
	}
	mutex_unlock(&tdtsm.lock);
	if (rc) {
		pr_warn("/dev/%s is already open by agent pid %u\n",
			TDTSM_DEVICE_NAME, tdtsm.agent_pid);
		return rc;
	}
	pr_info("agent pid %u attached\n", task_tgid_nr(current));
	return stream_open(inode, file);
}

static int tdtsm_release(struct inode *inode, struct file *file)
{
	mutex_lock(&tdtsm.lock);
	if (tdtsm.agent == file) {
		tdtsm.agent = NULL;
		if (tdtsm.cur)
			finish_locked(tdtsm.cur, -EPIPE,
				      "the agent (pid %u) closed /dev/%s before its verdict on request %llu",
				      tdtsm.agent_pid, TDTSM_DEVICE_NAME, tdtsm.cur->id);
		pr_info("agent pid %u detached\n", tdtsm.agent_pid);
	}
	mutex_unlock(&tdtsm.lock);
	return 0;
}

/* The claimed request named @id, or NULL; caller holds tdtsm.lock. */
static struct tdtsm_req *claimed_locked(u64 id)
{
	struct tdtsm_req *req = tdtsm.cur;

	if (!req || req->id != id || req->state != TDTSM_REQ_CLAIMED)
		return NULL;
	return req;
}

static long ioc_get_request(void __user *arg)
{
	struct tdtsm_request r;
	struct tdtsm_req *req;
	struct pci_dev *pdev;
	int rc;

	for (;;) {
		/* A hint only (no sleeping lock in a wait condition); checked below. */
		rc = wait_event_interruptible(tdtsm.wq, READ_ONCE(tdtsm.queued));
		if (rc)
			return rc;
		mutex_lock(&tdtsm.lock);
		req = tdtsm.cur;
		if (req && req->state == TDTSM_REQ_QUEUED)
			break;
		mutex_unlock(&tdtsm.lock);
	}
	req->state = TDTSM_REQ_CLAIMED;
	WRITE_ONCE(tdtsm.queued, false);
	pdev = req->pdev;
	memset(&r, 0, sizeof(r));
	r.id = req->id;
	r.op = req->op;
	r.segment = pci_domain_nr(pdev->bus);
	r.bus = pdev->bus->number;
	r.devfn = pdev->devfn;
	r.vendor = pdev->vendor;
	r.device = pdev->device;
	r.ide_cap = tdtsm_ide_find_cap(pdev);
	if (r.ide_cap)
		r.flags |= TDTSM_REQ_IDE_CAP;
	if (pci_find_doe_mailbox(pdev, PCI_VENDOR_ID_PCI_SIG, PCI_DOE_FEATURE_SSESSION) ==
	    req->dsm->pf0.doe_mb)
		r.flags |= TDTSM_REQ_SECURED_CMA;
	if (pdev->devcap & PCI_EXP_DEVCAP_TEE)
		r.flags |= TDTSM_REQ_DEVCAP_TEE;
	if (req->op == TDTSM_OP_DISCONNECT && req->dsm->stream.mode != TDTSM_IDE_OFF)
		r.flags |= TDTSM_REQ_IDE_ACTIVE;
	r.timeout_ms = READ_ONCE(tdtsm_timeout_ms);
	strscpy(r.tsm_name, dev_name(&pdev->tsm->tsm_dev->dev), sizeof(r.tsm_name));
	mutex_unlock(&tdtsm.lock);
	pci_dbg(pdev, "%s: request %llu claimed by agent pid %u\n", op_name(r.op),
		r.id, tdtsm.agent_pid);
	/*
	 * If this copy fails the request stays claimed and times out: the
	 * agent passed a bad pointer and cannot have seen its id.
	 */
	if (copy_to_user(arg, &r, sizeof(r)))
		return -EFAULT;
	return 0;
}

static long ioc_doe(void __user *arg)
{
	struct tdtsm_doe x;
	struct tdtsm_req *req;
	void *rq = NULL, *rs = NULL;
	long rc;

	if (copy_from_user(&x, arg, sizeof(x)))
		return -EFAULT;
	if (x.type != PCI_DOE_FEATURE_CMA && x.type != PCI_DOE_FEATURE_SSESSION)
		return -EINVAL;
	if (!x.req_len || x.req_len > TDTSM_DOE_MAX || x.rsp_cap < 4 ||
	    x.rsp_cap > TDTSM_DOE_MAX)
		return -EINVAL;
	rq = vmemdup_user(u64_to_user_ptr(x.req_ptr), x.req_len);
	if (IS_ERR(rq))
		return PTR_ERR(rq);
	rs = kvzalloc(x.rsp_cap, GFP_KERNEL);
	if (!rs) {
		rc = -ENOMEM;
		goto out;
	}

	mutex_lock(&tdtsm.lock);
	req = claimed_locked(x.id);
	if (!req) {
		mutex_unlock(&tdtsm.lock);
		rc = -ESRCH;
		goto out;
	}
	/* drivers/pci/tsm.c -> drivers/pci/doe.c pci_doe() on the CMA mailbox */
	rc = pci_tsm_doe_transfer(req->pdev, x.type, rq, x.req_len, rs, x.rsp_cap);
	if (rc < 0)
		pci_err(req->pdev,
			"agent DOE exchange failed: pci_tsm_doe_transfer(type %u, %u bytes) = %ld\n",
			x.type, x.req_len, rc);
	else
		pci_dbg(req->pdev, "agent DOE exchange: type %u, %u bytes out, %ld bytes in\n",
			x.type, x.req_len, rc);
	mutex_unlock(&tdtsm.lock);
	if (rc < 0)
		goto out;

	x.rsp_len = min_t(u32, rc, x.rsp_cap);
	rc = 0;
	if (copy_to_user(u64_to_user_ptr(x.rsp_ptr), rs, x.rsp_len) ||
	    copy_to_user(arg, &x, sizeof(x)))
		rc = -EFAULT;
out:
	kvfree(rq);
	kvfree(rs);
	return rc;
}

static long ioc_ide(void __user *arg)
{
	struct tdtsm_ide *x;
	struct tdtsm_req *req;
	long rc;

	x = memdup_user(arg, sizeof(*x));
	if (IS_ERR(x))
		return PTR_ERR(x);
	mutex_lock(&tdtsm.lock);
	req = claimed_locked(x->id);
	if (!req) {
		rc = -ESRCH;
	} else if (req->op != TDTSM_OP_CONNECT && x->op != TDTSM_IDE_TEARDOWN &&
		   x->op != TDTSM_IDE_DISABLE) {
		rc = -EPERM;	/* only connect sets streams up */
	} else {
		switch (x->op) {
		case TDTSM_IDE_SETUP:
			rc = tdtsm_ide_setup(req->dsm, x);
			break;
		case TDTSM_IDE_ENABLE:
			rc = tdtsm_ide_enable(req->dsm, x);
			break;
		case TDTSM_IDE_DISABLE:
			rc = tdtsm_ide_disable(req->dsm, x);
			break;
		case TDTSM_IDE_TEARDOWN:
			tdtsm_ide_teardown(req->dsm);
			rc = 0;
			break;
		default:
			rc = -EINVAL;
		}
	}
	mutex_unlock(&tdtsm.lock);
	/* The result (mode, ids, states, why) is copied back on failure too. */
	if (rc != -EFAULT && copy_to_user(arg, x, sizeof(*x)))
		rc = -EFAULT;
	kfree(x);
	return rc;
}

static long ioc_complete(void __user *arg)
{
	struct tdtsm_verdict *v;
	struct tdtsm_req *req;
	long rc = 0;
	char *c;

	v = memdup_user(arg, sizeof(*v));
	if (IS_ERR(v))
		return PTR_ERR(v);
	if (v->status > 0 || v->status < -MAX_ERRNO) {
		rc = -EINVAL;
		goto out;
	}
	v->message[sizeof(v->message) - 1] = 0;
	for (c = v->message; *c; c++)
		if (!isprint(*c))
			*c = '?';

	mutex_lock(&tdtsm.lock);
	req = claimed_locked(v->id);
	if (!req) {
		rc = -ESRCH;
	} else {
		req->res->session_id = v->session_id;
		pci_dbg(req->pdev, "%s: request %llu verdict %d\n", op_name(req->op),
			req->id, v->status);
		finish_locked(req, v->status, "%s", v->message);
	}
	mutex_unlock(&tdtsm.lock);
out:
	kfree(v);
	return rc;
}

static long tdtsm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	if (READ_ONCE(tdtsm.agent) != file)
		return -EBADF;
	switch (cmd) {
	case TDTSM_IOC_GET_REQUEST:
		return ioc_get_request(uarg);
	case TDTSM_IOC_DOE:
		return ioc_doe(uarg);
	case TDTSM_IOC_IDE:
		return ioc_ide(uarg);
	case TDTSM_IOC_COMPLETE:
		return ioc_complete(uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations tdtsm_fops = {
	.owner = THIS_MODULE,
	.open = tdtsm_open,
	.release = tdtsm_release,
	.unlocked_ioctl = tdtsm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

struct miscdevice tdtsm_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = TDTSM_DEVICE_NAME,
	.fops = &tdtsm_fops,
	.mode = 0600,
};
