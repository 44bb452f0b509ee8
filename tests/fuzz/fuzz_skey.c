/* Fuzz target: gateway/skey.c, the session key of a request. The input after the first byte is
 * a block of header lines ("name: value", one per line); byte 0 picks the route (which key
 * headers, which cookie name) and whether the block goes through the real head parser
 * (gateway/h1.c) or straight into a struct gw_h1_head (raw bytes llhttp would refuse, to reach
 * the cookie parser with anything).
 *
 * Checks: a found key is 1-128 bytes of 0x21-0x7E lying inside one of the request's header
 * values; the out-parameters stay untouched unless a key is found; and the answer equals the
 * one of a plain reference implementation of the rules (route headers in order, the first
 * name present decides: one header of it, OWS trimmed, no comma, else invalid; then the Cookie
 * headers in order, first pair of that name, one pair of quotes removed). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/key.h"
#include "gateway/config.h"
#include "gateway/h1.h"
#include "gateway/skey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HDRS 64

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_skey: " __VA_ARGS__);                                                \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

static void trim(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '\t'))
        (*p)++, (*n)--;
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
        (*n)--;
}

static int valid(const char *k, size_t n)
{
    if (n < 1 || n > CM_KEY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return 0;
    return 1;
}

static int name_is(const struct gw_h1_header *h, const char *name)
{
    size_t n = strlen(name);
    return h->name_len == n && strncasecmp(h->name, name, n) == 0;
}

/* The reference: the rules written out plainly. */
static int ref_cookie(const char *v, size_t n, const char *name, const char **ret,
                      size_t *ret_len)
{
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && v[j] != ';')
            j++;
        const char *pair = v + i;
        size_t pn = j - i;
        trim(&pair, &pn);
        const char *eq = memchr(pair, '=', pn);
        if (eq) {
            const char *k = pair;
            size_t kn = (size_t)(eq - pair);
            trim(&k, &kn);
            if (kn == strlen(name) && memcmp(k, name, kn) == 0) {
                const char *val = eq + 1;
                size_t vn = (size_t)(pair + pn - val);
                trim(&val, &vn);
                if (vn >= 2 && val[0] == '"' && val[vn - 1] == '"')
                    val++, vn -= 2;
                *ret = val;
                *ret_len = vn;
                return 1;
            }
        }
        if (j >= n)
            break;
        i = j + 1;
    }
    return 0;
}

static int ref_find(const struct gw_route *r, const struct gw_h1_head *h, const char **key,
                    size_t *len, int *from_cookie)
{
    for (char **name = r->key_headers; name && *name; name++) {
        int count = 0;
        uint32_t at = 0;
        for (uint32_t i = 0; i < h->n_headers; i++)
            if (name_is(&h->headers[i], *name) && count++ == 0)
                at = i;
        if (count == 0)
            continue;
        if (count > 1)
            return GW_SKEY_INVALID;
        const char *v = h->headers[at].value;
        size_t vn = h->headers[at].value_len;
        trim(&v, &vn);
        if (!valid(v, vn) || memchr(v, ',', vn))
            return GW_SKEY_INVALID;
        *key = v, *len = vn, *from_cookie = 0;
        return GW_SKEY_FOUND;
    }
    if (!r->cookie)
        return GW_SKEY_NONE;
    for (uint32_t i = 0; i < h->n_headers; i++) {
        if (!name_is(&h->headers[i], "cookie"))
            continue;
        const char *v;
        size_t vn;
        if (ref_cookie(h->headers[i].value, h->headers[i].value_len, r->cookie, &v, &vn)) {
            if (!valid(v, vn))
                return GW_SKEY_INVALID;
            *key = v, *len = vn, *from_cookie = 1;
            return GW_SKEY_FOUND;
        }
    }
    return GW_SKEY_NONE;
}

static void check(const struct gw_route *r, const struct gw_h1_head *h)
{
    const char *sentinel = "untouched";
    const char *key = sentinel;
    size_t len = 999;
    int from_cookie = 7;
    int rc = gw_skey_find(r, h, &key, &len, &from_cookie);
    const char *rkey = NULL;
    size_t rlen = 0;
    int rfrom = -1;
    int want = ref_find(r, h, &rkey, &rlen, &rfrom);
    if (rc != want)
        FAIL("gw_skey_find %d, reference %d", rc, want);
    if (rc != GW_SKEY_FOUND) {
        if (key != sentinel || len != 999 || from_cookie != 7)
            FAIL("out-parameters changed on %d", rc);
        return;
    }
    if (key != rkey || len != rlen || from_cookie != rfrom)
        FAIL("gw_skey_find found \"%.*s\" (cookie %d), reference \"%.*s\" (cookie %d)",
             (int)len, key, from_cookie, (int)rlen, rkey, rfrom);
    if (!valid(key, len) || !cm_key_valid(key, len))
        FAIL("found an invalid key");
    int inside = 0;
    for (uint32_t i = 0; i < h->n_headers && !inside; i++) {
        const struct gw_h1_header *x = &h->headers[i];
        inside = key >= x->value && key + len <= x->value + x->value_len;
    }
    if (!inside)
        FAIL("key outside every header value");
    /* the cookie helper on its own answers the same for the cookie it found */
    if (from_cookie) {
        int seen = 0;
        for (uint32_t i = 0; i < h->n_headers && !seen; i++) {
            const struct gw_h1_header *x = &h->headers[i];
            const char *v;
            size_t vn;
            if (name_is(x, "cookie") &&
                gw_skey_cookie(x->value, x->value_len, r->cookie, &v, &vn)) {
                seen = 1;
                if (v != key || vn != len)
                    FAIL("gw_skey_cookie disagrees with gw_skey_find");
            }
        }
        if (!seen)
            FAIL("cookie key without a cookie");
    }
}

/* Splits <p> into header lines: "name:value" at the first ':' (no ':' = a name alone). */
static uint32_t raw_headers(const char *p, size_t n, struct gw_h1_header *out, uint32_t max)
{
    uint32_t k = 0;
    size_t i = 0;
    while (i < n && k < max) {
        size_t j = i;
        while (j < n && p[j] != '\n')
            j++;
        const char *line = p + i;
        size_t ln = j - i;
        const char *colon = memchr(line, ':', ln);
        out[k].name = line;
        out[k].name_len = (uint32_t)(colon ? (size_t)(colon - line) : ln);
        out[k].value = colon ? colon + 1 : line + ln;
        out[k].value_len = (uint32_t)(colon ? ln - (size_t)(colon - line) - 1 : 0);
        k++;
        i = j + 1;
    }
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static char *hdr_sets[4][4] = {{"x-fc-session-id", NULL},
                                   {"x-a", "x-fc-session-id", NULL},
                                   {NULL},
                                   {"cookie", "x-b", NULL}};
    static char *cookies[4] = {"berth_session", "sid", NULL, "a"};
    struct gw_route r = {.name = "fuzz", .path_prefix = "/", .tenant = "default",
                         .key_headers = hdr_sets[data[0] & 3], .cookie = cookies[(data[0] >> 2) & 3]};
    int through_parser = (data[0] >> 4) & 1;
    size_t n = size - 1;
    static struct gw_h1_header hdrs[MAX_HDRS];
    struct gw_h1_head h;
    memset(&h, 0, sizeof(h));
    h.headers = hdrs;
    h.max_headers = MAX_HDRS;
    char *buf;
    if (through_parser) {
        /* "GET / HTTP/1.1\r\nHost: x\r\n" + lines (LF turned into CRLF) + "\r\n" */
        static const char pre[] = "GET / HTTP/1.1\r\nHost: x\r\n";
        size_t cap = sizeof(pre) + 2 * n + 4;
        buf = malloc(cap);
        if (!buf)
            return 0;
        size_t len = sizeof(pre) - 1;
        memcpy(buf, pre, len);
        for (size_t i = 0; i < n; i++) {
            char c = (char)data[1 + i];
            if (c == '\n')
                buf[len++] = '\r';
            buf[len++] = c;
        }
        if (n && data[size - 1] != '\n')
            buf[len++] = '\r', buf[len++] = '\n';
        buf[len++] = '\r';
        buf[len++] = '\n';
        llhttp_settings_t s;
        llhttp_t p;
        gw_h1_settings_init(&s, NULL, NULL);
        llhttp_init(&p, HTTP_REQUEST, &s);
        if (gw_h1_parse_head(&p, &s, &h, buf, len, 0) != GW_H1_OK) {
            free(buf);
            return 0;
        }
    } else {
        buf = malloc(n ? n : 1);
        if (!buf)
            return 0;
        memcpy(buf, data + 1, n);
        h.n_headers = raw_headers(buf, n, hdrs, MAX_HDRS);
    }
    check(&r, &h);
    /* and every route shape on the same head */
    for (int i = 0; i < 4; i++) {
        struct gw_route o = r;
        o.key_headers = hdr_sets[i];
        o.cookie = cookies[(i + 1) & 3];
        check(&o, &h);
    }
    free(buf);
    return 0;
}
