/* berth-agent's guest mode: the agent as PID 1 (/init) of a microVM initramfs.
 *
 * The kernel starts /init without arguments. The agent then prepares the machine
 * (agent_guest_boot()): modules, console, network, and the template's root disk when the VM has
 * one (virtio-blk serial "berth-root": ext4, read-only, under an overlay whose upper layer is a
 * bounded tmpfs, at /sysroot). It reads its configuration from that disk's
 * /etc/berth/guest.conf (else from the initramfs's, written by scheduler/guest/mkimage.py) and
 * the kernel command line (berth.id=, set by the host: the instance's identity), and then runs
 * as under the process driver, with --sock-dir /run/berth, a TCP relay listener for the host's
 * forward, the control protocol also on the virtio-serial port "berth.ctl", and READY reported
 * on the console. The contract with the host: scheduler/README.md, "microVM guest image". */
#ifndef BERTH_AGENT_GUEST_H
#define BERTH_AGENT_GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/agent/proto.h"

#define AGENT_GUEST_CONF_MAX 4096 /* bytes of guest.conf, and of the kernel command line */
#define AGENT_GUEST_ARGS_MAX 32   /* app arguments */
#define AGENT_GUEST_ENV_MAX 64    /* env= lines */
#define AGENT_GUEST_ENV_NAME_MAX 128
#define AGENT_GUEST_ID_MAX AGENT_ID_MAX
#define AGENT_GUEST_CONF_PATH "/etc/berth/guest.conf"
#define AGENT_GUEST_SOCK_DIR "/run/berth"
#define AGENT_GUEST_SYSROOT "/sysroot"   /* the app's root when the VM has a root disk */
#define AGENT_GUEST_CTL_PORT "berth.ctl" /* the virtio-serial port of the control protocol */

#define AGENT_GUEST_RELAY_PORT 1            /* relay_port= default */
#define AGENT_GUEST_PORTS_PORT 2            /* ports_port= default */
#define AGENT_GUEST_HOLD_MS 5000            /* hold_ms= default; 1..86400000 */
#define AGENT_GUEST_UID_MAX 65534           /* uid= 0..65534 */
#define AGENT_GUEST_WORKSPACE (64ull << 20) /* workspace_size= default */
#define AGENT_GUEST_WORKSPACE_MIN (1ull << 20)
#define AGENT_GUEST_WORKSPACE_MAX (64ull << 30)

struct agent_guest_conf {
    char id[AGENT_GUEST_ID_MAX + 1]; /* default "guest"; BIND id= changes it */
    uint16_t port;                   /* the app's TCP port; 0 until configured */
    uint16_t relay_port;             /* the agent's TCP relay listener (0.0.0.0) */
    uint16_t ports_port; /* the agent's TCP ports listener (0.0.0.0): exec channel, previews */
    uint32_t uid;                    /* the app's uid and gid */
    uint64_t hold_ms;                /* how long a connection waits for BIND */
    uint64_t workspace_size;         /* bytes of the tmpfs under the overlay */
    char *argv[AGENT_GUEST_ARGS_MAX + 1];
    int argc;
    char *env[AGENT_GUEST_ENV_MAX + 1]; /* "NAME=VALUE" */
    int envc;
    unsigned seen;                        /* keys given (duplicates are refused) */
    int rooted;                           /* the root disk is mounted at AGENT_GUEST_SYSROOT */
    int data_mounted;                     /* BIND data=1 mounted the data disk */
    char store[AGENT_GUEST_CONF_MAX + 1]; /* argv and env point in here */
};

/* Whether this process is the init of a microVM initramfs: PID 1, started without arguments,
 * as "/init" (the kernel's name for it), on a root file system that is the initramfs (ramfs or
 * tmpfs). Only then may guest mode mount, load modules and configure eth0: run by hand as PID
 * 1 of a namespace on a host, the agent stays in its normal mode (and prints its usage). */
int agent_guest_detect(int argc, const char *argv0);

/* Sets the defaults (id "guest", no port, no app, the AGENT_GUEST_* defaults above). */
void agent_guest_conf_init(struct agent_guest_conf *conf);

/* Parses guest.conf, one key per line, '#' comments and empty lines:
 *   port=N            the app's TCP port (1..65535; required)
 *   arg=WORD          the app's argv, in order (WORD may hold spaces; at least one)
 *   env=NAME=VALUE    the app's environment (NAME: [A-Za-z_][A-Za-z0-9_]*, at most 128; not
 *                     BERTH_INSTANCE_ID or PORT, which the agent sets; each NAME once)
 *   relay_port=N      the TCP relay listener (1..65535, not port; default 1)
 *   ports_port=N      the TCP ports listener: exec channel and preview links, each
 *                     connection's first line says which (1..65535, neither port nor
 *                     relay_port; default 2)
 *   hold_ms=N         how long a connection waits for BIND (1..86400000; default 5000)
 *   uid=N             the app's uid and gid (0..65534; default 0)
 *   workspace_size=N  bytes of the overlay's tmpfs (1 MiB..64 GiB; default 64 MiB)
 * Numbers are plain decimal. Every key but arg= and env= at most once. Pure; LEN at most
 * AGENT_GUEST_CONF_MAX. Returns 0, or -EINVAL with *ret_err set (unknown or repeated key, bad
 * number, bad NAME, too many lines, no arg or port). Call once per conf. */
int agent_guest_parse_conf(struct agent_guest_conf *conf, const char *text, size_t len,
                           const char **ret_err);

/* Applies the kernel command line's berth.id=ID ([A-Za-z0-9._-], at most AGENT_GUEST_ID_MAX);
 * other words are ignored (the port belongs to the image: the app's arguments name it). Pure;
 * LEN at most AGENT_GUEST_CONF_MAX. Returns 0, or -EINVAL with *ret_err set. */
int agent_guest_parse_cmdline(struct agent_guest_conf *conf, const char *text, size_t len,
                              const char **ret_err);

/* Prepares the VM, in this order: mounts devtmpfs; points fds 0-2 at /dev/null (PID 1 may
 * start with them closed: a socket must never become fd 0-2); mounts proc and sysfs; loads
 * every module in /lib/modules/order with finit_module(); points fds 1 and 2 at the console
 * (hvc0, else ttyS0, else /dev/console) and repeats there what was logged before; brings up lo,
 * and eth0 as 10.0.2.15/24 with a default route via 10.0.2.2 (QEMU user networking); with a
 * "berth-root" disk: mounts it, reads guest.conf from it and builds /sysroot (see the README),
 * else reads the initramfs's guest.conf; applies the kernel command line; makes the socket dir.
 * Steps that fail are logged on the console and, where the guest can still work (a module,
 * eth0), skipped. Returns 0 and fills *conf and *ret_console_fd (a new fd for the READY line),
 * or a negative errno when the app cannot be started (no configuration, no root). */
int agent_guest_boot(struct agent_guest_conf *conf, int *ret_console_fd);

/* In the app's child, before exec: sets its environment (conf->env, then BERTH_INSTANCE_ID,
 * PORT, and HOME, PATH, LANG, TMPDIR unless env= set them), enters /sysroot (chroot, cwd
 * /workspace) when rooted (else cwd /tmp), drops to conf->uid (setgroups(0), setgid, setuid)
 * and sets no_new_privs. Returns 0, or -errno with *ret_what naming the failed step. */
int agent_guest_enter_app(const struct agent_guest_conf *conf, const char **ret_what);

/* Applies BIND's optional words in this order: clock= (CLOCK_REALTIME), seed= (RNDADDENTROPY
 * crediting 256 bits, then RNDRESEEDCRNG), id= (sethostname, conf->id), data=1 (the
 * "berth-data" disk: BLKFLSBUF, then mounted ext4 nosuid,nodev at /sysroot/data, or /data
 * when not rooted; its root directory owned by conf->uid; only once: a repeat does nothing).
 * Returns 0, or -errno with ERR (ERRLEN bytes) saying what failed ("data: ..."). */
int agent_guest_bind(struct agent_guest_conf *conf, const struct agent_cmd *cmd, char *err,
                     size_t errlen);

/* Finds the virtio-serial port named AGENT_GUEST_CTL_PORT: writes its device path
 * (/dev/vportNpM) to PATH. Returns 0, or -ENOENT while it does not exist (yet). */
int agent_guest_ctl_port(char *path, size_t len);

/* Ends the VM: kills every other process, syncs, unmounts the data disk, syncs and powers off
 * (QEMU exits 0). Does not return. Every exit of the agent in guest mode ends here. */
void agent_guest_poweroff(void) __attribute__((noreturn));

#endif
