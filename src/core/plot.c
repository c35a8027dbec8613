/* Plots: results are written as CSV first; a gnuplot script beside the CSV
 * turns them into a PNG when gnuplot is installed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "mfres/core.h"
#include "mfres/io.h"

int mfres_gnuplot_run(const char *script_path) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        mfres_log("gnuplot not found: skipping the plot for %s (the CSV beside it has the data)", script_path);
        return MFRES_OK;
    }
    char cmd[4200];
    if (strchr(script_path, '\'')) return mfres_fail(MFRES_EINVAL, "plot script path contains a quote: %s", script_path);
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", script_path);
    int status = system(cmd);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return mfres_fail(MFRES_EIO, "gnuplot failed on %s (exit status %d)", script_path,
                          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return MFRES_OK;
}
