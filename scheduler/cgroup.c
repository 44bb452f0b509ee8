#include "scheduler/cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/compat.h"
#include "common/config.h"
#include "common/json.h"
#include "common/log.h"
#include "scheduler/paths.h"

#define REMOVE_TRIES 40
#define REMOVE_SLEEP_NS (5 * 1000 * 1000)

static const char *const ctrl_names[SCH_CG_COUNT] = {"memory", "cpu", "pids", "io", "freezer"};
/* The name of each controller in v1 mount options and /proc/self/cgroup. */
static const char *const v1_names[SCH_CG_COUNT] = {"memory", "cpu", "pids", "blkio", "freezer"};

#define FREEZE_POLL_NS (250 * 1000) /* how often sch_cgroups_freeze() looks at the state */

/* v1 throttle files, in the order of struct sch_cg_io's fields. */
static const char *const blkio_files[4] = {
    "blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"};

struct ctrl {
    int version;  /* 1, 2, or 0 when unusable */
    char *mount;  /* mount point of its hierarchy */
    char *parent; /* absolute directory under which instance cgroups are created */
    char warning[256];
    int swap;               /* memory: the swap limit file exists and takes a value */
    char swap_warning[256]; /* memory: why swap is not limited (usable controller only) */
    char *made;             /* the parent directory when this object created it, else NULL */
};

struct sch_cgroups {
    struct ctrl c[SCH_CG_COUNT];
    uint64_t parent_memory;     /* bytes written by sch_cgroups_limit_parent(); 0 = none */
    uint32_t parent_cpu_millis; /* millis written (v1: after the ancestors' ceiling) */
};

const char *sch_cgroups_ctrl_name(enum sch_cg_ctrl c)
{
    return ctrl_names[c];
}

/* ------------------------------------------------------------------ value formatting */

static int fmt(char *buf, size_t len, const char *f, ...) CM_PRINTF(3, 4);
static int fmt(char *buf, size_t len, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, len, f, ap);
    va_end(ap);
    return (n < 0 || (size_t)n >= len) ? -ENOSPC : 0;
}

int sch_cg_format_memory(int version, uint64_t bytes, char *buf, size_t len)
{
    if (bytes == 0)
        return fmt(buf, len, "%s", version == 1 ? "-1" : "max");
    return fmt(buf, len, "%" PRIu64, bytes);
}

int sch_cg_format_cpu(int version, uint32_t millis, char *buf, size_t len)
{
    if (millis == 0)
        return version == 1 ? fmt(buf, len, "-1") : fmt(buf, len, "max %u", SCH_CG_CPU_PERIOD);
    uint64_t quota = (uint64_t)millis * SCH_CG_CPU_PERIOD / 1000;
    if (quota < 1000)
        quota = 1000;
    if (version == 1)
        return fmt(buf, len, "%" PRIu64, quota);
    return fmt(buf, len, "%" PRIu64 " %u", quota, SCH_CG_CPU_PERIOD);
}

int sch_cg_format_swap(int version, uint64_t memory, char *buf, size_t len)
{
    if (version == 1)
        return sch_cg_format_memory(1, memory, buf, len);
    return fmt(buf, len, "%s", memory ? "0" : "max");
}

int sch_cg_format_io_v1(unsigned major, unsigned minor, uint64_t value, char *buf, size_t len)
{
    return fmt(buf, len, "%u:%u %" PRIu64, major, minor, value);
}

int sch_cg_format_io_v2(unsigned major, unsigned minor, const struct sch_cg_io *io, char *buf,
                        size_t len)
{
    const uint64_t v[4] = {io->read_bps, io->write_bps, io->read_iops, io->write_iops};
    static const char *const keys[4] = {"rbps", "wbps", "riops", "wiops"};
    int rc = fmt(buf, len, "%u:%u", major, minor);
    for (int i = 0; i < 4 && rc == 0; i++) {
        size_t used = strlen(buf);
        rc = v[i] ? fmt(buf + used, len - used, " %s=%" PRIu64, keys[i], v[i])
                  : fmt(buf + used, len - used, " %s=max", keys[i]);
    }
    return rc;
}

int sch_cg_format_pids(int version, uint64_t pids, char *buf, size_t len)
{
    (void)version;
    if (pids == 0)
        return fmt(buf, len, "max");
    return fmt(buf, len, "%" PRIu64, pids);
}

/* ------------------------------------------------------------------ file helpers */

static int write_file(const char *dir, const char *file, const char *value)
{
    char path[4096];
    if (fmt(path, sizeof(path), "%s/%s", dir, file) < 0)
        return -ENAMETOOLONG;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, value, strlen(value));
    int rc = n < 0 ? -errno : (size_t)n == strlen(value) ? 0 : -EIO;
    close(fd);
    return rc;
}

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    while (got + 1 < len) {
        ssize_t n = read(fd, buf + got, len - 1 - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            return e;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    return (int)got;
}

/* The number in <dir>/<file> (a cgroup file: "-1", "max" is not a number). */
static int read_num(const char *dir, const char *file, long long *ret)
{
    char path[4200], buf[64], *end;
    if (fmt(path, sizeof(path), "%s/%s", dir, file) < 0)
        return -ENAMETOOLONG;
    int n = read_file(path, buf, sizeof(buf));
    if (n < 0)
        return n;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (end == buf || (*end && *end != '\n') || errno)
        return -EINVAL;
    *ret = v;
    return 0;
}

/* Does the comma- or space-separated <list> hold <word>? */
static int has_word(const char *list, const char *word, const char *seps)
{
    size_t wl = strlen(word);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, seps);
        if (n == wl && strncmp(p, word, wl) == 0)
            return 1;
        p += n;
        if (*p)
            p++;
    }
    return 0;
}

/* mountinfo escapes spaces and the like as \ooo. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

struct mnt {
    int version;
    char root[1024];
    char point[1024];
};

/* Where the hierarchy is described: <fs_root> and the two /proc files (tests name fakes). */
struct src {
    const char *fs_root;
    const char *mountinfo;   /* normally /proc/self/mountinfo */
    const char *self_cgroup; /* normally /proc/self/cgroup */
};

/* Finds the mount for controller <c>: a v1 "cgroup" mount listing it, else the "cgroup2"
 * mount (if its cgroup.controllers lists it). Only mounts under <src->fs_root>. */
static int find_mount(enum sch_cg_ctrl c, const struct src *src, struct mnt *ret)
{
    const char *name = ctrl_names[c], *v1_name = v1_names[c];
    const char *fs_root = src->fs_root;
    FILE *f = fopen(src->mountinfo, "re");
    if (!f)
        return -errno;
    char line[4096];
    struct mnt v2 = {0};
    int found = 0;
    size_t rl = strlen(fs_root);
    while (!found && fgets(line, sizeof(line), f)) {
        char *save = NULL, *fields[24] = {0};
        int nf = 0;
        for (char *t = strtok_r(line, " \n", &save); t && nf < 24; t = strtok_r(NULL, " \n", &save))
            fields[nf++] = t;
        int dash = -1;
        for (int i = 6; i < nf; i++)
            if (strcmp(fields[i], "-") == 0) {
                dash = i;
                break;
            }
        if (dash < 0 || dash + 3 >= nf)
            continue;
        unescape(fields[3]);
        unescape(fields[4]);
        if (strncmp(fields[4], fs_root, rl) != 0 || (fields[4][rl] && fields[4][rl] != '/'))
            continue;
        const char *fstype = fields[dash + 1], *sopts = fields[dash + 3];
        if (strcmp(fstype, "cgroup") == 0 && has_word(sopts, v1_name, ",")) {
            ret->version = 1;
            snprintf(ret->root, sizeof(ret->root), "%s", fields[3]);
            snprintf(ret->point, sizeof(ret->point), "%s", fields[4]);
            found = 1;
        } else if (strcmp(fstype, "cgroup2") == 0 && !v2.version) {
            char path[1100], ctrls[512];
            snprintf(path, sizeof(path), "%s/cgroup.controllers", fields[4]);
            /* v2's freezer is no controller: every non-root cgroup has cgroup.freeze (5.2+;
             * the probe checks the file). */
            if (c == SCH_CG_FREEZER ||
                (read_file(path, ctrls, sizeof(ctrls)) >= 0 && has_word(ctrls, name, " \n"))) {
                v2.version = 2;
                snprintf(v2.root, sizeof(v2.root), "%s", fields[3]);
                snprintf(v2.point, sizeof(v2.point), "%s", fields[4]);
            }
        }
    }
    fclose(f);
    if (!found && v2.version) {
        *ret = v2;
        found = 1;
    }
    return found ? 0 : -ENOENT;
}

/* Our own cgroup path in the hierarchy of <name> (v1) or the unified one (v2). */
static int own_cgroup(const char *name, int version, const struct src *src, char *buf, size_t len)
{
    FILE *f = fopen(src->self_cgroup, "re");
    if (!f)
        return -errno;
    char line[4096];
    int rc = -ENOENT;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = '\0';
        *c2 = '\0';
        const char *ctrls = c1 + 1, *path = c2 + 1;
        if ((version == 1 && has_word(ctrls, name, ",")) ||
            (version == 2 && strcmp(line, "0") == 0 && *ctrls == '\0')) {
            rc = fmt(buf, len, "%s", path);
            break;
        }
    }
    fclose(f);
    return rc;
}

static const char *swap_file(int version)
{
    return version == 1 ? "memory.memsw.limit_in_bytes" : "memory.swap.max";
}

static const char *limit_file(enum sch_cg_ctrl c, int version)
{
    switch (c) {
    case SCH_CG_MEMORY:
        return version == 1 ? "memory.limit_in_bytes" : "memory.max";
    case SCH_CG_CPU:
        return version == 1 ? "cpu.cfs_quota_us" : "cpu.max";
    case SCH_CG_PIDS:
        return "pids.max";
    case SCH_CG_IO:
        return version == 1 ? blkio_files[0] : "io.max";
    case SCH_CG_FREEZER:
        return version == 1 ? "freezer.state" : "cgroup.freeze";
    default:
        return NULL;
    }
}

static int format_value(enum sch_cg_ctrl c, int version, const struct sch_cg_limits *lim, char *buf,
                        size_t len)
{
    switch (c) {
    case SCH_CG_MEMORY:
        return sch_cg_format_memory(version, lim->memory, buf, len);
    case SCH_CG_CPU:
        return sch_cg_format_cpu(version, lim->cpu_millis, buf, len);
    case SCH_CG_PIDS:
        return sch_cg_format_pids(version, lim->pids, buf, len);
    default:
        return -EINVAL;
    }
}

static int write_value(const char *dir, const char *file, const char *value, char *what,
                       size_t wlen)
{
    int rc = write_file(dir, file, value);
    if (rc < 0)
        fmt(what, wlen, "cannot write %s/%s: %s", dir, file, strerror(-rc));
    return rc;
}

/* The memory limit of <dir>, and with <swap> the swap limit (see sch_cg_format_swap()). v1
 * keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes at every step (the kernel refuses
 * anything else with EINVAL): memsw goes first when the new value is above the current memsw
 * limit (raising), memory first otherwise (lowering; a new cgroup, where both are unlimited). */
static int write_memory(int version, int swap, const char *dir, uint64_t bytes, char *what,
                        size_t wlen)
{
    char mem[32], sw[32];
    int rc;
    if ((rc = sch_cg_format_memory(version, bytes, mem, sizeof(mem))) < 0 ||
        (rc = sch_cg_format_swap(version, bytes, sw, sizeof(sw))) < 0)
        return rc;
    long long now;
    int swap_first = swap && version == 1 && read_num(dir, swap_file(1), &now) == 0 &&
                     (bytes ? bytes : UINT64_MAX) > (uint64_t)now;
    if (swap_first && (rc = write_value(dir, swap_file(version), sw, what, wlen)) < 0)
        return rc;
    if ((rc = write_value(dir, limit_file(SCH_CG_MEMORY, version), mem, what, wlen)) < 0)
        return rc;
    if (swap && !swap_first && (rc = write_value(dir, swap_file(version), sw, what, wlen)) < 0)
        return rc;
    /* v1 does not charge socket buffers to the memory limit: TCP gets its own counter, capped
     * like memory (v2 charges them to memory.max). Kernels without the file: nothing to cap. */
    if (version == 1 && bytes) {
        char path[4200];
        if (fmt(path, sizeof(path), "%s/memory.kmem.tcp.limit_in_bytes", dir) == 0 &&
            access(path, F_OK) == 0 &&
            (rc = write_value(dir, "memory.kmem.tcp.limit_in_bytes", mem, what, wlen)) < 0)
            return rc;
    }
    return 0;
}

/* v1 refuses (EINVAL) a CFS quota above the nearest limited ancestor's, where v2 just lets the
 * smaller one apply. The smallest quota of <dir> and its ancestors up to <mount>, in millis
 * rounded down (so that a child given it passes the kernel's check); 0 = none. */
static uint32_t v1_cpu_ceiling(const char *mount, const char *dir)
{
    char d[4096];
    uint64_t best = 0;
    size_t ml = strlen(mount);
    if (fmt(d, sizeof(d), "%s", dir) < 0 || strncmp(d, mount, ml) != 0)
        return 0;
    for (;;) {
        long long q, p;
        if (read_num(d, "cpu.cfs_quota_us", &q) == 0 && q > 0 &&
            read_num(d, "cpu.cfs_period_us", &p) == 0 && p > 0) {
            uint64_t m = (uint64_t)q * 1000 / (uint64_t)p;
            if (m && (!best || m < best))
                best = m;
        }
        char *slash = strrchr(d, '/');
        if (strlen(d) <= ml || !slash || (size_t)(slash - d) < ml)
            break;
        *slash = '\0';
    }
    return best > UINT32_MAX ? UINT32_MAX : (uint32_t)best;
}

/* v1: <millis> for cgroup <dir>, lowered to the ceiling of its ancestors. */
static uint32_t v1_cpu_clamp(const char *mount, const char *dir, uint32_t millis)
{
    char up[4096];
    if (!millis || fmt(up, sizeof(up), "%s", dir) < 0 || !strrchr(up, '/'))
        return millis;
    *strrchr(up, '/') = '\0';
    uint32_t ceiling = v1_cpu_ceiling(mount, up);
    return ceiling && millis > ceiling ? ceiling : millis;
}

/* The CPU limit of <dir> (v1: the period, then the quota, lowered to the ceiling of <dir>'s
 * ancestors when <mount> is given). */
static int write_cpu(int version, const char *mount, const char *dir, uint32_t millis, char *what,
                     size_t wlen)
{
    char val[64];
    int rc;
    if (version == 1) {
        if (mount)
            millis = v1_cpu_clamp(mount, dir, millis);
        snprintf(val, sizeof(val), "%u", SCH_CG_CPU_PERIOD);
        if ((rc = write_value(dir, "cpu.cfs_period_us", val, what, wlen)) < 0)
            return rc;
    }
    if ((rc = sch_cg_format_cpu(version, millis, val, sizeof(val))) < 0)
        return rc;
    return write_value(dir, limit_file(SCH_CG_CPU, version), val, what, wlen);
}

/* Writes the limit of <c> into the cgroup <dir>, of a controller like <ct> (version, swap,
 * mount). */
static int apply_limit(enum sch_cg_ctrl c, const struct ctrl *ct, const char *dir,
                       const struct sch_cg_limits *lim, char *what, size_t wlen)
{
    char val[64];
    int rc;
    switch (c) {
    case SCH_CG_MEMORY:
        return write_memory(ct->version, ct->swap, dir, lim->memory, what, wlen);
    case SCH_CG_CPU:
        return write_cpu(ct->version, ct->mount, dir, lim->cpu_millis, what, wlen);
    case SCH_CG_IO:
        return 0; /* an io limit names a device: sch_cgroups_limit_io() */
    case SCH_CG_FREEZER:
        return 0; /* no limit: a new cgroup starts thawed */
    default:
        if ((rc = format_value(c, ct->version, lim, val, sizeof(val))) < 0)
            return rc;
        return write_value(dir, limit_file(c, ct->version), val, what, wlen);
    }
}

/* v2: a child only gets the controller's files when every ancestor lists it in
 * cgroup.subtree_control. Enable it from the mount root down to <parent>. */
static void enable_v2(const char *mountpoint, const char *parent, const char *name)
{
    char dir[4096], ctl[64];
    snprintf(ctl, sizeof(ctl), "+%s", name);
    size_t ml = strlen(mountpoint);
    snprintf(dir, sizeof(dir), "%s", parent);
    for (char *p = dir + ml;; p++) {
        if (*p == '/' || *p == '\0') {
            char save = *p;
            *p = '\0';
            char path[4200], cur[512];
            snprintf(path, sizeof(path), "%s/cgroup.subtree_control", dir);
            if (read_file(path, cur, sizeof(cur)) >= 0 && !has_word(cur, name, " \n"))
                write_file(dir, "cgroup.subtree_control", ctl);
            *p = save;
        }
        if (*p == '\0')
            break;
    }
}

/* An io limit names a device, so the probe only opens the limit files for writing. */
static int probe_io(int version, const char *probe, char *what, size_t wlen)
{
    for (int i = 0; i < (version == 1 ? 4 : 1); i++) {
        const char *file = version == 1 ? blkio_files[i] : "io.max";
        char path[4200];
        if (fmt(path, sizeof(path), "%s/%s", probe, file) < 0)
            return -ENAMETOOLONG;
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            int rc = -errno;
            fmt(what, wlen, "cannot open %s for writing: %s", path, strerror(errno));
            return rc;
        }
        close(fd);
    }
    return 0;
}

/* Swap accounting can be off (v1 memory.memsw.*, v2 memory.swap.max missing): the memory
 * controller stays usable, the warning says that swap is not limited. */
static void probe_swap(struct ctrl *ct, int version, const char *probe)
{
    char path[4200], val[32];
    if (fmt(path, sizeof(path), "%s/%s", probe, swap_file(version)) < 0 || access(path, F_OK) < 0) {
        fmt(ct->swap_warning, sizeof(ct->swap_warning),
            "swap is not limited: cgroups have no %s (swap accounting is off in the kernel)",
            swap_file(version));
        return;
    }
    sch_cg_format_swap(version, 0, val, sizeof(val));
    int rc = write_file(probe, swap_file(version), val);
    if (rc < 0) {
        fmt(ct->swap_warning, sizeof(ct->swap_warning), "swap is not limited: cannot write %s: %s",
            path, strerror(-rc));
        return;
    }
    ct->swap = 1;
}

static void setup_ctrl(struct ctrl *ct, enum sch_cg_ctrl c, const char *cgroup_parent,
                       const struct src *src)
{
    const char *name = ctrl_names[c];
    struct mnt m;
    char own[2048], dir[4096];
    if (find_mount(c, src, &m) < 0) {
        fmt(ct->warning, sizeof(ct->warning), "no %s controller mounted under %s", name,
            src->fs_root);
        return;
    }
    if (cgroup_parent[0] == '/') {
        snprintf(dir, sizeof(dir), "%s%s", m.point, cgroup_parent);
    } else {
        if (own_cgroup(v1_names[c], m.version, src, own, sizeof(own)) < 0) {
            fmt(ct->warning, sizeof(ct->warning), "cannot find our own %s cgroup in %s", name,
                src->self_cgroup);
            return;
        }
        const char *rel = own;
        size_t rl = strlen(m.root);
        if (strcmp(m.root, "/") != 0 && strncmp(own, m.root, rl) == 0)
            rel = own + rl;
        if (strcmp(rel, "/") == 0)
            rel = "";
        snprintf(dir, sizeof(dir), "%s%s/%s", m.point, rel, cgroup_parent);
    }
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        dir[--n] = '\0';
    int existed = access(dir, F_OK) == 0;
    int rc = sch_mkdir_p(dir, 0755);
    if (rc < 0) {
        fmt(ct->warning, sizeof(ct->warning), "cannot create %s: %s", dir, strerror(-rc));
        return;
    }
    if (!existed)
        ct->made = strdup(dir); /* NULL when out of memory: then it stays */
    if (m.version == 2 && c != SCH_CG_FREEZER)
        enable_v2(m.point, dir, name);
    /* Probe with a throw-away child: the limit file must exist and take a value. */
    char probe[4200];
    snprintf(probe, sizeof(probe), "%s/.probe-%d", dir, (int)getpid());
    if (mkdir(probe, 0755) < 0 && errno != EEXIST) {
        fmt(ct->warning, sizeof(ct->warning), "cannot create %s: %s", probe, strerror(errno));
        return;
    }
    struct sch_cg_limits none = {0};
    if (c == SCH_CG_IO)
        rc = probe_io(m.version, probe, ct->warning, sizeof(ct->warning));
    else if (c == SCH_CG_FREEZER)
        rc = write_value(probe, limit_file(c, m.version), m.version == 1 ? "THAWED" : "0",
                         ct->warning, sizeof(ct->warning));
    else
        rc = apply_limit(c, &(struct ctrl){.version = m.version}, probe, &none, ct->warning,
                         sizeof(ct->warning));
    if (rc == 0 && c == SCH_CG_MEMORY)
        probe_swap(ct, m.version, probe);
    rmdir(probe);
    if (rc < 0)
        return;
    ct->parent = strdup(dir);
    ct->mount = strdup(m.point);
    if (!ct->parent || !ct->mount) {
        free(ct->parent);
        free(ct->mount);
        ct->parent = ct->mount = NULL;
        fmt(ct->warning, sizeof(ct->warning), "out of memory");
        return;
    }
    ct->version = m.version;
    ct->warning[0] = '\0';
}

struct sch_cgroups *sch_cgroups_create_at(const char *cgroup_parent, const char *fs_root,
                                          const char *mountinfo, const char *self_cgroup)
{
    struct sch_cgroups *cg = calloc(1, sizeof(*cg));
    if (!cg)
        return NULL;
    const struct src src = {fs_root, mountinfo, self_cgroup};
    for (int i = 0; i < SCH_CG_COUNT; i++)
        setup_ctrl(&cg->c[i], (enum sch_cg_ctrl)i, cgroup_parent, &src);
    return cg;
}

struct sch_cgroups *sch_cgroups_create(const char *cgroup_parent, const char *fs_root)
{
    return sch_cgroups_create_at(cgroup_parent, fs_root, "/proc/self/mountinfo",
                                 "/proc/self/cgroup");
}

void sch_cgroups_undo_parents(const struct sch_cgroups *cg)
{
    for (int i = 0; cg && i < SCH_CG_COUNT; i++)
        if (cg->c[i].made)
            rmdir(cg->c[i].made); /* fails, harmlessly, when not empty */
}

void sch_cgroups_destroy(struct sch_cgroups *cg)
{
    if (!cg)
        return;
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        free(cg->c[i].parent);
        free(cg->c[i].mount);
        free(cg->c[i].made);
    }
    free(cg);
}

int sch_cgroups_version(const struct sch_cgroups *cg, enum sch_cg_ctrl c)
{
    return cg->c[c].version;
}

const char *sch_cgroups_warning(const struct sch_cgroups *cg, enum sch_cg_ctrl c)
{
    return cg->c[c].warning[0] ? cg->c[c].warning : NULL;
}

const char *sch_cgroups_swap_warning(const struct sch_cgroups *cg)
{
    const struct ctrl *ct = &cg->c[SCH_CG_MEMORY];
    return ct->version && !ct->swap ? ct->swap_warning : NULL;
}

const char *sch_cgroups_parent(const struct sch_cgroups *cg, enum sch_cg_ctrl c)
{
    return cg->c[c].parent;
}

void sch_cgroups_status(const struct sch_cgroups *cg, struct cm_jbuf *out)
{
    cm_jbuf_raw(out, "{", 1);
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        const struct ctrl *ct = &cg->c[i];
        cm_jbuf_printf(out, "%s\"%s\":{\"version\":%d,", i ? "," : "", ctrl_names[i], ct->version);
        if (ct->version) {
            cm_jbuf_cstr(out, "dir");
            cm_jbuf_raw(out, ":", 1);
            cm_jbuf_cstr(out, ct->parent);
            if (i == SCH_CG_CPU)
                cm_jbuf_printf(out, ",\"limit_millis\":%" PRIu32, cg->parent_cpu_millis);
            if (i == SCH_CG_MEMORY) {
                cm_jbuf_printf(out, ",\"limit\":%" PRIu64 ",\"swap\":%s", cg->parent_memory,
                               ct->swap ? "true" : "false");
                if (!ct->swap) {
                    cm_jbuf_raw(out, ",", 1);
                    cm_jbuf_cstr(out, "swap_warning");
                    cm_jbuf_raw(out, ":", 1);
                    cm_jbuf_cstr(out, ct->swap_warning);
                }
            }
        } else {
            cm_jbuf_cstr(out, "warning");
            cm_jbuf_raw(out, ":", 1);
            cm_jbuf_cstr(out, ct->warning);
        }
        cm_jbuf_raw(out, "}", 1);
    }
    cm_jbuf_raw(out, "}", 1);
}

/* v1: lowering the parent's quota below a child's is refused (EINVAL): lower the children
 * first. Instances are the parent's direct children. */
static int lower_v1_children(const struct ctrl *ct, uint32_t millis, char *err, size_t errlen)
{
    DIR *d = opendir(ct->parent);
    if (!d)
        return 0;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_type != DT_DIR || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char child[4200];
        long long q, p;
        if (fmt(child, sizeof(child), "%s/%s", ct->parent, e->d_name) < 0 ||
            read_num(child, "cpu.cfs_quota_us", &q) < 0 || q <= 0 ||
            read_num(child, "cpu.cfs_period_us", &p) < 0 || p <= 0)
            continue;
        if ((uint64_t)q * 1000 > (uint64_t)millis * (uint64_t)p)
            rc = write_cpu(1, NULL, child, millis, err, errlen);
    }
    closedir(d);
    return rc;
}

int sch_cgroups_limit_parent(struct sch_cgroups *cg, uint64_t memory, uint32_t cpu_millis,
                             char *err, size_t errlen)
{
    int result = 0, rc;
    char what[512] = "";
    const struct ctrl *mem = &cg->c[SCH_CG_MEMORY], *cpu = &cg->c[SCH_CG_CPU];
    if (mem->version) {
        rc = write_memory(mem->version, mem->swap, mem->parent, memory, what, sizeof(what));
        if (rc == 0) {
            cg->parent_memory = memory;
        } else {
            result = rc;
            fmt(err, errlen, "%s", what);
        }
    }
    if (cpu->version) {
        uint32_t millis = cpu_millis;
        rc = 0;
        if (cpu->version == 1 && millis) {
            /* The parent gets no more than its ancestors allow, its children no more than
             * the parent. */
            millis = v1_cpu_clamp(cpu->mount, cpu->parent, millis);
            rc = lower_v1_children(cpu, millis, what, sizeof(what));
        }
        if (rc == 0)
            rc = write_cpu(cpu->version, NULL, cpu->parent, millis, what, sizeof(what));
        if (rc == 0) {
            cg->parent_cpu_millis = millis;
        } else if (result == 0) {
            result = rc;
            fmt(err, errlen, "%s", what);
        }
    }
    return result;
}

int sch_host_resources(uint64_t *ret_mem_bytes, uint32_t *ret_cpu_millis)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -errno;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
            break;
    fclose(f);
    if (kb == 0 || kb > UINT64_MAX / 1024)
        return -EINVAL;
    /* The CPUs we may run on (a cpuset or taskset narrows them), not the CPUs the host has. */
    int cpus = -1;
    for (int n = 1024; n <= (1 << 22) && cpus < 0; n *= 2) {
        cpu_set_t *set = CPU_ALLOC(n);
        if (!set)
            return -ENOMEM;
        size_t size = CPU_ALLOC_SIZE(n);
        int rc = sched_getaffinity(0, size, set) == 0 ? 0 : -errno;
        if (rc == 0)
            cpus = CPU_COUNT_S(size, set);
        CPU_FREE(set);
        if (rc < 0 && rc != -EINVAL) /* EINVAL: the kernel's mask is larger than ours */
            return rc;
    }
    if (cpus <= 0)
        return -EINVAL;
    *ret_mem_bytes = (uint64_t)kb * 1024;
    *ret_cpu_millis = (uint32_t)cpus * 1000;
    return 0;
}

int sch_cgroups_create_instance(struct sch_cgroups *cg, const char *id,
                                const struct sch_cg_limits *lim, char ***ret_dirs, char *err,
                                size_t errlen)
{
    char **dirs = calloc(SCH_CG_COUNT + 1, sizeof(*dirs));
    if (!dirs) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    size_t n = 0;
    int rc = 0;
    for (int i = 0; i < SCH_CG_COUNT && rc == 0; i++) {
        const struct ctrl *ct = &cg->c[i];
        if (!ct->version)
            continue;
        if (asprintf(&dirs[n], "%s/%s", ct->parent, id) < 0) {
            dirs[n] = NULL;
            snprintf(err, errlen, "out of memory");
            rc = -ENOMEM;
            break;
        }
        if (mkdir(dirs[n], 0755) < 0 && errno != EEXIST) {
            rc = -errno;
            fmt(err, errlen, "cannot create cgroup %s: %s", dirs[n], strerror(errno));
            free(dirs[n]);
            dirs[n] = NULL;
            break;
        }
        n++;
        rc = apply_limit((enum sch_cg_ctrl)i, ct, dirs[n - 1], lim, err, errlen);
    }
    if (rc < 0) {
        sch_cgroups_remove(dirs);
        cm_strv_free(dirs);
        return rc;
    }
    *ret_dirs = dirs;
    return 0;
}

/* The instance's cgroup of controller <ct>: the one of <dirs> directly under its parent. */
static const char *instance_dir(const struct ctrl *ct, char *const *dirs)
{
    size_t pl = strlen(ct->parent);
    for (; dirs && *dirs; dirs++)
        if (strncmp(*dirs, ct->parent, pl) == 0 && (*dirs)[pl] == '/' && (*dirs)[pl + 1] &&
            !strchr(*dirs + pl + 1, '/'))
            return *dirs;
    return NULL;
}

static int write_io(const char *dir, const char *file, const char *val, char *err, size_t errlen)
{
    int rc = write_file(dir, file, val);
    /* blkio/io refuse partitions and unknown devices alike with ENODEV. */
    if (rc < 0)
        fmt(err, errlen, "cannot write \"%s\" to %s/%s: %s%s", val, dir, file, strerror(-rc),
            rc == -ENODEV ? " (io limits need a whole disk's device, not a partition)" : "");
    return rc;
}

int sch_cgroups_limit_io(const struct sch_cgroups *cg, char *const *dirs, unsigned dev_major,
                         unsigned dev_minor, const struct sch_cg_io *io, char *err, size_t errlen)
{
    const uint64_t v[4] = {io->read_bps, io->write_bps, io->read_iops, io->write_iops};
    if (!v[0] && !v[1] && !v[2] && !v[3])
        return 0;
    const struct ctrl *ct = &cg->c[SCH_CG_IO];
    if (!ct->version) {
        fmt(err, errlen, "io controller unusable, the instance runs without io limits: %s",
            ct->warning);
        return -ENOTSUP;
    }
    const char *dir = instance_dir(ct, dirs);
    if (!dir) {
        fmt(err, errlen, "the instance has no io cgroup under %s", ct->parent);
        return -ENOENT;
    }
    char val[160];
    int rc;
    if (ct->version == 2) {
        if ((rc = sch_cg_format_io_v2(dev_major, dev_minor, io, val, sizeof(val))) < 0)
            return rc;
        return write_io(dir, "io.max", val, err, errlen);
    }
    for (int i = 0; i < 4; i++) {
        if (!v[i])
            continue;
        if ((rc = sch_cg_format_io_v1(dev_major, dev_minor, v[i], val, sizeof(val))) < 0 ||
            (rc = write_io(dir, blkio_files[i], val, err, errlen)) < 0)
            return rc;
    }
    return 0;
}

/* 1 frozen (v1 FROZEN, v2 "frozen 1"), 0 not (yet), or a negative errno. */
static int freezer_state(int version, const char *dir, int *ret_freezing)
{
    char path[4200], buf[512];
    if (fmt(path, sizeof(path), "%s/%s", dir, version == 1 ? "freezer.state" : "cgroup.events") < 0)
        return -ENAMETOOLONG;
    int n = read_file(path, buf, sizeof(buf));
    if (n < 0)
        return n;
    if (version == 1) {
        *ret_freezing = strncmp(buf, "FREEZING", 8) == 0;
        return strncmp(buf, "FROZEN", 6) == 0;
    }
    char want[512];
    long long v;
    *ret_freezing = read_num(dir, "cgroup.freeze", &v) == 0 && v == 1;
    for (const char *l = buf; *l;) {
        size_t len = strcspn(l, "\n");
        if (len < sizeof(want)) {
            memcpy(want, l, len);
            want[len] = '\0';
            if (strcmp(want, "frozen 1") == 0)
                return 1;
        }
        l += len;
        if (*l)
            l++;
    }
    return 0;
}

int sch_cgroups_freeze(const struct sch_cgroups *cg, char *const *dirs, int frozen,
                       unsigned wait_ms, char *err, size_t errlen)
{
    const struct ctrl *ct = &cg->c[SCH_CG_FREEZER];
    if (!ct->version) {
        fmt(err, errlen, "the freezer is unusable: %s", ct->warning);
        return -ENOTSUP;
    }
    const char *dir = instance_dir(ct, dirs);
    if (!dir) {
        fmt(err, errlen, "the instance has no freezer cgroup under %s", ct->parent);
        return -ENOENT;
    }
    const char *file = limit_file(SCH_CG_FREEZER, ct->version);
    const char *val = ct->version == 1 ? (frozen ? "FROZEN" : "THAWED") : (frozen ? "1" : "0");
    int rc = write_value(dir, file, val, err, errlen);
    if (rc < 0 || !frozen)
        return rc;
    uint64_t polls = (uint64_t)wait_ms * 1000000 / FREEZE_POLL_NS;
    for (uint64_t i = 0;; i++) {
        int freezing = 0;
        rc = freezer_state(ct->version, dir, &freezing);
        if (rc == 1)
            return 0;
        if (rc < 0) {
            fmt(err, errlen, "cannot read the freezer state of %s: %s", dir, strerror(-rc));
            break;
        }
        if (i >= polls) {
            fmt(err, errlen, "%s did not freeze within %u ms", dir, wait_ms);
            rc = -EAGAIN;
            break;
        }
        struct timespec ts = {0, FREEZE_POLL_NS};
        nanosleep(&ts, NULL);
    }
    write_file(dir, file, ct->version == 1 ? "THAWED" : "0");
    return rc;
}

int sch_cgroups_frozen(const struct sch_cgroups *cg, char *const *dirs)
{
    const struct ctrl *ct = &cg->c[SCH_CG_FREEZER];
    if (!ct->version)
        return -ENOTSUP;
    const char *dir = instance_dir(ct, dirs);
    if (!dir)
        return -ENOENT;
    int freezing = 0;
    int rc = freezer_state(ct->version, dir, &freezing);
    return rc < 0 ? rc : rc || freezing;
}

/* utime + stime + cutime + cstime of <pid>, in clock ticks (0 when it is gone). */
static uint64_t proc_ticks(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    int n = read_file(path, buf, sizeof(buf));
    if (n <= 0)
        return 0;
    const char *p = strrchr(buf, ')'); /* the name may hold anything but not end the line */
    if (!p)
        return 0;
    unsigned long long v[4];
    /* after ")": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt,
     * then utime stime cutime cstime */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &v[0],
               &v[1], &v[2], &v[3]) != 4)
        return 0;
    return v[0] + v[1] + v[2] + v[3];
}

int sch_cgroups_stats(const struct sch_cgroups *cg, char *const *dirs, struct sch_cg_stats *ret)
{
    memset(ret, 0, sizeof(*ret));
    const struct ctrl *mem = &cg->c[SCH_CG_MEMORY];
    const char *tasks_dir = NULL;
    for (int i = 0; i < SCH_CG_COUNT && !tasks_dir; i++)
        if (cg->c[i].version)
            tasks_dir = instance_dir(&cg->c[i], dirs);
    if (!tasks_dir)
        return -ENOENT;
    const char *md = mem->version ? instance_dir(mem, dirs) : NULL;
    long long v;
    if (md && read_num(md, mem->version == 1 ? "memory.usage_in_bytes" : "memory.current", &v) == 0)
        ret->mem = (uint64_t)v;
    if (md &&
        read_num(md, mem->version == 1 ? "memory.max_usage_in_bytes" : "memory.peak", &v) == 0)
        ret->mem_peak = (uint64_t)v;
    if (ret->mem_peak < ret->mem)
        ret->mem_peak = ret->mem;
    char path[4200];
    snprintf(path, sizeof(path), "%s/cgroup.procs", tasks_dir);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    uint64_t ticks = 0;
    long pid;
    while (fscanf(f, "%ld", &pid) == 1)
        if (pid > 0)
            ticks += proc_ticks(pid);
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    ret->cpu_ms = ticks * 1000 / (uint64_t)(hz > 0 ? hz : 100);
    return 0;
}

int sch_cgroups_attach(char *const *dirs, pid_t pid)
{
    char val[32];
    snprintf(val, sizeof(val), "%d", (int)pid);
    for (; dirs && *dirs; dirs++) {
        int rc = write_file(*dirs, "cgroup.procs", val);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void kill_tasks(const char *dir)
{
    char path[4200];
    /* Frozen tasks take a SIGKILL only once thawed (v1; v2 kills them frozen). */
    snprintf(path, sizeof(path), "%s/freezer.state", dir);
    if (access(path, W_OK) == 0)
        write_file(dir, "freezer.state", "THAWED");
    snprintf(path, sizeof(path), "%s/cgroup.freeze", dir);
    if (access(path, W_OK) == 0)
        write_file(dir, "cgroup.freeze", "0");
    snprintf(path, sizeof(path), "%s/cgroup.kill", dir);
    if (access(path, W_OK) == 0 && write_file(dir, "cgroup.kill", "1") == 0)
        return;
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    int pid;
    while (fscanf(f, "%d", &pid) == 1)
        if (pid > 0)
            kill(pid, SIGKILL);
    fclose(f);
}

int sch_cgroups_remove(char *const *dirs)
{
    int result = 0;
    for (; dirs && *dirs; dirs++) {
        int rc = 0;
        for (int t = 0; t < REMOVE_TRIES; t++) {
            if (rmdir(*dirs) == 0 || errno == ENOENT) {
                rc = 0;
                break;
            }
            rc = -errno;
            if (errno != EBUSY)
                break;
            kill_tasks(*dirs);
            struct timespec ts = {0, REMOVE_SLEEP_NS};
            nanosleep(&ts, NULL);
        }
        if (rc < 0 && result == 0)
            result = rc;
    }
    return result;
}

int sch_cgroups_list(const struct sch_cgroups *cg, char ***ret_ids)
{
    size_t n = 0, cap = 8;
    char **ids = calloc(cap + 1, sizeof(*ids));
    if (!ids)
        return -ENOMEM;
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        if (!cg->c[i].version)
            continue;
        DIR *d = opendir(cg->c[i].parent);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || e->d_type != DT_DIR)
                continue;
            int dup = 0;
            for (size_t j = 0; j < n && !dup; j++)
                dup = strcmp(ids[j], e->d_name) == 0;
            if (dup)
                continue;
            if (n == cap) {
                char **bigger = realloc(ids, (cap * 2 + 1) * sizeof(*ids));
                if (!bigger) {
                    closedir(d);
                    cm_strv_free(ids);
                    return -ENOMEM;
                }
                ids = bigger;
                cap *= 2;
            }
            if (!(ids[n] = strdup(e->d_name))) {
                closedir(d);
                cm_strv_free(ids);
                return -ENOMEM;
            }
            ids[++n] = NULL;
        }
        closedir(d);
    }
    *ret_ids = ids;
    return 0;
}

char **sch_cgroups_instance_dirs(const struct sch_cgroups *cg, const char *id)
{
    char **dirs = calloc(SCH_CG_COUNT + 1, sizeof(*dirs));
    if (!dirs)
        return NULL;
    size_t n = 0;
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        if (!cg->c[i].version)
            continue;
        if (asprintf(&dirs[n], "%s/%s", cg->c[i].parent, id) < 0) {
            dirs[n] = NULL;
            cm_strv_free(dirs);
            return NULL;
        }
        n++;
    }
    return dirs;
}

void sch_cgroups_log(const struct sch_cgroups *cg)
{
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        enum sch_cg_ctrl c = (enum sch_cg_ctrl)i;
        const char *w = sch_cgroups_warning(cg, c);
        if (w)
            cm_log_warn("cgroup",
                        "controller unusable: instances run without this limit "
                        "ctrl=%s reason=\"%s\"",
                        sch_cgroups_ctrl_name(c), w);
        else
            cm_log_info("cgroup", "controller ready ctrl=%s version=%d dir=%s",
                        sch_cgroups_ctrl_name(c), sch_cgroups_version(cg, c),
                        sch_cgroups_parent(cg, c));
    }
}
