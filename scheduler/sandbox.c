#include "scheduler/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Host directories offered read-only inside every sandbox (the ones that exist). */
static const char *const system_dirs[] = {"/usr",   "/bin",   "/sbin",   "/lib",
                                          "/lib32", "/lib64", "/libx32", "/etc"};
static const char *const dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};

#define ESC_FD_BASE 100 /* fds are moved up here before being put into place */

struct child {
    const struct sch_sandbox_args *a;
    int ready_fd; /* where die() reports */
    char root[PATH_MAX];
};

/* Reports the failed step to the parent and exits. Only async-signal-safe calls from here on
 * would be required with threads; the scheduler is single-threaded, so dprintf is fine. */
static void die(const struct child *c, const char *step, const char *what)
{
    int e = errno;
    dprintf(c->ready_fd, "ERR %s %s: %s\n", step, what ? what : "", strerror(e));
    _exit(127);
}

static void path_in_root(const struct child *c, char *buf, size_t len, const char *rel)
{
    size_t a = strlen(c->root), b = strlen(rel);
    if (a + b + 1 > len) {
        errno = ENAMETOOLONG;
        die(c, "path", rel);
    }
    memcpy(buf, c->root, a);
    memcpy(buf + a, rel, b + 1);
}

static void mkdir_in_root(const struct child *c, const char *rel, mode_t mode)
{
    char p[PATH_MAX];
    path_in_root(c, p, sizeof(p), rel);
    if (mkdir(p, mode) < 0 && errno != EEXIST)
        die(c, "mkdir", p);
    if (chmod(p, mode) < 0)
        die(c, "chmod", p);
}

/* mkdir -p of <rel> inside the new root. */
static void mkdirs_in_root(const struct child *c, const char *rel)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", rel);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir_in_root(c, tmp, 0755);
        *p = '/';
    }
    mkdir_in_root(c, tmp, 0755);
}

/* Binds host <src> at <rel> inside the new root, read-only unless <rw>. Symlinks (merged-/usr
 * systems have /bin -> usr/bin) are recreated as symlinks. Missing sources are skipped. */
static void bind_in_root(const struct child *c, const char *src, const char *rel, int rw)
{
    struct stat st;
    char dst[PATH_MAX];
    if (lstat(src, &st) < 0) {
        if (errno == ENOENT)
            return;
        die(c, "stat", src);
    }
    path_in_root(c, dst, sizeof(dst), rel);
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlink(src, target, sizeof(target) - 1);
        if (n < 0)
            die(c, "readlink", src);
        target[n] = '\0';
        if (symlink(target, dst) < 0 && errno != EEXIST)
            die(c, "symlink", dst);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        mkdirs_in_root(c, rel);
    } else {
        int fd = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0)
            die(c, "create", dst);
        close(fd);
    }
    if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
        die(c, "bind", src);
    if (!rw &&
        mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        die(c, "remount read-only", dst);
}

static void loopback_up(const struct child *c)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die(c, "socket", "loopback");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        die(c, "SIOCGIFFLAGS", "lo");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        die(c, "SIOCSIFFLAGS", "lo");
    close(s);
}

static void build_root(struct child *c)
{
    const struct sch_sandbox_args *a = c->a;
    char p[PATH_MAX], opts[64];

    /* Nothing we mount may leak back to the host, but the host's later mount on {dir}/data
     * must still reach us: slave, not private. */
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        die(c, "make-rslave", "/");
    snprintf(c->root, sizeof(c->root), "%s/root", a->dir);
    snprintf(opts, sizeof(opts), "size=%llu,mode=0755", (unsigned long long)a->workspace_size);
    if (mount("tmpfs", c->root, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
        die(c, "mount tmpfs", c->root);

    for (size_t i = 0; i < sizeof(system_dirs) / sizeof(system_dirs[0]); i++)
        bind_in_root(c, system_dirs[i], system_dirs[i], 0);
    for (char *const *b = a->ro_binds; b && *b; b++)
        bind_in_root(c, *b, *b, 0);

    mkdir_in_root(c, "/proc", 0555);
    path_in_root(c, p, sizeof(p), "/proc");
    if (mount("proc", p, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL) < 0)
        die(c, "mount", p);

    mkdir_in_root(c, "/dev", 0755);
    for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]); i++) {
        char src[64], rel[64];
        snprintf(src, sizeof(src), "/dev/%s", dev_nodes[i]);
        snprintf(rel, sizeof(rel), "/dev/%s", dev_nodes[i]);
        bind_in_root(c, src, rel, 1);
    }
    static const char *const links[][2] = {{"/proc/self/fd", "/dev/fd"},
                                           {"/proc/self/fd/0", "/dev/stdin"},
                                           {"/proc/self/fd/1", "/dev/stdout"},
                                           {"/proc/self/fd/2", "/dev/stderr"}};
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        path_in_root(c, p, sizeof(p), links[i][1]);
        if (symlink(links[i][0], p) < 0)
            die(c, "symlink", p);
    }
    mkdir_in_root(c, "/dev/shm", 01777);
    mkdir_in_root(c, "/tmp", 01777);
    mkdir_in_root(c, "/workspace", 0755);
    mkdir_in_root(c, "/data", 0755);
    if (a->with_data) {
        char src[PATH_MAX];
        snprintf(src, sizeof(src), "%s/data", a->dir);
        path_in_root(c, p, sizeof(p), "/data");
        if (mount(src, p, NULL, MS_BIND, NULL) < 0)
            die(c, "bind", src);
    }
    mkdir_in_root(c, "/run", 0755);
    mkdir_in_root(c, "/run/berth", 0755);
    {
        char src[PATH_MAX];
        snprintf(src, sizeof(src), "%s/sock", a->dir);
        path_in_root(c, p, sizeof(p), "/run/berth");
        if (mount(src, p, NULL, MS_BIND, NULL) < 0)
            die(c, "bind", src);
    }
}

static void enter_root(const struct child *c)
{
    if (chdir(c->root) < 0)
        die(c, "chdir", c->root);
    /* pivot_root(".", "."): the old root ends up on top of the new one; detach it. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        die(c, "pivot_root", c->root);
    if (umount2(".", MNT_DETACH) < 0)
        die(c, "umount", "old root");
    if (chdir("/workspace") < 0)
        die(c, "chdir", "/workspace");
}

/* Puts the inherited fds into place: 0 /dev/null, 1 and 2 the console log, 3 the readiness
 * pipe, 4 the agent binary (close-on-exec); closes everything else. */
static void arrange_fds(struct child *c, int *agent_fd)
{
    const struct sch_sandbox_args *a = c->a;
    int ready = fcntl(a->ready_fd, F_DUPFD, ESC_FD_BASE);
    int log = fcntl(a->log_fd, F_DUPFD, ESC_FD_BASE);
    int agent = fcntl(a->agent_fd, F_DUPFD, ESC_FD_BASE);
    if (ready < 0 || log < 0 || agent < 0)
        die(c, "dup", "fds");
    c->ready_fd = ready;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        die(c, "open", "/dev/null");
    if (dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0 || dup2(agent, 4) < 0 ||
        dup2(ready, 3) < 0)
        die(c, "dup2", "fds");
    c->ready_fd = 3;
    if (fcntl(4, F_SETFD, FD_CLOEXEC) < 0)
        die(c, "fcntl", "agent fd");
    if (syscall(SYS_close_range, 5, ~0U, 0) < 0)
        die(c, "close_range", "fds");
    *agent_fd = 4;
}

int sch_sandbox_child(void *arg)
{
    struct child c = {.a = arg, .ready_fd = ((struct sch_sandbox_args *)arg)->ready_fd};
    const struct sch_sandbox_args *a = c.a;
    char go;
    /* Wait until the parent has put us into our cgroups. */
    ssize_t n;
    do
        n = read(a->sync_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(1);
    close(a->sync_fd);
    if (setsid() < 0)
        die(&c, "setsid", "");
    build_root(&c);
    if (sethostname(a->hostname, strlen(a->hostname)) < 0)
        die(&c, "sethostname", a->hostname);
    loopback_up(&c);
    enter_root(&c);
    int agent_fd;
    arrange_fds(&c, &agent_fd);
    syscall(SYS_execveat, agent_fd, "", a->argv, a->envp, AT_EMPTY_PATH);
    die(&c, "exec", a->argv[0]);
    return 127;
}
