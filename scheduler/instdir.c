#include "scheduler/instdir.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/compat.h"
#include "common/config.h"
#include "common/log.h"
#include "scheduler/cgroup.h"
#include "scheduler/config.h"
#include "scheduler/report.h"
#include "scheduler/sandbox.h"

#define EXIT_FILE_MAX 64
#define STATE_FILE_MAX 16384

/* Writes "0 <base> 65536" into /proc/<pid>/{uid,gid}_map (we are root in the parent
 * namespace, so any range works; setgroups stays allowed for the child's setgroups(0)). */
int sch_instdir_write_id_maps(pid_t pid, uint32_t base)
{
    static const char *const files[] = {"uid_map", "gid_map"};
    char path[64], line[64];
    int n = snprintf(line, sizeof(line), "0 %u %u\n", base, SCH_UID_RANGE_SIZE);
    for (size_t i = 0; i < CM_ARRAY_SIZE(files); i++) {
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, files[i]);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        ssize_t w = write(fd, line, (size_t)n);
        int e = w == n ? 0 : (w < 0 ? -errno : -EIO);
        close(fd);
        if (e < 0)
            return e;
    }
    return 0;
}

/* Reads at most <len>-1 bytes of <dir>/<name>, a file the host made but that must not be
 * trusted to still be a regular file: no symlink followed, no FIFO waited on. */
ssize_t sch_instdir_read_host_file(const char *dir, const char *name, char *buf, size_t len)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    size_t got = 0;
    while (got + 1 < len) {
        ssize_t n = read(fd, buf + got, len - 1 - got);
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

/* A listening unix socket at <dir>/<name>, mode <mode>, group <gid>, made by the host. */
int sch_instdir_listen_at(const char *dir, const char *name, mode_t mode, gid_t gid, char *err,
                          size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "socket path %s/%s too long", dir, name);
        return -ENAMETOOLONG;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        fchownat(AT_FDCWD, sa.sun_path, 0, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
        fchmodat(AT_FDCWD, sa.sun_path, mode, 0) < 0 || listen(fd, 1024) < 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", sa.sun_path, strerror(e));
        if (fd >= 0)
            close(fd);
        return -e;
    }
    return fd;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    if (flag == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

/* Removes what an instance left on the host, never the durable directory: {dir}/data is only
 * unmounted and rmdir'ed (an rmdir cannot delete files). */
void sch_instdir_remove_traces(const char *dir, char *const *cgdirs)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof(p), "%s/data", dir);
    for (int i = 0; i < 8 && umount2(p, MNT_DETACH | UMOUNT_NOFOLLOW) == 0; i++)
        ;
    if (rmdir(p) < 0 && errno != ENOENT)
        cm_log_warn("driver", "cannot remove instance data mount point path=%s err=\"%s\"", p,
                    strerror(errno));
    int rc = sch_cgroups_remove(cgdirs);
    if (rc < 0)
        cm_log_warn("driver", "cannot remove cgroup dir=%s err=\"%s\"",
                    cgdirs && cgdirs[0] ? cgdirs[0] : "", strerror(-rc));
    snprintf(p, sizeof(p), "%s/sock", dir);
    nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    static const char *const files[] = {"state", "console.log", "exit", "state.tmp"};
    for (size_t i = 0; i < CM_ARRAY_SIZE(files); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    snprintf(p, sizeof(p), "%s/root", dir);
    rmdir(p);
    if (rmdir(dir) < 0 && errno != ENOENT)
        cm_log_warn("driver", "cannot remove instance dir path=%s err=\"%s\"", dir,
                    strerror(errno));
}

/* The state file: "pid=N\n" then "cgroup=DIR\n" lines. */
int sch_instdir_write_state(const char *dir, pid_t pid, int slot, uint64_t data_size,
                            unsigned app_uid, const struct sch_cg_io *io, char *const *cgdirs)
{
    char path[PATH_MAX + 16], tmp[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/state", dir);
    snprintf(tmp, sizeof(tmp), "%s/state.tmp", dir);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return -errno;
    fprintf(f, "pid=%d\n", (int)pid);
    if (slot >= 0)
        fprintf(f, "slot=%d\n", slot);
    fprintf(f, "data_size=%" PRIu64 "\napp_uid=%u\n", data_size, app_uid);
    fprintf(f, "io=%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n", io->read_bps, io->write_bps,
            io->read_iops, io->write_iops);
    for (; cgdirs && *cgdirs; cgdirs++)
        fprintf(f, "cgroup=%s\n", *cgdirs);
    int rc = fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : -errno;
    fclose(f);
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

int sch_instdir_read_state(const char *dir, pid_t *ret_pid, int *ret_slot, uint64_t *ret_data_size,
                           unsigned *ret_app_uid, struct sch_cg_io *ret_io, char ***ret_cgdirs)
{
    char buf[STATE_FILE_MAX];
    ssize_t len = sch_instdir_read_host_file(dir, "state", buf, sizeof(buf));
    if (len < 0)
        return (int)len;
    pid_t pid = 0;
    int slot = -1;
    char **dirs = calloc(SCH_CG_COUNT + 1, sizeof(*dirs));
    size_t n = 0;
    if (!dirs)
        return -ENOMEM;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "pid=", 4) == 0)
            pid = (pid_t)atoi(line + 4);
        else if (strncmp(line, "slot=", 5) == 0)
            slot = atoi(line + 5);
        else if (strncmp(line, "data_size=", 10) == 0)
            *ret_data_size = strtoull(line + 10, NULL, 10);
        else if (strncmp(line, "app_uid=", 8) == 0 && ret_app_uid)
            *ret_app_uid = strtoul(line + 8, NULL, 10) == 0 ? 0 : SCH_SANDBOX_USER;
        else if (strncmp(line, "io=", 3) == 0 && ret_io)
            sscanf(line + 3, "%" SCNu64 ",%" SCNu64 ",%" SCNu64 ",%" SCNu64, &ret_io->read_bps,
                   &ret_io->write_bps, &ret_io->read_iops, &ret_io->write_iops);
        else if (strncmp(line, "cgroup=", 7) == 0 && n < SCH_CG_COUNT && line[7] == '/')
            dirs[n++] = strdup(line + 7);
    }
    *ret_pid = pid;
    *ret_slot = slot;
    *ret_cgdirs = dirs;
    return pid > 0 ? 0 : -EINVAL;
}

/* Is <pid> berth-agent running instance <id>? Reads /proc/<pid>/cmdline. */
int sch_instdir_is_agent_of(pid_t pid, const char *id)
{
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *argv0 = buf, *base = strrchr(argv0, '/');
    base = base ? base + 1 : argv0;
    if (strcmp(base, SCH_AGENT_NAME) != 0)
        return 0;
    for (const char *p = buf; p < buf + n; p += strlen(p) + 1)
        if (strcmp(p, "--id") == 0 && p + 5 < buf + n && strcmp(p + 5, id) == 0)
            return 1;
    return 0;
}

int sch_instdir_make_shared_mountpoint(const char *path)
{
    if (mount(path, path, NULL, MS_BIND, NULL) < 0)
        return -errno;
    /* A peer group of its own: private first, so it does not join the parent's group. */
    if (mount(NULL, path, NULL, MS_PRIVATE, NULL) < 0 ||
        mount(NULL, path, NULL, MS_SHARED, NULL) < 0) {
        int e = -errno;
        umount2(path, MNT_DETACH);
        return e;
    }
    return 0;
}

/* How many mounts are stacked on <path> in our namespace. */
int sch_instdir_mount_depth(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return -errno;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        char *save = NULL, *tok = strtok_r(line, " ", &save);
        for (int i = 0; tok && i < 4; i++)
            tok = strtok_r(NULL, " ", &save);
        if (tok && strcmp(tok, path) == 0)
            n++;
    }
    fclose(f);
    return n;
}

/* The agent's account of the end: "exited status=N" or "killed signal=N". Written from inside
 * the sandbox, so anything else is ignored (the wait status speaks instead). */
void sch_instdir_read_exit_file(const char *dir, char *reason, size_t len)
{
    char buf[EXIT_FILE_MAX];
    reason[0] = '\0';
    ssize_t n = sch_instdir_read_host_file(dir, "exit", buf, sizeof(buf));
    if (n > 0)
        sch_report_exit(buf, (size_t)n, reason, len);
}

/* The last <len>-1 bytes of the console log on one line. */
void sch_instdir_read_console_tail(const char *dir, char *tail, size_t len)
{
    char p[PATH_MAX + 16];
    tail[0] = '\0';
    snprintf(p, sizeof(p), "%s/console.log", dir);
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)(len / 2) ? end - (off_t)(len / 2) : 0;
    char buf[1024];
    size_t want = CM_MIN(sizeof(buf) - 1, len / 2);
    ssize_t n = pread(fd, buf, want, from);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    char *s = buf;
    if (from > 0 && strchr(s, '\n'))
        s = strchr(s, '\n') + 1; /* start at a line boundary */
    size_t o = 0;
    for (; *s && o + 4 < len; s++) {
        if (*s == '\n') {
            if (s[1] && o + 4 < len)
                o += (size_t)snprintf(tail + o, len - o, " | ");
        } else {
            /* written by the sandbox, logged inside quotes: no quote, backslash or control */
            tail[o++] = (*s >= 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '?';
        }
    }
    tail[o] = '\0';
}

int sch_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int sch_pidfd_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
