/* The gateway's section of the Berth config ("gateway:"), parsed into a read-only struct shared
 * by every worker loop and the admin thread. Every limit is a named key with a default;
 * deploy/config/berth.yaml documents them all. */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/time.h"
#include "gateway/rate.h"

enum gw_no_key {
    GW_NO_KEY_NEW,    /* a fresh session (and instance) per client connection */
    GW_NO_KEY_REJECT, /* 400 session_key_required */
    GW_NO_KEY_ISSUE,  /* a fresh session whose id is sent back as a Set-Cookie */
};

struct gw_route {
    char *name;
    char *host;        /* exact Host match (no port), NULL = any */
    char *path_prefix; /* "/" = all */
    char *tenant;
    char *template_name;
    const struct cm_template *tpl; /* resolved */
    char **key_headers;            /* lower-case header names, in order; may be empty */
    char *cookie;                  /* session cookie name; NULL = cookies not used */
    enum gw_no_key no_key;
    uint64_t max_body;             /* bytes */
    int auth;                      /* data plane requires "Authorization: Bearer <tenant key>" */
    int mcp;          /* route by Mcp-Session-Id; learn it from responses (Streamable HTTP) */
    int mcp_delete_releases; /* DELETE with Mcp-Session-Id releases the session afterwards */
    int legacy_sse;   /* learn sessionId/session_id from the SSE endpoint event; route by it */
    int cdp_rewrite;  /* rewrite webSocketDebuggerUrl in /json/version and /json/list answers */
    char *preview_domain; /* "<port>-<session>.<domain>" Hosts reach <port> in the sandbox */
    int upstream_host_client; /* upstream_host: client (the client's Host goes upstream) */
    char **cors_origins;      /* allowed Origins ("*": any), lower-case; may be empty */
    size_t n_cors_origins;
    uint32_t cors_max_age;    /* seconds, Access-Control-Max-Age of preflight answers */
    int cors_preflight;       /* the gateway answers CORS preflights itself (mcp or origins) */
    size_t tenant_idx;        /* the route's tenant's index in the common config's tenants */
    struct gw_rate *rate;     /* its limits.requests_per_second (shared), NULL: none */
};

struct gw_limits {
    uint64_t max_header_bytes; /* request head, 431 above */
    uint64_t max_headers;      /* header count, 431 above (instances must take 4 more) */
    uint64_t max_connections;  /* per worker; accept pauses above */
    cm_usec_t header_timeout;  /* first byte to end of head, 408 */
    cm_usec_t keepalive_timeout; /* idle client connection between requests */
    cm_usec_t connect_timeout;   /* to an instance */
    cm_usec_t response_timeout;  /* request sent to response head received, 504 */
    cm_usec_t stream_idle_timeout; /* no bytes either way while a body streams */
    cm_usec_t start_timeout;     /* waiting for an on-demand start, then 503 no_capacity */
    cm_usec_t resume_timeout;    /* a paused sandbox taking a request, or the API's pause and
                                  * resume, then 503 */
    uint64_t buffer_high;        /* bytes queued toward a peer before reading pauses */
    uint64_t buffer_low;         /* ...and resumes below this */
    uint64_t upstream_idle_per_instance; /* kept-alive upstream connections per instance */
    cm_usec_t upstream_idle_timeout;
    uint64_t sse_sniff_bytes;   /* how far into an SSE stream the endpoint event is looked for */
    uint64_t rewrite_max_body;  /* largest response body rewritten (CDP), else 502 */
    uint64_t max_chunk_ext_bytes; /* chunk extensions per chunk-size line of a request, 400 */
};

/* One certificate of the TLS listener: its chain and key (PEM), and a stapled OCSP response
 * (DER, as `openssl ocsp -respout` writes it), or NULL. Paths as resolved (absolute, or
 * relative to the working directory). */
struct gw_tls_cert {
    char *cert;
    char *key;
    char *ocsp;
};

/* gateway.tls: what the TLS listener (gateway.tls_listen) offers. */
struct gw_tls_config {
    struct gw_tls_cert *certs; /* the first is the default; SNI picks among them */
    size_t n_certs;
    int min_version;               /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3) */
    char *ciphers;                 /* TLS 1.2 cipher list (OpenSSL syntax) */
    char *ciphersuites;            /* TLS 1.3 suites */
    int session_tickets;           /* resumption by tickets (their keys rotated) */
    cm_usec_t ticket_key_lifetime; /* a ticket key encrypts this long, then decrypts as long */
    int alpn_h2;                   /* offer h2 (gateway.h2.enabled) */
};

/* gateway.access_log: one line per exchange. */
struct gw_access_log {
    int enabled;
    uint64_t sample; /* log 1 exchange in <sample> (1: every one) */
};

/* gateway.h2: HTTP/2 on the client side (h2 by ALPN, h2c with prior knowledge). */
struct gw_h2_config {
    int enabled;                /* offer h2 by ALPN on the TLS listener */
    uint32_t max_streams;       /* SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t stream_window;     /* SETTINGS_INITIAL_WINDOW_SIZE: request bytes buffered a stream */
    uint32_t max_header_list;   /* decoded header list (RFC 9113 6.5.2 size) before a 431 */
    uint32_t reset_burst;       /* streams a client may reset at once ... */
    uint32_t reset_rate;        /* ... and per second after, before GOAWAY (CVE-2023-44487) */
    uint32_t max_continuations; /* CONTINUATION frames per header block (CVE-2024-27316) */
    uint32_t max_settings;      /* entries in one SETTINGS frame */
    uint32_t max_outbound_ack;  /* SETTINGS/PING acks queued unsent before GOAWAY */
    cm_usec_t send_timeout;     /* a stream whose response waits this long on the client's
                                   window is reset (zero-window stalls) */
};

struct gw_config {
    const struct cm_config *common; /* borrowed */
    int h2c; /* gateway.h2c: HTTP/2 with prior knowledge on the cleartext listener */
    struct gw_h2_config h2;
    char *listen;       /* "host:port" */
    char *tls_listen;   /* "host:port" of the TLS listener, or "": none */
    struct gw_tls_config tls;
    char *admin_listen; /* "host:port" */
    char *health_listen; /* "host:port" of /healthz and /readyz alone, or "": none */
    uint32_t workers;
    int expose_headers; /* send x-berth-instance / x-berth-session */
    cm_usec_t cache_ttl;      /* how long a loop trusts a cached binding */
    cm_usec_t activity_flush; /* at most one activity write per session per this */
    cm_usec_t host_stale;     /* a host whose heartbeat is older is not used */
    uint32_t retry_after;     /* seconds, sent with 503 no_capacity */
    cm_usec_t shutdown_grace; /* on SIGTERM: how long open exchanges may finish */
    struct gw_limits limits;
    struct gw_access_log access_log;
    /* scheduler.api_secret / api_secret_file of the same file: sent to the schedulers' API
     * ("Authorization: Bearer ..."). Required when a template is started by schedulers; NULL
     * when every template is static and none is set. */
    char *scheduler_secret;
    struct gw_route *routes;
    size_t n_routes;
    /* One request-rate state per configured tenant, shared by every worker (mutable: the
     * config is otherwise read-only once loaded). */
    struct gw_rate *tenant_rates;
};

/* Parses cfg->root's "gateway" section. Returns a new struct (free with gw_config_free()) or
 * NULL with "file:line:col: key: message" in <err>. Borrows <cfg> for the result's life. */
struct gw_config *gw_config_load(const struct cm_config *cfg, char *err, size_t errlen);
void gw_config_free(struct gw_config *gc);
/* First route whose host and path prefix match; NULL if none. <host> may be NULL. */
const struct gw_route *gw_config_route(const struct gw_config *gc, const char *host,
                                       size_t host_len, const char *path, size_t path_len);

/* Preview hosts: 1 when <host> (port ignored) is "<port>-<key>.<r->preview_domain>"; then sets
 * <ret_port> and the key slice (may be NULL). */
int gw_config_preview(const struct gw_route *r, const char *host, size_t host_len,
                      uint16_t *ret_port, const char **ret_key, size_t *ret_key_len);

#endif
