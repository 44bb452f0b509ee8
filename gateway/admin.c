#include "gateway/admin.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/compat.h"
#include "common/config.h"
#include "common/httpd.h"
#include "common/log.h"
#include "common/redis.h"
#include "gateway/api.h"
#include "gateway/claim.h"
#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/prom.h"
#include "gateway/tls.h"
#include "gateway/usage.h"

struct scrape;

struct gw_admin {
    const struct gw_config *gc;
    struct gw_admin_limits lim;
    struct gw_metrics **shards; /* the workers' shards, then our own (claims made by the API) */
    int n_shards;
    struct cm_usagetab **usage; /* the workers' usage by tenant and template (n_shards - 1) */
    struct gw_metrics own;
    struct event_base *base;
    struct cm_httpd *http;
    struct cm_httpd *health; /* gc->health_listen, or NULL */
    struct cm_redis *redis;
    struct gw_claimer *claimer;
    struct gw_api *api;
    struct event *stop_ev;
    int stop_pipe[2];
    pthread_t thread;
    int thread_started;
    int ready; /* set by any thread (atomic) */
    struct scrape *scrapes;
};

/* One /metrics scrape waiting for its ZCARDs (bounded by lim.scrape_timeout). */
struct scrape {
    struct scrape *prev, *next;
    struct gw_admin *a;
    struct cm_httpd_req *req; /* NULL once answered */
    struct event *timer;
    int waiting, failed;
    uint64_t *counts; /* per configured tenant */
};

int gw_admin_limits_load(const struct cm_config *cfg, struct gw_admin_limits *ret, char *err,
                         size_t errlen)
{
    static const char *const keys[] = {"max_body",
                                       "max_header_bytes",
                                       "timeout",
                                       "scrape_timeout",
                                       "max_hosts",
                                       "max_metadata",
                                       "list_default",
                                       "list_max",
                                       "max_connections",
                                       "header_timeout",
                                       "max_connections_per_tenant",
                                       "max_connections_per_address",
                                       "health_max_connections",
                                       "exec_timeout",
                                       "exec_max_timeout",
                                       "events_poll",
                                       "events_max_age",
                                       "events_max_len",
                                       "events_page_max",
                                       "max_upload",
                                       NULL};
    struct cm_conf_ctx ctx = {.file = cfg->file, .err = err, .errlen = errlen};
    const struct cm_ynode *m = cm_ynode_get(cm_ynode_get(cfg->root, "gateway"), "admin");
    const char *p = "gateway.admin";
    const cm_usec_t S = CM_USEC_PER_SEC;
    struct gw_admin_limits l;
    uint64_t hosts, list_default, list_max, conns, per_tenant, per_address, health_conns;
    uint64_t page_max;
    if (cm_conf_keys(&ctx, m, p, keys) ||
        cm_conf_size(&ctx, m, p, "max_body", 1u << 20, 1024, 64u << 20, &l.max_body) ||
        cm_conf_size(&ctx, m, p, "max_header_bytes", 16384, 1024, 1u << 20, &l.max_header_bytes) ||
        cm_conf_duration(&ctx, m, p, "timeout", 60 * S, S, 3600 * S, &l.timeout) ||
        cm_conf_duration(&ctx, m, p, "header_timeout", CM_MIN(5 * S, l.timeout),
                         100 * CM_USEC_PER_MSEC, 3600 * S, &l.header_timeout) ||
        cm_conf_u64(&ctx, m, p, "max_connections_per_tenant", 64, 1, 100000, &per_tenant) ||
        cm_conf_u64(&ctx, m, p, "max_connections_per_address", 32, 1, 100000, &per_address) ||
        cm_conf_u64(&ctx, m, p, "health_max_connections", 16, 1, 10000, &health_conns) ||
        cm_conf_duration(&ctx, m, p, "scrape_timeout", 250 * CM_USEC_PER_MSEC,
                         10 * CM_USEC_PER_MSEC, 10 * S, &l.scrape_timeout) ||
        cm_conf_u64(&ctx, m, p, "max_hosts", 1000, 1, 100000, &hosts) ||
        cm_conf_u64(&ctx, m, p, "max_connections", 256, 1, 100000, &conns) ||
        cm_conf_size(&ctx, m, p, "max_metadata", 16384, 0, 1u << 20, &l.api.max_metadata) ||
        cm_conf_u64(&ctx, m, p, "list_max", 1000, 1, 10000, &list_max) ||
        cm_conf_u64(&ctx, m, p, "list_default", CM_MIN(100, list_max), 1, 10000, &list_default) ||
        cm_conf_duration(&ctx, m, p, "exec_max_timeout", 3600 * S, S, 86400 * S,
                         &l.api.exec_max_timeout) ||
        cm_conf_duration(&ctx, m, p, "exec_timeout", CM_MIN(300 * S, l.api.exec_max_timeout), S,
                         86400 * S, &l.api.exec_timeout) ||
        cm_conf_duration(&ctx, m, p, "events_poll", 500 * CM_USEC_PER_MSEC, 50 * CM_USEC_PER_MSEC,
                         60 * S, &l.events_poll) ||
        cm_conf_duration(&ctx, m, p, "events_max_age", 7 * 86400 * S, 60 * S, 365 * 86400 * S,
                         &l.events_max_age) ||
        cm_conf_u64(&ctx, m, p, "events_max_len", 100000, 100, 100000, &l.events_max_len) ||
        cm_conf_u64(&ctx, m, p, "events_page_max", 1000, 1, 10000, &page_max) ||
        cm_conf_size(&ctx, m, p, "max_upload", 10ull << 30, 0, 1ull << 50, &l.max_upload))
        return -EINVAL;
    if (l.api.exec_timeout > l.api.exec_max_timeout)
        return cm_conf_fail(&ctx, cm_ynode_get(m, "exec_timeout"), p, "exec_timeout",
                            "must not exceed exec_max_timeout");
    if (l.header_timeout > l.timeout)
        return cm_conf_fail(&ctx, cm_ynode_get(m, "header_timeout"), p, "header_timeout",
                            "must not exceed timeout");
    if (list_default > list_max)
        return cm_conf_fail(&ctx, cm_ynode_get(m, "list_default"), p, "list_default",
                            "must not exceed list_max");
    l.max_hosts = (uint32_t)hosts;
    l.max_connections = (uint32_t)conns;
    l.max_per_tenant = (uint32_t)per_tenant;
    l.max_per_address = (uint32_t)per_address;
    l.health_max_connections = (uint32_t)health_conns;
    l.events_page_max = (uint32_t)page_max;
    l.api.list_default = (uint32_t)list_default;
    l.api.list_max = (uint32_t)list_max;
    *ret = l;
    return 0;
}

static void reply_text(struct cm_httpd_req *req, int status, const char *body)
{
    gw_api_reply(req, status, NULL, body, strlen(body));
}

/* --- /metrics ----------------------------------------------------------------------------- */

static void scrape_free(struct scrape *s)
{
    struct gw_admin *a = s->a;
    if (s->prev)
        s->prev->next = s->next;
    else
        a->scrapes = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->timer)
        event_free(s->timer);
    free(s->counts);
    free(s);
}

static void scrape_answer(struct scrape *s)
{
    struct gw_admin *a = s->a;
    if (!s->req)
        return;
    struct gw_metrics sum;
    gw_metrics_sum(a->shards, a->n_shards, &sum);
    const struct cm_config *cfg = a->gc->common;
    /* Sessions only from a complete, successful read: a partial family would mislead. */
    int complete = !s->failed && s->waiting == 0;
    struct gw_prom_tenant *tenants = NULL;
    if (complete && cfg->n_tenants) {
        tenants = calloc(cfg->n_tenants, sizeof(*tenants));
        for (size_t i = 0; tenants && i < cfg->n_tenants; i++) {
            tenants[i].name = cfg->tenants[i].name;
            tenants[i].sessions = s->counts[i];
        }
    }
    int up = cm_redis_state(a->redis) == CM_REDIS_CONNECTED && complete;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_prom_write(&b, &sum, tenants, tenants ? cfg->n_tenants : 0, up);
    gw_prom_tenant_limits(&b, &sum, cfg);
    if (*a->gc->tls_listen)
        gw_prom_gauge(&b, "berth_gateway_tls_configs",
                      "TLS configurations in memory: the current one, and those a reload "
                      "replaced that connections made before it still use.",
                      (int64_t)gw_tls_live());
    free(tenants);
    gw_usage_prom(&b, a->usage, (size_t)a->n_shards - 1);
    if (b.failed)
        gw_api_reply_error(s->req, GW_ERR_INTERNAL, "out of memory", 0);
    else
        gw_api_reply(s->req, 200, GW_PROM_CONTENT_TYPE, b.data, b.len);
    cm_jbuf_fini(&b);
    s->req = NULL;
}

static void scrape_settle(struct scrape *s)
{
    if (!s->req && s->waiting == 0)
        scrape_free(s);
}

struct zcard_slot {
    struct scrape *s;
    size_t i;
};

static void on_zcard(redisReply *r, const char *err, void *data)
{
    struct zcard_slot *z = data;
    struct scrape *s = z->s;
    size_t i = z->i;
    free(z);
    s->waiting--;
    if (err || !r || r->type != REDIS_REPLY_INTEGER || r->integer < 0)
        s->failed = 1;
    else
        s->counts[i] = (uint64_t)r->integer;
    if (s->waiting == 0)
        scrape_answer(s);
    scrape_settle(s);
}

static void on_scrape_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct scrape *s = arg;
    (void)fd, (void)what;
    s->failed = 1;
    scrape_answer(s); /* the late replies free <s> */
    scrape_settle(s);
}

static void handle_metrics(struct gw_admin *a, struct cm_httpd_req *req)
{
    const struct cm_config *cfg = a->gc->common;
    struct scrape *s = calloc(1, sizeof(*s));
    if (s)
        s->counts = calloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof(*s->counts));
    if (!s || !s->counts) {
        free(s);
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    s->a = a;
    s->req = req;
    s->next = a->scrapes;
    if (a->scrapes)
        a->scrapes->prev = s;
    a->scrapes = s;
    for (size_t i = 0; i < cfg->n_tenants && !s->failed; i++) {
        char key[512];
        snprintf(key, sizeof(key), "%ssessions:%s", cfg->redis.prefix, cfg->tenants[i].name);
        const char *argv[] = {"ZCARD", key};
        size_t lens[] = {5, strlen(key)};
        struct zcard_slot *z = malloc(sizeof(*z));
        if (!z) {
            s->failed = 1;
            break;
        }
        z->s = s, z->i = i;
        if (cm_redis_argv(a->redis, on_zcard, z, 2, argv, lens) < 0) {
            free(z);
            s->failed = 1;
        } else {
            s->waiting++;
        }
    }
    if (s->waiting == 0) {
        scrape_answer(s);
        scrape_settle(s);
        return;
    }
    s->timer = evtimer_new(a->base, on_scrape_timeout, s);
    struct timeval tv;
    cm_usec_to_tv(a->lim.scrape_timeout, &tv);
    if (!s->timer || evtimer_add(s->timer, &tv) < 0) {
        /* No timer: the command timeout of the Redis client still bounds the wait. */
        cm_log_warn("admin", "scrape timer failed: the Redis command timeout bounds this scrape");
    }
}

/* --- routing ------------------------------------------------------------------------------ */

/* /healthz and /readyz, on either listener. Returns 1 when <path> was one of them (answered). */
static int serve_probe(struct gw_admin *a, struct cm_httpd_req *req, const char *path)
{
    enum cm_http_method m = cm_httpd_method(req);
    int get = m == CM_HTTP_GET || m == CM_HTTP_HEAD;
    if (strcmp(path, "/healthz") == 0) {
        if (!get)
            gw_api_reply_405(req, "GET, HEAD");
        else
            reply_text(req, 200, "{\"status\":\"ok\"}");
    } else if (strcmp(path, "/readyz") == 0) {
        if (!get)
            gw_api_reply_405(req, "GET, HEAD");
        else if (!__atomic_load_n(&a->ready, __ATOMIC_ACQUIRE))
            reply_text(req, 503, "{\"status\":\"not_ready\",\"reason\":\"data listeners not up\"}");
        else if (cm_redis_state(a->redis) != CM_REDIS_CONNECTED)
            reply_text(req, 503, "{\"status\":\"not_ready\",\"reason\":\"redis not connected\"}");
        else
            reply_text(req, 200, "{\"status\":\"ready\"}");
    } else {
        return 0;
    }
    return 1;
}

static void on_health_request(struct cm_httpd_req *req, void *arg)
{
    if (!serve_probe(arg, req, cm_httpd_path(req)))
        gw_api_reply_error(req, GW_ERR_NOT_FOUND, NULL, 0);
}

static void on_request(struct cm_httpd_req *req, void *arg)
{
    struct gw_admin *a = arg;
    const char *path = cm_httpd_path(req);
    enum cm_http_method m = cm_httpd_method(req);
    int get = m == CM_HTTP_GET || m == CM_HTTP_HEAD;
    if (serve_probe(a, req, path)) {
        /* answered */
    } else if (strcmp(path, "/metrics") == 0) {
        if (!get)
            gw_api_reply_405(req, "GET, HEAD");
        else
            handle_metrics(a, req);
    } else if (strncmp(path, "/v1", 3) == 0 && (path[3] == '/' || path[3] == '\0')) {
        gw_api_handle(a->api, req, path);
    } else {
        gw_api_reply_error(req, GW_ERR_NOT_FOUND, NULL, 0);
    }
}

/* --- thread ------------------------------------------------------------------------------- */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct gw_admin *a = arg;
    (void)fd, (void)what;
    event_base_loopbreak(a->base);
}

static void *run(void *arg)
{
    struct gw_admin *a = arg;
    (void)pthread_setname_np(pthread_self(), "berth-admin");
    event_base_dispatch(a->base);
    return NULL;
}

/* "host:port" or "[v6]:port" into a host string and a port. */
static int split_listen(const char *s, char *host, size_t hostcap, uint16_t *port)
{
    const char *colon, *h = s;
    size_t hl;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return -EINVAL;
        h = s + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -EINVAL;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= hostcap)
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || p > 65535)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (uint16_t)p;
    return 0;
}

struct gw_admin *gw_admin_start(const struct gw_config *gc, struct gw_metrics *const *shards,
                                struct cm_usagetab *const *usage, int n_shards, char *err,
                                size_t errlen)
{
    struct gw_admin *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->gc = gc;
    a->stop_pipe[0] = a->stop_pipe[1] = -1;
    if (gw_admin_limits_load(gc->common, &a->lim, err, errlen) < 0)
        goto fail;
    a->shards = calloc((size_t)n_shards + 1, sizeof(*a->shards));
    a->usage = calloc((size_t)n_shards + 1, sizeof(*a->usage));
    if (!a->shards || !a->usage) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n_shards; i++) {
        a->shards[i] = shards[i];
        a->usage[i] = usage[i];
    }
    a->shards[n_shards] = &a->own;
    a->n_shards = n_shards + 1;

    char host[256];
    uint16_t port;
    if (split_listen(gc->admin_listen, host, sizeof(host), &port) < 0) {
        snprintf(err, errlen, "gateway.admin_listen: '%s' is not host:port", gc->admin_listen);
        goto fail;
    }
    a->base = event_base_new();
    struct cm_httpd_limits hl = {.max_header_bytes = a->lim.max_header_bytes,
                                 .max_body = a->lim.max_body,
                                 .timeout = a->lim.timeout,
                                 .header_timeout = a->lim.header_timeout,
                                 .max_connections = a->lim.max_connections,
                                 .max_per_owner = a->lim.max_per_tenant,
                                 .max_per_address = a->lim.max_per_address};
    a->http = a->base ? cm_httpd_create(a->base, &hl, on_request, a) : NULL;
    if (a->http)
        cm_httpd_set_head_cb(a->http, gw_api_upload_head);
    if (!a->http) {
        snprintf(err, errlen, "admin: cannot create the event loop");
        goto fail;
    }
    int rc = cm_httpd_listen(a->http, host, port, NULL);
    if (rc < 0) {
        snprintf(err, errlen, "gateway.admin_listen %s: cannot listen: %s", gc->admin_listen,
                 strerror(-rc));
        goto fail;
    }
    if (gc->health_listen[0]) {
        /* Probes only: small heads, no bodies, no keep-alive worth the name; its own
         * connections, so that nothing on the admin listener can take them. */
        if (split_listen(gc->health_listen, host, sizeof(host), &port) < 0) {
            snprintf(err, errlen, "gateway.health_listen: '%s' is not host:port",
                     gc->health_listen);
            goto fail;
        }
        struct cm_httpd_limits pl = {.max_header_bytes = 4096,
                                     .max_body = 0,
                                     .timeout = a->lim.header_timeout,
                                     .header_timeout = a->lim.header_timeout,
                                     .max_connections = a->lim.health_max_connections};
        a->health = cm_httpd_create(a->base, &pl, on_health_request, a);
        rc = a->health ? cm_httpd_listen(a->health, host, port, NULL) : -ENOMEM;
        if (rc < 0) {
            snprintf(err, errlen, "gateway.health_listen %s: cannot listen: %s", gc->health_listen,
                     strerror(-rc));
            goto fail;
        }
    }
    a->redis = cm_redis_create(a->base, &gc->common->redis, NULL, NULL);
    a->claimer = a->redis ? gw_claimer_create(a->base, a->redis, gc, &a->own) : NULL;
    a->api = a->claimer ? gw_api_create(a->base, a->redis, a->claimer, gc, &a->lim, &a->own) : NULL;
    if (!a->api || pipe2(a->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0 ||
        !(a->stop_ev = event_new(a->base, a->stop_pipe[0], EV_READ, on_stop, a)) ||
        event_add(a->stop_ev, NULL) < 0) {
        snprintf(err, errlen, "admin: out of resources");
        goto fail;
    }
    /* Signals belong to the main thread: block them all in the admin thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&a->thread, NULL, run, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "admin: cannot start its thread: %s", strerror(rc));
        goto fail;
    }
    a->thread_started = 1;
    cm_log_info("admin", "listening addr=%s health=%s", gc->admin_listen,
                gc->health_listen[0] ? gc->health_listen : "off");
    return a;
fail:
    gw_admin_stop(a);
    return NULL;
}

void gw_admin_set_ready(struct gw_admin *a, int ready)
{
    if (a)
        __atomic_store_n(&a->ready, ready ? 1 : 0, __ATOMIC_RELEASE);
}

void gw_admin_stop(struct gw_admin *a)
{
    if (!a)
        return;
    if (a->thread_started) {
        ssize_t n;
        do
            n = write(a->stop_pipe[1], "x", 1);
        while (n < 0 && errno == EINTR);
        pthread_join(a->thread, NULL);
    }
    /* The loop is stopped: tear down on this thread. Claims first (no callbacks), then Redis
     * (its pending callbacks answer their requests), then what still waits, then HTTP. */
    gw_claimer_destroy(a->claimer);
    cm_redis_destroy(a->redis);
    gw_api_destroy(a->api);
    while (a->scrapes) {
        struct scrape *s = a->scrapes;
        if (s->req)
            gw_api_reply_error(s->req, GW_ERR_OVERLOADED, "the gateway is shutting down", 0);
        s->req = NULL;
        scrape_free(s);
    }
    cm_httpd_destroy(a->http);
    cm_httpd_destroy(a->health);
    if (a->stop_ev)
        event_free(a->stop_ev);
    if (a->base)
        event_base_free(a->base);
    if (a->stop_pipe[0] >= 0)
        close(a->stop_pipe[0]);
    if (a->stop_pipe[1] >= 0)
        close(a->stop_pipe[1]);
    free(a->shards);
    free(a->usage);
    free(a);
}
