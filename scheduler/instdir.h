/* The process driver's per-instance directory on the host, {run_dir}/{id}/: what the scheduler
 * makes there for an instance (the sockets, the shared data/ mount point, the id maps of its
 * user namespace) and reads back from it (the state file, the agent's exit report, the console
 * log). Everything read back is opened with O_NOFOLLOW|O_NONBLOCK, checked to be a regular file
 * and read with a bound: the sandbox's processes write some of it. Loop thread only. */
#ifndef SCH_INSTDIR_H
#define SCH_INSTDIR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct sch_cg_io;

#define SCH_AGENT_NAME "berth-agent"

/* pidfd_open(2) and pidfd_send_signal(2) (no glibc wrappers in Debian 12): a descriptor or
 * 0, else -1 with errno. */
int sch_pidfd_open(pid_t pid);
int sch_pidfd_signal(int pidfd, int sig);

/* Writes "0 <base> 65536" into /proc/<pid>/{uid,gid}_map (we are root in the parent
 * namespace, so any range works; setgroups stays allowed for the child's setgroups(0)).
 * Returns 0 or a negative errno. */
int sch_instdir_write_id_maps(pid_t pid, uint32_t base);
/* Reads at most <len>-1 bytes of <dir>/<name> into <buf> (NUL-terminated): no symlink followed,
 * no FIFO waited on, only a regular file. Returns the length or a negative errno. */
ssize_t sch_instdir_read_host_file(const char *dir, const char *name, char *buf, size_t len);
/* A listening unix socket at <dir>/<name>, owner root, group <gid>, mode <mode>. Returns the fd
 * or a negative errno with a message in <err>. */
int sch_instdir_listen_at(const char *dir, const char *name, mode_t mode, gid_t gid, char *err,
                          size_t errlen);
/* Removes what an instance left on the host (its cgroups <cgdirs> too), never the durable
 * storage: data/ is only unmounted and rmdir'ed. Failures are logged. */
void sch_instdir_remove_traces(const char *dir, char *const *cgdirs);
/* The state file: pid=, slot= (>= 0 only), data_size=, app_uid=, io= and cgroup= lines,
 * written atomically. Returns 0 or a negative errno. */
int sch_instdir_write_state(const char *dir, pid_t pid, int slot, uint64_t data_size,
                            unsigned app_uid, const struct sch_cg_io *io, char *const *cgdirs);
/* Reads it back; absent lines leave the out-parameters as they are (<ret_app_uid>, <ret_io>
 * may be NULL). <ret_cgdirs>: a new NULL-terminated list (free with cm_strv_free()), also on
 * -EINVAL (no pid). Returns 0 or a negative errno. */
int sch_instdir_read_state(const char *dir, pid_t *ret_pid, int *ret_slot, uint64_t *ret_data_size,
                           unsigned *ret_app_uid, struct sch_cg_io *ret_io, char ***ret_cgdirs);
/* Is <pid> berth-agent running instance <id>? (reads /proc/<pid>/cmdline) */
int sch_instdir_is_agent_of(pid_t pid, const char *id);
/* Bind-mounts <path> on itself as a shared mount of its own peer group. 0 or negative errno. */
int sch_instdir_make_shared_mountpoint(const char *path);
/* How many mounts are stacked on <path> in our namespace, or a negative errno. */
int sch_instdir_mount_depth(const char *path);
/* The agent's exit report from <dir>/exit in its canonical form, or "" when absent or not one
 * of the two accepted forms (scheduler/report.c). */
void sch_instdir_read_exit_file(const char *dir, char *reason, size_t len);
/* The last <len>-1 bytes of <dir>/console.log on one line, printable ASCII without quotes or
 * backslashes (it is logged inside quotes). */
void sch_instdir_read_console_tail(const char *dir, char *tail, size_t len);

#endif
