#include "scheduler/pause.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/time.h"
#include "scheduler/agentctl.h"
#include "scheduler/driver.h"
#include "scheduler/instance.h"
#include "scheduler/sched.h"

#define AGENT_TIMEOUT (2 * CM_USEC_PER_SEC)
/* An idle pause is refused by the agent when a byte was relayed within this time: a request
 * that began after the gateway's last touch reached Redis. */
#define IDLE_QUIET_MS 1000
/* Sessions per `idle` script call: as many as fit one call's ARGV (2 + 3 each). */
#define IDLE_BATCH ((CM_REDIS_MAX_ARGS - 2) / 3)
_Static_assert(2 + 3 * IDLE_BATCH <= CM_REDIS_MAX_ARGS, "one IDLE call's ARGV");

static const char *const state_names[] = {
    [SCH_PAUSE_RUNNING] = "running",
    [SCH_PAUSE_PAUSING] = "pausing",
    [SCH_PAUSE_PAUSED] = "paused",
    [SCH_PAUSE_RESUMING] = "resuming",
};

const char *sch_pause_state_name(enum sch_pause_state s)
{
    return state_names[s];
}

static cm_usec_t agent_timeout(const struct sch_inst *inst)
{
    return inst->drv->ops->agent_timeout ? inst->drv->ops->agent_timeout : AGENT_TIMEOUT;
}

/* Answers and forgets the waiters for a pause (<pausers> 1) or every waiter (0). */
static void settle_some(struct sch_inst *inst, int pausers, int status, const char *code,
                        const char *msg)
{
    struct sch_pause_wait *done = NULL, **p = &inst->pause_waiters;
    while (*p) {
        struct sch_pause_wait *w = *p;
        if (pausers && w->resume) {
            p = &w->next;
            continue;
        }
        *p = w->next;
        w->next = done;
        done = w;
    }
    while (done) {
        struct sch_pause_wait *next = done->next;
        done->next = NULL;
        done->cb(done, status, code, msg);
        done = next;
    }
}

static void settle(struct sch_inst *inst, int status, const char *code, const char *msg)
{
    settle_some(inst, 0, status, code, msg);
}

/* A pause did not happen: its waiters get the error, a resume's (it runs) 200. */
static void pause_failed(struct sch_inst *inst, int status, const char *code, const char *msg)
{
    settle_some(inst, 1, status, code, msg);
    if (inst->pause == SCH_PAUSE_RUNNING)
        settle(inst, 200, NULL, NULL);
}

static void add_waiter(struct sch_inst *inst, struct sch_pause_wait *w)
{
    if (!w)
        return;
    w->next = inst->pause_waiters;
    inst->pause_waiters = w;
}

void sch_pause_cancel(struct sch_inst *inst, struct sch_pause_wait *w)
{
    for (struct sch_pause_wait **p = &inst->pause_waiters; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            w->next = NULL;
            return;
        }
}

static void unwatch(struct sch_inst *inst)
{
    for (int i = 0; i < 2; i++)
        if (inst->wake_ev[i]) {
            event_free(inst->wake_ev[i]);
            inst->wake_ev[i] = NULL;
        }
}

void sch_pause_forget(struct sch_inst *inst)
{
    unwatch(inst);
    inst->pause = SCH_PAUSE_RUNNING;
    inst->resume_after = 0;
    settle(inst, 502, "instance_lost", "the instance ended");
}

/* Waiters are answered once Redis has the record, so that what a caller reads next (the
 * control API reads the session again) says paused or not: when the instance is still in
 * the state recorded (a resume that came on top answers them when it is recorded). */
static void recorded(struct sch_inst *inst, const char *err, enum sch_pause_state state)
{
    if (err)
        cm_log_warn("pause", "script failed inst=%s err=\"%s\"", inst->id, err);
    if (inst->pause == state)
        settle_some(inst, state == SCH_PAUSE_PAUSED, 200, NULL, NULL);
}

static void on_paused(struct redisReply *r, const char *err, void *data)
{
    (void)r;
    recorded(data, err, SCH_PAUSE_PAUSED);
    sch_inst_unref(data);
}

static void on_resumed(struct redisReply *r, const char *err, void *data)
{
    (void)r;
    recorded(data, err, SCH_PAUSE_RUNNING);
    sch_inst_unref(data);
}

/* The `paused` or `resumed` script for <inst>'s session. */
static void record(struct sch_inst *inst, enum cm_script s, const char *reason)
{
    char now[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    const char *argv[] = {inst->ctx->cfg->redis.prefix,
                          inst->session,
                          inst->id,
                          now,
                          reason,
                          strcmp(reason, "api") == 0 ? inst->api_key_id : ""};
    sch_inst_ref(inst);
    if (sch_script(inst->ctx, s, s == CM_SCRIPT_PAUSED ? on_paused : on_resumed, inst, 6, argv) <
        0) {
        cm_log_warn("pause", "redis not connected: %s not recorded inst=%s",
                    cm_store_script_name(s), inst->id);
        recorded(inst, NULL, s == CM_SCRIPT_PAUSED ? SCH_PAUSE_PAUSED : SCH_PAUSE_RUNNING);
        sch_inst_unref(inst);
    }
}

/* ------------------------------------------------------------------ resume */

/* A RESUME whose failure is only logged (after an unanswered PAUSE, after adoption). */
static void on_logged_resume(const char *reply, int err, void *data)
{
    struct sch_inst *inst = data;
    if (!reply || strcmp(reply, "OK") != 0)
        cm_log_warn("pause", "agent did not take RESUME inst=%s reply=\"%s\" err=\"%s\"", inst->id,
                    reply ? reply : "", err ? strerror(-err) : "");
    sch_inst_unref(inst);
}

static void on_resume_reply(const char *reply, int err, void *data)
{
    struct sch_inst *inst = data;
    if (inst->pause != SCH_PAUSE_RESUMING || !inst->di) {
        sch_inst_unref(inst);
        return;
    }
    if (!reply || strcmp(reply, "OK") != 0) {
        char why[200];
        snprintf(why, sizeof(why), "the agent did not resume: %s", reply ? reply : strerror(-err));
        cm_log_error("pause", "resume failed, ending inst=%s session=%s why=\"%s\"", inst->id,
                     inst->session, why);
        settle(inst, 502, "instance_lost", why);
        sch_inst_stop(inst, "resume failed", 1);
        sch_inst_unref(inst);
        return;
    }
    inst->pause = SCH_PAUSE_RUNNING;
    if (inst->resume_reason[0]) {
        cm_log_info("pause", "resumed inst=%s session=%s reason=%s", inst->id, inst->session,
                    inst->resume_reason);
        record(inst, CM_SCRIPT_RESUMED, inst->resume_reason);
    } else { /* after a freeze that failed: it was never recorded as paused */
        settle(inst, 200, NULL, NULL);
    }
    sch_inst_unref(inst);
}

/* Thaws a paused instance and tells its agent. */
static void do_resume(struct sch_inst *inst, const char *reason)
{
    char err[256];
    unwatch(inst);
    snprintf(inst->resume_reason, sizeof(inst->resume_reason), "%s", reason);
    int rc = inst->drv->ops->pause(inst->drv, inst->di, 0, err, sizeof(err));
    if (rc < 0) {
        cm_log_error("pause", "thaw failed, ending inst=%s session=%s err=\"%s\"", inst->id,
                     inst->session, err);
        inst->pause = SCH_PAUSE_RUNNING;
        settle(inst, 502, "instance_lost", err);
        sch_inst_stop(inst, "resume failed", 1);
        return;
    }
    inst->pause = SCH_PAUSE_RESUMING;
    sch_inst_ref(inst);
    if (sch_agentctl_request(inst->ctx->agentctl, inst->di->ctl, "RESUME", agent_timeout(inst),
                             on_resume_reply, inst) < 0)
        on_resume_reply(NULL, -ENOMEM, inst);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct sch_inst *inst = arg;
    (void)fd, (void)what;
    if (inst->pause == SCH_PAUSE_PAUSED)
        do_resume(inst, "request");
}

void sch_resume(struct sch_inst *inst, const char *reason, struct sch_pause_wait *w)
{
    if (w)
        w->resume = 1;
    switch (inst->pause) {
    case SCH_PAUSE_RUNNING:
        if (w)
            w->cb(w, 200, NULL, NULL);
        return;
    case SCH_PAUSE_PAUSING:
        inst->resume_after = 1;
        snprintf(inst->resume_reason, sizeof(inst->resume_reason), "%s", reason);
        add_waiter(inst, w);
        return;
    case SCH_PAUSE_RESUMING:
        add_waiter(inst, w);
        return;
    case SCH_PAUSE_PAUSED:
        add_waiter(inst, w);
        do_resume(inst, reason);
        return;
    }
}

/* ------------------------------------------------------------------ pause */

/* Frozen: watch both listeners; one already readable (a connection came in between) resumes
 * at once. */
static int watch(struct sch_inst *inst)
{
    struct pollfd pf[2];
    for (int i = 0; i < 2; i++) {
        pf[i] = (struct pollfd){.fd = inst->di->wake_fds[i], .events = POLLIN};
        inst->wake_ev[i] =
            event_new(inst->ctx->base, inst->di->wake_fds[i], EV_READ, on_wake, inst);
        if (!inst->wake_ev[i] || event_add(inst->wake_ev[i], NULL) < 0)
            return -ENOMEM;
    }
    if (poll(pf, 2, 0) > 0)
        return 1;
    return 0;
}

static void on_pause_reply(const char *reply, int err, void *data)
{
    struct sch_inst *inst = data;
    char msg[300];
    if (inst->pause != SCH_PAUSE_PAUSING || !inst->di || inst->state != SCH_INST_BOUND) {
        sch_inst_unref(inst);
        return;
    }
    if (!reply || strncmp(reply, "OK", 2) != 0) {
        int busy = reply && strncmp(reply, "BUSY ", 5) == 0;
        snprintf(msg, sizeof(msg), "%s", busy ? reply + 5 : reply ? reply : strerror(-err));
        inst->pause = SCH_PAUSE_RUNNING;
        inst->resume_after = 0;
        if (busy)
            cm_log_debug("pause", "not paused, busy inst=%s why=\"%s\"", inst->id, msg);
        else
            cm_log_warn("pause", "agent refused PAUSE inst=%s reply=\"%s\"", inst->id, msg);
        pause_failed(inst, busy ? 409 : 502, busy ? "busy" : "agent_error", msg);
        /* No answer: the agent may have stopped accepting before the reply was lost. Tell it
         * to accept again (an agent that answers nothing at all is not ended for that). */
        if (!reply) {
            sch_inst_ref(inst);
            if (sch_agentctl_request(inst->ctx->agentctl, inst->di->ctl, "RESUME",
                                     agent_timeout(inst), on_logged_resume, inst) < 0)
                sch_inst_unref(inst);
        }
        sch_inst_unref(inst);
        return;
    }
    int rc = inst->drv->ops->pause(inst->drv, inst->di, 1, msg, sizeof(msg));
    if (rc < 0) {
        cm_log_warn("pause", "freeze failed inst=%s err=\"%s\"", inst->id, msg);
        inst->pause = SCH_PAUSE_RESUMING;
        pause_failed(inst, rc == -EAGAIN ? 409 : 502, rc == -EAGAIN ? "busy" : "pause_failed", msg);
        inst->resume_reason[0] = '\0';
        sch_inst_ref(inst);
        if (sch_agentctl_request(inst->ctx->agentctl, inst->di->ctl, "RESUME", agent_timeout(inst),
                                 on_resume_reply, inst) < 0)
            on_resume_reply(NULL, -ENOMEM, inst);
        sch_inst_unref(inst);
        return;
    }
    inst->pause = SCH_PAUSE_PAUSED;
    cm_log_info("pause", "paused inst=%s session=%s reason=%s agent=\"%s\"", inst->id,
                inst->session, inst->pause_reason, reply);
    record(inst, CM_SCRIPT_PAUSED, inst->pause_reason);
    int waiting = watch(inst);
    if (waiting < 0) {
        cm_log_error("pause", "cannot watch the listeners, resuming inst=%s", inst->id);
        do_resume(inst, "request");
    } else if (waiting || inst->resume_after) {
        char why[sizeof(inst->resume_reason)];
        snprintf(why, sizeof(why), "%s", waiting ? "request" : inst->resume_reason);
        inst->resume_after = 0;
        do_resume(inst, why);
    }
    sch_inst_unref(inst);
}

void sch_pause(struct sch_inst *inst, const char *reason, struct sch_pause_wait *w)
{
    if (inst->state != SCH_INST_BOUND || !inst->agent_bound || !inst->di) {
        if (w)
            w->cb(w, 409, "not_bound", "the instance serves no session (or is not bound yet)");
        return;
    }
    if (!inst->drv->ops->pause) {
        if (w)
            w->cb(w, 501, "not_supported", "this instance's driver cannot pause");
        return;
    }
    if (w)
        w->resume = 0;
    switch (inst->pause) {
    case SCH_PAUSE_PAUSED:
        if (w)
            w->cb(w, 200, NULL, NULL);
        return;
    case SCH_PAUSE_PAUSING:
        add_waiter(inst, w);
        return;
    case SCH_PAUSE_RESUMING:
        if (w)
            w->cb(w, 409, "busy", "the instance is resuming");
        return;
    case SCH_PAUSE_RUNNING:
        break;
    }
    char line[32];
    int idle = strcmp(reason, "idle") == 0;
    snprintf(line, sizeof(line), "PAUSE %d", idle ? IDLE_QUIET_MS : 0);
    snprintf(inst->pause_reason, sizeof(inst->pause_reason), "%s", reason);
    inst->pause = SCH_PAUSE_PAUSING;
    inst->resume_after = 0;
    add_waiter(inst, w);
    sch_inst_ref(inst);
    if (sch_agentctl_request(inst->ctx->agentctl, inst->di->ctl, line, agent_timeout(inst),
                             on_pause_reply, inst) < 0)
        on_pause_reply(NULL, -ENOMEM, inst);
}

/* ------------------------------------------------------------------ adoption */

void sch_pause_adopted(struct sch_inst *inst)
{
    char err[256];
    if (!inst->drv->ops->pause || !inst->di)
        return;
    if (inst->drv->ops->pause(inst->drv, inst->di, 0, err, sizeof(err)) < 0)
        cm_log_warn("pause", "cannot thaw adopted inst=%s err=\"%s\"", inst->id, err);
    if (inst->session[0]) /* a session recorded paused gets its paused time counted */
        record(inst, CM_SCRIPT_RESUMED, "adopted");
    sch_inst_ref(inst);
    if (sch_agentctl_request(inst->ctx->agentctl, inst->di->ctl, "RESUME", agent_timeout(inst),
                             on_logged_resume, inst) < 0)
        sch_inst_unref(inst);
}

/* ------------------------------------------------------------------ the idle check */

struct idle_batch {
    size_t n;
    struct sch_inst *insts[IDLE_BATCH]; /* each holds a reference */
};

static void on_idle(struct redisReply *r, const char *err, void *data)
{
    struct idle_batch *b = data;
    int ok = !err && r && r->type == REDIS_REPLY_ARRAY && r->elements == b->n;
    if (!ok && err)
        cm_log_warn("pause", "idle check failed err=\"%s\"", err);
    for (size_t i = 0; i < b->n; i++) {
        struct sch_inst *inst = b->insts[i];
        inst->idle_checking = 0;
        if (ok && r->element[i]->type == REDIS_REPLY_INTEGER && r->element[i]->integer == 1 &&
            inst->pause == SCH_PAUSE_RUNNING && !inst->ctx->stopping)
            sch_pause(inst, "idle", NULL);
        sch_inst_unref(inst);
    }
    free(b);
}

static void send_batch(struct sch_ctx *ctx, struct idle_batch *b, const char **argv, int argc)
{
    int rc = sch_script(ctx, CM_SCRIPT_IDLE, on_idle, b, argc, argv);
    if (rc < 0) {
        if (rc != -ENOTCONN) /* Redis away is logged by the Redis client */
            cm_log_warn("pause", "idle check not sent sessions=%zu err=\"%s\"", b->n,
                        strerror(-rc));
        for (size_t i = 0; i < b->n; i++) {
            b->insts[i]->idle_checking = 0;
            sch_inst_unref(b->insts[i]);
        }
        free(b);
    }
}

void sch_pause_check(struct sch_ctx *ctx)
{
    if (!sch_redis_connected(ctx) || ctx->stopping)
        return;
    char ms[IDLE_BATCH][24];
    const char *argv[2 + 3 * IDLE_BATCH];
    char now[24];
    struct idle_batch *b = NULL;
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    for (struct sch_inst *inst = ctx->insts; inst; inst = inst->next) {
        if (inst->state != SCH_INST_BOUND || !inst->agent_bound || !inst->di || !inst->tpl ||
            !inst->tpl->pause_after || !inst->drv->ops->pause || inst->pause != SCH_PAUSE_RUNNING ||
            inst->idle_checking)
            continue;
        if (!b) {
            if (!(b = calloc(1, sizeof(*b))))
                return;
            argv[0] = ctx->cfg->redis.prefix;
            argv[1] = now;
        }
        snprintf(ms[b->n], sizeof(ms[0]), "%" PRIu64, inst->tpl->pause_after / CM_USEC_PER_MSEC);
        argv[2 + 3 * b->n] = inst->session;
        argv[3 + 3 * b->n] = inst->id;
        argv[4 + 3 * b->n] = ms[b->n];
        inst->idle_checking = 1;
        sch_inst_ref(inst);
        b->insts[b->n++] = inst;
        if (b->n == IDLE_BATCH) {
            send_batch(ctx, b, argv, 2 + 3 * (int)b->n);
            b = NULL;
        }
    }
    if (b)
        send_batch(ctx, b, argv, 2 + 3 * (int)b->n);
}
