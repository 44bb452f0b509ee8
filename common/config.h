/* Berth's configuration: one YAML file read by both daemons. This module parses the shared
 * sections (redis, log, tenants, templates) into typed structs and offers the typed getters the
 * daemons use for their own sections, so that every error reads "file:line:col: key: message".
 * A loaded struct cm_config is read-only and may be shared by all threads. */
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "time.h"
#include "yaml.h"

struct cm_conf_ctx {
    const char *file;
    char *err;
    size_t errlen;
};

/* Getters: read <key> of <map> (a CM_YNODE_MAP; NULL is an empty map). A missing key gives
 * <def>. Return 0, or -EINVAL with the error written to ctx->err. <path> is the dotted path of
 * <map> used in messages ("gateway.limits"). */
int cm_conf_keys(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *const *allowed);
int cm_conf_str(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                const char *key, const char *def, char **ret);
int cm_conf_u64(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                const char *key, uint64_t def, uint64_t min, uint64_t max, uint64_t *ret);
int cm_conf_bool(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *key, int def, int *ret);
/* Durations: "250ms", "10s", "5m", "2h", "1d"; a bare number is seconds. In microseconds. */
int cm_conf_duration(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                     const char *key, cm_usec_t def, cm_usec_t min, cm_usec_t max,
                     cm_usec_t *ret);
/* Sizes: "512", "64KiB", "16MiB", "1GiB" (also KB/MB/GB, powers of 1000). */
int cm_conf_size(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *key, uint64_t def, uint64_t min, uint64_t max, uint64_t *ret);
/* A sequence of scalars, or a single scalar taken as a list of one. NULL-terminated array;
 * free with cm_strv_free(). Missing key: a copy of <def> (NULL-terminated, may be NULL). */
int cm_conf_strv(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                 const char *key, const char *const *def, char ***ret);
int cm_conf_fail(struct cm_conf_ctx *ctx, const struct cm_ynode *at, const char *path,
                 const char *key, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void cm_strv_free(char **v);
size_t cm_strv_len(char *const *v);

/* Parsing helpers shared with the API code: return 0 or -EINVAL. */
int cm_parse_duration(const char *s, cm_usec_t *ret);
int cm_parse_size(const char *s, uint64_t *ret);

enum cm_lost_policy {
    CM_LOST_REPLACE, /* next request binds a fresh instance (same durable storage) */
    CM_LOST_FAIL,    /* the session keeps answering 502 instance_lost until deleted */
};

struct cm_template {
    char *name;
    char *driver; /* "static": existing upstreams, nothing started; else the scheduler driver
                     that starts the instances ("process"; checked by berth-scheduler) */
    char **upstreams;   /* static: instance addresses ("host:port", "tcp:…", "unix:/path") */
    uint32_t sessions_per_instance; /* sessions one instance serves at once; 0 = unlimited */
    char **app_command; /* argv of the app, NULL-terminated */
    char **app_env;     /* "K=V" strings, NULL-terminated */
    uint32_t app_port;  /* TCP port the app listens on inside the sandbox */
    uint32_t cpu_millis;  /* CPU quota in thousandths of a core; 0 = no limit */
    uint64_t memory;      /* bytes; 0 = no limit */
    uint64_t pids;        /* max tasks; 0 = no limit */
    uint64_t workspace_size; /* tmpfs size in bytes */
    uint32_t pool_min, pool_max;
    cm_usec_t ready_timeout;
    cm_usec_t ttl, max_ttl;
    cm_usec_t idle_timeout, max_idle_timeout;
    cm_usec_t pause_after; /* idle.pause_after: freeze a bound session's sandbox idle this long;
                              0 = never */
    enum cm_lost_policy on_lost;
    int data;           /* mount the session's durable directory at /data */
    uint64_t data_size; /* size of each session's /data file system (its quota) */
    int run_as_root;    /* the app runs as the user namespace's root (still no capability) */
    char *seccomp;      /* seccomp profile name ("default", "strict") */
    char *rootfs;       /* NULL: the host's /usr, /bin, /sbin, /lib*; else a root directory */
    char *accel;        /* microvm: "auto" (the host's probe decides), "kvm" or "tcg" */
    uint64_t io_read_bps, io_write_bps, io_read_iops, io_write_iops; /* 0: no limit */
    /* egress.allow / egress.deny: destinations its sandboxes may reach through the host's
     * egress proxy (common/egress.h patterns, checked here), NULL-terminated or NULL (none:
     * nothing is allowed). A session's own lists (control API) are added to these. */
    char **egress_allow, **egress_deny;
};

/* The largest tenants[].limits.max_sessions and rates (sanity bounds, not capacities). */
#define CM_TENANT_MAX_SESSIONS 10000000u
#define CM_TENANT_MAX_RATE 1000000u

/* tenants[].api_keys[]: an API key with limits of its own. Each limit it sets replaces the
 * tenant's for the control API calls made with it (checked against the tenant's counts, which
 * every key and the data plane share); what it does not set is the tenant's. */
#define CM_KEY_MAX_SESSIONS 1u
#define CM_KEY_SESSION_RATE 2u
#define CM_KEY_MAX_EXECS 4u
struct cm_api_key {
    char sha256[65]; /* lower-case hex */
    unsigned set;    /* CM_KEY_* bits: the limits it sets */
    uint32_t max_sessions, sessions_per_second, sessions_burst, max_execs;
};

struct cm_tenant {
    char *name;
    char **api_key_sha256; /* lower-case hex SHA-256 of each accepted API key */
    struct cm_api_key *api_keys; /* keys with limits of their own (also accepted) */
    size_t n_api_keys;
    /* limits.max_sessions: the tenant's sessions (bound or lost, not yet ended) at most at
     * once, across all gateways; 0: unlimited. */
    uint32_t max_sessions;
    /* limits.sessions_per_second / sessions_burst: new sessions, a token bucket in Redis
     * (across all gateways) that holds up to sessions_burst (default: the rate); 0: none. */
    uint32_t sessions_per_second, sessions_burst;
    /* limits.requests_per_second / requests_burst: data-plane requests, limited by each
     * gateway process on its own (gateway/rate.h); 0: none. */
    uint32_t requests_per_second, requests_burst;
    /* limits.max_execs: commands of the tenant running at once through the control API's
     * /exec, across all gateways (leases in Redis, P execs:{tenant}); 0: none. */
    uint32_t max_execs;
    /* limits.max_memory / max_cpus: the templates' memory and cpus summed over the tenant's
     * sessions that hold a sandbox (P use:{tenant}, kept by the claim, bind, release and lost
     * scripts); 0: none. */
    uint64_t max_memory;     /* bytes */
    uint64_t max_cpu_millis; /* thousandths of a core */
};

#define CM_REDIS_MAX_SENTINELS 16

struct cm_redis_config {
    char *address;  /* "host:port" or "unix:/path"; unused with sentinels */
    /* redis.sentinels ("host:port" each, NULL-terminated; NULL: none) and redis.master_name:
     * the primary is the one the sentinels name (common/redis.c) */
    char **sentinels;
    char *master_name;
    char *username; /* ACL user (AUTH username password); NULL: the default user */
    char *password; /* redis.password or the content of redis.password_file; NULL: no AUTH */
    char *prefix;
    uint32_t db;
    cm_usec_t connect_timeout;
    cm_usec_t command_timeout;
    cm_usec_t usage_retention; /* how long Redis keeps usage records (P u:{tenant}:{hour}) */
};

struct cm_config {
    char *file;
    struct cm_ynode *root; /* kept for the daemon sections */
    char *log_level;
    struct cm_redis_config redis;
    struct cm_tenant *tenants;
    size_t n_tenants;
    struct cm_template *templates;
    size_t n_templates;
};

/* Loads <path>. Returns a new config (free with cm_config_free()) or NULL with the message in
 * <err>. Unknown top-level keys other than "gateway" and "scheduler" are errors. */
struct cm_config *cm_config_load(const char *path, char *err, size_t errlen);
void cm_config_free(struct cm_config *cfg);
const struct cm_template *cm_config_template(const struct cm_config *cfg, const char *name);
const struct cm_tenant *cm_config_tenant(const struct cm_config *cfg, const char *name);
/* Finds the tenant owning API key <key> (compared by SHA-256, in constant time per key).
 * Returns NULL when none does. */
const struct cm_tenant *cm_config_tenant_by_key(const struct cm_config *cfg, const char *key);
/* The same, and the key's own entry in *ret_key (NULL: a key of api_keys_sha256, without
 * limits of its own). */
const struct cm_tenant *cm_config_key(const struct cm_config *cfg, const char *key,
                                      const struct cm_api_key **ret_key);
/* A limit for a call made with key <k> (NULL: the data plane, or a key without its own) of
 * tenant <t>: the key's where it sets it, else the tenant's. */
uint32_t cm_limit_max_sessions(const struct cm_tenant *t, const struct cm_api_key *k);
uint32_t cm_limit_max_execs(const struct cm_tenant *t, const struct cm_api_key *k);
void cm_limit_session_rate(const struct cm_tenant *t, const struct cm_api_key *k,
                           uint32_t *ret_rate, uint32_t *ret_burst);

#endif
