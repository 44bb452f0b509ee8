/* scheduler/agent/proto.c: berth-agent's control line protocol and its bounded line splitter. */
#include <errno.h>
#include <string.h>

#include "scheduler/agent/proto.h"
#include "tests/harness/test.h"

static int parse(const char *line, struct agent_cmd *cmd, const char **err)
{
    *err = NULL;
    return agent_proto_parse(line, strlen(line), cmd, err);
}

#define EXPECT_BAD(line, why)                                                                      \
    do {                                                                                           \
        struct agent_cmd c_;                                                                       \
        const char *e_;                                                                            \
        CHECK_INT_EQ(parse(line, &c_, &e_), -EINVAL);                                              \
        CHECK_STR_EQ(e_, why);                                                                     \
    } while (0)

TEST(commands)
{
    struct agent_cmd c;
    const char *err;
    CHECK_INT_EQ(parse("PING", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_PING);
    CHECK_INT_EQ(parse("STATUS", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_STATUS);
    CHECK_INT_EQ(parse("BIND 0123456789abcdef0123456789abcdef", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_BIND);
    CHECK_STR_EQ(c.arg, "0123456789abcdef0123456789abcdef");
    /* A CRLF line ending is accepted. */
    CHECK_INT_EQ(parse("PING\r", &c, &err), 0);
    CHECK_INT_EQ(parse("BIND s-1:x\r", &c, &err), 0);
    CHECK_STR_EQ(c.arg, "s-1:x");
}

TEST(bind_argument_limits)
{
    struct agent_cmd c;
    const char *err;
    char line[8 + AGENT_SESSION_MAX + 2];
    memcpy(line, "BIND ", 5);
    memset(line + 5, 'a', AGENT_SESSION_MAX);
    line[5 + AGENT_SESSION_MAX] = '\0';
    CHECK_INT_EQ(parse(line, &c, &err), 0);
    CHECK_UINT_EQ(strlen(c.arg), AGENT_SESSION_MAX);
    line[5 + AGENT_SESSION_MAX] = 'a';
    line[6 + AGENT_SESSION_MAX] = '\0';
    EXPECT_BAD(line, "usage: BIND <session>");
}

TEST(bad_lines)
{
    EXPECT_BAD("", "empty line");
    EXPECT_BAD("\r", "empty line");
    EXPECT_BAD("ping", "unknown command");
    EXPECT_BAD("HELLO", "unknown command");
    EXPECT_BAD("PINGX", "unknown command");
    EXPECT_BAD("PING now", "this command takes no argument");
    EXPECT_BAD("STATUS ", "this command takes no argument");
    EXPECT_BAD("BIND", "usage: BIND <session>");
    EXPECT_BAD("BIND ", "usage: BIND <session>");
    EXPECT_BAD("BIND a b", "usage: BIND <session>");
    EXPECT_BAD("BIND  a", "usage: BIND <session>");
    EXPECT_BAD("BIND a\tb", "control or non-ASCII byte in line");
    EXPECT_BAD("BIND \xc3\xa9", "control or non-ASCII byte in line");
    struct agent_cmd c;
    const char *err;
    CHECK_INT_EQ(agent_proto_parse("PING\0x", 6, &c, &err), -EINVAL);
    CHECK_STR_EQ(err, "control or non-ASCII byte in line");
}

TEST(linebuf_splits_and_joins)
{
    struct agent_linebuf lb;
    agent_linebuf_reset(&lb);
    int st;
    const char *in = "PI";
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, in, 2, &st), 2);
    CHECK_INT_EQ(st, 0);
    in = "NG\nSTATUS\nBI";
    size_t n = agent_linebuf_feed(&lb, in, strlen(in), &st);
    CHECK_UINT_EQ(n, 3);
    CHECK_INT_EQ(st, 1);
    CHECK_STR_EQ(lb.buf, "PING");
    CHECK_UINT_EQ(lb.len, 4);
    agent_linebuf_reset(&lb);
    size_t m = agent_linebuf_feed(&lb, in + n, strlen(in) - n, &st);
    CHECK_UINT_EQ(m, 7);
    CHECK_INT_EQ(st, 1);
    CHECK_STR_EQ(lb.buf, "STATUS");
    agent_linebuf_reset(&lb);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, in + n + m, 2, &st), 2);
    CHECK_INT_EQ(st, 0);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, "ND x\n", 5, &st), 5);
    CHECK_INT_EQ(st, 1);
    CHECK_STR_EQ(lb.buf, "BIND x");
}

TEST(linebuf_refuses_long_lines_then_recovers)
{
    struct agent_linebuf lb;
    agent_linebuf_reset(&lb);
    static char big[AGENT_LINE_MAX + 100];
    memset(big, 'x', sizeof(big));
    int st;
    /* Fed in pieces: the limit holds across calls. */
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, big, 300, &st), 300);
    CHECK_INT_EQ(st, 0);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, big, sizeof(big), &st), sizeof(big));
    CHECK_INT_EQ(st, 0);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, "yy\nPING\n", 8, &st), 3);
    CHECK_INT_EQ(st, -E2BIG);
    agent_linebuf_reset(&lb);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, "PING\n", 5, &st), 5);
    CHECK_INT_EQ(st, 1);
    CHECK_STR_EQ(lb.buf, "PING");
    /* Exactly AGENT_LINE_MAX bytes is still a line. */
    agent_linebuf_reset(&lb);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, big, AGENT_LINE_MAX, &st), AGENT_LINE_MAX);
    CHECK_UINT_EQ(agent_linebuf_feed(&lb, "\n", 1, &st), 1);
    CHECK_INT_EQ(st, 1);
    CHECK_UINT_EQ(lb.len, AGENT_LINE_MAX);
}
