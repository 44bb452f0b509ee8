/* HTTP/2: a stream's exchange, the HTTP/1.1 request written to its virtual stream and the
 * window given back as the exchange reads it (gateway/README.md "HTTP/2"). */
#include "gateway/h2_int.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

#include "gateway/conn_int.h"
#include "gateway/metrics.h"
#include "gateway/worker.h"

/* ------------------------------------------------------------------ the exchange's stream */

static void vs_output(void *ctx)
{
    struct gw_h2s *st = ctx;
    st->ready = 1;
    gw_h2_schedule(st->h2);
}

static void vs_shutdown(void *ctx)
{
    struct gw_h2s *st = ctx;
    st->shut = 1;
    st->ready = 1;
    if (st->vc && st->vc->resp_cut && !st->resp_end && !st->tunnel) {
        /* the instance failed mid-body: the client must not take what came as whole */
        st->cut = 1;
        GW_METRIC_INC(&st->h2->c->w->metrics, h2_resets);
    }
    gw_h2_schedule(st->h2);
}

static void consume(struct gw_h2s *st, size_t n)
{
    if (n > st->owed)
        n = st->owed;
    if (!n)
        return;
    st->owed -= n;
    if (!st->sclosed)
        nghttp2_session_consume(st->h2->s, st->id, n);
    else
        nghttp2_session_consume_connection(st->h2->s, n);
    gw_h2_schedule(st->h2);
}

static void on_vin_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

static void vs_closed(void *ctx, struct evbuffer *out)
{
    struct gw_h2s *st = ctx;
    st->vc = NULL;
    if (st->vin) { /* the exchange's input may serve another stream next */
        evbuffer_remove_cb(st->vin, on_vin_drained, st);
        st->vin = NULL;
    }
    consume(st, st->owed); /* request bytes the exchange will not read */
    if (st->sclosed) {
        gw_h2s_maybe_free(st);
        return;
    }
    if (!st->shut && !st->resp_end && !st->cut) {
        /* freed without ending its answer: cut (a timeout, an error, the window held shut) */
        st->cut = 1;
        GW_METRIC_INC(&st->h2->c->w->metrics, h2_resets);
        gw_h2_st_reset(st, NGHTTP2_INTERNAL_ERROR);
        gw_h2_schedule(st->h2);
        return;
    }
    if (evbuffer_get_length(out) && (st->src || (st->src = evbuffer_new())))
        evbuffer_add_buffer(st->src, out);
    /* the exchange's send timeout ends with it: what it left has its own */
    if (!st->h2->dead)
        evtimer_add(&st->stall, st->h2->c->w->to_h2_send);
    st->ready = 1;
    gw_h2_schedule(st->h2);
}

static const struct gw_stream_vops vs_ops = {vs_output, vs_shutdown, vs_closed};

/* An answer its exchange left behind waited send_timeout on the client's window: reset. */
void gw_h2_on_stall(evutil_socket_t fd, short what, void *arg)
{
    struct gw_h2s *st = arg;
    (void)fd, (void)what;
    if (st->sclosed)
        return;
    st->cut = 1;
    GW_METRIC_INC(&st->h2->c->w->metrics, h2_resets);
    gw_h2_st_reset(st, NGHTTP2_CANCEL);
    gw_h2_schedule(st->h2);
}

static void on_vin_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct gw_h2s *st = arg;
    if (info->n_deleted == 0)
        return;
    consume(st, evbuffer_get_length(buf) == 0 ? st->owed : info->n_deleted);
}

void gw_h2_add_line(struct evbuffer *b, const char *name, size_t nl, const char *value, size_t vl)
{
    evbuffer_add(b, name, nl);
    evbuffer_add(b, ": ", 2);
    evbuffer_add(b, value, vl);
    evbuffer_add(b, "\r\n", 2);
}

/* The request's head is whole: it goes to a new exchange as an HTTP/1.1 request. */
void gw_h2_begin_exchange(struct gw_h2s *st, int end_stream)
{
    struct gw_h2 *h2 = st->h2;
    struct gw_conn *c = h2->c;
    st->hdr_done = 1;
    if (st->too_big) {
        gw_h2_answer_error(st, GW_ERR_HEADERS_TOO_LARGE);
        return;
    }
    if (st->connect && !st->ws) {
        gw_h2_answer_error(st, st->protocol ? GW_ERR_NOT_IMPLEMENTED : GW_ERR_METHOD_NOT_ALLOWED);
        return;
    }
    if (!st->path || !st->method[0]) {
        gw_h2_answer_error(st, GW_ERR_BAD_REQUEST);
        return;
    }
    st->req_end = (unsigned)end_stream;
    struct evbuffer *head = h2->head;
    const char *m = st->ws ? "GET" : st->method;
    evbuffer_add(head, m, strlen(m));
    evbuffer_add(head, " ", 1);
    evbuffer_add(head, st->path, strlen(st->path));
    evbuffer_add(head, " HTTP/1.1\r\n", 11);
    if (st->authority)
        gw_h2_add_line(head, "host", 4, st->authority, strlen(st->authority));
    evbuffer_add_buffer(head, st->hdr);
    if (evbuffer_get_length(st->extra)) {
        evbuffer_add(head, "cookie: ", 8);
        evbuffer_add_buffer(head, st->extra);
        evbuffer_add(head, "\r\n", 2);
    }
    if (st->ws) {
        unsigned char nonce[16], key[32];
        if (RAND_bytes(nonce, sizeof(nonce)) != 1) { /* never our stack's bytes instead */
            evbuffer_drain(head, evbuffer_get_length(head));
            gw_h2_answer_error(st, GW_ERR_INTERNAL);
            return;
        }
        int kl = EVP_EncodeBlock(key, nonce, sizeof(nonce));
        evbuffer_add_printf(head,
                            "upgrade: websocket\r\nconnection: upgrade\r\n"
                            "sec-websocket-key: %.*s\r\n",
                            kl, key);
    } else if (!end_stream && !st->has_cl) {
        st->chunked = 1;
        evbuffer_add(head, "transfer-encoding: chunked\r\n", 28);
    }
    evbuffer_add(head, "\r\n", 2);
    struct gw_conn *vc = gw_conn_new_virtual(c, &vs_ops, st);
    if (!vc) {
        evbuffer_drain(head, evbuffer_get_length(head));
        gw_h2_answer_error(st, GW_ERR_OVERLOADED);
        return;
    }
    st->vc = vc;
    st->vin = vc->cs.in;
    evbuffer_add_cb(st->vin, on_vin_drained, st);
    gw_stream_v_input_buffer(&vc->cs, head); /* moves it: head is empty again */
}
