#include "scheduler/splice.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* splice() passes per pump call before yielding to other connections. */
#define PUMP_ROUNDS 8

void sch_splice_init(struct sch_splice *s)
{
    memset(s, 0, sizeof(*s));
    s->fd[0] = s->fd[1] = -1;
    for (int i = 0; i < 2; i++)
        s->h[i].pipe[0] = s->h[i].pipe[1] = -1;
}

void sch_splice_fini(struct sch_splice *s)
{
    for (int i = 0; i < 2; i++) {
        if (s->rd[i])
            event_free(s->rd[i]);
        if (s->wr[i])
            event_free(s->wr[i]);
        s->rd[i] = s->wr[i] = NULL;
        if (s->fd[i] >= 0)
            close(s->fd[i]);
        s->fd[i] = -1;
        for (int k = 0; k < 2; k++) {
            if (s->h[i].pipe[k] >= 0)
                close(s->h[i].pipe[k]);
            s->h[i].pipe[k] = -1;
        }
    }
}

/* Moves what it can of direction <d>, then arms the events it waits for. Returns 0, or -1
 * when the relay ended (<done> was called). */
static int pump(struct sch_splice *s, int d)
{
    struct sch_splice_half *h = &s->h[d];
    int from = s->fd[d], to = s->fd[1 - d];
    for (int round = 0; round < PUMP_ROUNDS; round++) {
        int moved = 0;
        if (!h->eof && h->n == 0) {
            ssize_t got =
                splice(from, NULL, h->pipe[1], NULL, s->cap, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (got > 0) {
                h->n += (size_t)got;
                moved = 1;
            } else if (got == 0) {
                h->eof = 1;
                moved = 1;
            } else if (errno != EAGAIN && errno != EINTR) {
                s->done(s, 1, s->arg);
                return -1;
            }
        }
        if (h->n > 0) {
            ssize_t put =
                splice(h->pipe[0], NULL, to, NULL, h->n, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (put > 0) {
                h->n -= (size_t)put;
                h->total += (uint64_t)put;
                moved = 1;
            } else if (put < 0 && errno != EAGAIN && errno != EINTR) {
                s->done(s, 1, s->arg);
                return -1;
            }
        }
        if (!moved)
            break;
    }
    if (h->eof && h->n == 0 && !h->shut) {
        shutdown(to, SHUT_WR);
        h->shut = 1;
    }
    if (s->h[0].shut && s->h[1].shut) {
        s->done(s, 0, s->arg);
        return -1;
    }
    if (!h->eof && h->n == 0)
        event_add(s->rd[d], NULL);
    else
        event_del(s->rd[d]);
    if (h->n > 0)
        event_add(s->wr[1 - d], NULL);
    else
        event_del(s->wr[1 - d]);
    return 0;
}

/* fd[i] readable: direction i can read; fd[i] writable: direction 1 - i can write. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct sch_splice *s = arg;
    (void)what;
    pump(s, fd == s->fd[0] ? 0 : 1);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct sch_splice *s = arg;
    (void)what;
    pump(s, fd == s->fd[0] ? 1 : 0);
}

int sch_splice_start(struct sch_splice *s, struct event_base *base, size_t cap,
                     sch_splice_done_cb done, void *arg)
{
    s->cap = cap;
    s->done = done;
    s->arg = arg;
    for (int i = 0; i < 2; i++) {
        if (pipe2(s->h[i].pipe, O_CLOEXEC | O_NONBLOCK) < 0)
            return -1;
        if (cap != 65536)
            fcntl(s->h[i].pipe[1], F_SETPIPE_SZ, (int)cap);
        s->rd[i] = event_new(base, s->fd[i], EV_READ, on_readable, s);
        s->wr[i] = event_new(base, s->fd[i], EV_WRITE, on_writable, s);
        if (!s->rd[i] || !s->wr[i])
            return -1;
    }
    if (pump(s, 0) < 0)
        return 1;
    return pump(s, 1) < 0 ? 1 : 0;
}
