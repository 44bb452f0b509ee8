#include "prom.h"

#include <inttypes.h>
#include <string.h>

void cm_prom_family(struct cm_jbuf *b, const char *name, const char *type, const char *help)
{
    cm_jbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void cm_prom_label_value(struct cm_jbuf *b, const char *s)
{
    cm_jbuf_raw(b, "\"", 1);
    const char *run = s; /* bytes not yet written that need no escape */
    for (const char *p = s; *p; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        cm_jbuf_raw(b, run, (size_t)(p - run));
        cm_jbuf_raw(b, esc, 2);
        run = p + 1;
    }
    cm_jbuf_raw(b, run, strlen(run));
    cm_jbuf_raw(b, "\"", 1);
}

void cm_prom_scaled(struct cm_jbuf *b, uint64_t v, uint64_t scale)
{
    if (scale <= 1 || v % scale == 0) {
        cm_jbuf_printf(b, "%" PRIu64, scale > 1 ? v / scale : v);
        return;
    }
    char frac[20]; /* a uint64_t power of ten has at most 19 zeros */
    size_t n = 0;
    for (uint64_t s = scale; s > 1 && n < sizeof(frac); s /= 10)
        n++;
    uint64_t f = v % scale;
    for (size_t i = n; i > 0; i--, f /= 10)
        frac[i - 1] = (char)('0' + f % 10);
    while (n && frac[n - 1] == '0')
        n--;
    cm_jbuf_printf(b, "%" PRIu64 ".", v / scale);
    cm_jbuf_raw(b, frac, n);
}
