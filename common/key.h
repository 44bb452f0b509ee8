/* Session keys and their routing hash. A session is named by (tenant, source class, key); its
 * hash, XXH3-128 over the three, is what Redis and the gateway caches index by, so one tenant
 * can never reach another tenant's instance by sending the same key. */
#ifndef CM_KEY_H
#define CM_KEY_H

#include <stddef.h>
#include <stdint.h>

#define CM_KEY_MAX 128
#define CM_HASH_HEX_LEN 32

/* Source classes. The platform id (x-fc-session-id header, session cookie, control API id) is
 * one class so a session created through the API can be used from a browser cookie too. */
#define CM_KEY_SRC_SID "sid"
#define CM_KEY_SRC_MCP "mcp"
#define CM_KEY_SRC_SSE "sse"

struct cm_hash {
    uint64_t hi, lo;
};

/* Valid key: 1..CM_KEY_MAX bytes, each 0x21..0x7E. Returns 1 or 0. */
int cm_key_valid(const char *key, size_t len);
/* Hash of (tenant, source, key). Pure; any thread. */
struct cm_hash cm_key_hash(const char *tenant, const char *source, const char *key, size_t len);
/* Writes 32 lower-case hex digits and a NUL to <out> (33 bytes). */
void cm_hash_hex(struct cm_hash h, char out[CM_HASH_HEX_LEN + 1]);
/* Parses 32 hex digits; returns 0 or -EINVAL. */
int cm_hash_parse(const char *hex, size_t len, struct cm_hash *ret);
/* 128 random bits as 32 hex digits (getrandom); returns 0 or a negative errno. */
int cm_random_id(char out[CM_HASH_HEX_LEN + 1]);

#endif
