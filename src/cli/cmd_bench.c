/* mfres bench: training and inference images/s on synthetic data, on the CPU
 * or the GPU (--device cuda). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/model_flags.h"
#include "gpu/gpu.h"
#include "mfres/core.h"
#include "mfres/device.h"
#include "mfres/model.h"
#include "mfres/optim.h"
#include "mfres/train.h"

static void print_help(void) {
    printf("usage: mfres bench [flags]\n"
           "\n"
           "Times training steps (forward, backward, optimiser) and inference on random\n"
           "data and prints images/s; the last line is machine-readable:\n"
           "  train_images_per_s=... infer_images_per_s=... device=... precision=... model=...\n"
           "     block=... mode=... batch=... iters=...\n"
           "On the GPU a training step is train's: the batch gathered, normalised and\n"
           "augmented on the device from bytes uploaded once, forward, backward, SGD and\n"
           "Algorithm 1; inference is eval's (a float batch from the host, the forward).\n"
           "\n"
           "  --input CxHxW         input shape [3x32x32]\n"
           "  --classes N           [10]\n"
           "  --iters N             timed steps per measurement [10]\n"
           "  --warmup N            untimed steps first [2]\n"
           "  --threads N           [all cores]\n"
           "  --profile             also a per-kernel table of a training step (where the time goes; CPU)\n"
           "  --gemm                instead: the machine's dense-GEMM peak: cblas_sgemm (N = 1024, 2048) on\n"
           "                        the CPU; with --device cuda, cuBLAS (N = 4096, 8192) in --precision's\n"
           "                        arithmetic, the yardstick for the GPU's fraction of peak\n"
           "%s%s",
           cli_model_flags_help, cli_device_flags_help);
}

/* Training steps on the GPU as `mfres train --device cuda` takes them (one
 * gpu_train_step each: gather, normalise, crop and flip on the device, forward,
 * backward, SGD, Algorithm 1). The model's API has no verb for that step, so
 * bench drives the plan as train.c does. The data: GPU_BENCH_BATCHES batches
 * of random bytes, uploaded once, random crops and flips. */
#define GPU_BENCH_BATCHES 8
static int gpu_train_steps(mfres_model *m, mfres_optimizer *opt, long warmup, long iters, double *seconds) {
    const mfres_model_config *c = &m->cfg;
    long n = (long)GPU_BENCH_BATCHES * c->batch;
    size_t image = (size_t)c->in_c * c->in_h * c->in_w;
    mfres_dataset ds = {.n = (int)n, .c = c->in_c, .h = c->in_h, .w = c->in_w, .num_classes = c->num_classes};
    ds.pixels = malloc((size_t)n * image);
    ds.labels = malloc((size_t)n);
    float *lut = malloc((size_t)c->in_c * 256 * sizeof(float));
    uint32_t *perm = malloc((size_t)n * sizeof(uint32_t));
    int8_t *oy = malloc((size_t)n), *ox = malloc((size_t)n);
    uint8_t *flip = malloc((size_t)n);
    int rc = MFRES_OK;
    if (!ds.pixels || !ds.labels || !lut || !perm || !oy || !ox || !flip)
        rc = mfres_fail(MFRES_ENOMEM, "out of memory for %ld synthetic images", n);
    if (!rc) {
        mfres_rng rng;
        mfres_rng_seed(&rng, 3);
        uint32_t classes = c->num_classes < 256 ? (uint32_t)c->num_classes : 256;
        for (size_t i = 0; i < (size_t)n * image; i++) ds.pixels[i] = (uint8_t)mfres_rng_below(&rng, 256);
        for (long i = 0; i < n; i++) {
            ds.labels[i] = (uint8_t)mfres_rng_below(&rng, classes);
            perm[i] = (uint32_t)i;
            oy[i] = (int8_t)((int)mfres_rng_below(&rng, 9) - 4), ox[i] = (int8_t)((int)mfres_rng_below(&rng, 9) - 4);
            flip[i] = (uint8_t)mfres_rng_below(&rng, 2);
        }
        for (int ch = 0; ch < c->in_c; ch++)
            for (int b = 0; b < 256; b++) lut[ch * 256 + b] = (b / 255.0f - 0.5f) / 0.25f;
        if (!(rc = gpu_optim_upload(m->gpu, m, opt)) && !(rc = gpu_data_upload(m->gpu, &ds, lut)))
            rc = gpu_data_epoch(m->gpu, perm, oy, ox, flip, n);
    }
    double t = 0;
    for (long it = 0; !rc && it < warmup + iters; it++) {
        gpu_step_result res;
        double t0 = mfres_now();
        rc = gpu_train_step(m->gpu, m, (it % GPU_BENCH_BATCHES) * c->batch, opt->lr, &res);
        if (it >= warmup) t += mfres_now() - t0;
    }
    *seconds = t;
    free(ds.pixels), free(ds.labels), free(lut), free(perm), free(oy), free(ox), free(flip);
    return rc;
}

/* The dense-GEMM rate this machine sustains: the yardstick for "fraction of peak". */
static int bench_gemm(void) {
    double best = 0;
    for (int n = 1024; n <= 2048; n *= 2) {
        size_t sz = (size_t)n * n;
        float *a = malloc(sz * sizeof(float)), *b = malloc(sz * sizeof(float)), *c = malloc(sz * sizeof(float));
        for (size_t i = 0; i < sz; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        int reps = n == 1024 ? 8 : 2;
        double t0 = mfres_now();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double gflops = 2.0 * n * n * (double)n * reps / (mfres_now() - t0) / 1e9;
        printf("  sgemm N=%d: %.1f GFLOP/s\n", n, gflops);
        if (gflops > best) best = gflops;
        free(a), free(b), free(c);
    }
    printf("sgemm_gflops=%.1f\n", best);
    return 0;
}

/* The GPU's yardstick: cuBLAS at the precision, the better of two sizes. */
static int bench_gpu_gemm(mfres_precision p) {
    char desc[256];
    mfres_device_describe(MFRES_DEVICE_CUDA, desc, sizeof desc);
    printf("cuBLAS GEMM, precision %s: %s\n", mfres_precision_name(p), desc);
    double best = 0;
    static const int sizes[] = {4096, 8192};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        double rate;
        if (gpu_gemm_peak(p, sizes[i], &rate)) return cli_runtime_error("bench");
        printf("  N=%d: %.1f GFLOP/s\n", sizes[i], rate / 1e9);
        if (rate > best) best = rate;
    }
    printf("gemm_gflops=%.1f device=cuda precision=%s\n", best / 1e9, mfres_precision_name(p));
    return 0;
}

int cmd_bench(int argc, char **argv) {
    const char *cmd = "bench";
    mfres_model_config cfg;
    mfres_model_config_default(&cfg);
    cfg.in_c = 3, cfg.in_h = 32, cfg.in_w = 32;
    long iters = 10, warmup = 2, threads = 0, classes = 10;
    bool gemm = false, profile = false;
    mfres_device device = MFRES_DEVICE_CPU;
    mfres_precision precision = MFRES_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r = cli_model_flag(cmd, argc, argv, &i, &cfg);
        if (r == 0) r = cli_device_flag(cmd, argc, argv, &i, &device, &precision);
        if (r == 2) return 2;
        if (r == 1) continue;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            print_help();
            return 0;
        }
        if (!strcmp(argv[i], "--gemm")) {
            gemm = true;
        } else if (!strcmp(argv[i], "--profile")) {
            profile = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--input", &v))) {
            char tail;
            if (r < 0) return 2;
            if (sscanf(v, "%dx%dx%d%c", &cfg.in_c, &cfg.in_h, &cfg.in_w, &tail) != 3 || cfg.in_c < 1 || cfg.in_h < 4 ||
                cfg.in_w < 4 || cfg.in_h % 4 || cfg.in_w % 4)
                return cli_usage_error(cmd, "--input expects CxHxW with H, W divisible by 4 (e.g. 3x32x32), got '%s'", v);
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--classes", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--classes", v, 2, 100000, &classes)) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--iters", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--iters", v, 1, 1000000, &iters)) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--warmup", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--warmup", v, 0, 1000000, &warmup)) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--threads", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--threads", v, 1, 1024, &threads)) return 2;
        } else {
            return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        }
    }
    cfg.num_classes = (int)classes;
    if (cli_model_flags_check(cmd, &cfg)) return 2;
    bool gpu = device == MFRES_DEVICE_CUDA;
    if (gpu && profile)
        return cli_usage_error(cmd, "--profile times the CPU's kernels; on the GPU use Nsight Systems "
                                    "(nsys profile build/mfres bench --device cuda ...)");
    if (cli_device_check(cmd, device, precision)) return 2;
    int nthreads = mfres_set_threads((int)threads);
    if (gemm) return gpu ? bench_gpu_gemm(precision) : bench_gemm();
    mfres_model m;
    if (mfres_model_create_on(&m, &cfg, 1, device, precision)) return cli_runtime_error(cmd);
    char device_desc[256];
    mfres_device_describe(device, device_desc, sizeof device_desc);
    size_t n_in = (size_t)cfg.batch * cfg.in_c * cfg.in_h * cfg.in_w;
    float *images = malloc(n_in * sizeof(float));
    int32_t *labels = malloc(cfg.batch * sizeof(int32_t));
    mfres_rng rng;
    mfres_rng_seed(&rng, 2);
    for (size_t i = 0; i < n_in; i++) images[i] = (float)mfres_rng_normal(&rng);
    for (int i = 0; i < cfg.batch; i++) labels[i] = (int32_t)mfres_rng_below(&rng, cfg.num_classes);
    mfres_optimizer opt;
    /* A small rate keeps the random-label loss finite over many steps. */
    int rc = mfres_optimizer_init(&opt, &m, 0.001f, 0.9f, 1e-4f, false, 1.0f);
    double loss, t_train = 0, t_infer = 0;
    if (!rc && gpu) rc = gpu_train_steps(&m, &opt, warmup, iters, &t_train);
    for (long it = 0; !rc && !gpu && it < warmup + iters; it++) {
        double t0 = mfres_now();
        if ((rc = mfres_model_forward(&m, images, labels, true, &loss, NULL)) || (rc = mfres_model_backward(&m))) break;
        mfres_optimizer_step(&opt, &m);
        if (it >= warmup) t_train += mfres_now() - t0;
    }
    for (long it = 0; !rc && it < warmup + iters; it++) {
        double t0 = mfres_now();
        if ((rc = mfres_model_forward(&m, images, labels, false, &loss, NULL))) break;
        if (it >= warmup) t_infer += mfres_now() - t0;
    }
    if (!rc && profile) {
        /* Separate, profiled steps: the timers add a little to each kernel call. */
        double t_prof = 0;
        mfres_model_set_profiling(&m, true);
        for (long it = 0; !rc && it < iters; it++) {
            double t0 = mfres_now();
            if ((rc = mfres_model_forward(&m, images, labels, true, &loss, NULL)) || (rc = mfres_model_backward(&m)))
                break;
            mfres_optimizer_step(&opt, &m);
            t_prof += mfres_now() - t0;
        }
        mfres_model_set_profiling(&m, false);
        if (!rc) {
            printf("profile of a training step (%ld steps, %.1f ms/step with timers):\n", iters, 1e3 * t_prof / iters);
            mfres_model_print_profile(&m, stdout, iters, t_prof / iters, "whole step (incl. optimiser)");
        }
        /* The inference pass, batch norms folded (the fold itself is redone
         * only when the parameters change, so it shows once here). */
        t_prof = 0;
        mfres_model_set_profiling(&m, true);
        for (long it = 0; !rc && it < iters; it++) {
            double t0 = mfres_now();
            rc = mfres_model_forward(&m, images, labels, false, &loss, NULL);
            t_prof += mfres_now() - t0;
        }
        mfres_model_set_profiling(&m, false);
        if (!rc) {
            printf("profile of an inference pass (%ld passes, %.1f ms/pass with timers):\n", iters, 1e3 * t_prof / iters);
            mfres_model_print_profile(&m, stdout, iters, t_prof / iters, "whole pass (incl. loss)");
        }
    }
    if (!rc) {
        double train_ips = iters * cfg.batch / t_train, infer_ips = iters * cfg.batch / t_infer;
        char tag[48];
        cli_model_tag(&cfg, tag, sizeof tag);
        printf("model %s %s %s, batch %d, input %dx%dx%d, %d threads, %ld timed steps\n", tag,
               mfres_block_name(cfg.block), mfres_mode_name(cfg.mode), cfg.batch, cfg.in_c, cfg.in_h, cfg.in_w,
               nthreads, iters);
        printf("  device %s, precision %s: %s\n", mfres_device_name(device), mfres_precision_name(precision),
               device_desc);
        printf("  %zu parameters (%.2f M), %.1f MFLOPs per image forward\n", m.n_params, m.n_params / 1e6,
               m.forward_flops / 1e6);
        printf("  training:  %8.1f images/s  %6.1f ms/step  %6.1f GFLOP/s (3x forward FLOPs)\n", train_ips,
               1e3 * t_train / iters, train_ips * 3 * m.forward_flops / 1e9);
        printf("  inference: %8.1f images/s  %6.1f ms/step  %6.1f GFLOP/s\n", infer_ips, 1e3 * t_infer / iters,
               infer_ips * m.forward_flops / 1e9);
        printf("train_images_per_s=%.1f infer_images_per_s=%.1f device=%s precision=%s model=%s block=%s mode=%s "
               "batch=%d iters=%ld\n",
               train_ips, infer_ips, mfres_device_name(device), mfres_precision_name(precision), tag,
               mfres_block_name(cfg.block), mfres_mode_name(cfg.mode), cfg.batch, iters);
    }
    mfres_optimizer_free(&opt);
    mfres_model_free(&m);
    free(images);
    free(labels);
    return rc ? cli_runtime_error(cmd) : 0;
}
