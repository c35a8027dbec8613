/* allreduce_bench: time of the sum-allreduce through mfres's communication
 * interface (include/mfres/dist.h), for the message sizes training sends:
 *   mpirun -np R build/tools/allreduce_bench [floats ...]
 * Default sizes: 64 doubles (a batch norm's sync-BN sums, latency-bound) and
 * the gradient buffers of ResNet-20/56/110 on CIFAR (0.27, 0.86, 1.73 M floats).
 * Prints per size the median time of one call (rank 0's, 30 calls after 5 warm-up
 * calls), the algorithm bandwidth bytes/time and the bus bandwidth
 * 2(R-1)/R x bytes/time (what each rank moves in a ring allreduce, comparable
 * across rank counts), as docs/DISTRIBUTED.md uses them. */
#include <stdio.h>
#include <stdlib.h>

#include "mfres/core.h"
#include "mfres/dist.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    mfres_dist d;
    if (mfres_dist_init(&d, &argc, &argv)) {
        fprintf(stderr, "allreduce_bench: %s\n", mfres_last_error());
        return 1;
    }
    long sizes[16] = {0};
    int n_sizes = 0;
    for (int i = 1; i < argc && n_sizes < 16; i++) sizes[n_sizes++] = atol(argv[i]);
    if (!n_sizes) {
        long defaults[] = {-64, 272474, 855770, 1730714}; /* negative: doubles */
        for (int i = 0; i < 4; i++) sizes[n_sizes++] = defaults[i];
    }
    enum { WARMUP = 5, CALLS = 30 };
    if (d.rank == 0) printf("ranks %d (%s)\n%12s %10s %12s %12s\n", d.size, d.backend, "bytes", "median_us", "algo_GB/s", "bus_GB/s");
    for (int s = 0; s < n_sizes; s++) {
        bool f64 = sizes[s] < 0;
        size_t n = (size_t)(f64 ? -sizes[s] : sizes[s]), bytes = n * (f64 ? 8 : 4);
        void *buf = calloc(n, f64 ? 8 : 4);
        double t[CALLS];
        for (int k = 0; k < WARMUP + CALLS; k++) {
            double t0 = mfres_now();
            int rc = f64 ? d.allreduce_sum_f64(&d, buf, n) : d.allreduce_sum_f32(&d, buf, n);
            if (rc) {
                fprintf(stderr, "allreduce_bench: %s\n", mfres_last_error());
                d.abort(&d, 1);
                return 1;
            }
            if (k >= WARMUP) t[k - WARMUP] = mfres_now() - t0;
        }
        qsort(t, CALLS, sizeof t[0], cmp_double);
        double med = t[CALLS / 2];
        if (d.rank == 0)
            printf("%12zu %10.1f %12.3f %12.3f\n", bytes, med * 1e6, bytes / med / 1e9,
                   d.size > 1 ? 2.0 * (d.size - 1) / d.size * bytes / med / 1e9 : 0.0);
        free(buf);
    }
    mfres_dist_finalize(&d);
    return 0;
}
