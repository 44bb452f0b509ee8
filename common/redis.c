#include "redis.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "compat.h"
#include "log.h"
#include "time.h"

const char cm_redis_err_timeout[] = "redis command timed out";
const char cm_redis_err_disconnected[] = "redis connection lost";
const char cm_redis_err_not_connected[] = "redis not connected";

#define BACKOFF_MIN (100 * CM_USEC_PER_MSEC)
#define BACKOFF_MAX (5 * CM_USEC_PER_SEC)
#define WATCHDOG_PERIOD (50 * CM_USEC_PER_MSEC)
#define MAX_ARGS CM_REDIS_MAX_ARGS

struct pending {
    struct pending *next;
    struct cm_redis *r;
    cm_redis_reply_cb cb;
    void *data;
    cm_usec_t sent;
    int script; /* -1, or the script to resend with EVAL on NOSCRIPT */
    int argc;
    char **argv; /* kept only for scripts (to resend); in the same allocation as <p> */
    size_t *lens;
};

struct sub {
    struct sub *next;
    char *channel;
    cm_redis_message_cb cb;
    void *data;
};

struct cm_redis {
    struct event_base *base;
    const struct cm_redis_config *cfg;
    redisAsyncContext *ac;
    enum cm_redis_state state;
    cm_redis_state_cb state_cb;
    void *state_data;
    struct event *retry_ev, *watchdog_ev;
    cm_usec_t backoff;
    cm_usec_t connect_started;
    struct pending *head, *tail; /* commands in flight, oldest first */
    struct sub *subs;
    int handshake_left;
    int handshake_failed;       /* this connection's handshake was refused (reported once) */
    cm_redis_refused_cb refused_cb;
    void *refused_data;
    char last_refusal[160];     /* reported refusal, until a handshake succeeds */
    /* Sentinel mode (cfg->sentinels): each connect first asks the sentinels, in turn, where
     * the primary is, and the handshake ends with ROLE, which must say master. A sentinel
     * connection subscribed to +switch-master drops the connection when the primary moves;
     * a READONLY answer (a demoted primary) drops it too. */
    size_t n_sentinels;
    size_t sentinel_next;    /* the sentinel asked next */
    size_t sentinel_tries;   /* sentinels asked in this round */
    redisAsyncContext *qac;  /* the query in flight, or NULL */
    cm_usec_t query_started;
    int query_got;           /* the query named a primary */
    char master_host[256];
    int master_port;
    size_t master_sentinel;  /* the sentinel that named it (the watch subscribes there) */
    redisAsyncContext *wac;  /* +switch-master subscription, or NULL */
    cm_usec_t watch_started;
    struct event *watch_ev;  /* re-opens it */
    int role_pending;        /* the handshake's ROLE has not answered */
    char addr[300];          /* cm_redis_address() */
};

static void start_connect(struct cm_redis *r);
static void query_done(struct cm_redis *r);
static void watch_open(struct cm_redis *r);
static void watch_later(struct cm_redis *r);

static void set_state(struct cm_redis *r, enum cm_redis_state st)
{
    int was = r->state == CM_REDIS_CONNECTED;
    r->state = st;
    int is = st == CM_REDIS_CONNECTED;
    if (was != is && r->state_cb)
        r->state_cb(r, is, r->state_data);
}

static void pending_free(struct pending *p)
{
    free(p);
}

static void unlink_pending(struct cm_redis *r, struct pending *p)
{
    /* Replies come in order, so <p> is nearly always the head. */
    struct pending **pp = &r->head;
    struct pending *prev = NULL;
    while (*pp && *pp != p) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = p->next;
    if (r->tail == p)
        r->tail = prev;
}

static void schedule_retry(struct cm_redis *r)
{
    struct timeval tv;
    cm_usec_to_tv(r->backoff, &tv);
    r->backoff = CM_MIN(r->backoff * 2, BACKOFF_MAX);
    evtimer_add(r->retry_ev, &tv);
}

static int send_pending(struct cm_redis *r, struct pending *p, int argc, const char **argv,
                        const size_t *lens);

/* Ends the connection now. hiredis's redisAsyncDisconnect() waits for the replies still due
 * (from a server that is gone they never come), and frees a context that has not connected
 * yet without the disconnect callback: so a connect in progress is freed here quietly, and an
 * established one is shut down, which makes hiredis take its error path at once (pending
 * callbacks get NULL replies, then on_disconnect). Either way a retry follows. */
static void drop_conn(struct cm_redis *r)
{
    redisAsyncContext *ac = r->ac;
    if (!ac)
        return;
    if (!(ac->c.flags & REDIS_CONNECTED)) {
        r->ac = NULL;
        ac->data = NULL; /* on_connect does nothing */
        redisAsyncFree(ac);
        if (r->state != CM_REDIS_CLOSED) {
            set_state(r, CM_REDIS_DISCONNECTED);
            schedule_retry(r);
        }
        return;
    }
    if (ac->c.fd >= 0)
        shutdown(ac->c.fd, SHUT_RDWR);
    redisAsyncDisconnect(ac);
}

static void on_reply(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct pending *p = privdata;
    struct cm_redis *r = p->r;
    redisReply *reply = rep;
    unlink_pending(r, p);
    if (reply && reply->type == REDIS_REPLY_ERROR && p->script >= 0 &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && r->state == CM_REDIS_CONNECTED) {
        /* Resend the same arguments with EVAL and the source. */
        const char *argv[MAX_ARGS + 3];
        size_t lens[MAX_ARGS + 3];
        const char *src = cm_store_script_source((enum cm_script)p->script);
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = src;
        lens[1] = strlen(src);
        argv[2] = "0";
        lens[2] = 1;
        for (int i = 0; i < p->argc; i++) {
            argv[3 + i] = p->argv[i];
            lens[3 + i] = p->lens[i];
        }
        p->script = -1; /* once */
        if (send_pending(r, p, p->argc + 3, argv, lens) == 0)
            return;
        if (p->cb)
            p->cb(NULL, cm_redis_err_disconnected, p->data);
        pending_free(p);
        return;
    }
    int demoted = r->n_sentinels && reply && reply->type == REDIS_REPLY_ERROR &&
                  strncmp(reply->str, "READONLY", 8) == 0;
    if (p->cb) {
        if (!reply)
            p->cb(NULL, ac->err ? cm_redis_err_disconnected : cm_redis_err_disconnected, p->data);
        else if (reply->type == REDIS_REPLY_ERROR)
            p->cb(NULL, reply->str, p->data);
        else
            p->cb(reply, NULL, p->data);
    }
    pending_free(p);
    if (demoted && r->ac == ac && r->state == CM_REDIS_CONNECTED) {
        /* A replica now: the primary moved. Reconnect through the sentinels. */
        cm_log_warn("redis", "%s:%d answered READONLY: asking the sentinels again",
                    r->master_host, r->master_port);
        drop_conn(r);
    }
}

static char *put_uint(char *q, size_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *q++ = tmp[--n];
    return q;
}

/* The command in RESP, in <buf> (<cap> bytes) when it fits, else in a new allocation (the
 * caller frees it when it is not <buf>); NULL when out of memory. hiredis's own formatter
 * (an sdscatfmt per argument) was most of the gateway's cost of a claim. */
static char *format_resp(char *buf, size_t cap, int argc, const char **argv, const size_t *lens,
                         size_t *ret_len)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++)
        need += lens[i] + 26;
    char *out = need <= cap ? buf : malloc(need);
    if (!out)
        return NULL;
    char *q = out;
    *q++ = '*';
    q = put_uint(q, (size_t)argc);
    *q++ = '\r', *q++ = '\n';
    for (int i = 0; i < argc; i++) {
        *q++ = '$';
        q = put_uint(q, lens[i]);
        *q++ = '\r', *q++ = '\n';
        memcpy(q, argv[i], lens[i]);
        q += lens[i];
        *q++ = '\r', *q++ = '\n';
    }
    *ret_len = (size_t)(q - out);
    return out;
}

static int send_pending(struct cm_redis *r, struct pending *p, int argc, const char **argv,
                        const size_t *lens)
{
    p->sent = cm_now_mono();
    p->next = NULL;
    char stack[4096];
    size_t len;
    char *cmd = format_resp(stack, sizeof(stack), argc, argv, lens, &len);
    if (!cmd)
        return -ENOMEM;
    int rc = redisAsyncFormattedCommand(r->ac, on_reply, p, cmd, len);
    if (cmd != stack)
        free(cmd);
    if (rc != REDIS_OK)
        return -ENOTCONN;
    if (r->tail)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    return 0;
}

static void on_subscribe_reply(redisAsyncContext *ac, void *rep, void *privdata);

static void on_handshake(struct redisReply *reply, const char *err, void *data)
{
    struct cm_redis *r = data;
    (void)reply;
    if (err) {
        /* Wrong user, password or db: keep retrying with backoff. The first refusal of this
         * connection is what Redis said (AUTH comes first); its later commands only fail for
         * the same reason. Each different refusal is reported once. */
        if (!r->handshake_failed && err != cm_redis_err_disconnected &&
            err != cm_redis_err_timeout && strcmp(err, r->last_refusal) != 0) {
            snprintf(r->last_refusal, sizeof(r->last_refusal), "%s", err);
            if (r->refused_cb)
                r->refused_cb(r, err, r->refused_data);
        }
        r->handshake_failed = 1;
        if (r->ac)
            redisAsyncDisconnect(r->ac);
        return;
    }
    if (r->handshake_failed)
        return;
    if (r->role_pending && reply && reply->type == REDIS_REPLY_ARRAY) {
        r->role_pending = 0;
        const redisReply *e = reply->elements ? reply->element[0] : NULL;
        if (!e || e->type != REDIS_REPLY_STRING || strcmp(e->str, "master") != 0) {
            cm_log_warn("redis", "%s:%d is not the primary (ROLE %s): asking the sentinels again",
                        r->master_host, r->master_port,
                        e && e->type == REDIS_REPLY_STRING ? e->str : "?");
            r->handshake_failed = 1;
            if (r->ac)
                redisAsyncDisconnect(r->ac);
            return;
        }
    }
    if (--r->handshake_left == 0) {
        r->backoff = BACKOFF_MIN;
        r->last_refusal[0] = '\0';
        set_state(r, CM_REDIS_CONNECTED);
        for (struct sub *s = r->subs; s; s = s->next)
            redisAsyncCommand(r->ac, on_subscribe_reply, NULL, "SUBSCRIBE %s", s->channel);
        if (r->n_sentinels && !r->wac)
            watch_open(r);
    }
}

static void on_message(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct cm_redis *r = ac->data;
    redisReply *reply = rep;
    (void)privdata;
    if (!r || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    if (reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    const char *ch = reply->element[1]->str;
    for (struct sub *s = r->subs; s; s = s->next)
        if (strcmp(s->channel, ch) == 0)
            s->cb(ch, reply->element[2]->str, reply->element[2]->len, s->data);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct cm_redis *r = ac->data;
    if (!r)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        r->ac = NULL;
        set_state(r, CM_REDIS_DISCONNECTED);
        schedule_retry(r);
        return;
    }
    r->handshake_left = 1;
    r->handshake_failed = 0;
    if (r->cfg->password && *r->cfg->password)
        r->handshake_left++;
    if (r->cfg->db)
        r->handshake_left++;
    /* Pretend connected for the handshake commands only. */
    r->state = CM_REDIS_CONNECTING;
    if (r->cfg->password && *r->cfg->password) {
        /* AUTH <username> <password> for an ACL user (Redis 6+), AUTH <password> for the
         * default user (requirepass). */
        int user = r->cfg->username && *r->cfg->username;
        const char *argv[] = {"AUTH", user ? r->cfg->username : r->cfg->password,
                              r->cfg->password};
        size_t lens[] = {4, strlen(argv[1]), strlen(r->cfg->password)};
        struct pending *p = calloc(1, sizeof(*p));
        if (p) {
            p->r = r, p->cb = on_handshake, p->data = r, p->script = -1;
            if (send_pending(r, p, user ? 3 : 2, argv, lens) < 0)
                pending_free(p);
        }
    }
    if (r->cfg->db) {
        char db[16];
        snprintf(db, sizeof(db), "%u", r->cfg->db);
        const char *argv[] = {"SELECT", db};
        size_t lens[] = {6, strlen(db)};
        struct pending *p = calloc(1, sizeof(*p));
        if (p) {
            p->r = r, p->cb = on_handshake, p->data = r, p->script = -1;
            if (send_pending(r, p, 2, argv, lens) < 0)
                pending_free(p);
        }
    }
    /* PING, or in sentinel mode ROLE: the server the sentinels named must still be the
     * primary (a failover may have demoted it since; its writes would fail). */
    const char *argv[] = {r->n_sentinels ? "ROLE" : "PING"};
    size_t lens[] = {4};
    struct pending *p = calloc(1, sizeof(*p));
    if (p) {
        p->r = r, p->cb = on_handshake, p->data = r, p->script = -1;
        r->role_pending = r->n_sentinels != 0;
        if (send_pending(r, p, 1, argv, lens) < 0)
            pending_free(p);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct cm_redis *r = ac->data;
    (void)status;
    if (!r)
        return;
    /* hiredis has already failed every callback with a NULL reply; the list is empty. */
    r->ac = NULL;
    r->head = r->tail = NULL;
    if (r->state == CM_REDIS_CLOSED)
        return;
    set_state(r, CM_REDIS_DISCONNECTED);
    schedule_retry(r);
}

/* "host:port" into <host> (<cap> bytes) and the port (6379 when none). */
static int split_addr(const char *addr, char *host, size_t cap)
{
    const char *colon = strrchr(addr, ':');
    int port = colon ? atoi(colon + 1) : 6379;
    size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
    if (hl >= cap)
        hl = cap - 1;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    return port;
}

static void sentinel_query(struct cm_redis *r);
static void connect_with(struct cm_redis *r, redisAsyncContext *ac);

static void start_connect(struct cm_redis *r)
{
    if (r->n_sentinels) {
        r->sentinel_tries = 0;
        sentinel_query(r);
        return;
    }
    const char *addr = r->cfg->address;
    redisAsyncContext *ac;
    if (strncmp(addr, "unix:", 5) == 0) {
        ac = redisAsyncConnectUnix(addr + 5);
    } else {
        char host[256];
        int port = split_addr(addr, host, sizeof(host));
        ac = redisAsyncConnect(host, port);
    }
    connect_with(r, ac);
}

static void connect_with(struct cm_redis *r, redisAsyncContext *ac)
{
    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        set_state(r, CM_REDIS_DISCONNECTED);
        schedule_retry(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    r->connect_started = cm_now_mono();
    r->handshake_left = 0; /* the watchdog times the connect (a refused handshake left it) */
    if (ac->c.connection_type == REDIS_CONN_TCP)
        redisEnableKeepAlive(&ac->c); /* a primary whose host vanished is noticed */
    set_state(r, CM_REDIS_CONNECTING);
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Push messages arrive through the reply callback of the SUBSCRIBE; route them here. */
}

/* ---------------------------------------------------------------- Sentinel */

/* The query of one sentinel ended: on to the primary it named, or to the next sentinel, or
 * (every sentinel asked) a retry after the backoff. */
static void query_done(struct cm_redis *r)
{
    if (r->state == CM_REDIS_CLOSED)
        return;
    if (r->query_got) {
        r->query_got = 0;
        connect_with(r, redisAsyncConnect(r->master_host, r->master_port));
        return;
    }
    if (r->sentinel_tries < r->n_sentinels) {
        sentinel_query(r);
        return;
    }
    set_state(r, CM_REDIS_DISCONNECTED);
    schedule_retry(r);
}

static void on_query_reply(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct cm_redis *r = ac->data;
    redisReply *reply = rep;
    (void)privdata;
    if (!r)
        return;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_STRING &&
        reply->element[0]->len < sizeof(r->master_host)) {
        int port = atoi(reply->element[1]->str);
        size_t asked = (r->sentinel_next + r->n_sentinels - 1) % r->n_sentinels;
        if (port > 0 && port < 65536) {
            if (strcmp(r->master_host, reply->element[0]->str) != 0 || r->master_port != port)
                cm_log_info("redis", "sentinel %s names %s:%d the primary of %s",
                            r->cfg->sentinels[asked], reply->element[0]->str, port,
                            r->cfg->master_name);
            memcpy(r->master_host, reply->element[0]->str, reply->element[0]->len + 1);
            r->master_port = port;
            r->master_sentinel = asked;
            r->query_got = 1;
        }
    }
    redisAsyncDisconnect(ac); /* on_query_disconnect goes on */
}

static void on_query_connect(const redisAsyncContext *ac, int status)
{
    struct cm_redis *r = ac->data;
    if (!r)
        return;
    if (status != REDIS_OK) { /* hiredis frees the context; no disconnect callback */
        r->qac = NULL;
        query_done(r);
        return;
    }
    redisAsyncCommand(r->qac, on_query_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                      r->cfg->master_name);
}

static void on_query_disconnect(const redisAsyncContext *ac, int status)
{
    struct cm_redis *r = ac->data;
    (void)status;
    if (!r)
        return;
    r->qac = NULL;
    query_done(r);
}

/* Asks the next sentinel where the primary is. */
/* A connection to sentinel <i> with its callbacks (keepalive on: a sentinel host that
 * vanished is noticed), or NULL when it cannot even start. */
static redisAsyncContext *sentinel_connect(struct cm_redis *r, size_t i,
                                           redisConnectCallback *on_conn,
                                           redisDisconnectCallback *on_disc)
{
    char host[256];
    int port = split_addr(r->cfg->sentinels[i], host, sizeof(host));
    redisAsyncContext *c = redisAsyncConnect(host, port);
    if (!c || c->err) {
        if (c)
            redisAsyncFree(c);
        return NULL;
    }
    c->data = r;
    redisEnableKeepAlive(&c->c);
    redisLibeventAttach(c, r->base);
    redisAsyncSetConnectCallback(c, on_conn);
    redisAsyncSetDisconnectCallback(c, on_disc);
    return c;
}

static void sentinel_query(struct cm_redis *r)
{
    size_t i = r->sentinel_next;
    r->sentinel_next = (i + 1) % r->n_sentinels;
    r->sentinel_tries++;
    r->query_got = 0;
    r->qac = sentinel_connect(r, i, on_query_connect, on_query_disconnect);
    if (!r->qac) {
        query_done(r);
        return;
    }
    r->query_started = cm_now_mono();
    set_state(r, CM_REDIS_CONNECTING);
}

/* +switch-master "<name> <old ip> <old port> <new ip> <new port>": our primary moved. */
static void on_switch(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct cm_redis *r = ac->data;
    redisReply *reply = rep;
    (void)privdata;
    if (!r || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[160], ip[256];
    int port;
    if (sscanf(reply->element[2]->str, "%159s %*s %*d %255s %d", name, ip, &port) != 3 ||
        strcmp(name, r->cfg->master_name) != 0)
        return;
    if (strcmp(ip, r->master_host) == 0 && port == r->master_port)
        return;
    cm_log_info("redis", "+switch-master: the primary of %s is now %s:%d (was %s:%d)", name, ip,
                port, r->master_host, r->master_port);
    if (r->state == CM_REDIS_CLOSED)
        return;
    if (r->ac) {
        r->backoff = BACKOFF_MIN; /* the reconnect asks the sentinels, at once */
        drop_conn(r);
    } else if (!r->qac && r->state == CM_REDIS_DISCONNECTED) {
        /* Waiting out a backoff (the old primary is gone): the new one is known now. */
        evtimer_del(r->retry_ev);
        r->backoff = BACKOFF_MIN;
        start_connect(r);
    }
}

static void watch_later(struct cm_redis *r)
{
    struct timeval tv = {1, 0}; /* a sentinel that went away: another in a second */
    evtimer_add(r->watch_ev, &tv);
}

static void on_watch_connect(const redisAsyncContext *ac, int status)
{
    struct cm_redis *r = ac->data;
    if (!r)
        return;
    if (status != REDIS_OK) {
        r->wac = NULL;
        watch_later(r);
        return;
    }
    redisAsyncCommand(r->wac, on_switch, NULL, "SUBSCRIBE +switch-master");
}

static void on_watch_disconnect(const redisAsyncContext *ac, int status)
{
    struct cm_redis *r = ac->data;
    (void)status;
    if (!r)
        return;
    r->wac = NULL;
    if (r->state != CM_REDIS_CLOSED)
        watch_later(r);
}

static void watch_open(struct cm_redis *r)
{
    if (r->wac || r->state == CM_REDIS_CLOSED)
        return;
    r->wac = sentinel_connect(r, r->master_sentinel, on_watch_connect, on_watch_disconnect);
    if (!r->wac) {
        watch_later(r);
        return;
    }
    r->watch_started = cm_now_mono();
}

static void on_watch_timer(evutil_socket_t fd, short what, void *arg)
{
    struct cm_redis *r = arg;
    (void)fd, (void)what;
    /* The sentinel that named the primary may be the one that is gone: take the next. */
    r->master_sentinel = (r->master_sentinel + 1) % r->n_sentinels;
    watch_open(r);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    start_connect(arg);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct cm_redis *r = arg;
    (void)fd, (void)what;
    cm_usec_t now = cm_now_mono();
    int stuck = 0;
    if (r->ac && r->state == CM_REDIS_CONNECTING && r->handshake_left == 0 &&
        now - r->connect_started > r->cfg->connect_timeout)
        stuck = 1;
    if (r->ac && r->head && now - r->head->sent > r->cfg->command_timeout)
        stuck = 1;
    if (r->wac && !(r->wac->c.flags & REDIS_CONNECTED) &&
        now - r->watch_started > r->cfg->connect_timeout) {
        redisAsyncContext *w = r->wac; /* a sentinel that takes no connection: another */
        r->wac = NULL;
        w->data = NULL;
        redisAsyncFree(w);
        watch_later(r);
    }
    if (r->qac && now - r->query_started > r->cfg->connect_timeout) {
        /* A sentinel that does not answer: free the query quietly, ask the next one. */
        redisAsyncContext *q = r->qac;
        r->qac = NULL;
        q->data = NULL;
        redisAsyncFree(q);
        query_done(r);
    }
    if (stuck) {
        /* Fail everything in flight with a timeout, then drop the connection. */
        struct pending *p = r->head;
        r->head = r->tail = NULL;
        while (p) {
            struct pending *next = p->next;
            if (p->cb && p->cb != on_handshake)
                p->cb(NULL, cm_redis_err_timeout, p->data);
            p->cb = NULL; /* hiredis still calls on_reply with NULL: make it a no-op */
            p->next = NULL;
            p = next;
        }
        drop_conn(r);
    }
}

struct cm_redis *cm_redis_create(struct event_base *base, const struct cm_redis_config *cfg,
                                 cm_redis_state_cb state_cb, void *data)
{
    struct cm_redis *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->base = base;
    r->cfg = cfg;
    r->state_cb = state_cb;
    r->state_data = data;
    r->backoff = BACKOFF_MIN;
    r->retry_ev = evtimer_new(base, on_retry, r);
    r->watchdog_ev = event_new(base, -1, EV_PERSIST, on_watchdog, r);
    r->watch_ev = evtimer_new(base, on_watch_timer, r);
    for (char **s = cfg->sentinels; s && *s; s++)
        r->n_sentinels++;
    if (!r->retry_ev || !r->watchdog_ev || !r->watch_ev) {
        cm_redis_destroy(r);
        return NULL;
    }
    struct timeval tv;
    cm_usec_to_tv(WATCHDOG_PERIOD, &tv);
    event_add(r->watchdog_ev, &tv);
    start_connect(r);
    return r;
}

void cm_redis_destroy(struct cm_redis *r)
{
    if (!r)
        return;
    r->state = CM_REDIS_CLOSED;
    r->state_cb = NULL;
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        /* Callbacks get NULL replies: they must not touch <r>, which stays valid here. */
        redisAsyncFree(ac);
    }
    redisAsyncContext *side[2] = {r->qac, r->wac};
    r->qac = r->wac = NULL;
    for (int i = 0; i < 2; i++) {
        if (side[i]) {
            side[i]->data = NULL; /* their callbacks do nothing */
            redisAsyncFree(side[i]);
        }
    }
    if (r->watch_ev)
        event_free(r->watch_ev);
    if (r->retry_ev)
        event_free(r->retry_ev);
    if (r->watchdog_ev)
        event_free(r->watchdog_ev);
    struct sub *s = r->subs;
    while (s) {
        struct sub *next = s->next;
        free(s->channel);
        free(s);
        s = next;
    }
    free(r);
}

enum cm_redis_state cm_redis_state(const struct cm_redis *r)
{
    return r->state;
}

void cm_redis_set_refused_cb(struct cm_redis *r, cm_redis_refused_cb cb, void *data)
{
    r->refused_cb = cb;
    r->refused_data = data;
}

const char *cm_redis_address(struct cm_redis *r)
{
    if (!r->n_sentinels)
        return r->cfg->address;
    if (!r->master_port)
        snprintf(r->addr, sizeof(r->addr), "sentinel:%s", r->cfg->master_name);
    else
        snprintf(r->addr, sizeof(r->addr), "%s:%d", r->master_host, r->master_port);
    return r->addr;
}

const char *cm_redis_prefix(const struct cm_redis *r)
{
    return r->cfg->prefix;
}

int cm_redis_argv(struct cm_redis *r, cm_redis_reply_cb cb, void *data, int argc,
                  const char **argv, const size_t *lens)
{
    if (r->state != CM_REDIS_CONNECTED || !r->ac)
        return -ENOTCONN;
    struct pending *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->r = r, p->cb = cb, p->data = data, p->script = -1;
    int rc = send_pending(r, p, argc, argv, lens);
    if (rc < 0)
        pending_free(p);
    return rc;
}

int cm_redis_cmd(struct cm_redis *r, cm_redis_reply_cb cb, void *data, const char *fmt, ...)
{
    if (r->state != CM_REDIS_CONNECTED || !r->ac)
        return -ENOTCONN;
    struct pending *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->r = r, p->cb = cb, p->data = data, p->script = -1;
    p->sent = cm_now_mono();
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, on_reply, p, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        pending_free(p);
        return -ENOTCONN;
    }
    if (r->tail)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    return 0;
}

int cm_redis_script(struct cm_redis *r, enum cm_script s, cm_redis_reply_cb cb, void *data,
                    int argc, const char **argv, const size_t *lens)
{
    if (r->state != CM_REDIS_CONNECTED || !r->ac)
        return -ENOTCONN;
    if (argc > MAX_ARGS)
        return -E2BIG;
    /* One allocation for the command and the copy of its arguments (kept to resend with EVAL
     * on NOSCRIPT): a claim has fifteen of them, a malloc each showed in the churn profile. */
    size_t bytes = sizeof(struct pending) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 0; i < argc; i++)
        bytes += lens[i] + 1;
    struct pending *p = malloc(bytes);
    if (!p)
        return -ENOMEM;
    memset(p, 0, sizeof(*p));
    p->r = r, p->cb = cb, p->data = data, p->script = (int)s, p->argc = argc;
    p->argv = (char **)(p + 1);
    p->lens = (size_t *)(p->argv + argc);
    char *at = (char *)(p->lens + argc);
    for (int i = 0; i < argc; i++) {
        p->argv[i] = at;
        memcpy(at, argv[i], lens[i]);
        at[lens[i]] = '\0';
        at += lens[i] + 1;
        p->lens[i] = lens[i];
    }
    const char *full[MAX_ARGS + 3];
    size_t flens[MAX_ARGS + 3];
    full[0] = "EVALSHA", flens[0] = 7;
    full[1] = cm_store_script_sha(s), flens[1] = 40;
    full[2] = "0", flens[2] = 1;
    for (int i = 0; i < argc; i++)
        full[3 + i] = argv[i], flens[3 + i] = lens[i];
    int rc = send_pending(r, p, argc + 3, full, flens);
    if (rc < 0)
        pending_free(p);
    return rc;
}

static void on_subscribe_reply(redisAsyncContext *ac, void *rep, void *privdata)
{
    on_message(ac, rep, privdata);
}

int cm_redis_subscribe(struct cm_redis *r, const char *channel, cm_redis_message_cb cb,
                       void *data)
{
    struct sub *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->channel = strdup(channel);
    if (!s->channel) {
        free(s);
        return -ENOMEM;
    }
    s->cb = cb;
    s->data = data;
    s->next = r->subs;
    r->subs = s;
    if (r->state == CM_REDIS_CONNECTED && r->ac)
        redisAsyncCommand(r->ac, on_subscribe_reply, NULL, "SUBSCRIBE %s", channel);
    return 0;
}
