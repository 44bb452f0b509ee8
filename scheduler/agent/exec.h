/* The agent's exec channel (issue 17; the frames are in proto.h): a connection of the ports
 * socket that began with "BERTH-EXEC" runs one command inside the sandbox, as the agent's own
 * children are: the app's user, namespaces, cgroups, seccomp filter and environment (plus the
 * frames' "E" entries), in the workspace unless a "D" frame says otherwise, in a process group
 * of its own. Its stdin comes from "I" frames, its stdout and stderr go back as "O" and "R"
 * frames as they are produced, and an "X" frame ends the exchange.
 *
 * Bounds: at most <max_execs> commands at once (more get "F"); per command 256 KiB of output
 * waiting for the gateway (the pipes are not read above it, so a command writing faster than
 * its client reads blocks) and 256 KiB of stdin waiting for the command. The gateway closing
 * the connection kills the command's process group (SIGKILL), as its timeout does; when the
 * command itself exits, what is left of its group is killed too, so its pipes close, and the
 * end is reported at the latest a second later.
 *
 * Single-threaded; every call comes from the agent's loop. */
#ifndef AGENT_EXEC_H
#define AGENT_EXEC_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct agent_guest_conf;

struct agent_exec_config {
    unsigned max_execs;
    uint64_t hold_ms; /* > 0: until BIND (agent_exec_release()), at most this long, nothing
                       * starts: a session's /data is mounted at its bind */
    const sigset_t *child_mask;                /* the signal mask a command starts with */
    const struct agent_guest_conf *guest_conf; /* guest mode: the app's identity, else NULL */
    /* 1: nothing starts without the key BIND gives (exec_key=; a VM's channel is a TCP forward
     * any local user of the host can reach); 0: a key is checked only once BIND gave one. */
    int require_key;
};

void agent_exec_init(int epfd, const struct agent_exec_config *cfg);
/* Takes connection <fd> (its "BERTH-EXEC" line read; <len> bytes at <pending> came after
 * it; <key> the line's key, "" when none). Takes ownership of <fd>, also on failure. */
void agent_exec_take(int fd, const char *pending, size_t len, const char *key);
/* BIND's exec_key= (AGENT_EXEC_KEY_LEN hex digits; "" or NULL: none): from now on a command
 * or file operation starts only on a connection that presented it. */
void agent_exec_set_key(const char *key);
/* Child <pid> ended with wait status <status>: 1 when it was a command's, else 0. */
int agent_exec_reaped(pid_t pid, int status);
/* Kills commands past their timeout, reports ends that waited for their pipes; returns the
 * next deadline (monotonic ms) or 0. */
uint64_t agent_exec_tick(uint64_t now_ms);
/* Frees the exchanges that ended during the last batch of events. */
void agent_exec_reap(void);
/* BIND arrived: held exchanges start. */
void agent_exec_release(void);
/* Commands running now. */
unsigned agent_exec_running(void);
/* Exchanges open on the channel now (commands, and file transfers: PAUSE waits for them). */
unsigned agent_exec_open(void);

#endif
