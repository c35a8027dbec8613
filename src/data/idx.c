/* IDX files (MNIST, Fashion-MNIST): gzip-compressed or raw, both read through
 * zlib's gzread, which passes a file that is not gzip through unchanged.
 *
 * Layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian
 * header, then the bytes.
 *   images: magic 0x00000803 (2051), n, rows, cols, then n*rows*cols pixels
 *   labels: magic 0x00000801 (2049), n, then n label bytes
 * Every check reports the file, and for sizes the expected and found byte
 * counts (uncompressed counts for .gz files). */
#include "mfres/core.h"
#include "mfres/data.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

enum { IDX_IMAGES_MAGIC = 2051, IDX_LABELS_MAGIC = 2049, IDX_NUM_CLASSES = 10 };
/* zlib's input buffer is GZ_BUFFER bytes; reads shorter than twice that go
 * through its internal output buffer, longer ones inflate into ours. */
#define GZ_BUFFER ((size_t)1 << 18)
#define SMALL_READ ((size_t)1 << 14)
#define BIG_READ ((size_t)1 << 30)
#define TAIL_BYTES GZ_BUFFER

/* Deflate never inflates more than 1032 bytes per compressed byte (zlib FAQ):
 * the most a .gz file of a given size can promise. */
#define DEFLATE_MAX_RATIO 1032

typedef struct idx_file {
    gzFile gz;
    const char *path;
    size_t consumed;  /* uncompressed bytes read so far */
    size_t file_size; /* on disk (compressed, for .gz) */
    uLong crc;        /* CRC-32 of the uncompressed bytes read so far */
} idx_file;

static int idx_open(idx_file *f, const char *path) {
    f->path = path;
    f->consumed = 0;
    f->crc = crc32(0L, Z_NULL, 0);
    struct stat sb;
    f->file_size = stat(path, &sb) == 0 ? (size_t)sb.st_size : 0;
    errno = 0;
    f->gz = gzopen(path, "rb");
    if (!f->gz)
        return mfres_fail(MFRES_EIO, "cannot open %s: %s", path, errno ? strerror(errno) : "zlib could not allocate");
    gzbuffer(f->gz, (unsigned)GZ_BUFFER); /* fewer, larger file reads than the 8 KiB default */
    return MFRES_OK;
}

static void idx_close(idx_file *f) {
    if (f->gz) gzclose_r(f->gz);
    f->gz = NULL;
}

/* Reads up to len bytes, at most max_chunk per gzread; *got says how many
 * arrived. A short read is not an error here (the caller words the size
 * message); corrupt gzip data is. */
static int idx_read(idx_file *f, void *buf, size_t len, size_t max_chunk, size_t *got) {
    unsigned char *p = buf;
    *got = 0;
    while (*got < len) {
        size_t want = len - *got;
        if (want > max_chunk) want = max_chunk;
        int r = gzread(f->gz, p + *got, (unsigned)want);
        if (r < 0) {
            int zerr = Z_OK;
            const char *msg = gzerror(f->gz, &zerr);
            size_t plen = strlen(f->path); /* zlib's message starts with the path: don't say it twice */
            if (strncmp(msg, f->path, plen) == 0 && msg[plen] == ':') msg += plen + 1;
            while (*msg == ' ') msg++;
            return mfres_fail(MFRES_EFORMAT, "%s: corrupt gzip data: %s", f->path, msg);
        }
        if (r == 0) break;
        f->crc = crc32(f->crc, p + *got, (uInt)r);
        *got += (size_t)r;
    }
    f->consumed += *got;
    return MFRES_OK;
}

/* Counts what follows the expected end of the file (0 for a well-formed file). */
static int idx_count_trailing(idx_file *f, size_t *extra) {
    unsigned char scratch[1 << 14];
    *extra = 0;
    for (;;) {
        size_t got = 0;
        int rc = idx_read(f, scratch, sizeof scratch, SMALL_READ, &got);
        if (rc) return rc;
        *extra += got;
        if (got < sizeof scratch) return MFRES_OK;
    }
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* zlib reports a gzip stream that ends early as Z_BUF_ERROR, after handing out what it could inflate. */
static bool gz_cut_short(const idx_file *f) {
    int zerr = Z_OK;
    gzerror(f->gz, &zerr);
    return zerr == Z_BUF_ERROR;
}

static const char *compressed_note(const idx_file *f) {
    if (gzdirect(f->gz)) return "";
    return gz_cut_short(f) ? " (uncompressed; the gzip stream ends early)" : " (uncompressed)";
}

/* Whether `len` payload bytes after a header of hdr_len can be in the file at
 * all, asked before anything is allocated for them: a raw file must hold them,
 * a gzip file must be large enough to inflate to them. */
static int idx_check_promise(const idx_file *f, size_t len, size_t hdr_len) {
    size_t want = hdr_len + len;
    if (gzdirect(f->gz)) {
        if (want > f->file_size)
            return mfres_fail(MFRES_EFORMAT, "%s: file is truncated: expected %zu bytes, found %zu", f->path, want,
                              f->file_size);
        return MFRES_OK;
    }
    if (f->file_size <= SIZE_MAX / DEFLATE_MAX_RATIO && want > f->file_size * DEFLATE_MAX_RATIO)
        return mfres_fail(MFRES_EFORMAT,
                          "%s: truncated or corrupt: the header promises %zu bytes, more than a gzip file of %zu "
                          "bytes can hold (at most %zu)",
                          f->path, want, f->file_size, f->file_size * DEFLATE_MAX_RATIO);
    return MFRES_OK;
}

/* zlib's gzread stops at the end of the gzip stream and ignores whatever
 * follows it, so a file with trailing garbage would pass. The stream's own
 * trailer (CRC-32 and length of everything inflated) must therefore be the
 * file's last 8 bytes. (A multi-member gzip file, as `cat a.gz b.gz` makes,
 * ends in its last member's trailer and is refused too.) */
static int idx_check_gzip_end(const idx_file *f) {
    if (gzdirect(f->gz)) return MFRES_OK;
    unsigned char t[8];
    FILE *fp = fopen(f->path, "rb");
    bool read_ok = fp && fseek(fp, -8, SEEK_END) == 0 && fread(t, 1, 8, fp) == 8;
    if (fp) fclose(fp);
    if (!read_ok) return mfres_fail(MFRES_EIO, "cannot read the end of %s", f->path);
    uint32_t crc = (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
    uint32_t isize = (uint32_t)t[4] | (uint32_t)t[5] << 8 | (uint32_t)t[6] << 16 | (uint32_t)t[7] << 24;
    if (crc != (uint32_t)f->crc || isize != (uint32_t)f->consumed)
        return mfres_fail(MFRES_EFORMAT,
                          "%s: trailing bytes after the gzip stream (the file does not end with the stream's CRC and "
                          "length; a multi-member gzip file is not supported either)",
                          f->path);
    return MFRES_OK;
}

/* Reads the header (hdr_len bytes) and checks the magic number. */
static int idx_read_header(idx_file *f, unsigned char *hdr, size_t hdr_len, uint32_t magic, const char *kind) {
    size_t got = 0;
    int rc = idx_read(f, hdr, hdr_len, SMALL_READ, &got);
    if (rc) return rc;
    if (got < hdr_len)
        return mfres_fail(MFRES_EFORMAT, "%s: truncated IDX %s header: expected %zu bytes, found %zu%s", f->path, kind,
                          hdr_len, got, compressed_note(f));
    uint32_t m = be32(hdr);
    if (m != magic) {
        const char *hint = "";
        if (m == IDX_IMAGES_MAGIC) hint = " (HINT: this is an image file; were the image and label paths swapped?)";
        if (m == IDX_LABELS_MAGIC) hint = " (HINT: this is a label file; were the image and label paths swapped?)";
        return mfres_fail(MFRES_EFORMAT, "%s: bad magic number 0x%08x, expected 0x%08x (%u, IDX %s)%s", f->path, m,
                          magic, magic, kind, hint);
    }
    return MFRES_OK;
}

/* Reads exactly `len` payload bytes after a header of hdr_len, then checks that
 * nothing follows.
 *
 * The bulk goes in large reads that zlib inflates straight into `buf`; the last
 * TAIL_BYTES go in small reads through zlib's own buffer. That split matters:
 * if a large direct read ends exactly where the data ends, zlib 1.2.13 never
 * looks at the gzip trailer, so a file missing its CRC/length bytes would pass;
 * small reads keep inflating past the data into the trailer, and a missing one
 * shows up as Z_BUF_ERROR. */
static int idx_read_payload(idx_file *f, void *buf, size_t len, size_t hdr_len) {
    size_t got = 0, got_tail = 0, extra = 0;
    size_t tail = len < TAIL_BYTES ? len : TAIL_BYTES;
    int rc = idx_read(f, buf, len - tail, BIG_READ, &got);
    if (rc) return rc;
    if (got == len - tail) {
        rc = idx_read(f, (unsigned char *)buf + got, tail, SMALL_READ, &got_tail);
        if (rc) return rc;
        got += got_tail;
    }
    if (got < len)
        return mfres_fail(MFRES_EFORMAT, "%s: file is truncated: expected %zu bytes, found %zu%s", f->path,
                          hdr_len + len, hdr_len + got, compressed_note(f));
    rc = idx_count_trailing(f, &extra);
    if (rc) return rc;
    if (!gzdirect(f->gz) && gz_cut_short(f))
        return mfres_fail(
            MFRES_EFORMAT,
            "%s: gzip stream is truncated: all %zu bytes inflated but its end (CRC and length) is missing", f->path,
            hdr_len + len + extra);
    if (extra)
        return mfres_fail(MFRES_EFORMAT, "%s: trailing data: expected %zu bytes, found %zu%s", f->path, hdr_len + len,
                          hdr_len + len + extra, compressed_note(f));
    return idx_check_gzip_end(f);
}

int mfres_dataset_load_idx(mfres_dataset *ds, const char *images_path, const char *labels_path) {
    memset(ds, 0, sizeof *ds);
    idx_file fi = {0}, fl = {0};
    unsigned char hi[16], hl[8];
    int rc;

    /* Both headers first, so a count mismatch is reported before 47 MB are inflated. */
    if ((rc = idx_open(&fi, images_path))) return rc;
    if ((rc = idx_read_header(&fi, hi, sizeof hi, IDX_IMAGES_MAGIC, "images"))) goto fail;
    if ((rc = idx_open(&fl, labels_path))) goto fail;
    if ((rc = idx_read_header(&fl, hl, sizeof hl, IDX_LABELS_MAGIC, "labels"))) goto fail;

    uint32_t n = be32(hi + 4), rows = be32(hi + 8), cols = be32(hi + 12), nl = be32(hl + 4);
    if (n == 0 || n > INT_MAX) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: image count %u out of range, expected 1..%d", images_path, n, INT_MAX);
        goto fail;
    }
    if (rows == 0 || cols == 0 || rows > 65536 || cols > 65536) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: image size %ux%u out of range, expected 1..65536 each", images_path, rows,
                        cols);
        goto fail;
    }
    if (nl != n) {
        rc = mfres_fail(MFRES_EFORMAT, "counts disagree: %s holds %u images but %s holds %u labels", images_path, n,
                        labels_path, nl);
        goto fail;
    }
    size_t image_bytes = (size_t)rows * cols;
    if (image_bytes > SIZE_MAX / n) {
        rc = mfres_fail(MFRES_EFORMAT, "%s: %u images of %ux%u do not fit in memory", images_path, n, rows, cols);
        goto fail;
    }
    size_t pixel_bytes = image_bytes * n;
    if ((rc = idx_check_promise(&fi, pixel_bytes, sizeof hi)) || (rc = idx_check_promise(&fl, n, sizeof hl))) goto fail;

    ds->pixels = mfres_alloc(pixel_bytes, "IDX pixels");
    ds->labels = mfres_alloc(n, "IDX labels");
    if (!ds->pixels || !ds->labels) {
        rc = MFRES_ENOMEM;
        goto fail;
    }
    if ((rc = idx_read_payload(&fi, ds->pixels, pixel_bytes, sizeof hi))) goto fail;
    if ((rc = idx_read_payload(&fl, ds->labels, n, sizeof hl))) goto fail;
    for (uint32_t i = 0; i < n; i++) {
        if (ds->labels[i] >= IDX_NUM_CLASSES) {
            rc = mfres_fail(MFRES_EFORMAT, "%s: label %u at index %u out of range, expected 0..%d", labels_path,
                            ds->labels[i], i, IDX_NUM_CLASSES - 1);
            goto fail;
        }
    }
    idx_close(&fi);
    idx_close(&fl);
    ds->n = (int)n;
    ds->c = 1;
    ds->h = (int)rows;
    ds->w = (int)cols;
    ds->num_classes = IDX_NUM_CLASSES;
    return MFRES_OK;

fail:
    idx_close(&fi);
    idx_close(&fl);
    mfres_dataset_free(ds);
    return rc;
}
