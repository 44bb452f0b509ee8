#include "time.h"

#include <time.h>

cm_usec_t cm_now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (cm_usec_t)ts.tv_sec * CM_USEC_PER_SEC + (cm_usec_t)ts.tv_nsec / 1000;
}

cm_usec_t cm_now_mono_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (cm_usec_t)ts.tv_sec * CM_USEC_PER_SEC + (cm_usec_t)ts.tv_nsec / 1000;
}

cm_usec_t cm_now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (cm_usec_t)ts.tv_sec * CM_USEC_PER_SEC + (cm_usec_t)ts.tv_nsec / 1000;
}

uint64_t cm_now_wall_ms(void)
{
    return cm_now_wall() / CM_USEC_PER_MSEC;
}

void cm_usec_to_tv(cm_usec_t usec, struct timeval *tv)
{
    tv->tv_sec = (time_t)(usec / CM_USEC_PER_SEC);
    tv->tv_usec = (suseconds_t)(usec % CM_USEC_PER_SEC);
}
