/* Softmax cross-entropy, averaged over the rows with a label (label -1 marks
 * a padding row in the last, partial batch of an evaluation). */
#include <math.h>

#include "nn/nn.h"

void nn_softmax_xent_forward(float *probs, double *loss_sum, int *correct, int *n_valid, const float *logits,
                             const int *labels, int N, int K) {
    double total = 0;
    int hits = 0, valid = 0;
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * K;
        float *p = probs + (size_t)n * K;
        int argmax = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > z[argmax]) argmax = k;
        double sum = 0;
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - z[argmax]);
        for (int k = 0; k < K; k++) p[k] = (float)(exp((double)z[k] - z[argmax]) / sum);
        if (labels[n] < 0) continue;
        valid++;
        hits += argmax == labels[n];
        total += log(sum) - ((double)z[labels[n]] - z[argmax]);
    }
    *loss_sum = total;
    *correct = hits;
    *n_valid = valid;
}

void nn_softmax_xent_backward(float *dlogits, const float *probs, const int *labels, int N, int K) {
    int valid = 0;
    for (int n = 0; n < N; n++) valid += labels[n] >= 0;
    float scale = valid ? 1.0f / (float)valid : 0.0f;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            size_t i = (size_t)n * K + k;
            dlogits[i] = labels[n] < 0 ? 0.0f : (probs[i] - (k == labels[n] ? 1.0f : 0.0f)) * scale;
        }
}
