/* The GPU backend in a build without CUDA (the Makefile found no nvcc, cuDNN
 * or cuBLAS, or MFRES_NO_CUDA was set): every entry point says so. Only
 * gpu_check is reached in practice, since nothing creates a plan after it
 * fails. */
#include <stdio.h>

#include "gpu/gpu.h"
#include "mfres/core.h"

static int not_built(void) {
    return mfres_fail(MFRES_EBACKEND, "this mfres was built without the CUDA backend (the build found no nvcc with "
                                      "cuDNN and cuBLAS). HINT: install the CUDA toolkit, then make clean && make; "
                                      "or use --device cpu");
}

bool gpu_built(void) { return false; }
int gpu_check(mfres_precision p) {
    (void)p;
    return not_built();
}
void gpu_describe(char *buf, size_t cap) { snprintf(buf, cap, "CUDA backend not built"); }
int gpu_gemm_peak(mfres_precision p, int n, double *flops_per_s) {
    (void)p, (void)n;
    *flops_per_s = 0;
    return not_built();
}
int gpu_plan_create(gpu_plan **out, const mfres_model *m, mfres_precision p) {
    (void)m, (void)p;
    *out = NULL;
    return not_built();
}
void gpu_plan_free(gpu_plan *g) { (void)g; }
size_t gpu_activation_bytes(const gpu_plan *g) {
    (void)g;
    return 0;
}
size_t gpu_arena_bytes(const gpu_plan *g) {
    (void)g;
    return 0;
}
int gpu_upload(gpu_plan *g, const mfres_model *m) {
    (void)g, (void)m;
    return not_built();
}
int gpu_download(gpu_plan *g, mfres_model *m, bool grads) {
    (void)g, (void)m, (void)grads;
    return not_built();
}
int gpu_forward(gpu_plan *g, const mfres_model *m, const float *images, const int32_t *labels, bool train,
                double *loss, int *correct) {
    (void)g, (void)m, (void)images, (void)labels, (void)train, (void)loss, (void)correct;
    return not_built();
}
int gpu_backward(gpu_plan *g, const mfres_model *m) {
    (void)g, (void)m;
    return not_built();
}
int gpu_optim_upload(gpu_plan *g, const mfres_model *m, const mfres_optimizer *o) {
    (void)g, (void)m, (void)o;
    return not_built();
}
int gpu_optim_download(gpu_plan *g, const mfres_model *m, mfres_optimizer *o) {
    (void)g, (void)m, (void)o;
    return not_built();
}
int gpu_data_upload(gpu_plan *g, const mfres_dataset *ds, const float *lut) {
    (void)g, (void)ds, (void)lut;
    return not_built();
}
int gpu_data_epoch(gpu_plan *g, const uint32_t *perm, const int8_t *oy, const int8_t *ox, const uint8_t *flip,
                   long n) {
    (void)g, (void)perm, (void)oy, (void)ox, (void)flip, (void)n;
    return not_built();
}
int gpu_train_step(gpu_plan *g, mfres_model *m, long first, float lr, gpu_step_result *res) {
    (void)g, (void)m, (void)first, (void)lr, (void)res;
    return not_built();
}
