/* Two connected sockets joined both ways with splice(2): per direction a pipe, bytes moved
 * socket -> pipe -> socket without a copy through user space, at most <cap> bytes in flight
 * per direction (a direction reads only into an empty pipe: a pipe's slots can fill before its
 * bytes do, one per segment, and a socket that stays readable into a full pipe would spin the
 * loop). An EOF is passed on as shutdown(SHUT_WR) once its direction's bytes are written.
 * Used by the instance relay (relay.c) and the egress proxy (egress.c). One event loop; not
 * thread-safe. */
#ifndef SCH_SPLICE_H
#define SCH_SPLICE_H

#include <stddef.h>
#include <stdint.h>

struct event;
struct event_base;
struct sch_splice;

/* The relay ended: both directions done (<failed> 0) or a socket failed (1). The callback
 * owns <s> from then on (sch_splice_fini() it, and free what embeds it). */
typedef void (*sch_splice_done_cb)(struct sch_splice *s, int failed, void *arg);

struct sch_splice_half {
    int pipe[2];
    size_t n;       /* bytes in the pipe */
    int eof, shut;  /* the reading side ended; the writing side was shut down after it */
    uint64_t total; /* bytes moved in this direction */
};

/* Embed it; sch_splice_init() before anything else. fd[0] and fd[1] are the caller's to set;
 * from sch_splice_start() on they are the splice's (closed by sch_splice_fini()). */
struct sch_splice {
    int fd[2];
    struct event *rd[2], *wr[2];
    struct sch_splice_half h[2]; /* h[0]: fd[0] -> fd[1]; h[1]: fd[1] -> fd[0] */
    size_t cap;
    sch_splice_done_cb done;
    void *arg;
};

/* Every descriptor -1, nothing allocated. */
void sch_splice_init(struct sch_splice *s);
/* Starts moving bytes (s->fd[0] and s->fd[1] connected and non-blocking; bytes already
 * waiting in them go first). Returns 0, 1 when it already ended (<done> was called: do not
 * touch <s> any more), or -1 (nothing started; sch_splice_fini() it). */
int sch_splice_start(struct sch_splice *s, struct event_base *base, size_t cap,
                     sch_splice_done_cb done, void *arg);
/* Frees the events and pipes and closes both sockets. Takes an initialized struct in any
 * state. */
void sch_splice_fini(struct sch_splice *s);

#endif
