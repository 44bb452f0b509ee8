/* The microvm driver: every instance is a QEMU `-M microvm` guest with berth-agent as its init
 * (scheduler/README.md, "The microvm driver").
 *
 * Per template, one VM is booted once and snapshotted (its RAM in a sealed memfd, its device
 * state in a second one); every instance is a clone restored from that snapshot and left
 * paused: warm. Binding resumes it (`cont`) and hands the agent the clock, fresh entropy and its
 * identity with BIND. QEMU runs as the instance's own unprivileged uid (a slot of the shared
 * uid table), in its own cgroup, with QEMU's seccomp sandbox, and outlives the scheduler:
 * adoption finds it by its pid, checked against its start time, and its QMP socket.
 *
 * On the host, per instance, {run_dir}/microvm/<id>/ (root, 0711):
 *   state        what a restarted scheduler needs (pid, start time, slot, port, template...)
 *   console.log  the guest's console, at most console_max bytes
 *   qemu.log     QEMU's own stderr
 *   q/           QEMU's directory (its uid, 0700): qmp.sock, ctl.sock (the agent's control
 *                channel: a virtio-serial port in the guest)
 * and {run_dir}/microvm/cache/ holds the templates' root images. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <xxhash.h>

#include "common/config.h"
#include "common/json.h"
#include "common/log.h"
#include "common/secret.h"
#include "scheduler/cgroup.h"
#include "scheduler/driver.h"
#include "scheduler/instdir.h"
#include "scheduler/paths.h"
#include "scheduler/qmp.h"
#include "scheduler/report.h"
#include "scheduler/storage.h"
#include "scheduler/vmroot.h"

#define RELAY_PORT 1 /* the agent's TCP relay in the guest (guest.conf relay_port=) */
/* Its ports listener (guest.conf ports_port=): the exec channel and preview links. The host's
 * forward to it is the app's forward's port + 1 (the gateway derives it from `addr`). */
#define PORTS_PORT 2
#define FD_MEM 3     /* fds as QEMU sees them */
#define FD_CON 4
#define FD_INCOMING 5
#define FD_INCOMING_STR "5"
#define FD_ROOT 6
#define FD_MON 7 /* the VM's monitor: a socket pair ("the monitor" below) */
#define FD_FIRST_FREE 8
#define MON_LINE_MAX 8192
#define QMP_TIMEOUT (2 * CM_USEC_PER_SEC)
#define TAIL_MAX 2048         /* console bytes kept for finish()'s tail */
/* QEMU's end of the console socket: a guest's console writes are small (16 bytes from hvc),
 * each costing a whole skb of the default send buffer, which a busy scheduler then fills
 * within a few KB of text and QEMU holds the rest; with room for 1 MiB it rarely waits. */
#define CONSOLE_SNDBUF (1024 * 1024)
#define FSIZE_MIN (64u << 20) /* QEMU's RLIMIT_FSIZE when the VM has no /data (its log) */
#define SNAP_SAVE_TIMEOUT (60 * CM_USEC_PER_SEC)
#define SNAP_RETRY_MAX (60 * CM_USEC_PER_SEC)
#define DIR_MAX 256
#define APP_UID 1000
#define AGENT_TIMEOUT (15 * CM_USEC_PER_SEC) /* BIND after resume, STATUS at adoption (TCG) */
/* In a VM the agent lets no connection through before BIND (not after bind_wait, as under the
 * process driver): a clone must not serve a tenant on its snapshot's clock and RNG state, which
 * every clone of the snapshot shares until BIND reseeds it. A connection still waiting after
 * this long is closed by the agent (the scheduler ends an instance it cannot BIND long before:
 * 3 tries of AGENT_TIMEOUT). */
#define GUEST_HOLD_MS 600000u
/* A running guest asked to stop (TERM) ends its app, syncs and unmounts /data and powers off:
 * under TCG on a busy host that takes seconds; a kill before it could lose /data's last writes. */
#define MIN_GRACE (30 * CM_USEC_PER_SEC)
/* How long freezing a VM's QEMU (its vCPU threads mid-translation under TCG included) may take
 * before the pause is given up (it blocks the scheduler's loop meanwhile). */
#define PAUSE_WAIT_MS 200
/* How long a pause waits for QEMU to pass the guest's closes on to the host's sockets (it
 * blocks the loop; one a client holds open makes the pause `busy`, retried later). */
#define CONN_WAIT_MS 50
#define FD_SCAN_MAX 4096 /* descriptors of a QEMU looked at for its forwards' listeners */

/* ------------------------------------------------------------------ the host's probe */

static struct {
    int done, available;
    char accel[8]; /* "kvm" or "tcg" */
    char why[512]; /* why this accelerator (or why the driver cannot work) */
    int kvm_gid;   /* group that may open /dev/kvm, -1 */
    uint32_t tsc_khz;
} g_probe = {.kvm_gid = -1};

struct mdriver;
struct mtpl;

enum mstate {
    M_WAITING,   /* for its template's snapshot */
    M_BOOTING,   /* a template VM: booting, waiting for READY */
    M_SAVING,    /* a template VM: migrating its state out */
    M_RESTORING, /* a clone: QEMU started, the state loading */
    M_PAUSED,    /* a restored clone: warm */
    M_RUNNING,   /* resumed (bound) */
    M_GONE,
};

struct minst {
    struct sch_dinst di; /* first: the scheduler's view */
    struct mdriver *d;
    struct mtpl *t;
    struct minst *next;      /* d->insts */
    struct minst *next_wait; /* t->waiting */
    enum mstate st;
    int template_vm; /* the VM a snapshot is taken of (never handed to the scheduler) */
    char dir[DIR_MAX];
    char qdir[DIR_MAX];
    char qmp[DIR_MAX];
    char tpl_name[128];
    int slot;
    uint32_t uid;
    uint16_t port;
    pid_t pid;
    uint64_t starttime;
    int child;  /* ours to reap */
    int mon_fd; /* our end of a clone's monitor while it restores, -1 */
    struct event *mon_ev;
    char mon_buf[MON_LINE_MAX];
    size_t mon_len;
    int mon_overlong;
    int restored;      /* a clone's state is loaded (bind's commands may follow) */
    char exit_how[32]; /* "exited status=N" | "killed signal=N" once reaped, else "" */
    uint64_t fsize;    /* QEMU's RLIMIT_FSIZE */
    int pidfd;
    struct event *pid_ev;
    int ready_w; /* write end of di.ready_fd's pipe, -1 once used */
    int frozen;  /* its QEMU is frozen (m_pause()) */
    int fwd2;    /* it has the ports forward (port + 1): every VM but one adopted from before */
    int con_fd;  /* our end of the console, -1 */
    struct event *con_ev;
    int con_log; /* console.log, -1 */
    uint64_t con_written;
    struct sch_console_scan scan;
    char tail[TAIL_MAX];
    size_t tail_len;
    char panic[160];     /* the guest kernel's "Kernel panic ..." line, once seen */
    struct event *timer; /* restore polling, snapshot steps */
    cm_usec_t deadline;
    char **cgdirs;
    int data; /* the template has a /data disk */
    uint64_t data_size;
    int data_attached;
    char data_dir[4096];
    char end_reason[200];
};

enum snap_state { SNAP_NONE, SNAP_BUILDING, SNAP_READY, SNAP_FAILED };

struct mtpl {
    struct mtpl *next;
    struct mdriver *d;
    const struct cm_template *tpl;
    char accel[8];
    char root_img[4096];
    char root_hash[SCH_VMROOT_HASH_LEN + 1];
    uint64_t mem; /* guest RAM */
    unsigned vcpus;
    enum snap_state snap;
    int mem_fd, state_fd; /* the snapshot (sealed memfds), -1 */
    uint64_t key;         /* of the inputs the snapshot was made from */
    struct minst *builder;
    struct minst *waiting;
    cm_usec_t built_us, failed_at;
    unsigned failures;
    char why[300];
    uint64_t clones;
};

struct mdriver {
    struct sch_driver base;
    const struct sch_config *cfg;
    struct event_base *evb;
    struct sch_slots *slots;
    struct sch_cgroups *cg;
    char prefix[SCH_HOST_ID_MAX + 2];
    char root[DIR_MAX];  /* {run_dir}/microvm */
    char cache[DIR_MAX]; /* {run_dir}/microvm/cache */
    char kernel[4096], initrd[4096], release[128];
    struct mtpl *tpls;
    struct minst *insts;
};

/* ------------------------------------------------------------------ small helpers */

static int is_ours(const struct mdriver *d, const char *id)
{
    size_t n = strlen(d->prefix);
    if (strncmp(id, d->prefix, n) != 0 || strlen(id) > SCH_INST_ID_MAX || !id[n])
        return 0;
    for (const char *p = id + n; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

/* Reads /proc/<pid>/<name> (at most len-1 bytes, NUL-terminated). Returns the length or 0. */
static size_t read_proc(pid_t pid, const char *name, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

/* Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot (0: unreadable). */
static uint64_t proc_starttime(pid_t pid)
{
    char buf[1024];
    if (!read_proc(pid, "stat", buf, sizeof(buf)))
        return 0;
    char *p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    if (!p)
        return 0;
    p++;
    for (int field = 3; field < 22 && p; field++) /* p: the space before field 3 */
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* Whether /proc/<pid>/cmdline holds the word "berth-<id>" (our -name). */
static int proc_is_vm_of(pid_t pid, const char *id)
{
    char buf[8192], want[SCH_INST_ID_MAX + 8];
    snprintf(want, sizeof(want), "berth-%s", id);
    size_t n = read_proc(pid, "cmdline", buf, sizeof(buf));
    if (!n)
        return 0;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1)
        if (strcmp(p, want) == 0)
            return 1;
    return 0;
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return -errno;
    size_t len = strlen(text);
    int rc = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0 ? 0 : -EIO;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

static void write_state(struct minst *mi)
{
    char text[4600], path[DIR_MAX + 16];
    snprintf(text, sizeof(text),
             "pid=%d\nstart=%" PRIu64 "\nslot=%d\nport=%u\n%stemplate=%s\naccel=%s\n"
             "data_size=%" PRIu64 "\n%s%s%s",
             (int)mi->pid, mi->starttime, mi->slot, (unsigned)mi->port,
             mi->fwd2 ? "ports_forward=1\n" : "", mi->tpl_name, mi->di.accel,
             mi->data_size, mi->data_attached ? "data=" : "", mi->data_attached ? mi->data_dir : "",
             mi->data_attached ? "\n" : "");
    snprintf(path, sizeof(path), "%s/state", mi->dir);
    int rc = write_file(path, text, 0600);
    if (rc < 0)
        cm_log_error("microvm", "cannot write state inst=%s err=\"%s\"", mi->di.id, strerror(-rc));
}

struct mstate_file {
    pid_t pid;
    uint64_t start, data_size;
    int slot;
    unsigned port;
    int fwd2; /* ports_forward=1: it has the forward at port + 1 */
    char tpl[128], accel[8], data[4096];
};

/* The state file is written by us in a directory only root can write: parsed strictly anyway. */
static int read_state(const char *dir, struct mstate_file *s)
{
    char buf[8192];
    memset(s, 0, sizeof(*s));
    s->slot = -1;
    ssize_t n = sch_instdir_read_host_file(dir, "state", buf, sizeof(buf));
    if (n <= 0)
        return n < 0 ? (int)n : -EINVAL;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "pid=", 4) == 0)
            s->pid = (pid_t)strtol(line + 4, NULL, 10);
        else if (strncmp(line, "start=", 6) == 0)
            s->start = strtoull(line + 6, NULL, 10);
        else if (strncmp(line, "slot=", 5) == 0)
            s->slot = (int)strtol(line + 5, NULL, 10);
        else if (strncmp(line, "port=", 5) == 0)
            s->port = (unsigned)strtoul(line + 5, NULL, 10);
        else if (strcmp(line, "ports_forward=1") == 0)
            s->fwd2 = 1;
        else if (strncmp(line, "data_size=", 10) == 0)
            s->data_size = strtoull(line + 10, NULL, 10);
        else if (strncmp(line, "template=", 9) == 0)
            snprintf(s->tpl, sizeof(s->tpl), "%s", line + 9);
        else if (strncmp(line, "accel=", 6) == 0)
            snprintf(s->accel, sizeof(s->accel), "%s", line + 6);
        else if (strncmp(line, "data=", 5) == 0)
            snprintf(s->data, sizeof(s->data), "%s", line + 5);
    }
    return s->pid > 1 ? 0 : -EINVAL;
}

/* Removes <dir>/q (QEMU's: its entries are unlinked through the directory's fd, never
 * followed) and then <dir> with our files. */
static void remove_dir(const char *dir)
{
    char q[DIR_MAX + 8];
    snprintf(q, sizeof(q), "%s/q", dir);
    int fd = open(q, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        DIR *dp = fdopendir(fd);
        if (dp) {
            struct dirent *e;
            while ((e = readdir(dp)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
                    unlinkat(dirfd(dp), e->d_name, 0) < 0)
                    unlinkat(dirfd(dp), e->d_name, AT_REMOVEDIR);
            closedir(dp);
        } else {
            close(fd);
        }
        rmdir(q);
    } else if (errno == ENOTDIR || errno == ELOOP) {
        unlink(q);
    }
    const char *files[] = {"state", "state.new", "console.log", "qemu.log"};
    char path[DIR_MAX + 16];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Two free TCP ports on 127.0.0.1, P and P + 1, for the VM's forwards (the app's and the
 * ports listener's); returns P. QEMU binds them; a race with another process that takes one
 * in between fails that start, and the pool starts another. */
static int free_port(void)
{
    int rc = -EADDRNOTAVAIL;
    for (int tries = 0; tries < 64; tries++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int s2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof(a);
        if (s < 0 || s2 < 0) {
            rc = -errno;
        } else if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 ||
                   getsockname(s, (struct sockaddr *)&a, &al) < 0) {
            rc = -errno;
        } else if (ntohs(a.sin_port) < 65535) {
            uint16_t p = ntohs(a.sin_port);
            a.sin_port = htons((uint16_t)(p + 1));
            if (bind(s2, (struct sockaddr *)&a, sizeof(a)) == 0)
                rc = p;
        }
        if (s >= 0)
            close(s);
        if (s2 >= 0)
            close(s2);
        if (rc > 0 || (rc < 0 && rc != -EADDRNOTAVAIL && rc != -EADDRINUSE))
            return rc;
        rc = -EADDRNOTAVAIL;
    }
    return rc;
}

static uint32_t host_tsc_khz(void)
{
    /* TCG's guest TSC runs at the host's rate: tsc_early_khz= spares the guest a PIT
     * calibration that fails now and then without HPET (research/microvm.md, gotcha 4). */
    FILE *f = fopen("/proc/cpuinfo", "re");
    char line[256];
    double mhz = 0;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "cpu MHz", 7) == 0) {
            const char *c = strchr(line, ':');
            mhz = c ? strtod(c + 1, NULL) : 0;
            break;
        }
    if (f)
        fclose(f);
    return mhz > 100 && mhz < 20000 ? (uint32_t)(mhz * 1000) : 0;
}

/* ------------------------------------------------------------------ QEMU's command line */

struct argv_buf {
    char *v[96];
    int n;
    char store[8192];
    size_t used;
};

static void arg(struct argv_buf *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(struct argv_buf *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = sizeof(a->store) - a->used;
    int n = vsnprintf(a->store + a->used, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room || a->n >= (int)(sizeof(a->v) / sizeof(a->v[0])) - 1) {
        a->n = -1000; /* overflow: refused by build_argv's caller */
        return;
    }
    if (a->n >= 0)
        a->v[a->n++] = a->store + a->used;
    a->used += (size_t)n + 1;
}

enum vm_kind { VM_TEMPLATE, VM_CLONE, VM_PROBE };

static int build_argv(const struct mdriver *d, const struct mtpl *t, const struct minst *mi,
                      enum vm_kind kind, const char *accel, struct argv_buf *a)
{
    uint64_t mem_mib = t ? t->mem >> 20 : 128;
    a->n = 0;
    a->used = 0;
    arg(a, "%s", d ? d->cfg->microvm.qemu : "qemu-system-x86_64");
    arg(a, "-name");
    arg(a, "berth-%s", mi->di.id);
    arg(a, "-M");
    arg(a, "microvm,x-option-roms=off,isa-serial=off,memory-backend=mem0");
    if (strcmp(accel, "kvm") == 0) {
        arg(a, "-accel");
        arg(a, "kvm");
        arg(a, "-cpu");
        arg(a, "host");
    } else {
        arg(a, "-accel");
        arg(a, "tcg,tb-size=64");
        arg(a, "-cpu");
        arg(a, "max");
    }
    arg(a, "-m");
    arg(a, "%" PRIu64 "M", mem_mib);
    arg(a, "-smp");
    arg(a, "%u", t ? t->vcpus : 1);
    arg(a, "-nodefaults");
    arg(a, "-no-user-config");
    arg(a, "-display");
    arg(a, "none");
    arg(a, "-no-reboot");
    arg(a, "-sandbox");
    arg(a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    arg(a, "-object");
    arg(a, "memory-backend-file,id=mem0,size=%" PRIu64 "M,mem-path=/proc/self/fd/%d,share=%s",
        mem_mib, FD_MEM, kind == VM_CLONE ? "off" : "on");
    arg(a, "-kernel");
    arg(a, "%s", d->kernel);
    arg(a, "-initrd");
    arg(a, "%s", d->initrd);
    arg(a, "-append");
    char tsc[40] = "";
    if (strcmp(accel, "tcg") == 0 && g_probe.tsc_khz)
        snprintf(tsc, sizeof(tsc), " tsc_early_khz=%u", g_probe.tsc_khz);
    arg(a, "console=hvc0 quiet panic=-1%s berth.id=%s", tsc, mi->di.id);
    arg(a, "-device");
    arg(a, "virtio-serial-device,max_ports=4");
    arg(a, "-chardev");
    arg(a, "socket,id=con0,fd=%d", FD_CON);
    arg(a, "-device");
    arg(a, "virtconsole,chardev=con0");
    arg(a, "-chardev");
    arg(a, "socket,id=ctl,path=ctl.sock,server=on,wait=off");
    arg(a, "-device");
    arg(a, "virtserialport,chardev=ctl,name=berth.ctl");
    arg(a, "-netdev");
    arg(a, "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%u-:%u,hostfwd=tcp:127.0.0.1:%u-:%u",
        (unsigned)mi->port, (unsigned)RELAY_PORT, (unsigned)mi->port + 1u, (unsigned)PORTS_PORT);
    arg(a, "-device");
    arg(a, "virtio-net-device,netdev=n0");
    arg(a, "-object");
    arg(a, "rng-random,id=rng0,filename=/dev/urandom");
    arg(a, "-device");
    arg(a, "virtio-rng-device,rng=rng0");
    if (kind != VM_PROBE) {
        arg(a, "-add-fd");
        arg(a, "fd=%d,set=1", FD_ROOT);
        arg(a, "-blockdev");
        arg(a, "driver=file,node-name=rootf,filename=/dev/fdset/1,read-only=on");
        arg(a, "-blockdev");
        arg(a, "driver=raw,node-name=root,file=rootf,read-only=on");
        arg(a, "-device");
        arg(a, "virtio-blk-device,drive=root,serial=berth-root");
    }
    if (kind != VM_PROBE && mi->data) {
        /* A placeholder the size of the template's /data: bind swaps the session's image in
         * (blockdev-reopen), so that clones of one snapshot can each get their own. */
        arg(a, "-blockdev");
        arg(a, "driver=null-co,node-name=dnull,size=%" PRIu64 ",read-zeroes=on", mi->data_size);
        arg(a, "-blockdev");
        arg(a, "driver=raw,node-name=data,file=dnull");
        arg(a, "-device");
        arg(a, "virtio-blk-device,drive=data,serial=berth-data");
    }
    arg(a, "-qmp");
    arg(a, "unix:qmp.sock,server=on,wait=off");
    if (kind != VM_PROBE) {
        arg(a, "-chardev");
        arg(a, "socket,id=mon0,fd=%d", FD_MON);
        arg(a, "-mon");
        arg(a, "chardev=mon0,mode=control");
    }
    if (kind == VM_CLONE) {
        arg(a, "-S");
        arg(a, "-incoming");
        arg(a, "defer");
    }
    if (a->n < 0)
        return -E2BIG;
    a->v[a->n] = NULL;
    return 0;
}

/* ------------------------------------------------------------------ spawning QEMU */

struct spawn_fds {
    int mem, con, incoming, root, mon; /* -1: none */
    uint64_t fsize;                    /* RLIMIT_FSIZE, 0: none */
    int log;                           /* QEMU's stdout and stderr */
};

static void child_fail(int errw, const char *step)
{
    char msg[160];
    int n = snprintf(msg, sizeof(msg), "%s: %s", step, strerror(errno));
    if (n > 0 && write(errw, msg, (size_t)n) < 0) {
        /* nothing left to tell */
    }
    _exit(127);
}

/* Forks and execs QEMU as <uid> in <cgdirs>, in directory <qdir>. Returns the pid (the child
 * has exec'd), or a negative errno with the reason in <err>. */
static pid_t spawn_qemu(const struct mdriver *d, char *const *argv, uint32_t uid,
                        char *const *cgdirs, const char *qdir, const struct spawn_fds *f, char *err,
                        size_t errlen)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -errno;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ep[0]);
        close(ep[1]);
        snprintf(err, errlen, "fork: %s", strerror(e));
        return -e;
    }
    if (pid == 0) {
        close(ep[0]);
        int errw = fcntl(ep[1], F_DUPFD_CLOEXEC, 64);
        if (errw < 0)
            _exit(127);
        int src[5] = {f->mem, f->con, f->incoming, f->root, f->mon}, tmp[5];
        for (int i = 0; i < 5; i++)
            if ((tmp[i] = src[i] >= 0 ? fcntl(src[i], F_DUPFD_CLOEXEC, 70) : -1) < 0 && src[i] >= 0)
                child_fail(errw, "dup");
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (nul < 0 || dup2(nul, 0) < 0)
            child_fail(errw, "stdin");
        if (f->log >= 0 && (dup2(f->log, 1) < 0 || dup2(f->log, 2) < 0))
            child_fail(errw, "stdout");
        for (int i = 0; i < 5; i++)
            if (tmp[i] >= 0 && dup2(tmp[i], FD_MEM + i) < 0)
                child_fail(errw, "dup2");
        if (syscall(SYS_close_range, FD_FIRST_FREE, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) < 0)
            child_fail(errw, "close_range");
        if (setsid() < 0)
            child_fail(errw, "setsid");
        /* Below the control plane: guests (TCG ones above all) can take every core, and the
         * scheduler, Redis and the gateway must still answer (a starved scheduler's Redis
         * commands time out). QEMU's sandbox refuses it a way back (resourcecontrol=deny). */
        if (d && d->cfg->microvm.nice) {
            errno = 0;
            int cur = getpriority(PRIO_PROCESS, 0);
            int want = (errno ? 0 : cur) + (int)d->cfg->microvm.nice;
            if (setpriority(PRIO_PROCESS, 0, want > 19 ? 19 : want) < 0)
                child_fail(errw, "setpriority");
        }
        if (cgdirs && sch_cgroups_attach(cgdirs, getpid()) < 0)
            child_fail(errw, "cgroup");
        /* The largest file QEMU may write: a QEMU a guest took over holds a writable /data
         * image and its log, and must not grow either past the session's quota. */
        struct rlimit fl = {.rlim_cur = f->fsize, .rlim_max = f->fsize};
        if (f->fsize && setrlimit(RLIMIT_FSIZE, &fl) < 0)
            child_fail(errw, "rlimit");
        gid_t groups[1];
        int ngroups = 0;
        if (g_probe.kvm_gid >= 0)
            groups[ngroups++] = (gid_t)g_probe.kvm_gid;
        if (setgroups((size_t)ngroups, groups) < 0)
            child_fail(errw, "setgroups");
        if (setresgid(uid, uid, uid) < 0)
            child_fail(errw, "setresgid");
        if (setresuid(uid, uid, uid) < 0)
            child_fail(errw, "setresuid");
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            child_fail(errw, "no_new_privs");
        if (chdir(qdir) < 0)
            child_fail(errw, "chdir");
        umask(077);
        char *envp[] = {"PATH=/usr/bin:/bin", "LANG=C", NULL};
        execve(argv[0], argv, envp);
        child_fail(errw, "exec");
    }
    close(ep[1]);
    char msg[200];
    ssize_t n;
    do
        n = read(ep[0], msg, sizeof(msg) - 1);
    while (n < 0 && errno == EINTR);
    close(ep[0]);
    if (n > 0) {
        msg[n] = '\0';
        snprintf(err, errlen, "starting %s: %s", argv[0], msg);
        waitpid(pid, NULL, 0);
        return -EIO;
    }
    return pid;
}

/* ------------------------------------------------------------------ instances */

static void on_pid_exit(evutil_socket_t fd, short what, void *arg);
static void on_console(evutil_socket_t fd, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);
static void snapshot_build(struct mtpl *t);
static void snapshot_failed(struct mtpl *t, const char *why);
static void clone_spawn(struct minst *mi);
static int mon_send_all(struct minst *mi, const char *const *cmds, size_t n, int pass_fd);
static void mon_refused(struct minst *mi, const char *err);
static int mon_open(struct minst *mi, char *err, size_t errlen);

static void tell_ready(struct minst *mi, const char *line)
{
    if (mi->ready_w < 0)
        return;
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "%s\n", line);
    if (n > 0 && write(mi->ready_w, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1) < 0)
        cm_log_warn("microvm", "cannot report readiness inst=%s err=\"%s\"", mi->di.id,
                    strerror(errno));
    close(mi->ready_w);
    mi->ready_w = -1;
}

/* The instance is over: the scheduler's exit event fires (finish() follows). */
static void mark_gone(struct minst *mi, const char *reason)
{
    if (mi->st == M_GONE)
        return;
    if (reason && !mi->end_reason[0])
        snprintf(mi->end_reason, sizeof(mi->end_reason), "%s", reason);
    mi->st = M_GONE;
    if (mi->timer)
        evtimer_del(mi->timer);
    uint64_t one = 1;
    if (mi->di.exit_fd >= 0 && write(mi->di.exit_fd, &one, sizeof(one)) < 0)
        cm_log_warn("microvm", "eventfd write failed inst=%s", mi->di.id);
    if (mi->ready_w >= 0) {
        close(mi->ready_w); /* EOF: the scheduler then takes the exit event */
        mi->ready_w = -1;
    }
}

static void unlink_wait(struct minst *mi)
{
    if (!mi->t)
        return;
    for (struct minst **p = &mi->t->waiting; *p; p = &(*p)->next_wait)
        if (*p == mi) {
            *p = mi->next_wait;
            break;
        }
    mi->next_wait = NULL;
}

static void inst_free(struct minst *mi)
{
    struct mdriver *d = mi->d;
    unlink_wait(mi);
    for (struct minst **p = &d->insts; *p; p = &(*p)->next)
        if (*p == mi) {
            *p = mi->next;
            break;
        }
    if (mi->t && mi->t->builder == mi)
        mi->t->builder = NULL;
    if (mi->pid_ev)
        event_free(mi->pid_ev);
    if (mi->con_ev)
        event_free(mi->con_ev);
    if (mi->mon_ev)
        event_free(mi->mon_ev);
    if (mi->timer)
        event_free(mi->timer);
    int fds[] = {mi->pidfd,       mi->con_fd,     mi->con_log,        mi->ready_w,
                 mi->di.ready_fd, mi->di.exit_fd, mi->mon_fd,         mi->di.wake_fds[0],
                 mi->di.wake_fds[1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    cm_strv_free(mi->cgdirs);
    free(mi);
}

/* A new instance record with its directories, slot, port and fds (nothing started). */
static struct minst *inst_new(struct mdriver *d, const char *id, struct mtpl *t, char *err,
                              size_t errlen)
{
    struct minst *mi = calloc(1, sizeof(*mi));
    if (!mi) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    mi->d = d;
    mi->t = t;
    mi->slot = -1;
    mi->pidfd = mi->con_fd = mi->con_log = mi->ready_w = mi->mon_fd = -1;
    mi->di.ready_fd = mi->di.exit_fd = -1;
    mi->di.wake_fds[0] = mi->di.wake_fds[1] = -1;
    snprintf(mi->di.id, sizeof(mi->di.id), "%s", id);
    /* create() checked that these fit (the sockets within a unix socket path). */
    if (snprintf(mi->dir, sizeof(mi->dir), "%s/%s", d->root, id) >= (int)sizeof(mi->dir) ||
        snprintf(mi->qdir, sizeof(mi->qdir), "%s/q", mi->dir) >= (int)sizeof(mi->qdir) ||
        snprintf(mi->qmp, sizeof(mi->qmp), "%s/qmp.sock", mi->qdir) >= (int)sizeof(mi->qmp) ||
        snprintf(mi->di.ctl, sizeof(mi->di.ctl), "%s/ctl.sock", mi->qdir) >=
            (int)sizeof(mi->di.ctl)) {
        snprintf(err, errlen, "instance path too long");
        free(mi);
        return NULL;
    }
    if (t) {
        snprintf(mi->tpl_name, sizeof(mi->tpl_name), "%s", t->tpl->name);
        snprintf(mi->di.accel, sizeof(mi->di.accel), "%s", t->accel);
        mi->data = t->tpl->data;
        mi->data_size = t->tpl->data_size;
    }
    mi->di.exit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    mi->timer = evtimer_new(d->evb, on_timer, mi);
    if (mi->di.exit_fd < 0 || !mi->timer) {
        snprintf(err, errlen, "out of descriptors or memory");
        inst_free(mi);
        return NULL;
    }
    mi->next = d->insts;
    d->insts = mi;
    return mi;
}

/* Directories, port, cgroups, console: what a QEMU of <mi> needs but its uid (vm_spawn takes
 * the slot: a start waiting for its template's snapshot holds none, so the template VM finds
 * one even at capacity). */
static int inst_prepare(struct minst *mi, char *err, size_t errlen)
{
    struct mdriver *d = mi->d;
    if (mkdir(mi->dir, 0711) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot create %s: %s", mi->dir, strerror(e));
        return -e;
    }
    if (mkdir(mi->qdir, 0700) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot create %s: %s", mi->qdir, strerror(e));
        return -e;
    }
    int port = free_port();
    if (port <= 0) {
        snprintf(err, errlen, "no free port on 127.0.0.1: %s", strerror(-port));
        return port < 0 ? port : -EADDRNOTAVAIL;
    }
    mi->port = (uint16_t)port;
    /* "vm:": the gateway finds the ports forward at port + 1 (a "tcp:" address has none) */
    snprintf(mi->di.addr, sizeof(mi->di.addr), "vm:127.0.0.1:%u", (unsigned)mi->port);
    mi->fwd2 = 1;
    struct sch_cg_limits lim = {
        .memory = (mi->t ? mi->t->mem : 128u << 20) + d->cfg->microvm.memory_overhead,
        .cpu_millis = mi->t ? mi->t->tpl->cpu_millis : 0,
        .pids = 256, /* QEMU's threads: main, vCPUs, I/O workers (up to 64), slirp */
    };
    int rc = sch_cgroups_create_instance(d->cg, mi->di.id, &lim, &mi->cgdirs, err, errlen);
    if (rc < 0)
        return rc;
    char path[DIR_MAX + 16];
    snprintf(path, sizeof(path), "%s/console.log", mi->dir);
    mi->con_log = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    return 0;
}

/* Releases what inst_prepare() took and removes the traces. */
static void inst_cleanup(struct minst *mi)
{
    if (mi->cgdirs && sch_cgroups_remove(mi->cgdirs) < 0)
        cm_log_warn("microvm", "cgroup not removed inst=%s", mi->di.id);
    if (mi->slot >= 0)
        sch_slots_mark(mi->d->slots, mi->slot, 0);
    mi->slot = -1;
    remove_dir(mi->dir);
}

/* Starts QEMU for <mi>. Returns 0 or a negative errno with <err>. */
static int vm_spawn(struct minst *mi, enum vm_kind kind, char *err, size_t errlen)
{
    struct mdriver *d = mi->d;
    struct mtpl *t = mi->t;
    struct argv_buf *a = malloc(sizeof(*a));
    int sv[2] = {-1, -1}, mv[2] = {-1, -1}, incoming = -1, log = -1, rc;
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if ((rc = build_argv(d, t, mi, kind, t->accel, a)) < 0) {
        snprintf(err, errlen, "QEMU's command line is too long");
        goto out;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        rc = -errno;
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        goto out;
    }
    int sndbuf = CONSOLE_SNDBUF; /* FORCE past wmem_max as root; else what the limit allows */
    if (setsockopt(sv[1], SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    if (mi->slot < 0 && (mi->slot = sch_slots_take(d->slots)) < 0) {
        rc = -EAGAIN;
        snprintf(err, errlen, "no free uid slot (capacity %u)", d->cfg->capacity);
        goto out;
    }
    mi->uid = d->cfg->uid_base + (uint32_t)mi->slot * SCH_UID_RANGE_SIZE;
    if (chown(mi->qdir, mi->uid, mi->uid) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot hand %s to QEMU's uid: %s", mi->qdir, strerror(errno));
        goto out;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, mv) < 0) {
        rc = -errno;
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        goto out;
    }
    if (kind == VM_CLONE) {
        /* Each clone reads the state from offset 0: its own open file description. */
        char p[64];
        snprintf(p, sizeof(p), "/proc/self/fd/%d", t->state_fd);
        if ((incoming = open(p, O_RDONLY | O_CLOEXEC)) < 0) {
            rc = -errno;
            snprintf(err, errlen, "cannot reopen the snapshot: %s", strerror(errno));
            goto out;
        }
    }
    char lp[DIR_MAX + 16];
    snprintf(lp, sizeof(lp), "%s/qemu.log", mi->dir);
    log = open(lp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    mi->fsize = mi->data && mi->data_size > FSIZE_MIN ? mi->data_size : FSIZE_MIN;
    struct spawn_fds f = {.mem = t->mem_fd,
                          .con = sv[1],
                          .incoming = incoming,
                          .root = -1,
                          .mon = mv[1],
                          .log = log,
                          .fsize = mi->fsize};
    int root = open(t->root_img, O_RDONLY | O_CLOEXEC);
    if (root < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot open the root image %.200s: %s", t->root_img,
                 strerror(errno));
        goto out;
    }
    f.root = root;
    pid_t pid = spawn_qemu(d, a->v, mi->uid, mi->cgdirs, mi->qdir, &f, err, errlen);
    close(root);
    if (pid < 0) {
        rc = (int)pid;
        goto out;
    }
    mi->pid = pid;
    mi->di.pid = pid;
    mi->child = 1;
    mi->starttime = proc_starttime(pid);
    mi->pidfd = sch_pidfd_open(pid);
    mi->con_fd = sv[0];
    sv[0] = -1;
    mi->mon_fd = mv[0];
    mv[0] = -1;
    fcntl(mi->con_fd, F_SETFL, O_NONBLOCK);
    mi->pid_ev = mi->pidfd >= 0 ? event_new(d->evb, mi->pidfd, EV_READ, on_pid_exit, mi) : NULL;
    mi->con_ev = event_new(d->evb, mi->con_fd, EV_READ | EV_PERSIST, on_console, mi);
    if (!mi->pid_ev || !mi->con_ev || event_add(mi->pid_ev, NULL) < 0 ||
        event_add(mi->con_ev, NULL) < 0 || mon_open(mi, err, errlen) < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        mi->child = 0;
        rc = -ENOMEM;
        if (!err[0])
            snprintf(err, errlen, "cannot watch QEMU: out of memory or descriptors");
        goto out;
    }
    write_state(mi);
    rc = 0;
out:
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    for (int i = 0; i < 2; i++)
        if (mv[i] >= 0)
            close(mv[i]);
    if (incoming >= 0)
        close(incoming);
    if (log >= 0)
        close(log);
    free(a);
    return rc;
}

static void arm(struct minst *mi, cm_usec_t after)
{
    struct timeval tv;
    cm_usec_to_tv(after, &tv);
    evtimer_add(mi->timer, &tv);
}

/* ------------------------------------------------------------------ console */

static void tail_add(struct minst *mi, const char *buf, size_t n)
{
    if (n >= TAIL_MAX) {
        memcpy(mi->tail, buf + n - TAIL_MAX, TAIL_MAX);
        mi->tail_len = TAIL_MAX;
        return;
    }
    if (mi->tail_len + n > TAIL_MAX) {
        size_t drop = mi->tail_len + n - TAIL_MAX;
        memmove(mi->tail, mi->tail + drop, mi->tail_len - drop);
        mi->tail_len -= drop;
    }
    memcpy(mi->tail + mi->tail_len, buf, n);
    mi->tail_len += n;
}

static void snapshot_save(struct minst *mi);

/* Reads at most `reads` chunks of the console; 1 when it reached its end (EOF, or nothing more
 * once QEMU is gone). */
static int console_read(struct minst *mi, int reads)
{
    char buf[4096];
    for (int i = 0; i < reads; i++) {
        ssize_t n = read(mi->con_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 1;
        if (n <= 0) {
            event_del(mi->con_ev);
            return 1;
        }
        tail_add(mi, buf, (size_t)n);
        if (!mi->panic[0]) { /* its register dump that follows can be longer than the tail */
            /* The new bytes end the tail: searched with the 11 before them, so a line split
             * between two reads is found too. */
            size_t from = mi->tail_len > (size_t)n + 11 ? mi->tail_len - (size_t)n - 11 : 0;
            const char *kp = memmem(mi->tail + from, mi->tail_len - from, "Kernel panic", 12);
            if (kp) {
                size_t k = 0, room = (size_t)(mi->tail + mi->tail_len - kp);
                while (k < room && k < sizeof(mi->panic) - 1 && kp[k] != '\n' && kp[k] != '\r')
                    k++;
                sch_report_sanitize(kp, k, mi->panic, sizeof(mi->panic));
            }
        }
        uint64_t room = mi->d->cfg->console_max > mi->con_written
                            ? mi->d->cfg->console_max - mi->con_written
                            : 0;
        size_t w = (size_t)n < room ? (size_t)n : (size_t)room;
        if (w && mi->con_log >= 0 && write(mi->con_log, buf, w) > 0)
            mi->con_written += w;
        if (sch_console_scan_feed(&mi->scan, buf, (size_t)n) && mi->st == M_BOOTING)
            snapshot_save(mi);
    }
    return 0;
}

static void on_console(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    /* A bounded amount per call: a guest flooding its console cannot starve the loop. */
    console_read(arg, 16);
}

/* QEMU is gone: what it wrote is all in the socket (at most its send buffer, CONSOLE_SNDBUF),
 * read to the end so the last words are the last ones, however far behind we were. */
static void console_drain(struct minst *mi)
{
    if (mi->con_fd >= 0)
        console_read(mi, (int)(CONSOLE_SNDBUF / 4096) + 64);
}

/* The end of what the VM said, for a reason or a tail: its console, else QEMU's own stderr
 * (QEMU's errors: a port taken, a bad option). Sanitized, newlines as " | ", "" when none. */
static void last_words(const struct minst *mi, char *out, size_t len)
{
    if (mi->panic[0]) {
        snprintf(out, len, "%s", mi->panic);
        return;
    }
    char raw[301];
    size_t n = 0;
    const char *src = mi->tail;
    size_t srclen = mi->tail_len;
    char qlog[300];
    if (!srclen) {
        char path[DIR_MAX + 16];
        snprintf(path, sizeof(path), "%s/qemu.log", mi->dir);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
            off_t off = st.st_size > (off_t)sizeof(qlog) ? st.st_size - (off_t)sizeof(qlog) : 0;
            ssize_t k = pread(fd, qlog, sizeof(qlog), off);
            if (k > 0) {
                src = qlog;
                srclen = (size_t)k;
            }
        }
        if (fd >= 0)
            close(fd);
    }
    while (srclen && (src[srclen - 1] == '\n' || src[srclen - 1] == '\r'))
        srclen--;
    size_t from = srclen > 280 ? srclen - 280 : 0;
    /* A kernel panic's register dump says less than the line that opened it. */
    const char *panic = memmem(src, srclen, "Kernel panic", 12);
    if (panic && (size_t)(panic - src) < from)
        from = (size_t)(panic - src);
    for (size_t i = from; i < srclen && n + 3 < sizeof(raw); i++) {
        if (src[i] == '\n') {
            memcpy(raw + n, " | ", 3);
            n += 3;
        } else if (src[i] != '\r') {
            raw[n++] = src[i];
        }
    }
    sch_report_sanitize(raw, n, out, len);
}

/* ------------------------------------------------------------------ snapshots */

static uint64_t file_key(uint64_t h, const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        uint64_t v[3] = {(uint64_t)st.st_size, (uint64_t)st.st_mtim.tv_sec,
                         (uint64_t)st.st_mtim.tv_nsec};
        h = XXH64(v, sizeof(v), h);
    }
    return XXH64(path, strlen(path), h);
}

/* What a snapshot depends on: QEMU, the kernel, the initramfs, the root image, the VM's shape. */
static uint64_t snapshot_key(const struct mdriver *d, const struct mtpl *t)
{
    uint64_t h = 0x6265727468ull;
    h = file_key(h, d->cfg->microvm.qemu);
    h = file_key(h, d->kernel);
    h = file_key(h, d->initrd);
    h = file_key(h, t->root_img);
    char shape[256];
    snprintf(shape, sizeof(shape), "%s %" PRIu64 " %u %d %" PRIu64, t->accel, t->mem, t->vcpus,
             t->tpl->data, t->tpl->data_size);
    return XXH64(shape, strlen(shape), h);
}

static void snapshot_drop(struct mtpl *t)
{
    if (t->mem_fd >= 0)
        close(t->mem_fd);
    if (t->state_fd >= 0)
        close(t->state_fd);
    t->mem_fd = t->state_fd = -1;
    t->snap = SNAP_NONE;
}

static void snapshot_failed(struct mtpl *t, const char *why)
{
    snprintf(t->why, sizeof(t->why), "%s", why);
    snapshot_drop(t);
    t->snap = SNAP_FAILED;
    t->failures++;
    t->failed_at = cm_now_mono();
    cm_log_error("microvm", "snapshot failed template=%s try=%u err=\"%s\"", t->tpl->name,
                 t->failures, why);
    char line[400];
    snprintf(line, sizeof(line), "ERR snapshot of template %s failed: %s", t->tpl->name, why);
    while (t->waiting) {
        struct minst *w = t->waiting;
        t->waiting = w->next_wait;
        w->next_wait = NULL;
        tell_ready(w, line);
        mark_gone(w, "snapshot failed");
    }
    if (t->builder) {
        struct minst *b = t->builder;
        if (b->pidfd >= 0)
            sch_pidfd_signal(b->pidfd, SIGKILL);
    }
}

static void snapshot_ready(struct mtpl *t)
{
    /* Sealed: no clone (a QEMU a guest may have taken over) can write the template's RAM
     * or state, which every later clone maps. */
    int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;
    if (fcntl(t->mem_fd, F_ADD_SEALS, seals) < 0 || fcntl(t->state_fd, F_ADD_SEALS, seals) < 0) {
        char why[160];
        snprintf(why, sizeof(why), "cannot seal the snapshot: %s", strerror(errno));
        snapshot_failed(t, why);
        return;
    }
    t->snap = SNAP_READY;
    t->failures = 0;
    t->why[0] = '\0';
    cm_log_info("microvm", "snapshot ready template=%s accel=%s ms=%" PRIu64, t->tpl->name,
                t->accel, (cm_now_mono() - t->built_us) / 1000);
    while (t->waiting) {
        struct minst *w = t->waiting;
        t->waiting = w->next_wait;
        w->next_wait = NULL;
        clone_spawn(w);
    }
}

/* The template VM is READY: stop it and migrate its device state out over its monitor (its RAM
 * is in the memfd already: x-ignore-shared). The MIGRATION event goes on (mon_migration). */
static void snapshot_save(struct minst *mi)
{
    static const char *const save[] = {
        "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"snap\"}}",
        "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":"
        "[{\"capability\":\"x-ignore-shared\",\"state\":true},"
        "{\"capability\":\"events\",\"state\":true}]}}",
        "{\"execute\":\"stop\"}",
        "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"fd:snap\"}}",
    };
    mi->st = M_SAVING;
    if (mon_send_all(mi, save, sizeof(save) / sizeof(save[0]), mi->t->state_fd) < 0) {
        mon_refused(mi, "cannot write to QEMU's monitor");
        return;
    }
    mi->deadline = cm_now_mono() + SNAP_SAVE_TIMEOUT;
    arm(mi, SNAP_SAVE_TIMEOUT);
}

/* Boots the template VM of <t> (asynchronously: READY on its console continues). */
static void snapshot_build(struct mtpl *t)
{
    struct mdriver *d = t->d;
    if (t->snap == SNAP_BUILDING)
        return;
    char err[400] = "", id[SCH_INST_ID_MAX + 1], rnd[9];
    uint32_t r32;
    if (getrandom(&r32, sizeof(r32), 0) != sizeof(r32))
        r32 = (uint32_t)cm_now_mono();
    snprintf(rnd, sizeof(rnd), "%08x", r32);
    /* The template VM takes an instance id of its own: its traces are this driver's like any
     * instance's, so a crash while building leaves nothing list() and purge() do not know. */
    snprintf(id, sizeof(id), "%s%s", d->prefix, rnd);
    t->snap = SNAP_BUILDING;
    t->built_us = cm_now_mono();
    t->key = snapshot_key(d, t);
    t->mem_fd = memfd_create("berth-snapshot-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    t->state_fd = memfd_create("berth-snapshot-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (t->mem_fd < 0 || t->state_fd < 0 || ftruncate(t->mem_fd, (off_t)t->mem) < 0) {
        snprintf(err, sizeof(err), "memfd: %s", strerror(errno));
        snapshot_failed(t, err);
        return;
    }
    struct minst *mi = inst_new(d, id, t, err, sizeof(err));
    if (!mi) {
        snapshot_failed(t, err);
        return;
    }
    mi->template_vm = 1;
    t->builder = mi;
    int rc = inst_prepare(mi, err, sizeof(err));
    if (rc == 0)
        rc = vm_spawn(mi, VM_TEMPLATE, err, sizeof(err));
    if (rc < 0) {
        t->builder = NULL;
        inst_cleanup(mi);
        inst_free(mi);
        snapshot_failed(t, err);
        return;
    }
    mi->st = M_BOOTING;
    cm_usec_t boot = t->tpl->ready_timeout * 3;
    mi->deadline = cm_now_mono() + (boot > 60 * CM_USEC_PER_SEC ? boot : 60 * CM_USEC_PER_SEC);
    arm(mi, mi->deadline - cm_now_mono());
    cm_log_info("microvm", "booting template VM template=%s vm=%s accel=%s pid=%d", t->tpl->name,
                mi->di.id, t->accel, (int)mi->pid);
}

/* ------------------------------------------------------------------ the monitor
 *
 * Each VM's QMP monitor is a socket pair QEMU gets at exec (`-chardev socket,fd=7 -mon ...`):
 * no socket path to wait for or to trust, nothing polled, nothing blocks. Commands are written
 * without waiting (they run in order; QEMU reads them when it is ready), answers and events
 * come to on_monitor. It carries the template VM's save, a clone's restore, and bind's
 * commands (the /data swap, cont). A refused command ends what it was for. */

static void mon_close(struct minst *mi)
{
    if (mi->mon_ev) {
        event_free(mi->mon_ev);
        mi->mon_ev = NULL;
    }
    if (mi->mon_fd >= 0)
        close(mi->mon_fd);
    mi->mon_fd = -1;
}

/* Sends one command without waiting for its answer. <pass_fd> >= 0 goes with it (SCM_RIGHTS). */
static int mon_send(struct minst *mi, const char *json, int pass_fd)
{
    if (mi->mon_fd < 0)
        return -ENOTCONN;
    char line[512];
    int n = snprintf(line, sizeof(line), "%s\n", json);
    if (n < 0 || (size_t)n >= sizeof(line))
        return -E2BIG;
    /* A few hundred bytes into a socket buffer of hundreds of KB: never short in practice, and
     * a short write is an error (a half command would be the next one's prefix). */
    ssize_t w = sch_qmp_sendmsg(mi->mon_fd, line, (size_t)n, pass_fd, MSG_DONTWAIT);
    return w == n ? 0 : w < 0 ? -errno : -EIO;
}

static int mon_send_all(struct minst *mi, const char *const *cmds, size_t n, int pass_fd)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = mon_send(mi, cmds[i], i == 0 ? pass_fd : -1);
    return rc;
}

/* The restore failed: the start fails with <err>, and QEMU goes. */
static void restore_failed(struct minst *mi, const char *err)
{
    mon_close(mi);
    char line[400];
    snprintf(line, sizeof(line), "ERR restoring the snapshot: %s", err);
    tell_ready(mi, line);
    if (mi->pidfd >= 0)
        sch_pidfd_signal(mi->pidfd, SIGKILL);
}

/* A clone's state is loaded: it is warm. QEMU made its sockets in q/ at start-up and needs
 * the directory no more: it becomes root's, so that a QEMU a guest takes over later cannot
 * swap ctl.sock or qmp.sock for a link to another VM's (root connects to them). */
static void restored(struct minst *mi)
{
    if (chown(mi->qdir, 0, 0) < 0 || chmod(mi->qdir, 0711) < 0) {
        restore_failed(mi, "cannot take back its directory");
        return;
    }
    mi->restored = 1;
    mi->st = M_PAUSED;
    mi->di.paused = 1;
    tell_ready(mi, "READY");
}

/* QEMU refused a command: <err> is its description. */
static void mon_refused(struct minst *mi, const char *err)
{
    struct mtpl *t = mi->t;
    if (mi->template_vm) {
        if (t && t->builder == mi && t->snap == SNAP_BUILDING) {
            char why[400];
            snprintf(why, sizeof(why), "saving the template VM: %s", err);
            snapshot_failed(t, why);
        }
        mon_close(mi);
    } else if (!mi->restored) {
        restore_failed(mi, err);
    } else {
        /* A bind command (the disk swap, cont): the session cannot run here. */
        cm_log_error("microvm", "QEMU refused a bind command, ending the VM inst=%s err=\"%s\"",
                     mi->di.id, err);
        snprintf(mi->end_reason, sizeof(mi->end_reason), "QEMU refused a bind command: %.150s",
                 err);
        if (mi->pidfd >= 0)
            sch_pidfd_signal(mi->pidfd, SIGKILL);
        mon_close(mi);
    }
}

/* A MIGRATION event: the template VM's state saved, or a clone's loaded (or not). */
static void mon_migration(struct minst *mi, const char *status)
{
    int done = strcmp(status, "completed") == 0;
    if (!done && strcmp(status, "failed") != 0 && strcmp(status, "cancelled") != 0)
        return;
    if (mi->template_vm) {
        char why[64];
        snprintf(why, sizeof(why), "the state's migration %s", status);
        if (mi->st != M_SAVING)
            return;
        if (!done)
            mon_refused(mi, why);
        else if (mon_send(mi, "{\"execute\":\"quit\"}", -1) < 0) /* on_pid_exit goes on */
            mon_refused(mi, "cannot ask QEMU to quit");
    } else if (!mi->restored) {
        if (done)
            restored(mi);
        else
            restore_failed(mi, "the incoming migration failed");
    }
}

static void mon_line(struct minst *mi, const char *line, size_t len)
{
    char err[300] = "";
    struct cm_json *tree = NULL;
    const struct cm_json *value = NULL;
    int kind = sch_qmp_parse_line(line, len, &tree, &value, err, sizeof(err));
    if (kind == -EIO) {
        mon_refused(mi, err);
    } else if (kind == 2) {
        const struct cm_json *name = cm_json_get(tree, "event");
        const struct cm_json *st = cm_json_get(cm_json_get(tree, "data"), "status");
        if (name && name->type == CM_JSON_STRING && strcmp(name->str, "MIGRATION") == 0 && st &&
            st->type == CM_JSON_STRING)
            mon_migration(mi, st->str);
    }
    cm_json_free(tree);
}

static void on_monitor(evutil_socket_t fd, short what, void *arg)
{
    struct minst *mi = arg;
    (void)what;
    for (int i = 0; i < 8 && mi->mon_fd >= 0; i++) {
        ssize_t n = read(fd, mi->mon_buf + mi->mon_len, sizeof(mi->mon_buf) - mi->mon_len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) { /* QEMU ended (its pidfd says how) */
            if (!mi->template_vm && !mi->restored)
                restore_failed(mi, "QEMU closed its monitor");
            mon_close(mi);
            return;
        }
        mi->mon_len += (size_t)n;
        char *nl;
        while (mi->mon_fd >= 0 && (nl = memchr(mi->mon_buf, '\n', mi->mon_len))) {
            size_t len = (size_t)(nl - mi->mon_buf);
            if (!mi->mon_overlong)
                mon_line(mi, mi->mon_buf, len);
            mi->mon_overlong = 0;
            memmove(mi->mon_buf, nl + 1, mi->mon_len - len - 1);
            mi->mon_len -= len + 1;
        }
        if (mi->mon_len == sizeof(mi->mon_buf)) { /* a line too long for us: skip it */
            mi->mon_len = 0;
            mi->mon_overlong = 1;
        }
    }
}

/* Watches QEMU's end of the monitor and negotiates it (right after the spawn). */
static int mon_open(struct minst *mi, char *err, size_t errlen)
{
    fcntl(mi->mon_fd, F_SETFL, O_NONBLOCK);
    mi->mon_ev = event_new(mi->d->evb, mi->mon_fd, EV_READ | EV_PERSIST, on_monitor, mi);
    if (!mi->mon_ev || event_add(mi->mon_ev, NULL) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = mon_send(mi, "{\"execute\":\"qmp_capabilities\"}", -1);
    if (rc < 0)
        snprintf(err, errlen, "cannot write to QEMU's monitor: %s", strerror(-rc));
    return rc;
}

/* Runs <cmds> in order on <mi>'s QEMU, <pass_fd> (>= 0) with the first: over its monitor
 * without waiting when this scheduler started it (a refusal then ends the VM), else (a VM
 * adopted after a restart) over its QMP socket, waiting for each answer. */
static int vm_cmds(struct minst *mi, const char *const *cmds, size_t n, int pass_fd, char *err,
                   size_t errlen)
{
    int rc;
    if (mi->mon_fd >= 0) {
        if ((rc = mon_send_all(mi, cmds, n, pass_fd)) < 0)
            snprintf(err, errlen, "cannot write to QEMU's monitor: %s", strerror(-rc));
        return rc;
    }
    struct sch_qmp q;
    if ((rc = sch_qmp_open(&q, mi->qmp, mi->pid, QMP_TIMEOUT, err, errlen)) < 0)
        return rc;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = sch_qmp_cmd(&q, cmds[i], i == 0 ? pass_fd : -1, NULL, err, errlen);
    sch_qmp_close(&q);
    return rc;
}

/* ------------------------------------------------------------------ clones */

static void clone_spawn(struct minst *mi)
{
    static const char *const restore[] = {
        "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":"
        "[{\"capability\":\"x-ignore-shared\",\"state\":true},"
        "{\"capability\":\"events\",\"state\":true}]}}",
        "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"fd:" FD_INCOMING_STR "\"}}",
    };
    char err[400] = "";
    int rc = vm_spawn(mi, VM_CLONE, err, sizeof(err));
    if (rc < 0) {
        char line[450];
        snprintf(line, sizeof(line), "ERR %s", err);
        tell_ready(mi, line);
        mark_gone(mi, err);
        return;
    }
    mi->t->clones++;
    mi->st = M_RESTORING;
    if ((rc = mon_send_all(mi, restore, 2, -1)) < 0)
        restore_failed(mi, "cannot write to QEMU's monitor");
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct minst *mi = arg;
    (void)fd, (void)what;
    if (!mi->template_vm || !mi->t || mi->t->builder != mi)
        return;
    char why[200];
    if (mi->st == M_BOOTING)
        snprintf(why, sizeof(why), "the template VM was not READY within %" PRIu64 " s",
                 (uint64_t)(mi->deadline - mi->t->built_us) / CM_USEC_PER_SEC);
    else if (mi->st == M_SAVING)
        snprintf(why, sizeof(why), "the template VM's state was not saved within %" PRIu64 " s",
                 (uint64_t)(SNAP_SAVE_TIMEOUT / CM_USEC_PER_SEC));
    else
        return;
    snapshot_failed(mi->t, why);
}

static void on_pid_exit(evutil_socket_t fd, short what, void *arg)
{
    struct minst *mi = arg;
    (void)fd, (void)what;
    console_drain(mi); /* the last words on the console */
    if (mi->child) { /* ours: reaped now, how it ended kept for finish() */
        siginfo_t si = {0};
        if (waitid((idtype_t)P_PIDFD, (id_t)mi->pidfd, &si, WEXITED | WNOHANG) == 0 && si.si_pid)
            snprintf(mi->exit_how, sizeof(mi->exit_how), "%s=%d",
                     si.si_code == CLD_EXITED ? "exited status" : "killed signal", si.si_status);
        mi->child = 0;
    }
    if (!mi->template_vm) {
        mark_gone(mi, NULL);
        return;
    }
    /* The template VM quits after its state was saved; anything else is a failure. */
    struct mtpl *t = mi->t;
    if (t && t->builder == mi) {
        t->builder = NULL;
        if (mi->st == M_SAVING && strcmp(mi->exit_how, "exited status=0") == 0) {
            snapshot_ready(t);
        } else if (t->snap == SNAP_BUILDING) {
            char why[TAIL_MAX + 100], tail[300];
            last_words(mi, tail, sizeof(tail));
            snprintf(why, sizeof(why), "the template VM ended (%s) before its snapshot: %s",
                     mi->exit_how[0] ? mi->exit_how : "gone", tail);
            snapshot_failed(t, why);
        }
    }
    mi->st = M_GONE;
    inst_cleanup(mi);
    inst_free(mi);
}

/* ------------------------------------------------------------------ templates */

static struct mtpl *tpl_find(struct mdriver *d, const char *name)
{
    for (struct mtpl *t = d->tpls; t; t = t->next)
        if (strcmp(t->tpl->name, name) == 0)
            return t;
    return NULL;
}

static int m_prepare(struct sch_driver *base, const struct cm_template *tpl, char *err,
                     size_t errlen)
{
    struct mdriver *d = (struct mdriver *)base;
    if (tpl_find(d, tpl->name))
        return 0;
    if (tpl->app_port == RELAY_PORT || tpl->app_port == PORTS_PORT) {
        snprintf(err, errlen, "app.port %u is the agent's %s port in the guest", tpl->app_port,
                 tpl->app_port == RELAY_PORT ? "relay" : "ports");
        return -EINVAL;
    }
    struct mtpl *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->tpl = tpl;
    t->d = d;
    t->mem_fd = t->state_fd = -1;
    t->mem = tpl->memory ? tpl->memory : d->cfg->microvm.default_memory;
    t->mem = (t->mem + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
    t->vcpus = tpl->cpu_millis ? (tpl->cpu_millis + 999) / 1000 : 1;
    if (strcmp(tpl->accel, "auto") == 0) {
        snprintf(t->accel, sizeof(t->accel), "%s", g_probe.accel);
    } else if (strcmp(tpl->accel, "kvm") == 0 && strcmp(g_probe.accel, "kvm") != 0) {
        snprintf(err, errlen, "accel: kvm: KVM does not work on this host (%s)", g_probe.why);
        free(t);
        return -ENOTSUP;
    } else {
        snprintf(t->accel, sizeof(t->accel), "%s", tpl->accel);
    }
    struct sch_vmroot_params p = {.tpl = tpl,
                                  .ro_binds = d->cfg->ro_binds,
                                  .relay_port = RELAY_PORT,
                                  .ports_port = PORTS_PORT,
                                  .hold_ms = GUEST_HOLD_MS,
                                  .cache_dir = d->cache};
    cm_usec_t t0 = cm_now_mono();
    int rc = sch_vmroot_build(&p, t->root_img, sizeof(t->root_img), t->root_hash, err, errlen);
    if (rc < 0) {
        free(t);
        return rc;
    }
    sch_vmroot_gc(d->cache, tpl->name, t->root_hash);
    cm_log_info("microvm", "root image ready template=%s image=%s ms=%" PRIu64, tpl->name,
                t->root_img, (cm_now_mono() - t0) / 1000);
    t->next = d->tpls;
    d->tpls = t;
    /* The snapshot is built now, before the pools ask for clones. */
    snapshot_build(t);
    return 0;
}

/* ------------------------------------------------------------------ driver ops */

static int m_start(struct sch_driver *base, const struct sch_start_spec *spec,
                   struct sch_dinst **ret, char *err, size_t errlen)
{
    struct mdriver *d = (struct mdriver *)base;
    struct mtpl *t = tpl_find(d, spec->tpl->name);
    int rc;
    if (!t && (rc = m_prepare(base, spec->tpl, err, errlen)) < 0)
        return rc;
    if (!t)
        t = tpl_find(d, spec->tpl->name);
    char path[DIR_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", d->root, spec->id) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    if (access(path, F_OK) == 0)
        return -EEXIST;
    struct minst *mi = inst_new(d, spec->id, t, err, errlen);
    if (!mi)
        return -ENOMEM;
    int pp[2];
    if (pipe2(pp, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        inst_free(mi);
        return -EMFILE;
    }
    mi->di.ready_fd = pp[0];
    mi->ready_w = pp[1];
    if ((rc = inst_prepare(mi, err, errlen)) < 0) {
        inst_cleanup(mi);
        inst_free(mi);
        return rc;
    }
    /* The snapshot is stale when QEMU, the kernel or an image changed under us. */
    if (t->snap == SNAP_READY && snapshot_key(d, t) != t->key) {
        cm_log_info("microvm", "snapshot stale, rebuilding template=%s", t->tpl->name);
        snapshot_drop(t);
    }
    if (t->snap == SNAP_READY) {
        clone_spawn(mi);
        if (mi->st == M_GONE) {
            snprintf(err, errlen, "%s", mi->end_reason);
            inst_cleanup(mi);
            inst_free(mi);
            return -EIO;
        }
    } else {
        mi->st = M_WAITING;
        mi->next_wait = t->waiting;
        t->waiting = mi;
        cm_usec_t backoff =
            t->failures ? (CM_USEC_PER_SEC << (t->failures < 6 ? t->failures : 6)) : 0;
        if (backoff > SNAP_RETRY_MAX)
            backoff = SNAP_RETRY_MAX;
        if (t->snap == SNAP_NONE ||
            (t->snap == SNAP_FAILED && cm_now_mono() - t->failed_at >= backoff)) {
            snapshot_build(t);
        } else if (t->snap == SNAP_FAILED) {
            char line[400];
            snprintf(line, sizeof(line), "ERR snapshot of template %s failed: %s", t->tpl->name,
                     t->why);
            unlink_wait(mi);
            tell_ready(mi, line);
            mark_gone(mi, "snapshot failed");
        }
    }
    *ret = &mi->di;
    return 0;
}

static int m_adopt(struct sch_driver *base, const char *id, struct sch_dinst **ret, char *err,
                   size_t errlen)
{
    struct mdriver *d = (struct mdriver *)base;
    char dir[DIR_MAX];
    struct mstate_file s;
    if (snprintf(dir, sizeof(dir), "%s/%s", d->root, id) >= (int)sizeof(dir))
        return -ENAMETOOLONG;
    if (!is_ours(d, id) || read_state(dir, &s) < 0)
        return -ESRCH;
    uint64_t st = proc_starttime(s.pid);
    if (!st || st != s.start || !proc_is_vm_of(s.pid, id))
        return -ESRCH;
    int pfd = sch_pidfd_open(s.pid);
    if (pfd < 0 || proc_starttime(s.pid) != s.start) {
        if (pfd >= 0)
            close(pfd);
        return -ESRCH;
    }
    struct mtpl *t = tpl_find(d, s.tpl);
    struct minst *mi = inst_new(d, id, t, err, errlen);
    if (!mi) {
        close(pfd);
        return -ENOMEM;
    }
    snprintf(mi->tpl_name, sizeof(mi->tpl_name), "%s", s.tpl);
    snprintf(mi->di.accel, sizeof(mi->di.accel), "%s", s.accel);
    mi->pid = mi->di.pid = s.pid;
    mi->starttime = s.start;
    mi->pidfd = pfd;
    mi->uid = d->cfg->uid_base + (uint32_t)(s.slot > 0 ? s.slot : 0) * SCH_UID_RANGE_SIZE;
    mi->port = (uint16_t)s.port;
    /* A VM started before VMs had the ports forward: a "tcp:" address, so that no gateway
     * looks for one at port + 1 (where another process may listen); it gets no exec, files,
     * previews or pause, and ends with its session. */
    mi->fwd2 = s.fwd2;
    snprintf(mi->di.addr, sizeof(mi->di.addr), "%s:127.0.0.1:%u", s.fwd2 ? "vm" : "tcp", s.port);
    mi->data_size = s.data_size;
    mi->data = s.data_size > 0;
    if (s.data[0]) {
        mi->data_attached = 1;
        snprintf(mi->data_dir, sizeof(mi->data_dir), "%s", s.data);
    }
    mi->cgdirs = sch_cgroups_instance_dirs(d->cg, id);
    /* Running (bound) or paused (warm): QEMU says which. One that does not answer in time (a
     * busy TCG host) is taken as running: its agent's STATUS decides, as for any instance. */
    struct sch_qmp q;
    char status[32] = "";
    struct cm_json *r = NULL;
    int rc = sch_qmp_open(&q, mi->qmp, mi->pid, QMP_TIMEOUT, err, errlen);
    if (rc == 0) {
        rc = sch_qmp_cmd(&q, "{\"execute\":\"query-status\"}", -1, &r, err, errlen);
        const struct cm_json *v = cm_json_get(cm_json_get(r, "return"), "status");
        if (v && v->type == CM_JSON_STRING)
            snprintf(status, sizeof(status), "%s", v->str);
        cm_json_free(r);
        sch_qmp_close(&q);
    }
    if ((rc == 0 && strcmp(status, "running") == 0) || rc == -ETIMEDOUT) {
        mi->st = M_RUNNING;
    } else if (rc == 0 && strcmp(status, "paused") == 0) {
        mi->st = M_PAUSED;
        mi->di.paused = 1;
    } else {
        if (rc == 0)
            snprintf(err, errlen, "the VM is %s, neither running nor paused", status);
        mi->pidfd = -1; /* the caller's purge kills it */
        close(pfd);
        inst_free(mi);
        return -EIO;
    }
    mi->pid_ev = event_new(d->evb, mi->pidfd, EV_READ, on_pid_exit, mi);
    if (!mi->pid_ev || event_add(mi->pid_ev, NULL) < 0) {
        inst_free(mi);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    mi->slot = s.slot; /* its uid range is in use again (only once it is really ours) */
    sch_slots_mark(d->slots, s.slot, 1);
    *ret = &mi->di;
    return 0;
}

static int m_attach_storage(struct sch_driver *base, struct sch_dinst *di, const char *dir,
                            char *err, size_t errlen)
{
    (void)base;
    struct minst *mi = (struct minst *)di;
    if (mi->data_attached && strcmp(mi->data_dir, dir) == 0)
        return 0;
    if (mi->data_attached) {
        snprintf(err, errlen, "another session's storage is attached");
        return -EBUSY;
    }
    if (!mi->data) {
        snprintf(err, errlen, "the VM has no /data disk (template without data: true)");
        return -EINVAL;
    }
    unsigned owner = mi->t && mi->t->tpl->run_as_root ? 0 : APP_UID;
    int img = sch_storage_open_locked(dir, mi->data_size, owner, 1, err, errlen);
    if (img < 0)
        return img;
    struct stat st;
    if (fstat(img, &st) < 0) {
        close(img);
        snprintf(err, errlen, "fstat: %s", strerror(errno));
        return -EIO;
    }
    /* A file written past QEMU's RLIMIT_FSIZE kills it: an image made larger (an older
     * data_size) raises the limit to its size. */
    struct rlimit fl;
    if (prlimit(mi->pid, RLIMIT_FSIZE, NULL, &fl) == 0 && fl.rlim_cur != RLIM_INFINITY &&
        (uint64_t)st.st_size > fl.rlim_cur) {
        fl.rlim_cur = fl.rlim_max = (rlim_t)st.st_size;
        if (prlimit(mi->pid, RLIMIT_FSIZE, &fl, NULL) < 0) {
            close(img);
            snprintf(err, errlen, "cannot raise QEMU's file size limit: %s", strerror(errno));
            return -EIO;
        }
    }
    /* In order: the image's descriptor to QEMU (it cannot open the root-only file itself, and
     * the lock travels with it; one exchange, since an fd set added on a monitor connection
     * that closes before a node uses it is dropped), a node on it, that node swapped in under
     * the guest's disk (the agent mounts it at BIND), the placeholder dropped, and for an
     * image made with another data_size a resize (the guest learns its real size). cont,
     * sent at bind after these, runs after them. */
    char resize[256];
    snprintf(resize, sizeof(resize),
             "{\"execute\":\"block_resize\",\"arguments\":{\"node-name\":\"data\","
             "\"size\":%" PRIu64 "},\"id\":\"resize\"}",
             (uint64_t)st.st_size);
    const char *const swap[] = {
        "{\"execute\":\"add-fd\",\"arguments\":{\"fdset-id\":2},\"id\":\"add-fd\"}",
        "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\","
        "\"node-name\":\"dfile\",\"filename\":\"/dev/fdset/2\"},\"id\":\"blockdev-add\"}",
        "{\"execute\":\"blockdev-reopen\",\"arguments\":{\"options\":[{"
        "\"driver\":\"raw\",\"node-name\":\"data\",\"file\":\"dfile\"}]},\"id\":\"reopen\"}",
        "{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":\"dnull\"},\"id\":\"del\"}",
        resize,
    };
    size_t n = sizeof(swap) / sizeof(swap[0]) - ((uint64_t)st.st_size == mi->data_size);
    int rc = vm_cmds(mi, swap, n, img, err, errlen);
    close(img);
    if (rc < 0) {
        if (mi->pidfd >= 0) /* maybe half a swap: this VM cannot be trusted with the session */
            sch_pidfd_signal(mi->pidfd, SIGKILL);
        return rc;
    }
    mi->data_attached = 1;
    snprintf(mi->data_dir, sizeof(mi->data_dir), "%s", dir);
    write_state(mi);
    return 0;
}

static int m_bind_line(struct sch_driver *base, struct sch_dinst *di, const char *session,
                       char *line, size_t len, char *err, size_t errlen)
{
    (void)base;
    struct minst *mi = (struct minst *)di;
    static const char *const cont[] = {"{\"execute\":\"cont\",\"id\":\"cont\"}"};
    if (mi->st == M_PAUSED) {
        int rc = vm_cmds(mi, cont, 1, -1, err, errlen);
        if (rc < 0)
            return rc;
        mi->st = M_RUNNING;
        mi->di.paused = 0;
    }
    /* The clone's clock is as old as its snapshot and its RNG state is every clone's: the
     * agent sets the one and reseeds the other before it lets a connection through. */
    unsigned char seed[32];
    if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
        snprintf(err, errlen, "getrandom: %s", strerror(errno));
        return -EIO;
    }
    char hex[65];
    for (size_t i = 0; i < sizeof(seed); i++)
        snprintf(hex + 2 * i, 3, "%02x", seed[i]);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* The exec channel's key: the gateway computes the same from the shared secret (not for
     * a VM adopted from before the ports forward: its agent knows no exec_key=). */
    char key[CM_EXEC_KEY_LEN + 1] = "";
    if (mi->fwd2 && cm_secret_exec_key(mi->d->cfg->api_secret, mi->di.id, key) < 0) {
        snprintf(err, errlen, "cannot compute the exec key");
        return -EIO;
    }
    int n = snprintf(line, len, "BIND %s clock=%lld.%09ld seed=%s id=%s%s%s%s", session,
                     (long long)now.tv_sec, now.tv_nsec, hex, mi->di.id,
                     mi->data_attached ? " data=1" : "", key[0] ? " exec_key=" : "", key);
    if (n < 0 || (size_t)n >= len) {
        snprintf(err, errlen, "BIND line too long");
        return -E2BIG;
    }
    return 0;
}

/* ------------------------------------------------------------------ pause, stats
 *
 * A pause freezes the VM's whole QEMU with the cgroup freezer, not QMP `stop`: under `stop`
 * QEMU's main loop keeps running, and its user-mode network accepts the connections that come
 * to the forwards (and holds them inside QEMU), so nothing on the host would see that one is
 * waiting. Frozen, QEMU accepts nothing: a new connection waits in the kernel's accept queue
 * of a forward's listener, and the scheduler's copies of those two listeners (taken from QEMU
 * with pidfd_getfd()) become readable: its cue to thaw the VM. The guest's clocks run on the
 * host's, so after a thaw the guest's time is right (it sees the pause as a long stall). */

/* The listening socket on 127.0.0.1:<port> among QEMU's descriptors (a copy), or -1. */
static int take_forward(struct minst *mi, uint16_t port)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)mi->pid);
    DIR *dp = opendir(path);
    if (!dp)
        return -1;
    int found = -1, seen = 0;
    struct dirent *e;
    while (found < 0 && (e = readdir(dp)) && seen++ < FD_SCAN_MAX) {
        char *end;
        long target = strtol(e->d_name, &end, 10);
        if (*end || end == e->d_name || target < 0 || target > INT_MAX)
            continue;
        char what[32];
        ssize_t n = readlinkat(dirfd(dp), e->d_name, what, sizeof(what) - 1);
        if (n < 8 || strncmp(what, "socket:[", 8) != 0)
            continue;
        int fd = (int)syscall(SYS_pidfd_getfd, mi->pidfd, (int)target, 0);
        if (fd < 0)
            continue;
        struct sockaddr_in sa;
        socklen_t len = sizeof(sa);
        int listening = 0;
        socklen_t ll = sizeof(listening);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) == 0 && listening &&
            getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && len == sizeof(sa) &&
            sa.sin_family == AF_INET && sa.sin_addr.s_addr == htonl(INADDR_LOOPBACK) &&
            ntohs(sa.sin_port) == port)
            found = fd;
        else
            close(fd);
    }
    closedir(dp);
    return found;
}

/* Connections to the VM's forwards that QEMU holds or is about to accept: host sockets on
 * 127.0.0.1:<port> or <port>+1 in state ESTABLISHED, SYN_RECV or CLOSE_WAIT (a client that
 * sent its request and half-closed). /proc/net/tcp prints an address as the raw big-endian
 * word read as a host integer, hence htonl() for the comparison; ports are plain numbers.
 * -1 when the table cannot be read. */
static int forward_conns(uint16_t port)
{
    FILE *f = fopen("/proc/net/tcp", "re");
    if (!f)
        return -1;
    char line[256];
    int n = 0;
    if (!fgets(line, sizeof(line), f)) { /* the header */
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned addr, lport, st;
        if (sscanf(line, " %*u: %8x:%4x %*8x:%*4x %2x", &addr, &lport, &st) != 3)
            continue;
        if (addr == htonl(INADDR_LOOPBACK) && (lport == port || lport == (unsigned)port + 1) &&
            (st == 0x01 || st == 0x03 || st == 0x08))
            n++;
    }
    fclose(f);
    return n;
}

/* A guest's agent that took PAUSE has closed its connections, but QEMU's user-mode network
 * passes that on to the host's sockets on its own loop: a connection still open on the host
 * side when QEMU is frozen would take a request that nothing sees. So the freeze waits
 * (briefly) for none to be left, and is undone if one was accepted meanwhile. */
static int m_pause(struct sch_driver *base, struct sch_dinst *di, int paused, char *err,
                   size_t errlen)
{
    struct mdriver *d = (struct mdriver *)base;
    struct minst *mi = (struct minst *)di;
    if (paused) {
        if (mi->st != M_RUNNING || mi->pidfd < 0) {
            snprintf(err, errlen, "the VM is not running");
            return -EINVAL;
        }
        if (!mi->fwd2) {
            snprintf(err, errlen, "a VM started by an older scheduler (no ports forward)");
            return -ENOTSUP;
        }
        for (int i = 0; i < 2; i++)
            if (di->wake_fds[i] < 0 &&
                (di->wake_fds[i] = take_forward(mi, (uint16_t)(mi->port + i))) < 0) {
                snprintf(err, errlen,
                         "QEMU's listener on 127.0.0.1:%u is not found: nothing would wake it",
                         (unsigned)(mi->port + i));
                return -ENOTSUP;
            }
    }
    if (!paused) {
        int rc = sch_cgroups_freeze(d->cg, mi->cgdirs, 0, 0, err, errlen);
        if (rc == 0)
            mi->frozen = 0;
        return rc;
    }
    int open = forward_conns(mi->port);
    for (int waited = 0; open > 0 && waited < CONN_WAIT_MS; waited += 5) {
        poll(NULL, 0, 5);
        open = forward_conns(mi->port);
    }
    if (open < 0) {
        snprintf(err, errlen, "cannot read /proc/net/tcp");
        return -EIO;
    }
    if (open > 0) {
        snprintf(err, errlen, "connections to the VM are open");
        return -EAGAIN;
    }
    int rc = sch_cgroups_freeze(d->cg, mi->cgdirs, 1, PAUSE_WAIT_MS, err, errlen);
    if (rc < 0)
        return rc;
    mi->frozen = 1;
    if (forward_conns(mi->port) != 0) { /* one came in before the freeze took */
        if (sch_cgroups_freeze(d->cg, mi->cgdirs, 0, 0, err, errlen) == 0)
            mi->frozen = 0;
        snprintf(err, errlen, "a connection to the VM came in");
        return -EAGAIN;
    }
    return 0;
}

static int m_stats(struct sch_driver *base, struct sch_dinst *di, struct sch_cg_stats *ret)
{
    struct mdriver *d = (struct mdriver *)base;
    return sch_cgroups_stats(d->cg, ((struct minst *)di)->cgdirs, ret);
}

/* Tells a running guest's agent to end its app (it syncs /data and powers off). */
static int send_term(struct minst *mi)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return -errno;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", mi->di.ctl) >=
        (int)sizeof(sun.sun_path)) {
        close(s);
        return -ENAMETOOLONG;
    }
    int rc = 0;
    struct ucred cr;
    socklen_t crlen = sizeof(cr);
    if (connect(s, (struct sockaddr *)&sun, sizeof(sun)) < 0 && errno != EINPROGRESS)
        rc = -errno;
    else if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 || cr.pid != mi->pid)
        rc = -EPERM; /* not this VM's QEMU listening there */
    /* Queued in the socket until QEMU accepts (it takes one connection at a time). */
    if (rc == 0 && send(s, "TERM\n", 5, MSG_NOSIGNAL) != 5)
        rc = -EIO;
    close(s);
    return rc;
}

static int m_stop(struct sch_driver *base, struct sch_dinst *di, int hard)
{
    (void)base;
    struct minst *mi = (struct minst *)di;
    if (mi->st == M_GONE)
        return -ESRCH;
    if (mi->st == M_WAITING || mi->pidfd < 0) {
        unlink_wait(mi);
        tell_ready(mi, "ERR stopped before it started");
        mark_gone(mi, "stopped before it started");
        return 0;
    }
    /* A frozen QEMU takes no signal and reads no TERM until thawed (also one frozen before a
     * scheduler restart). */
    if (mi->frozen || (mi->cgdirs && sch_cgroups_frozen(mi->d->cg, mi->cgdirs) == 1)) {
        char err[256];
        if (sch_cgroups_freeze(mi->d->cg, mi->cgdirs, 0, 0, err, sizeof(err)) == 0)
            mi->frozen = 0;
    }
    int sig = SIGKILL;
    if (!hard) {
        if (mi->st == M_RUNNING && send_term(mi) == 0)
            return 0;
        sig = SIGTERM; /* QEMU ends at once; a paused clone has nothing to save */
    }
    if (sch_pidfd_signal(mi->pidfd, sig) < 0)
        return errno == ESRCH ? -ESRCH : -errno;
    return 0;
}

static void m_finish(struct sch_driver *base, struct sch_dinst *di, char *reason, size_t len,
                     char *tail, size_t taillen)
{
    (void)base;
    struct minst *mi = (struct minst *)di;
    console_drain(mi);
    snprintf(reason, len, "%s",
             mi->end_reason[0] ? mi->end_reason
             : mi->exit_how[0] ? mi->exit_how
                               : "gone");
    last_words(mi, tail, taillen);
    if (mi->pidfd >= 0)
        sch_pidfd_signal(mi->pidfd, SIGKILL); /* nothing of it stays (a no-op when gone) */
    inst_cleanup(mi);
    inst_free(mi);
}

static void m_release(struct sch_driver *base, struct sch_dinst *di)
{
    (void)base;
    struct minst *mi = (struct minst *)di;
    mi->cgdirs = (cm_strv_free(mi->cgdirs), NULL);
    inst_free(mi);
}

static int is_live_template(const struct mdriver *d, const char *id)
{
    for (const struct minst *mi = d->insts; mi; mi = mi->next)
        if (mi->template_vm && strcmp(mi->di.id, id) == 0)
            return 1;
    return 0;
}

/* Appends a copy of <id> to the NULL-terminated <*ids> (n entries, room for cap) unless it is
 * there already. Returns 0 or -ENOMEM. */
static int add_id(char ***ids, size_t *n, size_t *cap, const char *id)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*ids)[i], id) == 0)
            return 0;
    if (*n == *cap) {
        char **m = realloc(*ids, (*cap * 2 + 1) * sizeof(**ids));
        if (!m)
            return -ENOMEM;
        *ids = m;
        *cap *= 2;
    }
    if (!((*ids)[*n] = strdup(id)))
        return -ENOMEM;
    (*ids)[++*n] = NULL;
    return 0;
}

static int m_list(struct sch_driver *base, char ***ret_ids)
{
    struct mdriver *d = (struct mdriver *)base;
    size_t n = 0, cap = 16;
    char **ids = calloc(cap + 1, sizeof(*ids)), **cg = NULL;
    int rc = ids ? 0 : -ENOMEM;
    DIR *dp = rc == 0 ? opendir(d->root) : NULL;
    struct dirent *e;
    /* A template VM being snapshotted is no instance. */
    while (dp && rc == 0 && (e = readdir(dp)))
        if (is_ours(d, e->d_name) && !is_live_template(d, e->d_name))
            rc = add_id(&ids, &n, &cap, e->d_name);
    if (dp)
        closedir(dp);
    if (rc == 0 && (rc = sch_cgroups_list(d->cg, &cg)) == 0) {
        for (char **c = cg; *c && rc == 0; c++)
            if (is_ours(d, *c) && !is_live_template(d, *c))
                rc = add_id(&ids, &n, &cap, *c);
        cm_strv_free(cg);
    }
    if (rc < 0) { /* a partial list would make another driver's instances orphans */
        cm_strv_free(ids);
        return rc;
    }
    *ret_ids = ids;
    return 0;
}

static int m_purge(struct sch_driver *base, const char *id)
{
    struct mdriver *d = (struct mdriver *)base;
    if (!is_ours(d, id))
        return 0;
    for (struct minst *mi = d->insts; mi; mi = mi->next)
        if (strcmp(mi->di.id, id) == 0)
            return -EBUSY; /* live and ours: the scheduler stops it instead */
    char dir[DIR_MAX];
    struct mstate_file s;
    if (snprintf(dir, sizeof(dir), "%s/%s", d->root, id) >= (int)sizeof(dir))
        return -ENAMETOOLONG;
    if (read_state(dir, &s) == 0 && proc_starttime(s.pid) == s.start && proc_is_vm_of(s.pid, id)) {
        int pfd = sch_pidfd_open(s.pid);
        if (pfd >= 0 && proc_starttime(s.pid) == s.start) {
            sch_pidfd_signal(pfd, SIGKILL);
            struct pollfd p = {.fd = pfd, .events = POLLIN};
            poll(&p, 1, 2000);
        }
        if (pfd >= 0)
            close(pfd);
    }
    char **cg = sch_cgroups_instance_dirs(d->cg, id);
    if (cg) {
        sch_cgroups_remove(cg);
        cm_strv_free(cg);
    }
    remove_dir(dir);
    return 0;
}

static void m_status(struct sch_driver *base, struct cm_jbuf *out)
{
    struct mdriver *d = (struct mdriver *)base;
    cm_jbuf_raw(out, "{\"accel\":", 9);
    cm_jbuf_cstr(out, g_probe.accel);
    cm_jbuf_raw(out, ",\"accel_reason\":", 16);
    cm_jbuf_cstr(out, g_probe.why);
    cm_jbuf_raw(out, ",\"kernel\":", 10);
    cm_jbuf_cstr(out, d->release);
    cm_jbuf_raw(out, ",\"qemu\":", 8);
    cm_jbuf_cstr(out, d->cfg->microvm.qemu);
    size_t n = 0, paused = 0;
    for (struct minst *mi = d->insts; mi; mi = mi->next)
        if (!mi->template_vm) {
            n++;
            paused += mi->st == M_PAUSED;
        }
    cm_jbuf_printf(out, ",\"instances\":%zu,\"paused\":%zu", n, paused);
    const char *mem = sch_cgroups_parent(d->cg, SCH_CG_MEMORY);
    if (mem) {
        /* What the VMs really use together (clones share their snapshot's pages). */
        char p[4200], buf[64] = "";
        int v2 = sch_cgroups_version(d->cg, SCH_CG_MEMORY) == 2;
        snprintf(p, sizeof(p), "%s/%s", mem, v2 ? "memory.current" : "memory.usage_in_bytes");
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        ssize_t k = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        if (fd >= 0)
            close(fd);
        if (k > 0) {
            buf[k] = '\0';
            cm_jbuf_printf(out, ",\"memory_used\":%" PRIu64, (uint64_t)strtoull(buf, NULL, 10));
        }
    }
    cm_jbuf_raw(out, ",\"templates\":[", 14);
    for (struct mtpl *t = d->tpls; t; t = t->next) {
        static const char *const snap_names[] = {"none", "building", "ready", "failed"};
        cm_jbuf_raw(out, t == d->tpls ? "{" : ",{", t == d->tpls ? 1 : 2);
        cm_jbuf_raw(out, "\"name\":", 7);
        cm_jbuf_cstr(out, t->tpl->name);
        cm_jbuf_raw(out, ",\"accel\":", 9);
        cm_jbuf_cstr(out, t->accel);
        cm_jbuf_printf(out, ",\"memory\":%" PRIu64 ",\"vcpus\":%u,\"clones\":%" PRIu64, t->mem,
                       t->vcpus, t->clones);
        cm_jbuf_raw(out, ",\"snapshot\":", 12);
        cm_jbuf_cstr(out, snap_names[t->snap]);
        cm_jbuf_raw(out, ",\"root_image\":", 14);
        cm_jbuf_cstr(out, t->root_img);
        if (t->why[0]) {
            cm_jbuf_raw(out, ",\"reason\":", 10);
            cm_jbuf_cstr(out, t->why);
        }
        cm_jbuf_raw(out, "}", 1);
    }
    cm_jbuf_raw(out, "]}", 2);
}

static void m_destroy(struct sch_driver *base)
{
    struct mdriver *d = (struct mdriver *)base;
    if (!d)
        return;
    while (d->insts) {
        struct minst *mi = d->insts;
        if (mi->template_vm) {
            /* A half-made snapshot is of no use to the next scheduler. */
            if (mi->pidfd >= 0)
                sch_pidfd_signal(mi->pidfd, SIGKILL);
            if (mi->pidfd >= 0) {
                struct pollfd p = {.fd = mi->pidfd, .events = POLLIN};
                poll(&p, 1, 2000);
            }
            inst_cleanup(mi);
        }
        mi->cgdirs = (cm_strv_free(mi->cgdirs), NULL);
        inst_free(mi);
    }
    while (d->tpls) {
        struct mtpl *t = d->tpls;
        d->tpls = t->next;
        snapshot_drop(t);
        free(t);
    }
    sch_cgroups_destroy(d->cg);
    free(d);
}

static const struct sch_driver_ops microvm_ops = {
    .name = "microvm",
    .agent_timeout = AGENT_TIMEOUT,
    .bind_required = 1,
    .min_grace = MIN_GRACE,
    .start = m_start,
    .adopt = m_adopt,
    .attach_storage = m_attach_storage,
    .prepare = m_prepare,
    .bind_line = m_bind_line,
    .pause = m_pause,
    .stats = m_stats,
    .stop = m_stop,
    .finish = m_finish,
    .release = m_release,
    .list = m_list,
    .purge = m_purge,
    .status = m_status,
    .destroy = m_destroy,
};

/* ------------------------------------------------------------------ probe, create */

static int read_release(const char *image_dir, char *out, size_t len)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/kernel.release", image_dir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    if (n <= 0)
        return -EINVAL;
    out[n] = '\0';
    out[strcspn(out, "\n")] = '\0';
    return 0;
}

/* Boots the guest image under KVM as an unprivileged uid, without disks, and waits for its
 * agent's READY (research/microvm.md: on a PVM host /dev/kvm opens and KVM_CREATE_VM works,
 * yet a stock kernel never boots: only a real boot tells). Returns 1, or 0 with <why>. */
static int kvm_probe_boot(const struct sch_config *cfg, const char *kernel, const char *initrd,
                          char *why, size_t len)
{
    struct mdriver d = {.cfg = cfg};
    if (snprintf(d.kernel, sizeof(d.kernel), "%s", kernel) >= (int)sizeof(d.kernel) ||
        snprintf(d.initrd, sizeof(d.initrd), "%s", initrd) >= (int)sizeof(d.initrd)) {
        snprintf(why, len, "image path too long");
        return 0;
    }
    struct minst mi;
    memset(&mi, 0, sizeof(mi));
    snprintf(mi.di.id, sizeof(mi.di.id), "kvm-probe");
    int port = free_port();
    mi.port = (uint16_t)(port > 0 ? port : 0);
    struct argv_buf *a = malloc(sizeof(*a));
    char dir[] = "/tmp/berth-kvm-probe.XXXXXX";
    int sv[2] = {-1, -1}, mem = -1, ok = 0;
    if (!a || !mkdtemp(dir) || build_argv(&d, NULL, &mi, VM_PROBE, "kvm", a) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
        (mem = memfd_create("berth-kvm-probe", MFD_CLOEXEC)) < 0 || ftruncate(mem, 128 << 20) < 0) {
        snprintf(why, len, "cannot prepare the KVM probe boot: %s", strerror(errno));
        goto out;
    }
    /* An unprivileged uid with only /dev/kvm's group, like the VMs later (65534: nobody). */
    if (chown(dir, 65534, 65534) < 0) {
        snprintf(why, len, "cannot prepare the KVM probe boot: %s", strerror(errno));
        goto out;
    }
    int ep[2] = {-1, -1};
    if (pipe2(ep, O_CLOEXEC | O_NONBLOCK) < 0)
        ep[0] = ep[1] = -1;
    struct spawn_fds f = {
        .mem = mem, .con = sv[1], .incoming = -1, .root = -1, .mon = -1, .log = ep[1]};
    char err[300] = "";
    cm_usec_t t0 = cm_now_mono();
    pid_t pid = spawn_qemu(&d, a->v, 65534, NULL, dir, &f, err, sizeof(err));
    close(sv[1]);
    sv[1] = -1;
    if (ep[1] >= 0)
        close(ep[1]);
    if (pid < 0) {
        snprintf(why, len, "KVM probe boot: %s", err);
        goto out;
    }
    struct sch_console_scan scan = {0};
    char buf[4096], tail[200] = "";
    cm_usec_t deadline = t0 + cfg->microvm.probe_timeout;
    int ended = 0;
    while (!ok && !ended) {
        cm_usec_t now = cm_now_mono();
        if (now >= deadline)
            break;
        struct pollfd p = {.fd = sv[0], .events = POLLIN};
        if (poll(&p, 1, (int)((deadline - now) / 1000) + 1) <= 0)
            continue;
        ssize_t n = read(sv[0], buf, sizeof(buf));
        if (n <= 0) {
            ended = 1;
            break;
        }
        sch_report_sanitize(buf + (n > 150 ? n - 150 : 0), (size_t)(n > 150 ? 150 : n), tail,
                            sizeof(tail));
        ok = sch_console_scan_feed(&scan, buf, (size_t)n);
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!tail[0] && ep[0] >= 0) { /* QEMU's own words: why it would not run */
        ssize_t n = read(ep[0], buf, sizeof(buf));
        size_t got = n > 0 ? (size_t)n : 0;
        while (got && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
            got--;
        size_t from = got > 150 ? got - 150 : 0;
        sch_report_sanitize(buf + from, got - from, tail, sizeof(tail));
    }
    if (ep[0] >= 0)
        close(ep[0]);
    if (ok)
        snprintf(why, len, "a probe boot under KVM reached READY in %" PRIu64 " ms",
                 (cm_now_mono() - t0) / 1000);
    else if (ended)
        snprintf(why, len, "a probe boot under KVM failed (QEMU exited: %s)",
                 tail[0] ? tail : "no console output");
    else
        snprintf(why, len,
                 "a probe boot under KVM did not reach READY within %" PRIu64
                 " s (a nested or PVM KVM that cannot run a stock kernel?)",
                 (uint64_t)(cfg->microvm.probe_timeout / CM_USEC_PER_SEC));
out:
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    if (mem >= 0)
        close(mem);
    char p[64];
    snprintf(p, sizeof(p), "%s/qmp.sock", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/ctl.sock", dir);
    unlink(p);
    rmdir(dir);
    free(a);
    return ok;
}

int sch_driver_microvm_probe(const struct sch_config *cfg, char *why, size_t len)
{
    if (g_probe.done) {
        snprintf(why, len, "%s", g_probe.why);
        return g_probe.available;
    }
    g_probe.done = 1;
    g_probe.available = 0;
    char kernel[4200], initrd[4200], release[128];
    snprintf(kernel, sizeof(kernel), "%s/vmlinux", cfg->microvm.image_dir);
    snprintf(initrd, sizeof(initrd), "%s/initramfs.cpio.gz", cfg->microvm.image_dir);
    if (access(cfg->microvm.qemu, X_OK) < 0) {
        snprintf(g_probe.why, sizeof(g_probe.why),
                 "no QEMU at %s (%s): apt-get install qemu-system-x86, or set "
                 "scheduler.microvm.qemu",
                 cfg->microvm.qemu, strerror(errno));
    } else if (access(kernel, R_OK) < 0 || access(initrd, R_OK) < 0 ||
               read_release(cfg->microvm.image_dir, release, sizeof(release)) < 0) {
        snprintf(g_probe.why, sizeof(g_probe.why),
                 "no guest image in %s (vmlinux, initramfs.cpio.gz, kernel.release): build it "
                 "with `meson compile -C build guest-image`, or set scheduler.microvm.image_dir",
                 cfg->microvm.image_dir);
    } else {
        g_probe.available = 1;
        g_probe.tsc_khz = host_tsc_khz();
        const char *want = cfg->microvm.accel;
        struct stat st;
        int kvm = -1;
        if (strcmp(want, "tcg") == 0) {
            snprintf(g_probe.why, sizeof(g_probe.why), "tcg: set by scheduler.microvm.accel");
        } else if ((kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) {
            snprintf(g_probe.why, sizeof(g_probe.why), "tcg: /dev/kvm cannot be opened (%s)",
                     strerror(errno));
        } else if (fstat(kvm, &st) < 0 || !(st.st_mode & S_IRGRP) || !(st.st_mode & S_IWGRP) ||
                   st.st_gid == 0) {
            snprintf(g_probe.why, sizeof(g_probe.why),
                     "tcg: /dev/kvm is not open to a group (mode %o, gid %u): QEMU runs "
                     "unprivileged and needs it 0660 with a group such as kvm",
                     (unsigned)(st.st_mode & 0777), (unsigned)st.st_gid);
        } else {
            g_probe.kvm_gid = (int)st.st_gid;
            char r[400];
            if (kvm_probe_boot(cfg, kernel, initrd, r, sizeof(r))) {
                snprintf(g_probe.accel, sizeof(g_probe.accel), "kvm");
                snprintf(g_probe.why, sizeof(g_probe.why), "kvm: %s", r);
            } else {
                g_probe.kvm_gid = -1;
                snprintf(g_probe.why, sizeof(g_probe.why), "tcg: %s", r);
            }
        }
        if (kvm >= 0)
            close(kvm);
        if (!g_probe.accel[0])
            snprintf(g_probe.accel, sizeof(g_probe.accel), "tcg");
        if (strcmp(want, "kvm") == 0 && strcmp(g_probe.accel, "kvm") != 0) {
            g_probe.available = 0;
            char r[sizeof(g_probe.why) - 64];
            snprintf(r, sizeof(r), "%.400s", g_probe.why);
            snprintf(g_probe.why, sizeof(g_probe.why),
                     "scheduler.microvm.accel is kvm, but KVM cannot be used: %.400s", r);
        }
    }
    snprintf(why, len, "%s", g_probe.why);
    return g_probe.available;
}

struct sch_driver *sch_driver_microvm_create(const struct sch_config *cfg,
                                             const struct sch_driver_env *env, char *err,
                                             size_t errlen)
{
    char why[512];
    if (!env->base) {
        snprintf(err, errlen, "no event loop");
        return NULL;
    }
    if (!sch_driver_microvm_probe(cfg, why, sizeof(why))) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    struct mdriver *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->base.ops = &microvm_ops;
    d->cfg = cfg;
    d->evb = env->base;
    d->slots = env->slots;
    snprintf(d->prefix, sizeof(d->prefix), "%s-", cfg->host_id);
    snprintf(d->kernel, sizeof(d->kernel), "%s/vmlinux", cfg->microvm.image_dir);
    snprintf(d->initrd, sizeof(d->initrd), "%s/initramfs.cpio.gz", cfg->microvm.image_dir);
    read_release(cfg->microvm.image_dir, d->release, sizeof(d->release));
    int n = snprintf(d->root, sizeof(d->root), "%s/microvm", cfg->run_dir);
    int m = snprintf(d->cache, sizeof(d->cache), "%s/microvm/cache", cfg->run_dir);
    if (n < 0 || (size_t)n >= sizeof(d->root) || m < 0 || (size_t)m >= sizeof(d->cache)) {
        snprintf(err, errlen, "run_dir too long");
        free(d);
        return NULL;
    }
    struct sockaddr_un sun;
    if (strlen(d->root) + 1 + SCH_INST_ID_MAX + sizeof("/q/qmp.sock") > sizeof(sun.sun_path)) {
        snprintf(err, errlen, "run_dir too long: %s/<id>/q/qmp.sock must fit a unix socket path",
                 d->root);
        free(d);
        return NULL;
    }
    int rc = sch_mkdir_p(d->cache, 0700);
    if (rc == 0 && chmod(d->root, 0711) < 0)
        rc = -errno;
    if (rc == 0 && chmod(d->cache, 0700) < 0)
        rc = -errno;
    if (rc < 0) {
        snprintf(err, errlen, "cannot create %s: %s", d->cache, strerror(-rc));
        free(d);
        return NULL;
    }
    /* QEMU (an unprivileged uid) must reach {run_dir}/microvm/<id>/q: run_dir and its parents
     * need search permission for others (run_dir is ours to fix; its parents are not). */
    char parent[DIR_MAX];
    snprintf(parent, sizeof(parent), "%s", d->root);
    for (char *slash; (slash = strrchr(parent, '/')) && slash != parent;) {
        *slash = '\0';
        struct stat st;
        if (stat(parent, &st) < 0 || (st.st_mode & S_IXOTH))
            continue;
        if (strcmp(parent, cfg->run_dir) == 0 && chmod(parent, (st.st_mode & 07777) | 0011) == 0)
            continue;
        snprintf(err, errlen,
                 "%s is not searchable by others (mode %o): QEMU runs as an unprivileged uid "
                 "and must reach %s/<id>/ (chmod o+x it, or move run_dir)",
                 parent, (unsigned)(st.st_mode & 0777), d->root);
        free(d);
        return NULL;
    }
    char cgp[4200];
    snprintf(cgp, sizeof(cgp), "%s/microvm", cfg->cgroup_parent);
    d->cg = sch_cgroups_create(cgp, "/sys/fs/cgroup");
    if (!d->cg) {
        snprintf(err, errlen, "out of memory");
        free(d);
        return NULL;
    }
    sch_cgroups_log(d->cg);
    cm_log_info("microvm", "driver ready accel=%s reason=\"%s\" kernel=%s", g_probe.accel,
                g_probe.why, d->release);
    return &d->base;
}
