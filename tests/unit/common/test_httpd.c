/* Unit tests of common/httpd.c on a real event loop: the server on one end of a socketpair
 * (cm_httpd_adopt) or on a loopback listener, the test speaking raw HTTP on the other end.
 * Every wait is bounded, so a missing answer fails the test instead of hanging it. */
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/httpd.h"
#include "tests/harness/test.h"

enum mode { ECHO, DEFER, DEFER_CLOSECB, BIG, HOLD };

struct fx {
    struct event_base *base;
    struct cm_httpd *h;
    int peer;
    enum mode mode;
    struct cm_httpd_req *held; /* DEFER: the request not answered yet */
    int requests, closed;
    char got[65536]; /* what the peer read */
    size_t got_len;
    int eof;
};

static void on_close(void *arg)
{
    struct fx *f = arg;
    f->closed++;
    f->held = NULL;
}

static void on_req(struct cm_httpd_req *req, void *arg)
{
    struct fx *f = arg;
    f->requests++;
    if (f->mode == BIG) {
        static char big[8192];
        memset(big, 'b', sizeof(big));
        cm_httpd_reply(req, 200, "text/plain", big, sizeof(big));
        return;
    }
    if (f->mode == HOLD) {
        /* The owner is named by the path ("/t1"); over max_per_owner: 429, as the admin does. */
        const char *owner = cm_httpd_path(req) + 1;
        int rc = cm_httpd_hold(req, owner, strlen(owner));
        if (rc == -EBUSY) {
            cm_httpd_reply_error(req, 429, "too_many_connections", "over the owner's limit");
            return;
        }
        CHECK_INT_EQ(rc, 0);
        cm_httpd_reply(req, 200, "text/plain", "held", 4);
        return;
    }
    if (f->mode != ECHO) {
        f->held = req;
        if (f->mode == DEFER_CLOSECB)
            cm_httpd_set_close_cb(req, on_close, f);
        return;
    }
    size_t blen;
    const char *body = cm_httpd_body(req, &blen);
    const char *q = cm_httpd_query(req);
    const char *x = cm_httpd_header(req, "x-test");
    char out[4096];
    int n =
        snprintf(out, sizeof(out), "m=%s/%d p=%s q=%s x=[%s] b=%zu:%.*s", cm_httpd_method_name(req),
                 (int)cm_httpd_method(req), cm_httpd_path(req), q ? q : "(none)", x ? x : "(none)",
                 blen, (int)(blen < 200 ? blen : 200), body);
    CHECK_INT_EQ(cm_httpd_add_header(req, "X-Reply", "yes"), 0);
    cm_httpd_reply(req, 200, "text/plain", out, (size_t)n);
}

static const struct cm_httpd_limits LIM = {.max_header_bytes = 1024,
                                           .max_body = 1024,
                                           .timeout = 300 * CM_USEC_PER_MSEC,
                                           .max_connections = 4};

static void fx_init(struct fx *f, const struct cm_httpd_limits *lim)
{
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    CHECK_NOT_NULL(f->base);
    f->h = cm_httpd_create(f->base, lim ? lim : &LIM, on_req, f);
    CHECK_NOT_NULL(f->h);
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(cm_httpd_adopt(f->h, fds[0]), 0);
    f->peer = fds[1];
}

static void fx_done(struct fx *f)
{
    cm_httpd_destroy(f->h);
    if (f->peer >= 0)
        close(f->peer);
    event_base_free(f->base);
}

static void put(struct fx *f, const char *s, size_t n)
{
    if (n == (size_t)-1)
        n = strlen(s);
    CHECK_INT_EQ(write(f->peer, s, n), (ssize_t)n);
}

/* Runs the loop of <base> for <ms> milliseconds. */
static void run_ms(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

/* Runs the loop in 1 ms slices for up to <ms>, the peer reading meanwhile, until <until>
 * occurs in what it read (NULL: until EOF). */
static void pump(struct fx *f, int ms, const char *until)
{
    for (int i = 0; i < ms; i++) {
        run_ms(f->base, 1);
        for (;;) {
            ssize_t n = read(f->peer, f->got + f->got_len, sizeof(f->got) - 1 - f->got_len);
            if (n > 0) {
                f->got_len += (size_t)n;
                f->got[f->got_len] = '\0';
                continue;
            }
            if (n == 0)
                f->eof = 1;
            break;
        }
        if (until ? test_contains(f->got, until) : f->eof)
            return;
    }
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void check_json_error(struct fx *f, const char *status_line, const char *code)
{
    pump(f, 2000, NULL);
    CHECK_MSG(strncmp(f->got, status_line, strlen(status_line)) == 0, "got: %s", f->got);
    CHECK_MSG(test_contains(f->got, "Content-Type: application/json\r\n"), "got: %s", f->got);
    CHECK_MSG(test_contains(f->got, "Connection: close\r\n"), "got: %s", f->got);
    char want[128];
    snprintf(want, sizeof(want), "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
    CHECK_MSG(test_contains(f->got, want), "got: %s", f->got);
    CHECK_MSG(f->eof, "the connection stays open after %s", code);
}

TEST(httpd_answers_and_keeps_the_connection)
{
    /* Not about time: a timeout a busy machine cannot reach between the two requests. */
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    struct fx f;
    fx_init(&f, &lim);
    put(&f, "GET /a/b?x=1&y=%20#frag HTTP/1.1\r\nHost: h\r\nX-Test:   v w \t\r\n\r\n", -1);
    pump(&f, 2000, "b=0:");
    CHECK_MSG(strncmp(f.got, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %s", f.got);
    CHECK(test_contains(f.got, "Content-Type: text/plain\r\n"));
    CHECK(test_contains(f.got, "X-Reply: yes\r\n"));
    CHECK(!test_contains(f.got, "Connection:"));
    CHECK_MSG(test_contains(f.got, "m=GET/1 p=/a/b q=x=1&y=%20 x=[v w] b=0:"), "got: %s", f.got);
    f.got_len = 0;
    put(&f, "DELETE /c HTTP/1.1\r\nHost: h\r\n\r\n", -1);
    pump(&f, 2000, "b=0:");
    CHECK_MSG(test_contains(f.got, "m=DELETE/5 p=/c q=(none) x=[(none)]"), "got: %s", f.got);
    CHECK(!f.eof);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 1);
    fx_done(&f);
}

TEST(httpd_answers_pipelined_requests_in_order)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER;
    put(&f, "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", -1);
    pump(&f, 50, "never");
    CHECK_INT_EQ(f.requests, 1); /* one at a time */
    CHECK_NOT_NULL(f.held);
    CHECK_STR_EQ(cm_httpd_path(f.held), "/1");
    f.mode = ECHO;
    cm_httpd_reply(f.held, 204, "text/plain", "ignored", 7);
    pump(&f, 2000, "p=/3");
    CHECK_INT_EQ(f.requests, 3);
    const char *a = strstr(f.got, "HTTP/1.1 204 No Content\r\n");
    const char *b = strstr(f.got, "p=/2");
    const char *c = strstr(f.got, "p=/3");
    CHECK(a && b && c && a < b && b < c);
    CHECK_MSG(!test_contains(f.got, "ignored") &&
                  !test_contains(f.got, "Content-Type: text/plain\r\nContent-Length: 7"),
              "a 204 carries no body: %s", f.got);
    fx_done(&f);
}

TEST(httpd_http10_closes_unless_keep_alive)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", -1);
    pump(&f, 2000, "p=/k");
    CHECK(test_contains(f.got, "Connection: keep-alive\r\n"));
    f.got_len = 0;
    put(&f, "GET /c HTTP/1.0\r\n\r\n", -1);
    pump(&f, 2000, NULL);
    CHECK(test_contains(f.got, "Connection: close\r\n"));
    CHECK(test_contains(f.got, "p=/c"));
    CHECK(f.eof);
    fx_done(&f);
}

TEST(httpd_head_gets_the_length_but_no_body)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n", -1);
    pump(&f, 2000, "p=/g");
    CHECK(count(f.got, "HTTP/1.1 200 OK\r\n") == 2);
    CHECK(!test_contains(f.got, "p=/h")); /* HEAD's body is not sent */
    const char *want = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 38\r\n";
    CHECK_MSG(strncmp(f.got, want, strlen(want)) == 0, "HEAD carries GET's length: %s", f.got);
    const char *second = strstr(f.got + 1, "HTTP/1.1 200 OK\r\n");
    CHECK_NOT_NULL(second);
    CHECK(second[-1] == '\n' && second[-2] == '\r' &&
          second[-3] == '\n'); /* right after the head */
    fx_done(&f);
}

TEST(httpd_reassembles_a_chunked_body)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n wor", -1);
    pump(&f, 20, "never");
    put(&f, "ld\r\n0\r\n\r\n", -1);
    pump(&f, 2000, "b=11:");
    CHECK_MSG(test_contains(f.got, "m=POST/3 p=/p q=(none) x=[(none)] b=11:hello world"), "got: %s",
              f.got);
    fx_done(&f);
}

TEST(httpd_refuses_a_body_over_the_limit_by_its_length)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "POST /p HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", -1);
    check_json_error(&f, "HTTP/1.1 413 Content Too Large\r\n", "body_too_large");
    CHECK_INT_EQ(f.requests, 0);
    fx_done(&f);
}

TEST(httpd_refuses_a_chunked_body_over_the_limit)
{
    struct fx f;
    fx_init(&f, NULL);
    char big[1200];
    memset(big, 'z', sizeof(big));
    put(&f, "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4b0\r\n", -1);
    put(&f, big, sizeof(big));
    check_json_error(&f, "HTTP/1.1 413 Content Too Large\r\n", "body_too_large");
    CHECK_INT_EQ(f.requests, 0);
    fx_done(&f);
}

TEST(httpd_refuses_a_head_over_the_limit)
{
    struct fx f;
    fx_init(&f, NULL);
    char big[1100];
    memset(big, 'a', sizeof(big));
    put(&f, "GET / HTTP/1.1\r\nX-Big: ", -1);
    put(&f, big, sizeof(big));
    check_json_error(&f, "HTTP/1.1 431 Request Header Fields Too Large\r\n", "headers_too_large");
    fx_done(&f);
}

TEST(httpd_refuses_a_head_of_white_space_over_the_limit)
{
    /* White space llhttp skips without a callback still counts. */
    struct fx f;
    fx_init(&f, NULL);
    char big[1100];
    memset(big, ' ', sizeof(big));
    put(&f, "GET / HTTP/1.1\r\nX-Big:", -1);
    put(&f, big, sizeof(big));
    check_json_error(&f, "HTTP/1.1 431 Request Header Fields Too Large\r\n", "headers_too_large");
    fx_done(&f);
}

TEST(httpd_answers_garbage_with_json_400)
{
    static const char *const bad[] = {
        "\x00\x01GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET nopath HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET / HTTP/2.0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fx f;
        fx_init(&f, NULL);
        put(&f, bad[i], i == 0 ? 13 : (size_t)-1);
        check_json_error(&f, "HTTP/1.1 400 Bad Request\r\n", "bad_request");
        CHECK_INT_EQ(f.requests, 0);
        fx_done(&f);
    }
}

TEST(httpd_times_out_a_slow_request_with_json_408)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "GET /slow HTTP/1.1\r\nHost: x\r\n", -1);
    check_json_error(&f, "HTTP/1.1 408 Request Timeout\r\n", "request_timeout");
    fx_done(&f);
}

TEST(httpd_closes_an_idle_connection_silently)
{
    struct fx f;
    fx_init(&f, NULL);
    pump(&f, 2000, NULL);
    CHECK(f.eof);
    CHECK_UINT_EQ(f.got_len, 0);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 0);
    fx_done(&f);
}

TEST(httpd_trickled_bytes_do_not_extend_the_deadline)
{
    /* One byte every 50 ms: each arrives well within the timeout, the whole never does. */
    struct fx f;
    fx_init(&f, NULL);
    const char *req = "GET /trickle HTTP/1.1\r\nHost: x\r\n\r\n";
    for (size_t i = 0; req[i] && !f.got_len; i++) {
        put(&f, req + i, 1);
        pump(&f, 50, "HTTP/1.1");
    }
    CHECK_MSG(strncmp(f.got, "HTTP/1.1 408", 12) == 0, "got: %s", f.got);
    fx_done(&f);
}

TEST(httpd_sends_100_continue_then_takes_the_body)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "PUT /u HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", -1);
    pump(&f, 2000, "\r\n\r\n");
    CHECK_STR_EQ(f.got, "HTTP/1.1 100 Continue\r\n\r\n");
    put(&f, "abcde", -1);
    pump(&f, 2000, "b=5:abcde");
    CHECK(test_contains(f.got, "HTTP/1.1 200 OK"));
    fx_done(&f);
}

TEST(httpd_no_100_continue_for_a_body_over_the_limit)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "PUT /u HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n", -1);
    check_json_error(&f, "HTTP/1.1 413", "body_too_large");
    fx_done(&f);
}

TEST(httpd_an_answer_after_the_client_left_only_frees)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER;
    put(&f, "GET /late HTTP/1.1\r\n\r\n", -1);
    pump(&f, 50, "never");
    CHECK_NOT_NULL(f.held);
    close(f.peer);
    f.peer = -1;
    run_ms(f.base, 50);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 0);
    /* Still readable, then answered: freed (the sanitizer build checks for leaks and misuse). */
    CHECK_STR_EQ(cm_httpd_path(f.held), "/late");
    cm_httpd_reply_error(f.held, 503, "overloaded", "late");
    fx_done(&f);
}

TEST(httpd_close_callback_runs_when_the_client_leaves)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER_CLOSECB;
    put(&f, "POST /start HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", -1);
    pump(&f, 50, "never");
    CHECK_NOT_NULL(f.held);
    close(f.peer);
    f.peer = -1;
    run_ms(f.base, 50);
    CHECK_INT_EQ(f.closed, 1);
    CHECK(f.held == NULL);
    fx_done(&f);
}

TEST(httpd_destroy_runs_close_callbacks)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER_CLOSECB;
    put(&f, "GET /w HTTP/1.1\r\n\r\n", -1);
    pump(&f, 50, "never");
    CHECK_NOT_NULL(f.held);
    cm_httpd_destroy(f.h);
    f.h = NULL;
    CHECK_INT_EQ(f.closed, 1);
    fx_done(&f);
}

TEST(httpd_destroy_writes_what_is_queued)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER;
    put(&f, "POST /start HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", -1);
    pump(&f, 50, "never");
    CHECK_NOT_NULL(f.held);
    cm_httpd_reply_error(f.held, 503, "shutting_down", "stopping"); /* queued, loop not run */
    cm_httpd_destroy(f.h);
    f.h = NULL;
    char buf[1024] = {0};
    ssize_t n = read(f.peer, buf, sizeof(buf) - 1);
    CHECK_MSG(n > 0, "nothing written before the close");
    CHECK_MSG(strncmp(buf, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0, "got: %s", buf);
    CHECK(test_contains(buf, "\"shutting_down\""));
    fx_done(&f);
}

TEST(httpd_targets_in_absolute_and_asterisk_form)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "GET http://example.com:8080/abs/p?q=1 HTTP/1.1\r\n\r\n", -1);
    pump(&f, 2000, "b=0:");
    CHECK_MSG(test_contains(f.got, "p=/abs/p q=q=1 "), "got: %s", f.got);
    f.got_len = 0;
    put(&f, "GET http://example.com HTTP/1.1\r\n\r\n", -1);
    pump(&f, 2000, "b=0:");
    CHECK_MSG(test_contains(f.got, "p=/ q=(none)"), "got: %s", f.got);
    f.got_len = 0;
    put(&f, "OPTIONS * HTTP/1.1\r\n\r\n", -1);
    pump(&f, 2000, "b=0:");
    CHECK_MSG(test_contains(f.got, "m=OPTIONS/7 p=* q=(none)"), "got: %s", f.got);
    fx_done(&f);
}

TEST(httpd_upgrade_is_answered_then_closed_and_connect_refused)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW BYTES", -1);
    pump(&f, 2000, NULL);
    CHECK_MSG(strncmp(f.got, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %s", f.got);
    CHECK(test_contains(f.got, "p=/ws"));
    CHECK(test_contains(f.got, "Connection: close\r\n"));
    CHECK(f.eof);
    CHECK_INT_EQ(f.requests, 1);
    fx_done(&f);
    /* CONNECT's authority-form target is no path: the control planes are no proxies. */
    fx_init(&f, NULL);
    put(&f, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", -1);
    check_json_error(&f, "HTTP/1.1 400 Bad Request\r\n", "bad_request");
    CHECK_INT_EQ(f.requests, 0);
    fx_done(&f);
}

TEST(httpd_an_answer_does_not_run_the_next_handler_inside_it)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER;
    put(&f, "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", -1);
    pump(&f, 50, "never");
    CHECK_INT_EQ(f.requests, 1);
    struct cm_httpd_req *first = f.held;
    f.held = NULL;
    cm_httpd_reply(first, 200, NULL, "one", 3);
    CHECK_INT_EQ(f.requests, 1); /* /2 waits for the next loop turn */
    CHECK(f.held == NULL);
    pump(&f, 2000, "one");
    run_ms(f.base, 20);
    CHECK_INT_EQ(f.requests, 2);
    CHECK_NOT_NULL(f.held);
    CHECK_STR_EQ(cm_httpd_path(f.held), "/2");
    cm_httpd_reply(f.held, 200, NULL, "two", 3);
    pump(&f, 2000, "two");
    fx_done(&f);
}

TEST(httpd_a_client_that_never_reads_is_not_served_without_end)
{
    /* Requests pipelined without reading the answers: parsing stops while unread answers
     * pile up, so the handler runs a bounded number of times and the deadline of the last
     * answer closes the connection, however long the client keeps sending. */
    struct fx f;
    fx_init(&f, NULL);
    f.mode = BIG;
    static const char req[] = "GET /x HTTP/1.1\r\n\r\n";
    int open_ms = 0;
    for (int ms = 0; ms < 3000 && cm_httpd_connections(f.h) > 0; ms++, open_ms++) {
        for (int k = 0; k < 8; k++)
            if (write(f.peer, req, sizeof(req) - 1) < 0)
                break;
        run_ms(f.base, 1);
    }
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 0);
    CHECK_MSG(open_ms < 2000, "open for %d ms with a 300 ms timeout", open_ms);
    /* 256 KiB of unread answers at 8 KiB each, plus what the socket buffers took. */
    CHECK_MSG(f.requests < 200, "%d requests handled for a client that reads nothing", f.requests);
    fx_done(&f);
}

TEST(httpd_a_half_closed_client_gets_its_answer)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f, "GET /half HTTP/1.1\r\n\r\n", -1);
    shutdown(f.peer, SHUT_WR);
    pump(&f, 2000, NULL);
    CHECK_MSG(test_contains(f.got, "p=/half"), "got: %s", f.got);
    CHECK(f.eof);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 0);
    fx_done(&f);
}

TEST(httpd_head_limit_is_exact)
{
    /* LIM.max_header_bytes is 1024: a head of exactly that is served, one byte more is not. */
    char head[1100];
    for (int extra = 0; extra < 2; extra++) {
        const char *start = "GET /exact HTTP/1.1\r\nX-Pad: ";
        size_t n = strlen(start);
        memcpy(head, start, n);
        size_t pad = 1024 - n - 4 + (size_t)extra;
        memset(head + n, 'p', pad);
        memcpy(head + n + pad, "\r\n\r\n", 4);
        size_t len = n + pad + 4;
        CHECK_UINT_EQ(len, 1024 + (size_t)extra);
        struct fx f;
        fx_init(&f, NULL);
        put(&f, head, len);
        if (extra) {
            check_json_error(&f, "HTTP/1.1 431", "headers_too_large");
        } else {
            pump(&f, 2000, "p=/exact");
            CHECK_MSG(strncmp(f.got, "HTTP/1.1 200 OK", 15) == 0, "got: %s", f.got);
        }
        fx_done(&f);
    }
}

TEST(httpd_trailers_are_not_headers)
{
    struct fx f;
    fx_init(&f, NULL);
    put(&f,
        "POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Test: "
        "trailer\r\n\r\n",
        -1);
    pump(&f, 2000, "b=2:");
    CHECK_MSG(test_contains(f.got, "x=[(none)] b=2:ok"), "got: %s", f.got);
    fx_done(&f);
}

static void on_req_headers(struct cm_httpd_req *req, void *arg)
{
    (void)arg;
    CHECK_INT_EQ(cm_httpd_add_header(req, "X-Bad", "a\r\nInjected: 1"), -EINVAL);
    CHECK_INT_EQ(cm_httpd_add_header(req, "Bad Name", "v"), -EINVAL);
    CHECK_INT_EQ(cm_httpd_add_header(req, "", "v"), -EINVAL);
    CHECK_INT_EQ(cm_httpd_add_header(req, "X-Good", "tab\tok"), 0);
    cm_httpd_reply_error(req, 409, "conflict", "quote \" and \\ escaped");
}

TEST(httpd_add_header_refuses_injection_and_errors_are_escaped)
{
    struct fx f;
    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    f.h = cm_httpd_create(f.base, &LIM, on_req_headers, &f);
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(cm_httpd_adopt(f.h, fds[0]), 0);
    f.peer = fds[1];
    put(&f, "GET / HTTP/1.1\r\n\r\n", -1);
    pump(&f, 2000, "}}");
    CHECK_MSG(strncmp(f.got, "HTTP/1.1 409 Conflict\r\n", 23) == 0, "got: %s", f.got);
    CHECK(test_contains(f.got, "X-Good: tab\tok\r\n"));
    CHECK(!test_contains(f.got, "Injected"));
    CHECK(test_contains(
        f.got, "{\"error\":{\"code\":\"conflict\",\"message\":\"quote \\\" and \\\\ escaped\"}}"));
    fx_done(&f);
}

TEST(httpd_listener_refuses_connections_over_the_limit)
{
    struct cm_httpd_limits lim = LIM;
    lim.max_connections = 1;
    lim.timeout = 5 * CM_USEC_PER_SEC;
    struct fx f;
    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    f.h = cm_httpd_create(f.base, &lim, on_req, &f);
    uint16_t port = 0;
    CHECK_INT_EQ(cm_httpd_listen(f.h, "127.0.0.1", 0, &port), 0);
    CHECK(port != 0);
    CHECK_INT_EQ(cm_httpd_listen(f.h, "no-such-host.invalid", 0, NULL), -EADDRNOTAVAIL);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int a = socket(AF_INET, SOCK_STREAM, 0), b = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_INT_EQ(connect(a, (struct sockaddr *)&sa, sizeof(sa)), 0);
    run_ms(f.base, 100);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 1);
    CHECK_INT_EQ(connect(b, (struct sockaddr *)&sa, sizeof(sa)), 0);
    run_ms(f.base, 100);
    char buf[1024] = {0};
    ssize_t n = recv(b, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    CHECK_MSG(n > 0, "nothing for the connection over the limit");
    CHECK_MSG(strncmp(buf, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0, "got: %s", buf);
    CHECK(test_contains(buf, "{\"error\":{\"code\":\"overloaded\""));
    /* The advertised length is the body's. */
    const char *body = strstr(buf, "\r\n\r\n");
    CHECK_NOT_NULL(body);
    CHECK(test_contains(buf, "Content-Length: ") &&
          (size_t)atoi(strstr(buf, "Content-Length: ") + 16) == strlen(body + 4));
    close(a);
    close(b);
    f.peer = -1;
    fx_done(&f);
}

/* --- header timeout, idle connections, owners and addresses ------------------------------- */

/* Runs the loop in 1 ms slices for up to <ms> while reading <fd> into <buf> (<cap> bytes,
 * NUL-terminated) until <until> occurs in it (NULL: until EOF). Returns 1 at EOF. */
static int read_peer(struct event_base *base, int fd, char *buf, size_t cap, int ms,
                     const char *until)
{
    size_t len = strlen(buf);
    int eof = 0;
    for (int i = 0; i < ms && !eof; i++) {
        run_ms(base, 1);
        for (;;) {
            ssize_t n = recv(fd, buf + len, cap - 1 - len, MSG_DONTWAIT);
            if (n > 0) {
                len += (size_t)n;
                buf[len] = '\0';
                continue;
            }
            if (n == 0)
                eof = 1;
            break;
        }
        if (until && test_contains(buf, until))
            break;
    }
    return eof;
}

static void say(int fd, const char *s)
{
    CHECK_INT_EQ(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

static int adopt_peer(struct fx *f)
{
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(cm_httpd_adopt(f->h, fds[0]), 0);
    return fds[1];
}

TEST(httpd_a_head_not_complete_within_header_timeout_gets_408)
{
    /* The request's whole deadline (timeout) is far away; its head's is not. */
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    lim.header_timeout = 100 * CM_USEC_PER_MSEC;
    struct fx f;
    fx_init(&f, &lim);
    put(&f, "GET /slow HTTP/1.1\r\nHost: x\r\n", -1);
    check_json_error(&f, "HTTP/1.1 408 Request Timeout\r\n", "request_timeout");
    CHECK_MSG(test_contains(f.got, "head was not complete"), "got: %s", f.got);
    CHECK_INT_EQ(f.requests, 0);
    fx_done(&f);
}

TEST(httpd_a_body_may_take_longer_than_the_header_timeout)
{
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    lim.header_timeout = 100 * CM_USEC_PER_MSEC;
    struct fx f;
    fx_init(&f, &lim);
    put(&f, "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", -1);
    pump(&f, 400, "HTTP/1.1"); /* four header timeouts: nothing may come */
    CHECK_MSG(f.got_len == 0 && !f.eof, "got: %s", f.got);
    put(&f, "cde", -1);
    pump(&f, 2000, "b=5:");
    CHECK_MSG(test_contains(f.got, "HTTP/1.1 200 OK") && test_contains(f.got, "b=5:abcde"),
              "got: %s", f.got);
    fx_done(&f);
}

TEST(httpd_a_silent_new_connection_is_closed_after_header_timeout)
{
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    lim.header_timeout = 100 * CM_USEC_PER_MSEC;
    struct fx f;
    fx_init(&f, &lim);
    pump(&f, 3000, NULL);
    CHECK_MSG(f.eof && f.got_len == 0, "got: %s", f.got);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 0);
    fx_done(&f);
}

TEST(httpd_only_a_held_connection_idles_for_timeout)
{
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    lim.header_timeout = 100 * CM_USEC_PER_MSEC;
    struct fx f;
    fx_init(&f, &lim);
    f.mode = HOLD;
    put(&f, "GET /t1 HTTP/1.1\r\nHost: x\r\n\r\n", -1);
    pump(&f, 2000, "held");
    CHECK_MSG(test_contains(f.got, "HTTP/1.1 200 OK"), "got: %s", f.got);
    /* A keep-alive answer that nobody holds: like a new connection, header_timeout. (Made
     * only now: a new connection must begin its request within the 100 ms.) */
    f.mode = ECHO;
    int unheld = adopt_peer(&f);
    say(unheld, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    char buf[4096] = "";
    CHECK_MSG(read_peer(f.base, unheld, buf, sizeof(buf), 3000, NULL), "still open: %s", buf);
    CHECK_MSG(test_contains(buf, "HTTP/1.1 200 OK"), "got: %s", buf);
    close(unheld);
    /* The held one stayed (ten header timeouts later) and still serves. */
    pump(&f, 1000, NULL);
    CHECK(!f.eof);
    f.got_len = 0;
    put(&f, "GET /again HTTP/1.1\r\nHost: x\r\n\r\n", -1);
    pump(&f, 2000, "b=0:");
    CHECK_MSG(test_contains(f.got, "p=/again"), "got: %s", f.got);
    fx_done(&f);
}

TEST(httpd_an_owner_holds_at_most_max_per_owner_connections)
{
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    lim.max_connections = 16;
    lim.max_per_owner = 2;
    struct fx f;
    fx_init(&f, &lim);
    f.mode = HOLD;
    int p[4] = {f.peer, adopt_peer(&f), adopt_peer(&f), adopt_peer(&f)};
    char buf[4][2048] = {""};
    for (int i = 0; i < 2; i++) {
        say(p[i], "GET /t1 HTTP/1.1\r\n\r\n");
        read_peer(f.base, p[i], buf[i], sizeof(buf[i]), 2000, "held");
        CHECK_MSG(test_contains(buf[i], "HTTP/1.1 200 OK"), "%d got: %s", i, buf[i]);
        /* the same owner again on the same connection: still one */
        buf[i][0] = '\0';
        say(p[i], "GET /t1 HTTP/1.1\r\n\r\n");
        read_peer(f.base, p[i], buf[i], sizeof(buf[i]), 2000, "held");
        CHECK_MSG(test_contains(buf[i], "HTTP/1.1 200 OK"), "%d got: %s", i, buf[i]);
    }
    /* A third for t1: 429 and closed; another owner is not affected. */
    say(p[2], "GET /t1 HTTP/1.1\r\n\r\n");
    CHECK(read_peer(f.base, p[2], buf[2], sizeof(buf[2]), 2000, NULL));
    CHECK_MSG(strncmp(buf[2], "HTTP/1.1 429 Too Many Requests\r\n", 32) == 0, "got: %s", buf[2]);
    CHECK(test_contains(buf[2], "Connection: close\r\n"));
    CHECK(test_contains(buf[2], "\"too_many_connections\""));
    say(p[3], "GET /t2 HTTP/1.1\r\n\r\n");
    read_peer(f.base, p[3], buf[3], sizeof(buf[3]), 2000, "held");
    CHECK_MSG(test_contains(buf[3], "HTTP/1.1 200 OK"), "got: %s", buf[3]);
    /* Once one of t1's goes, t1 may hold another (p[3] moves from t2 to t1). */
    close(p[1]);
    run_ms(f.base, 50);
    buf[3][0] = '\0';
    say(p[3], "GET /t1 HTTP/1.1\r\n\r\n");
    read_peer(f.base, p[3], buf[3], sizeof(buf[3]), 2000, "held");
    CHECK_MSG(test_contains(buf[3], "HTTP/1.1 200 OK"), "got: %s", buf[3]);
    close(p[2]);
    close(p[3]);
    fx_done(&f);
}

TEST(httpd_listener_limits_unheld_connections_per_address)
{
    struct cm_httpd_limits lim = LIM;
    lim.timeout = 30 * CM_USEC_PER_SEC;
    lim.header_timeout = 10 * CM_USEC_PER_SEC;
    lim.max_connections = 16;
    lim.max_per_address = 2;
    struct fx f;
    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    f.h = cm_httpd_create(f.base, &lim, on_req, &f);
    f.mode = HOLD;
    uint16_t port = 0;
    CHECK_INT_EQ(cm_httpd_listen(f.h, "127.0.0.1", 0, &port), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s[4];
    for (int i = 0; i < 4; i++) {
        s[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (i == 3) { /* another client address: 127.0.0.2 */
            struct sockaddr_in src = {.sin_family = AF_INET};
            src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1);
            CHECK_INT_EQ(bind(s[i], (struct sockaddr *)&src, sizeof(src)), 0);
        }
        CHECK_INT_EQ(connect(s[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
        run_ms(f.base, 50);
    }
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 3);
    char buf[4][2048] = {""};
    CHECK(read_peer(f.base, s[2], buf[2], sizeof(buf[2]), 2000, NULL));
    CHECK_MSG(strncmp(buf[2], "HTTP/1.1 429 Too Many Requests\r\n", 32) == 0, "got: %s", buf[2]);
    CHECK(test_contains(buf[2], "{\"error\":{\"code\":\"too_many_connections\""));
    const char *body = strstr(buf[2], "\r\n\r\n");
    CHECK(body && (size_t)atoi(strstr(buf[2], "Content-Length: ") + 16) == strlen(body + 4));
    close(s[2]);
    /* A held connection no longer counts against its address. */
    say(s[0], "GET /t1 HTTP/1.1\r\n\r\n");
    read_peer(f.base, s[0], buf[0], sizeof(buf[0]), 2000, "held");
    CHECK_MSG(test_contains(buf[0], "HTTP/1.1 200 OK"), "got: %s", buf[0]);
    s[2] = socket(AF_INET, SOCK_STREAM, 0);
    CHECK_INT_EQ(connect(s[2], (struct sockaddr *)&sa, sizeof(sa)), 0);
    run_ms(f.base, 50);
    CHECK_UINT_EQ(cm_httpd_connections(f.h), 4);
    say(s[2], "GET /t2 HTTP/1.1\r\n\r\n");
    buf[2][0] = '\0';
    read_peer(f.base, s[2], buf[2], sizeof(buf[2]), 2000, "held");
    CHECK_MSG(test_contains(buf[2], "HTTP/1.1 200 OK"), "got: %s", buf[2]);
    for (int i = 0; i < 4; i++)
        close(s[i]);
    f.peer = -1;
    fx_done(&f);
}

/* --- streamed answers -------------------------------------------------------------------- */

static void on_drained(void *arg)
{
    struct fx *f = arg;
    f->requests += 100; /* counted apart from the requests */
}

TEST(httpd_streams_chunks_then_keeps_the_connection)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER_CLOSECB;
    put(&f, "GET /s HTTP/1.1\r\n\r\n", -1);
    pump(&f, 50, "never");
    CHECK_NOT_NULL(f.held);
    struct cm_httpd_req *r = f.held;
    CHECK_INT_EQ(cm_httpd_stream_begin(r, 200, "application/x-ndjson"), 0);
    CHECK_INT_EQ(cm_httpd_stream_begin(r, 200, NULL), -EPIPE); /* once */
    CHECK(cm_httpd_stream_write(r, "one\n", 4) > 0);
    pump(&f, 200, "one\n");
    CHECK_CONTAINS(f.got, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n4\r\none\n\r\n");
    /* Nothing to send for longer than the timeout (300 ms) is fine: only a wait for the
     * client to take bytes is bounded. */
    run_ms(f.base, 450);
    CHECK_INT_EQ(f.closed, 0);
    CHECK(cm_httpd_stream_write(r, "", 0) >= 0); /* nothing: no empty chunk (it would end it) */
    CHECK(cm_httpd_stream_write(r, "two\n", 4) > 0);
    cm_httpd_stream_end(r);
    f.held = NULL;
    pump(&f, 200, "0\r\n\r\n");
    CHECK_CONTAINS(f.got, "4\r\ntwo\n\r\n0\r\n\r\n");
    CHECK(!test_contains(f.got, "\r\n0\r\n\r\n4\r\n"));
    CHECK_INT_EQ(f.closed, 0);
    /* The connection serves the next request. */
    f.mode = ECHO;
    f.got_len = 0;
    f.got[0] = '\0';
    put(&f, "GET /next HTTP/1.1\r\n\r\n", -1);
    pump(&f, 200, "p=/next");
    CHECK_CONTAINS(f.got, "p=/next");
    fx_done(&f);
}

TEST(httpd_stream_to_http10_ends_with_the_connection)
{
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER_CLOSECB;
    put(&f, "GET /s HTTP/1.0\r\n\r\n", -1);
    pump(&f, 50, "never");
    struct cm_httpd_req *r = f.held;
    CHECK_NOT_NULL(r);
    CHECK_INT_EQ(cm_httpd_stream_begin(r, 200, "text/plain"), 0);
    CHECK(cm_httpd_stream_write(r, "raw bytes", 9) > 0);
    cm_httpd_stream_end(r);
    f.held = NULL;
    pump(&f, 500, NULL);
    CHECK(f.eof);
    CHECK(!test_contains(f.got, "Transfer-Encoding"));
    CHECK(!test_contains(f.got, "Content-Length"));
    CHECK_CONTAINS(f.got, "Connection: close\r\n\r\nraw bytes");
    fx_done(&f);
}

TEST(httpd_stream_close_callback_and_drain)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemons do: the stream is written after the close */
    struct fx f;
    fx_init(&f, NULL);
    f.mode = DEFER_CLOSECB;
    put(&f, "GET /s HTTP/1.1\r\n\r\n", -1);
    pump(&f, 50, "never");
    struct cm_httpd_req *r = f.held;
    CHECK_NOT_NULL(r);
    CHECK_INT_EQ(cm_httpd_stream_begin(r, 204, NULL), -EINVAL);
    CHECK_INT_EQ(cm_httpd_stream_begin(r, 200, "text/plain"), 0);
    /* More than the socket takes at once: the drain callback comes when the client reads. */
    static char big[512 * 1024];
    memset(big, 'x', sizeof(big));
    long queued = cm_httpd_stream_write(r, big, sizeof(big));
    CHECK(queued > 0);
    cm_httpd_stream_on_drain(r, on_drained, &f);
    int before = f.requests;
    size_t taken = 0;
    for (int i = 0; i < 2000 && f.requests == before; i++) { /* the client reads, slowly */
        run_ms(f.base, 1);
        char buf[65536];
        ssize_t n = read(f.peer, buf, sizeof(buf));
        if (n > 0)
            taken += (size_t)n;
    }
    CHECK_INT_EQ(f.requests, before + 100); /* the drain callback ran, once */
    CHECK(taken > sizeof(big) - 64 * 1024);
    CHECK_INT_EQ(f.closed, 0);
    /* The client leaves while the stream is open: the close callback says so. */
    close(f.peer);
    f.peer = -1;
    run_ms(f.base, 50);
    CHECK_INT_EQ(f.closed, 1);
    CHECK(f.held == NULL);
    fx_done(&f);
}

/* --- streamed request bodies ------------------------------------------------------------- */

static struct {
    char got[4096];
    size_t len;
    int ends, pause_once, calls;
    struct cm_httpd_req *req;
} SB;

static int head_put(struct cm_httpd_req *req, void *arg)
{
    (void)arg;
    return cm_httpd_method(req) == CM_HTTP_PUT;
}

static int sb_body(void *arg, const char *data, size_t len)
{
    (void)arg;
    SB.calls++;
    if (!len) {
        SB.ends++;
        return 0;
    }
    memcpy(SB.got + SB.len, data, len);
    SB.len += len;
    if (SB.pause_once) {
        SB.pause_once = 0;
        return 1;
    }
    return 0;
}

static void on_req_stream(struct cm_httpd_req *req, void *arg)
{
    (void)arg;
    SB.req = req;
    if (cm_httpd_method(req) == CM_HTTP_PUT)
        cm_httpd_body_stream(req, sb_body, NULL);
    else
        cm_httpd_reply(req, 200, "text/plain", "plain", 5);
}

TEST(httpd_streams_a_request_body_with_pauses)
{
    memset(&SB, 0, sizeof(SB));
    struct fx f;
    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    struct cm_httpd_limits lim = LIM; /* max_body 1024: the stream is not bound by it */
    f.h = cm_httpd_create(f.base, &lim, on_req_stream, &f);
    cm_httpd_set_head_cb(f.h, head_put);
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(cm_httpd_adopt(f.h, fds[0]), 0);
    f.peer = fds[1];
    char body[2000];
    memset(body, 'q', sizeof(body));
    put(&f, "PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n", -1);
    run_ms(f.base, 20);
    CHECK_NOT_NULL(SB.req); /* the handler has it before the body */
    SB.pause_once = 1;
    put(&f, body, 1000);
    run_ms(f.base, 20);
    CHECK_INT_EQ((int)SB.len, 1000);
    put(&f, body + 1000, 1000);
    put(&f, "\r\n0\r\n\r\n", -1);
    run_ms(f.base, 20);
    CHECK_INT_EQ((int)SB.len, 1000); /* paused: nothing more until resumed */
    cm_httpd_body_resume(SB.req);
    run_ms(f.base, 20);
    CHECK_INT_EQ((int)SB.len, 2000);
    CHECK_INT_EQ(SB.ends, 1);
    cm_httpd_reply(SB.req, 200, "text/plain", "stored", 6);
    pump(&f, 500, NULL);
    CHECK_CONTAINS(f.got, "HTTP/1.1 200 OK\r\n");
    CHECK_CONTAINS(f.got, "Connection: close\r\n");
    CHECK(f.eof);
    fx_done(&f);
}

TEST(httpd_an_early_answer_leaves_a_streamed_body_unread)
{
    memset(&SB, 0, sizeof(SB));
    struct fx f;
    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    f.h = cm_httpd_create(f.base, &LIM, on_req_stream, &f);
    cm_httpd_set_head_cb(f.h, head_put);
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(cm_httpd_adopt(f.h, fds[0]), 0);
    f.peer = fds[1];
    put(&f, "PUT /up HTTP/1.1\r\nContent-Length: 100000\r\n\r\nabc", -1);
    run_ms(f.base, 20);
    CHECK_NOT_NULL(SB.req);
    cm_httpd_reply_error(SB.req, 507, "insufficient_storage", "full");
    pump(&f, 500, NULL);
    CHECK_CONTAINS(f.got, "HTTP/1.1 507 Insufficient Storage\r\n");
    CHECK(f.eof);
    fx_done(&f);
}

static int sb_closed;
static void sb_on_close(void *arg)
{
    (void)arg;
    sb_closed++;
}

static void on_req_stream_cb(struct cm_httpd_req *req, void *arg)
{
    (void)arg;
    SB.req = req;
    cm_httpd_set_close_cb(req, sb_on_close, NULL);
    cm_httpd_body_stream(req, sb_body, NULL);
}

TEST(httpd_a_broken_streamed_body_ends_the_request_for_its_handler)
{
    memset(&SB, 0, sizeof(SB));
    sb_closed = 0;
    struct fx f;
    memset(&f, 0, sizeof(f));
    f.base = event_base_new();
    f.h = cm_httpd_create(f.base, &LIM, on_req_stream_cb, &f);
    cm_httpd_set_head_cb(f.h, head_put);
    int fds[2];
    test_socketpair(fds);
    CHECK_INT_EQ(cm_httpd_adopt(f.h, fds[0]), 0);
    f.peer = fds[1];
    put(&f, "PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", -1);
    pump(&f, 500, NULL);
    CHECK_INT_EQ(sb_closed, 1); /* the handler learns its request is gone */
    CHECK_CONTAINS(f.got, "HTTP/1.1 400 Bad Request\r\n");
    CHECK_CONTAINS(f.got, "the request body is malformed");
    CHECK(f.eof);
    fx_done(&f);
}
