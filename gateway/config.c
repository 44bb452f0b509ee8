#include "gateway/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/secret.h"

static int load_limits(struct cm_conf_ctx *ctx, const struct cm_ynode *m, struct gw_limits *l)
{
    static const char *const keys[] = {
        "max_header_bytes",      "max_headers",         "max_connections",
        "header_timeout",        "keepalive_timeout",   "connect_timeout",
        "response_timeout",      "stream_idle_timeout", "start_timeout",
        "buffer_high",           "buffer_low",          "upstream_idle_per_instance",
        "upstream_idle_timeout", "sse_sniff_bytes",     "rewrite_max_body",
        "max_chunk_ext_bytes",   "resume_timeout",      NULL};
    const char *p = "gateway.limits";
    const cm_usec_t S = CM_USEC_PER_SEC;
    if (cm_conf_keys(ctx, m, p, keys) ||
        cm_conf_size(ctx, m, p, "max_header_bytes", 16384, 1024, 1u << 20, &l->max_header_bytes) ||
        /* 96: the gateway adds up to 4 headers, and 100 is a common server limit */
        cm_conf_u64(ctx, m, p, "max_headers", 96, 8, 1000, &l->max_headers) ||
        cm_conf_u64(ctx, m, p, "max_connections", 20000, 1, 1000000, &l->max_connections) ||
        cm_conf_duration(ctx, m, p, "header_timeout", 10 * S, 100 * CM_USEC_PER_MSEC, 600 * S,
                         &l->header_timeout) ||
        cm_conf_duration(ctx, m, p, "keepalive_timeout", 75 * S, 100 * CM_USEC_PER_MSEC, 3600 * S,
                         &l->keepalive_timeout) ||
        cm_conf_duration(ctx, m, p, "connect_timeout", 5 * S, 10 * CM_USEC_PER_MSEC, 600 * S,
                         &l->connect_timeout) ||
        cm_conf_duration(ctx, m, p, "response_timeout", 300 * S, 100 * CM_USEC_PER_MSEC, 86400 * S,
                         &l->response_timeout) ||
        cm_conf_duration(ctx, m, p, "stream_idle_timeout", 3600 * S, 100 * CM_USEC_PER_MSEC,
                         7 * 86400 * S, &l->stream_idle_timeout) ||
        cm_conf_duration(ctx, m, p, "start_timeout", 30 * S, 100 * CM_USEC_PER_MSEC, 3600 * S,
                         &l->start_timeout) ||
        cm_conf_duration(ctx, m, p, "resume_timeout", 10 * S, 100 * CM_USEC_PER_MSEC, 600 * S,
                         &l->resume_timeout) ||
        cm_conf_size(ctx, m, p, "buffer_high", 256u << 10, 4096, 64u << 20, &l->buffer_high) ||
        cm_conf_size(ctx, m, p, "buffer_low", 64u << 10, 0, 64u << 20, &l->buffer_low) ||
        cm_conf_u64(ctx, m, p, "upstream_idle_per_instance", 32, 0, 10000,
                    &l->upstream_idle_per_instance) ||
        cm_conf_duration(ctx, m, p, "upstream_idle_timeout", 60 * S, 100 * CM_USEC_PER_MSEC,
                         3600 * S, &l->upstream_idle_timeout) ||
        cm_conf_size(ctx, m, p, "sse_sniff_bytes", 16u << 10, 256, 1u << 20, &l->sse_sniff_bytes) ||
        cm_conf_size(ctx, m, p, "rewrite_max_body", 1u << 20, 4096, 64u << 20,
                     &l->rewrite_max_body) ||
        cm_conf_size(ctx, m, p, "max_chunk_ext_bytes", 256, 0, 4096, &l->max_chunk_ext_bytes))
        return -EINVAL;
    if (l->buffer_low >= l->buffer_high) {
        const struct cm_ynode *at = cm_ynode_get(m, "buffer_low");
        if (!at)
            at = cm_ynode_get(m, "buffer_high");
        return cm_conf_fail(ctx, at ? at : m, p, "buffer_low", "must be below buffer_high");
    }
    return 0;
}

/* "*" or an origin as browsers send it (RFC 6454): http or https, "://", a host (DNS name,
 * IPv4 or [IPv6]) and an optional port, nothing after. Lower-cases it (browsers send scheme
 * and host in lower case, and Origin is compared byte for byte). */
static int origin_valid(char *o)
{
    if (strcmp(o, "*") == 0)
        return 1;
    for (char *c = o; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    const char *h = strncmp(o, "http://", 7) == 0    ? o + 7
                    : strncmp(o, "https://", 8) == 0 ? o + 8
                                                     : NULL;
    if (!h || !*h || strlen(o) > 255)
        return 0;
    for (const char *c = h; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("-.:[]", *c))
            return 0;
    return 1;
}

static int load_route(struct cm_conf_ctx *ctx, const struct cm_config *cfg,
                      const struct cm_ynode *m, size_t idx, struct gw_route *r)
{
    static const char *const keys[] = {"name",   "host",     "path_prefix", "tenant", "template",
                                       "key_headers", "cookie", "no_key",   "max_body", "auth",
                                       "mcp",    "mcp_delete", "legacy_sse", "cdp_rewrite",
                                       "preview_domain", "upstream_host", "cors_origins",
                                       "cors_max_age", NULL};
    static const char *const def_headers[] = {"x-fc-session-id", NULL};
    char p[64];
    snprintf(p, sizeof(p), "gateway.routes[%zu]", idx);
    char *no_key = NULL, *mcp_delete = NULL, *upstream_host = NULL;
    uint64_t max_age;
    if (!m || m->type != CM_YNODE_MAP)
        return cm_conf_fail(ctx, m, p, NULL, "must be a mapping");
    if (cm_conf_keys(ctx, m, p, keys) || cm_conf_str(ctx, m, p, "name", NULL, &r->name) ||
        cm_conf_str(ctx, m, p, "host", NULL, &r->host) ||
        cm_conf_str(ctx, m, p, "path_prefix", "/", &r->path_prefix) ||
        cm_conf_str(ctx, m, p, "tenant", "default", &r->tenant) ||
        cm_conf_str(ctx, m, p, "template", NULL, &r->template_name) ||
        cm_conf_strv(ctx, m, p, "key_headers", def_headers, &r->key_headers) ||
        cm_conf_str(ctx, m, p, "cookie", "berth_session", &r->cookie) ||
        cm_conf_str(ctx, m, p, "no_key", "new", &no_key) ||
        cm_conf_size(ctx, m, p, "max_body", 64u << 20, 0, 1ull << 40, &r->max_body) ||
        cm_conf_bool(ctx, m, p, "auth", 0, &r->auth) ||
        cm_conf_bool(ctx, m, p, "mcp", 1, &r->mcp) ||
        cm_conf_str(ctx, m, p, "mcp_delete", "release", &mcp_delete) ||
        cm_conf_bool(ctx, m, p, "legacy_sse", 1, &r->legacy_sse) ||
        cm_conf_bool(ctx, m, p, "cdp_rewrite", 0, &r->cdp_rewrite) ||
        cm_conf_str(ctx, m, p, "preview_domain", NULL, &r->preview_domain) ||
        cm_conf_strv(ctx, m, p, "cors_origins", NULL, &r->cors_origins) ||
        cm_conf_u64(ctx, m, p, "cors_max_age", 600, 0, 86400, &max_age) ||
        cm_conf_str(ctx, m, p, "upstream_host", "instance", &upstream_host))
        return free(no_key), free(mcp_delete), free(upstream_host), -EINVAL;
    r->cors_max_age = (uint32_t)max_age;
    if (strcmp(upstream_host, "client") == 0) {
        r->upstream_host_client = 1;
    } else if (strcmp(upstream_host, "instance") != 0) {
        free(upstream_host);
        free(mcp_delete);
        free(no_key);
        return cm_conf_fail(ctx, cm_ynode_get(m, "upstream_host"), p, "upstream_host",
                            "must be instance or client");
    }
    free(upstream_host);
    for (char **o = r->cors_origins; o && *o; o++, r->n_cors_origins++) {
        if (!origin_valid(*o)) {
            free(mcp_delete);
            free(no_key);
            return cm_conf_fail(ctx, cm_ynode_get(m, "cors_origins"), p, "cors_origins",
                                "'%s' is not an origin: \"*\" or scheme://host[:port], "
                                "no path or trailing slash",
                                *o);
        }
    }
    if (r->n_cors_origins > 255) { /* a request notes its match in a byte (conn.c) */
        free(mcp_delete);
        free(no_key);
        return cm_conf_fail(ctx, cm_ynode_get(m, "cors_origins"), p, "cors_origins",
                            "at most 255 origins");
    }
    r->cors_preflight = r->mcp || r->n_cors_origins > 0;
    if (strcmp(mcp_delete, "release") == 0)
        r->mcp_delete_releases = 1;
    else if (strcmp(mcp_delete, "keep") == 0)
        r->mcp_delete_releases = 0;
    else {
        free(mcp_delete);
        free(no_key);
        return cm_conf_fail(ctx, cm_ynode_get(m, "mcp_delete"), p, "mcp_delete",
                            "must be release or keep");
    }
    free(mcp_delete);
    if (!r->name && asprintf(&r->name, "route%zu", idx) < 0) {
        r->name = NULL;
        free(no_key);
        return cm_conf_fail(ctx, m, p, "name", "out of memory");
    }
    if (strcmp(no_key, "new") == 0)
        r->no_key = GW_NO_KEY_NEW;
    else if (strcmp(no_key, "reject") == 0)
        r->no_key = GW_NO_KEY_REJECT;
    else if (strcmp(no_key, "issue") == 0)
        r->no_key = GW_NO_KEY_ISSUE;
    else {
        free(no_key);
        return cm_conf_fail(ctx, cm_ynode_get(m, "no_key"), p, "no_key",
                            "must be new, reject or issue");
    }
    free(no_key);
    if (r->path_prefix[0] != '/')
        return cm_conf_fail(ctx, cm_ynode_get(m, "path_prefix"), p, "path_prefix",
                            "must start with /");
    if (r->cookie && !*r->cookie) { /* cookie: "" switches cookies off as a key source */
        free(r->cookie);
        r->cookie = NULL;
    }
    if (r->cookie && (strpbrk(r->cookie, " \t;,=\"") != NULL || strlen(r->cookie) > 128))
        return cm_conf_fail(ctx, cm_ynode_get(m, "cookie"), p, "cookie",
                            "must be a cookie name (no spaces, ;, =, quotes; at most 128 bytes)");
    for (char **h = r->key_headers; h && *h; h++) {
        if (!**h)
            return cm_conf_fail(ctx, cm_ynode_get(m, "key_headers"), p, "key_headers",
                                "names must not be empty");
        for (char *c = *h; *c; c++) {
            *c = (char)tolower((unsigned char)*c);
            if (*c <= 0x20 || *c >= 0x7f || *c == ':')
                return cm_conf_fail(ctx, cm_ynode_get(m, "key_headers"), p, "key_headers",
                                    "'%s' is not a header name", *h);
        }
    }
    if (!cm_config_tenant(cfg, r->tenant)) {
        const struct cm_ynode *at = cm_ynode_get(m, "tenant");
        return cm_conf_fail(ctx, at ? at : m, p, "tenant", "unknown tenant '%s'", r->tenant);
    }
    if (!r->template_name) {
        if (cfg->n_templates == 0)
            return cm_conf_fail(ctx, m, p, "template", "required (no templates defined)");
        r->template_name = strdup(cfg->templates[0].name);
        if (!r->template_name)
            return cm_conf_fail(ctx, m, p, "template", "out of memory");
    }
    r->tpl = cm_config_template(cfg, r->template_name);
    if (!r->tpl)
        return cm_conf_fail(ctx, cm_ynode_get(m, "template"), p, "template",
                            "unknown template '%s'", r->template_name);
    if (r->host)
        for (char *c = r->host; *c; c++)
            *c = (char)tolower((unsigned char)*c);
    if (r->preview_domain) {
        for (char *c = r->preview_domain; *c; c++) {
            *c = (char)tolower((unsigned char)*c);
            if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.')
                return cm_conf_fail(ctx, cm_ynode_get(m, "preview_domain"), p, "preview_domain",
                                    "must be a DNS name such as preview.example.com");
        }
        if (!*r->preview_domain)
            return cm_conf_fail(ctx, cm_ynode_get(m, "preview_domain"), p, "preview_domain",
                                "must not be empty");
    }
    return 0;
}

/* The scheduler API's secret, from the scheduler's own keys in the shared file (the gateway
 * reads only those two there). */
static int load_scheduler_secret(struct cm_conf_ctx *ctx, const struct cm_config *cfg,
                                 struct gw_config *gc)
{
    const struct cm_ynode *sched = cm_ynode_get(cfg->root, "scheduler");
    if (sched && sched->type != CM_YNODE_MAP)
        sched = NULL; /* the scheduler reports that */
    if (cm_conf_secret(ctx, sched, "scheduler", "api_secret", "api_secret_file",
                       CM_API_SECRET_MIN, CM_SECRET_TOKEN, &gc->scheduler_secret))
        return -EINVAL;
    if (gc->scheduler_secret)
        return 0;
    const struct cm_ynode *tpls = cm_ynode_get(cfg->root, "templates");
    for (size_t i = 0; i < cfg->n_templates; i++) {
        if (strcmp(cfg->templates[i].driver, "static") == 0)
            continue;
        return cm_conf_fail(ctx, sched ? sched : tpls->items[i], "scheduler", NULL,
                            "api_secret or api_secret_file is required: template '%s' is "
                            "started by a scheduler on demand, and the gateway must send the "
                            "scheduler API's secret",
                            cfg->templates[i].name);
    }
    return 0;
}

/* Mozilla's "intermediate" configuration (version 5.7): TLS 1.2 with forward-secret AEAD
 * suites only, TLS 1.3's own suites as OpenSSL orders them. */
#define GW_TLS_CIPHERS                                                                             \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"       \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define GW_TLS_CIPHERSUITES                                                                        \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* A file named in the config: relative names are taken from the config file's directory
 * (where a quick start keeps its certificates), else from the working directory when only
 * that has the file. */
static char *config_path(const struct cm_config *cfg, const char *name)
{
    if (name[0] == '/')
        return strdup(name);
    const char *slash = cfg->file ? strrchr(cfg->file, '/') : NULL;
    if (slash) {
        char *p = NULL;
        if (asprintf(&p, "%.*s/%s", (int)(slash - cfg->file), cfg->file, name) < 0)
            return NULL;
        if (access(p, F_OK) == 0 || access(name, F_OK) != 0)
            return p;
        free(p);
    }
    return strdup(name);
}

static int load_access_log(struct cm_conf_ctx *ctx, const struct cm_ynode *m,
                           struct gw_access_log *a)
{
    static const char *const keys[] = {"enabled", "sample", NULL};
    const char *p = "gateway.access_log";
    return cm_conf_keys(ctx, m, p, keys) || cm_conf_bool(ctx, m, p, "enabled", 0, &a->enabled) ||
                   cm_conf_u64(ctx, m, p, "sample", 1, 1, 1000000, &a->sample)
               ? -1
               : 0;
}

static int load_h2(struct cm_conf_ctx *ctx, const struct cm_ynode *m, struct gw_config *gc)
{
    static const char *const keys[] = {
        "enabled",    "max_concurrent_streams", "stream_window", "max_header_list",  "reset_burst",
        "reset_rate", "max_continuations",      "max_settings",  "max_outbound_ack", "send_timeout",
        NULL};
    const char *p = "gateway.h2";
    struct gw_h2_config *h = &gc->h2;
    uint64_t streams, window, hl, burst, rate, cont, settings, acks;
    if (cm_conf_keys(ctx, m, p, keys) || cm_conf_bool(ctx, m, p, "enabled", 1, &h->enabled) ||
        cm_conf_u64(ctx, m, p, "max_concurrent_streams", 100, 1, 10000, &streams) ||
        cm_conf_u64(ctx, m, p, "stream_window", 65535, 1024, 16 * 1024 * 1024, &window) ||
        cm_conf_u64(ctx, m, p, "max_header_list", gc->limits.max_header_bytes, 1024, 1024 * 1024,
                    &hl) ||
        cm_conf_u64(ctx, m, p, "reset_burst", 200, 1, 1000000, &burst) ||
        cm_conf_u64(ctx, m, p, "reset_rate", 100, 1, 1000000, &rate) ||
        cm_conf_u64(ctx, m, p, "max_continuations", 8, 1, 1024, &cont) ||
        cm_conf_u64(ctx, m, p, "max_settings", 32, 1, 1024, &settings) ||
        cm_conf_u64(ctx, m, p, "max_outbound_ack", 1000, 1, 1000000, &acks) ||
        cm_conf_duration(ctx, m, p, "send_timeout", 30 * CM_USEC_PER_SEC, 100 * CM_USEC_PER_MSEC,
                         3600 * CM_USEC_PER_SEC, &h->send_timeout))
        return -1;
    h->max_streams = (uint32_t)streams;
    h->stream_window = (uint32_t)window;
    h->max_header_list = (uint32_t)hl;
    h->reset_burst = (uint32_t)burst;
    h->reset_rate = (uint32_t)rate;
    h->max_continuations = (uint32_t)cont;
    h->max_settings = (uint32_t)settings;
    h->max_outbound_ack = (uint32_t)acks;
    return 0;
}

static int load_tls(struct cm_conf_ctx *ctx, const struct cm_config *cfg, const struct cm_ynode *m,
                    struct gw_config *gc)
{
    static const char *const keys[] = {
        "certificates",    "min_version",         "ciphers", "ciphersuites",
        "session_tickets", "ticket_key_lifetime", NULL};
    const char *p = "gateway.tls";
    struct gw_tls_config *t = &gc->tls;
    char *minv = NULL;
    if (cm_conf_keys(ctx, m, p, keys) || cm_conf_str(ctx, m, p, "min_version", "1.2", &minv) ||
        cm_conf_str(ctx, m, p, "ciphers", GW_TLS_CIPHERS, &t->ciphers) ||
        cm_conf_str(ctx, m, p, "ciphersuites", GW_TLS_CIPHERSUITES, &t->ciphersuites) ||
        cm_conf_bool(ctx, m, p, "session_tickets", 1, &t->session_tickets) ||
        cm_conf_duration(ctx, m, p, "ticket_key_lifetime", 3600 * CM_USEC_PER_SEC,
                         60 * CM_USEC_PER_SEC, 7 * 86400 * CM_USEC_PER_SEC,
                         &t->ticket_key_lifetime)) {
        free(minv);
        return -1;
    }
    if (strcmp(minv, "1.2") == 0 || strcmp(minv, "1.3") == 0) {
        t->min_version = minv[2] == '2' ? 0x0303 : 0x0304;
        free(minv);
    } else {
        free(minv);
        return cm_conf_fail(ctx, cm_ynode_get(m, "min_version"), p, "min_version",
                            "must be \"1.2\" or \"1.3\" (older versions are not offered)");
    }
    const struct cm_ynode *certs = cm_ynode_get(m, "certificates");
    if (!*gc->tls_listen) {
        if (certs)
            return cm_conf_fail(ctx, certs, p, "certificates",
                                "certificates without gateway.tls_listen: set the TLS listener's "
                                "address too");
        return 0;
    }
    if (!certs || certs->type != CM_YNODE_SEQ || certs->n == 0)
        return cm_conf_fail(ctx, certs ? certs : m, p, "certificates",
                            "gateway.tls_listen needs at least one certificate "
                            "([{cert: fullchain.pem, key: key.pem}])");
    if (certs->n > 256)
        return cm_conf_fail(ctx, certs, p, "certificates", "at most 256 certificates");
    t->certs = calloc(certs->n, sizeof(*t->certs));
    if (!t->certs)
        return cm_conf_fail(ctx, certs, p, "certificates", "out of memory");
    for (size_t i = 0; i < certs->n; i++) {
        static const char *const ckeys[] = {"cert", "key", "ocsp", NULL};
        const struct cm_ynode *c = certs->items[i];
        char cp[64];
        snprintf(cp, sizeof(cp), "gateway.tls.certificates[%zu]", i);
        struct gw_tls_cert *x = &t->certs[i];
        t->n_certs++;
        char *cert = NULL, *key = NULL, *ocsp = NULL;
        if (!c || c->type != CM_YNODE_MAP)
            return cm_conf_fail(ctx, c ? c : certs, p, "certificates",
                                "each certificate is a map {cert: ..., key: ...}");
        int rc = cm_conf_keys(ctx, c, cp, ckeys) || cm_conf_str(ctx, c, cp, "cert", "", &cert) ||
                 cm_conf_str(ctx, c, cp, "key", "", &key) ||
                 cm_conf_str(ctx, c, cp, "ocsp", "", &ocsp);
        if (!rc && (!*cert || !*key))
            rc = cm_conf_fail(ctx, c, cp, *cert ? "key" : "cert",
                              "a certificate needs both cert (its chain, PEM) and key (PEM)");
        if (!rc) {
            x->cert = config_path(cfg, cert);
            x->key = config_path(cfg, key);
            x->ocsp = *ocsp ? config_path(cfg, ocsp) : NULL;
            if (!x->cert || !x->key || (*ocsp && !x->ocsp))
                rc = cm_conf_fail(ctx, c, cp, "cert", "out of memory");
        }
        free(cert);
        free(key);
        free(ocsp);
        if (rc)
            return -1;
    }
    return 0;
}

struct gw_config *gw_config_load(const struct cm_config *cfg, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "listen",     "admin_listen", "health_listen",  "workers",        "tls_listen",
        "tls",        "access_log",   "expose_headers", "cache_ttl",      "activity_flush",
        "host_stale", "retry_after",  "limits",         "shutdown_grace", "routes",
        "h2c",        "h2",           "admin", /* gw_admin_limits_load() */
        NULL};
    struct cm_conf_ctx ctx = {.file = cfg->file, .err = err, .errlen = errlen};
    struct gw_config *gc = calloc(1, sizeof(*gc));
    if (!gc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    gc->common = cfg;
    const struct cm_ynode *m = cm_ynode_get(cfg->root, "gateway");
    const char *p = "gateway";
    uint64_t workers, retry_after;
    if (cm_conf_keys(&ctx, m, p, keys) ||
        cm_conf_str(&ctx, m, p, "listen", "127.0.0.1:8080", &gc->listen) ||
        cm_conf_str(&ctx, m, p, "admin_listen", "127.0.0.1:9090", &gc->admin_listen) ||
        cm_conf_str(&ctx, m, p, "health_listen", "", &gc->health_listen) ||
        cm_conf_str(&ctx, m, p, "tls_listen", "", &gc->tls_listen) ||
        cm_conf_u64(&ctx, m, p, "workers", 1, 1, 256, &workers) ||
        cm_conf_bool(&ctx, m, p, "expose_headers", 1, &gc->expose_headers) ||
        cm_conf_duration(&ctx, m, p, "cache_ttl", 5 * CM_USEC_PER_SEC, 0, 3600 * CM_USEC_PER_SEC,
                         &gc->cache_ttl) ||
        cm_conf_duration(&ctx, m, p, "activity_flush", CM_USEC_PER_SEC, 10 * CM_USEC_PER_MSEC,
                         600 * CM_USEC_PER_SEC, &gc->activity_flush) ||
        cm_conf_duration(&ctx, m, p, "host_stale", 5 * CM_USEC_PER_SEC, 100 * CM_USEC_PER_MSEC,
                         3600 * CM_USEC_PER_SEC, &gc->host_stale) ||
        cm_conf_u64(&ctx, m, p, "retry_after", 1, 0, 3600, &retry_after) ||
        cm_conf_duration(&ctx, m, p, "shutdown_grace", 5 * CM_USEC_PER_SEC, 0,
                         3600 * CM_USEC_PER_SEC, &gc->shutdown_grace) ||
        load_limits(&ctx, cm_ynode_get(m, "limits"), &gc->limits) ||
        load_tls(&ctx, cfg, cm_ynode_get(m, "tls"), gc) ||
        load_access_log(&ctx, cm_ynode_get(m, "access_log"), &gc->access_log) ||
        cm_conf_bool(&ctx, m, p, "h2c", 1, &gc->h2c) || load_h2(&ctx, cm_ynode_get(m, "h2"), gc))
        goto fail;
    gc->workers = (uint32_t)workers;
    gc->tls.alpn_h2 = gc->h2.enabled;
    gc->retry_after = (uint32_t)retry_after;
    const struct cm_ynode *routes = cm_ynode_get(m, "routes");
    if (routes && routes->type != CM_YNODE_SEQ) {
        cm_conf_fail(&ctx, routes, p, "routes", "must be a list");
        goto fail;
    }
    size_t n = routes ? routes->n : 0;
    gc->routes = calloc(n ? n : 1, sizeof(*gc->routes));
    if (!gc->routes) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        gc->n_routes++;
        if (load_route(&ctx, cfg, routes->items[i], i, &gc->routes[i]))
            goto fail;
    }
    if (n == 0) {
        /* No routes: one catch-all route for the default tenant and first template. */
        struct cm_ynode empty = {.type = CM_YNODE_MAP, .line = m ? m->line : 1, .col = 1};
        gc->n_routes = 1;
        if (load_route(&ctx, cfg, &empty, 0, &gc->routes[0]))
            goto fail;
    }
    gc->tenant_rates = calloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof(*gc->tenant_rates));
    if (!gc->tenant_rates) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < cfg->n_tenants; i++)
        gw_rate_init(&gc->tenant_rates[i], cfg->tenants[i].requests_per_second,
                     cfg->tenants[i].requests_burst);
    for (size_t i = 0; i < gc->n_routes; i++) {
        struct gw_route *r = &gc->routes[i];
        const struct cm_tenant *t = cm_config_tenant(cfg, r->tenant); /* checked: load_route */
        r->tenant_idx = t ? (size_t)(t - cfg->tenants) : 0;
        r->rate = t && t->requests_per_second ? &gc->tenant_rates[r->tenant_idx] : NULL;
    }
    if (load_scheduler_secret(&ctx, cfg, gc))
        goto fail;
    return gc;
fail:
    gw_config_free(gc);
    return NULL;
}

void gw_config_free(struct gw_config *gc)
{
    if (!gc)
        return;
    for (size_t i = 0; i < gc->n_routes; i++) {
        struct gw_route *r = &gc->routes[i];
        free(r->name);
        free(r->host);
        free(r->path_prefix);
        free(r->tenant);
        free(r->template_name);
        cm_strv_free(r->key_headers);
        free(r->cookie);
        free(r->preview_domain);
        cm_strv_free(r->cors_origins);
    }
    free(gc->routes);
    free(gc->tenant_rates);
    cm_secret_free(gc->scheduler_secret);
    free(gc->listen);
    free(gc->admin_listen);
    free(gc->health_listen);
    free(gc->tls_listen);
    for (size_t i = 0; i < gc->tls.n_certs; i++) {
        free(gc->tls.certs[i].cert);
        free(gc->tls.certs[i].key);
        free(gc->tls.certs[i].ocsp);
    }
    free(gc->tls.certs);
    free(gc->tls.ciphers);
    free(gc->tls.ciphersuites);
    free(gc);
}

const struct gw_route *gw_config_route(const struct gw_config *gc, const char *host,
                                       size_t host_len, const char *path, size_t path_len)
{
    /* Host without its port, compared case-insensitively. */
    if (host && host_len && host[0] == '[') { /* "[v6]:port" */
        const char *close = memchr(host, ']', host_len);
        if (close)
            host_len = (size_t)(close - host) + 1;
    } else if (host) {
        const char *colon = memchr(host, ':', host_len);
        if (colon)
            host_len = (size_t)(colon - host);
    }
    for (size_t i = 0; i < gc->n_routes; i++) {
        const struct gw_route *r = &gc->routes[i];
        if (r->host) {
            if (!host || strlen(r->host) != host_len || strncasecmp(r->host, host, host_len))
                continue;
        }
        if (r->preview_domain && host && gw_config_preview(r, host, host_len, NULL, NULL, NULL))
            return r;
        size_t pl = strlen(r->path_prefix);
        if (path_len < pl || memcmp(path, r->path_prefix, pl) != 0)
            continue;
        return r;
    }
    return NULL;
}

int gw_config_preview(const struct gw_route *r, const char *host, size_t host_len,
                      uint16_t *ret_port, const char **ret_key, size_t *ret_key_len)
{
    if (!r->preview_domain || !host)
        return 0;
    const char *colon = memchr(host, ':', host_len);
    if (colon)
        host_len = (size_t)(colon - host);
    size_t dl = strlen(r->preview_domain);
    /* "<port>-<key>." + domain */
    if (host_len < dl + 4 || host[host_len - dl - 1] != '.' ||
        strncasecmp(host + host_len - dl, r->preview_domain, dl) != 0)
        return 0;
    size_t label_len = host_len - dl - 1;
    if (memchr(host, '.', label_len))
        return 0;
    unsigned port = 0;
    size_t i = 0;
    while (i < label_len && i < 6 && isdigit((unsigned char)host[i]))
        port = port * 10 + (unsigned)(host[i++] - '0');
    if (i == 0 || i >= label_len || host[i] != '-' || port == 0 || port > 65535)
        return 0;
    if (ret_port)
        *ret_port = (uint16_t)port;
    if (ret_key) {
        *ret_key = host + i + 1;
        *ret_key_len = label_len - i - 1;
    }
    return label_len - i - 1 > 0;
}
