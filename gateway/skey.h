/* Finding a request's session key: the route's key headers in order, then its session cookie.
 * Pure; fuzzed (tests/fuzz/fuzz_skey.c). */
#ifndef GW_SKEY_H
#define GW_SKEY_H

#include <stddef.h>

struct gw_h1_head;
struct gw_route;

enum gw_skey_result {
    GW_SKEY_NONE = 0,    /* no key in the request */
    GW_SKEY_FOUND = 1,   /* <ret_key>/<ret_len> point into the head */
    GW_SKEY_INVALID = -1 /* a key is present but not 1-128 visible ASCII characters, or a
                          * key header comes twice or holds a comma (a list) */
};

/* Looks for the key per <route>. On GW_SKEY_FOUND sets <ret_key> and <ret_len>, else leaves
 * them untouched. <ret_from_cookie> (may be NULL) tells whether the cookie supplied it. */
int gw_skey_find(const struct gw_route *route, const struct gw_h1_head *head,
                 const char **ret_key, size_t *ret_len, int *ret_from_cookie);
/* Finds cookie <name> in a Cookie header value (RFC 6265 5.4 syntax "a=b; c=d"); a quoted value
 * is unquoted. Returns 1 and the value slice, or 0. */
int gw_skey_cookie(const char *v, size_t n, const char *name, const char **ret, size_t *ret_len);

/* Finds the legacy MCP SSE session id in a query string (without the '?'): the value of
 * "sessionId" or "session_id", up to '&' or '#'. Returns 1 and the slice, or 0. */
int gw_skey_query(const char *q, size_t n, const char **ret, size_t *ret_len);

#endif
