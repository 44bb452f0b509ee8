#include "scheduler/agent/relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scheduler/agent/loop.h"
#include "scheduler/agent/proto.h"

#define PREAMBLE_TIMEOUT_MS 10000 /* for a ports connection's first line */
#define PREAMBLE_MAX 96 /* "BERTH-EXEC <64 hex>\r\n" fits */

enum conn_state {
    CONN_PREAMBLE,   /* accepted on the ports socket: reading "BERTH-PORT <n>\r\n" */
    CONN_WAITING,    /* accepted; the app is not connected yet */
    CONN_CONNECTING, /* non-blocking connect to the app in progress */
    CONN_OPEN,
    CONN_DEAD, /* closed; freed by agent_relay_reap() */
};

/* One direction: bytes read from one side, not yet written to the other. */
struct dirbuf {
    char *data;
    size_t off, len;
    int eof;  /* the source side sent EOF */
    int shut; /* EOF passed on: shutdown(SHUT_WR) done on the sink side */
};

struct conn {
    struct agent_relay *r;
    struct conn *prev, *next;
    enum conn_state state;
    uint16_t port; /* the port inside the sandbox this connection goes to */
    uint64_t hold_until; /* waiting: its hold deadline; reading its first line: that line's */
    int keyed; /* a port line of a relay that needs the key: checked before it goes on */
    char key[AGENT_EXEC_KEY_LEN + 1]; /* the key the line presented, "" when none */
    struct agent_watch cw, uw; /* client side, app side */
    struct dirbuf up;          /* client -> app */
    struct dirbuf down;        /* app -> client */
};

struct agent_relay {
    int epfd;
    struct agent_relay_config cfg;
    struct agent_watch lw; /* app socket */
    struct agent_watch pw; /* ports socket (preview links), fd -1 when absent */
    struct agent_watch tw; /* TCP listener (guest mode: the host's forward), fd -1 when absent */
    struct agent_watch tpw; /* TCP ports listener (guest mode: the host's second forward), -1 */
    int ready, holding, paused;
    int quiesced;     /* agent_relay_pause(): listeners off until agent_relay_resume() */
    uint64_t last_io; /* monotonic ms of the last byte relayed either way */
    unsigned n_conns, n_waiting, n_preamble;
    char key[AGENT_EXEC_KEY_LEN + 1]; /* agent_relay_set_key(), "" until then */
    struct conn *conns;
    struct conn *dead;
};

static int set_listeners(struct agent_relay *r, uint32_t ev)
{
    if (agent_watch_set(r->epfd, &r->lw, ev) < 0)
        return -1;
    if (r->pw.fd >= 0 && agent_watch_set(r->epfd, &r->pw, ev) < 0)
        return -1;
    if (r->tw.fd >= 0 && agent_watch_set(r->epfd, &r->tw, ev) < 0)
        return -1;
    if (r->tpw.fd >= 0 && agent_watch_set(r->epfd, &r->tpw, ev) < 0)
        return -1;
    return 0;
}

static void conn_close(struct conn *c)
{
    struct agent_relay *r = c->r;
    if (c->state == CONN_DEAD)
        return;
    if (c->state == CONN_WAITING)
        r->n_waiting--;
    if (c->state == CONN_PREAMBLE)
        r->n_preamble--;
    c->state = CONN_DEAD;
    agent_watch_close(r->epfd, &c->cw);
    agent_watch_close(r->epfd, &c->uw);
    if (c->prev)
        c->prev->next = c->next;
    else
        r->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = NULL;
    c->next = r->dead;
    r->dead = c;
    r->n_conns--;
    if (r->paused && !r->quiesced && r->n_conns < r->cfg.max_conns &&
        set_listeners(r, EPOLLIN) == 0)
        r->paused = 0;
}

/* Reads from <fd> into <b>. Returns 0, or -1 when the connection must end. */
static int fill(int fd, struct dirbuf *b, size_t cap)
{
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    while (b->len < cap && !b->eof) {
        ssize_t n = recv(fd, b->data + b->len, cap - b->len, 0);
        if (n > 0) {
            b->len += (size_t)n;
        } else if (n == 0) {
            b->eof = 1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Writes what <b> holds to <fd>. Returns 0, or -1 when the connection must end. */
static int drain(int fd, struct dirbuf *b)
{
    while (b->off < b->len) {
        ssize_t n = send(fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
        if (n > 0) {
            b->off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            return -1;
        }
    }
    b->off = b->len = 0;
    return 0;
}

/* After any I/O: pass EOFs on, end the connection when both directions ended, and set the
 * interest of both sides from the buffer levels. */
static void settle(struct conn *c)
{
    size_t cap = c->r->cfg.buffer;
    if (c->up.eof && c->up.len == 0 && !c->up.shut) {
        shutdown(c->uw.fd, SHUT_WR);
        c->up.shut = 1;
    }
    if (c->down.eof && c->down.len == 0 && !c->down.shut) {
        shutdown(c->cw.fd, SHUT_WR);
        c->down.shut = 1;
    }
    if (c->up.shut && c->down.shut) {
        conn_close(c);
        return;
    }
    uint32_t cev = (!c->up.eof && c->up.len < cap ? EPOLLIN : 0) | (c->down.len ? EPOLLOUT : 0);
    uint32_t uev = (!c->down.eof && c->down.len < cap ? EPOLLIN : 0) | (c->up.len ? EPOLLOUT : 0);
    if (agent_watch_set(c->r->epfd, &c->cw, cev) < 0 ||
        agent_watch_set(c->r->epfd, &c->uw, uev) < 0)
        conn_close(c);
}

static void on_side(struct conn *c, int fd_in, struct dirbuf *from, int fd_out, struct dirbuf *to,
                    uint32_t ev)
{
    /* <from> carries bytes read on this side; <to> bytes destined to it. */
    c->r->last_io = agent_now_ms();
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !from->eof &&
        fill(fd_in, from, c->r->cfg.buffer) < 0) {
        conn_close(c);
        return;
    }
    if ((ev & (EPOLLOUT | EPOLLERR)) && to->len && drain(fd_in, to) < 0) {
        conn_close(c);
        return;
    }
    /* Forward what was just read right away instead of waiting for EPOLLOUT. */
    if (from->len && drain(fd_out, from) < 0) {
        conn_close(c);
        return;
    }
    settle(c);
}

static void read_preamble(struct conn *c);

static void on_client(struct agent_watch *w, uint32_t ev)
{
    struct conn *c = AGENT_CONTAINER_OF(w, struct conn, cw);
    if (c->state == CONN_PREAMBLE) {
        read_preamble(c);
        return;
    }
    if (c->state != CONN_OPEN)
        return;
    on_side(c, c->cw.fd, &c->up, c->uw.fd, &c->down, ev);
}

static void open_conn(struct conn *c)
{
    size_t cap = c->r->cfg.buffer;
    if (!c->up.data)
        c->up.data = malloc(cap);
    c->down.data = malloc(cap);
    if (!c->up.data || !c->down.data) {
        conn_close(c);
        return;
    }
    c->state = CONN_OPEN;
    settle(c);
}

static void on_upstream(struct agent_watch *w, uint32_t ev)
{
    struct conn *c = AGENT_CONTAINER_OF(w, struct conn, uw);
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->uw.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            fprintf(stderr, "berth-agent: connect to app port %u failed: %s\n", c->port,
                    strerror(err ? err : errno));
            conn_close(c);
            return;
        }
        open_conn(c);
        return;
    }
    if (c->state != CONN_OPEN)
        return;
    on_side(c, c->uw.fd, &c->down, c->cw.fd, &c->up, ev);
}

/* Whether a keyed port line presented the relay's key (constant time; none known yet: no). */
static int key_ok(const struct agent_relay *r, const struct conn *c)
{
    if (!r->key[0])
        return 0;
    unsigned char diff = 0;
    for (size_t i = 0; i < AGENT_EXEC_KEY_LEN; i++)
        diff |= (unsigned char)(c->key[i] ^ r->key[i]);
    return diff == 0;
}

static void connect_app(struct conn *c)
{
    struct agent_relay *r = c->r;
    if (c->keyed && !key_ok(r, c)) {
        conn_close(c); /* still waiting: counted as such until closed */
        return;
    }
    r->n_waiting--;
    c->state = CONN_CONNECTING;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_close(c);
        return;
    }
    agent_watch_init(&c->uw, fd, on_upstream);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(c->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        open_conn(c);
    } else if (errno == EINPROGRESS) {
        if (agent_watch_set(r->epfd, &c->uw, EPOLLOUT) < 0)
            conn_close(c);
    } else {
        fprintf(stderr, "berth-agent: connect to app port %u failed: %s\n", c->port,
                strerror(errno));
        conn_close(c);
    }
}

static int may_go(const struct agent_relay *r, const struct conn *c, uint64_t now)
{
    return r->ready && (!r->holding || (!r->cfg.hold_closes && now >= c->hold_until));
}

uint64_t agent_relay_tick(struct agent_relay *r, uint64_t now_ms)
{
    uint64_t next = 0;
    struct conn *c = r->conns;
    while (c) {
        struct conn *n = c->next;
        if (c->state == CONN_WAITING) {
            if (may_go(r, c, now_ms))
                connect_app(c);
            else if (r->holding && r->cfg.hold_closes && now_ms >= c->hold_until)
                conn_close(c); /* no BIND in time: nothing reaches the app before one */
            else if (r->holding && (!next || c->hold_until < next))
                next = c->hold_until;
        } else if (c->state == CONN_PREAMBLE) {
            if (now_ms >= c->hold_until)
                conn_close(c); /* no first line in time */
            else if (!next || c->hold_until < next)
                next = c->hold_until;
        }
        c = n;
    }
    return next;
}

/* A connection on the ports socket names its port first; what follows the line is relayed. */
static void read_preamble(struct conn *c)
{
    struct agent_relay *r = c->r;
    if (fill(c->cw.fd, &c->up, PREAMBLE_MAX) < 0) {
        conn_close(c);
        return;
    }
    char *nl = memchr(c->up.data, '\n', c->up.len);
    if (!nl) {
        if (c->up.eof || c->up.len >= PREAMBLE_MAX)
            conn_close(c);
        return;
    }
    size_t line = (size_t)(nl - c->up.data) + 1;
    char buf[PREAMBLE_MAX + 1];
    memcpy(buf, c->up.data, line);
    buf[line] = '\0';
    /* "BERTH-EXEC" [" " key] CRLF or LF: the key is checked by the exec channel (a guest's
     * learns its key with BIND, which may come after this line). */
    char key[AGENT_EXEC_KEY_LEN + 1] = "";
    int is_exec = strcmp(buf, "BERTH-EXEC\r\n") == 0 || strcmp(buf, "BERTH-EXEC\n") == 0;
    if (!is_exec && strncmp(buf, "BERTH-EXEC ", 11) == 0) {
        size_t kl = strspn(buf + 11, "0123456789abcdef");
        if (kl == AGENT_EXEC_KEY_LEN &&
            (strcmp(buf + 11 + kl, "\r\n") == 0 || strcmp(buf + 11 + kl, "\n") == 0)) {
            memcpy(key, buf + 11, kl);
            key[kl] = '\0';
            is_exec = 1;
        } else {
            fprintf(stderr, "berth-agent: bad exec line on the ports socket\n");
            conn_close(c);
            return;
        }
    }
    if (is_exec) {
        if (!r->cfg.on_exec) {
            conn_close(c);
            return;
        }
        /* Not relayed: the exec channel takes the connection, with what followed the line. */
        int fd = c->cw.fd;
        agent_watch_set(r->epfd, &c->cw, 0);
        c->cw.fd = -1;
        char rest[PREAMBLE_MAX];
        size_t n = c->up.len - line;
        memcpy(rest, c->up.data + line, n);
        conn_close(c);
        r->cfg.on_exec(fd, rest, n, key);
        return;
    }
    /* "BERTH-PORT <n>" [" " key] CRLF or LF; a relay that needs the key (a guest's) checks
     * it before the connection goes on (BIND brings the key). */
    unsigned port = 0;
    int at = 0;
    char tail[4] = "";
    int ok = sscanf(buf, "BERTH-PORT %5u%n", &port, &at) == 1 && port > 0 && port <= 65535;
    if (ok && buf[at] == ' ') {
        size_t kl = strspn(buf + at + 1, "0123456789abcdef");
        ok = kl == AGENT_EXEC_KEY_LEN;
        if (ok) {
            memcpy(c->key, buf + at + 1, kl);
            c->key[kl] = '\0';
            at += 1 + (int)kl;
        }
    }
    ok = ok && sscanf(buf + at, "%3[\r\n]", tail) == 1 &&
         (strcmp(tail, "\r\n") == 0 || strcmp(tail, "\n") == 0);
    /* Never one of the agent's own listeners (a chain through them would take a slot each). */
    ok = ok && port != r->cfg.own_ports[0] && port != r->cfg.own_ports[1];
    if (!ok) {
        fprintf(stderr, "berth-agent: bad port selection line on the ports socket\n");
        conn_close(c);
        return;
    }
    c->keyed = r->cfg.require_key;
    memmove(c->up.data, c->up.data + line, c->up.len - line);
    c->up.len -= line;
    c->port = (uint16_t)port;
    r->n_preamble--;
    c->state = CONN_WAITING;
    r->n_waiting++;
    c->hold_until = agent_now_ms() + r->cfg.hold_ms;
    if (agent_watch_set(r->epfd, &c->cw, 0) < 0) {
        conn_close(c);
        return;
    }
    if (may_go(r, c, agent_now_ms()))
        connect_app(c);
}

static void accept_on(struct agent_relay *r, struct agent_watch *w, int preamble)
{
    while (r->n_conns < r->cfg.max_conns) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or EMFILE and the like: try again on the next event */
        }
        struct conn *c = calloc(1, sizeof(*c));
        if (c && preamble && !(c->up.data = malloc(r->cfg.buffer))) {
            free(c);
            c = NULL;
        }
        if (!c) {
            close(fd);
            continue;
        }
        c->r = r;
        c->port = r->cfg.port;
        agent_watch_init(&c->cw, fd, on_client);
        agent_watch_init(&c->uw, -1, on_upstream);
        c->next = r->conns;
        if (r->conns)
            r->conns->prev = c;
        r->conns = c;
        r->n_conns++;
        if (preamble) {
            c->state = CONN_PREAMBLE;
            r->n_preamble++;
            c->hold_until = agent_now_ms() + PREAMBLE_TIMEOUT_MS;
            if (agent_watch_set(r->epfd, &c->cw, EPOLLIN) < 0)
                conn_close(c);
            continue;
        }
        c->state = CONN_WAITING;
        c->hold_until = agent_now_ms() + r->cfg.hold_ms;
        r->n_waiting++;
        if (may_go(r, c, agent_now_ms()))
            connect_app(c);
    }
    if (set_listeners(r, 0) == 0)
        r->paused = 1;
}

static void on_listen(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    accept_on(AGENT_CONTAINER_OF(w, struct agent_relay, lw), w, 0);
}

static void on_listen_ports(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    accept_on(AGENT_CONTAINER_OF(w, struct agent_relay, pw), w, 1);
}

static void on_listen_tcp(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    accept_on(AGENT_CONTAINER_OF(w, struct agent_relay, tw), w, 0);
}

static void on_listen_tcp_ports(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    accept_on(AGENT_CONTAINER_OF(w, struct agent_relay, tpw), w, 1);
}

int agent_relay_listen_tcp(struct agent_relay *r, int fd, int ports)
{
    struct agent_watch *w = ports ? &r->tpw : &r->tw;
    if (w->fd >= 0) {
        close(fd);
        return -EBUSY;
    }
    agent_watch_init(w, fd, ports ? on_listen_tcp_ports : on_listen_tcp);
    int rc = r->paused || r->quiesced ? 0 : agent_watch_set(r->epfd, w, EPOLLIN);
    if (rc < 0)
        agent_watch_close(r->epfd, w);
    return rc;
}

struct agent_relay *agent_relay_create(int epfd, int listen_fd, int ports_fd,
                                       const struct agent_relay_config *cfg)
{
    struct agent_relay *r = calloc(1, sizeof(*r));
    if (!r) {
        close(listen_fd);
        if (ports_fd >= 0)
            close(ports_fd);
        return NULL;
    }
    r->epfd = epfd;
    r->cfg = *cfg;
    r->holding = cfg->hold_ms > 0;
    agent_watch_init(&r->lw, listen_fd, on_listen);
    agent_watch_init(&r->pw, ports_fd, on_listen_ports);
    agent_watch_init(&r->tw, -1, on_listen_tcp);
    agent_watch_init(&r->tpw, -1, on_listen_tcp_ports);
    if (set_listeners(r, EPOLLIN) < 0) {
        agent_watch_close(epfd, &r->lw);
        agent_watch_close(epfd, &r->pw);
        free(r);
        return NULL;
    }
    return r;
}

void agent_relay_reap(struct agent_relay *r)
{
    while (r->dead) {
        struct conn *c = r->dead;
        r->dead = c->next;
        free(c->up.data);
        free(c->down.data);
        free(c);
    }
}

void agent_relay_destroy(struct agent_relay *r)
{
    if (!r)
        return;
    while (r->conns)
        conn_close(r->conns);
    agent_relay_reap(r);
    agent_watch_close(r->epfd, &r->lw);
    agent_watch_close(r->epfd, &r->pw);
    agent_watch_close(r->epfd, &r->tw);
    agent_watch_close(r->epfd, &r->tpw);
    free(r);
}

void agent_relay_set_ready(struct agent_relay *r)
{
    r->ready = 1;
    agent_relay_tick(r, agent_now_ms());
}

void agent_relay_release(struct agent_relay *r)
{
    r->holding = 0;
    agent_relay_tick(r, agent_now_ms());
}

unsigned agent_relay_conns(const struct agent_relay *r)
{
    return r->n_conns;
}

void agent_relay_set_key(struct agent_relay *r, const char *key)
{
    snprintf(r->key, sizeof(r->key), "%s", key && strlen(key) == AGENT_EXEC_KEY_LEN ? key : "");
}

unsigned agent_relay_timed(const struct agent_relay *r)
{
    return r->n_waiting + r->n_preamble;
}

unsigned agent_relay_waiting(const struct agent_relay *r)
{
    return r->n_waiting;
}

int agent_relay_pause(struct agent_relay *r, uint64_t now_ms, uint64_t quiet_ms,
                      unsigned *ret_closed, const char **ret_why)
{
    for (const struct conn *c = r->conns; c; c = c->next) {
        if (c->state != CONN_OPEN) {
            *ret_why = "a connection is being set up";
            return -EBUSY;
        }
        int unread = 0, unread_up = 0;
        if (c->up.len || c->down.len || c->up.eof != c->down.eof ||
            ioctl(c->cw.fd, FIONREAD, &unread) < 0 || unread > 0 ||
            ioctl(c->uw.fd, FIONREAD, &unread_up) < 0 || unread_up > 0) {
            *ret_why = "a connection has bytes in flight";
            return -EBUSY;
        }
    }
    if (r->n_conns && now_ms < r->last_io + quiet_ms) {
        *ret_why = "a connection carried bytes lately";
        return -EBUSY;
    }
    if (set_listeners(r, 0) < 0) {
        *ret_why = "cannot stop the listeners";
        return -EIO;
    }
    r->quiesced = 1;
    unsigned n = 0;
    while (r->conns) {
        conn_close(r->conns);
        n++;
    }
    *ret_closed = n;
    return 0;
}

void agent_relay_resume(struct agent_relay *r)
{
    if (!r->quiesced)
        return;
    r->quiesced = 0;
    if (r->n_conns < r->cfg.max_conns && set_listeners(r, EPOLLIN) == 0)
        r->paused = 0;
}

int agent_relay_quiesced(const struct agent_relay *r)
{
    return r->quiesced;
}

int agent_relay_holding(const struct agent_relay *r)
{
    return r->holding;
}
