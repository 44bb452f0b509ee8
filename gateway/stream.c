#include "gateway/stream.h"

#include "common/time.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* The length of <tv>. A common timeout keeps its queue index in the high bits of tv_usec
 * (libevent 2.1: COMMON_TIMEOUT_MICROSECONDS_MASK, 20 bits of microseconds); a plain timeval
 * has tv_usec below 1000000, which the mask keeps whole. */
static cm_usec_t tv_len(const struct timeval *tv)
{
    return (cm_usec_t)tv->tv_sec * CM_USEC_PER_SEC + ((cm_usec_t)tv->tv_usec & 0xfffff);
}

static int reading(const struct gw_stream *s)
{
    /* a TLS handshake waiting to write reads nothing: EV_READ would fire on the client's
     * next bytes for as long as the socket stays full */
    return s->want_read && !s->suspended && !s->rd_wants_wr;
}

/* The read timeout is lazy. libevent restarts an event's timeout with every event_add() and
 * every time a persistent event with a timeout fires, which on a pooled upstream connection
 * was three timer updates per proxied request. Here the read event has no timeout; a timer of
 * the stream's own runs from when reading (re)started or the last read (rd_since, on the
 * coarse clock: timeouts are 100 ms and more) and is set only when none is pending or the
 * pending one would fire too late. When it fires before the stream was quiet for the whole
 * timeout it is set again for the rest. */
static void tmo_arm(struct gw_stream *s, cm_usec_t now)
{
    cm_usec_t len = tv_len(s->rtimeout);
    if (s->tmo_added && s->tmo_at <= now + len)
        return; /* fires in time; it checks then */
    event_add(&s->tmo, s->rtimeout);
    s->tmo_added = 1;
    s->tmo_at = now + len;
}

static void on_tmo(evutil_socket_t fd, short what, void *arg);

static void rd_update(struct gw_stream *s)
{
    if (s->vops) { /* virtual: no socket to watch; the codec's bytes are reported */
        if (reading(s)) {
            if (s->v_new || s->v_fail)
                event_active(&s->rd, EV_READ, 0);
            if (s->rtimeout) {
                s->rd_since = cm_now_mono_coarse();
                tmo_arm(s, s->rd_since);
            }
        }
        return;
    }
    if (reading(s)) {
        if (!s->rd_added) {
            event_add(&s->rd, NULL);
            s->rd_added = 1;
            /* TLS: what OpenSSL read from the socket before reading paused is not the
             * socket's to report */
            if (s->ssl && SSL_has_pending(s->ssl))
                event_active(&s->rd, EV_READ, 0);
        }
        if (s->rtimeout) { /* (re)starting to read restarts the timeout */
            s->rd_since = cm_now_mono_coarse();
            tmo_arm(s, s->rd_since);
        }
    } else if (s->rd_added) {
        event_del(&s->rd);
        s->rd_added = 0;
    }
}

static void wr_arm(struct gw_stream *s)
{
    event_add(&s->wr, s->wtimeout);
    s->wr_added = 1;
}

static void wr_del(struct gw_stream *s)
{
    if (s->wr_added) {
        event_del(&s->wr);
        s->wr_added = 0;
    }
}

static void on_input_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct gw_stream *s = arg;
    if (info->n_deleted == 0 || (s->read_high && evbuffer_get_length(buf) >= s->read_high))
        return;
    s->suspended = 0;
    evbuffer_remove_cb(buf, on_input_drained, s);
    rd_update(s);
}

/* The input is full: stop reading until the owner drains it below read_high. An evbuffer
 * callback watches the drain; it exists only while reading is held, so the hot path pays
 * nothing for it. */
static void suspend(struct gw_stream *s)
{
    if (s->suspended)
        return;
    if (!evbuffer_add_cb(s->in, on_input_drained, s))
        return; /* no memory: keep reading past the mark rather than stall */
    s->suspended = 1;
    rd_update(s);
}

static void fail(struct gw_stream *s, short what, int err)
{
    s->error = err;
    s->failed = 1;
    if (what & GW_STREAM_READING) {
        s->want_read = 0;
        rd_update(s);
    } else {
        wr_del(s);
    }
    if (s->on_event)
        s->on_event(s, what, s->arg);
}

static void on_tmo(evutil_socket_t fd, short what, void *arg)
{
    struct gw_stream *s = arg;
    (void)fd;
    (void)what;
    s->tmo_added = 0;
    if (!reading(s) || !s->rtimeout)
        return; /* rd_update() sets it again when reading resumes */
    cm_usec_t now = cm_now_mono_coarse(), len = tv_len(s->rtimeout);
    if (now - s->rd_since >= len) {
        fail(s, GW_STREAM_READING | GW_STREAM_TIMEOUT, ETIMEDOUT);
        return;
    }
    cm_usec_t left = s->rd_since + len - now;
    struct timeval tv;
    cm_usec_to_tv(left, &tv);
    event_add(&s->tmo, &tv);
    s->tmo_added = 1;
    s->tmo_at = now + left;
}

/* ------------------------------------------------------------------ TLS */

/* OpenSSL's error queue is per thread and must be empty before each call whose error is read
 * with SSL_get_error(): what one connection left there must not decide for the next. */
static void ssl_clear(void)
{
    ERR_clear_error();
}

/* One SSL_read into the scratch: bytes, 0 at the peer's close (close_notify, or the socket's
 * EOF), -EAGAIN to wait (for a read, or a write: rd_wants_wr), else a negative errno (EPROTO:
 * not TLS, or a TLS error). Plaintext OpenSSL holds beyond <want> is read on the next turn of
 * the loop (event_active): the socket will not report it. */
static ssize_t ssl_read(struct gw_stream *s, size_t want)
{
    size_t n = 0;
    ssl_clear();
    errno = 0;
    if (SSL_read_ex(s->ssl, s->scratch->buf, want, &n) == 1) {
        if (SSL_has_pending(s->ssl))
            event_active(&s->rd, EV_READ, 0);
        if (s->wr_wants_rd) { /* a write waited for this read: EV_WRITE again */
            s->wr_wants_rd = 0;
            if (evbuffer_get_length(s->out) && !s->wr_added)
                wr_arm(s);
        }
        return (ssize_t)n;
    }
    switch (SSL_get_error(s->ssl, 0)) {
    case SSL_ERROR_WANT_READ:
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        s->rd_wants_wr = 1;
        rd_update(s); /* EV_READ off until EV_WRITE (on_wr) */
        if (!s->wr_added)
            wr_arm(s);
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL: /* no errno: the socket's EOF without close_notify */
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -EIO
               : errno                                                   ? -errno
                                                                         : 0;
    default:
        return -EPROTO;
    }
}

/* The largest TLS record's plaintext. */
#define GW_TLS_RECORD 16384

/* Writes the output with SSL_write, a record at a time: bytes written, or -1 with errno (EAGAIN:
 * wait for the socket, or for a read: wr_wants_rd). A retried write presents the same bytes
 * (they stay in the output until written; SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets their
 * address change). */
static int ssl_write_out(struct gw_stream *s)
{
    size_t total = 0;
    s->wr_wants_rd = 0;
    while (evbuffer_get_length(s->out) > 0) {
        /* One record's worth (16 KiB) at a time, made contiguous: SSL_write per chain made a
         * record and a write(2) per chain, and a response's head and body are two chains. */
        size_t len = evbuffer_get_length(s->out);
        size_t want = len < GW_TLS_RECORD ? len : GW_TLS_RECORD;
        struct evbuffer_iovec v;
        if (evbuffer_peek(s->out, -1, NULL, &v, 1) < 1)
            break;
        if (v.iov_len < want) {
            v.iov_base = evbuffer_pullup(s->out, (ev_ssize_t)want);
            if (!v.iov_base) {
                errno = ENOMEM;
                return -1;
            }
        }
        v.iov_len = want;
        size_t n = 0;
        ssl_clear();
        errno = 0;
        if (SSL_write_ex(s->ssl, v.iov_base, v.iov_len, &n) == 1) {
            evbuffer_drain(s->out, n);
            total += n;
            continue;
        }
        int e = SSL_get_error(s->ssl, 0);
        if (e == SSL_ERROR_WANT_WRITE) {
            errno = EAGAIN;
        } else if (e == SSL_ERROR_WANT_READ) {
            s->wr_wants_rd = 1;
            errno = EAGAIN;
        } else {
            errno = e == SSL_ERROR_SYSCALL && errno ? errno : EPIPE;
            return -1;
        }
        return total ? (int)total : -1;
    }
    return (int)total;
}

/* evbuffer_write() for both kinds of stream. */
static int out_write(struct gw_stream *s)
{
    return s->ssl ? ssl_write_out(s) : evbuffer_write(s->out, s->fd);
}

int gw_stream_set_ssl(struct gw_stream *s, SSL *ssl)
{
    if (!ssl)
        return -ENOMEM;
    if (!SSL_set_fd(ssl, s->fd)) {
        SSL_free(ssl);
        return -ENOMEM;
    }
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
    SSL_set_accept_state(ssl);
    s->ssl = ssl;
    return 0;
}

int gw_stream_tls_ready(const struct gw_stream *s)
{
    return !s->ssl || SSL_is_init_finished(s->ssl);
}

void gw_stream_shutdown_write(struct gw_stream *s)
{
    if (!s->open)
        return;
    if (s->vops) {
        s->vops->shutdown(s->vctx);
        return;
    }
    if (s->ssl && SSL_is_init_finished(s->ssl)) {
        ssl_clear();
        SSL_shutdown(s->ssl); /* one try: a close_notify the socket takes now, or none */
    }
    shutdown(s->fd, SHUT_WR);
}

static void on_rd(evutil_socket_t fd, short what, void *arg)
{
    struct gw_stream *s = arg;
    (void)what;
    size_t len = evbuffer_get_length(s->in);
    size_t want = s->scratch->size;
    if (s->read_high) {
        if (len >= s->read_high) {
            suspend(s);
            return;
        }
        if (s->read_high - len < want)
            want = s->read_high - len;
    }
    /* One read per readiness (the loop is level-triggered: what is left is reported again),
     * into the loop's scratch: no FIONREAD to size a buffer first. */
    ssize_t n = s->ssl ? ssl_read(s, want) : read(fd, s->scratch->buf, want);
    if (n < 0) {
        if (s->ssl) {
            if (n == -EAGAIN)
                return;
            fail(s, GW_STREAM_READING | GW_STREAM_ERROR, (int)-n);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        fail(s, GW_STREAM_READING | GW_STREAM_ERROR, errno);
        return;
    }
    if (n == 0) {
        fail(s, GW_STREAM_READING | GW_STREAM_EOF, 0);
        return;
    }
    if (s->rtimeout)
        s->rd_since = cm_now_mono_coarse();
    const char *data = s->scratch->buf;
    if (len == 0 && s->on_peek) {
        size_t took = s->on_peek(s, data, (size_t)n, s->arg);
        if (took >= (size_t)n)
            return; /* taken whole; the stream may be gone */
        data += took;
        n -= (ssize_t)took;
    }
    if (evbuffer_add(s->in, data, (size_t)n) < 0) {
        fail(s, GW_STREAM_READING | GW_STREAM_ERROR, ENOMEM);
        return;
    }
    if (s->read_high && len + (size_t)n >= s->read_high)
        suspend(s);
    if (s->on_read)
        s->on_read(s, s->arg);
}

static void on_wr(evutil_socket_t fd, short what, void *arg)
{
    struct gw_stream *s = arg;
    if (what & EV_TIMEOUT) {
        fail(s, GW_STREAM_WRITING | GW_STREAM_TIMEOUT, ETIMEDOUT);
        return;
    }
    if (s->connecting) {
        int err = 0;
        socklen_t l = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
            err = errno;
        s->connecting = 0;
        if (err) {
            fail(s, GW_STREAM_WRITING | GW_STREAM_ERROR, err);
            return;
        }
        wr_del(s);
        if (s->on_event)
            s->on_event(s, GW_STREAM_CONNECTED, s->arg);
        return;
    }
    if (s->rd_wants_wr) { /* the handshake (in a read) waited for the socket */
        s->rd_wants_wr = 0;
        if (evbuffer_get_length(s->out) == 0)
            wr_del(s);
        rd_update(s);
        if (reading(s))
            on_rd(fd, EV_READ, s); /* the stream may be gone */
        return;                    /* a pending write is reported again */
    }
    int n = out_write(s);
    size_t left = evbuffer_get_length(s->out);
    if (s->wr_wants_rd) { /* TLS: the write waits for a read, not for the socket */
        wr_del(s);
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        fail(s, GW_STREAM_WRITING | GW_STREAM_ERROR, errno);
        return;
    }
    if (n == 0 && left > 0) {
        fail(s, GW_STREAM_WRITING | GW_STREAM_EOF, 0);
        return;
    }
    if (left == 0)
        wr_del(s);
    if (left <= s->write_low && s->on_write)
        s->on_write(s, s->arg);
}

int gw_stream_init(struct gw_stream *s, struct event_base *base, int fd,
                   struct gw_stream_scratch *scratch)
{
    memset(s, 0, sizeof(*s));
    s->fd = fd;
    s->scratch = scratch;
    s->in = evbuffer_new();
    s->out = evbuffer_new();
    if (!s->in || !s->out ||
        event_assign(&s->rd, base, fd, EV_READ | EV_PERSIST, on_rd, s) < 0 ||
        event_assign(&s->wr, base, fd, EV_WRITE | EV_PERSIST, on_wr, s) < 0 ||
        event_assign(&s->tmo, base, -1, 0, on_tmo, s) < 0) {
        if (s->in)
            evbuffer_free(s->in);
        if (s->out)
            evbuffer_free(s->out);
        close(fd);
        memset(s, 0, sizeof(*s));
        s->fd = -1;
        return -ENOMEM;
    }
    s->open = 1;
    return 0;
}

/* ------------------------------------------------------------------ virtual streams */

static void on_vrd(evutil_socket_t fd, short what, void *arg)
{
    struct gw_stream *s = arg;
    (void)fd, (void)what;
    if (s->v_fail & GW_STREAM_ERROR) { /* a reset: at once, whatever the input holds */
        s->v_fail = 0;
        fail(s, GW_STREAM_READING | GW_STREAM_ERROR, ECONNRESET);
        return;
    }
    if (!reading(s))
        return; /* rd_update() reports it when reading resumes */
    if (s->v_new) {
        s->v_new = 0;
        if (s->rtimeout)
            s->rd_since = cm_now_mono_coarse();
        if (s->v_fail)
            event_active(&s->rd, EV_READ, 0); /* the end after the bytes, on the next turn */
        if (s->on_read)
            s->on_read(s, s->arg); /* the stream may be gone */
        return;
    }
    if (s->v_fail) {
        short f = s->v_fail;
        s->v_fail = 0;
        fail(s, (short)(GW_STREAM_READING | f), 0);
    }
}

static void on_vwr(evutil_socket_t fd, short what, void *arg)
{
    struct gw_stream *s = arg;
    (void)fd;
    size_t left = evbuffer_get_length(s->out);
    if (what & EV_TIMEOUT) {
        if (left > 0) {
            fail(s, GW_STREAM_WRITING | GW_STREAM_TIMEOUT, ETIMEDOUT);
            return;
        }
        wr_del(s);
        return;
    }
    if (left <= s->write_low && s->on_write)
        s->on_write(s, s->arg);
}

int gw_stream_init_virtual(struct gw_stream *s, struct event_base *base,
                           const struct gw_stream_vops *ops, void *ctx)
{
    struct evbuffer *in = s->in ? s->in : evbuffer_new();
    struct evbuffer *out = s->out ? s->out : evbuffer_new();
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    if (!in || !out) {
        if (in)
            evbuffer_free(in);
        if (out)
            evbuffer_free(out);
        return -ENOMEM;
    }
    s->vops = ops;
    s->vctx = ctx;
    s->in = in;
    s->out = out;
    /* fd -1: no socket to watch; event_active() and the timers drive them */
    event_assign(&s->rd, base, -1, EV_PERSIST, on_vrd, s);
    event_assign(&s->wr, base, -1, EV_PERSIST, on_vwr, s);
    event_assign(&s->tmo, base, -1, 0, on_tmo, s);
    s->open = 1;
    return 0;
}

void gw_stream_fini_keep(struct gw_stream *s)
{
    if (!s->open)
        return;
    event_del(&s->rd);
    event_del(&s->wr);
    event_del(&s->tmo);
    s->open = 0;
    s->vops->closed(s->vctx, s->out);
    evbuffer_drain(s->in, evbuffer_get_length(s->in));
    evbuffer_drain(s->out, evbuffer_get_length(s->out));
    s->rd_added = s->wr_added = s->tmo_added = s->suspended = 0;
}

/* Bytes came into a virtual stream's input: on_read on the loop, once reading. */
static int v_arrived(struct gw_stream *s, int rc)
{
    if (rc < 0)
        return -ENOMEM;
    s->v_new = 1;
    if (reading(s))
        event_active(&s->rd, EV_READ, 0);
    return 0;
}

int gw_stream_v_input(struct gw_stream *s, const void *data, size_t len)
{
    return s->open ? v_arrived(s, evbuffer_add(s->in, data, len)) : -ENOMEM;
}

int gw_stream_v_input_buffer(struct gw_stream *s, struct evbuffer *buf)
{
    return s->open ? v_arrived(s, evbuffer_add_buffer(s->in, buf)) : -ENOMEM;
}

void gw_stream_v_fail(struct gw_stream *s, short what)
{
    if (!s->open || s->failed)
        return;
    s->v_fail = what;
    if ((what & GW_STREAM_ERROR) || reading(s))
        event_active(&s->rd, EV_READ, 0);
}

void gw_stream_v_taken(struct gw_stream *s)
{
    size_t left = evbuffer_get_length(s->out);
    if (left == 0)
        wr_del(s);
    else if (s->wr_added) /* progress: the write timeout starts again */
        event_add(&s->wr, s->v_wtimeout);
    if (left <= s->write_low && s->on_write)
        event_active(&s->wr, EV_WRITE, 0);
}

int gw_stream_connect(struct gw_stream *s, struct event_base *base, const struct sockaddr *sa,
                      socklen_t salen, struct gw_stream_scratch *scratch)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        memset(s, 0, sizeof(*s));
        s->fd = -1;
        return -e;
    }
    int rc = gw_stream_init(s, base, fd, scratch);
    if (rc < 0)
        return rc;
    if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
        /* unix sockets: EAGAIN is a full backlog, not "in progress" */
        int e = errno;
        gw_stream_fini(s);
        return -e;
    }
    s->connecting = 1;
    wr_arm(s); /* writable = connected (or failed: SO_ERROR says which) */
    return 0;
}

void gw_stream_fini(struct gw_stream *s)
{
    if (s->vops) { /* open, or kept by gw_stream_fini_keep(): its buffers go too */
        gw_stream_fini_keep(s);
        if (s->in)
            evbuffer_free(s->in);
        if (s->out)
            evbuffer_free(s->out);
        s->in = s->out = NULL;
        return;
    }
    if (!s->open)
        return;
    /* unconditionally: an event made active (event_active) may be pending though not added */
    event_del(&s->rd);
    event_del(&s->wr);
    event_del(&s->tmo);
    evbuffer_free(s->in);
    evbuffer_free(s->out);
    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    close(s->fd);
    s->open = 0;
    s->rd_added = s->wr_added = s->tmo_added = s->suspended = 0;
    s->in = s->out = NULL;
    s->fd = -1;
}

void gw_stream_setcb(struct gw_stream *s, gw_stream_data_cb on_read, gw_stream_data_cb on_write,
                     gw_stream_event_cb on_event, void *arg)
{
    s->on_read = on_read;
    s->on_write = on_write;
    s->on_event = on_event;
    s->on_peek = NULL;
    s->arg = arg;
}

/* Gives <ev> (pending if <added>) the timeout <tv> in place of *<cur>. */
static void retime(struct event *ev, int added, const struct timeval **cur,
                   const struct timeval *tv)
{
    if (*cur == tv)
        return;
    *cur = tv;
    if (added && tv)
        event_add(ev, tv);
    else if (added)
        event_remove_timer(ev); /* event_add() with NULL would keep the old timeout */
}

void gw_stream_set_timeouts(struct gw_stream *s, const struct timeval *rt,
                            const struct timeval *wt)
{
    if (s->rtimeout != rt) {
        /* a new timeout restarts (none: a pending timer finds none and stops) */
        s->rtimeout = rt;
        if (rt && reading(s)) {
            s->rd_since = cm_now_mono_coarse();
            tmo_arm(s, s->rd_since);
        }
    }
    if (!s->vops) /* a virtual stream's write timeout is its own (v_wtimeout) */
        retime(&s->wr, s->wr_added, &s->wtimeout, wt);
}

void gw_stream_set_watermarks(struct gw_stream *s, size_t read_high, size_t write_low)
{
    s->read_high = read_high;
    s->write_low = write_low;
    if (s->suspended && (!read_high || evbuffer_get_length(s->in) < read_high)) {
        evbuffer_remove_cb(s->in, on_input_drained, s);
        s->suspended = 0;
        rd_update(s);
    }
}

void gw_stream_read_enable(struct gw_stream *s)
{
    if (s->want_read)
        return; /* already reading (or held at the mark): the timeout runs on */
    s->want_read = 1;
    rd_update(s);
}

void gw_stream_read_disable(struct gw_stream *s)
{
    if (!s->want_read)
        return;
    s->want_read = 0;
    rd_update(s);
}

void gw_stream_flush(struct gw_stream *s)
{
    if (s->vops) {
        if (!s->open || evbuffer_get_length(s->out) == 0)
            return;
        if (s->v_wtimeout && !s->wr_added) {
            event_add(&s->wr, s->v_wtimeout);
            s->wr_added = 1;
        }
        s->vops->output(s->vctx);
        return;
    }
    if (!s->open || s->connecting || s->wr_added || evbuffer_get_length(s->out) == 0)
        return;
    int n = out_write(s);
    /* What is left, or the error (which EV_WRITE reports at once), through the loop. */
    if ((n < 0 || evbuffer_get_length(s->out) > 0) && !s->wr_wants_rd)
        wr_arm(s);
}

void gw_stream_write(struct gw_stream *s, const struct iovec *iov, int iovcnt)
{
    size_t done = 0;
    int tried = s->open && !s->connecting && !s->wr_added && !s->ssl && !s->vops &&
                evbuffer_get_length(s->out) == 0;
    if (tried) {
        ssize_t n = writev(s->fd, iov, iovcnt);
        if (n > 0)
            done = (size_t)n;
    }
    /* The rest (all of it after an error, which EV_WRITE then reports) into the output. */
    int left = 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t len = iov[i].iov_len;
        if (done >= len) {
            done -= len;
            continue;
        }
        evbuffer_add(s->out, (const char *)iov[i].iov_base + done, len - done);
        done = 0;
        left = 1;
    }
    if (left && tried)
        wr_arm(s); /* the socket just refused the rest: no second write now */
    else if (left)
        gw_stream_flush(s);
}
