/* Response rewrites the gateway does for browser agents. Pure; fuzzed. */
#ifndef GW_REWRITE_H
#define GW_REWRITE_H

#include <stddef.h>

struct evbuffer;

/* CDP discovery answers (/json/version, /json/list, /json/new) name the browser's own address
 * in "ws://127.0.0.1:9222/devtools/..." and in devtoolsFrontendUrl's
 * "ws=127.0.0.1:9222/devtools/" (or "wss" in both). Writes <in> to <out> with every such URL
 * rebuilt from the client's side: the authority replaced by <host> (the Host the client used
 * to reach the gateway) and the scheme by "wss" when <secure> (the client came over TLS), else
 * "ws", so a CDP client connecting through the gateway stays on it. Returns the number of
 * replacements, or -1 when <out> could not grow. */
int gw_rewrite_cdp(const char *in, size_t n, const char *host, size_t host_len, int secure,
                   struct evbuffer *out);

/* Legacy MCP SSE: finds the session id in the data of an `endpoint` event, e.g.
 * "/messages?sessionId=abc" (TypeScript SDK) or "/messages/?session_id=abc" (Python SDK).
 * Returns 1 and the slice, or 0. */
int gw_rewrite_endpoint_id(const char *data, size_t n, const char **ret, size_t *ret_len);

/* Scans <buf> for the first complete SSE event (ended by a blank line, LF or CRLF). Returns its
 * length including the blank line (0 if none is complete yet) and sets <is_endpoint> and the
 * event's first data line <data>/<data_len>. */
size_t gw_rewrite_sse_event(const char *buf, size_t n, int *is_endpoint, const char **data,
                            size_t *data_len);

#endif
