/* Instances as the scheduler tracks them: start (driver start, register in Redis, wait for
 * readiness), warm (pushed into the pool), bind (durable directory + agent BIND), stop
 * (SIGTERM, SIGKILL after destroy_grace) and the end (exit seen on the driver's exit fd: lost
 * script when unexpected, DEL + destroyed event when asked for). All on the scheduler loop.
 *
 * Ownership: the context's list holds one reference; async operations (Redis commands, agent
 * requests) hold one each. An instance leaves the list when it has ended and is freed with its
 * last reference. */
#ifndef SCH_INSTANCE_H
#define SCH_INSTANCE_H

#include <stdint.h>
#include <sys/types.h>

#include "common/key.h"
#include "common/time.h"
#include "scheduler/config.h"
#include "scheduler/pause.h"

struct cm_template;
struct event;
struct sch_ctx;
struct sch_dinst;
struct sch_driver;
struct sch_start_req;

enum sch_inst_state {
    SCH_INST_ADOPTING, /* found after a restart, being checked */
    SCH_INST_STARTING, /* started, not ready yet */
    SCH_INST_WARM,     /* ready, in (or on its way into) the pool */
    SCH_INST_BOUND,    /* serving a session */
    SCH_INST_STOPPING, /* asked to stop; waiting for the exit */
    SCH_INST_GONE,     /* ended, out of the list */
};

struct sch_inst {
    struct sch_ctx *ctx;
    struct sch_inst *prev, *next;
    int refs;
    char id[SCH_INST_ID_MAX + 1];
    const struct cm_template *tpl; /* NULL while adopting an instance of an unknown template */
    enum sch_inst_state state;
    struct sch_driver *drv; /* its driver (recorded as `driver` in P i:<id>); NULL while adopting
                               until recovery found the owner of its traces */
    struct sch_dinst *di;   /* inst->drv's handle */
    struct event *ready_ev, *exit_ev, *timer_ev, *retry_ev;
    cm_usec_t started;   /* monotonic */
    int for_pool;        /* started to fill the pool (else for POST /v1/start) */
    pid_t started_pid;   /* the pid written with the record at start (0: none yet) */
    int pushing;         /* ready, RPUSH into the pool not confirmed yet: still "starting" */
    int lost_on_exit;    /* when it ends, run the lost script (not a plain destroy) */
    int destroy_pending; /* a destroy command arrived while adopting */
    int start_failed;    /* ended because it never became ready */
    char stop_reason[64];
    char session[CM_HASH_HEX_LEN + 1];      /* bound session h, or "" */
    char pending_bind[CM_HASH_HEX_LEN + 1]; /* bind command that arrived while adopting */
    int agent_bound;
    int bind_tries;
    char ready_line[128];
    size_t ready_len;
    struct sch_start_req *req; /* the API request waiting for this start, or NULL */
    /* pause.c */
    enum sch_pause_state pause;
    int resume_after;  /* a resume was asked for while the pause was on its way */
    int idle_checking; /* in an `idle` script call */
    char pause_reason[16], resume_reason[16];
    char api_key_id[13]; /* the API key of the last pause or resume by hand, for its event */
    struct event *wake_ev[2];
    struct sch_pause_wait *pause_waiters;
    /* usage.c: the last sample (monotonic ms, 0: none yet) and the CPU time then */
    uint64_t usage_at, usage_cpu_ms;
    /* bytes to and from egress destinations not in a usage sample yet (inst_egress.c) */
    uint64_t egress_out, egress_in;
};

/* Called when a start for the API ends: <inst> ready (err NULL), or failed with <code> and
 * <err> ("start_timeout", "start_failed"). <inst> is borrowed for the call. */
typedef void (*sch_inst_ready_cb)(struct sch_inst *inst, const char *code, const char *err,
                                  struct sch_start_req *req);

/* Starts an instance of <tpl>. for_pool: it goes into the pool when ready; else <req> is
 * handed to <cb> when ready or failed. Returns the instance (borrowed: the list owns it) or
 * NULL with a reason in <err> (capacity, driver failure). */
struct sch_inst *sch_inst_start(struct sch_ctx *ctx, const struct cm_template *tpl, int for_pool,
                                struct sch_start_req *req, char *err, size_t errlen);
/* Takes over an instance recover.c found: creates the list entry in state ADOPTING. */
struct sch_inst *sch_inst_adopting(struct sch_ctx *ctx, const char *id);
/* Completes adoption with the handle <di> of inst->drv (takes ownership) and the state Redis knows
 * ("warm", "bound" with <session>). */
void sch_inst_adopted(struct sch_inst *inst, const struct cm_template *tpl, struct sch_dinst *di,
                      int bound, const char *session);
/* Forgets an entry that adoption found dead or foreign (no driver handle). */
void sch_inst_forget(struct sch_inst *inst);
/* Sets the API callback used for instances started for requests (api.c). */
void sch_inst_set_ready_cb(sch_inst_ready_cb cb);
/* Detaches <req> from its instance (the HTTP client went away). */
void sch_inst_drop_req(struct sch_inst *inst);

/* `bind <id> <h>`: mount the session's durable directory and tell the agent. */
void sch_inst_bind(struct sch_inst *inst, const char *h);
/* Stops the instance (SIGTERM, then SIGKILL after destroy_grace). lost: report the end with
 * the lost script (the session must not silently vanish), else as destroyed. */
void sch_inst_stop(struct sch_inst *inst, const char *reason, int lost);
/* Stop the instance and mark it releasing in Redis first (so a restart would not adopt it). */
void sch_inst_destroy(struct sch_inst *inst, const char *reason);

struct sch_inst *sch_inst_find(struct sch_ctx *ctx, const char *id);
/* The address gateways use for <inst> (it has a driver instance): the instance relay's
 * "relay:..." when scheduler.instance_relay is on, else the driver's own. <buf> holds it when
 * needed (SCH_ADDR_MAX bytes); the answer lives as long as <buf> and <inst>. */
const char *sch_inst_addr(const struct sch_inst *inst, char *buf, size_t len);
void sch_inst_ref(struct sch_inst *inst);
void sch_inst_unref(struct sch_inst *inst);
const char *sch_inst_state_name(enum sch_inst_state s);
/* Releases every instance without touching it (scheduler shutdown). */
void sch_inst_release_all(struct sch_ctx *ctx);

#endif
