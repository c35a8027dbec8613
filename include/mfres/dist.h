/* Communication between the ranks of a data-parallel job.
 *
 * A small table of operations, ggml-backend style: the trainer speaks only to
 * this, so the single-process implementation (always built) and MPI (built
 * when mpicc is found) are interchangeable, and a GPU collective library can
 * be added beside them. Every operation is collective: every rank calls it,
 * in the same order, with the same sizes. Errors are return codes with a
 * message (mfres_fail); nothing here exits, except `abort`, whose job it is. */
#ifndef MFRES_DIST_H
#define MFRES_DIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct mfres_dist mfres_dist;
struct mfres_dist {
    const char *backend; /* "single" or "mpi" */
    int rank, size;
    /* x <- the sum of x over every rank, in place. Every rank receives the
     * same bits (the parameters stay identical on all ranks because of it). */
    int (*allreduce_sum_f32)(mfres_dist *d, float *x, size_t n);
    int (*allreduce_sum_f64)(mfres_dist *d, double *x, size_t n);
    /* buf <- root's buf, on every rank. */
    int (*broadcast)(mfres_dist *d, void *buf, size_t bytes, int root);
    /* Stops every rank of the job with exit status `code` (the caller has
     * printed its message). The single-process backend returns, and the
     * caller exits as it would have anyway. */
    void (*abort)(mfres_dist *d, int code);
    void (*finalize)(mfres_dist *d);
    void *impl;
};

/* Whether this build has the MPI backend. */
bool mfres_dist_have_mpi(void);
/* The number of processes an MPI launcher (mpirun, srun, hydra) started this
 * one among, from its environment; 0 when not launched by one. */
int mfres_dist_launcher_size(void);
/* The single-process backend: rank 0 of 1; every collective is the identity. */
void mfres_dist_init_single(mfres_dist *d);
/* MPI when this process was started by an MPI launcher and the build has MPI,
 * else the single-process backend. Started by a launcher with more than one
 * process but built without MPI: an error (each process would otherwise run
 * the whole job on its own, all writing the same files). */
int mfres_dist_init(mfres_dist *d, int *argc, char ***argv);
/* Finalises the backend (MPI_Finalize); harmless on the single one. */
void mfres_dist_finalize(mfres_dist *d);

#endif
