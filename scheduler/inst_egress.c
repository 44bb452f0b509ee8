#include "scheduler/inst_egress.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/egress.h"
#include "common/log.h"
#include "common/store.h"
#include "common/time.h"
#include "scheduler/driver.h"
#include "scheduler/egress.h"
#include "scheduler/instance.h"
#include "scheduler/sched.h"

static void on_event_written(struct redisReply *reply, const char *err, void *data)
{
    (void)reply, (void)data;
    if (err)
        cm_log_warn("egress", "cannot write an egress event err=\"%s\"", err);
}

static void on_proxy_event(const char *id, const char *tenant, const char *session,
                           const char *decision, const char *host, unsigned port,
                           const char *reason, void *arg)
{
    struct sch_ctx *ctx = arg;
    char now[24], p[8], type[32];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    snprintf(p, sizeof(p), "%u", port);
    snprintf(type, sizeof(type), "egress_%s", decision);
    cm_log_info("egress", "%s inst=%s session=%s host=%s port=%s reason=%s", decision, id, session,
                host, p, reason);
    const char *argv[] = {ctx->cfg->redis.prefix,
                          now,
                          tenant,
                          type,
                          "session",
                          session,
                          "instance",
                          id,
                          "host",
                          host,
                          "port",
                          p,
                          "reason",
                          reason};
    if (sch_redis_connected(ctx))
        sch_script(ctx, CM_SCRIPT_EVENT, on_event_written, ctx, (int)CM_ARRAY_SIZE(argv), argv);
}

/* The proxy process ended (a crash): another one, told every instance again. */
static void on_proxy_exit(evutil_socket_t fd, short what, void *arg)
{
    struct sch_ctx *ctx = arg;
    (void)fd, (void)what;
    event_free(ctx->egress_ev);
    ctx->egress_ev = NULL;
    int rc = sch_egress_respawn(ctx->egress);
    cm_log_error("egress", "the egress proxy ended: connections through it were cut status=%d", rc);
    if (rc < 0)
        return;
    unsigned n = 0;
    for (struct sch_inst *i = ctx->insts; i; i = i->next)
        if (i->di && (i->state == SCH_INST_WARM || i->state == SCH_INST_BOUND)) {
            sch_inst_egress_ready(i);
            if (i->state == SCH_INST_BOUND)
                sch_inst_egress_bound(i);
            n++;
        }
    ctx->egress_ev =
        event_new(ctx->base, sch_egress_exit_fd(ctx->egress), EV_READ, on_proxy_exit, ctx);
    if (!ctx->egress_ev || event_add(ctx->egress_ev, NULL) < 0)
        cm_log_error("egress", "cannot watch the new egress proxy");
    cm_log_info("egress", "egress proxy started again instances=%u", n);
}

static void on_proxy_bytes(const char *id, const char *session, uint64_t out, uint64_t in,
                           void *arg)
{
    struct sch_inst *inst = sch_inst_find(arg, id);
    /* Bytes of a session the instance is no longer bound to are not anyone's to bill. */
    if (inst && inst->session[0] && strcmp(inst->session, session) == 0) {
        inst->egress_out += out;
        inst->egress_in += in;
    }
}

int sch_egress_start(struct sch_ctx *ctx, char *err, size_t errlen)
{
    if (!ctx->sc->egress.enabled)
        return 0;
    /* The proxy needs none of the scheduler's secrets: its copies are overwritten. */
    /* (api_secret is required; a NULL password ends the list early.) */
    static char *wipe[3];
    wipe[0] = ctx->sc->api_secret;
    wipe[1] = ctx->cfg->redis.password;
    wipe[2] = NULL;
    ctx->egress = sch_egress_create(&ctx->sc->egress, ctx->base, on_proxy_event, on_proxy_bytes,
                                    ctx, wipe, err, errlen);
    if (!ctx->egress)
        return -1;
    ctx->egress_ev =
        event_new(ctx->base, sch_egress_exit_fd(ctx->egress), EV_READ, on_proxy_exit, ctx);
    if (!ctx->egress_ev || event_add(ctx->egress_ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    cm_log_info("egress", "egress proxy up port=%u resolver=%s", (unsigned)ctx->sc->egress.port,
                ctx->sc->egress.resolver ? ctx->sc->egress.resolver : "/etc/resolv.conf");
    return 0;
}

void sch_egress_stop(struct sch_ctx *ctx)
{
    if (ctx->egress_ev)
        event_free(ctx->egress_ev);
    ctx->egress_ev = NULL;
    sch_egress_destroy(ctx->egress);
    ctx->egress = NULL;
}

/* The template's lists, plus <sess_allow>/<sess_deny> (NULL: none), to the proxy. */
static void send_policy(struct sch_inst *inst, const char *tenant, char **sess_allow,
                        char **sess_deny)
{
    char *const *allow[2] = {inst->tpl ? inst->tpl->egress_allow : NULL, sess_allow};
    char *const *deny[2] = {inst->tpl ? inst->tpl->egress_deny : NULL, sess_deny};
    int rc = sch_egress_policy(inst->ctx->egress, inst->id, tenant, inst->session, allow, deny);
    if (rc < 0)
        cm_log_error("egress", "cannot send the egress policy inst=%s err=\"%s\"", inst->id,
                     strerror(-rc));
}

void sch_inst_egress_ready(struct sch_inst *inst)
{
    if (!inst->ctx->egress || !inst->di || !inst->drv->ops->egress_listener)
        return;
    int fd = inst->drv->ops->egress_listener(inst->drv, inst->di);
    if (fd < 0)
        return; /* logged by the driver: this sandbox has no way out */
    if (sch_egress_add(inst->ctx->egress, inst->id, fd) < 0)
        return;
    send_policy(inst, "", NULL, NULL);
}

static void on_session_egress(struct redisReply *reply, const char *err, void *data)
{
    struct sch_inst *inst = data;
    char **allow = NULL, **deny = NULL;
    const char *tenant = "";
    if (inst->di && inst->ctx->egress && !err && reply && reply->type == REDIS_REPLY_ARRAY &&
        reply->elements == 3 && reply->element[2]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[2]->str, inst->id) == 0) {
        if (reply->element[0]->type == REDIS_REPLY_STRING)
            tenant = reply->element[0]->str;
        const redisReply *eg = reply->element[1];
        if (eg->type == REDIS_REPLY_STRING &&
            cm_egress_json_lists(eg->str, eg->len, &allow, &deny) < 0)
            cm_log_error("egress",
                         "the session's egress lists do not parse: ignored inst=%s "
                         "session=%s",
                         inst->id, inst->session);
        send_policy(inst, tenant, allow, deny);
    } else if (err) {
        cm_log_warn("egress", "cannot read the session's egress lists inst=%s err=\"%s\"", inst->id,
                    err);
    }
    cm_strv_free(allow);
    cm_strv_free(deny);
    sch_inst_unref(inst);
}

void sch_inst_egress_bound(struct sch_inst *inst)
{
    struct sch_ctx *ctx = inst->ctx;
    if (!ctx->egress || !inst->session[0])
        return;
    char key[256];
    const char *argv[] = {"HMGET", sch_key(ctx, key, sizeof(key), "s:%s", inst->session), "tenant",
                          "egress", "instance"};
    sch_inst_ref(inst);
    if (sch_redis(ctx, on_session_egress, inst, 5, argv) < 0)
        sch_inst_unref(inst);
}

void sch_inst_egress_gone(struct sch_inst *inst)
{
    sch_egress_del(inst->ctx->egress, inst->id);
}

void sch_egress_command(struct sch_ctx *ctx, const char *id, const char *h)
{
    struct sch_inst *inst = sch_inst_find(ctx, id);
    if (!inst || strcmp(inst->session, h) != 0) {
        cm_log_warn("egress",
                    "egress lists for an instance not bound to that session inst=%s "
                    "session=%s",
                    id, h);
        return;
    }
    sch_inst_egress_bound(inst);
}
