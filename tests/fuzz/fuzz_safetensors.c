/* libFuzzer target: mfres_safetensors_load, then every lookup a model load makes. */
#include "fuzz_common.h"
#include "mfres/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    mfres_safetensors st;
    if (mfres_safetensors_load(&st, path) == 0) {
        float buf[64];
        for (int i = 0; i < st.n_tensors; i++)
            if (st.tensors[i].numel <= 64)
                mfres_safetensors_copy_f32_shaped(&st, path, st.tensors[i].name, buf, st.tensors[i].ndim,
                                                  st.tensors[i].shape);
        mfres_safetensors_meta(&st, "format");
        mfres_safetensors_free(&st);
    }
    close(fd);
    return 0;
}
