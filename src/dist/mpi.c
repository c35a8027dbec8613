/* The MPI backend (include/mfres/dist.h): MPI_COMM_WORLD, errors returned
 * rather than fatal, counts above INT_MAX sent in pieces. Compiled only when
 * the Makefile finds mpicc. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>

#include "mfres/core.h"
#include "mfres/dist.h"

int mfres_dist_init_mpi(mfres_dist *d, int *argc, char ***argv);

enum { MAX_PIECE = INT_MAX / 8 };

static int mpi_check(int err, const char *what) {
    if (err == MPI_SUCCESS) return MFRES_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return mfres_fail(MFRES_EBACKEND, "MPI: %s failed: %.*s", what, len, msg);
}

static int allreduce(void *x, size_t n, size_t elem, MPI_Datatype type) {
    for (size_t off = 0; off < n; off += MAX_PIECE) {
        int count = (int)(n - off < MAX_PIECE ? n - off : MAX_PIECE);
        int rc = mpi_check(MPI_Allreduce(MPI_IN_PLACE, (char *)x + off * elem, count, type, MPI_SUM, MPI_COMM_WORLD),
                           "MPI_Allreduce");
        if (rc) return rc;
    }
    return MFRES_OK;
}

static int mpi_allreduce_f32(mfres_dist *d, float *x, size_t n) {
    (void)d;
    return allreduce(x, n, sizeof *x, MPI_FLOAT);
}

static int mpi_allreduce_f64(mfres_dist *d, double *x, size_t n) {
    (void)d;
    return allreduce(x, n, sizeof *x, MPI_DOUBLE);
}

static int mpi_broadcast(mfres_dist *d, void *buf, size_t bytes, int root) {
    (void)d;
    for (size_t off = 0; off < bytes; off += MAX_PIECE) {
        int count = (int)(bytes - off < MAX_PIECE ? bytes - off : MAX_PIECE);
        int rc = mpi_check(MPI_Bcast((char *)buf + off, count, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
        if (rc) return rc;
    }
    return MFRES_OK;
}

static void mpi_abort(mfres_dist *d, int code) {
    (void)d;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void mpi_finalize(mfres_dist *d) {
    (void)d;
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

int mfres_dist_init_mpi(mfres_dist *d, int *argc, char ***argv) {
    /* Only the main thread calls MPI (the loader's thread and OpenMP's never do). */
    int provided;
    int rc = mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    if (rc) return rc;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    *d = (mfres_dist){.backend = "mpi",
                      .allreduce_sum_f32 = mpi_allreduce_f32,
                      .allreduce_sum_f64 = mpi_allreduce_f64,
                      .broadcast = mpi_broadcast,
                      .abort = mpi_abort,
                      .finalize = mpi_finalize};
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    return MFRES_OK;
}
