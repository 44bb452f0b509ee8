/* Restart safety. When the scheduler (re)starts and first reaches Redis it reconciles what
 * Redis knows about this host (P host:<host>:instances and each P i:<id>) with what runs here:
 *   - a live instance that really is ours (driver adopt: pid alive and its cmdline is our
 *     agent for that id) and whose agent answers STATUS is adopted in the state Redis records
 *     (warm stays in its pool; bound is re-bound idempotently: storage mount + agent BIND);
 *     one that was starting or releasing is destroyed; a bound one that cannot be adopted ends
 *     through the lost script, so no bound session silently disappears;
 *   - an instance Redis knows but that is gone runs the lost script;
 *   - traces (run dirs, cgroups) of this host's ids that Redis does not know are purged (the
 *     driver kills a still-running agent first).
 * Only then are pools refilled and API starts accepted.
 *
 * Resync: after the subscriber reconnects, commands published meanwhile are lost; a resync
 * re-reads the state of every warm instance and binds or destroys what changed. */
#ifndef SCH_RECOVER_H
#define SCH_RECOVER_H

struct sch_ctx;

void sch_recover_start(struct sch_ctx *ctx);
/* At shutdown: pending recovery callbacks become no-ops. */
void sch_recover_abort(struct sch_ctx *ctx);
void sch_recover_resync(struct sch_ctx *ctx);

#endif
