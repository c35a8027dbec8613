/* Fully connected layer on CBLAS: out[N,n_out] = in[N,n_in] w[n_out,n_in]^T + b[n_out]. */
#include <cblas.h>
#include <string.h>

#include "nn/nn.h"

void nn_linear_forward(float *out, const float *in, const float *w, const float *b, int N, int n_in, int n_out) {
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * n_out, b, (size_t)n_out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n_out, n_in, 1.0f, in, n_in, w, n_in, 1.0f, out, n_out);
}

void nn_linear_backward(float *din, float *dw, float *db, const float *dout, const float *in, const float *w, int N,
                        int n_in, int n_out) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, n_in, n_out, 1.0f, dout, n_out, w, n_in, 0.0f, din,
                n_in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, N, 1.0f, dout, n_out, in, n_in, 0.0f, dw, n_in);
    for (int o = 0; o < n_out; o++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += dout[(size_t)n * n_out + o];
        db[o] = (float)acc;
    }
}
