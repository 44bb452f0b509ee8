/* The control API's pure parts: request bodies and query strings validated into structs,
 * session records (the fields of P s:{h}) rendered as the API's session object, JSON trees
 * written back as compact text, strict percent-decoding. No I/O, no Redis: any thread. */
#ifndef GW_API_JSON_H
#define GW_API_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "common/egress.h"
#include "common/json.h"
#include "common/key.h"
#include "common/time.h"
#include "gateway/errors.h"

struct cm_template;
struct gw_config;

/* Limits of the control API that the validators apply (see gw_admin_limits). */
struct gw_api_limits {
    uint64_t max_metadata; /* bytes of the metadata object as stored (compact JSON) */
    uint32_t list_default; /* sessions per page when ?limit is absent */
    uint32_t list_max;     /* largest ?limit accepted */
    cm_usec_t exec_timeout, exec_max_timeout; /* POST .../exec: "timeout" absent, its bound */
};

/* A validation failure: the error code and a message for the client. */
struct gw_api_error {
    enum gw_err err;
    char message[192];
};

struct gw_api_create {
    char id[CM_KEY_MAX + 1];
    size_t id_len;
    const struct cm_template *tpl; /* borrowed from the config */
    uint64_t ttl_ms, idle_ms;      /* always set (the template's defaults when absent) */
    char *meta;                    /* compact JSON of "metadata", or NULL; owned */
    char *egress; /* the normal form of "egress" (common/egress.h), or NULL; owned */
};

/* Validates a POST /v1/sessions body (<len> 0 = "{}") for <tenant>. On success fills <ret>
 * (release with gw_api_create_fini()) and returns 0: a missing id is replaced by 128 random
 * bits in hex, a missing template by the template of <tenant>'s first route in <gc>, else the
 * first configured template. On failure returns -EINVAL with <err> set (bad_request for a
 * body that is not a JSON object, invalid_session_key, unknown_template, invalid_argument),
 * <ret> untouched; -ENOMEM/-EIO (internal) for allocation or getrandom failures. */
int gw_api_parse_create(const char *body, size_t len, const struct gw_config *gc,
                        const char *tenant, const struct gw_api_limits *lim,
                        struct gw_api_create *ret, struct gw_api_error *err);
void gw_api_create_fini(struct gw_api_create *c);

struct gw_api_update {
    int has_ttl, has_idle, has_egress;
    uint64_t ttl_ms, idle_ms;
    char *egress; /* has_egress: the normal form, or "" (null: the session's lists go); owned */
};

/* The most egress entries a session may add to each of its template's lists. */
#define GW_API_EGRESS_MAX (CM_EGRESS_MAX_ENTRIES / 2)

/* Validates a PATCH /v1/sessions/{id} body: {"ttl"?, "idle_timeout"?, "egress"?}, times in
 * whole seconds bounded by <tpl>'s max_ttl/max_idle_timeout (<tpl> NULL: by one year), egress
 * as common/egress.h's JSON (or null), at least one present. Returns 0 (release with
 * gw_api_update_fini()), -EINVAL with <err> set, or -ENOMEM. */
int gw_api_parse_update(const char *body, size_t len, const struct cm_template *tpl,
                        struct gw_api_update *ret, struct gw_api_error *err);
void gw_api_update_fini(struct gw_api_update *u);

/* Parses the query string of GET /v1/sessions (<query> may be NULL): limit (1..list_max,
 * default list_default) and cursor (opaque to clients: the index of the page's first entry).
 * Unknown parameters are ignored. Returns 0 or -EINVAL with <err> set. */
int gw_api_parse_list_query(const char *query, const struct gw_api_limits *lim, uint32_t *ret_limit,
                            uint64_t *ret_cursor, struct gw_api_error *err);

/* POST /v1/sessions/{id}/exec: {"cmd": [argv...], "env"?: {NAME: value}, "cwd"?: "/abs",
 * "stdin"?: "text", "timeout"?: seconds}. The strings point into <j> (the parsed body, kept by
 * the caller until done; free with cm_json_free()). */
struct gw_api_exec {
    struct cm_json *j;
    const struct cm_json *cmd, *env, *cwd, *stdin_; /* env, cwd, stdin_: NULL when absent */
    uint64_t timeout_ms;
};
/* Validates the body (argv 1..256 strings of 1..4096 bytes, env up to 256 names of
 * [A-Za-z_][A-Za-z0-9_]* with string values, cwd absolute, no NUL anywhere, timeout 1 s up to
 * lim->exec_max_timeout, default lim->exec_timeout). Returns 0 or -EINVAL with <err> set. */
int gw_api_parse_exec(const char *body, size_t len, const struct gw_api_limits *lim,
                      struct gw_api_exec *ret, struct gw_api_error *err);
/* Whether <n> bytes at <s> are UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
int gw_api_utf8_valid(const char *s, size_t n);

/* A session as stored in P s:{h}. Strings point into the caller's storage (borrowed). */
struct gw_session_rec {
    const char *key, *tenant, *tpl, *instance, *state, *meta, *host, *addr, *egress;
    size_t key_len, tenant_len, tpl_len, instance_len, state_len, meta_len, host_len, addr_len,
        egress_len;
    uint64_t created, ttl, idle, last_active; /* ms since the epoch / durations in ms */
    uint64_t paused, paused_ms; /* since when its sandbox is paused (0: running); time paused */
};

/* Reads the field/value pairs of HGETALL (<n> strings: f0 v0 f1 v1 ...). Returns 0, or
 * -ENOENT when the hash is empty or lacks tenant/key (no such session). Unknown fields are
 * ignored; a malformed number reads as 0. */
int gw_api_session_parse(const char *const *fv, const size_t *lens, size_t n,
                         struct gw_session_rec *ret);
/* Appends the session object {"id","tenant","template","instance","state","created_ms",
 * "ttl_s","idle_timeout_s","last_active_ms","expires_at_ms","paused","paused_since_ms",
 * "paused_ms","metadata","egress"}: "paused" whether its sandbox is paused now,
 * "paused_since_ms" since when (null when running), "paused_ms" the time it was paused before,
 * in all. The stored metadata is embedded as JSON when it parses as JSON, else null; "egress"
 * is the session's own lists ({"allow":[],"deny":[]} when it has none; its template's come on
 * top). */
void gw_api_session_write(struct cm_jbuf *b, const struct gw_session_rec *r);

/* Appends <j> as compact JSON (integral numbers without a fraction). */
void gw_api_json_write(struct cm_jbuf *b, const struct cm_json *j);

/* Strict percent-decoding of <n> bytes: "%XX" with two hex digits, other bytes as they are
 * ("+" stays "+"). Writes at most <cap> bytes and a NUL to <out> (so <cap>+1 must fit).
 * Returns 0 with the length in <ret_len>, -EINVAL on a malformed escape, -ENOSPC when the
 * result would exceed <cap> bytes. */
int gw_api_pct_decode(const char *in, size_t n, char *out, size_t cap, size_t *ret_len);

/* Writes {"error":{"code":...,"message":...}}; <message> NULL: the code's default message. */
void gw_api_error_json(struct cm_jbuf *b, enum gw_err e, const char *message);

#endif
