/* Time, aligned memory and atomic file writes. */
#include "mfres/core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double mfres_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *mfres_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    if (posix_memalign(&p, 64, rounded) != 0) {
        mfres_fail(MFRES_ENOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
        return NULL;
    }
    memset(p, 0, rounded);
    return p;
}

void mfres_free(void *p) { free(p); }

int mfres_atomic_open(mfres_atomic_file *af, const char *path) {
    memset(af, 0, sizeof *af);
    if (strlen(path) >= sizeof af->path) return mfres_fail(MFRES_EINVAL, "path too long: %s", path);
    strcpy(af->path, path);
    snprintf(af->tmp_path, sizeof af->tmp_path, "%s.tmp.%ld", path, (long)getpid());
    af->fp = fopen(af->tmp_path, "wb");
    if (!af->fp) return mfres_fail(MFRES_EIO, "cannot create %s: %s", af->tmp_path, strerror(errno));
    return MFRES_OK;
}

/* The rename lives in the directory's entries: until the directory itself is
 * synced, a power cut can bring back the old file (or none). */
static int fsync_parent(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return mfres_fail(MFRES_EIO, "cannot open directory %s to sync it: %s", dir, strerror(errno));
    int failed = fsync(fd) != 0 && errno != EINVAL; /* EINVAL: a file system without directory sync */
    int saved = errno;
    close(fd);
    if (failed) return mfres_fail(MFRES_EIO, "cannot sync directory %s: %s", dir, strerror(saved));
    return MFRES_OK;
}

int mfres_atomic_commit(mfres_atomic_file *af) {
    if (!af->fp) return mfres_fail(MFRES_EIO, "%s: file not open", af->path);
    int failed = ferror(af->fp) || fflush(af->fp) != 0 || fsync(fileno(af->fp)) != 0;
    int saved = errno;
    failed |= fclose(af->fp) != 0;
    af->fp = NULL;
    if (failed) {
        remove(af->tmp_path);
        return mfres_fail(MFRES_EIO, "cannot write %s: %s", af->path, strerror(saved));
    }
    if (rename(af->tmp_path, af->path) != 0) {
        saved = errno;
        remove(af->tmp_path);
        return mfres_fail(MFRES_EIO, "cannot rename %s to %s: %s", af->tmp_path, af->path, strerror(saved));
    }
    return fsync_parent(af->path);
}

void mfres_atomic_abort(mfres_atomic_file *af) {
    if (af->fp) fclose(af->fp);
    af->fp = NULL;
    remove(af->tmp_path);
}

int mfres_write_file_atomic(const char *path, const void *data, size_t len) {
    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    if (len && fwrite(data, 1, len, af.fp) != len) {
        mfres_atomic_abort(&af);
        return mfres_fail(MFRES_EIO, "cannot write %s: %s", path, strerror(errno));
    }
    return mfres_atomic_commit(&af);
}

int mfres_mkdir_p(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) return mfres_fail(MFRES_EINVAL, "path too long: %s", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return mfres_fail(MFRES_EIO, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return mfres_fail(MFRES_EIO, "cannot create directory %s: %s", buf, strerror(errno));
    return MFRES_OK;
}
