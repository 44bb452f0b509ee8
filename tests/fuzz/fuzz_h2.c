/* Fuzz target: the gateway's HTTP/2 codec (gateway/h2.c) fed what a client could send, and
 * answered with what an instance could make the exchange write. The codec runs on a
 * connection whose socket is one end of a socket pair (the harness drains the other); the
 * exchanges it starts are the harness's own stand-ins (gw_conn_new_virtual() and friends are
 * defined here, so conn.c is not linked): each takes its request head, checks it, gives the
 * codec the heads of the input's "answer" as the exchange would (parsed, interim ones first)
 * and writes its body bytes in pieces, then ends (shutdown) or is freed mid-way (abort).
 *
 * Beyond "no crash, no leak, no hang": every request head the codec writes from a client's
 * header block is one head (its only empty line at its end: nothing a client sends can split
 * it into two requests).
 *
 * Input: byte 0 flags (bit 0: the exchange aborts instead of ending; bits 1-2: pieces the answer
 * is written in; bit 3: a 200 with a body is answered as the CDP rewrite does, the rest of the
 * answer its body of a stated length; each exchange answers as soon as its request head came,
 * before any body),
 * bytes 1-2 the answer's length (little endian, cut to what is there), the answer, then the
 * client's bytes after the connection preface and an empty SETTINGS frame (which the harness
 * sends first). */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gateway/config.h"
#include "gateway/conn_int.h"
#include "gateway/h2.h"
#include "gateway/stream.h"
#include "gateway/worker.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_h2: " __VA_ARGS__);                                                  \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

static struct event_base *base;
static struct gw_config gc;
static struct gw_worker w;
static char scratch_buf[16384];
static const struct timeval tv_keepalive = {5, 0}, tv_send = {5, 0};

/* What the current run's stand-in exchanges answer. */
static struct {
    const uint8_t *answer;
    size_t answer_len;
    unsigned flags;
    int parent_closed;
    int parent_freed;
    int n_live;
} run;

struct fake {
    struct gw_conn c; /* first: the codec's gw_conn pointer is this */
    int answered;
    int head_req; /* its request was a HEAD: the answer's head says no body follows */
};

static void check_head(struct evbuffer *in)
{
    size_t len = evbuffer_get_length(in);
    const char *p = (const char *)evbuffer_pullup(in, -1);
    if (!p || len < 4)
        return;
    /* the first empty line ends the head: nothing after it may look like a head's end before
     * the body (which the codec only writes as chunks or raw bytes) */
    const char *end = memmem(p, len, "\r\n\r\n", 4);
    if (!end)
        FAIL("a request head without its end");
    for (const char *q = p; q < end; q++)
        if ((*q == '\r' && q[1] != '\n') || (*q == '\n' && (q == p || q[-1] != '\r')))
            FAIL("a bare CR or LF in a request head");
}

/* The answer's heads as the exchange gives them to the codec (up_h1.c): each parsed, the
 * interim ones, then the final one; a head that does not parse is the exchange's 502. What
 * follows the final head is its body, written in pieces as the instance framed it. */
static void answer(struct fake *f)
{
    struct gw_stream *s = &f->c.cs;
    static struct gw_h1_header headers[100];
    static llhttp_settings_t settings;
    static int settings_done;
    if (!settings_done) {
        gw_h1_settings_init(&settings, NULL, NULL);
        settings_done = 1;
    }
    static char head[65536];
    const uint8_t *p = run.answer, *end = run.answer + run.answer_len;
    for (;;) {
        const uint8_t *e = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        struct gw_h1_head h;
        h.headers = headers;
        h.max_headers = 100;
        llhttp_t parser;
        llhttp_init(&parser, HTTP_RESPONSE, &settings);
        size_t hl = e ? (size_t)(e + 4 - p) : 0;
        if (e)
            memcpy(head, p, hl); /* the codec lower-cases names in place, as in the input */
        if (!e || gw_h1_parse_head(&parser, &settings, &h, head, hl, f->head_req) != GW_H1_OK) {
            static const char fields[] = "content-type: application/json\r\n"
                                         "content-length: 2\r\n";
            gw_h2_down.answer(&f->c, 502, fields, sizeof(fields) - 1, "{}", 2, 1);
            break;
        }
        p += hl;
        if ((run.flags & 8) && h.status == 200 && !h.body_done) {
            /* as the CDP rewrite does: a body of its own, of a length it states */
            f->c.rewrite = 1;
            f->c.reframe_len = (size_t)(end - p);
        }
        gw_h2_down.head(&f->c, &h, head, hl);
        if (h.status >= 200 || h.status == 101)
            break;
    }
    int pieces = 1 + (int)((run.flags >> 1) & 3);
    size_t left = (size_t)(end - p), off = 0, step = left / (size_t)pieces + 1;
    while (off < left) {
        size_t n = left - off < step ? left - off : step;
        evbuffer_add(s->out, p + off, n);
        gw_stream_flush(s);
        off += n;
    }
    if (run.flags & 1) {
        gw_conn_free(&f->c); /* abort: the codec resets the stream */
        return;
    }
    gw_stream_shutdown_write(s);
}

static void fake_read(struct gw_stream *s, void *arg)
{
    struct fake *f = arg;
    if (!f->answered) {
        check_head(s->in);
        const char *p = (const char *)evbuffer_pullup(s->in, 5);
        f->head_req = p && memcmp(p, "HEAD ", 5) == 0;
        f->answered = 1;
        evbuffer_drain(s->in, evbuffer_get_length(s->in));
        answer(f); /* f may be gone */
        return;
    }
    evbuffer_drain(s->in, evbuffer_get_length(s->in));
}

static void fake_event(struct gw_stream *s, short what, void *arg)
{
    (void)s, (void)what;
    gw_conn_free(&((struct fake *)arg)->c); /* a reset, or the send timeout */
}

/* ---- conn.c's and h1_write.c's functions the codec calls, for this harness */

int gw_h1_resp_drop(const struct gw_conn *c, const struct gw_h1_head *h, uint32_t i)
{
    (void)c;
    return (h->headers[i].cls & GW_H1_C_HOP) != 0;
}

size_t gw_h1_resp_fields(struct gw_conn *c, const struct gw_h1_head *h, char *buf, size_t cap)
{
    (void)c, (void)h;
    static const char mine[] = "x-berth-instance: fuzz\r\n";
    if (cap < sizeof(mine))
        return 0;
    memcpy(buf, mine, sizeof(mine) - 1);
    return sizeof(mine) - 1;
}

struct gw_conn *gw_conn_new_virtual(struct gw_conn *parent, const struct gw_stream_vops *ops,
                                    void *ctx)
{
    struct fake *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->c.w = parent->w;
    f->c.virt = 1;
    f->c.down = &gw_h2_down;
    if (gw_stream_init_virtual(&f->c.cs, base, ops, ctx) < 0) {
        free(f);
        return NULL;
    }
    f->c.cs.v_wtimeout = &tv_send;
    gw_stream_setcb(&f->c.cs, fake_read, NULL, fake_event, f);
    gw_stream_read_enable(&f->c.cs);
    run.n_live++;
    return &f->c;
}

void gw_conn_free(struct gw_conn *c)
{
    if (c->h2)
        gw_h2_free(c->h2);
    gw_stream_fini(&c->cs);
    if (c->virt) {
        run.n_live--;
    } else {
        event_del(&c->timer);
        run.parent_closed = run.parent_freed = 1;
    }
    free(c);
}

void gw_conn_h2_close(struct gw_conn *c)
{
    (void)c;
    run.parent_closed = 1; /* freed at the end of the run */
}

/* ---- the run */

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct gw_conn *c = arg;
    if (c->h2)
        gw_h2_timer(c);
}

static void setup(void)
{
    memset(&gc, 0, sizeof(gc));
    gc.h2c = 1;
    gc.limits.max_headers = 100;
    gc.limits.max_header_bytes = 16384;
    gc.limits.buffer_high = 65536;
    gc.limits.buffer_low = 16384;
    gc.limits.keepalive_timeout = 5000000;
    gc.h2.enabled = 1;
    gc.h2.max_streams = 16;
    gc.h2.stream_window = 65535;
    gc.h2.max_header_list = 16384;
    gc.h2.reset_burst = 50;
    gc.h2.reset_rate = 10;
    gc.h2.max_continuations = 8;
    gc.h2.max_settings = 32;
    gc.h2.max_outbound_ack = 1000;
    gc.h2.send_timeout = 5000000;
    base = event_base_new();
    if (!base)
        FAIL("event_base_new");
    memset(&w, 0, sizeof(w));
    w.gc = &gc;
    w.base = base;
    w.scratch.buf = scratch_buf;
    w.scratch.size = sizeof(scratch_buf);
    w.to_keepalive = &tv_keepalive;
    w.to_h2_send = &tv_send;
}

static void drain(int fd)
{
    char sink[65536];
    while (read(fd, sink, sizeof(sink)) > 0) {
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!base)
        setup();
    if (size < 3)
        return 0;
    memset(&run, 0, sizeof(run));
    run.flags = data[0];
    size_t alen = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3, size -= 3;
    if (alen > size)
        alen = size;
    run.answer = data;
    run.answer_len = alen;
    data += alen, size -= alen;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        FAIL("socketpair: %s", strerror(errno));
    struct gw_conn *c = calloc(1, sizeof(*c));
    if (!c || gw_stream_init(&c->cs, base, sv[0], &w.scratch) < 0)
        FAIL("connection set-up");
    c->w = &w;
    c->autok = &c->own_auto;
    snprintf(c->peer, sizeof(c->peer), "fuzz");
    evtimer_assign(&c->timer, base, on_timer, c);
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";
    evbuffer_add(c->cs.in, preface, sizeof(preface) - 1);
    evbuffer_add(c->cs.in, data, size);
    gw_h2_start(c, NULL, 0);
    for (int round = 0; round < 64 && !run.parent_closed; round++) {
        drain(sv[1]);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    drain(sv[1]);
    if (!run.parent_freed) /* also after gw_conn_h2_close(), which leaves it to us */
        gw_conn_free(c);
    /* the exchanges are gone with the codec, and the loop holds nothing of theirs */
    if (run.n_live != 0)
        FAIL("%d exchange(s) left after the connection was freed", run.n_live);
    event_base_loop(base, EVLOOP_NONBLOCK);
    close(sv[1]);
    return 0;
}
