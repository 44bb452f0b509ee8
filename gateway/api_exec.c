#include "gateway/api_exec.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <hiredis/hiredis.h>

#include "common/frame.h"
#include "common/httpd.h"
#include "common/json.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/secret.h"
#include "gateway/metrics.h"
#include "common/store.h"
#include "common/time.h"
#include "gateway/api.h"
#include "gateway/config.h"
#include "gateway/upstream.h"

#define STREAM_HIGH (256 * 1024) /* output queued for the client: stop reading the sandbox */
/* limits.max_execs: a running command holds a lease in Redis (P execs:{tenant}) renewed
 * every EXEC_LEASE_MS / 3, so a gateway that dies frees its tenants' slots within a lease. */
#define EXEC_LEASE_MS 30000

struct chan;

struct gw_exec {
    struct cm_httpd_req *req; /* NULL once the client is gone or answered */
    struct bufferevent *bev;
    struct event *timer; /* the first frame must come within limits.resume_timeout */
    const struct gw_config *gc;
    int streaming, sse, answered;
    char instance[96];
    struct gw_exec_audit audit;
    char fop;                         /* files: 'G', 'W', 'U', 'L'; 0 for a command */
    char fpath[GW_FILE_PATH_MAX + 2]; /* "/" and the sandbox path */
    int entries;                      /* L: entries streamed so far */
    uint64_t up_bytes, up_max;        /* W: the upload's bytes so far, its bound */
    int up_waiting;                   /* W: reading the client waits for the channel */
    /* max_execs: the slot (a lease in Redis) this command holds or waits for */
    char slot[64];
    int slot_waiting; /* the EXECS begin is in flight: its reply frees us if gone */
    int slot_held;
    int gone;         /* the client went away while the slot was asked for */
    struct event *renew;
    struct chan *ch;  /* kept until the slot is given (then the agent is connected) */
    char cmdline[512];
};

/* EVENT script: <type> with the session, instance, key id and <n> more field/value pairs. */
static void audit_event(struct gw_exec *x, const char *type, int n, const char **kv)
{
    char now[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    const char *argv[24] = {x->gc->common->redis.prefix,
                            now,
                            x->audit.tenant,
                            type,
                            "session",
                            x->audit.session,
                            "instance",
                            x->instance,
                            "key_id",
                            x->audit.key_id};
    size_t lens[24];
    int argc = 10;
    for (int i = 0; i < n && argc < 24; i++)
        argv[argc++] = kv[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (cm_redis_script(x->audit.redis, CM_SCRIPT_EVENT, NULL, NULL, argc, argv, lens) < 0)
        cm_log_warn("admin", "exec event not recorded type=%s session=%s", type, x->audit.session);
}

static void write_b64(struct cm_jbuf *b, const unsigned char *p, size_t n);
static void audit_event(struct gw_exec *x, const char *type, int n, const char **kv);
static void on_drain(void *arg);
static void exec_go(struct gw_exec *x, const struct chan *ch);
static void on_slot(struct redisReply *reply, const char *err, void *data);

static void slot_call(struct gw_exec *x, const char *op, cm_redis_reply_cb cb)
{
    char now[24], lease[16], max[16];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    snprintf(lease, sizeof(lease), "%d", EXEC_LEASE_MS);
    snprintf(max, sizeof(max), "%" PRIu32, x->audit.max_execs);
    const char *argv[] = {x->gc->common->redis.prefix, x->audit.tenant, now, lease, max,
                          x->slot, op, x->audit.session};
    size_t lens[CM_ARRAY_SIZE(argv)];
    for (size_t i = 0; i < CM_ARRAY_SIZE(argv); i++)
        lens[i] = strlen(argv[i]);
    if (cm_redis_script(x->audit.redis, CM_SCRIPT_EXECS, cb, cb ? x : NULL,
                        (int)CM_ARRAY_SIZE(argv), argv, lens) < 0 && cb)
        cb(NULL, cm_redis_err_not_connected, x);
}

static void exec_free(struct gw_exec *x)
{
    if (x->slot_waiting) { /* the EXECS reply is coming: it frees us (and gives the slot) */
        x->gone = 1;
        if (x->req)
            cm_httpd_set_close_cb(x->req, NULL, NULL);
        x->req = NULL;
        return;
    }
    if (x->slot_held)
        slot_call(x, "end", NULL); /* a lease left behind would only expire */
    if (x->renew)
        event_free(x->renew);
    free(x->ch);
    if (x->req)
        cm_httpd_set_close_cb(x->req, NULL, NULL);
    if (x->bev)
        bufferevent_free(x->bev); /* the agent sees the close and kills the command */
    if (x->timer)
        event_free(x->timer);
    free(x);
}

/* Ends the exchange: an error answer when nothing was streamed yet, else the stream's end. */
static void finish(struct gw_exec *x, enum gw_err e, const char *msg)
{
    if (x->req && !x->streaming)
        gw_api_reply_error(x->req, e, msg, x->gc->retry_after);
    else if (x->req)
        cm_httpd_stream_end(x->req);
    x->req = NULL;
    exec_free(x);
}

static void on_client_gone(void *arg)
{
    struct gw_exec *x = arg;
    x->req = NULL; /* gone with its connection */
    exec_free(x);
}

/* Appends one event object to the stream. Returns -1 when the client is gone. */
static int emit(struct gw_exec *x, const char *type, struct cm_jbuf *obj)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    if (x->sse)
        cm_jbuf_printf(&b, "event: %s\ndata: ", type);
    cm_jbuf_raw(&b, obj->data ? obj->data : "", obj->len);
    cm_jbuf_raw(&b, x->sse ? "\n\n" : "\n", x->sse ? 2 : 1);
    long queued = b.failed || obj->failed ? -ENOMEM : cm_httpd_stream_write(x->req, b.data, b.len);
    cm_jbuf_fini(&b);
    if (queued < 0)
        return -1;
    return queued > STREAM_HIGH ? 1 : 0;
}

static void write_b64(struct cm_jbuf *b, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        q[0] = tab[v >> 18 & 63];
        q[1] = tab[v >> 12 & 63];
        q[2] = i + 1 < n ? tab[v >> 6 & 63] : '=';
        q[3] = i + 2 < n ? tab[v & 63] : '=';
        cm_jbuf_raw(b, q, 4);
    }
}

static void on_drain(void *arg)
{
    struct gw_exec *x = arg;
    bufferevent_enable(x->bev, EV_READ);
}

static int begin(struct gw_exec *x)
{
    if (x->streaming)
        return 0;
    if (x->timer)
        evtimer_del(x->timer);
    (void)cm_httpd_add_header(x->req, "Cache-Control", "no-store");
    (void)cm_httpd_add_header(x->req, "X-Berth-Instance", x->instance);
    if (cm_httpd_stream_begin(x->req, 200, x->sse ? "text/event-stream" : "application/x-ndjson") <
        0)
        return -1;
    x->streaming = 1;
    return 0;
}

/* "code=N ms=M [timeout=1]" or "signal=N ms=M [timeout=1]" as the exit event. */
static void exit_event(struct cm_jbuf *b, const char *p, size_t n)
{
    char line[128];
    long code = -1, sig = -1;
    unsigned long long ms = 0;
    snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1), p);
    if (sscanf(line, "code=%ld ms=%llu", &code, &ms) != 2)
        sscanf(line, "signal=%ld ms=%llu", &sig, &ms);
    cm_jbuf_printf(b, "{\"type\":\"exit\",\"exit_code\":");
    if (code >= 0)
        cm_jbuf_printf(b, "%ld", code);
    else
        cm_jbuf_raw(b, "null", 4);
    cm_jbuf_raw(b, ",\"signal\":", 10);
    if (sig >= 0)
        cm_jbuf_printf(b, "%ld", sig);
    else
        cm_jbuf_raw(b, "null", 4);
    cm_jbuf_printf(b, ",\"timed_out\":%s,\"duration_ms\":%llu}",
                   strstr(line, " timeout=1") ? "true" : "false", ms);
}

/* The next frame waiting in <in> (made contiguous): its size, 0 for more bytes, or < 0. */
static long next_frame(struct evbuffer *in, char *type, const char **p, size_t *n)
{
    size_t avail = evbuffer_get_length(in);
    if (avail < CM_FRAME_HDR)
        return 0;
    size_t want = avail < CM_FRAME_HDR + CM_FRAME_MAX ? avail : CM_FRAME_HDR + CM_FRAME_MAX;
    const char *buf = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
    return buf ? cm_frame_next(buf, want, type, p, n) : -ENOMEM;
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct gw_exec *x = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        char type;
        const char *p;
        size_t n;
        long used = next_frame(in, &type, &p, &n);
        if (used == 0)
            return;
        if (used < 0) {
            finish(x, GW_ERR_BAD_GATEWAY, "the sandbox's agent broke the exec protocol");
            return;
        }
        if (type == 'F') {
            char msg[256];
            snprintf(msg, sizeof(msg), "%.*s", (int)(n < sizeof(msg) ? n : sizeof(msg) - 1), p);
            if (!x->streaming)
                finish(x, strncmp(msg, "busy", 4) == 0 ? GW_ERR_TOO_MANY_EXECS : GW_ERR_EXEC_FAILED,
                       msg);
            else
                finish(x, GW_ERR_INTERNAL, NULL);
            return;
        }
        if (!x->req || begin(x) < 0) {
            exec_free(x);
            return;
        }
        struct cm_jbuf obj;
        cm_jbuf_init(&obj);
        const char *ev = type == 'O' ? "stdout" : type == 'R' ? "stderr" : "exit";
        if (type == 'O' || type == 'R') {
            cm_jbuf_printf(&obj, "{\"type\":\"%s\",", ev);
            if (gw_api_utf8_valid(p, n)) {
                cm_jbuf_raw(&obj, "\"data\":", 7);
                cm_jbuf_str(&obj, p, n);
            } else {
                cm_jbuf_raw(&obj, "\"data_base64\":\"", 15);
                write_b64(&obj, (const unsigned char *)p, n);
                cm_jbuf_raw(&obj, "\"", 1);
            }
            cm_jbuf_raw(&obj, "}", 1);
        } else if (type == 'X') {
            exit_event(&obj, p, n);
            char line[128], *sp;
            snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) ? n : sizeof(line) - 1), p);
            const char *kv[4] = {"end", line, "timed_out", strstr(line, " timeout=1") ? "1" : "0"};
            if ((sp = strstr(line, " timeout=1")))
                *sp = '\0';
            audit_event(x, "exec_ended", 4, kv);
        } else {
            cm_jbuf_fini(&obj);
            finish(x, GW_ERR_BAD_GATEWAY, "the sandbox's agent broke the exec protocol");
            return;
        }
        int rc = emit(x, ev, &obj);
        cm_jbuf_fini(&obj);
        evbuffer_drain(in, (size_t)used);
        if (rc < 0) {
            exec_free(x);
            return;
        }
        if (type == 'X') {
            finish(x, GW_ERR_INTERNAL, NULL);
            return;
        }
        if (rc > 0) { /* the client is behind: wait for it */
            bufferevent_disable(bev, EV_READ);
            cm_httpd_stream_on_drain(x->req, on_drain, x);
            return;
        }
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct gw_exec *x = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        return;
    /* The sandbox closed before the end: it ended, or its agent did. */
    if (x->fop && x->streaming && x->req) { /* a download or listing cut short: cut it too */
        cm_httpd_set_close_cb(x->req, NULL, NULL);
        cm_httpd_stream_abort(x->req);
        x->req = NULL;
        exec_free(x);
        return;
    }
    if (x->streaming && x->req) {
        struct cm_jbuf obj;
        cm_jbuf_init(&obj);
        cm_jbuf_cstr(&obj, "the sandbox ended the command's connection before its end");
        struct cm_jbuf ev;
        cm_jbuf_init(&ev);
        cm_jbuf_raw(&ev, "{\"type\":\"error\",\"message\":", 26);
        cm_jbuf_raw(&ev, obj.data ? obj.data : "\"\"", obj.data ? obj.len : 2);
        cm_jbuf_raw(&ev, "}", 1);
        (void)emit(x, "error", &ev);
        cm_jbuf_fini(&ev);
        cm_jbuf_fini(&obj);
    }
    finish(x, GW_ERR_INSTANCE_LOST, "the session's sandbox closed the exec connection");
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    finish(arg, GW_ERR_INSTANCE_UNAVAILABLE,
           "the session's sandbox did not take the command within limits.resume_timeout");
}

static int put_frame(struct evbuffer *o, char type, const char *p, size_t n)
{
    char hdr[CM_FRAME_HDR];
    cm_frame_header(hdr, type, n);
    return evbuffer_add(o, hdr, sizeof(hdr)) < 0 || (n && evbuffer_add(o, p, n) < 0) ? -1 : 0;
}

/* ------------------------------------------------------------------ files */

/* 'F' of a file operation: "<code>: <message>". */
static enum gw_err file_error(const char *msg)
{
    static const struct {
        const char *code;
        enum gw_err e;
    } map[] = {{"not_found:", GW_ERR_NOT_FOUND},          {"bad_path:", GW_ERR_INVALID_ARGUMENT},
               {"not_a_file:", GW_ERR_CONFLICT},          {"not_a_directory:", GW_ERR_CONFLICT},
               {"not_empty:", GW_ERR_CONFLICT},           {"denied:", GW_ERR_PERMISSION_DENIED},
               {"no_space:", GW_ERR_INSUFFICIENT_STORAGE}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strncmp(msg, map[i].code, strlen(map[i].code)) == 0)
            return map[i].e;
    return GW_ERR_INTERNAL;
}

/* L: one entry "<type>\0<size>\0<mtime>\0<mode>\0<name>" as JSON. */
static void entry_json(struct cm_jbuf *b, const char *p, size_t n)
{
    const char *f[5];
    size_t fl[5], k = 0, start = 0;
    for (size_t i = 0; i <= n && k < 5; i++)
        if (i == n || (p[i] == '\0' && k < 4)) {
            f[k] = p + start;
            fl[k++] = i - start;
            start = i + 1;
        }
    if (k != 5 || fl[0] != 1) {
        cm_jbuf_raw(b, "null", 4);
        return;
    }
    const char *type = f[0][0] == 'f'   ? "file"
                       : f[0][0] == 'd' ? "directory"
                       : f[0][0] == 'l' ? "symlink"
                                        : "other";
    cm_jbuf_raw(b, "{\"name\":", 8);
    if (gw_api_utf8_valid(f[4], fl[4])) {
        cm_jbuf_str(b, f[4], fl[4]);
    } else {
        cm_jbuf_raw(b, "null,\"name_base64\":\"", 20);
        write_b64(b, (const unsigned char *)f[4], fl[4]);
        cm_jbuf_raw(b, "\"", 1);
    }
    cm_jbuf_printf(b, ",\"type\":\"%s\",\"size\":%.*s,\"mtime_ms\":%.*s,\"mode\":\"%.*s\"}", type,
                   (int)fl[1], f[1], (int)fl[2], f[2], (int)fl[3], f[3]);
}

static void on_file_read(struct bufferevent *bev, void *arg)
{
    struct gw_exec *x = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        char type;
        const char *p;
        size_t n;
        long used = next_frame(in, &type, &p, &n);
        if (used == 0)
            return;
        if (used < 0 || (type != 'O' && type != 'X' && type != 'F') ||
            (type == 'O' && x->fop != 'G' && x->fop != 'L')) {
            finish(x, GW_ERR_BAD_GATEWAY, "the sandbox's agent broke the exec protocol");
            return;
        }
        if (!x->req) {
            exec_free(x);
            return;
        }
        char msg[300];
        snprintf(msg, sizeof(msg), "%.*s", (int)(n < sizeof(msg) ? n : sizeof(msg) - 1), p);
        if (type == 'F') {
            finish(x, x->streaming ? GW_ERR_INTERNAL : file_error(msg), msg);
            return;
        }
        if (type == 'X' && (x->fop == 'W' || x->fop == 'U')) {
            unsigned long long size = 0;
            sscanf(msg, "size=%llu", &size);
            char sz[24];
            snprintf(sz, sizeof(sz), "%llu", size);
            const char *kv[4] = {"path", x->fpath, "size", sz};
            audit_event(x, x->fop == 'W' ? "file_written" : "file_deleted", x->fop == 'W' ? 4 : 2,
                        kv);
            struct cm_jbuf b;
            cm_jbuf_init(&b);
            if (x->fop == 'W') {
                cm_jbuf_raw(&b, "{\"path\":", 8);
                cm_jbuf_cstr(&b, x->fpath);
                cm_jbuf_printf(&b, ",\"size\":%llu}", size);
            }
            gw_api_reply(x->req, x->fop == 'W' ? 200 : 204, NULL, b.data ? b.data : "",
                         b.failed ? 0 : b.len);
            cm_jbuf_fini(&b);
            x->req = NULL;
            exec_free(x);
            return;
        }
        if (!x->streaming) {
            if (x->timer)
                evtimer_del(x->timer);
            (void)cm_httpd_add_header(x->req, "Cache-Control", "no-store");
            if (cm_httpd_stream_begin(x->req, 200,
                                      x->fop == 'G' ? "application/octet-stream"
                                                    : "application/json") < 0) {
                exec_free(x);
                return;
            }
            x->streaming = 1;
            if (x->fop == 'L') {
                struct cm_jbuf b;
                cm_jbuf_init(&b);
                cm_jbuf_raw(&b, "{\"path\":", 8);
                cm_jbuf_cstr(&b, x->fpath);
                cm_jbuf_raw(&b, ",\"entries\":[", 12);
                long q = b.failed ? -1 : cm_httpd_stream_write(x->req, b.data, b.len);
                cm_jbuf_fini(&b);
                if (q < 0) {
                    exec_free(x);
                    return;
                }
            }
        }
        long q;
        if (type == 'X') {
            q = x->fop == 'L' ? cm_httpd_stream_write(x->req, "]}", 2) : 0;
            evbuffer_drain(in, (size_t)used);
            finish(x, GW_ERR_INTERNAL, NULL);
            (void)q;
            return;
        }
        if (x->fop == 'G') {
            q = cm_httpd_stream_write(x->req, p, n);
        } else {
            struct cm_jbuf b;
            cm_jbuf_init(&b);
            if (x->entries++)
                cm_jbuf_raw(&b, ",", 1);
            entry_json(&b, p, n);
            q = b.failed ? -1 : cm_httpd_stream_write(x->req, b.data, b.len);
            cm_jbuf_fini(&b);
        }
        evbuffer_drain(in, (size_t)used);
        if (q < 0) {
            exec_free(x);
            return;
        }
        if (q > STREAM_HIGH) {
            bufferevent_disable(bev, EV_READ);
            cm_httpd_stream_on_drain(x->req, on_drain, x);
            return;
        }
    }
}

/* Where the sandbox's exec channel is, and the key it wants. */
struct chan {
    struct sockaddr_storage sa;
    socklen_t len;
    char key[CM_EXEC_KEY_LEN + 1]; /* "" for a process sandbox (its socket's mode is the lock) */
    char instance[96];
    int relay_len;                    /* > 0: the instance relay's line goes first */
    char relay[CM_RELAY_HELLO_MAX];
};

/* The channel of the instance at <addr> (<instance>: its id from the session record):
 *   "unix:<dir>/<id>/sock/app.sock" (process driver): the ports socket next to it;
 *   "vm:<host>:<port>" (microvm driver): the VM's ports forward at <port> + 1, opened with
 *   the instance's key (HMAC of scheduler.api_secret, common/secret.h);
 *   "relay:<host:port>/<kind>/<id>": the instance relay of its host, asked for the ports
 *   channel (scheduler/relay.h), then as the process or VM kind.
 * -1 when <addr> has no channel (a static upstream's "tcp:", a VM started by a scheduler
 * before VMs had the forward) or no key can be made. */
static int chan_of(const struct gw_config *gc, const char *addr, const char *instance,
                   struct chan *ret)
{
    size_t al = strlen(addr);
    memset(ret, 0, sizeof(*ret));
    if (strncmp(addr, "relay:", 6) == 0) {
        struct gw_relay_addr ra;
        if (gw_relay_addr_parse(addr, &ra) < 0 || !ra.has_ports ||
            (ra.vm && cm_secret_exec_key(gc->scheduler_secret, ra.id, ret->key) < 0) ||
            (ret->relay_len = gw_relay_hello(gc->scheduler_secret, &ra, "ports", ret->relay)) <= 0)
            return -1;
        memcpy(&ret->sa, &ra.sa, sizeof(ret->sa));
        ret->len = ra.salen;
        snprintf(ret->instance, sizeof(ret->instance), "%s", ra.id);
        return 0;
    }
    if (al > 3 && strncmp(addr, "vm:", 3) == 0) {
        int slen = (int)sizeof(ret->sa);
        if (!instance || !*instance || strlen(instance) >= sizeof(ret->instance) ||
            evutil_parse_sockaddr_port(addr + 3, (struct sockaddr *)&ret->sa, &slen) < 0 ||
            cm_secret_exec_key(gc->scheduler_secret, instance, ret->key) < 0)
            return -1;
        in_port_t *port = ret->sa.ss_family == AF_INET6
                              ? &((struct sockaddr_in6 *)&ret->sa)->sin6_port
                              : &((struct sockaddr_in *)&ret->sa)->sin_port;
        if (ntohs(*port) == 0 || ntohs(*port) == 65535)
            return -1;
        *port = htons((uint16_t)(ntohs(*port) + 1));
        ret->len = (socklen_t)slen;
        snprintf(ret->instance, sizeof(ret->instance), "%s", instance);
        return 0;
    }
    struct sockaddr_un *sa = (struct sockaddr_un *)&ret->sa;
    if (al <= 5 + 14 || strncmp(addr, "unix:", 5) != 0 ||
        strcmp(addr + al - 14, "/sock/app.sock") != 0 ||
        al - 5 - 9 + strlen("/ports.sock") >= sizeof(sa->sun_path))
        return -1;
    sa->sun_family = AF_UNIX;
    snprintf(sa->sun_path, sizeof(sa->sun_path), "%.*s/ports.sock", (int)(al - 5 - 9), addr + 5);
    ret->len = sizeof(*sa);
    const char *dir_end = addr + al - 14, *dir = dir_end;
    while (dir > addr + 5 && dir[-1] != '/')
        dir--;
    snprintf(ret->instance, sizeof(ret->instance), "%.*s", (int)(dir_end - dir), dir);
    return 0;
}

/* The channel's first line. */
static int put_hello(struct evbuffer *o, const struct chan *ch)
{
    if (ch->relay_len > 0 && evbuffer_add(o, ch->relay, (size_t)ch->relay_len) < 0)
        return -1;
    return ch->key[0] ? evbuffer_add_printf(o, "BERTH-EXEC %s\r\n", ch->key) < 0
                      : evbuffer_add(o, "BERTH-EXEC\r\n", 12);
}

/* The command's frames, then its stdin and its end. */
static int put_spec(struct evbuffer *o, const struct chan *ch, const struct gw_api_exec *spec)
{
    int rc = put_hello(o, ch);
    for (size_t i = 0; rc == 0 && i < spec->cmd->len; i++)
        rc = put_frame(o, 'A', spec->cmd->items[i]->str, spec->cmd->items[i]->len);
    for (size_t i = 0; rc == 0 && spec->env && i < spec->env->len; i++) {
        const struct cm_json *v = spec->env->items[i];
        size_t kl = strlen(spec->env->keys[i]);
        char *kv = malloc(kl + 1 + v->len);
        if (!kv)
            return -1;
        memcpy(kv, spec->env->keys[i], kl);
        kv[kl] = '=';
        memcpy(kv + kl + 1, v->str, v->len);
        rc = put_frame(o, 'E', kv, kl + 1 + v->len);
        free(kv);
    }
    if (rc == 0 && spec->cwd)
        rc = put_frame(o, 'D', spec->cwd->str, spec->cwd->len);
    char t[24];
    int tn = snprintf(t, sizeof(t), "%" PRIu64, spec->timeout_ms);
    if (rc == 0)
        rc = put_frame(o, 'T', t, (size_t)tn);
    if (rc == 0)
        rc = put_frame(o, 'S', NULL, 0);
    for (size_t off = 0; rc == 0 && spec->stdin_ && off < spec->stdin_->len;) {
        size_t n = spec->stdin_->len - off;
        if (n > CM_FRAME_MAX)
            n = CM_FRAME_MAX;
        rc = put_frame(o, 'I', spec->stdin_->str + off, n);
        off += n;
    }
    if (rc == 0)
        rc = put_frame(o, 'Z', NULL, 0);
    return rc;
}

/* Connects x->bev (its output already queued) to <ch>, bounded by resume_timeout. */
static void connect_agent(struct gw_exec *x, const struct chan *ch)
{
    struct timeval tv;
    cm_usec_to_tv(x->gc->limits.resume_timeout, &tv);
    evtimer_add(x->timer, &tv);
    if (bufferevent_socket_connect(x->bev, (const struct sockaddr *)&ch->sa, (int)ch->len) < 0) {
        finish(x, GW_ERR_INSTANCE_LOST, "cannot reach the session's sandbox");
        return;
    }
    if (ch->sa.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(bufferevent_getfd(x->bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    bufferevent_enable(x->bev, EV_READ);
}

/* W: more of the upload for the channel, as the client sends it. */
static int put_upload(struct evbuffer *o, const char *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        size_t k = n - off < CM_FRAME_MAX ? n - off : CM_FRAME_MAX;
        if (put_frame(o, 'I', p + off, k) < 0)
            return -1;
        off += k;
    }
    return 0;
}

static void on_up_write(struct bufferevent *bev, void *arg)
{
    struct gw_exec *x = arg;
    (void)bev;
    if (x->up_waiting && x->req) {
        x->up_waiting = 0;
        cm_httpd_body_resume(x->req);
    }
}

static int upload_cb(void *arg, const char *data, size_t len)
{
    struct gw_exec *x = arg;
    struct evbuffer *o = bufferevent_get_output(x->bev);
    if (!len)
        return put_frame(o, 'Z', NULL, 0) < 0;
    x->up_bytes += len;
    if (x->up_bytes > x->up_max) {
        finish(x, GW_ERR_BODY_TOO_LARGE, "the file is over gateway.admin.max_upload");
        return 1;
    }
    if (put_upload(o, data, len) < 0) {
        finish(x, GW_ERR_INTERNAL, "out of memory");
        return 1;
    }
    if (evbuffer_get_length(o) < GW_UPLOAD_HIGH)
        return 0;
    x->up_waiting = 1; /* the sandbox takes it slower than the client sends it */
    return 1;
}

void gw_api_file_start(struct event_base *base, const struct gw_config *gc,
                       struct cm_httpd_req *req, const char *addr, char op, const char *path,
                       const struct gw_exec_audit *audit, struct gw_upload *up)
{
    struct chan ch;
    struct gw_exec *x = calloc(1, sizeof(*x));
    if (!x) {
        if (up->pending)
            evbuffer_free(up->pending);
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    struct evbuffer *pending = up->pending;
    up->pending = NULL;
    if (chan_of(gc, addr, audit->instance, &ch) < 0) {
        free(x);
        if (pending)
            evbuffer_free(pending);
        gw_api_reply_error(req, GW_ERR_NOT_IMPLEMENTED,
                           "files need a sandbox started by a scheduler (this one has no "
                           "exec channel)",
                           0);
        return;
    }
    memcpy(x->instance, ch.instance, sizeof(x->instance));
    x->up_max = up->max;
    x->req = req;
    x->gc = gc;
    x->audit = *audit;
    x->fop = op;
    snprintf(x->fpath, sizeof(x->fpath), "/%s", path);
    cm_httpd_set_close_cb(req, on_client_gone, x);
    x->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    x->timer = evtimer_new(base, on_timeout, x);
    int rc = -1;
    if (x->bev && x->timer) {
        struct evbuffer *o = bufferevent_get_output(x->bev);
        rc = put_hello(o, &ch) < 0 || put_frame(o, 'P', path, strlen(path)) < 0 ||
                     put_frame(o, op, NULL, 0) < 0
                 ? -1
                 : 0;
        /* W: what was read so far, then the rest as it comes (or its end already) */
        size_t plen = pending ? evbuffer_get_length(pending) : 0;
        x->up_bytes = plen;
        if (rc == 0 && plen)
            rc = put_upload(o, (const char *)evbuffer_pullup(pending, -1), plen);
        if (rc == 0 && op == 'W' && up->done)
            rc = put_frame(o, 'Z', NULL, 0);
    }
    if (pending)
        evbuffer_free(pending);
    if (rc < 0) {
        finish(x, GW_ERR_INTERNAL, "out of memory");
        return;
    }
    if (x->up_bytes > x->up_max) {
        finish(x, GW_ERR_BODY_TOO_LARGE, "the file is over gateway.admin.max_upload");
        return;
    }
    bufferevent_setcb(x->bev, on_file_read, on_up_write, on_event, x);
    if (op == 'W' && !up->done) {
        bufferevent_setwatermark(x->bev, EV_WRITE, GW_UPLOAD_HIGH / 4, 0);
        cm_httpd_body_stream(req, upload_cb, x);
        cm_httpd_body_resume(req); /* it may have paused while the session was looked up */
    }
    bufferevent_setwatermark(x->bev, EV_READ, 0, CM_FRAME_HDR + CM_FRAME_MAX);
    connect_agent(x, &ch);
}

/* Writes exec_started and connects to the sandbox's agent (the spec is queued already). */
static void exec_go(struct gw_exec *x, const struct chan *ch)
{
    const char *kv[2] = {"cmd", x->cmdline};
    audit_event(x, "exec_started", 2, kv);
    bufferevent_setcb(x->bev, on_read, NULL, on_event, x);
    bufferevent_setwatermark(x->bev, EV_READ, 0, CM_FRAME_HDR + CM_FRAME_MAX);
    connect_agent(x, ch);
}

static void on_renew(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    slot_call(arg, "renew", NULL);
}

static void on_slot(struct redisReply *reply, const char *err, void *data)
{
    struct gw_exec *x = data;
    x->slot_waiting = 0;
    int got = !err && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
    x->slot_held = got;
    if (x->gone) {
        exec_free(x);
        return;
    }
    if (err || !reply) {
        finish(x, GW_ERR_STORE_UNAVAILABLE, "cannot count the tenant's running commands");
        return;
    }
    if (!got) {
        if (x->audit.m && x->audit.tenant_idx < GW_TENANT_SLOTS)
            GW_METRIC_INC(x->audit.m, tenant_max_execs[x->audit.tenant_idx]);
        finish(x, GW_ERR_TENANT_MAX_EXECS, NULL);
        return;
    }
    struct timeval tv = {EXEC_LEASE_MS / 3000, 0};
    x->renew = event_new(bufferevent_get_base(x->bev), -1, EV_PERSIST, on_renew, x);
    if (x->renew)
        event_add(x->renew, &tv);
    struct chan *ch = x->ch;
    x->ch = NULL;
    exec_go(x, ch);
    free(ch);
}

void gw_api_exec_start(struct event_base *base, const struct gw_config *gc,
                       struct cm_httpd_req *req, const char *addr, struct gw_api_exec *spec,
                       const struct gw_exec_audit *audit)
{
    struct chan ch;
    if (chan_of(gc, addr, audit->instance, &ch) < 0) {
        cm_json_free(spec->j);
        gw_api_reply_error(req, GW_ERR_NOT_IMPLEMENTED,
                           "exec needs a sandbox started by a scheduler (this one has no "
                           "exec channel)",
                           0);
        return;
    }
    struct gw_exec *x = calloc(1, sizeof(*x));
    if (!x) {
        cm_json_free(spec->j);
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    x->req = req;
    x->gc = gc;
    x->audit = *audit;
    const char *accept = cm_httpd_header(req, "Accept");
    x->sse = accept && strstr(accept, "text/event-stream") != NULL;
    memcpy(x->instance, ch.instance, sizeof(x->instance));
    cm_httpd_set_close_cb(req, on_client_gone, x);
    x->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    x->timer = evtimer_new(base, on_timeout, x);
    int rc = x->bev && x->timer ? put_spec(bufferevent_get_output(x->bev), &ch, spec) : -1;
    char cmdline[512];
    size_t cl = 0;
    for (size_t i = 0; i < spec->cmd->len && cl + 1 < sizeof(cmdline); i++)
        cl += (size_t)snprintf(cmdline + cl, sizeof(cmdline) - cl, "%s%s", i ? " " : "",
                               spec->cmd->items[i]->str);
    if (cl >= sizeof(cmdline))
        cl = sizeof(cmdline) - 1;
    cmdline[cl] = '\0';
    memcpy(x->cmdline, cmdline, cl + 1);
    cm_json_free(spec->j);
    spec->j = NULL;
    if (rc < 0) {
        finish(x, GW_ERR_INTERNAL, "out of memory");
        return;
    }
    if (!audit->max_execs) {
        exec_go(x, &ch);
        return;
    }
    /* The tenant's limit on running commands: a slot first (Redis, across gateways). */
    snprintf(x->slot, sizeof(x->slot), "%08x%08x%08x%08x", arc4random(), arc4random(),
             arc4random(), arc4random()); /* unique across gateways */
    if (!(x->ch = malloc(sizeof(*x->ch)))) {
        finish(x, GW_ERR_INTERNAL, "out of memory");
        return;
    }
    *x->ch = ch;
    x->slot_waiting = 1;
    slot_call(x, "begin", on_slot);
}
