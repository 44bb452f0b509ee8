/* Pausing and resuming bound instances (issue 17): a paused instance's processes are frozen
 * (the process driver: the cgroup freezer), so it costs no CPU, and keep their memory and
 * files; the session stays bound.
 *
 * Pause (idle: a template's idle.pause_after, checked every heartbeat with the `idle` script;
 * or the API): the agent is asked to PAUSE (it refuses while a connection carries bytes,
 * else it stops accepting and closes its idle connections, the gateway's pooled keep-alive
 * connections), then the driver freezes the instance, then the `paused` script records it.
 * While paused the scheduler watches the instance's two listening sockets (the driver's
 * wake_fds): a connection the gateway makes waits in a listener's backlog and makes it
 * readable, which thaws the instance and tells the agent to RESUME; the agent then accepts it,
 * so the request goes through on its connection, only later. Nothing needs to tell the
 * gateways: a cached binding stays right. The `resumed` script adds the time paused to the
 * session's paused_ms.
 *
 * A resume that fails (the thaw, or the agent's RESUME) ends the instance as lost: the
 * connections waiting for it are reset and the session follows its on_lost policy. Stopping a
 * paused instance thaws it first (the driver). After a restart every adopted instance is
 * thawed and told to RESUME (a scheduler that died between PAUSE and the freeze leaves an
 * agent that does not accept). All on the scheduler loop. */
#ifndef SCH_PAUSE_H
#define SCH_PAUSE_H

struct sch_ctx;
struct sch_inst;

enum sch_pause_state {
    SCH_PAUSE_RUNNING = 0,
    SCH_PAUSE_PAUSING,  /* the agent's PAUSE is on its way */
    SCH_PAUSE_PAUSED,   /* frozen, the listeners watched */
    SCH_PAUSE_RESUMING, /* thawed, the agent's RESUME is on its way */
};

/* Someone waiting for a pause or resume to complete (the API). <status> is the HTTP status to
 * answer (200 done; 409 busy, not bound; 501 the driver cannot pause; 502 the instance broke),
 * <code> and <msg> the error's (NULL for 200). Runs once, unless cancelled first. */
struct sch_pause_wait {
    struct sch_pause_wait *next;
    void (*cb)(struct sch_pause_wait *w, int status, const char *code, const char *msg);
    int resume; /* set by sch_resume(): it waits for the instance to run (a pause that fails
                 * leaves it running: 200) */
};

/* Pauses <inst> (reason: "idle" or "api"); <w> (may be NULL) learns the outcome. Paused
 * already: <w> is answered 200 at once. */
void sch_pause(struct sch_inst *inst, const char *reason, struct sch_pause_wait *w);
/* Resumes <inst> (reason: "request", "api"); <w> (may be NULL) as above. Running already:
 * <w> is answered 200 at once; while a pause is on its way, the resume follows it. */
void sch_resume(struct sch_inst *inst, const char *reason, struct sch_pause_wait *w);
/* Forgets waiter <w> of <inst> (its client went away). */
void sch_pause_cancel(struct sch_inst *inst, struct sch_pause_wait *w);
/* The instance ended or is being stopped: stops watching, answers waiters 502. */
void sch_pause_forget(struct sch_inst *inst);
/* A restarted scheduler adopted <inst>: thaw it and tell the agent to RESUME. */
void sch_pause_adopted(struct sch_inst *inst);
/* Every heartbeat: pauses the bound instances idle for their template's pause_after. */
void sch_pause_check(struct sch_ctx *ctx);
const char *sch_pause_state_name(enum sch_pause_state s);

#endif
