/* The scheduler's own section of the shared config file (`scheduler:`). The shared sections
 * (redis, log, templates) are parsed by common/config.c; this module reads the rest with the
 * cm_conf_* getters so that errors read "file:line:col: scheduler.key: message".
 * README.md in this directory documents every key. */
#ifndef SCH_CONFIG_H
#define SCH_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "common/time.h"
#include "common/yaml.h"

/* Longest host id: instance ids are "<host>-<8 hex>" and must fit a hostname (63 bytes). */
#define SCH_HOST_ID_MAX 40
/* Longest instance id: host id + '-' + 8 hex digits. */
#define SCH_INST_ID_MAX (SCH_HOST_ID_MAX + 9)

/* Host ids for sandboxes: instance slot k maps its user namespace's 0..65535 to
 * uid_base + k * SCH_UID_RANGE_SIZE + (0..65535). The default stays clear of /etc/subuid's
 * usual ranges (100000 + 65536 per user) and below 2^31 for tools that read ids as signed. */
#define SCH_UID_BASE_DEFAULT 1000000000u
#define SCH_UID_RANGE_SIZE 65536u

/* scheduler.microvm: the microvm driver (driver_microvm.c). */
struct sch_microvm_config {
    char *qemu;               /* absolute path of qemu-system-x86_64 */
    char *image_dir;          /* absolute: vmlinux, initramfs.cpio.gz, kernel.release */
    char *accel;              /* "auto" (probe boot), "kvm" or "tcg": the host's choice */
    cm_usec_t probe_timeout;  /* the KVM probe boot */
    uint64_t memory_overhead; /* added to a VM's RAM for its cgroup's memory limit */
    uint64_t default_memory;  /* guest RAM of a template with memory: 0 */
    uint32_t nice;            /* added to QEMU's nice value: the control plane comes first */
};

/* scheduler.instance_relay: gateways on other hosts reach instances here (relay.h). */
struct sch_relay_config {
    char *listen;                /* "host:port" of the listener; NULL: no relay */
    char *advertise;             /* "host:port" or "host" gateways connect to; NULL: listen's */
    uint32_t max_conns;          /* relayed connections open at once */
    cm_usec_t handshake_timeout; /* the gateway's line, and the connect to the instance */
    uint32_t max_skew_s;         /* accepted difference between the line's clock and ours */
    uint64_t buffer;             /* bytes in flight per direction (a pipe's size) */
};

/* scheduler.egress: the egress proxy (egress.h). */
struct sch_egress_config {
    int enabled;                 /* 0: sandboxes get no proxy listener at all */
    uint16_t port;               /* the listener's port on the sandbox's 127.0.0.1 */
    char *resolver;              /* "IP[:port]" of the DNS server; NULL: /etc/resolv.conf's */
    cm_usec_t handshake_timeout; /* the request head (and the name's lookup) */
    cm_usec_t connect_timeout;
    uint32_t max_conns;          /* connections through the proxy at once, all sandboxes */
    uint32_t max_conns_per_sandbox; /* ... and of one sandbox */
    uint64_t max_header_bytes;
    uint64_t buffer; /* bytes in flight per direction per connection */
};

struct sch_config {
    char *host_id;      /* [A-Za-z0-9._-]{1,40}; default: gethostname() */
    char *api_host;     /* listen address of the scheduler API (IPv4 literal or "localhost") */
    char *api_advertise; /* "host:port" or "host" gateways call (registered); NULL: api_listen */
    uint16_t api_port;  /* 0: pick a free port (the registered address uses the real one) */
    char *run_dir;      /* absolute: per-instance dirs {run_dir}/{id}/ */
    char *storage_root; /* absolute: durable dirs {storage_root}/{tenant}/{h} */
    uint32_t capacity;  /* max live instances on this host */
    uint32_t pool_max_starting; /* pool refills: instances starting at once on this host */
    cm_usec_t heartbeat;
    cm_usec_t reap_interval;
    cm_usec_t host_down_after; /* another host's heartbeat older: its sessions lost (0: never) */
    cm_usec_t bind_wait;     /* how long the agent holds a connection waiting for BIND */
    cm_usec_t destroy_grace; /* SIGTERM to SIGKILL */
    char *cgroup_parent;     /* relative: under our own cgroup; absolute: from the hierarchy root */
    char *agent_path;        /* absolute path of berth-agent */
    char **ro_binds;       /* extra host paths bound read-only into every sandbox (may be empty) */
    uint64_t console_max;  /* bytes of app output kept in {run_dir}/{id}/console.log */
    uint64_t relay_buffer; /* agent: bytes buffered per direction per connection */
    uint32_t relay_max_conns; /* agent: concurrent relayed connections */
    uint32_t exec_max;        /* agent: commands run through the exec channel at once */
    uint64_t api_max_body;    /* scheduler API: largest request body */
    uint32_t api_max_pending; /* scheduler API: concurrent POST /v1/start waiting for readiness */
    uint64_t api_max_header_bytes; /* scheduler API: request line and headers */
    cm_usec_t api_timeout;         /* scheduler API: idle, reading a request, writing an answer */
    uint32_t api_max_connections;  /* scheduler API: connections open at once */
    cm_usec_t api_header_timeout;  /* scheduler API: a request head, from its first byte */
    char *health_host;             /* health_listen: GET /healthz alone; NULL: none */
    uint16_t health_port;
    uint32_t health_max_conns;     /* health_max_connections: its connections open at once */
    uint32_t uid_base;             /* first host uid/gid of the sandboxes' ranges */
    int insecure;                  /* start sandboxes without user namespace or seccomp */
    uint64_t reserve_memory;       /* kept out of the sandboxes' common cgroup */
    uint32_t reserve_cpu_millis;   /* likewise, in thousandths of a core */
    uint32_t socket_gid;           /* group of the instances' app.sock and ports.sock (0660) */
    struct sch_microvm_config microvm;
    struct sch_relay_config instance_relay;
    struct sch_egress_config egress;
    char *api_secret; /* required: POST /v1/start and the full GET /v1/status need
                       * "Authorization: Bearer <api_secret>" (api_secret or api_secret_file) */
};

/* Parses the `scheduler:` mapping <section> (NULL: all defaults, which fails: the API secret
 * has no default). <file> names the config file in messages. Relative paths are made absolute against the current working directory. On
 * success fills <ret> (release with sch_config_fini()) and returns 0; on failure returns
 * -EINVAL with "file:line:col: scheduler.key: message" in <err>, and <ret> is left empty. */
int sch_config_parse(struct sch_config *ret, const struct cm_ynode *section, const char *file,
                     char *err, size_t errlen);
/* Frees what sch_config_parse() allocated; takes a zeroed or half-filled struct. */
void sch_config_fini(struct sch_config *c);

#endif
