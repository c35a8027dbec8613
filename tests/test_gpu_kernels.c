/* The GPU backend's own kernels (src/gpu/kernels.cu, contract in
 * src/gpu/kernels.h) against plain-C references in double precision: the
 * reference kernels of src/nn/ref.h through an NHWC <-> NCHW conversion on the
 * host, the library's own SGD and Algorithm 1 bookkeeping (mfres_sgd_update,
 * mf_sort, mf_steps, mf_tau_grad, mf_clamp), and the CPU loader's batches.
 *
 * Shapes are chosen to be awkward: channel counts that are not multiples of a
 * warp (3, 5, 48, 264, 520), row counts that are not multiples of a block, maps
 * large enough for many row chunks, and wide ones where the chunk count is
 * capped. Every reduction runs twice and must give the same bits.
 *
 * Each kernel on activations runs on float32 maps and on bfloat16 ones
 * (--precision bf16; the *_bf16 tests). There the inputs are rounded to
 * bfloat16 on the host and the double reference is computed from the rounded
 * values; an output map may differ from the reference by one rounding to
 * bfloat16 (2^-8 of its magnitude) on top of float32's tolerance, and a kernel
 * that only moves elements (layout, shortcut A forward, the batch gather,
 * gk_convert) must give exactly gk_bf16_from_float of the float result. The
 * host's gk_bf16_from_float itself is checked against bit patterns worked
 * out by hand (ties to even, overflow to infinity, NaN kept a NaN).
 *
 * The host-side helpers (layout conversion, the restatement of the loader's
 * prepare_image) are checked on the CPU first, on every machine. The GPU part
 * needs a CUDA build and a GPU; without one the program says SKIP and exits 77.
 *
 * Built with -DMFRES_GPU_EMULATED against tests/gpu_simt (the Makefile's
 * test_gpu_kernels_emulated), the same cases run kernels.cu on the CPU, thread
 * by thread: the kernels' logic on every machine with the CUDA headers; their
 * behaviour on real hardware (fused arithmetic, races between blocks) only on
 * a GPU. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/data.h"
#include "mfres/meanfield.h"
#include "mfres/optim.h"
#include "nn/ref.h"
#include "testutil.h"

#ifdef MFRES_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "gpu/kernels.h"
#endif

/* ---- host helpers (every machine) ---------------------------------------------- */

/* Check logs every assertion it evaluates (a write and a flush), which would
 * cost minutes over millions of elements: loops test with a plain `if` and
 * assert only what fails. */
#define EXPECT(cond, ...)                                                                                              \
    do {                                                                                                               \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                                        \
    } while (0)

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    ck_assert_msg(p != NULL, "out of host memory (%zu bytes)", bytes);
    return p;
}

static double *randn(size_t n, uint64_t seed, double mean, double sd) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    double *x = xmalloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = mean + sd * mfres_rng_normal(&rng);
    return x;
}

/* x rounded to float, and x itself set to the rounded values, so that a
 * reference in double sees exactly the GPU's input. */
static float *round_f(double *x, size_t n) {
    float *f = xmalloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = (float)x[i], x[i] = f[i];
    return f;
}

/* Element (n, c, y, x): NCHW ((n C + c) H + y) W + x, NHWC ((n H + y) W + x) C + c. */
#define DEFINE_LAYOUT(T, sfx)                                                                                          \
    static void nchw_to_nhwc_##sfx(T *dst, const T *src, int N, int C, int H, int W) {                                 \
        for (int n = 0; n < N; n++)                                                                                    \
            for (int c = 0; c < C; c++)                                                                                \
                for (int y = 0; y < H; y++)                                                                            \
                    for (int x = 0; x < W; x++)                                                                        \
                        dst[(((size_t)n * H + y) * W + x) * C + c] = src[(((size_t)n * C + c) * H + y) * W + x];       \
    }                                                                                                                  \
    static void nhwc_to_nchw_##sfx(T *dst, const T *src, int N, int C, int H, int W) {                                 \
        for (int n = 0; n < N; n++)                                                                                    \
            for (int c = 0; c < C; c++)                                                                                \
                for (int y = 0; y < H; y++)                                                                            \
                    for (int x = 0; x < W; x++)                                                                        \
                        dst[(((size_t)n * C + c) * H + y) * W + x] = src[(((size_t)n * H + y) * W + x) * C + c];       \
    }
DEFINE_LAYOUT(double, d)
DEFINE_LAYOUT(float, f)

/* The contract of gk_gather_batch, written from prepare_image and fill_batch
 * (src/data/loader.c) with the output in NHWC. */
static void host_gather(float *dst, int32_t *labels, const uint8_t *images, const uint8_t *image_labels,
                        const float *lut, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                        long first, int batch, long n_total, int C, int H, int W) {
    const size_t image = (size_t)C * H * W;
    for (int k = 0; k < batch; k++) {
        const long pos = first + k;
        float *d = dst + (size_t)k * image;
        if (pos >= n_total) {
            memset(d, 0, image * sizeof *d);
            labels[k] = -1;
            continue;
        }
        const uint8_t *src = images + (size_t)perm[pos] * image;
        labels[k] = image_labels[perm[pos]];
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    int sy = y + oy[pos], sx = (flip[pos] ? W - 1 - x : x) + ox[pos];
                    bool out = sy < 0 || sy >= H || sx < 0 || sx >= W;
                    d[((size_t)y * W + x) * C + c] = lut[c * 256 + (out ? 0 : src[((size_t)c * H + sy) * W + sx])];
                }
    }
}

/* The first element where got and want differ in bits. */
static void expect_same_bytes(const char *what, const void *got, const void *want, size_t n, size_t size) {
    const unsigned char *g = got, *w = want;
    for (size_t i = 0; i < n; i++)
        EXPECT(!memcmp(g + i * size, w + i * size, size), "%s: element %zu of %zu differs", what, i, n);
}
static void expect_same_f(const char *what, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        EXPECT(!memcmp(&got[i], &want[i], sizeof(float)), "%s: element %zu of %zu: got %.9g, want %.9g", what, i, n,
               (double)got[i], (double)want[i]);
}

/* Every element within tol of want, relative to max(|want_i|, rms(want)):
 * strict for large values, and measured against the vector's scale near 0. */
static void expect_close(const char *what, const float *got, const double *want, size_t n, double tol) {
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += want[i] * want[i];
    const double rms = n ? sqrt(ss / (double)n) : 0.0;
    for (size_t i = 0; i < n; i++) {
        double den = fabs(want[i]) > rms ? fabs(want[i]) : rms;
        double err = fabs((double)got[i] - want[i]) / (den > 1e-30 ? den : 1e-30);
        EXPECT(err <= tol, "%s: element %zu of %zu: got %.9g, want %.9g (relative error %.3g > %.1g)", what, i, n,
               (double)got[i], want[i], err, tol);
    }
}

/* ---- host checks of the helpers --------------------------------------------------- */

START_TEST(test_host_layout) {
    static const int shapes[][4] = {{2, 3, 5, 7}, {1, 264, 3, 3}, {3, 1, 1, 1}, {4, 16, 8, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        const size_t n = (size_t)N * C * H * W;
        double *a = xmalloc(n * sizeof *a), *b = xmalloc(n * sizeof *b), *back = xmalloc(n * sizeof *back);
        /* Each element carries its own coordinates, so a wrong index shows. */
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++)
                        a[(((size_t)i * C + c) * H + y) * W + x] = i * 1e7 + c * 1e4 + y * 1e2 + x;
        nchw_to_nhwc_d(b, a, N, C, H, W);
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++)
                        EXPECT(b[(((size_t)i * H + y) * W + x) * C + c] == i * 1e7 + c * 1e4 + y * 1e2 + x,
                               "nchw_to_nhwc_d: element (%d, %d, %d, %d)", i, c, y, x);
        nhwc_to_nchw_d(back, b, N, C, H, W);
        ck_assert(!memcmp(a, back, n * sizeof *a));
        float *af = round_f(a, n), *bf = xmalloc(n * sizeof *bf), *backf = xmalloc(n * sizeof *backf);
        nchw_to_nhwc_f(bf, af, N, C, H, W);
        for (size_t i = 0; i < n; i++) EXPECT(bf[i] == (float)b[i], "nchw_to_nhwc_f: element %zu", i);
        nhwc_to_nchw_f(backf, bf, N, C, H, W);
        ck_assert(!memcmp(af, backf, n * sizeof *af));
        free(a), free(b), free(back), free(af), free(bf), free(backf);
    }
}
END_TEST

/* host_gather on a 1 x 2 x 3 image worked by hand from prepare_image's rule
 * sx = (flip ? w-1-x : x) + ox, sy = y + oy; the border is lut[0]. */
START_TEST(test_host_gather_by_hand) {
    const uint8_t img[6] = {1, 2, 3, 4, 5, 6}, lab[1] = {7};
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (float)v;
    lut[0] = -1.0f;
    const uint32_t perm[3] = {0, 0, 0}; /* one image, at three positions of the "epoch" */
    const int8_t oy[3] = {0, -1, 1}, ox[3] = {1, 0, -2};
    const uint8_t flip[3] = {1, 0, 1};
    float d[6];
    int32_t l[1];
    static const float want[3][6] = {
        {-1, 3, 2, -1, 6, 5},   /* flip, ox 1: sx = 3 - x */
        {-1, -1, -1, 1, 2, 3},  /* oy -1: row 0 from row -1 */
        {4, -1, -1, -1, -1, -1} /* flip, oy 1, ox -2: sx = -x; row 0 from row 1, row 1 from row 2 */
    };
    for (int p = 0; p < 3; p++) {
        host_gather(d, l, img, lab, lut, perm, oy, ox, flip, p, 1, 3, 1, 2, 3);
        for (int i = 0; i < 6; i++) EXPECT(d[i] == want[p][i], "position %d pixel %d: %g", p, i, (double)d[i]);
        ck_assert_int_eq(l[0], 7);
    }
    host_gather(d, l, img, lab, lut, perm, oy, ox, flip, 1, 1, 1, 1, 2, 3); /* past n_total: padding */
    for (int i = 0; i < 6; i++) EXPECT(d[i] == 0.0f, "padding pixel %d: %g", i, (double)d[i]);
    ck_assert_int_eq(l[0], -1);
}
END_TEST

/* A synthetic data set: random bytes, with whole runs of 0 and 255. */
typedef struct synth_set {
    mfres_dataset ds;
    float mean[3], std[3];
} synth_set;

static void synth_make(synth_set *s, int n, int c, int h, int w, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->ds.n = n, s->ds.c = c, s->ds.h = h, s->ds.w = w, s->ds.num_classes = 10;
    const size_t bytes = (size_t)n * c * h * w;
    s->ds.pixels = xmalloc(bytes);
    s->ds.labels = xmalloc((size_t)n);
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    for (size_t i = 0; i < bytes; i++) {
        uint32_t r = mfres_rng_below(&rng, 300);
        s->ds.pixels[i] = r < 256 ? (uint8_t)r : r < 280 ? 0 : 255;
    }
    for (int i = 0; i < n; i++) s->ds.labels[i] = (uint8_t)mfres_rng_below(&rng, 10);
    for (int k = 0; k < 3; k++) s->mean[k] = 0.3f + 0.1f * k, s->std[k] = 0.2f + 0.05f * k;
}
static void synth_free(synth_set *s) {
    free(s->ds.pixels);
    free(s->ds.labels);
    memset(s, 0, sizeof *s);
}

typedef struct epoch_plan {
    long n;
    uint32_t *perm;
    int8_t *oy, *ox;
    uint8_t *flip;
} epoch_plan;

static void plan_make(epoch_plan *p, mfres_loader *l, const mfres_dataset *ds, int epoch) {
    p->n = ds->n;
    p->perm = xmalloc(sizeof *p->perm * (size_t)ds->n);
    p->oy = xmalloc((size_t)ds->n), p->ox = xmalloc((size_t)ds->n), p->flip = xmalloc((size_t)ds->n);
    ck_assert_ok(mfres_loader_epoch_plan(l, epoch, p->perm, p->oy, p->ox, p->flip));
}
static void plan_free(epoch_plan *p) { free(p->perm), free(p->oy), free(p->ox), free(p->flip); }

static mfres_loader_config gather_cfg(const synth_set *s, int batch) {
    mfres_loader_config cfg = {.batch = batch,
                               .shuffle = true,
                               .augment = true,
                               .pad = 4,
                               .flip = true,
                               .seed = 5,
                               .mean = s->mean,
                               .std = s->std};
    return cfg;
}

/* The restatement against the loader itself: every batch of two epochs, with
 * shuffling, crops (pad 4, larger than half the 7 x 5 image) and flips. */
START_TEST(test_host_gather_matches_loader) {
    static const int sets[][5] = {{37, 3, 7, 5, 16}, {100, 1, 28, 28, 64}}; /* n, c, h, w, batch */
    for (size_t t = 0; t < sizeof sets / sizeof sets[0]; t++) {
        synth_set s;
        synth_make(&s, sets[t][0], sets[t][1], sets[t][2], sets[t][3], 100 + t);
        const int C = s.ds.c, H = s.ds.h, W = s.ds.w, B = sets[t][4];
        mfres_loader_config cfg = gather_cfg(&s, B);
        mfres_loader *l;
        ck_assert_ok(mfres_loader_create(&l, &s.ds, &cfg));
        const size_t image = (size_t)C * H * W;
        float *mine = xmalloc(sizeof(float) * image * B), *nchw = xmalloc(sizeof(float) * image * B);
        int32_t *labels = xmalloc(sizeof(int32_t) * B);
        for (int epoch = 0; epoch < 2; epoch++) {
            epoch_plan p;
            plan_make(&p, l, &s.ds, epoch);
            const float *x;
            const int32_t *y;
            int count, j = 0;
            while (mfres_loader_next(l, &x, &y, &count) == 1) {
                host_gather(mine, labels, s.ds.pixels, s.ds.labels, mfres_loader_lut(l), p.perm, p.oy, p.ox, p.flip,
                            (long)j * B, B, p.n, C, H, W);
                nhwc_to_nchw_f(nchw, mine, B, C, H, W);
                expect_same_f("host_gather vs the loader (pixels)", nchw, x, image * B);
                expect_same_bytes("host_gather vs the loader (labels)", labels, y, (size_t)B, sizeof *y);
                j++;
            }
            ck_assert_int_eq(j, (s.ds.n + B - 1) / B);
            plan_free(&p);
        }
        mfres_loader_free(l);
        free(mine), free(nchw), free(labels);
        synth_free(&s);
    }
}
END_TEST

/* The float form of mf_tau_grad that gk_meanfield_tau_grad follows, against the library's. */
static void host_tau_grad(float *tau_grad, const int *order, const float *dh, int P) {
    for (int s = 0; s < 3; s++) {
        const float *a = dh + (size_t)s * (P + 1) + 1;
        for (int l = 0; l < P; l++) tau_grad[s * P + order[s * P + l]] = l + 1 < P ? a[l] - a[l + 1] : a[l];
    }
}

static void random_orders(int *order, int P, uint64_t seed) {
    mfres_rng rng;
    mfres_rng_seed(&rng, seed);
    for (int s = 0; s < 3; s++) {
        uint32_t tmp[P > 0 ? P : 1];
        for (int i = 0; i < P; i++) tmp[i] = (uint32_t)i;
        mfres_rng_shuffle_u32(&rng, tmp, (size_t)P);
        for (int i = 0; i < P; i++) order[s * P + i] = (int)tmp[i];
    }
}

START_TEST(test_host_tau_grad) {
    const int P = 17;
    int order[3 * 17];
    random_orders(order, P, 3);
    double *dh = randn(3 * (P + 1), 4, 0.0, 1.0);
    float *dhf = round_f(dh, 3 * (P + 1)), mine[3 * 17], lib[3 * 17];
    host_tau_grad(mine, order, dhf, P);
    for (int s = 0; s < 3; s++) mf_tau_grad(lib + s * P, order + s * P, dh + s * (P + 1) + 1, P);
    double want[3 * 17];
    for (int i = 0; i < 3 * P; i++) want[i] = lib[i];
    expect_close("float tau gradient vs mf_tau_grad", mine, want, 3 * P, 1e-6);
    free(dh), free(dhf);
}
END_TEST

#ifdef MFRES_HAVE_CUDA
/* float32 bit patterns and their bfloat16 under round to nearest, ties to
 * even (__float2bfloat16_rn), worked out by hand: the upper 16 bits, plus one
 * when the lower 16 are above 0x8000, or exactly 0x8000 and the upper half is
 * odd. nan: the result is any NaN (the host helper keeps the payload, the
 * device gives 0x7fff); a naive rounding would make 0x7f800001 infinity and
 * 0x7fffffff, 0xffffffff zeros. */
static const struct bf16_case {
    uint32_t f;
    uint16_t b;
    bool nan;
} bf16_cases[] = {
    {0x3f800000u, 0x3f80u, false}, /* 1: exact */
    {0x3f808000u, 0x3f80u, false}, /* 1 + 2^-8: a tie, 0x3f80 even: down */
    {0x3f818000u, 0x3f82u, false}, /* a tie, 0x3f81 odd: up */
    {0x3f808001u, 0x3f81u, false}, /* just above the tie: up */
    {0x3f807fffu, 0x3f80u, false}, /* just below: down */
    {0xbf818000u, 0xbf82u, false}, /* negative tie, odd: away from 0 */
    {0xbf808000u, 0xbf80u, false}, /* negative tie, even: toward 0 */
    {0x3fff8000u, 0x4000u, false}, /* tie, 0x3fff odd: up, carries into the exponent (2) */
    {0x7f7f7fffu, 0x7f7fu, false}, /* just below the top midpoint: the largest finite bfloat16 */
    {0x7f7f8000u, 0x7f80u, false}, /* the midpoint between 0x7f7f (odd) and 2^128: infinity */
    {0x7f7fffffu, 0x7f80u, false}, /* FLT_MAX overflows to +infinity */
    {0xff7fffffu, 0xff80u, false}, /* -FLT_MAX to -infinity */
    {0x7f800000u, 0x7f80u, false}, /* +infinity */
    {0xff800000u, 0xff80u, false}, /* -infinity */
    {0x00000000u, 0x0000u, false}, /* +0 */
    {0x80000000u, 0x8000u, false}, /* -0 */
    {0x00000001u, 0x0000u, false}, /* the least subnormal: +0 */
    {0x80000001u, 0x8000u, false}, /* its negative: -0 */
    {0x00008000u, 0x0000u, false}, /* subnormal tie between 0 and 0x0001: 0, even */
    {0x00018000u, 0x0002u, false}, /* subnormal tie, 0x0001 odd: up */
    {0x00008001u, 0x0001u, false}, /* above the tie: the least bfloat16 subnormal */
    {0x80018000u, 0x8002u, false}, /* negative subnormal tie: away from 0 */
    {0x007fffffu, 0x0080u, false}, /* the largest subnormal rounds up to 2^-126, normal */
    {0x7fc00000u, 0x7fc0u, true},  /* quiet NaN */
    {0x7f800001u, 0x7fc0u, true},  /* signalling NaN with only the low bit: truncation would give infinity */
    {0x7fffffffu, 0x7fffu, true},  /* rounding up would wrap to -0 */
    {0xffffffffu, 0xffffu, true},  /* rounding up would wrap past 32 bits to +0 */
};
enum { N_BF16_CASES = sizeof bf16_cases / sizeof bf16_cases[0] };

static float f32_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static uint32_t bits_of_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static bool bf16_is_nan(uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x007fu) != 0; }

/* kernels.h's host bfloat16 (the test's reference for the device) against the
 * hand-worked table, and back. */
START_TEST(test_host_bf16) {
    for (int k = 0; k < N_BF16_CASES; k++) {
        const struct bf16_case *c = &bf16_cases[k];
        uint16_t got = gk_bf16_from_float(f32_of_bits(c->f));
        if (c->nan)
            EXPECT(bf16_is_nan(got) && (got & 0x0040u), "gk_bf16_from_float(0x%08x) = 0x%04x, want a quiet NaN",
                   (unsigned)c->f, (unsigned)got);
        else
            EXPECT(got == c->b, "gk_bf16_from_float(0x%08x) = 0x%04x, want 0x%04x", (unsigned)c->f, (unsigned)got,
                   (unsigned)c->b);
    }
    /* bfloat16 to float: the bits shifted up, exact */
    static const struct {
        uint16_t b;
        uint32_t f;
    } back[] = {{0x3f80u, 0x3f800000u}, {0xc040u, 0xc0400000u}, {0x7f80u, 0x7f800000u},
                {0x0001u, 0x00010000u}, {0x8000u, 0x80000000u}, {0x7fc1u, 0x7fc10000u}};
    for (size_t k = 0; k < sizeof back / sizeof back[0]; k++)
        EXPECT(bits_of_f32(gk_float_from_bf16(back[k].b)) == back[k].f, "gk_float_from_bf16(0x%04x) = 0x%08x",
               (unsigned)back[k].b, (unsigned)bits_of_f32(gk_float_from_bf16(back[k].b)));
    ck_assert(gk_float_from_bf16(0xc040u) == -3.0f);
    /* gk_store rounds, gk_load reads back; float32 arrays are plain */
    uint16_t hb[2];
    float hf[2];
    gk_store(GK_BF16, hb, 1, f32_of_bits(0x3f818000u));
    ck_assert_uint_eq(hb[1], 0x3f82u);
    ck_assert(gk_load(GK_BF16, hb, 1) == f32_of_bits(0x3f820000u));
    gk_store(GK_F32, hf, 1, f32_of_bits(0x3f818000u));
    ck_assert_uint_eq(bits_of_f32(hf[1]), 0x3f818000u);
    ck_assert(gk_load(GK_F32, hf, 1) == f32_of_bits(0x3f818000u));
    ck_assert_uint_eq(gk_dtype_size(GK_F32), 4);
    ck_assert_uint_eq(gk_dtype_size(GK_BF16), 2);
}
END_TEST
#endif

static Suite *host_suite(void) {
    Suite *s = suite_create("gpu_kernels_host");
    TCase *tc = tcase_create("helpers");
    tcase_add_test(tc, test_host_layout);
    tcase_add_test(tc, test_host_gather_by_hand);
    tcase_add_test(tc, test_host_gather_matches_loader);
    tcase_add_test(tc, test_host_tau_grad);
#ifdef MFRES_HAVE_CUDA
    tcase_add_test(tc, test_host_bf16);
#endif
    suite_add_tcase(s, tc);
    return s;
}

#ifdef MFRES_HAVE_CUDA
/* ---- device helpers ------------------------------------------------------------------ */

#define CUDA_CHECK(expr)                                                                                               \
    do {                                                                                                               \
        cudaError_t e_ = (expr);                                                                                       \
        ck_assert_msg(e_ == cudaSuccess, "%s failed: %s", #expr, cudaGetErrorString(e_));                              \
    } while (0)
/* A kernel launch, then a synchronisation, so that a fault is pinned on it. */
#define GK(expr)                                                                                                       \
    do {                                                                                                               \
        int e_ = (expr);                                                                                               \
        ck_assert_msg(e_ == 0, "%s returned %d: %s", #expr, e_, cudaGetErrorString((cudaError_t)e_));                  \
        CUDA_CHECK(cudaDeviceSynchronize());                                                                           \
    } while (0)

/* Sums: |got - want| <= tol * sum of the absolute terms (what float rounding scales with). */
static void expect_sum(const char *what, double got, double want, double abs_terms, double tol) {
    double den = abs_terms > 1e-30 ? abs_terms : 1e-30;
    EXPECT(fabs(got - want) <= tol * den, "%s: got %.9g, want %.9g (error %.3g, sum of |terms| %.3g)", what, got, want,
           fabs(got - want), abs_terms);
}

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 16));
    return p;
}
static void *dev_dup(const void *h, size_t bytes) {
    void *d = dev_alloc(bytes);
    if (bytes) CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static void dev_put(void *d, const void *h, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
}
static void dev_get(void *h, const void *d, size_t bytes) {
    CUDA_CHECK(cudaDeviceSynchronize());
    if (bytes) CUDA_CHECK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
}
static float *dev_scalar(float v) { return dev_dup(&v, sizeof v); }
static float *get_f(const float *d, size_t n) {
    float *h = xmalloc(n * sizeof *h);
    dev_get(h, d, n * sizeof *h);
    return h;
}
static void dev_free(void *p) { CUDA_CHECK(cudaFree(p)); }

/* ---- element types ------------------------------------------------------------------- */

static const char *dtype_name(gk_dtype t) { return t == GK_BF16 ? "bf16" : "fp32"; }

/* x rounded to the element type t (float32, or bfloat16 by way of float32),
 * as an array of t, and x itself set to the rounded values, so that a
 * reference in double sees exactly the GPU's input. For GK_F32: round_f. */
static void *round_t(gk_dtype t, double *x, size_t n) {
    void *h = xmalloc(n * gk_dtype_size(t));
    for (size_t i = 0; i < n; i++) {
        gk_store(t, h, i, (float)x[i]);
        x[i] = gk_load(t, h, i);
    }
    return h;
}
/* n elements of type t from the device, as floats (exact: bfloat16 widens). */
static float *get_t(gk_dtype t, const void *d, size_t n) {
    void *raw = xmalloc(n * gk_dtype_size(t));
    dev_get(raw, d, n * gk_dtype_size(t));
    float *h = xmalloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = gk_load(t, raw, i);
    free(raw);
    return h;
}

/* expect_close for a map of type t: float32 as it is; bfloat16 may be off by
 * one more rounding to nearest, at most 2^-8 of the value, on top of float32's
 * error e = tol * max(|want_i|, rms(want)): |got - want| <= 2^-8 (|want| + e) + e. */
static void expect_close_t(gk_dtype t, const char *what, const float *got, const double *want, size_t n, double tol) {
    if (t == GK_F32) {
        expect_close(what, got, want, n, tol);
        return;
    }
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += want[i] * want[i];
    const double rms = n ? sqrt(ss / (double)n) : 0.0, u = 1.0 / 256.0;
    for (size_t i = 0; i < n; i++) {
        double e = tol * (fabs(want[i]) > rms ? fabs(want[i]) : rms);
        double err = fabs((double)got[i] - want[i]), bound = u * (fabs(want[i]) + e) + e;
        EXPECT(err <= bound, "%s (bf16): element %zu of %zu: got %.9g, want %.9g (error %.3g > %.3g)", what, i, n,
               (double)got[i], want[i], err, bound);
    }
}

/* A map of type t that only moves elements: bit for bit gk_store's rounding of
 * the float32 result (for GK_F32, the floats themselves). */
static void expect_exact_t(gk_dtype t, const char *what, const void *got_raw, const float *want, size_t n) {
    const size_t es = gk_dtype_size(t);
    union {
        float f;
        uint16_t b;
    } w;
    for (size_t i = 0; i < n; i++) {
        gk_store(t, &w, 0, want[i]);
        EXPECT(!memcmp((const unsigned char *)got_raw + i * es, &w, es),
               "%s (%s): element %zu of %zu differs: got %.9g, want %.9g rounded", what, dtype_name(t), i, n,
               (double)gk_load(t, got_raw, i), (double)want[i]);
    }
}
static void *get_raw(const void *d, size_t bytes) {
    void *h = xmalloc(bytes);
    dev_get(h, d, bytes);
    return h;
}
/* Each float rounded to type t and widened back (for GK_F32, a copy). */
static float *round_trip(gk_dtype t, const float *f, size_t n) {
    float *r = xmalloc(n * sizeof *r);
    union {
        float f;
        uint16_t b;
    } w;
    for (size_t i = 0; i < n; i++) {
        gk_store(t, &w, 0, f[i]);
        r[i] = gk_load(t, &w, 0);
    }
    return r;
}

static double *nhwc_of_nchw(const double *nchw, int N, int C, int H, int W) {
    double *d = xmalloc(sizeof *d * (size_t)N * C * H * W);
    nchw_to_nhwc_d(d, nchw, N, C, H, W);
    return d;
}
static double *nchw_of_nhwc(const double *nhwc, int N, int C, int H, int W) {
    double *d = xmalloc(sizeof *d * (size_t)N * C * H * W);
    nhwc_to_nchw_d(d, nhwc, N, C, H, W);
    return d;
}

/* The library is built by the same compiler as this test. GCC in ISO C mode
 * (-std=c11) contracts no a*b+c into an FMA and kernels.cu rounds each
 * operation of SGD on its own, so there the GPU's update is the CPU's bit for
 * bit; another compiler may fuse, and gets a tolerance. */
#if defined(__GNUC__) && !defined(__clang__)
#define SGD_EXACT 1
#else
#define SGD_EXACT 0
#endif
static void expect_sgd(const char *what, const float *got, const float *want, size_t n) {
    if (SGD_EXACT) {
        expect_same_f(what, got, want, n);
        return;
    }
    double *w = xmalloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) w[i] = want[i];
    expect_close(what, got, w, n, 1e-6);
    free(w);
}

static const float EPS = 1e-5f;

/* ---- layout ---------------------------------------------------------------------------- */

/* A map of `rows` rows of Cp >= C channels of type t against the same rows of
 * C channels: the first C channels bit for bit, the rest zeros. */
static void expect_padded(gk_dtype t, const char *what, const void *padded, const void *plain, size_t rows, int C,
                          int Cp) {
    const size_t es = gk_dtype_size(t);
    const unsigned char *a = padded, *b = plain;
    static const unsigned char zero[4];
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < Cp; c++) {
            const unsigned char *want = c < C ? b + (r * C + c) * es : zero;
            EXPECT(!memcmp(a + (r * Cp + c) * es, want, es), "%s (%s): row %zu channel %d of %d (%d real) differs",
                   what, dtype_name(t), r, c, Cp, C);
        }
}

/* The channel count the stem's tensor cores get: C rounded up past a multiple of 8. */
static int padded_c(int C) { return C + 8 - C % 8; }

/* float32 NCHW in, NHWC of type t: for bfloat16 the rounding itself is under
 * test (the input is float32, not rounded first), against gk_bf16_from_float;
 * then with padded channels, which must be the same map plus zeros. */
static void check_layout(gk_dtype t) {
    static const int shapes[][4] = {{2, 3, 5, 7}, {4, 16, 8, 8}, {1, 264, 3, 3}, {3, 1, 1, 1}, {5, 3, 32, 32}};
    const size_t es = gk_dtype_size(t);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], C = shapes[s][1], H = shapes[s][2], W = shapes[s][3];
        const size_t n = (size_t)N * C * H * W;
        double *a = randn(n, 1 + s, 0.0, 1.0);
        float *af = round_f(a, n), *want = xmalloc(n * sizeof *want);
        float *d_a = dev_dup(af, n * sizeof *af), *d_c = dev_alloc(n * sizeof *af);
        void *d_b = dev_alloc(n * es);
        GK(gk_nchw_to_nhwc(t, d_b, d_a, N, C, C, H, W, 0));
        void *got = get_raw(d_b, n * es);
        nchw_to_nhwc_f(want, af, N, C, H, W);
        expect_exact_t(t, "gk_nchw_to_nhwc", got, want, n);
        const int Cp = padded_c(C);
        const size_t rows = (size_t)N * H * W;
        void *d_p = dev_alloc(rows * Cp * es);
        GK(gk_nchw_to_nhwc(t, d_p, d_a, N, C, Cp, H, W, 0));
        void *got_p = get_raw(d_p, rows * Cp * es);
        expect_padded(t, "gk_nchw_to_nhwc with padded channels", got_p, got, rows, C, Cp);
        dev_free(d_p), free(got_p);
        GK(gk_nhwc_to_nchw(t, d_c, d_b, N, C, H, W, 0));
        float *back = get_f(d_c, n), *back_want = round_trip(t, af, n);
        expect_same_f(t == GK_F32 ? "gk_nhwc_to_nchw" : "gk_nhwc_to_nchw (bf16)", back, back_want, n);
        dev_free(d_a), dev_free(d_b), dev_free(d_c);
        free(a), free(af), free(want), free(got), free(back), free(back_want);
    }
}

START_TEST(test_layout) { check_layout(GK_F32); }
END_TEST

START_TEST(test_layout_bf16) { check_layout(GK_BF16); }
END_TEST

/* gk_convert: the hand-worked table on the device (its own rounding, not the
 * host helper's), then random values of every magnitude, n past one grid. */
START_TEST(test_convert) {
    /* the table: float32 -> bfloat16 -> float32, and copies that keep NaN payloads */
    const size_t m = N_BF16_CASES;
    float *f = xmalloc(m * sizeof *f);
    uint16_t *b = xmalloc(m * sizeof *b);
    for (size_t k = 0; k < m; k++) f[k] = f32_of_bits(bf16_cases[k].f), b[k] = bf16_cases[k].b;
    float *d_f = dev_dup(f, m * 4), *d_f2 = dev_alloc(m * 4);
    uint16_t *d_b = dev_alloc(m * 2), *d_b2 = dev_alloc(m * 2);
    GK(gk_convert(GK_BF16, d_b, GK_F32, d_f, (long)m, 0));
    uint16_t *gb = get_raw(d_b, m * 2);
    for (size_t k = 0; k < m; k++) {
        if (bf16_cases[k].nan)
            EXPECT(bf16_is_nan(gb[k]), "gk_convert f32 -> bf16 of 0x%08x: 0x%04x, want a NaN",
                   (unsigned)bf16_cases[k].f, (unsigned)gb[k]);
        else
            EXPECT(gb[k] == b[k], "gk_convert f32 -> bf16 of 0x%08x: 0x%04x, want 0x%04x", (unsigned)bf16_cases[k].f,
                   (unsigned)gb[k], (unsigned)b[k]);
    }
    dev_put(d_b, b, m * 2);
    GK(gk_convert(GK_F32, d_f2, GK_BF16, d_b, (long)m, 0));
    float *gf = get_f(d_f2, m);
    for (size_t k = 0; k < m; k++)
        EXPECT(bits_of_f32(gf[k]) == (uint32_t)b[k] << 16, "gk_convert bf16 -> f32 of 0x%04x: 0x%08x",
               (unsigned)b[k], (unsigned)bits_of_f32(gf[k]));
    GK(gk_convert(GK_BF16, d_b2, GK_BF16, d_b, (long)m, 0));
    uint16_t *gb2 = get_raw(d_b2, m * 2);
    expect_same_bytes("gk_convert bf16 -> bf16 (NaN payloads included)", gb2, b, m, 2);
    GK(gk_convert(GK_F32, d_f2, GK_F32, d_f, (long)m, 0));
    float *gf2 = get_f(d_f2, m);
    expect_same_bytes("gk_convert f32 -> f32 (NaN payloads included)", gf2, f, m, 4);
    dev_free(d_f), dev_free(d_f2), dev_free(d_b), dev_free(d_b2);
    free(f), free(b), free(gb), free(gf), free(gb2), free(gf2);

    /* random: normal values scaled by 2^-140 .. 2^120 (subnormal to huge), both signs */
    static const long sizes[] = {1, 7, 1000, (1L << 20) + 3};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const size_t n = (size_t)sizes[s];
        double *x = randn(n, 240 + s, 0.0, 1.0);
        mfres_rng rng;
        mfres_rng_seed(&rng, 250 + s);
        for (size_t i = 0; i < n; i++) x[i] = ldexp(x[i], (int)mfres_rng_below(&rng, 261) - 140);
        float *xf = round_f(x, n);
        float *d_x = dev_dup(xf, n * 4), *d_back = dev_alloc(n * 4);
        void *d_h = dev_alloc(n * 2), *d_h2 = dev_alloc(n * 2);
        GK(gk_convert(GK_BF16, d_h, GK_F32, d_x, (long)n, 0));
        void *h = get_raw(d_h, n * 2);
        expect_exact_t(GK_BF16, "gk_convert f32 -> bf16", h, xf, n);
        GK(gk_convert(GK_F32, d_back, GK_BF16, d_h, (long)n, 0));
        float *back = get_f(d_back, n), *back_want = round_trip(GK_BF16, xf, n);
        expect_same_f("gk_convert bf16 -> f32", back, back_want, n);
        GK(gk_convert(GK_BF16, d_h2, GK_BF16, d_h, (long)n, 0));
        void *h2 = get_raw(d_h2, n * 2);
        expect_same_bytes("gk_convert bf16 -> bf16", h2, h, n, 2);
        GK(gk_convert(GK_F32, d_back, GK_F32, d_x, (long)n, 0));
        float *copy = get_f(d_back, n);
        expect_same_f("gk_convert f32 -> f32", copy, xf, n);
        dev_free(d_x), dev_free(d_back), dev_free(d_h), dev_free(d_h2);
        free(x), free(xf), free(h), free(back), free(back_want), free(h2), free(copy);
    }
    /* nothing to convert is no work */
    GK(gk_convert(GK_BF16, NULL, GK_F32, NULL, 0, 0));
}
END_TEST

/* gk_convert_channels: the stem's float32 KRSC weights padded to Cp channels
 * in either type (the real channels as gk_convert gives them, zeros after),
 * and a padded weight gradient of either type cut back to float32. */
START_TEST(test_convert_channels) {
    static const int shapes[][2] = {{16 * 3 * 3, 3}, {16 * 3 * 3, 1}, {64 * 7 * 7, 3}, {5, 8}, {1000, 13}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const long rows = shapes[k][0];
        const int C = shapes[k][1], Cp = padded_c(C);
        const size_t n = (size_t)rows * C, np = (size_t)rows * Cp;
        double *x = randn(np, 270 + k, 0.0, 1.0);
        float *xf = round_f(x, np);
        float *d_x = dev_dup(xf, n * 4), *d_xp = dev_dup(xf, np * 4), *d_back = dev_alloc(n * 4);
        for (int ti = 0; ti < 2; ti++) {
            const gk_dtype t = ti ? GK_BF16 : GK_F32;
            const size_t es = gk_dtype_size(t);
            void *d_plain = dev_alloc(n * es), *d_pad = dev_alloc(np * es);
            GK(gk_convert(t, d_plain, GK_F32, d_x, (long)n, 0));
            GK(gk_convert_channels(t, d_pad, Cp, GK_F32, d_x, C, rows, C, 0));
            void *plain = get_raw(d_plain, n * es), *pad = get_raw(d_pad, np * es);
            expect_padded(t, "gk_convert_channels: weights padded", pad, plain, (size_t)rows, C, Cp);
            /* cut back: a padded map of type t (every channel set) to float32 */
            GK(gk_convert(t, d_pad, GK_F32, d_xp, (long)np, 0));
            GK(gk_convert_channels(GK_F32, d_back, C, t, d_pad, Cp, rows, C, 0));
            float *back = get_f(d_back, n), *want = xmalloc(n * sizeof *want);
            for (long r = 0; r < rows; r++)
                for (int c = 0; c < C; c++) {
                    union {
                        float f;
                        uint16_t b;
                    } w;
                    gk_store(t, &w, 0, xf[(size_t)r * Cp + c]);
                    want[(size_t)r * C + c] = gk_load(t, &w, 0);
                }
            expect_same_f(t == GK_F32 ? "gk_convert_channels: gradient cut back"
                                      : "gk_convert_channels: bf16 gradient cut back and widened",
                          back, want, n);
            dev_free(d_plain), dev_free(d_pad);
            free(plain), free(pad), free(back), free(want);
        }
        dev_free(d_x), dev_free(d_xp), dev_free(d_back);
        free(x), free(xf);
    }
    ck_assert_int_eq(gk_convert_channels(GK_F32, NULL, 2, GK_F32, NULL, 3, 1, 3, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_convert_channels(GK_F32, NULL, 3, GK_F32, NULL, 2, 1, 3, 0), cudaErrorInvalidValue);
    GK(gk_convert_channels(GK_BF16, NULL, 8, GK_F32, NULL, 3, 0, 3, 0));
}
END_TEST

/* ---- batch norm ------------------------------------------------------------------------ */

/* N, H, W, C. rows = N H W: 105 (not a block multiple), 1, 65536 (512 row
 * chunks), and C = 1024, 2048 (where the chunk count is capped by the width). */
static const int bn_shapes[][4] = {{3, 5, 7, 3},     {4, 8, 8, 16},    {2, 4, 4, 48},    {2, 3, 3, 264},
                                   {1, 1, 1, 5},     {64, 32, 32, 16}, {16, 16, 16, 32}, {32, 8, 8, 520},
                                   {64, 8, 8, 1024}, {32, 8, 8, 2048}};
enum { N_BN_SHAPES = sizeof bn_shapes / sizeof bn_shapes[0] };

static void check_bn_forward(gk_dtype t, int N, int H, int W, int C, uint64_t seed) {
    const long rows = (long)N * H * W;
    const size_t n = (size_t)rows * C, cb = (size_t)C * sizeof(float), nb = n * gk_dtype_size(t);
    const int HW = H * W;
    const double eps = EPS;
    const float mom = 0.1f, hval = 0.37f;
    double *x = randn(n, seed, 3.0, 2.0), *gamma = randn(C, seed + 1, 1.0, 0.3), *beta = randn(C, seed + 2, 0.0, 0.5);
    double *rm0 = randn(C, seed + 3, 0.0, 1.0), *rv0 = randn(C, seed + 4, 0.0, 1.0), *sc = randn(n, seed + 5, 0.0, 1.0);
    for (int c = 0; c < C; c++) rv0[c] = 0.5 + fabs(rv0[c]);
    void *xf = round_t(t, x, n), *scf = round_t(t, sc, n); /* the maps: float32 or bfloat16 */
    float *gf = round_f(gamma, C), *bf = round_f(beta, C), *rmf = round_f(rm0, C), *rvf = round_f(rv0, C);
    void *d_x = dev_dup(xf, nb), *d_y = dev_alloc(nb), *d_sc = dev_dup(scf, nb), *d_alias = dev_alloc(nb);
    float *d_g = dev_dup(gf, cb), *d_b = dev_dup(bf, cb), *d_rm = dev_dup(rmf, cb);
    float *d_rv = dev_dup(rvf, cb), *d_rm0 = dev_dup(rmf, cb), *d_rv0 = dev_dup(rvf, cb);
    float *d_mean = dev_alloc(cb), *d_inv = dev_alloc(cb), *d_h = dev_scalar(hval);
    float *d_part = dev_alloc(gk_partials_floats(C) * sizeof(float));

    /* statistics, against ref_batchnorm_forward */
    GK(gk_bn_stats(t, d_x, rows, C, EPS, mom, d_mean, d_inv, d_rm, d_rv, d_part, 0));
    float *mean = get_f(d_mean, C), *inv = get_f(d_inv, C), *rm = get_f(d_rm, C), *rv = get_f(d_rv, C);
    double *xc = nchw_of_nhwc(x, N, C, H, W), *yc = xmalloc(n * sizeof(double));
    double *mref = xmalloc(C * sizeof(double)), *rsref = xmalloc(C * sizeof(double));
    ref_batchnorm_forward(yc, mref, rsref, xc, gamma, beta, N, C, HW, eps);
    expect_close("gk_bn_stats mean", mean, mref, C, 1e-4);
    expect_close("gk_bn_stats invstd", inv, rsref, C, 1e-4);
    double *rm_want = xmalloc(C * sizeof(double)), *rv_want = xmalloc(C * sizeof(double));
    for (int c = 0; c < C; c++) {
        double var = 1.0 / (rsref[c] * rsref[c]) - eps;
        rm_want[c] = (1 - mom) * rm0[c] + mom * mref[c];
        rv_want[c] = (1 - mom) * rv0[c] + mom * var * (rows > 1 ? (double)rows / (double)(rows - 1) : 1.0);
    }
    expect_close("gk_bn_stats running_mean", rm, rm_want, C, 1e-4);
    expect_close("gk_bn_stats running_var", rv, rv_want, C, 1e-4);
    /* the same bits again */
    dev_put(d_rm, rmf, cb), dev_put(d_rv, rvf, cb);
    GK(gk_bn_stats(t, d_x, rows, C, EPS, mom, d_mean, d_inv, d_rm, d_rv, d_part, 0));
    float *mean2 = get_f(d_mean, C), *inv2 = get_f(d_inv, C), *rm2 = get_f(d_rm, C), *rv2 = get_f(d_rv, C);
    expect_same_f("gk_bn_stats mean, run twice", mean2, mean, C);
    expect_same_f("gk_bn_stats invstd, run twice", inv2, inv, C);
    expect_same_f("gk_bn_stats running_mean, run twice", rm2, rm, C);
    expect_same_f("gk_bn_stats running_var, run twice", rv2, rv, C);

    /* apply: against the reference's output (statistics included), and against
     * the formula on the GPU's own statistics (the element-wise part alone) */
    double *yref = nhwc_of_nchw(yc, N, C, H, W), *want = xmalloc(n * sizeof(double));
    double *branch = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        int c = (int)(i % (size_t)C);
        branch[i] = gamma[c] * ((x[i] - (double)mean[c]) * (double)inv[c]) + beta[c];
    }
    for (int relu = 0; relu <= 1; relu++) {
        GK(gk_bn_apply(t, d_y, d_x, rows, C, d_mean, d_inv, d_g, d_b, relu, 0));
        float *y = get_t(t, d_y, n);
        for (size_t i = 0; i < n; i++) want[i] = relu && yref[i] < 0 ? 0.0 : yref[i];
        expect_close_t(t, relu ? "gk_bn_apply relu vs ref_batchnorm_forward" : "gk_bn_apply vs ref_batchnorm_forward",
                       y, want, n, 1e-4);
        for (size_t i = 0; i < n; i++) want[i] = relu && branch[i] < 0 ? 0.0 : branch[i];
        expect_close_t(t, relu ? "gk_bn_apply relu" : "gk_bn_apply", y, want, n, 1e-5);
        free(y);
    }

    /* the post-activation block end, and with shortcut == out */
    GK(gk_bn_residual_relu(t, d_y, d_sc, d_x, rows, C, d_mean, d_inv, d_g, d_b, d_h, 0));
    float *out = get_t(t, d_y, n);
    ref_residual_forward(want, sc, branch, (double)hval, true, (long)n);
    expect_close_t(t, "gk_bn_residual_relu", out, want, n, 1e-5);
    dev_put(d_alias, scf, nb);
    GK(gk_bn_residual_relu(t, d_alias, d_alias, d_x, rows, C, d_mean, d_inv, d_g, d_b, d_h, 0));
    float *out_alias = get_t(t, d_alias, n);
    expect_same_f("gk_bn_residual_relu with shortcut == out", out_alias, out, n);

    /* inference forms, against ref_batchnorm_forward_inference */
    double *yinf_c = xmalloc(n * sizeof(double));
    ref_batchnorm_forward_inference(yinf_c, xc, gamma, beta, rm0, rv0, N, C, HW, eps);
    double *yinf = nhwc_of_nchw(yinf_c, N, C, H, W);
    for (int relu = 0; relu <= 1; relu++) {
        GK(gk_bn_apply_running(t, d_y, d_x, rows, C, d_rm0, d_rv0, EPS, d_g, d_b, relu, 0));
        float *y = get_t(t, d_y, n);
        for (size_t i = 0; i < n; i++) want[i] = relu && yinf[i] < 0 ? 0.0 : yinf[i];
        expect_close_t(t, relu ? "gk_bn_apply_running relu" : "gk_bn_apply_running", y, want, n, 1e-5);
        free(y);
    }
    GK(gk_bn_residual_relu_running(t, d_y, d_sc, d_x, rows, C, d_rm0, d_rv0, EPS, d_g, d_b, d_h, 0));
    float *out_inf = get_t(t, d_y, n);
    ref_residual_forward(want, sc, yinf, (double)hval, true, (long)n);
    expect_close_t(t, "gk_bn_residual_relu_running", out_inf, want, n, 1e-5);

    void *dev[] = {d_x, d_g, d_b, d_rm, d_rv, d_rm0, d_rv0, d_mean, d_inv, d_y, d_sc, d_alias, d_h, d_part};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) dev_free(dev[i]);
    void *host[] = {x,    gamma, beta, rm0,  rv0,    sc,  xf,        gf,     bf,      rmf,     rvf,   scf,
                    mean, inv,   rm,   rv,   xc,     yc,  mref,      rsref,  rm_want, rv_want, mean2, inv2,
                    rm2,  rv2,   yref, want, branch, out, out_alias, yinf_c, yinf,    out_inf};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

START_TEST(test_bn_forward) {
    const int *s = bn_shapes[_i];
    check_bn_forward(GK_F32, s[0], s[1], s[2], s[3], 1000 + 10 * (uint64_t)_i);
}
END_TEST

START_TEST(test_bn_forward_bf16) {
    const int *s = bn_shapes[_i];
    check_bn_forward(GK_BF16, s[0], s[1], s[2], s[3], 1000 + 10 * (uint64_t)_i);
}
END_TEST

static void check_bn_backward(gk_dtype t, int N, int H, int W, int C, uint64_t seed) {
    const long rows = (long)N * H * W;
    const size_t n = (size_t)rows * C, cb = (size_t)C * sizeof(float), nb = n * gk_dtype_size(t);
    const int HW = H * W;
    const float scale = 0.7f;
    double *x = randn(n, seed, 1.0, 2.0), *dy = randn(n, seed + 1, 0.0, 1.0), *mask = randn(n, seed + 2, 0.0, 1.0);
    double *gamma = randn(C, seed + 3, 1.0, 0.3), *beta = randn(C, seed + 4, 0.0, 0.5), *dx0 = randn(n, seed + 5, 0, 1);
    for (size_t i = 0; i < n; i += 7) mask[i] = 0.0; /* mask[i] > 0, not >= 0 */
    void *xf = round_t(t, x, n), *dyf = round_t(t, dy, n), *maskf = round_t(t, mask, n), *dx0f = round_t(t, dx0, n);
    float *gf = round_f(gamma, C), *bf = round_f(beta, C);
    /* the statistics the forward pass would have saved, as floats */
    double *mean = xmalloc(C * sizeof(double)), *inv = xmalloc(C * sizeof(double));
    for (int c = 0; c < C; c++) {
        double m = 0.0, v = 0.0;
        for (long r = 0; r < rows; r++) m += x[r * C + c];
        m /= (double)rows;
        for (long r = 0; r < rows; r++) v += (x[r * C + c] - m) * (x[r * C + c] - m);
        mean[c] = m, inv[c] = 1.0 / sqrt(v / (double)rows + EPS);
    }
    float *meanf = round_f(mean, C), *invf = round_f(inv, C);
    void *d_x = dev_dup(xf, nb), *d_dy = dev_dup(dyf, nb), *d_mask = dev_dup(maskf, nb), *d_dx = dev_alloc(nb);
    float *d_g = dev_dup(gf, cb), *d_b = dev_dup(bf, cb), *d_mean = dev_dup(meanf, cb), *d_inv = dev_dup(invf, cb);
    float *d_sums = dev_alloc(2 * cb), *d_dg = dev_alloc(cb), *d_db = dev_alloc(cb), *d_dh = dev_scalar(-99.0f);
    float *d_scale = dev_scalar(scale);
    float *d_part = dev_alloc(gk_partials_floats(C) * sizeof(float));
    double *dyp = xmalloc(n * sizeof(double)), *want = xmalloc(n * sizeof(double));
    double *sum1 = xmalloc(C * sizeof(double)), *sum2 = xmalloc(C * sizeof(double));
    double *abs1 = xmalloc(C * sizeof(double)), *abs2 = xmalloc(C * sizeof(double));
    double *xc = nchw_of_nhwc(x, N, C, H, W), *dinc = xmalloc(n * sizeof(double));

    for (int masked = 1; masked >= 0; masked--) {
        for (size_t i = 0; i < n; i++) dyp[i] = !masked || mask[i] > 0.0 ? dy[i] : 0.0; /* mask: rounded */
        double *dypc = nchw_of_nhwc(dyp, N, C, H, W);
        memset(sum1, 0, C * sizeof(double)), memset(sum2, 0, C * sizeof(double));
        /* ref: dbeta += sum dy', dgamma += sum dy' xhat, din = gamma rstd (dy' - ...) */
        ref_batchnorm_backward(dinc, sum2, sum1, dypc, xc, gamma, mean, inv, N, C, HW);
        double *din = nhwc_of_nchw(dinc, N, C, H, W);
        memset(abs1, 0, C * sizeof(double)), memset(abs2, 0, C * sizeof(double));
        for (size_t i = 0; i < n; i++) {
            int c = (int)(i % (size_t)C);
            abs1[c] += fabs(dyp[i]), abs2[c] += fabs(dyp[i] * (x[i] - mean[c]) * inv[c]);
        }
        const char *tag = masked ? " (mask)" : " (no mask)";
        char what[160];

        GK(gk_bn_backward_reduce(t, d_dy, masked ? d_mask : NULL, d_x, rows, C, d_mean, d_inv, d_sums, d_part, 0));
        float *sums = get_f(d_sums, 2 * (size_t)C);
        for (int c = 0; c < C; c++) {
            snprintf(what, sizeof what, "gk_bn_backward_reduce sum dy'%s, channel %d of %d", tag, c, C);
            expect_sum(what, sums[c], sum1[c], abs1[c], 1e-4);
            snprintf(what, sizeof what, "gk_bn_backward_reduce sum dy' xhat%s, channel %d of %d", tag, c, C);
            expect_sum(what, sums[C + c], sum2[c], abs2[c], 1e-4);
        }
        GK(gk_bn_backward_reduce(t, d_dy, masked ? d_mask : NULL, d_x, rows, C, d_mean, d_inv, d_sums, d_part, 0));
        float *sums2 = get_f(d_sums, 2 * (size_t)C);
        expect_same_f("gk_bn_backward_reduce, run twice", sums2, sums, 2 * (size_t)C);

        /* params: exactly scale * sums; dh (one thread, float) close to the reference's */
        const float sc = masked ? scale : 1.0f, dh_unset = -99.0f;
        dev_put(d_dh, &dh_unset, sizeof dh_unset);
        GK(gk_bn_backward_params(d_sums, C, d_g, d_b, masked ? d_scale : NULL, d_dg, d_db, masked ? d_dh : NULL, 0));
        float *dg = get_f(d_dg, C), *db = get_f(d_db, C), dh;
        dev_get(&dh, d_dh, sizeof dh);
        for (int c = 0; c < C; c++) {
            EXPECT(dg[c] == sc * sums[C + c], "gk_bn_backward_params dgamma%s channel %d: %.9g != %.9g", tag, c,
                   (double)dg[c], (double)(sc * sums[C + c]));
            EXPECT(db[c] == sc * sums[c], "gk_bn_backward_params dbeta%s channel %d: %.9g != %.9g", tag, c,
                   (double)db[c], (double)(sc * sums[c]));
        }
        if (masked) {
            double dh_want = 0.0, dh_abs = 0.0;
            for (int c = 0; c < C; c++) {
                dh_want += gamma[c] * sum2[c] + beta[c] * sum1[c];
                dh_abs += fabs(gamma[c]) * abs2[c] + fabs(beta[c]) * abs1[c];
            }
            expect_sum("gk_bn_backward_params dh", dh, dh_want, dh_abs, 1e-4);
        } else {
            ck_assert_msg(dh == dh_unset, "gk_bn_backward_params wrote dh when it was NULL");
        }

        /* data: written, accumulated, and in place (dx == dy) */
        if (masked) {
            for (int acc = 0; acc <= 1; acc++) {
                dev_put(d_dx, dx0f, nb);
                GK(gk_bn_backward_data(t, d_dx, d_dy, d_mask, d_x, rows, C, d_mean, d_inv, d_g, d_sums, d_scale, acc,
                                       0));
                float *dx = get_t(t, d_dx, n);
                for (size_t i = 0; i < n; i++) want[i] = (acc ? dx0[i] : 0.0) + (double)scale * din[i];
                expect_close_t(t, acc ? "gk_bn_backward_data accumulate" : "gk_bn_backward_data", dx, want, n, 1e-4);
                free(dx);
            }
        } else {
            dev_put(d_dx, dyf, nb);
            GK(gk_bn_backward_data(t, d_dx, d_dx, NULL, d_x, rows, C, d_mean, d_inv, d_g, d_sums, NULL, 0, 0));
            float *dx = get_t(t, d_dx, n);
            expect_close_t(t, "gk_bn_backward_data with dx == dy", dx, din, n, 1e-4);
            free(dx);
        }
        free(dypc), free(din), free(sums), free(sums2), free(dg), free(db);
    }
    void *dev[] = {d_x, d_dy, d_mask, d_g, d_b, d_mean, d_inv, d_sums, d_dg, d_db, d_dh, d_scale, d_dx, d_part};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) dev_free(dev[i]);
    void *host[] = {x,    dy,  mask,  gamma, beta, dx0,  xf,   dyf,  maskf, gf,   bf, dx0f,
                    mean, inv, meanf, invf,  dyp,  want, sum1, sum2, abs1,  abs2, xc, dinc};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

START_TEST(test_bn_backward) {
    const int *s = bn_shapes[_i];
    check_bn_backward(GK_F32, s[0], s[1], s[2], s[3], 2000 + 10 * (uint64_t)_i);
}
END_TEST

START_TEST(test_bn_backward_bf16) {
    const int *s = bn_shapes[_i];
    check_bn_backward(GK_BF16, s[0], s[1], s[2], s[3], 2000 + 10 * (uint64_t)_i);
}
END_TEST

/* ---- element-wise ------------------------------------------------------------------------ */

static const long ew_sizes[] = {1, 7, 1000, (1L << 20) + 3};
enum { N_EW_SIZES = sizeof ew_sizes / sizeof ew_sizes[0] };

static void check_elementwise(gk_dtype t, int k) {
    const size_t n = (size_t)ew_sizes[k], bytes = n * gk_dtype_size(t);
    const uint64_t seed = (uint64_t)k;
    const float hval = -0.61f, sval = -1.7f;
    double *a = randn(n, 50 + seed, 0.0, 1.0), *b = randn(n, 60 + seed, 0.0, 1.0), *m = randn(n, 70 + seed, 0.0, 1.0);
    for (size_t i = 0; i < n; i += 5) m[i] = 0.0;
    void *af = round_t(t, a, n), *bf = round_t(t, b, n), *mf = round_t(t, m, n);
    void *d_a = dev_dup(af, bytes), *d_b = dev_dup(bf, bytes), *d_m = dev_dup(mf, bytes), *d_out = dev_alloc(bytes);
    float *d_h = dev_scalar(hval), *d_s = dev_scalar(sval);
    double *want = xmalloc(n * sizeof(double));

    /* a mask keeps an element or makes it 0: exact in either type */
    GK(gk_relu_mask(t, d_a, d_m, (long)n, 0));
    float *got = get_t(t, d_a, n);
    ref_relu_backward(want, a, m, (long)n);
    for (size_t i = 0; i < n; i++) {
        const float w = (float)want[i];
        EXPECT(!memcmp(&got[i], &w, sizeof w), "gk_relu_mask (%s): element %zu of %zu: got %.9g, want %.9g",
               dtype_name(t), i, n, (double)got[i], (double)w);
    }
    free(got);

    dev_put(d_a, af, bytes);
    GK(gk_add(t, d_a, d_b, (long)n, 0));
    got = get_t(t, d_a, n);
    for (size_t i = 0; i < n; i++) want[i] = a[i] + b[i];
    expect_close_t(t, "gk_add", got, want, n, 1e-5);
    free(got);

    dev_put(d_a, af, bytes);
    GK(gk_scale(t, d_a, d_s, (long)n, 0));
    got = get_t(t, d_a, n);
    for (size_t i = 0; i < n; i++) want[i] = a[i] * (double)sval;
    expect_close_t(t, "gk_scale", got, want, n, 1e-5);
    free(got);

    dev_put(d_a, af, bytes);
    GK(gk_residual(t, d_out, d_a, d_b, d_h, (long)n, 0));
    got = get_t(t, d_out, n);
    ref_residual_forward(want, a, b, (double)hval, false, (long)n);
    expect_close_t(t, "gk_residual", got, want, n, 1e-5);
    GK(gk_residual(t, d_a, d_a, d_b, d_h, (long)n, 0));
    float *alias = get_t(t, d_a, n);
    expect_same_f("gk_residual with shortcut == out", alias, got, n);
    free(got), free(alias);

    void *dev[] = {d_a, d_b, d_m, d_h, d_s, d_out};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) dev_free(dev[i]);
    free(a), free(b), free(m), free(af), free(bf), free(mf), free(want);
}

START_TEST(test_elementwise) { check_elementwise(GK_F32, _i); }
END_TEST

START_TEST(test_elementwise_bf16) { check_elementwise(GK_BF16, _i); }
END_TEST

/* n = 0, and past DOT_BLOCKS x 2048 where the blocks loop. */
static const long dot_sizes[] = {0, 1, 255, 1000003, 3L * 1024 * 2048 + 17};
enum { N_DOT_SIZES = sizeof dot_sizes / sizeof dot_sizes[0] };

START_TEST(test_dot) {
    const size_t n = (size_t)dot_sizes[_i], bytes = n * sizeof(float);
    double *a = randn(n, 80 + _i, 0.5, 1.0), *b = randn(n, 90 + _i, 0.0, 1.0);
    float *af = round_f(a, n), *bf = round_f(b, n);
    float *d_a = dev_dup(af, bytes), *d_b = dev_dup(bf, bytes), *d_dot = dev_scalar(-7.0f);
    float *d_part = dev_alloc(gk_partials_floats(1) * sizeof(float));
    double want = 0.0, abs_terms = 0.0;
    for (size_t i = 0; i < n; i++) want += a[i] * b[i], abs_terms += fabs(a[i] * b[i]);
    float got, again;
    GK(gk_dot(d_a, d_b, (long)n, d_dot, d_part, 0));
    dev_get(&got, d_dot, sizeof got);
    if (n == 0)
        ck_assert_msg(got == 0.0f, "gk_dot of nothing: %g", (double)got);
    else
        expect_sum("gk_dot", got, want, abs_terms, 1e-4);
    GK(gk_dot(d_a, d_b, (long)n, d_dot, d_part, 0));
    dev_get(&again, d_dot, sizeof again);
    expect_same_f("gk_dot, run twice", &again, &got, 1);
    dev_free(d_a), dev_free(d_b), dev_free(d_dot), dev_free(d_part);
    free(a), free(b), free(af), free(bf);
}
END_TEST

/* ---- shortcuts and pooling ------------------------------------------------------------ */

static void check_shortcut_a(gk_dtype t) {
    static const int shapes[][4] = {{2, 8, 8, 16}, {3, 32, 32, 16}, {2, 7, 5, 3}, {1, 2, 2, 1}, {4, 16, 16, 32}};
    const size_t es = gk_dtype_size(t);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], H = shapes[s][1], W = shapes[s][2], C = shapes[s][3];
        const int OH = H / 2, OW = W / 2;
        const size_t nx = (size_t)N * H * W * C, no = (size_t)N * OH * OW * 2 * C;
        double *x = randn(nx, 100 + s, 0.0, 1.0), *dout = randn(no, 110 + s, 0.0, 1.0), *dx0 = randn(nx, 120 + s, 0, 1);
        void *xf = round_t(t, x, nx), *doutf = round_t(t, dout, no), *dx0f = round_t(t, dx0, nx);
        void *d_x = dev_dup(xf, nx * es), *d_out = dev_alloc(no * es), *d_dout = dev_dup(doutf, no * es);
        void *d_dx = dev_dup(dx0f, nx * es);

        /* a copy of elements and zeros: exact */
        GK(gk_shortcut_a_forward(t, d_out, d_x, N, H, W, C, 0));
        void *out = get_raw(d_out, no * es);
        float *wantf = xmalloc(no * sizeof(float));
        double *xc = nchw_of_nhwc(x, N, C, H, W), *oc = xmalloc(no * sizeof(double));
        ref_shortcut_a_forward(oc, xc, N, C, H, W);
        double *o = nhwc_of_nchw(oc, N, 2 * C, OH, OW);
        for (size_t i = 0; i < no; i++) wantf[i] = (float)o[i];
        expect_exact_t(t, "gk_shortcut_a_forward", out, wantf, no);

        GK(gk_shortcut_a_backward_add(t, d_dx, d_dout, N, H, W, C, 0));
        float *dx = get_t(t, d_dx, nx);
        double *doutc = nchw_of_nhwc(dout, N, 2 * C, OH, OW), *dinc = xmalloc(nx * sizeof(double));
        ref_shortcut_a_backward(dinc, doutc, N, C, H, W);
        double *din = nhwc_of_nchw(dinc, N, C, H, W);
        for (size_t i = 0; i < nx; i++) din[i] += dx0[i];
        expect_close_t(t, "gk_shortcut_a_backward_add", dx, din, nx, 1e-6);

        dev_free(d_x), dev_free(d_out), dev_free(d_dout), dev_free(d_dx);
        void *host[] = {x, dout, dx0, xf, doutf, dx0f, out, wantf, xc, oc, o, dx, doutc, dinc, din};
        for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    }
}

START_TEST(test_shortcut_a) { check_shortcut_a(GK_F32); }
END_TEST

START_TEST(test_shortcut_a_bf16) { check_shortcut_a(GK_BF16); }
END_TEST

/* The map x of type t; the pooled features and their gradient are float32. */
static void check_avgpool(gk_dtype t) {
    static const int shapes[][3] = {{2, 64, 64}, {3, 49, 10}, {128, 64, 264}, {1, 1, 3}, {5, 16, 33}}; /* N, HW, C */
    const size_t es = gk_dtype_size(t);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], HW = shapes[s][1], C = shapes[s][2];
        const size_t nx = (size_t)N * HW * C, np = (size_t)N * C;
        double *x = randn(nx, 130 + s, 0.3, 1.0), *dp = randn(np, 140 + s, 0.0, 1.0);
        void *xf = round_t(t, x, nx);
        float *dpf = round_f(dp, np);
        void *d_x = dev_dup(xf, nx * es), *d_dx = dev_alloc(nx * es);
        float *d_p = dev_alloc(np * 4), *d_dp = dev_dup(dpf, np * 4);
        GK(gk_avgpool_forward(t, d_p, d_x, N, HW, C, 0));
        float *p = get_f(d_p, np);
        double *xc = nchw_of_nhwc(x, N, C, HW, 1), *pw = xmalloc(np * sizeof(double));
        ref_avgpool_forward(pw, xc, N, C, HW); /* pooled [N, C] in both layouts */
        expect_close(t == GK_F32 ? "gk_avgpool_forward" : "gk_avgpool_forward (bf16 x)", p, pw, np, 1e-5);
        GK(gk_avgpool_backward(t, d_dx, d_dp, N, HW, C, 0));
        float *dx = get_t(t, d_dx, nx);
        double *dxc = xmalloc(nx * sizeof(double));
        ref_avgpool_backward(dxc, dp, N, C, HW);
        double *dxw = nhwc_of_nchw(dxc, N, C, HW, 1);
        expect_close_t(t, "gk_avgpool_backward", dx, dxw, nx, 1e-6);
        dev_free(d_x), dev_free(d_p), dev_free(d_dp), dev_free(d_dx);
        void *host[] = {x, dp, xf, dpf, p, xc, pw, dx, dxc, dxw};
        for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    }
}

START_TEST(test_avgpool) { check_avgpool(GK_F32); }
END_TEST

START_TEST(test_avgpool_bf16) { check_avgpool(GK_BF16); }
END_TEST

/* ---- head ------------------------------------------------------------------------------- */

START_TEST(test_bias) {
    static const int shapes[][2] = {{128, 10}, {3, 100}, {1000, 37}, {1, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int N = shapes[s][0], K = shapes[s][1];
        const size_t n = (size_t)N * K;
        double *z = randn(n, 150 + s, 0.0, 1.0), *bias = randn(K, 160 + s, 0.0, 1.0);
        float *zf = round_f(z, n), *bf = round_f(bias, K);
        float *d_z = dev_dup(zf, n * 4), *d_b = dev_dup(bf, K * 4), *d_db = dev_alloc(K * 4);
        GK(gk_add_bias(d_z, d_b, N, K, 0));
        float *got = get_f(d_z, n);
        double *want = xmalloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) want[i] = z[i] + bias[i % (size_t)K];
        expect_close("gk_add_bias", got, want, n, 1e-6);
        GK(gk_bias_grad(d_db, d_z, N, K, 0)); /* of the biased logits */
        float *db = get_f(d_db, K);
        for (int k = 0; k < K; k++) {
            double w = 0.0, a = 0.0;
            for (int r = 0; r < N; r++) w += got[(size_t)r * K + k], a += fabs(got[(size_t)r * K + k]);
            expect_sum("gk_bias_grad", db[k], w, a, 1e-6);
        }
        dev_free(d_z), dev_free(d_b), dev_free(d_db);
        free(z), free(bias), free(zf), free(bf), free(got), free(want), free(db);
    }
}
END_TEST

static const int sm_shapes[][2] = {{1, 10}, {7, 3}, {128, 10}, {1000, 100}, {300, 1}, {513, 37}, {64, 10}};
enum { N_SM_SHAPES = sizeof sm_shapes / sizeof sm_shapes[0] };

START_TEST(test_softmax_xent) {
    const int N = sm_shapes[_i][0], K = sm_shapes[_i][1];
    const bool all_padding = _i == N_SM_SHAPES - 1;
    const size_t n = (size_t)N * K;
    double *z = randn(n, 170 + _i, 0.0, 3.0);
    int32_t *labels = xmalloc(N * sizeof(int32_t));
    mfres_rng rng;
    mfres_rng_seed(&rng, 180 + _i);
    for (int r = 0; r < N; r++) {
        labels[r] = all_padding || mfres_rng_below(&rng, 8) == 0 ? -1 : (int32_t)mfres_rng_below(&rng, (uint32_t)K);
        if (K >= 2 && r % 5 == 0) { /* a tie for the maximum: the first one wins, so label K-1 is a miss */
            double mx = z[(size_t)r * K];
            for (int k = 1; k < K; k++) mx = fmax(mx, z[(size_t)r * K + k]);
            z[(size_t)r * K] = z[(size_t)r * K + K - 1] = mx + 1.0;
            if (labels[r] >= 0) labels[r] = r % 10 == 0 ? K - 1 : 0;
        }
    }
    float *zf = round_f(z, n);
    float *d_z = dev_dup(zf, n * 4), *d_p = dev_alloc(n * 4), *d_dl = dev_alloc(n * 4);
    int32_t *d_lab = dev_dup(labels, N * sizeof(int32_t));
    const double out0[3] = {0.5, 1.0, 2.0};
    double *d_step = dev_alloc(3 * sizeof(double)), *d_out = dev_dup(out0, sizeof out0);

    GK(gk_softmax_xent_forward(d_p, d_z, d_lab, N, K, d_step, d_out, 0));
    float *p = get_f(d_p, n);
    double step[3], step2[3], out[3];
    dev_get(step, d_step, sizeof step);
    double *pw = xmalloc(n * sizeof(double));
    int correct = 0, valid = 0;
    double mean_loss = ref_softmax_xent_forward(pw, &correct, z, (const int *)labels, N, K);
    for (int r = 0; r < N; r++) valid += labels[r] >= 0;
    expect_close("gk_softmax_xent_forward probs", p, pw, n, 1e-5);
    ck_assert_msg(step[1] == valid, "valid rows: %g, want %d", step[1], valid);
    ck_assert_msg(step[2] == correct, "correct rows: %g, want %d", step[2], correct);
    if (valid)
        ck_assert_msg(fabs(step[0] - mean_loss * valid) <= 1e-5 * fabs(mean_loss * valid), "loss sum %.12g, want %.12g",
                      step[0], mean_loss * valid);
    else
        ck_assert_msg(step[0] == 0.0, "loss sum of no rows: %g", step[0]);
    /* out accumulates; the second call gives the same bits */
    GK(gk_softmax_xent_forward(d_p, d_z, d_lab, N, K, d_step, d_out, 0));
    dev_get(step2, d_step, sizeof step2);
    dev_get(out, d_out, sizeof out);
    expect_same_bytes("gk_softmax_xent_forward step, run twice", step2, step, 3, sizeof(double));
    for (int k = 0; k < 3; k++)
        ck_assert_msg(out[k] == (out0[k] + step[k]) + step[k], "out[%d] = %.17g, want %.17g", k, out[k],
                      (out0[k] + step[k]) + step[k]);

    GK(gk_softmax_xent_backward(d_dl, d_p, d_lab, N, K, d_step, 0));
    float *dl = get_f(d_dl, n);
    double *pd = xmalloc(n * sizeof(double)), *dlw = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    ref_softmax_xent_backward(dlw, pd, (const int *)labels, N, K);
    expect_close("gk_softmax_xent_backward", dl, dlw, n, 1e-6);
    for (int r = 0; r < N; r++)
        for (int k = 0; k < K && labels[r] < 0; k++)
            EXPECT(dl[(size_t)r * K + k] == 0.0f, "padding row %d has a gradient", r);

    dev_free(d_z), dev_free(d_p), dev_free(d_dl), dev_free(d_lab), dev_free(d_step), dev_free(d_out);
    free(z), free(labels), free(zf), free(p), free(pw), free(dl), free(pd), free(dlw);
}
END_TEST

/* ---- optimiser, Algorithm 1 ------------------------------------------------------------------ */

static const long sgd_sizes[] = {1, 1000, (1L << 20) + 5};
enum { N_SGD_SIZES = sizeof sgd_sizes / sizeof sgd_sizes[0] };

START_TEST(test_sgd) {
    const size_t n = (size_t)sgd_sizes[_i], bytes = n * sizeof(float);
    for (int nesterov = 0; nesterov <= 1; nesterov++) {
        double *p = randn(n, 200 + _i, 0.0, 1.0), *v = randn(n, 210 + _i, 0.0, 0.1), *g = randn(n, 220 + _i, 0, 1);
        float *pf = round_f(p, n), *vf = round_f(v, n), *gf = round_f(g, n);
        float *d_p = dev_dup(pf, bytes), *d_v = dev_dup(vf, bytes), *d_g = dev_dup(gf, bytes), *d_lr = dev_scalar(0.1f);
        double loss = 2.5;
        double *d_guard = dev_dup(&loss, sizeof loss);
        /* two steps, the rate changed on the device between them; the first
         * behind a finite loss guard, the second without one */
        GK(gk_sgd(d_p, d_v, d_g, (long)n, d_lr, 0.9f, 5e-4f, nesterov, d_guard, 0));
        float lr2 = 0.05f;
        dev_put(d_lr, &lr2, sizeof lr2);
        GK(gk_sgd(d_p, d_v, d_g, (long)n, d_lr, 0.9f, 5e-4f, nesterov, NULL, 0));
        mfres_sgd_update(pf, vf, gf, n, 0.1f, 0.9f, 5e-4f, nesterov);
        mfres_sgd_update(pf, vf, gf, n, 0.05f, 0.9f, 5e-4f, nesterov);
        float *gp = get_f(d_p, n), *gv = get_f(d_v, n);
        expect_sgd(nesterov ? "gk_sgd nesterov params" : "gk_sgd params", gp, pf, n);
        expect_sgd(nesterov ? "gk_sgd nesterov velocity" : "gk_sgd velocity", gv, vf, n);
        /* a NaN or infinite loss: nothing moves */
        const double bad[] = {NAN, INFINITY, -INFINITY};
        for (int k = 0; k < 3; k++) {
            dev_put(d_guard, &bad[k], sizeof bad[k]);
            GK(gk_sgd(d_p, d_v, d_g, (long)n, d_lr, 0.9f, 5e-4f, nesterov, d_guard, 0));
            float *gp2 = get_f(d_p, n), *gv2 = get_f(d_v, n);
            expect_same_bytes("gk_sgd params after a bad loss", gp2, gp, n, sizeof(float));
            expect_same_bytes("gk_sgd velocity after a bad loss", gv2, gv, n, sizeof(float));
            free(gp2), free(gv2);
        }
        dev_free(d_p), dev_free(d_v), dev_free(d_g), dev_free(d_lr), dev_free(d_guard);
        free(p), free(v), free(g), free(pf), free(vf), free(gf), free(gp), free(gv);
    }
}
END_TEST

/* The reason values travel by pointer: a graph captured once, replayed with a
 * new h, gradient scale and learning rate, must use the new values. */
START_TEST(test_graph_reads_values) {
    const size_t n = 4099, bytes = n * sizeof(float);
    double *a = randn(n, 230, 0.0, 1.0), *b = randn(n, 231, 0.0, 1.0);
    float *af = round_f(a, n), *bf = round_f(b, n), *vf = xmalloc(bytes), *pf = xmalloc(bytes), *yf = xmalloc(bytes);
    memset(vf, 0, bytes);
    memcpy(pf, af, bytes), memcpy(yf, af, bytes);
    /* one channel of batch-norm state for gk_bn_residual_relu and gk_bn_backward_params */
    const float mean = 0.1f, inv = 2.0f, gamma = 1.5f, beta = -0.2f, sums[2] = {3.0f, -1.25f};
    float *d_a = dev_dup(af, bytes), *d_b = dev_dup(bf, bytes), *d_out = dev_alloc(bytes), *d_bn = dev_alloc(bytes);
    float *d_y = dev_dup(af, bytes), *d_p = dev_dup(af, bytes), *d_v = dev_dup(vf, bytes);
    float *d_h = dev_scalar(0.0f), *d_lr = dev_scalar(0.0f), *d_scale = dev_scalar(0.0f);
    float *d_mean = dev_scalar(mean), *d_inv = dev_scalar(inv), *d_gamma = dev_scalar(gamma),
          *d_beta = dev_scalar(beta);
    float *d_sums = dev_dup(sums, sizeof sums), *d_dg = dev_alloc(4), *d_db = dev_alloc(4);
    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreate(&st));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    ck_assert_int_eq(gk_residual(GK_F32, d_out, d_a, d_b, d_h, (long)n, st), 0);
    ck_assert_int_eq(gk_bn_residual_relu(GK_F32, d_bn, d_a, d_b, (long)n, 1, d_mean, d_inv, d_gamma, d_beta, d_h, st),
                     0);
    ck_assert_int_eq(gk_scale(GK_F32, d_y, d_scale, (long)n, st), 0);
    ck_assert_int_eq(gk_bn_backward_params(d_sums, 1, d_gamma, d_beta, d_scale, d_dg, d_db, NULL, st), 0);
    ck_assert_int_eq(gk_sgd(d_p, d_v, d_b, (long)n, d_lr, 0.9f, 0.0f, 0, NULL, st), 0);
    CUDA_CHECK(cudaStreamEndCapture(st, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    double *want = xmalloc(n * sizeof(double)), *branch = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) branch[i] = (double)gamma * ((b[i] - mean) * inv) + beta;
    static const float hs[2] = {0.5f, 2.0f}, lrs[2] = {0.1f, 0.01f}, scales[2] = {-1.5f, 0.25f};
    for (int r = 0; r < 2; r++) {
        dev_put(d_h, &hs[r], sizeof(float));
        dev_put(d_lr, &lrs[r], sizeof(float));
        dev_put(d_scale, &scales[r], sizeof(float));
        CUDA_CHECK(cudaGraphLaunch(exec, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        float *out = get_f(d_out, n), *bn = get_f(d_bn, n), *y = get_f(d_y, n), *p = get_f(d_p, n), dg, db;
        dev_get(&dg, d_dg, sizeof dg);
        dev_get(&db, d_db, sizeof db);
        ref_residual_forward(want, a, b, (double)hs[r], false, (long)n);
        expect_close("gk_residual in a graph, h changed", out, want, n, 1e-5);
        ref_residual_forward(want, a, branch, (double)hs[r], true, (long)n);
        expect_close("gk_bn_residual_relu in a graph, h changed", bn, want, n, 1e-5);
        for (size_t i = 0; i < n; i++) want[i] = (double)(yf[i] *= scales[r]);
        expect_close("gk_scale in a graph, scale changed", y, want, n, 1e-6);
        ck_assert_msg(dg == scales[r] * sums[1] && db == scales[r] * sums[0],
                      "gk_bn_backward_params in a graph, scale changed: dgamma %g, dbeta %g", (double)dg, (double)db);
        mfres_sgd_update(pf, vf, bf, n, lrs[r], 0.9f, 0.0f, false);
        expect_sgd("gk_sgd in a graph, lr changed", p, pf, n);
        free(out), free(bn), free(y), free(p);
    }
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(cudaStreamDestroy(st));
    void *dev[] = {d_a,     d_b,    d_out, d_bn,    d_y,    d_p,    d_v,  d_h, d_lr,
                   d_scale, d_mean, d_inv, d_gamma, d_beta, d_sums, d_dg, d_db};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) dev_free(dev[i]);
    free(a), free(b), free(af), free(bf), free(vf), free(pf), free(yf), free(want), free(branch);
}
END_TEST

static const int mf_particles[] = {1, 2, 5, 17, 200};
enum { N_MF = sizeof mf_particles / sizeof mf_particles[0] };

START_TEST(test_meanfield) {
    const int P = mf_particles[_i], S = 3, n = S * P, npos = S * (P + 1);
    const float tau_end = (float)P, lr_mult = 2.0f, mom = 0.9f;
    for (int nesterov = 0; nesterov <= 1; nesterov++) {
        const uint64_t seed = 300 + 10 * (uint64_t)_i + (uint64_t)nesterov;
        /* tau spread past both ends of [0, tau_end]: the clamp makes ties at 0
         * and tau_end; every fourth particle is set equal to its neighbour with
         * no gradient and no momentum, a tie that the update keeps */
        double *tau = randn(n, seed, 0.5 * P, 0.4 * P + 0.5), *vel = randn(n, seed + 1, 0.0, 0.3);
        double *grad = randn(n, seed + 2, 0.0, 1.0), *dh = randn(npos, seed + 3, 0.0, 1.0);
        for (int i = 0; i < n; i++)
            if (i % P % 4 == 3) tau[i] = tau[i - 1], vel[i] = vel[i - 1] = 0.0, grad[i] = grad[i - 1] = 0.0;
        float *tauf = round_f(tau, n), *velf = round_f(vel, n), *gradf = round_f(grad, n), *dhf = round_f(dh, npos);
        int *order = xmalloc(n * sizeof(int)), *order_want = xmalloc(n * sizeof(int));
        random_orders(order, P, seed + 4);
        float *hpos0 = xmalloc(npos * sizeof(float));
        for (int i = 0; i < npos; i++) hpos0[i] = 42.0f;
        float *d_tau = dev_dup(tauf, n * 4), *d_vel = dev_dup(velf, n * 4), *d_grad = dev_dup(gradf, n * 4);
        float *d_dh = dev_dup(dhf, npos * 4), *d_tg = dev_alloc(n * 4), *d_h = dev_dup(hpos0, npos * 4);
        float *d_lr = dev_scalar(0.1f);
        int *d_order = dev_dup(order, n * sizeof(int)), *d_changed = dev_alloc(sizeof(int));

        /* the tau gradient for the order in force */
        GK(gk_meanfield_tau_grad(d_tg, d_order, d_dh, P, 0));
        float *tg = get_f(d_tg, n), *tg_want = xmalloc(n * sizeof(float));
        host_tau_grad(tg_want, order, dhf, P);
        expect_same_f("gk_meanfield_tau_grad", tg, tg_want, n);
        double *tg_lib = xmalloc(n * sizeof(double));
        float *tg_libf = xmalloc(n * sizeof(float));
        for (int s = 0; s < S; s++) mf_tau_grad(tg_libf + s * P, order + s * P, dh + s * (P + 1) + 1, P);
        for (int i = 0; i < n; i++) tg_lib[i] = tg_libf[i];
        expect_close("gk_meanfield_tau_grad vs mf_tau_grad", tg, tg_lib, n, 1e-6);

        /* the update: SGD at lr * lr_mult without weight decay, clamp, sort, steps */
        double loss = 1.0;
        double *d_guard = dev_dup(&loss, sizeof loss);
        GK(gk_meanfield_update(d_tau, d_vel, d_grad, d_order, d_h, P, d_lr, lr_mult, mom, nesterov, tau_end, d_changed,
                               d_guard, 0));
        float *gtau = get_f(d_tau, n), *gvel = get_f(d_vel, n), *gh = get_f(d_h, npos);
        int *gorder = xmalloc(n * sizeof(int)), changed;
        dev_get(gorder, d_order, n * sizeof(int));
        dev_get(&changed, d_changed, sizeof changed);
        mfres_sgd_update(tauf, velf, gradf, (size_t)n, 0.1f * lr_mult, mom, 0.0f, nesterov);
        mf_clamp(tauf, n, 0.0f, tau_end);
        expect_sgd("gk_meanfield_update tau", gtau, tauf, n);
        expect_sgd("gk_meanfield_update velocity", gvel, velf, n);
        /* sorted from the GPU's own tau, so that a tolerance above cannot flip a tie here */
        memcpy(order_want, order, n * sizeof(int));
        int changed_want = 0;
        float *h_want = xmalloc(npos * sizeof(float));
        memcpy(h_want, hpos0, npos * sizeof(float));
        for (int s = 0; s < S; s++) {
            changed_want += mf_sort(order_want + s * P, gtau + s * P, P);
            mf_steps(h_want + s * (P + 1) + 1, order_want + s * P, gtau + s * P, P);
        }
        expect_same_bytes("gk_meanfield_update order", gorder, order_want, (size_t)n, sizeof(int));
        expect_same_f("gk_meanfield_update h (stage heads untouched)", gh, h_want, (size_t)npos);
        ck_assert_msg(changed == (changed_want > 0), "changed = %d, want %d (stages reordered: %d)", changed,
                      changed_want > 0, changed_want);

        /* a NaN loss: nothing moves, and nothing changed */
        double nan_loss = NAN;
        int one = 1;
        dev_put(d_guard, &nan_loss, sizeof nan_loss);
        dev_put(d_changed, &one, sizeof one);
        GK(gk_meanfield_update(d_tau, d_vel, d_grad, d_order, d_h, P, d_lr, lr_mult, mom, nesterov, tau_end, d_changed,
                               d_guard, 0));
        {
            float *t2 = get_f(d_tau, n), *v2 = get_f(d_vel, n), *h2 = get_f(d_h, npos);
            int *o2 = xmalloc(n * sizeof(int));
            dev_get(o2, d_order, n * sizeof(int));
            dev_get(&changed, d_changed, sizeof changed);
            expect_same_bytes("gk_meanfield_update tau after a NaN loss", t2, gtau, (size_t)n, sizeof(float));
            expect_same_bytes("gk_meanfield_update velocity after a NaN loss", v2, gvel, (size_t)n, sizeof(float));
            expect_same_bytes("gk_meanfield_update h after a NaN loss", h2, gh, (size_t)npos, sizeof(float));
            expect_same_bytes("gk_meanfield_update order after a NaN loss", o2, gorder, (size_t)n, sizeof(int));
            ck_assert_msg(changed == 0, "changed = %d after a NaN loss", changed);
            free(t2), free(v2), free(h2), free(o2);
        }
        dev_free(d_guard);

        /* lr 0 on the device: tau stays, so no order changes */
        float zero = 0.0f;
        dev_put(d_lr, &zero, sizeof zero);
        GK(gk_meanfield_update(d_tau, d_vel, d_grad, d_order, d_h, P, d_lr, lr_mult, mom, nesterov, tau_end, d_changed,
                               NULL, 0));
        float *gtau2 = get_f(d_tau, n);
        dev_get(&changed, d_changed, sizeof changed);
        expect_same_f("gk_meanfield_update tau at lr 0", gtau2, gtau, n);
        ck_assert_msg(changed == 0, "changed = %d at lr 0", changed);

        void *dev[] = {d_tau, d_vel, d_grad, d_dh, d_tg, d_h, d_lr, d_order, d_changed};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) dev_free(dev[i]);
        void *host[] = {tau, vel,     grad,   dh,      tauf, velf, gradf, dhf,    order,  order_want, hpos0,
                        tg,  tg_want, tg_lib, tg_libf, gtau, gvel, gh,    gorder, h_want, gtau2};
        for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    }
}
END_TEST

/* ---- data -------------------------------------------------------------------------------------- */

/* The GPU's batches against the CPU loader's (two epochs of shuffled, cropped,
 * flipped batches; a final partial batch) and against host_gather, bit for
 * bit, plus a batch that is all padding. A bfloat16 batch: bit for bit the
 * float32 one rounded. */
static void check_gather(gk_dtype t) {
    static const int sets[][5] = {{37, 3, 7, 5, 16}, {100, 1, 28, 28, 64}, {50, 3, 32, 32, 13}};
    const size_t es = gk_dtype_size(t);
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
        synth_set s;
        synth_make(&s, sets[k][0], sets[k][1], sets[k][2], sets[k][3], 400 + k);
        const int C = s.ds.c, H = s.ds.h, W = s.ds.w, B = sets[k][4], n = s.ds.n;
        const size_t image = (size_t)C * H * W;
        mfres_loader_config cfg = gather_cfg(&s, B);
        mfres_loader *l;
        ck_assert_ok(mfres_loader_create(&l, &s.ds, &cfg));
        uint8_t *d_img = dev_dup(s.ds.pixels, image * n), *d_lab = dev_dup(s.ds.labels, (size_t)n);
        float *d_lut = dev_dup(mfres_loader_lut(l), (size_t)C * 256 * sizeof(float));
        void *d_dst = dev_alloc(image * B * es);
        const int Cp = padded_c(C);
        void *d_padded = dev_alloc((size_t)B * H * W * Cp * es);
        int32_t *d_labels = dev_alloc(B * sizeof(int32_t));
        float *got_nchw = xmalloc(image * B * sizeof(float)), *mine = xmalloc(image * B * sizeof(float));
        int32_t *mine_labels = xmalloc(B * sizeof(int32_t)), *got_labels = xmalloc(B * sizeof(int32_t));
        for (int epoch = 0; epoch < 2; epoch++) {
            epoch_plan p;
            plan_make(&p, l, &s.ds, epoch);
            uint32_t *d_perm = dev_dup(p.perm, n * sizeof(uint32_t));
            int8_t *d_oy = dev_dup(p.oy, (size_t)n), *d_ox = dev_dup(p.ox, (size_t)n);
            uint8_t *d_flip = dev_dup(p.flip, (size_t)n);
            const float *x;
            const int32_t *y;
            int count, j = 0;
            while (mfres_loader_next(l, &x, &y, &count) == 1) {
                const long first = (long)j * B;
                GK(gk_gather_batch(t, d_dst, d_labels, d_img, d_lab, d_lut, d_perm, d_oy, d_ox, d_flip, first, B, n, C,
                                   C, H, W, 0));
                void *raw = get_raw(d_dst, image * B * es);
                GK(gk_gather_batch(t, d_padded, d_labels, d_img, d_lab, d_lut, d_perm, d_oy, d_ox, d_flip, first, B, n,
                                   C, Cp, H, W, 0));
                void *raw_p = get_raw(d_padded, (size_t)B * H * W * Cp * es);
                expect_padded(t, "gk_gather_batch with padded channels", raw_p, raw, (size_t)B * H * W, C, Cp);
                free(raw_p);
                float *got = get_t(t, d_dst, image * B);
                dev_get(got_labels, d_labels, B * sizeof(int32_t));
                host_gather(mine, mine_labels, s.ds.pixels, s.ds.labels, mfres_loader_lut(l), p.perm, p.oy, p.ox,
                            p.flip, first, B, n, C, H, W);
                expect_exact_t(t, "gk_gather_batch vs host_gather", raw, mine, image * B);
                expect_same_bytes("gk_gather_batch labels vs host_gather", got_labels, mine_labels, (size_t)B,
                                  sizeof(int32_t));
                nhwc_to_nchw_f(got_nchw, got, B, C, H, W);
                float *loader = round_trip(t, x, image * B);
                expect_same_f(t == GK_F32 ? "gk_gather_batch vs the CPU loader"
                                          : "gk_gather_batch vs the CPU loader's batch rounded to bf16",
                              got_nchw, loader, image * B);
                expect_same_bytes("gk_gather_batch labels vs the CPU loader", got_labels, y, (size_t)B,
                                  sizeof(int32_t));
                free(raw), free(got), free(loader);
                j++;
            }
            /* past the end: all padding */
            GK(gk_gather_batch(t, d_dst, d_labels, d_img, d_lab, d_lut, d_perm, d_oy, d_ox, d_flip, (long)n + 3, B, n,
                               C, C, H, W, 0));
            float *got = get_t(t, d_dst, image * B);
            dev_get(got_labels, d_labels, B * sizeof(int32_t));
            for (size_t i = 0; i < image * B; i++) EXPECT(got[i] == 0.0f, "padding pixel %zu: %g", i, (double)got[i]);
            for (int k = 0; k < B; k++) EXPECT(got_labels[k] == -1, "padding label %d: %d", k, (int)got_labels[k]);
            free(got);
            dev_free(d_perm), dev_free(d_oy), dev_free(d_ox), dev_free(d_flip);
            plan_free(&p);
        }
        mfres_loader_free(l);
        dev_free(d_img), dev_free(d_lab), dev_free(d_lut), dev_free(d_dst), dev_free(d_padded), dev_free(d_labels);
        free(got_nchw), free(mine), free(mine_labels), free(got_labels);
        synth_free(&s);
    }
}

START_TEST(test_gather) { check_gather(GK_F32); }
END_TEST

START_TEST(test_gather_bf16) { check_gather(GK_BF16); }
END_TEST

/* ---- argument errors ---------------------------------------------------------------------------- */

START_TEST(test_invalid_arguments) {
    ck_assert_int_eq(gk_bn_stats(GK_F32, NULL, 0, 16, EPS, 0.1f, NULL, NULL, NULL, NULL, NULL, 0),
                     cudaErrorInvalidValue);
    ck_assert_int_eq(gk_bn_stats(GK_F32, NULL, 16, 0, EPS, 0.1f, NULL, NULL, NULL, NULL, NULL, 0),
                     cudaErrorInvalidValue);
    ck_assert_int_eq(gk_meanfield_update(NULL, NULL, NULL, NULL, NULL, 100000, NULL, 1, 0.9f, 0, 1, NULL, NULL, 0),
                     cudaErrorInvalidValue);
    ck_assert_int_eq(gk_softmax_xent_forward(NULL, NULL, NULL, 4, 0, NULL, NULL, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_convert(GK_BF16, NULL, GK_F32, NULL, -1, 0), cudaErrorInvalidValue);
    /* empty element-wise work is no work */
    ck_assert_int_eq(gk_add(GK_F32, NULL, NULL, 0, 0), 0);
    ck_assert_int_eq(gk_add(GK_BF16, NULL, NULL, 0, 0), 0);
    /* an unknown element type is refused before anything else, empty work included */
    const gk_dtype bad = (gk_dtype)7;
    ck_assert_int_eq(gk_add(bad, NULL, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_convert(bad, NULL, GK_F32, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_convert(GK_F32, NULL, bad, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_bn_stats(bad, NULL, 16, 16, EPS, 0.1f, NULL, NULL, NULL, NULL, NULL, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_bn_apply(bad, NULL, NULL, 0, 16, NULL, NULL, NULL, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_bn_backward_reduce(bad, NULL, NULL, NULL, 0, 16, NULL, NULL, NULL, NULL, 0),
                     cudaErrorInvalidValue);
    ck_assert_int_eq(gk_bn_backward_data(bad, NULL, NULL, NULL, NULL, 0, 16, NULL, NULL, NULL, NULL, NULL, 0, 0),
                     cudaErrorInvalidValue);
    ck_assert_int_eq(gk_relu_mask(bad, NULL, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_scale(bad, NULL, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_residual(bad, NULL, NULL, NULL, NULL, 0, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_shortcut_a_forward(bad, NULL, NULL, 0, 2, 2, 1, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_avgpool_forward(bad, NULL, NULL, 0, 1, 1, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_nchw_to_nhwc(bad, NULL, NULL, 0, 1, 1, 1, 1, 0), cudaErrorInvalidValue);
    ck_assert_int_eq(gk_gather_batch(bad, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, 1, 1, 1, 1, 0),
                     cudaErrorInvalidValue);
    CUDA_CHECK(cudaGetLastError());
}
END_TEST

static Suite *gpu_suite(void) {
    Suite *s = suite_create("gpu_kernels");
    TCase *tc = tcase_create("kernels");
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_layout_bf16);
    tcase_add_test(tc, test_convert);
    tcase_add_test(tc, test_convert_channels);
    tcase_add_loop_test(tc, test_bn_forward, 0, N_BN_SHAPES);
    tcase_add_loop_test(tc, test_bn_forward_bf16, 0, N_BN_SHAPES);
    tcase_add_loop_test(tc, test_bn_backward, 0, N_BN_SHAPES);
    tcase_add_loop_test(tc, test_bn_backward_bf16, 0, N_BN_SHAPES);
    tcase_add_loop_test(tc, test_elementwise, 0, N_EW_SIZES);
    tcase_add_loop_test(tc, test_elementwise_bf16, 0, N_EW_SIZES);
    tcase_add_loop_test(tc, test_dot, 0, N_DOT_SIZES);
    tcase_add_test(tc, test_shortcut_a);
    tcase_add_test(tc, test_shortcut_a_bf16);
    tcase_add_test(tc, test_avgpool);
    tcase_add_test(tc, test_avgpool_bf16);
    tcase_add_test(tc, test_bias);
    tcase_add_loop_test(tc, test_softmax_xent, 0, N_SM_SHAPES);
    tcase_add_loop_test(tc, test_sgd, 0, N_SGD_SIZES);
    tcase_add_test(tc, test_graph_reads_values);
    tcase_add_loop_test(tc, test_meanfield, 0, N_MF);
    tcase_add_test(tc, test_gather);
    tcase_add_test(tc, test_gather_bf16);
    tcase_add_test(tc, test_invalid_arguments);
    suite_add_tcase(s, tc);
    return s;
}
#endif /* MFRES_HAVE_CUDA */

/* Runs a suite; silent when it passes unless `verbose`, its failures otherwise. */
static int run_suite(Suite *suite, enum fork_status fork, bool verbose) {
    SRunner *sr = srunner_create(suite);
    if (fork != CK_FORK_GETENV) srunner_set_fork_status(sr, fork);
    srunner_run_all(sr, verbose ? CK_NORMAL : CK_SILENT);
    int failed = srunner_ntests_failed(sr);
    if (failed && !verbose) {
        TestResult **res = srunner_failures(sr);
        for (int i = 0; i < failed; i++) {
            printf("%s:%d: %s: %s\n", tr_lfile(res[i]), tr_lno(res[i]), tr_tcname(res[i]), tr_msg(res[i]));
        }
        free(res);
    }
    srunner_free(sr);
    return failed;
}

int main(void) {
    if (run_suite(host_suite(), CK_FORK_GETENV, false)) return EXIT_FAILURE;
#ifndef MFRES_HAVE_CUDA
    printf("SKIP test_gpu_kernels: this build has no CUDA backend\n");
    return 77;
#else
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        printf("SKIP test_gpu_kernels: no CUDA GPU here (%s)\n", cudaGetErrorString(e));
        return 77;
    }
#ifdef MFRES_GPU_EMULATED
    printf("kernels.cu on the emulated GPU (tests/gpu_simt: CUDA's threads, barriers and shuffles on the CPU)\n");
#endif
    /* No fork: a CUDA context does not survive one, and cudaGetDeviceCount made it. */
    return run_suite(gpu_suite(), CK_NOFORK, true) ? EXIT_FAILURE : EXIT_SUCCESS;
#endif
}
