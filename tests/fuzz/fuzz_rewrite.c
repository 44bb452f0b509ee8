/* Fuzz target: gateway/rewrite.c, what the gateway reads of an instance's answers (the sandbox
 * is hostile): the CDP discovery rewrite, the SSE event scanner and the legacy SSE endpoint id.
 *
 * Input: byte 0 = flags (bit 0: the client came over TLS), byte 1 = n, then n bytes of the
 * client's Host, then the body. Checks: gw_rewrite_cdp() writes exactly what a plain reference
 * implementation of its rule writes (every "ws://", "wss://", "ws=", "wss=" not inside a word
 * and followed by a non-empty authority and "/" gets the client's scheme and Host; the rest is
 * copied byte for byte) and counts the same replacements; gw_rewrite_sse_event() returns a
 * length within the input ending in a blank line, its data slice inside the event; an endpoint
 * id is a slice of the data. */
#include <ctype.h>
#include <event2/buffer.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/rewrite.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_rewrite: " __VA_ARGS__);                                             \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

/* The reference: position by position, no search. */
static size_t reference(const char *in, size_t n, const char *host, size_t hl, int secure,
                        char *out, int *count)
{
    size_t o = 0, i = 0;
    *count = 0;
    while (i < n) {
        size_t plen = 0;
        int eq = 0;
        if (i + 2 <= n && in[i] == 'w' && in[i + 1] == 's') {
            size_t j = i + 2;
            if (j < n && in[j] == 's')
                j++;
            if (j < n && in[j] == '=') {
                plen = j + 1 - i;
                eq = 1;
            } else if (j + 3 <= n && memcmp(in + j, "://", 3) == 0) {
                plen = j + 3 - i;
            }
        }
        if (!plen) {
            out[o++] = in[i++];
            continue;
        }
        size_t auth = i + plen, k = auth;
        while (k < n && in[k] != '/' && in[k] != '"' && in[k] != '&' && in[k] != ' ')
            k++;
        int word = i > 0 && (isalnum((unsigned char)in[i - 1]) || in[i - 1] == '_');
        if (word || k >= n || in[k] != '/' || k == auth) {
            memcpy(out + o, in + i, plen);
            o += plen;
            i = auth;
            continue;
        }
        const char *scheme = secure ? (eq ? "wss=" : "wss://") : (eq ? "ws=" : "ws://");
        memcpy(out + o, scheme, strlen(scheme));
        o += strlen(scheme);
        memcpy(out + o, host, hl);
        o += hl;
        i = k;
        (*count)++;
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > (1u << 20))
        return 0;
    int secure = data[0] & 1;
    size_t hl = data[1];
    if (size < 2 + hl)
        return 0;
    const char *host = (const char *)data + 2;
    const char *body = host + hl;
    size_t n = size - 2 - hl;

    struct evbuffer *out = evbuffer_new();
    if (!out)
        return 0;
    int count = gw_rewrite_cdp(body, n, host, hl, secure, out);
    /* each replacement adds at most the scheme's 6 bytes and the Host */
    char *want = malloc(n * (hl + 7) + 1);
    if (!want)
        FAIL("out of memory");
    int want_count;
    size_t wl = reference(body, n, host, hl, secure, want, &want_count);
    size_t gl = evbuffer_get_length(out);
    const char *got = (const char *)evbuffer_pullup(out, -1);
    if (count != want_count || gl != wl || (wl && memcmp(got, want, wl) != 0))
        FAIL("cdp rewrite differs: count %d want %d, %zu bytes want %zu", count, want_count, gl,
             wl);
    free(want);
    evbuffer_free(out);

    int is_endpoint;
    const char *d;
    size_t dl;
    size_t ev = gw_rewrite_sse_event(body, n, &is_endpoint, &d, &dl);
    if (ev > n)
        FAIL("sse event of %zu bytes in %zu", ev, n);
    if (ev) {
        if (body[ev - 1] != '\n')
            FAIL("sse event does not end with a line end");
        if (d && (d < body || d + dl > body + ev))
            FAIL("sse data outside its event");
        if (d) {
            const char *id;
            size_t il;
            if (gw_rewrite_endpoint_id(d, dl, &id, &il) && (id < d || id + il > d + dl))
                FAIL("endpoint id outside the data");
        }
    }
    return 0;
}
