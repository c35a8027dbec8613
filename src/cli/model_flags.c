/* Model-architecture flags shared by the subcommands. */
#include "cli/model_flags.h"

#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

const char cli_model_flags_help[] =
    "  --model resnetN       CIFAR ResNet of depth N = 6n+2 (20, 32, 44, 56, 110, ...)  [resnet20]\n"
    "  --block postact|preact  post-activation (He 2016a) or pre-activation (He 2016b) blocks [postact]\n"
    "  --mode meanfield|vanilla  mean-field training (Algorithm 1) or the plain ResNet [meanfield]\n"
    "  --tau-init unit|grid  unit: tau_i = i+1 (step 0 = vanilla); grid: tau_i = (i+1)/P [unit]\n"
    "  --batch N             images per step [128]\n"
    "  --width N             channels of stage 1 (stages 2, 3 double it) [16]\n";

static int depth_of(const char *cmd, const char *flag, const char *v, int *depth) {
    long d;
    const char *num = strncmp(v, "resnet", 6) == 0 ? v + 6 : v;
    if (cli_parse_long(cmd, flag, num, 8, 1202, &d)) return 2;
    if ((d - 2) % 6 != 0)
        return cli_usage_error(cmd, "%s: depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got %ld", flag, d);
    *depth = (int)d;
    return 0;
}

int cli_model_flag(const char *cmd, int argc, char **argv, int *i, mfres_model_config *cfg) {
    const char *v;
    int r;
    long x;
    if ((r = cli_flag(cmd, argc, argv, i, "--model", &v)) || (r = cli_flag(cmd, argc, argv, i, "--depth", &v))) {
        if (r < 0) return 2;
        if (strncmp(argv[*i - (argv[*i] == v ? 1 : 0)], "--model", 7) == 0 && strncmp(v, "resnet", 6) != 0)
            return cli_usage_error(cmd, "--model expects resnetN with N = 6n+2 (resnet20, resnet56, ...), got '%s'", v);
        return depth_of(cmd, "--model", v, &cfg->depth) ? 2 : 1;
    }
    if ((r = cli_flag(cmd, argc, argv, i, "--block", &v))) {
        if (r < 0) return 2;
        if (!strcmp(v, "postact")) cfg->block = MFRES_BLOCK_POSTACT;
        else if (!strcmp(v, "preact")) cfg->block = MFRES_BLOCK_PREACT;
        else return cli_usage_error(cmd, "--block expects postact or preact, got '%s'", v);
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
