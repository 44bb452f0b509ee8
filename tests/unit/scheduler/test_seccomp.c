/* scheduler/seccomp.c: the profiles compile for this ABI, are distinct, refuse what they list
 * (checked in a child that installs them), and unknown names are refused. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "scheduler/seccomp.h"
#include "tests/harness/test.h"

/* Installs <p> in a child and runs <probe> there; returns the probe's exit code. */
static int in_child(const struct sch_seccomp_prog *p, int (*probe)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        struct sock_fprog fp = {.len = p->len, .filter = p->filter};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fp, 0, 0) < 0)
            _exit(100);
        _exit(probe());
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 200 + WTERMSIG(st);
}

static int eperm(long r)
{
    return r == -1 && errno == EPERM;
}

static int default_refusals(void)
{
    if (!eperm(syscall(SYS_acct, NULL)))
        return 1;
    if (!eperm(syscall(SYS_mount, "none", "/", "tmpfs", 0, NULL)))
        return 2;
    if (!eperm(syscall(SYS_unshare, CLONE_NEWUSER)))
        return 3;
    if (!eperm(syscall(SYS_unshare, CLONE_NEWNS | CLONE_FILES)))
        return 4;
    if (!eperm(syscall(SYS_setns, 0, 0)))
        return 5;
    if (!eperm(syscall(SYS_open_by_handle_at, 0, NULL, 0)))
        return 6;
    if (!eperm(syscall(SYS_bpf, 0, NULL, 0)))
        return 7;
    long r = syscall(SYS_clone3, NULL, 0);
    if (r != -1 || errno != ENOSYS)
        return 8;
    /* Allowed: what every program needs, and unshare without namespace flags. */
    if (syscall(SYS_getpid) <= 0 || syscall(SYS_unshare, CLONE_FILES) != 0)
        return 9;
    if (socket(AF_VSOCK, SOCK_STREAM, 0) != -1 || errno != EAFNOSUPPORT)
        return 12;
    int s = socket(AF_NETLINK, SOCK_RAW, 0);
    if (s < 0)
        return 10; /* default leaves the other socket families alone */
    close(s);
    pid_t kid = fork(); /* clone without CLONE_NEW* works */
    if (kid == 0)
        _exit(0);
    return kid > 0 && waitpid(kid, NULL, 0) == kid ? 0 : 11;
}

static int strict_refusals(void)
{
    if (default_refusals() == 1)
        return 1;
    if (!eperm(syscall(SYS_ptrace, 0, 0, 0, 0)))
        return 2;
    if (!eperm(syscall(SYS_personality, 0xffffffff)))
        return 3;
    if (socket(AF_NETLINK, SOCK_RAW, 0) != -1 || errno != EAFNOSUPPORT)
        return 4;
    if (socket(AF_PACKET, SOCK_RAW, 0) != -1 || errno != EAFNOSUPPORT)
        return 5;
    int s = socket(AF_UNIX, SOCK_STREAM, 0), t = socket(AF_INET6, SOCK_STREAM, 0);
    if (s < 0 || t < 0)
        return 6;
    return 0;
}

TEST(profiles_compile_and_differ)
{
    struct sch_seccomp_prog d = {0}, s = {0};
    char err[160];
    CHECK_INT_EQ(sch_seccomp_compile("default", &d, err, sizeof(err)), 0);
    CHECK_INT_EQ(sch_seccomp_compile("strict", &s, err, sizeof(err)), 0);
    CHECK(d.len > 20 && s.len > d.len);
    sch_seccomp_prog_fini(&d);
    sch_seccomp_prog_fini(&s);
    CHECK_INT_EQ(d.len, 0);
}

TEST(unknown_profile_is_refused)
{
    struct sch_seccomp_prog p = {0};
    char err[160];
    CHECK_INT_EQ(sch_seccomp_compile("none", &p, err, sizeof(err)), -ENOENT);
    CHECK(test_contains(err, "unknown seccomp profile 'none'"));
    CHECK(sch_seccomp_known("strict") && sch_seccomp_known("default") && !sch_seccomp_known(""));
}

TEST(default_profile_refuses_with_eperm)
{
    struct sch_seccomp_prog p = {0};
    char err[160];
    CHECK_INT_EQ(sch_seccomp_compile("default", &p, err, sizeof(err)), 0);
    CHECK_INT_EQ(in_child(&p, default_refusals), 0);
    sch_seccomp_prog_fini(&p);
}

TEST(strict_profile_refuses_more)
{
    struct sch_seccomp_prog p = {0};
    char err[160];
    CHECK_INT_EQ(sch_seccomp_compile("strict", &p, err, sizeof(err)), 0);
    CHECK_INT_EQ(in_child(&p, strict_refusals), 0);
    sch_seccomp_prog_fini(&p);
}

TEST(denied_lists_name_the_issue_s_syscalls)
{
    const char *const want[] = {"mount",
                                "umount2",
                                "pivot_root",
                                "open_by_handle_at",
                                "name_to_handle_at",
                                "bpf",
                                "perf_event_open",
                                "keyctl",
                                "add_key",
                                "request_key",
                                "init_module",
                                "kexec_load",
                                "reboot",
                                "swapon",
                                "swapoff",
                                "settimeofday",
                                "clock_settime",
                                "acct",
                                "quotactl",
                                "syslog",
                                "userfaultfd",
                                "setns",
                                NULL};
    for (const char *const *w = want; *w; w++) {
        int found = 0;
        for (const char *const *d = sch_seccomp_denied("default"); *d; d++)
            found |= strcmp(*d, *w) == 0;
        CHECK_MSG(found, "%s not refused by default", *w);
    }
}
