#include "gateway/upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/secret.h"
#include "common/time.h"
#include "gateway/claim.h"
#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/stream.h"

#define BUCKETS 1024

struct gw_upool {
    struct gw_upool *next; /* bucket chain */
    struct gw_upstreams *u;
    uint64_t key;
    char addr[GW_UPOOL_ADDR_MAX];
    uint16_t port; /* "addr@port": ask the agent for this port inside the sandbox */
    /* "addr@port#instance" (a VM's), or a relay's instance */
    char instance[GW_INSTANCE_ID_MAX];
    int keyed; /* the port line carries the instance's key (a VM's agent wants it) */
    int relay; /* "relay:": every new connection starts with the relay's line */
    struct sockaddr_storage sa;
    socklen_t salen;
    int is_tcp;
    /* The relay's line, made once a second (an HMAC each time otherwise) */
    time_t hello_at;
    int hello_len;
    char hello[CM_RELAY_HELLO_MAX];
    struct gw_upconn *idle; /* doubly linked */
    size_t n_idle;
    size_t refs; /* idle + in use */
};

struct gw_upconn {
    struct gw_upconn *next, *prev;
    struct gw_upool *pool;
    struct gw_stream s;
    int idle;
};

struct gw_upstreams {
    struct event_base *base;
    const struct gw_config *gc;
    struct gw_metrics *m;
    struct gw_stream_scratch *scratch;
    const struct timeval *idle_timeout; /* common timeout */
    struct gw_upool *buckets[BUCKETS];
    size_t n_idle;
};

int gw_relay_addr_parse(const char *addr, struct gw_relay_addr *ret)
{
    if (strncmp(addr, "relay:", 6) != 0)
        return -EINVAL;
    const char *hp = addr + 6;
    const char *s1 = strchr(hp, '/');
    const char *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
    char host[128];
    if (!s1 || !s2 || s1 == hp || (size_t)(s1 - hp) >= sizeof(host))
        return -EINVAL;
    size_t kl = (size_t)(s2 - s1 - 1), il = strlen(s2 + 1);
    struct gw_relay_addr r;
    memset(&r, 0, sizeof(r));
    if (il == 0 || il >= sizeof(r.id) || il > CM_RELAY_ID_MAX ||
        strspn(s2 + 1, CM_RELAY_ID_CHARS) != il)
        return -EINVAL;
    if (kl == 4 && memcmp(s1 + 1, "proc", 4) == 0)
        r.has_ports = 1;
    else if (kl == 2 && memcmp(s1 + 1, "vm", 2) == 0)
        r.has_ports = r.vm = 1;
    else if (!(kl == 3 && memcmp(s1 + 1, "tcp", 3) == 0))
        return -EINVAL;
    memcpy(host, hp, (size_t)(s1 - hp));
    host[s1 - hp] = '\0';
    int slen = (int)sizeof(r.sa);
    if (evutil_parse_sockaddr_port(host, (struct sockaddr *)&r.sa, &slen) < 0)
        return -EINVAL;
    in_port_t port = r.sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&r.sa)->sin6_port
                                                : ((struct sockaddr_in *)&r.sa)->sin_port;
    if (port == 0) /* "host" alone parses, as port 0 */
        return -EINVAL;
    r.salen = (socklen_t)slen;
    memcpy(r.id, s2 + 1, il + 1);
    *ret = r;
    return 0;
}

int gw_relay_hello(const char *secret, const struct gw_relay_addr *ra, const char *channel,
                   char *out)
{
    if (!secret)
        return -EACCES;
    return cm_secret_relay_hello(secret, ra->id, channel, (int64_t)time(NULL), out);
}

static int parse_addr(const char *addr, struct sockaddr_storage *sa, socklen_t *len, int *is_tcp)
{
    memset(sa, 0, sizeof(*sa));
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)sa;
        size_t n = strlen(addr + 5);
        if (n == 0 || n >= sizeof(un->sun_path))
            return -EINVAL;
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, addr + 5, n + 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        *is_tcp = 0;
        return 0;
    }
    if (strncmp(addr, "tcp:", 4) == 0)
        addr += 4;
    else if (strncmp(addr, "vm:", 3) == 0)
        addr += 3;
    int slen = (int)sizeof(*sa);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)sa, &slen) < 0)
        return -EINVAL;
    *len = (socklen_t)slen;
    *is_tcp = 1;
    return 0;
}

struct gw_upstreams *gw_upstreams_create(struct event_base *base, const struct gw_config *gc,
                                         struct gw_metrics *m, struct gw_stream_scratch *scratch)
{
    struct gw_upstreams *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->base = base;
    u->gc = gc;
    u->m = m;
    u->scratch = scratch;
    struct timeval tv;
    cm_usec_to_tv(gc->limits.upstream_idle_timeout, &tv);
    u->idle_timeout = event_base_init_common_timeout(base, &tv);
    if (!u->idle_timeout) {
        free(u);
        return NULL;
    }
    return u;
}

static void pool_unref(struct gw_upool *p)
{
    if (--p->refs > 0)
        return;
    struct gw_upool **pp = &p->u->buckets[p->key % BUCKETS];
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
    free(p);
}

static void idle_unlink(struct gw_upconn *uc)
{
    struct gw_upool *p = uc->pool;
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        p->idle = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    uc->next = uc->prev = NULL;
    uc->idle = 0;
    p->n_idle--;
    p->u->n_idle--;
}

static void upconn_close(struct gw_upconn *uc)
{
    struct gw_upool *p = uc->pool;
    if (uc->idle)
        idle_unlink(uc);
    gw_stream_fini(&uc->s);
    free(uc);
    pool_unref(p);
}

void gw_upstreams_destroy(struct gw_upstreams *u)
{
    if (!u)
        return;
    for (size_t b = 0; b < BUCKETS; b++) {
        struct gw_upool *p = u->buckets[b];
        while (p) {
            struct gw_upool *next = p->next;
            /* Closing the last idle connection frees the pool when nothing else holds it. */
            while (p->idle) {
                size_t refs = p->refs;
                upconn_close(p->idle);
                if (refs == 1)
                    break;
            }
            p = next;
        }
    }
    free(u);
}

static void idle_event_cb(struct gw_stream *s, short what, void *arg)
{
    (void)s, (void)what;
    upconn_close(arg); /* closed by the instance, error, or idle timeout */
}

static void idle_read_cb(struct gw_stream *s, void *arg)
{
    (void)s;
    upconn_close(arg); /* bytes on an idle connection: protocol error, drop it */
}

static struct gw_upool *pool_get(struct gw_upstreams *u, const char *addr, int *ret_err)
{
    size_t n = strlen(addr);
    uint64_t key = XXH3_64bits(addr, n);
    for (struct gw_upool *p = u->buckets[key % BUCKETS]; p; p = p->next)
        if (p->key == key && strcmp(p->addr, addr) == 0)
            return p;
    if (n >= sizeof(((struct gw_upool *)0)->addr)) {
        *ret_err = -EINVAL;
        return NULL;
    }
    struct gw_upool *p = calloc(1, sizeof(*p));
    if (!p) {
        *ret_err = -ENOMEM;
        return NULL;
    }
    char base[GW_UPOOL_ADDR_MAX];
    memcpy(base, addr, n + 1);
    char *hash = strncmp(base, "vm:", 3) == 0 ? strrchr(base, '#') : NULL;
    if (hash) {
        if (strlen(hash + 1) == 0 || strlen(hash + 1) >= sizeof(p->instance)) {
            free(p);
            *ret_err = -EINVAL;
            return NULL;
        }
        memcpy(p->instance, hash + 1, strlen(hash + 1) + 1);
        *hash = '\0';
    }
    char *at = strrchr(base, '@');
    if (at) {
        char *end;
        unsigned long port = strtoul(at + 1, &end, 10);
        if (*end || port == 0 || port > 65535) {
            free(p);
            *ret_err = -EINVAL;
            return NULL;
        }
        p->port = (uint16_t)port;
        *at = '\0';
    }
    if (hash)
        p->keyed = 1;
    if (strncmp(base, "relay:", 6) == 0) {
        struct gw_relay_addr ra;
        if (gw_relay_addr_parse(base, &ra) < 0 || (p->port && !ra.has_ports)) {
            free(p);
            *ret_err = -EINVAL;
            return NULL;
        }
        memcpy(&p->sa, &ra.sa, sizeof(p->sa));
        p->salen = ra.salen;
        p->is_tcp = 1;
        p->relay = 1;
        p->keyed = ra.vm;
        snprintf(p->instance, sizeof(p->instance), "%s", ra.id);
    } else if (parse_addr(base, &p->sa, &p->salen, &p->is_tcp) < 0) {
        free(p);
        *ret_err = -EINVAL;
        return NULL;
    }
    memcpy(p->addr, addr, n + 1);
    p->key = key;
    p->u = u;
    p->next = u->buckets[key % BUCKETS];
    u->buckets[key % BUCKETS] = p;
    return p;
}

struct gw_upconn *gw_upstream_get(struct gw_upstreams *u, const char *addr, int *ret_reused,
                                  int *ret_err)
{
    struct gw_upool *p = pool_get(u, addr, ret_err);
    if (!p)
        return NULL;
    if (p->idle) {
        struct gw_upconn *uc = p->idle;
        idle_unlink(uc);
        GW_METRIC_INC(u->m, upstream_reuses);
        *ret_reused = 1;
        return uc;
    }
    struct gw_upconn *uc = calloc(1, sizeof(*uc));
    if (!uc) {
        if (p->refs == 0) {
            p->refs = 1;
            pool_unref(p);
        }
        *ret_err = -ENOMEM;
        return NULL;
    }
    p->refs++;
    uc->pool = p;
    int rc = gw_stream_connect(&uc->s, u->base, (struct sockaddr *)&p->sa, p->salen, u->scratch);
    if (rc < 0) {
        free(uc);
        pool_unref(p);
        *ret_err = rc;
        return NULL;
    }
    if (p->relay) {
        time_t now = time(NULL);
        if (p->hello_at != now || p->hello_len <= 0) {
            p->hello_len = cm_secret_relay_hello(u->gc->scheduler_secret ? u->gc->scheduler_secret
                                                                           : "",
                                                 p->instance, p->port ? "ports" : "app",
                                                 (int64_t)now, p->hello);
            p->hello_at = now;
        }
        /* no line (no secret, OpenSSL failed): the relay closes the connection, a 502 */
        if (p->hello_len > 0)
            evbuffer_add(uc->s.out, p->hello, (size_t)p->hello_len);
    }
    if (p->port && p->keyed) { /* a VM's agent wants the instance's key on the line */
        char key[CM_EXEC_KEY_LEN + 1];
        if (cm_secret_exec_key(u->gc->scheduler_secret, p->instance, key) == 0)
            evbuffer_add_printf(uc->s.out, "BERTH-PORT %u %s\r\n", p->port, key);
        /* else no line at all: the agent closes the connection, a 502 */
    } else if (p->port) { /* the agent's port selection line, before any request byte */
        evbuffer_add_printf(uc->s.out, "BERTH-PORT %u\r\n", p->port);
    }
    if (p->is_tcp) {
        int one = 1;
        setsockopt(uc->s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    gw_stream_read_enable(&uc->s);
    GW_METRIC_INC(u->m, upstream_connects);
    *ret_reused = 0;
    return uc;
}

struct gw_stream *gw_upconn_stream(struct gw_upconn *uc)
{
    return &uc->s;
}

void gw_upconn_release(struct gw_upconn *uc, int reusable)
{
    if (!uc)
        return;
    struct gw_upool *p = uc->pool;
    struct gw_upstreams *u = p->u;
    if (!reusable || p->n_idle >= u->gc->limits.upstream_idle_per_instance ||
        evbuffer_get_length(uc->s.in) || evbuffer_get_length(uc->s.out) ||
        uc->s.failed) {
        upconn_close(uc);
        return;
    }
    uc->idle = 1;
    uc->prev = NULL;
    uc->next = p->idle;
    if (p->idle)
        p->idle->prev = uc;
    p->idle = uc;
    p->n_idle++;
    u->n_idle++;
    gw_stream_setcb(&uc->s, idle_read_cb, NULL, idle_event_cb, uc);
    gw_stream_set_watermarks(&uc->s, 0, 0);
    gw_stream_set_timeouts(&uc->s, u->idle_timeout, NULL);
    gw_stream_read_enable(&uc->s);
}

size_t gw_upstreams_idle(const struct gw_upstreams *u)
{
    return u->n_idle;
}
