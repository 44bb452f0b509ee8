/* The egress proxy: the only way out of a sandbox.
 *
 * A process sandbox has no network but its own loopback. Its setup (sandbox.c) leaves one
 * listening socket there, 127.0.0.1:<scheduler.egress.port> (3128) in the sandbox's network
 * namespace, which berth-agent holds and never accepts on; the app gets HTTP_PROXY,
 * HTTPS_PROXY (and lower-case) naming it and NO_PROXY for the loopback. The scheduler takes that
 * socket (pidfd_getfd) and hands it to this proxy, a process of its own (berth-egress, forked at
 * start-up, gone with the scheduler), which accepts the sandbox's connections on the host's
 * side and decides each one against the instance's policy (common/egress.h: the template's
 * egress lists plus the session's):
 *
 *   CONNECT host:port HTTP/1.1          a tunnel (HTTPS, git, ssh over 443, any TCP): after
 *                                       "200 Connection established" the bytes go through
 *                                       untouched
 *   GET http://host[:port]/path HTTP/1.1  a plain HTTP request: sent on in origin form, the
 *                                       proxy's own headers dropped, then the bytes go through
 *
 * The name asked for is checked before it is resolved (a refused name is never looked up),
 * then every address it resolves to (through the configured resolver), and a connection goes
 * only to an allowed address: no special address (loopback, private, link-local, metadata)
 * unless the policy names it by address. A refusal is an HTTP answer (403, or 400/431/502/504)
 * with the reason, and an audit event (`egress_refused`); the first allowed connection to each
 * destination of a session is an `egress_allowed` event.
 *
 * Scheduler side: every call below runs on the scheduler's loop; the events come back through
 * <cb> there. */
#ifndef SCH_EGRESS_H
#define SCH_EGRESS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct sch_egress;
struct sch_egress_config;

/* An audit event from the proxy: <decision> "allowed" (the first of a destination) or
 * "refused", with the instance, its tenant and session as its policy named them ("" before
 * one), the destination and a reason token ("policy", "address", "resolve", "connect",
 * "bad_request", ...). */
typedef void (*sch_egress_event_cb)(const char *id, const char *tenant, const char *session,
                                    const char *decision, const char *host, unsigned port,
                                    const char *reason, void *arg);

/* Bytes instance <id> (bound to <session>, "" when none) sent to (<out>) and received from
 * (<in>) its destinations since the last report (reports come once a second). */
typedef void (*sch_egress_bytes_cb)(const char *id, const char *session, uint64_t out, uint64_t in,
                                    void *arg);

/* Forks the proxy process (it runs as nobody, and overwrites its copies of the strings of
 * <wipe>, NULL-terminated, borrowed: the scheduler's secrets). <base>: the scheduler's loop,
 * where <cb> (audit events) and <bytes_cb> (byte counts) run with <arg>. Returns a new proxy
 * (free with sch_egress_destroy()) or NULL with a message in <err>. */
struct sch_egress *sch_egress_create(const struct sch_egress_config *ec, struct event_base *base,
                                     sch_egress_event_cb cb, sch_egress_bytes_cb bytes_cb,
                                     void *arg, char *const *wipe, char *err, size_t errlen);
/* Ends the proxy process (connections through it end). Takes NULL. */
void sch_egress_destroy(struct sch_egress *e);
/* A descriptor readable (POLLIN) once the proxy process ended (a crash: it ends only with us). */
int sch_egress_exit_fd(const struct sch_egress *e);
/* Reaps it and forks another, which knows no instance: the caller hands every listener and
 * policy over again. Returns the old process's wait status (>= 0) or a negative errno. */
int sch_egress_respawn(struct sch_egress *e);

/* Hands instance <id>'s listening socket to the proxy. Takes ownership of <fd> (closed here,
 * also on failure). Until a policy arrives, everything is refused. Returns 0 or -EIO. */
int sch_egress_add(struct sch_egress *e, const char *id, int fd);
/* Instance <id>'s policy, for session <session> (its hash) of <tenant>: <allow> and <deny>
 * (NULL-terminated, or NULL) in each of the two lists given (the template's, trusted to open
 * special addresses by address patterns; then the session's, never trusted),
 * every entry a valid common/egress.h pattern. Replaces the previous one at once (open
 * connections keep going). Returns 0, -E2BIG (more than CM_EGRESS_MAX_ENTRIES in a list) or
 * -EIO. */
int sch_egress_policy(struct sch_egress *e, const char *id, const char *tenant, const char *session,
                      char *const *allow[2], char *const *deny[2]);
/* Forgets <id>: its listener is closed. Takes an unknown id and NULL <e>. */
void sch_egress_del(struct sch_egress *e, const char *id);

/* --- pure parts, for the unit tests and the fuzzer --- */

enum sch_egress_req { SCH_EGRESS_CONNECT, SCH_EGRESS_FORWARD };

struct sch_egress_head {
    enum sch_egress_req kind;
    char host[256]; /* a name, or an address (IPv6 without brackets) */
    uint16_t port;
    /* FORWARD: the head to send on (origin-form request line, the proxy's headers dropped) */
    size_t out_len;
};

/* What the head to send may have beyond the head read: "Connection: close" and a '/'. */
#define SCH_EGRESS_HEAD_EXTRA 32
/* Parses a request head <buf> (<len> bytes up to and with its "\r\n\r\n"). On success fills
 * <ret> and, for FORWARD, writes the head to send into <out> (<cap> bytes, at least <len> +
 * SCH_EGRESS_HEAD_EXTRA): origin-form, the proxy's and the connection's headers dropped,
 * "Connection: close" added (one request per connection).
 * Returns 0, or an HTTP status (400: not a request a proxy takes; 405: a method without an
 * absolute http:// URL other than CONNECT) with a reason in <why> (static text). */
int sch_egress_parse_head(const char *buf, size_t len, struct sch_egress_head *ret, char *out,
                          size_t cap, const char **why);

#endif
