/* .npy and CSV readers/writers (src/core/npy.c): round trips, float32
 * widening, and errors that name the file. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mfres/io.h"
#include "testutil.h"

static char tmpdir[256];

static void make_tmpdir(void) { test_tmpdir_make(tmpdir, sizeof tmpdir, "io"); }

static void tmp_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    fclose(fp);
}

/* Writes a version-1.0 .npy with the given header dict and raw payload, the
 * way numpy lays it out (header padded to 64 bytes). */
static void write_npy_raw(const char *path, const char *dict, const void *payload, size_t n) {
    unsigned char buf[4096];
    size_t dlen = strlen(dict);
    size_t total = (10 + dlen + 1 + 63) / 64 * 64;
    size_t hlen = total - 10;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memcpy(buf + 10, dict, dlen);
    memset(buf + 10 + dlen, ' ', hlen - dlen - 1);
    buf[total - 1] = '\n';
    memcpy(buf + total, payload, n);
    write_bytes(path, buf, total + n);
}

START_TEST(test_npy_round_trip) {
    make_tmpdir();
    char path[512];
    tmp_path(path, sizeof path, "m.npy");
    double m[3 * 4];
    for (int i = 0; i < 12; i++) m[i] = (i - 5) * 0.37 + 1e-13 * i;
    ck_assert_ok(mfres_npy_save_f64(path, m, 3, 4));
    double *back = NULL;
    int r = 0, c = 0;
    ck_assert_ok(mfres_npy_load_f64(path, &back, &r, &c));
    ck_assert_int_eq(r, 3);
    ck_assert_int_eq(c, 4);
    ck_assert_mem_eq(back, m, sizeof m); /* bit-exact */
    mfres_free(back);

    /* The header is padded so the data starts on a 64-byte boundary. */
    FILE *fp = fopen(path, "rb");
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    ck_assert_int_eq((size - (long)sizeof m) % 64, 0);
    fclose(fp);
    test_tmpdir_remove(tmpdir);
}
END_TEST

START_TEST(test_npy_float32_and_1d_and_fortran) {
    make_tmpdir();
    char path[512];
    tmp_path(path, sizeof path, "f4.npy");
    float f[6] = {1.5f, -2.25f, 3.0f, 0.1f, 1e-3f, 7.0f};
    write_npy_raw(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f, sizeof f);
    double *d = NULL;
    int r, c;
    ck_assert_ok(mfres_npy_load_f64(path, &d, &r, &c));
    ck_assert_int_eq(r, 2);
    ck_assert_int_eq(c, 3);
    for (int i = 0; i < 6; i++) ck_assert(d[i] == (double)f[i]); /* widened exactly */
    mfres_free(d);

    /* 1-D of length n is n×1. */
    double v[5] = {1, 2, 3, 4, 5};
    write_npy_raw(path, "{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }", v, sizeof v);
    ck_assert_ok(mfres_npy_load_f64(path, &d, &r, &c));
    ck_assert_int_eq(r, 5);
    ck_assert_int_eq(c, 1);
    ck_assert_mem_eq(d, v, sizeof v);
    mfres_free(d);

    /* Fortran order comes back row-major. */
    double colmajor[6] = {1, 4, 2, 5, 3, 6}; /* [[1,2,3],[4,5,6]] */
    write_npy_raw(path, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", colmajor, sizeof colmajor);
    ck_assert_ok(mfres_npy_load_f64(path, &d, &r, &c));
    for (int i = 0; i < 6; i++) ck_assert(d[i] == i + 1);
    mfres_free(d);
    test_tmpdir_remove(tmpdir);
}
END_TEST

START_TEST(test_npy_errors_name_the_file) {
    make_tmpdir();
    char path[512];
    double *d = NULL;
    int r, c;

    tmp_path(path, sizeof path, "badmagic.npy");
    write_bytes(path, "PK\x03\x04 not numpy at all", 22);
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "magic"));
    ck_assert_ptr_null(d);

    /* Data shorter than the header promises. */
    tmp_path(path, sizeof path, "trunc.npy");
    double v[3] = {1, 2, 3};
    write_npy_raw(path, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", v, sizeof v);
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "truncated"));

    /* Cut inside the header. */
    write_bytes(path, "\x93NUMPY\x01\x00\x76\x00{'descr'", 17);
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "truncated"));

    /* An unsupported dtype says what was found. */
    tmp_path(path, sizeof path, "int.npy");
    long long iv[2] = {1, 2};
    write_npy_raw(path, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", iv, sizeof iv);
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "<i8"));

    /* 3-D is refused. */
    write_npy_raw(path, "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 1), }", v, 8);
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "dimensions"));

    /* Trailing bytes after the array. */
    tmp_path(path, sizeof path, "long.npy");
    write_npy_raw(path, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", v, sizeof v);
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "8 bytes of trailing data"));

    tmp_path(path, sizeof path, "missing.npy");
    ck_assert_int_eq(mfres_npy_load_f64(path, &d, &r, &c), MFRES_EIO);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), path));
    test_tmpdir_remove(tmpdir);
}
END_TEST

/* A 192-byte file whose header promises 4 GiB: refused as truncated before any
 * allocation (with the address space capped, allocating first fails as ENOMEM). */
START_TEST(test_npy_forged_shape_allocates_nothing) {
    make_tmpdir();
    char path[512];
    tmp_path(path, sizeof path, "forged.npy");
    double v[16] = {0};
    write_npy_raw(path, "{'descr': '<f8', 'fortran_order': False, 'shape': (65536, 8192), }", v, sizeof v);
    test_limit_address_space((size_t)1 << 30);
    double *d = NULL;
    int r, c;
    int rc = mfres_npy_load_f64(path, &d, &r, &c);
    ck_assert_msg(rc == MFRES_EFORMAT, "returned %d: %s", rc, mfres_last_error());
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "needs 4294967296 data bytes, found 128"));
    test_tmpdir_remove(tmpdir);
}
END_TEST

START_TEST(test_csv_load) {
    make_tmpdir();
    char path[512];
    tmp_path(path, sizeof path, "m.csv");
    const char *text = "x0,x1,y\n1, 2.5,-3\r\n4,5e-1,6\n\n";
    write_bytes(path, text, strlen(text));
    double *d = NULL;
    int r, c;
    ck_assert_ok(mfres_csv_load_f64(path, &d, &r, &c));
    ck_assert_int_eq(r, 2);
    ck_assert_int_eq(c, 3);
    double want[6] = {1, 2.5, -3, 4, 0.5, 6};
    ck_assert_mem_eq(d, want, sizeof want);
    mfres_free(d);

    /* Ragged rows: the message names the file and line. */
    const char *ragged = "1,2,3\n4,5\n";
    write_bytes(path, ragged, strlen(ragged));
    ck_assert_int_eq(mfres_csv_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), ":2:"));

    /* Only one header line is allowed. */
    const char *two_headers = "a,b\nc,d\n1,2\n";
    write_bytes(path, two_headers, strlen(two_headers));
    ck_assert_int_eq(mfres_csv_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), ":2:"));

    /* A broken first data row is not silently taken for a header. */
    static const char *const broken_first[] = {"1,2x,3\n4,5,6\n", "1,,3\n4,5,6\n", "1;2;3\n4,5,6\n",
                                               "x,2,y\n4,5,6\n"};
    for (size_t i = 0; i < sizeof broken_first / sizeof broken_first[0]; i++) {
        write_bytes(path, broken_first[i], strlen(broken_first[i]));
        ck_assert_msg(mfres_csv_load_f64(path, &d, &r, &c) == MFRES_EFORMAT, "accepted %s", broken_first[i]);
        ck_assert_ptr_nonnull(strstr(mfres_last_error(), ":1:"));
    }
    /* A header must name as many columns as the data holds. */
    const char *short_header = "a,b\n1,2,3\n";
    write_bytes(path, short_header, strlen(short_header));
    ck_assert_int_eq(mfres_csv_load_f64(path, &d, &r, &c), MFRES_EFORMAT);
    ck_assert_ptr_nonnull(strstr(mfres_last_error(), "the header names 2"));
    test_tmpdir_remove(tmpdir);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("io");
    TCase *tc = tcase_create("npy-csv");
    tcase_add_test(tc, test_npy_round_trip);
    tcase_add_test(tc, test_npy_float32_and_1d_and_fortran);
    tcase_add_test(tc, test_npy_errors_name_the_file);
    tcase_add_test(tc, test_npy_forged_shape_allocates_nothing);
    tcase_add_test(tc, test_csv_load);
    suite_add_tcase(s, tc);
    return s;
}

MFRES_TEST_MAIN(make_suite)
