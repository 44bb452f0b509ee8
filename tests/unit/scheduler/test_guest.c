/* scheduler/agent/guest.c: the guest mode's configuration parsers (guest.conf and the kernel
 * command line). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "scheduler/agent/guest.h"
#include "tests/harness/test.h"

static int conf(struct agent_guest_conf *c, const char *text, const char **err)
{
    agent_guest_conf_init(c);
    *err = NULL;
    return agent_guest_parse_conf(c, text, strlen(text), err);
}

static int cmdline(struct agent_guest_conf *c, const char *text, const char **err)
{
    *err = NULL;
    return agent_guest_parse_cmdline(c, text, strlen(text), err);
}

TEST(conf_port_and_argv)
{
    struct agent_guest_conf c;
    const char *err;
    CHECK_INT_EQ(conf(&c, "# comment\nport=8080\n\narg=/bin/app\narg=--x y\narg=\n", &err), 0);
    CHECK_UINT_EQ(c.port, 8080);
    CHECK_INT_EQ(c.argc, 3);
    CHECK_STR_EQ(c.argv[0], "/bin/app");
    CHECK_STR_EQ(c.argv[1], "--x y");
    CHECK_STR_EQ(c.argv[2], "");
    CHECK_NULL(c.argv[3]);
    CHECK_STR_EQ(c.id, "guest");
    /* No final newline. */
    CHECK_INT_EQ(conf(&c, "arg=/bin/app\nport=1", &err), 0);
    CHECK_UINT_EQ(c.port, 1);
    CHECK_INT_EQ(c.argc, 1);
}

TEST(conf_refuses)
{
    struct agent_guest_conf c;
    const char *err;
    CHECK_INT_EQ(conf(&c, "port=8080\n", &err), -EINVAL);
    CHECK_STR_EQ(err, "no app (arg= lines)");
    CHECK_INT_EQ(conf(&c, "arg=/bin/app\n", &err), -EINVAL);
    CHECK_STR_EQ(err, "no port= line");
    CHECK_INT_EQ(conf(&c, "port=8080\narg=\n", &err), -EINVAL);
    CHECK_STR_EQ(err, "no app (arg= lines)");
    const char *bad_ports[] = {"port=0\n",   "port=65536\n", "port= 80\n", "port=-1\n",
                               "port=+80\n", "port=80x\n",   "port=\n"};
    for (size_t i = 0; i < sizeof(bad_ports) / sizeof(bad_ports[0]); i++) {
        CHECK_INT_EQ(conf(&c, bad_ports[i], &err), -EINVAL);
        CHECK_STR_EQ(err, "port: expected a number in 1..65535");
    }
    CHECK_INT_EQ(conf(&c, "port=80\nfoo=1\narg=x\n", &err), -EINVAL);
    CHECK_STR_EQ(err, "unknown key (expected port= or arg=)");
    char many[AGENT_GUEST_CONF_MAX];
    size_t n = (size_t)snprintf(many, sizeof(many), "port=1\n");
    for (int i = 0; i <= AGENT_GUEST_ARGS_MAX; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "arg=a\n");
    CHECK_INT_EQ(conf(&c, many, &err), -EINVAL);
    CHECK_STR_EQ(err, "too many arg lines");
    /* A NUL byte would cut an argument short: refused. */
    agent_guest_conf_init(&c);
    CHECK_INT_EQ(agent_guest_parse_conf(&c, "port=1\narg=a\0b\n", 14, &err), -EINVAL);
    CHECK_STR_EQ(err, "NUL byte in configuration");
    /* Longer than the limit. */
    static char big[AGENT_GUEST_CONF_MAX + 1];
    memset(big, '#', sizeof(big));
    agent_guest_conf_init(&c);
    CHECK_INT_EQ(agent_guest_parse_conf(&c, big, sizeof(big), &err), -EINVAL);
    CHECK_STR_EQ(err, "configuration too long");
}

TEST(cmdline_id)
{
    struct agent_guest_conf c;
    const char *err;
    agent_guest_conf_init(&c);
    CHECK_INT_EQ(cmdline(&c, "console=hvc0 quiet panic=-1\n", &err), 0);
    CHECK_STR_EQ(c.id, "guest");
    CHECK_INT_EQ(cmdline(&c, "console=hvc0 berth.id=i-0a.b_c quiet\n", &err), 0);
    CHECK_STR_EQ(c.id, "i-0a.b_c");
    CHECK_INT_EQ(cmdline(&c, "xberth.id=nope berth.idx=nope\n", &err), 0);
    CHECK_STR_EQ(c.id, "i-0a.b_c");
}

TEST(cmdline_refuses)
{
    struct agent_guest_conf c;
    const char *err;
    agent_guest_conf_init(&c);
    CHECK_INT_EQ(cmdline(&c, "berth.id=", &err), -EINVAL);
    CHECK_STR_EQ(err, "berth.id: 1 to 64 characters");
    CHECK_INT_EQ(cmdline(&c, "berth.id=a/b", &err), -EINVAL);
    CHECK_STR_EQ(err, "berth.id: only A-Z a-z 0-9 . _ -");
    char id[100] = "berth.id=";
    memset(id + 9, 'a', 65);
    CHECK_INT_EQ(cmdline(&c, id, &err), -EINVAL);
    CHECK_STR_EQ(err, "berth.id: 1 to 64 characters");
    id[9 + 64] = '\0';
    CHECK_INT_EQ(cmdline(&c, id, &err), 0);
    CHECK_UINT_EQ(strlen(c.id), 64);
}
