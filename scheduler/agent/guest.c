/* berth-agent's guest mode: machine set-up as PID 1 of a microVM (guest.h). */
#include "scheduler/agent/guest.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/route.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GUEST_ADDR "10.0.2.15" /* QEMU user networking's default guest address */
#define GUEST_MASK "255.255.255.0"
#define GUEST_GW "10.0.2.2"
#define WAIT_STEP_MS 10
#define ETH_WAIT_MS 2000      /* eth0 appears when virtio_net binds (normally at once) */
#define CONSOLE_WAIT_MS 10000 /* hvc0: see open_console() */

int agent_guest_detect(int argc, const char *argv0)
{
    struct statfs st;
    if (argc != 1 || getpid() != 1 || !argv0 || strcmp(argv0, "/init") != 0 || statfs("/", &st) < 0)
        return 0;
    return st.f_type == RAMFS_MAGIC || st.f_type == TMPFS_MAGIC;
}

void agent_guest_conf_init(struct agent_guest_conf *conf)
{
    memset(conf, 0, sizeof(*conf));
    snprintf(conf->id, sizeof(conf->id), "guest");
    conf->relay_port = AGENT_GUEST_RELAY_PORT;
    conf->ports_port = AGENT_GUEST_PORTS_PORT;
    conf->hold_ms = AGENT_GUEST_HOLD_MS;
    conf->workspace_size = AGENT_GUEST_WORKSPACE;
}

/* A plain decimal number in MIN..MAX: no sign, no spaces, no leading garbage. */
static int parse_num(const char *v, uint64_t min, uint64_t max, uint64_t *ret)
{
    uint64_t x = 0;
    if (!*v)
        return -EINVAL;
    for (; *v; v++) {
        if (*v < '0' || *v > '9' || x > (UINT64_MAX - 9) / 10)
            return -EINVAL;
        x = x * 10 + (uint64_t)(*v - '0');
    }
    if (x < min || x > max)
        return -EINVAL;
    *ret = x;
    return 0;
}

/* The keys taking one number: name, bounds, error, where it goes. */
enum { K_PORT, K_RELAY, K_PORTS, K_HOLD, K_UID, K_WORKSPACE, K_COUNT };
static const struct num_key {
    const char *name;
    uint64_t min, max;
    const char *err;
} num_keys[K_COUNT] = {
    [K_PORT] = {"port=", 1, 65535, "port: expected a number in 1..65535"},
    [K_RELAY] = {"relay_port=", 1, 65535, "relay_port: expected a number in 1..65535"},
    [K_PORTS] = {"ports_port=", 1, 65535, "ports_port: expected a number in 1..65535"},
    [K_HOLD] = {"hold_ms=", 1, 86400000, "hold_ms: expected a number in 1..86400000"},
    [K_UID] = {"uid=", 0, AGENT_GUEST_UID_MAX, "uid: expected a number in 0..65534"},
    [K_WORKSPACE] = {"workspace_size=", AGENT_GUEST_WORKSPACE_MIN, AGENT_GUEST_WORKSPACE_MAX,
                     "workspace_size: expected bytes in 1048576..68719476736"},
};

static int env_name_char(char c, int first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* env=NAME=VALUE: NAME's syntax, not one the agent sets, not given before. */
static int env_line(struct agent_guest_conf *conf, char *v, const char **ret_err)
{
    char *eq = strchr(v, '=');
    size_t n = eq ? (size_t)(eq - v) : 0;
    int ok = n > 0 && n <= AGENT_GUEST_ENV_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = env_name_char(v[i], i == 0);
    if (!ok) {
        *ret_err = "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128";
        return -EINVAL;
    }
    if ((n == 17 && memcmp(v, "BERTH_INSTANCE_ID", 17) == 0) ||
        (n == 4 && memcmp(v, "PORT", 4) == 0)) {
        *ret_err = "env: BERTH_INSTANCE_ID and PORT are set by the agent";
        return -EINVAL;
    }
    for (int i = 0; i < conf->envc; i++)
        if (strncmp(conf->env[i], v, n + 1) == 0) {
            *ret_err = "env: NAME given twice";
            return -EINVAL;
        }
    if (conf->envc >= AGENT_GUEST_ENV_MAX) {
        *ret_err = "too many env lines";
        return -EINVAL;
    }
    conf->env[conf->envc++] = v;
    return 0;
}

int agent_guest_parse_conf(struct agent_guest_conf *conf, const char *text, size_t len,
                           const char **ret_err)
{
    if (len > AGENT_GUEST_CONF_MAX) {
        *ret_err = "configuration too long";
        return -EINVAL;
    }
    memcpy(conf->store, text, len);
    conf->store[len] = '\0';
    conf->argc = conf->envc = 0;
    conf->seen = 0;
    char *p = conf->store, *end = conf->store + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line = p;
        if (nl)
            *nl = '\0';
        p = nl ? nl + 1 : end;
        if (memchr(line, '\0', (size_t)(p - line - (nl ? 1 : 0))) != NULL) {
            *ret_err = "NUL byte in configuration";
            return -EINVAL;
        }
        if (*line == '\0' || *line == '#')
            continue;
        int k;
        for (k = 0; k < K_COUNT; k++)
            if (strncmp(line, num_keys[k].name, strlen(num_keys[k].name)) == 0)
                break;
        if (k < K_COUNT) {
            uint64_t v;
            if (conf->seen & (1u << k)) {
                *ret_err = "a key given twice (only arg= and env= repeat)";
                return -EINVAL;
            }
            if (parse_num(line + strlen(num_keys[k].name), num_keys[k].min, num_keys[k].max, &v) <
                0) {
                *ret_err = num_keys[k].err;
                return -EINVAL;
            }
            conf->seen |= 1u << k;
            switch (k) {
            case K_PORT:
                conf->port = (uint16_t)v;
                break;
            case K_RELAY:
                conf->relay_port = (uint16_t)v;
                break;
            case K_PORTS:
                conf->ports_port = (uint16_t)v;
                break;
            case K_HOLD:
                conf->hold_ms = v;
                break;
            case K_UID:
                conf->uid = (uint32_t)v;
                break;
            case K_WORKSPACE:
                conf->workspace_size = v;
                break;
            }
        } else if (strncmp(line, "arg=", 4) == 0) {
            if (conf->argc >= AGENT_GUEST_ARGS_MAX) {
                *ret_err = "too many arg lines";
                return -EINVAL;
            }
            conf->argv[conf->argc++] = line + 4;
        } else if (strncmp(line, "env=", 4) == 0) {
            if (env_line(conf, line + 4, ret_err) < 0)
                return -EINVAL;
        } else {
            *ret_err = "unknown key (expected port=, arg=, env=, relay_port=, ports_port=, hold_ms=, "
                       "uid= or workspace_size=)";
            return -EINVAL;
        }
    }
    conf->argv[conf->argc] = NULL;
    conf->env[conf->envc] = NULL;
    if (conf->argc == 0 || conf->argv[0][0] == '\0') {
        *ret_err = "no app (arg= lines)";
        return -EINVAL;
    }
    if (!conf->port) {
        *ret_err = "no port= line";
        return -EINVAL;
    }
    if (conf->relay_port == conf->port) {
        *ret_err = "relay_port: must differ from port";
        return -EINVAL;
    }
    if (conf->ports_port == conf->port || conf->ports_port == conf->relay_port) {
        *ret_err = "ports_port: must differ from port and relay_port";
        return -EINVAL;
    }
    return 0;
}

int agent_guest_parse_cmdline(struct agent_guest_conf *conf, const char *text, size_t len,
                              const char **ret_err)
{
    static const char key[] = "berth.id=";
    if (len > AGENT_GUEST_CONF_MAX) {
        *ret_err = "command line too long";
        return -EINVAL;
    }
    size_t i = 0;
    while (i < len) {
        while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t'))
            i++;
        size_t start = i;
        while (i < len && text[i] != ' ' && text[i] != '\n' && text[i] != '\t')
            i++;
        size_t wlen = i - start;
        const char *w = text + start;
        if (wlen < sizeof(key) - 1 || memcmp(w, key, sizeof(key) - 1) != 0)
            continue;
        size_t vlen = wlen - (sizeof(key) - 1);
        const char *v = w + sizeof(key) - 1;
        if (vlen == 0 || vlen > AGENT_GUEST_ID_MAX) {
            *ret_err = "berth.id: 1 to 64 characters";
            return -EINVAL;
        }
        if (!agent_id_valid(v, vlen)) {
            *ret_err = "berth.id: only A-Z a-z 0-9 . _ -";
            return -EINVAL;
        }
        memcpy(conf->id, v, vlen);
        conf->id[vlen] = '\0';
    }
    return 0;
}

/* ------------------------------------------------------------------ machine set-up */

/* What was logged before the console was open (fd 2 was /dev/kmsg then, hidden by "quiet"):
 * repeated on the console once it is (a failed module must be visible). Bounded. */
#define EARLY_LOG_MAX 2048
static struct {
    char buf[EARLY_LOG_MAX];
    size_t len;
    int console; /* fd 2 is the console now */
} early;

static void glog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void glog(const char *fmt, ...)
{
    char line[256];
    int n = snprintf(line, sizeof(line), "berth-agent: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    strcat(line, "\n");
    size_t len = strlen(line);
    ssize_t w = write(2, line, len);
    (void)w;
    if (!early.console && early.len + len <= sizeof(early.buf)) {
        memcpy(early.buf + early.len, line, len);
        early.len += len;
    }
}

static void early_log_flush(void)
{
    early.console = 1;
    ssize_t w = early.len ? write(2, early.buf, early.len) : 0;
    (void)w;
    early.len = 0;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000};
    nanosleep(&ts, NULL);
}

/* Reads at most MAX-1 bytes of FD into BUF (NUL-terminated), closes FD; returns the length. */
static ssize_t read_fd(int fd, char *buf, size_t max)
{
    size_t got = 0;
    while (got < max - 1) {
        ssize_t n = read(fd, buf + got, max - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return (ssize_t)got;
}

/* Reads at most MAX-1 bytes of PATH into BUF (NUL-terminated); returns the length or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : read_fd(fd, buf, max);
}

static void mount_one(const char *src, const char *dir, const char *type, unsigned long flags)
{
    mkdir(dir, 0755);
    if (mount(src, dir, type, flags, NULL) < 0 && errno != EBUSY)
        glog("mount %s on %s: %s", type, dir, strerror(errno));
}

/* Fds 0-2 may be closed when the kernel had no console for PID 1 (console=hvc0 before
 * virtio_console loads): fill them now, so no socket or file we open later lands on them. */
static void std_fds(void)
{
    int null = open("/dev/null", O_RDWR);
    int kmsg = open("/dev/kmsg", O_WRONLY);
    dup2(null >= 0 ? null : kmsg, 0);
    dup2(kmsg >= 0 ? kmsg : null, 1);
    dup2(kmsg >= 0 ? kmsg : null, 2);
    if (null > 2)
        close(null);
    if (kmsg > 2)
        close(kmsg);
}

static void load_modules(void)
{
    static char order[AGENT_GUEST_CONF_MAX];
    ssize_t n = read_small("/lib/modules/order", order, sizeof(order));
    if (n < 0) {
        glog("no /lib/modules/order: %s", strerror((int)-n));
        return;
    }
    for (char *save = NULL, *name = strtok_r(order, "\n", &save); name;
         name = strtok_r(NULL, "\n", &save)) {
        char path[256];
        if (strchr(name, '/') ||
            snprintf(path, sizeof(path), "/lib/modules/%s", name) >= (int)sizeof(path)) {
            glog("module %s: bad name", name);
            continue;
        }
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST))
            glog("module %s: %s", name, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
}

static int if_flags_up(int s, const char *ifname)
{
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return -errno;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    return ioctl(s, SIOCSIFFLAGS, &ifr) < 0 ? -errno : 0;
}

static int set_in_addr(int s, const char *ifname, unsigned long req, const char *addr)
{
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
    struct sockaddr_in *sa = (struct sockaddr_in *)&ifr.ifr_addr;
    sa->sin_family = AF_INET;
    inet_pton(AF_INET, addr, &sa->sin_addr);
    return ioctl(s, req, &ifr) < 0 ? -errno : 0;
}

static void network(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        glog("socket: %s", strerror(errno));
        return;
    }
    int r = if_flags_up(s, "lo");
    if (r < 0)
        glog("lo up: %s", strerror(-r));
    /* eth0 exists once virtio_net has bound its device: wait for it, bounded. */
    struct ifreq probe = {0};
    snprintf(probe.ifr_name, sizeof(probe.ifr_name), "eth0");
    unsigned waited = 0;
    while (ioctl(s, SIOCGIFFLAGS, &probe) < 0 && waited < ETH_WAIT_MS) {
        sleep_ms(WAIT_STEP_MS);
        waited += WAIT_STEP_MS;
    }
    if ((r = set_in_addr(s, "eth0", SIOCSIFADDR, GUEST_ADDR)) < 0 ||
        (r = set_in_addr(s, "eth0", SIOCSIFNETMASK, GUEST_MASK)) < 0 ||
        (r = if_flags_up(s, "eth0")) < 0) {
        glog("eth0: %s (the guest has no network)", strerror(-r));
        close(s);
        return;
    }
    struct rtentry rt = {0};
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
    struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
    struct sockaddr_in *mask = (struct sockaddr_in *)&rt.rt_genmask;
    dst->sin_family = gw->sin_family = mask->sin_family = AF_INET;
    inet_pton(AF_INET, GUEST_GW, &gw->sin_addr);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
        glog("default route via %s: %s", GUEST_GW, strerror(errno));
    close(s);
}

/* Whether the machine has a virtio console device (virtio device id 3). */

static int count_virtio(const char *kind);

static int open_console(void)
{
    /* hvc0 becomes usable some time after virtio_console has loaded (its console port is set
     * up after the probe; under TCG on a loaded host, later than 1 s in 3 of 6 boots): until
     * then open() fails. So with a virtio console device, wait for it, bounded; without one,
     * fall through to the 8250 at once. */
    if (count_virtio("0x0003") > 0) { /* a virtio console device */
        for (unsigned waited = 0; waited < CONSOLE_WAIT_MS; waited += WAIT_STEP_MS) {
            int fd = open("/dev/hvc0", O_WRONLY | O_NOCTTY | O_CLOEXEC);
            if (fd >= 0)
                return fd;
            sleep_ms(WAIT_STEP_MS);
        }
        glog("no /dev/hvc0 after %u ms", CONSOLE_WAIT_MS);
    }
    static const char *const cons[] = {"/dev/ttyS0", "/dev/console"};
    for (size_t i = 0; i < sizeof(cons) / sizeof(cons[0]); i++) {
        int fd = open(cons[i], O_WRONLY | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0)
            return fd;
    }
    return -1;
}

/* ------------------------------------------------------------------ disks and the root */

#define LOWER "/mnt/lower" /* the root disk, read-only */
#define RW "/mnt/rw"       /* the tmpfs holding the overlay's upper and work dirs */
#define DISK_WAIT_MS 3000  /* virtio-blk disks appear while virtio_blk probes (normally at once) */
#define REAP_WAIT_MS 2000  /* poweroff: how long killed processes get to go */

static int mount_at(const char *src, const char *dir, const char *type, unsigned long flags,
                    const char *data)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        glog("mkdir %s: %s", dir, strerror(errno));
        return -errno;
    }
    if (mount(src, dir, type, flags, data) < 0) {
        int e = errno;
        glog("mount %s (%s) on %s: %s", src, type, dir, strerror(e));
        return -e;
    }
    return 0;
}

/* Counts the machine's virtio devices of one kind (virtio device id, "0x0002": block). */
static int count_virtio(const char *kind)
{
    char path[128], id[16];
    int n = 0;
    for (int i = 0; i < 64; i++) {
        snprintf(path, sizeof(path), "/sys/bus/virtio/devices/virtio%d/device", i);
        ssize_t r = read_small(path, id, sizeof(id));
        if (r == -ENOENT)
            break;
        if (r > 0 && strncmp(id, kind, strlen(kind)) == 0)
            n++;
    }
    return n;
}

static int count_vd(void)
{
    DIR *d = opendir("/sys/block");
    int n = 0;
    if (!d)
        return 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strncmp(e->d_name, "vd", 2) == 0)
            n++;
    closedir(d);
    return n;
}

/* Waits (bounded) until every virtio block device has its /sys/block/vd* disk: no udev here. */
static void wait_disks(void)
{
    int want = count_virtio("0x0002");
    unsigned waited = 0;
    while (count_vd() < want && waited < DISK_WAIT_MS) {
        sleep_ms(WAIT_STEP_MS);
        waited += WAIT_STEP_MS;
    }
    if (count_vd() < want)
        glog("only %d of %d virtio disks after %u ms", count_vd(), want, DISK_WAIT_MS);
}

/* Finds the virtio disk whose serial is SERIAL (/sys/block/vd*\/serial): its /dev path. */
static int find_disk(const char *serial, char *path, size_t len)
{
    DIR *d = opendir("/sys/block");
    if (!d)
        return -errno;
    int rc = -ENOENT;
    for (struct dirent *e; rc < 0 && (e = readdir(d));) {
        char p[300], v[64];
        if (strncmp(e->d_name, "vd", 2) != 0 || strlen(e->d_name) > 16)
            continue;
        snprintf(p, sizeof(p), "/sys/block/%s/serial", e->d_name);
        ssize_t n = read_small(p, v, sizeof(v));
        while (n > 0 && (v[n - 1] == '\n' || v[n - 1] == ' ' || v[n - 1] == '\0'))
            v[--n] = '\0';
        if (n > 0 && strcmp(v, serial) == 0) {
            snprintf(path, len, "/dev/%s", e->d_name);
            rc = 0;
        }
    }
    closedir(d);
    return rc;
}

/* Reads REL under DIR without following any symlink or leaving DIR (the root disk is the
 * template's: trusted more than a tenant, but read like everything else that is not ours). */
static ssize_t read_beneath(const char *dir, const char *rel, char *buf, size_t max)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    struct open_how how = {.flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
    int fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof(how));
    int e = errno;
    close(dfd);
    if (fd < 0)
        return -e;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    return read_fd(fd, buf, max);
}

/* A directory of the sysroot: made (or kept), then given MODE and OWNER. */
static int sysroot_dir(const char *rel, mode_t mode, uid_t owner)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", AGENT_GUEST_SYSROOT, rel);
    struct stat st;
    if (mkdir(p, mode) < 0 && errno != EEXIST) {
        glog("%s: %s", p, strerror(errno));
        return -errno;
    }
    /* The root disk may have put a link there (dev -> /dev would mount over the agent's own
     * devices): only a real directory is used. */
    if (lstat(p, &st) < 0 || !S_ISDIR(st.st_mode)) {
        glog("%s: not a directory on the root disk", p);
        return -ENOTDIR;
    }
    if (chmod(p, mode) < 0 || chown(p, owner, owner) < 0) {
        glog("%s: %s", p, strerror(errno));
        return -errno;
    }
    return 0;
}

/* The device nodes the app gets in its /dev (a tmpfs: not the agent's devtmpfs, which holds
 * the disks and the control port). */
static const struct {
    const char *name;
    unsigned major, minor;
} app_devs[] = {
    {"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
    {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
};

/* The overlay of the root disk (LOWER) and a tmpfs of workspace_size at /sysroot, and in it:
 * /proc, /dev (a small tmpfs with app_devs and /dev/shm), /tmp, /workspace (the app's) and
 * /data (a mount point for BIND data=1). */
static int build_sysroot(const struct agent_guest_conf *conf)
{
    char opts[128];
    snprintf(opts, sizeof(opts), "size=%llu,mode=0755", (unsigned long long)conf->workspace_size);
    int r = mount_at("tmpfs", RW, "tmpfs", MS_NOSUID | MS_NODEV, opts);
    if (r < 0)
        return r;
    if ((mkdir(RW "/upper", 0755) < 0 && errno != EEXIST) ||
        (mkdir(RW "/work", 0755) < 0 && errno != EEXIST) ||
        (mkdir(RW "/shm", 01777) < 0 && errno != EEXIST) || chmod(RW "/shm", 01777) < 0) {
        glog("%s: %s", RW, strerror(errno));
        return -errno;
    }
    r = mount_at("overlay", AGENT_GUEST_SYSROOT, "overlay", MS_NODEV,
                 "lowerdir=" LOWER ",upperdir=" RW "/upper,workdir=" RW "/work");
    if (r < 0)
        return r;
    if ((r = sysroot_dir("proc", 0555, 0)) < 0 || (r = sysroot_dir("dev", 0755, 0)) < 0 ||
        (r = sysroot_dir("tmp", 01777, 0)) < 0 ||
        (r = sysroot_dir("workspace", 0755, (uid_t)conf->uid)) < 0 ||
        (r = sysroot_dir("data", 0755, 0)) < 0)
        return r;
    if ((r = mount_at("proc", AGENT_GUEST_SYSROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      NULL)) < 0 ||
        (r = mount_at("tmpfs", AGENT_GUEST_SYSROOT "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC,
                      "size=64k,mode=0755")) < 0)
        return r;
    for (size_t i = 0; i < sizeof(app_devs) / sizeof(app_devs[0]); i++) {
        char p[64];
        snprintf(p, sizeof(p), AGENT_GUEST_SYSROOT "/dev/%s", app_devs[i].name);
        if (mknod(p, S_IFCHR | 0666, makedev(app_devs[i].major, app_devs[i].minor)) < 0 ||
            chmod(p, 0666) < 0) {
            glog("mknod %s: %s", p, strerror(errno));
            return -errno;
        }
    }
    /* /dev/shm lives on the workspace tmpfs: one bound for everything the app writes. */
    if ((r = mount_at(RW "/shm", AGENT_GUEST_SYSROOT "/dev/shm", NULL, MS_BIND, NULL)) < 0)
        return r;
    return 0;
}

/* ------------------------------------------------------------------ the app */

static int env_named(const struct agent_guest_conf *conf, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < conf->envc; i++)
        if (strncmp(conf->env[i], name, n) == 0 && conf->env[i][n] == '=')
            return 1;
    return 0;
}

int agent_guest_enter_app(const struct agent_guest_conf *conf, const char **ret_what)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", conf->port);
    const char *home = conf->rooted ? "/workspace" : "/tmp";
    const char *path = conf->rooted ? "/usr/local/bin:/usr/bin:/bin" : "/bin";
    const char *defaults[][2] = {
        {"HOME", home}, {"PATH", path}, {"LANG", "C.UTF-8"}, {"TMPDIR", "/tmp"}};
    if (clearenv() != 0) {
        *ret_what = "clearenv";
        return -ENOMEM;
    }
    for (int i = 0; i < conf->envc; i++)
        if (putenv(conf->env[i]) != 0) {
            *ret_what = "putenv";
            return -errno;
        }
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++)
        if (!env_named(conf, defaults[i][0]) && setenv(defaults[i][0], defaults[i][1], 1) < 0) {
            *ret_what = "setenv";
            return -errno;
        }
    if (setenv("BERTH_INSTANCE_ID", conf->id, 1) < 0 || setenv("PORT", port, 1) < 0) {
        *ret_what = "setenv";
        return -errno;
    }
    if (conf->rooted && chroot(AGENT_GUEST_SYSROOT) < 0) {
        *ret_what = "chroot " AGENT_GUEST_SYSROOT;
        return -errno;
    }
    if (chdir(home) < 0) {
        *ret_what = conf->rooted ? "chdir /workspace" : "chdir /tmp";
        return -errno;
    }
    if (setgroups(0, NULL) < 0 || setgid((gid_t)conf->uid) < 0 || setuid((uid_t)conf->uid) < 0) {
        *ret_what = "dropping to uid";
        return -errno;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        *ret_what = "no_new_privs";
        return -errno;
    }
    return 0;
}

/* ------------------------------------------------------------------ BIND in a clone */

static int seed_rng(const unsigned char *seed)
{
    struct {
        int entropy_count;
        int buf_size;
        unsigned char buf[AGENT_SEED_BYTES];
    } info = {.entropy_count = AGENT_SEED_BYTES * 8, .buf_size = AGENT_SEED_BYTES};
    memcpy(info.buf, seed, AGENT_SEED_BYTES);
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = 0;
    if (ioctl(fd, RNDADDENTROPY, &info) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0)
        r = -errno;
    close(fd);
    explicit_bzero(&info, sizeof(info));
    return r;
}

static int mount_data(struct agent_guest_conf *conf, char *err, size_t errlen)
{
    const char *dir = conf->rooted ? AGENT_GUEST_SYSROOT "/data" : "/data";
    char dev[32];
    int r = find_disk("berth-data", dev, sizeof(dev));
    if (r < 0) {
        snprintf(err, errlen, "data: no berth-data disk");
        return r;
    }
    /* The host swapped the disk's medium (a placeholder while the template was snapshotted):
     * blocks read from the placeholder may still be cached. */
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, BLKFLSBUF, 0) < 0) {
        r = -errno;
        snprintf(err, errlen, "data: %s: %s", dev, strerror(-r));
        if (fd >= 0)
            close(fd);
        return r;
    }
    close(fd);
    if ((mkdir(dir, 0755) < 0 && errno != EEXIST) ||
        mount(dev, dir, "ext4", MS_NOSUID | MS_NODEV, NULL) < 0) {
        r = -errno;
        snprintf(err, errlen, "data: mount %s: %s", dev, strerror(-r));
        return r;
    }
    /* The volume's root is the app's (a fresh image's root is owned by root). */
    if (chown(dir, (uid_t)conf->uid, (gid_t)conf->uid) < 0) {
        r = -errno;
        umount2(dir, MNT_DETACH);
        snprintf(err, errlen, "data: chown: %s", strerror(-r));
        return r;
    }
    conf->data_mounted = 1;
    glog("data disk %s mounted on %s", dev, dir);
    return 0;
}

int agent_guest_bind(struct agent_guest_conf *conf, const struct agent_cmd *cmd, char *err,
                     size_t errlen)
{
    int r;
    if (cmd->has_clock) {
        struct timespec ts = {.tv_sec = (time_t)cmd->clock_sec, .tv_nsec = cmd->clock_nsec};
        if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
            r = -errno;
            snprintf(err, errlen, "clock: %s", strerror(-r));
            return r;
        }
    }
    if (cmd->has_seed && (r = seed_rng(cmd->seed)) < 0) {
        snprintf(err, errlen, "seed: %s", strerror(-r));
        return r;
    }
    if (cmd->id[0]) {
        if (sethostname(cmd->id, strlen(cmd->id)) < 0) {
            r = -errno;
            snprintf(err, errlen, "id: %s", strerror(-r));
            return r;
        }
        snprintf(conf->id, sizeof(conf->id), "%s", cmd->id);
    }
    if (cmd->data && !conf->data_mounted && (r = mount_data(conf, err, errlen)) < 0)
        return r;
    return 0;
}

int agent_guest_ctl_port(char *path, size_t len)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return -ENOENT;
    int rc = -ENOENT;
    for (struct dirent *e; rc < 0 && (e = readdir(d));) {
        char p[300], name[64];
        if (strncmp(e->d_name, "vport", 5) != 0 || strlen(e->d_name) > 32)
            continue;
        snprintf(p, sizeof(p), "/sys/class/virtio-ports/%s/name", e->d_name);
        ssize_t n = read_small(p, name, sizeof(name));
        while (n > 0 && name[n - 1] == '\n')
            name[--n] = '\0';
        if (n > 0 && strcmp(name, AGENT_GUEST_CTL_PORT) == 0) {
            snprintf(path, len, "/dev/%s", e->d_name);
            rc = 0;
        }
    }
    closedir(d);
    return rc;
}

int agent_guest_boot(struct agent_guest_conf *conf, int *ret_console_fd)
{
    mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
    std_fds();
    mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    mount_one("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    load_modules();
    int con = open_console();
    if (con >= 0) {
        dup2(con, 1);
        dup2(con, 2);
        early_log_flush();
    }
    network();

    agent_guest_conf_init(conf);
    static char buf[AGENT_GUEST_CONF_MAX + 2];
    const char *err = NULL;
    char root_dev[32];
    ssize_t n;
    const char *conf_path = AGENT_GUEST_CONF_PATH;
    wait_disks();
    int rooted = find_disk("berth-root", root_dev, sizeof(root_dev)) == 0;
    if (rooted) {
        /* guest.conf is read from the lower layer: the tmpfs under the overlay needs its
         * workspace_size first (the upper layer is empty at boot, so this is what the app
         * will see at /etc/berth/guest.conf). */
        conf_path = LOWER AGENT_GUEST_CONF_PATH;
        if (mount_at(root_dev, LOWER, "ext4", MS_RDONLY | MS_NODEV, NULL) < 0)
            return -EIO;
        n = read_beneath(LOWER, AGENT_GUEST_CONF_PATH + 1, buf, sizeof(buf));
    } else {
        n = read_small(AGENT_GUEST_CONF_PATH, buf, sizeof(buf));
    }
    if (n < 0) {
        glog("%s: %s", conf_path, strerror((int)-n));
        return (int)n;
    }
    if ((size_t)n > AGENT_GUEST_CONF_MAX) {
        glog("%s: longer than %d bytes", conf_path, AGENT_GUEST_CONF_MAX);
        return -EINVAL;
    }
    if (agent_guest_parse_conf(conf, buf, (size_t)n, &err) < 0) {
        glog("%s: %s", conf_path, err);
        return -EINVAL;
    }
    if (rooted) {
        int r = build_sysroot(conf);
        if (r < 0)
            return r;
        conf->rooted = 1;
    }
    n = read_small("/proc/cmdline", buf, sizeof(buf));
    if (n >= 0 && agent_guest_parse_cmdline(conf, buf, (size_t)n, &err) < 0) {
        glog("kernel command line: %s", err);
        return -EINVAL;
    }
    if (mkdir(AGENT_GUEST_SOCK_DIR, 0700) < 0 && errno != EEXIST) {
        glog("mkdir %s: %s", AGENT_GUEST_SOCK_DIR, strerror(errno));
        return -errno;
    }
    int ready = con >= 0 ? fcntl(con, F_DUPFD_CLOEXEC, 3) : -1;
    if (con > 2)
        close(con);
    *ret_console_fd = ready;
    return 0;
}

void agent_guest_poweroff(void)
{
    /* Nothing may hold /data open when it is unmounted: the app's leftovers (reparented to
     * us) are killed and reaped first, bounded. */
    kill(-1, SIGKILL);
    for (unsigned waited = 0; waited < REAP_WAIT_MS; waited += WAIT_STEP_MS) {
        pid_t p = waitpid(-1, NULL, WNOHANG);
        if (p < 0 && errno == ECHILD)
            break;
        if (p <= 0)
            sleep_ms(WAIT_STEP_MS);
    }
    sync();
    if (umount2(AGENT_GUEST_SYSROOT "/data", 0) < 0 && errno != EINVAL && errno != ENOENT)
        glog("umount %s/data: %s", AGENT_GUEST_SYSROOT, strerror(errno));
    if (umount2("/data", 0) < 0 && errno != EINVAL && errno != ENOENT)
        glog("umount /data: %s", strerror(errno));
    sync();
    reboot(RB_POWER_OFF);
    /* Not allowed to power off: PID 1 exiting panics the kernel, which (panic=-1 with QEMU's
     * -no-reboot) also ends the VM. */
    _exit(1);
}
