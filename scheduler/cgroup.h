/* cgroup limits for sandbox instances: memory (+ swap), CPU quota, pids and io (v1 blkio
 * throttling, v2 io.max), on cgroup v1 or v2 (detected per controller from
 * /proc/self/mountinfo, so hybrid hosts work too). A controller that cannot be used (not
 * mounted, not delegated, not writable) is reported with a warning and skipped: an instance
 * then runs without that limit, never silently (sch_cgroups_status() lists it).
 *
 * Layout: {controller mount}/{base}/{cgroup_parent}/{instance id}, where base is our own cgroup
 * for that controller (from /proc/self/cgroup) when cgroup_parent is relative, or the root when
 * it starts with '/'. The directories an instance got are returned to the caller, which stores
 * them (the process driver writes them into the instance's state file) so that a restarted
 * scheduler in another cgroup can still remove them. Used from the scheduler loop only. */
#ifndef SCH_CGROUP_H
#define SCH_CGROUP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct cm_jbuf;

enum sch_cg_ctrl {
    SCH_CG_MEMORY,
    SCH_CG_CPU,
    SCH_CG_PIDS,
    SCH_CG_IO,      /* v1 "blkio", v2 "io" */
    SCH_CG_FREEZER, /* v1 "freezer" (freezer.state), v2 the core's cgroup.freeze */
    SCH_CG_COUNT,
};

/* CFS period used for CPU quotas, in microseconds. */
#define SCH_CG_CPU_PERIOD 100000u

struct sch_cg_limits {
    uint64_t memory;     /* bytes; 0 = no limit */
    uint32_t cpu_millis; /* thousandths of a core; 0 = no limit */
    uint64_t pids;       /* tasks; 0 = no limit */
};

/* io limits for one block device. */
struct sch_cg_io {
    uint64_t read_bps, write_bps;   /* bytes per second; 0 = no limit */
    uint64_t read_iops, write_iops; /* operations per second; 0 = no limit */
};

struct sch_cgroups;

/* Detects the hierarchy under <fs_root> (normally "/sys/fs/cgroup"; only mounts below it are
 * considered), creates the parent directories and probes each controller with a throw-away
 * child. Never fails for an unusable controller (it is marked and a warning recorded); returns
 * NULL only on allocation failure. Free with sch_cgroups_destroy(). */
struct sch_cgroups *sch_cgroups_create(const char *cgroup_parent, const char *fs_root);
/* sch_cgroups_create() reading <mountinfo> and <self_cgroup> instead of /proc/self/mountinfo
 * and /proc/self/cgroup: unit tests describe a fake hierarchy of plain files with them. */
struct sch_cgroups *sch_cgroups_create_at(const char *cgroup_parent, const char *fs_root,
                                          const char *mountinfo, const char *self_cgroup);
void sch_cgroups_destroy(struct sch_cgroups *cg);
/* Removes the parent directories sch_cgroups_create() made (not those that were there), when
 * empty: for a caller that only probed (--check) or could not start. */
void sch_cgroups_undo_parents(const struct sch_cgroups *cg);
/* 1 or 2 for a usable controller, 0 for an unusable one. */
int sch_cgroups_version(const struct sch_cgroups *cg, enum sch_cg_ctrl c);
/* The reason a controller is unusable, or NULL. */
const char *sch_cgroups_warning(const struct sch_cgroups *cg, enum sch_cg_ctrl c);
const char *sch_cgroups_ctrl_name(enum sch_cg_ctrl c);
/* Why the memory limit does not cap swap (the kernel has no swap accounting, or the swap file
 * refused a value), or NULL: swap is limited, or memory is unusable (its warning says why). */
const char *sch_cgroups_swap_warning(const struct sch_cgroups *cg);
/* Logs each controller: "controller ready ctrl= version= dir=<parent>" (deploy/local/run and
 * the tests find the instances' cgroups from these lines) or why it is unusable. */
void sch_cgroups_log(const struct sch_cgroups *cg);
/* The parent directory used for <c> (NULL when unusable). */
const char *sch_cgroups_parent(const struct sch_cgroups *cg, enum sch_cg_ctrl c);
/* Writes a JSON object {"memory":{"version":1,"dir":...,"limit":N,"swap":true},"cpu":
 * {"version":1,"dir":...,"limit_millis":N},"pids":{...},"io":{...}}. "limit" (bytes) and
 * "limit_millis" are what sch_cgroups_limit_parent() last wrote on "dir" (0: no limit, or not
 * called yet: a cap written by an earlier run stays until it is). An unusable controller is
 * {"version":0,"warning":...}; memory without a swap limit has "swap":false,"swap_warning". */
void sch_cgroups_status(const struct sch_cgroups *cg, struct cm_jbuf *out);

/* Creates the instance's cgroup for every usable controller and writes <lim>. Returns 0 and a
 * NULL-terminated list of created directories in <ret_dirs> (free with cm_strv_free(); the
 * list may be empty), or a negative errno with a message in <err> (nothing left behind). A
 * limit of 0 is written as "no limit". The memory limit caps swap too (v1 memsw = memory, v2
 * memory.swap.max 0) unless sch_cgroups_swap_warning() says swap cannot be limited. On v1 a
 * CPU limit above the smallest quota of the parent and its ancestors (up to the mount) is
 * lowered to it: the kernel refuses more, where v2 applies the smaller one by itself. */
int sch_cgroups_create_instance(struct sch_cgroups *cg, const char *id,
                                const struct sch_cg_limits *lim, char ***ret_dirs, char *err,
                                size_t errlen);
/* Limits the instance's io on block device <dev_major>:<dev_minor>, which must be a whole disk
 * (the kernel refuses a partition with ENODEV). <dirs> is the list sch_cgroups_create_instance()
 * returned; the io cgroup is the one directly under sch_cgroups_parent(cg, SCH_CG_IO). Writes
 * v1: blkio.throttle.{read,write}_{bps,iops}_device, one write per non-zero field (a 0 field is
 * not written: a new cgroup has no rule, so it stays unlimited); v2: one io.max line ("max"
 * for 0 fields). All fields 0: returns 0 and writes nothing, even without an io controller.
 * Returns 0; -ENOTSUP when the io controller is unusable, -ENOENT when <dirs> holds no io
 * cgroup, or the negative errno of a write (limits written before it stay), each with a
 * message in <err>. */
int sch_cgroups_limit_io(const struct sch_cgroups *cg, char *const *dirs, unsigned dev_major,
                         unsigned dev_minor, const struct sch_cg_io *io, char *err, size_t errlen);
/* Caps all instances together: writes <memory> (bytes; with the swap limit as for an instance)
 * on the memory parent directory and <cpu_millis> on the CPU parent (0 = no limit; skipped
 * for an unusable controller). On v1 the CPU cap is lowered to the ancestors' quota, and
 * instances above it are lowered to it first (the kernel refuses a parent under a child).
 * Both are tried; returns 0 or the first negative errno with a message in <err> (a limit that
 * was written stays). sch_cgroups_status() shows what was written. */
int sch_cgroups_limit_parent(struct sch_cgroups *cg, uint64_t memory, uint32_t cpu_millis,
                             char *err, size_t errlen);
/* The host's memory (MemTotal of /proc/meminfo, bytes) and the CPUs this process may run on
 * (sched_getaffinity(), in thousandths of a core). Returns 0, or a negative errno and leaves
 * the out-parameters untouched. */
int sch_host_resources(uint64_t *ret_mem_bytes, uint32_t *ret_cpu_millis);
/* Moves process <pid> into every directory of <dirs>. Returns 0 or the first negative errno. */
int sch_cgroups_attach(char *const *dirs, pid_t pid);
/* Kills any task left in <dirs> (thawing a frozen cgroup first: a frozen task does not die)
 * and removes them, retrying for up to ~200 ms while tasks exit.
 * Missing directories are fine. Returns 0 or a negative errno (the directory stays). */
int sch_cgroups_remove(char *const *dirs);
/* Directory names (instance ids) under each usable parent; NULL-terminated, deduplicated;
 * free with cm_strv_free(). Returns 0 or -ENOMEM. */
int sch_cgroups_list(const struct sch_cgroups *cg, char ***ret_ids);
/* Freezes (<frozen> 1) or thaws (0) every task of the instance whose cgroup directories are
 * <dirs> (v1 freezer.state FROZEN/THAWED, v2 cgroup.freeze 1/0). Freezing waits up to
 * <wait_ms> for the kernel to report the cgroup frozen (v1 freezer.state, v2 cgroup.events
 * "frozen 1"), blocking the caller; if it is not by then, the tasks are thawed again and
 * -EAGAIN returned (a task in an uninterruptible sleep can hold a freeze up). Returns 0;
 * -ENOTSUP when the freezer is unusable, -ENOENT when <dirs> holds no freezer cgroup, or the
 * negative errno of a write, each with a message in <err>. */
int sch_cgroups_freeze(const struct sch_cgroups *cg, char *const *dirs, int frozen,
                       unsigned wait_ms, char *err, size_t errlen);
/* 1 when the instance's freezer cgroup is frozen or freezing, 0 when thawed, or a negative
 * errno (-ENOTSUP, -ENOENT as above). */
int sch_cgroups_frozen(const struct sch_cgroups *cg, char *const *dirs);
/* What an instance uses now (usage metering). */
struct sch_cg_stats {
    uint64_t cpu_ms;   /* CPU time of its processes and of their reaped children, so far */
    uint64_t mem;      /* bytes charged to its memory cgroup now */
    uint64_t mem_peak; /* the most so far (v1 max_usage_in_bytes, v2 memory.peak; else mem) */
};
/* Reads the instance's memory cgroup and the CPU times of the tasks in its cgroups
 * (/proc/<pid>/stat utime+stime+cutime+cstime: its init reaps everything, so that total only
 * grows). Returns 0, or -ENOENT when <dirs> holds no usable cgroup. */
int sch_cgroups_stats(const struct sch_cgroups *cg, char *const *dirs, struct sch_cg_stats *ret);
/* Directories of instance <id> under each usable parent, whether or not they exist (for orphan
 * cleanup). Free with cm_strv_free(). NULL on allocation failure. */
char **sch_cgroups_instance_dirs(const struct sch_cgroups *cg, const char *id);

/* Value formatting (pure). Each writes the text to write into the controller file and returns
 * 0, or -ENOSPC when <len> is too small.
 *   memory: v1 memory.limit_in_bytes "<bytes>" or "-1"; v2 memory.max "<bytes>" or "max".
 *   cpu:    v1 cpu.cfs_quota_us "<quota>" or "-1" (period written separately as
 *           SCH_CG_CPU_PERIOD); v2 cpu.max "<quota> <period>" or "max <period>". The quota is
 *           millis * period / 1000, at least 1000 us (the kernel's minimum).
 *   swap:   for a memory limit of <memory> bytes: v1 memory.memsw.limit_in_bytes the same as
 *           memory.limit_in_bytes (memory + swap = memory: no swap); v2 memory.swap.max "0",
 *           or "max" when <memory> is 0 (no limit).
 *   pids:   v1 and v2 pids.max "<n>" or "max".
 *   io v1:  one blkio.throttle.*_device line "<major>:<minor> <value>" (0 would remove the
 *           device's rule; sch_cgroups_limit_io() does not write 0s).
 *   io v2:  io.max "<major>:<minor> rbps=<n> wbps=<n> riops=<n> wiops=<n>", "max" for 0. */
int sch_cg_format_memory(int version, uint64_t bytes, char *buf, size_t len);
int sch_cg_format_cpu(int version, uint32_t millis, char *buf, size_t len);
int sch_cg_format_swap(int version, uint64_t memory, char *buf, size_t len);
int sch_cg_format_pids(int version, uint64_t pids, char *buf, size_t len);
int sch_cg_format_io_v1(unsigned major, unsigned minor, uint64_t value, char *buf, size_t len);
int sch_cg_format_io_v2(unsigned major, unsigned minor, const struct sch_cg_io *io, char *buf,
                        size_t len);

#endif
