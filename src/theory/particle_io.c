/* Saving and loading the particle ResNet (include/mfres/theory_particle.h): .npy files for the
 * numbers, so that numpy (or any .npy reader) can check or continue a result, and a small JSON file
 * for what the numbers mean. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mfres/io.h"
#include "mfres/theory_particle.h"

enum { PARTICLES_VERSION = 1 };

static int path_in(char *buf, size_t cap, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, name) >= cap)
        return mfres_fail(MFRES_EINVAL, "path too long: %s/%s", dir, name);
    return MFRES_OK;
}

int mfres_pnet_save(const mfres_pnet *net, const char *dir) {
    const mfres_pnet_config *c = &net->cfg;
    char path[4096], json[1024];
    int rc = mfres_mkdir_p(dir);
    if (rc) return rc;
    const int rows = c->L * c->M;
    if ((rc = path_in(path, sizeof path, dir, "theta.npy")) || (rc = mfres_npy_save_f64(path, net->theta, rows, net->P)))
        return rc;
    if ((rc = path_in(path, sizeof path, dir, "tau.npy")) || (rc = mfres_npy_save_f64(path, net->tau, c->L, 1))) return rc;
    if ((rc = path_in(path, sizeof path, dir, "W2.npy")) || (rc = mfres_npy_save_f64(path, net->W2, c->d, c->d_in)))
        return rc;
    if ((rc = path_in(path, sizeof path, dir, "W1.npy")) || (rc = mfres_npy_save_f64(path, net->W1, c->k, c->d)))
        return rc;
    int len = snprintf(json, sizeof json,
                       "{\"format\": \"mfres-particles\", \"version\": %d, \"unit\": \"%s\", \"act\": \"%s\", "
                       "\"act_eps\": %.17g, \"L\": %d, \"M\": %d, \"d\": %d, \"d_in\": %d, \"k\": %d, \"P\": %d}\n",
                       PARTICLES_VERSION, mfres_unit_name(c->unit), mfres_act_name(c->act), c->act_eps, c->L, c->M, c->d,
                       c->d_in, c->k, net->P);
    /* particles.json last: a directory with it is complete */
    if ((rc = path_in(path, sizeof path, dir, "particles.json"))) return rc;
    return mfres_write_file_atomic(path, json, (size_t)len);
}

/* The text after "key": in a flat JSON object (NULL if absent). */
static const char *json_value(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static int json_int(const char *json, const char *path, const char *key, long lo, long hi, int *out) {
    const char *v = json_value(json, key);
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || (*end != ',' && *end != '}' && *end != ' ' && *end != '\n') || x < lo || x > hi)
        return mfres_fail(MFRES_EFORMAT, "%s: \"%s\" must be an integer in [%ld, %ld]", path, key, lo, hi);
    *out = (int)x;
    return MFRES_OK;
}

static int json_string(const char *json, const char *path, const char *key, char *out, size_t cap) {
    const char *v = json_value(json, key);
    if (!v || *v != '"') return mfres_fail(MFRES_EFORMAT, "%s: \"%s\" must be a string", path, key);
    const char *e = strchr(v + 1, '"');
    if (!e || (size_t)(e - v - 1) >= cap) return mfres_fail(MFRES_EFORMAT, "%s: \"%s\" is malformed", path, key);
    memcpy(out, v + 1, (size_t)(e - v - 1));
    out[e - v - 1] = 0;
    return MFRES_OK;
}

/* Loads dir/name, a rows×cols float64 matrix, into dst; every entry finite. */
static int load_exact(const char *dir, const char *name, int rows, int cols, double *dst) {
    char path[4096];
    int rc = path_in(path, sizeof path, dir, name);
    if (rc) return rc;
    double *m = NULL;
    int r = 0, c = 0;
    if ((rc = mfres_npy_load_f64(path, &m, &r, &c))) return mfres_fail_context(rc, "loading particles");
    if (r != rows || c != cols) {
        mfres_free(m);
        return mfres_fail(MFRES_EFORMAT, "%s is %d×%d; particles.json says %d×%d", path, r, c, rows, cols);
    }
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        if (!isfinite(m[i])) {
            double v = m[i];
            mfres_free(m);
            return mfres_fail(MFRES_ENUMERIC, "%s: entry (row %zu, column %zu) is %g; every entry must be finite", path,
                              i / (size_t)cols + 1, i % (size_t)cols + 1, v);
        }
    memcpy(dst, m, (size_t)rows * cols * sizeof(double));
    mfres_free(m);
    return MFRES_OK;
}

int mfres_pnet_load(mfres_pnet *net, const char *dir) {
    memset(net, 0, sizeof *net);
    char path[4096], json[4096], fmt[64], unit[32], act[32];
    int rc = path_in(path, sizeof path, dir, "particles.json");
    if (rc) return rc;
    FILE *f = fopen(path, "rb");
    if (!f) return mfres_fail(MFRES_EIO, "cannot open %s (a particle directory written by mfres theory ... --save)", path);
    size_t n = fread(json, 1, sizeof json - 1, f);
    fclose(f);
    json[n] = 0;
    if ((rc = json_string(json, path, "format", fmt, sizeof fmt))) return rc;
    if (strcmp(fmt, "mfres-particles"))
        return mfres_fail(MFRES_EFORMAT, "%s: format \"%s\", expected \"mfres-particles\"", path, fmt);
    int version;
    if ((rc = json_int(json, path, "version", 0, 1000000, &version))) return rc;
    if (version != PARTICLES_VERSION)
        return mfres_fail(MFRES_EFORMAT, "%s: found version %d, expected %d", path, version, PARTICLES_VERSION);
    mfres_pnet_config cfg;
    mfres_pnet_config_default(&cfg);
    int P;
    if ((rc = json_string(json, path, "unit", unit, sizeof unit)) || (rc = json_string(json, path, "act", act, sizeof act)))
        return rc;
    cfg.unit = mfres_unit_by_name(unit);
    cfg.act = mfres_act_by_name(act);
    if (cfg.unit < 0) return mfres_fail(MFRES_EFORMAT, "%s: unknown unit \"%s\"", path, unit);
    if (cfg.act < 0) return mfres_fail(MFRES_EFORMAT, "%s: unknown act \"%s\"", path, act);
    const char *v = json_value(json, "act_eps");
    char *end;
    cfg.act_eps = v ? strtod(v, &end) : NAN;
    if (!v || end == v || !(cfg.act_eps > 0) || !isfinite(cfg.act_eps))
        return mfres_fail(MFRES_EFORMAT, "%s: \"act_eps\" must be a finite number > 0", path);
    if ((rc = json_int(json, path, "L", 1, 1 << 20, &cfg.L)) || (rc = json_int(json, path, "M", 1, 1 << 24, &cfg.M)) ||
        (rc = json_int(json, path, "d", 1, 4096, &cfg.d)) || (rc = json_int(json, path, "d_in", 1, 4096, &cfg.d_in)) ||
        (rc = json_int(json, path, "k", 1, 4096, &cfg.k)) || (rc = json_int(json, path, "P", 1, 1 << 24, &P)))
        return rc;
    if ((long)cfg.L * cfg.M > (1L << 26)) return mfres_fail(MFRES_EFORMAT, "%s: L·M = %ld is too large", path, (long)cfg.L * cfg.M);
    mfres_rng rng;
    mfres_rng_seed(&rng, 0); /* the draw is overwritten below */
    if ((rc = mfres_pnet_init(net, &cfg, &rng))) return mfres_fail_context(rc, "%s", path);
    if (net->P != P) {
        const int want = net->P;
        mfres_pnet_free(net);
        return mfres_fail(MFRES_EFORMAT, "%s: P = %d, but a %s unit with d = %d has %d parameters", path, P, unit, cfg.d,
                          want);
    }
    if ((rc = load_exact(dir, "theta.npy", cfg.L * cfg.M, P, net->theta)) ||
        (rc = load_exact(dir, "tau.npy", cfg.L, 1, net->tau)) || (rc = load_exact(dir, "W2.npy", cfg.d, cfg.d_in, net->W2)) ||
        (rc = load_exact(dir, "W1.npy", cfg.k, cfg.d, net->W1))) {
        mfres_pnet_free(net);
        return rc;
    }
    for (int l = 0; l < cfg.L; l++)
        if (net->tau[l] < (l ? net->tau[l - 1] : 0.0)) {
            double t = net->tau[l];
            mfres_pnet_free(net);
            return mfres_fail(MFRES_EFORMAT, "%s/tau.npy: tau must be sorted and >= 0; entry %d is %g", dir, l + 1, t);
        }
    return MFRES_OK;
}
