/* The microvm driver's per-template root image (vmroot.h; README.md, "microVM root images"). */
#include "scheduler/vmroot.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/log.h"
#include "scheduler/paths.h"

#define FORMAT_VERSION "berth-vmroot 1"
/* The process driver's PATH in the sandbox (driver_process.c): a command name resolves to
 * the same file under both drivers. */
#define CMD_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define APP_UID 1000
#define MAX_DEPTH 128 /* directory levels of a copied tree */
#define MAX_HOPS 40   /* symlinks followed resolving one path (the kernel's limit) */
#define LDSO_OUT_MAX 65536
#define LDSO_TIMEOUT_MS 30000
#define MKFS_TIMEOUT_MS 600000
#define BLOCK 4096ull

static const char *const mkfs_paths[] = {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"};

enum kind { K_DIR, K_FILE, K_LINK, K_DATA };
/* Which entry wins when two name the same path: generated files over the closure over
 * ro_binds over the rootfs (a bind mount hides what it is mounted on). */
enum prio { P_ROOTFS = 1, P_BIND = 2, P_CLOSURE = 3, P_GEN = 4 };

struct entry {
    char *dst;  /* absolute path in the image */
    char *src;  /* K_FILE: host path copied */
    char *data; /* K_LINK: target; K_DATA: content */
    uint32_t mode;
    uint8_t kind, prio;
    uint64_t size, ino, dev;
    int64_t mtime_ns, ctime_ns; /* ctime: no utimensat() sets it back (a rebuilt file with a
                                 * fixed mtime, same size, a reused inode is still new) */
};

struct set {
    struct entry *v;
    size_t n, cap;
    uint64_t bytes;
    size_t skipped; /* ro_binds files not readable by others, left out */
    const char *cache_dir;
    char *err;
    size_t errlen;
};

static int fail(struct set *s, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct set *s, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, s->errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static void set_fini(struct set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].dst);
        free(s->v[i].src);
        free(s->v[i].data);
    }
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int add(struct set *s, int kind, int prio, const char *dst, const char *src,
               const char *data, const struct stat *st, uint32_t mode)
{
    /* Duplicates go only at the end: bound the raw list too, so a loop cannot grow it. */
    if (s->n >= 4 * (size_t)SCH_VMROOT_MAX_FILES)
        return fail(s, -EFBIG, "more than %u files in the image", SCH_VMROOT_MAX_FILES);
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        struct entry *v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return fail(s, -ENOMEM, "out of memory");
        s->v = v;
        s->cap = cap;
    }
    struct entry *e = &s->v[s->n];
    memset(e, 0, sizeof(*e));
    e->kind = (uint8_t)kind;
    e->prio = (uint8_t)prio;
    e->mode = mode;
    if (st) {
        e->size = (uint64_t)st->st_size;
        e->ino = (uint64_t)st->st_ino;
        e->dev = (uint64_t)st->st_dev;
        e->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
        e->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    }
    e->dst = strdup(dst);
    e->src = src ? strdup(src) : NULL;
    e->data = data ? strdup(data) : NULL;
    if (!e->dst || (src && !e->src) || (data && !e->data)) {
        free(e->dst);
        free(e->src);
        free(e->data);
        return fail(s, -ENOMEM, "out of memory");
    }
    s->n++;
    return 0;
}

/* Lexically normalized absolute form of <p> (relative to <dir>): "." and ".." removed. */
static void normalize(const char *dir, const char *p, char *out, size_t len)
{
    char tmp[PATH_MAX * 2];
    snprintf(tmp, sizeof(tmp), "%s/%s", p[0] == '/' ? "" : dir, p);
    size_t o = 0;
    out[0] = '\0';
    for (char *save, *c = strtok_r(tmp, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0)
            continue;
        if (strcmp(c, "..") == 0) {
            char *sl = strrchr(out, '/');
            o = sl ? (size_t)(sl - out) : 0;
            out[o] = '\0';
            continue;
        }
        int n = snprintf(out + o, len - o, "/%s", c);
        if (n < 0 || (size_t)n >= len - o)
            break;
        o += (size_t)n;
    }
    if (!out[0])
        snprintf(out, len, "/");
}

static int under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* Host /etc reaches an image only through these (and ro_binds naming it). */
static int etc_allowed(const char *abs)
{
    return !under(abs, "/etc") || under(abs, "/etc/ssl") || strcmp(abs, "/etc/ld.so.cache") == 0;
}

static int walk(struct set *s, const char *host, const char *dst, int prio, int certs, dev_t one_fs,
                int depth);

enum { R_TREE = 1, R_CHECK_ETC = 2, R_CERTS = 4 };

/* Adds host path <path> at the same path in the image, with every directory and symlink met
 * resolving it (the host's layout: /lib -> usr/lib, libz.so.1 -> libz.so.1.2.13), so every
 * link added has its target in the image too. A final symlink into host /etc (alternatives)
 * is replaced by a copy of the file it leads to. R_TREE: <path> may be a directory, copied
 * whole. R_CHECK_ETC: refuse to add host /etc files that etc_allowed() does not list. */
static int resolve_add(struct set *s, const char *path, int prio, int flags)
{
    char buf[2][PATH_MAX], cur[PATH_MAX] = "";
    int b = 0, hops = 0;
    if (path[0] != '/' || snprintf(buf[b], PATH_MAX, "%s", path) >= PATH_MAX)
        return fail(s, -EINVAL, "%s: not an absolute path", path);
    const char *p = buf[b];
    for (;;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t cl = strcspn(p, "/");
        const char *rest = p + cl, *q = rest;
        while (*q == '/')
            q++;
        int last = !*q;
        if ((cl == 1 && p[0] == '.') || (cl == 2 && p[0] == '.' && p[1] == '.')) {
            if (cl == 2) {
                char *sl = strrchr(cur, '/');
                if (sl)
                    *sl = '\0';
            }
            p = rest;
            continue;
        }
        char next[PATH_MAX];
        if (snprintf(next, sizeof(next), "%s/%.*s", cur, (int)cl, p) >= (int)sizeof(next))
            return fail(s, -ENAMETOOLONG, "%s: path too long", path);
        struct stat st;
        if (lstat(next, &st) < 0)
            return fail(s, -errno, "%s: %s: %s", path, next, strerror(errno));
        if (S_ISLNK(st.st_mode)) {
            char tgt[PATH_MAX], abs[PATH_MAX];
            ssize_t n = readlink(next, tgt, sizeof(tgt) - 1);
            if (n <= 0)
                return fail(s, n < 0 ? -errno : -EINVAL, "%s: cannot read link %s", path, next);
            tgt[n] = '\0';
            if (++hops > MAX_HOPS)
                return fail(s, -ELOOP, "%s: too many symbolic links", path);
            normalize(cur[0] ? cur : "/", tgt, abs, sizeof(abs));
            if ((flags & R_CHECK_ETC) && !etc_allowed(abs)) {
                char real[PATH_MAX];
                struct stat rs;
                if (!last)
                    return fail(s, -EPERM, "%s: %s leads into host /etc (%s): not copied", path,
                                next, abs);
                if (!realpath(next, real) || stat(real, &rs) < 0)
                    return fail(s, -errno, "%s: %s: %s", path, next, strerror(errno));
                if (!S_ISREG(rs.st_mode) || !etc_allowed(real))
                    return fail(s, -EPERM, "%s: %s is not a regular file outside host /etc", path,
                                real);
                return add(s, K_FILE, prio, next, real, NULL, &rs, rs.st_mode & 07777);
            }
            int rc = add(s, K_LINK, prio, next, NULL, tgt, &st, 0777);
            if (rc < 0)
                return rc;
            /* Resolution goes on through the target as written: a lexical ".." after another
             * link would be wrong. */
            int nb = !b;
            if (snprintf(buf[nb], PATH_MAX, "%s%s%s%s", tgt[0] == '/' ? "" : cur,
                         tgt[0] == '/' ? "" : "/", tgt, rest) >= PATH_MAX)
                return fail(s, -ENAMETOOLONG, "%s: path too long", path);
            b = nb;
            p = buf[b];
            cur[0] = '\0';
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            int rc = add(s, K_DIR, prio, next, NULL, NULL, &st, st.st_mode & 07777);
            if (rc < 0)
                return rc;
            memcpy(cur, next, strlen(next) + 1);
            p = rest;
            continue;
        }
        if (S_ISREG(st.st_mode) && last) {
            if ((flags & R_CHECK_ETC) && !etc_allowed(next))
                return fail(s, -EPERM, "%s: %s is in host /etc: not copied", path, next);
            return add(s, K_FILE, prio, next, next, NULL, &st, st.st_mode & 07777);
        }
        return fail(s, -ENOTDIR, "%s: %s is not a regular file or directory", path, next);
    }
    if (!(flags & R_TREE))
        return fail(s, -EISDIR, "%s: is a directory", path);
    if (!cur[0])
        return fail(s, -EINVAL, "%s: is /", path);
    return walk(s, cur, cur, prio, !!(flags & R_CERTS), 0, 0);
}

/* Copies the tree at <host> to <dst> in the image: directories, regular files and symlinks
 * (kept verbatim, never followed; under /etc/ssl/certs those leading into /etc/ssl or
 * /usr/share/ca-certificates also bring their targets). Devices, sockets and fifos are
 * skipped. <one_fs> nonzero: mount points on other devices become empty directories. */
static int walk(struct set *s, const char *host, const char *dst, int prio, int certs, dev_t one_fs,
                int depth)
{
    if (depth > MAX_DEPTH)
        return fail(s, -ELOOP, "%s: more than %d directory levels", host, MAX_DEPTH);
    DIR *d = opendir(host);
    if (!d)
        return fail(s, -errno, "%s: %s", host, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (errno = 0, de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char hp[PATH_MAX], dp[PATH_MAX];
        if (snprintf(hp, sizeof(hp), "%s/%s", host, de->d_name) >= (int)sizeof(hp) ||
            snprintf(dp, sizeof(dp), "%s/%s", strcmp(dst, "/") ? dst : "", de->d_name) >=
                (int)sizeof(dp)) {
            rc = fail(s, -ENAMETOOLONG, "%s/%s: path too long", host, de->d_name);
            break;
        }
        struct stat st;
        if (lstat(hp, &st) < 0) {
            rc = fail(s, -errno, "%s: %s", hp, strerror(errno));
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            rc = add(s, K_DIR, prio, dp, NULL, NULL, &st, st.st_mode & 07777);
            if (rc == 0 && (!one_fs || st.st_dev == one_fs))
                rc = walk(s, hp, dp, prio, certs, one_fs, depth + 1);
        } else if (S_ISREG(st.st_mode) && prio == P_BIND && !(st.st_mode & S_IROTH)) {
            /* The process driver binds ro_binds into sandboxes whose uids cannot read such a
             * file; in a VM a run_as_root app could. Left out. */
            s->skipped++;
        } else if (S_ISREG(st.st_mode)) {
            rc = add(s, K_FILE, prio, dp, hp, NULL, &st, st.st_mode & 07777);
        } else if (S_ISLNK(st.st_mode)) {
            char tgt[PATH_MAX], real[PATH_MAX];
            ssize_t n = readlink(hp, tgt, sizeof(tgt) - 1);
            if (n <= 0) {
                rc = fail(s, n < 0 ? -errno : -EINVAL, "%s: cannot read link", hp);
                break;
            }
            tgt[n] = '\0';
            rc = add(s, K_LINK, prio, dp, NULL, tgt, &st, 0777);
            if (rc == 0 && certs && realpath(hp, real) &&
                (under(real, "/etc/ssl") || under(real, "/usr/share/ca-certificates")))
                rc = resolve_add(s, hp, prio, R_CHECK_ETC);
        }
    }
    if (rc == 0 && errno)
        rc = fail(s, -errno, "%s: %s", host, strerror(errno));
    closedir(d);
    return rc;
}

/* Runs argv[0] with a clean environment, stdin /dev/null, stdout and stderr into <out>
 * (NUL-terminated; the first outlen-1 bytes, *ret_trunc set when there was more). Returns its
 * exit status (>= 0), or a negative errno (-ETIMEDOUT: killed after <timeout_ms>). */
static int run_capture(char *const argv[], char *out, size_t outlen, int *ret_trunc, int timeout_ms,
                       int unprivileged)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pfd[0]);
        close(pfd[1]);
        return -e;
    }
    if (pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(pfd[1], 1) < 0 || dup2(pfd[1], 2) < 0)
            _exit(127);
        syscall(SYS_close_range, 3u, ~0u, 0u);
        /* The command's own loader (its PT_INTERP) runs as nobody: whoever could write the
         * command's file could otherwise have root run what it names. */
        if (unprivileged &&
            (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
             setresuid(65534, 65534, 65534) < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0))
            _exit(126);
        char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(pfd[1]);
    size_t got = 0;
    int rc = 0;
    *ret_trunc = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left =
            timeout_ms - ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        int pr = left > 0 ? poll(&p, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            kill(pid, SIGKILL);
            rc = -ETIMEDOUT;
            break;
        }
        char sink[4096];
        char *dst = got < outlen - 1 ? out + got : sink;
        size_t room = got < outlen - 1 ? outlen - 1 - got : sizeof(sink);
        ssize_t n = read(pfd[0], dst, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (dst == sink)
            *ret_trunc = 1;
        else
            got += (size_t)n;
    }
    out[got] = '\0';
    close(pfd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (rc < 0)
        return rc;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The ELF program interpreter of <path> into <interp> (empty: static), or -ENOEXEC. */
static int elf_interp(int fd, char *interp, size_t len)
{
    unsigned char id[EI_NIDENT];
    interp[0] = '\0';
    if (pread(fd, id, sizeof(id), 0) != (ssize_t)sizeof(id) || memcmp(id, ELFMAG, SELFMAG) != 0)
        return -ENOEXEC;
    int is64 = id[EI_CLASS] == ELFCLASS64;
    if (!is64 && id[EI_CLASS] != ELFCLASS32)
        return -ENOEXEC;
    uint64_t phoff;
    unsigned phnum, phentsize;
    if (is64) {
        Elf64_Ehdr h;
        if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
            return -ENOEXEC;
        phoff = h.e_phoff, phnum = h.e_phnum, phentsize = h.e_phentsize;
    } else {
        Elf32_Ehdr h;
        if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
            return -ENOEXEC;
        phoff = h.e_phoff, phnum = h.e_phnum, phentsize = h.e_phentsize;
    }
    if (phnum > 512 || phentsize < (is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr)))
        return -ENOEXEC;
    for (unsigned i = 0; i < phnum; i++) {
        uint64_t type, off, size;
        off_t at = (off_t)(phoff + (uint64_t)i * phentsize);
        if (is64) {
            Elf64_Phdr ph;
            if (pread(fd, &ph, sizeof(ph), at) != (ssize_t)sizeof(ph))
                return -ENOEXEC;
            type = ph.p_type, off = ph.p_offset, size = ph.p_filesz;
        } else {
            Elf32_Phdr ph;
            if (pread(fd, &ph, sizeof(ph), at) != (ssize_t)sizeof(ph))
                return -ENOEXEC;
            type = ph.p_type, off = ph.p_offset, size = ph.p_filesz;
        }
        if (type != PT_INTERP)
            continue;
        if (size < 2 || size >= len || pread(fd, interp, size, (off_t)off) != (ssize_t)size)
            return -ENOEXEC;
        interp[size] = '\0';
        if (interp[0] != '/' || strlen(interp) != size - 1)
            return -ENOEXEC;
        return 0;
    }
    return 0;
}

/* Adds the ELF interpreter and shared libraries of <path>, as its interpreter's --list
 * (trace mode: nothing of the program runs) names them. */
static int add_elf_deps(struct set *s, const char *path, int fd)
{
    char interp[PATH_MAX];
    int rc = elf_interp(fd, interp, sizeof(interp));
    if (rc < 0)
        return fail(s, rc, "%s: not an ELF executable or a #! script", path);
    if (!interp[0])
        return 0; /* static */
    if ((rc = resolve_add(s, interp, P_CLOSURE, R_CHECK_ETC)) < 0)
        return rc;
    char *out = malloc(LDSO_OUT_MAX);
    if (!out)
        return fail(s, -ENOMEM, "out of memory");
    int trunc = 0;
    char *const argv[] = {interp, "--list", (char *)path, NULL};
    int st = run_capture(argv, out, LDSO_OUT_MAX, &trunc, LDSO_TIMEOUT_MS, 1);
    if (st < 0 || trunc) {
        free(out);
        return fail(s, st < 0 ? st : -EFBIG, "%s --list %s: %s", interp, path,
                    st < 0 ? strerror(-st) : "too much output");
    }
    rc = 0;
    for (char *save, *l = strtok_r(out, "\n", &save); l && rc == 0;
         l = strtok_r(NULL, "\n", &save)) {
        l += strspn(l, " \t");
        char *arrow = strstr(l, " => "), *lib = NULL;
        if (arrow) {
            lib = arrow + 4;
            if (strncmp(lib, "not found", 9) == 0) {
                *arrow = '\0';
                rc = fail(s, -ENOENT, "%s: shared library %s not found", path, l);
                break;
            }
        } else if (l[0] == '/') {
            lib = l;
        }
        if (!lib || lib[0] != '/')
            continue; /* linux-vdso.so.1, "statically linked" */
        char *sp = strstr(lib, " (0x");
        if (sp)
            *sp = '\0';
        rc = resolve_add(s, lib, P_CLOSURE, R_CHECK_ETC);
    }
    if (rc == 0 && st != 0) {
        out[strcspn(out, "\n")] = '\0';
        rc = fail(s, -EIO, "%s --list %s failed (status %d): %s", interp, path, st, out);
    }
    free(out);
    return rc;
}

/* Finds command name <name> the way the process driver's sandbox does: absolute as given, a
 * bare name in CMD_PATH. <rootfd> >= 0: inside that root (as the guest will see it). */
static int resolve_cmd(struct set *s, const char *name, int rootfd, char *out, size_t len)
{
    if (!name || !*name)
        return fail(s, -EINVAL, "app.command is empty");
    if (strchr(name, '/') && name[0] != '/')
        return fail(s, -EINVAL, "app.command[0] '%s': must be absolute or a bare name", name);
    char dirs[] = CMD_PATH;
    char *save = NULL;
    const char *dir = name[0] == '/' ? "" : strtok_r(dirs, ":", &save);
    for (; dir; dir = name[0] == '/' ? NULL : strtok_r(NULL, ":", &save)) {
        if ((size_t)snprintf(out, len, "%s%s%s", dir, *dir ? "/" : "", name) >= len)
            return fail(s, -ENAMETOOLONG, "app.command[0] '%s': path too long", name);
        struct stat st;
        int ok;
        if (rootfd >= 0) {
            struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT};
            int fd = (int)syscall(SYS_openat2, rootfd, out, &how, sizeof(how));
            ok = fd >= 0 && fstat(fd, &st) == 0;
            if (fd >= 0)
                close(fd);
        } else {
            ok = stat(out, &st) == 0;
        }
        if (ok && S_ISREG(st.st_mode) && (st.st_mode & 0111))
            return 0;
    }
    return fail(s, -ENOENT, "app.command[0] '%s': %s", name,
                name[0] == '/' ? "no such executable file" : "not found in " CMD_PATH);
}

/* The command, and what it needs to run: its ELF deps, or for a #! script the interpreter's
 * (one level; "#!/usr/bin/env NAME" also brings NAME). */
static int add_command(struct set *s, const char *path)
{
    int rc = resolve_add(s, path, P_CLOSURE, R_CHECK_ETC);
    if (rc < 0)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fail(s, -errno, "%s: %s", path, strerror(errno));
    char head[256];
    ssize_t n = pread(fd, head, sizeof(head) - 1, 0);
    if (n < 2 || head[0] != '#' || head[1] != '!') {
        rc = add_elf_deps(s, path, fd);
        close(fd);
        return rc;
    }
    close(fd);
    head[n] = '\0';
    char *nl = strchr(head, '\n');
    if (!nl)
        return fail(s, -ENOEXEC, "%s: #! line longer than %zu bytes", path, sizeof(head) - 2);
    *nl = '\0';
    char *save, *interp = strtok_r(head + 2, " \t", &save), *arg = strtok_r(NULL, " \t", &save);
    if (!interp || interp[0] != '/')
        return fail(s, -ENOEXEC, "%s: #! names no absolute interpreter", path);
    const char *targets[2] = {interp, NULL};
    char envcmd[PATH_MAX];
    const char *base = strrchr(interp, '/') + 1;
    if (strcmp(base, "env") == 0 && arg && arg[0] != '-') {
        if ((rc = resolve_cmd(s, arg, -1, envcmd, sizeof(envcmd))) < 0)
            return rc;
        targets[1] = envcmd;
    }
    for (int i = 0; i < 2 && targets[i]; i++) {
        if ((rc = resolve_add(s, targets[i], P_CLOSURE, R_CHECK_ETC)) < 0)
            return rc;
        if ((fd = open(targets[i], O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0)
            return fail(s, -errno, "%s: interpreter %s: %s", path, targets[i], strerror(errno));
        rc = pread(fd, head, 2, 0) == 2 && head[0] == '#' && head[1] == '!'
                 ? fail(s, -ENOEXEC, "%s: interpreter %s is a script too", path, targets[i])
                 : add_elf_deps(s, targets[i], fd);
        close(fd);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int sch_vmroot_guest_conf(const struct sch_vmroot_params *p, const char *resolved_argv0, char *buf,
                          size_t len)
{
    const struct cm_template *t = p->tpl;
    if (!t || !t->app_command || !t->app_command[0] || !resolved_argv0 || !*resolved_argv0)
        return -EINVAL;
    if (strchr(resolved_argv0, '\n'))
        return -EINVAL;
    for (char **e = t->app_env; e && *e; e++)
        if (strchr(*e, '\n'))
            return -EINVAL;
    for (char **a = t->app_command + 1; *a; a++)
        if (strchr(*a, '\n'))
            return -EINVAL;
    char text[SCH_VMROOT_CONF_MAX + 1];
    size_t o = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int n_ = snprintf(text + o, sizeof(text) - o, __VA_ARGS__);                                \
        if (n_ < 0 || (size_t)n_ >= sizeof(text) - o)                                              \
            return -E2BIG;                                                                         \
        o += (size_t)n_;                                                                           \
    } while (0)
    PUT("# written by berth-scheduler (vmroot.c)\n");
    PUT("port=%u\nrelay_port=%u\nhold_ms=%" PRIu64 "\nuid=%d\nworkspace_size=%" PRIu64 "\n",
        t->app_port, p->relay_port, p->hold_ms, t->run_as_root ? 0 : APP_UID, t->workspace_size);
    if (p->ports_port)
        PUT("ports_port=%u\n", p->ports_port);
    for (char **e = t->app_env; e && *e; e++)
        PUT("env=%s\n", *e);
    PUT("arg=%s\n", resolved_argv0);
    for (char **a = t->app_command + 1; *a; a++)
        PUT("arg=%s\n", *a);
#undef PUT
    if (o >= len)
        return -ENOBUFS;
    memcpy(buf, text, o + 1);
    return (int)o;
}

static int add_generated(struct set *s, const char *conf)
{
    static const struct {
        const char *path;
        uint32_t mode;
        const char *data; /* NULL: a directory */
    } gen[] = {
        {"/etc", 0755, NULL},
        {"/etc/berth", 0755, NULL},
        {"/etc/passwd", 0644,
         "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/workspace:/bin/sh\n"},
        {"/etc/group", 0644, "root:x:0:\napp:x:1000:\n"},
        {"/etc/hosts", 0644, "127.0.0.1\tlocalhost\n::1\tlocalhost\n"},
        {"/etc/nsswitch.conf", 0644, "passwd: files\ngroup: files\nhosts: files\n"},
        {"/etc/resolv.conf", 0644, ""},
        {"/workspace", 0755, NULL},
        {"/tmp", 01777, NULL},
        {"/data", 0755, NULL},
        {"/proc", 0555, NULL},
        {"/dev", 0755, NULL},
        {"/sys", 0555, NULL},
        {"/run", 0755, NULL},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof(gen) / sizeof(gen[0]) && rc == 0; i++)
        rc = add(s, gen[i].data ? K_DATA : K_DIR, P_GEN, gen[i].path, NULL, gen[i].data, NULL,
                 gen[i].mode);
    if (rc == 0)
        rc = add(s, K_DATA, P_GEN, "/etc/berth/guest.conf", NULL, conf, NULL, 0644);
    return rc;
}

static int entry_cmp(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    int c = strcmp(x->dst, y->dst);
    if (c)
        return c;
    if (x->prio != y->prio)
        return x->prio > y->prio ? -1 : 1;
    return (int)x->kind - (int)y->kind;
}

static int find(const struct set *s, const char *dst)
{
    struct entry key = {.dst = (char *)dst, .prio = 255};
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(s->v[mid].dst, key.dst) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && strcmp(s->v[lo].dst, dst) == 0 ? (int)lo : -1;
}

/* Sorted by path (a parent sorts before its children), one entry per path, every parent a
 * directory of the image; the totals within bounds. */
static int finish(struct set *s, char *const *binds)
{
    qsort(s->v, s->n, sizeof(*s->v), entry_cmp);
    size_t w = 0;
    for (size_t i = 0; i < s->n; i++) {
        struct entry *e = &s->v[i];
        int hidden = 0;
        for (char *const *b = binds; e->prio == P_ROOTFS && b && *b && !hidden; b++)
            hidden = under(e->dst, *b) && strcmp(e->dst, *b) != 0;
        if (hidden || (w > 0 && strcmp(s->v[w - 1].dst, e->dst) == 0)) {
            if (!hidden && s->v[w - 1].prio == e->prio && s->v[w - 1].kind != e->kind) {
                fail(s, -EEXIST, "%s: in the image twice, as different kinds", e->dst);
                /* Keep what set_fini() frees exact: the kept ones, then the rest. */
                memmove(&s->v[w], e, (s->n - i) * sizeof(*e));
                s->n = w + (s->n - i);
                return -EEXIST;
            }
            free(e->dst);
            free(e->src);
            free(e->data);
            continue;
        }
        s->v[w++] = *e;
    }
    s->n = w;
    if (s->n > SCH_VMROOT_MAX_FILES)
        return fail(s, -EFBIG, "%zu files in the image (at most %u)", s->n, SCH_VMROOT_MAX_FILES);
    s->bytes = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct entry *e = &s->v[i];
        char parent[PATH_MAX];
        snprintf(parent, sizeof(parent), "%s", e->dst);
        *strrchr(parent, '/') = '\0';
        int pi = parent[0] ? find(s, parent) : 0;
        if (parent[0] && (pi < 0 || s->v[pi].kind != K_DIR))
            return fail(s, -ENOTDIR, "%s: its parent is not a directory in the image", e->dst);
        if (e->kind == K_FILE)
            s->bytes += e->size;
        else if (e->kind == K_DATA)
            s->bytes += strlen(e->data);
    }
    if (s->bytes > SCH_VMROOT_MAX_BYTES)
        return fail(s, -EFBIG, "%" PRIu64 " bytes of files in the image (at most %llu)", s->bytes,
                    SCH_VMROOT_MAX_BYTES);
    return 0;
}

static void hash_set(const struct set *s, const char *conf, const char *rootfs, char *out)
{
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    XXH3_64bits_update(&st, FORMAT_VERSION, sizeof(FORMAT_VERSION));
    XXH3_64bits_update(&st, conf, strlen(conf) + 1);
    XXH3_64bits_update(&st, rootfs ? rootfs : "", rootfs ? strlen(rootfs) + 1 : 1);
    for (size_t i = 0; i < s->n; i++) {
        const struct entry *e = &s->v[i];
        /* A directory's or link's own size, inode and mtime say nothing about what is copied
         * (its entries are in the list themselves): a file added next to a library must not
         * make a new image. */
        int file = e->kind == K_FILE;
        uint64_t num[7] = {e->kind,
                           e->mode,
                           file ? e->size : 0,
                           file ? e->ino : 0,
                           file ? e->dev : 0,
                           file ? (uint64_t)e->mtime_ns : 0,
                           file ? (uint64_t)e->ctime_ns : 0};
        XXH3_64bits_update(&st, e->dst, strlen(e->dst) + 1);
        XXH3_64bits_update(&st, num, sizeof(num));
        if (e->src)
            XXH3_64bits_update(&st, e->src, strlen(e->src) + 1);
        if (e->data)
            XXH3_64bits_update(&st, e->data, strlen(e->data) + 1);
    }
    snprintf(out, SCH_VMROOT_HASH_LEN + 1, "%016" PRIx64, (uint64_t)XXH3_64bits_digest(&st));
}

static int rm_tree_at(int dirfd, const char *name, int depth)
{
    if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if ((errno != EISDIR && errno != EPERM) || depth > MAX_DEPTH + 4)
        return -errno;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && rc == 0)
            rc = rm_tree_at(fd, de->d_name, depth + 1);
    closedir(d);
    if (rc == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) < 0)
        rc = -errno;
    return rc;
}

enum { F_NONE, F_IMG, F_TMP, F_STAGE };

static int hexn(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return 1;
}

static int rand6(const char *p)
{
    for (int i = 0; i < 6; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'z') ||
              (p[i] >= 'A' && p[i] <= 'Z')))
            return 0;
    return 1;
}

/* Which of template <tpl>'s names <name> is: root-<tpl>-<hash>.img, root-<tpl>-<hash>.XXXXXX.tmp
 * or stage-<tpl>-<hash>.XXXXXX; the hash in <hash>. Exact, so template "a" never matches
 * "a-b"'s files. */
static int classify(const char *name, const char *tpl, char *hash)
{
    size_t tl = strlen(tpl);
    int stage = strncmp(name, "stage-", 6) == 0;
    const char *p = name + (stage ? 6 : 5);
    if ((!stage && strncmp(name, "root-", 5) != 0) || strncmp(p, tpl, tl) != 0 || p[tl] != '-')
        return F_NONE;
    p += tl + 1;
    if (strlen(p) < SCH_VMROOT_HASH_LEN || !hexn(p, SCH_VMROOT_HASH_LEN))
        return F_NONE;
    memcpy(hash, p, SCH_VMROOT_HASH_LEN);
    hash[SCH_VMROOT_HASH_LEN] = '\0';
    p += SCH_VMROOT_HASH_LEN;
    if (!stage && strcmp(p, ".img") == 0)
        return F_IMG;
    if (p[0] != '.' || strlen(p) < 7 || !rand6(p + 1))
        return F_NONE;
    if (stage && p[7] == '\0')
        return F_STAGE;
    return !stage && strcmp(p + 7, ".tmp") == 0 ? F_TMP : F_NONE;
}

/* Removes <tpl>'s stage dirs and temporary images, and with <images> its images other than
 * <keep>. */
static int sweep(const char *cache_dir, const char *tpl, const char *keep, int images)
{
    if (!tpl || !sch_safe_name(tpl, strlen(tpl)))
        return -EINVAL;
    int fd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    int removed = 0, rc = 0;
    struct dirent *de;
    char hash[SCH_VMROOT_HASH_LEN + 1];
    while ((de = readdir(d))) {
        int f = classify(de->d_name, tpl, hash);
        if (f == F_NONE || (f == F_IMG && (!images || (keep && strcmp(hash, keep) == 0))))
            continue;
        int r = rm_tree_at(fd, de->d_name, 0);
        if (r < 0 && rc == 0)
            rc = r;
        else if (r == 0)
            removed++;
    }
    closedir(d);
    return rc < 0 ? rc : removed;
}

int sch_vmroot_gc(const char *cache_dir, const char *tpl_name, const char *keep_hash)
{
    return sweep(cache_dir, tpl_name, keep_hash, 1);
}

/* Opens the parent directory of <rel> under <stagefd> without following any symlink. */
static int open_parent(int stagefd, const char *rel)
{
    const char *sl = strrchr(rel, '/');
    if (!sl)
        return dup(stagefd);
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%.*s", (int)(sl - rel), rel);
    struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                           .resolve =
                               RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, stagefd, parent, &how, sizeof(how));
}

static int copy_fd(int in, int out, uint64_t size)
{
    uint64_t done = 0;
    int plain = 0;
    char buf[65536];
    while (done < size) {
        ssize_t n;
        if (!plain) {
            n = copy_file_range(in, NULL, out, NULL, (size_t)(size - done), 0);
            if (n < 0 &&
                (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                plain = 1;
                continue;
            }
        } else {
            n = read(in, buf, size - done < sizeof(buf) ? (size_t)(size - done) : sizeof(buf));
            if (n > 0 && write(out, buf, (size_t)n) != n)
                return -EIO;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO; /* shrank since stat */
        done += (uint64_t)n;
    }
    return 0;
}

/* Writes every entry into the stage dir. Modes lose setuid and setgid: nothing in the guest
 * gains privileges from the image. Files are checked to be what was hashed. */
static int materialize(struct set *s, int stagefd)
{
    for (size_t i = 0; i < s->n; i++) {
        const struct entry *e = &s->v[i];
        const char *rel = e->dst + 1, *base = strrchr(e->dst, '/') + 1;
        int pfd = open_parent(stagefd, rel);
        if (pfd < 0)
            return fail(s, -errno, "stage %s: %s", e->dst, strerror(errno));
        int rc = 0;
        uint32_t mode = e->mode & 01777;
        if (e->kind == K_DIR) {
            if (mkdirat(pfd, base, 0700) < 0)
                rc = fail(s, -errno, "stage %s: %s", e->dst, strerror(errno));
            else if (fchmodat(pfd, base, mode, 0) < 0)
                rc = fail(s, -errno, "stage %s: %s", e->dst, strerror(errno));
        } else if (e->kind == K_LINK) {
            if (symlinkat(e->data, pfd, base) < 0)
                rc = fail(s, -errno, "stage %s: %s", e->dst, strerror(errno));
        } else {
            int in = -1, out = -1;
            struct stat st;
            if (e->kind == K_FILE) {
                in = open(e->src, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
                if (in < 0 || fstat(in, &st) < 0)
                    rc = fail(s, -errno, "%s: %s", e->src, strerror(errno));
                else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != e->size ||
                         (uint64_t)st.st_ino != e->ino || (uint64_t)st.st_dev != e->dev ||
                         (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec !=
                             e->mtime_ns ||
                         (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec !=
                             e->ctime_ns)
                    rc = fail(s, -EAGAIN, "%s changed while the image was built", e->src);
            }
            if (rc == 0 &&
                (out = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                              0600)) < 0)
                rc = fail(s, -errno, "stage %s: %s", e->dst, strerror(errno));
            if (rc == 0 && e->kind == K_FILE && (rc = copy_fd(in, out, e->size)) < 0)
                rc = fail(s, rc, "copying %s: %s", e->src, strerror(-rc));
            if (rc == 0 && e->kind == K_DATA) {
                size_t n = strlen(e->data);
                if (n && write(out, e->data, n) != (ssize_t)n)
                    rc = fail(s, -EIO, "stage %s: short write", e->dst);
            }
            if (rc == 0 && fchmod(out, mode) < 0)
                rc = fail(s, -errno, "stage %s: %s", e->dst, strerror(errno));
            if (in >= 0)
                close(in);
            if (out >= 0)
                close(out);
        }
        close(pfd);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Inodes the image gets: one per entry, 10% more, and some for lost+found and the like. */
static size_t inode_count(const struct set *s)
{
    return s->n + s->n / 10 + 64;
}

static int run_mkfs(struct set *s, const char *stage, const char *img, uint64_t bytes)
{
    const char *mkfs = NULL;
    for (size_t i = 0; i < sizeof(mkfs_paths) / sizeof(mkfs_paths[0]) && !mkfs; i++)
        if (access(mkfs_paths[i], X_OK) == 0)
            mkfs = mkfs_paths[i];
    if (!mkfs)
        return fail(s, -ENOENT, "mkfs.ext4 not found (install e2fsprogs)");
    char inodes[32], size[32];
    snprintf(inodes, sizeof(inodes), "%zu", inode_count(s));
    snprintf(size, sizeof(size), "%" PRIu64 "k", bytes / 1024);
    char *const argv[] = {(char *)mkfs,
                          "-q",
                          "-F",
                          "-d",
                          (char *)stage,
                          "-L",
                          "berth-root",
                          "-O",
                          "^has_journal",
                          "-E",
                          "root_owner=0:0",
                          "-b",
                          "4096",
                          "-m",
                          "0",
                          "-N",
                          inodes,
                          (char *)img,
                          size,
                          NULL};
    char out[512];
    int trunc;
    int st = run_capture(argv, out, sizeof(out), &trunc, MKFS_TIMEOUT_MS, 0);
    if (st == 0)
        return 0;
    out[strcspn(out, "\n")] = '\0';
    return fail(s, -EIO, "mkfs.ext4 %s failed: %s", img,
                st < 0   ? strerror(-st)
                : out[0] ? out
                         : "exit status");
}

/* Size of the image: file blocks (directories and long links one block each), 15% more, the
 * inode tables (256 bytes an inode) and 16 MiB for the rest of the metadata. */
static uint64_t image_size(const struct set *s)
{
    uint64_t blocks = 0;
    for (size_t i = 0; i < s->n; i++) {
        const struct entry *e = &s->v[i];
        uint64_t sz = e->kind == K_FILE   ? e->size
                      : e->kind == K_DATA ? strlen(e->data)
                      : e->kind == K_DIR  ? BLOCK
                                          : (strlen(e->data) > 59 ? BLOCK : 0);
        blocks += (sz + BLOCK - 1) / BLOCK;
    }
    uint64_t bytes = blocks * BLOCK * 115 / 100 + (uint64_t)inode_count(s) * 256 + (16ull << 20);
    return (bytes + BLOCK - 1) / BLOCK * BLOCK;
}

static int build(struct set *s, const char *tpl, const char *hash, const char *final)
{
    char stage[PATH_MAX], tmp[PATH_MAX];
    snprintf(stage, sizeof(stage), "%s/stage-%s-%s.XXXXXX", s->cache_dir, tpl, hash);
    snprintf(tmp, sizeof(tmp), "%s/root-%s-%s.XXXXXX.tmp", s->cache_dir, tpl, hash);
    if (!mkdtemp(stage))
        return fail(s, -errno, "cannot make %s: %s", stage, strerror(errno));
    int rc = 0, imgfd = -1;
    int stagefd = open(stage, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (stagefd < 0)
        rc = fail(s, -errno, "%s: %s", stage, strerror(errno));
    if (rc == 0)
        rc = materialize(s, stagefd);
    if (rc == 0 && fchmod(stagefd, 0755) < 0)
        rc = fail(s, -errno, "%s: %s", stage, strerror(errno));
    uint64_t size = image_size(s);
    if (rc == 0 && (imgfd = mkostemps(tmp, 4, O_CLOEXEC)) < 0)
        rc = fail(s, -errno, "cannot make %s: %s", tmp, strerror(errno));
    if (rc == 0 && ftruncate(imgfd, (off_t)size) < 0)
        rc = fail(s, -errno, "cannot size %s: %s", tmp, strerror(errno));
    if (rc == 0)
        rc = run_mkfs(s, stage, tmp, size);
    /* Root's only: QEMU gets a descriptor, and nobody else on the host reads the template's
     * files through it. */
    if (rc == 0 && (fchmod(imgfd, 0600) < 0 || fsync(imgfd) < 0))
        rc = fail(s, -errno, "%s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, final) < 0)
        rc = fail(s, -errno, "cannot rename %s: %s", tmp, strerror(errno));
    if (rc == 0) {
        int dfd = open(s->cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    if (imgfd >= 0) {
        close(imgfd);
        if (rc < 0)
            unlink(tmp);
    }
    if (stagefd >= 0)
        close(stagefd);
    char *name = strrchr(stage, '/') + 1;
    name[-1] = '\0';
    int cfd = open(stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cfd >= 0) {
        rm_tree_at(cfd, name, 0);
        close(cfd);
    }
    return rc;
}

/* A path holding, or lying in, the cache dir: copying it would copy images into images. */
static int overlaps_cache(const char *path, const char *cache_real)
{
    char real[PATH_MAX];
    if (!realpath(path, real))
        return 0; /* resolve_add() reports it */
    return under(real, cache_real) || under(cache_real, real);
}

int sch_vmroot_build(const struct sch_vmroot_params *p, char *ret_path, size_t pathlen,
                     char *ret_hash, char *err, size_t errlen)
{
    struct set s = {.cache_dir = p->cache_dir, .err = err, .errlen = errlen};
    const struct cm_template *t = p->tpl;
    char cache_real[PATH_MAX], argv0[PATH_MAX], conf[SCH_VMROOT_CONF_MAX + 1], hash[32];
    char rootfs[PATH_MAX] = "", final[PATH_MAX];
    int rc = 0, rootfd = -1;
    if (!t || !t->name || !sch_safe_name(t->name, strlen(t->name)))
        return fail(&s, -EINVAL, "template name not safe as a file name");
    if (!p->cache_dir || p->cache_dir[0] != '/' || !realpath(p->cache_dir, cache_real))
        return fail(&s, -EINVAL, "cache dir %s: not an existing absolute path",
                    p->cache_dir ? p->cache_dir : "(none)");
    /* Whoever may write there could plant an image under a key the builder would reuse. */
    struct stat cst;
    if (stat(cache_real, &cst) < 0 || !S_ISDIR(cst.st_mode) || cst.st_uid != geteuid() ||
        (cst.st_mode & 022))
        return fail(&s, -EPERM,
                    "cache dir %s: must be a directory of ours that no one else may "
                    "write to",
                    cache_real);
    if (t->rootfs) {
        if (!realpath(t->rootfs, rootfs))
            return fail(&s, -errno, "rootfs %s: %s", t->rootfs, strerror(errno));
        if (strcmp(rootfs, "/") == 0)
            return fail(&s, -EINVAL, "rootfs %s is the host's /: refused", t->rootfs);
        if (overlaps_cache(rootfs, cache_real))
            return fail(&s, -EINVAL, "rootfs %s overlaps the image cache %s", rootfs, cache_real);
        if ((rootfd = open(rootfs, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
            return fail(&s, -errno, "rootfs %s: %s", rootfs, strerror(errno));
    }
    for (char *const *b = p->ro_binds; b && *b; b++)
        if (overlaps_cache(*b, cache_real))
            return fail(&s, -EINVAL, "ro_binds %s overlaps the image cache %s", *b, cache_real);
    rc = resolve_cmd(&s, t->app_command ? t->app_command[0] : NULL, rootfd, argv0, sizeof(argv0));
    if (rootfd >= 0)
        close(rootfd);
    if (rc < 0)
        return rc;
    int n = sch_vmroot_guest_conf(p, argv0, conf, sizeof(conf));
    if (n < 0)
        return fail(&s, n, "guest.conf: %s",
                    n == -EINVAL ? "a newline in an app.env entry or app.command word"
                                 : "longer than 4096 bytes (the agent's limit)");
    if ((rc = add_generated(&s, conf)) < 0)
        goto out;
    if (t->rootfs) {
        struct stat st;
        if (stat(rootfs, &st) < 0) {
            rc = fail(&s, -errno, "rootfs %s: %s", rootfs, strerror(errno));
            goto out;
        }
        rc = walk(&s, rootfs, "/", P_ROOTFS, 0, st.st_dev, 0);
    } else {
        rc = add_command(&s, argv0);
        static const char *const optional[] = {"/etc/ld.so.cache", "/etc/ssl/certs"};
        for (size_t i = 0; i < 2 && rc == 0; i++) {
            if (access(optional[i], F_OK) < 0)
                continue;
            /* The links of the certs dir lead into /usr/share/ca-certificates. */
            rc = resolve_add(&s, optional[i], P_CLOSURE, R_CHECK_ETC | (i ? R_TREE | R_CERTS : 0));
        }
    }
    /* As the process driver binds them, also over a rootfs. */
    for (char *const *b = p->ro_binds; rc == 0 && b && *b; b++)
        rc = resolve_add(&s, *b, P_BIND, R_TREE);
    if (rc < 0 || (rc = finish(&s, p->ro_binds)) < 0)
        goto out;
    if (s.skipped)
        cm_log_warn("vmroot",
                    "ro_binds files not readable by others left out of the image template=%s "
                    "files=%zu",
                    t->name, s.skipped);
    hash_set(&s, conf, t->rootfs ? rootfs : NULL, hash);
    if ((size_t)snprintf(final, sizeof(final), "%s/root-%s-%s.img", p->cache_dir, t->name, hash) >=
        sizeof(final)) {
        rc = fail(&s, -ENAMETOOLONG, "cache dir path too long");
        goto out;
    }
    struct stat st;
    if (lstat(final, &st) == 0 && !S_ISREG(st.st_mode)) {
        rc = fail(&s, -EEXIST, "%s exists and is not a regular file", final);
        goto out;
    }
    if (lstat(final, &st) < 0) {
        int r = sweep(p->cache_dir, t->name, NULL, 0);
        if (r < 0) {
            rc = fail(&s, r, "cannot remove old build leftovers in %s: %s", p->cache_dir,
                      strerror(-r));
            goto out;
        }
        if ((rc = build(&s, t->name, hash, final)) < 0)
            goto out;
    }
    if (strlen(final) >= pathlen) {
        rc = fail(&s, -ENAMETOOLONG, "image path longer than the caller's buffer");
        goto out;
    }
    memcpy(ret_path, final, strlen(final) + 1);
    memcpy(ret_hash, hash, SCH_VMROOT_HASH_LEN + 1);
out:
    set_fini(&s);
    return rc;
}
