/* libFuzzer target: mfres_dataset_load_idx. The input holds both files: its
 * first two bytes give the image file's length, the rest after it is the
 * label file. Raw and gzip-compressed files are both reachable. */
#include "fuzz_common.h"
#include "mfres/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t images = ((size_t)data[0] | (size_t)data[1] << 8) % (size - 1);
    char pi[64], pl[64];
    int fi = fuzz_file(data + 2, images, pi, sizeof pi);
    int fl = fuzz_file(data + 2 + images, size - 2 - images, pl, sizeof pl);
    mfres_dataset ds;
    if (mfres_dataset_load_idx(&ds, pi, pl) == 0) {
        volatile unsigned sum = 0;
        for (int i = 0; i < ds.n; i++) sum += ds.labels[i] + ds.pixels[(size_t)i * ds.h * ds.w];
        mfres_dataset_free(&ds);
    }
    close(fi);
    close(fl);
    return 0;
}
