#include "scheduler/config.h"
#include "scheduler/relay.h"

#include "common/compat.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/config.h"
#include "common/secret.h"

#define SEC "scheduler"

/* Longest suffix appended to {run_dir}/{id} for a unix socket path. */
#define SOCK_SUFFIX "/sock/app.sock"

static int valid_host_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SCH_HOST_ID_MAX)
        return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return 0;
    return 1;
}

/* Makes <path> absolute against the working directory and drops trailing slashes. Takes
 * ownership of <path>; returns a new string or NULL. */
static char *absolutize(char *path)
{
    char *out = path;
    if (path[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd))) {
            free(path);
            return NULL;
        }
        const char *rel = path;
        while (rel[0] == '.' && rel[1] == '/')
            rel += 2;
        if (strcmp(rel, ".") == 0)
            rel = "";
        if (asprintf(&out, "%s%s%s", cwd, *rel ? "/" : "", rel) < 0)
            out = NULL;
        free(path);
        if (!out)
            return NULL;
    }
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
    return out;
}

static char *default_agent_path(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return strdup("berth-agent");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0';
    char *out;
    if (asprintf(&out, "%s/berth-agent", exe) < 0)
        return NULL;
    return out;
}

/* "host:port" of <key> into *ret_host (a new string) and *ret_port. */
static int parse_listen(struct cm_conf_ctx *ctx, const struct cm_ynode *section, const char *key,
                        const char *s, char **ret_host, uint16_t *ret_port)
{
    const struct cm_ynode *at = cm_ynode_get(section, key);
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return cm_conf_fail(ctx, at, SEC, key, "must be host:port, e.g. 127.0.0.1:9191");
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || *end || colon[1] == '\0' || port < 0 || port > 65535)
        return cm_conf_fail(ctx, at, SEC, key, "port must be 0..65535");
    *ret_host = strndup(s, (size_t)(colon - s));
    if (!*ret_host)
        return cm_conf_fail(ctx, at, SEC, key, "out of memory");
    *ret_port = (uint16_t)port;
    return 0;
}

/* An `advertise` value (<path>.advertise, or scheduler.api_advertise when <path> is SEC):
 * "" is none (*val NULL); "$NAME" is the value of environment variable NAME (Kubernetes puts
 * the node's address there: status.hostIP); then host:port or host, at most 100 characters,
 * none of " /#@" or a tab (they would break the addresses built from it). */
static int advertised(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                      char **val)
{
    const char *key = strcmp(path, SEC) == 0 ? "api_advertise" : "advertise";
    const struct cm_ynode *at = cm_ynode_get(map, key);
    if (!*val || !**val) {
        free(*val);
        *val = NULL;
        return 0;
    }
    if ((*val)[0] == '$') {
        const char *env = getenv(*val + 1);
        if (!env || !*env)
            return cm_conf_fail(ctx, at, path, key, "environment variable %s is not set",
                                *val + 1);
        char *copy = strdup(env);
        if (!copy)
            return cm_conf_fail(ctx, at, path, key, "out of memory");
        free(*val);
        *val = copy;
    }
    if (strlen(*val) > 100 || strcspn(*val, " /#@\t") != strlen(*val))
        return cm_conf_fail(ctx, at, path, key,
                            "must be host:port or host (at most 100 characters, no blank, '/', "
                            "'#', '@'), not '%s'",
                            *val);
    return 0;
}

int sch_config_parse(struct sch_config *ret, const struct cm_ynode *section, const char *file,
                     char *err, size_t errlen)
{
    static const char *const keys[] = {"host_id",
                                       "api_listen",
                                       "run_dir",
                                       "storage_root",
                                       "capacity",
                                       "heartbeat",
                                       "reap_interval",
                                       "bind_wait",
                                       "cgroup_parent",
                                       "agent_path",
                                       "destroy_grace",
                                       "ro_binds",
                                       "console_max",
                                       "relay_buffer",
                                       "relay_max_conns",
                                       "api_max_body",
                                       "api_max_pending",
                                       "api_max_header_bytes",
                                       "api_timeout",
                                       "api_max_connections",
                                       "api_header_timeout",
                                       "health_listen",
                                       "health_max_connections",
                                       "uid_base",
                                       "insecure",
                                       "reserve",
                                       "socket_group",
                                       "api_secret",
                                       "api_secret_file",
                                       "pool_max_starting",
                                       "microvm",
                                       "exec_max",
                                       "instance_relay",
                                       "host_down_after",
                                       "api_advertise",
                                       "egress",
                                       NULL};
    static const char *const egress_keys[] = {"enabled",         "port",
                                              "resolver",        "handshake_timeout",
                                              "connect_timeout", "max_connections",
                                              "max_header_bytes", "buffer",
                                              "max_connections_per_sandbox",
                                              NULL};
    static const char *const relay_keys[] = {"listen",           "advertise",
                                             "max_connections",  "handshake_timeout",
                                             "max_clock_skew",   "buffer",
                                             NULL};
    static const char *const microvm_keys[] = {"qemu",          "image_dir",       "accel",
                                               "probe_timeout", "memory_overhead", "default_memory",
                                               "nice",          NULL};
    static const char *const reserve_keys[] = {"memory", "cpus", NULL};
    struct cm_conf_ctx ctx = {.file = file, .err = err, .errlen = errlen};
    struct sch_config c;
    memset(&c, 0, sizeof(c));
    char *listen = NULL, *health = NULL;
    uint64_t capacity, max_conns, max_pending, api_conns, uid_base, health_conns, max_starting;
    uint64_t exec_max;
    uint64_t mvm_nice = 10;
    char *socket_group = NULL;
    const struct cm_ynode *reserve = cm_ynode_get(section, "reserve");
    const struct cm_ynode *mvm = cm_ynode_get(section, "microvm");
    const struct cm_ynode *relay = cm_ynode_get(section, "instance_relay");
    const struct cm_ynode *egress = cm_ynode_get(section, "egress");
    uint64_t eg_port, eg_conns, eg_conns_sb;
    uint64_t relay_conns;
    cm_usec_t relay_skew;
    memset(ret, 0, sizeof(*ret));

    if (cm_conf_keys(&ctx, section, SEC, keys) ||
        cm_conf_str(&ctx, section, SEC, "host_id", NULL, &c.host_id) ||
        cm_conf_str(&ctx, section, SEC, "api_listen", "127.0.0.1:9191", &listen) ||
        cm_conf_str(&ctx, section, SEC, "api_advertise", "", &c.api_advertise) ||
        cm_conf_str(&ctx, section, SEC, "run_dir", "/var/lib/berth/run", &c.run_dir) ||
        cm_conf_str(&ctx, section, SEC, "storage_root", "/var/lib/berth/data", &c.storage_root) ||
        cm_conf_u64(&ctx, section, SEC, "capacity", 64, 1, 10000, &capacity) ||
        cm_conf_u64(&ctx, section, SEC, "pool_max_starting", 8, 1, 10000, &max_starting) ||
        cm_conf_duration(&ctx, section, SEC, "heartbeat", CM_USEC_PER_SEC, 10 * CM_USEC_PER_MSEC,
                         60 * CM_USEC_PER_SEC, &c.heartbeat) ||
        cm_conf_duration(&ctx, section, SEC, "reap_interval", CM_USEC_PER_SEC,
                         10 * CM_USEC_PER_MSEC, 3600 * CM_USEC_PER_SEC, &c.reap_interval) ||
        cm_conf_duration(&ctx, section, SEC, "host_down_after", 30 * CM_USEC_PER_SEC, 0,
                         3600 * CM_USEC_PER_SEC, &c.host_down_after) ||
        cm_conf_duration(&ctx, section, SEC, "bind_wait", 5 * CM_USEC_PER_SEC, 0,
                         600 * CM_USEC_PER_SEC, &c.bind_wait) ||
        cm_conf_duration(&ctx, section, SEC, "destroy_grace", 2 * CM_USEC_PER_SEC, 0,
                         600 * CM_USEC_PER_SEC, &c.destroy_grace) ||
        cm_conf_str(&ctx, section, SEC, "cgroup_parent", "berth", &c.cgroup_parent) ||
        cm_conf_str(&ctx, section, SEC, "agent_path", NULL, &c.agent_path) ||
        cm_conf_strv(&ctx, section, SEC, "ro_binds", NULL, &c.ro_binds) ||
        cm_conf_size(&ctx, section, SEC, "console_max", 1u << 20, 0, 1ull << 40, &c.console_max) ||
        cm_conf_size(&ctx, section, SEC, "relay_buffer", 64u << 10, 1u << 10, 64u << 20,
                     &c.relay_buffer) ||
        cm_conf_u64(&ctx, section, SEC, "relay_max_conns", 1024, 1, 1u << 20, &max_conns) ||
        cm_conf_u64(&ctx, section, SEC, "exec_max", 16, 0, 10000, &exec_max) ||
        cm_conf_size(&ctx, section, SEC, "api_max_body", 64u << 10, 256, 16u << 20,
                     &c.api_max_body) ||
        cm_conf_u64(&ctx, section, SEC, "api_max_pending", 256, 1, 100000, &max_pending) ||
        cm_conf_size(&ctx, section, SEC, "api_max_header_bytes", 16u << 10, 1u << 10, 1u << 20,
                     &c.api_max_header_bytes) ||
        cm_conf_duration(&ctx, section, SEC, "api_timeout", 30 * CM_USEC_PER_SEC, CM_USEC_PER_SEC,
                         3600 * CM_USEC_PER_SEC, &c.api_timeout) ||
        cm_conf_u64(&ctx, section, SEC, "api_max_connections", 256, 1, 100000, &api_conns) ||
        cm_conf_duration(&ctx, section, SEC, "api_header_timeout",
                         CM_MIN(5 * CM_USEC_PER_SEC, c.api_timeout), 100 * CM_USEC_PER_MSEC,
                         3600 * CM_USEC_PER_SEC, &c.api_header_timeout) ||
        cm_conf_str(&ctx, section, SEC, "health_listen", "", &health) ||
        cm_conf_u64(&ctx, section, SEC, "health_max_connections", 16, 1, 10000, &health_conns) ||
        cm_conf_u64(&ctx, section, SEC, "uid_base", SCH_UID_BASE_DEFAULT, 65536, UINT32_MAX - 1,
                    &uid_base) ||
        cm_conf_bool(&ctx, section, SEC, "insecure", 0, &c.insecure) ||
        cm_conf_str(&ctx, section, SEC, "socket_group", NULL, &socket_group) ||
        cm_conf_keys(&ctx, reserve, SEC ".reserve", reserve_keys) ||
        cm_conf_size(&ctx, reserve, SEC ".reserve", "memory", 512u << 20, 0, 1ull << 50,
                     &c.reserve_memory) ||
        cm_conf_keys(&ctx, mvm, SEC ".microvm", microvm_keys) ||
        cm_conf_str(&ctx, mvm, SEC ".microvm", "qemu", "/usr/bin/qemu-system-x86_64",
                    &c.microvm.qemu) ||
        cm_conf_str(&ctx, mvm, SEC ".microvm", "image_dir", NULL, &c.microvm.image_dir) ||
        cm_conf_str(&ctx, mvm, SEC ".microvm", "accel", "auto", &c.microvm.accel) ||
        cm_conf_duration(&ctx, mvm, SEC ".microvm", "probe_timeout", 10 * CM_USEC_PER_SEC,
                         CM_USEC_PER_SEC, 600 * CM_USEC_PER_SEC, &c.microvm.probe_timeout) ||
        cm_conf_size(&ctx, mvm, SEC ".microvm", "memory_overhead", 192u << 20, 16u << 20,
                     1ull << 40, &c.microvm.memory_overhead) ||
        cm_conf_size(&ctx, mvm, SEC ".microvm", "default_memory", 256u << 20, 64u << 20, 1ull << 40,
                     &c.microvm.default_memory) ||
        cm_conf_u64(&ctx, mvm, SEC ".microvm", "nice", 10, 0, 19, &mvm_nice) ||
        cm_conf_secret(&ctx, section, SEC, "api_secret", "api_secret_file", CM_API_SECRET_MIN,
                       CM_SECRET_TOKEN, &c.api_secret) ||
        cm_conf_keys(&ctx, relay, SEC ".instance_relay", relay_keys) ||
        cm_conf_str(&ctx, relay, SEC ".instance_relay", "listen", "", &c.instance_relay.listen) ||
        cm_conf_str(&ctx, relay, SEC ".instance_relay", "advertise", "",
                    &c.instance_relay.advertise) ||
        cm_conf_u64(&ctx, relay, SEC ".instance_relay", "max_connections", 1024, 1, 1u << 20,
                    &relay_conns) ||
        cm_conf_duration(&ctx, relay, SEC ".instance_relay", "handshake_timeout",
                         5 * CM_USEC_PER_SEC, 100 * CM_USEC_PER_MSEC, 600 * CM_USEC_PER_SEC,
                         &c.instance_relay.handshake_timeout) ||
        cm_conf_duration(&ctx, relay, SEC ".instance_relay", "max_clock_skew",
                         30 * CM_USEC_PER_SEC, CM_USEC_PER_SEC, 3600 * CM_USEC_PER_SEC,
                         &relay_skew) ||
        cm_conf_size(&ctx, relay, SEC ".instance_relay", "buffer", 64u << 10, 4u << 10,
                     1u << 20, &c.instance_relay.buffer) ||
        cm_conf_keys(&ctx, egress, SEC ".egress", egress_keys) ||
        cm_conf_bool(&ctx, egress, SEC ".egress", "enabled", 1, &c.egress.enabled) ||
        cm_conf_u64(&ctx, egress, SEC ".egress", "port", 3128, 1, 65535, &eg_port) ||
        cm_conf_str(&ctx, egress, SEC ".egress", "resolver", "", &c.egress.resolver) ||
        cm_conf_duration(&ctx, egress, SEC ".egress", "handshake_timeout", 10 * CM_USEC_PER_SEC,
                         100 * CM_USEC_PER_MSEC, 600 * CM_USEC_PER_SEC,
                         &c.egress.handshake_timeout) ||
        cm_conf_duration(&ctx, egress, SEC ".egress", "connect_timeout", 10 * CM_USEC_PER_SEC,
                         100 * CM_USEC_PER_MSEC, 600 * CM_USEC_PER_SEC,
                         &c.egress.connect_timeout) ||
        cm_conf_u64(&ctx, egress, SEC ".egress", "max_connections", 1024, 1, 1u << 20,
                    &eg_conns) ||
        cm_conf_u64(&ctx, egress, SEC ".egress", "max_connections_per_sandbox", 64, 1, 1u << 20,
                    &eg_conns_sb) ||
        cm_conf_size(&ctx, egress, SEC ".egress", "max_header_bytes", 16u << 10, 1u << 10,
                     1u << 20, &c.egress.max_header_bytes) ||
        cm_conf_size(&ctx, egress, SEC ".egress", "buffer", 64u << 10, 4u << 10, 1u << 20,
                     &c.egress.buffer))
        goto fail;
    c.egress.port = (uint16_t)eg_port;
    c.egress.max_conns = (uint32_t)eg_conns;
    c.egress.max_conns_per_sandbox = (uint32_t)eg_conns_sb;
    if (!*c.egress.resolver) {
        free(c.egress.resolver);
        c.egress.resolver = NULL;
    } else {
        struct sockaddr_storage rs;
        int rl = (int)sizeof(rs);
        if (evutil_parse_sockaddr_port(c.egress.resolver, (struct sockaddr *)&rs, &rl) < 0) {
            cm_conf_fail(&ctx, cm_ynode_get(egress, "resolver"), SEC ".egress", "resolver",
                         "must be an IP address with an optional port (10.0.0.2, "
                         "10.0.0.2:5353, [::1]:53), not '%s'",
                         c.egress.resolver);
            goto fail;
        }
    }
    c.instance_relay.max_conns = (uint32_t)relay_conns;
    c.instance_relay.max_skew_s = (uint32_t)(relay_skew / CM_USEC_PER_SEC);
    if (relay && relay->type != CM_YNODE_MAP) {
        cm_conf_fail(&ctx, relay, SEC, "instance_relay", "must be a mapping");
        goto fail;
    }
    if (!*c.instance_relay.listen) {
        free(c.instance_relay.listen);
        c.instance_relay.listen = NULL;
    } else {
        struct sockaddr_storage ss;
        unsigned slen;
        if (sch_relay_parse_listen(c.instance_relay.listen, &ss, &slen) < 0) {
            cm_conf_fail(&ctx, cm_ynode_get(relay, "listen"), SEC ".instance_relay", "listen",
                         "must be an IP address and port (10.0.0.5:7070, 0.0.0.0:7070, "
                         "[::]:7070), not '%s'",
                         c.instance_relay.listen);
            goto fail;
        }
        int wildcard = ss.ss_family == AF_INET6
                           ? IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr)
                           : ((struct sockaddr_in *)&ss)->sin_addr.s_addr == htonl(INADDR_ANY);
        if (wildcard && !*c.instance_relay.advertise) {
            cm_conf_fail(&ctx, relay, SEC ".instance_relay", "advertise",
                         "is required when listen is a wildcard address (%s): the address "
                         "gateways on other hosts connect to",
                         c.instance_relay.listen);
            goto fail;
        }
    }
    if (advertised(&ctx, relay, SEC ".instance_relay", &c.instance_relay.advertise) ||
        advertised(&ctx, section, SEC, &c.api_advertise))
        goto fail;
    c.microvm.nice = (uint32_t)mvm_nice;
    if (strcmp(c.microvm.accel, "auto") != 0 && strcmp(c.microvm.accel, "kvm") != 0 &&
        strcmp(c.microvm.accel, "tcg") != 0) {
        cm_conf_fail(&ctx, cm_ynode_get(mvm, "accel"), SEC ".microvm", "accel",
                     "must be auto, kvm or tcg, not '%s'", c.microvm.accel);
        goto fail;
    }
    c.reserve_cpu_millis = 500;
    const struct cm_ynode *rcpus = cm_ynode_get(reserve, "cpus");
    if (rcpus) {
        char *end;
        double v = rcpus->type == CM_YNODE_SCALAR ? strtod(rcpus->scalar, &end) : -1;
        if (rcpus->type != CM_YNODE_SCALAR || *end || v < 0 || v > 1024) {
            cm_conf_fail(&ctx, rcpus, SEC ".reserve", "cpus", "must be a number of cores 0..1024");
            goto fail;
        }
        c.reserve_cpu_millis = (uint32_t)(v * 1000 + 0.5);
    }
    /* Each possible instance gets its own range of SCH_UID_RANGE_SIZE host ids. */
    if (uid_base + (uint64_t)capacity * SCH_UID_RANGE_SIZE > UINT32_MAX) {
        cm_conf_fail(&ctx, cm_ynode_get(section, "uid_base"), SEC, "uid_base",
                     "uid_base + capacity x %u must stay below 2^32", SCH_UID_RANGE_SIZE);
        goto fail;
    }
    c.uid_base = (uint32_t)uid_base;
    c.socket_gid = 0;
    if (socket_group && *socket_group) {
        char *end;
        errno = 0;
        unsigned long gid = strtoul(socket_group, &end, 10);
        struct group *gr = NULL;
        if (*end || errno || gid >= UINT32_MAX) {
            gr = getgrnam(socket_group);
            gid = gr ? gr->gr_gid : UINT32_MAX;
        }
        if (gid >= UINT32_MAX) {
            cm_conf_fail(&ctx, cm_ynode_get(section, "socket_group"), SEC, "socket_group",
                         "no group '%s' on this host", socket_group);
            goto fail;
        }
        c.socket_gid = (uint32_t)gid;
    }
    free(socket_group);
    socket_group = NULL;
    if (!c.api_secret) {
        /* No insecure default: anyone who reaches the API could start sandboxes and read
         * every session's binding. */
#define NO_SECRET                                                                              \
    "api_secret or api_secret_file is required: the shared secret (%d-%d visible ASCII "      \
    "characters, e.g. `openssl rand -hex 32`) that the gateway sends to this API as "         \
    "\"Authorization: Bearer <secret>\""
        if (section)
            cm_conf_fail(&ctx, section, SEC, NULL, NO_SECRET, CM_API_SECRET_MIN, CM_SECRET_MAX);
        else
            snprintf(err, errlen, "%s: scheduler: (no such section) " NO_SECRET, file,
                     CM_API_SECRET_MIN, CM_SECRET_MAX);
#undef NO_SECRET
        goto fail;
    }
    c.capacity = (uint32_t)capacity;
    c.pool_max_starting = (uint32_t)max_starting;
    c.relay_max_conns = (uint32_t)max_conns;
    c.exec_max = (uint32_t)exec_max;
    c.api_max_pending = (uint32_t)max_pending;
    c.api_max_connections = (uint32_t)api_conns;
    c.health_max_conns = (uint32_t)health_conns;
    if (c.host_down_after && c.host_down_after < 3 * c.heartbeat) {
        cm_conf_fail(&ctx, cm_ynode_get(section, "host_down_after"), SEC, "host_down_after",
                     "must be 0 (never) or at least 3 heartbeats: a host that missed fewer is "
                     "not down");
        goto fail;
    }
    if (c.api_header_timeout > c.api_timeout) {
        cm_conf_fail(&ctx, cm_ynode_get(section, "api_header_timeout"), SEC, "api_header_timeout",
                     "must not exceed api_timeout");
        goto fail;
    }

    if (!c.host_id || !*c.host_id) {
        char host[256];
        free(c.host_id);
        if (gethostname(host, sizeof(host)) < 0)
            strcpy(host, "localhost");
        host[sizeof(host) - 1] = '\0';
        char *dot = strchr(host, '.');
        if (dot && dot != host)
            *dot = '\0'; /* the short name */
        c.host_id = strdup(host);
        if (!c.host_id)
            goto oom;
        if (!valid_host_id(c.host_id)) {
            cm_conf_fail(&ctx, section, SEC, "host_id",
                         "the hostname '%s' is not a valid host id: set host_id", c.host_id);
            goto fail;
        }
    } else if (!valid_host_id(c.host_id)) {
        cm_conf_fail(&ctx, cm_ynode_get(section, "host_id"), SEC, "host_id",
                     "must be 1-%d characters of [A-Za-z0-9._-]", SCH_HOST_ID_MAX);
        goto fail;
    }
    if (parse_listen(&ctx, section, "api_listen", listen, &c.api_host, &c.api_port) ||
        (*health &&
         parse_listen(&ctx, section, "health_listen", health, &c.health_host, &c.health_port)))
        goto fail;
    if (!*c.run_dir || !*c.storage_root) {
        cm_conf_fail(&ctx, section, SEC, !*c.run_dir ? "run_dir" : "storage_root",
                     "must not be empty");
        goto fail;
    }
    if (!(c.run_dir = absolutize(c.run_dir)) || !(c.storage_root = absolutize(c.storage_root)))
        goto oom;
    struct sockaddr_un sun;
    if (strlen(c.run_dir) + 1 + SCH_INST_ID_MAX + strlen(SOCK_SUFFIX) >= sizeof(sun.sun_path)) {
        cm_conf_fail(&ctx, cm_ynode_get(section, "run_dir"), SEC, "run_dir",
                     "too long: {run_dir}/{id}%s must fit a unix socket path (%zu bytes)",
                     SOCK_SUFFIX, sizeof(sun.sun_path) - 1);
        goto fail;
    }
    if (!*c.cgroup_parent || strstr(c.cgroup_parent, "..")) {
        cm_conf_fail(&ctx, cm_ynode_get(section, "cgroup_parent"), SEC, "cgroup_parent",
                     "must be a non-empty path without '..'");
        goto fail;
    }
    if (!c.agent_path || !*c.agent_path) {
        free(c.agent_path);
        if (!(c.agent_path = default_agent_path()))
            goto oom;
    } else if (!(c.agent_path = absolutize(c.agent_path))) {
        goto oom;
    }
    if (!c.microvm.image_dir || !*c.microvm.image_dir) {
        /* The build's guest image: guest/ next to berth-agent (meson's scheduler/guest/). */
        free(c.microvm.image_dir);
        const char *slash = strrchr(c.agent_path, '/');
        size_t dl = slash ? (size_t)(slash - c.agent_path) : 0;
        if (!(c.microvm.image_dir = malloc(dl + sizeof("/guest"))))
            goto oom;
        memcpy(c.microvm.image_dir, c.agent_path, dl);
        memcpy(c.microvm.image_dir + dl, "/guest", sizeof("/guest"));
    } else if (!(c.microvm.image_dir = absolutize(c.microvm.image_dir))) {
        goto oom;
    }
    if (!(c.microvm.qemu = absolutize(c.microvm.qemu)))
        goto oom;
    for (char **b = c.ro_binds; b && *b; b++) {
        if ((*b)[0] != '/' || strstr(*b, "..") || strcmp(*b, "/") == 0) {
            cm_conf_fail(&ctx, cm_ynode_get(section, "ro_binds"), SEC, "ro_binds",
                         "'%s': entries must be absolute paths other than / without '..'", *b);
            goto fail;
        }
        /* Every sandbox sees its ro_binds: never the other instances' sockets and data. */
        const char *inner[] = {c.run_dir, c.storage_root};
        for (size_t k = 0; k < 2; k++) {
            size_t bl = strlen(*b), il = strlen(inner[k]);
            int overlap = (il >= bl && strncmp(inner[k], *b, bl) == 0 &&
                           (inner[k][bl] == '/' || inner[k][bl] == '\0' || (*b)[bl - 1] == '/')) ||
                          (bl >= il && strncmp(*b, inner[k], il) == 0 &&
                           ((*b)[il] == '/' || (*b)[il] == '\0'));
            if (overlap) {
                cm_conf_fail(&ctx, cm_ynode_get(section, "ro_binds"), SEC, "ro_binds",
                             "'%s' overlaps %s %s: every sandbox would see the others' sockets "
                             "and data",
                             *b, k ? "storage_root" : "run_dir", inner[k]);
                goto fail;
            }
        }
    }
    free(listen);
    free(health);
    *ret = c;
    return 0;
oom:
    cm_conf_fail(&ctx, section, SEC, NULL, "out of memory");
fail:
    free(listen);
    free(health);
    free(socket_group);
    sch_config_fini(&c);
    return -EINVAL;
}

void sch_config_fini(struct sch_config *c)
{
    free(c->host_id);
    free(c->api_host);
    free(c->api_advertise);
    free(c->health_host);
    free(c->run_dir);
    free(c->storage_root);
    free(c->cgroup_parent);
    free(c->agent_path);
    cm_strv_free(c->ro_binds);
    cm_secret_free(c->api_secret);
    free(c->microvm.qemu);
    free(c->microvm.image_dir);
    free(c->microvm.accel);
    free(c->egress.resolver);
    free(c->instance_relay.listen);
    free(c->instance_relay.advertise);
    memset(c, 0, sizeof(*c));
}
