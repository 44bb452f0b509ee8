/* Unit tests of gateway/touchtab.c: the loops' shared note of touches and confirmed gens. The
 * slot of a hash is lo & mask; the tag comes from the top 24 bits of hi, so two hashes with
 * the same lo and another hi share a slot (a collision) and are still told apart. */
#include <pthread.h>
#include <stdint.h>

#include "common/key.h"
#include "gateway/touchtab.h"
#include "tests/harness/test.h"

#define MS CM_USEC_PER_MSEC
#define SEC CM_USEC_PER_SEC

static struct cm_hash H(uint64_t hi, uint64_t lo) {
    return (struct cm_hash){.hi = hi, .lo = lo};
}

TEST(one_touch_per_interval_whichever_loop_asks)
{
    struct gw_touchtab *t = gw_touchtab_create(64);
    CHECK_NOT_NULL(t);
    struct cm_hash a = H(0x1111222233334444ull, 7);
    cm_usec_t t0 = 1000 * SEC;
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0, SEC), 1);            /* first: touch */
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 10 * MS, SEC), 0);  /* another loop: skip */
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 999 * MS, SEC), 0); /* still within the second */
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + SEC, SEC), 1);      /* due again */
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + SEC + 5 * MS, SEC), 0);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 2 * SEC - MS, SEC), 0);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 2 * SEC, SEC), 1);
    gw_touchtab_destroy(t);
    gw_touchtab_destroy(NULL);
}

TEST(sessions_sharing_a_slot_are_told_apart)
{
    struct gw_touchtab *t = gw_touchtab_create(2);
    struct cm_hash a = H(0xaaaaaaaa00000000ull, 4), b = H(0xbbbbbbbb00000000ull, 4);
    cm_usec_t t0 = 50 * SEC;
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0, SEC), 1);
    /* b's note replaces a's: a is touched again (a touch too many, never one too few) */
    CHECK_INT_EQ(gw_touchtab_claim(t, b, t0 + MS, SEC), 1);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 2 * MS, SEC), 1);
    CHECK_INT_EQ(gw_touchtab_claim(t, b, t0 + 3 * MS, SEC), 1);
    /* a confirmation of one is not one of the other */
    cm_usec_t age = 777;
    gw_touchtab_confirm(t, a, 3, t0);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, b, 3, t0, SEC, &age), 0);
    CHECK_UINT_EQ(age, 777);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 3, t0, SEC, &age), 1);
    /* another slot (lo 5) is untouched */
    CHECK_INT_EQ(gw_touchtab_claim(t, H(0xaaaaaaaa00000000ull, 5), t0, SEC), 1);
    gw_touchtab_destroy(t);
}

TEST(a_confirmation_is_of_one_gen_and_ages)
{
    struct gw_touchtab *t = gw_touchtab_create(1024);
    struct cm_hash a = H(0x0123456789abcdefull, 0xfedcba9876543210ull);
    cm_usec_t t0 = 3600 * SEC, age = 0;
    /* nothing noted yet: an empty slot matches no session and no gen */
    for (uint64_t g = 0; g < 5; g++)
        CHECK_INT_EQ(gw_touchtab_confirmed(t, a, g, t0, SEC, &age), 0);
    gw_touchtab_confirm(t, a, 7, t0);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 7, t0 + 250 * MS, SEC, &age), 1);
    CHECK_UINT_EQ(age, 250 * MS);
    /* another gen: the cached binding is older or newer than what Redis said */
    for (uint64_t g = 0; g < 4096; g++)
        if (g != 7)
            CHECK_INT_EQ(gw_touchtab_confirmed(t, a, g, t0 + 250 * MS, SEC, &age), 0);
    /* too old for the caller */
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 7, t0 + 1001 * MS, SEC, &age), 0);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 7, t0 + 1000 * MS, SEC, &age), 1);
    /* the latest note wins */
    gw_touchtab_confirm(t, a, 8, t0 + 300 * MS);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 7, t0 + 300 * MS, SEC, &age), 0);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 8, t0 + 300 * MS, SEC, &age), 1);
    CHECK_UINT_EQ(age, 0);
    gw_touchtab_destroy(t);
}

TEST(a_note_made_after_the_readers_clock_reading_is_fresh)
{
    /* A loop reads its clock, another thread notes a touch a moment later: the note's time is
     * ahead of the reader's "now". It counts as just made, not as expired. */
    struct gw_touchtab *t = gw_touchtab_create(8);
    struct cm_hash a = H(0x5555555555555555ull, 1);
    cm_usec_t t0 = 10 * SEC, age = 99;
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 3 * MS, SEC), 1);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0, SEC), 0);
    gw_touchtab_confirm(t, a, 2, t0 + 3 * MS);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 2, t0, SEC, &age), 1);
    CHECK_UINT_EQ(age, 0);
    gw_touchtab_destroy(t);
}

TEST(old_notes_stay_old)
{
    /* A note a month old (a key used again after weeks, the slot untouched meanwhile) is
     * long expired: it neither stops a touch nor confirms a binding. (With 32 bits of
     * milliseconds it came back as fresh after 24.9 days.) */
    struct gw_touchtab *t = gw_touchtab_create(8);
    struct cm_hash a = H(0x9999999999999999ull, 2);
    cm_usec_t t0 = 3600 * SEC, age = 0;
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0, SEC), 1);
    gw_touchtab_confirm(t, a, 1, t0);
    for (cm_usec_t days = 1; days <= 400; days += 7) {
        cm_usec_t later = t0 + days * 86400 * SEC;
        CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 1, later, 3600 * SEC, &age), 0);
    }
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 30 * 86400 * SEC, SEC), 1); /* and re-noted */
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 30 * 86400 * SEC + 5 * MS, SEC), 0);
    gw_touchtab_destroy(t);
}

TEST(a_note_far_ahead_is_garbage_not_fresh)
{
    struct gw_touchtab *t = gw_touchtab_create(8);
    struct cm_hash a = H(0x7777777777777777ull, 3);
    cm_usec_t t0 = 100 * SEC, age = 0;
    gw_touchtab_confirm(t, a, 4, t0 + 1000 * MS); /* a second ahead: a clock reading apart */
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 4, t0, SEC, &age), 1);
    CHECK_UINT_EQ(age, 0);
    gw_touchtab_confirm(t, a, 4, t0 + 1001 * MS); /* further: expired */
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 4, t0, SEC, &age), 0);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0 + 60 * SEC, SEC), 1);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, t0, SEC), 1);
    gw_touchtab_destroy(t);
}

TEST(the_millisecond_clock_wraps_without_harm)
{
    /* Notes keep milliseconds modulo 2^40 (~35 years of uptime): ages across the wrap hold. */
    struct gw_touchtab *t = gw_touchtab_create(8);
    struct cm_hash a = H(0x9999999999999999ull, 2);
    cm_usec_t wrap = ((cm_usec_t)1 << 40) * MS, age = 0;
    CHECK_INT_EQ(gw_touchtab_claim(t, a, wrap - 400 * MS, SEC), 1);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, wrap + 500 * MS, SEC), 0);
    CHECK_INT_EQ(gw_touchtab_claim(t, a, wrap + 600 * MS, SEC), 1);
    gw_touchtab_confirm(t, a, 1, wrap - 10 * MS);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 1, wrap + 20 * MS, SEC, &age), 1);
    CHECK_UINT_EQ(age, 30 * MS);
    gw_touchtab_destroy(t);
}

TEST(not_bound_replaces_a_confirmation)
{
    /* A touch answered "not bound" (gen 0) notes that: no loop takes the binding it has
     * cached as confirmed any longer. */
    struct gw_touchtab *t = gw_touchtab_create(8);
    struct cm_hash a = H(0x1234123412341234ull, 6);
    cm_usec_t t0 = 20 * SEC, age = 0;
    gw_touchtab_confirm(t, a, 3, t0);
    CHECK_INT_EQ(gw_touchtab_confirmed(t, a, 3, t0 + MS, SEC, &age), 1);
    gw_touchtab_confirm(t, a, 0, t0 + 2 * MS);
    for (uint64_t g = 1; g < 100; g++)
        CHECK_INT_EQ(gw_touchtab_confirmed(t, a, g, t0 + 3 * MS, SEC, &age), 0);
    gw_touchtab_destroy(t);
}

TEST(sizes_round_up_to_a_power_of_two)
{
    /* 3 slots -> 4: lo 0..3 are four different slots, lo 4 is lo 0's */
    struct gw_touchtab *t = gw_touchtab_create(3);
    CHECK_NOT_NULL(t);
    cm_usec_t t0 = 5 * SEC;
    for (uint64_t lo = 0; lo < 4; lo++)
        CHECK_INT_EQ(gw_touchtab_claim(t, H(0x1000000000000000ull * (lo + 1), lo), t0, SEC), 1);
    for (uint64_t lo = 0; lo < 4; lo++)
        CHECK_INT_EQ(gw_touchtab_claim(t, H(0x1000000000000000ull * (lo + 1), lo), t0, SEC), 0);
    CHECK_INT_EQ(gw_touchtab_claim(t, H(0x7000000000000000ull, 4), t0, SEC), 1); /* evicts lo 0 */
    CHECK_INT_EQ(gw_touchtab_claim(t, H(0x1000000000000000ull, 0), t0, SEC), 1);
    gw_touchtab_destroy(t);
    CHECK_NOT_NULL(t = gw_touchtab_create(0));
    gw_touchtab_destroy(t);
}

/* Threads asking for the same session at the same moment: exactly one touch is granted. */
struct race {
    struct gw_touchtab *t;
    pthread_barrier_t *go;
    int granted;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    for (int round = 0; round < 2000; round++) {
        pthread_barrier_wait(r->go);
        r->granted +=
            gw_touchtab_claim(r->t, H(0x4242424242424242ull, (uint64_t)round), 100 * SEC, SEC);
    }
    return NULL;
}

TEST(of_loops_asking_at_once_one_touches)
{
    enum { THREADS = 4 };
    struct gw_touchtab *t = gw_touchtab_create(4096);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, THREADS);
    struct race r[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        r[i] = (struct race){.t = t, .go = &go};
        CHECK_INT_EQ(pthread_create(&th[i], NULL, racer, &r[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        total += r[i].granted;
    }
    CHECK_INT_EQ(total, 2000); /* one per round (each round its own slot) */
    pthread_barrier_destroy(&go);
    gw_touchtab_destroy(t);
}
