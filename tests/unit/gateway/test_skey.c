/* Unit tests of gateway/skey.c: where a request's session key comes from (the route's key
 * headers in order, then its cookie) and what makes a key invalid (1-128 bytes of 0x21-0x7E). */
#include <stdio.h>
#include <string.h>

#include "common/key.h"
#include "gateway/config.h"
#include "gateway/h1.h"
#include "gateway/skey.h"
#include "tests/harness/test.h"

static struct gw_h1_header hdrs[32];
static struct gw_h1_head head;
static char msg[8192];

/* Parses "GET / HTTP/1.1\r\nHost: x\r\n" + <headers> + "\r\n" into <head>. */
static void parse(const char *headers)
{
    llhttp_settings_t s;
    llhttp_t p;
    gw_h1_settings_init(&s, NULL, NULL);
    llhttp_init(&p, HTTP_REQUEST, &s);
    int n = snprintf(msg, sizeof(msg), "GET / HTTP/1.1\r\nHost: x\r\n%s\r\n", headers);
    head.headers = hdrs;
    head.max_headers = 32;
    int rc = gw_h1_parse_head(&p, &s, &head, msg, (size_t)n, 0);
    CHECK_MSG(rc == GW_H1_OK, "test head did not parse: %d", rc);
}

static char *default_headers[] = {"x-fc-session-id", NULL};

static struct gw_route route(char **key_headers, char *cookie)
{
    return (struct gw_route){.name = "r", .path_prefix = "/", .tenant = "default",
                             .key_headers = key_headers, .cookie = cookie};
}

struct found {
    int rc;
    char key[256];
    int from_cookie;
};

static struct found find(const struct gw_route *r, const char *headers)
{
    parse(headers);
    struct found f = {.from_cookie = 42};
    const char *key = (const char *)&f; /* sentinel: must stay untouched unless found */
    size_t len = 12345;
    f.rc = gw_skey_find(r, &head, &key, &len, &f.from_cookie);
    if (f.rc == GW_SKEY_FOUND) {
        CHECK(len <= CM_KEY_MAX);
        CHECK(key >= msg && key + len <= msg + strlen(msg)); /* a slice of the head */
        memcpy(f.key, key, len);
        f.key[len] = '\0';
    } else {
        CHECK_MSG(key == (const char *)&f && len == 12345, "ret_key/ret_len changed on rc %d",
                  f.rc);
        CHECK_MSG(f.from_cookie == 42, "ret_from_cookie changed on rc %d", f.rc);
    }
    return f;
}

TEST(key_from_the_default_header)
{
    struct gw_route r = route(default_headers, "berth_session");
    struct found f = find(&r, "X-Fc-Session-Id: agent-42\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "agent-42");
    CHECK_INT_EQ(f.from_cookie, 0);
}

TEST(header_names_match_case_insensitively)
{
    struct gw_route r = route(default_headers, NULL);
    struct found f = find(&r, "X-FC-SESSION-ID: K\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "K");
}

TEST(white_space_around_the_key_is_not_part_of_it)
{
    struct gw_route r = route(default_headers, NULL);
    struct found f = find(&r, "x-fc-session-id: \t abc \t \r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "abc");
}

TEST(route_order_of_key_headers_wins_over_request_order)
{
    char *names[] = {"x-first", "x-second", NULL};
    struct gw_route r = route(names, NULL);
    struct found f = find(&r, "X-Second: two\r\nX-First: one\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "one");
    f = find(&r, "X-Second: two\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "two");
}

TEST(two_key_headers_of_a_name_are_invalid)
{
    /* Which one is the key depends on the parser: the gateway took the first, an instance
     * may take the last or join them ("a, b"). Like a second Host: refused. */
    struct gw_route r = route(default_headers, "berth_session");
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a\r\nx-fc-session-id: b\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a\r\nX-FC-SESSION-ID: a\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a\r\nX-Other: 1\r\nx-fc-session-id: \r\n").rc,
                 GW_SKEY_INVALID);
    /* a list in one header is two keys as well */
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a,b\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a,\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: ,a\r\n").rc, GW_SKEY_INVALID);
    /* the cookie does not rescue it */
    CHECK_INT_EQ(
        find(&r, "Cookie: berth_session=c\r\nx-fc-session-id: a\r\nx-fc-session-id: b\r\n").rc,
        GW_SKEY_INVALID);
    /* one header of each of two key names: the route's order decides, as before */
    char *names[] = {"x-first", "x-second", NULL};
    struct gw_route r2 = route(names, NULL);
    struct found f = find(&r2, "X-Second: two\r\nX-First: one\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "one");
    /* ...but a doubled lower-priority one is refused too, not skipped */
    CHECK_INT_EQ(find(&r2, "X-Second: two\r\nX-Second: three\r\n").rc, GW_SKEY_INVALID);
}

TEST(header_wins_over_cookie)
{
    struct gw_route r = route(default_headers, "berth_session");
    struct found f = find(&r, "Cookie: berth_session=from-cookie\r\nx-fc-session-id: hdr\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "hdr");
    CHECK_INT_EQ(f.from_cookie, 0);
}

TEST(key_from_the_cookie)
{
    struct gw_route r = route(default_headers, "berth_session");
    struct found f = find(&r, "Cookie: theme=dark; berth_session=c00kie-key; lang=en\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "c00kie-key");
    CHECK_INT_EQ(f.from_cookie, 1);
}

TEST(cookie_from_a_later_cookie_header)
{
    struct gw_route r = route(default_headers, "berth_session");
    struct found f = find(&r, "Cookie: a=1\r\nCookie: b=2; berth_session=second\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "second");
}

TEST(first_matching_cookie_wins)
{
    struct gw_route r = route(default_headers, "berth_session");
    struct found f = find(&r, "Cookie: berth_session=one; berth_session=two\r\n");
    CHECK_STR_EQ(f.key, "one");
}

TEST(cookie_names_match_exactly)
{
    struct gw_route r = route(default_headers, "berth_session");
    CHECK_INT_EQ(find(&r, "Cookie: xberth_session=a; berth_session2=b\r\n").rc, GW_SKEY_NONE);
    /* RFC 6265: cookie names are case-sensitive */
    CHECK_INT_EQ(find(&r, "Cookie: Berth_Session=a\r\n").rc, GW_SKEY_NONE);
    struct found f = find(&r, "Cookie: berth_session2=b; berth_session=c\r\n");
    CHECK_STR_EQ(f.key, "c");
}

TEST(quoted_cookie_value_is_unquoted)
{
    struct gw_route r = route(default_headers, "berth_session");
    struct found f = find(&r, "Cookie: berth_session=\"q-key\"\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "q-key");
}

TEST(cookies_ignored_when_the_route_has_none)
{
    struct gw_route r = route(default_headers, NULL);
    CHECK_INT_EQ(find(&r, "Cookie: berth_session=abc\r\n").rc, GW_SKEY_NONE);
}

TEST(no_key_headers_means_cookie_only)
{
    struct gw_route r = route(NULL, "sid");
    CHECK_INT_EQ(find(&r, "x-fc-session-id: abc\r\n").rc, GW_SKEY_NONE);
    struct found f = find(&r, "x-fc-session-id: abc\r\nCookie: sid=ck\r\n");
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, "ck");
    char *empty[] = {NULL};
    struct gw_route e = route(empty, NULL);
    CHECK_INT_EQ(find(&e, "x-fc-session-id: abc\r\n").rc, GW_SKEY_NONE);
}

TEST(no_key_at_all)
{
    struct gw_route r = route(default_headers, "berth_session");
    CHECK_INT_EQ(find(&r, "").rc, GW_SKEY_NONE);
    CHECK_INT_EQ(find(&r, "X-Fc-Session: near-miss\r\nCookie: other=1\r\n").rc, GW_SKEY_NONE);
}

TEST(invalid_header_keys)
{
    struct gw_route r = route(default_headers, "berth_session");
    char long_key[200];
    memset(long_key, 'k', 129);
    long_key[129] = '\0';
    char h[300];
    snprintf(h, sizeof(h), "x-fc-session-id: %s\r\n", long_key);
    CHECK_INT_EQ(find(&r, h).rc, GW_SKEY_INVALID); /* 129 characters */
    CHECK_INT_EQ(find(&r, "x-fc-session-id:\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id:   \r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a b\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: a\tb\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: caf\xc3\xa9\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-fc-session-id: \x80\r\n").rc, GW_SKEY_INVALID);
}

TEST(an_invalid_key_header_does_not_fall_back)
{
    /* a present but invalid key is an error, not a reason to use the cookie or another header */
    char *names[] = {"x-a", "x-b", NULL};
    struct gw_route r = route(names, "berth_session");
    CHECK_INT_EQ(find(&r, "x-a: bad key\r\nx-b: good\r\nCookie: berth_session=ok\r\n").rc,
                 GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "x-a: bad key\r\nx-a: good\r\n").rc, GW_SKEY_INVALID);
}

TEST(invalid_cookie_keys)
{
    struct gw_route r = route(default_headers, "berth_session");
    CHECK_INT_EQ(find(&r, "Cookie: berth_session=\r\n").rc, GW_SKEY_INVALID);
    CHECK_INT_EQ(find(&r, "Cookie: berth_session=\"\"\r\n").rc, GW_SKEY_INVALID);
    char h[400];
    char long_key[200];
    memset(long_key, 'c', 129);
    long_key[129] = '\0';
    snprintf(h, sizeof(h), "Cookie: berth_session=%s\r\n", long_key);
    CHECK_INT_EQ(find(&r, h).rc, GW_SKEY_INVALID);
}

TEST(longest_valid_keys)
{
    struct gw_route r = route(default_headers, "berth_session");
    char key[CM_KEY_MAX + 1];
    for (int i = 0; i < CM_KEY_MAX; i++) {
        key[i] = (char)(0x21 + i % (0x7e - 0x21 + 1));
        if (key[i] == ',') /* a list in a header: two_key_headers_of_a_name_are_invalid */
            key[i] = '.';
    }
    key[CM_KEY_MAX] = '\0';
    /* '"' and ';' are fine in a header key */
    char h[400];
    snprintf(h, sizeof(h), "x-fc-session-id: %s\r\n", key);
    struct found f = find(&r, h);
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_STR_EQ(f.key, key);
    memset(key, 'z', CM_KEY_MAX);
    snprintf(h, sizeof(h), "Cookie: berth_session=%s\r\n", key);
    f = find(&r, h);
    CHECK_INT_EQ(f.rc, GW_SKEY_FOUND);
    CHECK_UINT_EQ(strlen(f.key), CM_KEY_MAX);
}

TEST(from_cookie_may_be_null)
{
    struct gw_route r = route(default_headers, "berth_session");
    parse("Cookie: berth_session=abc\r\n");
    const char *key = NULL;
    size_t len = 0;
    CHECK_INT_EQ(gw_skey_find(&r, &head, &key, &len, NULL), GW_SKEY_FOUND);
    CHECK_UINT_EQ(len, 3);
}

/* ------------------------------------------------------------------ gw_skey_cookie */

static int cookie(const char *v, const char *name, char *out)
{
    const char *p = NULL;
    size_t n = 0;
    int rc = gw_skey_cookie(v, strlen(v), name, &p, &n);
    if (rc) {
        CHECK(p >= v && p + n <= v + strlen(v));
        memcpy(out, p, n);
        out[n] = '\0';
    }
    return rc;
}

TEST(cookie_parsing)
{
    char out[256];
    CHECK_INT_EQ(cookie("a=b", "a", out), 1);
    CHECK_STR_EQ(out, "b");
    CHECK_INT_EQ(cookie("  a  =  b  ;c=d", "a", out), 1);
    CHECK_STR_EQ(out, "b");
    CHECK_INT_EQ(cookie("a=b;c=d", "c", out), 1);
    CHECK_STR_EQ(out, "d");
    CHECK_INT_EQ(cookie("flag; c=d", "c", out), 1); /* a pair without '=' is skipped */
    CHECK_STR_EQ(out, "d");
    CHECK_INT_EQ(cookie("c=x=y", "c", out), 1); /* '=' inside the value */
    CHECK_STR_EQ(out, "x=y");
    CHECK_INT_EQ(cookie("c=d;", "c", out), 1);
    CHECK_STR_EQ(out, "d");
    CHECK_INT_EQ(cookie("c=", "c", out), 1);
    CHECK_STR_EQ(out, "");
    CHECK_INT_EQ(cookie("c=\"\"", "c", out), 1);
    CHECK_STR_EQ(out, "");
    CHECK_INT_EQ(cookie("c=\"", "c", out), 1); /* a lone quote is not a quoted value */
    CHECK_STR_EQ(out, "\"");
    CHECK_INT_EQ(cookie("", "c", out), 0);
    CHECK_INT_EQ(cookie(";;;", "c", out), 0);
    CHECK_INT_EQ(cookie("cc=1; c", "c", out), 0);
    CHECK_INT_EQ(cookie("=c; c", "c", out), 0);
}
