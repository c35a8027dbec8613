/* The data-parallel side of the training loop (issue 12): what the ranks of a
 * job exchange, through include/mfres/dist.h. With one rank every function
 * here is a no-op or the identity, so a single process runs the same loop. */
#ifndef MFRES_TRAIN_PARALLEL_H
#define MFRES_TRAIN_PARALLEL_H

#include <stdbool.h>
#include <stdint.h>

#include "mfres/dist.h"
#include "mfres/model.h"
#include "mfres/optim.h"
#include "mfres/train.h"

/* A rank's communication: the backend, and the seconds spent in it (waiting
 * for the slowest rank included: what a step loses to the other ranks). */
typedef struct par_comm {
    mfres_dist *dist;
    double seconds;
} par_comm;

/* Fails on every rank (with the same message on the ranks that agree with
 * rank 0, the differing line on the others) when the ranks' resolved flags differ. */
int par_check_flags_agree(par_comm *pc, const mfres_train_config *cfg);
/* Rank 0's model (parameters, running statistics, tau, block order), momentum
 * buffers, epoch and step count to every rank. */
int par_broadcast_state(par_comm *pc, mfres_model *m, mfres_optimizer *opt, int *epochs_done, long *steps);
/* Per-step statistics of one rank, summed over ranks by par_reduce_step. */
typedef struct par_step_stats {
    double loss_sum; /* loss x valid images */
    double correct, seen;
    double failed;   /* ranks whose loss was not finite */
} par_step_stats;
/* After the backward pass: grads and tau_grad <- their means over ranks (the
 * gradient of the mean loss over the global batch), stats <- their sums. */
int par_reduce_step(par_comm *pc, mfres_model *m, par_step_stats *stats);
/* Evaluation statistics (loss sum, correct, seen) summed over ranks. */
int par_reduce_sums(par_comm *pc, double *sums, int n);
/* Per-rank batch norm (no --sync-bn): running statistics <- their mean over
 * ranks, so that evaluation and the saved model see the same ones everywhere. */
int par_average_running_stats(par_comm *pc, mfres_model *m);
/* Fails on every rank unless the model and momentum buffers are the same bits
 * on every rank; *hash is rank 0's 64-bit hash of them. */
int par_check_identical(par_comm *pc, const mfres_model *m, const mfres_optimizer *opt, uint64_t *hash);
/* The sync-BN hook (nn_bn_sync) over pc: allreduce of doubles, timed. */
int par_bn_allreduce(double *x, size_t n, void *pc);

#endif
