/* A blocking client for QEMU's machine protocol (QMP) on a unix socket: one short exchange
 * (connect, greeting, qmp_capabilities, a few commands, close), bounded in time and bytes.
 *
 * QEMU runs as an unprivileged user and emulates a machine a hostile tenant controls: what it
 * sends is treated as untrusted input (lines are bounded, parsed by the fuzzed JSON parser,
 * and a reply that is not what was asked for is an error). Each call blocks the scheduler's
 * loop for a few milliseconds (QEMU answers from its main loop, apart from the vCPU threads);
 * the deadline bounds it when QEMU does not answer. */
#ifndef SCH_QMP_H
#define SCH_QMP_H

#include <stddef.h>
#include <sys/types.h>

#include "common/time.h"

struct cm_json;

#define SCH_QMP_LINE_MAX (64 * 1024)

struct sch_qmp {
    int fd;
    cm_usec_t deadline; /* monotonic */
    size_t len;
    char buf[SCH_QMP_LINE_MAX + 1];
};

/* Connects to the monitor at <path>, checks that process <peer> listens on it (SO_PEERCRED;
 * <peer> 0: no check), reads the greeting and negotiates capabilities, all within <timeout>,
 * which also bounds every later command of this exchange. Returns 0, or a negative errno
 * (-ENOENT/-ECONNREFUSED: no QEMU listening yet; -EPERM: another process listens there;
 * -ETIMEDOUT) with a message in <err>. */
int sch_qmp_open(struct sch_qmp *q, const char *path, pid_t peer, cm_usec_t timeout, char *err,
                 size_t errlen);

/* Runs one command, <json> an object text such as {"execute":"cont"}. <pass_fd> >= 0 is sent
 * with it (SCM_RIGHTS: getfd, add-fd). Events that arrive first are skipped. Returns 0 with the
 * reply's "return" value in *ret (when <ret> is not NULL; free with cm_json_free()), or -EIO
 * with QEMU's error description, or another negative errno, with a message in <err>. */
int sch_qmp_cmd(struct sch_qmp *q, const char *json, int pass_fd, struct cm_json **ret, char *err,
                size_t errlen);

/* sendmsg() of <len> bytes on unix socket <sock> with <pass_fd> (>= 0) as SCM_RIGHTS, with
 * MSG_NOSIGNAL | <flags>. Returns what sendmsg() returns. */
ssize_t sch_qmp_sendmsg(int sock, const char *data, size_t len, int pass_fd, int flags);

/* Closes the connection (fd sets added on it that no block node uses are dropped by QEMU). */
void sch_qmp_close(struct sch_qmp *q);

/* Pure, fuzzed: classifies one line QEMU sent. Returns 1 for a reply with *ret_value set to
 * its "return" value (owned by *ret_tree, free that), 2 for an event (the whole object in
 * *ret_tree, free it), 3 for the greeting (nothing set), or -EIO for an error reply (its
 * "desc" in <err>), -EINVAL for anything else. */
int sch_qmp_parse_line(const char *line, size_t len, struct cm_json **ret_tree,
                       const struct cm_json **ret_value, char *err, size_t errlen);

#endif
