/* oneDNN engine, stream and memory-descriptor helpers shared by the layers. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl_debug.h>

#include "mfres/core.h"
#include "nn/nn.h"

int nn_check(dnnl_status_t status, const char *what, const char *file, int line) {
    if (status == dnnl_success) return MFRES_OK;
    return mfres_fail(MFRES_EBACKEND, "oneDNN call failed (%s) at %s:%d: %s", dnnl_status2str(status), file, line,
                      what);
}

void nn_impl_name(const_dnnl_primitive_t prim, char *buf, size_t n) {
    const_dnnl_primitive_desc_t pd;
    const char *name = NULL;
    if (prim && dnnl_primitive_get_primitive_desc(prim, &pd) == dnnl_success)
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
    snprintf(buf, n, "%s", name ? name : "");
}

int nn_ctx_init(nn_ctx *ctx) {
    memset(ctx, 0, sizeof *ctx);
    NN_CHECK(dnnl_engine_create(&ctx->engine, dnnl_cpu, 0));
    NN_CHECK(dnnl_stream_create(&ctx->stream, ctx->engine, dnnl_stream_default_flags));
    /* oneDNN's own kernels on AVX-512 machines work in 16-channel blocks, on AVX2 in 8. */
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const char *algo = getenv("MFRES_CONV_ALGO");
    if (algo && *algo) {
        if (!strcmp(algo, "direct")) ctx->conv_alg_override = dnnl_convolution_direct;
        else if (!strcmp(algo, "winograd")) ctx->conv_alg_override = dnnl_convolution_winograd;
        else if (!strcmp(algo, "auto")) ctx->conv_alg_override = dnnl_convolution_auto;
        else
            return mfres_fail(MFRES_EINVAL, "MFRES_CONV_ALGO must be direct, winograd or auto, got '%s'", algo);
    }
    ctx->scratch = mfres_alloc(sizeof *ctx->scratch, "layer scratch");
    if (!ctx->scratch) return MFRES_ENOMEM;
    memset(ctx->scratch, 0, sizeof *ctx->scratch);
    ctx->block = (isa == dnnl_cpu_isa_avx512_core || isa == dnnl_cpu_isa_avx512_core_vnni ||
                  isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx ||
                  isa == dnnl_cpu_isa_avx512_mic || isa == dnnl_cpu_isa_avx512_mic_4ops)
                     ? 16
                     : 8;
    return MFRES_OK;
}

/* oneDNN's Winograd kernels (F(4x4, 3x3), AVX-512 only) against its direct
 * ones, per pass, measured on the ResNet shapes (batch 128, 2 threads, Zen 4):
 *   channels  forward   fwd+sum+ReLU  backward-data  backward-weights   (ms, direct / Winograd)
 *   16        4.0/3.6   3.8/4.5       3.0/3.8        3.1/2.4
 *   32        2.6/1.5                 2.6/1.4        2.8/1.5
 *   64        2.2/1.1                 2.2/1.1        2.5/1.3
 * dnnl_convolution_auto takes Winograd for forward and backward-data and direct
 * for backward-weights: wrong for three of these cells, and backward-weights is
 * a third of a training step. Winograd needs stride 1 and 3x3 kernels; at 16
 * channels its transforms outweigh the saved multiplies except in the passes
 * shown. A fixed rule rather than timing at start-up, so that the same run
 * gives the same bits. */
dnnl_alg_kind_t nn_conv_algorithm(const nn_ctx *ctx, nn_conv_pass pass, int C, int K, int R, int S, int stride) {
    if (ctx->conv_alg_override) return ctx->conv_alg_override;
    if (R != 3 || S != 3 || stride != 1 || C < 16 || K < 16) return dnnl_convolution_direct;
    bool narrow = C <= 16 && K <= 16;
    if (narrow && (pass == NN_CONV_FORWARD_INFERENCE || pass == NN_CONV_BACKWARD_DATA)) return dnnl_convolution_direct;
    return dnnl_convolution_winograd;
}

/* Our Winograd (winograd.c) against oneDNN's direct kernels on AVX2 (nChw8c,
 * batch 128, 2 threads, median of 15 interleaved runs, Zen 4 held to AVX2):
 *   channels, map   forward  backward-data  backward-weights   (speed-up)
 *   16, 32x32       1.17     0.89           0.85
 *   32, 16x16       1.40     1.32           1.32
 *   64,  8x8        1.71     1.54           1.35
 *   32, 14x14       0.92     0.94           0.88   (partial 4x4 tiles waste 31%)
 * so: 32+ channels and maps divisible by 4, every pass (the inference forward
 * too: its bias, shortcut add and ReLU ride on the output transform). At 16
 * channels the gain is within the machine's noise. */
bool nn_conv_own_winograd(const nn_ctx *ctx, int C, int K, int H, int W, int R, int S, int stride, int pad) {
    if (ctx->conv_alg_override == dnnl_convolution_direct || ctx->conv_alg_override == dnnl_convolution_auto)
        return false;
    if (!nn_winograd_supported(C, K, R, S, stride, pad, ctx->block) || H % 4 || W % 4) return false;
    return ctx->conv_alg_override == dnnl_convolution_winograd || (C >= 32 && K >= 32);
}

int nn_scratch_reserve(const nn_ctx *ctx, size_t floats) {
    struct nn_scratch *s = ctx->scratch;
    if (floats <= s->floats) return MFRES_OK;
    float *data = mfres_alloc(floats * sizeof(float), "layer scratch");
    if (!data) return MFRES_ENOMEM;
    mfres_free(s->data);
    s->data = data, s->floats = floats;
    return MFRES_OK;
}

nn_winograd nn_winograd_bound(const nn_winograd *wg, const nn_ctx *ctx) {
    nn_winograd now = *wg;
    int threads = omp_get_max_threads();
    now.workspace = ctx->scratch->data;
    if (threads < now.threads) now.threads = threads;
    return now;
}

int nn_reorder_create(dnnl_primitive_t *reorder, const nn_ctx *ctx, const dnnl_memory_desc_t *from,
                      const dnnl_memory_desc_t *to) {
    dnnl_primitive_desc_t pd;
    NN_CHECK(dnnl_reorder_primitive_desc_create(&pd, from, ctx->engine, to, ctx->engine, NULL));
    int rc = nn_check(dnnl_primitive_create(reorder, pd), "reorder", __FILE__, __LINE__);
    dnnl_primitive_desc_destroy(pd);
    return rc;
}

int nn_reorder_run(const nn_ctx *ctx, dnnl_primitive_t reorder, dnnl_memory_t from, dnnl_memory_t to) {
    dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    NN_CHECK(dnnl_primitive_execute(reorder, ctx->stream, 2, args));
    return MFRES_OK;
}

float *nn_data_of(dnnl_memory_t mem) {
    void *p = NULL;
    dnnl_memory_get_data_handle(mem, &p);
    return p;
}

void nn_ctx_free(nn_ctx *ctx) {
    if (ctx->scratch) mfres_free(ctx->scratch->data);
    mfres_free(ctx->scratch);
    if (ctx->stream) dnnl_stream_destroy(ctx->stream);
    if (ctx->engine) dnnl_engine_destroy(ctx->engine);
    memset(ctx, 0, sizeof *ctx);
}

dnnl_memory_desc_t nn_md_blocked(const nn_ctx *ctx, int N, int C, int H, int W) {
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {N, C, H, W};
    dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, ctx->block == 16 ? dnnl_nChw16c : dnnl_nChw8c);
    return md;
}

dnnl_memory_desc_t nn_md_nchw(int N, int C, int H, int W) {
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {N, C, H, W};
    dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, dnnl_nchw);
    return md;
}

dnnl_memory_desc_t nn_md_nhwc(int N, int C, int H, int W) {
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {N, C, H, W};
    dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, dnnl_nhwc);
    return md;
}

dnnl_memory_desc_t nn_md_conv_weights_plain(int C, int K, int R, int S, int groups) {
    dnnl_memory_desc_t md;
    if (groups > 1) {
        dnnl_dims_t dims = {groups, K / groups, C / groups, R, S};
        dnnl_memory_desc_init_by_tag(&md, 5, dims, dnnl_f32, dnnl_goihw);
    } else {
        dnnl_dims_t dims = {K, C, R, S};
        dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, dnnl_oihw);
    }
    return md;
}

dnnl_memory_desc_t nn_md_vector(int C) {
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {C};
    dnnl_memory_desc_init_by_tag(&md, 1, dims, dnnl_f32, dnnl_a);
    return md;
}

int nn_memory_wrap(dnnl_memory_t *mem, const nn_ctx *ctx, const dnnl_memory_desc_t *md, void *data) {
    /* DNNL_MEMORY_NONE: the caller owns every buffer; handles are set explicitly. */
    NN_CHECK(dnnl_memory_create(mem, md, ctx->engine, DNNL_MEMORY_NONE));
    if (data) NN_CHECK(dnnl_memory_set_data_handle(*mem, data));
    return MFRES_OK;
}
