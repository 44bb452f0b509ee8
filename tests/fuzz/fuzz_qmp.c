/* Fuzz target: what the microvm driver reads from QEMU and the guest (scheduler/qmp.c,
 * scheduler/report.c): one QMP line (QEMU runs unprivileged and emulates a machine a tenant
 * controls) and console output scanned for READY. The input is split at its first 0xff byte:
 * before it a QMP line, after it console bytes fed in small pieces. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "scheduler/qmp.h"
#include "scheduler/report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *cut = memchr(data, 0xff, size);
    size_t qlen = cut ? (size_t)(cut - data) : size;
    char *line = malloc(qlen ? qlen : 1);
    if (!line)
        return 0;
    memcpy(line, data, qlen);
    struct cm_json *tree = NULL;
    const struct cm_json *value = NULL;
    char err[48];
    memset(err, 'x', sizeof(err));
    int kind = sch_qmp_parse_line(line, qlen, &tree, &value, err, sizeof(err));
    if (kind == 1 || kind == 2) {
        if (!tree || tree->type != CM_JSON_OBJECT || (kind == 1) != (value != NULL))
            abort();
        if (kind == 2 && !cm_json_get(tree, "event"))
            abort();
    } else {
        if (tree || value)
            abort();
        if (kind != 2 && kind != 3 && kind != -EIO && kind != -EINVAL)
            abort();
        if (kind < 0 && strnlen(err, sizeof(err)) == sizeof(err))
            abort();
        if (kind == -EIO)
            for (const char *p = err; *p; p++)
                if (*p < 0x20 || *p >= 0x7f)
                    abort();
    }
    cm_json_free(tree);
    free(line);
    if (cut) {
        struct sch_console_scan scan = {0};
        const char *c = (const char *)cut + 1;
        size_t n = size - qlen - 1;
        for (size_t off = 0, step = 1; off < n; off += step, step = step % 7 + 1) {
            size_t k = n - off < step ? n - off : step;
            int r = sch_console_scan_feed(&scan, c + off, k);
            if ((r != 0 && r != 1) || scan.len > sizeof(scan.line))
                abort();
        }
    }
    return 0;
}
