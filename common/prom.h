/* The Prometheus text exposition format (0.0.4), the pieces both daemons' /metrics use: a
 * family's # HELP and # TYPE lines, an escaped label value, a fixed-point number. Pure:
 * appends text to a cm_jbuf (whose <failed> reports a lack of memory). Any thread. */
#ifndef CM_PROM_H
#define CM_PROM_H

#include <stdint.h>

#include "json.h"

#define CM_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* "# HELP <name> <help>\n# TYPE <name> <type>\n". <help> is written as it is: our help texts
 * are constants without backslashes or line feeds. */
void cm_prom_family(struct cm_jbuf *b, const char *name, const char *type, const char *help);
/* <s> as a quoted label value: backslash, double quote and line feed escaped (\\ \" \n), every
 * other byte as it is. */
void cm_prom_label_value(struct cm_jbuf *b, const char *s);
/* <v> / <scale> in decimal without float rounding noise or trailing zeros: (250, 1000000) ->
 * 0.00025, (1500, 1000) -> 1.5, (7, 1) -> 7. <scale> is 1 or a power of ten up to 10^18. */
void cm_prom_scaled(struct cm_jbuf *b, uint64_t v, uint64_t scale);

#endif
