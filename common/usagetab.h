/* Usage counters by tenant and template, for the daemons' /metrics (issue 17: "the same as
 * Prometheus counters by tenant and template"). The USAGE script (common/store.h) answers
 * which tenant and template each session it metered belongs to; the caller adds the deltas it
 * sent to the pair's counters here. Bounded: CM_USAGETAB_PAIRS pairs per table, kept for the
 * process's life (counters never go away); a pair that finds no room, or whose tenant or
 * template name is longer than CM_USAGETAB_NAME_MAX (configured names are 1-63 bytes) or
 * holds a NUL, is added to one series labelled tenant="(other)",template="(other)" (a value
 * no configured name can take: parentheses are not in [A-Za-z0-9._-]), so the sums over all
 * series stay whole.
 *
 * One writer, any readers: the thread that owns a table (a gateway loop, the scheduler's loop)
 * is the only one to call cm_usagetab_add(); cm_usagetab_write() may run on any thread at the
 * same time (a pair's names are written before the pair is published with a release store;
 * counters are relaxed 64-bit loads and stores, no locks). */
#ifndef CM_USAGETAB_H
#define CM_USAGETAB_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

#define CM_USAGETAB_PAIRS 512   /* (tenant, template) pairs per table */
#define CM_USAGETAB_NAME_MAX 63 /* bytes of a tenant or template name */
#define CM_USAGETAB_METRICS 4   /* counters per pair */
#define CM_USAGETAB_OTHER "(other)"

struct cm_usagetab;

/* How one of the CM_USAGETAB_METRICS counters is exposed. */
struct cm_usagetab_metric {
    const char *name; /* the counter family, e.g. "berth_usage_requests_total" */
    const char *help;
    uint64_t scale; /* stored units per unit shown: 1000 for milliseconds shown as seconds */
};

/* Returns a new, empty table (free with cm_usagetab_destroy()), or NULL. */
struct cm_usagetab *cm_usagetab_create(void);
/* Takes NULL. No other thread may be reading it. */
void cm_usagetab_destroy(struct cm_usagetab *t);

/* Adds <v> (CM_USAGETAB_METRICS deltas) to the counters of (<tenant>, <tpl>), <tenant_len>
 * and <tpl_len> bytes (not NUL-terminated; <tpl> may be empty). Returns 1 when the pair has
 * its own series, 0 when the deltas went to the (other) series. The owner thread only. */
int cm_usagetab_add(struct cm_usagetab *t, const char *tenant, size_t tenant_len, const char *tpl,
                    size_t tpl_len, const uint64_t v[CM_USAGETAB_METRICS]);

struct redisReply;
/* Adds the deltas <v>[i] of the <n> sessions of one USAGE script call to the pairs its reply
 * <r> names (common/store.h: tenant and template per session, nils for a session Redis did
 * not know: its deltas are not counted, as Redis did not count them). Returns how many
 * sessions were counted, or -EPROTO (nothing counted) when <r> is not an array of 2 x <n>
 * strings or nils. The owner thread only. */
int cm_usagetab_add_reply(struct cm_usagetab *t, const struct redisReply *r, size_t n,
                          const uint64_t (*v)[CM_USAGETAB_METRICS]);

/* Appends one counter family per metric of <m> (# HELP, # TYPE, then a sample
 * name{tenant="..",template=".."} per pair, summed over the <n> tables <tabs>, in order of
 * tenant then template, label values escaped; then the (other) sample when it is not zero).
 * Values are the stored sums divided by the metric's scale. A table that has seen no pair
 * adds nothing; with none at all the families have no samples. On a lack of memory b->failed
 * is set. Any thread. */
void cm_usagetab_write(struct cm_jbuf *b, struct cm_usagetab *const *tabs, size_t n,
                       const struct cm_usagetab_metric m[CM_USAGETAB_METRICS]);

#endif
