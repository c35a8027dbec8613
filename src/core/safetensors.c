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

#include "mfres/core.h"

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
        fputc('}', hp);
    }
    size_t offset = 0;
    for (int i = 0; i < n_tensors; i++) {
        const mfres_st_write *t = &tensors[i];
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        if (i || n_meta) fputc(',', hp);
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

static int parse_string(parser *p, char *out, size_t cap) {
    skip_ws(p);
    if (p->s >= p->end || *p->s != '"') return perr(p, "a string");
    p->s++;
    size_t n = 0;
    while (p->s < p->end && *p->s != '"') {
        char c = *p->s++;
        if (c == '\\') {
            if (p->s >= p->end) return perr(p, "an escape");
            c = *p->s++;
            if (c == 'u') { /* \uXXXX: keep ASCII, replace the rest */
                if (p->end - p->s < 4) return perr(p, "four hex digits");
                char hex[5] = {p->s[0], p->s[1], p->s[2], p->s[3], 0};
                long v = strtol(hex, NULL, 16);
                c = v < 128 ? (char)v : '?';
                p->s += 4;
            } else if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
        }
        if (n + 1 < cap) out[n++] = c;
    }
    if (p->s >= p->end) return perr(p, "a closing quote");
    p->s++;
    out[n] = '\0';
    return MFRES_OK;
}

static int parse_int(parser *p, int64_t *v) {
    skip_ws(p);
    char *e;
    errno = 0;
    long long x = strtoll(p->s, &e, 10);
    if (e == p->s || errno || x < 0) return perr(p, "a non-negative integer");
    p->s = e;
    *v = x;
    return MFRES_OK;
}

static int parse_int_array(parser *p, int64_t *out, int cap, int *n) {
    int rc = expect(p, '[');
    if (rc) return rc;
    *n = 0;
    skip_ws(p);
    if (p->s < p->end && *p->s == ']') {
        p->s++;
        return MFRES_OK;
    }
    for (;;) {
        int64_t v = 0;
        if ((rc = parse_int(p, &v))) return rc;
        if (*n == cap) return perr(p, "at most 8 dimensions");
        out[(*n)++] = v;
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') {
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

int mfres_safetensors_load(mfres_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mfres_fail(MFRES_EIO, "cannot open %s: %s", path, strerror(errno));
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    if (len < 8) {
        fclose(fp);
        return mfres_fail(MFRES_EFORMAT, "%s: not a safetensors file: expected at least 8 bytes, found %ld", path, len);
    }
    st->file = malloc((size_t)len);
    st->file_len = (size_t)len;
    if (!st->file || fread(st->file, 1, (size_t)len, fp) != (size_t)len) {
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
    const unsigned char *data = st->file + 8 + hlen;
    size_t data_len = st->file_len - 8 - hlen;
    parser p = {(const char *)st->file + 8, (const char *)st->file + 8 + hlen, (const char *)st->file + 8, path};
    int rc = expect(&p, '{'), cap = 0, mcap = 0;
    skip_ws(&p);
    bool first = true;
    while (!rc) {
        skip_ws(&p);
        if (p.s < p.end && *p.s == '}') break;
        if (!first && (rc = expect(&p, ','))) break;
        first = false;
        char key[128];
        if ((rc = parse_string(&p, key, sizeof key)) || (rc = expect(&p, ':')) || (rc = expect(&p, '{'))) break;
        if (!strcmp(key, "__metadata__")) {
            bool mfirst = true;
            for (;;) {
                skip_ws(&p);
                if (p.s < p.end && *p.s == '}') {
                    p.s++;
                    break;
                }
                if (!mfirst && (rc = expect(&p, ','))) break;
                mfirst = false;
                if (st->n_meta == mcap) {
                    mcap = mcap ? 2 * mcap : 16;
                    st->meta = realloc(st->meta, sizeof *st->meta * mcap);
                }
                mfres_st_meta *m = &st->meta[st->n_meta++];
                if ((rc = parse_string(&p, m->key, sizeof m->key)) || (rc = expect(&p, ':')) ||
                    (rc = parse_string(&p, m->value, sizeof m->value)))
                    break;
            }
            continue;
        }
        if (st->n_tensors == cap) {
            cap = cap ? 2 * cap : 64;
            st->tensors = realloc(st->tensors, sizeof *st->tensors * cap);
        }
        mfres_st_tensor *t = &st->tensors[st->n_tensors++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", key);
        int64_t offsets[8];
        int n_off = -1;
        bool tfirst = true;
        for (;;) {
            skip_ws(&p);
            if (p.s < p.end && *p.s == '}') {
                p.s++;
                break;
            }
            if (!tfirst && (rc = expect(&p, ','))) break;
            tfirst = false;
            char field[32];
            if ((rc = parse_string(&p, field, sizeof field)) || (rc = expect(&p, ':'))) break;
            if (!strcmp(field, "dtype")) rc = parse_string(&p, t->dtype, sizeof t->dtype);
            else if (!strcmp(field, "shape")) rc = parse_int_array(&p, t->shape, 8, &t->ndim);
            else if (!strcmp(field, "data_offsets")) rc = parse_int_array(&p, offsets, 8, &n_off);
            else rc = perr(&p, "dtype, shape or data_offsets");
            if (rc) break;
        }
        if (rc) break;
        size_t es = dtype_size(t->dtype);
        if (!es) {
            rc = mfres_fail(MFRES_EFORMAT, "%s: tensor %s has unknown dtype '%s'", path, t->name, t->dtype);
            break;
        }
        if (n_off != 2) {
            rc = mfres_fail(MFRES_EFORMAT, "%s: tensor %s: expected data_offsets [begin, end]", path, t->name);
            break;
        }
        t->numel = 1;
        for (int d = 0; d < t->ndim; d++) t->numel *= (size_t)t->shape[d];
        if ((size_t)(offsets[1] - offsets[0]) != t->numel * es || offsets[1] < offsets[0]) {
            rc = mfres_fail(MFRES_EFORMAT, "%s: tensor %s: shape needs %zu bytes, data_offsets give %lld", path,
                            t->name, t->numel * es, (long long)(offsets[1] - offsets[0]));
            break;
        }
        if ((size_t)offsets[1] > data_len) {
            rc = mfres_fail(MFRES_EFORMAT,
                            "%s: truncated: tensor %s ends at data byte %lld but the file holds %zu data bytes", path,
                            t->name, (long long)offsets[1], data_len);
            break;
        }
        t->data = data + offsets[0];
    }
    if (rc) {
        mfres_safetensors_free(st);
        return rc;
    }
    return MFRES_OK;
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

int mfres_safetensors_copy_f32(const mfres_safetensors *st, const char *path, const char *name, float *dst,
                               size_t numel) {
    const mfres_st_tensor *t = mfres_safetensors_find(st, name);
    if (!t) return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s' is missing", path, name);
    if (strcmp(t->dtype, "F32") || t->numel != numel)
        return mfres_fail(MFRES_EFORMAT, "%s: tensor '%s': expected F32 with %zu elements, found %s with %zu", path,
                          name, numel, t->dtype, t->numel);
    memcpy(dst, t->data, numel * sizeof(float));
    return MFRES_OK;
}
