/* An instance's side of the egress proxy (egress.h): its listener handed over when it is
 * ready or adopted, its policy (template + session) sent when it is warm and again when it is
 * bound or the session's lists change (`egress <id> <h>` from the UPDATE script), forgotten
 * when it ends; the proxy's audit events written to Redis. All on the scheduler's loop. */
#ifndef SCH_INST_EGRESS_H
#define SCH_INST_EGRESS_H

#include <stddef.h>

struct sch_ctx;
struct sch_inst;

/* Starts the proxy when scheduler.egress is enabled. Returns 0, or -1 with <err> set. */
int sch_egress_start(struct sch_ctx *ctx, char *err, size_t errlen);
void sch_egress_stop(struct sch_ctx *ctx);

/* The instance is ready (or adopted): its listener to the proxy, the template's policy. */
void sch_inst_egress_ready(struct sch_inst *inst);
/* The instance is bound to inst->session: the session's lists are read and added. */
void sch_inst_egress_bound(struct sch_inst *inst);
void sch_inst_egress_gone(struct sch_inst *inst);
/* `egress <id> <h>`: the session's lists changed. */
void sch_egress_command(struct sch_ctx *ctx, const char *id, const char *h);

#endif
