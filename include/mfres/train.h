/* The training loop: data, model, optimiser, schedule, evaluation every
 * epoch, and the run directory (config.json, metrics.jsonl, model.safetensors). */
#ifndef MFRES_TRAIN_H
#define MFRES_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "mfres/data.h"
#include "mfres/model.h"

enum { MFRES_MAX_MILESTONES = 16 };

typedef struct mfres_train_config {
    char data[4200];           /* "NAME[:PATH]" */
    mfres_model_config model;  /* input shape and classes come from the data */
    int epochs;
    double lr, momentum, weight_decay, tau_lr_mult, gamma;
    bool nesterov;
    bool cosine;               /* per-step cosine decay to 0 over the run (the default); else multi-step */
    long milestones[MFRES_MAX_MILESTONES];
    int n_milestones;
    uint64_t seed;
    int threads;               /* 0: all cores */
    char out_dir[4096];
    int augment;               /* pad 4 + random crop (+ flip); -1: the data set's default (CIFAR on, MNIST off) */
    int flip;                  /* -1: the data set's default (CIFAR on, MNIST off) */
    int train_limit, test_limit; /* use only the first K images (0: all) */
    int progress;              /* -1: bar on a terminal, lines otherwise; 0: lines; 1: bar */
    bool quiet;                /* no model summary, no progress */
    long inject_nan_step;      /* testing aid: poison the loss at this global step (0: never) */
    bool resume;               /* continue the run in out_dir from its state.safetensors (which must exist) */
    bool overwrite;            /* out_dir may hold a run: its run files are removed and training starts over */
    char allow_change[256];    /* resume: comma-separated settings that may differ from the run's ("lr,threads") */
    /* Data parallelism (issue 12; docs/DISTRIBUTED.md). model.batch stays the
     * global batch, which each of dist->size ranks takes a share of. */
    struct mfres_dist *dist;   /* NULL: one process */
    bool sync_bn;              /* batch-norm statistics over all ranks' batch; else per rank (DDP's default) */
    long inject_drift_step;    /* testing aid: the last rank nudges one weight by 1 ulp at this global step */
    long warmup_steps;         /* the first warmup_steps steps run at warmup_lr (He et al.'s ResNet-110 warm-up) */
    double warmup_lr;
    char recipe[32];           /* the --recipe the flags started from ("" none); shown in config.json */
    mfres_device device;       /* cpu (default) or cuda: the whole step on the GPU (docs/GPU.md) */
    mfres_precision precision; /* fp32 (default); tf32 and bf16 on the GPU only */
} mfres_train_config;

typedef struct mfres_train_result {
    int epochs_done;
    long steps;
    double train_loss, train_acc, test_loss, test_acc;
    double train_seconds, total_seconds, images_per_s;
    int ranks;
    double comm_seconds;       /* this rank's time in communication, training steps included */
    uint64_t model_hash;       /* of the model and momentum, the same on every rank (checked each epoch) */
} mfres_train_result;

/* The default job: ResNet-20, mean-field (unit tau), Fashion-MNIST, 1 epoch,
 * lr 0.1 with a per-step cosine decay, momentum 0.9, weight decay 1e-4,
 * seed 0; batch and augmentation from the data set (MNIST: 64, none;
 * CIFAR: 128, crop + flip). */
void mfres_train_config_default(mfres_train_config *cfg);
/* Writes cfg as JSON (the resolved configuration). */
void mfres_train_config_write_json(const mfres_train_config *cfg, FILE *fp);
/* Trains into cfg->out_dir. A directory that holds a run is refused
 * (MFRES_EINVAL) unless cfg->resume or cfg->overwrite; so is a resume that
 * changes a setting not listed in cfg->allow_change, or of a run without a
 * state or already finished. A second process on the same directory is
 * refused (MFRES_EIO). */
int mfres_train(const mfres_train_config *cfg, mfres_train_result *res);

/* Evaluates on every image of ds (running statistics; the last batch padded). */
int mfres_evaluate(mfres_model *m, const mfres_dataset *ds, const float *mean, const float *std, double *loss,
                   double *acc);

/* Sets the thread count for oneDNN (OpenMP) and OpenBLAS; 0 means all cores,
 * and more than the machine's cores is capped to them with a warning (more
 * threads than cores only slows every step). Returns the count in force. */
int mfres_set_threads(int threads);

#endif
