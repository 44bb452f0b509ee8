/* scheduler/paths.c: names safe as one path component, mkdir -p. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "scheduler/paths.h"
#include "tests/harness/test.h"

static int safe(const char *s)
{
    return sch_safe_name(s, strlen(s));
}

TEST(safe_names)
{
    CHECK(safe("default"));
    CHECK(safe("team-1.prod_x"));
    CHECK(safe("..."));
    char max[64];
    memset(max, 'a', 63);
    max[63] = '\0';
    CHECK(safe(max));
}

TEST(unsafe_names)
{
    CHECK(!safe(""));
    CHECK(!safe("."));
    CHECK(!safe(".."));
    CHECK(!safe("a/b"));
    CHECK(!safe("../etc"));
    CHECK(!safe("a b"));
    CHECK(!safe("t\xc3\xa9"));
    char big[65];
    memset(big, 'a', 64);
    big[64] = '\0';
    CHECK(!safe(big));
    /* The length given wins over a NUL: an embedded NUL is not a safe byte. */
    CHECK(!sch_safe_name("ab\0c", 4));
}

TEST(mkdir_p_creates_parents_with_mode)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/a/b/c", test_tmpdir());
    CHECK_INT_EQ(sch_mkdir_p(path, 0700), 0);
    struct stat st;
    CHECK_INT_EQ(stat(path, &st), 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_INT_EQ(st.st_mode & 0777 & ~0700, 0);
    /* Again: existing directories are fine. */
    CHECK_INT_EQ(sch_mkdir_p(path, 0700), 0);
    /* A file in the way is an error. */
    snprintf(path, sizeof(path), "%s/file/x", test_tmpdir());
    test_write_file("file", "x", (size_t)-1);
    CHECK_INT_EQ(sch_mkdir_p(path, 0755), -ENOTDIR);
    CHECK_INT_EQ(sch_mkdir_p("", 0755), -ENAMETOOLONG);
}
