/* berth-agent's guest mode: machine set-up as PID 1 of a microVM (guest.h). */
#include "scheduler/agent/guest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <net/if.h>
#include <net/route.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
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
    conf->argc = 0;
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
        if (strncmp(line, "port=", 5) == 0) {
            char *e;
            errno = 0;
            unsigned long v = strtoul(line + 5, &e, 10);
            if (line[5] < '0' || line[5] > '9' || errno || *e || v < 1 || v > 65535) {
                *ret_err = "port: expected a number in 1..65535";
                return -EINVAL;
            }
            conf->port = (uint16_t)v;
        } else if (strncmp(line, "arg=", 4) == 0) {
            if (conf->argc >= AGENT_GUEST_ARGS_MAX) {
                *ret_err = "too many arg lines";
                return -EINVAL;
            }
            conf->argv[conf->argc++] = line + 4;
        } else {
            *ret_err = "unknown key (expected port= or arg=)";
            return -EINVAL;
        }
    }
    conf->argv[conf->argc] = NULL;
    if (conf->argc == 0 || conf->argv[0][0] == '\0') {
        *ret_err = "no app (arg= lines)";
        return -EINVAL;
    }
    if (!conf->port) {
        *ret_err = "no port= line";
        return -EINVAL;
    }
    return 0;
}

static int id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
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
        for (size_t k = 0; k < vlen; k++)
            if (!id_char(v[k])) {
                *ret_err = "berth.id: only A-Z a-z 0-9 . _ -";
                return -EINVAL;
            }
        memcpy(conf->id, v, vlen);
        conf->id[vlen] = '\0';
    }
    return 0;
}

/* ------------------------------------------------------------------ machine set-up */

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
    ssize_t w = write(2, line, strlen(line));
    (void)w;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000};
    nanosleep(&ts, NULL);
}

/* Reads at most MAX-1 bytes of PATH into BUF (NUL-terminated); returns the length or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
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
static int has_virtio_console(void)
{
    char path[128], id[16];
    for (int i = 0; i < 64; i++) {
        snprintf(path, sizeof(path), "/sys/bus/virtio/devices/virtio%d/device", i);
        ssize_t n = read_small(path, id, sizeof(id));
        if (n == -ENOENT)
            break;
        if (n > 0 && strncmp(id, "0x0003", 6) == 0)
            return 1;
    }
    return 0;
}

static int open_console(void)
{
    /* hvc0 becomes usable some time after virtio_console has loaded (its console port is set
     * up after the probe; under TCG on a loaded host, later than 1 s in 3 of 6 boots): until
     * then open() fails. So with a virtio console device, wait for it, bounded; without one,
     * fall through to the 8250 at once. */
    if (has_virtio_console()) {
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
    }
    network();

    agent_guest_conf_init(conf);
    static char buf[AGENT_GUEST_CONF_MAX + 2];
    const char *err = NULL;
    ssize_t n = read_small(AGENT_GUEST_CONF_PATH, buf, sizeof(buf));
    if (n < 0) {
        glog("%s: %s", AGENT_GUEST_CONF_PATH, strerror((int)-n));
        return (int)n;
    }
    if (agent_guest_parse_conf(conf, buf, (size_t)n, &err) < 0) {
        glog("%s: %s", AGENT_GUEST_CONF_PATH, err);
        return -EINVAL;
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
    setenv("PATH", "/bin", 1);
    setenv("BERTH_INSTANCE_ID", conf->id, 1);
    if (chdir("/tmp") < 0)
        glog("chdir /tmp: %s", strerror(errno));
    int ready = con >= 0 ? fcntl(con, F_DUPFD_CLOEXEC, 3) : -1;
    if (con > 2)
        close(con);
    *ret_console_fd = ready;
    return 0;
}

void agent_guest_poweroff(void)
{
    sync();
    reboot(RB_POWER_OFF);
    /* Not allowed to power off: PID 1 exiting panics the kernel, which (panic=-1 with QEMU's
     * -no-reboot) also ends the VM. */
    _exit(1);
}
