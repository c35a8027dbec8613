/* mfres: mean-field deep residual networks. Subcommand dispatch. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: mfres <command> [flags]\n"
            "\n"
            "commands:\n"
            "  train     train a ResNet, vanilla or mean-field (Algorithm 1); default: ResNet-20,\n"
            "            mean-field, Fashion-MNIST, a short schedule\n"
            "  eval      evaluate a saved model (model.safetensors) on a data set\n"
            "  bench     training and inference images/s for a model and input shape\n"
            "  theory    numerical experiments on the papers' models (run 'mfres theory --help')\n"
            "  sweep     a restartable grid of runs (models x modes x seeds) under one root\n"
            "  store     rebuild ROOT/runs.sqlite, the SQLite index of the runs under ROOT\n"
            "  report    Table 1 from a sweep root: final-epoch test error beside P1's figures\n"
            "  plot      test error, tau and block order against epoch (gnuplot PNG)\n"
            "\n"
            "'mfres <command> --help' lists a command's flags.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) return cmd_train(1, (char *[]){"train", NULL});
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "theory")) return cmd_theory(argc - 1, argv + 1);
    if (!strcmp(cmd, "sweep")) return cmd_sweep(argc - 1, argv + 1);
    if (!strcmp(cmd, "store")) return cmd_store(argc - 1, argv + 1);
    if (!strcmp(cmd, "report")) return cmd_report(argc - 1, argv + 1);
    if (!strcmp(cmd, "plot")) return cmd_plot(argc - 1, argv + 1);
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        print_usage(stdout);
        return 0;
    }
    fprintf(stderr, "mfres: error: unknown command '%s' (valid: train, eval, bench, theory, sweep, store, report, plot)\n\n", cmd);
    print_usage(stderr);
    return 2;
}
