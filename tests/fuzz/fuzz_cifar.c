/* libFuzzer target: the CIFAR-10 and CIFAR-100 readers on one file (and on the
 * input split in two files, as the loader concatenates them). */
#include "fuzz_common.h"
#include "mfres/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char p1[64], p2[64];
    size_t cut = data[0] * (size - 1) / 255;
    int f1 = fuzz_file(data + 1, cut, p1, sizeof p1);
    int f2 = fuzz_file(data + 1 + cut, size - 1 - cut, p2, sizeof p2);
    const char *one[1] = {p1}, *two[2] = {p1, p2};
    mfres_dataset ds;
    if (mfres_dataset_load_cifar10_files(&ds, two, 2) == 0) mfres_dataset_free(&ds);
    if (mfres_dataset_load_cifar100_files(&ds, one, 1, data[0] & 1) == 0) mfres_dataset_free(&ds);
    close(f1);
    close(f2);
    return 0;
}
