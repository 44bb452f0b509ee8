/* Fuzz target: gw_h1_scan(), our one-pass head parser, against gw_h1_parse_head() (llhttp).
 * Whatever gw_h1_scan() accepts, llhttp must accept too, at the same length, with every field
 * the same: the method, target, status, reason, version, framing, keep-alive, each header's
 * slices and class, the named indices and the Connection options (an empty value may point
 * anywhere in its line: nothing reads it). gw_h1_scan() may defer on anything (llhttp then
 * decides), never disagree.
 *
 * Input: byte 0 selects the side (bit 0: response), "response to HEAD" (bit 1) and the header
 * limit (bits 2-4); the rest is the start of the message, of which gw_h1_scan() may use a
 * prefix. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct gw_h1_header scanned[1000], parsed[1000];

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_h1_scan: " __VA_ARGS__);                                             \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

#define SAME(field)                                                                                \
    do {                                                                                           \
        if (a->field != b->field)                                                                  \
            FAIL("%s differs: scan %lld, llhttp %lld", #field, (long long)a->field,               \
                 (long long)b->field);                                                             \
    } while (0)

static void compare(const struct gw_h1_head *a, const struct gw_h1_head *b, int response)
{
    if (!response) {
        if (a->method != b->method || a->method_len != b->method_len)
            FAIL("method differs");
        if (a->url != b->url || a->url_len != b->url_len)
            FAIL("target differs: scan %.*s, llhttp %.*s", (int)a->url_len, a->url,
                 (int)b->url_len, b->url);
        SAME(method_id);
    } else {
        SAME(status);
        if (a->reason != b->reason || a->reason_len != b->reason_len)
            FAIL("reason differs");
    }
    SAME(http_major);
    SAME(http_minor);
    SAME(keep_alive);
    SAME(upgrade);
    SAME(chunked);
    SAME(has_cl);
    SAME(body_done);
    SAME(content_length);
    SAME(host);
    SAME(cookie);
    SAME(connection);
    SAME(te);
    SAME(expect);
    SAME(content_type);
    SAME(xff);
    SAME(request_id);
    SAME(authorization);
    SAME(n_headers);
    SAME(n_conn_tokens);
    for (uint32_t i = 0; i < a->n_conn_tokens; i++)
        if (a->conn_tokens[i].p != b->conn_tokens[i].p ||
            a->conn_tokens[i].len != b->conn_tokens[i].len)
            FAIL("Connection option %u differs", i);
    for (uint32_t i = 0; i < a->n_headers; i++) {
        const struct gw_h1_header *x = &a->headers[i], *y = &b->headers[i];
        if (x->name != y->name || x->name_len != y->name_len)
            FAIL("header %u name differs", i);
        if ((x->value != y->value && x->value_len) || x->value_len != y->value_len)
            FAIL("header %u (%.*s) value differs: scan \"%.*s\", llhttp \"%.*s\"", i,
                 (int)x->name_len, x->name, (int)x->value_len, x->value, (int)y->value_len,
                 y->value);
        if (x->cls != y->cls)
            FAIL("header %u class differs: scan %u, llhttp %u", i, x->cls, y->cls);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int response = data[0] & 1;
    int head_request = (data[0] >> 1) & 1;
    static const uint32_t limits[8] = {8, 16, 32, 64, 100, 200, 500, 1000};
    uint32_t max_headers = limits[(data[0] >> 2) & 7];
    /* An exact-size copy keeps reads past the end visible to ASan. */
    size_t n = size - 1;
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, n);
    struct gw_h1_head a, b;
    a.headers = scanned;
    a.max_headers = max_headers;
    size_t head_len = 0;
    int rc = gw_h1_scan(&a, buf, n, response, head_request, &head_len);
    if (rc != GW_H1_OK && rc != GW_H1_DEFER)
        FAIL("gw_h1_scan returned %d", rc);
    if (rc == GW_H1_OK) {
        if (head_len < 4 || head_len > n || memcmp(buf + head_len - 4, "\r\n\r\n", 4) != 0)
            FAIL("head of %zu bytes does not end with its blank line", head_len);
        for (size_t i = 0; i + 4 < head_len; i++)
            if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
                FAIL("head runs past the first blank line (at %zu, head %zu)", i, head_len);
        if (a.n_headers > max_headers)
            FAIL("%u headers over the limit %u", a.n_headers, max_headers);
        llhttp_settings_t settings;
        gw_h1_settings_init(&settings, NULL, NULL);
        llhttp_t parser;
        llhttp_init(&parser, response ? HTTP_RESPONSE : HTTP_REQUEST, &settings);
        b.headers = parsed;
        b.max_headers = max_headers;
        int prc = gw_h1_parse_head(&parser, &settings, &b, buf, head_len, head_request);
        if (prc != GW_H1_OK)
            FAIL("scan accepted a %zu-byte head that llhttp refuses (%d): %.*s", head_len, prc,
                 (int)head_len, buf);
        compare(&a, &b, response);
    }
    free(buf);
    return 0;
}
