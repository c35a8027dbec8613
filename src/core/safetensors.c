/* safetensors reader and writer. The header is JSON; we parse the subset the
 * format uses (an object of objects with strings, integers and integer arrays,
 * plus "__metadata__" with string values) and reject anything else with a
 * message naming the file and the byte offset. */
#include "mfres/safetensors.h"

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "mfres/core.h"

/* zlib's crc32 takes an unsigned length: feed it in pieces. */
static uLong crc32_bytes(uLong crc, const void *data, size_t len) {
    const unsigned char *p = data;
    while (len) {
        uInt piece = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = crc32(crc, p, piece);
        p += piece, len -= piece;
    }
    return crc;
}

/* ---- writing ---- */

static void json_string(FILE *fp, const char *s) {
    fputc('"', fp);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', fp);
        if ((unsigned char)*s < 0x20) {
            fprintf(fp, "\\u%04x", (unsigned char)*s);
            continue;
        }
        fputc(*s, fp);
    }
    fputc('"', fp);
}

int mfres_safetensors_save(const char *path, const mfres_st_write *tensors, int n_tensors, const mfres_st_meta *meta,
                           int n_meta) {
    char *header = NULL;
    size_t header_len = 0;
    FILE *hp = open_memstream(&header, &header_len);
    if (!hp) return mfres_fail(MFRES_ENOMEM, "cannot build the safetensors header for %s", path);
    fputc('{', hp);
    if (n_meta) {
        fputs("\"__metadata__\":{", hp);
        for (int i = 0; i < n_meta; i++) {
            if (i) fputc(',', hp);
            json_string(hp, meta[i].key);
            fputc(':', hp);
            json_string(hp, meta[i].value);
        }
    }
    /* The checksum goes into the header, so it is computed before anything is written. */
    uLong crc = crc32(0L, Z_NULL, 0);
    for (int i = 0; i < n_tensors; i++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++) numel *= (size_t)tensors[i].shape[d];
        crc = crc32_bytes(crc, tensors[i].data, numel * 4);
    }
    fputs(n_meta ? "," : "\"__metadata__\":{", hp);
    fprintf(hp, "\"%s\":\"%08lx\"}", MFRES_ST_CHECKSUM_KEY, (unsigned long)crc);
    size_t offset = 0;
    for (int i = 0; i < n_tensors; i++) {
        const mfres_st_write *t = &tensors[i];
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        fputc(',', hp);
        json_string(hp, t->name);
        fputs(":{\"dtype\":\"F32\",\"shape\":[", hp);
        for (int d = 0; d < t->ndim; d++) fprintf(hp, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        fprintf(hp, "],\"data_offsets\":[%zu,%zu]}", offset, offset + numel * 4);
        offset += numel * 4;
    }
    fputc('}', hp);
    fclose(hp);
    /* Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does. */
    size_t padded = (header_len + 7) & ~(size_t)7;

    mfres_atomic_file af;
    int rc = mfres_atomic_open(&af, path);
    if (rc) {
        free(header);
        return rc;
    }
    unsigned char len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    fwrite(len_le, 1, 8, af.fp);
    fwrite(header, 1, header_len, af.fp);
    for (size_t i = header_len; i < padded; i++) fputc(' ', af.fp);
    free(header);
    for (int i = 0; i < n_tensors; i++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++) numel *= (size_t)tensors[i].shape[d];
        if (fwrite(tensors[i].data, 4, numel, af.fp) != numel) {
            mfres_atomic_abort(&af);
            return mfres_fail(MFRES_EIO, "cannot write %s: %s", path, strerror(errno));
        }
    }
    return mfres_atomic_commit(&af);
}

/* ---- reading ---- */

typedef struct parser {
    const char *s, *end, *start, *path; /* start: first header byte (file offset 8) */
} parser;

static int perr(parser *p, const char *what) {
    return mfres_fail(MFRES_EFORMAT, "%s: bad safetensors header at byte %zu: expected %s", p->path,
                      (size_t)(p->s - p->start) + 8, what);
}

/* Every read below stays inside [s, end): the header is not NUL-terminated, and
 * the byte after it is tensor data or, at the end of the file, past the buffer. */
static void skip_ws(parser *p) {
    while (p->s < p->end && isspace((unsigned char)*p->s)) p->s++;
}

static int expect(parser *p, char c) {
    skip_ws(p);
    if (p->s >= p->end || *p->s != c) {
        char what[16];
        snprintf(what, sizeof what, "'%c'", c);
        return perr(p, what);
    }
    p->s++;
    return MFRES_OK;
}

static bool peek(parser *p, char c) {
    skip_ws(p);
    return p->s < p->end && *p->s == c;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A JSON string into out (cap bytes); a longer one is an error, not silently cut,
 * so two long names can never be read as the same name. */
static int parse_string(parser *p, char *out, size_t cap, const char *what) {
    skip_ws(p);
    if (p->s >= p->end || *p->s != '"') return perr(p, what);
    p->s++;
    size_t n = 0;
    while (p->s < p->end && *p->s != '"') {
        char c = *p->s++;
        if (c == '\\') {
            if (p->s >= p->end) return perr(p, "an escape");
            c = *p->s++;
            if (c == 'u') { /* \uXXXX: keep ASCII, replace the rest */
                if (p->end - p->s < 4) return perr(p, "four hex digits");
                int v = 0;
                for (int k = 0; k < 4; k++) {
                    int h = hex_digit(p->s[k]);
                    if (h < 0) return perr(p, "four hex digits");
                    v = v * 16 + h;
                }
                c = v < 128 ? (char)v : '?';
                p->s += 4;
            } else if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
        }
        if (n + 1 >= cap) {
            char msg[96];
            snprintf(msg, sizeof msg, "%s of at most %zu bytes", what, cap - 1);
            return perr(p, msg);
        }
        out[n++] = c;
    }
    if (p->s >= p->end) return perr(p, "a closing quote");
    p->s++;
    out[n] = '\0';
    return MFRES_OK;
}

/* A non-negative decimal integer below 2^62, parsed inside the header's bounds. */
static int parse_int(parser *p, int64_t *v) {
    skip_ws(p);
    int64_t x = 0;
    const char *first = p->s;
    while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
        if (x > (INT64_C(1) << 62) / 10) return perr(p, "an integer below 2^62");
        x = x * 10 + (*p->s++ - '0');
    }
    if (p->s == first) return perr(p, "a non-negative integer");
    *v = x;
    return MFRES_OK;
}

static int parse_int_array(parser *p, int64_t *out, int cap, int *n) {
    int rc = expect(p, '[');
    if (rc) return rc;
    *n = 0;
    if (peek(p, ']')) {
        p->s++;
        return MFRES_OK;
    }
    for (;;) {
        int64_t v = 0;
        if ((rc = parse_int(p, &v))) return rc;
        if (*n == cap) return perr(p, "at most 8 dimensions");
        out[(*n)++] = v;
        if (peek(p, ',')) {
            p->s++;
            continue;
        }
        return expect(p, ']');
    }
}

static size_t dtype_size(const char *dt) {
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32") || !strcmp(dt, "U32")) return 4;
    if (!strcmp(dt, "F64") || !strcmp(dt, "I64") || !strcmp(dt, "U64")) return 8;
    if (!strcmp(dt, "F16") || !strcmp(dt, "BF16") || !strcmp(dt, "I16") || !strcmp(dt, "U16")) return 2;
    if (!strcmp(dt, "U8") || !strcmp(dt, "I8") || !strcmp(dt, "BOOL")) return 1;
    return 0;
}

/* Grows *arr (of elem-byte items, *cap of them) to hold one more; false when out of memory. */
static bool grow(void **arr, int *cap, int count, size_t elem) {
    if (count < *cap) return true;
    int next = *cap ? 2 * *cap : 16;
    void *bigger = realloc(*arr, elem * (size_t)next);
    if (!bigger) return false;
    *arr = bigger;
    *cap = next;
    return true;
}

static int parse_metadata(parser *p, mfres_safetensors *st, int *mcap) {
    int rc;
    if (peek(p, '}')) {
        p->s++;
        return MFRES_OK;
    }
    for (;;) {
        if (!grow((void **)&st->meta, mcap, st->n_meta, sizeof *st->meta))
            return mfres_fail(MFRES_ENOMEM, "out of memory reading %s", p->path);
        mfres_st_meta *m = &st->meta[st->n_meta];
        if ((rc = parse_string(p, m->key, sizeof m->key, "a metadata key")) || (rc = expect(p, ':')) ||
            (rc = parse_string(p, m->value, sizeof m->value, "a metadata string value")))
            return rc;
        for (int i = 0; i < st->n_meta; i++)
            if (!strcmp(st->meta[i].key, m->key))
                return mfres_fail(MFRES_EFORMAT, "%s: metadata key '%s' appears twice", p->path, m->key);
        st->n_meta++;
        if (peek(p, ',')) {
            p->s++;
            continue;
        }
        return expect(p, '}');
    }
}

/* One tensor's entry {"dtype": ..., "shape": [...], "data_offsets": [b, e]}, checked
 * against itself and against the data section's length. */
static int parse_tensor(parser *p, mfres_st_tensor *t, size_t data_len, int64_t *begin, int64_t *end) {
    int rc;
    int64_t offsets[8];
    int n_off = -1, n_shape = -1;
    bool first = true;
    for (;;) {
        if (peek(p, '}')) {
            p->s++;
            break;
        }
        if (!first && (rc = expect(p, ','))) return rc;
        first = false;
        char field[32];
        if ((rc = parse_string(p, field, sizeof field, "a field name")) || (rc = expect(p, ':'))) return rc;
        if (!strcmp(field, "dtype")) rc = parse_string(p, t->dtype, sizeof t->dtype, "a dtype string");
        else if (!strcmp(field, "shape")) rc = parse_int_array(p, t->shape, 8, &n_shape);
        else if (!strcmp(field, "data_offsets")) rc = parse_int_array(p, offsets, 8, &n_off);
        else rc = perr(p, "dtype, shape or data_offsets");
        if (rc) return rc;
    }
    const char *path = p->path;
    size_t es = dtype_size(t->dtype);
    if (!es) return mfres_fail(MFRES_EFORMAT, "%s: tensor %s has unknown dtype '%s'", path, t->name, t->dtype);
    if (n_shape < 0) return mfres_fail(MFRES_EFORMAT, "%s: tensor %s has no shape", path, t->name);
    t->ndim = n_shape;
    if (n_off != 2)
        return mfres_fail(MFRES_EFORMAT, "%s: tensor %s: expected data_offsets [begin, end]", path, t->name);
    if (offsets[1] < offsets[0])
        return mfres_fail(MFRES_EFORMAT, "%s: tensor %s: data_offsets [%lld, %lld] end before they begin", path,
                          t->name, (long long)offsets[0], (long long)offsets[1]);
    /* The product of the dimensions, checked for overflow before it is trusted. */
    size_t bytes = es;
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        size_t dim = (size_t)t->shape[d];
        if (dim && (t->numel > SIZE_MAX / dim || bytes > SIZE_MAX / dim))
            return mfres_fail(MFRES_EFORMAT, "%s: tensor %s: shape overflows a size_t", path, t->name);
        t->numel *= dim;
        bytes *= dim;
    }
    if (!t->numel) bytes = 0;
    if ((uint64_t)(offsets[1] - offsets[0]) != (uint64_t)bytes)
        return mfres_fail(MFRES_EFORMAT, "%s: tensor %s: shape needs %zu bytes, data_offsets give %lld", path, t->name,
                          bytes, (long long)(offsets[1] - offsets[0]));
    if ((uint64_t)offsets[1] > (uint64_t)data_len)
        return mfres_fail(MFRES_EFORMAT,
                          "%s: truncated: tensor %s ends at data byte %lld but the file holds %zu data bytes", path,
                          t->name, (long long)offsets[1], data_len);
    *begin = offsets[0];
    *end = offsets[1];
    return MFRES_OK;
}

typedef struct byte_range {
    int64_t begin, end;
    int tensor;
} byte_range;

static int by_begin(const void *a, const void *b) {
    const byte_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* As the format requires, the tensors tile the data section: no overlap, no
 * hole, nothing after the last. (Header order need not be data order: the
 * Hugging Face writer sorts the header by name.) */
static int check_tiling(const mfres_safetensors *st, const char *path, byte_range *ranges, size_t data_len) {
    if (st->n_tensors) qsort(ranges, (size_t)st->n_tensors, sizeof *ranges, by_begin); /* qsort(NULL, 0): UB */
    int64_t at = 0;
    for (int i = 0; i < st->n_tensors; i++) {
        const char *name = st->tensors[ranges[i].tensor].name;
        if (ranges[i].begin < at)
            return mfres_fail(MFRES_EFORMAT, "%s: tensor %s's data [%lld, %lld) overlaps tensor %s's", path, name,
                              (long long)ranges[i].begin, (long long)ranges[i].end,
                              st->tensors[ranges[i - 1].tensor].name);
        if (ranges[i].begin > at)
            return mfres_fail(MFRES_EFORMAT, "%s: a hole in the data: bytes [%lld, %lld) belong to no tensor (next: %s)",
                              path, (long long)at, (long long)ranges[i].begin, name);
        at = ranges[i].end;
    }
    if ((uint64_t)at != (uint64_t)data_len)
        return mfres_fail(MFRES_EFORMAT, "%s: %zu bytes of trailing data after the last tensor's (which ends at %lld)",
                          path, data_len - (size_t)at, (long long)at);
    return MFRES_OK;
}

static int check_checksum(const mfres_safetensors *st, const char *path, const unsigned char *data, size_t data_len) {
    const char *want = mfres_safetensors_meta(st, MFRES_ST_CHECKSUM_KEY);
    if (!want) return MFRES_OK; /* files from other writers (PyTorch, older mfres) carry none */
    char *e = NULL;
    errno = 0;
    unsigned long expected = strtoul(want, &e, 16);
    if (errno || e == want || *e || strlen(want) != 8)
        return mfres_fail(MFRES_EFORMAT, "%s: metadata '%s' should be 8 hex digits, found '%s'", path,
                          MFRES_ST_CHECKSUM_KEY, want);
    unsigned long got = crc32_bytes(crc32(0L, Z_NULL, 0), data, data_len);
    if (got != expected)
        return mfres_fail(MFRES_EFORMAT,
                          "%s: tensor data is corrupt: CRC-32 %08lx, but the header records %08lx (HINT: the file "
                          "was damaged after it was written; use another copy)",
                          path, got, expected);
    return MFRES_OK;
}

static int parse_header(mfres_safetensors *st, const char *path, size_t hlen) {
    const unsigned char *data = st->file + 8 + hlen;
    size_t data_len = st->file_len - 8 - hlen;
    parser p = {(const char *)st->file + 8, (const char *)st->file + 8 + hlen, (const char *)st->file + 8, path};
    int rc = expect(&p, '{'), cap = 0, mcap = 0, rcap = 0;
    byte_range *ranges = NULL;
    bool first = true, seen_meta = false;
    while (!rc) {
        if (peek(&p, '}')) {
            p.s++;
            break;
        }
        if (!first && (rc = expect(&p, ','))) break;
        first = false;
        char key[sizeof st->tensors->name];
        if ((rc = parse_string(&p, key, sizeof key, "a tensor name")) || (rc = expect(&p, ':')) ||
            (rc = expect(&p, '{')))
            break;
        if (!strcmp(key, "__metadata__")) {
            if (seen_meta) {
                rc = mfres_fail(MFRES_EFORMAT, "%s: __metadata__ appears twice", path);
                break;
            }
            seen_meta = true;
            rc = parse_metadata(&p, st, &mcap);
            continue;
        }
        for (int i = 0; !rc && i < st->n_tensors; i++)
            if (!strcmp(st->tensors[i].name, key))
                rc = mfres_fail(MFRES_EFORMAT, "%s: tensor %s appears twice", path, key);
        if (rc) break;
        if (!grow((void **)&st->tensors, &cap, st->n_tensors, sizeof *st->tensors) ||
            !grow((void **)&ranges, &rcap, st->n_tensors, sizeof *ranges)) {
            rc = mfres_fail(MFRES_ENOMEM, "out of memory reading %s", path);
            break;
        }
        mfres_st_tensor *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", key);
        byte_range *r = &ranges[st->n_tensors];
        if ((rc = parse_tensor(&p, t, data_len, &r->begin, &r->end))) break;
        r->tensor = st->n_tensors++;
        t->data = data + r->begin;
    }
    if (!rc) {
        skip_ws(&p);
        if (p.s != p.end) rc = perr(&p, "the end of the header after its closing '}'");
    }
    if (!rc) rc = check_tiling(st, path, ranges, data_len);
    if (!rc) rc = check_checksum(st, path, data, data_len);
    free(ranges);
    return rc;
}

int mfres_safetensors_load(mfres_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mfres_fail(MFRES_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        return mfres_fail(MFRES_EIO, "cannot read %s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    if (len < 8) {
        fclose(fp);
        return mfres_fail(MFRES_EFORMAT, "%s: not a safetensors file: expected at least 8 bytes, found %zu", path, len);
    }
    st->file = malloc(len);
    st->file_len = len;
    if (!st->file || fread(st->file, 1, len, fp) != len) {
        fclose(fp);
        mfres_safetensors_free(st);
        return mfres_fail(MFRES_EIO, "cannot read %s", path);
    }
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)st->file[i] << (8 * i);
    if (hlen > st->file_len - 8) {
        size_t found = st->file_len - 8;
        mfres_safetensors_free(st);
        return mfres_fail(MFRES_EFORMAT,
                          "%s: truncated or not a safetensors file: header says %llu bytes, only %zu follow", path,
                          (unsigned long long)hlen, found);
    }
    int rc = parse_header(st, path, (size_t)hlen);
    if (rc) mfres_safetensors_free(st);
    return rc;
}

const mfres_st_tensor *mfres_safetensors_find(const mfres_safetensors *st, const char *name) {
    for (int i = 0; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i].name, name)) return &st->tensors[i];
    return NULL;
}

const char *mfres_safetensors_meta(const mfres_safetensors *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta[i].key, key)) return st->meta[i].value;
    return NULL;
}

void mfres_safetensors_free(mfres_safetensors *st) {
    free(st->file);
    free(st->tensors);
    free(st->meta);
    memset(st, 0, sizeof *st);
}

void mfres_st_meta_put(mfres_st_meta *meta, int *n, const char *key, const char *fmt, ...) {
    va_list ap;
    snprintf(meta[*n].key, sizeof meta[*n].key, "%s", key);
    va_start(ap, fmt);
    vsnprintf(meta[*n].value, sizeof meta[*n].value, fmt, ap);
    va_end(ap);
    (*n)++;
}

static void shape_text(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

int mfres_safetensors_copy_f32_shaped(const mfres_safetensors *st, const char *path, const char *name, float *dst,
                                      int ndim, const int64_t *shape) {
    const mfres_st_tensor *t = mfres_safetensors_find(st, name);
    if (!t) return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s' is missing", path, name);
    bool same = t->ndim == ndim && !strcmp(t->dtype, "F32");
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char want[160], found[160];
        shape_text(want, sizeof want, ndim, shape);
        shape_text(found, sizeof found, t->ndim, t->shape);
        return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s': expected F32 of shape %s, found %s of shape %s", path, name,
                          want, t->dtype, found);
    }
    memcpy(dst, t->data, t->numel * sizeof(float));
    return MFRES_OK;
}

int mfres_safetensors_copy_f32(const mfres_safetensors *st, const char *path, const char *name, float *dst,
                               size_t numel) {
    int64_t flat = (int64_t)numel;
    const mfres_st_tensor *t = mfres_safetensors_find(st, name);
    if (t && t->ndim == 1) return mfres_safetensors_copy_f32_shaped(st, path, name, dst, 1, &flat);
    if (!t) return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s' is missing", path, name);
    return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s': expected a 1-D F32 tensor of %zu elements, found %s of %d dimensions",
                      path, name, numel, t->dtype, t->ndim);
}
