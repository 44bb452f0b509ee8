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
 * (`addr`, "unix:/abs/path", or "vm:127.0.0.1:port" for a VM's forward) and its control
 * socket is `ctl` (a unix socket path; scheduler/agentctl.h speaks to it). Instances outlive the scheduler process:
 * nothing here ties their life to ours.
 *
 * All functions run on the scheduler loop and may block only briefly (local syscalls). */
#ifndef SCH_DRIVER_H
#define SCH_DRIVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/time.h"
#include "scheduler/config.h"

struct cm_config;
struct cm_jbuf;
struct cm_template;
struct sch_cg_stats;
struct event_base;
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
    /* A restored microVM clone not resumed yet: its agent cannot answer before bind() (the
     * scheduler must not ask it), and it is warm. 0 for every other instance. */
    int paused;
    char accel[8]; /* the accelerator of a VM ("kvm", "tcg"), "" for other drivers: i:<id> accel */
    /* With the pause op: the listening sockets the gateway connects to (the app socket, the
     * ports socket), the driver's own descriptors (-1: none). While the instance is frozen a
     * pending connection makes one readable: that is the scheduler's cue to thaw it. */
    int wake_fds[2];
};

struct sch_start_spec {
    const char *id; /* "<host>-<hex>", unique on this host */
    const struct cm_template *tpl;
};

struct sch_driver_ops {
    const char *name;
    /* How long the agent may take to answer BIND or STATUS (0: the scheduler's defaults, 2 s):
     * a VM's agent runs in a guest that, under TCG with many VMs, may be slow to get the CPU
     * (a clone resumed at bind first runs its code through the translator again). */
    cm_usec_t agent_timeout;
    /* The agent lets no connection through before BIND (a VM): when no BIND can be delivered
     * the scheduler ends the instance (lost) instead of leaving its connections held. */
    int bind_required;
    /* The least time a stop(hard 0) gets before the kill, whatever destroy_grace says (0:
     * destroy_grace): a VM's guest must end its app, sync /data and power off. */
    cm_usec_t min_grace;
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
    /* Optional: called once at start-up for every template that names this driver, after the
     * driver was created and before any start; may block (a driver builds per-template images
     * here). Returns 0, or a negative errno with a message in <err> (the scheduler does not
     * start: "templates.<t>.driver: <err>"). */
    int (*prepare)(struct sch_driver *d, const struct cm_template *tpl, char *err, size_t errlen);
    /* Optional (NULL: the agent gets "BIND <session>"). Called before every BIND sent to the
     * agent (retries too): prepares the instance for <session> (a paused VM clone is resumed)
     * and writes the agent's BIND line, without "\n", into <line>. Returns 0, or a negative
     * errno with a message in <err> (the BIND is retried later). */
    int (*bind_line)(struct sch_driver *d, struct sch_dinst *di, const char *session, char *line,
                     size_t len, char *err, size_t errlen);
    /* Optional (NULL: the driver's instances are never paused). Freezes every process of the
     * instance (<paused> 1: it uses no CPU, keeps its memory and files) or thaws it (0; fine on
     * an instance not frozen). May block briefly (the process driver waits up to 50 ms for the
     * kernel to report the freeze; the microvm driver up to 50 ms for QEMU to close the host's
     * sockets, then up to 200 ms for the freeze). Returns 0 or a negative errno with a message
     * in <err> (-EAGAIN: busy now, try again later). */
    int (*pause)(struct sch_driver *d, struct sch_dinst *di, int paused, char *err, size_t errlen);
    /* Optional (NULL: its sandboxes have no egress proxy listener): a new descriptor of the
     * instance's egress listener (scheduler/egress.h), checked to be what it should be, or -1
     * (logged). */
    int (*egress_listener)(struct sch_driver *d, struct sch_dinst *di);
    /* Optional (NULL: no usage metering of CPU and memory): what the instance uses now. */
    int (*stats)(struct sch_driver *d, struct sch_dinst *di, struct sch_cg_stats *ret);
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
     * (run dirs, cgroups), live or not. NULL-terminated; free with cm_strv_free(). Only this
     * driver's traces: this list is how a restarted scheduler tells which driver owns an
     * instance (Redis may have lost the record), so a driver keeps its traces where no other
     * driver's list() looks. */
    int (*list)(struct sch_driver *d, char ***ret_ids);
    /* Kills whatever still runs as <id> (after checking it is ours) and removes its traces.
     * An id this driver left no traces for is left alone (the registry purges an unknown id
     * through every driver). Returns 0 or a negative errno. */
    int (*purge)(struct sch_driver *d, const char *id);
    /* Driver details for GET /v1/status: writes one JSON object. */
    void (*status)(struct sch_driver *d, struct cm_jbuf *out);
    void (*destroy)(struct sch_driver *d);
};

struct sch_driver {
    const struct sch_driver_ops *ops;
};

/* Host uid slots, shared by every driver of one scheduler: slot k is the uid range
 * uid_base + k*65536 .. +65535 (the process driver maps a user namespace onto it; the microvm
 * driver runs its QEMU as its first uid). One table, so that two drivers never hand out one
 * range. <n> = scheduler.capacity. */
struct sch_slots {
    unsigned char *used; /* n entries: 1 = in use */
    uint32_t n;
};
/* A free slot, now marked used, or -1 when all are. */
int sch_slots_take(struct sch_slots *s);
/* Marks slot <k> used (1) or free (0); out-of-range <k> (e.g. -1) is ignored. */
void sch_slots_mark(struct sch_slots *s, int k, int used);

/* What the registry gives a driver it creates. */
struct sch_driver_env {
    struct event_base *base; /* the scheduler's loop (NULL under --check: nothing is created) */
    struct sch_slots *slots;
};

/* ------------------------------------------------------------------ the registry
 *
 * A driver kind is what the registry knows of a driver before one is created: its name (what a
 * template's `driver:` says), a host probe and a constructor. sch_driver_builtin[] lists the
 * drivers this scheduler is built with; a new driver adds one line there. */
struct sch_driver_kind {
    const char *name; /* [a-z0-9_-], unique; never "static" (that is the gateway's) */
    /* Can this driver work on this host with <cfg>? Returns 1, or 0 with the reason in <why>.
     * With 1, <why> holds a caveat or "". May fork and wait for children: start-up and
     * --check only, never while the loop serves. */
    int (*probe)(const struct sch_config *cfg, char *why, size_t len);
    /* Creates the driver; borrows <cfg> and <env> for its life. NULL with a message in <err>. */
    struct sch_driver *(*create)(const struct sch_config *cfg, const struct sch_driver_env *env,
                                 char *err, size_t errlen);
};

/* The built-in drivers, terminated by an entry whose name is NULL. */
extern const struct sch_driver_kind sch_driver_builtin[];

/* The drivers of one scheduler: every known kind, its probe result once probed, and the
 * driver once a template needed it (created lazily, so a scheduler with only process
 * templates creates only the process driver). Opaque. */
struct sch_drivers;

/* Returns a new registry over <kinds> (terminated by a NULL name; borrowed for the registry's
 * life, as are <cfg> and <base>, which may be NULL when no driver will be created); nothing
 * probed or created yet. NULL when out of memory. Free with sch_drivers_destroy(). */
struct sch_drivers *sch_drivers_create(const struct sch_driver_kind *kinds,
                                       const struct sch_config *cfg, struct event_base *base);
/* Destroys every created driver (their instances keep running) and the registry. Takes NULL. */
void sch_drivers_destroy(struct sch_drivers *r);
/* Runs the probe of every kind not probed yet (forks: start-up and --check only). */
void sch_drivers_probe_all(struct sch_drivers *r);
/* Checks every template that names a driver (all but driver "static"): the name must be
 * known and the driver must work on this host (probed once). create 1: also creates each used
 * driver (the scheduler's start-up); 0: nothing is created (--check). Returns 0, or a negative
 * errno with "file:line:col: templates.<t>.driver: <why>" in <err> for the first bad one. */
int sch_drivers_for_templates(struct sch_drivers *r, const struct cm_config *cfg, int create,
                              char *err, size_t errlen);
/* The driver called <name>, created on first use. Probes it first when not probed yet.
 * Returns NULL with a message in <err> when the name is unknown ("unknown driver 'x' (known:
 * a, b)"), when the driver cannot work on this host ("driver 'x' cannot work on this host:
 * <why>") or when creating it failed. */
struct sch_driver *sch_drivers_use(struct sch_drivers *r, const char *name, char *err,
                                   size_t errlen);
/* The created driver called <name>, or NULL (unknown or not created). */
struct sch_driver *sch_drivers_get(const struct sch_drivers *r, const char *name);
/* Known kinds, in registry order: count, and the <i>th's name, probe result (-1: not probed;
 * <ret_why> borrowed, "" when none) and created driver (NULL when none). */
size_t sch_drivers_count(const struct sch_drivers *r);
const char *sch_drivers_name(const struct sch_drivers *r, size_t i);
int sch_drivers_available(const struct sch_drivers *r, size_t i, const char **ret_why);
struct sch_driver *sch_drivers_at(const struct sch_drivers *r, size_t i);
/* Writes "name,name" of the created drivers into <buf> ("" when none). */
void sch_drivers_names(const struct sch_drivers *r, char *buf, size_t len);
/* Writes a JSON array: per known kind {"name","available","reason","in_use"} and, for a
 * created one, "status" (its status() object). A kind not probed shows "available":null. */
void sch_drivers_status(const struct sch_drivers *r, struct cm_jbuf *out);
/* Purges <id> through every created driver (each ignores ids that are not its own). */
void sch_drivers_purge(struct sch_drivers *r, const char *id);
/* Which created driver's host traces hold <id>, from lists made with sch_driver_list_all():
 * the owning driver, or NULL when none lists it. *ret_ambiguous is set to 1 when two or more
 * do (then NULL is returned unless <recorded> names one of them). */
struct sch_drivers_traces;
struct sch_drivers_traces *sch_drivers_list_all(struct sch_drivers *r);
struct sch_driver *sch_drivers_owner(const struct sch_drivers_traces *t, const char *id,
                                     const char *recorded, int *ret_ambiguous);
/* Calls <cb> for every listed id with its owner (NULL when ambiguous). */
void sch_drivers_traces_each(const struct sch_drivers_traces *t,
                             void (*cb)(const char *id, struct sch_driver *owner, void *data),
                             void *data);
void sch_drivers_traces_free(struct sch_drivers_traces *t);

void sch_driver_destroy(struct sch_driver *d);

/* The microvm driver (driver_microvm.c). */
int sch_driver_microvm_probe(const struct sch_config *cfg, char *why, size_t len);
struct sch_driver *sch_driver_microvm_create(const struct sch_config *cfg,
                                             const struct sch_driver_env *env, char *err,
                                             size_t errlen);

/* The process driver (driver_process.c). */
int sch_driver_process_probe(const struct sch_config *cfg, char *why, size_t len);
struct sch_driver *sch_driver_process_create(const struct sch_config *cfg,
                                             const struct sch_driver_env *env, char *err,
                                             size_t errlen);

#endif
