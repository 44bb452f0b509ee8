/* Secrets in the config file, and checking one presented by a client.
 *
 * A secret is given inline (`api_secret: ...`) or as the name of a file that holds it
 * (`api_secret_file: /path`), never both. The file is how deployments keep secrets out of the
 * config itself (a Kubernetes Secret volume, a file made by deploy/local/run): it must be a
 * regular file without any permission bit for group or others (chmod 600 or 400; a symlink to
 * such a file is fine, which is how Kubernetes mounts Secrets), at most CM_SECRET_MAX bytes
 * plus one trailing newline ("\n" or "\r\n"), which is dropped.
 *
 * Used for the scheduler API's shared secret (scheduler.api_secret / api_secret_file, read by
 * both daemons) and the Redis password (redis.password / password_file). Start-up code: these
 * functions read files and are not meant for a loop's hot path (cm_secret_bearer_ok() is, but
 * it hashes). */
#ifndef CM_SECRET_H
#define CM_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Longest secret, bytes. */
#define CM_SECRET_MAX 1024
/* Shortest scheduler API secret: 32 bytes (e.g. `openssl rand -hex 32` gives 64). */
#define CM_API_SECRET_MIN 32

enum cm_secret_charset {
    CM_SECRET_TOKEN, /* visible ASCII 0x21-0x7E only: it travels in an HTTP header */
    CM_SECRET_LINE,  /* any byte but NUL, CR and LF (a Redis password) */
};

/* Reads the secret of <map> (a mapping, or NULL for none) given inline as <key> or in the
 * file named by <file_key>. <path> is the dotted path of <map> for messages ("scheduler").
 * The secret must be <min_len>..CM_SECRET_MAX bytes of <charset>. An empty inline value
 * counts as not set. A relative file name is taken from the working directory.
 * Returns 0 with *ret a new string (free with cm_secret_free()), or 0 with *ret NULL when
 * neither key is set; -EINVAL with "file:line:col: path.key: message" in ctx->err (both keys
 * set, the file cannot be read, is not a regular file, is open to group or others, is too
 * long; a secret too short or with a byte outside <charset>). *ret is untouched on failure. */
int cm_conf_secret(struct cm_conf_ctx *ctx, const struct cm_ynode *map, const char *path,
                   const char *key, const char *file_key, size_t min_len,
                   enum cm_secret_charset charset, char **ret);

/* Overwrites <s> with zeros and frees it. Takes NULL. */
void cm_secret_free(char *s);

/* 1 when <authorization> (the value of an Authorization header; NULL: absent) is
 * "Bearer <secret>": the scheme in any case, blanks around the token ignored. Else 0. The
 * token is compared through SHA-256 digests with CRYPTO_memcmp(), so the time taken tells
 * nothing about how much of it matched or how long the secret is. */
int cm_secret_bearer_ok(const char *authorization, const char *secret);
/* The token of an "Authorization: Bearer <token>" value (scheme case-insensitive, blanks around
 * it dropped): a pointer into <authorization> and its length in <ret_len>, or NULL when the
 * value is not a non-empty bearer token (<ret_len> untouched). */
const char *cm_bearer_token(const char *authorization, size_t *ret_len);

/* Length of cm_secret_exec_key()'s answer: 64 lower-case hex digits. */
#define CM_EXEC_KEY_LEN 64
/* The key of instance <id>'s exec channel: HMAC-SHA256(<secret>, "berth-exec " <id>) as
 * lower-case hex into <out> (CM_EXEC_KEY_LEN + 1 bytes). The scheduler gives it to a VM's agent
 * with BIND; the gateway presents it on the channel ("BERTH-EXEC <key>"): both hold
 * scheduler.api_secret, a process on the host without it cannot open the channel, and one
 * instance's key opens no other. Returns 0, or -EIO (OpenSSL failed; <out> is ""). */
int cm_secret_exec_key(const char *secret, const char *id, char *out);

/* The instance relay (scheduler/relay.h): a gateway on any host opens a connection to an
 * instance through its scheduler host's relay by sending one line first,
 *   "BERTH-RELAY <instance> <channel> <unix seconds> <mac>\r\n",
 * <channel> "app" (the app socket or forward) or "ports" (the agent's ports socket or forward),
 * <mac> HMAC-SHA256(<secret>, "berth-relay <instance> <channel> <seconds>") in lower-case hex.
 * Both daemons hold scheduler.api_secret; the relay takes a line only within its allowed clock
 * skew of the time in it. */
#define CM_RELAY_HELLO_MAX 256
/* Longest instance id in the line, and its characters. */
#define CM_RELAY_ID_MAX 96
#define CM_RELAY_ID_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
/* Writes that line for instance <id> (1..CM_RELAY_ID_MAX bytes of CM_RELAY_ID_CHARS) and
 * <channel> at <now_s> into <out> (CM_RELAY_HELLO_MAX bytes). Returns its length, or -EINVAL
 * (a bad id or channel), -EIO (OpenSSL failed; <out> is ""). */
int cm_secret_relay_hello(const char *secret, const char *id, const char *channel, int64_t now_s,
                          char *out);
/* The MAC of the line's fields as lower-case hex into <out> (CM_EXEC_KEY_LEN + 1 bytes).
 * Returns 0, or -EIO. */
int cm_secret_relay_mac(const char *secret, const char *id, const char *channel, int64_t ts,
                        char *out);

#endif
