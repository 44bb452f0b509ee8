/* berth-echo: the app of the default "echo" template. A small HTTP/1.1 server (one thread per
 * connection, llhttp for parsing, keep-alive, Content-Length and chunked request bodies) that
 * answers every request with a JSON description of what it received, so a person can see
 * session routing work and the tests can check every byte. See deploy/echo/README.md for the
 * routes and options. Every limit is a command-line option with a default. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#define BODY_KEEP (64u * 1024) /* bytes of a request body echoed back as "body" */
#define IO_CHUNK (64u * 1024)  /* read and write unit */
#define NAME_MAX_LEN 255

struct opts {
    const char *host;
    int port;
    const char *instance;
    const char *data_dir;
    const char *workspace_dir;
    uint64_t max_header_bytes; /* request line + header names and values */
    uint64_t max_headers;
    uint64_t max_connections;
    uint64_t max_file_bytes;  /* PUT /files, /workspace */
    uint64_t max_bytes;       /* GET /bytes?n= */
    uint64_t max_sse_events;  /* GET /sse?n= */
    uint64_t max_interval_ms; /* GET /sse?interval_ms= */
    uint64_t max_spin_ms;     /* POST /spin?ms= */
    uint64_t idle_timeout_ms; /* between requests on a kept-alive connection */
    uint64_t read_timeout_ms; /* silence while a request is being received */
    uint64_t write_timeout_ms;
};

static struct opts opts = {
    .host = "127.0.0.1",
    .port = -1,
    .data_dir = "/data",
    .workspace_dir = ".",
    .max_header_bytes = 32 * 1024,
    .max_headers = 100,
    .max_connections = 1024,
    .max_file_bytes = 1ull << 30,
    .max_bytes = 64ull << 30,
    .max_sse_events = 100000,
    .max_interval_ms = 60000,
    .max_spin_ms = 600000,
    .idle_timeout_ms = 75000,
    .read_timeout_ms = 30000,
    .write_timeout_ms = 30000,
};

static char hostname[256];
static char boot_id[40];   /* read once: it is the kernel's, fixed for its life */
static struct utsname uts; /* "kernel": uname -r, tells a microVM guest from the host */
static atomic_uint_fast64_t n_conns;
static char pattern[IO_CHUNK]; /* GET /bytes content, repeated */
static const char pattern_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/";

/* ------------------------------------------------------------------ small helpers */

struct sbuf {
    char *data;
    size_t len, cap;
    int failed;
};

static int sb_reserve(struct sbuf *b, size_t n)
{
    if (b->failed)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->failed = 1;
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (sb_reserve(b, n) < 0)
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sb_reserve(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at <s> (1..4), or 0 if the bytes there are not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Appends <s> as a JSON string. Valid UTF-8 passes through; each byte that is not part of a
 * valid sequence is written as \u00XX (its Latin-1 reading), so any input gives valid JSON. */
static void sb_json_str(struct sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    if (sb_reserve(b, n * 6 + 2) < 0)
        return;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t l = c >= 0x80 ? utf8_len(u + i, n - i) : 1;
        if (l > 1) {
            memcpy(o, u + i, l);
            o += l;
            i += l;
            continue;
        }
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (c < 0x20 || c >= 0x7f) {
            memcpy(o, "\\u00", 4);
            o += 4;
            *o++ = hex[c >> 4];
            *o++ = hex[c & 0xf];
        } else {
            *o++ = (char)c;
        }
        i++;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

static void sb_json_cstr(struct sbuf *b, const char *s)
{
    sb_json_str(b, s, strlen(s));
}

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320): the value zlib's crc32() and Python's
 * zlib.crc32() give. */
static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Parses a whole decimal number; 0 or -EINVAL (also on overflow). */
static int parse_u64(const char *s, size_t n, uint64_t *ret)
{
    uint64_t v = 0;
    if (n == 0 || n > 20)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *ret = v;
    return 0;
}

/* ------------------------------------------------------------------ connections */

struct hdr {
    size_t name_off, name_len, val_off, val_len;
};

enum route {
    ROUTE_ECHO,
    ROUTE_SSE,
    ROUTE_BYTES,
    ROUTE_FILE_GET,
    ROUTE_FILE_PUT,
    ROUTE_EXIT,
    ROUTE_ENV,
    ROUTE_SPIN,
    ROUTE_ERROR, /* answer err_* once the body is drained */
};

struct conn {
    int fd;
    llhttp_t parser;
    /* Per request: the URL and header bytes live in <head> (max_header_bytes). */
    char *head;
    size_t head_len;
    size_t url_off, url_len;
    struct hdr *hdrs;
    size_t n_hdrs;
    int in_value; /* the last header span was a value */
    int started;  /* bytes of a request have arrived */
    int complete; /* on_message_complete ran: answer it */
    int keep_alive;
    int overflow; /* header limits exceeded: 431 */
    enum route route;
    int err_status;
    const char *err_code;
    char err_msg[320];
    /* body */
    char *body; /* first BODY_KEEP bytes */
    size_t body_kept;
    uint64_t body_bytes;
    uint32_t body_crc;
    int file_fd;
    int file_existed;
    char tmp_path[PATH_MAX + 64];
    char final_path[PATH_MAX];
};

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static const char *reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

static int is_head(struct conn *c)
{
    return c->parser.method == HTTP_HEAD;
}

/* Sends a complete response with a Content-Length body. */
static int respond(struct conn *c, int status, const char *ctype, const char *body, size_t len,
                   int close_after)
{
    struct sbuf h = {0};
    sb_printf(&h,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
              "X-Echo-Instance: %s\r\n%s\r\n",
              status, reason(status), ctype, len, opts.instance,
              close_after ? "Connection: close\r\n" : "");
    if (!is_head(c) && len <= 16384) /* one write for small answers */
        sb_add(&h, body, len);
    int rc = h.failed ? -ENOMEM : write_all(c->fd, h.data, h.len);
    if (rc == 0 && !is_head(c) && len > 16384)
        rc = write_all(c->fd, body, len);
    free(h.data);
    return rc;
}

static int respond_error(struct conn *c, int status, const char *code, const char *msg,
                         int close_after)
{
    struct sbuf b = {0};
    sb_add(&b, "{\"error\":{\"code\":", 17);
    sb_json_cstr(&b, code);
    sb_add(&b, ",\"message\":", 11);
    sb_json_cstr(&b, msg);
    sb_add(&b, "}}\n", 3);
    int rc = b.failed ? -ENOMEM
                      : respond(c, status, "application/json", b.data, b.len, close_after);
    free(b.data);
    return rc;
}

static void set_error(struct conn *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_error(struct conn *c, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof(c->err_msg), fmt, ap);
    va_end(ap);
    c->route = ROUTE_ERROR;
    c->err_status = status;
    c->err_code = code;
}

static void reset_request(struct conn *c)
{
    c->head_len = 0;
    c->url_off = c->url_len = 0;
    c->n_hdrs = 0;
    c->in_value = 0;
    c->started = 0;
    c->complete = 0;
    c->keep_alive = 0;
    c->overflow = 0;
    c->route = ROUTE_ECHO;
    c->err_status = 0;
    c->err_code = NULL;
    c->err_msg[0] = '\0';
    c->body_kept = 0;
    c->body_bytes = 0;
    c->body_crc = 0;
    if (c->file_fd >= 0) {
        close(c->file_fd);
        unlink(c->tmp_path);
    }
    c->file_fd = -1;
    c->tmp_path[0] = c->final_path[0] = '\0';
}

static int head_append(struct conn *c, const char *at, size_t n)
{
    if (n > opts.max_header_bytes - c->head_len) {
        c->overflow = 1;
        return -1;
    }
    memcpy(c->head + c->head_len, at, n);
    c->head_len += n;
    return 0;
}

static const char *path_of(struct conn *c, size_t *ret_len)
{
    const char *u = c->head + c->url_off;
    const char *q = memchr(u, '?', c->url_len);
    *ret_len = q ? (size_t)(q - u) : c->url_len;
    return u;
}

static const char *query_of(struct conn *c, size_t *ret_len)
{
    const char *u = c->head + c->url_off;
    const char *q = memchr(u, '?', c->url_len);
    if (!q) {
        *ret_len = 0;
        return "";
    }
    *ret_len = c->url_len - (size_t)(q + 1 - u);
    return q + 1;
}

/* Finds <name>=value in the query. Returns 1 with the value span, 0 when absent. */
static int query_param(struct conn *c, const char *name, const char **ret, size_t *ret_len)
{
    size_t qn, nl = strlen(name);
    const char *q = query_of(c, &qn), *end = q + qn;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        if ((size_t)(pe - q) > nl && memcmp(q, name, nl) == 0 && q[nl] == '=') {
            *ret = q + nl + 1;
            *ret_len = (size_t)(pe - q - (ptrdiff_t)nl - 1);
            return 1;
        }
        if ((size_t)(pe - q) == nl && memcmp(q, name, nl) == 0) {
            *ret = pe;
            *ret_len = 0;
            return 1;
        }
        q = pe + 1;
    }
    return 0;
}

/* Numeric query parameter: <def> when absent, -EINVAL (with the error set) when malformed or
 * above <max>. */
static int query_u64(struct conn *c, const char *name, uint64_t def, uint64_t max,
                     uint64_t *ret)
{
    const char *v;
    size_t vl;
    if (!query_param(c, name, &v, &vl)) {
        *ret = def;
        return 0;
    }
    if (parse_u64(v, vl, ret) < 0 || *ret > max) {
        set_error(c, 400, "bad_query", "query parameter %s must be a whole number 0..%" PRIu64,
                  name, max);
        return -EINVAL;
    }
    return 0;
}

static const struct hdr *header(struct conn *c, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < c->n_hdrs; i++)
        if (c->hdrs[i].name_len == nl &&
            strncasecmp(c->head + c->hdrs[i].name_off, name, nl) == 0)
            return &c->hdrs[i];
    return NULL;
}

static int valid_file_name(const char *s, size_t n)
{
    if (n == 0 || n > NAME_MAX_LEN || (n == 1 && s[0] == '.') ||
        (n == 2 && s[0] == '.' && s[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* /files/<name> and /workspace/<name>: fills final_path; returns 0 or -EINVAL (error set). */
static int file_target(struct conn *c, const char *path, size_t plen)
{
    const char *dir, *name;
    size_t nlen;
    if (plen > 7 && memcmp(path, "/files/", 7) == 0) {
        dir = opts.data_dir;
        name = path + 7;
        nlen = plen - 7;
    } else {
        dir = opts.workspace_dir;
        name = path + 11;
        nlen = plen - 11;
    }
    if (!valid_file_name(name, nlen)) {
        set_error(c, 400, "bad_name",
                  "file names are 1-255 characters of [A-Za-z0-9._-], not . or ..");
        return -EINVAL;
    }
    int n = snprintf(c->final_path, sizeof(c->final_path), "%s/%.*s", dir, (int)nlen, name);
    if (n < 0 || (size_t)n >= sizeof(c->final_path)) {
        set_error(c, 400, "bad_name", "path too long");
        return -EINVAL;
    }
    return 0;
}

static void route_request(struct conn *c)
{
    size_t plen;
    const char *path = path_of(c, &plen);
    int method = c->parser.method;
    int get = method == HTTP_GET || method == HTTP_HEAD;
    uint64_t dummy;

    if (plen == 4 && memcmp(path, "/sse", 4) == 0 && get) {
        if (query_u64(c, "n", 5, opts.max_sse_events, &dummy) == 0 &&
            query_u64(c, "interval_ms", 200, opts.max_interval_ms, &dummy) == 0)
            c->route = ROUTE_SSE;
    } else if (plen == 6 && memcmp(path, "/bytes", 6) == 0 && get) {
        if (query_u64(c, "n", 0, opts.max_bytes, &dummy) == 0)
            c->route = ROUTE_BYTES;
    } else if (plen == 5 && memcmp(path, "/exit", 5) == 0 && method == HTTP_POST) {
        if (query_u64(c, "code", 0, 255, &dummy) == 0)
            c->route = ROUTE_EXIT;
    } else if (plen == 5 && memcmp(path, "/spin", 5) == 0 && method == HTTP_POST) {
        if (query_u64(c, "ms", 1000, opts.max_spin_ms, &dummy) == 0)
            c->route = ROUTE_SPIN;
    } else if (plen > 5 && memcmp(path, "/env/", 5) == 0 && get) {
        c->route = ROUTE_ENV;
    } else if ((plen >= 7 && memcmp(path, "/files/", 7) == 0) ||
               (plen >= 11 && memcmp(path, "/workspace/", 11) == 0)) {
        if (!get && method != HTTP_PUT) {
            set_error(c, 405, "method_not_allowed", "use GET or PUT on %.*s", (int)plen, path);
            return;
        }
        if (file_target(c, path, plen) < 0)
            return;
        c->route = get ? ROUTE_FILE_GET : ROUTE_FILE_PUT;
    }
}

static int start_upload(struct conn *c)
{
    struct stat st;
    c->file_existed = stat(c->final_path, &st) == 0;
    snprintf(c->tmp_path, sizeof(c->tmp_path), "%s.upload.%d.%lx", c->final_path, getpid(),
             (unsigned long)pthread_self());
    c->file_fd = open(c->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (c->file_fd < 0) {
        int e = errno;
        c->tmp_path[0] = '\0';
        if (e == ENOENT)
            set_error(c, 503, "storage_unavailable", "directory of %s does not exist",
                      c->final_path);
        else
            set_error(c, 500, "internal", "cannot create %s: %s", c->final_path, strerror(e));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ llhttp callbacks */

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    reset_request(c);
    c->started = 1;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    if (c->url_len == 0)
        c->url_off = c->head_len;
    if (head_append(c, at, n) < 0)
        return -1;
    c->url_len += n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    if (c->n_hdrs == 0 || c->in_value) {
        if (c->n_hdrs >= opts.max_headers) {
            c->overflow = 1;
            return -1;
        }
        struct hdr *h = &c->hdrs[c->n_hdrs++];
        h->name_off = c->head_len;
        h->name_len = h->val_len = 0;
        h->val_off = c->head_len;
        c->in_value = 0;
    }
    if (head_append(c, at, n) < 0)
        return -1;
    c->hdrs[c->n_hdrs - 1].name_len += n;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    if (c->n_hdrs == 0)
        return -1; /* llhttp always reports a name first */
    struct hdr *h = &c->hdrs[c->n_hdrs - 1];
    if (!c->in_value) {
        c->in_value = 1;
        h->val_off = c->head_len;
    }
    if (head_append(c, at, n) < 0)
        return -1;
    h->val_len += n;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    for (size_t i = 0; i < c->n_hdrs; i++) { /* trailing OWS is not part of a value */
        struct hdr *h = &c->hdrs[i];
        while (h->val_len && (c->head[h->val_off + h->val_len - 1] == ' ' ||
                              c->head[h->val_off + h->val_len - 1] == '\t'))
            h->val_len--;
    }
    route_request(c);
    if (c->route == ROUTE_FILE_PUT) {
        if ((p->flags & F_CONTENT_LENGTH) && p->content_length > opts.max_file_bytes) {
            set_error(c, 413, "body_too_large", "files are limited to %" PRIu64 " bytes",
                      opts.max_file_bytes);
            return -1; /* answer now and close: draining would be pointless */
        }
        start_upload(c);
    }
    const struct hdr *e = header(c, "expect");
    if (e && e->val_len == 12 && strncasecmp(c->head + e->val_off, "100-continue", 12) == 0 &&
        c->route != ROUTE_ERROR) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (write_all(c->fd, cont, sizeof(cont) - 1) < 0)
            return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    c->body_bytes += n;
    c->body_crc = crc_update(c->body_crc, at, n);
    if (c->route == ROUTE_FILE_PUT) {
        if (c->body_bytes > opts.max_file_bytes) {
            set_error(c, 413, "body_too_large", "files are limited to %" PRIu64 " bytes",
                      opts.max_file_bytes);
            return -1;
        }
        while (n > 0) {
            ssize_t w = write(c->file_fd, at, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == ENOSPC || errno == EDQUOT)) {
                set_error(c, 507, "insufficient_storage", "writing %s: %s", c->final_path,
                          strerror(errno));
                close(c->file_fd);
                unlink(c->tmp_path);
                c->file_fd = -1;
                return 0;
            }
            if (w <= 0) {
                set_error(c, 500, "internal", "writing %s: %s", c->final_path,
                          w < 0 ? strerror(errno) : "short write");
                close(c->file_fd);
                unlink(c->tmp_path);
                c->file_fd = -1;
                return 0; /* keep reading the body; answer the error at the end */
            }
            at += w;
            n -= (size_t)w;
        }
        return 0;
    }
    if (c->route != ROUTE_ECHO || c->body_kept >= BODY_KEEP)
        return 0;
    if (!c->body && !(c->body = malloc(BODY_KEEP)))
        return -1;
    size_t take = n < BODY_KEEP - c->body_kept ? n : BODY_KEEP - c->body_kept;
    memcpy(c->body + c->body_kept, at, take);
    c->body_kept += take;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->complete = 1;
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    return HPE_PAUSED; /* answer before parsing a pipelined request */
}

static llhttp_settings_t http_settings; /* filled once in main() before any thread */

static void settings_init(void)
{
    llhttp_settings_init(&http_settings);
    http_settings.on_message_begin = on_message_begin;
    http_settings.on_url = on_url;
    http_settings.on_header_field = on_header_field;
    http_settings.on_header_value = on_header_value;
    http_settings.on_headers_complete = on_headers_complete;
    http_settings.on_body = on_body;
    http_settings.on_message_complete = on_message_complete;
}

/* ------------------------------------------------------------------ handlers */

static const char *method_name(struct conn *c)
{
    return llhttp_method_name((llhttp_method_t)c->parser.method);
}

static int handle_echo(struct conn *c)
{
    struct sbuf b = {0};
    size_t plen, qlen;
    const char *path = path_of(c, &plen), *query = query_of(c, &qlen);
    sb_add(&b, "{\"instance\":", 12);
    sb_json_cstr(&b, opts.instance);
    /* Read per request: a microVM clone gets its hostname and clock when it is bound. */
    char host[256];
    if (gethostname(host, sizeof(host) - 1) < 0)
        snprintf(host, sizeof(host), "%s", hostname);
    host[sizeof(host) - 1] = '\0';
    sb_printf(&b, ",\"pid\":%d,\"uid\":%u,\"gid\":%u,\"time_ms\":%" PRIu64 ",\"hostname\":",
              (int)getpid(), (unsigned)getuid(), (unsigned)getgid(), now_ms());
    sb_json_cstr(&b, host);
    sb_add(&b, ",\"kernel\":", 10);
    sb_json_cstr(&b, uts.release);
    /* Fresh random bytes: clones of one snapshot must draw different ones (scheduler/README.md,
     * the microvm driver: the agent reseeds the guest's RNG at bind). */
    unsigned char rnd[16];
    char rhex[33];
    if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd))
        memset(rnd, 0, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(rhex + 2 * i, 3, "%02x", rnd[i]);
    sb_printf(&b, ",\"random\":\"%s\"", rhex);
    sb_add(&b, ",\"boot_id\":", 11);
    sb_json_cstr(&b, boot_id);
    sb_add(&b, ",\"method\":", 10);
    sb_json_cstr(&b, method_name(c));
    sb_add(&b, ",\"path\":", 8);
    sb_json_str(&b, path, plen);
    sb_add(&b, ",\"query\":", 9);
    sb_json_str(&b, query, qlen);
    sb_printf(&b, ",\"http_version\":\"%d.%d\",\"headers\":{", c->parser.http_major,
              c->parser.http_minor);
    /* Names lower-cased; repeated names joined with ", " so the object has unique keys. */
    int first = 1;
    for (size_t i = 0; i < c->n_hdrs; i++) {
        struct hdr *h = &c->hdrs[i];
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = c->hdrs[j].name_len == h->name_len &&
                   strncasecmp(c->head + c->hdrs[j].name_off, c->head + h->name_off,
                               h->name_len) == 0;
        if (seen)
            continue;
        char name[256];
        size_t nl = h->name_len < sizeof(name) ? h->name_len : sizeof(name) - 1;
        for (size_t k = 0; k < nl; k++) {
            char ch = c->head[h->name_off + k];
            name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        struct sbuf v = {0};
        sb_add(&v, c->head + h->val_off, h->val_len);
        for (size_t j = i + 1; j < c->n_hdrs; j++) {
            struct hdr *o = &c->hdrs[j];
            if (o->name_len == h->name_len &&
                strncasecmp(c->head + o->name_off, c->head + h->name_off, h->name_len) == 0) {
                sb_add(&v, ", ", 2);
                sb_add(&v, c->head + o->val_off, o->val_len);
            }
        }
        if (!first)
            sb_add(&b, ",", 1);
        first = 0;
        sb_json_str(&b, name, nl);
        sb_add(&b, ":", 1);
        sb_json_str(&b, v.data ? v.data : "", v.len);
        if (v.failed)
            b.failed = 1;
        free(v.data);
    }
    sb_add(&b, "},\"body\":", 9);
    sb_json_str(&b, c->body ? c->body : "", c->body_kept);
    sb_printf(&b, ",\"body_bytes\":%" PRIu64 ",\"body_crc32\":%" PRIu32 ",\"body_truncated\":%s}\n",
              c->body_bytes, c->body_crc, c->body_bytes > c->body_kept ? "true" : "false");
    int rc = b.failed ? respond_error(c, 500, "internal", "out of memory", 1)
                      : respond(c, 200, "application/json", b.data, b.len, !c->keep_alive);
    free(b.data);
    return rc;
}

static int handle_sse(struct conn *c)
{
    uint64_t n, interval, start = 0;
    query_u64(c, "n", 5, opts.max_sse_events, &n); /* validated in route_request */
    query_u64(c, "interval_ms", 200, opts.max_interval_ms, &interval);
    const struct hdr *last = header(c, "last-event-id");
    if (last && parse_u64(c->head + last->val_off, last->val_len, &start) == 0 && start < n)
        start++; /* resume after the last event the client saw */
    else if (last)
        start = n;
    /* HTTP/1.0 clients get a close-delimited stream, 1.1 clients a chunked one. */
    int chunked = c->parser.http_major == 1 && c->parser.http_minor >= 1;
    char buf[512];
    int len = snprintf(buf, sizeof(buf),
                       "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                       "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                       "X-Echo-Instance: %s\r\n%s\r\n",
                       opts.instance,
                       chunked ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n");
    if (len < 0 || (size_t)len >= sizeof(buf) || write_all(c->fd, buf, (size_t)len) < 0)
        return -1;
    if (is_head(c))
        return chunked ? 0 : -1;
    for (uint64_t i = start; i < n; i++) {
        if (i > start)
            sleep_ms(interval);
        struct sbuf ev = {0};
        sb_printf(&ev, "id: %" PRIu64 "\ndata: {\"i\":%" PRIu64 ",\"instance\":", i, i);
        sb_json_cstr(&ev, opts.instance);
        sb_printf(&ev, ",\"t_ms\":%" PRIu64 "}\n\n", now_ms());
        if (ev.failed) {
            free(ev.data);
            return -1;
        }
        char pre[32];
        int pl = chunked ? snprintf(pre, sizeof(pre), "%zx\r\n", ev.len) : 0;
        if (chunked)
            sb_add(&ev, "\r\n", 2);
        int rc = (pl > 0 ? write_all(c->fd, pre, (size_t)pl) : 0);
        if (rc == 0)
            rc = write_all(c->fd, ev.data, ev.len);
        free(ev.data);
        if (rc < 0)
            return -1; /* the client went away */
    }
    if (!chunked)
        return -1; /* close ends the stream */
    return write_all(c->fd, "0\r\n\r\n", 5) < 0 ? -1 : 0;
}

static int handle_bytes(struct conn *c)
{
    uint64_t n;
    query_u64(c, "n", 0, opts.max_bytes, &n);
    char buf[256];
    int len = snprintf(buf, sizeof(buf),
                       "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                       "Content-Length: %" PRIu64 "\r\nX-Echo-Instance: %s\r\n%s\r\n",
                       n, opts.instance, c->keep_alive ? "" : "Connection: close\r\n");
    if (len < 0 || (size_t)len >= sizeof(buf) || write_all(c->fd, buf, (size_t)len) < 0)
        return -1;
    if (is_head(c))
        return 0;
    /* Byte i of the body is pattern_alphabet[i % 64]; IO_CHUNK is a multiple of 64. */
    while (n > 0) {
        size_t k = n < IO_CHUNK ? (size_t)n : IO_CHUNK;
        if (write_all(c->fd, pattern, k) < 0)
            return -1;
        n -= k;
    }
    return 0;
}

static int handle_file_get(struct conn *c)
{
    int fd = open(c->final_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (fd < 0 && e != ENOENT && e != ENOTDIR)
            return respond_error(c, 500, "internal", strerror(e), !c->keep_alive);
        char msg[PATH_MAX + 32];
        snprintf(msg, sizeof(msg), "no such file: %s", c->final_path);
        return respond_error(c, 404, "not_found", msg, !c->keep_alive);
    }
    char buf[256];
    int len = snprintf(buf, sizeof(buf),
                       "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                       "Content-Length: %jd\r\nX-Echo-Instance: %s\r\n%s\r\n",
                       (intmax_t)st.st_size, opts.instance,
                       c->keep_alive ? "" : "Connection: close\r\n");
    int rc = (len < 0 || (size_t)len >= sizeof(buf)) ? -1 : write_all(c->fd, buf, (size_t)len);
    off_t left = is_head(c) ? 0 : st.st_size;
    char *io = left ? malloc(IO_CHUNK) : NULL;
    if (left && !io)
        rc = -1;
    while (rc == 0 && left > 0) {
        ssize_t r = read(fd, io, left < (off_t)IO_CHUNK ? (size_t)left : IO_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) { /* truncated under us: the length was promised, so close */
            rc = -1;
            break;
        }
        rc = write_all(c->fd, io, (size_t)r);
        left -= r;
    }
    free(io);
    close(fd);
    return rc < 0 ? -1 : 0;
}

static int handle_file_put(struct conn *c)
{
    if (fsync(c->file_fd) < 0 || close(c->file_fd) < 0) {
        c->file_fd = -1;
        unlink(c->tmp_path);
        return respond_error(c, 500, "internal", strerror(errno), !c->keep_alive);
    }
    c->file_fd = -1;
    if (rename(c->tmp_path, c->final_path) < 0) {
        int e = errno;
        unlink(c->tmp_path);
        return respond_error(c, 500, "internal", strerror(e), !c->keep_alive);
    }
    c->tmp_path[0] = '\0';
    struct sbuf b = {0};
    sb_add(&b, "{\"path\":", 8);
    sb_json_cstr(&b, c->final_path);
    sb_printf(&b, ",\"bytes\":%" PRIu64 ",\"crc32\":%" PRIu32 ",\"instance\":", c->body_bytes,
              c->body_crc);
    sb_json_cstr(&b, opts.instance);
    sb_add(&b, "}\n", 2);
    int rc = b.failed ? -1
                      : respond(c, c->file_existed ? 200 : 201, "application/json", b.data,
                                b.len, !c->keep_alive);
    free(b.data);
    return rc;
}

static int handle_exit(struct conn *c)
{
    uint64_t code;
    query_u64(c, "code", 0, 255, &code);
    char body[128];
    int len = snprintf(body, sizeof(body), "{\"exiting\":true,\"code\":%" PRIu64 "}\n", code);
    respond(c, 200, "application/json", body, (size_t)len, 1);
    shutdown(c->fd, SHUT_WR);
    fprintf(stderr, "berth-echo: exiting with code %" PRIu64 " on request\n", code);
    _exit((int)code);
}

/* POST /spin?ms=N: a thread of its own burns CPU for N ms of wall time (tests measure what a
 * paused sandbox uses); the answer comes at once. */
static void *spin_thread(void *arg)
{
    uint64_t until = now_ms() + (uint64_t)(uintptr_t)arg;
    volatile uint64_t x = 0;
    while (now_ms() < until)
        for (int i = 0; i < 100000; i++)
            x += (uint64_t)i;
    return NULL;
}

static int handle_spin(struct conn *c)
{
    uint64_t ms;
    query_u64(c, "ms", 1000, opts.max_spin_ms, &ms);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, spin_thread, (void *)(uintptr_t)ms);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        return respond_error(c, 503, "overloaded", "cannot start a thread", 0);
    char body[96];
    int len = snprintf(body, sizeof(body), "{\"spinning\":true,\"ms\":%" PRIu64 "}\n", ms);
    return respond(c, 200, "application/json", body, (size_t)len, 0);
}

/* GET /env/<NAME>: one variable of the app's environment, only ECHO_* names (a template's
 * other variables may hold secrets the session's user must not read through the echo). */
static int handle_env(struct conn *c)
{
    size_t plen;
    const char *path = path_of(c, &plen);
    const char *name = path + 5;
    size_t nlen = plen - 5;
    char buf[NAME_MAX_LEN + 1];
    if (nlen <= 5 || nlen > NAME_MAX_LEN || memcmp(name, "ECHO_", 5) != 0)
        return respond_error(c, 400, "bad_name", "only ECHO_* variables are shown",
                             !c->keep_alive);
    memcpy(buf, name, nlen);
    buf[nlen] = '\0';
    const char *v = getenv(buf);
    if (!v)
        return respond_error(c, 404, "not_found", "not set", !c->keep_alive);
    struct sbuf b = {0};
    sb_add(&b, "{\"name\":", 8);
    sb_json_cstr(&b, buf);
    sb_add(&b, ",\"value\":", 9);
    sb_json_cstr(&b, v);
    sb_add(&b, "}\n", 2);
    int rc = b.failed ? respond_error(c, 500, "internal", "out of memory", 1)
                      : respond(c, 200, "application/json", b.data, b.len, !c->keep_alive);
    free(b.data);
    return rc;
}

/* Answers the request just completed. Returns 0 to keep the connection, -1 to close it. */
static int handle(struct conn *c)
{
    int rc;
    switch (c->route) {
    case ROUTE_SSE: rc = handle_sse(c); break;
    case ROUTE_BYTES: rc = handle_bytes(c); break;
    case ROUTE_FILE_GET: rc = handle_file_get(c); break;
    case ROUTE_FILE_PUT: rc = handle_file_put(c); break;
    case ROUTE_EXIT: rc = handle_exit(c); break;
    case ROUTE_ENV: rc = handle_env(c); break;
    case ROUTE_SPIN: rc = handle_spin(c); break;
    case ROUTE_ERROR:
        rc = respond_error(c, c->err_status, c->err_code, c->err_msg, !c->keep_alive);
        break;
    default: rc = handle_echo(c); break;
    }
    return rc < 0 || !c->keep_alive ? -1 : 0;
}

/* Waits until <fd> is readable or <ms> pass. 1 readable, 0 timeout, <0 error. */
static int wait_readable(int fd, uint64_t ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    for (;;) {
        int r = poll(&pfd, 1, ms > INT_MAX ? INT_MAX : (int)ms);
        if (r < 0 && errno == EINTR)
            continue;
        return r < 0 ? -errno : r;
    }
}

static void serve(struct conn *c)
{
    char buf[16384];
    llhttp_init(&c->parser, HTTP_REQUEST, &http_settings);
    c->parser.data = c;
    for (;;) {
        uint64_t limit_ms = c->started ? opts.read_timeout_ms : opts.idle_timeout_ms;
        int r = wait_readable(c->fd, limit_ms);
        if (r == 0 && c->started)
            respond_error(c, 408, "request_timeout", "request not received in time", 1);
        if (r <= 0)
            return;
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return;
        llhttp_errno_t err;
        const char *at = buf, *end = buf + n;
        if (n == 0) {
            err = llhttp_finish(&c->parser);
            if (err == HPE_OK && !c->complete)
                return; /* clean close between requests */
        } else {
            err = llhttp_execute(&c->parser, at, (size_t)(end - at));
        }
        while (err == HPE_PAUSED && c->complete) {
            at = llhttp_get_error_pos(&c->parser);
            if (handle(c) < 0)
                return;
            reset_request(c);
            llhttp_resume(&c->parser);
            err = at && at < end ? llhttp_execute(&c->parser, at, (size_t)(end - at)) : HPE_OK;
        }
        if (err != HPE_OK) {
            if (c->overflow)
                respond_error(c, 431, "headers_too_large",
                              "request head over the header byte or count limit", 1);
            else if (c->route == ROUTE_ERROR)
                respond_error(c, c->err_status, c->err_code, c->err_msg, 1);
            else if (c->started || n > 0) {
                char msg[200];
                snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
                         llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser)
                                                             : llhttp_errno_name(err));
                respond_error(c, 400, "bad_request", msg, 1);
            }
            return;
        }
        if (n == 0)
            return;
    }
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    serve(c);
    reset_request(c);
    close(c->fd);
    free(c->head);
    free(c->hdrs);
    free(c->body);
    free(c);
    atomic_fetch_sub(&n_conns, 1);
    return NULL;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: berth-echo --port N [options]\n"
            "  --host ADDR             IPv4 address to bind (default 127.0.0.1)\n"
            "  --port N                TCP port (0: any free port, printed on stderr)\n"
            "  --data-dir DIR          /files/<name> lives here (default /data)\n"
            "  --workspace-dir DIR     /workspace/<name> lives here (default .)\n"
            "  --max-header-bytes N    request line + headers (default 32768)\n"
            "  --max-headers N         header count (default 100)\n"
            "  --max-connections N     concurrent connections (default 1024)\n"
            "  --max-file-bytes N      PUT body limit (default 1073741824)\n"
            "  --max-bytes N           GET /bytes?n= limit (default 68719476736)\n"
            "  --max-sse-events N      GET /sse?n= limit (default 100000)\n"
            "  --max-interval-ms N     GET /sse?interval_ms= limit (default 60000)\n"
            "  --max-spin-ms N         POST /spin?ms= limit (default 600000)\n"
            "  --idle-timeout-ms N     idle kept-alive connection (default 75000)\n"
            "  --read-timeout-ms N     silence within a request (default 30000)\n"
            "  --write-timeout-ms N    blocked write (default 30000)\n"
            "The instance id comes from $BERTH_INSTANCE_ID (default \"local\").\n");
}

static void opt_u64(const char *name, const char *val, uint64_t min, uint64_t max, uint64_t *ret)
{
    if (parse_u64(val, strlen(val), ret) < 0 || *ret < min || *ret > max) {
        fprintf(stderr, "berth-echo: --%s must be a whole number %" PRIu64 "..%" PRIu64 "\n",
                name, min, max);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"data-dir", required_argument, NULL, 'd'},
        {"workspace-dir", required_argument, NULL, 'w'},
        {"max-header-bytes", required_argument, NULL, 1},
        {"max-headers", required_argument, NULL, 2},
        {"max-connections", required_argument, NULL, 3},
        {"max-file-bytes", required_argument, NULL, 4},
        {"max-bytes", required_argument, NULL, 5},
        {"max-sse-events", required_argument, NULL, 6},
        {"max-interval-ms", required_argument, NULL, 7},
        {"idle-timeout-ms", required_argument, NULL, 8},
        {"read-timeout-ms", required_argument, NULL, 9},
        {"write-timeout-ms", required_argument, NULL, 10},
        {"max-spin-ms", required_argument, NULL, 11},
        {"help", no_argument, NULL, 'H'},
        {NULL, 0, NULL, 0},
    };
    uint64_t port = 0;
    int have_port = 0, o;
    while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (o) {
        case 'h': opts.host = optarg; break;
        case 'p': opt_u64("port", optarg, 0, 65535, &port); have_port = 1; break;
        case 'd': opts.data_dir = optarg; break;
        case 'w': opts.workspace_dir = optarg; break;
        case 1: opt_u64("max-header-bytes", optarg, 256, 1u << 24, &opts.max_header_bytes); break;
        case 2: opt_u64("max-headers", optarg, 1, 10000, &opts.max_headers); break;
        case 3: opt_u64("max-connections", optarg, 1, 1000000, &opts.max_connections); break;
        case 4: opt_u64("max-file-bytes", optarg, 0, UINT64_MAX, &opts.max_file_bytes); break;
        case 5: opt_u64("max-bytes", optarg, 0, UINT64_MAX, &opts.max_bytes); break;
        case 6: opt_u64("max-sse-events", optarg, 0, UINT64_MAX, &opts.max_sse_events); break;
        case 7: opt_u64("max-interval-ms", optarg, 0, 86400000, &opts.max_interval_ms); break;
        case 8: opt_u64("idle-timeout-ms", optarg, 1, 86400000, &opts.idle_timeout_ms); break;
        case 9: opt_u64("read-timeout-ms", optarg, 1, 86400000, &opts.read_timeout_ms); break;
        case 10: opt_u64("write-timeout-ms", optarg, 1, 86400000, &opts.write_timeout_ms); break;
        case 11: opt_u64("max-spin-ms", optarg, 0, 86400000, &opts.max_spin_ms); break;
        case 'H': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!have_port || optind != argc) {
        usage(stderr);
        return 2;
    }
    opts.port = (int)port;
    opts.instance = getenv("BERTH_INSTANCE_ID");
    if (!opts.instance || !*opts.instance)
        opts.instance = "local";
    if (gethostname(hostname, sizeof(hostname) - 1) < 0)
        strcpy(hostname, "unknown");
    if (uname(&uts) < 0)
        strcpy(uts.release, "unknown");
    /* The kernel's boot id: a microVM's differs from the host's (its own kernel). */
    int bfd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (bfd >= 0) {
        ssize_t bn = read(bfd, boot_id, sizeof(boot_id) - 1);
        boot_id[bn > 0 ? bn : 0] = '\0';
        boot_id[strcspn(boot_id, "\n")] = '\0';
        close(bfd);
    }
    crc_init();
    settings_init();
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = pattern_alphabet[i % 64];
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opts.port)};
    if (inet_pton(AF_INET, opts.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "berth-echo: --host must be an IPv4 address, not '%s'\n", opts.host);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 511) < 0) {
        fprintf(stderr, "berth-echo: cannot listen on %s:%d: %s\n", opts.host, opts.port,
                strerror(errno));
        return 1;
    }
    socklen_t sl = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    fprintf(stderr, "berth-echo: instance=%s listening on %s:%d\n", opts.instance, opts.host,
            ntohs(sa.sin_port));

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 512 * 1024);
    struct timeval wto = {.tv_sec = (time_t)(opts.write_timeout_ms / 1000),
                          .tv_usec = (suseconds_t)(opts.write_timeout_ms % 1000) * 1000};
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                sleep_ms(50); /* out of descriptors: let connections finish */
                continue;
            }
            fprintf(stderr, "berth-echo: accept: %s\n", strerror(errno));
            return 1;
        }
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wto, sizeof(wto));
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = calloc(1, sizeof(*c));
        if (c) {
            c->fd = fd;
            c->file_fd = -1;
            c->head = malloc(opts.max_header_bytes);
            c->hdrs = calloc(opts.max_headers, sizeof(*c->hdrs));
        }
        if (atomic_fetch_add(&n_conns, 1) >= opts.max_connections || !c || !c->head ||
            !c->hdrs) {
            static const char busy_body[] =
                "{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections\"}}\n";
            char busy[256];
            int bl = snprintf(busy, sizeof(busy),
                              "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                              sizeof(busy_body) - 1, busy_body);
            (void)!send(fd, busy, (size_t)bl, MSG_NOSIGNAL | MSG_DONTWAIT);
            close(fd);
            if (c) {
                free(c->head);
                free(c->hdrs);
                free(c);
            }
            atomic_fetch_sub(&n_conns, 1);
            continue;
        }
        pthread_t t;
        if (pthread_create(&t, &attr, conn_main, c) != 0) {
            close(fd);
            free(c->head);
            free(c->hdrs);
            free(c);
            atomic_fetch_sub(&n_conns, 1);
            sleep_ms(10);
        }
    }
}
