/* Redis lost what this scheduler wrote (restarted without persistence, a failover to an empty
 * replica, FLUSHALL): detected through a marker key, then every live instance is written back.
 *
 * The marker `P host:<host>:mark` holds a random token this scheduler wrote once its records
 * were in place (end of recovery, start of each reconcile); every heartbeat (and every
 * reconnect) reads it. A marker that is missing or not ours starts a reconcile: one
 * `reconcile` script per live instance (common/store.h) re-registers starting, warm and
 * stopping instances (warm ones back into their pool, unless a claim bound them meanwhile),
 * keeps bound instances whose session Redis still records, and ends the others; a bound
 * instance whose session record vanished gets a `lost` session record back (for the
 * template's ttl), so the session's next request follows its on_lost policy. Then the pools
 * are refilled and the host record rewritten. Idempotent; one at a time; on the scheduler loop. */
#ifndef SCH_RECONCILE_H
#define SCH_RECONCILE_H

struct sch_ctx;

/* Writes a new marker and, unless it exists, `P epoch` (now): this host's records are in
 * place. Called when recovery is done. */
void sch_reconcile_mark(struct sch_ctx *ctx);
/* Reads the marker (at most one read on its way); refills the pools when it is ours, starts a
 * reconcile when it is not. Does nothing before recovery or while a reconcile runs. */
void sch_reconcile_check(struct sch_ctx *ctx);
/* Reconciles now (or right after the one running). <why> is logged. */
void sch_reconcile_start(struct sch_ctx *ctx, const char *why);

#endif
