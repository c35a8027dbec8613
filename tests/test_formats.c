/* safetensors and model files (src/core/safetensors.c, src/models/model_io.c):
 * every way a damaged or foreign file used to be trusted is refused with a
 * message naming the file and the key, tensor or byte at fault. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mfres/model.h"
#include "mfres/safetensors.h"
#include "testutil.h"

static char tmpdir[256];

static void tmp_path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    fclose(fp);
}

/* A safetensors file with this exact header text (no padding) and data. */
static void write_st(const char *path, const char *header, const void *data, size_t n) {
    static unsigned char buf[1 << 16];
    size_t h = strlen(header);
    ck_assert(8 + h + n <= sizeof buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    if (n) memcpy(buf + 8 + h, data, n);
    write_bytes(path, buf, 8 + h + n);
}

#define ck_assert_error(expr, code, needle1, needle2)                                                          \
    do {                                                                                                       \
        int rc__ = (expr);                                                                                     \
        const char *m__ = mfres_last_error();                                                                  \
        ck_assert_msg(rc__ == (code), "%s returned %d, expected %d (%s)", #expr, rc__, (code), m__);           \
        ck_assert_msg(strstr(m__, (needle1)) != NULL, "message '%s' lacks '%s'", m__, (needle1));              \
        ck_assert_msg(strstr(m__, (needle2)) != NULL, "message '%s' lacks '%s'", m__, (needle2));              \
    } while (0)

static int load_st(const char *path) {
    mfres_safetensors st;
    int rc = mfres_safetensors_load(&st, path);
    if (!rc) mfres_safetensors_free(&st);
    return rc;
}

START_TEST(test_header_ending_in_digits) {
    /* The fuzzer's reproducer: the header ends inside a number and the file
     * ends with it. strtoll ran past the buffer (ASan: heap-buffer-overflow). */
    test_tmpdir_make(tmpdir, sizeof tmpdir, "formats");
    char path[512];
    tmp_path(path, sizeof path, "digits.safetensors");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4", NULL, 0);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "bad safetensors header");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1", NULL, 0);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "bad safetensors header");
    /* Digits that go on into the data section are not part of the header. */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4", "0]}}", 4);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "expected ']'");
    test_tmpdir_remove(tmpdir);
}
END_TEST

START_TEST(test_safetensors_refusals) {
    test_tmpdir_make(tmpdir, sizeof tmpdir, "formats");
    char path[512];
    tmp_path(path, sizeof path, "t.safetensors");
    float d[4] = {1, 2, 3, 4};

    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", d, 16);
    ck_assert_ok(load_st(path)); /* the well-formed baseline of the cases below */

    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", d, 12);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "overlaps");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", d, 16);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "hole");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 16);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "8 bytes of trailing data");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", d, 8);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "end before they begin");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", d, 16);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "tensor a appears twice");
    /* 2^32 * 2^32 elements: the size product overflows 64 bits. */
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", NULL, 0);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "overflows");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", d, 4);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "below 2^62");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", d, 4);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "non-negative integer");
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", d, 4);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "end of the header");
    char longname[400];
    memset(longname, 'n', 300);
    longname[300] = '\0';
    char header[600];
    snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", longname);
    write_st(path, header, d, 4);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "a tensor name of at most 127 bytes");
    write_st(path, "{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             d, 4);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "'k' appears twice");
    test_tmpdir_remove(tmpdir);
}
END_TEST

START_TEST(test_checksum) {
    test_tmpdir_make(tmpdir, sizeof tmpdir, "formats");
    char path[512];
    tmp_path(path, sizeof path, "c.safetensors");
    float d[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    mfres_st_write w = {"w", 2, shape, d};
    ck_assert_ok(mfres_safetensors_save(path, &w, 1, NULL, 0));
    mfres_safetensors st;
    ck_assert_ok(mfres_safetensors_load(&st, path));
    ck_assert_ptr_nonnull(mfres_safetensors_meta(&st, MFRES_ST_CHECKSUM_KEY));
    float back[6];
    ck_assert_ok(mfres_safetensors_copy_f32_shaped(&st, path, "w", back, 2, shape));
    ck_assert_mem_eq(back, d, sizeof d);
    int64_t other[2] = {3, 2};
    ck_assert_error(mfres_safetensors_copy_f32_shaped(&st, path, "w", back, 2, other), MFRES_EFORMAT, "[3, 2]",
                    "[2, 3]");
    mfres_safetensors_free(&st);

    /* One flipped bit in the tensor data is caught. */
    FILE *fp = fopen(path, "r+b");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, -3, SEEK_END);
    int c = fgetc(fp);
    fseek(fp, -3, SEEK_END);
    fputc(c ^ 0x10, fp);
    fclose(fp);
    ck_assert_error(load_st(path), MFRES_EFORMAT, path, "corrupt");
    test_tmpdir_remove(tmpdir);
}
END_TEST

/* ---- model files ---- */

static mfres_model model;

static void model_setup(void) {
    mfres_model_config c;
    mfres_model_config_default(&c);
    c.depth = 8;
    c.in_c = 1, c.in_h = 8, c.in_w = 8;
    c.batch = 2;
    if (mfres_model_create(&model, &c, 7)) fprintf(stderr, "model: %s\n", mfres_last_error());
}
static void model_teardown(void) { mfres_model_free(&model); }

/* Copies src to dst with metadata `key` set to `value` (removed when value is
 * NULL), and tensor `reshape` (if not NULL) given the shape {numel}. */
static void rewrite(const char *src, const char *dst, const char *key, const char *value, const char *reshape,
                    const char *extra_tensor) {
    mfres_safetensors st;
    ck_assert_ok(mfres_safetensors_load(&st, src));
    mfres_st_meta meta[64];
    int n_meta = 0;
    for (int i = 0; i < st.n_meta; i++) {
        if (!strcmp(st.meta[i].key, MFRES_ST_CHECKSUM_KEY)) continue; /* the writer adds the new one */
        if (!strcmp(st.meta[i].key, key) && !value) continue;
        meta[n_meta] = st.meta[i];
        if (!strcmp(st.meta[i].key, key)) snprintf(meta[n_meta].value, sizeof meta[n_meta].value, "%s", value);
        n_meta++;
    }
    static mfres_st_write w[256];
    static int64_t flat[256];
    int n = 0;
    for (int i = 0; i < st.n_tensors; i++, n++) {
        const mfres_st_tensor *t = &st.tensors[i];
        w[n] = (mfres_st_write){t->name, t->ndim, t->shape, t->data};
        if (reshape && !strcmp(t->name, reshape)) {
            flat[n] = (int64_t)t->numel;
            w[n].ndim = 1, w[n].shape = flat + n;
        }
    }
    if (extra_tensor) w[n++] = (mfres_st_write){extra_tensor, 1, w[0].shape, w[0].data};
    ck_assert_ok(mfres_safetensors_save(dst, w, n, meta, n_meta));
    mfres_safetensors_free(&st);
}

START_TEST(test_model_round_trip_and_metadata) {
    ck_assert_ptr_nonnull(model.tensors);
    test_tmpdir_make(tmpdir, sizeof tmpdir, "formats");
    char good[512], bad[512];
    tmp_path(good, sizeof good, "model.safetensors");
    tmp_path(bad, sizeof bad, "bad.safetensors");
    const float mean[3] = {0.25f, 0.25f, 0.25f}, std[3] = {0.5f, 0.5f, 0.5f};
    ck_assert_ok(mfres_model_save(&model, good, "fashion-mnist", mean, std));
    mfres_model back;
    char data_name[32];
    float m2[3], s2[3];
    ck_assert_ok(mfres_model_load(&back, good, 2, data_name, sizeof data_name, m2, s2));
    ck_assert_str_eq(data_name, "fashion-mnist");
    ck_assert(m2[1] == 0.25f && s2[2] == 0.5f);
    ck_assert_mem_eq(back.params, model.params, model.n_params * sizeof(float));
    mfres_model_free(&back);

    /* Each key, given a wrong value, is refused naming the key. */
    static const struct {
        const char *key, *value, *needle;
    } cases[] = {
        {"format", "other", "'mfres-resnet'"},
        {"format_version", "2", "format_version"},
        {"format_version", "1x", "format_version"},
        {"mode", "sideways", "one of vanilla, meanfield"},
        {"block", "middle", "one of postact, preact, bottleneck"},
        {"block", "bottleneck", "9n+2"}, /* the file's depth 8 fits no bottleneck */
        {"family", "alexnet", "one of resnet, resnext"},
        {"family", "resnext", "'cardinality'"}, /* a ResNeXt needs its cardinality and group width */
        {"tau_init", "random", "tau_init"},
        {"depth", "abc", "'depth' should be an integer"},
        {"depth", "4", "'depth'"},
        {"depth", "21", "6n+2"},
        {"depth", "99999999999", "'depth'"},
        {"bn_eps", "nan", "'bn_eps'"},
        {"bn_eps", "-1e-5", "'bn_eps'"},
        {"bn_eps", "", "'bn_eps'"},
        {"input", "1x8", "'input'"},
        {"input", "1x8x8x1", "'input'"},
        {"input", "1x8x-8", "'input'"},
        {"input", " 1x8x8", "'input'"},
        {"input", "1x6x8", "divisible by 4"},
        {"num_classes", "1", "'num_classes'"},
        {"base_width", "24", "base width"},
        {"norm_mean", "0.1,0.2", "'norm_mean'"},
        {"norm_mean", "0.1,nan,0.2", "'norm_mean'"},
        {"norm_std", "0.1,0,0.2", "'norm_std'"},
        {"norm_std", NULL, "only one"},
        {"depth", NULL, "'depth' is missing"},
        {"input", NULL, "'input' is missing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rewrite(good, bad, cases[i].key, cases[i].value, NULL, NULL);
        int rc = mfres_model_load(&back, bad, 2, NULL, 0, NULL, NULL);
        ck_assert_msg(rc == MFRES_EFORMAT, "%s=%s: returned %d (%s)", cases[i].key,
                      cases[i].value ? cases[i].value : "(none)", rc, mfres_last_error());
        ck_assert_msg(strstr(mfres_last_error(), bad) && strstr(mfres_last_error(), cases[i].needle),
                      "%s=%s: message '%s' lacks the file or '%s'", cases[i].key,
                      cases[i].value ? cases[i].value : "(none)", mfres_last_error(), cases[i].needle);
    }
    test_tmpdir_remove(tmpdir);
}
END_TEST

START_TEST(test_model_tensor_shapes) {
    ck_assert_ptr_nonnull(model.tensors);
    test_tmpdir_make(tmpdir, sizeof tmpdir, "formats");
    char good[512], bad[512];
    tmp_path(good, sizeof good, "model.safetensors");
    tmp_path(bad, sizeof bad, "bad.safetensors");
    ck_assert_ok(mfres_model_save(&model, good, "mnist", NULL, NULL));
    mfres_model back;
    /* Same element count, another shape: refused, both shapes named. */
    rewrite(good, bad, "", NULL, "conv1.weight", NULL);
    ck_assert_error(mfres_model_load(&back, bad, 2, NULL, 0, NULL, NULL), MFRES_EFORMAT, "conv1.weight",
                    "expected F32 of shape [16, 1, 3, 3], found F32 of shape [144]");
    rewrite(good, bad, "", NULL, NULL, "layer9.0.conv1.weight");
    ck_assert_error(mfres_model_load(&back, bad, 2, NULL, 0, NULL, NULL), MFRES_EFORMAT, "layer9.0.conv1.weight",
                    "does not belong");
    /* A NaN weight is refused naming the tensor. */
    model.params[3] = NAN;
    ck_assert_ok(mfres_model_save(&model, bad, "mnist", NULL, NULL));
    model.params[3] = 0.5f;
    ck_assert_error(mfres_model_load(&back, bad, 2, NULL, 0, NULL, NULL), MFRES_EFORMAT, bad, "nan at index");
    test_tmpdir_remove(tmpdir);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("formats");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, test_header_ending_in_digits);
    tcase_add_test(tc, test_safetensors_refusals);
    tcase_add_test(tc, test_checksum);
    suite_add_tcase(s, tc);
    TCase *mf = tcase_create("model-files");
    tcase_add_unchecked_fixture(mf, model_setup, model_teardown);
    tcase_add_test(mf, test_model_round_trip_and_metadata);
    tcase_add_test(mf, test_model_tensor_shapes);
    suite_add_tcase(s, mf);
    return s;
}

MFRES_TEST_MAIN(make_suite)
