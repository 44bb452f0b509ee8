#include "gateway/rewrite.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <string.h>

#include "gateway/skey.h"

static const char *find(const char *p, const char *end, const char *needle, size_t nl)
{
    while ((size_t)(end - p) >= nl) {
        const char *q = memchr(p, needle[0], (size_t)(end - p) - nl + 1);
        if (!q)
            return NULL;
        if (memcmp(q, needle, nl) == 0)
            return q;
        p = q + 1;
    }
    return NULL;
}

/* The next "ws://", "wss://", "ws=" or "wss=" in [p, end): its start, and in *len its length;
 * NULL when none is left. */
static const char *next_ws(const char *p, const char *end, size_t *len)
{
    while ((size_t)(end - p) >= 3) {
        const char *q = find(p, end, "ws", 2);
        if (!q)
            return NULL;
        const char *r = q + 2;
        if (r < end && *r == 's')
            r++;
        if (r < end && *r == '=') {
            *len = (size_t)(r + 1 - q);
            return q;
        }
        if (end - r >= 3 && memcmp(r, "://", 3) == 0) {
            *len = (size_t)(r + 3 - q);
            return q;
        }
        p = q + 1;
    }
    return NULL;
}

int gw_rewrite_cdp(const char *in, size_t n, const char *host, size_t host_len, int secure,
                   struct evbuffer *out)
{
    const char *p = in, *end = in + n;
    int count = 0;
    size_t mlen;
    const char *m;
    while ((m = next_ws(p, end, &mlen)) != NULL) {
        const char *auth = m + mlen;
        const char *slash = auth;
        while (slash < end && *slash != '/' && *slash != '"' && *slash != '&' && *slash != ' ')
            slash++;
        /* A word that merely ends in "ws" ("news://", "rows=") is not a URL of the browser's. */
        int word = m > in && (isalnum((unsigned char)m[-1]) || m[-1] == '_');
        if (word || slash >= end || *slash != '/' || slash == auth) {
            if (evbuffer_add(out, p, (size_t)(auth - p)) < 0)
                return -1;
            p = auth;
            continue;
        }
        int eq = m[mlen - 1] == '=';
        const char *scheme = secure ? (eq ? "wss=" : "wss://") : (eq ? "ws=" : "ws://");
        if (evbuffer_add(out, p, (size_t)(m - p)) < 0 ||
            evbuffer_add(out, scheme, strlen(scheme)) < 0 || evbuffer_add(out, host, host_len) < 0)
            return -1;
        p = slash;
        count++;
    }
    if (p < end && evbuffer_add(out, p, (size_t)(end - p)) < 0)
        return -1;
    return count;
}

int gw_rewrite_endpoint_id(const char *data, size_t n, const char **ret, size_t *ret_len)
{
    const char *q = memchr(data, '?', n);
    if (!q)
        return 0;
    return gw_skey_query(q + 1, (size_t)(data + n - q - 1), ret, ret_len);
}

size_t gw_rewrite_sse_event(const char *buf, size_t n, int *is_endpoint, const char **data,
                            size_t *data_len)
{
    /* Find the blank line that ends the event. */
    size_t i = 0, end = 0;
    while (i < n) {
        const char *nl = memchr(buf + i, '\n', n - i);
        if (!nl)
            return 0;
        size_t line_start = i;
        i = (size_t)(nl - buf) + 1;
        size_t len = (size_t)(nl - (buf + line_start));
        if (len == 0 || (len == 1 && buf[line_start] == '\r')) {
            end = i;
            break;
        }
    }
    if (!end)
        return 0;
    *is_endpoint = 0;
    *data = NULL;
    *data_len = 0;
    for (size_t s = 0; s < end;) {
        const char *nl = memchr(buf + s, '\n', end - s);
        size_t e = nl ? (size_t)(nl - buf) : end;
        size_t len = e - s;
        if (len && buf[s + len - 1] == '\r')
            len--;
        const char *line = buf + s;
        if (len >= 6 && memcmp(line, "event:", 6) == 0) {
            const char *v = line + 6;
            size_t vl = len - 6;
            if (vl && *v == ' ')
                v++, vl--;
            *is_endpoint = vl == 8 && memcmp(v, "endpoint", 8) == 0;
        } else if (len >= 5 && memcmp(line, "data:", 5) == 0 && !*data) {
            const char *v = line + 5;
            size_t vl = len - 5;
            if (vl && *v == ' ')
                v++, vl--;
            *data = v;
            *data_len = vl;
        }
        s = e + 1;
    }
    return end;
}
