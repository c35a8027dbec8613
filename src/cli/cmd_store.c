/* mfres store: rebuilds ROOT/runs.sqlite from the run directories under ROOT. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "mfres/core.h"
#include "mfres/store.h"

int cmd_store(int argc, char **argv) {
    const char *cmd = "store";
    const char *root = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: mfres store ROOT\n"
                   "\n"
                   "Rebuilds ROOT/runs.sqlite, the SQLite index of every run directory directly under ROOT\n"
                   "(tables runs, config, epochs, tau; the schema is in docs/RESULTS.md). The run\n"
                   "directories stay the source of truth: the store can be deleted and rebuilt at any time.\n"
                   "Query it with sqlite3, e.g.\n"
                   "  sqlite3 ROOT/runs.sqlite 'SELECT network, mode, avg(final_test_error) FROM runs\n"
                   "                            WHERE finished GROUP BY network, mode'\n");
            return 0;
        }
        if (argv[i][0] == '-') return cli_usage_error(cmd, "unknown flag '%s'", argv[i]);
        if (root) return cli_usage_error(cmd, "one ROOT expected, got '%s' and '%s'", root, argv[i]);
        root = argv[i];
    }
    if (!root) return cli_usage_error(cmd, "ROOT (a directory of run directories) is required");
    char db[4400];
    int n;
    if (mfres_store_rebuild(root, db, sizeof db, &n)) return cli_runtime_error(cmd);
    printf("%s: %d runs\n", db, n);
    return 0;
}
