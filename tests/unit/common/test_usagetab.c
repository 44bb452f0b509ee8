/* Unit tests of common/usagetab.c: usage counters by tenant and template, bounded, summed over
 * tables, written as Prometheus counters. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/usagetab.h"
#include "tests/harness/test.h"

static const struct cm_usagetab_metric metrics[CM_USAGETAB_METRICS] = {
    {"t_requests_total", "Requests.", 1},
    {"t_bytes_total", "Bytes.", 1},
    {"t_other_total", "Other.", 1},
    {"t_seconds_total", "Milliseconds as seconds.", 1000},
};

static char *write_tabs(struct cm_usagetab *const *tabs, size_t n)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_usagetab_write(&b, tabs, n, metrics);
    cm_jbuf_raw(&b, "", 1);
    CHECK(!b.failed);
    return b.data; /* caller frees */
}

static char *write_one(struct cm_usagetab *t)
{
    return write_tabs(&t, 1);
}

static void add(struct cm_usagetab *t, const char *tenant, const char *tpl, uint64_t a, uint64_t b,
                uint64_t c, uint64_t d)
{
    uint64_t v[CM_USAGETAB_METRICS] = {a, b, c, d};
    CHECK_INT_EQ(cm_usagetab_add(t, tenant, strlen(tenant), tpl, strlen(tpl), v), 1);
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

TEST(pairs_are_series_in_order_with_help_and_type)
{
    struct cm_usagetab *t = cm_usagetab_create();
    CHECK_NOT_NULL(t);
    add(t, "zeta", "echo", 1, 10, 0, 1500);
    add(t, "acme", "py", 2, 20, 0, 5);
    add(t, "acme", "echo", 3, 30, 0, 2000);
    add(t, "zeta", "echo", 4, 40, 0, 1);
    char *s = write_one(t);
    CHECK_CONTAINS(s, "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n"
                      "t_requests_total{tenant=\"acme\",template=\"echo\"} 3\n"
                      "t_requests_total{tenant=\"acme\",template=\"py\"} 2\n"
                      "t_requests_total{tenant=\"zeta\",template=\"echo\"} 5\n"
                      "# HELP t_bytes_total");
    CHECK_CONTAINS(s, "t_bytes_total{tenant=\"zeta\",template=\"echo\"} 50\n");
    CHECK_CONTAINS(s, "t_other_total{tenant=\"acme\",template=\"py\"} 0\n");
    CHECK_CONTAINS(s, "t_seconds_total{tenant=\"zeta\",template=\"echo\"} 1.501\n");
    CHECK_CONTAINS(s, "t_seconds_total{tenant=\"acme\",template=\"py\"} 0.005\n");
    CHECK_CONTAINS(s, "t_seconds_total{tenant=\"acme\",template=\"echo\"} 2\n");
    CHECK(!strstr(s, "(other)")); /* nothing overflowed: no such series */
    CHECK_UINT_EQ(count(s, "# TYPE "), CM_USAGETAB_METRICS);
    free(s);
    cm_usagetab_destroy(t);
}

TEST(an_empty_table_writes_families_without_samples)
{
    struct cm_usagetab *t = cm_usagetab_create();
    char *s = write_one(t);
    CHECK_UINT_EQ(count(s, "# HELP "), CM_USAGETAB_METRICS);
    CHECK_UINT_EQ(count(s, "\n"), 2 * CM_USAGETAB_METRICS);
    free(s);
    s = write_tabs(NULL, 0);
    CHECK_UINT_EQ(count(s, "\n"), 2 * CM_USAGETAB_METRICS);
    free(s);
    cm_usagetab_destroy(t);
}

TEST(tables_are_summed_pair_by_pair)
{
    struct cm_usagetab *t[3] = {cm_usagetab_create(), cm_usagetab_create(), cm_usagetab_create()};
    add(t[0], "acme", "echo", 1, 0, 0, 0);
    add(t[1], "acme", "py", 10, 0, 0, 0);
    add(t[1], "acme", "echo", 100, 0, 0, 0);
    add(t[2], "acme", "echo", 1000, 0, 0, 0);
    char *s = write_tabs(t, 3);
    CHECK_CONTAINS(s, "t_requests_total{tenant=\"acme\",template=\"echo\"} 1101\n"
                      "t_requests_total{tenant=\"acme\",template=\"py\"} 10\n# HELP");
    CHECK_UINT_EQ(count(s, "t_requests_total{"), 2);
    free(s);
    for (int i = 0; i < 3; i++)
        cm_usagetab_destroy(t[i]);
}

TEST(label_values_are_escaped)
{
    /* Names come from Redis: whatever is there must not break the exposition. */
    struct cm_usagetab *t = cm_usagetab_create();
    add(t, "a\"b", "c\\d", 1, 0, 0, 0);
    add(t, "x\ny", "", 2, 0, 0, 0);
    char *s = write_one(t);
    CHECK_CONTAINS(s, "t_requests_total{tenant=\"a\\\"b\",template=\"c\\\\d\"} 1\n");
    CHECK_CONTAINS(s, "t_requests_total{tenant=\"x\\ny\",template=\"\"} 2\n");
    free(s);
    cm_usagetab_destroy(t);
}

TEST(the_table_is_bounded_and_the_rest_is_other)
{
    struct cm_usagetab *t = cm_usagetab_create();
    char tenant[32];
    for (int i = 0; i < CM_USAGETAB_PAIRS; i++) {
        snprintf(tenant, sizeof(tenant), "t%04d", i);
        add(t, tenant, "echo", 1, 0, 0, 0);
    }
    uint64_t v[CM_USAGETAB_METRICS] = {5, 6, 7, 8};
    /* no room for a new pair... */
    CHECK_INT_EQ(cm_usagetab_add(t, "late", 4, "echo", 4, v), 0);
    CHECK_INT_EQ(cm_usagetab_add(t, "later", 5, "py", 2, v), 0);
    /* ...but the pairs it has still count */
    CHECK_INT_EQ(cm_usagetab_add(t, "t0007", 5, "echo", 4, v), 1);
    /* names longer than a configured name can be, or with a NUL, are never a pair */
    struct cm_usagetab *u = cm_usagetab_create();
    char long_name[CM_USAGETAB_NAME_MAX + 2];
    memset(long_name, 'n', sizeof(long_name));
    CHECK_INT_EQ(cm_usagetab_add(u, long_name, CM_USAGETAB_NAME_MAX + 1, "echo", 4, v), 0);
    CHECK_INT_EQ(cm_usagetab_add(u, "echo", 4, long_name, CM_USAGETAB_NAME_MAX + 1, v), 0);
    CHECK_INT_EQ(cm_usagetab_add(u, "a\0b", 3, "echo", 4, v), 0);
    CHECK_INT_EQ(cm_usagetab_add(u, long_name, CM_USAGETAB_NAME_MAX, "echo", 4, v), 1);

    struct cm_usagetab *both[2] = {t, u};
    char *s = write_tabs(both, 2);
    CHECK_UINT_EQ(count(s, "t_requests_total{"), CM_USAGETAB_PAIRS + 2);
    CHECK_CONTAINS(s, "t_requests_total{tenant=\"t0007\",template=\"echo\"} 6\n");
    CHECK_CONTAINS(s, "t_requests_total{tenant=\"(other)\",template=\"(other)\"} 25\n"
                      "# HELP t_bytes_total");
    CHECK_CONTAINS(s, "t_seconds_total{tenant=\"(other)\",template=\"(other)\"} 0.04\n");
    CHECK(!strstr(s, "\"late") && !strstr(s, "\"later"));
    free(s);
    cm_usagetab_destroy(t);
    cm_usagetab_destroy(u);
}

static redisReply *str(const char *s)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_STRING;
    r->str = (char *)s;
    r->len = strlen(s);
    return r;
}

static redisReply *nil(void)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_NIL;
    return r;
}

static redisReply *array(size_t n, redisReply **items)
{
    redisReply *r = calloc(1, sizeof(*r));
    r->type = REDIS_REPLY_ARRAY;
    r->elements = n;
    r->element = items;
    return r;
}

static void free_array(redisReply *r)
{
    for (size_t i = 0; i < r->elements; i++)
        free(r->element[i]);
    free(r);
}

TEST(a_usage_reply_names_each_sessions_pair)
{
    struct cm_usagetab *t = cm_usagetab_create();
    const uint64_t d[3][CM_USAGETAB_METRICS] = {{1, 2, 3, 4}, {10, 20, 30, 40}, {100, 0, 0, 0}};
    redisReply *items[6] = {str("acme"), str("echo"), nil(), nil(), str("acme"), str("")};
    redisReply *r = array(6, items);
    CHECK_INT_EQ(cm_usagetab_add_reply(t, r, 3, d), 2);
    /* the wrong shape counts nothing */
    CHECK_INT_EQ(cm_usagetab_add_reply(t, r, 2, d), -EPROTO);
    CHECK_INT_EQ(cm_usagetab_add_reply(t, NULL, 3, d), -EPROTO);
    redisReply one = {.type = REDIS_REPLY_INTEGER, .integer = 1};
    CHECK_INT_EQ(cm_usagetab_add_reply(t, &one, 3, d), -EPROTO);
    redisReply *bad_items[2] = {str("acme"), calloc(1, sizeof(redisReply))};
    bad_items[1]->type = REDIS_REPLY_INTEGER;
    redisReply *bad = array(2, bad_items);
    CHECK_INT_EQ(cm_usagetab_add_reply(t, bad, 1, d), -EPROTO);
    char *s = write_one(t);
    CHECK_CONTAINS(s, "t_requests_total{tenant=\"acme\",template=\"\"} 100\n"
                      "t_requests_total{tenant=\"acme\",template=\"echo\"} 1\n# HELP");
    CHECK(!strstr(s, "} 10\n") && !strstr(s, "(other)")); /* the unknown session's */
    free(s);
    free_array(r);
    free_array(bad);
    cm_usagetab_destroy(t);
}

/* One writer adding pairs while a reader writes the table: every scrape is whole text whose
 * total never goes down, and the last one has everything. */
struct race {
    struct cm_usagetab *t;
    int done;
};

static void *writer(void *arg)
{
    struct race *r = arg;
    char tenant[32];
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < CM_USAGETAB_PAIRS + 50; i++) {
            snprintf(tenant, sizeof(tenant), "t%d", i);
            uint64_t v[CM_USAGETAB_METRICS] = {1, 0, 0, 0};
            cm_usagetab_add(r->t, tenant, strlen(tenant), "echo", 4, v);
        }
    }
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static uint64_t total_requests(const char *s)
{
    uint64_t sum = 0;
    for (const char *p = s; (p = strstr(p, "t_requests_total{"));) {
        const char *sp = strstr(p, "} ");
        CHECK_NOT_NULL(sp);
        sum += strtoull(sp + 2, NULL, 10);
        p = sp;
    }
    return sum;
}

TEST(scrapes_race_with_the_writer)
{
    struct race r = {.t = cm_usagetab_create()};
    pthread_t th;
    CHECK_INT_EQ(pthread_create(&th, NULL, writer, &r), 0);
    uint64_t last = 0;
    int done;
    do {
        done = __atomic_load_n(&r.done, __ATOMIC_ACQUIRE);
        char *s = write_one(r.t);
        uint64_t now = total_requests(s);
        CHECK_MSG(now >= last, "total went down: %llu < %llu", (unsigned long long)now,
                  (unsigned long long)last);
        last = now;
        free(s);
    } while (!done);
    pthread_join(th, NULL);
    CHECK_UINT_EQ(last, 20ull * (CM_USAGETAB_PAIRS + 50));
    cm_usagetab_destroy(r.t);
}
