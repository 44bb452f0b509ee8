/* Command line of berth-loadgen. */
#include "bench/loadgen/opts.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
        "usage: berth-loadgen --target 127.0.0.1:PORT [options]\n"
        "modes:\n"
        "  --mode max             closed loop, as fast as the target answers (default)\n"
        "  --mode rate --rate R   open loop, R requests/s in total; latency is measured from\n"
        "                         each request's scheduled send time (no coordinated omission)\n"
        "  --mode sse --streams N open N event streams (GET PATH?every=MS), hold them for\n"
        "                         --duration, measure event crossing time and watched RSS\n"
        "request modes:\n"
        "  --connections C        keep-alive connections in total (default 64)\n"
        "  --sessions S           live sessions (default 1000); each request carries one\n"
        "                         in the session header, round robin over the sessions\n"
        "  --churn F              share of requests that start a new session, 0..1 (0.1 =\n"
        "                         every 10th request); the new one replaces a live one\n"
        "  --no-prime             skip the unmeasured first request of every session\n"
        "  --method M             GET (default), POST or PUT\n"
        "  --path P               request path (default /; SSE default /sse)\n"
        "  --body-size B          request body bytes for POST/PUT (e.g. 10MiB)\n"
        "common:\n"
        "  --duration D           measured window or SSE hold time (default 10s)\n"
        "  --warmup D             unmeasured run before the window (default 1s)\n"
        "  --timeout D            per request / per stream open (default 10s)\n"
        "  --threads T            event loops (default 1)\n"
        "  --session-header H     default x-fc-session-id\n"
        "  --session-prefix P     session ids are P-THREAD-N (default from pid and time)\n"
        "  --instance-header H    response header naming the instance (stickiness check;\n"
        "                         at most %d, their values together identify it)\n"
        "  --sse-every MS         SSE: upstream event period per stream (default 5000)\n"
        "  --connect-concurrency N SSE: streams being opened at once (default 256)\n"
        "  --watch-pid PID        sum this process's RSS (repeatable)\n"
        "  --label L              name written into the JSON\n"
        "  --json FILE            write the JSON result there (default stdout)\n"
        "  --quiet                no progress on stderr\n",
        LG_MAX_INSTANCE_HEADERS);
}

static int parse_duration(const char *s, uint64_t *ret)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || !isfinite(v))
        return -EINVAL;
    double mult = 1e9;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1e9;
    else if (strcmp(end, "ms") == 0)
        mult = 1e6;
    else if (strcmp(end, "us") == 0)
        mult = 1e3;
    else if (strcmp(end, "m") == 0)
        mult = 60e9;
    else
        return -EINVAL;
    if (v * mult > 86400e9)
        return -EINVAL;
    *ret = (uint64_t)(v * mult);
    return 0;
}

static int parse_size(const char *s, uint64_t *ret)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-')
        return -EINVAL;
    uint64_t mult = 1;
    if (*end == '\0' || strcasecmp(end, "b") == 0)
        mult = 1;
    else if (strcasecmp(end, "kib") == 0 || strcasecmp(end, "k") == 0)
        mult = 1024;
    else if (strcasecmp(end, "mib") == 0 || strcasecmp(end, "m") == 0)
        mult = 1024 * 1024;
    else if (strcasecmp(end, "gib") == 0 || strcasecmp(end, "g") == 0)
        mult = 1024ull * 1024 * 1024;
    else
        return -EINVAL;
    if (v > (1ull << 40) / mult)
        return -EINVAL;
    *ret = v * mult;
    return 0;
}

static int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *ret)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || *s == '-' || v < min || v > max)
        return -EINVAL;
    *ret = (uint32_t)v;
    return 0;
}

static int valid_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (!n || n >= max)
        return 0;
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f || *s == ':')
            return 0;
    return 1;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "berth-loadgen: " __VA_ARGS__);                                            \
        fputc('\n', stderr);                                                                       \
        return -EINVAL;                                                                            \
    } while (0)

int lg_opts_parse(int argc, char **argv, struct lg_opts *o)
{
    enum {
        O_TARGET = 256, O_MODE, O_RATE, O_STREAMS, O_CONNS, O_SESSIONS, O_CHURN, O_NOPRIME,
        O_METHOD, O_PATH, O_BODY, O_DURATION, O_WARMUP, O_TIMEOUT, O_THREADS, O_SHEADER,
        O_SPREFIX, O_IHEADER, O_EVERY, O_CCONC, O_WATCH, O_LABEL, O_JSON, O_QUIET, O_HELP,
    };
    static const struct option opts[] = {
        {"target", required_argument, NULL, O_TARGET},
        {"mode", required_argument, NULL, O_MODE},
        {"rate", required_argument, NULL, O_RATE},
        {"streams", required_argument, NULL, O_STREAMS},
        {"connections", required_argument, NULL, O_CONNS},
        {"sessions", required_argument, NULL, O_SESSIONS},
        {"churn", required_argument, NULL, O_CHURN},
        {"no-prime", no_argument, NULL, O_NOPRIME},
        {"method", required_argument, NULL, O_METHOD},
        {"path", required_argument, NULL, O_PATH},
        {"body-size", required_argument, NULL, O_BODY},
        {"duration", required_argument, NULL, O_DURATION},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"threads", required_argument, NULL, O_THREADS},
        {"session-header", required_argument, NULL, O_SHEADER},
        {"session-prefix", required_argument, NULL, O_SPREFIX},
        {"instance-header", required_argument, NULL, O_IHEADER},
        {"sse-every", required_argument, NULL, O_EVERY},
        {"connect-concurrency", required_argument, NULL, O_CCONC},
        {"watch-pid", required_argument, NULL, O_WATCH},
        {"label", required_argument, NULL, O_LABEL},
        {"json", required_argument, NULL, O_JSON},
        {"quiet", no_argument, NULL, O_QUIET},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->mode = LG_MODE_MAX;
    o->threads = 1;
    o->connections = 64;
    o->sessions = 1000;
    o->duration_ns = 10000000000ull;
    o->warmup_ns = 1000000000ull;
    o->timeout_ns = 10000000000ull;
    o->prime = 1;
    snprintf(o->method, sizeof(o->method), "GET");
    o->path[0] = '\0';
    snprintf(o->session_header, sizeof(o->session_header), "x-fc-session-id");
    snprintf(o->session_prefix, sizeof(o->session_prefix), "lg%x%lx", (unsigned)getpid(),
             (unsigned long)time(NULL) & 0xffffff);
    o->sse_every_ms = 5000;
    o->connect_concurrency = 256;
    int have_target = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_TARGET: {
            const char *colon = strrchr(optarg, ':');
            char host[48];
            uint32_t port;
            if (!colon || (size_t)(colon - optarg) >= sizeof(host) ||
                parse_u32(colon + 1, 1, 65535, &port) < 0)
                FAIL("--target: expected IPv4:PORT, got '%s'", optarg);
            memcpy(host, optarg, (size_t)(colon - optarg));
            host[colon - optarg] = '\0';
            o->addr.sin_family = AF_INET;
            o->addr.sin_port = htons((uint16_t)port);
            if (inet_pton(AF_INET, host, &o->addr.sin_addr) != 1)
                FAIL("--target: '%s' is not an IPv4 address", host);
            snprintf(o->target, sizeof(o->target), "%s", optarg);
            have_target = 1;
            break;
        }
        case O_MODE:
            if (strcmp(optarg, "max") == 0)
                o->mode = LG_MODE_MAX;
            else if (strcmp(optarg, "rate") == 0)
                o->mode = LG_MODE_RATE;
            else if (strcmp(optarg, "sse") == 0)
                o->mode = LG_MODE_SSE;
            else
                FAIL("--mode: max, rate or sse, not '%s'", optarg);
            break;
        case O_RATE: {
            char *end;
            o->rate = strtod(optarg, &end);
            if (end == optarg || *end || !(o->rate >= 1 && o->rate <= 1e8))
                FAIL("--rate: 1..1e8 requests per second, not '%s'", optarg);
            break;
        }
        case O_STREAMS:
            if (parse_u32(optarg, 1, 1000000, &o->streams) < 0)
                FAIL("--streams: 1..1000000");
            break;
        case O_CONNS:
            if (parse_u32(optarg, 1, 100000, &o->connections) < 0)
                FAIL("--connections: 1..100000");
            break;
        case O_SESSIONS:
            if (parse_u32(optarg, 1, 10000000, &o->sessions) < 0)
                FAIL("--sessions: 1..10000000");
            break;
        case O_CHURN: {
            char *end;
            o->churn = strtod(optarg, &end);
            if (end == optarg || *end || !(o->churn >= 0 && o->churn <= 1))
                FAIL("--churn: a share 0..1, not '%s'", optarg);
            break;
        }
        case O_NOPRIME: o->prime = 0; break;
        case O_METHOD:
            if (strcmp(optarg, "GET") && strcmp(optarg, "POST") && strcmp(optarg, "PUT"))
                FAIL("--method: GET, POST or PUT");
            snprintf(o->method, sizeof(o->method), "%s", optarg);
            break;
        case O_PATH:
            if (optarg[0] != '/' || strlen(optarg) >= sizeof(o->path) - 32 ||
                strpbrk(optarg, " \r\n\t"))
                FAIL("--path: an absolute path without spaces, shorter than %zu",
                     sizeof(o->path) - 32);
            snprintf(o->path, sizeof(o->path), "%s", optarg);
            break;
        case O_BODY:
            if (parse_size(optarg, &o->body_size) < 0)
                FAIL("--body-size: bytes (KiB, MiB, GiB suffixes), at most 1 TiB");
            break;
        case O_DURATION:
            if (parse_duration(optarg, &o->duration_ns) < 0 || !o->duration_ns)
                FAIL("--duration: e.g. 10s, 500ms (0 < D <= 1d)");
            break;
        case O_WARMUP:
            if (parse_duration(optarg, &o->warmup_ns) < 0)
                FAIL("--warmup: e.g. 1s, 0");
            break;
        case O_TIMEOUT:
            if (parse_duration(optarg, &o->timeout_ns) < 0 || o->timeout_ns < 1000000)
                FAIL("--timeout: at least 1ms");
            break;
        case O_THREADS:
            if (parse_u32(optarg, 1, 64, &o->threads) < 0)
                FAIL("--threads: 1..64");
            break;
        case O_SHEADER:
            if (!valid_token(optarg, sizeof(o->session_header)))
                FAIL("--session-header: a header name");
            snprintf(o->session_header, sizeof(o->session_header), "%s", optarg);
            break;
        case O_SPREFIX:
            if (!valid_token(optarg, sizeof(o->session_prefix)))
                FAIL("--session-prefix: 1-%zu visible characters", sizeof(o->session_prefix) - 1);
            snprintf(o->session_prefix, sizeof(o->session_prefix), "%s", optarg);
            break;
        case O_IHEADER:
            if (o->n_instance_headers == LG_MAX_INSTANCE_HEADERS || !valid_token(optarg, 64))
                FAIL("--instance-header: a header name, at most %d times",
                     LG_MAX_INSTANCE_HEADERS);
            for (char *p = optarg; *p; p++)
                *p = (char)tolower((unsigned char)*p);
            o->instance_headers[o->n_instance_headers++] = optarg;
            break;
        case O_EVERY:
            if (parse_u32(optarg, 0, 3600000, &o->sse_every_ms) < 0)
                FAIL("--sse-every: 0..3600000 ms");
            break;
        case O_CCONC:
            if (parse_u32(optarg, 1, 100000, &o->connect_concurrency) < 0)
                FAIL("--connect-concurrency: 1..100000");
            break;
        case O_WATCH: {
            uint32_t pid;
            if (o->n_watch_pids == LG_MAX_WATCH_PIDS || parse_u32(optarg, 1, 1u << 30, &pid) < 0)
                FAIL("--watch-pid: a pid, at most %d times", LG_MAX_WATCH_PIDS);
            o->watch_pids[o->n_watch_pids++] = (int)pid;
            break;
        }
        case O_LABEL:
            snprintf(o->label, sizeof(o->label), "%s", optarg);
            break;
        case O_JSON:
            if (strlen(optarg) >= sizeof(o->json_path))
                FAIL("--json: path too long");
            snprintf(o->json_path, sizeof(o->json_path), "%s", optarg);
            break;
        case O_QUIET: o->quiet = 1; break;
        case O_HELP: usage(stdout); return 1;
        default: usage(stderr); return -EINVAL;
        }
    }
    if (optind != argc)
        FAIL("unexpected argument '%s' (try --help)", argv[optind]);
    if (!have_target)
        FAIL("--target 127.0.0.1:PORT is required (try --help)");
    if (o->mode == LG_MODE_RATE && o->rate <= 0)
        FAIL("--mode rate needs --rate");
    if (o->mode == LG_MODE_SSE && !o->streams)
        FAIL("--mode sse needs --streams");
    if (o->mode != LG_MODE_SSE && o->connections < o->threads)
        FAIL("--connections must be at least --threads");
    if (o->sessions < o->threads)
        FAIL("--sessions must be at least --threads");
    if (o->body_size && !strcmp(o->method, "GET"))
        FAIL("--body-size needs --method POST or PUT");
    if (!o->path[0])
        snprintf(o->path, sizeof(o->path), "%s", o->mode == LG_MODE_SSE ? "/sse" : "/");
    if (!o->label[0])
        snprintf(o->label, sizeof(o->label), "%s", o->target);
    return 0;
}
