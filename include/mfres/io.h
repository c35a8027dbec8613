/* Small file formats shared by the subcommands: .npy and CSV matrices (double),
 * and gnuplot plots beside CSV results. */
#ifndef MFRES_IO_H
#define MFRES_IO_H

/* Loads a 1-D or 2-D .npy array (little-endian <f8 or <f4, C order; float32 is
 * widened) as a row-major double matrix. A 1-D array of length n is n×1.
 * *data is allocated with mfres_alloc and released with mfres_free. */
int mfres_npy_load_f64(const char *path, double **data, int *rows, int *cols);
/* Saves a row-major rows×cols double matrix as .npy (atomically). */
int mfres_npy_save_f64(const char *path, const double *data, int rows, int cols);
/* Loads a numeric CSV (comma-separated, optional single header line that does
 * not parse as numbers); every row must have the same number of columns. */
int mfres_csv_load_f64(const char *path, double **data, int *rows, int *cols);

/* Runs `gnuplot script_path` if gnuplot is installed. Returns 0 on success;
 * if gnuplot is missing, logs one line saying the CSV is still there and returns
 * 0; returns MFRES_EIO if gnuplot ran and failed. */
int mfres_gnuplot_run(const char *script_path);

#endif
