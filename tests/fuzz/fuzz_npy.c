/* libFuzzer target: mfres_npy_load_f64. */
#include "fuzz_common.h"
#include "mfres/core.h"
#include "mfres/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    double *m = NULL;
    int rows, cols;
    if (mfres_npy_load_f64(path, &m, &rows, &cols) == 0) {
        volatile double sum = 0;
        for (long i = 0; i < (long)rows * cols; i++) sum += m[i]; /* every element is readable */
        mfres_free(m);
    }
    close(fd);
    return 0;
}
