#include "scheduler/sandbox.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/if.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/config.h"
#include "scheduler/seccomp.h"

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_NOEXEC 0x00000008
struct mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

#define ROOT_TMPFS_OPTS "size=8m,nr_inodes=4096,mode=0755"
#define LDSO_CACHE_MAX (8 << 20)
#define ESC_FD_BASE 100 /* fds are moved up here before being put into place */

/* Host trees shown read-only inside every sandbox (those that exist). No /etc: it is generated. */
static const char *const system_dirs[] = {"/usr",   "/bin",   "/sbin",  "/lib",
                                          "/lib32", "/lib64", "/libx32"};
static const char *const dev_nodes[] = {"/dev/null",   "/dev/zero",    "/dev/full",
                                        "/dev/random", "/dev/urandom", "/dev/tty"};
/* runc's lists: read-only and masked parts of /proc. */
static const char *const proc_readonly[] = {"/proc/sys", "/proc/sysrq-trigger", "/proc/irq",
                                            "/proc/bus", "/proc/fs"};
static const char *const proc_masked_files[] = {
    "/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug", "/proc/latency_stats", "/proc/kallsyms", "/proc/kmsg", "/proc/config.gz",
    "/proc/kpagecount", "/proc/kpageflags", "/proc/kpagecgroup", "/proc/vmallocinfo",
    "/proc/pagetypeinfo", "/proc/slabinfo",
    /* other tenants' loop devices and their I/O */
    "/proc/partitions", "/proc/diskstats"};
static const char *const proc_masked_dirs[] = {"/proc/acpi", "/proc/scsi", "/proc/asound",
                                               "/proc/driver"};

enum bind_kind { BIND_RO, BIND_DEV };

/* One host tree taken with open_tree() before the identity switch, placed after it. */
struct hostbind {
    const char *dst;
    enum bind_kind kind;
    int fd; /* detached copy of the tree; -1 for a symlink */
    int is_dir;
    char target[PATH_MAX]; /* symlink target (merged-/usr systems: /bin -> usr/bin) */
};

/* What the parent (host root, before clone) takes of the host for one sandbox. */
struct sch_sandbox_host {
    struct hostbind *binds;
    size_t n_binds;
    int data_fd; /* a detached slave copy of {dir}/data, -1 without data */
    char *ldso;
    ssize_t ldso_len;
};

struct child {
    const struct sch_sandbox_args *a;
    const struct sch_sandbox_host *h;
    int ready_fd;  /* where die() reports */
    char root[16]; /* where the new root is built in the child's own mount namespace */
};

/* Reports the failed step to the parent and exits. The child is a copy of a single-threaded
 * process with its own memory: stdio and malloc are safe here. */
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
    if (mkdir(p, mode) < 0) {
        if (errno != EEXIST)
            die(c, "mkdir", p);
        return; /* made before (a parent of another path, or /tmp): keep its mode */
    }
    if (chmod(p, mode) < 0) /* exact, whatever the umask */
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

static void write_in_root(const struct child *c, const char *rel, const char *data, size_t len,
                          mode_t mode)
{
    char p[PATH_MAX];
    path_in_root(c, p, sizeof(p), rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        die(c, "create", p);
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die(c, "write", p);
        data += n;
        len -= (size_t)n;
    }
    close(fd);
}

static void printf_in_root(const struct child *c, const char *rel, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void printf_in_root(const struct child *c, const char *rel, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        errno = E2BIG;
        die(c, "format", rel);
    }
    write_in_root(c, rel, buf, (size_t)n, 0644);
}

/* ------------------------------------------------------------------ host trees */

/* Takes <src> for <dst>: a detached, private, read-only (or device) copy of the tree, or the
 * symlink's target. A missing source is skipped. Returns 0 or a negative errno. */
static int take_bind(struct sch_sandbox_host *h, const char *src, const char *dst,
                     enum bind_kind kind, char *err, size_t errlen)
{
    struct stat st;
    if (strlen(src) >= PATH_MAX - 1) {
        snprintf(err, errlen, "path too long: %s", src);
        return -ENAMETOOLONG;
    }
    if (lstat(src, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "stat %s: %s", src, strerror(errno));
        return -errno;
    }
    struct hostbind *b = &h->binds[h->n_binds];
    b->dst = dst;
    b->kind = kind;
    b->fd = -1;
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(src, b->target, sizeof(b->target) - 1);
        if (n < 0) {
            snprintf(err, errlen, "readlink %s: %s", src, strerror(errno));
            return -errno;
        }
        b->target[n] = '\0';
        h->n_binds++;
        return 0;
    }
    b->is_dir = S_ISDIR(st.st_mode);
    b->fd = (int)syscall(SYS_open_tree, AT_FDCWD, src,
                         OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (b->fd < 0) {
        snprintf(err, errlen, "open_tree %s: %s", src, strerror(errno));
        return -errno;
    }
    h->n_binds++;
    /* Private: a mount the host makes later under <src> must not appear inside (it would come
     * without these flags). */
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_NOSUID, .propagation = MS_PRIVATE};
    attr.attr_set |= kind == BIND_RO ? MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV : MOUNT_ATTR_NOEXEC;
    if (syscall(SYS_mount_setattr, b->fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof(attr)) <
        0) {
        snprintf(err, errlen, "mount_setattr %s: %s", src, strerror(errno));
        return -errno;
    }
    return 0;
}

void sch_sandbox_host_destroy(struct sch_sandbox_host *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_binds; i++)
        if (h->binds[i].fd >= 0)
            close(h->binds[i].fd);
    free(h->binds);
    if (h->data_fd >= 0)
        close(h->data_fd);
    free(h->ldso);
    free(h);
}

struct sch_sandbox_host *sch_sandbox_host_create(const struct sch_sandbox_args *a, char *err,
                                                 size_t errlen)
{
    struct sch_sandbox_host *h = calloc(1, sizeof(*h));
    size_t max = sizeof(system_dirs) / sizeof(system_dirs[0]) +
                 sizeof(dev_nodes) / sizeof(dev_nodes[0]) + 1 + cm_strv_len(a->ro_binds);
    if (!h || !(h->binds = calloc(max, sizeof(*h->binds)))) {
        free(h);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->data_fd = -1;
    char src[PATH_MAX + 64];
    /* The system trees (and the CA certificates and loader cache) come from the host, or from
     * the template's rootfs (e.g. a debootstrap tree) at the same places. */
    const char *from = a->rootfs ? a->rootfs : "";
    int rc = 0;
    for (size_t i = 0; i < sizeof(system_dirs) / sizeof(system_dirs[0]) && rc == 0; i++) {
        snprintf(src, sizeof(src), "%s%s", from, system_dirs[i]);
        rc = take_bind(h, src, system_dirs[i], BIND_RO, err, errlen);
    }
    snprintf(src, sizeof(src), "%s/etc/ssl/certs", from);
    if (rc == 0)
        rc = take_bind(h, src, "/etc/ssl/certs", BIND_RO, err, errlen);
    for (char *const *b = a->ro_binds; b && *b && rc == 0; b++)
        rc = take_bind(h, *b, *b, BIND_RO, err, errlen);
    for (size_t i = 0; i < sizeof(dev_nodes) / sizeof(dev_nodes[0]) && rc == 0; i++)
        rc = take_bind(h, dev_nodes[i], dev_nodes[i], BIND_DEV, err, errlen);
    /* {dir}/data as a detached copy, a slave of the host's shared mount point: the session's
     * file system that the scheduler mounts there later appears in it. The child moves it to
     * /data without looking up {dir}, which is closed to its uid. */
    snprintf(src, sizeof(src), "%s/data", a->dir);
    if (rc == 0 && a->with_data) {
        h->data_fd =
            (int)syscall(SYS_open_tree, AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        struct mount_attr attr = {.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                                  .propagation = MS_SLAVE};
        if (h->data_fd < 0 ||
            syscall(SYS_mount_setattr, h->data_fd, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
            rc = -errno;
            snprintf(err, errlen, "open_tree %s: %s", src, strerror(errno));
        }
    }
    if (rc < 0) {
        sch_sandbox_host_destroy(h);
        return NULL;
    }
    /* The loader's cache is copied, not bound: /etc holds nothing of the host's. */
    snprintf(src, sizeof(src), "%s/etc/ld.so.cache", from);
    int fd = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= LDSO_CACHE_MAX &&
            (h->ldso = malloc((size_t)st.st_size + 1)))
            h->ldso_len = read(fd, h->ldso, (size_t)st.st_size);
        close(fd);
    }
    return h;
}

static void place_binds(struct child *c)
{
    for (size_t i = 0; i < c->h->n_binds; i++) {
        const struct hostbind *b = &c->h->binds[i];
        char dst[PATH_MAX];
        path_in_root(c, dst, sizeof(dst), b->dst);
        if (b->fd < 0) {
            if (symlink(b->target, dst) < 0 && errno != EEXIST)
                die(c, "symlink", dst);
            continue;
        }
        if (b->is_dir) {
            mkdirs_in_root(c, b->dst);
        } else {
            char parent[PATH_MAX];
            snprintf(parent, sizeof(parent), "%s", b->dst);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) {
                *slash = '\0';
                mkdirs_in_root(c, parent);
            }
            int fd = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
            if (fd < 0 && errno != EEXIST)
                die(c, "create", dst);
            if (fd >= 0)
                close(fd);
        }
        if (syscall(SYS_move_mount, b->fd, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            die(c, "move_mount", b->dst);
        close(b->fd);
    }
}

/* ------------------------------------------------------------------ the root */

static void make_etc(struct child *c)
{
    const struct sch_sandbox_args *a = c->a;
    mkdir_in_root(c, "/etc", 0755);
    printf_in_root(c, "/etc/passwd",
                   "root:x:0:0:root:/root:/bin/sh\n"
                   "sandbox:x:%d:%d:sandbox:/workspace:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                   SCH_SANDBOX_USER, SCH_SANDBOX_USER);
    printf_in_root(c, "/etc/group", "root:x:0:\nsandbox:x:%d:\nnogroup:x:65534:\n",
                   SCH_SANDBOX_USER);
    printf_in_root(c, "/etc/hosts",
                   "127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                   a->hostname);
    printf_in_root(c, "/etc/hostname", "%s\n", a->hostname);
    printf_in_root(c, "/etc/resolv.conf", "# no network but loopback in this sandbox\n");
    printf_in_root(c, "/etc/nsswitch.conf",
                   "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
                   "networks: files\nprotocols: files\nservices: files\n");
    if (c->h->ldso && c->h->ldso_len > 0)
        write_in_root(c, "/etc/ld.so.cache", c->h->ldso, (size_t)c->h->ldso_len, 0644);
}

/* Per network namespace, while /proc/sys is still writable for our root: socket buffers bounded,
 * so that a sandbox cannot park host memory in TCP queues (on cgroup v1 they are charged to the
 * kernel's TCP memory, not to its memory limit). */
static void limit_sockets(const struct child *c, const char *proc)
{
    /* tcp_[rw]mem are per network namespace and ours to set; the SO_*BUF ceiling
     * (core/[rw]mem_max) is the host's (4 MiB by default) and not writable from here. */
    static const char *const knobs[][2] = {{"/sys/net/ipv4/tcp_rmem", SCH_TCP_RMEM},
                                           {"/sys/net/ipv4/tcp_wmem", SCH_TCP_WMEM}};
    char p[PATH_MAX + 64];
    for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", proc, knobs[i][0]);
        int fd = open(p, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, knobs[i][1], strlen(knobs[i][1])) < 0)
            die(c, "sysctl", knobs[i][0]);
        close(fd);
    }
}

static void make_proc(struct child *c)
{
    char p[PATH_MAX];
    mkdir_in_root(c, "/proc", 0555);
    path_in_root(c, p, sizeof(p), "/proc");
    if (mount("proc", p, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL) < 0)
        die(c, "mount", p);
    limit_sockets(c, p);
    for (size_t i = 0; i < sizeof(proc_readonly) / sizeof(proc_readonly[0]); i++) {
        path_in_root(c, p, sizeof(p), proc_readonly[i]);
        if (access(p, F_OK) < 0)
            continue;
        if (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0 ||
            mount(NULL, p, NULL,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            die(c, "read-only", p);
    }
    for (size_t i = 0; i < sizeof(proc_masked_files) / sizeof(proc_masked_files[0]); i++) {
        path_in_root(c, p, sizeof(p), proc_masked_files[i]);
        if (access(p, F_OK) < 0)
            continue;
        if (mount("/dev/null", p, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL) <
                0)
            die(c, "mask", p);
    }
    for (size_t i = 0; i < sizeof(proc_masked_dirs) / sizeof(proc_masked_dirs[0]); i++) {
        path_in_root(c, p, sizeof(p), proc_masked_dirs[i]);
        if (access(p, F_OK) < 0)
            continue;
        if (mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "size=4k,nr_inodes=1,mode=0555") < 0)
            die(c, "mask", p);
    }
}

static void make_dev(struct child *c)
{
    char p[PATH_MAX];
    static const char *const links[][2] = {{"/proc/self/fd", "/dev/fd"},
                                           {"/proc/self/fd/0", "/dev/stdin"},
                                           {"/proc/self/fd/1", "/dev/stdout"},
                                           {"/proc/self/fd/2", "/dev/stderr"},
                                           {"pts/ptmx", "/dev/ptmx"}};
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        path_in_root(c, p, sizeof(p), links[i][1]);
        if (symlink(links[i][0], p) < 0)
            die(c, "symlink", p);
    }
    mkdir_in_root(c, "/dev/pts", 0755);
    path_in_root(c, p, sizeof(p), "/dev/pts");
    if (mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") <
        0)
        die(c, "mount", p);
    mkdir_in_root(c, "/dev/shm", 01777);
}

/* /workspace, /tmp and /dev/shm: three directories of one tmpfs of workspace_size, so that one
 * bound covers everything the sandbox may write outside /data. */
static void make_workspace(struct child *c)
{
    const struct sch_sandbox_args *a = c->a;
    char w[PATH_MAX], p[PATH_MAX], opts[96];
    mkdir_in_root(c, "/.w", 0700);
    path_in_root(c, w, sizeof(w), "/.w");
    snprintf(opts, sizeof(opts), "size=%llu,mode=0755", (unsigned long long)a->workspace_size);
    if (mount("tmpfs", w, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
        die(c, "mount tmpfs", w);
    static const struct {
        const char *sub, *at;
        mode_t mode;
        unsigned long extra;
    } parts[] = {{"workspace", "/workspace", 0755, 0},
                 {"tmp", "/tmp", 01777, 0},
                 {"shm", "/dev/shm", 01777, MS_NOEXEC}};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        char src[PATH_MAX + 16];
        snprintf(src, sizeof(src), "%s/%s", w, parts[i].sub);
        if (mkdir(src, parts[i].mode) < 0 || chmod(src, parts[i].mode) < 0)
            die(c, "mkdir", src);
        if (parts[i].mode == 0755 && chown(src, a->app_uid, a->app_uid) < 0)
            die(c, "chown", src);
        mkdir_in_root(c, parts[i].at, parts[i].mode);
        path_in_root(c, p, sizeof(p), parts[i].at);
        if (mount(src, p, NULL, MS_BIND, NULL) < 0)
            die(c, "bind", src);
        if (parts[i].extra &&
            mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | parts[i].extra,
                  NULL) < 0)
            die(c, "remount", p);
    }
    if (umount2(w, MNT_DETACH) < 0)
        die(c, "umount", w);
    if (rmdir(w) < 0)
        die(c, "rmdir", w);
}

static void build_root(struct child *c)
{
    const struct sch_sandbox_args *a = c->a;
    char p[PATH_MAX];

    /* Nothing we mount may leak back to the host, but the host's later mount on {dir}/data
     * must still reach us: slave, not private. */
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        die(c, "make-rslave", "/");
    /* Any directory of our own (copied) mount namespace serves as the mount point: nothing we
     * mount here reaches the host, and every host tree we show was taken beforehand. */
    snprintf(c->root, sizeof(c->root), "/tmp");
    if (mount("tmpfs", c->root, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTS) < 0)
        die(c, "mount tmpfs", c->root);
    make_etc(c);
    mkdir_in_root(c, "/dev", 0755);
    /* The writable tmpfs first: an ro_bind below /tmp (a checkout in /tmp) must land on top of
     * the sandbox's own /tmp, not under it. */
    make_workspace(c);
    place_binds(c);
    make_proc(c);
    make_dev(c);
    mkdir_in_root(c, "/run", 0755);
    if (a->with_data) {
        mkdir_in_root(c, "/data", 0755);
        path_in_root(c, p, sizeof(p), "/data");
        if (syscall(SYS_move_mount, c->h->data_fd, "", AT_FDCWD, p, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            die(c, "move_mount", "/data");
    }
    /* Everything the root itself holds (mount points, /etc) is final: read-only from here. */
    if (mount(NULL, c->root, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        die(c, "remount read-only", c->root);
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

/* The egress proxy's listener on the sandbox's own loopback (made here, before the app runs, so
 * that the app can use it from its first instruction). */
static int egress_listener(const struct child *c, uint16_t port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(s, 128) < 0)
        die(c, "egress listener", "127.0.0.1");
    return s;
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

/* ------------------------------------------------------------------ identity and privileges */

/* Becomes the user namespace's root (host uid = the instance's base) and leaves the scheduler's
 * supplementary groups: they would still count for host files the sandbox can reach. */
static void become_ns_root(const struct child *c)
{
    if (setresgid(0, 0, 0) < 0)
        die(c, "setresgid", "0");
    if (setgroups(0, NULL) < 0)
        die(c, "setgroups", "none");
    if (setresuid(0, 0, 0) < 0)
        die(c, "setresuid", "0");
}

static void drop_privileges(const struct child *c)
{
    const struct sch_sandbox_args *a = c->a;
    /* The bounding set first (that needs CAP_SETPCAP, which goes last with everything else). */
    for (int cap = 0; cap < 64; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            die(c, "PR_CAPBSET_DROP", "");
    if (prctl(PR_SET_SECUREBITS,
              SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                  SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                  SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
              0, 0, 0) < 0)
        die(c, "PR_SET_SECUREBITS", "");
    if (setresgid(a->app_uid, a->app_uid, a->app_uid) < 0)
        die(c, "setresgid", "app");
    if (setresuid(a->app_uid, a->app_uid, a->app_uid) < 0)
        die(c, "setresuid", "app");
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) < 0)
        die(c, "capset", "empty");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        die(c, "PR_CAP_AMBIENT", "clear");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        die(c, "PR_SET_NO_NEW_PRIVS", "");
    if (a->seccomp && a->seccomp->len) {
        struct sock_fprog prog = {.len = a->seccomp->len, .filter = a->seccomp->filter};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
            die(c, "seccomp", "install");
    }
}

/* Puts the inherited fds at their SCH_FD_* numbers, 0 on /dev/null and 1, 2 on the console log;
 * closes everything else. */
static void arrange_fds(struct child *c, int egress_fd)
{
    const struct sch_sandbox_args *a = c->a;
    int want[SCH_FD_COUNT] = {-1,        a->log_fd,   a->log_fd, a->ready_fd, a->agent_fd,
                              a->app_fd, a->ports_fd, a->ctl_fd, a->exit_fd,  egress_fd};
    int moved[SCH_FD_COUNT];
    for (int i = 1; i < SCH_FD_COUNT; i++)
        if ((moved[i] = want[i] < 0 ? open("/dev/null", O_RDWR | O_CLOEXEC)
                                    : fcntl(want[i], F_DUPFD_CLOEXEC, ESC_FD_BASE)) < 0)
            die(c, "dup", "fds");
    c->ready_fd = moved[SCH_FD_READY];
    moved[0] = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (moved[0] < 0)
        die(c, "open", "/dev/null");
    for (int i = 0; i < SCH_FD_COUNT; i++)
        if (dup2(moved[i], i) < 0)
            die(c, "dup2", "fds");
    c->ready_fd = SCH_FD_READY;
    if (fcntl(SCH_FD_AGENT, F_SETFD, FD_CLOEXEC) < 0)
        die(c, "fcntl", "agent fd");
    if (syscall(SYS_close_range, SCH_FD_COUNT, ~0U, 0) < 0)
        die(c, "close_range", "fds");
}

int sch_sandbox_child(void *arg)
{
    struct child c = {.a = arg,
                      .h = ((struct sch_sandbox_args *)arg)->host,
                      .ready_fd = ((struct sch_sandbox_args *)arg)->ready_fd};
    const struct sch_sandbox_args *a = c.a;
    char go;
    /* Wait until the parent has written our id maps and put us into our cgroups. */
    ssize_t n;
    do
        n = read(a->sync_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        _exit(1);
    close(a->sync_fd);
    if (!a->insecure)
        become_ns_root(&c);
    if (unshare(CLONE_NEWCGROUP) < 0)
        die(&c, "unshare", "cgroup namespace");
    if (setsid() < 0)
        die(&c, "setsid", "");
    build_root(&c);
    if (sethostname(a->hostname, strlen(a->hostname)) < 0)
        die(&c, "sethostname", a->hostname);
    loopback_up(&c);
    int egress_fd = a->egress_port ? egress_listener(&c, a->egress_port) : -1;
    enter_root(&c);
    arrange_fds(&c, egress_fd);
    drop_privileges(&c);
    syscall(SYS_execveat, SCH_FD_AGENT, "", a->argv, a->envp, AT_EMPTY_PATH);
    die(&c, "exec", a->argv[0]);
    return 127;
}
