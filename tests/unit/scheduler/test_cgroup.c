/* scheduler/cgroup.c: the values written into cgroup v1 and v2 controller files, and that an
 * unusable hierarchy is reported, never silently ignored. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "scheduler/cgroup.h"
#include "tests/harness/test.h"

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

TEST(pids_values)
{
    CHECK_STR_EQ(pids(1, 128), "128");
    CHECK_STR_EQ(pids(2, 4194304), "4194304");
    CHECK_STR_EQ(pids(1, 0), "max");
    CHECK_STR_EQ(pids(2, 0), "max");
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
