/* Unit tests of gateway/cache.c: the per-loop binding cache (chained buckets grown a few at a
 * time, bounded size with eviction of the earliest-expiring entry near the new key). The bucket
 * of a hash is (lo ^ (hi >> 7)) & mask and the table starts with 64 buckets; the collision tests
 * build their hashes from that so the chains are known. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/key.h"
#include "gateway/cache.h"
#include "tests/harness/test.h"

static struct gw_binding bind_of(uint64_t hi, uint64_t lo, uint64_t gen)
{
    struct gw_binding b;
    memset(&b, 0, sizeof(b));
    b.hash.hi = hi;
    b.hash.lo = lo;
    b.gen = gen;
    cm_hash_hex(b.hash, b.hash_hex);
    snprintf(b.instance, sizeof(b.instance), "i-%llx-%llx-%llu", (unsigned long long)hi,
             (unsigned long long)lo, (unsigned long long)gen);
    snprintf(b.addr, sizeof(b.addr), "unix:/run/berth/%llx/app.sock", (unsigned long long)lo);
    b.how = GW_CLAIM_NEW;
    return b;
}

static struct cm_hash H(uint64_t hi, uint64_t lo) {
    return (struct cm_hash){.hi = hi, .lo = lo};
}

static void
put(struct gw_cache *c, uint64_t hi, uint64_t lo, uint64_t gen, cm_usec_t exp)
{
    struct gw_binding b = bind_of(hi, lo, gen);
    struct gw_cache_entry *e = gw_cache_put(c, &b, exp);
    CHECK_NOT_NULL(e);
    CHECK(e->hash.hi == hi && e->hash.lo == lo);
    CHECK_UINT_EQ(e->gen, gen);
    CHECK_UINT_EQ(e->expires, exp);
}

/* The entry for (hi, lo) exists and holds generation <gen>. */
static void has(struct gw_cache *c, uint64_t hi, uint64_t lo, uint64_t gen)
{
    struct gw_cache_entry *e = gw_cache_get(c, H(hi, lo));
    CHECK_MSG(e != NULL, "entry %llx:%llx missing", (unsigned long long)hi, (unsigned long long)lo);
    struct gw_binding b = bind_of(hi, lo, gen);
    CHECK_MSG(e->gen == gen, "entry %llx:%llx gen %llu, expected %llu", (unsigned long long)hi,
              (unsigned long long)lo, (unsigned long long)e->gen, (unsigned long long)gen);
    CHECK_STR_EQ(e->instance, b.instance);
    CHECK_STR_EQ(e->addr, b.addr);
}

static void absent(struct gw_cache *c, uint64_t hi, uint64_t lo)
{
    CHECK_MSG(gw_cache_get(c, H(hi, lo)) == NULL, "entry %llx:%llx present", (unsigned long long)hi,
              (unsigned long long)lo);
}

TEST(empty_cache)
{
    struct gw_cache *c = gw_cache_create(100);
    CHECK_NOT_NULL(c);
    CHECK_UINT_EQ(gw_cache_count(c), 0);
    absent(c, 1, 2);
    gw_cache_drop(c, H(1, 2)); /* absent: nothing happens */
    gw_cache_clear(c);
    CHECK_UINT_EQ(gw_cache_count(c), 0);
    gw_cache_destroy(c);
    gw_cache_destroy(NULL);
}

TEST(put_get_copies_the_binding)
{
    struct gw_cache *c = gw_cache_create(100);
    struct gw_binding b = bind_of(0xdead, 0xbeef, 7);
    struct gw_cache_entry *e = gw_cache_put(c, &b, 123456);
    CHECK_NOT_NULL(e);
    memset(&b, 0, sizeof(b)); /* the cache keeps copies */
    e = gw_cache_get(c, H(0xdead, 0xbeef));
    CHECK_NOT_NULL(e);
    CHECK_UINT_EQ(e->expires, 123456);
    CHECK_UINT_EQ(e->last_flush, 0);
    has(c, 0xdead, 0xbeef, 7);
    CHECK_UINT_EQ(gw_cache_count(c), 1);
    absent(c, 0xbeef, 0xdead);
    absent(c, 0xdead, 0xbeee);
    gw_cache_destroy(c);
}

TEST(put_replaces_an_existing_binding)
{
    struct gw_cache *c = gw_cache_create(100);
    put(c, 1, 1, 1, 10);
    put(c, 1, 1, 2, 20);
    CHECK_UINT_EQ(gw_cache_count(c), 1);
    has(c, 1, 1, 2);
    CHECK_UINT_EQ(gw_cache_get(c, H(1, 1))->expires, 20);
    gw_cache_destroy(c);
}

TEST(drop_and_reinsert)
{
    struct gw_cache *c = gw_cache_create(100);
    put(c, 9, 9, 1, 1);
    gw_cache_drop(c, H(9, 9));
    CHECK_UINT_EQ(gw_cache_count(c), 0);
    absent(c, 9, 9);
    put(c, 9, 9, 2, 1);
    has(c, 9, 9, 2);
    CHECK_UINT_EQ(gw_cache_count(c), 1);
    gw_cache_destroy(c);
}

TEST(colliding_keys_survive_deletes_in_any_order)
{
    /* Five keys with home slot 5 (lo = 5 + 64k) and one with home 6 that lands after them. */
    static const int orders[][6] = {{0, 1, 2, 3, 4, 5},
                                    {4, 3, 2, 1, 0, 5},
                                    {2, 5, 0, 4, 1, 3},
                                    {5, 0, 1, 2, 3, 4},
                                    {1, 3, 5, 0, 2, 4}};
    uint64_t lo[6] = {5, 69, 133, 197, 261, 6};
    for (size_t o = 0; o < sizeof(orders) / sizeof(orders[0]); o++) {
        struct gw_cache *c = gw_cache_create(1000);
        for (int i = 0; i < 6; i++)
            put(c, 0, lo[i], (uint64_t)i, 100);
        CHECK_UINT_EQ(gw_cache_count(c), 6);
        for (int k = 0; k < 6; k++) {
            int victim = orders[o][k];
            gw_cache_drop(c, H(0, lo[victim]));
            absent(c, 0, lo[victim]);
            CHECK_UINT_EQ(gw_cache_count(c), (size_t)(5 - k));
            for (int j = k + 1; j < 6; j++)
                has(c, 0, lo[orders[o][j]], (uint64_t)orders[o][j]);
        }
        gw_cache_destroy(c);
    }
}

TEST(probe_runs_wrap_around_the_table_end)
{
    struct gw_cache *c = gw_cache_create(1000);
    /* home 63, 63, 63, then home 0 and 1: the run wraps to slots 0..4 */
    uint64_t lo[] = {63, 127, 191, 0, 1};
    for (int i = 0; i < 5; i++)
        put(c, 0, lo[i], (uint64_t)i, 1);
    gw_cache_drop(c, H(0, 63));
    for (int i = 1; i < 5; i++)
        has(c, 0, lo[i], (uint64_t)i);
    gw_cache_drop(c, H(0, 0));
    has(c, 0, 127, 1);
    has(c, 0, 191, 2);
    has(c, 0, 1, 4);
    gw_cache_drop(c, H(0, 191));
    has(c, 0, 127, 1);
    has(c, 0, 1, 4);
    CHECK_UINT_EQ(gw_cache_count(c), 2);
    gw_cache_destroy(c);
}

TEST(high_bits_take_part_in_the_slot)
{
    /* hi >> 7 is mixed in: keys equal in lo but not in hi are different entries */
    struct gw_cache *c = gw_cache_create(1000);
    put(c, 0, 42, 1, 1);
    put(c, 1ull << 7, 42, 2, 1);
    put(c, 1, 42, 3, 1); /* hi differs only in bits the slot ignores: still its own entry */
    has(c, 0, 42, 1);
    has(c, 1ull << 7, 42, 2);
    has(c, 1, 42, 3);
    CHECK_UINT_EQ(gw_cache_count(c), 3);
    gw_cache_destroy(c);
}

TEST(grows_far_past_its_initial_size)
{
    struct gw_cache *c = gw_cache_create(1000000);
    const int n = 20000;
    for (int i = 0; i < n; i++)
        put(c, (uint64_t)i * 0x9e3779b97f4a7c15ull, (uint64_t)i, (uint64_t)i, 1);
    CHECK_UINT_EQ(gw_cache_count(c), (size_t)n);
    for (int i = 0; i < n; i++)
        has(c, (uint64_t)i * 0x9e3779b97f4a7c15ull, (uint64_t)i, (uint64_t)i);
    for (int i = 0; i < n; i += 2)
        gw_cache_drop(c, H((uint64_t)i * 0x9e3779b97f4a7c15ull, (uint64_t)i));
    CHECK_UINT_EQ(gw_cache_count(c), (size_t)n / 2);
    for (int i = 0; i < n; i++) {
        if (i % 2)
            has(c, (uint64_t)i * 0x9e3779b97f4a7c15ull, (uint64_t)i, (uint64_t)i);
        else
            absent(c, (uint64_t)i * 0x9e3779b97f4a7c15ull, (uint64_t)i);
    }
    gw_cache_destroy(c);
}

TEST(growing_moves_a_few_buckets_per_put)
{
    /* 64 buckets: the 65th entry starts the growth into 128; each later put moves at most a
     * few chains, lookups find entries in either table meanwhile, and the growth is over long
     * before the next one is due. */
    struct gw_cache *c = gw_cache_create(1000000);
    for (uint64_t i = 0; i < 64; i++)
        put(c, 0, i, i, 1);
    CHECK_UINT_EQ(gw_cache_growing(c), 0);
    put(c, 0, 64, 64, 1);
    CHECK_UINT_EQ(gw_cache_growing(c), 64); /* nothing moved by the put that started it */
    size_t puts = 0;
    for (uint64_t i = 65; gw_cache_growing(c) > 0; i++) {
        size_t before = gw_cache_growing(c);
        put(c, 0, i, i, 1);
        puts++;
        /* bounded work per put: MOVE_PER_PUT chains, ten times as many buckets looked at */
        CHECK(before - gw_cache_growing(c) <= 20);
        before = gw_cache_growing(c);
        CHECK_NOT_NULL(gw_cache_get(c, H(0, i))); /* a lookup moves one chain at most */
        CHECK(before - gw_cache_growing(c) <= 10);
        for (uint64_t j = 0; j <= i; j += 7)
            has(c, 0, j, j);
    }
    CHECK(puts <= 32); /* 64 one-entry chains, 2 a put */
    CHECK_UINT_EQ(gw_cache_count(c), 65 + puts);
    /* entries keep their addresses through a growth; drops and a clear in the middle of one */
    struct gw_cache_entry *e = gw_cache_get(c, H(0, 3));
    uint64_t next = 1000;
    while (gw_cache_growing(c) == 0) /* up to the next growth (into 256 buckets) */
        put(c, 0, next, next, 1), next++;
    for (int k = 0; k < 8; k++)
        put(c, 0, next, next, 1), next++;
    CHECK(gw_cache_growing(c) > 0); /* a put moves a few chains of 128: still under way */
    CHECK(gw_cache_get(c, H(0, 3)) == e);
    for (uint64_t i = 1000; i < next; i += 2)
        gw_cache_drop(c, H(0, i));
    CHECK(gw_cache_growing(c) > 0);
    for (uint64_t i = 1000; i < next; i++) {
        if (i % 2)
            has(c, 0, i, i);
        else
            absent(c, 0, i);
    }
    while (gw_cache_growing(c) > 0)
        put(c, 0, next, next, 1), next++;
    CHECK(gw_cache_get(c, H(0, 3)) == e); /* the growth is over; the entry never moved */
    while (gw_cache_growing(c) == 0)
        put(c, 0, next, next, 1), next++;
    gw_cache_clear(c); /* in the middle of the next growth */
    CHECK_UINT_EQ(gw_cache_count(c), 0);
    CHECK_UINT_EQ(gw_cache_growing(c), 0);
    absent(c, 0, 3);
    for (uint64_t i = 1000; i < next; i++)
        absent(c, 0, i);
    /* a growth that new keys stop feeding is finished by lookups */
    for (uint64_t i = 0; gw_cache_growing(c) == 0; i++)
        put(c, 0, 5000 + i, i, 1);
    for (int n = 0; n < 100000 && gw_cache_growing(c) > 0; n++)
        CHECK_NOT_NULL(gw_cache_get(c, H(0, 5000)));
    CHECK_UINT_EQ(gw_cache_growing(c), 0);
    has(c, 0, 5000, 0);
    put(c, 7, 7, 7, 7);
    has(c, 7, 7, 7);
    gw_cache_destroy(c);
}

TEST(clear_empties_everything)
{
    struct gw_cache *c = gw_cache_create(1000);
    for (uint64_t i = 0; i < 100; i++)
        put(c, i, i * 64, i, 1);
    gw_cache_clear(c);
    CHECK_UINT_EQ(gw_cache_count(c), 0);
    for (uint64_t i = 0; i < 100; i++)
        absent(c, i, i * 64);
    put(c, 5, 5, 5, 5);
    has(c, 5, 5, 5);
    CHECK_UINT_EQ(gw_cache_count(c), 1);
    gw_cache_destroy(c);
}

TEST(expire_all_keeps_every_entry_stale)
{
    /* also in the middle of a growth: entries in both tables are reached */
    struct gw_cache *c = gw_cache_create(1000000);
    uint64_t n = 0;
    while (gw_cache_growing(c) == 0)
        put(c, 0, n, n, 1000 + n), n++;
    put(c, 0, n, n, 1000 + n), n++;
    CHECK(gw_cache_growing(c) > 0);
    gw_cache_expire_all(c);
    CHECK_UINT_EQ(gw_cache_count(c), n);
    for (uint64_t i = 0; i < n; i++) {
        has(c, 0, i, i);
        CHECK_UINT_EQ(gw_cache_get(c, H(0, i))->expires, 0);
    }
    gw_cache_destroy(c);
}

TEST(full_cache_evicts_the_earliest_expiring_nearby_entry)
{
    struct gw_cache *c = gw_cache_create(3);
    put(c, 0, 10, 1, 300);
    put(c, 0, 11, 2, 100); /* expires first */
    put(c, 0, 12, 3, 200);
    CHECK_UINT_EQ(gw_cache_count(c), 3);
    put(c, 0, 74, 4, 400); /* home slot 10: the probe window covers 10, 11, 12 */
    CHECK_UINT_EQ(gw_cache_count(c), 3);
    absent(c, 0, 11);
    has(c, 0, 10, 1);
    has(c, 0, 12, 3);
    has(c, 0, 74, 4);
    /* replacing an existing key never evicts */
    put(c, 0, 10, 5, 50);
    CHECK_UINT_EQ(gw_cache_count(c), 3);
    has(c, 0, 12, 3);
    has(c, 0, 74, 4);
    gw_cache_destroy(c);
}

TEST(full_cache_with_far_away_entries_still_bounded)
{
    struct gw_cache *c = gw_cache_create(2);
    put(c, 0, 1, 1, 1);
    put(c, 0, 40, 2, 2);
    put(c, 0, 20, 3, 3); /* nothing within 8 slots of 20: some entry still goes */
    CHECK_UINT_EQ(gw_cache_count(c), 2);
    has(c, 0, 20, 3);
    gw_cache_destroy(c);
}

TEST(max_entries_zero_means_one)
{
    struct gw_cache *c = gw_cache_create(0);
    put(c, 0, 1, 1, 1);
    put(c, 0, 2, 2, 1);
    CHECK_UINT_EQ(gw_cache_count(c), 1);
    has(c, 0, 2, 2);
    absent(c, 0, 1);
    gw_cache_destroy(c);
}

/* ------------------------------------------------------------------ against a model */

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

#define UNIVERSE 300

struct model {
    int present;
    uint64_t gen;
};

/* Keys crowd into few home slots (lo multiples of 64 plus a small offset) so the runs are long
 * and deletions shift entries across other keys' home slots and around the table's end. */
static struct cm_hash model_key(int i)
{
    return H((uint64_t)(i % 7) << 7, (uint64_t)(i / 7) * 64 + (uint64_t)(i % 5) + 60);
}

TEST(random_operations_match_a_model)
{
    struct gw_cache *c = gw_cache_create(1000000);
    struct model m[UNIVERSE] = {{0}};
    size_t count = 0;
    for (int step = 0; step < 200000; step++) {
        int i = (int)(rnd() % UNIVERSE);
        struct cm_hash k = model_key(i);
        uint64_t op = rnd() % 100;
        if (op < 55) {
            uint64_t gen = (uint64_t)step;
            put(c, k.hi, k.lo, gen, 1);
            if (!m[i].present)
                count++;
            m[i].present = 1;
            m[i].gen = gen;
        } else if (op < 95) {
            gw_cache_drop(c, k);
            if (m[i].present)
                count--;
            m[i].present = 0;
        } else if (op < 96 && step % 1000 == 0) {
            gw_cache_clear(c);
            memset(m, 0, sizeof(m));
            count = 0;
        }
        CHECK_UINT_EQ(gw_cache_count(c), count);
        if (step % 1000 == 0 || step > 199000) {
            for (int j = 0; j < UNIVERSE; j++) {
                struct cm_hash kj = model_key(j);
                if (m[j].present)
                    has(c, kj.hi, kj.lo, m[j].gen);
                else
                    absent(c, kj.hi, kj.lo);
            }
        }
    }
    gw_cache_destroy(c);
}

TEST(random_operations_under_eviction_stay_consistent)
{
    const size_t max = 50;
    struct gw_cache *c = gw_cache_create(max);
    struct model m[UNIVERSE] = {{0}};
    for (int step = 0; step < 100000; step++) {
        int i = (int)(rnd() % UNIVERSE);
        struct cm_hash k = model_key(i);
        if (rnd() % 4) {
            uint64_t gen = (uint64_t)step;
            put(c, k.hi, k.lo, gen, rnd() % 1000000);
            m[i].present = 1;
            m[i].gen = gen;
            has(c, k.hi, k.lo, gen); /* the entry just put is always there */
        } else {
            gw_cache_drop(c, k);
            m[i].present = 0;
            absent(c, k.hi, k.lo);
        }
        CHECK(gw_cache_count(c) <= max);
        if (step % 500 == 0) {
            /* whatever survived eviction holds what was put last; nothing dropped returns */
            size_t seen = 0;
            for (int j = 0; j < UNIVERSE; j++) {
                struct cm_hash kj = model_key(j);
                struct gw_cache_entry *e = gw_cache_get(c, kj);
                if (!e)
                    continue;
                seen++;
                CHECK_MSG(m[j].present, "key %d dropped but still cached", j);
                CHECK_UINT_EQ(e->gen, m[j].gen);
            }
            CHECK_UINT_EQ(seen, gw_cache_count(c));
        }
    }
    gw_cache_destroy(c);
}
