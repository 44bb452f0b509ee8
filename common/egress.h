/* Egress policies: which destinations a sandbox may reach through its host's egress proxy.
 *
 * A policy is two lists of patterns, `allow` and `deny`, each entry "name-or-address[:port]":
 *   api.example.com        that name (case-insensitive, a trailing dot ignored)
 *   *.example.com          any name below example.com (not example.com itself)
 *   *                      any name (never an address given as such)
 *   203.0.113.7            that address; [2001:db8::7] for IPv6
 *   203.0.113.0/24         those addresses; 2001:db8::/32 for IPv6
 * each optionally followed by ":<port>" (1..65535; IPv6 needs brackets then: [2001:db8::]/32:443
 * is not accepted, write the address form [2001:db8::7]:443 or leave the port out). No port:
 * any port.
 *
 * A request names a destination (the CONNECT target or the Host of a proxied request) and the
 * proxy resolves it. It goes through only when
 *   1. a name is allowed by a name pattern of `allow` (an address given as such: by an address
 *      pattern) and matched by no `deny` entry, and
 *   2. every address it connects to is matched by no `deny` address pattern and is not a
 *      special address (private, link-local and the cloud metadata address, shared/CGNAT,
 *      multicast: cm_egress_special()) unless a *trusted* address pattern of `allow` names it
 *      explicitly: one from the operator's config (a template's), never one a session added
 *      through the control API (a tenant could otherwise open the host's network). Loopback
 *      and unspecified addresses are the proxy's own host: never, whoever lists them.
 * Default: nothing (an empty `allow`). Pure code: no I/O, no allocation after parsing. */
#ifndef CM_EGRESS_H
#define CM_EGRESS_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Longest pattern, bytes; most entries per list. */
#define CM_EGRESS_PATTERN_MAX 253
#define CM_EGRESS_MAX_ENTRIES 64

enum cm_egress_kind { CM_EGRESS_NAME, CM_EGRESS_SUFFIX, CM_EGRESS_ANY_NAME, CM_EGRESS_NET };

struct cm_egress_entry {
    enum cm_egress_kind kind;
    uint16_t port;  /* 0: any */
    int family;     /* CM_EGRESS_NET: AF_INET or AF_INET6 */
    uint8_t prefix; /* CM_EGRESS_NET: bits that must match */
    uint8_t addr[16];
    uint8_t trusted; /* from the operator's config (may open special addresses) */
    char name[CM_EGRESS_PATTERN_MAX + 2]; /* NAME: the name; SUFFIX: ".example.com" (a '.' more) */
};

struct cm_egress_policy {
    size_t n_allow, n_deny;
    struct cm_egress_entry allow[CM_EGRESS_MAX_ENTRIES];
    struct cm_egress_entry deny[CM_EGRESS_MAX_ENTRIES];
};

/* Parses one pattern into <ret>. Returns 0, or -EINVAL with a reason in <why> (static text). */
int cm_egress_parse(const char *pattern, struct cm_egress_entry *ret, const char **why);

/* Adds <pattern> to the allow (<deny> 0) or deny list of <p>, <trusted> 1 when it comes from the
 * operator's config. Returns 0, -EINVAL (<why> set) or -E2BIG (the list is full). */
int cm_egress_add(struct cm_egress_policy *p, int deny, int trusted, const char *pattern,
                  const char **why);

/* Step 1: may the destination <host> (a name, or an address literal, IPv6 without brackets)
 * on <port> be asked for? Returns 1 or 0. */
int cm_egress_host_allowed(const struct cm_egress_policy *p, const char *host, uint16_t port);

/* Step 2: may the proxy connect to <sa> (AF_INET or AF_INET6)? Returns 1 or 0. */
int cm_egress_addr_allowed(const struct cm_egress_policy *p, const struct sockaddr *sa);

/* 1 when <sa> is a special address (see above), else 0. */
int cm_egress_special(const struct sockaddr *sa);
/* 1 when <sa> is loopback or unspecified (or no IPv4/IPv6 address): never reachable. */
int cm_egress_never(const struct sockaddr *sa);


/* A session's own lists, as the control API takes them and Redis keeps them (P s:{h} egress):
 * {"allow": ["pattern", ...], "deny": [...]}, both optional, at most <max_each> entries each.
 * cm_egress_json_check() validates the parsed value <v> and writes its normal form (compact,
 * both keys) into a new string *ret (free()); returns 0, or -EINVAL with a message in <why>,
 * or -ENOMEM. */
struct cm_json;
int cm_egress_json_check(const struct cm_json *v, size_t max_each, char **ret, char *why,
                         size_t whylen);
/* Parses a normal form back into two new NULL-terminated lists (free with cm_strv_free()), each
 * entry checked again. Returns 0 or -EINVAL (nothing allocated). */
int cm_egress_json_lists(const char *text, size_t len, char ***ret_allow, char ***ret_deny);

#endif
