/* mfres eval: evaluate a saved model on a data set's test split. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/model_flags.h"
#include "mfres/core.h"
#include "mfres/data.h"
#include "mfres/model.h"
#include "mfres/train.h"

static void print_help(void) {
    printf("usage: mfres eval --model-file FILE [--data NAME[:PATH]] [--batch N] [--threads N] [--split test|train]\n"
           "                  [--limit K] [--device cpu|cuda] [--precision fp32|tf32|bf16]\n"
           "\n"
           "Rebuilds the network described in FILE (a model.safetensors written by mfres train),\n"
           "evaluates it with its running batch-norm statistics and prints loss and accuracy.\n"
           "--data defaults to the data set the model was trained on. --limit K evaluates\n"
           "the first K images only (as mfres train --test-limit does). A model trained on\n"
           "either device evaluates on either.\n"
           "\n%s",
           cli_device_flags_help);
}

int cmd_eval(int argc, char **argv) {
    const char *cmd = "eval", *model_file = NULL, *data_spec = NULL, *split = "test";
    long batch = 256, threads = 0, limit = 0;
    mfres_device device = MFRES_DEVICE_CPU;
    mfres_precision precision = MFRES_PRECISION_FP32;
    for (int i = 1; i < argc; i++) {
        const char *v;
        int r;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            print_help();
            return 0;
        }
        if ((r = cli_device_flag(cmd, argc, argv, &i, &device, &precision))) {
            if (r == 2) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--model-file", &v))) {
            if (r < 0) return 2;
            model_file = v;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--data", &v))) {
            if (r < 0) return 2;
            if (!cli_data_name_valid(v))
                return cli_usage_error(cmd, "--data expects NAME[:PATH] with NAME one of %s, got '%s'", CLI_DATA_NAMES,
                                       v);
            data_spec = v;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--batch", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--batch", v, 1, 65536, &batch)) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--threads", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--threads", v, 1, 1024, &threads)) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--limit", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--limit", v, 1, 1L << 30, &limit)) return 2;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--split", &v))) {
            if (r < 0) return 2;
            if (strcmp(v, "test") && strcmp(v, "train"))
                return cli_usage_error(cmd, "--split expects test or train, got '%s'", v);
            split = v;
        } else {
            return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        }
    }
    if (!model_file) return cli_usage_error(cmd, "--model-file FILE is required");
    if (cli_device_check(cmd, device, precision)) return 2;
    mfres_set_threads((int)threads);
    mfres_model m;
    char trained_on[64];
    float mean[3], std[3];
    if (mfres_model_load_on(&m, model_file, (int)batch, device, precision, trained_on, sizeof trained_on, mean, std))
        return cli_runtime_error(cmd);
    if (!data_spec) data_spec = trained_on[0] ? trained_on : "fashion-mnist";
    mfres_data data;
    if (mfres_data_open(&data, data_spec)) {
        mfres_model_free(&m);
        return cli_runtime_error(cmd);
    }
    mfres_dataset view = !strcmp(split, "train") ? data.train : data.test; /* shallow: shares the pixels */
    if (limit > 0 && limit < view.n) view.n = (int)limit;
    const mfres_dataset *ds = &view;
    int rc = MFRES_OK;
    if (ds->c != m.cfg.in_c || ds->h != m.cfg.in_h || ds->w != m.cfg.in_w || ds->num_classes != m.cfg.num_classes)
        rc = mfres_fail(MFRES_EINVAL, "%s expects %dx%dx%d images and %d classes; %s has %dx%dx%d and %d", model_file,
                        m.cfg.in_c, m.cfg.in_h, m.cfg.in_w, m.cfg.num_classes, data.name, ds->c, ds->h, ds->w,
                        ds->num_classes);
    double loss = 0, acc = 0, t0 = mfres_now();
    if (!rc) rc = mfres_evaluate(&m, ds, mean, std, &loss, &acc);
    double seconds = mfres_now() - t0;
    char tag[48];
    cli_model_tag(&m.cfg, tag, sizeof tag);
    if (!rc)
        printf("%s %s %s on %s %s (%d images): test_acc=%.4f test_loss=%.4f time_s=%.1f images_per_s=%.1f\n",
               tag, mfres_block_name(m.cfg.block), mfres_mode_name(m.cfg.mode), data.name, split, ds->n, acc,
               loss, seconds, ds->n / seconds);
    mfres_data_free(&data);
    mfres_model_free(&m);
    return rc ? cli_runtime_error(cmd) : 0;
}
