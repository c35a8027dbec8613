/* Devices and precisions by name, and whether a device can run here
 * (include/mfres/device.h). The GPU's answers come from src/gpu. */
#include <string.h>
#include <stdio.h>

#include "gpu/gpu.h"
#include "mfres/core.h"
#include "mfres/device.h"

const char *mfres_device_name(mfres_device d) { return d == MFRES_DEVICE_CUDA ? "cuda" : "cpu"; }

const char *mfres_precision_name(mfres_precision p) {
    return p == MFRES_PRECISION_TF32 ? "tf32" : p == MFRES_PRECISION_BF16 ? "bf16" : "fp32";
}

int mfres_device_parse(const char *s, mfres_device *d) {
    if (!strcmp(s, "cpu")) *d = MFRES_DEVICE_CPU;
    else if (!strcmp(s, "cuda") || !strcmp(s, "gpu")) *d = MFRES_DEVICE_CUDA;
    else return mfres_fail(MFRES_EINVAL, "--device '%s': expected cpu or cuda", s);
    return MFRES_OK;
}

int mfres_precision_parse(const char *s, mfres_precision *p) {
    if (!strcmp(s, "fp32")) *p = MFRES_PRECISION_FP32;
    else if (!strcmp(s, "tf32")) *p = MFRES_PRECISION_TF32;
    else if (!strcmp(s, "bf16")) *p = MFRES_PRECISION_BF16;
    else return mfres_fail(MFRES_EINVAL, "--precision '%s': expected fp32, tf32 or bf16", s);
    return MFRES_OK;
}

bool mfres_cuda_built(void) { return gpu_built(); }

int mfres_device_check(mfres_device d, mfres_precision p) {
    if (d == MFRES_DEVICE_CUDA) return gpu_check(p);
    if (p != MFRES_PRECISION_FP32)
        return mfres_fail(MFRES_EINVAL, "--precision %s runs on the GPU only; the CPU path is fp32. HINT: --device "
                                        "cuda, or drop --precision",
                          mfres_precision_name(p));
    return MFRES_OK;
}

void mfres_device_describe(mfres_device d, char *buf, size_t cap) {
    if (d == MFRES_DEVICE_CUDA) gpu_describe(buf, cap);
    else snprintf(buf, cap, "CPU (oneDNN, fp32)");
}
