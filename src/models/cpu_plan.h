/* The CPU plans: the network of an architecture description (arch.h) on
 * oneDNN, float32. The only part of src/models that sees oneDNN types.
 *
 *   cpu_train.c     the training plan: layers, activation arena, the forward
 *                   and backward drivers (stem, stages, head)
 *   cpu_infer.c     the inference plan: batch norms folded into the
 *                   convolutions, the batch in cache-sized chunks
 *   block_postact.c a post-activation block (any chain, any shortcut):
 *                   training forward, backward with dE/dh, inference fold
 *                   and forward, side by side
 *   block_preact.c  the same for a pre-activation block
 *
 * Primitives and activation buffers belong to positions; parameters belong to
 * blocks. Each step binds every position to the parameters of the block
 * sorted there (arch_params_at), so re-sorting costs nothing. */
#ifndef MFRES_CPU_PLAN_H
#define MFRES_CPU_PLAN_H

#include "models/arch.h"
#include "models/profile.h"
#include "nn/nn.h"

enum { N_SCRATCH = ARCH_SCRATCH, MAX_SHAPES = 32, INFER_BUFFERS = 4 };

typedef struct act {
    float *data;
    dnnl_memory_t mem;
} act;

/* ---- training ---- */

/* One position of the network during training: its layers and saved state. */
typedef struct train_pos {
    const arch_block *shape; /* the block with this index: every block sorted here has its shape */
    int stage, index;
    nn_conv2d conv[ARCH_MAX_CONV], proj;
    nn_batchnorm bn[ARCH_MAX_CONV], proj_bn;
    act a[ARCH_MAX_CONV]; /* pre: relu(BN_i(.)), conv i's input; post: relu(BN_i(t_i)), i < last */
    act t[ARCH_MAX_CONV]; /* convolution outputs */
    act tp;               /* projection output (before its batch norm) */
    act out;              /* X at the next position */
    unsigned char *out_mask; /* post: out > 0, for the final ReLU's backward */
    float *bn_stats[ARCH_MAX_CONV], *proj_stats; /* mean | var */
    float *bn_scaled;        /* post: h*gamma | h*beta of the last batch norm */
    void *bn_ws[ARCH_MAX_CONV], *proj_ws;
    int shape_in, shape_t[ARCH_MAX_CONV], shape_out; /* indices into cpu_plan.shapes */
} train_pos;

/* A map shape (C, H, W) in the blocked layout, for the scratch buffers' views. */
typedef struct plan_shape {
    int C, H, W;
    dnnl_memory_desc_t md;
} plan_shape;

typedef struct cpu_plan {
    nn_ctx ctx;
    int n_pos;
    train_pos *pos;
    nn_conv2d stem_conv;
    nn_batchnorm stem_bn, final_bn;
    act x_in, stem_t, stem_a, final_a;
    float *stem_stats, *final_stats;
    void *stem_ws, *final_ws;
    float *pooled, *logits, *probs, *dlogits, *dpooled;
    int *labels;
    int n_shapes;
    plan_shape shapes[MAX_SHAPES];
    float *scratch[N_SCRATCH];
    dnnl_memory_t scratch_mem[N_SCRATCH][MAX_SHAPES];
    double *dh; /* dE/dh per position, [3 * blocks_per_stage] */
    void *arena;
    struct infer_plan *infer;
    bool have_train_forward;
    profiler prof;
} cpu_plan;

int cpu_plan_create(mfres_model *m);
void cpu_plan_free(mfres_model *m);
int cpu_train_forward(mfres_model *m, const float *images, const int32_t *labels, double *loss, int *correct);
int cpu_train_backward(mfres_model *m);
/* Softmax cross-entropy of the logits against labels; the tail of both passes. */
int cpu_finish_loss(mfres_model *m, const float *logits, const int32_t *labels, double *loss, int *correct);

double cpu_conv_layer_flops(const nn_conv2d *c);

/* Block forms: forward on x (saving what backward needs), and backward, which
 * takes dE/d(out) in scratch[*g] and leaves dE/dx in scratch[*g], writes the
 * block's parameter gradients and *dh = dE/dh. */
int block_postact_forward(mfres_model *m, train_pos *b, const act *x);
int block_postact_backward(mfres_model *m, train_pos *b, const act *x, int *g, double *dh);
int block_preact_forward(mfres_model *m, train_pos *b, const act *x);
int block_preact_backward(mfres_model *m, train_pos *b, const act *x, int *g, double *dh);

/* Kernel calls, timed when profiling; need a `profiler *prof` in scope. */
#define STEP(kind, stage, flops, call) PROFILE_CALL(kind, stage, NULL, flops, call)
#define STEP_CONV(kind, stage, conv, pass, call) \
    PROFILE_CALL(kind, stage, (conv)->impl[pass], cpu_conv_layer_flops(conv), call)
#define STEP_VOID(kind, stage, flops, call) PROFILE_VOID(kind, stage, flops, call)

/* ---- inference ---- */

/* An inference convolution with, where its source is NHWC and its output is
 * blocked, the reorder oneDNN needs on the way (it has no fast kernel that
 * changes layout): the convolution writes NHWC into the plan's spare buffer. */
typedef struct infer_conv {
    nn_conv2d_infer conv;
    dnnl_primitive_t reorder_out;
    dnnl_memory_t nhwc_out; /* over the spare buffer */
    const dnnl_memory_desc_t *dst_md;
    double flops; /* per chunk */
} infer_conv;

typedef struct infer_pos {
    const arch_block *shape;
    int stage, index;
    infer_conv conv[ARCH_MAX_CONV], proj;
    nn_batchnorm bn0; /* pre: BN1 + ReLU on the residual stream, which the shortcut needs raw */
} infer_pos;

typedef struct infer_plan {
    const nn_ctx *ctx;
    int chunk; /* images per pass of the network */
    bool nhwc_stage1;
    int n_pos;
    infer_pos *pos;
    infer_conv stem;
    nn_batchnorm final_bn; /* pre only */
    float *buf[INFER_BUFFERS], *spare;
    int n_shapes;
    plan_shape shapes[MAX_SHAPES];                 /* layouts by (C, H, W): NHWC at stage-1 resolution or blocked */
    dnnl_memory_t mem[INFER_BUFFERS][MAX_SHAPES]; /* buffer k viewed as shape s */
    dnnl_memory_t x_in, x_nhwc;                    /* the chunk's images, as given and in NHWC */
    dnnl_primitive_t reorder_in;                   /* NCHW -> NHWC input */
    float *in_nhwc;
    float *padded_in, *padded_logits; /* the last chunk, when it is short */
    float *w_fold, *b_fold, *pooled;
    /* What the folded weights were made from: params | buffers | h, and order. */
    float *snapshot;
    int *snapshot_order;
    size_t snapshot_floats;
    int n_order;
    bool folded;
} infer_plan;

int infer_plan_create(infer_plan **plan, const mfres_model *m, const nn_ctx *ctx);
void infer_plan_free(infer_plan *plan);
/* logits [batch, classes] of images [batch, in_c, in_h, in_w] with the model's
 * current parameters, running statistics and block order. */
int infer_plan_forward(infer_plan *plan, const mfres_model *m, const float *images, float *logits, profiler *prof);

/* Shared by the block forms' inference code. */
int infer_shape(infer_plan *p, int C, int H, int W);
dnnl_memory_t infer_view(infer_plan *p, int buffer, int C, int H, int W);
/* Loads conv' = h * BN(conv) (bn NULL: h * conv, no bias) into `conv`. */
int infer_fold(infer_plan *p, infer_conv *conv, const arch_conv *shape, const arch_bn *bn, double eps, double h);
/* Runs an inference convolution from buffer `in` into buffer `out`. */
int infer_conv_run(infer_plan *p, infer_conv *c, const arch_conv *shape, int out, int in, profiler *prof,
                   const char *kind, int stage);
/* The shortcut of a block on the stream in buffer x: *out = x (identity), or a
 * free buffer (not in `used`) holding option A or the folded projection. */
int infer_shortcut(infer_plan *p, infer_pos *b, int x, unsigned used, profiler *prof, const char *proj_kind,
                   int *out);
/* A buffer not in use (`used` is a bit set of buffers). */
int infer_free_buffer(unsigned used);

int block_postact_infer_fold(infer_plan *p, const mfres_model *m, infer_pos *b);
int block_postact_infer(infer_plan *p, const mfres_model *m, infer_pos *b, int *x, profiler *prof);
int block_preact_infer_fold(infer_plan *p, const mfres_model *m, infer_pos *b);
int block_preact_infer(infer_plan *p, const mfres_model *m, infer_pos *b, int *x, profiler *prof);

#endif
