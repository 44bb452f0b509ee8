#include "egress.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "json.h"

/* ::ffff:a.b.c.d (bytes: an in6_addr may not be aligned where these are kept) */
static int v4mapped(const uint8_t *a)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, 12) == 0;
}

/* A host name of letters, digits, '-', '_' and dots (labels 1..63), lower-cased into <out>
 * without a trailing dot. Returns 0 or -1. */
static int normal_name(const char *s, size_t len, char *out)
{
    if (len && s[len - 1] == '.')
        len--;
    if (len == 0 || len > CM_EGRESS_PATTERN_MAX)
        return -1;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return -1; /* an empty label, or one ending in '-' */
            label = 0;
        } else if (isalnum(c) || c == '_' || (c == '-' && label > 0)) {
            if (++label > 63)
                return -1;
        } else {
            return -1;
        }
        out[i] = (char)tolower(c);
    }
    if (label == 0 || s[len - 1] == '-')
        return -1;
    out[len] = '\0';
    return 0;
}

static int parse_port(const char *s, uint16_t *ret)
{
    if (!*s || strlen(s) > 5 || strspn(s, "0123456789") != strlen(s))
        return -1;
    unsigned long v = strtoul(s, NULL, 10);
    if (v == 0 || v > 65535)
        return -1;
    *ret = (uint16_t)v;
    return 0;
}

int cm_egress_parse(const char *pattern, struct cm_egress_entry *ret, const char **why)
{
    struct cm_egress_entry e;
    memset(&e, 0, sizeof(e));
    size_t n = strlen(pattern);
    char buf[CM_EGRESS_PATTERN_MAX + 8];
    if (n == 0 || n >= sizeof(buf)) {
        *why = "empty or too long";
        return -EINVAL;
    }
    memcpy(buf, pattern, n + 1);
    char *host = buf;
    /* [v6] or [v6]:port */
    if (buf[0] == '[') {
        char *close = strchr(buf, ']');
        if (!close) {
            *why = "'[' without ']'";
            return -EINVAL;
        }
        *close = '\0';
        host = buf + 1;
        if (close[1] == ':') {
            if (parse_port(close + 2, &e.port) < 0) {
                *why = "the port must be 1..65535";
                return -EINVAL;
            }
        } else if (close[1]) {
            *why = "only ':<port>' may follow ']'";
            return -EINVAL;
        }
    } else {
        char *colon = strrchr(buf, ':');
        /* One colon: host:port. More: an IPv6 address (or network) without a port. */
        if (colon && strchr(buf, ':') == colon) {
            if (parse_port(colon + 1, &e.port) < 0) {
                *why = "the port must be 1..65535";
                return -EINVAL;
            }
            *colon = '\0';
        }
    }
    char *slash = strchr(host, '/');
    unsigned bits = 0;
    if (slash) {
        *slash = '\0';
        if (!slash[1] || strlen(slash + 1) > 3 ||
            strspn(slash + 1, "0123456789") != strlen(slash + 1)) {
            *why = "a network needs /<prefix length>";
            return -EINVAL;
        }
        bits = (unsigned)atoi(slash + 1);
    }
    if (inet_pton(AF_INET, host, e.addr) == 1) {
        e.family = AF_INET;
        if (slash && bits > 32) {
            *why = "an IPv4 prefix is 0..32";
            return -EINVAL;
        }
        e.prefix = (uint8_t)(slash ? bits : 32);
    } else if (inet_pton(AF_INET6, host, e.addr) == 1) {
        e.family = AF_INET6;
        if (slash && bits > 128) {
            *why = "an IPv6 prefix is 0..128";
            return -EINVAL;
        }
        e.prefix = (uint8_t)(slash ? bits : 128);
    }
    if (e.family == AF_INET6 && v4mapped(e.addr) && e.prefix >= 96) {
        /* ::ffff:a.b.c.d/n is a.b.c.d/(n-96): the proxy judges such an address as IPv4. */
        memmove(e.addr, e.addr + 12, 4);
        memset(e.addr + 4, 0, 12);
        e.family = AF_INET;
        e.prefix = (uint8_t)(e.prefix - 96);
    }
    if (e.family) {
        e.kind = CM_EGRESS_NET;
        /* The host part of a network must be zero: 10.1.2.3/8 is probably a mistake. */
        for (unsigned i = e.prefix; i < (e.family == AF_INET ? 32u : 128u); i++)
            if (e.addr[i / 8] & (0x80 >> (i % 8))) {
                *why = "the address has bits set beyond its prefix";
                return -EINVAL;
            }
        *ret = e;
        return 0;
    }
    if (slash || host != buf) {
        *why = "not an address";
        return -EINVAL;
    }
    if (strcmp(host, "*") == 0) {
        e.kind = CM_EGRESS_ANY_NAME;
    } else if (strncmp(host, "*.", 2) == 0) {
        e.kind = CM_EGRESS_SUFFIX;
        e.name[0] = '.';
        if (normal_name(host + 2, strlen(host + 2), e.name + 1) < 0) {
            *why = "not a host name pattern";
            return -EINVAL;
        }
    } else {
        e.kind = CM_EGRESS_NAME;
        if (normal_name(host, strlen(host), e.name) < 0) {
            *why = "not a host name, address or network";
            return -EINVAL;
        }
        /* A dotted quad that inet_pton refused (e.g. 1.2.3.256) is no name either. */
        if (strspn(e.name, "0123456789.") == strlen(e.name)) {
            *why = "not a valid address";
            return -EINVAL;
        }
    }
    *ret = e;
    return 0;
}

int cm_egress_add(struct cm_egress_policy *p, int deny, int trusted, const char *pattern,
                  const char **why)
{
    size_t *n = deny ? &p->n_deny : &p->n_allow;
    if (*n >= CM_EGRESS_MAX_ENTRIES) {
        *why = "too many entries";
        return -E2BIG;
    }
    struct cm_egress_entry *e = deny ? &p->deny[*n] : &p->allow[*n];
    int rc = cm_egress_parse(pattern, e, why);
    if (rc == 0) {
        e->trusted = trusted ? 1 : 0;
        (*n)++;
    }
    return rc;
}

static int net_match(const struct cm_egress_entry *e, int family, const uint8_t *a)
{
    if (e->kind != CM_EGRESS_NET || e->family != family)
        return 0;
    unsigned full = e->prefix / 8, rest = e->prefix % 8;
    if (memcmp(e->addr, a, full) != 0)
        return 0;
    if (rest && ((e->addr[full] ^ a[full]) & (uint8_t)(0xff << (8 - rest))))
        return 0;
    return 1;
}

static int name_match(const struct cm_egress_entry *e, const char *name)
{
    size_t nl = strlen(name), el;
    switch (e->kind) {
    case CM_EGRESS_ANY_NAME:
        return 1;
    case CM_EGRESS_NAME:
        return strcmp(e->name, name) == 0;
    case CM_EGRESS_SUFFIX:
        el = strlen(e->name);
        return nl > el && strcmp(name + nl - el, e->name) == 0;
    default:
        return 0;
    }
}

static int port_ok(const struct cm_egress_entry *e, uint16_t port)
{
    return e->port == 0 || e->port == port;
}

/* The address of <sa> as bytes: its family, or 0. An IPv4-mapped IPv6 address is IPv4. */
static int addr_of(const struct sockaddr *sa, uint8_t *out, uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(out, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(in6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            memcpy(out, (const uint8_t *)&in6->sin6_addr + 12, 4);
            return AF_INET;
        }
        memcpy(out, &in6->sin6_addr, 16);
        return AF_INET6;
    }
    return 0;
}

int cm_egress_host_allowed(const struct cm_egress_policy *p, const char *host, uint16_t port)
{
    uint8_t a[16];
    int family = 0;
    char name[CM_EGRESS_PATTERN_MAX + 1];
    if (inet_pton(AF_INET, host, a) == 1) {
        family = AF_INET;
    } else if (inet_pton(AF_INET6, host, a) == 1) {
        family = AF_INET6;
        if (v4mapped(a)) { /* judged as the IPv4 address */
            memmove(a, a + 12, 4);
            family = AF_INET;
        }
    } else if (normal_name(host, strlen(host), name) < 0) {
        return 0;
    }
    for (size_t i = 0; i < p->n_deny; i++) {
        const struct cm_egress_entry *e = &p->deny[i];
        if (port_ok(e, port) && (family ? net_match(e, family, a) : name_match(e, name)))
            return 0;
    }
    for (size_t i = 0; i < p->n_allow; i++) {
        const struct cm_egress_entry *e = &p->allow[i];
        if (port_ok(e, port) && (family ? net_match(e, family, a) : name_match(e, name)))
            return 1;
    }
    return 0;
}

/* Special ranges: (family, prefix bytes, prefix length). */
static const struct {
    int family;
    uint8_t prefix;
    uint8_t addr[16];
} special[] = {
    {AF_INET, 8, {0}},          /* 0.0.0.0/8: "this network" */
    {AF_INET, 8, {10}},         /* private */
    {AF_INET, 10, {100, 64}},   /* shared address space (CGNAT) */
    {AF_INET, 8, {127}},        /* loopback */
    {AF_INET, 16, {169, 254}},  /* link-local: 169.254.169.254, the metadata */
    {AF_INET, 12, {172, 16}},   /* private */
    {AF_INET, 24, {192, 0, 0}}, /* IETF protocol assignments */
    {AF_INET, 15, {198, 18}},   /* benchmarking */
    {AF_INET, 16, {192, 168}},  /* private */
    {AF_INET, 4, {224}},        /* multicast */
    {AF_INET, 4, {240}},        /* reserved, broadcast */
    {AF_INET6, 128, {0}},       /* :: */
    {AF_INET6, 128, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}}, /* ::1 */
    {AF_INET6, 7, {0xfc}},                       /* unique local (fd00:ec2::254, the metadata) */
    {AF_INET6, 10, {0xfe, 0x80}},                /* link-local */
    {AF_INET6, 8, {0xff}},                       /* multicast */
    {AF_INET6, 96, {0}},                         /* IPv4-compatible (deprecated) */
    {AF_INET6, 96, {0, 0x64, 0xff, 0x9b}},       /* NAT64: an IPv4 address behind it */
    {AF_INET6, 48, {0, 0x64, 0xff, 0x9b, 0, 1}}, /* local-use NAT64 */
    {AF_INET6, 16, {0x20, 0x02}},                /* 6to4: an IPv4 address inside */
    {AF_INET6, 32, {0x20, 0x01, 0, 0}},          /* Teredo */
    {AF_INET6, 10, {0xfe, 0xc0}},                /* site-local (deprecated) */
};

int cm_egress_special(const struct sockaddr *sa)
{
    uint8_t a[16];
    uint16_t port;
    int family = addr_of(sa, a, &port);
    if (!family)
        return 1;
    for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++) {
        struct cm_egress_entry e = {
            .kind = CM_EGRESS_NET, .family = special[i].family, .prefix = special[i].prefix};
        memcpy(e.addr, special[i].addr, 16);
        if (net_match(&e, family, a))
            return 1;
    }
    return 0;
}

int cm_egress_never(const struct sockaddr *sa)
{
    uint8_t a[16];
    uint16_t port;
    int family = addr_of(sa, a, &port);
    if (family == AF_INET)
        return a[0] == 127 || a[0] == 0;
    if (family == AF_INET6) {
        static const uint8_t zero[15] = {0};
        return memcmp(a, zero, 15) == 0 && (a[15] == 0 || a[15] == 1);
    }
    return 1;
}

int cm_egress_addr_allowed(const struct cm_egress_policy *p, const struct sockaddr *sa)
{
    uint8_t a[16];
    uint16_t port;
    int family = addr_of(sa, a, &port);
    if (!family || cm_egress_never(sa))
        return 0;
    for (size_t i = 0; i < p->n_deny; i++)
        if (port_ok(&p->deny[i], port) && net_match(&p->deny[i], family, a))
            return 0;
    if (!cm_egress_special(sa))
        return 1;
    for (size_t i = 0; i < p->n_allow; i++)
        if (p->allow[i].trusted && port_ok(&p->allow[i], port) &&
            net_match(&p->allow[i], family, a))
            return 1; /* listed explicitly by address, by the operator */
    return 0;
}

int cm_egress_json_check(const struct cm_json *v, size_t max_each, char **ret, char *why,
                         size_t whylen)
{
    if (!v || v->type != CM_JSON_OBJECT) {
        snprintf(why, whylen, "egress must be an object {\"allow\": [...], \"deny\": [...]}");
        return -EINVAL;
    }
    for (size_t i = 0; i < v->len; i++)
        if (strcmp(v->keys[i], "allow") != 0 && strcmp(v->keys[i], "deny") != 0) {
            snprintf(why, whylen, "egress: unknown key \"%.32s\" (allow, deny)", v->keys[i]);
            return -EINVAL;
        }
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{", 1);
    static const char *const keys[] = {"allow", "deny"};
    for (int k = 0; k < 2; k++) {
        const struct cm_json *l = cm_json_get(v, keys[k]);
        if (l && l->type != CM_JSON_ARRAY && l->type != CM_JSON_NULL) {
            snprintf(why, whylen, "egress.%s must be a list of strings", keys[k]);
            goto bad;
        }
        size_t n = l && l->type == CM_JSON_ARRAY ? l->len : 0;
        if (n > max_each) {
            snprintf(why, whylen, "egress.%s: at most %zu entries", keys[k], max_each);
            goto bad;
        }
        cm_jbuf_printf(&b, "%s\"%s\":[", k ? "," : "", keys[k]);
        for (size_t i = 0; i < n; i++) {
            const struct cm_json *e = l->items[i];
            struct cm_egress_entry ent;
            const char *reason = "";
            if (e->type != CM_JSON_STRING || strlen(e->str) != e->len ||
                cm_egress_parse(e->str, &ent, &reason) < 0) {
                snprintf(why, whylen, "egress.%s[%zu]: %s", keys[k], i,
                         e->type != CM_JSON_STRING ? "must be a string" : reason);
                goto bad;
            }
            if (i)
                cm_jbuf_raw(&b, ",", 1);
            cm_jbuf_str(&b, e->str, e->len);
        }
        cm_jbuf_raw(&b, "]", 1);
    }
    cm_jbuf_raw(&b, "}", 2); /* with its NUL */
    if (b.failed) {
        cm_jbuf_fini(&b);
        return -ENOMEM;
    }
    *ret = b.data;
    return 0;
bad:
    cm_jbuf_fini(&b);
    return -EINVAL;
}

int cm_egress_json_lists(const char *text, size_t len, char ***ret_allow, char ***ret_deny)
{
    char err[64];
    struct cm_json *j = cm_json_parse(text, len, err, sizeof(err));
    char *norm = NULL, why[160];
    if (!j || cm_egress_json_check(j, CM_EGRESS_MAX_ENTRIES, &norm, why, sizeof(why)) < 0) {
        cm_json_free(j);
        return -EINVAL;
    }
    free(norm);
    char **lists[2] = {NULL, NULL};
    static const char *const keys[] = {"allow", "deny"};
    for (int k = 0; k < 2; k++) {
        const struct cm_json *l = cm_json_get(j, keys[k]);
        size_t n = l && l->type == CM_JSON_ARRAY ? l->len : 0;
        lists[k] = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; lists[k] && i < n; i++)
            if (!(lists[k][i] = strdup(l->items[i]->str))) {
                cm_strv_free(lists[k]);
                lists[k] = NULL;
            }
        if (!lists[k]) {
            cm_strv_free(lists[0]);
            cm_json_free(j);
            return -EINVAL;
        }
    }
    cm_json_free(j);
    *ret_allow = lists[0];
    *ret_deny = lists[1];
    return 0;
}
