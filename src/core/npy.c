/* .npy and CSV matrices as row-major doubles (declared in include/mfres/io.h).
 *
 * .npy format: numpy's NEP 1 (numpy/lib/format.py): the magic "\x93NUMPY", a
 * major and minor version byte, a little-endian header length (uint16 for
 * version 1, uint32 for versions 2 and 3), then an ASCII Python dict literal
 * {'descr': '<f8', 'fortran_order': False, 'shape': (r, c), } padded with
 * spaces to a multiple of 64 bytes and ended by '\n', then the raw data.
 *
 * We read only what numpy writes for float arrays (the theory labs exchange
 * matrices with numpy scripts), and say exactly what we found otherwise:
 * a user who saved an int64 or a 3-D array should learn that from the message,
 * not from a wrong matrix. The host is assumed little-endian (x86-64, aarch64). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mfres/core.h"
#include "mfres/io.h"

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* Finds the value text after 'key': in the header dict; NULL if absent. */
static const char *npy_header_value(const char *header, const char *key) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "'%s'", key);
    const char *p = strstr(header, quoted);
    if (!p) {
        snprintf(quoted, sizeof quoted, "\"%s\"", key);
        p = strstr(header, quoted);
    }
    if (!p) return NULL;
    p += strlen(quoted);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

/* Parses the header dict: element size (4 or 8), fortran order, and shape as
 * rows×cols (1-D: n×1; 0-D: 1×1). */
static int npy_parse_header(const char *path, const char *header, int *elem_size, int *fortran, long *rows,
                            long *cols) {
    const char *descr = npy_header_value(header, "descr");
    if (!descr || (*descr != '\'' && *descr != '"'))
        return mfres_fail(MFRES_EFORMAT, "%s: .npy header has no 'descr' entry: %.200s", path, header);
    char q = *descr++;
    const char *end = strchr(descr, q);
    if (!end || end - descr > 16) return mfres_fail(MFRES_EFORMAT, "%s: malformed 'descr' in .npy header", path);
    char type[20];
    memcpy(type, descr, (size_t)(end - descr));
    type[end - descr] = '\0';
    if (!strcmp(type, "<f8") || !strcmp(type, "=f8"))
        *elem_size = 8;
    else if (!strcmp(type, "<f4") || !strcmp(type, "=f4"))
        *elem_size = 4;
    else
        return mfres_fail(MFRES_EFORMAT,
                          "%s: .npy dtype '%s' is not supported (expected '<f8' float64 or '<f4' float32; "
                          "HINT: save with arr.astype(np.float64))",
                          path, type);

    const char *fo = npy_header_value(header, "fortran_order");
    if (!fo) return mfres_fail(MFRES_EFORMAT, "%s: .npy header has no 'fortran_order' entry", path);
    if (!strncmp(fo, "True", 4))
        *fortran = 1;
    else if (!strncmp(fo, "False", 5))
        *fortran = 0;
    else
        return mfres_fail(MFRES_EFORMAT, "%s: malformed 'fortran_order' in .npy header", path);

    const char *sh = npy_header_value(header, "shape");
    if (!sh || *sh != '(') return mfres_fail(MFRES_EFORMAT, "%s: .npy header has no 'shape' tuple", path);
    sh++;
    long dims[3];
    int nd = 0;
    for (;;) {
        while (*sh == ' ') sh++;
        if (*sh == ')') break;
        char *e = NULL;
        errno = 0;
        long v = strtol(sh, &e, 10);
        if (e == sh || errno || v < 0) return mfres_fail(MFRES_EFORMAT, "%s: malformed 'shape' in .npy header", path);
        if (nd == 3) break;
        dims[nd++] = v;
        sh = e;
        while (*sh == ' ') sh++;
        if (*sh == ',') sh++;
    }
    if (nd > 2)
        return mfres_fail(MFRES_EFORMAT, "%s: .npy array has %s%d dimensions; only 1-D and 2-D arrays are supported",
                          path, nd == 3 ? "at least " : "", nd);
    *rows = nd == 0 ? 1 : dims[0];
    *cols = nd == 2 ? dims[1] : 1;
    return MFRES_OK;
}

int mfres_npy_load_f64(const char *path, double **data, int *rows, int *cols) {
    *data = NULL;
    *rows = *cols = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return mfres_fail(MFRES_EIO, "cannot open %s: %s", path, strerror(errno));
    int rc = MFRES_OK;
    char *header = NULL;
    void *raw = NULL;
    double *out = NULL;
    const char *missing = "end of its header"; /* for the truncation message */

    unsigned char pre[10];
    size_t got = fread(pre, 1, sizeof pre, fp);
    if (got < 8 || memcmp(pre, npy_magic, 6) != 0) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: not a .npy file (bad magic; expected \\x93NUMPY)", path);
        goto done;
    }
    int major = pre[6];
    size_t hlen, hstart;
    if (major == 1) {
        if (got < 10) goto truncated;
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
        hstart = 10;
    } else if (major == 2 || major == 3) {
        unsigned char b[2];
        if (got < 10 || fread(b, 1, 2, fp) != 2) goto truncated;
        hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)b[0] << 16 | (size_t)b[1] << 24;
        hstart = 12;
    } else {
        rc = mfres_fail(MFRES_EFORMAT, "%s: .npy version %d.%d is not supported (expected 1.x, 2.x or 3.x)", path,
                        major, pre[7]);
        goto done;
    }
    if (hlen > (1u << 20)) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: .npy header length %zu is implausible", path, hlen);
        goto done;
    }
    header = malloc(hlen + 1);
    if (!header) {
        rc = mfres_fail(MFRES_ENOMEM, "out of memory reading %s", path);
        goto done;
    }
    if (fseek(fp, (long)hstart, SEEK_SET) != 0 || fread(header, 1, hlen, fp) != hlen) goto truncated;
    header[hlen] = '\0';

    int elem = 0, fortran = 0;
    long r = 0, c = 0;
    rc = npy_parse_header(path, header, &elem, &fortran, &r, &c);
    if (rc) goto done;
    if (r > INT_MAX || c > INT_MAX || (r && (size_t)c > SIZE_MAX / 8 / (size_t)r)) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: .npy shape %ld×%ld is too large", path, r, c);
        goto done;
    }
    size_t n = (size_t)r * (size_t)c;
    /* The data must be exactly what the header promises, checked against the
     * file's size before anything is allocated from the header's numbers. */
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0) {
        rc = mfres_fail(MFRES_EIO, "cannot stat %s: %s", path, strerror(errno));
        goto done;
    }
    size_t data_start = hstart + hlen, file_size = (size_t)sb.st_size;
    size_t data_bytes = file_size > data_start ? file_size - data_start : 0;
    missing = "data its header promises";
    if (data_bytes < n * (size_t)elem) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: truncated .npy file: shape %ld×%ld needs %zu data bytes, found %zu", path,
                        r, c, n * (size_t)elem, data_bytes);
        goto done;
    }
    if (data_bytes > n * (size_t)elem) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: %zu bytes of trailing data after the %ld×%ld array (%zu data bytes)", path,
                        data_bytes - n * (size_t)elem, r, c, n * (size_t)elem);
        goto done;
    }
    raw = malloc(n ? n * (size_t)elem : 1);
    out = mfres_alloc(n * sizeof(double), path);
    if (!raw || !out) {
        rc = mfres_fail(MFRES_ENOMEM, "out of memory reading %s (%ld×%ld)", path, r, c);
        goto done;
    }
    if (fread(raw, (size_t)elem, n, fp) != n) goto truncated;

    for (size_t i = 0; i < (size_t)r; i++)
        for (size_t j = 0; j < (size_t)c; j++) {
            size_t src = fortran ? j * (size_t)r + i : i * (size_t)c + j;
            double v;
            if (elem == 8) {
                memcpy(&v, (char *)raw + src * 8, 8);
            } else {
                float f;
                memcpy(&f, (char *)raw + src * 4, 4);
                v = (double)f;
            }
            out[i * (size_t)c + j] = v;
        }
    *data = out;
    out = NULL;
    *rows = (int)r;
    *cols = (int)c;
    goto done;

truncated:
    rc = mfres_fail(MFRES_EFORMAT, "%s: truncated .npy file (ends before the %s)", path, missing);
done:
    fclose(fp);
    free(header);
    free(raw);
    mfres_free(out);
    return rc;
}

int mfres_npy_save_f64(const char *path, const double *data, int rows, int cols) {
    if (rows < 0 || cols < 0) return mfres_fail(MFRES_EINVAL, "%s: negative shape %d×%d", path, rows, cols);
    char dict[128];
    int dlen = snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }", rows,
                        cols);
    /* Version 1.0: 10 bytes of preamble; the total is padded to 64 bytes with
     * spaces and a final newline, as numpy does, so the data is aligned. */
    size_t total = 10 + (size_t)dlen + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    unsigned char head[256];
    memcpy(head, npy_magic, 6);
    head[6] = 1;
    head[7] = 0;
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8);
    memcpy(head + 10, dict, (size_t)dlen);
    memset(head + 10 + dlen, ' ', hlen - (size_t)dlen - 1);
    head[padded - 1] = '\n';

    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) return rc;
    size_t n = (size_t)rows * (size_t)cols;
    if (fwrite(head, 1, padded, af.fp) != padded || (n && fwrite(data, sizeof(double), n, af.fp) != n)) {
        int saved = errno;
        mfres_atomic_abort(&af);
        return mfres_fail(MFRES_EIO, "cannot write %s: %s", path, strerror(saved));
    }
    return mfres_atomic_commit(&af);
}

/* ---- CSV ---- */

/* Splits one line into numbers. Returns the count, or -1 if some field is not
 * a number (the caller decides whether that makes it a header). */
static long csv_parse_line(char *line, double *vals, long cap) {
    long n = 0;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        char *e = NULL;
        errno = 0;
        double v = strtod(p, &e);
        if (e == p || errno == ERANGE) return -1;
        p = e;
        while (*p == ' ' || *p == '\t') p++;
        if (*p != ',' && *p != '\0') return -1;
        if (vals && n < cap) vals[n] = v;
        n++;
        if (*p == '\0') break;
        p++;
    }
    return n;
}

/* A header is clearly text: every field non-empty, none of them a number, and
 * at least one letter. "1,2x,3" or "1,,3" is a broken data row, not a header.
 * Returns the number of fields, or -1 if the line is not a header. */
static long csv_header_fields(const char *line) {
    long n = 0;
    const char *p = line;
    bool letter = false;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        const char *field = p;
        while (*p && *p != ',') {
            if (isalpha((unsigned char)*p)) letter = true;
            p++;
        }
        const char *end = p;
        while (end > field && (end[-1] == ' ' || end[-1] == '\t')) end--;
        if (end == field) return -1;
        char buf[64];
        size_t len = (size_t)(end - field) < sizeof buf - 1 ? (size_t)(end - field) : sizeof buf - 1;
        memcpy(buf, field, len);
        buf[len] = '\0';
        char *e = NULL;
        strtod(buf, &e);
        if (e != buf && *e == '\0') return -1; /* a number among the names */
        n++;
        if (!*p) break;
        p++;
    }
    return letter ? n : -1;
}

int mfres_csv_load_f64(const char *path, double **data, int *rows, int *cols) {
    *data = NULL;
    *rows = *cols = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return mfres_fail(MFRES_EIO, "cannot open %s: %s", path, strerror(errno));
    int rc = MFRES_OK;
    char *line = NULL;
    size_t line_cap = 0;
    double *out = NULL;
    size_t out_cap = 0, count = 0;
    long ncol = -1, nrow = 0, lineno = 0, header_cols = 0;
    int seen_first = 0;

    ssize_t len;
    while ((len = getline(&line, &line_cap, fp)) != -1) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '\0') continue; /* blank lines (a trailing newline) carry no row */
        long n = csv_parse_line(s, NULL, 0);
        if (n < 0) {
            if (!seen_first && (header_cols = csv_header_fields(s)) > 0) { /* the single optional header line */
                seen_first = 1;
                continue;
            }
            rc = mfres_fail(MFRES_EFORMAT, "%s:%ld: not a comma-separated list of numbers%s: '%.80s'", path, lineno,
                            seen_first ? "" : " (nor a header of names)", s);
            goto done;
        }
        seen_first = 1;
        if (header_cols > 0 && header_cols != n) {
            rc = mfres_fail(MFRES_EFORMAT, "%s:%ld: %ld columns, but the header names %ld", path, lineno, n,
                            header_cols);
            goto done;
        }
        header_cols = 0;
        if (ncol < 0) ncol = n;
        if (n != ncol) {
            rc = mfres_fail(MFRES_EFORMAT, "%s:%ld: %ld columns, but the first data row has %ld", path, lineno, n,
                            ncol);
            goto done;
        }
        if (nrow >= INT_MAX || ncol > INT_MAX) {
            rc = mfres_fail(MFRES_EFORMAT, "%s: too many rows or columns", path);
            goto done;
        }
        if (count + (size_t)n > out_cap) {
            size_t cap = out_cap ? out_cap * 2 : 1024;
            while (cap < count + (size_t)n) cap *= 2;
            double *grown = realloc(out, cap * sizeof(double));
            if (!grown) {
                rc = mfres_fail(MFRES_ENOMEM, "out of memory reading %s", path);
                goto done;
            }
            out = grown;
            out_cap = cap;
        }
        csv_parse_line(s, out + count, n);
        count += (size_t)n;
        nrow++;
    }
    if (ferror(fp)) {
        rc = mfres_fail(MFRES_EIO, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (nrow == 0) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: no numeric rows", path);
        goto done;
    }
    /* Hand back memory from mfres_alloc, as io.h promises. */
    *data = mfres_alloc(count * sizeof(double), path);
    if (!*data) {
        rc = MFRES_ENOMEM;
        goto done;
    }
    memcpy(*data, out, count * sizeof(double));
    *rows = (int)nrow;
    *cols = (int)ncol;
done:
    free(line);
    free(out);
    fclose(fp);
    return rc;
}
