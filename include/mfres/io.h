/* Small file formats shared by the subcommands: .npy and CSV matrices (double),
 * and gnuplot plots beside CSV results. */
#ifndef MFRES_IO_H
#define MFRES_IO_H

/* Loads a 1-D or 2-D .npy array (little-endian <f8 or <f4, C order; float32 is
 * widened) as a row-major double matrix. The file must hold exactly the data
 * its header promises (checked before allocating): no less, no trailing bytes. A 1-D array of length n is n×1.
 * *data is allocated with mfres_alloc and released with mfres_free. */
int mfres_npy_load_f64(const char *path, double **data, int *rows, int *cols);
/* Saves a row-major rows×cols double matrix as .npy (atomically). */
int mfres_npy_save_f64(const char *path, const double *data, int rows, int cols);
/* Loads a numeric CSV (comma-separated); every row must have the same number
 * of columns. The first row may be a header only if it is clearly one (names:
 * no field empty or a number, some letter, as many fields as the data rows);
 * a first row that is neither numbers nor names is an error. */
int mfres_csv_load_f64(const char *path, double **data, int *rows, int *cols);

/* Runs `gnuplot script_path` if gnuplot is installed. Returns 0 on success;
 * if gnuplot is missing, logs one line saying the CSV is still there and returns
 * 0; returns MFRES_EIO if gnuplot ran and failed. */
int mfres_gnuplot_run(const char *script_path);

#endif
