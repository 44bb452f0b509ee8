/* berth-agent's control protocol: one command per line on /run/berth/ctl.sock, one reply line
 * per command. Pure code (no I/O), shared by the agent and its unit test.
 *
 *   PING          -> "OK ready" | "OK starting"
 *   BIND <h> [clock=<sec>.<nsec9>] [seed=<64 hex>] [id=<instance id>] [data=1]
 *                 -> "OK"            (releases held connections; <h> is 1..128 bytes 0x21..0x7E)
 *   STATUS        -> "OK <ready|starting> bound=<h|-> conns=<n> held=<n> id=<id>"
 *   TERM          -> "OK"            (SIGTERM to the app; the agent ends when it has exited)
 *   PAUSE <quiet_ms>
 *                 -> "OK closed=<n>" (the host is about to freeze the sandbox: the relay stops
 *                                     accepting and closes its idle connections)
 *                  | "BUSY <reason>" (a connection is in use, or carried bytes less than
 *                                     <quiet_ms> ago, 0..86400000: nothing changed)
 *   RESUME        -> "OK"            (the host thawed it: accept again; also when not paused)
 *   SYNC <token>  -> "SYNC <token>"  (1-32 of [A-Za-z0-9]: the host's fence; agentctl sends one
 *                                     before each command and takes the line after its echo)
 *   anything else -> "ERR <reason>"
 *
 * BIND's optional words (each at most once, any order, one space apart) are for a microVM
 * clone (guest mode, scheduler/README.md "microVM guest image"): the wall clock to set, 32
 * bytes to seed the kernel's RNG with, the instance's id, and "mount the data disk". Under the
 * process driver the agent ignores them. A line with any bad word is refused as a whole.
 *
 * Lines end with "\n" ("\r\n" accepted) and are at most AGENT_LINE_MAX bytes. */
#ifndef AGENT_PROTO_H
#define AGENT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"

#define AGENT_LINE_MAX 512
#define AGENT_SESSION_MAX 128
#define AGENT_ID_MAX 64     /* BIND id=: [A-Za-z0-9._-], like the kernel's berth.id= */
#define AGENT_SEED_BYTES 32 /* BIND seed=: exactly 64 hex digits */
#define AGENT_CLOCK_SEC_MAX 253402300799LL /* 9999-12-31T23:59:59Z */
#define AGENT_QUIET_MS_MAX 86400000UL      /* PAUSE's <quiet_ms>: a day */
/* BIND exec_key=: 64 lower-case hex digits, HMAC-SHA256(scheduler.api_secret, "berth-exec " +
 * instance id) (common/secret.h cm_secret_exec_key()). With one, every exec-channel
 * connection must present it ("BERTH-EXEC <key>"): a VM's ports listener is a TCP forward on
 * the host's loopback, which any local user can reach. */
#define AGENT_EXEC_KEY_LEN 64

enum agent_cmd_type {
    AGENT_CMD_PING,
    AGENT_CMD_BIND,
    AGENT_CMD_STATUS,
    AGENT_CMD_TERM,
    AGENT_CMD_PAUSE,
    AGENT_CMD_RESUME,
    AGENT_CMD_SYNC, /* "SYNC <token>": answered "SYNC <token>" (agentctl's fence) */
};
#define AGENT_SYNC_MAX 32 /* a SYNC token: 1..32 of [A-Za-z0-9] */

struct agent_cmd {
    enum agent_cmd_type type;
    char arg[AGENT_SESSION_MAX + 1]; /* BIND: the session; SYNC: the token */
    /* BIND's optional words; has_* say which were given. */
    int has_clock, has_seed, data;
    long long clock_sec; /* 0..AGENT_CLOCK_SEC_MAX */
    long clock_nsec;     /* 0..999999999 */
    unsigned char seed[AGENT_SEED_BYTES];
    char id[AGENT_ID_MAX + 1]; /* "" when absent */
    char exec_key[AGENT_EXEC_KEY_LEN + 1]; /* "" when absent */
    unsigned long quiet_ms;                /* PAUSE */
};

/* Whether <v> (<len> bytes) is an instance id: 1..AGENT_ID_MAX of [A-Za-z0-9._-]. */
int agent_id_valid(const char *v, size_t len);

/* Parses one line (without its line terminator; a trailing '\r' is ignored). Returns 0 and
 * fills <ret>, or -EINVAL and points <ret_err> at a static reason ("unknown command", ...);
 * <ret> is untouched on failure. */
int agent_proto_parse(const char *line, size_t len, struct agent_cmd *ret, const char **ret_err);

/* Splits a byte stream into lines, bounded. */
struct agent_linebuf {
    char buf[AGENT_LINE_MAX + 1];
    size_t len;
    int too_long; /* discarding the rest of an over-long line */
};

/* Consumes bytes of <in> up to and including the first '\n'; returns how many it consumed.
 * <ret_status>: 0 more bytes needed; 1 a complete line is in lb->buf (NUL-terminated, without
 * "\n", lb->len bytes); -E2BIG a line longer than AGENT_LINE_MAX ended (it was discarded).
 * After a non-zero status call agent_linebuf_reset() before feeding on. */
size_t agent_linebuf_feed(struct agent_linebuf *lb, const char *in, size_t len, int *ret_status);
void agent_linebuf_reset(struct agent_linebuf *lb);

/* --- the exec channel (issue 17) ---
 * A connection on the ports socket whose first line is "BERTH-EXEC\r\n" (the gateway's: only
 * it reaches that socket) runs one command in the sandbox. Frames both ways:
 *     [type: 1 byte][length: 4 bytes, big-endian][payload: length bytes]
 * Gateway to agent: 'A' one argv element (1..4096 bytes), 'E' one "NAME=value" of the
 * command's environment (on top of the app's; NAME [A-Za-z_][A-Za-z0-9_]*), 'D' the working
 * directory (absolute), 'T' the timeout in ms (decimal, 1..86400000), then 'S' start; after
 * it 'I' bytes for the command's stdin and 'Z' its end. Agent to gateway: 'O' stdout bytes,
 * 'R' stderr bytes, 'F' the command did not start (a reason), and last 'X' its end:
 * "code=N ms=M" or "signal=N ms=M", with " timeout=1" when the timeout killed it. */
#define AGENT_EXEC_ARGS_MAX 256
#define AGENT_EXEC_ENV_MAX 256
#define AGENT_EXEC_ARG_MAX 4096
#define AGENT_EXEC_SPEC_MAX (256 * 1024) /* argv + env + cwd bytes in all */
#define AGENT_EXEC_TIMEOUT_MAX 86400000ULL

/* Files (issue 17) on the same channel: 'P' a path, then one of 'G' read (the agent answers
 * 'O' with the file's bytes, then 'X' "size=N"), 'W' write (then 'I' the bytes and 'Z' their
 * end; 'X' "size=N" once the file is in place), 'U' delete ('X' "ok"), 'L' list a directory
 * ('O' one entry each: "<type>\0<size>\0<mtime ms>\0<mode octal>\0<name>", type f d l o;
 * then 'X' "ok"). A failure is 'F' "<code>: <message>", code one of not_found bad_path
 * not_a_file not_a_directory not_empty no_space denied io. A path is a sandbox path without
 * its leading slash, inside the workspace or /data: "workspace[/...]" or "data[/...]"; no
 * empty, "." or ".." component (a trailing "/" only for a directory to list); symlinks are
 * resolved inside that root (openat2 RESOLVE_BENEATH), never out of it. */
#define AGENT_PATH_MAX 4096

/* Checks <n> bytes at <p> as a file path: 0 with the root ("workspace" or "data") in
 * *ret_root and what follows it (without the slash; "" for the root itself, a trailing "/"
 * dropped) in <rest> (at least <n> + 1 bytes), *ret_dir 1 when it ended with "/"; else
 * -EINVAL with a reason. */
int agent_file_path(const char *p, size_t n, const char **ret_root, char *rest, int *ret_dir,
                    const char **ret_err);

/* What the frames before 'S' say. */
struct agent_exec_spec {
    char *argv[AGENT_EXEC_ARGS_MAX + 1]; /* NULL-terminated */
    size_t argc;
    char *env[AGENT_EXEC_ENV_MAX + 1]; /* "NAME=value", NULL-terminated */
    size_t envc;
    char *cwd;           /* NULL: the agent's (the workspace) */
    uint64_t timeout_ms; /* 0: none given */
    size_t bytes;
};
/* Adds frame <type> ('A', 'E', 'D' or 'T') of <n> bytes at <p>. Returns 0, -EINVAL with a
 * reason in <ret_err> (a bad value, another type, over a bound), or -ENOMEM. */
int agent_exec_spec_add(struct agent_exec_spec *s, char type, const char *p, size_t n,
                        const char **ret_err);
void agent_exec_spec_free(struct agent_exec_spec *s);

#endif
