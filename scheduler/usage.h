/* Usage metering on the scheduler's side (issue 17): every heartbeat, for each bound
 * instance, the time it was bound (wall_ms) and of that paused (paused_ms) since the last
 * sample, its CPU time (cpu_ms, from its processes) and memory (mem_peak, and mem_kib_ms: KiB
 * times ms, whose quotient by the wall time is the average) go to Redis in one USAGE
 * script call (common/store.h). What happened since the last heartbeat before the scheduler
 * (or Redis) went away is lost: one heartbeat's worth. */
#ifndef SCH_USAGE_H
#define SCH_USAGE_H

struct sch_ctx;

void sch_usage_sample(struct sch_ctx *ctx);

#endif
