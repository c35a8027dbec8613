/* Run-directory guards: lock, refusal to overwrite, stale temporaries, the
 * settings a resume must keep, and config.json with its history. */
#include "train/run_dir.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "mfres/core.h"

/* The files that make a directory a run (written by mfres_train). */
static const char *const run_files[] = {"state.safetensors", "model.safetensors", "metrics.jsonl", "config.json"};
enum { N_RUN_FILES = sizeof run_files / sizeof run_files[0] };
#define LOCK_NAME "train.lock"

static bool exists(const char *dir, const char *name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* "NAME.tmp.PID", as mfres_atomic_open names its temporaries. */
static bool is_temporary(const char *name) {
    const char *t = strstr(name, ".tmp.");
    if (!t || t == name) return false;
    const char *d = t + 5;
    if (!*d) return false;
    for (; *d; d++)
        if (!isdigit((unsigned char)*d)) return false;
    return true;
}

/* Under the lock no other mfres writes here, so any temporary is a killed run's. */
static int remove_stale_temporaries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return mfres_fail(MFRES_EIO, "cannot read directory %s: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = MFRES_OK;
    while ((e = readdir(d))) {
        if (!is_temporary(e->d_name)) continue;
        char path[4096 + 260];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0) {
            rc = mfres_fail(MFRES_EIO, "cannot remove the stale temporary file %s: %s", path, strerror(errno));
            break;
        }
        mfres_log("removed %s, a temporary file left by a run that was stopped while writing", path);
    }
    closedir(d);
    return rc;
}

static int take_lock(run_dir *rd, const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/" LOCK_NAME, dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return mfres_fail(MFRES_EIO, "cannot create the lock file %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int saved = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        long holder = atol(pid);
        if (holder <= 0 || kill((pid_t)holder, 0) != 0) pid[0] = '\0'; /* a stale pid names nobody */
        close(fd);
        if (saved == EWOULDBLOCK)
            return mfres_fail(MFRES_EIO,
                              "%s is in use: another mfres process%s%s is training into it (lock %s). HINT: wait for "
                              "it, or choose another --out",
                              dir, *pid ? " (pid " : "", *pid ? pid : "", path);
        return mfres_fail(MFRES_EIO, "cannot lock %s: %s", path, strerror(saved));
    }
    /* The pid is only for the message above; the lock is the flock, released by the kernel at exit. */
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        close(fd);
        return mfres_fail(MFRES_EIO, "cannot write the lock file %s: %s", path, strerror(errno));
    }
    rd->lock_fd = fd;
    return MFRES_OK;
}

int run_dir_open(run_dir *rd, const mfres_train_config *cfg) {
    const char *dir = cfg->out_dir;
    rd->lock_fd = -1;
    if (cfg->resume && cfg->overwrite)
        return mfres_fail(MFRES_EINVAL, "--resume and --overwrite contradict each other: choose one");
    if (cfg->resume && access(dir, F_OK) != 0)
        return mfres_fail(MFRES_EINVAL, "--resume: %s does not exist, so there is no run to continue", dir);
    int rc = mfres_mkdir_p(dir);
    if (!rc) rc = take_lock(rd, dir);
    if (!rc) rc = remove_stale_temporaries(dir);
    if (rc) {
        run_dir_close(rd);
        return rc;
    }
    const char *found = NULL;
    for (int i = 0; i < N_RUN_FILES && !found; i++)
        if (exists(dir, run_files[i])) found = run_files[i];
    if (cfg->resume && !exists(dir, "state.safetensors")) {
        rc = mfres_fail(MFRES_EINVAL,
                        "--resume: %s holds no training state (state.safetensors)%s, so there is nothing to continue. "
                        "HINT: a run stopped before its first epoch ended has nothing to resume; start it again "
                        "with --overwrite",
                        dir, found ? "" : " and no run at all");
    } else if (found && !cfg->resume && !cfg->overwrite) {
        rc = mfres_fail(MFRES_EINVAL,
                        "%s already holds a run (%s); refusing to overwrite it. HINT: --resume continues it, "
                        "--overwrite starts over (its run files are removed), or choose another --out",
                        dir, found);
    } else if (cfg->overwrite) {
        for (int i = 0; i < N_RUN_FILES && !rc; i++) {
            char path[4200];
            snprintf(path, sizeof path, "%s/%s", dir, run_files[i]);
            if (unlink(path) != 0 && errno != ENOENT)
                rc = mfres_fail(MFRES_EIO, "--overwrite: cannot remove %s: %s", path, strerror(errno));
        }
    }
    if (rc) run_dir_close(rd);
    return rc;
}

void run_dir_close(run_dir *rd) {
    if (rd->lock_fd >= 0) close(rd->lock_fd);
    rd->lock_fd = -1;
}

/* ---- settings ---- */

static void put(run_setting *out, int *n, const char *key, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void put(run_setting *out, int *n, const char *key, const char *fmt, ...) {
    va_list ap;
    out[*n].key = key;
    va_start(ap, fmt);
    vsnprintf(out[*n].value, sizeof out[*n].value, fmt, ap);
    va_end(ap);
    (*n)++;
}

/* Everything that changes the numbers a run produces. Doubles print with 17
 * digits, so equal text means equal value. */
int run_settings(const mfres_train_config *c, const mfres_data *data, run_setting *out) {
    int n = 0;
    const mfres_model_config *m = &c->model;
    put(out, &n, "data", "%s:%s", data->name, data->path);
    put(out, &n, "model", "resnet%d", m->depth);
    put(out, &n, "block", "%s", mfres_block_name(m->block));
    put(out, &n, "mode", "%s", mfres_mode_name(m->mode));
    put(out, &n, "tau-init", "%s", mfres_tau_init_name(m->tau_init));
    put(out, &n, "width", "%d", m->base_width);
    put(out, &n, "batch", "%d", m->batch);
    put(out, &n, "seed", "%llu", (unsigned long long)c->seed);
    put(out, &n, "lr", "%.17g", c->lr);
    put(out, &n, "momentum", "%.17g", c->momentum);
    put(out, &n, "wd", "%.17g", c->weight_decay);
    put(out, &n, "nesterov", "%s", c->nesterov ? "on" : "off");
    put(out, &n, "schedule", "%s", c->cosine ? "cosine" : "multistep");
    char ms[160] = "";
    for (int i = 0, at = 0; i < c->n_milestones && at < (int)sizeof ms; i++)
        at += snprintf(ms + at, sizeof ms - (size_t)at, "%s%ld", i ? "," : "", c->milestones[i]);
    put(out, &n, "milestones", "%s", ms);
    put(out, &n, "gamma", "%.17g", c->gamma);
    put(out, &n, "tau-lr-mult", "%.17g", c->tau_lr_mult);
    put(out, &n, "augment", "%s", c->augment ? "on" : "off");
    put(out, &n, "flip", "%s", c->flip ? "on" : "off");
    put(out, &n, "train-limit", "%d", c->train_limit);
    put(out, &n, "test-limit", "%d", c->test_limit);
    put(out, &n, "threads", "%d", c->threads);
    put(out, &n, "device", "%s", mfres_device_name(c->device));
    put(out, &n, "precision", "%s", mfres_precision_name(c->precision));
    return n;
}

static const char *const setting_keys =
    "data, model, block, mode, tau-init, width, batch, seed, lr, momentum, wd, nesterov, schedule, milestones, "
    "gamma, tau-lr-mult, augment, flip, train-limit, test-limit, threads, device, precision";

bool run_change_allowed(const char *allow, const char *key) {
    size_t len = strlen(key);
    for (const char *p = allow; p && *p;) {
        size_t n = strcspn(p, ",");
        if (n == len && !strncmp(p, key, len)) return true;
        p += n;
        if (*p == ',') p++;
    }
    return false;
}

int run_check_allow_list(const char *allow) {
    for (const char *p = allow; p && *p;) {
        size_t n = strcspn(p, ",");
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(n < sizeof key ? n : sizeof key - 1), p);
        char padded[80];
        snprintf(padded, sizeof padded, " %s,", key);
        char all[400];
        snprintf(all, sizeof all, " %s,", setting_keys);
        if (!n || !strstr(all, padded))
            return mfres_fail(MFRES_EINVAL, "--allow-change: '%s' is not a setting; the settings are: %s", key,
                              setting_keys);
        p += n;
        if (*p == ',') p++;
    }
    return MFRES_OK;
}

/* ---- config.json ---- */

/* The text inside "history": [ ... ] of DIR/config.json ("" if none). */
static char *read_history(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "r");
    char *line = NULL, *found = NULL;
    size_t cap = 0;
    while (fp && getline(&line, &cap, fp) > 0) {
        const char *key = "  \"history\": [";
        if (strncmp(line, key, strlen(key))) continue;
        char *start = line + strlen(key), *end = strrchr(start, ']');
        if (end) {
            *end = '\0';
            found = strdup(start);
        }
    }
    if (fp) fclose(fp);
    free(line);
    return found ? found : strdup("");
}

int run_write_config(const mfres_train_config *cfg, const char *dir, const char *entry) {
    char *history = read_history(dir), *json = NULL;
    size_t json_len = 0;
    FILE *mem = open_memstream(&json, &json_len);
    if (!history || !mem) {
        free(history);
        if (mem) fclose(mem);
        return mfres_fail(MFRES_ENOMEM, "out of memory writing %s/config.json", dir);
    }
    mfres_train_config_write_json(cfg, mem);
    fclose(mem);
    /* The object's closing "}\n" makes way for the history, kept on one line so the next run can find it. */
    while (json_len && (json[json_len - 1] == '\n' || json[json_len - 1] == '}')) json_len--;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (!rc) {
        fwrite(json, 1, json_len, af.fp);
        fprintf(af.fp, ",\n  \"history\": [%s%s%s]\n}\n", history, *history && entry ? ", " : "", entry ? entry : "");
        rc = mfres_atomic_commit(&af);
    }
    free(history);
    free(json);
    return rc;
}
