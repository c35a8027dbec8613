/* mfres core: error reporting, logging, RNG, timing, aligned memory, atomic files.
 *
 * Errors travel as return codes. A failing function records a message with
 * mfres_fail() and returns its (negative) code; the caller either adds context
 * and passes the code up, or (in the CLI) prints mfres_last_error() and exits.
 * Nothing in the library calls exit(). */
#ifndef MFRES_CORE_H
#define MFRES_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum mfres_status {
    MFRES_OK = 0,
    MFRES_EIO = -1,      /* a file could not be opened, read or written */
    MFRES_EFORMAT = -2,  /* a file's contents are not what was expected */
    MFRES_EINVAL = -3,   /* a bad argument or configuration value */
    MFRES_ENOMEM = -4,   /* allocation failed */
    MFRES_ENUMERIC = -5, /* NaN or infinity where a finite number was needed */
    MFRES_EBACKEND = -6, /* oneDNN / BLAS / CUDA reported an error */
};

/* Records a printf-style message for the calling thread and returns code. */
int mfres_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends context ("while loading X: ") to the current message; returns code. */
int mfres_fail_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The calling thread's last recorded message ("" if none). */
const char *mfres_last_error(void);
void mfres_clear_error(void);

/* ---- logging ---- */
enum mfres_log_level { MFRES_LOG_QUIET = 0, MFRES_LOG_INFO = 1, MFRES_LOG_DEBUG = 2 };
void mfres_set_log_level(int level);
int mfres_log_level(void);
void mfres_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));       /* INFO, stderr */
void mfres_log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* DEBUG, stderr */

/* ---- RNG: xoshiro256**, seeded through splitmix64; one explicit state per user ---- */
typedef struct mfres_rng {
    uint64_t s[4];
} mfres_rng;
void mfres_rng_seed(mfres_rng *rng, uint64_t seed);
uint64_t mfres_rng_u64(mfres_rng *rng);
uint32_t mfres_rng_below(mfres_rng *rng, uint32_t n); /* uniform in [0, n) */
double mfres_rng_uniform(mfres_rng *rng);             /* uniform in [0, 1) */
double mfres_rng_normal(mfres_rng *rng);              /* standard normal */
void mfres_rng_shuffle_u32(mfres_rng *rng, uint32_t *a, size_t n);

/* ---- time ---- */
double mfres_now(void); /* monotonic seconds */

/* ---- memory ---- */
/* 64-byte aligned allocation, zero-filled; NULL (with a recorded error) on failure. */
void *mfres_alloc(size_t bytes, const char *what);
void mfres_free(void *p);

/* ---- files ---- */
/* Atomic write: the data goes to "path.tmp.<pid>", is flushed and fsynced, then
 * renamed over path, so a reader never sees a half-written file and a crash
 * leaves the previous file intact. */
typedef struct mfres_atomic_file {
    FILE *fp;
    char path[4096];
    char tmp_path[4096 + 32];
} mfres_atomic_file;
int mfres_atomic_open(mfres_atomic_file *af, const char *path);
int mfres_atomic_commit(mfres_atomic_file *af); /* closes, fsyncs, renames, fsyncs the directory */
void mfres_atomic_abort(mfres_atomic_file *af); /* closes and removes the temporary */
int mfres_write_file_atomic(const char *path, const void *data, size_t len);
/* Creates a directory and its parents if missing. */
int mfres_mkdir_p(const char *path);

#endif
