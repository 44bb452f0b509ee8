#include "gateway/api_sched.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/secret.h"
#include "gateway/config.h"

struct gw_sched_call {
    struct event_base *base;
    struct evhttp_connection *conn;
    gw_sched_cb cb;
    void *arg;
};

/* The connection must outlive its request's callback: freed on the next loop turn. */
static void free_conn(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    evhttp_connection_free(arg);
}

static void release(struct gw_sched_call *call)
{
    static const struct timeval zero = {0, 0};
    if (event_base_once(call->base, -1, EV_TIMEOUT, free_conn, call->conn, &zero) < 0)
        evhttp_connection_free_on_completion(call->conn);
    free(call);
}

static void on_reply(struct evhttp_request *req, void *arg)
{
    struct gw_sched_call *call = arg;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    const char *body = "";
    size_t len = 0;
    if (req && status) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        len = evbuffer_get_length(in);
        body = len ? (const char *)evbuffer_pullup(in, -1) : "";
        if (!body) {
            body = "";
            len = 0;
        }
    }
    gw_sched_cb cb = call->cb;
    void *cb_arg = call->arg;
    release(call);
    cb(status, body, len, cb_arg);
}

struct gw_sched_call *gw_sched_post(struct event_base *base, const struct gw_config *gc,
                                    const char *api, const char *path, cm_usec_t timeout,
                                    gw_sched_cb cb, void *arg)
{
    char host[128];
    const char *colon = strrchr(api, ':');
    if (!colon || colon == api || (size_t)(colon - api) >= sizeof(host))
        return NULL;
    memcpy(host, api, (size_t)(colon - api));
    host[colon - api] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return NULL;
    struct gw_sched_call *call = calloc(1, sizeof(*call));
    if (!call)
        return NULL;
    call->base = base;
    call->cb = cb;
    call->arg = arg;
    call->conn = evhttp_connection_base_new(base, NULL, host, (unsigned short)port);
    if (!call->conn) {
        free(call);
        return NULL;
    }
    struct timeval tv;
    cm_usec_to_tv(timeout, &tv);
    evhttp_connection_set_timeout_tv(call->conn, &tv);
    evhttp_connection_set_retries(call->conn, 0);
    struct evhttp_request *req = evhttp_request_new(on_reply, call);
    if (!req)
        goto fail;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    int rc = evhttp_add_header(h, "Host", api);
    if (rc == 0 && gc->scheduler_secret) {
        char auth[CM_SECRET_MAX + 8];
        snprintf(auth, sizeof(auth), "Bearer %s", gc->scheduler_secret);
        rc = evhttp_add_header(h, "Authorization", auth); /* copies it */
        explicit_bzero(auth, sizeof(auth));
    }
    if (rc < 0) {
        evhttp_request_free(req);
        goto fail;
    }
    /* evhttp frees <req> after the callback, and also when this call fails. */
    if (evhttp_make_request(call->conn, req, EVHTTP_REQ_POST, path) < 0)
        goto fail;
    return call;
fail:
    evhttp_connection_free(call->conn);
    free(call);
    return NULL;
}

void gw_sched_cancel(struct gw_sched_call *call)
{
    if (!call)
        return;
    evhttp_connection_free(call->conn); /* frees its pending request without a callback */
    free(call);
}
