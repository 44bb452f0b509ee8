/* POST /v1/sessions/{id}/exec, once api.c has checked the body and found the session bound to
 * a live instance: the command runs in the sandbox through berth-agent's exec channel
 * (scheduler/agent/proto.h), on a connection of its own to the instance's ports socket (the
 * one the gateway alone reaches; a paused sandbox is resumed by that connection). Its output
 * streams back as it is produced, NDJSON by default:
 *     {"type":"stdout","data":"..."}      (or "data_base64" for bytes that are not UTF-8)
 *     {"type":"stderr","data":"..."}
 *     {"type":"exit","exit_code":N|null,"signal":N|null,"timed_out":bool,"duration_ms":N}
 * or, when the request's Accept names text/event-stream, the same objects as SSE events
 * ("event: stdout", "data: {...}"). A command that cannot start is an HTTP error instead: 429
 * too_many_execs (the sandbox runs its limit of commands: Retry-After), 400 exec_failed (not
 * found, not executable, a bad cwd). A client that goes away, or reads nothing for
 * gateway.admin.timeout while output waits, ends the connection, and the agent kills the
 * command. The audit trail gets exec_started (the command line, the API key's id) and
 * exec_ended (exit code or signal, timed out, duration). On the admin loop. */
#ifndef GW_API_EXEC_H
#define GW_API_EXEC_H

#include "common/key.h"
#include "gateway/api_json.h"

struct cm_httpd_req;
struct event_base;
struct gw_config;

struct cm_redis;
struct evbuffer;

/* Who asked, for the audit events exec_started and exec_ended (the EVENT script). */
struct gw_metrics;

struct gw_exec_audit {
    struct cm_redis *redis;
    const char *tenant; /* the config's: outlives the command */
    char session[CM_HASH_HEX_LEN + 1];
    char key_id[13]; /* the API key's: the first 12 hex digits of its SHA-256 */
    char instance[96]; /* the session's instance id (its record's), "" when unknown */
    uint32_t max_execs;    /* the tenant's limits.max_execs (commands only), 0: none */
    struct gw_metrics *m;  /* the loop's metrics (refusals by tenant), or NULL */
    size_t tenant_idx;     /* the tenant's index in the config */
};

#define GW_FILE_PATH_MAX 4096

/* Files (the same channel; scheduler/agent/proto.h): <op> 'G' read (streamed as
 * application/octet-stream), 'W' write (the request's body: 200 {"path","size"}), 'U' delete
 * (204), 'L' list a directory (200 {"path","entries":[{"name","type","size","mtime_ms",
 * "mode"}...]}, streamed as it is read); <path> the sandbox path without its leading slash.
 * Errors from the agent: 404 not_found, 400 invalid_argument (bad_path: outside workspace/ and
 * data/, or ".." and the like), 409 conflict (not a file, not a directory, not empty), 403
 * permission_denied, 507 insufficient_storage. The audit trail gets file_written (path,
 * size) and file_deleted (path). */
#define GW_UPLOAD_HIGH (256 * 1024) /* an upload's bytes waiting: stop reading the client */

/* W: the upload's body as far as it was read before (taken over: freed here), whether that
 * was all, and the most it may be. */
struct gw_upload {
    struct evbuffer *pending;
    int done;
    uint64_t max;
};

void gw_api_file_start(struct event_base *base, const struct gw_config *gc,
                       struct cm_httpd_req *req, const char *addr, char op, const char *path,
                       const struct gw_exec_audit *audit, struct gw_upload *up);

/* Takes over <req> (answered or streamed from now on) and <spec> (its parsed body, freed
 * here); <addr> is the instance's address ("unix:.../app.sock"); <audit> is copied. */
void gw_api_exec_start(struct event_base *base, const struct gw_config *gc,
                       struct cm_httpd_req *req, const char *addr, struct gw_api_exec *spec,
                       const struct gw_exec_audit *audit);

#endif
