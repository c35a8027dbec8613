/* `mfres theory linear <experiment> [flags]`: deep linear ResNets (P3). Parses
 * flags into an mfres_lin_exp_cfg and runs one experiment from
 * src/theory/linear_experiments.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mfres/core.h"
#include "mfres/theory_linear.h"

static const char *CMD = "theory linear";

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: mfres theory linear <experiment> [flags]\n"
            "\n"
            "Deep linear ResNets f(x) = B (I+W_L)...(I+W_1) A x, W trained from zero by GD/SGD on\n"
            "½‖f(X) − Y‖² (Zou, Long, Gu 2020), measured against the global-convergence theorem.\n"
            "\n"
            "experiments (each prints a table and writes CSV, a .gp script and a PNG to --out):\n"
            "  run         one training run with every option below; excess loss vs the bound\n"
            "  transforms  (i)   log(L − L*) vs t, Gaussian A, B vs modified identity [I;0], [0,I]\n"
            "  depth       (ii)  L in --depths with η ∝ 1/L: the curves should coincide\n"
            "  rate        (iii) measured per-step contraction vs 1 − ηLσmin²(A)σmin²(B)σr²(X)/e\n"
            "  width       (iv)  smallest Gaussian width m reaching ε within T = steps·κ, vs κ\n"
            "  plain       (v)   ResNet (zero / Gaussian init) vs plain W_L...W_1 as L grows\n"
            "\n"
            "data (synthetic unless --x/--y):\n"
            "  --d N, --k N, --n N     input dim, output dim, samples (default 8, 4, 64; width: 4, 2, 32)\n"
            "  --rank R                rank of X (default min(d, n))\n"
            "  --kappa K               condition number of XXᵀ on its range, σ1²/σr² (default 4; width: 1)\n"
            "  --target-scale S        Θ* entries ~ N(0, S²/d) (default 1; rate 0.02; width 0.001)\n"
            "  --noise S               Y = Θ*X + S·N(0,1) (default 0.1; rate and width 0)\n"
            "  --x FILE, --y FILE      .npy or .csv, one sample per row: X is n×d, Y is n×k\n"
            "transforms:\n"
            "  --transform T           gaussian | identity | file (default identity; transforms, width: gaussian)\n"
            "  --width M               m (default d+k for identity, 4(d+k) for gaussian)\n"
            "  --a-scale S, --b-scale S  A_ij ~ N(0, S²/m), B_ij ~ N(0, S²/m) (default 1, 1)\n"
            "  --a FILE, --b FILE      A (m×d) and B (k×m) as .npy or .csv (implies --transform file)\n"
            "model and training:\n"
            "  --arch A                resnet | plain (run only; default resnet)\n"
            "  --init I                zero | gaussian (run only; default zero)\n"
            "  --init-std S            Gaussian init W_ij ~ N(0, S²/m) (default 1/√L ResNet, 1 plain)\n"
            "  --depth L               hidden layers (default 16; width experiment 2)\n"
            "  --depths L1,L2,..       depth sweep (depth: 4,16,64,256; plain: 1,2,4,8,16,32)\n"
            "  --opt O                 gd | sgd (default gd)\n"
            "  --batch B               SGD minibatch size (default n/8; implies --opt sgd)\n"
            "  --eta E                 fixed step size (default: from the bound)\n"
            "  --eta-c C               η = C / (L ‖A‖² ‖B‖² ‖X‖²) (default 0.5)\n"
            "  --steps T               GD/SGD steps (default 300; transforms 600; rate 400; plain 1000;\n"
            "                          width: T = steps·κ with steps 100)\n"
            "  --eps E                 target excess loss relative to the initial one (default 1e-8;\n"
            "                          width and plain 1e-6)\n"
            "  --kappas K1,K2,..       κ sweep (rate: 1,4,16; width: 1,4,16,64,256)\n"
            "  --max-width M           width search limit (default 128)\n"
            "  --theorem-C C           the condition's constant (not in our texts; default 1)\n"
            "output:\n"
            "  --seed S                RNG seed (default 1); same seed, same numbers\n"
            "  --out DIR               default runs/theory-linear/<experiment>\n"
            "  --quiet                 no progress lines on stderr\n");
}

static int parse_choice(const char *flag, const char *v, const char *const *names, int n, int *out) {
    for (int i = 0; i < n; i++)
        if (!strcmp(v, names[i])) {
            *out = i;
            return 0;
        }
    char valid[256] = "";
    for (int i = 0; i < n; i++) {
        strncat(valid, names[i], sizeof valid - strlen(valid) - 1);
        if (i + 1 < n) strncat(valid, ", ", sizeof valid - strlen(valid) - 1);
    }
    return cli_usage_error(CMD, "%s expects one of %s, got '%s'", flag, valid, v);
}

int cmd_theory_linear(int argc, char **argv) {
    static const char *const experiments[] = {"run", "transforms", "depth", "rate", "width", "plain"};
    enum { N_EXP = 6 };
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    int exp = -1;
    for (int i = 0; i < N_EXP; i++)
        if (!strcmp(argv[1], experiments[i])) exp = i;
    if (exp < 0)
        return cli_usage_error(CMD, "unknown experiment '%s' (valid: run, transforms, depth, rate, width, plain)",
                               argv[1]);

    /* The table (stdout) and progress lines (stderr) interleave in order. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    mfres_lin_exp_cfg cfg;
    mfres_lin_exp_defaults(&cfg, experiments[exp]);
    int transform_set = 0, opt_sgd = 0, batch_set = 0;
    long batch = 0;
    for (int i = 2; i < argc; i++) {
        const char *v = NULL;
        const char *a = argv[i];
        int r;
        long lv;
        double dv;
#define FLAG(name) ((r = cli_flag(CMD, argc, argv, &i, name, &v)) != 0)
#define CHECK(expr)              \
    do {                         \
        if (r < 0) return 2;     \
        if ((expr) != 0) return 2; \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--quiet")) {
            mfres_set_log_level(MFRES_LOG_QUIET);
        } else if (FLAG("--d")) {
            CHECK(cli_parse_long(CMD, "--d", v, 1, 4096, &lv));
            cfg.data.d = (int)lv;
        } else if (FLAG("--k")) {
            CHECK(cli_parse_long(CMD, "--k", v, 1, 4096, &lv));
            cfg.data.k = (int)lv;
        } else if (FLAG("--n")) {
            CHECK(cli_parse_long(CMD, "--n", v, 1, 1 << 22, &lv));
            cfg.data.n = (int)lv;
        } else if (FLAG("--rank")) {
            CHECK(cli_parse_long(CMD, "--rank", v, 1, 4096, &lv));
            cfg.data.rank = (int)lv;
        } else if (FLAG("--kappa")) {
            CHECK(cli_parse_double(CMD, "--kappa", v, 1, 1e20, &cfg.data.kappa));
        } else if (FLAG("--target-scale")) {
            CHECK(cli_parse_double(CMD, "--target-scale", v, 0, 1e6, &cfg.data.target_scale));
        } else if (FLAG("--noise")) {
            CHECK(cli_parse_double(CMD, "--noise", v, 0, 1e6, &cfg.data.noise));
        } else if (FLAG("--x")) {
            CHECK(0);
            cfg.x_path = v;
        } else if (FLAG("--y")) {
            CHECK(0);
            cfg.y_path = v;
        } else if (FLAG("--transform")) {
            CHECK(0);
            static const char *const names[] = {"gaussian", "identity", "file"};
            if (parse_choice("--transform", v, names, 3, &cfg.transform)) return 2;
            transform_set = 1;
        } else if (FLAG("--width")) {
            CHECK(cli_parse_long(CMD, "--width", v, 1, 1 << 16, &lv));
            cfg.width = (int)lv;
        } else if (FLAG("--a-scale")) {
            CHECK(cli_parse_double(CMD, "--a-scale", v, 1e-12, 1e12, &cfg.a_scale));
        } else if (FLAG("--b-scale")) {
            CHECK(cli_parse_double(CMD, "--b-scale", v, 1e-12, 1e12, &cfg.b_scale));
        } else if (FLAG("--a")) {
            CHECK(0);
            cfg.a_path = v;
        } else if (FLAG("--b")) {
            CHECK(0);
            cfg.b_path = v;
        } else if (FLAG("--arch")) {
            CHECK(0);
            static const char *const names[] = {"resnet", "plain"};
            if (parse_choice("--arch", v, names, 2, &cfg.arch)) return 2;
        } else if (FLAG("--init")) {
            CHECK(0);
            static const char *const names[] = {"zero", "gaussian"};
            if (parse_choice("--init", v, names, 2, &cfg.init)) return 2;
        } else if (FLAG("--init-std")) {
            CHECK(cli_parse_double(CMD, "--init-std", v, 0, 1e6, &cfg.init_std));
        } else if (FLAG("--depth")) {
            CHECK(cli_parse_long(CMD, "--depth", v, 1, 100000, &lv));
            cfg.depth = (int)lv;
        } else if (FLAG("--depths")) {
            CHECK(cli_parse_long_list(CMD, "--depths", v, cfg.depths, 16, &cfg.n_depths));
            for (int j = 0; j < cfg.n_depths; j++)
                if (cfg.depths[j] < 1) return cli_usage_error(CMD, "--depths entries must be ≥ 1, got '%s'", v);
            if (cfg.n_depths == 0) return cli_usage_error(CMD, "--depths needs at least one depth");
        } else if (FLAG("--kappas")) {
            CHECK(cli_parse_long_list(CMD, "--kappas", v, cfg.kappas, 16, &cfg.n_kappas));
            for (int j = 0; j < cfg.n_kappas; j++)
                if (cfg.kappas[j] < 1) return cli_usage_error(CMD, "--kappas entries must be ≥ 1, got '%s'", v);
            if (cfg.n_kappas == 0) return cli_usage_error(CMD, "--kappas needs at least one value");
        } else if (FLAG("--max-width")) {
            CHECK(cli_parse_long(CMD, "--max-width", v, 1, 1 << 16, &lv));
            cfg.max_width = (int)lv;
        } else if (FLAG("--opt")) {
            CHECK(0);
            static const char *const names[] = {"gd", "sgd"};
            if (parse_choice("--opt", v, names, 2, &opt_sgd)) return 2;
        } else if (FLAG("--batch")) {
            CHECK(cli_parse_long(CMD, "--batch", v, 1, 1 << 22, &batch));
            batch_set = 1;
        } else if (FLAG("--eta")) {
            CHECK(cli_parse_double(CMD, "--eta", v, 1e-300, 1e6, &dv));
            cfg.eta = dv;
        } else if (FLAG("--eta-c")) {
            CHECK(cli_parse_double(CMD, "--eta-c", v, 1e-12, 100, &cfg.eta_c));
        } else if (FLAG("--steps")) {
            CHECK(cli_parse_long(CMD, "--steps", v, 0, 100000000, &lv));
            cfg.steps = (int)lv;
        } else if (FLAG("--eps")) {
            CHECK(cli_parse_double(CMD, "--eps", v, 1e-300, 1, &cfg.eps));
        } else if (FLAG("--theorem-C")) {
            CHECK(cli_parse_double(CMD, "--theorem-C", v, 1e-12, 1e12, &cfg.theorem_C));
        } else if (FLAG("--seed")) {
            CHECK(cli_parse_long(CMD, "--seed", v, 0, 0x7fffffffffffffffL, &lv));
            cfg.seed = (uint64_t)lv;
        } else if (FLAG("--out")) {
            CHECK(0);
            cfg.out_dir = v;
        } else {
            if (r < 0) return 2;
            return cli_usage_error(CMD, "unknown flag '%s' for experiment '%s'", a, experiments[exp]);
        }
#undef FLAG
#undef CHECK
    }

    /* Cross-flag checks. */
    if (!cfg.x_path != !cfg.y_path) return cli_usage_error(CMD, "--x and --y go together (X is n×d, Y is n×k)");
    if (cfg.a_path || cfg.b_path) {
        if (!cfg.a_path || !cfg.b_path) return cli_usage_error(CMD, "--a and --b go together (A is m×d, B is k×m)");
        if (transform_set && cfg.transform != MFRES_LIN_FILE)
            return cli_usage_error(CMD, "--a/--b give the transforms from files; drop --transform or use --transform file");
        cfg.transform = MFRES_LIN_FILE;
    } else if (cfg.transform == MFRES_LIN_FILE) {
        return cli_usage_error(CMD, "--transform file needs --a FILE and --b FILE");
    }
    if (!cfg.x_path && cfg.data.rank > (cfg.data.d < cfg.data.n ? cfg.data.d : cfg.data.n))
        return cli_usage_error(CMD, "--rank %d exceeds min(--d, --n) = %d", cfg.data.rank,
                               cfg.data.d < cfg.data.n ? cfg.data.d : cfg.data.n);
    if (batch_set || opt_sgd) cfg.batch = batch_set ? (int)batch : (cfg.data.n / 8 > 0 ? cfg.data.n / 8 : 1);
    if (batch_set && !opt_sgd) opt_sgd = 1;
    if (!strcmp(experiments[exp], "width") && cfg.transform != MFRES_LIN_GAUSSIAN)
        return cli_usage_error(CMD, "the width experiment uses Gaussian transforms (--transform gaussian)");
    if (!strcmp(experiments[exp], "width") && (cfg.x_path || cfg.a_path))
        return cli_usage_error(CMD, "the width experiment sweeps κ of synthetic data with Gaussian A, B; drop --x/--y/--a/--b");
    if (!strcmp(experiments[exp], "transforms") && cfg.a_path)
        return cli_usage_error(CMD, "the transforms experiment compares Gaussian and identity transforms; drop --a/--b");
    if (cfg.width && cfg.transform == MFRES_LIN_IDENTITY && cfg.width < cfg.data.d + cfg.data.k &&
        strcmp(experiments[exp], "transforms") != 0)
        return cli_usage_error(CMD, "--width %d is below d + k = %d, the modified identity's minimum", cfg.width,
                               cfg.data.d + cfg.data.k);

    char out_default[256];
    if (!cfg.out_dir) {
        snprintf(out_default, sizeof out_default, "runs/theory-linear/%s", experiments[exp]);
        cfg.out_dir = out_default;
    }
    if (mfres_mkdir_p(cfg.out_dir)) return cli_runtime_error(CMD);

    int rc;
    switch (exp) {
    case 0: rc = mfres_lin_exp_run(&cfg); break;
    case 1: rc = mfres_lin_exp_transforms(&cfg); break;
    case 2: rc = mfres_lin_exp_depth(&cfg); break;
    case 3: rc = mfres_lin_exp_rate(&cfg); break;
    case 4: rc = mfres_lin_exp_width(&cfg); break;
    default: rc = mfres_lin_exp_plain(&cfg); break;
    }
    if (rc) return cli_runtime_error(CMD);
    mfres_log("results in %s", cfg.out_dir);
    return 0;
}
