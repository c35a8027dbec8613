/* Keys that run configurations (config.json, sweep.json) gained after runs
 * were first written, and the value their absence meant. A configuration
 * that holds such a key at that value is the same as one without it: the
 * sweep's check of a root's grid (src/cli/cmd_sweep.c), the store's
 * configuration key (run.c) and --resume's check of a training state's
 * settings all use this, so runs from before a key existed and runs after it
 * compare equal. */
#ifndef MFRES_CONFIG_KEYS_H
#define MFRES_CONFIG_KEYS_H

#include <stdbool.h>

#include "store/json.h"

/* The value the absence of `key` meant, or NULL for a key that every
 * configuration records ("device": "cpu" and "precision": "fp32": runs from
 * before the GPU backend). Training states' settings (src/train/train.c)
 * use the same names. */
const char *config_key_unrecorded_default(const char *key);
/* True when `key` is such a key and `v` that value. */
bool config_key_at_unrecorded_default(const char *key, const json_value *v);

#endif
