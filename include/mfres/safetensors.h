/* The safetensors format (8-byte little-endian header length, a JSON header,
 * then raw little-endian tensor data), as written by the Hugging Face
 * safetensors library and read by safetensors.torch.load_file. We write F32
 * tensors and string metadata; we read F32 (and F64, widened on request). */
#ifndef MFRES_SAFETENSORS_H
#define MFRES_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef struct mfres_st_tensor {
    char name[128];
    char dtype[8]; /* "F32", "F64", ... */
    int ndim;
    int64_t shape[8];
    size_t numel;
    const void *data; /* into the loaded file */
} mfres_st_tensor;

typedef struct mfres_st_meta {
    char key[64];
    char value[512];
} mfres_st_meta;

typedef struct mfres_safetensors {
    unsigned char *file; /* the whole file */
    size_t file_len;
    int n_tensors;
    mfres_st_tensor *tensors;
    int n_meta;
    mfres_st_meta *meta;
} mfres_safetensors;

/* What to write: name, shape and float32 data. */
typedef struct mfres_st_write {
    const char *name;
    int ndim;
    const int64_t *shape;
    const float *data;
} mfres_st_write;

/* The metadata key under which mfres_safetensors_save records the CRC-32 of the
 * data section (8 lower-case hex digits); mfres_safetensors_load verifies it
 * when present. */
#define MFRES_ST_CHECKSUM_KEY "mfres_crc32"

/* Writes atomically (temporary file + rename). meta: n_meta key/value pairs;
 * the checksum is added to them. */
int mfres_safetensors_save(const char *path, const mfres_st_write *tensors, int n_tensors, const mfres_st_meta *meta,
                           int n_meta);
/* Reads and validates the whole file: header length, JSON syntax (every read
 * bounded by the header), over-long strings, duplicate names, dtypes, shape
 * products (overflow-checked) against byte ranges, that the ranges tile the
 * data section exactly (no overlap, hole or trailing bytes), and the checksum
 * where one is recorded. Errors name the file and what was expected versus found. */
int mfres_safetensors_load(mfres_safetensors *st, const char *path);
const mfres_st_tensor *mfres_safetensors_find(const mfres_safetensors *st, const char *name);
const char *mfres_safetensors_meta(const mfres_safetensors *st, const char *key);
void mfres_safetensors_free(mfres_safetensors *st);

/* Appends a key and a printf-formatted value to meta[*n] and increments *n. */
void mfres_st_meta_put(mfres_st_meta *meta, int *n, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Copies tensor `name` (F32 of exactly this shape) into dst; errors name the
 * file (path), the tensor and both shapes. */
int mfres_safetensors_copy_f32_shaped(const mfres_safetensors *st, const char *path, const char *name, float *dst,
                                      int ndim, const int64_t *shape);
/* Copies the 1-D tensor `name` (F32, numel elements) into dst; errors name the file (path) and the tensor. */
int mfres_safetensors_copy_f32(const mfres_safetensors *st, const char *path, const char *name, float *dst,
                               size_t numel);

#endif
