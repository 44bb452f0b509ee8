/* common/json.c: the strict bounded parser and the escaping writer. */
#include <stdio.h>
#include <string.h>

#include "common/json.h"
#include "tests/harness/test.h"

static struct cm_json *parse(const char *s)
{
    char err[128];
    return cm_json_parse(s, strlen(s), err, sizeof(err));
}

/* Fails the test unless <s> is refused with a non-empty reason. */
static void refused(const char *s)
{
    char err[128] = "";
    struct cm_json *j = cm_json_parse(s, strlen(s), err, sizeof(err));
    CHECK_MSG(j == NULL, "accepted: %s", s);
    CHECK_MSG(err[0] != '\0', "refused without a reason: %s", s);
}

TEST(object_with_every_type)
{
    struct cm_json *j = parse(" {\"s\":\"x\", \"n\": -12.5e1, \"t\":true, \"f\":false, "
                              "\"z\":null, \"a\":[1,[2],{}], \"o\":{\"k\":\"v\"}} \n");
    CHECK_NOT_NULL(j);
    CHECK_INT_EQ(j->type, CM_JSON_OBJECT);
    CHECK_UINT_EQ(j->len, 7);
    CHECK_STR_EQ(cm_json_get(j, "s")->str, "x");
    CHECK(cm_json_get(j, "n")->type == CM_JSON_NUMBER && cm_json_get(j, "n")->number == -125.0);
    CHECK(cm_json_get(j, "t")->type == CM_JSON_BOOL && cm_json_get(j, "t")->boolean == 1);
    CHECK(cm_json_get(j, "f")->type == CM_JSON_BOOL && cm_json_get(j, "f")->boolean == 0);
    CHECK_INT_EQ(cm_json_get(j, "z")->type, CM_JSON_NULL);
    const struct cm_json *a = cm_json_get(j, "a");
    CHECK(a->type == CM_JSON_ARRAY && a->len == 3);
    CHECK(a->items[0]->number == 1.0);
    CHECK(a->items[1]->type == CM_JSON_ARRAY && a->items[1]->len == 1);
    CHECK(a->items[2]->type == CM_JSON_OBJECT && a->items[2]->len == 0);
    CHECK_STR_EQ(cm_json_get(cm_json_get(j, "o"), "k")->str, "v");
    CHECK_NULL(cm_json_get(j, "missing"));
    CHECK_NULL(cm_json_get(a, "s")); /* not an object */
    CHECK_NULL(cm_json_get(NULL, "s"));
    cm_json_free(j);
}

TEST(scalars_at_top_level)
{
    struct cm_json *j = parse("\"just a string\"");
    CHECK(j && j->type == CM_JSON_STRING && j->len == 13);
    cm_json_free(j);
    j = parse("0");
    CHECK(j && j->type == CM_JSON_NUMBER && j->number == 0);
    cm_json_free(j);
    j = parse("null");
    CHECK(j && j->type == CM_JSON_NULL);
    cm_json_free(j);
}

TEST(numbers)
{
    static const struct {
        const char *text;
        double value;
    } ok[] = {{"0", 0},          {"-0", 0},      {"7", 7},         {"-3", -3},
              {"1.25", 1.25},    {"1e3", 1000},  {"1E+2", 100},    {"25e-2", 0.25},
              {"3600000", 3600000}, {"0.5", 0.5}, {"123456789012", 123456789012.0}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct cm_json *j = parse(ok[i].text);
        CHECK_MSG(j && j->type == CM_JSON_NUMBER && j->number == ok[i].value, "%s", ok[i].text);
        cm_json_free(j);
    }
    static const char *const bad[] = {"01", "+1", ".5", "1.", "1e", "1e+", "-", "0x10",
                                      "1e999", "NaN", "Infinity", "- 1", "1 2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        refused(bad[i]);
}

TEST(string_escapes_decode_to_utf8)
{
    struct cm_json *j = parse("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u00e9 \\u20ac \\ud83d\\ude00\"");
    CHECK_NOT_NULL(j);
    const char want[] = "q\" b\\ s/ \b\f\n\r\t \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
    CHECK_UINT_EQ(j->len, sizeof(want) - 1);
    CHECK_MEM_EQ(j->str, want, sizeof(want) - 1);
    cm_json_free(j);

    j = parse("\"a\\u0000b\""); /* embedded NUL: len tells */
    CHECK(j && j->len == 3 && j->str[0] == 'a' && j->str[1] == '\0' && j->str[2] == 'b');
    cm_json_free(j);

    j = parse("\"caf\xc3\xa9\""); /* raw UTF-8 passes through */
    CHECK(j && j->len == 5 && memcmp(j->str, "caf\xc3\xa9", 5) == 0);
    cm_json_free(j);
}

TEST(bad_strings_are_refused)
{
    refused("\"unterminated");
    refused("\"bad escape \\x\"");
    refused("\"\\u12\"");
    refused("\"\\u12g4\"");
    refused("\"\\ud800\"");        /* lone high surrogate */
    refused("\"\\ud800\\u0041\""); /* high surrogate + non-low */
    refused("\"\\udc00\"");        /* lone low surrogate */
    refused("\"ctl \x01\"");
    refused("\"tab \t inside\"");
    refused("\"ends with backslash\\");
    refused("'single'");
}

TEST(bad_structure_is_refused)
{
    static const char *const bad[] = {"",          "   ",       "{",         "}",
                                      "[1,]",      "[,1]",      "{\"a\":1,}", "{\"a\" 1}",
                                      "{a:1}",     "{\"a\":}",  "[1 2]",      "{} {}",
                                      "nul",       "tru",       "falsey",     "[true false]",
                                      "{\"a\":1", "[[[]]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        refused(bad[i]);
}

TEST(error_message_says_where)
{
    char err[128];
    struct cm_json *j = cm_json_parse("{\"a\":1} x", 9, err, sizeof(err));
    CHECK_NULL(j);
    CHECK_STR_EQ(err, "trailing data at byte 8");
    j = cm_json_parse("[1,?]", 5, err, sizeof(err));
    CHECK_NULL(j);
    CHECK_CONTAINS(err, "invalid JSON near byte");
    /* the length bounds parsing: bytes after <len> are never read */
    j = cm_json_parse("[1]garbage", 3, err, sizeof(err));
    CHECK(j && j->type == CM_JSON_ARRAY && j->len == 1);
    cm_json_free(j);
}

TEST(depth_is_bounded)
{
    char buf[2 * (CM_JSON_MAX_DEPTH + 1) + 2];
    size_t n = 0;
    for (int i = 0; i < CM_JSON_MAX_DEPTH; i++)
        buf[n++] = '[';
    for (int i = 0; i < CM_JSON_MAX_DEPTH; i++)
        buf[n++] = ']';
    struct cm_json *j = cm_json_parse(buf, n, NULL, 0); /* err may be NULL */
    CHECK_MSG(j != NULL, "depth %d must be accepted", CM_JSON_MAX_DEPTH);
    cm_json_free(j);
    n = 0;
    for (int i = 0; i <= CM_JSON_MAX_DEPTH; i++)
        buf[n++] = '[';
    for (int i = 0; i <= CM_JSON_MAX_DEPTH; i++)
        buf[n++] = ']';
    char err[128] = "";
    CHECK_NULL(cm_json_parse(buf, n, err, sizeof(err)));
    CHECK(err[0] != '\0');
}

TEST(large_arrays_and_objects)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_raw(&b, "{", 1);
    for (int i = 0; i < 1000; i++)
        cm_jbuf_printf(&b, "%s\"k%d\":[%d,%d]", i ? "," : "", i, i, -i);
    cm_jbuf_raw(&b, "}", 1);
    CHECK(!b.failed);
    char err[64];
    struct cm_json *j = cm_json_parse(b.data, b.len, err, sizeof(err));
    CHECK_NOT_NULL(j);
    CHECK_UINT_EQ(j->len, 1000);
    CHECK(cm_json_get(j, "k999")->items[1]->number == -999);
    cm_json_free(j);
    cm_jbuf_fini(&b);
    CHECK_NULL(b.data);
}

TEST(writer_escapes)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_str(&b, "a\"b\\c\n\x01\x7f/\xc3\xa9", 11);
    CHECK_STR_EQ(b.data, "\"a\\\"b\\\\c\\u000a\\u0001\\u007f/\xc3\xa9\"");
    cm_jbuf_fini(&b);

    cm_jbuf_init(&b);
    cm_jbuf_cstr(&b, NULL);
    cm_jbuf_raw(&b, ",", 1);
    cm_jbuf_str(&b, "x\0y", 3);
    cm_jbuf_printf(&b, ",%d,%s", 42, "end");
    CHECK_STR_EQ(b.data, "\"\",\"x\\u0000y\",42,end");
    CHECK_UINT_EQ(b.len, strlen(b.data));
    cm_jbuf_fini(&b);
}

TEST(writer_output_parses_back)
{
    /* every byte value except raw bytes >= 0x80 (the writer passes UTF-8 through) */
    char all[127];
    for (int i = 0; i < 127; i++)
        all[i] = (char)(i + 1);
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_jbuf_str(&b, all, sizeof(all));
    char err[64];
    struct cm_json *j = cm_json_parse(b.data, b.len, err, sizeof(err));
    CHECK_MSG(j != NULL, "%s", err);
    CHECK_UINT_EQ(j->len, sizeof(all));
    CHECK_MEM_EQ(j->str, all, sizeof(all));
    cm_json_free(j);
    cm_jbuf_fini(&b);
}

TEST(writer_grows_past_initial_capacity)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    for (int i = 0; i < 10000; i++)
        cm_jbuf_raw(&b, "0123456789", 10);
    CHECK(!b.failed);
    CHECK_UINT_EQ(b.len, 100000);
    CHECK(b.data[b.len] == '\0');
    CHECK(memcmp(b.data + 99990, "0123456789", 10) == 0);
    cm_jbuf_fini(&b);
}

TEST(free_takes_null)
{
    cm_json_free(NULL);
}
