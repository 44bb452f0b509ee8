/* common/key.c: session key validation, the routing hash, hex encoding, random ids. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/key.h"
#include "tests/harness/test.h"

static int valid(const char *s)
{
    return cm_key_valid(s, strlen(s));
}

static const char *hex_of(const char *tenant, const char *source, const char *key)
{
    static char out[CM_HASH_HEX_LEN + 1];
    cm_hash_hex(cm_key_hash(tenant, source, key, strlen(key)), out);
    return out;
}

TEST(valid_keys)
{
    CHECK(valid("a"));
    CHECK(valid("demo"));
    CHECK(valid("550e8400-e29b-41d4-a716-446655440000"));
    CHECK(valid("../../etc/passwd")); /* visible ASCII; the hash, not the key, names paths */
    char all[0x7e - 0x21 + 1];
    for (int c = 0x21; c <= 0x7e; c++)
        all[c - 0x21] = (char)c;
    CHECK(cm_key_valid(all, sizeof(all)));
    char max[CM_KEY_MAX];
    memset(max, 'k', sizeof(max));
    CHECK(cm_key_valid(max, CM_KEY_MAX));
}

TEST(invalid_keys)
{
    char longer[CM_KEY_MAX + 1];
    memset(longer, 'k', sizeof(longer));
    CHECK(!cm_key_valid(longer, sizeof(longer)));
    CHECK(!cm_key_valid("", 0));
    CHECK(!cm_key_valid("abc", 0));
    CHECK(!valid("a b"));
    CHECK(!valid(" lead"));
    CHECK(!valid("tab\there"));
    CHECK(!valid("nl\n"));
    CHECK(!valid("del\x7f"));
    CHECK(!valid("caf\xc3\xa9")); /* UTF-8 is not visible ASCII */
    CHECK(!valid("\x80"));
    CHECK(!cm_key_valid("a\0b", 3));
}

TEST(hash_is_stable)
{
    /* Redis keys and durable storage directories are named by this hash: it must never change.
     * Expected values are XXH3-128 (xxhsum -H2) of the length-prefixed (tenant, source, key). */
    CHECK_STR_EQ(hex_of("default", "sid", "demo"), "c406443dbad379b41e06d8ca05179a74");
    CHECK_STR_EQ(hex_of("acme", "sid", "demo"), "7c57845a5e9c391327cedce8008123e1");
    CHECK_STR_EQ(hex_of("default", "mcp", "demo"), "5ff8885b8ccc4017545cb3663e10f09d");
    char max[CM_KEY_MAX + 1];
    memset(max, 'x', CM_KEY_MAX);
    max[CM_KEY_MAX] = '\0';
    CHECK_STR_EQ(hex_of("default", "sid", max), "523ed4471ed6533b7180ecb372ac71d1");
    /* pure: the same input twice gives the same hash */
    struct cm_hash a = cm_key_hash("t", "sid", "k", 1), b = cm_key_hash("t", "sid", "k", 1);
    CHECK(a.hi == b.hi && a.lo == b.lo);
}

TEST(hash_separates_tenants_sources_and_fields)
{
    char a[CM_HASH_HEX_LEN + 1];
    strcpy(a, hex_of("tenant-a", "sid", "same-key"));
    CHECK(strcmp(a, hex_of("tenant-b", "sid", "same-key")) != 0);
    CHECK(strcmp(a, hex_of("tenant-a", "mcp", "same-key")) != 0);
    CHECK(strcmp(a, hex_of("tenant-a", "sse", "same-key")) != 0);
    /* length prefixes: moving a byte from one field to the next changes the hash */
    strcpy(a, hex_of("ab", "sid", "c"));
    CHECK(strcmp(a, hex_of("a", "sid", "bc")) != 0);
    strcpy(a, hex_of("t", "sid", "key1"));
    CHECK(strcmp(a, hex_of("t", "sid", "key2")) != 0);
    /* the key length is part of the input, not a NUL terminator */
    struct cm_hash h1 = cm_key_hash("t", "sid", "ab", 1), h2 = cm_key_hash("t", "sid", "a", 1);
    CHECK(h1.hi == h2.hi && h1.lo == h2.lo);
    struct cm_hash h3 = cm_key_hash("t", "sid", "ab", 2);
    CHECK(h1.hi != h3.hi || h1.lo != h3.lo);
}

TEST(hex_encoding_and_parsing)
{
    struct cm_hash h = {.hi = 0x0123456789abcdefull, .lo = 0xfedcba9876543210ull};
    char out[CM_HASH_HEX_LEN + 1];
    memset(out, '!', sizeof(out));
    cm_hash_hex(h, out);
    CHECK_STR_EQ(out, "0123456789abcdeffedcba9876543210");
    CHECK_UINT_EQ(strlen(out), CM_HASH_HEX_LEN);

    struct cm_hash p = {0, 0};
    CHECK_INT_EQ(cm_hash_parse(out, strlen(out), &p), 0);
    CHECK(p.hi == h.hi && p.lo == h.lo);
    CHECK_INT_EQ(cm_hash_parse("0123456789ABCDEFFEDCBA9876543210", 32, &p), 0);
    CHECK(p.hi == h.hi && p.lo == h.lo);

    struct cm_hash untouched = {7, 7};
    CHECK_INT_EQ(cm_hash_parse(out, 31, &untouched), -EINVAL);
    CHECK_INT_EQ(cm_hash_parse("0123456789abcdeffedcba98765432100", 33, &untouched), -EINVAL);
    CHECK_INT_EQ(cm_hash_parse("0123456789abcdeffedcba987654321g", 32, &untouched), -EINVAL);
    CHECK_INT_EQ(cm_hash_parse("0123456789abcdef fedcba987654321", 32, &untouched), -EINVAL);
    CHECK_INT_EQ(cm_hash_parse("", 0, &untouched), -EINVAL);
    CHECK(untouched.hi == 7 && untouched.lo == 7);
}

TEST(hex_round_trips_real_hashes)
{
    for (int i = 0; i < 200; i++) {
        char key[16], out[CM_HASH_HEX_LEN + 1];
        int n = snprintf(key, sizeof(key), "k%d", i);
        struct cm_hash h = cm_key_hash("default", "sid", key, (size_t)n), back;
        cm_hash_hex(h, out);
        for (int k = 0; k < CM_HASH_HEX_LEN; k++)
            CHECK((out[k] >= '0' && out[k] <= '9') || (out[k] >= 'a' && out[k] <= 'f'));
        CHECK_INT_EQ(cm_hash_parse(out, CM_HASH_HEX_LEN, &back), 0);
        CHECK(back.hi == h.hi && back.lo == h.lo);
    }
}

TEST(random_ids_are_hex_and_differ)
{
    char a[CM_HASH_HEX_LEN + 1], b[CM_HASH_HEX_LEN + 1];
    CHECK_INT_EQ(cm_random_id(a), 0);
    CHECK_INT_EQ(cm_random_id(b), 0);
    CHECK_UINT_EQ(strlen(a), CM_HASH_HEX_LEN);
    CHECK(strcmp(a, b) != 0);
    struct cm_hash h;
    CHECK_INT_EQ(cm_hash_parse(a, CM_HASH_HEX_LEN, &h), 0);
    CHECK(cm_key_valid(a, strlen(a))); /* usable as a session key (cookie issue) */
}
