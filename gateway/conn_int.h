/* The client connection's insides, shared by the modules that make up the client side of the
 * gateway: conn (the HTTP/1 connection and its exchange), binding (cache and claims), cors,
 * mcp (aliases and releases of MCP and keyless sessions), cdp (the discovery rewrite), tunnel
 * (bytes both ways after 101) and h1_write (the heads we write). Not an interface for anything
 * else in the gateway: conn.h is. */
#ifndef GW_CONN_INT_H
#define GW_CONN_INT_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "common/key.h"
#include "common/log.h"
#include "common/time.h"
#include "gateway/cache.h"
#include "gateway/config.h"
#include "gateway/errors.h"
#include "gateway/h1.h"
#include "gateway/metrics.h"
#include "gateway/stream.h"

struct gw_worker;
struct gw_h2;
struct gw_claim;
struct gw_upconn;
struct evbuffer;

enum key_kind {
    KEY_SID, /* platform key: x-fc-session-id, cookie, or one the gateway made */
    KEY_MCP, /* Mcp-Session-Id (an alias) */
    KEY_SSE, /* legacy MCP SSE sessionId / session_id query parameter (an alias) */
};

/* The source class each kind of key is hashed under (common/key.h). */
static inline const char *gw_conn_key_source(unsigned kind)
{
    return kind == KEY_MCP ? CM_KEY_SRC_MCP : kind == KEY_SSE ? CM_KEY_SRC_SSE : CM_KEY_SRC_SID;
}

/* A Redis operation a connection waits for; the connection may go away first. */
struct conn_op {
    struct gw_conn *c;
};

enum conn_state {
    CS_IDLE,    /* between requests: keep-alive timer armed */
    CS_HEAD,    /* receiving a request head: header timer armed */
    CS_ROUTING, /* waiting for a claim; client reading paused */
    CS_PROXY,   /* request sent or being sent, response awaited or being relayed */
    CS_TUNNEL,  /* after 101 Switching Protocols: bytes both ways */
    CS_CLOSING, /* flushing the last response, then lingering close */
    CS_H2,      /* HTTP/2: the codec (c->h2) owns the socket; streams run exchanges of their own */
};

/* The session a `no_key: new` route made for a connection's keyless requests (exchange.c);
 * an HTTP/2 connection's streams share their connection's. */
struct gw_conn_auto {
    char key[CM_HASH_HEX_LEN + 1];
    unsigned is_mcp : 1; /* its server minted an Mcp-Session-Id: see gw_exchange_begin() */
};

/* What the client side's codec does for an exchange: the exchange answers through these and
 * never writes the bytes of a protocol itself (HTTP/1: gw_h1_down in h1_write.c; HTTP/2:
 * gw_h2_down in h2_resp.c). A body follows its head into c->cs's output as the instance
 * framed it (HTTP/1.1: Content-Length, chunked, or up to the close), tunnel bytes after a 101
 * as they come: the HTTP/1 codec passes them on as they are, the HTTP/2 codec de-frames them
 * into DATA (and trailers). */
struct gw_down_ops {
    /* A response head rewritten from the instance's <h> (its bytes at <head>, <head_len>):
     * an interim one (1xx), the final one, or 101 before a tunnel. */
    void (*head)(struct gw_conn *c, const struct gw_h1_head *h, const char *head, size_t head_len);
    /* A whole response: its head (as above), then <body_len> body bytes after it at
     * <data> + <head_len> (a Content-Length body), counted as sent to the client. */
    void (*whole)(struct gw_conn *c, const struct gw_h1_head *h, const char *data, size_t head_len,
                  size_t body_len);
    /* An answer of the gateway's own: <status>, the header lines <fields> ("name: value\r\n",
     * the framing's included), the body <body> (not sent for a HEAD request); <close>: the
     * connection ends after it (HTTP/1). */
    void (*answer)(struct gw_conn *c, int status, const char *fields, size_t flen, const char *body,
                   size_t blen, int close);
};

/* A request id: the client's X-Request-Id when it sent a usable one, else ours (16 hex). */
#define GW_REQ_ID_MAX 128
/* The path kept for an exchange's access-log line (longer ones are cut, marked "..."). */
#define GW_ACC_PATH_MAX 256

struct gw_conn {
    struct gw_conn *next, *prev;
    struct gw_worker *w;
    struct gw_stream cs; /* the client's socket */
    enum conn_state state;
    struct event timer;
    const struct gw_route *route;
    struct gw_claim *claim;
    struct gw_upconn *up;
    llhttp_t req, resp;
    struct gw_h1_chunked chunk; /* our check of a chunked request body's framing */
    size_t head_len;            /* request head: in head_slot, else at the start of the input */
    char *head_slot;            /* the loop's slot holding a head that came whole in one read */
    size_t scan;                /* request bytes already searched for the end of the head */
    size_t rscan;               /* same for the response */
    uint64_t body_bytes;
    cm_usec_t t_start;
    cm_usec_t idle_since; /* CS_IDLE: when the last exchange ended (coarse clock) */
    struct cm_hash hash;  /* cache key: the session's hash, or the alias's */
    char hash_hex[CM_HASH_HEX_LEN + 1];
    struct cm_hash session;
    char session_hex[CM_HASH_HEX_LEN + 1];
    struct conn_op *op;        /* alias being stored */
    struct evbuffer *aux;      /* SSE sniff window, or the body being rewritten */
    struct evbuffer *aux_head; /* response head held back while its body is rewritten */
    char *host;                /* client's Host, kept for the CDP rewrite */
    size_t held;               /* response bytes parsed but held until the alias is stored */
    char alias_id[CM_KEY_MAX + 1];
    char key[CM_KEY_MAX + 1];
    struct gw_conn_auto own_auto;
    struct gw_conn_auto *autok; /* &own_auto, or an HTTP/2 connection's for its streams */
    struct gw_h2 *h2;           /* CS_H2: the codec */
    const struct gw_down_ops *down; /* the client side's codec, for the exchange's answers */
    char instance[GW_INSTANCE_ID_MAX];
    char addr[GW_ADDR_MAX];
    char peer[INET6_ADDRSTRLEN];
    int status;
    unsigned key_len : 8;
    unsigned req_keepalive : 1;
    unsigned req_done : 1;
    unsigned req_chunked : 1;  /* the request body is chunked: c->chunk checks it first */
    unsigned head_pending : 1; /* bodiless request: head kept for a retry (slot or input) */
    unsigned resp_head_done : 1;
    unsigned resp_keepalive : 1;
    unsigned close_after : 1;
    unsigned eof_body : 1; /* the response body ends with the instance's close (its head said) */
    unsigned resp_deferred : 1; /* gw_h1_scan() deferred on this response head (on_up_peek) */
    unsigned paused_client : 1; /* client reading paused: upstream output above high */
    unsigned paused_up : 1;     /* upstream reading paused: client output above high */
    unsigned head_method : 1;
    unsigned http10 : 1;
    unsigned upgrade_req : 1;
    unsigned issue_cookie : 1;
    unsigned from_cache : 1;
    unsigned retried : 1;
    unsigned reclaimed : 1;
    unsigned up_connected : 1;
    unsigned up_reused : 1;
    unsigned body_too_large : 1;
    unsigned dechunk : 1;
    unsigned in_stream : 1;
    unsigned shut : 1;
    unsigned kind : 2;
    unsigned had_mcp_id : 1;
    unsigned is_delete : 1;
    unsigned is_get : 1;
    unsigned cdp_path : 1;
    unsigned alias_pending : 1;
    unsigned alias_done : 1;
    unsigned sniff : 1;
    unsigned body_alias : 1;
    unsigned rewrite : 1;
    unsigned rewrite_overflow : 1;
    unsigned used_auto : 1;     /* this request is on the connection's own (no_key new) session */
    unsigned virt : 1;          /* an HTTP/2 stream's exchange (on a virtual stream) */
    unsigned h1_seen : 1;       /* bytes other than HTTP/2's preface came first */
    unsigned released : 1;      /* MCP DELETE: the session was released before the answer */
    unsigned head_timer : 1;    /* the timer runs header_timeout for the head being received */
    unsigned up_took : 1;       /* the instance took the request within resume_timeout */
    unsigned usage_on : 1;      /* counted in the loop's usage table (usage.h) until its end */
    unsigned keyless_new : 1;   /* no key: this request named a session of its own making */
    unsigned unproven : 1;      /* ...bound for it now, and not yet answered with success */
    unsigned secure : 1;        /* TLS: X-Forwarded-Proto https, Secure cookies, wss:// */
    unsigned up_wshut : 1;      /* tunnel: shut the instance's side once its output is out */
    unsigned resp_cut : 1;      /* the response ended short: the instance failed mid-body */
    uint8_t cors;               /* 1 + the route's cors_origins entry the Origin matched, or 0 */
    size_t reframe_len;         /* body length of a rewritten response */
    uint16_t preview_port;      /* preview host: the port inside the sandbox */
    unsigned req_id_client : 1; /* req_id is the client's (it goes upstream as it came) */
    unsigned acc_on : 1;        /* this exchange gets an access-log line */
    uint64_t xfer_in, xfer_out; /* body bytes of this exchange, client to instance and back */
    cm_usec_t t_head;           /* when the final response head went out; 0: not yet */
    char req_id[GW_REQ_ID_MAX + 1];
    char acc_method[16];
    char acc_path[GW_ACC_PATH_MAX + 4];
};

/* Body bytes of c's exchange toward the instance (IN) or the client (OUT): counted for the
 * worker's metrics and for the exchange's access-log line. */
#define GW_XFER_IN(c, n)                                                                           \
    do {                                                                                           \
        GW_METRIC_ADD(&(c)->w->metrics, bytes_in, (n));                                            \
        (c)->xfer_in += (uint64_t)(n);                                                             \
    } while (0)
#define GW_XFER_OUT(c, n)                                                                          \
    do {                                                                                           \
        GW_METRIC_ADD(&(c)->w->metrics, bytes_out, (n));                                           \
        (c)->xfer_out += (uint64_t)(n);                                                            \
    } while (0)

/* A log line about c's exchange: its request id goes last ("... req=<id>"). */
#define GW_XLOG(level, c, fmt, ...)                                                                \
    cm_log_##level("conn", fmt " req=%s", ##__VA_ARGS__, gw_conn_req_id(c))

/* c's request id, safe in a log line; "-" before its first exchange. */
static inline const char *gw_conn_req_id(const struct gw_conn *c)
{
    return c->req_id[0] ? c->req_id : "-";
}

/* The hashes as hex, made when first needed (logs, Redis scripts): not on the hot path. */
static inline const char *gw_conn_hash_hex(struct gw_conn *c)
{
    if (!c->hash_hex[0])
        cm_hash_hex(c->hash, c->hash_hex);
    return c->hash_hex;
}

static inline const char *gw_conn_sess_hex(struct gw_conn *c)
{
    if (!c->session_hex[0])
        cm_hash_hex(c->session, c->session_hex);
    return c->session_hex;
}

/* ---- conn.c */

/* Answers the exchange with error <e> (JSON body) and ends it; <close> closes the connection
 * after it (also done when the request is not whole or not keep-alive). A response already
 * started is cut instead. <c> may be gone after it. */
void gw_conn_send_error(struct gw_conn *c, enum gw_err e, int close);
/* Ends an exchange the gateway answered itself (status <status> already queued): the
 * connection closes, or waits for (or goes on with) the next request. */
void gw_conn_answered(struct gw_conn *c, int status, int close);
/* The request head kept for a retry is not needed any more: its slot or input bytes go. */
void gw_conn_drop_pending_head(struct gw_conn *c);
/* Flushes what is queued, then half-closes and lingers (CS_CLOSING). */
void gw_conn_begin_close(struct gw_conn *c);
/* Frees <c> at once: its claim cancelled, its upstream connection closed. */
void gw_conn_free(struct gw_conn *c);
/* After an exchange: closes (<close>), or waits for the next request, going on at once with
 * one already in the input (pipelined). */
void gw_conn_next(struct gw_conn *c, int close);
/* The request head kept for the exchange (c->head_len bytes), and that head parsed again into
 * <h> (GW_H1_OK, else a gw_h1 error). */
const char *gw_conn_head_data(struct gw_conn *c);
int gw_conn_parse_head(struct gw_conn *c, struct gw_h1_head *h, int try_scan);
/* The relay's one backpressure step, for every direction: when <to>'s output holds
 * limits.buffer_high or more (after a flush when <flush>), reading the other side pauses
 * (toward the client: the instance, paused_up; toward the instance: the client,
 * paused_client) until <to>'s write callback resumes it. Returns 1 when it paused. */
int gw_conn_backpressure(struct gw_conn *c, struct gw_stream *to, int flush);
/* Relays the request body from the client's input, as far as the instance's output allows. */
void gw_conn_relay_req_body(struct gw_conn *c);

/* An HTTP/2 stream's exchange on <parent>'s connection: a gw_conn of its own on a virtual
 * stream of <ops> and <ctx> (stream.h), one exchange long. NULL when out of memory. */
struct gw_conn *gw_conn_new_virtual(struct gw_conn *parent, const struct gw_stream_vops *ops,
                                    void *ctx);
/* The HTTP/2 codec of <c> gave up the connection: what is queued goes out, then it closes. */
void gw_conn_h2_close(struct gw_conn *c);

/* ---- exchange.c */

/* The request head of c->head_len bytes was found (parsed into <h> if <rc> is GW_H1_OK):
 * routes the exchange (an error answered, else forwarded from the cache or claimed). */
void gw_exchange_begin(struct gw_conn *c, struct gw_h1_head *h, int rc);
/* The final response head <h> decides the exchange's framing and keep-alive. */
void gw_exchange_final_head(struct gw_conn *c, const struct gw_h1_head *h);
/* The final response head went to the client: the request head goes, the response is counted. */
void gw_exchange_head_sent(struct gw_conn *c);
/* The response ended: the upstream connection goes back to its pool (or closes), and the
 * connection goes on (gw_conn_next()). */
void gw_exchange_finish(struct gw_conn *c);
/* The exchange ended (<aborted>: cut before its response was whole): no longer counted in
 * streams_active, and its access-log line written. Idempotent. */
void gw_exchange_end(struct gw_conn *c, int aborted);
/* Frees the feature buffers (SSE sniff window, CDP head and body, the Host copy). */
void gw_exchange_reset_aux(struct gw_conn *c);

/* ---- up_h1.c */

/* Sends the request to c->addr. <parsed> is the head parsed in this same callback (its slices
 * are still valid), or NULL to parse it again. */
void gw_up_forward(struct gw_conn *c, struct gw_h1_head *parsed);
/* Relays what the instance sent (head, then body), as far as the client's output allows. */
void gw_up_relay(struct gw_conn *c);
/* llhttp's on_body for responses (parser->data is the connection). */
int gw_up_on_body(llhttp_t *p, const char *at, size_t len);

/* ---- binding.c */

/* Asks the claimer for c's session (claim, lookup for a preview link, or an alias); reading
 * the client pauses meanwhile; forwards or answers the error when it returns. */
void gw_binding_claim(struct gw_conn *c);
/* Checks the stale cache entry <e> of c's session with Redis in the background. */
void gw_binding_refresh(struct gw_conn *c, struct gw_cache_entry *e);
/* The instance could not be reached: its binding is dropped from the cache, and a bodiless
 * request whose binding came from the cache is claimed once more; else 502/404. */
void gw_binding_unreachable(struct gw_conn *c);

/* ---- cors.c */

/* Routes with CORS handled by the gateway: notes whether the request's Origin is allowed
 * (c->cors), and answers a preflight itself. Returns 1 when the request was answered. */
int gw_cors_request(struct gw_conn *c, const struct gw_h1_head *h);
/* The CORS header lines of an answer to an allowed Origin (c->cors != 0) into <buf>; their
 * length (< cap). */
size_t gw_cors_headers(const struct gw_conn *c, char *buf, size_t cap);

/* ---- mcp.c */

/* Releases the session made for a keyless request whose answer did not start it. */
void gw_mcp_release_unused(struct gw_conn *c, const char *why);
/* Records c->alias_id (of <source>, common/key.h) as an alias of c's session before the
 * client may use it; upstream reading pauses meanwhile. <c> may be gone after it. */
void gw_mcp_store_alias(struct gw_conn *c, const char *source);
/* Legacy MCP SSE: looks for the `endpoint` event in the first bytes of the stream; returns
 * HPE_PAUSED (llhttp) when it found one whose id must be stored first, else 0. */
int gw_mcp_sniff(struct gw_conn *c, const char *at, size_t len);
/* The final response head <h>: stores an Mcp-Session-Id the server minted, releases the
 * session on an MCP DELETE's success, settles a keyless request's session (started by a
 * success, released by an error). 1 when the exchange now waits (upstream reading paused, the
 * head is parsed again after) or <c> may be gone; 0 to go on. */
int gw_mcp_on_resp_head(struct gw_conn *c, const struct gw_h1_head *h);

/* ---- cdp.c */

/* CDP discovery: writes the held head (c->aux_head) and the rewritten body (c->aux) to the
 * client. -1 when either cannot be read or rewritten (nothing was written). */
int gw_cdp_emit(struct gw_conn *c);

/* ---- tunnel.c */

/* After 101 Switching Protocols: bytes both ways until either side closes. */
void gw_tunnel_start(struct gw_conn *c);
/* Moves what both inputs hold to the other side; pauses a side whose output is above the mark. */
void gw_tunnel_pump(struct gw_conn *c);
/* The client half-closed (c->up_wshut): the instance's side is shut for writing once its
 * output is out (now, or from the instance's write callback). */
void gw_tunnel_shut_up(struct gw_conn *c);
/* Bytes read into an empty input, sent to <to> straight from the read. Returns <len>. */
size_t gw_tunnel_pass(struct gw_conn *c, struct gw_stream *to, const char *data, size_t len);

/* ---- h1_write.c */

/* Sends the rewritten request head (the client's at <head>, parsed as <h>) to <us>. */
void gw_h1_write_request(struct gw_conn *c, const struct gw_h1_head *h, const char *head,
                         struct gw_stream *us);
/* 1 when header <i> of the instance's response head <h> does not go to the client (hop-by-hop
 * but an upgrade's, x-berth-*, framing the gateway changes, CORS it answers itself). */
int gw_h1_resp_drop(const struct gw_conn *c, const struct gw_h1_head *h, uint32_t i);
/* The header lines ("name: value\r\n") the gateway adds to the response head <h>, whatever
 * the client's protocol: a rewritten body's length, x-berth-*, the cookie it issues, CORS.
 * Their length in <buf>, or (size_t)-1 when they do not fit <cap> (4096 is enough: the
 * config bounds origins and the cookie's name). */
size_t gw_h1_resp_fields(struct gw_conn *c, const struct gw_h1_head *h, char *buf, size_t cap);
/* The HTTP/1 codec's answers (struct gw_down_ops). */
extern const struct gw_down_ops gw_h1_down;

/* ---- h2_resp.c */

/* The HTTP/2 codec's answers for a stream's exchange (struct gw_down_ops): HEADERS, DATA
 * and trailers straight from the instance's parsed head, no HTTP/1 head in between. */
extern const struct gw_down_ops gw_h2_down;

#endif
