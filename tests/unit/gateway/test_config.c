/* Unit tests of gateway/config.c: the "gateway:" section of the config file. Every key with its
 * default and a non-default value, every refusal with its exact message and the line:column of
 * the offending node, the catch-all route, and route selection by host and path. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/config.h"
#include "gateway/config.h"
#include "tests/harness/test.h"

#define S CM_USEC_PER_SEC
#define MS CM_USEC_PER_MSEC
#define KiB 1024ull
#define MiB (1024ull * 1024)

#define SECRET "0123456789abcdef0123456789abcdef"

/* The shared sections every test config ends with (the gateway part comes first, so its line
 * numbers are easy to read in the tests). */
#define BASE                                                                                       \
    "tenants:\n"                                                                                   \
    "  - name: default\n"                                                                          \
    "  - name: acme\n"                                                                             \
    "templates:\n"                                                                                 \
    "  - name: echo\n"                                                                             \
    "    app: {command: [/bin/echo-app], port: 8000}\n"                                            \
    "  - name: other\n"                                                                            \
    "    app: {command: x}\n"                                                                      \
    "scheduler:\n"                                                                                 \
    "  api_secret: " SECRET "\n"

static char path[4096];
static char doc[16384];
static struct cm_config *cfg;

/* Loads <text> as the whole file; the shared sections must load. */
static struct gw_config *load_doc(const char *text, char *err, size_t errlen)
{
    snprintf(doc, sizeof(doc), "%s", text);
    snprintf(path, sizeof(path), "%s", test_write_file("berth.yaml", doc, (size_t)-1));
    char cerr[1024];
    cfg = cm_config_load(path, cerr, sizeof(cerr));
    CHECK_MSG(cfg != NULL, "shared sections refused: %s", cerr);
    err[0] = '\0';
    return gw_config_load(cfg, err, errlen);
}

static struct gw_config *load(const char *gateway_part, char *err, size_t errlen)
{
    char text[16384];
    snprintf(text, sizeof(text), "%s%s", gateway_part, BASE);
    return load_doc(text, err, errlen);
}

static struct gw_config *load_ok(const char *gateway_part)
{
    char err[1024];
    struct gw_config *gc = load(gateway_part, err, sizeof(err));
    CHECK_MSG(gc != NULL, "refused: %s", err);
    return gc;
}

static void done(struct gw_config *gc)
{
    gw_config_free(gc);
    cm_config_free(cfg);
    cfg = NULL;
}

/* Line and column (1-based) of doc[off]. */
static void position(size_t off, unsigned *line, unsigned *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (doc[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* <gateway_part> + BASE must be refused with "<file>:<line>:<col>: <want>", the position being
 * where the one '|' stands in <gateway_part> (the '|' is removed before loading). */
#define EXPECT_ERROR(gateway_part, want) expect_error(__FILE__, __LINE__, gateway_part, want)
static void expect_error(const char *file, int line, const char *gateway_part, const char *want)
{
    const char *bar = strchr(gateway_part, '|');
    if (!bar || strchr(bar + 1, '|'))
        test_fail(file, line, "test bug: not exactly one '|' in \"%s\"", gateway_part);
    char part[8192];
    snprintf(part, sizeof(part), "%.*s%s", (int)(bar - gateway_part), gateway_part, bar + 1);
    char err[1024];
    struct gw_config *gc = load(part, err, sizeof(err));
    if (gc) {
        done(gc);
        test_fail(file, line, "accepted, wanted %s", want);
    }
    cm_config_free(cfg);
    cfg = NULL;
    unsigned l, c;
    position((size_t)(bar - gateway_part), &l, &c);
    char full[8192];
    snprintf(full, sizeof(full), "%s:%u:%u: %s", path, l, c, want);
    if (strcmp(err, full) != 0)
        test_fail(file, line, "error\n#   got:  %s\n#   want: %s", err, full);
}

/* Refused with "<file>:<line>:<col>: <want>" where the position is a real one (not 0:0). */
#define EXPECT_ERROR_SOMEWHERE(gateway_part, want)                                                 \
    expect_error_somewhere(__FILE__, __LINE__, gateway_part, want)
static void expect_error_somewhere(const char *file, int line, const char *gateway_part,
                                   const char *want)
{
    char err[1024];
    struct gw_config *gc = load(gateway_part, err, sizeof(err));
    if (gc) {
        done(gc);
        test_fail(file, line, "accepted, wanted %s", want);
    }
    cm_config_free(cfg);
    cfg = NULL;
    unsigned l = 0, c = 0;
    char rest[1024] = "";
    size_t pl = strlen(path);
    if (strncmp(err, path, pl) != 0 || sscanf(err + pl, ":%u:%u: %1023[^\n]", &l, &c, rest) != 3)
        test_fail(file, line, "error \"%s\" is not file:line:col: message", err);
    if (strcmp(rest, want) != 0)
        test_fail(file, line, "error\n#   got:  %s\n#   want: <pos>: %s", err, want);
    if (l == 0 || c == 0)
        test_fail(file, line, "error \"%s\" has no position (line %u col %u)", err, l, c);
}

/* ------------------------------------------------------------------ defaults */

static void check_defaults(const struct gw_config *gc)
{
    CHECK_STR_EQ(gc->listen, "127.0.0.1:8080");
    CHECK_STR_EQ(gc->admin_listen, "127.0.0.1:9090");
    CHECK_UINT_EQ(gc->workers, 1);
    CHECK_INT_EQ(gc->expose_headers, 1);
    CHECK_UINT_EQ(gc->cache_ttl, 5 * S);
    CHECK_UINT_EQ(gc->activity_flush, 1 * S);
    CHECK_UINT_EQ(gc->host_stale, 5 * S);
    CHECK_UINT_EQ(gc->retry_after, 1);
    const struct gw_limits *l = &gc->limits;
    CHECK_UINT_EQ(l->max_header_bytes, 16 * KiB);
    CHECK_UINT_EQ(l->max_headers, 96);
    CHECK_UINT_EQ(l->max_connections, 20000);
    CHECK_UINT_EQ(l->header_timeout, 10 * S);
    CHECK_UINT_EQ(l->keepalive_timeout, 75 * S);
    CHECK_UINT_EQ(l->connect_timeout, 5 * S);
    CHECK_UINT_EQ(l->response_timeout, 300 * S);
    CHECK_UINT_EQ(l->stream_idle_timeout, 3600 * S);
    CHECK_UINT_EQ(l->start_timeout, 30 * S);
    CHECK_UINT_EQ(l->resume_timeout, 10 * S);
    CHECK_UINT_EQ(l->buffer_high, 256 * KiB);
    CHECK_UINT_EQ(l->buffer_low, 64 * KiB);
    CHECK_UINT_EQ(l->upstream_idle_per_instance, 32);
    CHECK_UINT_EQ(l->upstream_idle_timeout, 60 * S);
    CHECK_UINT_EQ(l->max_chunk_ext_bytes, 256);
}

static void check_default_route(const struct gw_config *gc, const struct gw_route *r)
{
    CHECK_NULL(r->host);
    CHECK_STR_EQ(r->path_prefix, "/");
    CHECK_STR_EQ(r->tenant, "default");
    CHECK_STR_EQ(r->template_name, "echo"); /* the first template */
    CHECK(r->tpl == cm_config_template(gc->common, "echo"));
    CHECK_NOT_NULL(r->key_headers);
    CHECK_STR_EQ(r->key_headers[0], "x-fc-session-id");
    CHECK_NULL(r->key_headers[1]);
    CHECK_STR_EQ(r->cookie, "berth_session");
    CHECK_INT_EQ(r->no_key, GW_NO_KEY_NEW);
    CHECK_UINT_EQ(r->max_body, 64 * MiB);
    CHECK_INT_EQ(r->auth, 0);
    CHECK_INT_EQ(r->upstream_host_client, 0);
    CHECK_UINT_EQ(r->n_cors_origins, 0);
    CHECK_UINT_EQ(r->cors_max_age, 600);
    CHECK_INT_EQ(r->cors_preflight, 1); /* mcp: true */
}

TEST(no_gateway_section_gives_every_default)
{
    struct gw_config *gc = load_ok("");
    CHECK(gc->common == cfg);
    check_defaults(gc);
    CHECK_UINT_EQ(gc->n_routes, 1);
    CHECK_STR_EQ(gc->routes[0].name, "route0");
    check_default_route(gc, &gc->routes[0]);
    done(gc);
}

TEST(empty_gateway_mapping_and_nulls_give_defaults)
{
    struct gw_config *gc = load_ok("gateway: {}\n");
    check_defaults(gc);
    done(gc);
    gc = load_ok("gateway:\n  listen: ~\n  workers:\n  cache_ttl: null\n  limits:\n"
                 "    max_headers: ~\n");
    check_defaults(gc);
    done(gc);
}

TEST(route_keys_default)
{
    struct gw_config *gc = load_ok("gateway:\n  routes:\n    - {}\n    - name: named\n");
    CHECK_UINT_EQ(gc->n_routes, 2);
    CHECK_STR_EQ(gc->routes[0].name, "route0");
    CHECK_STR_EQ(gc->routes[1].name, "named");
    check_default_route(gc, &gc->routes[0]);
    check_default_route(gc, &gc->routes[1]);
    done(gc);
}

TEST(sample_config_documents_the_defaults)
{
    /* deploy/config/berth.yaml lists every key "with its default": loading it must give what
     * an empty gateway section gives. */
    const char *sample = getenv("BERTH_SAMPLE_CONFIG");
    if (!sample)
        test_skip("BERTH_SAMPLE_CONFIG not set (run through meson test)");
    char err[1024];
    /* Its api_secret_file is made at install time: the test gives it one of its own. */
    FILE *f = fopen(sample, "r");
    CHECK_NOT_NULL(f);
    static char text[65536], out[65536 + 4096];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    char *line = strstr(text, "  api_secret_file: ");
    CHECK_MSG(line != NULL, "the sample config has no api_secret_file");
    char *eol = strchr(line, '\n');
    CHECK_NOT_NULL(eol);
    char secret_path[4200];
    snprintf(secret_path, sizeof(secret_path), "%s",
             test_write_file("api_secret", SECRET "\n", (size_t)-1));
    CHECK_INT_EQ(chmod(secret_path, 0600), 0);
    snprintf(out, sizeof(out), "%.*s  api_secret_file: %s%s", (int)(line - text), text, secret_path,
             eol);
    char copy[4200];
    snprintf(copy, sizeof(copy), "%s", test_write_file("sample.yaml", out, (size_t)-1));
    struct cm_config *c = cm_config_load(copy, err, sizeof(err));
    CHECK_MSG(c != NULL, "%s", err);
    struct gw_config *gc = gw_config_load(c, err, sizeof(err));
    CHECK_MSG(gc != NULL, "%s", err);
    check_defaults(gc);
    CHECK_UINT_EQ(gc->n_routes, 1);
    CHECK_STR_EQ(gc->routes[0].name, "default");
    check_default_route(gc, &gc->routes[0]);
    CHECK_STR_EQ(gc->scheduler_secret, SECRET);
    gw_config_free(gc);
    cm_config_free(c);
}

/* ------------------------------------------------------------------ every key */

TEST(every_key_with_a_non_default_value)
{
    struct gw_config *gc =
        load_ok("gateway:\n"
                "  listen: 0.0.0.0:18080\n"
                "  admin_listen: 127.0.0.1:19090\n"
                "  workers: 4\n"
                "  expose_headers: false\n"
                "  cache_ttl: 0\n"
                "  activity_flush: 250ms\n"
                "  host_stale: 2m\n"
                "  retry_after: 3600\n"
                "  admin: {max_body: 2MiB}\n"
                "  limits:\n"
                "    max_header_bytes: 1MiB\n"
                "    max_headers: 8\n"
                "    max_connections: 1000000\n"
                "    header_timeout: 100ms\n"
                "    keepalive_timeout: 1h\n"
                "    connect_timeout: 10ms\n"
                "    response_timeout: 1d\n"
                "    stream_idle_timeout: 7d\n"
                "    start_timeout: 1500ms\n"
                "    resume_timeout: 2s\n"
                "    buffer_high: 64MiB\n"
                "    buffer_low: 0\n"
                "    upstream_idle_per_instance: 0\n"
                "    upstream_idle_timeout: 90s\n"
                "    max_chunk_ext_bytes: 0\n"
                "  routes:\n"
                "    - name: api\n"
                "      host: API.Example.COM\n"
                "      path_prefix: /v2/\n"
                "      tenant: acme\n"
                "      template: other\n"
                "      key_headers: [X-Agent-Id, x-fc-session-id]\n"
                "      cookie: sid\n"
                "      no_key: reject\n"
                "      max_body: 1KiB\n"
                "      auth: yes\n"
                "      upstream_host: client\n"
                "      cors_origins: [HTTPS://App.Example.com, 'http://[::1]:8080', '*']\n"
                "      cors_max_age: 0\n"
                "      mcp: false\n"
                "    - path_prefix: /browser\n"
                "      key_headers: X-One\n"
                "      no_key: issue\n"
                "      max_body: 0\n"
                "    - key_headers: []\n"
                "      cookie: ''\n"
                "      max_body: 1TiB\n");
    CHECK_STR_EQ(gc->listen, "0.0.0.0:18080");
    CHECK_STR_EQ(gc->admin_listen, "127.0.0.1:19090");
    CHECK_UINT_EQ(gc->workers, 4);
    CHECK_INT_EQ(gc->expose_headers, 0);
    CHECK_UINT_EQ(gc->cache_ttl, 0);
    CHECK_UINT_EQ(gc->activity_flush, 250 * MS);
    CHECK_UINT_EQ(gc->host_stale, 120 * S);
    CHECK_UINT_EQ(gc->retry_after, 3600);
    const struct gw_limits *l = &gc->limits;
    CHECK_UINT_EQ(l->max_header_bytes, 1 * MiB);
    CHECK_UINT_EQ(l->max_headers, 8);
    CHECK_UINT_EQ(l->max_connections, 1000000);
    CHECK_UINT_EQ(l->header_timeout, 100 * MS);
    CHECK_UINT_EQ(l->keepalive_timeout, 3600 * S);
    CHECK_UINT_EQ(l->connect_timeout, 10 * MS);
    CHECK_UINT_EQ(l->response_timeout, 86400 * S);
    CHECK_UINT_EQ(l->stream_idle_timeout, 7 * 86400 * S);
    CHECK_UINT_EQ(l->start_timeout, 1500 * MS);
    CHECK_UINT_EQ(l->resume_timeout, 2 * S);
    CHECK_UINT_EQ(l->buffer_high, 64 * MiB);
    CHECK_UINT_EQ(l->buffer_low, 0);
    CHECK_UINT_EQ(l->upstream_idle_per_instance, 0);
    CHECK_UINT_EQ(l->upstream_idle_timeout, 90 * S);
    CHECK_UINT_EQ(l->max_chunk_ext_bytes, 0);

    CHECK_UINT_EQ(gc->n_routes, 3);
    const struct gw_route *r = &gc->routes[0];
    CHECK_STR_EQ(r->name, "api");
    CHECK_STR_EQ(r->host, "api.example.com"); /* lower-cased */
    CHECK_STR_EQ(r->path_prefix, "/v2/");
    CHECK_STR_EQ(r->tenant, "acme");
    CHECK_STR_EQ(r->template_name, "other");
    CHECK(r->tpl == cm_config_template(cfg, "other"));
    CHECK_STR_EQ(r->key_headers[0], "x-agent-id"); /* lower-cased */
    CHECK_STR_EQ(r->key_headers[1], "x-fc-session-id");
    CHECK_NULL(r->key_headers[2]);
    CHECK_STR_EQ(r->cookie, "sid");
    CHECK_INT_EQ(r->no_key, GW_NO_KEY_REJECT);
    CHECK_UINT_EQ(r->max_body, 1 * KiB);
    CHECK_INT_EQ(r->auth, 1);
    CHECK_INT_EQ(r->upstream_host_client, 1);
    CHECK_UINT_EQ(r->n_cors_origins, 3);
    CHECK_STR_EQ(r->cors_origins[0], "https://app.example.com"); /* lower-cased */
    CHECK_STR_EQ(r->cors_origins[1], "http://[::1]:8080");
    CHECK_STR_EQ(r->cors_origins[2], "*");
    CHECK_UINT_EQ(r->cors_max_age, 0);
    CHECK_INT_EQ(r->cors_preflight, 1); /* mcp: false, but origins listed */
    r = &gc->routes[1];
    CHECK_STR_EQ(r->name, "route1");
    CHECK_STR_EQ(r->key_headers[0], "x-one"); /* a scalar is a list of one */
    CHECK_NULL(r->key_headers[1]);
    CHECK_INT_EQ(r->no_key, GW_NO_KEY_ISSUE);
    CHECK_UINT_EQ(r->max_body, 0);
    CHECK_STR_EQ(r->template_name, "echo");
    r = &gc->routes[2];
    CHECK_NOT_NULL(r->key_headers);
    CHECK_NULL(r->key_headers[0]); /* headers switched off */
    CHECK_NULL(r->cookie);         /* cookie: '' switches the cookie off */
    CHECK_UINT_EQ(r->max_body, 1ull << 40);
    done(gc);
}

TEST(bounds_are_inclusive)
{
    struct gw_config *gc = load_ok("gateway:\n  workers: 256\n  retry_after: 0\n"
                                   "  activity_flush: 10ms\n  host_stale: 1h\n  cache_ttl: 1h\n"
                                   "  limits:\n    max_header_bytes: 1KiB\n    max_headers: 1000\n"
                                   "    max_connections: 1\n    header_timeout: 600s\n"
                                   "    keepalive_timeout: 100ms\n    connect_timeout: 600s\n"
                                   "    response_timeout: 100ms\n    stream_idle_timeout: 100ms\n"
                                   "    start_timeout: 1h\n    buffer_high: 4096\n"
                                   "    buffer_low: 4095\n    upstream_idle_per_instance: 10000\n"
                                   "    upstream_idle_timeout: 1h\n"
                                   "    max_chunk_ext_bytes: 4KiB\n");
    CHECK_UINT_EQ(gc->workers, 256);
    CHECK_UINT_EQ(gc->retry_after, 0);
    CHECK_UINT_EQ(gc->activity_flush, 10 * MS);
    CHECK_UINT_EQ(gc->host_stale, 3600 * S);
    CHECK_UINT_EQ(gc->cache_ttl, 3600 * S);
    CHECK_UINT_EQ(gc->limits.max_header_bytes, 1024);
    CHECK_UINT_EQ(gc->limits.max_headers, 1000);
    CHECK_UINT_EQ(gc->limits.max_connections, 1);
    CHECK_UINT_EQ(gc->limits.header_timeout, 600 * S);
    CHECK_UINT_EQ(gc->limits.buffer_high, 4096);
    CHECK_UINT_EQ(gc->limits.buffer_low, 4095);
    CHECK_UINT_EQ(gc->limits.upstream_idle_per_instance, 10000);
    CHECK_UINT_EQ(gc->limits.max_chunk_ext_bytes, 4096);
    done(gc);
}

/* ------------------------------------------------------------------ refusals */

TEST(gateway_section_errors)
{
    EXPECT_ERROR("gateway: |5\n", "gateway: must be a mapping");
    EXPECT_ERROR("gateway: |[a]\n", "gateway: must be a mapping");
    EXPECT_ERROR("gateway:\n  |bogus: 1\n", "gateway.bogus: unknown key");
    EXPECT_ERROR("gateway:\n  workers: 1\n  |Listen: x\n", "gateway.Listen: unknown key");
    EXPECT_ERROR("gateway:\n  listen: |[a]\n", "gateway.listen: must be a scalar");
    EXPECT_ERROR("gateway:\n  admin_listen: |{a: 1}\n", "gateway.admin_listen: must be a scalar");
    EXPECT_ERROR("gateway:\n  workers: |0\n", "gateway.workers: must be 1..256");
    EXPECT_ERROR("gateway:\n  workers: |257\n", "gateway.workers: must be 1..256");
    EXPECT_ERROR("gateway:\n  workers: |two\n", "gateway.workers: must be a whole number");
    EXPECT_ERROR("gateway:\n  workers: |-1\n", "gateway.workers: must be a whole number");
    EXPECT_ERROR("gateway:\n  workers: |1.5\n", "gateway.workers: must be a whole number");
    EXPECT_ERROR("gateway:\n  expose_headers: |maybe\n",
                 "gateway.expose_headers: must be true or false");
    EXPECT_ERROR("gateway:\n  cache_ttl: |5 s\n",
                 "gateway.cache_ttl: must be a duration such as 250ms, 10s, 5m, 2h");
    EXPECT_ERROR("gateway:\n  cache_ttl: |2h\n", "gateway.cache_ttl: must be 0ms..3600000ms");
    EXPECT_ERROR("gateway:\n  activity_flush: |5ms\n",
                 "gateway.activity_flush: must be 10ms..600000ms");
    EXPECT_ERROR("gateway:\n  activity_flush: |11m\n",
                 "gateway.activity_flush: must be 10ms..600000ms");
    EXPECT_ERROR("gateway:\n  host_stale: |99ms\n", "gateway.host_stale: must be 100ms..3600000ms");
    EXPECT_ERROR("gateway:\n  retry_after: |3601\n", "gateway.retry_after: must be 0..3600");
    EXPECT_ERROR("gateway:\n  retry_after: |1s\n", "gateway.retry_after: must be a whole number");
}

TEST(limits_errors)
{
    EXPECT_ERROR("gateway:\n  limits: |1\n", "gateway.limits: must be a mapping");
    EXPECT_ERROR("gateway:\n  limits:\n    |foo: 1\n", "gateway.limits.foo: unknown key");
    EXPECT_ERROR("gateway:\n  limits:\n    max_header_bytes: |512\n",
                 "gateway.limits.max_header_bytes: must be 1024..1048576 bytes");
    EXPECT_ERROR("gateway:\n  limits:\n    max_header_bytes: |2MiB\n",
                 "gateway.limits.max_header_bytes: must be 1024..1048576 bytes");
    EXPECT_ERROR("gateway:\n  limits:\n    max_header_bytes: |lots\n",
                 "gateway.limits.max_header_bytes: must be a size such as 4096, 64KiB, 16MiB");
    EXPECT_ERROR("gateway:\n  limits:\n    max_headers: |7\n",
                 "gateway.limits.max_headers: must be 8..1000");
    EXPECT_ERROR("gateway:\n  limits:\n    max_headers: |1001\n",
                 "gateway.limits.max_headers: must be 8..1000");
    EXPECT_ERROR("gateway:\n  limits:\n    max_connections: |0\n",
                 "gateway.limits.max_connections: must be 1..1000000");
    EXPECT_ERROR("gateway:\n  limits:\n    header_timeout: |99ms\n",
                 "gateway.limits.header_timeout: must be 100ms..600000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    header_timeout: |10 minutes\n",
                 "gateway.limits.header_timeout: must be a duration such as 250ms, 10s, 5m, 2h");
    EXPECT_ERROR("gateway:\n  limits:\n    keepalive_timeout: |2h\n",
                 "gateway.limits.keepalive_timeout: must be 100ms..3600000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    connect_timeout: |9ms\n",
                 "gateway.limits.connect_timeout: must be 10ms..600000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    response_timeout: |2d\n",
                 "gateway.limits.response_timeout: must be 100ms..86400000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    stream_idle_timeout: |8d\n",
                 "gateway.limits.stream_idle_timeout: must be 100ms..604800000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    start_timeout: |50ms\n",
                 "gateway.limits.start_timeout: must be 100ms..3600000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    resume_timeout: |11m\n",
                 "gateway.limits.resume_timeout: must be 100ms..600000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    buffer_high: |1KiB\n",
                 "gateway.limits.buffer_high: must be 4096..67108864 bytes");
    EXPECT_ERROR("gateway:\n  limits:\n    buffer_low: |65MiB\n",
                 "gateway.limits.buffer_low: must be 0..67108864 bytes");
    EXPECT_ERROR("gateway:\n  limits:\n    upstream_idle_per_instance: |10001\n",
                 "gateway.limits.upstream_idle_per_instance: must be 0..10000");
    EXPECT_ERROR("gateway:\n  limits:\n    upstream_idle_timeout: |50ms\n",
                 "gateway.limits.upstream_idle_timeout: must be 100ms..3600000ms");
    EXPECT_ERROR("gateway:\n  limits:\n    max_chunk_ext_bytes: |4097\n",
                 "gateway.limits.max_chunk_ext_bytes: must be 0..4096 bytes");
    EXPECT_ERROR("gateway:\n  limits:\n    buffer_high: 64KiB\n    buffer_low: |64KiB\n",
                 "gateway.limits.buffer_low: must be below buffer_high");
    EXPECT_ERROR("gateway:\n  limits:\n    buffer_low: |1MiB\n",
                 "gateway.limits.buffer_low: must be below buffer_high");
}

TEST(buffer_high_below_the_default_low_names_a_position)
{
    /* Only buffer_high is written (below the 64KiB default of buffer_low): the message must
     * still point into the file, not at 0:0. */
    EXPECT_ERROR_SOMEWHERE("gateway:\n  limits:\n    buffer_high: 8KiB\n",
                           "gateway.limits.buffer_low: must be below buffer_high");
}

TEST(routes_errors)
{
    EXPECT_ERROR("gateway:\n  routes: |5\n", "gateway.routes: must be a list");
    EXPECT_ERROR("gateway:\n  routes: |{a: 1}\n", "gateway.routes: must be a list");
    EXPECT_ERROR("gateway:\n  routes: [|5]\n", "gateway.routes[0]: must be a mapping");
    EXPECT_ERROR("gateway:\n  routes:\n    - {}\n    - |[x]\n",
                 "gateway.routes[1]: must be a mapping");
    EXPECT_ERROR("gateway:\n  routes:\n    - |bogus: 1\n", "gateway.routes[0].bogus: unknown key");
    EXPECT_ERROR("gateway:\n  routes:\n    - name: |[a]\n",
                 "gateway.routes[0].name: must be a scalar");
    EXPECT_ERROR("gateway:\n  routes:\n    - no_key: |maybe\n",
                 "gateway.routes[0].no_key: must be new, reject or issue");
    EXPECT_ERROR("gateway:\n  routes:\n    - {}\n    - no_key: |NEW\n",
                 "gateway.routes[1].no_key: must be new, reject or issue");
    EXPECT_ERROR("gateway:\n  routes:\n    - path_prefix: |api\n",
                 "gateway.routes[0].path_prefix: must start with /");
    EXPECT_ERROR(
        "gateway:\n  routes:\n    - cookie: |\"a b\"\n",
        "gateway.routes[0].cookie: must be a cookie name (no spaces, ;, =, quotes; at most "
        "128 bytes)");
    EXPECT_ERROR(
        "gateway:\n  routes:\n    - cookie: |\"a;b\"\n",
        "gateway.routes[0].cookie: must be a cookie name (no spaces, ;, =, quotes; at most "
        "128 bytes)");
    EXPECT_ERROR(
        "gateway:\n  routes:\n    - cookie: |a=b\n",
        "gateway.routes[0].cookie: must be a cookie name (no spaces, ;, =, quotes; at most "
        "128 bytes)");
    EXPECT_ERROR(
        "gateway:\n  routes:\n    - cookie: |"
        "a23456789012345678901234567890123456789012345678901234567890123456789012345"
        "6789012345678901234567890123456789012345678901234567890\n",
        "gateway.routes[0].cookie: must be a cookie name (no spaces, ;, =, quotes; at most "
        "128 bytes)");
    EXPECT_ERROR("gateway:\n  routes:\n    - key_headers: |[\"x y\"]\n",
                 "gateway.routes[0].key_headers: 'x y' is not a header name");
    EXPECT_ERROR("gateway:\n  routes:\n    - key_headers: |[x-a, \"x:b\"]\n",
                 "gateway.routes[0].key_headers: 'x:b' is not a header name");
    EXPECT_ERROR("gateway:\n  routes:\n    - key_headers: |[\"\"]\n",
                 "gateway.routes[0].key_headers: names must not be empty");
    EXPECT_ERROR("gateway:\n  routes:\n    - key_headers: [|[a]]\n",
                 "gateway.routes[0].key_headers: items must be strings");
    EXPECT_ERROR("gateway:\n  routes:\n    - key_headers: |{a: b}\n",
                 "gateway.routes[0].key_headers: must be a list of strings");
    EXPECT_ERROR("gateway:\n  routes:\n    - tenant: |nobody\n",
                 "gateway.routes[0].tenant: unknown tenant 'nobody'");
    EXPECT_ERROR("gateway:\n  routes:\n    - template: |nope\n",
                 "gateway.routes[0].template: unknown template 'nope'");
    EXPECT_ERROR("gateway:\n  routes:\n    - max_body: |1025GiB\n",
                 "gateway.routes[0].max_body: must be 0..1099511627776 bytes");
    EXPECT_ERROR("gateway:\n  routes:\n    - max_body: |-1\n",
                 "gateway.routes[0].max_body: must be a size such as 4096, 64KiB, 16MiB");
    EXPECT_ERROR("gateway:\n  routes:\n    - auth: |perhaps\n",
                 "gateway.routes[0].auth: must be true or false");
    EXPECT_ERROR("gateway:\n  routes:\n    - upstream_host: |gateway\n",
                 "gateway.routes[0].upstream_host: must be instance or client");
    EXPECT_ERROR("gateway:\n  routes:\n    - cors_origins: |[https://a.example/]\n",
                 "gateway.routes[0].cors_origins: 'https://a.example/' is not an origin: \"*\" "
                 "or scheme://host[:port], no path or trailing slash");
    EXPECT_ERROR("gateway:\n  routes:\n    - cors_origins: |[a.example]\n",
                 "gateway.routes[0].cors_origins: 'a.example' is not an origin: \"*\" "
                 "or scheme://host[:port], no path or trailing slash");
    EXPECT_ERROR("gateway:\n  routes:\n    - cors_origins: |[\"https://\"]\n",
                 "gateway.routes[0].cors_origins: 'https://' is not an origin: \"*\" "
                 "or scheme://host[:port], no path or trailing slash");
    EXPECT_ERROR("gateway:\n  routes:\n    - cors_max_age: |86401\n",
                 "gateway.routes[0].cors_max_age: must be 0..86400");
}

TEST(route_without_templates_defined)
{
    char err[1024];
    struct gw_config *gc = load_doc("tenants: [{name: default}]\n"
                                    "gateway:\n  routes:\n    - name: x\n",
                                    err, sizeof(err));
    CHECK_NULL(gc);
    char want[8192];
    snprintf(want, sizeof(want),
             "%s:4:7: gateway.routes[0].template: required (no templates "
             "defined)",
             path);
    CHECK_STR_EQ(err, want);
    cm_config_free(cfg);
}

TEST(default_tenant_missing_names_a_position)
{
    /* The route's tenant defaults to "default"; when the file has no such tenant the message
     * must still point somewhere in the file (the route), not at 0:0. */
    char err[1024];
    struct gw_config *gc = load_doc("tenants: [{name: acme}]\n"
                                    "templates: [{name: t, app: {command: x}}]\n"
                                    "gateway:\n  routes:\n    - name: x\n",
                                    err, sizeof(err));
    CHECK_NULL(gc);
    cm_config_free(cfg);
    CHECK_CONTAINS(err, "gateway.routes[0].tenant: unknown tenant 'default'");
    CHECK_MSG(!test_contains(err, ":0:0:"), "no position: %s", err);
}

TEST(scheduler_secret_is_read_from_the_scheduler_section)
{
    struct gw_config *gc = load_ok("");
    CHECK_STR_EQ(gc->scheduler_secret, SECRET);
    done(gc);
    /* From a file too; the gateway reads no other scheduler key. */
    char secret_path[4200], text[8192], err[1024];
    snprintf(secret_path, sizeof(secret_path), "%s",
             test_write_file("s", "abcdefghijklmnopqrstuvwxyz0123456789\n", (size_t)-1));
    CHECK_INT_EQ(chmod(secret_path, 0400), 0);
    snprintf(text, sizeof(text),
             "templates: [{name: t, app: {command: x}}]\ntenants: [{name: default}]\n"
             "scheduler:\n  host_id: whatever\n  api_secret_file: %s\n",
             secret_path);
    gc = load_doc(text, err, sizeof(err));
    CHECK_MSG(gc != NULL, "%s", err);
    CHECK_STR_EQ(gc->scheduler_secret, "abcdefghijklmnopqrstuvwxyz0123456789");
    done(gc);
}

TEST(scheduler_secret_is_required_for_scheduler_templates)
{
    char err[1024];
    struct gw_config *gc = load_doc("tenants: [{name: default}]\n"
                                    "templates:\n  - {name: s, driver: static, upstreams: [a:1]}\n"
                                    "  - {name: t, app: {command: x}}\n",
                                    err, sizeof(err));
    CHECK_NULL(gc);
    cm_config_free(cfg);
    char want[8192];
    snprintf(want, sizeof(want),
             "%s:4:5: scheduler: api_secret or api_secret_file is required: "
             "template 't' is started by a scheduler on demand",
             path);
    CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "got %s", err);
    /* With a scheduler section, the error points at it. */
    gc = load_doc("tenants: [{name: default}]\ntemplates: [{name: t, app: {command: x}}]\n"
                  "scheduler:\n  host_id: h\n",
                  err, sizeof(err));
    CHECK_NULL(gc);
    cm_config_free(cfg);
    CHECK_CONTAINS(err, ":4:3: scheduler: api_secret or api_secret_file is required");
    /* Static templates alone need no scheduler, so no secret. */
    gc = load_doc("tenants: [{name: default}]\n"
                  "templates: [{name: s, driver: static, upstreams: [a:1]}]\n",
                  err, sizeof(err));
    CHECK_MSG(gc != NULL, "%s", err);
    CHECK_NULL(gc->scheduler_secret);
    done(gc);
    /* A bad secret is refused like the scheduler refuses it. */
    gc = load_doc("tenants: [{name: default}]\n"
                  "templates: [{name: s, driver: static, upstreams: [a:1]}]\n"
                  "scheduler: {api_secret: short}\n",
                  err, sizeof(err));
    CHECK_NULL(gc);
    cm_config_free(cfg);
    CHECK_CONTAINS(err, ":3:25: scheduler.api_secret: the secret must be at least 32 bytes");
}

TEST(error_buffer_is_bounded)
{
    char err[24];
    char full[1024];
    struct gw_config *gc = load("gateway:\n  workers: 0\n", full, sizeof(full));
    CHECK_NULL(gc);
    cm_config_free(cfg);
    gc = load("gateway:\n  workers: 0\n", err, sizeof(err));
    CHECK_NULL(gc);
    cm_config_free(cfg);
    CHECK_UINT_EQ(strlen(err), sizeof(err) - 1);
    CHECK(strncmp(err, full, sizeof(err) - 1) == 0);
}

TEST(free_takes_null)
{
    gw_config_free(NULL);
}

/* ------------------------------------------------------------------ route selection */

static const struct gw_route *route_for(const struct gw_config *gc, const char *host, const char *p)
{
    return gw_config_route(gc, host, host ? strlen(host) : 0, p, strlen(p));
}

TEST(route_selection_by_host_and_prefix)
{
    struct gw_config *gc = load_ok("gateway:\n  routes:\n"
                                   "    - {name: api, host: api.example.com, path_prefix: /v1/}\n"
                                   "    - {name: api-any, host: API.example.com}\n"
                                   "    - {name: mcp, path_prefix: /mcp}\n"
                                   "    - {name: v6, host: \"[::1]\"}\n"
                                   "    - {name: rest, path_prefix: /}\n");
    CHECK_STR_EQ(route_for(gc, "api.example.com", "/v1/x")->name, "api");
    CHECK_STR_EQ(route_for(gc, "API.EXAMPLE.COM:8443", "/v1/x")->name, "api");
    CHECK_STR_EQ(route_for(gc, "api.example.com", "/v2/x")->name, "api-any");
    CHECK_STR_EQ(route_for(gc, "api.example.com:80", "/")->name, "api-any");
    CHECK_STR_EQ(route_for(gc, "other.example.com", "/v1/x")->name, "rest");
    CHECK_STR_EQ(route_for(gc, "api.example.com.evil", "/v1/x")->name, "rest");
    CHECK_STR_EQ(route_for(gc, "api.example.co", "/v1/x")->name, "rest");
    CHECK_STR_EQ(route_for(gc, NULL, "/v1/x")->name, "rest"); /* HTTP/1.0 without Host */
    CHECK_STR_EQ(route_for(gc, "x", "/mcp")->name, "mcp");
    CHECK_STR_EQ(route_for(gc, "x", "/mcp/sse?x=1")->name, "mcp");
    CHECK_STR_EQ(route_for(gc, "x", "/mc")->name, "rest");
    CHECK_STR_EQ(route_for(gc, "[::1]", "/")->name, "v6");
    done(gc);
}

TEST(route_selection_ignores_the_port_of_an_ipv6_host)
{
    struct gw_config *gc = load_ok("gateway:\n  routes:\n"
                                   "    - {name: v6, host: \"[::1]\"}\n"
                                   "    - {name: rest}\n");
    CHECK_STR_EQ(route_for(gc, "[::1]:8080", "/")->name, "v6");
    done(gc);
}

TEST(no_matching_route)
{
    struct gw_config *gc = load_ok("gateway:\n  routes:\n"
                                   "    - {host: a.example, path_prefix: /x}\n");
    CHECK_NULL(route_for(gc, "a.example", "/y"));
    CHECK_NULL(route_for(gc, "b.example", "/x"));
    CHECK_NULL(route_for(gc, NULL, "/x"));
    CHECK_NOT_NULL(route_for(gc, "a.example", "/x"));
    done(gc);
}
