#include "gateway/api_json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/compat.h"
#include "common/config.h"
#include "common/time.h"
#include "gateway/config.h"

/* Durations are whole seconds; without a template the bound is a year (the config's own cap). */
#define YEAR_S (365ull * 86400)

static int fail(struct gw_api_error *err, enum gw_err e, const char *fmt, ...) CM_PRINTF(3, 4);
static int utf8_valid(const unsigned char *s, size_t n);

static int fail(struct gw_api_error *err, enum gw_err e, const char *fmt, ...)
{
    err->err = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -EINVAL;
}

int gw_api_utf8_valid(const char *s, size_t n)
{
    return utf8_valid((const unsigned char *)s, n);
}

static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t need;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if (n - i - 1 < need)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* Every string and key of <j> is UTF-8 (JSON text must be). */
static int json_utf8(const struct cm_json *j)
{
    if (j->type == CM_JSON_STRING)
        return utf8_valid((const unsigned char *)j->str, j->len);
    if (j->type != CM_JSON_ARRAY && j->type != CM_JSON_OBJECT)
        return 1;
    for (size_t i = 0; i < j->len; i++) {
        if (j->keys && !utf8_valid((const unsigned char *)j->keys[i], strlen(j->keys[i])))
            return 0;
        if (!json_utf8(j->items[i]))
            return 0;
    }
    return 1;
}

void gw_api_json_write(struct cm_jbuf *b, const struct cm_json *j)
{
    switch (j->type) {
    case CM_JSON_NULL:
        cm_jbuf_raw(b, "null", 4);
        break;
    case CM_JSON_BOOL:
        j->boolean ? cm_jbuf_raw(b, "true", 4) : cm_jbuf_raw(b, "false", 5);
        break;
    case CM_JSON_NUMBER:
        if (j->number == floor(j->number) && fabs(j->number) < 1e15)
            cm_jbuf_printf(b, "%.0f", j->number);
        else
            cm_jbuf_printf(b, "%.17g", j->number);
        break;
    case CM_JSON_STRING:
        cm_jbuf_str(b, j->str, j->len);
        break;
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
            gw_api_json_write(b, j->items[i]);
        }
        cm_jbuf_raw(b, j->type == CM_JSON_ARRAY ? "]" : "}", 1);
        break;
    }
}

void gw_api_error_json(struct cm_jbuf *b, enum gw_err e, const char *message)
{
    const struct gw_err_info *info = gw_err_info(e);
    cm_jbuf_raw(b, "{\"error\":{\"code\":", 17);
    cm_jbuf_cstr(b, info->code);
    cm_jbuf_raw(b, ",\"message\":", 11);
    cm_jbuf_cstr(b, message ? message : info->message);
    cm_jbuf_raw(b, "}}", 2);
}

/* Parses <body> as a JSON object (empty body = {}), rejecting duplicate and unknown members. */
static struct cm_json *parse_object(const char *body, size_t len, const char *const *allowed,
                                    struct gw_api_error *err)
{
    char why[96];
    struct cm_json *j =
        len ? cm_json_parse(body, len, why, sizeof(why)) : cm_json_parse("{}", 2, why, sizeof(why));
    if (!j) {
        fail(err, GW_ERR_BAD_REQUEST, "request body is not valid JSON: %s", why);
        return NULL;
    }
    if (j->type != CM_JSON_OBJECT) {
        fail(err, GW_ERR_BAD_REQUEST, "request body must be a JSON object");
        goto bad;
    }
    for (size_t i = 0; i < j->len; i++) {
        int known = 0;
        for (const char *const *a = allowed; *a; a++)
            known |= strcmp(j->keys[i], *a) == 0;
        if (!known || strlen(j->keys[i]) > 64 ||
            !utf8_valid((const unsigned char *)j->keys[i], strlen(j->keys[i]))) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "unknown field \"%.64s\"",
                 utf8_valid((const unsigned char *)j->keys[i], strlen(j->keys[i])) ? j->keys[i]
                                                                                   : "?");
            goto bad;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(j->keys[k], j->keys[i]) == 0) {
                fail(err, GW_ERR_INVALID_ARGUMENT, "duplicate field \"%s\"", j->keys[i]);
                goto bad;
            }
    }
    return j;
bad:
    cm_json_free(j);
    return NULL;
}

/* A duration field in whole seconds, 1..max_usec. Returns 1 set, 0 absent/null, -EINVAL. */
static int get_seconds(const struct cm_json *obj, const char *name, cm_usec_t max_usec,
                       uint64_t *ret_ms, struct gw_api_error *err)
{
    const struct cm_json *v = cm_json_get(obj, name);
    if (!v || v->type == CM_JSON_NULL)
        return 0;
    uint64_t max_s = max_usec / CM_USEC_PER_SEC;
    if (v->type != CM_JSON_NUMBER)
        return fail(err, GW_ERR_INVALID_ARGUMENT, "%s must be a number of seconds", name);
    if (v->number != floor(v->number) || v->number < 1 || v->number > (double)YEAR_S)
        return fail(err, GW_ERR_INVALID_ARGUMENT, "%s must be a whole number of seconds >= 1",
                    name);
    uint64_t s = (uint64_t)v->number;
    if (s > max_s)
        return fail(err, GW_ERR_INVALID_ARGUMENT, "%s must not exceed %llu seconds", name,
                    (unsigned long long)max_s);
    *ret_ms = s * 1000;
    return 1;
}

static const struct cm_template *default_template(const struct gw_config *gc, const char *tenant)
{
    for (size_t i = 0; i < gc->n_routes; i++)
        if (gc->routes[i].tenant && strcmp(gc->routes[i].tenant, tenant) == 0 && gc->routes[i].tpl)
            return gc->routes[i].tpl;
    return gc->common->n_templates ? &gc->common->templates[0] : NULL;
}

int gw_api_parse_create(const char *body, size_t len, const struct gw_config *gc,
                        const char *tenant, const struct gw_api_limits *lim,
                        struct gw_api_create *ret, struct gw_api_error *err)
{
    static const char *const allowed[] = {"id",       "template", "ttl", "idle_timeout",
                                          "metadata", "egress",   NULL};
    struct gw_api_create c = {0};
    struct cm_json *j = parse_object(body, len, allowed, err);
    if (!j)
        return -EINVAL;
    int rc = -EINVAL;

    const struct cm_json *id = cm_json_get(j, "id");
    if (id && id->type != CM_JSON_NULL) {
        if (id->type != CM_JSON_STRING) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "id must be a string");
            goto out;
        }
        if (!cm_key_valid(id->str, id->len)) {
            fail(err, GW_ERR_INVALID_SESSION_KEY,
                 "id must be 1-%d visible ASCII characters (0x21-0x7E)", CM_KEY_MAX);
            goto out;
        }
        memcpy(c.id, id->str, id->len);
        c.id[id->len] = '\0';
        c.id_len = id->len;
    } else {
        char rid[CM_HASH_HEX_LEN + 1];
        int r = cm_random_id(rid);
        if (r < 0) {
            rc = r;
            goto out;
        }
        memcpy(c.id, rid, sizeof(rid));
        c.id_len = CM_HASH_HEX_LEN;
    }

    const struct cm_json *tn = cm_json_get(j, "template");
    if (tn && tn->type != CM_JSON_NULL) {
        if (tn->type != CM_JSON_STRING) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "template must be a string");
            goto out;
        }
        c.tpl = strlen(tn->str) == tn->len ? cm_config_template(gc->common, tn->str) : NULL;
        if (!c.tpl) {
            fail(err, GW_ERR_UNKNOWN_TEMPLATE, "unknown template \"%.64s\"",
                 utf8_valid((const unsigned char *)tn->str, tn->len) && strlen(tn->str) == tn->len
                     ? tn->str
                     : "?");
            goto out;
        }
    } else {
        c.tpl = default_template(gc, tenant);
        if (!c.tpl) {
            fail(err, GW_ERR_UNKNOWN_TEMPLATE, "no template is configured");
            goto out;
        }
    }

    c.ttl_ms = c.tpl->ttl / CM_USEC_PER_MSEC;
    c.idle_ms = c.tpl->idle_timeout / CM_USEC_PER_MSEC;
    if (get_seconds(j, "ttl", c.tpl->max_ttl, &c.ttl_ms, err) < 0 ||
        get_seconds(j, "idle_timeout", c.tpl->max_idle_timeout, &c.idle_ms, err) < 0)
        goto out;

    const struct cm_json *meta = cm_json_get(j, "metadata");
    if (meta && meta->type != CM_JSON_NULL) {
        if (meta->type != CM_JSON_OBJECT) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "metadata must be a JSON object");
            goto out;
        }
        if (!json_utf8(meta)) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "metadata strings must be UTF-8");
            goto out;
        }
        struct cm_jbuf mb;
        cm_jbuf_init(&mb);
        gw_api_json_write(&mb, meta);
        if (mb.failed) {
            cm_jbuf_fini(&mb);
            rc = -ENOMEM;
            goto out;
        }
        if (mb.len > lim->max_metadata) {
            cm_jbuf_fini(&mb);
            fail(err, GW_ERR_INVALID_ARGUMENT, "metadata exceeds %llu bytes",
                 (unsigned long long)lim->max_metadata);
            goto out;
        }
        c.meta = mb.data; /* ownership moves to <c> */
    }
    const struct cm_json *eg = cm_json_get(j, "egress");
    if (eg && eg->type != CM_JSON_NULL) {
        char why[200];
        int r = cm_egress_json_check(eg, GW_API_EGRESS_MAX, &c.egress, why, sizeof(why));
        if (r == -EINVAL) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "%s", why);
            goto out;
        }
        if (r < 0) {
            rc = r;
            goto out;
        }
    }
    *ret = c;
    c.meta = c.egress = NULL;
    rc = 0;
out:
    free(c.meta);
    free(c.egress);
    cm_json_free(j);
    return rc;
}

void gw_api_create_fini(struct gw_api_create *c)
{
    if (!c)
        return;
    free(c->meta);
    free(c->egress);
    c->meta = c->egress = NULL;
}

int gw_api_parse_update(const char *body, size_t len, const struct cm_template *tpl,
                        struct gw_api_update *ret, struct gw_api_error *err)
{
    static const char *const allowed[] = {"ttl", "idle_timeout", "egress", NULL};
    struct cm_json *j = parse_object(body, len, allowed, err);
    if (!j)
        return -EINVAL;
    struct gw_api_update u = {0};
    cm_usec_t year = YEAR_S * CM_USEC_PER_SEC;
    int a = get_seconds(j, "ttl", tpl ? tpl->max_ttl : year, &u.ttl_ms, err);
    int b =
        a < 0 ? 0
              : get_seconds(j, "idle_timeout", tpl ? tpl->max_idle_timeout : year, &u.idle_ms, err);
    const struct cm_json *eg = cm_json_get(j, "egress");
    if (a >= 0 && b >= 0 && eg) {
        u.has_egress = 1;
        char why[200];
        int r = eg->type == CM_JSON_NULL
                    ? ((u.egress = strdup("")) ? 0 : -ENOMEM)
                    : cm_egress_json_check(eg, GW_API_EGRESS_MAX, &u.egress, why, sizeof(why));
        if (r == -EINVAL) {
            cm_json_free(j);
            return fail(err, GW_ERR_INVALID_ARGUMENT, "%s", why);
        }
        if (r < 0) {
            cm_json_free(j);
            return r;
        }
    }
    cm_json_free(j);
    if (a < 0 || b < 0)
        return -EINVAL;
    if (!a && !b && !u.has_egress)
        return fail(err, GW_ERR_INVALID_ARGUMENT,
                    "nothing to update: give ttl, idle_timeout or egress");
    u.has_ttl = a, u.has_idle = b;
    *ret = u;
    return 0;
}

void gw_api_update_fini(struct gw_api_update *u)
{
    if (!u)
        return;
    free(u->egress);
    u->egress = NULL;
}

static int parse_u64(const char *s, size_t n, uint64_t max, uint64_t *ret)
{
    if (n == 0 || n > 20)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (max - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *ret = v;
    return 0;
}

int gw_api_parse_list_query(const char *query, const struct gw_api_limits *lim, uint32_t *ret_limit,
                            uint64_t *ret_cursor, struct gw_api_error *err)
{
    uint64_t limit = lim->list_default, cursor = 0;
    const char *p = query ? query : "";
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        size_t kn = eq ? (size_t)(eq - p) : n;
        char key[16], val[32];
        size_t kl, vl = 0;
        int is_limit = 0, is_cursor = 0;
        if (gw_api_pct_decode(p, kn, key, sizeof(key) - 1, &kl) == 0) {
            is_limit = strcmp(key, "limit") == 0;
            is_cursor = strcmp(key, "cursor") == 0;
        }
        if (is_limit || is_cursor) {
            const char *v = eq ? eq + 1 : p + n;
            size_t vn = (size_t)(p + n - v);
            if (gw_api_pct_decode(v, vn, val, sizeof(val) - 1, &vl) < 0)
                return fail(err, GW_ERR_INVALID_ARGUMENT, "%s: malformed value", key);
            if (is_limit &&
                (parse_u64(val, vl, UINT32_MAX, &limit) < 0 || limit < 1 || limit > lim->list_max))
                return fail(err, GW_ERR_INVALID_ARGUMENT, "limit must be an integer 1..%u",
                            lim->list_max);
            if (is_cursor && vl && parse_u64(val, vl, (uint64_t)1 << 53, &cursor) < 0)
                return fail(err, GW_ERR_INVALID_ARGUMENT, "cursor is not valid");
        }
        p += n;
        if (*p == '&')
            p++;
    }
    *ret_limit = (uint32_t)limit;
    *ret_cursor = cursor;
    return 0;
}

static uint64_t num(const char *s, size_t n)
{
    uint64_t v = 0;
    return parse_u64(s, n, UINT64_MAX, &v) == 0 ? v : 0;
}

int gw_api_session_parse(const char *const *fv, const size_t *lens, size_t n,
                         struct gw_session_rec *ret)
{
    struct gw_session_rec r = {0};
    static const struct {
        const char *name;
        size_t sp, lp; /* offsets of the string and length members */
    } strs[] = {
        {"key", offsetof(struct gw_session_rec, key), offsetof(struct gw_session_rec, key_len)},
        {"tenant", offsetof(struct gw_session_rec, tenant),
         offsetof(struct gw_session_rec, tenant_len)},
        {"template", offsetof(struct gw_session_rec, tpl),
         offsetof(struct gw_session_rec, tpl_len)},
        {"instance", offsetof(struct gw_session_rec, instance),
         offsetof(struct gw_session_rec, instance_len)},
        {"state", offsetof(struct gw_session_rec, state),
         offsetof(struct gw_session_rec, state_len)},
        {"meta", offsetof(struct gw_session_rec, meta), offsetof(struct gw_session_rec, meta_len)},
        {"host", offsetof(struct gw_session_rec, host), offsetof(struct gw_session_rec, host_len)},
        {"addr", offsetof(struct gw_session_rec, addr), offsetof(struct gw_session_rec, addr_len)},
        {"egress", offsetof(struct gw_session_rec, egress),
         offsetof(struct gw_session_rec, egress_len)},
    };
    for (size_t i = 0; i + 1 < n; i += 2) {
        const char *f = fv[i], *v = fv[i + 1];
        size_t fl = lens[i], vl = lens[i + 1];
        for (size_t k = 0; k < CM_ARRAY_SIZE(strs); k++)
            if (fl == strlen(strs[k].name) && memcmp(f, strs[k].name, fl) == 0) {
                *(const char **)((char *)&r + strs[k].sp) = v;
                *(size_t *)((char *)&r + strs[k].lp) = vl;
            }
#define NUMF(name, field)                                                                          \
    if (fl == sizeof(name) - 1 && memcmp(f, name, fl) == 0)                                        \
        r.field = num(v, vl);
        NUMF("created", created)
        NUMF("ttl", ttl)
        NUMF("idle_timeout", idle)
        NUMF("last_active", last_active)
        NUMF("paused", paused)
        NUMF("paused_ms", paused_ms)
#undef NUMF
    }
    if (!r.tenant || !r.key)
        return -ENOENT;
    *ret = r;
    return 0;
}

static void write_seconds(struct cm_jbuf *b, uint64_t ms)
{
    if (ms % 1000 == 0)
        cm_jbuf_printf(b, "%llu", (unsigned long long)(ms / 1000));
    else
        cm_jbuf_printf(b, "%llu.%03llu", (unsigned long long)(ms / 1000),
                       (unsigned long long)(ms % 1000));
}

void gw_api_session_write(struct cm_jbuf *b, const struct gw_session_rec *r)
{
    cm_jbuf_raw(b, "{\"id\":", 6);
    cm_jbuf_str(b, r->key, r->key_len);
    cm_jbuf_raw(b, ",\"tenant\":", 10);
    cm_jbuf_str(b, r->tenant, r->tenant_len);
    cm_jbuf_raw(b, ",\"template\":", 12);
    if (r->tpl)
        cm_jbuf_str(b, r->tpl, r->tpl_len);
    else
        cm_jbuf_raw(b, "null", 4);
    cm_jbuf_raw(b, ",\"instance\":", 12);
    if (r->instance && r->instance_len)
        cm_jbuf_str(b, r->instance, r->instance_len);
    else
        cm_jbuf_raw(b, "null", 4);
    cm_jbuf_raw(b, ",\"state\":", 9);
    if (r->state)
        cm_jbuf_str(b, r->state, r->state_len);
    else
        cm_jbuf_raw(b, "null", 4);
    uint64_t a = r->created + r->ttl, c = r->last_active + r->idle;
    cm_jbuf_printf(b, ",\"created_ms\":%llu,\"ttl_s\":", (unsigned long long)r->created);
    write_seconds(b, r->ttl);
    cm_jbuf_raw(b, ",\"idle_timeout_s\":", 18);
    write_seconds(b, r->idle);
    cm_jbuf_printf(b, ",\"last_active_ms\":%llu,\"expires_at_ms\":%llu,\"paused\":%s",
                   (unsigned long long)r->last_active, (unsigned long long)CM_MIN(a, c),
                   r->paused ? "true" : "false");
    if (r->paused)
        cm_jbuf_printf(b, ",\"paused_since_ms\":%llu", (unsigned long long)r->paused);
    else
        cm_jbuf_raw(b, ",\"paused_since_ms\":null", 23);
    cm_jbuf_printf(b, ",\"paused_ms\":%llu,\"metadata\":", (unsigned long long)r->paused_ms);
    struct cm_json *m =
        r->meta && r->meta_len ? cm_json_parse(r->meta, r->meta_len, NULL, 0) : NULL;
    if (m && json_utf8(m))
        gw_api_json_write(b, m);
    else
        cm_jbuf_raw(b, "null", 4);
    cm_json_free(m);
    cm_jbuf_raw(b, ",\"egress\":", 10);
    struct cm_json *eg =
        r->egress && r->egress_len ? cm_json_parse(r->egress, r->egress_len, NULL, 0) : NULL;
    if (eg && eg->type == CM_JSON_OBJECT && json_utf8(eg))
        gw_api_json_write(b, eg);
    else
        cm_jbuf_raw(b, "{\"allow\":[],\"deny\":[]}", 22);
    cm_json_free(eg);
    cm_jbuf_raw(b, "}", 1);
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

int gw_api_pct_decode(const char *in, size_t n, char *out, size_t cap, size_t *ret_len)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '%') {
            int hi, lo;
            if (n - i < 3)
                return -EINVAL;
            if ((hi = hexval(in[i + 1])) < 0 || (lo = hexval(in[i + 2])) < 0)
                return -EINVAL;
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if (o >= cap)
            return -ENOSPC;
        out[o++] = c;
    }
    out[o] = '\0';
    *ret_len = o;
    return 0;
}

/* ------------------------------------------------------------------ exec */

static int exec_str(const struct cm_json *v, size_t max, int absolute)
{
    return v && v->type == CM_JSON_STRING && v->len > 0 && v->len <= max &&
           !memchr(v->str, '\0', v->len) && (!absolute || v->str[0] == '/');
}

static int env_name(const char *k)
{
    if (!*k || (*k >= '0' && *k <= '9') || strlen(k) > 256)
        return 0;
    for (; *k; k++)
        if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') ||
              *k == '_'))
            return 0;
    return 1;
}

int gw_api_parse_exec(const char *body, size_t len, const struct gw_api_limits *lim,
                      struct gw_api_exec *ret, struct gw_api_error *err)
{
    char perr[64];
    memset(ret, 0, sizeof(*ret));
    struct cm_json *j = cm_json_parse(body, len, perr, sizeof(perr));
    if (!j || j->type != CM_JSON_OBJECT) {
        cm_json_free(j);
        return fail(err, GW_ERR_BAD_REQUEST, "the body must be a JSON object%s%s", j ? "" : ": ",
                    j ? "" : perr);
    }
    ret->j = j;
    static const char *const known[] = {"cmd", "env", "cwd", "stdin", "timeout"};
    for (size_t i = 0; i < j->len; i++) {
        int ok = 0;
        for (size_t k = 0; k < CM_ARRAY_SIZE(known) && !ok; k++)
            ok = strcmp(j->keys[i], known[k]) == 0;
        if (!ok) {
            fail(err, GW_ERR_INVALID_ARGUMENT,
                 "unknown field (known: cmd, env, cwd, stdin, "
                 "timeout)");
            goto bad;
        }
    }
    ret->cmd = cm_json_get(j, "cmd");
    if (!ret->cmd || ret->cmd->type != CM_JSON_ARRAY || ret->cmd->len < 1 || ret->cmd->len > 256) {
        fail(err, GW_ERR_INVALID_ARGUMENT, "cmd: an array of 1 to 256 strings (the argv)");
        goto bad;
    }
    for (size_t i = 0; i < ret->cmd->len; i++)
        if (!exec_str(ret->cmd->items[i], 4096, 0)) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "cmd[%zu]: a string of 1 to 4096 bytes without NUL",
                 i);
            goto bad;
        }
    ret->env = cm_json_get(j, "env");
    if (ret->env) {
        if (ret->env->type != CM_JSON_OBJECT || ret->env->len > 256) {
            fail(err, GW_ERR_INVALID_ARGUMENT, "env: an object of up to 256 NAME: \"value\"");
            goto bad;
        }
        for (size_t i = 0; i < ret->env->len; i++) {
            const struct cm_json *v = ret->env->items[i];
            if (!env_name(ret->env->keys[i]) || v->type != CM_JSON_STRING ||
                memchr(v->str, '\0', v->len) || v->len > 32768) {
                fail(err, GW_ERR_INVALID_ARGUMENT,
                     "env: names of [A-Za-z_][A-Za-z0-9_]*, values strings of up to 32 KiB "
                     "without NUL");
                goto bad;
            }
        }
    }
    ret->cwd = cm_json_get(j, "cwd");
    if (ret->cwd && !exec_str(ret->cwd, 4096, 1)) {
        fail(err, GW_ERR_INVALID_ARGUMENT, "cwd: an absolute path");
        goto bad;
    }
    ret->stdin_ = cm_json_get(j, "stdin");
    if (ret->stdin_ && ret->stdin_->type != CM_JSON_STRING) {
        fail(err, GW_ERR_INVALID_ARGUMENT, "stdin: a string");
        goto bad;
    }
    const struct cm_json *t = cm_json_get(j, "timeout");
    uint64_t max_s = lim->exec_max_timeout / CM_USEC_PER_SEC;
    if (t && (t->type != CM_JSON_NUMBER || t->number < 1 || t->number > (double)max_s)) {
        fail(err, GW_ERR_INVALID_ARGUMENT, "timeout: seconds, 1 to %llu",
             (unsigned long long)max_s);
        goto bad;
    }
    ret->timeout_ms = t ? (uint64_t)(t->number * 1000) : lim->exec_timeout / CM_USEC_PER_MSEC;
    return 0;
bad:
    cm_json_free(j);
    memset(ret, 0, sizeof(*ret));
    return -EINVAL;
}
