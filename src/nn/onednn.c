/* oneDNN engine, stream and memory-descriptor helpers shared by the layers. */
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

int nn_ctx_init(nn_ctx *ctx) {
    memset(ctx, 0, sizeof *ctx);
    NN_CHECK(dnnl_engine_create(&ctx->engine, dnnl_cpu, 0));
    NN_CHECK(dnnl_stream_create(&ctx->stream, ctx->engine, dnnl_stream_default_flags));
    /* oneDNN's own kernels on AVX-512 machines work in 16-channel blocks, on AVX2 in 8. */
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const char *algo = getenv("MFRES_CONV_ALGO");
    ctx->conv_alg = algo && !strcmp(algo, "direct") ? dnnl_convolution_direct : dnnl_convolution_auto;
    ctx->block = (isa == dnnl_cpu_isa_avx512_core || isa == dnnl_cpu_isa_avx512_core_vnni ||
                  isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx ||
                  isa == dnnl_cpu_isa_avx512_mic || isa == dnnl_cpu_isa_avx512_mic_4ops)
                     ? 16
                     : 8;
    return MFRES_OK;
}

void nn_ctx_free(nn_ctx *ctx) {
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
