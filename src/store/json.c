/* A recursive-descent JSON reader (RFC 8259), enough for files of a few
 * megabytes; strings are decoded, \u escapes included (as UTF-8). */
#include "store/json.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/core.h"

typedef struct parser {
    const char *s;
    size_t len, pos;
    const char *what;
    int depth;
} parser;

enum { MAX_DEPTH = 64 };

static int fail_at(parser *p, const char *expected) {
    return mfres_fail(MFRES_EFORMAT, "%s: not valid JSON at byte %zu: expected %s", p->what, p->pos, expected);
}

static void skip_space(parser *p) {
    while (p->pos < p->len && strchr(" \t\r\n", p->s[p->pos]) && p->s[p->pos]) p->pos++;
}

static int parse_value(parser *p, json_value *v);

static void put_utf8(char *out, size_t *n, uint32_t c) {
    if (c < 0x80) {
        out[(*n)++] = (char)c;
    } else if (c < 0x800) {
        out[(*n)++] = (char)(0xC0 | (c >> 6));
        out[(*n)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out[(*n)++] = (char)(0xE0 | (c >> 12));
        out[(*n)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (c & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | (c >> 18));
        out[(*n)++] = (char)(0x80 | ((c >> 12) & 0x3F));
        out[(*n)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (c & 0x3F));
    }
}

static int hex4(parser *p, uint32_t *c) {
    if (p->pos + 4 > p->len) return fail_at(p, "four hex digits after \\u");
    *c = 0;
    for (int i = 0; i < 4; i++) {
        char h = p->s[p->pos++];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0) return fail_at(p, "a hex digit");
        *c = *c * 16 + (uint32_t)d;
    }
    return 0;
}

static int parse_string(parser *p, char **out) {
    p->pos++; /* the opening quote */
    size_t start = p->pos;
    /* Decoded text is never longer than the source (an escape shrinks). */
    while (p->pos < p->len && p->s[p->pos] != '"') p->pos += p->s[p->pos] == '\\' ? 2 : 1;
    if (p->pos >= p->len) return p->pos = start, fail_at(p, "a closing quote");
    size_t end = p->pos;
    char *buf = malloc(end - start + 1);
    if (!buf) return mfres_fail(MFRES_ENOMEM, "%s: out of memory", p->what);
    size_t n = 0;
    for (p->pos = start; p->pos < end;) {
        char c = p->s[p->pos++];
        if ((unsigned char)c < 0x20) return free(buf), fail_at(p, "no control characters in a string");
        if (c != '\\') {
            buf[n++] = c;
            continue;
        }
        char e = p->s[p->pos++];
        uint32_t u = 0;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u':
            if (hex4(p, &u)) return free(buf), MFRES_EFORMAT;
            put_utf8(buf, &n, u);
            break;
        default: return free(buf), fail_at(p, "a valid escape");
        }
    }
    p->pos = end + 1;
    buf[n] = '\0';
    *out = buf;
    return 0;
}

static int parse_number(parser *p, json_value *v) {
    const char *start = p->s + p->pos;
    size_t i = p->pos;
    if (i < p->len && p->s[i] == '-') i++;
    if (i >= p->len || !(p->s[i] >= '0' && p->s[i] <= '9')) return fail_at(p, "a value");
    while (i < p->len && strchr("0123456789+-.eE", p->s[i]) && p->s[i]) i++;
    char buf[64];
    if (i - p->pos >= sizeof buf) return fail_at(p, "a shorter number");
    memcpy(buf, start, i - p->pos);
    buf[i - p->pos] = '\0';
    char *end;
    errno = 0;
    double d = strtod(buf, &end);
    if (*end || errno == ERANGE) return fail_at(p, "a number");
    v->type = JSON_NUMBER;
    v->number = d;
    p->pos = i;
    return 0;
}

static int grow(parser *p, json_value *v, int *cap, bool keys) {
    if (v->n < *cap) return 0;
    *cap = *cap ? *cap * 2 : 8;
    json_value *items = realloc(v->items, sizeof *items * (size_t)*cap);
    if (!items) return mfres_fail(MFRES_ENOMEM, "%s: out of memory", p->what);
    v->items = items;
    if (keys) {
        char **k = realloc(v->keys, sizeof *k * (size_t)*cap);
        if (!k) return mfres_fail(MFRES_ENOMEM, "%s: out of memory", p->what);
        v->keys = k;
    }
    return 0;
}

static int parse_container(parser *p, json_value *v, bool object) {
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    if (++p->depth > MAX_DEPTH) return fail_at(p, "less nesting");
    p->pos++;
    int cap = 0, rc;
    skip_space(p);
    if (p->pos < p->len && p->s[p->pos] == (object ? '}' : ']')) {
        p->pos++;
        p->depth--;
        return 0;
    }
    for (;;) {
        if ((rc = grow(p, v, &cap, object))) return rc;
        skip_space(p);
        if (object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') return fail_at(p, "a key in quotes");
            if ((rc = parse_string(p, &v->keys[v->n]))) return rc;
            skip_space(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') return free(v->keys[v->n]), fail_at(p, "':'");
            p->pos++;
        }
        memset(&v->items[v->n], 0, sizeof v->items[0]);
        rc = parse_value(p, &v->items[v->n]);
        v->n++; /* counted even when it failed, so json_free releases its parts */
        if (rc) return rc;
        skip_space(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == (object ? '}' : ']')) {
            p->pos++;
            p->depth--;
            return 0;
        }
        return fail_at(p, object ? "',' or '}'" : "',' or ']'");
    }
}

static int parse_value(parser *p, json_value *v) {
    skip_space(p);
    if (p->pos >= p->len) return fail_at(p, "a value");
    char c = p->s[p->pos];
    if (c == '{') return parse_container(p, v, true);
    if (c == '[') return parse_container(p, v, false);
    if (c == '"') {
        v->type = JSON_STRING;
        return parse_string(p, &v->string);
    }
    static const struct { const char *word; json_type type; bool value; } words[] = {
        {"true", JSON_BOOL, true}, {"false", JSON_BOOL, false}, {"null", JSON_NULL, false}};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if (p->len - p->pos >= n && !strncmp(p->s + p->pos, words[i].word, n)) {
            v->type = words[i].type;
            v->boolean = words[i].value;
            p->pos += n;
            return 0;
        }
    }
    return parse_number(p, v);
}

int json_parse(const char *text, size_t len, const char *what, json_value *out) {
    memset(out, 0, sizeof *out);
    parser p = {.s = text, .len = len, .what = what};
    int rc = parse_value(&p, out);
    if (!rc) {
        skip_space(&p);
        if (p.pos != p.len) rc = fail_at(&p, "the end of the text");
    }
    if (rc) json_free(out);
    return rc;
}

int json_parse_file(const char *path, json_value *out) {
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mfres_fail(MFRES_EIO, "%s: cannot open (%s)", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = (cap + 4096) * 2;
            char *grown = realloc(buf, cap);
            if (!grown) return free(buf), fclose(fp), mfres_fail(MFRES_ENOMEM, "%s: out of memory", path);
            buf = grown;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) break;
    }
    bool err = ferror(fp);
    fclose(fp);
    if (err) return free(buf), mfres_fail(MFRES_EIO, "%s: read error", path);
    int rc = json_parse(buf, len, path, out);
    free(buf);
    return rc;
}

void json_free(json_value *v) {
    if (!v) return;
    free(v->string);
    for (int i = 0; i < v->n; i++) {
        json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

const json_value *json_get(const json_value *v, const char *key) {
    if (!v || v->type != JSON_OBJECT) return NULL;
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->keys[i], key)) return &v->items[i];
    return NULL;
}

bool json_get_number(const json_value *v, const char *key, double *out) {
    const json_value *m = json_get(v, key);
    if (!m || m->type != JSON_NUMBER) return false;
    *out = m->number;
    return true;
}

bool json_get_string(const json_value *v, const char *key, const char **out) {
    const json_value *m = json_get(v, key);
    if (!m || m->type != JSON_STRING) return false;
    *out = m->string;
    return true;
}

bool json_equal(const json_value *a, const json_value *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case JSON_NULL: return true;
    case JSON_BOOL: return a->boolean == b->boolean;
    case JSON_NUMBER: return a->number == b->number;
    case JSON_STRING: return !strcmp(a->string, b->string);
    case JSON_ARRAY:
        if (a->n != b->n) return false;
        for (int i = 0; i < a->n; i++)
            if (!json_equal(&a->items[i], &b->items[i])) return false;
        return true;
    case JSON_OBJECT:
        if (a->n != b->n) return false;
        for (int i = 0; i < a->n; i++) {
            const json_value *m = json_get(b, a->keys[i]);
            if (!m || !json_equal(&a->items[i], m)) return false;
        }
        return true;
    }
    return false;
}

static void write_string(const char *s, FILE *fp) {
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
}

void json_write(const json_value *v, FILE *fp) {
    switch (v->type) {
    case JSON_NULL: fputs("null", fp); break;
    case JSON_BOOL: fputs(v->boolean ? "true" : "false", fp); break;
    case JSON_NUMBER: {
        /* The shortest of %.15g..%.17g that reads back as the same double. */
        char buf[40];
        for (int digits = 15; digits <= 17; digits++) {
            snprintf(buf, sizeof buf, "%.*g", digits, v->number);
            if (strtod(buf, NULL) == v->number) break;
        }
        fputs(buf, fp);
        break;
    }
    case JSON_STRING: write_string(v->string, fp); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        fputc(v->type == JSON_ARRAY ? '[' : '{', fp);
        for (int i = 0; i < v->n; i++) {
            if (i) fputs(", ", fp);
            if (v->type == JSON_OBJECT) {
                write_string(v->keys[i], fp);
                fputs(": ", fp);
            }
            json_write(&v->items[i], fp);
        }
        fputc(v->type == JSON_ARRAY ? ']' : '}', fp);
        break;
    }
}
