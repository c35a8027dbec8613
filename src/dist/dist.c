/* The single-process backend and the choice of backend (include/mfres/dist.h). */
#include "mfres/dist.h"

#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"

#ifdef MFRES_HAVE_MPI
int mfres_dist_init_mpi(mfres_dist *d, int *argc, char ***argv); /* src/dist/mpi.c */
#endif

bool mfres_dist_have_mpi(void) {
#ifdef MFRES_HAVE_MPI
    return true;
#else
    return false;
#endif
}

int mfres_dist_launcher_size(void) {
    /* Open MPI's mpirun, PMIx-based launchers (Open MPI 5, Slurm), MPICH's hydra. */
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v) > 0 ? atoi(v) : 1;
    }
    return 0;
}

static int single_allreduce_f32(mfres_dist *d, float *x, size_t n) {
    (void)d, (void)x, (void)n;
    return MFRES_OK;
}
static int single_allreduce_f64(mfres_dist *d, double *x, size_t n) {
    (void)d, (void)x, (void)n;
    return MFRES_OK;
}
static int single_broadcast(mfres_dist *d, void *buf, size_t bytes, int root) {
    (void)d, (void)buf, (void)bytes;
    return root == 0 ? MFRES_OK : mfres_fail(MFRES_EINVAL, "broadcast from rank %d in a job of 1 process", root);
}
static void single_abort(mfres_dist *d, int code) { (void)d, (void)code; }
static void single_finalize(mfres_dist *d) { (void)d; }

void mfres_dist_init_single(mfres_dist *d) {
    *d = (mfres_dist){.backend = "single",
                      .rank = 0,
                      .size = 1,
                      .allreduce_sum_f32 = single_allreduce_f32,
                      .allreduce_sum_f64 = single_allreduce_f64,
                      .broadcast = single_broadcast,
                      .abort = single_abort,
                      .finalize = single_finalize};
}

int mfres_dist_init(mfres_dist *d, int *argc, char ***argv) {
    mfres_dist_init_single(d);
    int launched = mfres_dist_launcher_size();
#ifdef MFRES_HAVE_MPI
    if (launched > 0) return mfres_dist_init_mpi(d, argc, argv);
#else
    (void)argc, (void)argv;
    if (launched > 1)
        return mfres_fail(MFRES_EINVAL,
                          "an MPI launcher started %d processes, but this mfres was built without MPI, so each would "
                          "train alone. HINT: install libopenmpi-dev and openmpi-bin (scripts/setup.sh) and rebuild",
                          launched);
#endif
    return MFRES_OK;
}

void mfres_dist_finalize(mfres_dist *d) {
    if (d->finalize) d->finalize(d);
    mfres_dist_init_single(d);
}
