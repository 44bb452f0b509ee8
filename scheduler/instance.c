#include "scheduler/instance.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "scheduler/agentctl.h"
#include "scheduler/driver.h"
#include "scheduler/inst_egress.h"
#include "scheduler/paths.h"
#include "scheduler/pool.h"
#include "scheduler/relay.h"
#include "scheduler/sched.h"

#define AGENT_TIMEOUT (2 * CM_USEC_PER_SEC)
#define BIND_TRIES 3
#define BIND_RETRY_DELAY (200 * CM_USEC_PER_MSEC)
#define ID_TRIES 8

static sch_inst_ready_cb ready_cb;

static const char *const state_names[] = {
    [SCH_INST_ADOPTING] = "adopting", [SCH_INST_STARTING] = "starting", [SCH_INST_WARM] = "warm",
    [SCH_INST_BOUND] = "bound",       [SCH_INST_STOPPING] = "stopping", [SCH_INST_GONE] = "gone",
};

const char *sch_inst_state_name(enum sch_inst_state s)
{
    return state_names[s];
}

void sch_inst_set_ready_cb(sch_inst_ready_cb cb)
{
    ready_cb = cb;
}

void sch_inst_ref(struct sch_inst *inst)
{
    inst->refs++;
}

void sch_inst_unref(struct sch_inst *inst)
{
    if (--inst->refs > 0)
        return;
    free(inst);
}

/* Reply callback for commands whose result only matters when it fails. */
static void on_reply_logged(struct redisReply *reply, const char *err, void *data)
{
    struct sch_inst *inst = data;
    (void)reply;
    if (err && !inst->ctx->stopping)
        cm_log_warn("inst", "redis command failed inst=%s err=\"%s\"", inst->id, err);
    sch_inst_unref(inst);
}

/* Sends a command on behalf of <inst> (holding a reference until the reply). */
static void inst_redis(struct sch_inst *inst, int argc, const char **argv)
{
    sch_inst_ref(inst);
    if (sch_redis(inst->ctx, on_reply_logged, inst, argc, argv) < 0) {
        cm_log_warn("inst", "redis not connected, command dropped inst=%s cmd=%s", inst->id,
                    argv[0]);
        sch_inst_unref(inst);
    }
}

static struct sch_inst *inst_new(struct sch_ctx *ctx, const char *id)
{
    struct sch_inst *inst = calloc(1, sizeof(*inst));
    if (!inst)
        return NULL;
    inst->ctx = ctx;
    inst->refs = 1; /* the list's */
    snprintf(inst->id, sizeof(inst->id), "%s", id);
    inst->next = ctx->insts;
    if (ctx->insts)
        ctx->insts->prev = inst;
    ctx->insts = inst;
    ctx->n_live++;
    return inst;
}

static void free_events(struct sch_inst *inst)
{
    sch_pause_forget(inst);
    if (inst->ready_ev)
        event_free(inst->ready_ev);
    if (inst->exit_ev)
        event_free(inst->exit_ev);
    if (inst->timer_ev)
        event_free(inst->timer_ev);
    if (inst->retry_ev)
        event_free(inst->retry_ev);
    inst->ready_ev = inst->exit_ev = inst->timer_ev = inst->retry_ev = NULL;
}

/* Takes <inst> out of the list (drops the list's reference). */
static void inst_remove(struct sch_inst *inst)
{
    struct sch_ctx *ctx = inst->ctx;
    sch_relay_del(ctx->relay, inst->id);
    sch_inst_egress_gone(inst);
    free_events(inst);
    inst->state = SCH_INST_GONE;
    if (inst->prev)
        inst->prev->next = inst->next;
    else
        ctx->insts = inst->next;
    if (inst->next)
        inst->next->prev = inst->prev;
    inst->prev = inst->next = NULL;
    ctx->n_live--;
    sch_inst_unref(inst);
}

const char *sch_inst_addr(const struct sch_inst *inst, char *buf, size_t len)
{
    const char *addr = inst->di ? inst->di->addr : "";
    if (inst->ctx->relay && *addr &&
        sch_relay_public_addr(inst->ctx->relay, inst->id, addr, buf, len) == 0)
        return buf;
    return addr;
}

/* Tells the relay where <inst> is. */
static void relay_add(struct sch_inst *inst)
{
    if (inst->ctx->relay && inst->di &&
        sch_relay_add(inst->ctx->relay, inst->id, inst->di->addr) < 0)
        cm_log_error("relay", "instance not reachable through the relay inst=%s addr=%s",
                     inst->id, inst->di->addr);
}

struct sch_inst *sch_inst_find(struct sch_ctx *ctx, const char *id)
{
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        if (strcmp(i->id, id) == 0)
            return i;
    return NULL;
}

static void fail_req(struct sch_inst *inst, const char *code, const char *msg)
{
    struct sch_start_req *req = inst->req;
    inst->req = NULL;
    if (req && ready_cb)
        ready_cb(inst, code, msg, req);
}

void sch_inst_drop_req(struct sch_inst *inst)
{
    inst->req = NULL;
}

/* ------------------------------------------------------------------ the end */

static void on_lost_reply(struct redisReply *reply, const char *err, void *data)
{
    struct sch_inst *inst = data;
    if (err)
        cm_log_error("inst", "lost script failed inst=%s err=\"%s\"", inst->id, err);
    else if (reply && reply->type == REDIS_REPLY_STRING && reply->len > 0)
        cm_log_warn("inst", "session lost its instance inst=%s session=%s", inst->id, reply->str);
    sch_inst_unref(inst);
}

static void on_instance_exit(evutil_socket_t fd, short what, void *arg)
{
    struct sch_inst *inst = arg;
    struct sch_ctx *ctx = inst->ctx;
    char reason[128], key[256], now[24], tail[300];
    (void)fd, (void)what;
    inst->drv->ops->finish(inst->drv, inst->di, reason, sizeof(reason), tail, sizeof(tail));
    inst->di = NULL;
    int asked = inst->state == SCH_INST_STOPPING && !inst->lost_on_exit;
    if (!asked || inst->req || inst->start_failed)
        cm_log_warn("inst", "console of ended instance inst=%s console=\"%s\"", inst->id, tail);
    if (inst->req) {
        char msg[512];
        snprintf(msg, sizeof(msg), "instance ended before it was ready: %s; console: %s", reason,
                 tail);
        fail_req(inst, "start_failed", msg);
    }
    const char *tpl = inst->tpl ? inst->tpl->name : "";
    sch_inst_ref(inst);
    inst_remove(inst);

    const char *srem[] = {
        "SREM", sch_key(ctx, key, sizeof(key), "host:%s:instances", ctx->sc->host_id), inst->id};
    inst_redis(inst, 3, srem);
    if (asked) {
        cm_log_info("inst", "destroyed inst=%s template=%s reason=\"%s\" exit=\"%s\"", inst->id,
                    tpl, inst->stop_reason, reason);
        const char *del[] = {"DEL", sch_key(ctx, key, sizeof(key), "i:%s", inst->id)};
        inst_redis(inst, 2, del);
        if (inst->tpl) { /* a destroyed warm instance must not keep counting as pooled */
            const char *lrem[] = {
                "LREM", sch_key(ctx, key, sizeof(key), "pool:%s:%s", ctx->sc->host_id, tpl), "0",
                inst->id};
            inst_redis(inst, 4, lrem);
        }
        sch_event(ctx, "destroyed", "instance", inst->id, "host", ctx->sc->host_id, "template", tpl,
                  "reason", inst->stop_reason, NULL);
    } else {
        char why[sizeof(inst->stop_reason) + 200];
        snprintf(why, sizeof(why), "%s%s%s", inst->lost_on_exit ? inst->stop_reason : reason,
                 inst->lost_on_exit ? ": " : "", inst->lost_on_exit ? reason : "");
        cm_log_warn("inst", "instance ended inst=%s template=%s reason=\"%s\"", inst->id, tpl, why);
        snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
        const char *argv[] = {ctx->cfg->redis.prefix, inst->id, now, why};
        sch_inst_ref(inst);
        if (sch_script(ctx, CM_SCRIPT_LOST, on_lost_reply, inst, 4, argv) < 0) {
            cm_log_error("inst", "redis not connected: lost script not run inst=%s", inst->id);
            sch_inst_unref(inst);
        }
    }
    if (inst->tpl)
        sch_pool_refill(ctx, inst->tpl);
    sch_inst_unref(inst);
}

void sch_inst_stop(struct sch_inst *inst, const char *reason, int lost)
{
    struct sch_ctx *ctx = inst->ctx;
    if (inst->state == SCH_INST_GONE)
        return;
    if (inst->state == SCH_INST_STOPPING) {
        inst->lost_on_exit |= lost;
        return;
    }
    inst->state = SCH_INST_STOPPING;
    sch_pause_forget(inst); /* the driver thaws a frozen instance before it signals it */
    inst->lost_on_exit = lost;
    snprintf(inst->stop_reason, sizeof(inst->stop_reason), "%s", reason);
    fail_req(inst, "start_failed", reason);
    if (inst->ready_ev) {
        event_free(inst->ready_ev);
        inst->ready_ev = NULL;
    }
    int hard = ctx->sc->destroy_grace == 0;
    int rc = inst->drv->ops->stop(inst->drv, inst->di, hard);
    cm_log_info("inst", "stopping inst=%s reason=\"%s\" signal=%s rc=%d", inst->id, reason,
                hard ? "KILL" : "TERM", rc);
    if (!hard) {
        struct timeval tv;
        cm_usec_t grace = ctx->sc->destroy_grace;
        if (inst->drv->ops->min_grace > grace)
            grace = inst->drv->ops->min_grace;
        cm_usec_to_tv(grace, &tv);
        evtimer_add(inst->timer_ev, &tv);
    }
}

void sch_inst_destroy(struct sch_inst *inst, const char *reason)
{
    char key[256];
    if (inst->state == SCH_INST_GONE || inst->state == SCH_INST_STOPPING)
        return;
    /* Redis first: a scheduler restarted before the exit must not adopt it again. */
    const char *hset[] = {"HSET", sch_key(inst->ctx, key, sizeof(key), "i:%s", inst->id), "state",
                          "releasing"};
    inst_redis(inst, 4, hset);
    sch_inst_stop(inst, reason, 0);
}

/* ------------------------------------------------------------------ start, ready */

static void on_pushed(struct redisReply *reply, const char *err, void *data)
{
    struct sch_inst *inst = data;
    (void)reply;
    inst->pushing = 0;
    if (err && !inst->ctx->stopping) {
        cm_log_error("pool", "cannot push instance into its pool inst=%s err=\"%s\"", inst->id,
                     err);
        if (inst->state == SCH_INST_WARM)
            sch_inst_destroy(inst, "pool push failed");
    }
    /* A start slot is free (pool_max_starting): the next one need not wait for a heartbeat. */
    if (!err)
        sch_pool_refill(inst->ctx, NULL);
    sch_inst_unref(inst);
}

static void became_ready(struct sch_inst *inst)
{
    struct sch_ctx *ctx = inst->ctx;
    char key[256], ms[24], pid[16];
    evtimer_del(inst->timer_ev);
    cm_usec_t took = cm_now_mono() - inst->started;
    snprintf(ms, sizeof(ms), "%" PRIu64, took / CM_USEC_PER_MSEC);
    snprintf(pid, sizeof(pid), "%d", (int)inst->di->pid);
    cm_log_info("inst", "ready inst=%s template=%s pid=%s ready_ms=%s for=%s", inst->id,
                inst->tpl->name, pid, ms, inst->for_pool ? "pool" : "api");
    sch_event(ctx, "started", "instance", inst->id, "host", ctx->sc->host_id, "template",
              inst->tpl->name, "pid", pid, "ready_ms", ms, NULL);
    inst->state = SCH_INST_WARM;
    sch_inst_egress_ready(inst);
    /* A driver may start the process only later (a VM clone waiting for its snapshot): the
     * pid goes into the record now when it had none at start. */
    int late_pid = inst->started_pid != inst->di->pid;
    if (!inst->for_pool && late_pid) {
        const char *hpid[] = {"HSET", sch_key(ctx, key, sizeof(key), "i:%s", inst->id), "pid", pid};
        inst_redis(inst, 4, hpid);
    }
    if (inst->for_pool) {
        const char *hset[] = {
            "HSET", sch_key(ctx, key, sizeof(key), "i:%s", inst->id), "state", "warm", "pid", pid};
        inst_redis(inst, late_pid ? 6 : 4, hset);
        const char *push[] = {
            "RPUSH",
            sch_key(ctx, key, sizeof(key), "pool:%s:%s", ctx->sc->host_id, inst->tpl->name),
            inst->id};
        inst->pushing = 1;
        sch_inst_ref(inst);
        if (sch_redis(ctx, on_pushed, inst, 3, push) < 0) {
            inst->pushing = 0;
            sch_inst_unref(inst);
            sch_inst_destroy(inst, "redis not connected");
        }
        return;
    }
    struct sch_start_req *req = inst->req;
    inst->req = NULL;
    if (req && ready_cb)
        ready_cb(inst, NULL, NULL, req);
    else
        sch_inst_destroy(inst, "requester gone");
}

static void start_failed(struct sch_inst *inst, const char *code, const char *msg)
{
    inst->start_failed = 1;
    cm_log_warn("inst", "start failed inst=%s template=%s code=%s err=\"%s\"", inst->id,
                inst->tpl->name, code, msg);
    fail_req(inst, code, msg);
    sch_inst_destroy(inst, msg);
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    struct sch_inst *inst = arg;
    (void)what;
    size_t room = sizeof(inst->ready_line) - 1 - inst->ready_len;
    ssize_t n = read(fd, inst->ready_line + inst->ready_len, room);
    if (n < 0)
        return; /* EAGAIN: wait for more */
    inst->ready_len += (size_t)n;
    inst->ready_line[inst->ready_len] = '\0';
    char *nl = strchr(inst->ready_line, '\n');
    if (n > 0 && !nl && inst->ready_len < sizeof(inst->ready_line) - 1)
        return;
    event_free(inst->ready_ev);
    inst->ready_ev = NULL;
    if (nl)
        *nl = '\0';
    if (strcmp(inst->ready_line, "READY") == 0)
        became_ready(inst);
    else if (inst->ready_line[0])
        start_failed(inst, "start_failed", inst->ready_line);
    /* else EOF: the agent has exited; the exit event reports why (with its console). */
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct sch_inst *inst = arg;
    (void)fd, (void)what;
    if (inst->state == SCH_INST_STARTING) {
        start_failed(inst, "start_timeout", "not ready within the template's ready_timeout");
    } else if (inst->state == SCH_INST_STOPPING && inst->di) {
        cm_log_warn("inst", "still running after destroy_grace, killing inst=%s", inst->id);
        inst->drv->ops->stop(inst->drv, inst->di, 1);
    }
}

static int watch(struct sch_inst *inst)
{
    struct event_base *base = inst->ctx->base;
    inst->exit_ev = event_new(base, inst->di->exit_fd, EV_READ, on_instance_exit, inst);
    inst->timer_ev = evtimer_new(base, on_timer, inst);
    if (inst->di->ready_fd >= 0)
        inst->ready_ev = event_new(base, inst->di->ready_fd, EV_READ | EV_PERSIST, on_ready, inst);
    if (!inst->exit_ev || !inst->timer_ev || (inst->di->ready_fd >= 0 && !inst->ready_ev))
        return -ENOMEM;
    if (event_add(inst->exit_ev, NULL) < 0 ||
        (inst->ready_ev && event_add(inst->ready_ev, NULL) < 0))
        return -ENOMEM;
    return 0;
}

struct sch_inst *sch_inst_start(struct sch_ctx *ctx, const struct cm_template *tpl, int for_pool,
                                struct sch_start_req *req, char *err, size_t errlen)
{
    if (ctx->n_live >= ctx->sc->capacity) {
        snprintf(err, errlen, "host %s is at capacity (%u instances)", ctx->sc->host_id,
                 ctx->sc->capacity);
        return NULL;
    }
    struct sch_driver *drv = sch_template_driver(ctx, tpl);
    if (!drv) {
        snprintf(err, errlen, "template %s: driver '%s' is not in use here", tpl->name,
                 tpl->driver);
        return NULL;
    }
    struct sch_dinst *di = NULL;
    char id[SCH_INST_ID_MAX + 1];
    int rc = -EEXIST;
    for (int t = 0; t < ID_TRIES && rc == -EEXIST; t++) {
        char rnd[CM_HASH_HEX_LEN + 1];
        if (cm_random_id(rnd) < 0) {
            snprintf(err, errlen, "no randomness for an instance id");
            return NULL;
        }
        snprintf(id, sizeof(id), "%s-%.8s", ctx->sc->host_id, rnd);
        if (sch_inst_find(ctx, id))
            continue;
        struct sch_start_spec spec = {.id = id, .tpl = tpl};
        rc = drv->ops->start(drv, &spec, &di, err, errlen);
    }
    if (rc < 0)
        return NULL;
    struct sch_inst *inst = inst_new(ctx, id);
    if (!inst) {
        snprintf(err, errlen, "out of memory");
        drv->ops->stop(drv, di, 1);
        drv->ops->release(drv, di); /* the recovery of the next start purges it */
        return NULL;
    }
    inst->tpl = tpl;
    inst->drv = drv;
    inst->di = di;
    inst->state = SCH_INST_STARTING;
    inst->for_pool = for_pool;
    inst->req = req;
    inst->started = cm_now_mono();
    inst->started_pid = di->pid;
    if (watch(inst) < 0) {
        snprintf(err, errlen, "out of memory");
        inst->req = NULL;
        drv->ops->stop(drv, di, 1);
        drv->ops->release(drv, di);
        inst->di = NULL;
        inst_remove(inst);
        return NULL;
    }
    struct timeval tv;
    cm_usec_to_tv(tpl->ready_timeout, &tv);
    evtimer_add(inst->timer_ev, &tv);
    relay_add(inst);

    char key[256], started[24], pid[16], pub[SCH_ADDR_MAX];
    snprintf(started, sizeof(started), "%" PRIu64, cm_now_wall_ms());
    snprintf(pid, sizeof(pid), "%d", (int)di->pid);
    /* The set first: a crash between the two leaves an id recovery can purge. */
    const char *sadd[] = {
        "SADD", sch_key(ctx, key, sizeof(key), "host:%s:instances", ctx->sc->host_id), inst->id};
    inst_redis(inst, 3, sadd);
    const char *hset[] = {"HSET",     sch_key(ctx, key, sizeof(key), "i:%s", inst->id),
                          "host",     ctx->sc->host_id,
                          "addr",     sch_inst_addr(inst, pub, sizeof(pub)),
                          "template", tpl->name,
                          "driver",   drv->ops->name,
                          "state",    "starting",
                          "started",  started,
                          "pid",      pid,
                          "accel",    di->accel};
    inst_redis(inst, (int)CM_ARRAY_SIZE(hset) - (di->accel[0] ? 0 : 2), hset);
    cm_log_info("inst", "starting inst=%s template=%s pid=%s for=%s", inst->id, tpl->name, pid,
                for_pool ? "pool" : "api");
    return inst;
}

/* ------------------------------------------------------------------ bind */

static void send_bind(struct sch_inst *inst);

static void on_bind_retry(evutil_socket_t fd, short what, void *arg)
{
    struct sch_inst *inst = arg;
    (void)fd, (void)what;
    if (inst->state == SCH_INST_BOUND && !inst->agent_bound)
        send_bind(inst);
}

/* No BIND will reach the agent. Under the process driver its held connections go on to the
 * app after bind_wait; a driver whose agent lets nothing through before BIND (a VM) would hold
 * them until the session ends: that instance is ended instead and the session follows its
 * on_lost policy. */
static void bind_gave_up(struct sch_inst *inst, const char *why)
{
    if (!inst->drv->ops->bind_required || inst->ctx->stopping)
        return;
    cm_log_error("inst", "no BIND can reach the agent, ending inst=%s session=%s why=\"%s\"",
                 inst->id, inst->session, why);
    sch_inst_stop(inst, why, 1);
}

static void on_bind_reply(const char *reply, int err, void *data)
{
    struct sch_inst *inst = data;
    if (inst->state == SCH_INST_BOUND && reply && strcmp(reply, "OK") == 0) {
        inst->agent_bound = 1;
        cm_log_info("inst", "bound inst=%s session=%s", inst->id, inst->session);
    } else if (inst->state == SCH_INST_BOUND) {
        cm_log_warn("inst", "agent BIND failed inst=%s session=%s reply=\"%s\" err=\"%s\" try=%d",
                    inst->id, inst->session, reply ? reply : "", err ? strerror(-err) : "",
                    inst->bind_tries);
        struct timeval tv;
        cm_usec_to_tv(BIND_RETRY_DELAY, &tv);
        if (inst->bind_tries < BIND_TRIES && !inst->ctx->stopping) {
            if (!inst->retry_ev)
                inst->retry_ev = evtimer_new(inst->ctx->base, on_bind_retry, inst);
            if (inst->retry_ev)
                evtimer_add(inst->retry_ev, &tv);
        } else {
            bind_gave_up(inst, "agent never took BIND");
        }
    }
    sch_inst_unref(inst);
}

static void send_bind(struct sch_inst *inst)
{
    char line[512], msg[300];
    inst->bind_tries++;
    if (!inst->drv->ops->bind_line) {
        snprintf(line, sizeof(line), "BIND %s", inst->session);
    } else if (inst->drv->ops->bind_line(inst->drv, inst->di, inst->session, line, sizeof(line),
                                         msg, sizeof(msg)) < 0) {
        cm_log_warn("inst", "preparing the bind failed inst=%s err=\"%s\"", inst->id, msg);
        sch_inst_ref(inst);
        on_bind_reply(NULL, -EIO, inst); /* retried like a failed BIND */
        return;
    }
    sch_inst_ref(inst);
    cm_usec_t timeout =
        inst->drv->ops->agent_timeout ? inst->drv->ops->agent_timeout : AGENT_TIMEOUT;
    if (sch_agentctl_request(inst->ctx->agentctl, inst->di->ctl, line, timeout, on_bind_reply,
                             inst) < 0)
        on_bind_reply(NULL, -ENOMEM, inst); /* retried like a failed BIND (consumes the ref) */
}

/* {storage_root}/{tenant}/{h}: the two session levels 0700, storage_root and its parents 0755. */
static int make_storage_dir(const struct sch_config *sc, const char *tenant, const char *h,
                            char *out, size_t len)
{
    char dir[4096];
    int rc = sch_mkdir_p(sc->storage_root, 0755);
    snprintf(dir, sizeof(dir), "%s/%s", sc->storage_root, tenant);
    if (rc == 0 && mkdir(dir, 0700) < 0 && errno != EEXIST)
        rc = -errno;
    snprintf(out, len, "%s/%s/%s", sc->storage_root, tenant, h);
    if (rc == 0 && mkdir(out, 0700) < 0 && errno != EEXIST)
        rc = -errno;
    return rc;
}

static void on_tenant(struct redisReply *reply, const char *err, void *data)
{
    struct sch_inst *inst = data;
    struct sch_ctx *ctx = inst->ctx;
    char dir[4200], msg[300];
    if (inst->state != SCH_INST_BOUND || !inst->di) {
        sch_inst_unref(inst);
        return;
    }
    if (err || !reply || reply->type != REDIS_REPLY_STRING ||
        !sch_safe_name(reply->str, reply->len)) {
        cm_log_error("inst", "cannot read the session's tenant inst=%s session=%s err=\"%s\"",
                     inst->id, inst->session, err ? err : "missing or invalid tenant");
        bind_gave_up(inst, "cannot read the session's tenant");
        sch_inst_unref(inst);
        return;
    }
    int rc = make_storage_dir(ctx->sc, reply->str, inst->session, dir, sizeof(dir));
    if (rc < 0) {
        snprintf(msg, sizeof(msg), "cannot create storage dir: %s", strerror(-rc));
    } else if ((rc = inst->drv->ops->attach_storage(inst->drv, inst->di, dir, msg, sizeof(msg))) ==
               0) {
        cm_log_info("inst", "storage attached inst=%s session=%s dir=%s", inst->id, inst->session,
                    dir);
        send_bind(inst);
        sch_inst_unref(inst);
        return;
    }
    /* A session promised durable storage must not run without it: end this instance so the
     * session follows its on_lost policy. */
    cm_log_error("inst", "storage failed inst=%s session=%s err=\"%s\"", inst->id, inst->session,
                 msg);
    sch_inst_stop(inst, "storage failed", 1);
    sch_inst_unref(inst);
}

void sch_inst_bind(struct sch_inst *inst, const char *h)
{
    struct sch_ctx *ctx = inst->ctx;
    struct cm_hash parsed;
    if (cm_hash_parse(h, strlen(h), &parsed) < 0) {
        cm_log_warn("inst", "bind with a bad session hash inst=%s session=%s", inst->id, h);
        return;
    }
    if (inst->state == SCH_INST_ADOPTING) {
        snprintf(inst->pending_bind, sizeof(inst->pending_bind), "%s", h);
        return;
    }
    if (inst->state != SCH_INST_WARM && inst->state != SCH_INST_BOUND) {
        cm_log_warn("inst", "bind ignored inst=%s state=%s session=%s", inst->id,
                    state_names[inst->state], h);
        return;
    }
    if (inst->state == SCH_INST_BOUND && strcmp(inst->session, h) != 0) {
        /* Redis gave a bound sandbox to another session: it lost the first binding (a
         * failover that dropped writes not yet replicated). The gateways route the second
         * session here: end the sandbox now, as lost, so that neither session reaches the
         * other's app and files (both get a new one by their template's on_lost). */
        cm_log_error("inst", "bind to a second session: ending the instance inst=%s session=%s "
                             "bound=%s",
                     inst->id, h, inst->session);
        sch_inst_stop(inst, "bound to a second session", 1);
        return;
    }
    if (inst->state == SCH_INST_BOUND && inst->agent_bound)
        return; /* repeated command */
    inst->state = SCH_INST_BOUND;
    snprintf(inst->session, sizeof(inst->session), "%s", h);
    inst->bind_tries = 0;
    sch_inst_egress_bound(inst);
    if (!inst->tpl || !inst->tpl->data) {
        send_bind(inst);
    } else {
        char key[256];
        const char *hget[] = {"HGET", sch_key(ctx, key, sizeof(key), "s:%s", h), "tenant"};
        sch_inst_ref(inst);
        if (sch_redis(ctx, on_tenant, inst, 3, hget) < 0) {
            cm_log_error("inst", "redis not connected: cannot bind inst=%s session=%s", inst->id,
                         h);
            bind_gave_up(inst, "redis not connected at bind");
            sch_inst_unref(inst);
        }
    }
    if (inst->tpl)
        sch_pool_refill(ctx, inst->tpl);
}

/* ------------------------------------------------------------------ adoption, shutdown */

struct sch_inst *sch_inst_adopting(struct sch_ctx *ctx, const char *id)
{
    struct sch_inst *inst = inst_new(ctx, id);
    if (inst)
        inst->state = SCH_INST_ADOPTING;
    return inst;
}

void sch_inst_adopted(struct sch_inst *inst, const struct cm_template *tpl, struct sch_dinst *di,
                      int bound, const char *session)
{
    inst->tpl = tpl;
    inst->di = di;
    inst->started = cm_now_mono();
    if (watch(inst) < 0) {
        cm_log_error("inst", "out of memory watching adopted inst=%s", inst->id);
        inst->drv->ops->release(inst->drv, di);
        inst->di = NULL;
        inst_remove(inst);
        return;
    }
    relay_add(inst);
    inst->state = SCH_INST_WARM;
    sch_inst_egress_ready(inst);
    inst->for_pool = 1;
    char pending[CM_HASH_HEX_LEN + 1];
    snprintf(pending, sizeof(pending), "%s", inst->pending_bind);
    inst->pending_bind[0] = '\0';
    if (bound && session && *session)
        sch_inst_bind(inst, session); /* idempotent: re-checks the mount and the agent */
    else if (pending[0])
        sch_inst_bind(inst, pending);
    sch_pause_adopted(inst);
}

void sch_inst_forget(struct sch_inst *inst)
{
    inst_remove(inst);
}

void sch_inst_release_all(struct sch_ctx *ctx)
{
    while (ctx->insts) {
        struct sch_inst *inst = ctx->insts;
        inst->req = NULL;
        if (inst->di)
            inst->drv->ops->release(inst->drv, inst->di);
        inst->di = NULL;
        inst_remove(inst);
    }
}
