/* The instance relay (relay.h). A process forked from the scheduler at start-up, one event
 * loop. The scheduler tells it which instances exist over a socket pair, one line each
 * ("A <id> <addr>", "D <id>"); its counters are in a shared anonymous mapping. Why a process
 * and not a thread: the scheduler changes its effective ids around clone() (driver_process.c)
 * and clone()s sandboxes without fork()'s care for locks other threads hold (malloc's, stdio's);
 * a second thread in its address space would see the first and could leave the second held. */
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/util.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/secret.h"
#include "scheduler/config.h"
#include "scheduler/helper.h"
#include "scheduler/splice.h"

#define BUCKETS 256

struct entry {
    struct entry *next;
    char id[CM_RELAY_ID_MAX + 1];
    char addr[160];
};

enum rc_state { RC_HELLO, RC_CONNECTING, RC_RELAYING };

struct rconn {
    struct rconn *next, *prev;
    struct sch_relay *r;
    enum rc_state state;
    struct sch_splice sp;   /* sp.fd[0]: the gateway's, sp.fd[1]: the instance's */
    struct event *hello_ev; /* the gateway's line readable */
    struct event *conn_ev;  /* the connect to the instance done */
    struct event *timer;    /* the hello's deadline */
    size_t hello_len;
    char hello[CM_RELAY_HELLO_MAX];
    struct sockaddr_storage peer; /* the gateway's address */
};

/* Connections not past their line yet: at most so many, and so many from one address. */
#define PENDING_MAX 256
#define PENDING_PER_SOURCE 16

static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                      &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
    return 0;
}

/* The counters, in memory both processes map. */
struct shared {
    _Atomic uint64_t accepted, relayed, refused, active;
};

struct sch_relay {
    const struct sch_relay_config *rc;
    const char *secret;
    char advertise[128];
    int lfd;   /* the listener (kept by the scheduler too, to fork another relay) */
    int ctl;   /* the socket pair's end: the scheduler writes, the relay reads */
    pid_t pid; /* the relay process (in the scheduler) */
    int pidfd; /* readable once it ended */
    struct shared *st;
    /* The relay process's own: */
    struct event_base *base;
    struct event *accept_ev, *ctl_ev;
    struct timeval hello_tv;
    struct rconn *conns;
    uint32_t n_conns;
    time_t last_refusal_log;
    size_t ctl_len;
    char ctl_buf[512];
    struct entry *buckets[BUCKETS];
};

/* ------------------------------------------------------------------ pure parts */

int sch_relay_check_hello(const char *line, size_t len, const char *secret, int64_t now_s,
                          uint32_t max_skew_s, char *ret_id, enum sch_relay_channel *ret_chan)
{
    /* "BERTH-RELAY <id> <chan> <ts> <mac>" */
    static const char prefix[] = "BERTH-RELAY ";
    const size_t pl = sizeof(prefix) - 1;
    if (len < pl || len >= CM_RELAY_HELLO_MAX || memcmp(line, prefix, pl) != 0)
        return -EINVAL;
    const char *f[4];
    size_t fl[4];
    size_t at = pl;
    for (int i = 0; i < 4; i++) {
        size_t start = at;
        while (at < len && line[at] != ' ')
            at++;
        if (at == start || (i < 3 && at == len) || (i == 3 && at != len))
            return -EINVAL;
        f[i] = line + start;
        fl[i] = at - start;
        at++;
    }
    char id[CM_RELAY_ID_MAX + 1], chan[8], ts[24], mac[CM_EXEC_KEY_LEN + 1];
    if (fl[0] > CM_RELAY_ID_MAX || fl[1] >= sizeof(chan) || fl[2] >= sizeof(ts) ||
        fl[3] != CM_EXEC_KEY_LEN)
        return -EINVAL;
    memcpy(id, f[0], fl[0]);
    id[fl[0]] = '\0';
    memcpy(chan, f[1], fl[1]);
    chan[fl[1]] = '\0';
    memcpy(ts, f[2], fl[2]);
    ts[fl[2]] = '\0';
    if (strspn(id, CM_RELAY_ID_CHARS) != fl[0] || strspn(ts, "0123456789") != fl[2])
        return -EINVAL;
    for (size_t i = 0; i < CM_EXEC_KEY_LEN; i++) /* <line> is not NUL-terminated */
        if (!((f[3][i] >= '0' && f[3][i] <= '9') || (f[3][i] >= 'a' && f[3][i] <= 'f')))
            return -EINVAL;
    enum sch_relay_channel c;
    if (strcmp(chan, "app") == 0)
        c = SCH_RELAY_APP;
    else if (strcmp(chan, "ports") == 0)
        c = SCH_RELAY_PORTS;
    else
        return -EINVAL;
    char *end;
    errno = 0;
    long long t = strtoll(ts, &end, 10);
    if (errno || *end)
        return -EINVAL;
    if (t > now_s + (int64_t)max_skew_s || t < now_s - (int64_t)max_skew_s)
        return -ETIME;
    if (cm_secret_relay_mac(secret, id, chan, t, mac) < 0)
        return -EACCES;
    int ok = CRYPTO_memcmp(mac, f[3], CM_EXEC_KEY_LEN) == 0;
    OPENSSL_cleanse(mac, sizeof(mac));
    if (!ok)
        return -EACCES;
    memcpy(ret_id, id, fl[0] + 1);
    *ret_chan = c;
    return 0;
}

int sch_relay_parse_listen(const char *s, struct sockaddr_storage *ret, unsigned *ret_len)
{
    const char *colon = strrchr(s, ':');
    char host[INET6_ADDRSTRLEN + 2];
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host) || !colon[1] ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(colon + 1) > 5)
        return -EINVAL;
    unsigned long port = strtoul(colon + 1, NULL, 10);
    if (port > 65535)
        return -EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(ret, 0, sizeof(*ret));
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ret;
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1)
            return -EINVAL;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        *ret_len = sizeof(*a);
        return 0;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ret;
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return -EINVAL;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    *ret_len = sizeof(*a);
    return 0;
}

int sch_relay_local_addr(const char *addr, enum sch_relay_channel chan,
                         struct sockaddr_storage *ret, unsigned *ret_len)
{
    memset(ret, 0, sizeof(*ret));
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ret;
        const char *path = addr + 5;
        size_t n = strlen(path);
        static const char app[] = "/app.sock", ports[] = "/ports.sock";
        if (n <= sizeof(app) - 1 || strcmp(path + n - (sizeof(app) - 1), app) != 0)
            return -EINVAL;
        size_t dir = n - (sizeof(app) - 1);
        const char *tail = chan == SCH_RELAY_APP ? app : ports;
        if (dir + strlen(tail) >= sizeof(un->sun_path))
            return -EINVAL;
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, dir);
        memcpy(un->sun_path + dir, tail, strlen(tail) + 1);
        *ret_len = (unsigned)(offsetof(struct sockaddr_un, sun_path) + dir + strlen(tail) + 1);
        return 0;
    }
    int vm = strncmp(addr, "vm:", 3) == 0;
    if (!vm && strncmp(addr, "tcp:", 4) != 0)
        return -EINVAL;
    if (!vm && chan == SCH_RELAY_PORTS)
        return -EINVAL;
    int slen = (int)sizeof(*ret);
    if (evutil_parse_sockaddr_port(addr + (vm ? 3 : 4), (struct sockaddr *)ret, &slen) < 0)
        return -EINVAL;
    in_port_t *port = ret->ss_family == AF_INET6 ? &((struct sockaddr_in6 *)ret)->sin6_port
                                                 : &((struct sockaddr_in *)ret)->sin_port;
    if (ntohs(*port) == 0 || (chan == SCH_RELAY_PORTS && ntohs(*port) == 65535))
        return -EINVAL;
    if (chan == SCH_RELAY_PORTS)
        *port = htons((uint16_t)(ntohs(*port) + 1)); /* a VM's ports forward: app port + 1 */
    *ret_len = (unsigned)slen;
    return 0;
}

static const char *kind_of(const char *addr)
{
    if (strncmp(addr, "unix:", 5) == 0)
        return "proc";
    if (strncmp(addr, "vm:", 3) == 0)
        return "vm";
    if (strncmp(addr, "tcp:", 4) == 0)
        return "tcp";
    return NULL;
}

int sch_relay_public_addr(const struct sch_relay *r, const char *id, const char *addr, char *out,
                          size_t len)
{
    const char *kind = kind_of(addr);
    if (!kind)
        return -EINVAL;
    int n = snprintf(out, len, "relay:%s/%s/%s", r->advertise, kind, id);
    return n < 0 || (size_t)n >= len ? -EINVAL : 0;
}

const char *sch_relay_advertised(const struct sch_relay *r)
{
    return r->advertise;
}

/* ------------------------------------------------------------------ the instance table */

static size_t bucket_of(const char *id)
{
    return (size_t)(XXH3_64bits(id, strlen(id)) % BUCKETS);
}

static int valid_entry(const char *id, const char *addr)
{
    struct sockaddr_storage ss;
    unsigned sl;
    size_t il = strlen(id);
    if (il == 0 || il > CM_RELAY_ID_MAX || strspn(id, CM_RELAY_ID_CHARS) != il ||
        strlen(addr) >= sizeof(((struct entry *)0)->addr) || strpbrk(addr, " \n") ||
        sch_relay_local_addr(addr, SCH_RELAY_APP, &ss, &sl) < 0)
        return 0;
    return 1;
}

/* Sends one line to the relay process. Blocking, bounded by SO_SNDTIMEO: the lines are
 * short and the relay reads them as they come. */
static int send_line(struct sch_relay *r, const char *line, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = send(r->ctl, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            cm_log_error("relay", "cannot reach the relay process: %s",
                         n < 0 ? strerror(errno) : "closed");
            return -EIO;
        }
        off += (size_t)n;
    }
    return 0;
}

int sch_relay_add(struct sch_relay *r, const char *id, const char *addr)
{
    if (!valid_entry(id, addr))
        return -EINVAL;
    char line[CM_RELAY_ID_MAX + 200];
    int n = snprintf(line, sizeof(line), "A %s %s\n", id, addr);
    return send_line(r, line, (size_t)n);
}

void sch_relay_del(struct sch_relay *r, const char *id)
{
    if (!r)
        return;
    char line[CM_RELAY_ID_MAX + 8];
    int n = snprintf(line, sizeof(line), "D %s\n", id);
    if (n > 0 && (size_t)n < sizeof(line))
        send_line(r, line, (size_t)n);
}

/* The relay process's table. */
static void table_put(struct sch_relay *r, const char *id, const char *addr)
{
    if (!valid_entry(id, addr))
        return;
    struct entry *e = calloc(1, sizeof(*e));
    if (!e)
        return;
    snprintf(e->id, sizeof(e->id), "%s", id);
    snprintf(e->addr, sizeof(e->addr), "%s", addr);
    struct entry **pp = &r->buckets[bucket_of(id)];
    while (*pp && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->next;
    if (*pp) {
        struct entry *old = *pp;
        e->next = old->next;
        *pp = e;
        free(old);
    } else {
        e->next = NULL;
        *pp = e;
    }
}

static void table_del(struct sch_relay *r, const char *id)
{
    struct entry **pp = &r->buckets[bucket_of(id)];
    while (*pp && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->next;
    struct entry *gone = *pp;
    if (gone)
        *pp = gone->next;
    free(gone);
}

/* Reads what the scheduler sent and applies each whole line. Returns 0, or -1 when the
 * scheduler closed its end (it is gone: so are we). */
static int read_ctl(struct sch_relay *r)
{
    for (;;) {
        ssize_t n = recv(r->ctl, r->ctl_buf + r->ctl_len, sizeof(r->ctl_buf) - 1 - r->ctl_len,
                         MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        if (n == 0)
            return -1;
        r->ctl_len += (size_t)n;
        r->ctl_buf[r->ctl_len] = '\0';
        char *line = r->ctl_buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            char *sp = strchr(line + 2, ' ');
            if (line[0] == 'A' && line[1] == ' ' && sp) {
                *sp = '\0';
                table_put(r, line + 2, sp + 1);
            } else if (line[0] == 'D' && line[1] == ' ') {
                table_del(r, line + 2);
            }
            line = nl + 1;
        }
        r->ctl_len = strlen(line);
        memmove(r->ctl_buf, line, r->ctl_len);
        if (r->ctl_len == sizeof(r->ctl_buf) - 1)
            r->ctl_len = 0; /* a line longer than any we send: drop it */
    }
}

/* Copies <id>'s driver address into <out>; -ENOENT when it is not live here. */
static int lookup(struct sch_relay *r, const char *id, char *out, size_t len)
{
    int rc = -ENOENT;
    /* What the scheduler wrote before this connection came is in the socket already: read it
     * first, so that an instance is known from the moment sch_relay_add() returned. */
    if (read_ctl(r) < 0)
        event_base_loopbreak(r->base);
    for (struct entry *e = r->buckets[bucket_of(id)]; e; e = e->next)
        if (strcmp(e->id, id) == 0) {
            snprintf(out, len, "%s", e->addr);
            rc = 0;
            break;
        }
    return rc;
}

/* ------------------------------------------------------------------ connections */

static void conn_close(struct rconn *c, int refused)
{
    struct sch_relay *r = c->r;
    atomic_fetch_sub(&r->st->active, 1);
    if (refused)
        atomic_fetch_add(&r->st->refused, 1);
    sch_splice_fini(&c->sp);
    if (c->hello_ev)
        event_free(c->hello_ev);
    if (c->conn_ev)
        event_free(c->conn_ev);
    if (c->timer)
        event_free(c->timer);
    if (c->prev)
        c->prev->next = c->next;
    else
        r->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    r->n_conns--;
    OPENSSL_cleanse(c->hello, sizeof(c->hello));
    free(c);
}

static void on_spliced(struct sch_splice *sp, int failed, void *arg)
{
    (void)sp, (void)failed;
    conn_close(arg, 0);
}

/* Connected to the instance: bytes both ways. Returns 0, 1 (it ended already: <c> is gone) or
 * -1 (the caller closes). */
static int start_relaying(struct rconn *c)
{
    struct sch_relay *r = c->r;
    c->state = RC_RELAYING;
    atomic_fetch_add(&r->st->relayed, 1);
    return sch_splice_start(&c->sp, r->base, r->rc->buffer, on_spliced, c);
}

static void on_connected(evutil_socket_t fd, short what, void *arg)
{
    struct rconn *c = arg;
    int err = 0;
    socklen_t el = sizeof(err);
    if (what & EV_TIMEOUT) {
        conn_close(c, 1);
        return;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        conn_close(c, 1);
        return;
    }
    if (start_relaying(c) < 0)
        conn_close(c, 1);
}

/* The hello is in c->hello: check it, find the instance and connect to it. */
static void on_hello(struct rconn *c)
{
    struct sch_relay *r = c->r;
    char id[CM_RELAY_ID_MAX + 1], addr[160];
    enum sch_relay_channel chan;
    size_t len = c->hello_len - 1; /* without '\n' */
    if (len && c->hello[len - 1] == '\r')
        len--;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int rc = sch_relay_check_hello(c->hello, len, r->secret, (int64_t)now.tv_sec, r->rc->max_skew_s,
                                   id, &chan);
    struct sockaddr_storage ss;
    unsigned sl = 0;
    if (rc == 0 && (rc = lookup(r, id, addr, sizeof(addr))) == 0)
        rc = sch_relay_local_addr(addr, chan, &ss, &sl);
    if (rc < 0) {
        /* At most one line a second: whoever sends garbage must not fill our log. */
        if (now.tv_sec != r->last_refusal_log)
            cm_log_warn("relay", "refused fd=%d reason=%s%s%s", c->sp.fd[0],
                        rc == -ETIME    ? "clock"
                        : rc == -EACCES ? "mac"
                        : rc == -ENOENT ? "unknown_instance"
                                        : "bad_line_or_channel",
                        rc == -ENOENT ? " inst=" : "", rc == -ENOENT ? id : "");
        r->last_refusal_log = now.tv_sec;
        conn_close(c, 1);
        return;
    }
    event_free(c->timer);
    c->timer = NULL;
    event_free(c->hello_ev);
    c->hello_ev = NULL;
    c->sp.fd[1] = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->sp.fd[1] < 0) {
        conn_close(c, 1);
        return;
    }
    if (ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(c->sp.fd[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (connect(c->sp.fd[1], (struct sockaddr *)&ss, sl) == 0) {
        if (start_relaying(c) < 0)
            conn_close(c, 1);
        return;
    }
    if (errno != EINPROGRESS) { /* a unix socket's full backlog is EAGAIN: refused too */
        conn_close(c, 1);
        return;
    }
    c->state = RC_CONNECTING;
    c->conn_ev = event_new(r->base, c->sp.fd[1], EV_WRITE, on_connected, c);
    if (!c->conn_ev || event_add(c->conn_ev, &r->hello_tv) < 0)
        conn_close(c, 1);
}

/* The gateway's first bytes: read exactly the hello line (peeked first, so that the bytes after
 * it stay in the socket for splice). */
static void on_hello_readable(evutil_socket_t fd, short what, void *arg)
{
    struct rconn *c = arg;
    (void)what;
    char buf[CM_RELAY_HELLO_MAX];
    size_t room = sizeof(c->hello) - c->hello_len;
    ssize_t n = recv(fd, buf, room, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(c, 1);
        return;
    }
    char *nl = memchr(buf, '\n', (size_t)n);
    size_t take = nl ? (size_t)(nl - buf) + 1 : (size_t)n;
    if (!nl && c->hello_len + take >= sizeof(c->hello)) {
        conn_close(c, 1); /* no line within CM_RELAY_HELLO_MAX bytes */
        return;
    }
    ssize_t got = recv(fd, c->hello + c->hello_len, take, 0);
    if (got != (ssize_t)take) {
        conn_close(c, 1);
        return;
    }
    c->hello_len += take;
    if (nl)
        on_hello(c);
}

static void on_hello_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    conn_close(arg, 1);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    struct sch_relay *r = arg;
    (void)what;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t pl = sizeof(peer);
        int fd = sch_helper_accept(lfd);
        if (fd < 0)
            return;
        atomic_fetch_add(&r->st->accepted, 1);
        memset(&peer, 0, sizeof(peer));
        getpeername(fd, (struct sockaddr *)&peer, &pl);
        /* Connections that have not proven anything yet are few, and few per source: whoever
         * reaches the port cannot fill the relay before the gateways. */
        unsigned pending = 0, same = 0;
        for (struct rconn *o = r->conns; o; o = o->next)
            if (o->state == RC_HELLO) {
                pending++;
                same += same_ip(&o->peer, &peer);
            }
        if (r->n_conns >= r->rc->max_conns || pending >= PENDING_MAX ||
            same >= PENDING_PER_SOURCE) {
            atomic_fetch_add(&r->st->refused, 1);
            close(fd);
            continue;
        }
        struct rconn *c = calloc(1, sizeof(*c));
        if (!c) {
            atomic_fetch_add(&r->st->refused, 1);
            close(fd);
            continue;
        }
        c->r = r;
        sch_splice_init(&c->sp);
        c->sp.fd[0] = fd;
        c->peer = peer;
        c->next = r->conns;
        if (r->conns)
            r->conns->prev = c;
        r->conns = c;
        r->n_conns++;
        atomic_fetch_add(&r->st->active, 1);
        int one = 1, idle = 30, intvl = 10, cnt = 3;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* A gateway host that vanished without a FIN must not hold a relay slot forever. */
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
        c->hello_ev = event_new(r->base, fd, EV_READ | EV_PERSIST, on_hello_readable, c);
        c->timer = evtimer_new(r->base, on_hello_timeout, c);
        if (!c->hello_ev || !c->timer || event_add(c->hello_ev, NULL) < 0 ||
            evtimer_add(c->timer, &r->hello_tv) < 0)
            conn_close(c, 1);
    }
}

static void on_ctl(evutil_socket_t fd, short what, void *arg)
{
    struct sch_relay *r = arg;
    (void)fd, (void)what;
    if (read_ctl(r) < 0)
        event_base_loopbreak(r->base); /* the scheduler is gone */
}

/* The relay process: never returns. */
static void relay_process(struct sch_relay *r)
{
    int keep[2] = {r->lfd, r->ctl};
    sch_helper_child_setup("berth-relay", keep, 2);
    r->lfd = keep[0];
    r->ctl = keep[1];
    r->base = event_base_new();
    if (!r->base)
        _exit(1);
    r->accept_ev = event_new(r->base, r->lfd, EV_READ | EV_PERSIST, on_accept, r);
    r->ctl_ev = event_new(r->base, r->ctl, EV_READ | EV_PERSIST, on_ctl, r);
    if (!r->accept_ev || !r->ctl_ev || event_add(r->accept_ev, NULL) < 0 ||
        event_add(r->ctl_ev, NULL) < 0)
        _exit(1);
    event_base_dispatch(r->base);
    _exit(0);
}

/* ------------------------------------------------------------------ life */

/* Forks the relay process (the scheduler keeps the listener, so that it can fork another).
 * Returns 0 or -1 (errno set). */
static int spawn(struct sch_relay *r)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
        return -1;
    /* A relay that stops reading must not hang the scheduler. */
    struct timeval tv = {.tv_sec = 1};
    setsockopt(pair[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int big = 1 << 20;
    setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pair[0]);
        close(pair[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        close(pair[0]);
        r->ctl = pair[1];
        relay_process(r);
    }
    close(pair[1]);
    r->ctl = pair[0];
    r->pid = pid;
    r->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    return 0;
}

int sch_relay_exit_fd(const struct sch_relay *r)
{
    return r->pidfd;
}

int sch_relay_respawn(struct sch_relay *r)
{
    if (r->ctl >= 0)
        close(r->ctl);
    r->ctl = -1;
    int status = sch_helper_reap(&r->pid, &r->pidfd);
    atomic_store(&r->st->active, 0);
    if (spawn(r) < 0)
        return -errno;
    return status;
}

struct sch_relay *sch_relay_create(const struct sch_relay_config *rc, const char *secret, char *err,
                                   size_t errlen)
{
    struct sch_relay *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->rc = rc;
    r->secret = secret;
    r->lfd = r->ctl = r->pidfd = -1;
    r->st = MAP_FAILED;
    cm_usec_to_tv(rc->handshake_timeout, &r->hello_tv);
    struct sockaddr_storage ss;
    unsigned slen = 0;
    if (sch_relay_parse_listen(rc->listen, &ss, &slen) < 0) {
        snprintf(err, errlen, "instance_relay.listen: not an address: %s", rc->listen);
        goto fail;
    }
    r->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, brc = -1;
    if (r->lfd >= 0 && setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0) {
        /* The relay process of a scheduler that just ended (restart) may hold the port for a
         * moment more: it dies with its parent, but not in the same instant. */
        for (int i = 0; i < 30; i++) {
            brc = bind(r->lfd, (struct sockaddr *)&ss, (socklen_t)slen);
            if (brc == 0 || errno != EADDRINUSE)
                break;
            usleep(100 * 1000);
        }
    }
    if (brc < 0 || listen(r->lfd, 1024) < 0) {
        snprintf(err, errlen, "instance_relay.listen: cannot listen on %s: %s", rc->listen,
                 strerror(errno));
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof(bound);
    char host[INET6_ADDRSTRLEN];
    if (getsockname(r->lfd, (struct sockaddr *)&bound, &bl) < 0)
        goto sysfail;
    unsigned port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                      : ((struct sockaddr_in *)&bound)->sin_port);
    if (rc->advertise && strchr(rc->advertise, ':') && rc->advertise[0] != '[') {
        snprintf(r->advertise, sizeof(r->advertise), "%s", rc->advertise); /* host:port */
    } else if (rc->advertise && rc->advertise[0] == '[' && strstr(rc->advertise, "]:")) {
        snprintf(r->advertise, sizeof(r->advertise), "%s", rc->advertise);
    } else if (rc->advertise) { /* a host alone: our port */
        snprintf(r->advertise, sizeof(r->advertise), "%s:%u", rc->advertise, port);
    } else {
        const void *a = bound.ss_family == AF_INET6
                            ? (const void *)&((struct sockaddr_in6 *)&bound)->sin6_addr
                            : (const void *)&((struct sockaddr_in *)&bound)->sin_addr;
        if (!inet_ntop(bound.ss_family, a, host, sizeof(host)))
            goto sysfail;
        snprintf(r->advertise, sizeof(r->advertise),
                 bound.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
    }
    /* Every relayed connection holds two sockets and two pipes: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    r->st = mmap(NULL, sizeof(*r->st), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r->st == MAP_FAILED || spawn(r) < 0)
        goto sysfail;
    return r;
sysfail:
    snprintf(err, errlen, "instance_relay: %s", strerror(errno));
fail:
    sch_relay_destroy(r);
    return NULL;
}

void sch_relay_destroy(struct sch_relay *r)
{
    if (!r)
        return;
    if (r->ctl >= 0)
        close(r->ctl); /* the relay reads EOF and ends */
    if (r->pid > 0)
        kill(r->pid, SIGTERM);
    sch_helper_reap(&r->pid, &r->pidfd);
    if (r->lfd >= 0)
        close(r->lfd);
    if (r->st != MAP_FAILED)
        munmap(r->st, sizeof(*r->st));
    free(r);
}

void sch_relay_get_stats(struct sch_relay *r, struct sch_relay_stats *ret)
{
    ret->accepted = atomic_load(&r->st->accepted);
    ret->relayed = atomic_load(&r->st->relayed);
    ret->refused = atomic_load(&r->st->refused);
    ret->active = atomic_load(&r->st->active);
}
