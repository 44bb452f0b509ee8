/* The scheduler's helper processes (berth-relay, relay.c; berth-egress, egress.c): forked at
 * start-up, each with an event loop of its own, gone with the scheduler. relay.c says why they
 * are processes and not threads. */
#ifndef SCH_HELPER_H
#define SCH_HELPER_H

#include <sys/types.h>

/* In the child, right after fork(): names it <name>, makes it die with the scheduler
 * (PR_SET_PDEATHSIG), resets its signals (SIGPIPE ignored, SIGINT ignored: a terminal's ^C
 * stops the scheduler and so it; SIGTERM default; nothing blocked) and keeps of the scheduler's
 * descriptors only 0-2 and the <n> of <fds>, moved to 3, 4, ... (<fds> updated): its event
 * loop's, Redis connections and instances' sockets stay with the scheduler. _exit(1) on
 * failure, _exit(0) when the scheduler is gone already. */
void sch_helper_child_setup(const char *name, int *fds, int n);

/* In the child: overwrites each string of <wipe> (NULL-terminated; the scheduler's secrets,
 * which a helper that does not need them must not hold), then, when <uid> is not 0, gives up
 * root: no supplementary groups, gid and uid <uid> (nobody's), no_new_privs. _exit(1) when the
 * ids cannot be changed. */
void sch_helper_child_drop(char *const *wipe, unsigned uid);

/* accept4(<lfd>, non-blocking, close-on-exec) that does not leave a listener readable forever
 * when the process is out of descriptors: then one pending connection is taken with a spare
 * descriptor kept for this and closed at once. Returns the new descriptor, or -1 (errno
 * EAGAIN when there is nothing to accept, or after such a drop). */
int sch_helper_accept(int lfd);

/* Waits for *pid (when > 0) and closes *pidfd (when >= 0); both are reset. Returns the wait
 * status (0 when there was no process). */
int sch_helper_reap(pid_t *pid, int *pidfd);

#endif
