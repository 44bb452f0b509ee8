#include "gateway/cache.h"

#include <stdlib.h>
#include <string.h>

/* Chained buckets, grown incrementally. An entry is allocated on its own (on a put of a new
 * key: a claim, never a request of a bound session) and never moves, so growing copies no
 * entry: it only relinks them, a few buckets per put, from the old bucket array to one twice
 * its size. The previous design (entries inline in an open-addressing table, rehashed all at
 * once when 70 % full) stalled the loop while it copied every entry into a freshly allocated
 * table: under session churn the gateway's p99 went from ~0.9 ms to ~12 ms on a 2-core VM
 * (bench/README.md), and the stall grows with the cache (320 bytes an entry, up to a million). */
struct node {
    struct gw_cache_entry e; /* first: the entry handed out is the node */
    struct node *next;
};

struct table {
    struct node **b;
    size_t mask; /* buckets - 1, a power of two; b == NULL: no table */
};

struct gw_cache {
    struct table t[2]; /* t[1] exists only while t[0]'s chains are moved into it */
    size_t moved;      /* buckets of t[0] emptied into t[1] so far */
    size_t count;
    size_t max_entries;
};

#define INITIAL_BUCKETS 64
#define PROBE_EVICT 8
/* A put while growing moves this many non-empty buckets (and looks at no more than ten times
 * as many): t[0] is empty before the entries can outgrow t[1]'s buckets (growth starts at one
 * entry per bucket of t[0]; t[1] has twice as many). */
#define MOVE_PER_PUT 2

static size_t slot_of(struct cm_hash h)
{
    return (size_t)(h.lo ^ (h.hi >> 7));
}

static int same(struct cm_hash a, struct cm_hash b)
{
    return a.hi == b.hi && a.lo == b.lo;
}

static int growing(const struct gw_cache *c)
{
    return c->t[1].b != NULL;
}

static int table_init(struct table *t, size_t buckets)
{
    t->b = calloc(buckets, sizeof(*t->b));
    if (!t->b)
        return -1;
    t->mask = buckets - 1;
    return 0;
}

struct gw_cache *gw_cache_create(size_t max_entries)
{
    struct gw_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (table_init(&c->t[0], INITIAL_BUCKETS) < 0) {
        free(c);
        return NULL;
    }
    c->max_entries = max_entries ? max_entries : 1;
    return c;
}

static void free_chains(struct table *t, size_t from)
{
    if (!t->b)
        return;
    for (size_t i = from; i <= t->mask; i++) {
        for (struct node *n = t->b[i], *next; n; n = next) {
            next = n->next;
            free(n);
        }
        t->b[i] = NULL;
    }
}

void gw_cache_destroy(struct gw_cache *c)
{
    if (!c)
        return;
    free_chains(&c->t[0], c->moved);
    free_chains(&c->t[1], 0);
    free(c->t[0].b);
    free(c->t[1].b);
    free(c);
}

static void move_some(struct gw_cache *c, size_t chains);

static struct gw_cache_entry *find(const struct gw_cache *c, struct cm_hash h)
{
    size_t s = slot_of(h);
    for (struct node *n = c->t[0].b[s & c->t[0].mask]; n; n = n->next)
        if (same(n->e.hash, h))
            return &n->e;
    if (growing(c))
        for (struct node *n = c->t[1].b[s & c->t[1].mask]; n; n = n->next)
            if (same(n->e.hash, h))
                return &n->e;
    return NULL;
}

struct gw_cache_entry *gw_cache_get(struct gw_cache *c, struct cm_hash h)
{
    if (growing(c)) /* lookups finish a growth too, should new keys stop coming */
        move_some(c, 1);
    return find(c, h);
}

/* Moves up to <chains> non-empty buckets of t[0] into t[1] (looking at no more than ten times as
 * many); the last one moved makes t[1] the table. */
static void move_some(struct gw_cache *c, size_t chains)
{
    struct table *from = &c->t[0], *to = &c->t[1];
    size_t look = chains * 10;
    for (size_t looked = 0; c->moved <= from->mask && chains && looked < look; looked++) {
        struct node *n = from->b[c->moved];
        from->b[c->moved++] = NULL;
        if (!n)
            continue;
        chains--;
        while (n) {
            struct node *next = n->next;
            size_t j = slot_of(n->e.hash) & to->mask;
            n->next = to->b[j];
            to->b[j] = n;
            n = next;
        }
    }
    if (c->moved > from->mask) {
        free(from->b);
        *from = *to;
        to->b = NULL;
        to->mask = 0;
        c->moved = 0;
    }
}

/* Where a new entry goes: the table being filled. */
static struct table *current(struct gw_cache *c)
{
    return growing(c) ? &c->t[1] : &c->t[0];
}

/* Full: evicts the entry expiring first among the first few found from <h>'s bucket on. */
static void evict_near(struct gw_cache *c, struct cm_hash h)
{
    /* One table to look in. Finishing a growth here would stall the loop as the old design
     * did, but it does not happen with a power-of-two max_entries (the gateway's 2^20): a
     * growth starts at one entry per bucket and ends within half as many puts again, so the
     * table reaches max_entries buckets before the entries reach max_entries, and grows no
     * further. Only a growth delayed by failed allocations can still be running here. */
    while (growing(c))
        move_some(c, (size_t)-1 / 16);
    struct table *t = &c->t[0];
    struct node **best = NULL;
    size_t seen = 0;
    for (size_t k = 0, i = slot_of(h) & t->mask; k <= t->mask && seen < PROBE_EVICT;
         k++, i = (i + 1) & t->mask)
        for (struct node **pp = &t->b[i]; *pp; pp = &(*pp)->next, seen++)
            if (!best || (*pp)->e.expires < (*best)->e.expires)
                best = pp;
    if (best) {
        struct node *n = *best;
        *best = n->next;
        free(n);
        c->count--;
    }
}

struct gw_cache_entry *gw_cache_put(struct gw_cache *c, const struct gw_binding *b,
                                    cm_usec_t expires)
{
    struct gw_cache_entry *e = find(c, b->hash);
    if (!e) {
        if (c->count >= c->max_entries)
            evict_near(c, b->hash);
        if (growing(c))
            move_some(c, MOVE_PER_PUT);
        else if (c->count + 1 > c->t[0].mask + 1)
            (void)table_init(&c->t[1], (c->t[0].mask + 1) * 2); /* no memory: chains grow */
        struct node *n = malloc(sizeof(*n));
        if (!n)
            return NULL;
        memset(&n->e, 0, sizeof(n->e));
        n->e.hash = b->hash;
        struct table *t = current(c);
        size_t j = slot_of(b->hash) & t->mask;
        n->next = t->b[j];
        t->b[j] = n;
        c->count++;
        e = &n->e;
    }
    e->gen = b->gen;
    e->refreshing = 0;
    e->session = b->session;
    e->expires = expires;
    memcpy(e->instance, b->instance, sizeof(e->instance));
    memcpy(e->addr, b->addr, sizeof(e->addr));
    return e;
}

static int unlink_from(struct table *t, size_t from, struct cm_hash h)
{
    if (!t->b)
        return 0;
    size_t i = slot_of(h) & t->mask;
    if (i < from) /* already moved to the other table */
        return 0;
    for (struct node **pp = &t->b[i]; *pp; pp = &(*pp)->next) {
        if (same((*pp)->e.hash, h)) {
            struct node *n = *pp;
            *pp = n->next;
            free(n);
            return 1;
        }
    }
    return 0;
}

void gw_cache_drop(struct gw_cache *c, struct cm_hash h)
{
    if (unlink_from(&c->t[0], c->moved, h) || unlink_from(&c->t[1], 0, h))
        c->count--;
}

void gw_cache_clear(struct gw_cache *c)
{
    free_chains(&c->t[0], c->moved);
    if (growing(c)) { /* keep the larger table, empty */
        free(c->t[0].b);
        c->t[0] = c->t[1];
        c->t[1].b = NULL;
        c->t[1].mask = 0;
        free_chains(&c->t[0], 0);
    }
    c->moved = 0;
    c->count = 0;
}

void gw_cache_expire_all(struct gw_cache *c)
{
    for (int t = 0; t < 2; t++) {
        struct table *tb = &c->t[t];
        if (!tb->b)
            continue;
        for (size_t i = t == 0 ? c->moved : 0; i <= tb->mask; i++)
            for (struct node *n = tb->b[i]; n; n = n->next)
                n->e.expires = 0;
    }
}

size_t gw_cache_count(const struct gw_cache *c)
{
    return c->count;
}

size_t gw_cache_growing(const struct gw_cache *c)
{
    return growing(c) ? c->t[0].mask + 1 - c->moved : 0;
}
