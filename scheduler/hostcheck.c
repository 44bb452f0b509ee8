#include "scheduler/hostcheck.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "scheduler/seccomp.h"

/* Waits for <pid> and turns its exit status (0 or an errno) into a reason. */
static int reap(pid_t pid, const char *what, char *why, size_t len)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            snprintf(why, len, "%s: waitpid: %s", what, strerror(errno));
            return 0;
        }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 1;
    if (WIFEXITED(st))
        snprintf(why, len, "%s: %s", what, strerror(WEXITSTATUS(st)));
    else
        snprintf(why, len, "%s: killed by signal %d", what, WTERMSIG(st));
    return 0;
}

static int probe_userns(uint32_t uid_base, char *why, size_t len)
{
    int up[2], down[2];
    if (pipe2(up, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0) {
        snprintf(why, len, "pipe: %s", strerror(errno));
        return 0;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, len, "fork: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) {
        char c;
        close(up[0]);
        close(down[1]);
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
            _exit(errno ? errno : 1);
        if (write(up[1], "u", 1) != 1 || read(down[0], &c, 1) != 1)
            _exit(EPIPE);
        if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
            _exit(errno ? errno : 1);
        _exit(getuid() == 0 ? 0 : EINVAL);
    }
    close(up[1]);
    close(down[0]);
    char c, path[64], line[64];
    int ok = read(up[0], &c, 1) == 1;
    const char *step = "unshare(CLONE_NEWUSER)";
    for (int i = 0; ok && i < 2; i++) {
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, i ? "gid_map" : "uid_map");
        int n = snprintf(line, sizeof(line), "0 %u 1\n", uid_base);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        ok = fd >= 0 && write(fd, line, (size_t)n) == n;
        if (fd >= 0)
            close(fd);
        if (!ok) {
            snprintf(why, len, "writing %s: %s", path, strerror(errno));
            kill(pid, SIGKILL);
        }
        step = "becoming the namespace's root";
    }
    if (ok && write(down[1], "g", 1) != 1)
        kill(pid, SIGKILL);
    close(up[0]);
    close(down[1]);
    char child_why[160] = "";
    int r = reap(pid, step, child_why, sizeof(child_why));
    if (!r && !why[0])
        snprintf(why, len, "%s", child_why);
    return ok && r;
}

static int probe_seccomp(const struct sch_seccomp_prog *prog, char *why, size_t len)
{
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, len, "fork: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) {
        struct sock_fprog fp = {.len = prog->len, .filter = prog->filter};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp, 0, 0) < 0)
            _exit(errno ? errno : 1);
        long r = syscall(SYS_acct, NULL);
        if (r != -1 || errno != EPERM)
            _exit(ENOTSUP);
        _exit(syscall(SYS_getpid) > 0 ? 0 : EINVAL);
    }
    return reap(pid, "installing the default filter", why, len);
}

void sch_hostcheck(struct sch_host_support *ret, uint32_t uid_base)
{
    /* Start-up asks more than once (the driver registry's probe, the process driver's own
     * start, --check): the children fork once. The host does not change under us meanwhile;
     * single-threaded start-up. */
    static struct sch_host_support memo;
    static uint32_t memo_uid_base;
    static int memo_set;
    if (memo_set && memo_uid_base == uid_base) {
        *ret = memo;
        return;
    }
    memset(ret, 0, sizeof(*ret));
    ret->userns = probe_userns(uid_base, ret->userns_why, sizeof(ret->userns_why));
    struct sch_seccomp_prog prog = {0};
    char cerr[sizeof(ret->seccomp_why)] = "";
    if (sch_seccomp_compile("default", &prog, cerr, sizeof(cerr)) != 0 || !prog.len)
        snprintf(ret->seccomp_why, sizeof(ret->seccomp_why), "%s",
                 *cerr ? cerr : "no filter compiled");
    else
        ret->seccomp = probe_seccomp(&prog, ret->seccomp_why, sizeof(ret->seccomp_why));
    sch_seccomp_prog_fini(&prog);
    memo = *ret;
    memo_uid_base = uid_base;
    memo_set = 1;
}
