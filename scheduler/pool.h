/* Warm pools: per template keep pool.min <= warm + starting <= pool.max on this host, within
 * capacity. `warm` is the length of P pool:<host>:<tpl> (claims pop from it in Redis), `starting`
 * the instances this scheduler is starting for the pool. A refill asks Redis for the length,
 * then starts what is missing or pops and destroys what is too many. Refills run on every
 * heartbeat, after every bind (a claim drained the pool) and after an instance ended. */
#ifndef SCH_POOL_H
#define SCH_POOL_H

struct cm_template;
struct sch_ctx;

/* Allocates ctx->pools (one per template). Returns 0 or -ENOMEM. */
int sch_pool_init(struct sch_ctx *ctx);
void sch_pool_fini(struct sch_ctx *ctx);
/* Refills the pool of <tpl>, or of every template when <tpl> is NULL. Does nothing before
 * recovery finished, while stopping or while Redis is down. */
void sch_pool_refill(struct sch_ctx *ctx, const struct cm_template *tpl);
/* Instances being started for the pool of <tpl> (counted as pool members). */
unsigned sch_pool_starting(const struct sch_ctx *ctx, const struct cm_template *tpl);

#endif
