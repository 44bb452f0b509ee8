#include "key.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

int cm_key_valid(const char *key, size_t len)
{
    if (len == 0 || len > CM_KEY_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x21 || c > 0x7e)
            return 0;
    }
    return 1;
}

struct cm_hash cm_key_hash(const char *tenant, const char *source, const char *key, size_t len)
{
    /* Length-prefixed fields: no two different triples hash the same input. */
    unsigned char buf[3 * 2 + 64 + 8 + CM_KEY_MAX];
    size_t tl = strnlen(tenant, 64), sl = strnlen(source, 8), n = 0;
    if (len > CM_KEY_MAX)
        len = CM_KEY_MAX;
    buf[n++] = (unsigned char)tl;
    memcpy(buf + n, tenant, tl);
    n += tl;
    buf[n++] = (unsigned char)sl;
    memcpy(buf + n, source, sl);
    n += sl;
    buf[n++] = (unsigned char)len;
    memcpy(buf + n, key, len);
    n += len;
    XXH128_hash_t x = XXH3_128bits(buf, n);
    struct cm_hash h = {.hi = x.high64, .lo = x.low64};
    return h;
}

static const char hexdig[] = "0123456789abcdef";

void cm_hash_hex(struct cm_hash h, char out[CM_HASH_HEX_LEN + 1])
{
    for (int i = 0; i < 16; i++)
        out[i] = hexdig[(h.hi >> (60 - 4 * i)) & 0xf];
    for (int i = 0; i < 16; i++)
        out[16 + i] = hexdig[(h.lo >> (60 - 4 * i)) & 0xf];
    out[CM_HASH_HEX_LEN] = '\0';
}

int cm_hash_parse(const char *hex, size_t len, struct cm_hash *ret)
{
    if (len != CM_HASH_HEX_LEN)
        return -EINVAL;
    uint64_t v[2] = {0, 0};
    for (size_t i = 0; i < len; i++) {
        char c = hex[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return -EINVAL;
        v[i / 16] = (v[i / 16] << 4) | d;
    }
    ret->hi = v[0];
    ret->lo = v[1];
    return 0;
}

int cm_random_id(char out[CM_HASH_HEX_LEN + 1])
{
    uint64_t r[2];
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = getrandom((char *)r + got, sizeof(r) - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)n;
    }
    struct cm_hash h = {.hi = r[0], .lo = r[1]};
    cm_hash_hex(h, out);
    return 0;
}
