/* Unit tests of gateway/stream.c on a real event loop: a socketpair (or a listening socket)
 * with the stream on one end and the test driving the other. Every loop run is bounded by a
 * timer, so a missing callback fails the test instead of hanging it. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "gateway/stream.h"
#include "tests/harness/test.h"

struct fx {
    struct event_base *base;
    struct gw_stream_scratch scratch;
    struct gw_stream s;
    int peer;
    int reads, writes, events;
    short last_event;
    size_t seen; /* input length at the last read callback */
    int drain;   /* read callback drains the input */
    int close_on_event;
};

static char scratch_buf[64 * 1024];

static void on_read(struct gw_stream *s, void *arg)
{
    struct fx *f = arg;
    f->reads++;
    f->seen = evbuffer_get_length(s->in);
    if (f->drain)
        evbuffer_drain(s->in, f->seen);
    event_base_loopbreak(f->base);
}

static void on_write(struct gw_stream *s, void *arg)
{
    struct fx *f = arg;
    (void)s;
    f->writes++;
    event_base_loopbreak(f->base);
}

static void on_event(struct gw_stream *s, short what, void *arg)
{
    struct fx *f = arg;
    f->events++;
    f->last_event = what;
    if (f->close_on_event)
        gw_stream_fini(s); /* a callback may end the stream */
    event_base_loopbreak(f->base);
}

static void fx_base(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    CHECK_NOT_NULL(f->base);
    f->scratch.buf = scratch_buf;
    f->scratch.size = sizeof(scratch_buf);
    f->peer = -1;
}

static void fx_pair(struct fx *f)
{
    fx_base(f);
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(gw_stream_init(&f->s, f->base, fds[0], &f->scratch), 0);
    gw_stream_setcb(&f->s, on_read, on_write, on_event, f);
    f->peer = fds[1];
}

static void fx_done(struct fx *f)
{
    gw_stream_fini(&f->s);
    if (f->peer >= 0)
        close(f->peer);
    event_base_free(f->base);
}

/* Runs the loop until a callback breaks it or <ms> pass. */
static void run(struct fx *f, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
}

/* The peer reads until <want> bytes came (or a bounded number of rounds passed) while the loop
 * runs in 1 ms slices, so the stream can write what the socket refused. Returns the bytes read;
 * <last> gets the last three of them. */
static size_t drain_peer(struct fx *f, size_t want, char last[3])
{
    size_t got = 0;
    memset(last, 0, 3);
    for (int i = 0; i < 20000 && got < want; i++) {
        char rb[65536];
        ssize_t n = read(f->peer, rb, sizeof(rb));
        for (ssize_t k = 0; k < n; k++) {
            last[0] = last[1];
            last[1] = last[2];
            last[2] = rb[k];
        }
        if (n > 0)
            got += (size_t)n;
        struct timeval tv = {0, 1000};
        event_base_loopexit(f->base, &tv);
        event_base_dispatch(f->base);
    }
    return got;
}

static void put(int fd, const char *s)
{
    CHECK_INT_EQ(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

TEST(stream_reads_into_input_when_enabled)
{
    struct fx f;
    fx_pair(&f);
    put(f.peer, "hello");
    run(&f, 100);
    CHECK_INT_EQ(f.reads, 0); /* reading starts disabled */
    gw_stream_read_enable(&f.s);
    CHECK(gw_stream_reading(&f.s));
    run(&f, 2000);
    CHECK_INT_EQ(f.reads, 1);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 5);
    CHECK_MEM_EQ(evbuffer_pullup(f.s.in, -1), "hello", 5);
    put(f.peer, " world");
    run(&f, 2000);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 11); /* appended */
    gw_stream_read_disable(&f.s);
    put(f.peer, "!");
    run(&f, 100);
    CHECK_INT_EQ(f.reads, 2);
    fx_done(&f);
}

TEST(stream_holds_reading_at_the_high_mark_and_resumes_on_drain)
{
    struct fx f;
    fx_pair(&f);
    gw_stream_set_watermarks(&f.s, 10, 0);
    gw_stream_read_enable(&f.s);
    put(f.peer, "0123456789abcdefghij"); /* 20 bytes */
    run(&f, 2000);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 10); /* one read of what fits under the mark */
    CHECK(f.s.suspended);
    run(&f, 100);
    CHECK_INT_EQ(f.reads, 1);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 10);
    evbuffer_drain(f.s.in, 4); /* below the mark: reading resumes */
    CHECK(!f.s.suspended);
    run(&f, 2000);
    CHECK_INT_EQ(f.reads, 2);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 10);
    char got[16] = {0};
    evbuffer_remove(f.s.in, got, 10);
    CHECK_STR_EQ(got, "456789abcd");
    /* drained: the rest arrives */
    run(&f, 2000);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 6);
    fx_done(&f);
}

TEST(stream_lifting_the_mark_resumes_a_held_stream)
{
    struct fx f;
    fx_pair(&f);
    gw_stream_set_watermarks(&f.s, 4, 0);
    gw_stream_read_enable(&f.s);
    put(f.peer, "abcdefgh");
    run(&f, 2000);
    CHECK(f.s.suspended);
    gw_stream_set_watermarks(&f.s, 0, 0);
    CHECK(!f.s.suspended);
    run(&f, 2000);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 8);
    fx_done(&f);
}

TEST(stream_reports_eof_and_stops_reading)
{
    struct fx f;
    fx_pair(&f);
    gw_stream_read_enable(&f.s);
    put(f.peer, "last");
    shutdown(f.peer, SHUT_WR);
    run(&f, 2000);
    CHECK_INT_EQ(f.reads, 1);
    run(&f, 2000);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_READING | GW_STREAM_EOF);
    CHECK(!gw_stream_reading(&f.s));
    CHECK(f.s.failed);
    fx_done(&f);
}

TEST(stream_read_timeout_fires_and_can_be_removed)
{
    struct fx f;
    fx_pair(&f);
    struct timeval t50 = {0, 50000};
    gw_stream_set_timeouts(&f.s, &t50, NULL);
    gw_stream_read_enable(&f.s);
    run(&f, 2000);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_READING | GW_STREAM_TIMEOUT);
    CHECK(!gw_stream_reading(&f.s));
    /* again, then without a timeout: nothing fires */
    f.events = 0;
    gw_stream_read_enable(&f.s);
    gw_stream_set_timeouts(&f.s, NULL, NULL);
    run(&f, 200);
    CHECK_INT_EQ(f.events, 0);
    fx_done(&f);
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

TEST(stream_read_timeout_restarts_with_every_read)
{
    /* A 150 ms common timeout (the kind the gateway uses); the peer writes every 60 ms for
     * 300 ms: no timeout while bytes come, then one ~150 ms after the last. */
    struct fx f;
    fx_pair(&f);
    f.drain = 1;
    struct timeval t150 = {0, 150000};
    const struct timeval *common = event_base_init_common_timeout(f.base, &t150);
    CHECK_NOT_NULL(common);
    gw_stream_set_timeouts(&f.s, common, NULL);
    gw_stream_read_enable(&f.s);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 5; i++) {
        usleep(60000);
        put(f.peer, "x");
        run(&f, 1000);
        CHECK_INT_EQ(f.events, 0);
    }
    CHECK_INT_EQ(f.reads, 5);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run(&f, 3000);
    double waited = ms_since(&t0);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_READING | GW_STREAM_TIMEOUT);
    CHECK_MSG(waited >= 140 && waited < 1500, "timed out after %.0f ms", waited);
    fx_done(&f);
}

TEST(stream_shorter_read_timeout_takes_effect_at_once)
{
    /* reading with a long timeout, then a short one: the short one fires, not the long */
    struct fx f;
    fx_pair(&f);
    struct timeval t10s = {10, 0}, t100 = {0, 100000};
    gw_stream_set_timeouts(&f.s, event_base_init_common_timeout(f.base, &t10s), NULL);
    gw_stream_read_enable(&f.s);
    run(&f, 50);
    CHECK_INT_EQ(f.events, 0);
    gw_stream_set_timeouts(&f.s, &t100, NULL);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run(&f, 3000);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_READING | GW_STREAM_TIMEOUT);
    CHECK_MSG(ms_since(&t0) < 2000, "the 100 ms timeout took %.0f ms", ms_since(&t0));
    fx_done(&f);
}

TEST(stream_held_reading_has_no_timeout)
{
    /* reading disabled (or held at the mark) is not "quiet": no timeout until it resumes */
    struct fx f;
    fx_pair(&f);
    struct timeval t50 = {0, 50000};
    gw_stream_set_timeouts(&f.s, &t50, NULL);
    gw_stream_read_enable(&f.s);
    gw_stream_read_disable(&f.s);
    run(&f, 200);
    CHECK_INT_EQ(f.events, 0);
    gw_stream_read_enable(&f.s);
    run(&f, 2000);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_READING | GW_STREAM_TIMEOUT);
    fx_done(&f);
}

static int peeks, peek_taken;
static size_t on_peek(struct gw_stream *s, const char *data, size_t len, void *arg)
{
    struct fx *f = arg;
    (void)s;
    peeks++;
    if (len >= 4 && memcmp(data, "take", 4) == 0) {
        peek_taken += (int)len;
        event_base_loopbreak(f->base);
        return len;
    }
    if (len >= 4 && memcmp(data, "part", 4) == 0) {
        peek_taken += 4;
        return 4; /* the rest is appended */
    }
    return 0;
}

TEST(stream_peek_is_offered_reads_into_an_empty_input)
{
    struct fx f;
    fx_pair(&f);
    peeks = peek_taken = 0;
    gw_stream_set_peek(&f.s, on_peek);
    gw_stream_read_enable(&f.s);
    put(f.peer, "take this");
    run(&f, 2000);
    CHECK_INT_EQ(peeks, 1);
    CHECK_INT_EQ(peek_taken, 9);
    CHECK_INT_EQ(f.reads, 0); /* taken: never in the input, no read callback */
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 0);
    put(f.peer, "keep");
    run(&f, 2000);
    CHECK_INT_EQ(peeks, 2);
    CHECK_INT_EQ(f.reads, 1); /* declined: appended, read callback as usual */
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 4);
    put(f.peer, "take more");
    run(&f, 2000);
    CHECK_INT_EQ(peeks, 2); /* the input is not empty: appended after what waits, in order */
    CHECK_INT_EQ(f.reads, 2);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 13);
    /* gw_stream_setcb() clears it: a pooled connection's next owner starts without one */
    evbuffer_drain(f.s.in, 13);
    gw_stream_setcb(&f.s, on_read, on_write, on_event, &f);
    put(f.peer, "take");
    run(&f, 2000);
    CHECK_INT_EQ(peeks, 2);
    CHECK_INT_EQ(f.reads, 3);
    fx_done(&f);
}

TEST(stream_peek_may_take_part_of_a_read)
{
    struct fx f;
    fx_pair(&f);
    peeks = peek_taken = 0;
    gw_stream_set_peek(&f.s, on_peek);
    gw_stream_read_enable(&f.s);
    put(f.peer, "part and the rest");
    run(&f, 2000);
    CHECK_INT_EQ(peeks, 1);
    CHECK_INT_EQ(peek_taken, 4);
    CHECK_INT_EQ(f.reads, 1); /* the rest appended, read callback as usual */
    CHECK_UINT_EQ(evbuffer_get_length(f.s.in), 13);
    CHECK(memcmp(evbuffer_pullup(f.s.in, -1), " and the rest", 13) == 0);
    fx_done(&f);
}

TEST(stream_flush_writes_at_once_without_arming_write)
{
    struct fx f;
    fx_pair(&f);
    evbuffer_add(f.s.out, "ping", 4);
    gw_stream_flush(&f.s);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.out), 0);
    CHECK(!gw_stream_writing(&f.s));
    char buf[8] = {0};
    CHECK_INT_EQ(read(f.peer, buf, sizeof(buf)), 4);
    CHECK_STR_EQ(buf, "ping");
    run(&f, 50);
    CHECK_INT_EQ(f.writes, 0); /* a complete flush calls nobody */
    fx_done(&f);
}

TEST(stream_output_the_socket_refuses_waits_and_calls_back_at_the_low_mark)
{
    struct fx f;
    fx_pair(&f);
    int small = 4096;
    setsockopt(f.s.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    gw_stream_set_watermarks(&f.s, 0, 1000);
    static char big[1 << 20];
    memset(big, 'x', sizeof(big));
    evbuffer_add(f.s.out, big, sizeof(big));
    gw_stream_flush(&f.s);
    CHECK(evbuffer_get_length(f.s.out) > 0);
    CHECK(gw_stream_writing(&f.s));
    /* the peer reads everything; the stream writes the rest and calls back once drained */
    char last[3];
    CHECK_UINT_EQ(drain_peer(&f, sizeof(big), last), sizeof(big));
    CHECK(f.writes >= 1);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.out), 0);
    CHECK(!gw_stream_writing(&f.s)); /* EV_WRITE off once the output is empty */
    fx_done(&f);
}

TEST(stream_write_error_is_reported_on_the_loop)
{
    struct fx f;
    signal(SIGPIPE, SIG_IGN); /* as berth-gateway does */
    fx_pair(&f);
    close(f.peer);
    f.peer = -1;
    evbuffer_add(f.s.out, "lost", 4);
    gw_stream_flush(&f.s); /* EPIPE: not reported from inside the call */
    CHECK_INT_EQ(f.events, 0);
    run(&f, 2000);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_WRITING | GW_STREAM_ERROR);
    CHECK(f.s.error == EPIPE || f.s.error == ECONNRESET);
    fx_done(&f);
}

TEST(stream_callback_may_finish_the_stream)
{
    struct fx f;
    fx_pair(&f);
    f.close_on_event = 1;
    gw_stream_read_enable(&f.s);
    close(f.peer);
    f.peer = -1;
    run(&f, 2000);
    CHECK_INT_EQ(f.events, 1);
    CHECK(!f.s.open);
    fx_done(&f); /* fini again: a no-op */
}

TEST(stream_connects_to_a_unix_listener_and_sends_what_was_queued)
{
    struct fx f;
    fx_base(&f);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s/l.sock", test_tmpdir());
    CHECK_INT_EQ(bind(l, (struct sockaddr *)&un, sizeof(un)), 0);
    CHECK_INT_EQ(listen(l, 4), 0);
    CHECK_INT_EQ(gw_stream_connect(&f.s, f.base, (struct sockaddr *)&un, sizeof(un), &f.scratch),
                 0);
    gw_stream_setcb(&f.s, on_read, on_write, on_event, &f);
    evbuffer_add(f.s.out, "queued", 6);
    gw_stream_flush(&f.s); /* waits for the connection */
    CHECK_UINT_EQ(evbuffer_get_length(f.s.out), 6);
    run(&f, 2000);
    CHECK_INT_EQ(f.events, 1);
    CHECK_INT_EQ(f.last_event, GW_STREAM_CONNECTED);
    gw_stream_flush(&f.s);
    int a = accept(l, NULL, NULL);
    CHECK(a >= 0);
    char buf[16] = {0};
    CHECK_INT_EQ(read(a, buf, sizeof(buf)), 6);
    CHECK_STR_EQ(buf, "queued");
    close(a);
    close(l);
    fx_done(&f);
}

TEST(stream_connect_to_a_missing_socket_fails_at_once)
{
    struct fx f;
    fx_base(&f);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof(un.sun_path), "%s/none.sock", test_tmpdir());
    CHECK_INT_EQ(gw_stream_connect(&f.s, f.base, (struct sockaddr *)&un, sizeof(un), &f.scratch),
                 -ENOENT);
    CHECK(!f.s.open);
    fx_done(&f);
}

TEST(stream_refused_tcp_connect_is_an_error_event)
{
    struct fx f;
    fx_base(&f);
    /* a port that was just free: bind, learn it, close */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(in);
    CHECK_INT_EQ(bind(t, (struct sockaddr *)&in, sizeof(in)), 0);
    CHECK_INT_EQ(getsockname(t, (struct sockaddr *)&in, &len), 0);
    close(t);
    int rc = gw_stream_connect(&f.s, f.base, (struct sockaddr *)&in, sizeof(in), &f.scratch);
    if (rc == 0) {
        gw_stream_setcb(&f.s, on_read, on_write, on_event, &f);
        run(&f, 2000);
        CHECK_INT_EQ(f.events, 1);
        CHECK_INT_EQ(f.last_event, GW_STREAM_WRITING | GW_STREAM_ERROR);
        CHECK_INT_EQ(f.s.error, ECONNREFUSED);
    } else {
        CHECK_INT_EQ(rc, -ECONNREFUSED);
    }
    fx_done(&f);
}

TEST(stream_write_sends_from_the_callers_memory_or_queues_in_order)
{
    struct fx f;
    fx_pair(&f);
    struct iovec iov[2] = {{"head ", 5}, {"body", 4}};
    gw_stream_write(&f.s, iov, 2);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.out), 0); /* nothing copied */
    CHECK(!gw_stream_writing(&f.s));
    char buf[64] = {0};
    CHECK_INT_EQ(read(f.peer, buf, sizeof(buf)), 9);
    CHECK_STR_EQ(buf, "head body");
    /* with output waiting (a socket that refuses), later writes queue behind it */
    int small = 4096;
    setsockopt(f.s.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    static char big[1 << 20];
    memset(big, 'x', sizeof(big));
    struct iovec one = {big, sizeof(big)};
    gw_stream_write(&f.s, &one, 1);
    CHECK(gw_stream_writing(&f.s));
    size_t queued = evbuffer_get_length(f.s.out);
    CHECK(queued > 0 && queued < sizeof(big));
    struct iovec tail = {"END", 3};
    gw_stream_write(&f.s, &tail, 1);
    CHECK_UINT_EQ(evbuffer_get_length(f.s.out), queued + 3);
    char last[3];
    CHECK_UINT_EQ(drain_peer(&f, sizeof(big) + 3, last), sizeof(big) + 3);
    CHECK_MEM_EQ(last, "END", 3);
    fx_done(&f);
}
