/* Recipes: named presets that stand for the flags of a published training
 * recipe. `--recipe NAME` is replaced by those flags where it stands on the
 * command line, so any flag given after it overrides the preset and the
 * resolved configuration (config.json) shows every value and the recipe name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

typedef struct cli_recipe {
    const char *name;
    const char *source;
    const char *flags;
    /* Flags added only when the model is at least this deep (0: never). */
    int deep_from;
    const char *deep_flags;
} cli_recipe;

/* The CIFAR defaults (pad-4 crop + flip) are spelled out so that a recipe
 * means the same thing on any data set. */
static const cli_recipe recipes[] = {
    {"p1-cifar10",
     "P1, ResNets, CIFAR-10: lr 0.1, /10 at epochs 80, 120; 160 epochs; wd 1e-4",
     "--data cifar10 --batch 128 --lr 0.1 --momentum 0.9 --wd 1e-4 --schedule multistep --milestones 80,120 "
     "--gamma 0.1 --epochs 160 --augment --flip --warmup-steps 0",
     0, NULL},
    {"p1-cifar100",
     "P1, ResNets, CIFAR-100: lr 0.1, /10 at epochs 150, 225; 300 epochs; wd 1e-4",
     "--data cifar100 --batch 128 --lr 0.1 --momentum 0.9 --wd 1e-4 --schedule multistep --milestones 150,225 "
     "--gamma 0.1 --epochs 300 --augment --flip --warmup-steps 0",
     0, NULL},
    {"p1-resnext-cifar100",
     "P1, ResNeXt-29, CIFAR-100: lr 0.1, /10 at epochs 150, 225; 300 epochs; wd 5e-4",
     "--data cifar100 --batch 128 --lr 0.1 --momentum 0.9 --wd 5e-4 --schedule multistep --milestones 150,225 "
     "--gamma 0.1 --epochs 300 --augment --flip --warmup-steps 0",
     0, NULL},
    /* He et al. count steps: /10 at 32k and 48k, stop at 64k; at 390 steps an
     * epoch (50k images, batch 128, last partial batch dropped) that is epochs
     * 82, 123 and 164. ResNet-110 (and the 164 of He 2016b) start at 0.01 until
     * the training error is below 80 %, "about 400 iterations". */
    {"he-cifar10",
     "He et al. 2016, CIFAR-10: lr 0.1, /10 at 32k, 48k steps (epochs 82, 123); 164 epochs;\n"
     "                          wd 1e-4; ResNet-110 and deeper: the first 400 steps at lr 0.01",
     "--data cifar10 --batch 128 --lr 0.1 --momentum 0.9 --wd 1e-4 --schedule multistep --milestones 82,123 "
     "--gamma 0.1 --epochs 164 --augment --flip --warmup-steps 0",
     110, "--warmup-steps 400 --warmup-lr 0.01"},
};
enum { N_RECIPES = sizeof recipes / sizeof recipes[0] };

void cli_recipes_help(FILE *out) {
    for (int i = 0; i < N_RECIPES; i++) fprintf(out, "    %-20s  %s\n", recipes[i].name, recipes[i].source);
    fprintf(out, "                          (all: batch 128, momentum 0.9, pad-4 crop + flip; CIFAR-100\n"
                 "                          needs --data cifar100:DIR after the recipe)\n");
}

const char *cli_recipe_names(void) { return "p1-cifar10, p1-cifar100, p1-resnext-cifar100, he-cifar10"; }

/* The depth the command line asks for (the last --model/--depth), 0 if none:
 * the deep-model part of a recipe depends on it. */
static int requested_depth(int argc, char **argv) {
    int depth = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        if (!strcmp(argv[i], "--model") || !strcmp(argv[i], "--depth")) v = i + 1 < argc ? argv[i + 1] : NULL;
        else if (!strncmp(argv[i], "--model=", 8)) v = argv[i] + 8;
        else if (!strncmp(argv[i], "--depth=", 8)) v = argv[i] + 8;
        if (!v) continue;
        if (!strncmp(v, "resnet", 6)) v += 6;
        depth = atoi(v);
    }
    return depth;
}

static int push_word(const char *word, cli_args *a, int *cap) {
    if (a->argc + 1 >= *cap) {
        *cap *= 2;
        char **grown = realloc(a->argv, sizeof *a->argv * (size_t)*cap);
        if (!grown) return -1;
        a->argv = grown;
    }
    return (a->argv[a->argc++] = strdup(word)) ? 0 : -1;
}

static int push_words(const char *words, cli_args *a, int *cap) {
    char *copy = strdup(words);
    int rc = copy ? 0 : -1;
    for (char *save = NULL, *w = copy ? strtok_r(copy, " ", &save) : NULL; w && !rc; w = strtok_r(NULL, " ", &save))
        rc = push_word(w, a, cap);
    free(copy);
    return rc;
}

int cli_recipe_expand(const char *cmd, int argc, char **argv, cli_args *out, char *recipe, size_t recipe_cap) {
    int cap = argc + 64;
    out->argc = 0;
    out->argv = malloc(sizeof *out->argv * (size_t)cap);
    if (!out->argv) return cli_usage_error(cmd, "out of memory expanding the recipe");
    int depth = requested_depth(argc, argv);
    for (int i = 0; i < argc; i++) {
        const char *name = NULL;
        if (!strcmp(argv[i], "--recipe")) {
            if (i + 1 >= argc) return cli_args_free(out), cli_usage_error(cmd, "--recipe needs a value");
            name = argv[++i];
        } else if (!strncmp(argv[i], "--recipe=", 9)) {
            name = argv[i] + 9;
        }
        int rc;
        if (!name) {
            rc = push_word(argv[i], out, &cap);
        } else {
            const cli_recipe *r = NULL;
            for (int k = 0; k < N_RECIPES; k++)
                if (!strcmp(recipes[k].name, name)) r = &recipes[k];
            if (!r) {
                cli_args_free(out);
                return cli_usage_error(cmd, "--recipe: unknown recipe '%s' (valid: %s)", name, cli_recipe_names());
            }
            rc = push_words(r->flags, out, &cap);
            if (!rc && r->deep_from && depth >= r->deep_from) rc = push_words(r->deep_flags, out, &cap);
            snprintf(recipe, recipe_cap, "%s", r->name);
        }
        if (rc) return cli_args_free(out), cli_usage_error(cmd, "out of memory expanding the recipe");
    }
    out->argv[out->argc] = NULL;
    return 0;
}

void cli_args_free(cli_args *a) {
    for (int i = 0; i < a->argc; i++) free(a->argv[i]);
    free(a->argv);
    a->argv = NULL;
    a->argc = 0;
}
