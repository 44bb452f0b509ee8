/* berth-agent's event loop: plain epoll (level-triggered) and a monotonic millisecond clock.
 * No libevent: the agent is a static binary that may be PID 1 of a microVM. */
#ifndef AGENT_LOOP_H
#define AGENT_LOOP_H

#include <stddef.h>
#include <stdint.h>

struct agent_watch;
typedef void (*agent_watch_cb)(struct agent_watch *w, uint32_t events);

/* One fd in the epoll set. Embed it in the object that owns the fd; the callback gets it back
 * (CM_CONTAINER_OF-style). <events> is the mask currently registered (0: not registered). */
struct agent_watch {
    int fd;
    uint32_t events;
    int added;
    agent_watch_cb cb;
};

void agent_watch_init(struct agent_watch *w, int fd, agent_watch_cb cb);
/* Registers or changes the interest of <w> (no syscall when unchanged); <events> 0 removes it
 * from the set, so an fd nobody wants to hear from cannot spin the loop with EPOLLHUP.
 * Returns 0 or -errno. */
int agent_watch_set(int epfd, struct agent_watch *w, uint32_t events);
/* Removes <w> from the set and closes its fd; takes an unset watch. */
void agent_watch_close(int epfd, struct agent_watch *w);

uint64_t agent_now_ms(void);

#define AGENT_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#endif
