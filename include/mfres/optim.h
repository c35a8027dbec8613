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

#endif
