/* A non-blocking socket with an input and an output buffer on one worker's loop: the part of
 * libevent's bufferevent the data plane uses, without what the hot path cannot afford (an
 * ioctl(FIONREAD) before every read to size it, an epoll add and delete around every write,
 * deferred callbacks, rate-limit checks, locks). Reads land in the loop's scratch buffer, are
 * offered to the peek callback when the input is empty (the owner may pass them on from
 * there) and appended to the input otherwise (one copy, no chain sized for the largest
 * possible read); writes go out
 * at once with gw_stream_flush() and only what the socket refuses waits for EV_WRITE.
 *
 * Callbacks (all optional) run on the loop: on_read after bytes were appended to the input,
 * on_write after a write left the output at or below the write low watermark, on_event with
 * GW_STREAM_READING or GW_STREAM_WRITING plus one of EOF, ERROR, TIMEOUT, or CONNECTED alone.
 * After EOF, ERROR or TIMEOUT on a side, that side is disabled. A callback may close the
 * stream; nothing touches it after a callback returns. No function here calls a callback
 * synchronously. Embedded in its owner (no allocation but the two buffers); one loop only. */
#ifndef GW_STREAM_H
#define GW_STREAM_H

#include <event2/event_struct.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct evbuffer;
struct event_base;
struct gw_stream;
typedef struct ssl_st SSL;

#define GW_STREAM_READING 0x01
#define GW_STREAM_WRITING 0x02
#define GW_STREAM_EOF 0x10
#define GW_STREAM_ERROR 0x20
#define GW_STREAM_TIMEOUT 0x40
#define GW_STREAM_CONNECTED 0x80

typedef void (*gw_stream_data_cb)(struct gw_stream *s, void *arg);
typedef void (*gw_stream_event_cb)(struct gw_stream *s, short what, void *arg);
/* Offered a read that found the input empty, straight from the scratch buffer, before it is
 * appended: returns how many of the <len> bytes it took. All of them: done (the stream may be
 * finished then). Fewer: the stream must still be open; the rest is appended and on_read
 * called as usual (0: as if there were no peek callback). */
typedef size_t (*gw_stream_peek_cb)(struct gw_stream *s, const char *data, size_t len,
                                    void *arg);

/* Where reads land before they are appended to an input: one per loop, shared by its streams. */
struct gw_stream_scratch {
    char *buf;
    size_t size;
};

/* A virtual stream (no socket): an HTTP/2 stream seen by the HTTP/1 exchange as its client
 * connection. The codec that owns it puts request bytes into its input
 * (gw_stream_v_input()), takes response bytes from its output when it has room
 * (gw_stream_v_taken()), and learns through these what the stream's user does. */
struct gw_stream_vops {
    void (*output)(void *ctx);   /* the output holds bytes to take (called from a flush) */
    void (*shutdown)(void *ctx); /* no more output: the response ends with what is there */
    /* the stream is being finished: what its output still holds (<out>) may be taken over
     * with evbuffer_add_buffer(); the stream is gone after it */
    void (*closed)(void *ctx, struct evbuffer *out);
};

struct gw_stream {
    int fd;
    const struct gw_stream_vops *vops; /* a virtual stream's codec, else NULL */
    void *vctx;
    struct event rd, wr;
    struct event tmo; /* the read timeout (lazy: see stream.c) */
    uint64_t rd_since, tmo_at; /* coarse clock: reading (re)started or last read; tmo due */
    struct evbuffer *in, *out;
    struct gw_stream_scratch *scratch;
    gw_stream_data_cb on_read, on_write;
    gw_stream_event_cb on_event;
    gw_stream_peek_cb on_peek;
    void *arg;
    const struct timeval *rtimeout, *wtimeout; /* NULL: none; borrowed, may be common timeouts */
    const struct timeval *v_wtimeout; /* virtual: the output may wait this long for the codec */
    size_t read_high; /* stop reading while the input holds this much; 0: no limit */
    size_t write_low; /* on_write once the output is down to this */
    int error;        /* errno of the last failed read, write or connect */
    SSL *ssl;         /* TLS on the socket (server side), or NULL: owned, freed by fini */
    unsigned want_read : 1;  /* reading enabled by the owner */
    unsigned rd_added : 1;
    unsigned wr_added : 1;
    unsigned tmo_added : 1;
    unsigned suspended : 1;  /* reading held: input at read_high */
    unsigned connecting : 1;
    unsigned failed : 1;     /* EOF, error or timeout seen: not reusable */
    unsigned open : 1;
    unsigned rd_wants_wr : 1; /* TLS: a read (the handshake) waits for the socket to be writable */
    unsigned wr_wants_rd : 1; /* TLS: a write waits for bytes from the peer */
    unsigned v_new : 1;       /* virtual: bytes came that on_read was not told of */
    short v_fail;             /* virtual: READING|EOF or READING|ERROR to report */
};

/* Sets up <s> on <fd> (non-blocking; <s> takes ownership of it, also on failure, and closes it
 * in gw_stream_fini()). Reading and writing start disabled. Returns 0 or -ENOMEM. */
int gw_stream_init(struct gw_stream *s, struct event_base *base, int fd,
                   struct gw_stream_scratch *scratch);
/* Creates a non-blocking socket for <sa> and starts connecting <s> to it; GW_STREAM_CONNECTED
 * (or WRITING|ERROR, WRITING|TIMEOUT after the write timeout) arrives on the loop. Output may be
 * queued meanwhile; gw_stream_flush() waits for the connection. Returns 0 or a negative errno
 * (<s> is then finished, as after gw_stream_fini()). */
int gw_stream_connect(struct gw_stream *s, struct event_base *base, const struct sockaddr *sa,
                      socklen_t salen, struct gw_stream_scratch *scratch);
/* Removes the events, frees the buffers, closes the socket. Takes a finished or zeroed <s>. */
void gw_stream_fini(struct gw_stream *s);
/* Sets up <s> as a virtual stream of <ops> and <ctx> (see struct gw_stream_vops): reading and
 * writing disabled, no socket. <s> is zeroed, or was finished with gw_stream_fini_keep() (its
 * buffers are reused: no allocation). The read timeout works as on a socket; v_wtimeout (set by
 * the owner; gw_stream_set_timeouts() leaves it) runs while the output waits for the codec.
 * Returns 0 or -ENOMEM. */
int gw_stream_init_virtual(struct gw_stream *s, struct event_base *base,
                           const struct gw_stream_vops *ops, void *ctx);
/* gw_stream_fini() of a virtual stream that keeps its (emptied) buffers for
 * gw_stream_init_virtual(); gw_stream_fini() frees them. */
void gw_stream_fini_keep(struct gw_stream *s);
/* The codec's side of a virtual stream: <len> request bytes arrive (on_read follows on the
 * loop while reading is enabled); -ENOMEM or 0. */
int gw_stream_v_input(struct gw_stream *s, const void *data, size_t len);
/* Like gw_stream_v_input(), the bytes moved from <buf>. */
int gw_stream_v_input_buffer(struct gw_stream *s, struct evbuffer *buf);
/* The peer ended (GW_STREAM_EOF) or reset (GW_STREAM_ERROR) its side: reported through
 * on_event on the loop, once the input was read. */
void gw_stream_v_fail(struct gw_stream *s, short what);
/* The codec took bytes from the output: on_write follows on the loop at the low mark. */
void gw_stream_v_taken(struct gw_stream *s);

/* Speaks TLS on <s> from now on, as the server: the handshake is driven by the reads (no byte
 * reaches the input before it completed), writes go through the output (no writev from the
 * caller's memory) and SSL_write. Takes ownership of <ssl> (also on failure); call before
 * reading or writing. Returns 0 or -ENOMEM. */
int gw_stream_set_ssl(struct gw_stream *s, SSL *ssl);
/* 1 when <s> is not TLS or its handshake completed. */
int gw_stream_tls_ready(const struct gw_stream *s);
/* Half-closes the writing side once the output is out: a TLS close_notify first. */
void gw_stream_shutdown_write(struct gw_stream *s);

/* Sets the callbacks and their argument; clears the peek callback. */
void gw_stream_setcb(struct gw_stream *s, gw_stream_data_cb on_read, gw_stream_data_cb on_write,
                     gw_stream_event_cb on_event, void *arg);
/* Sets the peek callback (after gw_stream_setcb(): same argument). */
static inline void gw_stream_set_peek(struct gw_stream *s, gw_stream_peek_cb on_peek)
{
    s->on_peek = on_peek;
}
/* Read timeout: no byte read for that long while reading is enabled. Write timeout: output
 * waiting that long for the socket (and the connect timeout while connecting). NULL for none;
 * the timevals are borrowed (e.g. event_base_init_common_timeout() ones, which cost O(1)). */
void gw_stream_set_timeouts(struct gw_stream *s, const struct timeval *rt,
                            const struct timeval *wt);
void gw_stream_set_watermarks(struct gw_stream *s, size_t read_high, size_t write_low);
/* Enabling arms the read timeout; enabling again while reading changes nothing. */
void gw_stream_read_enable(struct gw_stream *s);
void gw_stream_read_disable(struct gw_stream *s);
static inline int gw_stream_reading(const struct gw_stream *s)
{
    return s->want_read;
}
/* Writes the output now as far as the socket takes it; the rest (or an error, reported as
 * WRITING|ERROR) goes through EV_WRITE. Does nothing while connecting or already waiting. */
void gw_stream_flush(struct gw_stream *s);
/* Sends <iov> after whatever output is queued: straight from the caller's memory with one
 * writev when nothing is queued (no copy into the output buffer), the part the socket refuses
 * (or all of it, while queued output or a connect waits) copied to the output. Errors as
 * gw_stream_flush(). */
struct iovec;
void gw_stream_write(struct gw_stream *s, const struct iovec *iov, int iovcnt);
/* 1 while output waits for the socket (EV_WRITE armed). */
static inline int gw_stream_writing(const struct gw_stream *s)
{
    return s->wr_added;
}

#endif
