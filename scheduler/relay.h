/* The instance relay: how gateways on other hosts reach this host's instances.
 *
 * An instance's own address is local: a unix socket (process driver) or a loopback forward (a
 * microVM). With `scheduler.instance_relay.listen` set, the scheduler listens on a TCP address
 * of the host and publishes every instance's address as
 *
 *   "relay:<advertise host:port>/<kind>/<instance id>"   kind: proc | vm | tcp
 *
 * A gateway connects there and sends one line first (common/secret.h):
 *   "BERTH-RELAY <instance> <app|ports> <unix seconds> <HMAC of the rest>\r\n"
 * The relay takes the line only when its MAC is right (scheduler.api_secret), its time is within
 * max_clock_skew of ours, and the instance is live on this host; then it connects to the
 * instance's app or ports socket and relays both ways with splice(2) (no copy through user
 * space, at most <buffer> bytes in flight per direction: the pipe between the two sockets).
 * Anything else is closed without a byte of answer. Everything after the line passes through
 * unchanged (the agent's "BERTH-PORT"/"BERTH-EXEC" lines too).
 *
 * The relay is a process of its own (forked by sch_relay_create(), named berth-relay, gone
 * with the scheduler), with its own event loop, so that a slow scheduler step (a blocking QMP
 * call, an adoption) never stalls relayed bytes. The scheduler tells it which instances exist
 * (sch_relay_add/del: a line each over a socket pair); the counters are shared memory. */
#ifndef SCH_RELAY_H
#define SCH_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "common/time.h"

struct sch_relay;
struct sch_relay_config;

/* What the relay counted since it started (for GET /v1/status). */
struct sch_relay_stats {
    uint64_t accepted; /* connections taken */
    uint64_t relayed;  /* of those, connected to an instance */
    uint64_t refused;  /* closed: bad or late line, unknown instance, instance unreachable */
    uint64_t active;   /* open now (handshake or relaying) */
};

/* Binds the listener and starts the thread. <secret> is borrowed for the relay's life.
 * Returns a new relay (free with sch_relay_destroy()), or NULL with a message in <err>. */
struct sch_relay *sch_relay_create(const struct sch_relay_config *rc, const char *secret, char *err,
                                   size_t errlen);
/* Stops the thread, closes every relayed connection and frees. Takes NULL. */
void sch_relay_destroy(struct sch_relay *r);

/* Makes instance <id> reachable: <addr> is its driver's address ("unix:<dir>/app.sock",
 * "vm:127.0.0.1:<port>" or "tcp:<host>:<port>"). Replaces an earlier entry of the same id.
 * A connection that arrives after this returned finds the instance. Returns 0, -EINVAL (an
 * address of another shape, a bad id) or -EIO (the relay process does not read). */
int sch_relay_add(struct sch_relay *r, const char *id, const char *addr);
/* Forgets <id>: new connections to it are refused (open ones end on their own when the
 * instance goes). Takes an unknown id, and NULL <r>. */
void sch_relay_del(struct sch_relay *r, const char *id);

/* The address gateways use for instance <id> whose driver address is <addr> (see above), into
 * <out>. Returns 0, or -EINVAL (<addr> of another shape, or it does not fit <len>). */
int sch_relay_public_addr(const struct sch_relay *r, const char *id, const char *addr, char *out,
                          size_t len);
/* A descriptor readable (POLLIN) once the relay process ended (it should not: a crash). */
int sch_relay_exit_fd(const struct sch_relay *r);
/* Reaps the ended relay process and forks another on the same listener; its table is empty:
 * the caller adds every live instance again. Returns the old process's wait status (>= 0) or
 * a negative errno (no new process). */
int sch_relay_respawn(struct sch_relay *r);
/* "host:port" gateways connect to. */
const char *sch_relay_advertised(const struct sch_relay *r);
void sch_relay_get_stats(struct sch_relay *r, struct sch_relay_stats *ret);

/* --- pure parts, for the config, the unit tests and the fuzzer --- */

/* "IPv4:port" or "[IPv6]:port" (port 0..65535, 0: any free one) into <ret> and *ret_len.
 * Returns 0 or -EINVAL. */
struct sockaddr_storage;
int sch_relay_parse_listen(const char *s, struct sockaddr_storage *ret, unsigned *ret_len);

enum sch_relay_channel { SCH_RELAY_APP, SCH_RELAY_PORTS };

/* Checks the line <line> (<len> bytes, up to and without its "\r\n" or "\n"): its shape, then
 * that |<now_s> - its time| <= <max_skew_s>, then its MAC under <secret> (compared in constant
 * time). Returns 0 with the instance id in <ret_id> (CM_RELAY_ID_MAX + 1 bytes) and the channel
 * in *ret_chan; -EINVAL (not such a line), -ETIME (its time is too far from ours) or -EACCES
 * (wrong MAC). Outputs are untouched on failure. */
int sch_relay_check_hello(const char *line, size_t len, const char *secret, int64_t now_s,
                          uint32_t max_skew_s, char *ret_id, enum sch_relay_channel *ret_chan);

/* The local socket of <chan> of a driver address <addr> (see sch_relay_add) as a sockaddr in
 * <ret> with its length in *ret_len. Returns 0 or -EINVAL (no such channel: a "tcp:" address
 * has no ports socket). */
int sch_relay_local_addr(const char *addr, enum sch_relay_channel chan,
                         struct sockaddr_storage *ret, unsigned *ret_len);

#endif
