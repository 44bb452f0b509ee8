#include "gateway/errors.h"

#include <stdio.h>

static const struct gw_err_info table[GW_ERR_COUNT] = {
    [GW_ERR_BAD_REQUEST] = {"bad_request", 400, "malformed HTTP request", 0},
    [GW_ERR_INVALID_SESSION_KEY] = {"invalid_session_key", 400,
                                    "session key must be 1-128 visible ASCII characters", 0},
    [GW_ERR_SESSION_KEY_REQUIRED] = {"session_key_required", 400,
                                     "this route requires a session key", 0},
    [GW_ERR_UNAUTHORIZED] = {"unauthorized", 401, "missing or invalid API key", 0},
    [GW_ERR_NOT_FOUND] = {"not_found", 404, "not found", 0},
    [GW_ERR_METHOD_NOT_ALLOWED] = {"method_not_allowed", 405, "method not allowed", 0},
    [GW_ERR_REQUEST_TIMEOUT] = {"request_timeout", 408, "request not received in time", 0},
    [GW_ERR_CONFLICT] = {"conflict", 409, "already exists", 0},
    [GW_ERR_BODY_TOO_LARGE] = {"body_too_large", 413, "request body exceeds the route's limit", 0},
    [GW_ERR_HEADERS_TOO_LARGE] = {"headers_too_large", 431,
                                  "request headers exceed the size or count limit", 0},
    [GW_ERR_INTERNAL] = {"internal", 500, "internal error", 0},
    [GW_ERR_NOT_IMPLEMENTED] = {"not_implemented", 501, "not implemented", 0},
    [GW_ERR_BAD_GATEWAY] = {"bad_gateway", 502, "the instance sent an invalid response", 0},
    [GW_ERR_INSTANCE_LOST] = {"instance_lost", 502, "the session's instance is gone", 0},
    [GW_ERR_NO_CAPACITY] = {"no_capacity", 503, "no instance available, retry later", 1},
    [GW_ERR_STORE_UNAVAILABLE] = {"store_unavailable", 503, "session store unavailable", 1},
    [GW_ERR_OVERLOADED] = {"overloaded", 503, "gateway overloaded", 1},
    [GW_ERR_SESSION_NOT_FOUND] = {"session_not_found", 404,
                                  "unknown or ended session: initialize a new one", 0},
    [GW_ERR_UPSTREAM_TIMEOUT] = {"upstream_timeout", 504, "the instance did not answer in time", 0},
    [GW_ERR_INVALID_ARGUMENT] = {"invalid_argument", 400, "invalid argument", 0},
    [GW_ERR_UNKNOWN_TEMPLATE] = {"unknown_template", 400, "unknown template", 0},
    [GW_ERR_ORIGIN_NOT_ALLOWED] = {"origin_not_allowed", 403,
                                   "this route does not allow requests from that Origin", 0},
    [GW_ERR_TOO_MANY_CONNECTIONS] = {"too_many_connections", 429,
                                     "too many connections open, close one or retry later", 0},
    [GW_ERR_SESSION_BUSY] = {"session_busy", 409,
                             "the session's sandbox is in use or changing state: retry later", 0},
    [GW_ERR_SCHEDULER_UNAVAILABLE] = {"scheduler_unavailable", 503,
                                      "the session's host did not answer, retry later", 1},
    [GW_ERR_TOO_MANY_EXECS] = {"too_many_execs", 429,
                               "the sandbox runs as many commands as it may: retry later", 1},
    [GW_ERR_EXEC_FAILED] = {"exec_failed", 400, "the command could not start", 0},
    [GW_ERR_PERMISSION_DENIED] = {"permission_denied", 403,
                                  "the sandbox's user may not do that to this file", 0},
    [GW_ERR_INSUFFICIENT_STORAGE] = {"insufficient_storage", 507,
                                     "the file does not fit in the sandbox's storage", 0},
    [GW_ERR_INSTANCE_UNAVAILABLE] = {"instance_unavailable", 503,
                                     "the session's sandbox did not take the request in time "
                                     "(paused and not resumed), retry later",
                                     1},
    [GW_ERR_TENANT_MAX_SESSIONS] = {"tenant_limit", 429,
                                    "the tenant has as many sessions as its limit max_sessions "
                                    "allows: end one, or retry later",
                                    1},
    [GW_ERR_TENANT_SESSION_RATE] = {"tenant_limit", 429,
                                    "the tenant starts new sessions faster than its limit "
                                    "sessions_per_second allows: retry later",
                                    1},
    [GW_ERR_TENANT_REQUEST_RATE] = {"tenant_limit", 429,
                                    "the tenant sends requests faster than its limit "
                                    "requests_per_second allows: retry later",
                                    1},
    [GW_ERR_TENANT_MAX_EXECS] = {"tenant_limit", 429,
                                 "the tenant runs as many commands as its limit max_execs "
                                 "allows: retry later",
                                 1},
    [GW_ERR_TENANT_MAX_MEMORY] = {"tenant_limit", 429,
                                  "another sandbox would take the tenant's sessions over its "
                                  "limit max_memory: end one, or retry later",
                                  1},
    [GW_ERR_TENANT_MAX_CPUS] = {"tenant_limit", 429,
                                "another sandbox would take the tenant's sessions over its "
                                "limit max_cpus: end one, or retry later",
                                1},
};

const struct gw_err_info *gw_err_info(enum gw_err e)
{
    return &table[e];
}

size_t gw_err_body(enum gw_err e, char *buf, size_t cap)
{
    const struct gw_err_info *info = &table[e];
    int n = snprintf(buf, cap, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n", info->code,
                     info->message);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

size_t gw_err_fields(enum gw_err e, size_t blen, unsigned retry_after, char *buf, size_t cap)
{
    int n = snprintf(buf, cap,
                     "content-type: application/json\r\ncontent-length: %zu\r\n"
                     "cache-control: no-store\r\n",
                     blen);
    if (n >= 0 && (size_t)n < cap && table[e].retry)
        n += snprintf(buf + n, cap - (size_t)n, "retry-after: %u\r\n", retry_after);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}
