#include "gateway/worker.h"

#include "gateway/usage.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/config.h"
#include "common/key.h"
#include "common/store.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/usagetab.h"
#include "gateway/activity.h"
#include "gateway/cache.h"
#include "gateway/claim.h"
#include "gateway/config.h"
#include "gateway/conn.h"
#include "gateway/h1.h"
#include "gateway/upstream.h"

#define CACHE_MAX_ENTRIES (1u << 20)

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    struct gw_worker *w = arg;
    gw_conn_accept(w, fd, sa, (socklen_t)len, l == w->tls_listener);
}

void gw_worker_accepting(struct gw_worker *w, int on)
{
    w->accepting = on;
    if (on) {
        evconnlistener_enable(w->listener);
        if (w->tls_listener)
            evconnlistener_enable(w->tls_listener);
    } else {
        evconnlistener_disable(w->listener);
        if (w->tls_listener)
            evconnlistener_disable(w->tls_listener);
    }
}

/* The back-off after running out of descriptors is over: accept again, unless accepting was
 * turned off meanwhile (max_connections, shutdown). */
static void reenable_accept(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *w = arg;
    (void)fd, (void)what;
    if (w->accepting && !w->stopping)
        gw_worker_accepting(w, 1);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct gw_worker *w = arg;
    int e = EVUTIL_SOCKET_ERROR();
    cm_log_warn("worker", "accept failed worker=%d err=%s", w->index,
                evutil_socket_error_to_string(e));
    /* Out of fds: back off briefly rather than spin. */
    if (e == EMFILE || e == ENFILE) {
        evconnlistener_disable(l);
        struct timeval tv = {0, 100000};
        event_base_once(w->base, -1, EV_TIMEOUT, reenable_accept, w, &tv);
    }
}

static void on_inval(const char *channel, const char *msg, size_t len, void *data)
{
    struct gw_worker *w = data;
    struct cm_hash h;
    (void)channel;
    if (cm_hash_parse(msg, len, &h) == 0)
        gw_cache_drop(w->cache, h);
}

static void on_static_registered(redisReply *reply, const char *err, void *data)
{
    const char *tpl = data;
    if (err)
        cm_log_warn("worker", "cannot register static template template=%s err=\"%s\"", tpl, err);
    else if (reply && reply->type == REDIS_REPLY_INTEGER)
        cm_log_info("worker", "static template registered template=%s instances=%lld", tpl,
                    reply->integer);
}

/* Static templates need no scheduler: the gateway itself records their instances (idempotent,
 * on every connect, from worker 0). */
static void register_static(struct gw_worker *w)
{
    const struct cm_config *cfg = w->gc->common;
    for (size_t t = 0; t < cfg->n_templates; t++) {
        const struct cm_template *tpl = &cfg->templates[t];
        if (strcmp(tpl->driver, "static") != 0)
            continue;
        size_t n = cm_strv_len(tpl->upstreams);
        if (n > 120) {
            cm_log_error("worker", "too many static upstreams template=%s max=120", tpl->name);
            continue;
        }
        const char *argv[3 + 2 * 120];
        size_t lens[3 + 2 * 120];
        char ids[120][80], addrs[120][192], now[24];
        snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
        argv[0] = cfg->redis.prefix;
        argv[1] = tpl->name;
        argv[2] = now;
        for (size_t i = 0; i < n; i++) {
            const char *u = tpl->upstreams[i];
            snprintf(ids[i], sizeof(ids[i]), "%s-%zu", tpl->name, i);
            if (strncmp(u, "unix:", 5) == 0 || strncmp(u, "tcp:", 4) == 0)
                snprintf(addrs[i], sizeof(addrs[i]), "%s", u);
            else
                snprintf(addrs[i], sizeof(addrs[i]), "tcp:%s", u);
            argv[3 + 2 * i] = ids[i];
            argv[4 + 2 * i] = addrs[i];
        }
        for (size_t i = 0; i < 3 + 2 * n; i++)
            lens[i] = strlen(argv[i]);
        cm_redis_script(w->redis, CM_SCRIPT_STATIC, on_static_registered, (void *)tpl->name,
                        (int)(3 + 2 * n), argv, lens);
    }
}

static void flush_cache(struct gw_worker *w, int keep, const char *which)
{
    if (keep)
        gw_cache_expire_all(w->cache);
    else
        gw_cache_clear(w->cache);
    cm_log_info("worker", "redis %s reconnected, cache %s worker=%d", which,
                keep ? "marked stale (redis lost its data)" : "flushed", w->index);
}

static void on_epoch_cmd(redisReply *reply, const char *err, void *data, const char *which)
{
    struct gw_worker *w = data;
    /* No epoch, or one still ahead: Redis came back without its data and the schedulers have
     * not written back all of it. A flushed cache would claim a new instance for a session
     * Redis does not know yet; a stale one is used and checked, and its session gets its
     * on_lost answer once its scheduler has written it back as lost (common/store.h). */
    int keep = !err && reply &&
               (reply->type == REDIS_REPLY_NIL ||
                (reply->type == REDIS_REPLY_STRING &&
                 strtoull(reply->str, NULL, 10) > cm_now_wall_ms()));
    flush_cache(w, keep, which);
}

static void on_epoch_conn(redisReply *reply, const char *err, void *data)
{
    on_epoch_cmd(reply, err, data, "connection");
}

static void on_epoch_sub(redisReply *reply, const char *err, void *data)
{
    on_epoch_cmd(reply, err, data, "subscription");
}

/* A connection to Redis is up (again). Invalidations may have been missed while it was away
 * (the `inval` subscription has a connection of its own, which a network blip can take
 * alone): after the first time, trust nothing cached. With sandbox templates, P epoch says
 * first whether Redis lost its data (then the entries are only marked stale). */
static void connected_again(struct gw_worker *w, int *up_before, const char *which)
{
    if (*up_before) {
        const struct cm_config *cfg = w->gc->common;
        int sandboxes = 0;
        for (size_t t = 0; t < cfg->n_templates; t++)
            sandboxes |= strcmp(cfg->templates[t].driver, "static") != 0;
        char key[256];
        snprintf(key, sizeof(key), "%sepoch", cfg->redis.prefix);
        const char *argv[] = {"GET", key};
        size_t lens[] = {3, strlen(key)};
        if (!sandboxes || cm_redis_argv(w->redis, which[0] == 'c' ? on_epoch_conn : on_epoch_sub,
                                        w, 2, argv, lens) < 0)
            flush_cache(w, 0, which);
    }
    *up_before = 1;
}

static void on_redis_state(struct cm_redis *r, int connected, void *data)
{
    struct gw_worker *w = data;
    (void)r;
    if (connected) {
        connected_again(w, &w->redis_up_before, "connection");
        if (w->index == 0)
            register_static(w);
    } else if (w->index == 0) {
        cm_log_warn("worker", "redis connection lost worker=%d", w->index);
    }
}

/* Wrong redis.username / password (or db): every connection keeps retrying; the first
 * worker's command connection says why, once per different refusal. */
static void on_redis_refused(struct cm_redis *r, const char *err, void *data)
{
    struct gw_worker *w = data;
    const struct cm_redis_config *rc = &w->gc->common->redis;
    cm_log_error("worker", "redis refused, retrying addr=%s user=%s err=\"%s\"",
                 cm_redis_address(r),
                 rc->username ? rc->username : "default", err);
}

static void on_sub_state(struct cm_redis *r, int connected, void *data)
{
    (void)r;
    if (connected) {
        struct gw_worker *w = data;
        connected_again(w, &w->sub_up_before, "subscription");
    }
}

static void on_touch_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    gw_activity_flush(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    gw_conn_touch_streams(arg);
    gw_activity_flush(arg);
    gw_usage_flush(arg);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct gw_worker *w = arg;
    (void)fd, (void)what;
    if (!w->stopping) {
        w->stopping = 1;
        w->stop_deadline = cm_now_mono() + w->gc->shutdown_grace;
        gw_worker_accepting(w, 0);
        gw_conn_drain_all(w);
    }
    if (w->n_conns > 0 && cm_now_mono() >= w->stop_deadline) {
        cm_log_info("worker", "shutdown grace over, closing connections worker=%d conns=%" PRIu64,
                    w->index, w->n_conns);
        gw_conn_close_all(w);
    }
    if (w->n_conns == 0) {
        event_base_loopbreak(w->base);
        return;
    }
    /* Re-check until the last exchange ended or gateway.shutdown_grace is over. */
    struct timeval tv = {0, 50000};
    event_add(w->stop_ev, &tv);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    char buf[16];
    (void)what;
    while (read(fd, buf, sizeof(buf)) > 0)
        ;
    on_stop(-1, EV_TIMEOUT, arg);
}

static int listen_socket(const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int slen = (int)sizeof(ss);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &slen) < 0) {
        snprintf(err, errlen, "cannot parse the listen address '%s'", addr);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, (socklen_t)slen) < 0 || listen(fd, 4096) < 0) {
        snprintf(err, errlen, "listen on %s: %s", addr, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static const struct timeval *common_timeout(struct event_base *base, cm_usec_t usec)
{
    struct timeval tv;
    cm_usec_to_tv(usec, &tv);
    return event_base_init_common_timeout(base, &tv);
}

struct gw_worker *gw_worker_create(int index, const struct gw_config *gc, char *err,
                                   size_t errlen)
{
    struct gw_worker *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->index = index;
    w->gc = gc;
    w->wake_pipe[0] = w->wake_pipe[1] = -1;
    w->accepting = 1;
    uint32_t r = 0;
    if (getrandom(&r, sizeof(r), 0) != sizeof(r))
        r = (uint32_t)getpid() ^ (uint32_t)index;
    snprintf(w->reqid_prefix, sizeof(w->reqid_prefix), "%08x", r);
    w->headers = calloc(gc->limits.max_headers, sizeof(*w->headers));
    w->base = event_base_new();
    w->scratch.size = GW_SCRATCH_SIZE;
    w->scratch.buf = malloc(w->scratch.size);
    if (!w->headers || !w->base || !w->scratch.buf)
        goto oom;
    const struct gw_limits *lim = &gc->limits;
    if (!(w->to_keepalive = common_timeout(w->base, lim->keepalive_timeout)) ||
        !(w->to_header = common_timeout(w->base, lim->header_timeout)) ||
        !(w->to_linger = common_timeout(w->base, GW_LINGER_USEC)) ||
        !(w->to_connect = common_timeout(w->base, lim->connect_timeout)) ||
        !(w->to_response =
              common_timeout(w->base, CM_MIN(lim->response_timeout, lim->resume_timeout))) ||
        (lim->resume_timeout < lim->response_timeout &&
         !(w->to_response_rest =
               common_timeout(w->base, lim->response_timeout - lim->resume_timeout))) ||
        !(w->to_stream_idle = common_timeout(w->base, lim->stream_idle_timeout)) ||
        !(w->to_h2_send = common_timeout(w->base, w->gc->h2.send_timeout)))
        goto oom;
    gw_conn_settings_init(w);
    w->cache = gw_cache_create(CACHE_MAX_ENTRIES);
    w->usage = calloc(1, sizeof(*w->usage));
    if (w->usage)
        w->usage->labels = cm_usagetab_create();
    w->ups = gw_upstreams_create(w->base, gc, &w->metrics, &w->scratch);
    w->redis = cm_redis_create(w->base, &gc->common->redis, on_redis_state, w);
    w->sub = cm_redis_create(w->base, &gc->common->redis, on_sub_state, w);
    if (!w->cache || !w->usage || !w->usage->labels || !w->ups || !w->redis || !w->sub)
        goto oom;
    if (w->index == 0)
        cm_redis_set_refused_cb(w->redis, on_redis_refused, w);
    w->claimer = gw_claimer_create(w->base, w->redis, gc, &w->metrics);
    if (!w->claimer)
        goto oom;
    char channel[128];
    snprintf(channel, sizeof(channel), "%sinval", gc->common->redis.prefix);
    if (cm_redis_subscribe(w->sub, channel, on_inval, w) < 0)
        goto oom;
    int fd = listen_socket(gc->listen, err, errlen);
    if (fd < 0) {
        gw_worker_destroy(w);
        return NULL;
    }
    w->listener = evconnlistener_new(w->base, on_accept, w,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (!w->listener) {
        close(fd);
        goto oom;
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    if (*gc->tls_listen) {
        int tfd = listen_socket(gc->tls_listen, err, errlen);
        if (tfd < 0) {
            gw_worker_destroy(w);
            return NULL;
        }
        w->tls_listener = evconnlistener_new(
            w->base, on_accept, w, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, tfd);
        if (!w->tls_listener) {
            close(tfd);
            goto oom;
        }
        evconnlistener_set_error_cb(w->tls_listener, on_accept_error);
    }
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, on_tick, w);
    w->stop_ev = evtimer_new(w->base, on_stop, w);
    w->touch_ev = evtimer_new(w->base, on_touch_timer, w);
    if (!w->tick_ev || !w->stop_ev || !w->touch_ev || pipe2(w->wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        goto oom;
    w->wake_ev = event_new(w->base, w->wake_pipe[0], EV_READ | EV_PERSIST, on_wake, w);
    if (!w->wake_ev || event_add(w->wake_ev, NULL) < 0)
        goto oom;
    struct timeval tv;
    cm_usec_to_tv(gc->activity_flush, &tv);
    event_add(w->tick_ev, &tv);
    return w;
oom:
    snprintf(err, errlen, "worker %d: out of memory", index);
    gw_worker_destroy(w);
    return NULL;
}

static void *run(void *arg)
{
    struct gw_worker *w = arg;
    char name[16]; /* what top -H, ps -L and perf show for this thread */
    snprintf(name, sizeof(name), "berth-loop/%d", w->index);
    (void)pthread_setname_np(pthread_self(), name);
    event_base_dispatch(w->base);
    return NULL;
}

int gw_worker_start(struct gw_worker *w)
{
    int rc = pthread_create(&w->thread, NULL, run, w);
    return -rc;
}

void gw_worker_stop(struct gw_worker *w)
{
    ssize_t n = write(w->wake_pipe[1], "x", 1);
    (void)n; /* a full pipe already holds a wake-up */
}

void gw_worker_destroy(struct gw_worker *w)
{
    if (!w)
        return;
    if (w->thread)
        pthread_join(w->thread, NULL);
    if (w->base)
        gw_conn_close_all(w);
    gw_claimer_destroy(w->claimer);
    gw_binding_refreshes_free(w);
    cm_redis_destroy(w->sub);
    cm_redis_destroy(w->redis);
    if (w->listener)
        evconnlistener_free(w->listener);
    if (w->tls_listener)
        evconnlistener_free(w->tls_listener);
    gw_upstreams_destroy(w->ups);
    gw_cache_destroy(w->cache);
    if (w->tick_ev)
        event_free(w->tick_ev);
    if (w->stop_ev)
        event_free(w->stop_ev);
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->touch_ev)
        event_free(w->touch_ev);
    if (w->wake_pipe[0] >= 0)
        close(w->wake_pipe[0]);
    if (w->wake_pipe[1] >= 0)
        close(w->wake_pipe[1]);
    if (w->base)
        event_base_free(w->base);
    free(w->headers);
    free(w->scratch.buf);
    while (w->free_slots) {
        void *s = w->free_slots;
        memcpy(&w->free_slots, s, sizeof(void *));
        free(s);
    }
    gw_activity_free(w);
    if (w->usage) /* after Redis: the USAGE calls' callbacks (failed by its destroy) are done */
        cm_usagetab_destroy(w->usage->labels);
    free(w->usage);
    free(w);
}

void gw_worker_request_id(struct gw_worker *w, char out[17])
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, w->reqid_prefix, 8);
    uint64_t n = ++w->reqid_seq;
    for (int i = 15; i >= 8; i--) {
        out[i] = hex[n & 0xf];
        n >>= 4;
    }
    out[16] = '\0';
}
