/* The mfres command line: one program, several subcommands. Each subcommand is
 * `int cmd_NAME(int argc, char **argv)` with argv[0] = the subcommand name, and
 * returns the process exit status: 0 success, 1 a runtime failure (the message
 * names the file or step), 2 a usage error (the message names the flag). */
#ifndef MFRES_CLI_H
#define MFRES_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mfres/train.h"

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_theory(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_store(int argc, char **argv);
/* `mfres theory linear ...` (deep linear ResNets, P3). */
int cmd_theory_linear(int argc, char **argv);
/* `mfres theory <experiment> ...` for the particle mean-field model (P1, P2). */
int cmd_theory_particle(int argc, char **argv);

/* Usage errors: print "mfres CMD: error: ..." to stderr and return 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Runtime failures: print "mfres CMD: error: <mfres_last_error()>" and return 1. */
int cli_runtime_error(const char *cmd);

/* Value parsers: on a bad value they print a usage error naming the flag and
 * the valid range, and return 2; on success they store the value and return 0. */
int cli_parse_long(const char *cmd, const char *flag, const char *value, long min, long max, long *out);
int cli_parse_double(const char *cmd, const char *flag, const char *value, double min, double max, double *out);
/* Comma-separated list of longs ("80,120"); at most max_n entries. */
int cli_parse_long_list(const char *cmd, const char *flag, const char *value, long *out, int max_n, int *n_out);

/* Flag matching for "--flag value" and "--flag=value" forms. If argv[*i] is
 * `flag`, sets *value to its argument (advancing *i when it is the next word)
 * and returns 1; returns 0 if argv[*i] is some other flag; returns -1 (after
 * printing a usage error) if the value is missing. */
int cli_flag(const char *cmd, int argc, char **argv, int *i, const char *flag, const char **value);

/* The data set names `--data NAME[:PATH]` accepts. */
#define CLI_DATA_NAMES "fashion-mnist, mnist, cifar10, cifar100, cifar100-coarse"
bool cli_data_name_valid(const char *spec);

/* An argument vector the CLI owns (every word malloc'd, NULL-terminated). */
typedef struct cli_args {
    int argc;
    char **argv;
} cli_args;
void cli_args_free(cli_args *a);

/* Recipes (src/cli/recipe.c). Replaces every `--recipe NAME` in argv by the
 * recipe's flags, in place, so later flags override it; the last recipe's name
 * goes to `recipe`. Returns 0, or 2 after a usage error naming an unknown recipe. */
int cli_recipe_expand(const char *cmd, int argc, char **argv, cli_args *out, char *recipe, size_t recipe_cap);
void cli_recipes_help(FILE *out);
const char *cli_recipe_names(void);

/* Parses `mfres train` flags (recipes included; argv[0] is the command name)
 * into cfg, starting from the defaults. Returns 0, 2 after a usage error, or
 * -1 after printing --help. *out_given says whether --out was among them. */
int cli_train_parse(const char *cmd, int argc, char **argv, mfres_train_config *cfg, bool *out_given);

/* True when stderr is a terminal (progress bars) */
bool cli_stderr_is_tty(void);

#endif
