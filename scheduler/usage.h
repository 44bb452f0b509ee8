/* Usage metering on the scheduler's side (issue 17): every heartbeat, for each bound
 * instance, the time it was bound (wall_ms) and of that paused (paused_ms) since the last
 * sample, its CPU time (cpu_ms, from its processes) and memory (mem_peak, and mem_kib_ms: KiB
 * times ms, whose quotient by the wall time is the average), and the bytes its egress proxy
 * reported (egress_out, egress_in; only when non-zero) go to Redis in one USAGE
 * script call (common/store.h). What happened since the last heartbeat before the scheduler
 * (or Redis) went away is lost: one heartbeat's worth.
 * The same deltas are counters by tenant and template on GET /metrics (scheduler/api.c,
 * common/usagetab.h: bounded, what does not fit is the (other) series), added when the USAGE
 * call's reply names each session's tenant and template: a session Redis no longer knows,
 * or a call that failed, is in neither; a call whose reply was lost (timeout, connection lost
 * after sending) may be in Redis and not in the counters. Counters of this process's life,
 * for this host. */
#ifndef SCH_USAGE_H
#define SCH_USAGE_H

struct sch_ctx;
struct cm_jbuf;

/* Samples every bound instance and sends the USAGE calls; their replies (which tenant and
 * template each session belongs to) add the same deltas to ctx->usage_labels. */
void sch_usage_sample(struct sch_ctx *ctx);
/* Appends berth_usage_{wall,paused,cpu}_seconds_total and
 * berth_usage_memory_kib_seconds_total, each by tenant and template, to <b>. */
void sch_usage_prom(struct sch_ctx *ctx, struct cm_jbuf *b);

#endif
