#include "gateway/skey.h"

#include <string.h>

#include "common/key.h"
#include "gateway/config.h"
#include "gateway/h1.h"

int gw_skey_cookie(const char *v, size_t n, const char *name, const char **ret, size_t *ret_len)
{
    size_t nl = strlen(name);
    while (n) {
        const char *semi = memchr(v, ';', n);
        size_t pl = semi ? (size_t)(semi - v) : n;
        const char *p = v;
        size_t pn = pl;
        gw_h1_trim(&p, &pn);
        const char *eq = memchr(p, '=', pn);
        if (eq) {
            const char *k = p;
            size_t kn = (size_t)(eq - p);
            gw_h1_trim(&k, &kn);
            if (kn == nl && memcmp(k, name, nl) == 0) {
                const char *val = eq + 1;
                size_t vn = (size_t)(p + pn - val);
                gw_h1_trim(&val, &vn);
                if (vn >= 2 && val[0] == '"' && val[vn - 1] == '"') {
                    val++;
                    vn -= 2;
                }
                *ret = val;
                *ret_len = vn;
                return 1;
            }
        }
        if (!semi)
            break;
        n -= pl + 1;
        v = semi + 1;
    }
    return 0;
}

int gw_skey_find(const struct gw_route *route, const struct gw_h1_head *head,
                 const char **ret_key, size_t *ret_len, int *ret_from_cookie)
{
    for (char **name = route->key_headers; name && *name; name++) {
        size_t nl = strlen(*name);
        const struct gw_h1_header *found = NULL;
        for (uint32_t i = 0; i < head->n_headers; i++) {
            const struct gw_h1_header *h = &head->headers[i];
            if (!gw_h1_name_eq(h, *name, nl))
                continue;
            /* Two of them (or a list, below): which one is the key depends on the parser;
             * an instance that takes the last, or joins them, reads another session's key
             * than the one the gateway routed by. */
            if (found)
                return GW_SKEY_INVALID;
            found = h;
        }
        if (!found)
            continue;
        const char *v = found->value;
        size_t vn = found->value_len;
        gw_h1_trim(&v, &vn);
        if (!cm_key_valid(v, vn) || memchr(v, ',', vn))
            return GW_SKEY_INVALID;
        *ret_key = v;
        *ret_len = vn;
        if (ret_from_cookie)
            *ret_from_cookie = 0;
        return GW_SKEY_FOUND;
    }
    if (!route->cookie)
        return GW_SKEY_NONE;
    /* Several Cookie headers may be present (HTTP/2 splits them); the first match wins. */
    for (uint32_t i = 0; i < head->n_headers; i++) {
        const struct gw_h1_header *h = &head->headers[i];
        if (!gw_h1_name_eq(h, "cookie", 6))
            continue;
        const char *v;
        size_t vn;
        if (gw_skey_cookie(h->value, h->value_len, route->cookie, &v, &vn)) {
            if (!cm_key_valid(v, vn))
                return GW_SKEY_INVALID;
            *ret_key = v;
            *ret_len = vn;
            if (ret_from_cookie)
                *ret_from_cookie = 1;
            return GW_SKEY_FOUND;
        }
    }
    return GW_SKEY_NONE;
}

int gw_skey_query(const char *q, size_t n, const char **ret, size_t *ret_len)
{
    const char *end = memchr(q, '#', n);
    if (end)
        n = (size_t)(end - q);
    while (n) {
        const char *amp = memchr(q, '&', n);
        size_t pl = amp ? (size_t)(amp - q) : n;
        const char *eq = memchr(q, '=', pl);
        if (eq) {
            size_t kn = (size_t)(eq - q);
            if ((kn == 9 && memcmp(q, "sessionId", 9) == 0) ||
                (kn == 10 && memcmp(q, "session_id", 10) == 0)) {
                *ret = eq + 1;
                *ret_len = pl - kn - 1;
                return 1;
            }
        }
        if (!amp)
            break;
        n -= pl + 1;
        q = amp + 1;
    }
    return 0;
}
