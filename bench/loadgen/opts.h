/* berth-loadgen's command line, parsed into a read-only struct shared by every thread. */
#ifndef LG_OPTS_H
#define LG_OPTS_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define LG_MAX_INSTANCE_HEADERS 2
#define LG_MAX_WATCH_PIDS 64

enum lg_mode {
    LG_MODE_MAX,  /* closed loop: each connection sends its next request when the last ends */
    LG_MODE_RATE, /* open loop at a fixed arrival rate; latency from the scheduled send time */
    LG_MODE_SSE,  /* open N event streams, hold them, measure event crossing times */
};

struct lg_opts {
    char target[64];          /* "127.0.0.1:PORT" as given, also the Host header */
    struct sockaddr_in addr;
    enum lg_mode mode;
    uint32_t threads;         /* event loops; connections and sessions are split among them */
    uint32_t connections;     /* total keep-alive connections (request modes) */
    uint32_t sessions;        /* live sessions (request modes), or sessions the streams use */
    double churn;             /* 0..1: share of requests that start a new session */
    double rate;              /* requests per second in total (LG_MODE_RATE) */
    uint64_t duration_ns;     /* measured window (request modes) or hold time (SSE) */
    uint64_t warmup_ns;       /* run before the window, not measured */
    uint64_t timeout_ns;      /* per request (and per stream until its first event) */
    int prime;                /* one unmeasured request per session before the run */
    char method[8];           /* GET, POST, PUT */
    char path[256];
    uint64_t body_size;       /* request body bytes (POST/PUT) */
    char session_header[64];
    char session_prefix[48];
    char *instance_headers[LG_MAX_INSTANCE_HEADERS]; /* lower-case; identify the instance */
    size_t n_instance_headers;
    uint32_t streams;         /* SSE: streams to hold open */
    uint32_t sse_every_ms;    /* SSE: ?every= passed to the upstream */
    uint32_t connect_concurrency; /* SSE: streams being opened at once */
    int watch_pids[LG_MAX_WATCH_PIDS]; /* RSS of these is summed and reported */
    size_t n_watch_pids;
    char json_path[512];      /* "" = stdout */
    char label[64];           /* copied into the JSON ("target" field) */
    int quiet;
};

/* Parses argv into <o> (caller storage; o->instance_headers point into argv). Returns 0, 1 when
 * --help was printed, or -EINVAL with a message written to stderr. */
int lg_opts_parse(int argc, char **argv, struct lg_opts *o);

#endif
