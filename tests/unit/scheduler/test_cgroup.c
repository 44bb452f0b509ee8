/* scheduler/cgroup.c: the values written into cgroup v1 and v2 controller files, and that an
 * unusable hierarchy is reported, never silently ignored. The v1 and v2 paths run over fake
 * hierarchies: plain files and directories under the test's directory, described by a fake
 * mountinfo and /proc/self/cgroup (a kernel creates a child's files itself; here the test
 * creates the probe's and the instance's directories with their files beforehand). One test
 * runs on the host's own hierarchy, as root, for the rules only a kernel enforces. */
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/config.h"
#include "common/json.h"
#include "scheduler/cgroup.h"
#include "scheduler/paths.h"
#include "tests/harness/test.h"

/* ------------------------------------------------------------------ fake hierarchies */

/* test_tmpdir()/<rel> (static storage, eight in rotation: one call can use several). */
static const char *at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *at(const char *fmt, ...)
{
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ % 8];
    int n = snprintf(b, sizeof(bufs[0]), "%s/", test_tmpdir());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, sizeof(bufs[0]) - (size_t)n, fmt, ap);
    va_end(ap);
    return b;
}

/* Creates (or empties) file <path> with <content>, and its directories. */
static void put(const char *path, const char *content)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    CHECK_INT_EQ(sch_mkdir_p(dir, 0755), 0);
    FILE *f = fopen(path, "w");
    CHECK_MSG(f != NULL, "cannot create %s", path);
    fputs(content, f);
    CHECK_INT_EQ(fclose(f), 0);
}

/* The content of <path> ("(missing)" when it does not exist). Static storage. */
static const char *get(const char *path)
{
    static char buf[4096];
    FILE *f = fopen(path, "r");
    if (!f)
        return "(missing)";
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* A cgroup directory <dir> holding the empty files listed in <files> (NULL-terminated). */
static void cgdir(const char *dir, const char *const *files)
{
    CHECK_INT_EQ(sch_mkdir_p(dir, 0755), 0);
    for (; *files; files++) {
        char path[2048];
        CHECK(snprintf(path, sizeof(path), "%s/%s", dir, *files) < (int)sizeof(path));
        put(path, "");
    }
}

static const char *const v2_files[] = {"memory.max", "memory.swap.max", "cpu.max",       "pids.max",
                                       "io.max",     "cgroup.freeze",   "cgroup.events", NULL};
static const char *const v1_memory_files[] = {"memory.limit_in_bytes",
                                              "memory.memsw.limit_in_bytes", NULL};
static const char *const v1_cpu_files[] = {"cpu.cfs_period_us", "cpu.cfs_quota_us", NULL};
static const char *const v1_pids_files[] = {"pids.max", NULL};
static const char *const v1_freezer_files[] = {"freezer.state", NULL};
static const char *const v1_blkio_files[] = {
    "blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device", NULL};

/* Makes the parent, probe and instance ("h-1", "h-2") directories under <parent> with
 * <files>. */
static void cgdirs(const char *parent, const char *const *files)
{
    char d[2048];
    cgdir(parent, files);
    CHECK(snprintf(d, sizeof(d), "%s/.probe-%d", parent, (int)getpid()) < (int)sizeof(d));
    cgdir(d, files);
    for (int i = 1; i <= 2; i++) {
        CHECK(snprintf(d, sizeof(d), "%s/h-%d", parent, i) < (int)sizeof(d));
        cgdir(d, files);
    }
}

/* v2 only: a cgroup2 mount at cg/, we live in /job, cgroup_parent "berth" -> cg/job/berth.
 * A real cgroup2 mount outside fs_root comes first in mountinfo and must be ignored. Every
 * level already delegates every controller. */
static void fake_v2(const char *const *files)
{
    char mi[2048];
    snprintf(mi, sizeof(mi),
             "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
             "90 20 0:50 / %s rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n",
             at("cg"));
    put(at("mountinfo"), mi);
    put(at("self_cgroup"), "0::/job\n");
    put(at("cg/cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n");
    put(at("cg/cgroup.subtree_control"), "cpu io memory pids\n");
    put(at("cg/job/cgroup.subtree_control"), "cpu io memory pids\n");
    put(at("cg/job/berth/cgroup.subtree_control"), "cpu io memory pids\n");
    cgdirs(at("cg/job/berth"), files);
}

/* Hybrid, as on this project's CI host: v1 memory (we live in /job), cpu co-mounted with
 * cpuacct, pids, freezer and, with <blkio>, blkio (/job), and a cgroup2 mount with no
 * controllers (so v2's core freezer is not taken either: v1's is mounted). A v1
 * memory mount outside fs_root comes first and must be ignored. */
static void fake_v1(const char *const *memory_files, int blkio)
{
    char mi[4096], bl[1200] = "";
    if (blkio)
        snprintf(bl, sizeof(bl), "38 31 0:35 / %s rw,relatime - cgroup cgroup rw,blkio\n",
                 at("cg/blkio"));
    snprintf(mi, sizeof(mi),
             "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "32 31 0:29 / %s rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
             "35 31 0:42 / %s rw,relatime - cgroup cgroup rw,memory\n"
             "39 31 0:36 / %s rw,relatime - cgroup cgroup rw,pids\n"
             "40 31 0:37 / %s rw,relatime - cgroup cgroup rw,freezer\n"
             "%s"
             "41 31 0:38 / %s rw,relatime - cgroup2 cgroup2 rw\n",
             at("cg/cpu,cpuacct"), at("cg/memory"), at("cg/pids"), at("cg/freezer"), bl,
             at("cg/unified"));
    put(at("mountinfo"), mi);
    put(at("self_cgroup"),
        "8:pids:/\n7:blkio:/job\n6:freezer:/\n4:memory:/job\n1:cpu,cpuacct:/\n0::/\n");
    put(at("cg/unified/cgroup.controllers"), "");
    cgdirs(at("cg/memory/job/berth"), memory_files);
    cgdirs(at("cg/cpu,cpuacct/berth"), v1_cpu_files);
    cgdirs(at("cg/pids/berth"), v1_pids_files);
    cgdirs(at("cg/blkio/job/berth"), v1_blkio_files);
    cgdirs(at("cg/freezer/berth"), v1_freezer_files);
}

static struct sch_cgroups *fake_create(void)
{
    return sch_cgroups_create_at("berth", at("cg"), at("mountinfo"), at("self_cgroup"));
}

/* sch_cgroups_status() as a parsed tree (free with cm_json_free()). */
static struct cm_json *status_of(const struct sch_cgroups *cg)
{
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    sch_cgroups_status(cg, &b);
    char err[128];
    struct cm_json *j = cm_json_parse(b.data, b.len, err, sizeof(err));
    CHECK_MSG(j != NULL, "status is not JSON (%s): %.*s", err, (int)b.len, b.data);
    cm_jbuf_fini(&b);
    return j;
}

static const char *jstr(const struct cm_json *j, const char *obj, const char *key)
{
    const struct cm_json *v = cm_json_get(cm_json_get(j, obj), key);
    return v && v->type == CM_JSON_STRING ? v->str : NULL;
}

/* 1 for true, 0 for false; fails the test for anything else. */
static int jbool(const struct cm_json *j, const char *obj, const char *key)
{
    const struct cm_json *v = cm_json_get(cm_json_get(j, obj), key);
    CHECK_MSG(v && v->type == CM_JSON_BOOL, "no boolean %s.%s", obj, key);
    return v->boolean;
}

static double jnum(const struct cm_json *j, const char *obj, const char *key)
{
    const struct cm_json *v = cm_json_get(cm_json_get(j, obj), key);
    CHECK_MSG(v && v->type == CM_JSON_NUMBER, "no number %s.%s", obj, key);
    return v->number;
}

static const char *mem(int v, uint64_t b)
{
    static char buf[64];
    CHECK_INT_EQ(sch_cg_format_memory(v, b, buf, sizeof(buf)), 0);
    return buf;
}

static const char *cpu(int v, uint32_t millis)
{
    static char buf[64];
    CHECK_INT_EQ(sch_cg_format_cpu(v, millis, buf, sizeof(buf)), 0);
    return buf;
}

static const char *swap(int v, uint64_t memory)
{
    static char buf[64];
    CHECK_INT_EQ(sch_cg_format_swap(v, memory, buf, sizeof(buf)), 0);
    return buf;
}

static const char *pids(int v, uint64_t n)
{
    static char buf[64];
    CHECK_INT_EQ(sch_cg_format_pids(v, n, buf, sizeof(buf)), 0);
    return buf;
}

TEST(memory_values)
{
    CHECK_STR_EQ(mem(1, 268435456), "268435456");
    CHECK_STR_EQ(mem(2, 268435456), "268435456");
    CHECK_STR_EQ(mem(1, 0), "-1");
    CHECK_STR_EQ(mem(2, 0), "max");
    CHECK_STR_EQ(mem(2, UINT64_MAX), "18446744073709551615");
}

TEST(cpu_values)
{
    /* cpus 0.5 = 500 millis: half of each 100 ms period. */
    CHECK_STR_EQ(cpu(1, 500), "50000");
    CHECK_STR_EQ(cpu(2, 500), "50000 100000");
    CHECK_STR_EQ(cpu(1, 2000), "200000");
    CHECK_STR_EQ(cpu(2, 2000), "200000 100000");
    /* 0.01 core would be 1000 us; anything smaller is raised to the kernel's minimum. */
    CHECK_STR_EQ(cpu(1, 10), "1000");
    CHECK_STR_EQ(cpu(2, 1), "1000 100000");
    CHECK_STR_EQ(cpu(1, 0), "-1");
    CHECK_STR_EQ(cpu(2, 0), "max 100000");
    CHECK_STR_EQ(cpu(2, 1024000), "102400000 100000");
}

TEST(swap_values)
{
    /* v1 limits memory + swap: the same value as memory leaves no room for swap. */
    CHECK_STR_EQ(swap(1, 268435456), "268435456");
    CHECK_STR_EQ(swap(1, 0), "-1");
    /* v2 limits swap alone. */
    CHECK_STR_EQ(swap(2, 268435456), "0");
    CHECK_STR_EQ(swap(2, 0), "max");
    char buf[4];
    CHECK_INT_EQ(sch_cg_format_swap(1, 268435456, buf, sizeof(buf)), -ENOSPC);
}

TEST(pids_values)
{
    CHECK_STR_EQ(pids(1, 128), "128");
    CHECK_STR_EQ(pids(2, 4194304), "4194304");
    CHECK_STR_EQ(pids(1, 0), "max");
    CHECK_STR_EQ(pids(2, 0), "max");
}

TEST(io_values)
{
    char buf[128];
    CHECK_INT_EQ(sch_cg_format_io_v1(8, 0, 1048576, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "8:0 1048576");
    CHECK_INT_EQ(sch_cg_format_io_v1(254, 16, 100, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "254:16 100");
    struct sch_cg_io io = {.read_bps = 1048576, .write_iops = 100};
    CHECK_INT_EQ(sch_cg_format_io_v2(8, 0, &io, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "8:0 rbps=1048576 wbps=max riops=max wiops=100");
    io = (struct sch_cg_io){.write_bps = 2097152, .read_iops = 50};
    CHECK_INT_EQ(sch_cg_format_io_v2(259, 3, &io, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "259:3 rbps=max wbps=2097152 riops=50 wiops=max");
    io = (struct sch_cg_io){0};
    CHECK_INT_EQ(sch_cg_format_io_v2(8, 0, &io, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "8:0 rbps=max wbps=max riops=max wiops=max");
    io = (struct sch_cg_io){UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};
    CHECK_INT_EQ(sch_cg_format_io_v2(4095, 1048575, &io, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "4095:1048575 rbps=18446744073709551615 wbps=18446744073709551615 "
                      "riops=18446744073709551615 wiops=18446744073709551615");
    /* Too small: refused wherever the text stops fitting, never cut short. */
    for (size_t len = 1; len < strlen("4095:1048575 rbps=18446744073709551615"); len++)
        CHECK_INT_EQ(sch_cg_format_io_v2(4095, 1048575, &io, buf, len), -ENOSPC);
    CHECK_INT_EQ(sch_cg_format_io_v1(8, 0, 1048576, buf, 11), -ENOSPC);
    CHECK_INT_EQ(sch_cg_format_io_v1(8, 0, 1048576, buf, 12), 0);
}

TEST(small_buffers_are_refused)
{
    char buf[4];
    CHECK_INT_EQ(sch_cg_format_memory(1, 268435456, buf, sizeof(buf)), -ENOSPC);
    CHECK_INT_EQ(sch_cg_format_cpu(2, 500, buf, sizeof(buf)), -ENOSPC);
    CHECK_INT_EQ(sch_cg_format_pids(2, 123456, buf, sizeof(buf)), -ENOSPC);
    CHECK_INT_EQ(sch_cg_format_pids(2, 0, buf, sizeof(buf)), 0);
    CHECK_STR_EQ(buf, "max");
}

TEST(missing_hierarchy_is_reported)
{
    /* No cgroup file system is mounted under the test's directory: every controller is
     * unusable, with a reason, and an instance gets no cgroup directory at all. */
    struct sch_cgroups *cg = sch_cgroups_create("berth", test_tmpdir());
    CHECK_NOT_NULL(cg);
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        CHECK_INT_EQ(sch_cgroups_version(cg, (enum sch_cg_ctrl)i), 0);
        CHECK_NULL(sch_cgroups_parent(cg, (enum sch_cg_ctrl)i));
        CHECK_CONTAINS(sch_cgroups_warning(cg, (enum sch_cg_ctrl)i), "controller mounted under");
        CHECK_CONTAINS(sch_cgroups_warning(cg, (enum sch_cg_ctrl)i),
                       sch_cgroups_ctrl_name((enum sch_cg_ctrl)i));
    }
    struct cm_jbuf b;
    cm_jbuf_init(&b);
    sch_cgroups_status(cg, &b);
    cm_jbuf_raw(&b, "", 1);
    CHECK_CONTAINS(b.data, "\"memory\":{\"version\":0,\"warning\":\"no memory controller");
    CHECK_CONTAINS(b.data, "\"pids\":{\"version\":0,");
    cm_jbuf_fini(&b);
    char **dirs = NULL;
    char err[256];
    struct sch_cg_limits lim = {.memory = 1 << 20, .cpu_millis = 500, .pids = 10};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_NOT_NULL(dirs);
    CHECK_NULL(dirs[0]);
    free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v2_instance_limits)
{
    fake_v2(v2_files);
    struct sch_cgroups *cg = fake_create();
    CHECK_NOT_NULL(cg);
    for (int i = 0; i < SCH_CG_COUNT; i++) {
        CHECK_INT_EQ(sch_cgroups_version(cg, (enum sch_cg_ctrl)i), 2);
        CHECK_STR_EQ(sch_cgroups_parent(cg, (enum sch_cg_ctrl)i), at("cg/job/berth"));
        CHECK_NULL(sch_cgroups_warning(cg, (enum sch_cg_ctrl)i));
    }
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20, .cpu_millis = 500, .pids = 64};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_INT_EQ(cm_strv_len(dirs), SCH_CG_COUNT);
    for (size_t i = 0; dirs[i]; i++)
        CHECK_STR_EQ(dirs[i], at("cg/job/berth/h-1"));
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/memory.max")), "268435456");
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/memory.swap.max")), "0");
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/cpu.max")), "50000 100000");
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/pids.max")), "64");
    cm_strv_free(dirs);

    struct cm_json *j = status_of(cg);
    CHECK_INT_EQ(jnum(j, "memory", "version"), 2);
    CHECK_STR_EQ(jstr(j, "memory", "dir"), at("cg/job/berth"));
    CHECK_NULL(jstr(j, "memory", "warning"));
    CHECK_INT_EQ(jbool(j, "memory", "swap"), 1);
    CHECK_NULL(jstr(j, "memory", "swap_warning"));
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v2_freeze_waits_for_the_kernel)
{
    fake_v2(v2_files);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_FREEZER), 2);
    /* No "+freezer" is written anywhere: v2's freezer is no controller. */
    CHECK_STR_EQ(get(at("cg/job/berth/cgroup.subtree_control")), "cpu io memory pids\n");
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {0};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    /* The kernel reports it frozen: done. */
    put(at("cg/job/berth/h-1/cgroup.events"), "populated 1\nfrozen 1\n");
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 1, 5, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/cgroup.freeze")), "1");
    CHECK_INT_EQ(sch_cgroups_frozen(cg, dirs), 1);
    /* It never does: -EAGAIN after the wait, and thawed again. */
    put(at("cg/job/berth/h-1/cgroup.events"), "populated 1\nfrozen 0\n");
    put(at("cg/job/berth/h-1/cgroup.freeze"), "0");
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 1, 2, err, sizeof(err)), -EAGAIN);
    CHECK_CONTAINS(err, "did not freeze within 2 ms");
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/cgroup.freeze")), "0");
    CHECK_INT_EQ(sch_cgroups_frozen(cg, dirs), 0);
    /* "frozen 10" is not "frozen 1". */
    put(at("cg/job/berth/h-1/cgroup.events"), "frozen 10\n");
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 1, 1, err, sizeof(err)), -EAGAIN);
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 0, 1, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/cgroup.freeze")), "0");
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v2_freezer_needs_cgroup_freeze)
{
    /* A kernel before 5.2 has no cgroup.freeze: the probe fails, the freezer is unusable. */
    static const char *const old[] = {"memory.max", "memory.swap.max", "cpu.max",
                                      "pids.max",   "io.max",          NULL};
    fake_v2(old);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_FREEZER), 0);
    CHECK_CONTAINS(sch_cgroups_warning(cg, SCH_CG_FREEZER), "cgroup.freeze");
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {0};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 1, 1, err, sizeof(err)), -ENOTSUP);
    CHECK_CONTAINS(err, "freezer is unusable");
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v2_io_limits)
{
    fake_v2(v2_files);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_IO), 2);
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    /* All zeros: nothing is written. */
    struct sch_cg_io io = {0};
    CHECK_INT_EQ(sch_cgroups_limit_io(cg, dirs, 8, 0, &io, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/io.max")), "");
    io = (struct sch_cg_io){.read_bps = 1048576, .write_iops = 100};
    CHECK_INT_EQ(sch_cgroups_limit_io(cg, dirs, 8, 0, &io, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/io.max")),
                 "8:0 rbps=1048576 wbps=max riops=max wiops=100");
    cm_strv_free(dirs);
    struct cm_json *j = status_of(cg);
    CHECK_INT_EQ(jnum(j, "io", "version"), 2);
    CHECK_STR_EQ(jstr(j, "io", "dir"), at("cg/job/berth"));
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v2_parent_limits)
{
    fake_v2(v2_files);
    struct sch_cgroups *cg = fake_create();
    char err[256] = "";
    CHECK_INT_EQ(sch_cgroups_limit_parent(cg, 1 << 30, 1500, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/memory.max")), "1073741824");
    CHECK_STR_EQ(get(at("cg/job/berth/memory.swap.max")), "0");
    CHECK_STR_EQ(get(at("cg/job/berth/cpu.max")), "150000 100000");
    struct cm_json *j = status_of(cg);
    CHECK_UINT_EQ(jnum(j, "memory", "limit"), 1 << 30);
    CHECK_UINT_EQ(jnum(j, "cpu", "limit_millis"), 1500);
    cm_json_free(j);
    /* 0 = no limit. */
    put(at("cg/job/berth/memory.max"), "");
    put(at("cg/job/berth/memory.swap.max"), "");
    put(at("cg/job/berth/cpu.max"), "");
    CHECK_INT_EQ(sch_cgroups_limit_parent(cg, 0, 0, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/memory.max")), "max");
    CHECK_STR_EQ(get(at("cg/job/berth/memory.swap.max")), "max");
    CHECK_STR_EQ(get(at("cg/job/berth/cpu.max")), "max 100000");
    j = status_of(cg);
    CHECK_UINT_EQ(jnum(j, "memory", "limit"), 0);
    CHECK_UINT_EQ(jnum(j, "cpu", "limit_millis"), 0);
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(parent_limit_failure_is_reported_and_the_rest_written)
{
    /* The parent's memory.max is gone: the error names it, the CPU cap is still written, and
     * the status shows only what was written. */
    fake_v2(v2_files);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(unlink(at("cg/job/berth/memory.max")), 0);
    char err[256] = "";
    CHECK_INT_EQ(sch_cgroups_limit_parent(cg, 1 << 30, 1500, err, sizeof(err)), -ENOENT);
    CHECK_CONTAINS(err, "memory.max");
    CHECK_STR_EQ(get(at("cg/job/berth/cpu.max")), "150000 100000");
    struct cm_json *j = status_of(cg);
    CHECK_UINT_EQ(jnum(j, "memory", "limit"), 0);
    CHECK_UINT_EQ(jnum(j, "cpu", "limit_millis"), 1500);
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(parent_limits_skip_unusable_controllers)
{
    struct sch_cgroups *cg = sch_cgroups_create("berth", test_tmpdir());
    char err[256] = "";
    CHECK_INT_EQ(sch_cgroups_limit_parent(cg, 1 << 30, 1500, err, sizeof(err)), 0);
    struct cm_json *j = status_of(cg);
    CHECK_NULL(cm_json_get(cm_json_get(j, "memory"), "limit"));
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v2_no_memory_limit_leaves_swap_unlimited)
{
    fake_v2(v2_files);
    struct sch_cgroups *cg = fake_create();
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.pids = 64};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/memory.max")), "max");
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/memory.swap.max")), "max");
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v2_without_swap_accounting_warns_and_limits_memory)
{
    /* No memory.swap.max in any cgroup (swap accounting off): memory stays usable, the status
     * says that swap is not limited, and instances get their memory limit. */
    static const char *const no_swap[] = {"memory.max", "cpu.max", "pids.max", "io.max", NULL};
    fake_v2(no_swap);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_MEMORY), 2);
    CHECK_NULL(sch_cgroups_warning(cg, SCH_CG_MEMORY));
    CHECK_CONTAINS(sch_cgroups_swap_warning(cg), "swap is not limited");
    CHECK_CONTAINS(sch_cgroups_swap_warning(cg), "memory.swap.max");
    struct cm_json *j = status_of(cg);
    CHECK_INT_EQ(jbool(j, "memory", "swap"), 0);
    CHECK_CONTAINS(jstr(j, "memory", "swap_warning"), "memory.swap.max");
    cm_json_free(j);
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/memory.max")), "268435456");
    CHECK_STR_EQ(get(at("cg/job/berth/h-1/memory.swap.max")), "(missing)");
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v2_controllers_are_enabled_from_the_mount_down)
{
    /* Every level lacks "io" in its subtree_control: each gets "+io" (a plain file keeps the
     * bytes the write did not cover, so the write shows at its start). */
    fake_v2(v2_files);
    put(at("cg/cgroup.subtree_control"), "cpu memory pids\n");
    put(at("cg/job/cgroup.subtree_control"), "cpu memory pids\n");
    put(at("cg/job/berth/cgroup.subtree_control"), "cpu memory pids\n");
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_IO), 2);
    CHECK_STR_EQ(get(at("cg/cgroup.subtree_control")), "+io memory pids\n");
    CHECK_STR_EQ(get(at("cg/job/cgroup.subtree_control")), "+io memory pids\n");
    CHECK_STR_EQ(get(at("cg/job/berth/cgroup.subtree_control")), "+io memory pids\n");
    sch_cgroups_destroy(cg);
}

TEST(v2_controller_not_listed_is_unusable)
{
    fake_v2(v2_files);
    put(at("cg/cgroup.controllers"), "cpu memory\n");
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_MEMORY), 2);
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_PIDS), 0);
    CHECK_CONTAINS(sch_cgroups_warning(cg, SCH_CG_PIDS), "no pids controller mounted under");
    sch_cgroups_destroy(cg);
}

TEST(v1_freeze_and_thaw)
{
    fake_v1(v1_memory_files, 1);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_FREEZER), 1);
    CHECK_STR_EQ(sch_cgroups_parent(cg, SCH_CG_FREEZER), at("cg/freezer/berth"));
    /* The probe left its child thawed. */
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {0};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    /* A plain file reads back what was written: FROZEN at once. */
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 1, 5, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/freezer/berth/h-1/freezer.state")), "FROZEN");
    CHECK_INT_EQ(sch_cgroups_frozen(cg, dirs), 1);
    CHECK_INT_EQ(sch_cgroups_freeze(cg, dirs, 0, 5, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/freezer/berth/h-1/freezer.state")), "THAWED");
    CHECK_INT_EQ(sch_cgroups_frozen(cg, dirs), 0);
    /* FREEZING counts as frozen for sch_cgroups_frozen() (a task holds it up). */
    put(at("cg/freezer/berth/h-1/freezer.state"), "FREEZING\n");
    CHECK_INT_EQ(sch_cgroups_frozen(cg, dirs), 1);
    /* An instance without a freezer cgroup (made before it existed): a clear error. */
    char *only_memory[] = {dirs[0], NULL};
    CHECK_INT_EQ(sch_cgroups_freeze(cg, only_memory, 1, 5, err, sizeof(err)), -ENOENT);
    CHECK_CONTAINS(err, "no freezer cgroup");
    CHECK_INT_EQ(sch_cgroups_frozen(cg, only_memory), -ENOENT);
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v1_instance_limits)
{
    fake_v1(v1_memory_files, 1);
    struct sch_cgroups *cg = fake_create();
    CHECK_NOT_NULL(cg);
    CHECK_STR_EQ(sch_cgroups_parent(cg, SCH_CG_MEMORY), at("cg/memory/job/berth"));
    CHECK_STR_EQ(sch_cgroups_parent(cg, SCH_CG_CPU), at("cg/cpu,cpuacct/berth"));
    CHECK_STR_EQ(sch_cgroups_parent(cg, SCH_CG_PIDS), at("cg/pids/berth"));
    for (int i = 0; i < SCH_CG_COUNT; i++)
        CHECK_INT_EQ(sch_cgroups_version(cg, (enum sch_cg_ctrl)i), 1);
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20, .cpu_millis = 1500, .pids = 64};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_STR_EQ(dirs[0], at("cg/memory/job/berth/h-1"));
    CHECK_STR_EQ(dirs[1], at("cg/cpu,cpuacct/berth/h-1"));
    CHECK_STR_EQ(dirs[2], at("cg/pids/berth/h-1"));
    CHECK_STR_EQ(dirs[3], at("cg/blkio/job/berth/h-1"));
    CHECK_STR_EQ(dirs[4], at("cg/freezer/berth/h-1"));
    CHECK_NULL(dirs[5]);
    CHECK_STR_EQ(get(at("cg/memory/job/berth/h-1/memory.limit_in_bytes")), "268435456");
    CHECK_STR_EQ(get(at("cg/memory/job/berth/h-1/memory.memsw.limit_in_bytes")), "268435456");
    CHECK_STR_EQ(get(at("cg/cpu,cpuacct/berth/h-1/cpu.cfs_period_us")), "100000");
    CHECK_STR_EQ(get(at("cg/cpu,cpuacct/berth/h-1/cpu.cfs_quota_us")), "150000");
    CHECK_STR_EQ(get(at("cg/pids/berth/h-1/pids.max")), "64");
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

/* The CFS quota v1 wrote for instance <id> with <millis>. */
static const char *v1_quota(struct sch_cgroups *cg, const char *id, uint32_t millis)
{
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.cpu_millis = millis};
    put(at("cg/cpu,cpuacct/berth/%s/cpu.cfs_quota_us", id), ""); /* a plain file keeps its tail */
    CHECK_MSG(sch_cgroups_create_instance(cg, id, &lim, &dirs, err, sizeof(err)) == 0, "%s", err);
    cm_strv_free(dirs);
    return get(at("cg/cpu,cpuacct/berth/%s/cpu.cfs_quota_us", id));
}

TEST(v1_cpu_quota_is_kept_under_the_ancestors)
{
    /* v1 refuses a child's quota above its nearest limited ancestor's: the instance gets the
     * ancestor's. A quota file above the mount point is not an ancestor. */
    fake_v1(v1_memory_files, 1);
    put(at("cg/cpu.cfs_quota_us"), "1000\n");
    put(at("cg/cpu.cfs_period_us"), "100000\n");
    put(at("cg/cpu,cpuacct/cpu.cfs_quota_us"), "-1\n");
    put(at("cg/cpu,cpuacct/cpu.cfs_period_us"), "100000\n");
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_CPU), 1);
    CHECK_STR_EQ(v1_quota(cg, "h-1", 2000), "200000");
    /* The parent at 1.5 CPUs. */
    put(at("cg/cpu,cpuacct/berth/cpu.cfs_quota_us"), "150000\n");
    put(at("cg/cpu,cpuacct/berth/cpu.cfs_period_us"), "100000\n");
    CHECK_STR_EQ(v1_quota(cg, "h-1", 2000), "150000");
    CHECK_STR_EQ(v1_quota(cg, "h-1", 1500), "150000");
    CHECK_STR_EQ(v1_quota(cg, "h-1", 1000), "100000");
    CHECK_STR_EQ(v1_quota(cg, "h-1", 0), "-1");
    /* The mount's root at 1 CPU with another period: the smallest ancestor wins. */
    put(at("cg/cpu,cpuacct/cpu.cfs_quota_us"), "25000\n");
    put(at("cg/cpu,cpuacct/cpu.cfs_period_us"), "25000\n");
    CHECK_STR_EQ(v1_quota(cg, "h-1", 2000), "100000");
    /* 1/3 CPU rounds down (333 millis): never above the ancestor's share. */
    put(at("cg/cpu,cpuacct/cpu.cfs_quota_us"), "100000\n");
    put(at("cg/cpu,cpuacct/cpu.cfs_period_us"), "300000\n");
    CHECK_STR_EQ(v1_quota(cg, "h-1", 2000), "33300");
    sch_cgroups_destroy(cg);
}

TEST(v1_parent_limits)
{
    fake_v1(v1_memory_files, 1);
    struct sch_cgroups *cg = fake_create();
    /* An instance started before the cap, at 2 CPUs. */
    CHECK_STR_EQ(v1_quota(cg, "h-1", 2000), "200000");
    char err[256] = "";
    CHECK_INT_EQ(sch_cgroups_limit_parent(cg, 1 << 30, 1500, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/memory/job/berth/memory.limit_in_bytes")), "1073741824");
    CHECK_STR_EQ(get(at("cg/memory/job/berth/memory.memsw.limit_in_bytes")), "1073741824");
    CHECK_STR_EQ(get(at("cg/cpu,cpuacct/berth/cpu.cfs_period_us")), "100000");
    CHECK_STR_EQ(get(at("cg/cpu,cpuacct/berth/cpu.cfs_quota_us")), "150000");
    /* The kernel would refuse the parent under its child: the child came down first. */
    CHECK_STR_EQ(get(at("cg/cpu,cpuacct/berth/h-1/cpu.cfs_quota_us")), "150000");
    /* New instances stay under the cap. */
    CHECK_STR_EQ(v1_quota(cg, "h-2", 4000), "150000");
    struct cm_json *j = status_of(cg);
    CHECK_UINT_EQ(jnum(j, "memory", "limit"), 1 << 30);
    CHECK_UINT_EQ(jnum(j, "cpu", "limit_millis"), 1500);
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v1_parent_cpu_cap_stays_under_its_ancestors)
{
    fake_v1(v1_memory_files, 1);
    put(at("cg/cpu,cpuacct/cpu.cfs_quota_us"), "100000\n");
    put(at("cg/cpu,cpuacct/cpu.cfs_period_us"), "100000\n");
    struct sch_cgroups *cg = fake_create();
    char err[256] = "";
    CHECK_INT_EQ(sch_cgroups_limit_parent(cg, 0, 1500, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/cpu,cpuacct/berth/cpu.cfs_quota_us")), "100000");
    CHECK_STR_EQ(get(at("cg/memory/job/berth/memory.limit_in_bytes")), "-1");
    CHECK_STR_EQ(get(at("cg/memory/job/berth/memory.memsw.limit_in_bytes")), "-1");
    struct cm_json *j = status_of(cg);
    CHECK_UINT_EQ(jnum(j, "cpu", "limit_millis"), 1000);
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v1_io_limits)
{
    fake_v1(v1_memory_files, 1);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_IO), 1);
    CHECK_STR_EQ(sch_cgroups_parent(cg, SCH_CG_IO), at("cg/blkio/job/berth"));
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    /* Found by its parent wherever it is in the list. */
    char *rev[SCH_CG_COUNT + 1] = {0};
    size_t n = cm_strv_len(dirs);
    CHECK_INT_EQ(n, SCH_CG_COUNT);
    for (size_t i = 0; i < n; i++)
        rev[i] = dirs[n - 1 - i];
    struct sch_cg_io io = {.read_bps = 1048576, .write_iops = 100};
    CHECK_INT_EQ(sch_cgroups_limit_io(cg, rev, 254, 0, &io, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/blkio/job/berth/h-1/blkio.throttle.read_bps_device")), "254:0 1048576");
    CHECK_STR_EQ(get(at("cg/blkio/job/berth/h-1/blkio.throttle.write_iops_device")), "254:0 100");
    /* 0 fields are not written. */
    CHECK_STR_EQ(get(at("cg/blkio/job/berth/h-1/blkio.throttle.write_bps_device")), "");
    CHECK_STR_EQ(get(at("cg/blkio/job/berth/h-1/blkio.throttle.read_iops_device")), "");
    /* A list without the io cgroup (e.g. other controllers only). */
    rev[0] = NULL;
    err[0] = '\0';
    CHECK_INT_EQ(sch_cgroups_limit_io(cg, rev, 254, 0, &io, err, sizeof(err)), -ENOENT);
    CHECK_CONTAINS(err, "no io cgroup");
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(v1_without_blkio_io_is_unusable)
{
    /* No blkio mount, and the hybrid cgroup2 mount lists no controllers: io is unusable, the
     * instance gets no io cgroup, and io limits are refused with -ENOTSUP and the reason. */
    fake_v1(v1_memory_files, 0);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_MEMORY), 1);
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_IO), 0);
    CHECK_CONTAINS(sch_cgroups_warning(cg, SCH_CG_IO), "no io controller mounted under");
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_INT_EQ(cm_strv_len(dirs), 4) /* memory, cpu, pids, freezer */;
    struct sch_cg_io io = {0};
    CHECK_INT_EQ(sch_cgroups_limit_io(cg, dirs, 254, 0, &io, err, sizeof(err)), 0);
    io.write_bps = 1 << 20;
    CHECK_INT_EQ(sch_cgroups_limit_io(cg, dirs, 254, 0, &io, err, sizeof(err)), -ENOTSUP);
    CHECK_CONTAINS(err, "io controller unusable");
    CHECK_CONTAINS(err, "no io controller mounted under");
    cm_strv_free(dirs);
    struct cm_json *j = status_of(cg);
    CHECK_INT_EQ(jnum(j, "io", "version"), 0);
    CHECK_CONTAINS(jstr(j, "io", "warning"), "no io controller mounted under");
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v1_blkio_without_throttle_files_is_unusable)
{
    /* A kernel without CONFIG_BLK_DEV_THROTTLING has no blkio.throttle.* files. */
    fake_v1(v1_memory_files, 1);
    char probe[2048];
    CHECK(snprintf(probe, sizeof(probe), "%s/.probe-%d/blkio.throttle.write_iops_device",
                   at("cg/blkio/job/berth"), (int)getpid()) < (int)sizeof(probe));
    CHECK_INT_EQ(unlink(probe), 0);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_IO), 0);
    CHECK_CONTAINS(sch_cgroups_warning(cg, SCH_CG_IO), "blkio.throttle.write_iops_device");
    sch_cgroups_destroy(cg);
}

TEST(v1_without_swap_accounting_warns_and_limits_memory)
{
    static const char *const no_memsw[] = {"memory.limit_in_bytes", NULL};
    fake_v1(no_memsw, 1);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_MEMORY), 1);
    CHECK_CONTAINS(sch_cgroups_swap_warning(cg), "memory.memsw.limit_in_bytes");
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.memory = 256 << 20};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    CHECK_STR_EQ(get(at("cg/memory/job/berth/h-1/memory.limit_in_bytes")), "268435456");
    cm_strv_free(dirs);
    struct cm_json *j = status_of(cg);
    CHECK_INT_EQ(jbool(j, "memory", "swap"), 0);
    cm_json_free(j);
    sch_cgroups_destroy(cg);
}

TEST(v1_missing_limit_file_fails_the_probe)
{
    /* A pids hierarchy whose children lack pids.max cannot limit anything: unusable, with the
     * file named, and instances get no pids directory. */
    fake_v1(v1_memory_files, 1);
    char probe[2048];
    CHECK(snprintf(probe, sizeof(probe), "%s/.probe-%d/pids.max", at("cg/pids/berth"),
                   (int)getpid()) < (int)sizeof(probe));
    CHECK_INT_EQ(unlink(probe), 0);
    struct sch_cgroups *cg = fake_create();
    CHECK_INT_EQ(sch_cgroups_version(cg, SCH_CG_PIDS), 0);
    CHECK_CONTAINS(sch_cgroups_warning(cg, SCH_CG_PIDS), "pids.max");
    char **dirs = NULL;
    char err[256] = "";
    struct sch_cg_limits lim = {.pids = 64};
    CHECK_INT_EQ(sch_cgroups_create_instance(cg, "h-1", &lim, &dirs, err, sizeof(err)), 0);
    for (size_t i = 0; dirs[i]; i++)
        CHECK(strstr(dirs[i], "/pids/") == NULL);
    cm_strv_free(dirs);
    sch_cgroups_destroy(cg);
}

TEST(host_resources)
{
    uint64_t mem = 0;
    uint32_t cpus = 0;
    CHECK_INT_EQ(sch_host_resources(&mem, &cpus), 0);
    struct sysinfo si;
    CHECK_INT_EQ(sysinfo(&si), 0);
    CHECK_UINT_EQ(mem, (uint64_t)si.totalram * si.mem_unit);
    cpu_set_t set;
    CHECK_INT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
    CHECK_UINT_EQ(cpus, (uint32_t)CPU_COUNT(&set) * 1000);
    /* Narrowed to one CPU (as a cpuset or taskset would): one CPU's worth. */
    int first = 0;
    while (!CPU_ISSET(first, &set))
        first++;
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    CHECK_INT_EQ(sched_setaffinity(0, sizeof(set), &set), 0);
    CHECK_INT_EQ(sch_host_resources(&mem, &cpus), 0);
    CHECK_UINT_EQ(cpus, 1000);
}

/* ------------------------------------------------------------------ the host's kernel */

/* <dir>/<file> without its newline, into <buf>; "(unreadable)" on error. */
static const char *real(const char *dir, const char *file, char *buf, size_t len)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, len - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return f ? buf : "(unreadable)";
}

/* The whole disk holding "/" (io limits refuse partitions): 0 when there is none. */
static int root_disk(unsigned *ret_major, unsigned *ret_minor)
{
    struct stat st;
    char path[256], buf[64];
    if (stat("/", &st) < 0)
        return 0;
    snprintf(path, sizeof(path), "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
    if (access(path, F_OK) < 0)
        return 0;
    if (strcmp(real(path, "partition", buf, sizeof(buf)), "(unreadable)") != 0)
        strcat(path, "/..");
    return sscanf(real(path, "dev", buf, sizeof(buf)), "%u:%u", ret_major, ret_minor) == 2;
}

/* On this host's real hierarchy, as root (skipped elsewhere): the kernel's rules that a fake
 * cannot enforce. v1 keeps memory <= memsw, so raising and lowering the parent cap must write
 * them in the right order; v1 refuses a child's CPU quota above its parent's, so an instance
 * asking for more than the cap, and a cap lowered under a running instance, must both work;
 * blkio/io take the root disk's rule. Everything is removed before the checks. */
TEST(real_hierarchy_limits)
{
    if (geteuid() != 0)
        test_skip("needs root");
    char name[64];
    snprintf(name, sizeof(name), "berth-unit-%d", (int)getpid());
    struct sch_cgroups *cg = sch_cgroups_create(name, "/sys/fs/cgroup");
    CHECK_NOT_NULL(cg);
    int vm = sch_cgroups_version(cg, SCH_CG_MEMORY), vc = sch_cgroups_version(cg, SCH_CG_CPU);
    int vio = sch_cgroups_version(cg, SCH_CG_IO);
    const char *pm = sch_cgroups_parent(cg, SCH_CG_MEMORY),
               *pc = sch_cgroups_parent(cg, SCH_CG_CPU);
    char err[6][256] = {""};
    int rc[6] = {0};
    char **dirs = NULL;
    char inst_quota[2][64] = {""}, par_quota[2][64] = {""}, mem[2][64] = {""};
    char io_rule[128] = "";
    char inst_cpu[4200] = "";
    unsigned maj = 0, min = 0;
    int have_disk = root_disk(&maj, &min);
    if (vm && vc) {
        const char *qf = vc == 1 ? "cpu.cfs_quota_us" : "cpu.max";
        rc[0] = sch_cgroups_limit_parent(cg, 512 << 20, 1500, err[0], sizeof(err[0]));
        real(pc, qf, par_quota[0], sizeof(par_quota[0]));
        struct sch_cg_limits lim = {.memory = 256 << 20, .cpu_millis = 2000, .pids = 64};
        rc[1] = sch_cgroups_create_instance(cg, "u-1", &lim, &dirs, err[1], sizeof(err[1]));
        snprintf(inst_cpu, sizeof(inst_cpu), "%s/u-1", pc);
        real(inst_cpu, qf, inst_quota[0], sizeof(inst_quota[0]));
        rc[2] = sch_cgroups_limit_parent(cg, 1 << 30, 3000, err[2], sizeof(err[2]));
        rc[3] = sch_cgroups_limit_parent(cg, 128 << 20, 500, err[3], sizeof(err[3]));
        real(inst_cpu, qf, inst_quota[1], sizeof(inst_quota[1]));
        real(pc, qf, par_quota[1], sizeof(par_quota[1]));
        real(pm, vm == 1 ? "memory.limit_in_bytes" : "memory.max", mem[0], sizeof(mem[0]));
        if (!sch_cgroups_swap_warning(cg))
            real(pm, vm == 1 ? "memory.memsw.limit_in_bytes" : "memory.swap.max", mem[1],
                 sizeof(mem[1]));
        if (vio && have_disk && rc[1] == 0) {
            struct sch_cg_io io = {.read_bps = 10 << 20};
            rc[4] = sch_cgroups_limit_io(cg, dirs, maj, min, &io, err[4], sizeof(err[4]));
            /* A device that is no disk: refused, with the hint. */
            rc[5] = sch_cgroups_limit_io(cg, dirs, maj, min + 4095, &io, err[5], sizeof(err[5]));
            char d[4200];
            snprintf(d, sizeof(d), "%s/u-1", sch_cgroups_parent(cg, SCH_CG_IO));
            real(d, vio == 1 ? "blkio.throttle.read_bps_device" : "io.max", io_rule,
                 sizeof(io_rule));
        }
    }
    int removed = sch_cgroups_remove(dirs);
    cm_strv_free(dirs);
    for (int i = 0; i < SCH_CG_COUNT; i++)
        if (sch_cgroups_parent(cg, (enum sch_cg_ctrl)i))
            rmdir(sch_cgroups_parent(cg, (enum sch_cg_ctrl)i));
    sch_cgroups_destroy(cg);
    if (!vm || !vc)
        test_skip("no usable memory and cpu controllers here");

    CHECK_MSG(rc[0] == 0, "cap: %s", err[0]);
    CHECK_MSG(rc[1] == 0, "instance under the cap: %s", err[1]);
    CHECK_MSG(rc[2] == 0, "raising the cap: %s", err[2]);
    CHECK_MSG(rc[3] == 0, "lowering the cap: %s", err[3]);
    CHECK_INT_EQ(removed, 0);
    CHECK_STR_EQ(mem[0], "134217728");
    if (vm == 1 && mem[1][0])
        CHECK_STR_EQ(mem[1], "134217728");
    if (vm == 2 && mem[1][0])
        CHECK_STR_EQ(mem[1], "0");
    if (vc == 1) {
        /* 1.5 CPUs, or less when an ancestor of ours has less: the instance gets the cap. */
        CHECK(atoll(par_quota[0]) > 0 && atoll(par_quota[0]) <= 150000);
        CHECK_STR_EQ(inst_quota[0], par_quota[0]);
        CHECK_STR_EQ(inst_quota[1], "50000");
        CHECK_STR_EQ(par_quota[1], "50000");
    } else {
        CHECK_STR_EQ(par_quota[0], "150000 100000");
        CHECK_STR_EQ(inst_quota[0], "200000 100000");
        CHECK_STR_EQ(par_quota[1], "50000 100000");
    }
    if (vio && have_disk) {
        char want[128];
        CHECK_MSG(rc[4] == 0, "io: %s", err[4]);
        if (vio == 1)
            snprintf(want, sizeof(want), "%u:%u 10485760", maj, min);
        else
            snprintf(want, sizeof(want), "%u:%u rbps=10485760 wbps=max riops=max wiops=max", maj,
                     min);
        CHECK_STR_EQ(io_rule, want);
        CHECK_INT_EQ(rc[5], -ENODEV);
        CHECK_CONTAINS(err[5], "whole disk");
    }
}

TEST(undo_parents_removes_only_what_it_made)
{
    fake_v2(v2_files);
    struct stat st;
    /* "berth" was there: kept. */
    struct sch_cgroups *cg = fake_create();
    CHECK_NOT_NULL(cg);
    sch_cgroups_undo_parents(cg);
    sch_cgroups_destroy(cg);
    CHECK_INT_EQ(stat(at("cg/job/berth"), &st), 0);
    /* "fresh" was not: made to probe, removed again (a --check leaves nothing). */
    cg = sch_cgroups_create_at("fresh", at("cg"), at("mountinfo"), at("self_cgroup"));
    CHECK_NOT_NULL(cg);
    CHECK_INT_EQ(stat(at("cg/job/fresh"), &st), 0);
    sch_cgroups_undo_parents(cg);
    sch_cgroups_destroy(cg);
    CHECK_INT_EQ(stat(at("cg/job/fresh"), &st), -1);
}
