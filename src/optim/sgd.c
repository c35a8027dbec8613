/* SGD with momentum and the multi-step schedule. */
#include "mfres/optim.h"

#include <math.h>
#include <string.h>

#include "mfres/core.h"
#include "mfres/meanfield.h"

void mfres_sgd_update(float *params, float *velocity, const float *grads, size_t n, float lr, float momentum,
                      float weight_decay, bool nesterov) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float d = grads[i] + weight_decay * params[i];
        float v = momentum * velocity[i] + d;
        velocity[i] = v;
        params[i] -= lr * (nesterov ? d + momentum * v : v);
    }
}

double mfres_lr_at_epoch(double base_lr, const long *milestones, int n_milestones, double gamma, int epoch) {
    double lr = base_lr;
    for (int i = 0; i < n_milestones; i++)
        if (epoch >= milestones[i]) lr *= gamma;
    return lr;
}

double mfres_lr_cosine(double base_lr, long step, long total_steps) {
    if (total_steps <= 1) return base_lr;
    return 0.5 * base_lr * (1.0 + cos(M_PI * (double)step / (double)total_steps));
}

int mfres_optimizer_init(mfres_optimizer *o, const mfres_model *m, float lr, float momentum, float weight_decay,
                         bool nesterov, float tau_lr_mult) {
    memset(o, 0, sizeof *o);
    o->lr = lr, o->momentum = momentum, o->weight_decay = weight_decay, o->nesterov = nesterov;
    o->tau_lr_mult = tau_lr_mult;
    o->velocity = mfres_alloc(m->n_params * sizeof(float), "momentum buffer");
    o->tau_velocity = mfres_alloc((m->n_tau + 1) * sizeof(float), "tau momentum buffer");
    if (!o->velocity || !o->tau_velocity) {
        mfres_optimizer_free(o);
        return MFRES_ENOMEM;
    }
    return MFRES_OK;
}

void mfres_optimizer_step(mfres_optimizer *o, mfres_model *m) {
    mfres_sgd_update(m->params, o->velocity, m->grads, m->n_params, o->lr, o->momentum, o->weight_decay, o->nesterov);
    if (m->cfg.mode != MFRES_MODE_MEANFIELD || m->n_tau == 0) return;
    mfres_sgd_update(m->tau, o->tau_velocity, m->tau_grad, (size_t)m->n_tau, o->lr * o->tau_lr_mult, o->momentum,
                     0.0f, o->nesterov);
    /* The clamp is part of the algorithm (tau leaves [0, T_end] within a few
     * steps at lr 0.1), applied after the momentum step as in the PyTorch reading. */
    mf_clamp(m->tau, m->n_tau, 0.0f, mf_tau_end(m->particles, m->cfg.tau_init));
    mfres_model_sort_blocks(m);
}

void mfres_optimizer_free(mfres_optimizer *o) {
    mfres_free(o->velocity);
    mfres_free(o->tau_velocity);
    memset(o, 0, sizeof *o);
}
