#include "scheduler/helper.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
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
