#include "scheduler/agentctl.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "scheduler/agent/proto.h"

struct req {
    struct sch_agentctl *ac;
    struct req *prev, *next;
    struct bufferevent *bev;
    struct event *later; /* delivers an early failure outside the request call */
    sch_agentctl_cb cb;
    void *data;
    int err;
    char sync[40];   /* "SYNC <token>": the echo that fences the reply, "" once seen */
    unsigned skipped; /* lines before the echo: a reply meant for an earlier connection */
};

/* Every request is "SYNC <token>" then the command: the reply is the line after the echo.
 * A VM's agent may hold a reply the port could not take, and a host connection that left
 * before the guest saw it begin leaves that reply for the next one (agent.c, struct
 * ctl_port): the lines before the echo are skipped. An agent from before SYNC (an instance
 * adopted across an upgrade) answers "ERR unknown command" instead, and holds no replies. */
#define SYNC_OLD_AGENT "ERR unknown command"
#define SYNC_SKIP_MAX 16

struct sch_agentctl {
    struct event_base *base;
    struct req *reqs;
};

static void finish(struct req *r, const char *reply, int err)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->ac->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    sch_agentctl_cb cb = r->cb;
    void *data = r->data;
    if (r->bev)
        bufferevent_free(r->bev);
    if (r->later)
        event_free(r->later);
    free(r);
    cb(reply, err, data);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct req *r = arg;
    finish(r, NULL, r->err);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct req *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len;
    for (;;) {
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
        if (!line) {
            if (evbuffer_get_length(in) > AGENT_LINE_MAX)
                finish(r, NULL, -EPROTO);
            return;
        }
        if (!r->sync[0]) {
            finish(r, line, 0);
            free(line);
            return;
        }
        if (strcmp(line, r->sync) == 0 || strcmp(line, SYNC_OLD_AGENT) == 0) {
            r->sync[0] = '\0';
        } else if (++r->skipped > SYNC_SKIP_MAX) {
            free(line);
            finish(r, NULL, -EPROTO);
            return;
        }
        free(line);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct req *r = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED)
        return;
    finish(r, NULL, (what & BEV_EVENT_TIMEOUT) ? -ETIMEDOUT : -EPIPE);
}

struct sch_agentctl *sch_agentctl_create(struct event_base *base)
{
    struct sch_agentctl *ac = calloc(1, sizeof(*ac));
    if (ac)
        ac->base = base;
    return ac;
}

void sch_agentctl_destroy(struct sch_agentctl *ac)
{
    if (!ac)
        return;
    while (ac->reqs)
        finish(ac->reqs, NULL, -ECANCELED);
    free(ac);
}

int sch_agentctl_request(struct sch_agentctl *ac, const char *path, const char *line,
                         cm_usec_t timeout, sch_agentctl_cb cb, void *data)
{
    struct event_base *base = ac->base;
    struct req *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->ac = ac;
    r->cb = cb;
    r->data = data;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = -1;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        r->err = -ENAMETOOLONG;
    } else {
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            r->err = -errno; /* a unix connect either works at once or fails */
            if (fd >= 0)
                close(fd);
            fd = -1;
        }
    }
    if (fd >= 0) {
        r->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (!r->bev) {
            close(fd);
            r->err = -ENOMEM;
        }
    }
    if (r->bev) {
        struct timeval tv = {.tv_sec = (time_t)(timeout / CM_USEC_PER_SEC),
                             .tv_usec = (suseconds_t)(timeout % CM_USEC_PER_SEC)};
        bufferevent_setcb(r->bev, on_read, NULL, on_event, r);
        bufferevent_set_timeouts(r->bev, &tv, &tv);
        snprintf(r->sync, sizeof(r->sync), "SYNC %08x%08x", arc4random(), arc4random());
        if (bufferevent_write(r->bev, r->sync, strlen(r->sync)) < 0 ||
            bufferevent_write(r->bev, "\n", 1) < 0 ||
            bufferevent_write(r->bev, line, strlen(line)) < 0 ||
            bufferevent_write(r->bev, "\n", 1) < 0 || bufferevent_enable(r->bev, EV_READ) < 0) {
            bufferevent_free(r->bev);
            r->bev = NULL;
            r->err = -ENOMEM;
        }
    }
    if (!r->bev) {
        struct timeval zero = {0, 0};
        r->later = evtimer_new(base, on_later, r);
        if (!r->later || evtimer_add(r->later, &zero) < 0) {
            if (r->later)
                event_free(r->later);
            free(r);
            return -ENOMEM;
        }
    }
    r->next = ac->reqs;
    if (ac->reqs)
        ac->reqs->prev = r;
    ac->reqs = r;
    return 0;
}
