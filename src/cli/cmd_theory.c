/* `mfres theory ...`: dispatch to the theory-lab experiments. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: mfres theory <experiment> [flags]\n"
            "\n"
            "particle mean-field ResNet (P1, P2; run 'mfres theory <experiment> --help'):\n"
            "  zero-loss          final training loss over a grid of depth L and width M\n"
            "  mean-field-limit   loss trajectories as L, M grow; distance to the largest run\n"
            "  adjoint            discrete backprop vs continuous adjoint vs finite differences\n"
            "  ensemble           deep network vs its first-order two-layer-ensemble expansion\n"
            "  sorted-tau         Algorithm 1 (trainable sorted tau) vs fixed uniform tau\n"
            "  birth-death        Wasserstein vs Wasserstein-Fisher-Rao (birth-death) particle flow (lab III)\n"
            "  expansion          deep network vs its ensemble expansion to second order (lab III)\n"
            "  particle-limit     the particle flow as N grows: distance to the largest N, fitted rate (lab III)\n"
            "  train              one training run; saves the particles (.npy) and continues from them (--load)\n"
            "deep linear ResNets (P3):\n"
            "  linear <experiment>  run 'mfres theory linear --help'\n");
}

int cmd_theory(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "linear")) return cmd_theory_linear(argc - 1, argv + 1);
    return cmd_theory_particle(argc - 1, argv + 1);
}
