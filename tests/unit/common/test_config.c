/* common/config.c: the shared sections of the config file and the typed getters. Every error
 * must read "file:line:col: key: message" with the position of the offending node. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/config.h"
#include "tests/harness/test.h"

#define MiB (1024ull * 1024)

static char cfg_path[4096];

static struct cm_config *load(const char *yaml, char *err, size_t errlen)
{
    snprintf(cfg_path, sizeof(cfg_path), "%s", test_write_file("berth.yaml", yaml, (size_t)-1));
    err[0] = '\0';
    return cm_config_load(cfg_path, err, errlen);
}

/* <yaml> must be refused with exactly "<path>:<want>". */
#define EXPECT_ERROR(yaml, want) expect_error(__FILE__, __LINE__, yaml, want)
static void expect_error(const char *file, int line, const char *yaml, const char *want)
{
    char err[1024];
    struct cm_config *cfg = load(yaml, err, sizeof(err));
    if (cfg) {
        cm_config_free(cfg);
        test_fail(file, line, "accepted, wanted %s", want);
    }
    char full[4096 + 512];
    snprintf(full, sizeof(full), "%s:%s", cfg_path, want);
    if (strcmp(err, full) != 0)
        test_fail(file, line, "error\n#   got:  %s\n#   want: %s", err, full);
}

#define TPL "templates:\n  - name: t\n    app: {command: x}\n"

TEST(sample_config_loads)
{
    const char *path = getenv("BERTH_SAMPLE_CONFIG");
    if (!path)
        test_skip("BERTH_SAMPLE_CONFIG not set (run through meson test)");
    char err[1024];
    struct cm_config *cfg = cm_config_load(path, err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_STR_EQ(cfg->log_level, "info");
    CHECK_STR_EQ(cfg->redis.prefix, "berth:");
    CHECK_UINT_EQ(cfg->n_tenants, 1);
    CHECK_STR_EQ(cfg->tenants[0].name, "default");
    /* the development key the quick start prints */
    CHECK(cm_config_tenant_by_key(cfg, "berth-dev-key") == &cfg->tenants[0]);
    CHECK_NULL(cm_config_tenant_by_key(cfg, "berth-dev-key2"));
    const struct cm_template *t = cm_config_template(cfg, "echo");
    CHECK_NOT_NULL(t);
    CHECK_STR_EQ(t->driver, "process");
    CHECK_CONTAINS(t->app_command[0], "berth-echo");
    CHECK(!test_contains(t->app_command[0], "@BINDIR@"));
    CHECK_STR_EQ(t->app_command[1], "--port");
    CHECK_STR_EQ(t->app_command[2], "8000");
    CHECK_NULL(t->app_command[3]);
    CHECK_UINT_EQ(t->app_port, 8000);
    CHECK_UINT_EQ(t->cpu_millis, 500);
    CHECK_UINT_EQ(t->memory, 256 * MiB);
    CHECK_UINT_EQ(t->pids, 128);
    CHECK_UINT_EQ(t->pool_min, 2);
    CHECK_UINT_EQ(t->pool_max, 8);
    CHECK_UINT_EQ(t->ttl, 3600 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->idle_timeout, 600 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->pause_after, 300 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(t->on_lost, CM_LOST_REPLACE);
    CHECK_INT_EQ(t->data, 1);
    CHECK_UINT_EQ(t->data_size, 1024 * MiB);
    CHECK_INT_EQ(t->run_as_root, 0);
    CHECK_STR_EQ(t->seccomp, "default");
    CHECK_STR_EQ(t->accel, "auto");
    CHECK_NULL(t->rootfs);
    CHECK_UINT_EQ(t->io_read_bps + t->io_write_bps + t->io_read_iops + t->io_write_iops, 0);
    cm_config_free(cfg);
}

TEST(full_config_values)
{
    char err[1024];
    struct cm_config *cfg = load(
        "log: {level: debug}\n"
        "redis:\n"
        "  address: unix:/run/redis.sock\n"
        "  username: berth-gw\n"
        "  password: s3cret\n"
        "  prefix: 'x:'\n"
        "  db: 3\n"
        "  connect_timeout: 250ms\n"
        "  command_timeout: 1m\n"
        "tenants:\n"
        "  - name: acme\n"
        "    api_keys_sha256: 4AE56750C98CC0BB9E30FA2F42BC165F150C596874E4C5EFB1B354E9DF3BEA45\n"
        "    limits: {max_sessions: 25, sessions_per_second: 5, requests_per_second: 100,\n"
        "             requests_burst: 400, max_execs: 7, max_memory: 2GiB, max_cpus: 3.5}\n"
        "  - name: other.team_2\n"
        "templates:\n"
        "  - name: web\n"
        "    driver: process\n"
        "    app:\n"
        "      command: [/bin/app, --flag, \"two words\"]\n"
        "      port: 3000\n"
        "      env: {MODE: prod, LEVEL: \"3\"}\n"
        "    cpus: 1.25\n"
        "    memory: 1GiB\n"
        "    pids: 0\n"
        "    workspace_size: 16MiB\n"
        "    pool: {min: 0, max: 4}\n"
        "    ready_timeout: 500ms\n"
        "    ttl: 2h\n"
        "    max_ttl: 7d\n"
        "    idle_timeout: 90\n"
        "    max_idle_timeout: 3h\n"
        "    on_lost: fail\n"
        "    data: no\n"
        "    data_size: 64MiB\n"
        "    run_as_root: yes\n"
        "    seccomp: strict\n"
        "    accel: tcg\n"
        "    idle: {pause_after: 45s}\n"
        "    io: {read_bps: 10MiB, write_bps: 1MiB, read_iops: 100, write_iops: 50}\n"
        "gateway: {anything: goes here}\n"
        "scheduler: {the daemon: checks it}\n",
        err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_STR_EQ(cfg->file, cfg_path);
    CHECK_NOT_NULL(cfg->root);
    CHECK_STR_EQ(cfg->log_level, "debug");
    CHECK_STR_EQ(cfg->redis.address, "unix:/run/redis.sock");
    CHECK_STR_EQ(cfg->redis.username, "berth-gw");
    CHECK_STR_EQ(cfg->redis.password, "s3cret");
    CHECK_STR_EQ(cfg->redis.prefix, "x:");
    CHECK_UINT_EQ(cfg->redis.db, 3);
    CHECK_UINT_EQ(cfg->redis.connect_timeout, 250 * CM_USEC_PER_MSEC);
    CHECK_UINT_EQ(cfg->redis.command_timeout, 60 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(cfg->n_tenants, 2);
    /* hex is lower-cased; a single scalar is a list of one */
    CHECK_STR_EQ(cfg->tenants[0].api_key_sha256[0],
                 "4ae56750c98cc0bb9e30fa2f42bc165f150c596874e4c5efb1b354e9df3bea45");
    CHECK_NULL(cfg->tenants[0].api_key_sha256[1]);
    CHECK_NULL(cfg->tenants[1].api_key_sha256);
    CHECK_UINT_EQ(cfg->tenants[0].max_sessions, 25);
    CHECK_UINT_EQ(cfg->tenants[1].max_sessions, 0); /* none: unlimited */
    CHECK_UINT_EQ(cfg->tenants[0].sessions_per_second, 5);
    CHECK_UINT_EQ(cfg->tenants[0].sessions_burst, 5); /* the rate by default */
    CHECK_UINT_EQ(cfg->tenants[1].sessions_per_second, 0);
    CHECK_UINT_EQ(cfg->tenants[1].sessions_burst, 0);
    CHECK_UINT_EQ(cfg->tenants[0].requests_per_second, 100);
    CHECK_UINT_EQ(cfg->tenants[0].requests_burst, 400);
    CHECK_UINT_EQ(cfg->tenants[1].requests_per_second, 0);
    CHECK_UINT_EQ(cfg->tenants[0].max_execs, 7);
    CHECK_UINT_EQ(cfg->tenants[1].max_execs, 0);
    CHECK_UINT_EQ(cfg->tenants[0].max_memory, 2ull << 30);
    CHECK_UINT_EQ(cfg->tenants[0].max_cpu_millis, 3500);
    CHECK_UINT_EQ(cfg->tenants[1].max_memory, 0);
    CHECK(cm_config_tenant_by_key(cfg, "berth-dev-key") == cm_config_tenant(cfg, "acme"));
    CHECK(cm_config_tenant(cfg, "other.team_2") == &cfg->tenants[1]);
    CHECK_NULL(cm_config_tenant(cfg, "nobody"));
    const struct cm_template *t = cm_config_template(cfg, "web");
    CHECK_NOT_NULL(t);
    CHECK_NULL(cm_config_template(cfg, "nope"));
    CHECK_UINT_EQ(cm_strv_len(t->app_command), 3);
    CHECK_STR_EQ(t->app_command[2], "two words");
    CHECK_UINT_EQ(t->app_port, 3000);
    CHECK_STR_EQ(t->app_env[0], "MODE=prod");
    CHECK_STR_EQ(t->app_env[1], "LEVEL=3");
    CHECK_NULL(t->app_env[2]);
    CHECK_UINT_EQ(t->cpu_millis, 1250);
    CHECK_UINT_EQ(t->memory, 1024 * MiB);
    CHECK_UINT_EQ(t->pids, 0);
    CHECK_UINT_EQ(t->workspace_size, 16 * MiB);
    CHECK_UINT_EQ(t->pool_min, 0);
    CHECK_UINT_EQ(t->pool_max, 4);
    CHECK_UINT_EQ(t->ready_timeout, 500 * CM_USEC_PER_MSEC);
    CHECK_UINT_EQ(t->ttl, 7200 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->max_ttl, 7 * 86400 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->idle_timeout, 90 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->max_idle_timeout, 3 * 3600 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->pause_after, 45 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(t->on_lost, CM_LOST_FAIL);
    CHECK_INT_EQ(t->data, 0);
    CHECK_UINT_EQ(t->data_size, 64 * MiB);
    CHECK_INT_EQ(t->run_as_root, 1);
    CHECK_STR_EQ(t->seccomp, "strict");
    CHECK_STR_EQ(t->accel, "tcg");
    CHECK_UINT_EQ(t->io_read_bps, 10 * MiB);
    CHECK_UINT_EQ(t->io_write_bps, 1 * MiB);
    CHECK_UINT_EQ(t->io_read_iops, 100);
    CHECK_UINT_EQ(t->io_write_iops, 50);
    cm_config_free(cfg);
}

TEST(defaults)
{
    char err[1024];
    struct cm_config *cfg = load(TPL "redis:\n  password: ~\n", err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_STR_EQ(cfg->log_level, "info");
    CHECK_STR_EQ(cfg->redis.address, "127.0.0.1:6379");
    CHECK_NULL(cfg->redis.username);
    CHECK_NULL(cfg->redis.password);
    CHECK_STR_EQ(cfg->redis.prefix, "berth:");
    CHECK_UINT_EQ(cfg->redis.db, 0);
    CHECK_UINT_EQ(cfg->redis.connect_timeout, 2 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(cfg->redis.command_timeout, 2 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(cfg->n_tenants, 0);
    const struct cm_template *t = &cfg->templates[0];
    CHECK_STR_EQ(t->driver, "process");
    CHECK_STR_EQ(t->app_command[0], "x");
    CHECK_NULL(t->app_command[1]);
    CHECK_NULL(t->app_env);
    CHECK_UINT_EQ(t->app_port, 8000);
    CHECK_UINT_EQ(t->cpu_millis, 0);
    CHECK_UINT_EQ(t->memory, 256 * MiB);
    CHECK_UINT_EQ(t->pids, 256);
    CHECK_UINT_EQ(t->workspace_size, 64 * MiB);
    CHECK_UINT_EQ(t->pool_min, 1);
    CHECK_UINT_EQ(t->pool_max, 16);
    CHECK_UINT_EQ(t->ready_timeout, 10 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->ttl, 3600 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->max_ttl, 86400 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->idle_timeout, 600 * CM_USEC_PER_SEC);
    CHECK_UINT_EQ(t->max_idle_timeout, 86400 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(t->on_lost, CM_LOST_REPLACE);
    CHECK_INT_EQ(t->data, 1);
    cm_config_free(cfg);

    /* pool.max defaults to max(min, 16) */
    cfg = load("templates:\n  - name: t\n    app: {command: x}\n    pool: {min: 40}\n", err,
               sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_UINT_EQ(cfg->templates[0].pool_max, 40);
    cm_config_free(cfg);
}

TEST(file_errors)
{
    char err[1024];
    char path[4200];
    snprintf(path, sizeof(path), "%s/missing.yaml", test_tmpdir());
    CHECK_NULL(cm_config_load(path, err, sizeof(err)));
    char want[4300];
    snprintf(want, sizeof(want), "%s: No such file or directory", path);
    CHECK_STR_EQ(err, want);

    /* YAML syntax errors carry the file name and position too */
    EXPECT_ERROR("log: {level: info\n", "2:1: did not find expected ',' or '}'");
    EXPECT_ERROR("a: *x\n", "1:4: aliases are not supported");
    EXPECT_ERROR("", "1:1: empty document");
}

TEST(document_must_be_a_mapping)
{
    char err[1024];
    CHECK_NULL(load("- a\n- b\n", err, sizeof(err)));
    char want[4200];
    snprintf(want, sizeof(want), "%s:1:1: ", cfg_path);
    CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "%s", err);
    CHECK_CONTAINS(err, "the document must be a mapping");
}

TEST(top_level_and_log_errors)
{
    EXPECT_ERROR("log: {level: info}\nbogus: 1\n", "2:1: bogus: unknown key");
    EXPECT_ERROR("log: 5\n", "1:6: log: must be a mapping");
    EXPECT_ERROR("log:\n  lvl: info\n", "2:3: log.lvl: unknown key");
    EXPECT_ERROR("log:\n  level: loud\n", "2:10: log.level: must be error, warn, info or debug");
    EXPECT_ERROR("log:\n  level: [info]\n", "2:10: log.level: must be a scalar");
}

TEST(redis_errors)
{
    EXPECT_ERROR("redis: 5\n", "1:8: redis: must be a mapping");
    EXPECT_ERROR("redis:\n  host: x\n", "2:3: redis.host: unknown key");
    EXPECT_ERROR("redis:\n  db: 256\n", "2:7: redis.db: must be 0..255");
    EXPECT_ERROR("redis:\n  db: x\n", "2:7: redis.db: must be a whole number");
    EXPECT_ERROR("redis:\n  db: -1\n", "2:7: redis.db: must be a whole number");
    EXPECT_ERROR("redis:\n  db: 99999999999999999999999\n",
                 "2:7: redis.db: must be a whole number");
    EXPECT_ERROR("redis:\n  connect_timeout: 5x\n",
                 "2:20: redis.connect_timeout: must be a duration such as 250ms, 10s, 5m, 2h");
    EXPECT_ERROR("redis:\n  command_timeout: 1ms\n",
                 "2:20: redis.command_timeout: must be 10ms..60000ms");
    EXPECT_ERROR("redis:\n  command_timeout: 61s\n",
                 "2:20: redis.command_timeout: must be 10ms..60000ms");
    EXPECT_ERROR("redis:\n  address: {a: 1}\n", "2:12: redis.address: must be a scalar");
    EXPECT_ERROR("redis:\n  prefix: "
                 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
                 "2:11: redis.prefix: must be at most 64 characters");
    EXPECT_ERROR("redis:\n  sentinels: [a:1]\n",
                 "2:3: redis.master_name: required with redis.sentinels: the name the sentinels "
                 "monitor (1-128 characters)");
    EXPECT_ERROR("redis:\n  master_name: m\n", "2:16: redis.master_name: needs redis.sentinels");
    EXPECT_ERROR("redis:\n  sentinels: [a]\n  master_name: m\n",
                 "2:14: redis.sentinels: 'a' is not host:port");
    EXPECT_ERROR("redis:\n  sentinels: ['a:0']\n  master_name: m\n",
                 "2:14: redis.sentinels: 'a:0' is not host:port");
    EXPECT_ERROR("redis:\n  sentinels: [a:1]\n  master_name: m\n  address: b:2\n",
                 "4:12: redis.address: not with redis.sentinels (they name the primary)");
}

TEST(redis_sentinels)
{
    char err[512];
    struct cm_config *cfg = load("redis:\n  sentinels: [s1:26379, '10.0.0.2:26380']\n"
                                      "  master_name: berth\n",
                                      err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_STR_EQ(cfg->redis.sentinels[0], "s1:26379");
    CHECK_STR_EQ(cfg->redis.sentinels[1], "10.0.0.2:26380");
    CHECK_NULL(cfg->redis.sentinels[2]);
    CHECK_STR_EQ(cfg->redis.master_name, "berth");
    cm_config_free(cfg);
}

TEST(redis_password_file_and_username)
{
    char err[1024], yaml[4400], pw[4200];
    snprintf(pw, sizeof(pw), "%s", test_write_file("redis.pw", "pass word!\n", (size_t)-1));
    CHECK_INT_EQ(chmod(pw, 0600), 0);
    snprintf(yaml, sizeof(yaml), "redis:\n  username: berth\n  password_file: %s\n", pw);
    struct cm_config *cfg = load(yaml, err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_STR_EQ(cfg->redis.username, "berth");
    CHECK_STR_EQ(cfg->redis.password, "pass word!"); /* the newline dropped, blanks kept */
    cm_config_free(cfg);

    /* A password file open to others is refused, with the key's position. */
    CHECK_INT_EQ(chmod(pw, 0640), 0);
    cfg = load(yaml, err, sizeof(err));
    CHECK_NULL(cfg);
    CHECK_CONTAINS(err, ":3:18: redis.password_file: ");
    CHECK_CONTAINS(err, "is open to group or others (mode 0640)");

    /* One way only. */
    CHECK_INT_EQ(chmod(pw, 0600), 0);
    snprintf(yaml, sizeof(yaml), "redis:\n  password: x\n  password_file: %s\n", pw);
    cfg = load(yaml, err, sizeof(err));
    CHECK_NULL(cfg);
    CHECK_CONTAINS(err, ":3:18: redis.password_file: set either password or password_file, "
                        "not both");
}

TEST(redis_username_errors)
{
    EXPECT_ERROR("redis:\n  username: berth\n",
                 "2:13: redis.username: needs redis.password or redis.password_file (AUTH "
                 "username password)");
    EXPECT_ERROR("redis:\n  username: \"a b\"\n  password: x\n",
                 "2:13: redis.username: must be 1-128 visible ASCII characters");
    EXPECT_ERROR("redis:\n  password: \"a\\nb\"\n",
                 "2:13: redis.password: the secret must not hold NUL or line breaks: byte 1 "
                 "is 0x0a");
}

TEST(tenant_errors)
{
    EXPECT_ERROR("tenants: {name: a}\n", "1:10: tenants: must be a list");
    EXPECT_ERROR("tenants:\n  - a\n", "2:5: tenants: items must be mappings");
    EXPECT_ERROR("tenants:\n  - api_keys_sha256: []\n",
                 "2:5: tenants[].name: required: 1-63 characters of [A-Za-z0-9._-]");
    EXPECT_ERROR("tenants:\n  - name: a/b\n",
                 "2:5: tenants[].name: required: 1-63 characters of [A-Za-z0-9._-]");
    EXPECT_ERROR("tenants:\n  - name: "
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
                 "2:5: tenants[].name: required: 1-63 characters of [A-Za-z0-9._-]");
    EXPECT_ERROR("tenants:\n  - name: t\n    keys: x\n", "3:5: tenants[].keys: unknown key");
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys_sha256: [abc]\n",
                 "3:22: tenants[].api_keys_sha256: must be 64 hex digits (sha256sum of a key)");
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys_sha256: "
                 "zae56750c98cc0bb9e30fa2f42bc165f150c596874e4c5efb1b354e9df3bea45\n",
                 "3:22: tenants[].api_keys_sha256: must be 64 hex digits (sha256sum of a key)");
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys_sha256: {a: b}\n",
                 "3:22: tenants[].api_keys_sha256: must be a list of strings");
    EXPECT_ERROR("tenants:\n  - name: t\n  - name: t\n", "3:5: tenants.t: defined twice");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: 3\n", "3:13: tenants.t.limits: must be a mapping");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {max_session: 3}\n",
                 "3:14: tenants.t.limits.max_session: unknown key");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {max_sessions: -1}\n",
                 "3:28: tenants.t.limits.max_sessions: must be a whole number");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {max_sessions: 20000000}\n",
                 "3:28: tenants.t.limits.max_sessions: must be 0..10000000");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {sessions_burst: 4}\n",
                 "3:30: tenants.t.limits.sessions_burst: needs sessions_per_second");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {sessions_per_second: 2, sessions_burst: 0}\n",
                 "3:54: tenants.t.limits.sessions_burst: must be 1..1000000");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {requests_burst: 4}\n",
                 "3:30: tenants.t.limits.requests_burst: needs requests_per_second");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {requests_per_second: 2000000}\n",
                 "3:35: tenants.t.limits.requests_per_second: must be 0..1000000");
    EXPECT_ERROR("tenants:\n  - name: t\n    limits: {max_sessions: many}\n",
                 "3:28: tenants.t.limits.max_sessions: must be a whole number");
}

TEST(template_errors)
{
    EXPECT_ERROR("templates: x\n", "1:12: templates: must be a list");
    EXPECT_ERROR("templates:\n  - x\n", "2:5: templates: items must be mappings");
    EXPECT_ERROR("templates:\n  - app: {command: x}\n",
                 "2:5: templates[].name: required: 1-63 characters of [A-Za-z0-9._-]");
    EXPECT_ERROR(TPL "    colour: red\n", "4:5: templates[].colour: unknown key");
    EXPECT_ERROR("templates:\n  - name: t\n    driver: V M\n    app: {command: x}\n",
                 "3:13: templates.t.driver: 'V M' is not a driver name (static, or a scheduler "
                 "driver such as process: 1-32 of [a-z0-9_-])");
    EXPECT_ERROR("templates:\n  - name: t\n", "2:5: templates.t.app: required");
    EXPECT_ERROR("templates:\n  - name: t\n    app: {port: 80}\n",
                 "3:10: templates.t.app.command: required: the app's argv");
    EXPECT_ERROR("templates:\n  - name: t\n    app: {command: [[x]]}\n",
                 "3:21: templates.t.app.command: items must be strings");
    EXPECT_ERROR("templates:\n  - name: t\n    app: {command: x, port: 70000}\n",
                 "3:29: templates.t.app.port: must be 1..65535");
    EXPECT_ERROR("templates:\n  - name: t\n    app: {command: x, port: 0}\n",
                 "3:29: templates.t.app.port: must be 1..65535");
    EXPECT_ERROR("templates:\n  - name: t\n    app: {command: x, cmd: y}\n",
                 "3:23: templates.t.app.cmd: unknown key");
    EXPECT_ERROR("templates:\n  - name: t\n    app: {command: x, env: [a]}\n",
                 "3:28: templates.t.app.env: must be a mapping of NAME: value");
    EXPECT_ERROR("templates:\n  - name: t\n    app:\n      command: x\n      env: {\"a b\": 1}\n",
                 "5:13: templates.t.app.env: entries must be NAME: value");
    EXPECT_ERROR(TPL "    cpus: abc\n", "4:11: templates.t.cpus: must be a number of cores 0.01..1024");
    EXPECT_ERROR(TPL "    cpus: 0\n", "4:11: templates.t.cpus: must be a number of cores 0.01..1024");
    EXPECT_ERROR(TPL "    cpus: 2000\n",
                 "4:11: templates.t.cpus: must be a number of cores 0.01..1024");
    EXPECT_ERROR(TPL "    memory: lots\n",
                 "4:13: templates.t.memory: must be a size such as 4096, 64KiB, 16MiB");
    EXPECT_ERROR(TPL "    memory: 1.5GiB\n",
                 "4:13: templates.t.memory: must be a size such as 4096, 64KiB, 16MiB");
    EXPECT_ERROR(TPL "    pids: 5000000\n", "4:11: templates.t.pids: must be 0..4194304");
    EXPECT_ERROR(TPL "    workspace_size: 1KiB\n",
                 "4:21: templates.t.workspace_size: must be 1048576..1099511627776 bytes");
    EXPECT_ERROR(TPL "    pool: {min: 1, mx: 2}\n", "4:20: templates.t.pool.mx: unknown key");
    EXPECT_ERROR(TPL "    pool: [1, 2]\n", "4:11: templates.t.pool: must be a mapping");
    EXPECT_ERROR(TPL "    pool: {min: 5, max: 2}\n",
                 "4:11: templates.t.pool.min: must not exceed pool.max");
    EXPECT_ERROR(TPL "    pool: {min: 10001}\n", "4:17: templates.t.pool.min: must be 0..10000");
    EXPECT_ERROR(TPL "    ready_timeout: 50ms\n",
                 "4:20: templates.t.ready_timeout: must be 100ms..3600000ms");
    EXPECT_ERROR(TPL "    ttl: 0s\n", "4:10: templates.t.ttl: must be 1000ms..31536000000ms");
    EXPECT_ERROR(TPL "    ttl: soon\n",
                 "4:10: templates.t.ttl: must be a duration such as 250ms, 10s, 5m, 2h");
    EXPECT_ERROR(TPL "    ttl: 2d\n    max_ttl: 1d\n",
                 "2:5: templates.t.ttl: must not exceed max_ttl");
    EXPECT_ERROR(TPL "    idle_timeout: 2h\n    max_idle_timeout: 1h\n",
                 "2:5: templates.t.idle_timeout: must not exceed max_idle_timeout");
    EXPECT_ERROR(TPL "    idle: {pause_after: 500ms}\n",
                 "4:25: templates.t.idle.pause_after: must be 0 (never) or at least 1s");
    EXPECT_ERROR(TPL "    idle: {later: 1s}\n", "4:12: templates.t.idle.later: unknown key");
    EXPECT_ERROR(TPL "    idle: 5m\n", "4:11: templates.t.idle: must be a mapping");
    EXPECT_ERROR(TPL "    on_lost: maybe\n", "4:14: templates.t.on_lost: must be replace or fail");
    EXPECT_ERROR(TPL "    data: perhaps\n", "4:11: templates.t.data: must be true or false");
    EXPECT_ERROR(TPL "    data_size: 1MiB\n",
                 "4:16: templates.t.data_size: must be 16777216..17592186044416 bytes");
    EXPECT_ERROR(TPL "    accel: hvf\n",
                 "4:12: templates.t.accel: must be auto, kvm or tcg, not 'hvf'");
    EXPECT_ERROR(TPL "    seccomp: none\n",
                 "4:14: templates.t.seccomp: unknown profile 'none' (known: default, strict)");
    EXPECT_ERROR(TPL "    run_as_root: maybe\n",
                 "4:18: templates.t.run_as_root: must be true or false");
    EXPECT_ERROR(TPL "    io: {write: 1}\n", "4:10: templates.t.io.write: unknown key");
    EXPECT_ERROR(TPL "    rootfs: relative/dir\n",
                 "4:13: templates.t.rootfs: must be an absolute directory other than / without '..'");
    EXPECT_ERROR(TPL "    rootfs: /\n",
                 "4:13: templates.t.rootfs: must be an absolute directory other than / without '..'");
    EXPECT_ERROR(TPL "    io: {read_iops: -1}\n", "4:21: templates.t.io.read_iops: must be a whole number");
    EXPECT_ERROR(TPL "  - name: t\n    app: {command: y}\n", "4:5: templates.t: defined twice");
}

TEST(parse_duration)
{
    cm_usec_t v = 0;
    CHECK_INT_EQ(cm_parse_duration("250ms", &v), 0);
    CHECK_UINT_EQ(v, 250000);
    CHECK_INT_EQ(cm_parse_duration("10", &v), 0);
    CHECK_UINT_EQ(v, 10 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(cm_parse_duration("10s", &v), 0);
    CHECK_UINT_EQ(v, 10 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(cm_parse_duration("5m", &v), 0);
    CHECK_UINT_EQ(v, 300 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(cm_parse_duration("2h", &v), 0);
    CHECK_UINT_EQ(v, 7200 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(cm_parse_duration("1d", &v), 0);
    CHECK_UINT_EQ(v, 86400 * CM_USEC_PER_SEC);
    CHECK_INT_EQ(cm_parse_duration("7us", &v), 0);
    CHECK_UINT_EQ(v, 7);
    CHECK_INT_EQ(cm_parse_duration("0", &v), 0);
    CHECK_UINT_EQ(v, 0);
    cm_usec_t keep = 42;
    static const char *const bad[] = {"", "s", "-1s", "1.5s", "10 s", "10sec", "1w", "ms",
                                      "99999999999999999999", "999999999999999d"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_MSG(cm_parse_duration(bad[i], &keep) == -EINVAL, "accepted '%s'", bad[i]);
    CHECK_UINT_EQ(keep, 42);
}

TEST(parse_size)
{
    uint64_t v = 0;
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {{"0", 0},           {"4096", 4096},        {"512B", 512},
              {"64KiB", 65536},   {"16MiB", 16 * MiB},   {"1GiB", 1024 * MiB},
              {"2KB", 2000},      {"3MB", 3000000},      {"1GB", 1000000000},
              {"8k", 8192},       {"8K", 8192},          {"2M", 2 * MiB},
              {"1G", 1024 * MiB}, {"1TiB", 1024 * 1024 * MiB}, {"2TB", 2000000000000ull}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CHECK_MSG(cm_parse_size(ok[i].s, &v) == 0, "refused '%s'", ok[i].s);
        CHECK_MSG(v == ok[i].v, "'%s' gave %llu", ok[i].s, (unsigned long long)v);
    }
    uint64_t keep = 42;
    static const char *const bad[] = {"", "KiB", "1.5MiB", "-1", "10 MiB", "1kib", "1PiB",
                                      "20000000000GiB", "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_MSG(cm_parse_size(bad[i], &keep) == -EINVAL, "accepted '%s'", bad[i]);
    CHECK_UINT_EQ(keep, 42);
}

TEST(getters_on_daemon_sections)
{
    /* the daemons read their own sections with the same getters */
    char err[1024];
    struct cm_config *cfg = load("gateway:\n"
                                 "  workers: 4\n"
                                 "  listen: 127.0.0.1:1\n"
                                 "  on: yes\n"
                                 "  names: [a, b]\n"
                                 "  one: single\n"
                                 "  big: 64KiB\n"
                                 "  wait: 5m\n"
                                 "  strange: 1\n",
                                 err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    struct cm_conf_ctx ctx = {.file = cfg->file, .err = err, .errlen = sizeof(err)};
    const struct cm_ynode *gw = cm_ynode_get(cfg->root, "gateway");
    uint64_t u = 0;
    CHECK_INT_EQ(cm_conf_u64(&ctx, gw, "gateway", "workers", 1, 1, 256, &u), 0);
    CHECK_UINT_EQ(u, 4);
    CHECK_INT_EQ(cm_conf_u64(&ctx, gw, "gateway", "absent", 9, 1, 256, &u), 0);
    CHECK_UINT_EQ(u, 9);
    CHECK_INT_EQ(cm_conf_u64(&ctx, gw, "gateway", "workers", 1, 5, 256, &u), -EINVAL);
    char want[4300];
    snprintf(want, sizeof(want), "%s:2:12: gateway.workers: must be 5..256", cfg->file);
    CHECK_STR_EQ(err, want);
    int b = -1;
    CHECK_INT_EQ(cm_conf_bool(&ctx, gw, "gateway", "on", 0, &b), 0);
    CHECK_INT_EQ(b, 1);
    CHECK_INT_EQ(cm_conf_bool(&ctx, gw, "gateway", "listen", 0, &b), -EINVAL);
    CHECK_CONTAINS(err, ":3:11: gateway.listen: must be true or false");
    char **v = NULL;
    CHECK_INT_EQ(cm_conf_strv(&ctx, gw, "gateway", "names", NULL, &v), 0);
    CHECK_UINT_EQ(cm_strv_len(v), 2);
    CHECK_STR_EQ(v[1], "b");
    cm_strv_free(v);
    CHECK_INT_EQ(cm_conf_strv(&ctx, gw, "gateway", "one", NULL, &v), 0);
    CHECK_UINT_EQ(cm_strv_len(v), 1);
    cm_strv_free(v);
    static const char *const def[] = {"d1", "d2", NULL};
    CHECK_INT_EQ(cm_conf_strv(&ctx, gw, "gateway", "absent", def, &v), 0);
    CHECK_UINT_EQ(cm_strv_len(v), 2);
    CHECK_STR_EQ(v[0], "d1");
    cm_strv_free(v);
    CHECK_INT_EQ(cm_conf_size(&ctx, gw, "gateway", "big", 0, 0, UINT64_MAX, &u), 0);
    CHECK_UINT_EQ(u, 65536);
    cm_usec_t d = 0;
    CHECK_INT_EQ(cm_conf_duration(&ctx, gw, "gateway", "wait", 0, 0, UINT64_MAX, &d), 0);
    CHECK_UINT_EQ(d, 300 * CM_USEC_PER_SEC);
    char *s = NULL;
    CHECK_INT_EQ(cm_conf_str(&ctx, gw, "gateway", "absent", "dflt", &s), 0);
    CHECK_STR_EQ(s, "dflt");
    free(s);
    static const char *const allowed[] = {"workers", "listen", "on", "names", "one", "big",
                                          "wait", NULL};
    CHECK_INT_EQ(cm_conf_keys(&ctx, gw, "gateway", allowed), -EINVAL);
    snprintf(want, sizeof(want), "%s:9:3: gateway.strange: unknown key", cfg->file);
    CHECK_STR_EQ(err, want);
    cm_strv_free(NULL);
    CHECK_UINT_EQ(cm_strv_len(NULL), 0);
    cm_config_free(cfg);
    cm_config_free(NULL);
}

TEST(static_driver)
{
    char err[1024];
    struct cm_config *cfg = load("templates:\n"
                                 "  - name: s\n"
                                 "    driver: static\n"
                                 "    upstreams: [\"127.0.0.1:7001\", \"unix:/run/app.sock\"]\n"
                                 "    sessions_per_instance: 0\n",
                                 err, sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    const struct cm_template *t = &cfg->templates[0];
    CHECK_STR_EQ(t->driver, "static");
    CHECK_UINT_EQ(cm_strv_len(t->upstreams), 2);
    CHECK_STR_EQ(t->upstreams[1], "unix:/run/app.sock");
    CHECK_UINT_EQ(t->sessions_per_instance, 0);
    CHECK_NULL(t->app_command);
    cm_config_free(cfg);

    cfg = load(TPL, err, sizeof(err)); /* process: one session per instance by default */
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_UINT_EQ(cfg->templates[0].sessions_per_instance, 1);
    CHECK_NULL(cfg->templates[0].upstreams);
    cm_config_free(cfg);

    EXPECT_ERROR("templates:\n  - name: s\n    driver: static\n",
                 "2:5: templates.s.upstreams: required with driver static: a list of addresses");
    EXPECT_ERROR("templates:\n  - name: s\n    driver: static\n    upstreams: [nocolon]\n",
                 "4:16: templates.s.upstreams: 'nocolon' is not host:port, tcp:host:port or "
                 "unix:/path");
    EXPECT_ERROR("templates:\n  - name: s\n    driver: static\n    upstreams: [a:1]\n"
                 "    app: {command: x}\n",
                 "5:10: templates.s.app: not used with driver static");
    EXPECT_ERROR(TPL "    upstreams: [a:1]\n", "4:16: templates.t.upstreams: only for driver static");
    EXPECT_ERROR(TPL "    sessions_per_instance: -1\n",
                 "4:28: templates.t.sessions_per_instance: must be a whole number");
}

/* Which sandbox drivers exist is the scheduler's registry's to say (it refuses unknown ones):
 * the shared config takes any well-formed name, so a driver can be added without common/. */
TEST(template_driver_name_is_left_to_the_scheduler)
{
    char err[1024];
    struct cm_config *cfg =
        load("templates:\n  - name: t\n    driver: microvm\n    app: {command: x}\n", err,
             sizeof(err));
    CHECK_MSG(cfg != NULL, "%s", err);
    CHECK_STR_EQ(cfg->templates[0].driver, "microvm");
    cm_config_free(cfg);
    EXPECT_ERROR("templates:\n  - name: t\n    driver: ../x\n    app: {command: x}\n",
                 "3:13: templates.t.driver: '../x' is not a driver name (static, or a scheduler "
                 "driver such as process: 1-32 of [a-z0-9_-])");
}

#define KEY_A "4ae56750c98cc0bb9e30fa2f42bc165f150c596874e4c5efb1b354e9df3bea45"
#define KEY_B "5ae56750c98cc0bb9e30fa2f42bc165f150c596874e4c5efb1b354e9df3bea45"

TEST(api_keys_with_limits_of_their_own)
{
    char err[1024];
    struct cm_config *cfg =
        load("tenants:\n  - name: t\n    limits: {max_sessions: 9, max_execs: 3}\n"
             "    api_keys:\n      - sha256: " KEY_B "\n"
             "        limits: {max_sessions: 2, sessions_per_second: 5}\n"
             "      - {sha256: " KEY_A "}\n" TPL,
             err, sizeof(err));
    CHECK_MSG(cfg, "%s", err);
    const struct cm_tenant *t = &cfg->tenants[0];
    CHECK(t->n_api_keys == 2);
    /* sha256("berth-dev-key") is KEY_A: the key without limits of its own. */
    const struct cm_api_key *k = (const struct cm_api_key *)1;
    CHECK(cm_config_key(cfg, "berth-dev-key", &k) == t && k == &t->api_keys[1]);
    CHECK(cm_limit_max_sessions(t, k) == 9 && cm_limit_max_execs(t, k) == 3);
    k = &t->api_keys[0];
    uint32_t rate, burst;
    cm_limit_session_rate(t, k, &rate, &burst);
    CHECK(cm_limit_max_sessions(t, k) == 2 && cm_limit_max_execs(t, k) == 3);
    CHECK(rate == 5 && burst == 5);
    CHECK(cm_limit_max_sessions(t, NULL) == 9);
    CHECK(cm_config_key(cfg, "no such key", &k) == NULL);
    cm_config_free(cfg);
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys: x\n",
                 "3:15: tenants.t.api_keys: must be a list of {sha256, limits}");
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys:\n      - {sha256: abc}\n",
                 "4:18: tenants.t.api_keys.sha256: required: 64 hex digits (sha256sum of a key)");
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys:\n      - sha256: " KEY_A "\n"
                 "        limits: {max_memory: 1}\n",
                 "5:18: tenants.t.api_keys[0].limits.max_memory: unknown key");
    EXPECT_ERROR("tenants:\n  - name: t\n    api_keys_sha256: [" KEY_A "]\n"
                 "  - name: u\n    api_keys:\n      - {sha256: " KEY_A "}\n",
                 "4:5: tenants.u: API key 4ae56750c98c... is listed twice (tenants t and u)");
}
