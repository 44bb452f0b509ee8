/* scheduler/agent/guest.c: the guest mode's configuration parsers (guest.conf and the kernel
 * command line). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "scheduler/agent/guest.h"
#include "tests/harness/test.h"

#define UNKNOWN                                                                                    \
    "unknown key (expected port=, arg=, env=, relay_port=, ports_port=, hold_ms=, uid= or " \
    "workspace_size=)"

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
    CHECK_INT_EQ(conf(&c, "arg=/bin/app\nport=7", &err), 0);
    CHECK_UINT_EQ(c.port, 7);
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
    CHECK_STR_EQ(err, UNKNOWN);
    char many[AGENT_GUEST_CONF_MAX];
    size_t n = (size_t)snprintf(many, sizeof(many), "port=7\n");
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

TEST(conf_defaults)
{
    struct agent_guest_conf c;
    const char *err;
    CHECK_INT_EQ(conf(&c, "port=8080\narg=/bin/app\n", &err), 0);
    CHECK_UINT_EQ(c.relay_port, 1);
    CHECK_UINT_EQ(c.ports_port, 2);
    CHECK_UINT_EQ(c.hold_ms, 5000);
    CHECK_UINT_EQ(c.uid, 0);
    CHECK(c.workspace_size == 64ull << 20);
    CHECK_INT_EQ(c.envc, 0);
    CHECK_NULL(c.env[0]);
}

TEST(conf_guest_keys)
{
    struct agent_guest_conf c;
    const char *err;
    CHECK_INT_EQ(conf(&c,
                      "port=8080\narg=/bin/app\nenv=A=1\nenv=_b9=x=y z\nenv=EMPTY=\n"
                      "relay_port=9\nports_port=10\nhold_ms=86400000\nuid=1000\n"
                      "workspace_size=1048576\n",
                      &err),
                 0);
    CHECK_INT_EQ(c.envc, 3);
    CHECK_STR_EQ(c.env[0], "A=1");
    CHECK_STR_EQ(c.env[1], "_b9=x=y z");
    CHECK_STR_EQ(c.env[2], "EMPTY=");
    CHECK_NULL(c.env[3]);
    CHECK_UINT_EQ(c.relay_port, 9);
    CHECK_UINT_EQ(c.ports_port, 10);
    CHECK_UINT_EQ(c.hold_ms, 86400000);
    CHECK_UINT_EQ(c.uid, 1000);
    CHECK(c.workspace_size == 1048576);
    /* The bounds themselves. */
    CHECK_INT_EQ(conf(&c, "port=3\narg=a\nrelay_port=65535\nhold_ms=1\nuid=65534\n"
                          "workspace_size=68719476736\n",
                      &err),
                 0);
    CHECK_UINT_EQ(c.relay_port, 65535);
    CHECK_UINT_EQ(c.uid, 65534);
    CHECK(c.workspace_size == 64ull << 30);
    /* PORT-like names that are not PORT are fine. */
    CHECK_INT_EQ(conf(&c, "port=3\narg=a\nenv=PORTS=1\nenv=BERTH_INSTANCE=x\n", &err), 0);
}

TEST(conf_refuses_guest_keys)
{
    struct agent_guest_conf c;
    const char *err;
    static const struct {
        const char *line, *err;
    } bad[] = {
        {"relay_port=0", "relay_port: expected a number in 1..65535"},
        {"relay_port=65536", "relay_port: expected a number in 1..65535"},
        {"relay_port=", "relay_port: expected a number in 1..65535"},
        {"relay_port=1x", "relay_port: expected a number in 1..65535"},
        {"ports_port=0", "ports_port: expected a number in 1..65535"},
        {"ports_port=65536", "ports_port: expected a number in 1..65535"},
        {"ports_port=1", "ports_port: must differ from port and relay_port"},
        {"ports_port=7", "ports_port: must differ from port and relay_port"},
        {"hold_ms=0", "hold_ms: expected a number in 1..86400000"},
        {"hold_ms=86400001", "hold_ms: expected a number in 1..86400000"},
        {"hold_ms=-5", "hold_ms: expected a number in 1..86400000"},
        {"uid=65535", "uid: expected a number in 0..65534"},
        {"uid= 1", "uid: expected a number in 0..65534"},
        {"uid=+1", "uid: expected a number in 0..65534"},
        {"uid=99999999999999999999999", "uid: expected a number in 0..65534"},
        {"workspace_size=1048575", "workspace_size: expected bytes in 1048576..68719476736"},
        {"workspace_size=68719476737", "workspace_size: expected bytes in 1048576..68719476736"},
        {"workspace_size=64M", "workspace_size: expected bytes in 1048576..68719476736"},
        {"workspace_size=18446744073709551616",
         "workspace_size: expected bytes in 1048576..68719476736"},
        {"env=", "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128"},
        {"env=A", "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128"},
        {"env==1", "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128"},
        {"env=1A=1", "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128"},
        {"env=A-B=1", "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128"},
        {"env=A B=1", "env: expected NAME=VALUE, NAME of [A-Za-z_][A-Za-z0-9_]*, at most 128"},
        {"env=PORT=1", "env: BERTH_INSTANCE_ID and PORT are set by the agent"},
        {"env=BERTH_INSTANCE_ID=x", "env: BERTH_INSTANCE_ID and PORT are set by the agent"},
        {"env=A=1\nenv=A=2", "env: NAME given twice"},
        {"port=3", "a key given twice (only arg= and env= repeat)"},
        {"uid=1\nuid=1", "a key given twice (only arg= and env= repeat)"},
        {"relay_port=7", "relay_port: must differ from port"},
        {"Port=2", UNKNOWN},
        {" port=2", UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "port=7\narg=/bin/app\n%s\n", bad[i].line);
        CHECK_INT_EQ(conf(&c, text, &err), -EINVAL);
        CHECK_MSG(err && strcmp(err, bad[i].err) == 0, "%s: got %s", bad[i].line,
                  err ? err : "(null)");
    }
    /* The longest NAME, and one more. */
    char text[512];
    char name[AGENT_GUEST_ENV_NAME_MAX + 2];
    memset(name, 'N', sizeof(name));
    name[AGENT_GUEST_ENV_NAME_MAX] = '\0';
    snprintf(text, sizeof(text), "port=7\narg=a\nenv=%s=v\n", name);
    CHECK_INT_EQ(conf(&c, text, &err), 0);
    name[AGENT_GUEST_ENV_NAME_MAX] = 'N';
    name[AGENT_GUEST_ENV_NAME_MAX + 1] = '\0';
    snprintf(text, sizeof(text), "port=7\narg=a\nenv=%s=v\n", name);
    CHECK_INT_EQ(conf(&c, text, &err), -EINVAL);
    /* At most AGENT_GUEST_ENV_MAX env lines. */
    char many[AGENT_GUEST_CONF_MAX];
    size_t n = (size_t)snprintf(many, sizeof(many), "port=7\narg=a\n");
    for (int i = 0; i < AGENT_GUEST_ENV_MAX; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "env=V%d=1\n", i);
    CHECK_INT_EQ(conf(&c, many, &err), 0);
    CHECK_INT_EQ(c.envc, AGENT_GUEST_ENV_MAX);
    snprintf(many + n, sizeof(many) - n, "env=W=1\n");
    CHECK_INT_EQ(conf(&c, many, &err), -EINVAL);
    CHECK_STR_EQ(err, "too many env lines");
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
