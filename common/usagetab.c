#include "usagetab.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "prom.h"

/* Open addressing over twice as many slots as pairs: at most half full, so probes stay short
 * and a probe always ends at an empty slot. */
#define INDEX_SLOTS (2 * CM_USAGETAB_PAIRS)

struct pair {
    char tenant[CM_USAGETAB_NAME_MAX + 1], tpl[CM_USAGETAB_NAME_MAX + 1];
    uint64_t v[CM_USAGETAB_METRICS];
};

struct cm_usagetab {
    struct pair pairs[CM_USAGETAB_PAIRS];
    uint64_t other[CM_USAGETAB_METRICS];
    uint32_t n;                  /* pairs published (release store by the owner) */
    uint16_t index[INDEX_SLOTS]; /* the owner's alone: pair number + 1, 0 = empty */
};

struct cm_usagetab *cm_usagetab_create(void)
{
    return calloc(1, sizeof(struct cm_usagetab));
}

void cm_usagetab_destroy(struct cm_usagetab *t)
{
    free(t);
}

/* One writer: a relaxed load and store, as gateway/metrics.h does for its shards. */
static void bump(uint64_t *c, const uint64_t *v)
{
    for (int k = 0; k < CM_USAGETAB_METRICS; k++)
        __atomic_store_n(&c[k], __atomic_load_n(&c[k], __ATOMIC_RELAXED) + v[k], __ATOMIC_RELAXED);
}

static uint32_t fnv1a(uint32_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int fits(const char *s, size_t n)
{
    return n <= CM_USAGETAB_NAME_MAX && !memchr(s, '\0', n);
}

static int same(const char *name, const char *s, size_t n)
{
    return strncmp(name, s, n) == 0 && name[n] == '\0';
}

int cm_usagetab_add(struct cm_usagetab *t, const char *tenant, size_t tenant_len, const char *tpl,
                    size_t tpl_len, const uint64_t v[CM_USAGETAB_METRICS])
{
    if (!fits(tenant, tenant_len) || !fits(tpl, tpl_len)) {
        bump(t->other, v);
        return 0;
    }
    uint32_t h = fnv1a(fnv1a(2166136261u, tenant, tenant_len), "", 1); /* a NUL between */
    h = fnv1a(h, tpl, tpl_len);
    for (size_t i = h % INDEX_SLOTS;; i = (i + 1) % INDEX_SLOTS) {
        if (!t->index[i]) {
            if (t->n == CM_USAGETAB_PAIRS) {
                bump(t->other, v);
                return 0;
            }
            struct pair *p = &t->pairs[t->n];
            memcpy(p->tenant, tenant, tenant_len);
            p->tenant[tenant_len] = '\0';
            memcpy(p->tpl, tpl, tpl_len);
            p->tpl[tpl_len] = '\0';
            bump(p->v, v);
            t->index[i] = (uint16_t)(t->n + 1);
            __atomic_store_n(&t->n, t->n + 1, __ATOMIC_RELEASE); /* names before the pair */
            return 1;
        }
        struct pair *p = &t->pairs[t->index[i] - 1];
        if (same(p->tenant, tenant, tenant_len) && same(p->tpl, tpl, tpl_len)) {
            bump(p->v, v);
            return 1;
        }
    }
}

int cm_usagetab_add_reply(struct cm_usagetab *t, const struct redisReply *r, size_t n,
                          const uint64_t (*v)[CM_USAGETAB_METRICS])
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 * n)
        return -EPROTO;
    for (size_t i = 0; i < 2 * n; i++) {
        int type = r->element[i]->type;
        if (type != REDIS_REPLY_STRING && type != REDIS_REPLY_NIL)
            return -EPROTO;
    }
    int counted = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *tenant = r->element[2 * i], *tpl = r->element[2 * i + 1];
        if (tenant->type != REDIS_REPLY_STRING || tpl->type != REDIS_REPLY_STRING)
            continue;
        cm_usagetab_add(t, tenant->str, tenant->len, tpl->str, tpl->len, v[i]);
        counted++;
    }
    return counted;
}

/* A pair as a scrape sees it: names borrowed from a table, counters copied once. */
struct row {
    const char *tenant, *tpl;
    uint64_t v[CM_USAGETAB_METRICS];
};

static int row_cmp(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    int c = strcmp(x->tenant, y->tenant);
    return c ? c : strcmp(x->tpl, y->tpl);
}

void cm_usagetab_write(struct cm_jbuf *b, struct cm_usagetab *const *tabs, size_t n,
                       const struct cm_usagetab_metric m[CM_USAGETAB_METRICS])
{
    uint32_t *counts = calloc(n ? n : 1, sizeof(*counts));
    if (!counts) {
        b->failed = 1;
        return;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += counts[i] = __atomic_load_n(&tabs[i]->n, __ATOMIC_ACQUIRE);
    struct row *rows = calloc(total ? total : 1, sizeof(*rows));
    if (!rows) {
        free(counts);
        b->failed = 1;
        return;
    }
    /* One copy of every counter, so that the families of one scrape agree with each other. */
    uint64_t other[CM_USAGETAB_METRICS] = {0};
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < counts[i]; j++, k++) {
            const struct pair *p = &tabs[i]->pairs[j];
            rows[k].tenant = p->tenant;
            rows[k].tpl = p->tpl;
            for (int c = 0; c < CM_USAGETAB_METRICS; c++)
                rows[k].v[c] = __atomic_load_n(&p->v[c], __ATOMIC_RELAXED);
        }
        for (int c = 0; c < CM_USAGETAB_METRICS; c++)
            other[c] += __atomic_load_n(&tabs[i]->other[c], __ATOMIC_RELAXED);
    }
    free(counts);
    /* The same pair in several tables (a gateway's loops) is one series. */
    qsort(rows, total, sizeof(*rows), row_cmp);
    size_t merged = 0;
    for (size_t r = 0; r < total; r++) {
        if (merged && row_cmp(&rows[merged - 1], &rows[r]) == 0) {
            for (int c = 0; c < CM_USAGETAB_METRICS; c++)
                rows[merged - 1].v[c] += rows[r].v[c];
        } else {
            rows[merged++] = rows[r];
        }
    }
    int have_other = 0;
    for (int c = 0; c < CM_USAGETAB_METRICS; c++)
        have_other |= other[c] != 0;
    for (int c = 0; c < CM_USAGETAB_METRICS; c++) {
        cm_prom_family(b, m[c].name, "counter", m[c].help);
        for (size_t r = 0; r <= merged; r++) {
            if (r == merged && !have_other)
                break;
            cm_jbuf_printf(b, "%s{tenant=", m[c].name);
            cm_prom_label_value(b, r < merged ? rows[r].tenant : CM_USAGETAB_OTHER);
            cm_jbuf_raw(b, ",template=", 10);
            cm_prom_label_value(b, r < merged ? rows[r].tpl : CM_USAGETAB_OTHER);
            cm_jbuf_raw(b, "} ", 2);
            cm_prom_scaled(b, r < merged ? rows[r].v[c] : other[c], m[c].scale);
            cm_jbuf_raw(b, "\n", 1);
        }
    }
    free(rows);
}
