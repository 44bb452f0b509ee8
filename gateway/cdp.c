/* Chrome DevTools discovery (/json...): the held response's body rewritten so its
 * WebSocket URLs name the gateway, re-framed with a Content-Length. */
#include "gateway/conn_int.h"

#include <event2/buffer.h>
#include <string.h>

#include "gateway/rewrite.h"
#include "gateway/worker.h"

int gw_cdp_emit(struct gw_conn *c)
{
    struct gw_worker *w = c->w;
    size_t head_len = evbuffer_get_length(c->aux_head);
    const char *head = (const char *)evbuffer_pullup(c->aux_head, -1);
    size_t body_len = evbuffer_get_length(c->aux);
    const char *body = (const char *)evbuffer_pullup(c->aux, -1);
    struct gw_h1_head h;
    llhttp_t tmp;
    h.headers = w->headers;
    h.max_headers = (uint32_t)w->gc->limits.max_headers;
    llhttp_init(&tmp, HTTP_RESPONSE, &w->resp_head_settings);
    struct evbuffer *nb = evbuffer_new();
    if (!nb || !head || gw_h1_parse_head(&tmp, &w->resp_head_settings, &h, head, head_len, 0) ||
        gw_rewrite_cdp(body ? body : "", body_len, c->host, strlen(c->host), c->secure, nb) < 0) {
        if (nb)
            evbuffer_free(nb);
        return -1;
    }
    c->reframe_len = evbuffer_get_length(nb);
    c->down->head(c, &h, head, head_len);
    evbuffer_add_buffer(c->cs.out, nb);
    evbuffer_free(nb);
    return 0;
}
