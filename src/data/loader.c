/* The batch pipeline: permutation, augmentation, normalisation, on a background
 * thread with two buffers (the caller trains on one while the other is filled).
 *
 * Determinism. The permutation of epoch e comes from an RNG seeded with
 * (seed, e); the augmentation of the image at position p of that permutation
 * comes from an RNG seeded with (seed, e, p) alone. A data-parallel rank's
 * loader (cfg.shards > 1) reads only its shard of each global batch, with
 * the same global positions, so the ranks together see what one loader of
 * the global batch would. No draw depends on which
 * thread runs it, on timing, or on the batch size, so a run is reproducible bit
 * for bit and a resumed epoch can start anywhere.
 *
 * Augmentation follows the standard CIFAR recipe (He et al. 2016; torchvision's
 * RandomCrop(32, padding=4) + RandomHorizontalFlip on the raw image, then
 * Normalize): the raw image is zero-padded by `pad` pixels with the RAW value 0
 * (black), so after normalisation the border holds (0 - mean[c]) / std[c], not
 * 0; a crop of H×W is taken at a uniform offset in [0, 2*pad]², then flipped
 * left-right with probability 1/2.
 *
 * Threading. One worker fills buffer k%2 with batch k when that buffer is free.
 * The caller holds one buffer between two calls of mfres_loader_next; giving it
 * back lets the worker fill it with the batch after next. mfres_loader_start_epoch
 * waits for a fill in flight to finish (a generation counter makes the worker
 * drop its stale result), then resets everything. If mfres_loader_next is called
 * before any mfres_loader_start_epoch, epoch 0 is started implicitly. */
#include "mfres/core.h"
#include "mfres/data.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

enum buf_state { BUF_FREE, BUF_FILLING, BUF_READY, BUF_HELD };

struct mfres_loader {
    const mfres_dataset *ds; /* not owned; must outlive the loader */
    mfres_loader_config cfg; /* cfg.mean / cfg.std point at `lut` inputs below, not the caller's arrays */
    int n_batches;
    size_t image_floats; /* c*h*w */
    float *lut;          /* c×256: normalised value of each raw byte per channel */
    uint32_t *perm;      /* n: dataset index of each position in this epoch */
    float *images[2];    /* batch×c×h×w each */
    int32_t *labels[2];  /* batch each */
    int counts[2];

    /* Everything below is guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_started, quit, active, busy;
    unsigned generation;
    int epoch;
    int next_fill, next_hand; /* next batch the worker fills / the caller receives */
    int state[2], batch_of[2];
    int held; /* buffer the caller holds, or -1 */
};

/* ---- seeding: (seed, epoch, stream, index) -> independent RNG streams ---- */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

enum { STREAM_PERMUTATION = 1, STREAM_AUGMENT = 2 };

static void derive_rng(mfres_rng *rng, uint64_t seed, int epoch, uint64_t stream, uint64_t index) {
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);
    h = mix64(h ^ ((uint64_t)(uint32_t)epoch + 0x632be59bd9b4e019ull));
    h = mix64(h ^ (stream * 0xd1b54a32d192ed03ull));
    h = mix64(h ^ (index + 0x8cb92ba72f3d8dd7ull));
    mfres_rng_seed(rng, h);
}

/* ---- one image, one batch ---- */

/* dst (c×h×w floats) <- normalised, optionally cropped and flipped src (c×h×w bytes).
 * oy, ox in [-pad, pad] are the crop offsets relative to the unpadded image. */
static void prepare_image(float *dst, const uint8_t *src, const float *lut, int c, int h, int w, int oy, int ox,
                          bool flip) {
    for (int ch = 0; ch < c; ch++) {
        const float *t = lut + ch * 256;
        const uint8_t *s = src + (size_t)ch * h * w;
        float *d = dst + (size_t)ch * h * w;
        const float border = t[0]; /* raw 0, normalised */
        for (int y = 0; y < h; y++) {
            int sy = y + oy;
            float *drow = d + (size_t)y * w;
            if (sy < 0 || sy >= h) {
                for (int x = 0; x < w; x++) drow[x] = border;
                continue;
            }
            const uint8_t *srow = s + (size_t)sy * w;
            if (!flip && ox == 0) {
                for (int x = 0; x < w; x++) drow[x] = t[srow[x]];
                continue;
            }
            for (int x = 0; x < w; x++) {
                int sx = (flip ? w - 1 - x : x) + ox;
                drow[x] = (sx < 0 || sx >= w) ? border : t[srow[sx]];
            }
        }
    }
}

/* The crop offsets and flip of the image at position pos of epoch `epoch`:
 * from (seed, epoch, pos) alone. */
static void draw_augment(const mfres_loader *l, int epoch, size_t pos, int *oy, int *ox, bool *flip) {
    *oy = *ox = 0, *flip = false;
    if (!l->cfg.augment) return;
    mfres_rng rng;
    derive_rng(&rng, l->cfg.seed, epoch, STREAM_AUGMENT, pos);
    uint32_t span = 2u * (uint32_t)l->cfg.pad + 1u;
    *oy = (int)mfres_rng_below(&rng, span) - l->cfg.pad;
    *ox = (int)mfres_rng_below(&rng, span) - l->cfg.pad;
    *flip = l->cfg.flip && (mfres_rng_u64(&rng) >> 63);
}

/* The global position of this loader's first image of batch j (its shard of global batch j). */
static size_t first_position(const mfres_loader *l, int j) {
    return ((size_t)j * (size_t)l->cfg.shards + (size_t)l->cfg.shard) * (size_t)l->cfg.batch;
}

/* Valid images in this loader's share of batch j (the rest is padding). */
static int batch_count(const mfres_loader *l, int j) {
    long left = (long)l->ds->n - (long)first_position(l, j);
    return left <= 0 ? 0 : left < l->cfg.batch ? (int)left : l->cfg.batch;
}

static void fill_batch(const mfres_loader *l, int buf, int batch_index, int epoch) {
    const mfres_dataset *ds = l->ds;
    const int B = l->cfg.batch;
    float *images = l->images[buf];
    int32_t *labels = l->labels[buf];
    for (int k = 0; k < B; k++) {
        size_t pos = first_position(l, batch_index) + (size_t)k;
        float *dst = images + (size_t)k * l->image_floats;
        if (pos >= (size_t)ds->n) { /* the final partial batch: zeros, label -1 */
            memset(dst, 0, l->image_floats * sizeof *dst);
            labels[k] = -1;
            continue;
        }
        uint32_t idx = l->perm[pos];
        const uint8_t *src = ds->pixels + (size_t)idx * l->image_floats;
        labels[k] = ds->labels[idx];
        int oy, ox;
        bool flip;
        draw_augment(l, epoch, pos, &oy, &ox, &flip);
        prepare_image(dst, src, l->lut, ds->c, ds->h, ds->w, oy, ox, flip);
    }
}

static void *worker_main(void *arg) {
    mfres_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->quit && !(l->active && l->next_fill < l->n_batches && l->state[l->next_fill % 2] == BUF_FREE))
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->quit) break;
        int j = l->next_fill, b = j % 2, epoch = l->epoch;
        unsigned gen = l->generation;
        l->state[b] = BUF_FILLING;
        l->busy = true;
        pthread_mutex_unlock(&l->mu);

        fill_batch(l, b, j, epoch);

        pthread_mutex_lock(&l->mu);
        l->busy = false;
        if (gen == l->generation) {
            l->state[b] = BUF_READY;
            l->batch_of[b] = j;
            l->counts[b] = batch_count(l, j);
            l->next_fill++;
        } /* else start_epoch reset the buffers while we worked: drop the result */
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- public API ---- */

int mfres_loader_batches_per_epoch(const mfres_loader *l) { return l->n_batches; }

void mfres_loader_free(mfres_loader *l) {
    if (!l) return;
    if (l->thread_started) {
        pthread_mutex_lock(&l->mu);
        l->quit = true;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
    }
    mfres_free(l->lut);
    mfres_free(l->perm);
    for (int b = 0; b < 2; b++) {
        mfres_free(l->images[b]);
        mfres_free(l->labels[b]);
    }
    mfres_free(l);
}

int mfres_loader_create(mfres_loader **out, const mfres_dataset *ds, const mfres_loader_config *cfg) {
    *out = NULL;
    if (!ds || !ds->pixels || !ds->labels || ds->n <= 0 || ds->c <= 0 || ds->h <= 0 || ds->w <= 0)
        return mfres_fail(MFRES_EINVAL, "loader: empty or unloaded data set");
    if (!cfg || cfg->batch <= 0)
        return mfres_fail(MFRES_EINVAL, "loader: batch must be > 0, found %d", cfg ? cfg->batch : 0);
    if (cfg->shards > 0 && (cfg->shard < 0 || cfg->shard >= cfg->shards))
        return mfres_fail(MFRES_EINVAL, "loader: shard must be in 0..%d, found %d", cfg->shards - 1, cfg->shard);
    if (cfg->augment && (cfg->pad < 0 || cfg->pad > 4096))
        return mfres_fail(MFRES_EINVAL, "loader: pad must be in 0..4096, found %d", cfg->pad);
    for (int c = 0; cfg->std && c < ds->c; c++)
        if (!(cfg->std[c] > 0) || !isfinite(cfg->std[c]))
            return mfres_fail(MFRES_EINVAL, "loader: std[%d] must be finite and > 0, found %g", c, (double)cfg->std[c]);
    for (int c = 0; cfg->mean && c < ds->c; c++)
        if (!isfinite(cfg->mean[c]))
            return mfres_fail(MFRES_EINVAL, "loader: mean[%d] must be finite, found %g", c, (double)cfg->mean[c]);

    mfres_loader *l = mfres_alloc(sizeof *l, "loader");
    if (!l) return MFRES_ENOMEM;
    l->ds = ds;
    l->cfg = *cfg;
    l->cfg.mean = l->cfg.std = NULL; /* the caller's arrays are folded into lut and not kept */
    if (l->cfg.shards <= 0) l->cfg.shards = 1, l->cfg.shard = 0;
    l->image_floats = (size_t)ds->c * ds->h * ds->w;
    long global = (long)cfg->batch * l->cfg.shards;
    l->n_batches = (int)(cfg->drop_last ? ds->n / global : (ds->n + global - 1) / global);
    l->held = -1;
    l->lut = mfres_alloc(sizeof(float) * 256 * (size_t)ds->c, "loader lookup table");
    l->perm = mfres_alloc(sizeof(uint32_t) * (size_t)ds->n, "loader permutation");
    for (int b = 0; b < 2; b++) {
        l->images[b] = mfres_alloc(sizeof(float) * l->image_floats * (size_t)cfg->batch, "loader image batch");
        l->labels[b] = mfres_alloc(sizeof(int32_t) * (size_t)cfg->batch, "loader label batch");
    }
    if (!l->lut || !l->perm || !l->images[0] || !l->images[1] || !l->labels[0] || !l->labels[1]) {
        mfres_loader_free(l);
        return MFRES_ENOMEM;
    }
    for (int c = 0; c < ds->c; c++) {
        /* Same arithmetic as (x/255 - mean)/std in float, so a naive reference matches exactly. */
        float m = cfg->mean ? cfg->mean[c] : 0.0f, s = cfg->std ? cfg->std[c] : 1.0f;
        for (int v = 0; v < 256; v++) l->lut[c * 256 + v] = ((float)v / 255.0f - m) / s;
    }

    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    int err = pthread_create(&l->thread, NULL, worker_main, l);
    if (err) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        mfres_loader_free(l);
        return mfres_fail(MFRES_EINVAL, "loader: cannot start the background thread: %s", strerror(err));
    }
    l->thread_started = true;
    *out = l;
    return MFRES_OK;
}

int mfres_loader_start_epoch(mfres_loader *l, int epoch) {
    if (epoch < 0) return mfres_fail(MFRES_EINVAL, "loader: epoch must be >= 0, found %d", epoch);
    pthread_mutex_lock(&l->mu);
    l->generation++;
    l->active = false;
    while (l->busy) pthread_cond_wait(&l->cv, &l->mu); /* a fill in flight reads perm: let it finish */
    for (int i = 0; i < l->ds->n; i++) l->perm[i] = (uint32_t)i;
    if (l->cfg.shuffle) {
        mfres_rng rng;
        derive_rng(&rng, l->cfg.seed, epoch, STREAM_PERMUTATION, 0);
        mfres_rng_shuffle_u32(&rng, l->perm, (size_t)l->ds->n);
    }
    l->epoch = epoch;
    l->next_fill = l->next_hand = 0;
    l->state[0] = l->state[1] = BUF_FREE;
    l->held = -1;
    l->active = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return MFRES_OK;
}

int mfres_loader_next(mfres_loader *l, const float **images, const int32_t **labels, int *count) {
    pthread_mutex_lock(&l->mu);
    bool started = l->active;
    pthread_mutex_unlock(&l->mu);
    if (!started) mfres_loader_start_epoch(l, 0);

    pthread_mutex_lock(&l->mu);
    if (l->held >= 0) { /* the caller is done with the previous batch: let the worker refill it */
        l->state[l->held] = BUF_FREE;
        l->held = -1;
        pthread_cond_broadcast(&l->cv);
    }
    if (l->next_hand >= l->n_batches) {
        pthread_mutex_unlock(&l->mu);
        *images = NULL;
        *labels = NULL;
        *count = 0;
        return 0;
    }
    int j = l->next_hand, b = j % 2;
    while (!(l->state[b] == BUF_READY && l->batch_of[b] == j)) pthread_cond_wait(&l->cv, &l->mu);
    l->state[b] = BUF_HELD;
    l->held = b;
    l->next_hand++;
    *images = l->images[b];
    *labels = l->labels[b];
    *count = l->counts[b];
    pthread_mutex_unlock(&l->mu);
    return 1;
}

int mfres_loader_epoch_plan(mfres_loader *l, int epoch, uint32_t *perm, int8_t *oy, int8_t *ox, uint8_t *flip) {
    if (l->cfg.pad > 127) return mfres_fail(MFRES_EINVAL, "loader: pad %d does not fit the epoch plan", l->cfg.pad);
    int rc = mfres_loader_start_epoch(l, epoch);
    if (rc) return rc;
    pthread_mutex_lock(&l->mu);
    memcpy(perm, l->perm, sizeof *perm * (size_t)l->ds->n);
    pthread_mutex_unlock(&l->mu);
    for (int pos = 0; pos < l->ds->n; pos++) {
        int y, x;
        bool f;
        draw_augment(l, epoch, (size_t)pos, &y, &x, &f);
        oy[pos] = (int8_t)y, ox[pos] = (int8_t)x, flip[pos] = f;
    }
    return MFRES_OK;
}

const float *mfres_loader_lut(const mfres_loader *l) { return l->lut; }
