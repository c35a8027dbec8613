/* Flags shared by train, eval and bench: the model architecture. */
#ifndef MFRES_CLI_MODEL_FLAGS_H
#define MFRES_CLI_MODEL_FLAGS_H

#include "mfres/model.h"

/* Tries to consume argv[*i] as a model flag (--model, --depth, --block, --mode,
 * --tau-init, --batch, --width). Returns 1 if consumed, 0 if not a model flag,
 * 2 on a usage error (already printed). */
int cli_model_flag(const char *cmd, int argc, char **argv, int *i, mfres_model_config *cfg);
extern const char cli_model_flags_help[];

#endif
