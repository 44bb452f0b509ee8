/* The gateway's stable error codes: each has an HTTP status and a default message, and is sent
 * as {"error":{"code":"...","message":"..."}}. Codes are API: never rename one. */
#ifndef GW_ERRORS_H
#define GW_ERRORS_H

#include <stddef.h>

enum gw_err {
    GW_ERR_BAD_REQUEST,           /* 400 malformed request */
    GW_ERR_INVALID_SESSION_KEY,   /* 400 key not 1-128 visible ASCII */
    GW_ERR_SESSION_KEY_REQUIRED,  /* 400 route policy reject and no key */
    GW_ERR_UNAUTHORIZED,          /* 401 missing or wrong API key */
    GW_ERR_NOT_FOUND,             /* 404 no route / no such session */
    GW_ERR_METHOD_NOT_ALLOWED,    /* 405 */
    GW_ERR_REQUEST_TIMEOUT,       /* 408 headers too slow */
    GW_ERR_CONFLICT,              /* 409 session exists */
    GW_ERR_BODY_TOO_LARGE,        /* 413 body over the route's max_body */
    GW_ERR_HEADERS_TOO_LARGE,     /* 431 header bytes or count over the limit */
    GW_ERR_INTERNAL,              /* 500 */
    GW_ERR_NOT_IMPLEMENTED,       /* 501 e.g. unsupported transfer coding */
    GW_ERR_BAD_GATEWAY,           /* 502 upstream spoke bad HTTP */
    GW_ERR_INSTANCE_LOST,         /* 502 the session's instance is gone */
    GW_ERR_NO_CAPACITY,           /* 503 no warm instance and no start in time (Retry-After) */
    GW_ERR_STORE_UNAVAILABLE,     /* 503 Redis unreachable for a new session */
    GW_ERR_OVERLOADED,            /* 503 connection or pending limits */
    GW_ERR_UPSTREAM_TIMEOUT,      /* 504 no response head in time */
    GW_ERR_INVALID_ARGUMENT,      /* 400 a control API field has a wrong type or value */
    GW_ERR_UNKNOWN_TEMPLATE,      /* 400 the control API named a template the config lacks */
    GW_ERR_SESSION_NOT_FOUND,     /* 404 unknown or ended MCP / legacy SSE session id */
    GW_ERR_ORIGIN_NOT_ALLOWED,    /* 403 a CORS preflight from an Origin the route does not list */
    GW_ERR_TOO_MANY_CONNECTIONS,  /* 429 a tenant or client address over its connection limit */
    GW_ERR_SESSION_BUSY,          /* 409 a pause refused: the sandbox is in use or changing state */
    GW_ERR_SCHEDULER_UNAVAILABLE, /* 503 the session's scheduler did not answer (Retry-After) */
    GW_ERR_TOO_MANY_EXECS,        /* 429 the sandbox runs its limit of commands (Retry-After) */
    GW_ERR_EXEC_FAILED,           /* 400 the command could not start (not found, bad cwd) */
    GW_ERR_PERMISSION_DENIED,     /* 403 the sandbox's user may not touch that file */
    GW_ERR_INSUFFICIENT_STORAGE,  /* 507 the file does not fit (the workspace's or /data's size) */
    GW_ERR_INSTANCE_UNAVAILABLE,  /* 503 the instance took none of the request within
                                   * limits.resume_timeout (paused, not resumed) (Retry-After) */
    GW_ERR_TENANT_MAX_SESSIONS,   /* 429 tenant_limit: a new session over the tenant's
                                   * limits.max_sessions (Retry-After) */
    GW_ERR_TENANT_SESSION_RATE,   /* 429 tenant_limit: new sessions faster than the tenant's
                                   * limits.sessions_per_second (Retry-After) */
    GW_ERR_TENANT_REQUEST_RATE,   /* 429 tenant_limit: data-plane requests faster than the
                                   * tenant's limits.requests_per_second (Retry-After) */
    GW_ERR_TENANT_MAX_EXECS,      /* 429 tenant_limit: a command over the tenant's
                                   * limits.max_execs running at once (Retry-After) */
    GW_ERR_TENANT_MAX_MEMORY,     /* 429 tenant_limit: a sandbox over limits.max_memory */
    GW_ERR_TENANT_MAX_CPUS,       /* 429 tenant_limit: a sandbox over limits.max_cpus */
    GW_ERR_COUNT
};

struct gw_err_info {
    const char *code;
    int status;
    const char *message;
    int retry; /* the answer carries Retry-After (gateway.retry_after): try again later */
};

/* Static table entry for <e>. */
const struct gw_err_info *gw_err_info(enum gw_err e);
/* The JSON body of an answer of <e>, {"error":{"code":...,"message":...}} and a newline, into
 * <buf> (<cap> bytes, 256 hold every one); its length. */
size_t gw_err_body(enum gw_err e, char *buf, size_t cap);
/* Room for an answer's header lines: gw_err_fields(), a session key, CORS. */
#define GW_FIELDS_MAX 2048
/* The header lines ("name: value\r\n") of an answer of <e> with a body of <blen> bytes:
 * content-type, content-length, cache-control, and retry-after (<retry_after> s) when <e>
 * says try again later; their length (< cap; 256 hold them). */
size_t gw_err_fields(enum gw_err e, size_t blen, unsigned retry_after, char *buf, size_t cap);
/* Reason phrases: cm_http_reason() (common/httpd.h). */

#endif
