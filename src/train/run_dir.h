/* The run directory's guards (src/train/run_dir.c): one process per directory
 * (a lock), no run overwritten or mixed with another, stale temporaries of a
 * killed run removed, and the settings that fix a run's result, so that a
 * resume can refuse to change them unless asked to. */
#ifndef MFRES_TRAIN_RUN_DIR_H
#define MFRES_TRAIN_RUN_DIR_H

#include "mfres/data.h"
#include "mfres/train.h"

typedef struct run_dir {
    int lock_fd; /* held (flock) while the run trains; -1 when not */
} run_dir;

/* Creates cfg->out_dir if missing and takes its lock (MFRES_EIO naming the
 * other process's pid when held). Then: a directory that already holds a run
 * is refused with MFRES_EINVAL unless cfg->resume (continue it) or
 * cfg->overwrite (its run files are removed first); --resume of a directory
 * without a run is refused too. Stale temporary files are removed. */
int run_dir_open(run_dir *rd, const mfres_train_config *cfg);
void run_dir_close(run_dir *rd);

/* A setting that fixes a run's result, by the name of its flag (without "--"). */
typedef struct run_setting {
    const char *key;
    char value[192];
} run_setting;
enum { RUN_MAX_SETTINGS = 32 };
/* Fills out[] with cfg's settings (threads as resolved, data as opened); returns the count. */
int run_settings(const mfres_train_config *cfg, const mfres_data *data, run_setting *out);
/* Checks that every key of the comma-separated `allow` list names a setting. */
int run_check_allow_list(const char *allow);
/* Whether `key` is in the comma-separated `allow` list. */
bool run_change_allowed(const char *allow, const char *key);

/* Writes DIR/config.json: the resolved configuration and "history", the
 * previous config.json's history plus `entry` (a JSON object, or NULL). */
int run_write_config(const mfres_train_config *cfg, const char *dir, const char *entry);

#endif
