/* scheduler/agent/proto.c: berth-agent's control line protocol and its bounded line splitter. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "scheduler/agent/proto.h"
#include "tests/harness/test.h"

static int parse(const char *line, struct agent_cmd *cmd, const char **err)
{
    *err = NULL;
    return agent_proto_parse(line, strlen(line), cmd, err);
}

#define USAGE "usage: BIND <session> [clock=S.N] [seed=HEX] [id=ID] [data=1] [exec_key=HEX]"

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
    EXPECT_BAD(line, "usage: BIND <session> [clock=S.N] [seed=HEX] [id=ID] [data=1] [exec_key=HEX]");
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
    EXPECT_BAD("BIND", USAGE);
    EXPECT_BAD("BIND ", USAGE);
    EXPECT_BAD("BIND a b", "BIND: expected clock=, seed=, id=, data= or exec_key= after the session");
    EXPECT_BAD("BIND  a", USAGE);
    EXPECT_BAD("TERM now", "this command takes no argument");
    EXPECT_BAD("BIND a\tb", "control or non-ASCII byte in line");
    EXPECT_BAD("BIND \xc3\xa9", "control or non-ASCII byte in line");
    struct agent_cmd c;
    const char *err;
    CHECK_INT_EQ(agent_proto_parse("PING\0x", 6, &c, &err), -EINVAL);
    CHECK_STR_EQ(err, "control or non-ASCII byte in line");
}

TEST(term)
{
    struct agent_cmd c;
    const char *err;
    CHECK_INT_EQ(parse("TERM", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_TERM);
    CHECK_INT_EQ(parse("TERM\r", &c, &err), 0);
}

TEST(pause_resume)
{
    struct agent_cmd c;
    const char *err;
    CHECK_INT_EQ(parse("PAUSE 0", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_PAUSE);
    CHECK_INT_EQ((long long)c.quiet_ms, 0);
    CHECK_INT_EQ(parse("PAUSE 86400000", &c, &err), 0);
    CHECK_INT_EQ((long long)c.quiet_ms, 86400000);
    CHECK_INT_EQ(parse("PAUSE 1500\r", &c, &err), 0);
    CHECK_INT_EQ((long long)c.quiet_ms, 1500);
    CHECK_INT_EQ(parse("RESUME", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_RESUME);
    const char *bad[] = {"PAUSE",          "PAUSE ",           "PAUSE x",   "PAUSE 1x", "PAUSE -1",
                         "PAUSE 86400001", "PAUSE 1000000000", "PAUSE 1 2", "PAUSE  1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT_EQ(parse(bad[i], &c, &err), -EINVAL);
        CHECK_STR_EQ(err, "usage: PAUSE <quiet_ms> (0..86400000)");
    }
    CHECK_INT_EQ(parse("RESUME now", &c, &err), -EINVAL);
    CHECK_STR_EQ(err, "this command takes no argument");
}

TEST(sync_fences_a_reply)
{
    struct agent_cmd c;
    const char *err;
    CHECK_INT_EQ(parse("SYNC 1a2B3c4d5e6f7a8b", &c, &err), 0);
    CHECK_INT_EQ(c.type, AGENT_CMD_SYNC);
    CHECK_STR_EQ(c.arg, "1a2B3c4d5e6f7a8b");
    CHECK_INT_EQ(parse("SYNC 01234567890123456789012345678901", &c, &err), 0); /* 32 */
    const char *bad[] = {"SYNC", "SYNC ", "SYNC a-b", "SYNC a b", "SYNC  a",
                         "SYNC 012345678901234567890123456789012"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_INT_EQ(parse(bad[i], &c, &err), -EINVAL);
        CHECK_STR_EQ(err, "usage: SYNC <token> (1-32 of [A-Za-z0-9])");
    }
}

#define SEED "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100"

TEST(bind_words)
{
    struct agent_cmd c;
    const char *err;
    /* The process driver's plain BIND: no words, nothing set. */
    CHECK_INT_EQ(parse("BIND s1", &c, &err), 0);
    CHECK_STR_EQ(c.arg, "s1");
    CHECK_INT_EQ(c.has_clock, 0);
    CHECK_INT_EQ(c.has_seed, 0);
    CHECK_INT_EQ(c.data, 0);
    CHECK_STR_EQ(c.id, "");
    CHECK_INT_EQ(parse("BIND s1 clock=1700000000.000000042 seed=" SEED " id=i-1.a_b data=1\r", &c,
                       &err),
                 0);
    CHECK_STR_EQ(c.arg, "s1");
    CHECK_INT_EQ(c.has_clock, 1);
    CHECK(c.clock_sec == 1700000000LL);
    CHECK(c.clock_nsec == 42);
    CHECK_INT_EQ(c.has_seed, 1);
    CHECK_UINT_EQ(c.seed[0], 0x00);
    CHECK_UINT_EQ(c.seed[1], 0x11);
    CHECK_UINT_EQ(c.seed[15], 0xff);
    CHECK_UINT_EQ(c.seed[16], 0xff);
    CHECK_UINT_EQ(c.seed[31], 0x00);
    CHECK_STR_EQ(c.id, "i-1.a_b");
    CHECK_INT_EQ(c.data, 1);
    /* Any order; the clock's bounds. */
    CHECK_INT_EQ(parse("BIND s2 data=1 id=x clock=0.999999999", &c, &err), 0);
    CHECK(c.clock_sec == 0 && c.clock_nsec == 999999999);
    CHECK_INT_EQ(c.has_seed, 0);
    CHECK_INT_EQ(parse("BIND s2 clock=253402300799.000000000", &c, &err), 0);
    CHECK(c.clock_sec == AGENT_CLOCK_SEC_MAX);
    /* The longest id. */
    char line[AGENT_LINE_MAX];
    char id[AGENT_ID_MAX + 2];
    memset(id, 'a', sizeof(id));
    id[AGENT_ID_MAX] = '\0';
    snprintf(line, sizeof(line), "BIND s id=%s", id);
    CHECK_INT_EQ(parse(line, &c, &err), 0);
    CHECK_UINT_EQ(strlen(c.id), AGENT_ID_MAX);
    id[AGENT_ID_MAX] = 'a';
    id[AGENT_ID_MAX + 1] = '\0';
    snprintf(line, sizeof(line), "BIND s id=%s", id);
    EXPECT_BAD(line, "BIND: id= expects 1 to 64 of A-Z a-z 0-9 . _ -");
}

#define KEY "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

TEST(bind_takes_an_exec_key)
{
    struct agent_cmd c;
    const char *err = NULL;
    CHECK_INT_EQ(parse("BIND s id=x exec_key=" KEY, &c, &err), 0);
    CHECK_STR_EQ(c.exec_key, KEY);
    CHECK_INT_EQ(parse("BIND s", &c, &err), 0);
    CHECK_STR_EQ(c.exec_key, "");
}

TEST(bind_refuses_bad_words)
{
#define CLOCK_BAD "BIND: clock= expects <seconds>.<9 digits of nanoseconds>"
#define SEED_BAD "BIND: seed= expects 64 hex digits"
#define WORD_BAD "BIND: expected clock=, seed=, id=, data= or exec_key= after the session"
    EXPECT_BAD("BIND s clock=", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1.", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=.000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1.00000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1.0000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=-1.000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=+1.000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1.00000000x", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=253402300800.000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=9999999999999.000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1e9.000000000", CLOCK_BAD);
    EXPECT_BAD("BIND s clock=1.000000000 clock=2.000000000", "BIND: clock= given twice");
    EXPECT_BAD("BIND s seed=", SEED_BAD);
    EXPECT_BAD("BIND s seed=" SEED "0", SEED_BAD);
    EXPECT_BAD("BIND s seed=0112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100",
               SEED_BAD);
    EXPECT_BAD("BIND s seed=g0112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100",
               SEED_BAD);
    EXPECT_BAD("BIND s seed=" SEED " seed=" SEED, "BIND: seed= given twice");
    EXPECT_BAD("BIND s id=", "BIND: id= expects 1 to 64 of A-Z a-z 0-9 . _ -");
    EXPECT_BAD("BIND s id=a/b", "BIND: id= expects 1 to 64 of A-Z a-z 0-9 . _ -");
    EXPECT_BAD("BIND s id=a id=b", "BIND: id= given twice");
    EXPECT_BAD("BIND s data=0", "BIND: data= expects 1");
    EXPECT_BAD("BIND s data=", "BIND: data= expects 1");
    EXPECT_BAD("BIND s data=11", "BIND: data= expects 1");
    EXPECT_BAD("BIND s data=1 data=1", "BIND: data= given twice");
    EXPECT_BAD("BIND s data", WORD_BAD);
    EXPECT_BAD("BIND s foo=1", WORD_BAD);
    EXPECT_BAD("BIND s =1", WORD_BAD);
    EXPECT_BAD("BIND s data=1 ", WORD_BAD);
    EXPECT_BAD("BIND s  data=1", WORD_BAD);
    EXPECT_BAD("BIND s exec_key=", "BIND: exec_key= expects 64 lower-case hex digits");
    EXPECT_BAD("BIND s exec_key=" SEED, "BIND: exec_key= expects 64 lower-case hex digits");
    EXPECT_BAD("BIND s exec_key=" KEY "0", "BIND: exec_key= expects 64 lower-case hex digits");
    EXPECT_BAD("BIND s exec_key=" KEY " exec_key=" KEY, "BIND: exec_key= given twice");
    /* One bad word refuses the whole line, whatever came before it. */
    EXPECT_BAD("BIND s clock=1.000000000 seed=" SEED " id=ok data=1 x=y", WORD_BAD);
    EXPECT_BAD("BIND s seed=" SEED " clock=1.00000000", CLOCK_BAD);
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

TEST(exec_frames_and_spec)
{
    char buf[64];
    cm_frame_header(buf, 'A', 3);
    memcpy(buf + CM_FRAME_HDR, "abc", 3);
    char type;
    const char *p;
    size_t n;
    CHECK_INT_EQ(cm_frame_next(buf, 4, &type, &p, &n), 0); /* a header needs 5 bytes */
    CHECK_INT_EQ(cm_frame_next(buf, 7, &type, &p, &n), 0); /* and its payload */
    CHECK_INT_EQ(cm_frame_next(buf, 8, &type, &p, &n), 8);
    CHECK_INT_EQ(type, 'A');
    CHECK_INT_EQ((int)n, 3);
    CHECK(p == buf + CM_FRAME_HDR);
    cm_frame_header(buf, 'I', CM_FRAME_MAX + 1);
    CHECK_INT_EQ(cm_frame_next(buf, 5, &type, &p, &n), -EPROTO);

    struct agent_exec_spec s;
    memset(&s, 0, sizeof(s));
    const char *err = NULL;
    CHECK_INT_EQ(agent_exec_spec_add(&s, 'A', "/bin/sh", 7, &err), 0);
    CHECK_INT_EQ(agent_exec_spec_add(&s, 'E', "A_1=x=y", 7, &err), 0);
    CHECK_INT_EQ(agent_exec_spec_add(&s, 'D', "/tmp", 4, &err), 0);
    CHECK_INT_EQ(agent_exec_spec_add(&s, 'T', "1500", 4, &err), 0);
    CHECK_STR_EQ(s.argv[0], "/bin/sh");
    CHECK_NULL(s.argv[1]);
    CHECK_STR_EQ(s.env[0], "A_1=x=y");
    CHECK_STR_EQ(s.cwd, "/tmp");
    CHECK_INT_EQ((long long)s.timeout_ms, 1500);
    static const struct {
        char type;
        const char *v;
        size_t n;
    } bad[] = {{'A', "", 0},      {'A', "a\0b", 3}, {'E', "1A=x", 4}, {'E', "noeq", 4},
               {'E', "=x", 2},    {'D', "/x", 2},   {'T', "0", 1},     {'T', "86400001", 8},
               {'T', "12a", 3},   {'D', "rel", 3},  {'Q', "x", 1}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        CHECK_MSG(agent_exec_spec_add(&s, bad[i].type, bad[i].v, bad[i].n, &err) == -EINVAL,
                  "frame %zu", i);
        CHECK_NOT_NULL(err);
    }
    for (int i = 1; i < AGENT_EXEC_ARGS_MAX; i++)
        CHECK_INT_EQ(agent_exec_spec_add(&s, 'A', "x", 1, &err), 0);
    CHECK_INT_EQ(agent_exec_spec_add(&s, 'A', "x", 1, &err), -EINVAL); /* the 257th */
    CHECK_INT_EQ((int)s.argc, AGENT_EXEC_ARGS_MAX);
    agent_exec_spec_free(&s);
    CHECK_INT_EQ((int)s.argc, 0);
}

TEST(file_paths)
{
    const char *root, *err;
    char rest[64];
    int dir;
    CHECK_INT_EQ(agent_file_path("data/a/b.txt", 12, &root, rest, &dir, &err), 0);
    CHECK_STR_EQ(root, "data");
    CHECK_STR_EQ(rest, "a/b.txt");
    CHECK_INT_EQ(dir, 0);
    CHECK_INT_EQ(agent_file_path("workspace/", 10, &root, rest, &dir, &err), 0);
    CHECK_STR_EQ(root, "workspace");
    CHECK_STR_EQ(rest, "");
    CHECK_INT_EQ(dir, 1);
    CHECK_INT_EQ(agent_file_path("data", 4, &root, rest, &dir, &err), 0);
    CHECK_STR_EQ(rest, "");
    CHECK_INT_EQ(agent_file_path("data/x/", 7, &root, rest, &dir, &err), 0);
    CHECK_STR_EQ(rest, "x");
    CHECK_INT_EQ(dir, 1);
    static const char *const bad[] = {"",           "/data/x",    "etc/passwd", "datax/y",
                                      "data/../x",  "data/./x",   "data//x",    "data/x/..",
                                      "workspaces", "data/x//",   "tmp",        "data/.."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        CHECK_MSG(agent_file_path(bad[i], strlen(bad[i]), &root, rest, &dir, &err) == -EINVAL,
                  "%s", bad[i]);
        CHECK_NOT_NULL(err);
        CHECK(strncmp(err, "bad_path:", 9) == 0);
    }
    CHECK_INT_EQ(agent_file_path("data/a\0b", 8, &root, rest, &dir, &err), -EINVAL);
}
