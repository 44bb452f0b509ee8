#include "gateway/touchtab.h"

#include <stdint.h>
#include <stdlib.h>

/* A note is one 64-bit word, written and read whole: a 24-bit tag in the high bits, the time in
 * milliseconds of the monotonic clock in the low 40 (modulo 2^40: ages are differences, and
 * the wrap every ~35 years of uptime never comes). A tag is never 0, so an empty (zero) word
 * matches nothing. The two notes of a slot are updated independently: each stands alone. */
struct slot {
    uint64_t queued;    /* tag of the session: a loop queued its touch then */
    uint64_t confirmed; /* tag of (session, gen): Redis answered that gen then */
};

struct gw_touchtab {
    size_t mask;
    struct slot slots[];
};

#define TIME_BITS 40
#define TIME_MASK ((UINT64_C(1) << TIME_BITS) - 1)
#define TAG_MASK ((UINT32_C(1) << (64 - TIME_BITS)) - 1)
/* A note may be this far ahead of the <now> a loop read a moment before another thread made
 * it; further ahead is not a clock difference but garbage, and counts as long expired. */
#define AHEAD_MAX_MS 1000
#define NEVER ((cm_usec_t)-1)

static uint64_t mix(uint64_t x) /* a 64-bit finalizer: every input bit moves every output bit */
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static uint32_t tag_of(uint64_t x)
{
    uint32_t t = (uint32_t)(x >> TIME_BITS) & TAG_MASK;
    return t ? t : 1;
}

static uint32_t session_tag(struct cm_hash h)
{
    return tag_of(h.hi); /* the index comes from h.lo */
}

static uint32_t gen_tag(struct cm_hash h, uint64_t gen)
{
    return tag_of(mix(h.hi ^ mix(gen + 1)));
}

static uint64_t note(uint32_t tag, cm_usec_t now)
{
    return (uint64_t)tag << TIME_BITS | ((now / CM_USEC_PER_MSEC) & TIME_MASK);
}

/* How long before <now> the note <v> was made, in microseconds (ms resolution): 0 for a note
 * up to AHEAD_MAX_MS later than <now> (another thread's clock reading), NEVER (expired) for
 * one further ahead. */
static cm_usec_t age(uint64_t v, cm_usec_t now)
{
    uint64_t ms = ((now / CM_USEC_PER_MSEC) - v) & TIME_MASK;
    if (ms <= TIME_MASK / 2)
        return (cm_usec_t)ms * CM_USEC_PER_MSEC;
    return TIME_MASK + 1 - ms <= AHEAD_MAX_MS ? 0 : NEVER;
}

static uint32_t note_tag(uint64_t v)
{
    return (uint32_t)(v >> TIME_BITS);
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
        if (note_tag(v) == tag && age(v, now) < every)
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
    if (note_tag(v) != gen_tag(h, gen))
        return 0;
    cm_usec_t a = age(v, now);
    if (a > within)
        return 0;
    *ret_age = a;
    return 1;
}
