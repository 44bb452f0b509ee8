/* The child side of the process driver: what runs inside the fresh namespaces between clone()
 * and the exec of berth-agent. It builds the sandbox's root filesystem on a private tmpfs
 * (read-only binds of the host's /usr, /bin, /lib*, /sbin, /etc, a fresh /proc, a minimal /dev,
 * /tmp, /workspace, /data, /run/berth), sets the hostname, brings up loopback, pivots into the
 * new root and executes the agent as PID 1.
 *
 * Layout of the instance directory {dir} on the host (made by the parent beforehand):
 *   {dir}/root   empty directory: the tmpfs root is mounted here inside the child's namespace
 *   {dir}/sock   bound to /run/berth (the agent's unix sockets)
 *   {dir}/data   a shared mount point on the host; inside it becomes a slave bound to /data,
 *                so a bind mount the scheduler later makes on {dir}/data appears at /data */
#ifndef SCH_SANDBOX_H
#define SCH_SANDBOX_H

#include <stdint.h>

struct sch_sandbox_args {
    const char *dir;      /* absolute instance directory */
    const char *hostname; /* the instance id */
    uint64_t workspace_size;
    char *const *ro_binds; /* extra host paths bound read-only at the same path; may be NULL */
    int with_data;         /* bind {dir}/data to /data */
    int sync_fd;           /* read end: one byte from the parent means go, EOF means abort */
    int ready_fd;          /* write end of the readiness pipe: becomes the agent's fd 3 */
    int log_fd;            /* console log: becomes the agent's stdout and stderr */
    int agent_fd;          /* berth-agent opened for execution */
    char **argv;           /* the agent's argv */
    char **envp;           /* the agent's (and so the app's) environment */
};

/* The clone() entry point; <arg> is a struct sch_sandbox_args. Never returns on success (it
 * becomes berth-agent); on failure writes "ERR <step>: <reason>\n" to ready_fd and exits 127. */
int sch_sandbox_child(void *arg);

#endif
