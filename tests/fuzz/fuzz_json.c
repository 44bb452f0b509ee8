/* Fuzz target: the control APIs' JSON parser (common/json.c). Beyond "no crash, no leak", it
 * checks a round trip: whatever parses is written back with the escaping writer, parsed again
 * and must give the same tree. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void write_json(struct cm_jbuf *b, const struct cm_json *j)
{
    switch (j->type) {
    case CM_JSON_NULL: cm_jbuf_raw(b, "null", 4); break;
    case CM_JSON_BOOL: j->boolean ? cm_jbuf_raw(b, "true", 4) : cm_jbuf_raw(b, "false", 5); break;
    case CM_JSON_NUMBER: cm_jbuf_printf(b, "%.17g", j->number); break;
    case CM_JSON_STRING: cm_jbuf_str(b, j->str, j->len); break;
    case CM_JSON_ARRAY:
    case CM_JSON_OBJECT:
        cm_jbuf_raw(b, j->type == CM_JSON_ARRAY ? "[" : "{", 1);
        for (size_t i = 0; i < j->len; i++) {
            if (i)
                cm_jbuf_raw(b, ",", 1);
            if (j->type == CM_JSON_OBJECT) {
                cm_jbuf_cstr(b, j->keys[i]);
                cm_jbuf_raw(b, ":", 1);
            }
            write_json(b, j->items[i]);
        }
        cm_jbuf_raw(b, j->type == CM_JSON_ARRAY ? "]" : "}", 1);
        break;
    }
}

static int same(const struct cm_json *a, const struct cm_json *b)
{
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case CM_JSON_NULL: return 1;
    case CM_JSON_BOOL: return a->boolean == b->boolean;
    case CM_JSON_NUMBER: return a->number == b->number || (isnan(a->number) && isnan(b->number));
    case CM_JSON_STRING: return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
    default:
        if (a->len != b->len)
            return 0;
        for (size_t i = 0; i < a->len; i++) {
            /* keys are NUL-terminated: a key with an embedded NUL is cut there both times */
            if (a->type == CM_JSON_OBJECT && strcmp(a->keys[i], b->keys[i]) != 0)
                return 0;
            if (!same(a->items[i], b->items[i]))
                return 0;
        }
        return 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128];
    struct cm_json *j = cm_json_parse((const char *)data, size, err, sizeof(err));
    if (!j) {
        if (!err[0]) /* a refusal always says why */
            abort();
        return 0;
    }
    (void)cm_json_get(j, "id");
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    write_json(&b, j);
    if (!b.failed) {
        struct cm_json *again = cm_json_parse(b.data, b.len, err, sizeof(err));
        if (!again) {
            fprintf(stderr, "round trip refused (%s): %s\n", err, b.data);
            abort();
        }
        if (!same(j, again)) {
            fprintf(stderr, "round trip changed the tree: %s\n", b.data);
            abort();
        }
        cm_json_free(again);
    }
    cm_jbuf_fini(&b);
    cm_json_free(j);
    return 0;
}
