/* Shared helpers for the Check-based C tests. Each tests/test_*.c file is its own
 * binary: it defines `static Suite *make_suite(void)` and ends with
 * MFRES_TEST_MAIN(make_suite). The binary exits non-zero on any failure. */
#ifndef MFRES_TESTUTIL_H
#define MFRES_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "mfres/core.h"

/* Paths to the data sets, overridable from the environment. */
static inline const char *test_shared_data_dir(void) {
    const char *d = getenv("MFRES_SHARED_DATA");
    return d ? d : "../shared/data";
}
static inline const char *test_fashion_mnist_dir(void) {
    const char *d = getenv("MFRES_FASHION_MNIST");
    return d ? d : "/usr/share/datasets/fashion-mnist";
}

/* Asserts rc == MFRES_OK and shows the library's message if not. */
#define ck_assert_ok(expr)                                                                     \
    do {                                                                                       \
        int rc_ = (expr);                                                                      \
        ck_assert_msg(rc_ == MFRES_OK, "%s returned %d: %s", #expr, rc_, mfres_last_error()); \
    } while (0)

/* Relative error of two vectors in the 2-norm: |a-b| / max(|b|, tiny). */
static inline double test_rel_err_f64(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num) / (sqrt(den) > 1e-300 ? sqrt(den) : 1e-300);
}

/* A private temporary directory, removed with everything in it by
 * test_tmpdir_remove (call it at the end of the test that made it). */
#include <ftw.h>
#include <stdio.h>
static inline int test_rm_entry_(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}
static inline void test_tmpdir_make(char *dir, size_t cap, const char *tag) {
    snprintf(dir, cap, "/tmp/mfres-test-%s-XXXXXX", tag);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp failed");
}
static inline void test_tmpdir_remove(char *dir) {
    if (dir[0]) nftw(dir, test_rm_entry_, 8, FTW_DEPTH | FTW_PHYS);
    dir[0] = '\0';
}

/* Caps this process's address space at its current size plus `extra` bytes,
 * so that a reader which allocates what a forged header asks for fails with
 * ENOMEM instead of quietly reserving gigabytes. Call only in a forked test. */
#include <sys/resource.h>
#include <unistd.h>
static inline void test_limit_address_space(size_t extra) {
    FILE *fp = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    ck_assert_msg(fp && fscanf(fp, "%lu", &pages) == 1, "cannot read /proc/self/statm");
    fclose(fp);
    struct rlimit lim;
    ck_assert(getrlimit(RLIMIT_AS, &lim) == 0);
    lim.rlim_cur = pages * (unsigned long)sysconf(_SC_PAGESIZE) + extra;
    ck_assert_msg(setrlimit(RLIMIT_AS, &lim) == 0, "setrlimit failed");
}

#define MFRES_TEST_MAIN(make_suite_fn)                         \
    int main(void) {                                           \
        SRunner *sr = srunner_create(make_suite_fn());         \
        srunner_run_all(sr, CK_NORMAL);                        \
        int failed = srunner_ntests_failed(sr);                \
        srunner_free(sr);                                      \
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;      \
    }

#endif
