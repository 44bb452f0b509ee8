#include "gateway/touchtab.h"

#include <stdint.h>
#include <stdlib.h>

/* A note is one 64-bit word, written and read whole: a 32-bit tag in the high half, the time
 * in milliseconds of the monotonic clock (modulo 2^32: ages are differences, so the wrap
 * every ~49 days does not matter) in the low half. A tag is never 0, so an empty (zero) word
 * matches nothing. The two notes of a slot are updated independently: each stands alone. */
struct slot {
    uint64_t queued;    /* tag of the session: a loop queued its touch then */
    uint64_t confirmed; /* tag of (session, gen): Redis answered that gen then */
};

struct gw_touchtab {
    size_t mask;
    struct slot slots[];
};

static uint32_t nonzero(uint32_t tag)
{
    return tag ? tag : 1;
}

static uint32_t session_tag(struct cm_hash h)
{
    return nonzero((uint32_t)(h.hi >> 32)); /* the index comes from h.lo */
}

static uint32_t gen_tag(struct cm_hash h, uint64_t gen)
{
    /* A different gen of the same session must give another tag: mix the gen's bits all
     * over (a multiplicative hash, then fold) before combining with the session's. */
    uint64_t x = (gen + 1) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return nonzero((uint32_t)((h.hi ^ x) >> 32) ^ (uint32_t)x);
}

static uint64_t note(uint32_t tag, cm_usec_t now)
{
    return (uint64_t)tag << 32 | (uint32_t)(now / CM_USEC_PER_MSEC);
}

/* How long before <now> the note <v> was made, in microseconds (ms resolution). Another
 * thread's note may be a little later than the <now> a loop read before it was made: 0. */
static cm_usec_t age(uint64_t v, cm_usec_t now)
{
    uint32_t ms = (uint32_t)(now / CM_USEC_PER_MSEC) - (uint32_t)v;
    return ms > INT32_MAX ? 0 : (cm_usec_t)ms * CM_USEC_PER_MSEC;
}

static struct slot *slot_of(const struct gw_touchtab *t, struct cm_hash h)
{
    return (struct slot *)&t->slots[h.lo & t->mask];
}

struct gw_touchtab *gw_touchtab_create(size_t slots)
{
    size_t n = 2;
    while (n < slots && n < ((size_t)1 << 30))
        n <<= 1;
    struct gw_touchtab *t = calloc(1, sizeof(*t) + n * sizeof(struct slot));
    if (!t)
        return NULL;
    t->mask = n - 1;
    return t;
}

void gw_touchtab_destroy(struct gw_touchtab *t)
{
    free(t);
}

int gw_touchtab_claim(struct gw_touchtab *t, struct cm_hash h, cm_usec_t now, cm_usec_t every)
{
    struct slot *s = slot_of(t, h);
    uint32_t tag = session_tag(h);
    uint64_t mine = note(tag, now);
    uint64_t v = __atomic_load_n(&s->queued, __ATOMIC_RELAXED);
    for (;;) {
        if (every && (uint32_t)(v >> 32) == tag && age(v, now) < every)
            return 0;
        /* The compare-and-swap makes one of two loops asking at once the toucher; the other
         * sees its note on the retry. Another session's note in the slot is overwritten. */
        if (__atomic_compare_exchange_n(&s->queued, &v, mine, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return 1;
    }
}

void gw_touchtab_confirm(struct gw_touchtab *t, struct cm_hash h, uint64_t gen, cm_usec_t now)
{
    __atomic_store_n(&slot_of(t, h)->confirmed, note(gen_tag(h, gen), now), __ATOMIC_RELAXED);
}

int gw_touchtab_confirmed(const struct gw_touchtab *t, struct cm_hash h, uint64_t gen,
                          cm_usec_t now, cm_usec_t within, cm_usec_t *ret_age)
{
    uint64_t v = __atomic_load_n(&slot_of(t, h)->confirmed, __ATOMIC_RELAXED);
    if ((uint32_t)(v >> 32) != gen_tag(h, gen))
        return 0;
    cm_usec_t a = age(v, now);
    if (a > within)
        return 0;
    *ret_age = a;
    return 1;
}
