#include "scheduler/agent/exec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "scheduler/agent/guest.h"
#include "scheduler/agent/loop.h"
#include "scheduler/agent/proto.h"

#define OUT_MAX (256 * 1024) /* frames waiting for the gateway, per command */
#define IN_MAX (256 * 1024)  /* stdin bytes waiting for the command */
#define READ_CHUNK 65536     /* one O/R frame at most */
#define DRAIN_MS 1000        /* after the exit, how long its pipes may stay open */

extern char **environ;

struct xc {
    struct xc *next;
    struct agent_watch cw;                 /* the gateway's connection */
    struct agent_watch in_w, out_w, err_w; /* the command's stdin (ours to write), out, err */
    struct agent_exec_spec spec;
    char rbuf[CM_FRAME_HDR + CM_FRAME_MAX];
    size_t rlen;
    char *obuf; /* frames for the gateway */
    size_t olen, ocap;
    char *ibuf; /* stdin for the command */
    size_t ilen;
    pid_t pid; /* 0 before the start and once reaped */
    int started, running, exited, status, timed_out;
    uint64_t t0, deadline, drain_until;
    int stdin_eof; /* the gateway sent Z */
    int conn_gone; /* the gateway closed or failed */
    int ended;     /* X or F queued: close once written */
    int shut;      /* ...written, our side shut down: waiting for the gateway's close */
    uint64_t hold_until; /* while holding: when it starts anyway (the relay's hold_ms) */
    int dead;
    char key[AGENT_EXEC_KEY_LEN + 1]; /* what the connection presented, "" when nothing */
    /* files: the operation ('G', 'W', 'U', 'L'; 0 for a command), its path and state */
    char fop;
    char *fpath;
    int file_fd, parent_fd; /* G: the file, W: the temp file and its directory */
    DIR *dir;               /* L */
    char *fbase;            /* W: the target's name in parent_fd */
    char tmpname[64];
    uint64_t fsize;
};

/* Exec-channel connections that have not started a command or file operation yet (held
 * until BIND, or sending their frames): more are closed at once. */
#define UNSTARTED_MAX 64

static struct {
    int epfd;
    struct agent_exec_config cfg;
    struct xc *all;
    unsigned running;
    int holding; /* no BIND yet: nothing starts (the session's /data is not mounted) */
    char key[AGENT_EXEC_KEY_LEN + 1]; /* BIND's exec_key=, "" when none */
} X;

void agent_exec_init(int epfd, const struct agent_exec_config *cfg)
{
    X.epfd = epfd;
    X.cfg = *cfg;
    X.holding = cfg->hold_ms > 0;
}

static int consume(struct xc *x);
static void gone(struct xc *x);
static void update(struct xc *x);

void agent_exec_release(void)
{
    X.holding = 0;
    for (struct xc *x = X.all; x; x = x->next)
        if (!x->dead && !x->started && x->cw.fd >= 0) {
            if (consume(x) < 0)
                gone(x);
            update(x);
        }
}

unsigned agent_exec_running(void)
{
    return X.running;
}

unsigned agent_exec_open(void)
{
    unsigned n = 0;
    for (const struct xc *x = X.all; x; x = x->next)
        n += !x->dead;
    return n;
}

static void update(struct xc *x);

static int queue(struct xc *x, char type, const char *p, size_t n)
{
    if (x->olen + CM_FRAME_HDR + n > x->ocap) {
        size_t cap = x->ocap ? x->ocap : 4096;
        while (cap < x->olen + CM_FRAME_HDR + n)
            cap *= 2;
        char *b = realloc(x->obuf, cap);
        if (!b)
            return -ENOMEM;
        x->obuf = b;
        x->ocap = cap;
    }
    cm_frame_header(x->obuf + x->olen, type, n);
    memcpy(x->obuf + x->olen + CM_FRAME_HDR, p, n);
    x->olen += CM_FRAME_HDR + n;
    return 0;
}

static void close_pipes(struct xc *x)
{
    agent_watch_close(X.epfd, &x->in_w);
    agent_watch_close(X.epfd, &x->out_w);
    agent_watch_close(X.epfd, &x->err_w);
}

static void kill_group(struct xc *x)
{
    if (x->pid > 0)
        kill(-x->pid, SIGKILL);
}

static void fail(struct xc *x, const char *why)
{
    queue(x, 'F', why, strlen(why));
    x->ended = 1;
}

/* The command has exited and its output is read (or its pipes stayed open too long). */
static void report_end(struct xc *x)
{
    char msg[96];
    uint64_t ms = agent_now_ms() - x->t0;
    if (WIFSIGNALED(x->status))
        snprintf(msg, sizeof(msg), "signal=%d ms=%" PRIu64 "%s", WTERMSIG(x->status), ms,
                 x->timed_out ? " timeout=1" : "");
    else
        snprintf(msg, sizeof(msg), "code=%d ms=%" PRIu64 "%s", WEXITSTATUS(x->status), ms,
                 x->timed_out ? " timeout=1" : "");
    close_pipes(x);
    queue(x, 'X', msg, strlen(msg));
    x->ended = 1;
}

/* ------------------------------------------------------------------ start */

/* The command's environment: ours (the app's), with the spec's entries replacing or added. */
static char **build_env(const struct agent_exec_spec *s)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + s->envc + 1, sizeof(*env));
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int replaced = 0;
        for (size_t j = 0; j < s->envc && !replaced; j++)
            replaced = strncmp(s->env[j], environ[i], nl) == 0 && s->env[j][nl] == '=';
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < s->envc; j++)
        env[k++] = s->env[j];
    env[k] = NULL;
    return env;
}

static void start(struct xc *x)
{
    char why[256];
    if (x->spec.argc == 0) {
        fail(x, "no command");
        return;
    }
    if (X.running >= X.cfg.max_execs) {
        snprintf(why, sizeof(why), "busy: %u commands run in this sandbox already (its limit)",
                 X.running);
        fail(x, why);
        return;
    }
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, st[2] = {-1, -1};
    char **env = X.cfg.guest_conf ? NULL : build_env(&x->spec); /* a guest's: in the child */
    if ((!env && !X.cfg.guest_conf) || pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 ||
        pipe2(err, O_CLOEXEC) < 0 || pipe2(st, O_CLOEXEC) < 0) {
        snprintf(why, sizeof(why), "cannot make pipes: %s", strerror(errno));
        goto fail;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, sizeof(why), "fork: %s", strerror(errno));
        goto fail;
    }
    if (pid == 0) {
        int e = 0;
        const char *what = "setsid";
        signal(SIGPIPE, SIG_DFL);
        sigprocmask(SIG_SETMASK, X.cfg.child_mask, NULL);
        if (setsid() < 0 || dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) {
            e = errno;
        } else {
            int keep = st[1];
            if (keep != 3 && dup2(keep, 3) < 0)
                _exit(127);
            fcntl(3, F_SETFD, FD_CLOEXEC);
            syscall(SYS_close_range, 4, ~0U, 0);
            st[1] = 3;
            /* In a guest the app's identity, root, home and environment come first: the
             * working directory is then the app's view of it, and the environment the app's
             * plus the command's (built here, after the agent became the app). */
            if (X.cfg.guest_conf) {
                int r = agent_guest_enter_app(X.cfg.guest_conf, &what);
                if (r < 0)
                    e = -r;
                else if (!(env = build_env(&x->spec)))
                    e = ENOMEM, what = "environment";
            }
            if (!e && x->spec.cwd && chdir(x->spec.cwd) < 0) {
                e = errno;
                what = "chdir";
            }
            if (!e) {
                execvpe(x->spec.argv[0], x->spec.argv, env);
                e = errno;
                what = "exec";
            }
        }
        char msg[160];
        int n = snprintf(msg, sizeof(msg), "%s: %s", what, strerror(e));
        if (write(st[1], msg, (size_t)n) < 0)
            _exit(126);
        _exit(127);
    }
    free(env);
    env = NULL;
    close(in[0]);
    close(out[1]);
    close(err[1]);
    close(st[1]);
    in[0] = out[1] = err[1] = st[1] = -1;
    /* A successful exec closes the status pipe; a failure writes why. */
    char msg[160];
    ssize_t n;
    do
        n = read(st[0], msg, sizeof(msg) - 1);
    while (n < 0 && errno == EINTR);
    close(st[0]);
    st[0] = -1;
    x->pid = pid;
    x->t0 = agent_now_ms();
    if (n > 0) {
        msg[n] = '\0';
        snprintf(why, sizeof(why), "cannot run %s: %s", x->spec.argv[0], msg);
        close(in[1]);
        close(out[0]);
        close(err[0]);
        x->started = 1; /* its exit is reaped as ours, and reported by nobody */
        x->exited = 0;
        fail(x, why);
        return;
    }
    for (int *fd = (int[]){in[1], out[0], err[0]}, k = 0; k < 3; k++)
        fcntl(fd[k], F_SETFL, O_NONBLOCK);
    agent_watch_init(&x->in_w, in[1], x->in_w.cb);
    agent_watch_init(&x->out_w, out[0], x->out_w.cb);
    agent_watch_init(&x->err_w, err[0], x->err_w.cb);
    x->started = x->running = 1;
    X.running++;
    if (x->spec.timeout_ms)
        x->deadline = x->t0 + x->spec.timeout_ms;
    return;
fail:
    free(env);
    for (int *fd = (int[]){in[0], in[1], out[0], out[1], err[0], err[1], st[0], st[1]}, k = 0;
         k < 8; k++)
        if (fd[k] >= 0)
            close(fd[k]);
    fail(x, why);
}

/* ------------------------------------------------------------------ files */

static int open_beneath(int dirfd, const char *path, uint64_t flags)
{
    struct open_how how = {.flags = flags | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, dirfd, *path ? path : ".", &how, sizeof(how));
    return fd < 0 ? -errno : fd;
}

static void file_fail(struct xc *x, int err, const char *what)
{
    const char *code = err == ENOENT                    ? "not_found"
                       : err == ENOTDIR                 ? "not_a_directory"
                       : err == EISDIR                  ? "not_a_file"
                       : err == ENOTEMPTY               ? "not_empty"
                       : err == ENOSPC || err == EDQUOT ? "no_space"
                       : err == EACCES || err == EPERM  ? "denied"
                       : err == EXDEV || err == ELOOP   ? "bad_path"
                                                        : "io";
    char msg[256];
    snprintf(msg, sizeof(msg), "%s: %s: %s", code, what, strerror(err));
    fail(x, msg);
}

/* In a guest the agent is root: the file calls take the app's identity (setfsuid), so that
 * the app's permissions apply and what is written is the app's. Elsewhere the agent already
 * is the sandbox's user. */
static void fs_as_app(int on)
{
    const struct agent_guest_conf *g = X.cfg.guest_conf;
    if (!g || !g->uid)
        return;
    setfsgid(on ? g->uid : 0);
    setfsuid(on ? g->uid : 0);
}

static void file_cleanup(struct xc *x)
{
    if (x->file_fd >= 0)
        close(x->file_fd);
    x->file_fd = -1;
    if (x->tmpname[0] && x->parent_fd >= 0) {
        fs_as_app(1);
        unlinkat(x->parent_fd, x->tmpname, 0); /* an upload that did not finish */
        fs_as_app(0);
    }
    x->tmpname[0] = '\0';
    if (x->parent_fd >= 0)
        close(x->parent_fd);
    x->parent_fd = -1;
    if (x->dir)
        closedir(x->dir);
    x->dir = NULL;
}

/* W: the directories up to the target's, made where missing; returns an fd or -errno. */
static int make_parents(int root, char *rest, char **ret_base)
{
    int cur = dup(root);
    if (cur < 0)
        return -errno;
    char *p = rest, *slash;
    while ((slash = strchr(p, '/'))) {
        *slash = '\0';
        int next = open_beneath(cur, p, O_PATH | O_DIRECTORY);
        if (next == -ENOENT && mkdirat(cur, p, 0755) == 0)
            next = open_beneath(cur, p, O_PATH | O_DIRECTORY);
        *slash = '/';
        close(cur);
        if (next < 0)
            return next;
        cur = next;
        p = slash + 1;
    }
    *ret_base = p;
    return cur;
}

static void file_start_(struct xc *x, char op);

static void file_start(struct xc *x, char op)
{
    fs_as_app(1);
    file_start_(x, op);
    fs_as_app(0);
}

static void file_start_(struct xc *x, char op)
{
    const char *root_name, *err = NULL;
    int is_dir = 0;
    x->fop = op;
    x->started = 1;
    x->t0 = agent_now_ms();
    size_t n = x->fpath ? strlen(x->fpath) : 0;
    char *rest = malloc(n + 1);
    if (!rest || !x->fpath || agent_file_path(x->fpath, n, &root_name, rest, &is_dir, &err) < 0) {
        free(rest);
        fail(x, err ? err : "bad_path: no path");
        return;
    }
    char rootp[32];
    /* A guest's app sees the sysroot as its root. */
    snprintf(rootp, sizeof(rootp), "%s/%s",
             X.cfg.guest_conf && X.cfg.guest_conf->rooted ? AGENT_GUEST_SYSROOT : "", root_name);
    int root = open(rootp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (root < 0) {
        file_fail(x, errno, rootp);
        free(rest);
        return;
    }
    int fd;
    struct stat st;
    if (op == 'G' || op == 'L') {
        fd = open_beneath(root, rest, op == 'G' ? O_RDONLY | O_NONBLOCK : O_RDONLY | O_DIRECTORY);
        if (fd < 0) {
            file_fail(x, -fd, x->fpath);
        } else if (op == 'G' && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
            close(fd);
            file_fail(x, EISDIR, x->fpath);
        } else if (op == 'G') {
            x->file_fd = fd;
        } else if (!(x->dir = fdopendir(fd))) {
            close(fd);
            file_fail(x, errno, x->fpath);
        }
    } else if (!*rest || is_dir) {
        file_fail(x, EISDIR, x->fpath);
    } else if (op == 'U') {
        char *base = strrchr(rest, '/');
        int parent;
        if (base) {
            *base++ = '\0';
            parent = open_beneath(root, rest, O_PATH | O_DIRECTORY);
        } else {
            base = rest;
            parent = dup(root);
        }
        if (parent < 0) {
            file_fail(x, parent == -1 ? errno : -parent, x->fpath);
        } else {
            int rc = unlinkat(parent, base, 0);
            if (rc < 0 && errno == EISDIR)
                rc = unlinkat(parent, base, AT_REMOVEDIR);
            if (rc < 0)
                file_fail(x, errno, x->fpath);
            else
                queue(x, 'X', "ok", 2), x->ended = 1;
            close(parent);
        }
    } else { /* W */
        char *base = NULL;
        x->parent_fd = make_parents(root, rest, &base);
        if (x->parent_fd < 0) {
            int e = -x->parent_fd;
            x->parent_fd = -1;
            file_fail(x, e, x->fpath);
        } else if (!(x->fbase = strdup(base))) {
            fail(x, "io: out of memory");
        } else {
            static unsigned seq;
            snprintf(x->tmpname, sizeof(x->tmpname), ".berth-upload.%d.%u", (int)getpid(), ++seq);
            x->file_fd = openat(x->parent_fd, x->tmpname,
                                O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
            if (x->file_fd < 0) {
                x->tmpname[0] = '\0';
                file_fail(x, errno, x->fpath);
            }
        }
    }
    close(root);
    free(rest);
}

/* W: bytes of the upload. */
static void file_write(struct xc *x, const char *p, size_t n)
{
    while (n && !x->ended) {
        ssize_t w = write(x->file_fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            file_cleanup(x);
            file_fail(x, e, x->fpath);
            return;
        }
        p += w;
        n -= (size_t)w;
        x->fsize += (uint64_t)w;
    }
}

/* W: the end of the upload: synced, then renamed into place. */
static void file_commit(struct xc *x)
{
    fs_as_app(1);
    int rc = fsync(x->file_fd) < 0 || renameat(x->parent_fd, x->tmpname, x->parent_fd, x->fbase) < 0
                 ? -1
                 : 0;
    int e = errno;
    fs_as_app(0);
    if (rc < 0) {
        file_cleanup(x);
        file_fail(x, e, x->fpath);
        return;
    }
    x->tmpname[0] = '\0';
    file_cleanup(x);
    char msg[40];
    snprintf(msg, sizeof(msg), "size=%" PRIu64, x->fsize);
    queue(x, 'X', msg, strlen(msg));
    x->ended = 1;
}

/* G and L: more of the answer while the gateway takes it. */
static void file_refill(struct xc *x)
{
    char buf[READ_CHUNK];
    while (!x->ended && x->olen < OUT_MAX && (x->file_fd >= 0 || x->dir)) {
        if (x->file_fd >= 0) {
            ssize_t n = read(x->file_fd, buf, sizeof(buf));
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                int e = errno;
                file_cleanup(x);
                file_fail(x, e, x->fpath);
                return;
            }
            if (n == 0) {
                file_cleanup(x);
                char msg[40];
                snprintf(msg, sizeof(msg), "size=%" PRIu64, x->fsize);
                queue(x, 'X', msg, strlen(msg));
                x->ended = 1;
                return;
            }
            x->fsize += (uint64_t)n;
            if (queue(x, 'O', buf, (size_t)n) < 0) {
                file_cleanup(x);
                fail(x, "io: out of memory");
                return;
            }
            continue;
        }
        errno = 0;
        struct dirent *e = readdir(x->dir);
        if (!e) {
            int err = errno;
            file_cleanup(x);
            if (err)
                file_fail(x, err, x->fpath);
            else
                queue(x, 'X', "ok", 2), x->ended = 1;
            return;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(x->dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* gone meanwhile */
        char type = S_ISREG(st.st_mode)   ? 'f'
                    : S_ISDIR(st.st_mode) ? 'd'
                    : S_ISLNK(st.st_mode) ? 'l'
                                          : 'o';
        int n = snprintf(
            buf, sizeof(buf), "%c%c%" PRIu64 "%c%" PRIu64 "%c%o%c%s", type, 0, (uint64_t)st.st_size,
            0, (uint64_t)st.st_mtim.tv_sec * 1000 + (uint64_t)st.st_mtim.tv_nsec / 1000000, 0,
            (unsigned)(st.st_mode & 07777), 0, e->d_name);
        if (n > 0 && (size_t)n < sizeof(buf))
            queue(x, 'O', buf, (size_t)n);
    }
}

/* ------------------------------------------------------------------ I/O */

/* Frames from the gateway in x->rbuf: spec, start, stdin. Returns -1 on a protocol error. */
/* Whether <x> may start: with a key (given by BIND, or required before one came: a guest),
 * the connection must have presented the same one (compared in constant time). */
static int key_ok(const struct xc *x)
{
    if (!X.key[0] && !X.cfg.require_key)
        return 1;
    if (!X.key[0])
        return 0;
    unsigned char diff = 0;
    for (size_t i = 0; i < AGENT_EXEC_KEY_LEN; i++)
        diff |= (unsigned char)(x->key[i] ^ X.key[i]);
    return diff == 0;
}

static int consume(struct xc *x)
{
    size_t off = 0;
    while (!x->ended) {
        char type;
        const char *p;
        size_t n;
        long used = cm_frame_next(x->rbuf + off, x->rlen - off, &type, &p, &n);
        if (used < 0)
            return -1;
        if (used == 0)
            break;
        if (!x->started &&
            (type == 'S' || type == 'G' || type == 'W' || type == 'U' || type == 'L') &&
            X.holding && agent_now_ms() < x->hold_until)
            break; /* starts at BIND (or at its hold deadline), as the app's connections do */
        if (!x->started &&
            (type == 'S' || type == 'G' || type == 'W' || type == 'U' || type == 'L') &&
            !key_ok(x)) {
            /* Closed without a word (and at once: a caller without the key gets nothing,
             * not even a connection to keep open). */
            fprintf(stderr, "berth-agent: exec channel: a connection without this sandbox's "
                            "key, closed\n");
            return -1;
        }
        if (!x->started) {
            const char *err;
            if (type == 'S') {
                start(x);
            } else if (type == 'P') {
                if (x->fpath || n == 0 || n > AGENT_PATH_MAX || !(x->fpath = malloc(n + 1)))
                    fail(x, "bad_path: one path of 1 to 4096 bytes");
                else
                    memcpy(x->fpath, p, n), x->fpath[n] = '\0';
            } else if (type == 'G' || type == 'W' || type == 'U' || type == 'L') {
                file_start(x, type);
            } else if (agent_exec_spec_add(&x->spec, type, p, n, &err) < 0) {
                fail(x, err ? err : "out of memory");
            }
        } else if (x->fop == 'W' && type == 'I') {
            file_write(x, p, n);
        } else if (x->fop == 'W' && type == 'Z') {
            file_commit(x);
        } else if (x->fop) {
            return -1;
        } else if (type == 'I' && !x->stdin_eof) {
            if (x->in_w.fd >= 0) { /* else the command closed its stdin: dropped */
                char *b = realloc(x->ibuf, x->ilen + n ? x->ilen + n : 1);
                if (!b)
                    return -1;
                x->ibuf = b;
                memcpy(x->ibuf + x->ilen, p, n);
                x->ilen += n;
            }
        } else if (type == 'Z') {
            x->stdin_eof = 1;
        } else {
            return -1;
        }
        off += (size_t)used;
    }
    memmove(x->rbuf, x->rbuf + off, x->rlen - off);
    x->rlen -= off;
    return 0;
}

static void gone(struct xc *x)
{
    x->conn_gone = 1;
    agent_watch_close(X.epfd, &x->cw);
    kill_group(x);
}

static void on_conn(struct agent_watch *w, uint32_t ev)
{
    struct xc *x = AGENT_CONTAINER_OF(w, struct xc, cw);
    if (x->shut) { /* only waiting for the gateway's close */
        char drop[4096];
        ssize_t n = recv(w->fd, drop, sizeof(drop), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            gone(x);
        update(x);
        return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t n = recv(w->fd, x->rbuf + x->rlen, sizeof(x->rbuf) - x->rlen, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            gone(x);
            update(x);
            return;
        }
        if (n > 0) {
            x->rlen += (size_t)n;
            if (consume(x) < 0) {
                gone(x);
                update(x);
                return;
            }
        }
    }
    if ((ev & EPOLLOUT) && x->olen) {
        ssize_t n = send(w->fd, x->obuf, x->olen, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            gone(x);
            update(x);
            return;
        }
        if (n > 0) {
            memmove(x->obuf, x->obuf + n, x->olen - (size_t)n);
            x->olen -= (size_t)n;
        }
    }
    update(x);
}

static void on_output(struct xc *x, struct agent_watch *w, char type)
{
    char buf[READ_CHUNK];
    ssize_t n = read(w->fd, buf, sizeof(buf));
    if (n > 0 && !x->conn_gone && queue(x, type, buf, (size_t)n) < 0)
        n = -1;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        agent_watch_close(X.epfd, w);
    update(x);
}

static void on_out(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    on_output(AGENT_CONTAINER_OF(w, struct xc, out_w), w, 'O');
}

static void on_err(struct agent_watch *w, uint32_t ev)
{
    (void)ev;
    on_output(AGENT_CONTAINER_OF(w, struct xc, err_w), w, 'R');
}

static void on_in(struct agent_watch *w, uint32_t ev)
{
    struct xc *x = AGENT_CONTAINER_OF(w, struct xc, in_w);
    (void)ev;
    if (x->ilen) {
        ssize_t n = write(w->fd, x->ibuf, x->ilen);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            x->ilen = 0; /* EPIPE: the command closed its stdin */
            agent_watch_close(X.epfd, w);
        } else if (n > 0) {
            memmove(x->ibuf, x->ibuf + n, x->ilen - (size_t)n);
            x->ilen -= (size_t)n;
        }
    }
    update(x);
}

/* Sets every descriptor's interest from the state; ends and frees what is over. */
static void update(struct xc *x)
{
    if (x->dead)
        return;
    if ((x->fop == 'G' || x->fop == 'L') && !x->ended && !x->conn_gone)
        file_refill(x);
    if (x->started && x->in_w.fd >= 0 && x->stdin_eof && x->ilen == 0)
        agent_watch_close(X.epfd, &x->in_w);
    if (x->exited && !x->ended && x->out_w.fd < 0 && x->err_w.fd < 0)
        report_end(x);
    if (x->conn_gone && x->ended)
        x->olen = 0;
    int out_room = x->olen < OUT_MAX && !x->ended;
    if (x->cw.fd >= 0) {
        uint32_t ev =
            (x->olen ? EPOLLOUT : 0) |
            ((!x->started || x->ilen < IN_MAX) && !x->ended && x->rlen < sizeof(x->rbuf) ? EPOLLIN
                                                                                         : 0);
        if (x->ended && x->olen == 0 && !x->shut) {
            /* All said: the gateway sees the end; what it still sends (the rest of an upload
             * that failed) is read and dropped until it closes, so that our close cannot
             * reset the connection before it has read our last frame. */
            shutdown(x->cw.fd, SHUT_WR);
            x->shut = 1;
        }
        if (x->shut)
            ev = EPOLLIN;
        if (agent_watch_set(X.epfd, &x->cw, ev) < 0) {
            gone(x);
        }
    }
    if (x->out_w.fd >= 0)
        agent_watch_set(X.epfd, &x->out_w, out_room ? EPOLLIN : 0);
    if (x->err_w.fd >= 0)
        agent_watch_set(X.epfd, &x->err_w, out_room ? EPOLLIN : 0);
    if (x->in_w.fd >= 0)
        agent_watch_set(X.epfd, &x->in_w, x->ilen ? EPOLLOUT : 0);
    /* Over when the gateway has it all (or is gone) and the command is reaped. */
    if (x->cw.fd < 0 && (!x->started || x->pid == 0 || (x->exited && x->ended)) &&
        !(x->running && !x->exited)) {
        close_pipes(x);
        file_cleanup(x);
        x->dead = 1;
    }
}

/* ------------------------------------------------------------------ the agent's side */

void agent_exec_set_key(const char *key)
{
    snprintf(X.key, sizeof(X.key), "%s", key && strlen(key) == AGENT_EXEC_KEY_LEN ? key : "");
}

void agent_exec_take(int fd, const char *pending, size_t len, const char *key)
{
    /* Connections that have not started anything are bounded: each holds a read buffer. */
    unsigned waiting = 0;
    for (const struct xc *o = X.all; o; o = o->next)
        waiting += !o->dead && !o->started;
    struct xc *x = waiting < UNSTARTED_MAX ? calloc(1, sizeof(*x)) : NULL;
    if (!x || len > sizeof(x->rbuf)) {
        free(x);
        close(fd);
        return;
    }
    agent_watch_init(&x->cw, fd, on_conn);
    agent_watch_init(&x->in_w, -1, on_in);
    agent_watch_init(&x->out_w, -1, on_out);
    agent_watch_init(&x->err_w, -1, on_err);
    x->file_fd = x->parent_fd = -1;
    x->hold_until = agent_now_ms() + X.cfg.hold_ms;
    x->next = X.all;
    X.all = x;
    memcpy(x->rbuf, pending, len);
    x->rlen = len;
    snprintf(x->key, sizeof(x->key), "%s", key ? key : "");
    if (consume(x) < 0)
        gone(x);
    update(x);
}

int agent_exec_reaped(pid_t pid, int status)
{
    for (struct xc *x = X.all; x; x = x->next) {
        if (x->pid != pid || x->exited)
            continue;
        x->status = status;
        if (!x->running) { /* it never ran: its F is queued */
            x->pid = 0;
            update(x);
            return 1;
        }
        x->exited = 1;
        x->running = 0;
        X.running--;
        kill_group(x); /* what it left behind in its group */
        x->pid = 0;
        x->drain_until = agent_now_ms() + DRAIN_MS;
        update(x);
        return 1;
    }
    return 0;
}

uint64_t agent_exec_tick(uint64_t now_ms)
{
    uint64_t next = 0;
    for (struct xc *x = X.all; x; x = x->next) {
        if (X.holding && !x->dead && !x->started && x->cw.fd >= 0) {
            if (now_ms >= x->hold_until) {
                if (consume(x) < 0)
                    gone(x);
                update(x);
            } else if (!next || x->hold_until < next) {
                next = x->hold_until;
            }
        }
        if (x->dead)
            continue;
        if (x->running && x->deadline) {
            if (now_ms >= x->deadline) {
                x->timed_out = 1;
                x->deadline = 0;
                kill_group(x);
            } else if (!next || x->deadline < next) {
                next = x->deadline;
            }
        }
        if (x->exited && !x->ended) {
            if (now_ms >= x->drain_until) {
                report_end(x); /* a pipe held open by something outside its group */
                update(x);
            } else if (!next || x->drain_until < next) {
                next = x->drain_until;
            }
        }
    }
    return next;
}

void agent_exec_reap(void)
{
    for (struct xc **p = &X.all; *p;) {
        struct xc *x = *p;
        if (!x->dead) {
            p = &x->next;
            continue;
        }
        *p = x->next;
        agent_exec_spec_free(&x->spec);
        free(x->fpath);
        free(x->fbase);
        free(x->obuf);
        free(x->ibuf);
        free(x);
    }
}
