/* mfres bench: training and inference images/s on synthetic data. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/model_flags.h"
#include "mfres/core.h"
#include "mfres/model.h"
#include "mfres/optim.h"
#include "mfres/train.h"

static void print_help(void) {
    printf("usage: mfres bench [flags]\n"
           "\n"
           "Times training steps (forward, backward, optimiser) and inference on random\n"
           "data and prints images/s; the last line is machine-readable:\n"
           "  train_images_per_s=... infer_images_per_s=...\n"
           "\n"
           "  --input CxHxW         input shape [3x32x32]\n"
           "  --classes N           [10]\n"
           "  --iters N             timed steps per measurement [10]\n"
           "  --warmup N            untimed steps first [2]\n"
           "  --threads N           [all cores]\n"
           "  --profile             also a per-kernel table of a training step (where the time goes)\n"
           "  --gemm                instead: the machine's cblas_sgemm peak (N = 1024, 2048)\n"
           "%s",
           cli_model_flags_help);
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

int cmd_bench(int argc, char **argv) {
    const char *cmd = "bench";
    mfres_model_config cfg;
    mfres_model_config_default(&cfg);
    cfg.in_c = 3, cfg.in_h = 32, cfg.in_w = 32;
    long iters = 10, warmup = 2, threads = 0, classes = 10;
    bool gemm = false, profile = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r = cli_model_flag(cmd, argc, argv, &i, &cfg);
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
    int nthreads = mfres_set_threads((int)threads);
    if (gemm) return bench_gemm();
    mfres_model m;
    if (mfres_model_create(&m, &cfg, 1)) return cli_runtime_error(cmd);
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
    for (long it = 0; !rc && it < warmup + iters; it++) {
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
        printf("  %zu parameters (%.2f M), %.1f MFLOPs per image forward\n", m.n_params, m.n_params / 1e6,
               m.forward_flops / 1e6);
        printf("  training:  %8.1f images/s  %6.1f ms/step  %6.1f GFLOP/s (3x forward FLOPs)\n", train_ips,
               1e3 * t_train / iters, train_ips * 3 * m.forward_flops / 1e9);
        printf("  inference: %8.1f images/s  %6.1f ms/step  %6.1f GFLOP/s\n", infer_ips, 1e3 * t_infer / iters,
               infer_ips * m.forward_flops / 1e9);
        printf("train_images_per_s=%.1f infer_images_per_s=%.1f\n", train_ips, infer_ips);
    }
    mfres_optimizer_free(&opt);
    mfres_model_free(&m);
    free(images);
    free(labels);
    return rc ? cli_runtime_error(cmd) : 0;
}
