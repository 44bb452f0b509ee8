#include "gateway/api.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/compat.h"
#include "common/config.h"
#include "common/httpd.h"
#include "common/json.h"
#include "common/key.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/secret.h"
#include "common/store.h"
#include "common/time.h"
#include "gateway/admin.h"
#include "gateway/api_events.h"
#include "gateway/api_exec.h"
#include "gateway/api_json.h"
#include "gateway/api_pools.h"
#include "gateway/api_sched.h"
#include "gateway/api_usage.h"
#include "gateway/claim.h"
#include "gateway/config.h"

#define KEY_BUF 512     /* a Redis key: prefix (<= 64) + kind + h, host or template names */
#define MAX_FIELDS 64   /* fields of a session hash we look at */
#define API_KEY_MAX 512 /* longest bearer token considered */

enum op_kind { OP_CREATE, OP_GET, OP_UPDATE, OP_DELETE, OP_LIST, OP_PAUSE, OP_EXEC };

struct op;

/* One reply of a pipelined batch (the list's session reads): which op, which item. */
struct slot {
    struct op *op;
    size_t item;
    int present;         /* the session exists and is the tenant's */
    struct cm_jbuf json; /* the rendered session object */
};

struct op {
    struct op *prev, *next;
    struct gw_api *api;
    struct cm_httpd_req *req; /* NULL once answered */
    enum op_kind kind;
    const struct cm_tenant *tenant;
    const struct cm_api_key *api_key; /* the caller's key's own limits, or NULL */
    char h[CM_HASH_HEX_LEN + 1];
    int waiting; /* Redis replies still to come */
    int failed;  /* one of them failed */
    int ok_status;
    struct gw_claim *claim;
    struct gw_api_create create;
    char instance[GW_INSTANCE_ID_MAX];
    uint64_t bound_ms;
    uint64_t cursor;
    uint32_t limit;
    int more;
    struct slot *slots;
    size_t n_slots;
    int resume;                 /* OP_PAUSE: resume rather than pause */
    struct gw_api_exec exec;    /* OP_EXEC: the parsed body (its tree freed with the op) */
    char fop;                   /* files: 'G' read, 'W' write, 'U' delete, 'L' list */
    struct evbuffer *upload;    /* W: the body read before the sandbox's channel is open */
    int upload_done;            /* ...all of it */
    char fpath[GW_FILE_PATH_MAX + 1];
    struct gw_sched_call *call; /* OP_PAUSE: the scheduler's answer is awaited */
};

struct gw_api {
    struct event_base *base;
    struct cm_redis *redis;
    struct gw_claimer *claimer;
    const struct gw_config *gc;
    const struct gw_admin_limits *lim;
    struct op *ops;
    struct gw_events *events;
    struct gw_metrics *m; /* the admin loop's shard (gw_api_create) */
    /* The key of the call being dispatched (gw_api_handle, synchronously): its own limits
     * (tenants[].api_keys), or NULL. */
    const struct cm_api_key *caller_key;
};

void gw_api_reply(struct cm_httpd_req *req, int status, const char *ctype, const char *body,
                  size_t len)
{
    (void)cm_httpd_add_header(req, "Cache-Control", "no-store");
    if (status >= 500 || CM_LOG_DEBUG <= cm_log_max_level) {
        /* The target is the client's: keep the log line one line, its quotes balanced. */
        char uri[201];
        const char *u = cm_httpd_target(req);
        size_t n = 0;
        for (; u && u[n] && n < sizeof(uri) - 1; n++)
            uri[n] = u[n] < 0x20 || u[n] > 0x7e || u[n] == '"' || u[n] == '\\' ? '?' : u[n];
        uri[n] = '\0';
        const char *m = cm_httpd_method_name(req);
        if (status >= 500)
            cm_log_warn("admin", "request failed method=%s uri=\"%s\" status=%d", m, uri, status);
        else
            cm_log_debug("admin", "request method=%s uri=\"%s\" status=%d", m, uri, status);
    }
    cm_httpd_reply(req, status, ctype ? ctype : "application/json", body, len);
}

void gw_api_reply_error(struct cm_httpd_req *req, enum gw_err e, const char *message,
                        unsigned retry_after)
{
    if (gw_err_info(e)->retry) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%u", retry_after);
        (void)cm_httpd_add_header(req, "Retry-After", ra);
    }
    if (e == GW_ERR_UNAUTHORIZED)
        (void)cm_httpd_add_header(req, "WWW-Authenticate", "Bearer");
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_api_error_json(&b, e, message);
    gw_api_reply(req, gw_err_info(e)->status, NULL, b.data ? b.data : "", b.failed ? 0 : b.len);
    cm_jbuf_fini(&b);
}

void gw_api_reply_405(struct cm_httpd_req *req, const char *allow)
{
    (void)cm_httpd_add_header(req, "Allow", allow);
    gw_api_reply_error(req, GW_ERR_METHOD_NOT_ALLOWED, NULL, 0);
}

/* --- operations --------------------------------------------------------------------------- */

static struct op *op_new(struct gw_api *api, struct cm_httpd_req *req, enum op_kind kind,
                         const struct cm_tenant *t)
{
    struct op *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    op->api = api;
    op->req = req;
    op->kind = kind;
    op->tenant = t;
    op->api_key = api->caller_key;
    op->ok_status = 200;
    op->next = api->ops;
    if (api->ops)
        api->ops->prev = op;
    api->ops = op;
    return op;
}

static void op_free(struct op *op)
{
    struct gw_api *api = op->api;
    if (op->prev)
        op->prev->next = op->next;
    else
        api->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    for (size_t i = 0; i < op->n_slots; i++)
        cm_jbuf_fini(&op->slots[i].json);
    free(op->slots);
    gw_api_create_fini(&op->create);
    cm_json_free(op->exec.j);
    if (op->upload)
        evbuffer_free(op->upload);
    free(op);
}

/* Frees <op> once it has answered and nothing refers to it any more. */
static void op_settle(struct op *op)
{
    if (!op->req && op->waiting == 0 && !op->claim)
        op_free(op);
}

static void op_error(struct op *op, enum gw_err e, const char *message)
{
    if (!op->req)
        return;
    gw_api_reply_error(op->req, e, message, op->api->gc->retry_after);
    op->req = NULL;
}

static void op_send(struct op *op, int status, struct cm_jbuf *b)
{
    if (!op->req)
        return;
    if (b && b->failed) {
        op_error(op, GW_ERR_INTERNAL, "out of memory");
        return;
    }
    gw_api_reply(op->req, status, NULL, b ? b->data : "", b ? b->len : 0);
    op->req = NULL;
}

static const char *prefix(const struct gw_api *api)
{
    return api->gc->common->redis.prefix;
}

/* Sends argv; counts the reply as awaited. Returns 0 or a negative errno (no callback). */
static int send_argv(struct op *op, cm_redis_reply_cb cb, void *data, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    int rc = cm_redis_argv(op->api->redis, cb, data, argc, argv, lens);
    if (rc == 0)
        op->waiting++;
    return rc;
}

static int send_script(struct op *op, enum cm_script s, cm_redis_reply_cb cb, int argc,
                       const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    int rc = cm_redis_script(op->api->redis, s, cb, op, argc, argv, lens);
    if (rc == 0)
        op->waiting++;
    return rc;
}

static void session_key(const struct gw_api *api, const char *h, char out[KEY_BUF])
{
    snprintf(out, KEY_BUF, "%ss:%s", prefix(api), h);
}

/* A session record from an HGETALL reply, checked to belong to <t>. Returns 0 or -ENOENT. */
static int rec_from_reply(const redisReply *r, const struct cm_tenant *t,
                          struct gw_session_rec *rec)
{
    const char *fv[MAX_FIELDS];
    size_t lens[MAX_FIELDS];
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return -ENOENT;
    size_t n = CM_MIN(r->elements, (size_t)MAX_FIELDS) & ~(size_t)1;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING)
            return -ENOENT;
        fv[i] = e->str;
        lens[i] = e->len;
    }
    if (gw_api_session_parse(fv, lens, n, rec) < 0)
        return -ENOENT;
    if (rec->tenant_len != strlen(t->name) || memcmp(rec->tenant, t->name, rec->tenant_len) != 0)
        return -ENOENT;
    return 0;
}

/* Answers op->ok_status with the session object read by HGETALL. */
static void on_session(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    struct gw_session_rec rec;
    if (err)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    else if (rec_from_reply(r, op->tenant, &rec) < 0)
        op_error(op, GW_ERR_NOT_FOUND, "no such session");
    else {
        struct cm_jbuf b;
        cm_jbuf_init(&b);
        gw_api_session_write(&b, &rec);
        op_send(op, op->ok_status, &b);
        cm_jbuf_fini(&b);
    }
    op_settle(op);
}

static int read_session(struct op *op, cm_redis_reply_cb cb)
{
    char key[KEY_BUF];
    session_key(op->api, op->h, key);
    const char *argv[] = {"HGETALL", key};
    return send_argv(op, cb, op, 2, argv);
}

/* The API key's id for audit events: the first 12 hex digits of its SHA-256 (the config
 * lists keys by their SHA-256, so an operator can tell which key it was; the key is not
 * recoverable from it). */
static void key_id(struct cm_httpd_req *req, char out[13])
{
    size_t n = 0;
    const char *k = cm_bearer_token(cm_httpd_header(req, "Authorization"), &n);
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)(k ? k : ""), k ? n : 0, d);
    for (int i = 0; i < 6; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* --- POST /v1/sessions -------------------------------------------------------------------- */

/* The session was bound but could not be read back: answer from what the claim told us. */
static void create_answer_known(struct op *op)
{
    struct gw_session_rec rec = {
        .key = op->create.id,
        .key_len = op->create.id_len,
        .tenant = op->tenant->name,
        .tenant_len = strlen(op->tenant->name),
        .tpl = op->create.tpl->name,
        .tpl_len = strlen(op->create.tpl->name),
        .instance = op->instance,
        .instance_len = strlen(op->instance),
        .state = "bound",
        .state_len = 5,
        .meta = op->create.meta,
        .meta_len = op->create.meta ? strlen(op->create.meta) : 0,
        .created = op->bound_ms,
        .ttl = op->create.ttl_ms,
        .idle = op->create.idle_ms,
        .last_active = op->bound_ms,
    };
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    gw_api_session_write(&b, &rec);
    op_send(op, 201, &b);
    cm_jbuf_fini(&b);
}

static void create_on_session(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    struct gw_session_rec rec;
    if (err || rec_from_reply(r, op->tenant, &rec) < 0) {
        create_answer_known(op);
    } else {
        struct cm_jbuf b;
        cm_jbuf_init(&b);
        gw_api_session_write(&b, &rec);
        op_send(op, 201, &b);
        cm_jbuf_fini(&b);
    }
    op_settle(op);
}

/* The session's own egress lists are in Redis (and on their way to its host): answer. */
static void create_on_egress(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    (void)r;
    if (err)
        cm_log_warn("admin", "cannot store the new session's egress lists session=%s err=\"%s\"",
                    op->h, err);
    if (read_session(op, create_on_session) < 0)
        create_answer_known(op);
    op_settle(op);
}

static void create_on_claim(const struct gw_binding *bnd, int err, void *data)
{
    struct op *op = data;
    op->claim = NULL;
    if (!bnd) {
        op_error(op, (enum gw_err)err, NULL);
    } else if (bnd->how == GW_CLAIM_BOUND || bnd->how == GW_CLAIM_CACHED) {
        op_error(op, GW_ERR_CONFLICT, "a session with this id exists");
    } else {
        memcpy(op->h, bnd->hash_hex, sizeof(op->h));
        snprintf(op->instance, sizeof(op->instance), "%s", bnd->instance);
        op->bound_ms = cm_now_wall_ms();
        char now[24], key[KEY_BUF], kid[13];
        snprintf(now, sizeof(now), "%" PRIu64, op->bound_ms);
        snprintf(key, sizeof(key), "%s", prefix(op->api));
        key_id(op->req, kid);
        const char *argv[] = {key, op->h, op->tenant->name, "", "", now, kid,
                              op->create.egress ? op->create.egress : ""};
        if (op->create.egress && op->req &&
            send_script(op, CM_SCRIPT_UPDATE, create_on_egress, 8, argv) == 0)
            ; /* answered from create_on_egress */
        else if (read_session(op, create_on_session) < 0)
            create_answer_known(op);
    }
    op_settle(op);
}

static void handle_create(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t)
{
    size_t len;
    const char *body = cm_httpd_body(req, &len);
    struct gw_api_error e;
    struct gw_api_create c;
    if (!body) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    int rc = gw_api_parse_create(body, len, api->gc, t->name, &api->lim->api, &c, &e);
    if (rc == -EINVAL) {
        gw_api_reply_error(req, e.err, e.message, 0);
        return;
    }
    if (rc < 0) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, NULL, 0);
        return;
    }
    struct op *op = op_new(api, req, OP_CREATE, t);
    if (!op) {
        gw_api_create_fini(&c);
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    op->create = c; /* <op> owns the metadata now */
    char kid[13];
    key_id(req, kid); /* the claim copies it: its created and bound events carry it */
    struct gw_claim_req cr = {
        .tenant = t->name,
        .source = CM_KEY_SRC_SID,
        .key = op->create.id,
        .key_len = op->create.id_len,
        .tpl = op->create.tpl,
        .mode = GW_CLAIM_MODE_CLAIM,
        .ttl_ms = op->create.ttl_ms,
        .idle_ms = op->create.idle_ms,
        .meta = op->create.meta,
        .key_id = kid,
        .api_key = op->api_key,
    };
    op->claim = gw_claim_start(api->claimer, &cr, create_on_claim, op);
    if (!op->claim) {
        op_error(op, GW_ERR_INTERNAL, "out of memory");
        op_settle(op);
    }
}

/* --- GET / PATCH / DELETE /v1/sessions/{id} ----------------------------------------------- */

static void handle_get(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t,
                       const char *h)
{
    struct op *op = op_new(api, req, OP_GET, t);
    if (!op) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    memcpy(op->h, h, sizeof(op->h));
    if (read_session(op, on_session) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

static void update_on_script(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    if (err || !r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    else if (strcmp(r->element[0]->str, "ok") != 0)
        op_error(op, GW_ERR_NOT_FOUND, "no such session");
    else if (read_session(op, on_session) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

/* The session exists and is the tenant's: validate the body against its template, update. */
static void update_on_session(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    struct gw_session_rec rec;
    if (!op->req) {
        op_settle(op);
        return;
    }
    if (err) {
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    } else if (rec_from_reply(r, op->tenant, &rec) < 0) {
        op_error(op, GW_ERR_NOT_FOUND, "no such session");
    } else {
        char name[128] = "";
        if (rec.tpl && rec.tpl_len < sizeof(name)) {
            memcpy(name, rec.tpl, rec.tpl_len);
            name[rec.tpl_len] = '\0';
        }
        /* A template gone from the config leaves only the global bound (a year). */
        const struct cm_template *tpl = cm_config_template(op->api->gc->common, name);
        size_t len;
        const char *body = cm_httpd_body(op->req, &len);
        struct gw_api_update u;
        struct gw_api_error e = {.err = GW_ERR_INTERNAL, .message = "out of memory"};
        if (!body) {
            op_error(op, GW_ERR_INTERNAL, "out of memory");
        } else if (gw_api_parse_update(body, len, tpl, &u, &e) < 0) {
            op_error(op, e.err, e.message);
        } else {
            char ttl[24] = "", idle[24] = "", now[24], key[KEY_BUF], kid[13];
            if (u.has_ttl)
                snprintf(ttl, sizeof(ttl), "%" PRIu64, u.ttl_ms);
            if (u.has_idle)
                snprintf(idle, sizeof(idle), "%" PRIu64, u.idle_ms);
            snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
            snprintf(key, sizeof(key), "%s", prefix(op->api));
            key_id(op->req, kid);
            const char *eg = !u.has_egress ? "" : u.egress[0] ? u.egress : "null";
            const char *argv[] = {key, op->h, op->tenant->name, ttl, idle, now, kid, eg};
            if (send_script(op, CM_SCRIPT_UPDATE, update_on_script, 8, argv) < 0)
                op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
            gw_api_update_fini(&u);
        }
    }
    op_settle(op);
}

static void handle_update(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t,
                          const char *h)
{
    /* Syntax and types first (no Redis needed to reject a bad body). */
    size_t len;
    const char *body = cm_httpd_body(req, &len);
    struct gw_api_update u;
    struct gw_api_error e;
    if (!body) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    int prc = gw_api_parse_update(body, len, NULL, &u, &e);
    if (prc == -EINVAL) {
        gw_api_reply_error(req, e.err, e.message, 0);
        return;
    }
    gw_api_update_fini(&u);
    if (prc < 0) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    struct op *op = op_new(api, req, OP_UPDATE, t);
    if (!op) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    memcpy(op->h, h, sizeof(op->h));
    if (read_session(op, update_on_session) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

static void delete_on_script(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    if (err || !r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    } else if (strcmp(r->element[0]->str, "released") != 0) {
        op_error(op, GW_ERR_NOT_FOUND, "no such session");
    } else {
        cm_log_info(
            "admin", "session deleted tenant=%s session=%s instance=%s", op->tenant->name, op->h,
            r->elements > 1 && r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "");
        op_send(op, 204, NULL);
    }
    op_settle(op);
}

static void handle_delete(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t,
                          const char *h)
{
    struct op *op = op_new(api, req, OP_DELETE, t);
    if (!op) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    memcpy(op->h, h, sizeof(op->h));
    char now[24];
    snprintf(now, sizeof(now), "%" PRIu64, cm_now_wall_ms());
    char kid[13];
    key_id(req, kid);
    const char *argv[] = {prefix(api), op->h, t->name, "deleted", now, kid};
    if (send_script(op, CM_SCRIPT_RELEASE, delete_on_script, 6, argv) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

/* --- POST /v1/sessions/{id}/pause | resume ----------------------------------------------- */

/* Whether <n> bytes of <v> can go into a path segment as they are (instance and host ids). */
static int plain_segment(const char *v, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
              (v[i] >= '0' && v[i] <= '9') || v[i] == '.' || v[i] == '_' || v[i] == '-'))
            return 0;
    return 1;
}

static void pause_on_answer(int status, const char *body, size_t len, void *arg)
{
    struct op *op = arg;
    op->waiting--;
    op->call = NULL;
    char msg[256] = "";
    struct cm_json *j = len ? cm_json_parse(body, len, NULL, 0) : NULL;
    const struct cm_json *m = cm_json_get(cm_json_get(j, "error"), "message");
    if (m && m->type == CM_JSON_STRING)
        snprintf(msg, sizeof(msg), "%s", m->str);
    cm_json_free(j);
    if (status == 200) {
        if (read_session(op, on_session) < 0)
            op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    } else if (status == 409) {
        op_error(op, GW_ERR_SESSION_BUSY, msg[0] ? msg : NULL);
    } else if (status == 501) {
        op_error(op, GW_ERR_NOT_IMPLEMENTED, "this session's sandbox driver cannot pause");
    } else if (status == 404 || status == 502) {
        op_error(op, GW_ERR_INSTANCE_LOST, msg[0] ? msg : NULL);
    } else {
        if (status == 401)
            cm_log_error("admin",
                         "scheduler refused a %s: scheduler.api_secret differs from the "
                         "scheduler's session=%s instance=%s",
                         op->resume ? "resume" : "pause", op->h, op->instance);
        else
            cm_log_warn("admin", "scheduler did not %s session=%s instance=%s status=%d",
                        op->resume ? "resume" : "pause", op->h, op->instance, status);
        op_error(op, status == 401 ? GW_ERR_INTERNAL : GW_ERR_SCHEDULER_UNAVAILABLE, NULL);
    }
    op_settle(op);
}

static void pause_on_host(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    if (!op->req) {
        op_settle(op);
        return;
    }
    if (err) {
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    } else if (!r || r->type != REDIS_REPLY_STRING || !r->len) {
        op_error(op, GW_ERR_INSTANCE_LOST, "the session's host is gone");
    } else {
        char path[GW_INSTANCE_ID_MAX + 64], kid[13];
        key_id(op->req, kid);
        snprintf(path, sizeof(path), "/v1/instances/%s/%s?key_id=%s", op->instance,
                 op->resume ? "resume" : "pause", kid);
        op->call = gw_sched_post(op->api->base, op->api->gc, r->str, path,
                                 op->api->gc->limits.resume_timeout, pause_on_answer, op);
        if (op->call)
            op->waiting++;
        else
            op_error(op, GW_ERR_SCHEDULER_UNAVAILABLE, NULL);
    }
    op_settle(op);
}

/* The session of <op> from its HGETALL reply, when it is the tenant's and bound; else answers
 * the error and returns -1. */
static int bound_session(struct op *op, redisReply *r, const char *err, struct gw_session_rec *rec)
{
    if (err)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    else if (rec_from_reply(r, op->tenant, rec) < 0)
        op_error(op, GW_ERR_NOT_FOUND, "no such session");
    else if (!rec->state || rec->state_len != 5 || memcmp(rec->state, "bound", 5) != 0)
        op_error(op, GW_ERR_CONFLICT, "the session has no running instance (it was lost)");
    else
        return 0;
    return -1;
}

/* The session exists and is the tenant's: find its instance's scheduler. */
static void pause_on_session(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    struct gw_session_rec rec;
    if (!op->req) {
        op_settle(op);
        return;
    }
    if (bound_session(op, r, err, &rec) < 0) {
        /* answered */
    } else if (!rec.host || !rec.host_len) {
        op_error(op, GW_ERR_NOT_IMPLEMENTED,
                 "the session's template is static: nothing of it can be paused");
    } else if (!plain_segment(rec.instance, rec.instance_len) ||
               rec.instance_len >= sizeof(op->instance) || !plain_segment(rec.host, rec.host_len) ||
               rec.host_len > 64) {
        op_error(op, GW_ERR_INTERNAL, "the session's record is malformed");
    } else {
        memcpy(op->instance, rec.instance, rec.instance_len);
        op->instance[rec.instance_len] = '\0';
        char key[KEY_BUF];
        snprintf(key, sizeof(key), "%shost:%.*s", prefix(op->api), (int)rec.host_len, rec.host);
        const char *argv[] = {"HGET", key, "api"};
        if (send_argv(op, pause_on_host, op, 3, argv) < 0)
            op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    }
    op_settle(op);
}

static void handle_pause(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t,
                         const char *h, int resume)
{
    struct op *op = op_new(api, req, OP_PAUSE, t);
    if (!op) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    memcpy(op->h, h, sizeof(op->h));
    op->resume = resume;
    if (read_session(op, pause_on_session) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

/* --- POST /v1/sessions/{id}/exec, files ---------------------------------------------------------
 */

/* Exec and files: the session exists, is the tenant's and bound: hand the request to the
 * sandbox's channel (api_exec.c). */
static void channel_on_session(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    struct gw_session_rec rec;
    char addr[256];
    if (!op->req) {
        op_settle(op);
        return;
    }
    if (bound_session(op, r, err, &rec) < 0) {
        /* answered */
    } else if (!rec.addr || !rec.addr_len || rec.addr_len >= sizeof(addr)) {
        op_error(op, GW_ERR_INSTANCE_LOST, NULL);
    } else {
        memcpy(addr, rec.addr, rec.addr_len);
        addr[rec.addr_len] = '\0';
        struct cm_httpd_req *req = op->req;
        op->req = NULL;
        struct gw_exec_audit audit = {.redis = op->api->redis,
                                      .tenant = op->tenant->name,
                                      .max_execs = cm_limit_max_execs(op->tenant, op->api_key),
                                      .m = op->api->m,
                                      .tenant_idx = (size_t)(op->tenant -
                                                             op->api->gc->common->tenants)};
        memcpy(audit.session, op->h, sizeof(audit.session));
        if (rec.instance && rec.instance_len < sizeof(audit.instance)) {
            memcpy(audit.instance, rec.instance, rec.instance_len);
            audit.instance[rec.instance_len] = '\0';
        }
        key_id(req, audit.key_id);
        if (op->fop) {
            struct gw_upload up = {
                .pending = op->upload, .done = op->upload_done, .max = op->api->lim->max_upload};
            op->upload = NULL; /* the channel's now */
            gw_api_file_start(op->api->base, op->api->gc, req, addr, op->fop, op->fpath, &audit,
                              &up);
        } else {
            gw_api_exec_start(op->api->base, op->api->gc, req, addr, &op->exec, &audit);
        }
    }
    op_settle(op);
}

static void handle_exec(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t,
                        const char *h)
{
    size_t len;
    const char *body = cm_httpd_body(req, &len);
    struct gw_api_exec spec;
    struct gw_api_error e;
    if (!body) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    if (gw_api_parse_exec(body, len, &api->lim->api, &spec, &e) < 0) {
        gw_api_reply_error(req, e.err, e.message, 0);
        return;
    }
    struct op *op = op_new(api, req, OP_EXEC, t);
    if (!op) {
        cm_json_free(spec.j);
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    op->exec = spec;
    memcpy(op->h, h, sizeof(op->h));
    if (read_session(op, channel_on_session) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

/* --- GET, PUT, DELETE /v1/sessions/{id}/files/{path} -------------------------------------- */

/* W: the body as it comes, until the sandbox's channel takes over (gw_api_file_start()). */
static int upload_cb(void *arg, const char *data, size_t len)
{
    struct op *op = arg;
    if (!len) {
        op->upload_done = 1;
        return 0;
    }
    if (op->upload && evbuffer_add(op->upload, data, len) < 0)
        return 1;
    return op->upload && evbuffer_get_length(op->upload) >= GW_UPLOAD_HIGH;
}

int gw_api_upload_head(struct cm_httpd_req *req, void *arg)
{
    (void)arg;
    const char *p = cm_httpd_path(req);
    const char *slash = strncmp(p, "/v1/sessions/", 13) == 0 ? strchr(p + 13, '/') : NULL;
    return cm_httpd_method(req) == CM_HTTP_PUT && slash && slash > p + 13 &&
           strncmp(slash, "/files/", 7) == 0;
}

static void handle_files(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t,
                         const char *h, const char *raw)
{
    char path[GW_FILE_PATH_MAX + 1];
    size_t n;
    if (gw_api_pct_decode(raw, strlen(raw), path, GW_FILE_PATH_MAX, &n) < 0 || n == 0 ||
        memchr(path, '\0', n)) {
        gw_api_reply_error(req, GW_ERR_INVALID_ARGUMENT,
                           "the path: percent-encoded, 1 to 4096 bytes, no NUL", 0);
        return;
    }
    enum cm_http_method m = cm_httpd_method(req);
    char fop = m == CM_HTTP_PUT ? 'W' : m == CM_HTTP_DELETE ? 'U' : path[n - 1] == '/' ? 'L' : 'G';
    struct op *op = op_new(api, req, OP_EXEC, t);
    if (!op) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    op->fop = fop;
    memcpy(op->fpath, path, n + 1);
    if (fop == 'W') {
        const char *cl = cm_httpd_header(req, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > api->lim->max_upload) {
            op_error(op, GW_ERR_BODY_TOO_LARGE, "the file is over gateway.admin.max_upload");
            op_settle(op);
            return;
        }
        if (!(op->upload = evbuffer_new())) {
            op_error(op, GW_ERR_INTERNAL, "out of memory");
            op_settle(op);
            return;
        }
        cm_httpd_body_stream(req, upload_cb, op);
    }
    memcpy(op->h, h, sizeof(op->h));
    if (read_session(op, channel_on_session) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

/* --- GET /v1/sessions --------------------------------------------------------------------- */

static void list_answer(struct op *op)
{
    if (op->failed) {
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
        return;
    }
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{\"sessions\":[", 13);
    int first = 1;
    for (size_t i = 0; i < op->n_slots; i++) {
        struct slot *s = &op->slots[i];
        if (!s->present)
            continue;
        if (!first)
            cm_jbuf_raw(&b, ",", 1);
        first = 0;
        cm_jbuf_raw(&b, s->json.data, s->json.len);
        if (s->json.failed)
            b.failed = 1;
    }
    if (op->more)
        cm_jbuf_printf(&b, "],\"next_cursor\":\"%" PRIu64 "\"}", op->cursor + op->limit);
    else
        cm_jbuf_raw(&b, "],\"next_cursor\":null}", 21);
    op_send(op, 200, &b);
    cm_jbuf_fini(&b);
}

static void list_on_session(redisReply *r, const char *err, void *data)
{
    struct slot *s = data;
    struct op *op = s->op;
    op->waiting--;
    struct gw_session_rec rec;
    if (err) {
        op->failed = 1;
    } else if (rec_from_reply(r, op->tenant, &rec) == 0) {
        /* Sessions deleted since the ZRANGE are simply left out. */
        gw_api_session_write(&s->json, &rec);
        s->present = 1;
    }
    if (op->waiting == 0)
        list_answer(op);
    op_settle(op);
}

static void list_on_range(redisReply *r, const char *err, void *data)
{
    struct op *op = data;
    op->waiting--;
    if (!op->req) {
        op_settle(op);
        return;
    }
    if (err || !r || r->type != REDIS_REPLY_ARRAY) {
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
        op_settle(op);
        return;
    }
    size_t n = r->elements;
    op->more = n > op->limit;
    if (op->more)
        n = op->limit;
    op->slots = n ? calloc(n, sizeof(*op->slots)) : NULL;
    if (n && !op->slots) {
        op_error(op, GW_ERR_INTERNAL, "out of memory");
        op_settle(op);
        return;
    }
    op->n_slots = n;
    for (size_t i = 0; i < n; i++) {
        struct slot *s = &op->slots[i];
        s->op = op;
        s->item = i;
        cm_jbuf_init(&s->json);
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len != CM_HASH_HEX_LEN)
            continue; /* not a session hash: nothing to show */
        char key[KEY_BUF];
        session_key(op->api, e->str, key);
        const char *argv[] = {"HGETALL", key};
        if (send_argv(op, list_on_session, s, 2, argv) < 0) {
            op->failed = 1;
            break;
        }
    }
    if (op->waiting == 0)
        list_answer(op);
    op_settle(op);
}

static void handle_list(struct gw_api *api, struct cm_httpd_req *req, const struct cm_tenant *t)
{
    struct gw_api_error e;
    uint32_t limit;
    uint64_t cursor;
    if (gw_api_parse_list_query(cm_httpd_query(req), &api->lim->api, &limit,
                                &cursor, &e) < 0) {
        gw_api_reply_error(req, e.err, e.message, 0);
        return;
    }
    struct op *op = op_new(api, req, OP_LIST, t);
    if (!op) {
        gw_api_reply_error(req, GW_ERR_INTERNAL, "out of memory", 0);
        return;
    }
    op->limit = limit;
    op->cursor = cursor;
    /* One more than the page: its presence tells whether there is a next page. */
    char key[KEY_BUF], start[24], stop[24];
    snprintf(key, sizeof(key), "%ssessions:%s", prefix(api), t->name);
    snprintf(start, sizeof(start), "%" PRIu64, cursor);
    snprintf(stop, sizeof(stop), "%" PRIu64, cursor + limit);
    const char *argv[] = {"ZRANGE", key, start, stop};
    if (send_argv(op, list_on_range, op, 4, argv) < 0)
        op_error(op, GW_ERR_STORE_UNAVAILABLE, NULL);
    op_settle(op);
}

/* --- routing ------------------------------------------------------------------------------ */

/* The caller's tenant (and its key's own limits in api->caller_key), or NULL. */
static const struct cm_tenant *authenticate(struct gw_api *api, struct cm_httpd_req *req)
{
    api->caller_key = NULL;
    const char *h = cm_httpd_header(req, "Authorization");
    if (!h)
        return NULL;
    size_t n = 0;
    h = cm_bearer_token(h, &n);
    if (!h || n > API_KEY_MAX)
        return NULL;
    char key[API_KEY_MAX + 1];
    memcpy(key, h, n);
    key[n] = '\0';
    return cm_config_key(api->gc->common, key, &api->caller_key);
}

/* "{id}" of "/v1/sessions/{id}" or "/v1/sessions/{id}/{action}" (one non-empty segment each),
 * or NULL; <ret_len> its length, <ret_action> the action or NULL. */
static const char *session_segment(const char *path, size_t *ret_len, const char **ret_action)
{
    const char prefix_[] = "/v1/sessions/";
    size_t pl = sizeof(prefix_) - 1, n = strlen(path);
    if (n <= pl || memcmp(path, prefix_, pl) != 0)
        return NULL;
    const char *seg = path + pl, *slash = memchr(seg, '/', n - pl);
    *ret_action = NULL;
    *ret_len = n - pl;
    if (slash) {
        /* "{id}/files/{path}": the path may have slashes of its own */
        int files = strncmp(slash + 1, "files/", 6) == 0;
        if (slash == seg || !slash[1] || (!files && strchr(slash + 1, '/')))
            return NULL;
        *ret_len = (size_t)(slash - seg);
        *ret_action = slash + 1;
    }
    return seg;
}

void gw_api_handle(struct gw_api *api, struct cm_httpd_req *req, const char *path)
{
    const struct cm_tenant *t = authenticate(api, req);
    if (!t) {
        gw_api_reply_error(req, GW_ERR_UNAUTHORIZED, NULL, 0);
        return;
    }
    /* From now on the connection is the tenant's: counted against its limit, not against its
     * client address, and allowed to idle between requests. */
    int rc = cm_httpd_hold(req, t->name, strlen(t->name));
    if (rc == -EBUSY) {
        gw_api_reply_error(req, GW_ERR_TOO_MANY_CONNECTIONS,
                           "this tenant has gateway.admin.max_connections_per_tenant "
                           "connections open: close one or retry later",
                           0);
        return;
    }
    if (rc < 0) {
        gw_api_reply_error(req, GW_ERR_OVERLOADED, "out of memory", 0);
        return;
    }
    enum cm_http_method m = cm_httpd_method(req);
    int get = m == CM_HTTP_GET || m == CM_HTTP_HEAD;
    if (strcmp(path, "/v1/sessions") == 0) {
        if (get)
            handle_list(api, req, t);
        else if (m == CM_HTTP_POST)
            handle_create(api, req, t);
        else
            gw_api_reply_405(req, "GET, HEAD, POST");
        return;
    }
    size_t seg_len;
    const char *action;
    const char *seg = session_segment(path, &seg_len, &action);
    int pause = action && strcmp(action, "pause") == 0;
    int resume = action && strcmp(action, "resume") == 0;
    int exec = action && strcmp(action, "exec") == 0;
    int files = action && strncmp(action, "files/", 6) == 0;
    if (seg && action && !pause && !resume && !exec && !files) {
        gw_api_reply_error(req, GW_ERR_NOT_FOUND, NULL, 0);
        return;
    }
    if (seg) {
        if (files && m != CM_HTTP_GET && m != CM_HTTP_PUT && m != CM_HTTP_DELETE) {
            gw_api_reply_405(req, "GET, PUT, DELETE");
            return;
        }
        if (action && !files && m != CM_HTTP_POST) {
            gw_api_reply_405(req, "POST");
            return;
        }
        if (!action && !get && m != CM_HTTP_PATCH && m != CM_HTTP_DELETE) {
            gw_api_reply_405(req, "GET, HEAD, PATCH, DELETE");
            return;
        }
        char id[CM_KEY_MAX + 1];
        size_t id_len;
        if (gw_api_pct_decode(seg, seg_len, id, CM_KEY_MAX, &id_len) < 0 ||
            !cm_key_valid(id, id_len)) {
            gw_api_reply_error(req, GW_ERR_INVALID_SESSION_KEY, NULL, 0);
            return;
        }
        char h[CM_HASH_HEX_LEN + 1];
        cm_hash_hex(cm_key_hash(t->name, CM_KEY_SRC_SID, id, id_len), h);
        if (files)
            handle_files(api, req, t, h, action + 6);
        else if (exec)
            handle_exec(api, req, t, h);
        else if (action)
            handle_pause(api, req, t, h, resume);
        else if (get)
            handle_get(api, req, t, h);
        else if (m == CM_HTTP_PATCH)
            handle_update(api, req, t, h);
        else
            handle_delete(api, req, t, h);
        return;
    }
    if (strcmp(path, "/v1/usage") == 0) {
        if (get)
            gw_api_usage(api->base, api->redis, api->gc, req, t);
        else
            gw_api_reply_405(req, "GET, HEAD");
        return;
    }
    if (strcmp(path, "/v1/events") == 0) {
        if (get)
            gw_events_handle(api->events, req, t);
        else
            gw_api_reply_405(req, "GET, HEAD");
        return;
    }
    if (strcmp(path, "/v1/pools") == 0) {
        if (get)
            gw_api_pools(api->redis, api->gc, api->lim->max_hosts, req);
        else
            gw_api_reply_405(req, "GET, HEAD");
        return;
    }
    gw_api_reply_error(req, GW_ERR_NOT_FOUND, NULL, 0);
}

struct gw_api *gw_api_create(struct event_base *base, struct cm_redis *redis,
                             struct gw_claimer *claimer, const struct gw_config *gc,
                             const struct gw_admin_limits *lim, struct gw_metrics *m)
{
    struct gw_api *api = calloc(1, sizeof(*api));
    if (!api)
        return NULL;
    api->m = m;
    api->base = base;
    api->redis = redis;
    api->claimer = claimer;
    api->gc = gc;
    api->lim = lim;
    api->events = gw_events_create(base, redis, gc, lim);
    if (!api->events) {
        free(api);
        return NULL;
    }
    return api;
}

void gw_api_destroy(struct gw_api *api)
{
    if (!api)
        return;
    while (api->ops) {
        struct op *op = api->ops;
        gw_sched_cancel(op->call);
        op->call = NULL;
        op_error(op, GW_ERR_OVERLOADED, "the gateway is shutting down");
        op_free(op);
    }
    gw_events_destroy(api->events);
    free(api);
}
