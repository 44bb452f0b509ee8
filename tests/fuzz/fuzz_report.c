/* Fuzz target: what the scheduler reads from inside a sandbox (scheduler/report.c): the agent's
 * exit file, its STATUS reply, and the sanitizer for logging them. Whatever the input, the
 * results must be one of the exact accepted forms, and nothing may be read or written out of
 * bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copies without a terminator: the functions take lengths. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    char out[64];
    memset(out, 'x', sizeof(out));
    if (sch_report_exit(buf, size, out, sizeof(out)) == 0) {
        if (strncmp(out, "exited status=", 14) != 0 && strncmp(out, "killed signal=", 14) != 0)
            abort();
        if (strlen(out) > 17)
            abort();
    }
    char small[4];
    (void)sch_report_exit(buf, size, small, sizeof(small));
    int ready = -1, bound = -1;
    int rc = sch_report_status(buf, size, &ready, &bound);
    if ((ready != 0 && ready != 1) || (bound != 0 && bound != 1) || (rc < 0 && (ready || bound)))
        abort();
    char shown[32];
    sch_report_sanitize(buf, size, shown, sizeof(shown));
    for (const char *p = shown; *p; p++)
        if (*p < 0x20 || *p >= 0x7f || *p == '"' || *p == '\\')
            abort();
    free(buf);
    return 0;
}
