/* Small JSON for the control APIs: a strict parser into a tree (RFC 8259, depth and size
 * bounded, \u escapes decoded to UTF-8) and an escaping writer into a growable buffer. */
#ifndef CM_JSON_H
#define CM_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "compat.h"

#define CM_JSON_MAX_DEPTH 32

enum cm_json_type {
    CM_JSON_NULL,
    CM_JSON_BOOL,
    CM_JSON_NUMBER,
    CM_JSON_STRING,
    CM_JSON_ARRAY,
    CM_JSON_OBJECT,
};

struct cm_json {
    enum cm_json_type type;
    int boolean;
    double number;
    char *str;   /* STRING: NUL-terminated (may contain NULs: see len) */
    size_t len;  /* STRING: bytes; ARRAY/OBJECT: items */
    char **keys; /* OBJECT: len keys */
    struct cm_json **items;
};

/* Parses exactly one JSON value (whitespace around it allowed). Returns a new tree (free with
 * cm_json_free()) or NULL with a short reason in <err> (at most <errlen> bytes). */
struct cm_json *cm_json_parse(const char *text, size_t len, char *err, size_t errlen);
void cm_json_free(struct cm_json *j);
/* Object member lookup; NULL when <obj> is not an object or lacks <key>. */
const struct cm_json *cm_json_get(const struct cm_json *obj, const char *key);

/* Growable output buffer; on allocation failure <failed> is set and later writes are dropped. */
struct cm_jbuf {
    char *data;
    size_t len, cap;
    int failed;
};

void cm_jbuf_init(struct cm_jbuf *b);
void cm_jbuf_fini(struct cm_jbuf *b);
void cm_jbuf_raw(struct cm_jbuf *b, const char *s, size_t n);
void cm_jbuf_printf(struct cm_jbuf *b, const char *fmt, ...) CM_PRINTF(2, 3);
/* Writes <s> (<n> bytes) as a quoted, escaped JSON string. */
void cm_jbuf_str(struct cm_jbuf *b, const char *s, size_t n);
void cm_jbuf_cstr(struct cm_jbuf *b, const char *s);

#endif
