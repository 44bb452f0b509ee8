/* The egress proxy (egress.h). A process forked from the scheduler at start-up (berth-egress),
 * one event loop. The scheduler talks to it over a SOCK_SEQPACKET pair, one message each:
 *   "L <id>" + a descriptor (SCM_RIGHTS)   instance <id>'s listening socket
 *   "P <id> <tenant> <session> <a:pattern|d:pattern> ..."   its policy
 *   "D <id>"                                forget it
 * and reads back "E <id> <allowed|refused> <host> <port> <reason>" audit events. */
#include "scheduler/egress.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/egress.h"
#include "common/log.h"
#include "scheduler/config.h"
#include "scheduler/helper.h"
#include "scheduler/splice.h"

#define BUCKETS 256
#define MSG_MAX 32768
#define MAX_ADDRS 8
#define SEEN_MAX 64   /* destinations remembered per instance for egress_allowed events */
#define MAX_LOOKUPS 8 /* name lookups in flight per instance */

/* ------------------------------------------------------------------ the request head */

/* The authority "host[:port]" of <s> (<n> bytes; IPv6 in brackets) into <ret>. */
#define HOST_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_"

static int parse_authority(const char *s, size_t n, int need_port, uint16_t dflt,
                           struct sch_egress_head *ret)
{
    const char *host = s, *port = NULL;
    size_t hl;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return -1;
        host = s + 1;
        hl = (size_t)(close - host);
        if ((size_t)(close + 1 - s) < n) {
            if (close[1] != ':')
                return -1;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        hl = colon ? (size_t)(colon - s) : n;
        port = colon ? colon + 1 : NULL;
        if (colon && memchr(colon + 1, ':', n - (size_t)(colon + 1 - s)))
            return -1; /* IPv6 needs brackets */
    }
    if (hl == 0 || hl >= sizeof(ret->host))
        return -1;
    memcpy(ret->host, host, hl);
    ret->host[hl] = '\0';
    /* A name's characters, or an address's: nothing that could end up in a log line or an
     * event as something else. */
    if (strspn(ret->host, s[0] == '[' ? "0123456789abcdefABCDEF:." : HOST_CHARS) != hl)
        return -1;
    if (s[0] == '[') {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, ret->host, &a6) != 1)
            return -1;
    }
    if (port) {
        size_t pl = n - (size_t)(port - s);
        char pb[8];
        if (pl == 0 || pl > 5)
            return -1;
        memcpy(pb, port, pl);
        pb[pl] = '\0';
        if (strspn(pb, "0123456789") != pl)
            return -1;
        unsigned long v = strtoul(pb, NULL, 10);
        if (v == 0 || v > 65535)
            return -1;
        ret->port = (uint16_t)v;
    } else if (need_port) {
        return -1;
    } else {
        ret->port = dflt;
    }
    return 0;
}

static int header_is(const char *line, size_t n, const char *name)
{
    size_t nl = strlen(name);
    return n > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0;
}

int sch_egress_parse_head(const char *buf, size_t len, struct sch_egress_head *ret, char *out,
                          size_t cap, const char **why)
{
    memset(ret, 0, sizeof(*ret));
    const char *eol = memmem(buf, len, "\r\n", 2);
    if (!eol || len < 4 || memcmp(buf + len - 4, "\r\n\r\n", 4) != 0) {
        *why = "a request head ends with an empty line";
        return 400;
    }
    if (memchr(buf, '\0', len)) {
        *why = "a NUL byte in the head";
        return 400;
    }
    for (size_t i = 0; i < len; i++) /* CR only before LF, LF only after CR */
        if ((buf[i] == '\r' && (i + 1 == len || buf[i + 1] != '\n')) ||
            (buf[i] == '\n' && (i == 0 || buf[i - 1] != '\r'))) {
            *why = "a bare CR or LF in the head";
            return 400;
        }
    size_t ll = (size_t)(eol - buf);
    const char *sp1 = memchr(buf, ' ', ll);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', ll - (size_t)(sp1 + 1 - buf)) : NULL;
    if (!sp1 || !sp2 || sp1 == buf || sp2 == sp1 + 1 || (size_t)(eol - (sp2 + 1)) != 8 ||
        memcmp(sp2 + 1, "HTTP/1.", 7) != 0 || (sp2[8] != '0' && sp2[8] != '1')) {
        *why = "not an HTTP/1.x request line";
        return 400;
    }
    const char *target = sp1 + 1;
    size_t tl = (size_t)(sp2 - target);
    for (const char *m = buf; m < sp1; m++)
        if (*m < 'A' || *m > 'Z') {
            *why = "a method is upper-case letters";
            return 400;
        }
    if ((size_t)(sp1 - buf) == 7 && memcmp(buf, "CONNECT", 7) == 0) {
        ret->kind = SCH_EGRESS_CONNECT;
        if (parse_authority(target, tl, 1, 0, ret) < 0) {
            *why = "CONNECT wants host:port";
            return 400;
        }
        return 0;
    }
    static const char http[] = "http://";
    if (tl < sizeof(http) - 1 || strncasecmp(target, http, sizeof(http) - 1) != 0) {
        *why = "a proxied request names an absolute http:// URL (https: use CONNECT)";
        return 405;
    }
    const char *auth = target + sizeof(http) - 1;
    const char *path = memchr(auth, '/', tl - (sizeof(http) - 1));
    const char *end = target + tl;
    const char *q = memchr(auth, '?', (size_t)(end - auth));
    if (q && (!path || q < path))
        path = q;
    size_t al = (size_t)((path ? path : end) - auth);
    if (memchr(auth, '@', al)) {
        *why = "no user info in the URL";
        return 400;
    }
    ret->kind = SCH_EGRESS_FORWARD;
    if (parse_authority(auth, al, 0, 80, ret) < 0) {
        *why = "not a host[:port] in the URL";
        return 400;
    }
    /* The head to send: "<method> <path> HTTP/1.x", then the headers but the proxy's own. */
    if (cap < len + SCH_EGRESS_HEAD_EXTRA) {
        *why = "head too long";
        return 400;
    }
    size_t o = 0;
    memcpy(out + o, buf, (size_t)(sp1 - buf) + 1);
    o += (size_t)(sp1 - buf) + 1;
    if (!path) {
        out[o++] = '/';
    } else {
        if (*path == '?')
            out[o++] = '/';
        memcpy(out + o, path, (size_t)(end - path));
        o += (size_t)(end - path);
    }
    memcpy(out + o, sp2, (size_t)(eol + 2 - sp2));
    o += (size_t)(eol + 2 - sp2);
    int host_seen = 0;
    for (const char *line = eol + 2; line < buf + len - 2;) {
        const char *le = memmem(line, (size_t)(buf + len - line), "\r\n", 2);
        size_t n = (size_t)(le - line);
        /* The proxy's headers, and the connection's: one request goes to one destination,
         * then the connection ends ("Connection: close" below), so that a client's next
         * request (to another host, with that host's credentials) never reaches this one. */
        if (header_is(line, n, "Proxy-Connection") || header_is(line, n, "Proxy-Authorization") ||
            header_is(line, n, "Connection") || header_is(line, n, "Keep-Alive")) {
            line = le + 2;
            continue;
        }
        if (header_is(line, n, "Host")) {
            /* The Host must name what the URL names: the check is on that name. */
            struct sch_egress_head h2;
            const char *v = line + 5;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = le;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            memset(&h2, 0, sizeof(h2));
            if (host_seen++ || parse_authority(v, (size_t)(ve - v), 0, 80, &h2) < 0 ||
                strcasecmp(h2.host, ret->host) != 0 || h2.port != ret->port) {
                *why = "the Host header does not name the URL's host";
                return 400;
            }
        }
        memcpy(out + o, line, n + 2);
        o += n + 2;
        line = le + 2;
    }
    memcpy(out + o, "Connection: close\r\n\r\n", 21);
    o += 21;
    ret->out_len = o;
    return 0;
}

/* ------------------------------------------------------------------ the proxy process */

struct inst {
    struct inst *next;
    struct sch_egress *e;
    char id[96];
    char tenant[96], session[96];
    int lfd;
    struct event *accept_ev;
    struct cm_egress_policy *policy; /* NULL: refuse everything */
    uint64_t seen[SEEN_MAX];         /* destinations with an egress_allowed event */
    unsigned n_seen;
    time_t refusal_sec; /* refused events: at most 10 a second per instance */
    unsigned refusals;
    unsigned n_conns; /* its connections now (max_conns_per_sandbox) */
    unsigned n_dns;   /* its lookups in flight (MAX_LOOKUPS) */
    uint64_t out, in; /* bytes to and from destinations not reported yet */
};

enum cstate { C_HEAD, C_RESOLVING, C_CONNECTING, C_RELAYING };

struct conn {
    struct conn *next, *prev;
    struct sch_egress *e;
    struct inst *in; /* NULL once the instance was forgotten */
    char id[96];
    enum cstate state;
    struct sch_splice sp; /* sp.fd[0]: the sandbox's, sp.fd[1]: the destination's */
    struct event *head_ev, *conn_ev, *timer, *next_ev;
    struct evdns_getaddrinfo_request *dns;
    int closing;     /* closed while its lookup was pending: the lookup's callback frees it */
    int dns_counted; /* its lookup counts in in->n_dns */
    int dns_result;
    struct sch_egress_head head;
    size_t head_len;
    char *buf; /* max_header_bytes: the head as read, then the head to send */
    char *out;
    uint64_t counted[2]; /* bytes of sp.h[] already added to the instance's counts */
    struct sockaddr_storage addrs[MAX_ADDRS];
    socklen_t addr_lens[MAX_ADDRS];
    unsigned n_addrs, next_addr;
};

struct sch_egress {
    const struct sch_egress_config *ec;
    int ctl;
    pid_t pid;
    int pidfd;                /* readable once the proxy process ended */
    struct event_base *sbase; /* the scheduler's loop */
    /* the scheduler's side */
    struct event *ctl_ev;
    sch_egress_event_cb cb;
    sch_egress_bytes_cb bytes_cb;
    char *const *wipe; /* the scheduler's secrets, overwritten in the proxy process */
    void *cb_arg;
    /* the proxy process's */
    struct event_base *base;
    struct evdns_base *dns;
    struct timeval head_tv, connect_tv;
    struct inst *buckets[BUCKETS];
    struct conn *conns;
    unsigned n_conns;
};

static size_t bucket_of(const char *id)
{
    return (size_t)(XXH3_64bits(id, strlen(id)) % BUCKETS);
}

static struct inst *inst_find(struct sch_egress *e, const char *id)
{
    for (struct inst *i = e->buckets[bucket_of(id)]; i; i = i->next)
        if (strcmp(i->id, id) == 0)
            return i;
    return NULL;
}

static void send_event(struct sch_egress *e, struct conn *c, const char *decision,
                       const char *reason)
{
    struct inst *in = c->in;
    if (!in)
        return;
    if (decision[0] == 'r') {
        time_t now = time(NULL);
        if (now != in->refusal_sec) {
            in->refusal_sec = now;
            in->refusals = 0;
        }
        if (++in->refusals > 10)
            return;
    } else {
        char key[300];
        int n = snprintf(key, sizeof(key), "%s:%u", c->head.host, c->head.port);
        uint64_t h = XXH3_64bits(key, (size_t)n);
        for (unsigned k = 0; k < in->n_seen && k < SEEN_MAX; k++)
            if (in->seen[k] == h)
                return;
        /* The last SEEN_MAX destinations: a sandbox that went to many first does not hide
         * the later ones (an older one may be told again). */
        in->seen[in->n_seen++ % SEEN_MAX] = h;
    }
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "E %s %s %s %s %s %u %s", c->id,
                     in->tenant[0] ? in->tenant : "-", in->session[0] ? in->session : "-", decision,
                     c->head.host[0] ? c->head.host : "-", c->head.port, reason);
    if (n > 0 && (size_t)n < sizeof(msg))
        send(e->ctl, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void conn_free(struct conn *c)
{
    free(c->buf);
    free(c->out);
    free(c);
}

/* Adds what moved since the last time to the instance's counts. */
static void count_bytes(struct conn *c)
{
    if (!c->in || c->state != C_RELAYING)
        return;
    uint64_t out = c->sp.h[0].total - c->counted[0], in = c->sp.h[1].total - c->counted[1];
    /* A forwarded request's head went with send(), not through the pipe. */
    c->in->out += out;
    c->in->in += in;
    c->counted[0] = c->sp.h[0].total;
    c->counted[1] = c->sp.h[1].total;
}

static void conn_close(struct conn *c)
{
    struct sch_egress *e = c->e;
    count_bytes(c);
    sch_splice_fini(&c->sp);
    struct event *evs[] = {c->head_ev, c->conn_ev, c->timer, c->next_ev};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i])
            event_free(evs[i]);
    c->head_ev = c->conn_ev = c->timer = c->next_ev = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        e->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    e->n_conns--;
    if (c->in)
        c->in->n_conns--;
    if (c->dns) {
        struct evdns_getaddrinfo_request *req = c->dns;
        c->closing = 1;
        evdns_getaddrinfo_cancel(req); /* its callback frees <c> */
        return;
    }
    conn_free(c);
}

/* An HTTP answer of the proxy's own, then the end of the connection. */
static void refuse(struct conn *c, int status, const char *reason, const char *why)
{
    static const struct {
        int status;
        const char *text;
    } texts[] = {{400, "Bad Request"},        {403, "Forbidden"},
                 {405, "Method Not Allowed"}, {431, "Request Header Fields Too Large"},
                 {502, "Bad Gateway"},        {503, "Service Unavailable"},
                 {504, "Gateway Timeout"}};
    const char *text = "Error";
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        if (texts[i].status == status)
            text = texts[i].text;
    char body[512], msg[1024];
    int bl = snprintf(body, sizeof(body), "berth egress: %s%s%u refused: %s\n",
                      c->head.host[0] ? c->head.host : "", c->head.host[0] ? ":" : "",
                      c->head.host[0] ? c->head.port : 0, why);
    if (bl < 0 || (size_t)bl >= sizeof(body))
        bl = (int)sizeof(body) - 1;
    int n = snprintf(msg, sizeof(msg),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "X-Berth-Egress: %s\r\nConnection: close\r\n\r\n%.*s",
                     status, text, bl, reason, bl, body);
    if (n > 0 && c->sp.fd[0] >= 0)
        send(c->sp.fd[0], msg, (size_t)(n < (int)sizeof(msg) ? n : (int)sizeof(msg) - 1),
             MSG_DONTWAIT | MSG_NOSIGNAL);
    send_event(c->e, c, "refused", reason);
    conn_close(c);
}

static void on_spliced(struct sch_splice *sp, int failed, void *arg)
{
    (void)sp, (void)failed;
    conn_close(arg);
}

static void try_connect(struct conn *c);

static void on_connected(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    int err = 0;
    socklen_t el = sizeof(err);
    if ((what & EV_TIMEOUT) || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        close(c->sp.fd[1]);
        c->sp.fd[1] = -1;
        event_free(c->conn_ev);
        c->conn_ev = NULL;
        if (c->next_addr < c->n_addrs) {
            try_connect(c);
            return;
        }
        refuse(c, (what & EV_TIMEOUT) ? 504 : 502, "connect",
               (what & EV_TIMEOUT) ? "connect timed out" : strerror(err ? err : errno));
        return;
    }
    event_free(c->conn_ev);
    c->conn_ev = NULL;
    const char *first =
        c->head.kind == SCH_EGRESS_CONNECT ? "HTTP/1.1 200 Connection established\r\n\r\n" : NULL;
    /* The first bytes are small and the sockets fresh: a short write means a broken peer. */
    if (first && send(c->sp.fd[0], first, strlen(first), MSG_DONTWAIT | MSG_NOSIGNAL) !=
                     (ssize_t)strlen(first)) {
        conn_close(c);
        return;
    }
    if (!first && send(c->sp.fd[1], c->out, c->head.out_len, MSG_DONTWAIT | MSG_NOSIGNAL) !=
                      (ssize_t)c->head.out_len) {
        refuse(c, 502, "connect", "the destination did not take the request head");
        return;
    }
    send_event(c->e, c, "allowed", "policy");
    c->state = C_RELAYING;
    if (!first && c->in)
        c->in->out += c->head.out_len;
    if (sch_splice_start(&c->sp, c->e->base, c->e->ec->buffer, on_spliced, c) < 0)
        conn_close(c);
}

/* Connects to the next allowed address. */
static void try_connect(struct conn *c)
{
    struct sch_egress *e = c->e;
    while (c->next_addr < c->n_addrs) {
        unsigned k = c->next_addr++;
        struct sockaddr *sa = (struct sockaddr *)&c->addrs[k];
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, sa, c->addr_lens[k]) < 0 && errno != EINPROGRESS) {
            close(fd);
            continue;
        }
        c->sp.fd[1] = fd;
        c->state = C_CONNECTING;
        c->conn_ev = event_new(e->base, fd, EV_WRITE, on_connected, c);
        if (!c->conn_ev || event_add(c->conn_ev, &e->connect_tv) < 0) {
            conn_close(c);
            return;
        }
        return;
    }
    refuse(c, 502, "connect", "no address of it could be connected to");
}

/* 1 when <sa> is an address of this host (any interface: its public addresses too, which
 * reach services bound to 0.0.0.0 over the loopback). The list is read at most once a second. */
static int is_local(const struct sockaddr *sa)
{
    static struct ifaddrs *ifs;
    static time_t read_at;
    time_t now = time(NULL);
    if (!ifs || now != read_at) {
        if (ifs)
            freeifaddrs(ifs);
        ifs = NULL;
        if (getifaddrs(&ifs) < 0)
            return 1; /* unknown: refuse rather than risk the host */
        read_at = now;
    }
    /* ::ffff:a.b.c.d reaches a.b.c.d: judged as that IPv4 address. */
    struct sockaddr_in mapped;
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    if (sa->sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        memset(&mapped, 0, sizeof(mapped));
        mapped.sin_family = AF_INET;
        memcpy(&mapped.sin_addr, (const uint8_t *)&s6->sin6_addr + 12, 4);
        sa = (const struct sockaddr *)&mapped;
    }
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        const struct sockaddr *a = i->ifa_addr;
        if (!a || a->sa_family != sa->sa_family)
            continue;
        if (a->sa_family == AF_INET && ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
                                           ((const struct sockaddr_in *)sa)->sin_addr.s_addr)
            return 1;
        if (a->sa_family == AF_INET6 &&
            memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                   &((const struct sockaddr_in6 *)sa)->sin6_addr, 16) == 0)
            return 1;
    }
    return 0;
}

/* c->addrs[0..n_addrs) are what the destination is: keeps the allowed ones, in order. */
static void with_addresses(struct conn *c)
{
    const struct cm_egress_policy *p = c->in ? c->in->policy : NULL;
    unsigned kept = 0;
    for (unsigned i = 0; i < c->n_addrs && p; i++) {
        struct sockaddr *sa = (struct sockaddr *)&c->addrs[i];
        if (sa->sa_family == AF_INET)
            ((struct sockaddr_in *)sa)->sin_port = htons(c->head.port);
        else if (sa->sa_family == AF_INET6)
            ((struct sockaddr_in6 *)sa)->sin6_port = htons(c->head.port);
        else
            continue;
        if (!cm_egress_addr_allowed(p, sa) || is_local(sa))
            continue;
        c->addrs[kept] = c->addrs[i];
        c->addr_lens[kept++] = c->addr_lens[i];
    }
    c->n_addrs = kept;
    c->next_addr = 0;
    if (c->n_addrs == 0) {
        refuse(c, 403, "address",
               "it resolves to no address this sandbox may reach (private, loopback, "
               "link-local, metadata, or denied)");
        return;
    }
    try_connect(c);
}

/* The lookup's answer comes here; it may come before evdns_getaddrinfo() returned, so the
 * work goes on from an event of our own. */
static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    struct conn *c = arg;
    c->dns = NULL;
    if (c->dns_counted && c->in)
        c->in->n_dns--;
    c->dns_counted = 0;
    if (c->closing) {
        if (res)
            evutil_freeaddrinfo(res);
        conn_free(c);
        return;
    }
    c->dns_result = result;
    c->n_addrs = 0;
    for (struct evutil_addrinfo *ai = res; ai && c->n_addrs < MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(c->addrs[0]))
            continue;
        memcpy(&c->addrs[c->n_addrs], ai->ai_addr, ai->ai_addrlen);
        c->addr_lens[c->n_addrs++] = (socklen_t)ai->ai_addrlen;
    }
    if (res)
        evutil_freeaddrinfo(res);
    event_active(c->next_ev, EV_TIMEOUT, 0);
}

static void on_next(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    if (c->dns_result != 0 || c->n_addrs == 0) {
        refuse(c, 502, "resolve",
               c->dns_result ? evutil_gai_strerror(c->dns_result) : "the name has no address");
        return;
    }
    with_addresses(c);
}

/* The head is in c->buf: decide. */
static void on_head(struct conn *c)
{
    struct sch_egress *e = c->e;
    const char *why = "";
    int st = sch_egress_parse_head(c->buf, c->head_len, &c->head, c->out,
                                   e->ec->max_header_bytes + SCH_EGRESS_HEAD_EXTRA, &why);
    if (st) {
        refuse(c, st, "bad_request", why);
        return;
    }
    event_free(c->head_ev);
    c->head_ev = NULL;
    if (!c->in || !c->in->policy ||
        !cm_egress_host_allowed(c->in->policy, c->head.host, c->head.port)) {
        refuse(c, 403, "policy", "not in this session's egress allow list");
        return;
    }
    /* An address asked for as such: no lookup. */
    struct sockaddr_storage *ss = &c->addrs[0];
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, c->head.host, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
        ss->ss_family = AF_INET;
        c->addr_lens[0] = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, c->head.host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
        ss->ss_family = AF_INET6;
        c->addr_lens[0] = sizeof(struct sockaddr_in6);
    }
    if (ss->ss_family) {
        c->n_addrs = 1;
        with_addresses(c);
        return;
    }
    /* A sandbox's lookups in flight are few: a nameserver that never answers must not fill the
     * resolver's queue for every other sandbox. */
    if (c->in->n_dns >= MAX_LOOKUPS) {
        refuse(c, 503, "busy", "too many name lookups from this sandbox at once");
        return;
    }
    c->in->n_dns++;
    c->dns_counted = 1;
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    c->state = C_RESOLVING;
    c->dns = (struct evdns_getaddrinfo_request *)1; /* a lookup is pending (see on_resolved) */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(e->dns, c->head.host, NULL, &hints, on_resolved, c);
    if (c->dns) /* the callback did not run yet */
        c->dns = req;
}

/* Reads the head: peeked, so that nothing after it is taken from the socket (the body, or the
 * tunnel's first bytes, go on through splice). */
static void on_head_readable(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct sch_egress *e = c->e;
    (void)what;
    size_t max = e->ec->max_header_bytes;
    size_t room = max - c->head_len;
    if (room == 0) {
        refuse(c, 431, "bad_request", "the request head is too long");
        return;
    }
    ssize_t n = recv(fd, c->buf + c->head_len, room, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(c);
        return;
    }
    /* The end may straddle what we had and what came: look from 3 bytes back. */
    size_t from = c->head_len > 3 ? c->head_len - 3 : 0;
    size_t upto = c->head_len + (size_t)n;
    const char *end = memmem(c->buf + from, upto - from, "\r\n\r\n", 4);
    size_t take = end ? (size_t)(end + 4 - (c->buf + c->head_len)) : (size_t)n;
    if (recv(fd, c->buf + c->head_len, take, 0) != (ssize_t)take) {
        conn_close(c);
        return;
    }
    c->head_len += take;
    if (end)
        on_head(c);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd, (void)what;
    if (c->state == C_HEAD)
        refuse(c, 400, "bad_request", "no complete request head in time");
    else if (c->state == C_RESOLVING)
        refuse(c, 504, "resolve", "the name's lookup timed out");
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct inst *in = arg;
    struct sch_egress *e = in->e;
    (void)what;
    for (int k = 0; k < 32; k++) {
        int fd = sch_helper_accept(lfd);
        if (fd < 0)
            return;
        struct conn *c = NULL;
        if (e->n_conns >= e->ec->max_conns || !(c = calloc(1, sizeof(*c))) ||
            !(c->buf = malloc(e->ec->max_header_bytes + SCH_EGRESS_HEAD_EXTRA)) ||
            !(c->out = malloc(e->ec->max_header_bytes + SCH_EGRESS_HEAD_EXTRA))) {
            if (c)
                conn_free(c);
            close(fd);
            continue;
        }
        sch_splice_init(&c->sp);
        c->sp.fd[0] = fd;
        c->e = e;
        c->in = in;
        snprintf(c->id, sizeof(c->id), "%s", in->id);
        c->next = e->conns;
        if (e->conns)
            e->conns->prev = c;
        e->conns = c;
        e->n_conns++;
        in->n_conns++;
        c->head_ev = event_new(e->base, fd, EV_READ | EV_PERSIST, on_head_readable, c);
        c->timer = evtimer_new(e->base, on_timeout, c);
        c->next_ev = event_new(e->base, -1, 0, on_next, c);
        if (!c->head_ev || !c->timer || !c->next_ev || event_add(c->head_ev, NULL) < 0 ||
            evtimer_add(c->timer, &e->head_tv) < 0)
            conn_close(c);
        else if (in->n_conns > e->ec->max_conns_per_sandbox)
            refuse(c, 503, "busy", "too many connections from this sandbox at once");
    }
}

static void inst_free(struct sch_egress *e, struct inst *in)
{
    for (struct conn *c = e->conns; c; c = c->next)
        if (c->in == in) {
            c->in = NULL; /* its open connections go on; new decisions refuse */
            c->dns_counted = 0;
        }
    if (in->accept_ev)
        event_free(in->accept_ev);
    if (in->lfd >= 0)
        close(in->lfd);
    free(in->policy);
    free(in);
}

static void inst_del(struct sch_egress *e, const char *id)
{
    struct inst **pp = &e->buckets[bucket_of(id)];
    while (*pp && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->next;
    if (*pp) {
        struct inst *gone = *pp;
        *pp = gone->next;
        inst_free(e, gone);
    }
}

/* One message from the scheduler. */
static void on_message(struct sch_egress *e, char *msg, int fd)
{
    char *save = NULL, *verb = strtok_r(msg, " ", &save), *id = strtok_r(NULL, " ", &save);
    if (!verb || !id || strlen(id) >= sizeof(((struct inst *)0)->id)) {
        if (fd >= 0)
            close(fd);
        return;
    }
    if (strcmp(verb, "L") == 0 && fd >= 0) {
        inst_del(e, id);
        struct inst *in = calloc(1, sizeof(*in));
        if (!in) {
            close(fd);
            return;
        }
        in->e = e;
        in->lfd = fd;
        snprintf(in->id, sizeof(in->id), "%s", id);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        in->accept_ev = event_new(e->base, fd, EV_READ | EV_PERSIST, on_accept, in);
        if (!in->accept_ev || event_add(in->accept_ev, NULL) < 0) {
            inst_free(e, in);
            return;
        }
        in->next = e->buckets[bucket_of(id)];
        e->buckets[bucket_of(id)] = in;
        return;
    }
    if (fd >= 0)
        close(fd);
    if (strcmp(verb, "D") == 0) {
        inst_del(e, id);
    } else if (strcmp(verb, "P") == 0) {
        struct inst *in = inst_find(e, id);
        char *tenant = strtok_r(NULL, " ", &save), *session = strtok_r(NULL, " ", &save);
        if (!in || !tenant || !session)
            return;
        struct cm_egress_policy *p = calloc(1, sizeof(*p));
        if (!p)
            return;
        for (char *pat; (pat = strtok_r(NULL, " ", &save));) {
            const char *why;
            /* upper case: the template's (trusted), lower case: the session's */
            char k = pat[0];
            if (!strchr("aAdD", k) || pat[1] != ':' ||
                cm_egress_add(p, k == 'd' || k == 'D', k == 'A' || k == 'D', pat + 2, &why) < 0) {
                free(p); /* the scheduler checked every pattern: a bad one refuses all */
                p = NULL;
                break;
            }
        }
        free(in->policy);
        in->policy = p;
        snprintf(in->tenant, sizeof(in->tenant), "%s", tenant);
        snprintf(in->session, sizeof(in->session), "%s", session);
        in->n_seen = 0;
    }
}

/* Once a second: every instance's bytes since the last report, "B <id> <session> <out> <in>". */
static void on_report(evutil_socket_t fd, short what, void *arg)
{
    struct sch_egress *e = arg;
    (void)fd, (void)what;
    for (struct conn *c = e->conns; c; c = c->next)
        count_bytes(c);
    for (size_t b = 0; b < BUCKETS; b++)
        for (struct inst *in = e->buckets[b]; in; in = in->next) {
            if (!in->out && !in->in)
                continue;
            char msg[300];
            int n = snprintf(msg, sizeof(msg), "B %s %s %" PRIu64 " %" PRIu64, in->id,
                             in->session[0] ? in->session : "-", in->out, in->in);
            if (n > 0 && (size_t)n < sizeof(msg) &&
                send(e->ctl, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n)
                in->out = in->in = 0;
        }
}

static void on_ctl(evutil_socket_t fd, short what, void *arg)
{
    struct sch_egress *e = arg;
    (void)what;
    for (int k = 0; k < 64; k++) {
        char msg[MSG_MAX + 1];
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {.iov_base = msg, .iov_len = MSG_MAX};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            event_base_loopbreak(e->base); /* the scheduler is gone */
            return;
        }
        int passed = -1;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
                cm->cmsg_len == CMSG_LEN(sizeof(int)))
                memcpy(&passed, CMSG_DATA(cm), sizeof(int));
        msg[n] = '\0';
        on_message(e, msg, passed);
    }
}

static void proxy_process(struct sch_egress *e)
{
    sch_helper_child_setup("berth-egress", &e->ctl, 1);
    /* It parses what sandboxes send: it holds no secret of the scheduler's and runs as
     * nobody (it accepts on listeners it was given and connects out: no privilege). */
    sch_helper_child_drop(e->wipe, 65534);
    e->base = event_base_new();
    if (!e->base)
        _exit(1);
    e->dns = evdns_base_new(e->base, 0);
    if (!e->dns)
        _exit(1);
    if (e->ec->resolver) {
        if (evdns_base_nameserver_ip_add(e->dns, e->ec->resolver) != 0) {
            cm_log_error("egress", "bad resolver address resolver=%s", e->ec->resolver);
            _exit(1);
        }
    } else if (evdns_base_resolv_conf_parse(e->dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_MISC,
                                            "/etc/resolv.conf") != 0) {
        cm_log_warn("egress", "no resolver from /etc/resolv.conf: names will not resolve");
    }
    /* The name checked is the name resolved: no search domains appended, no hosts file. */
    evdns_base_search_clear(e->dns);
    evdns_base_set_option(e->dns, "max-inflight:", "1024");
    evdns_base_set_option(e->dns, "timeout:", "3");
    evdns_base_set_option(e->dns, "attempts:", "2");
    struct event *ev = event_new(e->base, e->ctl, EV_READ | EV_PERSIST, on_ctl, e);
    struct event *rep = event_new(e->base, -1, EV_PERSIST, on_report, e);
    struct timeval second = {.tv_sec = 1};
    if (!ev || event_add(ev, NULL) < 0 || !rep || event_add(rep, &second) < 0)
        _exit(1);
    event_base_dispatch(e->base);
    _exit(0);
}

/* ------------------------------------------------------------------ the scheduler's side */

static void on_events(evutil_socket_t fd, short what, void *arg)
{
    struct sch_egress *e = arg;
    (void)what;
    for (int k = 0; k < 64; k++) {
        char msg[1024];
        ssize_t n = recv(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
        if (n <= 0)
            return;
        msg[n] = '\0';
        char *save = NULL, *f[8];
        int nf = 0;
        for (char *t = strtok_r(msg, " ", &save); t && nf < 8; t = strtok_r(NULL, " ", &save))
            f[nf++] = t;
        if (nf == 8 && strcmp(f[0], "E") == 0 && e->cb)
            e->cb(f[1], strcmp(f[2], "-") ? f[2] : "", strcmp(f[3], "-") ? f[3] : "", f[4], f[5],
                  (unsigned)strtoul(f[6], NULL, 10), f[7], e->cb_arg);
        else if (nf == 5 && strcmp(f[0], "B") == 0 && e->bytes_cb)
            e->bytes_cb(f[1], strcmp(f[2], "-") ? f[2] : "", strtoull(f[3], NULL, 10),
                        strtoull(f[4], NULL, 10), e->cb_arg);
    }
}

static int spawn(struct sch_egress *e);

struct sch_egress *sch_egress_create(const struct sch_egress_config *ec, struct event_base *base,
                                     sch_egress_event_cb cb, sch_egress_bytes_cb bytes_cb,
                                     void *arg, char *const *wipe, char *err, size_t errlen)
{
    struct sch_egress *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->ec = ec;
    e->cb = cb;
    e->bytes_cb = bytes_cb;
    e->cb_arg = arg;
    e->wipe = wipe;
    e->ctl = e->pidfd = -1;
    e->sbase = base;
    cm_usec_to_tv(ec->handshake_timeout, &e->head_tv);
    cm_usec_to_tv(ec->connect_timeout, &e->connect_tv);
    if (spawn(e) < 0)
        goto sysfail;
    return e;
sysfail:
    snprintf(err, errlen, "egress proxy: %s", strerror(errno));
    sch_egress_destroy(e);
    return NULL;
}

/* Forks the proxy process; its events come to the scheduler's loop. Returns 0 or -1. */
static int spawn(struct sch_egress *e)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
        goto sysfail;
    int big = 4 << 20;
    setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(pair[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    struct timeval tv = {.tv_sec = 1};
    setsockopt(pair[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    fflush(stderr);
    e->pid = fork();
    if (e->pid < 0) {
        close(pair[0]);
        close(pair[1]);
        goto sysfail;
    }
    if (e->pid == 0) {
        close(pair[0]);
        e->ctl = pair[1];
        proxy_process(e);
    }
    close(pair[1]);
    e->ctl = pair[0];
    e->pidfd = (int)syscall(SYS_pidfd_open, e->pid, 0);
    e->ctl_ev = event_new(e->sbase, e->ctl, EV_READ | EV_PERSIST, on_events, e);
    if (!e->ctl_ev || event_add(e->ctl_ev, NULL) < 0)
        return -1;
    return 0;
sysfail:
    return -1;
}

int sch_egress_exit_fd(const struct sch_egress *e)
{
    return e->pidfd;
}

int sch_egress_respawn(struct sch_egress *e)
{
    if (e->ctl_ev)
        event_free(e->ctl_ev);
    e->ctl_ev = NULL;
    if (e->ctl >= 0)
        close(e->ctl);
    e->ctl = -1;
    int status = sch_helper_reap(&e->pid, &e->pidfd);
    if (spawn(e) < 0)
        return -errno;
    return status;
}

void sch_egress_destroy(struct sch_egress *e)
{
    if (!e)
        return;
    if (e->ctl_ev)
        event_free(e->ctl_ev);
    if (e->ctl >= 0)
        close(e->ctl);
    if (e->pid > 0)
        kill(e->pid, SIGTERM);
    sch_helper_reap(&e->pid, &e->pidfd);
    free(e);
}

static int send_msg(struct sch_egress *e, const char *msg, size_t len, int fd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(e->ctl, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)len) {
        cm_log_error("egress", "cannot reach the egress proxy: %s",
                     n < 0 ? strerror(errno) : "short write");
        return -EIO;
    }
    return 0;
}

int sch_egress_add(struct sch_egress *e, const char *id, int fd)
{
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "L %s", id);
    int rc = n > 0 && (size_t)n < sizeof(msg) ? send_msg(e, msg, (size_t)n, fd) : -EINVAL;
    close(fd);
    return rc;
}

int sch_egress_policy(struct sch_egress *e, const char *id, const char *tenant, const char *session,
                      char *const *allow[2], char *const *deny[2])
{
    char *msg = malloc(MSG_MAX);
    if (!msg)
        return -ENOMEM;
    int n =
        snprintf(msg, MSG_MAX, "P %s %s %s", id, *tenant ? tenant : "-", *session ? session : "-");
    size_t counts[2] = {0, 0};
    for (int d = 0; d < 2; d++)
        for (int l = 0; l < 2; l++) {
            char *const *list = d ? deny[l] : allow[l];
            for (size_t i = 0; list && list[i]; i++) {
                if (++counts[d] > CM_EGRESS_MAX_ENTRIES) {
                    free(msg);
                    return -E2BIG;
                }
                char k = d ? (l ? 'd' : 'D') : (l ? 'a' : 'A'); /* l 0: the template's */
                int m = snprintf(msg + n, MSG_MAX - (size_t)n, " %c:%s", k, list[i]);
                if (m < 0 || (size_t)(n + m) >= MSG_MAX) {
                    free(msg);
                    return -E2BIG;
                }
                n += m;
            }
        }
    int rc = send_msg(e, msg, (size_t)n, -1);
    free(msg);
    return rc;
}

void sch_egress_del(struct sch_egress *e, const char *id)
{
    if (!e)
        return;
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "D %s", id);
    if (n > 0 && (size_t)n < sizeof(msg))
        send_msg(e, msg, (size_t)n, -1);
}
