/* The sandbox driver interface. A driver starts, adopts, stops and cleans up sandbox instances;
 * the rest of the scheduler sees only this interface and the two file descriptors every
 * instance exposes, so a microVM driver can sit next to the process driver:
 *
 *   ready_fd  readable once: one line "READY\n" when the app inside accepts connections, or
 *             "ERR <reason>\n", or EOF when the instance died before becoming ready. -1 for
 *             an adopted instance (ask the agent with PING instead).
 *   exit_fd   readable (POLLIN) once the instance has gone (a pidfd for the process driver).
 *
 * Every instance runs berth-agent as its init: the agent's app socket is the instance address
 * (`addr`, "unix:/abs/path" or "tcp:127.0.0.1:port") and its control socket is `ctl` (a unix
 * socket path; scheduler/agentctl.h speaks to it). Instances outlive the scheduler process:
 * nothing here ties their life to ours.
 *
 * All functions run on the scheduler loop and may block only briefly (local syscalls). */
#ifndef SCH_DRIVER_H
#define SCH_DRIVER_H

#include <stddef.h>
#include <sys/types.h>

#include "scheduler/config.h"

struct cm_jbuf;
struct cm_template;
struct sch_driver;

#define SCH_ADDR_MAX 160

/* One instance as the scheduler sees it. The driver allocates it (usually embedded in a larger
 * private struct) and fills it; the scheduler only reads it. */
struct sch_dinst {
    char id[SCH_INST_ID_MAX + 1];
    char addr[SCH_ADDR_MAX]; /* instance address for Redis `addr` */
    char ctl[SCH_ADDR_MAX];  /* agent control socket path */
    pid_t pid;               /* host pid of the instance's init, for Redis and status */
    int ready_fd;
    int exit_fd;
};

struct sch_start_spec {
    const char *id; /* "<host>-<hex>", unique on this host */
    const struct cm_template *tpl;
};

struct sch_driver_ops {
    const char *name;
    /* Starts an instance. Returns 0 with a new instance in <ret> (it runs on its own; watch its
     * fds), or a negative errno with a message in <err> (nothing left behind). */
    int (*start)(struct sch_driver *d, const struct sch_start_spec *spec, struct sch_dinst **ret,
                 char *err, size_t errlen);
    /* Re-attaches to running instance <id> after a scheduler restart. Verifies that it is alive
     * and really this instance. Returns 0 with a new handle (ready_fd -1), -ESRCH when it is
     * gone (its traces stay for finish/purge), or another negative errno. */
    int (*adopt)(struct sch_driver *d, const char *id, struct sch_dinst **ret, char *err,
                 size_t errlen);
    /* Makes host directory <dir> (exists, absolute) the instance's /data. Idempotent for the
     * same <dir>. Returns 0 or a negative errno with a message in <err>. */
    int (*attach_storage)(struct sch_driver *d, struct sch_dinst *di, const char *dir, char *err,
                          size_t errlen);
    /* hard 0: ask the instance to stop (the agent forwards SIGTERM to the app); hard 1: kill it
     * now. Returns 0 or a negative errno (-ESRCH: already gone). */
    int (*stop)(struct sch_driver *d, struct sch_dinst *di, int hard);
    /* Call once exit_fd is readable: reaps the instance, writes how it ended into <reason>
     * ("exited status=N", "killed signal=N", "gone") and the end of its console output into
     * <tail> (one line, newlines shown as " | ", "" when there was none), removes everything
     * it left on the host except the durable directory, and frees <di>. */
    void (*finish)(struct sch_driver *d, struct sch_dinst *di, char *reason, size_t len, char *tail,
                   size_t taillen);
    /* Forgets <di> without touching the instance (scheduler shutdown) and frees it. */
    void (*release)(struct sch_driver *d, struct sch_dinst *di);
    /* Ids of every instance of this host (ids starting with "<host>-") that left traces here
     * (run dirs, cgroups), live or not. NULL-terminated; free with cm_strv_free(). */
    int (*list)(struct sch_driver *d, char ***ret_ids);
    /* Kills whatever still runs as <id> (after checking it is ours) and removes its traces.
     * Returns 0 or a negative errno. */
    int (*purge)(struct sch_driver *d, const char *id);
    /* Driver details for GET /v1/status: writes one JSON object. */
    void (*status)(struct sch_driver *d, struct cm_jbuf *out);
    void (*destroy)(struct sch_driver *d);
};

struct sch_driver {
    const struct sch_driver_ops *ops;
};

/* Creates the driver called <name> ("process"). Borrows <cfg> for the driver's life. Returns
 * NULL with a message in <err> when the name is unknown or the host cannot run it. */
struct sch_driver *sch_driver_create(const char *name, const struct sch_config *cfg, char *err,
                                     size_t errlen);
void sch_driver_destroy(struct sch_driver *d);

/* The process driver (driver_process.c). */
struct sch_driver *sch_driver_process_create(const struct sch_config *cfg, char *err,
                                             size_t errlen);

#endif
