/* berth-agent's guest mode: the agent as PID 1 (/init) of a microVM initramfs.
 *
 * The kernel starts /init without arguments. The agent then reads its configuration from the
 * image's /etc/berth/guest.conf (written by scheduler/guest/mkimage.py) and from the kernel
 * command line (berth.id=, set by the host: the instance's identity), prepares
 * the machine (agent_guest_boot()) and then runs exactly as under the process driver, with
 * --sock-dir /run/berth and READY reported on the console. */
#ifndef BERTH_AGENT_GUEST_H
#define BERTH_AGENT_GUEST_H

#include <stddef.h>
#include <stdint.h>

#define AGENT_GUEST_CONF_MAX 4096 /* bytes of guest.conf, and of the kernel command line */
#define AGENT_GUEST_ARGS_MAX 32   /* app arguments */
#define AGENT_GUEST_ID_MAX 64
#define AGENT_GUEST_CONF_PATH "/etc/berth/guest.conf"
#define AGENT_GUEST_SOCK_DIR "/run/berth"

struct agent_guest_conf {
    char id[AGENT_GUEST_ID_MAX + 1]; /* default "guest" */
    uint16_t port;                   /* the app's TCP port; 0 until configured */
    char *argv[AGENT_GUEST_ARGS_MAX + 1];
    int argc;
    char store[AGENT_GUEST_CONF_MAX + 1]; /* argv points in here */
};

/* Whether this process is the init of a microVM initramfs: PID 1, started without arguments,
 * as "/init" (the kernel's name for it), on a root file system that is the initramfs (ramfs or
 * tmpfs). Only then may guest mode mount, load modules and configure eth0: run by hand as PID
 * 1 of a namespace on a host, the agent stays in its normal mode (and prints its usage). */
int agent_guest_detect(int argc, const char *argv0);

/* Sets the defaults (id "guest", no port, no app). */
void agent_guest_conf_init(struct agent_guest_conf *conf);

/* Parses guest.conf: lines "port=N" and "arg=WORD" (the app's argv, in order; WORD may hold
 * spaces), '#' comments and empty lines. Pure; LEN at most AGENT_GUEST_CONF_MAX. Returns 0, or
 * -EINVAL with *ret_err set (unknown key, bad port, too many args, no arg). Call once per conf. */
int agent_guest_parse_conf(struct agent_guest_conf *conf, const char *text, size_t len,
                           const char **ret_err);

/* Applies the kernel command line's berth.id=ID ([A-Za-z0-9._-], at most AGENT_GUEST_ID_MAX);
 * other words are ignored (the port belongs to the image: the app's arguments name it). Pure;
 * LEN at most AGENT_GUEST_CONF_MAX. Returns 0, or -EINVAL with *ret_err set. */
int agent_guest_parse_cmdline(struct agent_guest_conf *conf, const char *text, size_t len,
                              const char **ret_err);

/* Prepares the VM, in this order: mounts proc, sysfs and devtmpfs; points fds 0-2 at /dev/null
 * (PID 1 may start with them closed: a socket must never become fd 0-2); loads every module in
 * /lib/modules/order with finit_module(); brings up lo, and eth0 as 10.0.2.15/24 with a default
 * route via 10.0.2.2 (QEMU user networking); reads the configuration; makes the socket dir; sets
 * BERTH_INSTANCE_ID and PATH; points fds 1 and 2 at the console (hvc0, else ttyS0, else
 * /dev/console). Steps that fail are logged on the console and, where the guest can still work
 * (a module, eth0), skipped. Returns 0 and fills *conf and *ret_console_fd (a new fd for the
 * READY line), or a negative errno when the app cannot be started (no configuration). */
int agent_guest_boot(struct agent_guest_conf *conf, int *ret_console_fd);

/* Ends the VM after the app exited: syncs and powers off (QEMU exits). Does not return. */
void agent_guest_poweroff(void) __attribute__((noreturn));

#endif
