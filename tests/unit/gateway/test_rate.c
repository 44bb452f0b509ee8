/* gateway/rate.h: the GCRA request-rate limit, on a clock the test moves. */
#include <pthread.h>
#include <string.h>

#include "gateway/rate.h"
#include "tests/harness/test.h"

#define US 1000ull /* the clock is in ns */

TEST(burst_then_the_steady_rate)
{
    struct gw_rate r;
    gw_rate_init(&r, 10, 3); /* 10/s: one every 100 ms; 3 at once */
    uint64_t t = 5000000 * US;
    for (int i = 0; i < 3; i++)
        CHECK(gw_rate_take(&r, t));
    CHECK(!gw_rate_take(&r, t));
    CHECK(!gw_rate_take(&r, t + 99999 * US)); /* a refusal costs nothing ... */
    CHECK(gw_rate_take(&r, t + 100000 * US)); /* ... the next slot comes after one interval */
    CHECK(!gw_rate_take(&r, t + 100000 * US));
    /* idle for a long time: back to a full burst, not more */
    t += 60000000 * US;
    int n = 0;
    for (int i = 0; i < 10; i++)
        n += gw_rate_take(&r, t);
    CHECK_UINT_EQ(n, 3);
    /* over one second at the steady rate: 10 (plus the burst already spent: none left) */
    n = 0;
    for (uint64_t us = 0; us <= 1000000; us += 1000) /* 100 ms, 200 ms, ... 1 s */
        n += gw_rate_take(&r, t + us * US);
    CHECK_UINT_EQ(n, 10);
}

TEST(burst_defaults_and_extremes)
{
    struct gw_rate r;
    gw_rate_init(&r, 1, 0); /* burst 0 is taken as 1 */
    CHECK(gw_rate_take(&r, 1000 * US));
    CHECK(!gw_rate_take(&r, 1000 * US));
    CHECK(gw_rate_take(&r, 1001000 * US));
    gw_rate_init(&r, 1000000, 1); /* 1 µs apart */
    CHECK(gw_rate_take(&r, 7 * US));
    CHECK(!gw_rate_take(&r, 7 * US));
    CHECK(gw_rate_take(&r, 8 * US));
    gw_rate_init(&r, 400000, 1); /* 2.5 µs apart: not rounded to 2 */
    CHECK_UINT_EQ(r.interval, 2500);
    int n = 0;
    for (uint64_t ns = 0; ns < 1000000000ull; ns += 500)
        n += gw_rate_take(&r, 10 * US * 1000 + ns);
    CHECK_UINT_EQ(n, 400000);
}

struct racer {
    struct gw_rate *r;
    int allowed;
};

static void *race(void *arg)
{
    struct racer *x = arg;
    for (int i = 0; i < 100000; i++)
        x->allowed += gw_rate_take(x->r, 1000000 * US); /* one instant: only the burst */
    return NULL;
}

TEST(threads_share_one_limit)
{
    struct gw_rate r;
    gw_rate_init(&r, 100, 50);
    struct racer x[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        x[i] = (struct racer){.r = &r};
        CHECK(pthread_create(&th[i], NULL, race, &x[i]) == 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += x[i].allowed;
    }
    CHECK_UINT_EQ(total, 50);
}
