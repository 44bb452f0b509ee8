/* Berth's unit-test harness: a TEST() registers a function; the runner (test.c, which provides
 * main()) forks once per test, so every test starts from a fresh process, a crash or a timeout
 * fails only that test, and the sanitizers' leak check runs at the end of each test. The runner
 * prints TAP ("1..N", "ok 1 - name", "not ok 2 - name", "ok 3 - name # SKIP why"), which
 * `meson test` reads with protocol: 'tap'.
 *
 *   #include "tests/harness/test.h"
 *   TEST(key_rejects_space) { CHECK(!cm_key_valid("a b", 3)); }
 *
 * Run one executable alone with a name filter: ./unit-common-test_key rejects
 * Environment: TEST_TIMEOUT (seconds per test, default 30). */
#ifndef TEST_HARNESS_H
#define TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*test_fn)(void);

/* Called by TEST() from a constructor; not meant to be called directly. */
void test_register(const char *name, test_fn fn, const char *file, int line);

#define TEST(name)                                                                                 \
    static void test_body_##name(void);                                                            \
    __attribute__((constructor)) static void test_reg_##name(void)                                 \
    {                                                                                              \
        test_register(#name, test_body_##name, __FILE__, __LINE__);                               \
    }                                                                                              \
    static void test_body_##name(void)

/* Fails the running test: prints "# file:line: message" and ends the test's process. */
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
/* Ends the running test as skipped with <reason>. */
void test_skip(const char *reason) __attribute__((noreturn));

/* A fresh directory for the running test (created before it starts, removed after it ends,
 * whatever its outcome). Static storage. */
const char *test_tmpdir(void);
/* Writes <len> bytes (or strlen(content) if len is (size_t)-1) to test_tmpdir()/<name>.
 * Returns the path (static storage, overwritten by the next call); fails the test on error. */
const char *test_write_file(const char *name, const char *content, size_t len);
/* A connected AF_UNIX stream pair, both ends non-blocking and close-on-exec. Fails the test
 * on error. */
void test_socketpair(int fds[2]);
/* <haystack> contains <needle> (both may be NULL: then 0). */
int test_contains(const char *haystack, const char *needle);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            test_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);                              \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond))                                                                               \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                                            \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                                         \
    do {                                                                                           \
        long long test_a_ = (long long)(a), test_b_ = (long long)(b);                              \
        if (test_a_ != test_b_)                                                                    \
            test_fail(__FILE__, __LINE__, "%s == %s failed: %lld != %lld", #a, #b, test_a_,       \
                      test_b_);                                                                    \
    } while (0)

#define CHECK_UINT_EQ(a, b)                                                                        \
    do {                                                                                           \
        unsigned long long test_a_ = (unsigned long long)(a), test_b_ = (unsigned long long)(b);   \
        if (test_a_ != test_b_)                                                                    \
            test_fail(__FILE__, __LINE__, "%s == %s failed: %llu != %llu", #a, #b, test_a_,       \
                      test_b_);                                                                    \
    } while (0)

#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *test_a_ = (a), *test_b_ = (b);                                                 \
        if (!test_a_ || !test_b_ || strcmp(test_a_, test_b_) != 0)                                 \
            test_fail(__FILE__, __LINE__, "%s == %s failed: \"%s\" != \"%s\"", #a, #b,            \
                      test_a_ ? test_a_ : "(null)", test_b_ ? test_b_ : "(null)");                 \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                                \
    do {                                                                                           \
        const char *test_h_ = (hay), *test_n_ = (needle);                                          \
        if (!test_contains(test_h_, test_n_))                                                      \
            test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",                       \
                      test_h_ ? test_h_ : "(null)", test_n_ ? test_n_ : "(null)");                 \
    } while (0)

#define CHECK_MEM_EQ(a, b, n)                                                                      \
    do {                                                                                           \
        if (memcmp((a), (b), (n)) != 0)                                                            \
            test_fail(__FILE__, __LINE__, "memcmp(%s, %s, %s) != 0", #a, #b, #n);                 \
    } while (0)

#define CHECK_NULL(p) CHECK_MSG((p) == NULL, "%s is not NULL", #p)
#define CHECK_NOT_NULL(p) CHECK_MSG((p) != NULL, "%s is NULL", #p)

#endif
