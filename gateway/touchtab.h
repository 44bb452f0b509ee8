/* The loops' shared note of session activity: which session a loop touched lately (queued its
 * activity for Redis) and which binding gen Redis last confirmed for it. With it, a session whose
 * connections reach several loops is touched once per activity_flush by the gateway, not once
 * per loop (DESIGN.md section 3: "at most once a second per session"), and the loops that did
 * not touch it take the confirmation from the one that did instead of a lookup of their own.
 *
 * A fixed, lossy table of atomic words indexed by the session hash: two sessions that share a
 * slot only overwrite each other's notes, which costs at most a touch or a lookup that the table
 * would have spared: every note carries a 24-bit tag of the hash (a confirmation: of the hash
 * and the gen), and a loop leaves a touch to another only when both of that session's notes
 * agree (gw_activity_touch_entry()). It is not on the per-request path: a loop reads it when one of
 * its sessions is due for a touch (once per activity_flush) and when a cached binding went stale
 * (once per cache_ttl). Any thread; lock-free. */
#ifndef GW_TOUCHTAB_H
#define GW_TOUCHTAB_H

#include <stddef.h>
#include <stdint.h>

#include "common/key.h"
#include "common/time.h"

/* Slots of the table the gateway makes when it runs more than one loop (16 bytes each). */
#define GW_TOUCHTAB_SLOTS (1u << 16)

struct gw_touchtab;

/* Returns a new table of <slots> slots (rounded up to a power of two, at least 2), all empty;
 * NULL when out of memory. Free with gw_touchtab_destroy() (NULL is fine) once no loop uses it. */
struct gw_touchtab *gw_touchtab_create(size_t slots);
void gw_touchtab_destroy(struct gw_touchtab *t);

/* A loop is about to touch session <h> at monotonic time <now>. Returns 0 when some loop
 * noted a touch of <h> less than <every> before <now> (the caller may leave the touch to it),
 * else notes this one at <now> and returns 1. Of loops asking at the same moment, one gets 1. */
int gw_touchtab_claim(struct gw_touchtab *t, struct cm_hash h, cm_usec_t now, cm_usec_t every);

/* Redis answered at <now> that session <h> is bound with gen <gen> (> 0), or is not bound
 * (<gen> 0: the note then matches no binding, and an older confirmation is gone). */
void gw_touchtab_confirm(struct gw_touchtab *t, struct cm_hash h, uint64_t gen, cm_usec_t now);

/* Whether the latest confirmation noted for <h> is of gen <gen>, at most <within> before <now>;
 * if so, returns 1 and sets *ret_age to how long before <now> it was, else returns 0 and leaves
 * *ret_age alone. A note made up to a second after <now> (by a loop that read its clock
 * later) is 0 old; notes are kept with 40 bits of milliseconds, so none is mistaken for a
 * recent one in the ~35 years before the clock wraps. */
int gw_touchtab_confirmed(const struct gw_touchtab *t, struct cm_hash h, uint64_t gen,
                          cm_usec_t now, cm_usec_t within, cm_usec_t *ret_age);

#endif
