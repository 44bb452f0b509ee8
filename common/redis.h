/* An asynchronous Redis client on a libevent loop: hiredis underneath, plus what hiredis 0.14
 * lacks: a state machine with reconnect and backoff, AUTH/SELECT on every connect, a timeout on
 * every command, EVALSHA with a transparent EVAL fallback, and subscriptions that survive a
 * reconnect. One client belongs to one event loop and must only be used from it. */
#ifndef CM_REDIS_H
#define CM_REDIS_H

#include <stddef.h>

#include "config.h"
#include "store.h"

struct event_base;
struct redisReply;
struct cm_redis;

enum cm_redis_state {
    CM_REDIS_DISCONNECTED, /* waiting for the next reconnect attempt */
    CM_REDIS_CONNECTING,
    CM_REDIS_CONNECTED,
    CM_REDIS_CLOSED, /* destroyed */
};

/* Exported error strings, compared by pointer. */
extern const char cm_redis_err_timeout[];
extern const char cm_redis_err_disconnected[];
extern const char cm_redis_err_not_connected[];

/* Called once per command: <reply> (borrowed, valid during the call) or NULL with <err> one of
 * the exported strings or a Redis error text. A REDIS_REPLY_ERROR reply is passed as <err> with
 * <reply> NULL. Never called from inside cm_redis_command(). */
typedef void (*cm_redis_reply_cb)(struct redisReply *reply, const char *err, void *data);
/* Connection state changes: <connected> 1 after AUTH/SELECT succeeded, 0 when lost. */
typedef void (*cm_redis_state_cb)(struct cm_redis *r, int connected, void *data);
/* Redis refused the connection's handshake (AUTH: wrong user or password, or SELECT): <err>
 * is Redis's error text (borrowed), e.g. "WRONGPASS invalid username-password pair or user
 * is disabled.". The client keeps retrying with backoff; this runs once per different
 * refusal until a connection succeeds again, so a daemon can log it without flooding. */
typedef void (*cm_redis_refused_cb)(struct cm_redis *r, const char *err, void *data);
/* A message on a subscribed channel; <msg> is borrowed. */
typedef void (*cm_redis_message_cb)(const char *channel, const char *msg, size_t len, void *data);

/* Returns a new client that starts connecting at once (free with cm_redis_destroy()). Borrows
 * <cfg> and <base> for its whole life. <state_cb> may be NULL. */
struct cm_redis *cm_redis_create(struct event_base *base, const struct cm_redis_config *cfg,
                                 cm_redis_state_cb state_cb, void *data);
/* Fails every pending command with cm_redis_err_disconnected, then frees. Takes NULL. */
void cm_redis_destroy(struct cm_redis *r);
/* Sets (or clears, <cb> NULL) what runs when Redis refuses the handshake. */
void cm_redis_set_refused_cb(struct cm_redis *r, cm_redis_refused_cb cb, void *data);
enum cm_redis_state cm_redis_state(const struct cm_redis *r);
const char *cm_redis_prefix(const struct cm_redis *r);
/* For logs: redis.address, or with sentinels the primary they named last ("host:port", or
 * "sentinel:<master_name>" before any answer). Valid until the next call. */
const char *cm_redis_address(struct cm_redis *r);

/* Sends a command given as argv. Returns 0 (the callback will run exactly once) or
 * -ENOTCONN when not connected, -ENOMEM (the callback will not run). <cb> may be NULL. */
int cm_redis_argv(struct cm_redis *r, cm_redis_reply_cb cb, void *data, int argc,
                  const char **argv, const size_t *lens);
/* printf-style command (hiredis format: %s, %b with pointer+length, %d...). Same returns. */
int cm_redis_cmd(struct cm_redis *r, cm_redis_reply_cb cb, void *data, const char *fmt, ...);
/* The most arguments of one command (cm_redis_argv) or ARGV of one script: more is -E2BIG. */
#define CM_REDIS_MAX_ARGS 256
/* Runs a store script with ARGV <argv> (no KEYS). EVALSHA first; on NOSCRIPT the script is
 * sent once with EVAL. Same returns. */
int cm_redis_script(struct cm_redis *r, enum cm_script s, cm_redis_reply_cb cb, void *data,
                    int argc, const char **argv, const size_t *lens);
/* Subscribes to <channel> (use a client dedicated to subscriptions: once it has subscribed,
 * Redis allows no other commands on that connection). Kept across reconnects. Returns 0 or
 * -ENOMEM. */
int cm_redis_subscribe(struct cm_redis *r, const char *channel, cm_redis_message_cb cb,
                       void *data);

#endif
