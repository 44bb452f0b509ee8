/* A tunnel after 101 Switching Protocols: bytes both ways, each side's reading paused
 * while the other's output is above the mark. */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <sys/uio.h>

#include "gateway/metrics.h"
#include "gateway/upstream.h"
#include "gateway/worker.h"

void gw_tunnel_start(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    c->state = CS_TUNNEL;
    c->req_done = 1;
    gw_stream_set_timeouts(gw_upconn_stream(c->up), w->to_stream_idle, NULL);
    gw_stream_set_timeouts(&c->cs, w->to_stream_idle, NULL);
    gw_stream_read_enable(&c->cs);
}

void gw_tunnel_pump(struct gw_conn *c)
{
    struct gw_stream *us = gw_upconn_stream(c->up);
    struct evbuffer *cin = c->cs.in, *cout = c->cs.out;
    struct evbuffer *uin = us->in, *uout = us->out;
    size_t n = evbuffer_get_length(cin);
    if (n) {
        evbuffer_add_buffer(uout, cin);
        GW_XFER_IN(c, n);
    }
    n = evbuffer_get_length(uin);
    if (n) {
        evbuffer_add_buffer(cout, uin);
        GW_XFER_OUT(c, n);
    }
    gw_stream_flush(&c->cs);
    gw_stream_flush(us);
    gw_conn_backpressure(c, us, 0);
    gw_conn_backpressure(c, &c->cs, 0);
}

void gw_tunnel_shut_up(struct gw_conn *c)
{
    struct gw_stream *us = gw_upconn_stream(c->up);
    if (!c->up_wshut || evbuffer_get_length(us->out))
        return;
    c->up_wshut = 0;
    shutdown(us->fd, SHUT_WR);
}

/* A tunnel's bytes read into an empty input: sent to the other side straight from the read
 * (what its socket refuses is copied to its output); reading pauses while that output is
 * above the mark, as in gw_tunnel_pump(). */
size_t gw_tunnel_pass(struct gw_conn *c, struct gw_stream *to, const char *data, size_t len)
{
    struct iovec iov = {(void *)data, len};
    gw_stream_write(to, &iov, 1);
    if (to == &c->cs)
        GW_XFER_OUT(c, len);
    else
        GW_XFER_IN(c, len);
    gw_conn_backpressure(c, to, 0);
    return len;
}
