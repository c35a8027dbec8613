/* Shared argument parsing for the subcommands. */
#include "cli/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mfres/core.h"

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mfres %s: error: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run 'mfres %s --help' for the list of flags)\n", cmd);
    va_end(ap);
    return 2;
}

int cli_runtime_error(const char *cmd) {
    fprintf(stderr, "mfres %s: error: %s\n", cmd, mfres_last_error());
    return 1;
}

int cli_parse_long(const char *cmd, const char *flag, const char *value, long min, long max, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0' || v < min || v > max)
        return cli_usage_error(cmd, "%s expects an integer in [%ld, %ld], got '%s'", flag, min, max, value);
    *out = v;
    return 0;
}

int cli_parse_double(const char *cmd, const char *flag, const char *value, double min, double max, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || end == value || *end != '\0' || !isfinite(v) || v < min || v > max)
        return cli_usage_error(cmd, "%s expects a number in [%g, %g], got '%s'", flag, min, max, value);
    *out = v;
    return 0;
}

int cli_parse_long_list(const char *cmd, const char *flag, const char *value, long *out, int max_n, int *n_out) {
    int n = 0;
    const char *p = value;
    if (*p == '\0') {
        *n_out = 0;
        return 0;
    }
    while (*p) {
        char *end = NULL;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || (*end != ',' && *end != '\0') || v < 0)
            return cli_usage_error(cmd, "%s expects a comma-separated list of non-negative integers, got '%s'", flag,
                                   value);
        if (n == max_n) return cli_usage_error(cmd, "%s accepts at most %d values, got '%s'", flag, max_n, value);
        out[n++] = v;
        p = *end == ',' ? end + 1 : end;
    }
    *n_out = n;
    return 0;
}

int cli_flag(const char *cmd, int argc, char **argv, int *i, const char *flag, const char **value) {
    const char *arg = argv[*i];
    size_t len = strlen(flag);
    if (strncmp(arg, flag, len) != 0) return 0;
    if (arg[len] == '=') {
        *value = arg + len + 1;
        return 1;
    }
    if (arg[len] != '\0') return 0;
    if (*i + 1 >= argc) {
        cli_usage_error(cmd, "%s needs a value", flag);
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

bool cli_stderr_is_tty(void) { return isatty(STDERR_FILENO) != 0; }

bool cli_data_name_valid(const char *spec) {
    static const char *names[] = {"fashion-mnist", "mnist", "cifar10", "cifar100", "cifar100-coarse"};
    size_t len = strcspn(spec, ":");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i]) == len && !strncmp(names[i], spec, len)) return true;
    return false;
}
