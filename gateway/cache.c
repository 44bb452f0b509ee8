#include "gateway/cache.h"

#include <stdlib.h>
#include <string.h>

struct gw_cache {
    struct gw_cache_entry *slots;
    size_t mask; /* capacity - 1, capacity a power of two */
    size_t count;
    size_t max_entries;
};

#define PROBE_EVICT 8

static size_t slot_of(const struct gw_cache *c, struct cm_hash h)
{
    return (size_t)(h.lo ^ (h.hi >> 7)) & c->mask;
}

static int same(struct cm_hash a, struct cm_hash b)
{
    return a.hi == b.hi && a.lo == b.lo;
}

struct gw_cache *gw_cache_create(size_t max_entries)
{
    struct gw_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    size_t cap = 64;
    c->slots = calloc(cap, sizeof(*c->slots));
    if (!c->slots) {
        free(c);
        return NULL;
    }
    c->mask = cap - 1;
    c->max_entries = max_entries ? max_entries : 1;
    return c;
}

void gw_cache_destroy(struct gw_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c);
}

struct gw_cache_entry *gw_cache_get(struct gw_cache *c, struct cm_hash h)
{
    for (size_t i = slot_of(c, h);; i = (i + 1) & c->mask) {
        struct gw_cache_entry *e = &c->slots[i];
        if (!e->used)
            return NULL;
        if (same(e->hash, h))
            return e;
    }
}

static void remove_at(struct gw_cache *c, size_t i)
{
    /* Backward-shift deletion: pull later members of the probe run into the hole unless their
     * home slot lies cyclically in (hole, j]. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & c->mask;
        if (!c->slots[j].used)
            break;
        size_t k = slot_of(c, c->slots[j].hash);
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        c->slots[i] = c->slots[j];
        i = j;
    }
    c->slots[i].used = 0;
    c->count--;
}

static int grow(struct gw_cache *c)
{
    size_t cap = (c->mask + 1) * 2;
    struct gw_cache_entry *old = c->slots;
    size_t oldcap = c->mask + 1;
    struct gw_cache_entry *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -1;
    c->slots = slots;
    c->mask = cap - 1;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].used)
            continue;
        size_t j = slot_of(c, old[i].hash);
        while (c->slots[j].used)
            j = (j + 1) & c->mask;
        c->slots[j] = old[i];
    }
    free(old);
    return 0;
}

struct gw_cache_entry *gw_cache_put(struct gw_cache *c, const struct gw_binding *b,
                                    cm_usec_t expires)
{
    struct gw_cache_entry *e = gw_cache_get(c, b->hash);
    if (!e) {
        if (c->count >= c->max_entries) {
            /* Full: evict the entry expiring first among a few near the new key's slot. */
            size_t best = (size_t)-1;
            size_t s = slot_of(c, b->hash);
            for (size_t n = 0, i = s; n <= c->mask && (best == (size_t)-1 || n < PROBE_EVICT);
                 n++, i = (i + 1) & c->mask)
                if (c->slots[i].used &&
                    (best == (size_t)-1 || c->slots[i].expires < c->slots[best].expires))
                    best = i;
            if (best != (size_t)-1)
                remove_at(c, best);
        }
        if ((c->count + 1) * 10 > (c->mask + 1) * 7 && grow(c) < 0)
            return NULL;
        size_t i = slot_of(c, b->hash);
        while (c->slots[i].used)
            i = (i + 1) & c->mask;
        e = &c->slots[i];
        memset(e, 0, sizeof(*e));
        e->used = 1;
        e->hash = b->hash;
        c->count++;
    }
    e->gen = b->gen;
    e->refreshing = 0;
    e->session = b->session;
    e->expires = expires;
    memcpy(e->instance, b->instance, sizeof(e->instance));
    memcpy(e->addr, b->addr, sizeof(e->addr));
    return e;
}

void gw_cache_drop(struct gw_cache *c, struct cm_hash h)
{
    for (size_t i = slot_of(c, h);; i = (i + 1) & c->mask) {
        if (!c->slots[i].used)
            return;
        if (same(c->slots[i].hash, h)) {
            remove_at(c, i);
            return;
        }
    }
}

void gw_cache_clear(struct gw_cache *c)
{
    memset(c->slots, 0, (c->mask + 1) * sizeof(*c->slots));
    c->count = 0;
}

size_t gw_cache_count(const struct gw_cache *c)
{
    return c->count;
}
