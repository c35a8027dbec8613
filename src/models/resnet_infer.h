/* The ResNet's inference pass (batch norm with running statistics), built for
 * speed: every batch norm that follows a convolution is folded into it, and
 * the residual add and ReLU run as the convolution's post-ops. See
 * resnet_infer.c. */
#ifndef MFRES_RESNET_INFER_H
#define MFRES_RESNET_INFER_H

#include "mfres/model.h"
#include "models/profile.h"
#include "nn/nn.h"

typedef struct resnet_infer resnet_infer;

int resnet_infer_create(resnet_infer **plan, const mfres_model *m, const nn_ctx *ctx);
/* logits [batch, classes] of images [batch, in_c, in_h, in_w] with the model's
 * current parameters, running statistics and block order. */
int resnet_infer_forward(resnet_infer *plan, const mfres_model *m, const float *images, float *logits, profiler *prof);
void resnet_infer_free(resnet_infer *plan);

#endif
