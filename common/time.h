/* One time unit everywhere: microseconds. Monotonic for timers and durations, wall clock (Unix
 * epoch) only for what is stored in Redis or shown to people. */
#ifndef CM_TIME_H
#define CM_TIME_H

#include <stdint.h>
#include <sys/time.h>

typedef uint64_t cm_usec_t;

#define CM_USEC_PER_MSEC ((cm_usec_t)1000)
#define CM_USEC_PER_SEC ((cm_usec_t)1000000)

/* Monotonic clock in microseconds. Any thread. */
cm_usec_t cm_now_mono(void);
/* The same clock as of the last tick (CLOCK_MONOTONIC_COARSE: a few ms behind at most, no
 * clock read: ~10 ns against ~45 ns on a VM's TSC). For timeouts of 100 ms and more; compare
 * only with other coarse readings (a fine one may be ahead). */
cm_usec_t cm_now_mono_coarse(void);
/* Wall clock in microseconds since the Unix epoch. Any thread. */
cm_usec_t cm_now_wall(void);
/* Milliseconds since the Unix epoch (what Redis stores). */
uint64_t cm_now_wall_ms(void);
/* Fills <tv> for libevent timers from a duration in microseconds. */
void cm_usec_to_tv(cm_usec_t usec, struct timeval *tv);

#endif
