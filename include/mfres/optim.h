/* SGD with momentum (PyTorch's torch.optim.SGD semantics, dampening 0) and the
 * multi-step learning-rate schedule. */
#ifndef MFRES_OPTIM_H
#define MFRES_OPTIM_H

#include <stdbool.h>
#include <stddef.h>

/* d = g + weight_decay * p;  v = momentum * v + d;
 * p -= lr * (nesterov ? d + momentum * v : v).  v starts at zero. */
void mfres_sgd_update(float *params, float *velocity, const float *grads, size_t n, float lr, float momentum,
                      float weight_decay, bool nesterov);

/* base_lr * gamma^(number of milestones <= epoch); epochs count from 0. */
double mfres_lr_at_epoch(double base_lr, const long *milestones, int n_milestones, double gamma, int epoch);

/* Cosine decay: base_lr * (1 + cos(pi * step / total_steps)) / 2, step from 0. */
double mfres_lr_cosine(double base_lr, long step, long total_steps);

#include "mfres/model.h"

/* The optimiser state for one model: momentum buffers for theta and for tau. */
typedef struct mfres_optimizer {
    float lr;           /* current learning rate (set by the schedule) */
    float momentum, weight_decay, tau_lr_mult;
    bool nesterov;
    float *velocity;     /* [m->n_params] */
    float *tau_velocity; /* [m->n_tau] */
} mfres_optimizer;

int mfres_optimizer_init(mfres_optimizer *o, const mfres_model *m, float lr, float momentum, float weight_decay,
                         bool nesterov, float tau_lr_mult);
/* One update after mfres_model_backward: SGD on theta (with weight decay); in
 * mean-field mode SGD on tau (rate lr * tau_lr_mult, never weight decay),
 * clamped to [0, T_end] after the momentum step, then the blocks re-sorted. */
void mfres_optimizer_step(mfres_optimizer *o, mfres_model *m);
void mfres_optimizer_free(mfres_optimizer *o);

#endif
