#include "scheduler/agent/loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

void agent_watch_init(struct agent_watch *w, int fd, agent_watch_cb cb)
{
    w->fd = fd;
    w->events = 0;
    w->added = 0;
    w->cb = cb;
}

int agent_watch_set(int epfd, struct agent_watch *w, uint32_t events)
{
    if (w->added && w->events == events)
        return 0;
    if (events == 0) {
        if (w->added && epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL) < 0)
            return -errno;
        w->added = 0;
        w->events = 0;
        return 0;
    }
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(epfd, w->added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev) < 0)
        return -errno;
    w->added = 1;
    w->events = events;
    return 0;
}

void agent_watch_close(int epfd, struct agent_watch *w)
{
    if (w->fd < 0)
        return;
    if (w->added)
        epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL);
    close(w->fd);
    w->fd = -1;
    w->added = 0;
    w->events = 0;
}

uint64_t agent_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
