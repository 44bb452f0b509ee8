/* Unit tests of gateway/api_json.c: control API request validation and session rendering. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/compat.h"
#include "common/config.h"
#include "common/json.h"
#include "common/key.h"
#include "gateway/api_json.h"
#include "gateway/config.h"
#include "tests/harness/test.h"

#define S CM_USEC_PER_SEC

static struct cm_template tpls[2];
static struct cm_tenant tenants[2];
static struct cm_config cfg;
static struct gw_route routes[1];
static struct gw_config gc;
static const struct gw_api_limits lim = {.max_metadata = 64, .list_default = 100, .list_max = 1000};

/* Two templates ("first", "second"); tenant "acme" routes to "second", "solo" has no route. */
static void setup(void)
{
    tpls[0] = (struct cm_template){.name = "first",
                                   .ttl = 3600 * S,
                                   .max_ttl = 86400 * S,
                                   .idle_timeout = 600 * S,
                                   .max_idle_timeout = 7200 * S};
    tpls[1] = (struct cm_template){.name = "second",
                                   .ttl = 60 * S,
                                   .max_ttl = 120 * S,
                                   .idle_timeout = 30 * S,
                                   .max_idle_timeout = 90 * S};
    tenants[0] = (struct cm_tenant){.name = "acme"};
    tenants[1] = (struct cm_tenant){.name = "solo"};
    cfg = (struct cm_config){.file = "test.yaml",
                             .tenants = tenants,
                             .n_tenants = 2,
                             .templates = tpls,
                             .n_templates = 2};
    routes[0] = (struct gw_route){.name = "r",
                                  .path_prefix = "/",
                                  .tenant = "acme",
                                  .template_name = "second",
                                  .tpl = &tpls[1]};
    gc = (struct gw_config){.common = &cfg, .routes = routes, .n_routes = 1};
}

static int create(const char *body, const char *tenant, struct gw_api_create *c,
                  struct gw_api_error *e)
{
    setup();
    memset(e, 0, sizeof(*e));
    return gw_api_parse_create(body, strlen(body), &gc, tenant, &lim, c, e);
}

static void create_fails(const char *body, enum gw_err code, const char *msg_part)
{
    struct gw_api_create c;
    struct gw_api_error e;
    int rc = create(body, "acme", &c, &e);
    CHECK_MSG(rc == -EINVAL, "body %s: rc %d, expected -EINVAL", body, rc);
    CHECK_MSG(e.err == code, "body %s: code %s, expected %s", body, gw_err_info(e.err)->code,
              gw_err_info(code)->code);
    if (msg_part)
        CHECK_CONTAINS(e.message, msg_part);
}

TEST(create_empty_body_gets_random_id_and_route_template)
{
    struct gw_api_create c;
    struct gw_api_error e;
    CHECK_INT_EQ(create("", "acme", &c, &e), 0);
    CHECK_UINT_EQ(c.id_len, CM_HASH_HEX_LEN);
    CHECK(cm_key_valid(c.id, c.id_len));
    CHECK_STR_EQ(c.tpl->name, "second");
    CHECK_UINT_EQ(c.ttl_ms, 60000);
    CHECK_UINT_EQ(c.idle_ms, 30000);
    CHECK_NULL(c.meta);
    struct gw_api_create d;
    CHECK_INT_EQ(create("{}", "acme", &d, &e), 0);
    CHECK(strcmp(c.id, d.id) != 0);
    gw_api_create_fini(&c);
    gw_api_create_fini(&d);
}

TEST(create_without_route_uses_first_template)
{
    struct gw_api_create c;
    struct gw_api_error e;
    CHECK_INT_EQ(create("{\"id\":null}", "solo", &c, &e), 0);
    CHECK_STR_EQ(c.tpl->name, "first");
    CHECK_UINT_EQ(c.ttl_ms, 3600000);
    gw_api_create_fini(&c);
}

TEST(create_all_fields)
{
    struct gw_api_create c;
    struct gw_api_error e;
    CHECK_INT_EQ(create("{\"id\":\"a/b..~\",\"template\":\"first\",\"ttl\":86400,"
                        "\"idle_timeout\":5,\"metadata\":{ \"k\" : [1, 2.5, \"x\\n\", null, "
                        "true, {}] }}",
                        "acme", &c, &e),
                 0);
    CHECK_STR_EQ(c.id, "a/b..~");
    CHECK_UINT_EQ(c.id_len, 6);
    CHECK_STR_EQ(c.tpl->name, "first");
    CHECK_UINT_EQ(c.ttl_ms, 86400000);
    CHECK_UINT_EQ(c.idle_ms, 5000);
    CHECK_STR_EQ(c.meta, "{\"k\":[1,2.5,\"x\\u000a\",null,true,{}]}");
    gw_api_create_fini(&c);
}

TEST(create_rejects_bad_bodies)
{
    create_fails("{", GW_ERR_BAD_REQUEST, "not valid JSON");
    create_fails("[]", GW_ERR_BAD_REQUEST, "JSON object");
    create_fails("\"x\"", GW_ERR_BAD_REQUEST, "JSON object");
    create_fails("{} {}", GW_ERR_BAD_REQUEST, "not valid JSON");
    create_fails("{\"nope\":1}", GW_ERR_INVALID_ARGUMENT, "unknown field \"nope\"");
    create_fails("{\"id\":\"a\",\"id\":\"b\"}", GW_ERR_INVALID_ARGUMENT, "duplicate");
}

TEST(create_rejects_bad_ids)
{
    create_fails("{\"id\":5}", GW_ERR_INVALID_ARGUMENT, "id must be a string");
    create_fails("{\"id\":\"\"}", GW_ERR_INVALID_SESSION_KEY, NULL);
    create_fails("{\"id\":\"a b\"}", GW_ERR_INVALID_SESSION_KEY, NULL);
    create_fails("{\"id\":\"a\\u0000b\"}", GW_ERR_INVALID_SESSION_KEY, NULL);
    create_fails("{\"id\":\"\\u00e9\"}", GW_ERR_INVALID_SESSION_KEY, NULL);
    char body[200];
    memset(body, 'a', sizeof(body));
    memcpy(body, "{\"id\":\"", 7);
    memcpy(body + 7 + 129, "\"}", 3);
    create_fails(body, GW_ERR_INVALID_SESSION_KEY, NULL);
    /* exactly 128 is fine */
    memcpy(body + 7 + 128, "\"}", 3);
    struct gw_api_create c;
    struct gw_api_error e;
    CHECK_INT_EQ(create(body, "acme", &c, &e), 0);
    CHECK_UINT_EQ(c.id_len, 128);
    gw_api_create_fini(&c);
}

TEST(create_rejects_bad_template_and_durations)
{
    create_fails("{\"template\":\"nope\"}", GW_ERR_UNKNOWN_TEMPLATE, "nope");
    create_fails("{\"template\":7}", GW_ERR_INVALID_ARGUMENT, "template must be a string");
    create_fails("{\"ttl\":\"60\"}", GW_ERR_INVALID_ARGUMENT, "ttl");
    create_fails("{\"ttl\":1.5}", GW_ERR_INVALID_ARGUMENT, "whole number");
    create_fails("{\"ttl\":0}", GW_ERR_INVALID_ARGUMENT, "ttl");
    create_fails("{\"ttl\":-5}", GW_ERR_INVALID_ARGUMENT, "ttl");
    create_fails("{\"ttl\":1e300}", GW_ERR_INVALID_ARGUMENT, "ttl");
    /* "second" (acme's default) caps ttl at 120 s and idle at 90 s */
    create_fails("{\"ttl\":121}", GW_ERR_INVALID_ARGUMENT, "120");
    create_fails("{\"idle_timeout\":91}", GW_ERR_INVALID_ARGUMENT, "90");
    create_fails("{\"template\":\"first\",\"idle_timeout\":7201}", GW_ERR_INVALID_ARGUMENT, "7200");
    struct gw_api_create c;
    struct gw_api_error e;
    CHECK_INT_EQ(create("{\"ttl\":120,\"idle_timeout\":90}", "acme", &c, &e), 0);
    CHECK_UINT_EQ(c.ttl_ms, 120000);
    CHECK_UINT_EQ(c.idle_ms, 90000);
    gw_api_create_fini(&c);
}

TEST(create_rejects_bad_metadata)
{
    create_fails("{\"metadata\":[1]}", GW_ERR_INVALID_ARGUMENT, "metadata must be a JSON object");
    create_fails("{\"metadata\":\"x\"}", GW_ERR_INVALID_ARGUMENT, "metadata");
    /* 64 bytes allowed: {"k":"..."} with 56 characters is 64 bytes, 57 is 65 */
    char body[128];
    snprintf(body, sizeof(body), "{\"metadata\":{\"k\":\"%057d\"}}", 0);
    create_fails(body, GW_ERR_INVALID_ARGUMENT, "exceeds 64 bytes");
    snprintf(body, sizeof(body), "{\"metadata\":{\"k\":\"%056d\"}}", 0);
    struct gw_api_create c;
    struct gw_api_error e;
    CHECK_INT_EQ(create(body, "acme", &c, &e), 0);
    CHECK_UINT_EQ(strlen(c.meta), 64);
    gw_api_create_fini(&c);
    /* strings must be UTF-8 (JSON text is) */
    create_fails("{\"metadata\":{\"k\":\"\xff\"}}", GW_ERR_INVALID_ARGUMENT, "UTF-8");
    create_fails("{\"metadata\":{\"\xc0\xaf\":1}}", GW_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK_INT_EQ(create("{\"metadata\":{\"k\":\"\xc3\xa9\\u20ac\"}}", "acme", &c, &e), 0);
    CHECK_STR_EQ(c.meta, "{\"k\":\"\xc3\xa9\xe2\x82\xac\"}");
    gw_api_create_fini(&c);
}

TEST(update_validates_against_template)
{
    setup();
    struct gw_api_update u;
    struct gw_api_error e;
    CHECK_INT_EQ(gw_api_parse_update("{\"ttl\":100}", 11, &tpls[1], &u, &e), 0);
    CHECK(u.has_ttl && !u.has_idle);
    CHECK_UINT_EQ(u.ttl_ms, 100000);
    const char *b = "{\"idle_timeout\":90}";
    CHECK_INT_EQ(gw_api_parse_update(b, strlen(b), &tpls[1], &u, &e), 0);
    CHECK(!u.has_ttl && u.has_idle);
    b = "{\"ttl\":121}";
    CHECK_INT_EQ(gw_api_parse_update(b, strlen(b), &tpls[1], &u, &e), -EINVAL);
    CHECK_INT_EQ(e.err, GW_ERR_INVALID_ARGUMENT);
    /* no template known: a year is the bound */
    CHECK_INT_EQ(gw_api_parse_update(b, strlen(b), NULL, &u, &e), 0);
    b = "{\"ttl\":31536001}";
    CHECK_INT_EQ(gw_api_parse_update(b, strlen(b), NULL, &u, &e), -EINVAL);
    CHECK_INT_EQ(gw_api_parse_update("{}", 2, NULL, &u, &e), -EINVAL);
    CHECK_CONTAINS(e.message, "nothing to update");
    CHECK_INT_EQ(gw_api_parse_update("", 0, NULL, &u, &e), -EINVAL);
    b = "{\"ttl\":5,\"metadata\":{}}";
    CHECK_INT_EQ(gw_api_parse_update(b, strlen(b), NULL, &u, &e), -EINVAL);
    CHECK_CONTAINS(e.message, "unknown field");
    CHECK_INT_EQ(gw_api_parse_update("nope", 4, NULL, &u, &e), -EINVAL);
    CHECK_INT_EQ(e.err, GW_ERR_BAD_REQUEST);
}

TEST(list_query)
{
    uint32_t limit;
    uint64_t cursor;
    struct gw_api_error e;
    CHECK_INT_EQ(gw_api_parse_list_query(NULL, &lim, &limit, &cursor, &e), 0);
    CHECK_UINT_EQ(limit, 100);
    CHECK_UINT_EQ(cursor, 0);
    CHECK_INT_EQ(gw_api_parse_list_query("limit=5&cursor=10&x=y", &lim, &limit, &cursor, &e), 0);
    CHECK_UINT_EQ(limit, 5);
    CHECK_UINT_EQ(cursor, 10);
    CHECK_INT_EQ(gw_api_parse_list_query("li%6Dit=%37&cursor=", &lim, &limit, &cursor, &e), 0);
    CHECK_UINT_EQ(limit, 7);
    CHECK_UINT_EQ(cursor, 0);
    CHECK_INT_EQ(gw_api_parse_list_query("limit=1000", &lim, &limit, &cursor, &e), 0);
    const char *bad[] = {"limit=0",    "limit=1001", "limit=",
                         "limit=-1",   "limit=1x",   "limit=99999999999999999999999",
                         "cursor=abc", "cursor=-1",  "limit=%zz",
                         NULL};
    for (const char **q = bad; *q; q++) {
        CHECK_MSG(gw_api_parse_list_query(*q, &lim, &limit, &cursor, &e) == -EINVAL,
                  "query %s accepted", *q);
        CHECK_INT_EQ(e.err, GW_ERR_INVALID_ARGUMENT);
    }
}

static const char *render(const char *const *fv, size_t n, char *out, size_t cap)
{
    size_t lens[32] = {0};
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(fv[i]);
    struct gw_session_rec r;
    if (gw_api_session_parse(fv, lens, n, &r) < 0)
        return NULL;
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_api_session_write(&b, &r);
    snprintf(out, cap, "%s", b.data);
    cm_jbuf_fini(&b);
    return out;
}

TEST(session_round_trip)
{
    const char *fv[] = {"tenant",       "acme",
                        "source",       "sid",
                        "key",          "k\"1",
                        "template",     "first",
                        "instance",     "i-1",
                        "addr",         "unix:/x",
                        "state",        "bound",
                        "gen",          "3",
                        "created",      "1000",
                        "ttl",          "60000",
                        "idle_timeout", "1500",
                        "last_active",  "2000",
                        "meta",         "{\"a\": [1, {\"b\":null}]}",
                        "egress",       "{\"allow\":[\"*.pypi.org\"],\"deny\":[]}"};
    char out[1024];
    CHECK_NOT_NULL(render(fv, CM_ARRAY_SIZE(fv), out, sizeof(out)));
    CHECK_STR_EQ(out, "{\"id\":\"k\\\"1\",\"tenant\":\"acme\",\"template\":\"first\","
                      "\"instance\":\"i-1\",\"state\":\"bound\",\"created_ms\":1000,"
                      "\"ttl_s\":60,\"idle_timeout_s\":1.500,\"last_active_ms\":2000,"
                      "\"expires_at_ms\":3500,\"paused\":false,\"paused_since_ms\":null,"
                      "\"paused_ms\":0,\"metadata\":{\"a\":[1,{\"b\":null}]},"
                      "\"egress\":{\"allow\":[\"*.pypi.org\"],\"deny\":[]}}");
    /* the result is JSON */
    struct cm_json *j = cm_json_parse(out, strlen(out), NULL, 0);
    CHECK_NOT_NULL(j);
    cm_json_free(j);
}

TEST(session_paused)
{
    const char *fv[] = {"tenant", "acme", "key",    "k",      "state",     "bound",
                        "created", "1000", "ttl",   "60000",  "idle_timeout", "1000",
                        "last_active", "2000", "paused", "5000", "paused_ms", "1234"};
    char out[1024];
    CHECK_NOT_NULL(render(fv, CM_ARRAY_SIZE(fv), out, sizeof(out)));
    CHECK_CONTAINS(out, "\"paused\":true,\"paused_since_ms\":5000,\"paused_ms\":1234,");
}

TEST(session_missing_or_odd_fields)
{
    char out[1024];
    const char *empty[] = {NULL};
    CHECK_NULL(render(empty, 0, out, sizeof(out)));
    const char *no_tenant[] = {"key", "k", "state", "bound"};
    CHECK_NULL(render(no_tenant, 4, out, sizeof(out)));
    /* lost session: no instance address; garbage meta and numbers are not echoed */
    const char *lost[] = {"tenant",       "t",    "key",         "k",  "state", "lost",
                          "instance",     "",     "created",     "x9", "ttl",   "100000",
                          "idle_timeout", "5000", "last_active", "7",  "meta",  "{not json"};
    CHECK_NOT_NULL(render(lost, CM_ARRAY_SIZE(lost), out, sizeof(out)));
    CHECK_CONTAINS(out, "\"instance\":null");
    CHECK_CONTAINS(out, "\"created_ms\":0");
    CHECK_CONTAINS(out, "\"expires_at_ms\":5007");
    CHECK_CONTAINS(out, "\"metadata\":null");
    CHECK_CONTAINS(out, "\"template\":null");
}

TEST(json_write_numbers_and_strings)
{
    const char *in = "[1e20, -0.5, 12345678901234, \"\\u0001\\\"\\\\/\", {\"\": []}, false]";
    struct cm_json *j = cm_json_parse(in, strlen(in), NULL, 0);
    CHECK_NOT_NULL(j);
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_api_json_write(&b, j);
    CHECK_STR_EQ(b.data, "[1e+20,-0.5,12345678901234,\"\\u0001\\\"\\\\/\",{\"\":[]},false]");
    cm_jbuf_fini(&b);
    cm_json_free(j);
}

TEST(pct_decode)
{
    char out[8];
    size_t n;
    CHECK_INT_EQ(gw_api_pct_decode("a%2Fb+c", 7, out, 7, &n), 0);
    CHECK_STR_EQ(out, "a/b+c");
    CHECK_UINT_EQ(n, 5);
    CHECK_INT_EQ(gw_api_pct_decode("%7e%7E", 6, out, 7, &n), 0);
    CHECK_STR_EQ(out, "~~");
    CHECK_INT_EQ(gw_api_pct_decode("%00", 3, out, 7, &n), 0);
    CHECK_UINT_EQ(n, 1);
    CHECK(out[0] == '\0');
    CHECK_INT_EQ(gw_api_pct_decode("a%2", 3, out, 7, &n), -EINVAL);
    CHECK_INT_EQ(gw_api_pct_decode("a%", 2, out, 7, &n), -EINVAL);
    CHECK_INT_EQ(gw_api_pct_decode("%g0", 3, out, 7, &n), -EINVAL);
    CHECK_INT_EQ(gw_api_pct_decode("abcdefgh", 8, out, 7, &n), -ENOSPC);
    CHECK_INT_EQ(gw_api_pct_decode("abcdefg", 7, out, 7, &n), 0);
    CHECK_INT_EQ(gw_api_pct_decode("", 0, out, 7, &n), 0);
    CHECK_UINT_EQ(n, 0);
}

TEST(error_json)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_api_error_json(&b, GW_ERR_UNKNOWN_TEMPLATE, "unknown template \"x\"");
    CHECK_STR_EQ(b.data, "{\"error\":{\"code\":\"unknown_template\",\"message\":"
                         "\"unknown template \\\"x\\\"\"}}");
    cm_jbuf_fini(&b);
    cm_jbuf_init(&b);
    gw_api_error_json(&b, GW_ERR_NOT_FOUND, NULL);
    CHECK_STR_EQ(b.data, "{\"error\":{\"code\":\"not_found\",\"message\":\"not found\"}}");
    cm_jbuf_fini(&b);
    CHECK_INT_EQ(gw_err_info(GW_ERR_INVALID_ARGUMENT)->status, 400);
    CHECK_INT_EQ(gw_err_info(GW_ERR_UNKNOWN_TEMPLATE)->status, 400);
}

TEST(exec_body)
{
    struct gw_api_limits xl = {.exec_timeout = 300 * CM_USEC_PER_SEC,
                                .exec_max_timeout = 3600 * CM_USEC_PER_SEC};
    struct gw_api_exec x;
    struct gw_api_error e;
    const char *ok = "{\"cmd\":[\"ls\",\"-l\"],\"env\":{\"A\":\"1\"},\"cwd\":\"/tmp\","
                     "\"stdin\":\"in\",\"timeout\":2.5}";
    CHECK_INT_EQ(gw_api_parse_exec(ok, strlen(ok), &xl, &x, &e), 0);
    CHECK_INT_EQ((int)x.cmd->len, 2);
    CHECK_STR_EQ(x.cwd->str, "/tmp");
    CHECK_INT_EQ((long long)x.timeout_ms, 2500);
    cm_json_free(x.j);
    const char *dflt = "{\"cmd\":[\"true\"]}";
    CHECK_INT_EQ(gw_api_parse_exec(dflt, strlen(dflt), &xl, &x, &e), 0);
    CHECK_INT_EQ((long long)x.timeout_ms, 300000);
    CHECK_NULL(x.env);
    cm_json_free(x.j);
    static const char *const bad[] = {
        "[]", "{}", "{\"cmd\":[]}", "{\"cmd\":\"ls\"}", "{\"cmd\":[1]}", "{\"cmd\":[\"\"]}",
        "{\"cmd\":[\"a\\u0000b\"]}", "{\"cmd\":[\"ls\"],\"env\":{\"9\":\"x\"}}",
        "{\"cmd\":[\"ls\"],\"env\":{\"A\":1}}", "{\"cmd\":[\"ls\"],\"cwd\":\"x\"}",
        "{\"cmd\":[\"ls\"],\"stdin\":1}", "{\"cmd\":[\"ls\"],\"timeout\":0}",
        "{\"cmd\":[\"ls\"],\"timeout\":3601}", "{\"cmd\":[\"ls\"],\"other\":1}", "not json"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_MSG(gw_api_parse_exec(bad[i], strlen(bad[i]), &xl, &x, &e) == -EINVAL, "%s",
                  bad[i]);
        CHECK_NULL(x.j);
        CHECK(e.err == GW_ERR_INVALID_ARGUMENT || e.err == GW_ERR_BAD_REQUEST);
    }
}
