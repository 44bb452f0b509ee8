/* common/egress.c: patterns, the name check, the address check and the special ranges. */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "common/egress.h"
#include "tests/harness/test.h"

static struct cm_egress_policy P;

static void policy_as(const char *const *allow, const char *const *deny, int trusted)
{
    const char *why = NULL;
    memset(&P, 0, sizeof(P));
    for (; allow && *allow; allow++)
        CHECK_MSG(cm_egress_add(&P, 0, trusted, *allow, &why) == 0, "%s: %s", *allow, why);
    for (; deny && *deny; deny++)
        CHECK_MSG(cm_egress_add(&P, 1, trusted, *deny, &why) == 0, "%s: %s", *deny, why);
}

static void policy(const char *const *allow, const char *const *deny)
{
    policy_as(allow, deny, 1);
}

static int addr_ok(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        CHECK(inet_pton(AF_INET6, ip, &a->sin6_addr) == 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        CHECK(inet_pton(AF_INET, ip, &a->sin_addr) == 1);
    }
    return cm_egress_addr_allowed(&P, (struct sockaddr *)&ss);
}

TEST(patterns_parse_or_say_why_not)
{
    struct cm_egress_entry e;
    const char *why = NULL;
    const char *good[] = {
        "api.example.com", "API.Example.COM.",  "*.pypi.org",     "*",
        "*:443",           "203.0.113.7",       "203.0.113.0/24", "203.0.113.7:8080",
        "[2001:db8::7]",   "[2001:db8::7]:443", "2001:db8::/32",  "a_b.example:22",
        "0.0.0.0/0"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK_MSG(cm_egress_parse(good[i], &e, &why) == 0, "%s: %s", good[i], why);
    const char *bad[] = {"",
                         "api..example",
                         "-",
                         "*.",
                         "**.x",
                         "a b",
                         "x:0",
                         "x:65536",
                         "x:http",
                         "203.0.113.7/33",
                         "203.0.113.7/24",
                         "1.2.3.256",
                         "[2001:db8::7",
                         "[host]",
                         "2001:db8::/129",
                         "x/8",
                         "[::1]x",
                         "ex*ample.com",
                         "a.-b/3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_MSG(cm_egress_parse(bad[i], &e, &why) == -EINVAL, "taken: '%s'", bad[i]);
}

TEST(nothing_is_allowed_by_default)
{
    policy(NULL, NULL);
    CHECK(!cm_egress_host_allowed(&P, "example.com", 443));
    CHECK(!cm_egress_host_allowed(&P, "203.0.113.7", 443));
    CHECK(addr_ok("203.0.113.7", 443)); /* step 2 alone: not special, not denied */
    CHECK(!addr_ok("10.0.0.1", 443));
}

TEST(names_suffixes_and_ports)
{
    const char *allow[] = {"api.example.com", "*.pypi.org", "git.example.com:22", NULL};
    const char *deny[] = {"evil.pypi.org", NULL};
    policy(allow, deny);
    CHECK(cm_egress_host_allowed(&P, "api.example.com", 443));
    CHECK(cm_egress_host_allowed(&P, "API.EXAMPLE.COM.", 80));
    CHECK(!cm_egress_host_allowed(&P, "www.example.com", 443));
    CHECK(!cm_egress_host_allowed(&P, "api.example.com.evil.net", 443));
    CHECK(cm_egress_host_allowed(&P, "files.pypi.org", 443));
    CHECK(!cm_egress_host_allowed(&P, "pypi.org", 443)); /* *.x is below x only */
    CHECK(!cm_egress_host_allowed(&P, "evil.pypi.org", 443));
    CHECK(!cm_egress_host_allowed(&P, "xpypi.org", 443));
    CHECK(cm_egress_host_allowed(&P, "git.example.com", 22));
    CHECK(!cm_egress_host_allowed(&P, "git.example.com", 443));
    CHECK(!cm_egress_host_allowed(&P, "bad name", 443));
}

TEST(an_address_needs_an_address_pattern)
{
    const char *allow[] = {"*", NULL};
    policy(allow, NULL);
    CHECK(cm_egress_host_allowed(&P, "anything.example", 443));
    CHECK(!cm_egress_host_allowed(&P, "203.0.113.7", 443));
    CHECK(!cm_egress_host_allowed(&P, "2001:db8::7", 443));
    const char *allow2[] = {"203.0.113.0/24", "[2001:db8::7]:443", NULL};
    policy(allow2, NULL);
    CHECK(cm_egress_host_allowed(&P, "203.0.113.99", 80));
    CHECK(!cm_egress_host_allowed(&P, "203.0.114.1", 80));
    CHECK(cm_egress_host_allowed(&P, "2001:db8::7", 443));
    CHECK(!cm_egress_host_allowed(&P, "2001:db8::7", 80));
    CHECK(!cm_egress_host_allowed(&P, "example.com", 443));
}

TEST(special_addresses_need_an_explicit_address_pattern)
{
    const char *allow[] = {"*", "10.1.2.3", NULL};
    const char *deny[] = {"203.0.113.66", NULL};
    policy(allow, deny);
    const char *special[] = {"127.0.0.1",
                             "10.0.0.1",
                             "172.16.5.5",
                             "192.168.1.1",
                             "169.254.169.254",
                             "100.64.0.1",
                             "0.0.0.0",
                             "224.0.0.1",
                             "255.255.255.255",
                             "::1",
                             "::",
                             "fd00:ec2::254",
                             "fe80::1",
                             "ff02::1",
                             "::ffff:127.0.0.1",
                             "64:ff9b::a00:1",
                             "::10.0.0.1"};
    for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++)
        CHECK_MSG(!addr_ok(special[i], 443), "allowed: %s", special[i]);
    CHECK(addr_ok("10.1.2.3", 443)); /* listed by address (by the operator) */
    CHECK(!addr_ok("10.1.2.4", 443));
    CHECK(addr_ok("203.0.113.7", 443));
    CHECK(!addr_ok("203.0.113.66", 443)); /* denied by address */
    CHECK(addr_ok("2001:db8::1", 443));
}

TEST(a_session_cannot_open_special_addresses_and_nobody_opens_loopback)
{
    const char *allow[] = {"10.1.2.3", "169.254.169.254", "127.0.0.1", "0.0.0.0/0", NULL};
    policy_as(allow, NULL, 0); /* a session's lists */
    CHECK(!addr_ok("10.1.2.3", 443));
    CHECK(!addr_ok("169.254.169.254", 80));
    CHECK(!addr_ok("127.0.0.1", 9191));
    CHECK(cm_egress_host_allowed(&P, "10.1.2.3", 443)); /* step 1 passes, step 2 does not */
    CHECK(addr_ok("203.0.113.7", 443));
    policy(allow, NULL); /* the operator's */
    CHECK(addr_ok("10.1.2.3", 443));
    CHECK(addr_ok("169.254.169.254", 80));
    CHECK(!addr_ok("127.0.0.1", 9191)); /* the proxy's own host: never */
    CHECK(!addr_ok("127.1.2.3", 80));
    CHECK(!addr_ok("0.0.0.0", 80));
    CHECK(!addr_ok("::1", 80));
    CHECK(!addr_ok("::ffff:127.0.0.1", 80));
}

TEST(the_longest_names_fit_and_mapped_addresses_are_ipv4)
{
    struct cm_egress_entry e;
    const char *why = NULL;
    /* "*." and 253 characters of name (the review's stack overflow: ".name" and its NUL). */
    char pat[CM_EGRESS_PATTERN_MAX + 8] = "*.";
    char *p = pat + 2;
    for (int l = 0; l < 4; l++) {
        int n = l < 3 ? 63 : 61;
        memset(p, 'a' + l, (size_t)n);
        p += n;
        if (l < 3)
            *p++ = '.';
    }
    *p = '\0';
    CHECK(strlen(pat) == 255);
    CHECK_MSG(cm_egress_parse(pat, &e, &why) == 0, "%s", why);
    CHECK(e.kind == CM_EGRESS_SUFFIX && strlen(e.name) == 254 && e.name[0] == '.');
    memset(&P, 0, sizeof(P));
    CHECK(cm_egress_add(&P, 0, 0, pat, &why) == 0);
    CHECK(!cm_egress_host_allowed(&P, pat + 2, 443)); /* the name itself is not below it */
    pat[strlen(pat) - 1] = '\0';
    pat[strlen(pat) - 1] = 'x';
    CHECK(cm_egress_parse(pat, &e, &why) == 0 && strlen(e.name) == 253);
    CHECK(cm_egress_parse("::ffff:203.0.113.0/120", &e, &why) == 0);
    CHECK(e.family == AF_INET && e.prefix == 24);
    const char *allow[] = {"*", "203.0.113.7", NULL};
    const char *deny[] = {"::ffff:203.0.113.0/120", NULL};
    policy(allow, deny);
    CHECK(!addr_ok("203.0.113.7", 443));
    CHECK(!addr_ok("::ffff:203.0.113.7", 443));
    const char *allow2[] = {"203.0.113.7", NULL};
    policy(allow2, NULL);
    CHECK(cm_egress_host_allowed(&P, "::ffff:203.0.113.7", 443));
    const char *more[] = {"64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::1", "2001:0:1::1", "fec0::1",
                          "198.18.0.1"};
    const char *any[] = {"*", NULL};
    policy(any, NULL);
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
        CHECK_MSG(!addr_ok(more[i], 443), "allowed: %s", more[i]);
}
