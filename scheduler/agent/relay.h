/* The agent's relay: every connection accepted on the app socket is copied byte for byte to
 * 127.0.0.1:<port> and back. Both directions have a bounded buffer (reading from a side stops
 * while the opposite buffer is full); an EOF from one side is passed on as shutdown(SHUT_WR)
 * once its buffer is drained, so half-closed connections work; a connection ends when both
 * directions have ended or either side fails.
 *
 * A new connection first waits: until the app is ready and, while the agent is holding (before
 * BIND), until its hold deadline passes. Only then is the app connected. At most <max_conns>
 * connections exist at once; beyond that the listener is paused (the kernel backlog queues).
 * Single-threaded; every call comes from the agent's loop. */
#ifndef AGENT_RELAY_H
#define AGENT_RELAY_H

#include <stddef.h>
#include <stdint.h>

struct agent_relay;

struct agent_relay_config {
    uint16_t port; /* the app's TCP port on 127.0.0.1 */
    size_t buffer; /* bytes per direction per connection */
    unsigned max_conns;
    uint64_t hold_ms; /* how long a connection waits for BIND (0: no holding at all) */
    int hold_closes;  /* 1: at its hold deadline a connection is closed, never passed to the app
                       * before BIND (a VM clone: the snapshot's clock and RNG state until
                       * BIND); 0: it goes on to the app (the process driver's bind_wait) */
    /* A ports-socket connection whose first line is "BERTH-EXEC" (or "BERTH-EXEC <key>", 64
     * lower-case hex digits) is handed over: its fd, the bytes read after the line and the key
     * ("" when none; exec.h checks it). NULL: such connections are closed. */
    void (*on_exec)(int fd, const char *pending, size_t len, const char *key);
    /* 1: a ports connection's "BERTH-PORT <n> <key>" must carry the key agent_relay_set_key()
     * gave (a guest's: its ports listener is a forward any local user of the host reaches). */
    int require_key;
    uint16_t own_ports[2]; /* ports a port line may not name (the agent's own listeners), 0 */
};

/* Returns a relay accepting on <listen_fd> (to cfg->port) and, when <ports_fd> >= 0, on a
 * ports socket whose connections first send one line "BERTH-PORT <n>\r\n" naming the port
 * inside the sandbox they go to (the gateway's preview links). Takes ownership of both fds,
 * also on failure; NULL on failure. Starts holding when cfg->hold_ms > 0. */
struct agent_relay *agent_relay_create(int epfd, int listen_fd, int ports_fd,
                                       const struct agent_relay_config *cfg);
/* Adds a listening TCP socket (guest mode: the host's forwards) whose connections are relayed
 * like those of the app socket (<ports> 0: 0.0.0.0:relay_port) or of the ports socket (1:
 * 0.0.0.0:ports_port, the exec channel and preview links of a VM). Takes ownership of <fd>,
 * also on failure. Returns 0 or -errno (-EBUSY: one is there already). */
int agent_relay_listen_tcp(struct agent_relay *r, int fd, int ports);
void agent_relay_destroy(struct agent_relay *r);
/* The app accepts connections now: waiting connections may go. */
void agent_relay_set_ready(struct agent_relay *r);
/* BIND arrived: stop holding; waiting connections may go. */
void agent_relay_release(struct agent_relay *r);
/* Lets waiting connections whose deadline passed go; returns the next deadline (monotonic
 * ms) still pending, or 0 when none. Call it from a timer. */
uint64_t agent_relay_tick(struct agent_relay *r, uint64_t now_ms);
/* Frees connections closed during the last batch of events (call after each batch). */
void agent_relay_reap(struct agent_relay *r);
/* BIND's key (AGENT_EXEC_KEY_LEN hex digits): keyed port lines are checked against it. */
void agent_relay_set_key(struct agent_relay *r, const char *key);
/* Connections with a deadline (waiting, or reading their first line): tick when non-zero. */
unsigned agent_relay_timed(const struct agent_relay *r);
unsigned agent_relay_conns(const struct agent_relay *r);
unsigned agent_relay_waiting(const struct agent_relay *r);
int agent_relay_holding(const struct agent_relay *r);
/* Before the host freezes the sandbox (PAUSE): refuses with -EBUSY and a reason in <ret_why>
 * while any connection is being set up, has bytes buffered or waiting in either socket
 * (FIONREAD) or is half-closed, or any byte was
 * relayed less than <quiet_ms> before <now_ms> (a request in flight); else stops accepting
 * (new connections wait in the listeners' backlogs, which is what the host watches to resume)
 * and closes every connection, idle keep-alive connections of the gateway (a request the
 * gateway would send on one while frozen would wait unseen; it reconnects instead). Returns 0
 * with how many it closed in <ret_closed>. */
int agent_relay_pause(struct agent_relay *r, uint64_t now_ms, uint64_t quiet_ms,
                      unsigned *ret_closed, const char **ret_why);
/* After the host thawed the sandbox (RESUME): accepts again. A relay not paused is unchanged. */
void agent_relay_resume(struct agent_relay *r);
int agent_relay_quiesced(const struct agent_relay *r);

#endif
