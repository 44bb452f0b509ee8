/* What the scheduler reads from inside a sandbox, parsed by pure functions (fuzzed:
 * tests/fuzz/fuzz_report.c). Everything here comes from code nobody trusts: anything but the
 * exact expected forms is rejected, and nothing is copied unbounded or unescaped. */
#ifndef SCH_REPORT_H
#define SCH_REPORT_H

#include <stddef.h>

/* The agent's exit file: "exited status=N" (N 0..255) or "killed signal=N" (N 1..64), an
 * optional final newline and nothing else. Returns 0 with the canonical text in <out>, or
 * -EINVAL (<out> untouched). */
int sch_report_exit(const char *buf, size_t len, char *out, size_t outlen);

/* The agent's STATUS reply "OK <ready|starting> bound=<h|-> ...": sets <ret_ready> (the reply
 * starts "OK ready") and <ret_bound> (bound= names a session). Returns 0, or -EINVAL for any
 * other reply (both then 0). */
int sch_report_status(const char *line, size_t len, int *ret_ready, int *ret_bound);

/* Copies <len> bytes of untrusted text into <out> for a log line or an error message: bytes
 * outside printable ASCII, quotes and backslashes become '?'; cut to outlen-1. */
void sch_report_sanitize(const char *in, size_t len, char *out, size_t outlen);

/* A microVM's console, scanned for berth-agent's "READY" line (a line of its own; the kernel,
 * the agent and the app write there too). Bounded: a line longer than the buffer is skipped. */
struct sch_console_scan {
    char line[64];
    size_t len;
    int overlong;
};
/* Feeds <len> bytes of console output. Returns 1 when a line exactly "READY" (a trailing '\r'
 * allowed) ended within them, else 0. */
int sch_console_scan_feed(struct sch_console_scan *s, const char *buf, size_t len);

#endif
