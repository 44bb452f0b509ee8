/* Fuzz target: what the egress proxy (scheduler/egress.c) reads from a sandbox, whose code
 * nobody read: a request head (CONNECT, or a proxied request it rewrites), and the policy
 * patterns and lists (common/egress.c) that sessions send through the control API. Every head
 * the parser takes must name a host the policy functions can judge, and the rewritten head
 * must fit where the proxy keeps it. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/egress.h"
#include "scheduler/egress.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cm_egress_policy p;
    char *out = malloc(size + SCH_EGRESS_HEAD_EXTRA);
    if (!out)
        return 0;
    struct sch_egress_head h;
    const char *why = NULL;
    int st = sch_egress_parse_head((const char *)data, size, &h, out, size + SCH_EGRESS_HEAD_EXTRA,
                                   &why);
    if (st == 0) {
        if (!h.host[0] || strlen(h.host) >= sizeof(h.host) ||
            (h.kind == SCH_EGRESS_FORWARD &&
             (h.out_len > size + SCH_EGRESS_HEAD_EXTRA || h.port == 0)))
            abort();
        memset(&p, 0, sizeof(p));
        cm_egress_add(&p, 0, 0, "*", &why);
        cm_egress_host_allowed(&p, h.host, h.port);
    } else if (!why || (st != 400 && st != 405)) {
        abort();
    }
    free(out);
    /* The same bytes as patterns (one per line) and as a session's JSON lists. */
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    memset(&p, 0, sizeof(p));
    char *save = NULL;
    for (char *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        struct cm_egress_entry e;
        if (cm_egress_parse(line, &e, &why) == 0) {
            cm_egress_add(&p, line[0] == '-', 1, line, &why);
            cm_egress_host_allowed(&p, line, 443);
        }
    }
    char **allow = NULL, **deny = NULL;
    if (cm_egress_json_lists((const char *)data, size, &allow, &deny) == 0) {
        cm_strv_free(allow);
        cm_strv_free(deny);
    }
    free(s);
    return 0;
}
