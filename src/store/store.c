/* The run store: an SQLite index of the run directories under a root.
 *
 * The directories are the source of truth; the store is rebuilt from them on
 * demand (`mfres store ROOT`, and by `mfres sweep` and `mfres report`), into a
 * temporary file renamed over ROOT/runs.sqlite. Schema (also in docs/RESULTS.md):
 *
 *   runs(run_id, dir, name, network, block, mode, seed, data, tau_init,
 *        tau_lr_mult, recipe, epochs, epochs_done, finished,
 *        final_test_error, config_json, config_key)
 *   config(run_id, key, value)            one row per key of config.json
 *   epochs(run_id, epoch, lr, train_loss, train_acc, test_loss, test_acc,
 *          test_error, images_per_s, epoch_seconds, reorders)
 *   tau(run_id, epoch, stage, block, tau, position)
 *                                          mean-field runs: every particle's tau
 *                                          after each epoch, and its place in
 *                                          the sorted order (1 = nearest the input)
 * A particle's `block` is its block's number in the model file (tensors
 * layer<stage>.<block>.*): 1..P, as metrics.jsonl's "order" counts them; block 0
 * of each stage (the stage head, which may downsample) is not a particle.
 */
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mfres/core.h"
#include "mfres/store.h"
#include "store/json.h"

static const char schema[] =
    "CREATE TABLE runs (\n"
    "  run_id INTEGER PRIMARY KEY,\n"
    "  dir TEXT NOT NULL,              -- the run directory\n"
    "  name TEXT NOT NULL,             -- its last path component\n"
    "  network TEXT NOT NULL,          -- config.json's model, e.g. resnet20\n"
    "  block TEXT NOT NULL,            -- postact, preact, ...\n"
    "  mode TEXT NOT NULL,             -- vanilla or meanfield\n"
    "  seed INTEGER NOT NULL,\n"
    "  data TEXT NOT NULL,             -- the data set's name (cifar10, ...)\n"
    "  tau_init TEXT NOT NULL,\n"
    "  tau_lr_mult REAL NOT NULL,\n"
    "  recipe TEXT NOT NULL,           -- the --recipe the flags started from ('' none)\n"
    "  epochs INTEGER NOT NULL,        -- configured\n"
    "  epochs_done INTEGER NOT NULL,   -- complete epochs\n"
    "  finished INTEGER NOT NULL,      -- 1 when epochs_done >= epochs\n"
    "  final_test_error REAL,          -- 1 - test_acc after the last configured epoch; NULL until finished\n"
    "  config_json TEXT NOT NULL,      -- config.json verbatim (json_extract works on it)\n"
    "  config_key TEXT NOT NULL        -- config.json without model, block, mode, seed, tau and threads:\n"
    "                                  -- equal for runs trained under the same recipe\n"
    ");\n"
    "CREATE TABLE config (run_id INTEGER NOT NULL REFERENCES runs, key TEXT NOT NULL, value,\n"
    "  PRIMARY KEY (run_id, key));\n"
    "CREATE TABLE epochs (\n"
    "  run_id INTEGER NOT NULL REFERENCES runs, epoch INTEGER NOT NULL, lr REAL, train_loss REAL, train_acc REAL,\n"
    "  test_loss REAL, test_acc REAL, test_error REAL, images_per_s REAL, epoch_seconds REAL, reorders INTEGER,\n"
    "  PRIMARY KEY (run_id, epoch));\n"
    "CREATE TABLE tau (\n"
    "  run_id INTEGER NOT NULL REFERENCES runs, epoch INTEGER NOT NULL, stage INTEGER NOT NULL,\n"
    "  block INTEGER NOT NULL,          -- the particle's block: tensors layer<stage>.<block>.* (1..P)\n"
    "  tau REAL NOT NULL,\n"
    "  position INTEGER NOT NULL,       -- its place in the sorted order, 1 = right after the stage head\n"
    "  PRIMARY KEY (run_id, epoch, stage, block));\n";

static int db_fail(sqlite3 *db, const char *path, const char *doing) {
    return mfres_fail(MFRES_EIO, "%s: SQLite error while %s: %s", path, doing, db ? sqlite3_errmsg(db) : "cannot open");
}

static int insert_config(sqlite3 *db, sqlite3_stmt *st, long run_id, const mfres_run_record *r) {
    json_value cfg;
    int rc = json_parse(r->config_text, strlen(r->config_text), r->dir, &cfg);
    if (rc) return rc;
    for (int i = 0; i < cfg.n && !rc; i++) {
        const json_value *v = &cfg.items[i];
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, run_id);
        sqlite3_bind_text(st, 2, cfg.keys[i], -1, SQLITE_TRANSIENT);
        char *text = NULL;
        size_t len;
        switch (v->type) {
        case JSON_NUMBER:
            /* Integers stay integers (train_limit = 512, not 512.0). */
            if (v->number == (double)(int64_t)v->number && v->number > -9e15 && v->number < 9e15)
                sqlite3_bind_int64(st, 3, (sqlite3_int64)v->number);
            else sqlite3_bind_double(st, 3, v->number);
            break;
        case JSON_STRING: sqlite3_bind_text(st, 3, v->string, -1, SQLITE_TRANSIENT); break;
        case JSON_BOOL: sqlite3_bind_int(st, 3, v->boolean); break;
        case JSON_NULL: sqlite3_bind_null(st, 3); break;
        default: {
            FILE *mem = open_memstream(&text, &len);
            if (mem) {
                json_write(v, mem);
                fclose(mem);
            }
            sqlite3_bind_text(st, 3, text ? text : "", -1, SQLITE_TRANSIENT);
        }
        }
        if (sqlite3_step(st) != SQLITE_DONE) rc = MFRES_EIO;
        free(text);
    }
    json_free(&cfg);
    (void)db;
    return rc;
}

int mfres_store_write(const char *db_path, const mfres_run_record *runs, int n_runs) {
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", db_path, (long)getpid());
    unlink(tmp);
    sqlite3 *db = NULL;
    if (sqlite3_open(tmp, &db) != SQLITE_OK) {
        int rc = db_fail(db, tmp, "creating the store");
        sqlite3_close(db);
        return rc;
    }
    int rc = 0;
    const char *doing = "creating the tables";
    sqlite3_stmt *ins_run = NULL, *ins_cfg = NULL, *ins_ep = NULL, *ins_tau = NULL;
    if (sqlite3_exec(db, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN;", NULL, NULL, NULL) ||
        sqlite3_exec(db, schema, NULL, NULL, NULL))
        goto fail;
    doing = "preparing the inserts";
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
                           "?15, ?16, ?17)",
                           -1, &ins_run, NULL) ||
        sqlite3_prepare_v2(db, "INSERT INTO config VALUES (?1, ?2, ?3)", -1, &ins_cfg, NULL) ||
        sqlite3_prepare_v2(db, "INSERT INTO epochs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)", -1, &ins_ep,
                           NULL) ||
        sqlite3_prepare_v2(db, "INSERT INTO tau VALUES (?1, ?2, ?3, ?4, ?5, ?6)", -1, &ins_tau, NULL))
        goto fail;
    doing = "inserting the runs";
    for (int i = 0; i < n_runs; i++) {
        const mfres_run_record *r = &runs[i];
        long id = i + 1;
        sqlite3_reset(ins_run);
        sqlite3_bind_int64(ins_run, 1, id);
        sqlite3_bind_text(ins_run, 2, r->dir, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_run, 3, r->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_run, 4, r->model, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_run, 5, r->block, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_run, 6, r->mode, -1, SQLITE_STATIC);
        sqlite3_bind_int64(ins_run, 7, r->seed);
        sqlite3_bind_text(ins_run, 8, r->data, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_run, 9, r->tau_init, -1, SQLITE_STATIC);
        sqlite3_bind_double(ins_run, 10, r->tau_lr_mult);
        sqlite3_bind_text(ins_run, 11, r->recipe, -1, SQLITE_STATIC);
        sqlite3_bind_int(ins_run, 12, r->epochs);
        sqlite3_bind_int(ins_run, 13, r->epochs_done);
        sqlite3_bind_int(ins_run, 14, r->finished);
        if (r->finished) sqlite3_bind_double(ins_run, 15, 1.0 - r->ep[r->epochs - 1].test_acc);
        else sqlite3_bind_null(ins_run, 15);
        sqlite3_bind_text(ins_run, 16, r->config_text, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_run, 17, r->config_key, -1, SQLITE_STATIC);
        if (sqlite3_step(ins_run) != SQLITE_DONE || insert_config(db, ins_cfg, id, r)) goto fail;
        for (int e = 0; e < r->epochs_done; e++) {
            const mfres_epoch_record *ep = &r->ep[e];
            sqlite3_reset(ins_ep);
            sqlite3_bind_int64(ins_ep, 1, id);
            sqlite3_bind_int(ins_ep, 2, ep->epoch);
            const double v[] = {ep->lr, ep->train_loss, ep->train_acc, ep->test_loss, ep->test_acc, 1 - ep->test_acc,
                                ep->images_per_s, ep->epoch_seconds};
            for (int k = 0; k < 8; k++) sqlite3_bind_double(ins_ep, 3 + k, v[k]);
            if (ep->reorders >= 0) sqlite3_bind_int(ins_ep, 11, ep->reorders);
            else sqlite3_bind_null(ins_ep, 11);
            if (sqlite3_step(ins_ep) != SQLITE_DONE) goto fail;
            int P = ep->particles;
            for (int s = 0; s < MFRES_STAGES && ep->tau; s++)
                for (int pos = 0; pos < P; pos++) {
                    int block = ep->order[s * P + pos];
                    sqlite3_reset(ins_tau);
                    sqlite3_bind_int64(ins_tau, 1, id);
                    sqlite3_bind_int(ins_tau, 2, ep->epoch);
                    sqlite3_bind_int(ins_tau, 3, s + 1);
                    sqlite3_bind_int(ins_tau, 4, block);
                    sqlite3_bind_double(ins_tau, 5, ep->tau[s * P + block - 1]);
                    sqlite3_bind_int(ins_tau, 6, pos + 1);
                    if (sqlite3_step(ins_tau) != SQLITE_DONE) goto fail;
                }
        }
    }
    doing = "committing";
    if (sqlite3_exec(db, "COMMIT;", NULL, NULL, NULL)) goto fail;
    goto close;
fail:
    rc = db_fail(db, tmp, doing);
close:
    sqlite3_finalize(ins_run);
    sqlite3_finalize(ins_cfg);
    sqlite3_finalize(ins_ep);
    sqlite3_finalize(ins_tau);
    if (sqlite3_close(db) != SQLITE_OK && !rc) rc = mfres_fail(MFRES_EIO, "%s: cannot close the store", tmp);
    if (!rc && rename(tmp, db_path)) rc = mfres_fail(MFRES_EIO, "cannot rename %s to %s", tmp, db_path);
    if (rc) unlink(tmp);
    return rc;
}

int mfres_store_rebuild(const char *root, char *db_path, size_t cap, int *n_runs) {
    mfres_run_record *runs;
    int n, rc = mfres_runs_scan(root, &runs, &n);
    if (rc) return rc;
    snprintf(db_path, cap, "%s/runs.sqlite", root);
    rc = mfres_store_write(db_path, runs, n);
    mfres_runs_free(runs, n);
    if (n_runs) *n_runs = n;
    return rc;
}
