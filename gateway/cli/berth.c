/* berth: the command-line client of Berth's control API (issue 17).
 *
 *   berth [--url URL] [--key KEY] [--json] COMMAND ...
 *     sessions list | create [ID] [--template T] [--ttl S] [--idle S] [--allow P]... [--deny P]...
 *              | get ID | delete ID
 *     egress SESSION [--allow P]... [--deny P]... | egress SESSION --clear
 *     exec SESSION [--env NAME=VALUE]... [--cwd DIR] [--timeout S] -- CMD [ARG...]
 *     cp SESSION:/PATH LOCAL | cp LOCAL SESSION:/PATH
 *     events [--session ID] [--type T[,T...]] [--since ID] [--follow]
 *     usage [--by session|template] [--from MS] [--to MS]
 *     pause SESSION | resume SESSION
 *
 * URL and KEY default to $BERTH_URL (else http://127.0.0.1:9090, the admin listener) and
 * $BERTH_API_KEY. Tables for people, --json for scripts (the API's JSON as it came). Every API
 * error is one line on stderr, "berth: <code>: <message>", and exit status 1; bad usage is
 * status 2. exec streams the command's stdout and stderr to ours and exits with its code
 * (128 + the signal when killed, 124 when its timeout killed it); a stdin that is not a
 * terminal is sent to the command (up to the API's body limit).
 *
 * Plain blocking sockets and llhttp: one request per connection, no TLS (the control API is
 * meant for an internal address). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <llhttp.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"

/* One command per process: the buffers of a command are static (reachable until exit, where
 * the process ends them), the answers' JSON trees freed. */

#define IO_CHUNK 65536
#define COLLECT_MAX (64u << 20) /* an answer kept in memory (a list, an error) */
#define STDIN_MAX (64u << 20)

static struct {
    const char *url, *key;
    int json;
    char host[256], port[8], prefix[256];
} O;

static void __attribute__((noreturn, format(printf, 2, 3))) die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("berth: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void __attribute__((noreturn)) usage(void)
{
    fputs("usage: berth [--url URL] [--key KEY] [--json] COMMAND ...\n"
          "  sessions list | create [ID] [--template T] [--ttl S] [--idle S] [--allow P]... "
          "[--deny P]... | get ID | delete ID\n"
          "  egress SESSION [--allow P]... [--deny P]... | egress SESSION --clear\n"
          "  exec SESSION [--env NAME=VALUE]... [--cwd DIR] [--timeout S] -- CMD [ARG...]\n"
          "  cp SESSION:/PATH LOCAL | cp LOCAL SESSION:/PATH\n"
          "  events [--session ID] [--type T[,T...]] [--since ID] [--follow]\n"
          "  usage [--by session|template] [--from MS] [--to MS]\n"
          "  pause SESSION | resume SESSION\n"
          "URL: $BERTH_URL (default http://127.0.0.1:9090); KEY: $BERTH_API_KEY\n",
          stderr);
    exit(2);
}

/* ------------------------------------------------------------------ buffers */

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            die(1, "out of memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* Percent-encodes a path segment (or a path, keeping '/' when <keep_slash>). */
static void enc(struct buf *b, const char *s, int keep_slash)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
            buf_add(b, s, 1);
        } else {
            char e[4];
            snprintf(e, sizeof(e), "%%%02X", c);
            buf_add(b, e, 3);
        }
    }
}

/* ------------------------------------------------------------------ HTTP */

/* Where the answer's body goes. */
struct sink {
    int fd;            /* >= 0: written there as it comes (a download) */
    struct buf *whole; /* else kept (bounded) ... */
    void (*line)(const char *line, size_t len, void *arg); /* ... or split into lines */
    void *arg;
    struct buf pending; /* a line not ended yet */
};

struct exchange {
    int status;
    struct sink *sink;
    struct buf err; /* the body of an answer >= 400 */
    int done;
};

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *x = p->data;
    x->status = llhttp_get_status_code(p);
    if (x->status >= 400) {
        if (x->err.len + len <= COLLECT_MAX)
            buf_add(&x->err, at, len);
        return 0;
    }
    struct sink *s = x->sink;
    if (!s)
        return 0;
    if (s->fd >= 0) {
        while (len) {
            ssize_t n = write(s->fd, at, len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                die(1, "cannot write: %s", strerror(errno));
            at += n;
            len -= (size_t)n;
        }
        return 0;
    }
    if (s->whole) {
        if (s->whole->len + len > COLLECT_MAX)
            die(1, "the answer is over %u bytes", COLLECT_MAX);
        buf_add(s->whole, at, len);
        return 0;
    }
    buf_add(&s->pending, at, len);
    size_t start = 0;
    for (size_t i = 0; i < s->pending.len; i++)
        if (s->pending.data[i] == '\n') {
            s->line(s->pending.data + start, i - start, s->arg);
            start = i + 1;
        }
    memmove(s->pending.data, s->pending.data + start, s->pending.len - start);
    s->pending.len -= start;
    return 0;
}

static int on_headers(llhttp_t *p)
{
    struct exchange *x = p->data;
    x->status = llhttp_get_status_code(p);
    return 0;
}

static int on_complete(llhttp_t *p)
{
    ((struct exchange *)p->data)->done = 1;
    return 0;
}

static int dial(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai, *a;
    int rc = getaddrinfo(O.host, O.port, &hints, &ai);
    if (rc != 0)
        die(1, "cannot resolve %s: %s", O.host, gai_strerror(rc));
    int fd = -1, err = 0;
    for (a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        die(1, "cannot reach %s: %s", O.url, strerror(err));
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die(1, "the connection to %s broke: %s", O.url, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

/* One request: <body> (NULL: none) or <body_fd> (>= 0, <body_len> bytes); the answer's body
 * goes to <sink>. Returns the status; an error answer (>= 400) is reported and exits. */
static int request(const char *method, const char *path, const char *extra_headers,
                   const struct buf *body, int body_fd, uint64_t body_len, struct sink *sink)
{
    int fd = dial();
    struct buf h = {0};
    char line[1024];
    snprintf(line, sizeof(line), "%s %s%s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n", method,
             O.prefix, path, O.host, O.port);
    buf_add(&h, line, strlen(line));
    if (O.key) {
        buf_add(&h, "Authorization: Bearer ", 22);
        buf_add(&h, O.key, strlen(O.key));
        buf_add(&h, "\r\n", 2);
    }
    if (extra_headers)
        buf_add(&h, extra_headers, strlen(extra_headers));
    uint64_t len = body ? body->len : body_fd >= 0 ? body_len : 0;
    if (body || body_fd >= 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
        snprintf(line, sizeof(line), "Content-Length: %" PRIu64 "\r\n", len);
        buf_add(&h, line, strlen(line));
    }
    if (body)
        buf_add(&h, "Content-Type: application/json\r\n", 32);
    buf_add(&h, "\r\n", 2);
    send_all(fd, h.data, h.len);
    free(h.data);
    if (body)
        send_all(fd, body->data, body->len);
    if (body_fd >= 0) {
        char chunk[IO_CHUNK];
        for (uint64_t left = body_len; left;) {
            ssize_t n = read(body_fd, chunk, left < sizeof(chunk) ? left : sizeof(chunk));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                die(1, "cannot read the file: %s", n ? strerror(errno) : "it got shorter");
            send_all(fd, chunk, (size_t)n);
            left -= (uint64_t)n;
        }
    }
    llhttp_settings_t st;
    llhttp_settings_init(&st);
    st.on_body = on_body;
    st.on_headers_complete = on_headers;
    st.on_message_complete = on_complete;
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &st);
    struct exchange x = {.sink = sink};
    p.data = &x;
    char in[IO_CHUNK];
    while (!x.done) {
        ssize_t n = recv(fd, in, sizeof(in), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die(1, "reading the answer from %s: %s", O.url, strerror(errno));
        llhttp_errno_t e = n == 0 ? llhttp_finish(&p) : llhttp_execute(&p, in, (size_t)n);
        if (e != HPE_OK)
            die(1, "a malformed answer from %s: %s", O.url, llhttp_errno_name(e));
        if (n == 0)
            break;
    }
    close(fd);
    if (!x.done)
        die(1, "the answer from %s was cut short", O.url);
    if (sink && sink->line && sink->pending.len)
        sink->line(sink->pending.data, sink->pending.len, sink->arg);
    if (sink) {
        free(sink->pending.data);
        sink->pending = (struct buf){0};
    }
    if (x.status >= 400) {
        struct cm_json *j = x.err.len ? cm_json_parse(x.err.data, x.err.len, NULL, 0) : NULL;
        const struct cm_json *e = cm_json_get(j, "error");
        const struct cm_json *code = cm_json_get(e, "code"), *msg = cm_json_get(e, "message");
        if (code && code->type == CM_JSON_STRING)
            fprintf(stderr, "berth: %s: %s\n", code->str,
                    msg && msg->type == CM_JSON_STRING ? msg->str : "");
        else
            fprintf(stderr, "berth: HTTP %d: %.*s\n", x.status,
                    (int)(x.err.len > 200 ? 200 : x.err.len), x.err.data ? x.err.data : "");
        cm_json_free(j);
        free(x.err.data);
        exit(1);
    }
    free(x.err.data);
    return x.status;
}

/* ------------------------------------------------------------------ output */

static const char *jstr(const struct cm_json *j, const char *k)
{
    const struct cm_json *v = cm_json_get(j, k);
    return v && v->type == CM_JSON_STRING ? v->str : "-";
}

static void print_json(const struct buf *b)
{
    fwrite(b->data, 1, b->len, stdout);
    if (!b->len || b->data[b->len - 1] != '\n')
        fputc('\n', stdout);
}

static void session_row(const struct cm_json *s)
{
    const struct cm_json *p = cm_json_get(s, "paused");
    printf("%-24s %-12s %-8s %-26s %s\n", jstr(s, "id"), jstr(s, "template"), jstr(s, "state"),
           jstr(s, "instance"), p && p->type == CM_JSON_BOOL && p->boolean ? "paused" : "-");
}

static struct cm_json *parse(const struct buf *b)
{
    struct cm_json *j = cm_json_parse(b->data ? b->data : "", b->len, NULL, 0);
    if (!j)
        die(1, "the answer is not JSON");
    return j;
}

/* ------------------------------------------------------------------ commands */

/* "egress":{"allow":[...],"deny":[...]} from the --allow P and --deny P of argv[from..] into
 * <jb>; returns 1 when there was one, 0 when there was none. */
static int egress_json(struct cm_jbuf *jb, int argc, char **argv, int from)
{
    int any = 0;
    for (int i = from; i + 1 < argc; i++)
        any |= strcmp(argv[i], "--allow") == 0 || strcmp(argv[i], "--deny") == 0;
    if (!any)
        return 0;
    cm_jbuf_raw(jb, "\"egress\":{", 10);
    static const char *const keys[] = {"allow", "deny"};
    for (int k = 0; k < 2; k++) {
        cm_jbuf_printf(jb, "%s\"%s\":[", k ? "," : "", keys[k]);
        int n = 0;
        for (int i = from; i + 1 < argc; i++)
            if (strcmp(argv[i], k ? "--deny" : "--allow") == 0) {
                if (n++)
                    cm_jbuf_raw(jb, ",", 1);
                cm_jbuf_cstr(jb, argv[++i]);
            }
        cm_jbuf_raw(jb, "]", 1);
    }
    cm_jbuf_raw(jb, "}", 1);
    return 1;
}

static int cmd_sessions(int argc, char **argv)
{
    if (argc < 1)
        usage();
    static struct buf out = {0}, path = {0}, body = {0};
    struct sink sink = {.fd = -1, .whole = &out};
    const char *what = argv[0];
    if (strcmp(what, "list") == 0 && argc == 1) {
        request("GET", "/v1/sessions?limit=1000", NULL, NULL, -1, 0, &sink);
        if (O.json) {
            print_json(&out);
            return 0;
        }
        struct cm_json *j = parse(&out);
        const struct cm_json *l = cm_json_get(j, "sessions");
        printf("%-24s %-12s %-8s %-26s %s\n", "ID", "TEMPLATE", "STATE", "INSTANCE", "PAUSED");
        for (size_t i = 0; l && l->type == CM_JSON_ARRAY && i < l->len; i++)
            session_row(l->items[i]);
        cm_json_free(j);
        return 0;
    }
    if (strcmp(what, "create") == 0) {
        struct cm_jbuf jb;
        cm_jbuf_init(&jb);
        cm_jbuf_raw(&jb, "{", 1);
        int n = 0;
        if (egress_json(&jb, argc, argv, 1))
            n++;
        for (int i = 1; i < argc; i++) {
            const char *k = NULL;
            if (strcmp(argv[i], "--allow") == 0 || strcmp(argv[i], "--deny") == 0) {
                i++; /* in "egress" already */
                continue;
            }
            if (strcmp(argv[i], "--template") == 0)
                k = "template";
            else if (strcmp(argv[i], "--ttl") == 0)
                k = "ttl";
            else if (strcmp(argv[i], "--idle") == 0)
                k = "idle_timeout";
            if (k && i + 1 < argc) {
                cm_jbuf_printf(&jb, "%s\"%s\":", n++ ? "," : "", k);
                if (strcmp(k, "template") == 0)
                    cm_jbuf_cstr(&jb, argv[++i]);
                else
                    cm_jbuf_printf(&jb, "%ld", strtol(argv[++i], NULL, 10));
            } else if (!k && argv[i][0] != '-') {
                cm_jbuf_printf(&jb, "%s\"id\":", n++ ? "," : "");
                cm_jbuf_cstr(&jb, argv[i]);
            } else {
                usage();
            }
        }
        cm_jbuf_raw(&jb, "}", 1);
        buf_add(&body, jb.data, jb.len);
        cm_jbuf_fini(&jb);
        request("POST", "/v1/sessions", NULL, &body, -1, 0, &sink);
    } else if ((strcmp(what, "get") == 0 || strcmp(what, "delete") == 0) && argc == 2) {
        buf_add(&path, "/v1/sessions/", 13);
        enc(&path, argv[1], 0);
        request(what[0] == 'g' ? "GET" : "DELETE", path.data, NULL, NULL, -1, 0, &sink);
        if (what[0] == 'd')
            return 0;
    } else {
        usage();
    }
    if (O.json) {
        print_json(&out);
        return 0;
    }
    struct cm_json *j = parse(&out);
    printf("%-24s %-12s %-8s %-26s %s\n", "ID", "TEMPLATE", "STATE", "INSTANCE", "PAUSED");
    session_row(j);
    cm_json_free(j);
    return 0;
}

static int decode_b64(const char *s, size_t n, unsigned char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *c = strchr(tab, s[i]);
        if (!c || !s[i])
            return -1;
        acc = acc << 6 | (uint32_t)(c - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    return (int)o;
}

struct exec_state {
    int code; /* what we exit with */
    int ended;
};

static void exec_line(const char *line, size_t len, void *arg)
{
    struct exec_state *st = arg;
    if (O.json) {
        fwrite(line, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    struct cm_json *j = cm_json_parse(line, len, NULL, 0);
    const char *type = jstr(j, "type");
    int fd = strcmp(type, "stdout") == 0 ? 1 : strcmp(type, "stderr") == 0 ? 2 : -1;
    if (fd > 0 && !O.json) {
        const struct cm_json *d = cm_json_get(j, "data"), *b = cm_json_get(j, "data_base64");
        if (d && d->type == CM_JSON_STRING) {
            if (write(fd, d->str, d->len) < 0)
                exit(1);
        } else if (b && b->type == CM_JSON_STRING) {
            unsigned char *out = malloc(b->len);
            int n = out ? decode_b64(b->str, b->len, out) : -1;
            if (n > 0 && write(fd, out, (size_t)n) < 0)
                exit(1);
            free(out);
        }
    } else if (strcmp(type, "exit") == 0) {
        const struct cm_json *c = cm_json_get(j, "exit_code"), *s = cm_json_get(j, "signal"),
                             *t = cm_json_get(j, "timed_out");
        st->ended = 1;
        if (t && t->type == CM_JSON_BOOL && t->boolean)
            st->code = 124;
        else if (c && c->type == CM_JSON_NUMBER)
            st->code = (int)c->number;
        else if (s && s->type == CM_JSON_NUMBER)
            st->code = 128 + (int)s->number;
    } else if (strcmp(type, "error") == 0 && !O.json) {
        fprintf(stderr, "berth: %s\n", jstr(j, "message"));
    }
    cm_json_free(j);
}

static int cmd_exec(int argc, char **argv)
{
    if (argc < 1)
        usage();
    const char *session = argv[0];
    struct cm_jbuf jb;
    cm_jbuf_init(&jb);
    struct cm_jbuf env;
    cm_jbuf_init(&env);
    const char *cwd = NULL;
    long timeout = 0;
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--env") == 0 && i + 1 < argc && strchr(argv[i + 1], '=')) {
            const char *kv = argv[++i], *eq = strchr(kv, '=');
            cm_jbuf_raw(&env, env.len ? "," : "", env.len ? 1 : 0);
            cm_jbuf_str(&env, kv, (size_t)(eq - kv));
            cm_jbuf_raw(&env, ":", 1);
            cm_jbuf_cstr(&env, eq + 1);
        } else if (strcmp(argv[i], "--cwd") == 0 && i + 1 < argc) {
            cwd = argv[++i];
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = strtol(argv[++i], NULL, 10);
        } else {
            usage();
        }
    }
    if (i >= argc - 1)
        usage();
    cm_jbuf_raw(&jb, "{\"cmd\":[", 8);
    for (int k = i + 1; k < argc; k++) {
        if (k > i + 1)
            cm_jbuf_raw(&jb, ",", 1);
        cm_jbuf_cstr(&jb, argv[k]);
    }
    cm_jbuf_raw(&jb, "]", 1);
    if (env.len) {
        cm_jbuf_raw(&jb, ",\"env\":{", 8);
        cm_jbuf_raw(&jb, env.data, env.len);
        cm_jbuf_raw(&jb, "}", 1);
    }
    if (cwd) {
        cm_jbuf_raw(&jb, ",\"cwd\":", 7);
        cm_jbuf_cstr(&jb, cwd);
    }
    if (timeout > 0)
        cm_jbuf_printf(&jb, ",\"timeout\":%ld", timeout);
    if (!isatty(0)) {
        struct buf in = {0};
        char chunk[IO_CHUNK];
        ssize_t n;
        while ((n = read(0, chunk, sizeof(chunk))) > 0 || (n < 0 && errno == EINTR))
            if (n > 0) {
                if (in.len + (size_t)n > STDIN_MAX)
                    die(1, "stdin is over %u bytes", STDIN_MAX);
                buf_add(&in, chunk, (size_t)n);
            }
        if (in.len) {
            cm_jbuf_raw(&jb, ",\"stdin\":", 9);
            cm_jbuf_str(&jb, in.data, in.len);
        }
        free(in.data);
    }
    cm_jbuf_raw(&jb, "}", 1);
    if (jb.failed)
        die(1, "out of memory");
    static struct buf body = {0}, path = {0};
    buf_add(&body, jb.data, jb.len);
    cm_jbuf_fini(&jb);
    cm_jbuf_fini(&env);
    buf_add(&path, "/v1/sessions/", 13);
    enc(&path, session, 0);
    buf_add(&path, "/exec", 5);
    struct exec_state st = {.code = 1};
    struct sink sink = {.fd = -1, .line = exec_line, .arg = &st};
    request("POST", path.data, NULL, &body, -1, 0, &sink);
    if (!st.ended)
        die(1, "the command's end was not reported");
    return st.code;
}

/* "SESSION:/path" -> session, path (without the leading slash); NULL when not remote. */
static const char *remote(const char *arg, char *session, size_t len)
{
    const char *colon = strchr(arg, ':');
    if (!colon || colon[1] != '/' || colon == arg || (size_t)(colon - arg) >= len)
        return NULL;
    memcpy(session, arg, (size_t)(colon - arg));
    session[colon - arg] = '\0';
    return colon + 2;
}

static int cmd_cp(int argc, char **argv)
{
    if (argc != 2)
        usage();
    char session[256];
    const char *src = remote(argv[0], session, sizeof(session));
    const char *dst = src ? NULL : remote(argv[1], session, sizeof(session));
    if (!src == !dst)
        usage(); /* exactly one side in a session */
    static struct buf path = {0};
    buf_add(&path, "/v1/sessions/", 13);
    enc(&path, session, 0);
    buf_add(&path, "/files/", 7);
    enc(&path, src ? src : dst, 1);
    if (src) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.berth-part", argv[1]);
        int to_stdout = strcmp(argv[1], "-") == 0;
        int fd = to_stdout ? 1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
            die(1, "cannot create %s: %s", tmp, strerror(errno));
        struct sink sink = {.fd = fd};
        request("GET", path.data, NULL, NULL, -1, 0, &sink);
        if (!to_stdout && (close(fd) < 0 || rename(tmp, argv[1]) < 0))
            die(1, "cannot write %s: %s", argv[1], strerror(errno));
        return 0;
    }
    int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode))
        die(1, "cannot read %s: %s", argv[0], fd < 0 ? strerror(errno) : "not a regular file");
    static struct buf out = {0};
    struct sink sink = {.fd = -1, .whole = &out};
    request("PUT", path.data, "Content-Type: application/octet-stream\r\n", NULL, fd,
            (uint64_t)sb.st_size, &sink);
    close(fd);
    if (O.json)
        print_json(&out);
    return 0;
}

static void event_line(const char *line, size_t len, void *arg)
{
    (void)arg;
    if (len < 6 || strncmp(line, "data: ", 6) != 0)
        return;
    line += 6;
    len -= 6;
    if (O.json) {
        fwrite(line, 1, len, stdout);
        fputc('\n', stdout);
    } else {
        struct cm_json *j = cm_json_parse(line, len, NULL, 0);
        printf("%-20s %-14s %-32.32s %s\n", jstr(j, "id"), jstr(j, "type"), jstr(j, "session"),
               jstr(j, "instance"));
        cm_json_free(j);
    }
    fflush(stdout);
}

static int cmd_events(int argc, char **argv)
{
    static struct buf path = {0};
    buf_add(&path, "/v1/events?limit=1000", 21);
    int follow = 0;
    for (int i = 0; i < argc; i++) {
        const char *k = NULL;
        if (strcmp(argv[i], "--follow") == 0) {
            follow = 1;
            continue;
        }
        if (strcmp(argv[i], "--session") == 0)
            k = "session";
        else if (strcmp(argv[i], "--type") == 0)
            k = "type";
        else if (strcmp(argv[i], "--since") == 0)
            k = "since";
        if (!k || i + 1 >= argc)
            usage();
        buf_add(&path, "&", 1);
        buf_add(&path, k, strlen(k));
        buf_add(&path, "=", 1);
        enc(&path, argv[++i], 0);
    }
    if (!O.json)
        printf("%-20s %-14s %-32s %s\n", "ID", "TYPE", "SESSION", "INSTANCE");
    if (follow) {
        buf_add(&path, "&follow=1", 9);
        struct sink sink = {.fd = -1, .line = event_line};
        request("GET", path.data, NULL, NULL, -1, 0, &sink);
        return 0;
    }
    static struct buf out = {0};
    struct sink sink = {.fd = -1, .whole = &out};
    request("GET", path.data, NULL, NULL, -1, 0, &sink);
    struct cm_json *j = parse(&out);
    if (O.json) {
        print_json(&out);
    } else {
        const struct cm_json *l = cm_json_get(j, "events");
        for (size_t i = 0; l && l->type == CM_JSON_ARRAY && i < l->len; i++)
            printf("%-20s %-14s %-32.32s %s\n", jstr(l->items[i], "id"), jstr(l->items[i], "type"),
                   jstr(l->items[i], "session"), jstr(l->items[i], "instance"));
    }
    cm_json_free(j);
    return 0;
}

static int cmd_usage(int argc, char **argv)
{
    static struct buf path = {0}, out = {0};
    buf_add(&path, "/v1/usage?group_by=", 19);
    const char *by = "session";
    char q[64];
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--by") == 0 && i + 1 < argc) {
            by = argv[++i];
        } else if ((strcmp(argv[i], "--from") == 0 || strcmp(argv[i], "--to") == 0) &&
                   i + 1 < argc) {
            snprintf(q, sizeof(q), "&%s=%s", argv[i] + 2, argv[i + 1]);
            buf_add(&path, q, strlen(q)); /* ms since the epoch: checked by the API */
            i++;
        } else {
            usage();
        }
    }
    if (strcmp(by, "session") != 0 && strcmp(by, "template") != 0)
        usage();
    buf_add(&path, by, strlen(by));
    struct sink sink = {.fd = -1, .whole = &out};
    request("GET", path.data, NULL, NULL, -1, 0, &sink);
    if (O.json) {
        print_json(&out);
        return 0;
    }
    struct cm_json *j = parse(&out);
    const struct cm_json *l = cm_json_get(j, "usage");
    printf("%-24s %9s %12s %12s %10s %10s %10s %9s %10s\n", by[0] == 's' ? "SESSION" : "TEMPLATE",
           "REQUESTS", "BYTES_IN", "BYTES_OUT", "ACTIVE_S", "IDLE_S", "PAUSED_S", "CPU_S",
           "MEM_PEAK");
    for (size_t i = 0; l && l->type == CM_JSON_ARRAY && i < l->len; i++) {
        const struct cm_json *u = l->items[i];
        double v[8];
        static const char *const k[8] = {"requests", "bytes_in",  "bytes_out", "active_ms",
                                         "idle_ms",  "paused_ms", "cpu_ms",    "mem_peak_bytes"};
        for (int n = 0; n < 8; n++) {
            const struct cm_json *x = cm_json_get(u, k[n]);
            v[n] = x && x->type == CM_JSON_NUMBER ? x->number : 0;
        }
        const char *name = by[0] == 's' ? jstr(u, "id") : jstr(u, "template");
        printf("%-24s %9.0f %12.0f %12.0f %10.1f %10.1f %10.1f %9.2f %9.1fM\n", name, v[0], v[1],
               v[2], v[3] / 1000, v[4] / 1000, v[5] / 1000, v[6] / 1000, v[7] / 1048576);
    }
    cm_json_free(j);
    return 0;
}

static int cmd_pause(int argc, char **argv, const char *action)
{
    if (argc != 1)
        usage();
    static struct buf path = {0}, out = {0};
    buf_add(&path, "/v1/sessions/", 13);
    enc(&path, argv[0], 0);
    buf_add(&path, "/", 1);
    buf_add(&path, action, strlen(action));
    struct sink sink = {.fd = -1, .whole = &out};
    request("POST", path.data, NULL, NULL, -1, 0, &sink);
    if (O.json) {
        print_json(&out);
    } else {
        struct cm_json *j = parse(&out);
        printf("%-24s %-12s %-8s %-26s %s\n", "ID", "TEMPLATE", "STATE", "INSTANCE", "PAUSED");
        session_row(j);
        cm_json_free(j);
    }
    return 0;
}

/* PATCH the session's own egress lists (or remove them: --clear); prints them. */
static int cmd_egress(int argc, char **argv)
{
    if (argc < 2)
        usage();
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--clear") != 0 &&
            ((strcmp(argv[i], "--allow") != 0 && strcmp(argv[i], "--deny") != 0) ||
             ++i >= argc))
            usage();
    static struct buf path = {0}, out = {0}, body = {0};
    struct cm_jbuf jb;
    cm_jbuf_init(&jb);
    cm_jbuf_raw(&jb, "{", 1);
    if (argc == 2 && strcmp(argv[1], "--clear") == 0)
        cm_jbuf_raw(&jb, "\"egress\":null", 13);
    else if (!egress_json(&jb, argc, argv, 1))
        usage();
    cm_jbuf_raw(&jb, "}", 1);
    buf_add(&body, jb.data, jb.len);
    cm_jbuf_fini(&jb);
    buf_add(&path, "/v1/sessions/", 13);
    enc(&path, argv[0], 0);
    struct sink sink = {.fd = -1, .whole = &out};
    request("PATCH", path.data, NULL, &body, -1, 0, &sink);
    if (O.json) {
        print_json(&out);
        return 0;
    }
    struct cm_json *j = parse(&out);
    const struct cm_json *eg = cm_json_get(j, "egress");
    static const char *const keys[] = {"allow", "deny"};
    for (int k = 0; k < 2; k++) {
        const struct cm_json *l = cm_json_get(eg, keys[k]);
        printf("%-6s", keys[k]);
        for (size_t i = 0; l && l->type == CM_JSON_ARRAY && i < l->len; i++)
            if (l->items[i]->type == CM_JSON_STRING)
                printf(" %s", l->items[i]->str);
        printf("\n");
    }
    cm_json_free(j);
    return 0;
}

/* http://host[:port][/prefix] */
static void parse_url(void)
{
    const char *u = O.url;
    if (strncmp(u, "http://", 7) != 0)
        die(2, "BERTH_URL must be http://host[:port] (the control API), not %s", u);
    u += 7;
    size_t hl = strcspn(u, ":/");
    const char *rest = u + hl;
    if (hl == 0 || hl >= sizeof(O.host))
        die(2, "no host in %s", O.url);
    if (*u == '[') { /* [v6]:port */
        const char *end = strchr(u, ']');
        if (!end || (size_t)(end - u - 1) >= sizeof(O.host))
            die(2, "a bad IPv6 address in %s", O.url);
        memcpy(O.host, u + 1, (size_t)(end - u - 1));
        O.host[end - u - 1] = '\0';
        rest = end + 1;
    } else {
        memcpy(O.host, u, hl);
        O.host[hl] = '\0';
    }
    snprintf(O.port, sizeof(O.port), "80");
    if (*rest == ':') {
        size_t pl = strcspn(rest + 1, "/");
        if (pl == 0 || pl >= sizeof(O.port))
            die(2, "a bad port in %s", O.url);
        memcpy(O.port, rest + 1, pl);
        O.port[pl] = '\0';
        rest += 1 + pl;
    }
    snprintf(O.prefix, sizeof(O.prefix), "%s", rest);
    size_t pl = strlen(O.prefix);
    if (pl && O.prefix[pl - 1] == '/')
        O.prefix[pl - 1] = '\0';
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    O.url = getenv("BERTH_URL");
    O.key = getenv("BERTH_API_KEY");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--url") == 0 && i + 1 < argc)
            O.url = argv[++i];
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            O.key = argv[++i];
        else if (strcmp(argv[i], "--json") == 0)
            O.json = 1;
        else
            usage();
    }
    if (!O.url || !*O.url)
        O.url = "http://127.0.0.1:9090";
    parse_url();
    if (i >= argc)
        usage();
    const char *cmd = argv[i];
    int n = argc - i - 1;
    char **rest = argv + i + 1;
    if (strcmp(cmd, "sessions") == 0)
        return cmd_sessions(n, rest);
    if (strcmp(cmd, "exec") == 0)
        return cmd_exec(n, rest);
    if (strcmp(cmd, "cp") == 0)
        return cmd_cp(n, rest);
    if (strcmp(cmd, "events") == 0)
        return cmd_events(n, rest);
    if (strcmp(cmd, "usage") == 0)
        return cmd_usage(n, rest);
    if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0)
        return cmd_pause(n, rest, cmd);
    if (strcmp(cmd, "egress") == 0)
        return cmd_egress(n, rest);
    usage();
}
