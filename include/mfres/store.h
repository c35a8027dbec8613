/* Run directories as data: reading them back (config.json, metrics.jsonl,
 * state.safetensors), and the run store, an SQLite index of every run under a
 * root, rebuilt from the directories on demand (they stay the source of truth).
 * The store's schema is documented in docs/RESULTS.md and in store.c. */
#ifndef MFRES_STORE_H
#define MFRES_STORE_H

#include <stdbool.h>

enum { MFRES_STAGES = 3 };

/* One line of metrics.jsonl. */
typedef struct mfres_epoch_record {
    int epoch; /* 1-based */
    double lr, train_loss, train_acc, test_loss, test_acc, images_per_s, epoch_seconds;
    int reorders;   /* -1 when absent (vanilla) */
    int particles;  /* per stage; 0 in vanilla mode */
    double *tau;    /* [stage][particle]: particle i's tau (particle i = block i+1 of the stage, as the model
                     * file numbers them: layer<s>.<i+1>), NULL in vanilla mode */
    int *order;     /* [stage][position]: the block (1..P, as above) at each position */
} mfres_epoch_record;

typedef struct mfres_run_record {
    char dir[4096];       /* the run directory as given */
    char name[256];       /* its last path component */
    char model[64], block[32], mode[32], data[64], tau_init[16], recipe[32];
    char data_spec[4200]; /* "NAME[:PATH]" as configured */
    long seed;
    double tau_lr_mult;
    int epochs;           /* configured */
    int epochs_done;      /* complete epochs: the lines of metrics.jsonl (no more than the state holds) */
    int state_epochs;     /* epochs_done in state.safetensors; -1 when there is none */
    bool finished;        /* epochs_done >= epochs */
    char *config_text;    /* config.json verbatim */
    char *config_key;     /* the configuration without mode, seed, tau and threads: runs that may be compared */
    mfres_epoch_record *ep;
} mfres_run_record;

/* Reads one run directory. Errors name the file (and line) that is missing or
 * corrupt: config.json must parse and name model, mode, seed and epochs;
 * metrics.jsonl (may be absent) must hold one object per epoch, numbered
 * 1, 2, ...; state.safetensors (may be absent) must load. */
int mfres_run_read(const char *dir, mfres_run_record *run);
void mfres_run_free(mfres_run_record *run);

/* True if dir holds a run (a config.json). */
bool mfres_run_dir_is_run(const char *dir);

/* Every run directory directly under root (sorted by name), read. A
 * sub-directory with run files (metrics.jsonl, state.safetensors, model
 * file) but no config.json is an error, as is any corrupt run. */
int mfres_runs_scan(const char *root, mfres_run_record **runs, int *n_runs);
void mfres_runs_free(mfres_run_record *runs, int n_runs);

/* Writes the SQLite store of these runs to db_path (through a temporary file
 * and a rename: a reader never sees half a store). */
int mfres_store_write(const char *db_path, const mfres_run_record *runs, int n_runs);
/* Scans root and writes root/runs.sqlite. */
int mfres_store_rebuild(const char *root, char *db_path, size_t db_path_cap, int *n_runs);

#endif
