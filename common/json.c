#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
    const char *p, *end;
    int depth;
    char *err;
    size_t errlen;
};

static struct cm_json *fail(struct parser *ps, const char *what)
{
    if (ps->err && !ps->err[0])
        snprintf(ps->err, ps->errlen, "%s at byte %zu", what, (size_t)0);
    return NULL;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

void cm_json_free(struct cm_json *j)
{
    if (!j)
        return;
    if (j->type == CM_JSON_ARRAY || j->type == CM_JSON_OBJECT) {
        for (size_t i = 0; i < j->len; i++) {
            cm_json_free(j->items[i]);
            if (j->keys)
                free(j->keys[i]);
        }
    }
    free(j->items);
    free(j->keys);
    free(j->str);
    free(j);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_u4(struct parser *ps, unsigned *ret)
{
    if (ps->end - ps->p < 4)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hexval(ps->p[i]);
        if (d < 0)
            return -1;
        v = (v << 4) | (unsigned)d;
    }
    ps->p += 4;
    *ret = v;
    return 0;
}

static char *parse_string(struct parser *ps, size_t *ret_len)
{
    /* ps->p is at the opening quote. The output is never longer than the input. */
    const char *start = ++ps->p;
    size_t cap = 0;
    const char *q = start;
    while (q < ps->end && *q != '"') {
        if (*q == '\\')
            q++;
        q++;
    }
    if (q >= ps->end) {
        fail(ps, "unterminated string");
        return NULL;
    }
    cap = (size_t)(q - start) + 1;
    char *out = malloc(cap + 4);
    if (!out) {
        fail(ps, "out of memory");
        return NULL;
    }
    size_t n = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p++;
        if (c < 0x20)
            goto bad;
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        if (ps->p >= ps->end)
            goto bad;
        c = (unsigned char)*ps->p++;
        switch (c) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (read_u4(ps, &cp) < 0)
                goto bad;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u')
                    goto bad;
                ps->p += 2;
                if (read_u4(ps, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
                    goto bad;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                goto bad;
            }
            /* \uXXXX is 6 input bytes, at most 4 output bytes: stays within cap. */
            if (cp < 0x80) {
                out[n++] = (char)cp;
            } else if (cp < 0x800) {
                out[n++] = (char)(0xc0 | (cp >> 6));
                out[n++] = (char)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                out[n++] = (char)(0xe0 | (cp >> 12));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (cp & 0x3f));
            } else {
                out[n++] = (char)(0xf0 | (cp >> 18));
                out[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default:
            goto bad;
        }
    }
    ps->p++; /* closing quote */
    out[n] = '\0';
    *ret_len = n;
    return out;
bad:
    free(out);
    fail(ps, "invalid string");
    return NULL;
}

static struct cm_json *parse_value(struct parser *ps);

static int push(struct cm_json *j, struct cm_json *item, char *key)
{
    if ((j->len & (j->len - 1)) == 0) { /* grow at powers of two */
        size_t cap = j->len ? j->len * 2 : 4;
        struct cm_json **items = realloc(j->items, cap * sizeof(*items));
        if (!items)
            return -ENOMEM;
        j->items = items;
        if (j->type == CM_JSON_OBJECT) {
            char **keys = realloc(j->keys, cap * sizeof(*keys));
            if (!keys)
                return -ENOMEM;
            j->keys = keys;
        }
    }
    j->items[j->len] = item;
    if (j->type == CM_JSON_OBJECT)
        j->keys[j->len] = key;
    j->len++;
    return 0;
}

static struct cm_json *parse_container(struct parser *ps, enum cm_json_type type)
{
    char close = type == CM_JSON_ARRAY ? ']' : '}';
    if (++ps->depth > CM_JSON_MAX_DEPTH)
        return fail(ps, "nested too deeply");
    struct cm_json *j = calloc(1, sizeof(*j));
    if (!j)
        return fail(ps, "out of memory");
    j->type = type;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return j;
    }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (type == CM_JSON_OBJECT) {
            size_t kl;
            if (ps->p >= ps->end || *ps->p != '"' || !(key = parse_string(ps, &kl)))
                goto bad;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(key);
                goto bad;
            }
            ps->p++;
        }
        struct cm_json *item = parse_value(ps);
        if (!item || push(j, item, key) < 0) {
            cm_json_free(item);
            free(key);
            goto bad;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            break;
        }
        goto bad;
    }
    ps->depth--;
    return j;
bad:
    cm_json_free(j);
    return fail(ps, type == CM_JSON_ARRAY ? "invalid array" : "invalid object");
}

static struct cm_json *parse_value(struct parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, "unexpected end");
    char c = *ps->p;
    if (c == '{')
        return parse_container(ps, CM_JSON_OBJECT);
    if (c == '[')
        return parse_container(ps, CM_JSON_ARRAY);
    struct cm_json *j = calloc(1, sizeof(*j));
    if (!j)
        return fail(ps, "out of memory");
    if (c == '"') {
        j->type = CM_JSON_STRING;
        if (!(j->str = parse_string(ps, &j->len))) {
            free(j);
            return NULL;
        }
        return j;
    }
    static const struct {
        const char *word;
        enum cm_json_type type;
        int b;
    } words[] = {{"null", CM_JSON_NULL, 0}, {"true", CM_JSON_BOOL, 1}, {"false", CM_JSON_BOOL, 0}};
    for (size_t i = 0; i < CM_ARRAY_SIZE(words); i++) {
        size_t wl = strlen(words[i].word);
        if ((size_t)(ps->end - ps->p) >= wl && memcmp(ps->p, words[i].word, wl) == 0) {
            ps->p += wl;
            j->type = words[i].type;
            j->boolean = words[i].b;
            return j;
        }
    }
    /* number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
    const char *s = ps->p;
    const char *q = s;
    if (q < ps->end && *q == '-')
        q++;
    if (q < ps->end && *q == '0')
        q++;
    else if (q < ps->end && *q >= '1' && *q <= '9')
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    else
        goto bad;
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9')
            goto bad;
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= ps->end || *q < '0' || *q > '9')
            goto bad;
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    char tmp[64];
    size_t n = (size_t)(q - s);
    if (n >= sizeof(tmp))
        goto bad;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    j->type = CM_JSON_NUMBER;
    j->number = strtod(tmp, NULL);
    if (!isfinite(j->number))
        goto bad;
    ps->p = q;
    return j;
bad:
    free(j);
    return fail(ps, "invalid value");
}

struct cm_json *cm_json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    struct parser ps = {.p = text, .end = text + len, .err = err, .errlen = errlen};
    if (err && errlen)
        err[0] = '\0';
    struct cm_json *j = parse_value(&ps);
    if (!j) {
        if (err && errlen)
            snprintf(err, errlen, "invalid JSON near byte %zu", (size_t)(ps.p - text));
        return NULL;
    }
    skip_ws(&ps);
    if (ps.p != ps.end) {
        cm_json_free(j);
        if (err && errlen)
            snprintf(err, errlen, "trailing data at byte %zu", (size_t)(ps.p - text));
        return NULL;
    }
    return j;
}

const struct cm_json *cm_json_get(const struct cm_json *obj, const char *key)
{
    if (!obj || obj->type != CM_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return obj->items[i];
    return NULL;
}

void cm_jbuf_init(struct cm_jbuf *b)
{
    memset(b, 0, sizeof(*b));
}

void cm_jbuf_fini(struct cm_jbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

static int reserve(struct cm_jbuf *b, size_t n)
{
    if (b->failed)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
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

void cm_jbuf_raw(struct cm_jbuf *b, const char *s, size_t n)
{
    if (reserve(b, n) < 0)
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void cm_jbuf_printf(struct cm_jbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void cm_jbuf_str(struct cm_jbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (reserve(b, n * 6 + 2) < 0)
        return;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 0xf];
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

void cm_jbuf_cstr(struct cm_jbuf *b, const char *s)
{
    cm_jbuf_str(b, s ? s : "", s ? strlen(s) : 0);
}
