/* SGD with momentum and the multi-step schedule. */
#include "mfres/optim.h"

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
