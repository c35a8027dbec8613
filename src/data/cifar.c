/* CIFAR-10 and CIFAR-100 binary files (Krizhevsky, "Learning Multiple Layers of
 * Features from Tiny Images", 2009; https://www.cs.toronto.edu/~kriz/cifar.html).
 *
 * A file is a sequence of fixed-size records with no header:
 *   CIFAR-10:  label byte (0..9), 3072 pixel bytes                = 3073 bytes
 *   CIFAR-100: coarse label (0..19), fine label (0..99), 3072 px  = 3074 bytes
 * The pixels are 1024 red, 1024 green, 1024 blue bytes, each plane row-major
 * 32x32: already the C×H×W layout of mfres_dataset. */
#include "mfres/core.h"
#include "mfres/data.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

enum { CIFAR_C = 3, CIFAR_H = 32, CIFAR_W = 32, CIFAR_PIXELS = CIFAR_C * CIFAR_H * CIFAR_W };

/* Size of a regular file, or an error naming it. */
static int file_size(const char *path, FILE *fp, size_t *size) {
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) return mfres_fail(MFRES_EIO, "cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return mfres_fail(MFRES_EIO, "%s is not a regular file", path);
    *size = (size_t)st.st_size;
    return MFRES_OK;
}

/* Shared by both formats: `n_label_bytes` label bytes lead each record, and
 * label byte `label_index` (with `num_classes` classes) is the one kept. */
static int load_cifar(mfres_dataset *ds, const char *const *paths, int n_paths, int n_label_bytes, int label_index,
                      int num_classes, const char *what) {
    memset(ds, 0, sizeof *ds);
    if (n_paths <= 0 || !paths) return mfres_fail(MFRES_EINVAL, "%s: no files given", what);
    const size_t record = (size_t)n_label_bytes + CIFAR_PIXELS;
    FILE **fps = mfres_alloc(sizeof(FILE *) * (size_t)n_paths, "CIFAR file handles");
    size_t *counts = mfres_alloc(sizeof(size_t) * (size_t)n_paths, "CIFAR record counts");
    uint8_t *chunk = NULL;
    int rc = MFRES_OK;
    if (!fps || !counts) {
        rc = MFRES_ENOMEM;
        goto done;
    }

    /* Pass 1: open every file and check its size, before allocating anything big. */
    size_t total = 0;
    for (int i = 0; i < n_paths; i++) {
        fps[i] = fopen(paths[i], "rb");
        if (!fps[i]) {
            rc = mfres_fail(MFRES_EIO, "cannot open %s: %s", paths[i], strerror(errno));
            goto done;
        }
        size_t size = 0;
        if ((rc = file_size(paths[i], fps[i], &size))) goto done;
        if (size == 0 || size % record != 0) {
            size_t whole = size / record;
            rc = mfres_fail(MFRES_EFORMAT,
                            "%s: not a %s file: expected a non-zero multiple of %zu bytes (the record size), found %zu "
                            "(%zu whole records and %zu bytes over; truncated? nearest sizes %zu or %zu bytes)",
                            paths[i], what, record, size, whole, size % record, whole * record, (whole + 1) * record);
            goto done;
        }
        counts[i] = size / record;
        total += counts[i];
    }
    if (total > INT_MAX) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: %zu records in all, more than %d", what, total, INT_MAX);
        goto done;
    }
    ds->pixels = mfres_alloc(total * CIFAR_PIXELS, "CIFAR pixels");
    ds->labels = mfres_alloc(total, "CIFAR labels");
    if (!ds->pixels || !ds->labels) {
        rc = MFRES_ENOMEM;
        goto done;
    }

    /* Pass 2: read records in chunks and split labels from pixels. */
    enum { CHUNK_RECORDS = 1024 };
    chunk = mfres_alloc(record * CHUNK_RECORDS, "CIFAR read buffer");
    if (!chunk) {
        rc = MFRES_ENOMEM;
        goto done;
    }
    size_t at = 0;
    for (int i = 0; i < n_paths; i++) {
        for (size_t r0 = 0; r0 < counts[i]; r0 += CHUNK_RECORDS) {
            size_t nr = counts[i] - r0 < CHUNK_RECORDS ? counts[i] - r0 : CHUNK_RECORDS;
            size_t got = fread(chunk, record, nr, fps[i]);
            if (got != nr) {
                rc = mfres_fail(MFRES_EIO, "%s: read failed: expected %zu bytes, found %zu (%s)", paths[i],
                                counts[i] * record, (r0 + got) * record,
                                ferror(fps[i]) ? strerror(errno) : "file shrank while reading");
                goto done;
            }
            for (size_t r = 0; r < nr; r++) {
                const uint8_t *rec = chunk + r * record;
                uint8_t label = rec[label_index];
                if (label >= num_classes) {
                    rc = mfres_fail(MFRES_EFORMAT, "%s: record %zu: label %u out of range, expected 0..%d", paths[i],
                                    r0 + r, label, num_classes - 1);
                    goto done;
                }
                /* The other CIFAR-100 label byte is checked too: a bad one means a misaligned file. */
                if (n_label_bytes == 2) {
                    int other = 1 - label_index, other_classes = other == 0 ? 20 : 100;
                    if (rec[other] >= other_classes) {
                        rc =
                            mfres_fail(MFRES_EFORMAT, "%s: record %zu: %s label %u out of range, expected 0..%d",
                                       paths[i], r0 + r, other == 0 ? "coarse" : "fine", rec[other], other_classes - 1);
                        goto done;
                    }
                }
                ds->labels[at] = label;
                memcpy(ds->pixels + at * CIFAR_PIXELS, rec + n_label_bytes, CIFAR_PIXELS);
                at++;
            }
        }
    }
    ds->n = (int)total;
    ds->c = CIFAR_C;
    ds->h = CIFAR_H;
    ds->w = CIFAR_W;
    ds->num_classes = num_classes;

done:
    if (fps)
        for (int i = 0; i < n_paths; i++)
            if (fps[i]) fclose(fps[i]);
    mfres_free(fps);
    mfres_free(counts);
    mfres_free(chunk);
    if (rc) mfres_dataset_free(ds);
    return rc;
}

int mfres_dataset_load_cifar10_files(mfres_dataset *ds, const char *const *paths, int n_paths) {
    return load_cifar(ds, paths, n_paths, 1, 0, 10, "CIFAR-10");
}

int mfres_dataset_load_cifar100_files(mfres_dataset *ds, const char *const *paths, int n_paths, bool coarse) {
    return coarse ? load_cifar(ds, paths, n_paths, 2, 0, 20, "CIFAR-100")
                  : load_cifar(ds, paths, n_paths, 2, 1, 100, "CIFAR-100");
}
