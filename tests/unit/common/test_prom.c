/* Unit tests of common/prom.c: the pieces of the Prometheus text format. */
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "common/prom.h"
#include "tests/harness/test.h"

static char text[256];

static const char *label(const char *s)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_prom_label_value(&b, s);
    cm_jbuf_raw(&b, "", 1);
    CHECK(!b.failed && b.len <= sizeof(text));
    memcpy(text, b.data, b.len);
    cm_jbuf_fini(&b);
    return text;
}

static const char *scaled(uint64_t v, uint64_t scale)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_prom_scaled(&b, v, scale);
    cm_jbuf_raw(&b, "", 1);
    CHECK(!b.failed && b.len <= sizeof(text));
    memcpy(text, b.data, b.len);
    cm_jbuf_fini(&b);
    return text;
}

TEST(label_value_escapes_backslash_quote_and_line_feed)
{
    CHECK_STR_EQ(label("acme"), "\"acme\"");
    CHECK_STR_EQ(label(""), "\"\"");
    CHECK_STR_EQ(label("a\\b"), "\"a\\\\b\"");
    CHECK_STR_EQ(label("say \"hi\""), "\"say \\\"hi\\\"\"");
    CHECK_STR_EQ(label("two\nlines\n"), "\"two\\nlines\\n\"");
    CHECK_STR_EQ(label("\\\"\n"), "\"\\\\\\\"\\n\"");
    /* anything else is as it is: tab, carriage return, UTF-8, braces, commas */
    CHECK_STR_EQ(label("t\tr\r\xc3\xa9{a=\"b\",c}"), "\"t\tr\r\xc3\xa9{a=\\\"b\\\",c}\"");
}

TEST(label_value_cannot_end_the_sample)
{
    /* A value that tries to close the label set and start a sample of its own stays one
     * quoted value: no unescaped quote or line feed gets out. */
    const char *s = label("x\"} 1\nberth_fake 1\n#");
    CHECK_STR_EQ(s, "\"x\\\"} 1\\nberth_fake 1\\n#\"");
    CHECK(!strchr(s, '\n'));
    for (const char *p = s + 1; *p && p[1]; p++)
        CHECK_MSG(*p != '"' || p[-1] == '\\', "an unescaped quote inside: %s", s);
}

TEST(scaled_numbers_are_exact_decimals)
{
    CHECK_STR_EQ(scaled(0, 1000), "0");
    CHECK_STR_EQ(scaled(7, 1), "7");
    CHECK_STR_EQ(scaled(1500, 1000), "1.5");
    CHECK_STR_EQ(scaled(1001, 1000), "1.001");
    CHECK_STR_EQ(scaled(5, 1000), "0.005");
    CHECK_STR_EQ(scaled(250, 1000000), "0.00025");
    CHECK_STR_EQ(scaled(3000000, 1000000), "3");
    CHECK_STR_EQ(scaled(UINT64_MAX, 1000), "18446744073709551.615");
    CHECK_STR_EQ(scaled(UINT64_MAX, 1), "18446744073709551615");
    CHECK_STR_EQ(scaled(1, 1000000000000000000ull), "0.000000000000000001");
}

TEST(family_has_help_and_type)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    cm_prom_family(&b, "berth_x_total", "counter", "Things.");
    cm_jbuf_raw(&b, "", 1);
    CHECK_STR_EQ(b.data, "# HELP berth_x_total Things.\n# TYPE berth_x_total counter\n");
    cm_jbuf_fini(&b);
}
