/* `mfres theory <experiment> [flags]`: theory lab I, the particle mean-field ResNet
 * (P1, P2, P2'). argv[0] is the experiment name. Results go to --out DIR
 * (default runs/theory/<experiment>): CSV, a gnuplot script and its PNG. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mfres/core.h"
#include "theory/experiments_particle.h"

static const char *const experiments[] = {"zero-loss", "mean-field-limit", "adjoint", "ensemble", "sorted-tau", "bench",
                                          "birth-death", "expansion", "particle-limit", "train"};
enum { NEXP = 10, EXP_BENCH = 5, EXP_BIRTH_DEATH = 6, EXP_EXPANSION = 7, EXP_PARTICLE_LIMIT = 8, EXP_TRAIN = 9 };

static const char *const exp_help[NEXP] = {
    "zero-loss (P2/P2', P1 Theorem 3): final training loss over a grid of depth L and width M after a fixed\n"
    "  training time, several seeds; prints the smallest (L, M) whose seeds all reach --target.\n"
    "  Defaults: --L 1,2,4,8,16,32 --M 1,4,16,64,256 --data random --time 200 --seeds 3 --target 1e-3 (~10 s).\n",
    "mean-field-limit (P2): loss trajectories over seeds as L and M grow; their spread, their distance to the\n"
    "  largest run (the last --L and --M), and a fitted dist ~ a/L + b/sqrt(L*M).\n"
    "  Defaults: --L 2,4,8,16,32,64 --M 4,16,64,256 --time 20 --seeds 4.\n",
    "adjoint (P1 section 3.1): backprop through the discrete scheme vs the continuous adjoint vs finite differences\n"
    "  as the sub-step count s grows (Euler order 1, RK4 order 4), against an RK4 adjoint with 512 sub-steps;\n"
    "  then Lemma 1: ||p(.,t)||_mu / E(rho) over t at checkpoints along training (RK4, 8 sub-steps).\n"
    "  Defaults: --L 4 --M 16 --time 50.\n",
    "ensemble (P1 section 2.2): the deep ResNet's output and gradient vs its first-order two-layer-ensemble\n"
    "  expansion X0 + sum_l h_l F_l(X0), relative difference vs L at init scales 0.25, 0.5, 1, 2.\n"
    "  Defaults: --L 1,2,4,8,16,32,64 --M 16 --seeds 3.\n",
    "sorted-tau (P1 Algorithm 1): trainable, sorted tau vs fixed uniform tau at equal budgets (same particles,\n"
    "  steps and lr); how often the block order changes.\n"
    "  Defaults: --L 16 --M 16 --time 50 --seeds 8 --tau-lr-mult 0.01 (tau clamped to [0, 1]).\n",
    "bench: training steps per second (full batch, Euler = the ResNet, backprop) at --L 16 --M 64 --d 16 --n 256;\n"
    "  prints steps_per_s=... (bench/theory_particle.sh compares it with PyTorch). Defaults: --steps 200.\n",
    "birth-death (P1 section 6.2; lab III): pure Wasserstein particle flow vs Wasserstein-Fisher-Rao (mass-weighted\n"
    "  particles whose masses grow or shrink at rate --rate times their first variation minus its block mean;\n"
    "  and the unbalanced variant without the mean) from the usual, a half-space and a narrow-cluster init.\n"
    "  Defaults: --L 8 --M 16 --data random --time 200 --seeds 4 --rate 0.1 (neuron units only).\n",
    "expansion (P1 section 2.2; lab III): the deep ResNet vs its expansion in the residual branches to order 1\n"
    "  (the two-layer ensemble) and 2 (+ pairwise block interactions), block scale eps = 0.125..2, and the\n"
    "  remainder's order in eps. Defaults: --L 1,2,4,8,16,32,64 --M 16 --seeds 3 (neuron units only).\n",
    "particle-limit (P1 section 3.3; lab III): the particle flow with N = L*M particles against the largest N:\n"
    "  distance of the loss curve and of test functionals of rho_t, and the fitted rate in N.\n"
    "  Defaults: --L 4 --N 16,32,...,16384 --time 20 --seeds 8.\n",
    "train: one training run (particle gradient descent on theta); writes train.csv and saves the particles\n"
    "  (theta, tau, embedding W2, read-out W1 as .npy, with particles.json) to --save DIR (default OUT/particles);\n"
    "  --load DIR continues from saved particles (their L, M, unit, act, d replace the flags).\n"
    "  Defaults: --L 8 --M 16 --time 50.\n",
};

static void usage(FILE *f, int which) {
    fprintf(f, "usage: mfres theory <experiment> [flags]\n\nexperiments:\n");
    for (int i = 0; i < NEXP; i++)
        if (which < 0 || which == i) fprintf(f, "  %s", exp_help[i]);
    fprintf(f,
            "\nflags (every experiment):\n"
            "  --out DIR          results directory (default runs/theory/<experiment>)\n"
            "  --seed N           base seed (default 1); same seed, same results\n"
            "  --seeds N          independent particle draws per configuration\n"
            "  --L LIST, --M LIST depth(s) and width(s); comma-separated where the experiment takes a grid\n"
            "  --unit U           neuron (u*act(w.z+b), P2) | neuron-nobias (u*act(w.z); with relu: 2-homogeneous) |\n"
            "                     matrix (act(Theta z), P1)      (default neuron)\n"
            "  --act A            relu | relu-reg | softplus | tanh | sigmoid (default tanh)\n"
            "  --eps E            relu-reg smoothing width (default 0.1)\n"
            "  --init-scale S     particle initialisation scale (default 1)\n"
            "  --d N, --d-in N    feature and input sizes (default 4, 4; W2 is the identity when equal)\n"
            "  --k N              outputs (fixed unit-norm read-out rows; default 1)\n"
            "  --data SRC         teacher (two-layer) | teacher-resnet | random | FILE.npy | FILE.csv\n"
            "                     (a file's last --k columns are the labels; default teacher; zero-loss and\n"
            "                     birth-death: random)\n"
            "  --n N              synthetic samples (default 32)\n"
            "  --lr X             training-time step on the mean-field time scale (default 0.5)\n"
            "  --time T           training time; steps = T / lr\n"
            "  --batch B          minibatch size (default 0 = full batch)\n"
            "  --method M         euler | rk4 (default euler: the ResNet)\n"
            "  --substeps S       integrator sub-steps per block (default 1)\n"
            "  --target EPS       zero-loss threshold (default 1e-3)\n"
            "  --tau-lr-mult X    sorted-tau: tau moves by lr * X * L * dE/dtau (default 0.01)\n"
            "  --steps N          bench: timed steps (default 200)\n"
            "  --rate A           birth-death: the birth-death rate (default 0.1)\n"
            "  --N LIST           particle-limit: total particle counts, increasing multiples of --L (default 2^4..2^14)\n"
            "  --save DIR, --load DIR  train: where to save the particles, and particles to start from\n");
}

static int set_list(const char *cmd, const char *flag, const char *v, long *out, int *n) {
    int rc = cli_parse_long_list(cmd, flag, v, out, MFRES_PEXP_MAX_LIST, n);
    if (rc) return rc;
    if (*n == 0) return cli_usage_error(cmd, "%s needs at least one value", flag);
    const long max = !strcmp(flag, "--N") ? 1L << 20 : 100000;
    for (int i = 0; i < *n; i++)
        if (out[i] < 1 || out[i] > max)
            return cli_usage_error(cmd, "%s values must be in [1, %ld], got '%s'", flag, max, v);
    return 0;
}

int cmd_theory_particle(int argc, char **argv) {
    if (argc < 1 || !argv[0] || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        usage(argc < 1 ? stderr : stdout, -1);
        return argc < 1 ? 2 : 0;
    }
    int which = -1;
    for (int i = 0; i < NEXP; i++)
        if (!strcmp(argv[0], experiments[i])) which = i;
    if (which < 0) {
        fprintf(stderr,
                "mfres theory: error: unknown experiment '%s' (valid: zero-loss, mean-field-limit, adjoint, ensemble, "
                "sorted-tau, bench, birth-death, expansion, particle-limit, linear)\n",
                argv[0]);
        return 2;
    }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "theory %s", experiments[which]);

    mfres_pexp_config c;
    mfres_pexp_config_default(&c);
    static const long zlL[] = {1, 2, 4, 8, 16, 32}, zlM[] = {1, 4, 16, 64, 256};
    static const long mfL[] = {2, 4, 8, 16, 32, 64}, mfM[] = {4, 16, 64, 256};
    static const long enL[] = {1, 2, 4, 8, 16, 32, 64};
    switch (which) {
    case 0:
        memcpy(c.Ls, zlL, sizeof zlL), c.nL = 6, memcpy(c.Ms, zlM, sizeof zlM), c.nM = 5;
        c.time = 200, c.data_kind = MFRES_PDATA_RANDOM;
        break;
    case 1:
        memcpy(c.Ls, mfL, sizeof mfL), c.nL = 6, memcpy(c.Ms, mfM, sizeof mfM), c.nM = 4;
        c.time = 20, c.seeds = 4;
        break;
    case 2: c.Ls[0] = 4, c.nL = 1, c.Ms[0] = 16, c.nM = 1, c.time = 50; break;
    case 3: memcpy(c.Ls, enL, sizeof enL), c.nL = 7, c.Ms[0] = 16, c.nM = 1; break;
    case 4: c.Ls[0] = 16, c.nL = 1, c.Ms[0] = 16, c.nM = 1, c.time = 50, c.seeds = 8, c.tau_lr_mult = 0.01; break;
    case 5:
        c.Ls[0] = 16, c.nL = 1, c.Ms[0] = 64, c.nM = 1;
        c.net.d = c.net.d_in = 16, c.n = 256, c.seeds = 1;
        break;
    case EXP_BIRTH_DEATH:
        c.Ls[0] = 8, c.nL = 1, c.Ms[0] = 16, c.nM = 1, c.time = 200, c.seeds = 4, c.rate = 0.1;
        c.data_kind = MFRES_PDATA_RANDOM;
        break;
    case EXP_EXPANSION: memcpy(c.Ls, enL, sizeof enL), c.nL = 7, c.Ms[0] = 16, c.nM = 1; break;
    case EXP_TRAIN: c.Ls[0] = 8, c.nL = 1, c.Ms[0] = 16, c.nM = 1; break;
    case EXP_PARTICLE_LIMIT:
        c.Ls[0] = 4, c.nL = 1, c.Ms[0] = 1, c.nM = 1, c.time = 20, c.seeds = 8;
        for (int i = 0; i < 11; i++) c.Ns[i] = 16L << i;
        c.nN = 11;
        break;
    }
    int d_set = 0, din_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        long lv;
        int r;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout, which);
            return 0;
        }
#define FLAG(name) ((r = cli_flag(cmd, argc, argv, &i, name, &v)) < 0 ? 2 : r)
        if ((r = cli_flag(cmd, argc, argv, &i, "--out", &v))) {
            if (r < 0) return 2;
            c.out_dir = v;
        } else if ((r = FLAG("--seed")) == 1) {
            if (cli_parse_long(cmd, "--seed", v, 0, 0x7fffffffffffffffL, &lv)) return 2;
            c.seed = (uint64_t)lv;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--seeds")) == 1) {
            if (cli_parse_long(cmd, "--seeds", v, 1, 64, &lv)) return 2;
            c.seeds = (int)lv;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--L")) == 1) {
            if (set_list(cmd, "--L", v, c.Ls, &c.nL)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--M")) == 1) {
            if (set_list(cmd, "--M", v, c.Ms, &c.nM)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--unit")) == 1) {
            c.net.unit = mfres_unit_by_name(v);
            if (c.net.unit < 0)
                return cli_usage_error(cmd, "--unit expects neuron, neuron-nobias or matrix, got '%s'", v);
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--act")) == 1) {
            c.net.act = mfres_act_by_name(v);
            if (c.net.act < 0)
                return cli_usage_error(cmd, "--act expects relu, relu-reg, softplus, tanh or sigmoid, got '%s'", v);
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--eps")) == 1) {
            if (cli_parse_double(cmd, "--eps", v, 1e-12, 100, &c.net.act_eps)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--init-scale")) == 1) {
            if (cli_parse_double(cmd, "--init-scale", v, 0, 100, &c.net.init_scale)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--d")) == 1) {
            if (cli_parse_long(cmd, "--d", v, 1, 4096, &lv)) return 2;
            c.net.d = (int)lv, d_set = 1;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--d-in")) == 1) {
            if (cli_parse_long(cmd, "--d-in", v, 1, 4096, &lv)) return 2;
            c.net.d_in = (int)lv, din_set = 1;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--k")) == 1) {
            if (cli_parse_long(cmd, "--k", v, 1, 16, &lv)) return 2;
            c.net.k = (int)lv;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--data")) == 1) {
            if (!strcmp(v, "teacher"))
                c.data_kind = MFRES_PDATA_TEACHER;
            else if (!strcmp(v, "teacher-resnet"))
                c.data_kind = MFRES_PDATA_TEACHER_RESNET;
            else if (!strcmp(v, "random"))
                c.data_kind = MFRES_PDATA_RANDOM;
            else {
                size_t n = strlen(v);
                if (n < 5 || (strcmp(v + n - 4, ".npy") && strcmp(v + n - 4, ".csv")))
                    return cli_usage_error(cmd, "--data expects teacher, teacher-resnet, random, FILE.npy or FILE.csv, got '%s'", v);
                c.data_path = v, c.data_kind = -1;
            }
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--n")) == 1) {
            if (cli_parse_long(cmd, "--n", v, 1, 10000000, &lv)) return 2;
            c.n = (int)lv;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--lr")) == 1) {
            if (cli_parse_double(cmd, "--lr", v, 1e-12, 1e6, &c.lr)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--time")) == 1) {
            if (cli_parse_double(cmd, "--time", v, 1e-12, 1e9, &c.time)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--batch")) == 1) {
            if (cli_parse_long(cmd, "--batch", v, 0, 10000000, &lv)) return 2;
            c.batch = (int)lv;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--method")) == 1) {
            c.method = mfres_ode_step_type_by_name(v);
            if (!c.method) return cli_usage_error(cmd, "--method expects euler or rk4, got '%s'", v);
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--substeps")) == 1) {
            if (cli_parse_long(cmd, "--substeps", v, 1, 100000, &lv)) return 2;
            c.substeps = (int)lv;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--target")) == 1) {
            if (cli_parse_double(cmd, "--target", v, 0, 1e9, &c.target)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--tau-lr-mult")) == 1) {
            if (cli_parse_double(cmd, "--tau-lr-mult", v, 0, 1e9, &c.tau_lr_mult)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--rate")) == 1) {
            if (cli_parse_double(cmd, "--rate", v, 0, 1e6, &c.rate)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--N")) == 1) {
            if (set_list(cmd, "--N", v, c.Ns, &c.nN)) return 2;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--save")) == 1) {
            c.save_dir = v;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--load")) == 1) {
            c.load_dir = v;
        } else if (r == 2) {
            return 2;
        } else if ((r = FLAG("--steps")) == 1) {
            if (cli_parse_long(cmd, "--steps", v, 1, 100000000, &lv)) return 2;
            c.steps = lv;
        } else if (r == 2) {
            return 2;
        } else {
            return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        }
#undef FLAG
    }
    /* one size where the experiment uses one */
    if (which >= 2) {
        if (which != 3 && which != EXP_EXPANSION && c.nL > 1)
            return cli_usage_error(cmd, "--L takes one value here, got %d", c.nL);
        if (c.nM > 1) return cli_usage_error(cmd, "--M takes one value here, got %d", c.nM);
        c.net.L = (int)c.Ls[0];
        c.net.M = (int)c.Ms[0];
    }
    if (d_set && !din_set && !c.data_path) c.net.d_in = c.net.d;
    if (c.batch > 0 && !c.data_path && c.batch > c.n)
        return cli_usage_error(cmd, "--batch %d is larger than --n %d", c.batch, c.n);
    char outbuf[4096];
    if (!c.out_dir) {
        snprintf(outbuf, sizeof outbuf, "runs/theory/%s", experiments[which]);
        c.out_dir = outbuf;
    }
    if (which == EXP_PARTICLE_LIMIT) {
        for (int i = 0; i < c.nN; i++)
            if (c.Ns[i] % c.net.L || (i && c.Ns[i] <= c.Ns[i - 1]))
                return cli_usage_error(cmd, "--N must be increasing multiples of --L %d, got %ld", c.net.L, c.Ns[i]);
        if (c.nN < 3) return cli_usage_error(cmd, "--N needs at least 3 sizes (the last is the reference), got %d", c.nN);
    }
    if ((which == EXP_BIRTH_DEATH || which == EXP_EXPANSION) && c.net.unit == MFRES_UNIT_MATRIX)
        return cli_usage_error(cmd, "%s needs --unit neuron or neuron-nobias", experiments[which]);
    if ((c.save_dir || c.load_dir) && which != EXP_TRAIN)
        return cli_usage_error(cmd, "--save and --load belong to 'mfres theory train'");
    if (which != 3 && which != EXP_EXPANSION && which != EXP_BENCH && (c.time / c.lr > MFRES_PEXP_MAX_STEPS))
        return cli_usage_error(cmd, "--time %g / --lr %g is %.3g training steps; at most %g (raise --lr or lower --time)",
                               c.time, c.lr, c.time / c.lr, (double)MFRES_PEXP_MAX_STEPS);
    if (which != EXP_BENCH && mfres_mkdir_p(c.out_dir)) return cli_runtime_error(cmd);
    int rc = 0;
    switch (which) {
    case 0: rc = mfres_pexp_zero_loss(&c); break;
    case 1: rc = mfres_pexp_mean_field_limit(&c); break;
    case 2: rc = mfres_pexp_adjoint(&c); break;
    case 3: rc = mfres_pexp_ensemble(&c); break;
    case 4: rc = mfres_pexp_sorted_tau(&c); break;
    case 5: rc = mfres_pexp_bench(&c); break;
    case EXP_BIRTH_DEATH: rc = mfres_pexp_birth_death(&c); break;
    case EXP_EXPANSION: rc = mfres_pexp_expansion(&c); break;
    case EXP_PARTICLE_LIMIT: rc = mfres_pexp_particle_limit(&c); break;
    case EXP_TRAIN: rc = mfres_pexp_train(&c); break;
    }
    fflush(stdout);
    return rc ? cli_runtime_error(cmd) : 0;
}
