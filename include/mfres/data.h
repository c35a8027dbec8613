/* Data sets and the batch pipeline.
 *
 * A data set is held in memory as uint8 pixels (N×C×H×W, channel-major per image,
 * the layout of both IDX and CIFAR binaries) and uint8 labels. The loader turns
 * it into normalised float batches (N×C×H×W) with optional augmentation, on a
 * background thread that prepares batch k+1 while batch k trains. */
#ifndef MFRES_DATA_H
#define MFRES_DATA_H

#include <stdbool.h>
#include <stdint.h>

typedef struct mfres_dataset {
    int n;           /* number of images */
    int c, h, w;     /* image shape */
    int num_classes; /* labels are in [0, num_classes) */
    uint8_t *pixels; /* n*c*h*w bytes */
    uint8_t *labels; /* n bytes */
} mfres_dataset;

/* IDX (MNIST / Fashion-MNIST) image + label files, gzip-compressed (.gz) or raw.
 * Checks magic numbers (2051 images, 2049 labels), that the counts agree, that
 * each file holds exactly the bytes its header promises, and that labels are < 10.
 * Errors name the file and what was expected versus found. */
int mfres_dataset_load_idx(mfres_dataset *ds, const char *images_path, const char *labels_path);

/* CIFAR-10 binary files (3073-byte records: label, 3072 pixels). `paths` lists
 * one or more files whose records are concatenated. A file whose size is not a
 * multiple of the record size, or a label > 9, is an error naming the file. */
int mfres_dataset_load_cifar10_files(mfres_dataset *ds, const char *const *paths, int n_paths);
/* CIFAR-100 binary files (3074-byte records: coarse label, fine label, 3072
 * pixels). Fine labels (100 classes) unless `coarse` (20 classes). */
int mfres_dataset_load_cifar100_files(mfres_dataset *ds, const char *const *paths, int n_paths, bool coarse);
void mfres_dataset_free(mfres_dataset *ds);

/* A named data set with its train and test splits. */
typedef struct mfres_data {
    char name[32];       /* "fashion-mnist", "mnist", "cifar10", "cifar100" */
    char path[4096];     /* directory it was read from */
    mfres_dataset train, test;
    float mean[3], std[3]; /* per-channel statistics of the training split, in [0,1] pixel units */
    bool flip_default;     /* horizontal flip on by default (CIFAR yes, MNIST no) */
} mfres_data;

/* Opens "NAME[:PATH]". NAME is fashion-mnist (PATH defaults to
 * /usr/share/datasets/fashion-mnist), mnist, cifar10 (data_batch_1..5.bin,
 * test_batch.bin), cifar100 (train.bin, test.bin) or cifar100-coarse. For the
 * MNIST family the four standard file names are tried with and without .gz.
 * Unknown names give MFRES_EINVAL with the list of valid names. */
int mfres_data_open(mfres_data *data, const char *spec);
void mfres_data_free(mfres_data *data);

/* Per-channel mean and standard deviation of the pixels (in [0,1] units). */
void mfres_dataset_channel_stats(const mfres_dataset *ds, float *mean, float *std);

/* ---- the batch pipeline ---- */
typedef struct mfres_loader_config {
    int batch;         /* images per batch (> 0) */
    bool shuffle;      /* a new seeded permutation each epoch */
    bool augment;      /* zero-pad by `pad` pixels and crop back to H×W at a random offset */
    int pad;           /* 4 for the standard CIFAR recipe */
    bool flip;         /* random horizontal flip (only when augment) */
    bool drop_last;    /* skip the final partial batch (training) */
    uint64_t seed;     /* with the epoch number, fixes order and augmentation */
    const float *mean; /* per-channel normalisation: (x/255 - mean[c]) / std[c] */
    const float *std;
    /* Data-parallel training: the epoch is cut into global batches of
     * shards x batch positions, and this loader hands out positions
     * [shard*batch, (shard+1)*batch) of each. Order and augmentation stay
     * keyed on the global position, so the shards together are the batch a
     * single loader of shards x batch would give. 0 shards: one. */
    int shard, shards;
} mfres_loader_config;

typedef struct mfres_loader mfres_loader; /* opaque; owns a background thread */

int mfres_loader_create(mfres_loader **out, const mfres_dataset *ds, const mfres_loader_config *cfg);
/* Starts epoch `epoch` (0-based): fixes the permutation and augmentation draws
 * from (seed, epoch) alone, so results do not depend on thread timing, and
 * begins preparing the first batch in the background. */
int mfres_loader_start_epoch(mfres_loader *l, int epoch);
/* Hands out the next batch of the epoch. Returns 1 and sets *images (batch*C*H*W
 * floats), *labels (batch int32) and *count (valid images; a final partial batch
 * is zero-padded up to `batch` with label -1), or returns 0 when the epoch is
 * over. The pointers stay valid until the next call. */
int mfres_loader_next(mfres_loader *l, const float **images, const int32_t **labels, int *count);
/* The whole of epoch `epoch` as the loader will hand it out, for a device that
 * makes the batches itself (the GPU, docs/GPU.md): perm[pos] is the data set
 * index at global position pos, and oy/ox/flip that image's crop offsets
 * (relative to the unpadded image, in [-pad, pad]) and flip; n entries each,
 * n the data set's size. Starts the epoch as mfres_loader_start_epoch does. */
int mfres_loader_epoch_plan(mfres_loader *l, int epoch, uint32_t *perm, int8_t *oy, int8_t *ox, uint8_t *flip);
/* The normalisation table: c x 256 floats, the value of each byte per channel. */
const float *mfres_loader_lut(const mfres_loader *l);
/* Number of batches per epoch under this configuration. */
int mfres_loader_batches_per_epoch(const mfres_loader *l);
void mfres_loader_free(mfres_loader *l);

#endif
