/* Flags shared by train, eval and bench: the model architecture, and the
 * device and precision it runs at. */
#ifndef MFRES_CLI_MODEL_FLAGS_H
#define MFRES_CLI_MODEL_FLAGS_H

#include <stddef.h>

#include "mfres/device.h"
#include "mfres/model.h"

/* Tries to consume argv[*i] as a model flag (--model, --depth, --block, --mode,
 * --tau-init, --batch, --width). Returns 1 if consumed, 0 if not a model flag,
 * 2 on a usage error (already printed). */
int cli_model_flag(const char *cmd, int argc, char **argv, int *i, mfres_model_config *cfg);
extern const char cli_model_flags_help[];
/* After parsing: the family, depth and block kind fit together (exit 2 with a
 * message naming the flag and the valid choices, else 0). */
int cli_model_flags_check(const char *cmd, const mfres_model_config *cfg);
/* "resnet20", "resnext29-8x64d": for run-directory names and summaries. */
void cli_model_tag(const mfres_model_config *cfg, char *buf, size_t cap);

/* Tries to consume argv[*i] as --device cpu|cuda or --precision
 * fp32|tf32|bf16. Returns as cli_model_flag: 1 consumed, 0 not one of these,
 * 2 after a usage error naming the flag and its valid values. */
int cli_device_flag(const char *cmd, int argc, char **argv, int *i, mfres_device *d, mfres_precision *p);
extern const char cli_device_flags_help[];
/* Whether the model can run on d at p here (mfres_device_check), asked before
 * any heavy work: 0, or 2 after printing "mfres CMD: error: <why>" (no GPU, a
 * build without CUDA, bf16 on the CPU, ...). */
int cli_device_check(const char *cmd, mfres_device d, mfres_precision p);

#endif
