/* The process driver: each instance is berth-agent as PID 1 of a new user namespace (its own
 * range of host uids) owning new mount, pid, ipc, uts, net and cgroup namespaces, in its own
 * cgroups, on a private tmpfs root (sandbox.c builds it), with no capability, no_new_privs and
 * a seccomp filter. The host keeps per instance {run_dir}/{id}/ (0711, root's; nothing of it is
 * visible inside but data/'s contents):
 *   state        "pid=N", "slot=K" and "cgroup=DIR" lines: what a restarted scheduler needs to
 *                adopt or purge the instance
 *   console.log  the agent's and the app's output (bounded by the agent)
 *   exit         the agent's account of the end, written through a descriptor we opened
 *   sock/        app.sock (0660), ports.sock (0660), ctl.sock (0600): made and bound here,
 *                passed to the agent as listening descriptors
 *   data/        shared mount point receiving the session's durable file system at bind time
 *   root/        mount point of the tmpfs root inside the instance's mount namespace
 * Everything read back from here is opened with O_NOFOLLOW|O_NONBLOCK and read with a bound. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/config.h"
#include "common/json.h"
#include "common/log.h"
#include "scheduler/cgroup.h"
#include "scheduler/driver.h"
#include "scheduler/hostcheck.h"
#include "scheduler/instdir.h"
#include "scheduler/paths.h"
#include "scheduler/report.h"
#include "scheduler/sandbox.h"
#include "scheduler/seccomp.h"
#include "scheduler/storage.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

#define CHILD_STACK (256 * 1024)
#define PURGE_WAIT_MS 2000
#define PAUSE_WAIT_MS 50 /* how long a freeze may take before the pause is given up */
#define SANDBOX_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct pdriver {
    struct sch_driver base;
    const struct sch_config *cfg;
    struct sch_cgroups *cg;
    int agent_fd;
    /* What this host offers (probed at start-up) and what we use. */
    int userns, seccomp; /* 1: works here */
    int owner_ok;        /* user namespaces can be owned by the instance base id */
    char userns_why[160], seccomp_why[160];
    struct sch_seccomp_prog progs[2]; /* "default", "strict" */
    struct sch_slots *slots;          /* the registry's, shared with the other drivers */
    char prefix[SCH_HOST_ID_MAX + 2]; /* "<host>-": only such ids are ours */
};

/* {run_dir}/{id}: config.c keeps {run_dir}/{id}/sock/app.sock within a unix socket path. */
#define INST_DIR_MAX 128

struct pinst {
    struct sch_dinst pub;
    char dir[INST_DIR_MAX];
    char **cgdirs;
    int child;           /* started by this process: reap it with waitid() */
    int slot;            /* uid range, -1 without a user namespace */
    uint64_t data_size;  /* the template's, for the session's image (kept in the state file) */
    struct sch_cg_io io; /* the template's io limits for /data's device (state file too) */
    int data_lock;       /* the attached image's lock, -1 */
    unsigned app_uid;    /* the app's uid inside (state file too): owns a new image's root */
};

static int instance_dir(const struct pdriver *d, const char *id, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%s", d->cfg->run_dir, id);
    return (n < 0 || (size_t)n >= len) ? -ENAMETOOLONG : 0;
}

static int is_ours(const struct pdriver *d, const char *id)
{
    size_t n = strlen(d->prefix);
    if (strncmp(id, d->prefix, n) != 0 || strlen(id) > SCH_INST_ID_MAX)
        return 0;
    for (const char *p = id + n; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return id[n] != '\0';
}

/* ------------------------------------------------------------------ uid ranges */

static int slot_take(struct pdriver *d)
{
    return sch_slots_take(d->slots);
}

static void slot_mark(struct pdriver *d, int k, int used)
{
    sch_slots_mark(d->slots, k, used);
}

static uint32_t slot_uid(const struct pdriver *d, int k)
{
    return d->cfg->uid_base + (uint32_t)k * SCH_UID_RANGE_SIZE;
}

/* ------------------------------------------------------------------ traces on the host */

/* ------------------------------------------------------------------ start */

static char **build_env(const struct pdriver *d, const struct sch_start_spec *spec)
{
    const struct cm_template *t = spec->tpl;
    size_t n = cm_strv_len(t->app_env);
    char **env = calloc(n + 16, sizeof(*env));
    if (!env)
        return NULL;
    size_t k = 0;
    int ok = 1;
    ok &= asprintf(&env[k++], "BERTH_INSTANCE_ID=%s", spec->id) >= 0;
    ok &= asprintf(&env[k++], "PORT=%u", t->app_port) >= 0;
    /* Defaults the template may override. */
    char proxy[6][64];
    size_t np = 0;
    if (d->cfg->egress.enabled) {
        /* The egress proxy's listener on the sandbox's loopback (scheduler/egress.h). */
        static const char *const names[] = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                            "https_proxy"};
        for (size_t i = 0; i < CM_ARRAY_SIZE(names); i++)
            snprintf(proxy[np++], sizeof(proxy[0]), "%s=http://127.0.0.1:%u", names[i],
                     (unsigned)d->cfg->egress.port);
        snprintf(proxy[np++], sizeof(proxy[0]), "NO_PROXY=localhost,127.0.0.1,::1");
        snprintf(proxy[np++], sizeof(proxy[0]), "no_proxy=localhost,127.0.0.1,::1");
    }
    const char *defaults[4 + 6] = {"PATH=" SANDBOX_PATH, "HOME=/workspace", "LANG=C.UTF-8",
                                   "TMPDIR=/tmp"};
    size_t nd = 4;
    for (size_t i = 0; i < np; i++)
        defaults[nd++] = proxy[i];
    for (size_t i = 0; i < nd && ok; i++) {
        size_t klen = strcspn(defaults[i], "=") + 1;
        int overridden = 0;
        for (char **e = t->app_env; e && *e; e++)
            overridden |= strncmp(*e, defaults[i], klen) == 0;
        if (!overridden)
            ok &= (env[k++] = strdup(defaults[i])) != NULL;
    }
    for (char **e = t->app_env; e && *e && ok; e++) {
        if (strncmp(*e, "BERTH_INSTANCE_ID=", 18) == 0 || strncmp(*e, "PORT=", 5) == 0)
            continue;
        ok &= (env[k++] = strdup(*e)) != NULL;
    }
    if (!ok) {
        cm_strv_free(env);
        return NULL;
    }
    return env;
}

static char **build_argv(const struct pdriver *d, const struct sch_start_spec *spec)
{
    const struct cm_template *t = spec->tpl;
    size_t n = cm_strv_len(t->app_command);
    char **argv = calloc(n + 32, sizeof(*argv));
    if (!argv)
        return NULL;
    char port[16], hold[32], logmax[32], buf[32], conns[16], execs[16];
    snprintf(port, sizeof(port), "%u", t->app_port);
    snprintf(hold, sizeof(hold), "%" PRIu64, t->data ? d->cfg->bind_wait / CM_USEC_PER_MSEC : 0);
    snprintf(logmax, sizeof(logmax), "%" PRIu64, d->cfg->console_max);
    snprintf(buf, sizeof(buf), "%" PRIu64, d->cfg->relay_buffer);
    snprintf(conns, sizeof(conns), "%u", d->cfg->relay_max_conns);
    snprintf(execs, sizeof(execs), "%u", d->cfg->exec_max);
    char fds[SCH_FD_COUNT][8];
    for (int i = 0; i < SCH_FD_COUNT; i++)
        snprintf(fds[i], sizeof(fds[i]), "%d", i);
    const char *fixed[] = {SCH_AGENT_NAME,
                           "--id",
                           spec->id,
                           "--port",
                           port,
                           "--app-fd",
                           fds[SCH_FD_APP],
                           "--ports-fd",
                           fds[SCH_FD_PORTS],
                           "--ctl-fd",
                           fds[SCH_FD_CTL],
                           "--exit-fd",
                           fds[SCH_FD_EXIT],
                           "--ready-fd",
                           fds[SCH_FD_READY],
                           "--hold-ms",
                           hold,
                           "--log-max",
                           logmax,
                           "--buffer",
                           buf,
                           "--max-conns",
                           conns,
                           "--max-execs",
                           execs,
                           "--"};
    size_t k = 0;
    for (size_t i = 0; i < CM_ARRAY_SIZE(fixed); i++)
        if (!(argv[k++] = strdup(fixed[i])))
            goto oom;
    for (size_t i = 0; i < n; i++)
        if (!(argv[k++] = strdup(t->app_command[i])))
            goto oom;
    return argv;
oom:
    cm_strv_free(argv);
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* clone() with effective ids <owner> (uid and gid), so that the new user namespace is owned by
 * the instance's base id and not by root: the kernel charges what the sandbox creates (inotify
 * instances and watches, message queues, pending signals, ...) up to the namespace's owner, so
 * with root as the owner every sandbox would share, and could exhaust, root's budget on this
 * host. Back to root right after; the other namespaces need no capability in ours, being owned
 * by the new user namespace. <owner> 0: a plain clone. Falls back to root as the owner where an
 * unprivileged user namespace is refused (logged once). */
/* The effective ids of this thread alone. glibc's setresuid() and setresgid() change every
 * thread of the process (POSIX); the system calls change only the caller's. The scheduler is
 * single-threaded (the instance relay is a process of its own, relay.c says why), but a
 * switch meant for one clone() must never reach a thread a library may have started. */
static int thread_set_euid(uint32_t id)
{
    return (int)syscall(SYS_setresuid, -1, id, -1);
}

static int thread_set_egid(uint32_t id)
{
    return (int)syscall(SYS_setresgid, -1, id, -1);
}

static pid_t clone_as(struct pdriver *d, uint32_t owner, int flags, struct sch_sandbox_args *args,
                      int *pidfd)
{
    static int warned;
    char *stack_top = args->stack_top;
    if (owner && d->owner_ok) {
        if (thread_set_egid(owner) == 0 && thread_set_euid(owner) == 0) {
            pid_t pid = clone(sch_sandbox_child, stack_top, flags, args, pidfd);
            int e = errno;
            if (thread_set_euid(0) < 0 || thread_set_egid(0) < 0) {
                /* Without root we cannot manage anything any more: stop loudly. */
                cm_log_error("driver", "cannot become root again after clone: %s", strerror(errno));
                abort();
            }
            if (pid >= 0)
                return pid;
            errno = e;
            if (e != EPERM && e != EACCES && e != ENOSPC)
                return -1;
        } else {
            thread_set_euid(0);
            thread_set_egid(0);
        }
        d->owner_ok = 0;
        if (!warned++)
            cm_log_warn("driver",
                        "unprivileged user namespaces refused: sandboxes' user "
                        "namespaces are owned by root and share its budgets (inotify, "
                        "message queues) err=\"%s\"",
                        strerror(errno));
    }
    return clone(sch_sandbox_child, stack_top, flags, args, pidfd);
}

/* The index of profile <name> in sch_seccomp_profiles (and so in d->progs); 0, "default",
 * for an unknown one (the config loader refuses those). */
static int profile_index(const char *name)
{
    for (int i = 0; name && sch_seccomp_profiles[i]; i++)
        if (strcmp(sch_seccomp_profiles[i], name) == 0)
            return i;
    return 0;
}

static int p_start(struct sch_driver *base, const struct sch_start_spec *spec,
                   struct sch_dinst **ret, char *err, size_t errlen)
{
    struct pdriver *d = (struct pdriver *)base;
    const struct cm_template *t = spec->tpl;
    struct pinst *pi = calloc(1, sizeof(*pi));
    char p[PATH_MAX + 32];
    int sync_fds[2] = {-1, -1}, ready_fds[2] = {-1, -1}, log_fd = -1, pidfd = -1;
    int socks[3] = {-1, -1, -1}, exit_fd = -1;
    char **argv = NULL, **envp = NULL;
    char *stack = NULL;
    struct sch_sandbox_host *host = NULL;
    pid_t pid = -1;
    int rc;
    int made_dir = 0;
    if (!pi) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pi->pub.ready_fd = pi->pub.exit_fd = -1;
    pi->pub.wake_fds[0] = pi->pub.wake_fds[1] = -1;
    pi->slot = -1;
    pi->data_lock = -1;
    pi->data_size = t->data_size;
    pi->app_uid = t->run_as_root ? 0 : SCH_SANDBOX_USER;
    pi->io = (struct sch_cg_io){.read_bps = t->io_read_bps,
                                .write_bps = t->io_write_bps,
                                .read_iops = t->io_read_iops,
                                .write_iops = t->io_write_iops};
    if (!is_ours(d, spec->id) || instance_dir(d, spec->id, pi->dir, sizeof(pi->dir)) < 0) {
        snprintf(err, errlen, "bad instance id '%s'", spec->id);
        rc = -EINVAL;
        goto fail;
    }
    if (d->userns && (pi->slot = slot_take(d)) < 0) {
        snprintf(err, errlen, "no free uid range (capacity %u reached)", d->cfg->capacity);
        rc = -EAGAIN;
        goto fail;
    }
    /* 0710, the gateway's group: only root and the gateway reach the sockets and data/ (the
     * session's files); the sandbox reaches what it needs through handles. */
    if (mkdir(pi->dir, 0710) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create %s: %s", pi->dir, strerror(errno));
        goto fail;
    }
    made_dir = 1;
    if (chown(pi->dir, 0, d->cfg->socket_gid) < 0 || chmod(pi->dir, 0710) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot give %s to group %u: %s", pi->dir, d->cfg->socket_gid,
                 strerror(errno));
        goto fail;
    }
    static const char *const subdirs[][2] = {{"sock", "0710"}, {"data", "0755"}};
    for (size_t i = 0; i < CM_ARRAY_SIZE(subdirs); i++) {
        snprintf(p, sizeof(p), "%s/%s", pi->dir, subdirs[i][0]);
        if (mkdir(p, (mode_t)strtol(subdirs[i][1], NULL, 8)) < 0 ||
            (i == 0 && chown(p, 0, d->cfg->socket_gid) < 0)) {
            rc = -errno;
            snprintf(err, errlen, "cannot create %s: %s", p, strerror(errno));
            goto fail;
        }
    }
    if (t->data) {
        snprintf(p, sizeof(p), "%s/data", pi->dir);
        if ((rc = sch_instdir_make_shared_mountpoint(p)) < 0) {
            snprintf(err, errlen, "cannot make %s a shared mount: %s", p, strerror(-rc));
            goto fail;
        }
    }
    /* The sandbox's sockets and exit file are ours: made here, in a directory it cannot see,
     * and handed to the agent as descriptors. */
    snprintf(p, sizeof(p), "%s/sock", pi->dir);
    static const struct {
        const char *name;
        mode_t mode;
        int gateway; /* the gateway's group may connect */
    } sockets[] = {{"app.sock", 0660, 1}, {"ports.sock", 0660, 1}, {"ctl.sock", 0600, 0}};
    for (size_t i = 0; i < CM_ARRAY_SIZE(sockets); i++)
        if ((socks[i] = rc = sch_instdir_listen_at(p, sockets[i].name, sockets[i].mode,
                                                   sockets[i].gateway ? d->cfg->socket_gid : 0, err,
                                                   errlen)) < 0)
            goto fail;
    snprintf(p, sizeof(p), "%s/exit", pi->dir);
    exit_fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (exit_fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create %s: %s", p, strerror(errno));
        goto fail;
    }
    struct sch_cg_limits lim = {.memory = t->memory, .cpu_millis = t->cpu_millis, .pids = t->pids};
    if ((rc = sch_cgroups_create_instance(d->cg, spec->id, &lim, &pi->cgdirs, err, errlen)) < 0)
        goto fail;
    snprintf(p, sizeof(p), "%s/console.log", pi->dir);
    log_fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (log_fd < 0 || pipe2(sync_fds, O_CLOEXEC) < 0 || pipe2(ready_fds, O_CLOEXEC) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create %s or pipes: %s", p, strerror(errno));
        goto fail;
    }
    argv = build_argv(d, spec);
    envp = build_env(d, spec);
    stack = malloc(CHILD_STACK);
    if (!argv || !envp || !stack) {
        rc = -ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    struct sch_sandbox_args args = {
        .dir = pi->dir,
        .hostname = spec->id,
        .workspace_size = t->workspace_size,
        .ro_binds = d->cfg->ro_binds,
        .rootfs = t->rootfs,
        .with_data = t->data,
        .insecure = !d->userns,
        .app_uid = pi->app_uid,
        .seccomp = d->seccomp ? &d->progs[profile_index(t->seccomp)] : NULL,
        .sync_fd = sync_fds[0],
        .ready_fd = ready_fds[1],
        .log_fd = log_fd,
        .agent_fd = d->agent_fd,
        .app_fd = socks[0],
        .ports_fd = socks[1],
        .ctl_fd = socks[2],
        .exit_fd = exit_fd,
        .egress_port = d->cfg->egress.enabled ? d->cfg->egress.port : 0,
        .argv = argv,
        .envp = envp,
        .stack_top = stack + CHILD_STACK,
    };
    if (!(host = sch_sandbox_host_create(&args, err, errlen))) {
        rc = -EIO;
        goto fail;
    }
    args.host = host;
    /* No CLONE_PARENT_DEATHSIG-like ties: the instance outlives us. The user namespace comes
     * first, so it owns every other namespace the child gets. */
    int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET |
                CLONE_PIDFD | SIGCHLD;
    if (d->userns)
        flags |= CLONE_NEWUSER;
    pid = clone_as(d, d->userns ? slot_uid(d, pi->slot) : 0, flags, &args, &pidfd);
    if (pid < 0) {
        rc = -errno;
        snprintf(err, errlen, "clone: %s", strerror(errno));
        goto fail;
    }
    sch_sandbox_host_destroy(host); /* the child has its own copies of the handles */
    host = NULL;
    pi->child = 1;
    /* Our own copies of the two listeners: a connection waiting in one while the instance is
     * frozen is the cue to thaw it (p_pause()). */
    for (int i = 0; i < 2; i++)
        if ((pi->pub.wake_fds[i] = fcntl(socks[i], F_DUPFD_CLOEXEC, 3)) < 0) {
            rc = -errno;
            snprintf(err, errlen, "cannot keep a listener: %s", strerror(errno));
            goto fail;
        }
    close_fd(&sync_fds[0]);
    close_fd(&ready_fds[1]);
    close_fd(&log_fd);
    for (size_t i = 0; i < CM_ARRAY_SIZE(socks); i++)
        close_fd(&socks[i]);
    close_fd(&exit_fd);
    if (d->userns && (rc = sch_instdir_write_id_maps(pid, slot_uid(d, pi->slot))) < 0) {
        snprintf(err, errlen, "cannot write the id maps of pid %d: %s", (int)pid, strerror(-rc));
        goto fail;
    }
    if ((rc = sch_cgroups_attach(pi->cgdirs, pid)) < 0) {
        snprintf(err, errlen, "cannot move pid %d into its cgroups: %s", (int)pid, strerror(-rc));
        goto fail;
    }
    if ((rc = sch_instdir_write_state(pi->dir, pid, pi->slot, pi->data_size, pi->app_uid, &pi->io,
                                      pi->cgdirs)) < 0) {
        snprintf(err, errlen, "cannot write %s/state: %s", pi->dir, strerror(-rc));
        goto fail;
    }
    if (write(sync_fds[1], "g", 1) != 1) {
        rc = -errno;
        snprintf(err, errlen, "cannot release the sandbox child: %s", strerror(errno));
        goto fail;
    }
    close_fd(&sync_fds[1]);
    fcntl(ready_fds[0], F_SETFL, O_NONBLOCK);
    snprintf(pi->pub.id, sizeof(pi->pub.id), "%s", spec->id);
    snprintf(pi->pub.addr, sizeof(pi->pub.addr), "unix:%s/sock/app.sock", pi->dir);
    snprintf(pi->pub.ctl, sizeof(pi->pub.ctl), "%s/sock/ctl.sock", pi->dir);
    pi->pub.pid = pid;
    pi->pub.ready_fd = ready_fds[0];
    pi->pub.exit_fd = pidfd;
    free(stack);
    cm_strv_free(argv);
    cm_strv_free(envp);
    *ret = &pi->pub;
    return 0;

fail:
    sch_sandbox_host_destroy(host);
    close_fd(&sync_fds[0]);
    close_fd(&sync_fds[1]); /* EOF: a waiting child exits */
    close_fd(&ready_fds[0]);
    close_fd(&ready_fds[1]);
    close_fd(&log_fd);
    for (size_t i = 0; i < CM_ARRAY_SIZE(socks); i++)
        close_fd(&socks[i]);
    close_fd(&exit_fd);
    close_fd(&pi->pub.wake_fds[0]);
    close_fd(&pi->pub.wake_fds[1]);
    if (pid > 0) {
        sch_pidfd_signal(pidfd, SIGKILL);
        siginfo_t si;
        waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED);
    }
    close_fd(&pidfd);
    if (made_dir)
        sch_instdir_remove_traces(pi->dir, pi->cgdirs);
    slot_mark(d, pi->slot, 0);
    cm_strv_free(pi->cgdirs);
    free(stack);
    cm_strv_free(argv);
    cm_strv_free(envp);
    free(pi);
    return rc;
}

/* ------------------------------------------------------------------ adopt, storage, stop */

/* An adopted instance's listener: the agent's descriptor <target> (pidfd_getfd(), Linux 5.6),
 * kept only when it is a listening unix socket bound to {dir}/sock/<name>; else *ret stays -1
 * (the instance is then never paused: nothing would wake it). */
static void take_listener(int pidfd, int target, const char *dir, const char *name, int *ret)
{
    *ret = -1;
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
    if (fd < 0) {
        cm_log_warn("process",
                    "cannot take the agent's listener, the instance will not be paused "
                    "dir=%s sock=%s err=\"%s\"",
                    dir, name, strerror(errno));
        return;
    }
    struct sockaddr_un sa;
    socklen_t len = sizeof(sa);
    int listening = 0;
    socklen_t ll = sizeof(listening);
    char want[sizeof(sa.sun_path) + 1];
    int n = snprintf(want, sizeof(want), "%s/sock/%s", dir, name);
    memset(&sa, 0, sizeof(sa));
    if (n > 0 && (size_t)n < sizeof(want) &&
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) == 0 && listening &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && sa.sun_family == AF_UNIX &&
        len > offsetof(struct sockaddr_un, sun_path) &&
        strncmp(sa.sun_path, want, sizeof(sa.sun_path)) == 0) {
        *ret = fd;
        return;
    }
    cm_log_warn("process", "the agent's listener is not %s, the instance will not be paused", want);
    close(fd);
}

static int p_adopt(struct sch_driver *base, const char *id, struct sch_dinst **ret, char *err,
                   size_t errlen)
{
    struct pdriver *d = (struct pdriver *)base;
    char dir[INST_DIR_MAX];
    pid_t pid;
    int slot = -1;
    uint64_t data_size = 1ull << 30;
    char **cgdirs = NULL;
    if (!is_ours(d, id) || instance_dir(d, id, dir, sizeof(dir)) < 0) {
        snprintf(err, errlen, "not an instance of this host");
        return -EINVAL;
    }
    struct sch_cg_io io = {0};
    unsigned app_uid = SCH_SANDBOX_USER;
    int rc = sch_instdir_read_state(dir, &pid, &slot, &data_size, &app_uid, &io, &cgdirs);
    if (rc < 0) {
        cm_strv_free(cgdirs);
        snprintf(err, errlen, "no state file in %s: %s", dir, strerror(-rc));
        return -ESRCH;
    }
    int fd = sch_instdir_is_agent_of(pid, id) ? sch_pidfd_open(pid) : -1;
    /* Check again after opening: the pid may have been reused in between. */
    if (fd < 0 || !sch_instdir_is_agent_of(pid, id)) {
        if (fd >= 0)
            close(fd);
        cm_strv_free(cgdirs);
        snprintf(err, errlen, "pid %d is not the agent of %s any more", (int)pid, id);
        return -ESRCH;
    }
    struct pinst *pi = calloc(1, sizeof(*pi));
    if (!pi) {
        close(fd);
        cm_strv_free(cgdirs);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(pi->dir, sizeof(pi->dir), "%s", dir);
    pi->cgdirs = cgdirs;
    pi->slot = d->userns ? slot : -1;
    slot_mark(d, pi->slot, 1);
    pi->data_size = data_size;
    pi->app_uid = app_uid;
    pi->io = io;
    pi->data_lock = -1;
    snprintf(pi->pub.id, sizeof(pi->pub.id), "%s", id);
    snprintf(pi->pub.addr, sizeof(pi->pub.addr), "unix:%s/sock/app.sock", dir);
    snprintf(pi->pub.ctl, sizeof(pi->pub.ctl), "%s/sock/ctl.sock", dir);
    pi->pub.pid = pid;
    pi->pub.ready_fd = -1;
    pi->pub.exit_fd = fd;
    take_listener(fd, SCH_FD_APP, dir, "app.sock", &pi->pub.wake_fds[0]);
    take_listener(fd, SCH_FD_PORTS, dir, "ports.sock", &pi->pub.wake_fds[1]);
    *ret = &pi->pub;
    return 0;
}

static int p_attach_storage(struct sch_driver *base, struct sch_dinst *di, const char *dir,
                            char *err, size_t errlen)
{
    struct pdriver *d = (struct pdriver *)base;
    struct pinst *pi = (struct pinst *)di;
    char p[PATH_MAX + 16];
    snprintf(p, sizeof(p), "%s/data", pi->dir);
    int depth = sch_instdir_mount_depth(p);
    if (depth < 1) {
        snprintf(err, errlen, "%s is not a shared mount point (template without data?)", p);
        return -ENOTSUP;
    }
    if (depth >= 2) {
        /* Attached before (e.g. by the scheduler before a restart): hold its lock again. */
        if (pi->data_lock < 0)
            pi->data_lock = sch_storage_relock(dir);
        return 0;
    }
    int userns_fd = -1;
    if (d->userns) {
        /* The instance's own user namespace, through a pid we still hold a pidfd of. */
        char ns[64];
        snprintf(ns, sizeof(ns), "/proc/%d/ns/user", (int)pi->pub.pid);
        userns_fd = open(ns, O_RDONLY | O_CLOEXEC);
        if (userns_fd < 0 || sch_pidfd_signal(di->exit_fd, 0) < 0) {
            int e = errno;
            if (userns_fd >= 0)
                close(userns_fd);
            snprintf(err, errlen, "instance %s is gone: %s", pi->pub.id, strerror(e));
            return -ESRCH;
        }
    }
    struct sch_storage_dev dev;
    int rc = sch_storage_attach(dir, pi->data_size, pi->app_uid, userns_fd, p, &pi->data_lock, &dev,
                                err, errlen);
    if (userns_fd >= 0)
        close(userns_fd);
    if (rc == 0) {
        /* The session's disk bandwidth: on its own loop device, so only its I/O counts. */
        char ioerr[256];
        int r = sch_cgroups_limit_io(d->cg, pi->cgdirs, dev.major, dev.minor, &pi->io, ioerr,
                                     sizeof(ioerr));
        if (r < 0)
            cm_log_warn("driver", "io limits not applied inst=%s err=\"%s\"", pi->pub.id, ioerr);
    }
    return rc;
}

static int p_pause(struct sch_driver *base, struct sch_dinst *di, int paused, char *err,
                   size_t errlen)
{
    struct pdriver *d = (struct pdriver *)base;
    struct pinst *pi = (struct pinst *)di;
    if (paused && (di->wake_fds[0] < 0 || di->wake_fds[1] < 0)) {
        snprintf(err, errlen, "the instance's listeners are not known: nothing would wake it");
        return -ENOTSUP;
    }
    return sch_cgroups_freeze(d->cg, pi->cgdirs, paused, PAUSE_WAIT_MS, err, errlen);
}

static int p_stats(struct sch_driver *base, struct sch_dinst *di, struct sch_cg_stats *ret)
{
    struct pdriver *d = (struct pdriver *)base;
    return sch_cgroups_stats(d->cg, ((struct pinst *)di)->cgdirs, ret);
}

static int p_stop(struct sch_driver *base, struct sch_dinst *di, int hard)
{
    struct pdriver *d = (struct pdriver *)base;
    struct pinst *pi = (struct pinst *)di;
    char err[256];
    /* A frozen task takes no signal until thawed (cgroup v1). */
    if (sch_cgroups_frozen(d->cg, pi->cgdirs) == 1)
        sch_cgroups_freeze(d->cg, pi->cgdirs, 0, 0, err, sizeof(err));
    if (sch_pidfd_signal(di->exit_fd, hard ? SIGKILL : SIGTERM) < 0)
        return -errno;
    return 0;
}

/* ------------------------------------------------------------------ finish, release */

static void p_finish(struct sch_driver *base, struct sch_dinst *di, char *reason, size_t len,
                     char *tail, size_t taillen)
{
    struct pdriver *d = (struct pdriver *)base;
    struct pinst *pi = (struct pinst *)di;
    char from_wait[64] = "";
    if (pi->child) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PIDFD, (id_t)di->exit_fd, &si, WEXITED | WNOHANG) == 0 && si.si_pid) {
            if (si.si_code == CLD_EXITED)
                snprintf(from_wait, sizeof(from_wait), "exited status=%d", si.si_status);
            else
                snprintf(from_wait, sizeof(from_wait), "killed signal=%d", si.si_status);
        }
    }
    reason[0] = '\0';
    /* The agent's own account names the app's status; a killed agent leaves none. */
    sch_instdir_read_exit_file(pi->dir, reason, len);
    if (!reason[0])
        snprintf(reason, len, "%s", from_wait[0] ? from_wait : "gone");
    sch_instdir_read_console_tail(pi->dir, tail, taillen);
    sch_instdir_remove_traces(pi->dir, pi->cgdirs);
    close_fd(&pi->data_lock); /* after the umount: the image is free for the next instance */
    slot_mark(d, pi->slot, 0);
    close_fd(&di->ready_fd);
    close_fd(&di->exit_fd);
    close_fd(&di->wake_fds[0]);
    close_fd(&di->wake_fds[1]);
    cm_strv_free(pi->cgdirs);
    free(pi);
}

static void p_release(struct sch_driver *base, struct sch_dinst *di)
{
    (void)base;
    struct pinst *pi = (struct pinst *)di;
    close_fd(&di->ready_fd);
    close_fd(&di->exit_fd);
    close_fd(&di->wake_fds[0]);
    close_fd(&di->wake_fds[1]);
    close_fd(&pi->data_lock);
    cm_strv_free(pi->cgdirs);
    free(pi);
}

/* ------------------------------------------------------------------ list, purge */

static int add_unique(char ***ids, size_t *n, const char *id)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*ids)[i], id) == 0)
            return 0;
    char **bigger = realloc(*ids, (*n + 2) * sizeof(**ids));
    if (!bigger)
        return -ENOMEM;
    *ids = bigger;
    if (!(bigger[*n] = strdup(id)))
        return -ENOMEM;
    bigger[++*n] = NULL;
    return 0;
}

static int p_list(struct sch_driver *base, char ***ret_ids)
{
    struct pdriver *d = (struct pdriver *)base;
    char **ids = calloc(1, sizeof(*ids)), **cg_ids = NULL;
    size_t n = 0;
    int rc = 0;
    if (!ids)
        return -ENOMEM;
    DIR *dir = opendir(d->cfg->run_dir);
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)) && rc == 0)
            if (is_ours(d, e->d_name))
                rc = add_unique(&ids, &n, e->d_name);
        closedir(dir);
    }
    if (rc == 0 && (rc = sch_cgroups_list(d->cg, &cg_ids)) == 0) {
        for (char **c = cg_ids; *c && rc == 0; c++)
            if (is_ours(d, *c))
                rc = add_unique(&ids, &n, *c);
        cm_strv_free(cg_ids);
    }
    if (rc < 0) {
        cm_strv_free(ids);
        return rc;
    }
    *ret_ids = ids;
    return 0;
}

static int p_purge(struct sch_driver *base, const char *id)
{
    struct pdriver *d = (struct pdriver *)base;
    char dir[PATH_MAX];
    pid_t pid = 0;
    int slot = -1;
    uint64_t data_size = 0;
    char **cgdirs = NULL;
    if (!is_ours(d, id) || instance_dir(d, id, dir, sizeof(dir)) < 0)
        return -EINVAL;
    sch_instdir_read_state(dir, &pid, &slot, &data_size, NULL, NULL, &cgdirs);
    if (pid > 0 && sch_instdir_is_agent_of(pid, id)) {
        int fd = sch_pidfd_open(pid);
        if (fd >= 0 && sch_instdir_is_agent_of(pid, id)) {
            sch_pidfd_signal(fd, SIGKILL);
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            poll(&pfd, 1, PURGE_WAIT_MS);
            siginfo_t si;
            waitid(P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG); /* ECHILD unless ours */
        }
        if (fd >= 0)
            close(fd);
    }
    /* Also the cgroups of this id under the current parents (no state file, other cgroup). */
    char **more = sch_cgroups_instance_dirs(d->cg, id);
    sch_instdir_remove_traces(dir, cgdirs);
    /* An orphan's uid range was never marked as ours (recovery purges before any start). */
    (void)slot;
    if (more)
        sch_cgroups_remove(more);
    cm_strv_free(more);
    cm_strv_free(cgdirs);
    return 0;
}

/* ------------------------------------------------------------------ driver */

static void p_status(struct sch_driver *base, struct cm_jbuf *out)
{
    struct pdriver *d = (struct pdriver *)base;
    cm_jbuf_printf(out, "{\"name\":\"process\",\"security\":{\"user_namespace\":%s",
                   d->userns ? "true" : "false");
    if (!d->userns) {
        cm_jbuf_printf(out, ",\"user_namespace_missing\":");
        cm_jbuf_cstr(out, d->userns_why);
    }
    cm_jbuf_printf(out, ",\"seccomp\":%s", d->seccomp ? "true" : "false");
    if (!d->seccomp) {
        cm_jbuf_printf(out, ",\"seccomp_missing\":");
        cm_jbuf_cstr(out, d->seccomp_why);
    }
    cm_jbuf_printf(out,
                   ",\"insecure\":%s,\"uid_base\":%u,\"uid_range\":%u,"
                   "\"seccomp_profiles\":[\"default\",\"strict\"]},\"run_dir\":",
                   d->userns && d->seccomp ? "false" : "true", d->cfg->uid_base,
                   SCH_UID_RANGE_SIZE);
    cm_jbuf_cstr(out, d->cfg->run_dir);
    cm_jbuf_printf(out, ",\"agent\":");
    cm_jbuf_cstr(out, d->cfg->agent_path);
    cm_jbuf_printf(out, ",\"cgroups\":");
    sch_cgroups_status(d->cg, out);
    cm_jbuf_raw(out, "}", 1);
}

static void p_destroy(struct sch_driver *base)
{
    struct pdriver *d = (struct pdriver *)base;
    if (d->agent_fd >= 0)
        close(d->agent_fd);
    sch_cgroups_destroy(d->cg);
    for (size_t i = 0; i < CM_ARRAY_SIZE(d->progs); i++)
        sch_seccomp_prog_fini(&d->progs[i]);
    free(d);
}

/* One parent cgroup caps every sandbox of this host together: the host's memory and CPUs minus
 * scheduler.reserve, so that the gateway, Redis and the scheduler keep working under load. */
static void limit_all_sandboxes(struct pdriver *d)
{
    uint64_t mem = 0;
    uint32_t cpu = 0;
    char err[256] = "";
    if (sch_host_resources(&mem, &cpu) < 0) {
        cm_log_warn("cgroup",
                    "cannot read the host's memory and CPUs: sandboxes not capped together");
        return;
    }
    /* A reserve as large as the host leaves a token share, never "no limit". */
    uint64_t mem_cap =
        mem > d->cfg->reserve_memory + (64u << 20) ? mem - d->cfg->reserve_memory : 64u << 20;
    uint32_t cpu_cap =
        cpu > d->cfg->reserve_cpu_millis + 100 ? cpu - d->cfg->reserve_cpu_millis : 100;
    if (sch_cgroups_limit_parent(d->cg, mem_cap, cpu_cap, err, sizeof(err)) < 0)
        cm_log_warn("cgroup", "cap on all sandboxes not fully applied err=\"%s\"", err);
    else
        cm_log_info("cgroup",
                    "all sandboxes capped memory=%" PRIu64 " cpu_millis=%u "
                    "(host %" PRIu64 ", %u; reserve %" PRIu64 ", %u)",
                    mem_cap, cpu_cap, mem, cpu, d->cfg->reserve_memory, d->cfg->reserve_cpu_millis);
    const char *sw = sch_cgroups_swap_warning(d->cg);
    if (sw)
        cm_log_warn("cgroup", "swap not limited with memory reason=\"%s\"", sw);
}

/* Compiles the profiles and probes the host. Without a user namespace or seccomp the driver
 * refuses to start unless scheduler.insecure is set, and then says so at every start. */
static int probe_security(struct pdriver *d, char *err, size_t errlen)
{
    char cerr[160] = "";
    int compiled = 1;
    for (size_t i = 0; i < CM_ARRAY_SIZE(d->progs) && compiled; i++)
        compiled =
            sch_seccomp_compile(sch_seccomp_profiles[i], &d->progs[i], cerr, sizeof(cerr)) == 0;
    struct sch_host_support hs;
    sch_hostcheck(&hs, d->cfg->uid_base);
    if (!compiled) { /* a profile other than the default failed: no filter for this host */
        hs.seccomp = 0;
        snprintf(hs.seccomp_why, sizeof(hs.seccomp_why), "%s", cerr);
    }
    d->userns = hs.userns;
    d->seccomp = hs.seccomp;
    snprintf(d->userns_why, sizeof(d->userns_why), "%s", hs.userns_why);
    snprintf(d->seccomp_why, sizeof(d->seccomp_why), "%s", hs.seccomp_why);
    if (d->userns && d->seccomp) {
        cm_log_info("driver",
                    "sandbox security: user namespaces and seccomp available "
                    "uid_base=%u",
                    d->cfg->uid_base);
        return 0;
    }
    if (!d->cfg->insecure) {
        snprintf(err, errlen,
                 "this host cannot sandbox hostile code:%s%s%s%s (set scheduler.insecure: true "
                 "to run sandboxes without them, never for untrusted code)",
                 d->userns ? "" : " no user namespaces: ", d->userns ? "" : d->userns_why,
                 d->seccomp ? "" : " no seccomp: ", d->seccomp ? "" : d->seccomp_why);
        return -ENOTSUP;
    }
    cm_log_error("driver",
                 "INSECURE: sandboxes start without%s%s because scheduler.insecure is set; "
                 "do not run untrusted code here userns_why=\"%s\" seccomp_why=\"%s\"",
                 d->userns ? "" : " a user namespace (they run as host uids, 1000 for the app)",
                 d->seccomp ? "" : " a seccomp filter", d->userns_why, d->seccomp_why);
    return 0;
}

/* The registry's probe: the kernel features the driver cannot do without (pidfd_open), then
 * the sandbox mechanisms, as the driver's start-up checks them. Without a user namespace or
 * seccomp it works only when scheduler.insecure is set, and says so in <why>. */
int sch_driver_process_probe(const struct sch_config *cfg, char *why, size_t len)
{
    int pfd = sch_pidfd_open(getpid());
    if (pfd < 0) {
        snprintf(why, len, "pidfd_open is not available (Linux >= 5.3 needed): %s",
                 strerror(errno));
        return 0;
    }
    close(pfd);
    struct sch_host_support hs;
    sch_hostcheck(&hs, cfg->uid_base);
    if (hs.userns && hs.seccomp) {
        why[0] = '\0';
        return 1;
    }
    snprintf(why, len, "%s:%s%s%s%s%s",
             cfg->insecure ? "INSECURE (scheduler.insecure is set)"
                           : "this host cannot sandbox hostile code",
             hs.userns ? "" : " no user namespaces: ", hs.userns ? "" : hs.userns_why,
             hs.userns || hs.seccomp ? "" : ";",
             hs.seccomp ? "" : " no seccomp: ", hs.seccomp ? "" : hs.seccomp_why);
    return cfg->insecure ? 1 : 0;
}

/* The agent holds the egress listener its sandbox's setup made (sandbox.c, SCH_FD_EGRESS): a
 * copy of it, after checking that it is a listening TCP socket on 127.0.0.1:<egress.port> (it
 * is the sandbox's: an app that replaced it could only have hurt its own way out). */
static int p_egress_listener(struct sch_driver *base, struct sch_dinst *di)
{
    struct pdriver *d = (struct pdriver *)base;
    int fd = (int)syscall(SYS_pidfd_getfd, di->exit_fd, SCH_FD_EGRESS, 0);
    if (fd < 0) {
        cm_log_warn("process", "cannot take the egress listener: the sandbox has no way out "
                               "inst=%s err=\"%s\"",
                    di->id, strerror(errno));
        return -1;
    }
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int listening = 0, type = 0;
    socklen_t ll = sizeof(listening), tl = sizeof(type);
    memset(&sa, 0, sizeof(sa));
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) == 0 && listening &&
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && sa.sin_family == AF_INET &&
        sa.sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(sa.sin_port) == d->cfg->egress.port)
        return fd;
    cm_log_warn("process", "the agent's fd %d is not the egress listener: the sandbox has no way "
                           "out inst=%s",
                SCH_FD_EGRESS, di->id);
    close(fd);
    return -1;
}

static const struct sch_driver_ops process_ops = {
    .name = "process",
    .start = p_start,
    .adopt = p_adopt,
    .attach_storage = p_attach_storage,
    .pause = p_pause,
    .stats = p_stats,
    .egress_listener = p_egress_listener,
    .stop = p_stop,
    .finish = p_finish,
    .release = p_release,
    .list = p_list,
    .purge = p_purge,
    .status = p_status,
    .destroy = p_destroy,
};

struct sch_driver *sch_driver_process_create(const struct sch_config *cfg,
                                             const struct sch_driver_env *env, char *err,
                                             size_t errlen)
{
    struct pdriver *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->base.ops = &process_ops;
    d->cfg = cfg;
    d->agent_fd = -1;
    snprintf(d->prefix, sizeof(d->prefix), "%s-", cfg->host_id);
    int pfd = sch_pidfd_open(getpid());
    if (pfd < 0) {
        snprintf(err, errlen, "pidfd_open is not available (Linux >= 5.3 needed): %s",
                 strerror(errno));
        goto fail;
    }
    close(pfd);
    d->owner_ok = 1;
    d->slots = env->slots;
    if (probe_security(d, err, errlen) < 0)
        goto fail;
    int rc = sch_mkdir_p(cfg->run_dir, 0755);
    if (rc < 0) {
        snprintf(err, errlen, "cannot create run_dir %s: %s", cfg->run_dir, strerror(-rc));
        goto fail;
    }
    d->agent_fd = open(cfg->agent_path, O_RDONLY | O_CLOEXEC);
    if (d->agent_fd < 0 || access(cfg->agent_path, X_OK) < 0) {
        snprintf(err, errlen, "cannot use agent %s: %s (set scheduler.agent_path)", cfg->agent_path,
                 strerror(errno));
        goto fail;
    }
    d->cg = sch_cgroups_create(cfg->cgroup_parent, "/sys/fs/cgroup");
    if (!d->cg) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    limit_all_sandboxes(d);
    sch_cgroups_log(d->cg);
    return &d->base;
fail:
    p_destroy(&d->base);
    return NULL;
}
