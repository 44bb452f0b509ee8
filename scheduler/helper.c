#include "scheduler/helper.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

void sch_helper_child_setup(const char *name, int *fds, int n)
{
    prctl(PR_SET_NAME, name, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* First above the range they go to, so that moving one never clobbers another. */
    int high[8];
    if (n > 8)
        _exit(1);
    for (int i = 0; i < n; i++)
        if ((high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + 8)) < 0)
            _exit(1);
    for (int i = 0; i < n; i++) {
        if (dup2(high[i], 3 + i) < 0)
            _exit(1);
        fds[i] = 3 + i;
    }
    syscall(SYS_close_range, (unsigned)(3 + n), ~0u, 0u);
    if (getppid() == 1)
        _exit(0); /* the scheduler died before PR_SET_PDEATHSIG was in place */
}

void sch_helper_child_drop(char *const *wipe, unsigned uid)
{
    for (; wipe && *wipe; wipe++)
        OPENSSL_cleanse(*wipe, strlen(*wipe));
    if (!uid)
        return;
    if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0 ||
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        _exit(1);
}

int sch_helper_accept(int lfd)
{
    static int spare = -1;
    if (spare < 0)
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0 || (errno != EMFILE && errno != ENFILE) || spare < 0)
        return fd;
    close(spare);
    spare = -1;
    fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0)
        close(fd);
    spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    errno = EAGAIN;
    return -1;
}

int sch_helper_reap(pid_t *pid, int *pidfd)
{
    int status = 0;
    if (*pid > 0)
        while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
        }
    *pid = 0;
    if (*pidfd >= 0)
        close(*pidfd);
    *pidfd = -1;
    return status;
}
