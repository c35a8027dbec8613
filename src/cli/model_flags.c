/* Model-architecture flags shared by the subcommands. */
#include "cli/model_flags.h"

#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "mfres/core.h"

const char cli_model_flags_help[] =
    "  --model NAME          resnetN: CIFAR ResNet of depth N = 6n+2 (20, 32, 44, 56, 110, ...) with basic\n"
    "                        blocks, or 9n+2 (164, ...) with --block bottleneck; resnext29-8x64d,\n"
    "                        resnext29-16x64d (ResNeXt-29, any resnextN-CxDd with N = 9n+2)  [resnet20]\n"
    "  --block postact|preact|bottleneck  post-activation (He 2016a) or pre-activation (He 2016b) basic\n"
    "                        blocks, or the pre-activation bottleneck of ResNet-164; ResNeXt takes\n"
    "                        postact or preact  [postact]\n"
    "  --mode meanfield|vanilla  mean-field training (Algorithm 1) or the plain ResNet [meanfield]\n"
    "  --tau-init unit|grid  unit: tau_i = i+1 (step 0 = vanilla); grid: tau_i = (i+1)/P [unit]\n"
    "  --batch N             images per step [128]\n"
    "  --width N             stem width: basic blocks' stage 1 (doubled per stage) [16]; bottleneck:\n"
    "                        stage-1 bottleneck width [16]; ResNeXt [64]\n";

const char cli_device_flags_help[] =
    "  --device cpu|cuda     where the model runs: the CPU (oneDNN) or a CUDA GPU (cuDNN, cuBLAS;\n"
    "                        docs/GPU.md). Without a usable GPU, cuda is refused (exit 2)  [cpu]\n"
    "  --precision fp32|tf32|bf16  fp32: exact float32; tf32: convolutions and the classifier on TF32\n"
    "                        tensor cores; bf16: convolutions and activations in bfloat16, batch norm,\n"
    "                        loss, tau and master weights in float32. tf32 and bf16 need --device cuda [fp32]\n";

int cli_device_flag(const char *cmd, int argc, char **argv, int *i, mfres_device *d, mfres_precision *p) {
    const char *v;
    int r;
    if ((r = cli_flag(cmd, argc, argv, i, "--device", &v))) {
        if (r < 0) return 2;
        if (mfres_device_parse(v, d)) return cli_usage_error(cmd, "%s", mfres_last_error());
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--precision", &v))) {
        if (r < 0) return 2;
        if (mfres_precision_parse(v, p)) return cli_usage_error(cmd, "%s", mfres_last_error());
        return 1;
    }
    return 0;
}

int cli_device_check(const char *cmd, mfres_device d, mfres_precision p) {
    if (!mfres_device_check(d, p)) return 0;
    fprintf(stderr, "mfres %s: error: %s\n", cmd, mfres_last_error());
    return 2;
}

int cli_model_flags_check(const char *cmd, const mfres_model_config *cfg) {
    /* The architecture alone: input shape, classes and batch are checked where they are known. */
    mfres_model_config c = *cfg;
    c.in_c = 3, c.in_h = c.in_w = 32, c.num_classes = 10, c.batch = 1;
    if (mfres_model_config_check(&c)) return cli_usage_error(cmd, "%s", mfres_last_error());
    return 0;
}

void cli_model_tag(const mfres_model_config *cfg, char *buf, size_t cap) {
    if (cfg->family == MFRES_FAMILY_RESNEXT)
        snprintf(buf, cap, "resnext%d-%dx%dd", cfg->depth, cfg->cardinality, cfg->group_width);
    else
        snprintf(buf, cap, "resnet%d", cfg->depth);
}

int cli_model_flag(const char *cmd, int argc, char **argv, int *i, mfres_model_config *cfg) {
    const char *v;
    int r;
    long x;
    if ((r = cli_flag(cmd, argc, argv, i, "--model", &v))) {
        if (r < 0) return 2;
        if (mfres_model_config_from_name(cfg, v)) return cli_usage_error(cmd, "%s", mfres_last_error());
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--depth", &v))) {
        if (r < 0 || cli_parse_long(cmd, "--depth", v, 8, 1202, &x)) return 2;
        cfg->depth = (int)x;
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--block", &v))) {
        if (r < 0) return 2;
        if (!strcmp(v, "postact")) cfg->block = MFRES_BLOCK_POSTACT;
        else if (!strcmp(v, "preact")) cfg->block = MFRES_BLOCK_PREACT;
        else if (!strcmp(v, "bottleneck")) cfg->block = MFRES_BLOCK_BOTTLENECK;
        else return cli_usage_error(cmd, "--block expects postact or preact (basic blocks) or bottleneck, got '%s'", v);
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--mode", &v))) {
        if (r < 0) return 2;
        if (!strcmp(v, "meanfield") || !strcmp(v, "mean-field")) cfg->mode = MFRES_MODE_MEANFIELD;
        else if (!strcmp(v, "vanilla")) cfg->mode = MFRES_MODE_VANILLA;
        else return cli_usage_error(cmd, "--mode expects meanfield or vanilla, got '%s'", v);
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--tau-init", &v))) {
        if (r < 0) return 2;
        if (!strcmp(v, "unit")) cfg->tau_init = MFRES_TAU_UNIT;
        else if (!strcmp(v, "grid")) cfg->tau_init = MFRES_TAU_GRID;
        else return cli_usage_error(cmd, "--tau-init expects unit or grid, got '%s'", v);
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--batch", &v))) {
        if (r < 0 || cli_parse_long(cmd, "--batch", v, 1, 65536, &x)) return 2;
        cfg->batch = (int)x;
        return 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--width", &v))) {
        if (r < 0 || cli_parse_long(cmd, "--width", v, 16, 1024, &x)) return 2;
        if (x % 16) return cli_usage_error(cmd, "--width must be a multiple of 16, got %ld", x);
        cfg->base_width = (int)x;
        return 1;
    }
    return 0;
}
