/* scheduler/vmroot.c: guest.conf text, content keys, real image builds (as root, with
 * mkfs.ext4 and debugfs), garbage collection. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "scheduler/paths.h"
#include "scheduler/vmroot.h"
#include "tests/harness/test.h"

static char *cmd_echo[] = {"berth-echo", "--host", "0.0.0.0", "--greeting", "hello world", NULL};
static char *env_two[] = {"A=1", "B=x y", NULL};

static struct cm_template tpl_of(char **cmd, char **env)
{
    struct cm_template t = {.name = "echo",
                            .app_command = cmd,
                            .app_env = env,
                            .app_port = 8080,
                            .workspace_size = 64u << 20};
    return t;
}

static int conf(const struct cm_template *t, const char *argv0, char *buf, size_t len)
{
    struct sch_vmroot_params p = {
        .tpl = t, .relay_port = 9000, .ports_port = 9001, .hold_ms = 5000};
    return sch_vmroot_guest_conf(&p, argv0, buf, len);
}

TEST(guest_conf_text)
{
    struct cm_template t = tpl_of(cmd_echo, env_two);
    char buf[4200];
    int n = conf(&t, "/usr/local/bin/berth-echo", buf, sizeof(buf));
    const char *want = "# written by berth-scheduler (vmroot.c)\n"
                       "port=8080\nrelay_port=9000\nhold_ms=5000\nuid=1000\n"
                       "workspace_size=67108864\nports_port=9001\n"
                       "env=A=1\nenv=B=x y\n"
                       "arg=/usr/local/bin/berth-echo\narg=--host\narg=0.0.0.0\n"
                       "arg=--greeting\narg=hello world\n";
    CHECK_STR_EQ(buf, want);
    CHECK_INT_EQ(n, strlen(want));
}

TEST(guest_conf_run_as_root_and_no_env)
{
    char *cmd[] = {"app", NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    t.run_as_root = 1;
    char buf[4200];
    CHECK(conf(&t, "/bin/app", buf, sizeof(buf)) > 0);
    CHECK_CONTAINS(buf, "\nuid=0\n");
    CHECK(!test_contains(buf, "env="));
    CHECK_CONTAINS(buf, "\narg=/bin/app\n");
}

TEST(guest_conf_too_long)
{
    static char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    char *cmd[] = {"app", big, NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    char buf[8192];
    CHECK_INT_EQ(conf(&t, "/bin/app", buf, sizeof(buf)), -E2BIG);
    /* Just within the agent's limit, but not the caller's buffer. */
    big[3000] = '\0';
    CHECK(conf(&t, "/bin/app", buf, sizeof(buf)) > 3000);
    CHECK_INT_EQ(conf(&t, "/bin/app", buf, 100), -ENOBUFS);
}

TEST(guest_conf_refuses_newlines)
{
    char *cmd[] = {"app", "a\nport=1", NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    char buf[4200];
    CHECK_INT_EQ(conf(&t, "/bin/app", buf, sizeof(buf)), -EINVAL);
    char *cmd2[] = {"app", NULL};
    char *env[] = {"A=1\narg=/bin/sh", NULL};
    t = tpl_of(cmd2, env);
    CHECK_INT_EQ(conf(&t, "/bin/app", buf, sizeof(buf)), -EINVAL);
    t = tpl_of(cmd2, NULL);
    CHECK_INT_EQ(conf(&t, "/bin/app\nx", buf, sizeof(buf)), -EINVAL);
    char *none[] = {NULL};
    t = tpl_of(none, NULL);
    CHECK_INT_EQ(conf(&t, "/bin/app", buf, sizeof(buf)), -EINVAL);
}

/* ---- builds ---- */

static const char *cache_dir(void)
{
    static char p[4200];
    snprintf(p, sizeof(p), "%s/cache", test_tmpdir());
    if (mkdir(p, 0700) < 0 && errno != EEXIST)
        test_fail(__FILE__, __LINE__, "mkdir %s: %s", p, strerror(errno));
    return p;
}

static void need_tools(void)
{
    if (geteuid() != 0)
        test_skip("image builds need root");
    if (access("/usr/sbin/mkfs.ext4", X_OK) != 0 && access("/sbin/mkfs.ext4", X_OK) != 0)
        test_skip("mkfs.ext4 missing (e2fsprogs)");
    if (access("/usr/sbin/debugfs", X_OK) != 0 && access("/sbin/debugfs", X_OK) != 0)
        test_skip("debugfs missing (e2fsprogs)");
}

struct built {
    int rc;
    char path[4200], hash[SCH_VMROOT_HASH_LEN + 1], err[512];
};

static struct built build(const struct cm_template *t, char *const *ro_binds)
{
    struct sch_vmroot_params p = {
        .tpl = t, .ro_binds = ro_binds, .relay_port = 9000, .hold_ms = 0, .cache_dir = cache_dir()};
    struct built b;
    memset(&b, 0, sizeof(b));
    b.rc = sch_vmroot_build(&p, b.path, sizeof(b.path), b.hash, b.err, sizeof(b.err));
    return b;
}

static struct built build_ok(const struct cm_template *t, char *const *ro_binds)
{
    struct built b = build(t, ro_binds);
    CHECK_MSG(b.rc == 0, "build: %d %s", b.rc, b.err);
    CHECK_INT_EQ(strlen(b.hash), SCH_VMROOT_HASH_LEN);
    return b;
}

/* debugfs -R '<req>' <img>: its output (static storage). */
static const char *dbg(const char *img, const char *req)
{
    static char out[65536];
    char cmd[8400];
    snprintf(cmd, sizeof(cmd),
             "PATH=/usr/sbin:/sbin:/usr/bin:/bin debugfs -R '%s' '%s' 2>/dev/null", req, img);
    FILE *f = popen(cmd, "r");
    CHECK_NOT_NULL(f);
    size_t n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    pclose(f);
    return out;
}

/* "regular", "symlink", "directory" or "" (absent) for <path> in <img>, not following it. */
static const char *type_in(const char *img, const char *path)
{
    char req[4200];
    snprintf(req, sizeof(req), "stat \"%s\"", path);
    const char *o = dbg(img, req);
    const char *t = strstr(o, "Type: ");
    if (!t)
        return "";
    static char type[32];
    sscanf(t + 6, "%31s", type);
    return type;
}

static char *real(const char *p)
{
    static char r[4][4200];
    static int k;
    k = (k + 1) % 4;
    CHECK_MSG(realpath(p, r[k]) != NULL, "realpath %s: %s", p, strerror(errno));
    return r[k];
}

static int count_images(void)
{
    char cmd[4300];
    snprintf(cmd, sizeof(cmd), "ls '%s' | grep -c '^root-echo-.*\\.img$'", cache_dir());
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (f) {
        if (fscanf(f, "%d", &n) != 1)
            n = -1;
        pclose(f);
    }
    return n;
}

TEST(build_dynamic_binary_and_reuse_and_gc)
{
    need_tools();
    char *cmd[] = {"true", "--a b", NULL};
    struct cm_template t = tpl_of(cmd, env_two);
    struct built b = build_ok(&t, NULL);
    char want[4300];
    snprintf(want, sizeof(want), "%s/root-echo-%s.img", cache_dir(), b.hash);
    CHECK_STR_EQ(b.path, want);
    struct stat st1;
    CHECK(stat(b.path, &st1) == 0);
    CHECK_INT_EQ(st1.st_mode & 07777, 0600);
    CHECK_INT_EQ(st1.st_uid, 0);

    /* The binary, its libc and ld.so (at their host paths and through the host's links). */
    const char *truebin = real("/usr/bin/true");
    CHECK_STR_EQ(type_in(b.path, truebin), "regular");
    Dl_info di;
    CHECK(dladdr((void *)gnu_get_libc_version, &di) && di.dli_fname);
    CHECK_STR_EQ(type_in(b.path, real(di.dli_fname)), "regular");
    if (strcmp(di.dli_fname, real(di.dli_fname)) != 0)
        CHECK(type_in(b.path, di.dli_fname)[0] != '\0');
    if (access("/lib64/ld-linux-x86-64.so.2", F_OK) == 0) {
        CHECK_STR_EQ(type_in(b.path, real("/lib64/ld-linux-x86-64.so.2")), "regular");
        CHECK_STR_EQ(type_in(b.path, "/lib64"),
                     strcmp(real("/lib64"), "/lib64") ? "symlink" : "directory");
    }
    /* guest.conf, as sch_vmroot_guest_conf() writes it for the resolved command. */
    char text[4200];
    struct sch_vmroot_params p = {.tpl = &t, .relay_port = 9000};
    CHECK(sch_vmroot_guest_conf(&p, "/usr/bin/true", text, sizeof(text)) > 0);
    CHECK_STR_EQ(dbg(b.path, "cat /etc/berth/guest.conf"), text);
    CHECK_STR_EQ(type_in(b.path, "/tmp"), "directory");
    CHECK_CONTAINS(dbg(b.path, "stat /tmp"), "Mode:  01777");

    /* The same inputs: the same image, not rebuilt. */
    struct built b2 = build_ok(&t, NULL);
    CHECK_STR_EQ(b2.path, b.path);
    CHECK_STR_EQ(b2.hash, b.hash);
    struct stat st2;
    CHECK(stat(b2.path, &st2) == 0);
    CHECK_INT_EQ(st2.st_ino, st1.st_ino);
    CHECK_INT_EQ(st2.st_mtim.tv_sec, st1.st_mtim.tv_sec);
    CHECK_INT_EQ(st2.st_mtim.tv_nsec, st1.st_mtim.tv_nsec);

    /* An edited env: a new image; gc keeps it and removes the old one and build leftovers,
     * and leaves another template's files alone. */
    char *env[] = {"A=2", "B=x y", NULL};
    t.app_env = env;
    struct built b3 = build_ok(&t, NULL);
    CHECK(strcmp(b3.hash, b.hash) != 0);
    CHECK_INT_EQ(count_images(), 2);
    char junk[3][4400];
    snprintf(junk[0], sizeof(junk[0]), "%s/stage-echo-%s.abcDEF", cache_dir(), b.hash);
    snprintf(junk[1], sizeof(junk[1]), "%s/root-echo-%s.abc123.tmp", cache_dir(), b.hash);
    snprintf(junk[2], sizeof(junk[2]), "%s/root-echo-x-%s.img", cache_dir(), b.hash);
    CHECK(mkdir(junk[0], 0700) == 0);
    CHECK(test_write_file("cache/stage-echo-x.abcDEF", "", 0) != NULL);
    char inner[4500];
    snprintf(inner, sizeof(inner), "%s/f", junk[0]);
    CHECK(close(open(inner, O_CREAT | O_WRONLY, 0600)) == 0);
    CHECK(close(open(junk[1], O_CREAT | O_WRONLY, 0600)) == 0);
    CHECK(close(open(junk[2], O_CREAT | O_WRONLY, 0600)) == 0);
    CHECK_INT_EQ(sch_vmroot_gc(cache_dir(), "echo", b3.hash), 3);
    CHECK(access(b.path, F_OK) != 0);
    CHECK(access(b3.path, F_OK) == 0);
    CHECK(access(junk[0], F_OK) != 0 && access(junk[1], F_OK) != 0);
    CHECK(access(junk[2], F_OK) == 0); /* template "echo-x" */
    CHECK_INT_EQ(sch_vmroot_gc(cache_dir(), "echo", NULL), 1);
    CHECK(access(b3.path, F_OK) != 0);
    CHECK_INT_EQ(sch_vmroot_gc(cache_dir(), "../x", NULL), -EINVAL);
}

/* The image is shared by every VM of the template: none of the host's /etc but what is listed,
 * and a ro_binds link out of its tree is kept as a link, never followed. */
TEST(image_holds_no_host_etc_secrets)
{
    need_tools();
    char rb[4200], link[4300];
    snprintf(rb, sizeof(rb), "%s/rb", test_tmpdir());
    CHECK(mkdir(rb, 0755) == 0);
    snprintf(link, sizeof(link), "%s/secret", rb);
    CHECK(symlink("/etc/shadow", link) == 0);
    test_write_file("rb/data.txt", "hello", (size_t)-1);
    char *binds[] = {rb, NULL};
    char *cmd[] = {"true", NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    struct built b = build_ok(&t, binds);
    CHECK_STR_EQ(type_in(b.path, link), "symlink");
    char req[4400];
    snprintf(req, sizeof(req), "cat \"%s/data.txt\"", rb);
    CHECK_STR_EQ(dbg(b.path, req), "hello");
    CHECK_STR_EQ(type_in(b.path, "/etc/shadow"), "");
    CHECK_STR_EQ(type_in(b.path, "/etc/hostname"), "");
    CHECK_CONTAINS(dbg(b.path, "cat /etc/passwd"), "app:x:1000:1000:app:/workspace:");
    CHECK(!test_contains(dbg(b.path, "cat /etc/passwd"), "daemon:"));
    const char *ls = dbg(b.path, "ls -p /etc");
    static const char *const allowed[] = {
        "/./",           "/../",    "/passwd/", "/group/",      "/hosts/", "/nsswitch.conf/",
        "/resolv.conf/", "/berth/", "/ssl/",    "/ld.so.cache/"};
    /* ls -p lines: /ino/mode/uid/gid/name/size/ */
    for (const char *l = ls; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l)) {
        if (*l != '/')
            continue;
        const char *name = l;
        for (int k = 0; k < 4 && name; k++)
            name = strchr(name + 1, '/');
        CHECK(name != NULL);
        int ok = 0;
        for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
            ok |= strncmp(name, allowed[i], strlen(allowed[i])) == 0;
        CHECK_MSG(ok, "unexpected entry in the image's /etc: %.60s", name);
    }
}

TEST(key_follows_mtime_and_env_only)
{
    need_tools();
    /* A rootfs template: a tiny tree, quick to build. */
    char root[4200];
    snprintf(root, sizeof(root), "%s/root", test_tmpdir());
    CHECK(mkdir(root, 0755) == 0);
    CHECK(test_write_file("root/app", "#!/bin/sh\n", (size_t)-1) != NULL);
    char app[4300];
    snprintf(app, sizeof(app), "%s/app", root);
    CHECK(chmod(app, 0755) == 0);
    char *cmd[] = {"/app", NULL};
    char *env1[] = {"A=1", NULL}, *env2[] = {"A=2", NULL};
    struct cm_template t = tpl_of(cmd, env1);
    t.rootfs = root;
    struct built a = build_ok(&t, NULL);
    CHECK_STR_EQ(type_in(a.path, "/app"), "regular");
    CHECK_STR_EQ(type_in(a.path, "/etc/berth/guest.conf"), "regular");
    CHECK_CONTAINS(dbg(a.path, "cat /etc/berth/guest.conf"), "\narg=/app\n");
    CHECK_STR_EQ(build_ok(&t, NULL).hash, a.hash); /* nothing changed */
    t.app_env = env2;
    struct built b = build_ok(&t, NULL);
    CHECK(strcmp(b.hash, a.hash) != 0);
    t.app_env = env1;
    CHECK_STR_EQ(build_ok(&t, NULL).hash, a.hash); /* back: the first image again */
    struct timespec ts[2] = {{.tv_sec = 1000000000, .tv_nsec = 0},
                             {.tv_sec = 1000000000, .tv_nsec = 1}};
    CHECK(utimensat(AT_FDCWD, app, ts, 0) == 0);
    struct built c = build_ok(&t, NULL);
    CHECK(strcmp(c.hash, a.hash) != 0 && strcmp(c.hash, b.hash) != 0);
    CHECK_INT_EQ(count_images(), 3);
    /* Rewritten in place (same inode), same size, its mtime set back as a reproducible build
     * does: the ctime still says it is new. */
    CHECK(test_write_file("root/app", "#!/bin/s\n\n", (size_t)-1) != NULL);
    CHECK(utimensat(AT_FDCWD, app, ts, 0) == 0);
    struct built c2 = build_ok(&t, NULL);
    CHECK(strcmp(c2.hash, c.hash) != 0);
    CHECK_CONTAINS(dbg(c2.path, "cat /app"), "#!/bin/s\n\n");
    /* A directory's own mtime is not content. */
    char sub[4300];
    snprintf(sub, sizeof(sub), "%s/sub", root);
    CHECK(mkdir(sub, 0755) == 0);
    struct built d = build_ok(&t, NULL);
    CHECK(utimensat(AT_FDCWD, sub, ts, 0) == 0);
    CHECK(utimensat(AT_FDCWD, root, ts, 0) == 0);
    CHECK_STR_EQ(build_ok(&t, NULL).hash, d.hash);
}

/* ro_binds are copied over a rootfs too, hiding what the rootfs has there (a bind mount). */
TEST(ro_binds_over_a_rootfs)
{
    need_tools();
    char root[4200], rb[4200], shadow[8400];
    snprintf(root, sizeof(root), "%s/root", test_tmpdir());
    snprintf(rb, sizeof(rb), "%s/rb", test_tmpdir());
    snprintf(shadow, sizeof(shadow), "%s%s", root, rb);
    CHECK(sch_mkdir_p(shadow, 0755) == 0);
    CHECK(mkdir(rb, 0755) == 0);
    test_write_file("root/app", "#!/bin/sh\n", (size_t)-1);
    char app[4300], old[8500];
    snprintf(app, sizeof(app), "%s/app", root);
    CHECK(chmod(app, 0755) == 0);
    snprintf(old, sizeof(old), "%s/old", shadow);
    CHECK(close(open(old, O_CREAT | O_WRONLY, 0644)) == 0);
    test_write_file("rb/new", "host", (size_t)-1);
    test_write_file("rb/secret", "only root", (size_t)-1);
    char secret[4300];
    snprintf(secret, sizeof(secret), "%s/secret", rb);
    CHECK(chmod(secret, 0600) == 0); /* no sandbox uid could read it: not in the image either */
    char *cmd[] = {"/app", NULL};
    char *binds[] = {rb, NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    t.rootfs = root;
    /* What a crash mid-build leaves: removed by the next build. */
    char junk[2][4400];
    snprintf(junk[0], sizeof(junk[0]), "%s/stage-echo-0123456789abcdef.aBc123", cache_dir());
    snprintf(junk[1], sizeof(junk[1]), "%s/root-echo-0123456789abcdef.aBc123.tmp", cache_dir());
    CHECK(mkdir(junk[0], 0700) == 0);
    CHECK(close(open(junk[1], O_CREAT | O_WRONLY, 0600)) == 0);
    struct built b = build_ok(&t, binds);
    CHECK(access(junk[0], F_OK) != 0 && access(junk[1], F_OK) != 0);
    char p1[4300], p2[4300];
    snprintf(p1, sizeof(p1), "%s/new", rb);
    snprintf(p2, sizeof(p2), "%s/old", rb);
    CHECK_STR_EQ(type_in(b.path, p1), "regular");
    CHECK_STR_EQ(type_in(b.path, p2), "");
    CHECK_STR_EQ(type_in(b.path, secret), "");
    CHECK_STR_EQ(type_in(b.path, "/app"), "regular");
}

TEST(script_command_brings_its_interpreter)
{
    need_tools();
    test_write_file("app.sh", "#!/bin/sh\nexec true\n", (size_t)-1);
    char app[4300];
    snprintf(app, sizeof(app), "%s/app.sh", test_tmpdir());
    CHECK(chmod(app, 0755) == 0);
    char *cmd[] = {app, NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    struct built b = build_ok(&t, NULL);
    CHECK_STR_EQ(type_in(b.path, app), "regular");
    CHECK_STR_EQ(type_in(b.path, real("/bin/sh")), "regular");
    Dl_info di;
    CHECK(dladdr((void *)gnu_get_libc_version, &di) && di.dli_fname);
    CHECK_STR_EQ(type_in(b.path, real(di.dli_fname)), "regular");
}

TEST(missing_command_is_a_clear_error)
{
    char *cmd[] = {"no-such-command-berth", NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    struct built b = build(&t, NULL);
    CHECK_INT_EQ(b.rc, -ENOENT);
    CHECK_CONTAINS(b.err, "'no-such-command-berth': not found in /usr/local/sbin:");
    char *cmd2[] = {"/nonexistent/app", NULL};
    t = tpl_of(cmd2, NULL);
    b = build(&t, NULL);
    CHECK_INT_EQ(b.rc, -ENOENT);
    CHECK_CONTAINS(b.err, "/nonexistent/app");
    char *cmd3[] = {"./app", NULL};
    t = tpl_of(cmd3, NULL);
    CHECK_INT_EQ(build(&t, NULL).rc, -EINVAL);
}

TEST(refuses_host_root_and_cache_overlap)
{
    char *cmd[] = {"true", NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    t.rootfs = "/";
    struct built b = build(&t, NULL);
    CHECK_INT_EQ(b.rc, -EINVAL);
    CHECK_CONTAINS(b.err, "host's /");
    t.rootfs = (char *)test_tmpdir(); /* holds the cache dir */
    b = build(&t, NULL);
    CHECK_INT_EQ(b.rc, -EINVAL);
    CHECK_CONTAINS(b.err, "overlaps the image cache");
    t.rootfs = NULL;
    char *binds[] = {(char *)test_tmpdir(), NULL};
    b = build(&t, binds);
    CHECK_INT_EQ(b.rc, -EINVAL);
    CHECK_CONTAINS(b.err, "ro_binds");
    t.name = "../x";
    CHECK_INT_EQ(build(&t, NULL).rc, -EINVAL);
    /* A cache dir others may write to: they could plant an image under a reused key. */
    t.name = "echo";
    CHECK(chmod(cache_dir(), 0777) == 0);
    b = build(&t, NULL);
    CHECK_INT_EQ(b.rc, -EPERM);
    CHECK_CONTAINS(b.err, "no one else may write");
}

TEST(static_binary_needs_no_libraries)
{
    need_tools();
    /* Debian's ldconfig is linked statically. */
    FILE *f = popen("ldd /sbin/ldconfig 2>&1", "r");
    char line[256] = "";
    CHECK(f != NULL);
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    pclose(f);
    if (!test_contains(line, "statically linked") && !test_contains(line, "not a dynamic"))
        test_skip("no static binary at /sbin/ldconfig here");
    char *cmd[] = {"/sbin/ldconfig", NULL};
    struct cm_template t = tpl_of(cmd, NULL);
    struct built b = build_ok(&t, NULL);
    CHECK_STR_EQ(type_in(b.path, real("/sbin/ldconfig")), "regular");
    Dl_info di;
    CHECK(dladdr((void *)gnu_get_libc_version, &di) && di.dli_fname);
    CHECK_STR_EQ(type_in(b.path, real(di.dli_fname)), "");
    CHECK_CONTAINS(dbg(b.path, "cat /etc/berth/guest.conf"), "\narg=/sbin/ldconfig\n");
}
