/* common/secret.c: a secret given inline or in a file only its owner may read, and the bearer
 * check. Errors must read "file:line:col: path.key: message". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/secret.h"
#include "common/yaml.h"
#include "tests/harness/test.h"

#define S32 "0123456789abcdef0123456789abcdef" /* 32 bytes */

/* Reads scheduler.api_secret / api_secret_file of <yaml> as the daemons do. */
static int read_secret(const char *yaml, char **ret, char *err, size_t errlen)
{
    char perr[256];
    struct cm_ynode *root = cm_yaml_parse(yaml, strlen(yaml), perr, sizeof(perr));
    if (!root)
        test_fail(__FILE__, __LINE__, "test YAML does not parse: %s", perr);
    struct cm_conf_ctx ctx = {.file = "b.yaml", .err = err, .errlen = errlen};
    err[0] = '\0';
    int rc = cm_conf_secret(&ctx, cm_ynode_get(root, "scheduler"), "scheduler", "api_secret",
                            "api_secret_file", CM_API_SECRET_MIN, CM_SECRET_TOKEN, ret);
    cm_ynode_free(root);
    return rc;
}

/* A file <name> in the test's directory with <content> and <mode>; returns its path. */
static const char *secret_file(const char *name, const char *content, mode_t mode)
{
    const char *p = test_write_file(name, content, (size_t)-1);
    if (chmod(p, mode) < 0)
        test_fail(__FILE__, __LINE__, "chmod %s: %s", p, strerror(errno));
    return p;
}

static void expect_file_error(int line, const char *content, mode_t mode, const char *want)
{
    char yaml[4400], err[1024];
    const char *p = secret_file("s", content, mode);
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", p);
    char *s = NULL;
    if (read_secret(yaml, &s, err, sizeof(err)) == 0) {
        cm_secret_free(s);
        test_fail(__FILE__, line, "accepted, wanted %s", want);
    }
    CHECK_NULL(s);
    if (!test_contains(err, "b.yaml:2:20: scheduler.api_secret_file: ") ||
        !test_contains(err, want))
        test_fail(__FILE__, line, "error\n#   got:  %s\n#   want: ...%s...", err, want);
}

TEST(inline_secret)
{
    char *s = NULL, err[1024];
    CHECK_INT_EQ(read_secret("scheduler:\n  api_secret: " S32 "\n", &s, err, sizeof(err)), 0);
    CHECK_STR_EQ(s, S32);
    cm_secret_free(s);
}

TEST(neither_key_is_not_an_error_here)
{
    /* The daemons decide that a missing secret is fatal (they name both keys). */
    char *s = (char *)"untouched", err[1024];
    CHECK_INT_EQ(read_secret("scheduler:\n  host_id: a\n", &s, err, sizeof(err)), 0);
    CHECK_NULL(s);
    s = (char *)"untouched";
    CHECK_INT_EQ(read_secret("log: {}\n", &s, err, sizeof(err)), 0);
    CHECK_NULL(s);
    s = (char *)"untouched";
    CHECK_INT_EQ(read_secret("scheduler:\n  api_secret: \"\"\n", &s, err, sizeof(err)), 0);
    CHECK_NULL(s);
}

TEST(inline_secret_errors)
{
    char *s = NULL, err[1024];
    CHECK_INT_EQ(read_secret("scheduler:\n  api_secret: short\n", &s, err, sizeof(err)), -EINVAL);
    CHECK_STR_EQ(err, "b.yaml:2:15: scheduler.api_secret: the secret must be at least 32 bytes "
                      "(it has 5)");
    CHECK_INT_EQ(read_secret("scheduler:\n  api_secret: \"" S32 " x\"\n", &s, err, sizeof(err)),
                 -EINVAL);
    CHECK_CONTAINS(err, "scheduler.api_secret: the secret must be visible ASCII only");
    CHECK_CONTAINS(err, "byte 32 is 0x20");
    CHECK_INT_EQ(read_secret("scheduler:\n  api_secret: [a]\n", &s, err, sizeof(err)), -EINVAL);
    CHECK_STR_EQ(err, "b.yaml:2:15: scheduler.api_secret: must be a string");
    char yaml[2048];
    char big[CM_SECRET_MAX + 2];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret: %s\n", big);
    CHECK_INT_EQ(read_secret(yaml, &s, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "scheduler.api_secret: the secret must be at most 1024 bytes");
    CHECK_NULL(s);
}

TEST(file_secret_drops_one_trailing_newline)
{
    char yaml[4400], *s = NULL, err[1024];
    const char *p = secret_file("s", S32 "\n", 0600);
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", p);
    CHECK_MSG(read_secret(yaml, &s, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR_EQ(s, S32);
    cm_secret_free(s);
    secret_file("s", S32, 0600); /* no newline at all */
    CHECK_MSG(read_secret(yaml, &s, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR_EQ(s, S32);
    cm_secret_free(s);
    secret_file("s", S32 "\r\n", 0400); /* read-only for its owner is fine too */
    CHECK_MSG(read_secret(yaml, &s, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR_EQ(s, S32);
    cm_secret_free(s);
}

TEST(file_through_a_symlink_is_read)
{
    /* Kubernetes mounts a Secret's keys as symlinks into a ..data directory. */
    char yaml[4400], link[4200], *s = NULL, err[1024];
    const char *p = secret_file("real", S32 "\n", 0400);
    snprintf(link, sizeof(link), "%s/link", test_tmpdir());
    CHECK_INT_EQ(symlink(p, link), 0);
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", link);
    CHECK_MSG(read_secret(yaml, &s, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR_EQ(s, S32);
    cm_secret_free(s);
}

TEST(file_open_to_group_or_others_is_refused)
{
    expect_file_error(__LINE__, S32 "\n", 0640, "is open to group or others (mode 0640)");
    expect_file_error(__LINE__, S32 "\n", 0604, "is open to group or others (mode 0604)");
    expect_file_error(__LINE__, S32 "\n", 0620, "chmod 600 it");
}

TEST(file_content_errors)
{
    expect_file_error(__LINE__, "", 0600, "must be at least 32 bytes (it has 0)");
    expect_file_error(__LINE__, "short\n", 0600, "must be at least 32 bytes (it has 5)");
    expect_file_error(__LINE__, S32 "\n\n", 0600, "byte 32 is 0x0a"); /* one newline only */
    expect_file_error(__LINE__, S32 " \n", 0600, "must be visible ASCII only");
    char big[CM_SECRET_MAX + 8];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_file_error(__LINE__, big, 0600, "must be at most 1024 bytes");
}

TEST(file_that_is_not_a_regular_file_is_refused)
{
    char yaml[4400], path[4200], *s = NULL, err[1024];
    snprintf(path, sizeof(path), "%s/missing", test_tmpdir());
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", path);
    CHECK_INT_EQ(read_secret(yaml, &s, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "b.yaml:2:20: scheduler.api_secret_file: cannot open ");
    CHECK_CONTAINS(err, "No such file or directory");
    /* A FIFO must not hang the start. */
    snprintf(path, sizeof(path), "%s/fifo", test_tmpdir());
    CHECK_INT_EQ(mkfifo(path, 0600), 0);
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", path);
    CHECK_INT_EQ(read_secret(yaml, &s, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "is not a regular file");
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret_file: %s\n", test_tmpdir());
    CHECK_INT_EQ(read_secret(yaml, &s, err, sizeof(err)), -EINVAL);
    CHECK_CONTAINS(err, "is not a regular file");
    CHECK_NULL(s);
}

TEST(both_keys_are_refused)
{
    char yaml[4400], *s = NULL, err[1024];
    const char *p = secret_file("s", S32 "\n", 0600);
    snprintf(yaml, sizeof(yaml), "scheduler:\n  api_secret: %s\n  api_secret_file: %s\n", S32, p);
    CHECK_INT_EQ(read_secret(yaml, &s, err, sizeof(err)), -EINVAL);
    CHECK_STR_EQ(err, "b.yaml:3:20: scheduler.api_secret_file: set either api_secret or "
                      "api_secret_file, not both");
    CHECK_NULL(s);
}

TEST(bearer_check)
{
    CHECK(cm_secret_bearer_ok("Bearer " S32, S32));
    CHECK(cm_secret_bearer_ok("bearer " S32, S32));
    CHECK(cm_secret_bearer_ok("  BEARER\t" S32 " \t", S32));
    CHECK(!cm_secret_bearer_ok(NULL, S32));
    CHECK(!cm_secret_bearer_ok("", S32));
    CHECK(!cm_secret_bearer_ok("Bearer", S32));
    CHECK(!cm_secret_bearer_ok("Bearer ", S32));
    CHECK(!cm_secret_bearer_ok(S32, S32));                       /* no scheme */
    CHECK(!cm_secret_bearer_ok("Basic " S32, S32));              /* another scheme */
    CHECK(!cm_secret_bearer_ok("Bearer" S32, S32));              /* no blank after the scheme */
    CHECK(!cm_secret_bearer_ok("Bearer " S32 "x", S32));         /* longer */
    CHECK(!cm_secret_bearer_ok("Bearer 0123456789abcdef", S32)); /* a prefix */
    CHECK(!cm_secret_bearer_ok("Bearer 0123456789abcdef0123456789abcdeF", S32));
    CHECK(!cm_secret_bearer_ok("Bearer " S32, NULL));
}

TEST(exec_key)
{
    char k[CM_EXEC_KEY_LEN + 1];
    /* HMAC-SHA256(secret, "berth-exec " id), as Python's hmac module computes it. */
    CHECK_INT_EQ(cm_secret_exec_key(S32, "h1-00ff", k), 0);
    CHECK_STR_EQ(k, "9215f9371ca23a8d9f21e86e54fe4d9dae0fc0029f32330241dd6b45eb0bb087");
    CHECK_INT_EQ(cm_secret_exec_key(S32, "h1-00fe", k), 0);
    CHECK_STR_EQ(k, "591c27636344a85435a43cfb5edb5fa7cdd5fa87eac8a7e517615542fdd7b062");
    CHECK_INT_EQ(cm_secret_exec_key(NULL, "h1-00fe", k), -EIO);
    CHECK_STR_EQ(k, "");
}
