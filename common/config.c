#include "config.h"

#include "egress.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compat.h"
#include "secret.h"

int cm_conf_fail(struct cm_conf_ctx *ctx, const struct cm_ynode *at, const char *path,
                 const char *key, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(ctx->err, ctx->errlen, "%s:%u:%u: %s%s%s: %s", ctx->file, at ? at->line : 0,
             at ? at->col : 0, path ? path : "", (path && *path && key) ? "." : "",
             key ? key : "", msg);
    return -EINVAL;
}

static const struct cm_ynode *get_scalar(struct cm_conf_ctx *ctx, const struct cm_ynode *map,
                                         const char *path, const char *key, int *rc)
{
    *rc = 0;
    const struct cm_ynode *v = cm_ynode_get(map, key);
    if (!v)
        return NULL;
    if (v->type != CM_YNODE_SCALAR) {
        *rc = cm_conf_fail(ctx, v, path, key, "must be a scalar");
        return NULL;
    }
    if (!v->quoted && (strcmp(v->scalar, "~") == 0 || strcmp(v->scalar, "null") == 0 ||
                       v->scalar[0] == '\0'))
        return NULL; /* explicit null: default */
    return v;
}

int cm_conf_keys(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *const *allowed)
{
    if (!map)
        return 0;
    if (map->type != CM_YNODE_MAP)
        return cm_conf_fail(ctx, map, path, NULL, "must be a mapping");
    for (size_t i = 0; i < map->n; i++) {
        const struct cm_ynode *k = map->items[2 * i];
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (k->type == CM_YNODE_SCALAR && strcmp(k->scalar, *a) == 0)
                ok = 1;
        if (!ok)
            return cm_conf_fail(ctx, k, path, k->type == CM_YNODE_SCALAR ? k->scalar : "?",
                                "unknown key");
    }
    return 0;
}

int cm_conf_str(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                const char *key, const char *def, char **ret)
{
    int rc;
    const struct cm_ynode *v = get_scalar(ctx, map, path, key, &rc);
    if (rc)
        return rc;
    const char *s = v ? v->scalar : def;
    char *copy = s ? strdup(s) : NULL;
    if (s && !copy)
        return cm_conf_fail(ctx, v, path, key, "out of memory");
    *ret = copy;
    return 0;
}

static int parse_u64(const char *s, uint64_t *ret, const char **end)
{
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    uint64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
        s++;
    }
    *ret = v;
    *end = s;
    return 0;
}

int cm_parse_duration(const char *s, cm_usec_t *ret)
{
    uint64_t v;
    const char *end;
    if (parse_u64(s, &v, &end) < 0)
        return -EINVAL;
    uint64_t mul;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mul = CM_USEC_PER_SEC;
    else if (strcmp(end, "ms") == 0)
        mul = CM_USEC_PER_MSEC;
    else if (strcmp(end, "us") == 0)
        mul = 1;
    else if (strcmp(end, "m") == 0)
        mul = 60 * CM_USEC_PER_SEC;
    else if (strcmp(end, "h") == 0)
        mul = 3600 * CM_USEC_PER_SEC;
    else if (strcmp(end, "d") == 0)
        mul = 86400 * CM_USEC_PER_SEC;
    else
        return -EINVAL;
    if (v > UINT64_MAX / mul)
        return -EINVAL;
    *ret = v * mul;
    return 0;
}

int cm_parse_size(const char *s, uint64_t *ret)
{
    static const struct {
        const char *suffix;
        uint64_t mul;
    } units[] = {{"", 1},           {"B", 1},
                 {"KiB", 1u << 10}, {"MiB", 1u << 20},
                 {"GiB", 1u << 30}, {"TiB", 1ull << 40},
                 {"KB", 1000}, {"TB", 1000000000000ull},
                 {"MB", 1000000},   {"GB", 1000000000},
                 {"k", 1u << 10},   {"K", 1u << 10},
                 {"M", 1u << 20},   {"G", 1u << 30}};
    uint64_t v;
    const char *end;
    if (parse_u64(s, &v, &end) < 0)
        return -EINVAL;
    for (size_t i = 0; i < CM_ARRAY_SIZE(units); i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            if (v > UINT64_MAX / units[i].mul)
                return -EINVAL;
            *ret = v * units[i].mul;
            return 0;
        }
    }
    return -EINVAL;
}

int cm_conf_u64(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                const char *key, uint64_t def, uint64_t min, uint64_t max, uint64_t *ret)
{
    int rc;
    const struct cm_ynode *v = get_scalar(ctx, map, path, key, &rc);
    if (rc)
        return rc;
    uint64_t x = def;
    if (v) {
        const char *end;
        if (parse_u64(v->scalar, &x, &end) < 0 || *end)
            return cm_conf_fail(ctx, v, path, key, "must be a whole number");
        if (x < min || x > max)
            return cm_conf_fail(ctx, v, path, key, "must be %" PRIu64 "..%" PRIu64, min, max);
    }
    *ret = x;
    return 0;
}

int cm_conf_bool(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *key, int def, int *ret)
{
    int rc;
    const struct cm_ynode *v = get_scalar(ctx, map, path, key, &rc);
    if (rc)
        return rc;
    int x = def;
    if (v) {
        if (strcmp(v->scalar, "true") == 0 || strcmp(v->scalar, "yes") == 0 ||
            strcmp(v->scalar, "on") == 0)
            x = 1;
        else if (strcmp(v->scalar, "false") == 0 || strcmp(v->scalar, "no") == 0 ||
                 strcmp(v->scalar, "off") == 0)
            x = 0;
        else
            return cm_conf_fail(ctx, v, path, key, "must be true or false");
    }
    *ret = x;
    return 0;
}

int cm_conf_duration(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                     const char *key, cm_usec_t def, cm_usec_t min, cm_usec_t max,
                     cm_usec_t *ret)
{
    int rc;
    const struct cm_ynode *v = get_scalar(ctx, map, path, key, &rc);
    if (rc)
        return rc;
    cm_usec_t x = def;
    if (v) {
        if (cm_parse_duration(v->scalar, &x) < 0)
            return cm_conf_fail(ctx, v, path, key,
                                "must be a duration such as 250ms, 10s, 5m, 2h");
        if (x < min || x > max)
            return cm_conf_fail(ctx, v, path, key, "must be %" PRIu64 "ms..%" PRIu64 "ms",
                                min / 1000, max / 1000);
    }
    *ret = x;
    return 0;
}

int cm_conf_size(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *key, uint64_t def, uint64_t min, uint64_t max, uint64_t *ret)
{
    int rc;
    const struct cm_ynode *v = get_scalar(ctx, map, path, key, &rc);
    if (rc)
        return rc;
    uint64_t x = def;
    if (v) {
        if (cm_parse_size(v->scalar, &x) < 0)
            return cm_conf_fail(ctx, v, path, key, "must be a size such as 4096, 64KiB, 16MiB");
        if (x < min || x > max)
            return cm_conf_fail(ctx, v, path, key, "must be %" PRIu64 "..%" PRIu64 " bytes",
                                min, max);
    }
    *ret = x;
    return 0;
}

void cm_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

size_t cm_strv_len(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

int cm_conf_strv(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *key, const char *const *def, char ***ret)
{
    const struct cm_ynode *v = cm_ynode_get(map, key);
    size_t n = 0;
    if (!v) {
        if (!def) {
            *ret = NULL;
            return 0;
        }
        while (def[n])
            n++;
    } else if (v->type == CM_YNODE_SCALAR) {
        n = 1;
    } else if (v->type == CM_YNODE_SEQ) {
        n = v->n;
    } else {
        return cm_conf_fail(ctx, v, path, key, "must be a list of strings");
    }
    char **out = calloc(n + 1, sizeof(*out));
    if (!out)
        return cm_conf_fail(ctx, v, path, key, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *s;
        if (!v) {
            s = def[i];
        } else if (v->type == CM_YNODE_SCALAR) {
            s = v->scalar;
        } else {
            if (v->items[i]->type != CM_YNODE_SCALAR) {
                cm_strv_free(out);
                return cm_conf_fail(ctx, v->items[i], path, key, "items must be strings");
            }
            s = v->items[i]->scalar;
        }
        out[i] = strdup(s);
        if (!out[i]) {
            cm_strv_free(out);
            return cm_conf_fail(ctx, v, path, key, "out of memory");
        }
    }
    *ret = out;
    return 0;
}

/* ---------------------------------------------------------------- shared sections */

static int load_redis(struct cm_conf_ctx *ctx, const struct cm_ynode *m,
                      struct cm_redis_config *r)
{
    static const char *const keys[] = {"address", "username", "password", "password_file",
                                       "prefix", "db", "connect_timeout", "command_timeout",
                                       "usage_retention", "sentinels", "master_name", NULL};
    uint64_t db;
    if (cm_conf_keys(ctx, m, "redis", keys) || cm_conf_str(ctx, m, "redis", "address",
                                                           "127.0.0.1:6379", &r->address) ||
        cm_conf_str(ctx, m, "redis", "username", NULL, &r->username) ||
        cm_conf_secret(ctx, m, "redis", "password", "password_file", 1, CM_SECRET_LINE,
                       &r->password) ||
        cm_conf_str(ctx, m, "redis", "prefix", "berth:", &r->prefix) ||
        cm_conf_u64(ctx, m, "redis", "db", 0, 0, 255, &db) ||
        cm_conf_duration(ctx, m, "redis", "connect_timeout", 2 * CM_USEC_PER_SEC,
                         10 * CM_USEC_PER_MSEC, 60 * CM_USEC_PER_SEC, &r->connect_timeout) ||
        cm_conf_duration(ctx, m, "redis", "command_timeout", 2 * CM_USEC_PER_SEC,
                         10 * CM_USEC_PER_MSEC, 60 * CM_USEC_PER_SEC, &r->command_timeout) ||
        cm_conf_duration(ctx, m, "redis", "usage_retention", 90ull * 86400 * CM_USEC_PER_SEC,
                         3600 * CM_USEC_PER_SEC, 3650ull * 86400 * CM_USEC_PER_SEC,
                         &r->usage_retention) ||
        cm_conf_strv(ctx, m, "redis", "sentinels", NULL, &r->sentinels) ||
        cm_conf_str(ctx, m, "redis", "master_name", NULL, &r->master_name))
        return -EINVAL;
    r->db = (uint32_t)db;
    size_t n_sentinels = 0;
    for (char **s = r->sentinels; s && *s; s++, n_sentinels++) {
        const char *colon = strrchr(*s, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == *s || colon - *s > 255 || !end || *end || port < 1 ||
            port > 65535)
            return cm_conf_fail(ctx, cm_ynode_get(m, "sentinels"), "redis", "sentinels",
                                "'%s' is not host:port", *s);
    }
    if (n_sentinels > CM_REDIS_MAX_SENTINELS)
        return cm_conf_fail(ctx, cm_ynode_get(m, "sentinels"), "redis", "sentinels",
                            "at most %d", CM_REDIS_MAX_SENTINELS);
    if (n_sentinels && (!r->master_name || !*r->master_name || strlen(r->master_name) > 128))
        return cm_conf_fail(ctx, m, "redis", "master_name",
                            "required with redis.sentinels: the name the sentinels monitor "
                            "(1-128 characters)");
    if (!n_sentinels && r->master_name)
        return cm_conf_fail(ctx, cm_ynode_get(m, "master_name"), "redis", "master_name",
                            "needs redis.sentinels");
    if (n_sentinels && cm_ynode_get(m, "address"))
        return cm_conf_fail(ctx, cm_ynode_get(m, "address"), "redis", "address",
                            "not with redis.sentinels (they name the primary)");
    if (strlen(r->prefix) > 64)
        return cm_conf_fail(ctx, cm_ynode_get(m, "prefix"), "redis", "prefix",
                            "must be at most 64 characters");
    if (r->username) {
        const struct cm_ynode *at = cm_ynode_get(m, "username");
        size_t n = strlen(r->username);
        int ok = n >= 1 && n <= 128;
        for (size_t i = 0; ok && i < n; i++)
            ok = r->username[i] > 0x20 && r->username[i] < 0x7f;
        if (!ok)
            return cm_conf_fail(ctx, at, "redis", "username",
                                "must be 1-128 visible ASCII characters");
        if (!r->password)
            return cm_conf_fail(ctx, at, "redis", "username",
                                "needs redis.password or redis.password_file (AUTH username "
                                "password)");
    }
    return 0;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return 0;
    return 1;
}

static int valid_driver_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 32)
        return 0;
    for (const char *p = s; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= '0' && *p <= '9') && *p != '-' && *p != '_')
            return 0;
    return 1;
}

/* <what>_per_second and <what>_burst of a tenant's limits: a rate 0..CM_TENANT_MAX_RATE (0:
 * none) and a burst 1..CM_TENANT_MAX_RATE that defaults to the rate and needs one. */
static int load_rate(struct cm_conf_ctx *ctx, const struct cm_ynode *lim, const char *lpath,
                     const char *what, uint32_t *per_second, uint32_t *burst)
{
    char rkey[40], bkey[40];
    snprintf(rkey, sizeof(rkey), "%s_per_second", what);
    snprintf(bkey, sizeof(bkey), "%s_burst", what);
    uint64_t r = 0, b = 0;
    if (cm_conf_u64(ctx, lim, lpath, rkey, 0, 0, CM_TENANT_MAX_RATE, &r) ||
        cm_conf_u64(ctx, lim, lpath, bkey, r, r ? 1 : 0, CM_TENANT_MAX_RATE, &b))
        return -EINVAL;
    if (b && !r)
        return cm_conf_fail(ctx, cm_ynode_get(lim, bkey), lpath, bkey, "needs %s", rkey);
    *per_second = (uint32_t)r;
    *burst = (uint32_t)b;
    return 0;
}

/* tenants[].api_keys: [{sha256, limits: {max_sessions, sessions_per_second, sessions_burst,
 * max_execs}}]. */
static int load_api_keys(struct cm_conf_ctx *ctx, const struct cm_ynode *m, struct cm_tenant *t)
{
    static const char *const key_keys[] = {"sha256", "limits", NULL};
    static const char *const limit_keys[] = {"max_sessions", "sessions_per_second",
                                             "sessions_burst", "max_execs", NULL};
    const struct cm_ynode *list = cm_ynode_get(m, "api_keys");
    if (!list)
        return 0;
    char path[96];
    snprintf(path, sizeof(path), "tenants.%s.api_keys", t->name);
    if (list->type != CM_YNODE_SEQ)
        return cm_conf_fail(ctx, list, path, NULL, "must be a list of {sha256, limits}");
    t->api_keys = calloc(list->n ? list->n : 1, sizeof(*t->api_keys));
    if (!t->api_keys)
        return cm_conf_fail(ctx, list, path, NULL, "out of memory");
    for (size_t i = 0; i < list->n; i++) {
        const struct cm_ynode *k = list->items[i];
        struct cm_api_key *ak = &t->api_keys[t->n_api_keys];
        char *sha = NULL;
        if (!k || k->type != CM_YNODE_MAP)
            return cm_conf_fail(ctx, k, path, NULL, "items must be mappings {sha256, limits}");
        if (cm_conf_keys(ctx, k, path, key_keys) ||
            cm_conf_str(ctx, k, path, "sha256", NULL, &sha))
            return -EINVAL;
        size_t n = sha ? strlen(sha) : 0;
        int hex = n == 64;
        for (size_t j = 0; hex && j < n; j++) {
            sha[j] = (char)tolower((unsigned char)sha[j]);
            hex = isxdigit((unsigned char)sha[j]);
        }
        if (!hex) {
            free(sha);
            return cm_conf_fail(ctx, cm_ynode_get(k, "sha256"), path, "sha256",
                                "required: 64 hex digits (sha256sum of a key)");
        }
        memcpy(ak->sha256, sha, 65);
        free(sha);
        const struct cm_ynode *lim = cm_ynode_get(k, "limits");
        char lpath[128];
        snprintf(lpath, sizeof(lpath), "%s[%zu].limits", path, i);
        uint64_t max_sessions = 0, execs = 0;
        if (cm_conf_keys(ctx, lim, lpath, limit_keys) ||
            cm_conf_u64(ctx, lim, lpath, "max_sessions", 0, 0, CM_TENANT_MAX_SESSIONS,
                        &max_sessions) ||
            cm_conf_u64(ctx, lim, lpath, "max_execs", 0, 0, CM_TENANT_MAX_SESSIONS, &execs) ||
            load_rate(ctx, lim, lpath, "sessions", &ak->sessions_per_second,
                      &ak->sessions_burst))
            return -EINVAL;
        ak->max_sessions = (uint32_t)max_sessions;
        ak->max_execs = (uint32_t)execs;
        ak->set = (cm_ynode_get(lim, "max_sessions") ? CM_KEY_MAX_SESSIONS : 0) |
                  (cm_ynode_get(lim, "sessions_per_second") ? CM_KEY_SESSION_RATE : 0) |
                  (cm_ynode_get(lim, "max_execs") ? CM_KEY_MAX_EXECS : 0);
        t->n_api_keys++;
    }
    return 0;
}

static int load_tenant(struct cm_conf_ctx *ctx, const struct cm_ynode *m, struct cm_tenant *t)
{
    static const char *const keys[] = {"name", "api_keys_sha256", "api_keys", "limits", NULL};
    static const char *const limit_keys[] = {"max_sessions",        "sessions_per_second",
                                             "sessions_burst",      "requests_per_second",
                                             "requests_burst",      "max_execs",
                                             "max_memory",          "max_cpus",
                                             NULL};
    if (!m || m->type != CM_YNODE_MAP)
        return cm_conf_fail(ctx, m, "tenants", NULL, "items must be mappings");
    if (cm_conf_keys(ctx, m, "tenants[]", keys) ||
        cm_conf_str(ctx, m, "tenants[]", "name", NULL, &t->name) ||
        cm_conf_strv(ctx, m, "tenants[]", "api_keys_sha256", NULL, &t->api_key_sha256))
        return -EINVAL;
    if (!t->name || !valid_name(t->name))
        return cm_conf_fail(ctx, m, "tenants[]", "name",
                            "required: 1-63 characters of [A-Za-z0-9._-]");
    char lpath[96];
    snprintf(lpath, sizeof(lpath), "tenants.%s.limits", t->name);
    const struct cm_ynode *lim = cm_ynode_get(m, "limits");
    uint64_t max_sessions = 0, execs = 0;
    if (cm_conf_keys(ctx, lim, lpath, limit_keys) ||
        cm_conf_u64(ctx, lim, lpath, "max_sessions", 0, 0, CM_TENANT_MAX_SESSIONS,
                    &max_sessions) ||
        cm_conf_u64(ctx, lim, lpath, "max_execs", 0, 0, CM_TENANT_MAX_SESSIONS, &execs) ||
        load_rate(ctx, lim, lpath, "sessions", &t->sessions_per_second, &t->sessions_burst) ||
        load_rate(ctx, lim, lpath, "requests", &t->requests_per_second, &t->requests_burst))
        return -EINVAL;
    t->max_sessions = (uint32_t)max_sessions;
    t->max_execs = (uint32_t)execs;
    if (cm_conf_size(ctx, lim, lpath, "max_memory", 0, 0, 1ull << 50, &t->max_memory))
        return -EINVAL;
    const struct cm_ynode *cpus = cm_ynode_get(lim, "max_cpus");
    if (cpus) {
        char *end;
        double c = cpus->type == CM_YNODE_SCALAR ? strtod(cpus->scalar, &end) : -1;
        if (cpus->type != CM_YNODE_SCALAR || *end || c < 0 || c > 1000000)
            return cm_conf_fail(ctx, cpus, lpath, "max_cpus",
                                "must be a number of cores 0..1000000 (0: none)");
        t->max_cpu_millis = (uint64_t)(c * 1000 + 0.5);
    }
    if (load_api_keys(ctx, m, t) < 0)
        return -EINVAL;
    for (char **k = t->api_key_sha256; k && *k; k++) {
        size_t n = strlen(*k);
        int hex = n == 64;
        for (size_t i = 0; hex && i < n; i++) {
            (*k)[i] = (char)tolower((unsigned char)(*k)[i]);
            hex = isxdigit((unsigned char)(*k)[i]);
        }
        if (!hex)
            return cm_conf_fail(ctx, cm_ynode_get(m, "api_keys_sha256"), "tenants[]",
                                "api_keys_sha256", "must be 64 hex digits (sha256sum of a key)");
    }
    return 0;
}

static int load_template(struct cm_conf_ctx *ctx, const struct cm_ynode *m,
                         struct cm_template *t)
{
    static const char *const keys[] = {"name",  "driver",       "app",     "cpus",
                                       "memory", "pids",        "workspace_size",
                                       "pool",  "ready_timeout", "ttl",    "max_ttl",
                                       "idle_timeout", "max_idle_timeout", "on_lost", "data",
                                       "upstreams", "sessions_per_instance", "data_size",
                                       "run_as_root", "seccomp", "io", "rootfs", "accel", "idle",
                                       "egress", NULL};
    static const char *const idle_keys[] = {"pause_after", NULL};
    static const char *const egress_keys[] = {"allow", "deny", NULL};
    static const char *const io_keys[] = {"read_bps", "write_bps", "read_iops", "write_iops",
                                          NULL};
    static const char *const app_keys[] = {"command", "port", "env", NULL};
    static const char *const pool_keys[] = {"min", "max", NULL};
    const char *p = "templates[]";
    if (!m || m->type != CM_YNODE_MAP)
        return cm_conf_fail(ctx, m, "templates", NULL, "items must be mappings");
    if (cm_conf_keys(ctx, m, p, keys) || cm_conf_str(ctx, m, p, "name", NULL, &t->name) ||
        cm_conf_str(ctx, m, p, "driver", "process", &t->driver))
        return -EINVAL;
    if (!t->name || !valid_name(t->name))
        return cm_conf_fail(ctx, m, p, "name", "required: 1-63 characters of [A-Za-z0-9._-]");
    char path[128];
    snprintf(path, sizeof(path), "templates.%s", t->name);
    int is_static = strcmp(t->driver, "static") == 0;
    /* Which sandbox drivers exist is the scheduler's to say (its driver registry: it refuses
     * to start with a name it does not know); here only the form of a name is checked. */
    if (!is_static && !valid_driver_name(t->driver))
        return cm_conf_fail(ctx, cm_ynode_get(m, "driver"), path, "driver",
                            "'%s' is not a driver name (static, or a scheduler driver such as "
                            "process: 1-32 of [a-z0-9_-])",
                            t->driver);
    uint64_t spi;
    if (cm_conf_strv(ctx, m, path, "upstreams", NULL, &t->upstreams) ||
        cm_conf_u64(ctx, m, path, "sessions_per_instance", 1, 0, 1u << 30, &spi))
        return -EINVAL;
    t->sessions_per_instance = (uint32_t)spi;
    if (is_static) {
        if (!t->upstreams || !t->upstreams[0])
            return cm_conf_fail(ctx, m, path, "upstreams",
                                "required with driver static: a list of addresses");
        for (char **u = t->upstreams; *u; u++)
            if (strlen(*u) > 180 || !strchr(*u, ':'))
                return cm_conf_fail(ctx, cm_ynode_get(m, "upstreams"), path, "upstreams",
                                    "'%s' is not host:port, tcp:host:port or unix:/path", *u);
        if (cm_ynode_get(m, "app"))
            return cm_conf_fail(ctx, cm_ynode_get(m, "app"), path, "app",
                                "not used with driver static");
    } else if (t->upstreams) {
        return cm_conf_fail(ctx, cm_ynode_get(m, "upstreams"), path, "upstreams",
                            "only for driver static");
    }
    const struct cm_ynode *app = cm_ynode_get(m, "app");
    if (!app && !is_static)
        return cm_conf_fail(ctx, m, path, "app", "required");
    char apath[160];
    snprintf(apath, sizeof(apath), "%s.app", path);
    uint64_t port, mem, pids, ws, pmin, pmax;
    if (cm_conf_keys(ctx, app, apath, app_keys) ||
        cm_conf_strv(ctx, app, apath, "command", NULL, &t->app_command) ||
        cm_conf_u64(ctx, app, apath, "port", 8000, 1, 65535, &port))
        return -EINVAL;
    if (!is_static && (!t->app_command || !t->app_command[0]))
        return cm_conf_fail(ctx, app, apath, "command", "required: the app's argv");
    t->app_port = (uint32_t)port;
    const struct cm_ynode *env = cm_ynode_get(app, "env");
    if (env) {
        if (env->type != CM_YNODE_MAP)
            return cm_conf_fail(ctx, env, apath, "env", "must be a mapping of NAME: value");
        t->app_env = calloc(env->n + 1, sizeof(char *));
        if (!t->app_env)
            return cm_conf_fail(ctx, env, apath, "env", "out of memory");
        for (size_t i = 0; i < env->n; i++) {
            const struct cm_ynode *k = env->items[2 * i], *v = env->items[2 * i + 1];
            if (k->type != CM_YNODE_SCALAR || v->type != CM_YNODE_SCALAR || !valid_name(k->scalar))
                return cm_conf_fail(ctx, k, apath, "env", "entries must be NAME: value");
            if (asprintf(&t->app_env[i], "%s=%s", k->scalar, v->scalar) < 0) {
                t->app_env[i] = NULL;
                return cm_conf_fail(ctx, k, apath, "env", "out of memory");
            }
        }
    }
    /* cpus: a decimal such as 0.5 or 2 */
    t->cpu_millis = 0;
    const struct cm_ynode *cpus = cm_ynode_get(m, "cpus");
    if (cpus) {
        char *end;
        double c = cpus->type == CM_YNODE_SCALAR ? strtod(cpus->scalar, &end) : -1;
        if (cpus->type != CM_YNODE_SCALAR || *end || c < 0.01 || c > 1024)
            return cm_conf_fail(ctx, cpus, path, "cpus", "must be a number of cores 0.01..1024");
        t->cpu_millis = (uint32_t)(c * 1000 + 0.5);
    }
    const struct cm_ynode *pool = cm_ynode_get(m, "pool");
    char ppath[160];
    snprintf(ppath, sizeof(ppath), "%s.pool", path);
    const char *lost = NULL;
    char *lost_s = NULL;
    if (cm_conf_size(ctx, m, path, "memory", 256u << 20, 0, UINT64_MAX, &mem) ||
        cm_conf_u64(ctx, m, path, "pids", 256, 0, 1u << 22, &pids) ||
        cm_conf_size(ctx, m, path, "workspace_size", 64u << 20, 1u << 20, 1ull << 40, &ws) ||
        cm_conf_keys(ctx, pool, ppath, pool_keys) ||
        cm_conf_u64(ctx, pool, ppath, "min", 1, 0, 10000, &pmin) ||
        cm_conf_u64(ctx, pool, ppath, "max", CM_MAX(pmin, 16), 0, 10000, &pmax) ||
        cm_conf_duration(ctx, m, path, "ready_timeout", 10 * CM_USEC_PER_SEC, CM_USEC_PER_SEC / 10,
                         3600 * CM_USEC_PER_SEC, &t->ready_timeout) ||
        cm_conf_duration(ctx, m, path, "ttl", 3600 * CM_USEC_PER_SEC, CM_USEC_PER_SEC,
                         365 * 86400 * CM_USEC_PER_SEC, &t->ttl) ||
        cm_conf_duration(ctx, m, path, "max_ttl", CM_MAX(t->ttl, 86400 * CM_USEC_PER_SEC),
                         CM_USEC_PER_SEC, 365 * 86400 * CM_USEC_PER_SEC, &t->max_ttl) ||
        cm_conf_duration(ctx, m, path, "idle_timeout", 600 * CM_USEC_PER_SEC, CM_USEC_PER_SEC,
                         365 * 86400 * CM_USEC_PER_SEC, &t->idle_timeout) ||
        cm_conf_duration(ctx, m, path, "max_idle_timeout",
                         CM_MAX(t->idle_timeout, 86400 * CM_USEC_PER_SEC), CM_USEC_PER_SEC,
                         365 * 86400 * CM_USEC_PER_SEC, &t->max_idle_timeout) ||
        cm_conf_str(ctx, m, path, "on_lost", "replace", &lost_s) ||
        cm_conf_bool(ctx, m, path, "data", 1, &t->data) ||
        cm_conf_size(ctx, m, path, "data_size", 1ull << 30, 16u << 20, 1ull << 44, &t->data_size) ||
        cm_conf_bool(ctx, m, path, "run_as_root", 0, &t->run_as_root) ||
        cm_conf_str(ctx, m, path, "seccomp", "default", &t->seccomp) ||
        cm_conf_str(ctx, m, path, "rootfs", NULL, &t->rootfs) ||
        cm_conf_str(ctx, m, path, "accel", "auto", &t->accel))
        return free(lost_s), -EINVAL;
    if (t->rootfs && (t->rootfs[0] != '/' || strstr(t->rootfs, "..") || strlen(t->rootfs) > 1024 ||
                      strcmp(t->rootfs, "/") == 0))
        return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(m, "rootfs"), path, "rootfs",
                                          "must be an absolute directory other than / without "
                                          "'..'");
    const struct cm_ynode *io = cm_ynode_get(m, "io");
    char iopath[160];
    snprintf(iopath, sizeof(iopath), "%s.io", path);
    if (cm_conf_keys(ctx, io, iopath, io_keys) ||
        cm_conf_size(ctx, io, iopath, "read_bps", 0, 0, UINT64_MAX, &t->io_read_bps) ||
        cm_conf_size(ctx, io, iopath, "write_bps", 0, 0, UINT64_MAX, &t->io_write_bps) ||
        cm_conf_u64(ctx, io, iopath, "read_iops", 0, 0, UINT32_MAX, &t->io_read_iops) ||
        cm_conf_u64(ctx, io, iopath, "write_iops", 0, 0, UINT32_MAX, &t->io_write_iops))
        return free(lost_s), -EINVAL;
    const struct cm_ynode *egress = cm_ynode_get(m, "egress");
    char epath[160];
    snprintf(epath, sizeof(epath), "%s.egress", path);
    if (cm_conf_keys(ctx, egress, epath, egress_keys) ||
        cm_conf_strv(ctx, egress, epath, "allow", NULL, &t->egress_allow) ||
        cm_conf_strv(ctx, egress, epath, "deny", NULL, &t->egress_deny))
        return free(lost_s), -EINVAL;
    for (int deny = 0; deny < 2; deny++) {
        char **list = deny ? t->egress_deny : t->egress_allow;
        const char *key = deny ? "deny" : "allow";
        if (list && cm_strv_len(list) > CM_EGRESS_MAX_ENTRIES / 2)
            return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(egress, key), epath, key,
                                              "at most %d entries (sessions may add as many)",
                                              CM_EGRESS_MAX_ENTRIES / 2);
        for (size_t i = 0; list && list[i]; i++) {
            struct cm_egress_entry e;
            const char *why = "";
            if (cm_egress_parse(list[i], &e, &why) < 0)
                return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(egress, key), epath, key,
                                                  "'%s': %s", list[i], why);
        }
    }
    if (egress && is_static)
        return free(lost_s), cm_conf_fail(ctx, egress, path, "egress",
                                          "not used with driver static");
    const struct cm_ynode *idle = cm_ynode_get(m, "idle");
    char idlepath[160];
    snprintf(idlepath, sizeof(idlepath), "%s.idle", path);
    if (cm_conf_keys(ctx, idle, idlepath, idle_keys) ||
        cm_conf_duration(ctx, idle, idlepath, "pause_after", 0, 0, 365 * 86400 * CM_USEC_PER_SEC,
                         &t->pause_after))
        return free(lost_s), -EINVAL;
    /* Sessions in use are touched once per gateway.activity_flush (1 s by default): a shorter
     * pause_after would pause sessions between two touches. */
    if (t->pause_after && t->pause_after < CM_USEC_PER_SEC)
        return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(idle, "pause_after"), idlepath,
                                          "pause_after", "must be 0 (never) or at least 1s");
    if (t->pause_after && is_static)
        return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(idle, "pause_after"), idlepath,
                                          "pause_after", "not used with driver static");
    if (strcmp(t->accel, "auto") != 0 && strcmp(t->accel, "kvm") != 0 &&
        strcmp(t->accel, "tcg") != 0)
        return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(m, "accel"), path, "accel",
                                          "must be auto, kvm or tcg, not '%s'", t->accel);
    if (strcmp(t->seccomp, "default") != 0 && strcmp(t->seccomp, "strict") != 0)
        return free(lost_s), cm_conf_fail(ctx, cm_ynode_get(m, "seccomp"), path, "seccomp",
                                          "unknown profile '%s' (known: default, strict)",
                                          t->seccomp);
    lost = lost_s;
    if (strcmp(lost, "replace") == 0)
        t->on_lost = CM_LOST_REPLACE;
    else if (strcmp(lost, "fail") == 0)
        t->on_lost = CM_LOST_FAIL;
    else {
        free(lost_s);
        return cm_conf_fail(ctx, cm_ynode_get(m, "on_lost"), path, "on_lost",
                            "must be replace or fail");
    }
    free(lost_s);
    if (pmin > pmax)
        return cm_conf_fail(ctx, pool, ppath, "min", "must not exceed pool.max");
    if (t->ttl > t->max_ttl)
        return cm_conf_fail(ctx, m, path, "ttl", "must not exceed max_ttl");
    if (t->idle_timeout > t->max_idle_timeout)
        return cm_conf_fail(ctx, m, path, "idle_timeout", "must not exceed max_idle_timeout");
    t->memory = mem;
    t->pids = pids;
    t->workspace_size = ws;
    t->pool_min = (uint32_t)pmin;
    t->pool_max = (uint32_t)pmax;
    return 0;
}

struct cm_config *cm_config_load(const char *path, char *err, size_t errlen)
{
    static const char *const keys[] = {"log",     "redis",   "tenants", "templates",
                                       "gateway", "scheduler", NULL};
    static const char *const log_keys[] = {"level", NULL};
    struct cm_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    struct cm_conf_ctx ctx = {.file = path, .err = err, .errlen = errlen};
    cfg->file = strdup(path);
    cfg->root = cm_yaml_load(path, err, errlen);
    if (!cfg->file || !cfg->root)
        goto fail;
    if (cfg->root->type != CM_YNODE_MAP) {
        cm_conf_fail(&ctx, cfg->root, "", NULL, "the document must be a mapping");
        goto fail;
    }
    const struct cm_ynode *log = cm_ynode_get(cfg->root, "log");
    if (cm_conf_keys(&ctx, cfg->root, "", keys) || cm_conf_keys(&ctx, log, "log", log_keys) ||
        cm_conf_str(&ctx, log, "log", "level", "info", &cfg->log_level) ||
        load_redis(&ctx, cm_ynode_get(cfg->root, "redis"), &cfg->redis))
        goto fail;
    if (strcmp(cfg->log_level, "error") && strcmp(cfg->log_level, "warn") &&
        strcmp(cfg->log_level, "info") && strcmp(cfg->log_level, "debug")) {
        cm_conf_fail(&ctx, cm_ynode_get(log, "level"), "log", "level",
                     "must be error, warn, info or debug");
        goto fail;
    }

    const struct cm_ynode *tenants = cm_ynode_get(cfg->root, "tenants");
    if (tenants) {
        if (tenants->type != CM_YNODE_SEQ) {
            cm_conf_fail(&ctx, tenants, "", "tenants", "must be a list");
            goto fail;
        }
        cfg->tenants = calloc(tenants->n ? tenants->n : 1, sizeof(*cfg->tenants));
        if (!cfg->tenants)
            goto oom;
        for (size_t i = 0; i < tenants->n; i++) {
            cfg->n_tenants++;
            if (load_tenant(&ctx, tenants->items[i], &cfg->tenants[i]))
                goto fail;
            for (size_t j = 0; j < i; j++)
                if (strcmp(cfg->tenants[j].name, cfg->tenants[i].name) == 0) {
                    cm_conf_fail(&ctx, tenants->items[i], "tenants", cfg->tenants[i].name,
                                 "defined twice");
                    goto fail;
                }
        }
        /* A key names one tenant, once: who a caller is must not depend on the list order. */
        for (size_t i = 0; i < cfg->n_tenants; i++) {
            const struct cm_tenant *t = &cfg->tenants[i];
            size_t n = cm_strv_len(t->api_key_sha256) + t->n_api_keys;
            for (size_t a = 0; a < n; a++) {
                const char *ka = a < t->n_api_keys ? t->api_keys[a].sha256
                                                   : t->api_key_sha256[a - t->n_api_keys];
                for (size_t j = i; j < cfg->n_tenants; j++) {
                    const struct cm_tenant *u = &cfg->tenants[j];
                    size_t m = cm_strv_len(u->api_key_sha256) + u->n_api_keys;
                    for (size_t b = j == i ? a + 1 : 0; b < m; b++) {
                        const char *kb = b < u->n_api_keys ? u->api_keys[b].sha256
                                                           : u->api_key_sha256[b - u->n_api_keys];
                        if (strcmp(ka, kb) == 0) {
                            cm_conf_fail(&ctx, tenants->items[j], "tenants", u->name,
                                         "API key %.12s... is listed twice (tenants %s and %s)",
                                         ka, t->name, u->name);
                            goto fail;
                        }
                    }
                }
            }
        }
    }
    const struct cm_ynode *tpls = cm_ynode_get(cfg->root, "templates");
    if (tpls) {
        if (tpls->type != CM_YNODE_SEQ) {
            cm_conf_fail(&ctx, tpls, "", "templates", "must be a list");
            goto fail;
        }
        cfg->templates = calloc(tpls->n ? tpls->n : 1, sizeof(*cfg->templates));
        if (!cfg->templates)
            goto oom;
        for (size_t i = 0; i < tpls->n; i++) {
            cfg->n_templates++;
            if (load_template(&ctx, tpls->items[i], &cfg->templates[i]))
                goto fail;
            for (size_t j = 0; j < i; j++)
                if (strcmp(cfg->templates[j].name, cfg->templates[i].name) == 0) {
                    cm_conf_fail(&ctx, tpls->items[i], "templates", cfg->templates[i].name,
                                 "defined twice");
                    goto fail;
                }
        }
    }
    return cfg;
oom:
    snprintf(err, errlen, "%s: out of memory", path);
fail:
    cm_config_free(cfg);
    return NULL;
}

void cm_config_free(struct cm_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        free(cfg->tenants[i].name);
        cm_strv_free(cfg->tenants[i].api_key_sha256);
        free(cfg->tenants[i].api_keys);
    }
    free(cfg->tenants);
    for (size_t i = 0; i < cfg->n_templates; i++) {
        struct cm_template *t = &cfg->templates[i];
        free(t->name);
        free(t->driver);
        free(t->seccomp);
        free(t->accel);
        free(t->rootfs);
        cm_strv_free(t->upstreams);
        cm_strv_free(t->app_command);
        cm_strv_free(t->app_env);
        cm_strv_free(t->egress_allow);
        cm_strv_free(t->egress_deny);
    }
    free(cfg->templates);
    free(cfg->redis.address);
    cm_strv_free(cfg->redis.sentinels);
    free(cfg->redis.master_name);
    free(cfg->redis.username);
    cm_secret_free(cfg->redis.password);
    free(cfg->redis.prefix);
    free(cfg->log_level);
    cm_ynode_free(cfg->root);
    free(cfg->file);
    free(cfg);
}

const struct cm_template *cm_config_template(const struct cm_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_templates; i++)
        if (strcmp(cfg->templates[i].name, name) == 0)
            return &cfg->templates[i];
    return NULL;
}

const struct cm_tenant *cm_config_tenant(const struct cm_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_tenants; i++)
        if (strcmp(cfg->tenants[i].name, name) == 0)
            return &cfg->tenants[i];
    return NULL;
}

const struct cm_tenant *cm_config_tenant_by_key(const struct cm_config *cfg, const char *key)
{
    return cm_config_key(cfg, key, NULL);
}

uint32_t cm_limit_max_sessions(const struct cm_tenant *t, const struct cm_api_key *k)
{
    return k && (k->set & CM_KEY_MAX_SESSIONS) ? k->max_sessions : t ? t->max_sessions : 0;
}

uint32_t cm_limit_max_execs(const struct cm_tenant *t, const struct cm_api_key *k)
{
    return k && (k->set & CM_KEY_MAX_EXECS) ? k->max_execs : t ? t->max_execs : 0;
}

void cm_limit_session_rate(const struct cm_tenant *t, const struct cm_api_key *k,
                           uint32_t *ret_rate, uint32_t *ret_burst)
{
    if (k && (k->set & CM_KEY_SESSION_RATE)) {
        *ret_rate = k->sessions_per_second;
        *ret_burst = k->sessions_burst;
    } else {
        *ret_rate = t ? t->sessions_per_second : 0;
        *ret_burst = t ? t->sessions_burst : 0;
    }
}

const struct cm_tenant *cm_config_key(const struct cm_config *cfg, const char *key,
                                      const struct cm_api_key **ret_key)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    char hex[65];
    if (!EVP_Digest(key, strlen(key), md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return NULL;
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    const struct cm_tenant *found = NULL;
    const struct cm_api_key *fk = NULL;
    /* Every entry is compared (the time taken says nothing about which one matched). */
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        for (char **k = cfg->tenants[i].api_key_sha256; k && *k; k++)
            if (CRYPTO_memcmp(*k, hex, 64) == 0 && !found)
                found = &cfg->tenants[i];
        for (size_t j = 0; j < cfg->tenants[i].n_api_keys; j++)
            if (CRYPTO_memcmp(cfg->tenants[i].api_keys[j].sha256, hex, 64) == 0 && !fk) {
                fk = &cfg->tenants[i].api_keys[j];
                if (!found)
                    found = &cfg->tenants[i];
            }
    }
    if (ret_key)
        *ret_key = fk && found && fk >= found->api_keys &&
                           fk < found->api_keys + found->n_api_keys
                       ? fk
                       : NULL;
    return found;
}
