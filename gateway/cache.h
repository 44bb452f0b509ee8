/* A loop's cache of session bindings: session hash -> instance and address, so a bound session's
 * request costs no Redis round trip. Entries are trusted for gc->cache_ttl, dropped on an `inval`
 * message, a failed connect to the instance, and all at once after a Redis reconnect. Chained
 * buckets that grow incrementally: no put ever moves more than a few buckets' entries (no stall
 * of the loop however large the cache), and entries never move in memory. One per loop; not
 * thread-safe. */
#ifndef GW_CACHE_H
#define GW_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/key.h"
#include "common/time.h"
#include "gateway/claim.h"

struct gw_cache_entry {
    struct cm_hash hash;    /* the key: session hash, or alias hash */
    struct cm_hash session; /* the session it belongs to */
    uint8_t refreshing;     /* a background check with Redis is under way */
    uint64_t gen;
    cm_usec_t expires;    /* monotonic: after this, ask Redis again */
    cm_usec_t last_flush; /* monotonic: last activity written to Redis */
    char instance[GW_INSTANCE_ID_MAX];
    char addr[GW_ADDR_MAX];
};

struct gw_cache;

/* When a binding cached (or confirmed) at <now> goes stale: <ttl>, less up to half of it by the
 * key's (random) hash, so that sessions bound together (a batch of agents) are not all checked
 * with Redis in the same instant a cache_ttl later. */
static inline cm_usec_t gw_cache_expiry(cm_usec_t ttl, struct cm_hash h, cm_usec_t now)
{
    return now + ttl - (cm_usec_t)(h.lo % (ttl / 2 + 1));
}

/* Returns a new cache holding at most <max_entries> (then a put of a new key evicts the
 * earliest-expiring of a few entries in the buckets from its own on), or NULL. Free with
 * gw_cache_destroy(). */
struct gw_cache *gw_cache_create(size_t max_entries);
void gw_cache_destroy(struct gw_cache *c);
/* The entry for <h>, or NULL. The pointer is valid until that entry is dropped (by
 * gw_cache_drop(), gw_cache_clear(), or evicted by a put of a new key into a full cache). */
struct gw_cache_entry *gw_cache_get(struct gw_cache *c, struct cm_hash h);
/* Inserts or replaces the binding of <b->hash>. Returns the entry or NULL (out of memory). */
struct gw_cache_entry *gw_cache_put(struct gw_cache *c, const struct gw_binding *b,
                                    cm_usec_t expires);
void gw_cache_drop(struct gw_cache *c, struct cm_hash h);
void gw_cache_clear(struct gw_cache *c);
/* Marks every entry stale (expires = 0): each is used once more and checked with Redis. */
void gw_cache_expire_all(struct gw_cache *c);
size_t gw_cache_count(const struct gw_cache *c);
/* While the cache grows: how many buckets of the old table are still to be moved (a put moves
 * a few, a lookup one); 0 otherwise. For tests. */
size_t gw_cache_growing(const struct gw_cache *c);

#endif
