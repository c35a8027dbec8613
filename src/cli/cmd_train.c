/* mfres train: train a ResNet, vanilla or mean-field, and write a run directory. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/model_flags.h"
#include "mfres/core.h"
#include "mfres/dist.h"
#include "mfres/train.h"

static int parse_flags(const char *cmd, int argc, char **argv, mfres_train_config *cfg, bool *out_given);

static void print_help(void) {
    char recipes[2048] = "";
    FILE *mem = fmemopen(recipes, sizeof recipes - 1, "w");
    if (mem) {
        cli_recipes_help(mem);
        fclose(mem);
    }
    printf("usage: mfres train [flags]\n"
           "\n"
           "Trains a CIFAR-style ResNet and writes DIR/config.json, DIR/metrics.jsonl and\n"
           "DIR/model.safetensors. With no flags: ResNet-20, mean-field, Fashion-MNIST, 1 epoch,\n"
           "batch 64, cosine decay from lr 0.1. The batch defaults to 128 for CIFAR, 64 for MNIST.\n"
           "\n"
           "data:\n"
           "  --data NAME[:PATH]    fashion-mnist[:DIR] (default /usr/share/datasets/fashion-mnist),\n"
           "                        mnist:DIR, cifar10[:DIR], cifar100:DIR, cifar100-coarse:DIR [fashion-mnist]\n"
           "  --augment | --no-augment  pad-4 random crop (and flip, where on) [on for CIFAR, off for MNIST]\n"
           "  --flip | --no-flip    random horizontal flip [on for CIFAR, off for MNIST]\n"
           "  --train-limit K       train on the first K images only\n"
           "  --test-limit K        evaluate on the first K test images only\n"
           "model:\n%s"
           "optimisation:\n"
           "  --epochs N            [1]\n"
           "  --lr X                learning rate [0.1]\n"
           "  --momentum X          [0.9]\n"
           "  --wd X                weight decay (never on tau) [1e-4]\n"
           "  --nesterov            Nesterov momentum\n"
           "  --schedule cosine|multistep  per-step cosine decay to 0, or multi-step [cosine;\n"
           "                        multistep when --milestones is given]\n"
           "  --milestones A,B,...  multistep: epochs at which the rate is multiplied by gamma []\n"
           "  --gamma X             [0.1]\n"
           "  --tau-lr-mult X       tau's learning rate = lr * X [1]\n"
           "  --warmup-steps N      run the first N steps at --warmup-lr [0]\n"
           "  --warmup-lr X         [0.01]\n"
           "  --recipe NAME         the flags of a published recipe; flags after it override it:\n"
           "%s"
           "device (docs/GPU.md):\n%s"
           "run:\n"
           "  --seed N              [0]\n"
           "  --threads N           [all cores]\n"
           "  --out DIR             run directory [runs/<data>-resnet<depth>-<block>-<mode>-seed<N>];\n"
           "                        one that already holds a run is refused unless --resume or --overwrite\n"
           "  --resume              continue the run in --out from its last complete epoch (same flags;\n"
           "                        --epochs may be raised); the result is bit-identical to an unbroken run\n"
           "  --allow-change A,B    with --resume: let these settings differ from the run's (e.g. lr,threads);\n"
           "                        any other change is refused. config.json's history records each change\n"
           "  --overwrite           start over in an --out that holds a run (its run files are removed)\n"
           "  --progress bar|lines  [bar on a terminal, lines otherwise]\n"
           "  --quiet               only the final summary line\n"
           "data parallel (mpirun -np N mfres train ..., docs/DISTRIBUTED.md; --batch stays global):\n"
           "  --sync-bn             batch-norm statistics over all ranks' batch [per rank, as PyTorch's DDP]\n"
           "\n"
           "The paper's CIFAR-10 recipe: --recipe p1-cifar10 (--data cifar10 --epochs 160 --milestones 80,120\n"
           "--wd 1e-4 and the CIFAR defaults)\n",
           cli_model_flags_help, recipes, cli_device_flags_help);
}

int cli_train_parse(const char *cmd, int argc_in, char **argv_in, mfres_train_config *out_cfg, bool *out_given_p) {
    cli_args expanded;
    mfres_train_config_default(out_cfg);
    int rc = cli_recipe_expand(cmd, argc_in, argv_in, &expanded, out_cfg->recipe, sizeof out_cfg->recipe);
    if (rc) return rc;
    rc = parse_flags(cmd, expanded.argc, expanded.argv, out_cfg, out_given_p);
    cli_args_free(&expanded);
    return rc;
}

static int parse_flags(const char *cmd, int argc, char **argv, mfres_train_config *out_cfg, bool *out_given_p) {
    mfres_train_config cfg = *out_cfg;
    bool out_given = false, schedule_given = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        long x;
        double d;
        int r = cli_model_flag(cmd, argc, argv, &i, &cfg.model);
        if (r == 0) r = cli_device_flag(cmd, argc, argv, &i, &cfg.device, &cfg.precision);
        if (r == 2) return 2;
        if (r == 1) continue;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            print_help();
            return -1;
        }
        if ((r = cli_flag(cmd, argc, argv, &i, "--data", &v))) {
            if (r < 0) return 2;
            if (!cli_data_name_valid(v))
                return cli_usage_error(cmd, "--data expects NAME[:PATH] with NAME one of %s, got '%s'",
                                       CLI_DATA_NAMES, v);
            snprintf(cfg.data, sizeof cfg.data, "%s", v);
        } else if (!strcmp(argv[i], "--no-augment")) {
            cfg.augment = 0;
        } else if (!strcmp(argv[i], "--augment")) {
            cfg.augment = 1;
        } else if (!strcmp(argv[i], "--flip")) {
            cfg.flip = 1;
        } else if (!strcmp(argv[i], "--no-flip")) {
            cfg.flip = 0;
        } else if (!strcmp(argv[i], "--nesterov")) {
            cfg.nesterov = true;
        } else if (!strcmp(argv[i], "--resume")) {
            cfg.resume = true;
        } else if (!strcmp(argv[i], "--overwrite")) {
            cfg.overwrite = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--allow-change", &v))) {
            if (r < 0) return 2;
            snprintf(cfg.allow_change, sizeof cfg.allow_change, "%s", v);
        } else if (!strcmp(argv[i], "--quiet")) {
            cfg.quiet = true;
        } else if (!strcmp(argv[i], "--sync-bn")) {
            cfg.sync_bn = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--inject-drift-step", &v))) {
            /* Testing aid (not in --help): the last rank nudges one weight at this global step. */
            if (r < 0 || cli_parse_long(cmd, "--inject-drift-step", v, 1, 1L << 40, &x)) return 2;
            cfg.inject_drift_step = x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--train-limit", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--train-limit", v, 1, 1L << 30, &x)) return 2;
            cfg.train_limit = (int)x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--test-limit", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--test-limit", v, 1, 1L << 30, &x)) return 2;
            cfg.test_limit = (int)x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--epochs", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--epochs", v, 1, 100000, &x)) return 2;
            cfg.epochs = (int)x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--lr", &v))) {
            if (r < 0 || cli_parse_double(cmd, "--lr", v, 0, 100, &d)) return 2;
            cfg.lr = d;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--momentum", &v))) {
            if (r < 0 || cli_parse_double(cmd, "--momentum", v, 0, 0.999999, &d)) return 2;
            cfg.momentum = d;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--wd", &v)) ||
                   (r = cli_flag(cmd, argc, argv, &i, "--weight-decay", &v))) {
            if (r < 0 || cli_parse_double(cmd, "--wd", v, 0, 1, &d)) return 2;
            cfg.weight_decay = d;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--milestones", &v))) {
            if (r < 0 || cli_parse_long_list(cmd, "--milestones", v, cfg.milestones, MFRES_MAX_MILESTONES,
                                             &cfg.n_milestones))
                return 2;
            if (!schedule_given) cfg.cosine = false;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--schedule", &v))) {
            if (r < 0) return 2;
            if (!strcmp(v, "cosine")) cfg.cosine = true;
            else if (!strcmp(v, "multistep")) cfg.cosine = false;
            else return cli_usage_error(cmd, "--schedule expects cosine or multistep, got '%s'", v);
            schedule_given = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--gamma", &v))) {
            if (r < 0 || cli_parse_double(cmd, "--gamma", v, 0, 1, &d)) return 2;
            cfg.gamma = d;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--tau-lr-mult", &v))) {
            if (r < 0 || cli_parse_double(cmd, "--tau-lr-mult", v, 0, 1e6, &d)) return 2;
            cfg.tau_lr_mult = d;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--warmup-steps", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--warmup-steps", v, 0, 1L << 40, &x)) return 2;
            cfg.warmup_steps = x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--warmup-lr", &v))) {
            if (r < 0 || cli_parse_double(cmd, "--warmup-lr", v, 0, 100, &d)) return 2;
            cfg.warmup_lr = d;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--inject-nan-step", &v))) {
            /* Testing aid (not in --help): makes the loss NaN at this global step. */
            if (r < 0 || cli_parse_long(cmd, "--inject-nan-step", v, 1, 1L << 40, &x)) return 2;
            cfg.inject_nan_step = x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--seed", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--seed", v, 0, 0x7fffffffffffffffL, &x)) return 2;
            cfg.seed = (uint64_t)x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--threads", &v))) {
            if (r < 0 || cli_parse_long(cmd, "--threads", v, 1, 1024, &x)) return 2;
            cfg.threads = (int)x;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--out", &v))) {
            if (r < 0) return 2;
            snprintf(cfg.out_dir, sizeof cfg.out_dir, "%s", v);
            out_given = true;
        } else if ((r = cli_flag(cmd, argc, argv, &i, "--progress", &v))) {
            if (r < 0) return 2;
            if (!strcmp(v, "bar")) cfg.progress = 1;
            else if (!strcmp(v, "lines")) cfg.progress = 0;
            else return cli_usage_error(cmd, "--progress expects bar or lines, got '%s'", v);
        } else {
            return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        }
    }
    if (cli_model_flags_check(cmd, &cfg.model)) return 2;
    char tag[48];
    cli_model_tag(&cfg.model, tag, sizeof tag);
    if (!out_given) {
        int name_len = (int)strcspn(cfg.data, ":");
        snprintf(cfg.out_dir, sizeof cfg.out_dir, "runs/%.*s-%s-%s-%s-seed%llu", name_len, cfg.data, tag,
                 mfres_block_name(cfg.model.block), mfres_mode_name(cfg.model.mode), (unsigned long long)cfg.seed);
    }
    if (cfg.allow_change[0] && !cfg.resume) return cli_usage_error(cmd, "--allow-change only applies with --resume");
    *out_cfg = cfg;
    *out_given_p = out_given;
    return 0;
}

int cmd_train(int argc, char **argv) {
    const char *cmd = "train";
    mfres_train_config cfg;
    bool out_given;
    int prc = cli_train_parse(cmd, argc, argv, &cfg, &out_given);
    if (prc) return prc < 0 ? 0 : prc;
    /* Before any data is read: a GPU that is not there is a usage error (exit 2). */
    if (cli_device_check(cmd, cfg.device, cfg.precision)) return 2;
    char tag[48];
    cli_model_tag(&cfg.model, tag, sizeof tag);
    /* Under mpirun this process is one rank of a job (MPI_Init happens here). */
    mfres_dist dist;
    if (mfres_dist_init(&dist, &argc, &argv)) return cli_runtime_error(cmd);
    if (cfg.sync_bn && strcmp(dist.backend, "mpi")) {
        mfres_dist_finalize(&dist);
        return cli_usage_error(cmd, "--sync-bn sums batch-norm statistics over the ranks of an MPI job; %s",
                               mfres_dist_have_mpi() ? "run it under mpirun -np N"
                                                     : "this mfres was built without MPI (install libopenmpi-dev, "
                                                       "rebuild) and must run under mpirun -np N");
    }
    cfg.dist = &dist;
    mfres_train_result res;
    int rc = mfres_train(&cfg, &res);
    if (rc) {
        /* A refused configuration (a run in the way, a resume that would change it) is a usage error. */
        bool usage = rc == MFRES_EINVAL;
        if (dist.size > 1) {
            /* One rank's failure ends the job: the others may be waiting for it in a collective. */
            fprintf(stderr, "mfres %s: error on rank %d of %d: %s\n", cmd, dist.rank, dist.size, mfres_last_error());
            dist.abort(&dist, usage ? 2 : 1);
        }
        mfres_dist_finalize(&dist);
        if (usage) {
            fprintf(stderr, "mfres %s: error: %s\n", cmd, mfres_last_error());
            return 2;
        }
        return cli_runtime_error(cmd);
    }
    if (dist.rank == 0) {
        printf("%s %s %s: test_acc=%.4f test_loss=%.4f train_loss=%.4f epochs=%d time_s=%.1f images_per_s=%.1f ", tag,
               mfres_block_name(cfg.model.block), mfres_mode_name(cfg.model.mode), res.test_acc, res.test_loss,
               res.train_loss, res.epochs_done, res.total_seconds, res.images_per_s);
        if (dist.size > 1)
            printf("ranks=%d comm_share=%.3f model_hash=%016llx ", dist.size,
                   res.train_seconds > 0 ? res.comm_seconds / res.train_seconds : 0.0,
                   (unsigned long long)res.model_hash);
        printf("out=%s\n", cfg.out_dir);
    }
    mfres_dist_finalize(&dist);
    return 0;
}
