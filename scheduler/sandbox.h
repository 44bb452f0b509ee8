/* The child side of the process driver: what runs inside the fresh namespaces between clone()
 * and the exec of berth-agent. The child is created with CLONE_NEWUSER (and new mount, pid,
 * ipc, uts and net namespaces owned by that user namespace); the parent writes its uid and gid
 * maps and moves it into its cgroups, then releases it. The child then:
 *   1. becomes the namespace's root (an unprivileged host uid), drops the scheduler's
 *      supplementary groups and enters a new cgroup namespace (the host trees it shows were
 *      taken by the parent: sch_sandbox_host_create());
 *   2. builds the root on a small tmpfs (with the parent's detached trees moved into it): read-only /usr, /bin, /sbin, /lib* and ro_binds, a
 *      generated /etc, /proc with runc's read-only and masked paths, a minimal /dev (null, zero,
 *      full, random, urandom, tty, a private devpts, shm), /workspace + /tmp + /dev/shm on one
 *      tmpfs of workspace_size, /data (a slave of {dir}/data), no /sys; the root is then made
 *      read-only; hostname = instance id; loopback up; pivot_root;
 *   3. drops every capability (bounding, ambient, permitted, effective, inheritable) with the
 *      securebits locked, becomes the app user, sets no_new_privs, installs the seccomp filter
 *      and executes the agent, with the host-made sockets as file descriptors 5-7.
 * With <insecure> set (hosts without user namespaces or seccomp) the user namespace, the uid
 * switch and the seccomp filter are skipped; the rest is the same.
 *
 * Host layout of the instance directory {dir} (made by the parent; the sandbox sees none of it
 * but {dir}/data's contents, and never looks any of it up):
 *   {dir}/data   a shared mount point on the host; a detached slave copy of it becomes /data,
 *                so a mount the scheduler later makes on {dir}/data appears at /data
 * The new root is built on a tmpfs mounted over /tmp of the child's own mount namespace. */
#ifndef SCH_SANDBOX_H
#define SCH_SANDBOX_H

#include <stdint.h>
#include <sys/types.h>

struct sch_seccomp_prog;
struct sch_sandbox_host;

/* File descriptors the agent gets, at these numbers. */
enum {
    SCH_FD_READY = 3, /* readiness pipe: "READY\n" */
    SCH_FD_AGENT = 4, /* berth-agent, opened for execution (close-on-exec) */
    SCH_FD_APP = 5,   /* listening socket: the instance address ({dir}/sock/app.sock) */
    SCH_FD_PORTS = 6, /* listening socket: preview ports ({dir}/sock/ports.sock) */
    SCH_FD_CTL = 7,   /* listening socket: control ({dir}/sock/ctl.sock) */
    SCH_FD_EXIT = 8,  /* {dir}/exit, opened by the host for writing the agent's account */
    /* listening TCP socket 127.0.0.1:<egress_port> in the sandbox's network namespace: the
     * egress proxy's door (scheduler/egress.h). The agent only holds it (never accepts on it;
     * the app and commands it starts get no descriptor from 3 up); the scheduler takes a copy.
     * /dev/null when the sandbox has none. */
    SCH_FD_EGRESS = 9,
    SCH_FD_COUNT = 10,
};

/* Inside the sandbox: the app user (uid = gid). */
#define SCH_SANDBOX_USER 1000
/* Per sandbox: pseudo-terminals (the kernel's pool is shared by every devpts), and the socket
 * buffer bounds of its network namespace (min default max, bytes). */
#define SCH_PTY_MAX_STR "64"
#define SCH_TCP_RMEM "4096 131072 4194304"
#define SCH_TCP_WMEM "4096 16384 4194304"

struct sch_sandbox_args {
    const char *dir;      /* absolute instance directory */
    const char *hostname; /* the instance id */
    uint64_t workspace_size;
    char *const *ro_binds; /* extra host paths bound read-only at the same path; may be NULL */
    const char *rootfs;    /* NULL: the host's system trees; else they come from this directory */
    int with_data;         /* bind {dir}/data to /data */
    int insecure;          /* no user namespace, no seccomp (refused unless configured) */
    uid_t app_uid;         /* inside: SCH_SANDBOX_USER, or 0 for templates run_as_root */
    const struct sch_seccomp_prog *seccomp;
    int sync_fd;  /* read end: one byte from the parent means go, EOF means abort */
    int ready_fd; /* write end of the readiness pipe */
    int log_fd;   /* console log: becomes the agent's stdout and stderr */
    int agent_fd;
    int app_fd, ports_fd, ctl_fd, exit_fd;
    uint16_t egress_port; /* 0: no egress listener */
    const struct sch_sandbox_host *host; /* from sch_sandbox_host_create() */
    char **argv;                         /* the agent's argv */
    char **envp;                         /* the agent's (and so the app's) environment */
    char *stack_top;                     /* the child's stack, for clone() */
};

/* Run by the parent (host root) before clone(): takes detached, private copies of every host
 * tree the sandbox will show (read-only, nosuid, nodev; the device nodes nosuid, noexec), handles
 * on {dir}/root and {dir}/data, and the loader cache. The child only moves them into place, so
 * nothing on the host is looked up with the sandbox's identity. Returns NULL with a message in
 * <err>. Free with sch_sandbox_host_destroy() once the child was created (it has its copies). */
struct sch_sandbox_host *sch_sandbox_host_create(const struct sch_sandbox_args *a, char *err,
                                                 size_t errlen);
void sch_sandbox_host_destroy(struct sch_sandbox_host *h);

/* The clone() entry point; <arg> is a struct sch_sandbox_args. Never returns on success (it
 * becomes berth-agent); on failure writes "ERR <step> <what>: <reason>\n" to ready_fd and exits
 * 127. */
int sch_sandbox_child(void *arg);

#endif
