/* The CPU stand-in (emu.h) under the real header's name, for tests/test_gpu_emulated. */
#include "emu.h"
