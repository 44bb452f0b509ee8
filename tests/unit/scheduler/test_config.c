/* scheduler/config.c: the `scheduler:` section. Defaults, value syntax, relative paths made
 * absolute, and errors that read "file:line:col: scheduler.key: message". */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/yaml.h"
#include "scheduler/config.h"
#include "tests/harness/test.h"

#define SECRET "0123456789abcdef0123456789abcdef"

/* Parses <yaml> (a whole document holding a `scheduler:` key, or none) as is. */
static int parse_as_is(const char *yaml, struct sch_config *c, char *err, size_t errlen)
{
    char perr[256];
    struct cm_ynode *root = cm_yaml_parse(yaml, strlen(yaml), perr, sizeof(perr));
    if (!root)
        test_fail(__FILE__, __LINE__, "test YAML does not parse: %s", perr);
    err[0] = '\0';
    int rc = sch_config_parse(c, cm_ynode_get(root, "scheduler"), "b.yaml", err, errlen);
    cm_ynode_free(root);
    return rc;
}

/* Parses <yaml> with a valid API secret added unless it names one itself (the secret is
 * required, and most tests are about other keys): appended as the last key of a block
 * `scheduler:` section (so the positions of the test's own lines stay put), or as a section
 * of its own when there is none. A flow-style section is left alone. */
static int parse(const char *yaml, struct sch_config *c, char *err, size_t errlen)
{
    if (strstr(yaml, "api_secret") || strstr(yaml, "scheduler: "))
        return parse_as_is(yaml, c, err, errlen);
    char doc[4096];
    snprintf(doc, sizeof(doc), "%s%s  api_secret: " SECRET "\n", yaml,
             strstr(yaml, "scheduler:\n") ? "" : "scheduler:\n");
    return parse_as_is(doc, c, err, errlen);
}

#define EXPECT_ERROR(yaml, want) expect_error(__FILE__, __LINE__, yaml, want)
static void expect_error(const char *file, int line, const char *yaml, const char *want)
{
    struct sch_config c;
    char err[1024];
    if (parse(yaml, &c, err, sizeof(err)) == 0) {
        sch_config_fini(&c);
        test_fail(file, line, "accepted, wanted %s", want);
    }
    if (!test_contains(err, want))
        test_fail(file, line, "error\n#   got:  %s\n#   want: ...%s...", err, want);
}

TEST(defaults)
{
    struct sch_config c;
    char err[1024];
    CHECK_INT_EQ(parse("log: {level: info}\n", &c, err, sizeof(err)), 0);
    char host[256];
    CHECK_INT_EQ(gethostname(host, sizeof(host)), 0);
    host[strcspn(host, ".")] = '\0';
    CHECK_STR_EQ(c.host_id, host);
    CHECK_STR_EQ(c.api_host, "127.0.0.1");
    CHECK_UINT_EQ(c.api_port, 9191);
    CHECK_STR_EQ(c.run_dir, "/var/lib/berth/run");
    CHECK_STR_EQ(c.storage_root, "/var/lib/berth/data");
    CHECK_UINT_EQ(c.capacity, 64);
    CHECK_UINT_EQ(c.pool_max_starting, 8);
    CHECK_UINT_EQ(c.heartbeat, 1000000);
    CHECK_UINT_EQ(c.reap_interval, 1000000);
    CHECK_UINT_EQ(c.bind_wait, 5000000);
    CHECK_UINT_EQ(c.destroy_grace, 2000000);
    CHECK_STR_EQ(c.cgroup_parent, "berth");
    CHECK_NULL(c.ro_binds);
    CHECK_UINT_EQ(c.console_max, 1u << 20);
    CHECK_UINT_EQ(c.relay_buffer, 64u << 10);
    CHECK_UINT_EQ(c.relay_max_conns, 1024);
    CHECK_UINT_EQ(c.api_max_body, 64u << 10);
    CHECK_UINT_EQ(c.api_max_pending, 256);
    CHECK_UINT_EQ(c.uid_base, 1000000000u);
    CHECK_INT_EQ(c.insecure, 0);
    CHECK_UINT_EQ(c.reserve_memory, 512u << 20);
    CHECK_UINT_EQ(c.reserve_cpu_millis, 500);
    CHECK_STR_EQ(c.api_secret, SECRET);
    /* The agent defaults to the directory of the running executable. */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    CHECK(n > 0);
    exe[n] = '\0';
    *strrchr(exe, '/') = '\0';
    strcat(exe, "/berth-agent");
    CHECK_STR_EQ(c.agent_path, exe);
    /* The microvm driver: its image next to the agent, in guest/. */
    *strrchr(exe, '/') = '\0';
    strcat(exe, "/guest");
    CHECK_STR_EQ(c.microvm.image_dir, exe);
    CHECK_STR_EQ(c.microvm.qemu, "/usr/bin/qemu-system-x86_64");
    CHECK_STR_EQ(c.microvm.accel, "auto");
    CHECK_UINT_EQ(c.microvm.probe_timeout, 10000000);
    CHECK_UINT_EQ(c.microvm.memory_overhead, 192u << 20);
    CHECK_UINT_EQ(c.microvm.default_memory, 256u << 20);
    CHECK_UINT_EQ(c.microvm.nice, 10);
    sch_config_fini(&c);
}

TEST(microvm)
{
    struct sch_config c;
    char err[1024];
    CHECK_INT_EQ(parse("scheduler:\n"
                       "  microvm:\n"
                       "    qemu: /opt/q/qemu\n"
                       "    image_dir: /srv/guest\n"
                       "    accel: tcg\n"
                       "    probe_timeout: 3s\n"
                       "    memory_overhead: 64MiB\n"
                       "    default_memory: 512MiB\n"
                       "    nice: 0\n",
                       &c, err, sizeof(err)),
                 0);
    CHECK_STR_EQ(c.microvm.qemu, "/opt/q/qemu");
    CHECK_STR_EQ(c.microvm.image_dir, "/srv/guest");
    CHECK_STR_EQ(c.microvm.accel, "tcg");
    CHECK_UINT_EQ(c.microvm.probe_timeout, 3000000);
    CHECK_UINT_EQ(c.microvm.memory_overhead, 64u << 20);
    CHECK_UINT_EQ(c.microvm.default_memory, 512u << 20);
    CHECK_UINT_EQ(c.microvm.nice, 0);
    sch_config_fini(&c);
    EXPECT_ERROR("scheduler:\n  microvm:\n    accel: hvf\n",
                 "scheduler.microvm.accel: must be auto, kvm or tcg, not 'hvf'");
    EXPECT_ERROR("scheduler:\n  microvm:\n    vcpus: 2\n", "scheduler.microvm.vcpus");
    EXPECT_ERROR("scheduler:\n  microvm:\n    probe_timeout: 10ms\n",
                 "scheduler.microvm.probe_timeout");
}

TEST(values)
{
    struct sch_config c;
    char err[1024];
    int rc = parse("scheduler:\n"
                   "  host_id: worker-1.a_b\n"
                   "  api_listen: 0.0.0.0:0\n"
                   "  run_dir: /run/b/\n"
                   "  storage_root: /srv/data\n"
                   "  capacity: 3\n"
                   "  pool_max_starting: 2\n"
                   "  heartbeat: 250ms\n"
                   "  reap_interval: 2s\n"
                   "  bind_wait: 0\n"
                   "  destroy_grace: 1m\n"
                   "  cgroup_parent: /berth/x\n"
                   "  agent_path: /opt/berth-agent\n"
                   "  ro_binds: [/opt/app, /srv/tools]\n"
                   "  console_max: 0\n"
                   "  relay_buffer: 1KiB\n"
                   "  relay_max_conns: 7\n"
                   "  api_max_body: 1MiB\n"
                   "  api_max_pending: 9\n",
                   &c, err, sizeof(err));
    CHECK_MSG(rc == 0, "%s", err);
    CHECK_STR_EQ(c.host_id, "worker-1.a_b");
    CHECK_STR_EQ(c.api_host, "0.0.0.0");
    CHECK_UINT_EQ(c.api_port, 0);
    CHECK_STR_EQ(c.run_dir, "/run/b"); /* trailing slash dropped */
    CHECK_STR_EQ(c.storage_root, "/srv/data");
    CHECK_UINT_EQ(c.capacity, 3);
    CHECK_UINT_EQ(c.pool_max_starting, 2);
    CHECK_UINT_EQ(c.heartbeat, 250000);
    CHECK_UINT_EQ(c.reap_interval, 2000000);
    CHECK_UINT_EQ(c.bind_wait, 0);
    CHECK_UINT_EQ(c.destroy_grace, 60000000);
    CHECK_STR_EQ(c.cgroup_parent, "/berth/x");
    CHECK_STR_EQ(c.agent_path, "/opt/berth-agent");
    CHECK_NOT_NULL(c.ro_binds);
    CHECK_STR_EQ(c.ro_binds[0], "/opt/app");
    CHECK_STR_EQ(c.ro_binds[1], "/srv/tools");
    CHECK_NULL(c.ro_binds[2]);
    CHECK_UINT_EQ(c.console_max, 0);
    CHECK_UINT_EQ(c.relay_buffer, 1024);
    CHECK_UINT_EQ(c.relay_max_conns, 7);
    CHECK_UINT_EQ(c.api_max_body, 1u << 20);
    CHECK_UINT_EQ(c.api_max_pending, 9);
    sch_config_fini(&c);
}

TEST(relative_paths_follow_the_working_directory)
{
    CHECK_INT_EQ(chdir(test_tmpdir()), 0);
    char cwd[PATH_MAX], want[PATH_MAX + 32];
    CHECK_NOT_NULL(getcwd(cwd, sizeof(cwd)));
    struct sch_config c;
    char err[1024];
    int rc = parse("scheduler:\n  run_dir: run\n  storage_root: ./state/data\n"
                   "  agent_path: bin/berth-agent\n",
                   &c, err, sizeof(err));
    CHECK_MSG(rc == 0, "%s", err);
    snprintf(want, sizeof(want), "%s/run", cwd);
    CHECK_STR_EQ(c.run_dir, want);
    snprintf(want, sizeof(want), "%s/state/data", cwd);
    CHECK_STR_EQ(c.storage_root, want);
    snprintf(want, sizeof(want), "%s/bin/berth-agent", cwd);
    CHECK_STR_EQ(c.agent_path, want);
    sch_config_fini(&c);
}

TEST(errors_name_file_position_and_key)
{
    EXPECT_ERROR("scheduler:\n  capacty: 3\n", "b.yaml:2:3: scheduler.capacty: unknown key");
    EXPECT_ERROR("scheduler:\n  capacity: 0\n", "b.yaml:2:13: scheduler.capacity:");
    EXPECT_ERROR("scheduler:\n  capacity: 10001\n", "scheduler.capacity:");
    EXPECT_ERROR("scheduler:\n  pool_max_starting: 0\n", "scheduler.pool_max_starting:");
    EXPECT_ERROR("scheduler:\n  pool_max_starting: 10001\n", "scheduler.pool_max_starting:");
    EXPECT_ERROR("scheduler:\n  heartbeat: 1ms\n", "b.yaml:2:14: scheduler.heartbeat:");
    EXPECT_ERROR("scheduler:\n  bind_wait: soon\n", "scheduler.bind_wait:");
    EXPECT_ERROR("scheduler:\n  relay_buffer: 10\n", "scheduler.relay_buffer:");
    EXPECT_ERROR("scheduler: [1, 2]\n", "b.yaml:1:12: scheduler: must be a mapping");
}

TEST(host_id_is_checked)
{
    EXPECT_ERROR("scheduler:\n  host_id: a/b\n",
                 "b.yaml:2:12: scheduler.host_id: must be 1-40 characters of [A-Za-z0-9._-]");
    EXPECT_ERROR("scheduler:\n  host_id: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 "scheduler.host_id: must be 1-40");
}

TEST(api_listen_is_checked)
{
    EXPECT_ERROR("scheduler:\n  api_listen: 9191\n",
                 "b.yaml:2:15: scheduler.api_listen: must be host:port");
    EXPECT_ERROR("scheduler:\n  api_listen: \"127.0.0.1:\"\n", "scheduler.api_listen: port");
    EXPECT_ERROR("scheduler:\n  api_listen: 127.0.0.1:65536\n",
                 "scheduler.api_listen: port must be 0..65535");
    EXPECT_ERROR("scheduler:\n  api_listen: 127.0.0.1:80x\n", "scheduler.api_listen: port");
}

TEST(run_dir_must_leave_room_for_socket_paths)
{
    char yaml[512];
    char longdir[101];
    memset(longdir, 'r', sizeof(longdir) - 1);
    longdir[sizeof(longdir) - 1] = '\0';
    snprintf(yaml, sizeof(yaml), "scheduler:\n  run_dir: /%s\n", longdir);
    EXPECT_ERROR(yaml, "scheduler.run_dir: too long: {run_dir}/{id}/sock/app.sock must fit a "
                       "unix socket path (107 bytes)");
    /* A short one is fine: 42 + "/" + 49 (longest id) + 14 ("/sock/app.sock") < 108. */
    char ok[64];
    memset(ok, 'r', 42);
    ok[0] = '/';
    ok[42] = '\0';
    snprintf(yaml, sizeof(yaml), "scheduler:\n  run_dir: %s\n", ok);
    struct sch_config c;
    char err[1024];
    CHECK_MSG(parse(yaml, &c, err, sizeof(err)) == 0, "%s", err);
    sch_config_fini(&c);
}

TEST(paths_are_checked)
{
    EXPECT_ERROR("scheduler:\n  cgroup_parent: ../escape\n",
                 "scheduler.cgroup_parent: must be a non-empty path without '..'");
    EXPECT_ERROR("scheduler:\n  ro_binds: [opt/app]\n",
                 "scheduler.ro_binds: 'opt/app': entries must be absolute paths");
    EXPECT_ERROR("scheduler:\n  ro_binds: [/]\n", "scheduler.ro_binds: '/'");
    EXPECT_ERROR("scheduler:\n  run_dir: /srv/b/run\n  ro_binds: [/srv/b]\n",
                 "scheduler.ro_binds: '/srv/b' overlaps run_dir /srv/b/run");
    EXPECT_ERROR("scheduler:\n  storage_root: /srv/d\n  ro_binds: [/srv/d/t]\n",
                 "scheduler.ro_binds: '/srv/d/t' overlaps storage_root /srv/d");
    EXPECT_ERROR("scheduler:\n  ro_binds: [/a/../etc]\n", "scheduler.ro_binds: '/a/../etc'");
    EXPECT_ERROR("scheduler:\n  run_dir: \"\"\n", "scheduler.run_dir: must not be empty");
}

TEST(sandbox_security_keys)
{
    struct sch_config c;
    char err[1024];
    CHECK_INT_EQ(parse("scheduler:\n  uid_base: 200000\n  insecure: true\n"
                       "  reserve: {memory: 2GiB, cpus: 1.5}\n",
                       &c, err, sizeof(err)),
                 0);
    CHECK_UINT_EQ(c.uid_base, 200000);
    CHECK_INT_EQ(c.insecure, 1);
    CHECK_UINT_EQ(c.reserve_memory, 2ull << 30);
    CHECK_UINT_EQ(c.reserve_cpu_millis, 1500);
    sch_config_fini(&c);
    EXPECT_ERROR("scheduler:\n  uid_base: 1000\n", "scheduler.uid_base: must be 65536..");
    /* 10000 instances x 65536 ids from 4e9 would pass 2^32 */
    EXPECT_ERROR("scheduler:\n  uid_base: 4000000000\n  capacity: 10000\n",
                 "scheduler.uid_base: uid_base + capacity x 65536 must stay below 2^32");
    CHECK_INT_EQ(parse("scheduler:\n  socket_group: \"4242\"\n", &c, err, sizeof(err)), 0);
    CHECK_UINT_EQ(c.socket_gid, 4242);
    sch_config_fini(&c);
    CHECK_INT_EQ(parse("scheduler:\n  socket_group: root\n", &c, err, sizeof(err)), 0);
    CHECK_UINT_EQ(c.socket_gid, 0);
    sch_config_fini(&c);
    EXPECT_ERROR("scheduler:\n  socket_group: no-such-group-here\n",
                 "scheduler.socket_group: no group 'no-such-group-here' on this host");
    EXPECT_ERROR("scheduler:\n  insecure: sometimes\n",
                 "scheduler.insecure: must be true or false");
    EXPECT_ERROR("scheduler:\n  reserve: {disk: 1}\n", "scheduler.reserve.disk: unknown key");
    EXPECT_ERROR("scheduler:\n  reserve: {cpus: lots}\n",
                 "scheduler.reserve.cpus: must be a number of cores 0..1024");
}

TEST(api_secret_is_required)
{
    struct sch_config c;
    char err[1024];
    CHECK_INT_EQ(parse_as_is("scheduler:\n  capacity: 3\n", &c, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "b.yaml:2:3: scheduler: api_secret or api_secret_file is required");
    CHECK_CONTAINS(err, "Authorization: Bearer <secret>");
    CHECK_NULL(c.host_id); /* left empty */
    CHECK_INT_EQ(parse_as_is("log: {level: info}\n", &c, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "b.yaml: scheduler: (no such section) api_secret or api_secret_file is "
                        "required");
    EXPECT_ERROR("scheduler:\n  api_secret: too-short\n",
                 "b.yaml:2:15: scheduler.api_secret: the secret must be at least 32 bytes");
}

TEST(api_secret_from_a_file)
{
    char path[4200], yaml[4400], err[1024];
    snprintf(path, sizeof(path), "%s", test_write_file("secret", SECRET "\n", (size_t)-1));
    CHECK_INT_EQ(chmod(path, 0600), 0);
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", path);
    struct sch_config c;
    CHECK_MSG(parse(yaml, &c, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR_EQ(c.api_secret, SECRET);
    sch_config_fini(&c);
    /* Readable by the group: refused, naming the key, the file and the fix. */
    CHECK_INT_EQ(chmod(path, 0640), 0);
    CHECK_INT_EQ(parse(yaml, &c, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "b.yaml:2:20: scheduler.api_secret_file: ");
    CHECK_CONTAINS(err, path);
    CHECK_CONTAINS(err, "is open to group or others (mode 0640): it holds a secret, chmod 600 it");
}

TEST(instance_relay)
{
    struct sch_config c;
    char err[1024];
    CHECK_MSG(parse("scheduler:\n  host_id: h\n", &c, err, sizeof(err)) == 0, "%s", err);
    CHECK(c.instance_relay.listen == NULL && c.instance_relay.advertise == NULL);
    CHECK(c.instance_relay.max_conns == 1024 && c.instance_relay.max_skew_s == 30);
    CHECK(c.instance_relay.handshake_timeout == 5 * CM_USEC_PER_SEC);
    CHECK(c.instance_relay.buffer == 65536);
    sch_config_fini(&c);
    CHECK_MSG(parse("scheduler:\n  instance_relay:\n    listen: 0.0.0.0:7070\n"
                    "    advertise: 10.0.0.5\n    max_connections: 10\n"
                    "    handshake_timeout: 2s\n    max_clock_skew: 1m\n    buffer: 16KiB\n",
                    &c, err, sizeof(err)) == 0,
              "%s", err);
    CHECK(strcmp(c.instance_relay.listen, "0.0.0.0:7070") == 0);
    CHECK(strcmp(c.instance_relay.advertise, "10.0.0.5") == 0);
    CHECK(c.instance_relay.max_conns == 10 && c.instance_relay.max_skew_s == 60);
    CHECK(c.instance_relay.handshake_timeout == 2 * CM_USEC_PER_SEC);
    CHECK(c.instance_relay.buffer == 16384);
    sch_config_fini(&c);
    EXPECT_ERROR("scheduler:\n  instance_relay:\n    listen: 0.0.0.0:7070\n",
                 "scheduler.instance_relay.advertise: is required when listen is a wildcard");
    EXPECT_ERROR("scheduler:\n  instance_relay:\n    listen: somehost:7070\n",
                 "scheduler.instance_relay.listen: must be an IP address and port");
    EXPECT_ERROR("scheduler:\n  instance_relay:\n    listen: 127.0.0.1:1\n    advertise: a/b\n",
                 "scheduler.instance_relay.advertise: must be host:port or host");
    EXPECT_ERROR("scheduler:\n  instance_relay:\n    listen: 127.0.0.1:1\n    port: 3\n",
                 "scheduler.instance_relay");
    EXPECT_ERROR("scheduler:\n  instance_relay: on\n", "scheduler.instance_relay");
}

TEST(advertised_addresses_may_come_from_the_environment)
{
    struct sch_config c;
    char err[1024];
    setenv("BERTH_TEST_NODE_IP", "10.1.2.3", 1);
    CHECK_MSG(parse("scheduler:\n  api_listen: 0.0.0.0:9191\n  api_advertise: $BERTH_TEST_NODE_IP\n"
                    "  instance_relay:\n    listen: 0.0.0.0:7070\n"
                    "    advertise: $BERTH_TEST_NODE_IP\n",
                    &c, err, sizeof(err)) == 0,
              "%s", err);
    CHECK(strcmp(c.api_advertise, "10.1.2.3") == 0);
    CHECK(strcmp(c.instance_relay.advertise, "10.1.2.3") == 0);
    sch_config_fini(&c);
    CHECK_MSG(parse("scheduler:\n  api_advertise: 10.0.0.9:19191\n", &c, err, sizeof(err)) == 0,
              "%s", err);
    CHECK(strcmp(c.api_advertise, "10.0.0.9:19191") == 0);
    sch_config_fini(&c);
    EXPECT_ERROR("scheduler:\n  api_advertise: $BERTH_TEST_NOT_SET_ANYWHERE\n",
                 "scheduler.api_advertise: environment variable BERTH_TEST_NOT_SET_ANYWHERE is "
                 "not set");
    setenv("BERTH_TEST_BAD", "a b", 1);
    EXPECT_ERROR("scheduler:\n  instance_relay:\n    listen: 127.0.0.1:1\n"
                 "    advertise: $BERTH_TEST_BAD\n",
                 "scheduler.instance_relay.advertise: must be host:port or host");
}
